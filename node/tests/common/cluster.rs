//! The process-level tests' cluster, `detflow_node::local_cluster::LocalCluster` with the
//! tests' settings, and the polls they share (status, leader, epochs, metrics).

use super::metric;
use detflow_client::{Client, RetryPolicy};
use detflow_node::config::Config;
use detflow_node::local_cluster::{Builder, LocalCluster, LocalNode};
use detflow_protocol::NodeId;
use detflow_protocol::message::NodeStatus;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The tests' cluster: the one `detflow demo` runs, with test settings.
pub(crate) type Cluster = LocalCluster;

/// The tests' settings: the `detflow` binary cargo built for them, a metrics endpoint
/// per node, `kv.txn` open on its table (the tests drive list-append histories through
/// it), and a folder named for the tests, kept if a test fails.
pub(crate) fn builder(nodes: u32, partitions: u32, workload: &str) -> Builder {
    LocalCluster::builder(nodes, partitions, workload)
        .binary(env!("CARGO_BIN_EXE_detflow").into())
        .metrics(true)
        .kv_txn_tables(vec![detflow_workloads::kv::TABLE.into()])
        .prefix("detflow-cluster-test-")
}

/// Starts `nodes` nodes, each a replica and a gateway, partitions spread round-robin.
pub(crate) fn start(nodes: u32, partitions: u32, workload: &str) -> Cluster {
    builder(nodes, partitions, workload)
        .start()
        .expect("start the cluster")
}

/// [`start`], with `configure` adjusting every node's configuration (TPC-C sizing, say)
/// before it is written.
pub(crate) fn start_with(
    nodes: u32,
    partitions: u32,
    workload: &str,
    configure: impl Fn(&mut Config) + 'static,
) -> Cluster {
    builder(nodes, partitions, workload)
        .configure(configure)
        .start()
        .expect("start the cluster")
}

/// The tests' shorthands over [`LocalCluster`]: they panic where the library returns an
/// error, which fails the test with the logs (see `LocalCluster`'s `Drop`).
pub(crate) trait TestCluster {
    /// Node `id`.
    fn at(&self, id: u32) -> &LocalNode;
    /// Panics if a node that should run has exited.
    fn assert_running(&mut self);
    /// A client session over every gateway.
    fn client(&self, policy: RetryPolicy) -> impl Future<Output = Client>;
}

impl TestCluster for LocalCluster {
    fn at(&self, id: u32) -> &LocalNode {
        self.node(id)
            .unwrap_or_else(|| panic!("the cluster has no node {id}"))
    }

    fn assert_running(&mut self) {
        if let Err(e) = self.check_running() {
            panic!("{e:#}");
        }
    }

    async fn client(&self, policy: RetryPolicy) -> Client {
        let tls = self.client_tls().expect("load the client certificate");
        Client::connect(self.gateways(), tls)
            .await
            .expect("start a client")
            .with_policy(policy)
    }
}

/// A node's metrics endpoint: the tests' clusters always have one.
pub(crate) fn metrics_of(node: &LocalNode) -> SocketAddr {
    node.metrics().expect("the test cluster serves metrics")
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
    let by_addr: BTreeMap<SocketAddr, u32> =
        cluster.nodes().iter().map(|n| (n.addr(), n.id())).collect();
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
        for node in cluster.nodes() {
            match &views[&node.id()] {
                Ok(s) => {
                    for p in node.partitions() {
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
                Err(e) => behind.push(format!("node {} unreachable: {e}", node.id())),
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

/// Waits until every partition, on every node, applied all but the last `slack` committed
/// epochs. A replica that was down or frozen catches up while
/// the others carry the load; until it has, it is not yet a spare for the next fault.
pub(crate) async fn wait_caught_up(
    cluster: &mut Cluster,
    status: &Client,
    slack: u64,
    within: Duration,
) {
    let start = Instant::now();
    loop {
        cluster.assert_running();
        let views = statuses(cluster, status).await;
        let commit = views
            .values()
            .filter_map(|s| s.as_ref().ok()?.replica.map(|(_, _, commit)| commit.0))
            .max()
            .unwrap_or(0);
        let mut behind = Vec::new();
        for node in cluster.nodes() {
            match &views[&node.id()] {
                Ok(s) => {
                    for p in node.partitions() {
                        let next = s
                            .partitions
                            .iter()
                            .find(|(id, _, _)| id.0 == *p)
                            .map_or(0, |(_, next, _)| next.0);
                        if next + slack <= commit {
                            behind
                                .push(format!("node {} partition {p} at epoch {next}", node.id()));
                        }
                    }
                }
                Err(e) => behind.push(format!("node {} unreachable: {e}", node.id())),
            }
        }
        if behind.is_empty() {
            return;
        }
        assert!(
            start.elapsed() < within,
            "the replicas did not catch up with commit epoch {commit} within {within:?}: \
             {behind:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until every replica of each partition reports the same state digest, once the
/// load stopped and every partition applied what it committed (later epochs are empty, so
/// replicas a few epochs apart have the same state); panics naming the partition whose
/// replicas still differ after `within`.
pub(crate) async fn wait_digests_agree(cluster: &mut Cluster, status: &Client, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        cluster.assert_running();
        let views = statuses(cluster, status).await;
        let mut by_partition: BTreeMap<u32, BTreeMap<String, Vec<(u32, u64)>>> = BTreeMap::new();
        for (node, view) in &views {
            let Ok(view) = view else { continue };
            for (p, epoch, digest) in &view.digests {
                by_partition
                    .entry(p.0)
                    .or_default()
                    .entry(digest.clone())
                    .or_default()
                    .push((*node, epoch.0));
            }
        }
        let differing: Vec<_> = by_partition
            .iter()
            .filter(|(_, digests)| digests.len() > 1)
            .collect();
        let every_replica = cluster
            .nodes()
            .iter()
            .map(|n| n.partitions().len())
            .sum::<usize>()
            == by_partition
                .values()
                .flat_map(|d| d.values())
                .map(Vec::len)
                .sum::<usize>();
        if differing.is_empty() && every_replica {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the replicas' state digests differ (partition: digest: [(node, epoch)]): \
             {differing:#?}; all reported: {every_replica}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
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
