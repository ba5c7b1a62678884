//! The node's live counters, and the status a client can ask for.
//!
//! The counters are prometheus-client metrics, so the tasks count once and the metrics
//! endpoint encodes the same values (`crate::metrics` names them). The few values only
//! `status` reads (term, leader, durable epochs) are plain atomics and a map.

use super::Clock;
use detflow_protocol::message::NodeStatus;
use detflow_protocol::{Epoch, NodeId, PartitionId};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// A gauge of a count that cannot go negative.
pub type CountGauge = Gauge<u64, AtomicU64>;

/// A metric label naming a partition.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabel {
    /// The partition's number.
    pub partition: u32,
}

/// A metric label naming a peer node.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabel {
    /// The node's id.
    pub peer: u32,
}

/// A metric label naming why something was dropped or aborted.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// The reason's metric name (`user`, `second_leader`, …).
    pub reason: &'static str,
}

/// Upper bounds of the latency buckets, in seconds: from 1 ms (a local commit) to 10 s
/// (past the call deadline).
pub const LATENCY_BUCKETS_SECONDS: [f64; 12] = [
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// Upper bounds of the epoch size buckets, in transactions.
pub(super) const EPOCH_SIZE_BUCKETS: [f64; 10] =
    [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 512.0, 2048.0];

/// Live counters, read by `status` and the metrics endpoint.
#[derive(Debug)]
pub struct NodeStats {
    /// Current term of the local replica.
    pub term: AtomicU64,
    /// Leader the local replica believes in (0: none).
    pub leader: AtomicU64,
    /// Commit epoch of the local replica.
    pub commit: CountGauge,
    /// The last epoch the local replica's log compacted away (its log holds the epochs
    /// after it).
    pub log_start: CountGauge,
    /// Calls the gateway answered.
    pub calls_answered: Counter,
    /// Calls answered with a committed outcome.
    pub commits: Counter,
    /// Calls answered with an abort.
    pub aborts: Counter,
    /// Frames dropped because they could not be routed.
    pub unroutable: Counter,
    /// Messages from peer nodes refused because they contradict the sender's identity or
    /// role (a node speaking for another node, a partition it does not host, …).
    pub peer_rejected: Counter,
    /// Events and messages shed because a bounded inbox or link queue was full.
    pub shed: Counter,
    /// Outgoing messages dropped because they do not encode within the frame limit (a
    /// bug or a misconfigured limit; the link stays up).
    pub encode_failures: Counter,
    /// Client calls answered `Unavailable` because no answer came within the deadline.
    pub calls_timed_out: Counter,
    /// Client calls refused before reaching the gateway: foreign sessions, unauthorized
    /// procedures, overload.
    pub calls_refused: Counter,
    /// Replication messages the local replica dropped because they contradict the
    /// protocol, by reason (`second_leader`, `impostor`, …).
    pub replica_drops: Family<ReasonLabel, Counter>,
    /// Peer inputs the local executors dropped (forged or contradictory plans, reads, acks
    /// and hellos), per partition.
    pub executor_drops: Family<PartitionLabel, Counter>,
    /// Per partition: (next epoch to apply, durable epoch), for `status`.
    pub partitions: Mutex<BTreeMap<PartitionId, (u64, u64)>>,
    /// Per partition: the last applied epoch and the state digest after it, for `status`.
    pub digests: Mutex<BTreeMap<PartitionId, (u64, String)>>,
    /// Per partition: the next epoch to apply, for the metrics.
    pub partition_next_epoch: Family<PartitionLabel, CountGauge>,
    /// Per partition: the epoch of its last durable checkpoint.
    pub checkpoint_epoch: Family<PartitionLabel, CountGauge>,
    /// Per partition: copies of another replica's state this node's replica made (after
    /// it lost its own).
    pub state_transfers: Family<PartitionLabel, Counter>,
    /// Per partition: epochs this node's replica trails the local sequencer replica's
    /// commit epoch (0 without a local sequencer replica).
    pub partition_lag: Family<PartitionLabel, CountGauge>,
    /// Per partition: bytes of overwritten values kept for snapshot reads.
    pub snapshot_retained_bytes: Family<PartitionLabel, CountGauge>,
    /// Per partition: the oldest epoch a snapshot read may ask for.
    pub snapshot_oldest_epoch: Family<PartitionLabel, CountGauge>,
    /// Aborts by reason (`user`, `outside_footprint`, …).
    pub aborts_by_reason: Family<ReasonLabel, Counter>,
    /// Call latency at the gateway in seconds, from the call's arrival to its reply.
    pub call_latency: Histogram,
    /// Epoch commit latency at the leader in seconds, from closing the batch to its quorum
    /// commit.
    pub epoch_latency: Histogram,
    /// Transactions per epoch the leader committed: how far epochs amortize the log
    /// write (they grow with the load under group commit).
    pub epoch_transactions: Histogram,
    /// Messages queued for each peer node and not yet written.
    pub backlogs: Family<PeerLabel, CountGauge>,
    /// Calls on which replicas of a partition reported different results (seen by this
    /// node's gateway): determinism failures.
    pub determinism_failures: Counter,
    /// The last determinism failure, described, for `status`.
    pub last_divergence: Mutex<Option<String>>,
}

impl Default for NodeStats {
    fn default() -> NodeStats {
        NodeStats {
            term: AtomicU64::default(),
            leader: AtomicU64::default(),
            commit: CountGauge::default(),
            log_start: CountGauge::default(),
            calls_answered: Counter::default(),
            commits: Counter::default(),
            aborts: Counter::default(),
            unroutable: Counter::default(),
            peer_rejected: Counter::default(),
            shed: Counter::default(),
            encode_failures: Counter::default(),
            calls_timed_out: Counter::default(),
            calls_refused: Counter::default(),
            replica_drops: Family::default(),
            executor_drops: Family::default(),
            partitions: Mutex::default(),
            digests: Mutex::default(),
            partition_next_epoch: Family::default(),
            checkpoint_epoch: Family::default(),
            state_transfers: Family::default(),
            partition_lag: Family::default(),
            snapshot_retained_bytes: Family::default(),
            snapshot_oldest_epoch: Family::default(),
            aborts_by_reason: Family::default(),
            call_latency: Histogram::new(LATENCY_BUCKETS_SECONDS),
            epoch_latency: Histogram::new(LATENCY_BUCKETS_SECONDS),
            epoch_transactions: Histogram::new(EPOCH_SIZE_BUCKETS),
            backlogs: Family::default(),
            determinism_failures: Counter::default(),
            last_divergence: Mutex::default(),
        }
    }
}

/// This node's answer to a client's `Status` request.
pub(super) fn status(stats: &NodeStats, me: NodeId, clock: Clock) -> NodeStatus {
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
            (term, leader, Epoch(stats.commit.get()))
        }),
        partitions,
        calls_answered: stats.calls_answered.get(),
        uptime_us: clock.now().0,
        rows_loaded: crate::load::rows_loaded(),
        warehouses_loaded: crate::load::warehouses_loaded(),
        determinism_failures: stats.determinism_failures.get(),
        last_divergence: stats.last_divergence.lock().ok().and_then(|d| d.clone()),
        digests: stats
            .digests
            .lock()
            .map(|d| {
                d.iter()
                    .map(|(id, (epoch, digest))| (*id, Epoch(*epoch), digest.clone()))
                    .collect()
            })
            .unwrap_or_default(),
        log_start: Epoch(stats.log_start.get()),
    }
}
