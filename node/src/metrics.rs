//! A Prometheus text endpoint: `GET /metrics` on the configured address.

use crate::runtime::{LATENCY_BOUNDS_US, LatencyHistogram, NodeStats};
use crate::transport::Metrics as TransportMetrics;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Renders every counter in the Prometheus text format.
pub fn render(stats: &NodeStats, transport: &TransportMetrics) -> String {
    let mut out = String::new();
    let counters = [
        (
            "calls_total",
            "Calls the gateway answered.",
            &stats.calls_answered,
        ),
        (
            "commits_total",
            "Calls answered with a commit.",
            &stats.commits,
        ),
        (
            "aborts_total",
            "Calls answered with a deterministic abort.",
            &stats.aborts,
        ),
        (
            "unroutable_messages_total",
            "Messages for a component this node does not run.",
            &stats.unroutable,
        ),
        (
            "peer_messages_rejected_total",
            "Messages from peer nodes refused: they contradict the sender's certificate or roles.",
            &stats.peer_rejected,
        ),
        (
            "shed_total",
            "Events and messages shed because a bounded inbox or link queue was full.",
            &stats.shed,
        ),
        (
            "encode_failures_total",
            "Outgoing messages dropped because they do not encode within the frame limit.",
            &stats.encode_failures,
        ),
        (
            "calls_timed_out_total",
            "Client calls answered Unavailable because no answer came within the call deadline.",
            &stats.calls_timed_out,
        ),
        (
            "calls_refused_total",
            "Client calls refused before ordering: foreign sessions, unauthorized, overloaded.",
            &stats.calls_refused,
        ),
    ];
    for (name, help, value) in counters {
        let _ = writeln!(out, "# HELP detflow_{name} {help}");
        let _ = writeln!(out, "# TYPE detflow_{name} counter");
        let _ = writeln!(out, "detflow_{name} {}", value.load(Ordering::Relaxed));
    }
    let _ = writeln!(
        out,
        "# HELP detflow_commit_epoch The local replica's commit epoch."
    );
    let _ = writeln!(out, "# TYPE detflow_commit_epoch gauge");
    let _ = writeln!(
        out,
        "detflow_commit_epoch {}",
        stats.commit.load(Ordering::Relaxed)
    );
    if let Ok(parts) = stats.partitions.lock() {
        let next = parts.iter().map(|(p, (next, _))| (p, *next));
        labeled(
            &mut out,
            Family::gauge(
                "partition_next_epoch",
                "The next epoch a partition applies.",
            ),
            "partition",
            next,
        );
    }
    if let Ok(by) = stats.aborts_by_reason.lock() {
        let family = Family::counter("aborts_by_reason_total", "Deterministic aborts by reason.");
        labeled(&mut out, family, "reason", by.iter().map(|(r, n)| (r, *n)));
    }
    if let Ok(drops) = stats.replica_drops.lock() {
        let family = Family::counter(
            "replica_peer_drops_total",
            "Replication messages the replica dropped as contrary to the protocol.",
        );
        labeled(
            &mut out,
            family,
            "reason",
            drops.iter().map(|(r, n)| (r, *n)),
        );
    }
    if let Ok(drops) = stats.executor_drops.lock() {
        let family = Family::counter(
            "executor_peer_drops_total",
            "Plans, reads, acks and hellos an executor dropped as forged or contradictory.",
        );
        labeled(
            &mut out,
            family,
            "partition",
            drops.iter().map(|(p, n)| (p, *n)),
        );
    }
    histogram(
        &mut out,
        "call_latency_seconds",
        "Gateway call latency, from arrival to reply.",
        &stats.call_latency,
    );
    histogram(
        &mut out,
        "epoch_commit_latency_seconds",
        "Leader epoch latency, from closing a batch to its quorum commit.",
        &stats.epoch_latency,
    );
    if let Ok(backlogs) = stats.backlogs.lock() {
        let family = Family::gauge(
            "channel_backlog_messages",
            "Messages queued for a peer node.",
        );
        labeled(
            &mut out,
            family,
            "peer",
            backlogs.iter().map(|(p, n)| (p, *n)),
        );
    }
    transport.render_prometheus(&mut out);
    out
}

/// A metric family's name, help and type.
struct Family {
    name: &'static str,
    help: &'static str,
    kind: &'static str,
}

impl Family {
    fn counter(name: &'static str, help: &'static str) -> Family {
        Family {
            name,
            help,
            kind: "counter",
        }
    }

    fn gauge(name: &'static str, help: &'static str) -> Family {
        Family {
            name,
            help,
            kind: "gauge",
        }
    }
}

/// One family with one label: a line per (label value, value).
fn labeled<L: std::fmt::Display>(
    out: &mut String,
    family: Family,
    label: &str,
    values: impl Iterator<Item = (L, u64)>,
) {
    let Family { name, help, kind } = family;
    let _ = writeln!(out, "# HELP detflow_{name} {help}");
    let _ = writeln!(out, "# TYPE detflow_{name} {kind}");
    for (value_of_label, value) in values {
        let _ = writeln!(
            out,
            "detflow_{name}{{{label}=\"{value_of_label}\"}} {value}"
        );
    }
}

fn histogram(out: &mut String, name: &str, help: &str, h: &LatencyHistogram) {
    let _ = writeln!(out, "# HELP detflow_{name} {help}");
    let _ = writeln!(out, "# TYPE detflow_{name} histogram");
    let mut cumulative = 0;
    for (i, bound) in LATENCY_BOUNDS_US.iter().enumerate() {
        cumulative += h.buckets[i].load(Ordering::Relaxed);
        let le = *bound as f64 / 1e6;
        let _ = writeln!(out, "detflow_{name}_bucket{{le=\"{le}\"}} {cumulative}");
    }
    cumulative += h.buckets[LATENCY_BOUNDS_US.len()].load(Ordering::Relaxed);
    let _ = writeln!(out, "detflow_{name}_bucket{{le=\"+Inf\"}} {cumulative}");
    let sum = h.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
    let _ = writeln!(out, "detflow_{name}_sum {sum}");
    let _ = writeln!(
        out,
        "detflow_{name}_count {}",
        h.count.load(Ordering::Relaxed)
    );
}

/// How long a metrics client has to send its request and take the answer.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);

/// Metrics connections served at once; more wait in the listen backlog.
const CONNECTIONS_MAX: usize = 16;

/// Serves `render` over plain HTTP until the task is aborted.
///
/// Scrapers are not authenticated, so every exchange is bounded: a client that connects and
/// sends nothing (or reads nothing) is cut off after a timeout, few are served at once, and
/// an accept error (out of file descriptors, say) is waited out instead of spun on.
pub async fn serve(
    listener: tokio::net::TcpListener,
    stats: Arc<NodeStats>,
    transport: Arc<TransportMetrics>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(CONNECTIONS_MAX));
    loop {
        let (mut socket, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "metrics endpoint cannot accept; pausing");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let body = render(&stats, &transport);
        tokio::spawn(async move {
            let exchange = async {
                let mut request = [0u8; 1024];
                // Whatever the request says, the answer is the same: one read is enough to
                // know the client asked.
                let _asked = socket.read(&mut request).await?;
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                socket.write_all(response.as_bytes()).await
            };
            let _ = tokio::time::timeout(EXCHANGE_TIMEOUT, exchange).await;
            drop(slot);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use detflow_protocol::NodeId;

    #[test]
    fn renders_counters_reasons_histograms_and_backlogs() {
        let stats = NodeStats::default();
        stats.calls_answered.store(3, Ordering::Relaxed);
        stats.call_latency.observe(1_500);
        stats.call_latency.observe(30_000_000);
        stats.epoch_latency.observe(4_000);
        stats.aborts_by_reason.lock().unwrap().insert("user", 2);
        stats.backlogs.lock().unwrap().insert(NodeId(2), 7);
        let text = render(&stats, &TransportMetrics::default());
        for line in [
            "detflow_calls_total 3",
            "detflow_aborts_by_reason_total{reason=\"user\"} 2",
            "detflow_call_latency_seconds_bucket{le=\"0.001\"} 0",
            "detflow_call_latency_seconds_bucket{le=\"0.002\"} 1",
            "detflow_call_latency_seconds_bucket{le=\"+Inf\"} 2",
            "detflow_call_latency_seconds_count 2",
            "detflow_epoch_commit_latency_seconds_bucket{le=\"0.005\"} 1",
            "detflow_channel_backlog_messages{peer=\"2\"} 7",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }
}
