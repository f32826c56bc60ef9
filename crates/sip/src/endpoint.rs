//! The sans-IO SIP endpoint: transactions, dialogs and response routing behind
//! one poll-style API (after quinn-proto's `Endpoint`).
//!
//! ```text
//! endpoint.handle_datagram(now, remote, transport, bytes);  // a UDP datagram arrived
//! endpoint.handle_message(now, remote, transport, message); // a TCP frame (StreamDecoder)
//! endpoint.handle_timeout(now);                             // once now >= poll_timeout()
//! while let Some(t) = endpoint.poll_transmit() { /* send t.bytes to t.remote over t.transport */ }
//! while let Some(ev) = endpoint.poll_event() { /* NewInvite, Ack, Cancel, Bye, ... */ }
//! let wake_at = endpoint.poll_timeout();                    // Option<Instant>
//! endpoint.respond(now, txn, endpoint.response(txn, 180)?)?; // the call layer answers
//! ```
//!
//! After every `handle_*`, `respond` or `send_*` call, drain `poll_transmit` and
//! `poll_event` and re-read `poll_timeout`. Both queues only grow in proportion to
//! the input just handed in, so draining after each call keeps them small.
//!
//! What the endpoint does by itself, so the call layer never has to:
//! * absorbs request retransmissions (re-sending the last response), sends
//!   `100 Trying` for each new INVITE at once, retransmits final responses until
//!   the ACK (Timer G), and our 2xx until its ACK (§13.3.1.4);
//! * answers CANCEL with 200 (or 481 when nothing matches) and reports
//!   [`Event::Cancel`]; the TU then sends 487 to the INVITE;
//! * answers in-dialog requests for unknown dialogs with 481 and out-of-order
//!   ones with 500 (§12.2.2); malformed requests with the status their
//!   [`SipError`] names, statelessly; malformed responses are dropped;
//! * routes responses per RFC 3261 §18.2.2 / RFC 3581: on receipt the top Via
//!   gets `received` (when the sent-by host is not the source IP, or `rport` was
//!   asked for) and `rport=<source port>`; responses go to the source IP and
//!   either the source port (rport) or the sent-by port (default 5060); over
//!   TCP/TLS back to the connection they came from (`remote` + `transport`).
//!
//! Bounded: at most [`EndpointConfig::max_transactions`] live transactions (an
//! excess request is answered `503` with Retry-After, statelessly, without
//! state) and [`EndpointConfig::max_dialogs`] dialogs (an excess INVITE gets the
//! same 503). Server transactions the TU never answers are bounded in time as
//! well (see [`EndpointConfig::unanswered_invite_timeout`]).
//!
//! No clock, no randomness: `now` is a parameter everywhere and tags/branches
//! derive from [`EndpointConfig::instance_seed`] (give each process a random one).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::builder::{reason_phrase, MessageBuilder};
use crate::dialog::{AnswerRetransmission, AnswerTimer, Dialog, DialogId, DialogKey};
use crate::error::SipError;
use crate::header::HeaderName;
use crate::message::{Message, OwnedMessage};
use crate::stateless::{StatelessStats, StatelessTagger};
use crate::transaction::{
    is_rfc3261_branch, AckDisposition, ClientInviteState, ClientInviteTransaction,
    ClientNonInviteTransaction, SentBy, ServerInviteState, ServerInviteTransaction,
    ServerNonInviteTransaction, TimerAction, TimerConfig, TransactionKey,
};
use crate::via::{Rport, Transport, Via, MAGIC_COOKIE};

/// Default cap on live transactions (server + client). A transaction lives
/// about 32 s after its final response (Timers H/J/L on UDP), so 10 000 covers a
/// sustained ~300 new requests per second, far above what one gateway's trunks
/// offer, while bounding memory to a few tens of MB of retained messages.
pub const DEFAULT_MAX_TRANSACTIONS: usize = 10_000;

/// Default cap on dialogs (established calls). Far above the concurrent calls one
/// gateway carries; the gateway applies its own, lower, admission limit.
pub const DEFAULT_MAX_DIALOGS: usize = 10_000;

/// Retry-After (seconds) on the endpoint's own 503 when full: long enough for
/// transactions to drain (most linger ≤ 32 s, many far less), short enough that a
/// carrier retries the call soon.
pub const OVERLOAD_RETRY_AFTER_SECS: u32 = 5;

/// How long an INVITE may stay unanswered by the TU before the endpoint answers
/// `408 Request Timeout` itself: 180 s, RFC 3261 Timer C's lower bound (a proxy
/// also gives up on an INVITE after 3 minutes without a final response).
pub const DEFAULT_UNANSWERED_INVITE_TIMEOUT: Duration = Duration::from_secs(180);

/// The port of a sent-by without one (RFC 3261 §18.2.2 / §19.1.2).
const DEFAULT_SIP_PORT: u16 = 5060;

/// A safety bound on how many timer actions one transaction may take in one
/// `handle_timeout` call (each action moves its deadline; a zero T1 must not spin).
const MAX_TIMER_STEPS: usize = 16;

/// Endpoint settings.
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    /// T1/T2/T4 (RFC defaults).
    pub timers: TimerConfig,
    /// `None` (default): send `100 Trying` for a new INVITE at once, which stops
    /// carrier retransmissions earliest. `Some(d)`: only if the TU has not
    /// responded within `d` (RFC 3261 §17.2.1 suggests 200 ms).
    pub trying_delay: Option<Duration>,
    /// Cap on live transactions; see [`DEFAULT_MAX_TRANSACTIONS`].
    pub max_transactions: usize,
    /// Cap on dialogs; see [`DEFAULT_MAX_DIALOGS`].
    pub max_dialogs: usize,
    /// An INVITE the TU leaves unanswered this long gets `408` from the
    /// endpoint; see [`DEFAULT_UNANSWERED_INVITE_TIMEOUT`]. Non-INVITE requests
    /// are dropped (with [`Event::TransactionTimedOut`]) after 64·T1, when the
    /// client has given up anyway (its Timer F).
    pub unanswered_invite_timeout: Duration,
    /// Our `host[:port]` for the Via of requests we originate (BYE, ...).
    pub sent_by: String,
    /// Seed for tags and branches; different per process (e.g. random at start).
    pub instance_seed: u64,
    /// Option tags we support; a request whose Require names another gets 420
    /// with `Unsupported` (RFC 3261 §8.2.2.3).
    pub supported: Vec<String>,
}

impl EndpointConfig {
    /// Defaults with our Via sent-by and a per-process seed.
    pub fn new(sent_by: impl Into<String>, instance_seed: u64) -> Self {
        EndpointConfig {
            timers: TimerConfig::default(),
            trying_delay: None,
            max_transactions: DEFAULT_MAX_TRANSACTIONS,
            max_dialogs: DEFAULT_MAX_DIALOGS,
            unanswered_invite_timeout: DEFAULT_UNANSWERED_INVITE_TIMEOUT,
            sent_by: sent_by.into(),
            instance_seed,
            supported: Vec::new(),
        }
    }
}

/// Identifies a server transaction (a request we received).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServerTxnId(u64);

/// Identifies a client transaction (a request we sent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientTxnId(u64);

/// Either kind of transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransactionId {
    /// A request we received.
    Server(ServerTxnId),
    /// A request we sent.
    Client(ClientTxnId),
}

/// A message to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Destination (for TCP/TLS: the peer of the connection to use).
    pub remote: SocketAddr,
    /// Transport to send over.
    pub transport: Transport,
    /// The encoded message.
    pub bytes: Bytes,
}

/// What happened, for the transaction user (the call layer).
// Events are drained right after they are queued; boxing the message would cost
// an allocation per request to save a copy.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// A new INVITE outside any dialog: route it and answer with [`Endpoint::respond`]
    /// (100 Trying was already sent unless `trying_delay` is set).
    NewInvite {
        txn: ServerTxnId,
        request: OwnedMessage,
        remote: SocketAddr,
        transport: Transport,
    },
    /// A re-INVITE in an established dialog (hold, session refresh): answer it.
    ReInvite {
        txn: ServerTxnId,
        dialog: DialogId,
        request: OwnedMessage,
    },
    /// The ACK for our 2xx arrived: the call is confirmed. With a late offer
    /// (INVITE without SDP) the request body holds the SDP answer.
    Ack {
        dialog: DialogId,
        request: OwnedMessage,
    },
    /// The caller cancelled an unanswered INVITE; the CANCEL was answered 200.
    /// Answer the INVITE with 487 (and release what was reserved for it).
    Cancel {
        invite: ServerTxnId,
        request: OwnedMessage,
    },
    /// The peer hung up: answer 200 ([`Endpoint::respond`]); the dialog ends then.
    Bye {
        txn: ServerTxnId,
        dialog: DialogId,
        request: OwnedMessage,
    },
    /// INFO in a dialog (e.g. DTMF): answer it.
    Info {
        txn: ServerTxnId,
        dialog: DialogId,
        request: OwnedMessage,
    },
    /// OPTIONS (keep-alive or capability query): answer 200.
    Options {
        txn: ServerTxnId,
        dialog: Option<DialogId>,
        request: OwnedMessage,
        remote: SocketAddr,
        transport: Transport,
    },
    /// Any other request (REGISTER, MESSAGE, UPDATE, extension methods): answer
    /// it (405/501 when unsupported).
    Request {
        txn: ServerTxnId,
        dialog: Option<DialogId>,
        request: OwnedMessage,
        remote: SocketAddr,
        transport: Transport,
    },
    /// A response to a request we sent. For a 2xx to our INVITE, `dialog` is the
    /// new dialog: send its ACK with [`Endpoint::send_ack`].
    Response {
        txn: ClientTxnId,
        dialog: Option<DialogId>,
        response: OwnedMessage,
    },
    /// A transaction gave up: a client one got no final response (Timer B/F),
    /// a server INVITE got no ACK for its failure response (Timer H), or the TU
    /// left a request unanswered too long.
    TransactionTimedOut { txn: TransactionId },
    /// Our 2xx was retransmitted for 64·T1 without an ACK: RFC 3261 §13.3.1.4
    /// says to end the dialog with BYE ([`Endpoint::send_bye`]).
    AckTimedOut { dialog: DialogId },
}

enum ServerMachine {
    Invite(ServerInviteTransaction),
    NonInvite(ServerNonInviteTransaction),
}

struct ServerTxn {
    key: TransactionKey,
    machine: ServerMachine,
    /// The request, its top Via stamped with received/rport.
    request: OwnedMessage,
    /// Where the request came from (the dialog's fallback next hop).
    source: SocketAddr,
    /// Where responses go (§18.2.2).
    target: SocketAddr,
    transport: Transport,
    /// To tag of our responses (the dialog's tag for in-dialog requests).
    local_tag: String,
    dialog: Option<DialogId>,
    /// When the TU must have answered (finally) by.
    answer_by: Option<Instant>,
}

impl ServerTxn {
    fn is_invite(&self) -> bool {
        matches!(self.machine, ServerMachine::Invite(_))
    }

    fn method(&self) -> &str {
        self.key.method()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let machine = match &self.machine {
            ServerMachine::Invite(m) => m.poll_timeout(),
            ServerMachine::NonInvite(m) => m.poll_timeout(),
        };
        [machine, self.answer_by].into_iter().flatten().min()
    }

    fn is_terminated(&self) -> bool {
        match &self.machine {
            ServerMachine::Invite(m) => m.is_terminated(),
            ServerMachine::NonInvite(m) => m.is_terminated(),
        }
    }

    fn send_response(&mut self, now: Instant, status: u16, bytes: Bytes) -> Option<Bytes> {
        if status >= 200 {
            self.answer_by = None;
        }
        match &mut self.machine {
            ServerMachine::Invite(m) => m.send_response(now, status, bytes),
            ServerMachine::NonInvite(m) => m.send_response(now, status, bytes),
        }
    }
}

enum ClientMachine {
    Invite(ClientInviteTransaction),
    NonInvite(ClientNonInviteTransaction),
}

struct ClientTxn {
    branch: String,
    method: String,
    machine: ClientMachine,
    request: OwnedMessage,
    remote: SocketAddr,
    transport: Transport,
}

impl ClientTxn {
    fn poll_timeout(&self) -> Option<Instant> {
        match &self.machine {
            ClientMachine::Invite(m) => m.poll_timeout(),
            ClientMachine::NonInvite(m) => m.poll_timeout(),
        }
    }

    fn is_terminated(&self) -> bool {
        match &self.machine {
            ClientMachine::Invite(m) => m.is_terminated(),
            ClientMachine::NonInvite(m) => m.is_terminated(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum TimerKey {
    Server(ServerTxnId),
    Client(ClientTxnId),
    Answer(DialogId),
}

/// The SIP endpoint. See the module docs for the calling pattern.
pub struct Endpoint {
    config: EndpointConfig,
    server_txns: HashMap<ServerTxnId, ServerTxn>,
    server_keys: HashMap<TransactionKey, ServerTxnId>,
    client_txns: HashMap<ClientTxnId, ClientTxn>,
    client_keys: HashMap<(String, String), ClientTxnId>,
    dialogs: HashMap<DialogId, Dialog>,
    dialog_keys: HashMap<DialogKey, DialogId>,
    /// Deadlines by time; an entry is live only while `armed` holds the same instant.
    timers: BinaryHeap<Reverse<(Instant, TimerKey)>>,
    armed: HashMap<TimerKey, Instant>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    next_id: u64,
    token_counter: u64,
    tagger: StatelessTagger,
    stats: StatelessStats,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("server_transactions", &self.server_txns.len())
            .field("client_transactions", &self.client_txns.len())
            .field("dialogs", &self.dialogs.len())
            .field("queued_transmits", &self.transmits.len())
            .field("queued_events", &self.events.len())
            .finish()
    }
}

/// SplitMix64: a bijective mixer, so distinct counters give distinct tokens.
pub(crate) fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn source_ip(remote: SocketAddr) -> IpAddr {
    remote.ip().to_canonical()
}

/// Where responses to a request with top Via `via` go (§18.2.2, RFC 3581).
fn response_target(via: &Via<'_>, remote: SocketAddr, transport: Transport) -> SocketAddr {
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
fn stamp_request(request: OwnedMessage, remote: SocketAddr) -> OwnedMessage {
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

/// The server transaction key of a (validated) request (§17.2.3).
fn server_key(m: &Message<'_>) -> Result<TransactionKey, SipError> {
    let via = m.via()?;
    let method = m.method().unwrap_or_default();
    match via.branch() {
        Some(branch) if is_rfc3261_branch(branch) => Ok(TransactionKey::rfc3261(
            branch,
            SentBy::new(&via.host.to_string(), via.port),
            method,
        )),
        _ => {
            let top_via = m
                .list_elements(HeaderName::Via)
                .next()
                .unwrap_or(Err(SipError::MissingHeader { header: "Via" }))?;
            let request_uri = m
                .request_uri_raw()
                .and_then(|u| std::str::from_utf8(u).ok())
                .unwrap_or_default();
            Ok(TransactionKey::rfc2543(
                request_uri,
                m.from()?.tag(),
                m.call_id()?,
                m.cseq()?.seq,
                top_via,
                method,
            ))
        }
    }
}

/// The dialog an in-dialog request names (§12.2.2), from our point of view.
fn dialog_key_of_request(m: &Message<'_>) -> Option<DialogKey> {
    let local_tag = m.to().ok()?.tag()?.to_owned();
    Some(DialogKey {
        call_id: m.call_id().ok()?.to_owned(),
        local_tag,
        remote_tag: m.from().ok()?.tag().unwrap_or_default().to_owned(),
    })
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
fn salvage_error_response(raw: &[u8], status: u16, tag: &str) -> Option<(Bytes, Option<String>)> {
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

fn raw_header<'a>(m: &Message<'a>, name: HeaderName) -> Option<&'a str> {
    m.header(name).and_then(|h| h.value_str())
}

/// The ACK a client INVITE transaction sends for a failure response
/// (§17.1.1.3): Request-URI, top Via, From, Call-ID and Route of the INVITE, To of
/// the response, CSeq number of the INVITE with method ACK.
fn ack_for_failure(invite: &Message<'_>, response: &Message<'_>) -> Option<Bytes> {
    let request_uri = std::str::from_utf8(invite.request_uri_raw()?).ok()?;
    let top_via = invite.list_elements(HeaderName::Via).next()?.ok()?;
    let mut b = MessageBuilder::request("ACK", request_uri)
        .header("Via", top_via)
        .header("Max-Forwards", crate::dialog::DEFAULT_MAX_FORWARDS);
    for route in invite.headers_named(HeaderName::Route) {
        b = b.header("Route", route.value_str()?);
    }
    b.header("From", raw_header(invite, HeaderName::From)?)
        .header("To", raw_header(response, HeaderName::To)?)
        .header("Call-ID", invite.call_id().ok()?)
        .header("CSeq", format_args!("{} ACK", invite.cseq().ok()?.seq))
        .build()
        .ok()
}

fn no_such_transaction() -> SipError {
    SipError::Build {
        reason: "no such transaction (finished, timed out or never existed)",
    }
}

impl Endpoint {
    /// A new endpoint.
    pub fn new(config: EndpointConfig) -> Self {
        let tagger = StatelessTagger::new(config.instance_seed);
        Endpoint {
            config,
            server_txns: HashMap::new(),
            server_keys: HashMap::new(),
            client_txns: HashMap::new(),
            client_keys: HashMap::new(),
            dialogs: HashMap::new(),
            dialog_keys: HashMap::new(),
            timers: BinaryHeap::new(),
            armed: HashMap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            next_id: 0,
            token_counter: 0,
            tagger,
            stats: StatelessStats::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &EndpointConfig {
        &self.config
    }

    /// Live transactions (server + client).
    pub fn transaction_count(&self) -> usize {
        self.server_txns.len() + self.client_txns.len()
    }

    /// Live dialogs.
    pub fn dialog_count(&self) -> usize {
        self.dialogs.len()
    }

    /// Counters of what was answered or absorbed without state (monotonic; export the
    /// difference since the last read as metrics).
    pub fn stats(&self) -> StatelessStats {
        self.stats
    }

    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// A fresh token for tags and branches: unique per endpoint (bijective mix of
    /// a counter) and distinct across endpoints with different seeds.
    fn token(&mut self) -> String {
        self.token_counter += 1;
        let x = splitmix64(self.config.instance_seed ^ splitmix64(self.token_counter));
        format!("{x:016x}")
    }

    /// A fresh tag for a From/To header.
    pub fn new_tag(&mut self) -> String {
        self.token()
    }

    /// A top Via value with a fresh RFC 3261 branch for a request we originate
    /// over `transport` (`rport` asks the peer to answer to our source port).
    pub fn new_via(&mut self, transport: Transport) -> String {
        let token = self.token();
        format!(
            "SIP/2.0/{} {};branch={MAGIC_COOKIE}{token};rport",
            transport.as_str(),
            self.config.sent_by
        )
    }

    // ---- input -------------------------------------------------------------

    /// Call for every UDP datagram received on a SIP socket.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        transport: Transport,
        bytes: Bytes,
    ) {
        match OwnedMessage::parse(bytes.clone()) {
            Ok(message) => self.handle_message(now, remote, transport, message),
            Err(error) => {
                if let Some(status) = error.response_status() {
                    let tag = self.token();
                    if let Some((response, top_via)) = salvage_error_response(&bytes, status, &tag)
                    {
                        let target = top_via
                            .as_deref()
                            .and_then(|v| Via::parse(v).ok())
                            .map_or(remote, |via| response_target(&via, remote, transport));
                        self.transmit(target, transport, response);
                    }
                }
            }
        }
    }

    /// Call for every complete message framed from a stream (TCP/TLS) by
    /// [`crate::StreamDecoder`], and by [`Endpoint::handle_datagram`].
    pub fn handle_message(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        transport: Transport,
        message: OwnedMessage,
    ) {
        if message.message().is_response() {
            self.handle_response(now, message);
        } else {
            self.handle_request(now, remote, transport, message);
        }
    }

    fn handle_request(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        transport: Transport,
        request: OwnedMessage,
    ) {
        let (method, is_ack) = {
            let m = request.message();
            let method = m.method().unwrap_or_default().to_owned();
            let is_ack = method == "ACK";
            if let Err(error) = m.validate() {
                if !is_ack {
                    self.reply_stateless_error(&m, remote, transport, &error);
                }
                return;
            }
            if !is_ack && method != "CANCEL" {
                let supported: Vec<&str> =
                    self.config.supported.iter().map(String::as_str).collect();
                if let Err(error) = m.check_require(&supported) {
                    self.reply_stateless_error(&m, remote, transport, &error);
                    return;
                }
            }
            (method, is_ack)
        };
        let request = stamp_request(request, remote);
        let m = request.message();
        let Ok(via) = m.via() else { return };
        let target = response_target(&via, remote, transport);
        let Ok(key) = server_key(&m) else { return };

        if is_ack {
            self.handle_ack(now, key, request.clone());
            return;
        }
        if let Some(&id) = self.server_keys.get(&key) {
            // A retransmission: repeat the last response, if any.
            if let Some(txn) = self.server_txns.get_mut(&id) {
                let again = match &mut txn.machine {
                    ServerMachine::Invite(t) => t.on_request_retransmission(now),
                    ServerMachine::NonInvite(t) => t.on_request_retransmission(now),
                };
                if let Some(bytes) = again {
                    let (to, tr) = (txn.target, txn.transport);
                    self.transmit(to, tr, bytes);
                }
            }
            return;
        }
        let in_dialog = m.to().is_ok_and(|to| to.tag().is_some());
        let too_many_dialogs =
            method == "INVITE" && !in_dialog && self.dialogs.len() >= self.config.max_dialogs;
        if self.transaction_count() >= self.config.max_transactions || too_many_dialogs {
            self.reply_overloaded(&m, target, transport);
            return;
        }

        if method == "CANCEL" {
            self.handle_cancel(now, key, request.clone(), remote, target, transport);
            return;
        }

        let mut dialog = None;
        let mut local_tag = None;
        let mut reject = None;
        if in_dialog {
            match dialog_key_of_request(&m).and_then(|k| self.dialog_keys.get(&k).copied()) {
                None => reject = Some(481),
                Some(id) => {
                    if let Some(d) = self.dialogs.get_mut(&id) {
                        let cseq = m.cseq().map(|c| c.seq).unwrap_or_default();
                        if d.accept_remote_cseq(&method, cseq) {
                            if method == "INVITE" || method == "UPDATE" {
                                d.refresh_target(&m);
                            }
                            dialog = Some(id);
                            local_tag = Some(d.local_tag().to_owned());
                        } else {
                            reject = Some(500);
                        }
                    }
                }
            }
        } else if method == "BYE" || method == "INFO" {
            // Requests that only exist inside a dialog (RFC 3261 §15, RFC 6086).
            reject = Some(481);
        }

        if let Some(status) = reject {
            // 481/500 keep no state: a retransmission is answered the same way again.
            let tag = local_tag.or_else(|| self.tagger.tag_for(&m));
            self.reply_stateless(&m, target, transport, status, tag);
            return;
        }
        // Out of dialog the tag derives from the request, so the TU may still answer
        // statelessly (`respond_stateless`) with the tag a retransmission would get.
        let local_tag = match local_tag.or_else(|| self.tagger.tag_for(&m)) {
            Some(tag) => tag,
            None => self.token(),
        };
        let reliable = transport.is_stream();
        let machine = if method == "INVITE" {
            ServerMachine::Invite(ServerInviteTransaction::new(
                now,
                self.config.timers,
                reliable,
                self.config.trying_delay,
            ))
        } else {
            ServerMachine::NonInvite(ServerNonInviteTransaction::new(
                now,
                self.config.timers,
                reliable,
            ))
        };
        let answer_by = now
            + if method == "INVITE" {
                self.config.unanswered_invite_timeout
            } else {
                self.config.timers.sixty_four_t1()
            };
        let id = ServerTxnId(self.next_id());
        self.server_keys.insert(key.clone(), id);
        self.server_txns.insert(
            id,
            ServerTxn {
                key,
                machine,
                request: request.clone(),
                source: remote,
                target,
                transport,
                local_tag,
                dialog,
                answer_by: Some(answer_by),
            },
        );

        if method == "INVITE" && self.config.trying_delay.is_none() {
            self.respond_status(now, id, 100);
        }
        let event = match (method.as_str(), dialog) {
            ("INVITE", None) => Event::NewInvite {
                txn: id,
                request,
                remote,
                transport,
            },
            ("INVITE", Some(dialog)) => Event::ReInvite {
                txn: id,
                dialog,
                request,
            },
            ("BYE", Some(dialog)) => Event::Bye {
                txn: id,
                dialog,
                request,
            },
            ("INFO", Some(dialog)) => Event::Info {
                txn: id,
                dialog,
                request,
            },
            ("OPTIONS", dialog) => Event::Options {
                txn: id,
                dialog,
                request,
                remote,
                transport,
            },
            (_, dialog) => Event::Request {
                txn: id,
                dialog,
                request,
                remote,
                transport,
            },
        };
        self.events.push_back(event);
        self.schedule(TimerKey::Server(id));
    }

    /// An ACK: for a failure response it belongs to the INVITE transaction; for
    /// a 2xx it is matched to the dialog (§13.3.1.4, §17.1.1.3).
    fn handle_ack(&mut self, now: Instant, key: TransactionKey, request: OwnedMessage) {
        if let Some(&id) = self.server_keys.get(&key) {
            let disposition = match self.server_txns.get_mut(&id).map(|t| &mut t.machine) {
                Some(ServerMachine::Invite(t)) => t.on_ack(now),
                _ => AckDisposition::Ignored,
            };
            self.after_server_change(id);
            if disposition != AckDisposition::PassToTu {
                return;
            }
        }
        let m = request.message();
        let Some(dialog_id) = dialog_key_of_request(&m).and_then(|k| self.dialog_keys.get(&k))
        else {
            // No transaction, no dialog: the ACK of a stateless reply (its To tag is the
            // one we derived from this very request), or a stray. Either way, nothing to do.
            let ours = m.to().ok().and_then(|to| to.tag()).is_some_and(|tag| {
                self.tagger
                    .tag_for(&m)
                    .is_some_and(|expected| expected == tag)
            });
            if ours {
                self.stats.absorbed_acks += 1;
            } else {
                self.stats.stray_acks += 1;
            }
            return;
        };
        let dialog_id = *dialog_id;
        let cseq = m.cseq().map(|c| c.seq).ok();
        let Some(dialog) = self.dialogs.get_mut(&dialog_id) else {
            return;
        };
        if dialog.answer.as_ref().map(|a| a.cseq) != cseq {
            return; // a retransmitted ACK, or one for an older INVITE
        }
        dialog.answer = None;
        self.unschedule(TimerKey::Answer(dialog_id));
        self.events.push_back(Event::Ack {
            dialog: dialog_id,
            request,
        });
    }

    fn handle_cancel(
        &mut self,
        now: Instant,
        key: TransactionKey,
        request: OwnedMessage,
        remote: SocketAddr,
        target: SocketAddr,
        transport: Transport,
    ) {
        let invite = self.server_keys.get(&key.with_method("INVITE")).copied();
        let invite_info = invite.and_then(|id| {
            let t = self.server_txns.get(&id)?;
            let unanswered = matches!(
                &t.machine,
                ServerMachine::Invite(m) if m.state() == ServerInviteState::Proceeding
            );
            Some((id, t.local_tag.clone(), unanswered))
        });
        let Some((invite, local_tag, unanswered)) = invite_info else {
            // Nothing to cancel: a stateless 481, so stray CANCELs cost no state.
            let m = request.message();
            let tag = self.tagger.tag_for(&m);
            self.reply_stateless(&m, target, transport, 481, tag);
            return;
        };
        let id = ServerTxnId(self.next_id());
        self.server_keys.insert(key.clone(), id);
        self.server_txns.insert(
            id,
            ServerTxn {
                key,
                machine: ServerMachine::NonInvite(ServerNonInviteTransaction::new(
                    now,
                    self.config.timers,
                    transport.is_stream(),
                )),
                request: request.clone(),
                source: remote,
                target,
                transport,
                // §9.2: the CANCEL's response carries the INVITE response's To tag.
                local_tag,
                dialog: None,
                answer_by: None,
            },
        );
        self.respond_status(now, id, 200);
        if unanswered {
            self.events.push_back(Event::Cancel { invite, request });
        }
    }

    fn handle_response(&mut self, now: Instant, response: OwnedMessage) {
        let m = response.message();
        if m.validate().is_err() {
            return; // malformed responses are dropped silently
        }
        let (Ok(via), Ok(cseq), Some(status)) = (m.via(), m.cseq(), m.status()) else {
            return;
        };
        let Some(branch) = via.branch() else { return };
        let lookup = (branch.to_owned(), cseq.method.to_owned());
        let Some(&id) = self.client_keys.get(&lookup) else {
            // A 2xx retransmission after the INVITE transaction ended: re-ACK it.
            if cseq.method == "INVITE" && (200..300).contains(&status) {
                self.absorb_2xx_retransmission(&m);
            }
            return;
        };
        let Some(txn) = self.client_txns.get_mut(&id) else {
            return;
        };
        let (deliver, transmit) = match &mut txn.machine {
            ClientMachine::NonInvite(t) => (t.on_response(now, status), None),
            ClientMachine::Invite(t) => {
                let invite = txn.request.message();
                let d = t.on_response(now, status, || ack_for_failure(&invite, &m));
                (d.deliver, d.transmit)
            }
        };
        let (remote, transport) = (txn.remote, txn.transport);
        let is_invite = matches!(txn.machine, ClientMachine::Invite(_));
        let invite = txn.request.clone();
        if let Some(ack) = transmit {
            self.transmit(remote, transport, ack);
        }
        let mut dialog = None;
        if deliver && is_invite && (200..300).contains(&status) {
            if self.absorb_2xx_retransmission(&m) {
                self.after_client_change(id);
                return;
            }
            match Dialog::uac(&invite.message(), &m, remote, transport) {
                Ok(d) => dialog = Some(self.insert_dialog(d)),
                Err(_) => {
                    self.after_client_change(id);
                    return;
                }
            }
        }
        if deliver {
            self.events.push_back(Event::Response {
                txn: id,
                dialog,
                response,
            });
        }
        self.after_client_change(id);
    }

    /// Re-sends our ACK when a 2xx we already acknowledged comes again; `true`
    /// when it did.
    fn absorb_2xx_retransmission(&mut self, response: &Message<'_>) -> bool {
        let Some(key) = (|| {
            Some(DialogKey {
                call_id: response.call_id().ok()?.to_owned(),
                local_tag: response.from().ok()?.tag()?.to_owned(),
                remote_tag: response.to().ok()?.tag().unwrap_or_default().to_owned(),
            })
        })() else {
            return false;
        };
        let cseq = response.cseq().map(|c| c.seq).ok();
        let Some(dialog) = self
            .dialog_keys
            .get(&key)
            .and_then(|id| self.dialogs.get(id))
        else {
            return false;
        };
        match &dialog.sent_ack {
            Some((ack_cseq, bytes)) if Some(*ack_cseq) == cseq => {
                let (to, tr, bytes) = (dialog.next_hop(), dialog.transport(), bytes.clone());
                self.transmit(to, tr, bytes);
                true
            }
            // Acknowledged by the TU later (it has not sent the ACK yet).
            _ => dialog.sent_ack.is_none() && dialog.invite_cseq() == cseq.unwrap_or(0),
        }
    }

    /// Call when `now >= poll_timeout()`: fires every due timer.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&Reverse((at, key))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            if self.armed.get(&key) != Some(&at) {
                continue; // superseded
            }
            self.armed.remove(&key);
            match key {
                TimerKey::Server(id) => self.fire_server(now, id),
                TimerKey::Client(id) => self.fire_client(now, id),
                TimerKey::Answer(id) => self.fire_answer(now, id),
            }
        }
    }

    fn fire_server(&mut self, now: Instant, id: ServerTxnId) {
        for _ in 0..MAX_TIMER_STEPS {
            let Some(txn) = self.server_txns.get_mut(&id) else {
                return;
            };
            if txn.poll_timeout().is_none_or(|at| at > now) {
                break;
            }
            if txn.answer_by.is_some_and(|at| at <= now) {
                txn.answer_by = None;
                let invite = txn.is_invite();
                self.events.push_back(Event::TransactionTimedOut {
                    txn: TransactionId::Server(id),
                });
                if invite {
                    self.respond_status(now, id, 408);
                } else {
                    self.remove_server(id);
                    return;
                }
                continue;
            }
            let action = match &mut txn.machine {
                ServerMachine::Invite(t) => t.on_timeout(now),
                ServerMachine::NonInvite(t) => {
                    t.on_timeout(now);
                    None
                }
            };
            let (to, tr) = (txn.target, txn.transport);
            match action {
                Some(TimerAction::Retransmit(bytes)) => self.transmit(to, tr, bytes),
                Some(TimerAction::TimedOut) => self.events.push_back(Event::TransactionTimedOut {
                    txn: TransactionId::Server(id),
                }),
                Some(TimerAction::SendTrying) => self.respond_status(now, id, 100),
                None => {}
            }
        }
        self.after_server_change(id);
    }

    fn fire_client(&mut self, now: Instant, id: ClientTxnId) {
        for _ in 0..MAX_TIMER_STEPS {
            let Some(txn) = self.client_txns.get_mut(&id) else {
                return;
            };
            if txn.poll_timeout().is_none_or(|at| at > now) {
                break;
            }
            let action = match &mut txn.machine {
                ClientMachine::Invite(t) => t.on_timeout(now),
                ClientMachine::NonInvite(t) => t.on_timeout(now),
            };
            let (to, tr) = (txn.remote, txn.transport);
            match action {
                Some(TimerAction::Retransmit(bytes)) => self.transmit(to, tr, bytes),
                Some(TimerAction::TimedOut) => self.events.push_back(Event::TransactionTimedOut {
                    txn: TransactionId::Client(id),
                }),
                Some(TimerAction::SendTrying) | None => {}
            }
        }
        self.after_client_change(id);
    }

    fn fire_answer(&mut self, now: Instant, id: DialogId) {
        let Some(dialog) = self.dialogs.get_mut(&id) else {
            return;
        };
        let transport = dialog.transport();
        let Some(answer) = dialog.answer.as_mut() else {
            return;
        };
        let target = answer.target;
        for _ in 0..MAX_TIMER_STEPS {
            if answer.poll_timeout() > now {
                break;
            }
            match answer.on_timeout(now) {
                Some(AnswerTimer::Retransmit(bytes)) => self.transmits.push_back(Transmit {
                    remote: target,
                    transport,
                    bytes,
                }),
                Some(AnswerTimer::GaveUp) => {
                    dialog.answer = None;
                    self.events.push_back(Event::AckTimedOut { dialog: id });
                    return;
                }
                None => break,
            }
        }
        self.schedule(TimerKey::Answer(id));
    }

    // ---- output ------------------------------------------------------------

    /// The next message to send, if any. Drain after every call into the endpoint.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event for the TU, if any. Drain after every call into the endpoint.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Endpoint::handle_timeout`] must be called next (`None`: no timer).
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        while let Some(&Reverse((at, key))) = self.timers.peek() {
            if self.armed.get(&key) == Some(&at) {
                return Some(at);
            }
            self.timers.pop();
        }
        None
    }

    // ---- the TU answers ----------------------------------------------------

    /// The request of a live server transaction (with its top Via stamped).
    pub fn request(&self, txn: ServerTxnId) -> Option<&OwnedMessage> {
        self.server_txns.get(&txn).map(|t| &t.request)
    }

    /// A response to `txn`'s request per RFC 3261 §8.2.6 (Via, From, To with our
    /// tag, Call-ID, CSeq copied) to complete with headers/body and pass to
    /// [`Endpoint::respond`]. `None` when the transaction is gone.
    pub fn response(&self, txn: ServerTxnId, status: u16) -> Option<MessageBuilder> {
        let t = self.server_txns.get(&txn)?;
        Some(t.request.message().response(status).to_tag(&t.local_tag))
    }

    /// Sends a response in `txn`. Call it for every answer to an event's request
    /// (1xx, then exactly one final). A 2xx to an INVITE creates the dialog (or
    /// refreshes it for a re-INVITE) and is retransmitted until its ACK; a final
    /// response to a BYE ends the dialog.
    ///
    /// Errors: the builder's [`SipError::Build`], or `Build` when the
    /// transaction is gone or already answered finally.
    pub fn respond(
        &mut self,
        now: Instant,
        txn: ServerTxnId,
        response: MessageBuilder,
    ) -> Result<(), SipError> {
        let t = self.server_txns.get(&txn).ok_or_else(no_such_transaction)?;
        let response = response.to_tag(&t.local_tag).build_message()?;
        let status = response.message().status().unwrap_or_default();
        let invite_2xx = t.is_invite() && (200..300).contains(&status);
        let new_dialog = if invite_2xx && t.dialog.is_none() {
            Some(Dialog::uas(
                &t.request.message(),
                &response.message(),
                t.source,
                t.transport,
            )?)
        } else {
            None
        };
        let t = self
            .server_txns
            .get_mut(&txn)
            .ok_or_else(no_such_transaction)?;
        let Some(bytes) = t.send_response(now, status, response.bytes()) else {
            return Err(SipError::Build {
                reason: "the transaction already sent its final response",
            });
        };
        let (target, transport, reliable) = (t.target, t.transport, t.transport.is_stream());
        let cseq = t
            .request
            .message()
            .cseq()
            .map(|c| c.seq)
            .unwrap_or_default();
        let is_bye = t.method() == "BYE";
        let mut dialog = t.dialog;
        self.transmit(target, transport, bytes.clone());
        if let Some(d) = new_dialog {
            let id = self.insert_dialog(d);
            dialog = Some(id);
            if let Some(t) = self.server_txns.get_mut(&txn) {
                t.dialog = Some(id);
            }
        }
        if invite_2xx {
            if let Some(d) = dialog.and_then(|id| self.dialogs.get_mut(&id)) {
                d.answer = Some(AnswerRetransmission::start(
                    now,
                    &self.config.timers,
                    reliable,
                    cseq,
                    bytes,
                    target,
                ));
            }
            if let Some(id) = dialog {
                self.schedule(TimerKey::Answer(id));
            }
        }
        if is_bye && status >= 200 {
            if let Some(id) = dialog {
                self.remove_dialog(id);
            }
        }
        self.after_server_change(txn);
        Ok(())
    }

    /// Answers `txn`'s request with a final non-2xx response (any final one for a non-INVITE)
    /// and forgets the transaction at once, as a stateless proxy's `sl_send_reply` does.
    ///
    /// Call it for refusals decided before a call is taken on (403, 404, 480, 503, ...), in
    /// the same turn as the event that carried the request: nothing is kept, so a flood of
    /// rejected requests costs no memory and no timers. A retransmission of the request comes
    /// back as a new event and, answered the same way, gets the identical response (the To
    /// tag is derived from the request); the ACK for it is absorbed (see [`Endpoint::stats`]).
    ///
    /// Errors: `Build` when the transaction is gone, already answered finally, the status is
    /// provisional, or it is a 2xx to an INVITE (that needs a dialog: use `respond`).
    pub fn respond_stateless(
        &mut self,
        txn: ServerTxnId,
        response: MessageBuilder,
    ) -> Result<(), SipError> {
        let t = self.server_txns.get(&txn).ok_or_else(no_such_transaction)?;
        let response = response.to_tag(&t.local_tag).build_message()?;
        let status = response.message().status().unwrap_or_default();
        if status < 200 || (t.is_invite() && status < 300) {
            return Err(SipError::Build {
                reason: "a stateless answer must be final, and not a 2xx to an INVITE",
            });
        }
        if t.answer_by.is_none() {
            return Err(SipError::Build {
                reason: "the transaction already sent its final response",
            });
        }
        let (target, transport) = (t.target, t.transport);
        self.transmit(target, transport, response.bytes());
        self.stats.replies += 1;
        self.remove_server(txn);
        Ok(())
    }

    /// [`Endpoint::respond`] with a bare response (no extra headers or body).
    fn respond_status(&mut self, now: Instant, txn: ServerTxnId, status: u16) {
        if let Some(b) = self.response(txn, status) {
            // Cannot fail: the builder only copies the validated request.
            let _ = self.respond(now, txn, b);
        }
    }

    // ---- requests we send ----------------------------------------------------

    /// Sends a request we built (its top Via from [`Endpoint::new_via`]) in a new
    /// client transaction to `remote`. INVITE gets an INVITE client transaction,
    /// everything else a non-INVITE one; use [`Endpoint::send_ack`] for ACK.
    pub fn send_request(
        &mut self,
        now: Instant,
        remote: SocketAddr,
        transport: Transport,
        request: Bytes,
    ) -> Result<ClientTxnId, SipError> {
        let request = OwnedMessage::parse(request)?;
        let (branch, method) = {
            let m = request.message();
            let method = m.method().ok_or(SipError::Build {
                reason: "send_request needs a request",
            })?;
            if method == "ACK" {
                return Err(SipError::Build {
                    reason: "ACK has no transaction: use send_ack",
                });
            }
            let branch = m.via()?.branch().ok_or(SipError::Build {
                reason: "the top Via needs a branch (use new_via)",
            })?;
            (branch.to_owned(), method.to_owned())
        };
        if self.transaction_count() >= self.config.max_transactions {
            return Err(SipError::Build {
                reason: "too many live transactions",
            });
        }
        let reliable = transport.is_stream();
        let bytes = request.bytes();
        let machine = if method == "INVITE" {
            ClientMachine::Invite(ClientInviteTransaction::new(
                now,
                self.config.timers,
                reliable,
                bytes.clone(),
            ))
        } else {
            ClientMachine::NonInvite(ClientNonInviteTransaction::new(
                now,
                self.config.timers,
                reliable,
                bytes.clone(),
            ))
        };
        let id = ClientTxnId(self.next_id());
        self.client_keys
            .insert((branch.clone(), method.clone()), id);
        self.client_txns.insert(
            id,
            ClientTxn {
                branch,
                method,
                machine,
                request,
                remote,
                transport,
            },
        );
        self.transmit(remote, transport, bytes);
        self.schedule(TimerKey::Client(id));
        Ok(id)
    }

    /// The dialog, if it is live.
    pub fn dialog(&self, id: DialogId) -> Option<&Dialog> {
        self.dialogs.get(&id)
    }

    /// Starts an in-dialog request (e.g. re-INVITE, INFO) with a fresh Via and the
    /// next CSeq; finish it and pass it to [`Endpoint::send_request`] with
    /// [`Dialog::next_hop`] / [`Dialog::transport`].
    pub fn dialog_request(&mut self, id: DialogId, method: &str) -> Option<MessageBuilder> {
        let transport = self.dialogs.get(&id)?.transport();
        let via = self.new_via(transport);
        Some(self.dialogs.get_mut(&id)?.request(method, &via))
    }

    /// Hangs up: sends BYE in the dialog and forgets the dialog (further
    /// requests in it get 481). The BYE's response arrives as
    /// [`Event::Response`], or its loss as [`Event::TransactionTimedOut`].
    pub fn send_bye(&mut self, now: Instant, id: DialogId) -> Result<ClientTxnId, SipError> {
        let bye = self
            .dialog_request(id, "BYE")
            .ok_or_else(no_such_transaction)?
            .build()?;
        let (hop, transport) = {
            let d = self.dialogs.get(&id).ok_or_else(no_such_transaction)?;
            (d.next_hop(), d.transport())
        };
        self.remove_dialog(id);
        self.send_request(now, hop, transport, bye)
    }

    /// UAC side: acknowledges the 2xx of our INVITE in dialog `id`, optionally
    /// with a body (the SDP answer when the 2xx carried the offer). The ACK is
    /// re-sent by the endpoint whenever the 2xx is retransmitted.
    pub fn send_ack(
        &mut self,
        _now: Instant,
        id: DialogId,
        body: Option<(&str, &[u8])>,
    ) -> Result<(), SipError> {
        let transport = self
            .dialogs
            .get(&id)
            .ok_or_else(no_such_transaction)?
            .transport();
        let via = self.new_via(transport);
        let d = self.dialogs.get_mut(&id).ok_or_else(no_such_transaction)?;
        let mut ack = d.ack(&via);
        if let Some((content_type, bytes)) = body {
            ack = ack.body(content_type, bytes);
        }
        let bytes = ack.build()?;
        d.sent_ack = Some((d.invite_cseq(), bytes.clone()));
        let hop = d.next_hop();
        self.transmit(hop, transport, bytes);
        Ok(())
    }

    /// UAC side: cancels our INVITE `invite` (RFC 3261 §9.1) once a provisional
    /// response has arrived. The 487 for the INVITE arrives as [`Event::Response`].
    pub fn send_cancel(
        &mut self,
        now: Instant,
        invite: ClientTxnId,
    ) -> Result<ClientTxnId, SipError> {
        let txn = self
            .client_txns
            .get(&invite)
            .ok_or_else(no_such_transaction)?;
        match &txn.machine {
            ClientMachine::Invite(t) if t.state() == ClientInviteState::Proceeding => {}
            _ => {
                return Err(SipError::Build {
                    reason: "CANCEL only for an INVITE that got a provisional response",
                })
            }
        }
        let m = txn.request.message();
        let raw = |name: HeaderName| {
            m.header(name)
                .and_then(|h| h.value_str())
                .ok_or(SipError::MissingHeader {
                    header: name.as_str(),
                })
        };
        let request_uri = m
            .request_uri_raw()
            .and_then(|u| std::str::from_utf8(u).ok())
            .ok_or(SipError::Build {
                reason: "INVITE without Request-URI",
            })?;
        let top_via = m
            .list_elements(HeaderName::Via)
            .next()
            .unwrap_or(Err(SipError::MissingHeader { header: "Via" }))?;
        let mut b = MessageBuilder::request("CANCEL", request_uri)
            .header("Via", top_via)
            .header("Max-Forwards", crate::dialog::DEFAULT_MAX_FORWARDS);
        for route in m.headers_named(HeaderName::Route) {
            if let Some(v) = route.value_str() {
                b = b.header("Route", v);
            }
        }
        let cancel = b
            .header("From", raw(HeaderName::From)?)
            .header("To", raw(HeaderName::To)?)
            .header("Call-ID", m.call_id()?)
            .header("CSeq", format_args!("{} CANCEL", m.cseq()?.seq))
            .build()?;
        let (remote, transport) = (txn.remote, txn.transport);
        self.send_request(now, remote, transport, cancel)
    }

    /// Forgets a dialog without signalling (e.g. after [`Event::AckTimedOut`]
    /// when no BYE is wanted).
    pub fn remove_dialog(&mut self, id: DialogId) {
        if let Some(d) = self.dialogs.remove(&id) {
            self.dialog_keys.remove(&d.key());
        }
        self.unschedule(TimerKey::Answer(id));
    }

    // ---- internals -------------------------------------------------------------

    fn insert_dialog(&mut self, dialog: Dialog) -> DialogId {
        let key = dialog.key();
        if let Some(&id) = self.dialog_keys.get(&key) {
            return id;
        }
        let id = DialogId(self.next_id());
        self.dialog_keys.insert(key, id);
        self.dialogs.insert(id, dialog);
        id
    }

    fn transmit(&mut self, remote: SocketAddr, transport: Transport, bytes: Bytes) {
        self.transmits.push_back(Transmit {
            remote,
            transport,
            bytes,
        });
    }

    fn reply_stateless_error(
        &mut self,
        m: &Message<'_>,
        remote: SocketAddr,
        transport: Transport,
        error: &SipError,
    ) {
        let Some(status) = error.response_status() else {
            return;
        };
        let target = m
            .via()
            .map_or(remote, |via| response_target(&via, remote, transport));
        let tag = self.stateless_tag(m);
        let mut b = m.response(status).to_tag(&tag);
        if let SipError::BadExtension { unsupported } = error {
            b = b.header("Unsupported", unsupported.join(", "));
        }
        if let Ok(bytes) = b.build() {
            self.transmit(target, transport, bytes);
            self.stats.replies += 1;
        }
    }

    fn reply_overloaded(&mut self, m: &Message<'_>, target: SocketAddr, transport: Transport) {
        let tag = self.stateless_tag(m);
        let response = m
            .response(503)
            .to_tag(&tag)
            .header("Retry-After", OVERLOAD_RETRY_AFTER_SECS)
            .header("Reason", "SIP;cause=503;text=\"transaction limit reached\"")
            .build();
        if let Ok(bytes) = response {
            self.transmit(target, transport, bytes);
            self.stats.replies += 1;
        }
    }

    /// The To tag for a stateless reply to `m`: derived from the request when it names a
    /// Call-ID, From and Via (so its ACK is recognised), else a fresh token.
    fn stateless_tag(&mut self, m: &Message<'_>) -> String {
        match self.tagger.tag_for(m) {
            Some(tag) => tag,
            None => self.token(),
        }
    }

    /// A bare final response with no transaction (`tag`: the To tag, else derived).
    fn reply_stateless(
        &mut self,
        m: &Message<'_>,
        target: SocketAddr,
        transport: Transport,
        status: u16,
        tag: Option<String>,
    ) {
        let tag = match tag {
            Some(tag) => tag,
            None => self.stateless_tag(m),
        };
        if let Ok(bytes) = m.response(status).to_tag(&tag).build() {
            self.transmit(target, transport, bytes);
            self.stats.replies += 1;
        }
    }

    fn deadline(&self, key: TimerKey) -> Option<Instant> {
        match key {
            TimerKey::Server(id) => self.server_txns.get(&id)?.poll_timeout(),
            TimerKey::Client(id) => self.client_txns.get(&id)?.poll_timeout(),
            TimerKey::Answer(id) => Some(self.dialogs.get(&id)?.answer.as_ref()?.poll_timeout()),
        }
    }

    fn schedule(&mut self, key: TimerKey) {
        match self.deadline(key) {
            Some(at) => {
                if self.armed.get(&key) != Some(&at) {
                    self.armed.insert(key, at);
                    self.timers.push(Reverse((at, key)));
                    self.compact_timers();
                }
            }
            None => self.unschedule(key),
        }
    }

    /// Superseded deadlines stay in the heap until popped; when they outnumber the live
    /// ones (many transactions ended early, each leaving a far deadline behind), rebuild
    /// the heap from the live set so its size stays proportional to live state.
    fn compact_timers(&mut self) {
        const SLACK: usize = 1024;
        if self.timers.len() > 2 * self.armed.len() + SLACK {
            self.timers = self
                .armed
                .iter()
                .map(|(&key, &at)| Reverse((at, key)))
                .collect();
        }
    }

    fn unschedule(&mut self, key: TimerKey) {
        // The heap entry stays and is skipped when popped.
        self.armed.remove(&key);
    }

    fn after_server_change(&mut self, id: ServerTxnId) {
        if self
            .server_txns
            .get(&id)
            .is_some_and(ServerTxn::is_terminated)
        {
            self.remove_server(id);
        } else {
            self.schedule(TimerKey::Server(id));
        }
    }

    fn remove_server(&mut self, id: ServerTxnId) {
        if let Some(t) = self.server_txns.remove(&id) {
            if self.server_keys.get(&t.key) == Some(&id) {
                self.server_keys.remove(&t.key);
            }
        }
        self.unschedule(TimerKey::Server(id));
    }

    fn after_client_change(&mut self, id: ClientTxnId) {
        if self
            .client_txns
            .get(&id)
            .is_some_and(ClientTxn::is_terminated)
        {
            if let Some(t) = self.client_txns.remove(&id) {
                self.client_keys.remove(&(t.branch, t.method));
            }
            self.unschedule(TimerKey::Client(id));
        } else {
            self.schedule(TimerKey::Client(id));
        }
    }
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

    #[test]
    fn tokens_are_unique_and_seeded() {
        let mut a = Endpoint::new(EndpointConfig::new("192.0.2.9:5060", 1));
        let mut b = Endpoint::new(EndpointConfig::new("192.0.2.9:5060", 2));
        let ta: Vec<String> = (0..1000).map(|_| a.new_tag()).collect();
        let tb: Vec<String> = (0..1000).map(|_| b.new_tag()).collect();
        let all: std::collections::HashSet<&String> = ta.iter().chain(&tb).collect();
        assert_eq!(all.len(), 2000);
        let via = a.new_via(Transport::Tcp);
        assert!(via.starts_with("SIP/2.0/TCP 192.0.2.9:5060;branch=z9hG4bK"));
        assert!(Via::parse(&via).unwrap().has_rfc3261_branch());
    }
}
