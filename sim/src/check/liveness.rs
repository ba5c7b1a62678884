//! Liveness: the run drained, and every executor applied the whole log.

use crate::world::Outcome;
use detflow_protocol::Epoch;

pub(crate) fn check(run: &Outcome) -> Vec<String> {
    let mut failures = Vec::new();
    if !run.quiescent {
        failures.push(format!(
            "the run did not quiesce by virtual time {} ({} events)",
            run.end, run.events
        ));
    }
    let last = run.log.last().map_or(Epoch(0), |b| b.epoch);
    for (p, next) in run.executor_epochs.iter().enumerate() {
        if *next != last.next() {
            failures.push(format!(
                "partition {p} stopped before epoch {next}, the log ends at epoch {last}"
            ));
        }
    }
    failures
}
