//! The command line: every command's arguments, parsed by clap.

use clap::{Parser, Subcommand};
use detflow_workloads::Options;
use detflow_workloads::tpcc::Mix;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// `detflow`'s command line.
#[derive(Parser)]
#[command(
    name = "detflow",
    version,
    about = "Deterministic, Calvin-style ACID transactions over QUIC",
    long_about = "detflow orders multi-key transactions into epochs with a replicated sequencer \
                  and executes them deterministically on partitioned executors. Start with \
                  `detflow demo`, which runs a local cluster and a workload."
)]
pub(crate) struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub(crate) command: Cmd,
}

/// The commands.
#[derive(Subcommand)]
pub(crate) enum Cmd {
    /// Make a development CA with node and client certificates.
    ///
    /// Writes OUT/ca/ (the CA: keep it offline), OUT/node/ (node-N certificates naming
    /// their node id, and the cluster's session key) and OUT/client/ (the client
    /// certificate: the only folder a client machine needs).
    Certs(CertsArgs),
    /// Run one node with the roles its configuration gives it.
    Node(NodeArgs),
    /// Start a local cluster as separate processes, drive a workload, report, shut down.
    Demo(DemoArgs),
    /// Measure throughput and latency against a local (default) or existing cluster.
    Bench(BenchArgs),
    /// Make one call and print its output as JSON.
    Call(CallArgs),
    /// Run a SQL query over every table of the cluster, at one consistent epoch.
    ///
    /// Every table the cluster's services declare is a SQL table: its key fields, then its
    /// columns (`SHOW TABLES`, `SHOW COLUMNS FROM t`). The query reads the state after one
    /// epoch on every partition (the latest applied everywhere, or `--at`), without
    /// entering the log or slowing transactions. The epoch read, the row count and the
    /// time go to standard error. With `--data DIR` it queries instead the state `detflow
    /// replay` wrote there, with the tables of the node `--config` names. Examples:
    ///
    ///   detflow sql "SELECT w_id, sum(amount_cents) FROM order_line GROUP BY w_id"
    ///     --connect 127.0.0.1:7001 --certs certs
    ///   detflow sql "SELECT count(*) FROM acct" --data /tmp/at-128
    ///     --config cluster/node-1.toml
    Sql(SqlArgs),
    /// Check a stopped node's partitions against a re-execution of its log.
    ///
    /// Re-executes the node's log (from the last checkpoint before `--from`, or from the
    /// workload's initial rows) up to each of its partitions' last applied epoch, or
    /// `--to`, and compares, epoch by epoch, every state digest the executors recorded
    /// (kept in the store and in the archive's checkpoints), and the rows on disk, with
    /// the re-execution's. A difference (a disk that changed a value, a build that
    /// differs, a procedure that is not deterministic) names the partition, the epoch and
    /// the keys, and the command exits with 1. The node must be stopped and run a
    /// sequencer replica (it holds the log). Examples:
    ///
    /// With `--connect`, it audits a running cluster instead: each node's latest state
    /// digest of each of its partitions against the log's re-execution (the archive of
    /// the node `--config` names, then the nodes' live logs).
    ///
    ///   detflow audit --config cluster/node-1.toml
    ///   detflow audit --config cluster/node-1.toml --from 40000 --to 50000
    ///   detflow audit --config cluster/node-1.toml --connect 127.0.0.1:7001 --certs certs
    Audit(AuditArgs),
    /// Rebuild the state of every partition after any epoch of a stopped node's log.
    ///
    /// Re-executes the log (the archive's segments, then the node's live log) from the
    /// workload's initial rows through `--at`, and writes each partition's rows after that
    /// epoch into `--out/partition-P` (a partition store, as a node's data directory holds
    /// one), printing each partition's state digest. Example:
    ///
    ///   detflow replay --config cluster/node-1.toml --at 1200 --out /tmp/at-1200
    Replay(ReplayArgs),
    /// Print one transaction of a stopped node's log: the call, its footprint with the
    /// values it could read when it ran, its plan (partitions), the writes it made and its
    /// result. Example:
    ///
    ///   detflow explain --config cluster/node-1.toml --position 1200:3
    Explain(ExplainArgs),
    /// The log archive: compacted epochs, kept as immutable compressed segments.
    #[command(subcommand)]
    Archive(ArchiveCmd),
    /// Show each node's view: leader, committed epoch, partitions' applied epochs.
    Status {
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Checkpoint every partition of a running cluster after one epoch, on demand.
    ///
    /// Asks every node given for a checkpoint of each partition it hosts after the same
    /// epoch (`--at`, or by default about a second past the cluster's commit epoch), so
    /// the archive holds a complete set there, from which `replay`, `audit` and a lost
    /// partition can start. Each replica writes it when it applies that epoch, without
    /// stopping; this works whether periodic checkpoints are on or off. Give every node:
    /// a partition hosted only on nodes left out is not checkpointed (the command says
    /// so). Example:
    ///
    ///   detflow checkpoint --connect 127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003
    ///     --certs certs
    Checkpoint(CheckpointArgs),
}

/// `detflow checkpoint`.
#[derive(clap::Args)]
pub(crate) struct CheckpointArgs {
    #[command(flatten)]
    pub(crate) connect: ConnectArgs,
    /// The epoch after which to checkpoint (default: the highest commit epoch the nodes
    /// report, plus 200).
    #[arg(long)]
    pub(crate) at: Option<u64>,
}

/// `detflow certs`.
#[derive(clap::Args)]
pub(crate) struct CertsArgs {
    /// Where to write the PEM files.
    #[arg(long)]
    pub(crate) out: PathBuf,
    /// How many node certificates (node-1 … node-N).
    #[arg(long, default_value_t = 3)]
    pub(crate) nodes: u32,
    /// Replace an existing CA in `--out`.
    #[arg(long)]
    pub(crate) force: bool,
}

/// `detflow node`.
#[derive(clap::Args)]
pub(crate) struct NodeArgs {
    /// The node's TOML configuration (see README).
    #[arg(long)]
    pub(crate) config: PathBuf,
    /// Override `listen`.
    #[arg(long)]
    pub(crate) listen: Option<SocketAddr>,
    /// Override `data_dir`.
    #[arg(long)]
    pub(crate) data_dir: Option<PathBuf>,
    /// Override `metrics_listen`.
    #[arg(long)]
    pub(crate) metrics_listen: Option<SocketAddr>,
    /// Also shut down when standard input reaches end of file. For supervisors and
    /// tests: a node started with a pipe on stdin then dies with its parent, even when
    /// the parent itself is SIGKILLed and cannot clean up.
    #[arg(long, hide = true)]
    pub(crate) exit_on_stdin_eof: bool,
}

/// `detflow archive …`.
#[derive(Subcommand)]
pub(crate) enum ArchiveCmd {
    /// List the segments an archive holds, the epochs they cover and their sizes.
    Ls(ArchiveLsArgs),
}

/// `detflow archive ls`.
#[derive(clap::Args)]
pub(crate) struct ArchiveLsArgs {
    /// The archive directory.
    #[arg(long, conflicts_with = "config")]
    pub(crate) archive: Option<PathBuf>,
    /// A node's TOML configuration: its archive (`archive_dir`, default DATA_DIR/archive).
    #[arg(long)]
    pub(crate) config: Option<PathBuf>,
    /// Also read every segment back and check its hash.
    #[arg(long)]
    pub(crate) verify: bool,
}

/// Where the history commands find a node's log: its configuration (workload,
/// partitions, data directory), the archive and the live log.
#[derive(clap::Args)]
pub(crate) struct HistoryArgs {
    /// The node's TOML configuration (its workload, partitions, data directory).
    #[arg(long)]
    pub(crate) config: PathBuf,
    /// Override `data_dir` (where the live log is; none there: the archive alone).
    #[arg(long)]
    pub(crate) data_dir: Option<PathBuf>,
    /// Override the archive directory (default: the node's `archive_dir`).
    #[arg(long)]
    pub(crate) archive: Option<PathBuf>,
}

/// `detflow replay`.
#[derive(clap::Args)]
pub(crate) struct ReplayArgs {
    #[command(flatten)]
    pub(crate) history: HistoryArgs,
    /// The epoch after which to rebuild the state.
    #[arg(long)]
    pub(crate) at: u64,
    /// An empty (or new) directory for the partitions' stores.
    #[arg(long)]
    pub(crate) out: PathBuf,
}

/// `detflow explain`.
#[derive(clap::Args)]
pub(crate) struct ExplainArgs {
    #[command(flatten)]
    pub(crate) history: HistoryArgs,
    /// The transaction: EPOCH:INDEX (its place in the log, as results report it).
    #[arg(long)]
    pub(crate) position: String,
    /// The most rows shown per prefix of the footprint.
    #[arg(long, default_value_t = 20)]
    pub(crate) rows_max: usize,
}

/// `detflow audit`.
#[derive(clap::Args)]
pub(crate) struct AuditArgs {
    /// The node's TOML configuration (its data directory, workload and partitions).
    #[arg(long)]
    pub(crate) config: PathBuf,
    /// Override `data_dir`.
    #[arg(long)]
    pub(crate) data_dir: Option<PathBuf>,
    /// Override the archive directory, where the epochs the log compacted away are.
    #[arg(long)]
    pub(crate) archive: Option<PathBuf>,
    /// Audit from this epoch on (default: from the first): the re-execution starts at the
    /// last checkpoint before it.
    #[arg(long)]
    pub(crate) from: Option<u64>,
    /// Audit up to this epoch (default: the last one a partition applied).
    #[arg(long)]
    pub(crate) to: Option<u64>,
    /// Audit a running cluster instead (gateway addresses, comma-separated): the state
    /// digest each node reports for each of its partitions against a re-execution of the
    /// log, read from the archive, then from the nodes' live logs.
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["from", "to", "data_dir"])]
    pub(crate) connect: Vec<SocketAddr>,
    /// With `--connect`: the folder holding ca.pem, client.pem and client.key.
    #[arg(long, default_value = "certs")]
    pub(crate) certs: PathBuf,
}

/// `detflow call`.
#[derive(clap::Args)]
pub(crate) struct CallArgs {
    /// The procedure, e.g. bank.balance.
    pub(crate) name: String,
    /// The arguments as JSON, e.g. '{"account": 3}'.
    #[arg(long, default_value = "null")]
    pub(crate) args: String,
    #[command(flatten)]
    pub(crate) connect: ConnectArgs,
}

/// `detflow sql`.
#[derive(clap::Args)]
pub(crate) struct SqlArgs {
    /// The query (DataFusion's SQL dialect); `-` reads it from standard input.
    pub(crate) query: String,
    /// Read the state after this epoch (within the nodes' snapshot retention, 10 s by
    /// default) instead of the latest.
    #[arg(long)]
    pub(crate) at: Option<u64>,
    /// How to print the rows: table, json (an array of objects) or csv.
    #[arg(long, default_value = "table")]
    pub(crate) format: detflow_query::Format,
    /// Gateway addresses of the cluster to query, comma-separated.
    #[arg(long, value_delimiter = ',', required_unless_present = "data")]
    pub(crate) connect: Vec<SocketAddr>,
    /// The folder holding ca.pem, client.pem and client.key.
    #[arg(long, default_value = "certs")]
    pub(crate) certs: PathBuf,
    /// Query the partition stores `detflow replay --out DIR` wrote (DIR/partition-P)
    /// instead of a cluster.
    #[arg(long, conflicts_with = "connect", requires = "config")]
    pub(crate) data: Option<PathBuf>,
    /// With `--data`: a node configuration of the cluster, for its workload's tables.
    #[arg(long)]
    pub(crate) config: Option<PathBuf>,
}

/// Where an existing cluster is, and the client's certificate.
#[derive(clap::Args)]
pub(crate) struct ConnectArgs {
    /// Gateway addresses, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub(crate) connect: Vec<SocketAddr>,
    /// The folder holding ca.pem, client.pem and client.key.
    #[arg(long, default_value = "certs")]
    pub(crate) certs: PathBuf,
}

/// `detflow demo`.
#[derive(clap::Args, Clone)]
pub(crate) struct DemoArgs {
    /// Sequencer replicas, one per node process (1, 3 or 5).
    #[arg(long, default_value_t = 3)]
    pub(crate) replicas: u32,
    /// Executor partitions, spread over the nodes.
    #[arg(long, default_value_t = 4)]
    pub(crate) partitions: u32,
    /// Replicas of each partition, on distinct nodes: every replica executes every plan,
    /// so the cluster keeps committing while one node of each replica set is down
    /// (default: 2, or 1 with one node).
    #[arg(long)]
    pub(crate) replication: Option<u32>,
    /// The workload to drive (bank, ycsb, kv or tpcc).
    #[arg(long, default_value = "bank")]
    pub(crate) workload: String,
    /// How long to drive it, e.g. 30s, 2m.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub(crate) duration: Duration,
    /// Concurrent client sessions.
    #[arg(long, default_value_t = 32)]
    pub(crate) clients: u32,
    /// Keep the cluster's folder (certificates, configs, logs, data) instead of deleting it.
    #[arg(long)]
    pub(crate) keep: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) tpcc: TpccArgs,
}

/// TPC-C's knobs, shared by `demo` and `bench`.
#[derive(clap::Args, Clone)]
pub(crate) struct TpccArgs {
    /// TPC-C: warehouses (default: one per partition).
    #[arg(long)]
    pub(crate) warehouses: Option<u32>,
    /// TPC-C: divide the population (items, customers, orders) by this factor; 1 is full
    /// size, about 500,000 rows per warehouse (default: 1 for bench, 100 for demo).
    #[arg(long)]
    pub(crate) scale_down: Option<u32>,
    /// TPC-C: the transaction mix, standard or new-order-payment (50/50).
    #[arg(long, default_value = "standard", value_parser = parse_mix)]
    pub(crate) mix: Mix,
    /// Run the workload's read-only transactions (TPC-C: the by-last-name reconnaissance,
    /// Order-Status and Stock-Level) on a snapshot at the latest epoch, in the client,
    /// instead of ordering them through the log.
    #[arg(long)]
    pub(crate) snapshot_reads: bool,
}

impl TpccArgs {
    /// The sizes `workload` runs with: TPC-C's knobs for TPC-C, the defaults otherwise.
    pub(crate) fn options(&self, workload: &str, scale_down_default: u32) -> Options {
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

/// `detflow bench`.
#[derive(clap::Args)]
pub(crate) struct BenchArgs {
    /// The workload (bank, ycsb, kv or tpcc).
    pub(crate) workload: String,
    /// How long to measure, e.g. 30s.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub(crate) duration: Duration,
    /// Concurrent client sessions.
    #[arg(long, default_value_t = 32)]
    pub(crate) clients: u32,
    /// Measure an existing cluster at these gateways instead of an embedded local one.
    #[arg(long, value_delimiter = ',')]
    pub(crate) connect: Vec<SocketAddr>,
    /// With --connect: the folder holding ca.pem, client.pem and client.key.
    #[arg(long, default_value = "certs")]
    pub(crate) certs: PathBuf,
    /// Partitions of the embedded cluster (default 4; TPC-C: as many as warehouses, up to
    /// 8). With --connect, the cluster's (default: asked from the nodes).
    #[arg(long)]
    pub(crate) partitions: Option<u32>,
    /// Replicas of each partition in the embedded cluster, on distinct nodes (default 2).
    #[arg(long)]
    pub(crate) replication: Option<u32>,
    /// Drive the embedded cluster twice, first without faults, then while one node at a
    /// time is killed and restarted (kill), frozen with SIGSTOP for 3 s (pause), or killed
    /// and kept down for the rest of the run (down); report the throughput kept and the
    /// longest stretch without an answer during each fault.
    #[arg(long, value_enum)]
    pub(crate) nemesis: Option<crate::commands::nemesis::Nemesis>,
    /// Print the report as one line of JSON on stdout (progress still goes to stderr).
    #[arg(long)]
    pub(crate) json: bool,
    /// Also write the throughput over time (per 100 ms and per second) to this SVG file.
    #[arg(long, value_name = "FILE")]
    pub(crate) plot: Option<PathBuf>,
    /// Embedded cluster: each partition checkpoints after every multiple of this many
    /// epochs (0: never; default: the node's, `checkpoint_every_epochs`).
    #[arg(long, value_name = "EPOCHS")]
    pub(crate) checkpoint_every: Option<u64>,
    /// Embedded cluster: how fast a checkpoint reads its partition, in MiB/s (0: no
    /// limit; default: the node's, `checkpoint_mib_per_sec`).
    #[arg(long, value_name = "MIB")]
    pub(crate) checkpoint_mib_per_sec: Option<u64>,
    #[command(flatten)]
    pub(crate) tpcc: TpccArgs,
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
