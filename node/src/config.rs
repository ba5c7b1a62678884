//! A node's configuration: a TOML file, with command-line flags that override it.
//!
//! ```toml
//! id = 1                          # this node
//! listen = "127.0.0.1:7001"       # QUIC, for nodes and clients
//! data_dir = "data/node-1"
//! workload = "bank"               # the procedures and partition scheme the cluster runs
//! epoch_us = 5000                 # longest an epoch stays open (earlier ones in flight)
//! epoch_min_us = 200              # how long it stays open while the log is idle
//! compact_every_epochs = 1024     # the log drops applied epochs in steps of at least this
//! checkpoint_every_epochs = 8192  # each partition checkpoints its state to the archive
//!                                 # after every multiple of this; 0 = never (then the
//!                                 # log is compacted without waiting for checkpoints)
//! checkpoint_mib_per_sec = 16     # how fast a checkpoint reads its partition (0: no
//!                                 # limit); a node writes one checkpoint at a time
//! # archive_dir = "archive"       # where dropped epochs go; default DATA_DIR/archive
//! # archive_retain_epochs = 1000000   # keep the last N epochs there; default all
//! # archive_retain_bytes = 4294967296 # and at most N bytes of it; default 4 GiB, 0 = all
//! # archive_retain_secs = 604800      # and what was written in the last N s; default all
//! # TPC-C sizing (workload = "tpcc" only; every node of a cluster must agree):
//! # warehouses = 8                # default: one per partition; at least one per partition
//! # scale_down = 1                # population divided by this; 1 = full size (default),
//! #                               # 100 = 1,000 items and 30 customers per district
//! metrics_listen = "127.0.0.1:9001"   # optional Prometheus endpoint
//!
//! [tls]                           # `detflow certs --out certs` writes these
//! ca = "certs/node/ca.pem"
//! cert = "certs/node/node-1.pem"
//! key = "certs/node/node-1.key"
//! # session_key = "certs/node/session.key"   # default: session.key beside `cert`
//!
//! [access]                        # optional: what clients may do
//! kv_txn_tables = ["kv"]          # tables ad-hoc kv.txn may touch; default none (refused)
//!
//! [limits]                        # optional; the defaults suit most clusters
//! call_deadline_ms = 10000        # a call not answered by then gets Unavailable
//! calls_in_flight_max = 16384     # client calls waiting in this node's gateway at once
//! inbox_events_max = 65536        # events queued per component task before shedding
//! link_messages_max = 65536       # messages queued per peer link before shedding
//!
//! [[cluster]]                     # every node, this one included
//! id = 1
//! addr = "127.0.0.1:7001"
//! replica = true
//! gateway = true
//! partitions = [0, 1]            # a partition listed on several nodes has a replica on
//!                                 # each; every replica executes every plan of it
//! ```
//!
//! A TPC-C node generates only the warehouses of the partitions it executes (plus the
//! replicated `item` table), warehouse by warehouse, logging each one; a full-size
//! warehouse is about 500,000 rows. A node restarted on a loaded data dir loads nothing.

use detflow_protocol::{NodeId, Placement};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Paths of the node's TLS material.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsPaths {
    /// The cluster CA certificate.
    pub ca: PathBuf,
    /// This node's certificate.
    pub cert: PathBuf,
    /// This node's private key.
    pub key: PathBuf,
    /// The cluster's session key (every node has the same one): it signs the tokens that
    /// bind a client session to the client that opened it. Default: `session.key` in the
    /// folder of `cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_key: Option<PathBuf>,
}

impl TlsPaths {
    /// The session key file: as configured, or `session.key` beside the certificate.
    pub fn session_key(&self) -> PathBuf {
        self.session_key.clone().unwrap_or_else(|| {
            self.cert
                .parent()
                .unwrap_or_else(|| Path::new("."))
                .join("session.key")
        })
    }
}

/// What clients may do beyond calling the workloads' procedures (DESIGN.md §10c).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Access {
    /// The tables ad-hoc `kv.txn` may read and write. Empty (the default): `kv.txn` is
    /// refused, since it would let any client write any key of any table.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kv_txn_tables: Vec<String>,
}

/// Bounds on what a node holds for its clients and peers (DESIGN.md §10c).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeLimits {
    /// How long a client call may wait after its last attempt before the gateway answers
    /// `Unavailable` (the client retries; the call is still executed at most once).
    pub call_deadline_ms: u64,
    /// Client calls waiting in this node's gateway at once; more are answered
    /// `Overloaded`.
    pub calls_in_flight_max: usize,
    /// Events queued for one component task (replica, executor, gateway); beyond it new
    /// events are shed and counted, as a lossy network would drop them.
    pub inbox_events_max: usize,
    /// Messages queued for one peer node; beyond it new messages are shed and counted.
    pub link_messages_max: usize,
}

impl Default for NodeLimits {
    fn default() -> NodeLimits {
        NodeLimits {
            call_deadline_ms: 10_000,
            calls_in_flight_max: 16_384,
            inbox_events_max: 65_536,
            link_messages_max: 65_536,
        }
    }
}

/// How much history each partition keeps for snapshot reads (`[snapshots]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Snapshots {
    /// How long an applied epoch stays readable, in milliseconds (default 10 000).
    pub retention_ms: u64,
    /// The most bytes of overwritten values a partition keeps for it (default 64 MiB);
    /// past it the oldest epochs leave the window early.
    pub retention_bytes: u64,
}

impl Default for Snapshots {
    fn default() -> Snapshots {
        Snapshots {
            retention_ms: detflow_executor::RETENTION_US_DEFAULT / 1_000,
            retention_bytes: detflow_executor::RETENTION_BYTES_DEFAULT as u64,
        }
    }
}

/// One node of the cluster, as every node's configuration lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSpec {
    /// Its id (at least 1).
    pub id: u32,
    /// Its QUIC address.
    pub addr: SocketAddr,
    /// Whether it runs a sequencer replica.
    #[serde(default)]
    pub replica: bool,
    /// Whether it runs a gateway.
    #[serde(default)]
    pub gateway: bool,
    /// The partitions it executes.
    #[serde(default)]
    pub partitions: Vec<u32>,
}

/// A node's whole configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// This node's id.
    pub id: u32,
    /// Where it listens for QUIC.
    pub listen: SocketAddr,
    /// Where it keeps its log and state.
    pub data_dir: PathBuf,
    /// The workload whose procedures and partition scheme the cluster runs.
    pub workload: String,
    /// TPC-C warehouses (default: one per partition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warehouses: Option<u32>,
    /// TPC-C population divided by this factor (default 1: full size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down: Option<u32>,
    /// The longest an epoch stays open: while earlier epochs are not yet committed.
    #[serde(default = "default_epoch_us")]
    pub epoch_us: u64,
    /// How long an epoch stays open while every earlier one is committed (group commit):
    /// at low load a call waits about one quorum write, not a whole `epoch_us`.
    #[serde(default = "default_epoch_min_us")]
    pub epoch_min_us: u64,
    /// The replica compacts its log once it can drop at least this many epochs that every
    /// replica of every partition has durably applied.
    #[serde(default = "default_compact_every_epochs")]
    pub compact_every_epochs: u64,
    /// Each partition writes a checkpoint of its state to the archive after every epoch
    /// that is a multiple of this (0: never); the log is compacted no further than the
    /// last checkpoint every replica wrote.
    #[serde(default = "default_checkpoint_every_epochs")]
    pub checkpoint_every_epochs: u64,
    /// How fast a checkpoint reads its partition, in MiB of rows per second (0: as fast as
    /// it can). A node writes one checkpoint at a time, so this bounds the disk and CPU
    /// that checkpoints take from the pipeline, per node.
    #[serde(default = "default_checkpoint_mib_per_sec")]
    pub checkpoint_mib_per_sec: u64,
    /// Where compacted log segments go (default: `archive` in the data directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive_dir: Option<PathBuf>,
    /// Keep only the segments holding the last this many epochs (default: keep all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive_retain_epochs: Option<u64>,
    /// Keep at most this many bytes of segments and checkpoints (default 4 GiB, so that a
    /// node's disk stays bounded; 0: no byte limit).
    #[serde(default = "default_archive_retain_bytes")]
    pub archive_retain_bytes: u64,
    /// Keep only what was archived in the last this many seconds (default: keep all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive_retain_secs: Option<u64>,
    /// Where to serve Prometheus metrics, if anywhere.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    /// TLS material.
    pub tls: TlsPaths,
    /// What clients may do.
    #[serde(default, skip_serializing_if = "is_default")]
    pub access: Access,
    /// Bounds on queues and waits.
    #[serde(default, skip_serializing_if = "is_default")]
    pub limits: NodeLimits,
    /// The snapshot reads' retention window.
    #[serde(default, skip_serializing_if = "is_default")]
    pub snapshots: Snapshots,
    /// Every node of the cluster.
    pub cluster: Vec<NodeSpec>,
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

fn default_epoch_us() -> u64 {
    5_000
}

pub(crate) fn default_epoch_min_us() -> u64 {
    detflow_sequencer::Config::default().epoch_min_us
}

pub(crate) fn default_compact_every_epochs() -> u64 {
    detflow_sequencer::ReplicaConfig::new(NodeId(1), vec![NodeId(1)]).compact_every_epochs
}

/// On: a quiet 30-minute bank soak with one every 8,192 epochs kept memory and data flat,
/// and on TPC-C W=8, with checkpoints taking turns per node at 16 MiB/s and compactions
/// archived in the background, a round of checkpoints costs a share of throughput while it
/// runs, no stall (benches/README.md). The log holds at most about this many epochs past
/// the last checkpoint, and a restored partition replays at most that many.
pub(crate) fn default_checkpoint_every_epochs() -> u64 {
    8_192
}

/// See [`Config::checkpoint_mib_per_sec`].
pub(crate) fn default_checkpoint_mib_per_sec() -> u64 {
    16
}

/// 4 GiB: the archive sits in the data directory by default, and a data directory must not
/// grow without bound. It holds about 15 minutes of TPC-C W=8 at full load (checkpoints
/// included) and hours of bank.
pub(crate) fn default_archive_retain_bytes() -> u64 {
    4 << 30
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for a node configuration.
    #[error("{path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        source: toml::de::Error,
    },
    /// The configuration is inconsistent.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Reads and validates a TOML file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config: Config = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })?;
        config.validate()?;
        Ok(config)
    }

    /// The TOML text of this configuration.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| panic!("a config always serializes: {e}"))
    }

    /// Checks that the cluster description is consistent and names this node.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |s: String| Err(ConfigError::Invalid(s));
        if !self.cluster.iter().any(|n| n.id == self.id) {
            return invalid(format!("node {} is not in [[cluster]]", self.id));
        }
        let mut ids = std::collections::BTreeSet::new();
        for n in &self.cluster {
            if n.id == 0 || !ids.insert(n.id) {
                return invalid(format!(
                    "node ids must be unique and at least 1 (got {})",
                    n.id
                ));
            }
        }
        let replicas = self.cluster.iter().filter(|n| n.replica).count();
        if ![1, 3, 5].contains(&replicas) {
            return invalid(format!(
                "the cluster needs 1, 3 or 5 replicas, not {replicas}"
            ));
        }
        if !self.cluster.iter().any(|n| n.gateway) {
            return invalid("the cluster needs at least one gateway".into());
        }
        // A partition listed on several nodes has a replica on each (its replica set).
        let mut replicas: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
        for n in &self.cluster {
            for p in &n.partitions {
                let set = replicas.entry(*p).or_default();
                if set.contains(&n.id) {
                    return invalid(format!("node {} lists partition {p} twice", n.id));
                }
                set.push(n.id);
            }
        }
        let count = replicas.len() as u32;
        if count == 0 || replicas.keys().copied().ne(0..count) {
            return invalid(format!(
                "partitions must be numbered 0..N without gaps, got {:?}",
                replicas.keys().collect::<Vec<_>>()
            ));
        }
        if self.compact_every_epochs == 0 {
            return invalid("compact_every_epochs must be positive".into());
        }
        if self.epoch_us == 0 {
            return invalid("epoch_us must be positive".into());
        }
        if self.epoch_min_us > self.epoch_us {
            return invalid(format!(
                "epoch_min_us ({}) must not exceed epoch_us ({})",
                self.epoch_min_us, self.epoch_us
            ));
        }
        if self.scale_down == Some(0) {
            return invalid("scale_down must be at least 1".into());
        }
        let limits = &self.limits;
        if limits.call_deadline_ms == 0
            || limits.calls_in_flight_max == 0
            || limits.inbox_events_max == 0
            || limits.link_messages_max == 0
        {
            return invalid(format!("every [limits] value must be positive: {limits:?}"));
        }
        if let Some(table) = self
            .access
            .kv_txn_tables
            .iter()
            .find(|t| t.as_str() == detflow_protocol::SYSTEM_TABLE || t.is_empty())
        {
            return invalid(format!(
                "[access] kv_txn_tables may not name {table:?}: the system table is never \
                 writable by clients"
            ));
        }
        if let Err(e) =
            detflow_workloads::by_name_with(&self.workload, count, &self.workload_options())
        {
            return invalid(e.to_string());
        }
        Ok(())
    }

    /// The sizes the workload is built with (TPC-C: warehouses and scale-down; the mix is
    /// the clients' business).
    pub fn workload_options(&self) -> detflow_workloads::Options {
        detflow_workloads::Options {
            warehouses: self.warehouses,
            scale_down: self.scale_down,
            mix: None,
        }
    }

    /// This node's entry.
    pub fn me(&self) -> &NodeSpec {
        self.cluster
            .iter()
            .find(|n| n.id == self.id)
            .unwrap_or_else(|| panic!("validated: node {} is in the cluster", self.id))
    }

    /// The number of partitions in the cluster (each may have several replicas).
    pub fn partitions(&self) -> u32 {
        let mut all: Vec<u32> = self
            .cluster
            .iter()
            .flat_map(|n| n.partitions.iter().copied())
            .collect();
        all.sort_unstable();
        all.dedup();
        all.len() as u32
    }

    /// The nodes that run a gateway.
    pub fn gateways(&self) -> Vec<NodeId> {
        self.nodes_that(|n| n.gateway)
    }

    /// The nodes that run a sequencer replica.
    pub fn replicas(&self) -> Vec<NodeId> {
        self.nodes_that(|n| n.replica)
    }

    fn nodes_that(&self, runs: impl Fn(&NodeSpec) -> bool) -> Vec<NodeId> {
        self.cluster
            .iter()
            .filter(|n| runs(n))
            .map(|n| NodeId(n.id))
            .collect()
    }

    /// Which nodes execute each partition: its replica set, in the cluster's order.
    pub fn placement(&self) -> Placement {
        let sets = (0..self.partitions())
            .map(|p| {
                self.cluster
                    .iter()
                    .filter(|n| n.partitions.contains(&p))
                    .map(|n| NodeId(n.id))
                    .collect()
            })
            .collect();
        Placement::new(sets).unwrap_or_else(|e| panic!("validated placement: {e}"))
    }

    /// The address of node `id`.
    pub fn addr(&self, id: NodeId) -> Option<SocketAddr> {
        self.cluster.iter().find(|n| n.id == id.0).map(|n| n.addr)
    }

    /// The log archive's directory: `archive_dir`, or `archive` in the data directory.
    pub fn archive_dir(&self) -> PathBuf {
        self.archive_dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("archive"))
    }

    /// How much of the archive to keep, from the `archive_retain_*` settings.
    pub fn archive_retention(&self) -> crate::archive::Retention {
        crate::archive::Retention {
            epochs: self.archive_retain_epochs,
            bytes: (self.archive_retain_bytes > 0).then_some(self.archive_retain_bytes),
            secs: self.archive_retain_secs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config {
            id: 1,
            listen: "127.0.0.1:7001".parse().unwrap(),
            data_dir: "d".into(),
            workload: "bank".into(),
            warehouses: None,
            scale_down: None,
            epoch_us: 5_000,
            epoch_min_us: 200,
            compact_every_epochs: 1_024,
            checkpoint_every_epochs: 8_192,
            checkpoint_mib_per_sec: 16,
            archive_dir: None,
            archive_retain_epochs: None,
            archive_retain_bytes: default_archive_retain_bytes(),
            archive_retain_secs: None,
            metrics_listen: None,
            tls: TlsPaths {
                ca: "ca.pem".into(),
                cert: "n.pem".into(),
                key: "n.key".into(),
                session_key: None,
            },
            access: Access::default(),
            limits: NodeLimits::default(),
            snapshots: Snapshots::default(),
            cluster: vec![NodeSpec {
                id: 1,
                addr: "127.0.0.1:7001".parse().unwrap(),
                replica: true,
                gateway: true,
                partitions: vec![0, 1],
            }],
        }
    }

    #[test]
    fn round_trips_through_toml() {
        let c = config();
        let text = c.to_toml();
        assert_eq!(toml::from_str::<Config>(&text).unwrap(), c);
        assert!(c.validate().is_ok());
        assert_eq!(c.partitions(), 2);
    }

    #[test]
    fn the_archive_is_bounded_by_default_and_unbounded_on_request() {
        let mut text = config().to_toml();
        text = text
            .lines()
            .filter(|l| !l.starts_with("archive_retain_bytes"))
            .collect::<Vec<_>>()
            .join("\n");
        let unset: Config = toml::from_str(&text).unwrap();
        assert_eq!(unset.archive_retention().bytes, Some(4 << 30));
        assert_eq!(unset.archive_retention().epochs, None);
        let all: Config = toml::from_str(&text.replace(
            "compact_every_epochs",
            "archive_retain_bytes = 0\ncompact_every_epochs",
        ))
        .unwrap();
        assert!(all.archive_retention().keeps_all());
    }

    #[test]
    fn tpcc_sizing_round_trips_and_is_checked() {
        let mut c = config();
        c.workload = "tpcc".into();
        c.warehouses = Some(4);
        c.scale_down = Some(100);
        let text = c.to_toml();
        assert!(text.contains("warehouses = 4"), "{text}");
        assert_eq!(toml::from_str::<Config>(&text).unwrap(), c);
        assert!(c.validate().is_ok());
        c.warehouses = Some(1);
        let refused = c.validate().unwrap_err().to_string();
        assert!(
            refused.contains("at least one warehouse per partition"),
            "{refused}"
        );
        c.warehouses = None;
        c.scale_down = Some(0);
        assert!(c.validate().is_err());
        // Configurations written before TPC-C sizing existed still load.
        assert!(!config().to_toml().contains("warehouses"));
    }

    #[test]
    fn inconsistent_clusters_are_refused_with_a_reason() {
        let mut c = config();
        c.cluster[0].partitions = vec![0, 2];
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("without gaps")
        );
        let mut c = config();
        c.id = 9;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("not in [[cluster]]")
        );
    }
}
