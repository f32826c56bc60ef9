//! The agent → caller audio queue: paced frames, marks and clear (Twilio semantics).
//!
//! Agent audio is a byte stream (µ-law, or L16 in the `l16-16k` dialect); marks are positions in that stream. A mark is echoed
//! once every byte queued before it has been played (sent as RTP), `clear` drops the queue and
//! echoes the pending marks at once, as Twilio does on barge-in.

use std::collections::VecDeque;

use crate::g711::ULAW_SILENCE;

/// Marks kept waiting at most; an agent that floods marks gets the oldest echoed early
/// rather than growing memory without bound.
pub const MAX_PENDING_MARKS: usize = 1024;

/// What [`Playout::push_audio`] did with the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Queued {
    pub accepted: usize,
    pub dropped: usize,
}

#[derive(Debug, Clone)]
pub struct Playout {
    audio: VecDeque<u8>,
    /// Bytes ever accepted into the queue.
    queued_total: u64,
    /// Bytes ever taken out of the queue (played or cleared).
    played_total: u64,
    /// (stream position, name), in position order.
    marks: VecDeque<(u64, String)>,
    capacity: usize,
    /// Pads a short last frame: µ-law silence unless [`Playout::with_silence`] says otherwise.
    silence: u8,
}

impl Playout {
    /// `capacity` bounds the backlog in bytes (= samples at 8 kHz µ-law).
    pub fn new(capacity: usize) -> Playout {
        Playout {
            audio: VecDeque::new(),
            queued_total: 0,
            played_total: 0,
            marks: VecDeque::new(),
            capacity,
            silence: ULAW_SILENCE,
        }
    }

    /// The byte that pads a short tail (the agent dialect's silence).
    pub fn with_silence(mut self, silence: u8) -> Playout {
        self.silence = silence;
        self
    }

    /// Appends agent audio; whatever would exceed the capacity is dropped (the newest bytes,
    /// so what is queued keeps playing without a jump).
    pub fn push_audio(&mut self, ulaw: &[u8]) -> Queued {
        let room = self.capacity.saturating_sub(self.audio.len());
        let accepted = ulaw.len().min(room);
        self.audio.extend(&ulaw[..accepted]);
        self.queued_total += accepted as u64;
        Queued {
            accepted,
            dropped: ulaw.len() - accepted,
        }
    }

    /// Queues a mark. Returns the names to echo right away: this one when nothing is queued
    /// before it, or the oldest one when too many are waiting.
    pub fn push_mark(&mut self, name: String) -> Option<String> {
        if self.queued_total == self.played_total {
            return Some(name);
        }
        self.marks.push_back((self.queued_total, name));
        if self.marks.len() > MAX_PENDING_MARKS {
            return self.marks.pop_front().map(|(_, n)| n);
        }
        None
    }

    /// Drops all queued audio; returns the pending marks to echo, oldest first.
    pub fn clear(&mut self) -> Vec<String> {
        self.played_total += self.audio.len() as u64;
        self.audio.clear();
        self.marks.drain(..).map(|(_, name)| name).collect()
    }

    /// Takes the next frame (`frame.len()` bytes: one 20 ms frame of the dialect) into
    /// `frame`, padding a short tail with silence. Returns the number of agent bytes taken,
    /// `None` when the queue is empty.
    pub fn next_frame(&mut self, frame: &mut [u8]) -> Option<usize> {
        if self.audio.is_empty() {
            return None;
        }
        let take = self.audio.len().min(frame.len());
        for (slot, byte) in frame.iter_mut().zip(self.audio.drain(..take)) {
            *slot = byte;
        }
        frame[take..].fill(self.silence);
        self.played_total += take as u64;
        Some(take)
    }

    /// Pops the next mark whose audio has all been played.
    pub fn due_mark(&mut self) -> Option<String> {
        match self.marks.front() {
            Some((position, _)) if *position <= self.played_total => {
                self.marks.pop_front().map(|(_, n)| n)
            }
            _ => None,
        }
    }

    /// Queued audio in bytes.
    pub fn backlog(&self) -> usize {
        self.audio.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtp::FRAME_SAMPLES;

    fn drain_marks(p: &mut Playout) -> Vec<String> {
        std::iter::from_fn(|| p.due_mark()).collect()
    }

    #[test]
    fn marks_are_due_after_the_audio_before_them() {
        let mut p = Playout::new(10_000);
        assert_eq!(
            p.push_mark("early".into()),
            Some("early".into()),
            "nothing queued: echo now"
        );
        p.push_audio(&[1; 200]);
        assert_eq!(p.push_mark("a".into()), None);
        p.push_audio(&[2; 100]);
        assert_eq!(p.push_mark("b".into()), None);
        let mut frame = [0u8; FRAME_SAMPLES];
        assert_eq!(p.next_frame(&mut frame), Some(160));
        assert!(
            drain_marks(&mut p).is_empty(),
            "40 bytes before a still queued"
        );
        assert_eq!(p.next_frame(&mut frame), Some(140));
        assert_eq!(&frame[..40], &[1; 40]);
        assert_eq!(&frame[40..140], &[2; 100]);
        assert_eq!(
            &frame[140..],
            &[ULAW_SILENCE; 20],
            "short tail padded with silence"
        );
        assert_eq!(drain_marks(&mut p), ["a", "b"]);
        assert_eq!(p.next_frame(&mut frame), None);
    }

    #[test]
    fn clear_drops_audio_and_returns_pending_marks() {
        let mut p = Playout::new(10_000);
        p.push_audio(&[1; 1000]);
        p.push_mark("x".into());
        p.push_audio(&[1; 1000]);
        p.push_mark("y".into());
        assert_eq!(p.clear(), ["x", "y"]);
        assert_eq!(p.backlog(), 0);
        let mut frame = [0u8; FRAME_SAMPLES];
        assert_eq!(p.next_frame(&mut frame), None);
        assert_eq!(p.push_mark("z".into()), Some("z".into()));
    }

    #[test]
    fn backlog_is_bounded() {
        let mut p = Playout::new(300);
        assert_eq!(
            p.push_audio(&[0; 200]),
            Queued {
                accepted: 200,
                dropped: 0
            }
        );
        assert_eq!(
            p.push_audio(&[0; 200]),
            Queued {
                accepted: 100,
                dropped: 100
            }
        );
        assert_eq!(p.backlog(), 300);
        for i in 0..MAX_PENDING_MARKS {
            assert_eq!(p.push_mark(i.to_string()), None);
        }
        assert_eq!(p.push_mark("overflow".into()), Some("0".into()));
    }
}
