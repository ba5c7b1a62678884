//! Every bound and timer of an endpoint, and how they become QUIC settings.

use crate::TransportError;
use crate::stream::READ_CHUNK_BYTES;
use detflow_protocol::frame::DEFAULT_MAX_FRAME_BYTES;
use quinn::VarInt;
use std::sync::Arc;
use std::time::Duration;

/// Bounds and timers of an endpoint (DESIGN.md §10c). The defaults are the production
/// values.
///
/// What one peer can make a server hold: per connection, at most `receive_window_bytes`
/// (a client) or `node_receive_window_bytes` (a node) buffered inside QUIC plus, for
/// partially received frames,
/// `client_connection_buffer_bytes_max` (a client) or `node_connection_buffer_bytes_max`
/// (a node); per identity, that many times `connections_per_client_max` or
/// `connections_per_node_max`; and `connections_max` client connections in all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The largest frame body accepted or sent.
    pub frame_bytes_max: u32,
    /// Unidirectional streams (channels) a node peer may have open at once. Clients may
    /// open none. A node opens about two channels per partition of the peer plus four, and
    /// keeps them open, so this must exceed that.
    pub uni_streams_max: u32,
    /// Bidirectional streams (client calls in flight on one connection) a peer may have
    /// open at once.
    pub bi_streams_max: u32,
    /// How often an otherwise idle connection sends a keep-alive.
    pub keep_alive_interval: Duration,
    /// How long a silent peer is tolerated before its connection is declared lost. Must
    /// exceed `keep_alive_interval`.
    pub idle_timeout: Duration,
    /// Bytes a peer may send on one stream beyond what we have read from it. Only unread
    /// bytes count: a reader that consumes as it goes receives frames of any size.
    pub stream_receive_window_bytes: u32,
    /// Bytes a client may send on one connection, all streams together, beyond what we
    /// have read: the most QUIC buffers for a client that sends and never gets read. Every
    /// connection starts with it; a node peer's is raised to `node_receive_window_bytes`
    /// once its certificate is checked.
    pub receive_window_bytes: u32,
    /// The same for a connection with a node, whose channels carry the cluster's traffic.
    pub node_receive_window_bytes: u32,
    /// Bytes we buffer for sending on one connection before a write waits.
    pub send_window_bytes: u64,
    /// Inbound handshakes running at once; further connection attempts are refused at once
    /// (and counted) until one finishes.
    pub handshakes_in_flight_max: u32,
    /// How long an inbound handshake may take before it is abandoned (and counted).
    pub handshake_timeout: Duration,
    /// Inbound client connections open at once, all client certificates together. Node
    /// connections do not count against it (clients must never crowd the cluster's own
    /// links out); they are bounded by `connections_per_node_max` per node.
    pub connections_max: u32,
    /// Inbound connections open at once from one node id.
    pub connections_per_node_max: u32,
    /// Inbound connections open at once from one client certificate.
    pub connections_per_client_max: u32,
    /// How long a frame may take to arrive once its first byte did, and how long a request
    /// stream (and a channel's header) may take to deliver its first frame.
    pub frame_read_timeout: Duration,
    /// Bytes of partially received frames one client connection may hold, all its streams
    /// together; at least one whole frame of `frame_bytes_max`.
    pub client_connection_buffer_bytes_max: u64,
    /// Bytes of partially received frames one node connection may hold, all its channels
    /// together; at least one whole frame of `frame_bytes_max`.
    pub node_connection_buffer_bytes_max: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            frame_bytes_max: DEFAULT_MAX_FRAME_BYTES,
            uni_streams_max: 256,
            bi_streams_max: 256,
            keep_alive_interval: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(5),
            stream_receive_window_bytes: 1 << 20,
            receive_window_bytes: 2 << 20,
            node_receive_window_bytes: 16 << 20,
            send_window_bytes: 8 << 20,
            handshakes_in_flight_max: 64,
            handshake_timeout: Duration::from_secs(3),
            connections_max: 1024,
            connections_per_node_max: 8,
            connections_per_client_max: 256,
            frame_read_timeout: Duration::from_secs(10),
            // One whole frame of the largest size, and a little more for small ones.
            client_connection_buffer_bytes_max: u64::from(DEFAULT_MAX_FRAME_BYTES) + (1 << 20),
            node_connection_buffer_bytes_max: 8 * u64::from(DEFAULT_MAX_FRAME_BYTES),
        }
    }
}

impl Limits {
    /// Checks that the limits make sense together.
    pub fn validate(&self) -> Result<(), TransportError> {
        let fail = |what: String| Err(TransportError::Config(what));
        if self.keep_alive_interval >= self.idle_timeout {
            return fail(format!(
                "keep-alive interval {:?} must be shorter than the idle timeout {:?}",
                self.keep_alive_interval, self.idle_timeout
            ));
        }
        // A whole frame of the largest size, plus the read that completes it (which may
        // carry the start of the next one), must fit in a connection's budget.
        let frame_min = u64::from(self.frame_bytes_max) + 4 + READ_CHUNK_BYTES as u64;
        for (name, value) in [
            (
                "client_connection_buffer_bytes_max",
                self.client_connection_buffer_bytes_max,
            ),
            (
                "node_connection_buffer_bytes_max",
                self.node_connection_buffer_bytes_max,
            ),
        ] {
            if value < frame_min {
                return fail(format!(
                    "{name} = {value} cannot hold one frame of frame_bytes_max = {} (needs {frame_min})",
                    self.frame_bytes_max
                ));
            }
        }
        let positive = [
            ("handshakes_in_flight_max", self.handshakes_in_flight_max),
            ("connections_max", self.connections_max),
            ("connections_per_node_max", self.connections_per_node_max),
            (
                "connections_per_client_max",
                self.connections_per_client_max,
            ),
            (
                "stream_receive_window_bytes",
                self.stream_receive_window_bytes,
            ),
            ("receive_window_bytes", self.receive_window_bytes),
            ("node_receive_window_bytes", self.node_receive_window_bytes),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return fail(format!("{name} must be at least 1"));
        }
        for (name, value) in [
            ("handshake_timeout", self.handshake_timeout),
            ("frame_read_timeout", self.frame_read_timeout),
        ] {
            if value.is_zero() {
                return fail(format!("{name} must be positive"));
            }
        }
        Ok(())
    }

    /// The QUIC transport settings every connection of an endpoint starts with.
    pub(crate) fn transport_config(&self) -> Result<Arc<quinn::TransportConfig>, TransportError> {
        self.validate()?;
        let idle = quinn::IdleTimeout::try_from(self.idle_timeout)
            .map_err(|e| TransportError::Config(format!("idle timeout: {e}")))?;
        let mut config = quinn::TransportConfig::default();
        config
            .keep_alive_interval(Some(self.keep_alive_interval))
            .max_idle_timeout(Some(idle))
            // No channels until the peer is known to be a node: a client may never open
            // one, and what it sent on one would sit unread in our buffers. The limit is
            // raised once a node's handshake completes (`Connection::establish`).
            .max_concurrent_uni_streams(VarInt::from_u32(0))
            .max_concurrent_bidi_streams(VarInt::from_u32(self.bi_streams_max))
            .stream_receive_window(VarInt::from_u32(self.stream_receive_window_bytes))
            .receive_window(VarInt::from_u32(self.receive_window_bytes))
            .send_window(self.send_window_bytes)
            // We use no datagrams; unread ones would otherwise be buffered per connection.
            .datagram_receive_buffer_size(None);
        Ok(Arc::new(config))
    }

    /// How many bytes of partial frames a connection to a peer of `role` may hold.
    pub(crate) fn connection_buffer_bytes_max(&self, role: crate::PeerRole) -> u64 {
        match role {
            crate::PeerRole::Client => self.client_connection_buffer_bytes_max,
            crate::PeerRole::Node => self.node_connection_buffer_bytes_max,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_checked() {
        assert!(Limits::default().transport_config().is_ok());
        let bad = [
            Limits {
                keep_alive_interval: Duration::from_secs(10),
                ..Limits::default()
            },
            Limits {
                client_connection_buffer_bytes_max: u64::from(DEFAULT_MAX_FRAME_BYTES),
                ..Limits::default()
            },
            Limits {
                frame_bytes_max: u32::MAX,
                ..Limits::default()
            },
            Limits {
                handshakes_in_flight_max: 0,
                ..Limits::default()
            },
            Limits {
                frame_read_timeout: Duration::ZERO,
                ..Limits::default()
            },
        ];
        for limits in bad {
            assert!(
                matches!(limits.transport_config(), Err(TransportError::Config(_))),
                "{limits:?}"
            );
        }
    }
}
