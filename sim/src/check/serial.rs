//! Serial equivalence: the final state and every result equal executing the committed log
//! one transaction at a time, in position order, on a single map.

use crate::world::Outcome;
use detflow_executor::serial::SerialExecutor;
use detflow_protocol::message::Reply;
use detflow_protocol::{Key, Outcome as TxnOutcome, Position, Value};
use std::collections::BTreeMap;

/// The reference execution of a run's log.
pub(crate) struct Reference {
    /// `(procedure, args, outcome)` in log order.
    pub(crate) executed: Vec<(String, Vec<u8>, TxnOutcome)>,
    pub(crate) outcomes: BTreeMap<Position, TxnOutcome>,
    pub(crate) state: BTreeMap<Key, Value>,
}

pub(crate) fn replay(run: &Outcome) -> Reference {
    let mut serial = SerialExecutor::new(&run.registry, run.initial.iter().cloned().collect());
    let mut executed = Vec::new();
    let mut outcomes = BTreeMap::new();
    for batch in &run.log {
        for (i, txn) in batch.txns.iter().enumerate() {
            let position = Position::new(batch.epoch, i as u32);
            // Routing validity depends on the partition map, not on execution.
            let routed = detflow_scheduler::route(position, txn.clone(), &run.map);
            let outcome = serial.execute(txn, routed.rejected.as_ref());
            executed.push((txn.procedure.clone(), txn.args.clone(), outcome.clone()));
            outcomes.insert(position, outcome);
        }
    }
    Reference {
        executed,
        outcomes,
        state: serial.into_state(),
    }
}

pub(crate) fn compare(
    run: &Outcome,
    reference: &Reference,
    state: &BTreeMap<Key, Value>,
) -> Vec<String> {
    let mut failures = Vec::new();
    for ((client, seq), record) in &run.calls {
        for reply in &record.replies {
            let Reply::Done { position, outcome } = reply else {
                continue;
            };
            match reference.outcomes.get(position) {
                Some(expected) if expected == outcome => {}
                Some(expected) => failures.push(format!(
                    "call (client {client}, seq {seq}) at {position}: got {}, serial execution gives {}",
                    describe(outcome),
                    describe(expected)
                )),
                None => failures.push(format!(
                    "call (client {client}, seq {seq}) answered for position {position}, which the log does not hold"
                )),
            }
        }
    }
    let keys: std::collections::BTreeSet<&Key> =
        state.keys().chain(reference.state.keys()).collect();
    for key in keys {
        let (got, want) = (state.get(key), reference.state.get(key));
        if got != want {
            failures.push(format!(
                "key {key}: final state {}, serial execution gives {}",
                show(got),
                show(want)
            ));
        }
    }
    failures
}

fn describe(outcome: &TxnOutcome) -> String {
    match outcome {
        TxnOutcome::Committed(out) => format!("commit with output {}", show(Some(out))),
        TxnOutcome::Aborted(reason) => format!("abort ({reason})"),
    }
}

fn show(value: Option<&Value>) -> String {
    match value {
        None => "absent".into(),
        Some(v) if v.len() <= 16 => format!("{v:02x?}"),
        Some(v) => format!("{:02x?}… ({} bytes)", &v[..16], v.len()),
    }
}
