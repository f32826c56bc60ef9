//! A parsed SIP message: [`parse`] frames and indexes it (the private `index` module: byte
//! ranges only), and the typed accessors here decode a header only when asked.

use std::borrow::Cow;
use std::fmt;

use bytes::Bytes;

use crate::error::SipError;
use crate::header::HeaderName;
use crate::lex::{self, ListSplit};
use crate::method::Method;
use crate::name_addr::NameAddr;
use crate::uri::Uri;
use crate::values::{self, CSeq, ContentType};
use crate::via::Via;

mod index;

pub use index::MAX_HEADERS;
use index::{EntryIter, HeaderEntry, StartSpans};
pub(crate) use index::{Framing, Index};

/// Parses one UDP datagram: a single message, trailing octets past Content-Length ignored.
///
/// Call this on every received datagram before anything else; it only indexes, so a message
/// rejected later costs little. Follow with [`Message::validate`] before acting on a request.
pub fn parse(datagram: &[u8]) -> Result<Message<'_>, SipError> {
    let index = Index::parse(datagram, Framing::Datagram)?;
    Ok(Message {
        buf: datagram,
        index: Cow::Owned(index),
    })
}

/// A parsed SIP message borrowing its buffer. Cheap to create; typed views are computed on
/// each call, so keep the result if you need it twice on a hot path.
#[derive(Clone)]
pub struct Message<'a> {
    buf: &'a [u8],
    index: Cow<'a, Index>,
}

/// One header field: its classified name, its name as written, and its trimmed value
/// (folds kept).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<'a> {
    pub name: HeaderName,
    pub raw_name: &'a str,
    pub value: &'a [u8],
}

impl<'a> Header<'a> {
    /// The value as text; `None` when it is not UTF-8.
    pub fn value_str(&self) -> Option<&'a str> {
        std::str::from_utf8(self.value).ok()
    }
}

/// A Contact value: `*` (REGISTER removal) or an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContactValue<'a> {
    Wildcard,
    Address(NameAddr<'a>),
}

impl<'a> Message<'a> {
    pub(crate) fn from_parts(buf: &'a [u8], index: Cow<'a, Index>) -> Self {
        Message { buf, index }
    }

    pub fn is_request(&self) -> bool {
        matches!(self.index.start, StartSpans::Request { .. })
    }

    pub fn is_response(&self) -> bool {
        !self.is_request()
    }

    /// The request method as sent (case-sensitive, RFC 3261 §7.1); `None` for responses.
    pub fn method(&self) -> Option<&'a str> {
        match self.index.start {
            StartSpans::Request { method, .. } => {
                std::str::from_utf8(&self.buf[method.range()]).ok()
            }
            StartSpans::Response { .. } => None,
        }
    }

    /// The request method when it is one this crate names; `None` for extension methods and
    /// responses.
    pub fn known_method(&self) -> Option<Method> {
        self.method().and_then(Method::from_token)
    }

    /// The Request-URI bytes as sent; `None` for responses.
    pub fn request_uri_raw(&self) -> Option<&'a [u8]> {
        match self.index.start {
            StartSpans::Request { uri, .. } => Some(&self.buf[uri.range()]),
            StartSpans::Response { .. } => None,
        }
    }

    /// Parses the Request-URI. Unknown schemes parse as [`Uri::Absolute`]; see
    /// [`Message::validate`] for the 416 decision.
    pub fn request_uri(&self) -> Result<Uri<'a>, SipError> {
        let raw = self.request_uri_raw().ok_or(SipError::BadRequestUri {
            reason: "a response has no Request-URI",
        })?;
        let text = std::str::from_utf8(raw).map_err(|_| SipError::BadRequestUri {
            reason: "non-ASCII octets",
        })?;
        Uri::parse(text).map_err(|reason| SipError::BadRequestUri { reason })
    }

    /// The status code of a response.
    pub fn status(&self) -> Option<u16> {
        match self.index.start {
            StartSpans::Response { code, .. } => Some(code),
            StartSpans::Request { .. } => None,
        }
    }

    /// The reason phrase of a response, raw (UTF-8 is allowed, RFC 4475 §3.1.1.12).
    pub fn reason_phrase(&self) -> Option<&'a [u8]> {
        match self.index.start {
            StartSpans::Response { reason, .. } => Some(&self.buf[reason.range()]),
            StartSpans::Request { .. } => None,
        }
    }

    /// The body (Content-Length octets, or the rest of a datagram without Content-Length).
    pub fn body(&self) -> &'a [u8] {
        &self.buf[self.index.body.range()]
    }

    /// The message's own octets: start line to end of body, without leading CRLFs or
    /// trailing octets.
    pub fn as_bytes(&self) -> &'a [u8] {
        &self.buf[self.index.msg_start as usize..self.index.body.end as usize]
    }

    /// The Content-Length value, when present (already checked during parsing).
    pub fn content_length(&self) -> Option<usize> {
        self.index.content_length
    }

    /// Number of header fields (lines, not comma-separated values).
    pub fn header_count(&self) -> usize {
        self.index.headers.len
    }

    fn entry(&self, e: &HeaderEntry) -> Header<'a> {
        Header {
            name: e.name,
            raw_name: std::str::from_utf8(&self.buf[e.name_span.range()]).unwrap_or(""),
            value: &self.buf[e.value.range()],
        }
    }

    /// All header fields in order.
    pub fn headers(&self) -> impl Iterator<Item = Header<'a>> + '_ {
        self.index.headers.iter().map(|e| self.entry(e))
    }

    /// All header fields of one kind, in order.
    pub fn headers_named(&self, name: HeaderName) -> impl Iterator<Item = Header<'a>> + '_ {
        self.index
            .headers
            .iter()
            .filter(move |e| e.name == name)
            .map(|e| self.entry(e))
    }

    /// The first header field of one kind.
    pub fn header(&self, name: HeaderName) -> Option<Header<'a>> {
        self.headers_named(name).next()
    }

    /// The first header field whose name matches `name` case-insensitively (for extension
    /// headers; known headers are better found by [`HeaderName`], which covers compact forms).
    pub fn header_by_name(&self, name: &str) -> Option<Header<'a>> {
        let kind = HeaderName::from_bytes(name.as_bytes());
        if kind != HeaderName::Other {
            return self.header(kind);
        }
        self.headers()
            .find(|h| h.name == HeaderName::Other && h.raw_name.eq_ignore_ascii_case(name))
    }

    /// How many header fields of one kind the message carries.
    pub fn count(&self, name: HeaderName) -> usize {
        self.index.headers.iter().filter(|e| e.name == name).count()
    }

    /// The comma-separated elements of every header field of one kind, in order. Commas in
    /// quoted strings and `<...>` do not split.
    pub fn list_elements(&self, name: HeaderName) -> ListElements<'_, 'a> {
        ListElements {
            entries: self.index.headers.iter(),
            buf: self.buf,
            name,
            current: None,
        }
    }

    /// The first field of a single-valued header as text; `MissingHeader` when absent.
    fn required_str(&self, name: HeaderName) -> Result<&'a str, SipError> {
        let h = self.header(name).ok_or_else(|| SipError::MissingHeader {
            header: name.as_str(),
        })?;
        h.value_str()
            .ok_or_else(|| SipError::header(name.as_str(), "value is not UTF-8"))
    }

    fn optional_str(&self, name: HeaderName) -> Result<Option<&'a str>, SipError> {
        match self.header(name) {
            None => Ok(None),
            Some(h) => h
                .value_str()
                .map(Some)
                .ok_or_else(|| SipError::header(name.as_str(), "value is not UTF-8")),
        }
    }

    /// Every Via value, top-most first (the order responses must keep).
    pub fn vias(&self) -> impl Iterator<Item = Result<Via<'a>, SipError>> + '_ {
        self.list_elements(HeaderName::Via).map(|r| {
            r.and_then(|s| Via::parse(s).map_err(|reason| SipError::header("Via", reason)))
        })
    }

    /// The top-most Via value: where responses go (RFC 3261 §18.2.2) and what identifies
    /// the server transaction (§17.2.3).
    pub fn via(&self) -> Result<Via<'a>, SipError> {
        self.vias()
            .next()
            .unwrap_or(Err(SipError::MissingHeader { header: "Via" }))
    }

    /// From: display name, URI, tag.
    pub fn from(&self) -> Result<NameAddr<'a>, SipError> {
        let v = self.required_str(HeaderName::From)?;
        NameAddr::parse(v).map_err(|reason| SipError::header("From", reason))
    }

    /// To: display name, URI, tag.
    pub fn to(&self) -> Result<NameAddr<'a>, SipError> {
        let v = self.required_str(HeaderName::To)?;
        NameAddr::parse(v).map_err(|reason| SipError::header("To", reason))
    }

    /// Call-ID.
    pub fn call_id(&self) -> Result<&'a str, SipError> {
        let v = self.required_str(HeaderName::CallId)?;
        values::parse_call_id(v).map_err(|reason| SipError::header("Call-ID", reason))
    }

    /// CSeq (sequence number must fit 32 bits).
    pub fn cseq(&self) -> Result<CSeq<'a>, SipError> {
        let v = self.required_str(HeaderName::CSeq)?;
        CSeq::parse(v).map_err(|reason| SipError::header("CSeq", reason))
    }

    /// Max-Forwards; `None` when absent (RFC 2543 requests, RFC 4475 §3.4.1).
    pub fn max_forwards(&self) -> Result<Option<u8>, SipError> {
        self.optional_str(HeaderName::MaxForwards)?
            .map(|v| {
                values::parse_max_forwards(v)
                    .map_err(|reason| SipError::header("Max-Forwards", reason))
            })
            .transpose()
    }

    /// Content-Type, when present.
    pub fn content_type(&self) -> Result<Option<ContentType<'a>>, SipError> {
        self.optional_str(HeaderName::ContentType)?
            .map(|v| {
                ContentType::parse(v).map_err(|reason| SipError::header("Content-Type", reason))
            })
            .transpose()
    }

    /// Every Contact value in order (`*` included).
    pub fn contacts(&self) -> impl Iterator<Item = Result<ContactValue<'a>, SipError>> + '_ {
        self.list_elements(HeaderName::Contact).map(|r| {
            r.and_then(|s| {
                if s == "*" {
                    Ok(ContactValue::Wildcard)
                } else {
                    NameAddr::parse(s)
                        .map(ContactValue::Address)
                        .map_err(|reason| SipError::header("Contact", reason))
                }
            })
        })
    }

    /// The first Contact address (the remote target of a dialog, RFC 3261 §12.1.1).
    pub fn contact(&self) -> Result<Option<NameAddr<'a>>, SipError> {
        for c in self.contacts() {
            if let ContactValue::Address(a) = c? {
                return Ok(Some(a));
            }
        }
        Ok(None)
    }

    /// Every address of a name-addr list header (Route, Record-Route, P-Asserted-Identity,
    /// Remote-Party-ID, Diversion, ...), in order.
    pub fn name_addrs(
        &self,
        name: HeaderName,
    ) -> impl Iterator<Item = Result<NameAddr<'a>, SipError>> + '_ {
        self.list_elements(name).map(move |r| {
            r.and_then(|s| {
                NameAddr::parse(s).map_err(|reason| SipError::header(name.as_str(), reason))
            })
        })
    }

    /// Route values (the route set a request carries).
    pub fn routes(&self) -> impl Iterator<Item = Result<NameAddr<'a>, SipError>> + '_ {
        self.name_addrs(HeaderName::Route)
    }

    /// Record-Route values, in order (copied into dialog-creating responses).
    pub fn record_routes(&self) -> impl Iterator<Item = Result<NameAddr<'a>, SipError>> + '_ {
        self.name_addrs(HeaderName::RecordRoute)
    }

    /// P-Asserted-Identity values (RFC 3325): the caller identity a trusted carrier asserts.
    pub fn p_asserted_identity(&self) -> impl Iterator<Item = Result<NameAddr<'a>, SipError>> + '_ {
        self.name_addrs(HeaderName::PAssertedIdentity)
    }

    /// Remote-Party-ID values (draft-ietf-sip-privacy; still sent by many carriers).
    pub fn remote_party_id(&self) -> impl Iterator<Item = Result<NameAddr<'a>, SipError>> + '_ {
        self.name_addrs(HeaderName::RemotePartyId)
    }

    /// Diversion values (RFC 5806): who forwarded the call, most recent first.
    pub fn diversion(&self) -> impl Iterator<Item = Result<NameAddr<'a>, SipError>> + '_ {
        self.name_addrs(HeaderName::Diversion)
    }

    /// Tokens of an option-tag or method list header.
    pub fn tokens(&self, name: HeaderName) -> impl Iterator<Item = Result<&'a str, SipError>> + '_ {
        self.list_elements(name).map(move |r| {
            r.and_then(|s| {
                if lex::is_token(s.as_bytes()) {
                    Ok(s)
                } else {
                    Err(SipError::header(
                        name.as_str(),
                        "list element is not a token",
                    ))
                }
            })
        })
    }

    /// Allow: methods the peer accepts.
    pub fn allow(&self) -> impl Iterator<Item = Result<&'a str, SipError>> + '_ {
        self.tokens(HeaderName::Allow)
    }

    /// Supported: option tags the peer supports.
    pub fn supported(&self) -> impl Iterator<Item = Result<&'a str, SipError>> + '_ {
        self.tokens(HeaderName::Supported)
    }

    /// Require: option tags the peer requires of the UAS.
    pub fn require(&self) -> impl Iterator<Item = Result<&'a str, SipError>> + '_ {
        self.tokens(HeaderName::Require)
    }

    /// Proxy-Require: option tags the peer requires of proxies.
    pub fn proxy_require(&self) -> impl Iterator<Item = Result<&'a str, SipError>> + '_ {
        self.tokens(HeaderName::ProxyRequire)
    }

    /// Writes the message in wire form: normalised start line (single SPs, `SIP/2.0`),
    /// every header as `Name: value` with its name and value as sent, the empty line, the
    /// body. Re-parsing the output gives an equal message.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        match self.index.start {
            StartSpans::Request { method, uri } => {
                out.extend_from_slice(&self.buf[method.range()]);
                out.push(b' ');
                out.extend_from_slice(&self.buf[uri.range()]);
                out.extend_from_slice(b" SIP/2.0\r\n");
            }
            StartSpans::Response { code, reason } => {
                out.extend_from_slice(b"SIP/2.0 ");
                out.extend_from_slice(code.to_string().as_bytes());
                out.push(b' ');
                out.extend_from_slice(&self.buf[reason.range()]);
                out.extend_from_slice(b"\r\n");
            }
        }
        for e in self.index.headers.iter() {
            out.extend_from_slice(&self.buf[e.name_span.range()]);
            out.extend_from_slice(b": ");
            out.extend_from_slice(&self.buf[e.value.range()]);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(self.body());
    }

    /// [`Message::write_to`] into a new buffer.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.as_bytes().len() + 16);
        self.write_to(&mut out);
        out
    }

    /// Copies the message into an [`OwnedMessage`] (one copy of its octets; the index is
    /// reused).
    pub fn to_owned_message(&self) -> OwnedMessage {
        OwnedMessage {
            bytes: Bytes::copy_from_slice(self.buf),
            index: self.index.clone().into_owned(),
        }
    }
}

impl PartialEq for Message<'_> {
    /// Equal when start line, header fields (names and values as sent, in order) and body
    /// are equal; framing details (leading CRLFs, extra SP, trailing octets) do not count.
    fn eq(&self, other: &Self) -> bool {
        let start_eq = match (self.index.start, other.index.start) {
            (StartSpans::Request { .. }, StartSpans::Request { .. }) => {
                self.method() == other.method() && self.request_uri_raw() == other.request_uri_raw()
            }
            (StartSpans::Response { .. }, StartSpans::Response { .. }) => {
                self.status() == other.status() && self.reason_phrase() == other.reason_phrase()
            }
            _ => false,
        };
        start_eq
            && self.header_count() == other.header_count()
            && self.headers().zip(other.headers()).all(|(a, b)| a == b)
            && self.body() == other.body()
    }
}

impl fmt::Debug for Message<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Message");
        match self.index.start {
            StartSpans::Request { .. } => {
                d.field("method", &self.method());
                d.field(
                    "request_uri",
                    &self.request_uri_raw().map(String::from_utf8_lossy),
                );
            }
            StartSpans::Response { .. } => {
                d.field("status", &self.status());
            }
        }
        d.field("headers", &self.header_count())
            .field("body_len", &self.body().len())
            .finish()
    }
}

/// Iterator over the comma-separated elements of one header kind; see
/// [`Message::list_elements`].
#[derive(Debug, Clone)]
pub struct ListElements<'m, 'a> {
    entries: EntryIter<'m>,
    buf: &'a [u8],
    name: HeaderName,
    current: Option<ListSplit<'a>>,
}

impl<'a> Iterator for ListElements<'_, 'a> {
    type Item = Result<&'a str, SipError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(cur) = &mut self.current {
                if let Some(x) = cur.next() {
                    return Some(Ok(x));
                }
                self.current = None;
            }
            let name = self.name;
            let e = self.entries.find(|e| e.name == name)?;
            match std::str::from_utf8(&self.buf[e.value.range()]) {
                Ok(s) => self.current = Some(ListSplit::new(s)),
                Err(_) => return Some(Err(SipError::header(name.as_str(), "value is not UTF-8"))),
            }
        }
    }
}

/// A message that owns its octets (a `Bytes`, shared without copying) and its index, for
/// storing in transactions. [`OwnedMessage::message`] hands out the borrowed view for free.
#[derive(Clone)]
pub struct OwnedMessage {
    bytes: Bytes,
    index: Index,
}

impl OwnedMessage {
    /// Parses a datagram held in `Bytes` (same rules as [`parse`]).
    pub fn parse(bytes: Bytes) -> Result<OwnedMessage, SipError> {
        let index = Index::parse(&bytes, Framing::Datagram)?;
        Ok(OwnedMessage { bytes, index })
    }

    pub(crate) fn from_index(bytes: Bytes, index: Index) -> OwnedMessage {
        OwnedMessage { bytes, index }
    }

    /// The borrowed view; costs nothing (the index is shared, not copied).
    pub fn message(&self) -> Message<'_> {
        Message::from_parts(&self.bytes, Cow::Borrowed(&self.index))
    }

    /// The message's octets (start line to end of body), sharing the buffer.
    pub fn bytes(&self) -> Bytes {
        self.bytes
            .slice(self.index.msg_start as usize..self.index.body.end as usize)
    }
}

impl fmt::Debug for OwnedMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("OwnedMessage")
            .field(&self.message())
            .finish()
    }
}

impl PartialEq for OwnedMessage {
    fn eq(&self, other: &Self) -> bool {
        self.message() == other.message()
    }
}

#[cfg(test)]
mod tests;
