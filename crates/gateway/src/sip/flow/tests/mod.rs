//! The call flow against a UAC `Endpoint` over a simulated, seeded lossy network on simulated
//! time: no sockets, no sleeps, fully deterministic (the style of crates/sip's
//! tests/transactions.rs). The "call task" is the test itself, answering `StartCall` outputs.

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use switchboard_routing::model::{
    AppVersion, ChannelDirection, Connection, ConnectionConfig, Deployment, DeploymentStatus,
    DigestCredentials, IncludeHeaders, MediaEncryption, RuntimeStatus, Scope,
};
use switchboard_routing::{Change, RoutingSettings, RoutingSnapshot, RoutingTable};
use switchboard_sip::{
    ClientTxnId, DialogId, Endpoint, EndpointConfig, Event, MessageBuilder, Transport,
};

use super::super::guard::Offence;
use super::super::metrics::SipMetrics;
use super::super::refusal::{Hangup, TWIML_REQUESTER};
use super::super::transport::{Inbound, Parsed};
use super::super::trunk::TrunkAuth;
use super::{CallEvent, CallFlow, FlowConfig, LocalAddrs, MediaPorts, Now, Output};

const UAC_ADDR: &str = "192.0.2.1:5060";
const GATEWAY: &str = "192.0.2.9:5060";
const CALLED: &str = "+918047168000";
const OFFER: &[u8] = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Ports by number; the "reservation" is the port itself.
#[derive(Debug, Default)]
struct FakePorts {
    next: u16,
}

impl MediaPorts for FakePorts {
    type Reservation = u16;
    fn reserve(&mut self) -> Result<(u16, u16), String> {
        let port = 20_000 + 2 * self.next;
        self.next += 1;
        Ok((port, port))
    }
}

fn routing(paused: bool, digest: bool) -> Arc<RoutingTable> {
    routing_with(paused, digest, MediaEncryption::Allow)
}

fn routing_with(paused: bool, digest: bool, encryption: MediaEncryption) -> Arc<RoutingTable> {
    routing_trunk(paused, digest, |c| c.media_encryption = encryption)
}

/// The test line with its trunk changed by `trunk`.
fn routing_trunk(
    paused: bool,
    digest: bool,
    trunk: impl FnOnce(&mut Connection),
) -> Arc<RoutingTable> {
    let table = RoutingTable::new(RoutingSnapshot::empty(RoutingSettings::default()).unwrap());
    let scope = Scope::new("org", "ws");
    let mut connection = Connection {
        connection_id: "trunk".into(),
        allowed_addresses: vec!["192.0.2.0/24".parse().unwrap()],
        media_addresses: Vec::new(),
        digest: digest.then(|| DigestCredentials {
            username: "carrier".into(),
            password: "s3cret".into(),
        }),
        provider: None,
        max_calls_per_second: None,
        media_encryption: MediaEncryption::Allow,
        headers_to_parameters: Default::default(),
        include_headers: Default::default(),
        transfer: Default::default(),
    };
    trunk(&mut connection);
    let version = AppVersion {
        app_id: "agent".into(),
        version: 1,
        runtime_url: "ws://agent.example/v1".into(),
        dialect: switchboard_routing::model::Dialect::Twilio,
        status: RuntimeStatus::Ready,
        status_detail: None,
    };
    let deployment = Deployment {
        deployment_id: "dep-1".into(),
        name: "line".into(),
        description: None,
        app_id: "agent".into(),
        app_version: 1,
        connection_configs: vec![ConnectionConfig {
            connection_id: "trunk".into(),
            phone_numbers: vec![CALLED.into()],
        }],
        channel_direction: ChannelDirection::Inbound,
        status: if paused {
            DeploymentStatus::Paused
        } else {
            DeploymentStatus::Active
        },
        inbound_config: None,
        webhook_config: None,
        created_by: "ops".into(),
        created_at: "2026-01-01T00:00:00Z".into(),
        updated_by: "ops".into(),
        updated_at: "2026-01-01T00:00:00Z".into(),
    };
    table
        .apply(&[
            Change::UpsertConnection(scope.clone(), connection),
            Change::UpsertAppVersion(scope.clone(), version),
            Change::UpsertDeployment(scope, deployment),
        ])
        .unwrap();
    Arc::new(table)
}

/// xorshift64*: a tiny seeded generator for loss decisions.
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
    at: Instant,
    to_gateway: bool,
    bytes: Bytes,
}

/// What the test-side call task and the UAC saw.
#[derive(Debug, Default)]
struct Log {
    uac_statuses: Vec<u16>,
    uac_responses: Vec<String>,
    started: Vec<String>,
    /// `start.customParameters` of each started call.
    start_params: Vec<switchboard_media::CustomParameters>,
    confirmed: usize,
    ended: Vec<String>,
    task_events_ended: usize,
    offences: Vec<Offence>,
    uac_byes: usize,
    /// The Reason header of each BYE the gateway sent, with when it arrived.
    gateway_byes: Vec<(Instant, String)>,
    /// The flow's call events, in order.
    events: Vec<crate::events::Event>,
    /// Transfer progress the call task was told, in order.
    transfers: Vec<(switchboard_media::TransferStatus, u16)>,
}

/// (event name, hangup_by, reason, sip_status) of one event.
type Outcome<'a> = (
    &'static str,
    Option<&'static str>,
    Option<&'a str>,
    Option<u16>,
);

impl Log {
    /// The outcome of every event, in order.
    fn outcomes(&self) -> Vec<Outcome<'_>> {
        self.events
            .iter()
            .map(|e| {
                (
                    e.kind.as_str(),
                    e.hangup_by.map(|h| h.as_str()),
                    e.reason.as_deref(),
                    e.sip_status,
                )
            })
            .collect()
    }
}

struct Sim {
    start: Instant,
    now: Instant,
    rng: Rng,
    loss_percent: u64,
    uac: Endpoint,
    flow: CallFlow<FakePorts>,
    in_flight: Vec<Packet>,
    log: Log,
    /// When the test's "call task" reports the agent connected, per call.
    agent_up_at: Vec<(Instant, String)>,
    agent_delay: Duration,
    /// Packets to lose on purpose: (towards the gateway?, prefix, substring, how many more).
    drops: Vec<(bool, &'static str, &'static str, usize)>,
}

impl Sim {
    fn new(seed: u64, loss_percent: u64, table: Arc<RoutingTable>) -> Sim {
        let start = Instant::now();
        let mut config = EndpointConfig::new(GATEWAY, seed ^ 0x5555);
        config.trying_delay = Some(Duration::from_millis(200));
        let flow = CallFlow::new(
            Endpoint::new(config),
            table,
            Arc::new(AtomicBool::new(true)),
            FlowConfig {
                local: LocalAddrs {
                    udp: addr(GATEWAY),
                    tcp: addr(GATEWAY),
                    tls: None,
                },
                advertised_ip: "192.0.2.9".parse().unwrap(),
                media_timeout: Duration::from_secs(30),
                agent_connect_timeout: Duration::from_secs(3),
                seed,
                call_rates: super::CallRates::default(),
                transfer_timeout: Duration::from_secs(30),
            },
            TrunkAuth::with_secret(b"test secret".to_vec(), 300),
            FakePorts::default(),
            SipMetrics::register(&prometheus::Registry::new()).unwrap(),
        );
        Sim {
            start,
            now: start,
            rng: Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1),
            loss_percent,
            uac: Endpoint::new(EndpointConfig::new(UAC_ADDR, seed ^ 0xaaaa)),
            flow,
            in_flight: Vec::new(),
            log: Log::default(),
            agent_up_at: Vec::new(),
            agent_delay: Duration::from_millis(300),
            drops: Vec::new(),
        }
    }

    fn at(&self, secs: f64) -> Instant {
        self.start + Duration::from_secs_f64(secs)
    }

    fn time(&self) -> Now {
        Now {
            instant: self.now,
            wall: SystemTime::UNIX_EPOCH
                + Duration::from_secs(1_800_000_000)
                + (self.now - self.start),
        }
    }

    fn send(&mut self, to_gateway: bool, bytes: Bytes) {
        if self.rng.next() % 100 < self.loss_percent {
            return;
        }
        let text = String::from_utf8_lossy(&bytes);
        let rule = self
            .drops
            .iter_mut()
            .find(|(towards, prefix, inside, left)| {
                *towards == to_gateway
                    && *left > 0
                    && text.starts_with(prefix)
                    && text.contains(inside)
            });
        if let Some(rule) = rule {
            rule.3 -= 1;
            return;
        }
        let delay = Duration::from_millis(5 + self.rng.next() % 40);
        self.in_flight.push(Packet {
            at: self.now + delay,
            to_gateway,
            bytes,
        });
    }

    /// Moves transmits into the network and the flow's outputs into the log.
    fn flush(&mut self) {
        while let Some(t) = self.uac.poll_transmit() {
            self.send(true, t.bytes);
        }
        while let Some(t) = self.flow.poll_transmit() {
            self.send(false, t.bytes);
        }
        while let Some(output) = self.flow.poll_output() {
            match output {
                Output::StartCall(start) => {
                    assert_eq!(start.reservation % 2, 0, "RTP ports are even");
                    assert_eq!(start.start.custom_parameters.get("to_number"), Some(CALLED));
                    self.log.started.push(start.call_id.clone());
                    self.log
                        .start_params
                        .push(start.start.custom_parameters.clone());
                    self.agent_up_at
                        .push((self.now + self.agent_delay, start.call_id));
                }
                Output::ToCall { event, .. } => match event {
                    CallEvent::Confirmed(_) => self.log.confirmed += 1,
                    CallEvent::Ended => self.log.task_events_ended += 1,
                    CallEvent::MediaUpdate(_) => {}
                    CallEvent::Transfer { status, sip_status } => {
                        self.log.transfers.push((status, sip_status));
                    }
                },
                Output::CallEnded { call_id, .. } => self.log.ended.push(call_id),
                Output::Offence { offence, .. } => self.log.offences.push(offence),
                Output::Event(event) => self.log.events.push(*event),
            }
        }
    }

    /// Advances to the next delivery, timer or agent event (not past `limit`) and handles
    /// it; returns the UAC's events.
    fn step(&mut self, limit: Instant) -> Vec<Event> {
        self.flush();
        let next = [
            self.in_flight.iter().map(|p| p.at).min(),
            self.uac.poll_timeout(),
            self.flow.poll_timeout(),
            self.agent_up_at.iter().map(|(at, _)| *at).min(),
            Some(limit),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap();
        self.now = self.now.max(next);
        let now = self.now;
        let (due, later): (Vec<Packet>, Vec<Packet>) =
            self.in_flight.drain(..).partition(|p| p.at <= now);
        self.in_flight = later;
        for p in due {
            if p.to_gateway {
                let inbound = Inbound {
                    source: addr(UAC_ADDR),
                    transport: Transport::Udp,
                    message: Parsed::Unparsed(p.bytes),
                };
                self.flow.handle_message(self.time(), inbound);
            } else {
                self.uac
                    .handle_datagram(now, addr(GATEWAY), Transport::Udp, p.bytes);
            }
        }
        let (up, waiting): (Vec<_>, Vec<_>) =
            self.agent_up_at.drain(..).partition(|(at, _)| *at <= now);
        self.agent_up_at = waiting;
        for (_, call_id) in up {
            self.flow.agent_ready(self.time(), &call_id);
        }
        if self.uac.poll_timeout().is_some_and(|at| at <= now) {
            self.uac.handle_timeout(now);
        }
        if self.flow.poll_timeout().is_some_and(|at| at <= now) {
            self.flow.handle_timeout(self.time());
        }
        self.flush();
        let mut events = Vec::new();
        while let Some(e) = self.uac.poll_event() {
            if let Event::Response { response, .. } = &e {
                let m = response.message();
                self.log.uac_statuses.push(m.status().unwrap());
                self.log
                    .uac_responses
                    .push(String::from_utf8_lossy(m.as_bytes()).into_owned());
            }
            events.push(e);
        }
        events
    }

    fn invite(&mut self, number: &str, authorization: Option<String>) -> ClientTxnId {
        self.invite_with(number, authorization, &[])
    }

    /// An INVITE carrying `extra` headers too.
    fn invite_with(
        &mut self,
        number: &str,
        authorization: Option<String>,
        extra: &[(&str, &str)],
    ) -> ClientTxnId {
        let tag = self.uac.new_tag();
        let call_id = format!("{}@192.0.2.1", self.uac.new_tag());
        let mut b = MessageBuilder::request("INVITE", &format!("sip:{number}@192.0.2.9"))
            .header("Via", self.uac.new_via(Transport::Udp))
            .header("Max-Forwards", 70)
            .header("From", format!("<sip:+919812345678@192.0.2.1>;tag={tag}"))
            .header("To", format!("<sip:{number}@192.0.2.9>"))
            .header("Call-ID", call_id)
            .header("CSeq", "1 INVITE")
            .header("Contact", "<sip:carrier@192.0.2.1:5060>");
        if let Some(auth) = authorization {
            b = b.header("Authorization", auth);
        }
        for (name, value) in extra {
            b = b.header(name, *value);
        }
        let invite = b.body("application/sdp", OFFER).build().unwrap();
        self.uac
            .send_request(self.now, addr(GATEWAY), Transport::Udp, invite)
            .unwrap()
    }

    /// Runs until `until`, ACKing 200s and hanging up `hold` after the answer.
    fn run_call(&mut self, until: f64, hold: Option<Duration>) -> Option<DialogId> {
        let mut dialog_up = None;
        let mut bye_at: Option<(Instant, DialogId)> = None;
        let limit = self.at(until);
        while self.now < limit {
            let step_limit = bye_at.map_or(limit, |(at, _)| at.min(limit));
            for event in self.step(step_limit) {
                if let Event::Response {
                    dialog: Some(dialog),
                    response,
                    ..
                } = event
                {
                    if response.message().status() == Some(200)
                        && response
                            .message()
                            .cseq()
                            .is_ok_and(|c| c.method == "INVITE")
                    {
                        self.uac.send_ack(self.now, dialog, None).unwrap();
                        if dialog_up.is_none() {
                            dialog_up = Some(dialog);
                            bye_at = hold.map(|h| (self.now + h, dialog));
                        }
                    }
                    continue;
                }
                if let Event::Bye { txn, request, .. } = event {
                    self.log
                        .gateway_byes
                        .push((self.now, reason_line(&request)));
                    let ok = self.uac.response(txn, 200).unwrap();
                    self.uac.respond(self.now, txn, ok).unwrap();
                }
            }
            if let Some((at, dialog)) = bye_at {
                if self.now >= at {
                    self.uac.send_bye(self.now, dialog).unwrap();
                    self.log.uac_byes += 1;
                    bye_at = None;
                }
            }
        }
        dialog_up
    }
}

#[test]
fn a_routed_call_rings_answers_when_the_agent_is_up_and_ends_with_bye() {
    let mut sim = Sim::new(1, 0, routing(false, false));
    sim.invite(CALLED, None);
    sim.run_call(60.0, Some(Duration::from_secs(5)));
    assert_eq!(
        sim.log.uac_statuses,
        [180, 200, 200],
        "180, 200, then the BYE's 200"
    );
    assert_eq!(sim.log.started.len(), 1);
    assert_eq!(sim.log.confirmed, 1, "media starts once, at the ACK");
    assert_eq!(sim.log.ended, sim.log.started);
    assert_eq!(sim.log.task_events_ended, 1);
    assert_eq!(sim.flow.call_count(), 0);
    assert_eq!(sim.flow.transaction_count(), 0, "every transaction drained");
    assert_eq!(
        sim.log.outcomes(),
        [
            ("call.offered", None, None, None),
            ("call.answered", None, None, None),
            ("call.ended", Some("caller"), Some("caller_bye"), Some(200)),
        ]
    );
    let ended = &sim.log.events[2];
    assert_eq!(ended.call_sid, sim.log.events[0].call_sid);
    assert!(ended
        .call_sid
        .as_deref()
        .is_some_and(|s| s.starts_with("CA")));
    assert_eq!(ended.deployment_id, "dep-1");
    assert_eq!(ended.to.as_deref(), Some(CALLED));
    assert_eq!(ended.duration_secs(), 5, "answer to BYE");
    assert!(
        sim.log.uac_responses[0].contains("Contact: <sip:switchboard@192.0.2.9:5060"),
        "{}",
        sim.log.uac_responses[0]
    );
}

#[test]
fn calls_complete_over_a_lossy_network_and_leave_no_state() {
    for seed in 1..=10 {
        let mut sim = Sim::new(seed, 25, routing(false, false));
        sim.invite(CALLED, None);
        let dialog = sim.run_call(120.0, Some(Duration::from_secs(10)));
        assert!(
            dialog.is_some(),
            "seed {seed}: never answered {:?}",
            sim.log
        );
        assert_eq!(
            sim.log.started.len(),
            1,
            "seed {seed}: one call for all retransmissions"
        );
        assert_eq!(sim.log.confirmed, 1, "seed {seed}");
        assert_eq!(sim.log.ended.len(), 1, "seed {seed}: {:?}", sim.log);
        assert_eq!(sim.flow.call_count(), 0, "seed {seed}");
        assert_eq!(sim.flow.transaction_count(), 0, "seed {seed}");
    }
}

#[test]
fn an_unknown_number_is_refused_statelessly_with_its_cause() {
    let mut sim = Sim::new(2, 0, routing(false, false));
    sim.invite("+918000000999", None);
    let limit = sim.at(40.0);
    while sim.now < limit {
        sim.step(limit);
        assert_eq!(sim.flow.transaction_count(), 0, "a refusal keeps nothing");
    }
    assert_eq!(sim.log.uac_statuses, [404]);
    let response = &sim.log.uac_responses[0];
    assert!(response.contains("Reason: Q.850;cause=1;"), "{response}");
    assert!(response.contains("Warning: 399 switchboard"), "{response}");
    assert!(sim.log.started.is_empty());
    assert!(sim.log.events.is_empty(), "no deployment, no event");
}

#[test]
fn a_plain_offer_to_a_trunk_that_requires_srtp_is_488_with_warning_305() {
    let mut sim = Sim::new(4, 0, routing_with(false, false, MediaEncryption::Require));
    sim.invite(CALLED, None);
    sim.run_call(5.0, None);
    assert_eq!(sim.log.uac_statuses, [488]);
    let response = &sim.log.uac_responses[0];
    assert!(
        response.contains("Warning: 305 switchboard \"this connection requires SRTP"),
        "{response}"
    );
    assert!(sim.log.started.is_empty());
    assert_eq!(sim.flow.call_count(), 0);
}

#[test]
fn a_paused_deployment_is_480_subscriber_absent() {
    let mut sim = Sim::new(3, 0, routing(true, false));
    sim.invite(CALLED, None);
    sim.run_call(5.0, None);
    assert_eq!(sim.log.uac_statuses, [480]);
    assert!(sim.log.uac_responses[0].contains("Reason: Q.850;cause=20;"));
    assert_eq!(
        sim.log.outcomes(),
        [("call.rejected", None, Some("paused"), Some(480))]
    );
    assert_eq!(sim.log.events[0].deployment_id, "dep-1");
}

#[test]
fn an_unreachable_agent_turns_the_ringing_call_into_a_503_with_retry_after() {
    let mut sim = Sim::new(4, 0, routing(false, false));
    sim.agent_delay = Duration::from_secs(3600); // the test reports the failure instead
    sim.invite(CALLED, None);
    let limit = sim.at(1.0);
    while sim.now < limit {
        sim.step(limit);
    }
    let call_id = sim.log.started[0].clone();
    let now = sim.time();
    sim.flow
        .agent_failed(now, &call_id, 503, "connect timed out");
    sim.run_call(40.0, None);
    assert_eq!(sim.log.uac_statuses, [180, 503]);
    let response = &sim.log.uac_responses[1];
    assert!(response.contains("Retry-After: 5"), "{response}");
    assert!(response.contains("Reason: Q.850;cause=41;"), "{response}");
    assert_eq!(sim.log.ended, [call_id]);
    assert_eq!(
        sim.flow.transaction_count(),
        0,
        "the 503's ACK ended its transaction"
    );
    // Counted as ended by the gateway (it refused the call), never answered (no duration).
    let call = &sim.flow.metrics.call;
    assert_eq!(call.ended.with_label_values(&["gateway"]).get(), 1);
    assert_eq!(call.duration_seconds.get_sample_count(), 0);
    assert_eq!(
        sim.log.outcomes(),
        [
            ("call.offered", None, None, None),
            (
                "call.rejected",
                Some("gateway"),
                Some("agent_unreachable"),
                Some(503)
            ),
        ]
    );
}

#[test]
fn cancel_while_ringing_is_487_and_ends_the_call() {
    let mut sim = Sim::new(5, 0, routing(false, false));
    sim.agent_delay = Duration::from_secs(3600);
    let invite = sim.invite(CALLED, None);
    let limit = sim.at(1.0);
    while sim.now < limit {
        sim.step(limit);
    }
    let now = sim.now;
    sim.uac.send_cancel(now, invite).unwrap();
    sim.run_call(40.0, None);
    assert!(
        sim.log.uac_statuses.contains(&487),
        "{:?}",
        sim.log.uac_statuses
    );
    assert_eq!(sim.log.ended.len(), 1);
    assert_eq!(sim.log.task_events_ended, 1, "the call task is told");
    assert_eq!(sim.flow.transaction_count(), 0);
    assert_eq!(
        sim.log.outcomes(),
        [
            ("call.offered", None, None, None),
            (
                "call.ended",
                Some("caller"),
                Some("caller_cancel"),
                Some(487)
            ),
        ]
    );
}

#[test]
fn our_hang_up_before_the_ack_waits_for_it_then_sends_bye_with_reason() {
    let mut sim = Sim::new(6, 0, routing(false, false));
    sim.invite(CALLED, None);
    // Step until the 200 is on its way but hang up before the ACK can arrive.
    let mut hung_up = false;
    // Past the 2xx's Accepted state (64·T1, RFC 6026), so every transaction has drained.
    let limit = sim.at(40.0);
    let mut acked = false;
    while sim.now < limit {
        let events = sim.step(limit);
        if !hung_up && sim.log.uac_statuses.contains(&200) {
            let call_id = sim.log.started[0].clone();
            let now = sim.time();
            sim.flow.hang_up(now, &call_id, Hangup::AgentClosed);
            hung_up = true;
            assert!(
                sim.log.ended.is_empty(),
                "BYE waits for the ACK (RFC 3261 §15)"
            );
        }
        for event in events {
            match event {
                Event::Response {
                    dialog: Some(dialog),
                    ..
                } if !acked => {
                    acked = true;
                    sim.uac.send_ack(sim.now, dialog, None).unwrap();
                }
                Event::Bye { txn, request, .. } => {
                    let reason = String::from_utf8_lossy(request.message().as_bytes())
                        .lines()
                        .find(|l| l.starts_with("Reason:"))
                        .map(str::to_owned);
                    assert_eq!(
                        reason.as_deref(),
                        Some("Reason: Q.850;cause=16;text=\"agent closed the media stream\"")
                    );
                    let ok = sim.uac.response(txn, 200).unwrap();
                    let now = sim.now;
                    sim.uac.respond(now, txn, ok).unwrap();
                    sim.log.uac_byes += 1;
                }
                _ => {}
            }
        }
    }
    assert_eq!(sim.log.uac_byes, 1, "{:?}", sim.log);
    assert_eq!(sim.log.ended.len(), 1);
    assert_eq!(sim.log.confirmed, 0, "media never started");
    assert_eq!(sim.flow.transaction_count(), 0);
    assert_eq!(
        sim.log.outcomes(),
        [
            ("call.offered", None, None, None),
            ("call.answered", None, None, None),
            ("call.ended", Some("agent"), Some("agent_closed"), Some(200)),
        ]
    );
}

#[test]
fn a_wrong_digest_answer_is_refused_and_reported_as_an_offence() {
    let mut sim = Sim::new(7, 0, routing(false, true));
    let bad = format!(
        "Digest username=\"carrier\", realm=\"switchboard\", nonce=\"{}\", uri=\"sip:{CALLED}@192.0.2.9\", response=\"{}\"",
        "0".repeat(40),
        "0".repeat(32)
    );
    sim.invite(CALLED, None);
    sim.run_call(2.0, None);
    assert_eq!(sim.log.uac_statuses, [401], "first a challenge");
    let challenge = sim.log.uac_responses[0].clone();
    let nonce = challenge
        .split("nonce=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap()
        .to_owned();
    let guess = bad.replace(&"0".repeat(40), &nonce);
    sim.invite(CALLED, Some(guess));
    sim.run_call(4.0, None);
    assert_eq!(sim.log.uac_statuses, [401, 403]);
    assert_eq!(sim.log.offences, [Offence::DigestFailure]);
    assert_eq!(sim.flow.transaction_count(), 0);
}

#[test]
fn flows_sharing_the_metrics_add_their_transactions_up() {
    let metrics = SipMetrics::register(&prometheus::Registry::new()).unwrap();
    let mut sims: Vec<Sim> = (0..2)
        .map(|seed| {
            let mut sim = Sim::new(seed + 20, 0, routing(false, false));
            sim.flow.metrics = metrics.clone();
            sim.agent_delay = Duration::from_secs(3600);
            sim
        })
        .collect();
    for sim in &mut sims {
        sim.invite(CALLED, None);
        let limit = sim.at(1.0);
        while sim.now < limit {
            sim.step(limit);
        }
    }
    // Each flow holds its ringing INVITE's transaction; the gauge shows both.
    assert_eq!(sims[0].flow.transaction_count(), 1);
    assert_eq!(sims[1].flow.transaction_count(), 1);
    assert_eq!(metrics.transactions.get(), 2);
}

mod control;
mod drain;
mod transfer;

/// The `Reason:` line of a request ("" without one).
fn reason_line(request: &switchboard_sip::OwnedMessage) -> String {
    String::from_utf8_lossy(request.message().as_bytes())
        .lines()
        .find(|l| l.starts_with("Reason:"))
        .unwrap_or("")
        .to_owned()
}

/// A sim with one answered call (ACKed, media flowing) at t = 2 s.
fn answered_call(seed: u64) -> (Sim, DialogId) {
    let mut sim = Sim::new(seed, 0, routing(false, false));
    sim.invite(CALLED, None);
    let dialog = sim.run_call(2.0, None).expect("answered");
    assert_eq!(sim.log.confirmed, 1);
    (sim, dialog)
}
