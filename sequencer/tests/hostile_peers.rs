//! Hostile peers: a small three-replica group driven normally (seeded network and disk
//! delays, clients calling the leader) while proptest-generated `PeerMessage`s with
//! arbitrary senders are injected into random replicas at random times (DESIGN.md §10c).
//!
//! Two properties, because Raft tolerates crashes, not lies:
//!
//! - Whatever is injected, no replica panics, every replica's durable state stays one it
//!   can recover from, and no replica ever changes a batch it has emitted as committed.
//! - Agreement of the committed prefixes across replicas holds whenever the forgeries are
//!   ones the protocol can detect or absorb: senders outside the group, impostors,
//!   malformed entries, stale terms, higher terms on replies and votes, refusals, a second
//!   leader of the leader's own term, acknowledgements beyond the log. A member that
//!   forges *consistent* messages can make two replicas commit different batches: entries
//!   or a commit epoch of a current or newer term, a granted vote or a successful reply in
//!   the receiver's term, or a vote request in its own name (of the receiver's term or a
//!   newer one) claiming an up-to-date log, whose granted vote the real replica counts if
//!   it campaigns in that term. No crash-tolerant protocol can prevent that, so the node
//!   authenticates its peers and the second property skips those.
//!
//! Neither property asks for liveness: a forged higher term may depose a healthy leader.

use detflow_protocol::{
    Batch, ClientId, ClientWindow, DetRng, Epoch, Footprint, LOG_FORMAT_VERSION, LogEntry, Machine,
    NodeId, PeerMessage, RequestSeq, Term, Time, Transaction,
};
use detflow_sequencer::replica::{Input, Output};
use detflow_sequencer::{Config, Durable, LogWrite, Replica, ReplicaConfig};
use proptest::prelude::*;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

const REPLICAS: u32 = 3;
/// Virtual time of one run.
const RUN_US: u64 = 1_500_000;
/// A client calls this often.
const CALL_EVERY_US: u64 = 15_000;
const CLIENTS: u64 = 2;

#[derive(Clone, Debug)]
enum Event {
    Deliver {
        to: NodeId,
        from: NodeId,
        msg: PeerMessage,
        /// How a forged message is aimed; `None` for the replicas' own messages.
        forged: Option<Aim>,
    },
    Synced(NodeId),
    Timer {
        node: NodeId,
        generation: u64,
    },
    Call(u64),
}

struct Node {
    replica: Replica,
    disk: Durable,
    unsynced: VecDeque<LogWrite>,
    timer_generation: u64,
    timer_at: Option<Time>,
    /// The batches this replica emitted as committed, by epoch.
    emitted: BTreeMap<Epoch, Arc<Batch>>,
    /// The next epoch it may emit: one past the last emitted or compacted.
    next_emit: Epoch,
    /// An archive write ahead of a compaction, answered at the next call.
    archiving: bool,
}

/// How a forged message is placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Aim {
    /// As generated.
    Absolute,
    /// With its terms shifted to around the receiver's term and its epochs to around the
    /// receiver's last epoch at delivery, as a forger who watches the group would: that
    /// reaches the checks a forgery of a stale term never gets to.
    Relative,
    /// Relative, and to the current leader if there is one (the replica with the most to
    /// lose), from another member if it named the leader as its sender.
    Leader,
}

/// Which forgeries a run delivers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Forgeries {
    /// Every one.
    All,
    /// Only those the protocol can detect or absorb (see the module documentation).
    Tolerable,
}

struct Cluster {
    now: Time,
    rng: DetRng,
    forgeries: Forgeries,
    events: BTreeMap<(Time, u64), Event>,
    event_seq: u64,
    nodes: Vec<Node>,
    leader_hint: NodeId,
    next_seq: Vec<u64>,
    /// The first batch any replica emitted for each epoch.
    committed: BTreeMap<Epoch, Arc<Batch>>,
    injected: u64,
    skipped: u64,
}

impl Cluster {
    fn new(seed: u64, forgeries: Forgeries) -> Cluster {
        let mut rng = DetRng::new(seed);
        let members: Vec<NodeId> = (1..=REPLICAS).map(NodeId).collect();
        let nodes = members
            .iter()
            .map(|&id| {
                let mut config = ReplicaConfig::new(id, members.clone());
                config.batching = Config {
                    epoch_us: 5_000,
                    batch_txns_max: 8,
                    ..Config::default()
                };
                config.entries_per_message_max = 4;
                // Compact often (the driver offers the commit epoch) and send snapshots a
                // window at a time, so forgeries meet transfers in progress.
                config.compact_every_epochs = 8;
                config.snapshot_windows_per_message_max = 1;
                let replica = Replica::new(config, Durable::default(), rng.fork(u64::from(id.0)));
                Node {
                    replica,
                    disk: Durable::default(),
                    unsynced: VecDeque::new(),
                    timer_generation: 0,
                    timer_at: None,
                    emitted: BTreeMap::new(),
                    next_emit: Epoch(1),
                    archiving: false,
                }
            })
            .collect();
        let mut cluster = Cluster {
            now: Time::ZERO,
            rng,
            forgeries,
            events: BTreeMap::new(),
            event_seq: 0,
            nodes,
            leader_hint: NodeId(1),
            next_seq: vec![1; CLIENTS as usize],
            committed: BTreeMap::new(),
            injected: 0,
            skipped: 0,
        };
        for id in members {
            cluster.arm_timer(id);
        }
        for c in 0..CLIENTS {
            cluster.schedule(Time(c * 1_000), Event::Call(c));
        }
        cluster
    }

    fn schedule(&mut self, at: Time, event: Event) {
        self.event_seq += 1;
        self.events
            .insert((at.max(self.now), self.event_seq), event);
    }

    fn inject(&mut self, i: Injection) {
        let event = Event::Deliver {
            to: i.to,
            from: i.from,
            msg: i.msg,
            forged: Some(i.aim),
        };
        self.schedule(Time(i.at_us), event);
    }

    fn run(&mut self) -> Result<(), String> {
        while self.step()? {}
        Ok(())
    }

    /// Handles the next event; false once the run's time is up.
    fn step(&mut self) -> Result<bool, String> {
        let Some(((at, _), event)) = self.events.pop_first() else {
            return Ok(false);
        };
        if at.0 > RUN_US {
            return Ok(false);
        }
        self.now = at;
        match event {
            Event::Deliver {
                to,
                from,
                msg,
                forged,
            } => {
                let (to, from, msg) = match forged {
                    Some(Aim::Leader) => self.redirect(to, from, msg),
                    _ => (to, from, msg),
                };
                let msg = match forged {
                    Some(Aim::Relative | Aim::Leader) => self.rebase(to, msg),
                    _ => msg,
                };
                if forged.is_some() {
                    if !self.deliverable(to, from, &msg) {
                        self.skipped += 1;
                        return Ok(true);
                    }
                    self.injected += 1;
                }
                self.input(to, Input::Peer { from, msg })?;
            }
            Event::Synced(id) => {
                let node = &mut self.nodes[idx(id)];
                let mut last = None;
                while let Some(write) = node.unsynced.pop_front() {
                    node.disk.apply(&write);
                    last = Some(write.id);
                }
                node.disk
                    .validate()
                    .map_err(|e| format!("{id}'s durable state is unreadable: {e}"))?;
                if let Some(write) = last {
                    self.input(id, Input::Persisted { write })?;
                }
            }
            Event::Timer { node, generation } => {
                let n = &mut self.nodes[idx(node)];
                if n.timer_generation == generation {
                    n.timer_at = None;
                    self.input(node, Input::Tick)?;
                }
            }
            Event::Call(c) => self.on_call(c)?,
        }
        Ok(true)
    }

    /// The message retargeted at the current leader, if any.
    fn redirect(
        &self,
        to: NodeId,
        from: NodeId,
        mut msg: PeerMessage,
    ) -> (NodeId, NodeId, PeerMessage) {
        let leader = self
            .nodes
            .iter()
            .filter(|n| n.replica.is_leader())
            .max_by_key(|n| n.replica.term())
            .map(|n| n.replica.id());
        let Some(leader) = leader.filter(|l| *l != to) else {
            return (to, from, msg);
        };
        if from != leader {
            return (leader, from, msg);
        }
        let other = NodeId(leader.0 % REPLICAS + 1);
        match &mut msg {
            PeerMessage::AppendEntries { leader: who, .. }
            | PeerMessage::InstallSnapshot { leader: who, .. }
            | PeerMessage::RequestVote { candidate: who, .. }
            | PeerMessage::PreVote { candidate: who, .. } => {
                if *who == from {
                    *who = other;
                }
            }
            PeerMessage::AppendReply { .. }
            | PeerMessage::SnapshotReply { .. }
            | PeerMessage::Vote { .. }
            | PeerMessage::PreVoteReply { .. } => {}
        }
        (leader, other, msg)
    }

    /// `msg` with generated terms `t` read as `receiver's term - 4 + t` and generated epochs
    /// `e` as `receiver's last epoch - 80 + e` (saturating).
    fn rebase(&self, to: NodeId, msg: PeerMessage) -> PeerMessage {
        let r = &self.nodes[idx(to)].replica;
        let term_base = r.term().0.saturating_sub(4);
        let last = r.log_start().0 + r.log().len() as u64;
        let epoch_base = last.saturating_sub(80);
        let t = |term: Term| Term(term.0.saturating_add(term_base));
        let e = |epoch: Epoch| Epoch(epoch.0.saturating_add(epoch_base));
        match msg {
            PeerMessage::AppendEntries {
                term,
                leader,
                prev_epoch,
                prev_term,
                entries,
                leader_commit,
            } => PeerMessage::AppendEntries {
                term: t(term),
                leader,
                prev_epoch: e(prev_epoch),
                prev_term: if prev_epoch == Epoch(0) {
                    prev_term
                } else {
                    t(prev_term)
                },
                entries: entries
                    .into_iter()
                    .map(|entry| LogEntry {
                        term: t(entry.term),
                        batch: Arc::new(Batch {
                            epoch: e(entry.batch.epoch),
                            ..(*entry.batch).clone()
                        }),
                    })
                    .collect(),
                leader_commit: e(leader_commit),
            },
            PeerMessage::AppendReply {
                term,
                success,
                match_epoch,
                conflict_term,
            } => PeerMessage::AppendReply {
                term: t(term),
                success,
                match_epoch: e(match_epoch),
                conflict_term: conflict_term.map(t),
            },
            PeerMessage::RequestVote {
                term,
                candidate,
                last_epoch,
                last_term,
            } => PeerMessage::RequestVote {
                term: t(term),
                candidate,
                last_epoch: e(last_epoch),
                last_term: t(last_term),
            },
            PeerMessage::Vote { term, granted } => PeerMessage::Vote {
                term: t(term),
                granted,
            },
            PeerMessage::PreVote {
                term,
                candidate,
                last_epoch,
                last_term,
            } => PeerMessage::PreVote {
                term: t(term),
                candidate,
                last_epoch: e(last_epoch),
                last_term: t(last_term),
            },
            PeerMessage::PreVoteReply { term, granted } => PeerMessage::PreVoteReply {
                term: t(term),
                granted,
            },
            PeerMessage::InstallSnapshot {
                term,
                leader,
                epoch,
                last_term,
                offset,
                total,
                windows,
            } => PeerMessage::InstallSnapshot {
                term: t(term),
                leader,
                epoch: e(epoch),
                last_term: t(last_term),
                offset,
                total,
                windows,
            },
            PeerMessage::SnapshotReply {
                term,
                epoch,
                received,
                installed,
            } => PeerMessage::SnapshotReply {
                term: t(term),
                epoch: e(epoch),
                received,
                installed,
            },
        }
    }

    /// Whether a forged message is delivered in this run.
    fn deliverable(&self, to: NodeId, from: NodeId, msg: &PeerMessage) -> bool {
        if self.forgeries == Forgeries::All {
            return true;
        }
        let member = from != to && (1..=REPLICAS).contains(&from.0);
        let r = &self.nodes[idx(to)].replica;
        let believable = match *msg {
            // Entries or a commit epoch from a plausible leader of this or a later term;
            // except to the leader of that term, which knows it is the only one.
            PeerMessage::AppendEntries { term, leader, .. } => {
                leader == from && term >= r.term() && !(r.is_leader() && term == r.term())
            }
            // An acknowledgement beyond the receiver's log is detectably false.
            PeerMessage::AppendReply {
                term,
                success,
                match_epoch,
                ..
            } => success && term == r.term() && match_epoch.0 <= r.log().len() as u64,
            PeerMessage::Vote { term, granted } => granted && term == r.term(),
            // A vote granted on a forged claim of an up-to-date log counts for the real
            // candidate if it campaigns in that term, however stale its log.
            PeerMessage::RequestVote {
                term, candidate, ..
            } => candidate == from && term >= r.term(),
            // A forged pre-vote changes nothing; a forged grant only starts an election,
            // which still needs real votes, but is as undetectable as a forged vote.
            PeerMessage::PreVote { .. } => false,
            PeerMessage::PreVoteReply { term, granted } => granted && term > r.term(),
            // A snapshot from a plausible leader is as undetectable as its entries.
            PeerMessage::InstallSnapshot { term, leader, .. } => {
                leader == from && term >= r.term() && !(r.is_leader() && term == r.term())
            }
            // A confirmed install of the leader's own snapshot is as undetectable as a
            // successful AppendReply.
            PeerMessage::SnapshotReply {
                term,
                epoch,
                installed,
                ..
            } => installed && term == r.term() && epoch <= r.log_start(),
        };
        !(member && believable)
    }

    fn on_call(&mut self, c: u64) -> Result<(), String> {
        // Executors apply everything committed at once here: each replica may compact
        // through its commit epoch.
        for id in (1..=REPLICAS).map(NodeId) {
            if std::mem::take(&mut self.nodes[idx(id)].archiving) {
                self.input(id, Input::Archived)?;
            }
            let through = self.nodes[idx(id)].replica.commit_epoch();
            self.input(id, Input::Compact { through })?;
        }
        let at = self.now.plus_us(CALL_EVERY_US);
        self.schedule(at, Event::Call(c));
        let seq = self.next_seq[c as usize];
        self.next_seq[c as usize] += 1;
        let txn = Arc::new(Transaction {
            client: ClientId(c),
            seq: RequestSeq(seq),
            gateway: NodeId(100),
            procedure: "p".into(),
            args: Vec::new(),
            footprint: Footprint::new(),
        });
        let to = self.leader_hint;
        self.input(to, Input::Submit(txn))
    }

    fn input(&mut self, id: NodeId, input: Input) -> Result<(), String> {
        let mut out = Vec::new();
        self.nodes[idx(id)]
            .replica
            .handle(self.now, input, &mut out);
        for output in out {
            self.perform(id, output)?;
        }
        self.check_own_commits(id)?;
        self.arm_timer(id);
        Ok(())
    }

    fn perform(&mut self, id: NodeId, output: Output) -> Result<(), String> {
        match output {
            Output::Committed(batch) => self.on_committed(id, batch)?,
            Output::Duplicate { .. } => {}
            Output::NotLeader { leader, .. } => {
                // Calls are not retried: this checks safety, not liveness.
                let next = NodeId(1 + self.rng.below(u64::from(REPLICAS)) as u32);
                self.leader_hint = leader.unwrap_or(next);
            }
            Output::Persist(write) => {
                self.nodes[idx(id)].unsynced.push_back(write);
                let at = self.now.plus_us(100 + self.rng.below(1_000));
                self.schedule(at, Event::Synced(id));
            }
            Output::LeaderKnown(_) | Output::Archive(_) => {}
            Output::ArchiveAhead(_) => self.nodes[idx(id)].archiving = true,
            Output::Compacted { through } => {
                let node = &mut self.nodes[idx(id)];
                if through.next() < node.next_emit {
                    // Compacted what it emitted; forget those, as a plan server does.
                    node.emitted = node.emitted.split_off(&through.next());
                } else {
                    // A snapshot from the leader: emission continues after it.
                    node.emitted.clear();
                    node.next_emit = through.next();
                }
            }
            Output::Send { to, msg } => {
                let copies = if self.rng.chance(0.05) { 2 } else { 1 };
                for _ in 0..copies {
                    let at = self.now.plus_us(100 + self.rng.below(2_000));
                    let event = Event::Deliver {
                        to,
                        from: id,
                        msg: msg.clone(),
                        forged: None,
                    };
                    self.schedule(at, event);
                }
            }
        }
        Ok(())
    }

    fn on_committed(&mut self, id: NodeId, batch: Arc<Batch>) -> Result<(), String> {
        let node = &mut self.nodes[idx(id)];
        let expected = node.next_emit;
        if batch.epoch != expected {
            return Err(format!(
                "{id} emitted epoch {} out of order (expected {expected})",
                batch.epoch
            ));
        }
        node.next_emit = expected.next();
        node.emitted.insert(batch.epoch, batch.clone());
        if self.forgeries == Forgeries::All {
            return Ok(());
        }
        match self.committed.get(&batch.epoch) {
            Some(known) if **known != *batch => Err(format!(
                "{id} committed a different batch at epoch {}: {known:?} vs {batch:?}",
                batch.epoch
            )),
            Some(_) => Ok(()),
            None => {
                self.committed.insert(batch.epoch, batch);
                Ok(())
            }
        }
    }

    /// A replica never changes what it emitted as committed: its log still holds it.
    fn check_own_commits(&self, id: NodeId) -> Result<(), String> {
        let node = &self.nodes[idx(id)];
        for (&epoch, batch) in &node.emitted {
            let entry = node.replica.entry(epoch);
            if entry.is_none_or(|e| *e.batch != **batch) {
                return Err(format!("{id} dropped or rewrote committed epoch {epoch}"));
            }
        }
        Ok(())
    }

    fn arm_timer(&mut self, id: NodeId) {
        let node = &mut self.nodes[idx(id)];
        let Some(deadline) = node.replica.next_deadline() else {
            return;
        };
        if node.timer_at == Some(deadline) {
            return;
        }
        node.timer_at = Some(deadline);
        node.timer_generation += 1;
        let event = Event::Timer {
            node: id,
            generation: node.timer_generation,
        };
        self.schedule(deadline, event);
    }

    fn committed_epochs(&self) -> u64 {
        self.nodes
            .iter()
            .map(|n| n.next_emit.0 - 1)
            .min()
            .unwrap_or(0)
    }

    fn dropped(&self) -> u64 {
        self.nodes
            .iter()
            .map(|n| n.replica.stats().peer_messages_dropped)
            .sum()
    }
}

fn idx(id: NodeId) -> usize {
    id.0 as usize - 1
}

/// A forged injection: when, to whom, claiming which sender, what, and how aimed.
#[derive(Clone, Debug)]
struct Injection {
    at_us: u64,
    to: NodeId,
    from: NodeId,
    msg: PeerMessage,
    aim: Aim,
}

/// Terms around those a short run reaches (4, the receiver's own once rebased, most
/// often), rarely absurd ones.
fn term() -> impl Strategy<Value = u64> {
    prop_oneof![
        15 => Just(4),
        40 => 0u64..8,
        2 => prop_oneof![Just(u64::MAX), Just(1 << 62)],
        1 => any::<u64>(),
    ]
}

/// Epochs around those a run reaches (its logs grow to about a hundred), rarely absurd
/// ones.
fn epoch() -> impl Strategy<Value = Epoch> {
    prop_oneof![20 => (0u64..160).prop_map(Epoch), 1 => any::<u64>().prop_map(Epoch)]
}

/// Mostly members, sometimes a stranger (0 or 4).
fn node() -> impl Strategy<Value = NodeId> {
    prop_oneof![
        9 => (1..=REPLICAS).prop_map(NodeId),
        1 => prop_oneof![Just(NodeId(0)), Just(NodeId(REPLICAS + 1))],
    ]
}

fn batch_txns() -> impl Strategy<Value = Vec<Arc<Transaction>>> {
    proptest::collection::vec(
        (0u64..4, 1u64..6).prop_map(|(client, seq)| {
            Arc::new(Transaction {
                client: ClientId(client),
                seq: RequestSeq(seq),
                gateway: NodeId(66),
                procedure: "forged".into(),
                args: Vec::new(),
                footprint: Footprint::new(),
            })
        }),
        0..3,
    )
}

/// Entries after `prev_epoch`: consecutive with non-decreasing terms up to `term` when
/// `well_formed`, otherwise with arbitrary epochs, terms and versions.
fn entries(
    term: u64,
    prev_epoch: Epoch,
    prev_term: u64,
    well_formed: bool,
) -> impl Strategy<Value = Vec<LogEntry>> {
    let raw = (0u64..4, epoch(), 0u16..3, batch_txns());
    proptest::collection::vec(raw, 0..4).prop_map(move |raw| {
        let mut entry_term = prev_term.min(term);
        let mut out = Vec::new();
        for (i, (bump, epoch, version, txns)) in (1u64..).zip(raw) {
            let (term, epoch, version) = if well_formed {
                entry_term = entry_term.saturating_add(bump / 3).min(term);
                (
                    entry_term,
                    Epoch(prev_epoch.0.saturating_add(i)),
                    LOG_FORMAT_VERSION,
                )
            } else {
                (bump, epoch, version)
            };
            let batch = Arc::new(Batch {
                version,
                epoch,
                txns,
            });
            out.push(LogEntry {
                term: Term(term),
                batch,
            });
        }
        out
    })
}

fn append_entries() -> impl Strategy<Value = PeerMessage> {
    (term(), node(), epoch(), 0u64..4, any::<bool>(), epoch()).prop_flat_map(
        |(term, leader, prev_epoch, back, well_formed, leader_commit)| {
            // A well-formed one's previous term is at most its term.
            let prev_term = if well_formed {
                term.saturating_sub(back)
            } else {
                term.saturating_sub(2).saturating_add(back)
            };
            entries(term, prev_epoch, prev_term, well_formed).prop_map(move |entries| {
                PeerMessage::AppendEntries {
                    term: Term(term),
                    leader,
                    prev_epoch,
                    prev_term: Term(prev_term),
                    entries,
                    leader_commit,
                }
            })
        },
    )
}

fn peer_message() -> impl Strategy<Value = PeerMessage> {
    prop_oneof![
        3 => append_entries(),
        2 => (term(), any::<bool>(), epoch(), proptest::option::of(term())).prop_map(
            |(term, success, match_epoch, conflict_term)| PeerMessage::AppendReply {
                term: Term(term),
                success,
                match_epoch,
                conflict_term: conflict_term.map(Term),
            }
        ),
        2 => (term(), node(), epoch(), term()).prop_map(
            |(term, candidate, last_epoch, last_term)| PeerMessage::RequestVote {
                term: Term(term),
                candidate,
                last_epoch,
                last_term: Term(last_term),
            }
        ),
        2 => (term(), any::<bool>()).prop_map(|(term, granted)| PeerMessage::Vote { term: Term(term), granted }),
        1 => (term(), node(), epoch(), term()).prop_map(
            |(term, candidate, last_epoch, last_term)| PeerMessage::PreVote {
                term: Term(term),
                candidate,
                last_epoch,
                last_term: Term(last_term),
            }
        ),
        1 => (term(), any::<bool>())
            .prop_map(|(term, granted)| PeerMessage::PreVoteReply { term: Term(term), granted }),
        2 => install_snapshot(),
        1 => (term(), epoch(), 0u64..6, any::<bool>()).prop_map(
            |(term, epoch, received, installed)| PeerMessage::SnapshotReply {
                term: Term(term),
                epoch,
                received,
                installed,
            }
        ),
    ]
}

/// A snapshot chunk: mostly consistent (windows within `total`, the last term at most the
/// term), sometimes not.
fn install_snapshot() -> impl Strategy<Value = PeerMessage> {
    let window = (0u64..4, 0u64..8, proptest::collection::vec(0u64..12, 0..3)).prop_map(
        |(client, contiguous, above)| ClientWindow {
            client: ClientId(client),
            contiguous,
            above,
        },
    );
    (
        term(),
        node(),
        epoch(),
        0u64..3,
        0u64..3,
        0u64..4,
        proptest::collection::vec(window, 0..3),
    )
        .prop_map(|(term, leader, epoch, back, offset, extra, windows)| {
            let total = offset + windows.len() as u64 + extra % 3;
            PeerMessage::InstallSnapshot {
                term: Term(term),
                leader,
                epoch,
                last_term: Term(term.saturating_sub(back).saturating_add(extra / 3)),
                offset,
                total: if extra == 3 { 0 } else { total },
                windows,
            }
        })
}

/// Mostly a message whose `leader` or `candidate` is its claimed sender (an impostor
/// otherwise), and a sender other than the receiver (an echo otherwise).
fn injection() -> impl Strategy<Value = Injection> {
    let to = (1..=REPLICAS).prop_map(NodeId);
    let aim = prop_oneof![
        1 => Just(Aim::Absolute),
        4 => Just(Aim::Relative),
        3 => Just(Aim::Leader),
    ];
    (0..RUN_US, to, node(), peer_message(), 0u32..16, aim).prop_map(
        |(at_us, to, mut from, mut msg, twist, aim)| {
            if twist != 0 {
                if from == to {
                    from = NodeId(to.0 % REPLICAS + 1);
                }
                match &mut msg {
                    PeerMessage::AppendEntries { leader: who, .. }
                    | PeerMessage::InstallSnapshot { leader: who, .. }
                    | PeerMessage::RequestVote { candidate: who, .. }
                    | PeerMessage::PreVote { candidate: who, .. } => *who = from,
                    PeerMessage::AppendReply { .. }
                    | PeerMessage::SnapshotReply { .. }
                    | PeerMessage::Vote { .. }
                    | PeerMessage::PreVoteReply { .. } => {}
                }
            }
            Injection {
                at_us,
                to,
                from,
                msg,
                aim,
            }
        },
    )
}

fn run(seed: u64, forgeries: Forgeries, injections: Vec<Injection>) -> Result<Cluster, String> {
    let mut cluster = Cluster::new(seed, forgeries);
    for i in injections {
        cluster.inject(i);
    }
    cluster.run()?;
    Ok(cluster)
}

proptest! {
    #[test]
    fn any_forgery_leaves_each_replica_sound(
        seed in any::<u64>(),
        injections in proptest::collection::vec(injection(), 0..120),
    ) {
        let result = run(seed, Forgeries::All, injections);
        prop_assert!(result.is_ok(), "seed {seed}: {}", result.err().unwrap_or_default());
    }

    #[test]
    fn tolerable_forgeries_keep_committed_prefixes_in_agreement(
        seed in any::<u64>(),
        injections in proptest::collection::vec(injection(), 0..120),
    ) {
        let result = run(seed, Forgeries::Tolerable, injections);
        prop_assert!(result.is_ok(), "seed {seed}: {}", result.err().unwrap_or_default());
    }
}

/// The driver is a working group: without forgeries it commits steadily, so the
/// properties above are not vacuous.
#[test]
fn the_group_commits_without_forgeries() {
    for seed in 0..8 {
        let cluster = run(seed, Forgeries::Tolerable, Vec::new()).unwrap();
        assert!(cluster.committed_epochs() > 20, "seed {seed}");
        assert_eq!(cluster.dropped(), 0);
        let compactions = cluster.nodes.iter().map(|n| n.replica.stats().compactions);
        assert!(
            compactions.min() > Some(0),
            "seed {seed}: every replica compacts"
        );
    }
}

/// The issue #9 message, at many moments: each leader that receives it keeps leading.
#[test]
fn a_forged_append_entries_of_the_current_term_is_dropped_by_the_leader() {
    for seed in 0..8 {
        let mut cluster = Cluster::new(seed, Forgeries::Tolerable);
        // Run until someone leads, then forge its own term from another member.
        while !cluster.nodes.iter().any(|n| n.replica.is_leader()) {
            assert!(cluster.step().unwrap(), "seed {seed}: no leader");
        }
        let leader = cluster
            .nodes
            .iter()
            .position(|n| n.replica.is_leader())
            .unwrap();
        let (leader, term) = (
            NodeId(leader as u32 + 1),
            cluster.nodes[leader].replica.term(),
        );
        let forger = NodeId(leader.0 % REPLICAS + 1);
        let forged = PeerMessage::AppendEntries {
            term,
            leader: forger,
            prev_epoch: Epoch(0),
            prev_term: Term(0),
            entries: Vec::new(),
            leader_commit: Epoch(0),
        };
        cluster
            .input(
                leader,
                Input::Peer {
                    from: forger,
                    msg: forged,
                },
            )
            .unwrap();
        let r = &cluster.nodes[idx(leader)].replica;
        assert!(r.is_leader() && r.term() == term, "seed {seed}");
        assert_eq!(r.stats().peer_messages_dropped, 1);
        let before = cluster.committed_epochs();
        cluster.run().unwrap();
        assert!(cluster.committed_epochs() > before + 10, "seed {seed}");
    }
}

/// Code probes: the generated forgeries reach every reason to drop one, and most of the
/// tolerable ones are delivered, so the properties above exercise the guards they exist
/// for. Deterministic: a fixed proptest runner draws the injections.
#[test]
fn forgeries_reach_every_drop_reason() {
    use detflow_sequencer::PeerDrop;
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    let mut runner = TestRunner::deterministic();
    let injections = proptest::collection::vec(injection(), 100);
    let mut drops = BTreeMap::new();
    let (mut injected, mut skipped) = (0, 0);
    for seed in 0..32 {
        for forgeries in [Forgeries::All, Forgeries::Tolerable] {
            let tree = injections.new_tree(&mut runner).unwrap();
            let cluster = run(seed, forgeries, tree.current()).unwrap();
            if forgeries == Forgeries::Tolerable {
                injected += cluster.injected;
                skipped += cluster.skipped;
            }
            for node in &cluster.nodes {
                for (reason, n) in node.replica.stats().peer_drops.by_reason() {
                    *drops.entry(reason).or_insert(0) += n;
                }
            }
        }
    }
    println!("drops {drops:?}; tolerable: {injected} delivered, {skipped} skipped");
    for reason in PeerDrop::ALL {
        assert!(drops[&reason] > 0, "{reason:?} never reached: {drops:?}");
    }
    assert!(
        injected > 2 * skipped,
        "{injected} delivered, {skipped} skipped"
    );
}
