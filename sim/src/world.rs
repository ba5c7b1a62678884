//! The simulated cluster: every component on one thread, in virtual time, with faults.
//!
//! One seed derives the whole run: the network's latency profile, every message delay,
//! fsync delays, the clients' think times, the workload's calls, and (with faults on) which
//! fault types strike, how often, and where. Channels are FIFO per connection; messages on
//! different connections interleave freely. A crash loses a node's memory and its disk's
//! unsynced tail; a connection reset or a partition drops messages in flight.
//!
//! A run has two phases, as TigerBeetle's VOPR: faults strike while the clients issue
//! calls; then everything heals (crashed nodes restart, partitions end) and the run must
//! converge: every call answered, every partition caught up with the committed log.

use crate::disk::Disk;
use crate::faults::{FaultConfig, FaultCounts, FaultPlan};
use crate::store::SimStore;
use detflow_executor::{Bugs, Executor, Registry};
use detflow_gateway::Gateway;
use detflow_protocol::message::{Message, Reply};
use detflow_protocol::session::{self, Pending, RetryPolicy, Session, SessionBugs};
use detflow_protocol::{
    Batch, ClientId, DetRng, Epoch, Key, LogEntry, Machine, NodeId, Owner, PartitionId, RequestSeq,
    Time, Value, codec,
};
use detflow_scheduler::{PartitionMap, PlanServer, plan_server};
use detflow_sequencer::replica::{self, Durable, LogWrite, Replica, ReplicaBugs, ReplicaConfig};
use detflow_workloads::{Answer, Request, Workload};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::sync::Arc;

/// A simulated component's address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Addr {
    Client(u32),
    Executor(u32),
    Gateway(u32),
    Replica(u32),
}

/// Every simulated message is a production wire message.
type Msg = Message;

#[derive(Debug)]
enum Event {
    /// A client's call may have a deadline due (its session's timer).
    ClientTimer(u32),
    ClientWake(u32),
    Deliver(Delivery),
    ExecutorTimer {
        p: u32,
        incarnation: u64,
    },
    ExecutorSynced {
        p: u32,
        incarnation: u64,
    },
    FaultTick,
    HealPartition(u64),
    ReplicaSynced {
        r: u32,
        incarnation: u64,
    },
    ReplicaTimer {
        r: u32,
        incarnation: u64,
    },
    Restart(Addr),
    /// A crash aimed at a particular step of a replica (around the sync of a write that
    /// records its vote, or of entries it appended).
    StepCrash {
        r: u32,
        incarnation: u64,
    },
}

#[derive(Clone, Debug)]
struct Delivery {
    from: Addr,
    to: Addr,
    from_incarnation: u64,
    to_incarnation: u64,
    link_generation: u64,
    msg: Msg,
}

struct Scheduled {
    at: Time,
    seq: u64,
    event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// Settings of one simulated run.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Workload name (`bank`, `ycsb`, `kv`).
    pub workload: String,
    /// The seed every random choice derives from.
    pub seed: u64,
    /// Executor partitions.
    pub partitions: u32,
    /// Sequencer replicas (1, 3 or 5).
    pub replicas: u32,
    /// Gateways.
    pub gateways: u32,
    /// Calls the clients make in total.
    pub txns: u64,
    /// Concurrent clients, each with one call in flight.
    pub clients: u32,
    /// The sequencer's epoch length.
    pub epoch_duration_us: u64,
    /// The sequencer's batch size cap.
    pub batch_txns_max: usize,
    /// Faults to inject.
    pub faults: FaultConfig,
    /// Planted executor bugs (checker tests only).
    pub bugs: Bugs,
    /// Planted replica bugs (checker tests only).
    pub replica_bugs: ReplicaBugs,
    /// Planted client-session bugs (checker tests only).
    pub session_bugs: SessionBugs,
}

impl SimConfig {
    /// Defaults for `workload` and `seed`: no faults.
    pub fn new(workload: &str, seed: u64) -> SimConfig {
        SimConfig {
            workload: workload.to_owned(),
            seed,
            partitions: 4,
            replicas: 3,
            gateways: 2,
            txns: 400,
            clients: 16,
            epoch_duration_us: 5_000,
            batch_txns_max: 10_000,
            faults: FaultConfig::none(),
            bugs: Bugs::default(),
            replica_bugs: ReplicaBugs::default(),
            session_bugs: SessionBugs::default(),
        }
    }
}

/// What a client asked and what it was told.
#[derive(Clone, Debug)]
pub struct CallRecord {
    /// The procedure name.
    pub procedure: String,
    /// The encoded arguments.
    pub args: Vec<u8>,
    /// Every final reply received (`Done` or `Rejected`), in order; later ones are
    /// duplicates that must agree with the first.
    pub replies: Vec<Reply>,
    /// Attempts made (1 plus retries).
    pub attempts: u32,
}

/// Seeded network and disk timing, chosen per seed (swarm testing).
#[derive(Clone, Copy, Debug)]
struct Timing {
    /// The replicas' election timeout range and heartbeat: tight profiles make elections,
    /// split votes and stale leaders common.
    election_us: (u64, u64, u64),
    latency_max_us: u64,
    fsync_max_us: u64,
    think_max_us: u64,
    malformed_chance: f64,
    /// Whether every message goes through the wire encoding (framing and MessagePack) and
    /// back, as it does between processes.
    wire: bool,
}

/// Everything a finished run leaves for the checkers.
pub(crate) struct Outcome {
    /// The committed log, from the replica that committed most.
    pub(crate) log: Vec<Arc<Batch>>,
    /// Every call by `(client, seq)`.
    pub(crate) calls: BTreeMap<(ClientId, RequestSeq), CallRecord>,
    /// Each executor's final store, by partition.
    pub(crate) stores: Vec<detflow_executor::MemStore>,
    /// Each executor's next epoch to apply.
    pub(crate) executor_epochs: Vec<Epoch>,
    /// Each replica's log and commit epoch at the end.
    pub(crate) replica_logs: Vec<(Vec<LogEntry>, Epoch)>,
    /// Failures the run noticed as it went (replicas committing different batches).
    pub(crate) online_failures: Vec<String>,
    /// Calls without a final answer at the end.
    pub(crate) unanswered: u64,
    /// The registry the run used.
    pub(crate) registry: Arc<Registry>,
    /// The partition map the run used.
    pub(crate) map: PartitionMap,
    /// The workload, for its invariant checker.
    pub(crate) workload: Box<dyn Workload>,
    /// The initial rows.
    pub(crate) initial: Vec<(Key, Value)>,
    /// Virtual time at the end.
    pub(crate) end: Time,
    /// When everything was healed.
    pub(crate) healed_at: Time,
    /// Events processed.
    pub(crate) events: u64,
    /// Faults injected.
    pub(crate) faults: FaultCounts,
}

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The workload cannot be built as asked.
    #[error(transparent)]
    Workload(#[from] detflow_workloads::WorkloadError),
    /// The workload's partition scheme is invalid.
    #[error("invalid partition scheme: {0}")]
    Scheme(#[from] detflow_scheduler::SchemeError),
    /// A nonsensical setting.
    #[error("{0}")]
    Config(String),
}

/// After healing, every call must be answered within this much virtual time.
pub(crate) const LIVENESS_US: u64 = 60_000_000;
/// After the last answer, the run goes on this long so partitions catch up and disks sync.
const QUIET_US: u64 = 3_000_000;
/// Faults stop and everything heals by this time at the latest.
const FAULT_WINDOW_US: u64 = 20_000_000;
const FOOTPRINT_ENTRIES_MAX: usize = 4096;
/// Recently delivered messages remembered per connection, for duplicate delivery.
const RECENT_PER_LINK: usize = 4;

/// The message as the receiving process would decode it from a frame.
fn through_the_wire(msg: &Msg) -> Msg {
    use detflow_protocol::frame::{self, DEFAULT_MAX_FRAME_BYTES, FrameDecoder};
    let bytes = frame::encode(msg, DEFAULT_MAX_FRAME_BYTES)
        .unwrap_or_else(|e| panic!("a message does not encode: {e}: {msg:?}"));
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES);
    decoder.push(&bytes);
    match decoder.next_frame::<Msg>() {
        Ok(Some(decoded)) => decoded,
        other => panic!("a message does not survive the wire: {other:?}: {msg:?}"),
    }
}

fn replica_id(r: u32) -> NodeId {
    NodeId(100 + r)
}

fn gateway_id(g: u32) -> NodeId {
    NodeId(200 + g)
}

struct ReplicaNode {
    machine: Option<Replica>,
    disk: Disk,
    incarnation: u64,
    timer_at: Option<Time>,
    sync_scheduled: bool,
    last_write: u64,
    /// The plan server beside the replica, fed with its `Committed` outputs as a
    /// production driver does; it starts empty with each incarnation.
    plans: Option<PlanServer>,
    /// The leader this replica last followed, told to the gateway on the same node.
    leader: Option<NodeId>,
}

struct ExecutorNode {
    machine: Option<Executor<SimStore>>,
    /// The store while the node is down (its disk survives the crash).
    parked: Option<SimStore>,
    incarnation: u64,
    timer_at: Option<Time>,
    sync_scheduled: bool,
}

struct GatewayNode {
    machine: Option<Gateway>,
    incarnation: u64,
}

struct ClientNode {
    /// The client library's session machine: numbering, gateway choice, retries.
    session: Session,
    /// The call in flight.
    pending: Option<Pending>,
    /// When the client's timer is set for.
    timer_at: Option<Time>,
    /// The call in flight as the workload made it, for [`Workload::follow_up`].
    request: Option<Request>,
    /// The next call of the same logical transaction, sent at the next wake.
    follow: Option<Request>,
}

pub(crate) struct World {
    now: Time,
    queue: BinaryHeap<Reverse<Scheduled>>,
    next_seq: u64,
    /// Per connection (unordered pair): last delivery time per direction, and generation.
    last_delivery: BTreeMap<(Addr, Addr), Time>,
    link_generation: BTreeMap<(Addr, Addr), u64>,
    recent: BTreeMap<(Addr, Addr), VecDeque<Msg>>,
    blocked: BTreeMap<u64, BTreeSet<(Addr, Addr)>>,
    /// The cuts in `blocked` that are silent drops: nobody hears when they end.
    silent: BTreeSet<u64>,
    next_partition: u64,
    rng: DetRng,
    workload_rng: DetRng,
    timing: Timing,
    plan: FaultPlan,
    counts: FaultCounts,
    healed: bool,
    healed_at: Time,
    replicas: Vec<ReplicaNode>,
    executors: Vec<ExecutorNode>,
    gateways: Vec<GatewayNode>,
    clients: Vec<ClientNode>,
    map: PartitionMap,
    workload: Box<dyn Workload>,
    registry: Arc<Registry>,
    initial: Vec<(Key, Value)>,
    committed: BTreeMap<Epoch, Arc<Batch>>,
    online_failures: Vec<String>,
    calls: BTreeMap<(ClientId, RequestSeq), CallRecord>,
    issued: u64,
    answered: u64,
    last_answer: Time,
    config: SimConfig,
    events: u64,
}

impl World {
    pub(crate) fn new(config: SimConfig) -> Result<World, SetupError> {
        if config.partitions == 0
            || config.clients == 0
            || config.batch_txns_max == 0
            || config.gateways == 0
            || config.replicas == 0
        {
            return Err(SetupError::Config(
                "partitions, replicas, gateways, clients and the batch size must be at least 1"
                    .into(),
            ));
        }
        let workload = detflow_workloads::by_name(&config.workload, config.partitions)?;
        let mut scheme = workload.scheme();
        scheme.partitions = config.partitions;
        let map = PartitionMap::new(scheme)?;
        let mut registry = Registry::new();
        workload.register(&mut registry);
        let registry = Arc::new(registry);

        let mut rng = DetRng::new(config.seed);
        let workload_rng = rng.fork(1);
        let latency_max_us = *rng.pick(&[20, 200, 1_000, 5_000]);
        let fsync_max_us = *rng.pick(&[100, 1_000, 10_000]);
        // Tight election timeouts make elections, split votes and stale leaders common, but
        // a spread below an election round trip (two hops, two fsyncs) can livelock.
        let round_trip_us = 2 * (latency_max_us + fsync_max_us);
        let election_min_us = (*rng.pick(&[150_000, 40_000, 15_000])).max(4 * round_trip_us);
        let timing = Timing {
            election_us: (
                election_min_us,
                2 * election_min_us,
                (election_min_us / 5).max(1_000),
            ),
            latency_max_us,
            fsync_max_us,
            think_max_us: *rng.pick(&[0, 500, 5_000]),
            malformed_chance: *rng.pick(&[0.0, 0.0, 0.01]),
            wire: rng.chance(0.25),
        };
        let plan = FaultPlan::draw(&config.faults, &mut rng);

        let initial = workload.load();
        let loaded: BTreeMap<Key, Value> = initial.iter().cloned().collect();
        workload
            .check_initial(&loaded)
            .map_err(|v| SetupError::Config(format!("the loaded state is wrong: {v}")))?;
        drop(loaded);
        let mut per_partition: Vec<Vec<(Key, Value)>> =
            vec![Vec::new(); config.partitions as usize];
        for (key, value) in &initial {
            match map.owner(key) {
                Ok(Owner::Partition(p)) => {
                    per_partition[p.0 as usize].push((key.clone(), value.clone()))
                }
                Ok(Owner::Replicated) => per_partition
                    .iter_mut()
                    .for_each(|rows| rows.push((key.clone(), value.clone()))),
                Err(e) => {
                    return Err(SetupError::Config(format!(
                        "initial row cannot be placed: {e}"
                    )));
                }
            }
        }
        let executors = per_partition
            .into_iter()
            .map(|rows| ExecutorNode {
                machine: None,
                parked: Some(SimStore::loaded(rows)),
                incarnation: 0,
                timer_at: None,
                sync_scheduled: false,
            })
            .collect();
        let replicas = (0..config.replicas)
            .map(|_| ReplicaNode {
                machine: None,
                disk: Disk::default(),
                incarnation: 0,
                timer_at: None,
                sync_scheduled: false,
                last_write: 0,
                plans: None,
                leader: None,
            })
            .collect();
        let gateways = (0..config.gateways)
            .map(|_| GatewayNode {
                machine: None,
                incarnation: 0,
            })
            .collect();
        // The client library's policy, except that simulated clients never give up: every
        // call must be answered once the faults heal.
        let policy = RetryPolicy {
            attempts_max: u32::MAX,
            ..RetryPolicy::default()
        };
        let clients = (0..config.clients)
            .map(|c| {
                let rng = rng.fork(5_000 + u64::from(c));
                let mut session =
                    Session::new(ClientId(u64::from(c)), config.gateways, policy, rng);
                session.set_bugs(config.session_bugs);
                ClientNode {
                    session,
                    pending: None,
                    timer_at: None,
                    request: None,
                    follow: None,
                }
            })
            .collect();
        Ok(World {
            now: Time::ZERO,
            queue: BinaryHeap::new(),
            next_seq: 0,
            last_delivery: BTreeMap::new(),
            link_generation: BTreeMap::new(),
            recent: BTreeMap::new(),
            blocked: BTreeMap::new(),
            silent: BTreeSet::new(),
            next_partition: 0,
            rng,
            workload_rng,
            timing,
            plan,
            counts: FaultCounts::default(),
            healed: !plan.any(),
            healed_at: Time::ZERO,
            replicas,
            executors,
            gateways,
            clients,
            map,
            workload,
            registry,
            initial,
            committed: BTreeMap::new(),
            online_failures: Vec::new(),
            calls: BTreeMap::new(),
            issued: 0,
            answered: 0,
            last_answer: Time::ZERO,
            config,
            events: 0,
        })
    }

    pub(crate) fn run(mut self) -> Outcome {
        for r in 0..self.config.replicas {
            self.start(Addr::Replica(r));
        }
        for p in 0..self.config.partitions {
            self.start(Addr::Executor(p));
        }
        for g in 0..self.config.gateways {
            self.start(Addr::Gateway(g));
        }
        for c in 0..self.config.clients {
            let start = self.rng.below(1_000);
            self.schedule(Time(start), Event::ClientWake(c));
        }
        if !self.healed {
            self.schedule(Time(self.plan.interval_us), Event::FaultTick);
        }
        while let Some(Reverse(next)) = self.queue.pop() {
            self.now = next.at;
            if self.finished() {
                break;
            }
            self.events += 1;
            self.dispatch(next.event);
        }
        self.into_outcome()
    }

    fn finished(&self) -> bool {
        let all_answered = self.answered == self.config.txns;
        if all_answered && self.healed {
            return self.now.since_us(self.last_answer.max(self.healed_at)) > QUIET_US;
        }
        self.healed && self.now.since_us(self.healed_at) > LIVENESS_US + QUIET_US
    }

    fn into_outcome(self) -> Outcome {
        let best = self
            .replicas
            .iter()
            .filter_map(|r| r.machine.as_ref())
            .max_by_key(|m| m.commit_epoch());
        let log = match best {
            Some(m) => m.log()[..m.commit_epoch().0 as usize]
                .iter()
                .map(|e| e.batch.clone())
                .collect(),
            None => Vec::new(),
        };
        let replica_logs = self
            .replicas
            .iter()
            .map(|r| match &r.machine {
                Some(m) => (m.log().to_vec(), m.commit_epoch()),
                None => (Vec::new(), Epoch(0)),
            })
            .collect();
        let executor_epochs = self
            .executors
            .iter()
            .map(|e| e.machine.as_ref().map_or(Epoch(0), |m| m.next_epoch()))
            .collect();
        let stores = self
            .executors
            .iter()
            .map(|e| match &e.machine {
                Some(m) => m.store().mem().clone(),
                None => detflow_executor::MemStore::new(),
            })
            .collect();
        Outcome {
            log,
            unanswered: self.config.txns - self.answered,
            calls: self.calls,
            stores,
            executor_epochs,
            replica_logs,
            online_failures: self.online_failures,
            registry: self.registry,
            map: self.map,
            workload: self.workload,
            initial: self.initial,
            end: self.now,
            healed_at: self.healed_at,
            events: self.events,
            faults: self.counts,
        }
    }

    fn schedule(&mut self, at: Time, event: Event) {
        self.next_seq += 1;
        self.queue.push(Reverse(Scheduled {
            at,
            seq: self.next_seq,
            event,
        }));
    }

    fn incarnation(&self, addr: Addr) -> u64 {
        match addr {
            Addr::Client(_) => 0,
            Addr::Executor(p) => self.executors[p as usize].incarnation,
            Addr::Gateway(g) => self.gateways[g as usize].incarnation,
            Addr::Replica(r) => self.replicas[r as usize].incarnation,
        }
    }

    fn is_up(&self, addr: Addr) -> bool {
        match addr {
            Addr::Client(_) => true,
            Addr::Executor(p) => self.executors[p as usize].machine.is_some(),
            Addr::Gateway(g) => self.gateways[g as usize].machine.is_some(),
            Addr::Replica(r) => self.replicas[r as usize].machine.is_some(),
        }
    }

    fn link(a: Addr, b: Addr) -> (Addr, Addr) {
        if a <= b { (a, b) } else { (b, a) }
    }

    fn is_blocked(&self, from: Addr, to: Addr) -> bool {
        self.blocked.values().any(|cut| cut.contains(&(from, to)))
    }

    /// Sends over the FIFO connection `from → to` with a seeded delay.
    fn send(&mut self, from: Addr, to: Addr, msg: Msg) {
        if !self.is_up(from) || !self.is_up(to) || self.is_blocked(from, to) {
            return;
        }
        let msg = if self.timing.wire {
            through_the_wire(&msg)
        } else {
            msg
        };
        let mut delay = 1 + self.rng.below(self.timing.latency_max_us);
        if self.rng.chance(self.plan.spike_chance) && !self.healed {
            delay += self.rng.range(10_000, 200_000);
            self.counts.delay_spikes += 1;
        }
        let last = self.last_delivery.entry((from, to)).or_insert(Time::ZERO);
        let at = (*last).max(self.now.plus_us(delay));
        *last = at;
        let delivery = Delivery {
            from,
            to,
            from_incarnation: self.incarnation(from),
            to_incarnation: self.incarnation(to),
            link_generation: self
                .link_generation
                .get(&Self::link(from, to))
                .copied()
                .unwrap_or(0),
            msg,
        };
        self.schedule(at, Event::Deliver(delivery));
    }

    fn dispatch(&mut self, event: Event) {
        match event {
            Event::ClientTimer(c) => self.on_client_timer(c),
            Event::ClientWake(c) => self.on_client_wake(c),
            Event::Deliver(d) => self.on_deliver(d),
            Event::ExecutorTimer { p, incarnation } => self.on_executor_timer(p, incarnation),
            Event::ExecutorSynced { p, incarnation } => self.on_executor_synced(p, incarnation),
            Event::FaultTick => self.on_fault_tick(),
            Event::HealPartition(id) => self.heal_partition(id),
            Event::ReplicaSynced { r, incarnation } => self.on_replica_synced(r, incarnation),
            Event::ReplicaTimer { r, incarnation } => self.on_replica_timer(r, incarnation),
            Event::Restart(addr) => self.start(addr),
            Event::StepCrash { r, incarnation } => {
                if self.replicas[r as usize].incarnation == incarnation && !self.healed {
                    // Back within the same election, to meet the messages of that term.
                    let downtime = self.rng.range(100, 10_000);
                    self.crash(Addr::Replica(r), downtime);
                }
            }
        }
    }

    fn on_deliver(&mut self, d: Delivery) {
        let live = self.is_up(d.to)
            && self.incarnation(d.to) == d.to_incarnation
            && self.incarnation(d.from) == d.from_incarnation
            && self
                .link_generation
                .get(&Self::link(d.from, d.to))
                .copied()
                .unwrap_or(0)
                == d.link_generation
            && !self.is_blocked(d.from, d.to);
        if !live {
            return;
        }
        if self.plan.duplicate_chance > 0.0 {
            let recent = self.recent.entry((d.from, d.to)).or_default();
            if recent.len() == RECENT_PER_LINK {
                recent.pop_front();
            }
            recent.push_back(d.msg.clone());
        }
        self.deliver(d.from, d.to, d.msg);
    }

    fn deliver(&mut self, from: Addr, to: Addr, msg: Msg) {
        match (to, msg) {
            (Addr::Client(c), Msg::Reply { client, seq, reply }) => {
                self.on_reply(c, client, seq, reply)
            }
            (Addr::Gateway(g), msg) => self.gateway_input(g, from, msg),
            (Addr::Replica(r), Msg::Peer { from: sender, msg }) => {
                // The connection, not the message, says who sent it.
                let Addr::Replica(from) = from else { return };
                assert_eq!(sender, replica_id(from), "a replica misnamed itself");
                self.replica_input(
                    r,
                    replica::Input::Peer {
                        from: replica_id(from),
                        msg,
                    },
                );
            }
            (Addr::Replica(r), Msg::Submit(txn)) => {
                self.replica_input(r, replica::Input::Submit(txn))
            }
            (Addr::Replica(r), Msg::Subscribe { partition, from }) => {
                self.plan_server_input(r, plan_server::Input::Subscribe { partition, from });
            }
            (Addr::Executor(p), msg) => self.executor_message(p, from, msg),
            (to, msg) => panic!("simulator routed {msg:?} to {to:?}"),
        }
    }

    // ----- nodes starting, crashing, restarting -----

    fn start(&mut self, addr: Addr) {
        if self.is_up(addr) {
            return;
        }
        match addr {
            Addr::Client(_) => {}
            Addr::Replica(r) => self.start_replica(r),
            Addr::Executor(p) => self.start_executor(p),
            Addr::Gateway(g) => {
                let node = &mut self.gateways[g as usize];
                node.incarnation += 1;
                node.machine = Some(Gateway::new(
                    gateway_id(g),
                    self.registry.clone(),
                    self.map.clone(),
                    (0..self.config.replicas).map(replica_id).collect(),
                    FOOTPRINT_ENTRIES_MAX,
                ));
            }
        }
        if self.now > Time::ZERO {
            self.counts.restarts += 1;
            self.reconnected(addr);
        }
    }

    fn start_replica(&mut self, r: u32) {
        let records = self.replicas[r as usize].disk.recover();
        let mut durable = Durable::default();
        for record in records {
            let (id, hard_state, truncate_from, append): (u64, _, _, Vec<LogEntry>) =
                codec::decode(&record).expect("the simulated disk returns only valid records");
            durable.apply(&LogWrite {
                id,
                hard_state,
                truncate_from,
                append,
            });
        }
        let mut config = ReplicaConfig::new(
            replica_id(r),
            (0..self.config.replicas).map(replica_id).collect(),
        );
        config.batching.epoch_duration_us = self.config.epoch_duration_us;
        config.batching.batch_txns_max = self.config.batch_txns_max;
        (
            config.election_timeout_min_us,
            config.election_timeout_max_us,
            config.heartbeat_us,
        ) = self.timing.election_us;
        let rng = self.rng.fork(u64::from(r) + 1000);
        let mut machine = Replica::new(config, durable, rng);
        machine.set_bugs(self.config.replica_bugs);
        let node = &mut self.replicas[r as usize];
        node.machine = Some(machine);
        node.incarnation += 1;
        node.timer_at = None;
        node.sync_scheduled = false;
        node.last_write = 0;
        node.plans = Some(PlanServer::new(self.map.clone()));
        node.leader = None;
        self.arm_replica_timer(r);
    }

    fn start_executor(&mut self, p: u32) {
        let node = &mut self.executors[p as usize];
        let store = node.parked.take().expect("a down executor parks its store");
        let mut machine = Executor::new(
            PartitionId(p),
            self.config.partitions,
            self.registry.clone(),
            store,
        );
        machine.set_bugs(self.config.bugs);
        machine.set_plan_sources((0..self.config.replicas).map(replica_id).collect());
        node.machine = Some(machine);
        node.incarnation += 1;
        node.sync_scheduled = false;
        node.timer_at = None;
        self.executor_input(p, detflow_executor::Input::Start);
    }

    fn crash(&mut self, addr: Addr, downtime_us: u64) {
        if !self.is_up(addr) {
            return;
        }
        self.counts.crashes += 1;
        let tear = self.rng.chance(self.plan.tear_chance);
        match addr {
            Addr::Client(_) => {}
            Addr::Replica(r) => {
                let node = &mut self.replicas[r as usize];
                node.machine = None;
                node.plans = None;
                let damage = node.disk.crash(&mut self.rng, tear);
                if damage.torn {
                    self.counts.torn_writes += 1;
                }
            }
            Addr::Executor(p) => {
                let node = &mut self.executors[p as usize];
                let machine = node.machine.take().expect("checked up");
                let mut store = machine.into_store();
                let damage = store.crash_and_recover(&mut self.rng, tear);
                if damage.torn {
                    self.counts.torn_writes += 1;
                }
                node.parked = Some(store);
            }
            Addr::Gateway(g) => self.gateways[g as usize].machine = None,
        }
        self.schedule(self.now.plus_us(downtime_us), Event::Restart(addr));
    }

    /// A node's connection to `peer` was re-established after a reset, partition or
    /// restart: the endpoints resume their replayable channels.
    fn reconnected(&mut self, addr: Addr) {
        let peers: Vec<Addr> = self.servers().into_iter().filter(|a| *a != addr).collect();
        for peer in peers {
            self.link_up(addr, peer);
        }
    }

    fn link_up(&mut self, a: Addr, b: Addr) {
        for (x, y) in [(a, b), (b, a)] {
            match (x, y) {
                (Addr::Executor(p), Addr::Executor(q)) if self.is_up(x) => {
                    self.executor_input(
                        p,
                        detflow_executor::Input::Connected {
                            peer: PartitionId(q),
                        },
                    );
                }
                (Addr::Executor(p), Addr::Replica(r)) if self.is_up(x) => {
                    self.executor_input(
                        p,
                        detflow_executor::Input::ReplicaConnected(replica_id(r)),
                    );
                }
                _ => {}
            }
        }
        if self.plan.duplicate_chance > 0.0 && self.rng.chance(self.plan.duplicate_chance) {
            self.redeliver(a, b);
        }
    }

    /// Delivers again what was recently delivered on a connection, as a sender that
    /// re-sends after a reconnect would.
    fn redeliver(&mut self, a: Addr, b: Addr) {
        for (from, to) in [(a, b), (b, a)] {
            let msgs: Vec<Msg> = self
                .recent
                .get(&(from, to))
                .map(|q| q.iter().cloned().collect())
                .unwrap_or_default();
            for msg in msgs {
                self.counts.duplicates += 1;
                self.send(from, to, msg);
            }
        }
    }

    fn servers(&self) -> Vec<Addr> {
        (0..self.config.replicas)
            .map(Addr::Replica)
            .chain((0..self.config.partitions).map(Addr::Executor))
            .chain((0..self.config.gateways).map(Addr::Gateway))
            .collect()
    }

    // ----- faults -----

    fn on_fault_tick(&mut self) {
        if self.healed {
            return;
        }
        if self.issued >= self.config.txns || self.now.0 >= FAULT_WINDOW_US {
            self.heal_all();
            return;
        }
        let servers = self.servers();
        if self.rng.chance(self.plan.crash_chance) {
            // Replicas are where ordering is decided: they take half the crashes.
            let victim = if self.rng.chance(0.5) {
                Addr::Replica(self.rng.below(u64::from(self.config.replicas)) as u32)
            } else {
                *self.rng.pick(&servers)
            };
            let downtime = self.rng.range(1_000, self.plan.downtime_max_us);
            self.crash(victim, downtime);
        }
        if self.rng.chance(self.plan.partition_chance) {
            self.start_partition(&servers);
        }
        if self.rng.chance(self.plan.reset_chance) {
            let a = *self.rng.pick(&servers);
            let b = *self.rng.pick(&servers);
            if a != b {
                self.reset(a, b);
            }
        }
        if self.plan.silent_drop_chance > 0.0 && self.rng.chance(self.plan.silent_drop_chance) {
            self.start_silent_drop(&servers);
        }
        self.schedule(self.now.plus_us(self.plan.interval_us), Event::FaultTick);
    }

    fn reset(&mut self, a: Addr, b: Addr) {
        self.counts.resets += 1;
        *self.link_generation.entry(Self::link(a, b)).or_default() += 1;
        if self.is_up(a) && self.is_up(b) {
            self.link_up(a, b);
        }
    }

    fn start_partition(&mut self, servers: &[Addr]) {
        self.counts.partitions += 1;
        let mut cut = BTreeSet::new();
        let one_way = self.rng.chance(0.3);
        let block = |a: Addr, b: Addr, cut: &mut BTreeSet<(Addr, Addr)>| {
            cut.insert((a, b));
            if !one_way {
                cut.insert((b, a));
            }
        };
        let kind = self.rng.below(4);
        if kind == 0 {
            // A partial partition: one link fails while both ends still reach everyone else
            // (Jepsen's "bridge" family). Half the time between two replicas.
            let (a, b) = if self.rng.chance(0.5) && self.config.replicas > 1 {
                let a = self.rng.below(u64::from(self.config.replicas)) as u32;
                let b = (a + 1 + self.rng.below(u64::from(self.config.replicas) - 1) as u32)
                    % self.config.replicas;
                (Addr::Replica(a), Addr::Replica(b))
            } else {
                (*self.rng.pick(servers), *self.rng.pick(servers))
            };
            if a != b {
                block(a, b, &mut cut);
            }
        } else {
            let mut side: BTreeSet<Addr> = BTreeSet::new();
            match kind {
                // Isolate one node.
                1 => {
                    side.insert(*self.rng.pick(servers));
                }
                // A minority of replicas with some other nodes, against the rest.
                2 => {
                    let minority = ((self.config.replicas - 1) / 2).max(1);
                    let first = self.rng.below(u64::from(self.config.replicas)) as u32;
                    for r in 0..minority {
                        side.insert(Addr::Replica((first + r) % self.config.replicas));
                    }
                    for s in servers.iter().filter(|s| !matches!(s, Addr::Replica(_))) {
                        if self.rng.chance(0.5) {
                            side.insert(*s);
                        }
                    }
                }
                // A random split.
                _ => {
                    for s in servers {
                        if self.rng.chance(0.5) {
                            side.insert(*s);
                        }
                    }
                }
            }
            for a in &side {
                for b in servers.iter().filter(|b| !side.contains(b)) {
                    block(*a, *b, &mut cut);
                }
            }
        }
        // Connections across the cut break; what was in flight is lost.
        for (a, b) in &cut {
            *self.link_generation.entry(Self::link(*a, *b)).or_default() += 1;
        }
        let id = self.next_partition;
        self.next_partition += 1;
        self.blocked.insert(id, cut);
        let duration = self.rng.range(50_000, 2_000_000);
        self.schedule(self.now.plus_us(duration), Event::HealPartition(id));
    }

    /// Drops what one connection carries, one way, for a while, and tells nobody: the
    /// sender's messages vanish as on a connection that died quietly, and no reconnect is
    /// announced when it ends. Half the time between two executors (their remote reads),
    /// else between any two servers.
    fn start_silent_drop(&mut self, servers: &[Addr]) {
        let executors = self.config.partitions;
        let (from, to) = if executors > 1 && self.rng.chance(0.5) {
            let a = self.rng.below(u64::from(executors)) as u32;
            let b = (a + 1 + self.rng.below(u64::from(executors) - 1) as u32) % executors;
            (Addr::Executor(a), Addr::Executor(b))
        } else {
            (*self.rng.pick(servers), *self.rng.pick(servers))
        };
        if from == to {
            return;
        }
        self.counts.silent_drops += 1;
        let id = self.next_partition;
        self.next_partition += 1;
        self.blocked.insert(id, BTreeSet::from([(from, to)]));
        self.silent.insert(id);
        let duration = self.rng.range(20_000, 1_000_000);
        self.schedule(self.now.plus_us(duration), Event::HealPartition(id));
    }

    fn heal_partition(&mut self, id: u64) {
        let Some(cut) = self.blocked.remove(&id) else {
            return;
        };
        if self.silent.remove(&id) {
            return;
        }
        let links: BTreeSet<(Addr, Addr)> = cut.iter().map(|(a, b)| Self::link(*a, *b)).collect();
        for (a, b) in links {
            if self.is_up(a) && self.is_up(b) && !self.is_blocked(a, b) && !self.is_blocked(b, a) {
                self.link_up(a, b);
            }
        }
    }

    fn heal_all(&mut self) {
        self.healed = true;
        self.healed_at = self.now;
        let ids: Vec<u64> = self.blocked.keys().copied().collect();
        for id in ids {
            self.heal_partition(id);
        }
        for addr in self.servers() {
            self.start(addr);
        }
    }

    // ----- clients -----

    /// Sends the client's next call: the rest of its logical transaction, or (while the
    /// run wants more) the first call of a new one. `txns` counts logical transactions.
    fn on_client_wake(&mut self, c: u32) {
        if self.clients[c as usize].pending.is_some() {
            return;
        }
        let request = match self.clients[c as usize].follow.take() {
            Some(next) => next,
            None if self.issued >= self.config.txns => return,
            None => {
                self.issued += 1;
                self.workload.next_call(&mut self.workload_rng)
            }
        };
        let (procedure, args) = if self.rng.chance(self.timing.malformed_chance) {
            // Bad input a real client may send: it must be refused, never ordered.
            if self.rng.chance(0.5) {
                ("no.such.procedure".to_owned(), request.args.clone())
            } else {
                (request.procedure.to_owned(), vec![0xc1])
            }
        } else {
            (request.procedure.to_owned(), request.args.clone())
        };
        let node = &mut self.clients[c as usize];
        let pending = node.session.call(procedure.clone(), args.clone());
        self.calls.insert(
            (node.session.client(), pending.seq()),
            CallRecord {
                procedure,
                args,
                replies: Vec::new(),
                attempts: 0,
            },
        );
        node.request = Some(request);
        node.pending = Some(pending);
        self.client_input(c, session::Input::Start);
    }

    /// Runs one input through the client's call in flight and performs its outputs.
    fn client_input(&mut self, c: u32, input: session::Input) {
        let now = self.now;
        let node = &mut self.clients[c as usize];
        let Some(pending) = node.pending.as_mut() else {
            return;
        };
        let mut out = Vec::new();
        pending.handle(now, input, &mut out);
        let deadline = pending.next_deadline();
        for effect in out {
            match effect {
                session::Output::Send {
                    gateway,
                    attempt,
                    call,
                } => {
                    if let Some(record) = self.calls.get_mut(&(call.client, call.seq)) {
                        record.attempts = attempt;
                    }
                    self.send(Addr::Client(c), Addr::Gateway(gateway), Msg::Call(call));
                }
                session::Output::Done(reply) => self.on_call_done(c, reply),
                session::Output::GaveUp { attempts, last } => {
                    unreachable!("a simulated client gave up after {attempts} attempts: {last}")
                }
            }
        }
        let node = &mut self.clients[c as usize];
        if node.pending.is_some() && deadline.is_some() && deadline != node.timer_at {
            node.timer_at = deadline;
            let at = deadline.unwrap_or(now).max(now);
            self.schedule(at, Event::ClientTimer(c));
        }
    }

    fn on_client_timer(&mut self, c: u32) {
        let node = &mut self.clients[c as usize];
        if node.timer_at.is_some_and(|t| t <= self.now) {
            node.timer_at = None;
            self.client_input(c, session::Input::Tick);
        }
    }

    fn on_reply(&mut self, c: u32, client: ClientId, seq: RequestSeq, reply: Reply) {
        let node = &self.clients[c as usize];
        assert_eq!(
            client,
            node.session.client(),
            "reply delivered to the wrong client"
        );
        if reply != Reply::Unavailable {
            // Every final reply is recorded, late duplicates too: they must agree.
            self.calls
                .entry((client, seq))
                .or_insert_with(|| CallRecord {
                    procedure: String::new(),
                    args: Vec::new(),
                    replies: Vec::new(),
                    attempts: 0,
                })
                .replies
                .push(reply.clone());
        }
        if node.pending.as_ref().is_some_and(|p| p.seq() == seq) {
            self.client_input(c, session::Input::Reply(reply));
        }
    }

    /// The client's call ended: the workload decides whether the logical transaction goes
    /// on.
    fn on_call_done(&mut self, c: u32, reply: Reply) {
        let node = &mut self.clients[c as usize];
        let pending = node.pending.take().expect("a call ends while in flight");
        node.session.finished(&pending);
        node.timer_at = None;
        let answer = match &reply {
            Reply::Done {
                outcome: detflow_protocol::Outcome::Committed(out),
                ..
            } => Answer::Committed(out),
            Reply::Done {
                outcome: detflow_protocol::Outcome::Aborted(reason),
                ..
            } => Answer::Aborted(reason),
            _ => Answer::Failed,
        };
        let request = node
            .request
            .take()
            .expect("a call in flight has its request");
        let follow = self.workload.follow_up(&request, answer);
        self.last_answer = self.now;
        if let Some(next) = follow {
            self.clients[c as usize].follow = Some(next);
            self.schedule(self.now, Event::ClientWake(c));
            return;
        }
        self.answered += 1;
        let think = if self.timing.think_max_us == 0 {
            0
        } else {
            self.rng.below(self.timing.think_max_us)
        };
        self.schedule(self.now.plus_us(think), Event::ClientWake(c));
    }

    // ----- gateways -----

    fn gateway_input(&mut self, g: u32, from: Addr, msg: Msg) {
        use detflow_gateway::Input;
        let input = match msg {
            Msg::Call(call) => Input::Call(call),
            Msg::NotLeader { txn, leader, .. } => {
                // The connection, not the message, says who sent it.
                let Addr::Replica(r) = from else { return };
                Input::NotLeader {
                    from: replica_id(r),
                    txn,
                    leader,
                }
            }
            Msg::Duplicate { client, seq } => Input::Duplicate { client, seq },
            Msg::Result { result, recovered } => Input::Result { result, recovered },
            Msg::ResultUnknown { client, seq } => Input::ResultUnknown { client, seq },
            other => panic!("gateway got {other:?}"),
        };
        self.gateway_handle(g, input);
    }

    fn gateway_handle(&mut self, g: u32, input: detflow_gateway::Input) {
        use detflow_gateway::Output;
        let Some(gateway) = self.gateways[g as usize].machine.as_mut() else {
            return;
        };
        let mut out = Vec::new();
        gateway.handle(self.now, input, &mut out);
        for effect in out {
            match effect {
                Output::Query { to, client, seq } => {
                    self.send(
                        Addr::Gateway(g),
                        Addr::Executor(to.0),
                        Msg::Query {
                            client,
                            seq,
                            partition: to,
                            gateway: gateway_id(g),
                        },
                    );
                }
                Output::Reply { client, seq, reply } => {
                    let to = Addr::Client(client.0 as u32);
                    self.send(Addr::Gateway(g), to, Msg::Reply { client, seq, reply });
                }
                Output::Submit { to, txn } => {
                    self.send(
                        Addr::Gateway(g),
                        Addr::Replica(to.0 - 100),
                        Msg::Submit(txn),
                    );
                }
            }
        }
    }

    // ----- sequencer replicas -----

    fn replica_input(&mut self, r: u32, input: replica::Input) {
        let Some(machine) = self.replicas[r as usize].machine.as_mut() else {
            return;
        };
        let mut out = Vec::new();
        machine.handle(self.now, input, &mut out);
        let leader = machine.leader();
        for effect in out {
            match effect {
                replica::Output::Committed(batch) => self.on_committed(r, batch),
                replica::Output::Duplicate {
                    client,
                    seq,
                    gateway,
                } => {
                    let to = Addr::Gateway(gateway.0 - 200);
                    self.send(Addr::Replica(r), to, Msg::Duplicate { client, seq });
                }
                replica::Output::NotLeader { txn, leader } => {
                    let to = Addr::Gateway(txn.gateway.0 - 200);
                    let from = replica_id(r);
                    self.send(Addr::Replica(r), to, Msg::NotLeader { from, txn, leader });
                }
                replica::Output::Persist(write) => self.persist(r, write),
                replica::Output::Send { to, msg } => {
                    let from = replica_id(r);
                    self.send(
                        Addr::Replica(r),
                        Addr::Replica(to.0 - 100),
                        Msg::Peer { from, msg },
                    );
                }
            }
        }
        // Node r hosts replica r and (if there is one) gateway r: the gateway hears of a
        // new leader from its replica as soon as the replica does, as in the node runtime.
        if leader != self.replicas[r as usize].leader {
            self.replicas[r as usize].leader = leader;
            if let Some(leader) = leader
                && r < self.config.gateways
            {
                self.gateway_handle(r, detflow_gateway::Input::Leader(leader));
            }
        }
        self.arm_replica_timer(r);
    }

    fn arm_replica_timer(&mut self, r: u32) {
        let node = &mut self.replicas[r as usize];
        let Some(machine) = &node.machine else { return };
        let deadline = machine.next_deadline();
        if deadline.is_some() && deadline != node.timer_at {
            node.timer_at = deadline;
            let incarnation = node.incarnation;
            let at = deadline.unwrap_or(self.now).max(self.now);
            self.schedule(at, Event::ReplicaTimer { r, incarnation });
        }
    }

    fn on_replica_timer(&mut self, r: u32, incarnation: u64) {
        let node = &mut self.replicas[r as usize];
        if node.incarnation != incarnation || node.machine.is_none() {
            return;
        }
        if node.timer_at.is_some_and(|t| t <= self.now) {
            node.timer_at = None;
            self.replica_input(r, replica::Input::Tick);
        }
    }

    fn persist(&mut self, r: u32, write: LogWrite) {
        let aimed = if write.hard_state.is_some() {
            self.plan.crash_after_vote_chance
        } else if !write.append.is_empty() {
            self.plan.crash_after_append_chance
        } else {
            0.0
        };
        if !self.healed && aimed > 0.0 && self.rng.chance(aimed) {
            let incarnation = self.replicas[r as usize].incarnation;
            let at = self
                .now
                .plus_us(1 + self.rng.below(self.timing.fsync_max_us * 2));
            self.schedule(at, Event::StepCrash { r, incarnation });
        }
        let record = codec::encode(&(
            write.id,
            write.hard_state,
            write.truncate_from,
            &write.append,
        ));
        let node = &mut self.replicas[r as usize];
        node.disk.append(&record);
        node.last_write = write.id;
        if !node.sync_scheduled {
            node.sync_scheduled = true;
            let incarnation = node.incarnation;
            let delay = self.rng.below(self.timing.fsync_max_us);
            self.schedule(
                self.now.plus_us(delay),
                Event::ReplicaSynced { r, incarnation },
            );
        }
    }

    fn on_replica_synced(&mut self, r: u32, incarnation: u64) {
        let node = &mut self.replicas[r as usize];
        if node.incarnation != incarnation || node.machine.is_none() {
            return;
        }
        node.sync_scheduled = false;
        node.disk.sync();
        let write = node.last_write;
        self.replica_input(r, replica::Input::Persisted { write });
    }

    fn on_committed(&mut self, r: u32, batch: Arc<Batch>) {
        match self.committed.get(&batch.epoch) {
            Some(first) if !Arc::ptr_eq(first, &batch) && **first != *batch => {
                self.online_failures.push(format!(
                    "replica {} committed a different batch at epoch {} than another replica did",
                    replica_id(r),
                    batch.epoch
                ));
            }
            Some(_) => {}
            None => {
                self.committed.insert(batch.epoch, batch.clone());
            }
        }
        self.plan_server_input(r, plan_server::Input::Committed(batch));
    }

    /// Runs one input through the plan server beside replica `r` and sends its plans.
    fn plan_server_input(&mut self, r: u32, input: plan_server::Input) {
        let Some(server) = self.replicas[r as usize].plans.as_mut() else {
            return;
        };
        let mut out = Vec::new();
        server.handle(self.now, input, &mut out);
        for plan_server::Output::Plan { to, plan } in out {
            self.send(Addr::Replica(r), Addr::Executor(to.0), Msg::Plan(plan));
        }
    }

    // ----- executors -----

    fn executor_message(&mut self, p: u32, from: Addr, msg: Msg) {
        use detflow_executor::Input;
        let input = match msg {
            Msg::Ack { from, durable, .. } => Input::Ack { from, durable },
            Msg::Hello { from, durable, .. } => Input::Hello { from, durable },
            Msg::Plan(plan) => Input::Plan((*plan).clone()),
            Msg::Query { client, seq, .. } => {
                let Addr::Gateway(g) = from else { return };
                Input::ResultQuery {
                    gateway: gateway_id(g),
                    client,
                    seq,
                }
            }
            Msg::RemoteReads { reads, .. } => Input::RemoteReads(reads),
            other => panic!("executor got {other:?}"),
        };
        self.executor_input(p, input);
    }

    fn executor_input(&mut self, p: u32, input: detflow_executor::Input) {
        use detflow_executor::Output;
        let Some(machine) = self.executors[p as usize].machine.as_mut() else {
            return;
        };
        let mut out = Vec::new();
        machine.handle(self.now, input, &mut out);
        let me = Addr::Executor(p);
        for effect in out {
            match effect {
                Output::EpochApplied(_) => self.schedule_executor_sync(p),
                Output::Result {
                    gateway,
                    result,
                    recovered,
                } => {
                    let msg = Msg::Result { result, recovered };
                    self.send(me, Addr::Gateway(gateway.0 - 200), msg);
                }
                Output::ResultUnknown {
                    gateway,
                    client,
                    seq,
                } => {
                    self.send(
                        me,
                        Addr::Gateway(gateway.0 - 200),
                        Msg::ResultUnknown { client, seq },
                    );
                }
                Output::SendAck { to, durable } => {
                    self.send(
                        me,
                        Addr::Executor(to.0),
                        Msg::Ack {
                            from: PartitionId(p),
                            to,
                            durable,
                        },
                    );
                }
                Output::SendHello { to, durable } => {
                    self.send(
                        me,
                        Addr::Executor(to.0),
                        Msg::Hello {
                            from: PartitionId(p),
                            to,
                            durable,
                        },
                    );
                }
                Output::SendReads { to, reads } => {
                    self.send(me, Addr::Executor(to.0), Msg::RemoteReads { to, reads })
                }
                Output::Subscribe { to, from } => {
                    let msg = Msg::Subscribe {
                        partition: PartitionId(p),
                        from,
                    };
                    self.send(me, Addr::Replica(to.0 - 100), msg);
                }
            }
        }
        self.arm_executor_timer(p);
    }

    fn arm_executor_timer(&mut self, p: u32) {
        let node = &mut self.executors[p as usize];
        let Some(machine) = &node.machine else { return };
        let deadline = machine.next_deadline();
        if deadline.is_some() && deadline != node.timer_at {
            node.timer_at = deadline;
            let incarnation = node.incarnation;
            let at = deadline.unwrap_or(self.now).max(self.now);
            self.schedule(at, Event::ExecutorTimer { p, incarnation });
        }
    }

    fn on_executor_timer(&mut self, p: u32, incarnation: u64) {
        let node = &mut self.executors[p as usize];
        if node.incarnation != incarnation || node.machine.is_none() {
            return;
        }
        if node.timer_at.is_some_and(|t| t <= self.now) {
            node.timer_at = None;
            self.executor_input(p, detflow_executor::Input::Tick);
        }
    }

    fn schedule_executor_sync(&mut self, p: u32) {
        let node = &mut self.executors[p as usize];
        if node.sync_scheduled {
            return;
        }
        node.sync_scheduled = true;
        let incarnation = node.incarnation;
        let delay = self.rng.below(self.timing.fsync_max_us);
        self.schedule(
            self.now.plus_us(delay),
            Event::ExecutorSynced { p, incarnation },
        );
    }

    fn on_executor_synced(&mut self, p: u32, incarnation: u64) {
        let node = &mut self.executors[p as usize];
        if node.incarnation != incarnation {
            return;
        }
        let Some(machine) = node.machine.as_mut() else {
            return;
        };
        node.sync_scheduled = false;
        let store = machine.store_mut();
        if !store.has_unsynced() {
            return;
        }
        let up_to = store.sync();
        self.executor_input(p, detflow_executor::Input::Durable { up_to });
    }
}
