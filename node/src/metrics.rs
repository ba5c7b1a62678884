//! A Prometheus text endpoint: `GET /metrics` on the configured address.

use crate::runtime::NodeStats;
use crate::transport::Metrics as TransportMetrics;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Renders every counter in the Prometheus text format.
pub fn render(stats: &NodeStats, transport: &TransportMetrics) -> String {
    let mut out = String::new();
    let mut counter = |name: &str, help: &str, value: u64| {
        let _ = writeln!(out, "# HELP detflow_{name} {help}");
        let _ = writeln!(out, "# TYPE detflow_{name} counter");
        let _ = writeln!(out, "detflow_{name} {value}");
    };
    counter(
        "calls_total",
        "Calls the gateway answered.",
        stats.calls_answered.load(Ordering::Relaxed),
    );
    counter(
        "commits_total",
        "Calls answered with a commit.",
        stats.commits.load(Ordering::Relaxed),
    );
    counter(
        "aborts_total",
        "Calls answered with a deterministic abort.",
        stats.aborts.load(Ordering::Relaxed),
    );
    counter(
        "unroutable_messages_total",
        "Messages for a component this node does not run.",
        stats.unroutable.load(Ordering::Relaxed),
    );
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
        let _ = writeln!(
            out,
            "# HELP detflow_partition_next_epoch The next epoch a partition applies."
        );
        let _ = writeln!(out, "# TYPE detflow_partition_next_epoch gauge");
        for (p, (next, _)) in parts.iter() {
            let _ = writeln!(
                out,
                "detflow_partition_next_epoch{{partition=\"{p}\"}} {next}"
            );
        }
    }
    transport.render_prometheus(&mut out);
    out
}

/// Serves `render` over plain HTTP until the task is aborted.
pub async fn serve(addr: SocketAddr, stats: Arc<NodeStats>, transport: Arc<TransportMetrics>) {
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(%addr, error = %e, "cannot serve metrics");
            return;
        }
    };
    loop {
        let Ok((mut socket, _)) = listener.accept().await else {
            continue;
        };
        let body = render(&stats, &transport);
        tokio::spawn(async move {
            let mut request = [0u8; 1024];
            let _ = socket.read(&mut request).await;
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(response.as_bytes()).await;
        });
    }
}
