//! Per-source-IP token buckets (`[sip] rate_limit_per_second`, `rate_limit_burst`).
//!
//! The limiter sits in the socket reader, before anything is parsed or queued for the
//! transaction task, so a flood from one address is shed at the cost of one hash probe and
//! never fills the queue that other carriers' messages go through.
//!
//! A source over its limit gets at most a few stateless 503s per second (so a misbehaving but
//! honest carrier learns to back off via Retry-After); everything else it sends beyond its
//! budget is dropped. Time is a parameter, so the arithmetic is tested on simulated time.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Distinct sources tracked at once. Beyond this (a spoofed-source flood), sources not yet
/// tracked share one overflow bucket: memory stays bounded and the flood stays limited, while
/// every carrier already tracked keeps its own budget.
pub const MAX_TRACKED_SOURCES: usize = 65_536;

/// A limited source gets at most one 503 per this interval (10 per second): enough for a
/// carrier to see Retry-After, too few to turn the gateway into a reflector.
pub const REJECT_REPLY_INTERVAL: Duration = Duration::from_millis(100);

/// How often a full table is swept for idle entries; sweeping is O(entries).
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// What to do with one incoming message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within budget: process it.
    Allow,
    /// Over budget; answer with a stateless 503 + Retry-After if it is a request that expects
    /// a response (INVITE), else drop.
    RejectWithReply,
    /// Over budget and this source has had its share of 503s: drop silently.
    Drop,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    refilled_at: Instant,
    last_reply: Option<Instant>,
}

/// The limiter. Not internally synchronised: wrap it in a `Mutex` when several reader tasks
/// share it (each check is a few hundred nanoseconds under the lock).
#[derive(Debug)]
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    buckets: HashMap<IpAddr, Bucket>,
    overflow: Option<Bucket>,
    last_sweep: Option<Instant>,
    max_tracked: usize,
}

impl RateLimiter {
    /// `per_second` tokens are added per second up to `burst`; each message costs one token.
    /// A zero rate disables limiting (every message allowed).
    pub fn new(per_second: u32, burst: u32) -> Self {
        Self::with_capacity(per_second, burst, MAX_TRACKED_SOURCES)
    }

    fn with_capacity(per_second: u32, burst: u32, max_tracked: usize) -> Self {
        Self {
            per_second: f64::from(per_second),
            burst: f64::from(burst.max(1)),
            buckets: HashMap::new(),
            overflow: None,
            last_sweep: None,
            max_tracked,
        }
    }

    /// Charges one message from `source` at `now`.
    pub fn check(&mut self, now: Instant, source: IpAddr) -> Verdict {
        if self.per_second <= 0.0 {
            return Verdict::Allow;
        }
        let source = source.to_canonical();
        let fresh = Bucket {
            tokens: self.burst,
            refilled_at: now,
            last_reply: None,
        };
        let (per_second, burst) = (self.per_second, self.burst);
        if !self.buckets.contains_key(&source) && self.buckets.len() >= self.max_tracked {
            self.sweep(now);
        }
        let bucket = if self.buckets.len() < self.max_tracked || self.buckets.contains_key(&source)
        {
            self.buckets.entry(source).or_insert(fresh)
        } else {
            self.overflow.get_or_insert(fresh)
        };
        charge(bucket, now, per_second, burst)
    }

    /// Sources currently tracked.
    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }

    /// Forgets sources whose buckets have refilled completely: they are indistinguishable from
    /// a source never seen.
    fn sweep(&mut self, now: Instant) {
        if self
            .last_sweep
            .is_some_and(|at| now.saturating_duration_since(at) < SWEEP_INTERVAL)
        {
            return;
        }
        self.last_sweep = Some(now);
        let (per_second, burst) = (self.per_second, self.burst);
        self.buckets
            .retain(|_, b| refilled(b, now, per_second, burst) < burst);
    }
}

fn refilled(bucket: &Bucket, now: Instant, per_second: f64, burst: f64) -> f64 {
    let elapsed = now
        .saturating_duration_since(bucket.refilled_at)
        .as_secs_f64();
    (bucket.tokens + elapsed * per_second).min(burst)
}

fn charge(bucket: &mut Bucket, now: Instant, per_second: f64, burst: f64) -> Verdict {
    bucket.tokens = refilled(bucket, now, per_second, burst);
    bucket.refilled_at = now;
    if bucket.tokens >= 1.0 {
        bucket.tokens -= 1.0;
        return Verdict::Allow;
    }
    let may_reply = bucket
        .last_reply
        .is_none_or(|at| now.saturating_duration_since(at) >= REJECT_REPLY_INTERVAL);
    if may_reply {
        bucket.last_reply = Some(now);
        Verdict::RejectWithReply
    } else {
        Verdict::Drop
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const A: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2));

    fn count(limiter: &mut RateLimiter, now: Instant, ip: IpAddr, n: usize) -> [usize; 3] {
        let mut out = [0; 3];
        for _ in 0..n {
            match limiter.check(now, ip) {
                Verdict::Allow => out[0] += 1,
                Verdict::RejectWithReply => out[1] += 1,
                Verdict::Drop => out[2] += 1,
            }
        }
        out
    }

    #[test]
    fn burst_then_refill_at_rate() {
        let t0 = Instant::now();
        let mut limiter = RateLimiter::new(10, 20);
        assert_eq!(count(&mut limiter, t0, A, 25), [20, 1, 4]);
        // Half a second later 5 tokens are back; the reply budget has also recovered.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(count(&mut limiter, t1, A, 7), [5, 1, 1]);
        // Never more than the burst, however long the source was idle.
        let t2 = t1 + Duration::from_secs(3600);
        assert_eq!(count(&mut limiter, t2, A, 21)[0], 20);
    }

    #[test]
    fn a_flooding_source_does_not_starve_another() {
        let t0 = Instant::now();
        let mut limiter = RateLimiter::new(100, 100);
        let mut b_allowed = 0;
        // One simulated second: A sends 100k messages, B one per 10 ms.
        for ms in 0..1000u64 {
            let now = t0 + Duration::from_millis(ms);
            count(&mut limiter, now, A, 100);
            if ms % 10 == 0 && limiter.check(now, B) == Verdict::Allow {
                b_allowed += 1;
            }
        }
        assert_eq!(b_allowed, 100);
        // A got its burst plus one second of refill, not more (±1 for float rounding).
        let mut again = RateLimiter::new(100, 100);
        let mut a_allowed = 0;
        for ms in 0..1000u64 {
            a_allowed += count(&mut again, t0 + Duration::from_millis(ms), A, 100)[0];
        }
        assert!((199..=200).contains(&a_allowed), "{a_allowed}");
    }

    #[test]
    fn replies_to_a_limited_source_are_capped() {
        let t0 = Instant::now();
        let mut limiter = RateLimiter::new(1, 1);
        let mut replies = 0;
        for ms in 0..1000u64 {
            if limiter.check(t0 + Duration::from_millis(ms), A) == Verdict::RejectWithReply {
                replies += 1;
            }
        }
        assert_eq!(replies, 10);
    }

    #[test]
    fn v4_mapped_v6_is_the_same_source() {
        let t0 = Instant::now();
        let mut limiter = RateLimiter::new(1, 1);
        let mapped = IpAddr::V6(Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped());
        assert_eq!(limiter.check(t0, A), Verdict::Allow);
        assert_ne!(limiter.check(t0, mapped), Verdict::Allow);
        assert_eq!(limiter.tracked(), 1);
    }

    #[test]
    fn table_is_bounded_and_idle_sources_are_swept() {
        let t0 = Instant::now();
        let mut limiter = RateLimiter::with_capacity(10, 2, 4);
        let ip = |i: u16| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, i));
        for i in 0..4 {
            assert_eq!(limiter.check(t0, ip(i)), Verdict::Allow);
        }
        // Table full: newcomers share the overflow bucket (burst 2).
        assert_eq!(limiter.check(t0, ip(100)), Verdict::Allow);
        assert_eq!(limiter.check(t0, ip(101)), Verdict::Allow);
        assert_ne!(limiter.check(t0, ip(102)), Verdict::Allow);
        assert_eq!(limiter.tracked(), 4);
        // Two seconds later every tracked bucket is full again and gets swept on demand.
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(limiter.check(t1, ip(200)), Verdict::Allow);
        assert_eq!(limiter.tracked(), 1);
    }

    #[test]
    fn zero_rate_disables_limiting() {
        let mut limiter = RateLimiter::new(0, 0);
        assert_eq!(
            count(&mut limiter, Instant::now(), A, 10_000),
            [10_000, 0, 0]
        );
    }
}
