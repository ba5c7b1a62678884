//! The partition executor and the API procedures are written against.
//!
//! - [`Procedure`] and [`Txn`]: a named, deterministic function over the keys of its
//!   footprint. Every access outside the footprint is a deterministic abort.
//! - [`Registry`]: procedures by name, type-erased over MessagePack arguments and outputs.
//! - [`Store`] and [`MemStore`]: the ordered state of one partition.
//! - [`Executor`]: the sans-IO machine that runs one partition's plans strictly in position
//!   order, exchanging remote reads for multi-partition transactions (Calvin).
//! - [`serial`]: the reference: the same transactions one by one on a single map.
//!
//! Driving an executor: feed it [`Input::Plan`] for each epoch (every epoch, even when the
//! plan is empty) and [`Input::RemoteReads`] from its peers, in any interleaving; perform
//! the [`Output`]s it emits. It never blocks: a transaction waiting for remote reads simply
//! holds the plan's cursor until they arrive.
//!
//! Procedures are user code, and the executor contains their failures deterministically:
//! a panic aborts the transaction with [`Abort::Panicked`] on every replica (the driver's
//! panic hook tells such panics from the engine's with [`in_procedure`]); a malformed key
//! or an oversized value aborts the write; procedures use [`OrOverflow`] to turn
//! arithmetic overflow into [`Abort::Overflow`].

#![forbid(unsafe_code)]

mod chunk;
mod digest;
mod executor;
mod feed;
mod mailbox;
mod procedure;
mod registry;
pub mod serial;
pub mod service;
mod snapshot;
mod store;
mod system;
mod txn;
mod unwind;

pub use chunk::READS_BYTES_MAX_DEFAULT;
pub use detflow_protocol::AbortReason as Abort;
pub use detflow_protocol::SYSTEM_TABLE;
pub use detflow_protocol::schema::SchemaError;
pub use digest::StateDigest;
pub use executor::{
    APPLIED_REPORT_EPOCHS, CHECKPOINT_AHEAD_EPOCHS_MAX, CHECKPOINTS_ASKED_MAX,
    DIGEST_EPOCHS_RETAINED, DIGESTS_KEPT, Executor, ExecutorBugs, ExecutorStats, IMAGE_IDLE_US,
    Input, Output, SNAPSHOT_WAIT_US, SNAPSHOT_WAITING_MAX, TRANSFER_STALL_US, recorded_digest,
    recorded_digests,
};
pub use feed::STALL_US;
pub use mailbox::{DELIVERY_LETTERS_MAX, DELIVERY_RETRY_US};
pub use procedure::{OrOverflow, Procedure};
pub use registry::Registry;
pub use service::{CallFootprint, FieldType, Service, ServiceError, Table};
pub use snapshot::{RETENTION_BYTES_DEFAULT, RETENTION_US_DEFAULT, Retention, VersionStats};
pub use store::{ImageChunk, MemStore, Store, image_chunk, range_rows};
pub use system::{
    READS_AHEAD_EPOCHS, RESULT_EPOCHS_RETAINED, differs_between_replicas, is_system_key,
    stored_differs_between_replicas,
};
pub use txn::{Effects, ReadView, Txn, VALUE_BYTES_MAX_DEFAULT, WriteSet};
pub use unwind::{PANIC_MESSAGE_BYTES_MAX, in_procedure};
