//! Writing an answer as a text table, JSON or CSV.

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::RecordBatch;
use std::io::Write;

/// How to print rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Format {
    /// An aligned text table.
    #[default]
    Table,
    /// A JSON array of objects, one per row.
    Json,
    /// CSV with a header line.
    Csv,
}

impl std::str::FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Format, String> {
        match s {
            "table" => Ok(Format::Table),
            "json" => Ok(Format::Json),
            "csv" => Ok(Format::Csv),
            other => Err(format!("unknown format {other:?}: table, json or csv")),
        }
    }
}

/// A JSON array writer that writes NULLs as `null` rather than leaving the key out.
fn json_writer<W: Write>(out: W) -> datafusion::arrow::json::ArrayWriter<W> {
    datafusion::arrow::json::WriterBuilder::new()
        .with_explicit_nulls(true)
        .build::<_, datafusion::arrow::json::writer::JsonArray>(out)
}

/// Writes `batches` (of `schema`) to `out` as `format`.
pub(crate) fn write(
    schema: &SchemaRef,
    batches: &[RecordBatch],
    format: Format,
    out: &mut dyn Write,
) -> Result<(), ArrowError> {
    match format {
        Format::Table => {
            let table = datafusion::arrow::util::pretty::pretty_format_batches_with_schema(
                schema.clone(),
                batches,
            )?;
            writeln!(out, "{table}")?;
        }
        Format::Json => {
            let mut writer = json_writer(&mut *out);
            writer.write_batches(&batches.iter().collect::<Vec<_>>())?;
            // With no rows the writer still prints `[]`.
            writer.finish()?;
            writeln!(out)?;
        }
        Format::Csv => {
            if batches.iter().all(|b| b.num_rows() == 0) {
                let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                writeln!(out, "{}", names.join(","))?;
                return Ok(());
            }
            let mut writer = datafusion::arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(&mut *out);
            for batch in batches {
                writer.write(batch)?;
            }
        }
    }
    Ok(())
}

/// Writes a stream of batches as `format` while they come (a table needs every row for its
/// widths, so it waits for the last); the number of rows written.
pub(crate) async fn write_stream(
    mut stream: datafusion::execution::SendableRecordBatchStream,
    format: Format,
    out: &mut dyn Write,
) -> Result<usize, datafusion::common::DataFusionError> {
    use futures::StreamExt;
    let schema = stream.schema();
    let mut rows = 0;
    match format {
        Format::Table => {
            let mut batches = Vec::new();
            while let Some(batch) = stream.next().await {
                let batch = batch?;
                rows += batch.num_rows();
                batches.push(batch);
            }
            write(&schema, &batches, format, out)?;
        }
        Format::Json => {
            let mut writer = json_writer(&mut *out);
            while let Some(batch) = stream.next().await {
                let batch = batch?;
                rows += batch.num_rows();
                writer.write(&batch)?;
            }
            writer.finish()?;
            writeln!(out)?;
        }
        Format::Csv => {
            let mut writer = datafusion::arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(&mut *out);
            while let Some(batch) = stream.next().await {
                let batch = batch?;
                if batch.num_rows() == 0 {
                    continue;
                }
                rows += batch.num_rows();
                writer.write(&batch)?;
            }
            drop(writer);
            if rows == 0 {
                write(&schema, &[], format, out)?;
            }
        }
    }
    out.flush()?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{ArrayRef, Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    fn batch() -> (SchemaRef, RecordBatch) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
        ]));
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(vec![1, 2])),
            Arc::new(StringArray::from(vec![Some("a,b"), None])),
        ];
        let batch = RecordBatch::try_new(schema.clone(), columns).expect("batch");
        (schema, batch)
    }

    fn text(format: Format, rows: bool) -> String {
        let (schema, batch) = batch();
        let batches = if rows { vec![batch] } else { vec![] };
        let mut out = Vec::new();
        write(&schema, &batches, format, &mut out).expect("write");
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn json_csv_and_table_with_and_without_rows() {
        assert_eq!(
            text(Format::Json, true),
            "[{\"id\":1,\"name\":\"a,b\"},{\"id\":2,\"name\":null}]\n"
        );
        assert_eq!(text(Format::Json, false), "[]\n");
        assert_eq!(text(Format::Csv, true), "id,name\n1,\"a,b\"\n2,\n");
        assert_eq!(text(Format::Csv, false), "id,name\n");
        let table = text(Format::Table, true);
        assert!(table.contains("| id | name |"), "{table}");
        assert!(text(Format::Table, false).contains("| id | name |"));
        assert_eq!("csv".parse::<Format>(), Ok(Format::Csv));
        assert!("xml".parse::<Format>().is_err());
    }
}
