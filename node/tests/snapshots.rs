//! Process-level tests of snapshot reads: a 3-node bank cluster (4 partitions) on
//! 127.0.0.1 under transfer load.
//!
//! Transfers move money between accounts and never change the bank's total, so every
//! consistent cut of the accounts sums to the same total, while a cut that reads one
//! partition at one epoch and another at a later one almost surely does not.
//!
//! - `snapshots_are_consistent_cuts_under_load`: read-your-writes after a deposit; then,
//!   while sessions transfer, whole-table scans (merged, and partition by partition side
//!   by side, in chunks small enough to span many epochs), gets of every account, reads at
//!   an exact earlier epoch and read-only calls all see the same total; an epoch older than
//!   the retention window is refused naming the oldest readable one; a malformed read is
//!   refused with its reason.
//! - `a_node_restart_during_a_long_scan_never_yields_a_mixed_cut`: a scan in progress
//!   while a node is killed either fails with a clear error or completes with the total;
//!   after the restart, scans work again.
//! - `oversized_snapshot_reads_are_refused_or_cut_into_bounded_chunks`: a get of 5,000
//!   keys is refused naming the limit; a scan asking for every row of 8 MB of 200 KiB
//!   values at once gets chunks of about 1 MiB; the cluster serves calls afterwards.

// The tests own the clock.
#![allow(clippy::disallowed_methods)]

mod common;

use common::cluster::{
    Cluster, TestCluster, quick_policy, runtime, serial, wait_for_leader, with_budget,
};
use detflow_client::{At, Client, ReadError, RetryPolicy, ScanRange};
use detflow_protocol::{Epoch, Key, PartitionId, codec};
use detflow_workloads::bank::{
    self, Balance, BalanceArgs, Deposit, DepositArgs, Transfer, TransferArgs,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

const ACCOUNTS: u64 = 64;
const INITIAL_CENTS: i64 = 10_000;
const PARTITIONS: u32 = 4;

fn load_policy() -> RetryPolicy {
    RetryPolicy {
        attempt_timeout: Duration::from_secs(2),
        backoff: Duration::from_millis(20),
        backoff_max: Duration::from_millis(500),
        attempts_max: 60,
    }
}

fn balance(value: &[u8]) -> i64 {
    codec::decode::<i64>(value).expect("a balance decodes")
}

fn total(rows: &[(Key, Vec<u8>)]) -> i64 {
    rows.iter().map(|(_, v)| balance(v)).sum()
}

/// Sessions transferring between random accounts until `stop`; counts the transfers
/// answered.
fn start_transfers(
    client: &Client,
    sessions: u32,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
) -> tokio::task::JoinSet<()> {
    let mut tasks = tokio::task::JoinSet::new();
    for s in 0..sessions {
        let session = client.new_session();
        let (stop, done) = (stop.clone(), done.clone());
        tasks.spawn(async move {
            let mut i = u64::from(s);
            while !stop.load(Ordering::Relaxed) {
                i = i
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let args = TransferArgs {
                    from: (i >> 33) % ACCOUNTS,
                    to: (i >> 17) % ACCOUNTS,
                    amount_cents: 1 + ((i >> 40) % 500) as i64,
                };
                // Aborts (a dry account, a transfer to itself) and a node being down are
                // part of the load; only the total matters.
                let _ = session.call::<Transfer>(&args).await;
                done.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    tasks
}

async fn wait_transfers(done: &AtomicU64, at_least: u64) {
    while done.load(Ordering::Relaxed) < at_least {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn snapshots_are_consistent_cuts_under_load() {
    let _serial = serial();
    runtime().block_on(async {
        let mut cluster = common::cluster::start_with(3, PARTITIONS, "bank", |config| {
            config.snapshots.retention_ms = 3_000;
        });
        with_budget(Duration::from_secs(120), consistent_cuts(&mut cluster)).await;
    });
}

async fn consistent_cuts(cluster: &mut Cluster) {
    let all = cluster.ids();
    let status = cluster.client(quick_policy()).await;
    wait_for_leader(cluster, &status, &all, Duration::from_secs(30)).await;
    let client = cluster.client(load_policy()).await;

    // Read-your-writes: a session's latest snapshot sees its own deposit.
    let deposit = DepositArgs {
        account: 5,
        amount_cents: 123,
    };
    client.call::<Deposit>(&deposit).await.expect("a deposit");
    let snapshot = client.snapshot(At::Latest);
    let after = snapshot
        .get(&bank::account_key(5))
        .await
        .expect("a snapshot get");
    assert_eq!(after.as_deref().map(balance), Some(INITIAL_CENTS + 123));
    let expected = ACCOUNTS as i64 * INITIAL_CENTS + 123;
    let first_epoch = snapshot.epoch().expect("the get fixed the epoch");

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut load = start_transfers(&client, 6, stop.clone(), done.clone());
    wait_transfers(&done, 100).await;

    let table = ScanRange::prefix(Key::table(bank::TABLE));
    let keys: Vec<Key> = (0..ACCOUNTS).map(bank::account_key).collect();
    let mut epochs = Vec::new();
    for round in 0..8 {
        // A merged scan in chunks of 3 rows per partition: many round trips, while the
        // transfers go on.
        let snapshot = client.snapshot(At::Latest);
        let rows = snapshot
            .scan(table.clone())
            .chunk_rows(3)
            .collect()
            .await
            .expect("a scan");
        let epoch = snapshot.epoch().expect("fixed");
        println!("round {round}: scanned at epoch {epoch}");
        assert_eq!(rows.len() as u64, ACCOUNTS, "round {round}: every account");
        assert!(rows.windows(2).all(|w| w[0].0 < w[1].0), "in key order");
        assert_eq!(total(&rows), expected, "round {round}: scan at {epoch}");

        // The same epoch again, partition by partition, side by side.
        let again = client.snapshot(At::Epoch(epoch));
        let mut parts = Vec::new();
        for p in 0..PARTITIONS {
            let mut scan = again
                .scan_partition(PartitionId(p), table.clone())
                .chunk_rows(2);
            parts.push(async move {
                let mut rows = Vec::new();
                while let Some(chunk) = scan.next().await? {
                    rows.extend(chunk);
                }
                Ok::<_, ReadError>(rows)
            });
        }
        let mut side_by_side = Vec::new();
        for part in parts {
            side_by_side.extend(part.await.expect("a partition scan"));
        }
        side_by_side.sort();
        assert_eq!(side_by_side, rows, "round {round}: the same cut twice");
        println!("round {round}: scanned partitions side by side");

        // Gets of every account, at the latest epoch: one cut too.
        let values = client
            .snapshot(At::Latest)
            .get_many(&keys)
            .await
            .expect("a get of every account");
        let sum: i64 = values
            .iter()
            .map(|v| balance(v.as_ref().expect("exists")))
            .sum();
        assert_eq!(sum, expected, "round {round}: gets");
        println!("round {round}: got every account");

        // A read-only call on a snapshot, never ordered.
        let (_, out) = client
            .call_read_only::<Balance>(&BalanceArgs { account: 7 })
            .await
            .expect("a read-only call");
        assert!(out.balance_cents >= 0);
        epochs.push(epoch);
    }
    assert!(
        epochs.windows(2).all(|w| w[0] <= w[1]),
        "a session's latest snapshots never go back: {epochs:?}"
    );
    assert!(
        epochs.last() > epochs.first(),
        "the snapshots moved with the load: {epochs:?}"
    );

    // The retention window is 3 s: the first snapshot's epoch has left it.
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    let old = client.snapshot(At::Epoch(first_epoch));
    match old.get(&bank::account_key(5)).await {
        Err(ReadError::TooOld { asked, oldest }) => {
            assert_eq!(asked, first_epoch);
            assert!(oldest > first_epoch, "oldest {oldest}");
        }
        other => panic!("a read at {first_epoch}, 3.5 s old: {other:?}"),
    }
    // Not yet applied: refused after the bounded wait, naming the partition.
    match client
        .snapshot(At::Epoch(Epoch(u64::MAX / 2)))
        .get(&keys[0])
        .await
    {
        Err(ReadError::NotYet { .. }) => {}
        other => panic!("a read far in the future: {other:?}"),
    }
    // The system table is not part of a snapshot.
    let system = Key::table(detflow_protocol::SYSTEM_TABLE).u64(1);
    match client.snapshot(At::Latest).get(&system).await {
        Err(ReadError::Refused(why)) => assert!(why.contains("system"), "{why}"),
        other => panic!("a read of the system table: {other:?}"),
    }

    stop.store(true, Ordering::Relaxed);
    while load.join_next().await.is_some() {}
    let rows = client
        .snapshot(At::Latest)
        .scan(table)
        .collect()
        .await
        .expect("a final scan");
    assert_eq!(total(&rows), expected);
    println!(
        "{} transfers during the reads; snapshot epochs {epochs:?}",
        done.load(Ordering::Relaxed)
    );
    client.close();
    status.close();
}

#[test]
fn a_node_restart_during_a_long_scan_never_yields_a_mixed_cut() {
    let _serial = serial();
    runtime().block_on(async {
        let mut cluster = common::cluster::start(3, PARTITIONS, "bank");
        with_budget(Duration::from_secs(120), restart_during_scan(&mut cluster)).await;
    });
}

async fn restart_during_scan(cluster: &mut Cluster) {
    let all = cluster.ids();
    let status = cluster.client(quick_policy()).await;
    wait_for_leader(cluster, &status, &all, Duration::from_secs(30)).await;
    let client = cluster.client(load_policy()).await;
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut load = start_transfers(&client, 4, stop.clone(), done.clone());
    wait_transfers(&done, 50).await;
    let expected = ACCOUNTS as i64 * INITIAL_CENTS;
    let table = ScanRange::prefix(Key::table(bank::TABLE));
    let reader = cluster
        .client(RetryPolicy {
            attempts_max: 5,
            ..quick_policy()
        })
        .await;
    // One row per chunk: the scan takes many round trips, and the kill lands inside it.
    let snapshot = reader.snapshot(At::Latest);
    let mut scan = snapshot.scan(table.clone()).chunk_rows(1);
    let mut rows = Vec::new();
    let mut outcome = None;
    let mut killed = false;
    loop {
        match scan.next().await {
            Ok(Some(chunk)) => rows.extend(chunk),
            Ok(None) => break,
            Err(e) => {
                outcome = Some(e);
                break;
            }
        }
        if rows.len() >= 8 && !killed {
            cluster.kill(2).expect("kill node 2");
            killed = true;
        }
    }
    assert!(killed, "the scan ended before the kill");
    match outcome {
        None => {
            assert_eq!(rows.len() as u64, ACCOUNTS);
            assert_eq!(total(&rows), expected, "a completed scan is one cut");
            println!("the scan completed across the kill");
        }
        Some(error) => {
            println!("the scan failed across the kill: {error}");
            assert!(
                matches!(
                    error,
                    ReadError::Unavailable { .. } | ReadError::TooOld { .. }
                ),
                "{error:?}"
            );
        }
    }
    cluster.start_node(2).expect("restart node 2");
    wait_for_leader(cluster, &status, &all, Duration::from_secs(30)).await;
    wait_transfers(&done, done.load(Ordering::Relaxed) + 50).await;
    let rows = client
        .snapshot(At::Latest)
        .scan(table)
        .chunk_rows(7)
        .collect()
        .await
        .expect("a scan after the restart");
    assert_eq!(total(&rows), expected);
    stop.store(true, Ordering::Relaxed);
    while load.join_next().await.is_some() {}
    reader.close();
    client.close();
    status.close();
}

#[test]
fn oversized_snapshot_reads_are_refused_or_cut_into_bounded_chunks() {
    let _serial = serial();
    runtime().block_on(async {
        let mut cluster = common::cluster::start(3, PARTITIONS, "bank");
        with_budget(Duration::from_secs(90), oversized_reads(&mut cluster)).await;
    });
}

async fn oversized_reads(cluster: &mut Cluster) {
    let all = cluster.ids();
    let status = cluster.client(quick_policy()).await;
    wait_for_leader(cluster, &status, &all, Duration::from_secs(30)).await;
    let client = cluster.client(load_policy()).await;
    // 40 rows of 200 KiB on one key prefix per partition: 8 MB in all.
    const ROWS: u64 = 40;
    const VALUE: usize = 200 << 10;
    for i in 0..ROWS {
        client
            .kv()
            .put(Key::table("kv").u64(i), vec![i as u8; VALUE])
            .commit()
            .await
            .expect("a large put");
    }
    // A get of more keys than a read may name is refused, with the limit in the reason.
    let keys: Vec<Key> = (0..5_000).map(bank::account_key).collect();
    match client.snapshot(At::Latest).get_many(&keys).await {
        Err(ReadError::Refused(why)) => assert!(why.contains("4096"), "{why}"),
        other => panic!("a get of 5,000 keys: {other:?}"),
    }
    // A scan that asks for every row at once gets chunks of about 1 MiB, whatever it asks.
    let snapshot = client.snapshot(At::Latest);
    let mut rows = 0;
    let mut chunks = 0;
    for p in 0..PARTITIONS {
        let mut scan = snapshot
            .scan_partition(PartitionId(p), ScanRange::prefix(Key::table("kv")))
            .chunk_rows(u32::MAX);
        while let Some(chunk) = scan.next().await.expect("a chunk") {
            let bytes: usize = chunk.iter().map(|(_, v)| v.len()).sum();
            assert!(
                bytes <= (1 << 20) + VALUE,
                "a chunk of {bytes} bytes ({} rows)",
                chunk.len()
            );
            rows += chunk.len() as u64;
            chunks += 1;
        }
    }
    assert_eq!(rows, ROWS);
    assert!(chunks >= 8, "{chunks} chunks for 8 MB");
    // The cluster still serves.
    let deposit = DepositArgs {
        account: 1,
        amount_cents: 1,
    };
    client
        .call::<Deposit>(&deposit)
        .await
        .expect("a deposit after the reads");
    println!("{rows} rows of {VALUE} bytes in {chunks} chunks");
    client.close();
    status.close();
}
