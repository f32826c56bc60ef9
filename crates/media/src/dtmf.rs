//! RFC 4733 telephone-event → one digit per key press.
//!
//! A key press arrives as several packets sharing one RTP timestamp (the event start): the
//! first, updates with growing duration, and the end packet sent three times. The digit is
//! reported on the first packet seen for a new timestamp, so a lost start packet delays
//! nothing and the retransmitted ends are recognised as the same event.

/// Timestamps remembered for de-duplication. Events are sequential, so a handful covers
/// reordering between neighbouring key presses.
const REMEMBERED_EVENTS: usize = 8;
/// Largest duration field; an event this long continues in a new segment (RFC 4733 §2.5.1.3).
const MAX_DURATION: u16 = u16::MAX;

/// The digit for an RFC 4733 DTMF event code (0-9, *, #, A-D); `None` for other events.
pub fn event_digit(code: u8) -> Option<char> {
    match code {
        0..=9 => Some((b'0' + code) as char),
        10 => Some('*'),
        11 => Some('#'),
        12..=15 => Some((b'A' + code - 12) as char),
        _ => None,
    }
}

#[derive(Debug, Clone, Copy)]
struct LastEvent {
    timestamp: u32,
    code: u8,
    duration: u16,
    ended: bool,
}

/// Turns telephone-event packets into digits, once each.
#[derive(Debug, Clone, Default)]
pub struct DtmfDetector {
    seen: [Option<(u32, u32)>; REMEMBERED_EVENTS],
    next_slot: usize,
    last: Option<LastEvent>,
}

impl DtmfDetector {
    pub fn new() -> DtmfDetector {
        DtmfDetector::default()
    }

    /// Feeds one telephone-event payload with its RTP SSRC and timestamp; returns the digit
    /// when this packet starts a new key press.
    pub fn on_packet(&mut self, ssrc: u32, timestamp: u32, payload: &[u8]) -> Option<char> {
        if payload.len() < 4 {
            return None;
        }
        let code = payload[0];
        let ended = payload[1] & 0x80 != 0;
        let duration = u16::from_be_bytes([payload[2], payload[3]]);
        let known = self.seen.contains(&Some((ssrc, timestamp)));
        // A long press continues in a new segment with a new timestamp: same key, not a new one.
        let continuation = self.last.is_some_and(|last| {
            !known
                && !last.ended
                && last.code == code
                && last.duration == MAX_DURATION
                && timestamp == last.timestamp.wrapping_add(u32::from(MAX_DURATION))
        });
        if let Some(last) = self.last.as_mut().filter(|l| l.timestamp == timestamp) {
            last.duration = last.duration.max(duration);
            last.ended |= ended;
        }
        if known {
            return None;
        }
        self.seen[self.next_slot] = Some((ssrc, timestamp));
        self.next_slot = (self.next_slot + 1) % REMEMBERED_EVENTS;
        self.last = Some(LastEvent {
            timestamp,
            code,
            duration,
            ended,
        });
        if continuation {
            return None;
        }
        event_digit(code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(code: u8, end: bool, duration: u16) -> [u8; 4] {
        let [hi, lo] = duration.to_be_bytes();
        [code, if end { 0x80 | 10 } else { 10 }, hi, lo]
    }

    #[test]
    fn one_digit_per_press_despite_updates_and_triple_end() {
        let mut d = DtmfDetector::new();
        let mut digits = String::new();
        for (ts, code, end, dur) in [
            (1000, 5, false, 160),
            (1000, 5, false, 320),
            (1000, 5, false, 480),
            (1000, 5, true, 640),
            (1000, 5, true, 640),
            (1000, 5, true, 640),
            // Same digit again: a new press has a new timestamp.
            (3000, 5, false, 160),
            (3000, 5, true, 400),
            (3000, 5, true, 400),
            (3000, 5, true, 400),
            // Start packet lost: the first update still reports the digit.
            (5000, 11, false, 480),
            (5000, 11, true, 800),
            (7000, 10, true, 800),
            (9000, 16, false, 160), // flash: not a digit
            (11000, 15, false, 160),
        ] {
            if let Some(c) = d.on_packet(42, ts, &event(code, end, dur)) {
                digits.push(c);
            }
        }
        assert_eq!(digits, "55#*D");
    }

    #[test]
    fn reordered_end_of_previous_event_is_not_a_new_press() {
        let mut d = DtmfDetector::new();
        assert_eq!(d.on_packet(1, 100, &event(1, false, 160)), Some('1'));
        assert_eq!(d.on_packet(1, 900, &event(2, false, 160)), Some('2'));
        assert_eq!(d.on_packet(1, 100, &event(1, true, 800)), None);
    }

    #[test]
    fn long_press_segments_are_one_digit() {
        let mut d = DtmfDetector::new();
        assert_eq!(d.on_packet(1, 0, &event(9, false, 160)), Some('9'));
        assert_eq!(d.on_packet(1, 0, &event(9, false, u16::MAX)), None);
        assert_eq!(
            d.on_packet(1, u32::from(u16::MAX), &event(9, false, 160)),
            None
        );
        assert_eq!(
            d.on_packet(1, u32::from(u16::MAX), &event(9, true, 2000)),
            None
        );
        assert_eq!(d.on_packet(1, 200_000, &event(9, false, 160)), Some('9'));
    }

    #[test]
    fn short_payloads_are_ignored() {
        let mut d = DtmfDetector::new();
        assert_eq!(d.on_packet(1, 0, &[1, 2]), None);
        assert_eq!(event_digit(12), Some('A'));
        assert_eq!(event_digit(0), Some('0'));
    }
}
