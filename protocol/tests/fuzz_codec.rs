//! Codec fuzzing (issue #9): frames and every [`Message`] variant, driven by proptest.
//!
//! Peers and clients send us bytes we do not control, so the contract checked here is the
//! one `frame` promises: a frame decodes to the value that was encoded, whatever the read
//! boundaries; anything else (random bytes, mutated frames, hostile MessagePack, arrays
//! nested 100,000 deep) is an `Err`, never a panic, a stack overflow or a buffer that grows
//! past the frame limit.
//!
//! ```text
//! cargo test -p detflow-protocol --release --test fuzz_codec        # CI: 12-25 s on 2 cores
//! PROPTEST_CASES=2000000 cargo test -p detflow-protocol --release --test fuzz_codec  # longer
//! cargo run --release -p detflow-benches --bin fuzz-codec -- --duration 1h   # an hour
//! ```
//!
//! `PROPTEST_CASES` only raises a property's count (see `config`). The long run draws the
//! same kinds of input from a seed and prints the seed and iteration of any crash.
//!
//! The strategies build every nested type field by field; keys come both from the `Key`
//! API and from raw bytes (the wire form of a key is not checked on decode, so a peer can
//! send any). The `*_variant` functions match exhaustively: adding a variant breaks this
//! file's build until the strategy generates it, and `every_variant_is_generated` checks
//! that the strategies reach each one.

use detflow_protocol::bin::Blob;
use detflow_protocol::codec;
use detflow_protocol::footprint::{Access, Footprint, KeySpec};
use detflow_protocol::frame::{self, DEFAULT_MAX_FRAME_BYTES, FrameDecoder, FrameError};
use detflow_protocol::mailbox::{Delivery, Letter};
use detflow_protocol::message::{
    Call, CheckpointAnswer, LogReply, Message, NodeStatus, Rejection, RemoteReads, Reply,
    SessionToken,
};
use detflow_protocol::plan::{Owner, Plan, RoutedTxn};
use detflow_protocol::replication::{ClientWindow, LogEntry, PeerMessage};
use detflow_protocol::schema::{FieldType, Table};
use detflow_protocol::snapshot::{
    At, PartAt, PartOp, PartRows, ScanRange, SnapshotError, SnapshotOp, SnapshotPart, SnapshotRead,
    SnapshotReply,
};
use detflow_protocol::stream::{Offset, StreamEvent, StreamPart, StreamReply};
use detflow_protocol::transfer::{StateChunk, StateFetch};
use detflow_protocol::txn::{AbortReason, Batch, Outcome, Transaction, TxnResult};
use detflow_protocol::{
    ClientId, Elem, Epoch, Key, NodeId, PartitionId, Position, RequestSeq, TableRule, Term,
};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::sample::select;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use std::collections::BTreeSet;
use std::sync::Arc;

/// `cases` for one property, or `PROPTEST_CASES` if that is more. The defaults make the
/// whole file take 12 s in release on an idle 2-core machine (22 s with the other core
/// busy), which is what CI runs; the cheap properties get more cases than the dear ones.
fn config(cases: u32) -> ProptestConfig {
    // `default()` has already read PROPTEST_CASES (or proptest's own default of 256).
    let mut config = ProptestConfig::default();
    let asked = std::env::var_os("PROPTEST_CASES").map(|_| config.cases);
    config.cases = cases.max(asked.unwrap_or(0));
    config
}

// ---------------------------------------------------------------------------------------
// Strategies: one per type, every field arbitrary.

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> + Clone {
    vec(any::<u8>(), 0..=max)
}

/// Mostly short names, sometimes arbitrary Unicode (multi-byte UTF-8 in the wire form).
fn text() -> impl Strategy<Value = String> + Clone {
    prop_oneof![3 => "[a-z_.]{0,12}", 1 => "\\PC{0,8}"]
}

fn epoch() -> impl Strategy<Value = Epoch> + Clone {
    any::<u64>().prop_map(Epoch)
}

fn partition() -> impl Strategy<Value = PartitionId> + Clone {
    any::<u32>().prop_map(PartitionId)
}

fn node() -> impl Strategy<Value = NodeId> + Clone {
    any::<u32>().prop_map(NodeId)
}

fn client() -> impl Strategy<Value = ClientId> + Clone {
    any::<u64>().prop_map(ClientId)
}

fn request_seq() -> impl Strategy<Value = RequestSeq> + Clone {
    any::<u64>().prop_map(RequestSeq)
}

fn position() -> impl Strategy<Value = Position> + Clone {
    (epoch(), any::<u16>(), any::<u32>()).prop_map(|(epoch, group, index)| Position {
        epoch,
        group,
        index,
    })
}

fn elem() -> impl Strategy<Value = Elem> + Clone {
    prop_oneof![
        bytes(6).prop_map(Elem::Bytes),
        "\\PC{0,6}".prop_map(Elem::Str),
        any::<i64>().prop_map(Elem::I64),
        any::<u64>().prop_map(Elem::U64),
    ]
}

/// A key whose bytes are `raw`, well-formed or not: what a peer can put on the wire.
fn raw_key(raw: &[u8]) -> Key {
    codec::decode(&codec::encode(&Blob(raw))).expect("a key decodes from any bin")
}

fn key() -> impl Strategy<Value = Key> + Clone {
    prop_oneof![
        3 => ("[a-z_]{1,8}", vec(elem(), 0..4))
            .prop_map(|(table, elems)| elems.iter().fold(Key::table(&table), Key::elem)),
        1 => vec(elem(), 0..4).prop_map(|elems| Key::from_elems(&elems)),
        1 => bytes(16).prop_map(|raw| raw_key(&raw)),
    ]
}

fn footprint() -> impl Strategy<Value = Footprint> + Clone {
    let spec = prop_oneof![
        key().prop_map(KeySpec::Exact),
        key().prop_map(KeySpec::Prefix)
    ];
    let access = prop_oneof![
        Just(Access::Read),
        Just(Access::Write),
        Just(Access::Insert)
    ];
    vec((spec, access), 0..4).prop_map(|entries| Footprint {
        entries,
        calls: Vec::new(),
    })
}

fn transaction() -> impl Strategy<Value = Transaction> + Clone {
    (
        client(),
        request_seq(),
        node(),
        text(),
        bytes(24),
        footprint(),
    )
        .prop_map(
            |(client, seq, gateway, procedure, args, footprint)| Transaction {
                client,
                seq,
                gateway,
                procedure,
                args,
                footprint,
            },
        )
}

fn batch() -> impl Strategy<Value = Batch> + Clone {
    (
        any::<u16>(),
        epoch(),
        vec(transaction().prop_map(Arc::new), 0..3),
    )
        .prop_map(|(version, epoch, txns)| Batch {
            version,
            epoch,
            txns,
        })
}

fn term() -> impl Strategy<Value = Term> + Clone {
    any::<u64>().prop_map(Term)
}

fn peer_message() -> impl Strategy<Value = PeerMessage> + Clone {
    let entry = (term(), batch()).prop_map(|(term, batch)| LogEntry {
        term,
        batch: Arc::new(batch),
    });
    prop_oneof![
        (term(), node(), epoch(), term(), vec(entry, 0..3), epoch()).prop_map(
            |(term, leader, prev_epoch, prev_term, entries, leader_commit)| {
                PeerMessage::AppendEntries {
                    term,
                    leader,
                    prev_epoch,
                    prev_term,
                    entries,
                    leader_commit,
                }
            }
        ),
        (term(), any::<bool>(), epoch(), proptest::option::of(term())).prop_map(
            |(term, success, match_epoch, conflict_term)| PeerMessage::AppendReply {
                term,
                success,
                match_epoch,
                conflict_term,
            }
        ),
        (term(), node(), epoch(), term()).prop_map(|(term, candidate, last_epoch, last_term)| {
            PeerMessage::RequestVote {
                term,
                candidate,
                last_epoch,
                last_term,
            }
        }),
        (term(), any::<bool>()).prop_map(|(term, granted)| PeerMessage::Vote { term, granted }),
        (term(), node(), epoch(), term()).prop_map(|(term, candidate, last_epoch, last_term)| {
            PeerMessage::PreVote {
                term,
                candidate,
                last_epoch,
                last_term,
            }
        }),
        (term(), any::<bool>())
            .prop_map(|(term, granted)| PeerMessage::PreVoteReply { term, granted }),
        (
            (term(), node(), epoch(), term()),
            (any::<u64>(), any::<u64>()),
            prop::collection::vec(
                (
                    any::<u64>(),
                    any::<u64>(),
                    prop::collection::vec(any::<u64>(), 0..3)
                ),
                0..3
            ),
        )
            .prop_map(
                |((term, leader, epoch, last_term), (offset, total), windows)| {
                    PeerMessage::InstallSnapshot {
                        term,
                        leader,
                        epoch,
                        last_term,
                        offset,
                        total,
                        windows: windows
                            .into_iter()
                            .map(|(client, contiguous, above)| ClientWindow {
                                client: ClientId(client),
                                contiguous,
                                above,
                            })
                            .collect(),
                    }
                }
            ),
        (term(), epoch(), any::<u64>(), any::<bool>()).prop_map(
            |(term, epoch, received, installed)| PeerMessage::SnapshotReply {
                term,
                epoch,
                received,
                installed,
            }
        ),
    ]
}

fn abort_reason() -> impl Strategy<Value = AbortReason> + Clone {
    prop_oneof![
        text().prop_map(AbortReason::BadArgs),
        (key(), text()).prop_map(|(key, error)| AbortReason::BadValue { key, error }),
        (key(), any::<bool>())
            .prop_map(|(key, write)| AbortReason::OutsideFootprint { key, write }),
        key().prop_map(|key| AbortReason::ReplicatedWrite { key }),
        text().prop_map(AbortReason::UnknownProcedure),
        text().prop_map(AbortReason::Unroutable),
        text().prop_map(AbortReason::User),
        text().prop_map(AbortReason::FootprintChanged),
        text().prop_map(AbortReason::Panicked),
        text().prop_map(AbortReason::Overflow),
        text().prop_map(AbortReason::BadKey),
        (key(), any::<usize>(), any::<usize>())
            .prop_map(|(key, bytes, max)| AbortReason::ValueTooLarge { key, bytes, max }),
        (text(), text())
            .prop_map(|(procedure, reason)| AbortReason::BadLetter { procedure, reason }),
    ]
}

fn outcome() -> impl Strategy<Value = Outcome> + Clone {
    prop_oneof![
        abort_reason().prop_map(Outcome::Aborted),
        bytes(16).prop_map(Outcome::Committed),
    ]
}

fn txn_result() -> impl Strategy<Value = TxnResult> + Clone {
    (client(), request_seq(), position(), outcome()).prop_map(|(client, seq, position, outcome)| {
        TxnResult {
            client,
            seq,
            position,
            outcome,
        }
    })
}

fn rejection() -> impl Strategy<Value = Rejection> + Clone {
    prop_oneof![
        text().prop_map(Rejection::BadArgs),
        (any::<usize>(), any::<usize>())
            .prop_map(|(entries, max)| Rejection::FootprintTooLarge { entries, max }),
        text().prop_map(Rejection::UnknownProcedure),
        text().prop_map(Rejection::BadKey),
        (any::<usize>(), any::<usize>())
            .prop_map(|(bytes, max)| Rejection::CallTooLarge { bytes, max }),
        text().prop_map(Rejection::Unauthorized),
        any::<u64>().prop_map(Rejection::ForeignSession),
        text().prop_map(Rejection::Overloaded),
        (text(), text(), proptest::option::of(text())).prop_map(|(procedure, table, owner)| {
            Rejection::ForeignTable {
                procedure,
                table,
                owner,
            }
        }),
    ]
}

fn reply() -> impl Strategy<Value = Reply> + Clone {
    prop_oneof![
        (position(), outcome()).prop_map(|(position, outcome)| Reply::Done { position, outcome }),
        rejection().prop_map(Reply::Rejected),
        Just(Reply::Unavailable),
    ]
}

fn remote_reads() -> impl Strategy<Value = RemoteReads> + Clone {
    let exact = vec((key(), proptest::option::of(bytes(8))), 0..3);
    let prefixes = vec((key(), vec((key(), bytes(8)), 0..3)), 0..2);
    (
        position(),
        partition(),
        exact,
        prefixes,
        any::<(u32, u32)>(),
    )
        .prop_map(
            |(position, from, exact, prefixes, (chunk, chunks))| RemoteReads {
                position,
                from,
                exact,
                prefixes,
                chunk,
                chunks,
            },
        )
}

fn node_status() -> impl Strategy<Value = NodeStatus> + Clone {
    let replica = proptest::option::of((any::<u64>(), proptest::option::of(node()), epoch()));
    let partitions = vec((partition(), epoch(), epoch()), 0..4);
    let loaded = (any::<u64>(), any::<u32>());
    (
        node(),
        replica,
        partitions,
        any::<u64>(),
        any::<u64>(),
        loaded,
        (
            any::<u64>(),
            proptest::option::of(text()),
            proptest::collection::vec((partition(), epoch(), text()), 0..3),
        ),
    )
        .prop_map(
            |(node, replica, partitions, calls_answered, uptime_us, loaded, divergences)| {
                NodeStatus {
                    node,
                    replica,
                    partitions,
                    calls_answered,
                    uptime_us,
                    rows_loaded: loaded.0,
                    warehouses_loaded: loaded.1,
                    determinism_failures: divergences.0,
                    last_divergence: divergences.1,
                    digests: divergences.2,
                    // Any epoch does for the codec; a separate draw would exceed the
                    // tuple strategies' arity.
                    log_start: Epoch(uptime_us.rotate_left(7)),
                }
            },
        )
}

fn plan() -> impl Strategy<Value = Plan> + Clone {
    let owner = prop_oneof![
        partition().prop_map(Owner::Partition),
        Just(Owner::Replicated)
    ];
    let routed = (
        position(),
        transaction(),
        vec(owner, 0..4),
        vec(partition(), 0..3),
        vec(partition(), 0..3),
        proptest::option::of(abort_reason()),
    )
        .prop_map(
            |(position, txn, owners, participants, active, rejected)| RoutedTxn {
                position,
                txn: Arc::new(txn),
                owners,
                participants,
                active,
                rejected,
            },
        );
    (
        any::<u16>(),
        epoch(),
        partition(),
        vec(routed.prop_map(Arc::new), 0..3),
    )
        .prop_map(|(version, epoch, partition, txns)| Plan {
            version,
            epoch,
            partition,
            txns,
        })
}

fn call() -> impl Strategy<Value = Call> + Clone {
    (client(), request_seq(), text(), bytes(32)).prop_map(|(client, seq, procedure, args)| Call {
        client,
        seq,
        procedure,
        args,
    })
}

fn offset() -> impl Strategy<Value = Offset> + Clone {
    (position(), any::<u32>()).prop_map(|(position, index)| Offset { position, index })
}

fn stream_events() -> impl Strategy<Value = Vec<StreamEvent>> + Clone {
    vec(
        (offset(), bytes(8)).prop_map(|(offset, data)| StreamEvent { offset, data }),
        0..3,
    )
}

fn stream_reply() -> impl Strategy<Value = StreamReply> + Clone {
    prop_oneof![
        (stream_events(), offset()).prop_map(|(events, next)| StreamReply::Events { events, next }),
        Just(StreamReply::Unavailable),
        text().prop_map(StreamReply::Refused),
    ]
}

fn delivery() -> impl Strategy<Value = Delivery> + Clone {
    let letter = (text(), bytes(16)).prop_map(|(procedure, args)| Letter { procedure, args });
    (
        partition(),
        any::<u64>(),
        any::<u64>(),
        vec(letter, 0..3),
        btree_map(any::<u32>(), text(), 0..2),
    )
        .prop_map(|(from, batch, first, letters, refused)| Delivery {
            from,
            batch,
            first,
            letters,
            refused,
        })
}

fn scan_range() -> impl Strategy<Value = ScanRange> + Clone {
    (
        key(),
        proptest::option::of(key()),
        proptest::option::of(key()),
    )
        .prop_map(|(prefix, from, to)| ScanRange { prefix, from, to })
}

fn snapshot_error() -> impl Strategy<Value = SnapshotError> + Clone {
    prop_oneof![
        (epoch(), epoch()).prop_map(|(asked, oldest)| SnapshotError::TooOld { asked, oldest }),
        (epoch(), partition(), epoch()).prop_map(|(asked, partition, applied)| {
            SnapshotError::NotYet {
                asked,
                partition,
                applied,
            }
        }),
        Just(SnapshotError::Unavailable),
        text().prop_map(SnapshotError::Refused),
    ]
}

fn values() -> impl Strategy<Value = Vec<Option<Vec<u8>>>> + Clone {
    vec(proptest::option::of(bytes(8)), 0..3)
}

fn rows() -> impl Strategy<Value = Vec<(Key, Vec<u8>)>> + Clone {
    vec((key(), bytes(8)), 0..3)
}

fn snapshot_read() -> impl Strategy<Value = SnapshotRead> + Clone {
    let at = prop_oneof![
        epoch().prop_map(|not_before| At::Latest { not_before }),
        epoch().prop_map(At::Epoch),
    ];
    let op = prop_oneof![
        vec(key(), 0..3).prop_map(SnapshotOp::Get),
        (
            partition(),
            scan_range(),
            proptest::option::of(key()),
            any::<u32>()
        )
            .prop_map(|(partition, range, after, limit)| SnapshotOp::Scan {
                partition,
                range,
                after,
                limit
            }),
        Just(SnapshotOp::Epoch),
    ];
    (at, op).prop_map(|(at, op)| SnapshotRead { at, op })
}

fn snapshot_reply() -> impl Strategy<Value = SnapshotReply> + Clone {
    prop_oneof![
        (epoch(), values()).prop_map(|(epoch, values)| SnapshotReply::Values { epoch, values }),
        (epoch(), rows(), any::<bool>()).prop_map(|(epoch, rows, more)| SnapshotReply::Rows {
            epoch,
            rows,
            more
        }),
        (epoch(), any::<u32>())
            .prop_map(|(epoch, partitions)| SnapshotReply::Epoch { epoch, partitions }),
        snapshot_error().prop_map(SnapshotReply::Failed),
    ]
}

fn snapshot_part() -> impl Strategy<Value = SnapshotPart> + Clone {
    let rows = prop_oneof![
        (epoch(), values()).prop_map(|(epoch, values)| PartRows::Values { epoch, values }),
        (epoch(), rows(), any::<bool>()).prop_map(|(epoch, rows, more)| PartRows::Rows {
            epoch,
            rows,
            more
        }),
        Just(PartRows::Nothing),
    ];
    let answer = prop_oneof![rows.prop_map(Ok), snapshot_error().prop_map(Err)];
    (partition(), epoch(), epoch(), answer).prop_map(|(partition, applied, oldest, answer)| {
        SnapshotPart {
            partition,
            applied,
            oldest,
            answer,
        }
    })
}

fn part_query() -> impl Strategy<Value = (PartAt, PartOp)> + Clone {
    let at = prop_oneof![
        epoch().prop_map(|not_before| PartAt::Latest { not_before }),
        epoch().prop_map(PartAt::Epoch),
    ];
    let op = prop_oneof![
        vec(key(), 0..3).prop_map(PartOp::Get),
        (scan_range(), proptest::option::of(key()), any::<u32>()).prop_map(
            |(range, after, limit)| PartOp::Scan {
                range,
                after,
                limit
            }
        ),
        Just(PartOp::Epoch),
    ];
    (at, op)
}

fn token() -> impl Strategy<Value = SessionToken> + Clone {
    any::<[u8; 16]>().prop_map(SessionToken)
}

/// Any message, every variant equally likely.
fn message() -> impl Strategy<Value = Message> + Clone {
    prop_oneof![
        (partition(), node(), partition(), epoch()).prop_map(|(from, node, to, durable)| {
            Message::Ack {
                from,
                node,
                to,
                durable,
            }
        }),
        call().prop_map(Message::Call),
        delivery().prop_map(Message::Deliver),
        stream_reply().prop_map(Message::Events),
        (text(), offset(), any::<u32>()).prop_map(|(stream, from, max)| Message::ReadStream {
            stream,
            from,
            max
        }),
        (
            any::<u64>(),
            partition(),
            stream_events(),
            epoch(),
            any::<bool>()
        )
            .prop_map(
                |(read, partition, events, applied, complete)| Message::StreamPart {
                    read,
                    part: StreamPart {
                        partition,
                        events,
                        applied,
                        complete,
                    },
                }
            ),
        (
            partition(),
            any::<u64>(),
            node(),
            text(),
            offset(),
            any::<u32>()
        )
            .prop_map(|(partition, read, gateway, stream, from, max)| {
                Message::StreamQuery {
                    partition,
                    read,
                    gateway,
                    stream,
                    from,
                    max,
                }
            }),
        (client(), request_seq()).prop_map(|(client, seq)| Message::Duplicate { client, seq }),
        (partition(), node(), partition(), epoch()).prop_map(|(from, node, to, durable)| {
            Message::Hello {
                from,
                node,
                to,
                durable,
            }
        }),
        (node(), transaction(), proptest::option::of(node())).prop_map(|(from, txn, leader)| {
            Message::NotLeader {
                from,
                txn: Arc::new(txn),
                leader,
            }
        }),
        (node(), peer_message()).prop_map(|(from, msg)| Message::Peer { from, msg }),
        plan().prop_map(|plan| Message::Plan(Arc::new(plan))),
        (client(), request_seq(), partition(), node()).prop_map(
            |(client, seq, partition, gateway)| Message::Query {
                client,
                seq,
                partition,
                gateway,
            }
        ),
        (partition(), remote_reads()).prop_map(|(to, reads)| Message::RemoteReads {
            to,
            reads: Arc::new(reads),
        }),
        (client(), request_seq(), reply()).prop_map(|(client, seq, reply)| Message::Reply {
            client,
            seq,
            reply
        }),
        Just(Message::OpenSession),
        (token(), call()).prop_map(|(token, call)| Message::SessionCall { token, call }),
        (client(), token()).prop_map(|(client, token)| Message::SessionOpened { client, token }),
        (partition(), txn_result(), any::<bool>()).prop_map(|(from, result, recovered)| {
            Message::Result {
                from,
                result,
                recovered,
            }
        }),
        (client(), request_seq()).prop_map(|(client, seq)| Message::ResultUnknown { client, seq }),
        snapshot_reply().prop_map(Message::Snapshot),
        (any::<u64>(), snapshot_part())
            .prop_map(|(read, part)| Message::SnapshotPart { read, part }),
        (partition(), any::<u64>(), node(), part_query()).prop_map(
            |(partition, read, gateway, (at, op))| Message::SnapshotQuery {
                partition,
                read,
                gateway,
                at,
                op,
            }
        ),
        snapshot_read().prop_map(Message::SnapshotRead),
        Just(Message::Status),
        node_status().prop_map(Message::StatusReply),
        transaction().prop_map(|txn| Message::Submit(Arc::new(txn))),
        (partition(), node(), epoch()).prop_map(|(partition, node, from)| Message::Subscribe {
            partition,
            node,
            from
        }),
        (partition(), node(), epoch()).prop_map(|(partition, node, durable)| {
            Message::Applied {
                partition,
                node,
                durable,
            }
        }),
        Just(Message::Tables),
        prop::collection::vec(table(), 0..3).prop_map(Message::TablesReply),
        epoch().prop_map(|from| Message::LogRead { from }),
        prop_oneof![
            (epoch(), prop::collection::vec(batch(), 0..3)).prop_map(|(commit, batches)| {
                LogReply::Batches {
                    commit,
                    batches: batches.into_iter().map(Arc::new).collect(),
                }
            }),
            epoch().prop_map(|log_start| LogReply::Compacted { log_start }),
            Just(LogReply::NoLog),
            ".{0,40}".prop_map(LogReply::Denied),
        ]
        .prop_map(Message::LogReply),
        (node(), partition(), epoch()).prop_map(|(from, partition, log_start)| {
            Message::PlansCompacted {
                from,
                partition,
                log_start,
            }
        }),
        (partition(), node(), partition(), epoch()).prop_map(|(from, node, to, through)| {
            Message::ReadsGone {
                from,
                node,
                to,
                through,
            }
        }),
        (partition(), node(), prop::option::of((epoch(), key()))).prop_map(
            |(partition, node, image)| Message::StateFetch {
                partition,
                node,
                fetch: StateFetch { image },
            }
        ),
        (partition(), node(), state_chunk()).prop_map(|(partition, node, chunk)| {
            Message::StateChunk {
                partition,
                node,
                chunk,
            }
        }),
        epoch().prop_map(|at| Message::Checkpoint { at }),
        prop::collection::vec((partition(), checkpoint_answer()), 0..3)
            .prop_map(Message::CheckpointReply),
    ]
}

fn checkpoint_answer() -> impl Strategy<Value = CheckpointAnswer> {
    prop_oneof![
        Just(CheckpointAnswer::Scheduled),
        epoch().prop_map(|applied| CheckpointAnswer::TooLate { applied }),
        "[a-z ]{0,12}".prop_map(CheckpointAnswer::Refused),
    ]
}

fn state_chunk() -> impl Strategy<Value = StateChunk> {
    prop_oneof![
        (
            epoch(),
            prop::option::of(key()),
            prop::collection::vec((key(), prop::collection::vec(any::<u8>(), 0..16)), 0..3),
            any::<bool>()
        )
            .prop_map(|(epoch, after, rows, done)| StateChunk::Rows {
                epoch,
                after,
                rows,
                done
            }),
        Just(StateChunk::Unavailable),
    ]
}

/// A table schema with random fields, partitioned by any rule.
fn table() -> impl Strategy<Value = Table> + Clone {
    let ty = select(vec![
        FieldType::U64,
        FieldType::I64,
        FieldType::Str,
        FieldType::Bytes,
        FieldType::Bool,
        FieldType::F64,
        FieldType::Any,
    ]);
    let rule = prop_oneof![
        any::<u32>().prop_map(|fields| TableRule::Hash { fields }),
        prop::collection::vec(key(), 0..3).prop_map(|splits| TableRule::Range { splits }),
        Just(TableRule::Replicated),
    ];
    let fields = prop::collection::vec((text(), ty), 0..5);
    (text(), rule, fields.clone(), fields).prop_map(|(name, rule, key, columns)| {
        let table = Table::new(&name).rule(rule);
        let table = key.iter().fold(table, |t, (n, ty)| t.key(n, *ty));
        columns.iter().fold(table, |t, (n, ty)| t.column(n, *ty))
    })
}

// ---------------------------------------------------------------------------------------
// Variant names, matched exhaustively so that a new variant fails to compile here.

const MESSAGE_VARIANTS: [&str; 39] = [
    "Ack",
    "Call",
    "Deliver",
    "Events",
    "ReadStream",
    "StreamPart",
    "StreamQuery",
    "Duplicate",
    "Hello",
    "NotLeader",
    "OpenSession",
    "Peer",
    "Plan",
    "Query",
    "RemoteReads",
    "Reply",
    "Result",
    "ResultUnknown",
    "SessionCall",
    "SessionOpened",
    "Snapshot",
    "SnapshotPart",
    "SnapshotQuery",
    "SnapshotRead",
    "Status",
    "StatusReply",
    "Submit",
    "Subscribe",
    "Tables",
    "TablesReply",
    "LogRead",
    "LogReply",
    "Applied",
    "PlansCompacted",
    "ReadsGone",
    "StateFetch",
    "StateChunk",
    "Checkpoint",
    "CheckpointReply",
];

fn message_variant(msg: &Message) -> &'static str {
    match msg {
        Message::Ack { .. } => "Ack",
        Message::Call(_) => "Call",
        Message::Deliver(_) => "Deliver",
        Message::Events(_) => "Events",
        Message::ReadStream { .. } => "ReadStream",
        Message::StreamPart { .. } => "StreamPart",
        Message::StreamQuery { .. } => "StreamQuery",
        Message::Duplicate { .. } => "Duplicate",
        Message::Hello { .. } => "Hello",
        Message::NotLeader { .. } => "NotLeader",
        Message::OpenSession => "OpenSession",
        Message::Peer { .. } => "Peer",
        Message::Plan(_) => "Plan",
        Message::Query { .. } => "Query",
        Message::RemoteReads { .. } => "RemoteReads",
        Message::Reply { .. } => "Reply",
        Message::Result { .. } => "Result",
        Message::ResultUnknown { .. } => "ResultUnknown",
        Message::SessionCall { .. } => "SessionCall",
        Message::SessionOpened { .. } => "SessionOpened",
        Message::Snapshot(_) => "Snapshot",
        Message::SnapshotPart { .. } => "SnapshotPart",
        Message::SnapshotQuery { .. } => "SnapshotQuery",
        Message::SnapshotRead(_) => "SnapshotRead",
        Message::Status => "Status",
        Message::StatusReply(_) => "StatusReply",
        Message::Submit(_) => "Submit",
        Message::Subscribe { .. } => "Subscribe",
        Message::Applied { .. } => "Applied",
        Message::Tables => "Tables",
        Message::TablesReply(_) => "TablesReply",
        Message::LogRead { .. } => "LogRead",
        Message::LogReply(_) => "LogReply",
        Message::PlansCompacted { .. } => "PlansCompacted",
        Message::ReadsGone { .. } => "ReadsGone",
        Message::StateFetch { .. } => "StateFetch",
        Message::StateChunk { .. } => "StateChunk",
        Message::Checkpoint { .. } => "Checkpoint",
        Message::CheckpointReply(_) => "CheckpointReply",
    }
}

const PEER_VARIANTS: [&str; 8] = [
    "AppendEntries",
    "AppendReply",
    "RequestVote",
    "Vote",
    "PreVote",
    "PreVoteReply",
    "InstallSnapshot",
    "SnapshotReply",
];

fn peer_variant(msg: &PeerMessage) -> &'static str {
    match msg {
        PeerMessage::AppendEntries { .. } => "AppendEntries",
        PeerMessage::AppendReply { .. } => "AppendReply",
        PeerMessage::RequestVote { .. } => "RequestVote",
        PeerMessage::Vote { .. } => "Vote",
        PeerMessage::PreVote { .. } => "PreVote",
        PeerMessage::PreVoteReply { .. } => "PreVoteReply",
        PeerMessage::InstallSnapshot { .. } => "InstallSnapshot",
        PeerMessage::SnapshotReply { .. } => "SnapshotReply",
    }
}

const REJECTION_VARIANTS: [&str; 9] = [
    "BadArgs",
    "FootprintTooLarge",
    "UnknownProcedure",
    "BadKey",
    "CallTooLarge",
    "Unauthorized",
    "ForeignSession",
    "Overloaded",
    "ForeignTable",
];

fn rejection_variant(rejection: &Rejection) -> &'static str {
    match rejection {
        Rejection::BadArgs(_) => "BadArgs",
        Rejection::FootprintTooLarge { .. } => "FootprintTooLarge",
        Rejection::UnknownProcedure(_) => "UnknownProcedure",
        Rejection::BadKey(_) => "BadKey",
        Rejection::CallTooLarge { .. } => "CallTooLarge",
        Rejection::Unauthorized(_) => "Unauthorized",
        Rejection::ForeignSession(_) => "ForeignSession",
        Rejection::Overloaded(_) => "Overloaded",
        Rejection::ForeignTable { .. } => "ForeignTable",
    }
}

const ABORT_VARIANTS: [&str; 13] = [
    "BadArgs",
    "BadValue",
    "OutsideFootprint",
    "ReplicatedWrite",
    "UnknownProcedure",
    "Unroutable",
    "User",
    "FootprintChanged",
    "Panicked",
    "Overflow",
    "BadKey",
    "ValueTooLarge",
    "BadLetter",
];

fn abort_variant(reason: &AbortReason) -> &'static str {
    match reason {
        AbortReason::BadArgs(_) => "BadArgs",
        AbortReason::BadValue { .. } => "BadValue",
        AbortReason::OutsideFootprint { .. } => "OutsideFootprint",
        AbortReason::ReplicatedWrite { .. } => "ReplicatedWrite",
        AbortReason::UnknownProcedure(_) => "UnknownProcedure",
        AbortReason::Unroutable(_) => "Unroutable",
        AbortReason::User(_) => "User",
        AbortReason::FootprintChanged(_) => "FootprintChanged",
        AbortReason::Panicked(_) => "Panicked",
        AbortReason::Overflow(_) => "Overflow",
        AbortReason::BadKey(_) => "BadKey",
        AbortReason::ValueTooLarge { .. } => "ValueTooLarge",
        AbortReason::BadLetter { .. } => "BadLetter",
    }
}

/// The variant names of `count` values drawn from `strategy` with a fixed seed.
fn sampled_variants<S: Strategy>(
    strategy: S,
    count: usize,
    name: fn(&S::Value) -> &'static str,
) -> BTreeSet<&'static str> {
    let mut runner = TestRunner::deterministic();
    (0..count)
        .map(|_| name(&strategy.new_tree(&mut runner).expect("a value").current()))
        .collect()
}

#[test]
fn every_variant_is_generated() {
    let set = |names: &[&'static str]| names.iter().copied().collect::<BTreeSet<_>>();
    assert_eq!(
        sampled_variants(message(), 2_000, message_variant),
        set(&MESSAGE_VARIANTS)
    );
    assert_eq!(
        sampled_variants(peer_message(), 500, peer_variant),
        set(&PEER_VARIANTS)
    );
    assert_eq!(
        sampled_variants(rejection(), 500, rejection_variant),
        set(&REJECTION_VARIANTS)
    );
    assert_eq!(
        sampled_variants(abort_reason(), 1_000, abort_variant),
        set(&ABORT_VARIANTS)
    );
}

// ---------------------------------------------------------------------------------------
// Driving a decoder.

/// Pushes `wire` into `decoder` in chunks of the sizes in `chunks` (cycled), taking every
/// complete message after each push as a reader does, until the bytes run out or the
/// stream fails.
///
/// Checks the decoder's contract on the way: while it waits for more bytes it holds less
/// than one maximal frame (so a hostile length prefix never makes it buffer more), and a
/// failed stream stays failed.
fn drive(
    decoder: &mut FrameDecoder,
    max: u32,
    wire: &[u8],
    chunks: &[usize],
) -> Result<Vec<Message>, FrameError> {
    let mut got = Vec::new();
    let mut rest = wire;
    for chunk in chunks.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (now, later) = rest.split_at((*chunk).clamp(1, rest.len()));
        decoder.push(now);
        rest = later;
        loop {
            match decoder.next_frame::<Message>() {
                Ok(Some(msg)) => got.push(msg),
                Ok(None) => break,
                Err(e) => {
                    assert!(
                        decoder.next_frame::<Message>().is_err(),
                        "failure is sticky"
                    );
                    return Err(e);
                }
            }
        }
        assert!(
            decoder.buffered() < 4 + max as usize,
            "{} bytes buffered with a limit of {max}",
            decoder.buffered()
        );
    }
    Ok(got)
}

/// Checks a value that decoded from untrusted bytes: it prints (which walks every key
/// through the tuple decoder) and survives another trip through the codec unchanged.
fn check_decoded(msg: &Message) {
    let _ = format!("{msg:?}");
    let again: Message = codec::decode(&codec::encode(msg)).expect("a decoded value re-encodes");
    assert_eq!(&again, msg, "decode(encode(m)) != m for a decoded m");
}

/// Exercises the key API on a key that may not be well-formed (keys decode unchecked).
fn poke_key(key: &Key) {
    let _ = (
        key.elems(),
        key.validate(),
        key.table_name(),
        key.is_system(),
    );
    let _ = key.to_string();
    for n in 0..4 {
        let _ = key.prefix_len(n);
    }
    let _ = key.starts_with(&Key::table("t"));
}

fn chunk_sizes() -> impl Strategy<Value = Vec<usize>> {
    prop_oneof![
        Just(vec![usize::MAX]),
        vec(1usize..=8, 1..6),
        vec(1usize..=300, 1..6)
    ]
}

proptest! {
    #![proptest_config(config(200_000))]

    /// (a) Encode → frame → decode is the identity, for one message or several in a row,
    /// whatever the read boundaries; a limit of exactly the body size passes and one byte
    /// less is refused on both sides.
    #[test]
    fn frames_round_trip(msgs in vec(message(), 1..4), chunks in chunk_sizes()) {
        let mut wire = Vec::new();
        let mut body_max = 0u32;
        for msg in &msgs {
            prop_assert_eq!(&codec::decode::<Message>(&codec::encode(msg)).unwrap(), msg);
            prop_assert_eq!(&codec::decode::<Message>(&codec::encode_named(msg)).unwrap(), msg);
            let frame = frame::encode(msg, DEFAULT_MAX_FRAME_BYTES).unwrap();
            body_max = body_max.max(u32::try_from(frame.len() - 4).unwrap());
            wire.extend(frame);
        }
        let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES);
        prop_assert_eq!(&drive(&mut decoder, DEFAULT_MAX_FRAME_BYTES, &wire, &chunks)?, &msgs);
        prop_assert_eq!(decoder.buffered(), 0);

        let mut exact = FrameDecoder::new(body_max);
        prop_assert_eq!(&drive(&mut exact, body_max, &wire, &chunks)?, &msgs);
        let largest = msgs.iter().find(|m| {
            frame::encode(*m, DEFAULT_MAX_FRAME_BYTES).unwrap().len() - 4 == body_max as usize
        }).unwrap();
        let too_large = matches!(frame::encode(largest, body_max - 1), Err(FrameError::TooLarge { .. }));
        prop_assert!(too_large);
        let mut tight = FrameDecoder::new(body_max - 1);
        let refused = matches!(drive(&mut tight, body_max - 1, &wire, &chunks), Err(FrameError::TooLarge { .. }));
        prop_assert!(refused);
    }

}

proptest! {
    #![proptest_config(config(50_000))]

    /// Keys built from raw bytes survive their API and the codec.
    #[test]
    fn raw_keys_never_panic(raw in bytes(32)) {
        let key = raw_key(&raw);
        poke_key(&key);
        prop_assert_eq!(codec::decode::<Key>(&codec::encode(&key)).unwrap(), key);
    }
}

// ---------------------------------------------------------------------------------------
// (b) Arbitrary byte streams.

/// A piece of a hostile stream: noise, a length prefix with a body of about that length,
/// a bare prefix, or a valid frame (so that the decoder gets past it to what follows).
fn segment() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        2 => bytes(64),
        2 => (bytes(48), -2i64..=2).prop_map(|(body, delta)| {
            let len = (body.len() as i64 + delta).max(0) as u32;
            let mut out = len.to_be_bytes().to_vec();
            out.extend(body);
            out
        }),
        1 => any::<u32>().prop_map(|len| len.to_be_bytes().to_vec()),
        1 => message().prop_map(|m| frame::encode(&m, DEFAULT_MAX_FRAME_BYTES).expect("fits")),
    ]
}

fn limit() -> impl Strategy<Value = u32> {
    prop_oneof![0u32..=64, Just(DEFAULT_MAX_FRAME_BYTES)]
}

proptest! {
    #![proptest_config(config(400_000))]

    /// Random streams never panic, and the decoder never buffers a frame over its limit.
    #[test]
    fn arbitrary_streams_never_panic(
        segments in vec(segment(), 0..6),
        max in limit(),
        chunks in chunk_sizes(),
    ) {
        let wire = segments.concat();
        let mut decoder = FrameDecoder::new(max);
        if let Ok(msgs) = drive(&mut decoder, max, &wire, &chunks) {
            msgs.iter().for_each(check_decoded);
        }
    }

}

proptest! {
    #![proptest_config(config(500_000))]

    /// (d) Random bytes decoded directly, as the frame decoder and the log reader do.
    #[test]
    fn arbitrary_bodies_never_panic(body in bytes(256)) {
        if let Ok(msg) = codec::decode::<Message>(&body) {
            check_decoded(&msg);
        }
        let _ = codec::decode::<PeerMessage>(&body);
        let _ = codec::decode::<Batch>(&body);
        let _ = codec::decode::<Plan>(&body);
        let _ = codec::decode::<Transaction>(&body);
        if let Ok(key) = codec::decode::<Key>(&body) {
            poke_key(&key);
        }
    }
}

// ---------------------------------------------------------------------------------------
// (c) Mutated valid encodings.

/// One edit of an encoded frame. Offsets are taken modulo the frame's length.
#[derive(Clone, Debug)]
enum Mutation {
    /// Flips one bit.
    Flip { at: usize, bit: u8 },
    /// Overwrites one byte; the values that are MessagePack markers are the likely ones.
    Set { at: usize, byte: u8 },
    /// Inserts one byte.
    Insert { at: usize, byte: u8 },
    /// Deletes one byte.
    Delete { at: usize },
    /// Cuts the frame short.
    Truncate { len: usize },
    /// Replaces the length prefix.
    Prefix { len: u32 },
    /// Moves the length prefix by a little.
    Nudge { delta: i32 },
    /// Copies a run of the frame over another place (duplicates structure).
    Splice { from: usize, to: usize, len: usize },
}

fn marker() -> impl Strategy<Value = u8> {
    prop_oneof![
        any::<u8>(),
        select(vec![
            0x80, 0x81, 0x90, 0x91, 0x9f, 0xa0, 0xc0, 0xc1, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xcc,
            0xcd, 0xce, 0xcf, 0xd9, 0xda, 0xdb, 0xdc, 0xdd, 0xde, 0xdf, 0xff, 0x7f,
        ]),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        (any::<usize>(), marker()).prop_map(|(at, byte)| Mutation::Set { at, byte }),
        (any::<usize>(), marker()).prop_map(|(at, byte)| Mutation::Insert { at, byte }),
        any::<usize>().prop_map(|at| Mutation::Delete { at }),
        any::<usize>().prop_map(|len| Mutation::Truncate { len }),
        prop_oneof![any::<u32>(), 0u32..512].prop_map(|len| Mutation::Prefix { len }),
        (-3i32..=3).prop_map(|delta| Mutation::Nudge { delta }),
        (any::<usize>(), any::<usize>(), 1usize..16).prop_map(|(from, to, len)| Mutation::Splice {
            from,
            to,
            len
        }),
    ]
}

fn mutate(wire: &mut Vec<u8>, mutation: &Mutation) {
    let n = wire.len();
    match *mutation {
        Mutation::Flip { at, bit } if n > 0 => wire[at % n] ^= 1 << bit,
        Mutation::Set { at, byte } if n > 0 => wire[at % n] = byte,
        Mutation::Insert { at, byte } => wire.insert(at % (n + 1), byte),
        Mutation::Delete { at } if n > 0 => {
            wire.remove(at % n);
        }
        Mutation::Truncate { len } => wire.truncate(len % (n + 1)),
        Mutation::Prefix { len } if n >= 4 => wire[..4].copy_from_slice(&len.to_be_bytes()),
        Mutation::Nudge { delta } if n >= 4 => {
            let len = u32::from_be_bytes([wire[0], wire[1], wire[2], wire[3]]);
            wire[..4].copy_from_slice(&len.wrapping_add_signed(delta).to_be_bytes());
        }
        Mutation::Splice { from, to, len } if n > 0 => {
            let from = from % n;
            let run = wire[from..(from + len).min(n)].to_vec();
            let to = to % n;
            let end = (to + run.len()).min(n);
            wire[to..end].copy_from_slice(&run[..end - to]);
        }
        _ => {}
    }
}

proptest! {
    #![proptest_config(config(360_000))]

    /// Mutated frames decode to some message or to an error, never a panic; whatever
    /// decodes is a well-behaved value.
    #[test]
    fn mutated_frames_never_panic(
        msg in message(),
        mutations in vec(mutation(), 1..5),
        max in limit(),
        chunks in chunk_sizes(),
    ) {
        let mut wire = frame::encode(&msg, DEFAULT_MAX_FRAME_BYTES).unwrap();
        for m in &mutations {
            mutate(&mut wire, m);
        }
        let mut decoder = FrameDecoder::new(max);
        if let Ok(msgs) = drive(&mut decoder, max, &wire, &chunks) {
            msgs.iter().for_each(check_decoded);
        }
        if let Some(body) = wire.get(4..)
            && let Ok(msg) = codec::decode::<Message>(body)
        {
            check_decoded(&msg);
        }
    }
}

// ---------------------------------------------------------------------------------------
// (d) Hostile MessagePack: well-formed documents of the wrong shape.

/// A MessagePack document, to build inputs that get past the first marker check.
#[derive(Clone, Debug)]
enum Doc {
    Nil,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    Bin(Vec<u8>),
    Array(Vec<Doc>),
    Map(Vec<(Doc, Doc)>),
}

impl Serialize for Doc {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Doc::Nil => s.serialize_unit(),
            Doc::Bool(b) => s.serialize_bool(*b),
            Doc::Int(v) => s.serialize_i64(*v),
            Doc::UInt(v) => s.serialize_u64(*v),
            Doc::Float(v) => s.serialize_f64(*v),
            Doc::Str(v) => s.serialize_str(v),
            Doc::Bin(v) => s.serialize_bytes(v),
            Doc::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Doc::Map(entries) => {
                let mut map = s.serialize_map(Some(entries.len()))?;
                for (k, v) in entries {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

/// Names the decoder looks for: variant tags and field names, so that random documents
/// often get past the tag and into a variant's fields.
const NAMES: &str = "Ack Call Duplicate Hello NotLeader OpenSession Peer Plan Query RemoteReads Reply \
    Result ResultUnknown SessionCall SessionOpened Status StatusReply Submit Subscribe Tables \
    TablesReply Applied InstallSnapshot SnapshotReply windows contiguous above received \
    installed offset total \
    AppendEntries AppendReply RequestVote Vote Done Rejected Unavailable Aborted \
    Committed BadArgs BadValue ValueTooLarge Exact Prefix Read Write Insert Partition \
    Replicated client seq procedure args from to durable txn leader msg term entries \
    batch txns epoch footprint gateway reads exact prefixes position outcome reply \
    result recovered replica partitions owners participants active rejected version \
    partition key group index token call chunk chunks";

fn doc() -> impl Strategy<Value = Doc> {
    let names: Vec<&str> = NAMES.split_whitespace().collect();
    let name = prop_oneof![3 => select(names).prop_map(str::to_owned), 1 => "\\PC{0,6}"];
    let leaf = prop_oneof![
        Just(Doc::Nil),
        any::<bool>().prop_map(Doc::Bool),
        any::<i64>().prop_map(Doc::Int),
        prop_oneof![any::<u64>(), 0u64..4].prop_map(Doc::UInt),
        any::<f64>().prop_map(Doc::Float),
        name.clone().prop_map(Doc::Str),
        bytes(12).prop_map(Doc::Bin),
    ];
    leaf.prop_recursive(6, 96, 6, move |inner| {
        prop_oneof![
            3 => vec(inner.clone(), 0..6).prop_map(Doc::Array),
            1 => vec((inner.clone(), inner.clone()), 0..4).prop_map(Doc::Map),
            // A one-entry map is how an enum variant travels.
            3 => (name.clone(), inner)
                .prop_map(|(tag, value)| Doc::Map(vec![(Doc::Str(tag), value)])),
        ]
    })
}

proptest! {
    #![proptest_config(config(360_000))]

    /// Well-formed MessagePack of the wrong shape is an error or a well-behaved message.
    #[test]
    fn hostile_documents_never_panic(doc in doc()) {
        let body = codec::encode(&doc);
        if let Ok(msg) = codec::decode::<Message>(&body) {
            check_decoded(&msg);
        }
        let _ = codec::decode::<PeerMessage>(&body);
        let _ = codec::decode::<Plan>(&body);
    }

}

proptest! {
    #![proptest_config(config(5_000))]

    /// Nesting around the depth limit (1,024 in rmp-serde), in an ignored field where the
    /// decoder recurses without any type to bound it.
    #[test]
    fn nesting_near_the_limit_never_panics(depth in 900usize..1_200, shape in 0usize..SHAPES) {
        let body = nested(shape, depth);
        let _ = codec::decode::<Message>(&body);
    }
}

// ---------------------------------------------------------------------------------------
// (d) Deep nesting.

/// How many places `nested` can bury a deep value.
const SHAPES: usize = 8;

/// A document that nests `depth` containers in one of `SHAPES` places where a `Message`
/// decoder meets it.
fn nested(shape: usize, depth: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let put_str = |out: &mut Vec<u8>, s: &str| {
        out.push(0xa0 | s.len() as u8);
        out.extend_from_slice(s.as_bytes());
    };
    match shape {
        // The message itself.
        0 => out.extend(std::iter::repeat_n(0x91, depth)),
        // An unknown field of a struct variant in map form: skipped with `IgnoredAny`.
        1 => {
            out.push(0x81);
            put_str(&mut out, "Call");
            out.push(0x81);
            put_str(&mut out, "zz");
            out.extend(std::iter::repeat_n(0x91, depth));
        }
        // The same with one-entry maps `{nil: {nil: ...}}` and 16-bit array markers.
        2 => {
            out.push(0x81);
            put_str(&mut out, "Ack");
            out.push(0x81);
            put_str(&mut out, "zz");
            for _ in 0..depth {
                out.extend_from_slice(&[0x81, 0xc0]);
            }
        }
        3 => {
            out.push(0x81);
            put_str(&mut out, "Hello");
            out.push(0x81);
            put_str(&mut out, "zz");
            for _ in 0..depth {
                out.extend_from_slice(&[0xdc, 0x00, 0x01]);
            }
        }
        // Two levels down: a plan's routed transaction, in map form.
        4 => {
            out.push(0x81);
            put_str(&mut out, "Plan");
            out.push(0x81);
            put_str(&mut out, "txns");
            out.push(0x91);
            out.push(0x81);
            put_str(&mut out, "zz");
            out.extend(std::iter::repeat_n(0x91, depth));
        }
        // A peer message's unknown field.
        5 => {
            out.push(0x81);
            put_str(&mut out, "Peer");
            out.push(0x81);
            put_str(&mut out, "msg");
            out.push(0x81);
            put_str(&mut out, "Vote");
            out.push(0x81);
            put_str(&mut out, "zz");
            out.extend(std::iter::repeat_n(0x91, depth));
        }
        // The variant tag position and the payload of a unit variant.
        6 => {
            out.push(0x81);
            out.extend(std::iter::repeat_n(0x91, depth));
        }
        _ => {
            out.push(0x81);
            put_str(&mut out, "Status");
            out.extend(std::iter::repeat_n(0x91, depth));
        }
    }
    out.push(0xc0);
    out
}

/// 100,000 levels in every shape, directly and through a frame, on a thread with the
/// stack of a tokio worker (2 MiB): rmp-serde's depth limit must turn it into an error
/// before the stack runs out. A failure here aborts the test binary with a stack overflow.
#[test]
fn deep_nesting_is_refused_not_a_stack_overflow() {
    let worker = std::thread::Builder::new()
        .name("deep-nesting".into())
        .stack_size(2 << 20)
        .spawn(|| {
            for shape in 0..SHAPES {
                let body = nested(shape, 100_000);
                assert!(codec::decode::<Message>(&body).is_err(), "shape {shape}");
                assert!(
                    codec::decode::<PeerMessage>(&body).is_err(),
                    "shape {shape}"
                );
                let mut wire = u32::try_from(body.len()).unwrap().to_be_bytes().to_vec();
                wire.extend(&body);
                let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES);
                decoder.push(&wire);
                assert!(
                    matches!(
                        decoder.next_frame::<Message>(),
                        Err(FrameError::Malformed(_))
                    ),
                    "shape {shape}"
                );
                assert_eq!(decoder.buffered(), 0);
            }
        })
        .unwrap();
    worker.join().unwrap();
}

/// Just under the limit an ignored value decodes; just over it is refused. Pins the
/// limit, so a dependency upgrade that drops it is noticed here rather than in production.
#[test]
fn depth_limit_is_where_we_think() {
    let ack = |depth: usize| {
        let mut out = vec![0x81, 0xa3, b'A', b'c', b'k', 0x85];
        for field in ["from", "node", "to", "durable"] {
            out.push(0xa0 | field.len() as u8);
            out.extend_from_slice(field.as_bytes());
            out.push(0x01);
        }
        out.extend_from_slice(&[0xa2, b'z', b'z']);
        out.extend(std::iter::repeat_n(0x91, depth));
        out.push(0xc0);
        out
    };
    let expected = Message::Ack {
        from: PartitionId(1),
        node: NodeId(1),
        to: PartitionId(1),
        durable: Epoch(1),
    };
    assert_eq!(codec::decode::<Message>(&ack(1_000)).unwrap(), expected);
    let err = codec::decode::<Message>(&ack(2_000)).unwrap_err();
    assert!(err.0.contains("depth"), "{err}");
}
