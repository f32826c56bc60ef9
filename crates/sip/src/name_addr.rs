//! `name-addr` / `addr-spec` with header parameters: From, To, Contact, Route,
//! Record-Route, P-Asserted-Identity, Remote-Party-ID, Diversion (RFC 3261 §20.10).

use std::borrow::Cow;

use crate::lex::{self, Cursor};
use crate::params::Params;
use crate::uri::Uri;

/// An address with optional display name and header parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NameAddr<'a> {
    /// The display name as written: the inside of the quotes for a quoted string (escapes
    /// kept), or the run of tokens. See [`NameAddr::display_name`].
    pub display_name_raw: Option<&'a str>,
    /// Whether the display name was a quoted string.
    pub display_name_quoted: bool,
    /// The URI.
    pub uri: Uri<'a>,
    /// The URI text as written.
    pub uri_text: &'a str,
    /// Whether the URI was enclosed in `<...>` (name-addr form).
    pub bracketed: bool,
    /// Header parameters after the address (`tag`, `q`, `expires`, ...).
    pub params: Params<'a>,
}

impl<'a> NameAddr<'a> {
    /// Parses one address value (a list element already split off).
    pub fn parse(value: &'a str) -> Result<NameAddr<'a>, &'static str> {
        let mut c = Cursor::new(value);
        c.skip_lws();
        let mut display_name_raw = None;
        let mut display_name_quoted = false;
        let bracketed;
        let uri_text;
        if c.peek() == Some(b'"') {
            let quoted = c
                .quoted_string()
                .ok_or("unterminated quoted display name")?;
            display_name_raw = quoted.get(1..quoted.len() - 1);
            display_name_quoted = true;
            c.skip_lws();
            if c.peek() != Some(b'<') {
                return Err("display name not followed by <");
            }
            uri_text = bracketed_uri(&mut c)?;
            bracketed = true;
        } else {
            let rest = c.rest();
            let lt = memchr::memchr(b'<', rest.as_bytes());
            let semi = memchr::memchr(b';', rest.as_bytes());
            match lt {
                Some(lt) if semi.is_none_or(|s| lt < s) => {
                    let name = lex::trim_lws(&rest[..lt]);
                    // Tokens and LWS per RFC 3261 §25.1; UTF-8 (octets >= 0x80) is tolerated
                    // too: carriers send unquoted non-ASCII names, and nothing a proxy or the
                    // list splitter relies on (quotes, commas, brackets) can hide in them.
                    if !name
                        .bytes()
                        .all(|b| lex::is_token_byte(b) || lex::is_lws(b) || b >= 0x80)
                    {
                        return Err("display name is neither tokens nor a quoted string");
                    }
                    if !name.is_empty() {
                        display_name_raw = Some(name);
                    }
                    c.reset_to(c.pos() + lt);
                    uri_text = bracketed_uri(&mut c)?;
                    bracketed = true;
                }
                _ => {
                    // addr-spec: the URI ends at the first ';'; what follows are header
                    // parameters. A URI holding ',', '?' or ';' must be bracketed (§20).
                    let end = semi.unwrap_or(rest.len());
                    let text = lex::trim_lws(&rest[..end]);
                    if text.bytes().any(|b| b == b'?' || b == b',') {
                        return Err("URI with ? or , must be enclosed in <>");
                    }
                    uri_text = text;
                    c.reset_to(c.pos() + end);
                    bracketed = false;
                }
            }
        }
        let uri = Uri::parse(uri_text)?;
        let params = Params::parse_header(&mut c)?;
        c.skip_lws();
        if !c.at_end() {
            return Err("unexpected text after address");
        }
        Ok(NameAddr {
            display_name_raw,
            display_name_quoted,
            uri,
            uri_text,
            bracketed,
            params,
        })
    }

    /// The display name with quoted-pair escapes removed.
    pub fn display_name(&self) -> Option<Cow<'a, str>> {
        let raw = self.display_name_raw?;
        if self.display_name_quoted {
            Some(lex::unquote_inner(raw))
        } else {
            Some(Cow::Borrowed(raw))
        }
    }

    /// The `tag` parameter (From/To dialog identifiers).
    pub fn tag(&self) -> Option<&'a str> {
        self.params.value("tag")
    }
}

/// Reads `<uri>` at the cursor (on `<`) and returns the URI text; rejects white space just
/// inside the brackets (RFC 4475 §3.1.2.14: `< sip:... >` is not an addr-spec).
fn bracketed_uri<'a>(c: &mut Cursor<'a>) -> Result<&'a str, &'static str> {
    if !c.eat(b'<') {
        return Err("expected <");
    }
    let start = c.pos();
    let inner = c.take_while(|b| b != b'>');
    if !c.eat(b'>') {
        return Err("missing >");
    }
    if inner.is_empty() {
        return Err("empty <>");
    }
    if inner.bytes().any(lex::is_lws) {
        return Err("white space inside <>");
    }
    Ok(c.slice(start, start + inner.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        let a = NameAddr::parse(
            r#""J Rosenberg \\\""       <sip:jdrosen@example.com>
  ;
  tag = 98asjd8"#,
        )
        .unwrap();
        assert_eq!(a.display_name().as_deref(), Some(r#"J Rosenberg \""#));
        assert_eq!(a.tag(), Some("98asjd8"));
        assert!(a.bracketed);

        let u = NameAddr::parse("José Müller <sip:j@example.com>").unwrap();
        assert_eq!(u.display_name().as_deref(), Some("José Müller"));

        let b = NameAddr::parse("caller<sip:caller@example.com>;tag=323").unwrap();
        assert_eq!(b.display_name().as_deref(), Some("caller"));
        assert_eq!(b.uri_text, "sip:caller@example.com");

        let c = NameAddr::parse("sip:+19725552222@gw1.example.net;unknownparam").unwrap();
        assert!(!c.bracketed);
        assert!(c.params.contains("unknownparam"));
        assert!(c.uri.params().is_empty());

        let d = NameAddr::parse("<sip:+19725552222@gw1.example.net;unknownparam>").unwrap();
        assert!(d.params.is_empty());
        assert!(d.uri.params().contains("unknownparam"));
    }

    #[test]
    fn torture_rejections() {
        assert!(NameAddr::parse(r#""Mr. J. User <sip:j.user@example.com>"#).is_err());
        assert!(NameAddr::parse("Bell, Alexander <sip:a.g.bell@example.com>;tag=43").is_err());
        assert!(NameAddr::parse(r#""Watson, Thomas" < sip:t.watson@example.org >"#).is_err());
        assert!(NameAddr::parse("sip:user@example.com?Route=%3Csip:sip.example.com%3E").is_err());
        assert!(NameAddr::parse(r#""Joe" <sip:joe@example.org>;;;;"#).is_err());
        assert!(NameAddr::parse("<sip:a@b> junk").is_err());
    }
}
