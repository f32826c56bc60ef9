//! A UAC and a UAS `Endpoint` driven against each other on simulated time over a
//! seeded lossy, reordering "network": no sockets, no sleeps, fully deterministic.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use switchboard_sip::dialog::DialogId;
use switchboard_sip::endpoint::{
    ClientTxnId, Endpoint, EndpointConfig, Event, ServerTxnId, TransactionId, Transmit,
};
use switchboard_sip::{parse, MessageBuilder, Transport};

const UAC: usize = 0;
const UAS: usize = 1;
const UAC_ADDR: &str = "192.0.2.1:5060";
const UAS_ADDR: &str = "192.0.2.9:5060";
const OFFER: &[u8] = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";
const ANSWER: &[u8] = b"v=0\r\no=- 2 2 IN IP4 192.0.2.9\r\ns=-\r\nc=IN IP4 192.0.2.9\r\nt=0 0\r\nm=audio 5000 RTP/AVP 0\r\n";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// xorshift64*: a tiny seeded generator, enough for loss and jitter decisions.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

struct Packet {
    deliver_at: Instant,
    from: SocketAddr,
    to: SocketAddr,
    transport: Transport,
    bytes: Bytes,
}

struct Node {
    ep: Endpoint,
    addr: SocketAddr,
    /// Everything this node transmitted, in order, with the send time.
    sent: Vec<(Instant, Transmit)>,
}

struct Sim {
    start: Instant,
    now: Instant,
    rng: Rng,
    loss_percent: u64,
    /// Random extra delay per datagram; > 0 reorders datagrams sent together.
    jitter_ms: u64,
    in_flight: Vec<Packet>,
    nodes: [Node; 2],
    events: VecDeque<(usize, Event)>,
}

impl Sim {
    fn new(seed: u64, loss_percent: u64) -> Sim {
        let start = Instant::now();
        let node = |a: &str, seed| Node {
            ep: Endpoint::new(EndpointConfig::new(a, seed)),
            addr: addr(a),
            sent: Vec::new(),
        };
        Sim {
            start,
            now: start,
            rng: Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1),
            loss_percent,
            jitter_ms: 80,
            in_flight: Vec::new(),
            nodes: [node(UAC_ADDR, seed ^ 0xaaaa), node(UAS_ADDR, seed ^ 0x5555)],
            events: VecDeque::new(),
        }
    }

    fn ep(&mut self, who: usize) -> &mut Endpoint {
        &mut self.nodes[who].ep
    }

    /// Moves queued transmits into the network (lost or delayed 5–85 ms, so
    /// packets overtake each other) and queued events into `events`.
    fn flush(&mut self) {
        for who in [UAC, UAS] {
            while let Some(t) = self.nodes[who].ep.poll_transmit() {
                self.nodes[who].sent.push((self.now, t.clone()));
                if self.rng.next() % 100 < self.loss_percent {
                    continue;
                }
                let jitter = self.rng.next() % (self.jitter_ms + 1);
                let delay = Duration::from_millis(5 + jitter);
                self.in_flight.push(Packet {
                    deliver_at: self.now + delay,
                    from: self.nodes[who].addr,
                    to: t.remote,
                    transport: t.transport,
                    bytes: t.bytes,
                });
            }
            while let Some(ev) = self.nodes[who].ep.poll_event() {
                self.events.push_back((who, ev));
            }
        }
    }

    /// Advances to the next packet delivery or timer, but not past `limit`.
    fn step(&mut self, limit: Instant) {
        self.flush();
        let next_packet = self.in_flight.iter().map(|p| p.deliver_at).min();
        let next_timer = [UAC, UAS]
            .into_iter()
            .filter_map(|w| self.nodes[w].ep.poll_timeout())
            .min();
        let next = [next_packet, next_timer, Some(limit)]
            .into_iter()
            .flatten()
            .min()
            .unwrap();
        self.now = self.now.max(next);
        let now = self.now;
        let (due, later): (Vec<Packet>, Vec<Packet>) =
            self.in_flight.drain(..).partition(|p| p.deliver_at <= now);
        self.in_flight = later;
        for p in due {
            if let Some(who) = [UAC, UAS].into_iter().find(|&w| self.nodes[w].addr == p.to) {
                self.nodes[who]
                    .ep
                    .handle_datagram(now, p.from, p.transport, p.bytes);
            }
        }
        for who in [UAC, UAS] {
            if self.nodes[who]
                .ep
                .poll_timeout()
                .is_some_and(|at| at <= now)
            {
                self.nodes[who].ep.handle_timeout(now);
            }
        }
        self.flush();
    }

    fn at(&self, secs: f64) -> Instant {
        self.start + Duration::from_secs_f64(secs)
    }

    /// Count of datagrams `who` sent whose first line starts with `prefix`.
    fn sent_count(&self, who: usize, prefix: &str) -> usize {
        self.nodes[who]
            .sent
            .iter()
            .filter(|(_, t)| t.bytes.starts_with(prefix.as_bytes()))
            .count()
    }
}

fn invite_request(ep: &mut Endpoint, body: bool) -> Bytes {
    let tag = ep.new_tag();
    let call_id = format!("{}@192.0.2.1", ep.new_tag());
    let b = MessageBuilder::request("INVITE", "sip:+918047168000@192.0.2.9")
        .header("Via", ep.new_via(Transport::Udp))
        .header("Max-Forwards", 70)
        .header("From", format!("<sip:+14085550100@192.0.2.1>;tag={tag}"))
        .header("To", "<sip:+918047168000@192.0.2.9>")
        .header("Call-ID", call_id)
        .header("CSeq", "1 INVITE")
        .header("Contact", "<sip:+14085550100@192.0.2.1:5060>");
    if body {
        b.body("application/sdp", OFFER).build().unwrap()
    } else {
        b.build().unwrap()
    }
}

fn answer_200(ep: &mut Endpoint, now: Instant, txn: ServerTxnId, sdp: &[u8]) {
    let ok = ep
        .response(txn, 200)
        .unwrap()
        .header("Contact", "<sip:gw@192.0.2.9:5060>")
        .body("application/sdp", sdp);
    ep.respond(now, txn, ok).unwrap();
}

#[derive(Default, Debug)]
struct CallLog {
    new_invites: usize,
    acks: usize,
    byes: usize,
    ack_timeouts: usize,
    timeouts: Vec<(usize, TransactionId)>,
    uac_statuses: Vec<u16>,
    invite_answered: bool,
    bye_answered: bool,
    ack_body: Vec<u8>,
}

/// UAC calls, UAS answers (100 at once, 180, 200 with SDP), UAC ACKs and hangs
/// up 40 s later (past the 2xx retransmission window, so a missing ACK would show).
fn run_call(seed: u64, loss_percent: u64, jitter_ms: u64) -> (Sim, CallLog) {
    let mut sim = Sim::new(seed, loss_percent);
    sim.jitter_ms = jitter_ms;
    let mut log = CallLog::default();
    let invite = invite_request(sim.ep(UAC), true);
    let now = sim.now;
    let invite_txn = sim
        .ep(UAC)
        .send_request(now, addr(UAS_ADDR), Transport::Udp, invite)
        .unwrap();
    let mut bye_at: Option<(Instant, DialogId)> = None;
    let mut bye_txn: Option<ClientTxnId> = None;
    let deadline = sim.at(150.0);
    while sim.now < deadline {
        let limit = bye_at.map_or(deadline, |(at, _)| at.min(deadline));
        sim.step(limit);
        let now = sim.now;
        if let Some((at, dialog)) = bye_at {
            if now >= at {
                bye_at = None;
                bye_txn = Some(sim.ep(UAC).send_bye(now, dialog).unwrap());
            }
        }
        while let Some((who, ev)) = sim.events.pop_front() {
            match (who, ev) {
                (UAS, Event::NewInvite { txn, .. }) => {
                    log.new_invites += 1;
                    let ringing = sim.ep(UAS).response(txn, 180).unwrap();
                    sim.ep(UAS).respond(now, txn, ringing).unwrap();
                    answer_200(sim.ep(UAS), now, txn, ANSWER);
                }
                (UAS, Event::Ack { request, .. }) => {
                    log.acks += 1;
                    log.ack_body = request.message().body().to_vec();
                }
                (UAS, Event::AckTimedOut { .. }) => log.ack_timeouts += 1,
                (UAS, Event::Bye { txn, .. }) => {
                    log.byes += 1;
                    let ok = sim.ep(UAS).response(txn, 200).unwrap();
                    sim.ep(UAS).respond(now, txn, ok).unwrap();
                }
                (
                    UAC,
                    Event::Response {
                        txn,
                        dialog,
                        response,
                    },
                ) => {
                    let status = response.message().status().unwrap();
                    log.uac_statuses.push(status);
                    if txn == invite_txn && status == 200 {
                        assert!(!log.invite_answered, "one 200 reaches the TU");
                        log.invite_answered = true;
                        assert_eq!(response.message().body(), ANSWER);
                        let dialog = dialog.expect("a 2xx creates the UAC dialog");
                        sim.ep(UAC).send_ack(now, dialog, None).unwrap();
                        bye_at = Some((now + Duration::from_secs(40), dialog));
                    }
                    if Some(txn) == bye_txn && status == 200 {
                        log.bye_answered = true;
                    }
                }
                (who, Event::TransactionTimedOut { txn }) => log.timeouts.push((who, txn)),
                (who, other) => panic!("unexpected event at node {who}: {other:?}"),
            }
        }
    }
    (sim, log)
}

#[test]
fn call_completes_without_loss_and_state_drains() {
    let (mut sim, log) = run_call(1, 0, 0);
    assert_eq!(log.new_invites, 1);
    assert!(log.invite_answered && log.bye_answered, "{log:?}");
    assert_eq!((log.acks, log.byes, log.ack_timeouts), (1, 1, 0));
    assert!(log.timeouts.is_empty());
    assert_eq!(log.uac_statuses, [100, 180, 200, 200]);
    // Without loss nothing is sent twice.
    assert_eq!(sim.sent_count(UAC, "INVITE"), 1);
    assert_eq!(
        sim.sent_count(UAS, "SIP/2.0 200"),
        2,
        "one 200 for INVITE, one for BYE"
    );
    assert_eq!(sim.sent_count(UAC, "ACK"), 1);
    for who in [UAC, UAS] {
        assert_eq!(sim.ep(who).dialog_count(), 0);
        assert_eq!(sim.ep(who).transaction_count(), 0);
        assert_eq!(sim.ep(who).poll_timeout(), None);
    }
}

#[test]
fn call_completes_under_10_to_30_percent_loss() {
    let mut retransmitted_invites = 0;
    for loss in [10, 20, 30] {
        for seed in 1..=25 {
            let (mut sim, log) = run_call(seed, loss, 80);
            let ctx = format!("loss {loss}% seed {seed}: {log:?}");
            assert_eq!(log.new_invites, 1, "retransmitted INVITEs absorbed; {ctx}");
            assert!(log.invite_answered, "{ctx}");
            assert_eq!(log.acks, 1, "{ctx}");
            assert_eq!(log.ack_timeouts, 0, "{ctx}");
            assert_eq!(log.byes, 1, "{ctx}");
            assert!(log.bye_answered, "{ctx}");
            assert!(log.timeouts.is_empty(), "{ctx}");
            retransmitted_invites += sim.sent_count(UAC, "INVITE") - 1;
            for who in [UAC, UAS] {
                assert_eq!(sim.ep(who).dialog_count(), 0, "{ctx}");
                assert_eq!(sim.ep(who).transaction_count(), 0, "{ctx}");
            }
        }
    }
    assert!(
        retransmitted_invites > 0,
        "the loss really forced retransmissions"
    );
}

#[test]
fn late_offer_answer_arrives_in_the_ack() {
    let mut sim = Sim::new(7, 0);
    let invite = invite_request(sim.ep(UAC), false);
    let now = sim.now;
    sim.ep(UAC)
        .send_request(now, addr(UAS_ADDR), Transport::Udp, invite)
        .unwrap();
    let mut ack_body = None;
    for _ in 0..50 {
        let limit = sim.now + Duration::from_secs(1);
        sim.step(limit);
        let now = sim.now;
        while let Some((who, ev)) = sim.events.pop_front() {
            match (who, ev) {
                (UAS, Event::NewInvite { txn, request, .. }) => {
                    assert!(request.message().body().is_empty());
                    // Late offer: the offer goes in our 200.
                    answer_200(sim.ep(UAS), now, txn, OFFER);
                }
                (
                    UAC,
                    Event::Response {
                        dialog: Some(d),
                        response,
                        ..
                    },
                ) => {
                    assert_eq!(response.message().body(), OFFER);
                    sim.ep(UAC)
                        .send_ack(now, d, Some(("application/sdp", ANSWER)))
                        .unwrap();
                }
                (UAS, Event::Ack { request, .. }) => {
                    ack_body = Some(request.message().body().to_vec());
                }
                _ => {}
            }
        }
    }
    assert_eq!(ack_body.as_deref(), Some(ANSWER));
}

#[test]
fn uas_hangs_up_with_bye_through_loss() {
    for seed in 1..=10 {
        let mut sim = Sim::new(seed, 20);
        let invite = invite_request(sim.ep(UAC), true);
        let now = sim.now;
        sim.ep(UAC)
            .send_request(now, addr(UAS_ADDR), Transport::Udp, invite)
            .unwrap();
        let (mut uac_byes, mut bye_ok) = (0, false);
        let mut uas_dialog = None;
        let mut bye_sent = false;
        while sim.now < sim.at(120.0) {
            let limit = sim.at(120.0);
            sim.step(limit);
            let now = sim.now;
            while let Some((who, ev)) = sim.events.pop_front() {
                match (who, ev) {
                    (UAS, Event::NewInvite { txn, .. }) => {
                        answer_200(sim.ep(UAS), now, txn, ANSWER)
                    }
                    (
                        UAC,
                        Event::Response {
                            dialog: Some(d), ..
                        },
                    ) => sim.ep(UAC).send_ack(now, d, None).unwrap(),
                    (UAS, Event::Ack { dialog, .. }) => uas_dialog = Some(dialog),
                    (UAC, Event::Bye { txn, .. }) => {
                        uac_byes += 1;
                        let ok = sim.ep(UAC).response(txn, 200).unwrap();
                        sim.ep(UAC).respond(now, txn, ok).unwrap();
                    }
                    (UAS, Event::Response { response, .. }) => {
                        bye_ok |= response.message().status() == Some(200);
                    }
                    _ => {}
                }
            }
            if let (Some(d), false) = (uas_dialog, bye_sent) {
                let bye = sim.ep(UAS).dialog(d).unwrap();
                assert_eq!(bye.remote_target(), "sip:+14085550100@192.0.2.1:5060");
                sim.ep(UAS).send_bye(now, d).unwrap();
                bye_sent = true;
            }
        }
        assert_eq!(uac_byes, 1, "seed {seed}: BYE retransmissions absorbed");
        assert!(bye_ok, "seed {seed}");
        assert_eq!(sim.ep(UAC).dialog_count(), 0);
        assert_eq!(sim.ep(UAS).dialog_count(), 0);
    }
}

#[test]
fn cancel_before_answer_gives_200_487_and_the_ack_is_absorbed() {
    for (seed, loss) in [(1, 0), (2, 20), (3, 20), (4, 30)] {
        let mut sim = Sim::new(seed, loss);
        let invite = invite_request(sim.ep(UAC), true);
        let now = sim.now;
        let invite_txn = sim
            .ep(UAC)
            .send_request(now, addr(UAS_ADDR), Transport::Udp, invite)
            .unwrap();
        let mut cancel_txn = None;
        let (mut cancels, mut cancel_ok, mut got_487, mut uas_acks) = (0, false, 0, 0);
        let mut timeouts = Vec::new();
        while sim.now < sim.at(100.0) {
            let limit = sim.at(100.0);
            sim.step(limit);
            let now = sim.now;
            while let Some((who, ev)) = sim.events.pop_front() {
                match (who, ev) {
                    (UAS, Event::NewInvite { txn, .. }) => {
                        let ringing = sim.ep(UAS).response(txn, 180).unwrap();
                        sim.ep(UAS).respond(now, txn, ringing).unwrap();
                    }
                    (UAS, Event::Cancel { invite, .. }) => {
                        cancels += 1;
                        let terminated = sim.ep(UAS).response(invite, 487).unwrap();
                        sim.ep(UAS).respond(now, invite, terminated).unwrap();
                    }
                    (UAS, Event::Ack { .. }) => uas_acks += 1,
                    (UAC, Event::Response { txn, response, .. }) => {
                        let status = response.message().status().unwrap();
                        if txn == invite_txn && status == 180 && cancel_txn.is_none() {
                            cancel_txn = Some(sim.ep(UAC).send_cancel(now, invite_txn).unwrap());
                        }
                        if Some(txn) == cancel_txn && status == 200 {
                            cancel_ok = true;
                        }
                        if txn == invite_txn && status == 487 {
                            got_487 += 1;
                        }
                    }
                    (who, Event::TransactionTimedOut { txn }) => timeouts.push((who, txn)),
                    _ => {}
                }
            }
        }
        let ctx = format!("seed {seed} loss {loss}");
        assert_eq!(cancels, 1, "{ctx}");
        assert!(cancel_ok, "{ctx}");
        assert_eq!(got_487, 1, "487 retransmissions absorbed by the UAC; {ctx}");
        assert_eq!(
            uas_acks, 0,
            "the ACK for 487 stays in the transaction; {ctx}"
        );
        assert!(
            timeouts.is_empty(),
            "Timer H never fired: the ACK arrived; {ctx}"
        );
        assert!(sim.sent_count(UAC, "ACK") >= 1);
        for who in [UAC, UAS] {
            assert_eq!(sim.ep(who).transaction_count(), 0, "{ctx}");
            assert_eq!(sim.ep(who).dialog_count(), 0, "{ctx}");
        }
    }
}

// ---- one endpoint driven by hand ------------------------------------------------

const CARRIER: &str = "198.51.100.20:5060";

fn carrier_invite(branch: &str) -> Bytes {
    Bytes::from(format!(
        "INVITE sip:+918047168000@192.0.2.9 SIP/2.0\r\n\
Via: SIP/2.0/UDP 198.51.100.20:5060;branch={branch}\r\n\
Max-Forwards: 70\r\n\
From: <sip:+14085550100@198.51.100.20>;tag=c1\r\n\
To: <sip:+918047168000@192.0.2.9>\r\n\
Call-ID: call-{branch}\r\n\
CSeq: 1 INVITE\r\n\
Contact: <sip:+14085550100@198.51.100.20:5060>\r\n\
Content-Length: 0\r\n\r\n"
    ))
}

fn uas() -> Endpoint {
    Endpoint::new(EndpointConfig::new(UAS_ADDR, 99))
}

fn drain(ep: &mut Endpoint) -> (Vec<Transmit>, Vec<Event>) {
    let mut t = Vec::new();
    while let Some(x) = ep.poll_transmit() {
        t.push(x);
    }
    let mut e = Vec::new();
    while let Some(x) = ep.poll_event() {
        e.push(x);
    }
    (t, e)
}

fn status_of(t: &Transmit) -> u16 {
    parse(&t.bytes).unwrap().status().unwrap()
}

fn new_invite_txn(events: &[Event]) -> ServerTxnId {
    events
        .iter()
        .find_map(|e| match e {
            Event::NewInvite { txn, .. } => Some(*txn),
            _ => None,
        })
        .expect("NewInvite")
}

/// Fires every timer up to `until`, returning the transmits with their instants.
fn run_timers(ep: &mut Endpoint, until: Instant) -> (Vec<(Instant, Transmit)>, Vec<Event>) {
    let mut sent = Vec::new();
    let mut events = Vec::new();
    while let Some(at) = ep.poll_timeout() {
        if at > until {
            break;
        }
        ep.handle_timeout(at);
        let (t, e) = drain(ep);
        sent.extend(t.into_iter().map(|t| (at, t)));
        events.extend(e);
    }
    (sent, events)
}

#[test]
fn invite_retransmissions_get_the_last_response_and_one_event() {
    let mut ep = uas();
    let t0 = Instant::now();
    let inv = carrier_invite("z9hG4bKretx");
    ep.handle_datagram(t0, addr(CARRIER), Transport::Udp, inv.clone());
    let (sent, events) = drain(&mut ep);
    assert_eq!(sent.iter().map(status_of).collect::<Vec<_>>(), [100]);
    let txn = new_invite_txn(&events);
    ep.handle_datagram(t0, addr(CARRIER), Transport::Udp, inv.clone());
    let (sent, events) = drain(&mut ep);
    assert_eq!(sent.iter().map(status_of).collect::<Vec<_>>(), [100]);
    assert!(events.is_empty(), "a retransmission is not a new INVITE");
    let ringing = ep.response(txn, 180).unwrap();
    ep.respond(t0, txn, ringing).unwrap();
    drain(&mut ep);
    ep.handle_datagram(t0, addr(CARRIER), Transport::Udp, inv);
    let (sent, events) = drain(&mut ep);
    assert_eq!(sent.iter().map(status_of).collect::<Vec<_>>(), [180]);
    assert!(events.is_empty());
    // The 180 carries our To tag; the 100 did not need one.
    let to_tag = parse(&sent[0].bytes)
        .unwrap()
        .to()
        .unwrap()
        .tag()
        .map(str::to_owned);
    assert!(to_tag.is_some());
}

#[test]
fn failure_is_retransmitted_until_timer_h_without_ack() {
    let mut ep = uas();
    let t0 = Instant::now();
    ep.handle_datagram(
        t0,
        addr(CARRIER),
        Transport::Udp,
        carrier_invite("z9hG4bKh"),
    );
    let (_, events) = drain(&mut ep);
    let txn = new_invite_txn(&events);
    let busy = ep.response(txn, 486).unwrap();
    ep.respond(t0, txn, busy).unwrap();
    let (first, _) = drain(&mut ep);
    assert_eq!(first.iter().map(status_of).collect::<Vec<_>>(), [486]);
    let (sent, events) = run_timers(&mut ep, t0 + Duration::from_secs(60));
    let offsets: Vec<u128> = sent.iter().map(|(at, _)| (*at - t0).as_millis()).collect();
    assert_eq!(
        offsets,
        [500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500],
        "Timer G: T1 doubling to T2"
    );
    assert!(sent.iter().all(|(_, t)| status_of(t) == 486));
    assert!(matches!(
        events.as_slice(),
        [Event::TransactionTimedOut { txn: TransactionId::Server(id) }] if *id == txn
    ));
    assert_eq!(ep.transaction_count(), 0);
    assert!(ep
        .respond(t0, txn, MessageBuilder::response(200, "OK"))
        .is_err());
}

#[test]
fn ack_stops_failure_retransmissions_and_timer_i_absorbs_repeats() {
    let mut ep = uas();
    let t0 = Instant::now();
    ep.handle_datagram(
        t0,
        addr(CARRIER),
        Transport::Udp,
        carrier_invite("z9hG4bKack"),
    );
    let (_, events) = drain(&mut ep);
    let txn = new_invite_txn(&events);
    let resp = ep.response(txn, 404).unwrap();
    ep.respond(t0, txn, resp).unwrap();
    let (sent, _) = drain(&mut ep);
    let to_tag = parse(&sent[0].bytes)
        .unwrap()
        .to()
        .unwrap()
        .tag()
        .unwrap()
        .to_owned();
    let (retx, _) = run_timers(&mut ep, t0 + Duration::from_millis(1600));
    assert_eq!(retx.len(), 2);
    let ack = Bytes::from(format!(
        "ACK sip:+918047168000@192.0.2.9 SIP/2.0\r\n\
Via: SIP/2.0/UDP 198.51.100.20:5060;branch=z9hG4bKack\r\nMax-Forwards: 70\r\n\
From: <sip:+14085550100@198.51.100.20>;tag=c1\r\nTo: <sip:+918047168000@192.0.2.9>;tag={to_tag}\r\n\
Call-ID: call-z9hG4bKack\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
    ));
    let t1 = t0 + Duration::from_millis(1700);
    ep.handle_datagram(t1, addr(CARRIER), Transport::Udp, ack.clone());
    ep.handle_datagram(t1, addr(CARRIER), Transport::Udp, ack);
    let (sent, events) = drain(&mut ep);
    assert!(sent.is_empty() && events.is_empty(), "ACKs absorbed");
    let (retx, events) = run_timers(&mut ep, t0 + Duration::from_secs(60));
    assert!(retx.is_empty(), "no retransmission after the ACK");
    assert!(events.is_empty(), "Timer H did not fire");
    assert_eq!(ep.transaction_count(), 0, "Timer I ended the transaction");
}

#[test]
fn non_invite_client_timer_f_gives_up() {
    let mut ep = Endpoint::new(EndpointConfig::new(UAC_ADDR, 5));
    let t0 = Instant::now();
    let options = MessageBuilder::request("OPTIONS", "sip:192.0.2.250")
        .header("Via", ep.new_via(Transport::Udp))
        .header("Max-Forwards", 70)
        .header("From", "<sip:gw@192.0.2.1>;tag=o1")
        .header("To", "<sip:192.0.2.250>")
        .header("Call-ID", "opt-1")
        .header("CSeq", "1 OPTIONS")
        .build()
        .unwrap();
    let txn = ep
        .send_request(t0, addr("192.0.2.250:5060"), Transport::Udp, options)
        .unwrap();
    let (first, _) = drain(&mut ep);
    assert_eq!(first.len(), 1);
    let (sent, events) = run_timers(&mut ep, t0 + Duration::from_secs(60));
    let offsets: Vec<u128> = sent.iter().map(|(at, _)| (*at - t0).as_millis()).collect();
    assert_eq!(
        offsets,
        [500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500],
        "Timer E"
    );
    assert!(sent.iter().all(|(_, t)| t.bytes == first[0].bytes));
    assert!(matches!(
        events.as_slice(),
        [Event::TransactionTimedOut { txn: TransactionId::Client(id) }] if *id == txn
    ));
    assert_eq!(ep.transaction_count(), 0);
}

#[test]
fn malformed_request_gets_a_stateless_400_and_bad_responses_vanish() {
    let mut ep = uas();
    let t0 = Instant::now();
    let negative_length = b"OPTIONS sip:gw@192.0.2.9 SIP/2.0\r\n\
Via: SIP/2.0/UDP 10.1.1.1:5070;branch=z9hG4bKbad\r\n\
From: <sip:a@10.1.1.1>;tag=1\r\nTo: <sip:gw@192.0.2.9>\r\nCall-ID: bad-1\r\nCSeq: 1 OPTIONS\r\n\
Content-Length: -3\r\n\r\n";
    ep.handle_datagram(
        t0,
        addr("203.0.113.5:6000"),
        Transport::Udp,
        Bytes::from_static(negative_length),
    );
    let (sent, events) = drain(&mut ep);
    assert!(events.is_empty());
    assert_eq!(sent.len(), 1);
    assert_eq!(status_of(&sent[0]), 400);
    assert_eq!(
        sent[0].remote,
        addr("203.0.113.5:5070"),
        "source IP, sent-by port"
    );
    assert_eq!(ep.transaction_count(), 0, "stateless");

    // Parses but fails validation (no Call-ID): 400 from the parsed message.
    let insufficient = b"OPTIONS sip:gw@192.0.2.9 SIP/2.0\r\n\
Via: SIP/2.0/UDP 10.1.1.1;branch=z9hG4bKins;rport\r\n\
From: <sip:a@10.1.1.1>;tag=1\r\nTo: <sip:gw@192.0.2.9>\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n";
    ep.handle_datagram(
        t0,
        addr("203.0.113.5:6000"),
        Transport::Udp,
        Bytes::from_static(insufficient),
    );
    let (sent, _) = drain(&mut ep);
    assert_eq!(sent.iter().map(status_of).collect::<Vec<_>>(), [400]);
    assert_eq!(sent[0].remote, addr("203.0.113.5:6000"), "rport");

    // A malformed response and a stray response: dropped silently.
    for raw in [
        &b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.9;branch=z9hG4bKx\r\nContent-Length: 99\r\n\r\n"[..],
        &b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 192.0.2.9;branch=z9hG4bKnone\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: z\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"[..],
    ] {
        ep.handle_datagram(t0, addr(CARRIER), Transport::Udp, Bytes::copy_from_slice(raw));
        let (sent, events) = drain(&mut ep);
        assert!(sent.is_empty() && events.is_empty());
    }
}

#[test]
fn responses_follow_18_2_2_received_and_rport() {
    let mut ep = uas();
    let t0 = Instant::now();
    let nat_source = addr("203.0.113.7:40000");
    let via_cases = [
        // (Via, transport, expected destination, expected top Via in the response)
        (
            "SIP/2.0/UDP 10.0.0.5:5062;branch=z9hG4bKr1;rport",
            Transport::Udp,
            "203.0.113.7:40000",
            "SIP/2.0/UDP 10.0.0.5:5062;branch=z9hG4bKr1;received=203.0.113.7;rport=40000",
        ),
        (
            "SIP/2.0/UDP 10.0.0.5:5062;branch=z9hG4bKr2",
            Transport::Udp,
            "203.0.113.7:5062",
            "SIP/2.0/UDP 10.0.0.5:5062;branch=z9hG4bKr2;received=203.0.113.7",
        ),
        (
            "SIP/2.0/UDP carrier.example.net;branch=z9hG4bKr3",
            Transport::Udp,
            "203.0.113.7:5060",
            "SIP/2.0/UDP carrier.example.net;branch=z9hG4bKr3;received=203.0.113.7",
        ),
        (
            "SIP/2.0/UDP 203.0.113.7:5080;branch=z9hG4bKr4",
            Transport::Udp,
            "203.0.113.7:5080",
            "SIP/2.0/UDP 203.0.113.7:5080;branch=z9hG4bKr4",
        ),
        (
            "SIP/2.0/TCP 10.0.0.5:5062;branch=z9hG4bKr5",
            Transport::Tcp,
            "203.0.113.7:40000",
            "SIP/2.0/TCP 10.0.0.5:5062;branch=z9hG4bKr5;received=203.0.113.7",
        ),
    ];
    for (i, (via, transport, destination, echoed)) in via_cases.into_iter().enumerate() {
        let options = format!(
            "OPTIONS sip:gw@192.0.2.9 SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\n\
From: <sip:a@b>;tag=1\r\nTo: <sip:gw@192.0.2.9>\r\nCall-ID: rport-{i}\r\nCSeq: 1 OPTIONS\r\n\
Content-Length: 0\r\n\r\n"
        );
        ep.handle_datagram(t0, nat_source, transport, Bytes::from(options));
        let (_, events) = drain(&mut ep);
        let Some(Event::Options { txn, .. }) = events.first() else {
            panic!("{events:?}")
        };
        let ok = ep.response(*txn, 200).unwrap();
        ep.respond(t0, *txn, ok).unwrap();
        let (sent, _) = drain(&mut ep);
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].remote, addr(destination), "{via}");
        assert_eq!(sent[0].transport, transport);
        let response = parse(&sent[0].bytes).unwrap();
        assert_eq!(response.via().unwrap().to_string(), echoed);
    }
}

#[test]
fn rfc2543_invite_without_branch_is_accepted_and_its_ack_matched() {
    let mut ep = uas();
    let t0 = Instant::now();
    let invite = b"INVITE sip:+918047168000@192.0.2.9 SIP/2.0\r\n\
Via: SIP/2.0/UDP 198.51.100.30:5060\r\n\
From: <sip:caller@198.51.100.30>\r\nTo: <sip:+918047168000@192.0.2.9>\r\n\
Call-ID: old-style@198.51.100.30\r\nCSeq: 8 INVITE\r\n\r\n";
    let source = addr("198.51.100.30:5060");
    ep.handle_datagram(t0, source, Transport::Udp, Bytes::from_static(invite));
    let (sent, events) = drain(&mut ep);
    let txn = new_invite_txn(&events);
    assert_eq!(sent.iter().map(status_of).collect::<Vec<_>>(), [100]);
    // The retransmission matches by the RFC 2543 rules.
    ep.handle_datagram(t0, source, Transport::Udp, Bytes::from_static(invite));
    let (sent, events) = drain(&mut ep);
    assert_eq!(sent.len(), 1);
    assert!(events.is_empty());
    let unavailable = ep.response(txn, 480).unwrap();
    ep.respond(t0, txn, unavailable).unwrap();
    let (sent, _) = drain(&mut ep);
    let to_tag = parse(&sent[0].bytes)
        .unwrap()
        .to()
        .unwrap()
        .tag()
        .unwrap()
        .to_owned();
    let ack = format!(
        "ACK sip:+918047168000@192.0.2.9 SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.30:5060\r\n\
From: <sip:caller@198.51.100.30>\r\nTo: <sip:+918047168000@192.0.2.9>;tag={to_tag}\r\n\
Call-ID: old-style@198.51.100.30\r\nCSeq: 8 ACK\r\n\r\n"
    );
    ep.handle_datagram(t0, source, Transport::Udp, Bytes::from(ack));
    let (retx, events) = run_timers(&mut ep, t0 + Duration::from_secs(60));
    assert!(retx.is_empty(), "the ACK stopped Timer G");
    assert!(events.is_empty(), "no Timer H");
    assert_eq!(ep.transaction_count(), 0);
}

fn shared_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared");
    dir.is_dir().then_some(dir)
}

#[test]
fn torture_inv2543_gets_a_new_invite_event() {
    let Some(dir) = shared_dir() else {
        eprintln!("skipped: ../shared not found");
        return;
    };
    let bytes = std::fs::read(dir.join("sip-torture/rfc4475/inv2543.dat")).unwrap();
    let mut ep = uas();
    let t0 = Instant::now();
    ep.handle_datagram(
        t0,
        addr("192.0.2.50:5060"),
        Transport::Udp,
        Bytes::from(bytes),
    );
    let (sent, events) = drain(&mut ep);
    let txn = new_invite_txn(&events);
    assert_eq!(sent.iter().map(status_of).collect::<Vec<_>>(), [100]);
    let ok = ep.response(txn, 486).unwrap();
    ep.respond(t0, txn, ok).unwrap();
    let (sent, _) = drain(&mut ep);
    assert_eq!(status_of(&sent[0]), 486);
}

#[test]
fn cancel_without_a_matching_invite_gets_481() {
    let mut ep = uas();
    let t0 = Instant::now();
    let cancel = b"CANCEL sip:+918047168000@192.0.2.9 SIP/2.0\r\n\
Via: SIP/2.0/UDP 198.51.100.20:5060;branch=z9hG4bKnothing\r\nMax-Forwards: 70\r\n\
From: <sip:+14085550100@198.51.100.20>;tag=c1\r\nTo: <sip:+918047168000@192.0.2.9>\r\n\
Call-ID: nothing\r\nCSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n";
    ep.handle_datagram(
        t0,
        addr(CARRIER),
        Transport::Udp,
        Bytes::from_static(cancel),
    );
    let (sent, events) = drain(&mut ep);
    assert_eq!(sent.iter().map(status_of).collect::<Vec<_>>(), [481]);
    assert!(events.is_empty());
}

/// Establishes a call on `ep` from the carrier and returns (dialog, our To tag).
fn established(ep: &mut Endpoint, t0: Instant, branch: &str) -> (DialogId, String) {
    ep.handle_datagram(t0, addr(CARRIER), Transport::Udp, carrier_invite(branch));
    let (_, events) = drain(ep);
    let txn = new_invite_txn(&events);
    answer_200(ep, t0, txn, ANSWER);
    let (sent, _) = drain(ep);
    let to_tag = parse(&sent[0].bytes)
        .unwrap()
        .to()
        .unwrap()
        .tag()
        .unwrap()
        .to_owned();
    let ack = format!(
        "ACK sip:gw@192.0.2.9:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.20:5060;branch={branch}a\r\n\
Max-Forwards: 70\r\nFrom: <sip:+14085550100@198.51.100.20>;tag=c1\r\n\
To: <sip:+918047168000@192.0.2.9>;tag={to_tag}\r\nCall-ID: call-{branch}\r\nCSeq: 1 ACK\r\n\
Content-Length: 0\r\n\r\n"
    );
    ep.handle_datagram(t0, addr(CARRIER), Transport::Udp, Bytes::from(ack));
    let (_, events) = drain(ep);
    let Some(Event::Ack { dialog, .. }) = events.first() else {
        panic!("{events:?}")
    };
    (*dialog, to_tag)
}

fn in_dialog(method: &str, branch: &str, call: &str, to_tag: &str, cseq: u32) -> Bytes {
    Bytes::from(format!(
        "{method} sip:gw@192.0.2.9:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.20:5060;branch={branch}\r\n\
Max-Forwards: 70\r\nFrom: <sip:+14085550100@198.51.100.20>;tag=c1\r\n\
To: <sip:+918047168000@192.0.2.9>;tag={to_tag}\r\nCall-ID: call-{call}\r\nCSeq: {cseq} {method}\r\n\
Contact: <sip:+14085550100@198.51.100.20:5090>\r\nContent-Length: 0\r\n\r\n"
    ))
}

#[test]
fn in_dialog_requests_match_the_dialog_or_get_481_and_500() {
    let mut ep = uas();
    let t0 = Instant::now();
    let (dialog, to_tag) = established(&mut ep, t0, "z9hG4bKdlg");

    ep.handle_datagram(
        t0,
        addr(CARRIER),
        Transport::Udp,
        in_dialog("INFO", "z9hG4bKi1", "z9hG4bKdlg", &to_tag, 2),
    );
    let (_, events) = drain(&mut ep);
    let Some(Event::Info { txn, dialog: d, .. }) = events.first() else {
        panic!("{events:?}")
    };
    assert_eq!(*d, dialog);
    let ok = ep.response(*txn, 200).unwrap();
    ep.respond(t0, *txn, ok).unwrap();
    drain(&mut ep);

    // Out of order (CSeq went backwards): 500.
    ep.handle_datagram(
        t0,
        addr(CARRIER),
        Transport::Udp,
        in_dialog("INFO", "z9hG4bKi0", "z9hG4bKdlg", &to_tag, 1),
    );
    let (sent, events) = drain(&mut ep);
    assert!(events.is_empty());
    assert_eq!(sent.iter().map(status_of).collect::<Vec<_>>(), [500]);

    // Unknown tag: 481.
    ep.handle_datagram(
        t0,
        addr(CARRIER),
        Transport::Udp,
        in_dialog("BYE", "z9hG4bKb0", "z9hG4bKdlg", "wrong", 3),
    );
    let (sent, _) = drain(&mut ep);
    assert_eq!(sent.iter().map(status_of).collect::<Vec<_>>(), [481]);

    // Re-INVITE: answered, its 2xx retransmitted until the ACK; target refreshed.
    ep.handle_datagram(
        t0,
        addr(CARRIER),
        Transport::Udp,
        in_dialog("INVITE", "z9hG4bKre", "z9hG4bKdlg", &to_tag, 4),
    );
    let (_, events) = drain(&mut ep);
    let txn = events
        .iter()
        .find_map(|e| match e {
            Event::ReInvite { txn, dialog: d, .. } if *d == dialog => Some(*txn),
            _ => None,
        })
        .expect("ReInvite");
    assert_eq!(
        ep.dialog(dialog).unwrap().remote_target(),
        "sip:+14085550100@198.51.100.20:5090"
    );
    answer_200(&mut ep, t0, txn, ANSWER);
    drain(&mut ep);
    let (retx, _) = run_timers(&mut ep, t0 + Duration::from_millis(1600));
    assert_eq!(retx.len(), 2, "2xx to the re-INVITE retransmitted");
    assert!(ep.dialog(dialog).unwrap().awaiting_ack());
    ep.handle_datagram(
        t0 + Duration::from_millis(1700),
        addr(CARRIER),
        Transport::Udp,
        in_dialog("ACK", "z9hG4bKreack", "z9hG4bKdlg", &to_tag, 4),
    );
    let (_, events) = drain(&mut ep);
    assert!(matches!(events.as_slice(), [Event::Ack { .. }]));

    // BYE: answered 200, the dialog ends, a late BYE retransmission still gets 200.
    let bye = in_dialog("BYE", "z9hG4bKbye", "z9hG4bKdlg", &to_tag, 5);
    ep.handle_datagram(t0, addr(CARRIER), Transport::Udp, bye.clone());
    let (_, events) = drain(&mut ep);
    let Some(Event::Bye { txn, .. }) = events.first() else {
        panic!("{events:?}")
    };
    let ok = ep.response(*txn, 200).unwrap();
    ep.respond(t0, *txn, ok).unwrap();
    drain(&mut ep);
    assert_eq!(ep.dialog_count(), 0);
    ep.handle_datagram(t0, addr(CARRIER), Transport::Udp, bye);
    let (sent, events) = drain(&mut ep);
    assert_eq!(sent.iter().map(status_of).collect::<Vec<_>>(), [200]);
    assert!(events.is_empty());
}

#[test]
fn missing_ack_makes_the_2xx_give_up_and_reports_it() {
    let mut ep = uas();
    let t0 = Instant::now();
    ep.handle_datagram(
        t0,
        addr(CARRIER),
        Transport::Udp,
        carrier_invite("z9hG4bKnoack"),
    );
    let (_, events) = drain(&mut ep);
    let txn = new_invite_txn(&events);
    answer_200(&mut ep, t0, txn, ANSWER);
    drain(&mut ep);
    let (retx, events) = run_timers(&mut ep, t0 + Duration::from_secs(40));
    assert_eq!(retx.len(), 10, "2xx: T1 doubling to T2 until 64·T1");
    assert!(retx.iter().all(|(_, t)| status_of(t) == 200));
    let dialog = events
        .iter()
        .find_map(|e| match e {
            Event::AckTimedOut { dialog } => Some(*dialog),
            _ => None,
        })
        .expect("AckTimedOut");
    // §13.3.1.4: the TU ends the dialog with BYE.
    let bye_txn = ep.send_bye(t0 + Duration::from_secs(40), dialog).unwrap();
    let (sent, _) = drain(&mut ep);
    let bye = parse(&sent[0].bytes).unwrap();
    assert_eq!(bye.method(), Some("BYE"));
    assert_eq!(sent[0].remote, addr(CARRIER));
    assert_eq!(bye.to().unwrap().tag(), Some("c1"));
    let _ = bye_txn;
}

#[test]
fn transaction_cap_answers_503_statelessly() {
    let mut config = EndpointConfig::new(UAS_ADDR, 3);
    config.max_transactions = 2;
    let mut ep = Endpoint::new(config);
    let t0 = Instant::now();
    for (i, expect) in [(1, 100), (2, 100), (3, 503)] {
        ep.handle_datagram(
            t0,
            addr(CARRIER),
            Transport::Udp,
            carrier_invite(&format!("z9hG4bKcap{i}")),
        );
        let (sent, events) = drain(&mut ep);
        assert_eq!(sent.iter().map(status_of).collect::<Vec<_>>(), [expect]);
        assert_eq!(events.len(), usize::from(expect == 100));
    }
    assert_eq!(ep.transaction_count(), 2);
    let (sent, _) = drain(&mut ep);
    assert!(sent.is_empty());
}

#[test]
fn tcp_has_no_retransmissions_and_no_linger() {
    let mut ep = uas();
    let t0 = Instant::now();
    let conn = addr("198.51.100.20:43210");
    let invite = String::from_utf8(carrier_invite("z9hG4bKtcp").to_vec())
        .unwrap()
        .replace("SIP/2.0/UDP", "SIP/2.0/TCP");
    ep.handle_datagram(t0, conn, Transport::Tcp, Bytes::from(invite));
    let (sent, events) = drain(&mut ep);
    assert_eq!(sent[0].remote, conn);
    assert_eq!(sent[0].transport, Transport::Tcp);
    let txn = new_invite_txn(&events);
    let busy = ep.response(txn, 486).unwrap();
    ep.respond(t0, txn, busy).unwrap();
    drain(&mut ep);
    assert_eq!(
        ep.poll_timeout(),
        Some(t0 + Duration::from_secs(32)),
        "only Timer H"
    );
    let (retx, events) = run_timers(&mut ep, t0 + Duration::from_secs(10));
    assert!(retx.is_empty() && events.is_empty());
}

#[test]
fn unanswered_invite_gets_408_from_the_endpoint() {
    let mut ep = uas();
    let t0 = Instant::now();
    ep.handle_datagram(
        t0,
        addr(CARRIER),
        Transport::Udp,
        carrier_invite("z9hG4bKslow"),
    );
    let (_, events) = drain(&mut ep);
    let txn = new_invite_txn(&events);
    let (sent, events) = run_timers(&mut ep, t0 + Duration::from_secs(181));
    assert_eq!(status_of(&sent[0].1), 408);
    assert_eq!(sent[0].0, t0 + Duration::from_secs(180));
    assert!(matches!(
        events.first(),
        Some(Event::TransactionTimedOut { txn: TransactionId::Server(id) }) if *id == txn
    ));
}

#[test]
fn digest_challenge_then_authenticated_invite() {
    use switchboard_sip::auth::{
        digest_response, DigestAuthorization, DigestVerifier, Verification,
    };
    use switchboard_sip::HeaderName;

    let verifier = DigestVerifier::new("switchboard", b"0123456789abcdef".to_vec());
    let mut sim = Sim::new(11, 0);
    let uri = "sip:+918047168000@192.0.2.9";
    let build_invite = |ep: &mut Endpoint, cseq: u32, authorization: Option<String>| {
        let mut b = MessageBuilder::request("INVITE", uri)
            .header("Via", ep.new_via(Transport::Udp))
            .header("Max-Forwards", 70)
            .header("From", "<sip:trunk@192.0.2.1>;tag=auth1")
            .header("To", "<sip:+918047168000@192.0.2.9>")
            .header("Call-ID", "auth-call@192.0.2.1")
            .header("CSeq", format!("{cseq} INVITE"))
            .header("Contact", "<sip:trunk@192.0.2.1:5060>");
        if let Some(a) = authorization {
            b = b.header("Authorization", a);
        }
        b.body("application/sdp", OFFER).build().unwrap()
    };
    let first = build_invite(sim.ep(UAC), 1, None);
    let now = sim.now;
    sim.ep(UAC)
        .send_request(now, addr(UAS_ADDR), Transport::Udp, first)
        .unwrap();
    let (mut challenged, mut verified, mut answered) = (0, None, false);
    while sim.now < sim.at(60.0) {
        let limit = sim.at(60.0);
        sim.step(limit);
        let now = sim.now;
        let now_secs = (now - sim.start).as_secs() + 1_000;
        while let Some((who, ev)) = sim.events.pop_front() {
            match (who, ev) {
                (UAS, Event::NewInvite { txn, request, .. }) => {
                    let m = request.message();
                    let credentials = m
                        .header(HeaderName::Authorization)
                        .and_then(|h| h.value_str())
                        .and_then(DigestAuthorization::parse);
                    let Some(credentials) = credentials else {
                        challenged += 1;
                        let challenge = verifier.challenge(now_secs, 42, false);
                        let r = sim
                            .ep(UAS)
                            .response(txn, 401)
                            .unwrap()
                            .header("WWW-Authenticate", challenge);
                        sim.ep(UAS).respond(now, txn, r).unwrap();
                        continue;
                    };
                    let outcome = verifier.verify(now_secs, "INVITE", uri, &credentials, |user| {
                        (user == "trunk").then_some("s3cret")
                    });
                    verified = Some(outcome);
                    answer_200(sim.ep(UAS), now, txn, ANSWER);
                }
                (
                    UAC,
                    Event::Response {
                        response, dialog, ..
                    },
                ) => {
                    let m = response.message();
                    match m.status() {
                        Some(401) => {
                            let challenge = m
                                .header(HeaderName::WwwAuthenticate)
                                .and_then(|h| h.value_str())
                                .unwrap();
                            let nonce = challenge
                                .split("nonce=\"")
                                .nth(1)
                                .and_then(|rest| rest.split('"').next())
                                .unwrap();
                            let response = digest_response(
                                "trunk",
                                "switchboard",
                                "s3cret",
                                "INVITE",
                                uri,
                                nonce,
                                Some(("00000001", "c0ffee")),
                            );
                            let authorization = format!(
                                "Digest username=\"trunk\", realm=\"switchboard\", \
                                 nonce=\"{nonce}\", uri=\"{uri}\", response=\"{response}\", \
                                 algorithm=MD5, qop=auth, nc=00000001, cnonce=\"c0ffee\""
                            );
                            let second = build_invite(sim.ep(UAC), 2, Some(authorization));
                            sim.ep(UAC)
                                .send_request(now, addr(UAS_ADDR), Transport::Udp, second)
                                .unwrap();
                        }
                        Some(200) => {
                            answered = true;
                            sim.ep(UAC).send_ack(now, dialog.unwrap(), None).unwrap();
                        }
                        _ => {}
                    }
                }
                _ => {}
            }
        }
    }
    assert_eq!(challenged, 1);
    assert_eq!(verified, Some(Verification::Valid));
    assert!(answered);
    // The 401 was ACKed by the UAC's INVITE client transaction itself.
    let acks: Vec<_> = sim.nodes[UAC]
        .sent
        .iter()
        .filter_map(|(_, t)| {
            let m = parse(&t.bytes).ok()?;
            (m.method() == Some("ACK")).then(|| m.cseq().unwrap().seq)
        })
        .collect();
    assert_eq!(
        acks,
        [1, 2],
        "ACK for the 401 (CSeq 1), then for the 200 (CSeq 2)"
    );
}

// ---- stateless refusals (sl_send_reply) -------------------------------------------

/// A UAS that lets its TU decide before any `100 Trying`, as the gateway runs it.
fn deciding_uas() -> Endpoint {
    let mut config = EndpointConfig::new(UAS_ADDR, 99);
    config.trying_delay = Some(Duration::from_millis(200));
    Endpoint::new(config)
}

fn ack_for(response: &[u8], branch: &str) -> Bytes {
    let to_tag = parse(response)
        .unwrap()
        .to()
        .unwrap()
        .tag()
        .unwrap()
        .to_owned();
    Bytes::from(format!(
        "ACK sip:+918047168000@192.0.2.9 SIP/2.0\r\n\
Via: SIP/2.0/UDP 198.51.100.20:5060;branch={branch}\r\nMax-Forwards: 70\r\n\
From: <sip:+14085550100@198.51.100.20>;tag=c1\r\nTo: <sip:+918047168000@192.0.2.9>;tag={to_tag}\r\n\
Call-ID: call-{branch}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
    ))
}

#[test]
fn stateless_refusals_keep_no_state_repeat_identically_and_absorb_their_ack() {
    let mut ep = deciding_uas();
    let t0 = Instant::now();
    let invite = carrier_invite("z9hG4bKsl");
    let mut answers = Vec::new();
    for attempt in 0..2u32 {
        // The original and a retransmission: each is a new event, answered the same way.
        let at = t0 + Duration::from_millis(500) * attempt;
        ep.handle_datagram(at, addr(CARRIER), Transport::Udp, invite.clone());
        let (sent, events) = drain(&mut ep);
        assert!(sent.is_empty(), "no 100 before the TU decides: {sent:?}");
        let txn = new_invite_txn(&events);
        let not_found = ep
            .response(txn, 404)
            .unwrap()
            .header("Reason", "Q.850;cause=1");
        ep.respond_stateless(txn, not_found).unwrap();
        assert_eq!(ep.transaction_count(), 0, "nothing kept for a refusal");
        let (sent, events) = drain(&mut ep);
        assert!(events.is_empty());
        assert_eq!(sent.iter().map(status_of).collect::<Vec<_>>(), [404]);
        answers.push(sent[0].bytes.clone());
    }
    assert_eq!(
        answers[0], answers[1],
        "a retransmission gets the identical answer"
    );

    ep.handle_datagram(
        t0,
        addr(CARRIER),
        Transport::Udp,
        ack_for(&answers[0], "z9hG4bKsl"),
    );
    let (sent, events) = drain(&mut ep);
    assert!(sent.is_empty() && events.is_empty());
    let stats = ep.stats();
    assert_eq!(
        (stats.replies, stats.absorbed_acks, stats.stray_acks),
        (2, 1, 0)
    );
    // An ACK whose To tag we did not derive is a stray, not ours.
    let forged = ack_for(&answers[0], "z9hG4bKother");
    ep.handle_datagram(t0, addr(CARRIER), Transport::Udp, forged);
    assert_eq!(ep.stats().stray_acks, 1);

    // No timer retransmits a stateless answer, and the timer heap drains.
    let (sent, _) = run_timers(&mut ep, t0 + Duration::from_secs(64));
    assert!(sent.is_empty(), "{sent:?}");
    assert_eq!(ep.poll_timeout(), None);
}

#[test]
fn stateless_answers_refuse_what_needs_a_transaction() {
    let mut ep = deciding_uas();
    let t0 = Instant::now();
    ep.handle_datagram(
        t0,
        addr(CARRIER),
        Transport::Udp,
        carrier_invite("z9hG4bKno"),
    );
    let (_, events) = drain(&mut ep);
    let txn = new_invite_txn(&events);
    let ringing = ep.response(txn, 180).unwrap();
    assert!(
        ep.respond_stateless(txn, ringing).is_err(),
        "1xx is never stateless"
    );
    let ok = ep.response(txn, 200).unwrap();
    assert!(
        ep.respond_stateless(txn, ok).is_err(),
        "a 2xx needs a dialog"
    );
    // The TU did not decide in this turn: the transaction stays, and 100 follows.
    assert_eq!(ep.transaction_count(), 1);
    let (sent, _) = run_timers(&mut ep, t0 + Duration::from_millis(250));
    assert_eq!(
        sent.iter().map(|(_, t)| status_of(t)).collect::<Vec<_>>(),
        [100]
    );
}

#[test]
fn a_flood_of_refused_invites_leaves_memory_flat() {
    let mut ep = deciding_uas();
    let t0 = Instant::now();
    for i in 0..20_000u32 {
        let now = t0 + Duration::from_micros(300) * i;
        ep.handle_datagram(
            now,
            addr(CARRIER),
            Transport::Udp,
            carrier_invite(&format!("z9hG4bKf{i}")),
        );
        let (_, events) = drain(&mut ep);
        let txn = new_invite_txn(&events);
        let refusal = ep.response(txn, 480).unwrap();
        ep.respond_stateless(txn, refusal).unwrap();
        while ep.poll_timeout().is_some_and(|at| at <= now) {
            ep.handle_timeout(now);
        }
        drain(&mut ep);
        assert_eq!(ep.transaction_count(), 0);
    }
    // Every deadline left behind was superseded and has been dropped by now.
    assert_eq!(ep.poll_timeout(), None);
    assert_eq!(ep.stats().replies, 20_000);
}

/// Over a lossy network a UAC's INVITE refused statelessly still completes: lost 486s are
/// recovered by the UAC's INVITE retransmissions (each answered identically), its ACKs are
/// absorbed, and the UAS never holds a transaction.
#[test]
fn stateless_refusal_survives_loss_and_holds_no_state() {
    for seed in 1..=12 {
        let mut sim = Sim::new(seed, 30);
        sim.nodes[UAS].ep = deciding_uas();
        let invite = invite_request(sim.ep(UAC), false);
        let now = sim.now;
        sim.ep(UAC)
            .send_request(now, addr(UAS_ADDR), Transport::Udp, invite)
            .unwrap();
        let mut finals = Vec::new();
        let mut refusals = Vec::new();
        while sim.now < sim.at(64.0) {
            let limit = sim.at(64.0);
            sim.step(limit);
            while let Some((who, ev)) = sim.events.pop_front() {
                match (who, ev) {
                    (UAS, Event::NewInvite { txn, .. }) => {
                        let busy = sim.ep(UAS).response(txn, 486).unwrap();
                        sim.ep(UAS).respond_stateless(txn, busy).unwrap();
                    }
                    (UAC, Event::Response { response, .. }) => {
                        finals.push(response.message().status().unwrap());
                    }
                    (UAC, Event::TransactionTimedOut { .. }) => finals.push(408),
                    (who, other) => panic!("unexpected event at {who}: {other:?}"),
                }
            }
            sim.flush();
            assert_eq!(sim.ep(UAS).transaction_count(), 0, "seed {seed}");
        }
        for (_, t) in &sim.nodes[UAS].sent {
            refusals.push(t.bytes.clone());
        }
        assert_eq!(finals, [486], "seed {seed}");
        assert!(refusals.windows(2).all(|w| w[0] == w[1]), "seed {seed}");
        let stats = sim.ep(UAS).stats();
        assert_eq!(stats.stray_acks, 0, "seed {seed}");
        assert!(
            stats.absorbed_acks as usize <= sim.sent_count(UAC, "ACK"),
            "seed {seed}"
        );
        assert_eq!(sim.ep(UAS).poll_timeout(), None, "seed {seed}");
    }
}
