//! The endpoint: binding, connecting, and the accept loop that runs handshakes
//! concurrently under caps.
//!
//! ```text
//! quinn Incoming ──▶ address not validated? ──yes──▶ Retry (stateless), counted
//!                        │ no
//!                        ▼
//!                    handshakes_in_flight_max running? ──yes──▶ refuse, counted
//!                        │ no
//!                        ▼
//!                    task: handshake (≤ handshake_timeout) → identity → caps
//!                        │                                  (over one: CONNECTION_LIMIT)
//!                        ▼
//!                    channel ──▶ Endpoint::accept, in completion order
//! ```
//!
//! The caps are checked once the peer's identity is known: the overall cap counts client
//! connections only, so that clients can never crowd the cluster's own links out (nodes
//! are bounded by their per-node cap and the cluster's size).

use crate::connection::{Connection, Direction};
use crate::metrics::Metrics;
use crate::{
    CLOSED, CONNECTION_LIMIT, Limits, PeerIdentity, PeerRole, SERVER_NAME, Tls, TransportError,
};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

/// Connection attempts quinn holds before the accept loop looks at them; beyond it quinn
/// refuses new ones by itself. The loop decides in microseconds, so this only absorbs
/// bursts.
const INCOMING_MAX: usize = 4096;
/// Bytes quinn buffers for one connection attempt before it is decided, beyond its first
/// packet (we use no 0-RTT, so there is little to hold).
const INCOMING_BUFFER_BYTES: u64 = 64 * 1024;
/// The same, all attempts together.
const INCOMING_BUFFER_TOTAL_BYTES: u64 = 16 << 20;

type Accepted = Result<Connection, TransportError>;

/// A QUIC endpoint on one UDP socket: accepts connections (when it has a certificate) and
/// opens them. Cheap to clone; clones share the socket, the metrics and the caps.
#[derive(Clone, Debug)]
pub struct Endpoint {
    inner: quinn::Endpoint,
    context: Arc<EndpointContext>,
    /// Handshaken connections, from the accept loop (started by the first `accept`).
    accepted: Arc<tokio::sync::Mutex<Option<mpsc::Receiver<Accepted>>>>,
}

impl Endpoint {
    /// Binds `addr` (port 0: any free port). Must run inside a tokio runtime.
    pub fn bind(addr: SocketAddr, tls: &Tls, limits: Limits) -> Result<Endpoint, TransportError> {
        let transport = limits.transport_config()?;
        let bind_error = |source| TransportError::Bind { addr, source };
        let mut inner = match &tls.server {
            Some(crypto) => {
                let mut server = quinn::ServerConfig::with_crypto(crypto.clone());
                server
                    .transport_config(transport.clone())
                    .max_incoming(INCOMING_MAX)
                    .incoming_buffer_size(INCOMING_BUFFER_BYTES)
                    .incoming_buffer_size_total(INCOMING_BUFFER_TOTAL_BYTES);
                match &tls.reset_secret {
                    Some(secret) => {
                        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
                        let mut config = quinn::EndpointConfig::new(Arc::new(key));
                        // The connection ids must verify in the next incarnation too, or
                        // it drops a stale connection's packets without the reset.
                        let mut cid_key = [0; 8];
                        cid_key.copy_from_slice(&secret[..8]);
                        let cid_key = u64::from_le_bytes(cid_key);
                        config.cid_generator(move || {
                            Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
                        });
                        let socket = std::net::UdpSocket::bind(addr).map_err(bind_error)?;
                        let runtime = quinn::default_runtime().ok_or_else(|| {
                            TransportError::Config("no tokio runtime to bind in".into())
                        })?;
                        quinn::Endpoint::new(config, Some(server), socket, runtime)
                            .map_err(bind_error)?
                    }
                    None => quinn::Endpoint::server(server, addr).map_err(bind_error)?,
                }
            }
            None => quinn::Endpoint::client(addr).map_err(bind_error)?,
        };
        let mut client = quinn::ClientConfig::new(tls.client.clone());
        client.transport_config(transport);
        inner.set_default_client_config(client);
        Ok(Endpoint {
            inner,
            context: Arc::new(EndpointContext {
                metrics: Arc::new(Metrics::default()),
                limits,
                own_role: tls.identity.map(|identity| identity.role),
                registry: Mutex::new(Registry::default()),
            }),
            accepted: Arc::new(tokio::sync::Mutex::new(None)),
        })
    }

    /// Connects to `addr`, verifying its certificate against our CA for [`SERVER_NAME`] and
    /// presenting ours. Gives up after the idle timeout if nobody answers. The connection
    /// knows the server's identity ([`Connection::node_id`]); checking that it is the node
    /// we meant is the caller's business.
    ///
    /// With TLS 1.3 the client finishes its half of the handshake before the server has
    /// checked the client certificate, so a refused client may get `Ok` here and then see
    /// the connection closed at once ([`crate::ROLE_REFUSED`], [`CONNECTION_LIMIT`]).
    pub async fn connect(&self, addr: SocketAddr) -> Result<Connection, TransportError> {
        let connecting = self.inner.connect(addr, SERVER_NAME)?;
        let metrics = &self.context.metrics;
        let conn = connecting.await.map_err(|e| {
            // A locally raised transport error is our verdict on the server's certificate
            // (or its protocol); a close sent by the peer is its verdict on us.
            if matches!(e, quinn::ConnectionError::TransportError(_)) {
                Metrics::count(&metrics.handshakes_refused);
            }
            TransportError::Handshake(e)
        })?;
        let conn = Connection::establish(conn, &self.context, Direction::Outbound)?;
        Metrics::count(&metrics.connections_opened);
        Ok(conn)
    }

    /// The next inbound connection, handshake, identity check and caps done, in the order
    /// handshakes complete. `Some(Err)` is one refused peer (counted); keep calling.
    /// `None`: the endpoint is closed.
    ///
    /// The first call starts the accept loop; until then connection attempts wait (up to a
    /// bound, then quinn refuses them). Attempts refused before a handshake (Retry, too
    /// many in flight, too many connections) are only counted, never returned.
    pub async fn accept(&self) -> Option<Accepted> {
        let mut accepted = self.accepted.lock().await;
        let receiver = accepted.get_or_insert_with(|| self.start_accepting());
        receiver.recv().await
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
        self.context.metrics.clone()
    }

    /// The limits this endpoint was bound with.
    pub fn limits(&self) -> &Limits {
        &self.context.limits
    }

    fn start_accepting(&self) -> mpsc::Receiver<Accepted> {
        // Results wait here until `accept` takes them; a handshake task keeps its permit
        // until its result is taken in, so finished-but-untaken connections count against
        // `handshakes_in_flight_max` too and nothing here grows without bound.
        let capacity = self.context.limits.handshakes_in_flight_max as usize;
        let (sender, receiver) = mpsc::channel(capacity);
        tokio::spawn(accept_loop(
            self.inner.clone(),
            self.context.clone(),
            sender,
        ));
        receiver
    }
}

/// Takes connection attempts from quinn and decides each at once: Retry, refuse, or a
/// handshake in a task of its own. Ends when the endpoint closes or every [`Endpoint`]
/// handle (and so the receiver) is gone.
async fn accept_loop(
    endpoint: quinn::Endpoint,
    context: Arc<EndpointContext>,
    sender: mpsc::Sender<Accepted>,
) {
    let permits = Arc::new(Semaphore::new(
        context.limits.handshakes_in_flight_max as usize,
    ));
    loop {
        let incoming = tokio::select! {
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => incoming,
                None => return,
            },
            () = sender.closed() => return,
        };
        let Some((incoming, permit)) = context.admit(incoming, &permits) else {
            continue;
        };
        let context = context.clone();
        let sender = sender.clone();
        tokio::spawn(async move {
            let result = handshake(incoming, &context).await;
            // Nobody left to take it only when the endpoint is gone; dropping the
            // connection then closes it.
            let _ = sender.send(result).await;
            drop(permit);
        });
    }
}

/// Runs one inbound handshake within the timeout, then the identity check and the caps.
async fn handshake(
    incoming: quinn::Incoming,
    context: &Arc<EndpointContext>,
) -> Result<Connection, TransportError> {
    let metrics = &context.metrics;
    let remote = incoming.remote_address();
    let timeout = context.limits.handshake_timeout;
    // Dropping the handshake at the timeout abandons the connection.
    let outcome = tokio::time::timeout(timeout, async { incoming.accept()?.await }).await;
    metrics.handshakes_in_flight.fetch_sub(1, Ordering::Relaxed);
    let conn = match outcome {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            tracing::debug!(%remote, error = %e, "refused a handshake");
            Metrics::count(&metrics.handshakes_refused);
            return Err(TransportError::Handshake(e));
        }
        Err(_) => {
            tracing::debug!(%remote, ?timeout, "a handshake timed out");
            Metrics::count(&metrics.handshakes_refused);
            Metrics::count(&metrics.handshakes_timed_out);
            return Err(TransportError::Handshake(quinn::ConnectionError::TimedOut));
        }
    };
    let conn = Connection::establish(conn, context, Direction::Inbound)?;
    Metrics::count(&metrics.connections_accepted);
    Ok(conn)
}

/// What an endpoint's connections share: limits, counters, the caps' bookkeeping.
#[derive(Debug)]
pub(crate) struct EndpointContext {
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) limits: Limits,
    /// What our own certificate says we are.
    pub(crate) own_role: Option<PeerRole>,
    registry: Mutex<Registry>,
}

impl EndpointContext {
    /// Decides a connection attempt before any handshake work: a Retry for an address not
    /// yet validated, a refusal when too many handshakes run, else a permit to handshake.
    fn admit(
        &self,
        incoming: quinn::Incoming,
        permits: &Arc<Semaphore>,
    ) -> Option<(quinn::Incoming, OwnedSemaphorePermit)> {
        let metrics = &self.metrics;
        let incoming = if incoming.remote_address_validated() {
            incoming
        } else {
            // A Retry costs us no state: the sender must echo our token from the address
            // it claims, which a spoofed or silent sender never does.
            match incoming.retry() {
                Ok(()) => {
                    Metrics::count(&metrics.handshakes_retried);
                    return None;
                }
                // Only possible for an attempt that already carries a Retry token, which
                // is validated; go on with it.
                Err(e) => e.into_incoming(),
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            Metrics::count(&metrics.handshakes_refused_busy);
            incoming.refuse();
            return None;
        };
        metrics.handshakes_in_flight.fetch_add(1, Ordering::Relaxed);
        Some((incoming, permit))
    }

    /// Counts an inbound connection under the caps, or closes it with [`CONNECTION_LIMIT`].
    pub(crate) fn take_slot(
        self: &Arc<Self>,
        conn: &quinn::Connection,
        identity: &PeerIdentity,
    ) -> Result<Arc<Slot>, TransportError> {
        let (key, per_peer_max) = match identity.node_id {
            Some(id) => (PeerKey::Node(id), self.limits.connections_per_node_max),
            None => (
                PeerKey::Client(identity.fingerprint),
                self.limits.connections_per_client_max,
            ),
        };
        let mut registry = self.registry.lock().unwrap_or_else(PoisonError::into_inner);
        let mine = registry.per_peer.get(&key).copied().unwrap_or(0);
        let client = matches!(key, PeerKey::Client(_));
        let refusal = if client && registry.clients >= self.limits.connections_max {
            Some(format!(
                "{} client connections open, the most this node takes",
                registry.clients
            ))
        } else if mine >= per_peer_max {
            Some(format!(
                "{mine} connections open from this {}, the most it may hold",
                key.kind()
            ))
        } else {
            None
        };
        if let Some(reason) = refusal {
            drop(registry);
            tracing::debug!(remote = %conn.remote_address(), %reason, "refused a connection");
            conn.close(CONNECTION_LIMIT, reason.as_bytes());
            Metrics::count(&self.metrics.connections_refused_limit);
            return Err(TransportError::ConnectionLimit(reason));
        }
        registry.clients += u32::from(client);
        *registry.per_peer.entry(key).or_insert(0) += 1;
        self.metrics
            .connections_open
            .fetch_add(1, Ordering::Relaxed);
        Ok(Arc::new(Slot {
            context: self.clone(),
            key,
            released: AtomicBool::new(false),
        }))
    }

    fn release(&self, key: &PeerKey) {
        let mut registry = self.registry.lock().unwrap_or_else(PoisonError::into_inner);
        if matches!(key, PeerKey::Client(_)) {
            registry.clients = registry.clients.saturating_sub(1);
        }
        if let Some(count) = registry.per_peer.get_mut(key) {
            *count -= 1;
            if *count == 0 {
                registry.per_peer.remove(key);
            }
        }
        self.metrics
            .connections_open
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// Whose connections count together.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum PeerKey {
    /// A client certificate, by fingerprint.
    Client([u8; 32]),
    /// A node, by id (whatever certificate it uses).
    Node(u32),
}

impl PeerKey {
    fn kind(&self) -> &'static str {
        match self {
            PeerKey::Client(_) => "client certificate",
            PeerKey::Node(_) => "node",
        }
    }
}

/// Open inbound connections: from clients, and per peer.
#[derive(Debug, Default)]
struct Registry {
    clients: u32,
    per_peer: BTreeMap<PeerKey, u32>,
}

/// One inbound connection's place under the caps, given back once the connection is seen
/// closed or when dropped, whichever comes first.
#[derive(Debug)]
pub(crate) struct Slot {
    context: Arc<EndpointContext>,
    key: PeerKey,
    released: AtomicBool,
}

impl Slot {
    /// Gives the place back; idempotent.
    pub(crate) fn release(&self) {
        if !self.released.swap(true, Ordering::Relaxed) {
            self.context.release(&self.key);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.release();
    }
}
