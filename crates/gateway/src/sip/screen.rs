//! Request screening before a request reaches the call logic (RFC 3261 §8.2, in its order):
//! well-formedness, method, Max-Forwards, extensions (Require), content (Content-Type,
//! Content-Encoding, Accept). Each refusal says which response answers it and why.

use switchboard_sip::{HeaderName, Message, Method, SipError};

use super::refusal::Refusal;
pub use super::refusal::{ACCEPT, ALLOW, SUPPORTED};

/// Maps a codec error on a request to a refusal (`None`: discard silently).
pub fn refusal_for(error: &SipError) -> Option<Refusal> {
    let status = error.response_status()?;
    let mut refusal = Refusal::protocol(status, error.to_string());
    if let SipError::BadExtension { unsupported } = error {
        refusal = refusal.with("Unsupported", unsupported.join(", "));
    }
    Some(refusal)
}

/// Screens a request (never an ACK's or CANCEL's Require, RFC 3261 §8.2.2.3). `Ok(())`
/// means the call logic may act on it.
pub fn screen(msg: &Message<'_>) -> Result<(), Refusal> {
    if let Err(e) = msg.validate() {
        return Err(refusal_for(&e).unwrap_or_else(|| Refusal::protocol(400, e.to_string())));
    }
    let Some(method_token) = msg.method() else {
        return Err(Refusal::protocol(400, "not a request"));
    };
    let method = match msg.known_method() {
        None => {
            return Err(Refusal::protocol(
                501,
                format!("method {method_token} is not implemented"),
            )
            .with("Allow", ALLOW));
        }
        Some(
            m @ (Method::Invite
            | Method::Ack
            | Method::Bye
            | Method::Cancel
            | Method::Options
            | Method::Info
            | Method::Update
            | Method::Notify),
        ) => m,
        Some(other) => {
            return Err(Refusal::protocol(
                405,
                format!("{other} is not served by a trunk gateway"),
            )
            .with("Allow", ALLOW));
        }
    };
    // A proxy answers 483 at zero; we relay calls on to the agent like one. OPTIONS with
    // Max-Forwards 0 is answered by the element itself (RFC 3261 §16.3 step 2, §11).
    if method != Method::Options && method != Method::Ack {
        if let Ok(Some(0)) = msg.max_forwards() {
            return Err(Refusal::protocol(483, "Max-Forwards reached 0"));
        }
    }
    if !matches!(method, Method::Ack | Method::Cancel) {
        if let Err(e) = msg.check_require(SUPPORTED) {
            return Err(refusal_for(&e).unwrap_or_else(|| Refusal::protocol(420, e.to_string())));
        }
    }
    if matches!(method, Method::Invite | Method::Update | Method::Ack) {
        check_content(msg, method)?;
    }
    if method == Method::Invite {
        check_accept(msg)?;
    }
    Ok(())
}

/// The SDP carried by a request: the body when it is `application/sdp`, or the first
/// `application/sdp` part of a `multipart/mixed` body (SIP-I carriers add ISUP parts).
/// `None` for no body.
pub fn sdp_body<'a>(msg: &Message<'a>) -> Option<&'a [u8]> {
    let body = msg.body();
    if body.is_empty() {
        return None;
    }
    let content_type = msg.content_type().ok().flatten();
    match content_type {
        None => Some(body),
        Some(ct) if ct.is("application", "sdp") => Some(body),
        Some(ct) if ct.is("multipart", "mixed") => {
            let boundary = ct.params.get("boundary").flatten()?;
            multipart_sdp(body, boundary.trim_matches('"'))
        }
        Some(_) => None,
    }
}

fn check_content(msg: &Message<'_>, method: Method) -> Result<(), Refusal> {
    if msg.body().is_empty() {
        return Ok(());
    }
    if let Some(encoding) = msg
        .header(HeaderName::ContentEncoding)
        .and_then(|h| h.value_str())
    {
        if !encoding.trim().eq_ignore_ascii_case("identity") {
            return Err(Refusal::protocol(
                415,
                format!("Content-Encoding {encoding} is not supported"),
            )
            .with("Accept-Encoding", "identity")
            .with("Accept", ACCEPT));
        }
    }
    if sdp_body(msg).is_none() {
        let ct = msg
            .header(HeaderName::ContentType)
            .and_then(|h| h.value_str())
            .unwrap_or("(none)")
            .to_owned();
        return Err(
            Refusal::protocol(415, format!("{method} body of type {ct} carries no SDP"))
                .with("Accept", ACCEPT),
        );
    }
    Ok(())
}

/// RFC 3261 §8.2.3: our 200 OK carries SDP, so an INVITE whose Accept excludes it gets 406.
fn check_accept(msg: &Message<'_>) -> Result<(), Refusal> {
    let mut present = false;
    for value in msg
        .headers_named(HeaderName::Accept)
        .filter_map(|h| h.value_str())
    {
        present = true;
        for item in value.split(',') {
            let media = item
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            if media.is_empty()
                || matches!(media.as_str(), "application/sdp" | "application/*" | "*/*")
            {
                return Ok(());
            }
        }
    }
    if present {
        return Err(Refusal::protocol(
            406,
            "Accept excludes application/sdp, the only answer we can give",
        )
        .with("Accept", ACCEPT));
    }
    Ok(())
}

fn multipart_sdp<'a>(body: &'a [u8], boundary: &str) -> Option<&'a [u8]> {
    let delimiter = format!("--{boundary}");
    let delim = delimiter.as_bytes();
    let mut parts = Vec::new();
    let mut at = 0;
    while let Some(pos) = find(&body[at..], delim) {
        parts.push(at + pos);
        at += pos + delim.len();
    }
    for window in parts.windows(2) {
        let part = &body[window[0] + delim.len()..window[1]];
        let part = part.strip_prefix(b"\r\n").unwrap_or(part);
        let split = find(part, b"\r\n\r\n")?;
        let (head, content) = (&part[..split], &part[split + 4..]);
        let content = content.strip_suffix(b"\r\n").unwrap_or(content);
        let head = String::from_utf8_lossy(head).to_ascii_lowercase();
        let is_sdp = head.lines().any(|l| {
            l.strip_prefix("content-type:")
                .is_some_and(|v| v.trim().starts_with("application/sdp"))
        });
        if is_sdp {
            return Some(content);
        }
    }
    None
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || haystack.len() < needle.len() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_sip::parse;

    fn request(method: &str, extra: &str, body: &str) -> Vec<u8> {
        format!(
            "{method} sip:+918047168000@gw SIP/2.0\r\n\
             Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK-1\r\n\
             Max-Forwards: 70\r\nTo: <sip:+918047168000@gw>\r\nFrom: <sip:a@b>;tag=x\r\n\
             Call-ID: c1\r\nCSeq: 1 {method}\r\n{extra}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    fn screened(method: &str, extra: &str, body: &str) -> Result<(), Refusal> {
        let bytes = request(method, extra, body);
        screen(&parse(&bytes).unwrap())
    }

    const SDP: &str = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";

    #[test]
    fn methods_are_inspected_first() {
        assert_eq!(screened("INVITE", "", "").map_err(|r| r.status), Ok(()));
        let r = screened("REGISTER", "", "").unwrap_err();
        assert_eq!(r.status, 405);
        assert!(r.headers.contains(&("Allow", ALLOW.to_owned())));
        assert_eq!(screened("FOOBAR", "", "").unwrap_err().status, 501);
    }

    #[test]
    fn max_forwards_zero_is_483_except_for_options() {
        let mf0 = |m: &str| {
            let bytes = request(m, "", "");
            let text = String::from_utf8(bytes)
                .unwrap()
                .replace("Max-Forwards: 70", "Max-Forwards: 0");
            screen(&parse(text.as_bytes()).unwrap()).map_err(|r| r.status)
        };
        assert_eq!(mf0("INVITE"), Err(483));
        assert_eq!(mf0("OPTIONS"), Ok(()));
    }

    #[test]
    fn unknown_required_extensions_are_420_with_unsupported() {
        let r = screened("INVITE", "Require: 100rel, foo\r\n", "").unwrap_err();
        assert_eq!(r.status, 420);
        assert_eq!(r.headers, vec![("Unsupported", "100rel, foo".to_owned())]);
        // CANCEL's Require is ignored.
        assert!(screened("CANCEL", "Require: foo\r\n", "").is_ok());
    }

    #[test]
    fn bodies_must_carry_sdp() {
        assert!(screened("INVITE", "Content-Type: application/sdp\r\n", SDP).is_ok());
        let r = screened(
            "INVITE",
            "Content-Type: application/unknownformat\r\n",
            "xyz",
        )
        .unwrap_err();
        assert_eq!(r.status, 415);
        assert!(r.headers.contains(&("Accept", ACCEPT.to_owned())));
        let r = screened(
            "INVITE",
            "Content-Type: application/sdp\r\nContent-Encoding: gzip\r\n",
            SDP,
        )
        .unwrap_err();
        assert_eq!(r.status, 415);
        // INFO bodies (DTMF relay) are not screened.
        assert!(screened(
            "INFO",
            "Content-Type: application/dtmf-relay\r\n",
            "Signal=5\r\n"
        )
        .is_ok());
    }

    #[test]
    fn sdp_inside_multipart_mixed_is_found() {
        let body = format!(
            "--b1\r\nContent-Type: application/isup;version=itu-t92+\r\n\r\n\x01\x02\r\n--b1\r\nContent-Type: application/sdp\r\n\r\n{SDP}\r\n--b1--\r\n"
        );
        let bytes = request(
            "INVITE",
            "Content-Type: multipart/mixed;boundary=b1\r\n",
            &body,
        );
        let msg = parse(&bytes).unwrap();
        assert!(screen(&msg).is_ok());
        assert_eq!(sdp_body(&msg), Some(SDP.as_bytes()));
    }

    #[test]
    fn accept_without_sdp_is_406() {
        assert_eq!(
            screened("INVITE", "Accept: text/nobodyheardofthis\r\n", "")
                .unwrap_err()
                .status,
            406
        );
        assert!(screened(
            "INVITE",
            "Accept: application/sdp;level=1, text/plain\r\n",
            ""
        )
        .is_ok());
        assert!(screened("INVITE", "Accept: */*\r\n", "").is_ok());
    }

    #[test]
    fn malformed_requests_map_to_the_codec_status() {
        let bytes = request("INVITE", "", "");
        let text = String::from_utf8(bytes)
            .unwrap()
            .replace("CSeq: 1 INVITE", "CSeq: 1 OPTIONS");
        assert_eq!(
            screen(&parse(text.as_bytes()).unwrap()).unwrap_err().status,
            400
        );
    }
}
