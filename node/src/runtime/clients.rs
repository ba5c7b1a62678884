//! Serving clients: a stream per request or a call pipe per client process, sessions bound
//! to the client's certificate and authorization. The gateway machine bounds the calls in
//! flight and answers those past their deadline.

use super::router::Router;
use super::stats::status;
use super::{Clock, Event, NodeStats};
use crate::config::Access;
use crate::session::SessionKey;
use crate::transport::{Connection, FrameReader, FrameWriter};
use detflow_executor::Registry;
use detflow_protocol::message::{
    Call, CheckpointAnswer, ClientRequest, LogReply, Message, Rejection, Reply,
};
use detflow_protocol::snapshot::{SnapshotError, SnapshotRead, SnapshotReply};
use detflow_protocol::stream::{Offset, StreamReply};
use detflow_protocol::{NodeId, PartitionId};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

/// How long a client has to read the answer to one call before the node drops it (the same
/// patience as `Limits::frame_read_timeout` gives a client's request).
const ANSWER_WRITE_DEADLINE: Duration = Duration::from_secs(10);

/// Requests one client stream may have in flight (being answered, or answered and not yet
/// written): enough for every session of a busy client process to have a call in flight
/// on its one call pipe to this node.
const STREAM_REQUESTS_MAX: usize = 4096;

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

/// Who a client is, as its certificate says.
#[derive(Clone, Copy)]
struct Peer {
    /// Its certificate's fingerprint: it owns the sessions it opens.
    fingerprint: [u8; 32],
    /// Whether its certificate names it an operator.
    operator: bool,
}

/// Why a client that is no operator may not read the log or ask for checkpoints.
const OPERATORS_ONLY: &str = "reading the log and asking for checkpoints take an operator's \
    certificate (operator.pem, which `detflow certs` writes beside client.pem)";

pub(super) async fn serve_client(conn: Connection, service: Arc<ClientService>) {
    let fingerprint = conn.peer_fingerprint();
    let operator = conn.peer_is_operator();
    loop {
        let (writer, reader) = match conn.accept_bi().await {
            Ok(stream) => stream,
            Err(_) => return,
        };
        let peer = Peer {
            fingerprint,
            operator,
        };
        tokio::spawn(serve_stream(writer, reader, service.clone(), peer));
    }
}

/// Serves one client stream: a single request (a status, a session opening, a stream
/// read, a call), or a client's call pipe, which carries the calls of all its sessions.
/// Each request is answered as soon as its answer is known, in any order (a call's answer
/// names its session and number); the answers ready at once go out in one write.
async fn serve_stream(
    writer: FrameWriter,
    mut reader: FrameReader,
    service: Arc<ClientService>,
    peer: Peer,
) {
    let (answers, ready) = mpsc::unbounded_channel::<(Message, OwnedSemaphorePermit)>();
    let write = tokio::spawn(write_answers(writer, ready));
    // A permit per request being answered or written: a client that sends faster than it
    // reads its answers is no longer read, and QUIC's flow control holds it back.
    let in_flight = Arc::new(Semaphore::new(STREAM_REQUESTS_MAX));
    loop {
        let next = async {
            let permit = in_flight.clone().acquire_owned().await.ok()?;
            Some((permit, reader.recv::<ClientRequest>().await))
        };
        let (permit, request) = tokio::select! {
            next = next => match next {
                Some(next) => next,
                None => break,
            },
            // The writer gave up on the client: stop reading it too.
            _ = answers.closed() => break,
        };
        let request = match request {
            Ok(Some(request)) => request,
            Ok(None) => break,
            // As for channels: a client that gave up on a call resets its stream, which
            // is not bad input.
            Err(e) if e.is_refused_input() => {
                tracing::warn!(error = %e, "closed a client stream with bad input");
                break;
            }
            Err(e) => {
                tracing::debug!(error = %e, "client stream ended");
                break;
            }
        };
        let (service, answers) = (service.clone(), answers.clone());
        tokio::spawn(async move {
            let answer = service.answer(request, &peer).await;
            let _ = answers.send((answer, permit));
        });
    }
    drop(answers);
    let _ = write.await;
}

/// Writes a stream's answers as they come, every answer ready at once in one write, and
/// finishes the stream after the last.
async fn write_answers(
    mut writer: FrameWriter,
    mut ready: mpsc::UnboundedReceiver<(Message, OwnedSemaphorePermit)>,
) {
    let mut frames = Vec::new();
    let mut permits = Vec::new();
    while let Some(first) = ready.recv().await {
        frames.clear();
        let mut next = Some(first);
        while let Some((answer, permit)) = next {
            if let Err(e) = writer.encode_into(&answer, &mut frames) {
                tracing::warn!(error = %e, "an answer does not fit in a frame");
            }
            permits.push(permit);
            next = ready.try_recv().ok();
        }
        // A client that never reads its answers must not pin the task and the answers'
        // buffers: the write gets the same deadline as a frame read.
        match tokio::time::timeout(ANSWER_WRITE_DEADLINE, writer.write_frames(&frames)).await {
            Ok(Ok(())) => permits.clear(),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "client stream ended before its answers");
                return;
            }
            Err(_) => {
                tracing::debug!("dropped answers the client did not read in time");
                return;
            }
        }
    }
    let _ = writer.finish();
}

impl ClientService {
    /// The answer to one client request.
    async fn answer(&self, request: ClientRequest, peer: &Peer) -> Message {
        let fingerprint = &peer.fingerprint;
        let (client, seq, reply) = match request {
            ClientRequest::OpenSession => {
                let (client, token) = self.sessions.issue(fingerprint);
                return Message::SessionOpened { client, token };
            }
            ClientRequest::Status => {
                return Message::StatusReply(status(&self.stats, self.me, self.clock));
            }
            ClientRequest::Tables => return Message::TablesReply(self.registry.tables()),
            // The log holds every client's calls and arguments; checkpoints cost the
            // whole cluster's disk: operators only.
            ClientRequest::LogRead { .. } if !peer.operator => {
                return Message::LogReply(LogReply::Denied(OPERATORS_ONLY.into()));
            }
            ClientRequest::LogRead { from } => return Message::LogReply(self.read_log(from).await),
            ClientRequest::Checkpoint { .. } if !peer.operator => {
                let denied =
                    |p: &PartitionId| (*p, CheckpointAnswer::Refused(OPERATORS_ONLY.into()));
                return Message::CheckpointReply(
                    self.router.executors.keys().map(denied).collect(),
                );
            }
            ClientRequest::Checkpoint { at } => {
                return Message::CheckpointReply(self.checkpoint(at).await);
            }
            ClientRequest::ReadStream { stream, from, max } => {
                return Message::Events(self.read_stream(stream, from, max).await);
            }
            ClientRequest::SnapshotRead(read) => {
                return Message::Snapshot(self.read_snapshot(read).await);
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

    /// Asks the replica on this node for its committed log from `from` on.
    async fn read_log(&self, from: detflow_protocol::Epoch) -> LogReply {
        let Some(replica) = &self.router.replica else {
            return LogReply::NoLog;
        };
        let (tx, rx) = oneshot::channel();
        self.router
            .deliver(replica, Event::ClientLog { from, reply: tx });
        // A dropped sender: the read was shed on the way (a full inbox), or the node stops.
        rx.await.unwrap_or(LogReply::Batches {
            commit: detflow_protocol::Epoch(0),
            batches: Vec::new(),
        })
    }

    /// Asks every partition replica on this node to checkpoint after epoch `at`; each
    /// answers at once (a replica whose inbox is full is left out).
    async fn checkpoint(
        &self,
        at: detflow_protocol::Epoch,
    ) -> Vec<(detflow_protocol::PartitionId, CheckpointAnswer)> {
        let mut waiting = Vec::new();
        for inbox in self.router.executors.values() {
            let (tx, rx) = oneshot::channel();
            self.router
                .deliver(inbox, Event::ClientCheckpoint { at, reply: tx });
            waiting.push(rx);
        }
        let mut answers = Vec::new();
        for rx in waiting {
            if let Ok(answer) = rx.await {
                answers.push(answer);
            }
        }
        answers
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

    /// Hands a snapshot read to the gateway and waits for its answer (by the read's
    /// deadline at the latest). Any client of the cluster may read any user table.
    async fn read_snapshot(&self, read: SnapshotRead) -> SnapshotReply {
        let unavailable = SnapshotReply::Failed(SnapshotError::Unavailable);
        let Some(gateway) = &self.router.gateway else {
            return unavailable;
        };
        let (tx, rx) = oneshot::channel();
        self.router
            .deliver(gateway, Event::ClientSnapshot { read, reply: tx });
        rx.await.unwrap_or(unavailable)
    }

    fn refuse(&self, rejection: Rejection) -> Reply {
        self.stats.calls_refused.inc();
        Reply::Rejected(rejection)
    }
}
