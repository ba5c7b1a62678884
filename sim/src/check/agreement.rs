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

/// Checks each replica's final `(log, commit epoch)` against the others and against the
/// committed `log`.
pub(crate) fn check_logs(
    replica_logs: &[(Vec<LogEntry>, Epoch)],
    log: &[Arc<Batch>],
) -> Vec<String> {
    let mut failures = Vec::new();
    for (i, (log_i, commit_i)) in replica_logs.iter().enumerate() {
        for (j, (log_j, commit_j)) in replica_logs.iter().enumerate().skip(i + 1) {
            let common = commit_i.min(commit_j).0 as usize;
            let common = common.min(log_i.len()).min(log_j.len());
            if let Some(e) = (0..common).find(|e| log_i[*e].batch != log_j[*e].batch) {
                failures.push(format!(
                    "replicas {i} and {j} disagree on committed epoch {}",
                    e + 1
                ));
            }
        }
    }
    let committed = log.len();
    for (i, (held, commit)) in replica_logs.iter().enumerate() {
        if (commit.0 as usize) < committed && held.len() >= committed {
            // A lagging replica is allowed; one that lost a committed batch is not.
            if let Some(e) = (0..committed).find(|e| held[*e].batch != log[*e]) {
                failures.push(format!(
                    "replica {i} holds a different batch at committed epoch {}",
                    e + 1
                ));
            }
        }
    }
    failures
}
