//! detflow's shared vocabulary: every type that crosses a component boundary.
//!
//! Nothing here does I/O, reads a clock or draws OS randomness (DESIGN.md §4). The other
//! crates build on these types:
//!
//! - [`ids`]: `Epoch`, `Position`, `PartitionId`, `NodeId`, `ClientId`, `CallId`, `Term`,
//!   `WriteId`, and [`Time`].
//! - [`key`]: the order-preserving tuple encoding of keys.
//! - [`footprint`]: the keys and prefixes a transaction may touch.
//! - [`txn`]: transactions, batches, outcomes and abort reasons.
//! - [`plan`]: what one partition executes in one epoch.
//! - [`message`] and [`frame`]: messages between components and their wire framing.
//! - [`replication`]: the log entries and messages the sequencer replicas exchange (Raft).
//! - [`mailbox`]: asynchronous messages (letters) between services and their delivery.
//! - [`stream`]: egress streams: events procedures publish, read from an offset.
//! - [`snapshot`]: snapshot reads: the state after one epoch, without entering the log.
//! - [`transfer`]: state transfer between the replicas of a partition.
//! - [`rng`]: the seeded generator every component draws from.

#![forbid(unsafe_code)]

pub mod bin;
pub mod codec;
pub mod footprint;
pub mod frame;
pub mod ids;
pub mod key;
pub mod machine;
pub mod mailbox;
pub mod message;
pub mod partition;
pub mod placement;
pub mod plan;
pub mod replication;
pub mod rng;
pub mod schema;
pub mod session;
pub mod snapshot;
pub mod stream;
pub mod transfer;
pub mod txn;

pub use footprint::{Access, Footprint, KeySpec};
pub use ids::{
    CallId, ClientId, Epoch, NodeId, PartitionId, Position, RequestSeq, Term, Time, WriteId,
};
pub use key::{Elem, Key, SYSTEM_TABLE};
pub use machine::Machine;
pub use partition::{PartitionScheme, TableRule};
pub use placement::{ExecutorId, Placement, PlacementError};
pub use plan::{Owner, Plan, RoutedTxn};
pub use replication::{
    ClientWindow, ENTRIES_PER_MESSAGE_LIMIT, LogEntry, LogSnapshot, PeerMessage,
};
pub use rng::DetRng;
pub use txn::{AbortReason, Batch, Outcome, Transaction, TxnResult, Value};

/// The version of the log (batch) format this build writes and understands.
pub const LOG_FORMAT_VERSION: u16 = 1;
/// The version of the plan format this build writes and understands.
pub const PLAN_FORMAT_VERSION: u16 = 1;
