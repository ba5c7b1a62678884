//! The node runtime: one tokio task per state machine, fed by an inbox, driving effects.
//!
//! ```text
//!   QUIC channels ──▶ dispatch ──▶ replica task   (Replica + LogStore + plan server)
//!                            ├──▶ executor tasks (Executor<FjallStore>, one per partition)
//!                            └──▶ gateway task   (Gateway + waiting clients)
//!   every task ──▶ Router ──▶ local inbox, or the link task of the destination node
//! ```
//!
//! Each task owns its machine (never shared behind a lock): it waits for an inbox event or
//! the machine's deadline, calls `handle`, performs the outputs, and makes writes durable
//! once per batch of inputs (group commit) before telling the machine `Persisted`.
//!
//! - this module: [`Node`] (opening the stores, wiring the tasks), the clock, the inbox
//!   events the tasks share;
//! - `router`: [`ChannelHeader`], the router (local dispatch, peer admission, links);
//! - `links`: the link task per peer node, the accept task, serving a peer's channels;
//! - `clients`: serving a client's streams (sessions, authorization, call deadline);
//! - `replica`, `executor`, `gateway`: one driver task per machine;
//! - `stats`: [`NodeStats`], the live counters, and the status a client can ask for.

// The runtime is the driver: it owns the clock and the disk, which the machines may not.
#![allow(clippy::disallowed_methods)]

mod clients;
mod executor;
mod gateway;
mod links;
mod replica;
mod router;
mod stats;

pub use router::ChannelHeader;
pub use stats::{
    CountGauge, LATENCY_BUCKETS_SECONDS, NodeStats, PartitionLabel, PeerLabel, ReasonLabel,
};

use crate::config::{Config, NodeLimits};
use crate::session::SessionKey;
use crate::storage::{FjallStore, LogStore};
use crate::transport::{Endpoint, Limits, Tls};
use anyhow::{Context, Result};
use clients::ClientService;
use detflow_executor::{Executor, Registry, Store};
use detflow_gateway::Gateway;
use detflow_protocol::message::{Call, Message, Reply};
use detflow_protocol::{DetRng, Epoch, NodeId, PartitionId, Time};
use detflow_scheduler::PartitionMap;
use detflow_sequencer::replica::{Replica, ReplicaConfig};
use router::Router;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// A node's least election timeout; it waits at most twice this, and the leader sends heartbeats
/// five times as often (see the replica's set-up in `Node::start_with`).
const ELECTION_TIMEOUT_MIN_US: u64 = 100_000;

/// How many rows of each declared table a node checks against the table's schema before
/// it serves (a sample: a full scan of a large store would delay every start).
const SCHEMA_CHECK_ROWS: usize = 1_000;

/// An inbox event of a component task.
#[derive(Debug)]
pub(crate) enum Event {
    /// A message for this component.
    Msg(Message),
    /// The link to a node was (re)established.
    LinkUp(NodeId),
    /// The replica on this node follows a new leader (for the gateway on this node).
    Leader(NodeId),
    /// A client's call, answered through `reply`.
    Client {
        call: Call,
        reply: oneshot::Sender<Reply>,
    },
    /// A client's stream read, answered through `reply`.
    ClientRead {
        stream: String,
        from: detflow_protocol::stream::Offset,
        max: u32,
        reply: oneshot::Sender<detflow_protocol::stream::StreamReply>,
    },
    /// A client's snapshot read, answered through `reply`.
    ClientSnapshot {
        read: detflow_protocol::snapshot::SnapshotRead,
        reply: oneshot::Sender<detflow_protocol::snapshot::SnapshotReply>,
    },
    /// A client's read of the committed log from `from` on, answered through `reply`.
    ClientLog {
        from: detflow_protocol::Epoch,
        reply: oneshot::Sender<detflow_protocol::message::LogReply>,
    },
    /// A client asks this partition replica to checkpoint after epoch `at`.
    ClientCheckpoint {
        at: detflow_protocol::Epoch,
        reply: oneshot::Sender<(
            detflow_protocol::PartitionId,
            detflow_protocol::message::CheckpointAnswer,
        )>,
    },
}

type Inbox = mpsc::Sender<Event>;

/// A component task, made once the router exists.
type Starter = Box<
    dyn FnOnce(Arc<Router>) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
        + Send,
>;

/// Time since the node started, as the machines see it.
#[derive(Clone, Copy)]
struct Clock(Instant);

/// Where this process's gateway numbers its reads: the wall clock in microseconds, so a
/// restarted node's reads do not reuse the numbers of its previous run, whose answers may
/// still be on their way.
fn first_read_id() -> u64 {
    #[allow(clippy::disallowed_methods)]
    let now = std::time::SystemTime::now();
    now.duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX >> 1))
}

impl Clock {
    fn now(&self) -> Time {
        Time(self.0.elapsed().as_micros() as u64)
    }

    fn instant(&self, t: Time) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.0 + Duration::from_micros(t.0))
    }
}

/// A running node.
pub struct Node {
    stats: Arc<NodeStats>,
    endpoint: Endpoint,
    tasks: tokio::task::JoinSet<()>,
}

/// The cluster's partition map: the configured workload decides the initial data and the
/// rules of its tables; every other service's tables are partitioned as the service
/// declares.
pub fn partition_map(
    config: &Config,
    workload: &dyn detflow_workloads::Workload,
    registry: &Registry,
) -> Result<PartitionMap> {
    let mut scheme = workload.scheme();
    scheme.partitions = config.partitions();
    for (table, rule) in registry.table_rules() {
        if !scheme.tables.iter().any(|(t, _)| *t == table) {
            scheme = scheme.table(&table, rule);
        }
    }
    Ok(PartitionMap::new(scheme)?)
}

impl Node {
    /// Starts every role of `config`'s node with the built-in services (see
    /// [`crate::NodeBuilder`] for a node with yours).
    pub async fn start(config: Config) -> Result<Node> {
        crate::NodeBuilder::new().start(config).await
    }

    /// Starts every role of `config`'s node, running the procedures of `registry`: opens
    /// its stores (recovering them), binds its QUIC endpoint, and spawns the component,
    /// link and listener tasks.
    pub async fn start_with(config: Config, registry: Registry) -> Result<Node> {
        let clock = Clock(Instant::now());
        let me = NodeId(config.id);
        let spec = config.me().clone();
        let options = config.workload_options();
        let workload =
            detflow_workloads::by_name_with(&config.workload, config.partitions(), &options)?;
        let map = partition_map(&config, workload.as_ref(), &registry)?;
        let registry = Arc::new(registry);
        let tls = Tls::load(&config.tls.ca, &config.tls.cert, &config.tls.key)
            .with_context(|| format!("loading TLS material for node {me}"))?;
        // Peers check every message against the id in our certificate; a node started with
        // another node's certificate would have all its messages dropped as an impostor's.
        if tls.node_id() != Some(me.0) {
            anyhow::bail!(
                "{} is not node {me}'s certificate (it names {}); run `detflow certs` for this \
                 cluster or point [tls] at node {me}'s files",
                config.tls.cert.display(),
                tls.node_id()
                    .map_or_else(|| "no node id".to_string(), |id| format!("node {id}"))
            );
        }
        let sessions = SessionKey::load(&config.tls.session_key())?;
        let limits: NodeLimits = config.limits.clone();
        let endpoint = Endpoint::bind(config.listen, &tls, Limits::default())
            .with_context(|| format!("binding {}", config.listen))?;
        let stats = Arc::new(NodeStats::default());
        // Status answers while the stores load, for the loading progress.
        let (loaded, loading) = oneshot::channel();
        let loading = tokio::spawn(links::serve_status_while_loading(
            endpoint.clone(),
            stats.clone(),
            me,
            clock,
            loading,
        ));

        let placement = Arc::new(config.placement());
        let mut router = Router {
            me,
            nodes: config
                .cluster
                .iter()
                .map(|n| (NodeId(n.id), n.clone()))
                .collect(),
            placement: placement.clone(),
            replica: None,
            gateway: None,
            executors: BTreeMap::new(),
            links: BTreeMap::new(),
            stats: stats.clone(),
        };
        let mut starts: Vec<Starter> = Vec::new();

        if spec.replica {
            let (tx, rx) = mpsc::channel(limits.inbox_events_max);
            router.replica = Some(tx);
            let dir = config.data_dir.join("log");
            let (log, durable) = LogStore::open(&dir)
                .with_context(|| format!("opening the log at {}", dir.display()))?;
            let mut rc = ReplicaConfig::new(me, config.replicas());
            rc.batching.epoch_us = config.epoch_us;
            rc.batching.epoch_min_us = config.epoch_min_us;
            rc.compact_every_epochs = config.compact_every_epochs;
            // A LAN's round trips are well under a millisecond: a dead leader's
            // followers campaign after 100–200 ms. PreVote and CheckQuorum keep a slow
            // or rejoining replica from deposing a healthy leader at these timeouts.
            rc.election_timeout_min_us = ELECTION_TIMEOUT_MIN_US;
            rc.election_timeout_max_us = 2 * ELECTION_TIMEOUT_MIN_US;
            rc.heartbeat_us = ELECTION_TIMEOUT_MIN_US / 5;
            let seed =
                u64::from(me.0) ^ clock.0.elapsed().as_nanos() as u64 ^ std::process::id() as u64;
            let replica = Replica::new(rc, durable, DetRng::new(seed));
            let map = map.clone();
            let stats = stats.clone();
            let executors = placement.executors().collect();
            let archive = replica::ArchiveSink {
                archive: crate::archive::Archive::new(&config.archive_dir()),
                retention: config.archive_retention(),
                hosted: placement.hosted_on(me).collect(),
            };
            starts.push(Box::new(move |router| {
                Box::pin(replica::replica_task(
                    replica, log, archive, rx, router, map, executors, stats, clock,
                ))
            }));
        }
        let checkpoint_turn = Arc::new(tokio::sync::Semaphore::new(1));
        for p in &spec.partitions {
            let partition = PartitionId(*p);
            let (tx, rx) = mpsc::channel(limits.inbox_events_max);
            router.executors.insert(partition, tx);
            let dir = config.data_dir.join(format!("partition-{p}"));
            let mut store = FjallStore::open(&dir)
                .with_context(|| format!("opening partition {p} at {}", dir.display()))?;
            let began = Instant::now();
            let archive = crate::archive::Archive::new(&config.archive_dir());
            // A store that never loaded lost its state (or never had one): resume from
            // the last checkpoint, whose epochs the log may no longer hold.
            let lost = !store.is_loaded() && store.applied_epoch() == Epoch(0);
            let mut last_checkpoint = Epoch(0);
            let checkpoint = match config.checkpoint_every_epochs {
                0 => None,
                _ if !lost => {
                    last_checkpoint = last_checkpoint_epoch(&archive, partition)?;
                    None
                }
                _ => readable_checkpoint(&archive, partition)?,
            };
            match checkpoint {
                Some((file, rows)) => {
                    last_checkpoint = file.epoch;
                    tokio::task::block_in_place(|| store.restore(file.epoch, rows))?;
                    tracing::info!(
                        "partition {p}: restored from the checkpoint after epoch {} ({}) in \
                         {:.1} s",
                        file.epoch,
                        file.path.display(),
                        began.elapsed().as_secs_f64()
                    );
                }
                _ => {
                    let rows =
                        crate::load::initial_rows(workload.as_ref(), &options, &map, partition);
                    // Loading blocks; the status server runs on another worker meanwhile.
                    if tokio::task::block_in_place(|| store.load(rows))? {
                        tracing::info!(
                            "partition {p}: initial rows loaded, synced and compacted in {:.1} s",
                            began.elapsed().as_secs_f64()
                        );
                    }
                }
            }
            // On-demand checkpoints are written even when periodic ones are off.
            let checkpoints = Some(executor::Checkpoints {
                // A checkpoint past what the store applied (its tail was lost) is no
                // checkpoint of this store's state.
                last: Some(last_checkpoint)
                    .filter(|e| *e <= store.applied_epoch())
                    .unwrap_or(Epoch(0)),
                archive,
                turn: checkpoint_turn.clone(),
                mib_per_sec: config.checkpoint_mib_per_sec,
                retention: (!spec.replica).then(|| {
                    (
                        config.archive_retention(),
                        placement.hosted_on(me).collect(),
                    )
                }),
            });
            // Rows stored under other declarations (another build of a service, another
            // workload) stop the node here, before it serves anything.
            registry
                .check_stored(&store, SCHEMA_CHECK_ROWS)
                .with_context(|| format!("partition {p} at {}", dir.display()))?;
            let mut executor =
                Executor::new(partition, config.partitions(), registry.clone(), store);
            executor.set_placement(me, placement.clone());
            executor.set_plan_sources(config.replicas());
            executor.set_retention(detflow_executor::Retention {
                us: config.snapshots.retention_ms.saturating_mul(1_000),
                bytes_max: usize::try_from(config.snapshots.retention_bytes).unwrap_or(usize::MAX),
            });
            // This node's own gateway first: no hop while it lives.
            let mut gateways = config.gateways();
            gateways.sort_by_key(|g| *g != me);
            executor.set_delivery_gateways(gateways);
            executor.set_checkpoint_every(config.checkpoint_every_epochs);
            let stats = stats.clone();
            starts.push(Box::new(move |router| {
                Box::pin(executor::executor_task(
                    executor,
                    rx,
                    router,
                    stats,
                    clock,
                    checkpoints,
                ))
            }));
        }
        if spec.gateway {
            let (tx, rx) = mpsc::channel(limits.inbox_events_max);
            router.gateway = Some(tx);
            let mut gateway =
                Gateway::new(me, registry.clone(), map.clone(), config.replicas(), 4096);
            gateway.set_placement(placement.clone());
            gateway.set_first_read_id(first_read_id());
            gateway.set_call_deadline_us(limits.call_deadline_ms.saturating_mul(1_000));
            gateway.set_calls_in_flight_max(limits.calls_in_flight_max);
            let stats = stats.clone();
            starts.push(Box::new(move |router| {
                Box::pin(gateway::gateway_task(gateway, rx, router, stats, clock))
            }));
        }
        let mut links = Vec::new();
        for node in config.cluster.iter().filter(|n| n.id != config.id) {
            let (tx, rx) = mpsc::channel(limits.link_messages_max);
            router.links.insert(NodeId(node.id), tx);
            links.push((NodeId(node.id), node.addr, rx));
        }
        let router = Arc::new(router);
        let mut tasks = tokio::task::JoinSet::new();
        for start in starts {
            tasks.spawn(start(router.clone()));
        }
        for (node, addr, rx) in links {
            tasks.spawn(links::link_task(
                endpoint.clone(),
                node,
                addr,
                rx,
                router.clone(),
            ));
        }
        let _ = loaded.send(());
        let _ = loading.await;
        let clients = Arc::new(ClientService {
            router: router.clone(),
            stats: stats.clone(),
            me,
            clock,
            sessions,
            access: config.access.clone(),
            registry,
        });
        tasks.spawn(links::accept_task(
            endpoint.clone(),
            router.clone(),
            clients,
        ));
        if let Some(addr) = config.metrics_listen {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the metrics endpoint {addr}"))?;
            let registry = crate::metrics::registry(&stats, endpoint.metrics());
            tasks.spawn(crate::metrics::serve(listener, Arc::new(registry)));
        }
        tracing::info!(node = %me, listen = %config.listen, "node started");
        Ok(Node {
            stats,
            endpoint,
            tasks,
        })
    }

    /// Live counters.
    pub fn stats(&self) -> &Arc<NodeStats> {
        &self.stats
    }

    /// Resolves if a task of the node ends while it should be running: a component that
    /// stopped means a dead component, and the node must not keep serving without it
    /// (fail-stop). Returns which way it ended.
    pub async fn failed(&mut self) -> String {
        match self.tasks.join_next().await {
            Some(Ok(())) => "a component task ended".into(),
            Some(Err(e)) => format!("a component task failed: {e}"),
            None => "the node has no tasks".into(),
        }
    }

    /// Stops every task and closes the endpoint.
    pub async fn shutdown(mut self) {
        self.tasks.abort_all();
        self.endpoint.close();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Takes what else is already waiting, up to a bound, so one round (and one fsync) serves
/// a batch of inputs.
fn drain(inbox: &mut mpsc::Receiver<Event>, events: &mut Vec<Event>) {
    while events.len() < 512 {
        match inbox.try_recv() {
            Ok(ev) => events.push(ev),
            Err(_) => break,
        }
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// The epoch of the last checkpoint of `partition` in `archive` (0 if none).
fn last_checkpoint_epoch(
    archive: &crate::archive::Archive,
    partition: PartitionId,
) -> Result<Epoch> {
    Ok(archive
        .checkpoints()
        .with_context(|| format!("listing the checkpoints of partition {partition}"))?
        .into_iter()
        .rfind(|c| c.partition == partition)
        .map_or(Epoch(0), |c| c.epoch))
}

/// The last checkpoint of `partition` in `archive` that reads back, with its rows; a torn
/// or altered one is logged and passed over for the one before.
fn readable_checkpoint(
    archive: &crate::archive::Archive,
    partition: PartitionId,
) -> Result<Option<(crate::archive::CheckpointFile, crate::archive::Rows)>> {
    let files = archive
        .checkpoints()
        .with_context(|| format!("listing the checkpoints of partition {partition}"))?;
    for file in files.into_iter().rev().filter(|c| c.partition == partition) {
        match archive.read_checkpoint(&file) {
            Ok(rows) => return Ok(Some((file, rows))),
            Err(e) => tracing::warn!("{e:#}; trying an older checkpoint"),
        }
    }
    Ok(None)
}
