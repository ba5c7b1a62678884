//! Bad input over the wire against a running single-node cluster (a `detflow` process on
//! 127.0.0.1: one replica, a gateway, two partitions), DESIGN.md §9–§10.
//!
//! - `bad_frames_are_refused_counted_and_harmless`: malformed MessagePack, a length prefix
//!   over the 16 MiB limit, an unknown message type and a frame cut short, as a client on
//!   request streams and as a node on channels. Each stream is stopped with
//!   `MALFORMED_FRAME` or `FRAME_TOO_LARGE` and counted in the metrics; the connection, the
//!   node and its data are unharmed.
//! - `bad_calls_are_rejected_with_a_reason`: an unknown procedure, arguments that do not
//!   decode, a footprint over the limit, `kv.txn` on a table the configuration does not
//!   open to it or on the system table, a malformed key and a call over the size limit are
//!   typed rejections, and never ordered; the node restarts cleanly afterwards (a malformed
//!   key, once stored, used to keep it from starting).
//!
//! Every test stops by itself (deadlines on every step, a budget on the whole), and the node
//! process dies with the test (stopped by the cluster's `Drop`, and `--exit-on-stdin-eof`
//! should the test process itself be killed). On failure the folder (config, certificates,
//! data, node log) is kept and its path printed, with the tail of the log.

// The tests own the clock.
#![allow(clippy::disallowed_methods)]

mod common;

use common::cluster::{Cluster, TestCluster, metrics_of};
use detflow_client::{CallError, Client, RetryPolicy};
use detflow_node::config::NodeSpec;
use detflow_node::runtime::ChannelHeader;
use detflow_node::transport::{Connection, Endpoint, FRAME_TOO_LARGE, MALFORMED_FRAME};
use detflow_protocol::frame::{self, DEFAULT_MAX_FRAME_BYTES};
use detflow_protocol::message::{Message, Rejection};
use detflow_protocol::{AbortReason, Key, SYSTEM_TABLE, codec};
use detflow_workloads::bank::{Balance, BalanceArgs, BankConfig, Deposit, DepositArgs};
use detflow_workloads::kv::{self, KvTxn};
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

const MALFORMED: &str = "detflow_transport_frames_rejected_malformed_total";
const TOO_LARGE: &str = "detflow_transport_frames_rejected_too_large_total";

/// The budget of one step that should be quick.
const STEP: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------
// A single-node cluster in a folder of its own.
// ---------------------------------------------------------------------------------------

/// One `detflow node` process: replica, gateway and two partitions, as a one-node
/// [`Cluster`]. Dropping it stops the process; if the test is failing it keeps the folder
/// and prints the log.
struct SingleNode {
    cluster: Cluster,
    addr: SocketAddr,
    metrics: SocketAddr,
}

impl SingleNode {
    fn start() -> SingleNode {
        let cluster = common::cluster::builder(1, 2, "bank")
            // node-2's certificate lets the tests speak as a (rogue) cluster node.
            .node_certificates(2)
            .configure(|config| {
                // A member with no roles, whose certificate the tests use to speak as a
                // (rogue) cluster node; nothing runs at its address.
                config.cluster.push(NodeSpec {
                    id: 2,
                    addr: SocketAddr::from(([127, 0, 0, 1], 9)),
                    replica: false,
                    gateway: false,
                    partitions: Vec::new(),
                });
            })
            .prefix("detflow-bad-input-test-")
            .start()
            .expect("start the node");
        let node = cluster.at(1);
        let (addr, metrics) = (node.addr(), metrics_of(node));
        SingleNode {
            cluster,
            addr,
            metrics,
        }
    }

    /// SIGKILLs the node and starts it again on the same configuration and data.
    fn restart(&mut self) {
        self.cluster.restart(1).expect("restart the node");
    }

    /// Panics if the node process has exited.
    fn assert_running(&mut self) {
        self.cluster.assert_running();
    }

    async fn client(&self) -> Client {
        self.cluster
            .client(RetryPolicy {
                attempt_timeout: Duration::from_secs(2),
                backoff: Duration::from_millis(20),
                backoff_max: Duration::from_millis(200),
                attempts_max: 20,
            })
            .await
    }

    /// A raw transport connection with the certificate `name` of the cluster's CA.
    async fn connect_as(&self, name: &str) -> (Endpoint, Connection) {
        common::connect_as(&self.cluster.certs().dir, name, self.addr).await
    }

    /// Waits until the node answers a status request and its replica leads.
    async fn wait_ready(&mut self, client: &Client) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            self.assert_running();
            let leads = client.status().await.into_iter().all(|(_, s)| {
                s.is_ok_and(|s| s.replica.is_some_and(|(_, leader, _)| leader.is_some()))
            });
            if leads {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the node was not ready within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn commit_epoch(&self, client: &Client) -> u64 {
        let (_, status) = client.status().await.remove(0);
        let status = status.expect("the node answers a status request");
        status.replica.expect("the node runs a replica").2.0
    }
}

async fn within<F: Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(STEP, f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// Starts a node and runs `scenario` against it within `budget`. The node outlives the
/// scenario, so that a timeout still fails the test while the node can show its log.
fn run(budget: Duration, scenario: impl AsyncFnOnce(&mut SingleNode)) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async {
        let mut node = SingleNode::start();
        if tokio::time::timeout(budget, scenario(&mut node))
            .await
            .is_err()
        {
            panic!("the scenario did not finish within its budget of {budget:?}");
        }
    });
}

/// Reads one counter from the node's Prometheus endpoint.
async fn metric(addr: SocketAddr, name: &str) -> u64 {
    common::metric(addr, name)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Polls a counter until it reaches `at_least`.
async fn wait_metric(addr: SocketAddr, name: &str, at_least: u64) {
    let deadline = Instant::now() + STEP;
    loop {
        let value = metric(addr, name).await;
        if value >= at_least {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} stayed at {value}, expected at least {at_least}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------
// Bad frames.
// ---------------------------------------------------------------------------------------

/// A frame as the wire carries it: a 4-byte big-endian length, then the body.
fn framed(body: &[u8]) -> Vec<u8> {
    let mut bytes = (body.len() as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(body);
    bytes
}

/// Bad bytes, and how the node must refuse them.
struct Case {
    what: &'static str,
    bytes: Vec<u8>,
    code: quinn::VarInt,
    counter: &'static str,
}

fn cases() -> Vec<Case> {
    // A valid MessagePack map whose key is no message type: {"Launch": 1}.
    let unknown = rmp_serde::to_vec(&BTreeMap::from([("Launch", 1u8)])).expect("encode");
    // A known message type with a body of the wrong shape: {"Call": "now"}.
    let misshapen = rmp_serde::to_vec(&BTreeMap::from([("Call", "now")])).expect("encode");
    let mut oversized = (DEFAULT_MAX_FRAME_BYTES + 1).to_be_bytes().to_vec();
    oversized.extend_from_slice(b"and a little more");
    vec![
        Case {
            what: "malformed MessagePack",
            // 0xc1 is the one byte MessagePack never uses.
            bytes: framed(&[0xc1, 0xc1, 0xc1]),
            code: MALFORMED_FRAME,
            counter: MALFORMED,
        },
        Case {
            what: "a length prefix over the limit",
            bytes: oversized,
            code: FRAME_TOO_LARGE,
            counter: TOO_LARGE,
        },
        Case {
            what: "a length prefix of 4 GiB",
            bytes: u32::MAX.to_be_bytes().to_vec(),
            code: FRAME_TOO_LARGE,
            counter: TOO_LARGE,
        },
        Case {
            what: "an unknown message type",
            bytes: framed(&unknown),
            code: MALFORMED_FRAME,
            counter: MALFORMED,
        },
        Case {
            what: "a known message type of the wrong shape",
            bytes: framed(&misshapen),
            code: MALFORMED_FRAME,
            counter: MALFORMED,
        },
    ]
}

/// Writes `bytes` on `send` without finishing it (so that only the node's STOP_SENDING can
/// end the wait) and returns the code the node stopped the stream with.
async fn stop_code(what: &str, send: &mut quinn::SendStream, bytes: &[u8]) -> quinn::VarInt {
    within(what, send.write_all(bytes))
        .await
        .unwrap_or_else(|e| panic!("{what}: writing failed: {e}"));
    match within(what, send.stopped()).await {
        Ok(Some(code)) => code,
        other => panic!("{what}: the node did not stop the stream: {other:?}"),
    }
}

/// The connection still carries requests: a status request on a fresh stream.
async fn still_serves(what: &str, conn: &Connection) {
    let answer = within(what, async {
        let (mut writer, mut reader) = conn.open_bi().await?;
        writer.send(&Message::Status).await?;
        writer.finish()?;
        reader.recv::<Message>().await
    })
    .await;
    assert!(
        matches!(answer, Ok(Some(Message::StatusReply(_)))),
        "after {what}, a status request on the same connection got {answer:?}"
    );
}

#[test]
fn bad_frames_are_refused_counted_and_harmless() {
    run(Duration::from_secs(60), async |node| {
        let client = node.client().await;
        node.wait_ready(&client).await;
        // Data written before the bad input must survive it.
        let account = 3;
        let deposit = DepositArgs {
            account,
            amount_cents: 555,
        };
        client
            .call::<Deposit>(&deposit)
            .await
            .expect("a deposit before the bad input");
        let expected = BankConfig::default().initial_balance_cents + deposit.amount_cents;
        let initial = [
            (MALFORMED, metric(node.metrics, MALFORMED).await),
            (TOO_LARGE, metric(node.metrics, TOO_LARGE).await),
        ];
        let mut refused: BTreeMap<&str, u64> = initial.into_iter().collect();

        // As a client, on request (bidirectional) streams.
        let (endpoint, conn) = node.connect_as("client").await;
        for case in cases() {
            let what = format!("{} on a client stream", case.what);
            let (mut send, mut recv) = conn.quic().open_bi().await.expect("open a stream");
            let code = stop_code(&what, &mut send, &case.bytes).await;
            assert_eq!(code, case.code, "{what}: stop code");
            // The node answers nothing on that stream: it ends, empty.
            let answer = within(&what, recv.read_to_end(1024)).await;
            assert!(
                answer.as_ref().is_ok_and(Vec::is_empty) || answer.is_err(),
                "{what}: the node answered {answer:?}"
            );
            *refused.get_mut(case.counter).expect("a known counter") += 1;
            wait_metric(node.metrics, case.counter, refused[case.counter]).await;
            still_serves(&what, &conn).await;
            node.assert_running();
            println!(
                "{what}: stopped with code {code}, counted in {}",
                case.counter
            );
        }

        // A frame cut short by the end of the stream: refused as malformed. (Finishing the
        // stream lets the node acknowledge it before it stops the stream, so the stop code
        // may or may not reach us; the counter is what tells.)
        let what = "a frame cut short on a client stream";
        let (mut send, _recv) = conn.quic().open_bi().await.expect("open a stream");
        let mut short = 100u32.to_be_bytes().to_vec();
        short.extend_from_slice(&[0x90; 10]);
        within(what, send.write_all(&short)).await.expect("write");
        send.finish().expect("finish");
        *refused.get_mut(MALFORMED).expect("a known counter") += 1;
        wait_metric(node.metrics, MALFORMED, refused[MALFORMED]).await;
        still_serves(what, &conn).await;
        println!("{what}: counted in {MALFORMED}");
        conn.close();
        endpoint.close();

        // As a node, on channels (unidirectional streams): a bad channel header, and bad
        // frames after a good header.
        let (endpoint, conn) = node.connect_as("node-2").await;
        for case in cases() {
            let what = format!("{} as a channel header", case.what);
            let mut send = conn.quic().open_uni().await.expect("open a channel");
            let code = stop_code(&what, &mut send, &case.bytes).await;
            assert_eq!(code, case.code, "{what}: stop code");
            *refused.get_mut(case.counter).expect("a known counter") += 1;
            wait_metric(node.metrics, case.counter, refused[case.counter]).await;
            println!(
                "{what}: stopped with code {code}, counted in {}",
                case.counter
            );

            let what = format!("{} on a channel", case.what);
            let mut send = conn.quic().open_uni().await.expect("open a channel");
            let header = frame::encode(&ChannelHeader::Results, DEFAULT_MAX_FRAME_BYTES)
                .expect("encode a header");
            let mut bytes = header;
            bytes.extend_from_slice(&case.bytes);
            let code = stop_code(&what, &mut send, &bytes).await;
            assert_eq!(code, case.code, "{what}: stop code");
            *refused.get_mut(case.counter).expect("a known counter") += 1;
            wait_metric(node.metrics, case.counter, refused[case.counter]).await;
            node.assert_running();
            println!(
                "{what}: stopped with code {code}, counted in {}",
                case.counter
            );
        }
        conn.close();
        endpoint.close();

        // Counted exactly once each, and nothing else was.
        for (counter, count) in &refused {
            assert_eq!(
                metric(node.metrics, counter).await,
                *count,
                "{counter}: every refusal counted once"
            );
        }
        // The node is up, serves, and lost nothing.
        node.assert_running();
        let balance = client
            .call::<Balance>(&BalanceArgs { account })
            .await
            .expect("a balance read after the bad input");
        assert_eq!(
            balance.balance_cents, expected,
            "the deposit made before the bad input"
        );
        client.close();
    });
}

// ---------------------------------------------------------------------------------------
// Bad calls.
// ---------------------------------------------------------------------------------------

/// `txn`'s MessagePack encoding with one stray byte appended to `key` wherever it appears:
/// a key that is not a well-formed tuple, as a hostile client can send it.
fn with_stray_byte(txn: &KvTxn, key: &Key) -> Vec<u8> {
    let bytes = codec::encode(txn);
    let raw = key.as_bytes();
    let len = u8::try_from(raw.len()).expect("a short key");
    let mut good = vec![0xc4, len];
    good.extend_from_slice(raw);
    let mut bad = vec![0xc4, len + 1];
    bad.extend_from_slice(raw);
    bad.push(0x77);
    let at = bytes
        .windows(good.len())
        .position(|w| w == good.as_slice())
        .expect("the key is encoded as bin8");
    [&bytes[..at], &bad[..], &bytes[at + good.len()..]].concat()
}

#[test]
fn bad_calls_are_rejected_with_a_reason() {
    run(Duration::from_secs(60), async |node| {
        let client = node.client().await;
        node.wait_ready(&client).await;
        let account = 5;
        let deposit = DepositArgs {
            account,
            amount_cents: 777,
        };
        client
            .call::<Deposit>(&deposit)
            .await
            .expect("a deposit before the bad calls");
        let expected = BankConfig::default().initial_balance_cents + deposit.amount_cents;

        let mut too_many = KvTxn::new();
        for i in 0..4_097 {
            too_many = too_many.get(kv::key(i));
        }
        let unknown =
            |r: &Rejection| matches!(r, Rejection::UnknownProcedure(n) if n == "bank.embezzle");
        let bad_args = |r: &Rejection| matches!(r, Rejection::BadArgs(_));
        let too_large = |r: &Rejection| {
            matches!(
                r,
                Rejection::FootprintTooLarge {
                    entries: 4_097,
                    max: 4_096
                }
            )
        };
        let unauthorized = |r: &Rejection| matches!(r, Rejection::Unauthorized(_));
        let bad_key = |r: &Rejection| matches!(r, Rejection::BadKey(_) | Rejection::BadArgs(_));
        let call_too_large = |r: &Rejection| matches!(r, Rejection::CallTooLarge { .. });
        type Expect = fn(&Rejection) -> bool;
        let calls: Vec<(&str, &str, Vec<u8>, Expect)> = vec![
            (
                "an unknown procedure",
                "bank.embezzle",
                codec::encode(&DepositArgs {
                    account: 1,
                    amount_cents: 1,
                }),
                unknown,
            ),
            (
                "arguments that are not MessagePack",
                "bank.deposit",
                vec![0xc1],
                bad_args,
            ),
            (
                "arguments of the wrong type",
                "bank.transfer",
                codec::encode(&"all of it"),
                bad_args,
            ),
            ("no arguments at all", "bank.balance", Vec::new(), bad_args),
            (
                "a footprint over the limit",
                "kv.txn",
                codec::encode(&too_many),
                too_large,
            ),
            (
                "kv.txn on a table it may not touch",
                "kv.txn",
                codec::encode(&KvTxn::new().put(Key::table("acct").u64(account), vec![1])),
                unauthorized,
            ),
            (
                "kv.txn on the system table",
                "kv.txn",
                codec::encode(&KvTxn::new().put(Key::table(SYSTEM_TABLE).str("results"), vec![])),
                unauthorized,
            ),
            (
                "a malformed key (a stray byte after the last field)",
                "kv.txn",
                with_stray_byte(&KvTxn::new().put(kv::key(5), b"x".to_vec()), &kv::key(5)),
                bad_key,
            ),
            (
                "a call over the size limit",
                "bank.deposit",
                vec![0x90; 1_100_000],
                call_too_large,
            ),
        ];
        for (what, procedure, args, expect) in calls {
            let before = node.commit_epoch(&client).await;
            let result = client.call_raw(procedure, args).await;
            assert!(
                matches!(&result, Err(CallError::Rejected(r)) if expect(r)),
                "{what}: expected a typed rejection, got {result:?}"
            );
            // A rejected call is never ordered: nothing else runs, so no epoch closes.
            let after = node.commit_epoch(&client).await;
            assert_eq!(before, after, "{what}: a rejected call was ordered");
            node.assert_running();
            println!(
                "{what}: {}",
                result.err().map(|e| e.to_string()).unwrap_or_default()
            );
        }

        // For contrast: arguments that decode but that the procedure refuses are ordered
        // and abort deterministically, changing nothing.
        let result = client
            .call::<Deposit>(&DepositArgs {
                account,
                amount_cents: -5,
            })
            .await;
        assert!(
            matches!(&result, Err(CallError::Aborted(AbortReason::User(_)))),
            "a negative deposit: {result:?}"
        );
        println!(
            "a negative deposit: {}",
            result.err().map(|e| e.to_string()).unwrap_or_default()
        );

        // The node is up and lost nothing, and nothing it stored keeps it from starting
        // again (a malformed key once did: "corrupt key" at every start).
        let balance = client
            .call::<Balance>(&BalanceArgs { account })
            .await
            .expect("a balance read after the bad calls");
        assert_eq!(balance.balance_cents, expected);
        node.assert_running();
        client.close();
        node.restart();
        let client = node.client().await;
        node.wait_ready(&client).await;
        let balance = client
            .call::<Balance>(&BalanceArgs { account })
            .await
            .expect("a balance read after a restart");
        assert_eq!(balance.balance_cents, expected);
        node.assert_running();
        client.close();
    });
}

/// A node started with another node's certificate would have every message it sends dropped
/// by its peers as an impostor's; it refuses to start instead, and says why.
#[test]
fn a_node_refuses_to_start_with_another_nodes_certificate() {
    let mut node = SingleNode::start();
    let cluster = &mut node.cluster;
    cluster.kill(1).expect("SIGKILL the node");
    let config = cluster.at(1).config_path().to_owned();
    let own = cluster
        .certs()
        .node(1)
        .expect("node-1's certificate")
        .clone();
    let other = cluster
        .certs()
        .node(2)
        .expect("node-2's certificate")
        .clone();
    let text = std::fs::read_to_string(&config).expect("read the config");
    let swapped = text
        .replace(
            &own.cert.display().to_string(),
            &other.cert.display().to_string(),
        )
        .replace(
            &own.key.display().to_string(),
            &other.key.display().to_string(),
        );
    assert_ne!(text, swapped, "the config names node-1's certificate");
    std::fs::write(&config, swapped).expect("write the config");
    cluster.start_node(1).expect("start the node");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if !cluster.is_running(1).expect("poll the node") {
            break cluster.reap(1).expect("reap the node");
        }
        assert!(Instant::now() < deadline, "the node kept running");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success(), "the node exited with {status}");
    let log = std::fs::read_to_string(cluster.at(1).log_path()).expect("read the log");
    assert!(
        log.contains("is not node 1's certificate (it names node 2)"),
        "the log says why: {log}"
    );
}
