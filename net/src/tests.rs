//! The transport end to end on 127.0.0.1: identities, address validation, concurrent
//! handshakes, caps, read deadlines and budgets. Every test stops by itself.

use crate::*;
use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::time::Instant;

/// The budget of one step that should be quick.
const STEP: Duration = Duration::from_secs(3);

async fn within<F: Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(STEP, f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// A CA in a temporary folder that issues certificates with any SAN DNS names.
struct Pki {
    dir: tempfile::TempDir,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.path().join("ca.pem"), cert.pem()).unwrap();
        Pki {
            dir,
            issuer: Issuer::new(params, key),
        }
    }

    /// Issues `name.pem`/`name.key` with SAN DNS `localhost` plus `dns`.
    fn issue(&self, name: &str, dns: &[String]) -> PathBuf {
        let mut names = vec![SERVER_NAME.to_string()];
        names.extend(dns.iter().cloned());
        let mut params = CertificateParams::new(names).unwrap();
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::ServerAuth,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let path = self.dir.path().join(format!("{name}.pem"));
        std::fs::write(&path, cert.pem()).unwrap();
        std::fs::write(
            self.dir.path().join(format!("{name}.key")),
            key.serialize_pem(),
        )
        .unwrap();
        path
    }

    fn node(&self, id: u32) -> Tls {
        let name = format!("node-{id}");
        self.issue(&name, &[NODE_DNS_NAME.into(), node_dns_name(id)]);
        self.tls(&name)
    }

    fn client(&self, name: &str) -> Tls {
        self.issue(name, &[CLIENT_DNS_NAME.into()]);
        self.tls(name)
    }

    fn tls(&self, name: &str) -> Tls {
        Tls::from_dir(self.dir.path(), name).unwrap()
    }

    fn der(&self, name: &str) -> Vec<u8> {
        let path = self.dir.path().join(format!("{name}.pem"));
        CertificateDer::from_pem_file(path).unwrap().to_vec()
    }
}

fn bind(tls: &Tls, limits: Limits) -> Endpoint {
    Endpoint::bind(SocketAddr::from(([127, 0, 0, 1], 0)), tls, limits).unwrap()
}

/// Connects `client` to `server`; returns (client's side, server's side).
async fn pair(client: &Endpoint, server: &Endpoint) -> (Connection, Connection) {
    let addr = server.local_addr().unwrap();
    let (out, inbound) = within("handshake", async {
        tokio::join!(client.connect(addr), server.accept())
    })
    .await;
    (out.unwrap(), inbound.unwrap().unwrap())
}

/// The code a connection was closed with by its peer, waiting for the close.
async fn close_code(conn: &Connection) -> Option<quinn::VarInt> {
    match within("the close", conn.closed()).await {
        TransportError::Connection(quinn::ConnectionError::ApplicationClosed(close)) => {
            Some(close.error_code)
        }
        _ => None,
    }
}

/// A UDP relay in front of `server` that passes everything from clients but only the
/// first `pass` datagrams from the server to each client: with `pass = 1` a client gets
/// the Retry, comes back with its token, and then hears nothing, so its handshake stalls
/// inside the server until the server gives up on it.
async fn stalling_relay(server: SocketAddr, pass: usize) -> SocketAddr {
    let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let addr = front.local_addr().unwrap();
    tokio::spawn(async move {
        let mut backs: BTreeMap<SocketAddr, Arc<UdpSocket>> = BTreeMap::new();
        let mut buf = vec![0u8; 65536];
        loop {
            let Ok((n, client)) = front.recv_from(&mut buf).await else {
                return;
            };
            let back = match backs.get(&client) {
                Some(back) => back.clone(),
                None => {
                    let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
                    backs.insert(client, back.clone());
                    let (back2, front2) = (back.clone(), front.clone());
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 65536];
                        let mut passed = 0;
                        while let Ok(n) = back2.recv(&mut buf).await {
                            if passed < pass {
                                passed += 1;
                                let _ = front2.send_to(&buf[..n], client).await;
                            }
                        }
                    });
                    back.connect(server).await.unwrap();
                    back
                }
            };
            let _ = back.send(&buf[..n]).await;
        }
    });
    addr
}

/// Starts a handshake through a stalling relay that the server holds until its timeout.
async fn stalled_handshake(server: &Endpoint, pki: &Pki) -> Endpoint {
    let relay = stalling_relay(server.local_addr().unwrap(), 1).await;
    let endpoint = bind(&pki.client("stalled"), Limits::default());
    let connecting = endpoint.clone();
    tokio::spawn(async move {
        let _ = connecting.connect(relay).await;
    });
    endpoint
}

async fn wait_until(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + STEP;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[test]
fn identities_come_from_the_san() {
    let pki = Pki::new();
    let node = |name: &str, dns: Vec<String>| {
        let mut names = vec![NODE_DNS_NAME.to_string()];
        names.extend(dns);
        pki.issue(name, &names);
        PeerIdentity::of_certificate(&pki.der(name))
    };
    let seven = node("seven", vec![node_dns_name(7)]).unwrap();
    assert_eq!(seven.role, PeerRole::Node);
    assert_eq!(seven.node_id, Some(7));
    assert_eq!(
        seven.fingerprint,
        *blake3::hash(&pki.der("seven")).as_bytes()
    );
    assert_eq!(node("none", vec![]), Err(RoleError::NodeId { names: 0 }));
    assert_eq!(
        node("two", vec![node_dns_name(1), node_dns_name(2)]),
        Err(RoleError::NodeId { names: 2 })
    );
    assert_eq!(
        node("same-twice", vec![node_dns_name(1), node_dns_name(1)]),
        Err(RoleError::NodeId { names: 2 })
    );
    assert_eq!(
        node("zero-padded", vec!["node-01.node.detflow".into()]),
        Err(RoleError::NodeIdMalformed("node-01.node.detflow".into()))
    );

    pki.issue("client", &[CLIENT_DNS_NAME.into()]);
    let client = PeerIdentity::of_certificate(&pki.der("client")).unwrap();
    assert_eq!((client.role, client.node_id), (PeerRole::Client, None));
    assert!(!client.operator);
    pki.issue(
        "operator",
        &[CLIENT_DNS_NAME.into(), OPERATOR_DNS_NAME.into()],
    );
    let operator = PeerIdentity::of_certificate(&pki.der("operator")).unwrap();
    assert_eq!((operator.role, operator.operator), (PeerRole::Client, true));
    // Only a client is an operator: a node naming the operator is a node.
    pki.issue(
        "node-as-operator",
        &[
            NODE_DNS_NAME.into(),
            node_dns_name(4),
            OPERATOR_DNS_NAME.into(),
        ],
    );
    let node = PeerIdentity::of_certificate(&pki.der("node-as-operator")).unwrap();
    assert_eq!((node.role, node.operator), (PeerRole::Node, false));
    pki.issue(
        "client-as-node",
        &[CLIENT_DNS_NAME.into(), node_dns_name(3)],
    );
    assert_eq!(
        PeerIdentity::of_certificate(&pki.der("client-as-node")),
        Err(RoleError::Ambiguous)
    );
    // Our own identity, for a node to check against its configuration.
    assert_eq!(pki.node(4).node_id(), Some(4));
    assert_eq!(pki.client("c").node_id(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_sides_learn_who_the_peer_is_and_a_node_without_an_id_is_refused() {
    let pki = Pki::new();
    let server = bind(&pki.node(1), Limits::default());
    let peer = bind(&pki.node(2), Limits::default());
    let (out, inbound) = pair(&peer, &server).await;
    assert_eq!((out.role(), out.node_id()), (PeerRole::Node, Some(1)));
    assert_eq!(
        (inbound.role(), inbound.node_id()),
        (PeerRole::Node, Some(2))
    );
    assert_eq!(
        inbound.peer_fingerprint(),
        *blake3::hash(&pki.der("node-2")).as_bytes()
    );

    let client = bind(&pki.client("client"), Limits::default());
    let (out, inbound) = pair(&client, &server).await;
    assert_eq!(out.node_id(), Some(1));
    assert_eq!(
        (inbound.role(), inbound.node_id()),
        (PeerRole::Client, None)
    );
    assert_eq!(
        inbound.peer_fingerprint(),
        *blake3::hash(&pki.der("client")).as_bytes()
    );

    // A node certificate of the right CA that names no node id.
    pki.issue("anonymous-node", &[NODE_DNS_NAME.into()]);
    let anonymous = bind(&pki.tls("anonymous-node"), Limits::default());
    let addr = server.local_addr().unwrap();
    let (out, inbound) = within("anonymous node", async {
        tokio::join!(anonymous.connect(addr), server.accept())
    })
    .await;
    let error = inbound.unwrap().unwrap_err();
    assert!(
        matches!(error, TransportError::Role(RoleError::NodeId { names: 0 })),
        "{error}"
    );
    if let Ok(conn) = out {
        assert_eq!(close_code(&conn).await, Some(ROLE_REFUSED));
    }
    assert_eq!(server.metrics().handshakes_refused(), 1);
    // Every first attempt from an address was sent a Retry.
    assert_eq!(server.metrics().handshakes_retried(), 3);
    assert_eq!(server.metrics().connections_accepted(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_handshake_does_not_delay_the_next_and_times_out() {
    let pki = Pki::new();
    let limits = Limits {
        handshake_timeout: Duration::from_millis(1500),
        ..Limits::default()
    };
    let server = bind(&pki.node(1), limits);
    let metrics = server.metrics();
    // Start accepting, then stall one handshake inside the server.
    let accepting = server.clone();
    let (sender, mut accepted) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(result) = accepting.accept().await {
            let _ = sender.send(result.map(|conn| conn.node_id()));
        }
    });
    let _stalled = stalled_handshake(&server, &pki).await;
    wait_until("the stalled handshake", || {
        metrics.handshakes_in_flight() == 1
    })
    .await;

    // A good peer gets through at once, while the other handshake is still stuck.
    let peer = bind(&pki.node(2), Limits::default());
    let started = Instant::now();
    let conn = within("connect", peer.connect(server.local_addr().unwrap()))
        .await
        .unwrap();
    let first = within("accept", accepted.recv()).await.unwrap();
    assert_eq!(first.unwrap(), Some(2));
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(metrics.handshakes_in_flight(), 1);
    assert_eq!(conn.node_id(), Some(1));

    // The stalled one is given up at its timeout, counted, and reported.
    let second = within("the timeout", accepted.recv()).await.unwrap();
    assert!(
        matches!(
            second,
            Err(TransportError::Handshake(quinn::ConnectionError::TimedOut))
        ),
        "{second:?}"
    );
    assert_eq!(metrics.handshakes_timed_out(), 1);
    assert_eq!(metrics.handshakes_refused(), 1);
    assert_eq!(metrics.handshakes_in_flight(), 0);
    assert_eq!(metrics.connections_accepted(), 1);
    // Both clients were retried: the stalled one, and the good one.
    assert_eq!(metrics.handshakes_retried(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_beyond_the_cap_are_refused_at_once() {
    let pki = Pki::new();
    let limits = Limits {
        handshakes_in_flight_max: 1,
        handshake_timeout: Duration::from_millis(1000),
        ..Limits::default()
    };
    let server = bind(&pki.node(1), limits);
    let metrics = server.metrics();
    let accepting = server.clone();
    tokio::spawn(async move { while accepting.accept().await.is_some() {} });
    let _stalled = stalled_handshake(&server, &pki).await;
    wait_until("the stalled handshake", || {
        metrics.handshakes_in_flight() == 1
    })
    .await;

    let peer = bind(&pki.node(2), Limits::default());
    let addr = server.local_addr().unwrap();
    let refused = within("a refused connect", peer.connect(addr)).await;
    assert!(
        matches!(
            refused,
            Err(TransportError::Handshake(
                quinn::ConnectionError::ConnectionClosed(_)
            ))
        ),
        "{refused:?}"
    );
    assert_eq!(metrics.handshakes_refused_busy(), 1);

    // Once the stalled handshake is given up, there is room again.
    wait_until("the timeout", || metrics.handshakes_in_flight() == 0).await;
    let conn = within("connect", peer.connect(addr)).await.unwrap();
    assert_eq!(conn.node_id(), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_capped_per_client_per_node_and_for_all_clients() {
    let pki = Pki::new();
    let limits = Limits {
        connections_per_client_max: 2,
        connections_per_node_max: 1,
        connections_max: 3,
        ..Limits::default()
    };
    let server = bind(&pki.node(1), limits);
    let metrics = server.metrics();
    let addr = server.local_addr().unwrap();
    let accepting = server.clone();
    let (sender, mut accepted) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(result) = accepting.accept().await {
            let _ = sender.send(result);
        }
    });
    // Connects `endpoint`; the server must refuse it for a cap, with the code.
    let refused = async |endpoint: &Endpoint,
                         accepted: &mut tokio::sync::mpsc::UnboundedReceiver<_>| {
        let out = within("connect", endpoint.connect(addr)).await.unwrap();
        let inbound: Result<Connection, TransportError> =
            within("accept", accepted.recv()).await.unwrap();
        assert!(
            matches!(inbound, Err(TransportError::ConnectionLimit(_))),
            "{inbound:?}"
        );
        assert_eq!(close_code(&out).await, Some(CONNECTION_LIMIT));
    };
    let client = bind(&pki.client("client"), Limits::default());

    // Two connections from one client certificate; the third is closed with the code.
    let mut kept = Vec::new();
    for _ in 0..2 {
        let out = within("connect", client.connect(addr)).await.unwrap();
        let inbound = within("accept", accepted.recv()).await.unwrap().unwrap();
        kept.push((out, inbound));
    }
    refused(&client, &mut accepted).await;
    assert_eq!(metrics.connections_refused_limit(), 1);
    assert_eq!(metrics.connections_open(), 2);

    // Another client certificate has its own allowance, but all clients together have
    // three.
    let other = bind(&pki.client("other"), Limits::default());
    let _other_out = within("connect", other.connect(addr)).await.unwrap();
    let _other_in = within("accept", accepted.recv()).await.unwrap().unwrap();
    refused(&other, &mut accepted).await;
    assert_eq!(metrics.connections_refused_limit(), 2);

    // Nodes are not crowded out by clients; one connection per node id.
    let node = bind(&pki.node(2), Limits::default());
    let _node_out = within("connect", node.connect(addr)).await.unwrap();
    let _node_in = within("accept", accepted.recv()).await.unwrap().unwrap();
    assert_eq!(metrics.connections_open(), 4);
    let again = bind(&pki.node(2), Limits::default());
    refused(&again, &mut accepted).await;
    assert_eq!(metrics.connections_refused_limit(), 3);
    assert_eq!(metrics.connections_open(), 4);

    // A closed connection gives its place back, even while its handles are held.
    let (out, inbound) = &kept[0];
    out.close();
    assert!(matches!(
        within("closed", inbound.accept_bi()).await,
        Err(TransportError::Connection(_))
    ));
    assert_eq!(metrics.connections_open(), 3);
    let _other_again_out = within("connect", other.connect(addr)).await.unwrap();
    let _other_again_in = within("accept", accepted.recv()).await.unwrap().unwrap();
    assert_eq!(metrics.connections_open(), 4);
    assert_eq!(metrics.connections_accepted(), 5);
    drop(kept);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_cannot_open_channels_and_nodes_can() {
    let pki = Pki::new();
    let server = bind(&pki.node(1), Limits::default());
    let client = bind(&pki.client("client"), Limits::default());
    let (out, _inbound) = pair(&client, &server).await;
    let waited = tokio::time::timeout(Duration::from_millis(300), out.quic().open_uni()).await;
    assert!(waited.is_err(), "a client was allowed to open a channel");

    let node = bind(&pki.node(2), Limits::default());
    let (out, inbound) = pair(&node, &server).await;
    let mut writer = within("open a channel", out.open_channel(&"hello"))
        .await
        .unwrap();
    writer.send(&1u32).await.unwrap();
    let (header, mut reader) = within("accept a channel", inbound.accept_channel::<String>())
        .await
        .unwrap();
    assert_eq!(header, "hello");
    assert_eq!(within("recv", reader.recv::<u32>()).await.unwrap(), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_frames_are_cut_but_idle_channels_are_not() {
    let pki = Pki::new();
    let timeout = Duration::from_millis(400);
    let limits = Limits {
        frame_read_timeout: timeout,
        ..Limits::default()
    };
    let server = bind(&pki.node(1), limits);
    let metrics = server.metrics();

    // A request whose frame starts and never ends.
    let client = bind(&pki.client("client"), Limits::default());
    let (out, inbound) = pair(&client, &server).await;
    let (mut send, _recv) = out.quic().open_bi().await.unwrap();
    send.write_all(&[0, 0, 1, 0, 0x92]).await.unwrap();
    let (_writer, mut reader) = within("accept", inbound.accept_bi()).await.unwrap();
    let started = Instant::now();
    let error = within("recv", reader.recv::<u32>()).await.unwrap_err();
    assert!(
        matches!(error, TransportError::FrameTimeout { .. }),
        "{error}"
    );
    assert!(started.elapsed() >= timeout - Duration::from_millis(50));
    assert_eq!(
        within("stopped", send.stopped()).await.unwrap(),
        Some(READ_TIMEOUT)
    );
    assert_eq!(metrics.frames_timed_out(), 1);
    assert!(reader.recv::<u32>().await.is_err());

    // A frame that trickles in, a byte at a time, beyond the deadline.
    let (mut send, _recv) = out.quic().open_bi().await.unwrap();
    send.write_all(&[0, 0, 1, 0]).await.unwrap();
    let (_writer, mut reader) = within("accept", inbound.accept_bi()).await.unwrap();
    let trickle = tokio::spawn(async move {
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if send.write_all(&[1]).await.is_err() {
                break;
            }
        }
    });
    let error = within("recv", reader.recv::<u32>()).await.unwrap_err();
    assert!(
        matches!(error, TransportError::FrameTimeout { .. }),
        "{error}"
    );
    trickle.abort();
    assert_eq!(metrics.frames_timed_out(), 2);

    // A channel may idle between frames for longer than the timeout.
    let node = bind(&pki.node(2), Limits::default());
    let (out, inbound) = pair(&node, &server).await;
    let mut writer = out.open_channel(&"idle").await.unwrap();
    writer.send(&1u32).await.unwrap();
    let (_, mut reader) = within("accept", inbound.accept_channel::<String>())
        .await
        .unwrap();
    assert_eq!(reader.recv::<u32>().await.unwrap(), Some(1));
    let later = async {
        tokio::time::sleep(timeout * 2).await;
        writer.send(&2u32).await
    };
    let (sent, received) = within("idle channel", async {
        tokio::join!(later, reader.recv::<u32>())
    })
    .await;
    sent.unwrap();
    assert_eq!(received.unwrap(), Some(2));
    assert_eq!(metrics.frames_timed_out(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_frames_share_a_budget_per_connection() {
    let pki = Pki::new();
    let frame_bytes_max = 64 * 1024;
    let budget = u64::from(frame_bytes_max) + 4 + 64 * 1024;
    let limits = Limits {
        frame_bytes_max,
        client_connection_buffer_bytes_max: budget,
        ..Limits::default()
    };
    let server = bind(&pki.node(1), limits);
    let metrics = server.metrics();
    let client = bind(&pki.client("client"), Limits::default());
    let (out, inbound) = pair(&client, &server).await;

    // Three streams, each announcing a frame just under the limit (an array of ones) and
    // sending all but its last byte: any two fit in the budget, three do not.
    let frame_len: u32 = 60_001;
    let elements = frame_len - 5;
    let mut prefix = frame_len.to_be_bytes().to_vec();
    prefix.push(0xdd);
    prefix.extend(elements.to_be_bytes());
    prefix.extend(std::iter::repeat_n(1u8, elements as usize - 1));
    let held = prefix.len() as u64;
    let mut sends = Vec::new();
    let mut readers = Vec::new();
    for _ in 0..3 {
        let (mut send, _recv) = out.quic().open_bi().await.unwrap();
        send.write_all(&prefix).await.unwrap();
        let (_writer, reader) = within("accept", inbound.accept_bi()).await.unwrap();
        sends.push(send);
        readers.push(reader);
    }
    let mut tasks = Vec::new();
    for mut reader in readers {
        tasks.push(tokio::spawn(async move {
            let result = reader.recv::<Vec<u8>>().await;
            (result, reader)
        }));
    }
    // Readers run at once, so two of them may find the budget full at the same moment
    // (each before the other has given its bytes back) and both be refused: the budget
    // refuses what would overdraw it when asked, it does not queue.
    wait_until("a refusal", || metrics.frames_rejected_over_budget() >= 1).await;
    let mut refused = Vec::new();
    for (i, send) in sends.iter().enumerate() {
        if let Ok(Ok(code)) = tokio::time::timeout(Duration::from_millis(100), send.stopped()).await
        {
            assert_eq!(code, Some(FRAME_TOO_LARGE));
            refused.push(i);
        }
    }
    assert!(
        (1..=2).contains(&refused.len()),
        "refused {refused:?}: three streams never fit, two always do"
    );
    assert_eq!(metrics.frames_rejected_over_budget(), refused.len() as u64);
    assert!(inbound.buffered_bytes() <= budget);
    assert!(inbound.buffered_bytes() >= (3 - refused.len() as u64) * held);

    // The others complete when their last byte arrives, and give their bytes back.
    for (i, send) in sends.iter_mut().enumerate() {
        if !refused.contains(&i) {
            send.write_all(&[1]).await.unwrap();
        }
    }
    for (i, task) in tasks.into_iter().enumerate() {
        let (result, reader) = within("a reader", task).await.unwrap();
        if refused.contains(&i) {
            assert!(
                matches!(result, Err(TransportError::BufferBudget { .. })),
                "{result:?}"
            );
        } else {
            assert_eq!(result.unwrap().unwrap().len(), elements as usize);
        }
        drop(reader);
    }
    assert_eq!(inbound.buffered_bytes(), 0);
}
