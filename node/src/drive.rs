//! The load driver behind `detflow demo` and `detflow bench`: concurrent client sessions
//! drawing calls from a workload's generator, latency histograms, live progress, and an
//! end-to-end invariant check through the client library.

// Benchmarks time with the wall clock and seed their generators from it.
#![allow(clippy::disallowed_methods)]

use anyhow::Result;
use detflow_client::{CallError, Client, Tls};
use detflow_executor::Procedure;
use detflow_protocol::{DetRng, codec};
use detflow_workloads::{bank, ycsb};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What to drive.
#[derive(Clone, Debug)]
pub struct DriveConfig {
    /// Workload name.
    pub workload: String,
    /// Partitions of the cluster (the generator needs them for YCSB).
    pub partitions: u32,
    /// Concurrent sessions, each with one call in flight.
    pub clients: u32,
    /// How long to drive.
    pub duration: Duration,
    /// Print progress every second.
    pub progress: bool,
}

/// Per-procedure outcome counts and latencies.
#[derive(Debug, Serialize)]
pub struct ProcedureReport {
    /// Calls that committed.
    pub committed: u64,
    /// Calls that aborted deterministically.
    pub aborted: u64,
    /// Calls that failed otherwise (unavailable, rejected).
    pub failed: u64,
    /// Latency percentiles in microseconds: p50, p90, p99, max.
    pub latency_us: [u64; 4],
}

/// The result of a drive.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Workload name.
    pub workload: String,
    /// Sessions.
    pub clients: u32,
    /// Seconds driven.
    pub seconds: f64,
    /// Calls answered per second (committed or aborted).
    pub throughput: f64,
    /// Committed calls per second.
    pub commits_per_second: f64,
    /// Latency percentiles over all calls, microseconds: p50, p90, p99, max.
    pub latency_us: [u64; 4],
    /// Per procedure.
    pub procedures: BTreeMap<String, ProcedureReport>,
    /// The end-to-end invariant check, or why it failed.
    pub invariants: Result<String, String>,
}

struct Tally {
    histogram: Histogram<u64>,
    committed: u64,
    aborted: u64,
    failed: u64,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            histogram: Histogram::new_with_bounds(1, 600_000_000, 3)
                .unwrap_or_else(|e| panic!("valid histogram bounds: {e}")),
            committed: 0,
            aborted: 0,
            failed: 0,
        }
    }
}

/// What the sessions learned that the invariant check needs.
#[derive(Default)]
struct Ledger {
    deposits_cents: i64,
    increments: BTreeMap<u64, u64>,
}

fn percentiles(h: &Histogram<u64>) -> [u64; 4] {
    [
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.9),
        h.value_at_quantile(0.99),
        h.max(),
    ]
}

/// Drives `config.workload` against `gateways` and checks its invariants at the end.
pub async fn drive(gateways: Vec<SocketAddr>, tls: Tls, config: DriveConfig) -> Result<Report> {
    let done = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut sessions = Vec::new();
    for c in 0..config.clients {
        let client = Client::connect(gateways.clone(), tls.clone()).await?;
        let mut workload = detflow_workloads::by_name(&config.workload, config.partitions)?;
        let done = done.clone();
        let answered = answered.clone();
        let seed = start.elapsed().as_nanos() as u64 ^ (u64::from(c) << 32);
        sessions.push(tokio::spawn(async move {
            let mut rng = DetRng::new(seed);
            let mut tallies: BTreeMap<&'static str, Tally> = BTreeMap::new();
            let mut ledger = Ledger::default();
            while !done.load(Ordering::Relaxed) {
                let request = workload.next_call(&mut rng);
                let began = Instant::now();
                let result = client
                    .call_raw(request.procedure, request.args.clone())
                    .await;
                let micros = began.elapsed().as_micros() as u64;
                let tally = tallies.entry(request.procedure).or_insert_with(Tally::new);
                let _ = tally.histogram.record(micros.max(1));
                match result {
                    Ok(_) => {
                        tally.committed += 1;
                        note_commit(&mut ledger, request.procedure, &request.args);
                    }
                    Err(CallError::Aborted(_)) => tally.aborted += 1,
                    Err(_) => tally.failed += 1,
                }
                answered.fetch_add(1, Ordering::Relaxed);
            }
            client.close();
            (tallies, ledger)
        }));
    }
    let mut last = 0;
    while start.elapsed() < config.duration {
        tokio::time::sleep(Duration::from_secs(1).min(config.duration)).await;
        if config.progress {
            let now = answered.load(Ordering::Relaxed);
            eprintln!(
                "[{:>3.0}s] {now} calls answered, {} txn/s",
                start.elapsed().as_secs_f64(),
                now - last
            );
            last = now;
        }
    }
    done.store(true, Ordering::Relaxed);
    let seconds = start.elapsed().as_secs_f64();
    let mut all = Tally::new();
    let mut procedures: BTreeMap<String, Tally> = BTreeMap::new();
    let mut ledger = Ledger::default();
    for session in sessions {
        let (tallies, l) = session.await?;
        ledger.deposits_cents += l.deposits_cents;
        for (k, v) in l.increments {
            *ledger.increments.entry(k).or_default() += v;
        }
        for (name, t) in tallies {
            let _ = all.histogram.add(&t.histogram);
            all.committed += t.committed;
            all.aborted += t.aborted;
            all.failed += t.failed;
            let p = procedures.entry(name.to_owned()).or_insert_with(Tally::new);
            let _ = p.histogram.add(&t.histogram);
            p.committed += t.committed;
            p.aborted += t.aborted;
            p.failed += t.failed;
        }
    }
    let checker = Client::connect(gateways, tls).await?;
    let invariants = check(&checker, &config, &ledger).await;
    checker.close();
    Ok(Report {
        workload: config.workload.clone(),
        clients: config.clients,
        seconds,
        throughput: (all.committed + all.aborted) as f64 / seconds,
        commits_per_second: all.committed as f64 / seconds,
        latency_us: percentiles(&all.histogram),
        procedures: procedures
            .into_iter()
            .map(|(name, t)| {
                let report = ProcedureReport {
                    committed: t.committed,
                    aborted: t.aborted,
                    failed: t.failed,
                    latency_us: percentiles(&t.histogram),
                };
                (name, report)
            })
            .collect(),
        invariants,
    })
}

fn note_commit(ledger: &mut Ledger, procedure: &str, args: &[u8]) {
    match procedure {
        bank::Deposit::NAME => {
            if let Ok(a) = codec::decode::<bank::DepositArgs>(args) {
                ledger.deposits_cents += a.amount_cents;
            }
        }
        ycsb::Rmw::NAME => {
            if let Ok(a) = codec::decode::<ycsb::RmwArgs>(args) {
                for k in a.keys {
                    *ledger.increments.entry(k).or_default() += 1;
                }
            }
        }
        _ => {}
    }
}

/// Reads the state back through the client library and checks the workload's invariants.
async fn check(client: &Client, config: &DriveConfig, ledger: &Ledger) -> Result<String, String> {
    match config.workload.as_str() {
        "bank" => {
            let defaults = bank::BankConfig::default();
            let mut total: i64 = 0;
            for account in 0..defaults.accounts {
                let out = client
                    .call::<bank::Balance>(&bank::BalanceArgs { account })
                    .await
                    .map_err(|e| format!("reading account {account}: {e}"))?;
                if out.balance_cents < 0 {
                    return Err(format!(
                        "account {account} is negative: {}",
                        out.balance_cents
                    ));
                }
                total += out.balance_cents;
            }
            let expected =
                defaults.accounts as i64 * defaults.initial_balance_cents + ledger.deposits_cents;
            if total != expected {
                return Err(format!(
                    "total is {total} cents, expected {expected} (initial + acknowledged deposits)"
                ));
            }
            Ok(format!(
                "total conserved: {total} cents over {} accounts, none negative",
                defaults.accounts
            ))
        }
        "ycsb" => {
            let keys = ycsb::YcsbConfig::default().keys;
            let mut mismatches = 0;
            let ids: Vec<u64> = (0..keys).collect();
            for chunk in ids.chunks(50) {
                let out = client
                    .call::<ycsb::Read>(&ycsb::ReadArgs {
                        keys: chunk.to_vec(),
                    })
                    .await
                    .map_err(|e| format!("reading records: {e}"))?;
                for (k, counter) in chunk.iter().zip(out.counters) {
                    if counter != ledger.increments.get(k).copied().unwrap_or(0) {
                        mismatches += 1;
                    }
                }
            }
            if mismatches > 0 {
                return Err(format!(
                    "{mismatches} records differ from the acknowledged read-modify-writes"
                ));
            }
            Ok(format!(
                "every one of {keys} counters equals its acknowledged read-modify-writes"
            ))
        }
        other => Ok(format!("no end-to-end check for {other}")),
    }
}

/// Prints a report for people.
pub fn print(report: &Report) {
    let [p50, p90, p99, max] = report.latency_us;
    println!(
        "{}: {} clients, {:.1} s, {:.0} txn/s ({:.0} commits/s)",
        report.workload,
        report.clients,
        report.seconds,
        report.throughput,
        report.commits_per_second
    );
    println!(
        "latency: p50 {} p90 {} p99 {} max {}",
        ms(p50),
        ms(p90),
        ms(p99),
        ms(max)
    );
    for (name, p) in &report.procedures {
        let [p50, _, p99, max] = p.latency_us;
        println!(
            "  {name:<16} committed {:>8}  aborted {:>6}  failed {:>4}  p50 {}  p99 {}  max {}",
            p.committed,
            p.aborted,
            p.failed,
            ms(p50),
            ms(p99),
            ms(max)
        );
    }
    match &report.invariants {
        Ok(s) => println!("invariants hold: {s}"),
        Err(s) => println!("INVARIANTS BROKEN: {s}"),
    }
}

fn ms(us: u64) -> String {
    format!("{:.1}ms", us as f64 / 1000.0)
}
