//! switchboard-media: the audio half of a call.
//!
//! Layout, in the order a call uses it:
//! * [`sdp`] — parse the carrier's offer, answer PCMU/PCMA + telephone-event (RFC 3264);
//!   late offers and hold re-INVITEs.
//! * [`twilio`] — the Twilio Media Streams JSON dialect spoken to the agent runtime.
//! * [`g711`] — µ-law / A-law tables (the agent hears µ-law; PCMA callers are transcoded).
//!
//! Errors from every module are one [`MediaError`].

mod error;
pub mod g711;
pub mod sdp;
pub mod twilio;

pub use error::MediaError;
pub use sdp::{negotiate, Answer, Codec, Direction, NegotiatedMedia, SdpSession};
