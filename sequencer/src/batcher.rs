//! The open epoch: the batching rule of the leading [`crate::Replica`].
//!
//! An epoch opens when the first transaction arrives while none is open, and is due to
//! close `epoch_us` later or as soon as it holds `batch_txns_max` transactions or
//! `batch_bytes_max` bytes of them (by [`txn_encoded_bytes_max`]). Both caps are checked
//! after a push, so a batch exceeds the byte cap by at most one transaction: that keeps
//! a transaction larger than the cap sequenceable, alone in its batch.
//!
//! Group commit: while the log is idle (every earlier epoch committed) an epoch is due
//! `epoch_min_us` after it opened. At low load a transaction then waits for about one
//! quorum write instead of a whole `epoch_us`; at high load epochs close as the previous
//! one commits, so they grow with the load and amortize the write over more transactions.

use crate::Config;
use detflow_protocol::replication::txn_encoded_bytes_max;
use detflow_protocol::{Batch, Epoch, LOG_FORMAT_VERSION, Time, Transaction};
use std::sync::Arc;

/// The transactions of the open epoch and its closing deadline.
#[derive(Clone, Debug)]
pub(crate) struct Batcher {
    config: Config,
    open: Vec<Arc<Transaction>>,
    /// The sum of `txn_encoded_bytes_max` over `open`.
    open_bytes: usize,
    /// When the open epoch opened.
    opened: Option<Time>,
}

impl Batcher {
    pub(crate) fn new(config: Config) -> Batcher {
        assert!(config.batch_txns_max > 0, "batch_txns_max must be positive");
        assert!(
            config.batch_bytes_max > 0,
            "batch_bytes_max must be positive"
        );
        Batcher {
            config,
            open: Vec::new(),
            open_bytes: 0,
            opened: None,
        }
    }

    /// Adds `txn` to the open epoch, opening one at `now` if none is open. The caller
    /// checks [`Batcher::is_full`] first: a full epoch takes no more.
    pub(crate) fn push(&mut self, now: Time, txn: Arc<Transaction>) {
        assert!(!self.is_full(), "push into a full epoch");
        if self.open.is_empty() {
            self.opened = Some(now);
        }
        self.open_bytes = self.open_bytes.saturating_add(txn_encoded_bytes_max(&txn));
        self.open.push(txn);
    }

    /// Closes the open epoch as the batch of `epoch`.
    pub(crate) fn close(&mut self, epoch: Epoch) -> Arc<Batch> {
        assert!(!self.open.is_empty(), "closing an empty epoch");
        self.opened = None;
        self.open_bytes = 0;
        Arc::new(Batch {
            version: LOG_FORMAT_VERSION,
            epoch,
            txns: std::mem::take(&mut self.open),
        })
    }

    /// Abandons the open epoch, handing back its transactions in arrival order.
    pub(crate) fn abandon(&mut self) -> Vec<Arc<Transaction>> {
        self.opened = None;
        self.open_bytes = 0;
        std::mem::take(&mut self.open)
    }

    /// Whether the open epoch holds `batch_txns_max` transactions or `batch_bytes_max`
    /// bytes of them.
    pub(crate) fn is_full(&self) -> bool {
        self.open.len() >= self.config.batch_txns_max
            || self.open_bytes >= self.config.batch_bytes_max
    }

    /// Whether the open epoch should close at `now`: it is full or its time is up, its
    /// shorter time if the log is `idle`.
    pub(crate) fn is_due(&self, now: Time, idle: bool) -> bool {
        self.is_full() || self.deadline(idle).is_some_and(|d| now >= d)
    }

    /// Whether no epoch is open.
    pub(crate) fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// When the open epoch's time is up, if one is open: `epoch_min_us` after it opened
    /// if the log is `idle`, `epoch_us` otherwise.
    pub(crate) fn deadline(&self, idle: bool) -> Option<Time> {
        let open_us = match idle {
            true => self.config.epoch_min_us.min(self.config.epoch_us),
            false => self.config.epoch_us,
        };
        self.opened.map(|opened| opened.plus_us(open_us))
    }

    /// The open epoch's transactions in arrival order.
    pub(crate) fn txns(&self) -> &[Arc<Transaction>] {
        &self.open
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use detflow_protocol::{ClientId, Footprint, NodeId, RequestSeq};

    fn txn(seq: u64, args_bytes: usize) -> Arc<Transaction> {
        Arc::new(Transaction {
            client: ClientId(1),
            seq: RequestSeq(seq),
            gateway: NodeId(0),
            procedure: "p".into(),
            args: vec![0; args_bytes],
            footprint: Footprint::new(),
        })
    }

    #[test]
    fn an_epoch_is_full_once_its_bytes_reach_the_cap() {
        let one = txn_encoded_bytes_max(&txn(1, 1_000));
        let mut b = Batcher::new(Config {
            batch_bytes_max: 3 * one,
            ..Config::default()
        });
        b.push(Time(0), txn(1, 1_000));
        b.push(Time(0), txn(2, 1_000));
        assert!(!b.is_full() && !b.is_due(Time(0), false));
        b.push(Time(0), txn(3, 1_000));
        assert!(b.is_full() && b.is_due(Time(0), false));
        assert_eq!(b.close(Epoch(1)).txns.len(), 3);
        // The count restarts with the next epoch; a transaction over the cap fills one
        // alone.
        assert!(!b.is_full());
        b.push(Time(1), txn(4, 4 * one));
        assert!(b.is_full());
        assert_eq!(b.abandon().len(), 1);
        assert!(!b.is_full());
    }

    #[test]
    fn an_idle_log_closes_an_epoch_after_the_minimum() {
        let mut b = Batcher::new(Config {
            epoch_us: 5_000,
            epoch_min_us: 300,
            ..Config::default()
        });
        b.push(Time(1_000), txn(1, 10));
        b.push(Time(1_200), txn(2, 10));
        assert_eq!(b.deadline(true), Some(Time(1_300)));
        assert_eq!(b.deadline(false), Some(Time(6_000)));
        // With earlier epochs in flight the epoch waits its whole length (or for them).
        assert!(!b.is_due(Time(1_300), false) && !b.is_due(Time(1_299), true));
        assert!(b.is_due(Time(1_300), true) && b.is_due(Time(6_000), false));
        b.close(Epoch(1));
        assert_eq!(b.deadline(true), None);
        // The minimum counts from the next epoch's own first transaction.
        b.push(Time(9_000), txn(3, 10));
        assert_eq!(b.deadline(true), Some(Time(9_300)));
    }
}
