//! Replica agreement: every pair of sequencer replicas holds the same batches up to the
//! lower of their commit epochs, and no replica ever committed a batch another replica
//! committed differently (checked as the run goes).

use crate::world::Outcome;
use detflow_protocol::{Batch, Epoch, LogEntry};
use std::sync::Arc;

pub(crate) fn check(run: &Outcome) -> Vec<String> {
    let mut failures = run.online_failures.clone();
    failures.extend(check_logs(&run.replica_logs, &run.log));
    failures
}

/// The batch of `epoch` in a replica's final log, unless compacted or beyond it.
fn entry(replica: &(Epoch, Vec<LogEntry>, Epoch), epoch: u64) -> Option<&Arc<Batch>> {
    let (start, held, _) = replica;
    let i = epoch.checked_sub(start.0 + 1)?;
    held.get(i as usize).map(|e| &e.batch)
}

/// Checks each replica's final `(log start, log after it, commit epoch)` against the
/// others and against the committed `log` (epochs from 1). Compacted epochs are not
/// compared: they are gone from the replica.
pub(crate) fn check_logs(
    replica_logs: &[(Epoch, Vec<LogEntry>, Epoch)],
    log: &[Arc<Batch>],
) -> Vec<String> {
    let mut failures = Vec::new();
    for (i, a) in replica_logs.iter().enumerate() {
        for (j, b) in replica_logs.iter().enumerate().skip(i + 1) {
            let common = a.2.min(b.2).0;
            let first = a.0.max(b.0).0 + 1;
            let differs = (first..=common).find(|&e| match (entry(a, e), entry(b, e)) {
                (Some(x), Some(y)) => x != y,
                _ => false,
            });
            if let Some(e) = differs {
                failures.push(format!(
                    "replicas {i} and {j} disagree on committed epoch {e}"
                ));
            }
        }
    }
    let committed = log.len() as u64;
    for (i, held) in replica_logs.iter().enumerate() {
        let last = held.0.0 + held.1.len() as u64;
        if held.2.0 < committed && last >= committed {
            // A lagging replica is allowed; one that lost a committed batch is not.
            let differs = (held.0.0 + 1..=committed)
                .find(|&e| entry(held, e).is_some_and(|b| *b != log[e as usize - 1]));
            if let Some(e) = differs {
                failures.push(format!(
                    "replica {i} holds a different batch at committed epoch {e}"
                ));
            }
        }
    }
    failures
}
