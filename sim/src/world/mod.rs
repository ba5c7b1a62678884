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

use crate::archive::SimArchive;
use crate::check::raft::RaftSafety;
use crate::disk::ReplicaDisk;
use crate::events::{EventQueue, Timer};
use crate::faults::{FaultConfig, FaultCounts, FaultPlan};
use crate::network::Network;
use crate::store::SimStore;
use detflow_executor::{Executor, ExecutorBugs, Registry};
use detflow_gateway::Gateway;
use detflow_protocol::CallId;
use detflow_protocol::WriteId;
use detflow_protocol::message::{Message, Reply};
use detflow_protocol::session::{self, Pending, RetryPolicy, Session, SessionBugs};
use detflow_protocol::{
    Batch, ClientId, DetRng, Epoch, ExecutorId, Key, LogEntry, Machine, NodeId, Owner, PartitionId,
    Placement, RequestSeq, Time, Value,
};
use detflow_scheduler::{PartitionMap, PlanServer, plan_server};
use detflow_sequencer::replica::{self, LogWrite, Replica, ReplicaBugs, ReplicaConfig};
use detflow_workloads::{Answer, Request, Workload};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

mod clients;
mod executors;
mod fault_injection;
mod gateways;
mod lifecycle;
mod network;
mod readers;
mod replicas;
mod snapshots;

pub(crate) use readers::Reader;
pub(crate) use snapshots::{SnapshotReader, SnapshotRecord};

/// A simulated component's address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Addr {
    Client(u32),
    /// A consumer of a stream the workload publishes to.
    Reader(u32),
    /// A reader of snapshots.
    SnapshotReader(u32),
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
    /// Executor `p`'s checkpoint in progress is written.
    ExecutorCheckpointed {
        p: u32,
        incarnation: u64,
    },
    FaultTick,
    /// An operator asks every running executor for a checkpoint after an epoch soon.
    CheckpointAsk,
    /// A stream reader reads again (or gives up on a read that got no answer).
    ReaderWake(u32),
    /// A snapshot reader reads again (or gives up on a read that got no answer).
    SnapshotWake(u32),
    GatewayTimer {
        g: u32,
        incarnation: u64,
    },
    HealPartition(u64),
    ReplicaSynced {
        r: u32,
        incarnation: u64,
    },
    ReplicaTimer {
        r: u32,
        incarnation: u64,
    },
    /// The plan server beside replica `r` found every executor durable through `through`.
    ReplicaCompact {
        r: u32,
        incarnation: u64,
        through: Epoch,
    },
    /// Replica `r`'s archive write ahead of a compaction is durable.
    ReplicaArchived {
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

/// Makes an application's workload for a partition count.
pub type WorkloadFactory = Arc<dyn Fn(u32) -> Box<dyn Workload> + Send + Sync>;

/// The workload a simulation runs.
#[derive(Clone)]
pub enum SimWorkload {
    /// A built-in workload, by name (`bank`, `ycsb`, `kv`, `tpcc`).
    Named(String),
    /// An application's own: its services, generator and invariants.
    Custom {
        /// A name for reports.
        name: String,
        /// Makes the workload for the run's partition count.
        make: WorkloadFactory,
    },
}

impl SimWorkload {
    /// The name reports use.
    pub fn name(&self) -> &str {
        match self {
            SimWorkload::Named(name) | SimWorkload::Custom { name, .. } => name,
        }
    }
}

impl std::fmt::Debug for SimWorkload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SimWorkload::Named(name) => write!(f, "Named({name:?})"),
            SimWorkload::Custom { name, .. } => write!(f, "Custom({name:?})"),
        }
    }
}

/// Settings of one simulated run.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The workload.
    pub workload: SimWorkload,
    /// The seed every random choice derives from.
    pub seed: u64,
    /// Executor partitions.
    pub partitions: u32,
    /// Sequencer replicas (1, 3 or 5).
    pub replicas: u32,
    /// Replicas of each partition (executors running the same plans); 0: drawn per seed
    /// from 1, 2 and 3.
    pub partition_replicas: u32,
    /// Gateways.
    pub gateways: u32,
    /// Calls the clients make in total.
    pub txns: u64,
    /// Concurrent clients, each with one call in flight.
    pub clients: u32,
    /// The sequencer's epoch length.
    pub epoch_us: u64,
    /// The sequencer's batch size cap.
    pub batch_txns_max: usize,
    /// Faults to inject.
    pub faults: FaultConfig,
    /// Planted executor bugs (checker tests only).
    pub executor_bugs: ExecutorBugs,
    /// Planted replica bugs (checker tests only).
    pub replica_bugs: ReplicaBugs,
    /// Planted plan server bugs (checker tests only).
    pub plan_server_bugs: detflow_scheduler::PlanServerBugs,
    /// Planted client-session bugs (checker tests only).
    pub session_bugs: SessionBugs,
    /// Planted gateway bugs (checker tests only).
    pub gateway_bugs: detflow_gateway::GatewayBugs,
    /// Planted archive-reader bug (checker tests only): reading stops at the first
    /// segment that does not read back instead of passing over it.
    pub archive_stops_at_torn: bool,
    /// Planted archive-reader bug (checker tests only): a checkpoint that does not read
    /// back counts as a partition without rows, instead of sending the re-execution to an
    /// earlier complete set.
    pub checkpoint_torn_as_empty: bool,
    /// The archives keep the last this many epochs, as a node's `archive_retain_epochs`
    /// (cut where the node cuts); none: everything. By default one seed in three keeps 36
    /// epochs, one 72 (three and six checkpoint intervals), one everything.
    pub archive_retain_epochs: Option<u64>,
    /// Planted retention bug (checker tests only): retention cuts at the last checkpoint
    /// file within its limit, whether every partition has one there that reads back or
    /// not, as the node once did.
    pub retention_cuts_at_any_checkpoint: bool,
}

impl SimConfig {
    /// Defaults for the built-in `workload` and `seed`: no faults.
    pub fn new(workload: &str, seed: u64) -> SimConfig {
        SimConfig::with_workload(SimWorkload::Named(workload.to_owned()), seed)
    }

    /// Defaults for an application's workload, made by `make` for the run's partition
    /// count, and `seed`: no faults.
    pub fn custom(
        name: &str,
        make: impl Fn(u32) -> Box<dyn Workload> + Send + Sync + 'static,
        seed: u64,
    ) -> SimConfig {
        let workload = SimWorkload::Custom {
            name: name.to_owned(),
            make: Arc::new(make),
        };
        SimConfig::with_workload(workload, seed)
    }

    fn with_workload(workload: SimWorkload, seed: u64) -> SimConfig {
        SimConfig {
            workload,
            seed,
            partitions: 4,
            replicas: 3,
            partition_replicas: 0,
            gateways: 2,
            txns: 400,
            clients: 16,
            epoch_us: 5_000,
            batch_txns_max: 10_000,
            faults: FaultConfig::none(),
            executor_bugs: ExecutorBugs::default(),
            plan_server_bugs: detflow_scheduler::PlanServerBugs::default(),
            replica_bugs: ReplicaBugs::default(),
            session_bugs: SessionBugs::default(),
            gateway_bugs: detflow_gateway::GatewayBugs::default(),
            archive_stops_at_torn: false,
            checkpoint_torn_as_empty: false,
            archive_retain_epochs: [None, Some(36), Some(72)][(seed % 3) as usize],
            retention_cuts_at_any_checkpoint: false,
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
    /// When the client issued it.
    pub issued: Time,
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
    /// How long an epoch stays open while the log is idle (group commit); `epoch_us`
    /// turns group commit off, 0 closes an epoch at the first chance.
    epoch_min_us: u64,
    /// How far ahead of a peer replica's acknowledgements an executor sends it reads: the
    /// default, or windows small enough that replicas behind wait for them often.
    reads_ahead_epochs: u64,
    /// How much history executors keep for snapshot reads: the default, or little enough
    /// that reads at old epochs meet the window's edge.
    retention: detflow_executor::Retention,
}

/// Per partition and epoch, each replica that applied it and its state digest after it.
pub(crate) type EpochDigests =
    BTreeMap<(PartitionId, Epoch), Vec<(ExecutorId, detflow_executor::StateDigest)>>;

/// Per partition and epoch, the replica whose durable checkpoint came first, and its rows.
pub(crate) type Checkpoints = BTreeMap<(PartitionId, Epoch), (ExecutorId, Vec<(Key, Value)>)>;

/// Everything a finished run leaves for the checkers.
pub(crate) struct Outcome {
    /// The committed log, from the replica that committed most.
    pub(crate) log: Vec<Arc<Batch>>,
    /// Every call by `(client, seq)`.
    pub(crate) calls: BTreeMap<CallId, CallRecord>,
    /// The first replica's final store, by partition.
    pub(crate) stores: Vec<detflow_executor::MemStore>,
    /// Every replica's final store, by partition then replica.
    pub(crate) replica_stores: Vec<Vec<detflow_executor::MemStore>>,
    /// Every replica's state digest after every epoch it applied.
    pub(crate) digests: EpochDigests,
    /// Every durable checkpoint, by partition and epoch.
    pub(crate) checkpoints: Checkpoints,
    /// Each executor's next epoch to apply, with its replica.
    pub(crate) executor_epochs: Vec<(ExecutorId, Epoch)>,
    /// Replicas of each partition in this run.
    pub(crate) partition_replicas: u32,
    /// Each replica's log and commit epoch at the end.
    pub(crate) replica_logs: Vec<(Epoch, Vec<LogEntry>, Epoch)>,
    /// Failures the run noticed as it went (replicas committing different batches).
    pub(crate) online_failures: Vec<String>,
    /// Calls without a final answer at the end.
    pub(crate) unanswered: u64,
    /// Each replica's letters not consumed at the end.
    pub(crate) letters_pending: Vec<(ExecutorId, u64)>,
    /// What each stream reader read.
    pub(crate) readers: Vec<Reader>,
    /// What each snapshot reader read.
    pub(crate) snapshot_readers: Vec<SnapshotReader>,
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
    /// Log compactions and snapshots installed from a leader, over all replicas.
    pub(crate) log_compactions: (u64, u64),
    /// Times archive retention cut an archive.
    pub(crate) archive_cuts: u64,
    /// Each replica's archive, by replica.
    pub(crate) archives: Vec<ReplicaArchive>,
    /// The checkpoint files the executors wrote.
    pub(crate) checkpoint_archive: SimArchive,
    /// The archive reader stops at the first segment that does not read back (a planted
    /// bug).
    pub(crate) archive_stops_at_torn: bool,
    pub(crate) checkpoint_torn_as_empty: bool,
}

/// A replica's archive at the end of a run, and what it must hold.
pub(crate) struct ReplicaArchive {
    /// The archive.
    pub(crate) archive: SimArchive,
    /// The last epoch the replica's durable log dropped.
    pub(crate) dropped: Epoch,
    /// Epochs it may lack (see [`ReplicaNode::not_archived`]).
    pub(crate) not_archived: Vec<(Epoch, Epoch)>,
    /// Where retention last cut it: the epochs through this one may be gone.
    pub(crate) retained_after: Epoch,
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
    /// The workload's service does not register.
    #[error(transparent)]
    Service(#[from] detflow_executor::ServiceError),
    /// A row the workload loads does not match its table's declared schema.
    #[error(transparent)]
    Schema(#[from] detflow_executor::SchemaError),
}

/// After healing, every call must be answered within this much virtual time.
pub(crate) const LIVENESS_US: u64 = 60_000_000;
/// After the last answer, the run goes on this long so partitions catch up and disks sync.
const QUIET_US: u64 = 3_000_000;
/// Faults stop and everything heals by this time at the latest.
const FAULT_WINDOW_US: u64 = 20_000_000;
/// Under the one-down fault profile, every call issued while the victims are down must be
/// answered within this much virtual time. A call whose attempt went to the gateway that
/// died waits out one attempt timeout (adaptive, at most 1 s before the session has seen a
/// latency) and an election takes a few hundred ms: 2 s leaves room for both. The worst
/// of 340 one-down seeds without bugs took 1.36 s, and one of 300 bank seeds under
/// `--faults all` (seed 64, whose call was in flight before any latency was known) 1.58 s;
/// it was 3.1 s while a silent retry could turn a gateway's shared leader hint to the dead
/// leader. A cluster that waits for the dead node takes until it heals.
pub const ONE_DOWN_CALL_BOUND_US: u64 = 2_000_000;
/// Calls over the one-down bound reported one by one; the rest are counted.
const ONE_DOWN_REPORTS_MAX: usize = 3;
/// Executors checkpoint after every multiple of this many epochs: often enough that every
/// seed compacts past several checkpoints, and not a divisor of the replicas' compaction
/// step, so the two interleave.
const CHECKPOINT_EVERY_EPOCHS: u64 = 12;
/// Writing a checkpoint takes up to this long (a crash meanwhile loses it).
const CHECKPOINT_WRITE_MAX_US: u64 = 30_000;
const FOOTPRINT_ENTRIES_MAX: usize = 4096;

fn replica_id(r: u32) -> NodeId {
    NodeId(100 + r)
}

fn gateway_id(g: u32) -> NodeId {
    NodeId(200 + g)
}

/// The simulated node that runs replica `k` of the partitions: a partition's replicas
/// are executors on distinct nodes, as in a cluster.
fn executor_host(k: u32) -> NodeId {
    NodeId(300 + k)
}

/// The one-down profile's fault: which nodes are down, and since when.
struct OneDown {
    since: Time,
    victims: Vec<Addr>,
    /// Calls over the bound so far.
    late: usize,
}

struct ReplicaNode {
    machine: Option<Replica>,
    disk: ReplicaDisk,
    incarnation: u64,
    timer: Timer,
    sync_scheduled: bool,
    last_write: WriteId,
    /// The plan server beside the replica, fed with its `Committed` outputs as a
    /// production driver does; it starts empty with each incarnation.
    plans: Option<PlanServer>,
    /// Where it archives the epochs it compacts away; survives its crashes.
    archive: SimArchive,
    /// Epochs a snapshot installed from the leader replaced before this replica knew them
    /// committed: another replica's archive holds them, not necessarily its own.
    not_archived: Vec<(Epoch, Epoch)>,
    /// Where retention last cut its archive.
    retained_after: Epoch,
    /// The entries of an archive write ahead of a compaction, in flight: they reach the
    /// archive when it completes, or never, if the replica crashes first.
    archiving: Option<Vec<LogEntry>>,
}

struct ExecutorNode {
    /// The replica this executor is: its partition and node.
    id: ExecutorId,
    machine: Option<Executor<SimStore>>,
    /// The store while the node is down (its disk survives the crash).
    parked: Option<SimStore>,
    incarnation: u64,
    timer: Timer,
    sync_scheduled: bool,
    /// The checkpoint being written (one at a time, as in the node), lost in a crash.
    checkpointing: Option<(Epoch, Vec<(Key, Value)>)>,
    /// Its disk was destroyed and it has not yet got back to the epoch it had applied
    /// then: that epoch.
    recovering: Option<Epoch>,
}

struct GatewayNode {
    machine: Option<Gateway>,
    incarnation: u64,
    /// When the gateway's timer is set for (its calls' deadlines).
    timer: Timer,
}

struct ClientNode {
    /// The client library's session machine: numbering, gateway choice, retries.
    session: Session,
    /// The call in flight.
    pending: Option<Pending>,
    /// When the client's timer is set for.
    timer: Timer,
    /// The call in flight as the workload made it, for [`Workload::follow_up`].
    request: Option<Request>,
    /// The next call of the same logical transaction, sent at the next wake.
    follow: Option<Request>,
}

pub(crate) struct World {
    now: Time,
    queue: EventQueue<Event>,
    net: Network<Addr, Msg>,
    rng: DetRng,
    workload_rng: DetRng,
    /// Disk losses draw from a generator of their own, so that every other draw of a seed
    /// stays what it was before that fault type.
    disk_rng: DetRng,
    /// On-demand checkpoints draw from a generator of their own, for the same reason.
    checkpoint_rng: DetRng,
    /// Crashes in the middle of an archive write draw from a generator of their own too.
    archive_rng: DetRng,
    /// The checkpoint files every executor host writes, in one archive the nodes share.
    checkpoint_archive: SimArchive,
    timing: Timing,
    plan: FaultPlan,
    counts: FaultCounts,
    healed: bool,
    healed_at: Time,
    replicas: Vec<ReplicaNode>,
    /// Partition `p`'s replica on host `k` at index `p * R + k`.
    executors: Vec<ExecutorNode>,
    /// Where the partitions' replicas run.
    placement: Arc<Placement>,
    /// Replicas per partition (R).
    partition_replicas: u32,
    gateways: Vec<GatewayNode>,
    clients: Vec<ClientNode>,
    readers: Vec<Reader>,
    snapshot_readers: Vec<SnapshotReader>,
    /// Every table of the initial rows, for snapshot scans.
    snapshot_tables: Vec<Key>,
    /// The latest epoch of a call a client was answered `Done`: a later `Latest` snapshot
    /// read must see it.
    last_done_epoch: Epoch,
    map: PartitionMap,
    workload: Box<dyn Workload>,
    registry: Arc<Registry>,
    initial: Vec<(Key, Value)>,
    /// Each partition's initial rows, which a replica whose disk was destroyed reloads.
    initial_rows: Vec<Vec<(Key, Value)>>,
    /// Raft's safety properties, checked after every replica step.
    raft: RaftSafety,
    online_failures: Vec<String>,
    /// Log compactions and snapshots installed, counted as they happen.
    log_compactions: (u64, u64),
    /// Times archive retention cut an archive.
    archive_cuts: u64,
    /// Per partition and epoch, each replica's state digest after it, in the order they
    /// applied it; each must equal the first, and the log's re-execution (the audit).
    digests: EpochDigests,
    /// Partitions whose replicas' digests already diverged (reported once).
    diverged: BTreeSet<PartitionId>,
    /// Every durable checkpoint: by partition and epoch, the replica that wrote it first
    /// and its rows (every replica's must be the same).
    checkpoints: Checkpoints,
    /// The one-down profile's victims, once they are down.
    one_down: Option<OneDown>,
    calls: BTreeMap<CallId, CallRecord>,
    issued: u64,
    answered: u64,
    last_answer: Time,
    /// When the letters pending last changed (the run waits for their deliveries too).
    last_letter: Time,
    letters: u64,
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
        let workload = match &config.workload {
            SimWorkload::Named(name) => detflow_workloads::by_name(name, config.partitions)?,
            SimWorkload::Custom { make, .. } => make(config.partitions),
        };
        let mut scheme = workload.scheme();
        scheme.partitions = config.partitions;
        let map = PartitionMap::new(scheme)?;
        let mut registry = Registry::new();
        workload.register(&mut registry)?;
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
            epoch_min_us: *rng.pick(&[0, 200, 2_000, config.epoch_us]),
            reads_ahead_epochs: *rng.pick(&[detflow_executor::READS_AHEAD_EPOCHS, 50, 8]),
            retention: detflow_executor::Retention::default(),
        };
        let mut plan = FaultPlan::draw(&config.faults, &mut rng);
        let mut disk_rng = DetRng::new(config.seed ^ 0x0D15_C105);
        plan.draw_disk_loss(&config.faults, &mut disk_rng);
        let mut archive_rng = DetRng::new(config.seed ^ 0xA4C4_1BE5);
        plan.draw_archive_crash(&config.faults, &mut archive_rng);
        // Drawn from a fork, so that every draw above is the same as before snapshots.
        let retention = {
            let mut r = rng.fork(7_001);
            detflow_executor::Retention {
                us: *r.pick(&[detflow_executor::RETENTION_US_DEFAULT, 20_000, 2_000]),
                bytes_max: *r.pick(&[detflow_executor::RETENTION_BYTES_DEFAULT, 4_096]),
            }
        };
        let timing = Timing {
            retention,
            ..timing
        };

        let initial = workload.load();
        for (key, value) in &initial {
            registry.check_row(key, value)?;
        }
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
        let partition_replicas = match config.partition_replicas {
            0 => 1 + rng.fork(9_000).below(3) as u32,
            r => r,
        };
        let hosts: Vec<NodeId> = (0..partition_replicas).map(executor_host).collect();
        let placement = Arc::new(Placement::spread(
            config.partitions,
            &hosts,
            partition_replicas as usize,
        ));
        let mut executors = Vec::new();
        let initial_rows = per_partition.clone();
        for (p, rows) in per_partition.into_iter().enumerate() {
            for k in 0..partition_replicas {
                executors.push(ExecutorNode {
                    id: ExecutorId {
                        partition: PartitionId(p as u32),
                        node: executor_host(k),
                    },
                    machine: None,
                    parked: Some(SimStore::loaded(rows.clone())),
                    incarnation: 0,
                    timer: Timer::default(),
                    sync_scheduled: false,
                    checkpointing: None,
                    recovering: None,
                });
            }
        }
        let replicas = (0..config.replicas)
            .map(|_| ReplicaNode {
                machine: None,
                disk: ReplicaDisk::default(),
                archive: SimArchive::default(),
                not_archived: Vec::new(),
                retained_after: Epoch(0),
                archiving: None,
                incarnation: 0,
                timer: Timer::default(),
                sync_scheduled: false,
                last_write: WriteId(0),
                plans: None,
            })
            .collect();
        let gateways = (0..config.gateways)
            .map(|_| GatewayNode {
                machine: None,
                incarnation: 0,
                timer: Timer::default(),
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
                    timer: Timer::default(),
                    request: None,
                    follow: None,
                }
            })
            .collect();
        let readers = workload.streams().into_iter().map(Reader::new).collect();
        // Forked last, so that adding snapshot readers left every earlier draw as it was.
        let mut snapshot_rng = rng.fork(7_000);
        let snapshot_readers = (0..snapshots::SNAPSHOT_READERS)
            .map(|i| SnapshotReader::new(snapshot_rng.fork(u64::from(i))))
            .collect();
        let snapshot_tables: BTreeSet<Key> = initial
            .iter()
            .filter_map(|(k, _)| k.table_name().map(Key::table))
            .collect();
        Ok(World {
            readers,
            snapshot_readers,
            snapshot_tables: snapshot_tables.into_iter().collect(),
            last_done_epoch: Epoch(0),
            now: Time::ZERO,
            queue: EventQueue::new(),
            net: Network::new(),
            rng,
            workload_rng,
            disk_rng,
            checkpoint_rng: DetRng::new(config.seed ^ 0xC4EC_4B01),
            archive_rng,
            checkpoint_archive: SimArchive::default(),
            timing,
            plan,
            counts: FaultCounts::default(),
            healed: !plan.any(),
            healed_at: Time::ZERO,
            replicas,
            executors,
            placement,
            partition_replicas,
            gateways,
            clients,
            map,
            workload,
            registry,
            initial,
            initial_rows,
            raft: RaftSafety::default(),
            online_failures: Vec::new(),
            log_compactions: (0, 0),
            archive_cuts: 0,
            digests: BTreeMap::new(),
            diverged: BTreeSet::new(),
            checkpoints: BTreeMap::new(),
            one_down: None,
            calls: BTreeMap::new(),
            issued: 0,
            answered: 0,
            last_answer: Time::ZERO,
            last_letter: Time::ZERO,
            letters: 0,
            config,
            events: 0,
        })
    }

    pub(crate) fn run(mut self) -> Outcome {
        for r in 0..self.config.replicas {
            self.start(Addr::Replica(r));
        }
        for e in 0..self.executors.len() as u32 {
            self.start(Addr::Executor(e));
        }
        for g in 0..self.config.gateways {
            self.start(Addr::Gateway(g));
        }
        for c in 0..self.config.clients {
            let start = self.rng.below(1_000);
            self.schedule(Time(start), Event::ClientWake(c));
        }
        for i in 0..self.readers.len() as u32 {
            let start = self.rng.below(10_000);
            self.schedule(Time(start), Event::ReaderWake(i));
        }
        for i in 0..self.snapshot_readers.len() as u32 {
            let start = self.snapshot_readers[i as usize].start_us();
            self.schedule(Time(start), Event::SnapshotWake(i));
        }
        if !self.healed {
            self.schedule(Time(self.plan.interval_us), Event::FaultTick);
        }
        let first_ask = 100_000 + self.checkpoint_rng.below(400_000);
        self.schedule(Time(first_ask), Event::CheckpointAsk);
        while let Some((at, event)) = self.queue.pop() {
            self.now = at;
            if self.finished() {
                break;
            }
            self.events += 1;
            self.dispatch(event);
        }
        self.check_gateways_at_end();
        self.into_outcome()
    }

    /// No gateway may hold a call past its deadline: its timer answers and forgets it.
    fn check_gateways_at_end(&mut self) {
        for (g, node) in self.gateways.iter().enumerate() {
            let overdue = node.machine.as_ref().map_or(0, |m| m.overdue(self.now));
            if overdue > 0 {
                self.online_failures.push(format!(
                    "gateway {g} holds {overdue} calls past their deadline at {}",
                    self.now
                ));
            }
        }
    }

    /// Letters posted and not consumed, over every running executor.
    fn letters_pending(&self) -> u64 {
        self.executors
            .iter()
            .filter_map(|e| e.machine.as_ref())
            .map(|m| m.letters_pending())
            .sum()
    }

    fn finished(&self) -> bool {
        let all_answered = self.answered == self.config.txns;
        if all_answered && self.healed && self.letters_pending() == 0 {
            let quiet_since = self.last_answer.max(self.healed_at).max(self.last_letter);
            // Every reader made a read after everything else settled and found no more.
            let read_all = self.readers.iter().all(|r| r.read_all_since(quiet_since));
            return read_all && self.now.since_us(quiet_since) > QUIET_US;
        }
        self.healed && self.now.since_us(self.healed_at) > LIVENESS_US + QUIET_US
    }

    fn into_outcome(self) -> Outcome {
        // Every batch any replica reported committed (logs are compacted, the record is
        // not).
        let log = self.raft.log().cloned().collect();
        let replica_logs = self
            .replicas
            .iter()
            .map(|r| match &r.machine {
                Some(m) => (m.log_start(), m.log().to_vec(), m.commit_epoch()),
                None => (Epoch(0), Vec::new(), Epoch(0)),
            })
            .collect();
        let archives = self
            .replicas
            .iter()
            .map(|r| ReplicaArchive {
                archive: r.archive.clone(),
                dropped: r.disk.synced().log_start(),
                not_archived: r.not_archived.clone(),
                retained_after: r.retained_after,
            })
            .collect();
        let executor_epochs = self
            .executors
            .iter()
            .map(|e| {
                (
                    e.id,
                    e.machine.as_ref().map_or(Epoch(0), |m| m.next_epoch()),
                )
            })
            .collect();
        let replica_stores: Vec<Vec<detflow_executor::MemStore>> = self
            .executors
            .chunks(self.partition_replicas as usize)
            .map(|replicas| {
                replicas
                    .iter()
                    .map(|e| match &e.machine {
                        Some(m) => m.store().mem().clone(),
                        None => detflow_executor::MemStore::new(),
                    })
                    .collect()
            })
            .collect();
        let stores = replica_stores.iter().map(|r| r[0].clone()).collect();
        let letters_pending = self
            .executors
            .iter()
            .map(|e| (e.id, e.machine.as_ref().map_or(0, |m| m.letters_pending())))
            .collect();
        Outcome {
            log,
            unanswered: self.config.txns - self.answered,
            letters_pending,
            readers: self.readers,
            snapshot_readers: self.snapshot_readers,
            calls: self.calls,
            stores,
            replica_stores,
            digests: self.digests,
            checkpoints: self.checkpoints,
            executor_epochs,
            partition_replicas: self.partition_replicas,
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
            log_compactions: self.log_compactions,
            archive_cuts: self.archive_cuts,
            archives,
            checkpoint_archive: self.checkpoint_archive,
            archive_stops_at_torn: self.config.archive_stops_at_torn,
            checkpoint_torn_as_empty: self.config.checkpoint_torn_as_empty,
        }
    }

    /// The address of the executor that is replica `id`, if there is one.
    fn executor_addr(&self, id: ExecutorId) -> Option<Addr> {
        let k = id.node.0.checked_sub(executor_host(0).0)?;
        if id.partition.0 >= self.config.partitions || k >= self.partition_replicas {
            return None;
        }
        Some(Addr::Executor(id.partition.0 * self.partition_replicas + k))
    }

    fn schedule(&mut self, at: Time, event: Event) {
        self.queue.schedule(at, event);
    }

    fn dispatch(&mut self, event: Event) {
        match event {
            Event::ClientTimer(c) => self.on_client_timer(c),
            Event::ClientWake(c) => self.on_client_wake(c),
            Event::Deliver(d) => self.on_deliver(d),
            Event::ExecutorTimer { p, incarnation } => self.on_executor_timer(p, incarnation),
            Event::ExecutorSynced { p, incarnation } => self.on_executor_synced(p, incarnation),
            Event::ExecutorCheckpointed { p, incarnation } => {
                self.on_executor_checkpointed(p, incarnation)
            }
            Event::FaultTick => self.on_fault_tick(),
            Event::CheckpointAsk => self.on_checkpoint_ask(),
            Event::ReaderWake(i) => self.on_reader_wake(i),
            Event::SnapshotWake(i) => self.on_snapshot_wake(i),
            Event::GatewayTimer { g, incarnation } => self.on_gateway_timer(g, incarnation),
            Event::HealPartition(id) => self.heal_partition(id),
            Event::ReplicaSynced { r, incarnation } => self.on_replica_synced(r, incarnation),
            Event::ReplicaTimer { r, incarnation } => self.on_replica_timer(r, incarnation),
            Event::ReplicaCompact {
                r,
                incarnation,
                through,
            } => {
                if self.replicas[r as usize].incarnation == incarnation {
                    self.replica_input(r, replica::Input::Compact { through });
                }
            }
            Event::ReplicaArchived { r, incarnation } => self.on_replica_archived(r, incarnation),
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
}
