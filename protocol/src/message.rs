//! Every message between components.
//!
//! Variant names are the wire tags (rmp-serde writes enum variants by name): a variant is
//! never renamed, and a retired name is never reused.

use crate::ids::{ClientId, PartitionId, Position, RequestSeq};
use crate::key::Key;
use crate::plan::Plan;
use crate::txn::{Outcome, Transaction, TxnResult, Value};
use serde::{Deserialize, Serialize};

/// A client's call as it reaches a gateway.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Call {
    /// The calling session.
    pub client: ClientId,
    /// The call's number within the session.
    pub seq: RequestSeq,
    /// The procedure name.
    pub procedure: String,
    /// MessagePack-encoded arguments.
    #[serde(with = "crate::bin::bytes")]
    pub args: Vec<u8>,
}

/// Why a call was refused before it was ordered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    /// The arguments do not decode, so no footprint can be computed.
    #[error("arguments do not decode: {0}")]
    BadArgs(String),
    /// The footprint exceeds the configured maximum.
    #[error("footprint of {entries} entries exceeds the maximum of {max}")]
    FootprintTooLarge {
        /// Entries declared.
        entries: usize,
        /// The limit.
        max: usize,
    },
    /// No procedure of that name is registered at the gateway.
    #[error("unknown procedure {0:?}")]
    UnknownProcedure(String),
}

/// A gateway's answer to a call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// The call was ordered and executed.
    Done {
        /// Where it stands in the serial order.
        position: Position,
        /// Commit or deterministic abort.
        outcome: Outcome,
    },
    /// The call was refused before ordering; it will never execute.
    Rejected(Rejection),
    /// Its fate is not known here yet (no leader, or ordered but not yet executed): retry
    /// the same call, with the same sequence number, through any gateway.
    Unavailable,
}

/// A participant's local reads of one transaction, sent to the other executors.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteReads {
    /// The transaction.
    pub position: Position,
    /// The sending partition.
    pub from: PartitionId,
    /// Each exact key the sender owns, with its value (`None`: absent).
    pub exact: Vec<(Key, Option<Value>)>,
    /// Each prefix the sender owns, with every key and value under it, ascending.
    pub prefixes: Vec<(Key, Vec<(Key, Value)>)>,
}

/// Every message that travels between components.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Client → gateway.
    Call(Call),
    /// Scheduler → executor: one epoch's plan.
    Plan(Plan),
    /// Executor → executor.
    RemoteReads(RemoteReads),
    /// Gateway → client.
    Reply {
        /// The session.
        client: ClientId,
        /// The call number.
        seq: RequestSeq,
        /// The answer.
        reply: Reply,
    },
    /// Executor → gateway.
    Result(TxnResult),
    /// Gateway → sequencer.
    Submit(Transaction),
}
