//! Point snapshot reads against a running cluster, one at a time: their latency.
//!
//! ```sh
//! detflow demo --workload bank --keep /tmp/detflow-demo --duration 120s &  # load + cluster
//! cargo run --release -p detflow-client --example snapshot_latency -- \
//!     127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003 /tmp/detflow-demo/certs 5000
//! ```
//!
//! Each read is `client.snapshot(At::Latest).get(account)` of a bank account: one key, so
//! one partition and one round. Prints the p50, p99 and mean over the reads.

use detflow_client::{At, Client, Tls};
use detflow_workloads::bank;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let gateways: Vec<SocketAddr> = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:7001".into())
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let certs = PathBuf::from(args.next().unwrap_or_else(|| "certs".into()));
    let reads: usize = args.next().map_or(Ok(2_000), |n| n.parse())?;

    let client = Client::connect(gateways, Tls::from_dir(&certs, "client")?).await?;
    let mut latencies: Vec<Duration> = Vec::with_capacity(reads);
    let mut found = 0;
    for i in 0..reads + 200 {
        let key = bank::account_key((i as u64 * 7) % 64);
        #[allow(clippy::disallowed_methods)]
        let started = Instant::now();
        let value = client.snapshot(At::Latest).get(&key).await?;
        let took = started.elapsed();
        found += usize::from(value.is_some());
        // The first 200 warm the connections up.
        if i >= 200 {
            latencies.push(took);
        }
    }
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    let mean = latencies.iter().sum::<Duration>() / latencies.len() as u32;
    println!(
        "{reads} snapshot gets ({found} found): p50 {:.3} ms, p99 {:.3} ms, mean {:.3} ms",
        at(0.50).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        mean.as_secs_f64() * 1e3
    );
    client.close();
    Ok(())
}
