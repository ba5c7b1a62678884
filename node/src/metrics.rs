//! The Prometheus endpoint: `GET /metrics` on the configured address.
//!
//! The node's counters ([`NodeStats`]) are prometheus-client metrics; [`registry`] names
//! them (every name starts `detflow_`) together with the transport's counters, read at
//! scrape time from [`TransportMetrics`], and [`serve`] answers each scrape with the
//! registry in the Prometheus text format (0.0.4).

use crate::runtime::NodeStats;
use crate::transport::{MetricKind, Metrics as TransportMetrics};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::prometheus_text;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Every metric of the node, named: the live counters of `stats` and the transport's.
///
/// The registry holds handles to the same metrics as `stats` (a prometheus-client metric
/// is a shared handle), so counting in the tasks needs no further publishing.
pub fn registry(stats: &NodeStats, transport: Arc<TransportMetrics>) -> Registry {
    let mut registry = Registry::with_prefix("detflow");
    // Counter names omit `_total`: the encoder appends it.
    let counters = [
        (
            "calls",
            "Calls the gateway answered.",
            &stats.calls_answered,
        ),
        ("commits", "Calls answered with a commit.", &stats.commits),
        (
            "aborts",
            "Calls answered with a deterministic abort.",
            &stats.aborts,
        ),
        (
            "unroutable_messages",
            "Messages for a component this node does not run.",
            &stats.unroutable,
        ),
        (
            "peer_messages_rejected",
            "Messages from peer nodes refused: they contradict the sender's certificate or roles.",
            &stats.peer_rejected,
        ),
        (
            "shed",
            "Events and messages shed because a bounded inbox or link queue was full.",
            &stats.shed,
        ),
        (
            "encode_failures",
            "Outgoing messages dropped because they do not encode within the frame limit.",
            &stats.encode_failures,
        ),
        (
            "calls_timed_out",
            "Client calls answered Unavailable because no answer came within the call deadline.",
            &stats.calls_timed_out,
        ),
        (
            "calls_refused",
            "Client calls refused before ordering: foreign sessions, unauthorized, malformed, overloaded.",
            &stats.calls_refused,
        ),
    ];
    for (name, help, counter) in counters {
        registry.register(name, help, counter.clone());
    }
    registry.register(
        "commit_epoch",
        "The local replica's commit epoch.",
        stats.commit.clone(),
    );
    registry.register(
        "log_start_epoch",
        "The last epoch the local replica's log compacted away.",
        stats.log_start.clone(),
    );
    registry.register(
        "partition_next_epoch",
        "The next epoch a partition applies.",
        stats.partition_next_epoch.clone(),
    );
    registry.register(
        "checkpoint_epoch",
        "The epoch of a partition's last durable checkpoint in the archive.",
        stats.checkpoint_epoch.clone(),
    );
    registry.register(
        "state_transfers",
        "Copies of another replica's state a partition replica made after losing its own.",
        stats.state_transfers.clone(),
    );
    registry.register(
        "partition_lag_epochs",
        "Epochs this node's replica of a partition trails the local sequencer replica's commit.",
        stats.partition_lag.clone(),
    );
    registry.register(
        "snapshot_retained_bytes",
        "Bytes of overwritten values a partition keeps for snapshot reads at recent epochs.",
        stats.snapshot_retained_bytes.clone(),
    );
    registry.register(
        "snapshot_oldest_epoch",
        "The oldest epoch a snapshot read of a partition may ask for.",
        stats.snapshot_oldest_epoch.clone(),
    );
    registry.register(
        "determinism_failures",
        "Calls on which replicas of a partition reported different results.",
        stats.determinism_failures.clone(),
    );
    registry.register(
        "aborts_by_reason",
        "Deterministic aborts by reason.",
        stats.aborts_by_reason.clone(),
    );
    registry.register(
        "replica_peer_drops",
        "Replication messages the replica dropped as contrary to the protocol.",
        stats.replica_drops.clone(),
    );
    registry.register(
        "executor_peer_drops",
        "Plans, reads, acks and hellos an executor dropped as forged or contradictory.",
        stats.executor_drops.clone(),
    );
    registry.register_with_unit(
        "call_latency",
        "Gateway call latency, from arrival to reply.",
        Unit::Seconds,
        stats.call_latency.clone(),
    );
    registry.register_with_unit(
        "epoch_commit_latency",
        "Leader epoch latency, from closing a batch to its quorum commit.",
        Unit::Seconds,
        stats.epoch_latency.clone(),
    );
    registry.register(
        "epoch_transactions",
        "Transactions per epoch committed by this node as leader.",
        stats.epoch_transactions.clone(),
    );
    registry.register(
        "channel_backlog_messages",
        "Messages queued for a peer node.",
        stats.backlogs.clone(),
    );
    registry
        .sub_registry_with_prefix("transport")
        .register_collector(Box::new(TransportCollector(transport)));
    registry
}

/// The registry in the Prometheus text format.
pub fn render(registry: &Registry) -> String {
    let mut text = String::new();
    // Writing to a String cannot fail, and every name and label here is ours.
    if let Err(e) = prometheus_text::encode(&mut text, registry) {
        tracing::error!(error = %e, "cannot encode the metrics");
    }
    text
}

/// The transport's counters, read when scraped: `detflow-net` keeps plain atomics (it has
/// no business knowing the exposition format), and this turns them into metrics.
#[derive(Debug)]
struct TransportCollector(Arc<TransportMetrics>);

impl Collector for TransportCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for sample in self.0.samples() {
            match sample.kind {
                MetricKind::Counter => {
                    let counter = ConstCounter::new(sample.value);
                    let metric = encoder.encode_descriptor(
                        sample.name,
                        sample.help,
                        None,
                        counter.metric_type(),
                    )?;
                    counter.encode(metric)?;
                }
                MetricKind::Gauge => {
                    let gauge = ConstGauge::new(sample.value as i64);
                    let metric = encoder.encode_descriptor(
                        sample.name,
                        sample.help,
                        None,
                        gauge.metric_type(),
                    )?;
                    gauge.encode(metric)?;
                }
            }
        }
        Ok(())
    }
}

/// How long a metrics client has to send its request and take the answer.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);

/// Metrics connections served at once; more wait in the listen backlog.
const CONNECTIONS_MAX: usize = 16;

/// Serves `registry` over plain HTTP until the task is aborted.
///
/// Scrapers are not authenticated, so every exchange is bounded: a client that connects and
/// sends nothing (or reads nothing) is cut off after a timeout, few are served at once, and
/// an accept error (out of file descriptors, say) is waited out instead of spun on. The
/// HTTP is hand-written (one request, one answer, close) rather than a server crate's: the
/// endpoint answers every request the same way.
pub async fn serve(listener: tokio::net::TcpListener, registry: Arc<Registry>) {
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
        let body = render(&registry);
        tokio::spawn(async move {
            let exchange = async {
                let mut request = [0u8; 1024];
                // Whatever the request says, the answer is the same: one read is enough to
                // know the client asked.
                let _asked = socket.read(&mut request).await?;
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    prometheus_text::CONTENT_TYPE,
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
    use crate::runtime::{PartitionLabel, PeerLabel, ReasonLabel};

    #[test]
    fn renders_counters_reasons_histograms_backlogs_and_transport() {
        let stats = NodeStats::default();
        stats.calls_answered.inc_by(3);
        stats.commit.set(12);
        stats.call_latency.observe(0.0015);
        stats.call_latency.observe(30.0);
        stats.epoch_latency.observe(0.004);
        stats.epoch_transactions.observe(3.0);
        stats
            .aborts_by_reason
            .get_or_create(&ReasonLabel { reason: "user" })
            .inc_by(2);
        stats
            .partition_next_epoch
            .get_or_create(&PartitionLabel { partition: 1 })
            .set(5);
        stats.backlogs.get_or_create(&PeerLabel { peer: 2 }).set(7);
        let text = render(&registry(&stats, Arc::default()));
        for line in [
            "# TYPE detflow_calls_total counter\n",
            "\ndetflow_calls_total 3\n",
            "\ndetflow_shed_total 0\n",
            "\ndetflow_commit_epoch 12\n",
            "\ndetflow_aborts_by_reason_total{reason=\"user\"} 2\n",
            "\ndetflow_partition_next_epoch{partition=\"1\"} 5\n",
            "\ndetflow_call_latency_seconds_bucket{le=\"0.001\"} 0\n",
            "\ndetflow_call_latency_seconds_bucket{le=\"0.002\"} 1\n",
            "\ndetflow_call_latency_seconds_bucket{le=\"+Inf\"} 2\n",
            "\ndetflow_call_latency_seconds_count 2\n",
            "\ndetflow_epoch_commit_latency_seconds_bucket{le=\"0.005\"} 1\n",
            "\ndetflow_epoch_transactions_bucket{le=\"2\"} 0\n",
            "\ndetflow_epoch_transactions_bucket{le=\"4\"} 1\n",
            "\ndetflow_channel_backlog_messages{peer=\"2\"} 7\n",
            "# TYPE detflow_transport_handshakes_refused_total counter\n",
            "\ndetflow_transport_handshakes_refused_total 0\n",
            "# TYPE detflow_transport_connections_open gauge\n",
            "\ndetflow_transport_connections_open 0\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }
}
