//! `detflow bench`: throughput and latency of an embedded local cluster or an existing
//! one, as text or JSON.

use super::local::{Local, run_tpcc};
use super::nemesis;
use crate::cli::BenchArgs;
use anyhow::{Result, bail};
use detflow_client::{Client, Tls};
use detflow_loadgen::drive::{self, DriveConfig};
use detflow_workloads::Options;
use std::collections::BTreeSet;
use std::net::SocketAddr;

/// Runs the benchmark; `Ok(false)` when the invariant (or consistency) check failed.
pub(crate) async fn run(args: BenchArgs) -> Result<bool> {
    let tpcc = args.workload == "tpcc";
    if args.nemesis.is_some() && (tpcc || !args.connect.is_empty()) {
        bail!("--nemesis needs an embedded cluster and bank, ycsb or kv");
    }
    let options = args.tpcc.options(&args.workload, 1);
    let partitions_default = args.partitions.unwrap_or(if tpcc {
        options.warehouses.unwrap_or(4).min(4)
    } else {
        4
    });
    let start = async || {
        eprintln!(
            "starting a local cluster: 3 node processes, {partitions_default} partitions, workload {}",
            args.workload
        );
        Local::start(
            3,
            partitions_default,
            args.replication,
            &args.workload,
            options.clone(),
            None,
        )
        .await
    };
    if let Some(nemesis) = args.nemesis {
        let config = drive_config(&args, partitions_default, options.clone());
        let report = nemesis::run(start, config, nemesis).await?;
        if args.json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            nemesis::print(&report);
        }
        return Ok(report.invariants_hold());
    }
    let local = if args.connect.is_empty() {
        Some((start().await?, partitions_default))
    } else {
        None
    };
    let (gateways, tls, partitions) = match &local {
        Some((local, partitions)) => (local.gateways(), local.tls()?, *partitions),
        None => {
            let tls = Tls::from_dir(&args.certs, "client")?;
            let partitions = match args.partitions {
                Some(p) => p,
                None => partitions_of(&args.connect, &tls).await?,
            };
            (args.connect.clone(), tls, partitions)
        }
    };
    let config = drive_config(&args, partitions, options);
    let load_seconds = local.as_ref().and_then(|(l, _)| l.load_seconds);
    let ok = if tpcc {
        let report = run_tpcc(&gateways, &tls, config, load_seconds).await?;
        if args.json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            report.print();
        }
        report.consistent()
    } else {
        let report = drive::drive(gateways, tls, config).await?;
        if args.json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            drive::print(&report);
        }
        report.invariants.is_ok()
    };
    if let Some((local, _)) = local {
        local.stop();
    }
    Ok(ok)
}

/// What to drive: the workload, its options and the load, from the command line.
fn drive_config(args: &BenchArgs, partitions: u32, options: Options) -> DriveConfig {
    DriveConfig {
        workload: args.workload.clone(),
        partitions,
        options,
        clients: args.clients,
        duration: args.duration,
        progress: true,
    }
}

/// The partition count of the cluster at `gateways`, from the nodes' status.
async fn partitions_of(gateways: &[SocketAddr], tls: &Tls) -> Result<u32> {
    let client = Client::connect(gateways.to_vec(), tls.clone()).await?;
    let statuses = client.status().await;
    client.close();
    let partitions: BTreeSet<u32> = statuses
        .iter()
        .filter_map(|(_, s)| s.as_ref().ok())
        .flat_map(|s| s.partitions.iter().map(|(p, _, _)| p.0))
        .collect();
    if partitions.is_empty() {
        bail!("no node at {gateways:?} reported its partitions; pass --partitions");
    }
    Ok(partitions.len() as u32)
}
