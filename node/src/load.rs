//! A partition's initial rows, generated a part at a time so that a node never holds more
//! than one part in memory, with progress in the log and in the node's status.
//!
//! TPC-C is generated warehouse by warehouse (about 500,000 rows each at full size), the
//! replicated `item` table first; every other workload is one part. Each finished part
//! logs `loaded warehouse W of partition P: N rows …` (TPC-C) or `loaded partition P: N
//! rows` for people, and adds to [`rows_loaded`] and [`warehouses_loaded`], which the
//! node's status answer carries (`NodeStatus::rows_loaded`) for `detflow demo` and `bench`.

// Loading is the driver's business: it times itself with the wall clock.
#![allow(clippy::disallowed_methods)]

use detflow_protocol::{Key, Owner, PartitionId, Value};
use detflow_scheduler::PartitionMap;
use detflow_workloads::tpcc::{TpccConfig, keys};
use detflow_workloads::{Options, Workload};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

/// The log line a finished TPC-C warehouse writes, up to its number.
pub const WAREHOUSE_LOADED: &str = "loaded warehouse ";

/// Rows generated for loading in this process. Process-wide rather than per node because
/// the runtime asks for the rows through [`initial_rows`] alone, and a process runs one
/// node (`detflow node`); in-process test nodes would share it.
static ROWS_LOADED: AtomicU64 = AtomicU64::new(0);

/// TPC-C warehouses generated for loading in this process (see [`ROWS_LOADED`]).
static WAREHOUSES_LOADED: AtomicU32 = AtomicU32::new(0);

/// Initial rows this process has generated for its partitions so far.
pub fn rows_loaded() -> u64 {
    ROWS_LOADED.load(Ordering::Relaxed)
}

/// TPC-C warehouses this process has generated for its partitions so far.
pub fn warehouses_loaded() -> u32 {
    WAREHOUSES_LOADED.load(Ordering::Relaxed)
}

/// The rows `partition` starts with (its own and the replicated ones), generated lazily:
/// nothing is generated unless the iterator is consumed, so a store that is already loaded
/// costs nothing.
pub fn initial_rows<'a>(
    workload: &'a dyn Workload,
    options: &Options,
    map: &'a PartitionMap,
    partition: PartitionId,
) -> Box<dyn Iterator<Item = (Key, Value)> + 'a> {
    let owned = move |k: &Key| match map.owner(k) {
        Ok(Owner::Partition(p)) => p == partition,
        Ok(Owner::Replicated) => true,
        Err(_) => false,
    };
    if workload.name() != "tpcc" {
        return Box::new(part(move || {
            let began = Instant::now();
            let rows = workload.load_where(&owned);
            ROWS_LOADED.fetch_add(rows.len() as u64, Ordering::Relaxed);
            tracing::info!(
                "loaded partition {}: {} rows in {:.1} s",
                partition.0,
                rows.len(),
                began.elapsed().as_secs_f64()
            );
            rows
        }));
    }
    let warehouses = TpccConfig::from_options(map.partitions(), options).warehouses;
    let mine: Vec<u32> = (1..=warehouses)
        .filter(|w| owned(&keys::warehouse(*w)))
        .collect();
    let count = mine.len();
    let items = part(move || {
        let item = Key::table(keys::ITEM);
        let rows = workload.load_where(&|k| k.starts_with(&item) && owned(k));
        ROWS_LOADED.fetch_add(rows.len() as u64, Ordering::Relaxed);
        tracing::info!("loaded {} items into partition {}", rows.len(), partition.0);
        rows
    });
    let started = Instant::now();
    let by_warehouse = mine.into_iter().enumerate().flat_map(move |(i, w)| {
        part(move || {
            let began = Instant::now();
            let rows = workload.load_where(&|k| {
                keys::fields(k).first() == Some(&u64::from(w))
                    && !k.starts_with(&Key::table(keys::ITEM))
                    && owned(k)
            });
            ROWS_LOADED.fetch_add(rows.len() as u64, Ordering::Relaxed);
            WAREHOUSES_LOADED.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                "{WAREHOUSE_LOADED}{w} of partition {}: {} rows in {:.1} s ({} of {count}, {:.0} s so far)",
                partition.0,
                rows.len(),
                began.elapsed().as_secs_f64(),
                i + 1,
                started.elapsed().as_secs_f64(),
            );
            rows
        })
    });
    Box::new(items.chain(by_warehouse))
}

/// The rows `generate` makes, generated when first asked for.
fn part<F>(generate: F) -> impl Iterator<Item = (Key, Value)>
where
    F: FnOnce() -> Vec<(Key, Value)>,
{
    std::iter::once_with(generate).flatten()
}
