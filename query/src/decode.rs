//! Rows of a snapshot scan into Arrow record batches, only the columns a query reads.

use crate::columns::{Column, Columns, Source};
use crate::msgpack::{self, Item, Malformed, Reader};
use datafusion::arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Float64Builder, Int64Builder, StringBuilder,
    UInt64Builder,
};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};
use detflow_protocol::schema::FieldType;
use detflow_protocol::{Elem, Key, Value};
use std::sync::Arc;

/// A stored row that does not read as its table's declared schema.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("row {key} of table {table:?} does not read as its declared schema: {reason}")]
pub struct RowError {
    /// The table.
    pub table: String,
    /// The row's key, readable.
    pub key: String,
    /// What does not fit.
    pub reason: String,
}

/// Turns rows of one table into batches of some of its columns.
#[derive(Clone, Debug)]
pub(crate) struct Decoder {
    table: String,
    columns: Vec<Column>,
    declared: usize,
    schema: SchemaRef,
    /// Whether any projected column comes from the key, or from the value.
    reads_key: bool,
    reads_value: bool,
}

impl Decoder {
    /// A decoder of table `table`'s columns `projection` (indices into `columns`), or all.
    pub(crate) fn new(table: &str, columns: &Columns, projection: Option<&[usize]>) -> Decoder {
        let picked: Vec<usize> = match projection {
            Some(p) => p.to_vec(),
            None => (0..columns.columns.len()).collect(),
        };
        let cols: Vec<Column> = picked.iter().map(|&i| columns.columns[i].clone()).collect();
        let schema = match projection {
            Some(p) => Arc::new(
                columns
                    .schema
                    .project(p)
                    .unwrap_or_else(|_| columns.schema.as_ref().clone()),
            ),
            None => columns.schema.clone(),
        };
        Decoder {
            table: table.to_owned(),
            reads_key: cols
                .iter()
                .any(|c| matches!(c.source, Source::KeyField(_) | Source::WholeKey)),
            reads_value: cols
                .iter()
                .any(|c| matches!(c.source, Source::Column(_) | Source::WholeValue)),
            columns: cols,
            declared: columns.declared,
            schema,
        }
    }

    /// The schema of the batches it makes.
    pub(crate) fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// One batch of `rows`.
    pub(crate) fn decode(&self, rows: &[(Key, Value)]) -> Result<RecordBatch, RowError> {
        let mut builders: Vec<Builder> = self
            .columns
            .iter()
            .map(|c| Builder::new(c.ty, rows.len()))
            .collect();
        let mut spans: Vec<Option<&[u8]>> = vec![None; self.declared];
        let mut elems: Vec<Elem> = Vec::new();
        for (key, value) in rows {
            let fail = |reason: String| RowError {
                table: self.table.clone(),
                key: key.to_string(),
                reason,
            };
            if self.reads_key {
                elems = key.elems().map_err(|e| fail(e.to_string()))?;
            }
            if self.reads_value && self.declared > 0 {
                split_columns(value, &mut spans).map_err(|e| fail(e.0))?;
            }
            for (column, builder) in self.columns.iter().zip(&mut builders) {
                let put = match column.source {
                    Source::KeyField(i) => match elems.get(i + 1) {
                        Some(elem) => builder.elem(elem),
                        None => Err(format!("the key has no field {:?}", column.name)),
                    },
                    Source::WholeKey => {
                        builder.text(&show_elems(elems.get(1..).unwrap_or_default()));
                        Ok(())
                    }
                    Source::Column(i) => match spans.get(i).copied().flatten() {
                        Some(span) => builder.value(span),
                        None => {
                            builder.null();
                            Ok(())
                        }
                    },
                    Source::WholeValue => builder.value(value),
                };
                put.map_err(|reason| fail(format!("column {:?}: {reason}", column.name)))?;
            }
        }
        let arrays: Vec<ArrayRef> = builders.into_iter().map(Builder::finish).collect();
        // A query that reads no column (`count(*)`) still needs the row count.
        let options = RecordBatchOptions::new().with_row_count(Some(rows.len()));
        RecordBatch::try_new_with_options(self.schema.clone(), arrays, &options).map_err(|e| {
            RowError {
                table: self.table.clone(),
                key: String::new(),
                reason: e.to_string(),
            }
        })
    }
}

/// Finds each declared column's bytes in `value`: one column is the whole value, several
/// an array or a map of them in declared order. Columns the value does not hold are `None`.
fn split_columns<'v>(value: &'v [u8], spans: &mut [Option<&'v [u8]>]) -> Result<(), Malformed> {
    spans.fill(None);
    if let [only] = spans {
        *only = Some(value);
        return Ok(());
    }
    let mut reader = Reader::new(value);
    let (n, named) = match reader.item()? {
        Item::Array(n) => (n, false),
        Item::Map(n) => (n, true),
        other => {
            return Err(Malformed(format!(
                "{} columns are declared, the value is {other:?}",
                spans.len()
            )));
        }
    };
    for i in 0..n as usize {
        if named {
            reader.skip()?;
        }
        let span = reader.span()?;
        if let Some(slot) = spans.get_mut(i) {
            *slot = Some(span);
        }
    }
    Ok(())
}

fn show_elems(elems: &[Elem]) -> String {
    let shown: Vec<String> = elems
        .iter()
        .map(|e| match e {
            Elem::Bytes(b) => format!("{b:02x?}"),
            Elem::Str(s) => format!("{s:?}"),
            Elem::I64(v) => v.to_string(),
            Elem::U64(v) => v.to_string(),
        })
        .collect();
    shown.join(", ")
}

/// One column's Arrow builder.
enum Builder {
    U64(UInt64Builder),
    I64(Int64Builder),
    F64(Float64Builder),
    Str(StringBuilder),
    Bytes(BinaryBuilder),
    Bool(BooleanBuilder),
    /// `Any`: JSON text.
    Json(StringBuilder, String),
}

impl Builder {
    fn new(ty: FieldType, rows: usize) -> Builder {
        match ty {
            FieldType::U64 => Builder::U64(UInt64Builder::with_capacity(rows)),
            FieldType::I64 => Builder::I64(Int64Builder::with_capacity(rows)),
            FieldType::F64 => Builder::F64(Float64Builder::with_capacity(rows)),
            FieldType::Str => Builder::Str(StringBuilder::with_capacity(rows, rows * 16)),
            FieldType::Bytes => Builder::Bytes(BinaryBuilder::with_capacity(rows, rows * 16)),
            FieldType::Bool => Builder::Bool(BooleanBuilder::with_capacity(rows)),
            FieldType::Any => {
                Builder::Json(StringBuilder::with_capacity(rows, rows * 16), String::new())
            }
        }
    }

    fn finish(self) -> ArrayRef {
        match self {
            Builder::U64(mut b) => Arc::new(b.finish()),
            Builder::I64(mut b) => Arc::new(b.finish()),
            Builder::F64(mut b) => Arc::new(b.finish()),
            Builder::Str(mut b) | Builder::Json(mut b, _) => Arc::new(b.finish()),
            Builder::Bytes(mut b) => Arc::new(b.finish()),
            Builder::Bool(mut b) => Arc::new(b.finish()),
        }
    }

    fn null(&mut self) {
        match self {
            Builder::U64(b) => b.append_null(),
            Builder::I64(b) => b.append_null(),
            Builder::F64(b) => b.append_null(),
            Builder::Str(b) | Builder::Json(b, _) => b.append_null(),
            Builder::Bytes(b) => b.append_null(),
            Builder::Bool(b) => b.append_null(),
        }
    }

    fn text(&mut self, s: &str) {
        match self {
            Builder::Str(b) | Builder::Json(b, _) => b.append_value(s),
            other => other.null(),
        }
    }

    /// Appends a key element.
    fn elem(&mut self, elem: &Elem) -> Result<(), String> {
        match (self, elem) {
            (Builder::U64(b), Elem::U64(v)) => b.append_value(*v),
            (Builder::I64(b), Elem::I64(v)) => b.append_value(*v),
            (Builder::Str(b), Elem::Str(s)) => b.append_value(s),
            (Builder::Bytes(b), Elem::Bytes(v)) => b.append_value(v),
            (Builder::Json(b, _), elem) => b.append_value(show_elems(std::slice::from_ref(elem))),
            (_, elem) => return Err(format!("the key holds {elem:?}")),
        }
        Ok(())
    }

    /// Appends one MessagePack value.
    fn value(&mut self, bytes: &[u8]) -> Result<(), String> {
        if let Builder::Json(b, scratch) = self {
            scratch.clear();
            msgpack::to_json(bytes, scratch).map_err(|e| e.0)?;
            b.append_value(&*scratch);
            return Ok(());
        }
        let item = Reader::new(bytes).item().map_err(|e| e.0)?;
        if item == Item::Nil {
            self.null();
            return Ok(());
        }
        match (self, item) {
            (Builder::U64(b), Item::UInt(v)) => b.append_value(v),
            (Builder::I64(b), Item::Int(v)) => b.append_value(v),
            (Builder::I64(b), Item::UInt(v)) if i64::try_from(v).is_ok() => {
                b.append_value(v as i64)
            }
            (Builder::F64(b), Item::Float(v)) => b.append_value(v),
            (Builder::F64(b), Item::UInt(v)) => b.append_value(v as f64),
            (Builder::F64(b), Item::Int(v)) => b.append_value(v as f64),
            (Builder::Str(b), Item::Str(s)) => {
                b.append_value(std::str::from_utf8(s).map_err(|_| "a string is not UTF-8")?)
            }
            (Builder::Bytes(b), Item::Bin(v)) => b.append_value(v),
            (Builder::Bytes(b), Item::Array(n)) => {
                // Serde writes a `Vec<u8>` without `serde_bytes` as an array of integers.
                let mut reader = Reader::new(bytes);
                reader.item().map_err(|e| e.0)?;
                let mut out = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    match reader.item().map_err(|e| e.0)? {
                        Item::UInt(v) if v < 256 => out.push(v as u8),
                        other => return Err(format!("a byte array holds {other:?}")),
                    }
                }
                b.append_value(out)
            }
            (Builder::Bool(b), Item::Bool(v)) => b.append_value(v),
            (builder, item) => {
                return Err(format!(
                    "declared {}, the value is {item:?}",
                    builder.type_name()
                ));
            }
        }
        Ok(())
    }

    fn type_name(&self) -> &'static str {
        match self {
            Builder::U64(_) => "U64",
            Builder::I64(_) => "I64",
            Builder::F64(_) => "F64",
            Builder::Str(_) => "Str",
            Builder::Bytes(_) => "Bytes",
            Builder::Bool(_) => "Bool",
            Builder::Json(..) => "Any",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::UInt64Type;
    use detflow_protocol::codec;
    use detflow_protocol::schema::Table;

    fn orders() -> Table {
        Table::new("orders")
            .key("w_id", FieldType::U64)
            .key("o_id", FieldType::U64)
            .column("c_id", FieldType::U64)
            .column("carrier", FieldType::U64)
            .column("note", FieldType::Any)
            .column("amount", FieldType::I64)
    }

    fn rows() -> Vec<(Key, Value)> {
        vec![
            (
                Key::table("orders").u64(1).u64(10),
                codec::encode(&(7u64, Some(3u64), ["a", "b"], -5i64)),
            ),
            (
                Key::table("orders").u64(2).u64(11),
                codec::encode(&(8u64, None::<u64>, (), 6i64)),
            ),
        ]
    }

    #[test]
    fn projected_columns_from_key_and_value_with_nulls() {
        let columns = Columns::of(&orders());
        let decoder = Decoder::new("orders", &columns, Some(&[1, 3, 4]));
        let batch = decoder.decode(&rows()).expect("decodes");
        assert_eq!(batch.num_columns(), 3);
        let o_id = batch.column(0).as_primitive::<UInt64Type>();
        assert_eq!(o_id.values().to_vec(), vec![10, 11]);
        let carrier = batch.column(1).as_primitive::<UInt64Type>();
        assert_eq!(carrier.value(0), 3);
        assert!(carrier.is_null(1));
        let note = batch.column(2).as_string::<i32>();
        assert_eq!(note.value(0), r#"["a","b"]"#);
    }

    #[test]
    fn no_columns_still_counts_rows() {
        let columns = Columns::of(&orders());
        let batch = Decoder::new("orders", &columns, Some(&[]))
            .decode(&rows())
            .expect("decodes");
        assert_eq!((batch.num_columns(), batch.num_rows()), (0, 2));
    }

    #[test]
    fn a_row_against_its_schema_is_a_clear_error() {
        let columns = Columns::of(&orders());
        let bad = vec![(
            Key::table("orders").u64(1).u64(10),
            codec::encode(&(-7i64, 1u64, (), 1i64)),
        )];
        let err = Decoder::new("orders", &columns, None)
            .decode(&bad)
            .expect_err("c_id is negative");
        assert!(err.to_string().contains("column \"c_id\""), "{err}");
        let short_key = vec![(Key::table("orders").u64(1), codec::encode(&1u64))];
        let err = Decoder::new("orders", &columns, Some(&[1]))
            .decode(&short_key)
            .expect_err("no o_id");
        assert!(err.to_string().contains("no field"), "{err}");
    }
}
