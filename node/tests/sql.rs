//! SQL over the global state, against real `detflow` node processes on 127.0.0.1.
//!
//! - `tpcc_conditions_in_sql_agree_with_tpcc_check_under_load`: a 3-node TPC-C cluster (2
//!   partitions, 2 warehouses scaled down 100 times) runs the standard mix; meanwhile, at
//!   one epoch after another, every consistency condition written as SQL returns no row,
//!   `tpcc.check` run read-only at the same epoch finds no problem, and both count the
//!   same rows. The CH-benCHmark queries run; `detflow sql` prints JSON and CSV, refuses
//!   a bad query with its reason, and an epoch out of retention with the oldest readable.
//! - `a_node_restart_during_sql_scans_never_yields_a_mixed_cut`: on a 3-node bank cluster
//!   under transfers, queries summing every balance in one-row chunks run back to back
//!   while a node is killed and restarted; each answers the bank's total or fails with a
//!   clear error, and some were in flight at the kill.
//!
//! Every test stops by itself and runs alone (two clusters never share the machine's cores).

// The tests own the clock.
#![allow(clippy::disallowed_methods)]

mod common;

use common::cluster::{
    Cluster, TestCluster, quick_policy, runtime, serial, wait_for_leader, with_budget,
};
use detflow_client::{At, RetryPolicy};
use detflow_loadgen::drive::{self, DriveConfig};
use detflow_loadgen::tpcc;
use detflow_query::datafusion::arrow::array::{Array, AsArray};
use detflow_query::datafusion::arrow::datatypes::Int64Type;
use detflow_query::{Answer, QueryError, Sql};
use detflow_workloads::Options;
use detflow_workloads::bank::{self, Transfer, TransferArgs};
use detflow_workloads::tpcc::Mix;
use detflow_workloads::tpcc::check::{Check, CheckArgs, combine};
use std::process::Command;
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

fn load_policy() -> RetryPolicy {
    RetryPolicy {
        attempt_timeout: Duration::from_secs(2),
        backoff: Duration::from_millis(20),
        backoff_max: Duration::from_millis(500),
        attempts_max: 40,
    }
}

/// The single Int64 of a one-row, one-column answer.
fn scalar(answer: &Answer) -> i64 {
    let batch = answer
        .batches
        .iter()
        .find(|b| b.num_rows() > 0)
        .expect("one row");
    let column = batch.column(0).as_primitive::<Int64Type>();
    assert!(!column.is_null(0), "a NULL answer");
    column.value(0)
}

#[test]
fn tpcc_conditions_in_sql_agree_with_tpcc_check_under_load() {
    let _serial = serial();
    runtime().block_on(async {
        let mut cluster = common::cluster::start_with(3, PARTITIONS, "tpcc", |config| {
            config.warehouses = Some(WAREHOUSES);
            config.scale_down = Some(SCALE_DOWN);
        });
        let status = cluster.client(quick_policy()).await;
        let ids = cluster.ids();
        wait_for_leader(&mut cluster, &status, &ids, Duration::from_secs(60)).await;
        status.close();
        with_budget(
            Duration::from_secs(180),
            conditions_under_load(&mut cluster),
        )
        .await;
    });
}

async fn conditions_under_load(cluster: &mut Cluster) {
    let client = Arc::new(cluster.client(load_policy()).await);
    let sql = Sql::connect(client.clone()).await.expect("list the tables");
    let names: Vec<&str> = sql.tables().iter().map(|t| t.name()).collect();
    for table in ["order_line", "customer", "history", "item", "stock"] {
        assert!(names.contains(&table), "{table} is not listed: {names:?}");
    }
    let config = DriveConfig {
        workload: "tpcc".into(),
        partitions: PARTITIONS,
        options: options(),
        clients: 4,
        duration: Duration::from_secs(12),
        progress: false,
        // Reconnaissance, Order-Status and Stock-Level read snapshots while SQL does.
        snapshot_reads: true,
    };
    let load = tokio::spawn(drive::drive(
        cluster.gateways(),
        cluster.client_tls().expect("load the client certificate"),
        config,
    ));
    let workload = tpcc::workload(PARTITIONS, &options());
    let shape = workload.config().shape;
    let mut rounds = 0;
    let mut epochs = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(10) || rounds < 2 {
        // One epoch for the whole round: SQL and the procedure read the same cut.
        let (epoch, _) = client
            .snapshot(At::Latest)
            .resolve()
            .await
            .expect("resolve the latest epoch");
        let at = At::Epoch(epoch);
        for condition in detflow_query::tpcc::CONDITIONS {
            let answer = sql.query(condition.sql, at).await.unwrap_or_else(|e| {
                panic!("condition {} ({}): {e}", condition.number, condition.states)
            });
            assert_eq!(answer.epoch, epoch);
            assert_eq!(
                answer.rows(),
                0,
                "condition {} ({}) is violated at epoch {}:\n{}",
                condition.number,
                condition.states,
                epoch.0,
                answer
                    .to_text(detflow_query::Format::Table)
                    .unwrap_or_default()
            );
        }
        let mut checks = Vec::new();
        for w in 1..=WAREHOUSES {
            let args = CheckArgs {
                w,
                shape,
                initial: false,
            };
            let (read, check) = client
                .snapshot(at)
                .call::<Check>(&args)
                .await
                .expect("tpcc.check on the snapshot");
            assert_eq!(read, epoch);
            checks.push(check);
        }
        let summary = combine(&checks);
        assert!(
            summary.is_ok(),
            "tpcc.check at epoch {}: {summary:?}",
            epoch.0
        );
        // The check counts the orders, new orders, lines, customers and history it read.
        let counted: u64 = checks.iter().map(|c| c.rows).sum();
        let rows = sql
            .query(
                "SELECT (SELECT count(*) FROM orders) + (SELECT count(*) FROM new_order)
                      + (SELECT count(*) FROM order_line) + (SELECT count(*) FROM customer)
                      + (SELECT count(*) FROM history)",
                at,
            )
            .await
            .expect("count the rows");
        assert_eq!(
            scalar(&rows) as u64,
            counted,
            "SQL and tpcc.check read different rows at epoch {}",
            epoch.0
        );
        epochs.push(epoch.0);
        rounds += 1;
    }
    let run = load.await.expect("the driver").expect("drive TPC-C");
    let committed: u64 = run.transactions.values().map(|t| t.committed).sum();
    assert!(committed > 50, "too little load to tell: {committed}");
    assert!(
        epochs.windows(2).any(|w| w[1] > w[0]),
        "every round read the same epoch: {epochs:?}"
    );
    println!(
        "{rounds} rounds of SQL conditions and tpcc.check agreed at epochs {epochs:?} under {committed} transactions"
    );

    // The analytical queries plan and run; Q1 groups the delivered lines by number.
    for query in detflow_query::ch::QUERIES {
        let answer = sql
            .query(query.detflow, At::Latest)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", query.name));
        println!(
            "{}: {} rows at epoch {}",
            query.name,
            answer.rows(),
            answer.epoch.0
        );
    }
    let q1 = sql
        .query(detflow_query::ch::QUERIES[0].detflow, At::Latest)
        .await
        .expect("Q1");
    assert!(q1.rows() >= 5, "Q1 found no delivered lines: {q1:?}");

    // Errors that say what to do.
    let bad = sql.query("SELECT nope FROM order_line", At::Latest).await;
    assert!(
        matches!(&bad, Err(QueryError::Plan(e)) if e.contains("nope")),
        "{bad:?}"
    );
    let missing = sql.query("SELECT * FROM nowhere", At::Latest).await;
    assert!(
        matches!(&missing, Err(QueryError::Plan(e)) if e.contains("nowhere")),
        "{missing:?}"
    );
    cli(cluster).await;
    client.close();
}

/// `detflow sql` as a user runs it.
async fn cli(cluster: &Cluster) {
    let connect = cluster
        .gateways()
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let certs = cluster.certs().client_dir.clone();
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_detflow"))
            .arg("sql")
            .args(args)
            .args(["--connect", &connect, "--certs"])
            .arg(&certs)
            .output()
            .expect("run detflow sql");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = run(&[
        "SELECT w_id, count(*) AS districts FROM district GROUP BY w_id ORDER BY w_id",
        "--format",
        "json",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let rows: serde_json::Value = serde_json::from_str(&out).expect("JSON on stdout");
    assert_eq!(
        rows,
        serde_json::json!([{"w_id": 1, "districts": 10}, {"w_id": 2, "districts": 10}])
    );
    assert!(err.contains("rows at epoch"), "{err}");

    let (code, out, err) = run(&[
        "SELECT i_id, name FROM item WHERE i_id <= 3",
        "--format",
        "csv",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.first(), Some(&"i_id,name"), "{out}");
    assert_eq!(lines.len(), 4, "{out}");

    let (code, _, err) = run(&["SELEC 1"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("not valid"), "{err}");

    let (code, _, err) = run(&["SELECT count(*) FROM orders", "--at", "1"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("oldest readable epoch"), "{err}");
}

#[test]
fn a_node_restart_during_sql_scans_never_yields_a_mixed_cut() {
    let _serial = serial();
    runtime().block_on(async {
        let mut cluster = common::cluster::start(3, 4, "bank");
        with_budget(Duration::from_secs(120), restart_during_sql(&mut cluster)).await;
    });
}

async fn restart_during_sql(cluster: &mut Cluster) {
    const ACCOUNTS: u64 = 64;
    const INITIAL_CENTS: i64 = 10_000;
    let all = cluster.ids();
    let status = cluster.client(quick_policy()).await;
    wait_for_leader(cluster, &status, &all, Duration::from_secs(30)).await;
    let client = cluster.client(load_policy()).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = tokio::task::JoinSet::new();
    for s in 0..4u64 {
        let session = client.new_session();
        let stop = stop.clone();
        load.spawn(async move {
            let mut i = s;
            while !stop.load(Ordering::Relaxed) {
                i = i
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let args = TransferArgs {
                    from: (i >> 33) % ACCOUNTS,
                    to: (i >> 17) % ACCOUNTS,
                    amount_cents: 1 + ((i >> 40) % 500) as i64,
                };
                let _ = session.call::<Transfer>(&args).await;
            }
        });
    }
    let reader = Arc::new(
        cluster
            .client(RetryPolicy {
                attempts_max: 5,
                ..quick_policy()
            })
            .await,
    );
    // One row per chunk: each query takes many round trips per partition.
    let sql = Arc::new(
        Sql::connect(reader.clone())
            .await
            .expect("tables")
            .chunk_rows(1),
    );
    let query = format!("SELECT sum(balance_cents), count(*) FROM {}", bank::TABLE);
    let killed_at = Arc::new(AtomicU64::new(u64::MAX));
    let origin = Instant::now();
    let querying = Arc::new(AtomicBool::new(true));
    let queries = {
        let (sql, killed_at, querying) = (sql.clone(), killed_at.clone(), querying.clone());
        tokio::spawn(async move {
            let (mut answered, mut failed, mut across) = (0u32, Vec::new(), 0u32);
            while querying.load(Ordering::Relaxed) {
                let began = origin.elapsed().as_micros() as u64;
                let result = sql.query(&query, At::Latest).await;
                let ended = origin.elapsed().as_micros() as u64;
                let kill = killed_at.load(Ordering::Relaxed);
                if began < kill && kill <= ended {
                    across += 1;
                }
                match result {
                    Ok(answer) => {
                        let batch = &answer.batches[0];
                        let sum = batch.column(0).as_primitive::<Int64Type>().value(0);
                        let count = batch.column(1).as_primitive::<Int64Type>().value(0);
                        assert_eq!(
                            (sum, count),
                            (ACCOUNTS as i64 * INITIAL_CENTS, ACCOUNTS as i64),
                            "a mixed cut at epoch {}",
                            answer.epoch.0
                        );
                        answered += 1;
                    }
                    Err(e) => failed.push(e.to_string()),
                }
            }
            (answered, failed, across)
        })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    killed_at.store(origin.elapsed().as_micros() as u64, Ordering::Relaxed);
    cluster.kill(2).expect("kill node 2");
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.start_node(2).expect("restart node 2");
    wait_for_leader(cluster, &status, &all, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    querying.store(false, Ordering::Relaxed);
    let (answered, failed, across) = queries.await.expect("the query loop");
    stop.store(true, Ordering::Relaxed);
    while load.join_next().await.is_some() {}
    println!(
        "{answered} answers, {} failures: {failed:?}; {across} across the kill",
        failed.len()
    );
    assert!(across > 0, "no query was in flight at the kill");
    assert!(answered > 5, "too few answers: {answered}");
    for e in &failed {
        assert!(
            e.contains("no gateway answered")
                || e.contains("no longer retained")
                || e.contains("not applied yet"),
            "an unclear failure: {e}"
        );
    }
    // After the restart, queries answer again.
    let after = sql
        .query(&format!("SELECT count(*) FROM {}", bank::TABLE), At::Latest)
        .await;
    assert_eq!(after.map(|a| scalar(&a)).ok(), Some(ACCOUNTS as i64));
    reader.close();
    client.close();
    status.close();
}
