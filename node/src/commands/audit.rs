//! `detflow audit`: re-executes a stopped node's log (from the last complete checkpoint
//! before `--from`, or from the workload's initial rows) and checks each of the node's
//! partitions against it: every state digest the executor recorded in `--from..=--to`
//! (the store keeps the last `DIGEST_EPOCHS_RETAINED` epochs, each checkpoint as many
//! before its own) must be the re-execution's after the same epoch, and the rows the store
//! holds must be the re-execution's after its last applied epoch, if that is in range. A
//! difference names the partition, the first epoch that differs and, for the rows, the
//! keys.

use super::history::History;
use crate::builder::NodeBuilder;
use crate::cli::{AuditArgs, HistoryArgs};
use crate::storage::FjallStore;
use anyhow::{Context, Result, bail};
use detflow_client::{Client, LogReply};
use detflow_executor::{MemStore, StateDigest, Store, recorded_digests};
use detflow_protocol::{Epoch, Key, Owner, PartitionId, Value};
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
    let from = Epoch(args.from.unwrap_or(0));
    let to = args.to.map_or(last, Epoch);
    if from > to {
        bail!("--from {from} is after --to {to}: nothing to audit");
    }
    // The digests the checkpoints kept, for epochs the stores have dropped.
    for file in history.archive().checkpoints()? {
        if let Some(p) = partitions.iter_mut().find(|p| p.id == file.partition) {
            let rows = match history.archive().read_checkpoint(&file) {
                Ok(rows) => rows,
                Err(e) => {
                    eprintln!("warning: {e:#}; the digests it kept are not compared");
                    continue;
                }
            };
            let mut kept = MemStore::new();
            for (key, value) in rows {
                kept.put(key, value);
            }
            for (epoch, digest) in recorded_digests(&kept) {
                p.kept.entry(epoch).or_insert(digest);
            }
        }
    }
    for p in &mut partitions {
        p.kept.retain(|epoch, _| (from..=to).contains(epoch));
    }
    let mut replayer = history.replayer(from)?;
    let start = replayer.epoch();
    let batches = history
        .batches(start.next(), Some(to))
        .with_context(|| format!("auditing through epoch {to}"))?;
    eprintln!(
        "node {}: {} partitions, re-executing epochs {}..={to}, auditing {from}..={to}",
        config.id,
        partitions.len(),
        start.next(),
    );
    let mut all_match = true;
    let mut batches = batches.iter();
    for epoch in start.0..=to.0 {
        let epoch = Epoch(epoch);
        if epoch > start {
            let batch = batches.next().context("the log ended early")?;
            replayer
                .apply(batch)
                .with_context(|| format!("re-executing epoch {epoch}"))?;
            if epoch.0.is_multiple_of(10_000) {
                eprintln!("  epoch {epoch} of {to}");
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
    for p in partitions
        .iter()
        .filter(|p| p.applied > to || p.applied < start)
    {
        all_match &= judge_digests(p, to);
    }
    eprintln!(
        "re-executed {} epochs in {:.1} s",
        to.0 - start.0,
        began.elapsed().as_secs_f64()
    );
    Ok(all_match)
}

/// Reports partition `p`, whose rows on disk are of an epoch outside the audited range,
/// on its recorded digests alone; whether they matched.
fn judge_digests(p: &Partition, to: Epoch) -> bool {
    let checked = p.kept.len();
    match p.diverged {
        None => {
            println!(
                "partition {}: its {checked} recorded state digests through epoch {to} match \
                 the log's re-execution (its rows on disk are after epoch {}, not audited)",
                p.id, p.applied
            );
            true
        }
        Some((first, log)) => {
            println!(
                "partition {}: DIVERGES after epoch {first}: the state digest it recorded then \
                 is {}, the log gives {log}",
                p.id, p.kept[&first]
            );
            false
        }
    }
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

/// `detflow audit --connect`: the state digest each running node reports for each of its
/// partitions, after its latest applied epoch, against the log's re-execution (the archive
/// of the node `--config` names, then the nodes' live logs); `Ok(false)` if one differs.
pub(crate) async fn run_live(args: &AuditArgs, builder: &NodeBuilder) -> Result<bool> {
    let history = History::open(
        &HistoryArgs {
            config: args.config.clone(),
            data_dir: None,
            archive: args.archive.clone(),
        },
        builder,
    )?;
    let client = Client::connect(args.connect.clone(), super::operator_tls(&args.certs)?)
        .await
        .context("connecting to the cluster")?;
    let result = audit_live(&history, &client).await;
    client.close();
    result
}

/// One node's report of one partition: its digest after an epoch.
struct Reported {
    node: u32,
    partition: PartitionId,
    digest: String,
}

async fn audit_live(history: &History, client: &Client) -> Result<bool> {
    let mut reported: BTreeMap<Epoch, Vec<Reported>> = BTreeMap::new();
    for (addr, status) in client.status().await {
        match status {
            Ok(status) => {
                for (partition, epoch, digest) in status.digests {
                    reported.entry(epoch).or_default().push(Reported {
                        node: status.node.0,
                        partition,
                        digest,
                    });
                }
            }
            Err(e) => eprintln!("{addr}: no status ({e}); its partitions are not audited"),
        }
    }
    let (Some(first), Some(last)) = (
        reported.keys().next().copied(),
        reported.keys().next_back().copied(),
    ) else {
        bail!("no node reported a state digest: is the cluster running and loaded?");
    };
    let mut replayer = history.replayer(first)?;
    let start = replayer.epoch();
    eprintln!(
        "re-executing epochs {}..={last} to check {} digests",
        start.next(),
        reported.values().map(Vec::len).sum::<usize>()
    );
    let mut all_match = judge_live(reported.get(&start), replayer.digests(), start);
    let mut next = start.next();
    let archived_to = super::history::archive_end(history.archive(), next)?.min(last);
    if archived_to >= next {
        for batch in history.archive().batches(next, archived_to)? {
            replayer.apply(&batch)?;
            all_match &= judge_live(reported.get(&batch.epoch), replayer.digests(), batch.epoch);
        }
        next = archived_to.next();
    }
    while next <= last {
        let batches = match client.read_log(next).await? {
            LogReply::Batches { batches, .. } if !batches.is_empty() => batches,
            LogReply::Batches { commit, .. } => {
                bail!("no node has committed epoch {next} (commit {commit}), yet one applied it")
            }
            LogReply::Compacted { log_start } => bail!(
                "epochs {next}..={log_start} are in no node's live log and not in the archive at \
                 {} ({}): point --archive at one that holds them",
                history.archive().dir().display(),
                crate::archive::describe(&history.archive().segments()?)
            ),
            LogReply::NoLog => bail!("no node runs a sequencer replica"),
            LogReply::Denied(why) => bail!("the cluster refused to give its log: {why}"),
        };
        for batch in batches.iter().take_while(|b| b.epoch <= last) {
            replayer.apply(batch)?;
            all_match &= judge_live(reported.get(&batch.epoch), replayer.digests(), batch.epoch);
            next = batch.epoch.next();
        }
    }
    Ok(all_match)
}

/// Reports each node's digest of a partition after `epoch` against the re-execution's
/// `digests`; whether all match.
fn judge_live(reported: Option<&Vec<Reported>>, digests: &[StateDigest], epoch: Epoch) -> bool {
    let mut all_match = true;
    for r in reported.into_iter().flatten() {
        let expected = digests[r.partition.0 as usize].to_string();
        if r.digest == expected {
            println!(
                "node {} partition {}: after epoch {epoch}, its state digest matches the log's \
                 re-execution ({expected})",
                r.node, r.partition
            );
        } else {
            all_match = false;
            println!(
                "node {} partition {}: DIVERGES after epoch {epoch}: it reports the state digest \
                 {}, the log's re-execution gives {expected} (stop the node and run `detflow \
                 audit --config` on it for the first epoch and the keys)",
                r.node, r.partition, r.digest
            );
        }
    }
    all_match
}
