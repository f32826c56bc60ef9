//! The SIP front end: sockets, transaction driving, trunk auth, routing decisions, call flow.
//!
//! Layout (read top to bottom):
//! - [`calls`]: the live-call handle the admin side uses ([`CallHandle`]).
//! - [`ports`]: RTP port pairs with an RAII guard.
//! - [`rate_limit`]: per-source token buckets applied in the socket readers.
//! - [`metrics`]: SIP counters on the gateway's Prometheus registry.
//! - [`identity`]: called and calling numbers of an INVITE.
//! - [`screen`]: RFC 3261 §8.2 request screening (405/501/483/420/415/406).
//! - [`trunk`]: source allowlists and digest authentication per connection.
//! - [`transport`]: UDP/TCP listeners, readers with rate limiting, non-blocking sends.
//! - [`twilio_rest`]: the Twilio-compatible call resource (REST hang-up).
//! - [`txn`]: the transaction-layer driver (RFC 3261 §17 machines, 2xx repeats, CANCEL).

pub mod calls;
pub mod identity;
pub mod metrics;
pub mod ports;
pub mod rate_limit;
pub mod screen;
pub mod transport;
pub mod trunk;
pub mod twilio_rest;
pub mod txn;

pub use calls::{CallCommand, CallDetails, CallEnded, CallHandle, HangupCause};
