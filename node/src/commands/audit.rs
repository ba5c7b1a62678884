//! `detflow audit`: re-executes a stopped node's log from the workload's initial rows and
//! checks each of the node's partitions against it: every state digest the executor
//! recorded (the last `DIGEST_EPOCHS_RETAINED` epochs) must be the re-execution's after
//! the same epoch, and the rows the store holds must be the re-execution's after its last
//! applied epoch. A difference names the partition, the first epoch that differs and, for
//! the rows, the keys.

use super::history::History;
use crate::builder::NodeBuilder;
use crate::cli::{AuditArgs, HistoryArgs};
use crate::storage::FjallStore;
use anyhow::{Context, Result, bail};
use detflow_executor::{StateDigest, Store, recorded_digests};
use detflow_protocol::{Epoch, Key, Owner, PartitionId, Value};
use detflow_replay::Replayer;
use detflow_scheduler::PartitionMap;
use std::collections::BTreeMap;
use std::time::Instant;

/// At most this many differing keys are listed per partition.
const KEYS_SHOWN: usize = 10;

/// One local partition as its store holds it.
struct Partition {
    id: PartitionId,
    store: FjallStore,
    applied: Epoch,
    rows: StateDigest,
    /// The digests the executor recorded, by epoch.
    kept: BTreeMap<Epoch, StateDigest>,
    /// The first epoch whose recorded digest differs from the re-execution's, and the
    /// re-execution's digest then.
    diverged: Option<(Epoch, StateDigest)>,
}

/// Audits the node `args.config` describes; `Ok(false)` if a partition diverges.
#[allow(clippy::disallowed_methods)] // how long the re-execution took is for the operator
pub(crate) fn run(args: &AuditArgs, builder: &NodeBuilder) -> Result<bool> {
    let history = History::open(
        &HistoryArgs {
            config: args.config.clone(),
            data_dir: args.data_dir.clone(),
            archive: args.archive.clone(),
        },
        builder,
    )?;
    let (config, map) = (&history.config, &history.map);
    let began = Instant::now();

    let log_dir = config.data_dir.join("log");
    if !config.me().replica || !log_dir.exists() {
        bail!(
            "node {} keeps no log in {} (it runs no sequencer replica): audit a node that does",
            config.id,
            config.data_dir.display()
        );
    }
    let mut partitions = Vec::new();
    for p in &config.me().partitions {
        let dir = config.data_dir.join(format!("partition-{p}"));
        let store = FjallStore::open(&dir)
            .with_context(|| format!("opening {} (is the node still running?)", dir.display()))?;
        partitions.push(Partition {
            id: PartitionId(*p),
            applied: store.applied_epoch(),
            rows: StateDigest::of_store(&store),
            kept: recorded_digests(&store),
            diverged: None,
            store,
        });
    }
    let last = partitions
        .iter()
        .map(|p| p.applied)
        .max()
        .unwrap_or(Epoch(0));
    let batches = history
        .batches(Some(last))
        .with_context(|| format!("a partition applied epoch {last}"))?;
    eprintln!(
        "node {}: {} partitions, re-executing {last} epochs of the log from the initial rows",
        config.id,
        partitions.len()
    );
    let mut replayer = Replayer::new(&history.registry, map.clone(), history.initial_rows());
    let mut all_match = true;
    for epoch in 0..=last.0 {
        let epoch = Epoch(epoch);
        if let Some(batch) = epoch.0.checked_sub(1).and_then(|i| batches.get(i as usize)) {
            replayer
                .apply(batch)
                .with_context(|| format!("re-executing epoch {epoch}"))?;
            if epoch.0.is_multiple_of(10_000) {
                eprintln!("  epoch {epoch} of {last}");
            }
        }
        for p in &mut partitions {
            let expected = replayer.digests()[p.id.0 as usize];
            if p.diverged.is_none() && p.kept.get(&epoch).is_some_and(|kept| *kept != expected) {
                p.diverged = Some((epoch, expected));
            }
            if p.applied == epoch {
                all_match &= judge(p, epoch, expected, replayer.state(), map);
            }
        }
    }
    eprintln!(
        "re-executed {last} epochs in {:.1} s",
        began.elapsed().as_secs_f64()
    );
    Ok(all_match)
}

/// Reports partition `p` after its last applied epoch, `expected` the re-execution's
/// digest then and `state` its state; whether everything matched.
fn judge(
    p: &Partition,
    epoch: Epoch,
    expected: StateDigest,
    state: &BTreeMap<Key, Value>,
    map: &PartitionMap,
) -> bool {
    let checked = p.kept.len();
    if p.rows == expected && p.diverged.is_none() {
        println!(
            "partition {}: after epoch {epoch}, its rows match the log's re-execution (state \
             digest {expected}), and so do the {checked} digests it recorded",
            p.id
        );
        return true;
    }
    match p.diverged {
        Some((first, log)) => println!(
            "partition {}: DIVERGES after epoch {first}: the state digest it recorded then (the \
             first of its {checked} that differs from the log's re-execution) is {}, the log \
             gives {log}",
            p.id, p.kept[&first]
        ),
        None => println!(
            "partition {}: its {checked} recorded state digests match the log's re-execution",
            p.id
        ),
    }
    if p.rows != expected {
        let keys = differing_keys(&p.store, p.id, state, map);
        println!(
            "partition {}: DIVERGES after epoch {epoch}: its rows on disk have the state digest \
             {}, the log's re-execution gives {expected}; keys that differ: {}",
            p.id,
            p.rows,
            keys.join(", ")
        );
    }
    false
}

/// Up to [`KEYS_SHOWN`] user keys whose value in `store` (partition `id`) differs from the
/// one in `state`, or that only one of them holds.
fn differing_keys(
    store: &FjallStore,
    id: PartitionId,
    state: &BTreeMap<Key, Value>,
    map: &PartitionMap,
) -> Vec<String> {
    let mine = |key: &Key| {
        !key.is_system()
            && match map.owner(key) {
                Ok(Owner::Partition(p)) => p == id,
                Ok(Owner::Replicated) => true,
                Err(_) => false,
            }
    };
    let on_disk: BTreeMap<Key, Value> = store
        .scan_range(
            &Key::default(),
            std::ops::Bound::Unbounded,
            None,
            usize::MAX,
        )
        .into_iter()
        .collect();
    let expected = state.iter().filter(|(k, _)| mine(k));
    let mut keys: Vec<String> = expected
        .filter(|(k, v)| on_disk.get(*k) != Some(*v))
        .map(|(k, _)| k.to_string())
        .chain(
            on_disk
                .keys()
                .filter(|k| !state.contains_key(*k))
                .map(|k| format!("{k} (not in the log's state)")),
        )
        .take(KEYS_SHOWN + 1)
        .collect();
    if keys.len() > KEYS_SHOWN {
        keys[KEYS_SHOWN] = "…".into();
    }
    keys
}
