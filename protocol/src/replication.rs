//! Messages between the replicas of a sequencer group: Raft over the log of batches.
//!
//! The log index *is* the epoch: the entry at index `e` holds the batch of epoch `e`,
//! epochs start at 1 and are consecutive, and `Epoch(0)` stands for "before the first
//! entry" (its term is 0). Terms ([`Term`]) start at 0 for a fresh replica.
//!
//! ```text
//!  leader ──AppendEntries{prev_epoch, prev_term, entries, leader_commit}──▶ follower
//!  leader ◀──AppendReply{success, match_epoch, conflict_term}───────────── follower
//!  candidate ──RequestVote{last_epoch, last_term}──▶ voter
//!  candidate ◀──Vote{granted}────────────────────── voter
//! ```
//!
//! Variant names are the wire tags (rmp-serde writes enum variants by name) and fields are
//! encoded in declaration order: a variant is never renamed, a retired name is never reused,
//! and fields are never reordered or removed (a test pins one encoding).
//!
//! Every message fits one frame. An `AppendEntries` carries at most the sender's configured
//! `entries_per_message_max` entries, and a receiver drops one that carries more than
//! [`ENTRIES_PER_MESSAGE_LIMIT`]. It is also cut by bytes: the sender adds entries while
//! [`APPEND_ENTRIES_OVERHEAD_BYTES_MAX`] plus the [`LogEntry::encoded_bytes_max`] of its
//! entries stays within its `append_bytes_max` (but always sends at least one), and a
//! batch closes once the [`txn_encoded_bytes_max`] of its transactions reaches the
//! leader's `batch_bytes_max`. These are cheap upper bounds on the MessagePack encoding,
//! computed from lengths, never by encoding.

use crate::footprint::Footprint;
use crate::ids::{ClientId, Epoch, NodeId, Term};
use crate::txn::{Batch, Transaction};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The most entries any `AppendEntries` may carry; a receiver drops a larger one as
/// malformed. Senders are configured at or below it.
pub const ENTRIES_PER_MESSAGE_LIMIT: usize = 1_024;

/// An upper bound on the bytes an `AppendEntries` adds around its entries: the variant
/// tag, the fixed fields at their widest, the entries' array header, and room for the
/// envelope it travels in (`Message::Peer { from, msg }`).
pub const APPEND_ENTRIES_OVERHEAD_BYTES_MAX: usize = 128;

/// An upper bound on the bytes a [`LogEntry`] adds around its transactions: its term, the
/// batch's version and epoch (each at their widest) and the array headers.
const ENTRY_OVERHEAD_BYTES_MAX: usize = 32;

/// An upper bound on the bytes a transaction's encoding adds beyond its procedure name,
/// arguments and footprint entries: the session, call number and gateway at their widest
/// (9, 9 and 5 bytes), the string, binary and array headers (5 bytes each at most) and the
/// struct headers.
const TXN_OVERHEAD_BYTES_MAX: usize = 64;

/// An upper bound on the bytes one footprint entry adds beyond its key: the tuple header,
/// the `KeySpec` and `Access` variant tags (a map header and the variant's name) and the
/// key's binary header.
const FOOTPRINT_ENTRY_OVERHEAD_BYTES_MAX: usize = 32;

/// An upper bound on the MessagePack encoding of `txn`, computed from its lengths: what a
/// batch or an `AppendEntries` grows by when it carries `txn`.
pub fn txn_encoded_bytes_max(txn: &Transaction) -> usize {
    TXN_OVERHEAD_BYTES_MAX
        .saturating_add(txn.procedure.len())
        .saturating_add(txn.args.len())
        .saturating_add(footprint_encoded_bytes_max(&txn.footprint))
}

fn footprint_encoded_bytes_max(footprint: &Footprint) -> usize {
    footprint.entries.iter().fold(0usize, |sum, (spec, _)| {
        sum.saturating_add(FOOTPRINT_ENTRY_OVERHEAD_BYTES_MAX)
            .saturating_add(spec.key().as_bytes().len())
    })
}

/// One entry of the replicated log: a batch and the term of the leader that created it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// The term in which a leader appended this entry.
    pub term: Term,
    /// The batch; `batch.epoch` is the entry's index in the log.
    pub batch: Arc<Batch>,
}

impl LogEntry {
    /// The entry's index in the log, which is its batch's epoch.
    pub fn epoch(&self) -> Epoch {
        self.batch.epoch
    }

    /// An upper bound on this entry's MessagePack encoding (see [`txn_encoded_bytes_max`]);
    /// linear in the batch's transactions, so senders compute it once per entry.
    pub fn encoded_bytes_max(&self) -> usize {
        self.batch
            .txns
            .iter()
            .fold(ENTRY_OVERHEAD_BYTES_MAX, |sum, txn| {
                sum.saturating_add(txn_encoded_bytes_max(txn))
            })
    }
}

/// The most client windows one `InstallSnapshot` chunk may carry; a receiver drops a
/// larger one as malformed.
pub const SNAPSHOT_WINDOWS_PER_MESSAGE_LIMIT: usize = 65_536;

/// The most sequence numbers above the contiguous prefix one client window may carry.
pub const WINDOW_ABOVE_LIMIT: usize = 65_536;

/// The calls of one session a log holds: every number up to `contiguous`, and `above`
/// (ascending, each greater than `contiguous + 1`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientWindow {
    /// The session.
    pub client: ClientId,
    /// Every call number up to this one is in the log.
    pub contiguous: u64,
    /// Call numbers beyond the contiguous prefix that are in the log, ascending.
    pub above: Vec<u64>,
}

impl ClientWindow {
    /// An upper bound on this window's MessagePack encoding.
    pub fn encoded_bytes_max(&self) -> usize {
        32usize.saturating_add(self.above.len().saturating_mul(9))
    }
}

/// A sequencer replica's compacted log prefix: what it must still know about the epochs
/// through `epoch` once their entries are gone (Raft's snapshot). The batches themselves
/// went to the executors, which hold their effect; the replica keeps only which calls they
/// held, so that a retried call is never ordered twice.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogSnapshot {
    /// The last epoch the snapshot covers (0: none).
    pub epoch: Epoch,
    /// The term of the entry at `epoch`.
    pub term: Term,
    /// The de-duplication table as of `epoch`, by ascending client.
    pub windows: Vec<ClientWindow>,
}

/// A message from one sequencer replica to another.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerMessage {
    /// Leader → follower: append `entries` after `prev_epoch`, or just a heartbeat when
    /// `entries` is empty. The follower accepts only if its entry at `prev_epoch` has
    /// term `prev_term`.
    AppendEntries {
        /// The leader's term.
        term: Term,
        /// The leader (also the sender), so followers can redirect clients.
        leader: NodeId,
        /// The epoch just before the first of `entries` (0: the log's start).
        prev_epoch: Epoch,
        /// The term of the leader's entry at `prev_epoch` (0 for epoch 0).
        prev_term: Term,
        /// Consecutive entries from `prev_epoch + 1`, at most [`ENTRIES_PER_MESSAGE_LIMIT`].
        entries: Vec<LogEntry>,
        /// The leader's commit epoch.
        leader_commit: Epoch,
    },
    /// Follower → leader: the answer to an `AppendEntries`. A follower sends a successful
    /// answer only once the entries it confirms (and its current term) are durable.
    AppendReply {
        /// The follower's term (higher than the leader's: the leader steps down).
        term: Term,
        /// Whether the follower's log matched at `prev_epoch` and now holds the entries.
        success: bool,
        /// On success, the last epoch known to match the leader's log (`prev_epoch` plus
        /// the number of entries). On failure, a hint: the leader should retry with
        /// `prev_epoch` at most this epoch (the follower's last epoch if its log is
        /// shorter, else the epoch before the first entry of the conflicting term).
        match_epoch: Epoch,
        /// On a failure caused by a term mismatch at `prev_epoch`: the follower's term
        /// there. `None` on success or when the follower's log is too short.
        conflict_term: Option<Term>,
    },
    /// Candidate → voter: vote for me in `term`.
    RequestVote {
        /// The candidate's term.
        term: Term,
        /// The candidate (also the sender).
        candidate: NodeId,
        /// The candidate's last log epoch.
        last_epoch: Epoch,
        /// The term of the candidate's last log entry (0 if its log is empty).
        last_term: Term,
    },
    /// Voter → candidate: the answer to a `RequestVote`. A granted vote is sent only once
    /// the voter's record of it is durable.
    Vote {
        /// The voter's term.
        term: Term,
        /// Whether the vote is granted.
        granted: bool,
    },
    /// Would-be candidate → voter: would you vote for me in `term` (one past my own)? Asked
    /// before campaigning, changing nobody's term or vote (Raft thesis §9.6, PreVote), so a
    /// replica that was cut off does not depose a healthy leader when it comes back.
    PreVote {
        /// The term the sender would campaign in.
        term: Term,
        /// The would-be candidate (also the sender).
        candidate: NodeId,
        /// Its last log epoch.
        last_epoch: Epoch,
        /// The term of its last log entry.
        last_term: Term,
    },
    /// Voter → would-be candidate: the answer to a `PreVote`.
    PreVoteReply {
        /// Granted: the term asked about. Refused: the voter's own term, so a would-be
        /// candidate behind the group's term catches up.
        term: Term,
        /// Whether the voter would vote.
        granted: bool,
    },
    /// Leader → follower: one chunk of the leader's [`LogSnapshot`], for a follower that
    /// needs entries the leader compacted away (Raft's InstallSnapshot). Chunks go in
    /// order; the follower keeps what it received, so a transfer resumes where it stopped.
    InstallSnapshot {
        /// The leader's term.
        term: Term,
        /// The leader (also the sender).
        leader: NodeId,
        /// The last epoch the snapshot covers.
        epoch: Epoch,
        /// The term of the entry at `epoch`.
        last_term: Term,
        /// The index in the snapshot's windows of the first one carried.
        offset: u64,
        /// The number of windows in the whole snapshot.
        total: u64,
        /// Windows from `offset` on, at most [`SNAPSHOT_WINDOWS_PER_MESSAGE_LIMIT`].
        windows: Vec<ClientWindow>,
    },
    /// Follower → leader: how much of the snapshot of `epoch` it holds. Once it holds all
    /// of it, the answer is sent only after the installed snapshot is durable.
    SnapshotReply {
        /// The follower's term.
        term: Term,
        /// The snapshot's last epoch.
        epoch: Epoch,
        /// Windows received so far, in order from the first: where the next chunk starts.
        received: u64,
        /// Whether the follower holds the whole snapshot, durably, and its log now starts
        /// after `epoch`.
        installed: bool,
    },
}

impl PeerMessage {
    /// The sender's term.
    pub fn term(&self) -> Term {
        match self {
            PeerMessage::AppendEntries { term, .. }
            | PeerMessage::AppendReply { term, .. }
            | PeerMessage::RequestVote { term, .. }
            | PeerMessage::Vote { term, .. }
            | PeerMessage::PreVote { term, .. }
            | PeerMessage::PreVoteReply { term, .. }
            | PeerMessage::InstallSnapshot { term, .. }
            | PeerMessage::SnapshotReply { term, .. } => *term,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LOG_FORMAT_VERSION;
    use crate::codec::{decode, encode};
    use crate::footprint::{Access, KeySpec};
    use crate::ids::{ClientId, RequestSeq};
    use crate::key::Key;
    use crate::message::Message;
    use proptest::prelude::*;

    fn txn(
        ids: (u64, u64, u32),
        procedure: String,
        args: Vec<u8>,
        keys: Vec<(Vec<u8>, bool, Access)>,
    ) -> Arc<Transaction> {
        let mut footprint = Footprint::new();
        for (bytes, prefix, access) in keys {
            let key = Key::table("t").bytes(&bytes);
            let spec = if prefix {
                KeySpec::Prefix(key)
            } else {
                KeySpec::Exact(key)
            };
            // Pushed, not `add`ed: a test builds footprints of 70,000 entries.
            footprint.entries.push((spec, access));
        }
        Arc::new(Transaction {
            client: ClientId(ids.0),
            seq: RequestSeq(ids.1),
            gateway: NodeId(ids.2),
            procedure,
            args,
            footprint,
        })
    }

    /// The encoded size of the envelope an `AppendEntries` of `entries` travels in.
    fn envelope_bytes(entries: Vec<LogEntry>) -> usize {
        encode(&Message::Peer {
            from: NodeId(u32::MAX),
            msg: PeerMessage::AppendEntries {
                term: Term(u64::MAX),
                leader: NodeId(u32::MAX),
                prev_epoch: Epoch(u64::MAX),
                prev_term: Term(u64::MAX),
                entries,
                leader_commit: Epoch(u64::MAX),
            },
        })
        .len()
    }

    fn assert_bounded(entries: Vec<LogEntry>) {
        let bound = entries
            .iter()
            .fold(APPEND_ENTRIES_OVERHEAD_BYTES_MAX, |sum, e| {
                sum + e.encoded_bytes_max()
            });
        for e in &entries {
            let bytes = encode(e).len();
            assert!(
                bytes <= e.encoded_bytes_max(),
                "{bytes} > {}",
                e.encoded_bytes_max()
            );
        }
        let bytes = envelope_bytes(entries);
        assert!(bytes <= bound, "{bytes} > {bound}");
    }

    #[test]
    fn size_bounds_hold_at_the_widest_headers() {
        // Lengths over 65,535 take the widest string, binary and array headers.
        let wide = 70_000;
        let keys = (0..3)
            .map(|i| (vec![i; wide], i % 2 == 0, Access::Insert))
            .collect();
        let big = txn(
            (u64::MAX, u64::MAX, u32::MAX),
            "p".repeat(wide),
            vec![7; wide],
            keys,
        );
        let many_keys = (0..70_000u32)
            .map(|i| (i.to_be_bytes().to_vec(), false, Access::Write))
            .collect();
        let wide_footprint = txn((1, 1, 1), String::new(), Vec::new(), many_keys);
        let many_txns = (0..70_000).map(|i| txn((i, i, 0), "p".into(), vec![], vec![]));
        let entry = |epoch: u64, txns: Vec<Arc<Transaction>>| LogEntry {
            term: Term(u64::MAX),
            batch: Arc::new(Batch {
                version: u16::MAX,
                epoch: Epoch(epoch),
                txns,
            }),
        };
        assert_bounded(vec![
            entry(u64::MAX, vec![big, wide_footprint]),
            entry(u64::MAX, many_txns.collect()),
            entry(u64::MAX, Vec::new()),
        ]);
    }

    fn access() -> impl Strategy<Value = Access> {
        prop_oneof![
            Just(Access::Read),
            Just(Access::Write),
            Just(Access::Insert)
        ]
    }

    fn arb_txn() -> impl Strategy<Value = Arc<Transaction>> {
        let keys = proptest::collection::vec(
            (
                proptest::collection::vec(any::<u8>(), 0..40),
                any::<bool>(),
                access(),
            ),
            0..6,
        );
        (
            (any::<u64>(), any::<u64>(), any::<u32>()),
            "\\PC{0,40}",
            proptest::collection::vec(any::<u8>(), 0..300),
            keys,
        )
            .prop_map(|(ids, procedure, args, keys)| txn(ids, procedure, args, keys))
    }

    proptest! {
        #[test]
        fn size_bounds_hold_for_any_entries(
            batches in proptest::collection::vec(
                (any::<u64>(), any::<u64>(), proptest::collection::vec(arb_txn(), 0..8)),
                0..4,
            ),
        ) {
            let entries = batches
                .into_iter()
                .map(|(term, epoch, txns)| LogEntry {
                    term: Term(term),
                    batch: Arc::new(Batch { version: LOG_FORMAT_VERSION, epoch: Epoch(epoch), txns }),
                })
                .collect();
            assert_bounded(entries);
        }
    }

    #[test]
    fn append_entries_round_trips() {
        let msg = PeerMessage::AppendEntries {
            term: Term(3),
            leader: NodeId(2),
            prev_epoch: Epoch(4),
            prev_term: Term(2),
            entries: vec![LogEntry {
                term: Term(3),
                batch: Arc::new(Batch {
                    version: LOG_FORMAT_VERSION,
                    epoch: Epoch(5),
                    txns: Vec::new(),
                }),
            }],
            leader_commit: Epoch(4),
        };
        assert_eq!(decode::<PeerMessage>(&encode(&msg)).unwrap(), msg);
        assert_eq!(msg.term(), Term(3));
    }

    #[test]
    fn vote_encoding_is_pinned() {
        // The variant name is the tag and fields go in order; this notices a change.
        let bytes = encode(&PeerMessage::Vote {
            term: Term(7),
            granted: true,
        });
        assert_eq!(
            bytes,
            vec![0x81, 0xa4, b'V', b'o', b't', b'e', 0x92, 0x07, 0xc3]
        );
    }
}
