//! The load driver behind `detflow demo` and `detflow bench`: concurrent client sessions
//! drawing logical transactions from a workload's generator, latency histograms, live
//! progress, and an end-to-end invariant check through the client library.
//!
//! A logical transaction is the generator's first call plus the calls
//! [`Workload::follow_up`] makes of it (a reconnaissance read, then the call it prepared;
//! a retry after a `FootprintChanged` abort). Each is counted once, under its final call's
//! procedure, and timed from its first call to its last answer.

// Benchmarks time with the wall clock and seed their generators from it.
#![allow(clippy::disallowed_methods)]

use anyhow::Result;
use detflow_client::{CallError, Client, Tls};
use detflow_executor::Procedure;
use detflow_protocol::{AbortReason, DetRng, codec};
use detflow_workloads::{Answer, Audit, Options, Workload, bank, ycsb};
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
    /// Sizes and mix (TPC-C); they must match the cluster's.
    pub options: Options,
    /// Concurrent sessions, each with one call in flight.
    pub clients: u32,
    /// How long to drive.
    pub duration: Duration,
    /// Print progress every second.
    pub progress: bool,
}

/// Outcome counts and latencies of one type of logical transaction.
#[derive(Debug, Serialize)]
pub struct TxnReport {
    /// Transactions whose final call committed.
    pub committed: u64,
    /// Transactions the procedure itself rolled back (a user abort, e.g. TPC-C's
    /// New-Orders with an unused item): answered, and expected.
    pub rolled_back: u64,
    /// Transactions whose final call aborted for another reason (e.g. a footprint that
    /// kept changing after every retry).
    pub aborted: u64,
    /// Transactions whose final call failed (unavailable, rejected).
    pub failed: u64,
    /// Calls made again after an abort (TPC-C: reconnaissance after `FootprintChanged`).
    pub retries: u64,
    /// Calls made, follow-ups included.
    pub calls: u64,
    /// Latency percentiles of the whole transaction in microseconds: p50, p90, p99, max.
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
    /// Logical transactions answered per second (committed or rolled back).
    pub throughput: f64,
    /// Committed logical transactions per second.
    pub commits_per_second: f64,
    /// Calls per second, follow-ups included.
    pub calls_per_second: f64,
    /// Latency percentiles over all transactions, microseconds: p50, p90, p99, max.
    pub latency_us: [u64; 4],
    /// Per type of logical transaction: its final call's procedure.
    pub transactions: BTreeMap<String, TxnReport>,
    /// What the sessions' generators measured, added up.
    #[serde(skip)]
    pub audit: Audit,
    /// The end-to-end invariant check, or why it failed.
    pub invariants: Result<String, String>,
}

struct Tally {
    histogram: Histogram<u64>,
    committed: u64,
    rolled_back: u64,
    aborted: u64,
    failed: u64,
    retries: u64,
    calls: u64,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            histogram: Histogram::new_with_bounds(1, 600_000_000, 3)
                .unwrap_or_else(|e| panic!("valid histogram bounds: {e}")),
            committed: 0,
            rolled_back: 0,
            aborted: 0,
            failed: 0,
            retries: 0,
            calls: 0,
        }
    }

    fn add(&mut self, other: &Tally) {
        let _ = self.histogram.add(&other.histogram);
        self.committed += other.committed;
        self.rolled_back += other.rolled_back;
        self.aborted += other.aborted;
        self.failed += other.failed;
        self.retries += other.retries;
        self.calls += other.calls;
    }

    fn report(&self) -> TxnReport {
        TxnReport {
            committed: self.committed,
            rolled_back: self.rolled_back,
            aborted: self.aborted,
            failed: self.failed,
            retries: self.retries,
            calls: self.calls,
            latency_us: percentiles(&self.histogram),
        }
    }
}

/// How a call, and so a logical transaction, ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ending {
    Committed,
    RolledBack,
    Aborted,
    Failed,
}

/// What one session measured.
struct SessionReport {
    tallies: BTreeMap<&'static str, Tally>,
    ledger: Ledger,
    audit: Audit,
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
        let workload =
            detflow_workloads::by_name_with(&config.workload, config.partitions, &config.options)?;
        let seed = start.elapsed().as_nanos() as u64 ^ (u64::from(c) << 32);
        sessions.push(tokio::spawn(session(
            client,
            workload,
            DetRng::new(seed),
            done.clone(),
            answered.clone(),
        )));
    }
    let mut last = 0;
    while start.elapsed() < config.duration {
        let left = config.duration.saturating_sub(start.elapsed());
        tokio::time::sleep(Duration::from_secs(1).min(left)).await;
        if config.progress {
            let now = answered.load(Ordering::Relaxed);
            eprintln!(
                "[{:>3.0}s] {now} transactions answered, {} txn/s",
                start.elapsed().as_secs_f64(),
                now - last
            );
            last = now;
        }
    }
    done.store(true, Ordering::Relaxed);
    let mut all = Tally::new();
    let mut transactions: BTreeMap<String, Tally> = BTreeMap::new();
    let mut ledger = Ledger::default();
    let mut audit = Audit::default();
    for session in sessions {
        let report = session.await?;
        ledger.deposits_cents += report.ledger.deposits_cents;
        for (k, v) in report.ledger.increments {
            *ledger.increments.entry(k).or_default() += v;
        }
        audit.merge(&report.audit);
        for (name, t) in report.tallies {
            all.add(&t);
            transactions
                .entry(name.to_owned())
                .or_insert_with(Tally::new)
                .add(&t);
        }
    }
    // Sessions finish the transaction they are in, so the run lasts until the last one.
    let seconds = start.elapsed().as_secs_f64();
    let checker = Client::connect(gateways, tls).await?;
    let invariants = check(&checker, &config, &ledger).await;
    checker.close();
    Ok(Report {
        workload: config.workload.clone(),
        clients: config.clients,
        seconds,
        throughput: (all.committed + all.rolled_back) as f64 / seconds,
        commits_per_second: all.committed as f64 / seconds,
        calls_per_second: all.calls as f64 / seconds,
        latency_us: percentiles(&all.histogram),
        transactions: transactions
            .into_iter()
            .map(|(name, t)| (name, t.report()))
            .collect(),
        audit,
        invariants,
    })
}

/// One session: logical transactions, one call at a time, until `done`.
async fn session(
    client: Client,
    mut workload: Box<dyn Workload>,
    mut rng: DetRng,
    done: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
) -> SessionReport {
    let mut tallies: BTreeMap<&'static str, Tally> = BTreeMap::new();
    let mut ledger = Ledger::default();
    while !done.load(Ordering::Relaxed) {
        let mut request = workload.next_call(&mut rng);
        let began = Instant::now();
        let (mut calls, mut retries) = (0, 0);
        let ending = loop {
            let result = client
                .call_raw(request.procedure, request.args.clone())
                .await;
            calls += 1;
            let (ending, answer) = match &result {
                Ok(output) => (Ending::Committed, Answer::Committed(output)),
                Err(CallError::Aborted(reason)) => {
                    let ending = match reason {
                        AbortReason::User(_) => Ending::RolledBack,
                        _ => Ending::Aborted,
                    };
                    (ending, Answer::Aborted(reason))
                }
                Err(_) => (Ending::Failed, Answer::Failed),
            };
            if ending == Ending::Committed {
                note_commit(&mut ledger, request.procedure, &request.args);
            }
            match workload.follow_up(&request, answer) {
                Some(next) => {
                    retries += u64::from(ending != Ending::Committed);
                    request = next;
                }
                None => break ending,
            }
        };
        let micros = began.elapsed().as_micros() as u64;
        let tally = tallies.entry(request.procedure).or_insert_with(Tally::new);
        let _ = tally.histogram.record(micros.max(1));
        tally.calls += calls;
        tally.retries += retries;
        match ending {
            Ending::Committed => tally.committed += 1,
            Ending::RolledBack => tally.rolled_back += 1,
            Ending::Aborted => tally.aborted += 1,
            Ending::Failed => tally.failed += 1,
        }
        answered.fetch_add(1, Ordering::Relaxed);
    }
    client.close();
    SessionReport {
        tallies,
        ledger,
        audit: workload.audit(),
    }
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
        "tpcc" => {
            let tpcc = crate::tpcc::workload(config.partitions, &config.options);
            crate::tpcc::consistency(client, &tpcc, false).await
        }
        other => Ok(format!("no end-to-end check for {other}")),
    }
}

/// Prints a report for people.
pub fn print(report: &Report) {
    println!(
        "{}: {} clients, {:.1} s, {:.0} txn/s ({:.0} commits/s, {:.0} calls/s)",
        report.workload,
        report.clients,
        report.seconds,
        report.throughput,
        report.commits_per_second,
        report.calls_per_second,
    );
    print_latency_and_types(report);
    match &report.invariants {
        Ok(s) => println!("invariants hold: {s}"),
        Err(s) => println!("INVARIANTS BROKEN: {s}"),
    }
}

/// Prints the overall latency and one line per type of transaction.
fn print_latency_and_types(report: &Report) {
    print_latency(report.latency_us);
    let prefix = format!("{}.", report.workload);
    for (name, t) in &report.transactions {
        print_type(name.strip_prefix(&prefix).unwrap_or(name), t);
    }
}

/// Prints latency percentiles: p50, p90, p99, max in microseconds.
pub fn print_latency([p50, p90, p99, max]: [u64; 4]) {
    println!(
        "latency: p50 {} p90 {} p99 {} max {}",
        ms(p50),
        ms(p90),
        ms(p99),
        ms(max)
    );
}

/// Prints one type of transaction's line.
pub fn print_type(name: &str, t: &TxnReport) {
    let [p50, p90, p99, max] = t.latency_us;
    println!(
        "  {name:<14} committed {:>8}  rolled back {:>5}  aborted {:>4}  failed {:>4}  retries {:>4}  p50 {}  p90 {}  p99 {}  max {}",
        t.committed,
        t.rolled_back,
        t.aborted,
        t.failed,
        t.retries,
        ms(p50),
        ms(p90),
        ms(p99),
        ms(max)
    );
}

/// Microseconds as milliseconds with one decimal.
pub fn ms(us: u64) -> String {
    format!("{:.1}ms", us as f64 / 1000.0)
}
