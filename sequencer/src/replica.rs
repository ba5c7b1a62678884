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
//! the leader batches: it collects submissions into the open epoch (the same rule as the
//! single-replica [`crate::Sequencer`]), closes it into a new log entry, persists it and
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

use crate::batcher::Batcher;
use crate::{Config, DedupTable};
use detflow_protocol::{
    Batch, ClientId, DetRng, ENTRIES_PER_MESSAGE_LIMIT, Epoch, LOG_FORMAT_VERSION, LogEntry,
    Machine, NodeId, PeerMessage, RequestSeq, Time, Transaction,
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
    /// The leader keeps its epoch open (and finally refuses submissions) while this many
    /// appended epochs are not yet committed: bounds the log a leader without a quorum grows.
    pub uncommitted_epochs_max: u64,
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
            uncommitted_epochs_max: 1_000,
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
            self.uncommitted_epochs_max > 0,
            "uncommitted_epochs_max must be positive"
        );
    }
}

/// What survives a crash: the hard state and the log. `Default` is a fresh replica.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Durable {
    /// The latest term this replica has seen.
    pub term: u64,
    /// Whom it voted for in `term`, if anyone.
    pub voted_for: Option<NodeId>,
    /// The log; `log[i]` holds epoch `i + 1`.
    pub log: Vec<LogEntry>,
}

impl Durable {
    /// Applies one write, as a disk does: the hard state, then the truncation, then the
    /// appended entries. Drivers apply writes in id order.
    pub fn apply(&mut self, write: &LogWrite) {
        if let Some((term, voted_for)) = write.hard_state {
            self.term = term;
            self.voted_for = voted_for;
        }
        if let Some(from) = write.truncate_from {
            assert!(from.0 >= 1, "truncation from epoch 0");
            self.log.truncate(usize_of(from.0 - 1));
        }
        for entry in &write.append {
            assert_eq!(
                entry.epoch().0,
                self.log.len() as u64 + 1,
                "a write appends a non-consecutive epoch"
            );
            self.log.push(entry.clone());
        }
    }

    /// Checks that this state is one this build can recover from: every batch in the
    /// current log format, epochs consecutive from 1, terms non-decreasing and not above
    /// `term`.
    pub fn validate(&self) -> Result<(), DurableError> {
        let mut prev_term = 0;
        for (i, entry) in self.log.iter().enumerate() {
            let epoch = Epoch(i as u64 + 1);
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
        term: u64,
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

/// A durable write the driver performs: the hard state (if it changed), then a truncation,
/// then appended entries, atomically or in that order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogWrite {
    /// Increasing per replica incarnation, from 1; `Persisted { write }` names it.
    pub id: u64,
    /// The new `(term, voted_for)`, when it changed.
    pub hard_state: Option<(u64, Option<NodeId>)>,
    /// Drop every entry with epoch `>=` this first.
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
        write: u64,
    },
    /// A transaction to order (from a gateway).
    Submit(Arc<Transaction>),
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
    /// Make this write durable, after every earlier one, then answer `Persisted`.
    Persist(LogWrite),
    /// Send a message to another replica.
    Send {
        /// The receiver.
        to: NodeId,
        /// The message.
        msg: PeerMessage,
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
    /// Terms in which this replica became leader.
    pub terms_led: u64,
    /// Times this replica stopped leading.
    pub step_downs: u64,
    /// Entries appended from a leader's AppendEntries.
    pub entries_received: u64,
    /// Entries removed because they conflicted with a leader's log.
    pub entries_truncated: u64,
    /// Peer messages dropped as malformed (never a panic).
    pub malformed: u64,
    /// Messages dropped because too many were waiting for a durable write.
    pub deferred_dropped: u64,
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
    /// The last epoch covered by each unacknowledged AppendEntries, ascending.
    inflight: VecDeque<Epoch>,
    /// Whether the follower acknowledged anything since the last heartbeat.
    progressed: bool,
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
    Candidate {
        votes: BTreeSet<NodeId>,
        /// The write that records this candidacy's term and self-vote.
        write: u64,
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
    hard_state: bool,
    truncate_from: Option<Epoch>,
    append: Vec<LogEntry>,
}

/// One replica of the sequencer group. See the module documentation for the contract.
pub struct Replica {
    config: ReplicaConfig,
    rng: DetRng,
    bugs: ReplicaBugs,
    term: u64,
    voted_for: Option<NodeId>,
    leader: Option<NodeId>,
    role: Role,
    log: Vec<LogEntry>,
    commit: Epoch,
    /// The last epoch emitted as `Committed`; equals `commit` unless a bug is planted.
    emitted: Epoch,
    dedup: DedupTable,
    batcher: Batcher,
    /// `None` until the first input, which starts the timers.
    election_deadline: Option<Time>,
    last_write: u64,
    persisted_write: u64,
    /// Issued writes not yet durable, with the log's last epoch after each (lowered when
    /// the log is truncated below it).
    pending_writes: VecDeque<(u64, Epoch)>,
    /// The highest epoch such that the whole log up to it is durable.
    persisted_epoch: Epoch,
    /// Messages waiting until the write with the given id is durable, in id order.
    deferred: VecDeque<(u64, NodeId, PeerMessage)>,
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
        let persisted_epoch = Epoch(durable.log.len() as u64);
        let mut replica = Replica {
            config,
            rng,
            bugs: ReplicaBugs::default(),
            term: durable.term,
            voted_for: durable.voted_for,
            leader: None,
            role: Role::Follower,
            log: durable.log,
            commit: Epoch(0),
            emitted: Epoch(0),
            dedup: DedupTable::default(),
            batcher,
            election_deadline: None,
            last_write: 0,
            persisted_write: 0,
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
    pub fn term(&self) -> u64 {
        self.term
    }

    /// The last committed epoch known here (volatile: 0 after a restart until relearned).
    pub fn commit_epoch(&self) -> Epoch {
        self.commit
    }

    /// The log, durable or not; `log()[i]` holds epoch `i + 1`.
    pub fn log(&self) -> &[LogEntry] {
        &self.log
    }

    /// Work counters of this incarnation.
    pub fn stats(&self) -> ReplicaStats {
        self.stats
    }

    fn last_epoch(&self) -> Epoch {
        Epoch(self.log.len() as u64)
    }

    fn term_at(&self, epoch: Epoch) -> u64 {
        match epoch.0 {
            0 => 0,
            e => self.log[usize_of(e - 1)].term,
        }
    }

    fn last_term(&self) -> u64 {
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
        if from == self.config.id || !self.config.replicas.contains(&from) {
            self.stats.malformed += 1;
            return;
        }
        match msg {
            PeerMessage::AppendEntries {
                term,
                leader,
                prev_epoch,
                prev_term,
                entries,
                leader_commit,
            } => {
                if leader != from || !entries_are_well_formed(term, prev_epoch, prev_term, &entries)
                {
                    self.stats.malformed += 1;
                    return;
                }
                let append = Append {
                    term,
                    leader,
                    prev_epoch,
                    prev_term,
                    entries,
                    leader_commit,
                };
                self.on_append_entries(now, append, out);
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
            } => {
                if candidate != from {
                    self.stats.malformed += 1;
                    return;
                }
                self.on_request_vote(now, candidate, term, last_epoch, last_term, out);
            }
            PeerMessage::Vote { term, granted } => self.on_vote(now, from, term, granted, out),
        }
    }

    fn on_append_entries(&mut self, now: Time, msg: Append, out: &mut Vec<Output>) {
        if msg.term < self.term {
            // A stale leader: tell it the current term so it steps down.
            self.send_append_reply(msg.leader, false, self.last_epoch(), None);
            return;
        }
        if msg.term > self.term {
            self.step_down(now, msg.term, out);
        }
        assert!(
            !self.is_leader(),
            "two leaders in term {}: {} and {}",
            self.term,
            self.config.id,
            msg.leader
        );
        self.role = Role::Follower;
        self.leader = Some(msg.leader);
        self.election_deadline = Some(self.election_timeout(now));

        if msg.prev_epoch > self.last_epoch() {
            self.send_append_reply(msg.leader, false, self.last_epoch(), None);
            return;
        }
        let term_there = self.term_at(msg.prev_epoch);
        if term_there != msg.prev_term {
            assert!(
                msg.prev_epoch > self.commit,
                "leader {} disagrees with committed epoch {}",
                msg.leader,
                msg.prev_epoch
            );
            // Skip the whole run of the conflicting term; committed entries match anyway.
            let mut first = msg.prev_epoch;
            while first.0 > 1 && self.term_at(Epoch(first.0 - 1)) == term_there {
                first = Epoch(first.0 - 1);
            }
            let hint = Epoch(first.0 - 1).max(self.commit);
            self.send_append_reply(msg.leader, false, hint, Some(term_there));
            return;
        }
        if !msg.entries.is_empty() && self.pending_writes.len() >= PENDING_WRITES_MAX {
            // The disk is far behind: take nothing now; the leader retransmits.
            return;
        }
        let match_epoch = Epoch(msg.prev_epoch.0 + msg.entries.len() as u64);
        for entry in msg.entries {
            let epoch = entry.epoch();
            if epoch <= self.last_epoch() {
                if self.term_at(epoch) == entry.term {
                    continue;
                }
                self.truncate(epoch);
            }
            self.append(entry);
            self.stats.entries_received += 1;
        }
        let commit = msg.leader_commit.min(match_epoch);
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

    fn on_append_reply(
        &mut self,
        now: Time,
        from: NodeId,
        term: u64,
        success: bool,
        match_epoch: Epoch,
        out: &mut Vec<Output>,
    ) {
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
            if match_epoch > last {
                self.stats.malformed += 1;
                return;
            }
            let before = p.inflight.len();
            p.inflight.retain(|e| *e > match_epoch);
            if match_epoch > p.matched || p.inflight.len() < before {
                p.progressed = true;
            }
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
        self.send_append_entries(from, false);
    }

    fn on_request_vote(
        &mut self,
        now: Time,
        candidate: NodeId,
        term: u64,
        last_epoch: Epoch,
        last_term: u64,
        out: &mut Vec<Output>,
    ) {
        if term < self.term {
            self.send_vote(candidate, false);
            return;
        }
        if term > self.term {
            self.step_down(now, term, out);
        }
        let up_to_date = (last_term, last_epoch) >= (self.last_term(), self.last_epoch());
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

    fn on_vote(
        &mut self,
        now: Time,
        from: NodeId,
        term: u64,
        granted: bool,
        out: &mut Vec<Output>,
    ) {
        if term > self.term {
            self.step_down(now, term, out);
            return;
        }
        if term < self.term || !granted {
            return;
        }
        if let Role::Candidate { votes, .. } = &mut self.role {
            votes.insert(from);
            self.maybe_win(now, out);
        }
    }

    // ---- local inputs --------------------------------------------------------------

    fn on_persisted(&mut self, now: Time, write: u64, out: &mut Vec<Output>) {
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
            Role::Follower => {}
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
                self.campaign(now);
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
        self.term += 1;
        self.voted_for = Some(self.config.id);
        self.write.hard_state = true;
        self.leader = None;
        // `flush` issues the write holding this term and self-vote with the next id.
        self.role = Role::Candidate {
            votes: BTreeSet::new(),
            write: self.last_write + 1,
        };
        self.election_deadline = Some(self.election_timeout(now));
        self.stats.elections += 1;
        let (last_epoch, last_term) = (self.last_epoch(), self.last_term());
        for peer in self.peers() {
            let msg = PeerMessage::RequestVote {
                term: self.term,
                candidate: self.config.id,
                last_epoch,
                last_term,
            };
            self.sends.push((peer, msg, When::AfterWrites));
        }
    }

    fn maybe_win(&mut self, now: Time, out: &mut Vec<Output>) {
        let Role::Candidate { votes, write } = &self.role else {
            return;
        };
        // Our own vote counts only once it is durable.
        let own = usize::from(self.persisted_write >= *write);
        if own + votes.len() >= self.majority() && own == 1 {
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
                    inflight: VecDeque::new(),
                    progressed: false,
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
        self.append_as_leader(batch, out);
    }

    /// Adopts a higher `term` (forgetting the vote) and, if leading or campaigning, becomes
    /// a follower. The hard state is written with the next write.
    fn step_down(&mut self, now: Time, term: u64, out: &mut Vec<Output>) {
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

    fn pipeline_open(&self) -> bool {
        self.last_epoch().0 - self.commit.0 < self.config.uncommitted_epochs_max
    }

    fn maybe_close(&mut self, now: Time, out: &mut Vec<Output>) {
        if self.is_leader()
            && !self.batcher.is_empty()
            && self.batcher.is_due(now)
            && self.pipeline_open()
        {
            let batch = self.batcher.close(self.last_epoch().next());
            self.stats.batches += 1;
            self.append_as_leader(batch, out);
        }
    }

    fn append_as_leader(&mut self, batch: Arc<Batch>, out: &mut Vec<Output>) {
        assert!(self.is_leader(), "only the leader appends batches");
        self.append(LogEntry {
            term: self.term,
            batch,
        });
        if self.bugs.ack_before_quorum {
            self.emit_committed(self.last_epoch(), out);
        }
        for peer in self.peers() {
            self.send_append_entries(peer, false);
        }
    }

    fn advance_commit(&mut self, now: Time, out: &mut Vec<Output>) {
        let Role::Leader(leader) = &self.role else {
            return;
        };
        let mut matched: Vec<Epoch> = leader.followers.values().map(|p| p.matched).collect();
        matched.push(self.persisted_epoch);
        matched.sort_unstable_by(|a, b| b.cmp(a));
        let quorum = matched[self.majority() - 1];
        if quorum > self.commit && self.term_at(quorum) == self.term {
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
        let Role::Leader(leader) = &mut self.role else {
            return;
        };
        leader.heartbeat_deadline = now.plus_us(heartbeat_us);
        for p in leader.followers.values_mut() {
            if !p.progressed && !p.inflight.is_empty() {
                // Nothing acknowledged for a whole heartbeat: assume the messages were lost.
                p.inflight.clear();
                if !p.probing {
                    p.next = p.matched.next();
                }
            }
            p.progressed = false;
        }
        for peer in self.peers() {
            self.send_append_entries(peer, true);
        }
    }

    /// Sends `peer` the entries it needs next if its window allows, or else, when
    /// `heartbeat`, an empty AppendEntries at a point the follower is known to hold.
    fn send_append_entries(&mut self, peer: NodeId, heartbeat: bool) {
        let last = self.last_epoch();
        let per_message = if self.rng.buggify() {
            1
        } else {
            self.config.entries_per_message_max
        };
        let Role::Leader(leader) = &mut self.role else {
            return;
        };
        let Some(p) = leader.followers.get_mut(&peer) else {
            return;
        };
        let window = if p.probing { 1 } else { INFLIGHT_MAX };
        let has_room = p.inflight.len() < window;
        let (prev_epoch, count) = if has_room && (p.next <= last || p.probing) {
            let count = (last.0 + 1 - p.next.0).min(per_message as u64);
            let covered = Epoch(p.next.0 - 1 + count);
            p.inflight.push_back(covered);
            let prev = Epoch(p.next.0 - 1);
            if !p.probing {
                p.next = covered.next();
            }
            (prev, count)
        } else if heartbeat {
            (p.matched, 0)
        } else {
            return;
        };
        let start = usize_of(prev_epoch.0);
        let entries = self.log[start..start + usize_of(count)].to_vec();
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

    // ---- replies -------------------------------------------------------------------

    fn send_append_reply(
        &mut self,
        to: NodeId,
        success: bool,
        match_epoch: Epoch,
        conflict_term: Option<u64>,
    ) {
        let msg = PeerMessage::AppendReply {
            term: self.term,
            success,
            match_epoch,
            conflict_term,
        };
        self.sends.push((to, msg, When::AfterWrites));
    }

    fn send_vote(&mut self, to: NodeId, granted: bool) {
        let msg = PeerMessage::Vote {
            term: self.term,
            granted,
        };
        self.sends.push((to, msg, When::AfterWrites));
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
        self.log.push(entry);
    }

    /// Drops the entries from `from` on, which conflict with the leader's log.
    fn truncate(&mut self, from: Epoch) {
        assert!(from > self.commit, "truncating committed epoch {from}");
        assert!(!self.is_leader(), "a leader never truncates its log");
        let keep = Epoch(from.0 - 1);
        self.stats.entries_truncated += self.last_epoch().0 - keep.0;
        self.log.truncate(usize_of(keep.0));
        self.write.append.retain(|e| e.epoch() < from);
        self.write.truncate_from = Some(self.write.truncate_from.map_or(from, |t| t.min(from)));
        for (_, log_end) in &mut self.pending_writes {
            *log_end = (*log_end).min(keep);
        }
        self.persisted_epoch = self.persisted_epoch.min(keep);
        self.rebuild_dedup();
    }

    fn rebuild_dedup(&mut self) {
        let mut dedup = DedupTable::default();
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
            let batch = self.log[usize_of(self.emitted.0 - 1)].batch.clone();
            out.push(Output::Committed(batch));
        }
    }

    /// Issues the write built during this input, then releases this input's messages:
    /// those that must wait for durability queue behind the last write issued.
    fn flush(&mut self, out: &mut Vec<Output>) {
        let write = std::mem::take(&mut self.write);
        if write.hard_state || write.truncate_from.is_some() || !write.append.is_empty() {
            self.last_write += 1;
            self.pending_writes
                .push_back((self.last_write, self.last_epoch()));
            out.push(Output::Persist(LogWrite {
                id: self.last_write,
                hard_state: write.hard_state.then_some((self.term, self.voted_for)),
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
            self.start(now);
        }
        match input {
            Input::Peer { from, msg } => self.on_peer(now, from, msg, out),
            Input::Persisted { write } => self.on_persisted(now, write, out),
            Input::Submit(txn) => self.on_submit(now, txn, out),
            Input::Tick => self.on_tick(now, out),
        }
        self.flush(out);
        self.check_invariants();
    }

    fn next_deadline(&self) -> Option<Time> {
        let Some(election) = self.election_deadline else {
            return Some(Time::ZERO);
        };
        let Role::Leader(leader) = &self.role else {
            return Some(election);
        };
        let mut deadline = leader.heartbeat_deadline.min(leader.quorum_deadline);
        if let Some(close) = self.batcher.deadline().filter(|_| self.pipeline_open()) {
            deadline = deadline.min(close);
        }
        Some(deadline)
    }
}

/// An AppendEntries, unpacked.
struct Append {
    term: u64,
    leader: NodeId,
    prev_epoch: Epoch,
    prev_term: u64,
    entries: Vec<LogEntry>,
    leader_commit: Epoch,
}

/// Whether an AppendEntries' entries are bounded, consecutive from `prev_epoch + 1`, in
/// this build's log format, and carry non-decreasing terms from `prev_term` up to `term`.
fn entries_are_well_formed(
    term: u64,
    prev_epoch: Epoch,
    prev_term: u64,
    entries: &[LogEntry],
) -> bool {
    if entries.len() > ENTRIES_PER_MESSAGE_LIMIT || prev_term > term {
        return false;
    }
    let mut expected = prev_epoch;
    let mut last_term = prev_term;
    for entry in entries {
        expected = expected.next();
        if entry.epoch() != expected
            || entry.batch.version != LOG_FORMAT_VERSION
            || entry.term < last_term
            || entry.term > term
        {
            return false;
        }
        last_term = entry.term;
    }
    true
}

/// An epoch or count as an index; epochs of an in-memory log always fit.
fn usize_of(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}
