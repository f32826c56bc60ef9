//! `[events]` (the SSE fan-out) and `[webhooks]` (delivery of events to HTTP receivers).

use serde::{Deserialize, Serialize};

/// Call event streams (`GET …/events`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// Events kept in memory for `Last-Event-ID` replay. 4,096 holds a few minutes of a busy
    /// gateway's events at about 1 KB each (4 MB).
    pub ring_size: usize,
    /// How many events one SSE client may fall behind before it is cut off (it reconnects
    /// with `Last-Event-ID`). A call never waits for a client.
    pub subscriber_buffer: usize,
    /// A `:` comment line is sent after this many seconds without an event, so proxies and
    /// load balancers do not close an idle stream (most cut at 60 s).
    pub keepalive_secs: u64,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            ring_size: 4096,
            subscriber_buffer: 1024,
            keepalive_secs: 15,
        }
    }
}

/// Webhook delivery (deployments' `webhook_config`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    /// One attempt's budget, connect to response head; a receiver that hangs counts as failed.
    pub timeout_ms: u64,
    /// Wait before the first retry; doubled each retry up to `max_retry_secs`.
    pub first_retry_ms: u64,
    /// Cap of the backoff between retries.
    pub max_retry_secs: u64,
    /// Retries stop this long after the event (24 h: a receiver down for a day still gets it).
    pub give_up_secs: u64,
    /// Attempts in flight at once across all receivers.
    pub max_in_flight: usize,
    /// Events waiting for the dispatcher; past it new events are dropped (counted as
    /// `switchboard_webhook_deliveries_total{outcome="dropped"}`).
    pub queue: usize,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        Self {
            timeout_ms: 10_000,
            first_retry_ms: 1_000,
            max_retry_secs: 600,
            give_up_secs: 24 * 3600,
            max_in_flight: 64,
            queue: 65_536,
        }
    }
}
