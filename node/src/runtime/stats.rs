//! The node's live counters, and the status a client can ask for.

use super::Clock;
use detflow_protocol::message::NodeStatus;
use detflow_protocol::{Epoch, NodeId, PartitionId};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

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
            (term, leader, Epoch(stats.commit.load(Ordering::Relaxed)))
        }),
        partitions,
        calls_answered: stats.calls_answered.load(Ordering::Relaxed),
        uptime_us: clock.now().0,
    }
}
