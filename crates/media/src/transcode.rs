//! Caller codec ⇄ agent audio, per call: what the bridge calls where it used to pass µ-law
//! through or look A-law up in a table.
//!
//! The agent speaks one of two [`AgentDialect`]s: Twilio's 8 kHz µ-law, or `l16-16k` (16 kHz
//! 16-bit little-endian linear PCM). The caller speaks PCMU, PCMA or G.722. Every pair works:
//!
//! | caller → agent | Twilio (µ-law 8 kHz) | `l16-16k` |
//! |---|---|---|
//! | PCMU | as is | µ-law decode, 8 → 16 kHz |
//! | PCMA | A-law → µ-law table | A-law decode, 8 → 16 kHz |
//! | G.722 | decode, 16 → 8 kHz, µ-law encode | decode |
//!
//! and the reverse for agent → caller. Codec and resampler come from the `audio-codec` crate
//! (G.722 per ITU-T, a Kaiser-windowed polyphase FIR resampler whose low-pass removes what
//! would alias when going to 8 kHz); G.711 uses our tables in [`crate::g711`]. A [`Transcoder`]
//! keeps the G.722 encoder and decoder state and the resampler history across packets, so it
//! belongs to one call, and reuses its buffers: no allocation per packet.

use audio_codec::g722::{G722Decoder, G722Encoder};
use audio_codec::{BoxedResampler, Decoder as _, Encoder as _};

use crate::g711::{self, ULAW_SILENCE};
use crate::sdp::{Codec, CodecPreference};

/// Narrowband and wideband sample rates.
const RATE_8K: usize = 8000;
const RATE_16K: usize = 16000;
/// Longest caller payload taken: 120 ms at 8000 RTP ticks/s (one byte per tick for all three
/// codecs). Carriers send 10–60 ms; longer is not a real packet and would only grow buffers.
pub const MAX_CALLER_PAYLOAD: usize = 960;
/// 16 kHz samples in [`MAX_CALLER_PAYLOAD`] (G.722 gives two per byte; G.711 upsampled too).
const MAX_WIDE_SAMPLES: usize = 2 * MAX_CALLER_PAYLOAD;

/// The Media Streams variant an agent runtime speaks (app version `dialect`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum AgentDialect {
    /// Twilio Media Streams as Twilio sends it: `audio/x-mulaw`, 8000 Hz, 160 bytes per 20 ms.
    #[default]
    Twilio,
    /// The same messages with `audio/L16` at 16000 Hz: base64 of 16-bit little-endian PCM,
    /// 320 samples = 640 bytes per 20 ms, both directions.
    L16Wideband,
}

impl AgentDialect {
    /// The codec order to answer offers with: wideband agents want G.722 first.
    pub fn codec_preference(self) -> CodecPreference {
        match self {
            AgentDialect::Twilio => CodecPreference::Narrowband,
            AgentDialect::L16Wideband => CodecPreference::Wideband,
        }
    }

    /// `start.mediaFormat.encoding`.
    pub fn encoding(self) -> &'static str {
        match self {
            AgentDialect::Twilio => "audio/x-mulaw",
            AgentDialect::L16Wideband => "audio/L16",
        }
    }

    /// `start.mediaFormat.sampleRate`.
    pub fn sample_rate(self) -> u32 {
        match self {
            AgentDialect::Twilio => RATE_8K as u32,
            AgentDialect::L16Wideband => RATE_16K as u32,
        }
    }

    /// Agent audio bytes per millisecond (bounds the playout backlog).
    pub fn bytes_per_ms(self) -> usize {
        match self {
            AgentDialect::Twilio => 8,
            AgentDialect::L16Wideband => 32,
        }
    }

    /// Bytes of one 20 ms agent frame: 160 (µ-law) or 640 (L16 at 16 kHz).
    pub fn frame_bytes(self) -> usize {
        self.bytes_per_ms() * 20
    }

    /// The byte that fills silence in this dialect's audio (µ-law 0xFF, L16 zero).
    pub fn silence(self) -> u8 {
        match self {
            AgentDialect::Twilio => ULAW_SILENCE,
            AgentDialect::L16Wideband => 0,
        }
    }

    /// True for an agent `media` payload we can play: L16 must be whole 16-bit samples.
    pub fn accepts_agent_payload(self, payload: &[u8]) -> bool {
        match self {
            AgentDialect::Twilio => true,
            AgentDialect::L16Wideband => payload.len().is_multiple_of(2),
        }
    }
}

/// One call's conversion between the caller's codec and the agent's dialect.
pub struct Transcoder {
    caller: Codec,
    dialect: AgentDialect,
    g722_decoder: G722Decoder,
    g722_encoder: G722Encoder,
    /// 8 → 16 kHz and 16 → 8 kHz, made when the pair first needs them (24 kB of filter each).
    upsampler: Option<BoxedResampler>,
    downsampler: Option<BoxedResampler>,
    /// Linear samples before and after resampling.
    pcm: Box<[i16]>,
    resampled: Box<[i16]>,
    /// Encoded output (agent bytes or caller payload).
    out: Vec<u8>,
}

impl std::fmt::Debug for Transcoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transcoder")
            .field("caller", &self.caller)
            .field("dialect", &self.dialect)
            .finish_non_exhaustive()
    }
}

impl Transcoder {
    /// Call when the bridge starts, with the negotiated codec and the agent's dialect.
    pub fn new(caller: Codec, dialect: AgentDialect) -> Transcoder {
        let mut transcoder = Transcoder {
            caller,
            dialect,
            g722_decoder: G722Decoder::new(),
            g722_encoder: G722Encoder::new(),
            upsampler: None,
            downsampler: None,
            pcm: vec![0; MAX_WIDE_SAMPLES].into_boxed_slice(),
            resampled: vec![0; MAX_WIDE_SAMPLES].into_boxed_slice(),
            out: Vec::with_capacity(2 * MAX_WIDE_SAMPLES),
        };
        transcoder.prepare_resamplers();
        transcoder
    }

    pub fn caller_codec(&self) -> Codec {
        self.caller
    }

    pub fn dialect(&self) -> AgentDialect {
        self.dialect
    }

    /// A re-INVITE changed the codec: fresh codec state (the old one describes another
    /// bitstream) and resampler history.
    pub fn set_caller_codec(&mut self, codec: Codec) {
        if codec == self.caller {
            return;
        }
        self.caller = codec;
        self.g722_decoder = G722Decoder::new();
        self.g722_encoder = G722Encoder::new();
        self.prepare_resamplers();
        for resampler in [&mut self.upsampler, &mut self.downsampler]
            .into_iter()
            .flatten()
        {
            resampler.reset();
        }
    }

    fn prepare_resamplers(&mut self) {
        let wide_caller = self.caller == Codec::G722;
        let wide_agent = self.dialect == AgentDialect::L16Wideband;
        if wide_caller != wide_agent {
            if self.upsampler.is_none() {
                self.upsampler = BoxedResampler::new(RATE_8K, RATE_16K).ok();
            }
            if self.downsampler.is_none() {
                self.downsampler = BoxedResampler::new(RATE_16K, RATE_8K).ok();
            }
        }
    }

    /// True for a caller audio payload we take: 1 to [`MAX_CALLER_PAYLOAD`] bytes. Any length
    /// in between is whole codewords for PCMU, PCMA and G.722 alike (one byte per RTP tick).
    pub fn accepts_caller_payload(payload: &[u8]) -> bool {
        (1..=MAX_CALLER_PAYLOAD).contains(&payload.len())
    }

    /// Caller audio (codec payload, at most [`MAX_CALLER_PAYLOAD`] bytes) → agent bytes.
    /// `None` for a payload [`Transcoder::accepts_caller_payload`] refuses.
    pub fn caller_to_agent<'a>(&'a mut self, payload: &'a [u8]) -> Option<&'a [u8]> {
        if !Transcoder::accepts_caller_payload(payload) {
            return None;
        }
        self.out.clear();
        match (self.caller, self.dialect) {
            (Codec::Pcmu, AgentDialect::Twilio) => return Some(payload),
            (Codec::Pcma, AgentDialect::Twilio) => {
                self.out
                    .extend(payload.iter().map(|b| g711::alaw_to_ulaw(*b)));
            }
            (Codec::G722, AgentDialect::Twilio) => {
                let wide = self.decode_g722(payload);
                let narrow = resample(
                    &mut self.downsampler,
                    &self.pcm[..wide],
                    &mut self.resampled,
                );
                self.out.extend(
                    self.resampled[..narrow]
                        .iter()
                        .map(|s| g711::linear_to_ulaw(*s)),
                );
            }
            (Codec::G722, AgentDialect::L16Wideband) => {
                let wide = self.decode_g722(payload);
                push_le(&mut self.out, &self.pcm[..wide]);
            }
            (narrow_codec, AgentDialect::L16Wideband) => {
                let decode = if narrow_codec == Codec::Pcma {
                    g711::alaw_to_linear
                } else {
                    g711::ulaw_to_linear
                };
                for (slot, byte) in self.pcm.iter_mut().zip(payload) {
                    *slot = decode(*byte);
                }
                let wide = resample(
                    &mut self.upsampler,
                    &self.pcm[..payload.len()],
                    &mut self.resampled,
                );
                push_le(&mut self.out, &self.resampled[..wide]);
            }
        }
        Some(&self.out)
    }

    /// One agent frame ([`AgentDialect::frame_bytes`], silence-padded) → one 20 ms caller
    /// payload ([`crate::rtp::FRAME_SAMPLES`] bytes for every codec).
    pub fn agent_to_caller<'a>(&'a mut self, frame: &'a [u8]) -> &'a [u8] {
        self.out.clear();
        let frame = &frame[..frame.len().min(self.dialect.frame_bytes())];
        match (self.caller, self.dialect) {
            (Codec::Pcmu, AgentDialect::Twilio) => return frame,
            (Codec::Pcma, AgentDialect::Twilio) => {
                self.out
                    .extend(frame.iter().map(|b| g711::ulaw_to_alaw(*b)));
            }
            (Codec::G722, AgentDialect::Twilio) => {
                for (slot, byte) in self.pcm.iter_mut().zip(frame) {
                    *slot = g711::ulaw_to_linear(*byte);
                }
                let wide = resample(
                    &mut self.upsampler,
                    &self.pcm[..frame.len()],
                    &mut self.resampled,
                );
                self.encode_g722(wide);
            }
            (Codec::G722, AgentDialect::L16Wideband) => {
                let wide = read_le(frame, &mut self.resampled);
                self.encode_g722(wide);
            }
            (narrow_codec, AgentDialect::L16Wideband) => {
                let wide = read_le(frame, &mut self.pcm);
                let narrow = resample(
                    &mut self.downsampler,
                    &self.pcm[..wide],
                    &mut self.resampled,
                );
                let encode = if narrow_codec == Codec::Pcma {
                    g711::linear_to_alaw
                } else {
                    g711::linear_to_ulaw
                };
                self.out
                    .extend(self.resampled[..narrow].iter().map(|s| encode(*s)));
            }
        }
        &self.out
    }

    /// Decodes G.722 into `pcm` (two 16 kHz samples per byte); returns the sample count.
    fn decode_g722(&mut self, payload: &[u8]) -> usize {
        // `pcm` holds two samples per byte of the largest payload taken, so this cannot fail.
        self.g722_decoder
            .decode_into(payload, &mut self.pcm)
            .unwrap_or(0)
    }

    /// Encodes `resampled[..samples]` (16 kHz) to G.722 into `out`.
    fn encode_g722(&mut self, samples: usize) {
        self.out.resize(samples / 2 + 1, 0);
        let written = self
            .g722_encoder
            .encode_into(&self.resampled[..samples], &mut self.out)
            .unwrap_or(0);
        self.out.truncate(written);
    }
}

/// Runs `input` through the resampler into `out`; returns the samples written. The buffers are
/// sized for the largest payload, so the resampler never finds `out` too small.
fn resample(resampler: &mut Option<BoxedResampler>, input: &[i16], out: &mut [i16]) -> usize {
    resampler
        .as_mut()
        .and_then(|r| r.resample_into(input, out).ok())
        .unwrap_or(0)
}

fn push_le(out: &mut Vec<u8>, samples: &[i16]) {
    for sample in samples {
        out.extend_from_slice(&sample.to_le_bytes());
    }
}

/// Little-endian 16-bit samples of `bytes` into `out` (a trailing odd byte is ignored);
/// returns the sample count.
fn read_le(bytes: &[u8], out: &mut [i16]) -> usize {
    let mut count = 0;
    for (slot, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *slot = i16::from_le_bytes([pair[0], pair[1]]);
        count += 1;
    }
    count
}

#[cfg(test)]
mod tests;
