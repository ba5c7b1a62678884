//! Replica agreement: every pair of sequencer replicas holds the same batches up to the
//! lower of their commit epochs, and no replica ever committed a batch another replica
//! committed differently (checked as the run goes).

use crate::world::Outcome;

pub(crate) fn check(run: &Outcome) -> Vec<String> {
    let mut failures = run.online_failures.clone();
    for (i, (log_i, commit_i)) in run.replica_logs.iter().enumerate() {
        for (j, (log_j, commit_j)) in run.replica_logs.iter().enumerate().skip(i + 1) {
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
    let committed = run.log.len();
    for (i, (log, commit)) in run.replica_logs.iter().enumerate() {
        if (commit.0 as usize) < committed && log.len() >= committed {
            // A lagging replica is allowed; one that lost a committed batch is not.
            if let Some(e) = (0..committed).find(|e| log[*e].batch != run.log[*e]) {
                failures.push(format!(
                    "replica {i} holds a different batch at committed epoch {}",
                    e + 1
                ));
            }
        }
    }
    failures
}
