//! Operator sections: `[shutdown]`, `[log]` and `[metrics]`.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// How a SIGTERM drains the gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// After SIGTERM, live calls go on this long; then the ones left get BYE (Q.850 41).
    pub grace_period_secs: u64,
}

/// 300 s: most contact-centre calls end within five minutes, and it is well inside what
/// orchestrators allow (set `terminationGracePeriodSeconds` / `TimeoutStopSec` above it).
const DEFAULT_GRACE_PERIOD_SECS: u64 = 300;

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            grace_period_secs: DEFAULT_GRACE_PERIOD_SECS,
        }
    }
}

/// Log output on stderr.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A `tracing` filter: `info`, `debug`, or per target `info,switchboard::sip=debug`.
    /// `RUST_LOG`, when set, wins (a developer's override on one run).
    pub level: String,
    /// `text` for people, `json` (one object per line) for log shippers.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".to_owned(),
            format: LogFormat::Text,
        }
    }
}

/// `[log] format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// A listener of its own for `/metrics`, `/healthz` and `/readyz`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Unset (the default): those paths are served on the admin listener only. Set it so
    /// Prometheus and load balancers need no route to the admin API.
    pub listen: Option<SocketAddr>,
}
