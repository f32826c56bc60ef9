//! The transaction layer driver: matches messages to the RFC 3261 §17 state machines of
//! `switchboard_sip::transaction`, runs their timers, and repeats our 2xx until its ACK
//! (RFC 3261 §13.3.1.4, RFC 6026). Sans-IO like the machines themselves: bytes and `now`
//! in, [`Transmit`]s and [`TxnEvent`]s out, the earliest deadline from
//! [`TxnLayer::poll_timeout`]. It lives in the endpoint task and is tested on simulated time.
//!
//! Shape: `handle_message(now, source, transport, bytes)`, `handle_timeout(now)`,
//! `poll_transmit()`, `poll_event()`, `poll_timeout()`, `respond(txn, status, bytes)`,
//! `send_request(...)`.
//!
//! Response routing: a response goes to the address the request came from, over the same
//! transport (on TCP, the same connection). That is RFC 3261 §18.2.2 for TCP and RFC 3581
//! (`rport`) for UDP, applied to every UDP request whether or not it asked: a carrier's
//! signalling source is where it listens, and behind NAT the Via port is fiction. The top
//! Via is stamped with `received` (when its host differs from the source address, §18.2.1)
//! and the `rport` value, so responses record where they went.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use switchboard_sip::transaction::{
    AckDisposition, ClientNonInviteTransaction, SentBy, ServerInviteTransaction,
    ServerNonInviteTransaction, TimerAction, TimerConfig, TransactionKey,
};
use switchboard_sip::{HeaderName, Message, OwnedMessage, SipError, Transport, MAGIC_COOKIE};

/// Identifies a server or client transaction of one [`TxnLayer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TxnId(u64);

/// Bytes to put on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub destination: SocketAddr,
    pub transport: Transport,
    pub bytes: Bytes,
}

/// What the transaction layer tells the call layer.
#[derive(Debug, Clone)]
pub enum TxnEvent {
    /// A new request (not ACK or CANCEL) with its server transaction; answer it with
    /// [`TxnLayer::respond`]. INVITEs have already been answered `100 Trying`.
    Request {
        txn: TxnId,
        request: OwnedMessage,
        source: SocketAddr,
        transport: Transport,
    },
    /// An ACK that is not for one of our failure responses: the ACK for a 2xx (it may carry
    /// the SDP answer to a late offer).
    Ack {
        request: OwnedMessage,
        source: SocketAddr,
    },
    /// A CANCEL matched the pending INVITE `invite` (already answered 200): answer the
    /// INVITE 487.
    Cancelled { invite: TxnId },
    /// The final response to a request we sent.
    Response { txn: TxnId, response: OwnedMessage },
    /// A request we sent got no final response (Timer F).
    RequestTimedOut { txn: TxnId },
    /// Our 2xx to the INVITE of `call_id` was never acknowledged (64·T1): end the dialog.
    AckTimedOut { call_id: String },
    /// A request that failed to parse or validate at the transport level and was answered
    /// (or dropped) here; reported for metrics.
    Malformed {
        status: Option<u16>,
        error: SipError,
    },
}

#[derive(Debug)]
enum ServerTxn {
    Invite(ServerInviteTransaction),
    NonInvite(ServerNonInviteTransaction),
}

#[derive(Debug)]
struct ServerEntry {
    id: TxnId,
    txn: ServerTxn,
    source: SocketAddr,
    transport: Transport,
}

#[derive(Debug)]
struct ClientEntry {
    id: TxnId,
    txn: ClientNonInviteTransaction,
    method: String,
    destination: SocketAddr,
    transport: Transport,
}

/// Our 2xx to an INVITE, repeated until the ACK (RFC 3261 §13.3.1.4).
#[derive(Debug)]
struct AnswerRetransmission {
    call_id: String,
    cseq: u32,
    bytes: Bytes,
    destination: SocketAddr,
    transport: Transport,
    next_at: Instant,
    interval: Duration,
    give_up_at: Instant,
}

/// A server transaction is matched on its source address as well as on the RFC 3261
/// §17.2.3 key: a client retransmits from the socket it first sent from, so a request from
/// another address reusing a branch (RFC 4475 and RFC 5118 messages share theirs; so may
/// careless or hostile peers) starts its own transaction instead of being answered with
/// someone else's response.
type ServerKey = (SocketAddr, TransactionKey);

/// The driver. See the module docs.
#[derive(Debug)]
pub struct TxnLayer {
    config: TimerConfig,
    /// Server transactions by source and §17.2.3 key (see [`ServerKey`]).
    server: HashMap<ServerKey, ServerEntry>,
    server_ids: HashMap<TxnId, ServerKey>,
    /// Client transactions by the branch we generated.
    client: HashMap<String, ClientEntry>,
    answers: Vec<AnswerRetransmission>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<TxnEvent>,
    next_id: u64,
    /// Tag for stateless responses; one per layer is enough (they create no dialog).
    stateless_tag: String,
}

impl TxnLayer {
    pub fn new(config: TimerConfig) -> Self {
        TxnLayer {
            config,
            server: HashMap::new(),
            server_ids: HashMap::new(),
            client: HashMap::new(),
            answers: Vec::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            next_id: 0,
            stateless_tag: format!("sl{:08x}", rand::random::<u32>()),
        }
    }

    fn next_id(&mut self) -> TxnId {
        self.next_id += 1;
        TxnId(self.next_id)
    }

    /// Live server + client transactions (for tests and metrics).
    pub fn len(&self) -> usize {
        self.server.len() + self.client.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Feeds one message from the network.
    pub fn handle_message(
        &mut self,
        now: Instant,
        source: SocketAddr,
        transport: Transport,
        bytes: Bytes,
    ) {
        let message = match OwnedMessage::parse(bytes.clone()) {
            Ok(m) => m,
            Err(error) => {
                let status = error.response_status();
                if let Some(status) = status {
                    if let Some(reply) =
                        stateless_error(&bytes, status, &error.to_string(), &self.stateless_tag)
                    {
                        self.transmits.push_back(Transmit {
                            destination: source,
                            transport,
                            bytes: reply,
                        });
                    }
                }
                self.events.push_back(TxnEvent::Malformed { status, error });
                return;
            }
        };
        if message.message().is_response() {
            self.handle_response(now, message);
        } else {
            let message = stamp_via(message, source);
            self.handle_request(now, source, transport, message);
        }
    }

    fn handle_request(
        &mut self,
        now: Instant,
        source: SocketAddr,
        transport: Transport,
        request: OwnedMessage,
    ) {
        let msg = request.message();
        let Some(key) = server_key(&msg).map(|k| (source, k)) else {
            // No usable Via/CSeq/Call-ID: matching is impossible; answer 400 statelessly.
            let error = msg
                .validate()
                .err()
                .unwrap_or(SipError::MissingHeader { header: "Via" });
            let status = error.response_status().unwrap_or(400);
            if let Ok(reply) = msg
                .response(status)
                .to_tag(&self.stateless_tag)
                .header("Warning", format!("399 switchboard \"{error}\""))
                .build()
            {
                self.transmits.push_back(Transmit {
                    destination: source,
                    transport,
                    bytes: reply,
                });
            }
            self.events.push_back(TxnEvent::Malformed {
                status: Some(status),
                error,
            });
            return;
        };
        let method = msg.method().unwrap_or("");
        let reliable = transport.is_stream();
        match method {
            "ACK" => {
                if let Some(entry) = self.server.get_mut(&key) {
                    if let ServerTxn::Invite(txn) = &mut entry.txn {
                        if txn.on_ack(now) != AckDisposition::PassToTu {
                            return;
                        }
                    }
                }
                self.take_answer_ack(&msg);
                self.events.push_back(TxnEvent::Ack { request, source });
            }
            "CANCEL" => {
                if let Some(entry) = self.server.get_mut(&key) {
                    let retransmit = match &mut entry.txn {
                        ServerTxn::NonInvite(t) => t.on_request_retransmission(now),
                        ServerTxn::Invite(t) => t.on_request_retransmission(now),
                    };
                    if let Some(bytes) = retransmit {
                        self.transmits.push_back(Transmit {
                            destination: entry.source,
                            transport: entry.transport,
                            bytes,
                        });
                    }
                    return;
                }
                let invite_key = (source, key.1.with_method("INVITE"));
                let pending = self.server.get(&invite_key).and_then(|e| match &e.txn {
                    ServerTxn::Invite(t) => Some((e.id, t.has_final_response())),
                    ServerTxn::NonInvite(_) => None,
                });
                let status = if pending.is_some() { 200 } else { 481 };
                let id = self.next_id();
                let txn = ServerNonInviteTransaction::new(now, self.config, reliable);
                self.server.insert(
                    key.clone(),
                    ServerEntry {
                        id,
                        txn: ServerTxn::NonInvite(txn),
                        source,
                        transport,
                    },
                );
                self.server_ids.insert(id, key);
                if let Ok(reply) = msg.response(status).to_tag(&self.stateless_tag).build() {
                    self.respond(now, id, status, reply);
                }
                if let Some((invite, false)) = pending {
                    self.events.push_back(TxnEvent::Cancelled { invite });
                }
            }
            _ => {
                if let Some(entry) = self.server.get_mut(&key) {
                    let retransmit = match &mut entry.txn {
                        ServerTxn::NonInvite(t) => t.on_request_retransmission(now),
                        ServerTxn::Invite(t) => t.on_request_retransmission(now),
                    };
                    if let Some(bytes) = retransmit {
                        self.transmits.push_back(Transmit {
                            destination: entry.source,
                            transport: entry.transport,
                            bytes,
                        });
                    }
                    return;
                }
                let id = self.next_id();
                let txn = if method == "INVITE" {
                    ServerTxn::Invite(ServerInviteTransaction::new(
                        now,
                        self.config,
                        reliable,
                        None,
                    ))
                } else {
                    ServerTxn::NonInvite(ServerNonInviteTransaction::new(
                        now,
                        self.config,
                        reliable,
                    ))
                };
                self.server.insert(
                    key.clone(),
                    ServerEntry {
                        id,
                        txn,
                        source,
                        transport,
                    },
                );
                self.server_ids.insert(id, key);
                if method == "INVITE" {
                    // RFC 3261 §17.2.1: 100 Trying at once, so the carrier stops retransmitting
                    // while the call is routed and the agent is reached.
                    if let Ok(trying) = msg.response(100).build() {
                        self.respond(now, id, 100, trying);
                    }
                }
                self.events.push_back(TxnEvent::Request {
                    txn: id,
                    request,
                    source,
                    transport,
                });
            }
        }
    }

    fn take_answer_ack(&mut self, ack: &Message<'_>) {
        let (Ok(call_id), Ok(cseq)) = (ack.call_id(), ack.cseq()) else {
            return;
        };
        self.answers
            .retain(|a| !(a.call_id == call_id && a.cseq == cseq.seq));
    }

    fn handle_response(&mut self, now: Instant, response: OwnedMessage) {
        let msg = response.message();
        let (Some(status), Ok(via)) = (msg.status(), msg.via()) else {
            return;
        };
        let Some(branch) = via.branch() else { return };
        let Some(entry) = self.client.get_mut(branch) else {
            // A stray response (RFC 3261 §18.1.2): nobody asked; drop it silently.
            return;
        };
        if msg.cseq().map(|c| c.method != entry.method).unwrap_or(true) {
            return;
        }
        if entry.txn.on_response(now, status) && status >= 200 {
            let txn = entry.id;
            self.events.push_back(TxnEvent::Response { txn, response });
        }
        self.reap();
    }

    /// Answers server transaction `txn` with an encoded response of `status`. A 2xx to an
    /// INVITE is repeated until its ACK arrives (or `AckTimedOut`).
    pub fn respond(&mut self, now: Instant, txn: TxnId, status: u16, bytes: Bytes) {
        let Some(key) = self.server_ids.get(&txn) else {
            return;
        };
        let Some(entry) = self.server.get_mut(key) else {
            return;
        };
        let sent = match &mut entry.txn {
            ServerTxn::Invite(t) => t.send_response(now, status, bytes.clone()),
            ServerTxn::NonInvite(t) => t.send_response(now, status, bytes.clone()),
        };
        let (destination, transport) = (entry.source, entry.transport);
        let is_invite = matches!(entry.txn, ServerTxn::Invite(_));
        if let Some(bytes) = sent {
            self.transmits.push_back(Transmit {
                destination,
                transport,
                bytes,
            });
        }
        if is_invite && (200..300).contains(&status) {
            if let Ok(m) = switchboard_sip::parse(&bytes) {
                if let (Ok(call_id), Ok(cseq)) = (m.call_id(), m.cseq()) {
                    let give_up_at = now + self.config.sixty_four_t1();
                    // Over TCP the transport retransmits; only the ACK deadline remains.
                    let next_at = if transport.is_stream() {
                        give_up_at
                    } else {
                        now + self.config.t1
                    };
                    self.answers.push(AnswerRetransmission {
                        call_id: call_id.to_owned(),
                        cseq: cseq.seq,
                        bytes: bytes.clone(),
                        destination,
                        transport,
                        next_at,
                        interval: self.config.t1,
                        give_up_at,
                    });
                }
            }
        }
        self.reap();
    }

    /// Whether the INVITE server transaction `txn` still awaits its final response.
    pub fn is_pending(&self, txn: TxnId) -> bool {
        self.server_ids
            .get(&txn)
            .and_then(|k| self.server.get(k))
            .is_some_and(|e| matches!(&e.txn, ServerTxn::Invite(t) if !t.has_final_response()))
    }

    /// Sends a request we originate (BYE) under a new client transaction. `branch` must be
    /// the branch of the request's top Via (see [`new_branch`]).
    pub fn send_request(
        &mut self,
        now: Instant,
        method: &str,
        branch: String,
        destination: SocketAddr,
        transport: Transport,
        bytes: Bytes,
    ) -> TxnId {
        let id = self.next_id();
        let txn =
            ClientNonInviteTransaction::new(now, self.config, transport.is_stream(), bytes.clone());
        self.client.insert(
            branch,
            ClientEntry {
                id,
                txn,
                method: method.to_owned(),
                destination,
                transport,
            },
        );
        self.transmits.push_back(Transmit {
            destination,
            transport,
            bytes,
        });
        id
    }

    /// Fires every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        let mut fired = Vec::new();
        for (key, entry) in &mut self.server {
            let due = match &entry.txn {
                ServerTxn::Invite(t) => t.poll_timeout(),
                ServerTxn::NonInvite(t) => t.poll_timeout(),
            };
            if due.is_some_and(|at| at <= now) {
                let action = match &mut entry.txn {
                    ServerTxn::Invite(t) => t.on_timeout(now),
                    ServerTxn::NonInvite(t) => {
                        t.on_timeout(now);
                        None
                    }
                };
                fired.push((key.clone(), entry.source, entry.transport, action));
            }
        }
        for (_, destination, transport, action) in fired {
            if let Some(TimerAction::Retransmit(bytes)) = action {
                self.transmits.push_back(Transmit {
                    destination,
                    transport,
                    bytes,
                });
            }
        }
        let mut timed_out = Vec::new();
        for entry in self.client.values_mut() {
            if entry.txn.poll_timeout().is_some_and(|at| at <= now) {
                match entry.txn.on_timeout(now) {
                    Some(TimerAction::Retransmit(bytes)) => self.transmits.push_back(Transmit {
                        destination: entry.destination,
                        transport: entry.transport,
                        bytes,
                    }),
                    Some(TimerAction::TimedOut) => timed_out.push(entry.id),
                    _ => {}
                }
            }
        }
        for txn in timed_out {
            self.events.push_back(TxnEvent::RequestTimedOut { txn });
        }
        let mut gave_up = Vec::new();
        for answer in &mut self.answers {
            if answer.give_up_at <= now {
                gave_up.push(answer.call_id.clone());
            } else if answer.next_at <= now {
                self.transmits.push_back(Transmit {
                    destination: answer.destination,
                    transport: answer.transport,
                    bytes: answer.bytes.clone(),
                });
                answer.interval = answer.interval.saturating_mul(2).min(self.config.t2);
                answer.next_at = now + answer.interval;
            }
        }
        self.answers.retain(|a| a.give_up_at > now);
        for call_id in gave_up {
            self.events.push_back(TxnEvent::AckTimedOut { call_id });
        }
        self.reap();
    }

    fn reap(&mut self) {
        let ids = &mut self.server_ids;
        self.server.retain(|_, e| {
            let done = match &e.txn {
                ServerTxn::Invite(t) => t.is_terminated(),
                ServerTxn::NonInvite(t) => t.is_terminated(),
            };
            if done {
                ids.remove(&e.id);
            }
            !done
        });
        self.client.retain(|_, e| !e.txn.is_terminated());
    }

    /// Stops repeating the 2xx of `call_id` (the call ended before its ACK, e.g. by BYE).
    pub fn forget_answer(&mut self, call_id: &str) {
        self.answers.retain(|a| a.call_id != call_id);
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<TxnEvent> {
        self.events.pop_front()
    }

    /// The earliest deadline of any timer, for `sleep_until`.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let server = self.server.values().filter_map(|e| match &e.txn {
            ServerTxn::Invite(t) => t.poll_timeout(),
            ServerTxn::NonInvite(t) => t.poll_timeout(),
        });
        let client = self.client.values().filter_map(|e| e.txn.poll_timeout());
        let answers = self.answers.iter().map(|a| a.next_at.min(a.give_up_at));
        server.chain(client).chain(answers).min()
    }
}

/// A fresh branch for a request we originate: the magic cookie plus 64 random bits.
pub fn new_branch() -> String {
    format!("{MAGIC_COOKIE}-sb{:016x}", rand::random::<u64>())
}

/// The §17.2.3 key of a request (ACK and CANCEL under their own method; ACK maps to INVITE
/// inside the key type).
fn server_key(msg: &Message<'_>) -> Option<TransactionKey> {
    let via = msg.via().ok()?;
    let method = msg.method()?;
    if via.has_rfc3261_branch() {
        let branch = via.branch()?;
        let sent_by = via.sent_by();
        return Some(TransactionKey::rfc3261(
            branch,
            SentBy::new(&sent_by.host.to_string(), sent_by.port),
            method,
        ));
    }
    let top_via = msg.header(HeaderName::Via)?.value_str()?;
    let top_via = top_via.split(',').next().unwrap_or(top_via);
    let request_uri = std::str::from_utf8(msg.request_uri_raw()?).ok()?;
    let from_tag = msg.from().ok().and_then(|f| f.tag());
    let cseq = msg.cseq().ok()?;
    Some(TransactionKey::rfc2543(
        request_uri,
        from_tag,
        msg.call_id().ok()?,
        cseq.seq,
        top_via,
        method,
    ))
}

/// Adds `received` (when the sent-by host is not the source address) and fills `rport` in
/// the top Via (RFC 3261 §18.2.1, RFC 3581 §4), so responses show where they went.
fn stamp_via(message: OwnedMessage, source: SocketAddr) -> OwnedMessage {
    let msg = message.message();
    let Ok(via) = msg.via() else { return message };
    let host_matches = via
        .sent_by()
        .host
        .ip()
        .is_some_and(|ip| ip.to_canonical() == source.ip());
    let rport_requested = matches!(via.rport(), Some(switchboard_sip::Rport::Requested));
    if host_matches && !rport_requested {
        return message;
    }
    let bytes = msg.as_bytes();
    let Some((start, end)) = top_via_span(bytes) else {
        return message;
    };
    let value = String::from_utf8_lossy(&bytes[start..end]).into_owned();
    let mut params: Vec<String> = Vec::new();
    for (i, param) in value.split(';').enumerate() {
        let name = param.split('=').next().unwrap_or("").trim();
        if i > 0 && name.eq_ignore_ascii_case("rport") && !param.contains('=') {
            params.push(format!("rport={}", source.port()));
        } else if i > 0 && name.eq_ignore_ascii_case("received") {
            // Replaced below by what we saw.
        } else {
            params.push(param.to_owned());
        }
    }
    let stamped = params.join(";");
    let stamped = if host_matches {
        stamped
    } else {
        format!("{stamped};received={}", source.ip())
    };
    let mut out = Vec::with_capacity(bytes.len() + 48);
    out.extend_from_slice(&bytes[..start]);
    out.extend_from_slice(stamped.as_bytes());
    out.extend_from_slice(&bytes[end..]);
    OwnedMessage::parse(Bytes::from(out)).unwrap_or(message)
}

/// Byte range of the first via-parm of the first Via header line (up to a comma or the end
/// of the line; folded Via lines are left alone by returning `None` when the value
/// continues on the next line).
fn top_via_span(bytes: &[u8]) -> Option<(usize, usize)> {
    let head_end = find(bytes, b"\r\n\r\n").unwrap_or(bytes.len());
    let mut line_start = find(bytes, b"\r\n")? + 2;
    while line_start < head_end {
        let line_end = find(&bytes[line_start..], b"\r\n").map_or(head_end, |p| line_start + p);
        let line = &bytes[line_start..line_end];
        if let Some(colon) = line.iter().position(|b| *b == b':') {
            let name = std::str::from_utf8(&line[..colon]).unwrap_or("").trim();
            if name.eq_ignore_ascii_case("via") || name.eq_ignore_ascii_case("v") {
                let folded = bytes
                    .get(line_end + 2)
                    .is_some_and(|b| *b == b' ' || *b == b'\t');
                if folded {
                    return None;
                }
                let value_start = line_start + colon + 1;
                let value = &bytes[value_start..line_end];
                let lead = value.iter().take_while(|b| b.is_ascii_whitespace()).count();
                let comma = value.iter().position(|b| *b == b',').unwrap_or(value.len());
                let mut end = value_start + comma;
                while end > value_start + lead && bytes[end - 1].is_ascii_whitespace() {
                    end -= 1;
                }
                return Some((value_start + lead, end));
            }
        }
        line_start = line_end + 2;
    }
    None
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A response to a request the codec could not parse, assembled from its raw header lines
/// (Via, From, To, Call-ID, CSeq, in long or compact form), so even a message with a broken
/// start line or Content-Length gets its 400 (RFC 4475 §3.1.2). `None` for responses and
/// for requests without a Via (nowhere to answer).
pub fn stateless_error(raw: &[u8], status: u16, why: &str, tag: &str) -> Option<Bytes> {
    if raw.starts_with(b"SIP/") || raw.is_empty() {
        return None;
    }
    let text = String::from_utf8_lossy(raw);
    let head = text.split("\r\n\r\n").next().unwrap_or(&text);
    let mut lines: Vec<String> = Vec::new();
    for line in head.split("\r\n").skip(1) {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = lines.last_mut() {
                last.push(' ');
                last.push_str(line.trim());
            }
        } else {
            lines.push(line.to_owned());
        }
    }
    let mut builder =
        switchboard_sip::MessageBuilder::response(status, switchboard_sip::reason_phrase(status));
    let mut has_via = false;
    for name in ["Via", "From", "To", "Call-ID", "CSeq"] {
        for line in &lines {
            let Some((n, value)) = line.split_once(':') else {
                continue;
            };
            let n = n.trim();
            let compact = match name {
                "Via" => "v",
                "From" => "f",
                "To" => "t",
                "Call-ID" => "i",
                _ => "",
            };
            if !(n.eq_ignore_ascii_case(name)
                || (!compact.is_empty() && n.eq_ignore_ascii_case(compact)))
            {
                continue;
            }
            let mut value = value.trim().to_owned();
            if name == "Via" {
                has_via = true;
            }
            if name == "To" && !value.to_ascii_lowercase().contains(";tag=") {
                value = format!("{value};tag={tag}");
            }
            builder = builder.header(name, value);
        }
    }
    if !has_via {
        return None;
    }
    builder
        .header(
            "Warning",
            format!("399 switchboard \"{}\"", why.replace('"', "'")),
        )
        .build()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: &str = "192.0.2.10:5062";

    fn invite(branch: &str) -> Bytes {
        Bytes::from(format!(
            "INVITE sip:+918047168000@gw SIP/2.0\r\n\
             Via: SIP/2.0/UDP carrier.example.com:5060;branch={branch};rport\r\n\
             Max-Forwards: 70\r\nTo: <sip:+918047168000@gw>\r\nFrom: <sip:a@b>;tag=x\r\n\
             Call-ID: c1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
        ))
    }

    fn src() -> SocketAddr {
        SRC.parse().unwrap()
    }

    fn drain(layer: &mut TxnLayer) -> (Vec<Transmit>, Vec<TxnEvent>) {
        let mut t = Vec::new();
        let mut e = Vec::new();
        while let Some(x) = layer.poll_transmit() {
            t.push(x);
        }
        while let Some(x) = layer.poll_event() {
            e.push(x);
        }
        (t, e)
    }

    fn status_of(t: &Transmit) -> u16 {
        switchboard_sip::parse(&t.bytes).unwrap().status().unwrap()
    }

    fn request_txn(events: &[TxnEvent]) -> (TxnId, OwnedMessage) {
        events
            .iter()
            .find_map(|e| match e {
                TxnEvent::Request { txn, request, .. } => Some((*txn, request.clone())),
                _ => None,
            })
            .expect("a request event")
    }

    #[test]
    fn invite_gets_100_at_once_retransmissions_are_absorbed_and_via_is_stamped() {
        let t0 = Instant::now();
        let mut layer = TxnLayer::new(TimerConfig::default());
        layer.handle_message(t0, src(), Transport::Udp, invite("z9hG4bK-a"));
        let (tx, ev) = drain(&mut layer);
        assert_eq!(tx.len(), 1);
        assert_eq!(status_of(&tx[0]), 100);
        assert_eq!(tx[0].destination, src());
        let text = String::from_utf8_lossy(&tx[0].bytes);
        assert!(
            text.contains("branch=z9hG4bK-a;rport=5062;received=192.0.2.10"),
            "{text}"
        );
        assert_eq!(ev.len(), 1);
        // A retransmitted INVITE gets the 100 again and no new event.
        layer.handle_message(
            t0 + Duration::from_millis(500),
            src(),
            Transport::Udp,
            invite("z9hG4bK-a"),
        );
        let (tx, ev) = drain(&mut layer);
        assert_eq!((tx.len(), ev.len()), (1, 0));
    }

    #[test]
    fn a_reused_branch_from_another_source_is_a_new_transaction_and_received_is_replaced() {
        let t0 = Instant::now();
        let mut layer = TxnLayer::new(TimerConfig::default());
        let msg = |received: &str| {
            Bytes::from(format!(
                "OPTIONS sip:gw SIP/2.0\r\nVia: SIP/2.0/UDP [2001:db8::9:1];received={received};branch=z9hG4bKas3-111\r\n\
                 Max-Forwards: 70\r\nTo: <sip:gw>\r\nFrom: <sip:a@b>;tag=x\r\nCall-ID: c9\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
            ))
        };
        layer.handle_message(t0, src(), Transport::Udp, msg("2001:db8::9:255"));
        let (_, ev) = drain(&mut layer);
        let (_, req) = request_txn(&ev);
        let text = String::from_utf8_lossy(req.bytes().as_ref()).into_owned();
        assert!(
            text.contains(
                "Via: SIP/2.0/UDP [2001:db8::9:1];branch=z9hG4bKas3-111;received=192.0.2.10\r\n"
            ),
            "{text}"
        );
        req.message().validate().unwrap();
        let other: SocketAddr = "192.0.2.11:5060".parse().unwrap();
        layer.handle_message(t0, other, Transport::Udp, msg("[2001:db8::9:255]"));
        let (_, ev) = drain(&mut layer);
        assert_eq!(ev.len(), 1, "{ev:?}");
    }

    #[test]
    fn failure_response_is_retransmitted_until_ack_and_2xx_until_its_ack() {
        let t0 = Instant::now();
        let mut layer = TxnLayer::new(TimerConfig::default());
        layer.handle_message(t0, src(), Transport::Udp, invite("z9hG4bK-b"));
        let (_, ev) = drain(&mut layer);
        let (txn, req) = request_txn(&ev);
        let resp = req.message().response(404).to_tag("t1").build().unwrap();
        layer.respond(t0, txn, 404, resp);
        let (tx, _) = drain(&mut layer);
        assert_eq!(status_of(&tx[0]), 404);
        // Timer G at T1.
        let at = layer.poll_timeout().unwrap();
        assert_eq!(at, t0 + Duration::from_millis(500));
        layer.handle_timeout(at);
        let (tx, _) = drain(&mut layer);
        assert_eq!(tx.len(), 1);
        // The ACK (same branch) stops it and is not passed up.
        let ack = String::from_utf8_lossy(&invite("z9hG4bK-b"))
            .replace("INVITE sip", "ACK sip")
            .replace("1 INVITE", "1 ACK");
        layer.handle_message(at, src(), Transport::Udp, Bytes::from(ack));
        let (tx, ev) = drain(&mut layer);
        assert!(tx.is_empty() && ev.is_empty(), "{tx:?} {ev:?}");

        // A 2xx is repeated until an ACK with the INVITE's CSeq arrives (new branch).
        layer.handle_message(t0, src(), Transport::Udp, invite("z9hG4bK-c"));
        let (_, ev) = drain(&mut layer);
        let (txn, req) = request_txn(&ev);
        let ok = req.message().response(200).to_tag("t2").build().unwrap();
        layer.respond(t0, txn, 200, ok);
        drain(&mut layer);
        layer.handle_timeout(t0 + Duration::from_millis(500));
        let (tx, _) = drain(&mut layer);
        assert_eq!(tx.len(), 1);
        assert_eq!(status_of(&tx[0]), 200);
        let ack = String::from_utf8_lossy(&invite("z9hG4bK-new"))
            .replace("INVITE sip", "ACK sip")
            .replace("1 INVITE", "1 ACK")
            .replace("<sip:+918047168000@gw>", "<sip:+918047168000@gw>;tag=t2");
        layer.handle_message(
            t0 + Duration::from_millis(600),
            src(),
            Transport::Udp,
            Bytes::from(ack),
        );
        let (_, ev) = drain(&mut layer);
        assert!(matches!(ev.as_slice(), [TxnEvent::Ack { .. }]), "{ev:?}");
        layer.handle_timeout(t0 + Duration::from_secs(40));
        let (tx, ev) = drain(&mut layer);
        assert!(tx.is_empty() && ev.is_empty(), "{tx:?} {ev:?}");
    }

    #[test]
    fn an_unacknowledged_2xx_times_out() {
        let t0 = Instant::now();
        let mut layer = TxnLayer::new(TimerConfig::default());
        layer.handle_message(t0, src(), Transport::Udp, invite("z9hG4bK-d"));
        let (_, ev) = drain(&mut layer);
        let (txn, req) = request_txn(&ev);
        layer.respond(
            t0,
            txn,
            200,
            req.message().response(200).to_tag("t").build().unwrap(),
        );
        let mut now = t0;
        let mut sent = 0;
        let mut timed_out = false;
        while let Some(at) = layer.poll_timeout() {
            now = at;
            layer.handle_timeout(now);
            let (tx, ev) = drain(&mut layer);
            sent += tx.len();
            timed_out |= ev.iter().any(|e| matches!(e, TxnEvent::AckTimedOut { .. }));
        }
        assert!(timed_out);
        assert_eq!(now, t0 + Duration::from_secs(32));
        // The 200, then repeats at 0.5, 1.5, 3.5, 7.5, 11.5 ... 31.5 s (T1 doubling, capped at T2).
        assert_eq!(sent, 1 + 10);
    }

    #[test]
    fn cancel_matches_the_pending_invite() {
        let t0 = Instant::now();
        let mut layer = TxnLayer::new(TimerConfig::default());
        layer.handle_message(t0, src(), Transport::Udp, invite("z9hG4bK-e"));
        let (_, ev) = drain(&mut layer);
        let (txn, _) = request_txn(&ev);
        let cancel = String::from_utf8_lossy(&invite("z9hG4bK-e"))
            .replace("INVITE sip", "CANCEL sip")
            .replace("1 INVITE", "1 CANCEL");
        layer.handle_message(t0, src(), Transport::Udp, Bytes::from(cancel.clone()));
        let (tx, ev) = drain(&mut layer);
        assert_eq!(status_of(&tx[0]), 200);
        assert!(matches!(ev.as_slice(), [TxnEvent::Cancelled { invite }] if *invite == txn));
        assert!(layer.is_pending(txn));
        // A CANCEL for nothing gets 481.
        let stray = cancel.replace("z9hG4bK-e", "z9hG4bK-zz");
        layer.handle_message(t0, src(), Transport::Udp, Bytes::from(stray));
        let (tx, _) = drain(&mut layer);
        assert_eq!(status_of(&tx[0]), 481);
    }

    #[test]
    fn client_requests_retransmit_and_deliver_the_final_response() {
        let t0 = Instant::now();
        let mut layer = TxnLayer::new(TimerConfig::default());
        let branch = new_branch();
        let bye = format!(
            "BYE sip:carrier@192.0.2.10:5062 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch={branch}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:gw>;tag=t\r\nTo: <sip:a@b>;tag=x\r\nCall-ID: c1\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n"
        );
        let id = layer.send_request(
            t0,
            "BYE",
            branch.clone(),
            src(),
            Transport::Udp,
            Bytes::from(bye.clone()),
        );
        let (tx, _) = drain(&mut layer);
        assert_eq!(tx.len(), 1);
        layer.handle_timeout(t0 + Duration::from_millis(500));
        assert_eq!(drain(&mut layer).0.len(), 1);
        let ok = switchboard_sip::parse(bye.as_bytes())
            .unwrap()
            .response(200)
            .build()
            .unwrap();
        layer.handle_message(t0 + Duration::from_millis(600), src(), Transport::Udp, ok);
        let (_, ev) = drain(&mut layer);
        assert!(matches!(ev.as_slice(), [TxnEvent::Response { txn, .. }] if *txn == id));
        // Stray responses are dropped silently.
        let stray = Bytes::from_static(b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKnope\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: q\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n");
        layer.handle_message(t0, src(), Transport::Udp, stray);
        let (tx, ev) = drain(&mut layer);
        assert!(tx.is_empty() && ev.is_empty());
    }

    #[test]
    fn unparseable_requests_still_get_their_400() {
        let mut layer = TxnLayer::new(TimerConfig::default());
        let bad = Bytes::from_static(
            b"INVITE sip:user@example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.53;branch=z9hG4bKkdjuw\r\n\
t: <sip:user@example.com>\r\nFrom: <sip:a@b>;tag=1\r\ni: x1\r\nCSeq: 1 INVITE\r\nContent-Length: -999\r\n\r\n",
        );
        layer.handle_message(Instant::now(), src(), Transport::Udp, bad);
        let (tx, ev) = drain(&mut layer);
        assert_eq!(tx.len(), 1, "{ev:?}");
        let reply = switchboard_sip::parse(&tx[0].bytes).unwrap();
        assert_eq!(reply.status(), Some(400));
        assert_eq!(reply.call_id().unwrap(), "x1");
        assert!(reply.to().unwrap().tag().is_some());
        assert!(matches!(
            ev.as_slice(),
            [TxnEvent::Malformed {
                status: Some(400),
                ..
            }]
        ));
        // Responses are never answered.
        assert!(stateless_error(b"SIP/2.0 999999 x\r\n\r\n", 400, "x", "t").is_none());
    }
}
