//! Wideband calls through the real bridge: a G.722 (or PCMU) caller on UDP, an agent reading
//! the `l16-16k` dialect (or Twilio µ-law) on a real WebSocket, a 1 kHz tone each way measured
//! with Goertzel on what arrives.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use audio_codec::g722::{G722Decoder, G722Encoder};
use audio_codec::{Decoder as _, Encoder as _};
use base64::Engine as _;
use futures_util::{SinkExt as _, StreamExt as _};
use rtp_rs::{RtpPacketBuilder, RtpReader, Seq};
use serde_json::{json, Value};
use switchboard_media::tone::{mean_power, sine, tone_power};
use switchboard_media::twilio::new_sid;
use switchboard_media::{
    connect_agent, g711, spawn_bridge, AgentDialect, AgentTls, BridgeConfig, BridgeHandle,
    CustomParameters, IdleAudio, StartParams, StreamIds,
};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const WAIT: Duration = Duration::from_secs(3);
/// 20 ms frames sent each way: one second of tone.
const FRAMES: usize = 50;
const TONE_HZ: f64 = 1000.0;

type Agent = WebSocketStream<TcpStream>;

struct WidebandCall {
    agent: Agent,
    caller: UdpSocket,
    bridge_addr: SocketAddr,
    handle: BridgeHandle,
    stream_sid: String,
    start: Value,
    payload_type: u8,
    /// Packets the caller has sent (sequence number and timestamp follow it).
    sent: u16,
}

/// A caller offering `formats` (with `rtpmaps`), bridged to an agent speaking `dialect`; the
/// SDP preference follows the dialect as the gateway sets it.
async fn wideband_call(
    formats: &str,
    rtpmaps: &str,
    dialect: AgentDialect,
) -> Result<WidebandCall> {
    let caller = UdpSocket::bind((LOOPBACK, 0)).await?;
    let rtp = UdpSocket::bind((LOOPBACK, 0)).await?;
    let bridge_addr = rtp.local_addr()?;
    let offer = format!(
        "v=0\r\no=caller 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {} RTP/AVP {formats}\r\n{rtpmaps}a=ptime:20\r\n",
        caller.local_addr()?.port()
    );
    let (_, media) = switchboard_media::SdpSession::new(LOOPBACK, bridge_addr.port())
        .with_preference(dialect.codec_preference())
        .answer(&offer)?;
    let ids = StreamIds::generate(new_sid("AC"));
    let params = StartParams {
        ids: ids.clone(),
        custom_parameters: CustomParameters::new(),
        dialect,
    };
    // The agent runtime: one WebSocket accepted while the gateway side connects.
    let listener = TcpListener::bind((LOOPBACK, 0)).await?;
    let url = format!("ws://{}/agent", listener.local_addr()?);
    let plain_ws = AgentTls::from_pem(b"")?;
    let accept = async {
        let (tcp, _) = listener.accept().await?;
        anyhow::Ok(tokio_tungstenite::accept_async(tcp).await?)
    };
    let connect = async { anyhow::Ok(connect_agent(&url, params, WAIT, &plain_ws).await?) };
    let (link, mut agent) = tokio::try_join!(connect, accept)?;
    next_event(&mut agent, "connected").await?;
    let start = next_event(&mut agent, "start").await?;
    let payload_type = media.payload_type;
    let cfg = BridgeConfig {
        idle_audio: IdleAudio::Nothing,
        ..BridgeConfig::default()
    };
    let handle = spawn_bridge(rtp, media, link, cfg);
    Ok(WidebandCall {
        agent,
        caller,
        bridge_addr,
        handle,
        stream_sid: ids.stream_sid,
        start,
        payload_type,
        sent: 0,
    })
}

/// The next message from the bridge naming `event`; others (marks, pings) are passed over.
async fn next_event(agent: &mut Agent, event: &str) -> Result<Value> {
    let wanted = async {
        while let Some(message) = agent.next().await {
            if let Message::Text(text) = message? {
                let value: Value = serde_json::from_str(text.as_str())?;
                if value["event"] == event {
                    return Ok(value);
                }
            }
        }
        bail!("the bridge closed the WebSocket before {event:?}")
    };
    tokio::time::timeout(WAIT, wanted)
        .await
        .with_context(|| format!("no {event:?} from the bridge"))?
}

fn payload_of(media: &Value) -> Vec<u8> {
    let text = media["media"]["payload"].as_str().unwrap_or_default();
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap_or_default()
}

fn le_samples(bytes: &[u8]) -> Vec<i16> {
    bytes
        .chunks_exact(2)
        .map(|p| i16::from_le_bytes([p[0], p[1]]))
        .collect()
}

/// Share of the signal's power in the tone, past the first 100 ms (filter and codec warm-up).
fn tone_share(samples: &[i16], rate: u32) -> f64 {
    let settled = &samples[samples.len() / 10..];
    tone_power(settled, TONE_HZ, rate) / mean_power(settled).max(1.0)
}

impl WidebandCall {
    /// Sends `frames` as consecutive 20 ms RTP packets.
    async fn send_caller_frames(&mut self, frames: &[Vec<u8>]) -> Result<()> {
        for payload in frames {
            self.sent += 1;
            let packet = RtpPacketBuilder::new()
                .payload_type(self.payload_type)
                .sequence(Seq::from(100 + self.sent))
                .timestamp(8000 + u32::from(self.sent) * 160)
                .ssrc(0xC0FF_EE00)
                .payload(payload)
                .build()
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            self.caller.send_to(&packet, self.bridge_addr).await?;
        }
        Ok(())
    }

    /// The agent's view of the caller: `FRAMES` media payloads, each checked for size.
    async fn agent_hears(&mut self, frame_bytes: usize) -> Result<Vec<u8>> {
        let mut audio = Vec::new();
        let mut first_ms = None;
        for i in 0..FRAMES {
            let media = next_event(&mut self.agent, "media").await?;
            let ms: u64 = media["media"]["timestamp"].as_str().unwrap_or("").parse()?;
            let first = *first_ms.get_or_insert(ms);
            assert_eq!(ms - first, i as u64 * 20, "20 ms apart");
            let payload = payload_of(&media);
            assert_eq!(payload.len(), frame_bytes, "frame {i}");
            audio.extend(payload);
        }
        Ok(audio)
    }

    async fn agent_says(&mut self, payload: &[u8]) -> Result<()> {
        let b64 = base64::engine::general_purpose::STANDARD.encode(payload);
        let message = json!({"event":"media","streamSid":self.stream_sid,"media":{"payload":b64}});
        self.agent.send(Message::text(message.to_string())).await?;
        Ok(())
    }

    /// `count` RTP payloads the caller receives, checking the payload type.
    async fn caller_hears(&self, count: usize) -> Result<Vec<Vec<u8>>> {
        let mut buf = [0u8; 1500];
        let mut payloads = Vec::new();
        while payloads.len() < count {
            let (len, _) = tokio::time::timeout(WAIT, self.caller.recv_from(&mut buf))
                .await
                .context("timed out waiting for RTP")??;
            let packet = RtpReader::new(&buf[..len]).map_err(|e| anyhow::anyhow!("{e:?}"))?;
            assert_eq!(packet.payload_type(), self.payload_type);
            payloads.push(packet.payload().to_vec());
        }
        Ok(payloads)
    }
}

fn g722_tone_frames() -> Vec<Vec<u8>> {
    let mut encoder = G722Encoder::new();
    sine(TONE_HZ, 16000, 0.4, FRAMES * 320)
        .chunks(320)
        .map(|frame| encoder.encode(frame))
        .collect()
}

#[tokio::test]
async fn g722_caller_and_l16_agent_hear_each_others_tone() -> Result<()> {
    let mut call = wideband_call(
        "0 9 101",
        "a=rtpmap:9 G722/8000\r\na=rtpmap:101 telephone-event/8000\r\n",
        AgentDialect::L16Wideband,
    )
    .await?;
    assert_eq!(call.payload_type, 9, "a wideband agent takes G.722 first");
    assert_eq!(
        call.start["start"]["mediaFormat"],
        json!({"encoding":"audio/L16","sampleRate":16000,"channels":1})
    );

    call.send_caller_frames(&g722_tone_frames()).await?;
    let heard = le_samples(&call.agent_hears(640).await?);
    let share = tone_share(&heard, 16000);
    assert!(share > 0.9, "agent got {share:.3} of its power at 1 kHz");

    // The agent answers with 16 kHz L16 frames; one odd-length frame is dropped and counted.
    call.agent_says(&[1, 2, 3]).await?;
    for frame in sine(TONE_HZ, 16000, 0.4, FRAMES * 320).chunks(320) {
        let bytes: Vec<u8> = frame.iter().flat_map(|s| s.to_le_bytes()).collect();
        call.agent_says(&bytes).await?;
    }
    let mut decoder = G722Decoder::new();
    let mut caller_audio = Vec::new();
    for payload in call.caller_hears(FRAMES).await? {
        assert_eq!(payload.len(), 160, "20 ms of G.722");
        caller_audio.extend(decoder.decode(&payload));
    }
    let share = tone_share(&caller_audio, 16000);
    assert!(share > 0.9, "caller got {share:.3} of its power at 1 kHz");
    let stats = call.handle.stats();
    assert_eq!(stats.agent_audio_malformed.load(Ordering::Relaxed), 1);
    assert_eq!(stats.bad_agent_messages.load(Ordering::Relaxed), 0);
    Ok(())
}

#[tokio::test]
async fn pcmu_caller_is_upsampled_for_an_l16_agent() -> Result<()> {
    let mut call = wideband_call("0 8", "", AgentDialect::L16Wideband).await?;
    assert_eq!(call.payload_type, 0);
    let frames: Vec<Vec<u8>> = sine(TONE_HZ, 8000, 0.4, FRAMES * 160)
        .chunks(160)
        .map(|f| f.iter().map(|s| g711::linear_to_ulaw(*s)).collect())
        .collect();
    call.send_caller_frames(&frames).await?;
    let heard = le_samples(&call.agent_hears(640).await?);
    assert!(tone_share(&heard, 16000) > 0.9);

    for frame in sine(TONE_HZ, 16000, 0.4, FRAMES * 320).chunks(320) {
        let bytes: Vec<u8> = frame.iter().flat_map(|s| s.to_le_bytes()).collect();
        call.agent_says(&bytes).await?;
    }
    let narrow: Vec<i16> = call
        .caller_hears(FRAMES)
        .await?
        .concat()
        .iter()
        .map(|b| g711::ulaw_to_linear(*b))
        .collect();
    assert_eq!(narrow.len(), FRAMES * 160);
    assert!(tone_share(&narrow, 8000) > 0.9);
    Ok(())
}

#[tokio::test]
async fn g722_caller_is_transcoded_to_ulaw_for_a_twilio_agent() -> Result<()> {
    // G.722 is all the caller offers, so even a µ-law agent takes it.
    let mut call = wideband_call("9", "", AgentDialect::Twilio).await?;
    assert_eq!(call.payload_type, 9);
    assert_eq!(
        call.start["start"]["mediaFormat"]["encoding"],
        "audio/x-mulaw"
    );
    // A payload of the wrong length (empty) is dropped and counted, not passed on.
    call.send_caller_frames(&[Vec::new()]).await?;
    call.send_caller_frames(&g722_tone_frames()).await?;
    let heard: Vec<i16> = call
        .agent_hears(160)
        .await?
        .iter()
        .map(|b| g711::ulaw_to_linear(*b))
        .collect();
    assert!(tone_share(&heard, 8000) > 0.9);
    assert_eq!(
        call.handle
            .stats()
            .rtp_dropped_bad_payload
            .load(Ordering::Relaxed),
        1
    );
    // And back: µ-law from the agent reaches the caller as G.722.
    for frame in sine(TONE_HZ, 8000, 0.4, FRAMES * 160).chunks(160) {
        let ulaw: Vec<u8> = frame.iter().map(|s| g711::linear_to_ulaw(*s)).collect();
        call.agent_says(&ulaw).await?;
    }
    let mut decoder = G722Decoder::new();
    let wide: Vec<i16> = call
        .caller_hears(FRAMES)
        .await?
        .iter()
        .flat_map(|p| decoder.decode(p))
        .collect();
    assert!(tone_share(&wide, 16000) > 0.9);
    Ok(())
}
