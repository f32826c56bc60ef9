//! `[sip]`: listeners, TLS files and signalling limits.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// SIP listeners and signalling limits (owned by the SIP side; add fields with a default + doc).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SipConfig {
    /// UDP listener. Port 0 picks a free port (tests).
    pub udp: SocketAddr,
    /// TCP listener. Port 0 picks a free port (tests).
    pub tcp: SocketAddr,
    /// Larger datagrams / stream messages are answered 513 or dropped.
    pub max_message_bytes: usize,
    /// Sustained requests per second admitted from one source IP (token bucket refill rate).
    pub rate_limit_per_second: u32,
    /// Token bucket size per source IP: how many requests a burst may carry.
    pub rate_limit_burst: u32,
    /// How long a digest nonce stays valid.
    pub nonce_ttl_secs: u64,
    /// SIP engines, each with its own UDP socket (`SO_REUSEPORT`), transactions and calls;
    /// 0 means one per CPU core.
    pub workers: usize,
    /// What a source in no connection's `allowed_addresses` gets: `drop` (silence, no state)
    /// or `reject` (a stateless 403, at most a few per second per source).
    pub untrusted: UntrustedPolicy,
    /// Concurrent TCP connections one trusted source may hold (untrusted ones get none).
    pub max_tcp_connections_per_source: u32,
    /// Failed digest answers from one address within `ban_window_secs` that ban it.
    pub ban_digest_failures: u32,
    /// Malformed messages from one address within `ban_window_secs` that ban it.
    pub ban_malformed_messages: u32,
    /// The window over which failures are counted.
    pub ban_window_secs: u64,
    /// How long a banned address is ignored (everything it sends is dropped).
    pub ban_secs: u64,
    /// How long a transfer (REFER to the carrier) may take to reach a final answer (the REFER's
    /// refusal or a NOTIFY with a final sipfrag) before it counts as failed and the caller stays
    /// with the agent.
    pub transfer_timeout_secs: u64,
    /// SIP over TLS listener (RFC 3261 §26), e.g. `0.0.0.0:5061`; unset: no TLS listener.
    /// Needs `tls_cert` and `tls_key`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<SocketAddr>,
    /// PEM certificate chain for `tls`, leaf first; re-read on SIGHUP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`; re-read on SIGHUP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle: when set, TLS clients must present a certificate chaining to it (mutual
    /// TLS, for carriers that authenticate with client certificates).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_client_ca: Option<PathBuf>,
}

/// `[sip] untrusted`: the answer for sources no connection admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UntrustedPolicy {
    /// No answer and no state: scanners (`svmap`, `svwar`) find nothing.
    Drop,
    /// A stateless 403, for operators who want misconfigured carriers told why.
    Reject,
}

/// Default SIP port on every interface: carriers send trunks to the well-known port.
const DEFAULT_SIP_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 5060);
/// RFC 3261 §18.1.1 bounds a UDP message by the 65,535-octet datagram; nothing legitimate is larger.
const DEFAULT_MAX_MESSAGE_BYTES: usize = 65_535;
/// A trusted trunk's normal traffic must never be refused: carriers burst thousands of INVITEs
/// per second at peaks, so the per-source bucket sits above that and only stops one source from
/// taking the whole SIP engine. Protection from strangers is screening, not this bucket.
const DEFAULT_RATE_LIMIT_PER_SECOND: u32 = 5_000;
/// Two seconds' worth of the sustained rate, so a carrier's retransmission burst is not dropped.
const DEFAULT_RATE_LIMIT_BURST: u32 = 10_000;
/// Five minutes: long enough for a slow carrier's challenge/response, short enough to bound replay.
const DEFAULT_NONCE_TTL_SECS: u64 = 300;
/// A carrier opens a handful of TCP connections per signalling host; 64 leaves room for
/// reconnect storms while one trusted address can never take all of the process's sockets.
const DEFAULT_MAX_TCP_CONNECTIONS_PER_SOURCE: u32 = 64;
/// 10 wrong passwords in a minute is guessing, not a typo (fail2ban's and Kamailio's
/// pike/htable recipes use the same order of magnitude).
const DEFAULT_BAN_DIGEST_FAILURES: u32 = 10;
/// A carrier's stack never sends malformed SIP in bursts; 50 in a window is a fuzzer.
const DEFAULT_BAN_MALFORMED_MESSAGES: u32 = 50;
/// One minute of failures counts toward a ban.
const DEFAULT_BAN_WINDOW_SECS: u64 = 60;
/// Ten minutes makes guessing uneconomic while a misconfigured carrier recovers on its own.
const DEFAULT_BAN_SECS: u64 = 600;
/// Half a minute: about as long as a caller waits on ringback before hanging up, and near
/// RFC 3261's Timer F (32 s) for the REFER itself; past it the caller is better served by the
/// agent than by a target that does not answer.
const DEFAULT_TRANSFER_TIMEOUT_SECS: u64 = 30;

impl SipConfig {
    /// The number of SIP engines to run: `workers`, or one per core when it is 0 (one core
    /// runs one engine flat out; more engines than cores would only add hand-offs).
    pub fn engine_count(&self) -> usize {
        if self.workers > 0 {
            self.workers
        } else {
            std::thread::available_parallelism().map_or(1, usize::from)
        }
    }
}

impl Default for SipConfig {
    fn default() -> Self {
        Self {
            udp: DEFAULT_SIP_LISTEN,
            tcp: DEFAULT_SIP_LISTEN,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            rate_limit_per_second: DEFAULT_RATE_LIMIT_PER_SECOND,
            rate_limit_burst: DEFAULT_RATE_LIMIT_BURST,
            nonce_ttl_secs: DEFAULT_NONCE_TTL_SECS,
            workers: 0,
            untrusted: UntrustedPolicy::Drop,
            max_tcp_connections_per_source: DEFAULT_MAX_TCP_CONNECTIONS_PER_SOURCE,
            ban_digest_failures: DEFAULT_BAN_DIGEST_FAILURES,
            ban_malformed_messages: DEFAULT_BAN_MALFORMED_MESSAGES,
            ban_window_secs: DEFAULT_BAN_WINDOW_SECS,
            ban_secs: DEFAULT_BAN_SECS,
            transfer_timeout_secs: DEFAULT_TRANSFER_TIMEOUT_SECS,
            tls: None,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
        }
    }
}
