//! Starts a local 3-node cluster of `shop-node` processes (the binary beside this one) and
//! drives the shop on it: 4 sessions placing 25 orders each, then every invariant checked
//! against what the cluster acknowledged.

// A supervisor of processes and a driver: it may wait on the wall clock.
#![allow(clippy::disallowed_methods)]

use anyhow::{Context, Result};
use detflow_node::local_cluster::LocalCluster;
use std::time::{Duration, Instant};

#[tokio::main]
async fn main() -> Result<()> {
    let binary = std::env::current_exe()?
        .parent()
        .context("the demo's folder")?
        .join("shop-node");
    anyhow::ensure!(
        binary.exists(),
        "{} is missing: build it with `cargo build --release -p detflow-example-shop`",
        binary.display()
    );
    eprintln!("starting 3 shop-node processes on 127.0.0.1 (3 partitions)");
    let mut cluster = LocalCluster::builder(3, 3, "kv")
        .binary(binary)
        .prefix("detflow-shop-")
        .start()?;
    cluster.wait_ready(Duration::from_secs(60), |_| {}).await?;
    let started = Instant::now();
    let report =
        detflow_example_shop::drive(cluster.gateways(), cluster.client_tls()?, 4, 25, 1).await?;
    println!(
        "{} orders placed, {} refused by the shop's rules, {} shipped and {} read from the shipments stream, in {:.1} s; {} units and {} cents left; stock, money, orders and shipments all check",
        report.placed,
        report.refused,
        report.shipped,
        report.streamed,
        started.elapsed().as_secs_f64(),
        report.units_left,
        report.cents_left
    );
    cluster.stop();
    Ok(())
}
