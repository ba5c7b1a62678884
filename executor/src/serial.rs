//! The serial reference: transactions executed one by one, in position order, on one map.
//!
//! This is what serial equivalence compares against (DESIGN.md §12) and the baseline of
//! the engine-overhead benchmark. It shares only the [`Txn`] API and the procedures with
//! the executor: no partitioning, no plans, no remote reads.

use crate::registry::Registry;
use crate::txn::Txn;
use detflow_protocol::{AbortReason, Key, Outcome, Transaction, Value};
use std::collections::BTreeMap;

/// Runs `txn` against `view`: the outcome and, when committed, the writes to apply.
pub fn run(
    registry: &Registry,
    txn: &Transaction,
    view: &dyn crate::txn::ReadView,
) -> (Outcome, Option<crate::txn::WriteSet>) {
    let mut tx = Txn::new(&txn.footprint, view);
    match registry.execute(&txn.procedure, &mut tx, &txn.args) {
        Ok(output) => (Outcome::Committed(output), Some(tx.into_writes())),
        Err(reason) => (Outcome::Aborted(reason), None),
    }
}

/// A single map and the procedures, executing one transaction at a time.
pub struct SerialExecutor<'r> {
    registry: &'r Registry,
    state: BTreeMap<Key, Value>,
}

impl<'r> SerialExecutor<'r> {
    /// A reference starting from `state`.
    pub fn new(registry: &'r Registry, state: BTreeMap<Key, Value>) -> SerialExecutor<'r> {
        SerialExecutor { registry, state }
    }

    /// Executes one transaction. `rejected` is the routing verdict, which depends on the
    /// partition map rather than on execution.
    pub fn execute(&mut self, txn: &Transaction, rejected: Option<&AbortReason>) -> Outcome {
        if let Some(reason) = rejected {
            return Outcome::Aborted(reason.clone());
        }
        let (outcome, writes) = run(self.registry, txn, &self.state);
        for (key, value) in writes.into_iter().flatten() {
            match value {
                Some(v) => self.state.insert(key, v),
                None => self.state.remove(&key),
            };
        }
        outcome
    }

    /// The current state.
    pub fn state(&self) -> &BTreeMap<Key, Value> {
        &self.state
    }

    /// The final state.
    pub fn into_state(self) -> BTreeMap<Key, Value> {
        self.state
    }
}
