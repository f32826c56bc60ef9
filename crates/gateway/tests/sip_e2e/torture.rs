//! The RFC 4475 / RFC 5118 torture corpus (`../shared/sip-torture`) sent over UDP to the
//! running daemon, one message at a time, each checked against the action the manifest
//! asks for.
//!
//! The manifest's `expected_action` is prose, so [`expectation`] states, per file, what
//! that prose means for switchboard, a UAS that answers INVITE/OPTIONS/BYE/CANCEL and
//! refuses everything else: "reject N" is status N; "parse and accept" is any response
//! that is not a 400 (the request was understood: an INVITE to a number nobody owns gets
//! 404, a REGISTER 405, an OPTIONS 200, a BYE outside a dialog 481); a response sent to us
//! must produce silence. Where the RFC allows a choice ("400, or ignore"), both are
//! accepted. Every file of the manifest must have an entry, so a corpus change is noticed.

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

/// What the daemon must do with one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// A final response with one of these codes.
    Status(&'static [u16]),
    /// Understood and handled: a final response that is not 400.
    Accepted,
    /// Either a 400 or handled (RFC: "may reject as malformed or ignore ...").
    RejectOrAccept,
    /// No response at all (responses are never answered).
    Silence,
}

/// The expectation for each corpus file (path as in the manifest).
pub fn expectation(file: &str) -> Option<Expect> {
    use Expect::*;
    let name = file.rsplit('/').next()?.trim_end_matches(".dat");
    Some(match name {
        // RFC 4475 §3.1.1: valid messages.
        "wsinv" | "esc01" | "escnull" | "lwsdisp" | "longreq" | "dblreq" | "semiuri"
        | "transports" | "mpart01" | "inv2543" | "cparam01" | "cparam02" | "regescrt" => Accepted,
        "intmeth" | "esc02" => Status(&[501]),
        "unreason" | "noreason" => Silence,
        // §3.1.2: invalid messages.
        "badinv01" | "clerr" | "ncl" | "scalar02" | "quotbal" | "ltgtruri" | "lwsruri"
        | "regbadct" | "badaspec" | "baddn" | "mismatch01" | "insuf" | "multi01" | "mcl01" => {
            Status(&[400])
        }
        "lwsstart" | "trws" | "escruri" | "baddate" | "badbranch" | "unksm2" => RejectOrAccept,
        "scalarlg" | "bigcode" | "bcast" => Silence,
        "badvers" => Status(&[505]),
        "mismatch02" => Status(&[501, 400]),
        // §3.3: above the parser.
        "unkscm" => Status(&[416]),
        "novelsc" => Status(&[416, 404]),
        "bext01" => Status(&[420]),
        "invut" => Status(&[415]),
        // A UA that is not a registrar answers REGISTER 405 (a registrar would challenge).
        "regaut01" => Status(&[405, 401]),
        // OPTIONS with Max-Forwards 0: a proxy answers 483, an endpoint processes it.
        "zeromf" => Status(&[483, 200]),
        "sdp01" => Status(&[406, 400]),
        // RFC 5118.
        "ipv6-good"
        | "port-ambiguous"
        | "port-unambiguous"
        | "via-received-param-with-delim"
        | "via-received-param-no-delim"
        | "ipv6-in-sdp"
        | "mult-ip-in-header"
        | "mult-ip-in-sdp"
        | "ipv4-mapped-ipv6"
        | "ipv6-bug-abnf-3-colons"
        | "ipv6-correct-abnf-2-colons" => Accepted,
        "ipv6-bad" => Status(&[400]),
        _ => return None,
    })
}

/// RFC 5118's archive is not wire format (bare LF, unterminated header sections, wrong
/// Content-Length): convert it as the corpus README says.
pub fn wire_form(raw: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(raw).replace("\r\n", "\n");
    let (head, body) = match text.split_once("\n\n") {
        Some((h, b)) => (h.to_owned(), b.to_owned()),
        None => (text.trim_end_matches('\n').to_owned(), String::new()),
    };
    let body = body.replace('\n', "\r\n");
    let mut out = String::new();
    for line in head.lines() {
        let lower = line.to_ascii_lowercase();
        if lower.starts_with("content-length:") || lower.starts_with("l:") {
            out.push_str(&format!("Content-Length: {}\r\n", body.len()));
        } else {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out.push_str("\r\n");
    out.push_str(&body);
    out.into_bytes()
}

/// One manifest row.
#[derive(Debug, Clone)]
pub struct Row {
    pub file: String,
    pub expected_action: String,
}

pub fn manifest(shared: &Path) -> Vec<Row> {
    let text =
        std::fs::read_to_string(shared.join("sip-torture/manifest.tsv")).expect("manifest.tsv");
    text.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let cols: Vec<&str> = l.split('\t').collect();
            Row {
                file: cols[0].to_owned(),
                expected_action: cols.get(2).unwrap_or(&"").to_string(),
            }
        })
        .collect()
}

/// How a response is matched to the request it answers: the top Via's branch and the
/// CSeq method (the RFC 3261 §17.1.3 transaction key), or Call-ID and CSeq when the request
/// has no branch (RFC 2543 style).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ids {
    pub branch: Option<String>,
    pub call_id: Option<String>,
    pub cseq: Option<String>,
}

impl Ids {
    fn cseq_method(&self) -> Option<&str> {
        self.cseq
            .as_deref()
            .and_then(|c| c.split_whitespace().nth(1))
    }

    /// Whether `response` (its ids) answers the request with these ids.
    pub fn answered_by(&self, response: &Ids) -> bool {
        match &self.branch {
            Some(branch) => {
                response.branch.as_ref() == Some(branch)
                    && response.cseq_method() == self.cseq_method()
            }
            None => response.call_id == self.call_id && response.cseq == self.cseq,
        }
    }
}

/// The ids of a raw message (long or compact header names, folded lines joined).
pub fn ids_of(message: &[u8]) -> Ids {
    let text = String::from_utf8_lossy(message);
    let head = text.split("\r\n\r\n").next().unwrap_or("");
    let mut lines: Vec<String> = Vec::new();
    for line in head.split("\r\n").skip(1) {
        match lines.last_mut() {
            Some(last) if line.starts_with([' ', '\t']) => {
                last.push(' ');
                last.push_str(line.trim());
            }
            _ => lines.push(line.to_owned()),
        }
    }
    let mut ids = Ids {
        branch: None,
        call_id: None,
        cseq: None,
    };
    let mut via_seen = false;
    for line in &lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let normalized = Some(value.split_whitespace().collect::<Vec<_>>().join(" "));
        match name.trim().to_ascii_lowercase().as_str() {
            "via" | "v" if !via_seen => {
                via_seen = true;
                let top = value.split(',').next().unwrap_or("");
                ids.branch = top.split(';').skip(1).find_map(|p| {
                    let (k, v) = p.split_once('=')?;
                    (k.trim().eq_ignore_ascii_case("branch")).then(|| v.trim().to_owned())
                });
            }
            "call-id" | "i" if ids.call_id.is_none() => ids.call_id = normalized,
            "cseq" if ids.cseq.is_none() => ids.cseq = normalized,
            _ => {}
        }
    }
    ids
}

/// Status codes of the responses to `message` arriving on `socket` within `wait` (stops
/// early at a final response). Responses are matched to the message's transaction
/// ([`Ids::answered_by`]), so repeats of other transactions' final responses (RFC 3261
/// Timer G) are not mistaken for this message's.
/// Failure responses to INVITEs are acknowledged, as a UAC would.
pub fn collect(socket: &UdpSocket, target: SocketAddr, message: &[u8], wait: Duration) -> Vec<u16> {
    let ids = ids_of(message);
    let request_line = String::from_utf8_lossy(message)
        .lines()
        .next()
        .unwrap_or("")
        .to_owned();
    let deadline = Instant::now() + wait;
    let mut codes = Vec::new();
    let mut buf = [0u8; 65_536];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        if left.is_zero() {
            break;
        }
        socket
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .ok();
        let Ok((n, _)) = socket.recv_from(&mut buf) else {
            break;
        };
        let response = &buf[..n];
        let text = String::from_utf8_lossy(response);
        let Some(code) = text
            .strip_prefix("SIP/2.0 ")
            .and_then(|r| r.get(..3))
            .and_then(|c| c.parse::<u16>().ok())
        else {
            continue;
        };
        if !ids.answered_by(&ids_of(response)) {
            continue;
        }
        if code >= 300 && ids.cseq_method() == Some("INVITE") {
            if let Some(ack) = ack_for(&request_line, &text) {
                let _ = socket.send_to(ack.as_bytes(), target);
            }
        }
        codes.push(code);
        if code >= 200 {
            break;
        }
    }
    codes
}

/// The ACK for a failure response to an INVITE (RFC 3261 §17.1.1.3): the INVITE's
/// Request-URI, the response's top Via, From, To (with tag), Call-ID, CSeq number.
fn ack_for(invite_line: &str, response: &str) -> Option<String> {
    let uri = invite_line.split_whitespace().nth(1)?;
    let head = response.split("\r\n\r\n").next()?;
    let mut out = format!("ACK {uri} SIP/2.0\r\n");
    let mut via_done = false;
    for line in head.split("\r\n").skip(1) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim().to_ascii_lowercase();
        match name.as_str() {
            "via" | "v" if !via_done => {
                via_done = true;
                let top = value.split(',').next()?.trim();
                out.push_str(&format!("Via: {top}\r\n"));
            }
            "from" | "f" | "to" | "t" | "call-id" | "i" => out.push_str(&format!("{line}\r\n")),
            "cseq" => {
                let number = value.split_whitespace().next()?;
                out.push_str(&format!("CSeq: {number} ACK\r\n"));
            }
            _ => {}
        }
    }
    out.push_str("Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n");
    Some(out)
}

/// Sends every corpus message and checks the outcome; returns failures (empty on success).
pub fn run(shared: &Path, target: SocketAddr) -> Vec<String> {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("udp socket");
    let mut failures = Vec::new();
    let mut seen = BTreeMap::new();
    for row in manifest(shared) {
        let Some(expect) = expectation(&row.file) else {
            failures.push(format!(
                "{}: no expectation for this corpus file ({})",
                row.file, row.expected_action
            ));
            continue;
        };
        let raw = std::fs::read(shared.join("sip-torture").join(&row.file)).expect("corpus file");
        let message = if row.file.starts_with("rfc5118/") {
            wire_form(&raw)
        } else {
            raw
        };
        // One socket for the whole corpus, like one carrier: several files share a branch
        // and sent-by, so the endpoint rightly treats a later one as a retransmission of an
        // earlier one and repeats that response to where the first came from.
        socket.send_to(&message, target).expect("send");
        let wait = if expect == Expect::Silence {
            Duration::from_millis(500)
        } else {
            Duration::from_secs(3)
        };
        let codes = collect(&socket, target, &message, wait);
        let last_final = codes.iter().copied().rfind(|c| *c >= 200);
        let ok = match (&expect, last_final) {
            (Expect::Silence, _) => codes.is_empty(),
            (Expect::Status(allowed), Some(code)) => allowed.contains(&code),
            (Expect::Accepted, Some(code)) => code != 400,
            (Expect::RejectOrAccept, Some(_)) => true,
            (_, None) => false,
        };
        seen.insert(row.file.clone(), codes.clone());
        if !ok {
            failures.push(format!(
                "{}: expected {expect:?} (manifest: {}), got {codes:?}",
                row.file, row.expected_action
            ));
        }
    }
    eprintln!("torture outcomes: {seen:?}");
    failures
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_acks_come_from_the_headers() {
        let response = "SIP/2.0 404 Not Found\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1;rport=5;received=127.0.0.1, SIP/2.0/UDP x\r\n\
f: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\ni:  abc \r\nCSeq:   7   INVITE\r\nContent-Length: 0\r\n\r\n";
        let ids = ids_of(response.as_bytes());
        assert_eq!(ids.branch.as_deref(), Some("z9hG4bK1"));
        assert_eq!(
            (ids.call_id.as_deref(), ids.cseq.as_deref()),
            (Some("abc"), Some("7 INVITE"))
        );
        let folded = b"OPTIONS x SIP/2.0\r\nv: SIP/2.0/UDP h ;\r\n  branch  =  z9hG4bKq , SIP/2.0/UDP y\r\nCSeq: 1 OPTIONS\r\n\r\n";
        assert_eq!(ids_of(folded).branch.as_deref(), Some("z9hG4bKq"));
        let ack = ack_for("INVITE sip:c@d SIP/2.0", response).unwrap();
        assert_eq!(
            ack,
            "ACK sip:c@d SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1;rport=5;received=127.0.0.1\r\nf: <sip:a@b>;tag=1\r\n\
To: <sip:c@d>;tag=2\r\ni:  abc \r\nCSeq: 7 ACK\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        );
    }

    #[test]
    fn wire_form_fixes_line_ends_header_end_and_length() {
        let raw = b"OPTIONS sip:x SIP/2.0\nVia: SIP/2.0/UDP h\nContent-Length: 99\n\nv=0\n";
        let wire = wire_form(raw);
        assert_eq!(
            String::from_utf8(wire).unwrap(),
            "OPTIONS sip:x SIP/2.0\r\nVia: SIP/2.0/UDP h\r\nContent-Length: 5\r\n\r\nv=0\r\n"
        );
        let unterminated = wire_form(b"OPTIONS sip:x SIP/2.0\nContent-Length: 0");
        assert!(unterminated.ends_with(b"Content-Length: 0\r\n\r\n"));
    }
}
