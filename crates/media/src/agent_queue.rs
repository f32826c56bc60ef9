//! Messages for the agent waiting while its WebSocket is busy, bounded, oldest audio first out.
//!
//! The bridge never waits on the agent's socket: while a write is still in flight (the agent
//! reads slowly, its TCP window is full) new messages wait here. Caller audio is worth nothing
//! once late, so past [`MAX_QUEUED_MEDIA`] the oldest `media` message is dropped and counted;
//! `mark`/`dtmf`/`stop` are kept (the agent's state depends on them) up to [`MAX_QUEUED`],
//! past which the oldest message of any kind goes. Memory per call stays bounded whatever
//! the agent does, and the call's other direction keeps flowing.

use std::collections::VecDeque;

/// Caller audio kept for a slow agent: 10 frames = 200 ms, longer than any healthy stall.
pub const MAX_QUEUED_MEDIA: usize = 10;
/// All messages kept for a slow agent (marks are capped by the playout at 1024 anyway).
pub const MAX_QUEUED: usize = 1024;

/// One message with whether it may be dropped for being late audio.
#[derive(Debug)]
struct Queued<T> {
    media: bool,
    message: T,
}

#[derive(Debug)]
pub(crate) struct AgentQueue<T> {
    queue: VecDeque<Queued<T>>,
    media: usize,
}

impl<T> Default for AgentQueue<T> {
    fn default() -> Self {
        AgentQueue {
            queue: VecDeque::new(),
            media: 0,
        }
    }
}

impl<T> AgentQueue<T> {
    /// Queues a message; returns how many older messages were dropped to make room (0 or 1).
    pub(crate) fn push(&mut self, message: T, media: bool) -> u64 {
        let mut dropped = 0;
        if media && self.media == MAX_QUEUED_MEDIA {
            if let Some(oldest) = self.queue.iter().position(|q| q.media) {
                self.queue.remove(oldest);
                self.media -= 1;
                dropped += 1;
            }
        }
        if self.queue.len() == MAX_QUEUED {
            if let Some(oldest) = self.queue.pop_front() {
                self.media -= usize::from(oldest.media);
                dropped += 1;
            }
        }
        self.media += usize::from(media);
        self.queue.push_back(Queued { media, message });
        dropped
    }

    /// The oldest waiting message.
    pub(crate) fn pop(&mut self) -> Option<T> {
        let oldest = self.queue.pop_front()?;
        self.media -= usize::from(oldest.media);
        Some(oldest.message)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.queue.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn late_audio_goes_oldest_first_and_control_messages_stay() {
        let mut q = AgentQueue::default();
        assert_eq!(q.push("mark-a".to_string(), false), 0);
        let mut dropped = 0;
        for i in 0..MAX_QUEUED_MEDIA + 5 {
            dropped += q.push(format!("media-{i}"), true);
        }
        assert_eq!(dropped, 5, "one per frame past the cap");
        assert_eq!(q.push("dtmf".to_string(), false), 0);
        assert_eq!(q.len(), MAX_QUEUED_MEDIA + 2);
        let order: Vec<String> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(order[0], "mark-a");
        assert_eq!(order[1], "media-5", "media-0..4 were the oldest audio");
        assert_eq!(
            order[MAX_QUEUED_MEDIA],
            format!("media-{}", MAX_QUEUED_MEDIA + 4)
        );
        assert_eq!(order[MAX_QUEUED_MEDIA + 1], "dtmf");
        assert!(q.is_empty());
        // Counters stay right after draining: a fresh burst gets the full media allowance.
        for i in 0..MAX_QUEUED_MEDIA {
            assert_eq!(q.push(i.to_string(), true), 0);
        }
        assert_eq!(q.push("99".to_string(), true), 1);
    }

    #[test]
    fn everything_is_bounded_even_a_flood_of_control_messages() {
        let mut q = AgentQueue::default();
        let mut dropped = 0;
        for i in 0..MAX_QUEUED * 3 {
            dropped += q.push(i, i % 2 == 0);
        }
        assert_eq!(q.len(), MAX_QUEUED);
        assert_eq!(dropped as usize, MAX_QUEUED * 2);
        assert!(q.media <= MAX_QUEUED_MEDIA);
        let kept: Vec<usize> = std::iter::from_fn(|| q.pop()).collect();
        // Newest control messages survive, in order.
        assert!(kept.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(*kept.last().unwrap(), MAX_QUEUED * 3 - 1);
    }
}
