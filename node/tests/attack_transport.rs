//! Attacks on the transport of a running node (a `detflow` process on 127.0.0.1: one
//! replica, a gateway, two partitions), DESIGN.md §10c, issue #9. Every attack runs while a
//! legitimate client (a certificate of its own) keeps calling `bank.balance`.
//!
//! - `a_handshake_flood_does_not_keep_clients_out`: for several seconds, fresh UDP sockets
//!   send a real captured QUIC Initial (1,200 bytes) or 1,200 bytes of garbage, hundreds a
//!   second, reading no replies; meanwhile a stream of real handshakes is stalled inside
//!   the node (a relay passes the client its Retry and then nothing more). Every
//!   legitimate connect completes within 2 s and every call succeeds; the Initials are
//!   answered with stateless Retries and the stalled handshakes time out, both counted.
//! - `a_stream_flood_is_cut_and_its_memory_given_back`: three client connections each open
//!   64 request streams that announce a 16 MiB frame and send bytes without end. The
//!   node's RSS (`/proc/<pid>/status`) stays within 200 MiB of its baseline, every stream
//!   is stopped (most by the connection's budget for partial frames, the rest by the read
//!   deadline; all counted), the legitimate client is served throughout, and RSS comes
//!   back down afterwards. A second flood peaks no higher than the first (plus 48 MiB):
//!   what was freed is reused, not added to.
//! - `connections_over_the_per_client_cap_are_refused`: one client certificate opens the
//!   256 connections it may hold and then more; each one over the cap is closed with
//!   `CONNECTION_LIMIT` and counted, another certificate is still served, and a closed
//!   connection gives its place back.
//!
//! Every test stops by itself (deadlines on every step, a budget on the whole), runs on
//! loopback only, and kills its node on drop (the cluster guard SIGKILLs it;
//! `--exit-on-stdin-eof` covers a killed test process). The tests run one at a time, since
//! they measure a node's memory and latency on a small machine.

// The tests own the clock.
#![allow(clippy::disallowed_methods)]

mod common;

use common::cluster::{
    Cluster, TestCluster, metrics_of, quick_policy, runtime, serial, wait_for_leader, with_budget,
};
use detflow_client::{Client, RetryPolicy, Tls};
use detflow_node::certs::{self, CertKind};
use detflow_node::transport::{CONNECTION_LIMIT, Connection, Endpoint, Limits, TransportError};
use detflow_workloads::bank::{Balance, BalanceArgs};
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;

/// The budget of one step that should be quick.
const STEP: Duration = Duration::from_secs(5);
/// How long a legitimate connect (or call) may take while the node is under attack.
const LEGIT_BOUND: Duration = Duration::from_secs(2);

const RETRIED: &str = "detflow_transport_handshakes_retried_total";
const TIMED_OUT: &str = "detflow_transport_handshakes_timed_out_total";
const OVER_BUDGET: &str = "detflow_transport_frames_rejected_over_budget_total";
const FRAME_TIMED_OUT: &str = "detflow_transport_frames_timed_out_total";
const MALFORMED: &str = "detflow_transport_frames_rejected_malformed_total";
const REFUSED_LIMIT: &str = "detflow_transport_connections_refused_limit_total";

async fn within<F: Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(STEP, f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

async fn metric(addr: SocketAddr, name: &str) -> u64 {
    common::metric(addr, name)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A one-node cluster, ready to serve, and a second client certificate (`client-2`) for
/// the legitimate client, so that what the attacker's certificate is refused never
/// touches it.
async fn start() -> Cluster {
    let mut cluster = common::cluster::start(1, 2, "bank");
    certs::issue(&cluster.certs().dir, "client-2", CertKind::Client).expect("issue client-2");
    let status = legit_client(&cluster).await;
    wait_for_leader(&mut cluster, &status, &[1], Duration::from_secs(30)).await;
    status.close();
    cluster
}

fn legit_tls(cluster: &Cluster) -> Tls {
    Tls::from_dir(&cluster.certs().dir, "client-2").expect("load client-2")
}

/// A client session with the legitimate certificate that gives up quickly.
async fn legit_client(cluster: &Cluster) -> Client {
    Client::connect(cluster.gateways(), legit_tls(cluster))
        .await
        .expect("start a client")
        .with_policy(quick_policy())
}

/// A fresh session (a fresh endpoint, so a fresh connection and handshake) that calls
/// `bank.balance` once; returns how long that took.
async fn legit_call(cluster: &Cluster) -> Duration {
    let started = Instant::now();
    let client = Client::connect(cluster.gateways(), legit_tls(cluster))
        .await
        .expect("start a client")
        .with_policy(RetryPolicy {
            attempt_timeout: LEGIT_BOUND,
            backoff: Duration::from_millis(10),
            backoff_max: Duration::from_millis(10),
            attempts_max: 1,
        });
    let result = client.call::<Balance>(&BalanceArgs { account: 1 }).await;
    client.close();
    let took = started.elapsed();
    result.unwrap_or_else(|e| panic!("a legitimate call failed after {took:?}: {e}"));
    took
}

/// A raw transport endpoint with the legitimate certificate.
fn endpoint(tls: &Tls) -> Endpoint {
    Endpoint::bind(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        tls,
        Limits::default(),
    )
    .expect("bind a test endpoint")
}

/// The node's resident set, from `/proc/<pid>/status`.
fn rss_bytes(cluster: &Cluster) -> u64 {
    let pid = cluster.at(1).pid().expect("the node runs");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|kib| kib.trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status");
    kib * 1024
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

// ---------------------------------------------------------------------------------------
// Handshake flood.
// ---------------------------------------------------------------------------------------

/// The first datagram a real QUIC client sends: its Initial, with a ClientHello, padded
/// to 1,200 bytes. Captured by pointing a client at a socket that never answers.
async fn captured_initial(ca: &std::path::Path) -> Vec<u8> {
    let sink = UdpSocket::bind("127.0.0.1:0").await.expect("bind a sink");
    let addr = sink.local_addr().expect("local address");
    let client = endpoint(&Tls::no_client_cert(ca).expect("load the CA"));
    let connecting = {
        let client = client.clone();
        tokio::spawn(async move { client.connect(addr).await.map(|_| ()) })
    };
    let mut buf = vec![0u8; 65536];
    let (n, _) = within("capture an Initial", sink.recv_from(&mut buf))
        .await
        .expect("receive the Initial");
    connecting.abort();
    client.close();
    buf.truncate(n);
    buf
}

/// A UDP relay in front of `server` that passes everything from clients but only the
/// first datagram from the server to each client (its Retry): the client comes back with
/// its token, the node starts the handshake, and the client never hears of it again, so
/// the handshake stalls inside the node until the node gives up on it.
async fn stalling_relay(server: SocketAddr) -> SocketAddr {
    let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind a relay"));
    let addr = front.local_addr().expect("local address");
    tokio::spawn(async move {
        let mut backs: BTreeMap<SocketAddr, Arc<UdpSocket>> = BTreeMap::new();
        let mut buf = vec![0u8; 65536];
        while let Ok((n, client)) = front.recv_from(&mut buf).await {
            let back = match backs.get(&client) {
                Some(back) => back.clone(),
                None => {
                    let Ok(back) = UdpSocket::bind("127.0.0.1:0").await else {
                        continue;
                    };
                    let back = Arc::new(back);
                    if back.connect(server).await.is_err() {
                        continue;
                    }
                    backs.insert(client, back.clone());
                    let (back2, front2) = (back.clone(), front.clone());
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 65536];
                        let mut passed = false;
                        while let Ok(n) = back2.recv(&mut buf).await {
                            if !passed {
                                passed = true;
                                let _ = front2.send_to(&buf[..n], client).await;
                            }
                        }
                    });
                    back
                }
            };
            let _ = back.send(&buf[..n]).await;
        }
    });
    addr
}

#[test]
fn a_handshake_flood_does_not_keep_clients_out() {
    let _serial = serial();
    runtime().block_on(async {
        let mut cluster = start().await;
        with_budget(Duration::from_secs(90), handshake_flood(&mut cluster)).await;
    });
}

async fn handshake_flood(cluster: &mut Cluster) {
    let node = cluster.at(1);
    let (addr, metrics) = (node.addr(), metrics_of(node));
    let initial = captured_initial(&cluster.certs().ca.cert).await;
    assert!(
        initial.len() >= 1200,
        "an Initial of {} bytes",
        initial.len()
    );
    let retried_before = metric(metrics, RETRIED).await;
    let timed_out_before = metric(metrics, TIMED_OUT).await;

    let attack_time = Duration::from_secs(8);
    let stop = Arc::new(AtomicBool::new(false));
    // Hundreds of datagrams a second, each from a fresh socket that reads no reply: every
    // other one the captured Initial, the others garbage of the same size.
    let sent = Arc::new(AtomicU64::new(0));
    let flood = {
        let (stop, sent, initial) = (stop.clone(), sent.clone(), initial.clone());
        tokio::spawn(async move {
            let garbage: Vec<u8> = (0..initial.len()).map(|i| (i * 131 % 251) as u8).collect();
            let mut tick = tokio::time::interval(Duration::from_millis(2));
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let Ok(socket) = UdpSocket::bind("127.0.0.1:0").await else {
                    continue;
                };
                let real = n.is_multiple_of(2);
                let datagram = if real { &initial } else { &garbage };
                if socket.send_to(datagram, addr).await.is_ok() && real {
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                n += 1;
            }
        })
    };
    // Real handshakes that stall inside the node: five a second, through the relay.
    let relay = stalling_relay(addr).await;
    let stalled = Arc::new(AtomicU64::new(0));
    let staller = {
        let (stop, stalled) = (stop.clone(), stalled.clone());
        let ca = cluster.certs().ca.cert.clone();
        tokio::spawn(async move {
            let mut attempts = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let attacker = endpoint(&Tls::no_client_cert(&ca).expect("load the CA"));
                attempts.push(tokio::spawn(async move {
                    let _ = attacker.connect(relay).await;
                }));
                stalled.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            for attempt in attempts {
                attempt.abort();
            }
        })
    };

    // Meanwhile, a legitimate client connects and calls, again and again.
    let legit_tls = legit_tls(cluster);
    let started = Instant::now();
    let (mut connects, mut calls) = (Vec::new(), Vec::new());
    while started.elapsed() < attack_time {
        let client = endpoint(&legit_tls);
        let before = Instant::now();
        let conn = tokio::time::timeout(LEGIT_BOUND, client.connect(addr)).await;
        let took = before.elapsed();
        match conn {
            Ok(Ok(conn)) => conn.close(),
            Ok(Err(e)) => panic!("a legitimate connect failed after {took:?}: {e}"),
            Err(_) => panic!("a legitimate connect took over {LEGIT_BOUND:?}"),
        }
        client.close();
        connects.push(took);
        calls.push(legit_call(cluster).await);
        cluster.assert_running();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    within("the flood stops", flood)
        .await
        .expect("the flood task");
    within("the staller stops", staller)
        .await
        .expect("the staller task");

    let slowest = |v: &[Duration]| v.iter().max().copied().unwrap_or_default();
    let initials = sent.load(Ordering::Relaxed);
    let stalled = stalled.load(Ordering::Relaxed);
    // Let the last stalled handshakes reach their timeout (3 s).
    tokio::time::sleep(Duration::from_secs(4)).await;
    let retried = metric(metrics, RETRIED).await - retried_before;
    let timed_out = metric(metrics, TIMED_OUT).await - timed_out_before;
    println!(
        "{} legitimate connects during the attack, slowest {:?}; {} calls, slowest {:?}",
        connects.len(),
        slowest(&connects),
        calls.len(),
        slowest(&calls)
    );
    println!(
        "{initials} Initials from fresh sockets and as many garbage datagrams; {stalled} \
         stalled handshakes; {RETRIED} +{retried}; {TIMED_OUT} +{timed_out}"
    );
    assert!(connects.len() >= 5, "only {} connects", connects.len());
    // Loopback may drop datagrams under a burst, but most Initials must have met a Retry.
    assert!(
        retried >= initials / 2,
        "{retried} Retries for {initials} Initials"
    );
    assert!(
        timed_out >= stalled / 2 && timed_out <= stalled,
        "{timed_out} handshakes timed out, {stalled} were stalled"
    );
    cluster.assert_running();
}

// ---------------------------------------------------------------------------------------
// Stream flood.
// ---------------------------------------------------------------------------------------

/// Opens a request stream, announces a 16 MiB frame and sends all of it but its last
/// byte, never finishing. Returns the code the node stopped the stream with (`None` if
/// the connection went away instead).
async fn flood_stream(conn: quinn::Connection, filler: Arc<Vec<u8>>) -> Option<quinn::VarInt> {
    let (mut send, _recv) = conn.open_bi().await.ok()?;
    let frame_bytes: usize = 16 << 20;
    let mut write = async |bytes: &[u8]| match send.write_all(bytes).await {
        Ok(()) => Ok(()),
        Err(quinn::WriteError::Stopped(code)) => Err(Some(code)),
        Err(_) => Err(None),
    };
    if let Err(code) = write(&(frame_bytes as u32).to_be_bytes()).await {
        return code;
    }
    let mut left = frame_bytes - 1;
    while left > 0 {
        let n = left.min(filler.len());
        if let Err(code) = write(&filler[..n]).await {
            return code;
        }
        left -= n;
    }
    send.stopped().await.ok().flatten()
}

#[test]
fn a_stream_flood_is_cut_and_its_memory_given_back() {
    let _serial = serial();
    runtime().block_on(async {
        let mut cluster = start().await;
        with_budget(Duration::from_secs(180), stream_flood(&mut cluster)).await;
    });
}

/// What one flood did to the node.
struct Flood {
    peak: u64,
    after: u64,
    settled: Duration,
}

async fn stream_flood(cluster: &mut Cluster) {
    // Warm up, then measure the baseline.
    for _ in 0..5 {
        legit_call(cluster).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let baseline = rss_bytes(cluster);
    let first = flood_once(cluster, baseline).await;
    // Again: what the node freed is reused, not added to.
    let second = flood_once(cluster, baseline).await;
    let report = |flood: &Flood| {
        format!(
            "peak {:.0} MiB (+{:.0} MiB), after {:.0} MiB (within {:.1} s)",
            mib(flood.peak),
            mib(flood.peak - baseline),
            mib(flood.after),
            flood.settled.as_secs_f64()
        )
    };
    println!(
        "node RSS: baseline {:.0} MiB; first flood {}; second flood {}",
        mib(baseline),
        report(&first),
        report(&second)
    );
    for flood in [&first, &second] {
        assert!(
            flood.peak < baseline + (200 << 20),
            "node RSS rose from {:.0} MiB to {:.0} MiB",
            mib(baseline),
            mib(flood.peak)
        );
        // The allocator keeps some of what was freed for reuse (mimalloc: measured 30 to
        // 65 MiB over the baseline after the first flood), but gives back the rest.
        assert!(
            flood.after < baseline + (96 << 20) && flood.after < flood.peak,
            "node RSS stayed at {:.0} MiB after a flood (baseline {:.0} MiB, peak {:.0} MiB)",
            mib(flood.after),
            mib(baseline),
            mib(flood.peak)
        );
    }
    assert!(
        second.peak < first.peak + (48 << 20),
        "the second flood peaked at {:.0} MiB, the first at {:.0} MiB",
        mib(second.peak),
        mib(first.peak)
    );
    legit_call(cluster).await;
    cluster.assert_running();
}

/// Three client connections with 64 streams each of a 16 MiB frame never finished, while a
/// legitimate client keeps calling; returns the node's memory during and after.
async fn flood_once(cluster: &mut Cluster, baseline: u64) -> Flood {
    let node = cluster.at(1);
    let (addr, metrics) = (node.addr(), metrics_of(node));
    let over_budget_before = metric(metrics, OVER_BUDGET).await;
    let timed_out_before = metric(metrics, FRAME_TIMED_OUT).await;
    let malformed_before = metric(metrics, MALFORMED).await;

    let (connections, streams) = (3, 64);
    let attacker_tls = cluster.client_tls().expect("load the client certificate");
    let filler = Arc::new(vec![0x01u8; 64 * 1024]);
    let mut attackers = Vec::new();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let attacker = endpoint(&attacker_tls);
        let conn = within("connect", attacker.connect(addr))
            .await
            .expect("the attacker connects");
        for _ in 0..streams {
            tasks.push(tokio::spawn(flood_stream(
                conn.quic().clone(),
                filler.clone(),
            )));
        }
        attackers.push((attacker, conn));
    }

    // Watch the node's memory and keep calling until the node has cut every stream. (Not
    // until every attacking writer has noticed: quinn reports a stopped stream to a writer
    // only once the connection's flow control lets it write again.) A stream is cut by the
    // budget or the read deadline; one whose writer gave up first (a starved test process,
    // say) ends inside its frame and is refused as malformed.
    let total = (connections * streams) as u64;
    let cut = async || {
        let over_budget = metric(metrics, OVER_BUDGET).await - over_budget_before;
        let timed_out = metric(metrics, FRAME_TIMED_OUT).await - timed_out_before;
        let cut_short = metric(metrics, MALFORMED).await - malformed_before;
        (over_budget, timed_out, cut_short)
    };
    let started = Instant::now();
    let mut peak = baseline;
    let mut calls = Vec::new();
    let deadline = started + Duration::from_secs(40);
    loop {
        let (over_budget, timed_out, cut_short) = cut().await;
        if over_budget + timed_out + cut_short >= total {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the node cut only {over_budget} + {timed_out} + {cut_short} of {total} streams in \
             40 s; RSS {:.0} MiB",
            mib(rss_bytes(cluster))
        );
        peak = peak.max(rss_bytes(cluster));
        calls.push(legit_call(cluster).await);
        peak = peak.max(rss_bytes(cluster));
        cluster.assert_running();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cut_after = started.elapsed();
    peak = peak.max(rss_bytes(cluster));
    // What the attackers heard (a writer still blocked heard nothing yet).
    let mut codes: BTreeMap<String, u64> = BTreeMap::new();
    for task in tasks {
        let heard = if task.is_finished() {
            format!("{:?}", task.await.expect("a flood task"))
        } else {
            task.abort();
            "still writing".into()
        };
        *codes.entry(heard).or_default() += 1;
    }
    let (over_budget, timed_out, cut_short) = cut().await;
    for (attacker, conn) in &attackers {
        conn.close();
        attacker.close();
    }
    println!(
        "{connections} connections x {streams} streams of a 16 MiB frame: all stopped after \
         {cut_after:?} ({codes:?}); {OVER_BUDGET} +{over_budget}, {FRAME_TIMED_OUT} \
         +{timed_out}, {MALFORMED} +{cut_short}; {} legitimate calls meanwhile, slowest {:?}",
        calls.len(),
        calls.iter().max().copied().unwrap_or_default()
    );
    // Every stream was cut, and most by the budget: a flood cannot wait for the deadline.
    assert!(
        over_budget + timed_out + cut_short >= total,
        "every stream stopped: {codes:?}"
    );
    assert!(
        over_budget >= total / 2,
        "only {over_budget} of {total} streams stopped by the budget: {codes:?}"
    );
    assert!(!calls.is_empty());

    // The memory goes back: what the node held is freed at once; the allocator returns
    // much of it to the system some seconds later (measured: about ten).
    let settle = Instant::now();
    let mut after = rss_bytes(cluster);
    while after > baseline + (64 << 20) && settle.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        after = rss_bytes(cluster);
    }
    Flood {
        peak,
        after,
        settled: settle.elapsed(),
    }
}

// ---------------------------------------------------------------------------------------
// Connection cap.
// ---------------------------------------------------------------------------------------

#[test]
fn connections_over_the_per_client_cap_are_refused() {
    let _serial = serial();
    runtime().block_on(async {
        let mut cluster = start().await;
        with_budget(Duration::from_secs(90), connection_cap(&mut cluster)).await;
    });
}

/// Whether the node closed `conn` with [`CONNECTION_LIMIT`] (waiting for it).
async fn refused_for_the_cap(conn: &Connection) -> bool {
    matches!(
        within("the close", conn.closed()).await,
        TransportError::Connection(quinn::ConnectionError::ApplicationClosed(close))
            if close.error_code == CONNECTION_LIMIT
    )
}

async fn connection_cap(cluster: &mut Cluster) {
    let node = cluster.at(1);
    let (addr, metrics) = (node.addr(), metrics_of(node));
    let cap = Limits::default().connections_per_client_max as usize;
    let refused_before = metric(metrics, REFUSED_LIMIT).await;
    let attacker_tls = cluster.client_tls().expect("load the client certificate");

    // The whole allowance, in batches that stay under the cap on handshakes in flight.
    let endpoints: Vec<Endpoint> = (0..8).map(|_| endpoint(&attacker_tls)).collect();
    let mut held: Vec<Connection> = Vec::new();
    while held.len() < cap {
        let batch = (cap - held.len()).min(16);
        let connects: Vec<_> = (0..batch)
            .map(|i| {
                let endpoint = endpoints[i % endpoints.len()].clone();
                tokio::spawn(async move { endpoint.connect(addr).await })
            })
            .collect();
        for connect in connects {
            let conn = within("a connect", connect).await.expect("a connect task");
            held.push(conn.expect("a connection within the allowance"));
        }
    }
    // Give the node time to refuse any of them, then check that none was.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let closed = held.iter().filter(|c| c.quic().close_reason().is_some());
    assert_eq!(
        closed.count(),
        0,
        "connections within the allowance were closed"
    );
    legit_call(cluster).await;

    // Beyond it, each new connection is closed with the code, and counted.
    let excess = 8;
    for i in 0..excess {
        let endpoint = &endpoints[i % endpoints.len()];
        match within("an excess connect", endpoint.connect(addr)).await {
            Ok(conn) => assert!(
                refused_for_the_cap(&conn).await,
                "connection {} over the cap was not refused with CONNECTION_LIMIT",
                i + 1
            ),
            Err(TransportError::Handshake(quinn::ConnectionError::ApplicationClosed(close))) => {
                assert_eq!(close.error_code, CONNECTION_LIMIT)
            }
            Err(e) => panic!("an excess connect failed otherwise: {e}"),
        }
    }
    let refused = metric(metrics, REFUSED_LIMIT).await - refused_before;
    assert_eq!(refused, excess as u64, "{REFUSED_LIMIT}");
    // Another certificate is served throughout.
    let took = legit_call(cluster).await;
    println!(
        "{cap} connections held by one certificate; {excess} more refused with \
         CONNECTION_LIMIT ({REFUSED_LIMIT} +{refused}); another certificate's call took {took:?}"
    );

    // A closed connection gives its place back.
    for conn in held.drain(..4) {
        conn.close();
    }
    let deadline = Instant::now() + STEP;
    loop {
        let conn = within("a connect after closing some", endpoints[0].connect(addr))
            .await
            .expect("connect");
        let refused = tokio::time::timeout(Duration::from_millis(500), conn.closed()).await;
        if refused.is_err() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "closed connections did not give their places back"
        );
    }
    for conn in &held {
        conn.close();
    }
    for endpoint in &endpoints {
        endpoint.close();
    }
    cluster.assert_running();
}
