//! Where responses go and what the top Via says (RFC 3261 §18.2.1/§18.2.2, RFC 3581), and
//! the salvage of a stateless error response from a request that did not parse.

use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;

use crate::builder::{reason_phrase, MessageBuilder};
use crate::header::HeaderName;
use crate::message::OwnedMessage;
use crate::via::{Rport, Transport, Via};

/// The port of a sent-by without one (RFC 3261 §18.2.2 / §19.1.2).
const DEFAULT_SIP_PORT: u16 = 5060;

fn source_ip(remote: SocketAddr) -> IpAddr {
    remote.ip().to_canonical()
}

/// Where responses to a request with top Via `via` go (§18.2.2, RFC 3581).
pub(super) fn response_target(
    via: &Via<'_>,
    remote: SocketAddr,
    transport: Transport,
) -> SocketAddr {
    if transport.is_stream() || via.rport().is_some() {
        return remote;
    }
    SocketAddr::new(remote.ip(), via.port.unwrap_or(DEFAULT_SIP_PORT))
}

/// The top Via with `received` (and `rport` filled in) per §18.2.1 / RFC 3581,
/// or `None` when it needs no change.
fn stamped_via(via: &Via<'_>, remote: SocketAddr) -> Option<String> {
    let ip = source_ip(remote);
    let rport_requested = via.rport() == Some(Rport::Requested);
    let host_differs = via.host.ip().map(|h| h.to_canonical()) != Some(ip);
    if !rport_requested && !host_differs {
        return None;
    }
    let mut out = format!(
        "{}/{}/{} {}",
        via.protocol,
        via.version,
        via.transport,
        via.sent_by()
    );
    for p in via.params.iter() {
        let name = p.name;
        if name.eq_ignore_ascii_case("received")
            || (rport_requested && name.eq_ignore_ascii_case("rport"))
        {
            continue;
        }
        out.push(';');
        out.push_str(name);
        if let Some(v) = p.value {
            out.push('=');
            out.push_str(v);
        }
    }
    out.push_str(&format!(";received={ip}"));
    if rport_requested {
        out.push_str(&format!(";rport={}", remote.port()));
    }
    Some(out)
}

/// The request with its top Via stamped (see [`stamped_via`]); the original when
/// no stamp is needed or the Via cannot be located.
pub(super) fn stamp_request(request: OwnedMessage, remote: SocketAddr) -> OwnedMessage {
    let stamped = {
        let m = request.message();
        let Ok(via) = m.via() else {
            return request;
        };
        let Some(new_via) = stamped_via(&via, remote) else {
            return request;
        };
        let Some(Ok(element)) = m.list_elements(HeaderName::Via).next() else {
            return request;
        };
        let full = request.bytes();
        let start = (element.as_ptr() as usize).checked_sub(full.as_ptr() as usize);
        let Some((start, end)) = start.map(|s| (s, s + element.len())) else {
            return request;
        };
        if end > full.len() {
            return request;
        }
        let mut out = Vec::with_capacity(full.len() + new_via.len());
        out.extend_from_slice(&full[..start]);
        out.extend_from_slice(new_via.as_bytes());
        out.extend_from_slice(&full[end..]);
        OwnedMessage::parse(Bytes::from(out))
    };
    stamped.unwrap_or(request)
}

/// Collapses a header value's folds (CRLF + white space) into single spaces, so
/// it can be re-emitted on one line.
fn unfold(value: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(value).ok()?;
    Some(
        text.split(['\r', '\n'])
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(" "),
    )
}

/// Best-effort stateless error response to a request that did not parse: the
/// header lines a response needs (Via, From, To, Call-ID, CSeq) are picked out of
/// the raw octets. `None` when it is not a request, it is an ACK, or no Via can be
/// found (nowhere to answer).
pub(super) fn salvage_error_response(
    raw: &[u8],
    status: u16,
    tag: &str,
) -> Option<(Bytes, Option<String>)> {
    let head_end = memchr::memmem::find(raw, b"\r\n\r\n")
        .or_else(|| memchr::memmem::find(raw, b"\n\n"))
        .unwrap_or(raw.len());
    let head = raw.get(..head_end)?;
    let start = head.iter().position(|b| !matches!(b, b'\r' | b'\n'))?;
    let head = &head[start..];
    let mut lines: Vec<Vec<u8>> = Vec::new();
    for line in head.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        match line.first() {
            Some(b' ' | b'\t') => {
                if let Some(last) = lines.last_mut() {
                    last.push(b' ');
                    last.extend_from_slice(line.trim_ascii_start());
                }
            }
            _ => lines.push(line.to_vec()),
        }
    }
    let (request_line, header_lines) = lines.split_first()?;
    if request_line.starts_with(b"SIP/") || request_line.starts_with(b"ACK ") {
        return None;
    }
    let mut vias = Vec::new();
    let mut picked: [Option<String>; 4] = [None, None, None, None];
    for line in header_lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = HeaderName::from_bytes(line[..colon].trim_ascii());
        let Some(value) = unfold(&line[colon + 1..]) else {
            continue;
        };
        let slot = match name {
            HeaderName::Via => {
                vias.push(value);
                continue;
            }
            HeaderName::From => 0,
            HeaderName::To => 1,
            HeaderName::CallId => 2,
            HeaderName::CSeq => 3,
            _ => continue,
        };
        if picked[slot].is_none() {
            picked[slot] = Some(value);
        }
    }
    if vias.is_empty() {
        return None;
    }
    if picked[3]
        .as_deref()
        .is_some_and(|cseq| cseq.split_whitespace().nth(1) == Some("ACK"))
    {
        return None;
    }
    let mut b = MessageBuilder::response(status, reason_phrase(status));
    for via in &vias {
        b = b.header("Via", via);
    }
    let [from, to, call_id, cseq] = picked;
    if let Some(from) = from {
        b = b.header("From", from);
    }
    if let Some(to) = to {
        let to = if to.contains(";tag=") || to.contains("; tag=") {
            to
        } else {
            format!("{to};tag={tag}")
        };
        b = b.header("To", to);
    }
    if let Some(call_id) = call_id {
        b = b.header("Call-ID", call_id);
    }
    if let Some(cseq) = cseq {
        b = b.header("CSeq", cseq);
    }
    let top_via = vias.into_iter().next();
    b.build().ok().map(|bytes| (bytes, top_via))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn received_and_rport_are_stamped_per_rfc3581() {
        let raw = b"OPTIONS sip:gw SIP/2.0\r\n\
Via: SIP/2.0/UDP 10.0.0.5:5062;branch=z9hG4bKa;rport, SIP/2.0/UDP 10.0.0.9\r\n\
From: <sip:a@b>;tag=1\r\nTo: <sip:gw>\r\nCall-ID: x\r\nCSeq: 1 OPTIONS\r\n\
Content-Length: 0\r\n\r\n";
        let msg = OwnedMessage::parse(Bytes::from_static(raw)).unwrap();
        let stamped = stamp_request(msg, addr("203.0.113.7:40000"));
        let m = stamped.message();
        let vias: Vec<String> = m.vias().map(|v| v.unwrap().to_string()).collect();
        assert_eq!(
            vias,
            [
                "SIP/2.0/UDP 10.0.0.5:5062;branch=z9hG4bKa;received=203.0.113.7;rport=40000",
                "SIP/2.0/UDP 10.0.0.9"
            ]
        );
        let via = m.via().unwrap();
        assert_eq!(
            response_target(&via, addr("203.0.113.7:40000"), Transport::Udp),
            addr("203.0.113.7:40000")
        );
    }

    #[test]
    fn matching_sent_by_needs_no_stamp_and_answers_the_sent_by_port() {
        let raw = b"OPTIONS sip:gw SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5070;branch=z9hG4bKa\r\n\
From: <sip:a@b>;tag=1\r\nTo: <sip:gw>\r\nCall-ID: x\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";
        let msg = OwnedMessage::parse(Bytes::from_static(raw)).unwrap();
        let stamped = stamp_request(msg.clone(), addr("192.0.2.1:41000"));
        assert_eq!(stamped, msg);
        let via = stamped.message().via().unwrap();
        assert_eq!(
            response_target(&via, addr("192.0.2.1:41000"), Transport::Udp),
            addr("192.0.2.1:5070")
        );
        assert_eq!(
            response_target(&via, addr("192.0.2.1:41000"), Transport::Tcp),
            addr("192.0.2.1:41000"),
            "stream transports answer on the connection"
        );
    }

    #[test]
    fn domain_sent_by_gets_received_and_default_port() {
        let via = Via::parse("SIP/2.0/UDP pc33.example.com;branch=z9hG4bKa").unwrap();
        assert_eq!(
            stamped_via(&via, addr("[2001:db8::5]:5999")).as_deref(),
            Some("SIP/2.0/UDP pc33.example.com;branch=z9hG4bKa;received=2001:db8::5")
        );
        assert_eq!(
            response_target(&via, addr("[2001:db8::5]:5999"), Transport::Udp),
            addr("[2001:db8::5]:5060")
        );
    }

    #[test]
    fn salvage_finds_the_headers_of_an_unparsable_request() {
        let raw = b"INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1\r\n ;branch=z9hG4bKq\r\n\
From: <sip:c@d>;tag=9\r\nTo: <sip:a@b>\r\nCall-ID: q\r\nCSeq: 1 INVITE\r\nContent-Length: -5\r\n\r\n";
        let (bytes, via) = salvage_error_response(raw, 400, "t1").unwrap();
        let m = crate::parse(&bytes).unwrap();
        assert_eq!(m.status(), Some(400));
        assert_eq!(m.via().unwrap().branch(), Some("z9hG4bKq"));
        assert_eq!(m.to().unwrap().tag(), Some("t1"));
        assert_eq!(m.call_id().unwrap(), "q");
        assert_eq!(
            via.as_deref(),
            Some("SIP/2.0/UDP 192.0.2.1 ;branch=z9hG4bKq")
        );
        let ack = b"ACK sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h\r\nContent-Length: -1\r\n\r\n";
        assert!(salvage_error_response(ack, 400, "t").is_none());
        let response = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h\r\n\r\n";
        assert!(salvage_error_response(response, 400, "t").is_none());
        let no_via = b"INVITE sip:a@b SIP/2.0\r\nTo: x\r\n\r\n";
        assert!(salvage_error_response(no_via, 400, "t").is_none());
    }
}
