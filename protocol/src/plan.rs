//! Plans: what one partition executes in one epoch.
//!
//! The scheduler routes each transaction of a committed batch once, into a [`RoutedTxn`]
//! shared by the plans of all its participants.

use crate::footprint::{Access, KeySpec};
use crate::ids::{Epoch, PartitionId, Position};
use crate::txn::{AbortReason, Transaction};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Who holds the keys of a footprint entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Owner {
    /// One partition owns every key of the entry.
    Partition(PartitionId),
    /// A replicated, read-only table held by every partition.
    Replicated,
}

/// A transaction with its place in the order and its routing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutedTxn {
    /// The serial position.
    pub position: Position,
    /// The transaction as sequenced.
    pub txn: Arc<Transaction>,
    /// The owner of each footprint entry, in footprint order (empty when rejected). Kept
    /// apart from the entries so routing copies no key.
    pub owners: Vec<Owner>,
    /// Partitions owning a key of the footprint, ascending. Never empty: a transaction that
    /// touches nothing (or cannot be routed) goes to partition 0, which reports its result.
    pub participants: Vec<PartitionId>,
    /// Participants that own a written key, ascending.
    pub active: Vec<PartitionId>,
    /// Set when routing found the transaction invalid; it aborts with this reason.
    pub rejected: Option<AbortReason>,
}

impl RoutedTxn {
    /// Each footprint entry with its access and owner, in footprint order.
    pub fn routes(&self) -> impl Iterator<Item = (&KeySpec, Access, Owner)> + '_ {
        self.txn
            .footprint
            .entries
            .iter()
            .zip(&self.owners)
            .map(|((spec, access), owner)| (spec, *access, *owner))
    }

    /// The partitions that run the procedure: the active participants, or for a read-only
    /// transaction the lowest participant alone.
    pub fn executors(&self) -> &[PartitionId] {
        if self.active.is_empty() {
            &self.participants[..1]
        } else {
            &self.active
        }
    }

    /// The participant that reports the result: the lowest executor.
    pub fn designated(&self) -> PartitionId {
        self.executors()[0]
    }

    /// Whether `partition` runs the procedure.
    pub fn is_executor(&self, partition: PartitionId) -> bool {
        self.executors().contains(&partition)
    }

    /// Whether only one partition takes part.
    pub fn is_single_partition(&self) -> bool {
        self.participants.len() == 1
    }
}

/// The transactions of one epoch that concern one partition, in position order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// The plan format version ([`crate::PLAN_FORMAT_VERSION`] when written by this build).
    pub version: u16,
    /// The epoch.
    pub epoch: Epoch,
    /// The partition it is for.
    pub partition: PartitionId,
    /// Its transactions in position order; empty when the epoch does not concern it.
    pub txns: Vec<Arc<RoutedTxn>>,
}
