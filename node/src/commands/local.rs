//! What `demo` and `bench` share: a local cluster started and waited for, with TPC-C's
//! loading progress on stderr, and a TPC-C run (the consistency check after loading, the
//! drive, the report).

// The command line times loading and the run with the wall clock.
#![allow(clippy::disallowed_methods)]

use crate::local_cluster::{Loading, LocalCluster};
use anyhow::Result;
use detflow_client::{Client, Tls};
use detflow_loadgen::drive::{self, DriveConfig};
use detflow_loadgen::tpcc::{self, TpccReport};
use detflow_workloads::Options;
use detflow_workloads::tpcc::Mix;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// An embedded local cluster, ready to drive.
pub(super) struct Local {
    cluster: LocalCluster,
    /// Seconds from starting the processes to a ready cluster (TPC-C only).
    pub(super) load_seconds: Option<f64>,
}

impl Local {
    /// Starts a cluster, each node's configuration adjusted by `configure`, and waits until
    /// it is loaded and has a leader, showing TPC-C's loading progress.
    pub(super) async fn start(
        replicas: u32,
        partitions: u32,
        replication: Option<u32>,
        workload: &str,
        options: Options,
        keep: Option<PathBuf>,
        configure: impl Fn(&mut crate::config::Config) + 'static,
    ) -> Result<Local> {
        let mut builder = LocalCluster::builder(replicas, partitions, workload)
            .options(options.clone())
            .configure(configure);
        if let Some(r) = replication {
            builder = builder.replication(r);
        }
        if let Some(dir) = keep {
            builder = builder.dir(dir);
        }
        // Every replica of a partition loads its rows.
        let copies = builder.replicas_per_partition();
        let mut cluster = builder.start()?;
        let began = Instant::now();
        if workload == "tpcc" {
            let tpcc = tpcc::workload(partitions, &options);
            let rows = tpcc::rows_expected(&tpcc);
            let mut display = LoadingDisplay::new(tpcc.config().warehouses, rows, copies, began);
            // Generous: a full-size warehouse loads in seconds on a laptop.
            let within = Duration::from_secs(60 + rows / 5_000);
            cluster.wait_ready(within, |l| display.show(l)).await?;
        } else {
            cluster.wait_ready(Duration::from_secs(30), |_| {}).await?;
        }
        let load_seconds = (workload == "tpcc").then(|| began.elapsed().as_secs_f64());
        Ok(Local {
            cluster,
            load_seconds,
        })
    }

    /// Each running node process: its name (`node-<id>`) and pid.
    pub(super) fn pids(&self) -> Vec<(String, u32)> {
        self.cluster
            .nodes()
            .iter()
            .filter_map(|n| Some((format!("node-{}", n.id()), n.pid()?)))
            .collect()
    }

    /// Each running node process with its data directory, to watch its footprint.
    pub(super) fn watched(&self) -> Vec<super::footprint::Watched> {
        self.cluster
            .nodes()
            .iter()
            .filter_map(|n| {
                Some(super::footprint::Watched {
                    name: format!("node-{}", n.id()),
                    pid: n.pid()?,
                    data_dir: n.data_dir().to_path_buf(),
                })
            })
            .collect()
    }

    /// The cluster, to stop and start its nodes.
    pub(super) fn cluster(&mut self) -> &mut LocalCluster {
        &mut self.cluster
    }

    /// The nodes' gateways.
    pub(super) fn gateways(&self) -> Vec<SocketAddr> {
        self.cluster.gateways()
    }

    /// The client certificate's TLS material.
    pub(super) fn tls(&self) -> Result<Tls> {
        self.cluster.client_tls()
    }

    /// Stops every node.
    pub(super) fn stop(mut self) {
        self.cluster.stop();
    }
}

/// TPC-C's loading progress on stderr: a bar redrawn in place on a terminal, a line every
/// few seconds otherwise.
struct LoadingDisplay {
    warehouses: u32,
    rows: u64,
    /// Replicas of each partition: each loads the partition's rows.
    copies: u32,
    start: Instant,
    terminal: bool,
    /// When the last line was printed (seconds since `start`), and what it said without
    /// the elapsed time.
    shown: (f64, String),
}

impl LoadingDisplay {
    fn new(warehouses: u32, rows: u64, copies: u32, start: Instant) -> LoadingDisplay {
        LoadingDisplay {
            warehouses,
            rows,
            copies: copies.max(1),
            start,
            terminal: std::io::stderr().is_terminal(),
            shown: (f64::NEG_INFINITY, String::new()),
        }
    }

    /// Shows one poll's progress; the one that finds the cluster ready ends the display.
    fn show(&mut self, loading: &Loading) {
        let finished = loading.ready;
        // Counted over every replica, shown per copy of the data.
        let warehouses = loading.warehouses_loaded / self.copies;
        let secs = self.start.elapsed().as_secs_f64();
        let line = format!(
            "loading {warehouses}/{} warehouses, {:.2}M of about {:.2}M rows, {secs:.0} s",
            self.warehouses,
            loading.rows_loaded as f64 / 1e6 / f64::from(self.copies),
            self.rows as f64 / 1e6
        );
        if self.terminal {
            let width = 30;
            let filled = (width * warehouses as usize / self.warehouses.max(1) as usize).min(width);
            eprint!(
                "\r[{}{}] {line}  ",
                "#".repeat(filled),
                ".".repeat(width - filled)
            );
            if finished {
                eprintln!();
            }
        } else if secs - self.shown.0 >= 5.0 || finished && !line.starts_with(&self.shown.1) {
            eprintln!("{line}");
            // Without the elapsed time: the last line is not repeated unless it moved.
            let progress = line.rsplit_once(", ").map_or(&*line, |(p, _)| p);
            self.shown = (secs, progress.to_owned());
        }
    }
}

/// A TPC-C run: the consistency check right after loading, the drive (with the final check
/// as its invariants), the report.
pub(super) async fn run_tpcc(
    gateways: &[SocketAddr],
    tls: &Tls,
    config: DriveConfig,
    load_seconds: Option<f64>,
) -> Result<TpccReport> {
    let tpcc = tpcc::workload(config.partitions, &config.options);
    let client = Client::connect(gateways.to_vec(), tls.clone()).await?;
    let began = Instant::now();
    eprintln!(
        "checking the consistency conditions on {} warehouses (condition 11 too)",
        tpcc.config().warehouses
    );
    let initial = tpcc::consistency(&client, &tpcc, true).await;
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
