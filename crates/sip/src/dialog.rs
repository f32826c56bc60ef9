//! Dialogs (RFC 3261 §12): the state two user agents share for one call, and the
//! pieces of the INVITE/2xx/ACK exchange that live above the transactions.
//!
//! * [`Dialog::uas`] builds the state from a received INVITE and the 2xx we sent
//!   (§12.1.1); [`Dialog::uac`] from our INVITE and the 2xx we received (§12.1.2).
//! * [`Dialog::request`] starts an in-dialog request (BYE, re-INVITE, INFO) with the
//!   route set and the next local CSeq (§12.2.1.1), loose or strict routing.
//! * [`Dialog::accept_remote_cseq`] orders incoming in-dialog requests (§12.2.2).
//! * `AnswerRetransmission` (driven by the endpoint) repeats our 2xx until its
//!   ACK arrives (§13.3.1.4): T1, doubling up to T2, giving up after 64·T1 (then
//!   the TU should send BYE).
//!
//! The ACK for a 2xx is a request of its own, matched to the dialog by Call-ID,
//! tags and CSeq, never to the INVITE transaction (§17.1.1.3); a body it carries
//! is the SDP answer to a late offer, and reaches the TU untouched.

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;

use crate::builder::MessageBuilder;
use crate::error::SipError;
use crate::header::HeaderName;
use crate::message::Message;
use crate::transaction::{Backoff, TimerConfig};
use crate::uri::Uri;
use crate::via::Transport;

/// Max-Forwards of the requests we originate: the RFC 3261 §8.1.1.6 recommendation.
pub const DEFAULT_MAX_FORWARDS: u8 = 70;

/// Identifies a dialog inside one [`crate::endpoint::Endpoint`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DialogId(pub(crate) u64);

/// Which side of the INVITE we were.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialogRole {
    /// We answered the INVITE.
    Uas,
    /// We sent the INVITE.
    Uac,
}

/// The dialog identifier of §12: Call-ID plus local and remote tags. The remote
/// tag is empty for RFC 2543 peers that send no From tag.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct DialogKey {
    pub(crate) call_id: String,
    pub(crate) local_tag: String,
    pub(crate) remote_tag: String,
}

/// The state of one dialog.
#[derive(Debug, Clone)]
pub struct Dialog {
    role: DialogRole,
    call_id: String,
    local_tag: String,
    remote_tag: Option<String>,
    /// Header value we put in From (our URI and tag).
    local_party: String,
    /// Header value we put in To (their URI and tag).
    remote_party: String,
    remote_target: String,
    /// Route header values, in the order our requests carry them.
    route_set: Vec<String>,
    local_cseq: u32,
    remote_cseq: Option<u32>,
    /// CSeq number of the last INVITE (initial or re-INVITE) of this dialog, which
    /// its ACK carries.
    invite_cseq: u32,
    remote: SocketAddr,
    transport: Transport,
    /// UAS: the 2xx being retransmitted until its ACK.
    pub(crate) answer: Option<AnswerRetransmission>,
    /// UAC: the ACK we sent for the 2xx of INVITE with this CSeq (re-sent when the
    /// 2xx is retransmitted).
    pub(crate) sent_ack: Option<(u32, Bytes)>,
}

fn raw_value<'a>(msg: &Message<'a>, name: HeaderName) -> Result<&'a str, SipError> {
    msg.header(name)
        .and_then(|h| h.value_str())
        .ok_or(SipError::MissingHeader {
            header: name.as_str(),
        })
}

/// Strips `<...>` and header parameters from a name-addr, leaving the URI.
fn uri_of(name_addr: &str) -> &str {
    let s = name_addr.trim();
    if let Some(start) = s.find('<') {
        let rest = &s[start + 1..];
        return rest.find('>').map_or(rest, |end| &rest[..end]);
    }
    s.split(';').next().unwrap_or(s).trim()
}

/// `true` when a Route value's URI carries `;lr` (a loose router, RFC 3261 §16.12).
fn is_loose(route: &str) -> bool {
    Uri::parse(uri_of(route)).is_ok_and(|u| u.params().contains("lr"))
}

/// The socket address a SIP URI names when its host is an IP literal.
fn uri_socket_addr(uri: &str, transport: Transport) -> Option<SocketAddr> {
    let parsed = Uri::parse(uri).ok()?;
    let sip = parsed.as_sip()?;
    let ip = sip.host.ip()?;
    let default_port = if sip.secure || transport == Transport::Tls {
        5061
    } else {
        5060
    };
    Some(SocketAddr::new(ip, sip.port.unwrap_or(default_port)))
}

impl Dialog {
    /// The dialog a UAS creates when it sends a 2xx to `invite` (§12.1.1): local
    /// tag from our To, remote tag and Call-ID from the INVITE, remote target from
    /// its Contact (the From URI for RFC 2543 peers without one), route set from
    /// its Record-Route in order. `remote`/`transport` are where the INVITE came
    /// from (the fallback next hop when a target is not an IP literal).
    pub fn uas(
        invite: &Message<'_>,
        response: &Message<'_>,
        remote: SocketAddr,
        transport: Transport,
    ) -> Result<Dialog, SipError> {
        let to = response.to()?;
        let local_tag = to.tag().ok_or(SipError::Build {
            reason: "a dialog-creating response needs a To tag",
        })?;
        let from = invite.from()?;
        let remote_target = match invite.contact()? {
            Some(contact) => contact.uri_text.to_owned(),
            None => from.uri_text.to_owned(),
        };
        let route_set = invite
            .list_elements(HeaderName::RecordRoute)
            .map(|r| r.map(|s| s.trim().to_owned()))
            .collect::<Result<Vec<_>, _>>()?;
        let cseq = invite.cseq()?.seq;
        Ok(Dialog {
            role: DialogRole::Uas,
            call_id: invite.call_id()?.to_owned(),
            local_tag: local_tag.to_owned(),
            remote_tag: from.tag().map(str::to_owned),
            local_party: raw_value(response, HeaderName::To)?.to_owned(),
            remote_party: raw_value(invite, HeaderName::From)?.to_owned(),
            remote_target,
            route_set,
            // §12.1.1 leaves the local sequence number empty; §12.2.1.1 lets us
            // start anywhere below 2^31.
            local_cseq: 0,
            remote_cseq: Some(cseq),
            invite_cseq: cseq,
            remote,
            transport,
            answer: None,
            sent_ack: None,
        })
    }

    /// The dialog a UAC creates from its `invite` and a 2xx `response` (§12.1.2):
    /// remote target from the 2xx Contact, route set from its Record-Route in
    /// reverse order.
    pub fn uac(
        invite: &Message<'_>,
        response: &Message<'_>,
        remote: SocketAddr,
        transport: Transport,
    ) -> Result<Dialog, SipError> {
        let from = invite.from()?;
        let local_tag = from
            .tag()
            .ok_or(SipError::MissingHeader { header: "From tag" })?;
        let to = response.to()?;
        let remote_target = match response.contact()? {
            Some(contact) => contact.uri_text.to_owned(),
            None => to.uri_text.to_owned(),
        };
        let mut route_set = response
            .list_elements(HeaderName::RecordRoute)
            .map(|r| r.map(|s| s.trim().to_owned()))
            .collect::<Result<Vec<_>, _>>()?;
        route_set.reverse();
        let cseq = invite.cseq()?.seq;
        Ok(Dialog {
            role: DialogRole::Uac,
            call_id: invite.call_id()?.to_owned(),
            local_tag: local_tag.to_owned(),
            remote_tag: to.tag().map(str::to_owned),
            local_party: raw_value(invite, HeaderName::From)?.to_owned(),
            remote_party: raw_value(response, HeaderName::To)?.to_owned(),
            remote_target,
            route_set,
            local_cseq: cseq,
            remote_cseq: None,
            invite_cseq: cseq,
            remote,
            transport,
            answer: None,
            sent_ack: None,
        })
    }

    pub(crate) fn key(&self) -> DialogKey {
        DialogKey {
            call_id: self.call_id.clone(),
            local_tag: self.local_tag.clone(),
            remote_tag: self.remote_tag.clone().unwrap_or_default(),
        }
    }

    /// Our side of the INVITE.
    pub fn role(&self) -> DialogRole {
        self.role
    }
    /// Call-ID.
    pub fn call_id(&self) -> &str {
        &self.call_id
    }
    /// Our tag.
    pub fn local_tag(&self) -> &str {
        &self.local_tag
    }
    /// The peer's tag (`None` for RFC 2543 peers).
    pub fn remote_tag(&self) -> Option<&str> {
        self.remote_tag.as_deref()
    }
    /// The peer's Contact URI: the Request-URI of our in-dialog requests.
    /// Our side's From/To value in this dialog (URI and tag), e.g. for `Referred-By`.
    pub fn local_party(&self) -> &str {
        &self.local_party
    }

    pub fn remote_target(&self) -> &str {
        &self.remote_target
    }
    /// Route header values our in-dialog requests carry.
    pub fn route_set(&self) -> &[String] {
        &self.route_set
    }
    /// The CSeq number of our last in-dialog request.
    pub fn local_cseq(&self) -> u32 {
        self.local_cseq
    }
    /// The CSeq number of the peer's last in-dialog request.
    pub fn remote_cseq(&self) -> Option<u32> {
        self.remote_cseq
    }
    /// The CSeq number of the last INVITE (what its ACK must carry).
    pub fn invite_cseq(&self) -> u32 {
        self.invite_cseq
    }
    /// Where the dialog's INVITE came from / went to.
    pub fn remote_addr(&self) -> SocketAddr {
        self.remote
    }
    /// The transport of the dialog's INVITE.
    pub fn transport(&self) -> Transport {
        self.transport
    }
    /// `true` while our 2xx is still being retransmitted (its ACK has not come).
    pub fn awaiting_ack(&self) -> bool {
        self.answer.is_some()
    }

    /// Checks an incoming in-dialog request's CSeq (§12.2.2) and records it.
    /// Returns `false` when it is lower than the last one seen: out of order,
    /// answer 500. ACK and CANCEL carry the CSeq of the request they belong to
    /// and are not checked.
    pub fn accept_remote_cseq(&mut self, method: &str, cseq: u32) -> bool {
        if method == "ACK" || method == "CANCEL" {
            return true;
        }
        if self.remote_cseq.is_some_and(|last| cseq < last) {
            return false;
        }
        self.remote_cseq = Some(cseq);
        if method == "INVITE" {
            self.invite_cseq = cseq;
        }
        true
    }

    /// A target refresh (re-INVITE, UPDATE) carried a Contact: it becomes the
    /// new remote target (§12.2.2).
    pub fn refresh_target(&mut self, request: &Message<'_>) {
        if let Ok(Some(contact)) = request.contact() {
            self.remote_target = contact.uri_text.to_owned();
        }
    }

    /// Request-URI and Route values for the next request (§12.2.1.1): loose
    /// routing keeps the remote target as Request-URI; a strict first route
    /// becomes the Request-URI and the remote target goes last in Route.
    fn request_uri_and_routes(&self) -> (String, Vec<String>) {
        match self.route_set.first() {
            None => (self.remote_target.clone(), Vec::new()),
            Some(first) if is_loose(first) => (self.remote_target.clone(), self.route_set.clone()),
            Some(first) => {
                let mut routes: Vec<String> = self.route_set[1..].to_vec();
                routes.push(format!("<{}>", self.remote_target));
                (uri_of(first).to_owned(), routes)
            }
        }
    }

    /// Where the next in-dialog request goes: the first Route's URI (loose
    /// routing) or the remote target, when it is an IP literal; otherwise the
    /// address the dialog's INVITE came from (this crate does no DNS: carriers
    /// put IP addresses in Contact and Record-Route in practice).
    pub fn next_hop(&self) -> SocketAddr {
        let uri = match self.route_set.first() {
            Some(first) => uri_of(first).to_owned(),
            None => self.remote_target.clone(),
        };
        uri_socket_addr(&uri, self.transport).unwrap_or(self.remote)
    }

    /// Starts an in-dialog request (BYE, re-INVITE, INFO, ...) with `via` as its
    /// top Via (see [`crate::endpoint::Endpoint::new_via`]): Request-URI and
    /// Route per the route set, Max-Forwards, From/To with the dialog tags,
    /// Call-ID and the next local CSeq. Add headers and a body, `build()` it,
    /// and send it with [`crate::endpoint::Endpoint::send_request`].
    ///
    /// For ACK use [`Dialog::ack`], which does not advance the CSeq.
    pub fn request(&mut self, method: &str, via: &str) -> MessageBuilder {
        self.local_cseq = self.local_cseq.wrapping_add(1).max(1);
        if method == "INVITE" {
            self.invite_cseq = self.local_cseq;
        }
        self.build(method, via, self.local_cseq)
    }

    /// The ACK for the 2xx of our last INVITE (§13.2.2.4): same CSeq number,
    /// method ACK, a new branch in `via`.
    pub fn ack(&self, via: &str) -> MessageBuilder {
        self.build("ACK", via, self.invite_cseq)
    }

    fn build(&self, method: &str, via: &str, cseq: u32) -> MessageBuilder {
        let (request_uri, routes) = self.request_uri_and_routes();
        let mut b = MessageBuilder::request(method, &request_uri)
            .header("Via", via)
            .header("Max-Forwards", DEFAULT_MAX_FORWARDS);
        for route in &routes {
            b = b.header("Route", route);
        }
        b.header("From", &self.local_party)
            .header("To", &self.remote_party)
            .header("Call-ID", &self.call_id)
            .header("CSeq", format_args!("{cseq} {method}"))
    }
}

/// What a fired [`AnswerRetransmission`] timer asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AnswerTimer {
    /// Send the 2xx again.
    Retransmit(Bytes),
    /// 64·T1 passed without an ACK: the TU should end the call with BYE.
    GaveUp,
}

/// Retransmits a UAS's 2xx until the ACK arrives (RFC 3261 §13.3.1.4): first
/// after T1, doubling up to T2, for at most 64·T1.
#[derive(Debug, Clone)]
pub(crate) struct AnswerRetransmission {
    /// CSeq number of the INVITE this 2xx answers (the ACK carries it).
    pub(crate) cseq: u32,
    /// Where the 2xx goes (the INVITE's response address, RFC 3261 §18.2.2).
    pub(crate) target: SocketAddr,
    bytes: Bytes,
    /// `None` on reliable transports, where the transport retransmits.
    backoff: Option<Backoff>,
    give_up_at: Instant,
}

impl AnswerRetransmission {
    pub(crate) fn start(
        now: Instant,
        config: &TimerConfig,
        reliable: bool,
        cseq: u32,
        bytes: Bytes,
        target: SocketAddr,
    ) -> Self {
        AnswerRetransmission {
            cseq,
            target,
            bytes,
            backoff: (!reliable).then(|| Backoff::start(now, config.t1, Some(config.t2))),
            give_up_at: now + config.sixty_four_t1(),
        }
    }

    pub(crate) fn poll_timeout(&self) -> Instant {
        match self.backoff {
            Some(b) => b.next_at.min(self.give_up_at),
            None => self.give_up_at,
        }
    }

    pub(crate) fn on_timeout(&mut self, now: Instant) -> Option<AnswerTimer> {
        if now >= self.give_up_at {
            return Some(AnswerTimer::GaveUp);
        }
        match &mut self.backoff {
            Some(b) if now >= b.next_at => {
                b.fire(now);
                Some(AnswerTimer::Retransmit(self.bytes.clone()))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::parse;

    const INVITE: &[u8] = b"INVITE sip:+918047168000@192.0.2.9 SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1\r\n\
Record-Route: <sip:198.51.100.7;lr>, <sip:198.51.100.8;lr>\r\n\
From: \"Carrier\" <sip:+14085550100@carrier.example>;tag=c1\r\n\
To: <sip:+918047168000@gw.example>\r\n\
Call-ID: call-1@carrier\r\n\
CSeq: 10 INVITE\r\n\
Contact: <sip:+14085550100@192.0.2.1:5070>\r\n\
Content-Length: 0\r\n\r\n";

    fn uas_dialog() -> Dialog {
        let invite = parse(INVITE).unwrap();
        let ok = invite.response(200).to_tag("gw1").build_message().unwrap();
        Dialog::uas(
            &invite,
            &ok.message(),
            "192.0.2.1:5060".parse().unwrap(),
            Transport::Udp,
        )
        .unwrap()
    }

    #[test]
    fn uas_dialog_state_from_invite_and_2xx() {
        let d = uas_dialog();
        assert_eq!(d.role(), DialogRole::Uas);
        assert_eq!(d.call_id(), "call-1@carrier");
        assert_eq!(d.local_tag(), "gw1");
        assert_eq!(d.remote_tag(), Some("c1"));
        assert_eq!(d.remote_target(), "sip:+14085550100@192.0.2.1:5070");
        assert_eq!(
            d.route_set(),
            ["<sip:198.51.100.7;lr>", "<sip:198.51.100.8;lr>"]
        );
        assert_eq!(d.remote_cseq(), Some(10));
        assert_eq!(d.next_hop(), "198.51.100.7:5060".parse().unwrap());
    }

    #[test]
    fn bye_carries_routes_tags_and_increasing_cseq() {
        let mut d = uas_dialog();
        let bye = d
            .request("BYE", "SIP/2.0/UDP 192.0.2.9:5060;branch=z9hG4bKb1")
            .build_message()
            .unwrap();
        let m = bye.message();
        m.validate().unwrap();
        assert_eq!(m.method(), Some("BYE"));
        assert_eq!(
            m.request_uri_raw(),
            Some(&b"sip:+14085550100@192.0.2.1:5070"[..])
        );
        let routes: Vec<String> = m.routes().map(|r| r.unwrap().uri_text.to_owned()).collect();
        assert_eq!(routes, ["sip:198.51.100.7;lr", "sip:198.51.100.8;lr"]);
        assert_eq!(m.from().unwrap().tag(), Some("gw1"));
        assert_eq!(m.to().unwrap().tag(), Some("c1"));
        assert_eq!(m.to().unwrap().display_name().as_deref(), Some("Carrier"));
        assert_eq!(m.cseq().unwrap().seq, 1);
        assert_eq!(m.max_forwards().unwrap(), Some(70));
        let info = d.request("INFO", "SIP/2.0/UDP 192.0.2.9;branch=z9hG4bKb2");
        let info = info.build_message().unwrap();
        assert_eq!(info.message().cseq().unwrap().seq, 2);
    }

    #[test]
    fn strict_router_becomes_the_request_uri() {
        let raw = String::from_utf8(INVITE.to_vec())
            .unwrap()
            .replace("<sip:198.51.100.7;lr>", "<sip:198.51.100.7>");
        let invite = parse(raw.as_bytes()).unwrap();
        let ok = invite.response(200).to_tag("gw1").build_message().unwrap();
        let mut d = Dialog::uas(
            &invite,
            &ok.message(),
            "192.0.2.1:5060".parse().unwrap(),
            Transport::Udp,
        )
        .unwrap();
        let bye = d
            .request("BYE", "SIP/2.0/UDP 192.0.2.9;branch=z9hG4bKb1")
            .build_message()
            .unwrap();
        let m = bye.message();
        assert_eq!(m.request_uri_raw(), Some(&b"sip:198.51.100.7"[..]));
        let routes: Vec<String> = m.routes().map(|r| r.unwrap().uri_text.to_owned()).collect();
        assert_eq!(
            routes,
            ["sip:198.51.100.8;lr", "sip:+14085550100@192.0.2.1:5070"]
        );
    }

    #[test]
    fn remote_cseq_must_not_go_backwards() {
        let mut d = uas_dialog();
        assert!(d.accept_remote_cseq("INFO", 11));
        assert!(!d.accept_remote_cseq("BYE", 9));
        assert!(d.accept_remote_cseq("ACK", 1));
        assert!(d.accept_remote_cseq("INVITE", 12));
        assert_eq!(d.invite_cseq(), 12);
        assert_eq!(d.remote_cseq(), Some(12));
    }

    #[test]
    fn uac_dialog_reverses_record_route_and_acks_with_invite_cseq() {
        let invite = parse(
            b"INVITE sip:bob@192.0.2.9 SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\r\n\
From: <sip:alice@a.example>;tag=a1\r\nTo: <sip:bob@b.example>\r\n\
Call-ID: c2\r\nCSeq: 5 INVITE\r\nContact: <sip:alice@192.0.2.1>\r\n\
Content-Length: 0\r\n\r\n",
        )
        .unwrap();
        let ok = parse(
            b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\r\n\
Record-Route: <sip:10.0.0.1;lr>\r\nRecord-Route: <sip:10.0.0.2;lr>\r\n\
From: <sip:alice@a.example>;tag=a1\r\nTo: <sip:bob@b.example>;tag=b1\r\n\
Call-ID: c2\r\nCSeq: 5 INVITE\r\nContact: <sip:bob@192.0.2.9:5080>\r\n\
Content-Length: 0\r\n\r\n",
        )
        .unwrap();
        let d = Dialog::uac(
            &invite,
            &ok,
            "192.0.2.9:5060".parse().unwrap(),
            Transport::Udp,
        )
        .unwrap();
        assert_eq!(d.route_set(), ["<sip:10.0.0.2;lr>", "<sip:10.0.0.1;lr>"]);
        assert_eq!(d.next_hop(), "10.0.0.2:5060".parse().unwrap());
        let ack = d
            .ack("SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK2")
            .build_message()
            .unwrap();
        let m = ack.message();
        assert_eq!(m.cseq().unwrap().seq, 5);
        assert_eq!(m.cseq().unwrap().method, "ACK");
        assert_eq!(m.to().unwrap().tag(), Some("b1"));
        assert_eq!(m.request_uri_raw(), Some(&b"sip:bob@192.0.2.9:5080"[..]));
    }

    #[test]
    fn answer_retransmits_until_64_t1() {
        let t0 = Instant::now();
        let mut a = AnswerRetransmission::start(
            t0,
            &TimerConfig::default(),
            false,
            1,
            Bytes::from_static(b"200"),
            "192.0.2.1:5060".parse().unwrap(),
        );
        let mut sent = Vec::new();
        loop {
            let at = a.poll_timeout();
            match a.on_timeout(at) {
                Some(AnswerTimer::Retransmit(_)) => sent.push((at - t0).as_millis()),
                Some(AnswerTimer::GaveUp) => {
                    assert_eq!(at - t0, Duration::from_secs(32));
                    break;
                }
                None => panic!("a due timer must act"),
            }
        }
        assert_eq!(
            sent,
            vec![500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500]
        );
        let reliable = AnswerRetransmission::start(
            t0,
            &TimerConfig::default(),
            true,
            1,
            Bytes::new(),
            "192.0.2.1:5060".parse().unwrap(),
        );
        assert_eq!(reliable.poll_timeout(), t0 + Duration::from_secs(32));
    }
}
