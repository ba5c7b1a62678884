//! `detflow status`: each node's view of the cluster, and its recent throughput.

use crate::cli::ConnectArgs;
use anyhow::Result;
use detflow_client::{Client, Tls};
use detflow_protocol::NodeId;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

/// Prints every node's status; `Ok(false)` if one is unreachable.
pub(crate) async fn run(connect: &ConnectArgs) -> Result<bool> {
    let client = Client::connect(
        connect.connect.clone(),
        Tls::from_dir(&connect.certs, "client")?,
    )
    .await?;
    let mut all_up = true;
    // Two samples a second apart give each gateway's recent throughput.
    let first: BTreeMap<SocketAddr, (u64, u64)> = client
        .status()
        .await
        .into_iter()
        .filter_map(|(addr, s)| s.ok().map(|s| (addr, (s.calls_answered, s.uptime_us))))
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Per partition, each replica's node and last applied epoch.
    let mut replicas: BTreeMap<u32, Vec<(NodeId, u64)>> = BTreeMap::new();
    let mut committed = 0;
    // Per partition and epoch, the state digests its replicas reported after it.
    let mut digests: BTreeMap<(u32, u64), BTreeMap<String, Vec<NodeId>>> = BTreeMap::new();
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
                    Some((term, leader, commit)) => {
                        committed = committed.max(commit.0);
                        format!(
                            "replica term {term}, leader {}, committed epoch {commit}, log \
                             from epoch {}",
                            leader.map_or("none".to_owned(), |l| format!("node {l}")),
                            s.log_start.next()
                        )
                    }
                    None => "no replica".to_owned(),
                };
                println!(
                    "node {} at {addr}: {replica}; {} calls answered in {:.0} s, {recent}",
                    s.node,
                    s.calls_answered,
                    s.uptime_us as f64 / 1e6,
                );
                if s.determinism_failures > 0 {
                    println!(
                        "  DETERMINISM FAILURES: {} (last: {})",
                        s.determinism_failures,
                        s.last_divergence.as_deref().unwrap_or("unknown")
                    );
                }
                for (p, next, durable) in s.partitions {
                    let applied = next.0.saturating_sub(1);
                    println!(
                        "  partition {p}: applied through epoch {applied}, durable through {durable}"
                    );
                    replicas.entry(p.0).or_default().push((s.node, applied));
                }
                for (p, epoch, digest) in s.digests {
                    println!("  partition {p}: state digest after epoch {epoch}: {digest}");
                    digests
                        .entry((p.0, epoch.0))
                        .or_default()
                        .entry(digest)
                        .or_default()
                        .push(s.node);
                }
            }
            Err(e) => {
                all_up = false;
                println!("{addr}: unreachable ({e})");
            }
        }
    }
    if !replicas.is_empty() {
        println!(
            "partitions (replicas: node, applied epoch, lag behind the committed epoch {committed}):"
        );
    }
    for (p, nodes) in &replicas {
        let line: Vec<String> = nodes
            .iter()
            .map(|(node, applied)| {
                format!(
                    "node {node} at {applied} (lag {})",
                    committed.saturating_sub(*applied)
                )
            })
            .collect();
        println!("  partition {p}: {}", line.join(", "));
    }
    // Replicas seen at the same epoch must have the same state; a difference is a
    // determinism failure that no result may have shown yet.
    for ((p, epoch), seen) in &digests {
        if seen.len() > 1 {
            let who: Vec<String> = seen
                .iter()
                .map(|(digest, nodes)| format!("{nodes:?}: {digest}"))
                .collect();
            println!(
                "  STATE DIVERGENCE: the replicas of partition {p} differ after epoch {epoch}: {}",
                who.join("; ")
            );
        }
    }
    client.close();
    Ok(all_up)
}
