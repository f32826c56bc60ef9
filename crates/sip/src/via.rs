//! The Via header (RFC 3261 §20.42, §18.2.2; RFC 3581 rport; RFC 5118 §4.5).

use std::fmt;

use crate::lex::Cursor;
use crate::params::Params;
use crate::uri::{parse_port, Host};

/// The RFC 3261 branch prefix (§8.1.1.7): a branch starting with it identifies the
/// transaction; without it, the RFC 2543 matching rules apply (§17.2.3).
pub const MAGIC_COOKIE: &str = "z9hG4bK";

/// One Via value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Via<'a> {
    /// Protocol name, `SIP` in practice.
    pub protocol: &'a str,
    /// Protocol version, `2.0` in practice.
    pub version: &'a str,
    /// Transport token as sent (`UDP`, `TCP`, `TLS`, `SCTP`, `WS`, or unknown; RFC 4475
    /// §3.1.1.10 keeps unknown transports as opaque tokens).
    pub transport: &'a str,
    /// sent-by host.
    pub host: Host<'a>,
    /// sent-by port.
    pub port: Option<u16>,
    /// via-params (`branch`, `received`, `rport`, `maddr`, `ttl`, extensions).
    pub params: Params<'a>,
}

/// The `rport` parameter (RFC 3581): a flag in requests, a value in responses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rport {
    /// `;rport`: the client asks for the source port to be echoed.
    Requested,
    /// `;rport=5060`.
    Port(u16),
}

/// Transports this crate knows by name (RFC 3261 §18, RFC 7118 for WS/WSS).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
    Sctp,
    Ws,
    Wss,
}

impl Transport {
    /// Case-insensitive lookup of a Via transport token.
    pub fn from_token(token: &str) -> Option<Transport> {
        [
            Transport::Udp,
            Transport::Tcp,
            Transport::Tls,
            Transport::Sctp,
            Transport::Ws,
            Transport::Wss,
        ]
        .into_iter()
        .find(|t| t.as_str().eq_ignore_ascii_case(token))
    }

    /// The token as written in a Via header.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
            Transport::Sctp => "SCTP",
            Transport::Ws => "WS",
            Transport::Wss => "WSS",
        }
    }

    /// Whether the transport frames messages in a byte stream (Content-Length mandatory,
    /// responses go back on the same connection).
    pub fn is_stream(self) -> bool {
        !matches!(self, Transport::Udp)
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<'a> Via<'a> {
    /// Parses one Via value (`SIP / 2.0 / UDP host:port;params`), white space and folds
    /// allowed around `/`, `:`, `;` and `=` as RFC 3261 §25.1 SWS rules say.
    pub fn parse(value: &'a str) -> Result<Via<'a>, &'static str> {
        let mut c = Cursor::new(value);
        c.skip_lws();
        let protocol = c.token().ok_or("missing protocol name")?;
        if !c.eat_sep(b'/') {
            return Err("missing / after protocol name");
        }
        c.skip_lws();
        let version = c.token().ok_or("missing protocol version")?;
        if !c.eat_sep(b'/') {
            return Err("missing / after protocol version");
        }
        c.skip_lws();
        let transport = c.token().ok_or("missing transport")?;
        if !c.skip_lws() {
            return Err("missing white space before sent-by");
        }
        let host_text = if c.peek() == Some(b'[') {
            let start = c.pos();
            c.take_while(|b| b != b']');
            if !c.eat(b']') {
                return Err("IPv6 reference without ]");
            }
            c.slice(start, c.pos())
        } else {
            c.take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        };
        let host = Host::parse(host_text)?;
        let port = if c.eat_sep(b':') {
            c.skip_lws();
            let digits = c.take_while(|b| b.is_ascii_digit());
            Some(parse_port(digits).ok_or("malformed sent-by port")?)
        } else {
            None
        };
        let params = Params::parse_header(&mut c)?;
        c.skip_lws();
        if !c.at_end() {
            return Err("unexpected text in Via");
        }
        let via = Via {
            protocol,
            version,
            transport,
            host,
            port,
            params,
        };
        // One pass over the parameters for the ones whose values have a syntax.
        for p in via.params.iter() {
            if p.name.eq_ignore_ascii_case("branch") {
                if p.value.is_none() {
                    return Err("branch parameter without value");
                }
            } else if p.name.eq_ignore_ascii_case("received") {
                let ok = p.value.is_some_and(|r| Host::parse_lenient(r).is_ok());
                if !ok {
                    return Err("malformed received parameter");
                }
            } else if p.name.eq_ignore_ascii_case("rport") {
                if let Some(v) = p.value {
                    parse_port(v).ok_or("malformed rport parameter")?;
                }
            }
        }
        Ok(via)
    }

    /// The `branch` parameter.
    pub fn branch(&self) -> Option<&'a str> {
        self.params.value("branch")
    }

    /// Whether the branch carries the RFC 3261 magic cookie followed by a unique part (and
    /// so identifies the transaction by itself). A bare `z9hG4bK` identifies nothing and
    /// falls back to RFC 2543 matching (RFC 4475 §3.2.1).
    pub fn has_rfc3261_branch(&self) -> bool {
        self.branch()
            .is_some_and(|b| b.len() > MAGIC_COOKIE.len() && b.starts_with(MAGIC_COOKIE))
    }

    /// The `received` parameter as a host (bracketed or not, RFC 5118 §4.5).
    pub fn received(&self) -> Option<Host<'a>> {
        self.params
            .value("received")
            .and_then(|r| Host::parse_lenient(r).ok())
    }

    /// The `rport` parameter.
    pub fn rport(&self) -> Option<Rport> {
        match self.params.get("rport")? {
            None => Some(Rport::Requested),
            Some(v) => parse_port(v).map(Rport::Port),
        }
    }

    /// The transport, when it is one this crate knows.
    pub fn transport_kind(&self) -> Option<Transport> {
        Transport::from_token(self.transport)
    }

    /// The sent-by text (`host[:port]`) as RFC 3261 §17.2.3 compares it.
    pub fn sent_by(&self) -> SentBy<'a> {
        SentBy {
            host: self.host,
            port: self.port,
        }
    }
}

/// A Via sent-by: host and optional port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SentBy<'a> {
    pub host: Host<'a>,
    pub port: Option<u16>,
}

impl fmt::Display for SentBy<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.host)?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Via<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{} {}",
            self.protocol,
            self.version,
            self.transport,
            self.sent_by()
        )?;
        for p in self.params.iter() {
            write!(f, ";{}", p.name)?;
            if let Some(v) = p.value {
                write!(f, "={v}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folded_and_spaced() {
        let v = Via::parse("SIP  /   2.0\r\n /UDP\r\n    192.0.2.2;branch=390skdjuw").unwrap();
        assert_eq!(v.transport, "UDP");
        assert_eq!(v.host, Host::Ipv4([192, 0, 2, 2].into()));
        assert_eq!(v.branch(), Some("390skdjuw"));
        assert!(!v.has_rfc3261_branch());

        let w = Via::parse(
            "SIP  / 2.0  / TCP     spindle.example.com   ;\r\n  branch  =   z9hG4bK9ikj8",
        )
        .unwrap();
        assert_eq!(w.branch(), Some("z9hG4bK9ikj8"));
        assert_eq!(w.transport_kind(), Some(Transport::Tcp));
        assert!(w.has_rfc3261_branch());
    }

    #[test]
    fn received_and_rport() {
        let v = Via::parse("SIP/2.0/UDP [2001:db8::9:1]:5060;received=[2001:db8::9:255];rport=5070;branch=z9hG4bKx").unwrap();
        assert_eq!(v.port, Some(5060));
        assert_eq!(v.rport(), Some(Rport::Port(5070)));
        assert_eq!(
            v.received().and_then(|h| h.ip()),
            Some("2001:db8::9:255".parse().unwrap())
        );
        let u = Via::parse("SIP/2.0/UDP [2001:db8::9:1];received=2001:db8::9:255;rport").unwrap();
        assert_eq!(u.rport(), Some(Rport::Requested));
        assert_eq!(
            u.received().and_then(|h| h.ip()),
            Some("2001:db8::9:255".parse().unwrap())
        );
        assert_eq!(u.sent_by().to_string(), "[2001:db8::9:1]");
    }

    #[test]
    fn malformed() {
        assert!(Via::parse("SIP/2.0/UDP 192.0.2.15;;").is_err());
        assert!(Via::parse("SIP/2.0/UDP").is_err());
        assert!(Via::parse("SIP/2.0/UDP host;rport=x").is_err());
        assert!(Via::parse("SIP/2.0/UDP host;received=not an ip").is_err());
        assert!(Via::parse("SIP/2.0/UDP host:99999").is_err());
    }
}
