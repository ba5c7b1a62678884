//! A table's SQL columns: its declared key fields, then its declared columns, as Arrow.
//!
//! A table that declares no key fields shows its key as one text column `key` (the
//! elements after the table name); one that declares no columns shows its value as one
//! JSON column `value`. So every table is queryable, declared or not.

use datafusion::arrow::datatypes::{DataType, Field as ArrowField, Schema, SchemaRef};
use detflow_protocol::schema::{FieldType, Table};
use std::sync::Arc;

/// Where a SQL column's values come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    /// The key's `n`th field after the table name.
    KeyField(usize),
    /// The whole key after the table name, as text (no key fields declared).
    WholeKey,
    /// The value's `n`th declared column.
    Column(usize),
    /// The whole value, as JSON (no columns declared).
    WholeValue,
}

/// One SQL column of a table.
#[derive(Clone, Debug)]
pub(crate) struct Column {
    /// Its name.
    pub(crate) name: String,
    /// Its declared type (`Any` for the whole key or value).
    pub(crate) ty: FieldType,
    /// Where it comes from.
    pub(crate) source: Source,
}

/// A table's SQL columns, in order, and the Arrow schema they make.
#[derive(Clone, Debug)]
pub(crate) struct Columns {
    /// The columns.
    pub(crate) columns: Vec<Column>,
    /// How many columns the value declares (0 when shown whole).
    pub(crate) declared: usize,
    /// The Arrow schema.
    pub(crate) schema: SchemaRef,
}

impl Columns {
    /// The columns of `table`.
    pub(crate) fn of(table: &Table) -> Columns {
        let mut columns = Vec::new();
        match table.key_fields() {
            [] => columns.push(Column {
                name: "key".into(),
                ty: FieldType::Str,
                source: Source::WholeKey,
            }),
            fields => columns.extend(fields.iter().enumerate().map(|(i, f)| Column {
                name: f.name.clone(),
                ty: f.ty,
                source: Source::KeyField(i),
            })),
        }
        match table.columns() {
            [] => columns.push(Column {
                name: "value".into(),
                ty: FieldType::Any,
                source: Source::WholeValue,
            }),
            fields => columns.extend(fields.iter().enumerate().map(|(i, f)| Column {
                name: f.name.clone(),
                ty: f.ty,
                source: Source::Column(i),
            })),
        }
        let fields: Vec<ArrowField> = columns
            .iter()
            .map(|c| {
                // Keys always have their fields; a value's column may be nil.
                let nullable = !matches!(c.source, Source::KeyField(_) | Source::WholeKey);
                ArrowField::new(&c.name, arrow_type(c.ty), nullable)
            })
            .collect();
        Columns {
            declared: table.columns().len(),
            columns,
            schema: Arc::new(Schema::new(fields)),
        }
    }
}

/// The Arrow type a declared type reads as. `Any` values read as JSON text.
pub(crate) fn arrow_type(ty: FieldType) -> DataType {
    match ty {
        FieldType::U64 => DataType::UInt64,
        FieldType::I64 => DataType::Int64,
        FieldType::F64 => DataType::Float64,
        FieldType::Str | FieldType::Any => DataType::Utf8,
        FieldType::Bytes => DataType::Binary,
        FieldType::Bool => DataType::Boolean,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declared_fields_then_columns_and_undeclared_sides_whole() {
        let table = Table::new("acct")
            .key("id", FieldType::U64)
            .column("balance", FieldType::I64)
            .column("note", FieldType::Any);
        let cols = Columns::of(&table);
        let names: Vec<&str> = cols.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["id", "balance", "note"]);
        assert_eq!(cols.schema.field(0).data_type(), &DataType::UInt64);
        assert!(!cols.schema.field(0).is_nullable());
        assert_eq!(cols.schema.field(2).data_type(), &DataType::Utf8);

        let bare = Columns::of(&Table::new("raw"));
        let names: Vec<&str> = bare.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["key", "value"]);
        assert_eq!(bare.declared, 0);
    }
}
