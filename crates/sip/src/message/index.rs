//! The index `parse` builds: one pass over the start line and header lines records byte
//! ranges ([`Span`]s) and classified header names; nothing is copied or decoded.

use std::ops::Range;

use crate::error::SipError;
use crate::header::HeaderName;
use crate::lex;
use crate::values;

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
    pub(super) start: u32,
    pub(super) end: u32,
}

impl Span {
    pub(super) fn new(start: usize, end: usize) -> Span {
        // Callers check the buffer length fits u32 before indexing.
        Span {
            start: start as u32,
            end: end as u32,
        }
    }

    pub(super) fn range(self) -> Range<usize> {
        self.start as usize..self.end as usize
    }
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct HeaderEntry {
    pub(super) name: HeaderName,
    pub(super) name_span: Span,
    pub(super) value: Span,
}

const EMPTY_ENTRY: HeaderEntry = HeaderEntry {
    name: HeaderName::Other,
    name_span: Span { start: 0, end: 0 },
    value: Span { start: 0, end: 0 },
};

/// Header index: a fixed inline array, then a Vec for the rare long message.
#[derive(Debug, Clone)]
pub(crate) struct HeaderTable {
    pub(super) inline: [HeaderEntry; INLINE_HEADERS],
    pub(super) len: usize,
    pub(super) spill: Vec<HeaderEntry>,
}

pub(super) type EntryIter<'m> =
    std::iter::Chain<std::slice::Iter<'m, HeaderEntry>, std::slice::Iter<'m, HeaderEntry>>;

impl HeaderTable {
    pub(super) fn new() -> Self {
        HeaderTable {
            inline: [EMPTY_ENTRY; INLINE_HEADERS],
            len: 0,
            spill: Vec::new(),
        }
    }

    pub(super) fn push(&mut self, e: HeaderEntry) -> Result<(), SipError> {
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

    pub(super) fn last_mut(&mut self) -> Option<&mut HeaderEntry> {
        match self.len {
            0 => None,
            n if n <= INLINE_HEADERS => self.inline.get_mut(n - 1),
            _ => self.spill.last_mut(),
        }
    }

    pub(super) fn iter(&self) -> EntryIter<'_> {
        self.inline[..self.len.min(INLINE_HEADERS)]
            .iter()
            .chain(self.spill.iter())
    }

    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = &mut HeaderEntry> {
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
/// so an [`OwnedMessage`](super::OwnedMessage) keeps it next to its `Bytes`.
#[derive(Debug, Clone)]
pub(crate) struct Index {
    pub(super) start: StartSpans,
    pub(super) headers: HeaderTable,
    /// First octet of the start line (leading CRLFs skipped).
    pub(super) msg_start: u32,
    /// First octet after the empty line that ends the header section.
    pub(super) head_end: u32,
    pub(super) body: Span,
    pub(super) content_length: Option<usize>,
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
