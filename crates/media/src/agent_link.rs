//! The agent runtime's WebSocket before a call is answered: [`connect_agent`] opens it (TLS
//! verified for `wss://`) and sends `connected` and `start`; the [`AgentLink`] it returns is
//! handed to [`crate::spawn_bridge`] once the call is answered, or [`AgentLink::abandon`]ed.

use std::time::Duration;

use futures_util::SinkExt as _;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::agent_tls::AgentTls;
use crate::transcode::AgentDialect;
use crate::twilio::{CustomParameters, Outbound, StreamIds};
use crate::MediaError;

/// Largest WebSocket message accepted from the agent (a 60 s burst in base64 is ~640 kB).
const MAX_AGENT_MESSAGE: usize = 1 << 20;
/// Initial receive buffer per agent socket. tungstenite's default (128 KiB, allocated up front
/// and touched as reads walk through it) would cost 256 MB at 2,000 calls; agent messages are
/// ~300 bytes and the buffer grows for the odd large one.
const READ_BUFFER: usize = 4096;
/// How long the closing handshake with the agent may take once the call is over.
pub(crate) const AGENT_CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

pub(crate) type AgentSocket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What the `start` message says about the call.
#[derive(Debug, Clone)]
pub struct StartParams {
    pub ids: StreamIds,
    pub custom_parameters: CustomParameters,
    /// The app version's dialect: `start.mediaFormat` and the audio of every `media` message.
    pub dialect: AgentDialect,
}

/// An open WebSocket to the agent runtime that has received `connected` and `start`.
#[derive(Debug)]
pub struct AgentLink {
    pub(crate) ws: AgentSocket,
    pub(crate) outbound: Outbound,
    url: String,
}

impl AgentLink {
    pub fn ids(&self) -> &StreamIds {
        self.outbound.ids()
    }

    pub fn dialect(&self) -> AgentDialect {
        self.outbound.dialect()
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The call ended before media started (CANCEL, failed answer): tell the agent with
    /// `stop` and close the socket politely.
    pub async fn abandon(mut self) {
        let stop = self.outbound.stop();
        let _ = tokio::time::timeout(AGENT_CLOSE_TIMEOUT, async {
            let _ = self.ws.send(Message::text(stop)).await;
            let _ = self.ws.close(None).await;
        })
        .await;
    }
}

/// Opens the WebSocket to `url` and sends `connected` and `start`, all within `timeout`.
/// Call this before answering the INVITE: an error maps to 503 ([`MediaError::sip_status`]).
/// `wss://` URLs are verified with `tls` (chain and host name); `ws://` ignores it.
pub async fn connect_agent(
    url: &str,
    params: StartParams,
    timeout: Duration,
    tls: &AgentTls,
) -> Result<AgentLink, MediaError> {
    let connect_error = |e: tokio_tungstenite::tungstenite::Error| MediaError::AgentConnect {
        url: url.to_owned(),
        reason: e.to_string(),
    };
    let handshake = async {
        let config = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER)
            .max_message_size(Some(MAX_AGENT_MESSAGE))
            .max_frame_size(Some(MAX_AGENT_MESSAGE));
        // Nagle off: every 20 ms frame should leave at once.
        let (mut ws, _response) = tokio_tungstenite::connect_async_tls_with_config(
            url,
            Some(config),
            true,
            Some(tls.connector()),
        )
        .await
        .map_err(connect_error)?;
        let mut outbound = Outbound::new(params.ids).with_dialect(params.dialect);
        ws.feed(Message::text(outbound.connected()))
            .await
            .map_err(connect_error)?;
        ws.feed(Message::text(outbound.start(&params.custom_parameters)))
            .await
            .map_err(connect_error)?;
        ws.flush().await.map_err(connect_error)?;
        Ok(AgentLink {
            ws,
            outbound,
            url: url.to_owned(),
        })
    };
    tokio::time::timeout(timeout, handshake)
        .await
        .map_err(|_| MediaError::AgentTimeout {
            url: url.to_owned(),
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        })?
}
