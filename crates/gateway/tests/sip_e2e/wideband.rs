//! Wideband end to end: SIPp as an HD carrier offering only G.722 and playing a pcap of G.722
//! RTP (a 1 kHz tone, encoded and written by this test), the real daemon, and an agent runtime
//! that checks what it hears: the tone, by Goertzel, in the dialect its app version asked for.

use std::path::Path;

use audio_codec::g722::G722Encoder;
use audio_codec::Encoder as _;
use base64::Engine as _;
use serde_json::{json, Value};
use switchboard_media::tone::{mean_power, sine, tone_power};

use super::harness::*;

const TONE_HZ: f64 = 1000.0;
/// 20 ms packets in the pcap: one second of tone.
const PACKETS: usize = 50;

/// Writes a classic pcap (Ethernet / IPv4 / UDP / RTP) of G.722 packets, PT 9, 20 ms apart.
/// SIPp's play_pcap_audio keeps the payloads and timing and sends them to the answer's
/// media address.
fn write_g722_pcap(path: &Path) -> std::io::Result<()> {
    let mut encoder = G722Encoder::new();
    let tone = sine(TONE_HZ, 16000, 0.4, PACKETS * 320);
    let mut pcap = Vec::new();
    // Global header: magic, v2.4, GMT offset 0, accuracy 0, snaplen, LINKTYPE_ETHERNET.
    pcap.extend(0xa1b2_c3d4u32.to_le_bytes());
    pcap.extend(2u16.to_le_bytes());
    pcap.extend(4u16.to_le_bytes());
    for field in [0u32, 0, 65535, 1] {
        pcap.extend(field.to_le_bytes());
    }
    for (i, frame) in tone.chunks(320).enumerate() {
        let payload = encoder.encode(frame);
        assert_eq!(payload.len(), 160);
        let mut rtp = vec![0x80, 9];
        rtp.extend((i as u16).to_be_bytes());
        rtp.extend((i as u32 * 160).to_be_bytes());
        rtp.extend(0x6722_0001u32.to_be_bytes());
        rtp.extend(&payload);
        let udp_len = 8 + rtp.len() as u16;
        let ip_len = 20 + udp_len;
        let mut ip = vec![
            0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0, 127, 0, 0, 1, 127, 0, 0, 1,
        ];
        ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
        let checksum = !ip
            .chunks(2)
            .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
            .fold(0u32, |sum, w| {
                let s = sum + w;
                (s & 0xffff) + (s >> 16)
            }) as u16;
        ip[10..12].copy_from_slice(&checksum.to_be_bytes());
        let mut frame_bytes = vec![0u8; 12];
        frame_bytes.extend([0x08, 0x00]);
        frame_bytes.extend(ip);
        frame_bytes.extend(40000u16.to_be_bytes());
        frame_bytes.extend(40002u16.to_be_bytes());
        frame_bytes.extend(udp_len.to_be_bytes());
        frame_bytes.extend([0, 0]);
        frame_bytes.extend(rtp);
        let micros = i as u32 * 20_000;
        for field in [
            1_700_000_000 + micros / 1_000_000,
            micros % 1_000_000,
            frame_bytes.len() as u32,
            frame_bytes.len() as u32,
        ] {
            pcap.extend(field.to_le_bytes());
        }
        pcap.extend(frame_bytes);
    }
    std::fs::write(path, pcap)
}

/// The G.722 scenario with its pcap, both in `dir`; returns the scenario's path.
fn g722_scenario(dir: &Path) -> std::path::PathBuf {
    let pcap = dir.join("g722_tone.pcap");
    write_g722_pcap(&pcap).expect("pcap written");
    let template = std::fs::read_to_string(scenario("uac_call_g722.xml")).expect("scenario");
    let path = dir.join("uac_call_g722.xml");
    std::fs::write(
        &path,
        template.replace("PCAP_FILE", &pcap.display().to_string()),
    )
    .expect("scenario written");
    path
}

/// The caller's audio as the agent got it: every `media` payload of the one call, and the
/// `start` message.
fn agent_heard(agent: &Agent) -> (Value, Vec<Vec<u8>>) {
    let calls = agent.calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    let start = calls[0]
        .messages
        .iter()
        .find(|m| m["event"] == "start")
        .cloned()
        .expect("start");
    let payloads = calls[0]
        .messages
        .iter()
        .filter(|m| m["event"] == "media")
        .map(|m| {
            base64::engine::general_purpose::STANDARD
                .decode(m["media"]["payload"].as_str().unwrap_or_default())
                .expect("base64")
        })
        .collect();
    (start, payloads)
}

/// Share of the power at the tone, past the first 100 ms.
fn tone_share(samples: &[i16], rate: u32) -> f64 {
    let settled = &samples[samples.len() / 10..];
    tone_power(settled, TONE_HZ, rate) / mean_power(settled).max(1.0)
}

async fn g722_call(dialect: &'static str) -> (Value, Vec<Vec<u8>>) {
    let fixture = Fixture::start(FixtureOptions::default()).await;
    let admin = fixture.daemon.admin();
    let url = fixture.agent.url();
    tokio::task::spawn_blocking(move || admin.put_app_version_in(APP, 1, &url, dialect, true))
        .await
        .expect("thread")
        .expect("app version in the dialect");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sipp = Sipp::new("uac_call_g722.xml", fixture.daemon.sip_udp);
    sipp.scenario = g722_scenario(dir.path());
    expect_sipp_ok(&fixture.daemon, sipp).await;
    let metrics = fixture.daemon.admin().metrics().expect("metrics");
    assert_eq!(
        metric(
            &metrics,
            "switchboard_rtp_dropped_total",
            "reason=\"bad_payload\""
        ),
        0.0
    );
    agent_heard(&fixture.agent)
}

/// Asserts the agent got (about) every packet as `frame_bytes` of audio, and that the
/// 1 kHz tone is what it heard.
fn assert_heard_the_tone(
    payloads: &[Vec<u8>],
    frame_bytes: usize,
    rate: u32,
    to_samples: impl Fn(&[u8]) -> Vec<i16>,
) {
    assert!(
        payloads.len() >= PACKETS * 9 / 10,
        "{} frames",
        payloads.len()
    );
    assert!(payloads.iter().all(|p| p.len() == frame_bytes));
    let share = tone_share(&to_samples(&payloads.concat()), rate);
    eprintln!(
        "{} frames, {share:.3} of the power at 1 kHz",
        payloads.len()
    );
    assert!(
        share > 0.8,
        "{share:.3} of the agent's audio is the 1 kHz tone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g722_caller_reaches_an_l16_agent_as_16khz_pcm() {
    if sipp_missing() {
        return;
    }
    let (start, payloads) = g722_call("l16-16k").await;
    assert_eq!(
        start["start"]["mediaFormat"],
        json!({"encoding":"audio/L16","sampleRate":16000,"channels":1})
    );
    // 320 little-endian samples per 20 ms.
    assert_heard_the_tone(&payloads, 640, 16000, |bytes| {
        bytes
            .chunks_exact(2)
            .map(|p| i16::from_le_bytes([p[0], p[1]]))
            .collect()
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g722_caller_reaches_a_twilio_agent_as_ulaw() {
    if sipp_missing() {
        return;
    }
    let (start, payloads) = g722_call("twilio").await;
    assert_eq!(start["start"]["mediaFormat"]["encoding"], "audio/x-mulaw");
    assert_heard_the_tone(&payloads, 160, 8000, |bytes| {
        bytes
            .iter()
            .map(|b| switchboard_media::g711::ulaw_to_linear(*b))
            .collect()
    });
}
