//! The sequencer: orders submitted transactions into epochs and replicates the log of
//! batches.
//!
//! [`Replica`] (module [`replica`]) is one member of a replicated group running Raft over
//! the log of batches, for which "committed" means durable on a majority; a group of one
//! is durable once its own disk says so. See that module for its contract, its input →
//! output diagram and the order in which a driver calls it.
//!
//! The leader batches: an epoch opens when the first transaction arrives while none is
//! open, and closes `epoch_us` later or as soon as it holds `batch_txns_max`
//! transactions or `batch_bytes_max` bytes of them ([`Config`]); while every earlier
//! epoch is committed it closes `epoch_min_us` after it opened (group commit). A submission
//! `(client, seq)` already in the log, or in a batch on its way there, is not appended
//! again ([`DedupTable`]).

#![forbid(unsafe_code)]

mod batcher;
mod dedup;
pub mod replica;

pub use dedup::DedupTable;
pub use replica::{
    Durable, DurableError, LogWrite, PeerDrop, PeerDrops, Replica, ReplicaBugs, ReplicaConfig,
    ReplicaStats,
};

/// Sequencer settings. Construct with `..Config::default()` so that new fields keep their
/// defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// How long an epoch stays open after its first transaction arrives while earlier
    /// epochs are not yet committed: the longest an epoch waits.
    pub epoch_us: u64,
    /// How long an epoch stays open after its first transaction arrives while every
    /// earlier epoch is committed (group commit): at low load a transaction waits for
    /// about one quorum write, at high load epochs close as the previous one commits.
    /// At most `epoch_us`; `epoch_us` itself turns group commit off.
    pub epoch_min_us: u64,
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
            epoch_us: 5_000,
            epoch_min_us: 200,
            batch_txns_max: 10_000,
            batch_bytes_max: 4 << 20,
        }
    }
}
