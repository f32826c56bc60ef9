//! The crate's one error type.

use std::net::SocketAddr;

/// Everything that can go wrong in SDP negotiation, the agent link or the bridge.
///
/// [`MediaError::sip_status`] says which SIP final response the gateway answers with when the
/// error happens while an INVITE is still pending.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MediaError {
    /// The SDP body could not be parsed (RFC 4566 syntax) or is semantically unusable.
    #[error("bad SDP at line {line}: {reason}")]
    BadSdp {
        /// 1-based line number, 0 when the problem is not tied to one line.
        line: usize,
        reason: String,
    },
    /// The offer (or answer) has no audio stream with a codec we speak (PCMU, PCMA, G.722).
    #[error("no common codec: offered payload types {offered:?}")]
    NoCommonCodec { offered: Vec<String> },
    /// Every SRTP stream offered uses only crypto suites (or key features) we do not take.
    #[error("no supported SRTP crypto suite: offered {offered:?}, we take {supported}")]
    NoCryptoSuite {
        offered: Vec<String>,
        supported: String,
    },
    /// The offer's media protection is not what the connection's `media_encryption` allows.
    #[error("{reason}")]
    EncryptionPolicy { reason: &'static str },
    /// An SRTP context could not be set up from negotiated keys.
    #[error("SRTP: {reason}")]
    Srtp { reason: String },
    /// `[media] agent_ca_file` (or a test bundle) cannot be used as trust anchors.
    #[error("agent TLS: {reason}")]
    AgentTlsConfig { reason: String },
    /// The agent runtime's WebSocket could not be opened (bad URL, refused, handshake failed).
    #[error("agent runtime {url}: connect failed: {reason}")]
    AgentConnect { url: String, reason: String },
    /// The agent runtime did not complete the WebSocket handshake in time.
    #[error("agent runtime {url}: no answer within {timeout_ms} ms")]
    AgentTimeout { url: String, timeout_ms: u64 },
    /// A message from the agent is not valid Twilio Media Streams JSON.
    #[error("bad agent message: {reason}")]
    BadAgentMessage { reason: String },
    /// A datagram is not a usable RTP packet.
    #[error("bad RTP packet from {from}: {reason}")]
    BadRtp { from: SocketAddr, reason: String },
    /// A socket operation failed.
    #[error("{context}: {source}")]
    Io {
        context: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl MediaError {
    /// The SIP status the gateway sends when this error ends a pending INVITE:
    /// 488 Not Acceptable Here for codec, crypto suite or encryption policy mismatch, 400 for unparsable SDP, 503 when the agent
    /// runtime cannot be reached, 500 otherwise.
    pub fn sip_status(&self) -> u16 {
        match self {
            MediaError::NoCommonCodec { .. }
            | MediaError::NoCryptoSuite { .. }
            | MediaError::EncryptionPolicy { .. } => 488,
            MediaError::BadSdp { .. } => 400,
            MediaError::AgentConnect { .. } | MediaError::AgentTimeout { .. } => 503,
            _ => 500,
        }
    }

    pub(crate) fn bad_sdp(line: usize, reason: impl Into<String>) -> Self {
        MediaError::BadSdp {
            line,
            reason: reason.into(),
        }
    }
}
