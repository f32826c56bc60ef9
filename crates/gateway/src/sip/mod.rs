//! The SIP front end: sockets, transaction driving, trunk auth, routing decisions, call flow.
//!
//! Layout (read top to bottom):
//! - [`calls`]: the live-call handle the admin side uses ([`CallHandle`]).
//! - [`ports`]: RTP port pairs with an RAII guard.
//! - [`rate_limit`]: per-source token buckets applied in the socket readers.
//! - [`metrics`]: SIP counters on the gateway's Prometheus registry.

pub mod calls;
pub mod metrics;
pub mod ports;
pub mod rate_limit;

pub use calls::{CallCommand, CallEnded, CallHandle, HangupCause};
