//! The bridge on an SRTP call, against a real WebSocket agent and UDP on loopback: the caller
//! side protects with the key from its offer, the bridge answers with its own key; audio must
//! cross both ways bit-exact, and forged, replayed or clear packets must be dropped and counted.

use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context as _, Result};
use base64::Engine as _;
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{json, Value};
use switchboard_media::rtp::{RtpSender, MAX_PACKET};
use switchboard_media::sdp::{CryptoSuite, SrtpKey, SrtpParams};
use switchboard_media::srtp::{SrtpStream, Unprotected};
use switchboard_media::twilio::new_sid;
use switchboard_media::{
    connect_agent, negotiate, spawn_bridge, AgentTls, BridgeConfig, CustomParameters, IdleAudio,
    StartParams, StreamIds,
};
use tokio::net::{TcpListener, UdpSocket};
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = Duration::from_secs(3);

fn frame(index: u8) -> Vec<u8> {
    (0..160u8)
        .map(|i| i.wrapping_mul(7).wrapping_add(index.wrapping_mul(31)) % 255)
        .collect()
}

#[tokio::test]
async fn srtp_audio_crosses_both_ways_and_bad_packets_are_counted() -> Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("ws://{}/agent", listener.local_addr()?);
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        anyhow::Ok(tokio_tungstenite::accept_async(tcp).await?)
    });
    let caller = UdpSocket::bind("127.0.0.1:0").await?;
    let rtp = UdpSocket::bind("127.0.0.1:0").await?;
    let bridge_addr = rtp.local_addr()?;
    let caller_key = SrtpKey::random();
    let offer = format!(
        "v=0\r\no=c 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio {} RTP/SAVP 0\r\na=crypto:3 AES_CM_128_HMAC_SHA1_32 inline:{}\r\n",
        caller.local_addr()?.port(),
        caller_key.to_base64()
    );
    let (answer, media) = negotiate(&offer, "127.0.0.1".parse()?, bridge_addr.port())?;
    let keys = media.srtp.clone().context("SRTP negotiated")?;
    assert!(answer.as_str().contains(&format!(
        "a=crypto:3 AES_CM_128_HMAC_SHA1_32 inline:{}",
        keys.local.to_base64()
    )));
    // The caller's view: it sends with its key and receives with ours.
    let mut caller_srtp = SrtpStream::new(&SrtpParams {
        suite: CryptoSuite::AesCm128HmacSha1_32,
        tag: 3,
        remote: keys.local.clone(),
        local: caller_key,
    })?;

    let params = StartParams {
        ids: StreamIds::generate(new_sid("AC")),
        custom_parameters: CustomParameters::new(),
        dialect: switchboard_media::AgentDialect::Twilio,
    };
    let link = connect_agent(&url, params, WAIT, &AgentTls::from_pem(b"")?).await?;
    let mut agent = server.await??;
    let cfg = BridgeConfig {
        idle_audio: IdleAudio::Nothing,
        ..BridgeConfig::default()
    };
    let handle = spawn_bridge(rtp, media, link, cfg);
    let mut stream_sid = String::new();
    for _ in 0..2 {
        let start: Value = serde_json::from_str(&next_text(&mut agent).await?)?;
        if start["event"] == "start" {
            stream_sid = start["streamSid"].as_str().unwrap_or_default().to_owned();
        }
    }

    // Caller → agent: 5 frames, the third sent twice (replay), a forged one and a clear one.
    let mut sender = RtpSender::with_initial(0x0102_0304, 500, 0);
    for i in 0..5u8 {
        let mut buf = [0u8; MAX_PACKET];
        let len = sender
            .tick(Some(&frame(i)), true, 0, &mut buf)
            .context("packet")?;
        let wire = caller_srtp.protect(&buf[..len])?;
        if i == 1 {
            let mut forged = wire.to_vec();
            forged[15] ^= 0x80;
            caller.send_to(&forged, bridge_addr).await?;
            caller.send_to(&buf[..len], bridge_addr).await?; // clear RTP: no tag at all
        }
        caller.send_to(&wire, bridge_addr).await?;
        if i == 2 {
            caller.send_to(&wire, bridge_addr).await?;
        }
    }
    let mut heard = Vec::new();
    while heard.len() < 5 * 160 {
        let event: Value = serde_json::from_str(&next_text(&mut agent).await?)?;
        if event["event"] == "media" {
            let payload = event["media"]["payload"].as_str().unwrap_or_default();
            heard.extend(base64::engine::general_purpose::STANDARD.decode(payload)?);
        }
    }
    let sent: Vec<u8> = (0..5).flat_map(frame).collect();
    assert!(heard == sent, "the agent heard something else");
    let stats = handle.stats();
    assert_eq!(stats.rtp_dropped_replayed.load(Ordering::Relaxed), 1);
    assert_eq!(stats.rtp_dropped_unauthenticated.load(Ordering::Relaxed), 2);

    // Agent → caller: one frame of agent audio comes back SRTP, decryptable with our key.
    let spoken = frame(99);
    let media = json!({"event": "media", "streamSid": stream_sid,
        "media": {"payload": base64::engine::general_purpose::STANDARD.encode(&spoken)}});
    agent.send(Message::text(media.to_string())).await?;
    let mut buf = [0u8; 2048];
    let (len, _) = tokio::time::timeout(WAIT, caller.recv_from(&mut buf)).await??;
    assert_eq!(len, 12 + 160 + 4, "RTP header, frame, 32-bit tag");
    assert!(
        !buf[..len].windows(16).any(|w| w == &spoken[..16]),
        "clear audio on the wire"
    );
    match caller_srtp.unprotect(&buf[..len]) {
        Ok(Unprotected::Rtp(clear)) => assert_eq!(&clear[12..], &spoken[..]),
        other => panic!("undecryptable: {other:?}"),
    }
    handle.hangup();
    Ok(())
}

async fn next_text(
    agent: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
) -> Result<String> {
    loop {
        match tokio::time::timeout(WAIT, agent.next()).await? {
            Some(Ok(Message::Text(text))) => return Ok(text.to_string()),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => anyhow::bail!("agent socket closed"),
        }
    }
}
