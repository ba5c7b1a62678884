//! QUIC transport with mutual TLS and length-prefixed MessagePack frames (DESIGN.md §10).
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
//!    loop; an `Err` is one refused handshake (counted in [`Metrics`]), never the end of the
//!    endpoint. `None` means the endpoint was closed. To keep one slow handshake from
//!    delaying the others, use [`Endpoint::accept_handshake`] and finish each
//!    [`Handshake`] in its own task.
//! 4. Every [`Connection`] knows its peer's [`PeerRole`], read from the certificate's SAN
//!    ([`NODE_DNS_NAME`] or [`CLIENT_DNS_NAME`]); a certificate with neither (or both) is
//!    refused during [`Endpoint::accept`]/[`Endpoint::connect`].
//! 5. Node traffic: one unidirectional stream per (sender component, receiver component,
//!    channel). [`Connection::open_channel`] sends the caller's header as the first frame;
//!    the peer's [`Connection::accept_channel`] returns that header and a [`FrameReader`].
//!    Client traffic: request/response on bidirectional streams ([`Connection::open_bi`],
//!    [`Connection::accept_bi`]); the opener must send first, because QUIC announces a
//!    stream to the peer only when data arrives on it.
//!
//! Inbound bytes are untrusted: a frame whose length prefix exceeds
//! [`Limits::frame_bytes_max`] is refused before any memory is reserved for it, and a body
//! that does not decode as the expected type is refused too. Either way the reader stops
//! the stream with [`FRAME_TOO_LARGE`] or [`MALFORMED_FRAME`] (so the sender learns why),
//! counts it, and returns [`TransportError::Frame`]; the connection and its other streams
//! carry on.

/// The SAN DNS name that marks a node certificate.
pub const NODE_DNS_NAME: &str = "node.detflow";
/// The SAN DNS name that marks a client certificate.
pub const CLIENT_DNS_NAME: &str = "client.detflow";
/// The name every node's certificate answers to and clients verify.
pub const SERVER_NAME: &str = "localhost";
use detflow_protocol::frame::{self, DEFAULT_MAX_FRAME_BYTES, FrameDecoder, FrameError};
use quinn::VarInt;
use quinn::crypto::rustls::{NoInitialCipherSuite, QuicClientConfig, QuicServerConfig};
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use serde::{Serialize, de::DeserializeOwned};
use std::fmt;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The ALPN protocol every detflow endpoint offers and requires.
pub const ALPN: &[u8] = b"detflow/1";

/// Application error code of an orderly close (connection or endpoint).
pub const CLOSED: VarInt = VarInt::from_u32(0);
/// Stream stop code: a frame's length prefix exceeded the receiver's limit.
pub const FRAME_TOO_LARGE: VarInt = VarInt::from_u32(1);
/// Stream stop code: a frame (or a channel header) did not decode, or the stream ended
/// inside a frame.
pub const MALFORMED_FRAME: VarInt = VarInt::from_u32(2);
/// Connection close code: the peer's certificate names no detflow role.
pub const ROLE_REFUSED: VarInt = VarInt::from_u32(3);

/// The most bytes one stream read takes from QUIC at a time.
const READ_CHUNK_BYTES: usize = 64 * 1024;

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
    /// The [`Limits`] cannot be expressed in QUIC.
    #[error("invalid transport limits: {0}")]
    Config(String),
    /// A connection could not even be started (endpoint closed, no client config, …).
    #[error("cannot connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The connection failed or was closed.
    #[error("connection lost: {0}")]
    Connection(#[from] quinn::ConnectionError),
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
    /// The peer's certificate verified but names no detflow role.
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
                | TransportError::Handshake(_)
                | TransportError::Read(quinn::ReadError::ConnectionLost(_))
                | TransportError::Write(quinn::WriteError::ConnectionLost(_))
                | TransportError::Stopped(quinn::StoppedError::ConnectionLost(_))
        )
    }
}

/// Why a verified peer certificate was still refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RoleError {
    /// The certificate names both roles.
    #[error("certificate names both {NODE_DNS_NAME} and {CLIENT_DNS_NAME}")]
    Ambiguous,
    /// The peer presented no certificate.
    #[error("no peer certificate")]
    NoCertificate,
    /// The certificate names neither role.
    #[error("certificate names neither {NODE_DNS_NAME} nor {CLIENT_DNS_NAME}")]
    NoRole,
    /// The certificate does not parse as X.509.
    #[error("certificate does not parse: {0}")]
    Unparsable(String),
}

/// What a peer is, as its certificate says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PeerRole {
    /// A client: it calls procedures on bidirectional streams.
    Client,
    /// A cluster node: it opens channels.
    Node,
}

impl PeerRole {
    /// The role named by a DER certificate's SAN DNS names.
    pub fn of_certificate(der: &[u8]) -> Result<PeerRole, RoleError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| RoleError::Unparsable(e.to_string()))?;
        let san = cert
            .subject_alternative_name()
            .map_err(|e| RoleError::Unparsable(e.to_string()))?
            .ok_or(RoleError::NoRole)?;
        let (mut node, mut client) = (false, false);
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                node |= dns.eq_ignore_ascii_case(NODE_DNS_NAME);
                client |= dns.eq_ignore_ascii_case(CLIENT_DNS_NAME);
            }
        }
        match (node, client) {
            (true, false) => Ok(PeerRole::Node),
            (false, true) => Ok(PeerRole::Client),
            (true, true) => Err(RoleError::Ambiguous),
            (false, false) => Err(RoleError::NoRole),
        }
    }

    /// The role of the peer of an established QUIC connection.
    fn of_connection(conn: &quinn::Connection) -> Result<PeerRole, RoleError> {
        let identity = conn.peer_identity().ok_or(RoleError::NoCertificate)?;
        let chain = identity
            .downcast::<Vec<CertificateDer<'static>>>()
            .map_err(|_| RoleError::NoCertificate)?;
        let leaf = chain.first().ok_or(RoleError::NoCertificate)?;
        PeerRole::of_certificate(leaf)
    }
}

/// Bounds and timers of an endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The largest frame body accepted or sent.
    pub frame_bytes_max: u32,
    /// Unidirectional streams (channels) a peer may have open at once.
    pub uni_streams_max: u32,
    /// Bidirectional streams (client calls) a peer may have open at once.
    pub bi_streams_max: u32,
    /// How often an otherwise idle connection sends a keep-alive.
    pub keep_alive_interval: Duration,
    /// How long a silent peer is tolerated before its connection is declared lost (and a
    /// handshake given up). Must exceed `keep_alive_interval`.
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            frame_bytes_max: DEFAULT_MAX_FRAME_BYTES,
            uni_streams_max: 1024,
            bi_streams_max: 1024,
            keep_alive_interval: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(5),
        }
    }
}

impl Limits {
    fn transport_config(&self) -> Result<Arc<quinn::TransportConfig>, TransportError> {
        if self.keep_alive_interval >= self.idle_timeout {
            return Err(TransportError::Config(format!(
                "keep-alive interval {:?} must be shorter than the idle timeout {:?}",
                self.keep_alive_interval, self.idle_timeout
            )));
        }
        let idle = quinn::IdleTimeout::try_from(self.idle_timeout)
            .map_err(|e| TransportError::Config(format!("idle timeout: {e}")))?;
        let mut config = quinn::TransportConfig::default();
        config
            .keep_alive_interval(Some(self.keep_alive_interval))
            .max_idle_timeout(Some(idle))
            .max_concurrent_uni_streams(VarInt::from_u32(self.uni_streams_max))
            .max_concurrent_bidi_streams(VarInt::from_u32(self.bi_streams_max));
        Ok(Arc::new(config))
    }
}

/// Transport counters, shared by an endpoint and all its connections and streams.
#[derive(Debug, Default)]
pub struct Metrics {
    connections_accepted: AtomicU64,
    connections_opened: AtomicU64,
    frames_rejected_malformed: AtomicU64,
    frames_rejected_too_large: AtomicU64,
    handshakes_refused: AtomicU64,
}

impl Metrics {
    /// Inbound connections that completed the handshake and the role check.
    pub fn connections_accepted(&self) -> u64 {
        self.connections_accepted.load(Ordering::Relaxed)
    }

    /// Outbound connections that completed the handshake and the role check.
    pub fn connections_opened(&self) -> u64 {
        self.connections_opened.load(Ordering::Relaxed)
    }

    /// Incoming frames (or channel headers) refused because they did not decode.
    pub fn frames_rejected_malformed(&self) -> u64 {
        self.frames_rejected_malformed.load(Ordering::Relaxed)
    }

    /// Incoming frames refused because their length prefix exceeded the limit.
    pub fn frames_rejected_too_large(&self) -> u64 {
        self.frames_rejected_too_large.load(Ordering::Relaxed)
    }

    /// Handshakes this endpoint refused or that failed: every inbound handshake that did
    /// not complete, outbound ones whose server certificate we rejected, and peers in
    /// either direction whose certificate names no role.
    pub fn handshakes_refused(&self) -> u64 {
        self.handshakes_refused.load(Ordering::Relaxed)
    }

    /// Appends every counter to `out` in the Prometheus text format.
    pub fn render_prometheus(&self, out: &mut String) {
        let counters = [
            (
                "connections_accepted_total",
                "Inbound connections that passed the handshake and the role check.",
                self.connections_accepted(),
            ),
            (
                "connections_opened_total",
                "Outbound connections that passed the handshake and the role check.",
                self.connections_opened(),
            ),
            (
                "frames_rejected_malformed_total",
                "Incoming frames refused because they did not decode.",
                self.frames_rejected_malformed(),
            ),
            (
                "frames_rejected_too_large_total",
                "Incoming frames refused because their length exceeded the limit.",
                self.frames_rejected_too_large(),
            ),
            (
                "handshakes_refused_total",
                "Handshakes refused: bad or missing certificate, no role, or timeout.",
                self.handshakes_refused(),
            ),
        ];
        for (name, help, value) in counters {
            // Writing to a String cannot fail.
            let _ = writeln!(out, "# HELP detflow_transport_{name} {help}");
            let _ = writeln!(out, "# TYPE detflow_transport_{name} counter");
            let _ = writeln!(out, "detflow_transport_{name} {value}");
        }
    }

    fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// TLS material of one endpoint: the CA it trusts and, usually, its own certificate.
#[derive(Clone)]
pub struct Tls {
    /// Present when we have a certificate to serve with.
    server: Option<Arc<QuicServerConfig>>,
    client: Arc<QuicClientConfig>,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls")
            .field("has_certificate", &self.server.is_some())
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Loads the CA to trust, our certificate chain and our private key from PEM files.
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<Tls, TransportError> {
        let roots = load_roots(ca)?;
        let chain = load_chain(cert)?;
        let key = load_key(key)?;
        let provider = crypto_provider();
        let server = server_config(&provider, roots.clone(), chain.clone(), key.clone_key())?;
        let client = client_config(&provider, roots, Some((chain, key)))?;
        Ok(Tls {
            server: Some(Arc::new(server)),
            client: Arc::new(client),
        })
    }

    /// Loads `dir/ca.pem`, `dir/{name}.pem` and `dir/{name}.key`, the layout
    /// `detflow certs` writes (`name` is e.g. `node-1` or `client`).
    pub fn from_dir(dir: &Path, name: &str) -> Result<Tls, TransportError> {
        Tls::load(
            &dir.join("ca.pem"),
            &dir.join(format!("{name}.pem")),
            &dir.join(format!("{name}.key")),
        )
    }

    /// A client that trusts `ca` but presents no certificate. Detflow servers refuse it;
    /// it exists to prove that.
    pub fn no_client_cert(ca: &Path) -> Result<Tls, TransportError> {
        let roots = load_roots(ca)?;
        let client = client_config(&crypto_provider(), roots, None)?;
        Ok(Tls {
            server: None,
            client: Arc::new(client),
        })
    }

    /// Whether this material can serve (it holds a certificate and key).
    pub fn has_certificate(&self) -> bool {
        self.server.is_some()
    }
}

/// Installs ring as the process-wide default rustls provider, if no default is installed
/// yet. Detflow's own configurations name their provider explicitly and do not need this;
/// it is for other rustls users in the same process, where both ring and aws-lc-rs are
/// compiled in and rustls cannot pick one by itself. Safe to call any number of times.
pub fn install_default_crypto_provider() {
    // An error only means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_file(path: &Path) -> Result<Vec<u8>, TransportError> {
    std::fs::read(path).map_err(|source| TransportError::File {
        path: path.to_path_buf(),
        source,
    })
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TransportError> {
    let pem = read_file(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TransportError::Pem {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TransportError::Pem {
            path: path.to_path_buf(),
            reason: "no certificate in the file".into(),
        });
    }
    Ok(certs)
}

fn load_roots(path: &Path) -> Result<Arc<RootCertStore>, TransportError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert)?;
    }
    Ok(Arc::new(roots))
}

fn load_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, TransportError> {
    load_certs(path)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TransportError> {
    let pem = read_file(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TransportError::Pem {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

fn server_config(
    provider: &Arc<CryptoProvider>,
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<QuicServerConfig, TransportError> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone()).build()?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(QuicServerConfig::try_from(config)?)
}

fn client_config(
    provider: &Arc<CryptoProvider>,
    roots: Arc<RootCertStore>,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<QuicClientConfig, TransportError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots);
    let mut config = match identity {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key)?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(QuicClientConfig::try_from(config)?)
}

/// A QUIC endpoint on one UDP socket: accepts connections (when it has a certificate) and
/// opens them. Cheap to clone; clones share the socket and the metrics.
#[derive(Clone, Debug)]
pub struct Endpoint {
    inner: quinn::Endpoint,
    metrics: Arc<Metrics>,
    frame_bytes_max: u32,
}

impl Endpoint {
    /// Binds `addr` (port 0: any free port). Must run inside a tokio runtime.
    pub fn bind(addr: SocketAddr, tls: &Tls, limits: Limits) -> Result<Endpoint, TransportError> {
        let transport = limits.transport_config()?;
        let bind_error = |source| TransportError::Bind { addr, source };
        let mut inner = match &tls.server {
            Some(crypto) => {
                let mut server = quinn::ServerConfig::with_crypto(crypto.clone());
                server.transport_config(transport.clone());
                quinn::Endpoint::server(server, addr).map_err(bind_error)?
            }
            None => quinn::Endpoint::client(addr).map_err(bind_error)?,
        };
        let mut client = quinn::ClientConfig::new(tls.client.clone());
        client.transport_config(transport);
        inner.set_default_client_config(client);
        Ok(Endpoint {
            inner,
            metrics: Arc::new(Metrics::default()),
            frame_bytes_max: limits.frame_bytes_max,
        })
    }

    /// Connects to `addr`, verifying its certificate against our CA for [`SERVER_NAME`] and
    /// presenting ours. Gives up after the idle timeout if nobody answers.
    ///
    /// With TLS 1.3 the client finishes its half of the handshake before the server has
    /// checked the client certificate, so a refused client may get `Ok` here and then see
    /// the connection closed at once.
    pub async fn connect(&self, addr: SocketAddr) -> Result<Connection, TransportError> {
        let connecting = self.inner.connect(addr, SERVER_NAME)?;
        let conn = connecting.await.map_err(|e| {
            // A locally raised transport error is our verdict on the server's certificate
            // (or its protocol); a close sent by the peer is its verdict on us.
            if matches!(e, quinn::ConnectionError::TransportError(_)) {
                Metrics::count(&self.metrics.handshakes_refused);
            }
            TransportError::Handshake(e)
        })?;
        let conn = Connection::establish(conn, &self.metrics, self.frame_bytes_max)?;
        Metrics::count(&self.metrics.connections_opened);
        Ok(conn)
    }

    /// The next inbound connection, handshake and role check done. `Some(Err)` is one
    /// refused peer (counted); keep calling. `None`: the endpoint is closed.
    pub async fn accept(&self) -> Option<Result<Connection, TransportError>> {
        let handshake = self.accept_handshake().await?;
        Some(handshake.finish().await)
    }

    /// The next inbound connection attempt, before its handshake; finish it with
    /// [`Handshake::finish`], possibly in another task. `None`: the endpoint is closed.
    pub async fn accept_handshake(&self) -> Option<Handshake> {
        let incoming = self.inner.accept().await?;
        Some(Handshake {
            incoming,
            metrics: self.metrics.clone(),
            frame_bytes_max: self.frame_bytes_max,
        })
    }

    /// Closes every connection with [`CLOSED`] and stops accepting. Idempotent.
    pub fn close(&self) {
        self.inner.close(CLOSED, b"endpoint closed");
    }

    /// Waits until every connection has been closed cleanly (peers told), after [`close`].
    ///
    /// [`close`]: Endpoint::close
    pub async fn wait_idle(&self) {
        self.inner.wait_idle().await;
    }

    /// The bound address (with the OS-assigned port when bound to port 0).
    pub fn local_addr(&self) -> Result<SocketAddr, TransportError> {
        self.inner.local_addr().map_err(TransportError::LocalAddr)
    }

    /// The counters of this endpoint and all its connections.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }
}

/// An inbound connection attempt whose handshake has not run yet.
#[derive(Debug)]
pub struct Handshake {
    incoming: quinn::Incoming,
    metrics: Arc<Metrics>,
    frame_bytes_max: u32,
}

impl Handshake {
    /// Runs the handshake and the role check. A failure is counted in
    /// [`Metrics::handshakes_refused`].
    pub async fn finish(self) -> Result<Connection, TransportError> {
        let Handshake {
            incoming,
            metrics,
            frame_bytes_max,
        } = self;
        let remote = incoming.remote_address();
        let handshake = async { incoming.accept()?.await };
        let conn = handshake.await.map_err(|e| {
            tracing::debug!(%remote, error = %e, "refused a handshake");
            Metrics::count(&metrics.handshakes_refused);
            TransportError::Handshake(e)
        })?;
        let conn = Connection::establish(conn, &metrics, frame_bytes_max)?;
        Metrics::count(&metrics.connections_accepted);
        Ok(conn)
    }

    /// The address the attempt came from (not yet authenticated).
    pub fn remote_address(&self) -> SocketAddr {
        self.incoming.remote_address()
    }
}

/// An authenticated connection to a node or a client. Cheap to clone; clones share it.
#[derive(Clone, Debug)]
pub struct Connection {
    inner: quinn::Connection,
    role: PeerRole,
    metrics: Arc<Metrics>,
    frame_bytes_max: u32,
}

impl Connection {
    /// Checks the peer's role; refuses (closes with [`ROLE_REFUSED`] and counts) if it has
    /// none.
    fn establish(
        inner: quinn::Connection,
        metrics: &Arc<Metrics>,
        frame_bytes_max: u32,
    ) -> Result<Connection, TransportError> {
        let role = PeerRole::of_connection(&inner).map_err(|e| {
            tracing::debug!(remote = %inner.remote_address(), error = %e, "refused a peer");
            inner.close(ROLE_REFUSED, e.to_string().as_bytes());
            Metrics::count(&metrics.handshakes_refused);
            TransportError::Role(e)
        })?;
        Ok(Connection {
            inner,
            role,
            metrics: metrics.clone(),
            frame_bytes_max,
        })
    }

    /// Opens a channel: a new unidirectional stream whose first frame is `header`.
    /// Waits while the peer's stream limit is reached.
    pub async fn open_channel<H: Serialize>(
        &self,
        header: &H,
    ) -> Result<FrameWriter, TransportError> {
        let send = self.inner.open_uni().await?;
        let mut writer = self.writer(send);
        writer.send(header).await?;
        Ok(writer)
    }

    /// The next channel the peer opened, with its header.
    ///
    /// A stream whose header is oversized, malformed or missing is stopped, counted and
    /// skipped, so an `Err` here means the connection is gone (or closed locally). Streams
    /// are taken one at a time: a peer that opens a stream and withholds its header delays
    /// the channels behind it (acceptable between authenticated nodes).
    pub async fn accept_channel<H: DeserializeOwned>(
        &self,
    ) -> Result<(H, FrameReader), TransportError> {
        loop {
            let recv = self.inner.accept_uni().await?;
            let mut reader = self.reader(recv);
            match reader.recv::<H>().await {
                Ok(Some(header)) => return Ok((header, reader)),
                Ok(None) => {
                    let error = FrameError::Malformed("channel ended before its header".into());
                    let _ = reader.refuse(error);
                }
                Err(e) if e.is_connection_lost() => return Err(e),
                Err(e) => {
                    tracing::warn!(remote = %self.inner.remote_address(), error = %e,
                        "skipped a channel with a bad header");
                }
            }
        }
    }

    /// Opens a bidirectional stream for one request/response. Send first: the peer learns
    /// of the stream only when data arrives on it.
    pub async fn open_bi(&self) -> Result<(FrameWriter, FrameReader), TransportError> {
        let (send, recv) = self.inner.open_bi().await?;
        Ok((self.writer(send), self.reader(recv)))
    }

    /// The next bidirectional stream the peer opened.
    pub async fn accept_bi(&self) -> Result<(FrameWriter, FrameReader), TransportError> {
        let (send, recv) = self.inner.accept_bi().await?;
        Ok((self.writer(send), self.reader(recv)))
    }

    /// Waits until the connection is closed, by either side or by a timeout, and says why.
    pub async fn closed(&self) -> TransportError {
        TransportError::Connection(self.inner.closed().await)
    }

    /// Closes the connection with [`CLOSED`]; streams not yet delivered are abandoned.
    pub fn close(&self) {
        self.inner.close(CLOSED, b"closed");
    }

    /// What the peer is.
    pub fn role(&self) -> PeerRole {
        self.role
    }

    /// The peer's address.
    pub fn remote_address(&self) -> SocketAddr {
        self.inner.remote_address()
    }

    /// The underlying QUIC connection, for statistics and for tests that need raw streams.
    pub fn quic(&self) -> &quinn::Connection {
        &self.inner
    }

    fn writer(&self, send: quinn::SendStream) -> FrameWriter {
        FrameWriter {
            send,
            frame_bytes_max: self.frame_bytes_max,
        }
    }

    fn reader(&self, recv: quinn::RecvStream) -> FrameReader {
        FrameReader {
            recv,
            decoder: FrameDecoder::new(self.frame_bytes_max),
            metrics: self.metrics.clone(),
            state: ReaderState::Open,
        }
    }
}

/// The sending half of a channel or request stream: writes one frame per message, in order.
#[derive(Debug)]
pub struct FrameWriter {
    send: quinn::SendStream,
    frame_bytes_max: u32,
}

impl FrameWriter {
    /// Encodes `msg` as one frame and writes it, waiting for flow control.
    ///
    /// If the peer stopped the stream (for instance because it refused a frame), this fails
    /// with a [`TransportError::Write`] whose [`TransportError::stop_code`] says why.
    pub async fn send<T: Serialize>(&mut self, msg: &T) -> Result<(), TransportError> {
        let frame = frame::encode(msg, self.frame_bytes_max).map_err(TransportError::Encode)?;
        self.send.write_all(&frame).await?;
        Ok(())
    }

    /// Ends the stream cleanly: the reader gets `Ok(None)` after the last frame.
    pub fn finish(&mut self) -> Result<(), TransportError> {
        Ok(self.send.finish()?)
    }

    /// Waits until the peer stops the stream (`Some(code)`) or has received all of it
    /// after [`finish`](FrameWriter::finish) (`None`).
    pub async fn stopped(&self) -> Result<Option<VarInt>, TransportError> {
        Ok(self.send.stopped().await?)
    }
}

#[derive(Debug)]
enum ReaderState {
    Open,
    Finished,
    Failed(FrameError),
}

/// The receiving half of a channel or request stream: decodes frames as they arrive.
#[derive(Debug)]
pub struct FrameReader {
    recv: quinn::RecvStream,
    decoder: FrameDecoder,
    metrics: Arc<Metrics>,
    state: ReaderState,
}

impl FrameReader {
    /// The next message; `Ok(None)` once the sender finished the stream cleanly.
    ///
    /// A frame over the limit or one that does not decode as `T` (including a stream that
    /// ends inside a frame) stops the stream with [`FRAME_TOO_LARGE`] or
    /// [`MALFORMED_FRAME`], is counted, and returns [`TransportError::Frame`]; every later
    /// call returns the same error.
    pub async fn recv<T: DeserializeOwned>(&mut self) -> Result<Option<T>, TransportError> {
        match &self.state {
            ReaderState::Open => {}
            ReaderState::Finished => return Ok(None),
            ReaderState::Failed(e) => return Err(TransportError::Frame(e.clone())),
        }
        loop {
            match self.decoder.next_frame::<T>() {
                Ok(Some(msg)) => return Ok(Some(msg)),
                Ok(None) => {}
                Err(e) => return Err(self.refuse(e)),
            }
            match self.recv.read_chunk(READ_CHUNK_BYTES, true).await? {
                Some(chunk) => self.decoder.push(&chunk.bytes),
                None if self.decoder.buffered() == 0 => {
                    self.state = ReaderState::Finished;
                    return Ok(None);
                }
                None => {
                    let buffered = self.decoder.buffered();
                    let error = FrameError::Malformed(format!(
                        "stream ended inside a frame ({buffered} bytes unread)"
                    ));
                    return Err(self.refuse(error));
                }
            }
        }
    }

    /// Stops the stream with the code for `error`, counts it, and remembers it.
    fn refuse(&mut self, error: FrameError) -> TransportError {
        let (code, counter) = match error {
            FrameError::TooLarge { .. } => {
                (FRAME_TOO_LARGE, &self.metrics.frames_rejected_too_large)
            }
            FrameError::Malformed(_) => (MALFORMED_FRAME, &self.metrics.frames_rejected_malformed),
        };
        Metrics::count(counter);
        // Fails only if the stream is already finished or stopped, when there is no one
        // left to tell.
        let _ = self.recv.stop(code);
        tracing::debug!(error = %error, "refused an incoming frame");
        self.state = ReaderState::Failed(error.clone());
        TransportError::Frame(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Compiles only if every future the runtime spawns is `Send`.
    fn futures_are_send(
        endpoint: &Endpoint,
        conn: &Connection,
        reader: &mut FrameReader,
        writer: &mut FrameWriter,
        handshake: Handshake,
        addr: SocketAddr,
    ) {
        fn send<T: Send>(_: T) {}
        send(endpoint.connect(addr));
        send(endpoint.accept());
        send(handshake.finish());
        send(conn.open_channel(&"header"));
        send(conn.accept_channel::<String>());
        send(conn.open_bi());
        send(conn.accept_bi());
        send(conn.closed());
        send(reader.recv::<String>());
        send(writer.send(&1u8));
    }

    #[test]
    fn public_types_are_send_and_sync() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Endpoint>();
        send_sync::<Connection>();
        send_sync::<FrameReader>();
        send_sync::<FrameWriter>();
        send_sync::<Tls>();
        send_sync::<Metrics>();
        send_sync::<TransportError>();
        let _ = futures_are_send;
    }

    #[test]
    fn limits_are_checked() {
        assert!(Limits::default().transport_config().is_ok());
        let limits = Limits {
            keep_alive_interval: Duration::from_secs(10),
            ..Limits::default()
        };
        assert!(matches!(
            limits.transport_config(),
            Err(TransportError::Config(_))
        ));
    }

    #[test]
    fn metrics_render_as_prometheus_counters() {
        let metrics = Metrics::default();
        Metrics::count(&metrics.handshakes_refused);
        Metrics::count(&metrics.handshakes_refused);
        let mut out = String::new();
        metrics.render_prometheus(&mut out);
        assert!(out.contains("# TYPE detflow_transport_handshakes_refused_total counter\n"));
        assert!(out.contains("\ndetflow_transport_handshakes_refused_total 2\n"));
        assert!(out.contains("\ndetflow_transport_frames_rejected_too_large_total 0\n"));
        assert_eq!(out.lines().filter(|l| l.starts_with("# HELP")).count(), 5);
    }
}
