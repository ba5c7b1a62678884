//! The table provider: one table of the cluster at one epoch, scanned partition by
//! partition in parallel, with projection, key-range and limit push-down.

use crate::columns::{Columns, Source};
use crate::decode::Decoder;
use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::Session;
use datafusion::common::{DataFusionError, ScalarValue};
use datafusion::datasource::{TableProvider, TableType};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{Between, BinaryExpr, Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};
use datafusion::physical_plan::{ExecutionPlan, SendableRecordBatchStream};
use detflow_client::{At, Client, ReadError, ScanRange};
use detflow_protocol::plan::Owner;
use detflow_protocol::schema::Table;
use detflow_protocol::{Elem, Epoch, Key, PartitionId, PartitionScheme, TableRule, Value};
use detflow_scheduler::PartitionMap;
use std::collections::BTreeMap;
use std::fmt;
use std::ops::Bound as KeyBound;
use std::sync::Arc;

/// Decoded chunks a partition's scan keeps ready ahead of the query: the next chunk is
/// read while the query works on this one, and no more.
const CHUNKS_AHEAD: usize = 2;

/// Where a query's rows come from.
#[derive(Clone)]
pub(crate) enum RowSource {
    /// A cluster's snapshot reads.
    Cluster(Arc<Client>),
    /// Rows held in memory, by partition: the state after an epoch (a replayed one).
    Memory(Epoch, Arc<Vec<BTreeMap<Key, Value>>>),
}

impl RowSource {
    /// At most `limit` rows of `range` on `partition` after `epoch`, after `after` (which
    /// it moves to the last row returned); whether more may follow.
    async fn scan_chunk(
        &self,
        epoch: Epoch,
        partition: PartitionId,
        range: &ScanRange,
        after: &mut Option<Key>,
        limit: u32,
    ) -> Result<(Vec<(Key, Value)>, bool), ReadError> {
        let rows = match self {
            RowSource::Cluster(client) => {
                let snapshot = client.snapshot(At::Epoch(epoch));
                return snapshot.scan_chunk(partition, range, after, limit).await;
            }
            RowSource::Memory(_, partitions) => &partitions[partition.0 as usize],
        };
        let from = match (after.as_ref(), range.from.as_ref()) {
            (Some(after), _) => KeyBound::Excluded(after),
            (None, Some(from)) if *from > range.prefix => KeyBound::Included(from),
            (None, _) => KeyBound::Included(&range.prefix),
        };
        let chunk: Vec<(Key, Value)> = rows
            .range::<Key, _>((from, KeyBound::Unbounded))
            .take_while(|(k, _)| {
                k.starts_with(&range.prefix) && range.to.as_ref().is_none_or(|to| *k < to)
            })
            .take(limit as usize + 1)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let more = chunk.len() > limit as usize;
        let chunk: Vec<(Key, Value)> = chunk.into_iter().take(limit as usize).collect();
        if let Some((last, _)) = chunk.last() {
            *after = Some(last.clone());
        }
        Ok((chunk, more))
    }
}

/// One table at one epoch.
pub(crate) struct SnapshotTable {
    source: RowSource,
    table: Table,
    columns: Columns,
    epoch: Epoch,
    partitions: u32,
    chunk_rows: u32,
}

impl fmt::Debug for SnapshotTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotTable")
            .field("table", &self.table.name())
            .field("epoch", &self.epoch)
            .finish()
    }
}

impl SnapshotTable {
    /// `table` as of `epoch` on a cluster of `partitions` partitions, read in chunks of
    /// `chunk_rows`.
    pub(crate) fn new(
        source: RowSource,
        table: Table,
        epoch: Epoch,
        partitions: u32,
        chunk_rows: u32,
    ) -> SnapshotTable {
        SnapshotTable {
            columns: Columns::of(&table),
            source,
            table,
            epoch,
            partitions,
            chunk_rows,
        }
    }

    /// The partitions that may hold rows of `range`.
    fn partitions_of(&self, range: &ScanRange) -> Vec<PartitionId> {
        let rule = self.table.partitioning().clone();
        // A replicated table is read once, from partition 0.
        if rule == TableRule::Replicated {
            return vec![PartitionId(0)];
        }
        let scheme = PartitionScheme {
            partitions: self.partitions,
            tables: vec![(self.table.name().to_owned(), rule.clone())],
            default: rule,
        };
        if let Ok(map) = PartitionMap::new(scheme)
            && let Ok(Owner::Partition(p)) = map.owner_of_prefix(&range.prefix)
        {
            return vec![p];
        }
        (0..self.partitions).map(PartitionId).collect()
    }
}

#[async_trait]
impl TableProvider for SnapshotTable {
    fn schema(&self) -> SchemaRef {
        self.columns.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> datafusion::common::Result<Vec<TableProviderFilterPushDown>> {
        // Inexact: a key range narrows the scan, and the filter still runs on its rows.
        Ok(filters
            .iter()
            .map(|f| match bound_of(f, &self.columns) {
                Some(_) => TableProviderFilterPushDown::Inexact,
                None => TableProviderFilterPushDown::Unsupported,
            })
            .collect())
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::common::Result<Arc<dyn ExecutionPlan>> {
        let decoder = Decoder::new(
            self.table.name(),
            &self.columns,
            projection.map(Vec::as_slice),
        );
        let range = key_range(self.table.name(), &self.columns, filters);
        let streams: Vec<Arc<dyn PartitionStream>> = self
            .partitions_of(&range)
            .into_iter()
            .map(|partition| {
                Arc::new(PartitionScan {
                    source: self.source.clone(),
                    decoder: decoder.clone(),
                    epoch: self.epoch,
                    partition,
                    range: range.clone(),
                    limit,
                    chunk_rows: self.chunk_rows,
                }) as Arc<dyn PartitionStream>
            })
            .collect();
        let exec =
            StreamingTableExec::try_new(decoder.schema().clone(), streams, None, [], false, limit)?;
        Ok(Arc::new(exec))
    }
}

/// One partition's rows of a range at an epoch, as a stream of batches.
struct PartitionScan {
    source: RowSource,
    decoder: Decoder,
    epoch: Epoch,
    partition: PartitionId,
    range: ScanRange,
    limit: Option<usize>,
    chunk_rows: u32,
}

impl fmt::Debug for PartitionScan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PartitionScan")
            .field("partition", &self.partition)
            .field("range", &self.range)
            .finish()
    }
}

impl PartitionStream for PartitionScan {
    fn schema(&self) -> &SchemaRef {
        self.decoder.schema()
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let (tx, rx) = tokio::sync::mpsc::channel(CHUNKS_AHEAD);
        let source = self.source.clone();
        let decoder = self.decoder.clone();
        let (epoch, partition, range) = (self.epoch, self.partition, self.range.clone());
        let chunk_rows = self.chunk_rows;
        let mut left = self.limit.unwrap_or(usize::MAX);
        // The reader runs ahead of the query by a bounded channel; a query that stops
        // early drops the receiver, and the reader's next send ends it.
        tokio::spawn(async move {
            let mut after: Option<Key> = None;
            loop {
                let chunk = source
                    .scan_chunk(epoch, partition, &range, &mut after, chunk_rows)
                    .await;
                let (rows, more) = match chunk {
                    Ok(chunk) => chunk,
                    Err(e) => {
                        let e = DataFusionError::External(Box::new(e));
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                let batch = decoder
                    .decode(&rows)
                    .map_err(|e| DataFusionError::External(Box::new(e)));
                left = left.saturating_sub(rows.len());
                if tx.send(batch).await.is_err() || !more || left == 0 {
                    return;
                }
            }
        });
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|batch: datafusion::common::Result<RecordBatch>| (batch, rx))
        });
        Box::pin(RecordBatchStreamAdapter::new(
            self.decoder.schema().clone(),
            stream,
        ))
    }
}

/// What one pushed-down predicate says about one key field.
#[derive(Clone, Debug, PartialEq)]
enum Bound {
    Eq(Elem),
    /// A lower bound; inclusive when true.
    Lower(Elem, bool),
    /// An upper bound; inclusive when true.
    Upper(Elem, bool),
    /// Both (BETWEEN, inclusive).
    Both(Elem, Elem),
}

/// The key field and bound a predicate sets, if it is `key_field <op> literal` (either
/// way round) or `key_field BETWEEN literal AND literal`.
fn bound_of(expr: &Expr, columns: &Columns) -> Option<(usize, Bound)> {
    match expr {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            let (field, ty, op, lit) = match (key_field(left, columns), key_field(right, columns)) {
                (Some((f, ty)), None) => (f, ty, *op, right),
                (None, Some((f, ty))) => (f, ty, op.swap()?, left),
                _ => return None,
            };
            let elem = elem_of(lit, ty)?;
            Some((
                field,
                match op {
                    Operator::Eq => Bound::Eq(elem),
                    Operator::Gt => Bound::Lower(elem, false),
                    Operator::GtEq => Bound::Lower(elem, true),
                    Operator::Lt => Bound::Upper(elem, false),
                    Operator::LtEq => Bound::Upper(elem, true),
                    _ => return None,
                },
            ))
        }
        Expr::Between(Between {
            expr,
            negated: false,
            low,
            high,
        }) => {
            let (field, ty) = key_field(expr, columns)?;
            Some((field, Bound::Both(elem_of(low, ty)?, elem_of(high, ty)?)))
        }
        _ => None,
    }
}

/// The key field a column expression names, and its type.
fn key_field(
    expr: &Expr,
    columns: &Columns,
) -> Option<(usize, detflow_protocol::schema::FieldType)> {
    let Expr::Column(col) = expr else {
        return None;
    };
    columns.columns.iter().find_map(|c| match c.source {
        Source::KeyField(i) if c.name == col.name => Some((i, c.ty)),
        _ => None,
    })
}

/// A literal as a key element of type `ty`, if it is one exactly.
fn elem_of(expr: &Expr, ty: detflow_protocol::schema::FieldType) -> Option<Elem> {
    use detflow_protocol::schema::FieldType;
    let Expr::Literal(value, _) = expr else {
        return None;
    };
    let int: Option<i128> = match value {
        ScalarValue::UInt64(Some(v)) => Some(i128::from(*v)),
        ScalarValue::UInt32(Some(v)) => Some(i128::from(*v)),
        ScalarValue::UInt16(Some(v)) => Some(i128::from(*v)),
        ScalarValue::UInt8(Some(v)) => Some(i128::from(*v)),
        ScalarValue::Int64(Some(v)) => Some(i128::from(*v)),
        ScalarValue::Int32(Some(v)) => Some(i128::from(*v)),
        ScalarValue::Int16(Some(v)) => Some(i128::from(*v)),
        ScalarValue::Int8(Some(v)) => Some(i128::from(*v)),
        _ => None,
    };
    match ty {
        FieldType::U64 => u64::try_from(int?).ok().map(Elem::U64),
        FieldType::I64 => i64::try_from(int?).ok().map(Elem::I64),
        FieldType::Str => match value {
            ScalarValue::Utf8(Some(s))
            | ScalarValue::LargeUtf8(Some(s))
            | ScalarValue::Utf8View(Some(s)) => Some(Elem::Str(s.clone())),
            _ => None,
        },
        _ => None,
    }
}

/// The smallest element after `elem` and after every key that continues with it, if any.
fn past(elem: &Elem) -> Option<Elem> {
    match elem {
        Elem::U64(v) => v.checked_add(1).map(Elem::U64),
        Elem::I64(v) => v.checked_add(1).map(Elem::I64),
        // "s\0" sorts after "s" and after every tuple that continues after "s".
        Elem::Str(s) => Some(Elem::Str(format!("{s}\0"))),
        Elem::Bytes(b) => Some(Elem::Bytes([b.as_slice(), &[0]].concat())),
    }
}

/// The narrowest key range `filters` allow: the leading key fields fixed by equalities
/// make the prefix, and bounds on the next field its start and end. Every row the
/// filters accept lies inside; the filters still run on what it returns.
pub(crate) fn key_range(table: &str, columns: &Columns, filters: &[Expr]) -> ScanRange {
    let fields = columns
        .columns
        .iter()
        .filter(|c| matches!(c.source, Source::KeyField(_)))
        .count();
    let mut bounds: Vec<Vec<Bound>> = vec![Vec::new(); fields];
    for filter in filters {
        for predicate in split_conjunction(filter) {
            if let Some((field, bound)) = bound_of(predicate, columns) {
                bounds[field].push(bound);
            }
        }
    }
    let mut prefix = Key::table(table);
    let mut next = 0;
    while next < fields {
        let eq = bounds[next].iter().find_map(|b| match b {
            Bound::Eq(e) => Some(e.clone()),
            _ => None,
        });
        match eq {
            Some(e) => prefix = prefix.elem(&e),
            None => break,
        }
        next += 1;
    }
    let mut range = ScanRange::prefix(prefix.clone());
    let Some(field) = bounds.get(next) else {
        return range;
    };
    for bound in field {
        let (lower, upper) = match bound {
            Bound::Lower(e, true) => (Some(e.clone()), None),
            // An exclusive lower bound on a string or bytes stays inclusive: the keys
            // equal to it in this field may continue with more fields.
            Bound::Lower(e, false) => (
                match e {
                    Elem::U64(_) | Elem::I64(_) => past(e),
                    _ => Some(e.clone()),
                },
                None,
            ),
            Bound::Upper(e, false) => (None, Some(Some(e.clone()))),
            Bound::Upper(e, true) => (None, Some(past(e))),
            Bound::Both(lo, hi) => (Some(lo.clone()), Some(past(hi))),
            Bound::Eq(_) => (None, None),
        };
        if let Some(lower) = lower
            && range.from.is_none()
        {
            range.from = Some(prefix.clone().elem(&lower));
        }
        // `Some(None)`: an upper bound with nothing past it (the type's maximum).
        if let Some(Some(upper)) = upper
            && range.to.is_none()
        {
            range.to = Some(prefix.clone().elem(&upper));
        }
    }
    range
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::logical_expr::{col, lit};
    use detflow_protocol::schema::FieldType;

    fn lines() -> Columns {
        Columns::of(
            &Table::new("order_line")
                .key("w_id", FieldType::U64)
                .key("d_id", FieldType::U64)
                .key("o_id", FieldType::U64)
                .column("amount", FieldType::I64),
        )
    }

    #[test]
    fn equalities_on_leading_fields_make_the_prefix_and_the_next_field_the_bounds() {
        let filters = [
            col("w_id").eq(lit(3u64)),
            col("d_id")
                .eq(lit(2i64))
                .and(col("o_id").gt(lit(10u64)))
                .and(col("o_id").lt_eq(lit(20u64))),
            col("amount").gt(lit(5i64)),
        ];
        let range = key_range("order_line", &lines(), &filters);
        let prefix = Key::table("order_line").u64(3).u64(2);
        assert_eq!(range.prefix, prefix);
        assert_eq!(range.from, Some(prefix.clone().u64(11)));
        assert_eq!(range.to, Some(prefix.clone().u64(21)));
        assert!(range.contains(&prefix.clone().u64(11)));
        assert!(range.contains(&prefix.clone().u64(20)));
        assert!(!range.contains(&prefix.clone().u64(10)));
        assert!(!range.contains(&prefix.u64(21)));
    }

    #[test]
    fn a_gap_in_the_equalities_or_a_non_key_filter_does_not_narrow() {
        let filters = [col("d_id").eq(lit(2u64)), col("amount").eq(lit(1i64))];
        let range = key_range("order_line", &lines(), &filters);
        assert_eq!(range, ScanRange::prefix(Key::table("order_line")));
        // A negative literal on an unsigned field narrows nothing (no key matches it).
        let range = key_range("order_line", &lines(), &[col("w_id").eq(lit(-1i64))]);
        assert_eq!(range, ScanRange::prefix(Key::table("order_line")));
    }

    #[test]
    fn string_upper_bounds_keep_the_keys_that_continue() {
        let columns = Columns::of(
            &Table::new("c")
                .key("last", FieldType::Str)
                .key("id", FieldType::U64),
        );
        let range = key_range("c", &columns, &[col("last").lt_eq(lit("BAR"))]);
        assert!(range.contains(&Key::table("c").str("BAR").u64(u64::MAX)));
        assert!(!range.contains(&Key::table("c").str("BARA").u64(0)));
        let range = key_range("c", &columns, &[col("last").gt(lit("BAR"))]);
        assert!(range.contains(&Key::table("c").str("BARA").u64(0)));
    }
}
