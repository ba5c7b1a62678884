//! Every message between components.
//!
//! Variant names are the wire tags (rmp-serde writes enum variants by name): a variant is
//! never renamed, and a retired name is never reused.

use crate::ids::{ClientId, Epoch, NodeId, PartitionId, Position, RequestSeq};
use crate::key::Key;
use crate::plan::Plan;
use crate::replication::PeerMessage;
use crate::txn::{Outcome, Transaction, TxnResult, Value};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

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
    #[serde(with = "serde_bytes")]
    pub args: Vec<u8>,
}

/// A session's proof of ownership: a MAC, made by the gateway that opened the session with
/// the cluster's session key, over the session id and the client certificate that asked
/// for it. Every gateway can check it; nobody without the key can make one.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SessionToken(pub [u8; 16]);

impl std::fmt::Debug for SessionToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A token is a credential: never print it whole.
        write!(f, "SessionToken({:02x}{:02x}…)", self.0[0], self.0[1])
    }
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
    /// A key of the footprint is not a well-formed tuple-encoded key.
    #[error("malformed key in the footprint: {0}")]
    BadKey(String),
    /// The call (procedure name and arguments) is larger than the gateway accepts.
    #[error("call of {bytes} bytes exceeds the maximum of {max}")]
    CallTooLarge {
        /// The call's size.
        bytes: usize,
        /// The limit.
        max: usize,
    },
    /// This client is not authorized to call the procedure (or to touch the tables its
    /// footprint names).
    #[error("not authorized: {0}")]
    Unauthorized(String),
    /// The session id is not one this client's connection opened.
    #[error("session {0} does not belong to this client")]
    ForeignSession(u64),
    /// The gateway is at its limit of calls in flight; retry later.
    #[error("overloaded: {0}")]
    Overloaded(String),
    /// The footprint reaches into a table its procedure's service does not own (a service
    /// touches another's tables only by calling that service's procedures).
    #[error("{procedure} may not touch table {table:?}: {}", owner_text(owner))]
    ForeignTable {
        /// The procedure whose own footprint names the table.
        procedure: String,
        /// The table.
        table: String,
        /// The service that owns it, if any does.
        owner: Option<String>,
    },
}

fn owner_text(owner: &Option<String>) -> String {
    match owner {
        Some(service) => format!("it belongs to service {service:?}"),
        None => "no service owns it".to_owned(),
    }
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
    #[serde(with = "crate::bin::pairs_option")]
    pub exact: Vec<(Key, Option<Value>)>,
    /// Each prefix the sender owns, with every key and value under it, ascending.
    #[serde(with = "crate::bin::groups")]
    pub prefixes: Vec<(Key, Vec<(Key, Value)>)>,
    /// This message's index among the sender's chunks for this position.
    #[serde(default)]
    pub chunk: u32,
    /// How many chunks the sender split its reads into (1: not split).
    #[serde(default)]
    pub chunks: u32,
}

/// A cluster-wide status summary, for `detflow status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The answering node.
    pub node: NodeId,
    /// Its replica's view: (term, leader, commit epoch), if it runs a replica.
    pub replica: Option<(u64, Option<NodeId>, Epoch)>,
    /// Each partition it executes, with its next epoch to apply and its durable epoch.
    pub partitions: Vec<(PartitionId, Epoch, Epoch)>,
    /// Calls its gateway answered since it started.
    pub calls_answered: u64,
    /// Microseconds since the node started.
    pub uptime_us: u64,
    /// Initial rows this node generated and loaded into its partitions since it started
    /// (0 when it restarted on data already loaded). A node answers only once its
    /// partitions are loaded, so this is the node's whole share.
    #[serde(default)]
    pub rows_loaded: u64,
    /// TPC-C warehouses among them (0 for other workloads), for loading progress.
    #[serde(default)]
    pub warehouses_loaded: u32,
    /// Results of a call on which replicas of a partition disagreed, seen by its gateway
    /// since it started: determinism failures.
    #[serde(default)]
    pub determinism_failures: u64,
    /// The last of them, described.
    #[serde(default)]
    pub last_divergence: Option<String>,
    /// Each partition it executes, with the last epoch it applied and its state digest
    /// after that epoch (32 hex digits). Replicas of a partition with the same epoch must
    /// show the same digest.
    #[serde(default)]
    pub digests: Vec<(PartitionId, Epoch, String)>,
    /// The last epoch its replica's log compacted away (its log holds the epochs after
    /// it); 0 without a replica or before the first compaction.
    #[serde(default)]
    pub log_start: Epoch,
}

/// What a client may send a node: the client-facing subset of [`Message`], with the same
/// wire tags, so a client encodes a `Message` and the node decodes this.
///
/// A node decodes client streams as this type, not as `Message`: serde reads the variant
/// tag first and refuses any other before decoding its body, so a client cannot make the
/// node allocate a plan or a batch's worth of structures from one frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientRequest {
    /// A call without a session token: refused with [`Rejection::ForeignSession`].
    Call(Call),
    /// Open a session.
    OpenSession,
    /// A call of a session this client opened.
    SessionCall {
        /// The session's proof of ownership.
        token: SessionToken,
        /// The call.
        call: Call,
    },
    /// Report status.
    Status,
    /// Read a stream from an offset.
    ReadStream {
        /// The stream.
        stream: String,
        /// The first offset wanted.
        from: crate::stream::Offset,
        /// The most events wanted (0: the gateway's default).
        max: u32,
    },
    /// Read a snapshot.
    SnapshotRead(crate::snapshot::SnapshotRead),
    /// List the tables the node's services declare.
    Tables,
    /// Read the committed log from an epoch on.
    LogRead {
        /// The first epoch wanted.
        from: Epoch,
    },
    /// Checkpoint every partition the node hosts after epoch `at` (ask every node for the
    /// same epoch: the archive then holds a complete set there).
    Checkpoint {
        /// The epoch after which to checkpoint; one not applied yet.
        at: Epoch,
    },
}

/// A partition replica's answer to a [`ClientRequest::Checkpoint`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CheckpointAnswer {
    /// It will checkpoint after the epoch asked.
    Scheduled,
    /// It has applied the epoch asked already (through `applied`): ask for a later one.
    TooLate {
        /// Its last applied epoch.
        applied: Epoch,
    },
    /// It refuses (too many checkpoints asked for and not taken yet).
    Refused(String),
}

/// A node's answer to [`Message::LogRead`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogReply {
    /// Committed batches from the epoch asked, in order, as many as fit one answer (none
    /// if the epoch is not committed yet).
    Batches {
        /// The replica's commit epoch.
        commit: Epoch,
        /// The batches.
        batches: Vec<Arc<crate::txn::Batch>>,
    },
    /// The epoch asked was compacted away: the archive has it.
    Compacted {
        /// The last epoch the replica's log compacted away.
        log_start: Epoch,
    },
    /// The node runs no sequencer replica.
    NoLog,
    /// The client may not read the log (it takes an operator's certificate); why.
    Denied(String),
}

/// Every message that travels between components. Variant names are wire tags.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Executor → executor: the sender made every epoch up to `durable` durable.
    Ack {
        /// The sending partition.
        from: PartitionId,
        /// The node of the sending replica.
        node: NodeId,
        /// The receiving partition.
        to: PartitionId,
        /// The sender's durable epoch.
        durable: Epoch,
    },
    /// Client → gateway.
    Call(Call),
    /// Executor → its node's gateway: have these letters of its outbox delivered.
    Deliver(crate::mailbox::Delivery),
    /// Gateway → client: the answer to [`Message::ReadStream`].
    Events(crate::stream::StreamReply),
    /// Replica → gateway: the call is already in the leader's log.
    Duplicate {
        /// The session.
        client: ClientId,
        /// The call number.
        seq: RequestSeq,
    },
    /// Executor → executor after a (re)connect: the sender is durable up to `durable` and
    /// lacks everything after.
    Hello {
        /// The sending partition.
        from: PartitionId,
        /// The node of the sending replica.
        node: NodeId,
        /// The receiving partition.
        to: PartitionId,
        /// The sender's durable epoch.
        durable: Epoch,
    },
    /// Replica → gateway: not the leader; retry at `leader`.
    NotLeader {
        /// The refusing replica.
        from: NodeId,
        /// The transaction handed back.
        txn: Arc<Transaction>,
        /// The leader, if known.
        leader: Option<NodeId>,
    },
    /// Replica → replica.
    Peer {
        /// The sending replica.
        from: NodeId,
        /// The replication message.
        msg: PeerMessage,
    },
    /// Client → gateway: open a session (the answer is [`Message::SessionOpened`]).
    OpenSession,
    /// Replica → executor: one epoch's plan.
    Plan(Arc<Plan>),
    /// Replica → executor: the plans it subscribed from are compacted away; this replica's
    /// log starts after `log_start`. An executor that needs them copies a peer's state.
    PlansCompacted {
        /// The sequencer replica.
        from: NodeId,
        /// The subscribing partition.
        partition: PartitionId,
        /// The last epoch compacted away.
        log_start: Epoch,
    },
    /// Client → gateway: read a stream from an offset (answered [`Message::Events`]).
    ReadStream {
        /// The stream.
        stream: String,
        /// The first offset wanted.
        from: crate::stream::Offset,
        /// The most events wanted (0: the gateway's default).
        max: u32,
    },
    /// Gateway → executor: the result of a call, from the result table.
    Query {
        /// The session.
        client: ClientId,
        /// The call number.
        seq: RequestSeq,
        /// The designated partition of the call.
        partition: PartitionId,
        /// The asking gateway.
        gateway: NodeId,
    },
    /// Executor → executor.
    RemoteReads {
        /// The receiving partition.
        to: PartitionId,
        /// The reads.
        reads: Arc<RemoteReads>,
    },
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
    Result {
        /// The reporting partition (the call's designated one).
        from: PartitionId,
        /// The result.
        result: TxnResult,
        /// Whether it came from the result table (a retried call).
        recovered: bool,
    },
    /// Executor → gateway: the result table does not hold the call (yet).
    ResultUnknown {
        /// The session.
        client: ClientId,
        /// The call number.
        seq: RequestSeq,
    },
    /// Gateway → client: the answer to [`Message::SnapshotRead`].
    Snapshot(crate::snapshot::SnapshotReply),
    /// Executor → gateway: its answer to a [`Message::SnapshotQuery`].
    SnapshotPart {
        /// The gateway's number for the read.
        read: u64,
        /// The answer.
        part: crate::snapshot::SnapshotPart,
    },
    /// Gateway → executor: read this partition's state at an epoch.
    SnapshotQuery {
        /// The partition.
        partition: PartitionId,
        /// The gateway's number for the read.
        read: u64,
        /// The asking gateway.
        gateway: NodeId,
        /// Which epoch.
        at: crate::snapshot::PartAt,
        /// What.
        op: crate::snapshot::PartOp,
    },
    /// Client → gateway: read a snapshot (answered [`Message::Snapshot`]).
    SnapshotRead(crate::snapshot::SnapshotRead),
    /// Client → gateway: a call of a session this client opened. A node answers a bare
    /// [`Message::Call`] from a client with [`Rejection::ForeignSession`].
    SessionCall {
        /// The session's proof of ownership.
        token: SessionToken,
        /// The call; its `client` is the session id.
        call: Call,
    },
    /// Gateway → client: the session it asked for.
    SessionOpened {
        /// The session id to put in every call.
        client: ClientId,
        /// The proof of ownership to send with every call.
        token: SessionToken,
    },
    /// Anyone → node: report status.
    Status,
    /// Executor → gateway: its share of a stream read.
    StreamPart {
        /// The gateway's number for the read.
        read: u64,
        /// The share.
        part: crate::stream::StreamPart,
    },
    /// Gateway → executor: this partition's events of a stream from an offset.
    StreamQuery {
        /// The partition.
        partition: PartitionId,
        /// The gateway's number for the read.
        read: u64,
        /// The asking gateway.
        gateway: NodeId,
        /// The stream.
        stream: String,
        /// The first offset wanted.
        from: crate::stream::Offset,
        /// The most events wanted.
        max: u32,
    },
    /// Node → asker.
    StatusReply(NodeStatus),
    /// Client → node: list the tables its services declare, with their schemas (for SQL).
    Tables,
    /// Node → client: every table its services declare.
    TablesReply(Vec<crate::schema::Table>),
    /// Client → node: read the committed log from `from` on (for audits).
    LogRead {
        /// The first epoch wanted.
        from: Epoch,
    },
    /// Node → client: the answer to a `LogRead`.
    LogReply(LogReply),
    /// Client → node: checkpoint every partition here after epoch `at`.
    Checkpoint {
        /// The epoch after which to checkpoint.
        at: Epoch,
    },
    /// Node → client: each of its partitions' answer to a `Checkpoint`.
    CheckpointReply(Vec<(PartitionId, CheckpointAnswer)>),
    /// Gateway → replica.
    Submit(Arc<Transaction>),
    /// Executor → executor after a hello from before `through`: the reads the sender sent
    /// the receiving partition through `through` are dropped (every replica of it had
    /// acknowledged them), so the receiver cannot replay those epochs.
    ReadsGone {
        /// The sending partition.
        from: PartitionId,
        /// The node of the sending replica.
        node: NodeId,
        /// The receiving partition.
        to: PartitionId,
        /// The last epoch whose reads were dropped.
        through: Epoch,
    },
    /// Executor → another replica of its own partition: the state transfer's answer.
    StateChunk {
        /// The partition.
        partition: PartitionId,
        /// The node of the answering replica.
        node: NodeId,
        /// The rows, or why there are none.
        chunk: crate::transfer::StateChunk,
    },
    /// Executor → another replica of its own partition: send (more of) an image of your
    /// state (see [`crate::transfer`]).
    StateFetch {
        /// The partition.
        partition: PartitionId,
        /// The node of the asking replica (the answer goes there).
        node: NodeId,
        /// What it asks for.
        fetch: crate::transfer::StateFetch,
    },
    /// Executor → replica: send the plans of this partition from epoch `from` on.
    Subscribe {
        /// The partition.
        partition: PartitionId,
        /// The node of the subscribing replica (plans go there).
        node: NodeId,
        /// The first epoch wanted.
        from: Epoch,
    },
    /// Executor → every sequencer replica: this replica of `partition` has durably applied
    /// every epoch through `durable` (the log may drop them once every replica has).
    Applied {
        /// The partition.
        partition: PartitionId,
        /// The node of the reporting replica.
        node: NodeId,
        /// Its durable epoch.
        durable: Epoch,
    },
}

/// The pattern of the [`Message`] variants of the client protocol: what a client may send a
/// node (the variants [`ClientRequest`] mirrors) and the node's answers to them.
///
/// Written once so every exhaustive match over `Message` can name the client variants in
/// one arm (`client_message!() => …`) instead of repeating the list: a new variant must
/// then be placed either here or in an explicit arm of each match, never fall into `_`.
#[macro_export]
macro_rules! client_message {
    () => {
        $crate::message::Message::Call(_)
            | $crate::message::Message::Events(_)
            | $crate::message::Message::OpenSession
            | $crate::message::Message::ReadStream { .. }
            | $crate::message::Message::Reply { .. }
            | $crate::message::Message::SessionCall { .. }
            | $crate::message::Message::SessionOpened { .. }
            | $crate::message::Message::Snapshot(_)
            | $crate::message::Message::SnapshotRead(_)
            | $crate::message::Message::Status
            | $crate::message::Message::StatusReply(_)
            | $crate::message::Message::Tables
            | $crate::message::Message::TablesReply(_)
            | $crate::message::Message::LogRead { .. }
            | $crate::message::Message::LogReply(_)
            | $crate::message::Message::Checkpoint { .. }
            | $crate::message::Message::CheckpointReply(_)
    };
}

impl Message {
    /// Whether this message belongs to the client protocol (a client's request or a node's
    /// answer to one). Such messages travel only on client streams, never between nodes:
    /// a node channel carrying one is carrying a forgery or a bug.
    pub fn is_client_message(&self) -> bool {
        match self {
            client_message!() => true,
            Message::Ack { .. }
            | Message::Deliver(_)
            | Message::Duplicate { .. }
            | Message::Hello { .. }
            | Message::NotLeader { .. }
            | Message::Peer { .. }
            | Message::Plan(_)
            | Message::PlansCompacted { .. }
            | Message::Query { .. }
            | Message::ReadsGone { .. }
            | Message::RemoteReads { .. }
            | Message::Result { .. }
            | Message::ResultUnknown { .. }
            | Message::SnapshotPart { .. }
            | Message::SnapshotQuery { .. }
            | Message::StreamPart { .. }
            | Message::StreamQuery { .. }
            | Message::StateChunk { .. }
            | Message::StateFetch { .. }
            | Message::Submit(_)
            | Message::Subscribe { .. }
            | Message::Applied { .. } => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{ClientId, RequestSeq};

    fn call() -> Call {
        Call {
            client: ClientId(3),
            seq: RequestSeq(4),
            procedure: "bank.deposit".into(),
            args: vec![1, 2, 3],
        }
    }

    #[test]
    fn client_requests_decode_what_clients_encode_and_nothing_else() {
        let token = SessionToken([7; 16]);
        let pairs = [
            (Message::Call(call()), ClientRequest::Call(call())),
            (Message::OpenSession, ClientRequest::OpenSession),
            (
                Message::SessionCall {
                    token,
                    call: call(),
                },
                ClientRequest::SessionCall {
                    token,
                    call: call(),
                },
            ),
            (Message::Status, ClientRequest::Status),
            (Message::Tables, ClientRequest::Tables),
            (
                Message::LogRead {
                    from: crate::ids::Epoch(9),
                },
                ClientRequest::LogRead {
                    from: crate::ids::Epoch(9),
                },
            ),
            (
                Message::Checkpoint {
                    at: crate::ids::Epoch(9),
                },
                ClientRequest::Checkpoint {
                    at: crate::ids::Epoch(9),
                },
            ),
        ];
        for (sent, expected) in pairs {
            let bytes = rmp_serde::to_vec(&sent).expect("encode");
            let got: ClientRequest = rmp_serde::from_slice(&bytes).expect("decode");
            assert_eq!(got, expected);
        }
        let node_only = Message::Subscribe {
            partition: crate::ids::PartitionId(0),
            node: crate::ids::NodeId(1),
            from: crate::ids::Epoch(1),
        };
        let bytes = rmp_serde::to_vec(&node_only).expect("encode");
        assert!(rmp_serde::from_slice::<ClientRequest>(&bytes).is_err());
    }

    #[test]
    fn what_a_client_sends_and_is_answered_is_a_client_message() {
        let token = SessionToken([7; 16]);
        let status = NodeStatus::default();
        for msg in [
            Message::Call(call()),
            Message::OpenSession,
            Message::SessionCall {
                token,
                call: call(),
            },
            Message::Status,
            Message::Reply {
                client: ClientId(3),
                seq: RequestSeq(4),
                reply: Reply::Unavailable,
            },
            Message::SessionOpened {
                client: ClientId(3),
                token,
            },
            Message::StatusReply(status),
            Message::Tables,
            Message::TablesReply(vec![crate::schema::Table::new("t")]),
        ] {
            assert!(msg.is_client_message(), "{msg:?}");
        }
        let subscribe = Message::Subscribe {
            partition: crate::ids::PartitionId(0),
            node: crate::ids::NodeId(1),
            from: crate::ids::Epoch(1),
        };
        assert!(!subscribe.is_client_message());
    }
}
