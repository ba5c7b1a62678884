//! `detflow demo`: a local cluster, a workload driven with live progress, the report and
//! the invariant check, then the cluster stopped.

use super::local::{Local, run_tpcc};
use crate::cli::DemoArgs;
use anyhow::{Result, bail};
use detflow_loadgen::drive::{self, DriveConfig};

/// Runs the demo; `Ok(false)` when the invariant (or consistency) check failed.
pub(crate) async fn run(args: DemoArgs) -> Result<bool> {
    if ![1, 3, 5].contains(&args.replicas) {
        bail!("--replicas must be 1, 3 or 5");
    }
    if args.partitions == 0 {
        bail!("--partitions must be at least 1");
    }
    let tpcc = args.workload == "tpcc";
    let options = args.tpcc.options(&args.workload, 100);
    println!(
        "starting a local cluster: {} node processes (each a sequencer replica and a gateway), {} partitions with {} replicas each, workload {}",
        args.replicas,
        args.partitions,
        args.replication.unwrap_or(args.replicas.min(2)),
        args.workload
    );
    let local = Local::start(
        args.replicas,
        args.partitions,
        args.replication,
        &args.workload,
        options.clone(),
        args.keep.clone(),
        |_| {},
    )
    .await?;
    if tpcc {
        println!("cluster ready");
    } else {
        println!(
            "cluster ready; driving {} sessions for {:?}",
            args.clients, args.duration
        );
    }
    let config = DriveConfig {
        workload: args.workload.clone(),
        partitions: args.partitions,
        options,
        clients: args.clients,
        duration: args.duration,
        progress: true,
        snapshot_reads: args.tpcc.snapshot_reads,
    };
    let ok = if tpcc {
        let report = run_tpcc(&local.gateways(), &local.tls()?, config, local.load_seconds).await?;
        report.print();
        report.consistent()
    } else {
        let report = drive::drive(local.gateways(), local.tls()?, config).await?;
        drive::print(&report);
        report.invariants.is_ok()
    };
    local.stop();
    println!("cluster stopped");
    Ok(ok)
}
