//! `detflow bench`: throughput and latency of an embedded local cluster or an existing
//! one, as text or JSON.

use super::cpu::CpuSample;
use super::footprint::Watcher;
use super::local::{Local, run_tpcc};
use super::nemesis;
use crate::cli::BenchArgs;
use anyhow::{Result, bail};
use detflow_client::{Client, Tls};
use detflow_loadgen::drive::{self, DriveConfig};
use detflow_workloads::Options;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;

/// Runs the benchmark; `Ok(false)` when the invariant (or consistency) check failed.
pub(crate) async fn run(args: BenchArgs) -> Result<bool> {
    let tpcc = args.workload == "tpcc";
    if args.nemesis.is_some() && args.plot.is_some() {
        bail!("--plot draws one run; --nemesis makes several");
    }
    if args.nemesis.is_some() && (tpcc || !args.connect.is_empty()) {
        bail!("--nemesis needs an embedded cluster and bank, ycsb or kv");
    }
    let checkpoint_flags = args.checkpoint_every.is_some() || args.checkpoint_mib_per_sec.is_some();
    if checkpoint_flags && !args.connect.is_empty() {
        bail!(
            "--checkpoint-every and --checkpoint-mib-per-sec configure the embedded cluster; \
             a cluster given with --connect has its own node configurations"
        );
    }
    let options = args.tpcc.options(&args.workload, 1);
    let partitions_default = args.partitions.unwrap_or(if tpcc {
        options.warehouses.unwrap_or(4).min(8)
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
            checkpoint_settings(&args),
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
    let pids = local.as_ref().map(|(l, _)| l.pids()).unwrap_or_default();
    let cpu_before = CpuSample::take(&pids);
    // Memory and disk of each node, sampled eight times over the run (at least every 5 s).
    let footprint = local.as_ref().map(|(l, _)| {
        let every = (args.duration / 8).max(std::time::Duration::from_secs(5));
        Watcher::start(l.watched(), every)
    });
    let title = format!(
        "detflow bench {}: {} clients, {} partitions",
        args.workload, args.clients, partitions
    );
    let ok = if tpcc {
        let report = run_tpcc(&gateways, &tls, config, load_seconds).await?;
        if args.json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            report.print();
        }
        plot(args.plot.as_deref(), &report.timeline, &title)?;
        report.consistent()
    } else {
        let report = drive::drive(gateways, tls, config).await?;
        if args.json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            drive::print(&report);
        }
        plot(args.plot.as_deref(), &report.timeline, &title)?;
        report.invariants.is_ok()
    };
    // Whether the driver or a node limited the run (only the driver's own share is known
    // for a cluster elsewhere).
    let cpu = CpuSample::take(&pids).since(&cpu_before);
    let mut lines = vec![cpu];
    lines.extend(footprint.map(Watcher::finish).unwrap_or_default());
    for line in lines {
        match args.json {
            true => eprintln!("{line}"),
            false => println!("{line}"),
        }
    }
    if let Some((local, _)) = local {
        local.stop();
    }
    Ok(ok)
}

/// The embedded cluster's checkpoint settings that the command line changes.
fn checkpoint_settings(args: &BenchArgs) -> impl Fn(&mut crate::config::Config) + 'static {
    let (every, pace) = (args.checkpoint_every, args.checkpoint_mib_per_sec);
    move |config| {
        if let Some(every) = every {
            config.checkpoint_every_epochs = every;
        }
        if let Some(pace) = pace {
            config.checkpoint_mib_per_sec = pace;
        }
    }
}

/// Writes the throughput-over-time plot if `--plot` asked for one.
fn plot(path: Option<&Path>, timeline: &[u32], title: &str) -> Result<()> {
    if let Some(path) = path {
        detflow_loadgen::plot::throughput_svg(timeline, title, path)?;
        eprintln!("throughput over time: {}", path.display());
    }
    Ok(())
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
        snapshot_reads: args.tpcc.snapshot_reads,
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
