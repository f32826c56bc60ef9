//! SDP (RFC 4566 subset) and the RFC 3264 offer/answer model for one audio stream.
//!
//! What the gateway needs from a carrier's INVITE:
//! * [`SdpSession::answer`] — the carrier offered (INVITE with SDP, or a re-INVITE): pick PCMU,
//!   PCMA or G.722 in [`CodecPreference`] order plus RFC 4733 telephone-event, answer with our address and RTP port. Hold offers
//!   (`a=sendonly`, `a=inactive`, `c=0.0.0.0`) are answered `recvonly` / `inactive`.
//! * [`SdpSession::offer`] + [`SdpSession::accept_answer`] — late offer: the INVITE had no SDP,
//!   so our 200 OK carries the offer and the ACK carries the answer.
//!
//! One [`SdpSession`] lives as long as the call, so every SDP we send keeps the same `o=` session
//! id and bumps the version only when the body changes (RFC 3264 §8).

use std::fmt;
use std::net::SocketAddr;

mod answer;
pub mod crypto;
mod parse;
#[cfg(test)]
mod tests;

pub use answer::{negotiate, SdpSession};
pub use crypto::{CryptoSuite, MediaEncryption, SrtpKey, SrtpParams};
pub use parse::{MediaDescription, Origin, RtpMap, SessionDescription};

/// Packetisation interval we send and ask for: 20 ms is what every carrier and the Twilio
/// dialect use (160 samples at 8 kHz per frame).
pub const PTIME_MS: u32 = 20;
/// Dynamic payload type we offer for telephone-event when we make the offer (late offer).
/// 101 is the de-facto value used by most SIP stacks, which makes traces easy to read.
pub const OFFER_TELEPHONE_EVENT_PT: u8 = 101;
/// RFC 4733 events we accept: DTMF 0-9, *, #, A-D (0-15) and flash (16).
const TELEPHONE_EVENTS: &str = "0-16";
/// Upper bound on `m=` sections; real offers carry one or two. Protects against absurd bodies.
const MAX_MEDIA_SECTIONS: usize = 16;
/// Upper bound on formats in one `m=` line (RTP payload types are 7 bits).
const MAX_FORMATS: usize = 128;
/// Session name in the SDP we produce (`s=` must not be empty).
const SESSION_NAME: &str = "switchboard";

/// The audio codecs switchboard bridges. A Twilio-dialect agent speaks µ-law, so PCMU needs no
/// transcoding, PCMA costs one table lookup per byte and G.722 a decode, a 16 → 8 kHz low-pass
/// decimation and a µ-law encode (see [`crate::transcode`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Codec {
    /// G.711 µ-law, static payload type 0.
    Pcmu,
    /// G.711 A-law, static payload type 8.
    Pcma,
    /// G.722 (16 kHz audio, 64 kbit/s), static payload type 9. Its RTP clock is 8000 although
    /// it samples at 16 kHz (RFC 3551 §4.5.2), so one payload byte is one RTP tick, as for G.711.
    G722,
}

impl Codec {
    /// The RFC 3551 static payload type.
    pub fn static_payload_type(self) -> u8 {
        match self {
            Codec::Pcmu => 0,
            Codec::Pcma => 8,
            Codec::G722 => 9,
        }
    }

    /// The encoding name as it appears in `a=rtpmap`.
    pub fn encoding_name(self) -> &'static str {
        match self {
            Codec::Pcmu => "PCMU",
            Codec::Pcma => "PCMA",
            Codec::G722 => "G722",
        }
    }

    /// `G722/16000` is a common mistake in offers (the codec samples at 16 kHz, but RFC 3551
    /// fixes its RTP clock at 8000): it is taken as G.722, since the payload type it names is
    /// almost always the static 9 and the bitstream is the same. Our answer says `/8000`.
    pub(super) fn from_encoding(name: &str, clock_rate: u32) -> Option<Codec> {
        if name.eq_ignore_ascii_case("G722") && matches!(clock_rate, 8000 | 16000) {
            return Some(Codec::G722);
        }
        if clock_rate != 8000 {
            return None;
        }
        if name.eq_ignore_ascii_case("PCMU") {
            Some(Codec::Pcmu)
        } else if name.eq_ignore_ascii_case("PCMA") {
            Some(Codec::Pcma)
        } else {
            None
        }
    }

    /// The codec of a static payload type written without an rtpmap.
    pub(super) fn from_static(payload_type: u8) -> Option<Codec> {
        [Codec::Pcmu, Codec::Pcma, Codec::G722]
            .into_iter()
            .find(|c| c.static_payload_type() == payload_type)
    }
}

/// Which codec an answer (and our late offer) puts first when the far end can do several.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CodecPreference {
    /// PCMU, PCMA, then G.722: for µ-law (Twilio dialect) agents. PCMU passes through untouched
    /// and PCMA is one table lookup, while G.722 would be decoded and low-passed down to 8 kHz
    /// — CPU spent to throw its wide band away. G.722 is still taken when it is all there is.
    #[default]
    Narrowband,
    /// G.722 first, then PCMU, PCMA: for agents that take 16 kHz audio (`l16-16k`), who then
    /// hear the caller's 50–7000 Hz; G.711 upsampled to 16 kHz carries no more than 4 kHz.
    Wideband,
}

impl CodecPreference {
    /// Codecs, most wanted first.
    pub fn order(self) -> [Codec; 3] {
        match self {
            CodecPreference::Narrowband => [Codec::Pcmu, Codec::Pcma, Codec::G722],
            CodecPreference::Wideband => [Codec::G722, Codec::Pcmu, Codec::Pcma],
        }
    }
}

/// Media direction attribute (RFC 4566 §6, RFC 3264 §6.1), from the point of view of the
/// side that wrote the SDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Direction {
    #[default]
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    /// The direction the other side answers with (RFC 3264 §6.1).
    pub fn reversed(self) -> Direction {
        match self {
            Direction::SendOnly => Direction::RecvOnly,
            Direction::RecvOnly => Direction::SendOnly,
            other => other,
        }
    }

    /// True when the writer of this SDP sends media.
    pub fn sends(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::SendOnly)
    }

    /// True when the writer of this SDP receives media.
    pub fn receives(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::RecvOnly)
    }

    pub(super) fn attribute(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }

    pub(super) fn from_attribute(name: &str) -> Option<Direction> {
        match name {
            "sendrecv" => Some(Direction::SendRecv),
            "sendonly" => Some(Direction::SendOnly),
            "recvonly" => Some(Direction::RecvOnly),
            "inactive" => Some(Direction::Inactive),
            _ => None,
        }
    }
}

/// What the bridge needs to know about the agreed audio stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NegotiatedMedia {
    pub codec: Codec,
    /// Payload type for audio in both directions (the offerer's number for the codec).
    pub payload_type: u8,
    /// Payload type of RFC 4733 telephone-event, when both sides agreed on it.
    pub telephone_event: Option<u8>,
    /// Where the far end wants our RTP, from its SDP. `None` while it is on hold with a null
    /// address (`c=0.0.0.0`). The bridge latches to the real source address anyway
    /// (symmetric RTP); this is where it sends until the first packet arrives.
    pub remote_rtp: Option<SocketAddr>,
    /// Our side's direction: [`Direction::sends`] says whether the bridge may send RTP,
    /// [`Direction::receives`] whether it expects caller audio.
    pub direction: Direction,
    /// The far end's requested packetisation (informational; we always send [`PTIME_MS`]).
    pub remote_ptime_ms: Option<u32>,
    /// SDES keys when the stream is SRTP (`RTP/SAVP`); `None` for plain RTP.
    pub srtp: Option<SrtpParams>,
}

impl NegotiatedMedia {
    /// True when the far end put the call on hold (we must not send media).
    pub fn on_hold(&self) -> bool {
        !self.direction.sends() || self.remote_rtp.is_none()
    }
}

/// An SDP body we generated (answer or offer), ready for a SIP message body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    sdp: String,
}

impl Answer {
    /// The body text (CRLF line endings).
    pub fn as_str(&self) -> &str {
        &self.sdp
    }

    pub fn into_string(self) -> String {
        self.sdp
    }
}

impl fmt::Display for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.sdp)
    }
}
