//! SIP-side Prometheus metrics, registered into the gateway's registry
//! ([`crate::metrics::Metrics::registry`]) so they appear on the same `/metrics` page.
//!
//! Labels are bounded: status codes, methods from a fixed list, fixed reason words.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// Methods reported by name; anything else counts as `other` so a fuzzing peer cannot blow
/// up label cardinality.
const KNOWN_METHODS: [&str; 8] = [
    "INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "INFO", "UPDATE", "REGISTER",
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
                "Caller RTP packets dropped by strict RTP or SRTP (authentication, replay), by reason",
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
        Ok(Self {
            tls_handshake_failures,
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
