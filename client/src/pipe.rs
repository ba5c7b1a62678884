//! A call pipe: one long-lived stream per connection that carries the calls of every
//! session of the process, and their answers, matched by `(client, seq)`.
//!
//! Calls queued while the pipe is writing go out together, in one write (and so in as few
//! packets as QUIC can pack them); answers arrive in whatever order the cluster gives
//! them. A call stream costs the gateway one stream, not one per call.
//!
//! ```text
//!  sessions ── call ──▶ queue ──▶ writer task: every queued call, one write ──▶ gateway
//!     ▲                                                                           │
//!     └── oneshot ◀── waiting[(client, seq)] ◀── reader task: each Reply ◀────────┘
//! ```
//!
//! The pipe fails as a whole: when its stream or connection breaks, every call waiting on
//! it fails, and the session machine retries each (same `(client, seq)`) as it would a
//! call whose stream broke.

use detflow_net::{Connection, TransportError};
use detflow_protocol::message::{Call, Message, Reply, SessionToken};
use detflow_protocol::{ClientId, RequestSeq};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};

/// A call waiting for its answer: its registration number and where the answer goes.
type Waiter = (u64, oneshot::Sender<Reply>);

/// The calls waiting for an answer, and whether the pipe still works.
#[derive(Default)]
struct Waiting {
    /// `None` once the pipe failed: new calls fail at once.
    calls: Option<BTreeMap<(ClientId, RequestSeq), Waiter>>,
    /// Numbers registrations, so that an abandoned attempt removes only its own.
    next: u64,
}

/// One connection's call pipe.
pub(crate) struct Pipe {
    /// The connection: per-request streams (session opening, status, stream reads) still
    /// go over it.
    pub(crate) conn: Connection,
    queue: mpsc::UnboundedSender<Message>,
    waiting: Arc<Mutex<Waiting>>,
}

/// An answer being waited for; dropping it forgets the call (its answer is then dropped
/// on arrival).
pub(crate) struct Pending {
    key: (ClientId, RequestSeq),
    number: u64,
    answer: oneshot::Receiver<Reply>,
    waiting: Arc<Mutex<Waiting>>,
}

impl Pipe {
    /// Opens the pipe's stream on `conn` and starts its writer and reader tasks.
    pub(crate) async fn open(conn: Connection) -> Result<Pipe, TransportError> {
        let (mut writer, mut reader) = conn.open_bi().await?;
        let (queue, mut queued) = mpsc::unbounded_channel::<Message>();
        let waiting = Arc::new(Mutex::new(Waiting {
            calls: Some(BTreeMap::new()),
            next: 0,
        }));
        let failed = waiting.clone();
        tokio::spawn(async move {
            let mut frames = Vec::new();
            while let Some(first) = queued.recv().await {
                frames.clear();
                let mut next = Some(first);
                while let Some(msg) = next {
                    if let Err(e) = writer.encode_into(&msg, &mut frames) {
                        // One call that does not encode (over the frame limit) fails on its
                        // own: its waiter is dropped, the others go out.
                        tracing::warn!(error = %e, "a call does not fit in a frame");
                        if let Message::SessionCall { call, .. } = &msg {
                            drop(take(&failed, (call.client, call.seq)));
                        }
                    }
                    next = queued.try_recv().ok();
                }
                if let Err(e) = writer.write_frames(&frames).await {
                    tracing::debug!(error = %e, "the call pipe's stream broke");
                    break;
                }
            }
            fail_all(&failed);
        });
        let answers = waiting.clone();
        tokio::spawn(async move {
            loop {
                match reader.recv::<Message>().await {
                    Ok(Some(Message::Reply { client, seq, reply })) => {
                        if let Some(tx) = take(&answers, (client, seq)) {
                            let _ = tx.send(reply);
                        }
                    }
                    Ok(Some(other)) => {
                        tracing::warn!(?other, "unexpected message on the call pipe");
                        break;
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(error = %e, "the call pipe's stream broke");
                        break;
                    }
                }
            }
            fail_all(&answers);
        });
        Ok(Pipe {
            conn,
            queue,
            waiting,
        })
    }

    /// Queues `call` of the session `token` proves, and returns its answer to wait for;
    /// an error if the pipe has failed.
    pub(crate) fn call(&self, token: SessionToken, call: Call) -> Result<Pending, TransportError> {
        let key = (call.client, call.seq);
        let (tx, answer) = oneshot::channel();
        let number = {
            let mut waiting = lock(&self.waiting);
            let number = waiting.next;
            waiting.next += 1;
            let Some(calls) = waiting.calls.as_mut() else {
                return Err(broken());
            };
            // A retry of the same call through this gateway replaces an attempt that was
            // abandoned but not yet answered.
            calls.insert(key, (number, tx));
            number
        };
        let pending = Pending {
            key,
            number,
            answer,
            waiting: self.waiting.clone(),
        };
        let msg = Message::SessionCall { token, call };
        self.queue.send(msg).map_err(|_| broken())?;
        Ok(pending)
    }
}

impl Pending {
    /// The answer, or an error if the pipe failed first.
    pub(crate) async fn answer(mut self) -> Result<Reply, TransportError> {
        (&mut self.answer).await.map_err(|_| broken())
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let mut waiting = lock(&self.waiting);
        if let Some(calls) = waiting.calls.as_mut()
            && calls.get(&self.key).is_some_and(|(n, _)| *n == self.number)
        {
            calls.remove(&self.key);
        }
    }
}

fn take(waiting: &Mutex<Waiting>, key: (ClientId, RequestSeq)) -> Option<oneshot::Sender<Reply>> {
    lock(waiting).calls.as_mut()?.remove(&key).map(|(_, tx)| tx)
}

/// Marks the pipe failed: every waiting call gets an error.
fn fail_all(waiting: &Mutex<Waiting>) {
    lock(waiting).calls = None;
}

fn lock(waiting: &Mutex<Waiting>) -> std::sync::MutexGuard<'_, Waiting> {
    // The map holds no invariant a panicking holder could break halfway.
    waiting.lock().unwrap_or_else(|e| e.into_inner())
}

fn broken() -> TransportError {
    TransportError::Protocol("the call pipe's stream broke".into())
}
