//! Transport counters and gauges, as plain atomics; an exporter reads them as
//! [`Sample`]s.

use std::sync::atomic::{AtomicU64, Ordering};

/// Whether a metric counts events (it only grows) or measures a level now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    /// Counts events since the endpoint was made.
    Counter,
    /// A level now.
    Gauge,
}

/// One metric's value, with what an exporter needs to name and describe it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    /// The name, without the exporter's prefix or a counter's `_total`.
    pub name: &'static str,
    /// One sentence on what it counts.
    pub help: &'static str,
    /// Counter or gauge.
    pub kind: MetricKind,
    /// The value now.
    pub value: u64,
}

/// Transport counters, shared by an endpoint and all its connections and streams.
#[derive(Debug, Default)]
pub struct Metrics {
    pub(crate) connections_accepted: AtomicU64,
    pub(crate) connections_open: AtomicU64,
    pub(crate) connections_opened: AtomicU64,
    pub(crate) connections_refused_limit: AtomicU64,
    pub(crate) frames_rejected_malformed: AtomicU64,
    pub(crate) frames_rejected_over_budget: AtomicU64,
    pub(crate) frames_rejected_too_large: AtomicU64,
    pub(crate) frames_timed_out: AtomicU64,
    pub(crate) handshakes_in_flight: AtomicU64,
    pub(crate) handshakes_refused: AtomicU64,
    pub(crate) handshakes_refused_busy: AtomicU64,
    pub(crate) handshakes_retried: AtomicU64,
    pub(crate) handshakes_timed_out: AtomicU64,
}

impl Metrics {
    /// Inbound connections that completed the handshake, the role check and the caps.
    pub fn connections_accepted(&self) -> u64 {
        self.connections_accepted.load(Ordering::Relaxed)
    }

    /// Inbound connections open now (closed ones leave once their last handle is dropped).
    pub fn connections_open(&self) -> u64 {
        self.connections_open.load(Ordering::Relaxed)
    }

    /// Outbound connections that completed the handshake and the role check.
    pub fn connections_opened(&self) -> u64 {
        self.connections_opened.load(Ordering::Relaxed)
    }

    /// Inbound connections refused because a connection cap was reached (all clients
    /// together, per node id, per client certificate): closed with
    /// [`crate::CONNECTION_LIMIT`] once the handshake told who the peer is.
    pub fn connections_refused_limit(&self) -> u64 {
        self.connections_refused_limit.load(Ordering::Relaxed)
    }

    /// Incoming frames (or channel headers) refused because they did not decode.
    pub fn frames_rejected_malformed(&self) -> u64 {
        self.frames_rejected_malformed.load(Ordering::Relaxed)
    }

    /// Incoming streams stopped because their connection's budget for partially received
    /// frames was spent.
    pub fn frames_rejected_over_budget(&self) -> u64 {
        self.frames_rejected_over_budget.load(Ordering::Relaxed)
    }

    /// Incoming frames refused because their length prefix exceeded the limit.
    pub fn frames_rejected_too_large(&self) -> u64 {
        self.frames_rejected_too_large.load(Ordering::Relaxed)
    }

    /// Incoming streams stopped because a frame did not arrive within the read deadline.
    pub fn frames_timed_out(&self) -> u64 {
        self.frames_timed_out.load(Ordering::Relaxed)
    }

    /// Inbound handshakes running now.
    pub fn handshakes_in_flight(&self) -> u64 {
        self.handshakes_in_flight.load(Ordering::Relaxed)
    }

    /// Handshakes this endpoint refused or that failed: every inbound handshake that did
    /// not complete (timeouts included), outbound ones whose server certificate we
    /// rejected, and peers in either direction whose certificate names no role or no
    /// single node id.
    pub fn handshakes_refused(&self) -> u64 {
        self.handshakes_refused.load(Ordering::Relaxed)
    }

    /// Inbound connection attempts refused before any handshake because
    /// [`crate::Limits::handshakes_in_flight_max`] handshakes were running.
    pub fn handshakes_refused_busy(&self) -> u64 {
        self.handshakes_refused_busy.load(Ordering::Relaxed)
    }

    /// Inbound connection attempts answered with a QUIC Retry (address validation). A
    /// genuine client comes back once; a spoofed or silent one never does.
    pub fn handshakes_retried(&self) -> u64 {
        self.handshakes_retried.load(Ordering::Relaxed)
    }

    /// Inbound handshakes abandoned at [`crate::Limits::handshake_timeout`] (also counted in
    /// [`Metrics::handshakes_refused`]).
    pub fn handshakes_timed_out(&self) -> u64 {
        self.handshakes_timed_out.load(Ordering::Relaxed)
    }

    /// Every counter and gauge with its name and description, for an exporter (the node's
    /// metrics endpoint names them `detflow_transport_<name>`, counters ending in `_total`).
    /// This crate keeps plain atomics and leaves the exposition format to its user.
    pub fn samples(&self) -> [Sample; 13] {
        use MetricKind::{Counter, Gauge};
        let sample = |name, kind, help, value| Sample {
            name,
            help,
            kind,
            value,
        };
        [
            sample(
                "connections_accepted",
                Counter,
                "Inbound connections that passed the handshake, the role check and the caps.",
                self.connections_accepted(),
            ),
            sample(
                "connections_opened",
                Counter,
                "Outbound connections that passed the handshake and the role check.",
                self.connections_opened(),
            ),
            sample(
                "connections_refused_limit",
                Counter,
                "Inbound connections refused by a connection cap (all clients, per node, per client).",
                self.connections_refused_limit(),
            ),
            sample(
                "frames_rejected_malformed",
                Counter,
                "Incoming frames refused because they did not decode.",
                self.frames_rejected_malformed(),
            ),
            sample(
                "frames_rejected_over_budget",
                Counter,
                "Incoming streams stopped because their connection's partial-frame budget was spent.",
                self.frames_rejected_over_budget(),
            ),
            sample(
                "frames_rejected_too_large",
                Counter,
                "Incoming frames refused because their length exceeded the limit.",
                self.frames_rejected_too_large(),
            ),
            sample(
                "frames_timed_out",
                Counter,
                "Incoming streams stopped because a frame did not arrive within the read deadline.",
                self.frames_timed_out(),
            ),
            sample(
                "handshakes_refused",
                Counter,
                "Handshakes refused: bad or missing certificate, no role or node id, or timeout.",
                self.handshakes_refused(),
            ),
            sample(
                "handshakes_refused_busy",
                Counter,
                "Connection attempts refused before a handshake: too many handshakes in flight.",
                self.handshakes_refused_busy(),
            ),
            sample(
                "handshakes_retried",
                Counter,
                "Connection attempts answered with a QUIC Retry to validate the address.",
                self.handshakes_retried(),
            ),
            sample(
                "handshakes_timed_out",
                Counter,
                "Inbound handshakes abandoned at the handshake timeout.",
                self.handshakes_timed_out(),
            ),
            sample(
                "connections_open",
                Gauge,
                "Inbound connections open now.",
                self.connections_open(),
            ),
            sample(
                "handshakes_in_flight",
                Gauge,
                "Inbound handshakes running now.",
                self.handshakes_in_flight(),
            ),
        ]
    }

    pub(crate) fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_name_every_counter_and_gauge_once() {
        let metrics = Metrics::default();
        Metrics::count(&metrics.handshakes_refused);
        Metrics::count(&metrics.handshakes_refused);
        Metrics::count(&metrics.connections_open);
        let samples = metrics.samples();
        let find = |name| samples.iter().find(|s| s.name == name).copied();
        let refused = find("handshakes_refused").expect("handshakes_refused");
        assert_eq!((refused.kind, refused.value), (MetricKind::Counter, 2));
        let open = find("connections_open").expect("connections_open");
        assert_eq!((open.kind, open.value), (MetricKind::Gauge, 1));
        assert_eq!(find("frames_rejected_too_large").map(|s| s.value), Some(0));
        let mut names: Vec<_> = samples.iter().map(|s| s.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), samples.len());
    }
}
