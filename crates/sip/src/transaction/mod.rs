//! SIP transactions per RFC 3261 §17 (with the RFC 6026 "Accepted" states), as
//! deterministic, clock-free state machines.
//!
//! Every machine is driven by its owner (normally [`crate::endpoint::Endpoint`]):
//!
//! * messages that belong to it are fed in (`on_request_retransmission`, `on_ack`,
//!   `on_response`, ...), together with the current `now`;
//! * the transaction user's answers are fed in (`send_response`);
//! * the owner asks [`poll_timeout`](ServerInviteTransaction::poll_timeout) for the
//!   earliest deadline and calls `on_timeout(now)` once `now` has reached it.
//!
//! The machines never parse or build messages: they hold the already-encoded
//! bytes of the last message they sent (a cheap [`Bytes`] clone) and hand them back
//! when a retransmission is due. That keeps them independent of the codec and
//! trivially testable on a simulated clock.
//!
//! Timer names (A–M) are the RFC's; their default durations derive from
//! [`TimerConfig`] exactly as in RFC 3261 §17 / Table 4 and RFC 6026 §8.
//! Reliable transports (TCP, TLS; [`crate::Transport::is_stream`]) zero the
//! retransmission timers (A, E, G) and the linger timers (D, I, J, K): the
//! transport itself retransmits, so the machines take a `reliable` flag.

mod client_invite;
mod client_non_invite;
mod key;
mod server_invite;
mod server_non_invite;

use std::time::{Duration, Instant};

pub use client_invite::{ClientInviteState, ClientInviteTransaction};
pub use client_non_invite::{ClientNonInviteState, ClientNonInviteTransaction};
pub use key::{is_rfc3261_branch, SentBy, TransactionKey};
pub use server_invite::{AckDisposition, ServerInviteState, ServerInviteTransaction};
pub use server_non_invite::{ServerNonInviteState, ServerNonInviteTransaction};

/// RFC 3261 T1: the round-trip-time estimate. 500 ms is the RFC's recommended
/// default for the public Internet; it seeds every retransmission interval and,
/// as 64·T1 (32 s), every "give up" timer (B, F, H, J, L, M).
pub const DEFAULT_T1: Duration = Duration::from_millis(500);

/// RFC 3261 T2: the cap on retransmission intervals for non-INVITE requests and
/// INVITE final responses. 4 s is the RFC default: long enough not to flood a
/// slow peer, short enough that a lost final response is repeated promptly.
pub const DEFAULT_T2: Duration = Duration::from_secs(4);

/// RFC 3261 T4: the longest a message is assumed to live in the network. 5 s is
/// the RFC default; Timers I and K wait this long to absorb stray retransmissions.
pub const DEFAULT_T4: Duration = Duration::from_secs(5);

/// RFC 3261 Timer D lower bound for unreliable transports: a client INVITE
/// transaction lingers at least 32 s after a failure response so that every
/// retransmission of that response (sent for up to 64·T1 by the server) is
/// answered with an ACK again.
pub const TIMER_D_UNRELIABLE: Duration = Duration::from_secs(32);

/// The base timer values from which every RFC 3261 transaction timer derives.
///
/// Lower them only for networks whose RTT is known to be small (RFC 3261 §17.1.1.1
/// allows a smaller T1 on private networks); tests use the defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimerConfig {
    /// RTT estimate; see [`DEFAULT_T1`].
    pub t1: Duration,
    /// Retransmission interval cap; see [`DEFAULT_T2`].
    pub t2: Duration,
    /// Maximum message lifetime in the network; see [`DEFAULT_T4`].
    pub t4: Duration,
}

impl Default for TimerConfig {
    fn default() -> Self {
        TimerConfig {
            t1: DEFAULT_T1,
            t2: DEFAULT_T2,
            t4: DEFAULT_T4,
        }
    }
}

impl TimerConfig {
    /// 64·T1: Timers B, F, H, J (unreliable), L and M.
    pub fn sixty_four_t1(&self) -> Duration {
        self.t1.saturating_mul(64)
    }

    /// Timer D: at least 32 s on unreliable transports, zero on reliable ones.
    pub fn timer_d(&self, reliable: bool) -> Duration {
        if reliable {
            Duration::ZERO
        } else {
            TIMER_D_UNRELIABLE.max(self.sixty_four_t1())
        }
    }

    /// Timers I and K: T4 on unreliable transports, zero on reliable ones.
    pub fn linger_t4(&self, reliable: bool) -> Duration {
        if reliable {
            Duration::ZERO
        } else {
            self.t4
        }
    }

    /// Timer J: 64·T1 on unreliable transports, zero on reliable ones.
    pub fn timer_j(&self, reliable: bool) -> Duration {
        if reliable {
            Duration::ZERO
        } else {
            self.sixty_four_t1()
        }
    }
}

/// What a fired timer asks the owner of a transaction to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimerAction {
    /// Send these bytes again (Timers A, E, G: a retransmission).
    Retransmit(Bytes),
    /// The transaction gave up (Timers B, F, H): tell the transaction user. The
    /// transaction is now terminated.
    TimedOut,
    /// The transaction user has not answered an INVITE within the configured
    /// delay: build a `100 Trying` and pass it to `send_response`.
    SendTrying,
}

pub use bytes::Bytes;

/// A doubling retransmission schedule (Timers A, E, G): first interval T1, each
/// following one doubled, optionally capped.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Backoff {
    pub(crate) next_at: Instant,
    pub(crate) interval: Duration,
    cap: Option<Duration>,
}

impl Backoff {
    pub(crate) fn start(now: Instant, first: Duration, cap: Option<Duration>) -> Backoff {
        Backoff {
            next_at: now + first,
            interval: first,
            cap,
        }
    }

    /// Called when the retransmission fires: schedules the next one from `now`
    /// (not from the missed deadline, so a late `handle_timeout` never bursts).
    pub(crate) fn fire(&mut self, now: Instant) {
        let doubled = self.interval.saturating_mul(2);
        self.interval = match self.cap {
            Some(cap) => doubled.min(cap),
            None => doubled,
        };
        self.next_at = now + self.interval;
    }
}

/// Earliest of a set of optional deadlines.
fn earliest<const N: usize>(deadlines: [Option<Instant>; N]) -> Option<Instant> {
    deadlines.into_iter().flatten().min()
}

/// `true` once `deadline` is set and `now` has reached it.
fn due(deadline: Option<Instant>, now: Instant) -> bool {
    deadline.is_some_and(|at| now >= at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_rfc_values() {
        let cfg = TimerConfig::default();
        assert_eq!(cfg.sixty_four_t1(), Duration::from_secs(32));
        assert_eq!(cfg.timer_d(false), Duration::from_secs(32));
        assert_eq!(cfg.timer_d(true), Duration::ZERO);
        assert_eq!(cfg.linger_t4(false), Duration::from_secs(5));
        assert_eq!(cfg.timer_j(true), Duration::ZERO);
    }

    #[test]
    fn timer_d_follows_a_large_t1() {
        let cfg = TimerConfig {
            t1: Duration::from_secs(1),
            ..TimerConfig::default()
        };
        assert_eq!(cfg.timer_d(false), Duration::from_secs(64));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let t0 = Instant::now();
        let mut b = Backoff::start(t0, Duration::from_millis(500), Some(Duration::from_secs(4)));
        let mut intervals = vec![b.interval];
        let mut now = t0;
        for _ in 0..5 {
            now = b.next_at;
            b.fire(now);
            intervals.push(b.interval);
        }
        let ms: Vec<u128> = intervals.iter().map(|d| d.as_millis()).collect();
        assert_eq!(ms, vec![500, 1000, 2000, 4000, 4000, 4000]);
        assert_eq!(b.next_at, now + Duration::from_secs(4));
    }
}
