//! Time travel over a stopped node's log and archive: `detflow archive ls`, `detflow
//! replay` (the state of every partition after any epoch) and `detflow explain` (one
//! transaction: its call, footprint, plan, reads, writes and result). The log is the
//! archive's segments (epochs the live log compacted away) followed by the live log.

use crate::archive::{self, Archive};
use crate::builder::NodeBuilder;
use crate::cli::{ArchiveLsArgs, ExplainArgs, HistoryArgs, ReplayArgs};
use crate::config::Config;
use crate::storage::{FjallStore, LogStore};
use anyhow::{Context, Result, bail};
use detflow_executor::{Registry, Store};
use detflow_protocol::{Batch, Epoch, Key, Outcome, Owner, PartitionId, Position, Value};
use detflow_replay::Replayer;
use detflow_replay::archive::replay_rows;
use detflow_scheduler::{PartitionMap, route};
use detflow_workloads::Workload;
use std::collections::BTreeMap;
use std::sync::Arc;

/// What the history commands work from: the node's configuration, its procedures and
/// partition map, and its log (archive, then live log).
pub(crate) struct History {
    pub(crate) config: Config,
    pub(crate) registry: Registry,
    pub(crate) map: PartitionMap,
    workload: Box<dyn Workload>,
    archive: Archive,
}

impl History {
    /// Reads the node's configuration and sets up its procedures and map.
    pub(crate) fn open(args: &HistoryArgs, builder: &NodeBuilder) -> Result<History> {
        let mut config = Config::load(&args.config)
            .with_context(|| format!("reading {}", args.config.display()))?;
        if let Some(dir) = &args.data_dir {
            config.data_dir = dir.clone();
        }
        let archive = Archive::new(&args.archive.clone().unwrap_or_else(|| config.archive_dir()));
        let registry = builder.registry(&config)?;
        let options = config.workload_options();
        let workload =
            detflow_workloads::by_name_with(&config.workload, config.partitions(), &options)?;
        let map = crate::runtime::partition_map(&config, workload.as_ref(), &registry)?;
        Ok(History {
            config,
            registry,
            map,
            workload,
            archive,
        })
    }

    /// The archive the history reads.
    pub(crate) fn archive(&self) -> &Archive {
        &self.archive
    }

    /// The cluster's initial rows, every partition's (as every node generates them).
    pub(crate) fn initial_rows(&self) -> BTreeMap<Key, Value> {
        let options = self.config.workload_options();
        let mut initial = BTreeMap::new();
        for p in 0..self.config.partitions() {
            initial.extend(crate::load::initial_rows(
                self.workload.as_ref(),
                &options,
                &self.map,
                PartitionId(p),
            ));
        }
        initial
    }

    /// Where a re-execution that must reach epoch `at` starts: the last epoch at or
    /// before `at` at which the archive holds a readable checkpoint of every partition,
    /// and the whole state then; without one, epoch 0 and the initial rows.
    pub(crate) fn start(&self, at: Epoch) -> Result<(Epoch, BTreeMap<Key, Value>)> {
        let Some((epoch, partitions)) = self
            .archive
            .complete_checkpoint(self.config.partitions(), at)?
        else {
            return Ok((Epoch(0), self.initial_rows()));
        };
        let state = partitions.into_iter().flat_map(replay_rows).collect();
        Ok((epoch, state))
    }

    /// A replayer at the start [`History::start`] picks for `at`, said on stderr.
    pub(crate) fn replayer(&self, at: Epoch) -> Result<Replayer<'_>> {
        let (epoch, state) = self.start(at)?;
        match epoch {
            Epoch(0) => eprintln!(
                "re-executing from the initial rows of workload {}",
                self.config.workload
            ),
            _ => eprintln!(
                "re-executing from the checkpoints after epoch {epoch} in {}",
                self.archive.dir().display()
            ),
        }
        Ok(Replayer::at_checkpoint(
            &self.registry,
            self.map.clone(),
            epoch,
            state,
        ))
    }

    /// The batches of epochs `from..=to`: from the archive up to the live log's start,
    /// then from the live log (if the node keeps one here). `to` `None`: to the end of
    /// the log.
    pub(crate) fn batches(&self, from: Epoch, to: Option<Epoch>) -> Result<Vec<Arc<Batch>>> {
        let log_dir = self.config.data_dir.join("log");
        let live = match log_dir.exists() {
            true => {
                let (_log, durable) = LogStore::open(&log_dir).with_context(|| {
                    format!(
                        "opening the log at {} (is the node still running?)",
                        log_dir.display()
                    )
                })?;
                Some(durable)
            }
            false => None,
        };
        let end = match (&live, to) {
            (_, Some(to)) => to,
            (Some(durable), None) => durable.last_epoch(),
            (None, None) => archive_end(&self.archive, from)?,
        };
        // The archive as far as it reads without a gap (it may reach past the live log's
        // start: another replica archived more, in a shared archive; a torn segment may
        // stop it short of the start), then the live log after it.
        let (mut batches, gap) = self
            .archive
            .readable_prefix(from, end)
            .context("reading the archive")?;
        if let Some(durable) = &live {
            for entry in durable.log.iter().take_while(|e| e.epoch() <= end) {
                // Only the epoch that comes next: the batches stay consecutive.
                if entry.epoch().0 == from.0 + batches.len() as u64 {
                    batches.push(entry.batch.clone());
                }
            }
        }
        let reached = Epoch(from.0 - 1 + batches.len() as u64);
        if reached < end {
            bail!(
                "the log from epoch {from} ends at epoch {reached} (archive at {}: {}{}; live \
                 log: {}), not at epoch {end}",
                self.archive.dir().display(),
                archive::describe(&self.archive.segments()?),
                gap.map_or(String::new(), |gap| format!(", {gap}")),
                match &live {
                    Some(d) => format!("epochs {}..={}", d.log_start().next(), d.last_epoch()),
                    None => "none here".into(),
                }
            );
        }
        Ok(batches)
    }
}

/// The last epoch the archive holds from epoch `from` on without a gap (`from - 1` if it
/// does not hold `from`).
pub(crate) fn archive_end(archive: &Archive, from: Epoch) -> Result<Epoch> {
    let ranges = archive::ranges(&archive.segments()?);
    Ok(ranges
        .iter()
        .find(|(first, last)| *first <= from && from <= *last)
        .map_or(Epoch(from.0 - 1), |(_, last)| *last))
}

/// `detflow archive ls`.
pub(crate) fn archive_ls(args: &ArchiveLsArgs) -> Result<bool> {
    let dir = match (&args.archive, &args.config) {
        (Some(dir), _) => dir.clone(),
        (None, Some(config)) => Config::load(config)
            .with_context(|| format!("reading {}", config.display()))?
            .archive_dir(),
        (None, None) => bail!("name the archive: --archive DIR, or --config NODE.toml"),
    };
    let archive = Archive::new(&dir);
    let segments = archive.segments()?;
    println!(
        "archive {}: {}",
        dir.display(),
        archive::describe(&segments)
    );
    println!(
        "{:>12} {:>12} {:>8} {:>12}  file",
        "first", "last", "epochs", "bytes"
    );
    let mut total = 0;
    for s in &segments {
        total += s.bytes;
        let name = s.path.file_name().map(|n| n.to_string_lossy().into_owned());
        println!(
            "{:>12} {:>12} {:>8} {:>12}  {}",
            s.first.0,
            s.last.0,
            s.last.0 - s.first.0 + 1,
            s.bytes,
            name.unwrap_or_default()
        );
    }
    println!("{} segments, {total} bytes", segments.len());
    let checkpoints = archive.checkpoints()?;
    let mut by_epoch: BTreeMap<Epoch, (Vec<u32>, u64)> = BTreeMap::new();
    for c in &checkpoints {
        let (partitions, bytes) = by_epoch.entry(c.epoch).or_default();
        partitions.push(c.partition.0);
        *bytes += c.bytes;
    }
    println!("{:>12} {:>12}  partitions", "checkpoint", "bytes");
    for (epoch, (partitions, bytes)) in &by_epoch {
        println!("{:>12} {bytes:>12}  {partitions:?}", epoch.0);
    }
    println!(
        "{} checkpoints at {} epochs, {} bytes",
        checkpoints.len(),
        by_epoch.len(),
        checkpoints.iter().map(|c| c.bytes).sum::<u64>()
    );
    if args.verify {
        let mut damaged = 0;
        for e in segments
            .iter()
            .filter_map(|s| archive.read_segment(s).err())
        {
            println!("damaged: {e:#}");
            damaged += 1;
        }
        for e in checkpoints
            .iter()
            .filter_map(|c| archive.read_checkpoint(c).err())
        {
            println!("damaged: {e:#}");
            damaged += 1;
        }
        if damaged > 0 {
            // Readers pass a damaged file over; say whether they still find every epoch.
            if let Some((first, last)) = segments.first().zip(segments.last()) {
                let reach = segments.iter().map(|s| s.last).max().unwrap_or(last.last);
                match archive.batches(first.first, reach) {
                    Ok(_) => println!(
                        "every epoch {}..={reach} is still held by a segment that reads back",
                        first.first
                    ),
                    Err(e) => println!("{e:#}"),
                }
            }
            println!("{damaged} damaged files");
            return Ok(false);
        }
        println!("every segment and checkpoint reads back and matches its hash");
    }
    Ok(true)
}

/// `detflow replay`: the state of every partition after `--at`, written as partition
/// stores under `--out`.
pub(crate) fn replay(args: &ReplayArgs, builder: &NodeBuilder) -> Result<bool> {
    let history = History::open(&args.history, builder)?;
    let at = Epoch(args.at);
    let mut replayer = history.replayer(at)?;
    let batches = history.batches(replayer.epoch().next(), Some(at))?;
    eprintln!("replaying epochs {}..={at}", replayer.epoch().next());
    for batch in &batches {
        replayer
            .apply(batch)
            .with_context(|| format!("re-executing epoch {}", batch.epoch))?;
    }
    if args.out.exists() && std::fs::read_dir(&args.out)?.next().is_some() {
        bail!(
            "{} is not empty: replay writes into an empty directory",
            args.out.display()
        );
    }
    for p in 0..history.config.partitions() {
        let id = PartitionId(p);
        let dir = args.out.join(format!("partition-{p}"));
        let mut store =
            FjallStore::open(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut rows = 0u64;
        for (key, value) in replayer.state() {
            if !key.is_system() && owned_by(&history.map, key, id) {
                store.put(key.clone(), value.clone());
                rows += 1;
            }
        }
        store.commit_epoch(at);
        store
            .sync()
            .with_context(|| format!("syncing {}", dir.display()))?;
        println!(
            "partition {p}: {rows} rows after epoch {at} (state digest {}) in {}",
            replayer.digests()[p as usize],
            dir.display()
        );
    }
    Ok(true)
}

/// Whether partition `p` holds `key` (replicated tables are on every partition).
fn owned_by(map: &PartitionMap, key: &Key, p: PartitionId) -> bool {
    match map.owner(key) {
        Ok(Owner::Partition(owner)) => owner == p,
        Ok(Owner::Replicated) => true,
        Err(_) => false,
    }
}

/// `detflow explain`: one transaction of the log.
pub(crate) fn explain(args: &ExplainArgs, builder: &NodeBuilder) -> Result<bool> {
    let history = History::open(&args.history, builder)?;
    let (epoch, index) = parse_position(&args.position)?;
    let mut replayer = history.replayer(Epoch(epoch.0 - 1))?;
    let batches = history.batches(replayer.epoch().next(), Some(epoch))?;
    let (last, before) = batches.split_last().context("the log is empty")?;
    for batch in before {
        replayer
            .apply(batch)
            .with_context(|| format!("re-executing epoch {}", batch.epoch))?;
    }
    let Some(txn) = last.txns.get(index as usize).cloned() else {
        bail!(
            "epoch {epoch} holds {} transactions; there is no index {index}",
            last.txns.len()
        );
    };
    let state_before: BTreeMap<Key, Value> = replayer.state().clone();
    let replayed = replayer
        .apply(last)
        .with_context(|| format!("re-executing epoch {epoch}"))?;
    // What the epoch's earlier transactions wrote, over the state before the epoch: the
    // state this one ran on.
    let mut state = state_before;
    for earlier in &replayed[..index as usize] {
        for (key, value) in &earlier.writes {
            match value {
                Some(v) => state.insert(key.clone(), v.clone()),
                None => state.remove(key),
            };
        }
    }
    let this = &replayed[index as usize];
    let position = Position::new(epoch, index);
    let routed = route(position, txn.clone(), &history.map);
    println!("position {epoch}:{index}");
    println!(
        "call      {} by session {} (call {}) through gateway node {}",
        txn.procedure, txn.client, txn.seq, txn.gateway
    );
    println!("args      {}", msgpack_as_json(&txn.args));
    println!(
        "plan      participants {:?}, writing {:?}{}",
        routed.participants.iter().map(|p| p.0).collect::<Vec<_>>(),
        routed.active.iter().map(|p| p.0).collect::<Vec<_>>(),
        routed
            .rejected
            .as_ref()
            .map_or(String::new(), |r| format!(", rejected at routing: {r}"))
    );
    println!("footprint (and the values it could read when it ran)");
    for (spec, access, owner) in routed.routes() {
        let owner = match owner {
            Owner::Partition(p) => format!("partition {p}"),
            Owner::Replicated => "replicated".into(),
        };
        println!("  {access:?} {spec:?} on {owner}");
        let rows: Vec<(&Key, &Value)> = match spec {
            detflow_protocol::KeySpec::Exact(key) => state.get_key_value(key).into_iter().collect(),
            detflow_protocol::KeySpec::Prefix(prefix) => state
                .range(prefix.clone()..)
                .take_while(|(k, _)| k.starts_with(prefix))
                .take(args.rows_max)
                .collect(),
        };
        if rows.is_empty() {
            println!("    (absent)");
        }
        for (key, value) in rows {
            println!("    {key} = {}", msgpack_as_json(value));
        }
    }
    println!("writes");
    if this.writes.is_empty() {
        println!("  (none)");
    }
    for (key, value) in &this.writes {
        match value {
            Some(v) => println!("  {key} = {}", msgpack_as_json(v)),
            None => println!("  {key} deleted"),
        }
    }
    match &this.outcome {
        Outcome::Committed(output) => println!("result    committed: {}", msgpack_as_json(output)),
        Outcome::Aborted(reason) => println!("result    aborted: {reason}"),
    }
    let digest: Vec<String> = replayer
        .digests()
        .iter()
        .enumerate()
        .map(|(p, d)| format!("{p}: {d}"))
        .collect::<Vec<_>>();
    println!("state digests after epoch {epoch}: {}", digest.join(", "));
    Ok(true)
}

/// `EPOCH:INDEX`.
fn parse_position(text: &str) -> Result<(Epoch, u32)> {
    let parsed = text
        .split_once(':')
        .and_then(|(e, i)| Some((e.trim().parse().ok()?, i.trim().parse().ok()?)));
    match parsed {
        Some((epoch, index)) if epoch > 0 => Ok((Epoch(epoch), index)),
        _ => bail!("a position is EPOCH:INDEX with EPOCH from 1 (e.g. 1200:3), not {text:?}"),
    }
}

/// MessagePack shown as JSON (binary as arrays of numbers); raw hex if it does not decode.
fn msgpack_as_json(bytes: &[u8]) -> String {
    match rmp_serde::from_slice::<serde_json::Value>(bytes) {
        Ok(value) => value.to_string(),
        Err(_) => bytes.iter().map(|b| format!("{b:02x}")).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_parse_or_say_what_they_should_be() {
        assert_eq!(parse_position("12:3").unwrap(), (Epoch(12), 3));
        for bad in ["12", "0:1", "a:b", "12:-1"] {
            let error = parse_position(bad).unwrap_err().to_string();
            assert!(error.contains("EPOCH:INDEX"), "{error}");
        }
    }
}
