//! Building messages: responses from a request (RFC 3261 §8.2.6) and requests the gateway
//! originates (BYE, ACK, ...). Content-Length is always computed.

use std::fmt::Display;
use std::io::Write as _;

use bytes::Bytes;

use crate::error::SipError;
use crate::header::HeaderName;
use crate::lex;
use crate::message::{Message, OwnedMessage};

/// The RFC 3261 §21 reason phrase for a status code (plus common extensions); the class
/// name for codes without one.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Trying",
        180 => "Ringing",
        181 => "Call Is Being Forwarded",
        182 => "Queued",
        183 => "Session Progress",
        200 => "OK",
        202 => "Accepted",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Moved Temporarily",
        305 => "Use Proxy",
        380 => "Alternative Service",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        410 => "Gone",
        413 => "Request Entity Too Large",
        414 => "Request-URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Unsupported URI Scheme",
        420 => "Bad Extension",
        421 => "Extension Required",
        423 => "Interval Too Brief",
        480 => "Temporarily Unavailable",
        481 => "Call/Transaction Does Not Exist",
        482 => "Loop Detected",
        483 => "Too Many Hops",
        484 => "Address Incomplete",
        485 => "Ambiguous",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        491 => "Request Pending",
        493 => "Undecipherable",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Server Time-out",
        505 => "Version Not Supported",
        513 => "Message Too Large",
        600 => "Busy Everywhere",
        603 => "Decline",
        604 => "Does Not Exist Anywhere",
        606 => "Not Acceptable",
        _ => match status / 100 {
            1 => "Provisional",
            2 => "Success",
            3 => "Redirection",
            4 => "Client Error",
            5 => "Server Error",
            _ => "Global Failure",
        },
    }
}

/// Builds one message. Methods chain; the first invalid input is reported by
/// [`MessageBuilder::build`] as [`SipError::Build`], so a typo cannot emit a broken message.
#[derive(Debug, Clone)]
pub struct MessageBuilder {
    head: Vec<u8>,
    body: Vec<u8>,
    /// Where `;tag=...` goes when the To header copied from a request has no tag.
    to_tag_at: Option<usize>,
    has_body: bool,
    content_type_set: bool,
    error: Option<SipError>,
}

/// Head room for a typical response head so building rarely reallocates.
const TYPICAL_HEAD: usize = 512;

impl MessageBuilder {
    fn with_start(start: impl FnOnce(&mut Vec<u8>)) -> Self {
        let mut head = Vec::with_capacity(TYPICAL_HEAD);
        start(&mut head);
        MessageBuilder {
            head,
            body: Vec::new(),
            to_tag_at: None,
            has_body: false,
            content_type_set: false,
            error: None,
        }
    }

    /// Starts a request: `method request_uri SIP/2.0`. Add Via, Max-Forwards, From, To,
    /// Call-ID, CSeq (and Route, Contact) yourself with [`MessageBuilder::header`]; RFC
    /// 3261 §8.1.1 lists what a request needs.
    pub fn request(method: &str, request_uri: &str) -> Self {
        let mut b = Self::with_start(|h| {
            let _ = write!(h, "{method} {request_uri} SIP/2.0\r\n");
        });
        if !lex::is_token(method.as_bytes()) {
            b.fail("method is not a token");
        }
        if request_uri.is_empty() || !request_uri.bytes().all(|c| (0x21..0x7f).contains(&c)) {
            b.fail("Request-URI is empty or holds white space");
        }
        b
    }

    /// Starts a response with an explicit reason phrase.
    pub fn response(status: u16, reason: &str) -> Self {
        let mut b = Self::with_start(|h| {
            let _ = write!(h, "SIP/2.0 {status} {reason}\r\n");
        });
        if !(100..=699).contains(&status) {
            b.fail("status code outside 100..=699");
        }
        if reason.bytes().any(|c| c == b'\r' || c == b'\n') {
            b.fail("reason phrase holds a line break");
        }
        b
    }

    fn fail(&mut self, reason: &'static str) {
        if self.error.is_none() {
            self.error = Some(SipError::Build { reason });
        }
    }

    /// Appends `name: value`. The name must be a token; the value must not contain line
    /// breaks (that would inject headers). Content-Length is always written by `build`, so
    /// adding it here is an error; Content-Type comes with [`MessageBuilder::body`].
    pub fn header(mut self, name: &str, value: impl Display) -> Self {
        if !lex::is_token(name.as_bytes()) {
            self.fail("header name is not a token");
            return self;
        }
        match HeaderName::from_bytes(name.as_bytes()) {
            HeaderName::ContentLength => {
                self.fail("Content-Length is computed by build()");
                return self;
            }
            HeaderName::ContentType if self.content_type_set => {
                self.fail("Content-Type set twice");
                return self;
            }
            HeaderName::ContentType => self.content_type_set = true,
            _ => {}
        }
        self.head.extend_from_slice(name.as_bytes());
        self.head.extend_from_slice(b": ");
        let value_start = self.head.len();
        let _ = write!(self.head, "{value}");
        if self.head[value_start..]
            .iter()
            .any(|&c| c == b'\r' || c == b'\n')
        {
            self.head.truncate(value_start);
            self.fail("header value holds a line break");
        }
        self.head.extend_from_slice(b"\r\n");
        self
    }

    /// Copies a header value from a parsed message as it was sent.
    fn raw_header(&mut self, name: &str, value: &[u8]) -> usize {
        self.head.extend_from_slice(name.as_bytes());
        self.head.extend_from_slice(b": ");
        self.head.extend_from_slice(value);
        let end = self.head.len();
        self.head.extend_from_slice(b"\r\n");
        end
    }

    /// Sets the To tag of a response built with [`Message::response`] when the request's
    /// To had none (RFC 3261 §8.2.6.2). Ignored when the request already carried a tag
    /// (the dialog's tag must not change). Tags must be random (≥ 32 bits, §19.3); this
    /// crate has no randomness, so the caller supplies it, and should reuse the same tag
    /// for every response of one transaction.
    pub fn to_tag(mut self, tag: &str) -> Self {
        if !lex::is_token(tag.as_bytes()) {
            self.fail("To tag is not a token");
            return self;
        }
        if let Some(at) = self.to_tag_at.take() {
            let insert = format!(";tag={tag}");
            self.head.splice(at..at, insert.into_bytes());
        }
        self
    }

    /// Sets the body and its Content-Type.
    pub fn body(mut self, content_type: &str, body: &[u8]) -> Self {
        if self.has_body {
            self.fail("body set twice");
            return self;
        }
        self = self.header("Content-Type", content_type);
        self.has_body = true;
        self.body = body.to_vec();
        self
    }

    /// Finishes the message: appends `Content-Length`, the empty line and the body.
    pub fn build(self) -> Result<Bytes, SipError> {
        self.build_vec().map(Bytes::from)
    }

    /// [`MessageBuilder::build`], returning the parsed result as well.
    pub fn build_message(self) -> Result<OwnedMessage, SipError> {
        OwnedMessage::parse(self.build()?)
    }

    fn build_vec(mut self) -> Result<Vec<u8>, SipError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        if self.to_tag_at.is_some() {
            return Err(SipError::Build {
                reason: "a response above 100 needs a To tag (call to_tag)",
            });
        }
        let _ = write!(self.head, "Content-Length: {}\r\n\r\n", self.body.len());
        self.head.extend_from_slice(&self.body);
        Ok(self.head)
    }
}

impl Message<'_> {
    /// Starts a response to this request per RFC 3261 §8.2.6: status line with the standard
    /// reason phrase, then every Via in order, From, To, Call-ID and CSeq copied as sent;
    /// Timestamp for 100 (§8.2.6.1); Record-Route for 101-299 (dialog-creating responses,
    /// §12.1.1). For a status above 100 whose request To lacks a tag, call
    /// [`MessageBuilder::to_tag`]. Add Contact, Allow, Supported, Unsupported, Retry-After,
    /// Reason, Warning, WWW-Authenticate with [`MessageBuilder::header`].
    ///
    /// Works on malformed requests too (copies what is there), so a 400 can always be sent.
    pub fn response(&self, status: u16) -> MessageBuilder {
        self.response_with_reason(status, reason_phrase(status))
    }

    /// [`Message::response`] with a custom reason phrase.
    pub fn response_with_reason(&self, status: u16, reason: &str) -> MessageBuilder {
        let mut b = MessageBuilder::response(status, reason);
        for via in self.headers_named(HeaderName::Via) {
            b.raw_header("Via", via.value);
        }
        if let Some(from) = self.header(HeaderName::From) {
            b.raw_header("From", from.value);
        }
        if let Some(to) = self.header(HeaderName::To) {
            let end = b.raw_header("To", to.value);
            let has_tag = self.to().is_ok_and(|t| t.tag().is_some());
            if status > 100 && !has_tag {
                b.to_tag_at = Some(end);
            }
        }
        for name in [HeaderName::CallId, HeaderName::CSeq] {
            if let Some(h) = self.header(name) {
                b.raw_header(name.as_str(), h.value);
            }
        }
        if status == 100 {
            if let Some(ts) = self.header(HeaderName::Timestamp) {
                b.raw_header("Timestamp", ts.value);
            }
        }
        if (101..300).contains(&status) {
            for rr in self.headers_named(HeaderName::RecordRoute) {
                b.raw_header("Record-Route", rr.value);
            }
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse;

    const REQ: &[u8] = b"INVITE sip:bob@example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP p1.example.com;branch=z9hG4bK1, SIP/2.0/UDP p2.example.com;branch=z9hG4bK2\r\n\
v: SIP/2.0/UDP ua.example.com;branch=z9hG4bK3;rport\r\n\
Record-Route: <sip:p1.example.com;lr>\r\n\
f: Alice <sip:alice@example.com>;tag=88\r\n\
t: sip:bob@example.com\r\n\
i: abc@h\r\n\
CSeq: 7 INVITE\r\n\
Timestamp: 54\r\n\
Content-Length: 0\r\n\r\n";

    #[test]
    fn response_copies_per_8_2_6() {
        let req = parse(REQ).unwrap();
        let resp = req
            .response(200)
            .to_tag("xyz")
            .header("Contact", "<sip:gw@192.0.2.9>")
            .body("application/sdp", b"v=0\r\n")
            .build_message()
            .unwrap();
        let m = resp.message();
        m.validate().unwrap();
        assert_eq!(m.status(), Some(200));
        let branches: Vec<_> = m.vias().map(|v| v.unwrap().branch().unwrap()).collect();
        assert_eq!(branches, vec!["z9hG4bK1", "z9hG4bK2", "z9hG4bK3"]);
        assert_eq!(m.to().unwrap().tag(), Some("xyz"));
        assert_eq!(m.from().unwrap().tag(), Some("88"));
        assert_eq!(m.call_id().unwrap(), "abc@h");
        assert_eq!(m.cseq().unwrap().seq, 7);
        assert_eq!(m.record_routes().count(), 1);
        assert_eq!(m.header(HeaderName::Timestamp), None);
        assert_eq!(m.body(), b"v=0\r\n");
        assert_eq!(m.content_length(), Some(5));
    }

    #[test]
    fn trying_needs_no_tag_and_copies_timestamp() {
        let req = parse(REQ).unwrap();
        let m = req.response(100).build_message().unwrap();
        assert_eq!(m.message().to().unwrap().tag(), None);
        assert!(m.message().header(HeaderName::Timestamp).is_some());
        assert_eq!(m.message().record_routes().count(), 0);
        assert!(matches!(
            req.response(486).build(),
            Err(SipError::Build { .. })
        ));
    }

    #[test]
    fn existing_to_tag_is_kept() {
        let raw = String::from_utf8(REQ.to_vec())
            .unwrap()
            .replace("t: sip:bob@example.com", "t: <sip:bob@example.com>;tag=b1");
        let req = parse(raw.as_bytes()).unwrap();
        let m = req.response(481).to_tag("other").build_message().unwrap();
        assert_eq!(m.message().to().unwrap().tag(), Some("b1"));
    }

    #[test]
    fn request_builder_and_injection_guard() {
        let bye = MessageBuilder::request("BYE", "sip:alice@192.0.2.1:5060")
            .header("Via", "SIP/2.0/UDP 192.0.2.9:5060;branch=z9hG4bKb1")
            .header("Max-Forwards", 70)
            .header("From", "<sip:gw@example.com>;tag=xyz")
            .header("To", "<sip:alice@example.com>;tag=88")
            .header("Call-ID", "abc@h")
            .header("CSeq", "2 BYE")
            .build_message()
            .unwrap();
        bye.message().validate().unwrap();
        assert_eq!(bye.message().content_length(), Some(0));
        let bad = MessageBuilder::request("BYE", "sip:a@b").header("X", "a\r\nInjected: 1");
        assert!(matches!(bad.build(), Err(SipError::Build { .. })));
        let bad = MessageBuilder::request("BYE", "sip:a@b").header("Content-Length", 3);
        assert!(bad.build().is_err());
        assert!(MessageBuilder::request("B YE", "sip:a@b").build().is_err());
        assert!(MessageBuilder::response(700, "x").build().is_err());
    }

    #[test]
    fn reason_phrases() {
        assert_eq!(reason_phrase(416), "Unsupported URI Scheme");
        assert_eq!(reason_phrase(499), "Client Error");
    }
}
