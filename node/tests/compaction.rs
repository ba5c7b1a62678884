//! Log compaction in a running cluster: a 3-node bank cluster under load checkpoints its
//! partitions and compacts its log several times (every replica's log start keeps moving
//! up); a node whose log and one partition's store are wiped rejoins, its replica through
//! a snapshot from the leader (Raft's InstallSnapshot), its partition from the last
//! checkpoint, and the cluster goes on answering with every deposit counted once and every
//! partition's replicas agreeing on their state digest. Then, on a stopped node whose log
//! starts long after epoch 1: `detflow archive ls` lists the compacted segments and the
//! checkpoints, `detflow audit` re-executes archive plus live log (all of it, then a range
//! from a checkpoint) and finds every partition matching, `detflow replay` rebuilds the
//! state after an epoch only the archive holds, from a checkpoint, and `detflow explain`
//! prints a transaction of it. The nodes share one archive directory, as they would an
//! object store.
//!
//! Second, state transfer: a node that loses its whole data directory (its sequencer log,
//! its partition stores and its own archive) rejoins a running cluster under load, its
//! replica through a snapshot from the leader, each of its partitions by copying the state
//! of the partition's other replica, since the log compacted away the epochs they lacked
//! and the peers dropped the reads they had sent them. Checkpoints are off in this test,
//! so nothing else could rebuild them. Every deposit is counted once and every partition's
//! replicas agree. Then `detflow checkpoint` asks for a checkpoint on demand (every node
//! writes one of each of its partitions after the same epoch), and a flood of such requests
//! is bounded.
//!
//! Third, retention: with a small `archive_retain_bytes`, each node's own archive lets its
//! old segments and checkpoints go and keeps, from its oldest checkpoint on, a checkpoint
//! of every partition it hosts and the log after it; a node without a sequencer replica
//! trims its checkpoints too.

// The tests own the clock.
#![allow(clippy::disallowed_methods)]

mod common;

use common::cluster::{
    Cluster, TestCluster, quick_policy, runtime, serial, statuses, wait_caught_up,
    wait_digests_agree, wait_for_leader, with_budget,
};
use detflow_client::{CheckpointAnswer, Client, RetryPolicy};
use detflow_executor::CHECKPOINTS_ASKED_MAX;
use detflow_protocol::Epoch;
use detflow_workloads::bank::{Balance, BalanceArgs, BankConfig, Deposit, DepositArgs};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

/// Small compactions, so that a short run compacts several times.
const COMPACT_EVERY_EPOCHS: u64 = 64;
/// Frequent checkpoints, which the compactions wait for.
const CHECKPOINT_EVERY_EPOCHS: u64 = 50;
/// Small compactions after frequent checkpoints, so that a short run compacts often.
fn compact_often(c: &mut detflow_node::config::Config) {
    c.compact_every_epochs = COMPACT_EVERY_EPOCHS;
    c.checkpoint_every_epochs = CHECKPOINT_EVERY_EPOCHS;
}

/// Concurrent depositing sessions.
const SESSIONS: u64 = 4;

#[test]
fn the_log_compacts_under_load_and_a_wiped_replica_rejoins_through_a_snapshot() {
    let _serial = serial();
    runtime().block_on(async {
        let mut cluster = common::cluster::builder(3, 3, "bank")
            .replication(2)
            .configure(|c| {
                compact_often(c);
                let cluster_dir = c
                    .data_dir
                    .parent()
                    .expect("a node's directory is in the cluster's");
                c.archive_dir = Some(cluster_dir.join("archive"));
            })
            .start()
            .expect("start the cluster");
        with_budget(Duration::from_secs(120), compaction(&mut cluster)).await;
    });
}

/// The log start of every node's replica, by node.
async fn log_starts(cluster: &Cluster, status: &Client) -> Vec<(u32, u64, u64)> {
    statuses(cluster, status)
        .await
        .into_iter()
        .filter_map(|(id, s)| {
            let s = s.ok()?;
            Some((id, s.log_start.0, s.replica?.2.0))
        })
        .collect()
}

/// Waits until every node's replica has compacted past `past`.
async fn wait_compacted_past(cluster: &mut Cluster, status: &Client, past: u64, within: Duration) {
    let start = Instant::now();
    loop {
        cluster.assert_running();
        let starts = log_starts(cluster, status).await;
        if starts.len() == cluster.nodes().len() && starts.iter().all(|(_, s, _)| *s > past) {
            return;
        }
        assert!(
            start.elapsed() < within,
            "not every replica compacted past epoch {past} within {within:?}: \
             (node, log start, commit) {starts:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sessions depositing one cent at a time until stopped, and what they were told.
struct Deposits {
    stop: Arc<AtomicBool>,
    /// Deposits answered.
    deposited: Arc<AtomicI64>,
    /// Deposits whose call failed: each may or may not have happened.
    unknown: Arc<AtomicI64>,
    sessions: Vec<tokio::task::JoinHandle<()>>,
}

impl Deposits {
    async fn start(cluster: &Cluster) -> Deposits {
        let stop = Arc::new(AtomicBool::new(false));
        let deposited = Arc::new(AtomicI64::new(0));
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
        Deposits {
            stop,
            deposited,
            unknown,
            sessions,
        }
    }

    /// Deposits answered so far.
    fn answered(&self) -> i64 {
        self.deposited.load(Ordering::Relaxed)
    }

    /// Stops the sessions; then every answered deposit must be in the bank exactly once.
    async fn stop_and_check(self, cluster: &mut Cluster, status: &Client, began: Instant) {
        self.stop.store(true, Ordering::Relaxed);
        for s in self.sessions {
            s.await.expect("a session ends cleanly");
        }
        wait_caught_up(cluster, status, 1, Duration::from_secs(30)).await;
        wait_digests_agree(cluster, status, Duration::from_secs(30)).await;
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
        let deposited = self.deposited.load(Ordering::Relaxed);
        let expected = config.accounts as i64 * config.initial_balance_cents + deposited;
        let unknown = self.unknown.load(Ordering::Relaxed);
        assert!(
            (expected..=expected + unknown).contains(&total),
            "the bank holds {total} cents; expected {expected}, plus at most {unknown} of \
             unknown fate"
        );
        println!(
            "[{:>5.1}s] {deposited} deposits, all counted once; replicas agree",
            began.elapsed().as_secs_f64(),
        );
    }
}

/// Every node's address, as `--connect` takes them.
fn connect_arg(cluster: &Cluster) -> String {
    cluster
        .gateways()
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

async fn compaction(cluster: &mut Cluster) {
    let began = Instant::now();
    let all = cluster.ids();
    let status = cluster.client(quick_policy()).await;
    wait_for_leader(cluster, &status, &all, Duration::from_secs(30)).await;

    let deposits = Deposits::start(cluster).await;

    // Several compactions on every replica.
    wait_compacted_past(
        cluster,
        &status,
        3 * COMPACT_EVERY_EPOCHS,
        Duration::from_secs(60),
    )
    .await;
    let starts = log_starts(cluster, &status).await;
    println!(
        "[{:>5.1}s] every replica compacted: (node, log start, commit) {starts:?}, {} \
         deposits",
        began.elapsed().as_secs_f64(),
        deposits.answered()
    );

    // A follower loses its log and one partition's store: it comes back empty, behind the
    // leader's log start, and can rejoin only through a snapshot and a checkpoint.
    let (_, leader) = wait_for_leader(cluster, &status, &all, Duration::from_secs(10)).await;
    let victim = *all.iter().find(|id| **id != leader).expect("a follower");
    cluster.kill(victim).expect("SIGKILL the node");
    let data_dir = cluster.at(victim).data_dir().to_path_buf();
    std::fs::remove_dir_all(data_dir.join("log")).expect("wipe the replica's log");
    let partition_dir = std::fs::read_dir(&data_dir)
        .expect("list the data directory")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("partition-"))
        })
        .expect("the node holds a partition");
    std::fs::remove_dir_all(&partition_dir).expect("wipe a partition's store");
    let leader_start = log_starts(cluster, &status)
        .await
        .into_iter()
        .find(|(id, _, _)| *id == leader)
        .map_or(0, |(_, start, _)| start);
    cluster.start_node(victim).expect("start the node");
    println!(
        "[{:>5.1}s] node {victim} restarted with its log and {} wiped; the leader's log \
         starts after epoch {leader_start}",
        began.elapsed().as_secs_f64(),
        partition_dir.display()
    );
    let restarted = Instant::now();
    loop {
        cluster.assert_running();
        let starts = log_starts(cluster, &status).await;
        let mine = starts.iter().find(|(id, _, _)| *id == victim);
        if let Some((_, start, commit)) = mine
            && *start >= leader_start
            && *commit > *start
        {
            println!(
                "[{:>5.1}s] node {victim} installed a snapshot through epoch {start} and \
                 commits again (epoch {commit}) after {:.1}s",
                began.elapsed().as_secs_f64(),
                restarted.elapsed().as_secs_f64()
            );
            break;
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(30),
            "node {victim} did not rejoin through a snapshot: (node, log start, commit) \
             {starts:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let said = std::fs::read_to_string(cluster.at(victim).log_path()).expect("the node's log");
    assert!(
        said.contains("restored from the checkpoint after epoch"),
        "node {victim} did not restore its wiped partition from a checkpoint"
    );
    // It serves as a full replica: with the leader gone, it and the third elect a leader
    // and the load goes on.
    let before = deposits.answered();
    cluster.kill(leader).expect("SIGKILL the leader");
    let survivors: Vec<u32> = all.iter().copied().filter(|id| *id != leader).collect();
    wait_for_leader(cluster, &status, &survivors, Duration::from_secs(30)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while deposits.answered() < before + 100 {
        assert!(
            Instant::now() < deadline,
            "the cluster stopped answering after the old leader died"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cluster.start_node(leader).expect("start the node");
    deposits.stop_and_check(cluster, &status, began).await;

    // The running cluster against its own log: archive, then live logs.
    let connect = connect_arg(cluster);
    let live = detflow(&[
        "audit",
        "--config",
        cluster
            .at(all[0])
            .config_path()
            .to_str()
            .expect("a UTF-8 path"),
        "--connect",
        &connect,
        "--certs",
        cluster.certs().client_dir.to_str().expect("a UTF-8 path"),
    ]);
    assert!(live.status.success(), "{}", text(&live));
    let said = String::from_utf8_lossy(&live.stdout);
    println!("{said}");
    assert!(
        said.matches("matches the log's re-execution").count() >= 6,
        "every node's two partitions: {}",
        text(&live)
    );

    // Time travel on a stopped node whose log reaches what its partitions applied: the one
    // whose replica committed most (the restarted old leader may still be catching up, and
    // its partitions got their plans from the others).
    let (node, log_start, commit) = log_starts(cluster, &status)
        .await
        .into_iter()
        .max_by_key(|(_, _, commit)| *commit)
        .expect("a node with a replica");
    let config = cluster.at(node).config_path().to_path_buf();
    let data_dir = cluster.at(node).data_dir().to_path_buf();
    cluster.stop();
    history_commands(&config, &data_dir);
    a_torn_segment_over_the_live_log(&config, log_start, commit);
}

/// A torn segment (a disk that lied about its sync) over epochs the live log still holds,
/// reaching past every readable segment: `archive ls --verify` names it and fails, and
/// `replay` takes those epochs from the live log.
fn a_torn_segment_over_the_live_log(config: &Path, log_start: u64, commit: u64) {
    let config = config.to_str().expect("a UTF-8 path");
    let ls = detflow(&["archive", "ls", "--config", config]);
    let listing = String::from_utf8_lossy(&ls.stdout).into_owned();
    let dir = listing
        .strip_prefix("archive ")
        .and_then(|l| l.split_once(": "))
        .map(|(dir, _)| Path::new(dir).join("log"))
        .expect("the listing names the archive");
    // Past the commit too: an idle log may have been compacted through it.
    let torn = dir.join(format!("{:020}-{:020}.seg", log_start + 1, commit + 10));
    std::fs::write(&torn, b"DFLOGSG1 torn").expect("plant a torn segment");

    let ls = detflow(&["archive", "ls", "--config", config, "--verify"]);
    assert!(!ls.status.success(), "{}", text(&ls));
    assert!(text(&ls).contains("damaged:"), "{}", text(&ls));

    let at = commit.to_string();
    let out = Path::new(config).with_file_name("replayed-past-torn");
    let replay = detflow(&[
        "replay",
        "--config",
        config,
        "--at",
        &at,
        "--out",
        out.to_str().expect("a UTF-8 path"),
    ]);
    assert!(replay.status.success(), "{}", text(&replay));
    assert_eq!(
        String::from_utf8_lossy(&replay.stdout)
            .matches("rows after epoch")
            .count(),
        3,
        "{}",
        text(&replay)
    );
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

fn history_commands(config: &Path, data_dir: &Path) {
    let config = config.to_str().expect("a UTF-8 path");
    let ls = detflow(&["archive", "ls", "--config", config, "--verify"]);
    assert!(ls.status.success(), "{}", text(&ls));
    let listing = String::from_utf8_lossy(&ls.stdout);
    println!("{listing}");
    assert!(listing.contains(": epochs 1..="), "{}", text(&ls));
    assert!(
        listing.contains("every segment and checkpoint reads back"),
        "{}",
        text(&ls)
    );

    assert!(listing.contains("checkpoints at"), "{}", text(&ls));

    let audit = detflow(&["audit", "--config", config]);
    assert!(audit.status.success(), "{}", text(&audit));
    println!("{}", String::from_utf8_lossy(&audit.stdout));
    // A range, re-executed from a checkpoint before it.
    let (from, to) = (
        (3 * CHECKPOINT_EVERY_EPOCHS + 7).to_string(),
        (4 * CHECKPOINT_EVERY_EPOCHS + 3).to_string(),
    );
    let audit = detflow(&["audit", "--config", config, "--from", &from, "--to", &to]);
    assert!(audit.status.success(), "{}", text(&audit));
    let said = text(&audit);
    assert!(said.contains("from the checkpoints after epoch"), "{said}");
    assert!(said.contains("recorded state digests"), "{said}");

    // An epoch the live log compacted away, so only the archive has it.
    let at = (2 * COMPACT_EVERY_EPOCHS).to_string();
    let out = data_dir.join("replayed");
    let replay = detflow(&[
        "replay",
        "--config",
        config,
        "--at",
        &at,
        "--out",
        out.to_str().expect("a UTF-8 path"),
    ]);
    assert!(replay.status.success(), "{}", text(&replay));
    assert!(
        text(&replay).contains("from the checkpoints after epoch"),
        "{}",
        text(&replay)
    );
    let replayed = String::from_utf8_lossy(&replay.stdout);
    println!("{replayed}");
    assert_eq!(
        replayed.matches("rows after epoch").count(),
        3,
        "{}",
        text(&replay)
    );
    assert!(out.join("partition-0").is_dir());

    // SQL over the replayed state: every account is there.
    let sql = detflow(&[
        "sql",
        "SELECT count(*) AS n FROM acct",
        "--format",
        "csv",
        "--data",
        out.to_str().expect("a UTF-8 path"),
        "--config",
        config,
    ]);
    assert!(sql.status.success(), "{}", text(&sql));
    let accounts = BankConfig::default().accounts;
    assert_eq!(
        String::from_utf8_lossy(&sql.stdout).trim(),
        format!("n\n{accounts}"),
        "{}",
        text(&sql)
    );
    assert!(
        text(&sql).contains(&format!("at epoch {at}")),
        "{}",
        text(&sql)
    );

    // The first transaction of an early epoch that holds one.
    let explained = (1..=2 * COMPACT_EVERY_EPOCHS)
        .map(|e| {
            let position = format!("{e}:0");
            detflow(&["explain", "--config", config, "--position", &position])
        })
        .find(|o| o.status.success())
        .expect("some early epoch holds a transaction");
    let explained = String::from_utf8_lossy(&explained.stdout);
    println!("{explained}");
    for part in [
        "call      bank.deposit",
        "footprint",
        "writes",
        "result    committed",
    ] {
        assert!(explained.contains(part), "{explained}");
    }
}

#[test]
fn a_node_that_lost_its_data_directory_copies_its_partitions_from_their_other_replicas() {
    let _serial = serial();
    runtime().block_on(async {
        let mut cluster = common::cluster::builder(3, 3, "bank")
            .replication(2)
            .configure(|c| {
                c.compact_every_epochs = COMPACT_EVERY_EPOCHS;
                // Without checkpoints the log compacts as soon as every replica applied,
                // and nothing in the archive could restore the partitions: they must copy.
                c.checkpoint_every_epochs = 0;
            })
            .start()
            .expect("start the cluster");
        with_budget(Duration::from_secs(120), rejoin_by_copy(&mut cluster)).await;
    });
}

async fn rejoin_by_copy(cluster: &mut Cluster) {
    let began = Instant::now();
    let all = cluster.ids();
    let status = cluster.client(quick_policy()).await;
    wait_for_leader(cluster, &status, &all, Duration::from_secs(30)).await;

    let deposits = Deposits::start(cluster).await;
    // Every replica's log compacts past its first epochs.
    wait_compacted_past(
        cluster,
        &status,
        2 * COMPACT_EVERY_EPOCHS,
        Duration::from_secs(60),
    )
    .await;

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
    deposits.stop_and_check(cluster, &status, began).await;

    // A checkpoint on demand (periodic ones are off): every node writes one of each of
    // its partitions after the same epoch, into its own archive.
    let connect = connect_arg(cluster);
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

    // A client without an operator's certificate may neither ask for checkpoints nor
    // read the log: every replica refuses, and nothing is scheduled.
    let plain = cluster.client(quick_policy()).await;
    for (addr, answers) in plain.checkpoint(Epoch(at + 40_000)).await {
        let answers = answers.unwrap_or_else(|e| panic!("{addr}: {e}"));
        assert!(!answers.is_empty(), "{addr} hosts partitions");
        for (partition, answer) in answers {
            assert!(
                matches!(&answer, CheckpointAnswer::Refused(why) if why.contains("operator")),
                "{addr} partition {partition}: {answer:?}"
            );
        }
    }
    let denied = (plain.read_log(Epoch(1)).await).expect_err("a plain client reads no log");
    assert!(denied.to_string().contains("operator"), "{denied}");

    // An operator that floods the nodes with checkpoints asked for far ahead gets a bounded
    // number scheduled per replica, then refusals; the cluster goes on serving.
    let operator_tls = cluster
        .operator_tls()
        .expect("load the operator certificate");
    let flooder = Client::connect(cluster.gateways(), operator_tls)
        .await
        .expect("start the operator's client")
        .with_policy(quick_policy());
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

/// Retention bounds each node's own archive (the default, in its data directory, which
/// holds only its partitions' checkpoints): under load with a small byte limit, old
/// segments and checkpoints go, and what stays starts at a checkpoint of every partition
/// the node hosts, with the log after it. Node 4 hosts a partition but no sequencer
/// replica, so it archives no segments and applies retention after its checkpoints.
#[test]
fn retention_bounds_a_nodes_own_archive_and_keeps_a_set_to_restore_from() {
    let _serial = serial();
    runtime().block_on(async {
        let mut cluster = common::cluster::builder(4, 4, "bank")
            .replication(1)
            .configure(|c| {
                compact_often(c);
                c.archive_retain_bytes = 16 << 10;
                c.cluster[3].replica = false;
            })
            .start()
            .expect("start the cluster");
        with_budget(Duration::from_secs(120), retention(&mut cluster)).await;
    });
}

/// Checkpoint sets by epoch, with their partitions.
type CheckpointSets = Vec<(u64, Vec<u32>)>;
/// Segments, first and last epoch.
type Segments = Vec<(u64, u64)>;

/// A node's archive: its checkpoints and segments.
fn archive_of(data_dir: &Path) -> (CheckpointSets, Segments) {
    let names = |dir: &Path| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    };
    let archive = data_dir.join("archive");
    let checkpoints = names(&archive.join("checkpoints"))
        .into_iter()
        .filter_map(|epoch| {
            let files = names(&archive.join("checkpoints").join(&epoch));
            let partitions = files
                .iter()
                .filter_map(|f| {
                    f.strip_prefix("partition-")?
                        .strip_suffix(".ckpt")?
                        .parse()
                        .ok()
                })
                .collect();
            Some((epoch.parse().ok()?, partitions))
        })
        .collect();
    let segments = names(&archive.join("log"))
        .into_iter()
        .filter_map(|name| {
            let (first, last) = name.strip_suffix(".seg")?.split_once('-')?;
            Some((first.parse().ok()?, last.parse().ok()?))
        })
        .collect();
    (checkpoints, segments)
}

async fn retention(cluster: &mut Cluster) {
    let began = Instant::now();
    let status = cluster.client(quick_policy()).await;
    let deposits = Deposits::start(cluster).await;
    // Until every node's archive has let its first segments (or, without a replica, its
    // first checkpoints) go.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let trimmed = cluster.ids().iter().all(|id| {
            let (checkpoints, segments) = archive_of(cluster.at(*id).data_dir());
            match *id {
                4 => checkpoints
                    .first()
                    .is_some_and(|(epoch, _)| *epoch > CHECKPOINT_EVERY_EPOCHS),
                _ => segments.first().is_some_and(|(first, _)| *first > 1),
            }
        });
        if trimmed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "retention never trimmed every node's archive ({} deposits)",
            deposits.answered()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    deposits.stop_and_check(cluster, &status, began).await;
    for id in cluster.ids() {
        let node = cluster.at(id);
        let (checkpoints, segments) = archive_of(node.data_dir());
        let mut hosted: Vec<u32> = node.partitions().to_vec();
        hosted.sort_unstable();
        // The oldest checkpoint kept is the cut: every partition the node hosts has one
        // there, and every segment kept ends after it.
        let (cut, partitions) = checkpoints.first().expect("a checkpoint set is kept");
        assert_eq!(partitions, &hosted, "node {id}: the set at epoch {cut}");
        assert!(
            segments.iter().all(|(_, last)| last > cut),
            "node {id}: segments {segments:?} kept before the cut at {cut}"
        );
        if id == 4 {
            assert!(
                segments.is_empty(),
                "node 4 has no log to archive: {segments:?}"
            );
        }
        println!(
            "node {id}: archive from the checkpoints after epoch {cut} ({} sets), segments \
             {:?}..{:?}",
            checkpoints.len(),
            segments.first(),
            segments.last()
        );
    }
}
