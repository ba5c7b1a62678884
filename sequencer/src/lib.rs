//! The sequencer: orders submitted transactions into epochs and appends them to the log.
//!
//! Two machines share one batching rule and one de-duplication table:
//!
//! - [`Sequencer`]: a single replica whose log is durable once the local disk says so.
//! - [`Replica`] (module [`replica`]): one member of a replicated group running Raft over
//!   the log of batches, for which "committed" means durable on a majority. See that
//!   module for its contract and the order in which a driver calls it.
//!
//! The single-replica sequencer:
//!
//! ```text
//!  Submit(txn) ──┐                 ┌──▶ Persist(batch)     the driver makes it durable …
//!  Tick ─────────┼─▶ Sequencer ────┼──▶ Committed(batch)   … and once it says Persisted,
//!  Persisted(e) ─┘                 └──▶ Duplicate(client, seq)      the batch is committed
//! ```
//!
//! An epoch opens when the first transaction arrives while none is open, and closes
//! `epoch_duration_us` later or as soon as it holds `batch_txns_max` transactions or
//! `batch_bytes_max` bytes of them. Closing
//! emits [`Output::Persist`]; the log append is committed only when the driver answers
//! [`Input::Persisted`], in epoch order. With one replica "durable" means fsynced
//! locally.
//!
//! A submission `(client, seq)` already in the log, or in a batch on its way there, is
//! not appended again: it yields [`Output::Duplicate`].

#![forbid(unsafe_code)]

mod batcher;
mod dedup;
pub mod replica;

pub use dedup::DedupTable;
pub use replica::{
    Durable, DurableError, LogWrite, PeerDrop, PeerDrops, Replica, ReplicaBugs, ReplicaConfig,
    ReplicaStats,
};

use batcher::Batcher;
use detflow_protocol::{Batch, ClientId, Epoch, Machine, RequestSeq, Time, Transaction};
use std::collections::VecDeque;
use std::sync::Arc;

/// Sequencer settings. Construct with `..Config::default()` so that new fields keep their
/// defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// How long an epoch stays open after its first transaction arrives.
    pub epoch_duration_us: u64,
    /// An epoch closes as soon as it holds this many transactions.
    pub batch_txns_max: usize,
    /// An epoch closes as soon as its transactions' encoded size (the upper bound
    /// [`detflow_protocol::replication::txn_encoded_bytes_max`]) reaches this many bytes, so
    /// a batch exceeds it by at most one transaction. Default 4 MiB: with transactions of
    /// at most 1 MiB (the gateway's limit) every batch stays well under the 16 MiB frame.
    pub batch_bytes_max: usize,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            epoch_duration_us: 5_000,
            batch_txns_max: 10_000,
            batch_bytes_max: 4 << 20,
        }
    }
}

/// An input to the sequencer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// The log is durable up to and including this epoch.
    Persisted {
        /// The last durable epoch.
        up_to: Epoch,
    },
    /// A transaction to order.
    Submit(Arc<Transaction>),
    /// Time passed; closes the open epoch if its deadline is due.
    Tick,
}

/// An effect the driver performs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// The batch is committed: schedule it.
    Committed(Arc<Batch>),
    /// The submission was already sequenced; it is not appended again.
    Duplicate {
        /// The session.
        client: ClientId,
        /// The call number.
        seq: RequestSeq,
    },
    /// Make the batch durable, then answer `Persisted`.
    Persist(Arc<Batch>),
}

/// Counters of the sequencer's work.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Transactions appended.
    pub sequenced: u64,
    /// Submissions refused as duplicates.
    pub duplicates: u64,
    /// Batches closed.
    pub batches: u64,
}

/// Batches submissions into epochs; the single-replica sequencer.
pub struct Sequencer {
    batcher: Batcher,
    next_epoch: Epoch,
    /// Closed batches waiting for `Persisted`, in epoch order.
    unpersisted: VecDeque<Arc<Batch>>,
    committed: Epoch,
    dedup: DedupTable,
    stats: Stats,
}

impl Sequencer {
    /// A sequencer whose log is empty.
    pub fn new(config: Config) -> Sequencer {
        Sequencer {
            batcher: Batcher::new(config),
            next_epoch: Epoch(1),
            unpersisted: VecDeque::new(),
            committed: Epoch(0),
            dedup: DedupTable::default(),
            stats: Stats::default(),
        }
    }

    /// The last committed epoch.
    pub fn committed(&self) -> Epoch {
        self.committed
    }

    /// Work counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Whether nothing is open or waiting to be persisted.
    pub fn is_idle(&self) -> bool {
        self.batcher.is_empty() && self.unpersisted.is_empty()
    }

    fn on_submit(&mut self, now: Time, txn: Arc<Transaction>, out: &mut Vec<Output>) {
        if !self.dedup.insert(txn.client, txn.seq) {
            self.stats.duplicates += 1;
            out.push(Output::Duplicate {
                client: txn.client,
                seq: txn.seq,
            });
            return;
        }
        self.batcher.push(now, txn);
        self.stats.sequenced += 1;
        if self.batcher.is_full() {
            self.close_epoch(out);
        }
    }

    fn on_tick(&mut self, now: Time, out: &mut Vec<Output>) {
        if !self.batcher.is_empty() && self.batcher.is_due(now) {
            self.close_epoch(out);
        }
    }

    fn on_persisted(&mut self, up_to: Epoch, out: &mut Vec<Output>) {
        while let Some(batch) = self.unpersisted.front() {
            if batch.epoch > up_to {
                break;
            }
            let batch = self.unpersisted.pop_front().expect("front exists");
            assert_eq!(batch.epoch, self.committed.next(), "commits in epoch order");
            self.committed = batch.epoch;
            out.push(Output::Committed(batch));
        }
    }

    fn close_epoch(&mut self, out: &mut Vec<Output>) {
        let batch = self.batcher.close(self.next_epoch);
        self.next_epoch = self.next_epoch.next();
        self.stats.batches += 1;
        self.unpersisted.push_back(batch.clone());
        out.push(Output::Persist(batch));
    }
}

impl Machine for Sequencer {
    type Input = Input;
    type Output = Output;

    fn handle(&mut self, now: Time, input: Input, out: &mut Vec<Output>) {
        match input {
            Input::Persisted { up_to } => self.on_persisted(up_to, out),
            Input::Submit(txn) => self.on_submit(now, txn, out),
            Input::Tick => self.on_tick(now, out),
        }
    }

    fn next_deadline(&self) -> Option<Time> {
        self.batcher.deadline()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use detflow_protocol::{Footprint, LOG_FORMAT_VERSION, NodeId};

    fn txn(client: u64, seq: u64) -> Arc<Transaction> {
        Arc::new(Transaction {
            client: ClientId(client),
            seq: RequestSeq(seq),
            gateway: NodeId(0),
            procedure: "p".into(),
            args: Vec::new(),
            footprint: Footprint::new(),
        })
    }

    fn run(s: &mut Sequencer, now: u64, input: Input) -> Vec<Output> {
        let mut out = Vec::new();
        s.handle(Time(now), input, &mut out);
        out
    }

    #[test]
    fn epoch_closes_at_its_deadline_and_commits_when_persisted() {
        let mut s = Sequencer::new(Config::default());
        assert_eq!(s.next_deadline(), None);
        assert!(run(&mut s, 100, Input::Submit(txn(1, 1))).is_empty());
        assert_eq!(s.next_deadline(), Some(Time(5_100)));
        assert!(run(&mut s, 200, Input::Submit(txn(2, 1))).is_empty());
        assert!(run(&mut s, 5_099, Input::Tick).is_empty());
        let batch = Arc::new(Batch {
            version: LOG_FORMAT_VERSION,
            epoch: Epoch(1),
            txns: vec![txn(1, 1), txn(2, 1)],
        });
        assert_eq!(
            run(&mut s, 5_100, Input::Tick),
            vec![Output::Persist(batch.clone())]
        );
        assert_eq!(s.next_deadline(), None);
        assert_eq!(
            run(&mut s, 5_300, Input::Persisted { up_to: Epoch(1) }),
            vec![Output::Committed(batch)]
        );
        assert_eq!(s.committed(), Epoch(1));
        assert!(s.is_idle());
    }

    #[test]
    fn full_batch_closes_at_once_and_commits_in_order() {
        let mut s = Sequencer::new(Config {
            epoch_duration_us: 5_000,
            batch_txns_max: 2,
            ..Config::default()
        });
        run(&mut s, 0, Input::Submit(txn(1, 1)));
        let first = run(&mut s, 0, Input::Submit(txn(1, 2)));
        assert!(matches!(&first[..], [Output::Persist(b)] if b.epoch == Epoch(1)));
        run(&mut s, 1, Input::Submit(txn(1, 3)));
        run(&mut s, 1, Input::Submit(txn(1, 4)));
        let committed = run(&mut s, 2, Input::Persisted { up_to: Epoch(2) });
        let epochs: Vec<_> = committed
            .iter()
            .map(|o| match o {
                Output::Committed(b) => b.epoch,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(epochs, vec![Epoch(1), Epoch(2)]);
    }

    #[test]
    fn duplicates_are_sequenced_once() {
        let mut s = Sequencer::new(Config::default());
        run(&mut s, 0, Input::Submit(txn(1, 1)));
        assert_eq!(
            run(&mut s, 1, Input::Submit(txn(1, 1))),
            vec![Output::Duplicate {
                client: ClientId(1),
                seq: RequestSeq(1)
            }]
        );
        assert_eq!(s.stats().sequenced, 1);
        assert_eq!(s.stats().duplicates, 1);
    }
}
