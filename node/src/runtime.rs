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

// The runtime is the driver: it owns the clock and the disk, which the machines may not.
#![allow(clippy::disallowed_methods)]

use crate::config::{Access, Config, NodeLimits, NodeSpec};
use crate::failstop::fatal;
use crate::session::SessionKey;
use crate::storage::{FjallStore, LogStore};
use crate::transport::{Connection, Endpoint, FrameWriter, Limits, PeerRole, Tls, TransportError};
use anyhow::{Context, Result};
use detflow_executor::{Executor, Input, Output, Registry, Store};
use detflow_gateway::{self as gateway, Gateway};
use detflow_protocol::message::{Call, ClientRequest, Message, NodeStatus, Rejection, Reply};
use detflow_protocol::{ClientId, DetRng, Epoch, Machine, NodeId, PartitionId, RequestSeq, Time};
use detflow_scheduler::{PartitionMap, PlanServer, plan_server};
use detflow_sequencer::replica::{self, Replica, ReplicaConfig};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, mpsc, oneshot};

/// Which component a channel connects, so each (sender, receiver, channel) gets its own
/// QUIC stream and FIFO order without head-of-line blocking across channels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ChannelHeader {
    /// Replica → replica.
    Replication,
    /// Gateway → replica (and back).
    Submissions,
    /// Replica → executor `p`.
    Plans(u32),
    /// Executor → executor `p` (reads, acks, hellos).
    Reads(u32),
    /// Executor → replica (subscriptions).
    Subscriptions,
    /// Executor ↔ gateway (results, queries).
    Results,
}

fn channel_of(msg: &Message) -> ChannelHeader {
    match msg {
        Message::Peer { .. } => ChannelHeader::Replication,
        Message::Submit(_) | Message::NotLeader { .. } | Message::Duplicate { .. } => {
            ChannelHeader::Submissions
        }
        Message::Plan(plan) => ChannelHeader::Plans(plan.partition.0),
        Message::RemoteReads { to, .. } | Message::Ack { to, .. } | Message::Hello { to, .. } => {
            ChannelHeader::Reads(to.0)
        }
        Message::Subscribe { .. } => ChannelHeader::Subscriptions,
        _ => ChannelHeader::Results,
    }
}

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
}

type Inbox = mpsc::Sender<Event>;

/// Live counters, read by `status` and the metrics endpoint.
#[derive(Debug, Default)]
pub struct NodeStats {
    /// Current term of the local replica.
    pub term: AtomicU64,
    /// Leader the local replica believes in (0: none).
    pub leader: AtomicU64,
    /// Commit epoch of the local replica.
    pub commit: AtomicU64,
    /// Calls the gateway answered.
    pub calls_answered: AtomicU64,
    /// Calls answered with a committed outcome.
    pub commits: AtomicU64,
    /// Calls answered with an abort.
    pub aborts: AtomicU64,
    /// Frames dropped because they could not be routed.
    pub unroutable: AtomicU64,
    /// Messages from peer nodes refused because they contradict the sender's identity or
    /// role (a node speaking for another node, a partition it does not host, …).
    pub peer_rejected: AtomicU64,
    /// Events and messages shed because a bounded inbox or link queue was full.
    pub shed: AtomicU64,
    /// Outgoing messages dropped because they do not encode within the frame limit (a
    /// bug or a misconfigured limit; the link stays up).
    pub encode_failures: AtomicU64,
    /// Client calls answered `Unavailable` because no answer came within the deadline.
    pub calls_timed_out: AtomicU64,
    /// Client calls refused before reaching the gateway: foreign sessions, unauthorized
    /// procedures, overload.
    pub calls_refused: AtomicU64,
    /// Replication messages the local replica dropped because they contradict the
    /// protocol, by reason (`second_leader`, `impostor`, …).
    pub replica_drops: Mutex<BTreeMap<&'static str, u64>>,
    /// Peer inputs the local executors dropped (forged or contradictory plans, reads, acks
    /// and hellos), summed over partitions.
    pub executor_drops: Mutex<BTreeMap<PartitionId, u64>>,
    /// Per partition: (next epoch to apply, durable epoch).
    pub partitions: Mutex<BTreeMap<PartitionId, (u64, u64)>>,
    /// Aborts by reason (`user`, `outside_footprint`, …).
    pub aborts_by_reason: Mutex<BTreeMap<&'static str, u64>>,
    /// Call latency at the gateway, from the call's arrival to its reply.
    pub call_latency: LatencyHistogram,
    /// Epoch commit latency at the leader, from closing the batch to its quorum commit.
    pub epoch_latency: LatencyHistogram,
    /// Messages queued for each peer node and not yet written.
    pub backlogs: Mutex<BTreeMap<NodeId, u64>>,
}

/// A Prometheus-style histogram of latencies with fixed bucket bounds.
#[derive(Debug, Default)]
pub struct LatencyHistogram {
    /// Observations per bucket; the last one is +Inf.
    pub buckets: [AtomicU64; LATENCY_BOUNDS_US.len() + 1],
    /// Sum of observations in microseconds.
    pub sum_us: AtomicU64,
    /// Number of observations.
    pub count: AtomicU64,
}

/// Upper bounds of the latency buckets, in microseconds.
pub const LATENCY_BOUNDS_US: [u64; 12] = [
    1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    10_000_000,
];

impl LatencyHistogram {
    /// Records one observation.
    pub fn observe(&self, us: u64) {
        let bucket = LATENCY_BOUNDS_US
            .iter()
            .position(|b| us <= *b)
            .unwrap_or(LATENCY_BOUNDS_US.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }
}

/// The metric label of an abort reason.
fn reason_label(reason: &detflow_protocol::AbortReason) -> &'static str {
    use detflow_protocol::AbortReason as A;
    match reason {
        A::BadArgs(_) => "bad_args",
        A::BadValue { .. } => "bad_value",
        A::OutsideFootprint { .. } => "outside_footprint",
        A::ReplicatedWrite { .. } => "replicated_write",
        A::UnknownProcedure(_) => "unknown_procedure",
        A::Unroutable(_) => "unroutable",
        A::User(_) => "user",
        A::FootprintChanged(_) => "footprint_changed",
        A::Panicked(_) => "panicked",
        A::Overflow(_) => "overflow",
        A::BadKey(_) => "bad_key",
        A::ValueTooLarge { .. } => "value_too_large",
    }
}

/// Routes messages to local inboxes or to the link of the node that hosts the receiver.
pub(crate) struct Router {
    me: NodeId,
    /// Every node's roles, for checking what a peer may send.
    nodes: BTreeMap<NodeId, NodeSpec>,
    placement: BTreeMap<PartitionId, NodeId>,
    replica: Option<Inbox>,
    gateway: Option<Inbox>,
    executors: BTreeMap<PartitionId, Inbox>,
    links: BTreeMap<NodeId, mpsc::Sender<Message>>,
    stats: Arc<NodeStats>,
}

impl Router {
    fn to_node(&self, node: NodeId, msg: Message) {
        if node == self.me {
            self.dispatch(msg);
        } else if let Some(link) = self.links.get(&node) {
            self.send_or_shed(link, msg);
        }
    }

    fn to_replica(&self, replica: NodeId, msg: Message) {
        self.to_node(replica, msg);
    }

    fn to_executor(&self, partition: PartitionId, msg: Message) {
        match self.placement.get(&partition) {
            Some(node) => self.to_node(*node, msg),
            None => {
                self.stats.unroutable.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn to_gateway(&self, gateway: NodeId, msg: Message) {
        self.to_node(gateway, msg);
    }

    /// Hands a message that arrived for this node to the component it is for.
    fn dispatch(&self, msg: Message) {
        let inbox = match &msg {
            Message::Peer { .. } | Message::Submit(_) | Message::Subscribe { .. } => {
                self.replica.as_ref()
            }
            Message::Plan(plan) => self.executors.get(&plan.partition),
            Message::RemoteReads { to, .. }
            | Message::Ack { to, .. }
            | Message::Hello { to, .. } => self.executors.get(to),
            Message::Query { partition, .. } => self.executors.get(partition),
            Message::Duplicate { .. }
            | Message::NotLeader { .. }
            | Message::Result { .. }
            | Message::ResultUnknown { .. } => self.gateway.as_ref(),
            // Client messages come over client streams, never through the router.
            Message::Call(_)
            | Message::OpenSession
            | Message::Reply { .. }
            | Message::SessionCall { .. }
            | Message::SessionOpened { .. }
            | Message::Status
            | Message::StatusReply(_) => None,
        };
        match inbox {
            Some(inbox) => self.deliver(inbox, Event::Msg(msg)),
            None => {
                self.stats.unroutable.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Queues an event for a local task, shedding (counted) if its inbox is full.
    fn deliver(&self, inbox: &Inbox, event: Event) {
        self.send_or_shed(inbox, event);
    }

    /// Queues `item`; a full queue sheds it (counted): its reader is not keeping up, and
    /// every channel tolerates loss (replays and retries recover it), as it tolerates a
    /// network that drops. A closed queue means the node is shutting down.
    fn send_or_shed<T>(&self, queue: &mpsc::Sender<T>, item: T) {
        if let Err(mpsc::error::TrySendError::Full(_)) = queue.try_send(item) {
            self.stats.shed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Hands a message from peer node `sender` (as its certificate says) to its component,
    /// unless it contradicts what `sender` is (DESIGN.md §10c): a node speaks only for
    /// itself, for the partitions it hosts and in the roles it has.
    fn dispatch_from(&self, sender: NodeId, msg: Message) {
        match self.admit(sender, &msg) {
            Ok(()) => self.dispatch(msg),
            Err(reason) => {
                self.stats.peer_rejected.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%sender, reason, "refused a message from a peer");
            }
        }
    }

    fn admit(&self, sender: NodeId, msg: &Message) -> Result<(), &'static str> {
        let spec = self
            .nodes
            .get(&sender)
            .ok_or("not a node of this cluster")?;
        let hosts = |p: &PartitionId| self.placement.get(p) == Some(&sender);
        let mine = |p: &PartitionId| self.placement.get(p) == Some(&self.me);
        let check = |ok: bool, reason| if ok { Ok(()) } else { Err(reason) };
        match msg {
            Message::Peer { from, .. } => check(
                *from == sender && spec.replica,
                "replication from another node",
            ),
            Message::Submit(txn) => check(
                spec.gateway && txn.gateway == sender,
                "a submission for another gateway",
            ),
            Message::NotLeader { from, txn, .. } => check(
                *from == sender && spec.replica && txn.gateway == self.me,
                "a refusal on behalf of another replica",
            ),
            Message::Duplicate { .. } => check(spec.replica, "a duplicate from a non-replica"),
            Message::Subscribe { partition, .. } => check(
                hosts(partition),
                "a subscription for a partition it does not host",
            ),
            Message::Plan(plan) => check(
                spec.replica && mine(&plan.partition),
                "a plan from a non-replica or for a partition not here",
            ),
            Message::RemoteReads { to, reads } => check(
                hosts(&reads.from) && mine(to),
                "reads of a partition it does not host",
            ),
            Message::Ack { from, to, .. } | Message::Hello { from, to, .. } => check(
                hosts(from) && mine(to),
                "an ack or hello for a partition it does not host",
            ),
            Message::Query { gateway, .. } => check(
                spec.gateway && *gateway == sender,
                "a query on behalf of another gateway",
            ),
            Message::Result { .. } | Message::ResultUnknown { .. } => check(
                !spec.partitions.is_empty(),
                "a result from a node without partitions",
            ),
            Message::Call(_)
            | Message::OpenSession
            | Message::Reply { .. }
            | Message::SessionCall { .. }
            | Message::SessionOpened { .. }
            | Message::Status
            | Message::StatusReply(_) => Err("a client message on a node channel"),
        }
    }

    /// Tells the gateway on this node that the replica here follows `leader` now.
    fn leader_changed(&self, leader: NodeId) {
        if let Some(gateway) = &self.gateway {
            self.deliver(gateway, Event::Leader(leader));
        }
    }

    fn link_up(&self, node: NodeId) {
        for inbox in self
            .executors
            .values()
            .chain(&self.replica)
            .chain(&self.gateway)
        {
            self.deliver(inbox, Event::LinkUp(node));
        }
    }
}

/// A component task, made once the router exists.
type Starter = Box<
    dyn FnOnce(Arc<Router>) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
        + Send,
>;

/// Time since the node started, as the machines see it.
#[derive(Clone, Copy)]
struct Clock(Instant);

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

/// What serving a client needs: who may do what, and the bounds.
struct ClientService {
    router: Arc<Router>,
    stats: Arc<NodeStats>,
    me: NodeId,
    clock: Clock,
    sessions: SessionKey,
    access: Access,
    registry: Arc<Registry>,
    call_deadline: Duration,
    in_flight: Semaphore,
}

impl Node {
    /// Starts every role of `config`'s node: opens its stores (recovering them), binds its
    /// QUIC endpoint, and spawns the component, link and listener tasks.
    pub async fn start(config: Config) -> Result<Node> {
        let clock = Clock(Instant::now());
        let me = NodeId(config.id);
        let spec = config.me().clone();
        let options = config.workload_options();
        let workload =
            detflow_workloads::by_name_with(&config.workload, config.partitions(), &options)?;
        let mut scheme = workload.scheme();
        scheme.partitions = config.partitions();
        let map = PartitionMap::new(scheme)?;
        // Every node knows every built-in procedure (so `kv.txn` is always there); the
        // configured workload decides the partition scheme and the initial data.
        let mut registry = Registry::new();
        for name in detflow_workloads::NAMES {
            detflow_workloads::by_name(name, config.partitions())?.register(&mut registry);
        }
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

        let mut router = Router {
            me,
            nodes: config
                .cluster
                .iter()
                .map(|n| (NodeId(n.id), n.clone()))
                .collect(),
            placement: config.placement(),
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
            rc.batching.epoch_duration_us = config.epoch_us;
            let seed =
                u64::from(me.0) ^ clock.0.elapsed().as_nanos() as u64 ^ std::process::id() as u64;
            let replica = Replica::new(rc, durable, DetRng::new(seed));
            let map = map.clone();
            let stats = stats.clone();
            starts.push(Box::new(move |router| {
                Box::pin(replica_task(replica, log, rx, router, map, stats, clock))
            }));
        }
        for p in &spec.partitions {
            let partition = PartitionId(*p);
            let (tx, rx) = mpsc::channel(limits.inbox_events_max);
            router.executors.insert(partition, tx);
            let dir = config.data_dir.join(format!("partition-{p}"));
            let mut store = FjallStore::open(&dir)
                .with_context(|| format!("opening partition {p} at {}", dir.display()))?;
            let began = Instant::now();
            if store.load(crate::load::initial_rows(
                workload.as_ref(),
                &options,
                &map,
                partition,
            ))? {
                tracing::info!(
                    "partition {p}: initial rows loaded, synced and compacted in {:.1} s",
                    began.elapsed().as_secs_f64()
                );
            }
            let mut executor =
                Executor::new(partition, config.partitions(), registry.clone(), store);
            executor.set_plan_sources(config.replicas());
            let peers: Vec<(PartitionId, NodeId)> = config
                .placement()
                .into_iter()
                .filter(|(q, _)| *q != partition)
                .collect();
            let stats = stats.clone();
            starts.push(Box::new(move |router| {
                Box::pin(executor_task(executor, rx, router, peers, stats, clock))
            }));
        }
        if spec.gateway {
            let (tx, rx) = mpsc::channel(limits.inbox_events_max);
            router.gateway = Some(tx);
            let gateway = Gateway::new(me, registry.clone(), map.clone(), config.replicas(), 4096);
            let stats = stats.clone();
            starts.push(Box::new(move |router| {
                Box::pin(gateway_task(gateway, rx, router, stats))
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
            tasks.spawn(link_task(endpoint.clone(), node, addr, rx, router.clone()));
        }
        let clients = Arc::new(ClientService {
            router: router.clone(),
            stats: stats.clone(),
            me,
            clock,
            sessions,
            access: config.access.clone(),
            registry,
            call_deadline: Duration::from_millis(limits.call_deadline_ms),
            in_flight: Semaphore::new(limits.calls_in_flight_max),
        });
        tasks.spawn(accept_task(endpoint.clone(), router.clone(), clients));
        if let Some(addr) = config.metrics_listen {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the metrics endpoint {addr}"))?;
            tasks.spawn(crate::metrics::serve(
                listener,
                stats.clone(),
                endpoint.metrics(),
            ));
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

/// Keeps a connection to one node and writes every message for it, one stream per channel.
async fn link_task(
    endpoint: Endpoint,
    node: NodeId,
    addr: SocketAddr,
    mut rx: mpsc::Receiver<Message>,
    router: Arc<Router>,
) {
    let mut pending: Option<Message> = None;
    let mut backoff = Duration::from_millis(20);
    loop {
        let conn = match endpoint.connect(addr).await {
            Ok(conn) if conn.node_id() == Some(node.0) => conn,
            Ok(conn) => {
                // The certificate verified but names another node: a misconfigured
                // cluster (or an impostor); never send it this node's traffic.
                tracing::warn!(%node, %addr, peer = ?conn.node_id(),
                    "the node at this address presents another node's certificate");
                conn.close();
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => {
                tracing::debug!(%node, %addr, error = %e, "connect failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(500));
                continue;
            }
        };
        backoff = Duration::from_millis(20);
        tracing::info!(%node, %addr, "link up");
        router.link_up(node);
        let mut writers: BTreeMap<ChannelHeader, FrameWriter> = BTreeMap::new();
        loop {
            let msg = match pending.take() {
                Some(msg) => msg,
                None => match rx.recv().await {
                    Some(msg) => msg,
                    None => return,
                },
            };
            if let Ok(mut backlogs) = router.stats.backlogs.lock() {
                backlogs.insert(node, rx.len() as u64);
            }
            let header = channel_of(&msg);
            let writer = match writers.entry(header) {
                std::collections::btree_map::Entry::Occupied(w) => w.into_mut(),
                std::collections::btree_map::Entry::Vacant(slot) => {
                    match conn.open_channel(&header).await {
                        Ok(w) => slot.insert(w),
                        Err(e) => {
                            tracing::info!(%node, error = %e, "link down");
                            pending = Some(msg);
                            break;
                        }
                    }
                }
            };
            match writer.send(&msg).await {
                Ok(()) => {}
                // Nothing was written: the message is too big for a frame. That is this
                // node's bug (every message carrying user data is bounded below the frame
                // limit), not a dead link; dropping the link would only make it flap.
                Err(TransportError::Encode(e)) => {
                    router.stats.encode_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(%node, ?header, error = %e, "dropped a message that does not encode");
                }
                Err(e) => {
                    tracing::info!(%node, error = %e, "link down");
                    break;
                }
            }
        }
        // What was written but not delivered is lost; the channels replay it.
        tokio::time::sleep(backoff).await;
    }
}

/// Accepts connections: nodes open channels, clients open a stream per call.
async fn accept_task(endpoint: Endpoint, router: Arc<Router>, clients: Arc<ClientService>) {
    while let Some(incoming) = endpoint.accept().await {
        let conn = match incoming {
            Ok(conn) => conn,
            Err(e) => {
                tracing::debug!(error = %e, "refused a connection");
                continue;
            }
        };
        match (conn.role(), conn.node_id()) {
            (PeerRole::Node, Some(id)) => {
                tokio::spawn(serve_node(conn, NodeId(id), router.clone()));
            }
            (PeerRole::Client, _) => {
                tokio::spawn(serve_client(conn, clients.clone()));
            }
            (PeerRole::Node, None) => conn.close(),
        }
    }
}

async fn serve_node(conn: Connection, sender: NodeId, router: Arc<Router>) {
    if !router.nodes.contains_key(&sender) || sender == router.me {
        tracing::warn!(%sender, remote = %conn.remote_address(),
            "refused a node certificate that is not another node of this cluster");
        router.stats.peer_rejected.fetch_add(1, Ordering::Relaxed);
        conn.close();
        return;
    }
    loop {
        let (header, mut reader) = match conn.accept_channel::<ChannelHeader>().await {
            Ok(channel) => channel,
            Err(_) => return,
        };
        let router = router.clone();
        tokio::spawn(async move {
            loop {
                match reader.recv::<Message>().await {
                    Ok(Some(msg)) => router.dispatch_from(sender, msg),
                    Ok(None) => return,
                    // Only refused input is worth a warning; a lost connection (a peer that
                    // restarted, say) is routine and was logged as bad input on every restart.
                    Err(e) if e.is_refused_input() => {
                        tracing::warn!(?header, %sender, error = %e, "closed a channel with bad input");
                        return;
                    }
                    Err(e) => {
                        tracing::debug!(?header, error = %e, "channel ended");
                        return;
                    }
                }
            }
        });
    }
}

async fn serve_client(conn: Connection, service: Arc<ClientService>) {
    let fingerprint = conn.peer_fingerprint();
    loop {
        let (mut writer, mut reader) = match conn.accept_bi().await {
            Ok(stream) => stream,
            Err(_) => return,
        };
        let service = service.clone();
        tokio::spawn(async move {
            let answer = match reader.recv::<ClientRequest>().await {
                Ok(Some(request)) => service.answer(request, &fingerprint).await,
                Ok(None) => return,
                // As for channels: a client that gave up on a call resets its stream, which
                // is not bad input.
                Err(e) if e.is_refused_input() => {
                    tracing::warn!(error = %e, "closed a client stream with bad input");
                    return;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "client stream ended");
                    return;
                }
            };
            // A client that never reads its answer must not pin the task and the answer's
            // buffers: the write gets the same deadline as a frame read.
            match tokio::time::timeout(ANSWER_WRITE_DEADLINE, writer.send(&answer)).await {
                Ok(_) => {
                    let _ = writer.finish();
                }
                Err(_) => tracing::debug!("dropped an answer the client did not read in time"),
            }
        });
    }
}

impl ClientService {
    /// The answer to one client request.
    async fn answer(&self, request: ClientRequest, fingerprint: &[u8; 32]) -> Message {
        let (client, seq, reply) = match request {
            ClientRequest::OpenSession => {
                let (client, token) = self.sessions.issue(fingerprint);
                return Message::SessionOpened { client, token };
            }
            ClientRequest::Status => {
                return Message::StatusReply(status(&self.stats, self.me, self.clock));
            }
            ClientRequest::SessionCall { token, call } => {
                let (client, seq) = (call.client, call.seq);
                let reply = if !self.sessions.verify(client, fingerprint, &token) {
                    self.refuse(Rejection::ForeignSession(client.0))
                } else {
                    self.call(call).await
                };
                (client, seq, reply)
            }
            // A bare call names a session it cannot prove it owns.
            ClientRequest::Call(call) => (
                call.client,
                call.seq,
                self.refuse(Rejection::ForeignSession(call.client.0)),
            ),
        };
        Message::Reply { client, seq, reply }
    }

    /// Hands an authenticated call to the gateway and waits, boundedly, for its answer.
    async fn call(&self, call: Call) -> Reply {
        if let Err(rejection) = crate::access::authorize(&self.access, &self.registry, &call) {
            return self.refuse(rejection);
        }
        let Some(gateway) = &self.router.gateway else {
            return Reply::Unavailable;
        };
        let Ok(_permit) = self.in_flight.try_acquire() else {
            return self.refuse(Rejection::Overloaded(
                "this node's limit of calls in flight is reached".into(),
            ));
        };
        let (tx, rx) = oneshot::channel();
        self.router
            .deliver(gateway, Event::Client { call, reply: tx });
        match tokio::time::timeout(self.call_deadline, rx).await {
            Ok(reply) => reply.unwrap_or(Reply::Unavailable),
            Err(_) => {
                // The call may still execute; its retry (same session, same number) finds
                // the result, so Unavailable is the honest answer.
                self.stats.calls_timed_out.fetch_add(1, Ordering::Relaxed);
                Reply::Unavailable
            }
        }
    }

    fn refuse(&self, rejection: Rejection) -> Reply {
        self.stats.calls_refused.fetch_add(1, Ordering::Relaxed);
        Reply::Rejected(rejection)
    }
}

fn status(stats: &NodeStats, me: NodeId, clock: Clock) -> NodeStatus {
    let term = stats.term.load(Ordering::Relaxed);
    let leader = stats.leader.load(Ordering::Relaxed);
    let partitions = stats
        .partitions
        .lock()
        .map(|p| {
            p.iter()
                .map(|(id, (next, durable))| (*id, Epoch(*next), Epoch(*durable)))
                .collect()
        })
        .unwrap_or_default();
    NodeStatus {
        node: me,
        replica: (term > 0).then(|| {
            let leader = (leader > 0).then_some(NodeId(leader as u32));
            (term, leader, Epoch(stats.commit.load(Ordering::Relaxed)))
        }),
        partitions,
        calls_answered: stats.calls_answered.load(Ordering::Relaxed),
        uptime_us: clock.now().0,
        rows_loaded: crate::load::rows_loaded(),
        warehouses_loaded: crate::load::warehouses_loaded(),
    }
}

/// Sends the plan server's plans to their partitions.
fn send_plans(router: &Router, out: &mut Vec<plan_server::Output>) {
    for plan_server::Output::Plan { to, plan } in out.drain(..) {
        router.to_executor(to, Message::Plan(plan));
    }
}

async fn replica_task(
    mut replica: Replica,
    mut log: LogStore,
    mut inbox: mpsc::Receiver<Event>,
    router: Arc<Router>,
    map: PartitionMap,
    stats: Arc<NodeStats>,
    clock: Clock,
) {
    let mut server = PlanServer::new(map);
    let mut plans = Vec::new();
    let mut leader = None;
    let mut out = Vec::new();
    // When this replica, leading, wrote each epoch: for the epoch commit latency.
    let mut closed_at: BTreeMap<Epoch, Instant> = BTreeMap::new();
    let mut published_drops = 0;
    loop {
        let deadline = replica.next_deadline().map(|t| clock.instant(t));
        let first = tokio::select! {
            ev = inbox.recv() => match ev { Some(ev) => Some(ev), None => return },
            _ = sleep_until(deadline) => None,
        };
        let mut inputs = Vec::new();
        match first {
            Some(ev) => inputs.push(ev),
            None => {
                replica.handle(clock.now(), replica::Input::Tick, &mut out);
            }
        }
        drain(&mut inbox, &mut inputs);
        for ev in inputs {
            let input = match ev {
                Event::Msg(Message::Peer { from, msg }) => replica::Input::Peer { from, msg },
                Event::Msg(Message::Submit(txn)) => replica::Input::Submit(txn),
                Event::Msg(Message::Subscribe { partition, from }) => {
                    let input = plan_server::Input::Subscribe { partition, from };
                    server.handle(clock.now(), input, &mut plans);
                    send_plans(&router, &mut plans);
                    continue;
                }
                _ => continue,
            };
            replica.handle(clock.now(), input, &mut out);
        }
        // Perform effects; one fsync covers every write of this round (group commit).
        loop {
            let mut last_write = None;
            for effect in out.drain(..) {
                match effect {
                    replica::Output::Committed(batch) => {
                        if let Some(closed) = closed_at.remove(&batch.epoch) {
                            stats
                                .epoch_latency
                                .observe(closed.elapsed().as_micros() as u64);
                        }
                        server.handle(
                            clock.now(),
                            plan_server::Input::Committed(batch),
                            &mut plans,
                        );
                    }
                    replica::Output::Duplicate {
                        client,
                        seq,
                        gateway,
                    } => {
                        router.to_gateway(gateway, Message::Duplicate { client, seq });
                    }
                    replica::Output::NotLeader { txn, leader } => {
                        let gateway = txn.gateway;
                        let from = replica.id();
                        router.to_gateway(gateway, Message::NotLeader { from, txn, leader });
                    }
                    replica::Output::Persist(write) => {
                        if replica.is_leader() {
                            for entry in &write.append {
                                closed_at.insert(entry.epoch(), Instant::now());
                            }
                        }
                        if let Err(e) = log.append(&write) {
                            fatal(format!("cannot append to the log: {e}"));
                        }
                        last_write = Some(write.id);
                    }
                    replica::Output::Send { to, msg } => {
                        router.to_replica(
                            to,
                            Message::Peer {
                                from: replica.id(),
                                msg,
                            },
                        );
                    }
                }
            }
            let Some(write) = last_write else { break };
            if let Err(e) = tokio::task::block_in_place(|| log.sync()) {
                fatal(format!("cannot fsync the log: {e}"));
            }
            replica.handle(clock.now(), replica::Input::Persisted { write }, &mut out);
        }
        send_plans(&router, &mut plans);
        if replica.leader() != leader {
            leader = replica.leader();
            if let Some(leader) = leader {
                router.leader_changed(leader);
            }
        }
        stats.term.store(replica.term(), Ordering::Relaxed);
        stats.leader.store(
            replica.leader().map_or(0, |l| u64::from(l.0)),
            Ordering::Relaxed,
        );
        stats
            .commit
            .store(replica.commit_epoch().0, Ordering::Relaxed);
        // Drops are rare: publish them only when they change, not every round.
        let dropped = replica.stats().peer_messages_dropped;
        if dropped != published_drops
            && let Ok(mut drops) = stats.replica_drops.lock()
        {
            for (reason, n) in replica.stats().peer_drops.by_reason() {
                drops.insert(reason.name(), n);
            }
            published_drops = dropped;
        }
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

/// Sends one of partition `me`'s outputs where it goes; true if it reports an applied
/// epoch (which the caller makes durable).
fn route_output(router: &Router, me: PartitionId, effect: Output) -> bool {
    match effect {
        Output::EpochApplied(_) => return true,
        Output::Result {
            gateway,
            result,
            recovered,
        } => router.to_gateway(gateway, Message::Result { result, recovered }),
        Output::ResultUnknown {
            gateway,
            client,
            seq,
        } => router.to_gateway(gateway, Message::ResultUnknown { client, seq }),
        Output::SendAck { to, durable } => router.to_executor(
            to,
            Message::Ack {
                from: me,
                to,
                durable,
            },
        ),
        Output::SendHello { to, durable } => router.to_executor(
            to,
            Message::Hello {
                from: me,
                to,
                durable,
            },
        ),
        Output::SendReads { to, reads } => {
            router.to_executor(to, Message::RemoteReads { to, reads });
        }
        Output::Subscribe { to, from } => router.to_replica(
            to,
            Message::Subscribe {
                partition: me,
                from,
            },
        ),
    }
    false
}

async fn executor_task(
    mut executor: Executor<FjallStore>,
    mut inbox: mpsc::Receiver<Event>,
    router: Arc<Router>,
    peers: Vec<(PartitionId, NodeId)>,
    stats: Arc<NodeStats>,
    clock: Clock,
) {
    let me = executor.partition();
    let mut out = Vec::new();
    executor.handle(clock.now(), Input::Start, &mut out);
    let mut published_drops = 0;
    loop {
        let deadline = executor.next_deadline().map(|t| clock.instant(t));
        let first = tokio::select! {
            ev = inbox.recv() => match ev { Some(ev) => Some(ev), None => return },
            _ = sleep_until(deadline) => None,
        };
        let mut events = Vec::new();
        match first {
            Some(ev) => events.push(ev),
            None => executor.handle(clock.now(), Input::Tick, &mut out),
        }
        drain(&mut inbox, &mut events);
        for ev in events {
            let input = match ev {
                Event::Msg(Message::Plan(plan)) => Input::Plan((*plan).clone()),
                Event::Msg(Message::RemoteReads { reads, .. }) => Input::RemoteReads(reads),
                Event::Msg(Message::Ack { from, durable, .. }) => Input::Ack { from, durable },
                Event::Msg(Message::Hello { from, durable, .. }) => Input::Hello { from, durable },
                Event::Msg(Message::Query {
                    client,
                    seq,
                    gateway,
                    ..
                }) => Input::ResultQuery {
                    gateway,
                    client,
                    seq,
                },
                Event::LinkUp(node) => {
                    // The machine decides what a new connection means: a replica may be
                    // its plan source, a partition may lack reads.
                    executor.handle(clock.now(), Input::ReplicaConnected(node), &mut out);
                    for (peer, _) in peers.iter().filter(|(_, n)| *n == node) {
                        executor.handle(clock.now(), Input::Connected { peer: *peer }, &mut out);
                    }
                    continue;
                }
                _ => continue,
            };
            executor.handle(clock.now(), input, &mut out);
        }
        let mut applied = false;
        for effect in out.drain(..) {
            applied |= route_output(&router, me, effect);
        }
        if applied {
            let durable = match tokio::task::block_in_place(|| executor.store_mut().sync()) {
                Ok(epoch) => epoch,
                Err(e) => fatal(format!("cannot fsync partition {me}: {e}")),
            };
            executor.handle(clock.now(), Input::Durable { up_to: durable }, &mut out);
            for effect in out.drain(..) {
                route_output(&router, me, effect);
            }
        }
        if let Ok(mut parts) = stats.partitions.lock() {
            let durable = executor.store().applied_epoch().0;
            parts.insert(me, (executor.next_epoch().0, durable));
        }
        let s = executor.stats();
        let dropped = s.peer_inputs_dropped + s.plans_dropped + s.reads_refused;
        if dropped != published_drops
            && let Ok(mut drops) = stats.executor_drops.lock()
        {
            drops.insert(me, dropped);
            published_drops = dropped;
        }
    }
}

/// How often the gateway task forgets clients that stopped waiting.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// How long a client has to read the answer to one call before the node drops it (the same
/// patience as `Limits::frame_read_timeout` gives a client's request).
const ANSWER_WRITE_DEADLINE: Duration = Duration::from_secs(10);

/// Clients waiting for a call's reply, and when the call first arrived.
type Waiting = (Instant, Vec<oneshot::Sender<Reply>>);

async fn gateway_task(
    mut gateway: Gateway,
    mut inbox: mpsc::Receiver<Event>,
    router: Arc<Router>,
    stats: Arc<NodeStats>,
) {
    let mut waiting: BTreeMap<(ClientId, RequestSeq), Waiting> = BTreeMap::new();
    let mut out = Vec::new();
    let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
    loop {
        let ev = tokio::select! {
            ev = inbox.recv() => match ev { Some(ev) => ev, None => return },
            _ = sweep.tick() => {
                // Waiters whose client stopped waiting (the call deadline passed, the
                // stream was reset) would otherwise stay here forever.
                waiting.retain(|(client, seq), (_, waiters)| {
                    waiters.retain(|w| !w.is_closed());
                    if waiters.is_empty() {
                        let forget = gateway::Input::Forget { client: *client, seq: *seq };
                        gateway.handle(Time::ZERO, forget, &mut out);
                    }
                    !waiters.is_empty()
                });
                continue;
            }
        };
        let input = match ev {
            Event::Client { call, reply } => {
                waiting
                    .entry((call.client, call.seq))
                    .or_insert_with(|| (Instant::now(), Vec::new()))
                    .1
                    .push(reply);
                gateway::Input::Call(call)
            }
            Event::Leader(leader) => gateway::Input::Leader(leader),
            Event::Msg(Message::NotLeader { from, txn, leader }) => {
                gateway::Input::NotLeader { from, txn, leader }
            }
            Event::Msg(Message::Duplicate { client, seq }) => {
                gateway::Input::Duplicate { client, seq }
            }
            Event::Msg(Message::Result { result, recovered }) => {
                gateway::Input::Result { result, recovered }
            }
            Event::Msg(Message::ResultUnknown { client, seq }) => {
                gateway::Input::ResultUnknown { client, seq }
            }
            _ => continue,
        };
        // The gateway keeps no timers, so the time it is handed does not matter.
        gateway.handle(Time::ZERO, input, &mut out);
        for effect in out.drain(..) {
            match effect {
                gateway::Output::Submit { to, txn } => router.to_replica(to, Message::Submit(txn)),
                gateway::Output::Query { to, client, seq } => {
                    let msg = Message::Query {
                        client,
                        seq,
                        partition: to,
                        gateway: router.me,
                    };
                    router.to_executor(to, msg);
                }
                gateway::Output::Reply { client, seq, reply } => {
                    stats.calls_answered.fetch_add(1, Ordering::Relaxed);
                    if let Reply::Done { outcome, .. } = &reply {
                        match outcome {
                            detflow_protocol::Outcome::Committed(_) => {
                                stats.commits.fetch_add(1, Ordering::Relaxed);
                            }
                            detflow_protocol::Outcome::Aborted(reason) => {
                                stats.aborts.fetch_add(1, Ordering::Relaxed);
                                if let Ok(mut by) = stats.aborts_by_reason.lock() {
                                    *by.entry(reason_label(reason)).or_default() += 1;
                                }
                            }
                        }
                    }
                    if let Some((since, waiters)) = waiting.remove(&(client, seq)) {
                        stats
                            .call_latency
                            .observe(since.elapsed().as_micros() as u64);
                        for waiter in waiters {
                            let _ = waiter.send(reply.clone());
                        }
                    }
                }
            }
        }
    }
}
