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
//! jittered backoff. The cluster executes a call at most once and answers a retry with the
//! original result, so a call that returns `Ok` executed exactly once. Those decisions are
//! made by [`detflow_protocol::session`], the sans-IO session the simulator's clients run
//! too; this library only carries its messages and keeps its time.
//!
//! The session is opened by the first gateway the client reaches, which returns a session
//! id and a token binding it to this client's certificate; every gateway of the cluster
//! accepts the token, and no other client can use the session.
//!
//! A process that runs many sessions opens one with [`Client::connect`] and the others
//! with [`Client::new_session`]: they share one UDP socket, one QUIC connection per gateway
//! and, on each, one long-lived stream that carries every session's calls and their
//! answers (matched by session and call number); calls made while the stream is busy go
//! out together in one write.

mod kv;
mod pipe;
mod snapshot;
mod subscribe;

pub use detflow_net::{Tls, TransportError};
pub use detflow_protocol::message::{CheckpointAnswer, LogReply};
pub use detflow_protocol::schema::{Field, FieldType, Table};
pub use kv::KvBuilder;
pub use snapshot::{At, PartitionScan, ReadError, Scan, ScanRange, Snapshot};
pub use subscribe::{Offset, StreamEvent, SubscribeError, Subscription};

use detflow_executor::Procedure;
use detflow_net::{Endpoint, Limits};
use detflow_protocol::message::{Call, Message, NodeStatus, Rejection, Reply, SessionToken};
use detflow_protocol::session::{self, Session};
use detflow_protocol::{AbortReason, ClientId, DetRng, Machine, Outcome, Time, codec};
use pipe::Pipe;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
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
    /// The session's defaults: 3 s per attempt, back-off from 20 ms doubling to 1 s, 60
    /// attempts.
    fn default() -> RetryPolicy {
        let policy = session::RetryPolicy::default();
        RetryPolicy {
            attempt_timeout: Duration::from_micros(policy.attempt_timeout_us),
            backoff: Duration::from_micros(policy.backoff_us),
            backoff_max: Duration::from_micros(policy.backoff_max_us),
            attempts_max: policy.attempts_max,
        }
    }
}

impl From<RetryPolicy> for session::RetryPolicy {
    fn from(p: RetryPolicy) -> session::RetryPolicy {
        let us = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        session::RetryPolicy {
            attempt_timeout_us: us(p.attempt_timeout),
            backoff_us: us(p.backoff),
            backoff_max_us: us(p.backoff_max),
            attempts_max: p.attempts_max,
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

/// An attempt of a call in flight: the gateway's answer, or why there is none.
type Attempt<'a> = Pin<Box<dyn Future<Output = Result<Reply, Failed>> + Send + 'a>>;

/// Why a request failed, and on which connection (its `stable_id`; `None` if none was
/// made), so that the connection is dropped only if it is still the one in use.
type Failed = (TransportError, Option<usize>);

/// The socket and the connections, one per gateway, that sessions share.
struct Links {
    endpoint: Endpoint,
    gateways: Vec<SocketAddr>,
    /// One slot per gateway, each locked on its own: sessions wait for one handshake with
    /// a gateway rather than each making its own.
    connections: Vec<Mutex<Option<Arc<Pipe>>>>,
}

/// A session with a detflow cluster.
pub struct Client {
    links: Arc<Links>,
    /// Numbers calls and decides retries (sans IO).
    calls: std::sync::Mutex<Session>,
    /// The session id and token, opened on first use by whichever gateway answers first.
    session: tokio::sync::OnceCell<(ClientId, SessionToken)>,
    policy: RetryPolicy,
    /// The session machine's time zero.
    started: Instant,
    /// The latest epoch a call of this session was ordered in: a `Latest` snapshot reads
    /// at or after it.
    last_epoch: std::sync::atomic::AtomicU64,
    /// The gateway the next snapshot read tries first: the last one that answered.
    next_gateway: std::sync::atomic::AtomicUsize,
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
        let policy = RetryPolicy::default();
        let links = Links {
            endpoint,
            connections: gateways.iter().map(|_| Mutex::new(None)).collect(),
            gateways,
        };
        Ok(Client::over(Arc::new(links), policy))
    }

    /// A new session over `links`.
    fn over(links: Arc<Links>, policy: RetryPolicy) -> Client {
        Client {
            calls: std::sync::Mutex::new(new_session(links.gateways.len(), policy)),
            links,
            session: tokio::sync::OnceCell::new(),
            policy,
            // The client is a driver: it keeps the session machine's time.
            #[allow(clippy::disallowed_methods)]
            started: Instant::now(),
            last_epoch: std::sync::atomic::AtomicU64::new(0),
            next_gateway: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Another session of the same client certificate over this one's socket and
    /// connections, with the same retry policy. It opens its own session id on its first
    /// call and numbers its calls on its own; only the transport is shared.
    pub fn new_session(&self) -> Client {
        Client::over(self.links.clone(), self.policy)
    }

    /// Replaces the retry policy (before the first call).
    pub fn with_policy(mut self, policy: RetryPolicy) -> Client {
        self.policy = policy;
        self.calls = std::sync::Mutex::new(new_session(self.links.gateways.len(), policy));
        self
    }

    /// The session machine's clock.
    fn now(&self) -> Time {
        Time(u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX))
    }

    /// When the session machine's time `t` comes.
    fn instant(&self, t: Time) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.started + Duration::from_micros(t.0))
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, Session> {
        // The session holds no invariant a panicking holder could break halfway.
        self.calls.lock().unwrap_or_else(|e| e.into_inner())
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
        let mut pending = self.sessions().call(procedure.to_owned(), args);
        let mut out = Vec::new();
        pending.handle(self.now(), session::Input::Start, &mut out);
        let mut attempt: Option<(usize, Attempt<'_>)> = None;
        loop {
            for effect in out.drain(..) {
                let ended = match effect {
                    session::Output::Send { gateway, call, .. } => {
                        // A new attempt abandons the previous one (its answer is dropped
                        // on arrival).
                        let gateway = gateway as usize;
                        attempt = Some((gateway, Box::pin(self.attempt(gateway, call))));
                        continue;
                    }
                    session::Output::Done(Reply::Done { outcome, position }) => {
                        self.wrote_in(position.epoch);
                        match outcome {
                            Outcome::Committed(output) => Ok(output),
                            Outcome::Aborted(reason) => Err(CallError::Aborted(reason)),
                        }
                    }
                    session::Output::Done(Reply::Rejected(reason)) => {
                        Err(CallError::Rejected(reason))
                    }
                    session::Output::Done(Reply::Unavailable) => {
                        unreachable!("a session ends a call only with a result or a rejection")
                    }
                    session::Output::GaveUp { attempts, last } => {
                        Err(CallError::Unavailable { attempts, last })
                    }
                };
                self.sessions().finished(&pending);
                return ended;
            }
            let deadline = pending.next_deadline().map(|t| self.instant(t));
            let input = tokio::select! {
                answer = async {
                    match attempt.as_mut() {
                        Some((_, answer)) => answer.await,
                        None => std::future::pending().await,
                    }
                } => {
                    let (gateway, _) = attempt.take().expect("an attempt answered");
                    match answer {
                        Ok(reply) => session::Input::Reply(reply),
                        Err((e, conn)) => {
                            self.forget(gateway, conn).await;
                            session::Input::Failed(format!("gateway {}: {e}", self.links.gateways[gateway]))
                        }
                    }
                }
                _ = sleep_until(deadline) => session::Input::Tick,
            };
            if let session::Input::Failed(why) = &input {
                tracing::debug!(seq = %pending.seq(), %why, "an attempt failed");
            }
            pending.handle(self.now(), input, &mut out);
        }
    }

    /// The call pipe to `gateway`, connecting first if there is none.
    async fn pipe(&self, gateway: usize) -> Result<Arc<Pipe>, TransportError> {
        // The gateway's slot stays locked through the handshake: the sessions that need
        // this gateway meanwhile wait for that one connection (hundreds of sessions
        // starting at once made hundreds of handshakes, over the node's cap on handshakes
        // in flight). Calls through other gateways are not held up, and an attempt that
        // times out drops its wait and its lock.
        let mut slot = self.links.connections[gateway].lock().await;
        if let Some(pipe) = &*slot {
            return Ok(pipe.clone());
        }
        let conn = self
            .links
            .endpoint
            .connect(self.links.gateways[gateway])
            .await?;
        let pipe = Arc::new(Pipe::open(conn).await?);
        Ok(slot.insert(pipe).clone())
    }

    /// Drops the connection to `gateway` after a request on it failed, unless it has been
    /// replaced already: another session may have reconnected meanwhile (`failed` is the
    /// failed connection's `stable_id`, `None` when no connection was made).
    async fn forget(&self, gateway: usize, failed: Option<usize>) {
        let mut slot = self.links.connections[gateway].lock().await;
        let same = match (slot.as_ref(), failed) {
            (Some(pipe), Some(id)) => pipe.conn.quic().stable_id() == id,
            (Some(_), None) => false,
            (None, _) => true,
        };
        if same {
            *slot = None;
        }
    }

    /// The session, opened through `gateway` if no gateway has opened it yet.
    async fn open_session(&self, gateway: usize) -> Result<(ClientId, SessionToken), Failed> {
        let session = self
            .session
            .get_or_try_init(|| async {
                match self.request(gateway, &Message::OpenSession).await? {
                    Message::SessionOpened { client, token } => Ok((client, token)),
                    other => Err((
                        TransportError::Protocol(format!(
                            "unexpected answer to opening a session: {other:?}"
                        )),
                        None,
                    )),
                }
            })
            .await?;
        Ok(*session)
    }

    /// One attempt of `call` through `gateway`, opening the session there if no gateway
    /// has yet.
    async fn attempt(&self, gateway: usize, mut call: Call) -> Result<Reply, Failed> {
        let (client, token) = self.open_session(gateway).await?;
        call.client = client;
        let pipe = self.pipe(gateway).await.map_err(|e| (e, None))?;
        let on = |e: TransportError| (e, Some(pipe.conn.quic().stable_id()));
        let pending = pipe.call(token, call).map_err(on)?;
        pending.answer().await.map_err(on)
    }

    async fn request(&self, gateway: usize, msg: &Message) -> Result<Message, Failed> {
        let pipe = self.pipe(gateway).await.map_err(|e| (e, None))?;
        let on = |e: TransportError| (e, Some(pipe.conn.quic().stable_id()));
        let (mut writer, mut reader) = pipe.conn.open_bi().await.map_err(on)?;
        writer.send(msg).await.map_err(on)?;
        writer.finish().map_err(on)?;
        reader.recv::<Message>().await.map_err(on)?.ok_or_else(|| {
            on(TransportError::Protocol(
                "the gateway closed the stream".into(),
            ))
        })
    }

    /// The status of the node behind each gateway address (`None` where unreachable).
    pub async fn status(&self) -> Vec<(SocketAddr, Result<NodeStatus, String>)> {
        let mut out = Vec::new();
        for (i, addr) in self.links.gateways.iter().enumerate() {
            let status = match self.ask(i, &Message::Status).await {
                Ok(Message::StatusReply(s)) => Ok(s),
                Ok(other) => Err(format!("unexpected answer {other:?}")),
                Err(e) => Err(e),
            };
            out.push((*addr, status));
        }
        out
    }

    /// One request to gateway `i` within an attempt's timeout, its failure as text. A
    /// failed connection is dropped, as `call_raw` does: a cached connection to a node
    /// that died stays dead, so without this every later request would find a restarted
    /// node unreachable.
    /// Asks every node given at connect to checkpoint each partition it hosts after epoch
    /// `at` (one not applied yet, the same for all, so that the archive holds a complete
    /// set there): each node's answers, per partition replica.
    pub async fn checkpoint(
        &self,
        at: detflow_protocol::Epoch,
    ) -> Vec<(
        SocketAddr,
        Result<Vec<(detflow_protocol::PartitionId, CheckpointAnswer)>, String>,
    )> {
        let mut out = Vec::new();
        for (i, addr) in self.links.gateways.iter().enumerate() {
            let answer = match self.ask(i, &Message::Checkpoint { at }).await {
                Ok(Message::CheckpointReply(answers)) => Ok(answers),
                Ok(other) => Err(format!("unexpected answer {other:?}")),
                Err(e) => Err(e),
            };
            out.push((*addr, answer));
        }
        out
    }

    async fn ask(&self, i: usize, msg: &Message) -> Result<Message, String> {
        match tokio::time::timeout(self.policy.attempt_timeout, self.request(i, msg)).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err((e, conn))) => {
                self.forget(i, conn).await;
                Err(e.to_string())
            }
            Err(_) => Err("timed out".into()),
        }
    }

    /// Every table the cluster's services declare, with its schema (key fields and
    /// columns): what SQL over the global state can read. The first gateway that answers
    /// tells; every node runs the same services.
    pub async fn tables(&self) -> Result<Vec<Table>, ReadError> {
        let mut last = String::from("no gateway configured");
        let attempts = self.links.gateways.len();
        for i in 0..attempts {
            match self.ask(i, &Message::Tables).await {
                Ok(Message::TablesReply(tables)) => return Ok(tables),
                Ok(other) => last = format!("unexpected answer {other:?}"),
                Err(e) => last = e,
            }
        }
        Err(ReadError::Unavailable {
            attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
            last,
        })
    }

    /// The committed log from epoch `from` on, for audits: the batches of the first node
    /// whose sequencer replica holds `from` (as many as fit one answer; read again after
    /// the last), empty batches if no node has committed `from` yet, or
    /// [`LogReply::Compacted`] if every node's log starts after it (the archive has it).
    pub async fn read_log(&self, from: detflow_protocol::Epoch) -> Result<LogReply, ReadError> {
        let mut last = String::from("no gateway configured");
        let attempts = self.links.gateways.len();
        let mut fallback = None;
        for i in 0..attempts {
            match self.ask(i, &Message::LogRead { from }).await {
                Ok(Message::LogReply(LogReply::Batches { commit, batches }))
                    if !batches.is_empty() =>
                {
                    return Ok(LogReply::Batches { commit, batches });
                }
                Ok(Message::LogReply(LogReply::NoLog)) => last = "no sequencer replica".into(),
                Ok(Message::LogReply(LogReply::Denied(why))) => return Err(ReadError::Denied(why)),
                Ok(Message::LogReply(reply)) => {
                    // An empty answer (behind) beats a compacted one, which beats none.
                    if !matches!(
                        (&fallback, &reply),
                        (Some(LogReply::Batches { .. }), LogReply::Compacted { .. })
                    ) {
                        fallback = Some(reply);
                    }
                }
                Ok(other) => last = format!("unexpected answer {other:?}"),
                Err(e) => last = e,
            }
        }
        fallback.ok_or(ReadError::Unavailable {
            attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
            last,
        })
    }

    /// A builder for an ad-hoc `kv.txn` transaction.
    pub fn kv(&self) -> KvBuilder<'_> {
        KvBuilder::new(self)
    }

    /// Closes the connections, those of every session made by [`Client::new_session`]
    /// from this one (or from which this one was made) included.
    pub fn close(&self) {
        self.links.endpoint.close();
    }
}

/// A session over `gateways` gateways whose first call goes to a random one, so that
/// clients spread over the gateways.
fn new_session(gateways: usize, policy: RetryPolicy) -> Session {
    let gateways = u32::try_from(gateways).unwrap_or(u32::MAX);
    // The gateway assigns the session id when the session opens; calls carry it from then.
    Session::new(
        ClientId(0),
        gateways,
        policy.into(),
        DetRng::new(random_seed()),
    )
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// A random seed for the session's gateway choice and back-off jitter.
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // std's RandomState is seeded from the OS; a client may use OS randomness.
    #[allow(clippy::disallowed_types)]
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(std::process::id().into());
    h.finish() | 1
}
