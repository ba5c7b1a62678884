//! The serial reference: transactions executed one by one, in position order, on one map.
//!
//! This is what serial equivalence compares against (DESIGN.md §12) and the baseline of
//! the engine-overhead benchmark. It shares only the [`Txn`] API and the procedures with
//! the executor: no partitioning, no plans, no remote reads.

use crate::mailbox;
use crate::registry::Registry;
use crate::txn::{Effects, Txn, VALUE_BYTES_MAX_DEFAULT};
use detflow_protocol::mailbox::{DELIVER_PROCEDURE, Letter, next_letter_key};
use detflow_protocol::{AbortReason, Key, Outcome, PartitionId, Transaction, Value, codec};
use std::collections::BTreeMap;

/// Runs `txn` against `view`, writing values of at most `value_bytes_max` bytes: the
/// outcome and, when committed, its effects (writes to apply, letters to post).
///
/// A procedure that panics aborts with [`AbortReason::Panicked`] and its writes are
/// discarded; a panic of the view itself (a failing store) is not caught (see
/// [`in_procedure`](crate::in_procedure)). A [`DELIVER_PROCEDURE`] transaction consumes
/// letters (see [`detflow_protocol::mailbox`]).
pub fn run(
    registry: &Registry,
    txn: &Transaction,
    view: &dyn crate::txn::ReadView,
    value_bytes_max: usize,
) -> (Outcome, Option<Effects>) {
    let mut tx = Txn::new(&txn.footprint, view).with_value_bytes_max(value_bytes_max);
    let output = if txn.procedure == DELIVER_PROCEDURE {
        mailbox::deliver(registry, &mut tx, &txn.args)
    } else {
        registry.execute(&txn.procedure, &mut tx, &txn.args)
    };
    let checked = output.and_then(|output| {
        mailbox::check_letters(registry, tx.letters())?;
        Ok(output)
    });
    match checked {
        Ok(output) => (Outcome::Committed(output), Some(tx.into_effects())),
        Err(reason) => (Outcome::Aborted(reason), None),
    }
}

/// What the reference did with one transaction.
#[derive(Debug)]
pub struct Executed {
    /// Commit or abort.
    pub outcome: Outcome,
    /// The letters it sent, with the numbers its outbox gave them.
    pub sent: Vec<(u64, Letter)>,
    /// The partition whose outbox holds them, when there are any.
    pub posted_to: Option<PartitionId>,
    /// The letters it consumed, by outbox and number.
    pub consumed: Vec<(PartitionId, u64)>,
    /// The events it published, in order: (stream, data).
    pub events: Vec<(String, Value)>,
    /// The writes it made, in key order (`None`: a delete), letters and their outbox
    /// records aside.
    pub writes: Vec<(Key, Option<Value>)>,
    /// What each of `writes` replaced, in the same order (`None`: absent before).
    pub overwritten: Vec<Option<Value>>,
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
        self.execute_posting(txn, rejected, || PartitionId(0))
            .outcome
    }

    /// Executes one transaction, posting the letters it sends to the outbox of the
    /// partition `outbox` names (the one that reports its result, which routing decides;
    /// asked only if there are letters).
    pub fn execute_posting(
        &mut self,
        txn: &Transaction,
        rejected: Option<&AbortReason>,
        outbox: impl FnOnce() -> PartitionId,
    ) -> Executed {
        if let Some(reason) = rejected {
            return Executed {
                outcome: Outcome::Aborted(reason.clone()),
                sent: Vec::new(),
                posted_to: None,
                consumed: Vec::new(),
                events: Vec::new(),
                writes: Vec::new(),
                overwritten: Vec::new(),
            };
        }
        let (outcome, effects) = run(self.registry, txn, &self.state, self.value_bytes_max);
        let effects = effects.unwrap_or_default();
        let writes: Vec<(Key, Option<Value>)> = effects.writes.into_iter().collect();
        let mut overwritten = Vec::with_capacity(writes.len());
        for (key, value) in &writes {
            overwritten.push(match value {
                Some(v) => self.state.insert(key.clone(), v.clone()),
                None => self.state.remove(key),
            });
        }
        let mut sent = Vec::new();
        let mut posted_to = None;
        if !effects.letters.is_empty() {
            let outbox = outbox();
            posted_to = Some(outbox);
            let next = self
                .state
                .get(&next_letter_key(outbox))
                .and_then(|bytes| codec::decode(bytes).ok())
                .unwrap_or(1);
            let (records, numbered) = mailbox::post(outbox, next, effects.letters);
            self.state.extend(records);
            sent = numbered;
        }
        Executed {
            outcome,
            sent,
            posted_to,
            consumed: effects.consumed,
            events: effects.events,
            writes,
            overwritten,
        }
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
