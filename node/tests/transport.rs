//! The QUIC transport end to end on 127.0.0.1: mutual TLS, roles, channels, and refusal of
//! bad peers and bad frames. Every test finishes by itself within a few seconds.

use detflow_node::certs::{self, CertKind};
use detflow_node::transport::{
    Connection, Endpoint, FRAME_TOO_LARGE, Limits, MALFORMED_FRAME, PeerRole, ROLE_REFUSED, Tls,
    TransportError,
};
use detflow_protocol::frame::{self, DEFAULT_MAX_FRAME_BYTES, FrameError};
use detflow_protocol::message::{Call, Message};
use detflow_protocol::{ClientId, RequestSeq};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// Each test's whole budget.
const TEST_TIME: Duration = Duration::from_secs(10);
/// The budget of one step that should be quick.
const STEP_TIME: Duration = Duration::from_secs(3);

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Header {
    from: String,
    to: String,
    channel: String,
}

fn header(channel: &str) -> Header {
    Header {
        from: "sequencer".into(),
        to: "scheduler".into(),
        channel: channel.into(),
    }
}

fn call(seq: u64) -> Message {
    call_with_args(seq, Vec::new())
}

fn call_with_args(seq: u64, args: Vec<u8>) -> Message {
    Message::Call(Call {
        client: ClientId(7),
        seq: RequestSeq(seq),
        procedure: "bank.transfer".into(),
        args,
    })
}

async fn within<F: Future>(what: &str, f: F) -> F::Output {
    tokio::time::timeout(STEP_TIME, f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

fn bind(tls: &Tls) -> Endpoint {
    bind_with(tls, Limits::default())
}

fn bind_with(tls: &Tls, limits: Limits) -> Endpoint {
    let localhost = SocketAddr::from(([127, 0, 0, 1], 0));
    Endpoint::bind(localhost, tls, limits).expect("bind 127.0.0.1:0")
}

fn tls(dir: &Path, name: &str) -> Tls {
    Tls::from_dir(dir, name).expect("load TLS material")
}

/// Connects `client` to `server`; returns (client's side, server's side).
async fn pair(client: &Endpoint, server: &Endpoint) -> (Connection, Connection) {
    let addr = server.local_addr().expect("local address");
    let (out, inbound) = within("handshake", async {
        tokio::join!(client.connect(addr), server.accept())
    })
    .await;
    (
        out.expect("connect"),
        inbound.expect("endpoint open").expect("accept"),
    )
}

/// Connects a peer that `server` must refuse; returns the server's error. The peer may
/// finish its half of the handshake first (TLS 1.3), but must then see the connection die.
async fn refused(peer: &Endpoint, server: &Endpoint) -> TransportError {
    let addr = server.local_addr().expect("local address");
    let (out, inbound) = within("refused handshake", async {
        tokio::join!(peer.connect(addr), server.accept())
    })
    .await;
    if let Ok(conn) = out {
        within("refused peer sees the close", conn.closed()).await;
    }
    inbound
        .expect("endpoint open")
        .expect_err("handshake must be refused")
}

#[tokio::test]
async fn frames_arrive_in_order_on_each_channel() {
    let dir = tempfile::tempdir().unwrap();
    certs::generate(dir.path(), 2).unwrap();
    let a = bind(&tls(dir.path(), "node-1"));
    let b = bind(&tls(dir.path(), "node-2"));
    tokio::time::timeout(TEST_TIME, async {
        let (a_to_b, b_from_a) = pair(&a, &b).await;

        // One channel, 1,000 frames, read while they are written.
        let send = async {
            let mut writer = a_to_b.open_channel(&header("batches")).await?;
            for seq in 0..1000 {
                writer.send(&call(seq)).await?;
            }
            writer.finish()
        };
        let recv = async {
            let (h, mut reader) = b_from_a.accept_channel::<Header>().await?;
            let mut got = Vec::new();
            while let Some(msg) = reader.recv::<Message>().await? {
                got.push(msg);
            }
            Ok::<_, TransportError>((h, got))
        };
        let (sent, received) = within("1,000 frames", async { tokio::join!(send, recv) }).await;
        sent.unwrap();
        let (h, got) = received.unwrap();
        assert_eq!(h, header("batches"));
        assert_eq!(got, (0..1000).map(call).collect::<Vec<_>>());

        // Two channels written interleaved; the second is read to its end while the first
        // is still open, then the first.
        let mut first = a_to_b.open_channel(&header("first")).await.unwrap();
        let mut second = a_to_b.open_channel(&header("second")).await.unwrap();
        for seq in 0..100 {
            first.send(&call(seq)).await.unwrap();
            second.send(&call(1000 + seq)).await.unwrap();
        }
        second.finish().unwrap();
        let mut readers = Vec::new();
        for _ in 0..2 {
            let channel = within("accept channel", b_from_a.accept_channel::<Header>()).await;
            readers.push(channel.unwrap());
        }
        readers.sort_by(|x, y| x.0.channel.cmp(&y.0.channel));
        let [(h1, mut r1), (h2, mut r2)]: [_; 2] = readers.try_into().unwrap();
        assert_eq!((h1, h2), (header("first"), header("second")));
        for seq in 0..100 {
            let msg = within("second channel", r2.recv::<Message>()).await;
            assert_eq!(msg.unwrap(), Some(call(1000 + seq)));
        }
        assert_eq!(r2.recv::<Message>().await.unwrap(), None);
        for seq in 0..100 {
            let msg = within("first channel", r1.recv::<Message>()).await;
            assert_eq!(msg.unwrap(), Some(call(seq)));
        }
        first.finish().unwrap();
        assert_eq!(r1.recv::<Message>().await.unwrap(), None);
        assert_eq!(b.metrics().connections_accepted(), 1);
        assert_eq!(a.metrics().connections_opened(), 1);
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused_and_counted() {
    let ours = tempfile::tempdir().unwrap();
    let theirs = tempfile::tempdir().unwrap();
    let our_paths = certs::generate(ours.path(), 2).unwrap();
    certs::generate(theirs.path(), 1).unwrap();
    let server = bind(&tls(ours.path(), "node-1"));
    tokio::time::timeout(TEST_TIME, async {
        // Trusts our CA, but presents a certificate from theirs.
        let foreign_cert = Tls::load(
            &our_paths.ca.cert,
            &theirs.path().join("node").join("node-1.pem"),
            &theirs.path().join("node").join("node-1.key"),
        )
        .unwrap();
        let stranger = bind(&foreign_cert);
        let error = refused(&stranger, &server).await;
        assert!(matches!(error, TransportError::Handshake(_)), "{error}");
        assert_eq!(server.metrics().handshakes_refused(), 1);

        // The other direction: our node refuses a server whose certificate is theirs.
        let foreign_server = bind(&tls(theirs.path(), "node-1"));
        let us = bind(&tls(ours.path(), "node-2"));
        let (out, _) = within("refusing a foreign server", async {
            tokio::join!(
                us.connect(foreign_server.local_addr().unwrap()),
                foreign_server.accept()
            )
        })
        .await;
        assert!(matches!(out, Err(TransportError::Handshake(_))));
        assert_eq!(us.metrics().handshakes_refused(), 1);

        // The server still accepts good peers.
        let (out, inbound) = pair(&us, &server).await;
        assert_eq!(
            (out.role(), inbound.role()),
            (PeerRole::Node, PeerRole::Node)
        );
        assert_eq!(server.metrics().connections_accepted(), 1);
        assert_eq!(server.metrics().handshakes_refused(), 1);
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let paths = certs::generate(dir.path(), 1).unwrap();
    let server = bind(&tls(dir.path(), "node-1"));
    tokio::time::timeout(TEST_TIME, async {
        let anonymous = bind(&Tls::no_client_cert(&paths.ca.cert).unwrap());
        let error = refused(&anonymous, &server).await;
        assert!(matches!(error, TransportError::Handshake(_)), "{error}");
        assert_eq!(server.metrics().handshakes_refused(), 1);
        assert_eq!(server.metrics().connections_accepted(), 0);

        let client = bind(&tls(dir.path(), "client"));
        pair(&client, &server).await;
        assert_eq!(server.metrics().connections_accepted(), 1);
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn roles_come_from_certificates() {
    let dir = tempfile::tempdir().unwrap();
    certs::generate(dir.path(), 2).unwrap();
    let stranger = CertKind::Custom(vec!["stranger.example".into()]);
    certs::issue(dir.path(), "stranger", stranger).unwrap();
    let server = bind(&tls(dir.path(), "node-1"));
    tokio::time::timeout(TEST_TIME, async {
        let node = bind(&tls(dir.path(), "node-2"));
        let (out, inbound) = pair(&node, &server).await;
        assert_eq!(inbound.role(), PeerRole::Node);
        assert_eq!(out.role(), PeerRole::Node);

        let client = bind(&tls(dir.path(), "client"));
        let (out, inbound) = pair(&client, &server).await;
        assert_eq!(inbound.role(), PeerRole::Client);
        assert_eq!(out.role(), PeerRole::Node);

        // A request and its response on one bidirectional stream.
        let ask = async {
            let (mut writer, mut reader) = out.open_bi().await?;
            writer.send(&call(1)).await?;
            writer.finish()?;
            let reply = reader.recv::<Message>().await?;
            Ok::<_, TransportError>((reply, reader.recv::<Message>().await?))
        };
        let answer = async {
            let (mut writer, mut reader) = inbound.accept_bi().await?;
            let request = reader.recv::<Message>().await?;
            writer.send(&call(2)).await?;
            writer.finish()?;
            Ok::<_, TransportError>(request)
        };
        let (asked, answered) =
            within("request/response", async { tokio::join!(ask, answer) }).await;
        assert_eq!(answered.unwrap(), Some(call(1)));
        assert_eq!(asked.unwrap(), (Some(call(2)), None));

        // A certificate from our CA that names no role: verified, then refused.
        let nobody = bind(&tls(dir.path(), "stranger"));
        let addr = server.local_addr().unwrap();
        let (out, inbound) = within("roleless peer", async {
            tokio::join!(nobody.connect(addr), server.accept())
        })
        .await;
        let error = inbound.unwrap().unwrap_err();
        assert!(matches!(error, TransportError::Role(_)), "{error}");
        if let Ok(conn) = out {
            match within("roleless peer sees the close", conn.closed()).await {
                TransportError::Connection(quinn::ConnectionError::ApplicationClosed(close)) => {
                    assert_eq!(close.error_code, ROLE_REFUSED);
                }
                other => panic!("unexpected close: {other}"),
            }
        }
        assert_eq!(server.metrics().handshakes_refused(), 1);
        assert_eq!(server.metrics().connections_accepted(), 2);
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn bad_frames_are_refused_counted_and_harmless() {
    let dir = tempfile::tempdir().unwrap();
    certs::generate(dir.path(), 2).unwrap();
    // The sender may encode frames up to 1 MiB; the receiver accepts 1 KiB.
    let sender_limits = Limits {
        frame_bytes_max: 1 << 20,
        ..Limits::default()
    };
    let receiver_limits = Limits {
        frame_bytes_max: 1024,
        ..Limits::default()
    };
    let a = bind_with(&tls(dir.path(), "node-1"), sender_limits);
    let b = bind_with(&tls(dir.path(), "node-2"), receiver_limits);
    tokio::time::timeout(TEST_TIME, async {
        let (a_to_b, b_from_a) = pair(&a, &b).await;
        let header_frame = frame::encode(&header("raw"), DEFAULT_MAX_FRAME_BYTES).unwrap();
        let metrics = b.metrics();

        // A raw length prefix far over the limit: refused before any body arrives.
        let mut raw = a_to_b.quic().open_uni().await.unwrap();
        raw.write_all(&header_frame).await.unwrap();
        raw.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        let (h, mut reader) = within("accept", b_from_a.accept_channel::<Header>())
            .await
            .unwrap();
        assert_eq!(h, header("raw"));
        let error = within("recv", reader.recv::<Message>()).await.unwrap_err();
        let too_large = FrameError::TooLarge {
            len: u32::MAX,
            max: 1024,
        };
        assert!(
            matches!(&error, TransportError::Frame(e) if *e == too_large),
            "{error}"
        );
        assert_eq!(
            within("stopped", raw.stopped()).await.unwrap(),
            Some(FRAME_TOO_LARGE)
        );
        // The same error again, counted once.
        assert!(reader.recv::<Message>().await.is_err());
        assert_eq!(metrics.frames_rejected_too_large(), 1);

        // Through the typed writer: the sender learns the code from a failed send.
        let mut writer = a_to_b.open_channel(&header("big")).await.unwrap();
        writer
            .send(&call_with_args(1, vec![0; 2048]))
            .await
            .unwrap();
        let (_, mut reader) = within("accept", b_from_a.accept_channel::<Header>())
            .await
            .unwrap();
        let error = within("recv", reader.recv::<Message>()).await.unwrap_err();
        assert!(matches!(
            error,
            TransportError::Frame(FrameError::TooLarge { .. })
        ));
        assert_eq!(
            within("stopped", writer.stopped()).await.unwrap(),
            Some(FRAME_TOO_LARGE)
        );
        let error = writer.send(&call(2)).await.unwrap_err();
        assert_eq!(error.stop_code(), Some(FRAME_TOO_LARGE));
        assert!(!error.is_connection_lost());
        assert_eq!(metrics.frames_rejected_too_large(), 2);
        // A message over the sender's own limit never leaves it.
        let error = writer.send(&call_with_args(3, vec![0; 2 << 20])).await;
        assert!(matches!(
            error,
            Err(TransportError::Encode(FrameError::TooLarge { .. }))
        ));

        // Malformed MessagePack, then valid MessagePack of the wrong shape, then a stream
        // that ends inside a frame: each refused as malformed with its stream stopped.
        let wrong_shape = frame::encode(&("NoSuchMessage", 7u8), 1024).unwrap();
        let bodies: [&[u8]; 3] = [
            &[0, 0, 0, 3, 0xc1, 0xc1, 0xc1],
            &wrong_shape,
            &[0, 0, 0, 9, 1],
        ];
        for (i, body) in bodies.into_iter().enumerate() {
            let mut raw = a_to_b.quic().open_uni().await.unwrap();
            raw.write_all(&header_frame).await.unwrap();
            raw.write_all(body).await.unwrap();
            let truncated = i == 2;
            if truncated {
                raw.finish().unwrap();
            }
            let (_, mut reader) = within("accept", b_from_a.accept_channel::<Header>())
                .await
                .unwrap();
            let error = within("recv", reader.recv::<Message>()).await.unwrap_err();
            assert!(
                matches!(error, TransportError::Frame(FrameError::Malformed(_))),
                "{error}"
            );
            if !truncated {
                assert_eq!(
                    within("stopped", raw.stopped()).await.unwrap(),
                    Some(MALFORMED_FRAME)
                );
            }
        }
        assert_eq!(metrics.frames_rejected_malformed(), 3);

        // A stream whose header does not decode is skipped; the next channel is returned.
        let mut raw = a_to_b.quic().open_uni().await.unwrap();
        raw.write_all(&wrong_shape).await.unwrap();
        let mut writer = a_to_b.open_channel(&header("after")).await.unwrap();
        writer.send(&call(9)).await.unwrap();
        writer.finish().unwrap();
        let (h, mut reader) = within("accept", b_from_a.accept_channel::<Header>())
            .await
            .unwrap();
        assert_eq!(h, header("after"));
        assert_eq!(
            within("recv", reader.recv::<Message>()).await.unwrap(),
            Some(call(9))
        );
        assert_eq!(reader.recv::<Message>().await.unwrap(), None);
        assert_eq!(
            within("stopped", raw.stopped()).await.unwrap(),
            Some(MALFORMED_FRAME)
        );
        assert_eq!(metrics.frames_rejected_malformed(), 4);
        assert_eq!(metrics.frames_rejected_too_large(), 2);

        // The node's metrics endpoint exposes the same counters.
        let stats = detflow_node::runtime::NodeStats::default();
        let registry = detflow_node::metrics::registry(&stats, metrics.clone());
        let text = detflow_node::metrics::render(&registry);
        assert!(text.contains("detflow_transport_frames_rejected_malformed_total 4\n"));
        assert!(text.contains("detflow_transport_frames_rejected_too_large_total 2\n"));

        // Closing the endpoint ends accept.
        b.close();
        assert!(within("accept after close", b.accept()).await.is_none());
    })
    .await
    .expect("test timed out");
}
