//! The call flow as a deterministic state machine, after crates/sip's `Endpoint`.
//!
//! ```text
//! flow.handle_message(now, inbound);        // a SIP message from a socket reader
//! flow.handle_timeout(now);                 // once now >= poll_timeout()
//! flow.agent_ready(now, call_id);           // the call task reached the agent
//! flow.agent_failed(now, call_id, 503, e);  // ... or could not
//! flow.hang_up(now, call_id, Hangup::…);    // the call task, REST API or media ended it
//! flow.transfer(now, call_id, &target);     // the agent asked for a transfer (REFER)
//! flow.start_drain(now, grace);             // SIGTERM: refuse new calls, let live ones end
//! flow.end_all_calls(now);                  // second signal: BYE every call now
//! while let Some(t) = flow.poll_transmit() { /* send t.bytes to t.remote */ }
//! while let Some(o) = flow.poll_output() { /* StartCall, ToCall, CallEnded, Offence, Event */ }
//! let wake_at = flow.poll_timeout();
//! ```
//!
//! It owns the SIP endpoint and the SIP side of every call; it takes the time as an input
//! ([`Now`]), draws randomness from a seeded generator, and reserves RTP ports through
//! [`MediaPorts`], so tests drive it on simulated time with no sockets and no sleeps. The tokio
//! loop around it ([`super::service`]) only moves bytes, spawns call tasks and forwards events.
//!
//! A new INVITE runs through stages (in `invite.rs`): admit (screening, trunk authentication,
//! per-connection call rate, readiness) → route → prepare media (port pair, SDP answer) →
//! ring (180, start the call task). Every stage refuses with a [`Refusal`], sent statelessly:
//! only a call that reached the ring stage holds a transaction. The rest of a call's life —
//! 200 when the agent is up, ACK, re-INVITE/UPDATE, CANCEL, BYE both ways — is in `dialog.rs`;
//! an agent's transfer (REFER out, NOTIFYs in) in `transfer.rs`.

mod dialog;
mod ending;
mod invite;
mod transfer;
pub use invite::{rtp_bind_ip, CallRates};
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use switchboard_media::{BridgeConfig, NegotiatedMedia, SdpSession, StartParams, TransferStatus};
use switchboard_routing::model::TransferMode;
use switchboard_routing::RoutingTable;
use switchboard_sip::{
    ClientTxnId, DialogId, Endpoint, Event, OwnedMessage, ServerTxnId, StatelessStats,
    TransactionId, Transmit, Transport,
};

use super::guard::Offence;
use super::metrics::SipMetrics;
use super::refusal::{Hangup, Refusal, SERVER};
use super::screen;
use super::transport::{Inbound, Parsed};
use super::trunk::TrunkAuth;
use crate::events::{Event as EventRecord, EventKind, HangupBy};
use crate::live_calls::CallDetails;

/// The time, as the flow needs it: monotonic for timers, wall clock for schedules and nonces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    pub instant: Instant,
    pub wall: SystemTime,
}

impl Now {
    /// The current time (for the I/O loop; tests build their own).
    pub fn current() -> Self {
        Now {
            instant: Instant::now(),
            wall: SystemTime::now(),
        }
    }

    fn unix_secs(self) -> u64 {
        self.wall
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }
}

/// Where RTP port pairs come from. The gateway binds real sockets; tests hand out numbers.
pub trait MediaPorts {
    /// What the call task receives to own the pair (a bound socket and its release guard).
    type Reservation: std::fmt::Debug + Send + 'static;
    /// Reserves a pair; returns the RTP port (even, RTCP next) to put in SDP.
    fn reserve(&mut self) -> Result<(u16, Self::Reservation), String>;
}

/// Where we can be reached, for Contact.
#[derive(Debug, Clone, Copy)]
pub struct LocalAddrs {
    pub udp: SocketAddr,
    pub tcp: SocketAddr,
    /// The SIP over TLS listener, when there is one.
    pub tls: Option<SocketAddr>,
}

impl LocalAddrs {
    fn for_transport(&self, transport: Transport) -> SocketAddr {
        match transport {
            Transport::Udp => self.udp,
            Transport::Tls => self.tls.unwrap_or(self.tcp),
            _ => self.tcp,
        }
    }
}

/// What the flow needs from the configuration.
#[derive(Debug, Clone)]
pub struct FlowConfig {
    pub local: LocalAddrs,
    /// Address put in SDP (`[media] advertised_ip`).
    pub advertised_ip: IpAddr,
    /// `[media] timeout_secs`.
    pub media_timeout: Duration,
    /// `[media] agent_connect_timeout_ms`.
    pub agent_connect_timeout: Duration,
    /// Seed for call ids and nonce salts (random per process; fixed in tests).
    pub seed: u64,
    /// Per-connection call-rate buckets, shared by every engine.
    pub call_rates: CallRates,
    /// `[sip] transfer_timeout_secs`: a transfer without a final answer by then failed.
    pub transfer_timeout: Duration,
}

/// Everything the I/O loop needs to start a call's task.
#[derive(Debug)]
pub struct CallStart<R> {
    pub call_id: String,
    /// For the live-call registry (REST hang-up, admin).
    pub details: CallDetails,
    pub runtime_url: String,
    pub start: StartParams,
    pub connect_timeout: Duration,
    pub bridge: BridgeConfig,
    pub reservation: R,
}

/// What the flow asks of the I/O loop, besides sending SIP.
#[derive(Debug)]
pub enum Output<R> {
    /// Register the call and spawn its task (it reaches the agent).
    StartCall(Box<CallStart<R>>),
    /// Tell a call's task something.
    ToCall { call_id: String, event: CallEvent },
    /// The call is over on the SIP side: forget it (its task also got [`CallEvent::Ended`]).
    CallEnded { call_id: String, call_sid: String },
    /// Count an offence by a source toward a ban.
    Offence { ip: IpAddr, offence: Offence },
    /// Publish a call event (offered, rejected, answered, ended): the one place the flow
    /// reports a call's outcome to the event streams and webhooks.
    Event(Box<EventRecord>),
}

/// How a call ended, for its `call.ended` (or, for an agent failure, `call.rejected`) event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Ending {
    pub(super) kind: EventKind,
    pub(super) hangup_by: HangupBy,
    pub(super) reason: &'static str,
    /// The INVITE's final status (200 once answered).
    pub(super) sip_status: u16,
}

impl Ending {
    /// The caller ended it (BYE, or CANCEL while ringing).
    fn caller(reason: &'static str, sip_status: u16) -> Self {
        Ending {
            kind: EventKind::CallEnded,
            hangup_by: HangupBy::Caller,
            reason,
            sip_status,
        }
    }

    /// We ended it for `hangup`.
    fn ours(hangup: &Hangup, sip_status: u16) -> Self {
        Ending {
            kind: EventKind::CallEnded,
            hangup_by: hangup.hangup_by(),
            reason: hangup.label(),
            sip_status,
        }
    }

    /// The agent could not be reached: the call is refused, not ended.
    fn agent_unreachable(sip_status: u16) -> Self {
        Ending {
            kind: EventKind::CallRejected,
            hangup_by: HangupBy::Gateway,
            reason: "agent_unreachable",
            sip_status,
        }
    }
}

/// What the flow tells a call's task.
#[derive(Debug, Clone)]
pub enum CallEvent {
    /// The ACK for our 200 arrived: start media with what was negotiated.
    Confirmed(NegotiatedMedia),
    /// A re-INVITE/UPDATE changed the media (hold, resume, new address).
    MediaUpdate(NegotiatedMedia),
    /// The call is over on the SIP side (CANCEL, caller BYE, ACK timeout, shutdown).
    Ended,
    /// The agent's transfer progressed: tell the agent (`transfer` event on its stream).
    /// A `completed` one is followed by [`CallEvent::Ended`].
    Transfer {
        status: TransferStatus,
        sip_status: u16,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CallState {
    /// 180 sent, the agent is being reached.
    Ringing,
    /// 200 sent, waiting for the ACK.
    Answered,
    /// ACK received: media flows.
    Confirmed,
}

/// The SIP side of one call (we are the UAS).
#[derive(Debug)]
struct Call {
    call_sid: String,
    /// The call's facts (ids, numbers, deployment, app, start and answer times): every event
    /// of this call is a copy with its kind and outcome filled in.
    record: Box<EventRecord>,
    invite_txn: ServerTxnId,
    transport: Transport,
    /// The INVITE's Request-URI was `sips:`: our Contact is `sips:` too.
    secure: bool,
    state: CallState,
    /// Known once the ACK (or the ACK timeout) names it.
    dialog: Option<DialogId>,
    sdp: SdpSession,
    /// Our SDP for the 200 (answer, or offer for a late-offer INVITE).
    local_sdp: String,
    /// The offer was ours (late offer, or a re-INVITE without SDP): the ACK brings the answer.
    awaiting_answer: bool,
    negotiated: Option<NegotiatedMedia>,
    /// We want to hang up but the 200 is not acknowledged yet (RFC 3261 §15: BYE waits).
    bye_pending: Option<Hangup>,
    /// The trunk's `transfer` setting.
    transfer_mode: TransferMode,
    /// `host[:port]` of the caller's side (the INVITE's From URI, else its source address):
    /// where a transfer to a number is addressed.
    carrier_host: String,
    /// For the summary line when it ends.
    summary: ending::CallRecord,
}

/// The call flow. See the module docs for the calling pattern.
#[derive(Debug)]
pub struct CallFlow<P: MediaPorts> {
    endpoint: Endpoint,
    routing: Arc<RoutingTable>,
    ready: Arc<AtomicBool>,
    config: FlowConfig,
    trunk: TrunkAuth,
    ports: P,
    metrics: SipMetrics,
    rng: StdRng,
    /// Calls by SIP Call-ID.
    calls: HashMap<String, Call>,
    by_invite: HashMap<ServerTxnId, String>,
    call_rates: CallRates,
    outputs: VecDeque<Output<P::Reservation>>,
    /// The endpoint's stateless counters as last exported to metrics.
    exported: StatelessStats,
    /// This flow's share of the `sip_transactions` gauge as last exported: every engine adds
    /// its own change, so the gauge is the sum over engines.
    exported_transactions: i64,
    /// Set by [`CallFlow::start_drain`] (SIGTERM).
    drain: Option<ending::Drain>,
    /// Transfers waiting for their outcome, by SIP Call-ID (at most one per call).
    transfers: HashMap<String, transfer::Transfer>,
    /// Open REFER transactions -> the Call-ID of their call.
    refers: HashMap<ClientTxnId, String>,
}

impl<P: MediaPorts> CallFlow<P> {
    /// A flow over `endpoint` (configured by the caller: the gateway holds 100 Trying back so
    /// refusals go out alone), routing with `routing` once `ready` is set.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        endpoint: Endpoint,
        routing: Arc<RoutingTable>,
        ready: Arc<AtomicBool>,
        config: FlowConfig,
        trunk: TrunkAuth,
        ports: P,
        metrics: SipMetrics,
    ) -> Self {
        let rng = StdRng::seed_from_u64(config.seed);
        let call_rates = config.call_rates.clone();
        CallFlow {
            endpoint,
            routing,
            ready,
            config,
            trunk,
            ports,
            metrics,
            rng,
            calls: HashMap::new(),
            by_invite: HashMap::new(),
            call_rates,
            outputs: VecDeque::new(),
            exported: StatelessStats::default(),
            exported_transactions: 0,
            drain: None,
            transfers: HashMap::new(),
            refers: HashMap::new(),
        }
    }

    // ---- inputs ------------------------------------------------------------------------

    /// A message from a socket reader (already screened, parsed and rport-stamped).
    pub fn handle_message(&mut self, now: Now, inbound: Inbound) {
        match inbound.message {
            Parsed::Message(m) => {
                self.endpoint
                    .handle_message(now.instant, inbound.source, inbound.transport, *m)
            }
            Parsed::Unparsed(bytes) => {
                self.endpoint
                    .handle_datagram(now.instant, inbound.source, inbound.transport, bytes)
            }
        }
        self.drive(now);
    }

    /// Call when `now >= poll_timeout()`.
    pub fn handle_timeout(&mut self, now: Now) {
        self.endpoint.handle_timeout(now.instant);
        self.check_drain_deadline(now);
        self.check_transfer_deadlines(now);
        self.drive(now);
    }

    /// The call's task reached the agent: answer with 200 OK and our SDP.
    pub fn agent_ready(&mut self, now: Now, call_id: &str) {
        if let Some(call) = self.calls.get(call_id) {
            let took = now.instant.saturating_duration_since(call.summary.rang_at);
            self.metrics.call.setup("agent_connect", took);
        }
        self.answer(now, call_id);
        self.drive(now);
    }

    /// The call's task could not reach the agent: refuse the still-ringing INVITE.
    pub fn agent_failed(&mut self, now: Now, call_id: &str, status: u16, why: &str) {
        tracing::warn!(%call_id, status, why, "agent unreachable");
        self.refuse_ringing(now, call_id, &Refusal::agent_unreachable(status, why));
        self.finish(now, call_id, Ending::agent_unreachable(status));
        self.drive(now);
    }

    /// Ends a call from our side: a final response while it rings, BYE once answered
    /// (deferred until the ACK if it has not come yet, RFC 3261 §15).
    pub fn hang_up(&mut self, now: Now, call_id: &str, hangup: Hangup) {
        self.end_call(now, call_id, hangup);
        self.drive(now);
    }

    // ---- outputs -----------------------------------------------------------------------

    /// The next SIP message to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.endpoint.poll_transmit()
    }

    /// The next thing for the I/O loop to do.
    pub fn poll_output(&mut self) -> Option<Output<P::Reservation>> {
        self.outputs.pop_front()
    }

    /// When [`CallFlow::handle_timeout`] must be called next.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        [
            self.endpoint.poll_timeout(),
            self.drain_deadline(),
            self.transfer_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Queues an event for the I/O loop.
    fn emit(&mut self, event: EventRecord) {
        self.outputs.push_back(Output::Event(Box::new(event)));
    }

    /// Calls ringing or answered.
    pub fn call_count(&self) -> usize {
        self.calls.len()
    }

    /// Live SIP transactions (accepted calls and in-dialog requests only).
    pub fn transaction_count(&self) -> usize {
        self.endpoint.transaction_count()
    }

    // ---- internals ---------------------------------------------------------------------

    /// Handles the endpoint's events until none are left, then exports counters.
    fn drive(&mut self, now: Now) {
        while let Some(event) = self.endpoint.poll_event() {
            self.on_event(now, event);
        }
        self.export_stats();
    }

    fn on_event(&mut self, now: Now, event: Event) {
        match event {
            Event::NewInvite {
                txn,
                request,
                remote,
                transport,
            } => {
                self.metrics.request("INVITE");
                if self.screened(now, txn, &request, true) {
                    self.on_invite(now, txn, &request, remote, transport);
                }
            }
            Event::ReInvite {
                txn,
                dialog,
                request,
            } => {
                self.metrics.request("INVITE");
                if self.screened(now, txn, &request, false) {
                    self.renegotiate(now, txn, &request, dialog, "INVITE");
                }
            }
            Event::Ack { dialog, request } => {
                self.metrics.request("ACK");
                self.on_ack(now, dialog, &request);
            }
            Event::Cancel { invite, .. } => {
                self.metrics.request("CANCEL");
                if let Some(call_id) = self.by_invite.get(&invite).cloned() {
                    let cancelled = Refusal::cancelled();
                    self.refuse_ringing(now, &call_id, &cancelled);
                    self.finish(
                        now,
                        &call_id,
                        Ending::caller("caller_cancel", cancelled.status),
                    );
                }
            }
            Event::Bye { txn, request, .. } => {
                self.metrics.request("BYE");
                self.reply(now, txn, &Refusal::status(200));
                if let Ok(call_id) = request.message().call_id() {
                    let call_id = call_id.to_owned();
                    self.finish(now, &call_id, Ending::caller("caller_bye", 200));
                }
            }
            Event::Info { txn, .. } => {
                self.metrics.request("INFO");
                self.reply(now, txn, &Refusal::status(200));
            }
            Event::Options {
                txn,
                dialog,
                request,
                remote,
                ..
            } => {
                self.metrics.request("OPTIONS");
                let stateless = dialog.is_none();
                if !self.screened(now, txn, &request, stateless) {
                    return;
                }
                // Keep-alives from the carriers we serve get 200 (statelessly out of a dialog,
                // so a carrier pinging every second costs no transaction).
                let trusted = dialog.is_some() || self.routing.load().admits_source(remote.ip());
                let answer = if trusted && dialog.is_none() && self.is_draining() {
                    // A dispatcher probing with OPTIONS marks us down and sends calls elsewhere.
                    Refusal::draining()
                } else if trusted {
                    capabilities(Refusal::status(200))
                } else {
                    self.metrics.auth.with_label_values(&["forbidden"]).inc();
                    Refusal::untrusted_source(remote.ip())
                };
                self.answer_with(now, txn, stateless, &answer);
            }
            Event::Request {
                txn,
                dialog,
                request,
                ..
            } => {
                let method = request.message().method().unwrap_or("").to_owned();
                self.metrics.request(&method);
                if !self.screened(now, txn, &request, dialog.is_none()) {
                    return;
                }
                match (method.as_str(), dialog) {
                    ("UPDATE", Some(dialog)) => {
                        self.renegotiate(now, txn, &request, dialog, "UPDATE");
                    }
                    ("NOTIFY", Some(_)) => self.on_notify(now, txn, &request),
                    (_, None) => self.refuse(txn, &Refusal::no_such_dialog()),
                    _ => self.reply(now, txn, &Refusal::no_such_dialog()),
                }
            }
            Event::AckTimedOut { dialog } => {
                let call_id = self.endpoint.dialog(dialog).map(|d| d.call_id().to_owned());
                match call_id {
                    Some(call_id) => {
                        if let Some(call) = self.calls.get_mut(&call_id) {
                            call.dialog = Some(dialog);
                        }
                        self.send_bye(now, &call_id, &Hangup::NoAck);
                        self.finish(now, &call_id, Ending::ours(&Hangup::NoAck, 200));
                    }
                    None => self.endpoint.remove_dialog(dialog),
                }
            }
            Event::Response { txn, response, .. } => self.on_client_response(now, txn, &response),
            Event::TransactionTimedOut {
                txn: TransactionId::Client(txn),
            } => self.on_client_timeout(now, txn),
            Event::TransactionTimedOut { .. } => {}
            other => tracing::debug!(event = ?other, "unhandled SIP event"),
        }
    }

    /// Applies request screening (RFC 3261 §8.2); answers (statelessly when `stateless`,
    /// i.e. outside a dialog) and returns false when the request is refused.
    fn screened(
        &mut self,
        now: Now,
        txn: ServerTxnId,
        request: &OwnedMessage,
        stateless: bool,
    ) -> bool {
        match screen::screen(&request.message()) {
            Ok(()) => true,
            Err(refusal) => {
                self.answer_with(now, txn, stateless, &refusal);
                false
            }
        }
    }

    /// Sends `refusal` (or any answer described by one) in `txn`'s transaction.
    fn reply(&mut self, now: Now, txn: ServerTxnId, answer: &Refusal) {
        let Some(b) = self.endpoint.response(txn, answer.status) else {
            return;
        };
        let b = answer.apply(b.header("Server", SERVER));
        match self.endpoint.respond(now.instant, txn, b) {
            Ok(()) => self.metrics.response(answer.status),
            Err(e) => tracing::debug!(error = %e, status = answer.status, "response not sent"),
        }
    }

    /// Sends `refusal` without keeping the transaction (see
    /// [`Endpoint::respond_stateless`]): for every refusal before a call is taken on.
    fn refuse(&mut self, txn: ServerTxnId, refusal: &Refusal) {
        let Some(b) = self.endpoint.response(txn, refusal.status) else {
            return;
        };
        let b = refusal.apply(b.header("Server", SERVER));
        match self.endpoint.respond_stateless(txn, b) {
            Ok(()) => self.metrics.response(refusal.status),
            Err(e) => tracing::debug!(error = %e, status = refusal.status, "refusal not sent"),
        }
    }

    fn answer_with(&mut self, now: Now, txn: ServerTxnId, stateless: bool, answer: &Refusal) {
        if stateless {
            self.refuse(txn, answer);
        } else {
            self.reply(now, txn, answer);
        }
    }

    /// Our Contact for a call that came over `transport`; `sips:` when the caller addressed
    /// us with a `sips:` Request-URI (RFC 5630 §3.1.3: the dialog must stay secure).
    fn contact(&self, transport: Transport, secure: bool) -> String {
        let addr = self.config.local.for_transport(transport);
        let proto = match transport {
            Transport::Udp => "udp",
            Transport::Tls => "tls",
            _ => "tcp",
        };
        let scheme = if secure { "sips" } else { "sip" };
        match addr.ip() {
            IpAddr::V6(ip) => format!(
                "<{scheme}:switchboard@[{ip}]:{};transport={proto}>",
                addr.port()
            ),
            IpAddr::V4(ip) => format!(
                "<{scheme}:switchboard@{ip}:{};transport={proto}>",
                addr.port()
            ),
        }
    }

    /// A fresh `<prefix><32 hex digits>` id (Twilio's sid shape) from the flow's generator.
    fn new_sid(&mut self, prefix: &str) -> String {
        let bits: u128 = self.rng.random();
        format!("{prefix}{bits:032x}")
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Moves the endpoint's stateless counters and transaction count into the metrics.
    fn export_stats(&mut self) {
        let now = self.endpoint.stats();
        let was = std::mem::replace(&mut self.exported, now);
        for (what, delta) in [
            ("reply", now.replies - was.replies),
            ("ack_absorbed", now.absorbed_acks - was.absorbed_acks),
            ("ack_stray", now.stray_acks - was.stray_acks),
        ] {
            if delta > 0 {
                self.metrics
                    .stateless
                    .with_label_values(&[what])
                    .inc_by(delta);
            }
        }
        let transactions = i64::try_from(self.endpoint.transaction_count()).unwrap_or(i64::MAX);
        self.metrics
            .transactions
            .add(transactions - self.exported_transactions);
        self.exported_transactions = transactions;
    }
}

/// The headers of an OPTIONS answer: what we do.
fn capabilities(answer: Refusal) -> Refusal {
    answer
        .with("Allow", screen::ALLOW)
        .with("Accept", screen::ACCEPT)
        .with("Accept-Encoding", "identity")
        .with("Supported", screen::SUPPORTED.join(", "))
}
