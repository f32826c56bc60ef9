//! Every SIP refusal and hang-up reason the gateway sends, built in one place.
//!
//! A refusal is a final response with a `Reason` header (RFC 3326: Q.850 cause for call-level
//! outcomes, the SIP status for protocol-level ones), a `Warning` (RFC 3261 §20.43, code 399)
//! telling an operator why in words, `Retry-After` where trying again later helps, and any
//! header its status calls for (`Allow` with 405, `Unsupported` with 420, ...). The Q.850
//! causes follow RFC 3398 (ISUP ↔ SIP) so carriers map them back to what a caller hears.
//! Text from outside (codec errors, agent errors) passes through [`sanitize`] once, here.

use std::fmt;
use std::net::IpAddr;

use switchboard_media::MediaError;
use switchboard_routing::{Reject, RejectReason};
use switchboard_sip::MessageBuilder;

use crate::events::HangupBy;

/// Methods we act on. BYE/INFO/UPDATE/NOTIFY make sense inside a dialog (NOTIFY only for
/// the implicit subscription of a REFER we sent, RFC 3515), OPTIONS anywhere.
pub const ALLOW: &str = "INVITE, ACK, BYE, CANCEL, OPTIONS, INFO, UPDATE, NOTIFY";
/// Bodies we understand in INVITE, UPDATE and ACK.
pub const ACCEPT: &str = "application/sdp";
/// Option tags we implement. None: we neither require nor offer extensions (no 100rel,
/// no session timers), so any `Require` is refused with 420.
pub const SUPPORTED: &[&str] = &[];

/// Product token for Server and User-Agent headers.
pub const SERVER: &str = concat!("switchboard/", env!("CARGO_PKG_VERSION"));
/// `Retry-After` when we are out of RTP ports or not ready: long enough for calls to end.
pub const OVERLOAD_RETRY_AFTER_SECS: u32 = 5;
/// `Retry-After` while draining: a restart takes about this long; a dispatcher with another
/// gateway fails over at once anyway.
pub const DRAINING_RETRY_AFTER_SECS: u32 = 30;
/// `Retry-After` for a runtime in `error` (routing gives none): a minute lets an operator act.
pub const RUNTIME_ERROR_RETRY_AFTER_SECS: u32 = 60;
/// `Retry-After` above a connection's `max_calls_per_second`: its bucket refills within a second.
pub const CALL_RATE_RETRY_AFTER_SECS: u32 = 1;
/// `Retry-After` for a source over the per-source bucket: it refills within a second or two.
pub const RATE_LIMIT_RETRY_AFTER_SECS: u32 = 2;
/// Longest text put in a quoted header value: enough for any explanation, bounded for abuse.
const MAX_TEXT_CHARS: usize = 200;

/// The protocol of a `Reason` header's cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// An ISUP cause value (RFC 3398), for call-level outcomes.
    Q850(u16),
    /// A SIP status, for protocol-level refusals.
    Sip(u16),
}

/// A `Reason` header value: `Q.850;cause=16;text="..."`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reason {
    pub cause: Cause,
    pub text: String,
}

impl Reason {
    pub fn new(cause: Cause, text: impl AsRef<str>) -> Self {
        Reason {
            cause,
            text: sanitize(text.as_ref()),
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (protocol, cause) = match self.cause {
            Cause::Q850(c) => ("Q.850", c),
            Cause::Sip(c) => ("SIP", c),
        };
        write!(f, "{protocol};cause={cause};text=\"{}\"", self.text)
    }
}

/// A final response refusing a request, with everything that goes into its headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub reason: Option<Reason>,
    /// Operator-readable cause, sent as `Warning: 399 switchboard "..."`.
    pub warning: Option<String>,
    pub retry_after: Option<u32>,
    /// Headers the status calls for (`Allow`, `Unsupported`, `Accept`, `WWW-Authenticate`).
    pub headers: Vec<(&'static str, String)>,
}

impl Refusal {
    /// A bare refusal; add parts with the builder methods.
    pub fn status(status: u16) -> Self {
        Refusal {
            status,
            reason: None,
            warning: None,
            retry_after: None,
            headers: Vec::new(),
        }
    }

    /// A protocol-level refusal: Reason `SIP;cause=<status>` and Warning both say `why`.
    pub fn protocol(status: u16, why: impl AsRef<str>) -> Self {
        let why = sanitize(why.as_ref());
        Refusal::status(status)
            .reason(Cause::Sip(status), &why)
            .warning(why)
    }

    pub fn reason(mut self, cause: Cause, text: impl AsRef<str>) -> Self {
        self.reason = Some(Reason::new(cause, text));
        self
    }

    pub fn warning(mut self, why: impl AsRef<str>) -> Self {
        self.warning = Some(sanitize(why.as_ref()));
        self
    }

    pub fn retry_after(mut self, secs: u32) -> Self {
        self.retry_after = Some(secs);
        self
    }

    pub fn with(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// Adds this refusal's headers to a response builder.
    pub fn apply(&self, mut b: MessageBuilder) -> MessageBuilder {
        for (name, value) in &self.headers {
            b = b.header(name, value);
        }
        if let Some(secs) = self.retry_after {
            b = b.header("Retry-After", secs);
        }
        if let Some(reason) = &self.reason {
            b = b.header("Reason", reason.to_string());
        }
        if let Some(warning) = &self.warning {
            b = b.header("Warning", format!("399 switchboard \"{warning}\""));
        }
        b
    }

    // ---- the refusals the gateway makes ---------------------------------------------

    /// 403 for a source in no connection's allowlist (`[sip] untrusted = "reject"`).
    pub fn untrusted_source(ip: IpAddr) -> Self {
        Refusal::status(403)
            .reason(Cause::Q850(21), "source not allowed")
            .warning(format!("no connection allows {ip}"))
    }

    /// 403 from trunk authentication (allowlist or wrong credentials); Q.850 21, call rejected.
    pub fn trunk_forbidden(why: impl AsRef<str>) -> Self {
        Refusal::status(403)
            .reason(Cause::Q850(21), "trunk authentication failed")
            .warning(why)
    }

    /// 401 with a digest challenge.
    pub fn challenge(www_authenticate: String) -> Self {
        Refusal::status(401).with("WWW-Authenticate", www_authenticate)
    }

    /// 503 while the routing table is not loaded yet.
    pub fn not_ready() -> Self {
        Refusal::status(503)
            .reason(Cause::Q850(41), "gateway starting")
            .warning("routing table not loaded yet")
            .retry_after(OVERLOAD_RETRY_AFTER_SECS)
    }

    /// 503 for a new call while the gateway drains (after SIGTERM): a proxy in front fails
    /// over to another gateway; Q.850 41, temporary failure.
    pub fn draining() -> Self {
        Refusal::status(503)
            .reason(Cause::Q850(41), "gateway shutting down")
            .warning("gateway draining for shutdown; try another")
            .retry_after(DRAINING_RETRY_AFTER_SECS)
    }

    /// 503 above a connection's `max_calls_per_second`; Q.850 42, switching equipment congestion.
    pub fn connection_call_rate() -> Self {
        Refusal::status(503)
            .reason(Cause::Q850(42), "connection call rate exceeded")
            .warning("above the connection's max_calls_per_second")
            .retry_after(CALL_RATE_RETRY_AFTER_SECS)
    }

    /// 503 for a source over the per-source token bucket (sent by the socket reader).
    pub fn source_rate(why: &str) -> Self {
        Refusal::status(503)
            .reason(Cause::Q850(42), why)
            .warning(why)
            .retry_after(RATE_LIMIT_RETRY_AFTER_SECS)
    }

    /// 503 when no RTP port pair is free; Q.850 34, no circuit available.
    pub fn no_rtp_ports(why: impl AsRef<str>) -> Self {
        Refusal::status(503)
            .reason(Cause::Q850(34), "no RTP ports free")
            .warning(why)
            .retry_after(OVERLOAD_RETRY_AFTER_SECS)
    }

    /// 482 for a second INVITE with the Call-ID of a call in progress (§8.2.2.2).
    pub fn merged_request() -> Self {
        Refusal::status(482).warning("a call with this Call-ID is in progress")
    }

    /// 481 for a request naming no dialog of ours.
    pub fn no_such_dialog() -> Self {
        Refusal::status(481).warning("no such dialog")
    }

    /// 491 for a re-INVITE while our 200 is unacknowledged (§14.2).
    pub fn request_pending() -> Self {
        Refusal::status(491).warning("previous INVITE not yet acknowledged")
    }

    /// The answer to a routing reject: 404/480/503 with the RFC 3398 cause for its reason.
    pub fn route(reject: &Reject) -> Self {
        let reason = reject.reason();
        let cause = match reason {
            RejectReason::InvalidCalledNumber => 28, // invalid number format
            RejectReason::NoRoute => 1,              // unallocated number
            RejectReason::InboundDisabled => 21,     // call rejected
            RejectReason::Paused | RejectReason::OutsideSchedule => 20, // subscriber absent
            _ => 41,                                 // temporary failure
        };
        let status = reject.sip_status();
        let mut refusal = Refusal::status(status)
            .reason(Cause::Q850(cause), reason.as_str())
            .warning(reject.explanation());
        refusal.retry_after = match (reject.retry_after(), status) {
            (Some(secs), _) => Some(secs),
            (None, 503) => Some(RUNTIME_ERROR_RETRY_AFTER_SECS),
            _ => None,
        };
        refusal
    }

    /// 488 (or the error's status) for an offer we cannot answer; Q.850 88, incompatible
    /// destination; with 488, Warning 304 (codecs) or 305 (SRTP profile, suite or policy) and
    /// Accept say what we take.
    pub fn media(error: &MediaError) -> Self {
        let status = error.sip_status();
        let why = error.to_string();
        let mut refusal = Refusal::status(status)
            .reason(Cause::Q850(88), &why)
            .warning(&why);
        match error {
            // 305: incompatible media format (RFC 3261 §20.43): the transport profile or its
            // keys, not the codecs, are what we cannot take.
            MediaError::NoCryptoSuite { .. } | MediaError::EncryptionPolicy { .. } => {
                refusal = refusal
                    .with("Warning", format!("305 switchboard \"{}\"", sanitize(&why)))
                    .with("Accept", ACCEPT);
            }
            // 304: media type not available.
            _ if status == 488 => {
                refusal = refusal
                    .with(
                        "Warning",
                        "304 switchboard \"only PCMU, PCMA and telephone-event are available\"",
                    )
                    .with("Accept", ACCEPT);
            }
            _ => {}
        }
        refusal
    }

    /// The agent could not be reached while the caller heard ringing.
    pub fn agent_unreachable(status: u16, why: impl AsRef<str>) -> Self {
        let mut refusal = Refusal::status(status).reason(Cause::Q850(41), why);
        if status == 503 {
            refusal = refusal.retry_after(OVERLOAD_RETRY_AFTER_SECS);
        }
        refusal
    }

    /// 487 after the caller's CANCEL.
    pub fn cancelled() -> Self {
        Refusal::status(487).reason(Cause::Sip(487), "cancelled by the caller")
    }

    /// The final response when we end a call that is still ringing: 480 when someone asked
    /// for it, 503 when something failed.
    pub fn ended_while_ringing(hangup: &Hangup) -> Self {
        let status = match hangup {
            Hangup::Requested(_) => 480,
            _ => 503,
        };
        Refusal {
            reason: Some(hangup.reason()),
            ..Refusal::status(status)
        }
    }
}

/// Why we end a call, for the BYE's (or final response's) Reason header (RFC 3326).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hangup {
    /// The agent closed its WebSocket: a normal clearing (Q.850 cause 16).
    AgentClosed,
    /// The agent's WebSocket failed mid-call (Q.850 cause 41, temporary failure).
    AgentError(String),
    /// No RTP from the caller for `[media] timeout_secs` (Q.850 102, recovery on timer expiry).
    MediaTimeout,
    /// The Twilio-compatible REST API or an operator ended the call (Q.850 cause 16).
    Requested(String),
    /// The RTP socket failed.
    MediaError(String),
    /// The caller did not acknowledge our 200 (SIP 408).
    NoAck,
    /// The caller's ACK brought no usable answer to our offer.
    BadAnswer(String),
    /// The gateway is shutting down.
    Shutdown,
    /// The agent's transfer succeeded: the transferor leaves (RFC 5589 §6).
    Transferred,
}

impl Hangup {
    /// The `Reason` header value.
    pub fn reason(&self) -> Reason {
        match self {
            Hangup::AgentClosed => Reason::new(Cause::Q850(16), "agent closed the media stream"),
            Hangup::AgentError(e) => {
                Reason::new(Cause::Q850(41), format!("agent stream failed: {e}"))
            }
            Hangup::MediaTimeout => Reason::new(Cause::Q850(102), "no RTP from the caller"),
            Hangup::Requested(who) => Reason::new(Cause::Q850(16), format!("hung up by {who}")),
            Hangup::MediaError(e) => Reason::new(Cause::Q850(41), format!("media error: {e}")),
            Hangup::NoAck => Reason::new(Cause::Sip(408), "no ACK for the 200 OK"),
            Hangup::BadAnswer(e) => Reason::new(Cause::Q850(88), e),
            // 41, temporary failure: the caller may call again and reach another gateway.
            Hangup::Shutdown => Reason::new(Cause::Q850(41), "gateway shutdown"),
            Hangup::Transferred => Reason::new(Cause::Q850(16), "call transferred"),
        }
    }

    /// Which side this hang-up counts for in `call.ended` events. A REST API hang-up is the
    /// agent's (agent frameworks end calls through it); an operator's is the gateway's.
    pub fn hangup_by(&self) -> HangupBy {
        match self {
            Hangup::AgentClosed | Hangup::AgentError(_) | Hangup::Transferred => HangupBy::Agent,
            Hangup::Requested(who) if who == REST_API_REQUESTER || who == TWIML_REQUESTER => {
                HangupBy::Agent
            }
            _ => HangupBy::Gateway,
        }
    }

    /// The short cause in events (`reason`).
    pub fn label(&self) -> &'static str {
        match self {
            Hangup::AgentClosed => "agent_closed",
            Hangup::AgentError(_) => "agent_error",
            Hangup::MediaTimeout => "media_timeout",
            Hangup::Requested(who) if who == REST_API_REQUESTER => "rest_api_hangup",
            Hangup::Requested(who) if who == TWIML_REQUESTER => "twiml_hangup",
            Hangup::Requested(_) => "operator_hangup",
            Hangup::MediaError(_) => "media_error",
            Hangup::NoAck => "no_ack",
            Hangup::BadAnswer(_) => "bad_sdp_answer",
            Hangup::Shutdown => "shutdown",
            Hangup::Transferred => "transferred",
        }
    }
}

/// Who [`Hangup::Requested`] names for the Twilio-compatible REST API.
pub const REST_API_REQUESTER: &str = "the REST API";
/// Who [`Hangup::Requested`] names for a call update with `Twiml=<Response><Hangup/></Response>`
/// (the agent asked, in TwiML): the BYE says `Reason: Q.850;cause=16;text="hung up by …"`.
pub const TWIML_REQUESTER: &str = "the agent (TwiML <Hangup/>)";

/// Text safe inside a quoted header value: no quotes, backslashes or control characters
/// (so nothing can end the string or the header), at most 200 characters.
pub fn sanitize(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c == '"' || c == '\\' || c.is_control() {
                '\''
            } else {
                c
            }
        })
        .take(MAX_TEXT_CHARS)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_text_cannot_break_out_of_its_quoted_string() {
        assert_eq!(
            sanitize("no \"route\"\r\nInjected: 1"),
            "no 'route'''Injected: 1"
        );
        assert_eq!(sanitize(&"x".repeat(500)).len(), MAX_TEXT_CHARS);
        let reason = Reason::new(Cause::Q850(41), "agent said \"no\"\r\nX: y");
        assert_eq!(
            reason.to_string(),
            "Q.850;cause=41;text=\"agent said 'no'''X: y\""
        );
    }

    #[test]
    fn refusals_carry_reason_warning_and_retry_after() {
        let r = Refusal::connection_call_rate();
        assert_eq!(r.status, 503);
        assert_eq!(r.retry_after, Some(CALL_RATE_RETRY_AFTER_SECS));
        assert_eq!(
            r.reason.as_ref().map(ToString::to_string).as_deref(),
            Some("Q.850;cause=42;text=\"connection call rate exceeded\"")
        );
        let p = Refusal::protocol(483, "Max-Forwards reached 0");
        assert_eq!(
            p.reason.map(|r| r.to_string()).as_deref(),
            Some("SIP;cause=483;text=\"Max-Forwards reached 0\"")
        );
        assert_eq!(p.warning.as_deref(), Some("Max-Forwards reached 0"));
    }

    #[test]
    fn hang_ups_map_to_q850_causes() {
        assert_eq!(
            Hangup::AgentClosed.reason().to_string(),
            "Q.850;cause=16;text=\"agent closed the media stream\""
        );
        assert!(Hangup::AgentError("x".into())
            .reason()
            .to_string()
            .starts_with("Q.850;cause=41;"));
        assert_eq!(Hangup::NoAck.reason().cause, Cause::Sip(408));
        assert_eq!(
            Refusal::ended_while_ringing(&Hangup::Requested("ops".into())).status,
            480
        );
        assert_eq!(
            Refusal::ended_while_ringing(&Hangup::MediaTimeout).status,
            503
        );
    }
}
