//! The log-only world: the replicated sequencer alone, with simple submitting clients and
//! no executors or gateways, under harsher faults than the full cluster sees, checked for
//! Raft's safety after every step and for liveness after the faults heal.
//!
//! It runs on the same network model ([`crate::network`]), disk ([`crate::disk`]), event
//! queue and safety checker ([`crate::check::raft`]) as the full world, and drives the
//! replicas only through `Machine`: it appends each `Persist` to the replica's disk,
//! answers `Persisted` after a simulated fsync (sometimes of the oldest write only), and
//! restarts a crashed replica from exactly what its disk recovers. One seed draws the
//! fault parameters (swarm testing):
//!
//! - message loss and duplication on single messages, latency and disk delays;
//! - crashes, keeping a random part of the unsynced tail (torn or not), some right after the
//!   replica's granted vote arrives, when the vote must already be durable;
//! - partitions of the same kinds as the full world's (a failed link, one replica isolated,
//!   a minority, a random split; some one-way);
//! - a transport that drops what was in flight on a reset, or delivers it late;
//! - replay on reconnect: a restarted replica's peers resend what they sent it lately;
//! - buggify (the replicas' rare paths on purpose), and narrow election timeout spreads
//!   that make split votes common;
//! - clients that submit a call twice (a gateway retrying on reconnect).
//!
//! and faults aimed at elections, because a seed of random faults seldom holds several
//! leader changes while entries are only partly replicated, where Raft's classic mistakes
//! live (the commit rule, what must be durable before a vote or an acknowledgement):
//!
//! - partial appends: the leader's AppendEntries with new entries reaches only some
//!   followers, and right after those copies arrive the leader is cut off or crashed;
//! - crashes between a replica's append and the commit it would have learned; new leaders
//!   crashed before their term's first entry commits (at once when their own vote is not
//!   durable yet); leaders crashed right after the first commit of their term (when
//!   entries of earlier terms commit under them) or a commit their own disk lacks;
//! - rapid successive elections: whoever leads is cut off or crashed briefly, again and
//!   again;
//! - one-way links around the leader: it cannot reach some followers, or they cannot
//!   reach it;
//! - late votes: a granted vote's connection stalls, so the vote arrives after the
//!   candidate may have moved on;
//! - one entry per AppendEntries in some seeds, so a follower can hold an entry of an
//!   earlier term without the new leader's entry after it.
//!
//! Besides the checks after every step (one leader per term, Log Matching, leader
//! completeness, commits in order and never two ways), each vote or append acknowledgement
//! a replica sends is checked against what its disk holds durably as it leaves
//! ([`crate::check::durable_sends`]). Probes ([`LogProbes`]) count that each fault struck.
//!
//! The full world exists to check the whole path of a call; this one spends its events on
//! the replication protocol, where rare interleavings (a split vote meeting a restart) need
//! many elections per seed.

use crate::check::{agreement, durable_sends, raft::RaftSafety};
use crate::disk::ReplicaDisk;
use crate::events::{EventQueue, Timer};
use crate::network::{self, Network};
use detflow_protocol::CallId;
use detflow_protocol::Term;
use detflow_protocol::{
    Batch, ClientId, DetRng, Epoch, Footprint, Machine, NodeId, PeerMessage, RequestSeq, Time,
    Transaction, codec,
};
use detflow_sequencer::replica::{Input, Output};
use detflow_sequencer::{Config, Replica, ReplicaBugs, ReplicaConfig};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

/// Virtual time of the fault phase; the healed (liveness) phase follows.
const FAULT_PHASE_US: u64 = 3_000_000;
/// Clients keep calling this long into the healed phase …
const HEALED_CALLS_US: u64 = 1_500_000;
/// … and every call must be committed everywhere by the end of it.
const HEALED_PHASE_US: u64 = 3_000_000;
/// A call issued after healing must commit within this long.
const HEALED_COMMIT_BOUND_US: u64 = 1_500_000;
/// Calls a client keeps outstanding.
const CLIENT_OUTSTANDING_MAX: usize = 2;
/// A client resubmits a call not committed after this long.
const CLIENT_RETRY_US: u64 = 300_000;
const CLIENTS: usize = 3;
/// The chance that a client's wake-up also retries one of its committed calls.
const LATE_RETRY_CHANCE: f64 = 0.05;
/// How often every replica is offered compaction.
const COMPACT_EVERY_US: u64 = 40_000;
/// A runaway run (e.g. a machine asking for a tick in the past forever) is a failure.
const EVENTS_MAX: u64 = 2_000_000;

/// Settings of one log-only run.
#[derive(Clone, Copy, Debug)]
pub struct LogConfig {
    /// The seed every random choice derives from.
    pub seed: u64,
    /// Planted replica bugs (checker tests only).
    pub replica_bugs: ReplicaBugs,
    /// Print every input and output of every replica (for replaying one seed).
    pub trace: bool,
}

impl LogConfig {
    /// Defaults for `seed`: no planted bugs, no trace.
    pub fn new(seed: u64) -> LogConfig {
        LogConfig {
            seed,
            replica_bugs: ReplicaBugs::default(),
            trace: false,
        }
    }
}

/// How often a run reached the paths it exists to test ("code probes"), and its size.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogProbes {
    /// Events processed.
    pub events: u64,
    /// Replicas crashed.
    pub crashes: u64,
    /// Crashes that tore a write.
    pub torn_writes: u64,
    /// Partitions started.
    pub partitions: u64,
    /// Terms in which some replica led.
    pub terms_led: u64,
    /// Epochs committed.
    pub committed_epochs: u64,
    /// Calls committed.
    pub committed_calls: u64,
    /// Log entries truncated by followers (the live incarnations at the end).
    pub truncated: u64,
    /// Submissions refused as duplicates (the live incarnations at the end).
    pub duplicates: u64,
    /// Submissions handed back with `NotLeader` (the live incarnations at the end).
    pub not_leader: u64,
    /// Terms with more than one candidate.
    pub split_terms: u64,
    /// Terms with a candidate.
    pub candidate_terms: u64,
    /// RequestVotes a candidate sent again to a peer that had not answered.
    pub vote_requests_again: u64,
    /// Leaders elected while some replica held entries beyond the committed log.
    pub elections_over_uncommitted: u64,
    /// AppendEntries bursts that reached only some followers before the leader was struck.
    pub partial_appends: u64,
    /// Crashes aimed between a replica's append and the commit it would have learned.
    pub crashes_after_append: u64,
    /// New leaders crashed before their term's first entry could commit.
    pub new_leaders_crashed: u64,
    /// Leaders cut off or crashed to force another election.
    pub leaders_deposed: u64,
    /// One-way cuts between the leader and some followers.
    pub one_way_cuts: u64,
    /// Leaders crashed right after the first commit of their term, or one they did not
    /// hold durably yet.
    pub commit_crashes: u64,
    /// Granted votes whose connection stalled.
    pub late_votes: u64,
    /// Log starts announced (compactions, snapshots installed, restarts after either).
    pub compactions: u64,
    /// Snapshots installed from a leader (the live incarnations at the end).
    pub snapshots_installed: u64,
}

impl LogProbes {
    /// Adds `other` into this.
    pub fn add(&mut self, other: &LogProbes) {
        self.events += other.events;
        self.crashes += other.crashes;
        self.torn_writes += other.torn_writes;
        self.partitions += other.partitions;
        self.terms_led += other.terms_led;
        self.committed_epochs += other.committed_epochs;
        self.committed_calls += other.committed_calls;
        self.truncated += other.truncated;
        self.duplicates += other.duplicates;
        self.not_leader += other.not_leader;
        self.split_terms += other.split_terms;
        self.candidate_terms += other.candidate_terms;
        self.vote_requests_again += other.vote_requests_again;
        self.elections_over_uncommitted += other.elections_over_uncommitted;
        self.compactions += other.compactions;
        self.snapshots_installed += other.snapshots_installed;
        self.partial_appends += other.partial_appends;
        self.crashes_after_append += other.crashes_after_append;
        self.new_leaders_crashed += other.new_leaders_crashed;
        self.leaders_deposed += other.leaders_deposed;
        self.one_way_cuts += other.one_way_cuts;
        self.commit_crashes += other.commit_crashes;
        self.late_votes += other.late_votes;
    }
}

/// The result of one log-only seed.
#[derive(Clone, Debug)]
pub struct LogReport {
    /// The seed.
    pub seed: u64,
    /// The first broken property, with the seed, the replicas' state and the replay
    /// command; `None` when the seed passed.
    pub failure: Option<String>,
    /// A digest of the committed log.
    pub digest: String,
    /// Code probes.
    pub probes: LogProbes,
}

impl LogReport {
    /// Whether the seed passed.
    pub fn passed(&self) -> bool {
        self.failure.is_none()
    }
}

/// Runs and checks one log-only seed. A replica's own assertion firing is a failure of the
/// seed, reported with its message.
pub fn run_log_seed(config: &LogConfig) -> LogReport {
    let run = std::panic::catch_unwind(|| LogWorld::new(config).run());
    match run {
        Ok(report) => report,
        Err(payload) => {
            let what = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            LogReport {
                seed: config.seed,
                failure: Some(format!(
                    "seed {}: a replica assertion failed: {what}\n  replay: {}",
                    config.seed,
                    replay_command(config)
                )),
                digest: String::new(),
                probes: LogProbes::default(),
            }
        }
    }
}

/// The command that replays `config`'s seed with a trace.
fn replay_command(config: &LogConfig) -> String {
    let mut cmd = format!(
        "cargo run --release -p detflow-sim -- log --seed {}",
        config.seed
    );
    for name in config.replica_bugs.names() {
        cmd.push_str(" --bug ");
        cmd.push_str(name);
    }
    cmd.push_str(" --trace");
    cmd
}

/// Fault rates for one run, all drawn from the seed (swarm testing).
#[derive(Clone, Debug)]
struct Params {
    replicas: u32,
    /// A single message lost (the replicas retransmit on their heartbeat).
    loss: f64,
    /// A single message delivered twice.
    duplicate: f64,
    delay_max_us: u64,
    disk_delay_max_us: u64,
    /// Mean time between crashes of some replica; 0: none.
    crash_every_us: u64,
    down_max_us: u64,
    /// Whether a crash may cut the last unsynced record in two.
    tear: bool,
    /// Mean time between partitions; 0: none.
    partition_every_us: u64,
    /// A client sends a submission twice (as a gateway retrying on reconnect).
    submit_duplicate: f64,
    /// A replica that grants a vote crashes right after the vote arrives, and restarts
    /// quickly: the moment a vote must already be durable.
    crash_after_vote: f64,
    /// Whether a crash or partition drops the messages in flight to and from the replica
    /// (a reset connection), or lets them arrive later, as a transport that resends on
    /// reconnect does.
    reset_drops_in_flight: bool,
    /// Whether a restarted replica's peers resend what they sent it lately (a transport
    /// that duplicates on reconnect, DESIGN.md §5).
    replay_on_reconnect: bool,
    /// Whether the replicas take their rare paths on purpose (`DetRng::buggify`).
    buggify: bool,
    /// Election timeouts are drawn from `[150 ms, 150 ms + spread]`; a narrow spread makes
    /// split votes (and so two candidates of one term) common.
    election_spread_us: u64,
    /// Mean time between partial appends; 0: none. The leader's next AppendEntries with
    /// new entries reaches only some followers, and right after those arrive the leader
    /// is cut off or crashed: the next leader meets a log replicated part-way.
    partial_append_every_us: u64,
    /// A replica that appends entries crashes within two disk delays: between its append
    /// and the commit it would have learned.
    crash_after_append: f64,
    /// A newly elected leader crashes before its term's first entry can commit (and
    /// sometimes before its own vote is durable).
    crash_new_leader: f64,
    /// Mean time between depositions of whoever leads (cut off or crashed briefly), for
    /// rapid successive elections; 0: none.
    depose_every_us: u64,
    /// Mean time between one-way cuts around the leader (it cannot reach some followers,
    /// or they cannot reach it); 0: none.
    one_way_every_us: u64,
    /// A leader crashes right after it reports the first commit of its term (when entries
    /// of earlier terms commit under it) or a commit its own disk does not hold yet.
    crash_after_commit: f64,
    /// A granted vote's connection stalls for 100 to 600 ms, so the vote arrives late.
    late_vote: f64,
    /// The most entries per AppendEntries: one at a time lets a follower hold an entry of
    /// an earlier term without the new leader's entry after it.
    entries_per_message_max: usize,
}

impl Params {
    fn draw(rng: &mut DetRng) -> Params {
        let mut params = Params {
            replicas: if rng.chance(0.5) { 3 } else { 5 },
            loss: *rng.pick(&[0.0, 0.01, 0.05, 0.15]),
            duplicate: *rng.pick(&[0.0, 0.02, 0.1]),
            delay_max_us: *rng.pick(&[500, 3_000, 20_000]),
            disk_delay_max_us: *rng.pick(&[200, 2_000, 15_000]),
            crash_every_us: *rng.pick(&[0, 200_000, 600_000, 1_500_000]),
            down_max_us: *rng.pick(&[20_000, 300_000, 1_000_000]),
            tear: rng.chance(0.5),
            partition_every_us: *rng.pick(&[0, 400_000, 1_200_000]),
            submit_duplicate: *rng.pick(&[0.0, 0.05]),
            crash_after_vote: *rng.pick(&[0.0, 0.5, 1.0]),
            reset_drops_in_flight: rng.chance(0.5),
            replay_on_reconnect: rng.chance(0.5),
            buggify: rng.chance(0.5),
            election_spread_us: 150_000,
            partial_append_every_us: *rng.pick(&[0, 150_000, 500_000]),
            crash_after_append: *rng.pick(&[0.0, 0.005, 0.02]),
            crash_new_leader: *rng.pick(&[0.0, 0.2, 0.5]),
            depose_every_us: *rng.pick(&[0, 100_000, 300_000]),
            one_way_every_us: *rng.pick(&[0, 250_000, 700_000]),
            crash_after_commit: *rng.pick(&[0.0, 0.3, 0.7]),
            late_vote: *rng.pick(&[0.0, 0.05, 0.2]),
            entries_per_message_max: *rng.pick(&[1, 4, 16]),
        };
        // Randomized timeouts break split votes only if their spread exceeds the time an
        // election takes (two disk writes, two network hops), so narrow spreads go with a
        // fast network and disk.
        if params.delay_max_us <= 3_000 && params.disk_delay_max_us <= 2_000 {
            params.election_spread_us = *rng.pick(&[10_000, 150_000]);
        }
        params
    }
}

#[derive(Debug)]
enum Event {
    ClientWake(usize),
    /// Every live replica is offered compaction up to a little below its commit epoch (as
    /// if every executor had applied that far), and the offer comes again later.
    Compact,
    /// The crash fault strikes some replica.
    Crash,
    /// A crash aimed at a replica right after its granted vote arrived.
    CrashNode(NodeId),
    /// Whoever leads is cut off or crashed briefly.
    Depose,
    Deliver(Delivery),
    Heal(u64),
    /// Some directions between the leader and its followers fail.
    OneWay,
    /// The next AppendEntries burst with new entries reaches only some followers.
    PartialAppend,
    Partition,
    Restart(NodeId),
    /// The leader whose AppendEntries reached only some followers is cut off or crashed.
    StrikeLeader {
        node: NodeId,
        life: u64,
    },
    Submit {
        to: NodeId,
        txn: Arc<Transaction>,
    },
    Synced {
        node: NodeId,
        life: u64,
    },
    /// A replica's archive write ahead of a compaction is done.
    Archived {
        node: NodeId,
        life: u64,
    },
    Timer {
        node: NodeId,
        life: u64,
    },
}

#[derive(Debug)]
struct Delivery {
    from: NodeId,
    to: NodeId,
    from_life: u64,
    to_life: u64,
    generation: u64,
    msg: PeerMessage,
}

struct Node {
    replica: Option<Replica>,
    /// Bumped at every start: messages, fsyncs and timers of an older life are void.
    life: u64,
    disk: ReplicaDisk,
    disk_busy_until: Time,
    timer: Timer,
}

struct Client {
    id: ClientId,
    next_seq: u64,
    leader: NodeId,
    /// seq → (transaction, issued at, last sent at).
    outstanding: BTreeMap<u64, (Arc<Transaction>, Time, Time)>,
    /// Its latest committed calls, oldest first: a client whose answer was lost retries
    /// one of these long after its commit (and the log must not take it again).
    done: VecDeque<Arc<Transaction>>,
}

/// Committed calls each client remembers for late retries.
const CLIENT_DONE_KEPT: usize = 64;

type Check = Result<(), String>;

struct LogWorld {
    config: LogConfig,
    now: Time,
    rng: DetRng,
    params: Params,
    queue: EventQueue<Event>,
    net: Network<NodeId, PeerMessage>,
    nodes: Vec<Node>,
    clients: Vec<Client>,
    healed: bool,
    raft: RaftSafety,
    committed_calls: BTreeMap<CallId, Epoch>,
    /// The candidates of each term, from their `RequestVote`s.
    candidates: BTreeMap<Term, BTreeSet<NodeId>>,
    /// Every (term, candidate, voter) a `RequestVote` was sent for, to count those asked
    /// again.
    vote_requests: BTreeSet<(Term, NodeId, NodeId)>,
    /// Whether the next AppendEntries burst with new entries is to reach only some
    /// followers.
    partial_append_armed: bool,
    /// The (term, replica) pairs that reported a commit while leading that term.
    terms_committed: BTreeSet<(Term, NodeId)>,
    probes: LogProbes,
}

fn idx(id: NodeId) -> usize {
    id.0 as usize - 1
}

impl LogWorld {
    fn new(config: &LogConfig) -> LogWorld {
        let mut rng = DetRng::new(config.seed);
        let params = Params::draw(&mut rng);
        let nodes = (0..params.replicas)
            .map(|_| Node {
                replica: None,
                life: 0,
                disk: ReplicaDisk::default(),
                disk_busy_until: Time::ZERO,
                timer: Timer::default(),
            })
            .collect();
        let clients = (0..CLIENTS)
            .map(|c| Client {
                id: ClientId(c as u64),
                next_seq: 1,
                leader: NodeId(1 + (c as u32 % params.replicas)),
                outstanding: BTreeMap::new(),
                done: VecDeque::new(),
            })
            .collect();
        LogWorld {
            config: *config,
            now: Time::ZERO,
            rng,
            params,
            queue: EventQueue::new(),
            net: Network::new(),
            nodes,
            clients,
            healed: false,
            raft: RaftSafety::default(),
            committed_calls: BTreeMap::new(),
            candidates: BTreeMap::new(),
            vote_requests: BTreeSet::new(),
            partial_append_armed: false,
            terms_committed: BTreeSet::new(),
            probes: LogProbes::default(),
        }
    }

    fn members(&self) -> Vec<NodeId> {
        (1..=self.params.replicas).map(NodeId).collect()
    }

    fn run(mut self) -> LogReport {
        let failure = self.run_phases().err();
        self.probes.terms_led = self.raft.terms_led();
        self.probes.split_terms = self.candidates.values().filter(|c| c.len() > 1).count() as u64;
        self.probes.candidate_terms = self.candidates.len() as u64;
        for replica in self.nodes.iter().filter_map(|n| n.replica.as_ref()) {
            self.probes.truncated += replica.stats().entries_truncated;
            self.probes.duplicates += replica.stats().duplicates;
            self.probes.not_leader += replica.stats().not_leader;
            self.probes.snapshots_installed += replica.stats().snapshots_installed;
        }
        self.probes.committed_epochs = self.raft.log().len() as u64;
        self.probes.committed_calls = self.committed_calls.len() as u64;
        let mut hasher = blake3::Hasher::new();
        for batch in self.raft.log() {
            hasher.update(&codec::encode(&**batch));
        }
        LogReport {
            seed: self.config.seed,
            failure,
            digest: hasher.finalize().to_hex()[..32].to_owned(),
            probes: self.probes,
        }
    }

    /// The fault phase, then the healed phase; the first broken property ends the run.
    fn run_phases(&mut self) -> Check {
        for id in self.members() {
            self.start(id);
        }
        for c in 0..CLIENTS {
            let at = Time(self.rng.below(10_000));
            self.queue.schedule(at, Event::ClientWake(c));
        }
        self.queue.schedule(Time(COMPACT_EVERY_US), Event::Compact);
        if self.params.crash_every_us > 0 {
            let at = self.exp(self.params.crash_every_us);
            self.queue.schedule(at, Event::Crash);
        }
        if self.params.partition_every_us > 0 {
            let at = self.exp(self.params.partition_every_us);
            self.queue.schedule(at, Event::Partition);
        }
        for (mean_us, event) in [
            (self.params.partial_append_every_us, Event::PartialAppend),
            (self.params.depose_every_us, Event::Depose),
            (self.params.one_way_every_us, Event::OneWay),
        ] {
            if mean_us > 0 {
                let at = self.exp(mean_us);
                self.queue.schedule(at, event);
            }
        }
        let end = Time(FAULT_PHASE_US + HEALED_PHASE_US);
        while let Some((at, event)) = self.queue.pop() {
            if at > end {
                break;
            }
            if !self.healed && at.0 >= FAULT_PHASE_US {
                self.now = Time(FAULT_PHASE_US);
                self.heal_all();
            }
            self.now = at;
            self.probes.events += 1;
            if self.probes.events > EVENTS_MAX {
                return Err(self.fail("too many events: a replica keeps asking for ticks"));
            }
            self.dispatch(event)?;
        }
        self.now = end;
        self.check_liveness()?;
        self.check_agreement()
    }

    fn dispatch(&mut self, event: Event) -> Check {
        match event {
            Event::ClientWake(c) => self.on_client_wake(c),
            Event::Compact => {
                let at = self.now.plus_us(COMPACT_EVERY_US);
                self.queue.schedule(at, Event::Compact);
                for id in self.members() {
                    let Some(replica) = &self.nodes[idx(id)].replica else {
                        continue;
                    };
                    let lag = self.rng.below(24);
                    let through = Epoch(replica.commit_epoch().0.saturating_sub(lag));
                    self.input(id, Input::Compact { through })?;
                }
            }
            Event::Crash => self.on_crash(),
            Event::CrashNode(id) => {
                let down_us = 500 + self.rng.below(5_000);
                self.crash(id, down_us);
            }
            Event::Deliver(d) => return self.on_deliver(d),
            Event::Depose => self.on_depose(),
            Event::OneWay => self.on_one_way(),
            Event::PartialAppend => {
                if !self.healed {
                    self.partial_append_armed = true;
                }
            }
            Event::StrikeLeader { node, life } => self.strike_leader(node, life),
            Event::Heal(id) => {
                // Replicas hear of no reconnects: their heartbeats find the peers again.
                self.net.heal(id);
            }
            Event::Partition => self.on_partition(),
            Event::Restart(id) => self.start(id),
            Event::Submit { to, txn } => return self.input(to, Input::Submit(txn)),
            Event::Synced { node, life } => return self.on_synced(node, life),
            Event::Archived { node, life } => {
                let n = &self.nodes[idx(node)];
                if n.life == life && n.replica.is_some() {
                    return self.input(node, Input::Archived);
                }
            }
            Event::Timer { node, life } => {
                let n = &mut self.nodes[idx(node)];
                if n.life == life && n.replica.is_some() && n.timer.fire(self.now) {
                    return self.input(node, Input::Tick);
                }
            }
        }
        Ok(())
    }

    /// The failure message: what broke, the parameters, each replica's state, and the
    /// command that replays the seed.
    fn fail(&self, what: &str) -> String {
        let mut nodes = String::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let state = match &node.replica {
                None => "down".to_owned(),
                Some(r) => format!(
                    "term {} leader {:?} is_leader {} commit {} log {}..={} {:?}",
                    r.term(),
                    r.leader(),
                    r.is_leader(),
                    r.commit_epoch(),
                    r.log_start().next(),
                    r.log_start().0 + r.log().len() as u64,
                    r.stats()
                ),
            };
            nodes.push_str(&format!("\n  {}: {state}", NodeId(i as u32 + 1)));
        }
        format!(
            "seed {} at {}: {what}\n  params {:?}{nodes}\n  replay: {}",
            self.config.seed,
            self.now,
            self.params,
            replay_command(&self.config)
        )
    }

    fn replica_config(&self, id: NodeId) -> ReplicaConfig {
        let mut config = ReplicaConfig::new(id, self.members());
        config.batching = Config {
            epoch_us: 5_000,
            batch_txns_max: 8,
            ..Config::default()
        };
        config.entries_per_message_max = self.params.entries_per_message_max;
        // Small compactions and chunks, so that crashes and cuts meet them often.
        config.compact_every_epochs = 8;
        config.snapshot_windows_per_message_max = 2;
        config.election_timeout_max_us =
            config.election_timeout_min_us + self.params.election_spread_us;
        config
    }

    /// Starts replica `id` (if down) from what its disk recovers.
    fn start(&mut self, id: NodeId) {
        if self.nodes[idx(id)].replica.is_some() {
            return;
        }
        let config = self.replica_config(id);
        let mut rng = self.rng.fork(u64::from(id.0));
        if self.params.buggify {
            rng.enable_buggify();
        }
        let node = &mut self.nodes[idx(id)];
        let durable = node.disk.recover();
        if self.config.trace {
            println!("{} {id} starts from term {}", self.now, durable.term);
        }
        let mut replica = Replica::new(config, durable, rng);
        replica.set_bugs(self.config.replica_bugs);
        node.replica = Some(replica);
        node.life += 1;
        node.disk_busy_until = self.now;
        node.timer = Timer::default();
        self.raft.restarted(id);
        self.arm_timer(id);
        if self.params.replay_on_reconnect && self.now > Time::ZERO {
            self.replay_to(id);
        }
    }

    /// The peers of a restarted replica resend what they sent it lately, each in its
    /// connection's order; different peers' resends interleave.
    fn replay_to(&mut self, id: NodeId) {
        for from in self.members().into_iter().filter(|p| *p != id) {
            let mut at = self.now.plus_us(100 + self.rng.below(2_000));
            for msg in self.net.recent(from, id) {
                let delivery = self.delivery(from, id, msg);
                self.queue.schedule(at, Event::Deliver(delivery));
                at = at.plus_us(1 + self.rng.below(200));
            }
        }
    }

    /// An exponentially distributed delay with the given mean, from now.
    fn exp(&mut self, mean_us: u64) -> Time {
        let u = self.rng.unit().max(1e-9);
        self.now.plus_us((-(u.ln()) * mean_us as f64) as u64)
    }

    fn random_node(&mut self) -> NodeId {
        NodeId(1 + self.rng.below(u64::from(self.params.replicas)) as u32)
    }

    /// Feeds one input to a replica, checks safety, and performs its outputs.
    fn input(&mut self, id: NodeId, input: Input) -> Check {
        let now = self.now;
        let trace = self.config.trace;
        let Some(replica) = self.nodes[idx(id)].replica.as_mut() else {
            return Ok(());
        };
        if trace {
            println!("{now} {id} <- {input:?}");
        }
        let was_leader = replica.is_leader();
        let mut out = Vec::new();
        replica.handle(now, input, &mut out);
        let (leads, term) = (replica.is_leader(), replica.term());
        let elected = !was_leader && leads;
        if trace {
            for output in &out {
                println!("{now} {id} -> {output:?}");
            }
        }
        let step = self.raft.after_step(replica, &out);
        step.map_err(|e| self.fail(&e))?;
        if elected {
            self.on_elected(id);
        }
        if leads && out.iter().any(|o| matches!(o, Output::Committed(_))) {
            let first = self.terms_committed.insert((term, id));
            let node = &self.nodes[idx(id)];
            let commit = node
                .replica
                .as_ref()
                .map_or(Epoch(0), Replica::commit_epoch);
            let held = node.disk.synced().last_epoch().0;
            if first || commit.0 > held {
                self.maybe_crash_after_commit(id);
            }
        }
        let lost = self.partial_append(id, &out);
        for output in out {
            if let Output::Send {
                to,
                msg: PeerMessage::AppendEntries { .. },
            } = &output
                && lost.contains(to)
            {
                continue;
            }
            self.perform(id, output)?;
        }
        self.arm_timer(id);
        Ok(())
    }

    /// Replica `id` just became leader: counts an election over a log replicated part-way,
    /// and sometimes crashes the new leader before its term's first entry can commit.
    fn on_elected(&mut self, id: NodeId) {
        let committed = self.raft.log().len();
        // Not counting the empty entry the new leader just appended for its term.
        let ahead = self
            .nodes
            .iter()
            .filter_map(|n| n.replica.as_ref())
            .any(|r| {
                let last = r.log_start().0 as usize + r.log().len();
                last - usize::from(r.id() == id) > committed
            });
        self.probes.elections_over_uncommitted += u64::from(ahead);
        if !self.healed && self.rng.chance(self.params.crash_new_leader) && self.may_crash() {
            self.probes.new_leaders_crashed += 1;
            // At once if the leader's own term and vote are not durable yet.
            let node = &self.nodes[idx(id)];
            let term = node.replica.as_ref().map_or(Term(0), Replica::term);
            let within_us = match node.disk.synced().term < term {
                true => 1,
                false => self.params.disk_delay_max_us + 1,
            };
            let at = self.now.plus_us(self.rng.below(within_us));
            self.queue.schedule(at, Event::CrashNode(id));
        }
    }

    /// A leader that just reported the first commit of its term, or a commit its own disk
    /// does not hold yet, sometimes crashes at once.
    fn maybe_crash_after_commit(&mut self, id: NodeId) {
        if !self.healed && self.rng.chance(self.params.crash_after_commit) && self.may_crash() {
            self.probes.commit_crashes += 1;
            let at = self.now.plus_us(1);
            self.queue.schedule(at, Event::CrashNode(id));
        }
    }

    /// With a partial append armed, when leader `id` just sent new entries to two or more
    /// followers: the followers whose copy is lost (at least one, never all), and the
    /// strike on the leader once the others' copies have arrived.
    fn partial_append(&mut self, id: NodeId, out: &[Output]) -> BTreeSet<NodeId> {
        let mut lost = BTreeSet::new();
        let leads = self.nodes[idx(id)]
            .replica
            .as_ref()
            .is_some_and(Replica::is_leader);
        if !self.partial_append_armed || self.healed || !leads {
            return lost;
        }
        let to: Vec<NodeId> = out
            .iter()
            .filter_map(|o| match o {
                Output::Send {
                    to,
                    msg: PeerMessage::AppendEntries { entries, .. },
                } if !entries.is_empty() => Some(*to),
                _ => None,
            })
            .collect();
        if to.len() < 2 {
            return lost;
        }
        self.partial_append_armed = false;
        let kept = *self.rng.pick(&to);
        for peer in to.into_iter().filter(|p| *p != kept) {
            if lost.is_empty() || self.rng.chance(0.5) {
                lost.insert(peer);
            }
        }
        self.probes.partial_appends += 1;
        // Every copy sent now arrives within the longest delay (FIFO: so did the earlier).
        let at = self.now.plus_us(self.params.delay_max_us + 25);
        let life = self.nodes[idx(id)].life;
        self.queue
            .schedule(at, Event::StrikeLeader { node: id, life });
        let next = self.exp(self.params.partial_append_every_us);
        self.queue.schedule(next, Event::PartialAppend);
        lost
    }

    /// Whether one more replica may crash on purpose: a majority stays up.
    fn may_crash(&self) -> bool {
        let down = self.nodes.iter().filter(|n| n.replica.is_none()).count();
        down < self.nodes.len() / 2
    }

    /// The live leader of the highest term, if any.
    fn leader(&self) -> Option<NodeId> {
        self.nodes
            .iter()
            .filter_map(|n| n.replica.as_ref())
            .filter(|r| r.is_leader())
            .max_by_key(|r| r.term())
            .map(Replica::id)
    }

    /// Cuts every link of `id`, both ways, for `for_us`.
    fn isolate(&mut self, id: NodeId, for_us: u64) {
        let mut cut = BTreeSet::new();
        for peer in self.members().into_iter().filter(|p| *p != id) {
            cut.insert((id, peer));
            cut.insert((peer, id));
        }
        let cut = self.net.cut(cut, false);
        let at = self.now.plus_us(for_us);
        self.queue.schedule(at, Event::Heal(cut));
    }

    /// The leader whose AppendEntries reached only some followers is cut off or crashed
    /// before it can tell the others (if it still lives the life it sent them in).
    fn strike_leader(&mut self, id: NodeId, life: u64) {
        let node = &self.nodes[idx(id)];
        if self.healed || node.life != life || node.replica.is_none() {
            return;
        }
        if self.rng.chance(0.5) {
            let down_us = 1_000 + self.rng.below(300_000);
            self.crash(id, down_us);
        } else {
            let for_us = 50_000 + self.rng.below(450_000);
            self.isolate(id, for_us);
        }
    }

    /// Rapid successive elections: whoever leads is cut off or crashed briefly.
    fn on_depose(&mut self) {
        if self.healed {
            return;
        }
        let next = self.exp(self.params.depose_every_us);
        self.queue.schedule(next, Event::Depose);
        let Some(id) = self.leader() else { return };
        self.probes.leaders_deposed += 1;
        if self.rng.chance(0.5) && self.may_crash() {
            let down_us = 1_000 + self.rng.below(100_000);
            self.crash(id, down_us);
        } else {
            let for_us = 20_000 + self.rng.below(280_000);
            self.isolate(id, for_us);
        }
    }

    /// Asymmetric links around the leader: for some followers one direction to or from the
    /// leader fails, so a follower hears no heartbeats while the leader hears it, or the
    /// leader loses their acknowledgements while they still follow it.
    fn on_one_way(&mut self) {
        if self.healed {
            return;
        }
        let next = self.exp(self.params.one_way_every_us);
        self.queue.schedule(next, Event::OneWay);
        let Some(leader) = self.leader() else { return };
        let same_way = self.rng.chance(0.5);
        let outward = self.rng.chance(0.5);
        let mut cut = BTreeSet::new();
        for peer in self.members().into_iter().filter(|p| *p != leader) {
            if !cut.is_empty() && self.rng.chance(0.5) {
                continue;
            }
            let out_of_leader = if same_way {
                outward
            } else {
                self.rng.chance(0.5)
            };
            cut.insert(match out_of_leader {
                true => (leader, peer),
                false => (peer, leader),
            });
        }
        self.probes.one_way_cuts += 1;
        let cut = self.net.cut(cut, false);
        let at = self.now.plus_us(50_000 + self.rng.below(750_000));
        self.queue.schedule(at, Event::Heal(cut));
    }

    fn arm_timer(&mut self, id: NodeId) {
        let now = self.now;
        let node = &mut self.nodes[idx(id)];
        let Some(replica) = &node.replica else { return };
        if let Some(at) = node.timer.arm(replica.next_deadline(), now) {
            let life = node.life;
            self.queue.schedule(at, Event::Timer { node: id, life });
        }
    }

    fn perform(&mut self, id: NodeId, output: Output) -> Check {
        match output {
            Output::Committed(batch) => return self.on_committed(id, batch),
            Output::Duplicate { .. } => {}
            Output::Compacted { through } => {
                self.probes.compactions += 1;
                self.raft.compacted(id, through);
            }
            Output::NotLeader { txn, leader } => self.on_not_leader(txn, leader),
            Output::Persist(write) => {
                let node = &mut self.nodes[idx(id)];
                if let Some(last) = node.disk.unsynced().next_back() {
                    assert_eq!(write.id.0, last.0 + 1, "write ids are consecutive");
                }
                let appends = !write.append.is_empty();
                node.disk.append(write);
                if appends
                    && !self.healed
                    && self.rng.chance(self.params.crash_after_append)
                    && self.may_crash()
                {
                    // Between the append and the commit the replica would have learned.
                    self.probes.crashes_after_append += 1;
                    let within = 2 * self.params.disk_delay_max_us;
                    let at = self.now.plus_us(self.rng.below(within + 1));
                    self.queue.schedule(at, Event::CrashNode(id));
                }
                let delay = 50 + self.rng.below(self.params.disk_delay_max_us);
                let node = &mut self.nodes[idx(id)];
                let at = node.disk_busy_until.max(self.now).plus_us(delay);
                node.disk_busy_until = at;
                let life = node.life;
                self.queue.schedule(at, Event::Synced { node: id, life });
            }
            Output::Send { to, msg } => {
                if let PeerMessage::RequestVote {
                    term, candidate, ..
                } = &msg
                {
                    self.candidates.entry(*term).or_default().insert(*candidate);
                    if !self.vote_requests.insert((*term, *candidate, to)) {
                        self.probes.vote_requests_again += 1;
                    }
                }
                let node = &self.nodes[idx(id)];
                if let Some(replica) = &node.replica {
                    durable_sends::check(replica, &node.disk, to, &msg)
                        .map_err(|e| self.fail(&e))?;
                }
                self.send(id, to, msg);
            }
            // The log world has no gateways to tell, and keeps no archive: the full world
            // checks archives. An archive write ahead of a compaction only takes time.
            Output::LeaderKnown(_) | Output::Archive(_) => {}
            Output::ArchiveAhead(_) => {
                // A fixed delay: no draw, so the faults' random stream is the one it was.
                let delay = 2 * self.params.disk_delay_max_us;
                let life = self.nodes[idx(id)].life;
                let event = Event::Archived { node: id, life };
                self.queue.schedule(self.now.plus_us(delay), event);
            }
        }
        Ok(())
    }

    fn delivery(&self, from: NodeId, to: NodeId, msg: PeerMessage) -> Delivery {
        Delivery {
            from,
            to,
            from_life: self.nodes[idx(from)].life,
            to_life: self.nodes[idx(to)].life,
            generation: self.net.generation(from, to),
            msg,
        }
    }

    fn send(&mut self, from: NodeId, to: NodeId, msg: PeerMessage) {
        if self.params.replay_on_reconnect {
            // Delivered or not: the sender's transport resends it after a reconnect.
            self.net.remember(from, to, msg.clone());
        }
        if self.net.is_blocked(from, to) || self.rng.chance(self.params.loss) {
            return;
        }
        let voted = matches!(msg, PeerMessage::Vote { granted: true, .. });
        if voted && !self.healed && self.rng.chance(self.params.late_vote) {
            // The vote (and what follows it on the connection) arrives after the candidate
            // may have moved on to a later term.
            self.probes.late_votes += 1;
            let until = self.now.plus_us(100_000 + self.rng.below(500_000));
            self.net.stall(from, to, until);
        }
        let delay = 20 + self.rng.below(self.params.delay_max_us);
        let at = self.net.arrival(from, to, self.now.plus_us(delay));
        if voted && !self.healed && self.rng.chance(self.params.crash_after_vote) {
            // Right after the vote arrives: before the new leader's first entries can be
            // durable here.
            self.queue.schedule(at.plus_us(1), Event::CrashNode(from));
        }
        let copies = if self.rng.chance(self.params.duplicate) {
            2
        } else {
            1
        };
        for copy in 0..copies {
            let delivery = self.delivery(from, to, msg.clone());
            self.queue
                .schedule(at.plus_us(copy), Event::Deliver(delivery));
        }
    }

    fn on_deliver(&mut self, d: Delivery) -> Check {
        if self.nodes[idx(d.to)].replica.is_none() || self.net.is_blocked(d.from, d.to) {
            return Ok(());
        }
        let same_connection = self.nodes[idx(d.to)].life == d.to_life
            && self.nodes[idx(d.from)].life == d.from_life
            && self.net.generation(d.from, d.to) == d.generation;
        if !same_connection && self.params.reset_drops_in_flight {
            return Ok(());
        }
        self.input(
            d.to,
            Input::Peer {
                from: d.from,
                msg: d.msg,
            },
        )
    }

    /// The disk finished an fsync: the oldest unsynced write, and sometimes every write
    /// queued behind it, is durable; the replica hears the highest id.
    fn on_synced(&mut self, id: NodeId, life: u64) -> Check {
        let all = self.rng.chance(0.3);
        let node = &mut self.nodes[idx(id)];
        if node.life != life || node.replica.is_none() {
            return Ok(());
        }
        let synced = match all {
            true => node.disk.sync(),
            false => node.disk.sync_first(1),
        };
        match synced {
            Some(write) => self.input(id, Input::Persisted { write }),
            None => Ok(()),
        }
    }

    fn on_committed(&mut self, id: NodeId, batch: Arc<Batch>) -> Check {
        let term = self.nodes[idx(id)]
            .replica
            .as_ref()
            .map_or(Term(0), |m| m.term());
        let first = self
            .raft
            .committed(id, term, &batch)
            .map_err(|e| self.fail(&e))?;
        if !first {
            return Ok(());
        }
        // Only the first report of an epoch reaches the clients.
        for txn in &batch.txns {
            let key = txn.call_id();
            if let Some(earlier) = self.committed_calls.insert(key, batch.epoch) {
                return Err(self.fail(&format!(
                    "call {key} committed twice: epochs {earlier} and {}",
                    batch.epoch
                )));
            }
            let client = &mut self.clients[txn.client.0 as usize];
            if client.done.len() == CLIENT_DONE_KEPT {
                client.done.pop_front();
            }
            client.done.push_back(txn.clone());
            let done = client.outstanding.remove(&txn.seq.0);
            if let Some((_, issued, _)) = done {
                self.check_latency(issued)?;
            }
        }
        Ok(())
    }

    fn check_latency(&self, issued: Time) -> Check {
        let healed_at = FAULT_PHASE_US + 200_000;
        if issued.0 >= healed_at && self.now.since_us(issued) > HEALED_COMMIT_BOUND_US {
            return Err(self.fail(&format!(
                "a call issued at {issued} after healing took until {} to commit",
                self.now
            )));
        }
        Ok(())
    }

    /// A replica handed a call back: its client tries the named leader (or any replica).
    fn on_not_leader(&mut self, txn: Arc<Transaction>, leader: Option<NodeId>) {
        let c = txn.client.0 as usize;
        let leader = leader.unwrap_or_else(|| self.random_node());
        self.clients[c].leader = leader;
        if self.clients[c].outstanding.contains_key(&txn.seq.0) {
            let at = self.now.plus_us(1_000 + self.rng.below(5_000));
            self.queue.schedule(at, Event::Submit { to: leader, txn });
        }
    }

    /// A client resubmits its calls that timed out and, while the run wants more, makes a
    /// new one.
    fn on_client_wake(&mut self, c: usize) {
        let calls_end = FAULT_PHASE_US + HEALED_CALLS_US;
        let at = self.now.plus_us(2_000 + self.rng.below(8_000));
        self.queue.schedule(at, Event::ClientWake(c));
        let now = self.now;
        let client = &mut self.clients[c];
        let retries: Vec<Arc<Transaction>> = client
            .outstanding
            .values_mut()
            .filter(|(_, _, sent)| now.since_us(*sent) >= CLIENT_RETRY_US)
            .map(|(txn, _, sent)| {
                *sent = now;
                txn.clone()
            })
            .collect();
        let mut fresh = None;
        if now.0 < calls_end && client.outstanding.len() < CLIENT_OUTSTANDING_MAX {
            let txn = Arc::new(Transaction {
                client: client.id,
                seq: RequestSeq(client.next_seq),
                gateway: NodeId(100),
                procedure: "p".into(),
                args: Vec::new(),
                footprint: Footprint::new(),
            });
            client.next_seq += 1;
            client
                .outstanding
                .insert(txn.seq.0, (txn.clone(), now, now));
            fresh = Some(txn);
        }
        let mut retries = retries;
        if !client.done.is_empty() && self.rng.chance(LATE_RETRY_CHANCE) {
            let i = self.rng.below(client.done.len() as u64) as usize;
            retries.push(client.done[i].clone());
        }
        if !retries.is_empty() && self.rng.chance(0.3) {
            // A client whose calls time out sometimes tries another replica.
            self.clients[c].leader = self.random_node();
        }
        let to = self.clients[c].leader;
        for txn in retries.into_iter().chain(fresh) {
            let copies = if self.rng.chance(self.params.submit_duplicate) {
                2
            } else {
                1
            };
            for _ in 0..copies {
                let at = self.now.plus_us(100 + self.rng.below(2_000));
                let txn = txn.clone();
                self.queue.schedule(at, Event::Submit { to, txn });
            }
        }
    }

    fn on_crash(&mut self) {
        if self.healed {
            return;
        }
        let next = self.exp(self.params.crash_every_us);
        self.queue.schedule(next, Event::Crash);
        let id = self.random_node();
        // Keep a majority up most of the time: never crash a second node while a minority
        // is already down … unless the seed says so (a full outage must also be survived).
        let down = self.nodes.iter().filter(|n| n.replica.is_none()).count();
        if down + 1 > self.nodes.len() / 2 && !self.rng.chance(0.1) {
            return;
        }
        let down_us = 1_000 + self.rng.below(self.params.down_max_us);
        self.crash(id, down_us);
    }

    /// Crashes replica `id` for `down_us`: it loses its memory and what its disk loses.
    fn crash(&mut self, id: NodeId, down_us: u64) {
        let node = &mut self.nodes[idx(id)];
        if self.healed || node.replica.is_none() {
            return;
        }
        if self.config.trace {
            println!("{} {id} crashes for {down_us}us", self.now);
        }
        let damage = node.disk.crash(&mut self.rng, self.params.tear);
        node.replica = None;
        self.net.forget_arrivals(id);
        self.probes.crashes += 1;
        self.probes.torn_writes += u64::from(damage.torn);
        let at = self.now.plus_us(down_us);
        self.queue.schedule(at, Event::Restart(id));
    }

    fn on_partition(&mut self) {
        if self.healed {
            return;
        }
        let next = self.exp(self.params.partition_every_us);
        self.queue.schedule(next, Event::Partition);
        let members = self.members();
        let cut = network::draw_partition(&mut self.rng, &members, &members);
        let id = self.net.cut(cut, false);
        self.probes.partitions += 1;
        let at = self.now.plus_us(50_000 + self.rng.below(800_000));
        self.queue.schedule(at, Event::Heal(id));
    }

    /// The liveness phase: no more faults; every replica runs and every link works.
    fn heal_all(&mut self) {
        self.healed = true;
        for id in self.net.cuts() {
            self.net.heal(id);
        }
        self.params.loss = 0.0;
        for id in self.members() {
            self.start(id);
        }
    }

    fn check_liveness(&self) -> Check {
        for client in &self.clients {
            if let Some((seq, (_, issued, _))) = client.outstanding.first_key_value() {
                return Err(self.fail(&format!(
                    "after healing, call ({}, {seq}) issued at {issued} never committed",
                    client.id
                )));
            }
        }
        let last = self
            .raft
            .log()
            .next_back()
            .map_or(Epoch::default(), |batch| batch.epoch);
        for (i, node) in self.nodes.iter().enumerate() {
            let id = NodeId(i as u32 + 1);
            let Some(r) = &node.replica else {
                return Err(self.fail(&format!("{id} is down after healing")));
            };
            let emitted = self.raft.next_commit(id);
            if r.commit_epoch() != last || emitted != last.next() {
                return Err(self.fail(&format!(
                    "{id} committed up to {} (reported {}), the group up to {last}",
                    r.commit_epoch(),
                    emitted.0 - 1
                )));
            }
        }
        Ok(())
    }

    /// The full world's agreement checker, over the replicas' final logs.
    fn check_agreement(&self) -> Check {
        let logs: Vec<_> = self
            .nodes
            .iter()
            .map(|n| match &n.replica {
                Some(r) => (r.log_start(), r.log().to_vec(), r.commit_epoch()),
                None => (Epoch(0), Vec::new(), Epoch(0)),
            })
            .collect();
        let log: Vec<_> = self.raft.log().cloned().collect();
        match agreement::check_logs(&logs, &log).first() {
            Some(failure) => Err(self.fail(failure)),
            None => Ok(()),
        }
    }
}
