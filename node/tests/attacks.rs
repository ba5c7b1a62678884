//! Attacks on a running 3-process cluster (`detflow node` on 127.0.0.1), issue #9 and
//! DESIGN.md §10c. Each performs the attack, then shows the cluster serving and losing
//! nothing.
//!
//! - `forged_peer_messages_are_refused`: holding a real node certificate, speak for another
//!   node (replication as that node, reads of its partitions, submissions for its gateway,
//!   snapshot answers of its partitions and snapshot queries for its gateway)
//!   and claim leadership of the current term as ourselves. Before: the leader's sequencer
//!   panicked and writes stopped until restart. Now: each is a counted drop, the processes
//!   keep running, and every acknowledged deposit is there.
//! - `sessions_belong_to_their_client`: another client names a session it did not open,
//!   bare or with its own token, over the same certificate or another one. Before: it read
//!   the owner's result and consumed its sequence numbers. Now: refused as
//!   `ForeignSession`; the owner's calls execute exactly once.
//! - `big_values_cross_partitions_in_bounded_messages`: ~19 MB of values on one node's
//!   partition, read by one transaction that writes another node's partition. Before: the
//!   remote reads exceeded the 16 MiB frame, the link flapped, and the partition stalled for
//!   good. Now: the reads travel in chunks below the limit; nothing fails to encode.
//! - `storage_failure_stops_the_node_and_a_restart_recovers`: a node whose files may grow
//!   only 128 KiB past their size (`ulimit -f`, no root needed) fails its writes with EFBIG. Before: a
//!   zombie with dead tasks. Now: it exits with a clear message, the others carry on, and
//!   restarted without the limit it catches up.
//!
//! - `calls_that_are_never_answered_are_bounded`: calls submitted while every other node
//!   (the leader among them) stops answering (SIGSTOP), so that no quorum is left, through
//!   a gateway with a limit of 2 calls in flight and a 1 s deadline. Before (issue #10), the limit and the deadline were node code the simulator
//!   never ran; now the gateway machine holds them: the third call is refused `Overloaded`
//!   at once, the two waiting ones are answered `Unavailable` at their deadline, and their
//!   retries (same numbers) commit exactly once under the next leader.
//!
//! - `stream_reads_are_checked_and_bounded`: a client reads streams with names of 0 and
//!   100,000 bytes and asks for 4 billion events at once. Each bad name is refused
//!   (`StreamReply::Refused`), the huge read is answered within the gateway's bound, and the
//!   cluster keeps executing.
//!
//! - `a_call_pipe_that_is_never_read_is_bounded`: a client writes 200,000 calls on one
//!   stream, as fast as the node takes them, and never reads an answer. The node stops
//!   reading the stream when its answers back up (4,096 in flight per stream, then QUIC's
//!   flow control holds the client back), drops the stream when they cannot be written
//!   within 10 s, and meanwhile serves another client's deposits exactly once.
//!
//! Every test stops by itself (a budget on each scenario, deadlines on each poll) and kills
//! its processes on drop; on failure the cluster's folder is kept and the logs printed.

// The tests own the clock.
#![allow(clippy::disallowed_methods)]

mod common;

use common::cluster::{
    Cluster, TestCluster, commit_epoch, metrics_of, quick_policy, runtime, serial, wait_for_leader,
    with_budget,
};
use detflow_client::{CallError, Client, RetryPolicy};
use detflow_node::certs::{self, CertKind};
use detflow_node::runtime::ChannelHeader;
use detflow_node::transport::{Connection, Endpoint};
use detflow_protocol::mailbox::{Delivery, Letter};
use detflow_protocol::message::{Call, Message, Rejection, RemoteReads, Reply, SessionToken};
use detflow_protocol::replication::PeerMessage;
use detflow_protocol::snapshot::{PartAt, PartOp, PartRows, SnapshotPart};
use detflow_protocol::stream::{Offset, StreamPart, StreamReply};
use detflow_protocol::transfer::{StateChunk, StateFetch};
use detflow_protocol::{
    ClientId, Epoch, Footprint, Key, NodeId, Outcome, PartitionId, Position, RequestSeq, Term,
    Transaction, TxnResult, codec,
};
use detflow_workloads::bank::{Balance, BalanceArgs, Deposit, DepositArgs};
use detflow_workloads::kv::{self, AdHoc, KvRead, KvTxn};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

const PEER_REJECTED: &str = "detflow_peer_messages_rejected_total";
const ENCODE_FAILURES: &str = "detflow_encode_failures_total";

/// A raw transport connection to `addr` with the certificate `name` of the cluster's CA.
async fn connect_as(cluster: &Cluster, name: &str, addr: SocketAddr) -> (Endpoint, Connection) {
    common::connect_as(&cluster.certs().dir, name, addr).await
}

/// One request on a fresh stream, and its answer.
async fn request(conn: &Connection, msg: &Message) -> Message {
    let exchange = async {
        let (mut writer, mut reader) = conn.open_bi().await?;
        writer.send(msg).await?;
        writer.finish()?;
        reader.recv::<Message>().await
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .expect("an answer within 10 s")
        .expect("a request")
        .expect("an answer")
}

fn balance_policy() -> RetryPolicy {
    RetryPolicy {
        attempt_timeout: Duration::from_secs(3),
        attempts_max: 40,
        ..quick_policy()
    }
}

async fn balance(client: &Client, account: u64) -> i64 {
    client
        .call::<Balance>(&BalanceArgs { account })
        .await
        .expect("a balance")
        .balance_cents
}

async fn deposit(client: &Client, account: u64, cents: i64) {
    client
        .call::<Deposit>(&DepositArgs {
            account,
            amount_cents: cents,
        })
        .await
        .expect("a deposit");
}

async fn metric(addr: SocketAddr, name: &str) -> u64 {
    common::metric(addr, name)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

// ---------------------------------------------------------------------------------------
// Forged peer messages.
// ---------------------------------------------------------------------------------------

#[test]
fn forged_peer_messages_are_refused() {
    let _serial = serial();
    runtime().block_on(async {
        let mut cluster = common::cluster::start(3, 3, "bank");
        with_budget(Duration::from_secs(120), forge_peer_messages(&mut cluster)).await;
    });
}

async fn forge_peer_messages(cluster: &mut Cluster) {
    let all = cluster.ids();
    let status = cluster.client(quick_policy()).await;
    let (term, leader) = wait_for_leader(cluster, &status, &all, Duration::from_secs(30)).await;
    let client = cluster.client(balance_policy()).await;
    let before = balance(&client, 7).await;
    deposit(&client, 7, 100).await;

    // We hold the certificate of `rogue`, a real node, and speak to the leader.
    let rogue = all
        .iter()
        .copied()
        .find(|id| *id != leader)
        .expect("a follower");
    let other = all
        .iter()
        .copied()
        .find(|id| *id != leader && *id != rogue)
        .expect("a third node");
    let target = cluster.at(leader).addr();
    let metrics = metrics_of(cluster.at(leader));
    let rejected_before = metric(metrics, PEER_REJECTED).await;
    let (_endpoint, conn) = connect_as(cluster, &format!("node-{rogue}"), target).await;

    // A partition `other` hosts and `rogue` does not (partitions have replicas).
    let rogue_hosts = cluster.at(rogue).partitions();
    let other_partition = cluster
        .at(other)
        .partitions()
        .iter()
        .find(|p| !rogue_hosts.contains(p))
        .map(|p| PartitionId(*p))
        .expect("a partition of the third node that the rogue does not host");
    let leader_partition = PartitionId(cluster.at(leader).partitions()[0]);
    let txn = Arc::new(Transaction {
        client: ClientId(99),
        seq: RequestSeq(1),
        gateway: NodeId(other),
        procedure: "bank.deposit".into(),
        args: codec::encode(&DepositArgs {
            account: 7,
            amount_cents: 1_000_000,
        }),
        footprint: Footprint::new().write(Key::table("acct").u64(7)),
    });
    let append_as = |from: u32, leader: u32| Message::Peer {
        from: NodeId(from),
        msg: PeerMessage::AppendEntries {
            term: Term(term),
            leader: NodeId(leader),
            prev_epoch: Epoch(0),
            prev_term: Term(0),
            entries: Vec::new(),
            leader_commit: Epoch(0),
        },
    };
    // Each contradicts the certificate it arrives with: counted at the router.
    let impersonations = vec![
        (ChannelHeader::Replication, append_as(other, other)),
        (ChannelHeader::Submissions, Message::Submit(txn.clone())),
        (
            ChannelHeader::Reads(leader_partition.0),
            Message::RemoteReads {
                to: leader_partition,
                reads: Arc::new(RemoteReads {
                    position: Position::new(Epoch(1), 0),
                    from: other_partition,
                    exact: vec![(Key::table("acct").u64(7), Some(codec::encode(&0i64)))],
                    prefixes: Vec::new(),
                    chunk: 0,
                    chunks: 1,
                }),
            },
        ),
        (
            ChannelHeader::Reads(leader_partition.0),
            Message::Hello {
                from: other_partition,
                node: NodeId(other),
                to: leader_partition,
                durable: Epoch(0),
            },
        ),
        (
            ChannelHeader::Subscriptions,
            Message::Subscribe {
                partition: other_partition,
                node: NodeId(other),
                from: Epoch(1),
            },
        ),
        (
            ChannelHeader::Results,
            Message::Query {
                client: ClientId(99),
                seq: RequestSeq(1),
                partition: leader_partition,
                gateway: NodeId(other),
            },
        ),
        // A result on behalf of a partition we do not host: with replicas, the gateway
        // compares the results of a call's replicas, so a forged one could fake a
        // determinism failure (or, first, answer a client).
        (
            ChannelHeader::Results,
            Message::Result {
                from: other_partition,
                result: TxnResult {
                    client: ClientId(99),
                    seq: RequestSeq(1),
                    position: Position::new(Epoch(1), 0),
                    outcome: Outcome::Committed(Vec::new()),
                },
                recovered: false,
            },
        ),
        // Letters of a partition we do not host: a forged deposit by letter.
        (
            ChannelHeader::Results,
            Message::Deliver(Delivery {
                from: other_partition,
                batch: 1,
                first: 1,
                letters: vec![Letter {
                    procedure: "bank.deposit".into(),
                    args: txn.args.clone(),
                }],
                refused: Default::default(),
            }),
        ),
        // A stream share of a partition we do not host, and a read for another gateway.
        (
            ChannelHeader::Results,
            Message::StreamPart {
                read: 1,
                part: StreamPart {
                    partition: other_partition,
                    events: Vec::new(),
                    applied: Epoch(u64::MAX),
                    complete: true,
                },
            },
        ),
        (
            ChannelHeader::Results,
            Message::StreamQuery {
                partition: leader_partition,
                read: 1,
                gateway: NodeId(other),
                stream: "receipts".into(),
                from: Offset::START,
                max: u32::MAX,
            },
        ),
        // A snapshot answer of a partition we do not host (it could hand a reader a
        // forged cut), and a snapshot query for another gateway.
        (
            ChannelHeader::Results,
            Message::SnapshotPart {
                read: 1,
                part: SnapshotPart {
                    partition: other_partition,
                    applied: Epoch(u64::MAX),
                    oldest: Epoch(0),
                    answer: Ok(PartRows::Values {
                        epoch: Epoch(1),
                        values: vec![Some(codec::encode(&1_000_000i64))],
                    }),
                },
            },
        ),
        (
            ChannelHeader::Results,
            Message::SnapshotQuery {
                partition: leader_partition,
                read: 1,
                gateway: NodeId(other),
                at: PartAt::Epoch(Epoch(1)),
                op: PartOp::Get(vec![Key::table("acct").u64(7)]),
            },
        ),
        // State transfer: a forged copy of a partition's state (a chunk on behalf of
        // another node, or of a partition we do not host), a request for another node's
        // copy, a compaction notice from another replica, a peer's "reads gone" for it.
        (
            ChannelHeader::State(leader_partition.0),
            Message::StateChunk {
                partition: leader_partition,
                node: NodeId(other),
                chunk: StateChunk::Rows {
                    epoch: Epoch(1),
                    after: None,
                    rows: vec![(Key::table("acct").u64(7), codec::encode(&1_000_000i64))],
                    done: true,
                },
            },
        ),
        (
            ChannelHeader::State(other_partition.0),
            Message::StateChunk {
                partition: other_partition,
                node: NodeId(rogue),
                chunk: StateChunk::Unavailable,
            },
        ),
        (
            ChannelHeader::State(leader_partition.0),
            Message::StateFetch {
                partition: leader_partition,
                node: NodeId(other),
                fetch: StateFetch { image: None },
            },
        ),
        (
            ChannelHeader::Plans(leader_partition.0),
            Message::PlansCompacted {
                from: NodeId(other),
                partition: leader_partition,
                log_start: Epoch(u64::MAX),
            },
        ),
        (
            ChannelHeader::Reads(leader_partition.0),
            Message::ReadsGone {
                from: other_partition,
                node: NodeId(other),
                to: leader_partition,
                through: Epoch(u64::MAX),
            },
        ),
    ];
    // As ourselves, but against the protocol: a second leader in the current term, and an
    // append whose leader is someone else. The replica drops these itself.
    let protocol_violations = vec![
        (ChannelHeader::Replication, append_as(rogue, rogue)),
        (ChannelHeader::Replication, append_as(rogue, other)),
    ];
    let forged = impersonations.len() as u64;
    let mut writers = std::collections::BTreeMap::new();
    for (header, msg) in impersonations.into_iter().chain(protocol_violations) {
        let writer = match writers.entry(header) {
            std::collections::btree_map::Entry::Occupied(w) => w.into_mut(),
            std::collections::btree_map::Entry::Vacant(slot) => {
                slot.insert(conn.open_channel(&header).await.expect("open a channel"))
            }
        };
        writer.send(&msg).await.expect("send a forged message");
    }

    // Every impersonation is refused and counted; nothing crashed.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rejected = metric(metrics, PEER_REJECTED).await - rejected_before;
        if rejected >= forged {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {rejected} of {forged} forged messages were counted as refused"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The leader's replica dropped the two that contradict the protocol.
    for reason in ["second_leader", "impostor"] {
        let name = format!("detflow_replica_peer_drops_total{{reason=\"{reason}\"}}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !common::metric(metrics, &name).await.is_ok_and(|n| n >= 1) {
            assert!(
                Instant::now() < deadline,
                "{name} did not count the forgery"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    cluster.assert_running();

    // The cluster still orders and executes; the forged million was never deposited.
    let epoch = commit_epoch(cluster, &status).await;
    deposit(&client, 7, 23).await;
    assert!(
        commit_epoch(cluster, &status).await > epoch,
        "no epoch committed"
    );
    assert_eq!(balance(&client, 7).await, before + 123);
    cluster.assert_running();
    println!(
        "{forged} impersonations refused and counted; the replica dropped the rest; \
         leader was node {leader} in term {term}; balances intact"
    );
}

// ---------------------------------------------------------------------------------------
// Sessions.
// ---------------------------------------------------------------------------------------

#[test]
fn sessions_belong_to_their_client() {
    let _serial = serial();
    runtime().block_on(async {
        let mut cluster = common::cluster::start(3, 3, "bank");
        with_budget(Duration::from_secs(90), hijack_sessions(&mut cluster)).await;
    });
}

async fn hijack_sessions(cluster: &mut Cluster) {
    let all = cluster.ids();
    let status = cluster.client(quick_policy()).await;
    wait_for_leader(cluster, &status, &all, Duration::from_secs(30)).await;
    let alice = cluster.client(balance_policy()).await;
    let start = balance(&alice, 11).await;
    deposit(&alice, 11, 5).await;
    let session = alice.session().expect("alice's session is open");
    let addr = cluster.at(1).addr();

    // Mallory shares alice's certificate.
    let (_e1, mallory) = connect_as(cluster, "client", addr).await;
    let theft = Call {
        client: session,
        seq: RequestSeq(2),
        procedure: "bank.deposit".into(),
        args: codec::encode(&DepositArgs {
            account: 11,
            amount_cents: 1_000,
        }),
    };
    let refused = |answer: &Message| {
        matches!(answer, Message::Reply { reply: Reply::Rejected(Rejection::ForeignSession(id)), .. }
            if *id == session.0)
    };
    // A bare call naming alice's session.
    let answer = request(&mallory, &Message::Call(theft.clone())).await;
    assert!(refused(&answer), "a bare call: {answer:?}");
    // With a token of Mallory's own session, or a made-up one.
    let Message::SessionOpened { client: own, token } =
        request(&mallory, &Message::OpenSession).await
    else {
        panic!("opening a session failed")
    };
    assert_ne!(own, session);
    for token in [token, SessionToken([0; 16])] {
        let msg = Message::SessionCall {
            token,
            call: theft.clone(),
        };
        let answer = request(&mallory, &msg).await;
        assert!(refused(&answer), "a call with a foreign token: {answer:?}");
    }
    // Mallory's own session works, but not over another certificate.
    certs::issue(&cluster.certs().dir, "eve", CertKind::Client).expect("issue eve's cert");
    let (_e2, eve) = connect_as(cluster, "eve", addr).await;
    let own_call = Call {
        client: own,
        ..theft.clone()
    };
    let answer = request(
        &eve,
        &Message::SessionCall {
            token,
            call: own_call.clone(),
        },
    )
    .await;
    assert!(
        matches!(
            answer,
            Message::Reply {
                reply: Reply::Rejected(Rejection::ForeignSession(_)),
                ..
            }
        ),
        "a token used over another certificate: {answer:?}"
    );
    // Retried on Unavailable, as a client does (the gateway may still be learning the
    // leader); the same call number keeps it exactly once.
    let own_call = Message::SessionCall {
        token,
        call: own_call,
    };
    let mut answer = request(&mallory, &own_call).await;
    for _ in 0..50 {
        if !matches!(
            answer,
            Message::Reply {
                reply: Reply::Unavailable,
                ..
            }
        ) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        answer = request(&mallory, &own_call).await;
    }
    assert!(
        matches!(
            answer,
            Message::Reply {
                reply: Reply::Done {
                    outcome: Outcome::Committed(_),
                    ..
                },
                ..
            }
        ),
        "mallory's own call: {answer:?}"
    );

    // Alice's numbering was not consumed: her next call runs once, and the balance shows
    // exactly her deposits and Mallory's one legitimate deposit.
    deposit(&alice, 11, 7).await;
    assert_eq!(balance(&alice, 11).await, start + 5 + 1_000 + 7);
    cluster.assert_running();
}

// ---------------------------------------------------------------------------------------
// Big values across partitions.
// ---------------------------------------------------------------------------------------

#[test]
fn big_values_cross_partitions_in_bounded_messages() {
    let _serial = serial();
    runtime().block_on(async {
        let mut cluster = common::cluster::start(3, 3, "bank");
        with_budget(Duration::from_secs(240), big_values(&mut cluster)).await;
    });
}

/// The first `n` kv keys that partition `p` owns.
fn keys_on(p: u32, partitions: u32, n: usize) -> Vec<Key> {
    let workload = detflow_workloads::by_name("bank", partitions).expect("bank");
    let mut scheme = workload.scheme();
    scheme.partitions = partitions;
    let map = detflow_scheduler::PartitionMap::new(scheme).expect("a partition map");
    (0..10_000)
        .map(kv::key)
        .filter(|k| matches!(map.owner(k), Ok(detflow_protocol::Owner::Partition(q)) if q.0 == p))
        .take(n)
        .collect()
}

async fn big_values(cluster: &mut Cluster) {
    let all = cluster.ids();
    let status = cluster.client(quick_policy()).await;
    wait_for_leader(cluster, &status, &all, Duration::from_secs(30)).await;
    let client = cluster
        .client(RetryPolicy {
            attempt_timeout: Duration::from_secs(20),
            ..balance_policy()
        })
        .await;
    // Two partitions (each has replicas on two of the three nodes).
    let a = cluster.at(1).partitions()[0];
    let b = *cluster
        .at(2)
        .partitions()
        .iter()
        .find(|p| **p != a)
        .expect("a second partition");
    let big = keys_on(a, 3, 5);
    let small = keys_on(b, 3, 1).remove(0);

    // A single 5.8 MB value is refused before it is ordered.
    let huge = KvTxn::new().put(big[0].clone(), vec![0x5a; 5_800_000]);
    let answer = client.call::<AdHoc>(&huge).await;
    assert!(
        matches!(
            answer,
            Err(CallError::Rejected(Rejection::CallTooLarge { .. }))
        ),
        "a 5.8 MB call: {answer:?}"
    );

    // Five lists of ~3.8 MB each on partition a, grown 950 kB at a time.
    for key in &big {
        for round in 0..4u8 {
            let txn = KvTxn::new().append(key.clone(), vec![round; 950_000]);
            let out = client.call::<AdHoc>(&txn).await.expect("an append");
            assert!(matches!(&out.reads[0], KvRead::List(l) if l.len() == round as usize + 1));
        }
    }
    // One transaction reads all of them (as it deletes them) and writes partition b: ~19 MB
    // of remote reads from a to b.
    let mut txn = KvTxn::new();
    for key in &big {
        txn = txn.delete(key.clone());
    }
    txn = txn.put(small.clone(), b"after".to_vec());
    let began = Instant::now();
    client
        .call::<AdHoc>(&txn)
        .await
        .expect("the big cross-partition transaction");
    println!(
        "19 MB of remote reads from partition {a} to {b}: committed in {:.1} s",
        began.elapsed().as_secs_f64()
    );

    // Partition b keeps applying; the deleted keys are gone.
    let check = KvTxn::new().get(small.clone()).get(big[0].clone());
    let out = client.call::<AdHoc>(&check).await.expect("a read");
    assert_eq!(out.reads[0], KvRead::Value(Some(b"after".to_vec())));
    assert_eq!(out.reads[1], KvRead::Value(None));
    for node in cluster.nodes() {
        assert_eq!(
            metric(metrics_of(node), ENCODE_FAILURES).await,
            0,
            "node {}",
            node.id()
        );
    }
    cluster.assert_running();
}

// ---------------------------------------------------------------------------------------
// A failing disk.
// ---------------------------------------------------------------------------------------

#[test]
fn storage_failure_stops_the_node_and_a_restart_recovers() {
    let _serial = serial();
    runtime().block_on(async {
        // Three nodes, two partitions: node 3 is a replica and a gateway with no partition,
        // so the cluster keeps committing while it is down.
        let mut cluster = common::cluster::start(3, 2, "bank");
        with_budget(Duration::from_secs(150), failing_disk(&mut cluster)).await;
    });
}

async fn failing_disk(cluster: &mut Cluster) {
    let all = cluster.ids();
    let status = cluster.client(quick_policy()).await;
    wait_for_leader(cluster, &status, &all, Duration::from_secs(30)).await;
    let client = cluster.client(balance_policy()).await;
    let start = balance(&client, 3).await;

    // Node 3 again, with its files capped a little above their size now: its log soon
    // cannot grow.
    cluster.kill(3).expect("SIGKILL the node");
    let largest = largest_file(&cluster.dir().join("node-3"));
    let cap = largest + (128 << 10);
    println!("node 3's largest file: {largest} bytes; capping files at {cap}");
    cluster
        .start_node_with_file_size_limit(3, cap)
        .expect("start the node");
    let load = async {
        let mut deposits = 0;
        while cluster_node_runs(cluster, 3) {
            deposit(&client, 3, 1).await;
            deposits += 1;
        }
        deposits
    };
    let deposits = tokio::time::timeout(Duration::from_secs(90), load)
        .await
        .expect("node 3 stopped within 90 s");
    let exit = cluster.reap(3).expect("reap the node");
    let log = std::fs::read_to_string(cluster.at(3).log_path()).unwrap_or_default();
    assert!(
        !exit.success(),
        "node 3 must exit non-zero on a storage error, got {exit}"
    );
    assert!(
        log.contains("stopping the node"),
        "node 3's log must say why it stopped; exit {exit}"
    );
    println!("node 3 stopped ({exit}) after {deposits} deposits");

    // The others carry on.
    let epoch = commit_epoch(cluster, &status).await;
    deposit(&client, 3, 1).await;
    assert!(
        commit_epoch(cluster, &status).await > epoch,
        "no epoch committed"
    );

    // Without the fault, node 3 recovers and catches up.
    cluster.start_node(3).expect("start the node");
    let target = commit_epoch(cluster, &status).await;
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        cluster.assert_running();
        let views = common::cluster::statuses(cluster, &status).await;
        let caught_up = views[&3]
            .as_ref()
            .ok()
            .and_then(|s| s.replica)
            .is_some_and(|(_, _, commit)| commit.0 >= target);
        if caught_up {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 3 did not catch up to epoch {target}: {views:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(balance(&client, 3).await, start + deposits + 1);
}

/// The most bytes any file under `dir` has on disk. Allocated bytes, not lengths: fjall
/// sizes some files ahead (64 MiB, sparse) and writes them from the start.
fn largest_file(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut largest = 0;
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read a data dir").flatten() {
            let meta = entry.metadata().expect("a file's metadata");
            if meta.is_dir() {
                dirs.push(entry.path());
            } else {
                largest = largest.max(meta.blocks() * 512);
            }
        }
    }
    largest
}

fn cluster_node_runs(cluster: &mut Cluster, id: u32) -> bool {
    cluster.is_running(id).unwrap_or(false)
}

// ---------------------------------------------------------------------------------------
// Calls that are never answered.
// ---------------------------------------------------------------------------------------

#[test]
fn calls_that_are_never_answered_are_bounded() {
    let _serial = serial();
    runtime().block_on(async {
        let mut cluster = common::cluster::start_with(3, 3, "bank", |config| {
            config.limits.call_deadline_ms = 1_000;
            config.limits.calls_in_flight_max = 2;
        });
        with_budget(Duration::from_secs(120), unanswered_calls(&mut cluster)).await;
    });
}

/// Sends `call` on a fresh stream of `conn` under `token`; the answer and how long it took.
async fn timed_call(conn: &Connection, token: SessionToken, call: Call) -> (Reply, Duration) {
    let started = Instant::now();
    match request(conn, &Message::SessionCall { token, call }).await {
        Message::Reply { reply, .. } => (reply, started.elapsed()),
        other => panic!("a call answered {other:?}"),
    }
}

async fn unanswered_calls(cluster: &mut Cluster) {
    let all = cluster.ids();
    let status = cluster.client(quick_policy()).await;
    let (_, leader) = wait_for_leader(cluster, &status, &all, Duration::from_secs(30)).await;
    let alice = cluster.client(balance_policy()).await;
    let start = balance(&alice, 5).await;
    // Through a follower's gateway, which submits to the leader it knows.
    let via = *all.iter().find(|id| **id != leader).expect("a follower");
    let (_endpoint, conn) = connect_as(cluster, "client", cluster.at(via).addr()).await;
    let Message::SessionOpened { client, token } = request(&conn, &Message::OpenSession).await
    else {
        panic!("opening a session failed")
    };
    let deposit = |seq: u64| Call {
        client,
        seq: RequestSeq(seq),
        procedure: "bank.deposit".into(),
        args: codec::encode(&DepositArgs {
            account: 5,
            amount_cents: 100 * seq as i64,
        }),
    };

    // Every other node freezes: the leader, and the replica that would elect a new one
    // with the gateway's own (a gateway submits again to a new leader at once). No quorum
    // is left, so nothing can be ordered.
    let others: Vec<u32> = all.iter().copied().filter(|id| *id != via).collect();
    for id in &others {
        cluster.pause(*id).expect("SIGSTOP");
    }
    let first = timed_call(&conn, token, deposit(1));
    let second = timed_call(&conn, token, deposit(2));
    let third = async {
        // After the first two are in: the gateway holds its limit.
        tokio::time::sleep(Duration::from_millis(100)).await;
        timed_call(&conn, token, deposit(3)).await
    };
    let ((r1, t1), (r2, t2), (r3, t3)) = tokio::join!(first, second, third);
    for id in &others {
        cluster.resume(*id).expect("SIGCONT");
    }
    assert!(
        matches!(r3, Reply::Rejected(Rejection::Overloaded(_))) && t3 < Duration::from_millis(500),
        "the call over the limit: {r3:?} after {t3:?}"
    );
    for (reply, took) in [(&r1, t1), (&r2, t2)] {
        assert_eq!(*reply, Reply::Unavailable, "a call without a quorum");
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(5),
            "answered after {took:?}, not at its 1 s deadline"
        );
    }
    let node = cluster.at(via).metrics().expect("a metrics endpoint");
    assert!(metric(node, "detflow_calls_timed_out_total").await >= 2);

    // Retries under the same numbers commit, each once, whoever leads now.
    for seq in 1..=3 {
        let mut answer = Reply::Unavailable;
        for _ in 0..100 {
            answer = timed_call(&conn, token, deposit(seq)).await.0;
            if !matches!(
                answer,
                Reply::Unavailable | Reply::Rejected(Rejection::Overloaded(_))
            ) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            matches!(
                answer,
                Reply::Done {
                    outcome: Outcome::Committed(_),
                    ..
                }
            ),
            "deposit {seq}: {answer:?}"
        );
    }
    assert_eq!(balance(&alice, 5).await, start + 100 + 200 + 300);
    cluster.assert_running();
}

// ---------------------------------------------------------------------------------------
// A call pipe that is never read.
// ---------------------------------------------------------------------------------------

#[test]
fn a_call_pipe_that_is_never_read_is_bounded() {
    let _serial = serial();
    runtime().block_on(async {
        let mut cluster = common::cluster::start(3, 3, "bank");
        with_budget(Duration::from_secs(120), unread_pipe(&mut cluster)).await;
    });
}

async fn unread_pipe(cluster: &mut Cluster) {
    const FLOOD: u64 = 200_000;
    const BATCH: u64 = 1_000;
    let all = cluster.ids();
    let status = cluster.client(quick_policy()).await;
    wait_for_leader(cluster, &status, &all, Duration::from_secs(30)).await;
    let alice = cluster.client(balance_policy()).await;
    let start = balance(&alice, 5).await;
    let via = all[0];
    let addr = cluster.at(via).addr();

    // One stream of calls, written as fast as the node takes them, whose answers are
    // never read. The calls carry a forged token, so each is answered at once (refused).
    let (_endpoint, conn) = connect_as(cluster, "client", addr).await;
    let (mut writer, unread) = conn.open_bi().await.expect("a stream");
    let flood = tokio::spawn(async move {
        let mut frames = Vec::new();
        for batch in 0..FLOOD / BATCH {
            frames.clear();
            for i in 0..BATCH {
                let call = Call {
                    client: ClientId(1),
                    seq: RequestSeq(batch * BATCH + i + 1),
                    procedure: "bank.deposit".into(),
                    args: codec::encode(&DepositArgs {
                        account: 9,
                        amount_cents: 1,
                    }),
                };
                let msg = Message::SessionCall {
                    token: SessionToken([0; 16]),
                    call,
                };
                writer.encode_into(&msg, &mut frames).expect("a frame");
            }
            if writer.write_frames(&frames).await.is_err() {
                return batch * BATCH;
            }
        }
        FLOOD
    });

    // Meanwhile the node serves another client's calls through its gateway.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let tls = detflow_net::Tls::from_dir(&cluster.certs().dir, "client").expect("a certificate");
    let bob = Client::connect(vec![addr], tls)
        .await
        .expect("a client")
        .with_policy(balance_policy());
    for _ in 0..5 {
        deposit(&bob, 5, 100).await;
    }

    // The node stops reading the stream when its answers back up, and drops it when they
    // cannot be written within its deadline: the flood ends short of its calls.
    let sent = tokio::time::timeout(Duration::from_secs(40), flood)
        .await
        .expect("the node dropped the unread stream within 40 s")
        .expect("the flood task");
    drop(unread);
    assert!(
        sent < FLOOD,
        "the node read all {FLOOD} calls of an unread stream"
    );
    let refused = metric(
        cluster.at(via).metrics().expect("metrics"),
        "detflow_calls_refused_total",
    )
    .await;
    assert!(
        refused > 0 && refused < FLOOD,
        "{refused} calls refused of {FLOOD} written"
    );
    assert_eq!(balance(&alice, 5).await, start + 500);
    cluster.assert_running();
}

// ---------------------------------------------------------------------------------------
// Stream reads.
// ---------------------------------------------------------------------------------------

#[test]
fn stream_reads_are_checked_and_bounded() {
    let _serial = serial();
    runtime().block_on(async {
        let mut cluster = common::cluster::start(3, 3, "bank");
        with_budget(Duration::from_secs(120), hostile_stream_reads(&mut cluster)).await;
    });
}

async fn hostile_stream_reads(cluster: &mut Cluster) {
    let all = cluster.ids();
    let status = cluster.client(quick_policy()).await;
    wait_for_leader(cluster, &status, &all, Duration::from_secs(30)).await;
    let client = cluster.client(balance_policy()).await;
    let before = balance(&client, 3).await;
    let gateway = cluster.at(all[0]).addr();
    let (_endpoint, conn) = connect_as(cluster, "client", gateway).await;
    for name in [String::new(), "s".repeat(100_000)] {
        let read = Message::ReadStream {
            stream: name.clone(),
            from: Offset::START,
            max: 1,
        };
        match request(&conn, &read).await {
            Message::Events(StreamReply::Refused(why)) => assert!(why.contains("256"), "{why}"),
            other => panic!("a stream name of {} bytes got {other:?}", name.len()),
        }
    }
    let greedy = Message::ReadStream {
        stream: "receipts".into(),
        from: Offset::START,
        max: u32::MAX,
    };
    match request(&conn, &greedy).await {
        Message::Events(StreamReply::Events { events, next }) => {
            assert!(events.len() <= 10_000, "{} events", events.len());
            assert!(next > Offset::START, "the read moved nowhere: {next}");
        }
        other => panic!("a greedy read got {other:?}"),
    }
    deposit(&client, 3, 5).await;
    assert_eq!(balance(&client, 3).await, before + 5);
    cluster.assert_running();
    println!("bad stream names refused, a read of u32::MAX events bounded; deposits go on");
}
