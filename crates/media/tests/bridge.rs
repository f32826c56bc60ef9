//! The bridge against a real WebSocket agent server and real UDP sockets on loopback.
//!
//! Timing is only printed (jitter) or sanity-checked; every other assertion is about bytes,
//! counters and ordering.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use base64::Engine as _;
use futures_util::{SinkExt as _, StreamExt as _};
use rtp_rs::{RtpPacketBuilder, RtpReader, Seq};
use serde_json::{json, Value};
use switchboard_media::g711;
use switchboard_media::twilio::new_sid;
use switchboard_media::{
    connect_agent, negotiate, spawn_bridge, AgentTls, AllowedSources, BridgeConfig, BridgeHandle,
    CustomParameters, EndReason, IdleAudio, MediaError, StartParams, StreamIds,
};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// Another loopback address (all of 127.0.0.0/8 works on Linux): a host the call never
/// signalled, standing in for an attacker spraying the RTP port range.
const FOREIGN: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
const CALLER_SSRC: u32 = 0x1234_5678;
const WAIT: Duration = Duration::from_secs(3);
const TELEPHONE_EVENT_PT: u8 = 101;

type Agent = WebSocketStream<TcpStream>;

struct Call {
    agent: Agent,
    caller: UdpSocket,
    /// Where the caller sends its RTP (the bridge's socket).
    bridge_addr: SocketAddr,
    handle: BridgeHandle,
    ids: StreamIds,
    seq: u16,
}

/// TLS trust for `ws://` agents: never consulted, so no roots.
fn plain_ws() -> AgentTls {
    AgentTls::from_pem(b"").expect("empty trust store")
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn unb64(text: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .expect("base64 payload")
}

/// Bytes that exercise every code value, distinct per `salt`.
fn pattern(len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(37).wrapping_add(salt))
        .collect()
}

async fn start_call(payload_type: u8, cfg: BridgeConfig) -> Result<Call> {
    let listener = TcpListener::bind((LOOPBACK, 0)).await?;
    let url = format!("ws://{}/agent", listener.local_addr()?);
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        anyhow::Ok(tokio_tungstenite::accept_async(tcp).await?)
    });
    let caller = UdpSocket::bind((LOOPBACK, 0)).await?;
    let rtp = UdpSocket::bind((LOOPBACK, 0)).await?;
    let bridge_addr = rtp.local_addr()?;
    let encoding = if payload_type == 8 { "PCMA" } else { "PCMU" };
    let offer = format!(
        "v=0\r\no=caller 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {} RTP/AVP {payload_type} {TELEPHONE_EVENT_PT}\r\na=rtpmap:{payload_type} {encoding}/8000\r\n\
         a=rtpmap:{TELEPHONE_EVENT_PT} telephone-event/8000\r\na=ptime:20\r\n",
        caller.local_addr()?.port()
    );
    let (_answer, media) = negotiate(&offer, LOOPBACK, bridge_addr.port())?;
    let ids = StreamIds::generate(new_sid("AC"));
    let mut params = CustomParameters::new();
    params.insert("from_number", "+15550001111");
    params.insert("to_number", "+15550002222");
    let link = connect_agent(
        &url,
        StartParams {
            ids: ids.clone(),
            custom_parameters: params,
            dialect: switchboard_media::AgentDialect::Twilio,
        },
        WAIT,
        &plain_ws(),
    )
    .await?;
    let mut agent = server.await??;

    let connected = next_json(&mut agent).await?;
    assert_eq!(
        connected,
        json!({"event":"connected","protocol":"Call","version":"1.0.0"})
    );
    let start = next_json(&mut agent).await?;
    assert_eq!(start["event"], "start");
    assert_eq!(start["sequenceNumber"], "1");
    assert_eq!(start["streamSid"], ids.stream_sid.as_str());
    assert_eq!(start["start"]["callSid"], ids.call_sid.as_str());
    assert_eq!(
        start["start"]["customParameters"]["to_number"],
        "+15550002222"
    );

    let handle = spawn_bridge(rtp, media, link, cfg);
    Ok(Call {
        agent,
        caller,
        bridge_addr,
        handle,
        ids,
        seq: 1000,
    })
}

/// One RTP packet with the caller's SSRC.
fn rtp_packet(
    payload_type: u8,
    seq: u16,
    timestamp: u32,
    marked: bool,
    payload: &[u8],
) -> Result<Vec<u8>> {
    RtpPacketBuilder::new()
        .payload_type(payload_type)
        .sequence(Seq::from(seq))
        .timestamp(timestamp)
        .ssrc(CALLER_SSRC)
        .marked(marked)
        .payload(payload)
        .build()
        .map_err(|e| anyhow::anyhow!("{e:?}"))
}

fn quiet_config() -> BridgeConfig {
    BridgeConfig {
        idle_audio: IdleAudio::Nothing,
        ..BridgeConfig::default()
    }
}

/// The next text message from the bridge as JSON (skips pings).
async fn next_json(agent: &mut Agent) -> Result<Value> {
    loop {
        let message = tokio::time::timeout(WAIT, agent.next())
            .await
            .context("timed out waiting for a message from the bridge")?
            .context("bridge closed the WebSocket")??;
        match message {
            Message::Text(text) => return Ok(serde_json::from_str(text.as_str())?),
            Message::Close(_) => bail!("bridge sent close"),
            _ => {}
        }
    }
}

async fn agent_send(agent: &mut Agent, value: Value) -> Result<()> {
    agent.send(Message::text(value.to_string())).await?;
    Ok(())
}

impl Call {
    async fn send_rtp(
        &mut self,
        payload_type: u8,
        timestamp: u32,
        marked: bool,
        payload: &[u8],
    ) -> Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let packet = rtp_packet(payload_type, self.seq, timestamp, marked, payload)?;
        self.caller.send_to(&packet, self.bridge_addr).await?;
        Ok(())
    }

    async fn send_dtmf(
        &mut self,
        timestamp: u32,
        code: u8,
        end: bool,
        duration: u16,
    ) -> Result<()> {
        let [hi, lo] = duration.to_be_bytes();
        let flags = if end { 0x80 | 10 } else { 10 };
        self.send_rtp(
            TELEPHONE_EVENT_PT,
            timestamp,
            !end && duration <= 160,
            &[code, flags, hi, lo],
        )
        .await
    }

    /// The next RTP packet the caller receives: (seq, timestamp, marker, payload type, payload).
    async fn recv_rtp(&self) -> Result<(u16, u32, bool, u8, Vec<u8>)> {
        let mut buf = [0u8; 1500];
        let (len, _) = tokio::time::timeout(WAIT, self.caller.recv_from(&mut buf))
            .await
            .context("timed out waiting for RTP")??;
        let packet = RtpReader::new(&buf[..len]).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        Ok((
            u16::from(packet.sequence_number()),
            packet.timestamp(),
            packet.mark(),
            packet.payload_type(),
            packet.payload().to_vec(),
        ))
    }

    /// Packets already waiting at the caller, without blocking.
    fn drain_rtp(&self) -> usize {
        let mut buf = [0u8; 1500];
        let mut count = 0;
        while self.caller.try_recv_from(&mut buf).is_ok() {
            count += 1;
        }
        count
    }
}

#[tokio::test]
async fn caller_audio_reaches_the_agent_bit_exact() -> Result<()> {
    let mut call = start_call(0, quiet_config()).await?;
    let frames: Vec<Vec<u8>> = (0..50).map(|i| pattern(160, i as u8)).collect();
    for (i, frame) in frames.iter().enumerate() {
        call.send_rtp(0, 8000 + i as u32 * 160, i == 0, frame)
            .await?;
    }
    for (i, frame) in frames.iter().enumerate() {
        let media = next_json(&mut call.agent).await?;
        assert_eq!(media["event"], "media");
        assert_eq!(media["sequenceNumber"], (i + 2).to_string(), "start was 1");
        assert_eq!(media["streamSid"], call.ids.stream_sid.as_str());
        assert_eq!(media["media"]["track"], "inbound");
        assert_eq!(media["media"]["chunk"], (i + 1).to_string());
        assert_eq!(media["media"]["timestamp"], (i * 20).to_string());
        assert_eq!(
            unb64(media["media"]["payload"].as_str().unwrap_or_default()),
            *frame,
            "frame {i}"
        );
    }
    assert_eq!(
        call.handle
            .stats()
            .media_to_agent
            .load(std::sync::atomic::Ordering::Relaxed),
        50
    );
    Ok(())
}

#[tokio::test]
async fn pcma_caller_is_transcoded_both_ways() -> Result<()> {
    let mut call = start_call(8, quiet_config()).await?;
    let all_codes: Vec<u8> = (0..=255u8).chain(0..64).collect();
    call.send_rtp(8, 0, true, &all_codes[..160]).await?;
    call.send_rtp(8, 160, false, &all_codes[160..]).await?;
    let mut heard = Vec::new();
    for _ in 0..2 {
        let media = next_json(&mut call.agent).await?;
        heard.extend(unb64(
            media["media"]["payload"].as_str().unwrap_or_default(),
        ));
    }
    let expected: Vec<u8> = all_codes.iter().map(|a| g711::alaw_to_ulaw(*a)).collect();
    assert_eq!(heard, expected);
    // Spot check against the G.711 levels: A-law 0xAA is +32256, µ-law 0x80 is +32124 (its max).
    assert_eq!(heard[0xAA], 0x80);

    let ulaw = pattern(160, 9);
    agent_send(
        &mut call.agent,
        json!({"event":"media","streamSid":call.ids.stream_sid,"media":{"payload":b64(&ulaw)}}),
    )
    .await?;
    let (_, _, _, pt, payload) = call.recv_rtp().await?;
    assert_eq!(pt, 8);
    let expected: Vec<u8> = ulaw.iter().map(|u| g711::ulaw_to_alaw(*u)).collect();
    assert_eq!(payload, expected);
    Ok(())
}

#[tokio::test]
async fn agent_audio_is_paced_as_consecutive_rtp() -> Result<()> {
    let call = start_call(0, quiet_config()).await?;
    let mut call = call;
    const FRAMES: usize = 100;
    let audio = pattern(FRAMES * 160, 3);
    // One big burst, as TTS engines often send: the pacer must spread it over 2 s.
    agent_send(
        &mut call.agent,
        json!({"event":"media","streamSid":call.ids.stream_sid,"media":{"payload":b64(&audio)}}),
    )
    .await?;
    let mut received = Vec::new();
    let mut arrivals = Vec::new();
    let mut packets = Vec::new();
    while received.len() < audio.len() {
        let packet = call.recv_rtp().await?;
        arrivals.push(Instant::now());
        received.extend_from_slice(&packet.4);
        packets.push(packet);
    }
    assert_eq!(received, audio, "agent audio arrives bit-exact");
    assert!(packets[0].2, "marker on the first packet of the talkspurt");
    for pair in packets.windows(2) {
        assert_eq!(
            pair[1].0,
            pair[0].0.wrapping_add(1),
            "consecutive sequence numbers"
        );
        assert_eq!(
            pair[1].1,
            pair[0].1.wrapping_add(160),
            "timestamp +160 per frame"
        );
        assert!(!pair[1].2, "no marker inside a talkspurt");
        assert_eq!(pair[1].3, 0);
    }
    let intervals: Vec<f64> = arrivals
        .windows(2)
        .map(|w| w[1].duration_since(w[0]).as_secs_f64() * 1000.0)
        .collect();
    let mean = intervals.iter().sum::<f64>() / intervals.len() as f64;
    let jitter = intervals.iter().map(|i| (i - 20.0).abs()).sum::<f64>() / intervals.len() as f64;
    let worst = intervals
        .iter()
        .map(|i| (i - 20.0).abs())
        .fold(0.0, f64::max);
    println!(
        "pacing over {} packets: mean interval {mean:.3} ms, mean |interval-20ms| {jitter:.3} ms, worst {worst:.3} ms",
        intervals.len()
    );
    // Sanity only: timing belongs to the bench, not to pass/fail.
    assert!(jitter < 15.0, "mean jitter {jitter:.3} ms");
    Ok(())
}

#[tokio::test]
async fn silence_keeps_rtp_flowing_while_the_agent_is_quiet() -> Result<()> {
    let call = start_call(0, BridgeConfig::default()).await?;
    let first = call.recv_rtp().await?;
    let second = call.recv_rtp().await?;
    assert_eq!(first.4, vec![g711::ULAW_SILENCE; 160]);
    assert!(first.2, "first packet of the stream is marked");
    assert_eq!(second.0, first.0.wrapping_add(1));
    assert_eq!(second.1, first.1.wrapping_add(160));
    Ok(())
}

#[tokio::test]
async fn marks_echo_after_their_audio_and_clear_flushes() -> Result<()> {
    let mut call = start_call(0, quiet_config()).await?;
    let sid = call.ids.stream_sid.clone();
    // Nothing queued: echoed at once.
    agent_send(
        &mut call.agent,
        json!({"event":"mark","streamSid":sid,"mark":{"name":"idle"}}),
    )
    .await?;
    let echo = next_json(&mut call.agent).await?;
    assert_eq!(echo["event"], "mark");
    assert_eq!(echo["mark"]["name"], "idle");
    assert_eq!(echo["streamSid"], sid.as_str());

    // Ten frames, then a mark: the echo comes only after all ten were sent.
    agent_send(
        &mut call.agent,
        json!({"event":"media","streamSid":sid,"media":{"payload":b64(&pattern(1600, 1))}}),
    )
    .await?;
    agent_send(
        &mut call.agent,
        json!({"event":"mark","streamSid":sid,"mark":{"name":"after-ten"}}),
    )
    .await?;
    let echo = next_json(&mut call.agent).await?;
    assert_eq!(echo["mark"]["name"], "after-ten");
    assert_eq!(call.drain_rtp(), 10, "all ten frames left before the echo");

    // Ten seconds of audio, a mark, then clear (barge-in): the mark is echoed at once and
    // the rest of the audio is never sent.
    agent_send(
        &mut call.agent,
        json!({"event":"media","streamSid":sid,"media":{"payload":b64(&pattern(80_000, 2))}}),
    )
    .await?;
    agent_send(
        &mut call.agent,
        json!({"event":"mark","streamSid":sid,"mark":{"name":"long"}}),
    )
    .await?;
    let first = call.recv_rtp().await?;
    agent_send(&mut call.agent, json!({"event":"clear","streamSid":sid})).await?;
    let echo = next_json(&mut call.agent).await?;
    assert_eq!(echo["mark"]["name"], "long");
    let sent_before_clear = 1 + call.drain_rtp();
    assert!(
        sent_before_clear < 100,
        "{sent_before_clear} of 500 frames sent before clear"
    );
    let more = tokio::time::timeout(Duration::from_millis(200), call.recv_rtp()).await;
    assert!(more.is_err(), "audio kept flowing after clear: {more:?}");
    assert_eq!(first.4, pattern(80_000, 2)[..160].to_vec());
    Ok(())
}

#[tokio::test]
async fn each_dtmf_digit_is_reported_once() -> Result<()> {
    let mut call = start_call(0, quiet_config()).await?;
    // '5': start, two updates, end three times.
    for (duration, end) in [
        (160, false),
        (320, false),
        (480, false),
        (640, true),
        (640, true),
        (640, true),
    ] {
        call.send_dtmf(16_000, 5, end, duration).await?;
    }
    // '#': start lost, updates and ends only.
    for (duration, end) in [(320, false), (800, true), (800, true), (800, true)] {
        call.send_dtmf(24_000, 11, end, duration).await?;
    }
    // Audio afterwards: when it reaches the agent, every DTMF packet before it was processed.
    call.send_rtp(0, 32_000, true, &pattern(160, 7)).await?;
    let mut digits = Vec::new();
    loop {
        let message = next_json(&mut call.agent).await?;
        match message["event"].as_str() {
            Some("dtmf") => {
                assert_eq!(message["dtmf"]["track"], "inbound_track");
                assert_eq!(message["streamSid"], call.ids.stream_sid.as_str());
                digits.push(
                    message["dtmf"]["digit"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                );
            }
            Some("media") => break,
            other => bail!("unexpected {other:?}"),
        }
    }
    assert_eq!(digits, ["5", "#"]);
    Ok(())
}

#[tokio::test]
async fn hangup_sends_stop_closes_and_frees_the_port() -> Result<()> {
    let mut call = start_call(0, quiet_config()).await?;
    call.handle.hangup();
    let stop = next_json(&mut call.agent).await?;
    assert_eq!(stop["event"], "stop");
    assert_eq!(stop["streamSid"], call.ids.stream_sid.as_str());
    assert_eq!(stop["stop"]["callSid"], call.ids.call_sid.as_str());
    assert_eq!(stop["stop"]["accountSid"], call.ids.account_sid.as_str());
    // Then the closing handshake.
    let close = tokio::time::timeout(WAIT, call.agent.next()).await?;
    assert!(
        matches!(close, Some(Ok(Message::Close(_))) | None),
        "{close:?}"
    );
    assert_eq!(
        tokio::time::timeout(WAIT, call.handle.ended()).await?,
        EndReason::CallerHangup
    );
    UdpSocket::bind(call.bridge_addr)
        .await
        .context("RTP port still bound after the bridge ended")?;
    Ok(())
}

#[tokio::test]
async fn agent_close_ends_the_call() -> Result<()> {
    let mut call = start_call(0, quiet_config()).await?;
    call.agent.close(None).await?;
    assert_eq!(
        tokio::time::timeout(WAIT, call.handle.ended()).await?,
        EndReason::AgentClosed
    );
    Ok(())
}

#[tokio::test]
async fn agent_connection_loss_is_an_agent_error() -> Result<()> {
    let call = start_call(0, quiet_config()).await?;
    drop(call.agent);
    let reason = tokio::time::timeout(WAIT, call.handle.ended()).await?;
    assert!(matches!(reason, EndReason::AgentError(_)), "{reason:?}");
    Ok(())
}

#[tokio::test]
async fn silent_caller_times_out() -> Result<()> {
    let cfg = BridgeConfig {
        media_timeout: Duration::from_millis(300),
        ..quiet_config()
    };
    let mut call = start_call(0, cfg).await?;
    // Some audio first: the timeout counts from the last packet, not from the start.
    call.send_rtp(0, 0, true, &pattern(160, 0)).await?;
    assert_eq!(next_json(&mut call.agent).await?["event"], "media");
    assert_eq!(
        tokio::time::timeout(WAIT, call.handle.ended()).await?,
        EndReason::MediaTimeout
    );
    assert_eq!(next_json(&mut call.agent).await?["event"], "stop");
    Ok(())
}

fn counter(value: &AtomicU64) -> u64 {
    value.load(Ordering::Relaxed)
}

/// The agent says `frame`; returns once the bridge has it queued (it is paced out within 20 ms).
async fn agent_says(call: &mut Call, frame: &[u8]) -> Result<()> {
    let sid = call.ids.stream_sid.clone();
    agent_send(
        &mut call.agent,
        json!({"event":"media","streamSid":sid,"media":{"payload":b64(frame)}}),
    )
    .await
}

/// Nothing arrives at `socket` within a few frame times.
async fn assert_hears_nothing(socket: &UdpSocket) -> Result<()> {
    let mut buf = [0u8; 1500];
    let heard = tokio::time::timeout(Duration::from_millis(200), socket.recv_from(&mut buf)).await;
    assert!(heard.is_err(), "received {heard:?}");
    Ok(())
}

/// Sprays `count` packets from `from` to the bridge in perfect sequence with the caller's SSRC
/// (the strongest blind attack), `gap` apart.
async fn spray(call: &Call, from: &UdpSocket, count: u16, gap: Duration) -> Result<()> {
    for i in 0..count {
        let packet = rtp_packet(0, 40_000 + i, u32::from(i) * 160, false, &[0xEE; 160])?;
        from.send_to(&packet, call.bridge_addr).await?;
        if !gap.is_zero() {
            tokio::time::sleep(gap).await;
        }
    }
    Ok(())
}

#[tokio::test]
async fn rtp_relatches_to_a_nat_port_after_four_in_sequence_packets() -> Result<()> {
    let mut call = start_call(0, quiet_config()).await?;
    // Before any caller packet our media goes to the SDP address.
    agent_says(&mut call, &pattern(160, 4)).await?;
    assert_eq!(call.recv_rtp().await?.4, pattern(160, 4));

    // The caller is behind NAT: its packets come from another port than the SDP says.
    let signalled = std::mem::replace(&mut call.caller, UdpSocket::bind((LOOPBACK, 0)).await?);
    for i in 0..4u8 {
        call.send_rtp(0, u32::from(i) * 160, i == 0, &pattern(160, i))
            .await?;
    }
    let first = next_json(&mut call.agent).await?;
    assert_eq!(
        unb64(first["media"]["payload"].as_str().unwrap_or_default()),
        pattern(160, 3),
        "the three packets on probation never reach the agent"
    );
    assert_eq!(counter(&call.handle.stats().rtp_dropped_learning), 3);
    agent_says(&mut call, &pattern(160, 5)).await?;
    assert_eq!(call.recv_rtp().await?.4, pattern(160, 5));
    assert_hears_nothing(&signalled).await
}

#[tokio::test]
async fn a_foreign_spray_before_the_callers_first_packet_never_latches() -> Result<()> {
    let mut call = start_call(0, quiet_config()).await?;
    let attacker = UdpSocket::bind((FOREIGN, 0)).await?;
    spray(&call, &attacker, 50, Duration::ZERO).await?;

    agent_says(&mut call, &pattern(160, 1)).await?;
    assert_eq!(call.recv_rtp().await?.4, pattern(160, 1), "the SDP address");
    call.send_rtp(0, 0, true, &pattern(160, 2)).await?;
    let media = next_json(&mut call.agent).await?;
    assert_eq!(
        unb64(media["media"]["payload"].as_str().unwrap_or_default()),
        pattern(160, 2),
        "the agent's first audio is the caller's, not the spray"
    );
    assert_eq!(counter(&call.handle.stats().rtp_dropped_foreign), 50);
    assert_eq!(counter(&call.handle.stats().rtp_received), 1);
    agent_says(&mut call, &pattern(160, 3)).await?;
    assert_eq!(call.recv_rtp().await?.4, pattern(160, 3));
    assert_hears_nothing(&attacker).await
}

#[tokio::test]
async fn a_foreign_spray_during_caller_silence_never_latches() -> Result<()> {
    let mut call = start_call(0, quiet_config()).await?;
    for i in 0..5u8 {
        call.send_rtp(0, u32::from(i) * 160, i == 0, &pattern(160, i))
            .await?;
        next_json(&mut call.agent).await?;
    }
    // The caller goes quiet; the attacker sprays for longer than any silence-based relatch
    // timer (the old rule took over after 500 ms).
    let attacker = UdpSocket::bind((FOREIGN, 0)).await?;
    spray(&call, &attacker, 40, Duration::from_millis(20)).await?;
    agent_says(&mut call, &pattern(160, 9)).await?;
    assert_eq!(call.recv_rtp().await?.4, pattern(160, 9));

    call.send_rtp(0, 20_000, true, &pattern(160, 10)).await?;
    let media = next_json(&mut call.agent).await?;
    assert_eq!(
        unb64(media["media"]["payload"].as_str().unwrap_or_default()),
        pattern(160, 10),
        "nothing of the spray reached the agent"
    );
    assert_eq!(counter(&call.handle.stats().rtp_dropped_foreign), 40);
    assert_hears_nothing(&attacker).await
}

#[tokio::test]
async fn media_addresses_admit_a_carrier_media_host_after_probation() -> Result<()> {
    let cfg = BridgeConfig {
        allowed_sources: AllowedSources {
            signalling_ip: None,
            media_networks: vec!["127.0.0.2/32".parse()?],
        },
        ..quiet_config()
    };
    let mut call = start_call(0, cfg).await?;
    // The carrier's media host is not the one in the SDP, but inside its media_addresses.
    call.caller = UdpSocket::bind((FOREIGN, 0)).await?;
    for i in 0..4u8 {
        call.send_rtp(0, u32::from(i) * 160, i == 0, &pattern(160, i))
            .await?;
    }
    let media = next_json(&mut call.agent).await?;
    assert_eq!(
        unb64(media["media"]["payload"].as_str().unwrap_or_default()),
        pattern(160, 3)
    );
    assert_eq!(counter(&call.handle.stats().rtp_dropped_foreign), 0);
    agent_says(&mut call, &pattern(160, 7)).await?;
    assert_eq!(call.recv_rtp().await?.4, pattern(160, 7));
    Ok(())
}

#[tokio::test]
async fn hold_stops_our_audio_and_resume_restarts_it() -> Result<()> {
    let mut call = start_call(0, quiet_config()).await?;
    let sid = call.ids.stream_sid.clone();
    let offer = |direction: &str, port: u16| {
        format!(
            "v=0\r\no=caller 1 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
             m=audio {port} RTP/AVP 0\r\na={direction}\r\n"
        )
    };
    let port = call.caller.local_addr()?.port();
    let (_, held) = negotiate(&offer("sendonly", port), LOOPBACK, call.bridge_addr.port())?;
    call.handle.update_media(held);
    agent_send(
        &mut call.agent,
        json!({"event":"media","streamSid":sid,"media":{"payload":b64(&pattern(320, 1))}}),
    )
    .await?;
    agent_send(
        &mut call.agent,
        json!({"event":"mark","streamSid":sid,"mark":{"name":"held"}}),
    )
    .await?;
    // The queue still drains on time (marks keep working) but nothing goes to the caller.
    assert_eq!(next_json(&mut call.agent).await?["mark"]["name"], "held");
    assert_eq!(call.drain_rtp(), 0);

    let (_, resumed) = negotiate(&offer("sendrecv", port), LOOPBACK, call.bridge_addr.port())?;
    call.handle.update_media(resumed);
    agent_send(
        &mut call.agent,
        json!({"event":"media","streamSid":sid,"media":{"payload":b64(&pattern(160, 2))}}),
    )
    .await?;
    assert_eq!(call.recv_rtp().await?.4, pattern(160, 2));
    Ok(())
}

#[tokio::test]
async fn unreachable_agent_is_a_503() -> Result<()> {
    // A port with nothing listening.
    let unused = TcpListener::bind((LOOPBACK, 0)).await?;
    let url = format!("ws://{}/", unused.local_addr()?);
    drop(unused);
    let params = StartParams {
        ids: StreamIds::generate(new_sid("AC")),
        custom_parameters: CustomParameters::new(),
        dialect: switchboard_media::AgentDialect::Twilio,
    };
    let err = connect_agent(&url, params.clone(), WAIT, &plain_ws())
        .await
        .expect_err("nothing listens");
    assert!(matches!(err, MediaError::AgentConnect { .. }), "{err}");
    assert_eq!(err.sip_status(), 503);

    // Accepts TCP but never answers the handshake.
    let silent = TcpListener::bind((LOOPBACK, 0)).await?;
    let url = format!("ws://{}/", silent.local_addr()?);
    let err = connect_agent(&url, params, Duration::from_millis(200), &plain_ws())
        .await
        .expect_err("no handshake");
    assert!(
        matches!(
            err,
            MediaError::AgentTimeout {
                timeout_ms: 200,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(err.sip_status(), 503);
    drop(silent);
    Ok(())
}

/// An agent that stops reading: the bridge never waits on its socket. Caller audio beyond the
/// bounded queue is dropped oldest first and counted, the caller keeps getting RTP meanwhile,
/// and once the agent reads again it gets what was written before the stall, then the newest
/// frames, in order, and the call goes on.
#[tokio::test]
async fn a_stalled_agent_loses_the_oldest_audio_never_the_call() -> Result<()> {
    let mut call = start_call(0, BridgeConfig::default()).await?;
    // 120 ms packets (the longest the bridge takes): 6 `media` messages each, 27,000 frames
    // and 8 MB of JSON in all, more than loopback TCP buffers take (the send buffer grows up to
    // `tcp_wmem`'s 4 MB max).
    const PACKETS: u32 = 4500;
    let mut timestamp = 0;
    for i in 0..PACKETS {
        call.send_rtp(0, timestamp, false, &pattern(960, i as u8))
            .await?;
        timestamp += 960;
        if i % 10 == 0 {
            // Let the bridge drain its socket (one runtime thread in this test).
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let stats = call.handle.stats();
    let deadline = Instant::now() + WAIT;
    while stats.rtp_received.load(Ordering::Relaxed) < u64::from(PACKETS) * 9 / 10
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let dropped = stats.media_dropped_agent_busy.load(Ordering::Relaxed);
    assert!(
        dropped > 0,
        "loopback TCP buffers should fill before 27,000 frames"
    );
    // The caller's side never waited for the agent: silence frames keep coming.
    call.drain_rtp();
    call.recv_rtp().await?;
    assert!(call.handle.end_reason().is_none());

    // The agent reads again: chunks in order, a gap where the oldest were dropped, the newest
    // frame last.
    let produced = stats.media_to_agent.load(Ordering::Relaxed);
    let mut chunks = Vec::new();
    while chunks.last() != Some(&produced) {
        let message = next_json(&mut call.agent).await?;
        if message["event"] == "media" {
            chunks.push(
                message["media"]["chunk"]
                    .as_str()
                    .unwrap_or("0")
                    .parse::<u64>()?,
            );
        }
    }
    assert!(chunks.windows(2).all(|w| w[0] < w[1]), "in order");
    let dropped = stats.media_dropped_agent_busy.load(Ordering::Relaxed);
    assert_eq!(
        chunks.len() as u64 + dropped,
        produced,
        "every frame delivered or counted"
    );
    assert!(
        chunks.windows(2).any(|w| w[1] > w[0] + 1),
        "a gap of dropped audio"
    );
    assert!(call.handle.end_reason().is_none(), "the call goes on");
    Ok(())
}
