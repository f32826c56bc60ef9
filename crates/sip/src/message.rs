//! Framing and indexing: one pass over the start line and header lines records byte ranges;
//! nothing is copied or decoded until a typed accessor asks for it.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

use bytes::Bytes;

use crate::error::SipError;
use crate::header::HeaderName;
use crate::lex::{self, ListSplit};
use crate::method::Method;
use crate::name_addr::NameAddr;
use crate::uri::Uri;
use crate::values::{self, CSeq, ContentType};
use crate::via::Via;

/// Most header fields a message may carry. RFC 3261 sets no limit; RFC 4475 §3.1.1.7 has
/// 44 lines, real INVITEs 15-30. 512 bounds the index of a hostile datagram at ~10 KiB.
pub const MAX_HEADERS: usize = 512;

/// Header fields indexed without allocating. A carrier INVITE has 12-20; the rest spill to
/// a Vec.
const INLINE_HEADERS: usize = 32;

/// A byte range inside the message buffer. u32 keeps an index entry small; messages are
/// limited to 4 GiB (datagrams to 64 KiB in practice).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Span {
    start: u32,
    end: u32,
}

impl Span {
    fn new(start: usize, end: usize) -> Span {
        // Callers check the buffer length fits u32 before indexing.
        Span {
            start: start as u32,
            end: end as u32,
        }
    }

    fn range(self) -> Range<usize> {
        self.start as usize..self.end as usize
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct HeaderEntry {
    name: HeaderName,
    name_span: Span,
    value: Span,
}

const EMPTY_ENTRY: HeaderEntry = HeaderEntry {
    name: HeaderName::Other,
    name_span: Span { start: 0, end: 0 },
    value: Span { start: 0, end: 0 },
};

/// Header index: a fixed inline array, then a Vec for the rare long message.
#[derive(Debug, Clone)]
pub(crate) struct HeaderTable {
    inline: [HeaderEntry; INLINE_HEADERS],
    len: usize,
    spill: Vec<HeaderEntry>,
}

type EntryIter<'m> =
    std::iter::Chain<std::slice::Iter<'m, HeaderEntry>, std::slice::Iter<'m, HeaderEntry>>;

impl HeaderTable {
    fn new() -> Self {
        HeaderTable {
            inline: [EMPTY_ENTRY; INLINE_HEADERS],
            len: 0,
            spill: Vec::new(),
        }
    }

    fn push(&mut self, e: HeaderEntry) -> Result<(), SipError> {
        if self.len >= MAX_HEADERS {
            return Err(SipError::TooManyHeaders { limit: MAX_HEADERS });
        }
        if self.len < INLINE_HEADERS {
            self.inline[self.len] = e;
        } else {
            self.spill.push(e);
        }
        self.len += 1;
        Ok(())
    }

    fn last_mut(&mut self) -> Option<&mut HeaderEntry> {
        match self.len {
            0 => None,
            n if n <= INLINE_HEADERS => self.inline.get_mut(n - 1),
            _ => self.spill.last_mut(),
        }
    }

    fn iter(&self) -> EntryIter<'_> {
        self.inline[..self.len.min(INLINE_HEADERS)]
            .iter()
            .chain(self.spill.iter())
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = &mut HeaderEntry> {
        let n = self.len.min(INLINE_HEADERS);
        self.inline[..n].iter_mut().chain(self.spill.iter_mut())
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum StartSpans {
    Request { method: Span, uri: Span },
    Response { code: u16, reason: Span },
}

/// Everything `parse` learns about a message, as ranges into its buffer. Holds no borrow,
/// so an [`OwnedMessage`] keeps it next to its `Bytes`.
#[derive(Debug, Clone)]
pub(crate) struct Index {
    start: StartSpans,
    headers: HeaderTable,
    /// First octet of the start line (leading CRLFs skipped).
    msg_start: u32,
    /// First octet after the empty line that ends the header section.
    head_end: u32,
    body: Span,
    content_length: Option<usize>,
}

/// How the body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// UDP: Content-Length if present, else the rest of the datagram (RFC 3261 §18.3);
    /// octets past Content-Length are ignored (RFC 4475 §3.1.1.8).
    Datagram,
    /// Only the header section is in the buffer; the caller frames the body.
    HeadOnly,
}

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

impl Index {
    pub(crate) fn parse(buf: &[u8], framing: Framing) -> Result<Index, SipError> {
        if u32::try_from(buf.len()).is_err() {
            return Err(SipError::MessageTooLarge {
                limit: u32::MAX as usize,
            });
        }
        // `let else` rather than `ok_or`: an eagerly built error is dropped on the success
        // path, which showed up in profiles of this function.
        let Some(start) = buf.iter().position(|b| *b != b'\r' && *b != b'\n') else {
            return Err(SipError::Empty);
        };
        let is_response = buf
            .get(start..start + 4)
            .is_some_and(|p| p.eq_ignore_ascii_case(b"SIP/"));
        let result = Self::parse_at(buf, start, framing);
        if is_response {
            result.map_err(SipError::in_response)
        } else {
            result
        }
    }

    fn parse_at(buf: &[u8], msg_start: usize, framing: Framing) -> Result<Index, SipError> {
        let Some((line_end, mut pos)) = next_line(buf, msg_start) else {
            return Err(SipError::IncompleteHeaders);
        };
        let start = parse_start_line(buf, msg_start, line_end)?;
        let mut headers = HeaderTable::new();
        let mut line_no = 1;
        loop {
            let Some((end, next)) = next_line(buf, pos) else {
                return Err(SipError::IncompleteHeaders);
            };
            line_no += 1;
            if end == pos {
                pos = next;
                break;
            }
            let first = buf[pos];
            if first == b' ' || first == b'\t' {
                // Folded continuation (RFC 3261 §7.3.1): the value grows to this line's end.
                let Some(last) = headers.last_mut() else {
                    return Err(SipError::BadHeaderLine {
                        line: line_no,
                        reason: "continuation line before the first header",
                    });
                };
                last.value.end = end as u32;
            } else {
                // One pass over the name: token characters, optional SP/HT, then the colon
                // (`Name : value` is legal: HCOLON = *( SP / HTAB ) ":" SWS).
                let mut name_end = pos;
                while name_end < end && lex::is_token_byte(buf[name_end]) {
                    name_end += 1;
                }
                let mut colon = name_end;
                while colon < end && matches!(buf[colon], b' ' | b'\t') {
                    colon += 1;
                }
                if name_end == pos || colon >= end || buf[colon] != b':' {
                    let has_colon = memchr::memchr(b':', &buf[pos..end]).is_some();
                    return Err(SipError::BadHeaderLine {
                        line: line_no,
                        reason: if has_colon {
                            "header name is not a token"
                        } else {
                            "header line without colon"
                        },
                    });
                }
                let name = &buf[pos..name_end];
                headers.push(HeaderEntry {
                    name: HeaderName::from_bytes(name),
                    name_span: Span::new(pos, name_end),
                    value: Span::new(colon + 1, end),
                })?;
            }
            pos = next;
        }
        let mut content_length: Option<usize> = None;
        for e in headers.iter_mut() {
            e.value = trim_span(buf, e.value);
            if e.name == HeaderName::ContentLength {
                let n = values::parse_content_length(&buf[e.value.range()])
                    .map_err(|reason| SipError::header("Content-Length", reason))?;
                match content_length {
                    Some(first) if first != n => {
                        return Err(SipError::ConflictingContentLength { first, second: n })
                    }
                    _ => content_length = Some(n),
                }
            }
        }
        let body = match framing {
            Framing::HeadOnly => Span::new(pos, pos),
            Framing::Datagram => {
                let available = buf.len() - pos;
                match content_length {
                    Some(declared) if declared > available => {
                        return Err(SipError::ContentLengthExceedsDatagram {
                            declared,
                            available,
                        })
                    }
                    Some(declared) => Span::new(pos, pos + declared),
                    None => Span::new(pos, buf.len()),
                }
            }
        };
        Ok(Index {
            start,
            headers,
            msg_start: msg_start as u32,
            head_end: pos as u32,
            body,
            content_length,
        })
    }

    pub(crate) fn head_end(&self) -> usize {
        self.head_end as usize
    }

    pub(crate) fn content_length(&self) -> Option<usize> {
        self.content_length
    }

    /// Sets the body range once a stream decoder has all of it.
    pub(crate) fn set_body_len(&mut self, len: usize) {
        self.body = Span::new(self.head_end as usize, self.head_end as usize + len);
    }
}

/// Finds the line starting at `pos`: returns (end of content, start of next line). Accepts
/// bare LF as well as CRLF (RFC 3261 §7 asks for CRLF; being liberal costs nothing here and
/// keeps hand-written test messages readable).
#[inline]
fn next_line(buf: &[u8], pos: usize) -> Option<(usize, usize)> {
    let nl = memchr::memchr(b'\n', buf.get(pos..)?)? + pos;
    let end = if nl > pos && buf[nl - 1] == b'\r' {
        nl - 1
    } else {
        nl
    };
    Some((end, nl + 1))
}

fn trim_span(buf: &[u8], s: Span) -> Span {
    let (mut a, mut b) = (s.start as usize, s.end as usize);
    while a < b && lex::is_lws(buf[a]) {
        a += 1;
    }
    while b > a && lex::is_lws(buf[b - 1]) {
        b -= 1;
    }
    Span::new(a, b)
}

fn check_version(v: &[u8]) -> Result<(), SipError> {
    if v.eq_ignore_ascii_case(b"SIP/2.0") {
        return Ok(());
    }
    let well_formed = v.len() > 4 && v[..4].eq_ignore_ascii_case(b"SIP/") && {
        let rest = &v[4..];
        let mut parts = rest.splitn(2, |b| *b == b'.');
        let major = parts.next().unwrap_or(b"");
        let minor = parts.next().unwrap_or(b"");
        !major.is_empty()
            && !minor.is_empty()
            && major.iter().all(u8::is_ascii_digit)
            && minor.iter().all(u8::is_ascii_digit)
    };
    if well_formed {
        Err(SipError::VersionNotSupported {
            version: String::from_utf8_lossy(v).into_owned(),
        })
    } else {
        Err(SipError::BadStartLine {
            reason: "malformed SIP-Version",
        })
    }
}

fn parse_start_line(buf: &[u8], start: usize, end: usize) -> Result<StartSpans, SipError> {
    let line = &buf[start..end];
    if line.len() >= 4 && line[..4].eq_ignore_ascii_case(b"SIP/") {
        let sp = memchr::memchr(b' ', line).unwrap_or(line.len());
        check_version(&line[..sp])?;
        let mut p = sp;
        while line.get(p) == Some(&b' ') {
            p += 1;
        }
        let digits = line[p..].iter().take_while(|b| b.is_ascii_digit()).count();
        let code = std::str::from_utf8(&line[p..p + digits])
            .ok()
            .and_then(|d| d.parse::<u16>().ok())
            .filter(|c| digits == 3 && (100..=699).contains(c))
            .ok_or(SipError::BadStartLine {
                reason: "status code is not three digits in 100..=699",
            })?;
        p += digits;
        let reason_start = match line.get(p) {
            None => p,
            Some(b' ') => p + 1,
            Some(_) => {
                return Err(SipError::BadStartLine {
                    reason: "status code not followed by SP",
                })
            }
        };
        return Ok(StartSpans::Response {
            code,
            reason: Span::new(start + reason_start, end),
        });
    }
    // Request-Line. Extra SP between or after the elements is tolerated (RFC 4475 §3.1.2.9
    // and §3.1.2.10 allow ignoring it); the printer always writes single SPs.
    let mut parts: [Span; 3] = [Span::default(); 3];
    let mut count = 0;
    let mut i = 0;
    while i < line.len() {
        if line[i] == b' ' {
            i += 1;
            continue;
        }
        let s = i;
        while i < line.len() && line[i] != b' ' {
            i += 1;
        }
        if count == 3 {
            return Err(SipError::BadStartLine {
                reason: "white space inside the Request-URI",
            });
        }
        parts[count] = Span::new(start + s, start + i);
        count += 1;
    }
    if count < 3 {
        return Err(SipError::BadStartLine {
            reason: "request line needs method, Request-URI and SIP-Version",
        });
    }
    let [method, uri, version] = parts;
    if !lex::is_token(&buf[method.range()]) {
        return Err(SipError::BadStartLine {
            reason: "method is not a token",
        });
    }
    check_version(&buf[version.range()])?;
    Ok(StartSpans::Request { method, uri })
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
mod tests {
    use super::*;

    const INVITE: &[u8] = b"INVITE sip:+14155550123@gw.example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK776asdhds;rport\r\n\
Max-Forwards: 70\r\n\
To: <sip:+14155550123@gw.example.com>\r\n\
From: \"Alice\" <sip:+14085550100@carrier.example.net>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710@pc33.example.net\r\n\
CSeq: 314159 INVITE\r\n\
Contact: <sip:+14085550100@192.0.2.1:5060>\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 4\r\n\
\r\n\
v=0\r\ntrailing";

    #[test]
    fn indexes_and_frames_a_request() {
        let m = parse(INVITE).unwrap();
        assert!(m.is_request());
        assert_eq!(m.method(), Some("INVITE"));
        assert_eq!(m.known_method(), Some(Method::Invite));
        assert_eq!(m.header_count(), 9);
        assert_eq!(m.body(), b"v=0\r");
        assert_eq!(m.content_length(), Some(4));
        let via = m.via().unwrap();
        assert_eq!(via.branch(), Some("z9hG4bK776asdhds"));
        assert_eq!(m.from().unwrap().tag(), Some("1928301774"));
        assert_eq!(m.to().unwrap().tag(), None);
        assert_eq!(m.call_id().unwrap(), "a84b4c76e66710@pc33.example.net");
        assert_eq!(m.cseq().unwrap().seq, 314159);
        assert_eq!(m.max_forwards().unwrap(), Some(70));
        assert!(m.content_type().unwrap().unwrap().is("application", "sdp"));
        assert!(m.contact().unwrap().is_some());
        match m.request_uri().unwrap() {
            Uri::Sip(u) => assert_eq!(u.user, Some("+14155550123")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn round_trip_and_owned() {
        let m = parse(INVITE).unwrap();
        let printed = m.to_vec();
        let again = parse(&printed).unwrap();
        assert_eq!(m, again);
        let owned = OwnedMessage::parse(Bytes::from_static(INVITE)).unwrap();
        assert_eq!(owned.message(), m);
        assert!(owned.bytes().ends_with(b"v=0\r"));
        assert_eq!(m.to_owned_message(), owned);
    }

    #[test]
    fn folds_compact_forms_and_spacing() {
        let raw = b"OPTIONS sip:a@b SIP/2.0\r\nTO :\r\n sip:x@y ;tag=1\r\nf: <sip:c@d>\r\n ;tag=2\r\nl: 0\r\n\r\n";
        let m = parse(raw).unwrap();
        assert_eq!(m.to().unwrap().tag(), Some("1"));
        assert_eq!(m.from().unwrap().tag(), Some("2"));
        assert_eq!(m.header(HeaderName::To).unwrap().value, b"sip:x@y ;tag=1");
        assert_eq!(parse(&m.to_vec()).unwrap(), m);
    }

    #[test]
    fn responses() {
        let m = parse(b"SIP/2.0 180 Ringing\r\nContent-Length: 0\r\n\r\n").unwrap();
        assert_eq!(m.status(), Some(180));
        assert_eq!(m.reason_phrase(), Some(&b"Ringing"[..]));
        let e = parse(b"SIP/2.0 4294967301 big\r\n\r\n").unwrap_err();
        assert_eq!(e.response_status(), None);
        let e = parse(b"SIP/2.0 200 OK\r\nContent-Length: 10\r\n\r\nabc").unwrap_err();
        assert_eq!(e.response_status(), None);
    }

    #[test]
    fn framing_errors() {
        let e = parse(b"OPTIONS sip:a@b SIP/2.0\r\nl: 10\r\n\r\nabc").unwrap_err();
        assert!(matches!(
            e,
            SipError::ContentLengthExceedsDatagram {
                declared: 10,
                available: 3
            }
        ));
        let e =
            parse(b"OPTIONS sip:a@b SIP/2.0\r\nl: 1\r\nContent-Length: 2\r\n\r\nabc").unwrap_err();
        assert!(matches!(e, SipError::ConflictingContentLength { .. }));
        assert_eq!(parse(b"\r\n\r\n").unwrap_err(), SipError::Empty);
        assert_eq!(
            parse(b"OPTIONS sip:a@b SIP/2.0\r\nTo: x\r\n").unwrap_err(),
            SipError::IncompleteHeaders
        );
        let e = parse(b"OPTIONS sip:a@b SIP/3.0\r\n\r\n").unwrap_err();
        assert_eq!(e.response_status(), Some(505));
        let e = parse(b"OPTIONS sip:a@b HTTP/1.1\r\n\r\n").unwrap_err();
        assert_eq!(e.response_status(), Some(400));
        let e = parse(b"OPTIONS sip:a@b SIP/2.0\r\nBad Name: x\r\n\r\n").unwrap_err();
        assert!(matches!(e, SipError::BadHeaderLine { line: 2, .. }));
    }

    #[test]
    fn token_lists_and_identity_headers() {
        let raw = b"OPTIONS sip:a@b SIP/2.0\r\nSupported: 100rel, timer\r\nk: replaces\r\nAllow: INVITE,,ACK\r\n\
P-Asserted-Identity: \"Alice, A\" <sip:+14085550100@c.example.net>, <tel:+14085550100>\r\n\
Diversion: <sip:+14155550000@c.example.net>;reason=unconditional;counter=1\r\n\
Remote-Party-ID: \"A\" <sip:+1408@c>;party=calling;screen=yes;privacy=off\r\nContact: *\r\n\r\n";
        let m = parse(raw).unwrap();
        let sup: Result<Vec<_>, _> = m.supported().collect();
        assert_eq!(sup.unwrap(), vec!["100rel", "timer", "replaces"]);
        assert!(m.allow().any(|r| r.is_err()));
        let pai: Vec<_> = m.p_asserted_identity().map(|r| r.unwrap()).collect();
        assert_eq!(pai.len(), 2);
        assert_eq!(pai[0].display_name().as_deref(), Some("Alice, A"));
        assert_eq!(pai[1].uri.user_or_number(), Some("+14085550100"));
        let div = m.diversion().next().unwrap().unwrap();
        assert_eq!(div.params.value("reason"), Some("unconditional"));
        let rpid = m.remote_party_id().next().unwrap().unwrap();
        assert_eq!(rpid.params.value("party"), Some("calling"));
        assert_eq!(m.contacts().next(), Some(Ok(ContactValue::Wildcard)));
        assert_eq!(m.contact(), Ok(None));
    }

    #[test]
    fn many_headers_spill_and_cap() {
        let mut raw = b"OPTIONS sip:a@b SIP/2.0\r\n".to_vec();
        for i in 0..100 {
            raw.extend_from_slice(format!("Via: SIP/2.0/UDP h{i}\r\n").as_bytes());
        }
        raw.extend_from_slice(b"\r\n");
        let m = parse(&raw).unwrap();
        assert_eq!(m.vias().count(), 100);
        assert_eq!(m.vias().last().unwrap().unwrap().host.to_string(), "h99");
        let mut big = b"OPTIONS sip:a@b SIP/2.0\r\n".to_vec();
        for _ in 0..=MAX_HEADERS {
            big.extend_from_slice(b"X: y\r\n");
        }
        big.extend_from_slice(b"\r\n");
        assert!(matches!(parse(&big), Err(SipError::TooManyHeaders { .. })));
    }
}
