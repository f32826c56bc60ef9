//! Audio-quality tests on sines: what reaches the far side, measured with Goertzel.

use super::*;
use crate::tone::{mean_power, sine, tone_power};

const FRAME_8K: usize = 160;
const FRAME_16K: usize = 320;

fn le_bytes(samples: &[i16]) -> Vec<u8> {
    samples.iter().flat_map(|s| s.to_le_bytes()).collect()
}

fn from_le(bytes: &[u8]) -> Vec<i16> {
    bytes
        .chunks_exact(2)
        .map(|p| i16::from_le_bytes([p[0], p[1]]))
        .collect()
}

/// Encodes `pcm16k` to G.722 frame by frame as a caller would send it.
fn g722_frames(pcm16k: &[i16]) -> Vec<Vec<u8>> {
    let mut encoder = G722Encoder::new();
    pcm16k
        .chunks(FRAME_16K)
        .map(|frame| encoder.encode(frame))
        .collect()
}

#[test]
fn g722_round_trip_keeps_a_sine_with_good_snr() {
    let input = sine(1000.0, 16000, 0.5, 16000);
    let mut caller = Transcoder::new(Codec::G722, AgentDialect::L16Wideband);
    let mut decoded = Vec::new();
    for frame in g722_frames(&input) {
        assert_eq!(frame.len(), FRAME_8K, "20 ms of G.722 is 160 bytes");
        decoded.extend(from_le(caller.caller_to_agent(&frame).unwrap()));
    }
    assert_eq!(decoded.len(), input.len());
    // The codec's QMF delays the signal by a few samples: compare at the best lag.
    let skip = 800;
    let (best_lag, noise) = (0..64)
        .map(|lag| {
            let noise: f64 = (skip..input.len() - 64)
                .map(|i| (f64::from(decoded[i + lag]) - f64::from(input[i])).powi(2))
                .sum();
            (lag, noise)
        })
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap();
    let signal: f64 = input[skip..input.len() - 64]
        .iter()
        .map(|s| f64::from(*s).powi(2))
        .sum();
    let snr_db = 10.0 * (signal / noise).log10();
    eprintln!("G.722 round trip: SNR {snr_db:.1} dB at lag {best_lag}");
    assert!(snr_db > 20.0, "SNR {snr_db:.1} dB at lag {best_lag}");
}

#[test]
fn downsampling_to_8k_keeps_1khz_and_rejects_6khz() {
    // A wideband agent's audio to a PCMU caller: 16 → 8 kHz, then µ-law.
    let measure = |freq: f64| {
        let input = sine(freq, 16000, 0.5, 16000);
        let mut t = Transcoder::new(Codec::Pcmu, AgentDialect::L16Wideband);
        let mut narrow = Vec::new();
        for frame in input.chunks(FRAME_16K) {
            let frame = le_bytes(frame);
            let payload = t.agent_to_caller(&frame);
            assert_eq!(payload.len(), FRAME_8K);
            narrow.extend(payload.iter().map(|b| g711::ulaw_to_linear(*b)));
        }
        (mean_power(&input), narrow)
    };
    let (in_power, kept) = measure(1000.0);
    let kept = &kept[800..];
    let ratio = tone_power(kept, 1000.0, 8000) / in_power;
    assert!((0.8..1.2).contains(&ratio), "1 kHz kept at {ratio:.3}");

    let (in_power, rejected) = measure(6000.0);
    // Sample dropping would fold 6 kHz onto 2 kHz at full power.
    let rejected = &rejected[800..];
    let aliased_db = 10.0 * (tone_power(rejected, 2000.0, 8000) / in_power).log10();
    let total_db = 10.0 * (mean_power(rejected) / in_power).log10();
    eprintln!("16 -> 8 kHz: 1 kHz kept at {ratio:.3}, 6 kHz alias {aliased_db:.1} dB, residue {total_db:.1} dB");
    assert!(
        aliased_db < -35.0,
        "6 kHz aliased to 2 kHz at {aliased_db:.1} dB"
    );
    assert!(
        total_db < -30.0,
        "6 kHz left {total_db:.1} dB in 8 kHz audio"
    );
}

#[test]
fn g722_caller_to_ulaw_agent_filters_before_decimating() {
    let measure = |freq: f64| {
        let input = sine(freq, 16000, 0.5, 16000);
        let mut t = Transcoder::new(Codec::G722, AgentDialect::Twilio);
        let mut narrow = Vec::new();
        for frame in g722_frames(&input) {
            let ulaw = t.caller_to_agent(&frame).unwrap();
            assert_eq!(ulaw.len(), FRAME_8K);
            narrow.extend(ulaw.iter().map(|b| g711::ulaw_to_linear(*b)));
        }
        (mean_power(&input), narrow[800..].to_vec())
    };
    let (in_power, kept) = measure(1000.0);
    let ratio = tone_power(&kept, 1000.0, 8000) / in_power;
    assert!((0.7..1.3).contains(&ratio), "1 kHz kept at {ratio:.3}");
    let (in_power, rejected) = measure(6000.0);
    let total_db = 10.0 * (mean_power(&rejected) / in_power).log10();
    assert!(total_db < -30.0, "6 kHz left {total_db:.1} dB");
}

#[test]
fn narrowband_callers_are_upsampled_for_wideband_agents_and_back() {
    for codec in [Codec::Pcmu, Codec::Pcma] {
        let input = sine(1000.0, 8000, 0.5, 8000);
        let encode = match codec {
            Codec::Pcma => g711::linear_to_alaw,
            _ => g711::linear_to_ulaw,
        };
        let mut t = Transcoder::new(codec, AgentDialect::L16Wideband);
        let mut wide = Vec::new();
        for frame in input.chunks(FRAME_8K) {
            let payload: Vec<u8> = frame.iter().map(|s| encode(*s)).collect();
            let agent = t.caller_to_agent(&payload).unwrap();
            assert_eq!(agent.len(), 640, "{codec:?}: 320 samples of L16 per 20 ms");
            wide.extend(from_le(agent));
        }
        let ratio = tone_power(&wide[1600..], 1000.0, 16000) / mean_power(&input);
        assert!(
            (0.8..1.2).contains(&ratio),
            "{codec:?}: 1 kHz at {ratio:.3}"
        );
    }
}

#[test]
fn g711_to_twilio_is_unchanged_or_one_table() {
    let ulaw: Vec<u8> = (0..=255).collect();
    let mut t = Transcoder::new(Codec::Pcmu, AgentDialect::Twilio);
    assert_eq!(t.caller_to_agent(&ulaw[..160]).unwrap(), &ulaw[..160]);
    assert_eq!(t.agent_to_caller(&ulaw[..160]), &ulaw[..160]);
    let mut t = Transcoder::new(Codec::Pcma, AgentDialect::Twilio);
    let alaw: Vec<u8> = ulaw[..160].iter().map(|b| g711::ulaw_to_alaw(*b)).collect();
    assert_eq!(t.agent_to_caller(&ulaw[..160]), &alaw[..]);
    assert_eq!(
        t.agent_to_caller(&[ULAW_SILENCE; 160]),
        &[g711::ALAW_SILENCE; 160]
    );
}

#[test]
fn bad_payloads_are_refused_not_panicked_on() {
    for codec in [Codec::Pcmu, Codec::Pcma, Codec::G722] {
        for dialect in [AgentDialect::Twilio, AgentDialect::L16Wideband] {
            let mut t = Transcoder::new(codec, dialect);
            assert!(t.caller_to_agent(&[]).is_none(), "{codec:?} {dialect:?}");
            assert!(t
                .caller_to_agent(&vec![0x55; MAX_CALLER_PAYLOAD + 1])
                .is_none());
            // Odd sizes (10 ms, one byte, the largest) all convert.
            for len in [1, 80, 161, MAX_CALLER_PAYLOAD] {
                let out = t.caller_to_agent(&vec![0x55; len]).unwrap().len();
                let per_tick = if dialect == AgentDialect::Twilio {
                    1
                } else {
                    4
                };
                assert_eq!(out, len * per_tick, "{codec:?} {dialect:?} {len}");
            }
            // A short or odd agent frame never panics and still gives a payload.
            assert!(t.agent_to_caller(&[1, 2, 3]).len() <= 3);
            assert_eq!(t.agent_to_caller(&vec![0; 4096]).len(), FRAME_8K);
        }
    }
    assert!(!AgentDialect::L16Wideband.accepts_agent_payload(&[0; 641]));
    assert!(AgentDialect::L16Wideband.accepts_agent_payload(&[0; 640]));
    assert!(AgentDialect::Twilio.accepts_agent_payload(&[0; 161]));
}

#[test]
fn a_codec_change_mid_call_switches_conversion() {
    let mut t = Transcoder::new(Codec::Pcmu, AgentDialect::L16Wideband);
    assert_eq!(t.agent_to_caller(&[0; 640]).len(), FRAME_8K);
    t.set_caller_codec(Codec::G722);
    assert_eq!(t.caller_codec(), Codec::G722);
    assert_eq!(t.caller_to_agent(&[0x55; 160]).unwrap().len(), 640);
    assert_eq!(t.agent_to_caller(&[0; 640]).len(), FRAME_8K);
}
