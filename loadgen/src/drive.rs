//! The load driver behind `detflow demo` and `detflow bench`: concurrent client sessions
//! drawing logical transactions from a workload's generator, latency histograms, live
//! progress, and the workload's end-to-end check ([`LiveCheck`]) through the client library.
//!
//! A logical transaction is the generator's first call plus the calls
//! [`Workload::follow_up`] makes of it (a reconnaissance read, then the call it prepared;
//! a retry after a `FootprintChanged` abort). Each is counted once, under its final call's
//! procedure, and timed from its first call to its last answer.

// Benchmarks time with the wall clock and seed their generators from it.
#![allow(clippy::disallowed_methods)]

use anyhow::Result;
use detflow_client::{At, CallError, Client, ReadError, Tls};
use detflow_executor::Registry;
use detflow_protocol::{AbortReason, DetRng};
use detflow_workloads::{Answer, Audit, LiveCheck, Options, Request, Workload};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
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
    /// Run the workload's read-only procedures ([`Workload::read_only_procedures`]) on a
    /// snapshot at the latest epoch instead of through the log.
    pub snapshot_reads: bool,
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
    /// Logical transactions answered (committed or rolled back) in each tenth of a second
    /// of the run, from its start: availability over time.
    pub timeline: Vec<u32>,
}

/// The width of a [`Report::timeline`] bucket.
pub const TIMELINE_BUCKET: Duration = Duration::from_millis(100);

impl Report {
    /// The longest stretch of the timeline between `from` and `to` (offsets from the start
    /// of the run) in which nothing was answered, to the bucket's width.
    pub fn longest_gap(&self, from: Duration, to: Duration) -> Duration {
        let bucket = |at: Duration| (at.as_millis() / TIMELINE_BUCKET.as_millis()) as usize;
        let (first, last) = (bucket(from), bucket(to).min(self.timeline.len()));
        let mut longest = 0;
        let mut current = 0;
        for answered in self.timeline.get(first..last).unwrap_or(&[]) {
            current = if *answered == 0 { current + 1 } else { 0 };
            longest = longest.max(current);
        }
        TIMELINE_BUCKET * longest
    }

    /// Transactions answered per second between `from` and `to`.
    pub fn throughput_between(&self, from: Duration, to: Duration) -> f64 {
        let bucket = |at: Duration| (at.as_millis() / TIMELINE_BUCKET.as_millis()) as usize;
        let (first, last) = (bucket(from), bucket(to).min(self.timeline.len()));
        let answered: u64 = self
            .timeline
            .get(first..last)
            .unwrap_or(&[])
            .iter()
            .map(|n| u64::from(*n))
            .sum();
        answered as f64 / (to.saturating_sub(from).as_secs_f64()).max(1e-9)
    }

    /// The lowest throughput of any whole second between `from` and `to`.
    pub fn worst_second_between(&self, from: Duration, to: Duration) -> f64 {
        let mut worst = f64::INFINITY;
        let mut at = from;
        while at + Duration::from_secs(1) <= to {
            worst = worst.min(self.throughput_between(at, at + Duration::from_secs(1)));
            at += Duration::from_secs(1);
        }
        if worst.is_finite() { worst } else { 0.0 }
    }
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
    audit: Audit,
    /// Its answers per [`TIMELINE_BUCKET`] from the run's start.
    timeline: Vec<u32>,
}

/// The workload's end-to-end check, shared by the sessions, which note every acknowledged
/// commit in it; `None` for a workload without one.
type SharedCheck = Arc<Mutex<Option<Box<dyn LiveCheck>>>>;

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
    let check: SharedCheck = Arc::new(Mutex::new(
        detflow_workloads::by_name_with(&config.workload, config.partitions, &config.options)?
            .live_check(),
    ));
    // All sessions share one socket and one connection per gateway, as an application
    // process serving many users would.
    let transport = Client::connect(gateways.clone(), tls.clone()).await?;
    let mut sessions = Vec::new();
    for c in 0..config.clients {
        let client = transport.new_session();
        let workload =
            detflow_workloads::by_name_with(&config.workload, config.partitions, &config.options)?;
        let seed = start.elapsed().as_nanos() as u64 ^ (u64::from(c) << 32);
        sessions.push(tokio::spawn(session(
            start,
            client,
            Generator {
                workload,
                rng: DetRng::new(seed),
                snapshot_reads: config.snapshot_reads,
            },
            done.clone(),
            answered.clone(),
            check.clone(),
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
    let mut audit = Audit::default();
    let mut timeline: Vec<u32> = Vec::new();
    for session in sessions {
        let report = session.await?;
        audit.merge(&report.audit);
        if timeline.len() < report.timeline.len() {
            timeline.resize(report.timeline.len(), 0);
        }
        for (total, n) in timeline.iter_mut().zip(&report.timeline) {
            *total += n;
        }
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
    transport.close();
    // Every session has ended, so nothing else holds the check.
    let check = lock(&check).take();
    let invariants = match check {
        Some(check) => {
            let checker = Client::connect(gateways, tls).await?;
            let verdict = run_check(&checker, check).await;
            checker.close();
            verdict
        }
        None => Ok(format!("no end-to-end check for {}", config.workload)),
    };
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
        timeline,
    })
}

/// Where a session's calls come from, and how it makes the read-only ones.
struct Generator {
    workload: Box<dyn Workload>,
    rng: DetRng,
    /// Read-only procedures go to a snapshot instead of the log.
    snapshot_reads: bool,
}

/// One session: logical transactions, one call at a time, until `done`.
async fn session(
    start: Instant,
    client: Client,
    generator: Generator,
    done: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
    check: SharedCheck,
) -> SessionReport {
    let mut tallies: BTreeMap<&'static str, Tally> = BTreeMap::new();
    let mut timeline: Vec<u32> = Vec::new();
    let Generator {
        mut workload,
        mut rng,
        snapshot_reads,
    } = generator;
    let mut registry = Registry::new();
    let read_only: &[&str] = match snapshot_reads && workload.register(&mut registry).is_ok() {
        true => workload.read_only_procedures(),
        false => &[],
    };
    while !done.load(Ordering::Relaxed) {
        let mut request = workload.next_call(&mut rng);
        let began = Instant::now();
        let (mut calls, mut retries) = (0, 0);
        let ending = loop {
            let result = match read_only.contains(&request.procedure) {
                true => read_on_snapshot(&client, &registry, &request).await,
                false => {
                    client
                        .call_raw(request.procedure, request.args.clone())
                        .await
                }
            };
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
            if let (Ok(output), Some(check)) = (&result, lock(&check).as_mut()) {
                check.note_commit(request.procedure, &request.args, output);
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
        if matches!(ending, Ending::Committed | Ending::RolledBack) {
            let at = (start.elapsed().as_millis() / TIMELINE_BUCKET.as_millis()) as usize;
            if timeline.len() <= at {
                timeline.resize(at + 1, 0);
            }
            timeline[at] += 1;
        }
        answered.fetch_add(1, Ordering::Relaxed);
    }
    SessionReport {
        tallies,
        audit: workload.audit(),
        timeline,
    }
}

/// A read-only call run on a snapshot at the latest epoch, its failures told as a call's.
async fn read_on_snapshot(
    client: &Client,
    registry: &Registry,
    request: &Request,
) -> Result<Vec<u8>, CallError> {
    let snapshot = client.snapshot(At::Latest);
    match snapshot
        .call_raw(registry, request.procedure, &request.args)
        .await
    {
        Ok((_, output)) => Ok(output),
        Err(ReadError::Aborted(reason)) => Err(CallError::Aborted(reason)),
        Err(e) => Err(CallError::Unavailable {
            attempts: 1,
            last: e.to_string(),
        }),
    }
}

/// The shared check, even if a session panicked while holding it: noting a commit leaves
/// it consistent, and the panic itself is reported when the session is joined.
fn lock(check: &SharedCheck) -> MutexGuard<'_, Option<Box<dyn LiveCheck>>> {
    check
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs a workload's end-to-end check: its reads, one at a time, then its verdict. A read
/// that fails for want of a cluster (unavailable, refused) ends the check with the error.
pub async fn run_check(client: &Client, mut check: Box<dyn LiveCheck>) -> Result<String, String> {
    while let Some(request) = check.next_read() {
        let result = client
            .call_raw(request.procedure, request.args.clone())
            .await;
        match &result {
            Ok(output) => check.on_answer(&request, Answer::Committed(output)),
            Err(CallError::Aborted(reason)) => check.on_answer(&request, Answer::Aborted(reason)),
            Err(e) => return Err(format!("checking with {}: {e}", request.procedure)),
        }
    }
    check.verdict()
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
