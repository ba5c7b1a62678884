//! A local cluster of `detflow node` processes on 127.0.0.1, in a folder of its own: the
//! one supervisor behind `detflow demo`, `detflow bench` and the process-level tests.
//!
//! The order a caller follows: [`LocalCluster::builder`], adjust it, [`Builder::start`]
//! (certificates, one configuration per node, every node started), then
//! [`LocalCluster::wait_ready`] (every node answers its status and a leader is elected;
//! loading progress comes from the nodes' status answers). While it runs, nodes can be
//! killed and started again on their data ([`LocalCluster::kill`],
//! [`LocalCluster::start_node`]). [`LocalCluster::stop`], or dropping the cluster, stops
//! every node: SIGTERM, then SIGKILL after a grace period.
//!
//! Every node runs with `--exit-on-stdin-eof` and a pipe on its standard input, so the
//! nodes die with the supervisor even when it is SIGKILLed and cannot clean up.

// A supervisor of processes: it waits on the wall clock.
#![allow(clippy::disallowed_methods)]

use crate::certs::{self, CertPaths};
use crate::config::{Access, Config, NodeSpec, TlsPaths};
use anyhow::{Context, Result, bail};
use detflow_client::{Client, RetryPolicy, Tls};
use detflow_workloads::Options;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long a node may take to shut down after SIGTERM before it is SIGKILLed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// The epoch length of a local cluster's replicas, in microseconds.
const EPOCH_US: u64 = 5_000;

/// A caller's adjustment of every node's configuration (see [`Builder::configure`]).
type Configure = Box<dyn Fn(&mut Config)>;

/// What a local cluster should be; [`Builder::start`] makes it.
pub struct Builder {
    nodes: u32,
    partitions: u32,
    replication: Option<u32>,
    workload: String,
    options: Options,
    dir: Option<PathBuf>,
    prefix: String,
    binary: Option<PathBuf>,
    metrics: bool,
    node_certificates: u32,
    kv_txn_tables: Option<Vec<String>>,
    configure: Option<Configure>,
}

impl Builder {
    /// Sizes and mix of the workload (TPC-C's warehouses and scale-down); the default is
    /// the workload's own.
    pub fn options(mut self, options: Options) -> Builder {
        self.options = options;
        self
    }

    /// Keeps the cluster's folder (certificates, configurations, logs, data) at `dir`
    /// instead of a temporary one deleted at the end.
    pub fn dir(mut self, dir: PathBuf) -> Builder {
        self.dir = Some(dir);
        self
    }

    /// The name prefix of the temporary folder (default `detflow-demo-`), so that a kept
    /// folder says what made it.
    pub fn prefix(mut self, prefix: &str) -> Builder {
        prefix.clone_into(&mut self.prefix);
        self
    }

    /// The `detflow` binary to run (default: the running executable, which is `detflow`
    /// itself in the command line; tests pass `CARGO_BIN_EXE_detflow`).
    pub fn binary(mut self, binary: PathBuf) -> Builder {
        self.binary = Some(binary);
        self
    }

    /// Gives every node a Prometheus endpoint on a free local port.
    pub fn metrics(mut self, on: bool) -> Builder {
        self.metrics = on;
        self
    }

    /// Makes at least `n` node certificates, more than the nodes when a caller wants spare
    /// identities (a test speaking as a rogue node).
    pub fn node_certificates(mut self, n: u32) -> Builder {
        self.node_certificates = n;
        self
    }

    /// The tables `kv.txn` may write. The default opens the kv workload's table when the
    /// workload is kv, and nothing otherwise.
    pub fn kv_txn_tables(mut self, tables: Vec<String>) -> Builder {
        self.kv_txn_tables = Some(tables);
        self
    }

    /// Replicas of each partition: as set, or two (one on a one-node cluster).
    pub fn replicas_per_partition(&self) -> u32 {
        self.replication.unwrap_or(self.nodes.min(2))
    }

    /// Runs `r` replicas of each partition, on distinct nodes (default: 2, or 1 for a
    /// one-node cluster).
    pub fn replication(mut self, r: u32) -> Builder {
        self.replication = Some(r);
        self
    }

    /// Adjusts every node's configuration before it is validated and written.
    pub fn configure(mut self, configure: impl Fn(&mut Config) + 'static) -> Builder {
        self.configure = Some(Box::new(configure));
        self
    }

    /// Writes certificates and one configuration per node (each a replica and a gateway;
    /// partition `p`'s replicas on nodes `p`, `p + 1`, … round-robin) and starts every
    /// node. Returns once the processes
    /// are started; [`LocalCluster::wait_ready`] waits until they serve.
    pub fn start(self) -> Result<LocalCluster> {
        if self.nodes == 0 {
            bail!("a cluster needs at least one node");
        }
        if self.partitions == 0 {
            bail!("a cluster needs at least one partition");
        }
        let replication = self.replicas_per_partition();
        if replication == 0 || replication > self.nodes {
            bail!(
                "{replication} replicas per partition need as many nodes, and the cluster has {}",
                self.nodes
            );
        }
        detflow_workloads::by_name_with(&self.workload, self.partitions, &self.options)?;
        let binary = match self.binary {
            Some(binary) => binary,
            None => std::env::current_exe().context("locating the detflow binary")?,
        };
        let (dir, temp) = match self.dir {
            Some(dir) => {
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                (dir, None)
            }
            None => {
                let temp = tempfile::Builder::new().prefix(&self.prefix).tempdir()?;
                (temp.path().to_owned(), Some(temp))
            }
        };
        let certs = certs::regenerate(&dir.join("certs"), self.node_certificates.max(self.nodes))?;
        let quic = free_udp_ports(self.nodes as usize)?;
        let http = if self.metrics {
            free_tcp_ports(self.nodes as usize)?
        } else {
            Vec::new()
        };
        let specs: Vec<NodeSpec> = (0..self.nodes)
            .map(|i| NodeSpec {
                id: i + 1,
                addr: SocketAddr::from(([127, 0, 0, 1], quic[i as usize])),
                replica: true,
                gateway: true,
                partitions: (0..self.partitions)
                    .filter(|p| (0..replication).any(|k| (p + k) % self.nodes == i))
                    .collect(),
            })
            .collect();
        let kv_txn_tables = self.kv_txn_tables.unwrap_or_else(|| {
            // The kv workload is ad-hoc kv.txn on its own table; no other needs it.
            if self.workload == "kv" {
                vec![detflow_workloads::kv::TABLE.into()]
            } else {
                Vec::new()
            }
        });
        let mut nodes = Vec::new();
        for (i, spec) in specs.iter().enumerate() {
            let identity = certs
                .node(spec.id)
                .with_context(|| format!("no certificate for node {}", spec.id))?;
            let metrics = http
                .get(i)
                .map(|port| SocketAddr::from(([127, 0, 0, 1], *port)));
            let data_dir = dir.join(format!("node-{}", spec.id));
            let mut config = Config {
                id: spec.id,
                listen: spec.addr,
                data_dir: data_dir.clone(),
                workload: self.workload.clone(),
                warehouses: self.options.warehouses,
                scale_down: self.options.scale_down,
                epoch_us: EPOCH_US,
                epoch_min_us: crate::config::default_epoch_min_us(),
                compact_every_epochs: crate::config::default_compact_every_epochs(),
                checkpoint_every_epochs: crate::config::default_checkpoint_every_epochs(),
                checkpoint_mib_per_sec: crate::config::default_checkpoint_mib_per_sec(),
                archive_dir: None,
                archive_retain_epochs: None,
                archive_retain_bytes: crate::config::default_archive_retain_bytes(),
                archive_retain_secs: None,
                metrics_listen: metrics,
                tls: TlsPaths {
                    ca: certs.ca.cert.clone(),
                    cert: identity.cert.clone(),
                    key: identity.key.clone(),
                    session_key: None,
                },
                access: Access {
                    kv_txn_tables: kv_txn_tables.clone(),
                },
                limits: Default::default(),
                snapshots: Default::default(),
                cluster: specs.clone(),
            };
            if let Some(configure) = &self.configure {
                configure(&mut config);
            }
            config
                .validate()
                .with_context(|| format!("node {}'s configuration", spec.id))?;
            let path = dir.join(format!("node-{}.toml", spec.id));
            std::fs::write(&path, config.to_toml())
                .with_context(|| format!("writing {}", path.display()))?;
            nodes.push(LocalNode {
                id: spec.id,
                addr: spec.addr,
                metrics,
                partitions: spec.partitions.clone(),
                config: path,
                log: dir.join(format!("node-{}.log", spec.id)),
                data_dir,
                child: None,
            });
        }
        let mut cluster = LocalCluster {
            dir,
            temp,
            certs,
            binary,
            nodes,
        };
        for id in 1..=self.nodes {
            cluster.start_node(id)?;
        }
        Ok(cluster)
    }
}

/// One node of a [`LocalCluster`]: its place, files and, while it runs, its process.
#[derive(Debug)]
pub struct LocalNode {
    id: u32,
    addr: SocketAddr,
    metrics: Option<SocketAddr>,
    partitions: Vec<u32>,
    config: PathBuf,
    log: PathBuf,
    data_dir: PathBuf,
    child: Option<Child>,
}

impl LocalNode {
    /// Its node id (1, 2, …).
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Its QUIC address, for peers and clients.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its Prometheus endpoint, if the cluster was built with [`Builder::metrics`].
    pub fn metrics(&self) -> Option<SocketAddr> {
        self.metrics
    }

    /// The partitions it executes.
    pub fn partitions(&self) -> &[u32] {
        &self.partitions
    }

    /// Its configuration file.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// Its log: the process's stdout and stderr, appended to across restarts.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Its data folder (log and partition stores).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The process id while it runs (started and not yet reaped).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

/// How far the nodes are with loading their initial rows, from their status answers: a
/// node answers only once it has loaded, so the counts are those of the nodes that answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Loading {
    /// Nodes in the cluster.
    pub nodes: usize,
    /// Nodes that answered their status (loaded and serving).
    pub nodes_answering: usize,
    /// Rows those nodes generated and loaded.
    pub rows_loaded: u64,
    /// TPC-C warehouses among them.
    pub warehouses_loaded: u32,
    /// Whether every node answers and a leader is elected.
    pub ready: bool,
}

/// A local cluster of node processes in a folder of its own (see the module doc).
///
/// Dropping it stops every node; when the thread is panicking (a failing test) it also
/// prints the tail of every node's log and keeps the folder, printing its path.
pub struct LocalCluster {
    dir: PathBuf,
    temp: Option<tempfile::TempDir>,
    certs: CertPaths,
    binary: PathBuf,
    nodes: Vec<LocalNode>,
}

impl LocalCluster {
    /// A cluster of `nodes` node processes, each a sequencer replica and a gateway,
    /// `partitions` spread over them round-robin, running `workload`.
    pub fn builder(nodes: u32, partitions: u32, workload: &str) -> Builder {
        Builder {
            nodes,
            partitions,
            replication: None,
            workload: workload.to_owned(),
            options: Options::default(),
            dir: None,
            prefix: "detflow-demo-".to_owned(),
            binary: None,
            metrics: false,
            node_certificates: nodes,
            kv_txn_tables: None,
            configure: None,
        }
    }

    /// Starts node `id` on its configuration and data; its output is appended to its log.
    pub fn start_node(&mut self, id: u32) -> Result<()> {
        let binary = self.binary.clone();
        let node = self.node_mut(id)?;
        let command = Command::new(&binary);
        node.spawn(command, true)
    }

    /// Starts node `id` as [`LocalCluster::start_node`] does, but with every file it writes
    /// capped at `bytes` (`ulimit -f` in a shell; SIGXFSZ ignored, so a write past the cap
    /// fails with EFBIG, as on a full disk). Unix only.
    pub fn start_node_with_file_size_limit(&mut self, id: u32, bytes: u64) -> Result<()> {
        let binary = self.binary.clone();
        let node = self.node_mut(id)?;
        let blocks = bytes.div_ceil(1024);
        let mut command = Command::new("bash");
        command
            .arg("-c")
            .arg(format!(
                "ulimit -f {blocks} && trap '' XFSZ && exec \"$0\" node --config \"$1\" --exit-on-stdin-eof"
            ))
            .arg(&binary)
            .arg(&node.config);
        node.spawn(command, false)
    }

    /// SIGKILLs node `id` and reaps it: no shutdown code runs in the node.
    pub fn kill(&mut self, id: u32) -> Result<()> {
        let node = self.node_mut(id)?;
        let Some(mut child) = node.child.take() else {
            bail!("node {id} is not running");
        };
        // `Child::kill` is SIGKILL on Unix.
        child
            .kill()
            .with_context(|| format!("SIGKILL to node {id}"))?;
        child.wait().with_context(|| format!("reaping node {id}"))?;
        Ok(())
    }

    /// Freezes node `id` (SIGSTOP): it holds its connections and answers nothing, as a
    /// node in a long pause (a stalled disk, a VM migration) does. Unix only.
    pub fn pause(&mut self, id: u32) -> Result<()> {
        self.signal(id, "SIGSTOP")
    }

    /// Lets node `id` run again after [`LocalCluster::pause`] (SIGCONT). Unix only.
    pub fn resume(&mut self, id: u32) -> Result<()> {
        self.signal(id, "SIGCONT")
    }

    #[cfg(unix)]
    fn signal(&mut self, id: u32, name: &str) -> Result<()> {
        let node = self.node_mut(id)?;
        let Some(child) = node.child.as_ref() else {
            bail!("node {id} is not running");
        };
        let signal = match name {
            "SIGSTOP" => rustix::process::Signal::STOP,
            _ => rustix::process::Signal::CONT,
        };
        let pid = rustix::process::Pid::from_child(child);
        rustix::process::kill_process(pid, signal)
            .with_context(|| format!("{name} to node {id}"))?;
        Ok(())
    }

    #[cfg(not(unix))]
    fn signal(&mut self, id: u32, name: &str) -> Result<()> {
        bail!("cannot send {name} to node {id}: signals need Unix")
    }

    /// SIGKILLs node `id` and starts it again on the same configuration and data.
    pub fn restart(&mut self, id: u32) -> Result<()> {
        self.kill(id)?;
        self.start_node(id)
    }

    /// Waits for node `id`, which is exiting by itself, and returns how it ended.
    pub fn reap(&mut self, id: u32) -> Result<ExitStatus> {
        let node = self.node_mut(id)?;
        let Some(mut child) = node.child.take() else {
            bail!("node {id} was not started");
        };
        Ok(child.wait()?)
    }

    /// Whether node `id` was started and has not exited; [`LocalCluster::reap`] then
    /// tells how an exited one ended.
    pub fn is_running(&mut self, id: u32) -> Result<bool> {
        let node = self.node_mut(id)?;
        match &mut node.child {
            Some(child) => Ok(child.try_wait()?.is_none()),
            None => Ok(false),
        }
    }

    /// An error naming the first node that should run and has exited, with its log.
    pub fn check_running(&mut self) -> Result<()> {
        for node in &mut self.nodes {
            if let Some(child) = &mut node.child
                && let Some(status) = child.try_wait()?
            {
                bail!(
                    "node {} exited ({status}); see {}",
                    node.id,
                    node.log.display()
                );
            }
        }
        Ok(())
    }

    /// Waits until every node answers its status and a leader is elected, for at most
    /// `within`. `progress` sees each poll's [`Loading`], about five times a second; the
    /// last one it sees is ready.
    pub async fn wait_ready(
        &mut self,
        within: Duration,
        mut progress: impl FnMut(&Loading),
    ) -> Result<()> {
        // Quick attempts: a node still loading takes connections but answers nothing.
        let policy = RetryPolicy {
            attempt_timeout: Duration::from_millis(500),
            ..Default::default()
        };
        let client = Client::connect(self.gateways(), self.client_tls()?)
            .await?
            .with_policy(policy);
        let ready = self.poll_ready(&client, within, &mut progress).await;
        client.close();
        ready
    }

    async fn poll_ready(
        &mut self,
        client: &Client,
        within: Duration,
        progress: &mut impl FnMut(&Loading),
    ) -> Result<()> {
        let start = Instant::now();
        loop {
            self.check_running()?;
            let statuses = client.status().await;
            let answers: Vec<_> = statuses
                .iter()
                .filter_map(|(_, s)| s.as_ref().ok())
                .collect();
            let leader = answers
                .iter()
                .any(|s| s.replica.is_some_and(|(_, leader, _)| leader.is_some()));
            let loading = Loading {
                nodes: statuses.len(),
                nodes_answering: answers.len(),
                rows_loaded: answers.iter().map(|s| s.rows_loaded).sum(),
                warehouses_loaded: answers.iter().map(|s| s.warehouses_loaded).sum(),
                ready: answers.len() == statuses.len() && leader,
            };
            progress(&loading);
            if loading.ready {
                return Ok(());
            }
            if start.elapsed() > within {
                bail!(
                    "the cluster was not ready within {within:?} ({} of {} nodes answer); see the node logs in {}",
                    loading.nodes_answering,
                    loading.nodes,
                    self.dir.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Stops every node: SIGTERM, so each shuts down cleanly, then SIGKILL for any that
    /// has not exited within a grace period. Blocks until all are reaped.
    pub fn stop(&mut self) {
        // A child not yet waited for keeps its pid, so the signal cannot reach another
        // process; one that already exited just makes the call fail, which is fine.
        #[cfg(unix)]
        for child in self.nodes.iter().filter_map(|n| n.child.as_ref()) {
            let pid = rustix::process::Pid::from_child(child);
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + STOP_GRACE;
        for node in &mut self.nodes {
            let Some(mut child) = node.child.take() else {
                continue;
            };
            while Instant::now() < deadline {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Keeps the folder after the cluster is dropped (a temporary one is otherwise
    /// deleted) and returns its path.
    pub fn keep(&mut self) -> PathBuf {
        if let Some(temp) = self.temp.take() {
            return temp.keep();
        }
        self.dir.clone()
    }

    /// The cluster's folder: `certs/`, `node-N.toml`, `node-N.log`, `node-N/`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The certificates: the CA, every node's, the client's.
    pub fn certs(&self) -> &CertPaths {
        &self.certs
    }

    /// Every node, in id order.
    pub fn nodes(&self) -> &[LocalNode] {
        &self.nodes
    }

    /// Node `id`, if the cluster has it.
    pub fn node(&self, id: u32) -> Option<&LocalNode> {
        self.nodes.get((id as usize).checked_sub(1)?)
    }

    /// Every node's id.
    pub fn ids(&self) -> Vec<u32> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    /// Every node's gateway address, in id order.
    pub fn gateways(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|n| n.addr).collect()
    }

    /// The client certificate's TLS material.
    pub fn client_tls(&self) -> Result<Tls> {
        Ok(Tls::from_dir(&self.certs.dir, "client")?)
    }

    /// The operator certificate's TLS material: it may also read the log and ask for
    /// checkpoints.
    pub fn operator_tls(&self) -> Result<Tls> {
        Ok(Tls::from_dir(&self.certs.dir, crate::certs::OPERATOR_NAME)?)
    }

    /// The last `lines` lines of every node's log, headed by the node and the path.
    pub fn tail_of_logs(&self, lines: usize) -> String {
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

    fn node_mut(&mut self, id: u32) -> Result<&mut LocalNode> {
        let index = (id as usize).checked_sub(1);
        match index.and_then(|i| self.nodes.get_mut(i)) {
            Some(node) => Ok(node),
            None => bail!("the cluster has no node {id}"),
        }
    }
}

impl LocalNode {
    /// Runs `command` as this node, output appended to its log, stdin a pipe that ends
    /// the node when it closes. `node_args`: `command` is the binary itself, so add
    /// `node --config … --exit-on-stdin-eof`.
    fn spawn(&mut self, mut command: Command, node_args: bool) -> Result<()> {
        if self.child.is_some() {
            bail!("node {} is already running", self.id);
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        if node_args {
            command
                .arg("node")
                .arg("--config")
                .arg(&self.config)
                .arg("--exit-on-stdin-eof");
        }
        let child = command
            .env("NO_COLOR", "1")
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::piped())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting node {}", self.id))?;
        self.child = Some(child);
        Ok(())
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!("{}", self.tail_of_logs(40));
            eprintln!("kept the cluster's folder: {}", self.keep().display());
        }
    }
}

/// UDP ports that were free a moment ago (bound together, so distinct, then released).
fn free_udp_ports(n: usize) -> Result<Vec<u16>> {
    let sockets: Vec<std::net::UdpSocket> = (0..n)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0"))
        .collect::<std::io::Result<_>>()?;
    sockets.iter().map(|s| Ok(s.local_addr()?.port())).collect()
}

/// TCP ports that were free a moment ago, as [`free_udp_ports`].
fn free_tcp_ports(n: usize) -> Result<Vec<u16>> {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<_>>()?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}
