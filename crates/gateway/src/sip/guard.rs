//! Screening before state: every datagram and TCP connection is classified by its source
//! address before anything is allocated for it.
//!
//! - **Untrusted**: in no connection's `allowed_addresses` (a digest connection with an empty
//!   or wide allowlist trusts everyone at this step; its 401 challenge stays stateless). By
//!   default dropped without an answer (`[sip] untrusted = "drop"`), so scanners such as
//!   `svmap` and `svwar` learn nothing; `"reject"` sends a stateless 403 at most
//!   [`UNTRUSTED_REPLIES_PER_SECOND`] times a second per source. TCP is closed at accept.
//! - **Banned**: an address that failed digest authentication or sent malformed messages too
//!   often ([`BanTable`]); everything it sends is dropped until the ban expires.
//! - **Trusted**: everything else; it reaches the SIP engine.
//!
//! Silence must not puzzle an operator: the first drop from each source is logged with the fix
//! (rate-limited, [`DropLog`]). Every table here is bounded, so a spoofed-source flood costs a
//! fixed amount of memory. Time is a parameter: the tables are tested on simulated time.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use switchboard_routing::RoutingTable;

use super::metrics::SipMetrics;
use super::rate_limit::{RateLimiter, Verdict};
use crate::config::{SipConfig, UntrustedPolicy};

/// Stateless 403s per second one untrusted source may get in `reject` mode: enough to tell a
/// misconfigured carrier why, too few to make the gateway a reflector.
pub const UNTRUSTED_REPLIES_PER_SECOND: u32 = 10;

/// Addresses whose failures are counted at once. A spoofed flood beyond this stops being
/// tracked (and so cannot be banned), which costs nothing: it is dropped as untrusted anyway.
pub const MAX_TRACKED_OFFENDERS: usize = 65_536;

/// Sources remembered as "already logged"; when full the set is cleared, so a long-running
/// scanner is mentioned again now and then rather than never.
const MAX_LOGGED_SOURCES: usize = 4_096;

/// At most this many drop log lines per second, whatever the number of sources.
const DROP_LOG_LINES_PER_SECOND: f64 = 1.0;

/// Why a source is being counted toward a ban.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offence {
    /// A wrong password or user in a digest answer.
    DigestFailure,
    /// A message that does not parse or validate.
    Malformed,
}

/// How a source is treated right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    Trusted,
    Untrusted,
    Banned,
}

#[derive(Debug, Clone, Copy)]
struct Tally {
    window_start: Instant,
    digest_failures: u32,
    malformed: u32,
}

/// Failure counts per address and the bans they led to. Not synchronised; [`Guard`] wraps it.
#[derive(Debug)]
pub struct BanTable {
    digest_limit: u32,
    malformed_limit: u32,
    window: Duration,
    ban_for: Duration,
    tallies: HashMap<IpAddr, Tally>,
    bans: HashMap<IpAddr, Instant>,
    capacity: usize,
}

impl BanTable {
    /// Bans after `digest_limit` digest failures or `malformed_limit` malformed messages
    /// within `window`, for `ban_for`.
    pub fn new(
        digest_limit: u32,
        malformed_limit: u32,
        window: Duration,
        ban_for: Duration,
    ) -> Self {
        Self::with_capacity(
            digest_limit,
            malformed_limit,
            window,
            ban_for,
            MAX_TRACKED_OFFENDERS,
        )
    }

    fn with_capacity(
        digest_limit: u32,
        malformed_limit: u32,
        window: Duration,
        ban_for: Duration,
        capacity: usize,
    ) -> Self {
        BanTable {
            digest_limit: digest_limit.max(1),
            malformed_limit: malformed_limit.max(1),
            window,
            ban_for,
            tallies: HashMap::new(),
            bans: HashMap::new(),
            capacity,
        }
    }

    /// Is `ip` banned at `now`? Expired bans are forgotten here.
    pub fn is_banned(&mut self, now: Instant, ip: IpAddr) -> bool {
        match self.bans.get(&ip) {
            Some(&until) if now < until => true,
            Some(_) => {
                self.bans.remove(&ip);
                false
            }
            None => false,
        }
    }

    /// Counts one offence; returns true when it got `ip` banned (call once per offence).
    pub fn record(&mut self, now: Instant, ip: IpAddr, offence: Offence) -> bool {
        if self.is_banned(now, ip) {
            return false;
        }
        if !self.tallies.contains_key(&ip) && self.tallies.len() >= self.capacity {
            let window = self.window;
            self.tallies
                .retain(|_, t| now.saturating_duration_since(t.window_start) < window);
            if self.tallies.len() >= self.capacity {
                return false;
            }
        }
        let tally = self.tallies.entry(ip).or_insert(Tally {
            window_start: now,
            digest_failures: 0,
            malformed: 0,
        });
        if now.saturating_duration_since(tally.window_start) >= self.window {
            *tally = Tally {
                window_start: now,
                digest_failures: 0,
                malformed: 0,
            };
        }
        let over = match offence {
            Offence::DigestFailure => {
                tally.digest_failures += 1;
                tally.digest_failures >= self.digest_limit
            }
            Offence::Malformed => {
                tally.malformed += 1;
                tally.malformed >= self.malformed_limit
            }
        };
        if !over {
            return false;
        }
        self.tallies.remove(&ip);
        if self.bans.len() >= self.capacity {
            self.bans.retain(|_, until| now < *until);
            if self.bans.len() >= self.capacity {
                return false;
            }
        }
        self.bans.insert(ip, now + self.ban_for);
        true
    }

    /// Addresses banned now (a gauge).
    pub fn banned_count(&self) -> usize {
        self.bans.len()
    }
}

/// Decides which drops deserve a log line: the first per source, at most one a second.
#[derive(Debug)]
pub struct DropLog {
    logged: HashSet<IpAddr>,
    tokens: f64,
    refilled_at: Option<Instant>,
}

impl Default for DropLog {
    fn default() -> Self {
        DropLog {
            logged: HashSet::new(),
            tokens: DROP_LOG_LINES_PER_SECOND,
            refilled_at: None,
        }
    }
}

impl DropLog {
    /// True when a drop from `ip` at `now` should be logged.
    pub fn should_log(&mut self, now: Instant, ip: IpAddr) -> bool {
        if self.logged.contains(&ip) {
            return false;
        }
        let elapsed = self
            .refilled_at
            .map_or(0.0, |at| now.saturating_duration_since(at).as_secs_f64());
        self.refilled_at = Some(now);
        self.tokens = (self.tokens + elapsed * DROP_LOG_LINES_PER_SECOND).min(1.0);
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        if self.logged.len() >= MAX_LOGGED_SOURCES {
            self.logged.clear();
        }
        self.logged.insert(ip);
        true
    }
}

/// The screen shared by every socket reader and the SIP engine. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Guard {
    inner: Arc<GuardInner>,
}

#[derive(Debug)]
struct GuardInner {
    routing: Arc<RoutingTable>,
    policy: UntrustedPolicy,
    max_tcp_per_source: u32,
    bans: Mutex<BanTable>,
    /// Mirrors `bans.banned_count()`, so the per-datagram check skips the lock when no
    /// address is banned (the normal case).
    banned: AtomicUsize,
    drop_log: Mutex<DropLog>,
    untrusted_replies: Mutex<RateLimiter>,
    tcp_per_source: Mutex<HashMap<IpAddr, u32>>,
    metrics: SipMetrics,
}

impl Guard {
    /// A guard over the live routing table's source allowlists, with `[sip]`'s limits.
    pub fn new(routing: Arc<RoutingTable>, config: &SipConfig, metrics: SipMetrics) -> Self {
        Guard {
            inner: Arc::new(GuardInner {
                routing,
                policy: config.untrusted,
                max_tcp_per_source: config.max_tcp_connections_per_source,
                bans: Mutex::new(BanTable::new(
                    config.ban_digest_failures,
                    config.ban_malformed_messages,
                    Duration::from_secs(config.ban_window_secs),
                    Duration::from_secs(config.ban_secs),
                )),
                banned: AtomicUsize::new(0),
                drop_log: Mutex::new(DropLog::default()),
                untrusted_replies: Mutex::new(RateLimiter::new(
                    UNTRUSTED_REPLIES_PER_SECOND,
                    UNTRUSTED_REPLIES_PER_SECOND,
                )),
                tcp_per_source: Mutex::new(HashMap::new()),
                metrics,
            }),
        }
    }

    /// Classifies `ip` (canonical form) at `now`. Call before allocating anything for a
    /// datagram or connection.
    pub fn standing(&self, now: Instant, ip: IpAddr) -> Standing {
        let inner = &self.inner;
        if inner.banned.load(Ordering::Relaxed) > 0 {
            let mut bans = inner.bans.lock().unwrap_or_else(PoisonError::into_inner);
            let banned = bans.is_banned(now, ip);
            inner.banned.store(bans.banned_count(), Ordering::Relaxed);
            if banned {
                return Standing::Banned;
            }
        }
        if inner.routing.load().admits_source(ip) {
            Standing::Trusted
        } else {
            Standing::Untrusted
        }
    }

    /// Counts and (the first time, rate-limited) logs a dropped message or connection.
    pub fn dropped(&self, now: Instant, ip: IpAddr, standing: Standing) {
        let reason = match standing {
            Standing::Banned => "banned",
            _ => "untrusted",
        };
        self.inner
            .metrics
            .dropped
            .with_label_values(&[reason])
            .inc();
        let log = self
            .inner
            .drop_log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .should_log(now, ip);
        if log {
            match standing {
                Standing::Banned => tracing::warn!(
                    source = %ip,
                    "dropping SIP from banned address {ip} (too many failed digest answers or malformed messages); it is ignored for [sip] ban_secs"
                ),
                _ => tracing::warn!(
                    source = %ip,
                    "dropping SIP from {ip}: no connection allows {ip}: add it to a connection's allowed_addresses (further drops from it are only counted in switchboard_sip_dropped_total)"
                ),
            }
        }
    }

    /// Whether an untrusted source gets a stateless 403 for this request (`reject` mode, within
    /// its small reply budget). Counts the drop otherwise.
    pub fn reply_to_untrusted(&self, now: Instant, ip: IpAddr) -> bool {
        let reply = self.inner.policy == UntrustedPolicy::Reject
            && self
                .inner
                .untrusted_replies
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .check(now, ip)
                == Verdict::Allow;
        if !reply {
            self.dropped(now, ip, Standing::Untrusted);
        }
        reply
    }

    /// Counts an offence by `ip`; bans it (and logs once) when it crosses the limit.
    pub fn offence(&self, now: Instant, ip: IpAddr, offence: Offence) {
        let mut bans = self
            .inner
            .bans
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if bans.record(now, ip, offence) {
            self.inner
                .banned
                .store(bans.banned_count(), Ordering::Relaxed);
            self.inner.metrics.bans.inc();
            tracing::warn!(source = %ip, ?offence, "banning {ip} for [sip] ban_secs");
        }
    }

    /// Takes one of `ip`'s TCP connection slots; `None` when it holds its limit already.
    /// The slot is given back when the returned guard drops.
    pub fn tcp_slot(&self, ip: IpAddr) -> Option<TcpSlot> {
        let mut open = self
            .inner
            .tcp_per_source
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(ip).or_insert(0);
        if *count >= self.inner.max_tcp_per_source {
            drop(open);
            self.inner
                .metrics
                .dropped
                .with_label_values(&["tcp_per_source"])
                .inc();
            return None;
        }
        *count += 1;
        Some(TcpSlot {
            ip,
            guard: self.clone(),
        })
    }
}

/// One TCP connection counted against its source; released on drop.
#[derive(Debug)]
pub struct TcpSlot {
    ip: IpAddr,
    guard: Guard,
}

impl Drop for TcpSlot {
    fn drop(&mut self) {
        let mut open = self
            .guard
            .inner
            .tcp_per_source
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn digest_guessing_is_banned_at_the_limit_and_the_ban_expires() {
        let t0 = Instant::now();
        let mut table = BanTable::new(3, 50, Duration::from_secs(60), Duration::from_secs(600));
        let guesser = ip("198.51.100.7");
        assert!(!table.record(t0, guesser, Offence::DigestFailure));
        assert!(!table.record(t0, guesser, Offence::DigestFailure));
        assert!(!table.is_banned(t0, guesser));
        assert!(
            table.record(t0, guesser, Offence::DigestFailure),
            "third failure bans"
        );
        assert!(table.is_banned(t0 + Duration::from_secs(599), guesser));
        assert!(!table.is_banned(t0 + Duration::from_secs(600), guesser));
        assert_eq!(table.banned_count(), 0, "expired bans are forgotten");
        // Others are unaffected.
        assert!(!table.is_banned(t0, ip("198.51.100.8")));
    }

    #[test]
    fn failures_spread_beyond_the_window_do_not_ban() {
        let t0 = Instant::now();
        let mut table = BanTable::new(3, 3, Duration::from_secs(60), Duration::from_secs(600));
        let carrier = ip("192.0.2.1");
        for minute in 0..10u64 {
            let at = t0 + Duration::from_secs(61 * minute);
            assert!(!table.record(at, carrier, Offence::DigestFailure));
            assert!(!table.record(at, carrier, Offence::Malformed));
        }
        // Malformed and digest failures count separately.
        assert!(!table.record(t0, ip("192.0.2.2"), Offence::Malformed));
        assert!(!table.record(t0, ip("192.0.2.2"), Offence::DigestFailure));
        assert!(!table.record(t0, ip("192.0.2.2"), Offence::Malformed));
        assert!(table.record(t0, ip("192.0.2.2"), Offence::Malformed));
    }

    #[test]
    fn a_spoofed_flood_cannot_grow_the_tables_past_capacity() {
        let t0 = Instant::now();
        let window = Duration::from_secs(60);
        let mut table = BanTable::with_capacity(2, 2, window, window, 100);
        for i in 0..10_000u32 {
            let source = IpAddr::from(i.to_be_bytes());
            table.record(t0, source, Offence::Malformed);
            table.record(t0, source, Offence::Malformed);
        }
        assert!(table.tallies.len() <= 100 && table.bans.len() <= 100);
        assert_eq!(table.banned_count(), 100);
        // Once they expire, room is made again.
        let later = t0 + window;
        let fresh = ip("203.0.113.1");
        table.record(later, fresh, Offence::Malformed);
        assert!(table.record(later, fresh, Offence::Malformed));
    }

    #[test]
    fn drops_are_logged_once_per_source_and_at_most_once_a_second() {
        let t0 = Instant::now();
        let mut log = DropLog::default();
        assert!(log.should_log(t0, ip("198.51.100.1")));
        assert!(!log.should_log(t0, ip("198.51.100.1")), "once per source");
        assert!(!log.should_log(t0, ip("198.51.100.2")), "rate-limited");
        let later = t0 + Duration::from_secs(1);
        assert!(log.should_log(later, ip("198.51.100.2")));
        assert!(!log.should_log(later, ip("198.51.100.1")));
    }
}
