//! Small typed header values: CSeq, Max-Forwards, Call-ID, Content-Type, Content-Length and
//! option-tag / method lists.

use std::fmt;

use crate::lex::{self, Cursor};
use crate::params::Params;

/// `CSeq: <seq> <method>` (RFC 3261 §20.16; the number must fit in 32 bits, §8.1.1.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CSeq<'a> {
    pub seq: u32,
    pub method: &'a str,
}

impl<'a> CSeq<'a> {
    pub fn parse(value: &'a str) -> Result<CSeq<'a>, &'static str> {
        let mut c = Cursor::new(value);
        c.skip_lws();
        let digits = c.take_while(|b| b.is_ascii_digit());
        let seq = parse_decimal(digits)
            .and_then(|n| u32::try_from(n).ok())
            .ok_or("sequence number is not a 32-bit decimal")?;
        if !c.skip_lws() {
            return Err("missing white space before method");
        }
        let method = c.token().ok_or("missing method")?;
        c.skip_lws();
        if !c.at_end() {
            return Err("unexpected text after method");
        }
        Ok(CSeq { seq, method })
    }
}

impl fmt::Display for CSeq<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.seq, self.method)
    }
}

/// Max-Forwards is an integer in 0..=255 (RFC 3261 §20.22).
pub fn parse_max_forwards(value: &str) -> Result<u8, &'static str> {
    let digits = lex::trim_lws(value);
    parse_decimal(digits)
        .and_then(|n| u8::try_from(n).ok())
        .ok_or("not an integer in 0..=255")
}

/// Content-Length: a non-negative decimal (RFC 3261 §20.14).
pub fn parse_content_length(value: &[u8]) -> Result<usize, &'static str> {
    let trimmed = trim_bytes(value);
    if trimmed.first() == Some(&b'-') {
        return Err("negative Content-Length");
    }
    std::str::from_utf8(trimmed)
        .ok()
        .and_then(parse_decimal)
        .and_then(|n| usize::try_from(n).ok())
        .ok_or("Content-Length is not a decimal number")
}

fn trim_bytes(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|b| !lex::is_lws(*b)).unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !lex::is_lws(*b))
        .map_or(start, |e| e + 1);
    &v[start..end]
}

/// Parses `1*DIGIT` into a u64; `None` when empty, not all digits, or overflowing.
pub(crate) fn parse_decimal(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.bytes().try_fold(0u64, |acc, b| {
        acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

/// Validates a Call-ID: `word [ "@" word ]` (RFC 3261 §25.1) where a word is visible ASCII.
pub fn parse_call_id(value: &str) -> Result<&str, &'static str> {
    let id = lex::trim_lws(value);
    if id.is_empty() {
        return Err("empty Call-ID");
    }
    if !id.bytes().all(|b| (0x21..0x7f).contains(&b)) {
        return Err("white space or non-ASCII in Call-ID");
    }
    let ok = match memchr::memchr(b'@', id.as_bytes()) {
        None => true,
        Some(at) => {
            at > 0 && at + 1 < id.len() && memchr::memchr(b'@', &id.as_bytes()[at + 1..]).is_none()
        }
    };
    if !ok {
        return Err("Call-ID is not word[@word]");
    }
    Ok(id)
}

/// `Content-Type: type/subtype;params` (RFC 3261 §20.15).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentType<'a> {
    pub media_type: &'a str,
    pub subtype: &'a str,
    pub params: Params<'a>,
}

impl<'a> ContentType<'a> {
    pub fn parse(value: &'a str) -> Result<ContentType<'a>, &'static str> {
        let mut c = Cursor::new(value);
        c.skip_lws();
        let media_type = c.token().ok_or("missing media type")?;
        if !c.eat_sep(b'/') {
            return Err("missing / in media type");
        }
        c.skip_lws();
        let subtype = c.token().ok_or("missing media subtype")?;
        let params = Params::parse_header(&mut c)?;
        c.skip_lws();
        if !c.at_end() {
            return Err("unexpected text after media type");
        }
        Ok(ContentType {
            media_type,
            subtype,
            params,
        })
    }

    /// Case-insensitive comparison with `type/subtype`, e.g. `is("application", "sdp")`.
    pub fn is(&self, media_type: &str, subtype: &str) -> bool {
        self.media_type.eq_ignore_ascii_case(media_type)
            && self.subtype.eq_ignore_ascii_case(subtype)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cseq() {
        assert_eq!(
            CSeq::parse("0009\r\n  INVITE").unwrap(),
            CSeq {
                seq: 9,
                method: "INVITE"
            }
        );
        assert_eq!(CSeq::parse("4294967295 ACK").unwrap().seq, u32::MAX);
        assert!(CSeq::parse("4294967296 ACK").is_err());
        assert!(CSeq::parse("36893488147419103232 REGISTER").is_err());
        assert!(CSeq::parse("1INVITE").is_err());
        assert!(CSeq::parse("1 INVITE x").is_err());
    }

    #[test]
    fn scalars() {
        assert_eq!(parse_max_forwards("0068"), Ok(68));
        assert!(parse_max_forwards("300").is_err());
        assert_eq!(parse_content_length(b" 150 "), Ok(150));
        assert!(parse_content_length(b"-999").is_err());
        assert!(parse_content_length(b"").is_err());
        assert!(parse_content_length(b"99999999999999999999999").is_err());
        assert_eq!(parse_call_id(" a@b "), Ok("a@b"));
        assert!(parse_call_id("a@b@c").is_err());
        assert!(parse_call_id("a b").is_err());
    }

    #[test]
    fn content_type_and_lists() {
        let ct = ContentType::parse("multipart/mixed;boundary=7a9cbec02ceef655").unwrap();
        assert!(ct.is("Multipart", "MIXED"));
        assert_eq!(ct.params.value("boundary"), Some("7a9cbec02ceef655"));
    }
}
