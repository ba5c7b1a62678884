//! A sequencer replica: Raft over the log of batches, sans-IO (DESIGN.md §7).
//!
//! ```text
//!  Peer{from, msg} ──┐                  ┌──▶ Persist(LogWrite)    make durable, in id order,
//!  Persisted{write} ─┤                  │                          then answer Persisted
//!  Submit(txn) ──────┼─▶  Replica  ─────┼──▶ Send{to, msg}        AppendEntries, votes, …
//!  Tick ─────────────┘   (Raft +        ├──▶ Committed(batch)     epoch order, every replica
//!                         batching)     ├──▶ Duplicate{…}         leader: already in its log
//!                                       └──▶ NotLeader{txn, …}    retry at that leader
//! ```
//!
//! The log index is the epoch: the entry at index `e` holds the batch of epoch `e`. Only
//! the leader batches: it collects submissions into the open epoch (the rule of
//! [`crate::Config`]), closes it into a new log entry, persists it and
//! replicates it. A batch is committed once it is durable on a majority and belongs to the
//! leader's term, or precedes such a batch (Raft §5.4.2); a new leader therefore appends an
//! empty batch for its term at once.
//!
//! # How a driver uses it
//!
//! - Call [`Replica::new`] with the durable state (fresh: `Durable::default()`), then
//!   [`Machine::handle`] for every input and perform the outputs in the order given. Deliver
//!   [`Input::Tick`] once [`Machine::next_deadline`] has passed (`Time::ZERO` before the
//!   first input: the replica sets its timers then).
//! - Apply each [`Output::Persist`] to the disk strictly in `id` order (see
//!   [`Durable::apply`]), fsync, and answer [`Input::Persisted`] with the highest id made
//!   durable; skipping ids is fine. Write ids restart at 1 in each incarnation: never deliver
//!   a `Persisted` from before a restart.
//! - On a crash, restart with [`Replica::new`] and exactly what is durable. Writes the
//!   replica was never told were persisted may or may not be in it; both are fine.
//! - [`Output::Committed`] comes in epoch order, each epoch once per incarnation. The commit
//!   epoch is volatile, so after a restart batches are emitted again from epoch 1: drivers
//!   de-duplicate by epoch (e.g. skip epochs their executors already applied).
//! - [`Output::Send`] messages may be lost, duplicated, delayed or reordered; the replica
//!   retransmits on its heartbeat.
//!
//! # Durability through the asynchronous write path
//!
//! Replies that Raft allows only after a durable write (a granted vote, a successful
//! `AppendReply`) and a candidate's `RequestVote`s are held until every write issued before
//! them is persisted; they wait in a bounded queue keyed by write id. The leader counts
//! itself toward an epoch's quorum only once its own write of that entry is persisted, and a
//! candidate counts its own vote only once the hard state recording it is persisted.
//!
//! # Peer input is untrusted
//!
//! Whatever arrives in [`Input::Peer`] may be forged or corrupt, even from a member with a
//! valid certificate (DESIGN.md §10c). Each message type has an `ignore_<msg>` guard that
//! names the reason ([`PeerDrop`]) to drop a message that contradicts the protocol (a
//! sender outside the group, a second leader in one term, entries that would rewrite a
//! committed epoch, an acknowledgement of entries never sent, …); the handler returns
//! early and [`ReplicaStats::peer_drops`] counts it, never a panic. The assertions that
//! remain check state the replica reached by itself. Raft tolerates crashes, not lies:
//! a member that forges *consistent* messages (a granted vote, a successful reply, entries
//! of a new term) can still break agreement, which is why the node authenticates peers.

use crate::batcher::Batcher;
use crate::{Config, DedupTable};
use detflow_protocol::replication::APPEND_ENTRIES_OVERHEAD_BYTES_MAX;
use detflow_protocol::replication::{SNAPSHOT_WINDOWS_PER_MESSAGE_LIMIT, WINDOW_ABOVE_LIMIT};
use detflow_protocol::{
    Batch, ClientId, ClientWindow, DetRng, ENTRIES_PER_MESSAGE_LIMIT, Epoch, LOG_FORMAT_VERSION,
    LogEntry, LogSnapshot, Machine, NodeId, PeerMessage, RequestSeq, Term, Time, Transaction,
    WriteId,
};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::sync::Arc;

/// AppendEntries messages carrying entries that may be unacknowledged per follower while
/// replicating; a follower being probed gets one at a time.
const INFLIGHT_MAX: usize = 4;
/// Messages waiting for a write to become durable; more are dropped (as a lossy network
/// would) and counted.
const DEFERRED_SENDS_MAX: usize = 1_024;
/// Writes issued but not yet persisted; a follower ignores new entries beyond this (the
/// leader retransmits them).
const PENDING_WRITES_MAX: usize = 4_096;
/// Peer messages of this term or above are dropped. Terms grow by one per election, so no
/// honest group gets near it; a forged term up there, once adopted, would leave too few
/// terms to campaign in (and overflow the next one).
const PEER_TERM_LIMIT: Term = Term(1 << 62);
/// A snapshot of this epoch or above is dropped as malformed: no group gets near it, and
/// adopting one would leave too few epochs to count on (and overflow the next one).
const SNAPSHOT_EPOCH_LIMIT: Epoch = Epoch(1 << 62);

/// Replica settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaConfig {
    /// This replica.
    pub id: NodeId,
    /// Every member of the group, this replica included: usually 1, 3 or 5.
    pub replicas: Vec<NodeId>,
    /// How the leader batches submissions into epochs.
    pub batching: Config,
    /// The least time a follower waits without hearing from a leader before it campaigns.
    pub election_timeout_min_us: u64,
    /// The most time it waits; each timeout is drawn uniformly from `[min, max]`.
    pub election_timeout_max_us: u64,
    /// How often the leader sends AppendEntries (heartbeats or retransmissions) to each
    /// follower; well below `election_timeout_min_us`.
    pub heartbeat_us: u64,
    /// The most entries one AppendEntries carries (at most [`ENTRIES_PER_MESSAGE_LIMIT`]).
    pub entries_per_message_max: usize,
    /// The most bytes one AppendEntries carries: its entries are cut where
    /// [`APPEND_ENTRIES_OVERHEAD_BYTES_MAX`] plus their [`LogEntry::encoded_bytes_max`]
    /// would exceed it, except that the first entry always goes, however large. Default
    /// 8 MiB: with `batching.batch_bytes_max` at 4 MiB and transactions of at most 1 MiB,
    /// every AppendEntries stays under the node's 16 MiB frame limit.
    pub append_bytes_max: usize,
    /// The leader keeps its epoch open (and finally refuses submissions) while this many
    /// appended epochs are not yet committed: bounds the log a leader without a quorum grows.
    pub uncommitted_epochs_max: u64,
    /// Whether a follower whose election timer fires first asks for pre-votes and
    /// campaigns only if a majority would vote for it (and has not heard from a leader
    /// within `election_timeout_min_us`). On by default.
    pub pre_vote: bool,
    /// The log is compacted only once it can drop at least this many epochs: each
    /// compaction copies the de-duplication table, so this amortizes it.
    pub compact_every_epochs: u64,
    /// The most client windows one InstallSnapshot chunk carries (at most
    /// [`SNAPSHOT_WINDOWS_PER_MESSAGE_LIMIT`]); chunks are also cut by `append_bytes_max`.
    pub snapshot_windows_per_message_max: usize,
}

impl ReplicaConfig {
    /// The default settings for replica `id` of the group `replicas`.
    pub fn new(id: NodeId, replicas: Vec<NodeId>) -> ReplicaConfig {
        ReplicaConfig {
            id,
            replicas,
            batching: Config::default(),
            election_timeout_min_us: 150_000,
            election_timeout_max_us: 300_000,
            heartbeat_us: 30_000,
            entries_per_message_max: 64,
            append_bytes_max: 8 << 20,
            uncommitted_epochs_max: 1_000,
            pre_vote: true,
            compact_every_epochs: 1_024,
            snapshot_windows_per_message_max: 4_096,
        }
    }

    fn check(&self) {
        assert!(
            self.replicas.contains(&self.id),
            "{} is not a member of its group",
            self.id
        );
        let members: BTreeSet<NodeId> = self.replicas.iter().copied().collect();
        assert_eq!(
            members.len(),
            self.replicas.len(),
            "duplicate group members"
        );
        assert!(
            self.election_timeout_min_us > 0,
            "election timeout must be positive"
        );
        assert!(
            self.election_timeout_min_us <= self.election_timeout_max_us,
            "election timeout range is empty"
        );
        assert!(
            self.heartbeat_us > 0 && self.heartbeat_us < self.election_timeout_min_us,
            "heartbeat must be positive and shorter than the election timeout"
        );
        assert!(
            (1..=ENTRIES_PER_MESSAGE_LIMIT).contains(&self.entries_per_message_max),
            "entries_per_message_max must be in 1..={ENTRIES_PER_MESSAGE_LIMIT}"
        );
        assert!(
            self.append_bytes_max > 0,
            "append_bytes_max must be positive"
        );
        assert!(
            self.uncommitted_epochs_max > 0,
            "uncommitted_epochs_max must be positive"
        );
        assert!(
            self.compact_every_epochs > 0,
            "compact_every_epochs must be positive"
        );
        assert!(
            (1..=SNAPSHOT_WINDOWS_PER_MESSAGE_LIMIT)
                .contains(&self.snapshot_windows_per_message_max),
            "snapshot_windows_per_message_max must be in 1..={SNAPSHOT_WINDOWS_PER_MESSAGE_LIMIT}"
        );
    }
}

/// What survives a crash: the hard state, the compacted prefix and the log. `Default` is
/// a fresh replica.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Durable {
    /// The latest term this replica has seen.
    pub term: Term,
    /// Whom it voted for in `term`, if anyone.
    pub voted_for: Option<NodeId>,
    /// The compacted prefix of the log; `None` (or epoch 0) when nothing was compacted.
    pub snapshot: Option<Arc<LogSnapshot>>,
    /// The entries after the snapshot; `log[i]` holds epoch `snapshot epoch + i + 1`.
    pub log: Vec<LogEntry>,
}

impl Durable {
    /// The last epoch the snapshot covers (0 without one).
    pub fn log_start(&self) -> Epoch {
        self.snapshot.as_ref().map_or(Epoch(0), |s| s.epoch)
    }

    /// The last epoch in the log (the snapshot's, when the log after it is empty).
    pub fn last_epoch(&self) -> Epoch {
        Epoch(self.log_start().0 + self.log.len() as u64)
    }

    /// Applies one write, as a disk does: the hard state, then the snapshot (dropping
    /// every entry it covers), then the truncation, then the appended entries. Drivers
    /// apply writes in id order.
    pub fn apply(&mut self, write: &LogWrite) {
        if let Some((term, voted_for)) = write.hard_state {
            self.term = term;
            self.voted_for = voted_for;
        }
        if let Some(snapshot) = &write.snapshot {
            let start = self.log_start();
            assert!(
                snapshot.epoch >= start,
                "a snapshot older than the log's start"
            );
            let covered = usize_of(snapshot.epoch.0 - start.0).min(self.log.len());
            self.log.drain(..covered);
            if self
                .log
                .first()
                .is_some_and(|e| e.epoch() != snapshot.epoch.next())
            {
                // The snapshot reaches past the log: nothing of the old log follows it.
                self.log.clear();
            }
            self.snapshot = Some(snapshot.clone());
        }
        if let Some(from) = write.truncate_from {
            let start = self.log_start();
            assert!(from > start, "truncation of a compacted epoch {from}");
            self.log.truncate(usize_of(from.0 - start.0 - 1));
        }
        for entry in &write.append {
            assert_eq!(
                entry.epoch(),
                self.last_epoch().next(),
                "a write appends a non-consecutive epoch"
            );
            self.log.push(entry.clone());
        }
    }

    /// Checks that this state is one this build can recover from: every batch in the
    /// current log format, epochs consecutive from the snapshot's, terms non-decreasing
    /// from the snapshot's and not above `term`.
    pub fn validate(&self) -> Result<(), DurableError> {
        let start = self.log_start();
        let mut prev_term = self.snapshot.as_ref().map_or(Term(0), |s| s.term);
        if prev_term > self.term {
            return Err(DurableError::Term {
                epoch: start,
                term: prev_term,
            });
        }
        for (i, entry) in self.log.iter().enumerate() {
            let epoch = Epoch(start.0 + i as u64 + 1);
            if entry.batch.version != LOG_FORMAT_VERSION {
                return Err(DurableError::Version {
                    epoch,
                    found: entry.batch.version,
                    supported: LOG_FORMAT_VERSION,
                });
            }
            if entry.epoch() != epoch {
                return Err(DurableError::Epoch {
                    index: epoch,
                    found: entry.epoch(),
                });
            }
            if entry.term < prev_term || entry.term > self.term {
                return Err(DurableError::Term {
                    epoch,
                    term: entry.term,
                });
            }
            prev_term = entry.term;
        }
        Ok(())
    }
}

/// Why a durable state cannot be recovered from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DurableError {
    /// The entry at `index` holds a batch of another epoch.
    Epoch {
        /// The log index.
        index: Epoch,
        /// The batch's epoch.
        found: Epoch,
    },
    /// An entry's term decreases along the log or exceeds the hard state's term.
    Term {
        /// The entry.
        epoch: Epoch,
        /// Its term.
        term: Term,
    },
    /// A batch is in a log format this build does not understand (DESIGN.md §4).
    Version {
        /// The entry.
        epoch: Epoch,
        /// The batch's format version.
        found: u16,
        /// The version this build reads and writes.
        supported: u16,
    },
}

impl fmt::Display for DurableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DurableError::Epoch { index, found } => {
                write!(f, "log entry {index} holds the batch of epoch {found}")
            }
            DurableError::Term { epoch, term } => {
                write!(f, "log entry {epoch} has out-of-order term {term}")
            }
            DurableError::Version {
                epoch,
                found,
                supported,
            } => write!(
                f,
                "log entry {epoch} is in log format version {found}; this build understands \
                 version {supported}"
            ),
        }
    }
}

impl std::error::Error for DurableError {}

/// A durable write the driver performs: the hard state (if it changed), then a snapshot,
/// then a truncation, then appended entries, atomically or in that order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogWrite {
    /// Increasing per replica incarnation, from 1; `Persisted { write }` names it.
    pub id: WriteId,
    /// The new `(term, voted_for)`, when it changed.
    pub hard_state: Option<(Term, Option<NodeId>)>,
    /// Replace every entry up to the snapshot's epoch by the snapshot first (compaction, or
    /// a snapshot installed from the leader); the log keeps only the entries after it.
    pub snapshot: Option<Arc<LogSnapshot>>,
    /// Then drop every entry with epoch `>=` this.
    pub truncate_from: Option<Epoch>,
    /// Entries to append, consecutive, after the truncation.
    pub append: Vec<LogEntry>,
}

/// An input to a replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// A message from another replica of the group.
    Peer {
        /// The sender.
        from: NodeId,
        /// The message.
        msg: PeerMessage,
    },
    /// Every write with id `<= write` is durable.
    Persisted {
        /// The highest durable write id of this incarnation.
        write: WriteId,
    },
    /// A transaction to order (from a gateway).
    Submit(Arc<Transaction>),
    /// Every replica of every partition has durably applied the epochs through `through`:
    /// the log may drop them (kept as a [`LogSnapshot`]), at most up to the commit epoch.
    Compact {
        /// The last epoch no executor needs any more.
        through: Epoch,
    },
    /// The entries of this incarnation's last [`Output::ArchiveAhead`] are durably
    /// archived: the compaction that drops them may proceed.
    Archived,
    /// Time passed: fires the election, heartbeat and epoch timers that are due.
    Tick,
}

/// An effect for the driver to perform.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// The batch is committed; emitted in epoch order by every replica as its commit epoch
    /// advances, each epoch once per incarnation (again from epoch 1 after a restart).
    Committed(Arc<Batch>),
    /// The leader already has `(client, seq)` in its log or open epoch; it is not appended
    /// again. It commits if and when that entry does; the gateway waits for the result or
    /// retries later.
    Duplicate {
        /// The session.
        client: ClientId,
        /// The call number.
        seq: RequestSeq,
        /// The gateway that submitted it.
        gateway: NodeId,
    },
    /// The transaction was not taken: this replica is not the leader (or stepped down with
    /// the transaction in its open epoch, or, as leader, is over its uncommitted-epoch
    /// bound, naming itself). Retry at `leader`, or find one if `None`.
    NotLeader {
        /// The transaction handed back.
        txn: Arc<Transaction>,
        /// The leader as far as this replica knows.
        leader: Option<NodeId>,
    },
    /// Write these committed entries, which the next [`Output::Persist`] drops from the
    /// log (a compaction, or a snapshot installed from the leader), to the archive, durably,
    /// before that write: what the log drops must outlive it. Consecutive epochs.
    Archive(Vec<LogEntry>),
    /// Write these committed entries to the archive, durably, in the background, then
    /// answer [`Input::Archived`]: a compaction drops them only then, so a large archive
    /// write never holds up the log. Consecutive epochs; one at a time per incarnation.
    ArchiveAhead(Vec<LogEntry>),
    /// Make this write durable, after every earlier one, then answer `Persisted`.
    Persist(LogWrite),
    /// Send a message to another replica.
    Send {
        /// The receiver.
        to: NodeId,
        /// The message.
        msg: PeerMessage,
    },
    /// This replica learned of a new leader (or became it): the gateway on the same node
    /// submits there from now on. It hears of elections as they happen, earlier than the
    /// hints a gateway collects from refused submissions.
    LeaderKnown(NodeId),
    /// The log now starts after `through`: the batches up to it are never emitted (again)
    /// by this incarnation. Emitted at start when the log was compacted, after each
    /// compaction, and when a snapshot from the leader replaced the log (then `Committed`
    /// continues after `through`, past batches this replica never emitted).
    Compacted {
        /// The last epoch of the snapshot.
        through: Epoch,
    },
}

/// Counters of a replica's work in this incarnation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplicaStats {
    /// Transactions put into an epoch as leader.
    pub sequenced: u64,
    /// Submissions refused as duplicates.
    pub duplicates: u64,
    /// Submissions handed back with `NotLeader`.
    pub not_leader: u64,
    /// Batches closed as leader (not counting the empty batch of each new term).
    pub batches: u64,
    /// Elections started.
    pub elections: u64,
    /// Pre-vote rounds started (each may lead to an election).
    pub pre_votes: u64,
    /// Terms in which this replica became leader.
    pub terms_led: u64,
    /// Times this replica stopped leading.
    pub step_downs: u64,
    /// Entries appended from a leader's AppendEntries.
    pub entries_received: u64,
    /// Entries removed because they conflicted with a leader's log.
    pub entries_truncated: u64,
    /// Peer messages dropped because they contradict the protocol (never a panic): the
    /// sum of `peer_drops`.
    pub peer_messages_dropped: u64,
    /// The same drops by reason.
    pub peer_drops: PeerDrops,
    /// Messages dropped because too many were waiting for a durable write.
    pub deferred_dropped: u64,
    /// Times this replica compacted its log.
    pub compactions: u64,
    /// Snapshot chunks sent as leader (probes included).
    pub snapshot_chunks_sent: u64,
    /// Snapshots installed from a leader.
    pub snapshots_installed: u64,
}

/// Why a peer message was dropped: what it contradicts (see the `ignore_<msg>` guards).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum PeerDrop {
    /// An AppendReply acknowledges entries this leader never sent that follower in this
    /// term (which includes any beyond its log).
    AckNotSent,
    /// An AppendEntries' `leader` or a RequestVote's `candidate` is not the sender.
    Impostor,
    /// An AppendEntries' entries are not consecutive from `prev_epoch + 1`, or their terms
    /// decrease from `prev_term` or exceed the message's term, or there are more than
    /// [`ENTRIES_PER_MESSAGE_LIMIT`], or `prev_epoch` 0 comes with a term other than 0.
    Malformed,
    /// An AppendEntries contradicts an epoch this replica knows is committed: its
    /// `prev_term` there or an entry's term differs from ours, so accepting it would drop
    /// committed entries.
    RewritesCommitted,
    /// An AppendEntries of the current term from a replica other than the term's leader
    /// (or sent to the leader itself): one term has one leader.
    SecondLeader,
    /// The sender is not a member of the group, or is this replica.
    Stranger,
    /// The message's term is at or above 2^62, a term no honest group reaches.
    TermTooHigh,
    /// An entry's batch is in a log format version this build refuses.
    Version,
}

impl PeerDrop {
    /// Every reason, in declaration order.
    pub const ALL: [PeerDrop; 8] = [
        PeerDrop::AckNotSent,
        PeerDrop::Impostor,
        PeerDrop::Malformed,
        PeerDrop::RewritesCommitted,
        PeerDrop::SecondLeader,
        PeerDrop::Stranger,
        PeerDrop::TermTooHigh,
        PeerDrop::Version,
    ];

    /// A stable snake_case name, e.g. for a metric label.
    pub fn name(self) -> &'static str {
        match self {
            PeerDrop::AckNotSent => "ack_not_sent",
            PeerDrop::Impostor => "impostor",
            PeerDrop::Malformed => "malformed",
            PeerDrop::RewritesCommitted => "rewrites_committed",
            PeerDrop::SecondLeader => "second_leader",
            PeerDrop::Stranger => "stranger",
            PeerDrop::TermTooHigh => "term_too_high",
            PeerDrop::Version => "version",
        }
    }
}

/// Dropped peer messages, one counter per [`PeerDrop`] reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerDrops {
    counts: [u64; PeerDrop::ALL.len()],
}

impl PeerDrops {
    /// Messages dropped for `reason`.
    pub fn get(&self, reason: PeerDrop) -> u64 {
        self.counts[reason as usize]
    }

    /// Every reason with its count, in [`PeerDrop::ALL`] order (zeros included), for
    /// export.
    pub fn by_reason(&self) -> impl Iterator<Item = (PeerDrop, u64)> + '_ {
        PeerDrop::ALL.into_iter().map(|r| (r, self.get(r)))
    }

    fn add(&mut self, reason: PeerDrop) {
        self.counts[reason as usize] += 1;
    }
}

/// Planted bugs, for proving that the simulator's checkers catch them. Test-only: every
/// field is false in production.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplicaBugs {
    /// The leader emits `Committed` for an entry as soon as it appends it locally, without
    /// waiting for a durable quorum.
    pub ack_before_quorum: bool,
    /// Recovery ignores the durable term and vote (taking the last log entry's term and no
    /// vote), so a restarted replica may vote twice in one term.
    pub forget_vote_on_restart: bool,
    /// A follower emits `Committed` for entries as soon as it appends them, ignoring the
    /// leader's commit epoch.
    pub commit_uncommitted: bool,
    /// The leader never reports `Duplicate` and appends resubmissions again.
    pub dedup_off: bool,
    /// The leader commits an entry of an earlier term once a majority holds it, without an
    /// entry of its own term above it (Raft's Figure 8).
    pub commit_earlier_term: bool,
    /// A voter sends its granted vote before the term and vote it records are durable.
    pub vote_before_durable: bool,
    /// A follower acknowledges entries before they are durable.
    pub ack_before_durable: bool,
    /// A follower drops every entry after `prev_epoch` when an AppendEntries carries
    /// entries, even ones that match (so a late or duplicated message shortens its log).
    pub truncate_on_append: bool,
    /// A voter grants its vote without checking that the candidate's log is up to date.
    pub vote_ignores_log: bool,
    /// A voter compares only the last epochs of the logs, not their last terms.
    pub vote_compares_length: bool,
    /// A follower takes the leader's commit epoch without bounding it by the entries the
    /// message proved it shares with the leader.
    pub commit_beyond_match: bool,
    /// A candidate counts a granted vote of an earlier term.
    pub stale_votes_count: bool,
    /// The leader counts its own entries toward a quorum before they are durable.
    pub leader_counts_unsynced: bool,
    /// A candidate asks for votes, and counts its own, before the term and vote it
    /// records are durable.
    pub campaign_before_durable: bool,
    /// A compaction's snapshot leaves out the de-duplication table, so a replica that
    /// installs it (or restarts from it) orders a retried call a second time.
    pub snapshot_without_dedup: bool,
    /// A compaction leaves the last epoch it drops out of the archive.
    pub archive_short: bool,
    /// A compaction drops its entries when it asks for them to be archived, without
    /// waiting for the archive to hold them.
    pub compact_before_archived: bool,
}

/// Each planted bug's name (as the simulator's `--bug` takes it) and its flag.
type BugFlag = (&'static str, fn(&mut ReplicaBugs) -> &mut bool);

const BUG_FLAGS: [BugFlag; 17] = [
    ("ack-before-quorum", |b| &mut b.ack_before_quorum),
    ("forget-vote", |b| &mut b.forget_vote_on_restart),
    ("commit-uncommitted", |b| &mut b.commit_uncommitted),
    ("dedup-off", |b| &mut b.dedup_off),
    ("commit-earlier-term", |b| &mut b.commit_earlier_term),
    ("vote-before-durable", |b| &mut b.vote_before_durable),
    ("ack-before-durable", |b| &mut b.ack_before_durable),
    ("truncate-on-append", |b| &mut b.truncate_on_append),
    ("vote-ignores-log", |b| &mut b.vote_ignores_log),
    ("vote-compares-length", |b| &mut b.vote_compares_length),
    ("commit-beyond-match", |b| &mut b.commit_beyond_match),
    ("stale-votes-count", |b| &mut b.stale_votes_count),
    ("leader-counts-unsynced", |b| &mut b.leader_counts_unsynced),
    ("campaign-before-durable", |b| {
        &mut b.campaign_before_durable
    }),
    ("snapshot-without-dedup", |b| &mut b.snapshot_without_dedup),
    ("archive-short", |b| &mut b.archive_short),
    ("compact-before-archived", |b| {
        &mut b.compact_before_archived
    }),
];

impl ReplicaBugs {
    /// Every planted bug alone, with its name, in a fixed order.
    pub fn each() -> impl Iterator<Item = (&'static str, ReplicaBugs)> {
        BUG_FLAGS.iter().map(|(name, flag)| {
            let mut bugs = ReplicaBugs::default();
            *flag(&mut bugs) = true;
            (*name, bugs)
        })
    }

    /// The bug called `name` alone, if there is one.
    pub fn named(name: &str) -> Option<ReplicaBugs> {
        ReplicaBugs::each().find_map(|(n, bugs)| (n == name).then_some(bugs))
    }

    /// The names of the bugs planted here.
    pub fn names(&self) -> Vec<&'static str> {
        let mut bugs = *self;
        BUG_FLAGS
            .iter()
            .filter(|(_, flag)| *flag(&mut bugs))
            .map(|(name, _)| *name)
            .collect()
    }
}

/// What the leader knows about one follower.
#[derive(Clone, Debug)]
struct Progress {
    /// The next epoch to send.
    next: Epoch,
    /// The highest epoch known durable on the follower and matching the leader's log.
    matched: Epoch,
    /// Whether the leader is still finding where the logs agree (one message at a time,
    /// `next` unchanged until an answer) rather than streaming.
    probing: bool,
    /// The highest epoch covered by any AppendEntries sent to this follower in this term:
    /// a successful reply can acknowledge no more.
    sent_max: Epoch,
    /// The last epoch covered by each unacknowledged AppendEntries and when it was sent,
    /// ascending; while the follower gets a snapshot, the one chunk in flight.
    inflight: VecDeque<(Epoch, Time)>,
    /// The snapshot being sent (the leader's, when it needs compacted entries) and how many
    /// of its windows the follower confirmed.
    snapshot_sent: (Epoch, u64),
}

/// A snapshot a follower is receiving in chunks.
#[derive(Clone, Debug)]
struct Incoming {
    epoch: Epoch,
    term: Term,
    total: u64,
    windows: Vec<ClientWindow>,
}

#[derive(Clone, Debug)]
struct LeaderState {
    followers: BTreeMap<NodeId, Progress>,
    /// Followers that answered since the last quorum check.
    heard: BTreeSet<NodeId>,
    heartbeat_deadline: Time,
    quorum_deadline: Time,
}

#[derive(Clone, Debug)]
enum Role {
    Follower,
    /// Asking for pre-votes for the next term (nothing changed yet).
    PreCandidate {
        votes: BTreeSet<NodeId>,
    },
    Candidate {
        votes: BTreeSet<NodeId>,
        /// The peers that answered in this term, granting or not.
        answered: BTreeSet<NodeId>,
        /// When the peers that have not answered are asked again: a lost RequestVote or
        /// Vote costs a heartbeat, not a new term (and a voter that restarted is asked
        /// again within the election).
        ask_again_at: Time,
        /// The write that records this candidacy's term and self-vote.
        write: WriteId,
    },
    Leader(LeaderState),
}

/// Whether a message may leave before the writes issued so far are durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum When {
    Now,
    AfterWrites,
}

/// A durable write under construction during one `handle`.
#[derive(Clone, Debug, Default)]
struct WriteBuf {
    /// Committed entries the write drops, for [`Output::Archive`].
    archive: Vec<LogEntry>,
    hard_state: bool,
    snapshot: Option<Arc<LogSnapshot>>,
    truncate_from: Option<Epoch>,
    append: Vec<LogEntry>,
}

/// One replica of the sequencer group. See the module documentation for the contract.
pub struct Replica {
    config: ReplicaConfig,
    rng: DetRng,
    bugs: ReplicaBugs,
    term: Term,
    voted_for: Option<NodeId>,
    leader: Option<NodeId>,
    /// When a leader of the current term was last heard from.
    leader_heard: Option<Time>,
    /// The leader last announced with `Output::LeaderKnown`.
    announced_leader: Option<NodeId>,
    role: Role,
    /// The compacted prefix: the log holds the epochs after `snapshot.epoch`, and every
    /// epoch up to it is committed.
    snapshot: Arc<LogSnapshot>,
    /// The de-duplication table as of `snapshot.epoch`.
    snapshot_dedup: DedupTable,
    /// A snapshot arriving from the leader in chunks.
    incoming: Option<Incoming>,
    /// The last epoch of the [`Output::ArchiveAhead`] not answered yet, this incarnation.
    archiving: Option<Epoch>,
    /// The furthest [`Input::Compact`] asked, to continue from once an archive is done.
    compact_asked: Epoch,
    /// The entries after the snapshot: `log[i]` holds epoch `snapshot.epoch + i + 1`.
    log: Vec<LogEntry>,
    /// `LogEntry::encoded_bytes_max` of each entry of `log`, computed once at append.
    entry_bytes: Vec<usize>,
    commit: Epoch,
    /// The last epoch emitted as `Committed`; equals `commit` unless a bug is planted.
    emitted: Epoch,
    dedup: DedupTable,
    batcher: Batcher,
    /// `None` until the first input, which starts the timers.
    election_deadline: Option<Time>,
    last_write: WriteId,
    persisted_write: WriteId,
    /// Issued writes not yet durable, with the log's last epoch after each (lowered when
    /// the log is truncated below it).
    pending_writes: VecDeque<(WriteId, Epoch)>,
    /// The highest epoch such that the whole log up to it is durable.
    persisted_epoch: Epoch,
    /// Messages waiting until the write with the given id is durable, in id order.
    deferred: VecDeque<(WriteId, NodeId, PeerMessage)>,
    write: WriteBuf,
    sends: Vec<(NodeId, PeerMessage, When)>,
    stats: ReplicaStats,
}

impl Replica {
    /// A replica starting fresh (`Durable::default()`) or recovering after a crash from
    /// exactly its durable state.
    ///
    /// Panics if the configuration is inconsistent or `durable` fails
    /// [`Durable::validate`] (e.g. a log format version this build does not understand): a
    /// node must refuse a log it cannot read.
    pub fn new(config: ReplicaConfig, durable: Durable, rng: DetRng) -> Replica {
        config.check();
        if let Err(e) = durable.validate() {
            panic!("refusing the durable state of replica {}: {e}", config.id);
        }
        let batcher = Batcher::new(config.batching);
        let persisted_epoch = durable.last_epoch();
        let snapshot = durable.snapshot.clone().unwrap_or_default();
        let snapshot_dedup = DedupTable::from_windows(&snapshot.windows);
        let start = snapshot.epoch;
        let entry_bytes = durable
            .log
            .iter()
            .map(LogEntry::encoded_bytes_max)
            .collect();
        let mut replica = Replica {
            config,
            rng,
            bugs: ReplicaBugs::default(),
            term: durable.term,
            voted_for: durable.voted_for,
            leader: None,
            leader_heard: None,
            announced_leader: None,
            role: Role::Follower,
            snapshot,
            snapshot_dedup,
            incoming: None,
            archiving: None,
            compact_asked: Epoch(0),
            log: durable.log,
            entry_bytes,
            // Only committed epochs are ever compacted.
            commit: start,
            emitted: start,
            dedup: DedupTable::default(),
            batcher,
            election_deadline: None,
            last_write: WriteId(0),
            persisted_write: WriteId(0),
            pending_writes: VecDeque::new(),
            persisted_epoch,
            deferred: VecDeque::new(),
            write: WriteBuf::default(),
            sends: Vec::new(),
            stats: ReplicaStats::default(),
        };
        replica.rebuild_dedup();
        replica
    }

    /// Plants bugs (test-only; all off by default). Set right after [`Replica::new`]:
    /// `forget_vote_on_restart` takes effect here, replacing the recovered hard state with
    /// what a naive recovery would use (the term of the last log entry, no vote).
    pub fn set_bugs(&mut self, bugs: ReplicaBugs) {
        self.bugs = bugs;
        if bugs.forget_vote_on_restart && self.election_deadline.is_none() {
            self.term = self.last_term();
            self.voted_for = None;
        }
    }

    /// This replica's id.
    pub fn id(&self) -> NodeId {
        self.config.id
    }

    /// Whether this replica leads its current term.
    pub fn is_leader(&self) -> bool {
        matches!(self.role, Role::Leader(_))
    }

    /// The leader of the current term as far as this replica knows.
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }

    /// The current term.
    pub fn term(&self) -> Term {
        self.term
    }

    /// The last committed epoch known here (volatile: the log's start after a restart
    /// until relearned).
    pub fn commit_epoch(&self) -> Epoch {
        self.commit
    }

    /// The last epoch compacted away: the log holds the epochs after it.
    pub fn log_start(&self) -> Epoch {
        self.snapshot.epoch
    }

    /// The snapshot of the compacted prefix (epoch 0 and empty when nothing was compacted).
    pub fn snapshot(&self) -> &Arc<LogSnapshot> {
        &self.snapshot
    }

    /// The log after its start, durable or not; `log()[i]` holds epoch
    /// `log_start() + i + 1`.
    pub fn log(&self) -> &[LogEntry] {
        &self.log
    }

    /// The entry of `epoch`, if the log holds it (not compacted, not beyond its end).
    pub fn entry(&self, epoch: Epoch) -> Option<&LogEntry> {
        let start = self.log_start();
        if epoch <= start {
            return None;
        }
        self.log.get(usize_of(epoch.0 - start.0 - 1))
    }

    /// Work counters of this incarnation.
    pub fn stats(&self) -> ReplicaStats {
        self.stats
    }

    fn last_epoch(&self) -> Epoch {
        Epoch(self.log_start().0 + self.log.len() as u64)
    }

    /// The term of the entry at `epoch`, which must be in the log or its start.
    fn term_at(&self, epoch: Epoch) -> Term {
        self.known_term(epoch)
            .unwrap_or_else(|| panic!("the term of epoch {epoch}, outside the log"))
    }

    /// The term of the entry at `epoch`: `None` when it was compacted away (it is
    /// committed, so any leader's entry there matches) or lies beyond the log.
    fn known_term(&self, epoch: Epoch) -> Option<Term> {
        if epoch == self.log_start() {
            return Some(self.snapshot.term);
        }
        self.entry(epoch).map(|e| e.term)
    }

    fn last_term(&self) -> Term {
        self.term_at(self.last_epoch())
    }

    fn majority(&self) -> usize {
        self.config.replicas.len() / 2 + 1
    }

    fn peers(&self) -> Vec<NodeId> {
        let me = self.config.id;
        self.config
            .replicas
            .iter()
            .copied()
            .filter(|p| *p != me)
            .collect()
    }

    fn election_timeout(&mut self, now: Time) -> Time {
        let us = self.rng.range(
            self.config.election_timeout_min_us,
            self.config.election_timeout_max_us,
        );
        now.plus_us(us)
    }

    /// Starts the timers at the first input; a group of one campaigns at once.
    fn start(&mut self, now: Time) {
        self.election_deadline = Some(self.election_timeout(now));
        if self.config.replicas.len() == 1 {
            self.campaign(now);
        }
    }

    // ---- peer messages -------------------------------------------------------------

    fn on_peer(&mut self, now: Time, from: NodeId, msg: PeerMessage, out: &mut Vec<Output>) {
        match msg {
            PeerMessage::AppendEntries {
                term,
                leader,
                prev_epoch,
                prev_term,
                entries,
                leader_commit,
            } => {
                let append = Append {
                    term,
                    leader,
                    prev_epoch,
                    prev_term,
                    entries,
                    leader_commit,
                };
                self.on_append_entries(now, from, append, out);
            }
            PeerMessage::AppendReply {
                term,
                success,
                match_epoch,
                conflict_term: _,
            } => self.on_append_reply(now, from, term, success, match_epoch, out),
            PeerMessage::RequestVote {
                term,
                candidate,
                last_epoch,
                last_term,
            }
            | PeerMessage::PreVote {
                term,
                candidate,
                last_epoch,
                last_term,
            } => {
                let pre = matches!(msg, PeerMessage::PreVote { .. });
                let ask = VoteRequest {
                    term,
                    candidate,
                    last_epoch,
                    last_term,
                };
                match pre {
                    true => self.on_pre_vote(now, from, ask),
                    false => self.on_request_vote(now, from, ask, out),
                }
            }
            PeerMessage::Vote { term, granted } => self.on_vote(now, from, term, granted, out),
            PeerMessage::PreVoteReply { term, granted } => {
                self.on_pre_vote_reply(now, from, term, granted, out)
            }
            PeerMessage::InstallSnapshot {
                term,
                leader,
                epoch,
                last_term,
                offset,
                total,
                windows,
            } => {
                let chunk = Chunk {
                    term,
                    leader,
                    epoch,
                    last_term,
                    offset,
                    total,
                    windows,
                };
                self.on_install_snapshot(now, from, chunk, out);
            }
            PeerMessage::SnapshotReply {
                term,
                epoch,
                received,
                installed,
            } => self.on_snapshot_reply(now, from, term, epoch, received, installed, out),
        }
    }

    /// Answers a pre-vote: yes if a vote in `ask.term` would be granted now by the log
    /// rule, the term is beyond ours, and no leader was heard from within the shortest
    /// election timeout (a healthy leader keeps its followers' pre-votes). Changes nothing.
    fn on_pre_vote(&mut self, now: Time, from: NodeId, ask: VoteRequest) {
        if let Some(reason) = self.ignore_request_vote(from, &ask) {
            self.drop_peer_message(reason);
            return;
        }
        let leader_alive = self.is_leader()
            || self
                .leader_heard
                .is_some_and(|t| now.since_us(t) < self.config.election_timeout_min_us);
        let granted = ask.term > self.term && self.is_up_to_date(&ask) && !leader_alive;
        let term = if granted { ask.term } else { self.term };
        let msg = PeerMessage::PreVoteReply { term, granted };
        self.sends.push((ask.candidate, msg, When::Now));
    }

    fn on_pre_vote_reply(
        &mut self,
        now: Time,
        from: NodeId,
        term: Term,
        granted: bool,
        out: &mut Vec<Output>,
    ) {
        if let Some(reason) = self.ignore_vote(from, term) {
            self.drop_peer_message(reason);
            return;
        }
        if !granted {
            // A voter in a later term: catch up, so the next round asks past it.
            if term > self.term {
                self.step_down(now, term, out);
            }
            return;
        }
        let majority = self.majority();
        let proposed = self.term.next();
        let Role::PreCandidate { votes } = &mut self.role else {
            return;
        };
        if term != proposed {
            return;
        }
        votes.insert(from);
        if votes.len() + 1 >= majority {
            self.campaign(now);
        }
    }

    /// Asks every peer whether it would vote for this replica in the next term.
    fn pre_campaign(&mut self, now: Time) {
        self.role = Role::PreCandidate {
            votes: BTreeSet::new(),
        };
        self.leader = None;
        self.election_deadline = Some(self.election_timeout(now));
        self.stats.pre_votes += 1;
        // Nothing changed, so nothing needs to be durable first.
        self.ask_votes(self.term.next(), true, When::Now);
    }

    /// Asks every peer for its vote (or pre-vote) in `term`.
    fn ask_votes(&mut self, term: Term, pre: bool, when: When) {
        let (candidate, last_epoch, last_term) =
            (self.config.id, self.last_epoch(), self.last_term());
        for peer in self.peers() {
            let msg = match pre {
                true => PeerMessage::PreVote {
                    term,
                    candidate,
                    last_epoch,
                    last_term,
                },
                false => PeerMessage::RequestVote {
                    term,
                    candidate,
                    last_epoch,
                    last_term,
                },
            };
            self.sends.push((peer, msg, when));
        }
    }

    /// Whether `ask`'s log is at least as up to date as this replica's (Raft §5.4.1).
    fn is_up_to_date(&self, ask: &VoteRequest) -> bool {
        if self.bugs.vote_ignores_log {
            return true;
        }
        if self.bugs.vote_compares_length {
            return ask.last_epoch >= self.last_epoch();
        }
        (ask.last_term, ask.last_epoch) >= (self.last_term(), self.last_epoch())
    }

    /// Counts a peer message that is dropped unread.
    fn drop_peer_message(&mut self, reason: PeerDrop) {
        self.stats.peer_messages_dropped += 1;
        self.stats.peer_drops.add(reason);
    }

    /// Why a message from `from` in `term` cannot be honoured whatever it says, if so.
    fn ignore_sender(&self, from: NodeId, term: Term) -> Option<PeerDrop> {
        if from == self.config.id || !self.config.replicas.contains(&from) {
            return Some(PeerDrop::Stranger);
        }
        if term >= PEER_TERM_LIMIT {
            return Some(PeerDrop::TermTooHigh);
        }
        None
    }

    /// Why this AppendEntries cannot be honoured, if so. Checked before it changes any
    /// state, so a dropped one does not even raise the term.
    fn ignore_append_entries(&self, from: NodeId, msg: &Append) -> Option<PeerDrop> {
        if let Some(reason) = self.ignore_sender(from, msg.term) {
            return Some(reason);
        }
        if msg.leader != from {
            return Some(PeerDrop::Impostor);
        }
        if let Some(reason) = check_entries(msg.term, msg.prev_epoch, msg.prev_term, &msg.entries) {
            return Some(reason);
        }
        if msg.term < self.term {
            // A stale leader: only its term is read, to tell it ours.
            return None;
        }
        if msg.term == self.term {
            // Leading this term means a majority voted for us in it; another leader would
            // need a voter to vote twice. A follower knows the one leader of its term.
            if self.is_leader() || self.leader.is_some_and(|l| l != from) {
                return Some(PeerDrop::SecondLeader);
            }
        }
        // A leader of this or a later term holds every committed entry (Raft's Leader
        // Completeness), so a message that disagrees with our committed prefix is not from
        // a leader; accepting it would truncate committed entries.
        let commit = self.commit;
        // (Compacted epochs are committed too, but their terms are gone: nothing to compare.)
        let differs = |epoch: Epoch, term: Term| self.known_term(epoch).is_some_and(|t| t != term);
        if msg.prev_epoch <= commit && differs(msg.prev_epoch, msg.prev_term) {
            return Some(PeerDrop::RewritesCommitted);
        }
        let rewrites = msg
            .entries
            .iter()
            .take_while(|e| e.epoch() <= commit)
            .any(|e| differs(e.epoch(), e.term));
        if rewrites {
            return Some(PeerDrop::RewritesCommitted);
        }
        None
    }

    fn on_append_entries(&mut self, now: Time, from: NodeId, msg: Append, out: &mut Vec<Output>) {
        if let Some(reason) = self.ignore_append_entries(from, &msg) {
            self.drop_peer_message(reason);
            return;
        }
        if msg.term < self.term {
            // A stale leader: tell it the current term so it steps down.
            self.send_append_reply(msg.leader, false, self.last_epoch(), None);
            return;
        }
        if msg.term > self.term {
            self.step_down(now, msg.term, out);
        }
        // `ignore_append_entries` dropped a second leader of an unchanged term, and
        // `step_down` left no leader of the new one.
        assert!(
            !self.is_leader(),
            "two leaders in term {}: {} and {}",
            self.term,
            self.config.id,
            msg.leader
        );
        assert!(
            self.leader.is_none_or(|l| l == msg.leader),
            "two leaders in term {}: {:?} and {}",
            self.term,
            self.leader,
            msg.leader
        );
        self.follow(now, msg.leader);
        // An epoch compacted away is committed, so it matches any leader's.
        let mismatch = self
            .known_term(msg.prev_epoch)
            .is_some_and(|t| t != msg.prev_term);
        if msg.prev_epoch > self.last_epoch() || mismatch {
            self.reject_append(msg.leader, msg.prev_epoch);
            return;
        }
        if !msg.entries.is_empty() && self.pending_writes.len() >= PENDING_WRITES_MAX {
            // The disk is far behind: take nothing now; the leader retransmits.
            return;
        }
        let match_epoch = Epoch(msg.prev_epoch.0 + msg.entries.len() as u64);
        let truncate_all = self.bugs.truncate_on_append && !msg.entries.is_empty();
        if truncate_all && msg.prev_epoch < self.last_epoch() && msg.prev_epoch >= self.commit {
            self.truncate(msg.prev_epoch.next());
        }
        self.accept_entries(msg.entries);
        // The leader's commit may be ahead of what this message proves we share with it
        // (a heartbeat to a lagging follower): commit only the matching prefix.
        let commit = match self.bugs.commit_beyond_match {
            true => msg.leader_commit.min(self.last_epoch()),
            false => msg.leader_commit.min(match_epoch),
        };
        if commit > self.commit {
            self.commit = commit;
        }
        let upto = if self.bugs.commit_uncommitted {
            self.commit.max(match_epoch)
        } else {
            self.commit
        };
        self.emit_committed(upto, out);
        self.send_append_reply(msg.leader, true, match_epoch, None);
    }

    /// Takes `leader` (of the current term) as the leader and restarts the election timer.
    fn follow(&mut self, now: Time, leader: NodeId) {
        self.role = Role::Follower;
        self.leader = Some(leader);
        self.leader_heard = Some(now);
        self.election_deadline = Some(self.election_timeout(now));
    }

    /// Answers an AppendEntries whose `prev_epoch` this log lacks or holds with another
    /// term, with a hint where the leader should retry.
    fn reject_append(&mut self, leader: NodeId, prev_epoch: Epoch) {
        if prev_epoch > self.last_epoch() {
            self.send_append_reply(leader, false, self.last_epoch(), None);
            return;
        }
        // `ignore_append_entries` dropped a mismatch at or below the commit epoch.
        assert!(
            prev_epoch > self.commit,
            "leader {leader} disagrees with committed epoch {prev_epoch}"
        );
        // Skip the whole run of the conflicting term; committed entries match anyway.
        let term_there = self.term_at(prev_epoch);
        let mut first = prev_epoch;
        while Epoch(first.0 - 1) > self.commit && self.term_at(Epoch(first.0 - 1)) == term_there {
            first = Epoch(first.0 - 1);
        }
        let hint = Epoch(first.0 - 1).max(self.commit);
        self.send_append_reply(leader, false, hint, Some(term_there));
    }

    /// Appends the leader's entries that follow a matching point, dropping any of ours that
    /// conflict with them (Raft: never truncate on a mere duplicate or shorter message).
    fn accept_entries(&mut self, entries: Vec<LogEntry>) {
        for entry in entries {
            let epoch = entry.epoch();
            if epoch <= self.log_start() {
                // Compacted: committed, so it is the leader's entry.
                continue;
            }
            if epoch <= self.last_epoch() {
                if self.term_at(epoch) == entry.term {
                    continue;
                }
                self.truncate(epoch);
            }
            self.append(entry);
            self.stats.entries_received += 1;
        }
    }

    /// Why this AppendReply cannot be honoured, if so.
    fn ignore_append_reply(
        &self,
        from: NodeId,
        term: Term,
        success: bool,
        match_epoch: Epoch,
    ) -> Option<PeerDrop> {
        if let Some(reason) = self.ignore_sender(from, term) {
            return Some(reason);
        }
        // Only a success in our own term moves `matched`; a failure is a hint the leader
        // clamps to what it knows, and other terms are handled by the term rules.
        let Role::Leader(leader) = &self.role else {
            return None;
        };
        if !success || term != self.term {
            return None;
        }
        // A follower confirms exactly what one of our messages of this term covered.
        let sent_max = leader.followers.get(&from).map_or(Epoch(0), |p| p.sent_max);
        if match_epoch > sent_max {
            return Some(PeerDrop::AckNotSent);
        }
        None
    }

    fn on_append_reply(
        &mut self,
        now: Time,
        from: NodeId,
        term: Term,
        success: bool,
        match_epoch: Epoch,
        out: &mut Vec<Output>,
    ) {
        if let Some(reason) = self.ignore_append_reply(from, term, success, match_epoch) {
            self.drop_peer_message(reason);
            return;
        }
        if term > self.term {
            self.step_down(now, term, out);
            return;
        }
        let last = self.last_epoch();
        let Role::Leader(leader) = &mut self.role else {
            return;
        };
        if term < self.term {
            return;
        }
        leader.heard.insert(from);
        let Some(p) = leader.followers.get_mut(&from) else {
            return;
        };
        if success {
            // `ignore_append_reply` bounded it by what we sent, which our log holds.
            assert!(
                match_epoch <= p.sent_max && p.sent_max <= last,
                "{from} acknowledged epoch {match_epoch} beyond {} sent and {last} held",
                p.sent_max
            );
            p.inflight.retain(|(e, _)| *e > match_epoch);
            p.matched = p.matched.max(match_epoch);
            p.probing = false;
            p.next = p.next.max(p.matched.next());
            self.advance_commit(now, out);
        } else {
            let next = Epoch(match_epoch.0.saturating_add(1))
                .min(p.next)
                .max(p.matched.next());
            if p.probing && next == p.next && !p.inflight.is_empty() {
                // A probe at this position is already on its way.
                return;
            }
            p.next = next;
            p.probing = true;
            p.inflight.clear();
        }
        self.send_append_entries(now, from, false);
    }

    /// Why this RequestVote cannot be honoured, if so.
    fn ignore_request_vote(&self, from: NodeId, ask: &VoteRequest) -> Option<PeerDrop> {
        if let Some(reason) = self.ignore_sender(from, ask.term) {
            return Some(reason);
        }
        if ask.candidate != from {
            // A vote for `candidate` must be asked by `candidate`.
            return Some(PeerDrop::Impostor);
        }
        None
    }

    fn on_request_vote(
        &mut self,
        now: Time,
        from: NodeId,
        ask: VoteRequest,
        out: &mut Vec<Output>,
    ) {
        if let Some(reason) = self.ignore_request_vote(from, &ask) {
            self.drop_peer_message(reason);
            return;
        }
        let (term, candidate) = (ask.term, ask.candidate);
        if term < self.term {
            self.send_vote(candidate, false);
            return;
        }
        if term > self.term {
            self.step_down(now, term, out);
        }
        let up_to_date = self.is_up_to_date(&ask);
        let free = self.voted_for.is_none_or(|v| v == candidate);
        let granted = up_to_date && free;
        if granted && self.voted_for.is_none() {
            self.voted_for = Some(candidate);
            self.write.hard_state = true;
        }
        if granted {
            self.election_deadline = Some(self.election_timeout(now));
        }
        self.send_vote(candidate, granted);
    }

    /// Why this Vote cannot be honoured, if so. A vote names no one but its sender, so only
    /// the sender and the term are checked.
    fn ignore_vote(&self, from: NodeId, term: Term) -> Option<PeerDrop> {
        self.ignore_sender(from, term)
    }

    fn on_vote(
        &mut self,
        now: Time,
        from: NodeId,
        term: Term,
        granted: bool,
        out: &mut Vec<Output>,
    ) {
        if let Some(reason) = self.ignore_vote(from, term) {
            self.drop_peer_message(reason);
            return;
        }
        if term > self.term {
            self.step_down(now, term, out);
            return;
        }
        let Role::Candidate {
            votes, answered, ..
        } = &mut self.role
        else {
            return;
        };
        if term == self.term {
            answered.insert(from);
        }
        let counts = term == self.term || self.bugs.stale_votes_count;
        if granted && counts {
            votes.insert(from);
            self.maybe_win(now, out);
        }
    }

    // ---- local inputs --------------------------------------------------------------

    fn on_persisted(&mut self, now: Time, write: WriteId, out: &mut Vec<Output>) {
        assert!(
            write <= self.last_write,
            "Persisted({write}) but the last write requested is {}",
            self.last_write
        );
        if write <= self.persisted_write {
            return;
        }
        self.persisted_write = write;
        while let Some(&(id, log_end)) = self.pending_writes.front() {
            if id > write {
                break;
            }
            self.pending_writes.pop_front();
            assert!(
                log_end >= self.persisted_epoch,
                "durable log end moved backwards"
            );
            self.persisted_epoch = log_end;
        }
        while let Some((wait, _, _)) = self.deferred.front() {
            if *wait > write {
                break;
            }
            if let Some((_, to, msg)) = self.deferred.pop_front() {
                out.push(Output::Send { to, msg });
            }
        }
        match self.role {
            Role::Candidate { .. } => self.maybe_win(now, out),
            Role::Leader(_) => self.advance_commit(now, out),
            Role::Follower | Role::PreCandidate { .. } => {}
        }
    }

    fn on_submit(&mut self, now: Time, txn: Arc<Transaction>, out: &mut Vec<Output>) {
        if !self.is_leader() {
            self.stats.not_leader += 1;
            out.push(Output::NotLeader {
                txn,
                leader: self.leader,
            });
            return;
        }
        if self.batcher.is_full() {
            // Over the uncommitted-epoch bound with a full epoch: push back on the client.
            self.stats.not_leader += 1;
            out.push(Output::NotLeader {
                txn,
                leader: Some(self.config.id),
            });
            return;
        }
        if !self.dedup.insert(txn.client, txn.seq) && !self.bugs.dedup_off {
            self.stats.duplicates += 1;
            out.push(Output::Duplicate {
                client: txn.client,
                seq: txn.seq,
                gateway: txn.gateway,
            });
            return;
        }
        self.batcher.push(now, txn);
        self.stats.sequenced += 1;
        self.maybe_close(now, out);
    }

    fn on_tick(&mut self, now: Time, out: &mut Vec<Output>) {
        let Role::Leader(leader) = &self.role else {
            if self.election_deadline.is_some_and(|d| now >= d) {
                match self.config.pre_vote && self.config.replicas.len() > 1 {
                    true => self.pre_campaign(now),
                    false => self.campaign(now),
                }
            } else {
                self.maybe_ask_again(now);
            }
            return;
        };
        let (heartbeat_due, quorum_due) = (
            now >= leader.heartbeat_deadline,
            now >= leader.quorum_deadline,
        );
        if quorum_due && !self.check_quorum(now) {
            self.stats.step_downs += 1;
            self.abdicate(now, out);
            return;
        }
        if heartbeat_due {
            self.send_heartbeats(now);
        }
        self.maybe_close(now, out);
    }

    // ---- elections -----------------------------------------------------------------

    fn campaign(&mut self, now: Time) {
        assert!(!self.is_leader(), "a leader campaigns");
        self.term = self.term.next();
        self.voted_for = Some(self.config.id);
        self.write.hard_state = true;
        self.leader = None;
        // `flush` issues the write holding this term and self-vote with the next id.
        self.role = Role::Candidate {
            votes: BTreeSet::new(),
            answered: BTreeSet::new(),
            ask_again_at: now.plus_us(self.config.heartbeat_us),
            write: WriteId(self.last_write.0 + 1),
        };
        self.election_deadline = Some(self.election_timeout(now));
        self.stats.elections += 1;
        let when = self.campaign_when();
        self.ask_votes(self.term, false, when);
    }

    /// Asks the peers that have not answered this candidacy again, once a heartbeat passed
    /// since the last ask (Raft retries RPCs that get no response).
    fn maybe_ask_again(&mut self, now: Time) {
        let due = matches!(self.role, Role::Candidate { ask_again_at, .. } if now >= ask_again_at);
        if !due {
            return;
        }
        let peers = self.peers();
        let (term, candidate, last_epoch, last_term) = (
            self.term,
            self.config.id,
            self.last_epoch(),
            self.last_term(),
        );
        let heartbeat_us = self.config.heartbeat_us;
        let when = self.campaign_when();
        let Role::Candidate {
            answered,
            ask_again_at,
            ..
        } = &mut self.role
        else {
            return;
        };
        *ask_again_at = now.plus_us(heartbeat_us);
        for peer in peers.into_iter().filter(|p| !answered.contains(p)) {
            let msg = PeerMessage::RequestVote {
                term,
                candidate,
                last_epoch,
                last_term,
            };
            self.sends.push((peer, msg, when));
        }
    }

    /// When a candidate's RequestVotes may leave: after its term and self-vote are durable.
    fn campaign_when(&self) -> When {
        match self.bugs.campaign_before_durable {
            true => When::Now,
            false => When::AfterWrites,
        }
    }

    fn maybe_win(&mut self, now: Time, out: &mut Vec<Output>) {
        let Role::Candidate { votes, write, .. } = &self.role else {
            return;
        };
        // Our own vote counts only once it is durable.
        let own_vote_durable = self.persisted_write >= *write || self.bugs.campaign_before_durable;
        if own_vote_durable && votes.len() + 1 >= self.majority() {
            self.become_leader(now, out);
        }
    }

    fn become_leader(&mut self, now: Time, out: &mut Vec<Output>) {
        let next = self.last_epoch().next();
        let followers = self
            .peers()
            .into_iter()
            .map(|p| {
                let progress = Progress {
                    next,
                    matched: Epoch(0),
                    probing: true,
                    sent_max: Epoch(0),
                    inflight: VecDeque::new(),
                    snapshot_sent: (Epoch(0), 0),
                };
                (p, progress)
            })
            .collect();
        self.role = Role::Leader(LeaderState {
            followers,
            heard: BTreeSet::new(),
            heartbeat_deadline: now.plus_us(self.config.heartbeat_us),
            quorum_deadline: now.plus_us(self.config.election_timeout_max_us),
        });
        self.leader = Some(self.config.id);
        self.stats.terms_led += 1;
        // An entry of our own term lets the entries of earlier terms commit (Raft §5.4.2).
        let batch = Arc::new(Batch {
            version: LOG_FORMAT_VERSION,
            epoch: next,
            txns: Vec::new(),
        });
        self.append_as_leader(now, batch, out);
    }

    /// Adopts a higher `term` (forgetting the vote) and, if leading or campaigning, becomes
    /// a follower. The hard state is written with the next write.
    fn step_down(&mut self, now: Time, term: Term, out: &mut Vec<Output>) {
        assert!(
            term > self.term,
            "step_down to term {term} from {}",
            self.term
        );
        self.term = term;
        self.voted_for = None;
        self.write.hard_state = true;
        if self.is_leader() {
            self.stats.step_downs += 1;
            self.abdicate(now, out);
        }
        self.role = Role::Follower;
        self.leader = None;
    }

    /// Stops leading: hands back the open epoch's transactions and restarts the election
    /// timer.
    fn abdicate(&mut self, now: Time, out: &mut Vec<Output>) {
        self.role = Role::Follower;
        self.leader = None;
        self.election_deadline = Some(self.election_timeout(now));
        let txns = self.batcher.abandon();
        if !txns.is_empty() {
            self.rebuild_dedup();
        }
        for txn in txns {
            self.stats.not_leader += 1;
            out.push(Output::NotLeader { txn, leader: None });
        }
    }

    /// Whether a majority (counting this leader) answered since the last check; then
    /// starts the next check period.
    fn check_quorum(&mut self, now: Time) -> bool {
        let majority = self.majority();
        let period = self.config.election_timeout_max_us;
        let Role::Leader(leader) = &mut self.role else {
            return false;
        };
        let ok = leader.heard.len() + 1 >= majority;
        leader.heard.clear();
        leader.quorum_deadline = now.plus_us(period);
        ok
    }

    // ---- the leader's log ----------------------------------------------------------

    /// Whether every epoch in the log is committed: the next one may close early.
    fn log_idle(&self) -> bool {
        self.commit >= self.last_epoch()
    }

    fn pipeline_open(&self) -> bool {
        self.last_epoch().0 - self.commit.0 < self.config.uncommitted_epochs_max
    }

    fn maybe_close(&mut self, now: Time, out: &mut Vec<Output>) {
        if self.is_leader()
            && !self.batcher.is_empty()
            && self.batcher.is_due(now, self.log_idle())
            && self.pipeline_open()
        {
            let batch = self.batcher.close(self.last_epoch().next());
            self.stats.batches += 1;
            self.append_as_leader(now, batch, out);
        }
    }

    fn append_as_leader(&mut self, now: Time, batch: Arc<Batch>, out: &mut Vec<Output>) {
        assert!(self.is_leader(), "only the leader appends batches");
        self.append(LogEntry {
            term: self.term,
            batch,
        });
        if self.bugs.ack_before_quorum {
            self.emit_committed(self.last_epoch(), out);
        }
        for peer in self.peers() {
            self.send_append_entries(now, peer, false);
        }
    }

    fn advance_commit(&mut self, now: Time, out: &mut Vec<Output>) {
        let Role::Leader(leader) = &self.role else {
            return;
        };
        let mut matched: Vec<Epoch> = leader.followers.values().map(|p| p.matched).collect();
        matched.push(match self.bugs.leader_counts_unsynced {
            true => self.last_epoch(),
            false => self.persisted_epoch,
        });
        matched.sort_unstable_by(|a, b| b.cmp(a));
        let quorum = matched[self.majority() - 1];
        let own_term = |r: &Replica| r.term_at(quorum) == r.term || r.bugs.commit_earlier_term;
        if quorum > self.commit && own_term(self) {
            self.commit = quorum;
            let upto = if self.bugs.ack_before_quorum {
                self.commit.max(self.emitted)
            } else {
                self.commit
            };
            self.emit_committed(upto, out);
            self.maybe_close(now, out);
        }
    }

    fn send_heartbeats(&mut self, now: Time) {
        let heartbeat_us = self.config.heartbeat_us;
        // A follower catching up persists (and syncs) what it gets before it answers, so
        // an answer may take longer than a heartbeat; re-sending after one heartbeat made a
        // lagging follower receive the same entries over and over and never catch up.
        let lost_after_us = self.config.election_timeout_min_us.max(heartbeat_us);
        let Role::Leader(leader) = &mut self.role else {
            return;
        };
        leader.heartbeat_deadline = now.plus_us(heartbeat_us);
        for p in leader.followers.values_mut() {
            let oldest = p.inflight.front().map(|(_, sent)| *sent);
            if oldest.is_some_and(|sent| now.since_us(sent) >= lost_after_us) {
                // Unanswered for an election timeout: presume it (and what followed) lost.
                p.inflight.clear();
                if !p.probing {
                    p.next = p.matched.next();
                }
            }
        }
        for peer in self.peers() {
            self.send_append_entries(now, peer, true);
        }
    }

    /// Sends `peer` the entries it needs next if its window allows, or else, when
    /// `heartbeat`, an empty AppendEntries at a point the follower is known to hold. A
    /// follower that needs compacted entries gets the snapshot instead.
    fn send_append_entries(&mut self, now: Time, peer: NodeId, heartbeat: bool) {
        let last = self.last_epoch();
        let start = self.log_start();
        let per_message = if self.rng.buggify() {
            1
        } else {
            self.config.entries_per_message_max
        };
        let bytes_max = self.config.append_bytes_max;
        let Role::Leader(leader) = &mut self.role else {
            return;
        };
        let Some(p) = leader.followers.get_mut(&peer) else {
            return;
        };
        if p.next <= start {
            self.send_snapshot_chunk(now, peer, heartbeat);
            return;
        }
        let window = if p.probing { 1 } else { INFLIGHT_MAX };
        let has_room = p.inflight.len() < window;
        let (prev_epoch, count) = if has_room && (p.next <= last || p.probing) {
            let count_max = (last.0 + 1 - p.next.0).min(per_message as u64);
            let first = usize_of(p.next.0 - start.0 - 1);
            let sizes = &self.entry_bytes[first..first + usize_of(count_max)];
            // Bounded by bytes too, so the message fits one frame.
            let count = entries_within(sizes, bytes_max) as u64;
            let covered = Epoch(p.next.0 - 1 + count);
            p.inflight.push_back((covered, now));
            let prev = Epoch(p.next.0 - 1);
            if !p.probing {
                p.next = covered.next();
            }
            (prev, count)
        } else if heartbeat {
            // At a point the follower holds, and that the log still holds.
            (p.matched.max(start), 0)
        } else {
            return;
        };
        p.sent_max = p.sent_max.max(Epoch(prev_epoch.0 + count));
        let from = usize_of(prev_epoch.0 - start.0);
        let entries = self.log[from..from + usize_of(count)].to_vec();
        let msg = PeerMessage::AppendEntries {
            term: self.term,
            leader: self.config.id,
            prev_epoch,
            prev_term: self.term_at(prev_epoch),
            entries,
            leader_commit: self.commit,
        };
        self.sends.push((peer, msg, When::Now));
    }

    /// Sends `peer`, which needs compacted entries, the next chunk of the snapshot (one
    /// at a time), or on a `heartbeat` while a chunk is in flight an empty one: it keeps
    /// the follower from campaigning and asks where the transfer stands.
    fn send_snapshot_chunk(&mut self, now: Time, peer: NodeId, heartbeat: bool) {
        let snapshot = self.snapshot.clone();
        let per_message = if self.rng.buggify() {
            1
        } else {
            self.config.snapshot_windows_per_message_max
        };
        let bytes_max = self.config.append_bytes_max;
        let Role::Leader(leader) = &mut self.role else {
            return;
        };
        let Some(p) = leader.followers.get_mut(&peer) else {
            return;
        };
        if p.snapshot_sent.0 != snapshot.epoch {
            // A new snapshot (this leader compacted again): start it over.
            p.snapshot_sent = (snapshot.epoch, 0);
            p.inflight.clear();
        }
        let offset = p.snapshot_sent.1.min(snapshot.windows.len() as u64);
        let windows = if p.inflight.is_empty() {
            let rest = &snapshot.windows[usize_of(offset)..];
            let mut bytes = APPEND_ENTRIES_OVERHEAD_BYTES_MAX;
            let count = rest
                .iter()
                .take(per_message)
                .take_while(|w| {
                    bytes = bytes.saturating_add(w.encoded_bytes_max());
                    bytes <= bytes_max
                })
                .count()
                .max(rest.len().min(1));
            p.inflight.push_back((snapshot.epoch, now));
            rest[..count].to_vec()
        } else if heartbeat {
            Vec::new()
        } else {
            return;
        };
        self.stats.snapshot_chunks_sent += 1;
        let msg = PeerMessage::InstallSnapshot {
            term: self.term,
            leader: self.config.id,
            epoch: snapshot.epoch,
            last_term: snapshot.term,
            offset,
            total: snapshot.windows.len() as u64,
            windows,
        };
        self.sends.push((peer, msg, When::Now));
    }

    // ---- compaction and snapshots --------------------------------------------------

    /// Asks for the committed entries through `through` (at most the commit epoch) to be
    /// archived, once they are at least `compact_every_epochs` past the log's start; the
    /// log drops them when the archive has them ([`Replica::on_archived`]).
    fn compact(&mut self, through: Epoch, out: &mut Vec<Output>) {
        self.compact_asked = self.compact_asked.max(through);
        if self.archiving.is_some() {
            return;
        }
        let start = self.log_start();
        let through = self.compact_asked.min(self.commit);
        if through.0 < start.0.saturating_add(self.config.compact_every_epochs) {
            return;
        }
        let dropped = usize_of(through.0 - start.0);
        let archived = dropped - usize::from(self.bugs.archive_short);
        out.push(Output::ArchiveAhead(self.log[..archived].to_vec()));
        self.archiving = Some(through);
        if self.bugs.compact_before_archived {
            self.drop_through(through, out);
        }
    }

    /// The archive holds the entries asked for: drops from the log what of them it still
    /// holds, keeping what they mean for de-duplication as the new snapshot; then asks for
    /// the next archive if a compaction asked further meanwhile.
    fn on_archived(&mut self, out: &mut Vec<Output>) {
        let Some(through) = self.archiving.take() else {
            return;
        };
        let start = self.log_start();
        // An installed snapshot may have replaced these entries meanwhile.
        if through > start {
            // Committed when asked, and a commit never goes back.
            assert!(through <= self.commit, "archived past the commit epoch");
            self.drop_through(through, out);
        }
        self.compact(self.compact_asked, out);
    }

    /// Drops the committed entries through `through` from the log, keeping what they mean
    /// for de-duplication as the new snapshot.
    fn drop_through(&mut self, through: Epoch, out: &mut Vec<Output>) {
        let dropped = usize_of(through.0 - self.log_start().0);
        for txn in self.log[..dropped].iter().flat_map(|e| &e.batch.txns) {
            self.snapshot_dedup.insert(txn.client, txn.seq);
        }
        let windows = match self.bugs.snapshot_without_dedup {
            true => Vec::new(),
            false => self.snapshot_dedup.windows(),
        };
        let snapshot = Arc::new(LogSnapshot {
            epoch: through,
            term: self.term_at(through),
            windows,
        });
        if self.bugs.snapshot_without_dedup {
            self.snapshot_dedup = DedupTable::default();
        }
        self.log.drain(..dropped);
        self.entry_bytes.drain(..dropped);
        self.snapshot = snapshot.clone();
        self.write.snapshot = Some(snapshot);
        self.stats.compactions += 1;
        out.push(Output::Compacted { through });
    }

    /// Why this InstallSnapshot chunk cannot be honoured, if so.
    fn ignore_install_snapshot(&self, from: NodeId, chunk: &Chunk) -> Option<PeerDrop> {
        if let Some(reason) = self.ignore_sender(from, chunk.term) {
            return Some(reason);
        }
        if chunk.leader != from {
            return Some(PeerDrop::Impostor);
        }
        let end = chunk.offset.checked_add(chunk.windows.len() as u64);
        let malformed = chunk.epoch == Epoch(0)
            || chunk.epoch >= SNAPSHOT_EPOCH_LIMIT
            || chunk.last_term > chunk.term
            || chunk.windows.len() > SNAPSHOT_WINDOWS_PER_MESSAGE_LIMIT
            || end.is_none_or(|end| end > chunk.total)
            || chunk
                .windows
                .iter()
                .any(|w| w.above.len() > WINDOW_ABOVE_LIMIT);
        if malformed {
            return Some(PeerDrop::Malformed);
        }
        if chunk.term < self.term {
            return None;
        }
        if chunk.term == self.term && (self.is_leader() || self.leader.is_some_and(|l| l != from)) {
            return Some(PeerDrop::SecondLeader);
        }
        // A snapshot is a committed prefix: it cannot disagree with ours.
        let differs = self
            .known_term(chunk.epoch)
            .is_some_and(|t| t != chunk.last_term);
        if chunk.epoch <= self.commit && differs {
            return Some(PeerDrop::RewritesCommitted);
        }
        None
    }

    /// A follower takes a chunk of the leader's snapshot; once it holds all of it, the
    /// snapshot replaces its log (or only the prefix it covers, if the log agrees there).
    fn on_install_snapshot(
        &mut self,
        now: Time,
        from: NodeId,
        chunk: Chunk,
        out: &mut Vec<Output>,
    ) {
        if let Some(reason) = self.ignore_install_snapshot(from, &chunk) {
            self.drop_peer_message(reason);
            return;
        }
        if chunk.term < self.term {
            self.send_snapshot_reply(chunk.leader, chunk.epoch, 0, false);
            return;
        }
        if chunk.term > self.term {
            self.step_down(now, chunk.term, out);
        }
        self.follow(now, chunk.leader);
        let holds_epoch = self.known_term(chunk.epoch) == Some(chunk.last_term);
        if chunk.epoch <= self.commit || holds_epoch {
            // This log already holds the snapshot's prefix (and it is the leader's, by Log
            // Matching); what it lacks comes in AppendEntries from here.
            if chunk.epoch > self.commit {
                self.commit = chunk.epoch;
                self.emit_committed(self.commit, out);
            }
            self.send_snapshot_reply(chunk.leader, chunk.epoch, chunk.total, true);
            return;
        }
        let same = self.incoming.as_ref().is_some_and(|i| {
            (i.epoch, i.term, i.total) == (chunk.epoch, chunk.last_term, chunk.total)
        });
        if !same {
            self.incoming = Some(Incoming {
                epoch: chunk.epoch,
                term: chunk.last_term,
                total: chunk.total,
                windows: Vec::new(),
            });
        }
        let incoming = self.incoming.as_mut().expect("set above");
        if chunk.offset == incoming.windows.len() as u64 {
            incoming.windows.extend(chunk.windows);
        }
        let received = incoming.windows.len() as u64;
        if received < incoming.total {
            self.send_snapshot_reply(chunk.leader, chunk.epoch, received, false);
            return;
        }
        let incoming = self.incoming.take().expect("set above");
        self.install(incoming, out);
        self.send_snapshot_reply(chunk.leader, chunk.epoch, received, true);
    }

    /// Replaces the whole log by a snapshot of the leader's committed prefix, which reaches
    /// past this log's commit epoch.
    fn install(&mut self, incoming: Incoming, out: &mut Vec<Output>) {
        let epoch = incoming.epoch;
        assert!(
            epoch > self.commit,
            "installing a snapshot within the commit"
        );
        let snapshot = Arc::new(LogSnapshot {
            epoch,
            term: incoming.term,
            windows: incoming.windows,
        });
        self.stats.entries_truncated += self.last_epoch().0.saturating_sub(epoch.0);
        // What this replica held that is committed goes to its archive; the rest may differ
        // from the leader's and is dropped.
        let committed = usize_of(self.commit.0 - self.log_start().0);
        self.write
            .archive
            .extend(self.log.drain(..).take(committed));
        self.log.clear();
        self.entry_bytes.clear();
        self.snapshot_dedup = DedupTable::from_windows(&snapshot.windows);
        self.snapshot = snapshot.clone();
        self.write.append.clear();
        self.write.snapshot = Some(snapshot);
        self.write.truncate_from = Some(epoch.next());
        for (_, log_end) in &mut self.pending_writes {
            *log_end = (*log_end).min(epoch);
        }
        self.persisted_epoch = self.persisted_epoch.min(epoch);
        self.rebuild_dedup();
        self.commit = epoch;
        self.emitted = epoch;
        self.stats.snapshots_installed += 1;
        out.push(Output::Compacted { through: epoch });
    }

    fn send_snapshot_reply(&mut self, to: NodeId, epoch: Epoch, received: u64, installed: bool) {
        let msg = PeerMessage::SnapshotReply {
            term: self.term,
            epoch,
            received,
            installed,
        };
        // An installed snapshot is confirmed only once durable, as appended entries are.
        let when = match installed {
            true => When::AfterWrites,
            false => When::Now,
        };
        self.sends.push((to, msg, when));
    }

    /// Why this SnapshotReply cannot be honoured, if so.
    fn ignore_snapshot_reply(&self, from: NodeId, term: Term, epoch: Epoch) -> Option<PeerDrop> {
        if let Some(reason) = self.ignore_sender(from, term) {
            return Some(reason);
        }
        if term == self.term && self.is_leader() && epoch > self.log_start() {
            // This leader never sent a snapshot beyond its own.
            return Some(PeerDrop::AckNotSent);
        }
        None
    }

    #[allow(clippy::too_many_arguments)]
    fn on_snapshot_reply(
        &mut self,
        now: Time,
        from: NodeId,
        term: Term,
        epoch: Epoch,
        received: u64,
        installed: bool,
        out: &mut Vec<Output>,
    ) {
        if let Some(reason) = self.ignore_snapshot_reply(from, term, epoch) {
            self.drop_peer_message(reason);
            return;
        }
        if term > self.term {
            self.step_down(now, term, out);
            return;
        }
        let start = self.log_start();
        let Role::Leader(leader) = &mut self.role else {
            return;
        };
        if term < self.term {
            return;
        }
        leader.heard.insert(from);
        let Some(p) = leader.followers.get_mut(&from) else {
            return;
        };
        if installed {
            // The follower's log now starts after `epoch`, a committed prefix of ours.
            p.matched = p.matched.max(epoch);
            p.next = p.next.max(epoch.next());
            p.sent_max = p.sent_max.max(epoch);
            p.probing = false;
            p.inflight.clear();
            self.advance_commit(now, out);
        } else if epoch == start {
            p.snapshot_sent = (epoch, received);
            p.inflight.clear();
        } else {
            // About an older snapshot: the next chunk starts the current one over.
            p.inflight.clear();
        }
        self.send_append_entries(now, from, false);
    }

    // ---- replies -------------------------------------------------------------------

    fn send_append_reply(
        &mut self,
        to: NodeId,
        success: bool,
        match_epoch: Epoch,
        conflict_term: Option<Term>,
    ) {
        let msg = PeerMessage::AppendReply {
            term: self.term,
            success,
            match_epoch,
            conflict_term,
        };
        let when = match success && self.bugs.ack_before_durable {
            true => When::Now,
            false => When::AfterWrites,
        };
        self.sends.push((to, msg, when));
    }

    fn send_vote(&mut self, to: NodeId, granted: bool) {
        let msg = PeerMessage::Vote {
            term: self.term,
            granted,
        };
        let when = match granted && self.bugs.vote_before_durable {
            true => When::Now,
            false => When::AfterWrites,
        };
        self.sends.push((to, msg, when));
    }

    // ---- the log, the dedup table and the durable writes ---------------------------

    fn append(&mut self, entry: LogEntry) {
        assert_eq!(
            entry.epoch(),
            self.last_epoch().next(),
            "log epochs are consecutive"
        );
        assert!(entry.term >= self.last_term(), "log terms never decrease");
        for txn in &entry.batch.txns {
            // A log holds each call once; with `dedup_off` planted it may not.
            self.dedup.insert(txn.client, txn.seq);
        }
        self.write.append.push(entry.clone());
        self.entry_bytes.push(entry.encoded_bytes_max());
        self.log.push(entry);
    }

    /// Drops the entries from `from` on, which conflict with the leader's log.
    fn truncate(&mut self, from: Epoch) {
        assert!(from > self.commit, "truncating committed epoch {from}");
        assert!(!self.is_leader(), "a leader never truncates its log");
        let keep = Epoch(from.0 - 1);
        self.stats.entries_truncated += self.last_epoch().0 - keep.0;
        let kept = usize_of(keep.0 - self.log_start().0);
        self.log.truncate(kept);
        self.entry_bytes.truncate(kept);
        self.write.append.retain(|e| e.epoch() < from);
        self.write.truncate_from = Some(self.write.truncate_from.map_or(from, |t| t.min(from)));
        for (_, log_end) in &mut self.pending_writes {
            *log_end = (*log_end).min(keep);
        }
        self.persisted_epoch = self.persisted_epoch.min(keep);
        self.rebuild_dedup();
    }

    fn rebuild_dedup(&mut self) {
        let mut dedup = self.snapshot_dedup.clone();
        for txn in self
            .log
            .iter()
            .flat_map(|e| &e.batch.txns)
            .chain(self.batcher.txns())
        {
            dedup.insert(txn.client, txn.seq);
        }
        self.dedup = dedup;
    }

    fn emit_committed(&mut self, upto: Epoch, out: &mut Vec<Output>) {
        let upto = upto.min(self.last_epoch());
        while self.emitted < upto {
            self.emitted = self.emitted.next();
            let batch = self.log[usize_of(self.emitted.0 - self.log_start().0 - 1)]
                .batch
                .clone();
            out.push(Output::Committed(batch));
        }
    }

    /// Issues the write built during this input, then releases this input's messages:
    /// those that must wait for durability queue behind the last write issued.
    fn flush(&mut self, out: &mut Vec<Output>) {
        let write = std::mem::take(&mut self.write);
        let writes = write.hard_state
            || write.snapshot.is_some()
            || write.truncate_from.is_some()
            || !write.append.is_empty();
        if writes {
            if !write.archive.is_empty() {
                out.push(Output::Archive(write.archive));
            }
            self.last_write = WriteId(self.last_write.0 + 1);
            self.pending_writes
                .push_back((self.last_write, self.last_epoch()));
            out.push(Output::Persist(LogWrite {
                id: self.last_write,
                hard_state: write.hard_state.then_some((self.term, self.voted_for)),
                snapshot: write.snapshot,
                truncate_from: write.truncate_from,
                append: write.append,
            }));
        }
        for (to, msg, when) in std::mem::take(&mut self.sends) {
            if when == When::Now || self.persisted_write >= self.last_write {
                out.push(Output::Send { to, msg });
            } else if self.deferred.len() < DEFERRED_SENDS_MAX {
                self.deferred.push_back((self.last_write, to, msg));
            } else {
                self.stats.deferred_dropped += 1;
            }
        }
    }

    fn check_invariants(&self) {
        assert!(self.commit <= self.last_epoch(), "commit beyond the log");
        assert!(
            self.commit >= self.log_start(),
            "compacted beyond the commit"
        );
        assert_eq!(
            self.entry_bytes.len(),
            self.log.len(),
            "entry sizes match the log"
        );
        assert!(
            self.persisted_epoch <= self.last_epoch(),
            "durable beyond the log"
        );
        assert!(
            self.persisted_write <= self.last_write,
            "persisted beyond the writes"
        );
        if self.bugs == ReplicaBugs::default() {
            assert_eq!(self.emitted, self.commit, "emitted differs from commit");
        }
        if self.is_leader() {
            assert_eq!(self.leader, Some(self.config.id), "a leader knows itself");
            assert_eq!(
                self.voted_for,
                Some(self.config.id),
                "a leader voted for itself"
            );
        } else {
            assert!(self.batcher.is_empty(), "only a leader has an open epoch");
        }
    }
}

impl Machine for Replica {
    type Input = Input;
    type Output = Output;

    fn handle(&mut self, now: Time, input: Input, out: &mut Vec<Output>) {
        if self.election_deadline.is_none() {
            if self.log_start() > Epoch(0) {
                out.push(Output::Compacted {
                    through: self.log_start(),
                });
            }
            self.start(now);
        }
        match input {
            Input::Peer { from, msg } => self.on_peer(now, from, msg, out),
            Input::Persisted { write } => self.on_persisted(now, write, out),
            Input::Submit(txn) => self.on_submit(now, txn, out),
            Input::Compact { through } => self.compact(through, out),
            Input::Archived => self.on_archived(out),
            Input::Tick => self.on_tick(now, out),
        }
        self.flush(out);
        if self.leader != self.announced_leader {
            self.announced_leader = self.leader;
            if let Some(leader) = self.leader {
                out.push(Output::LeaderKnown(leader));
            }
        }
        self.check_invariants();
    }

    fn next_deadline(&self) -> Option<Time> {
        let Some(election) = self.election_deadline else {
            return Some(Time::ZERO);
        };
        let Role::Leader(leader) = &self.role else {
            if let Role::Candidate { ask_again_at, .. } = &self.role {
                return Some(election.min(*ask_again_at));
            }
            return Some(election);
        };
        let mut deadline = leader.heartbeat_deadline.min(leader.quorum_deadline);
        let close = self.batcher.deadline(self.log_idle());
        if let Some(close) = close.filter(|_| self.pipeline_open()) {
            deadline = deadline.min(close);
        }
        Some(deadline)
    }
}

/// An AppendEntries, unpacked.
struct Append {
    term: Term,
    leader: NodeId,
    prev_epoch: Epoch,
    prev_term: Term,
    entries: Vec<LogEntry>,
    leader_commit: Epoch,
}

/// An InstallSnapshot chunk, unpacked.
struct Chunk {
    term: Term,
    leader: NodeId,
    epoch: Epoch,
    last_term: Term,
    offset: u64,
    total: u64,
    windows: Vec<ClientWindow>,
}

/// A RequestVote, unpacked.
struct VoteRequest {
    term: Term,
    candidate: NodeId,
    last_epoch: Epoch,
    last_term: Term,
}

/// Why an AppendEntries' entries cannot be read, whatever the receiver's state: unless
/// they are bounded, in this build's log format, consecutive from `prev_epoch + 1`, and
/// carry non-decreasing terms from `prev_term` up to `term`.
fn check_entries(
    term: Term,
    prev_epoch: Epoch,
    prev_term: Term,
    entries: &[LogEntry],
) -> Option<PeerDrop> {
    if entries.len() > ENTRIES_PER_MESSAGE_LIMIT || prev_term > term {
        return Some(PeerDrop::Malformed);
    }
    if prev_epoch == Epoch(0) && prev_term != Term(0) {
        // Epoch 0 stands for the log's start, whose term is 0 on every replica.
        return Some(PeerDrop::Malformed);
    }
    // The last epoch must be representable (a log never gets near it anyway).
    if prev_epoch.0.checked_add(entries.len() as u64).is_none() {
        return Some(PeerDrop::Malformed);
    }
    let mut last_term = prev_term;
    for (i, entry) in (1..).zip(entries) {
        if entry.batch.version != LOG_FORMAT_VERSION {
            return Some(PeerDrop::Version);
        }
        if entry.epoch() != Epoch(prev_epoch.0 + i) || entry.term < last_term || entry.term > term {
            return Some(PeerDrop::Malformed);
        }
        last_term = entry.term;
    }
    None
}

/// How many of the entries of sizes `entry_bytes`, taken in order, one AppendEntries of at
/// most `bytes_max` bytes carries: at least one (if any), so an entry larger than the
/// budget still travels, alone.
fn entries_within(entry_bytes: &[usize], bytes_max: usize) -> usize {
    let mut bytes = APPEND_ENTRIES_OVERHEAD_BYTES_MAX;
    let mut count = 0;
    for &size in entry_bytes {
        bytes = bytes.saturating_add(size);
        if bytes > bytes_max && count > 0 {
            break;
        }
        count += 1;
    }
    count
}

/// An epoch or count as an index; epochs of an in-memory log always fit.
fn usize_of(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use detflow_protocol::Footprint;

    const N1: NodeId = NodeId(1);
    const N2: NodeId = NodeId(2);
    const N3: NodeId = NodeId(3);

    fn txn(client: u64, seq: u64) -> Arc<Transaction> {
        Arc::new(Transaction {
            client: ClientId(client),
            seq: RequestSeq(seq),
            gateway: NodeId(9),
            procedure: "p".into(),
            args: Vec::new(),
            footprint: Footprint::new(),
        })
    }

    /// Without pre-votes: these tests drive elections message by message (pre-votes have
    /// tests of their own).
    fn config(id: NodeId, n: u32) -> ReplicaConfig {
        let mut config = ReplicaConfig::new(id, (1..=n).map(NodeId).collect());
        config.pre_vote = false;
        // Fixed 5 ms epochs (no group commit) unless a test asks for it.
        config.batching = Config {
            epoch_us: 5_000,
            epoch_min_us: 5_000,
            batch_txns_max: 100,
            ..Config::default()
        };
        config
    }

    fn replica(id: NodeId, n: u32) -> Replica {
        Replica::new(
            config(id, n),
            Durable::default(),
            DetRng::new(u64::from(id.0)),
        )
    }

    fn recovered(id: NodeId, n: u32, durable: Durable) -> Replica {
        Replica::new(config(id, n), durable, DetRng::new(u64::from(id.0)))
    }

    /// The outputs of one input, without `LeaderKnown` (tested on its own).
    fn run(r: &mut Replica, now: u64, input: Input) -> Vec<Output> {
        let mut out = Vec::new();
        r.handle(Time(now), input, &mut out);
        out.retain(|o| !matches!(o, Output::LeaderKnown(_)));
        out
    }

    fn with_pre_vote(id: NodeId, n: u32) -> Replica {
        let mut config = config(id, n);
        config.pre_vote = true;
        Replica::new(config, Durable::default(), DetRng::new(u64::from(id.0)))
    }

    /// The pre-votes in `out`, by recipient.
    fn pre_votes(out: &[Output]) -> Vec<(NodeId, PeerMessage)> {
        out.iter()
            .filter_map(|o| match o {
                Output::Send { to, msg } if matches!(msg, PeerMessage::PreVote { .. }) => {
                    Some((*to, msg.clone()))
                }
                _ => None,
            })
            .collect()
    }

    fn reply_to(out: &[Output], to: NodeId) -> PeerMessage {
        out.iter()
            .find_map(|o| match o {
                Output::Send { to: t, msg } if *t == to => Some(msg.clone()),
                _ => None,
            })
            .expect("a reply")
    }

    #[test]
    fn a_returning_replica_cannot_depose_a_live_leader_and_campaigns_with_pre_votes() {
        let mut r2 = with_pre_vote(N2, 3);
        let mut r3 = with_pre_vote(N3, 3);
        let heartbeat = PeerMessage::AppendEntries {
            term: Term(1),
            leader: N1,
            prev_epoch: Epoch(0),
            prev_term: Term(0),
            entries: Vec::new(),
            leader_commit: Epoch(0),
        };
        run(
            &mut r2,
            1_000_000,
            Input::Peer {
                from: N1,
                msg: heartbeat,
            },
        );
        // r3 was cut off; its timer fires. It asks, changing nothing.
        run(&mut r3, 0, Input::Tick);
        let out = run(&mut r3, 10_000_000, Input::Tick);
        let asks = pre_votes(&out);
        assert_eq!(asks.len(), 2, "{out:?}");
        assert_eq!(r3.term(), Term(0));
        assert_eq!(r3.stats().elections, 0);
        let (_, ask) = asks
            .iter()
            .find(|(to, _)| *to == N2)
            .expect("asks N2")
            .clone();
        // r2 heard its leader 50 ms ago: no, and here is my term.
        let out = run(&mut r2, 1_050_000, Input::Peer { from: N3, msg: ask });
        let no = reply_to(&out, N3);
        assert_eq!(
            no,
            PeerMessage::PreVoteReply {
                term: Term(1),
                granted: false
            }
        );
        assert_eq!(r2.term(), Term(1), "a pre-vote changes no term");
        run(&mut r3, 10_001_000, Input::Peer { from: N2, msg: no });
        assert_eq!(r3.term(), Term(1), "r3 caught up with the group's term");
        assert_eq!(r3.stats().elections, 0);

        // Much later, the leader silent: r2 would vote, and r3 campaigns in term 2.
        let out = run(&mut r3, 20_000_000, Input::Tick);
        let (_, ask) = pre_votes(&out)
            .into_iter()
            .find(|(to, _)| *to == N2)
            .expect("asks N2 again");
        let out = run(&mut r2, 20_000_000, Input::Peer { from: N3, msg: ask });
        let yes = reply_to(&out, N3);
        assert_eq!(
            yes,
            PeerMessage::PreVoteReply {
                term: Term(2),
                granted: true
            }
        );
        assert_eq!(r2.term(), Term(1));
        run(&mut r3, 20_001_000, Input::Peer { from: N2, msg: yes });
        assert_eq!(r3.term(), Term(2));
        assert_eq!(r3.stats().elections, 1);
    }

    #[test]
    fn the_leader_is_announced_once_per_change() {
        let mut r = replica(N1, 1);
        let mut announced = Vec::new();
        // A group of one elects itself once its vote is durable; every output is followed,
        // so an announcement made in a `Persisted` step is seen too.
        let mut inputs = VecDeque::new();
        for t in (0..20).map(|i| i * 100_000) {
            inputs.push_back(Input::Tick);
            while let Some(input) = inputs.pop_front() {
                let mut out = Vec::new();
                r.handle(Time(t), input, &mut out);
                for o in out {
                    match o {
                        Output::Persist(w) => inputs.push_back(Input::Persisted { write: w.id }),
                        Output::LeaderKnown(l) => announced.push(l),
                        _ => {}
                    }
                }
            }
        }
        assert_eq!(r.leader(), Some(N1));
        assert_eq!(
            announced,
            vec![N1],
            "once, though it leads through 20 more ticks"
        );
    }

    fn batch(epoch: u64, txns: Vec<Arc<Transaction>>) -> Arc<Batch> {
        Arc::new(Batch {
            version: LOG_FORMAT_VERSION,
            epoch: Epoch(epoch),
            txns,
        })
    }

    fn entry(term: u64, epoch: u64, txns: Vec<Arc<Transaction>>) -> LogEntry {
        LogEntry {
            term: Term(term),
            batch: batch(epoch, txns),
        }
    }

    fn persist(
        id: u64,
        hard_state: Option<(u64, Option<NodeId>)>,
        truncate_from: Option<u64>,
        append: Vec<LogEntry>,
    ) -> Output {
        Output::Persist(LogWrite {
            snapshot: None,
            id: WriteId(id),
            hard_state: hard_state.map(|(term, vote)| (Term(term), vote)),
            truncate_from: truncate_from.map(Epoch),
            append,
        })
    }

    fn send(to: NodeId, msg: PeerMessage) -> Output {
        Output::Send { to, msg }
    }

    fn peer(from: NodeId, msg: PeerMessage) -> Input {
        Input::Peer { from, msg }
    }

    fn append_entries(
        term: u64,
        leader: NodeId,
        prev: (u64, u64),
        entries: Vec<LogEntry>,
        commit: u64,
    ) -> PeerMessage {
        PeerMessage::AppendEntries {
            term: Term(term),
            leader,
            prev_epoch: Epoch(prev.0),
            prev_term: Term(prev.1),
            entries,
            leader_commit: Epoch(commit),
        }
    }

    fn reply(
        term: u64,
        success: bool,
        match_epoch: u64,
        conflict_term: Option<u64>,
    ) -> PeerMessage {
        PeerMessage::AppendReply {
            term: Term(term),
            success,
            match_epoch: Epoch(match_epoch),
            conflict_term: conflict_term.map(Term),
        }
    }

    fn request_vote(term: u64, candidate: NodeId, last: (u64, u64)) -> PeerMessage {
        PeerMessage::RequestVote {
            term: Term(term),
            candidate,
            last_epoch: Epoch(last.0),
            last_term: Term(last.1),
        }
    }

    fn vote(term: u64, granted: bool) -> PeerMessage {
        PeerMessage::Vote {
            term: Term(term),
            granted,
        }
    }

    fn deadline(r: &Replica) -> u64 {
        r.next_deadline().unwrap().0
    }

    /// Runs the election of node 1 in a group of three, delivering everything at once,
    /// up to the commit of its empty batch on node 1 and node 2. Node 3 hears nothing.
    /// Returns the time reached.
    fn elect_n1(r1: &mut Replica, r2: &mut Replica) -> u64 {
        run(r1, 0, Input::Tick);
        run(r2, 0, Input::Tick);
        let t = deadline(r1);
        assert!(t < deadline(r2), "node 1 times out first with these seeds");
        run(r1, t, Input::Tick);
        run(r1, t, Input::Persisted { write: WriteId(1) });
        run(r2, t, peer(N1, request_vote(1, N1, (0, 0))));
        run(r2, t, Input::Persisted { write: WriteId(1) });
        run(r1, t, peer(N2, vote(1, true)));
        run(
            r2,
            t,
            peer(
                N1,
                append_entries(1, N1, (0, 0), vec![entry(1, 1, vec![])], 0),
            ),
        );
        run(r2, t, Input::Persisted { write: WriteId(2) });
        run(r1, t, peer(N2, reply(1, true, 1, None)));
        let out = run(r1, t, Input::Persisted { write: WriteId(2) });
        assert_eq!(out, vec![Output::Committed(batch(1, vec![]))]);
        assert!(r1.is_leader() && r1.commit_epoch() == Epoch(1));
        t
    }

    #[test]
    fn single_replica_elects_itself_and_commits_after_persisted() {
        let mut r = replica(N1, 1);
        assert_eq!(
            r.next_deadline(),
            Some(Time::ZERO),
            "wants its first tick at once"
        );
        // A group of one campaigns at its first input; its vote counts once durable.
        assert_eq!(
            run(&mut r, 0, Input::Tick),
            vec![persist(1, Some((1, Some(N1))), None, vec![])]
        );
        assert!(!r.is_leader());
        // Leading, it appends an empty batch of its term at once.
        assert_eq!(
            run(&mut r, 100, Input::Persisted { write: WriteId(1) }),
            vec![persist(2, None, None, vec![entry(1, 1, vec![])])]
        );
        assert!(r.is_leader() && r.leader() == Some(N1) && r.term() == Term(1));
        assert_eq!(
            run(&mut r, 200, Input::Persisted { write: WriteId(2) }),
            vec![Output::Committed(batch(1, vec![]))]
        );
        assert!(run(&mut r, 1_000, Input::Submit(txn(7, 1))).is_empty());
        assert!(run(&mut r, 1_001, Input::Submit(txn(8, 1))).is_empty());
        assert_eq!(
            r.next_deadline(),
            Some(Time(6_000)),
            "the epoch closes first"
        );
        assert!(run(&mut r, 5_999, Input::Tick).is_empty());
        let closed = entry(1, 2, vec![txn(7, 1), txn(8, 1)]);
        assert_eq!(
            run(&mut r, 6_000, Input::Tick),
            vec![persist(3, None, None, vec![closed.clone()])]
        );
        // Not committed until durable.
        assert_eq!(r.commit_epoch(), Epoch(1));
        assert_eq!(
            run(&mut r, 6_100, Input::Persisted { write: WriteId(3) }),
            vec![Output::Committed(closed.batch)]
        );
        assert_eq!(r.commit_epoch(), Epoch(2));
        assert_eq!(r.log().len(), 2);
        let stats = r.stats();
        assert_eq!((stats.sequenced, stats.batches, stats.terms_led), (2, 1, 1));
    }

    #[test]
    fn an_idle_log_closes_epochs_early_and_a_busy_one_waits_for_the_commit() {
        let mut config = config(N1, 1);
        config.batching.epoch_min_us = 300;
        let mut r = Replica::new(config, Durable::default(), DetRng::new(1));
        run(&mut r, 0, Input::Tick);
        run(&mut r, 100, Input::Persisted { write: WriteId(1) });
        run(&mut r, 200, Input::Persisted { write: WriteId(2) });
        assert!(r.is_leader() && r.commit_epoch() == Epoch(1));
        // Nothing in flight: the epoch closes 300 µs after it opened, not 5 ms.
        assert!(run(&mut r, 1_000, Input::Submit(txn(7, 1))).is_empty());
        assert_eq!(r.next_deadline(), Some(Time(1_300)));
        let first = entry(1, 2, vec![txn(7, 1)]);
        assert_eq!(
            run(&mut r, 1_300, Input::Tick),
            vec![persist(3, None, None, vec![first.clone()])]
        );
        // While it is in flight the next epoch waits for it (or for its 5 ms)...
        assert!(run(&mut r, 1_400, Input::Submit(txn(8, 1))).is_empty());
        assert_eq!(r.next_deadline(), Some(Time(6_400)));
        assert!(run(&mut r, 1_700, Input::Tick).is_empty());
        // ...and closes as soon as the earlier one commits.
        let second = entry(1, 3, vec![txn(8, 1)]);
        assert_eq!(
            run(&mut r, 2_000, Input::Persisted { write: WriteId(3) }),
            vec![
                Output::Committed(first.batch),
                persist(4, None, None, vec![second])
            ]
        );
    }

    #[test]
    fn three_replicas_elect_and_commit_only_durable_votes_and_entries() {
        let (mut r1, mut r2) = (replica(N1, 3), replica(N2, 3));
        assert!(
            run(&mut r1, 0, Input::Tick).is_empty(),
            "the first input starts timers"
        );
        let t = deadline(&r1);
        assert!((150_000..=300_000).contains(&t));
        // The candidate asks for votes only once its own vote is durable.
        assert_eq!(
            run(&mut r1, t, Input::Tick),
            vec![persist(1, Some((1, Some(N1))), None, vec![])]
        );
        assert_eq!(
            run(&mut r1, t + 10, Input::Persisted { write: WriteId(1) }),
            vec![
                send(N2, request_vote(1, N1, (0, 0))),
                send(N3, request_vote(1, N1, (0, 0))),
            ]
        );
        // The voter records its vote; the Vote leaves only once that is durable.
        assert_eq!(
            run(&mut r2, t + 20, peer(N1, request_vote(1, N1, (0, 0)))),
            vec![persist(1, Some((1, Some(N1))), None, vec![])]
        );
        assert_eq!(
            run(&mut r2, t + 30, Input::Persisted { write: WriteId(1) }),
            vec![send(N1, vote(1, true))]
        );
        // A majority: lead, append the term's empty batch, probe both followers.
        let noop = entry(1, 1, vec![]);
        let probe = append_entries(1, N1, (0, 0), vec![noop.clone()], 0);
        assert_eq!(
            run(&mut r1, t + 40, peer(N2, vote(1, true))),
            vec![
                persist(2, None, None, vec![noop.clone()]),
                send(N2, probe.clone()),
                send(N3, probe.clone()),
            ]
        );
        assert!(r1.is_leader());
        // The follower's success waits for its write.
        assert_eq!(
            run(&mut r2, t + 50, peer(N1, probe)),
            vec![persist(2, None, None, vec![noop.clone()])]
        );
        assert_eq!(r2.leader(), Some(N1));
        assert_eq!(
            run(&mut r2, t + 60, Input::Persisted { write: WriteId(2) }),
            vec![send(N1, reply(1, true, 1, None))]
        );
        // One follower has it, but the leader's own copy is not yet durable: no quorum.
        assert!(run(&mut r1, t + 70, peer(N2, reply(1, true, 1, None))).is_empty());
        assert_eq!(r1.commit_epoch(), Epoch(0));
        assert_eq!(
            run(&mut r1, t + 80, Input::Persisted { write: WriteId(2) }),
            vec![Output::Committed(noop.batch.clone())]
        );

        // A batch: replicated to the follower that answered (node 3 still has its probe
        // outstanding, so it gets nothing more until it answers or a heartbeat passes).
        assert!(run(&mut r1, t + 100, Input::Submit(txn(5, 1))).is_empty());
        let e2 = entry(1, 2, vec![txn(5, 1)]);
        assert_eq!(
            run(&mut r1, t + 5_100, Input::Tick),
            vec![
                persist(3, None, None, vec![e2.clone()]),
                send(N2, append_entries(1, N1, (1, 1), vec![e2.clone()], 1)),
            ]
        );
        assert!(run(&mut r1, t + 5_200, Input::Persisted { write: WriteId(3) }).is_empty());
        // The follower learns the commit of epoch 1 with the new entry.
        assert_eq!(
            run(
                &mut r2,
                t + 5_300,
                peer(N1, append_entries(1, N1, (1, 1), vec![e2.clone()], 1))
            ),
            vec![
                Output::Committed(noop.batch),
                persist(3, None, None, vec![e2.clone()]),
            ]
        );
        assert_eq!(
            run(&mut r2, t + 5_400, Input::Persisted { write: WriteId(3) }),
            vec![send(N1, reply(1, true, 2, None))]
        );
        assert_eq!(
            run(&mut r1, t + 5_500, peer(N2, reply(1, true, 2, None))),
            vec![Output::Committed(e2.batch.clone())]
        );
        // The next heartbeat tells the follower, which then emits it too.
        let heartbeat = append_entries(1, N1, (2, 1), vec![], 2);
        assert_eq!(
            run(&mut r2, t + 30_000, peer(N1, heartbeat)),
            vec![
                Output::Committed(e2.batch),
                send(N1, reply(1, true, 2, None))
            ]
        );
        assert_eq!(r2.commit_epoch(), Epoch(2));
    }

    #[test]
    fn a_candidate_asks_the_peers_that_did_not_answer_again_each_heartbeat() {
        let mut r1 = replica(N1, 3);
        run(&mut r1, 0, Input::Tick);
        let t = deadline(&r1);
        run(&mut r1, t, Input::Tick);
        assert_eq!(
            run(&mut r1, t + 10, Input::Persisted { write: WriteId(1) }),
            vec![
                send(N2, request_vote(1, N1, (0, 0))),
                send(N3, request_vote(1, N1, (0, 0))),
            ]
        );
        // Node 2 refuses; node 3's answer (or our request) is lost.
        assert!(run(&mut r1, t + 20, peer(N2, vote(1, false))).is_empty());
        assert_eq!(deadline(&r1), t + 30_000);
        assert_eq!(
            run(&mut r1, t + 30_000, Input::Tick),
            vec![send(N3, request_vote(1, N1, (0, 0)))]
        );
        assert_eq!(deadline(&r1), t + 60_000);
        // A vote of an earlier term neither counts nor answers this candidacy.
        assert!(run(&mut r1, t + 40_000, peer(N3, vote(0, true))).is_empty());
        assert!(!r1.is_leader());
        assert_eq!(
            run(&mut r1, t + 60_000, Input::Tick),
            vec![send(N3, request_vote(1, N1, (0, 0)))]
        );
        run(&mut r1, t + 70_000, peer(N3, vote(1, true)));
        assert!(r1.is_leader());
    }

    #[test]
    fn a_durable_vote_survives_a_restart() {
        let durable = Durable {
            snapshot: None,
            term: Term(1),
            voted_for: Some(N1),
            log: Vec::new(),
        };
        let mut r2 = recovered(N2, 3, durable);
        assert_eq!(
            run(&mut r2, 0, peer(N3, request_vote(1, N3, (0, 0)))),
            vec![send(N3, vote(1, false))]
        );
        // Asking again for the same candidate is answered again, without a new write.
        assert_eq!(
            run(&mut r2, 1, peer(N1, request_vote(1, N1, (0, 0)))),
            vec![send(N1, vote(1, true))]
        );
        // A later term frees the vote.
        assert_eq!(
            run(&mut r2, 2, peer(N3, request_vote(2, N3, (0, 0)))),
            vec![persist(1, Some((2, Some(N3))), None, vec![])]
        );
    }

    #[test]
    fn votes_go_only_to_candidates_whose_log_is_as_up_to_date() {
        let durable = Durable {
            snapshot: None,
            term: Term(2),
            voted_for: None,
            log: vec![entry(1, 1, vec![]), entry(2, 2, vec![])],
        };
        let mut r = recovered(N2, 3, durable);
        // Shorter log with the same last term: refused (the term is still adopted).
        run(&mut r, 0, peer(N1, request_vote(3, N1, (1, 2))));
        assert_eq!(
            run(&mut r, 1, Input::Persisted { write: WriteId(1) }),
            vec![send(N1, vote(3, false))]
        );
        // Longer log of an older last term: refused.
        assert_eq!(
            run(&mut r, 2, peer(N3, request_vote(3, N3, (9, 1)))),
            vec![send(N3, vote(3, false))]
        );
        // The same log: granted.
        assert_eq!(
            run(&mut r, 3, peer(N3, request_vote(3, N3, (2, 2)))),
            vec![persist(2, Some((3, Some(N3))), None, vec![])]
        );
    }

    #[test]
    fn followers_and_candidates_redirect_submissions() {
        let (mut r1, mut r2) = (replica(N1, 3), replica(N2, 3));
        let t = elect_n1(&mut r1, &mut r2);
        let call = txn(4, 1);
        assert_eq!(
            run(&mut r2, t + 1, Input::Submit(call.clone())),
            vec![Output::NotLeader {
                txn: call.clone(),
                leader: Some(N1)
            }]
        );
        let mut r3 = replica(N3, 3);
        assert_eq!(
            run(&mut r3, 0, Input::Submit(call.clone())),
            vec![Output::NotLeader {
                txn: call,
                leader: None
            }]
        );
        assert_eq!(r2.stats().not_leader, 1);
    }

    #[test]
    fn duplicate_submissions_are_refused_from_the_open_epoch_and_the_log() {
        let mut r = replica(N1, 1);
        run(&mut r, 0, Input::Tick);
        run(&mut r, 0, Input::Persisted { write: WriteId(1) });
        run(&mut r, 0, Input::Persisted { write: WriteId(2) });
        assert!(run(&mut r, 10, Input::Submit(txn(3, 1))).is_empty());
        let duplicate = Output::Duplicate {
            client: ClientId(3),
            seq: RequestSeq(1),
            gateway: NodeId(9),
        };
        assert_eq!(
            run(&mut r, 11, Input::Submit(txn(3, 1))),
            vec![duplicate.clone()]
        );
        run(&mut r, 5_010, Input::Tick);
        // Still refused once in the log (committed or not).
        assert_eq!(
            run(&mut r, 5_011, Input::Submit(txn(3, 1))),
            vec![duplicate.clone()]
        );
        run(&mut r, 5_012, Input::Persisted { write: WriteId(3) });
        assert_eq!(
            run(&mut r, 5_013, Input::Submit(txn(3, 1))),
            vec![duplicate.clone()]
        );
        assert_eq!(r.stats().duplicates, 3);
        assert_eq!(r.stats().sequenced, 1);

        // After a restart the table is rebuilt from the durable log.
        let durable = Durable {
            snapshot: None,
            term: Term(1),
            voted_for: Some(N1),
            log: r.log().to_vec(),
        };
        let mut again = recovered(N1, 1, durable);
        run(&mut again, 0, Input::Tick);
        run(&mut again, 0, Input::Persisted { write: WriteId(1) });
        assert!(again.is_leader() && again.term() == Term(2));
        assert_eq!(
            run(&mut again, 1, Input::Submit(txn(3, 1))),
            vec![duplicate]
        );
        assert!(run(&mut again, 2, Input::Submit(txn(3, 2))).is_empty());
    }

    #[test]
    fn a_higher_term_makes_the_leader_step_down_and_hand_back_its_open_epoch() {
        let (mut r1, mut r2) = (replica(N1, 3), replica(N2, 3));
        let t = elect_n1(&mut r1, &mut r2);
        run(&mut r1, t + 1, Input::Submit(txn(1, 1)));
        run(&mut r1, t + 2, Input::Submit(txn(2, 1)));
        assert_eq!(
            run(&mut r1, t + 3, peer(N3, request_vote(5, N3, (1, 1)))),
            vec![
                Output::NotLeader {
                    txn: txn(1, 1),
                    leader: None
                },
                Output::NotLeader {
                    txn: txn(2, 1),
                    leader: None
                },
                persist(3, Some((5, Some(N3))), None, vec![]),
            ]
        );
        assert!(!r1.is_leader() && r1.term() == Term(5) && r1.leader().is_none());
        assert_eq!(
            run(&mut r1, t + 4, Input::Persisted { write: WriteId(3) }),
            vec![send(N3, vote(5, true))]
        );
        // The handed-back calls left the dedup table: a new leader may take them.
        assert_eq!(r1.stats().step_downs, 1);

        // A stale leader is told the newer term and steps down.
        // A new leader of term 6; the reply waits for the new term to be durable.
        assert_eq!(
            run(
                &mut r2,
                t + 5,
                peer(N3, append_entries(6, N3, (1, 1), vec![], 1))
            ),
            vec![
                Output::Committed(batch(1, vec![])),
                persist(3, Some((6, None)), None, vec![]),
            ]
        );
        assert_eq!(r2.leader(), Some(N3));
        // A stale leader is told the newer term.
        let stale = append_entries(1, N1, (1, 1), vec![], 1);
        run(&mut r2, t + 6, Input::Persisted { write: WriteId(3) });
        assert_eq!(
            run(&mut r2, t + 7, peer(N1, stale)),
            vec![send(N1, reply(6, false, 1, None))]
        );
    }

    #[test]
    fn a_leader_steps_down_on_a_higher_term_reply() {
        let (mut r1, mut r2) = (replica(N1, 3), replica(N2, 3));
        let t = elect_n1(&mut r1, &mut r2);
        run(&mut r1, t + 1, Input::Submit(txn(1, 1)));
        let out = run(&mut r1, t + 2, peer(N3, reply(4, false, 0, None)));
        assert_eq!(
            out,
            vec![
                Output::NotLeader {
                    txn: txn(1, 1),
                    leader: None
                },
                persist(3, Some((4, None)), None, vec![]),
            ]
        );
        assert!(!r1.is_leader());
        // The call can be sequenced again by whoever leads next, including this replica.
        assert_eq!(
            run(&mut r1, t + 3, Input::Submit(txn(1, 1))),
            vec![Output::NotLeader {
                txn: txn(1, 1),
                leader: None
            }]
        );
    }

    #[test]
    fn conflicting_entries_are_truncated_and_rewritten() {
        let durable = Durable {
            snapshot: None,
            term: Term(2),
            voted_for: None,
            log: vec![
                entry(1, 1, vec![]),
                entry(1, 2, vec![txn(1, 1)]),
                entry(2, 3, vec![txn(1, 2)]),
                entry(2, 4, vec![txn(1, 3)]),
            ],
        };
        let mut r = recovered(N2, 3, durable);
        // The leader of term 3 has a different epoch 3.
        let e3 = entry(3, 3, vec![txn(2, 1)]);
        let out = run(
            &mut r,
            0,
            peer(N1, append_entries(3, N1, (2, 1), vec![e3.clone()], 2)),
        );
        assert_eq!(
            out,
            vec![
                Output::Committed(batch(1, vec![])),
                Output::Committed(batch(2, vec![txn(1, 1)])),
                persist(1, Some((3, None)), Some(3), vec![e3.clone()]),
            ]
        );
        assert_eq!(r.log().len(), 3);
        assert_eq!(r.log()[2], e3);
        assert_eq!(r.stats().entries_truncated, 2);
        assert_eq!(
            run(&mut r, 1, Input::Persisted { write: WriteId(1) }),
            vec![send(N1, reply(3, true, 3, None))]
        );
        // The truncated calls left the dedup table with their entries.
        assert!(!r.dedup.contains(ClientId(1), RequestSeq(2)));
        assert!(r.dedup.contains(ClientId(2), RequestSeq(1)));
        // A durable copy applies the same write.
        let mut disk = Durable {
            snapshot: None,
            term: Term(2),
            voted_for: None,
            log: r.log()[..2].to_vec(),
        };
        disk.log.push(entry(2, 3, vec![]));
        disk.apply(&LogWrite {
            snapshot: None,
            id: WriteId(1),
            hard_state: Some((Term(3), None)),
            truncate_from: Some(Epoch(3)),
            append: vec![e3],
        });
        assert_eq!((disk.term, disk.log.as_slice()), (Term(3), r.log()));
    }

    #[test]
    fn a_mismatch_answers_with_a_hint_where_to_retry() {
        let durable = Durable {
            snapshot: None,
            term: Term(2),
            voted_for: None,
            log: vec![
                entry(1, 1, vec![]),
                entry(2, 2, vec![]),
                entry(2, 3, vec![]),
                entry(2, 4, vec![]),
            ],
        };
        let mut r = recovered(N2, 3, durable);
        // Term 2 at epoch 4 is not the leader's term 3: skip the whole run of term 2.
        run(
            &mut r,
            0,
            peer(N1, append_entries(3, N1, (4, 3), vec![], 0)),
        );
        assert_eq!(
            run(&mut r, 1, Input::Persisted { write: WriteId(1) }),
            vec![send(N1, reply(3, false, 1, Some(2)))]
        );
        // Too short: retry from my last epoch.
        assert_eq!(
            run(
                &mut r,
                2,
                peer(N1, append_entries(3, N1, (9, 3), vec![], 0))
            ),
            vec![send(N1, reply(3, false, 4, None))]
        );
    }

    #[test]
    fn the_leader_backs_up_to_a_lagging_follower_in_bounded_messages() {
        let mut c1 = config(N1, 3);
        c1.entries_per_message_max = 2;
        let log: Vec<LogEntry> = (1..=5).map(|e| entry(1, e, vec![txn(1, e)])).collect();
        let durable = Durable {
            snapshot: None,
            term: Term(1),
            voted_for: Some(N1),
            log: log.clone(),
        };
        let mut r1 = Replica::new(c1, durable, DetRng::new(1));
        run(&mut r1, 0, Input::Tick);
        let timeout = deadline(&r1);
        run(&mut r1, timeout, Input::Tick);
        let t = deadline(&r1);
        run(&mut r1, t, Input::Persisted { write: WriteId(1) });
        let out = run(&mut r1, t, peer(N2, vote(2, true)));
        let noop = entry(2, 6, vec![]);
        assert_eq!(
            out[1],
            send(N2, append_entries(2, N1, (5, 1), vec![noop.clone()], 0))
        );
        // Node 2 has only epochs 1 and 2.
        let out = run(&mut r1, t + 1, peer(N2, reply(2, false, 2, None)));
        assert_eq!(
            out,
            vec![send(
                N2,
                append_entries(2, N1, (2, 1), log[2..4].to_vec(), 0)
            )]
        );
        // Success: stream the rest, at most two entries a message.
        let out = run(&mut r1, t + 2, peer(N2, reply(2, true, 4, None)));
        assert_eq!(
            out,
            vec![send(
                N2,
                append_entries(2, N1, (4, 1), vec![log[4].clone(), noop], 0)
            )]
        );
        run(&mut r1, t + 3, Input::Persisted { write: WriteId(2) });
        // Epoch 6 is of this term and on a majority: epochs 1..=6 commit together.
        let out = run(&mut r1, t + 4, peer(N2, reply(2, true, 6, None)));
        assert_eq!(out.len(), 6);
        assert_eq!(r1.commit_epoch(), Epoch(6));
    }

    #[test]
    fn lost_append_entries_are_retransmitted_on_the_heartbeat() {
        let (mut r1, mut r2) = (replica(N1, 3), replica(N2, 3));
        let t = elect_n1(&mut r1, &mut r2);
        run(&mut r1, t + 1, Input::Submit(txn(1, 1)));
        let e2 = entry(1, 2, vec![txn(1, 1)]);
        let out = run(&mut r1, t + 5_001, Input::Tick);
        let lost = send(N2, append_entries(1, N1, (1, 1), vec![e2.clone()], 1));
        assert_eq!(out[1], lost);
        // That message is lost, and node 3 never answered the probe sent at election time.
        // Unanswered for a heartbeat is not lost yet (a follower that catches up syncs
        // before it answers): both get plain heartbeats, at the point each is known to hold.
        let heartbeat_at = deadline(&r1);
        assert_eq!(heartbeat_at, t + 30_000);
        assert_eq!(
            run(&mut r1, heartbeat_at, Input::Tick),
            vec![
                send(N2, append_entries(1, N1, (1, 1), vec![], 1)),
                send(N3, append_entries(1, N1, (0, 0), vec![], 1)),
            ]
        );
        // Once a message is an election timeout (150 ms) old it is presumed lost and sent
        // again, with everything the follower may lack.
        let probe = append_entries(1, N1, (0, 0), vec![entry(1, 1, vec![]), e2.clone()], 1);
        let (mut resent_lost, mut resent_probe) = (None, None);
        let mut now = heartbeat_at;
        while now < t + 200_000 {
            now = deadline(&r1);
            let out = run(&mut r1, now, Input::Tick);
            if out.contains(&lost) {
                resent_lost.get_or_insert(now);
            }
            if out.contains(&send(N3, probe.clone())) {
                resent_probe.get_or_insert(now);
            }
        }
        assert!(
            resent_lost.is_some_and(|at| at >= t + 5_001 + 150_000),
            "{resent_lost:?}"
        );
        assert!(
            resent_probe.is_some_and(|at| at >= t + 150_000),
            "{resent_probe:?}"
        );
    }

    #[test]
    fn a_leader_without_a_quorum_steps_down() {
        let (mut r1, mut r2) = (replica(N1, 3), replica(N2, 3));
        let t = elect_n1(&mut r1, &mut r2);
        run(&mut r1, t + 1, Input::Submit(txn(1, 1)));
        // Node 2 answered during the first period: still leading after it.
        let mut now = t;
        while now < t + 300_000 {
            now = deadline(&r1);
            run(&mut r1, now, Input::Tick);
        }
        assert!(r1.is_leader());
        // Nobody answers for a whole election timeout: step down, hand back calls.
        run(&mut r1, now + 1, Input::Submit(txn(1, 2)));
        let mut handed_back = Vec::new();
        while r1.is_leader() {
            now = deadline(&r1);
            handed_back.extend(run(&mut r1, now, Input::Tick));
        }
        assert!(now <= t + 600_000);
        assert!(
            handed_back
                .iter()
                .all(|o| !matches!(o, Output::Committed(_)))
        );
        assert_eq!(r1.stats().step_downs, 1);
        assert_eq!(r1.term(), Term(1));
    }

    #[test]
    fn a_restarted_replica_emits_committed_batches_again_from_epoch_one() {
        let log = vec![entry(1, 1, vec![]), entry(1, 2, vec![txn(1, 1)])];
        let durable = Durable {
            snapshot: None,
            term: Term(1),
            voted_for: Some(N1),
            log: log.clone(),
        };
        let mut r2 = recovered(N2, 3, durable);
        assert_eq!(r2.commit_epoch(), Epoch(0), "the commit epoch is volatile");
        let out = run(
            &mut r2,
            0,
            peer(N1, append_entries(1, N1, (2, 1), vec![], 2)),
        );
        assert_eq!(
            out,
            vec![
                Output::Committed(log[0].batch.clone()),
                Output::Committed(log[1].batch.clone()),
                send(N1, reply(1, true, 2, None)),
            ]
        );
    }

    #[test]
    fn a_full_pipeline_keeps_the_epoch_open_and_pushes_back() {
        let mut c = config(N1, 1);
        c.batching.batch_txns_max = 1;
        c.uncommitted_epochs_max = 1;
        let mut r = Replica::new(c, Durable::default(), DetRng::new(1));
        run(&mut r, 0, Input::Tick);
        run(&mut r, 0, Input::Persisted { write: WriteId(1) });
        run(&mut r, 0, Input::Persisted { write: WriteId(2) });
        let e2 = entry(1, 2, vec![txn(1, 1)]);
        assert_eq!(
            run(&mut r, 1, Input::Submit(txn(1, 1))),
            vec![persist(3, None, None, vec![e2.clone()])]
        );
        // Epoch 2 is uncommitted: epoch 3 fills but cannot close.
        assert!(run(&mut r, 2, Input::Submit(txn(1, 2))).is_empty());
        assert_eq!(
            run(&mut r, 3, Input::Submit(txn(1, 3))),
            vec![Output::NotLeader {
                txn: txn(1, 3),
                leader: Some(N1)
            }]
        );
        assert!(
            r.next_deadline().unwrap() > Time(3),
            "no tick storm for the held epoch"
        );
        assert_eq!(
            run(&mut r, 4, Input::Persisted { write: WriteId(3) }),
            vec![
                Output::Committed(e2.batch),
                persist(4, None, None, vec![entry(1, 3, vec![txn(1, 2)])]),
            ]
        );
    }

    /// The drop counter for `reason`, checking that the total agrees.
    fn drops(r: &Replica, reason: PeerDrop) -> u64 {
        let stats = r.stats();
        let sum: u64 = stats.peer_drops.by_reason().map(|(_, n)| n).sum();
        assert_eq!(
            sum, stats.peer_messages_dropped,
            "the total is the sum of the reasons"
        );
        stats.peer_drops.get(reason)
    }

    /// Submits one call to the leader `r1` of term 1 (elected by [`elect_n1`], log of
    /// `epoch - 1` entries, node 3 silent), closes its epoch and commits it with node 2's
    /// acknowledgement. The leader keeps working: that is what this checks.
    fn commit_one_call(r1: &mut Replica, t: u64, epoch: u64, client: u64) {
        assert!(run(r1, t, Input::Submit(txn(client, 1))).is_empty());
        let e = entry(1, epoch, vec![txn(client, 1)]);
        let out = run(r1, t + 5_000, Input::Tick);
        assert_eq!(out[0], persist(epoch + 1, None, None, vec![e.clone()]));
        assert!(out[1..].iter().all(|o| matches!(o, Output::Send { .. })));
        run(
            r1,
            t + 5_001,
            Input::Persisted {
                write: WriteId(epoch + 1),
            },
        );
        assert_eq!(
            run(r1, t + 5_002, peer(N2, reply(1, true, epoch, None))),
            vec![Output::Committed(e.batch)]
        );
        assert!(r1.is_leader() && r1.commit_epoch() == Epoch(epoch));
    }

    #[test]
    fn a_forged_append_entries_of_its_own_term_leaves_the_leader_leading() {
        // Issue #9: one AppendEntries from node 3 claiming to lead the leader's term used to
        // trip "two leaders in term".
        let (mut r1, mut r2) = (replica(N1, 3), replica(N2, 3));
        let t = elect_n1(&mut r1, &mut r2);
        let heartbeat = append_entries(1, N3, (1, 1), vec![], 1);
        assert!(run(&mut r1, t + 1, peer(N3, heartbeat)).is_empty());
        let rewrite = append_entries(1, N3, (1, 1), vec![entry(1, 2, vec![txn(6, 1)])], 2);
        assert!(run(&mut r1, t + 2, peer(N3, rewrite)).is_empty());
        assert_eq!(drops(&r1, PeerDrop::SecondLeader), 2);
        assert!(r1.is_leader() && r1.term() == Term(1) && r1.log().len() == 1);
        commit_one_call(&mut r1, t + 10, 2, 1);
    }

    #[test]
    fn a_second_leader_in_a_followers_term_is_dropped() {
        let (mut r1, mut r2) = (replica(N1, 3), replica(N2, 3));
        let t = elect_n1(&mut r1, &mut r2);
        assert_eq!(r2.leader(), Some(N1));
        let rival = append_entries(1, N3, (1, 1), vec![entry(1, 2, vec![txn(6, 1)])], 2);
        assert!(run(&mut r2, t + 1, peer(N3, rival)).is_empty());
        assert_eq!(drops(&r2, PeerDrop::SecondLeader), 1);
        assert_eq!((r2.leader(), r2.log().len()), (Some(N1), 1));
        // The real leader is still followed.
        let e2 = entry(1, 2, vec![txn(1, 1)]);
        let from_n1 = append_entries(1, N1, (1, 1), vec![e2.clone()], 1);
        assert_eq!(
            run(&mut r2, t + 2, peer(N1, from_n1)),
            vec![
                Output::Committed(batch(1, vec![])),
                persist(3, None, None, vec![e2]),
            ]
        );
    }

    #[test]
    fn strangers_and_echoes_of_itself_are_dropped() {
        let (mut r1, mut r2) = (replica(N1, 3), replica(N2, 3));
        let t = elect_n1(&mut r1, &mut r2);
        let stranger = NodeId(7);
        let forged = [
            (stranger, request_vote(9, stranger, (9, 9))),
            (stranger, vote(1, true)),
            (stranger, reply(1, true, 1, None)),
            (stranger, append_entries(1, stranger, (1, 1), vec![], 1)),
            (N1, vote(1, true)),
            (N1, reply(5, false, 0, None)),
            (N1, append_entries(2, N1, (1, 1), vec![], 1)),
        ];
        for (i, (from, msg)) in (1..).zip(forged) {
            assert!(run(&mut r1, t + i, peer(from, msg)).is_empty());
        }
        assert_eq!(drops(&r1, PeerDrop::Stranger), 7);
        assert!(r1.is_leader() && r1.term() == Term(1));
        commit_one_call(&mut r1, t + 10, 2, 1);
    }

    #[test]
    fn impostors_are_dropped_without_touching_the_term() {
        let mut r = replica(N2, 3);
        let leader = append_entries(3, N3, (0, 0), vec![], 0);
        assert!(run(&mut r, 0, peer(N1, leader)).is_empty());
        let candidate = request_vote(3, N3, (0, 0));
        assert!(run(&mut r, 0, peer(N1, candidate)).is_empty());
        assert_eq!(drops(&r, PeerDrop::Impostor), 2);
        assert_eq!((r.term(), r.leader()), (Term(0), None));
        // The genuine candidate gets the vote.
        assert_eq!(
            run(&mut r, 1, peer(N3, request_vote(3, N3, (0, 0)))),
            vec![persist(1, Some((3, Some(N3))), None, vec![])]
        );
    }

    #[test]
    fn malformed_entries_are_dropped_without_touching_the_term() {
        let mut r = replica(N2, 3);
        let too_many: Vec<LogEntry> = (1..=ENTRIES_PER_MESSAGE_LIMIT as u64 + 1)
            .map(|e| entry(1, e, vec![]))
            .collect();
        let malformed = [
            // A gap after prev_epoch.
            append_entries(1, N1, (0, 0), vec![entry(1, 2, vec![])], 0),
            // Not consecutive.
            append_entries(
                1,
                N1,
                (0, 0),
                vec![entry(1, 1, vec![]), entry(1, 3, vec![])],
                0,
            ),
            // An entry of epoch 0.
            append_entries(1, N1, (0, 0), vec![entry(1, 0, vec![])], 0),
            // An entry of a term above the message's.
            append_entries(1, N1, (0, 0), vec![entry(2, 1, vec![])], 0),
            // Terms decreasing along the entries, and from prev_term.
            append_entries(
                3,
                N1,
                (0, 0),
                vec![entry(2, 1, vec![]), entry(1, 2, vec![])],
                0,
            ),
            append_entries(3, N1, (4, 2), vec![entry(1, 5, vec![])], 0),
            // prev_term above the message's term.
            append_entries(1, N1, (4, 2), vec![], 0),
            // Epoch 0 has term 0 everywhere.
            append_entries(1, N1, (0, 1), vec![], 0),
            // The epochs would overflow.
            append_entries(1, N1, (u64::MAX, 1), vec![entry(1, 0, vec![])], 0),
            // More entries than any sender may put in one message.
            append_entries(1, N1, (0, 0), too_many, 0),
        ];
        let count = malformed.len() as u64;
        for msg in malformed {
            assert!(run(&mut r, 0, peer(N1, msg)).is_empty());
        }
        assert_eq!(drops(&r, PeerDrop::Malformed), count);
        assert_eq!((r.term(), r.log().len()), (Term(0), 0));
    }

    #[test]
    fn batches_in_an_unknown_log_format_are_dropped() {
        let mut r = replica(N2, 3);
        let mut newer = entry(1, 1, vec![]);
        Arc::make_mut(&mut newer.batch).version = LOG_FORMAT_VERSION + 1;
        let msg = append_entries(1, N1, (0, 0), vec![newer], 0);
        assert!(run(&mut r, 0, peer(N1, msg)).is_empty());
        assert_eq!(drops(&r, PeerDrop::Version), 1);
        assert_eq!((r.term(), r.log().len()), (Term(0), 0));
    }

    #[test]
    fn entries_that_would_rewrite_committed_epochs_are_dropped() {
        let durable = Durable {
            snapshot: None,
            term: Term(1),
            voted_for: Some(N1),
            log: vec![entry(1, 1, vec![]), entry(1, 2, vec![txn(1, 1)])],
        };
        let mut r = recovered(N2, 3, durable);
        let heartbeat = append_entries(1, N1, (2, 1), vec![], 2);
        assert_eq!(run(&mut r, 0, peer(N1, heartbeat.clone())).len(), 3);
        assert_eq!(r.commit_epoch(), Epoch(2));
        // A "leader" of term 2 whose epoch 2 has another term: answering would need a
        // hint below the commit epoch (this tripped an assertion before).
        let mismatch = append_entries(2, N3, (2, 2), vec![], 2);
        assert!(run(&mut r, 1, peer(N3, mismatch)).is_empty());
        // One whose entries replace committed epoch 2 (this truncated committed entries,
        // or tripped the truncation's assertion).
        let rewrite = append_entries(2, N3, (1, 1), vec![entry(2, 2, vec![txn(6, 1)])], 2);
        assert!(run(&mut r, 2, peer(N3, rewrite)).is_empty());
        assert_eq!(drops(&r, PeerDrop::RewritesCommitted), 2);
        // Neither raised the term nor changed the log; the leader of term 1 still leads.
        assert_eq!(
            (r.term(), r.leader(), r.log().len()),
            (Term(1), Some(N1), 2)
        );
        assert_eq!(r.log()[1], entry(1, 2, vec![txn(1, 1)]));
        assert_eq!(
            run(&mut r, 3, peer(N1, heartbeat)),
            vec![send(N1, reply(1, true, 2, None))]
        );
        // Entries above the commit epoch are still replaced as Raft requires.
        let e3 = entry(1, 3, vec![txn(1, 2)]);
        run(
            &mut r,
            4,
            peer(N1, append_entries(1, N1, (2, 1), vec![e3], 2)),
        );
        let e3_new = entry(2, 3, vec![txn(2, 1)]);
        let newer = append_entries(2, N3, (2, 1), vec![e3_new.clone()], 2);
        assert_eq!(
            run(&mut r, 5, peer(N3, newer)),
            vec![persist(2, Some((2, None)), Some(3), vec![e3_new])]
        );
        assert_eq!(r.stats().entries_truncated, 1);
    }

    #[test]
    fn acknowledgements_of_entries_never_sent_are_dropped() {
        let (mut r1, mut r2) = (replica(N1, 3), replica(N2, 3));
        let t = elect_n1(&mut r1, &mut r2);
        run(&mut r1, t + 1, Input::Submit(txn(1, 1)));
        // Epoch 2 goes to node 2 only: node 3's election-time probe is unanswered.
        let out = run(&mut r1, t + 5_001, Input::Tick);
        assert!(matches!(&out[1..], [Output::Send { to: N2, .. }]));
        run(&mut r1, t + 5_002, Input::Persisted { write: WriteId(3) });
        // Node 3 claims epoch 2 (never sent to it), then epoch 9 (beyond the log): with
        // the leader's own copy either would have committed epoch 2 without node 2.
        let claims = [reply(1, true, 2, None), reply(1, true, 9, None)];
        for claim in claims {
            assert!(run(&mut r1, t + 5_003, peer(N3, claim)).is_empty());
        }
        assert_eq!(drops(&r1, PeerDrop::AckNotSent), 2);
        assert_eq!(r1.commit_epoch(), Epoch(1));
        // Node 2's genuine acknowledgement commits it.
        assert_eq!(
            run(&mut r1, t + 5_004, peer(N2, reply(1, true, 2, None))),
            vec![Output::Committed(batch(2, vec![txn(1, 1)]))]
        );
        // What was sent may be acknowledged: node 3's probe covered epoch 1.
        assert!(run(&mut r1, t + 5_005, peer(N3, reply(1, true, 1, None))).len() == 1);
        assert_eq!(drops(&r1, PeerDrop::AckNotSent), 2);
    }

    #[test]
    fn terms_no_honest_group_reaches_are_dropped() {
        let (mut r1, mut r2) = (replica(N1, 3), replica(N2, 3));
        let t = elect_n1(&mut r1, &mut r2);
        let huge = [
            request_vote(u64::MAX, N3, (1, 1)),
            vote(PEER_TERM_LIMIT.0, false),
            reply(u64::MAX, false, 0, None),
            append_entries(u64::MAX, N3, (1, 1), vec![], 1),
        ];
        for msg in huge {
            assert!(run(&mut r1, t + 1, peer(N3, msg)).is_empty());
        }
        assert_eq!(drops(&r1, PeerDrop::TermTooHigh), 4);
        assert!(r1.is_leader() && r1.term() == Term(1));
        // Just below the limit is a term like any other: the leader steps down.
        run(&mut r1, t + 2, peer(N3, vote(PEER_TERM_LIMIT.0 - 1, false)));
        assert!(!r1.is_leader() && r1.term() == Term(PEER_TERM_LIMIT.0 - 1));
    }

    #[test]
    fn drop_reasons_have_distinct_names() {
        let names: BTreeSet<&str> = PeerDrop::ALL.iter().map(|r| r.name()).collect();
        assert_eq!(names.len(), PeerDrop::ALL.len());
        for (i, reason) in PeerDrop::ALL.into_iter().enumerate() {
            assert_eq!(reason as usize, i, "ALL is in declaration order");
        }
    }

    /// A transaction whose encoding takes about `bytes`.
    fn big_txn(client: u64, bytes: usize) -> Arc<Transaction> {
        Arc::new(Transaction {
            args: vec![0xa5; bytes],
            ..(*txn(client, 1)).clone()
        })
    }

    #[test]
    fn append_entries_are_cut_by_bytes() {
        let mut c1 = config(N1, 3);
        c1.append_bytes_max = 10_000;
        // Six entries of about 3 kB, one of 20 kB (over the budget alone), one of 3 kB.
        let mut log: Vec<LogEntry> = (1..=6)
            .map(|e| entry(1, e, vec![big_txn(e, 2_900)]))
            .collect();
        log.push(entry(1, 7, vec![big_txn(7, 20_000)]));
        log.push(entry(1, 8, vec![big_txn(8, 2_900)]));
        let durable = Durable {
            snapshot: None,
            term: Term(1),
            voted_for: Some(N1),
            log,
        };
        let mut r1 = Replica::new(c1, durable, DetRng::new(1));
        run(&mut r1, 0, Input::Tick);
        let timeout = deadline(&r1);
        run(&mut r1, timeout, Input::Tick);
        let t = deadline(&r1);
        run(&mut r1, t, Input::Persisted { write: WriteId(1) });
        run(&mut r1, t, peer(N2, vote(2, true)));
        // Node 2 has nothing: stream the log to it, checking every message's size.
        let mut out = run(&mut r1, t + 1, peer(N2, reply(2, false, 0, None)));
        let mut carried = Vec::new();
        while let Some(Output::Send {
            msg: msg @ PeerMessage::AppendEntries { .. },
            ..
        }) = out.pop()
        {
            let PeerMessage::AppendEntries { entries, .. } = &msg else {
                unreachable!()
            };
            let estimate = entries
                .iter()
                .fold(APPEND_ENTRIES_OVERHEAD_BYTES_MAX, |sum, e| {
                    sum + e.encoded_bytes_max()
                });
            let encoded = detflow_protocol::codec::encode(&msg).len();
            assert!(encoded <= estimate, "{encoded} > {estimate}");
            assert!(
                estimate <= 10_000 || entries.len() == 1,
                "{} entries of {estimate} bytes",
                entries.len()
            );
            carried.push(entries.len());
            let last = entries.last().map_or(0, |e| e.epoch().0);
            out = run(&mut r1, t + 2, peer(N2, reply(2, true, last, None)));
        }
        // Three 3 kB entries a message, the 20 kB one alone, then the rest with the
        // term's empty batch.
        assert_eq!(carried, vec![3, 3, 1, 2]);
    }

    #[test]
    fn the_leader_closes_an_epoch_at_its_byte_cap() {
        let mut c = config(N1, 1);
        let one = detflow_protocol::replication::txn_encoded_bytes_max(&big_txn(1, 1_000));
        c.batching.batch_bytes_max = 2 * one + 1;
        let mut r = Replica::new(c, Durable::default(), DetRng::new(1));
        run(&mut r, 0, Input::Tick);
        run(&mut r, 0, Input::Persisted { write: WriteId(1) });
        run(&mut r, 0, Input::Persisted { write: WriteId(2) });
        assert!(run(&mut r, 1, Input::Submit(big_txn(1, 1_000))).is_empty());
        assert!(run(&mut r, 2, Input::Submit(big_txn(2, 1_000))).is_empty());
        // The third reaches the cap: the epoch closes before its deadline.
        let e2 = entry(
            1,
            2,
            vec![big_txn(1, 1_000), big_txn(2, 1_000), big_txn(3, 10)],
        );
        assert_eq!(
            run(&mut r, 3, Input::Submit(big_txn(3, 10))),
            vec![persist(3, None, None, vec![e2])]
        );
        assert_eq!(r.stats().batches, 1);
    }

    #[test]
    fn durable_state_in_an_unknown_log_format_is_refused() {
        let mut e = entry(1, 1, vec![]);
        Arc::make_mut(&mut e.batch).version = 7;
        let durable = Durable {
            snapshot: None,
            term: Term(1),
            voted_for: None,
            log: vec![e],
        };
        let error = durable.validate().unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "log entry 1 is in log format version 7; this build understands version \
                 {LOG_FORMAT_VERSION}"
            )
        );
        let gap = Durable {
            snapshot: None,
            term: Term(1),
            voted_for: None,
            log: vec![entry(1, 2, vec![])],
        };
        assert!(matches!(gap.validate(), Err(DurableError::Epoch { .. })));
        let ahead = Durable {
            snapshot: None,
            term: Term(1),
            voted_for: None,
            log: vec![entry(2, 1, vec![])],
        };
        assert!(matches!(ahead.validate(), Err(DurableError::Term { .. })));
    }

    #[test]
    #[should_panic(expected = "refusing the durable state of replica 1")]
    fn new_refuses_an_unreadable_log() {
        let mut e = entry(1, 1, vec![]);
        Arc::make_mut(&mut e.batch).version = 7;
        let durable = Durable {
            snapshot: None,
            term: Term(1),
            voted_for: None,
            log: vec![e],
        };
        recovered(N1, 1, durable);
    }

    #[test]
    fn persisted_may_skip_ids_and_repeat() {
        let mut r = replica(N1, 1);
        run(&mut r, 0, Input::Tick);
        run(&mut r, 0, Input::Persisted { write: WriteId(1) });
        run(&mut r, 1, Input::Submit(txn(1, 1)));
        run(&mut r, 5_001, Input::Tick);
        // Writes 2 (the empty batch) and 3 become durable together.
        let out = run(&mut r, 5_002, Input::Persisted { write: WriteId(3) });
        assert_eq!(out.len(), 2);
        assert!(run(&mut r, 5_003, Input::Persisted { write: WriteId(2) }).is_empty());
        assert_eq!(r.commit_epoch(), Epoch(2));
    }
}
