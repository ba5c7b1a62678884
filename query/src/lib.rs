//! SQL over detflow's consistent global view, executed by Apache DataFusion.
//!
//! Every table the cluster's services declare is a SQL table: its declared key fields,
//! then its declared columns (see [`Table`]). A query reads one snapshot, the state after
//! one epoch on every partition, so it sees one consistent cut however long it runs and
//! however many tables it joins. Each table is scanned partition by partition in parallel,
//! in bounded chunks; only the columns the query uses are decoded, and equalities and
//! ranges on the leading key fields narrow the scan (and, when they fix a table's hash
//! fields, its partitions).
//!
//! ```no_run
//! # async fn demo(client: std::sync::Arc<detflow_client::Client>) -> Result<(), detflow_query::QueryError> {
//! use detflow_client::At;
//! use detflow_query::Sql;
//!
//! let sql = Sql::connect(client).await?;
//! let answer = sql
//!     .query("SELECT w_id, sum(amount_cents) FROM order_line GROUP BY w_id", At::Latest)
//!     .await?;
//! println!("at epoch {}:\n{}", answer.epoch.0, answer.to_text(detflow_query::Format::Table)?);
//! # Ok(()) }
//! ```

pub mod ch;
mod columns;
mod decode;
mod format;
mod msgpack;
mod provider;
pub mod tpcc;

pub use datafusion;
pub use decode::RowError;
pub use format::Format;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::prelude::{SessionConfig, SessionContext};
use detflow_client::{At, Client, ReadError};
use detflow_protocol::schema::Table;
use detflow_protocol::{Epoch, Key, Value};
use std::sync::Arc;

/// Why a query did not answer.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The snapshot could not be read (too old, not applied yet, no gateway answered).
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The query is not valid SQL or names what does not exist.
    #[error("{0}")]
    Plan(String),
    /// The query failed while it ran (a scan failed, a row did not read as its schema).
    #[error("{0}")]
    Execution(String),
}

impl From<DataFusionError> for QueryError {
    fn from(e: DataFusionError) -> QueryError {
        match e.find_root() {
            DataFusionError::SQL(..)
            | DataFusionError::Plan(_)
            | DataFusionError::SchemaError(..)
            | DataFusionError::NotImplemented(_) => QueryError::Plan(e.find_root().to_string()),
            // A read that failed mid-scan: its own message says it best.
            DataFusionError::External(inner) => QueryError::Execution(inner.to_string()),
            root => QueryError::Execution(root.to_string()),
        }
    }
}

/// A query's answer: the epoch it read and its rows.
#[derive(Debug)]
pub struct Answer {
    /// The epoch whose state the query read, on every partition.
    pub epoch: Epoch,
    /// The columns.
    pub schema: SchemaRef,
    /// The rows.
    pub batches: Vec<RecordBatch>,
}

impl Answer {
    /// The number of rows.
    pub fn rows(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }

    /// The rows rendered as `format`.
    pub fn to_text(&self, format: Format) -> Result<String, QueryError> {
        let mut out = Vec::new();
        format::write(&self.schema, &self.batches, format, &mut out)
            .map_err(|e| QueryError::Execution(e.to_string()))?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}

/// SQL over a cluster's tables (see the crate docs).
pub struct Sql {
    source: provider::RowSource,
    tables: Vec<Table>,
    chunk_rows: u32,
}

impl Sql {
    /// SQL over every table the cluster's services declare (asked of the cluster).
    pub async fn connect(client: Arc<Client>) -> Result<Sql, QueryError> {
        let tables = client.tables().await?;
        Ok(Sql::with_tables(client, tables))
    }

    /// SQL over `tables`, as the caller declares them.
    pub fn with_tables(client: Arc<Client>, tables: Vec<Table>) -> Sql {
        Sql {
            source: provider::RowSource::Cluster(client),
            tables,
            chunk_rows: detflow_protocol::snapshot::SCAN_ROWS_MAX,
        }
    }

    /// SQL over `tables` in rows held in memory: `partitions[p]` is partition `p`'s rows
    /// after `epoch` (a state `detflow replay` rebuilt, say), partitioned as the cluster
    /// partitioned them. It answers for [`At::Latest`] or `At::Epoch(epoch)` only.
    pub fn over_rows(
        tables: Vec<Table>,
        epoch: Epoch,
        partitions: Vec<std::collections::BTreeMap<Key, Value>>,
    ) -> Sql {
        Sql {
            source: provider::RowSource::Memory(epoch, Arc::new(partitions)),
            tables,
            chunk_rows: detflow_protocol::snapshot::SCAN_ROWS_MAX,
        }
    }

    /// Sets the most rows a scan asks of a partition at a time (default and most:
    /// 10,000; a node also cuts a chunk at about a mebibyte). Smaller chunks hold less
    /// in flight and take more round trips.
    pub fn chunk_rows(mut self, rows: u32) -> Sql {
        self.chunk_rows = rows.clamp(1, detflow_protocol::snapshot::SCAN_ROWS_MAX);
        self
    }

    /// The tables it can query.
    pub fn tables(&self) -> &[Table] {
        &self.tables
    }

    /// Runs `sql` on the snapshot at `at` and collects its rows.
    pub async fn query(&self, sql: &str, at: At) -> Result<Answer, QueryError> {
        let (epoch, schema, stream) = self.stream(sql, at).await?;
        let batches = datafusion::physical_plan::common::collect(stream).await?;
        Ok(Answer {
            epoch,
            schema,
            batches,
        })
    }

    /// Runs `sql` on the snapshot at `at` and writes its rows to `out` as `format` while
    /// they come (CSV and JSON need not hold the answer); the epoch read and the rows
    /// written.
    pub async fn write(
        &self,
        sql: &str,
        at: At,
        format: Format,
        out: &mut dyn std::io::Write,
    ) -> Result<(Epoch, usize), QueryError> {
        let (epoch, _, stream) = self.stream(sql, at).await?;
        let rows = format::write_stream(stream, format, out).await?;
        Ok((epoch, rows))
    }

    /// Runs `sql` on the snapshot at `at` and streams its rows, for answers too large to
    /// hold: the epoch read, the columns and the stream of batches.
    pub async fn stream(
        &self,
        sql: &str,
        at: At,
    ) -> Result<(Epoch, SchemaRef, SendableRecordBatchStream), QueryError> {
        let (epoch, partitions) = match &self.source {
            provider::RowSource::Cluster(client) => client.snapshot(at).resolve().await?,
            provider::RowSource::Memory(held, rows) => match at {
                At::Epoch(e) if e != *held => {
                    return Err(QueryError::Plan(format!(
                        "these rows are the state after epoch {held}, not after epoch {e}"
                    )));
                }
                _ => (*held, rows.len() as u32),
            },
        };
        let ctx = self.context(epoch, partitions)?;
        let frame = ctx.sql(sql).await?;
        let stream = frame.execute_stream().await?;
        Ok((epoch, stream.schema(), stream))
    }

    /// A DataFusion context whose tables read the snapshot after `epoch`: for callers that
    /// want DataFusion's own API (data frames, their own functions).
    pub fn context(&self, epoch: Epoch, partitions: u32) -> Result<SessionContext, QueryError> {
        let config = SessionConfig::new().with_information_schema(true);
        let ctx = SessionContext::new_with_config(config);
        for table in &self.tables {
            let provider = provider::SnapshotTable::new(
                self.source.clone(),
                table.clone(),
                epoch,
                partitions,
                self.chunk_rows,
            );
            ctx.register_table(table.name(), Arc::new(provider))?;
        }
        Ok(ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use detflow_protocol::codec;
    use detflow_protocol::schema::FieldType;
    use std::collections::BTreeMap;

    /// Rows held in memory answer like a cluster's: scans in chunks across partitions,
    /// key ranges, and only the epoch they hold.
    #[tokio::test]
    async fn rows_in_memory_answer_queries_at_their_epoch() {
        let table = Table::new("acct")
            .key("id", FieldType::U64)
            .column("cents", FieldType::I64);
        let mut partitions = vec![BTreeMap::new(), BTreeMap::new()];
        for id in 0..100u64 {
            let key = Key::table("acct").u64(id);
            partitions[(id % 2) as usize].insert(key, codec::encode(&(id as i64 * 10)));
        }
        // Another table's rows beside them are not this table's.
        partitions[0].insert(Key::table("acct2").u64(1), codec::encode(&1i64));
        let sql = Sql::over_rows(vec![table], Epoch(7), partitions).chunk_rows(7);
        let answer = sql
            .query(
                "SELECT count(*) AS n, sum(cents) AS total FROM acct WHERE id >= 10",
                At::Latest,
            )
            .await
            .expect("the query runs");
        assert_eq!(answer.epoch, Epoch(7));
        let text = answer.to_text(Format::Csv).expect("renders");
        assert_eq!(text.trim(), "n,total\n90,49050");
        let error = sql
            .query("SELECT count(*) FROM acct", At::Epoch(Epoch(6)))
            .await
            .expect_err("another epoch");
        assert!(error.to_string().contains("after epoch 7"), "{error}");
    }
}
