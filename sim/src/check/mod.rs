//! The checkers that judge a finished run, one per file.
//!
//! Each returns the failures it found as sentences naming the calls, positions and keys
//! involved. A seed passes only when every checker returns none.

pub(crate) mod agreement;
pub(crate) mod archive;
pub(crate) mod audit;
pub(crate) mod durable_sends;
pub(crate) mod exactly_once;
pub(crate) mod letters;
pub(crate) mod liveness;
pub(crate) mod partition_replicas;
pub(crate) mod placement;
pub(crate) mod raft;
pub(crate) mod serial;
pub(crate) mod snapshots;
pub(crate) mod streams;
pub(crate) mod valid_calls;

use crate::world::Outcome;
use detflow_protocol::{Key, Outcome as TxnOutcome, Value};
use std::collections::BTreeMap;

/// What the checkers derive from a run and share with the digest.
pub(crate) struct Verdict {
    pub(crate) failures: Vec<String>,
    /// The final state, merged over partitions.
    pub(crate) state: BTreeMap<Key, Value>,
    /// Committed and aborted transactions, by the reference.
    pub(crate) committed: u64,
    pub(crate) aborted: u64,
}

/// Runs every checker over `run`.
pub(crate) fn check_all(run: &Outcome) -> Verdict {
    let mut failures = Vec::new();
    failures.extend(agreement::check(run));
    failures.extend(liveness::check(run));
    failures.extend(partition_replicas::check(run));
    let (archive_failures, targets) = archive::contents(run);
    failures.extend(archive_failures);
    let keep = targets.as_ref().map_or(&[][..], |t| t.epochs.as_slice());
    let (audit_failures, serial_states) = audit::check(run, keep);
    failures.extend(audit_failures);
    failures.extend(archive::replays(run, targets, &serial_states));
    failures.extend(exactly_once::check(run));
    failures.extend(valid_calls::check(run));
    let (state, placement_failures) = placement::merged_state(run);
    failures.extend(placement_failures);
    let reference = serial::replay(run);
    failures.extend(serial::compare(run, &reference, &state));
    failures.extend(letters::check(run, &reference));
    failures.extend(streams::check(run, &reference));
    failures.extend(snapshots::check(run, &reference));
    let executed: Vec<_> = reference
        .executed
        .iter()
        .map(|(procedure, args, outcome)| detflow_workloads::Executed {
            procedure,
            args,
            outcome,
        })
        .collect();
    if let Err(v) = run.workload.check(&state, &executed) {
        failures.push(v.to_string());
    }
    let committed = reference
        .executed
        .iter()
        .filter(|(_, _, o)| matches!(o, TxnOutcome::Committed(_)))
        .count() as u64;
    Verdict {
        failures,
        state,
        committed,
        aborted: reference.executed.len() as u64 - committed,
    }
}

/// Keeps failure lists readable: the first few, then a count.
pub(crate) fn capped(mut failures: Vec<String>, max: usize) -> Vec<String> {
    if failures.len() > max {
        let more = failures.len() - max;
        failures.truncate(max);
        failures.push(format!("… and {more} more"));
    }
    failures
}
