//! Messages between the replicas of a sequencer group: Raft over the log of batches.
//!
//! The log index *is* the epoch: the entry at index `e` holds the batch of epoch `e`,
//! epochs start at 1 and are consecutive, and `Epoch(0)` stands for "before the first
//! entry" (its term is 0). Terms are plain `u64`s, starting at 0 for a fresh replica.
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
//! and fields are never reordered or removed (a test pins one encoding). Every message fits
//! one frame: an
//! `AppendEntries` carries at most the sender's configured `entries_per_message_max`
//! entries, and a receiver drops one that carries more than [`ENTRIES_PER_MESSAGE_LIMIT`].

use crate::ids::{Epoch, NodeId};
use crate::txn::Batch;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The most entries any `AppendEntries` may carry; a receiver drops a larger one as
/// malformed. Senders are configured at or below it.
pub const ENTRIES_PER_MESSAGE_LIMIT: usize = 1_024;

/// One entry of the replicated log: a batch and the term of the leader that created it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// The term in which a leader appended this entry.
    pub term: u64,
    /// The batch; `batch.epoch` is the entry's index in the log.
    pub batch: Arc<Batch>,
}

impl LogEntry {
    /// The entry's index in the log, which is its batch's epoch.
    pub fn epoch(&self) -> Epoch {
        self.batch.epoch
    }
}

/// A message from one sequencer replica to another.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerMessage {
    /// Leader → follower: append `entries` after `prev_epoch`, or just a heartbeat when
    /// `entries` is empty. The follower accepts only if its entry at `prev_epoch` has
    /// term `prev_term`.
    AppendEntries {
        /// The leader's term.
        term: u64,
        /// The leader (also the sender), so followers can redirect clients.
        leader: NodeId,
        /// The epoch just before the first of `entries` (0: the log's start).
        prev_epoch: Epoch,
        /// The term of the leader's entry at `prev_epoch` (0 for epoch 0).
        prev_term: u64,
        /// Consecutive entries from `prev_epoch + 1`, at most [`ENTRIES_PER_MESSAGE_LIMIT`].
        entries: Vec<LogEntry>,
        /// The leader's commit epoch.
        leader_commit: Epoch,
    },
    /// Follower → leader: the answer to an `AppendEntries`. A follower sends a successful
    /// answer only once the entries it confirms (and its current term) are durable.
    AppendReply {
        /// The follower's term (higher than the leader's: the leader steps down).
        term: u64,
        /// Whether the follower's log matched at `prev_epoch` and now holds the entries.
        success: bool,
        /// On success, the last epoch known to match the leader's log (`prev_epoch` plus
        /// the number of entries). On failure, a hint: the leader should retry with
        /// `prev_epoch` at most this epoch (the follower's last epoch if its log is
        /// shorter, else the epoch before the first entry of the conflicting term).
        match_epoch: Epoch,
        /// On a failure caused by a term mismatch at `prev_epoch`: the follower's term
        /// there. `None` on success or when the follower's log is too short.
        conflict_term: Option<u64>,
    },
    /// Candidate → voter: vote for me in `term`.
    RequestVote {
        /// The candidate's term.
        term: u64,
        /// The candidate (also the sender).
        candidate: NodeId,
        /// The candidate's last log epoch.
        last_epoch: Epoch,
        /// The term of the candidate's last log entry (0 if its log is empty).
        last_term: u64,
    },
    /// Voter → candidate: the answer to a `RequestVote`. A granted vote is sent only once
    /// the voter's record of it is durable.
    Vote {
        /// The voter's term.
        term: u64,
        /// Whether the vote is granted.
        granted: bool,
    },
}

impl PeerMessage {
    /// The sender's term.
    pub fn term(&self) -> u64 {
        match self {
            PeerMessage::AppendEntries { term, .. }
            | PeerMessage::AppendReply { term, .. }
            | PeerMessage::RequestVote { term, .. }
            | PeerMessage::Vote { term, .. } => *term,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::LOG_FORMAT_VERSION;
    use crate::codec::{decode, encode};

    #[test]
    fn append_entries_round_trips() {
        let msg = PeerMessage::AppendEntries {
            term: 3,
            leader: NodeId(2),
            prev_epoch: Epoch(4),
            prev_term: 2,
            entries: vec![LogEntry {
                term: 3,
                batch: Arc::new(Batch {
                    version: LOG_FORMAT_VERSION,
                    epoch: Epoch(5),
                    txns: Vec::new(),
                }),
            }],
            leader_commit: Epoch(4),
        };
        assert_eq!(decode::<PeerMessage>(&encode(&msg)).unwrap(), msg);
        assert_eq!(msg.term(), 3);
    }

    #[test]
    fn vote_encoding_is_pinned() {
        // The variant name is the tag and fields go in order; this notices a change.
        let bytes = encode(&PeerMessage::Vote {
            term: 7,
            granted: true,
        });
        assert_eq!(
            bytes,
            vec![0x81, 0xa4, b'V', b'o', b't', b'e', 0x92, 0x07, 0xc3]
        );
    }
}
