//! Serving clients: a stream per request, sessions bound to the client's certificate and
//! authorization. The gateway machine bounds the calls in flight and answers those past
//! their deadline.

use super::router::Router;
use super::stats::status;
use super::{Clock, Event, NodeStats};
use crate::config::Access;
use crate::session::SessionKey;
use crate::transport::Connection;
use detflow_executor::Registry;
use detflow_protocol::NodeId;
use detflow_protocol::message::{Call, ClientRequest, Message, Rejection, Reply};
use detflow_protocol::stream::{Offset, StreamReply};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

/// How long a client has to read the answer to one call before the node drops it (the same
/// patience as `Limits::frame_read_timeout` gives a client's request).
const ANSWER_WRITE_DEADLINE: Duration = Duration::from_secs(10);

/// What serving a client needs: who may do what, and the bounds.
pub(super) struct ClientService {
    pub(super) router: Arc<Router>,
    pub(super) stats: Arc<NodeStats>,
    pub(super) me: NodeId,
    pub(super) clock: Clock,
    pub(super) sessions: SessionKey,
    pub(super) access: Access,
    pub(super) registry: Arc<Registry>,
}

pub(super) async fn serve_client(conn: Connection, service: Arc<ClientService>) {
    let fingerprint = conn.peer_fingerprint();
    loop {
        let (mut writer, mut reader) = match conn.accept_bi().await {
            Ok(stream) => stream,
            Err(_) => return,
        };
        let service = service.clone();
        tokio::spawn(async move {
            let answer = match reader.recv::<ClientRequest>().await {
                Ok(Some(request)) => service.answer(request, &fingerprint).await,
                Ok(None) => return,
                // As for channels: a client that gave up on a call resets its stream, which
                // is not bad input.
                Err(e) if e.is_refused_input() => {
                    tracing::warn!(error = %e, "closed a client stream with bad input");
                    return;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "client stream ended");
                    return;
                }
            };
            // A client that never reads its answer must not pin the task and the answer's
            // buffers: the write gets the same deadline as a frame read.
            match tokio::time::timeout(ANSWER_WRITE_DEADLINE, writer.send(&answer)).await {
                Ok(_) => {
                    let _ = writer.finish();
                }
                Err(_) => tracing::debug!("dropped an answer the client did not read in time"),
            }
        });
    }
}

impl ClientService {
    /// The answer to one client request.
    async fn answer(&self, request: ClientRequest, fingerprint: &[u8; 32]) -> Message {
        let (client, seq, reply) = match request {
            ClientRequest::OpenSession => {
                let (client, token) = self.sessions.issue(fingerprint);
                return Message::SessionOpened { client, token };
            }
            ClientRequest::Status => {
                return Message::StatusReply(status(&self.stats, self.me, self.clock));
            }
            ClientRequest::ReadStream { stream, from, max } => {
                return Message::Events(self.read_stream(stream, from, max).await);
            }
            ClientRequest::SessionCall { token, call } => {
                let (client, seq) = (call.client, call.seq);
                let reply = if !self.sessions.verify(client, fingerprint, &token) {
                    self.refuse(Rejection::ForeignSession(client.0))
                } else {
                    self.call(call).await
                };
                (client, seq, reply)
            }
            // A bare call names a session it cannot prove it owns.
            ClientRequest::Call(call) => (
                call.client,
                call.seq,
                self.refuse(Rejection::ForeignSession(call.client.0)),
            ),
        };
        Message::Reply { client, seq, reply }
    }

    /// Hands an authenticated call to the gateway and waits for its answer, which the
    /// gateway gives by the call's deadline at the latest.
    async fn call(&self, call: Call) -> Reply {
        if let Err(rejection) = crate::access::authorize(&self.access, &self.registry, &call) {
            return self.refuse(rejection);
        }
        let Some(gateway) = &self.router.gateway else {
            return Reply::Unavailable;
        };
        let (tx, rx) = oneshot::channel();
        self.router
            .deliver(gateway, Event::Client { call, reply: tx });
        // A dropped sender means the call was shed on the way (a full inbox).
        rx.await.unwrap_or(Reply::Unavailable)
    }

    /// Hands a stream read to the gateway and waits for its answer (by the read's
    /// deadline at the latest). Any client of the cluster may read any stream.
    async fn read_stream(&self, stream: String, from: Offset, max: u32) -> StreamReply {
        let Some(gateway) = &self.router.gateway else {
            return StreamReply::Unavailable;
        };
        let (tx, rx) = oneshot::channel();
        let read = Event::ClientRead {
            stream,
            from,
            max,
            reply: tx,
        };
        self.router.deliver(gateway, read);
        rx.await.unwrap_or(StreamReply::Unavailable)
    }

    fn refuse(&self, rejection: Rejection) -> Reply {
        self.stats.calls_refused.inc();
        Reply::Rejected(rejection)
    }
}
