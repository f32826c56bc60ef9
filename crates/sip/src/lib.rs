//! Sans-IO SIP for switchboard: a zero-copy message codec and the RFC 3261 transaction layer.
//! No tokio, no sockets, no clock: callers pass bytes and `now` in and take bytes out.
//!
//! # Codec layout (read top to bottom)
//! - [`message`]: [`parse`] indexes one datagram in a single pass — start line, header lines
//!   (case-insensitive names, compact forms, folds, `Name : value`) — into byte ranges held
//!   in a fixed inline array, and frames the body by Content-Length (trailing octets
//!   ignored, RFC 4475 §3.1.1.8). [`Message`] borrows the datagram; [`OwnedMessage`] keeps a
//!   `bytes::Bytes` plus the index for transactions. Typed views (`via()`, `from()`, `to()`,
//!   `cseq()`, `contacts()`, ...) parse on demand, so rejecting a message early is cheap.
//! - [`validate`](Message::validate): RFC 3261 §8.1.1/§8.2 checks (required and duplicated
//!   headers, CSeq method, Request-URI scheme → 416) and [`Message::check_require`] (420).
//! - [`uri`], [`name_addr`], [`via`], [`values`], [`params`]: the typed views.
//! - [`builder`]: responses from a request per §8.2.6 and requests the gateway originates;
//!   Content-Length is always computed.
//! - [`stream`]: [`StreamDecoder`] frames TCP by Content-Length.
//! - [`error`]: [`SipError`]; [`SipError::response_status`] says 400/416/420/505/513 or
//!   `None` (discard: malformed responses).
//!
//! The transaction layer (`transaction`, `endpoint`, `dialog`, `auth`) builds on these.
//!
//! # Typical use
//! ```
//! let datagram = b"OPTIONS sip:gw.example.com SIP/2.0\r\n\
//! Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1;rport\r\n\
//! From: <sip:alice@example.com>;tag=1\r\nTo: <sip:gw.example.com>\r\n\
//! Call-ID: c1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";
//! let request = switchboard_sip::parse(datagram)?;
//! if let Err(e) = request.validate() {
//!     // e.response_status(): Some(400 | 416 | 505 ...) to answer, None to drop.
//!     return Err(e);
//! }
//! let response = request.response(200).to_tag("gw-7f3a").header("Allow", "INVITE, ACK, BYE").build()?;
//! assert!(response.starts_with(b"SIP/2.0 200 OK\r\n"));
//! # Ok::<(), switchboard_sip::SipError>(())
//! ```
//!
//! # Evidence
//! `tests/torture.rs` runs all 61 RFC 4475/5118 messages of `../shared/sip-torture` against
//! its manifest; `tests/no_panic.rs` mutates them (bounded, every `cargo test`); `fuzz/` is
//! the open-ended cargo-fuzz target (parse → print → parse); `benches/sip_parse.rs` at the
//! workspace root times a carrier INVITE against rsip.
//!
//! Design choices, with the RFC text that allows them: bare-LF line ends are accepted;
//! extra SP in the request line is ignored (RFC 4475 §3.1.2.9-10); Request-URIs with
//! `<>` or `?headers` are rejected with 400 (§3.1.2.7, §3.1.2.11); the Date header is never
//! interpreted (§3.1.2.12); display names and addr-specs are parsed strictly (400 for
//! §3.1.2.6, .13, .14, .15).

pub mod builder;
pub mod error;
pub mod header;
mod lex;
pub mod message;
pub mod method;
pub mod name_addr;
pub mod params;
pub mod stream;
pub mod uri;
mod validate;
pub mod values;
pub mod via;

pub mod auth;
pub mod dialog;
pub mod endpoint;
pub mod stateless;
pub mod transaction;

pub use builder::{reason_phrase, MessageBuilder};
pub use dialog::{Dialog, DialogId};
pub use endpoint::{
    ClientTxnId, Endpoint, EndpointConfig, Event, ServerTxnId, TransactionId, Transmit,
};
pub use error::SipError;
pub use header::HeaderName;
pub use message::{parse, ContactValue, Header, Message, OwnedMessage, MAX_HEADERS};
pub use method::Method;
pub use name_addr::NameAddr;
pub use params::{Param, Params};
pub use stateless::StatelessStats;
pub use stream::{Frame, StreamDecoder, DEFAULT_MAX_MESSAGE_SIZE};
pub use uri::{percent_decode, Host, SipUri, TelUri, Uri};
pub use values::{CSeq, ContentType};
pub use via::{Rport, Transport, Via, MAGIC_COOKIE};
