//! TPC-C against real `detflow` node processes on 127.0.0.1: 3 nodes (each a replica and a
//! gateway), 2 partitions, 2 warehouses scaled down 100 times (1,000 items, 30 customers
//! per district), so that loading takes a moment even in a debug build.
//!
//! - `tpcc_run_is_consistent_and_reconnoitres`: the consistency conditions right after
//!   loading (condition 11 too), a standard-mix drive through the bench's driver, whose
//!   by-last-name Payments and Order-Statuses go through their reconnaissance call, then the
//!   consistency conditions again.
//! - `tpcc_survives_power_loss`: TPC-C's durability test. Sessions drive the standard mix;
//!   every node process is SIGKILLed at once (power loss) and restarted from its data dir;
//!   the sessions carry on. Then one node, which holds partition replicas (each partition
//!   has two), is SIGKILLed alone and kept down while the sessions go on committing on
//!   the other replicas, and restarted. Afterwards every acknowledged New-Order's order row
//!   is there, with its customer and line count, and the consistency conditions hold.
//! - `bench_tpcc_prints_one_json_line`: `detflow bench tpcc --json` starts its own cluster
//!   and prints one line of JSON with the fields `benches/peer/compare.sh` reads.
//!
//! Every test stops by itself (deadlines on every step, a budget on each scenario) and runs
//! alone (two clusters never share the machine's cores). On failure the cluster's folder is
//! kept and the tail of every node's log printed.

// The tests own the clock.
#![allow(clippy::disallowed_methods)]

mod common;

use common::cluster::{
    Cluster, TestCluster, quick_policy, runtime, serial, wait_for_leader, with_budget,
};
use detflow_client::{CallError, Client, RetryPolicy};
use detflow_executor::Procedure;
use detflow_loadgen::drive::{self, DriveConfig};
use detflow_loadgen::tpcc;
use detflow_protocol::DetRng;
use detflow_protocol::codec;
use detflow_workloads::kv::KvRead;
use detflow_workloads::tpcc::procs::{NewOrder, NewOrderArgs, NewOrderOutput, Payment};
use detflow_workloads::tpcc::rows::Order;
use detflow_workloads::tpcc::{Mix, Tpcc, keys};
use detflow_workloads::{Answer, Options, Workload};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const PARTITIONS: u32 = 2;
const WAREHOUSES: u32 = 2;
const SCALE_DOWN: u32 = 100;

fn options() -> Options {
    Options {
        warehouses: Some(WAREHOUSES),
        scale_down: Some(SCALE_DOWN),
        mix: Some(Mix::Standard),
    }
}

/// A 3-node TPC-C cluster, its leader elected.
async fn tpcc_cluster() -> (Cluster, Client) {
    let mut cluster = common::cluster::start_with(3, PARTITIONS, "tpcc", |config| {
        config.warehouses = Some(WAREHOUSES);
        config.scale_down = Some(SCALE_DOWN);
        // The power-loss check reads acknowledged orders back through kv.txn.
        config.access.kv_txn_tables = vec![keys::ORDERS.into()];
    });
    let status = cluster.client(quick_policy()).await;
    let ids = cluster.ids();
    wait_for_leader(&mut cluster, &status, &ids, Duration::from_secs(60)).await;
    (cluster, status)
}

// ---------------------------------------------------------------------------------------
// A run through the bench's driver.
// ---------------------------------------------------------------------------------------

#[test]
fn tpcc_run_is_consistent_and_reconnoitres() {
    let _serial = serial();
    runtime().block_on(async {
        let (mut cluster, status) = tpcc_cluster().await;
        with_budget(Duration::from_secs(120), run_and_check(&mut cluster)).await;
        status.close();
    });
}

async fn run_and_check(cluster: &mut Cluster) {
    let workload = tpcc::workload(PARTITIONS, &options());
    let checker = cluster.client(RetryPolicy::default()).await;
    let initial = tpcc::consistency(&checker, &workload, true).await;
    assert!(initial.is_ok(), "right after loading: {initial:?}");
    checker.close();

    let config = DriveConfig {
        workload: "tpcc".into(),
        partitions: PARTITIONS,
        options: options(),
        clients: 4,
        duration: Duration::from_secs(4),
        progress: false,
        snapshot_reads: false,
    };
    let run = drive::drive(
        cluster.gateways(),
        cluster.client_tls().expect("load the client certificate"),
        config,
    )
    .await
    .expect("drive TPC-C");
    cluster.assert_running();
    let payments = &run.transactions[Payment::NAME];
    assert!(
        payments.committed > 10,
        "too few payments to tell: {payments:?}"
    );
    // Every by-last-name Payment made a reconnaissance call first.
    let by_last = run
        .audit
        .0
        .get(detflow_workloads::tpcc::audit::BY_LAST_NAME)
        .copied()
        .unwrap_or_default();
    assert!(
        by_last.0 > 0,
        "no by-last-name call was counted: {by_last:?}"
    );
    assert!(
        payments.calls > payments.committed + payments.rolled_back,
        "no Payment reconnoitred: {payments:?}"
    );
    assert!(
        !run.transactions.contains_key("tpcc.customer_by_last"),
        "a reconnaissance ended a transaction: {:?}",
        run.transactions.keys().collect::<Vec<_>>()
    );
    for (name, t) in &run.transactions {
        assert_eq!(t.failed, 0, "{name} failed: {t:?}");
    }

    let report = tpcc::TpccReport::new(&workload, SCALE_DOWN, run, None, initial);
    assert!(
        report.consistent(),
        "after the run: {:?}",
        report.consistency
    );
    assert!(report.tpmc > 0.0 && report.throughput > 0.0, "{report:?}");
    assert!(report.transactions.contains_key("new_order"), "{report:?}");
}

// ---------------------------------------------------------------------------------------
// Power loss.
// ---------------------------------------------------------------------------------------

/// Client sessions driving the standard mix.
const SESSIONS: u32 = 4;
/// Logical transactions to wait for before the power fails, and again after it returns.
const PROGRESS: u64 = 150;

/// Patient enough to ride out a restart of the whole cluster, bounded so that a broken
/// cluster fails the test instead of hanging it.
fn load_policy() -> RetryPolicy {
    RetryPolicy {
        attempt_timeout: Duration::from_secs(2),
        backoff: Duration::from_millis(20),
        backoff_max: Duration::from_millis(500),
        attempts_max: 40,
    }
}

#[derive(Default)]
struct Load {
    stop: AtomicBool,
    /// Calls answered (committed or rolled back), all sessions.
    answered: AtomicU64,
}

impl Load {
    async fn wait_answered(&self, cluster: &mut Cluster, more: u64, within: Duration) {
        let from = self.answered.load(Ordering::Relaxed);
        let deadline = Instant::now() + within;
        while self.answered.load(Ordering::Relaxed) < from + more {
            cluster.assert_running();
            assert!(
                Instant::now() < deadline,
                "only {} of {more} more calls answered within {within:?}",
                self.answered.load(Ordering::Relaxed) - from
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// An acknowledged New-Order: (w, d, o_id, c, lines).
type Acked = (u32, u32, u32, u32, u32);

#[derive(Default)]
struct SessionReport {
    acked: Vec<Acked>,
    /// Calls that gave up: executed once or not at all, unknown which.
    unknown: u64,
}

/// One session: logical transactions (with their follow-ups) until told to stop.
async fn session(index: u32, client: Client, mut workload: Tpcc, load: Arc<Load>) -> SessionReport {
    let mut rng = DetRng::new(0x7bcc_0000 + u64::from(index));
    let mut report = SessionReport::default();
    while !load.stop.load(Ordering::Relaxed) {
        let mut request = workload.next_call(&mut rng);
        loop {
            let result = client
                .call_raw(request.procedure, request.args.clone())
                .await;
            let answer = match &result {
                Ok(output) => {
                    if request.procedure == NewOrder::NAME {
                        let args: NewOrderArgs = codec::decode(&request.args).expect("args");
                        let out: NewOrderOutput = codec::decode(output).expect("output");
                        let lines = args.lines.len() as u32;
                        report.acked.push((args.w, args.d, out.o_id, args.c, lines));
                    }
                    Answer::Committed(output)
                }
                Err(CallError::Aborted(reason)) => Answer::Aborted(reason),
                Err(_) => {
                    report.unknown += 1;
                    Answer::Failed
                }
            };
            if !matches!(answer, Answer::Failed) {
                load.answered.fetch_add(1, Ordering::Relaxed);
            }
            match workload.follow_up(&request, answer) {
                Some(next) => request = next,
                None => break,
            }
        }
    }
    client.close();
    report
}

#[test]
fn tpcc_survives_power_loss() {
    let _serial = serial();
    runtime().block_on(async {
        let (mut cluster, status) = tpcc_cluster().await;
        with_budget(Duration::from_secs(240), power_loss(&mut cluster)).await;
        status.close();
    });
}

async fn power_loss(cluster: &mut Cluster) {
    let workload = tpcc::workload(PARTITIONS, &options());
    let load = Arc::new(Load::default());
    let mut sessions = Vec::new();
    for i in 0..SESSIONS {
        let client = cluster.client(load_policy()).await;
        sessions.push(tokio::spawn(session(
            i,
            client,
            workload.clone(),
            load.clone(),
        )));
    }
    load.wait_answered(cluster, PROGRESS, Duration::from_secs(60))
        .await;

    // Power loss: every process dies at once, nothing of theirs runs any more.
    for id in cluster.ids() {
        cluster.kill(id).expect("SIGKILL the node");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for id in cluster.ids() {
        cluster.start_node(id).expect("start the node");
    }
    let status = cluster.client(quick_policy()).await;
    let ids = cluster.ids();
    wait_for_leader(cluster, &status, &ids, Duration::from_secs(60)).await;
    load.wait_answered(cluster, PROGRESS, Duration::from_secs(90))
        .await;

    // One node dies alone mid-run and stays down: every partition has a replica elsewhere,
    // so the sessions keep committing; then it comes back and catches up.
    let victim = *ids.last().expect("nodes");
    cluster.kill(victim).expect("SIGKILL the node");
    eprintln!(
        "SIGKILLed node {victim} (partitions {:?}) alone",
        cluster.at(victim).partitions()
    );
    load.wait_answered(cluster, PROGRESS, Duration::from_secs(60))
        .await;
    cluster.start_node(victim).expect("start the node");
    wait_for_leader(cluster, &status, &ids, Duration::from_secs(60)).await;
    status.close();
    load.wait_answered(cluster, PROGRESS, Duration::from_secs(90))
        .await;
    load.stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    let mut unknown = 0;
    for s in sessions {
        let report = s.await.expect("a session");
        acked.extend(report.acked);
        unknown += report.unknown;
    }
    assert!(!acked.is_empty(), "no New-Order was acknowledged");

    let checker = cluster.client(RetryPolicy::default()).await;
    let missing = missing_orders(&checker, &acked).await;
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged New-Orders are missing or wrong after the power loss (first: {:?})",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)]
    );
    let consistency = tpcc::consistency(&checker, &workload, false).await;
    assert!(consistency.is_ok(), "after the power loss: {consistency:?}");
    checker.close();
    eprintln!(
        "{} acknowledged New-Orders all present after the power loss ({unknown} calls of \
         unknown fate); {}",
        acked.len(),
        consistency.unwrap_or_default()
    );
}

/// The acknowledged New-Orders whose order row is absent or differs (customer, lines).
async fn missing_orders(client: &Client, acked: &[Acked]) -> Vec<(Acked, String)> {
    let mut missing = Vec::new();
    for chunk in acked.chunks(40) {
        let txn = chunk.iter().fold(client.kv(), |txn, &(w, d, o, _, _)| {
            txn.get(keys::order(w, d, o))
        });
        let out = txn.commit().await.expect("read the acknowledged orders");
        for (&order, read) in chunk.iter().zip(out.reads) {
            let (_, _, _, c, lines) = order;
            let problem = match read {
                KvRead::Value(Some(bytes)) => match codec::decode::<Order>(&bytes) {
                    Ok(row) if row.c_id == c && row.ol_cnt == lines => continue,
                    Ok(row) => format!("holds {row:?}"),
                    Err(e) => format!("does not decode: {e}"),
                },
                other => format!("absent ({other:?})"),
            };
            missing.push((order, problem));
        }
    }
    missing
}

// ---------------------------------------------------------------------------------------
// The command line.
// ---------------------------------------------------------------------------------------

#[test]
fn bench_tpcc_prints_one_json_line() {
    let _serial = serial();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_detflow"))
        .args(["bench", "tpcc", "--warehouses", "2", "--scale-down", "100"])
        .args([
            "--duration",
            "2s",
            "--clients",
            "4",
            "--mix",
            "new-order-payment",
        ])
        .arg("--json")
        .env("NO_COLOR", "1")
        .output()
        .expect("run detflow bench tpcc");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}\n{stdout}\n{stderr}", out.status);
    assert!(stderr.contains("loading"), "no loading progress: {stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one line of JSON on stdout: {stdout}");
    let json: serde_json::Value = serde_json::from_str(lines[0]).expect("JSON");
    for field in ["throughput", "tpmc"] {
        assert!(
            json[field].as_f64().is_some_and(|v| v > 0.0),
            "{field}: {json}"
        );
    }
    assert_eq!(json["warehouses"], 2);
    assert_eq!(json["clients"], 4);
    assert_eq!(json["mix"], "new-order-payment");
    assert!(json["consistency"]["Ok"].is_string(), "{json}");
    assert!(json["initial_consistency"]["Ok"].is_string(), "{json}");
    assert!(json["audit"].as_array().is_some_and(|a| !a.is_empty()));
    assert!(json["transactions"]["new_order"]["committed"].as_u64() > Some(0));
}
