//! A node that loses its whole data directory (its sequencer log, its partition stores and
//! its own archive) rejoins a running 3-node bank cluster under load: its replica through a
//! snapshot from the leader, each of its partitions by copying the state of the partition's
//! other replica, since the log compacted away the epochs they lacked and the peers dropped
//! the reads they had sent them. Checkpoints are off (the default), so nothing else could
//! rebuild them. The load goes on, every deposit is counted once, and every partition's
//! replicas agree on their state digest. Then `detflow checkpoint` asks for a checkpoint
//! on demand: every node writes one of each of its partitions after the same epoch.

// The tests own the clock.
#![allow(clippy::disallowed_methods)]

mod common;

use common::cluster::{
    Cluster, TestCluster, quick_policy, runtime, serial, statuses, wait_caught_up,
    wait_digests_agree, wait_for_leader, with_budget,
};
use detflow_client::{CheckpointAnswer, RetryPolicy};
use detflow_executor::CHECKPOINTS_ASKED_MAX;
use detflow_protocol::Epoch;
use detflow_workloads::bank::{Balance, BalanceArgs, BankConfig, Deposit, DepositArgs};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

/// Small compactions, so that the log soon lacks the first epochs.
const COMPACT_EVERY_EPOCHS: u64 = 64;
/// Concurrent depositing sessions.
const SESSIONS: u64 = 4;

#[test]
fn a_node_that_lost_its_data_directory_copies_its_partitions_from_their_other_replicas() {
    let _serial = serial();
    runtime().block_on(async {
        let mut cluster = common::cluster::builder(3, 3, "bank")
            .replication(2)
            .configure(|c| c.compact_every_epochs = COMPACT_EVERY_EPOCHS)
            .start()
            .expect("start the cluster");
        with_budget(Duration::from_secs(120), rejoin(&mut cluster)).await;
    });
}

async fn rejoin(cluster: &mut Cluster) {
    let began = Instant::now();
    let all = cluster.ids();
    let status = cluster.client(quick_policy()).await;
    wait_for_leader(cluster, &status, &all, Duration::from_secs(30)).await;

    let stop = Arc::new(AtomicBool::new(false));
    let deposited = Arc::new(AtomicI64::new(0));
    // Deposits whose call failed: each may or may not have happened.
    let unknown = Arc::new(AtomicI64::new(0));
    let policy = RetryPolicy {
        attempt_timeout: Duration::from_secs(2),
        backoff: Duration::from_millis(20),
        backoff_max: Duration::from_millis(500),
        attempts_max: 60,
    };
    let accounts = BankConfig::default().accounts;
    let mut sessions = Vec::new();
    for s in 0..SESSIONS {
        let client = cluster.client(policy).await;
        let (stop, deposited, unknown) = (stop.clone(), deposited.clone(), unknown.clone());
        sessions.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let args = DepositArgs {
                    account: (s * 7919 + i * 31) % accounts,
                    amount_cents: 1,
                };
                match client.call::<Deposit>(&args).await {
                    Ok(_) => deposited.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        println!("a deposit of unknown fate: {e}");
                        unknown.fetch_add(1, Ordering::Relaxed)
                    }
                };
                i += 1;
            }
        }));
    }

    // Every replica's log compacts past its first epochs.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        cluster.assert_running();
        let starts: Vec<u64> = statuses(cluster, &status)
            .await
            .into_values()
            .filter_map(|s| Some(s.ok()?.log_start.0))
            .collect();
        if starts.len() == all.len() && starts.iter().all(|s| *s > 2 * COMPACT_EVERY_EPOCHS) {
            println!(
                "[{:>5.1}s] every log compacted: starts {starts:?}",
                began.elapsed().as_secs_f64()
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "logs did not compact: {starts:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A follower loses everything on disk.
    let (_, leader) = wait_for_leader(cluster, &status, &all, Duration::from_secs(10)).await;
    let victim = *all.iter().find(|id| **id != leader).expect("a follower");
    cluster.kill(victim).expect("SIGKILL the node");
    let data_dir = cluster.at(victim).data_dir().to_path_buf();
    std::fs::remove_dir_all(&data_dir).expect("wipe the node's data directory");
    cluster.start_node(victim).expect("start the node");
    let partitions = cluster.at(victim).partitions().len();
    println!(
        "[{:>5.1}s] node {victim} restarted with {} wiped; it hosts {partitions} partitions",
        began.elapsed().as_secs_f64(),
        data_dir.display()
    );

    // Each of its partitions copies its other replica's state.
    let restarted = Instant::now();
    loop {
        cluster.assert_running();
        let said = std::fs::read_to_string(cluster.at(victim).log_path()).unwrap_or_default();
        let copied = said
            .matches("copied another replica's state after epoch")
            .count();
        if copied >= partitions {
            println!(
                "[{:>5.1}s] node {victim}'s {copied} partitions copied their peers' states \
                 after {:.1}s",
                began.elapsed().as_secs_f64(),
                restarted.elapsed().as_secs_f64()
            );
            break;
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(30),
            "node {victim}: {copied} of {partitions} partitions copied a peer's state; its \
             log:\n{said}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // It is a full replica again: the load goes on, it catches up, and its partitions end
    // in the same state as their other replicas.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for s in sessions {
        s.await.expect("a session ends cleanly");
    }
    wait_caught_up(cluster, &status, 1, Duration::from_secs(30)).await;
    wait_digests_agree(cluster, &status, Duration::from_secs(30)).await;

    // Every acknowledged deposit is in the bank exactly once.
    let client = cluster.client(quick_policy()).await;
    let config = BankConfig::default();
    let mut total = 0i64;
    for account in 0..config.accounts {
        let balance = client
            .call::<Balance>(&BalanceArgs { account })
            .await
            .expect("read a balance");
        total += balance.balance_cents;
    }
    let expected =
        config.accounts as i64 * config.initial_balance_cents + deposited.load(Ordering::Relaxed);
    let unknown = unknown.load(Ordering::Relaxed);
    assert!(
        (expected..=expected + unknown).contains(&total),
        "the bank holds {total} cents; expected {expected}, plus at most {unknown} of unknown \
         fate"
    );
    println!(
        "[{:>5.1}s] {} deposits, all counted once; replicas agree",
        began.elapsed().as_secs_f64(),
        deposited.load(Ordering::Relaxed)
    );

    // A checkpoint on demand (periodic ones are off): every node writes one of each of
    // its partitions after the same epoch, into its own archive.
    let connect = cluster
        .gateways()
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let certs = cluster
        .certs()
        .client_dir
        .to_str()
        .expect("a UTF-8 path")
        .to_owned();
    let asked = detflow(&["checkpoint", "--connect", &connect, "--certs", &certs]);
    let said = text(&asked);
    assert!(asked.status.success(), "{said}");
    let at: u64 = said
        .split("checkpoints after epoch ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no epoch in {said}"));
    // Keep the cluster applying until every replica passed that epoch.
    let client = cluster.client(quick_policy()).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    for id in cluster.ids() {
        let node = cluster.at(id);
        let dir = node
            .data_dir()
            .join("archive/checkpoints")
            .join(format!("{at:020}"));
        for p in node.partitions() {
            let file = dir.join(format!("partition-{p}.ckpt"));
            while !file.exists() {
                assert!(
                    Instant::now() < deadline,
                    "{} never appeared",
                    file.display()
                );
                let _ = client
                    .call::<Deposit>(&DepositArgs {
                        account: 1,
                        amount_cents: 1,
                    })
                    .await;
            }
        }
    }
    println!("checkpoints after epoch {at} on every node:\n{said}");
    // An epoch every replica has applied is refused, and the command says so.
    let late = detflow(&[
        "checkpoint",
        "--connect",
        &connect,
        "--certs",
        &certs,
        "--at",
        "1",
    ]);
    assert_eq!(late.status.code(), Some(1), "{}", text(&late));
    assert!(text(&late).contains("too late"), "{}", text(&late));

    // A client that floods the nodes with checkpoints asked for far ahead gets a bounded
    // number scheduled per replica, then refusals; the cluster goes on serving.
    let flooder = cluster.client(quick_policy()).await;
    let mut refused = 0;
    for k in 0..(CHECKPOINTS_ASKED_MAX as u64 + 3) {
        for (addr, answers) in flooder.checkpoint(Epoch(at + 50_000 + k)).await {
            let answers = answers.unwrap_or_else(|e| panic!("{addr}: {e}"));
            refused += answers
                .iter()
                .filter(|(_, a)| matches!(a, CheckpointAnswer::Refused(_)))
                .count();
        }
    }
    let replicas: usize = cluster
        .ids()
        .iter()
        .map(|id| cluster.at(*id).partitions().len())
        .sum();
    assert_eq!(
        refused,
        3 * replicas,
        "each replica refuses past {CHECKPOINTS_ASKED_MAX}"
    );
    for (addr, answers) in flooder.checkpoint(Epoch(u64::MAX)).await {
        let answers = answers.unwrap_or_else(|e| panic!("{addr}: {e}"));
        assert!(
            answers
                .iter()
                .all(|(_, a)| matches!(a, CheckpointAnswer::Refused(_)))
        );
    }
    client
        .call::<Deposit>(&DepositArgs {
            account: 2,
            amount_cents: 1,
        })
        .await
        .expect("the cluster serves");
}

fn detflow(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_detflow"))
        .args(args)
        .output()
        .expect("run detflow")
}

fn text(out: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
