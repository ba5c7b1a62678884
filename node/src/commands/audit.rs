//! `detflow audit`: re-executes a stopped node's log from the workload's initial rows and
//! checks each of the node's partitions against it: the rows the store holds, and the state
//! digest the executor kept, must both be the digest the log gives after the partition's
//! last applied epoch. A difference names the partition and the epoch.

use crate::builder::NodeBuilder;
use crate::cli::AuditArgs;
use crate::config::Config;
use crate::storage::{FjallStore, LogStore};
use anyhow::{Context, Result, bail};
use detflow_executor::{StateDigest, Store, recorded_digest};
use detflow_protocol::{Epoch, Key, PartitionId, Value};
use detflow_replay::Replayer;
use std::collections::BTreeMap;
use std::time::Instant;

/// One local partition as its store holds it.
struct Partition {
    id: PartitionId,
    applied: Epoch,
    rows: StateDigest,
    kept: Option<(Epoch, StateDigest)>,
}

/// Audits the node `args.config` describes; `Ok(false)` if a partition diverges.
#[allow(clippy::disallowed_methods)] // how long the re-execution took is for the operator
pub(crate) fn run(args: &AuditArgs, builder: &NodeBuilder) -> Result<bool> {
    let mut config =
        Config::load(&args.config).with_context(|| format!("reading {}", args.config.display()))?;
    if let Some(dir) = &args.data_dir {
        config.data_dir = dir.clone();
    }
    let registry = builder.registry(&config)?;
    let options = config.workload_options();
    let workload =
        detflow_workloads::by_name_with(&config.workload, config.partitions(), &options)?;
    let map = crate::runtime::partition_map(&config, workload.as_ref(), &registry)?;
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
            kept: recorded_digest(&store),
        });
    }
    let (_log, durable) = LogStore::open(&log_dir)
        .with_context(|| format!("opening the log at {}", log_dir.display()))?;
    let last = partitions
        .iter()
        .map(|p| p.applied)
        .max()
        .unwrap_or(Epoch(0));
    if (durable.log.len() as u64) < last.0 {
        bail!(
            "the log at {} ends at epoch {}, but a partition applied epoch {last}",
            log_dir.display(),
            durable.log.len()
        );
    }
    eprintln!(
        "node {}: {} partitions, re-executing {last} epochs of the log from the initial rows",
        config.id,
        partitions.len()
    );
    let mut initial: BTreeMap<Key, Value> = BTreeMap::new();
    for p in 0..config.partitions() {
        initial.extend(crate::load::initial_rows(
            workload.as_ref(),
            &options,
            &map,
            PartitionId(p),
        ));
    }
    let mut replayer = Replayer::new(&registry, map, initial);
    let mut all_match = true;
    let mut judge = |replayer: &Replayer<'_>, epoch: Epoch| {
        for p in partitions.iter().filter(|p| p.applied == epoch) {
            let expected = replayer.digests()[p.id.0 as usize];
            let kept = match p.kept {
                Some((at, digest)) if at == epoch => digest.to_string(),
                Some((at, _)) => format!("none for this epoch (one for epoch {at})"),
                None => "none".to_string(),
            };
            if p.rows == expected && kept == expected.to_string() {
                println!(
                    "partition {}: after epoch {epoch}, its rows match the log's re-execution \
                     (state digest {expected})",
                    p.id
                );
            } else {
                all_match = false;
                println!(
                    "partition {}: DIVERGES after epoch {epoch}: the log's re-execution gives \
                     the state digest {expected}; the rows on disk give {}; the executor kept {kept}",
                    p.id, p.rows
                );
            }
        }
    };
    judge(&replayer, Epoch(0));
    for entry in durable.log.iter().take(last.0 as usize) {
        replayer
            .apply(&entry.batch)
            .with_context(|| format!("re-executing epoch {}", entry.batch.epoch))?;
        judge(&replayer, entry.batch.epoch);
        if entry.batch.epoch.0 % 10_000 == 0 {
            eprintln!("  epoch {} of {last}", entry.batch.epoch);
        }
    }
    eprintln!(
        "re-executed {last} epochs in {:.1} s",
        began.elapsed().as_secs_f64()
    );
    Ok(all_match)
}
