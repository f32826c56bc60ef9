//! SIP-side Prometheus metrics, registered into the gateway's registry
//! ([`crate::metrics::Metrics::registry`]) so they appear on the same `/metrics` page.
//!
//! Labels are bounded: status codes, methods from a fixed list, fixed reason words.

use std::time::Duration;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

use crate::events::HangupBy;

/// Methods reported by name; anything else counts as `other` so a fuzzing peer cannot blow
/// up label cardinality.
const KNOWN_METHODS: [&str; 8] = [
    "INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "INFO", "UPDATE", "REGISTER",
];

/// The bounded queues `sip_queue_full_total{queue}` reports (created at 0 on start).
const QUEUES: [&str; 6] = [
    "inbound",
    "udp_send",
    "tcp_write",
    "tcp_connections",
    "call_events",
    "rtp_ports",
];

/// Every SIP counter and gauge.
#[derive(Debug, Clone)]
pub struct SipMetrics {
    /// Requests received (after rate limiting and parsing) by method.
    pub requests: IntCounterVec,
    /// New INVITEs (initial, not retransmissions or re-INVITEs).
    pub invites: IntCounter,
    /// Responses sent by status code (first transmission only).
    pub responses: IntCounterVec,
    /// Calls currently ringing or answered.
    pub calls_active: IntGauge,
    /// Calls that reached 200 OK.
    pub calls_answered: IntCounter,
    /// Messages shed by the per-source rate limit, by action (`503` / `dropped`).
    pub rate_limited: IntCounterVec,
    /// Messages that could not be parsed, by what was done (`400` etc. / `dropped`).
    pub parse_errors: IntCounterVec,
    /// Messages above `[sip] max_message_bytes`.
    pub oversized: IntCounter,
    /// Items dropped because a bounded queue was full, by queue name.
    pub queue_full: IntCounterVec,
    /// Trunk authentication outcomes (`forbidden`, `challenged`, `stale`, `failed`, `ok`).
    pub auth: IntCounterVec,
    /// Routing rejections by reason (`no_route`, `paused`, ...).
    pub route_rejects: IntCounterVec,
    /// Messages and connections dropped by screening, by reason (`untrusted`, `banned`,
    /// `tcp_per_source`).
    pub dropped: IntCounterVec,
    /// Addresses banned (digest guessing, malformed bursts).
    pub bans: IntCounter,
    /// What the SIP engine did without keeping state, by what (`reply`, `ack_absorbed`,
    /// `ack_stray`).
    pub stateless: IntCounterVec,
    /// Live SIP transactions (accepted calls' and in-dialog requests' only).
    pub transactions: IntGauge,
    /// Caller RTP dropped by strict RTP, by reason: `foreign_source` (an IP the call does not
    /// allow: RTP Bleed / injection attempts) or `learning` (an allowed IP's new port still on
    /// probation). Running calls add theirs every second ([`super::call`]).
    pub rtp_dropped: IntCounterVec,
    /// TLS connections closed because the handshake failed, by reason: `error` (garbage, a
    /// plain SIP message, a missing or untrusted client certificate) or `timeout`.
    pub tls_handshake_failures: IntCounterVec,
    /// Per-call figures: setup stages, duration, who hung up, agent failures, RTP packets.
    pub call: CallMetrics,
}

/// Setup stages from the 180 (the INVITE taken on): `route` is admission + routing,
/// `agent_connect` the agent WebSocket, `answer` the whole wait until our 200.
const SETUP_BUCKETS: [f64; 12] = [
    0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
/// Call durations: a few seconds (a hang-up at the greeting) to an hour.
const DURATION_BUCKETS: [f64; 10] = [
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

/// Per-call metrics (the SIP engine records setup and endings; call tasks add media figures).
#[derive(Debug, Clone)]
pub struct CallMetrics {
    /// `switchboard_call_setup_seconds{stage="route|agent_connect|answer"}`.
    pub setup_seconds: HistogramVec,
    /// `switchboard_call_duration_seconds`: answered calls, 200 OK to the end.
    pub duration_seconds: Histogram,
    /// `switchboard_calls_ended_total{hangup_by="caller|agent|gateway"}`.
    pub ended: IntCounterVec,
    /// `switchboard_agent_connect_failures_total{reason="timeout|connect"}`.
    pub agent_connect_failures: IntCounterVec,
    /// `switchboard_rtp_packets_total{direction="in|out"}` (in: from the caller).
    pub rtp_packets: IntCounterVec,
}

impl CallMetrics {
    fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let setup_seconds = HistogramVec::new(
            HistogramOpts::new("call_setup_seconds", "Call setup time by stage")
                .buckets(SETUP_BUCKETS.to_vec()),
            &["stage"],
        )?;
        let duration_seconds = Histogram::with_opts(
            HistogramOpts::new("call_duration_seconds", "Answered call duration")
                .buckets(DURATION_BUCKETS.to_vec()),
        )?;
        let ended = IntCounterVec::new(
            Opts::new("calls_ended_total", "Calls ended, by who hung up"),
            &["hangup_by"],
        )?;
        let agent_connect_failures = IntCounterVec::new(
            Opts::new(
                "agent_connect_failures_total",
                "Agent WebSocket connections that failed, by reason",
            ),
            &["reason"],
        )?;
        let rtp_packets = IntCounterVec::new(
            Opts::new("rtp_packets_total", "RTP packets bridged, by direction"),
            &["direction"],
        )?;
        registry.register(Box::new(setup_seconds.clone()))?;
        registry.register(Box::new(duration_seconds.clone()))?;
        registry.register(Box::new(ended.clone()))?;
        registry.register(Box::new(agent_connect_failures.clone()))?;
        registry.register(Box::new(rtp_packets.clone()))?;
        // Every label value exists from the start, so dashboards and alerts see 0, not nothing.
        for by in [HangupBy::Caller, HangupBy::Agent, HangupBy::Gateway] {
            ended.with_label_values(&[by.as_str()]);
        }
        for stage in ["route", "agent_connect", "answer"] {
            setup_seconds.with_label_values(&[stage]);
        }
        for reason in ["timeout", "connect"] {
            agent_connect_failures.with_label_values(&[reason]);
        }
        for direction in ["in", "out"] {
            rtp_packets.with_label_values(&[direction]);
        }
        Ok(Self {
            setup_seconds,
            duration_seconds,
            ended,
            agent_connect_failures,
            rtp_packets,
        })
    }

    /// Records one setup stage's time.
    pub fn setup(&self, stage: &str, took: Duration) {
        self.setup_seconds
            .with_label_values(&[stage])
            .observe(took.as_secs_f64());
    }

    /// Records a call's end; `answered_for` is `None` for a call never answered.
    pub fn ended(&self, by: HangupBy, answered_for: Option<Duration>) {
        self.ended.with_label_values(&[by.as_str()]).inc();
        if let Some(d) = answered_for {
            self.duration_seconds.observe(d.as_secs_f64());
        }
    }
}

impl SipMetrics {
    /// Creates the metrics and registers them; fails only on a duplicate name (a bug).
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let requests = IntCounterVec::new(
            Opts::new("sip_requests_total", "SIP requests received, by method"),
            &["method"],
        )?;
        let invites = IntCounter::new("sip_invites_total", "New inbound INVITEs")?;
        let responses = IntCounterVec::new(
            Opts::new("sip_responses_total", "SIP responses sent, by status code"),
            &["code"],
        )?;
        let calls_active = IntGauge::new("sip_calls_active", "Calls ringing or answered")?;
        let calls_answered =
            IntCounter::new("sip_calls_answered_total", "Calls answered with 200 OK")?;
        let rate_limited = IntCounterVec::new(
            Opts::new(
                "sip_rate_limited_total",
                "Messages shed by the per-source rate limit",
            ),
            &["action"],
        )?;
        let parse_errors = IntCounterVec::new(
            Opts::new(
                "sip_parse_errors_total",
                "Unparseable SIP messages, by response sent",
            ),
            &["action"],
        )?;
        let oversized = IntCounter::new(
            "sip_oversized_messages_total",
            "Messages larger than [sip] max_message_bytes",
        )?;
        let queue_full = IntCounterVec::new(
            Opts::new(
                "sip_queue_full_total",
                "Items dropped because a bounded queue was full",
            ),
            &["queue"],
        )?;
        let auth = IntCounterVec::new(
            Opts::new("sip_trunk_auth_total", "Trunk authentication outcomes"),
            &["outcome"],
        )?;
        let route_rejects = IntCounterVec::new(
            Opts::new(
                "sip_route_rejects_total",
                "INVITEs rejected by routing, by reason",
            ),
            &["reason"],
        )?;
        let rtp_dropped = IntCounterVec::new(
            Opts::new(
                "rtp_dropped_total",
                "Caller RTP packets dropped by strict RTP, SRTP (authentication, replay), an unusable audio payload (bad_payload), or as audio the agent socket was too busy to take (agent_busy), by reason",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(invites.clone()))?;
        registry.register(Box::new(responses.clone()))?;
        registry.register(Box::new(calls_active.clone()))?;
        registry.register(Box::new(calls_answered.clone()))?;
        registry.register(Box::new(rate_limited.clone()))?;
        registry.register(Box::new(parse_errors.clone()))?;
        registry.register(Box::new(oversized.clone()))?;
        registry.register(Box::new(queue_full.clone()))?;
        registry.register(Box::new(auth.clone()))?;
        registry.register(Box::new(route_rejects.clone()))?;
        // Every reason from the start: a rejects panel or alert sees 0, not an absent series.
        for reason in switchboard_routing::RejectReason::ALL {
            route_rejects.with_label_values(&[reason.as_str()]);
        }
        for queue in QUEUES {
            queue_full.with_label_values(&[queue]);
        }
        let dropped = IntCounterVec::new(
            Opts::new(
                "sip_dropped_total",
                "SIP messages and connections dropped by screening, by reason",
            ),
            &["reason"],
        )?;
        let bans = IntCounter::new("sip_bans_total", "Source addresses banned")?;
        let stateless = IntCounterVec::new(
            Opts::new(
                "sip_stateless_total",
                "Replies sent and ACKs absorbed without a transaction",
            ),
            &["what"],
        )?;
        let transactions = IntGauge::new("sip_transactions", "Live SIP transactions")?;
        registry.register(Box::new(dropped.clone()))?;
        for reason in ["untrusted", "banned", "tcp_per_source"] {
            dropped.with_label_values(&[reason]);
        }
        registry.register(Box::new(bans.clone()))?;
        registry.register(Box::new(stateless.clone()))?;
        registry.register(Box::new(transactions.clone()))?;
        registry.register(Box::new(rtp_dropped.clone()))?;
        let tls_handshake_failures = IntCounterVec::new(
            Opts::new(
                "sip_tls_handshake_failures_total",
                "SIP TLS connections closed because the handshake failed, by reason",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(tls_handshake_failures.clone()))?;
        for reason in [
            "foreign_source",
            "learning",
            "srtp_auth",
            "srtp_replay",
            "bad_payload",
        ] {
            rtp_dropped.with_label_values(&[reason]);
        }
        let call = CallMetrics::register(registry)?;
        Ok(Self {
            tls_handshake_failures,
            call,
            dropped,
            bans,
            stateless,
            transactions,
            requests,
            invites,
            responses,
            calls_active,
            calls_answered,
            rate_limited,
            parse_errors,
            oversized,
            queue_full,
            auth,
            route_rejects,
            rtp_dropped,
        })
    }

    /// Counts a request by method (unknown methods as `other`).
    pub fn request(&self, method: &str) {
        let label = KNOWN_METHODS
            .iter()
            .find(|m| **m == method)
            .copied()
            .unwrap_or("other");
        self.requests.with_label_values(&[label]).inc();
    }

    /// Counts a response sent with `status`.
    pub fn response(&self, status: u16) {
        self.responses
            .with_label_values(&[status.to_string().as_str()])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::TextEncoder;

    #[test]
    fn counters_render_with_bounded_labels() {
        let registry = Registry::new();
        let m = SipMetrics::register(&registry).unwrap();
        m.request("INVITE");
        m.request("NEWMETHOD");
        m.response(404);
        m.rate_limited.with_label_values(&["dropped"]).inc();
        m.rtp_dropped
            .with_label_values(&["foreign_source"])
            .inc_by(3);
        let mut text = String::new();
        TextEncoder::new()
            .encode_utf8(&registry.gather(), &mut text)
            .unwrap();
        assert!(
            text.contains("sip_requests_total{method=\"INVITE\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("sip_requests_total{method=\"other\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("sip_responses_total{code=\"404\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("sip_rate_limited_total{action=\"dropped\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("rtp_dropped_total{reason=\"foreign_source\"} 3"),
            "{text}"
        );
        // Registering twice is a programming error and must be reported, not ignored.
        assert!(SipMetrics::register(&registry).is_err());
    }
}
