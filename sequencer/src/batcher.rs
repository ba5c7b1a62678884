//! The open epoch: the batching rule shared by [`crate::Sequencer`] and [`crate::Replica`].
//!
//! An epoch opens when the first transaction arrives while none is open, and is due to
//! close `epoch_duration_us` later or as soon as it holds `batch_txns_max` transactions.

use crate::Config;
use detflow_protocol::{Batch, Epoch, LOG_FORMAT_VERSION, Time, Transaction};
use std::sync::Arc;

/// The transactions of the open epoch and its closing deadline.
#[derive(Clone, Debug)]
pub(crate) struct Batcher {
    config: Config,
    open: Vec<Arc<Transaction>>,
    deadline: Option<Time>,
}

impl Batcher {
    pub(crate) fn new(config: Config) -> Batcher {
        assert!(config.batch_txns_max > 0, "batch_txns_max must be positive");
        Batcher {
            config,
            open: Vec::new(),
            deadline: None,
        }
    }

    /// Adds `txn` to the open epoch, opening one at `now` if none is open. The caller
    /// checks [`Batcher::is_full`] first: a full epoch takes no more.
    pub(crate) fn push(&mut self, now: Time, txn: Arc<Transaction>) {
        assert!(!self.is_full(), "push into a full epoch");
        if self.open.is_empty() {
            self.deadline = Some(now.plus_us(self.config.epoch_duration_us));
        }
        self.open.push(txn);
    }

    /// Closes the open epoch as the batch of `epoch`.
    pub(crate) fn close(&mut self, epoch: Epoch) -> Arc<Batch> {
        assert!(!self.open.is_empty(), "closing an empty epoch");
        self.deadline = None;
        Arc::new(Batch {
            version: LOG_FORMAT_VERSION,
            epoch,
            txns: std::mem::take(&mut self.open),
        })
    }

    /// Abandons the open epoch, handing back its transactions in arrival order.
    pub(crate) fn abandon(&mut self) -> Vec<Arc<Transaction>> {
        self.deadline = None;
        std::mem::take(&mut self.open)
    }

    /// Whether the open epoch holds `batch_txns_max` transactions.
    pub(crate) fn is_full(&self) -> bool {
        self.open.len() >= self.config.batch_txns_max
    }

    /// Whether the open epoch should close at `now`: it is full or its time is up.
    pub(crate) fn is_due(&self, now: Time) -> bool {
        self.is_full() || self.deadline.is_some_and(|d| now >= d)
    }

    /// Whether no epoch is open.
    pub(crate) fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// When the open epoch's time is up, if one is open.
    pub(crate) fn deadline(&self) -> Option<Time> {
        self.deadline
    }

    /// The open epoch's transactions in arrival order.
    pub(crate) fn txns(&self) -> &[Arc<Transaction>] {
        &self.open
    }
}
