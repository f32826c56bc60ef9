//! switchboard-media: the audio half of a call.
//!
//! Layout, in the order a call uses it:
//! * [`sdp`] — parse the carrier's offer, answer PCMU/PCMA/G.722 + telephone-event (RFC 3264);
//!   late offers and hold re-INVITEs; SDES `a=crypto` keys for `RTP/SAVP` (RFC 4568).
//! * [`srtp`] — protect/unprotect an SRTP call's packets (RFC 3711, via webrtc-srtp).
//! * [`agent_tls`] — rustls trust for `wss://` agent runtimes.
//! * [`twilio`] — the Twilio Media Streams JSON dialect spoken to the agent runtime.
//! * [`g711`] — µ-law / A-law tables (the agent hears µ-law; PCMA callers are transcoded).
//! * [`transcode`] — per call, caller codec (PCMU, PCMA, G.722) ⇄ the agent's dialect (µ-law
//!   8 kHz, or L16 16 kHz), with G.722 and resampling from the `audio-codec` crate.
//! * [`rtp`], [`dtmf`] — caller packets in (RFC 3550, RFC 4733), our packets out.
//! * [`playout`] — the agent's audio queue with Twilio `mark` / `clear` semantics.
//! * [`connect_agent`] (the private `agent_link`) before answering, then [`bridge`]'s
//!   [`spawn_bridge`] after: one task per call owning its RTP socket and WebSocket, paced by
//!   the private `pacer` (20 ms slots phase-locked to the caller's packets, so one wake-up
//!   serves both directions); the private `framer` re-cuts caller packets into 20 ms frames
//!   for the agent, the private `agent_queue` bounds what waits for a busy agent socket.
//! * [`strict_rtp`] — the bridge's source check: caller media only from the signalled or
//!   allowed IPs, relatching only after a run of in-sequence packets (defeats RTP Bleed).
//!
//! Errors from every module are one [`MediaError`].

mod agent_link;
mod agent_queue;
pub mod agent_tls;
pub mod bridge;
pub mod dtmf;
mod error;
mod framer;
pub mod g711;
mod pacer;
pub mod playout;
pub mod rtp;
pub mod sdp;
pub mod srtp;
pub mod strict_rtp;
pub mod tone;
pub mod transcode;
pub mod twilio;

pub use agent_link::{connect_agent, AgentLink, StartParams};
pub use agent_tls::AgentTls;
pub use bridge::{spawn_bridge, BridgeConfig, BridgeHandle, BridgeStats, EndReason, IdleAudio};
pub use error::MediaError;
pub use sdp::{
    negotiate, Answer, Codec, CodecPreference, CryptoSuite, Direction, MediaEncryption,
    NegotiatedMedia, SdpSession, SrtpParams,
};
pub use strict_rtp::{AllowedSources, SourceGuard, Verdict, PROBATION_PACKETS};
pub use transcode::{AgentDialect, Transcoder};
pub use twilio::{CallInfo, CustomParameters, StreamIds, TransferStatus, RESERVED_PARAMETERS};
