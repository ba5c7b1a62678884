//! Transactions, batches, outcomes and deterministic abort reasons.

use crate::footprint::Footprint;
use crate::ids::{CallId, ClientId, Epoch, NodeId, Position, RequestSeq};
use crate::key::Key;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// A stored value: opaque bytes (procedures usually store MessagePack).
pub type Value = Vec<u8>;

/// A call as the sequencer orders it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transaction {
    /// The calling session.
    pub client: ClientId,
    /// The call's number within the session; `(client, seq)` is unique per call.
    pub seq: RequestSeq,
    /// The gateway the result goes back to.
    pub gateway: NodeId,
    /// The registered procedure name, e.g. `bank.transfer`.
    pub procedure: String,
    /// The MessagePack-encoded arguments.
    #[serde(with = "serde_bytes")]
    pub args: Vec<u8>,
    /// The keys it may touch, computed by the gateway from the arguments.
    pub footprint: Footprint,
}

impl Transaction {
    /// The call this transaction runs.
    pub fn call_id(&self) -> CallId {
        CallId::new(self.client, self.seq)
    }
}

/// One epoch's ordered transactions: an entry of the replicated log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    /// The log format version ([`crate::LOG_FORMAT_VERSION`] when written by this build).
    pub version: u16,
    /// The epoch this batch closes.
    pub epoch: Epoch,
    /// The transactions in serial order.
    pub txns: Vec<Arc<Transaction>>,
}

/// Why a transaction aborted. Every reason is deterministic: every replica of the
/// computation reaches the same one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum AbortReason {
    /// The procedure arguments did not decode.
    #[error("arguments do not decode: {0}")]
    BadArgs(String),
    /// A stored value did not decode as the type the procedure expected.
    #[error("value of {key} does not decode: {error}")]
    BadValue {
        /// The key.
        key: Key,
        /// The decoder's message.
        error: String,
    },
    /// The procedure read or wrote a key its footprint does not declare.
    #[error("{} of {key} is outside the declared footprint", if *write { "write" } else { "read" })]
    OutsideFootprint {
        /// The key.
        key: Key,
        /// Whether the access was a write.
        write: bool,
    },
    /// The procedure wrote a key of a replicated (read-only) table.
    #[error("write to replicated table key {key}")]
    ReplicatedWrite {
        /// The key.
        key: Key,
    },
    /// No procedure of that name is registered.
    #[error("unknown procedure {0:?}")]
    UnknownProcedure(String),
    /// The footprint cannot be routed (e.g. a prefix spanning partitions).
    #[error("footprint cannot be routed: {0}")]
    Unroutable(String),
    /// The procedure chose to abort.
    #[error("aborted by procedure: {0}")]
    User(String),
    /// What the call's footprint was computed from (a reconnaissance read) no longer
    /// holds; the client computes the footprint afresh and retries (DESIGN.md §6).
    #[error("footprint changed since reconnaissance: {0}")]
    FootprintChanged(String),
    /// The procedure panicked. The executor catches the panic and turns it into this
    /// abort, so every replica (and every replay) reaches the same outcome instead of
    /// wedging the partition.
    #[error("procedure panicked: {0}")]
    Panicked(String),
    /// An arithmetic operation of the procedure overflowed.
    #[error("arithmetic overflow: {0}")]
    Overflow(String),
    /// The procedure wrote a key that is not a well-formed tuple-encoded key.
    #[error("malformed key: {0}")]
    BadKey(String),
    /// The procedure wrote a value larger than the limit.
    #[error("value of {bytes} bytes for {key} exceeds the maximum of {max}")]
    ValueTooLarge {
        /// The key.
        key: Key,
        /// The value's size.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// A letter the procedure sent cannot be delivered (its procedure is unknown, or its
    /// arguments do not give a footprint); or a delivery found a letter that its outbox
    /// does not hold as sent.
    #[error("letter to {procedure:?}: {reason}")]
    BadLetter {
        /// The letter's procedure.
        procedure: String,
        /// Why.
        reason: String,
    },
}

/// How a transaction ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Aborted deterministically; no write took effect.
    Aborted(AbortReason),
    /// Committed with the MessagePack-encoded procedure output.
    Committed(#[serde(with = "serde_bytes")] Vec<u8>),
}

/// The result of one transaction, reported by its designated participant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnResult {
    /// The calling session.
    pub client: ClientId,
    /// The call's number.
    pub seq: RequestSeq,
    /// Where it stands in the serial order.
    pub position: Position,
    /// Commit or abort.
    pub outcome: Outcome,
}

impl TxnResult {
    /// The call this is the result of.
    pub fn call_id(&self) -> CallId {
        CallId::new(self.client, self.seq)
    }
}
