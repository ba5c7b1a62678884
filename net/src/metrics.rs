//! Transport counters and gauges, rendered for Prometheus.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

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

    /// Appends every counter and gauge to `out` in the Prometheus text format, each named
    /// `detflow_transport_<name>` (counters end in `_total`).
    pub fn render_prometheus(&self, out: &mut String) {
        let counters = [
            (
                "connections_accepted_total",
                "Inbound connections that passed the handshake, the role check and the caps.",
                self.connections_accepted(),
            ),
            (
                "connections_opened_total",
                "Outbound connections that passed the handshake and the role check.",
                self.connections_opened(),
            ),
            (
                "connections_refused_limit_total",
                "Inbound connections refused by a connection cap (all clients, per node, per client).",
                self.connections_refused_limit(),
            ),
            (
                "frames_rejected_malformed_total",
                "Incoming frames refused because they did not decode.",
                self.frames_rejected_malformed(),
            ),
            (
                "frames_rejected_over_budget_total",
                "Incoming streams stopped because their connection's partial-frame budget was spent.",
                self.frames_rejected_over_budget(),
            ),
            (
                "frames_rejected_too_large_total",
                "Incoming frames refused because their length exceeded the limit.",
                self.frames_rejected_too_large(),
            ),
            (
                "frames_timed_out_total",
                "Incoming streams stopped because a frame did not arrive within the read deadline.",
                self.frames_timed_out(),
            ),
            (
                "handshakes_refused_total",
                "Handshakes refused: bad or missing certificate, no role or node id, or timeout.",
                self.handshakes_refused(),
            ),
            (
                "handshakes_refused_busy_total",
                "Connection attempts refused before a handshake: too many handshakes in flight.",
                self.handshakes_refused_busy(),
            ),
            (
                "handshakes_retried_total",
                "Connection attempts answered with a QUIC Retry to validate the address.",
                self.handshakes_retried(),
            ),
            (
                "handshakes_timed_out_total",
                "Inbound handshakes abandoned at the handshake timeout.",
                self.handshakes_timed_out(),
            ),
        ];
        for (name, help, value) in counters {
            write_metric(out, name, "counter", help, value);
        }
        let gauges = [
            (
                "connections_open",
                "Inbound connections open now.",
                self.connections_open(),
            ),
            (
                "handshakes_in_flight",
                "Inbound handshakes running now.",
                self.handshakes_in_flight(),
            ),
        ];
        for (name, help, value) in gauges {
            write_metric(out, name, "gauge", help, value);
        }
    }

    pub(crate) fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

fn write_metric(out: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    // Writing to a String cannot fail.
    let _ = writeln!(out, "# HELP detflow_transport_{name} {help}");
    let _ = writeln!(out, "# TYPE detflow_transport_{name} {kind}");
    let _ = writeln!(out, "detflow_transport_{name} {value}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render_as_prometheus_counters_and_gauges() {
        let metrics = Metrics::default();
        Metrics::count(&metrics.handshakes_refused);
        Metrics::count(&metrics.handshakes_refused);
        Metrics::count(&metrics.connections_open);
        let mut out = String::new();
        metrics.render_prometheus(&mut out);
        assert!(out.contains("# TYPE detflow_transport_handshakes_refused_total counter\n"));
        assert!(out.contains("\ndetflow_transport_handshakes_refused_total 2\n"));
        assert!(out.contains("\ndetflow_transport_frames_rejected_too_large_total 0\n"));
        assert!(out.contains("# TYPE detflow_transport_connections_open gauge\n"));
        assert!(out.contains("\ndetflow_transport_connections_open 1\n"));
        assert_eq!(out.lines().filter(|l| l.starts_with("# HELP")).count(), 13);
    }
}
