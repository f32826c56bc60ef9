//! When to try a webhook delivery again, and when to give up: a pure function of the attempt
//! count and the time, so it is tested without clocks or sockets.
//!
//! After the `n`-th failed attempt the next one waits `first_retry · 2^(n-1)`, capped at
//! `max_retry`, with up to 20 % added jitter (so a receiver coming back is not hit by every
//! pending delivery in the same second). No attempt starts later than `give_up` after the
//! event: a delivery that fails then is dropped and counted as `gave_up`.

use std::time::Duration;

/// The retry policy, from `[webhooks]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub first_retry: Duration,
    pub max_retry: Duration,
    pub give_up: Duration,
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextStep {
    /// Try again at this time (unix milliseconds).
    RetryAt(i64),
    /// Past the give-up horizon: drop the delivery.
    GiveUp,
}

impl RetryPolicy {
    /// After `attempts` failed attempts (1 after the first) of an event that happened at
    /// `created_ms`, at `now_ms`; `jitter` in `[0, 1)` spreads retries (tests pass 0).
    pub fn after_failure(
        &self,
        attempts: u32,
        created_ms: i64,
        now_ms: i64,
        jitter: f64,
    ) -> NextStep {
        let exponent = attempts.saturating_sub(1).min(30);
        let base = self
            .first_retry
            .saturating_mul(1u32 << exponent)
            .min(self.max_retry);
        let spread = base.mul_f64(jitter.clamp(0.0, 1.0) * 0.2);
        let wait = i64::try_from((base + spread).as_millis()).unwrap_or(i64::MAX);
        let next = now_ms.saturating_add(wait);
        let deadline =
            created_ms.saturating_add(i64::try_from(self.give_up.as_millis()).unwrap_or(i64::MAX));
        match next <= deadline {
            true => NextStep::RetryAt(next),
            false => NextStep::GiveUp,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: RetryPolicy = RetryPolicy {
        first_retry: Duration::from_secs(1),
        max_retry: Duration::from_secs(600),
        give_up: Duration::from_secs(24 * 3600),
    };

    #[test]
    fn backoff_doubles_from_the_first_retry_up_to_the_cap() {
        let waits: Vec<i64> = (1..=12)
            .map(|n| match POLICY.after_failure(n, 0, 1_000, 0.0) {
                NextStep::RetryAt(at) => at - 1_000,
                NextStep::GiveUp => panic!("gave up at {n}"),
            })
            .collect();
        assert_eq!(
            waits,
            [
                1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 64_000, 128_000, 256_000, 512_000,
                600_000, 600_000
            ]
        );
    }

    #[test]
    fn jitter_adds_at_most_a_fifth() {
        let NextStep::RetryAt(at) = POLICY.after_failure(3, 0, 0, 0.999) else {
            panic!()
        };
        assert!((4_000..=4_800).contains(&at), "{at}");
    }

    #[test]
    fn retries_stop_24_hours_after_the_event() {
        let day_ms = 24 * 3600 * 1000;
        // A retry that would start just inside the horizon still happens...
        assert_eq!(
            POLICY.after_failure(20, 0, day_ms - 600_000, 0.0),
            NextStep::RetryAt(day_ms)
        );
        // ... one past it does not.
        assert_eq!(
            POLICY.after_failure(20, 0, day_ms - 599_999, 0.0),
            NextStep::GiveUp
        );
    }

    #[test]
    fn simulated_outage_retries_for_a_day_then_gives_up() {
        // A receiver down for good: count attempts until the policy gives up.
        let (mut now, mut attempts) = (0i64, 1u32);
        while let NextStep::RetryAt(at) = POLICY.after_failure(attempts, 0, now, 0.5) {
            assert!(at > now);
            now = at;
            attempts += 1;
        }
        assert!(now <= 24 * 3600 * 1000);
        assert!((140..=170).contains(&attempts), "{attempts}");
    }

    #[test]
    fn huge_attempt_counts_do_not_overflow() {
        assert!(matches!(
            POLICY.after_failure(u32::MAX, i64::MAX - 5, i64::MAX - 10, 0.9),
            NextStep::RetryAt(_) | NextStep::GiveUp
        ));
    }
}
