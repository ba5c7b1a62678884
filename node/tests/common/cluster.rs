//! A cluster of `detflow node` processes in a folder of its own, and the polls the
//! process-level tests share (status, leader, epochs, metrics).

use super::{metric, spawn_node};
use detflow_client::{Client, RetryPolicy, Tls};
use detflow_node::certs::{self, CertPaths};
use detflow_node::config::{Config, NodeSpec, TlsPaths};
use detflow_protocol::NodeId;
use detflow_protocol::message::NodeStatus;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------
// A cluster of node processes in a folder of its own.
// ---------------------------------------------------------------------------------------

/// One node process (or its place while it is down).
pub(crate) struct NodeProc {
    pub(crate) id: u32,
    pub(crate) addr: SocketAddr,
    pub(crate) metrics: SocketAddr,
    pub(crate) partitions: Vec<u32>,
    pub(crate) config: PathBuf,
    pub(crate) log: PathBuf,
    pub(crate) child: Option<Child>,
}

/// A local cluster: certificates, one config per node, node processes. Dropping it
/// SIGKILLs every node; if the test is failing it keeps the folder and prints the logs.
pub(crate) struct Cluster {
    pub(crate) root: PathBuf,
    pub(crate) temp: Option<tempfile::TempDir>,
    pub(crate) certs: CertPaths,
    pub(crate) nodes: Vec<NodeProc>,
}

impl Cluster {
    /// Writes certificates and configs for `nodes` nodes, each a replica and a gateway,
    /// partitions spread round-robin, and starts every node.
    pub(crate) fn start(nodes: u32, partitions: u32, workload: &str) -> Cluster {
        Cluster::start_with(nodes, partitions, workload, |_| {})
    }

    /// [`Cluster::start`], with `configure` adjusting every node's configuration (TPC-C
    /// sizing, say) before it is written.
    pub(crate) fn start_with(
        nodes: u32,
        partitions: u32,
        workload: &str,
        configure: impl Fn(&mut Config),
    ) -> Cluster {
        let temp = tempfile::Builder::new()
            .prefix("detflow-cluster-test-")
            .tempdir()
            .expect("create a temporary folder");
        let root = temp.path().to_owned();
        let certs = certs::generate(&root.join("certs"), nodes).expect("make certificates");
        let quic = free_udp_ports(nodes as usize);
        let http = free_tcp_ports(nodes as usize);
        let specs: Vec<NodeSpec> = (0..nodes)
            .map(|i| NodeSpec {
                id: i + 1,
                addr: SocketAddr::from(([127, 0, 0, 1], quic[i as usize])),
                replica: true,
                gateway: true,
                partitions: (0..partitions).filter(|p| p % nodes == i).collect(),
            })
            .collect();
        let mut procs = Vec::new();
        for (i, spec) in specs.iter().enumerate() {
            let identity = certs.node(spec.id).expect("a certificate per node");
            let metrics = SocketAddr::from(([127, 0, 0, 1], http[i]));
            let mut config = Config {
                id: spec.id,
                listen: spec.addr,
                data_dir: root.join(format!("node-{}", spec.id)),
                workload: workload.to_owned(),
                warehouses: None,
                scale_down: None,
                epoch_us: 5_000,
                metrics_listen: Some(metrics),
                tls: TlsPaths {
                    ca: certs.ca.cert.clone(),
                    cert: identity.cert.clone(),
                    key: identity.key.clone(),
                    session_key: None,
                },
                // The tests drive list-append histories through kv.txn on its own table.
                access: detflow_node::config::Access {
                    kv_txn_tables: vec![detflow_workloads::kv::TABLE.into()],
                },
                limits: Default::default(),
                cluster: specs.clone(),
            };
            configure(&mut config);
            config.validate().expect("a valid config");
            let path = root.join(format!("node-{}.toml", spec.id));
            std::fs::write(&path, config.to_toml()).expect("write a node config");
            procs.push(NodeProc {
                id: spec.id,
                addr: spec.addr,
                metrics,
                partitions: spec.partitions.clone(),
                config: path,
                log: root.join(format!("node-{}.log", spec.id)),
                child: None,
            });
        }
        let mut cluster = Cluster {
            root,
            temp: Some(temp),
            certs,
            nodes: procs,
        };
        for id in 1..=nodes {
            cluster.spawn(id);
        }
        cluster
    }

    pub(crate) fn node(&self, id: u32) -> &NodeProc {
        &self.nodes[id as usize - 1]
    }

    pub(crate) fn ids(&self) -> Vec<u32> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    /// Starts node `id` from its config and data dir; its output is appended to its log.
    pub(crate) fn spawn(&mut self, id: u32) {
        let node = &mut self.nodes[id as usize - 1];
        assert!(node.child.is_none(), "node {id} is already running");
        let child =
            spawn_node(&node.config, &node.log).unwrap_or_else(|e| panic!("start node {id}: {e}"));
        node.child = Some(child);
    }

    /// Starts node `id` as [`Cluster::spawn`] does, but with every file it writes capped at
    /// `bytes` (`ulimit -f`; SIGXFSZ ignored, so a write past the cap fails with EFBIG as on
    /// a full disk).
    pub(crate) fn spawn_with_file_size_limit(&mut self, id: u32, bytes: u64) {
        let node = &mut self.nodes[id as usize - 1];
        assert!(node.child.is_none(), "node {id} is already running");
        let child = super::spawn_node_limited(&node.config, &node.log, bytes)
            .unwrap_or_else(|e| panic!("start node {id}: {e}"));
        node.child = Some(child);
    }

    /// Waits for node `id`, which is exiting by itself, and returns how it ended.
    pub(crate) fn reap(&mut self, id: u32) -> std::process::ExitStatus {
        let node = &mut self.nodes[id as usize - 1];
        let mut child = node.child.take().expect("the node was started");
        child.wait().expect("reap the node")
    }

    /// SIGKILLs node `id` and reaps it.
    pub(crate) fn kill(&mut self, id: u32) {
        let node = &mut self.nodes[id as usize - 1];
        let mut child = node.child.take().expect("the node runs");
        // `Child::kill` is SIGKILL on Unix: no shutdown code runs in the node.
        child.kill().expect("SIGKILL the node");
        child.wait().expect("reap the node");
    }

    /// Panics (with the logs) if a node that should run has exited.
    pub(crate) fn assert_running(&mut self) {
        for node in &mut self.nodes {
            if let Some(child) = &mut node.child
                && let Some(status) = child.try_wait().expect("poll the node")
            {
                panic!("node {} exited unexpectedly ({status})", node.id);
            }
        }
    }

    pub(crate) fn gateways(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.addr).collect()
    }

    pub(crate) fn client_tls(&self) -> Tls {
        Tls::from_dir(&self.certs.dir, "client").expect("load the client certificate")
    }

    /// A client session over every gateway.
    pub(crate) async fn client(&self, policy: RetryPolicy) -> Client {
        Client::connect(self.gateways(), self.client_tls())
            .await
            .expect("start a client")
            .with_policy(policy)
    }

    pub(crate) fn tail_of_logs(&self, lines: usize) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            let text = std::fs::read_to_string(&node.log).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            let from = all.len().saturating_sub(lines);
            out.push_str(&format!(
                "----- node {} ({}), last {} lines -----\n",
                node.id,
                node.log.display(),
                all.len() - from
            ));
            for line in &all[from..] {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if std::thread::panicking() {
            eprintln!("{}", self.tail_of_logs(40));
            if let Some(temp) = self.temp.take() {
                let kept = temp.keep();
                eprintln!("kept the cluster's folder: {}", kept.display());
            }
        }
    }
}

/// Ports that were free a moment ago (bound together, so distinct, then released).
pub(crate) fn free_udp_ports(n: usize) -> Vec<u16> {
    let sockets: Vec<std::net::UdpSocket> = (0..n)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").expect("bind a UDP port"))
        .collect();
    sockets
        .iter()
        .map(|s| s.local_addr().expect("local address").port())
        .collect()
}

pub(crate) fn free_tcp_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind a TCP port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local address").port())
        .collect()
}

/// Runs `scenario` with the cluster alive outside it, so that a timeout still fails the
/// test while the cluster can print its logs.
pub(crate) async fn with_budget<F: Future<Output = ()>>(budget: Duration, scenario: F) {
    if tokio::time::timeout(budget, scenario).await.is_err() {
        panic!("the scenario did not finish within its budget of {budget:?}");
    }
}

/// Tests of this file run one at a time (each starts a whole cluster on a 2-core machine).
pub(crate) fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

// ---------------------------------------------------------------------------------------
// Status and metrics.
// ---------------------------------------------------------------------------------------

/// A policy for status polls and checks: quick to give up on a dead node.
pub(crate) fn quick_policy() -> RetryPolicy {
    RetryPolicy {
        attempt_timeout: Duration::from_secs(1),
        backoff: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        attempts_max: 30,
    }
}

/// Every node's status, by node id, through `status` (a client over every gateway).
pub(crate) async fn statuses(
    cluster: &Cluster,
    status: &Client,
) -> BTreeMap<u32, Result<NodeStatus, String>> {
    let by_addr: BTreeMap<SocketAddr, u32> = cluster.nodes.iter().map(|n| (n.addr, n.id)).collect();
    status
        .status()
        .await
        .into_iter()
        .map(|(addr, s)| (by_addr[&addr], s))
        .collect()
}

/// Waits until every node of `up` answers and all agree on one leader among them; returns
/// (term, leader).
pub(crate) async fn wait_for_leader(
    cluster: &mut Cluster,
    status: &Client,
    up: &[u32],
    within: Duration,
) -> (u64, u32) {
    let deadline = Instant::now() + within;
    loop {
        cluster.assert_running();
        let views = statuses(cluster, status).await;
        let agreed: BTreeSet<Option<(u64, Option<NodeId>)>> = up
            .iter()
            .map(|id| match &views[id] {
                Ok(s) => s.replica.map(|(term, leader, _)| (term, leader)),
                Err(_) => None,
            })
            .collect();
        if let [Some((term, Some(leader)))] = agreed.into_iter().collect::<Vec<_>>()[..]
            && up.contains(&leader.0)
        {
            return (term, leader.0);
        }
        assert!(
            Instant::now() < deadline,
            "nodes {up:?} did not agree on a leader within {within:?}; last views: {views:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The highest commit epoch any node reports.
pub(crate) async fn commit_epoch(cluster: &Cluster, status: &Client) -> u64 {
    statuses(cluster, status)
        .await
        .values()
        .filter_map(|s| s.as_ref().ok()?.replica.map(|(_, _, commit)| commit.0))
        .max()
        .unwrap_or(0)
}

/// Waits until the highest commit epoch any node reports is `epochs` past `from`; returns it.
pub(crate) async fn wait_committing(
    cluster: &mut Cluster,
    status: &Client,
    from: u64,
    epochs: u64,
    within: Duration,
) -> u64 {
    let deadline = Instant::now() + within;
    loop {
        cluster.assert_running();
        let now = commit_epoch(cluster, status).await;
        if now >= from + epochs {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "the commit epoch went from {from} only to {now} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until every partition, on every node, has applied every epoch up to `epoch`.
pub(crate) async fn wait_applied(
    cluster: &mut Cluster,
    status: &Client,
    epoch: u64,
    within: Duration,
) {
    let deadline = Instant::now() + within;
    loop {
        cluster.assert_running();
        let views = statuses(cluster, status).await;
        let mut behind = Vec::new();
        for node in &cluster.nodes {
            match &views[&node.id] {
                Ok(s) => {
                    for p in &node.partitions {
                        let next = s
                            .partitions
                            .iter()
                            .find(|(id, _, _)| id.0 == *p)
                            .map_or(0, |(_, next, _)| next.0);
                        if next <= epoch {
                            behind.push(format!("partition {p} at epoch {next}"));
                        }
                    }
                }
                Err(e) => behind.push(format!("node {} unreachable: {e}", node.id)),
            }
        }
        if behind.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not every partition applied epoch {epoch} within {within:?}: {behind:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls a counter until it exceeds `above`; returns its value.
pub(crate) async fn wait_metric_above(
    addr: SocketAddr,
    name: &str,
    above: u64,
    within: Duration,
) -> u64 {
    let deadline = Instant::now() + within;
    loop {
        let value = metric(addr, name).await;
        if let Ok(v) = value
            && v > above
        {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{name} at {addr} did not rise above {above} within {within:?} (last: {value:?})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
