//! The serial reference: transactions executed one by one, in position order, on one map.
//!
//! This is what serial equivalence compares against (DESIGN.md §12) and the baseline of
//! the engine-overhead benchmark. It shares only the [`Txn`] API and the procedures with
//! the executor: no partitioning, no plans, no remote reads.

use crate::registry::Registry;
use crate::txn::{Txn, VALUE_BYTES_MAX_DEFAULT};
use detflow_protocol::{AbortReason, Key, Outcome, Transaction, Value};
use std::collections::BTreeMap;

/// Runs `txn` against `view`, writing values of at most `value_bytes_max` bytes: the
/// outcome and, when committed, the writes to apply.
///
/// A procedure that panics aborts with [`AbortReason::Panicked`] and its writes are
/// discarded; a panic of the view itself (a failing store) is not caught (see
/// [`in_procedure`](crate::in_procedure)).
pub fn run(
    registry: &Registry,
    txn: &Transaction,
    view: &dyn crate::txn::ReadView,
    value_bytes_max: usize,
) -> (Outcome, Option<crate::txn::WriteSet>) {
    let mut tx = Txn::new(&txn.footprint, view).with_value_bytes_max(value_bytes_max);
    match registry.execute(&txn.procedure, &mut tx, &txn.args) {
        Ok(output) => (Outcome::Committed(output), Some(tx.into_writes())),
        Err(reason) => (Outcome::Aborted(reason), None),
    }
}

/// A single map and the procedures, executing one transaction at a time.
pub struct SerialExecutor<'r> {
    registry: &'r Registry,
    state: BTreeMap<Key, Value>,
    value_bytes_max: usize,
}

impl<'r> SerialExecutor<'r> {
    /// A reference starting from `state`, with the executor's default value limit.
    pub fn new(registry: &'r Registry, state: BTreeMap<Key, Value>) -> SerialExecutor<'r> {
        SerialExecutor {
            registry,
            state,
            value_bytes_max: VALUE_BYTES_MAX_DEFAULT,
        }
    }

    /// Sets the largest value a transaction may write, as
    /// [`Executor::set_value_bytes_max`](crate::Executor::set_value_bytes_max) does: the
    /// reference must use the executors' limit to reach their outcomes.
    pub fn set_value_bytes_max(&mut self, value_bytes_max: usize) {
        self.value_bytes_max = value_bytes_max;
    }

    /// Executes one transaction. `rejected` is the routing verdict, which depends on the
    /// partition map rather than on execution.
    pub fn execute(&mut self, txn: &Transaction, rejected: Option<&AbortReason>) -> Outcome {
        if let Some(reason) = rejected {
            return Outcome::Aborted(reason.clone());
        }
        let (outcome, writes) = run(self.registry, txn, &self.state, self.value_bytes_max);
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
