//! The detflow client library: typed calls over QUIC with mutual TLS, exactly once.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use detflow_client::{Client, Tls};
//! use detflow_workloads::bank::{Transfer, TransferArgs};
//!
//! let tls = Tls::from_dir("certs".as_ref(), "client")?;
//! let client = Client::connect(vec!["127.0.0.1:7001".parse()?], tls).await?;
//! let out = client
//!     .call::<Transfer>(&TransferArgs { from: 1, to: 2, amount_cents: 500 })
//!     .await?;
//! println!("payer now has {} cents", out.from_balance_cents);
//! # Ok(()) }
//! ```
//!
//! A client is one session: it numbers its calls and, when a gateway is unavailable or a
//! call times out, retries the same call (same number) through the next gateway with
//! backoff. The cluster executes a call at most once and answers a retry with the
//! original result, so a call that returns `Ok` executed exactly once.
//!
//! The session is opened by the first gateway the client reaches, which returns a session
//! id and a token binding it to this client's certificate; every gateway of the cluster
//! accepts the token, and no other client can use the session.

mod kv;

pub use detflow_net::{Tls, TransportError};
pub use kv::KvBuilder;

use detflow_executor::Procedure;
use detflow_net::{Connection, Endpoint, Limits};
use detflow_protocol::message::{Call, Message, NodeStatus, Rejection, Reply, SessionToken};
use detflow_protocol::{AbortReason, ClientId, Outcome, RequestSeq, codec};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::Mutex;

/// Why a call did not return an output.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The call executed and aborted deterministically; nothing it wrote took effect.
    #[error("aborted: {0}")]
    Aborted(AbortReason),
    /// The call was refused before it was ordered; it never executes.
    #[error("rejected: {0}")]
    Rejected(Rejection),
    /// No gateway could take the call within the retry budget; it may or may not execute
    /// later (retrying the same call with the same client is safe).
    #[error("unavailable: no gateway answered after {attempts} attempts ({last})")]
    Unavailable {
        /// Attempts made.
        attempts: u32,
        /// The last error seen.
        last: String,
    },
    /// The output did not decode as the procedure's output type.
    #[error("output does not decode: {0}")]
    BadOutput(String),
}

/// How a client retries.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// How long one attempt may take.
    pub attempt_timeout: Duration,
    /// The first back-off; it doubles up to `backoff_max`.
    pub backoff: Duration,
    /// The longest back-off.
    pub backoff_max: Duration,
    /// Attempts before giving up with `Unavailable`.
    pub attempts_max: u32,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            attempt_timeout: Duration::from_secs(3),
            backoff: Duration::from_millis(20),
            backoff_max: Duration::from_secs(1),
            attempts_max: 60,
        }
    }
}

/// Why a client could not start.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// No gateway address was given.
    #[error("no gateway addresses")]
    NoGateways,
    /// The local QUIC endpoint could not be created.
    #[error(transparent)]
    Transport(#[from] TransportError),
}

/// A session with a detflow cluster.
pub struct Client {
    endpoint: Endpoint,
    gateways: Vec<SocketAddr>,
    connections: Mutex<Vec<Option<Connection>>>,
    next_gateway: AtomicU64,
    /// Opened on first use by whichever gateway answers first.
    session: tokio::sync::OnceCell<(ClientId, SessionToken)>,
    next_seq: AtomicU64,
    policy: RetryPolicy,
}

impl Client {
    /// A new session that talks to `gateways`. Connections open lazily, on first use.
    pub async fn connect(gateways: Vec<SocketAddr>, tls: Tls) -> Result<Client, ConnectError> {
        if gateways.is_empty() {
            return Err(ConnectError::NoGateways);
        }
        let local: SocketAddr = if gateways[0].is_ipv4() {
            SocketAddr::from(([0, 0, 0, 0], 0))
        } else {
            SocketAddr::from(([0u16; 8], 0))
        };
        let endpoint = Endpoint::bind(local, &tls, Limits::default())?;
        Ok(Client {
            endpoint,
            connections: Mutex::new(vec![None; gateways.len()]),
            next_gateway: AtomicU64::new(random_seed() % gateways.len() as u64),
            gateways,
            session: tokio::sync::OnceCell::new(),
            next_seq: AtomicU64::new(1),
            policy: RetryPolicy::default(),
        })
    }

    /// Replaces the retry policy.
    pub fn with_policy(mut self, policy: RetryPolicy) -> Client {
        self.policy = policy;
        self
    }

    /// This session's id, once a gateway has opened it (on the first call).
    pub fn session(&self) -> Option<ClientId> {
        self.session.get().map(|(id, _)| *id)
    }

    /// Calls procedure `P` with `args`; exactly once.
    pub async fn call<P: Procedure>(&self, args: &P::Args) -> Result<P::Output, CallError> {
        let output = self.call_raw(P::NAME, codec::encode(args)).await?;
        codec::decode(&output).map_err(|e| CallError::BadOutput(e.0))
    }

    /// Calls a procedure by name with MessagePack arguments; returns its MessagePack output.
    pub async fn call_raw(&self, procedure: &str, args: Vec<u8>) -> Result<Vec<u8>, CallError> {
        let seq = RequestSeq(self.next_seq.fetch_add(1, Ordering::Relaxed));
        let mut call = Call {
            client: ClientId(0),
            seq,
            procedure: procedure.to_owned(),
            args,
        };
        let mut backoff = self.policy.backoff;
        let mut last = String::from("no attempt made");
        for attempt in 1..=self.policy.attempts_max {
            let gateway =
                self.next_gateway.fetch_add(1, Ordering::Relaxed) as usize % self.gateways.len();
            let answer = tokio::time::timeout(self.policy.attempt_timeout, async {
                let (client, token) = self.open_session(gateway).await?;
                call.client = client;
                self.attempt(gateway, token, &call).await
            })
            .await;
            match answer {
                Ok(Ok(Reply::Done { outcome, .. })) => {
                    return match outcome {
                        Outcome::Committed(output) => Ok(output),
                        Outcome::Aborted(reason) => Err(CallError::Aborted(reason)),
                    };
                }
                Ok(Ok(Reply::Rejected(reason))) => return Err(CallError::Rejected(reason)),
                Ok(Ok(Reply::Unavailable)) => {
                    last = format!("gateway {} unavailable", self.gateways[gateway])
                }
                Ok(Err(e)) => {
                    last = format!("gateway {}: {e}", self.gateways[gateway]);
                    self.connections.lock().await[gateway] = None;
                }
                Err(_) => last = format!("gateway {} timed out", self.gateways[gateway]),
            }
            tracing::debug!(attempt, %last, "retrying call");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(self.policy.backoff_max);
        }
        Err(CallError::Unavailable {
            attempts: self.policy.attempts_max,
            last,
        })
    }

    async fn connection(&self, gateway: usize) -> Result<Connection, TransportError> {
        if let Some(conn) = &self.connections.lock().await[gateway] {
            return Ok(conn.clone());
        }
        // Connect without holding the lock: a handshake with a gateway that is down lasts
        // until the attempt times out, and held every other call of this session (through
        // any gateway) up behind it. Should two calls connect at once, the first one kept
        // wins and the other connection is dropped.
        let conn = self.endpoint.connect(self.gateways[gateway]).await?;
        Ok(self.connections.lock().await[gateway]
            .get_or_insert(conn)
            .clone())
    }

    /// The session, opened through `gateway` if no gateway has opened it yet.
    async fn open_session(
        &self,
        gateway: usize,
    ) -> Result<(ClientId, SessionToken), TransportError> {
        let session = self
            .session
            .get_or_try_init(|| async {
                match self.request(gateway, &Message::OpenSession).await? {
                    Message::SessionOpened { client, token } => Ok((client, token)),
                    other => Err(TransportError::Protocol(format!(
                        "unexpected answer to opening a session: {other:?}"
                    ))),
                }
            })
            .await?;
        Ok(*session)
    }

    async fn attempt(
        &self,
        gateway: usize,
        token: SessionToken,
        call: &Call,
    ) -> Result<Reply, TransportError> {
        let msg = Message::SessionCall {
            token,
            call: call.clone(),
        };
        let answer = self.request(gateway, &msg).await?;
        match answer {
            Message::Reply { reply, .. } => Ok(reply),
            other => Err(TransportError::Protocol(format!(
                "unexpected answer {other:?}"
            ))),
        }
    }

    async fn request(&self, gateway: usize, msg: &Message) -> Result<Message, TransportError> {
        let conn = self.connection(gateway).await?;
        let (mut writer, mut reader) = conn.open_bi().await?;
        writer.send(msg).await?;
        writer.finish()?;
        reader
            .recv::<Message>()
            .await?
            .ok_or_else(|| TransportError::Protocol("the gateway closed the stream".into()))
    }

    /// The status of the node behind each gateway address (`None` where unreachable).
    pub async fn status(&self) -> Vec<(SocketAddr, Result<NodeStatus, String>)> {
        let mut out = Vec::new();
        for (i, addr) in self.gateways.iter().enumerate() {
            let answer = tokio::time::timeout(
                self.policy.attempt_timeout,
                self.request(i, &Message::Status),
            )
            .await;
            let status = match answer {
                Ok(Ok(Message::StatusReply(s))) => Ok(s),
                Ok(Ok(other)) => Err(format!("unexpected answer {other:?}")),
                Ok(Err(e)) => {
                    // Drop the failed connection, as `call_raw` does: a cached connection
                    // to a node that died stays dead, so without this every later status
                    // would report a restarted node unreachable.
                    self.connections.lock().await[i] = None;
                    Err(e.to_string())
                }
                Err(_) => Err("timed out".into()),
            };
            out.push((*addr, status));
        }
        out
    }

    /// A builder for an ad-hoc `kv.txn` transaction.
    pub fn kv(&self) -> KvBuilder<'_> {
        KvBuilder::new(self)
    }

    /// Closes the session's connections.
    pub fn close(&self) {
        self.endpoint.close();
    }
}

/// A random starting point for spreading clients over gateways.
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // std's RandomState is seeded from the OS; a client may use OS randomness.
    #[allow(clippy::disallowed_types)]
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id().into());
    h.finish() | 1
}
