//! `detflow bench … --nemesis`: the same load twice, each time on a fresh embedded cluster,
//! first without faults, then while one node at a time is killed, paused or kept down, and
//! how much of the first run's throughput the second keeps (the failover targets of
//! README.md). Each run starts from the same empty state because some workloads slow down
//! as their data grows (kv's lists lengthen with every append): a second run on the first
//! one's cluster would lose throughput to age and blame it on the faults.

// The nemesis times its faults with the wall clock.
#![allow(clippy::disallowed_methods)]

use super::local::Local;
use anyhow::{Context, Result};
use detflow_client::Client;
use detflow_loadgen::drive::{self, DriveConfig, Report};
use std::time::{Duration, Instant};

/// Which faults the nemesis injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Nemesis {
    /// SIGKILL one node, restart it 3 s later; every 8 s, the leader's node every other
    /// time.
    Kill,
    /// SIGSTOP one node for 3 s, then SIGCONT; every 8 s, the leader's node every other
    /// time.
    Pause,
    /// SIGKILL the leader's node 2 s in and keep it down for the rest of the run.
    Down,
}

/// A fault the nemesis injected: which node, and when it started and ended (offsets from
/// the start of the run).
#[derive(Debug, serde::Serialize)]
pub(crate) struct Fault {
    node: u32,
    leader: bool,
    from: Duration,
    to: Duration,
}

/// What a nemesis run measured.
#[derive(Debug, serde::Serialize)]
pub(crate) struct NemesisReport {
    nemesis: String,
    baseline: Report,
    faulted: Report,
    faults: Vec<Fault>,
}

impl NemesisReport {
    /// Whether both runs' end-to-end checks passed.
    pub(crate) fn invariants_hold(&self) -> bool {
        self.baseline.invariants.is_ok() && self.faulted.invariants.is_ok()
    }
}

/// The fault schedule's period and each fault's length.
const PERIOD: Duration = Duration::from_secs(8);
const FAULT: Duration = Duration::from_secs(3);

/// Runs `config` twice, each time on a cluster `start` brings up (and this stops), without
/// faults and then with `nemesis`.
pub(super) async fn run(
    start: impl AsyncFn() -> Result<Local>,
    config: DriveConfig,
    nemesis: Nemesis,
) -> Result<NemesisReport> {
    eprintln!(
        "nemesis {nemesis:?}: first {:?} without faults",
        config.duration
    );
    let local = start().await?;
    let baseline = drive::drive(local.gateways(), local.tls()?, config.clone()).await;
    local.stop();
    let baseline = baseline?;
    eprintln!(
        "nemesis {nemesis:?}: now {:?} with faults, on a fresh cluster",
        config.duration
    );
    let mut local = start().await?;
    let (gateways, tls) = (local.gateways(), local.tls()?);
    let status = Client::connect(gateways.clone(), tls.clone()).await?;
    let duration = config.duration;
    let began = Instant::now();
    let (faulted, faults) = tokio::join!(
        drive::drive(gateways, tls, config),
        inject(&mut local, &status, nemesis, began, duration)
    );
    status.close();
    local.stop();
    let faults = faults?;
    Ok(NemesisReport {
        nemesis: format!("{nemesis:?}").to_lowercase(),
        baseline,
        faulted: faulted?,
        faults,
    })
}

/// The node the cluster's replicas name as leader, if they agree on one.
async fn leader(status: &Client) -> Option<u32> {
    status
        .status()
        .await
        .into_iter()
        .filter_map(|(_, s)| s.ok()?.replica?.1)
        .map(|node| node.0)
        .max()
}

/// Each node's partition replicas' largest lag behind the highest committed epoch any
/// node reports, for the progress lines.
async fn lags(status: &Client) -> String {
    let statuses: Vec<_> = status
        .status()
        .await
        .into_iter()
        .filter_map(|(_, s)| s.ok())
        .collect();
    let committed = statuses
        .iter()
        .filter_map(|s| s.replica.map(|(_, _, commit)| commit.0))
        .max()
        .unwrap_or(0);
    let lags: Vec<String> = statuses
        .iter()
        .map(|s| {
            let lag = s
                .partitions
                .iter()
                .map(|(_, next, _)| committed.saturating_sub(next.0.saturating_sub(1)))
                .max()
                .unwrap_or(0);
            format!("node {}: {lag}", s.node)
        })
        .collect();
    format!("epochs behind {committed}: {}", lags.join(", "))
}

/// Sleeps until `until`, printing the replicas' lag every second.
async fn watch_until(status: &Client, start: Instant, until: Instant) {
    while Instant::now() + Duration::from_secs(1) < until {
        tokio::time::sleep(Duration::from_secs(1)).await;
        eprintln!(
            "[{:>5.1}s] nemesis: {}",
            start.elapsed().as_secs_f64(),
            lags(status).await
        );
    }
    tokio::time::sleep_until(until.into()).await;
}

/// Injects faults until `duration` from `start` has passed; every node runs again at
/// the end.
async fn inject(
    local: &mut Local,
    status: &Client,
    nemesis: Nemesis,
    start: Instant,
    duration: Duration,
) -> Result<Vec<Fault>> {
    let ids = local.cluster().ids();
    let mut faults = Vec::new();
    let mut round = 0u32;
    let mut next = start
        + if nemesis == Nemesis::Down {
            Duration::from_secs(2)
        } else {
            PERIOD / 2
        };
    while next + FAULT < start + duration {
        watch_until(status, start, next).await;
        let leader = leader(status).await;
        // The leader's node every other round; otherwise the next node that is not it.
        let victim = match (round % 2, leader) {
            (0, Some(l)) => l,
            (_, l) => *ids
                .iter()
                .cycle()
                .skip(round as usize)
                .find(|id| Some(**id) != l)
                .context("a node that does not lead")?,
        };
        let from = start.elapsed();
        let cluster = local.cluster();
        let until = match nemesis {
            Nemesis::Down => start + duration,
            _ => Instant::now() + FAULT,
        };
        match nemesis {
            Nemesis::Kill | Nemesis::Down => cluster.kill(victim)?,
            Nemesis::Pause => cluster.pause(victim)?,
        }
        eprintln!(
            "[{:>5.1}s] nemesis: {} node {victim}{}",
            from.as_secs_f64(),
            match nemesis {
                Nemesis::Pause => "paused",
                _ => "killed",
            },
            if Some(victim) == leader {
                " (the leader)"
            } else {
                ""
            }
        );
        watch_until(status, start, until).await;
        let cluster = local.cluster();
        match nemesis {
            Nemesis::Kill | Nemesis::Down => cluster.start_node(victim)?,
            Nemesis::Pause => cluster.resume(victim)?,
        }
        let to = start.elapsed();
        eprintln!("[{:>5.1}s] nemesis: node {victim} back", to.as_secs_f64());
        faults.push(Fault {
            node: victim,
            leader: Some(victim) == leader,
            from,
            to,
        });
        round += 1;
        next += PERIOD;
        if nemesis == Nemesis::Down {
            break;
        }
    }
    Ok(faults)
}

/// Prints the comparison: throughput kept under faults, per fault its window's throughput
/// and longest gap without an answer.
pub(super) fn print(report: &NemesisReport) {
    let base = &report.baseline;
    let run = &report.faulted;
    println!(
        "nemesis {}: without faults {:.0} txn/s; with faults {:.0} txn/s over the whole run ({:.0}%)",
        report.nemesis,
        base.throughput,
        run.throughput,
        100.0 * run.throughput / base.throughput.max(1e-9)
    );
    for fault in &report.faults {
        let during = run.throughput_between(fault.from, fault.to);
        println!(
            "  node {}{} down {:.1}s–{:.1}s: {:.0} txn/s ({:.0}% of the fault-free run), \
             worst second {:.0}%, longest stretch without an answer {} ms",
            fault.node,
            if fault.leader { " (leader)" } else { "" },
            fault.from.as_secs_f64(),
            fault.to.as_secs_f64(),
            during,
            100.0 * during / base.throughput.max(1e-9),
            100.0 * run.worst_second_between(fault.from, fault.to) / base.throughput.max(1e-9),
            run.longest_gap(fault.from, fault.to).as_millis()
        );
    }
    let all = Duration::from_secs_f64(run.seconds);
    // The noise floor: a fault-free run's own worst second, against its own mean.
    let base_all = Duration::from_secs_f64(base.seconds);
    println!(
        "  without faults: worst second {:.0}%, longest stretch without an answer {} ms",
        100.0 * base.worst_second_between(Duration::ZERO, base_all) / base.throughput.max(1e-9),
        base.longest_gap(Duration::ZERO, base_all).as_millis()
    );
    println!(
        "  longest stretch without an answer over the whole run: {} ms; invariants: {}",
        run.longest_gap(Duration::ZERO, all).as_millis(),
        match &run.invariants {
            Ok(s) => s.clone(),
            Err(e) => format!("FAILED: {e}"),
        }
    );
}
