//! Byte-level lexing shared by the typed header views (RFC 3261 §25.1).
//!
//! Header values keep their folds (`CRLF` + `SP`), so everything here treats `SP`, `HT`, `CR`
//! and `LF` inside a value as linear white space: the message indexer already proved that
//! every line break inside a value is a fold.

use std::borrow::Cow;

/// Builds a 256-entry membership table from a list of extra (non-alphanumeric) bytes.
const fn table(extra: &[u8]) -> [bool; 256] {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric();
        b += 1;
    }
    let mut i = 0;
    while i < extra.len() {
        t[extra[i] as usize] = true;
        i += 1;
    }
    t
}

/// `token` characters: alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~".
static TOKEN: [bool; 256] = table(b"-.!%*_+`'~");
/// Characters of a generic parameter value that is not quoted: token / host (IPv6 references
/// bring `[`, `]` and `:`; RFC 5118 §4.5 allows unbracketed IPv6 in `received`).
static GEN_VALUE: [bool; 256] = table(b"-.!%*_+`'~[]:");
/// `unreserved` / `user-unreserved` / `%` (escapes are checked separately) in a URI user part.
static URI_USER: [bool; 256] = table(b"-_.!~*'()&=+$,;?/%");
/// Password characters: unreserved / escaped / "&" / "=" / "+" / "$" / ",".
static URI_PASSWORD: [bool; 256] = table(b"-_.!~*'()&=+$,%");
/// `paramchar` plus the `;`/`=` separators: param-unreserved / unreserved / escaped.
static URI_PARAMS: [bool; 256] = table(b"[]/:&+$-_.!~*'()%;=");
/// `hname`/`hvalue` characters plus the `=`/`&` separators.
static URI_HEADERS: [bool; 256] = table(b"[]/?:+$-_.!~*'()%=&");

#[inline]
pub(crate) fn is_token_byte(b: u8) -> bool {
    TOKEN[b as usize]
}

#[inline]
pub(crate) fn is_gen_value_byte(b: u8) -> bool {
    GEN_VALUE[b as usize]
}

#[inline]
pub(crate) fn is_uri_user_byte(b: u8) -> bool {
    URI_USER[b as usize]
}

#[inline]
pub(crate) fn is_uri_password_byte(b: u8) -> bool {
    URI_PASSWORD[b as usize]
}

#[inline]
pub(crate) fn is_uri_params_byte(b: u8) -> bool {
    URI_PARAMS[b as usize]
}

#[inline]
pub(crate) fn is_uri_headers_byte(b: u8) -> bool {
    URI_HEADERS[b as usize]
}

/// Linear white space inside an already indexed header value (folds included).
#[inline]
pub(crate) fn is_lws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// True when `s` is a non-empty `token`.
pub(crate) fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&b| is_token_byte(b))
}

/// Checks that every `%` in `s` starts a `%HH` escape.
pub(crate) fn escapes_well_formed(s: &[u8]) -> bool {
    let mut i = 0;
    while let Some(off) = memchr::memchr(b'%', &s[i..]) {
        let p = i + off;
        match (s.get(p + 1), s.get(p + 2)) {
            (Some(a), Some(b)) if a.is_ascii_hexdigit() && b.is_ascii_hexdigit() => i = p + 3,
            _ => return false,
        }
    }
    true
}

/// Trims linear white space (folds included) from both ends.
pub(crate) fn trim_lws(s: &str) -> &str {
    s.trim_matches(|c: char| c.is_ascii() && is_lws(c as u8))
}

/// A forward-only cursor over a header value.
#[derive(Debug, Clone)]
pub(crate) struct Cursor<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(s: &'a str) -> Self {
        Cursor { s, pos: 0 }
    }

    #[inline]
    pub(crate) fn peek(&self) -> Option<u8> {
        self.s.as_bytes().get(self.pos).copied()
    }

    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    /// Moves back to a position previously read from [`Cursor::pos`].
    pub(crate) fn reset_to(&mut self, pos: usize) {
        self.pos = pos.min(self.s.len());
    }

    pub(crate) fn at_end(&self) -> bool {
        self.pos >= self.s.len()
    }

    /// The unread remainder.
    pub(crate) fn rest(&self) -> &'a str {
        self.s.get(self.pos..).unwrap_or("")
    }

    /// The text between two positions of this cursor (both at char boundaries by construction).
    pub(crate) fn slice(&self, from: usize, to: usize) -> &'a str {
        self.s.get(from..to).unwrap_or("")
    }

    /// Skips linear white space; returns whether any was skipped.
    pub(crate) fn skip_lws(&mut self) -> bool {
        let start = self.pos;
        while let Some(b) = self.peek() {
            if !is_lws(b) {
                break;
            }
            self.pos += 1;
        }
        self.pos > start
    }

    /// Consumes `b` if it is next.
    pub(crate) fn eat(&mut self, b: u8) -> bool {
        if self.peek() == Some(b) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    /// Skips white space, then consumes `b` if it is next (SWS-delimited separators).
    pub(crate) fn eat_sep(&mut self, b: u8) -> bool {
        let save = self.pos;
        self.skip_lws();
        if self.eat(b) {
            true
        } else {
            self.pos = save;
            false
        }
    }

    /// Consumes the longest run of bytes satisfying `pred` (ASCII predicates only, so the
    /// cut is always at a char boundary).
    pub(crate) fn take_while(&mut self, pred: impl Fn(u8) -> bool) -> &'a str {
        let start = self.pos;
        let bytes = self.s.as_bytes();
        while self.pos < bytes.len() && pred(bytes[self.pos]) {
            self.pos += 1;
        }
        self.slice(start, self.pos)
    }

    /// Consumes a non-empty token.
    pub(crate) fn token(&mut self) -> Option<&'a str> {
        let t = self.take_while(is_token_byte);
        (!t.is_empty()).then_some(t)
    }

    /// Consumes a quoted string (the cursor is on the opening quote) and returns it with its
    /// quotes; `None` when it is not terminated.
    pub(crate) fn quoted_string(&mut self) -> Option<&'a str> {
        let start = self.pos;
        if !self.eat(b'"') {
            return None;
        }
        let bytes = self.s.as_bytes();
        while self.pos < bytes.len() {
            match bytes[self.pos] {
                b'\\' => self.pos += 2,
                b'"' => {
                    self.pos += 1;
                    return Some(self.slice(start, self.pos));
                }
                _ => self.pos += 1,
            }
        }
        self.pos = start;
        None
    }
}

/// Iterator over the comma-separated elements of a list header value. Commas inside quoted
/// strings and inside `<...>` do not split. Elements are trimmed; an empty element is yielded
/// as `""` so the typed parser can reject it; an entirely empty value yields nothing.
#[derive(Debug, Clone)]
pub(crate) struct ListSplit<'a> {
    rest: Option<&'a str>,
}

impl<'a> ListSplit<'a> {
    pub(crate) fn new(value: &'a str) -> Self {
        let value = trim_lws(value);
        ListSplit {
            rest: (!value.is_empty()).then_some(value),
        }
    }
}

impl<'a> Iterator for ListSplit<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let s = self.rest?;
        let bytes = s.as_bytes();
        let mut in_quotes = false;
        let mut in_angle = false;
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            if in_quotes {
                match b {
                    b'\\' => i += 1,
                    b'"' => in_quotes = false,
                    _ => {}
                }
            } else if in_angle {
                if b == b'>' {
                    in_angle = false;
                }
            } else {
                match b {
                    b'"' => in_quotes = true,
                    b'<' => in_angle = true,
                    b',' => {
                        self.rest = Some(s.get(i + 1..).unwrap_or(""));
                        return Some(trim_lws(s.get(..i).unwrap_or("")));
                    }
                    _ => {}
                }
            }
            i += 1;
        }
        self.rest = None;
        Some(trim_lws(s))
    }
}

/// Removes the quotes and quoted-pair backslashes of a quoted string; other text is returned
/// as it is.
pub(crate) fn unquote(s: &str) -> Cow<'_, str> {
    match s.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        Some(inner) => unquote_inner(inner),
        None => Cow::Borrowed(s),
    }
}

/// Removes quoted-pair backslashes from the inside of a quoted string.
pub(crate) fn unquote_inner(inner: &str) -> Cow<'_, str> {
    if !inner.contains('\\') {
        return Cow::Borrowed(inner);
    }
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_split_respects_quotes_and_brackets() {
        let parts: Vec<_> =
            ListSplit::new(r#""a, b" <sip:x@y;p=1,2>;q=1 , <sip:z>,"q\",x" <sip:w>"#).collect();
        assert_eq!(
            parts,
            vec![
                r#""a, b" <sip:x@y;p=1,2>;q=1"#,
                "<sip:z>",
                r#""q\",x" <sip:w>"#
            ]
        );
        assert_eq!(ListSplit::new("  ").count(), 0);
        assert_eq!(
            ListSplit::new("a,,b").collect::<Vec<_>>(),
            vec!["a", "", "b"]
        );
    }

    #[test]
    fn quoted_strings() {
        let mut c = Cursor::new(r#""J Rosenberg \\\"" rest"#);
        assert_eq!(c.quoted_string(), Some(r#""J Rosenberg \\\"""#));
        assert_eq!(unquote(r#""J Rosenberg \\\"""#), r#"J Rosenberg \""#);
        let mut open = Cursor::new(r#""Mr. J. User <sip:j@x>"#);
        assert_eq!(open.quoted_string(), None);
        assert_eq!(open.pos(), 0);
    }

    #[test]
    fn escapes() {
        assert!(escapes_well_formed(b"a%20b%00"));
        assert!(!escapes_well_formed(b"a%2"));
        assert!(!escapes_well_formed(b"%ZK"));
    }
}
