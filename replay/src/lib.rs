//! Re-execution of a committed log: the state after any epoch, the state digests every
//! replica should have had after each epoch, and what other procedures would have done
//! with the same traffic.
//!
//! detflow's state is a function of its initial rows and its log, so re-executing the log
//! answers questions about the past exactly. A [`Replayer`] runs the log's batches in
//! order, each transaction routed by the scheduler's own [`route`] (so a transaction the
//! cluster refused is refused here too) and executed by the serial executor on one map of
//! the whole state: serial equivalence (DESIGN.md §12) makes that the state every partition
//! reached. It keeps each partition's [`StateDigest`] as the executors do, so its digests
//! after an epoch are the ones every replica of the partition must have had: comparing them
//! audits a cluster. A [`WhatIf`] runs each logged call a second time with other procedures,
//! on the recorded state just before it, and reports every call whose outcome or writes
//! would have differed.
//!
//! Like the other state machines, this crate does no I/O: the caller brings the batches
//! (from a node's log, an archive or a simulation) and the initial rows.

pub mod archive;

use detflow_executor::serial::{self, SerialExecutor};
use detflow_executor::{Registry, StateDigest, VALUE_BYTES_MAX_DEFAULT};
use detflow_protocol::{
    AbortReason, Batch, ClientId, Epoch, Key, LOG_FORMAT_VERSION, Outcome, Owner, Position,
    RequestSeq, Transaction, Value,
};
use detflow_scheduler::{PartitionMap, route};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Why a log cannot be replayed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// Batches must come in epoch order from the one after the replayer's epoch.
    #[error("epoch {found} cannot follow epoch {last}: a log replays in order, from epoch 1")]
    OutOfOrder {
        /// The last epoch replayed.
        last: Epoch,
        /// The epoch offered.
        found: Epoch,
    },
    /// The batch was written by a build with another log format.
    #[error("epoch {epoch} has log format version {found}; this build replays version {supported}")]
    LogVersion {
        /// The batch's epoch.
        epoch: Epoch,
        /// Its version.
        found: u16,
        /// The one this build reads.
        supported: u16,
    },
}

/// One logged transaction as the replay executed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replayed {
    /// Where the log placed it.
    pub position: Position,
    /// The call as logged.
    pub txn: Arc<Transaction>,
    /// Commit (with the procedure's output) or abort.
    pub outcome: Outcome,
    /// The rows it wrote, in key order (`None`: deleted); empty if it aborted.
    pub writes: Vec<(Key, Option<Value>)>,
}

/// Runs a log's batches, in order, on the whole state (see the crate documentation).
pub struct Replayer<'r> {
    serial: SerialExecutor<'r>,
    map: PartitionMap,
    digests: Vec<StateDigest>,
    epoch: Epoch,
}

impl<'r> Replayer<'r> {
    /// A replayer at epoch 0: the cluster's `initial` rows (every partition's, replicated
    /// tables once), partitioned by `map`, run by the procedures of `registry`.
    pub fn new(
        registry: &'r Registry,
        map: PartitionMap,
        initial: BTreeMap<Key, Value>,
    ) -> Replayer<'r> {
        Replayer::at_checkpoint(registry, map, Epoch(0), initial)
    }

    /// A replayer at `epoch`, from `state`, the whole state after it: every partition's
    /// checkpoint of that epoch, user rows and outbox records (a checkpoint's other
    /// bookkeeping the serial executor does not keep).
    pub fn at_checkpoint(
        registry: &'r Registry,
        map: PartitionMap,
        epoch: Epoch,
        state: BTreeMap<Key, Value>,
    ) -> Replayer<'r> {
        let mut digests = vec![StateDigest::default(); map.partitions() as usize];
        for (key, value) in state.iter().filter(|(key, _)| !key.is_system()) {
            for_owners(&map, key, |p| {
                digests[p].replace(key, None, Some(value));
            });
        }
        Replayer {
            serial: SerialExecutor::new(registry, state),
            map,
            digests,
            epoch,
        }
    }

    /// The last epoch replayed (0 before any).
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The whole state after [`Replayer::epoch`], the executors' bookkeeping included.
    pub fn state(&self) -> &BTreeMap<Key, Value> {
        self.serial.state()
    }

    /// Each partition's state digest after [`Replayer::epoch`], by partition number: what
    /// every replica of it had after that epoch.
    pub fn digests(&self) -> &[StateDigest] {
        &self.digests
    }

    /// Replays the next epoch's batch; what each of its transactions did, in log order.
    pub fn apply(&mut self, batch: &Batch) -> Result<Vec<Replayed>, ReplayError> {
        self.check_next(batch)?;
        let mut replayed = Vec::with_capacity(batch.txns.len());
        for (index, txn) in batch.txns.iter().enumerate() {
            let position = Position::new(batch.epoch, index as u32);
            let rejected = route(position, txn.clone(), &self.map).rejected;
            replayed.push(self.execute_one(position, txn, rejected.as_ref()));
        }
        self.epoch = batch.epoch;
        Ok(replayed)
    }

    /// Replays batches until the state is the one after `epoch` (or the batches run out);
    /// the epoch reached.
    pub fn run_to<'b>(
        &mut self,
        batches: impl IntoIterator<Item = &'b Batch>,
        epoch: Epoch,
    ) -> Result<Epoch, ReplayError> {
        for batch in batches {
            if batch.epoch <= self.epoch {
                continue;
            }
            if batch.epoch > epoch {
                break;
            }
            self.apply(batch)?;
        }
        Ok(self.epoch)
    }

    /// Executes one transaction of the epoch being replayed, `rejected` its routing
    /// verdict, and keeps the digests of the partitions it wrote.
    fn execute_one(
        &mut self,
        position: Position,
        txn: &Arc<Transaction>,
        rejected: Option<&AbortReason>,
    ) -> Replayed {
        let map = &self.map;
        let designated = || route(position, txn.clone(), map).designated();
        let done = self.serial.execute_posting(txn, rejected, designated);
        for ((key, value), old) in done.writes.iter().zip(&done.overwritten) {
            if key.is_system() {
                continue;
            }
            let digests = &mut self.digests;
            for_owners(map, key, |p| {
                digests[p].replace(key, old.as_ref(), value.as_ref());
            });
        }
        Replayed {
            position,
            txn: txn.clone(),
            outcome: done.outcome,
            writes: done.writes,
        }
    }

    fn check_next(&self, batch: &Batch) -> Result<(), ReplayError> {
        if batch.version != LOG_FORMAT_VERSION {
            return Err(ReplayError::LogVersion {
                epoch: batch.epoch,
                found: batch.version,
                supported: LOG_FORMAT_VERSION,
            });
        }
        if batch.epoch != self.epoch.next() {
            return Err(ReplayError::OutOfOrder {
                last: self.epoch,
                found: batch.epoch,
            });
        }
        Ok(())
    }
}

/// Calls `f` with each partition that holds `key`: its owner, or every partition for a
/// replicated table. A key no partition can own was never written (routing refuses it).
fn for_owners(map: &PartitionMap, key: &Key, mut f: impl FnMut(usize)) {
    match map.owner(key) {
        Ok(Owner::Partition(p)) => f(p.0 as usize),
        Ok(Owner::Replicated) => (0..map.partitions() as usize).for_each(f),
        Err(_) => {}
    }
}

/// A logged call that other procedures would have run differently.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Difference {
    /// Where the log placed it.
    pub position: Position,
    /// The calling client and its sequence number.
    pub call: (ClientId, RequestSeq),
    /// The procedure called.
    pub procedure: String,
    /// Its encoded arguments.
    pub args: Vec<u8>,
    /// What the recorded procedures did.
    pub recorded: Outcome,
    /// What the candidate procedures would have done.
    pub candidate: Outcome,
    /// The rows the recorded procedures wrote.
    pub recorded_writes: Vec<(Key, Option<Value>)>,
    /// The rows the candidate procedures would have written.
    pub candidate_writes: Vec<(Key, Option<Value>)>,
}

impl Difference {
    /// Whether the outcome (commit and output, or abort and reason) differs.
    pub fn outcome_differs(&self) -> bool {
        self.recorded != self.candidate
    }

    /// Whether the rows written differ.
    pub fn writes_differ(&self) -> bool {
        self.recorded_writes != self.candidate_writes
    }
}

/// Replays a log with its recorded procedures and runs each call a second time with
/// candidate procedures, on the recorded state just before the call (not on a history the
/// candidates rewrote: each difference is that call's own, not a consequence of an earlier
/// one). A call the cluster refused by routing is refused by both and never differs.
pub struct WhatIf<'r> {
    recorded: Replayer<'r>,
    candidate: &'r Registry,
    /// The largest value a candidate may write, as the executors' limit.
    value_bytes_max: usize,
}

impl<'r> WhatIf<'r> {
    /// A what-if run at epoch 0 (see [`Replayer::new`]).
    pub fn new(
        recorded: &'r Registry,
        candidate: &'r Registry,
        map: PartitionMap,
        initial: BTreeMap<Key, Value>,
    ) -> WhatIf<'r> {
        WhatIf {
            recorded: Replayer::new(recorded, map, initial),
            candidate,
            value_bytes_max: VALUE_BYTES_MAX_DEFAULT,
        }
    }

    /// The replay of the recorded history.
    pub fn recorded(&self) -> &Replayer<'r> {
        &self.recorded
    }

    /// Runs the next epoch's batch both ways; the calls that differ, in log order.
    pub fn apply(&mut self, batch: &Batch) -> Result<Vec<Difference>, ReplayError> {
        self.recorded.check_next(batch)?;
        // Each call's candidate run needs the state just before it: run the recorded
        // batch one transaction at a time.
        let mut differences = Vec::new();
        for (index, txn) in batch.txns.iter().enumerate() {
            let position = Position::new(batch.epoch, index as u32);
            let rejected = route(position, txn.clone(), &self.recorded.map).rejected;
            let candidate = match &rejected {
                Some(reason) => (Outcome::Aborted(reason.clone()), Vec::new()),
                None => candidate_run(
                    self.candidate,
                    txn,
                    self.recorded.state(),
                    self.value_bytes_max,
                ),
            };
            let done = self.recorded.execute_one(position, txn, rejected.as_ref());
            if (&done.outcome, &done.writes) != (&candidate.0, &candidate.1) {
                differences.push(Difference {
                    position,
                    call: (txn.client, txn.seq),
                    procedure: txn.procedure.clone(),
                    args: txn.args.clone(),
                    recorded: done.outcome,
                    candidate: candidate.0,
                    recorded_writes: done.writes,
                    candidate_writes: candidate.1,
                });
            }
        }
        self.recorded.epoch = batch.epoch;
        Ok(differences)
    }
}

/// Runs `txn` with `registry` on `state` without applying it: its outcome and writes.
fn candidate_run(
    registry: &Registry,
    txn: &Transaction,
    state: &BTreeMap<Key, Value>,
    value_bytes_max: usize,
) -> (Outcome, Vec<(Key, Option<Value>)>) {
    let (outcome, effects) = serial::run(registry, txn, state, value_bytes_max);
    let writes = effects
        .map(|e| e.writes.into_iter().collect())
        .unwrap_or_default();
    (outcome, writes)
}
