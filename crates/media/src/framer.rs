//! Caller audio re-cut into the 20 ms frames the agent expects.

use crate::rtp::FRAME_SAMPLES;

/// Re-cuts caller audio into 20 ms chunks (carriers may send 10, 30 or 40 ms packets).
#[derive(Debug, Default)]
pub(crate) struct CallerFramer {
    pending: Vec<u8>,
    /// RTP timestamp of `pending[0]`.
    pending_timestamp: u32,
}

impl CallerFramer {
    /// Feeds one packet of µ-law; calls `emit(rtp_timestamp, chunk)` for each whole frame.
    /// A gap in timestamps flushes the partial frame first, so chunks keep their real time.
    pub(crate) fn push(&mut self, timestamp: u32, ulaw: &[u8], mut emit: impl FnMut(u32, &[u8])) {
        if self.pending.is_empty() && ulaw.len() == FRAME_SAMPLES {
            emit(timestamp, ulaw);
            return;
        }
        let expected = self
            .pending_timestamp
            .wrapping_add(self.pending.len() as u32);
        if !self.pending.is_empty() && expected != timestamp {
            emit(self.pending_timestamp, &self.pending);
            self.pending.clear();
        }
        if self.pending.is_empty() {
            self.pending_timestamp = timestamp;
        }
        self.pending.extend_from_slice(ulaw);
        let mut offset = 0;
        while self.pending.len() - offset >= FRAME_SAMPLES {
            let ts = self.pending_timestamp.wrapping_add(offset as u32);
            emit(ts, &self.pending[offset..offset + FRAME_SAMPLES]);
            offset += FRAME_SAMPLES;
        }
        self.pending.drain(..offset);
        self.pending_timestamp = self.pending_timestamp.wrapping_add(offset as u32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(framer: &mut CallerFramer, ts: u32, data: &[u8]) -> Vec<(u32, Vec<u8>)> {
        let mut out = Vec::new();
        framer.push(ts, data, |t, c| out.push((t, c.to_vec())));
        out
    }

    #[test]
    fn framer_passes_20ms_and_recuts_other_sizes() {
        let mut f = CallerFramer::default();
        assert_eq!(frames(&mut f, 0, &[1; 160]), [(0, vec![1; 160])]);
        // 30 ms packets: 240 bytes -> 160 + 80 pending; next -> 160 + 160.
        assert_eq!(frames(&mut f, 160, &[2; 240]), [(160, vec![2; 160])]);
        let out = frames(&mut f, 400, &[3; 240]);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].0, 320);
        assert_eq!(&out[0].1[..80], &[2; 80]);
        assert_eq!(&out[0].1[80..], &[3; 80]);
        assert_eq!(out[1], (480, vec![3; 160]));
        // 10 ms packet then a gap: the partial frame is flushed with its own timestamp.
        assert!(frames(&mut f, 640, &[4; 80]).is_empty());
        assert_eq!(
            frames(&mut f, 2000, &[5; 160]),
            [(640, vec![4; 80]), (2000, vec![5; 160])]
        );
    }
}
