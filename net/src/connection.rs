//! An authenticated connection: its peer's identity, its channels and request streams.

use crate::endpoint::{EndpointContext, Slot};
use crate::stream::{Budget, FrameReader, FrameWriter, ReaderContext};
use crate::{CLOSED, PeerIdentity, PeerRole, ROLE_REFUSED, TransportError};
use detflow_protocol::frame::FrameError;
use quinn::VarInt;
use serde::{Serialize, de::DeserializeOwned};
use std::net::SocketAddr;
use std::sync::Arc;

use crate::metrics::Metrics;

/// Which side opened a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Direction {
    /// We accepted it: the peer is subject to our caps.
    Inbound,
    /// We opened it.
    Outbound,
}

/// An authenticated connection to a node or a client. Cheap to clone; clones share it.
#[derive(Clone, Debug)]
pub struct Connection {
    inner: quinn::Connection,
    identity: PeerIdentity,
    reader: ReaderContext,
    /// The place this connection takes in its endpoint's caps (inbound only); given back
    /// when the connection is seen closed, or when the last clone is dropped.
    slot: Option<Arc<Slot>>,
}

impl Connection {
    /// Checks the peer's identity and, for inbound connections, takes its place under the
    /// caps. A peer without an acceptable identity is closed with [`ROLE_REFUSED`], one
    /// over a cap with [`crate::CONNECTION_LIMIT`]; both are counted.
    pub(crate) fn establish(
        inner: quinn::Connection,
        context: &Arc<EndpointContext>,
        direction: Direction,
    ) -> Result<Connection, TransportError> {
        let metrics = &context.metrics;
        let identity = PeerIdentity::of_connection(&inner).map_err(|e| {
            tracing::debug!(remote = %inner.remote_address(), error = %e, "refused a peer");
            inner.close(ROLE_REFUSED, e.to_string().as_bytes());
            Metrics::count(&metrics.handshakes_refused);
            TransportError::Role(e)
        })?;
        let slot = match direction {
            Direction::Inbound => Some(context.take_slot(&inner, &identity)?),
            Direction::Outbound => None,
        };
        let limits = &context.limits;
        // Channels, and the window their traffic needs, only between nodes: every
        // connection starts with no channels and a client's window.
        if identity.role == PeerRole::Node && context.own_role == Some(PeerRole::Node) {
            inner.set_max_concurrent_uni_streams(VarInt::from_u32(limits.uni_streams_max));
            inner.set_receive_window(VarInt::from_u32(limits.node_receive_window_bytes));
        }
        Ok(Connection {
            inner,
            identity,
            reader: ReaderContext {
                metrics: metrics.clone(),
                budget: Arc::new(Budget::new(
                    limits.connection_buffer_bytes_max(identity.role),
                )),
                frame_bytes_max: limits.frame_bytes_max,
                frame_read_timeout: limits.frame_read_timeout,
            },
            slot,
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
    /// A stream whose header is oversized, malformed, missing or late (beyond the read
    /// timeout) is stopped, counted and skipped, so an `Err` here means the connection is
    /// gone (or closed locally). Streams are taken one at a time: a peer that opens a
    /// stream and withholds its header delays the channels behind it by up to the read
    /// timeout (acceptable between authenticated nodes).
    pub async fn accept_channel<H: DeserializeOwned>(
        &self,
    ) -> Result<(H, FrameReader), TransportError> {
        loop {
            let recv = self.inner.accept_uni().await.map_err(|e| self.lost(e))?;
            let mut reader = FrameReader::new(recv, self.reader.clone(), true);
            match reader.recv::<H>().await {
                Ok(Some(header)) => return Ok((header, reader)),
                Ok(None) => {
                    let error = FrameError::Malformed("channel ended before its header".into());
                    let _ = reader.refuse_frame(error);
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
        let reader = FrameReader::new(recv, self.reader.clone(), false);
        Ok((self.writer(send), reader))
    }

    /// The next bidirectional stream the peer opened: a request, whose first frame must
    /// arrive within the read timeout.
    pub async fn accept_bi(&self) -> Result<(FrameWriter, FrameReader), TransportError> {
        let (send, recv) = self.inner.accept_bi().await.map_err(|e| self.lost(e))?;
        let reader = FrameReader::new(recv, self.reader.clone(), true);
        Ok((self.writer(send), reader))
    }

    /// Waits until the connection is closed, by either side or by a timeout, and says why.
    pub async fn closed(&self) -> TransportError {
        let error = self.inner.closed().await;
        self.lost(error)
    }

    /// Closes the connection with [`CLOSED`]; streams not yet delivered are abandoned.
    pub fn close(&self) {
        self.inner.close(CLOSED, b"closed");
    }

    /// What the peer is.
    pub fn role(&self) -> PeerRole {
        self.identity.role
    }

    /// The peer's node id, as its certificate names it: `Some` for nodes, `None` for
    /// clients.
    pub fn node_id(&self) -> Option<u32> {
        self.identity.node_id
    }

    /// The peer's certificate fingerprint (blake3 of its DER): a stable identity for a
    /// client, e.g. to bind sessions to.
    pub fn peer_fingerprint(&self) -> [u8; 32] {
        self.identity.fingerprint
    }

    /// Whether the peer is a client whose certificate names it an operator.
    pub fn peer_is_operator(&self) -> bool {
        self.identity.operator
    }

    /// Everything the peer's certificate says.
    pub fn identity(&self) -> PeerIdentity {
        self.identity
    }

    /// The peer's address.
    pub fn remote_address(&self) -> SocketAddr {
        self.inner.remote_address()
    }

    /// The underlying QUIC connection, for statistics and for tests that need raw streams.
    pub fn quic(&self) -> &quinn::Connection {
        &self.inner
    }

    /// The connection is gone: its place under the caps is free at once, whoever still
    /// holds a handle.
    fn lost(&self, error: quinn::ConnectionError) -> TransportError {
        if let Some(slot) = &self.slot {
            slot.release();
        }
        TransportError::Connection(error)
    }

    /// Bytes of partially received frames this connection holds now.
    #[cfg(test)]
    pub(crate) fn buffered_bytes(&self) -> u64 {
        self.reader.budget.used()
    }

    fn writer(&self, send: quinn::SendStream) -> FrameWriter {
        FrameWriter::new(send, self.reader.frame_bytes_max)
    }
}
