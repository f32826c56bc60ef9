//! RTP in and out for one G.711 stream (RFC 3550 via rtp-rs).
//!
//! [`RtpReceiver`] classifies the caller's packets (audio, telephone-event, or ignored) and
//! drops duplicates and late packets; [`RtpSender`] stamps our packets with a random SSRC,
//! consecutive sequence numbers and a timestamp that advances 160 samples per 20 ms tick.

use rtp_rs::{RtpPacketBuilder, RtpReader, Seq};

/// Samples (= µ-law bytes) in one 20 ms frame at 8 kHz.
pub const FRAME_SAMPLES: usize = 160;
/// Room for a 12-byte header plus the largest payload we build (one frame).
pub const MAX_PACKET: usize = 12 + FRAME_SAMPLES;
/// Comfort noise (RFC 3389) static payload type: recognised and ignored.
const COMFORT_NOISE_PT: u8 = 13;
/// A sequence number this far behind the newest is a late or duplicate packet; further back
/// than this it is taken as a restart of the sender's numbering (RFC 3550 A.1 uses 100/3000).
const MAX_MISORDER: u16 = 100;

/// What one datagram from the caller turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inbound<'a> {
    /// Audio in the negotiated codec.
    Audio {
        payload: &'a [u8],
        timestamp: u32,
        ssrc: u32,
        seq: u16,
    },
    /// An RFC 4733 telephone-event packet.
    Event {
        payload: &'a [u8],
        timestamp: u32,
        ssrc: u32,
        seq: u16,
    },
    /// Valid RTP we do not use (comfort noise, other payload types, late or duplicate).
    Ignored,
}

/// Why a datagram is not RTP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotRtp(pub String);

/// Classifies the caller's packets for one negotiated stream.
#[derive(Debug, Clone)]
pub struct RtpReceiver {
    audio_pt: u8,
    event_pt: Option<u8>,
    /// (SSRC, highest sequence number seen) of the current sender.
    newest: Option<(u32, u16)>,
}

impl RtpReceiver {
    pub fn new(audio_pt: u8, event_pt: Option<u8>) -> RtpReceiver {
        RtpReceiver {
            audio_pt,
            event_pt,
            newest: None,
        }
    }

    /// Follows a re-negotiation (re-INVITE) without forgetting the sequence state.
    pub fn set_payload_types(&mut self, audio_pt: u8, event_pt: Option<u8>) {
        self.audio_pt = audio_pt;
        self.event_pt = event_pt;
    }

    /// Parses and classifies one datagram.
    pub fn receive<'a>(&mut self, datagram: &'a [u8]) -> Result<Inbound<'a>, NotRtp> {
        let packet = RtpReader::new(datagram).map_err(|e| NotRtp(format!("{e:?}")))?;
        let payload_type = packet.payload_type();
        // RTCP multiplexed onto the RTP port (RFC 5761): packet types 200-204 show up here as
        // PT 72-76 with the marker bit set. We did not offer rtcp-mux, but some peers send it.
        if (72..=76).contains(&payload_type) {
            return Ok(Inbound::Ignored);
        }
        let is_audio = payload_type == self.audio_pt;
        let is_event = Some(payload_type) == self.event_pt;
        if !is_audio && !is_event || payload_type == COMFORT_NOISE_PT {
            return Ok(Inbound::Ignored);
        }
        let ssrc = packet.ssrc();
        let seq = u16::from(packet.sequence_number());
        if !self.is_new(ssrc, seq) {
            return Ok(Inbound::Ignored);
        }
        let payload = packet.payload();
        let timestamp = packet.timestamp();
        Ok(if is_audio {
            Inbound::Audio {
                payload,
                timestamp,
                ssrc,
                seq,
            }
        } else {
            Inbound::Event {
                payload,
                timestamp,
                ssrc,
                seq,
            }
        })
    }

    /// True for a packet newer than any seen from this SSRC (or from a new SSRC / restart).
    fn is_new(&mut self, ssrc: u32, seq: u16) -> bool {
        match self.newest {
            Some((current, newest)) if current == ssrc => {
                let behind = newest.wrapping_sub(seq);
                if behind == 0 || behind < MAX_MISORDER {
                    // Duplicate or late: the agent wants audio in order, not twice.
                    false
                } else {
                    self.newest = Some((ssrc, seq));
                    true
                }
            }
            _ => {
                self.newest = Some((ssrc, seq));
                true
            }
        }
    }
}

/// Stamps outgoing packets. Call [`RtpSender::tick`] exactly once per 20 ms pacer tick.
#[derive(Debug, Clone)]
pub struct RtpSender {
    ssrc: u32,
    next_seq: Seq,
    timestamp: u32,
    /// Whether the previous tick carried audio from the agent (for the marker bit).
    in_talkspurt: bool,
    sent_any: bool,
}

impl RtpSender {
    /// Random SSRC, initial sequence number and timestamp, as RFC 3550 §5.1 asks.
    pub fn new() -> RtpSender {
        RtpSender::with_initial(rand::random(), rand::random(), rand::random())
    }

    /// Fixed initial values (tests).
    pub fn with_initial(ssrc: u32, seq: u16, timestamp: u32) -> RtpSender {
        RtpSender {
            ssrc,
            next_seq: Seq::from(seq),
            timestamp,
            in_talkspurt: false,
            sent_any: false,
        }
    }

    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    /// Advances one frame. With `payload` (one frame, at most [`FRAME_SAMPLES`] bytes) builds a
    /// packet into `out` and returns its length; `talkspurt` says the frame is agent audio
    /// (rather than filler), which sets the marker on the first frame of each talkspurt.
    /// Without `payload` nothing is sent but the timestamp still advances, so the receiver's
    /// clock stays in step across the gap.
    pub fn tick(
        &mut self,
        payload: Option<&[u8]>,
        talkspurt: bool,
        payload_type: u8,
        out: &mut [u8; MAX_PACKET],
    ) -> Option<usize> {
        let timestamp = self.timestamp;
        self.timestamp = self.timestamp.wrapping_add(FRAME_SAMPLES as u32);
        let Some(payload) = payload else {
            self.in_talkspurt = false;
            return None;
        };
        let payload = &payload[..payload.len().min(FRAME_SAMPLES)];
        let marked = !self.sent_any || (talkspurt && !self.in_talkspurt);
        self.in_talkspurt = talkspurt;
        self.sent_any = true;
        let seq = self.next_seq;
        self.next_seq = seq.next();
        let builder = RtpPacketBuilder::new()
            .payload_type(payload_type & 0x7F)
            .marked(marked)
            .sequence(seq)
            .timestamp(timestamp)
            .ssrc(self.ssrc)
            .payload(payload);
        // `out` always has room for a header plus one frame, and the payload type is masked to
        // 7 bits, so the checked build cannot fail; keep it checked anyway.
        builder.build_into(out).ok()
    }
}

impl Default for RtpSender {
    fn default() -> Self {
        RtpSender::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(pt: u8, seq: u16, ts: u32, ssrc: u32, payload: &[u8]) -> Vec<u8> {
        RtpPacketBuilder::new()
            .payload_type(pt)
            .sequence(Seq::from(seq))
            .timestamp(ts)
            .ssrc(ssrc)
            .payload(payload)
            .build()
            .unwrap()
    }

    #[test]
    fn classifies_audio_events_and_others() {
        let mut rx = RtpReceiver::new(0, Some(101));
        let audio = packet(0, 1, 160, 7, &[1, 2, 3]);
        assert_eq!(
            rx.receive(&audio).unwrap(),
            Inbound::Audio {
                payload: &[1, 2, 3],
                timestamp: 160,
                ssrc: 7,
                seq: 1
            }
        );
        let event = packet(101, 2, 320, 7, &[5, 0x0A, 0, 160]);
        assert!(matches!(
            rx.receive(&event).unwrap(),
            Inbound::Event { timestamp: 320, .. }
        ));
        assert_eq!(
            rx.receive(&packet(8, 3, 480, 7, &[0])).unwrap(),
            Inbound::Ignored
        );
        assert_eq!(
            rx.receive(&packet(13, 4, 480, 7, &[0])).unwrap(),
            Inbound::Ignored
        );
        assert!(rx.receive(&[0x80, 0]).is_err());
        assert!(rx.receive(&[0x40; 20]).is_err(), "version 1");
    }

    #[test]
    fn duplicates_and_late_packets_are_dropped_restarts_are_not() {
        let mut rx = RtpReceiver::new(0, None);
        assert_ne!(
            rx.receive(&packet(0, 65535, 0, 1, &[1])).unwrap(),
            Inbound::Ignored
        );
        assert_ne!(
            rx.receive(&packet(0, 0, 160, 1, &[2])).unwrap(),
            Inbound::Ignored,
            "wraps"
        );
        assert_eq!(
            rx.receive(&packet(0, 0, 160, 1, &[2])).unwrap(),
            Inbound::Ignored,
            "duplicate"
        );
        assert_eq!(
            rx.receive(&packet(0, 65535, 0, 1, &[1])).unwrap(),
            Inbound::Ignored,
            "late"
        );
        assert_ne!(
            rx.receive(&packet(0, 5, 960, 1, &[3])).unwrap(),
            Inbound::Ignored,
            "gap is fine"
        );
        assert_ne!(
            rx.receive(&packet(0, 30000, 0, 1, &[4])).unwrap(),
            Inbound::Ignored,
            "restart"
        );
        assert_ne!(
            rx.receive(&packet(0, 29999, 0, 2, &[5])).unwrap(),
            Inbound::Ignored,
            "new SSRC"
        );
    }

    #[test]
    fn sender_numbers_packets_and_marks_talkspurts() {
        let mut tx = RtpSender::with_initial(0xDEADBEEF, 65534, u32::MAX - 159);
        let mut out = [0u8; MAX_PACKET];
        let mut sent = Vec::new();
        // silence, speech, speech, gap, speech
        for (payload, talk) in [
            (Some(&[0xFFu8; 160][..]), false),
            (Some(&[1; 160][..]), true),
            (Some(&[2; 160][..]), true),
            (None, false),
            (Some(&[3; 160][..]), true),
        ] {
            if let Some(len) = tx.tick(payload, talk, 8, &mut out) {
                let reader = RtpReader::new(&out[..len]).unwrap();
                sent.push((
                    u16::from(reader.sequence_number()),
                    reader.timestamp(),
                    reader.mark(),
                    reader.ssrc(),
                    reader.payload_type(),
                    reader.payload()[0],
                ));
            }
        }
        assert_eq!(
            sent,
            [
                (65534, u32::MAX - 159, true, 0xDEADBEEF, 8, 0xFF),
                (65535, 0, true, 0xDEADBEEF, 8, 1),
                (0, 160, false, 0xDEADBEEF, 8, 2),
                (1, 480, true, 0xDEADBEEF, 8, 3),
            ]
        );
    }
}
