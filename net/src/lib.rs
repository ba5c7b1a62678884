//! QUIC transport with mutual TLS and length-prefixed MessagePack frames (DESIGN.md §10,
//! §10c).
//!
//! Contract and call order:
//!
//! 1. Load TLS material once: [`Tls::load`] (or [`Tls::from_dir`]) for a node or a client,
//!    [`Tls::no_client_cert`] for a client that presents nothing (which every detflow
//!    server refuses).
//! 2. [`Endpoint::bind`] inside a tokio runtime. With a certificate the endpoint both
//!    accepts and connects; without one it only connects.
//! 3. Outbound: [`Endpoint::connect`] verifies the server against the CA under the name
//!    [`SERVER_NAME`] and presents our certificate. Inbound: call [`Endpoint::accept`] in a
//!    loop; an `Err` is one refused peer (counted in [`Metrics`]), never the end of the
//!    endpoint. `None` means the endpoint was closed.
//! 4. Every [`Connection`] knows its peer's identity, read from the certificate's SAN: its
//!    [`PeerRole`] ([`NODE_DNS_NAME`] or [`CLIENT_DNS_NAME`]), for a node its id (exactly
//!    one `node-<id>.node.detflow`, see [`node_dns_name`]), and for anyone the
//!    fingerprint of its certificate. A certificate that says anything else is refused
//!    during [`Endpoint::accept`]/[`Endpoint::connect`].
//! 5. Node traffic: one unidirectional stream per (sender component, receiver component,
//!    channel). [`Connection::open_channel`] sends the caller's header as the first frame;
//!    the peer's [`Connection::accept_channel`] returns that header and a [`FrameReader`].
//!    Client traffic: request/response on bidirectional streams ([`Connection::open_bi`],
//!    [`Connection::accept_bi`]); the opener must send first, because QUIC announces a
//!    stream to the peer only when data arrives on it.
//!
//! What a server does against the unauthenticated and the merely authenticated
//! ([`Limits`] holds every bound):
//!
//! - Handshakes run concurrently, each in its own task, at most
//!   [`Limits::handshakes_in_flight_max`] at once (beyond that new attempts are refused at
//!   once) and each within [`Limits::handshake_timeout`]; [`Endpoint::accept`] returns
//!   connections in the order their handshakes complete.
//! - A connection attempt from an address that has not proven it receives our packets is
//!   answered with a QUIC Retry, which costs the server no state: a spoofed or silent
//!   sender never gets a handshake started.
//! - Open inbound connections are capped per node id, per client certificate and for all
//!   clients together (not counting nodes, so that clients cannot crowd the cluster's own
//!   links out); a connection over a cap is closed with [`CONNECTION_LIMIT`] as soon as
//!   its handshake tells who it is. A connection counts until it is seen closed or every
//!   handle to it is dropped.
//! - Memory per connection is bounded: QUIC flow-control windows bound what the peer may
//!   have in flight, a client may not open channels at all, and the bytes of partially
//!   received frames on one connection share a budget.
//! - A frame must arrive whole within [`Limits::frame_read_timeout`] of its first byte,
//!   and a request stream's first frame within that time of the stream's arrival; a
//!   stream that misses it is stopped with [`READ_TIMEOUT`]. An idle channel between
//!   frames is fine.
//!
//! Inbound bytes are untrusted: a frame whose length prefix exceeds
//! [`Limits::frame_bytes_max`] is refused before any memory is reserved for it, and a body
//! that does not decode as the expected type is refused too. Either way the reader stops
//! the stream with [`FRAME_TOO_LARGE`] or [`MALFORMED_FRAME`] (so the sender learns why),
//! counts it, and returns [`TransportError::Frame`]; the connection and its other streams
//! carry on.

mod connection;
mod endpoint;
mod identity;
mod limits;
mod metrics;
mod stream;
mod tls;

pub use connection::Connection;
pub use endpoint::Endpoint;
pub use identity::{PeerIdentity, PeerRole, RoleError, node_dns_name};
pub use limits::Limits;
pub use metrics::{MetricKind, Metrics, Sample};
pub use stream::{FrameReader, FrameWriter};
pub use tls::{Tls, install_default_crypto_provider};

use detflow_protocol::frame::FrameError;
use quinn::VarInt;
use quinn::crypto::rustls::NoInitialCipherSuite;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The SAN DNS name that marks a node certificate.
pub const NODE_DNS_NAME: &str = "node.detflow";
/// The SAN DNS name that marks a client certificate.
pub const CLIENT_DNS_NAME: &str = "client.detflow";
/// The SAN DNS name that marks a client certificate as an operator's (beside
/// [`CLIENT_DNS_NAME`]): what only operators may ask (read the whole log, ask for
/// checkpoints) is refused to other clients.
pub const OPERATOR_DNS_NAME: &str = "operator.detflow";
/// The name every node's certificate answers to and clients verify.
pub const SERVER_NAME: &str = "localhost";

/// The ALPN protocol every detflow endpoint offers and requires.
pub const ALPN: &[u8] = b"detflow/1";

/// Application error code of an orderly close (connection or endpoint).
pub const CLOSED: VarInt = VarInt::from_u32(0);
/// Stream stop code: a frame's length prefix exceeded the receiver's limit, or the
/// connection's budget for partially received frames was spent.
pub const FRAME_TOO_LARGE: VarInt = VarInt::from_u32(1);
/// Stream stop code: a frame (or a channel header) did not decode, or the stream ended
/// inside a frame.
pub const MALFORMED_FRAME: VarInt = VarInt::from_u32(2);
/// Connection close code: the peer's certificate names no detflow role, or not the one
/// node id a node certificate must name.
pub const ROLE_REFUSED: VarInt = VarInt::from_u32(3);
/// Connection close code: the server already holds as many connections as it allows, from
/// all clients or from this peer's identity.
pub const CONNECTION_LIMIT: VarInt = VarInt::from_u32(4);
/// Stream stop code: a frame did not arrive whole in time (or a request stream's first
/// frame did not arrive in time).
pub const READ_TIMEOUT: VarInt = VarInt::from_u32(5);

/// Why a transport operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The peer answered something the protocol does not allow here.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The UDP socket could not be bound.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The requested address.
        addr: SocketAddr,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The peer sent more partially received frame bytes than its connection's budget
    /// allows; the stream has been stopped with [`FRAME_TOO_LARGE`] and the refusal counted.
    #[error(
        "refused an incoming frame: the connection's {budget_bytes}-byte budget for partial frames is spent"
    )]
    BufferBudget {
        /// The connection's budget.
        budget_bytes: u64,
    },
    /// The [`Limits`] cannot be expressed in QUIC, or contradict each other.
    #[error("invalid transport limits: {0}")]
    Config(String),
    /// A connection could not even be started (endpoint closed, no client config, …).
    #[error("cannot connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The connection failed or was closed.
    #[error("connection lost: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// An inbound connection was refused because a connection cap was reached; it has been
    /// closed with [`CONNECTION_LIMIT`] and counted.
    #[error("connection refused: {0}")]
    ConnectionLimit(String),
    /// A message we tried to send does not encode within the frame limit: a local bug or a
    /// misconfigured limit, never the peer's fault.
    #[error("cannot encode an outgoing frame: {0}")]
    Encode(FrameError),
    /// A key or certificate file could not be read.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The peer sent a frame we refused; the stream has been stopped and the refusal counted.
    #[error("refused an incoming frame: {0}")]
    Frame(FrameError),
    /// A frame did not arrive whole within the read deadline; the stream has been stopped
    /// with [`READ_TIMEOUT`] and the refusal counted.
    #[error("refused an incoming stream: a frame did not arrive within {timeout:?}")]
    FrameTimeout {
        /// The deadline that passed.
        timeout: Duration,
    },
    /// A handshake failed: the peer's certificate did not verify (wrong CA, none at all),
    /// ALPN mismatch, or a timeout.
    #[error("handshake failed: {0}")]
    Handshake(quinn::ConnectionError),
    /// The local address of the endpoint is unknown.
    #[error("cannot read the local address: {0}")]
    LocalAddr(#[source] std::io::Error),
    /// A PEM file holds nothing usable.
    #[error("{path}: {reason}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The TLS configuration has no cipher suite QUIC can start with.
    #[error("TLS configuration unusable for QUIC: {0}")]
    QuicCrypto(#[from] NoInitialCipherSuite),
    /// Reading a stream failed (reset by the peer, connection lost, …).
    #[error("stream read failed: {0}")]
    Read(#[from] quinn::ReadError),
    /// The peer's certificate verified but does not say a detflow role (or a node id).
    #[error("peer refused: {0}")]
    Role(#[from] RoleError),
    /// Waiting for the peer to stop a stream failed.
    #[error("stream failed: {0}")]
    Stopped(#[from] quinn::StoppedError),
    /// The stream was already finished or reset locally.
    #[error("stream already closed: {0}")]
    StreamClosed(#[from] quinn::ClosedStream),
    /// rustls refused the certificates or the key.
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// The client-certificate verifier could not be built from the CA.
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// Writing a stream failed: stopped by the peer (see [`TransportError::stop_code`]) or
    /// connection lost.
    #[error("stream write failed: {0}")]
    Write(#[from] quinn::WriteError),
}

impl TransportError {
    /// The code with which the peer stopped our stream, if that is why a write failed.
    pub fn stop_code(&self) -> Option<VarInt> {
        match self {
            TransportError::Write(quinn::WriteError::Stopped(code)) => Some(*code),
            _ => None,
        }
    }

    /// Whether the whole connection is gone (as opposed to one stream or one frame).
    pub fn is_connection_lost(&self) -> bool {
        matches!(
            self,
            TransportError::Connection(_)
                | TransportError::ConnectionLimit(_)
                | TransportError::Handshake(_)
                | TransportError::Read(quinn::ReadError::ConnectionLost(_))
                | TransportError::Write(quinn::WriteError::ConnectionLost(_))
                | TransportError::Stopped(quinn::StoppedError::ConnectionLost(_))
        )
    }

    /// Whether the peer sent something we refused on one stream (a bad or oversized frame,
    /// a frame too slow, a spent budget): the stream was stopped and the refusal counted.
    pub fn is_refused_input(&self) -> bool {
        matches!(
            self,
            TransportError::Frame(_)
                | TransportError::FrameTimeout { .. }
                | TransportError::BufferBudget { .. }
        )
    }
}

#[cfg(test)]
mod tests;
