//! The 20 ms pacer of caller-bound audio, phase-locked to the caller's own packets.
//!
//! Carriers send a 20 ms frame every 20 ms. Once our frame slots line up with the caller's
//! arrivals (within [`LOCK_WINDOW`]), the frame due is sent by the wake-up that receives the
//! caller's packet, so one wake-up per call per 20 ms serves both directions and the timer
//! (a fallback, [`Pacer::deadline`]) is only pushed ahead, never fired, while the caller talks.
//! Out of lock, each steady 20 ms arrival walks our slots [`PHASE_STEP`] toward the caller's
//! phase (one interval 1 ms short or long: inaudible and within any jitter buffer), so lock is
//! reached within half a frame's worth of steps. A caller that stops sending (hold, silence
//! suppression, loss) leaves the timer in charge on the same grid.
//!
//! The grid is anchored, not re-armed per tick: `tokio::time::Interval` with
//! `MissedTickBehavior::Delay` re-anchors after every tick more than 5 ms late, so under load a
//! bridge sent fewer than 50 frames/s while the agent kept producing 50 and the playout queue
//! (hence latency) grew without bound — measured at 500 calls as a 1.1 s median round trip.
//! Here each wake-up sends the frames that are due (at most [`MAX_FRAMES_PER_WAKE`], so a late
//! wake-up makes up one frame, never a burst), and a bridge more than [`MAX_PACING_LAG`] behind
//! skips ahead instead of catching up.
//!
//! Pure: takes `now`, tested on simulated instants.

use std::time::Duration;

use tokio::time::Instant;

/// One frame of audio: the pacer's period.
pub const FRAME_INTERVAL: Duration = Duration::from_millis(20);
/// Frames one late wake-up may send back to back: one frame of catch-up is within any
/// receiver's jitter buffer, more would be a burst.
pub const MAX_FRAMES_PER_WAKE: u32 = 2;
/// Further behind schedule than this (a stalled process), the pacer skips ahead instead of
/// catching up; the RTP timestamp still advances over the gap.
pub const MAX_PACING_LAG: Duration = Duration::from_millis(60);
/// A caller packet this close to a frame slot sends that frame: the pacing jitter this adds
/// is the caller's own arrival jitter, bounded by the window (the goal is p99 < 2 ms).
pub const LOCK_WINDOW: Duration = Duration::from_millis(1);
/// How far one out-of-lock arrival moves our slots toward the caller's phase.
pub const PHASE_STEP: Duration = Duration::from_millis(1);
/// Arrivals count as a steady 20 ms stream when consecutive ones are this close to 20 ms apart;
/// anything else (10/30 ms packets, bursts after loss) is not worth following.
const STEADY_TOLERANCE: Duration = Duration::from_millis(3);

/// What a pacer wake-up must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Due {
    /// Frame slots given up because the bridge stalled past [`MAX_PACING_LAG`].
    pub skipped: u32,
    /// Frames to send now.
    pub send: u32,
}

impl Due {
    const NOTHING: Due = Due {
        skipped: 0,
        send: 0,
    };
}

/// The frame schedule of one call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pacer {
    next_due: Instant,
    /// Still behind after a capped wake-up: come back after half a frame, not at once.
    catch_up_at: Option<Instant>,
    last_arrival: Option<Instant>,
    locked: bool,
}

impl Pacer {
    pub(crate) fn starting(at: Instant) -> Pacer {
        Pacer {
            next_due: at,
            catch_up_at: None,
            last_arrival: None,
            locked: false,
        }
    }

    /// When the timer must wake the call if no caller packet does it first. In lock the timer
    /// waits out the window, so a packet a little late still sends its frame.
    pub(crate) fn deadline(&self) -> Instant {
        if let Some(at) = self.catch_up_at {
            return at;
        }
        if self.locked {
            self.next_due + LOCK_WINDOW
        } else {
            self.next_due
        }
    }

    #[cfg(test)]
    pub(crate) fn is_locked(&self) -> bool {
        self.locked
    }

    /// The timer fired: no caller packet served this slot, so send what is due on the grid.
    pub(crate) fn on_timer(&mut self, now: Instant) -> Due {
        if now < self.deadline() {
            return Due::NOTHING;
        }
        self.locked = false;
        self.send_due(now)
    }

    /// A caller packet arrived at `now`; `frame_sized` when it carried exactly one 20 ms frame.
    pub(crate) fn on_caller_packet(&mut self, now: Instant, frame_sized: bool) -> Due {
        let previous = self.last_arrival.replace(now);
        let steady = frame_sized
            && previous.is_some_and(|p| {
                now.saturating_duration_since(p).abs_diff(FRAME_INTERVAL) <= STEADY_TOLERANCE
            });
        if !steady || self.catch_up_at.is_some() {
            self.locked = false;
            return self.send_due(now);
        }
        if now + LOCK_WINDOW < self.next_due {
            // Early: the slot is ahead of the caller's phase. Nearer to the slot ahead, move
            // it earlier; nearer to the one just sent, move it later.
            let early_by = self.next_due - now;
            if early_by <= FRAME_INTERVAL / 2 {
                self.next_due -= PHASE_STEP;
            } else {
                self.next_due += PHASE_STEP;
            }
            self.locked = false;
            return Due::NOTHING;
        }
        if now > self.next_due + LOCK_WINDOW {
            // Overdue (a late wake-up): the grid sends what is due.
            self.locked = false;
            return self.send_due(now);
        }
        // In the window: this packet's wake-up sends the frame. The grid follows the caller's
        // mean phase (a quarter of each error), not each packet's jitter.
        self.next_due = if now >= self.next_due {
            self.next_due + FRAME_INTERVAL + (now - self.next_due) / 4
        } else {
            self.next_due + FRAME_INTERVAL - (self.next_due - now) / 4
        };
        self.locked = true;
        Due {
            skipped: 0,
            send: 1,
        }
    }

    fn send_due(&mut self, now: Instant) -> Due {
        self.catch_up_at = None;
        let mut skipped = 0;
        if now.saturating_duration_since(self.next_due) > MAX_PACING_LAG {
            while self.next_due + FRAME_INTERVAL <= now {
                self.next_due += FRAME_INTERVAL;
                skipped += 1;
            }
        }
        let mut send = 0;
        while self.next_due <= now && send < MAX_FRAMES_PER_WAKE {
            self.next_due += FRAME_INTERVAL;
            send += 1;
        }
        if self.next_due <= now {
            self.catch_up_at = Some(now + FRAME_INTERVAL / 2);
        }
        Due { skipped, send }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clock() -> impl Fn(u64) -> Instant {
        let start = Instant::now();
        move |us: u64| start + Duration::from_micros(us)
    }

    const fn due(skipped: u32, send: u32) -> Due {
        Due { skipped, send }
    }

    #[test]
    fn timer_alone_keeps_fifty_frames_per_second_despite_late_wakeups() {
        let at = clock();
        let ms = |n: u64| at(n * 1000);
        let mut pacer = Pacer::starting(ms(0));
        assert_eq!(pacer.on_timer(ms(0)), due(0, 1));
        assert_eq!(pacer.deadline(), ms(20));
        // 1 ms late: still one frame, next slot on the original grid (no drift).
        assert_eq!(pacer.on_timer(ms(21)), due(0, 1));
        assert_eq!(pacer.deadline(), ms(40));
        // Woken before the deadline: nothing.
        assert_eq!(pacer.on_timer(ms(39)), due(0, 0));
        // 25 ms late (40 and 60 due): one frame of catch-up, no more.
        assert_eq!(pacer.on_timer(ms(65)), due(0, 2));
        assert_eq!(pacer.deadline(), ms(80));
        // 50 ms late (80, 100, 120 due): two now, back in half a frame for the rest.
        assert_eq!(pacer.on_timer(ms(130)), due(0, 2));
        assert_eq!(pacer.deadline(), ms(140));
        assert_eq!(pacer.on_timer(ms(140)), due(0, 2));
        assert_eq!(pacer.deadline(), ms(160));
        // A stall past MAX_PACING_LAG skips instead of bursting.
        assert_eq!(pacer.on_timer(ms(1000)), due(42, 1));
        assert_eq!(pacer.deadline(), ms(1020));

        // Over a long run with jittery wake-ups the frame count matches wall time.
        let mut pacer = Pacer::starting(ms(0));
        let (mut frames, mut now) = (0, 0);
        while now < 10_000 {
            let d = pacer.on_timer(ms(now));
            frames += d.send + d.skipped;
            let late = (now * 7919) % 8;
            now = (pacer.deadline() - ms(0)).as_millis() as u64 + late;
        }
        assert!((499..=501).contains(&frames), "{frames} frames in 10 s");
    }

    /// Simulates a caller sending every 20 ms at `phase_us` (+ per-packet `jitter_us`) and a
    /// timer that fires on time; returns (send instants, frames sent by arrivals, by timer).
    fn simulate(
        phase_us: u64,
        jitter_us: impl Fn(u64) -> u64,
        seconds: u64,
        caller_stops_at_us: u64,
    ) -> (Vec<u64>, u32, u32) {
        let at = clock();
        let mut pacer = Pacer::starting(at(0));
        let (mut sends, mut by_arrival, mut by_timer) = (Vec::new(), 0, 0);
        let end = seconds * 1_000_000;
        let mut packet = 0;
        let mut steps = 0;
        let next_arrival = |n: u64| phase_us + n * 20_000 + jitter_us(n);
        loop {
            let arrival = next_arrival(packet);
            let deadline = (pacer.deadline() - at(0)).as_nanos().div_ceil(1000) as u64;
            let arrival_first = arrival < caller_stops_at_us && arrival <= deadline;
            let now = if arrival_first { arrival } else { deadline };
            if now >= end {
                break;
            }
            steps += 1;
            assert!(
                steps < 10 * end / 20_000,
                "no progress at {now} µs: {pacer:?}"
            );
            let d = if arrival_first {
                packet += 1;
                pacer.on_caller_packet(at(now), true)
            } else {
                pacer.on_timer(at(now))
            };
            for _ in 0..d.send {
                sends.push(now);
            }
            if arrival_first {
                by_arrival += d.send;
            } else {
                by_timer += d.send;
            }
        }
        (sends, by_arrival, by_timer)
    }

    fn max_deviation_us(sends: &[u64]) -> u64 {
        sends
            .windows(2)
            .map(|w| (w[1] - w[0]).abs_diff(20_000))
            .max()
            .unwrap_or(0)
    }

    #[test]
    fn locks_to_the_callers_phase_from_any_offset_without_jitter_over_one_step() {
        for phase_us in [0, 300, 5_000, 9_999, 10_000, 10_001, 15_000, 19_700] {
            let (sends, by_arrival, by_timer) = simulate(phase_us, |_| 0, 10, u64::MAX);
            assert!(
                (499..=501).contains(&sends.len()),
                "phase {phase_us}: {} frames in 10 s",
                sends.len()
            );
            assert!(
                max_deviation_us(&sends) <= PHASE_STEP.as_micros() as u64,
                "phase {phase_us}: interval off by {} µs",
                max_deviation_us(&sends)
            );
            // Locked within half a frame's worth of steps, then arrivals do the sending.
            assert!(by_timer <= 11, "phase {phase_us}: {by_timer} timer frames");
            assert!(by_arrival >= 489, "phase {phase_us}: {by_arrival}");
        }
    }

    #[test]
    fn rides_arrival_jitter_and_falls_back_to_the_timer_when_the_caller_stops() {
        // ±0.8 ms of arrival jitter: most frames still leave on the caller's packet; those
        // past the window leave on the timer, on the grid. Either way within 2 ms of 20 ms.
        let jitter = |n: u64| (n * 7919) % 1_600;
        let (sends, _, by_timer) = simulate(7_000, jitter, 10, u64::MAX);
        assert!((499..=501).contains(&sends.len()), "{}", sends.len());
        assert!(by_timer <= 75, "{by_timer} timer frames");
        assert!(max_deviation_us(&sends) <= 2_000);
        // The caller goes quiet at 5 s: the timer keeps 50 frames/s on the same grid.
        let (sends, _, by_timer) = simulate(7_000, |_| 0, 10, 5_000_000);
        assert!((499..=501).contains(&sends.len()), "{}", sends.len());
        assert!(by_timer >= 245, "{by_timer}");
        assert!(max_deviation_us(&sends) <= LOCK_WINDOW.as_micros() as u64);
    }

    #[test]
    fn irregular_packets_never_move_the_grid() {
        // 30 ms packets: not a steady 20 ms stream, so the timer's grid stays in charge.
        let at = clock();
        let mut frames = 0;
        let mut pacer = Pacer::starting(at(0));
        let mut next_packet = 5_000;
        let mut now;
        loop {
            let deadline = (pacer.deadline() - at(0)).as_nanos().div_ceil(1000) as u64;
            now = deadline.min(next_packet);
            if now >= 3_000_000 {
                break;
            }
            let d = if next_packet <= deadline {
                next_packet += 30_000;
                pacer.on_caller_packet(at(now), false)
            } else {
                pacer.on_timer(at(now))
            };
            frames += d.send;
            assert_eq!(d.skipped, 0);
            assert!(!pacer.is_locked());
        }
        assert!((149..=151).contains(&frames), "{frames} frames in 3 s");
    }
}
