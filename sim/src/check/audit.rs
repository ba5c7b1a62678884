//! The audit: re-executing the run's log from its initial rows (`detflow_replay`) gives,
//! after every epoch, each partition's state digest; every replica must have had that
//! digest after that epoch. This is what `detflow audit` does to a cluster, judged here
//! against every replica of every epoch; the first divergence is reported with its epoch
//! and partition. Every checkpoint must hold the re-execution's state after its epoch,
//! and replaying the log from the last epoch every partition checkpointed (as `detflow
//! replay` does from an archive) must end in the same state as replaying all of it.

use crate::world::Outcome;
use detflow_executor::StateDigest;
use detflow_protocol::mailbox::outbox_partition;
use detflow_protocol::{Epoch, Key, PartitionId, Value};
use detflow_replay::Replayer;
use std::collections::BTreeMap;

/// The audit's failures, and the re-executed state after each of `keep` (the epochs
/// other checkers compare with), as it passes them.
pub(crate) fn check(
    run: &Outcome,
    keep: &[Epoch],
) -> (Vec<String>, BTreeMap<Epoch, BTreeMap<Key, Value>>) {
    let mut kept = BTreeMap::new();
    (check_keeping(run, keep, &mut kept), kept)
}

fn check_keeping(
    run: &Outcome,
    keep: &[Epoch],
    kept: &mut BTreeMap<Epoch, BTreeMap<Key, Value>>,
) -> Vec<String> {
    let initial = run.initial.iter().cloned().collect();
    let mut replayer = Replayer::new(&run.registry, run.map.clone(), initial);
    for batch in &run.log {
        if let Err(e) = replayer.apply(batch) {
            return vec![format!("audit: the log does not replay: {e}")];
        }
        if keep.contains(&batch.epoch) {
            kept.insert(batch.epoch, replayer.state().clone());
        }
        for (p, expected) in replayer.digests().iter().enumerate() {
            let key = (PartitionId(p as u32), batch.epoch);
            for (replica, digest) in run.digests.get(&key).into_iter().flatten() {
                if digest != expected {
                    return vec![divergence(*replica, batch.epoch, *digest, *expected)];
                }
            }
            if let Some((replica, rows)) = run.checkpoints.get(&key) {
                let digest = user_digest(rows);
                if digest != *expected {
                    return vec![format!(
                        "audit: replica {replica}'s checkpoint of partition {p} after epoch {} \
                         has the state digest {digest}, but re-executing the log gives \
                         {expected}",
                        batch.epoch
                    )];
                }
            }
        }
    }
    match from_last_checkpoint(run) {
        Some((epoch, state)) if state != *replayer.state() => vec![format!(
            "audit: replaying the log from the checkpoints after epoch {epoch} ends in another \
             state than replaying it from the initial rows"
        )],
        _ => Vec::new(),
    }
}

/// The digest of the user rows among `rows`.
fn user_digest(rows: &[(Key, Value)]) -> StateDigest {
    let mut digest = StateDigest::default();
    for (key, value) in rows.iter().filter(|(key, _)| !key.is_system()) {
        digest.replace(key, None, Some(value));
    }
    digest
}

/// The state at the end of the log replayed from the last epoch at which every partition
/// has a checkpoint (as `detflow replay` starts from an archive's checkpoints), and that
/// epoch; none if no epoch has every partition's.
fn from_last_checkpoint(run: &Outcome) -> Option<(Epoch, BTreeMap<Key, Value>)> {
    let partitions = run.map.partitions();
    let mut by_epoch: BTreeMap<Epoch, Vec<&Vec<(Key, Value)>>> = BTreeMap::new();
    for ((_, epoch), (_, rows)) in &run.checkpoints {
        by_epoch.entry(*epoch).or_default().push(rows);
    }
    let (epoch, parts) = by_epoch
        .into_iter()
        .rev()
        .find(|(_, parts)| parts.len() == partitions as usize)?;
    let state = parts
        .into_iter()
        .flatten()
        .filter(|(key, _)| !key.is_system() || outbox_partition(key).is_some())
        .cloned()
        .collect();
    let mut replayer = Replayer::at_checkpoint(&run.registry, run.map.clone(), epoch, state);
    for batch in run.log.iter().filter(|b| b.epoch > epoch) {
        replayer.apply(batch).ok()?;
    }
    Some((epoch, replayer.state().clone()))
}

fn divergence(
    replica: detflow_protocol::ExecutorId,
    epoch: Epoch,
    digest: detflow_executor::StateDigest,
    expected: detflow_executor::StateDigest,
) -> String {
    format!(
        "audit: replica {replica} had the state digest {digest} after epoch {epoch}, but \
         re-executing the log gives {expected}"
    )
}
