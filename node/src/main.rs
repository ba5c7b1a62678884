//! `detflow`: run nodes, a local demo cluster, single calls, status and benchmarks.

// The command line owns the clock (timing, deadlines) and spawns processes.
#![allow(clippy::disallowed_methods)]

use anyhow::{Context, Result, bail};

/// mimalloc rather than glibc's malloc: messages, batches and rows are allocated and freed
/// across threads at a high rate (malloc and free were ~7% of a TPC-C profile).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};
use detflow_client::{Client, Tls};
use detflow_node::config::{Config, NodeSpec, TlsPaths};
use detflow_node::drive::{self, DriveConfig};
use detflow_node::tpcc::TpccReport;
use detflow_node::{certs, load, runtime};
use detflow_workloads::Options;
use detflow_workloads::tpcc::Mix;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    name = "detflow",
    version,
    about = "Deterministic, Calvin-style ACID transactions over QUIC",
    long_about = "detflow orders multi-key transactions into epochs with a replicated sequencer \
                  and executes them deterministically on partitioned executors. Start with \
                  `detflow demo`, which runs a local cluster and a workload."
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Make a development CA with node and client certificates.
    ///
    /// Writes OUT/ca/ (the CA: keep it offline), OUT/node/ (node-N certificates naming
    /// their node id, and the cluster's session key) and OUT/client/ (the client
    /// certificate: the only folder a client machine needs).
    Certs {
        /// Where to write the PEM files.
        #[arg(long)]
        out: PathBuf,
        /// How many node certificates (node-1 … node-N).
        #[arg(long, default_value_t = 3)]
        nodes: u32,
        /// Replace an existing CA in `--out`.
        #[arg(long)]
        force: bool,
    },
    /// Run one node with the roles its configuration gives it.
    Node {
        /// The node's TOML configuration (see README).
        #[arg(long)]
        config: PathBuf,
        /// Override `listen`.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Override `data_dir`.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Override `metrics_listen`.
        #[arg(long)]
        metrics_listen: Option<SocketAddr>,
        /// Also shut down when standard input reaches end of file. For supervisors and
        /// tests: a node started with a pipe on stdin then dies with its parent, even when
        /// the parent itself is SIGKILLed and cannot clean up.
        #[arg(long, hide = true)]
        exit_on_stdin_eof: bool,
    },
    /// Start a local cluster as separate processes, drive a workload, report, shut down.
    Demo(DemoArgs),
    /// Measure throughput and latency against a local (default) or existing cluster.
    Bench(BenchArgs),
    /// Make one call and print its output as JSON.
    Call {
        /// The procedure, e.g. bank.balance.
        name: String,
        /// The arguments as JSON, e.g. '{"account": 3}'.
        #[arg(long, default_value = "null")]
        args: String,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Show each node's view: leader, committed epoch, partitions' applied epochs.
    Status {
        #[command(flatten)]
        connect: ConnectArgs,
    },
}

#[derive(clap::Args)]
struct ConnectArgs {
    /// Gateway addresses, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    connect: Vec<SocketAddr>,
    /// The folder holding ca.pem, client.pem and client.key.
    #[arg(long, default_value = "certs")]
    certs: PathBuf,
}

#[derive(clap::Args, Clone)]
struct DemoArgs {
    /// Sequencer replicas, one per node process (1, 3 or 5).
    #[arg(long, default_value_t = 3)]
    replicas: u32,
    /// Executor partitions, spread over the nodes.
    #[arg(long, default_value_t = 4)]
    partitions: u32,
    /// The workload to drive (bank, ycsb, kv or tpcc).
    #[arg(long, default_value = "bank")]
    workload: String,
    /// How long to drive it, e.g. 30s, 2m.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    duration: Duration,
    /// Concurrent client sessions.
    #[arg(long, default_value_t = 32)]
    clients: u32,
    /// Keep the cluster's folder (certificates, configs, logs, data) instead of deleting it.
    #[arg(long)]
    keep: Option<PathBuf>,
    #[command(flatten)]
    tpcc: TpccArgs,
}

/// TPC-C's knobs, shared by `demo` and `bench`.
#[derive(clap::Args, Clone)]
struct TpccArgs {
    /// TPC-C: warehouses (default: one per partition).
    #[arg(long)]
    warehouses: Option<u32>,
    /// TPC-C: divide the population (items, customers, orders) by this factor; 1 is full
    /// size, about 500,000 rows per warehouse (default: 1 for bench, 100 for demo).
    #[arg(long)]
    scale_down: Option<u32>,
    /// TPC-C: the transaction mix, standard or new-order-payment (50/50).
    #[arg(long, default_value = "standard", value_parser = parse_mix)]
    mix: Mix,
}

impl TpccArgs {
    /// The sizes `workload` runs with: TPC-C's knobs for TPC-C, the defaults otherwise.
    fn options(&self, workload: &str, scale_down_default: u32) -> Options {
        if workload != "tpcc" {
            return Options::default();
        }
        Options {
            warehouses: self.warehouses,
            scale_down: Some(self.scale_down.unwrap_or(scale_down_default)),
            mix: Some(self.mix),
        }
    }
}

fn parse_mix(s: &str) -> Result<Mix, String> {
    Mix::parse(s).ok_or_else(|| format!("{s:?} is not a mix (standard or new-order-payment)"))
}

#[derive(clap::Args)]
struct BenchArgs {
    /// The workload (bank, ycsb, kv or tpcc).
    workload: String,
    /// How long to measure, e.g. 30s.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    duration: Duration,
    /// Concurrent client sessions.
    #[arg(long, default_value_t = 32)]
    clients: u32,
    /// Measure an existing cluster at these gateways instead of an embedded local one.
    #[arg(long, value_delimiter = ',')]
    connect: Vec<SocketAddr>,
    /// With --connect: the folder holding ca.pem, client.pem and client.key.
    #[arg(long, default_value = "certs")]
    certs: PathBuf,
    /// Partitions of the embedded cluster (default 4; TPC-C: as many as warehouses, up to
    /// 4). With --connect, the cluster's (default: asked from the nodes).
    #[arg(long)]
    partitions: Option<u32>,
    /// Print the report as one line of JSON on stdout (progress still goes to stderr).
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    tpcc: TpccArgs,
}

/// The longest `--duration` accepted: long enough for any soak, short enough that adding
/// it to a clock cannot overflow.
const DURATION_MAX: Duration = Duration::from_secs(366 * 24 * 3600);

fn parse_duration(s: &str) -> Result<Duration, String> {
    // A bare number is seconds, as it always was here.
    let parsed = match s.parse::<u64>() {
        Ok(secs) => Ok(Duration::from_secs(secs)),
        Err(_) => humantime::parse_duration(s),
    };
    let duration =
        parsed.map_err(|e| format!("{s:?} is not a duration like 30s, 2m or 1h30m: {e}"))?;
    if duration > DURATION_MAX {
        return Err(format!("{s:?} is longer than the maximum of 366 days"));
    }
    if duration.is_zero() {
        return Err(format!("{s:?}: a duration must be positive"));
    }
    Ok(duration)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("detflow: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("detflow: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(cmd: Cmd) -> Result<bool> {
    match cmd {
        Cmd::Certs { out, nodes, force } => {
            let paths = if force {
                certs::regenerate(&out, nodes)?
            } else {
                certs::generate(&out, nodes)?
            };
            let ca_dir = paths.ca.cert.parent().unwrap_or(&paths.dir);
            println!(
                "wrote a development cluster's certificates to {}:\n  \
                 {}  the CA certificate and key: keep it offline, it signs every identity\n  \
                 {}  for the nodes: {} node certificates and keys, and the session key\n  \
                 {}  for clients: the client certificate and key (all a client machine needs)",
                paths.dir.display(),
                ca_dir.display(),
                paths.node_dir.display(),
                paths.nodes.len(),
                paths.client_dir.display(),
            );
            Ok(true)
        }
        Cmd::Node {
            config,
            listen,
            data_dir,
            metrics_listen,
            exit_on_stdin_eof,
        } => {
            let mut config = Config::load(&config)?;
            if let Some(l) = listen {
                config.listen = l;
            }
            if let Some(d) = data_dir {
                config.data_dir = d;
            }
            if metrics_listen.is_some() {
                config.metrics_listen = metrics_listen;
            }
            detflow_node::failstop::install_panic_hook();
            let mut node = runtime::Node::start(config).await?;
            let stdin_closed = async {
                if exit_on_stdin_eof {
                    stdin_eof().await
                } else {
                    std::future::pending().await
                }
            };
            tokio::select! {
                _ = wait_for_shutdown() => {}
                _ = stdin_closed => {}
                reason = node.failed() => detflow_node::failstop::fatal(reason),
            }
            node.shutdown().await;
            Ok(true)
        }
        Cmd::Demo(args) => demo(args).await,
        Cmd::Bench(args) => bench(args).await,
        Cmd::Call {
            name,
            args,
            connect,
        } => call(&name, &args, &connect).await,
        Cmd::Status { connect } => status(&connect).await,
    }
}

async fn wait_for_shutdown() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Resolves once standard input reaches end of file (or fails).
///
/// A plain thread does the blocking read: tokio's `stdin` reads on its blocking pool, and a
/// read that never returns would hold up the runtime's shutdown after SIGTERM.
async fn stdin_eof() {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        use std::io::Read;
        let mut stdin = std::io::stdin();
        let mut buf = [0u8; 256];
        while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
        let _ = tx.send(());
    });
    let _ = rx.await;
}

/// A local cluster of node processes in a folder of its own.
struct LocalCluster {
    dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    children: Vec<Child>,
    gateways: Vec<SocketAddr>,
}

impl LocalCluster {
    fn start(
        replicas: u32,
        partitions: u32,
        workload: &str,
        options: &Options,
        keep: Option<PathBuf>,
    ) -> Result<LocalCluster> {
        if ![1, 3, 5].contains(&replicas) {
            bail!("--replicas must be 1, 3 or 5");
        }
        if partitions == 0 {
            bail!("--partitions must be at least 1");
        }
        detflow_workloads::by_name_with(workload, partitions, options)?;
        let (dir, temp) = match keep {
            Some(dir) => {
                std::fs::create_dir_all(&dir)?;
                (dir, None)
            }
            None => {
                let temp = tempfile::Builder::new().prefix("detflow-demo-").tempdir()?;
                (temp.path().to_owned(), Some(temp))
            }
        };
        let paths = certs::regenerate(&dir.join("certs"), replicas)?;
        let ports = free_ports(replicas as usize)?;
        let cluster: Vec<NodeSpec> = (0..replicas)
            .map(|i| NodeSpec {
                id: i + 1,
                addr: SocketAddr::from(([127, 0, 0, 1], ports[i as usize])),
                replica: true,
                gateway: true,
                partitions: (0..partitions).filter(|p| p % replicas == i).collect(),
            })
            .collect();
        let exe = std::env::current_exe().context("locating the detflow binary")?;
        let mut children = Vec::new();
        for spec in &cluster {
            let identity = &paths.nodes[spec.id as usize - 1];
            let config = Config {
                id: spec.id,
                listen: spec.addr,
                data_dir: dir.join(format!("node-{}", spec.id)),
                workload: workload.to_owned(),
                warehouses: options.warehouses,
                scale_down: options.scale_down,
                epoch_us: 5_000,
                metrics_listen: None,
                tls: TlsPaths {
                    ca: paths.ca.cert.clone(),
                    cert: identity.cert.clone(),
                    key: identity.key.clone(),
                    session_key: None,
                },
                // The kv workload is ad-hoc kv.txn on its own table; no other needs it.
                access: detflow_node::config::Access {
                    kv_txn_tables: if workload == "kv" {
                        vec![detflow_workloads::kv::TABLE.into()]
                    } else {
                        Vec::new()
                    },
                },
                limits: Default::default(),
                cluster: cluster.clone(),
            };
            let path = dir.join(format!("node-{}.toml", spec.id));
            std::fs::write(&path, config.to_toml())?;
            let log = std::fs::File::create(dir.join(format!("node-{}.log", spec.id)))?;
            let child = Command::new(&exe)
                .arg("node")
                .arg("--config")
                .arg(&path)
                .env(
                    "RUST_LOG",
                    std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
                )
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("starting node {}", spec.id))?;
            children.push(child);
        }
        Ok(LocalCluster {
            dir,
            _temp: temp,
            children,
            gateways: cluster.iter().map(|n| n.addr).collect(),
        })
    }

    fn tls(&self) -> Result<Tls> {
        Ok(Tls::from_dir(&self.dir.join("certs"), "client")?)
    }

    /// Waits until every node answers and a leader is elected. With `loading`, shows on
    /// stderr how far the nodes are with loading TPC-C's warehouses (from their logs).
    async fn wait_ready(&mut self, within: Duration, loading: Option<Loading>) -> Result<()> {
        // Quick attempts: a node still loading takes connections but answers nothing.
        let policy = detflow_client::RetryPolicy {
            attempt_timeout: Duration::from_millis(500),
            ..Default::default()
        };
        let client = Client::connect(self.gateways.clone(), self.tls()?)
            .await?
            .with_policy(policy);
        let start = Instant::now();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let progress = loading.map(|loading| {
            let logs = self.logs();
            let stop = stop.clone();
            tokio::spawn(async move { loading.show(&logs, start, &stop).await })
        });
        let ready = self.poll_ready(&client, start, within).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(progress) = progress {
            let _ = progress.await;
        }
        client.close();
        ready
    }

    async fn poll_ready(
        &mut self,
        client: &Client,
        start: Instant,
        within: Duration,
    ) -> Result<()> {
        loop {
            for (i, child) in self.children.iter_mut().enumerate() {
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "node {} exited ({status}); see {}",
                        i + 1,
                        self.dir.join(format!("node-{}.log", i + 1)).display()
                    );
                }
            }
            let statuses = client.status().await;
            let up = statuses.iter().filter(|(_, s)| s.is_ok()).count();
            let leader = statuses
                .iter()
                .filter_map(|(_, s)| s.as_ref().ok())
                .any(|s| s.replica.is_some_and(|(_, leader, _)| leader.is_some()));
            if up == statuses.len() && leader {
                return Ok(());
            }
            if start.elapsed() > within {
                bail!(
                    "the cluster was not ready within {within:?} ({up} of {} nodes answer); see the node logs in {}",
                    statuses.len(),
                    self.dir.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn logs(&self) -> Vec<PathBuf> {
        (1..=self.children.len())
            .map(|i| self.dir.join(format!("node-{i}.log")))
            .collect()
    }

    fn stop(&mut self) {
        // SIGTERM first, so each node shuts down cleanly; `Child::kill` below is SIGKILL, for
        // one that has not exited within the grace period. A child not yet waited for keeps
        // its pid, so the signal cannot reach another process; one that already exited just
        // makes the call fail, which is fine.
        #[cfg(unix)]
        for child in &self.children {
            let pid = rustix::process::Pid::from_child(child);
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        for mut child in self.children.drain(..) {
            let deadline = Instant::now() + Duration::from_secs(5);
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
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What the nodes of a local TPC-C cluster load, for progress reports.
struct Loading {
    warehouses: u32,
    rows: u64,
}

impl Loading {
    /// Shows progress on stderr until `stop`: a bar redrawn in place on a terminal, a line
    /// every few seconds otherwise.
    async fn show(&self, logs: &[PathBuf], start: Instant, stop: &std::sync::atomic::AtomicBool) {
        let terminal = std::io::stderr().is_terminal();
        let mut shown = (f64::NEG_INFINITY, String::new());
        loop {
            let finished = stop.load(std::sync::atomic::Ordering::Relaxed);
            let (warehouses, rows) = loaded(logs);
            let secs = start.elapsed().as_secs_f64();
            let line = format!(
                "loading {warehouses}/{} warehouses, {:.2}M of about {:.2}M rows, {secs:.0} s",
                self.warehouses,
                rows as f64 / 1e6,
                self.rows as f64 / 1e6
            );
            if terminal {
                let width = 30;
                let filled =
                    (width * warehouses as usize / self.warehouses.max(1) as usize).min(width);
                eprint!(
                    "\r[{}{}] {line}  ",
                    "#".repeat(filled),
                    ".".repeat(width - filled)
                );
                if finished {
                    eprintln!();
                }
            } else if secs - shown.0 >= 5.0 || finished && !line.starts_with(&shown.1) {
                eprintln!("{line}");
                // Without the elapsed time: the last line is not repeated unless it moved.
                let progress = line.rsplit_once(", ").map_or(&*line, |(p, _)| p);
                shown = (secs, progress.to_owned());
            }
            if finished {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// Warehouses the nodes logged as loaded, and their rows.
fn loaded(logs: &[PathBuf]) -> (u32, u64) {
    let mut warehouses = 0;
    let mut rows = 0;
    for log in logs {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        for line in text.lines() {
            // "loaded warehouse W of partition P: N rows in …"
            let Some(at) = line.find(load::WAREHOUSE_LOADED) else {
                continue;
            };
            warehouses += 1;
            let rest = &line[at..];
            if let Some(n) = rest
                .split_once(": ")
                .and_then(|(_, r)| r.split_once(' '))
                .and_then(|(n, _)| n.parse::<u64>().ok())
            {
                rows += n;
            }
        }
    }
    (warehouses, rows)
}

fn free_ports(n: usize) -> Result<Vec<u16>> {
    let sockets: Vec<std::net::UdpSocket> = (0..n)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0"))
        .collect::<std::io::Result<_>>()?;
    sockets.iter().map(|s| Ok(s.local_addr()?.port())).collect()
}

async fn demo(args: DemoArgs) -> Result<bool> {
    let tpcc = args.workload == "tpcc";
    let options = args.tpcc.options(&args.workload, 100);
    println!(
        "starting a local cluster: {} node processes (each a sequencer replica and a gateway), {} partitions, workload {}",
        args.replicas, args.partitions, args.workload
    );
    let local = Local::start(
        args.replicas,
        args.partitions,
        &args.workload,
        options.clone(),
        args.keep.clone(),
    )
    .await?;
    if tpcc {
        println!("cluster ready");
    } else {
        println!(
            "cluster ready; driving {} sessions for {:?}",
            args.clients, args.duration
        );
    }
    let config = DriveConfig {
        workload: args.workload.clone(),
        partitions: args.partitions,
        options,
        clients: args.clients,
        duration: args.duration,
        progress: true,
    };
    let ok = if tpcc {
        let report = run_tpcc(&local.gateways(), &local.tls()?, config, local.load_seconds).await?;
        report.print();
        report.consistent()
    } else {
        let report = drive::drive(local.gateways(), local.tls()?, config).await?;
        drive::print(&report);
        report.invariants.is_ok()
    };
    local.stop();
    println!("cluster stopped");
    Ok(ok)
}

/// An embedded local cluster, or nothing when measuring an existing one.
struct Local {
    cluster: LocalCluster,
    load_seconds: Option<f64>,
}

impl Local {
    /// Starts a cluster and waits until it is loaded and has a leader.
    async fn start(
        replicas: u32,
        partitions: u32,
        workload: &str,
        options: Options,
        keep: Option<PathBuf>,
    ) -> Result<Local> {
        let mut cluster = LocalCluster::start(replicas, partitions, workload, &options, keep)?;
        let began = Instant::now();
        let (loading, within) = if workload == "tpcc" {
            let tpcc = detflow_node::tpcc::workload(partitions, &options);
            let rows = detflow_node::tpcc::rows_expected(&tpcc);
            let loading = Loading {
                warehouses: tpcc.config().warehouses,
                rows,
            };
            // Generous: a full-size warehouse loads in seconds on a laptop.
            (Some(loading), Duration::from_secs(60 + rows / 5_000))
        } else {
            (None, Duration::from_secs(30))
        };
        cluster.wait_ready(within, loading).await?;
        let load_seconds = (workload == "tpcc").then(|| began.elapsed().as_secs_f64());
        Ok(Local {
            cluster,
            load_seconds,
        })
    }

    fn gateways(&self) -> Vec<SocketAddr> {
        self.cluster.gateways.clone()
    }

    fn tls(&self) -> Result<Tls> {
        self.cluster.tls()
    }

    fn stop(mut self) {
        self.cluster.stop();
    }
}

/// A TPC-C run: the consistency check right after loading, the drive (with the final check
/// as its invariants), the report.
async fn run_tpcc(
    gateways: &[SocketAddr],
    tls: &Tls,
    config: DriveConfig,
    load_seconds: Option<f64>,
) -> Result<TpccReport> {
    let tpcc = detflow_node::tpcc::workload(config.partitions, &config.options);
    let client = Client::connect(gateways.to_vec(), tls.clone()).await?;
    let began = Instant::now();
    eprintln!(
        "checking the consistency conditions on {} warehouses (condition 11 too)",
        tpcc.config().warehouses
    );
    let initial = detflow_node::tpcc::consistency(&client, &tpcc, true).await;
    client.close();
    match &initial {
        Ok(s) => eprintln!(
            "initial consistency: {s} ({:.1} s)",
            began.elapsed().as_secs_f64()
        ),
        Err(s) => eprintln!("INITIAL CONSISTENCY BROKEN: {s}"),
    }
    eprintln!(
        "driving {} sessions, {} mix, for {:?}",
        config.clients,
        config.options.mix.unwrap_or(Mix::Standard).name(),
        config.duration
    );
    let scale_down = config.options.scale_down.unwrap_or(1);
    let run = drive::drive(gateways.to_vec(), tls.clone(), config).await?;
    Ok(TpccReport::new(
        &tpcc,
        scale_down,
        run,
        load_seconds,
        initial,
    ))
}

async fn bench(args: BenchArgs) -> Result<bool> {
    let tpcc = args.workload == "tpcc";
    let options = args.tpcc.options(&args.workload, 1);
    let local = if args.connect.is_empty() {
        let partitions = args.partitions.unwrap_or(if tpcc {
            options.warehouses.unwrap_or(4).min(4)
        } else {
            4
        });
        eprintln!(
            "starting a local cluster: 3 node processes, {partitions} partitions, workload {}",
            args.workload
        );
        Some((
            Local::start(3, partitions, &args.workload, options.clone(), None).await?,
            partitions,
        ))
    } else {
        None
    };
    let (gateways, tls, partitions) = match &local {
        Some((local, partitions)) => (local.gateways(), local.tls()?, *partitions),
        None => {
            let tls = Tls::from_dir(&args.certs, "client")?;
            let partitions = match args.partitions {
                Some(p) => p,
                None => partitions_of(&args.connect, &tls).await?,
            };
            (args.connect.clone(), tls, partitions)
        }
    };
    let config = DriveConfig {
        workload: args.workload.clone(),
        partitions,
        options,
        clients: args.clients,
        duration: args.duration,
        progress: true,
    };
    let load_seconds = local.as_ref().and_then(|(l, _)| l.load_seconds);
    let ok = if tpcc {
        let report = run_tpcc(&gateways, &tls, config, load_seconds).await?;
        if args.json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            report.print();
        }
        report.consistent()
    } else {
        let report = drive::drive(gateways, tls, config).await?;
        if args.json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            drive::print(&report);
        }
        report.invariants.is_ok()
    };
    if let Some((local, _)) = local {
        local.stop();
    }
    Ok(ok)
}

/// The partition count of the cluster at `gateways`, from the nodes' status.
async fn partitions_of(gateways: &[SocketAddr], tls: &Tls) -> Result<u32> {
    let client = Client::connect(gateways.to_vec(), tls.clone()).await?;
    let statuses = client.status().await;
    client.close();
    let partitions: std::collections::BTreeSet<u32> = statuses
        .iter()
        .filter_map(|(_, s)| s.as_ref().ok())
        .flat_map(|s| s.partitions.iter().map(|(p, _, _)| p.0))
        .collect();
    if partitions.is_empty() {
        bail!("no node at {gateways:?} reported its partitions; pass --partitions");
    }
    Ok(partitions.len() as u32)
}

async fn call(name: &str, args: &str, connect: &ConnectArgs) -> Result<bool> {
    let json: serde_json::Value =
        serde_json::from_str(args).with_context(|| format!("--args is not JSON: {args}"))?;
    let encoded = rmp_serde::to_vec_named(&json)?;
    let client = Client::connect(
        connect.connect.clone(),
        Tls::from_dir(&connect.certs, "client")?,
    )
    .await?;
    let result = client.call_raw(name, encoded).await;
    client.close();
    match result {
        Ok(output) => {
            let value: serde_json::Value = rmp_serde::from_slice(&output)
                .with_context(|| "the output is not MessagePack".to_string())?;
            println!("{}", serde_json::to_string_pretty(&value)?);
            Ok(true)
        }
        Err(e) => {
            eprintln!("detflow: {e}");
            Ok(false)
        }
    }
}

async fn status(connect: &ConnectArgs) -> Result<bool> {
    let client = Client::connect(
        connect.connect.clone(),
        Tls::from_dir(&connect.certs, "client")?,
    )
    .await?;
    let mut all_up = true;
    // Two samples a second apart give each gateway's recent throughput.
    let first: std::collections::BTreeMap<SocketAddr, (u64, u64)> = client
        .status()
        .await
        .into_iter()
        .filter_map(|(addr, s)| s.ok().map(|s| (addr, (s.calls_answered, s.uptime_us))))
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (addr, status) in client.status().await {
        match status {
            Ok(s) => {
                let recent = match first.get(&addr) {
                    Some((calls, at)) if s.uptime_us > *at => format!(
                        "{:.0} calls/s over the last second",
                        (s.calls_answered.saturating_sub(*calls)) as f64
                            / ((s.uptime_us - at) as f64 / 1e6)
                    ),
                    _ => "recent throughput unknown (restarted?)".to_owned(),
                };
                let replica = match s.replica {
                    Some((term, leader, commit)) => format!(
                        "replica term {term}, leader {}, committed epoch {commit}",
                        leader.map_or("none".to_owned(), |l| format!("node {l}"))
                    ),
                    None => "no replica".to_owned(),
                };
                println!(
                    "node {} at {addr}: {replica}; {} calls answered in {:.0} s, {recent}",
                    s.node,
                    s.calls_answered,
                    s.uptime_us as f64 / 1e6,
                );
                for (p, next, durable) in s.partitions {
                    println!(
                        "  partition {p}: applied through epoch {}, durable through {durable}",
                        next.0.saturating_sub(1)
                    );
                }
            }
            Err(e) => {
                all_up = false;
                println!("{addr}: unreachable ({e})");
            }
        }
    }
    client.close();
    Ok(all_up)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_huge_ones_are_refused_not_panicked_on() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        for bad in [
            "99999999999999999999s",
            "18446744073709551615h",
            "400days",
            "0s",
            "fast",
            "",
            "-1s",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
