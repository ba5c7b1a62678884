//! Liveness: after healing, every call is answered and every partition applies the whole
//! committed log.

use crate::world::{LIVENESS_US, Outcome};

pub(crate) fn check(run: &Outcome) -> Vec<String> {
    let mut failures = Vec::new();
    if run.unanswered > 0 {
        failures.push(format!(
            "{} call(s) still unanswered {:.1}s (virtual) after healing at {} (bound {}s, {} events)",
            run.unanswered,
            run.end.since_us(run.healed_at) as f64 / 1e6,
            run.healed_at,
            LIVENESS_US / 1_000_000,
            run.events
        ));
    }
    let last = run.log.len() as u64;
    for (replica, next) in &run.executor_epochs {
        if next.0 != last + 1 {
            failures.push(format!(
                "{replica} stopped before epoch {next}, the committed log ends at epoch {last}"
            ));
        }
    }
    failures
}
