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
//!
//! # Source layout
//! One `Endpoint`, its `impl` split by role across this module's files:
//! * `mod.rs` (here): configuration, ids, [`Event`], [`Transmit`], the struct, the
//!   input entry points (`handle_datagram`, `handle_message`) and the output queues;
//! * `server`: requests we receive (server transactions, ACK, CANCEL, stateless refusals);
//! * `respond`: the TU's answers ([`Endpoint::respond`], [`Endpoint::respond_stateless`]);
//! * `client`: requests we send, the responses they get, ACK/CANCEL/BYE of the UAC side;
//! * `timers`: the deadline heap, [`Endpoint::handle_timeout`], [`Endpoint::poll_timeout`];
//! * `routing`: §18.2.2 response targets, Via stamping, salvage of unparsable requests.
//!
//! Submodules use only this module's items and `routing`, never each other, except
//! `timers`, which reads both kinds of transaction.

mod client;
mod respond;
mod routing;
mod server;
mod timers;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::dialog::{Dialog, DialogId, DialogKey};
use crate::error::SipError;
use crate::message::OwnedMessage;
use crate::stateless::{splitmix64, StatelessStats, StatelessTagger};
use crate::transaction::{TimerConfig, TransactionKey};
use crate::via::{Transport, Via, MAGIC_COOKIE};

use client::ClientTxn;
use routing::{response_target, salvage_error_response};
use server::ServerTxn;

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

    // ---- output ------------------------------------------------------------

    /// The next message to send, if any. Drain after every call into the endpoint.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event for the TU, if any. Drain after every call into the endpoint.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
