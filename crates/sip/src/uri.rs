//! URIs: `sip:`/`sips:` (RFC 3261 §19.1), `tel:` (RFC 3966) and any other scheme as an opaque
//! absolute URI, so the caller can answer 416 instead of 400.
//!
//! Parsing borrows from the message; escapes (`%HH`) are kept as sent and decoded on request
//! ([`percent_decode`]), since RFC 3261 §19.1.4 compares URIs on decoded values but a proxy
//! must forward them unchanged.

use std::borrow::Cow;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::lex;
use crate::params::Params;

/// A parsed URI borrowing its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Uri<'a> {
    /// `sip:` or `sips:`.
    Sip(SipUri<'a>),
    /// `tel:`.
    Tel(TelUri<'a>),
    /// Any other scheme: kept opaque (`scheme`, text after the colon).
    Absolute(AbsoluteUri<'a>),
}

/// A `sip:`/`sips:` URI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SipUri<'a> {
    /// `true` for `sips:`.
    pub secure: bool,
    /// The user part as sent (escapes kept); may contain `;` (RFC 4475 §3.1.1.9).
    pub user: Option<&'a str>,
    /// The password as sent.
    pub password: Option<&'a str>,
    /// The host.
    pub host: Host<'a>,
    /// The port, when given.
    pub port: Option<u16>,
    /// `;name=value` URI parameters (raw text from the first `;`).
    pub params: Params<'a>,
    /// The headers after `?`, raw (`name=value&...`), never turned into real headers.
    pub headers: Option<&'a str>,
}

/// A `tel:` URI (RFC 3966).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TelUri<'a> {
    /// The number with its visual separators, e.g. `+1-415-555-0123`.
    pub number: &'a str,
    /// `;phone-context=...` and other parameters, raw.
    pub params: Params<'a>,
}

/// A URI of a scheme this crate does not interpret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbsoluteUri<'a> {
    pub scheme: &'a str,
    /// Everything after `scheme:`.
    pub opaque: &'a str,
}

/// A host: a domain name, an IPv4 address or an IPv6 reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Host<'a> {
    Domain(&'a str),
    Ipv4(Ipv4Addr),
    /// The text between the brackets, and the address when it is a valid IPv6 address.
    /// RFC 5118 §4.10 asks implementations to tolerate the three-colon form RFC 3261's ABNF
    /// allowed, so an unparsable-but-plausible reference is kept with `addr: None`.
    Ipv6 {
        text: &'a str,
        addr: Option<Ipv6Addr>,
    },
}

impl<'a> Host<'a> {
    /// Parses a host as it appears in a URI or Via sent-by (IPv6 with brackets).
    pub fn parse(s: &'a str) -> Result<Host<'a>, &'static str> {
        if let Some(inner) = s.strip_prefix('[') {
            let text = inner.strip_suffix(']').ok_or("IPv6 reference without ]")?;
            return Self::ipv6_text(text);
        }
        Self::parse_unbracketed(s)
    }

    /// Parses a host that may be an unbracketed IPv6 address (Via `received`, RFC 5118 §4.5).
    pub fn parse_lenient(s: &'a str) -> Result<Host<'a>, &'static str> {
        if s.starts_with('[') {
            return Self::parse(s);
        }
        if s.contains(':') {
            return Self::ipv6_text(s);
        }
        Self::parse_unbracketed(s)
    }

    fn ipv6_text(text: &'a str) -> Result<Host<'a>, &'static str> {
        let plausible = !text.is_empty()
            && text.contains(':')
            && text
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
        if !plausible {
            return Err("malformed IPv6 reference");
        }
        Ok(Host::Ipv6 {
            text,
            addr: text.parse().ok(),
        })
    }

    fn parse_unbracketed(s: &'a str) -> Result<Host<'a>, &'static str> {
        if s.is_empty() {
            return Err("empty host");
        }
        let bytes = s.as_bytes();
        if bytes.iter().all(|b| b.is_ascii_digit() || *b == b'.') {
            // RFC 3261 toplabels start with a letter, so a dotted-digit host must be IPv4.
            return parse_ipv4(s)
                .map(Host::Ipv4)
                .ok_or("numeric host is not an IPv4 address (IPv6 needs [brackets])");
        }
        // Underscores are not in the ABNF but do occur in deployed host names.
        if bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
            && bytes[0] != b'.'
            && bytes[0] != b'-'
        {
            Ok(Host::Domain(s))
        } else {
            Err("malformed host name")
        }
    }

    /// The IP address, when the host is one (valid IPv6 only).
    pub fn ip(&self) -> Option<IpAddr> {
        match *self {
            Host::Domain(_) => None,
            Host::Ipv4(a) => Some(IpAddr::V4(a)),
            Host::Ipv6 { addr, .. } => addr.map(IpAddr::V6),
        }
    }
}

impl fmt::Display for Host<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Domain(d) => f.write_str(d),
            Host::Ipv4(a) => write!(f, "{a}"),
            Host::Ipv6 { text, .. } => write!(f, "[{text}]"),
        }
    }
}

impl<'a> Uri<'a> {
    /// Parses a complete URI (Request-URI, or the text inside `<...>`). Fails on white
    /// space, control characters and malformed `sip`/`tel` syntax; any other well-formed
    /// `scheme:` parses as [`Uri::Absolute`].
    pub fn parse(s: &'a str) -> Result<Uri<'a>, &'static str> {
        if s.is_empty() {
            return Err("empty URI");
        }
        if !s.bytes().all(|b| (0x21..0x7f).contains(&b)) {
            return Err("white space or non-ASCII in URI");
        }
        let colon = memchr::memchr(b':', s.as_bytes()).ok_or("URI without scheme")?;
        let (scheme, rest) = (&s[..colon], &s[colon + 1..]);
        let sb = scheme.as_bytes();
        let scheme_ok = sb.first().is_some_and(u8::is_ascii_alphabetic)
            && sb
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'));
        if !scheme_ok {
            return Err("malformed URI scheme");
        }
        if scheme.eq_ignore_ascii_case("sip") {
            SipUri::parse_rest(rest, false).map(Uri::Sip)
        } else if scheme.eq_ignore_ascii_case("sips") {
            SipUri::parse_rest(rest, true).map(Uri::Sip)
        } else if scheme.eq_ignore_ascii_case("tel") {
            TelUri::parse_rest(rest).map(Uri::Tel)
        } else if rest.is_empty() {
            Err("empty URI after scheme")
        } else {
            Ok(Uri::Absolute(AbsoluteUri {
                scheme,
                opaque: rest,
            }))
        }
    }

    /// The scheme as written (`sip`, `sips`, `tel`, or the opaque scheme).
    pub fn scheme(&self) -> &'a str {
        match self {
            Uri::Sip(u) if u.secure => "sips",
            Uri::Sip(_) => "sip",
            Uri::Tel(_) => "tel",
            Uri::Absolute(a) => a.scheme,
        }
    }

    /// The SIP URI, if this is one.
    pub fn as_sip(&self) -> Option<&SipUri<'a>> {
        match self {
            Uri::Sip(u) => Some(u),
            _ => None,
        }
    }

    /// The user part of a SIP URI or the number of a tel URI: the "who" a gateway routes on.
    pub fn user_or_number(&self) -> Option<&'a str> {
        match self {
            Uri::Sip(u) => u.user,
            Uri::Tel(t) => Some(t.number),
            Uri::Absolute(_) => None,
        }
    }

    /// URI parameters (`sip`/`tel`); empty for opaque URIs.
    pub fn params(&self) -> Params<'a> {
        match self {
            Uri::Sip(u) => u.params,
            Uri::Tel(t) => t.params,
            Uri::Absolute(_) => Params::empty(),
        }
    }
}

impl<'a> SipUri<'a> {
    fn parse_rest(rest: &'a str, secure: bool) -> Result<SipUri<'a>, &'static str> {
        // '@' may not appear unescaped after the userinfo (hvalue and paramchar exclude it),
        // so the first '@' ends the userinfo even when the user part holds ';' or '?'.
        let (userinfo, hostpart) = match memchr::memchr(b'@', rest.as_bytes()) {
            Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
            None => (None, rest),
        };
        let (user, password) = match userinfo {
            None => (None, None),
            Some(ui) => {
                let (user, password) = match memchr::memchr(b':', ui.as_bytes()) {
                    Some(c) => (&ui[..c], Some(&ui[c + 1..])),
                    None => (ui, None),
                };
                if user.is_empty() || !user.bytes().all(lex::is_uri_user_byte) {
                    return Err("malformed user part");
                }
                if let Some(p) = password {
                    if !p.bytes().all(lex::is_uri_password_byte) {
                        return Err("malformed password");
                    }
                }
                if !lex::escapes_well_formed(ui.as_bytes()) {
                    return Err("malformed %-escape in user part");
                }
                (Some(user), password)
            }
        };
        let hb = hostpart.as_bytes();
        let host_end = if hb.first() == Some(&b'[') {
            memchr::memchr(b']', hb).ok_or("IPv6 reference without ]")? + 1
        } else {
            hb.iter()
                .position(|b| matches!(b, b':' | b';' | b'?'))
                .unwrap_or(hb.len())
        };
        let host = Host::parse(&hostpart[..host_end])?;
        let mut rest = &hostpart[host_end..];
        let mut port = None;
        if let Some(after) = rest.strip_prefix(':') {
            let end = after
                .bytes()
                .position(|b| !b.is_ascii_digit())
                .unwrap_or(after.len());
            port = Some(parse_port(&after[..end]).ok_or("malformed port")?);
            rest = &after[end..];
        }
        let (params_text, headers) = match memchr::memchr(b'?', rest.as_bytes()) {
            Some(q) => (&rest[..q], Some(&rest[q + 1..])),
            None => (rest, None),
        };
        if !params_text.is_empty() {
            if !params_text.starts_with(';') {
                return Err("unexpected text after host");
            }
            if !params_text.bytes().all(lex::is_uri_params_byte)
                || !lex::escapes_well_formed(params_text.as_bytes())
            {
                return Err("malformed URI parameter");
            }
        }
        let params = Params::parse(params_text).map_err(|_| "malformed URI parameter")?;
        if let Some(h) = headers {
            if h.is_empty()
                || !h.bytes().all(lex::is_uri_headers_byte)
                || !lex::escapes_well_formed(h.as_bytes())
            {
                return Err("malformed URI headers");
            }
        }
        Ok(SipUri {
            secure,
            user,
            password,
            host,
            port,
            params,
            headers,
        })
    }

    /// The user part with `%HH` escapes decoded (RFC 4475 §3.1.1.3/§3.1.1.4: `%00` stays a
    /// NUL octet and does not truncate).
    pub fn user_decoded(&self) -> Option<Cow<'a, [u8]>> {
        self.user.map(percent_decode)
    }

    /// `true` when `;user=phone` marks the user part as a telephone number (RFC 3261 §19.1.1).
    pub fn is_phone(&self) -> bool {
        self.params
            .get("user")
            .flatten()
            .is_some_and(|v| v.eq_ignore_ascii_case("phone"))
    }
}

impl<'a> TelUri<'a> {
    fn parse_rest(rest: &'a str) -> Result<TelUri<'a>, &'static str> {
        let end = memchr::memchr(b';', rest.as_bytes()).unwrap_or(rest.len());
        let number = &rest[..end];
        // global-number: "+" digits; local-number: hex digits, "*" and "#"; both may carry
        // the visual separators "-", ".", "(", ")".
        let (digits, allowed): (&str, fn(u8) -> bool) = match number.strip_prefix('+') {
            Some(d) => (d, |b| b.is_ascii_digit()),
            None => (number, |b| b.is_ascii_hexdigit() || b == b'*' || b == b'#'),
        };
        let ok = digits.bytes().any(allowed)
            && digits
                .bytes()
                .all(|b| allowed(b) || matches!(b, b'-' | b'.' | b'(' | b')'));
        if !ok {
            return Err("malformed telephone number");
        }
        let params_text = &rest[end..];
        if !params_text.bytes().all(lex::is_uri_params_byte)
            || !lex::escapes_well_formed(params_text.as_bytes())
        {
            return Err("malformed tel parameter");
        }
        let params = Params::parse(params_text).map_err(|_| "malformed tel parameter")?;
        Ok(TelUri { number, params })
    }
}

impl fmt::Display for Uri<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Uri::Sip(u) => write!(f, "{u}"),
            Uri::Tel(t) => write!(f, "tel:{}{}", t.number, t.params.as_str()),
            Uri::Absolute(a) => write!(f, "{}:{}", a.scheme, a.opaque),
        }
    }
}

impl fmt::Display for SipUri<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.secure { "sips:" } else { "sip:" })?;
        if let Some(user) = self.user {
            f.write_str(user)?;
            if let Some(p) = self.password {
                write!(f, ":{p}")?;
            }
            f.write_str("@")?;
        }
        write!(f, "{}", self.host)?;
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        f.write_str(self.params.as_str())?;
        if let Some(h) = self.headers {
            write!(f, "?{h}")?;
        }
        Ok(())
    }
}

/// Dotted-quad IPv4 (four decimal octets, no leading zeros, as `Ipv4Addr::from_str`
/// accepts), without the generic address parser's overhead.
fn parse_ipv4(s: &str) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut parts = s.split('.');
    for octet in &mut octets {
        let part = parts.next()?;
        if part.is_empty() || part.len() > 3 || (part.len() > 1 && part.starts_with('0')) {
            return None;
        }
        let mut n: u16 = 0;
        for b in part.bytes() {
            if !b.is_ascii_digit() {
                return None;
            }
            n = n * 10 + u16::from(b - b'0');
        }
        *octet = u8::try_from(n).ok()?;
    }
    parts.next().is_none().then_some(Ipv4Addr::from(octets))
}

/// Parses a decimal port (1 to 5 digits, at most 65535).
pub(crate) fn parse_port(s: &str) -> Option<u16> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Decodes `%HH` escapes; malformed escapes are kept literally. Borrows when there is
/// nothing to decode.
pub fn percent_decode(s: &str) -> Cow<'_, [u8]> {
    let bytes = s.as_bytes();
    if memchr::memchr(b'%', bytes).is_none() {
        return Cow::Borrowed(bytes);
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            if let (Some(h), Some(l)) = (
                bytes.get(i + 1).and_then(|b| hex_val(*b)),
                bytes.get(i + 2).and_then(|b| hex_val(*b)),
            ) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    Cow::Owned(out)
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sip(s: &str) -> SipUri<'_> {
        match Uri::parse(s) {
            Ok(Uri::Sip(u)) => u,
            other => panic!("{s}: {other:?}"),
        }
    }

    #[test]
    fn sip_uri_parts() {
        let u = sip("sip:alice:pw@example.com:5070;transport=tcp;lr?subject=hi&x=y");
        assert_eq!(u.user, Some("alice"));
        assert_eq!(u.password, Some("pw"));
        assert_eq!(u.host, Host::Domain("example.com"));
        assert_eq!(u.port, Some(5070));
        assert_eq!(u.params.get("transport"), Some(Some("tcp")));
        assert_eq!(u.params.get("lr"), Some(None));
        assert_eq!(u.headers, Some("subject=hi&x=y"));
        assert_eq!(
            u.to_string(),
            "sip:alice:pw@example.com:5070;transport=tcp;lr?subject=hi&x=y"
        );
    }

    #[test]
    fn user_part_with_semicolon_and_escapes() {
        let u = sip("sip:user;par=u%40example.net@example.com");
        assert_eq!(u.user, Some("user;par=u%40example.net"));
        assert_eq!(
            u.user_decoded().as_deref(),
            Some(&b"user;par=u@example.net"[..])
        );
        let n = sip("sip:null-%00-null@example.com");
        assert_eq!(n.user_decoded().as_deref(), Some(&b"null-\0-null"[..]));
    }

    #[test]
    fn phone_users_and_tel() {
        let u = sip("sip:+16505552222@ss1.example.net;user=phone");
        assert!(u.is_phone());
        match Uri::parse("tel:+1-415-555-0123;phone-context=example.com") {
            Ok(Uri::Tel(t)) => {
                assert_eq!(t.number, "+1-415-555-0123");
                assert_eq!(t.params.get("phone-context"), Some(Some("example.com")));
            }
            other => panic!("{other:?}"),
        }
        assert!(Uri::parse("tel:").is_err());
        assert!(Uri::parse("tel:+1 415").is_err());
    }

    #[test]
    fn ip_hosts() {
        let u = sip("sip:[2001:db8::1]:5060");
        assert_eq!(u.port, Some(5060));
        assert_eq!(u.host.ip(), Some("2001:db8::1".parse().unwrap()));
        let amb = sip("sip:[2001:db8::10:5070]");
        assert_eq!(amb.port, None);
        assert_eq!(amb.host.ip(), Some("2001:db8::10:5070".parse().unwrap()));
        let three = sip("sip:user@[2001:db8:::192.0.2.1]");
        assert!(matches!(three.host, Host::Ipv6 { addr: None, .. }));
        assert_eq!(
            sip("sip:192.0.2.1").host,
            Host::Ipv4(Ipv4Addr::new(192, 0, 2, 1))
        );
        assert!(Uri::parse("sip:2001:db8::10").is_err());
        assert!(Uri::parse("sip:999.1.1.1").is_err());
        assert!(Uri::parse("sip:1.2.3").is_err());
        assert!(Uri::parse("sip:1.2.3.4.5").is_err());
        assert!(Uri::parse("sip:01.2.3.4").is_err());
        assert_eq!(parse_ipv4("255.0.10.1"), Some(Ipv4Addr::new(255, 0, 10, 1)));
    }

    #[test]
    fn other_schemes_are_opaque() {
        match Uri::parse("soap.beep://192.0.2.103:3002") {
            Ok(Uri::Absolute(a)) => {
                assert_eq!(a.scheme, "soap.beep");
                assert_eq!(a.opaque, "//192.0.2.103:3002");
            }
            other => panic!("{other:?}"),
        }
        assert!(Uri::parse("<sip:user@example.com>").is_err());
        assert!(Uri::parse("sip:user@example.com; lr").is_err());
    }
}
