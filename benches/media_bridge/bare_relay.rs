//! The bare relay: what any RTP <-> WebSocket bridge must do and nothing more (one UDP receive
//! and one WebSocket message per frame each way, base64 included; no pacing, framing, marks,
//! DTMF or strict RTP). The floor the bridge's cost is compared against.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Result;
use base64::Engine as _;
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::net::UdpSocket;
use tokio_tungstenite::tungstenite::Message;

use super::PAYLOAD;

/// Packet counters of the baseline relays.
#[derive(Default)]
pub struct RelayCounters {
    pub rtp_in: AtomicU64,
    pub rtp_out: AtomicU64,
}

/// The baseline: caller RTP → `media` JSON at once, agent `media` → RTP at once.
pub async fn raw_relay(
    socket: UdpSocket,
    caller: SocketAddr,
    agent_url: String,
    counters: Arc<RelayCounters>,
) -> Result<()> {
    let (mut ws, _) =
        tokio_tungstenite::connect_async_with_config(agent_url.as_str(), None, true).await?;
    let engine = base64::engine::general_purpose::STANDARD;
    let mut buf = [0u8; 1500];
    let mut packet = [0u8; 12 + PAYLOAD];
    packet[0] = 0x80;
    let mut seq: u16 = 0;
    loop {
        tokio::select! {
            received = socket.recv_from(&mut buf) => {
                let Ok((len, _)) = received else { continue };
                if len <= 12 { continue }
                counters.rtp_in.fetch_add(1, Ordering::Relaxed);
                let mut text = String::with_capacity(300);
                text.push_str("{\"event\":\"media\",\"media\":{\"payload\":\"");
                engine.encode_string(&buf[12..len], &mut text);
                text.push_str("\"}}");
                ws.send(Message::text(text)).await?;
            }
            message = ws.next() => {
                let Some(Ok(Message::Text(text))) = message else { return Ok(()) };
                let payload = text.as_str().split("\"payload\":\"").nth(1).unwrap_or_default();
                let payload = payload.split('"').next().unwrap_or_default();
                let Ok(bytes) = engine.decode(payload) else { continue };
                let len = bytes.len().min(PAYLOAD);
                seq = seq.wrapping_add(1);
                packet[2..4].copy_from_slice(&seq.to_be_bytes());
                packet[12..12 + len].copy_from_slice(&bytes[..len]);
                if socket.try_send_to(&packet[..12 + len], caller).is_ok() {
                    counters.rtp_out.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}
