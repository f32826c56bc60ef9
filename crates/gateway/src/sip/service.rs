//! The endpoint task: one tokio task owning the sans-IO [`Endpoint`] of crates/sip and the
//! SIP side of every call, so nothing here needs a lock. It loops over three inputs —
//! messages from the socket readers, commands from call tasks, and the endpoint's timers
//! (`sleep_until(poll_timeout)`) — and after each one drains the endpoint: transmits to the
//! sockets, events to the call logic below.
//!
//! Call flow for a new INVITE: screening (§8.2: 405/501/483/415/406) → trunk authentication
//! (allowlist, digest) → routing (404/480/503 with Reason and Warning) → RTP port pair and
//! SDP answer (488 when no codec matches; our offer when the INVITE has none) → 180 Ringing
//! and a call task that reaches the agent → 200 OK when it did (503 when it did not) → ACK →
//! media. BYE either way (ours waits for the ACK, RFC 3261 §15), CANCEL before the answer
//! (487), re-INVITE/UPDATE (hold, refresh), OPTIONS/INFO inside and outside dialogs.
//! Retransmissions, 100 Trying, CANCEL matching, 481/500 for bad dialogs and the 2xx
//! repeats until the ACK are the endpoint's.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use switchboard_media::{
    BridgeConfig, CallInfo, CustomParameters, MediaError, NegotiatedMedia, SdpSession, StartParams,
    StreamIds,
};
use switchboard_routing::{Reject, RejectReason, Route, RouteDecision};
use switchboard_sip::{
    DialogId, Endpoint, Event, HeaderName, MessageBuilder, OwnedMessage, ServerTxnId,
    StatelessStats, Transmit, Transport,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::call::{self, CallEvent, CallSetup, CoreCommand, HangupReason, CALL_EVENT_QUEUE};
use super::calls::{account_sid_for, CallDetails, CallHandle};
use super::guard::{Guard, Offence};
use super::identity;
use super::metrics::SipMetrics;
use super::ports::RtpPortAllocator;
use super::screen::{self, ACCEPT, ALLOW};
use super::transport::{Inbound, Outbound, Parsed};
use super::trunk::{TrunkAuth, TrunkVerdict};
use crate::state::AppState;

/// Commands from call tasks waiting for the endpoint task; a few per call.
pub const CORE_COMMAND_QUEUE: usize = 4096;
/// `Retry-After` when we are out of RTP ports or not ready: long enough for calls to end.
const OVERLOAD_RETRY_AFTER_SECS: u32 = 5;
/// `Retry-After` for a runtime in `error` (routing gives none): a minute lets an operator act.
const RUNTIME_ERROR_RETRY_AFTER_SECS: u32 = 60;
/// `Retry-After` above a connection's `max_calls_per_second`: its bucket refills within a second.
const CALL_RATE_RETRY_AFTER_SECS: u32 = 1;
/// How long shutdown gives BYEs to leave before the task exits.
const SHUTDOWN_FLUSH: Duration = Duration::from_millis(200);
/// Product token in Server and User-Agent headers.
const SERVER: &str = concat!("switchboard/", env!("CARGO_PKG_VERSION"));

/// Where we can be reached, for Contact.
#[derive(Debug, Clone, Copy)]
pub struct LocalAddrs {
    pub udp: SocketAddr,
    pub tcp: SocketAddr,
}

impl LocalAddrs {
    fn for_transport(&self, transport: Transport) -> SocketAddr {
        if transport.is_stream() {
            self.tcp
        } else {
            self.udp
        }
    }
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
    invite_txn: ServerTxnId,
    transport: Transport,
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
    bye_pending: Option<String>,
    to_task: mpsc::Sender<CallEvent>,
}

/// A connection's `max_calls_per_second` token bucket.
#[derive(Debug, Clone, Copy)]
struct CallRate {
    tokens: f64,
    refilled_at: Instant,
}

/// The endpoint task's state.
#[derive(Debug)]
pub struct Core {
    state: AppState,
    metrics: SipMetrics,
    outbound: Outbound,
    endpoint: Endpoint,
    guard: Guard,
    trunk: TrunkAuth,
    ports: RtpPortAllocator,
    local: LocalAddrs,
    /// Per-connection buckets for `max_calls_per_second`, by connection id (bounded by the
    /// number of connections).
    call_rates: HashMap<String, CallRate>,
    /// The endpoint's stateless counters as last exported to metrics.
    exported: StatelessStats,
    /// Calls by SIP Call-ID.
    calls: HashMap<String, Call>,
    by_invite: HashMap<ServerTxnId, String>,
    commands: mpsc::Sender<CoreCommand>,
    tasks: TaskTracker,
}

impl Core {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        state: AppState,
        metrics: SipMetrics,
        outbound: Outbound,
        endpoint: Endpoint,
        guard: Guard,
        trunk: TrunkAuth,
        ports: RtpPortAllocator,
        local: LocalAddrs,
        commands: mpsc::Sender<CoreCommand>,
        tasks: TaskTracker,
    ) -> Self {
        Core {
            state,
            metrics,
            outbound,
            endpoint,
            guard,
            trunk,
            ports,
            local,
            call_rates: HashMap::new(),
            exported: StatelessStats::default(),
            calls: HashMap::new(),
            by_invite: HashMap::new(),
            commands,
            tasks,
        }
    }

    /// Runs until `shutdown`; then ends every call (BYE / 503) and returns.
    pub async fn run(
        mut self,
        mut inbound: mpsc::Receiver<Inbound>,
        mut commands: mpsc::Receiver<CoreCommand>,
        shutdown: CancellationToken,
    ) {
        loop {
            let deadline = self.endpoint.poll_timeout();
            let sleep = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => break,
                Some(message) = inbound.recv() => self.on_inbound(message),
                Some(command) = commands.recv() => self.on_command(command),
                () = sleep => self.endpoint.handle_timeout(Instant::now()),
            }
            self.pump();
        }
        let ids: Vec<String> = self.calls.keys().cloned().collect();
        for call_id in ids {
            self.hang_up(
                &call_id,
                &HangupReason::Requested("gateway shutdown".to_owned()),
            );
        }
        self.pump();
        tokio::time::sleep(SHUTDOWN_FLUSH).await;
    }

    fn on_inbound(&mut self, inbound: Inbound) {
        let now = Instant::now();
        match inbound.message {
            Parsed::Message(m) => {
                self.endpoint
                    .handle_message(now, inbound.source, inbound.transport, *m)
            }
            Parsed::Unparsed(bytes) => {
                self.endpoint
                    .handle_datagram(now, inbound.source, inbound.transport, bytes)
            }
        }
    }

    /// Sends what the endpoint wants sent and handles its events, until both are drained
    /// (handling an event may produce more of either).
    fn pump(&mut self) {
        loop {
            let mut progressed = false;
            while let Some(Transmit {
                remote,
                transport,
                bytes,
            }) = self.endpoint.poll_transmit()
            {
                progressed = true;
                self.outbound.send(transport, remote, bytes);
            }
            while let Some(event) = self.endpoint.poll_event() {
                progressed = true;
                self.on_event(event);
            }
            if !progressed {
                break;
            }
        }
        self.export_stats();
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
        self.metrics
            .transactions
            .set(i64::try_from(self.endpoint.transaction_count()).unwrap_or(i64::MAX));
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::NewInvite {
                txn,
                request,
                remote,
                transport,
            } => {
                self.metrics.request("INVITE");
                if self.screened(txn, &request, true) {
                    self.on_invite(txn, request, remote, transport);
                }
            }
            Event::ReInvite {
                txn,
                dialog,
                request,
            } => {
                self.metrics.request("INVITE");
                if self.screened(txn, &request, false) {
                    self.renegotiate(txn, &request, dialog, "INVITE");
                }
            }
            Event::Ack { dialog, request } => {
                self.metrics.request("ACK");
                self.on_ack(dialog, &request);
            }
            Event::Cancel { invite, .. } => {
                self.metrics.request("CANCEL");
                if let Some(call_id) = self.by_invite.get(&invite).cloned() {
                    self.reply_to_invite(
                        &call_id,
                        487,
                        Some("SIP;cause=487;text=\"cancelled by the caller\""),
                        None,
                    );
                    self.finish(&call_id);
                }
            }
            Event::Bye { txn, request, .. } => {
                self.metrics.request("BYE");
                self.reply(txn, 200, None, None, &[]);
                if let Ok(call_id) = request.message().call_id() {
                    let call_id = call_id.to_owned();
                    self.finish(&call_id);
                }
            }
            Event::Info { txn, .. } => {
                self.metrics.request("INFO");
                self.reply(txn, 200, None, None, &[]);
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
                if !self.screened(txn, &request, stateless) {
                    return;
                }
                // Keep-alives from the carriers we serve get 200 (statelessly out of a dialog,
                // so a carrier pinging every second costs no transaction); anyone else is
                // refused like their INVITEs would be.
                if dialog.is_some() || self.state.routing.load().admits_source(remote.ip()) {
                    self.answer_with(txn, stateless, 200, None, None, &capabilities());
                } else {
                    self.metrics.auth.with_label_values(&["forbidden"]).inc();
                    let why = format!("source {} is not in any trunk's allowlist", remote.ip());
                    self.refuse(
                        txn,
                        403,
                        Some("Q.850;cause=21;text=\"source not allowed\""),
                        Some(&why),
                        &[],
                    );
                }
            }
            Event::Request {
                txn,
                dialog,
                request,
                ..
            } => {
                let method = request.message().method().unwrap_or("").to_owned();
                self.metrics.request(&method);
                if !self.screened(txn, &request, dialog.is_none()) {
                    return;
                }
                match (method.as_str(), dialog) {
                    ("UPDATE", Some(dialog)) => self.renegotiate(txn, &request, dialog, "UPDATE"),
                    (_, None) => self.refuse(txn, 481, None, Some("no such dialog"), &[]),
                    _ => self.reply(txn, 481, None, Some("no such dialog"), &[]),
                }
            }
            Event::AckTimedOut { dialog } => {
                let call_id = self.endpoint.dialog(dialog).map(|d| d.call_id().to_owned());
                if let Some(call_id) = call_id {
                    if let Some(call) = self.calls.get_mut(&call_id) {
                        call.dialog = Some(dialog);
                    }
                    self.send_bye(&call_id, "SIP;cause=408;text=\"no ACK for the 200 OK\"");
                    self.finish(&call_id);
                } else {
                    self.endpoint.remove_dialog(dialog);
                }
            }
            Event::Response { .. } | Event::TransactionTimedOut { .. } => {
                // Responses to our BYEs: the call is already gone; nothing to do.
            }
            other => tracing::debug!(event = ?other, "unhandled SIP event"),
        }
    }

    /// Applies request screening; answers (statelessly when `stateless`, i.e. outside a
    /// dialog) and returns false when the request is refused.
    fn screened(&mut self, txn: ServerTxnId, request: &OwnedMessage, stateless: bool) -> bool {
        match screen::screen(&request.message()) {
            Ok(()) => true,
            Err(refusal) => {
                let reason = format!(
                    "SIP;cause={};text=\"{}\"",
                    refusal.status,
                    sanitize(&refusal.why)
                );
                let headers: Vec<(&str, String)> = refusal
                    .headers
                    .iter()
                    .map(|(n, v)| (*n, v.clone()))
                    .collect();
                self.answer_with(
                    txn,
                    stateless,
                    refusal.status,
                    Some(&reason),
                    Some(&refusal.why),
                    &headers,
                );
                false
            }
        }
    }

    /// The endpoint's response to `txn` (our To tag) with Server, `headers`, Reason and
    /// Warning; `None` when the transaction is gone.
    fn response(
        &self,
        txn: ServerTxnId,
        status: u16,
        reason: Option<&str>,
        warning: Option<&str>,
        headers: &[(&str, String)],
    ) -> Option<MessageBuilder> {
        let mut b = self
            .endpoint
            .response(txn, status)?
            .header("Server", SERVER);
        for (name, value) in headers {
            b = b.header(name, value);
        }
        if let Some(reason) = reason {
            b = b.header("Reason", reason);
        }
        if let Some(warning) = warning {
            b = b.header(
                "Warning",
                format!("399 switchboard \"{}\"", sanitize(warning)),
            );
        }
        Some(b)
    }

    /// Sends a built response and counts it.
    fn send(&mut self, txn: ServerTxnId, status: u16, response: MessageBuilder) {
        match self.endpoint.respond(Instant::now(), txn, response) {
            Ok(()) => self.metrics.response(status),
            Err(e) => tracing::debug!(error = %e, status, "response not sent"),
        }
    }

    /// Refuses `txn`'s request statelessly (no transaction kept; see
    /// [`Endpoint::respond_stateless`]): for every refusal before a call is taken on.
    fn refuse(
        &mut self,
        txn: ServerTxnId,
        status: u16,
        reason: Option<&str>,
        warning: Option<&str>,
        headers: &[(&str, String)],
    ) {
        let Some(b) = self.response(txn, status, reason, warning, headers) else {
            return;
        };
        match self.endpoint.respond_stateless(txn, b) {
            Ok(()) => self.metrics.response(status),
            Err(e) => tracing::debug!(error = %e, status, "stateless response not sent"),
        }
    }

    /// [`Core::refuse`] when `stateless`, else [`Core::reply`].
    fn answer_with(
        &mut self,
        txn: ServerTxnId,
        stateless: bool,
        status: u16,
        reason: Option<&str>,
        warning: Option<&str>,
        headers: &[(&str, String)],
    ) {
        if stateless {
            self.refuse(txn, status, reason, warning, headers);
        } else {
            self.reply(txn, status, reason, warning, headers);
        }
    }

    /// Answers `txn` with `status` plus the given headers.
    fn reply(
        &mut self,
        txn: ServerTxnId,
        status: u16,
        reason: Option<&str>,
        warning: Option<&str>,
        headers: &[(&str, String)],
    ) {
        if let Some(b) = self.response(txn, status, reason, warning, headers) {
            self.send(txn, status, b);
        }
    }

    fn on_invite(
        &mut self,
        txn: ServerTxnId,
        request: OwnedMessage,
        source: SocketAddr,
        transport: Transport,
    ) {
        let msg = request.message();
        self.metrics.invites.inc();
        let Ok(call_id) = msg.call_id().map(str::to_owned) else {
            return;
        };
        if self.calls.contains_key(&call_id) {
            // Same Call-ID, new transaction, no To tag: a merged or looped request (§8.2.2.2).
            self.refuse(
                txn,
                482,
                None,
                Some("a call with this Call-ID is in progress"),
                &[],
            );
            return;
        }
        let snapshot = self.state.routing.snapshot();
        let is_number = |s: &str| snapshot.normalize(s).is_ok();
        let called = identity::called_party(&msg, is_number)
            .unwrap_or("")
            .to_owned();
        let caller = identity::calling_party(&msg, is_number)
            .unwrap_or("")
            .to_owned();

        // Trunk authentication.
        let connection = snapshot.trunk_for_number(&called);
        let admitted = snapshot.admits_source(source.ip());
        let request_uri = msg
            .request_uri_raw()
            .and_then(|r| std::str::from_utf8(r).ok())
            .unwrap_or("");
        let authorization = msg
            .header(HeaderName::Authorization)
            .and_then(|h| h.value_str());
        let verdict = self.trunk.check(
            unix_secs(),
            rand::random(),
            source.ip(),
            connection,
            admitted,
            "INVITE",
            request_uri,
            authorization,
        );
        let wrong_credentials = matches!(verdict, TrunkVerdict::WrongCredentials(_));
        match verdict {
            TrunkVerdict::Admit => {}
            TrunkVerdict::Forbidden(why) | TrunkVerdict::WrongCredentials(why) => {
                let label = if wrong_credentials {
                    "failed"
                } else {
                    "forbidden"
                };
                self.metrics.auth.with_label_values(&[label]).inc();
                if wrong_credentials {
                    self.guard
                        .offence(Instant::now(), source.ip(), Offence::DigestFailure);
                }
                tracing::debug!(%source, %called, why, "INVITE refused by trunk authentication");
                self.refuse(
                    txn,
                    403,
                    Some("Q.850;cause=21;text=\"trunk authentication failed\""),
                    Some(&why),
                    &[],
                );
                return;
            }
            TrunkVerdict::Challenge {
                www_authenticate,
                stale,
            } => {
                self.metrics
                    .auth
                    .with_label_values(&[if stale { "stale" } else { "challenged" }])
                    .inc();
                self.refuse(
                    txn,
                    401,
                    None,
                    None,
                    &[("WWW-Authenticate", www_authenticate)],
                );
                return;
            }
        }
        if let Some(limit) = connection.and_then(|c| c.max_calls_per_second) {
            let id = connection.map_or("", |c| c.connection_id.as_str());
            if !self.take_call_token(id, limit) {
                self.metrics
                    .rate_limited
                    .with_label_values(&["connection_503"])
                    .inc();
                let retry = [("Retry-After", CALL_RATE_RETRY_AFTER_SECS.to_string())];
                self.refuse(
                    txn,
                    503,
                    Some("Q.850;cause=42;text=\"connection call rate exceeded\""),
                    Some("above the connection's max_calls_per_second"),
                    &retry,
                );
                return;
            }
        }
        if !self.state.is_ready() {
            let retry = [("Retry-After", OVERLOAD_RETRY_AFTER_SECS.to_string())];
            self.refuse(
                txn,
                503,
                Some("Q.850;cause=41;text=\"gateway starting\""),
                Some("routing table not loaded yet"),
                &retry,
            );
            return;
        }

        let route = match snapshot.route(chrono::Utc::now(), &called, &caller, &call_id) {
            RouteDecision::Accept(route) => route,
            RouteDecision::Reject(reject) => {
                self.reject_route(txn, &reject);
                return;
            }
        };

        // Media: a port pair, then the SDP answer (or our offer).
        let media = &self.state.config.media;
        let advertised = media.advertised_ip;
        let bind_ip = if advertised.is_ipv4() {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        } else {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        };
        let (ports, rtp_socket) = match self.ports.bind(bind_ip) {
            Ok(pair) => pair,
            Err(e) => {
                self.metrics
                    .queue_full
                    .with_label_values(&["rtp_ports"])
                    .inc();
                let retry = [("Retry-After", OVERLOAD_RETRY_AFTER_SECS.to_string())];
                self.refuse(
                    txn,
                    503,
                    Some("Q.850;cause=34;text=\"no RTP ports free\""),
                    Some(&e.to_string()),
                    &retry,
                );
                return;
            }
        };
        let mut sdp = SdpSession::new(advertised, ports.rtp());
        let offer = screen::sdp_body(&msg).map(|b| String::from_utf8_lossy(b).into_owned());
        let (local_sdp, negotiated, awaiting_answer) = match offer {
            Some(offer) => match sdp.answer(&offer) {
                Ok((answer, negotiated)) => (answer.into_string(), Some(negotiated), false),
                Err(e) => {
                    self.refuse_media(txn, &e, true);
                    return;
                }
            },
            None => (sdp.offer().into_string(), None, true),
        };

        // Register the call, ring, and start the task that reaches the agent.
        let ids = StreamIds::generate(account_sid_for(route.scope()));
        let call_sid = ids.call_sid.clone();
        let start = StartParams {
            ids: ids.clone(),
            custom_parameters: custom_parameters(&route),
        };
        let details = CallDetails {
            call_sid: call_sid.clone(),
            account_sid: ids.account_sid.clone(),
            sip_call_id: call_id.clone(),
            to: route.called().to_string(),
            from: route.caller().map(|c| c.to_string()).unwrap_or_default(),
            deployment_id: route.deployment_id().to_owned(),
            scope: route.scope().clone(),
        };
        let (handle, admin_rx) = CallHandle::new(details);
        let (to_task, events_rx) = mpsc::channel(CALL_EVENT_QUEUE);
        let setup = CallSetup {
            call_id: call_id.clone(),
            runtime_url: route.runtime_url().to_owned(),
            start,
            connect_timeout: Duration::from_millis(media.agent_connect_timeout_ms),
            bridge: BridgeConfig {
                media_timeout: Duration::from_secs(media.timeout_secs),
                // Strict RTP: besides the SDP address, the INVITE's source IP (callers behind
                // NAT) and the trunk's media networks.
                allowed_sources: switchboard_media::AllowedSources {
                    signalling_ip: Some(source.ip()),
                    media_networks: connection
                        .map(|c| c.media_addresses.clone())
                        .unwrap_or_default(),
                },
                ..BridgeConfig::default()
            },
            rtp_dropped: self.metrics.rtp_dropped.clone(),
            ports,
            rtp_socket,
        };
        tracing::debug!(%call_sid, %call_id, explanation = %route.explanation(), "routing call");
        self.calls.insert(
            call_id.clone(),
            Call {
                call_sid: call_sid.clone(),
                invite_txn: txn,
                transport,
                state: CallState::Ringing,
                dialog: None,
                sdp,
                local_sdp,
                awaiting_answer,
                negotiated,
                bye_pending: None,
                to_task,
            },
        );
        self.by_invite.insert(txn, call_id);
        self.state.calls.insert(call_sid, handle);
        self.metrics.calls_active.inc();
        let contact = [("Contact", self.contact(transport))];
        self.reply(txn, 180, None, None, &contact);
        self.tasks
            .spawn(call::run(setup, events_rx, admin_rx, self.commands.clone()));
    }

    fn reject_route(&mut self, txn: ServerTxnId, reject: &Reject) {
        let reason = reject.reason();
        self.metrics
            .route_rejects
            .with_label_values(&[reason.as_str()])
            .inc();
        let status = reject.sip_status();
        let why = reject.explanation();
        // Counted above; a log line per refused call would cost more than the refusal.
        tracing::debug!(
            status,
            reason = reason.as_str(),
            why,
            "INVITE rejected by routing"
        );
        // Q.850 causes per RFC 3398 §7.2.4.1 / §8.2.6.1 (ISUP ↔ SIP).
        let cause = match reason {
            RejectReason::InvalidCalledNumber => 28, // invalid number format
            RejectReason::NoRoute => 1,              // unallocated number
            RejectReason::InboundDisabled => 21,     // call rejected
            RejectReason::Paused | RejectReason::OutsideSchedule => 20, // subscriber absent
            _ => 41,                                 // temporary failure
        };
        let reason_header = format!("Q.850;cause={cause};text=\"{}\"", reason.as_str());
        let retry = match (reject.retry_after(), status) {
            (Some(secs), _) => Some(secs),
            (None, 503) => Some(RUNTIME_ERROR_RETRY_AFTER_SECS),
            _ => None,
        };
        let headers: Vec<(&str, String)> = retry
            .map(|s| ("Retry-After", s.to_string()))
            .into_iter()
            .collect();
        self.refuse(txn, status, Some(&reason_header), Some(&why), &headers);
    }

    /// 488/500 for an offer we cannot answer: stateless for a new INVITE, in the transaction
    /// for a re-INVITE/UPDATE.
    fn refuse_media(&mut self, txn: ServerTxnId, error: &MediaError, stateless: bool) {
        let status = error.sip_status();
        let why = error.to_string();
        let mut headers = Vec::new();
        if status == 488 {
            // 304: media type not available (RFC 3261 §20.43).
            headers.push((
                "Warning",
                "304 switchboard \"only PCMU, PCMA and telephone-event are available\"".to_owned(),
            ));
            headers.push(("Accept", ACCEPT.to_owned()));
        }
        let reason = format!("Q.850;cause=88;text=\"{}\"", sanitize(&why));
        self.answer_with(txn, stateless, status, Some(&reason), Some(&why), &headers);
    }

    /// Charges one new call to connection `id`'s bucket of `limit` calls per second (burst:
    /// one second's worth); false when it is empty.
    fn take_call_token(&mut self, id: &str, limit: u32) -> bool {
        let now = Instant::now();
        let rate = self
            .call_rates
            .entry(id.to_owned())
            .or_insert_with(|| CallRate {
                tokens: f64::from(limit),
                refilled_at: now,
            });
        let limit = f64::from(limit);
        let elapsed = now
            .saturating_duration_since(rate.refilled_at)
            .as_secs_f64();
        rate.tokens = (rate.tokens + elapsed * limit).min(limit);
        rate.refilled_at = now;
        if rate.tokens >= 1.0 {
            rate.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn contact(&self, transport: Transport) -> String {
        let addr = self.local.for_transport(transport);
        let proto = if transport.is_stream() { "tcp" } else { "udp" };
        match addr.ip() {
            IpAddr::V6(ip) => format!("<sip:switchboard@[{ip}]:{};transport={proto}>", addr.port()),
            IpAddr::V4(ip) => format!("<sip:switchboard@{ip}:{};transport={proto}>", addr.port()),
        }
    }

    /// Answers the still-ringing INVITE of `call_id` with a final non-2xx response.
    fn reply_to_invite(
        &mut self,
        call_id: &str,
        status: u16,
        reason: Option<&str>,
        retry_after: Option<u32>,
    ) {
        let Some(call) = self.calls.get(call_id) else {
            return;
        };
        if call.state != CallState::Ringing {
            return;
        }
        let txn = call.invite_txn;
        let headers: Vec<(&str, String)> = retry_after
            .map(|s| ("Retry-After", s.to_string()))
            .into_iter()
            .collect();
        self.reply(txn, status, reason, None, &headers);
    }

    fn on_command(&mut self, command: CoreCommand) {
        match command {
            CoreCommand::AgentReady { call_id } => self.answer(&call_id),
            CoreCommand::AgentFailed {
                call_id,
                status,
                why,
            } => {
                tracing::warn!(%call_id, status, why, "agent unreachable");
                let reason = format!("Q.850;cause=41;text=\"{}\"", sanitize(&why));
                let retry = (status == 503).then_some(OVERLOAD_RETRY_AFTER_SECS);
                self.reply_to_invite(&call_id, status, Some(&reason), retry);
                self.finish(&call_id);
            }
            CoreCommand::HangUp { call_id, reason } => self.hang_up(&call_id, &reason),
        }
    }

    /// The agent is connected: 200 OK with our SDP.
    fn answer(&mut self, call_id: &str) {
        let Some(call) = self.calls.get(call_id) else {
            return;
        };
        if call.state != CallState::Ringing {
            return;
        }
        let (txn, sdp, transport) = (call.invite_txn, call.local_sdp.clone(), call.transport);
        let headers = [
            ("Contact", self.contact(transport)),
            ("Allow", ALLOW.to_owned()),
            ("Supported", screen::SUPPORTED.join(", ")),
        ];
        let Some(ok) = self.response(txn, 200, None, None, &headers) else {
            return;
        };
        self.send(txn, 200, ok.body("application/sdp", sdp.as_bytes()));
        self.metrics.calls_answered.inc();
        if let Some(call) = self.calls.get_mut(call_id) {
            call.state = CallState::Answered;
        }
    }

    fn on_ack(&mut self, dialog: DialogId, ack: &OwnedMessage) {
        let msg = ack.message();
        let Ok(call_id) = msg.call_id().map(str::to_owned) else {
            return;
        };
        let Some(call) = self.calls.get_mut(&call_id) else {
            return;
        };
        call.dialog = Some(dialog);
        if let Some(reason) = call.bye_pending.take() {
            // We wanted to hang up while the 200 was unacknowledged (RFC 3261 §15).
            self.send_bye(&call_id, &reason);
            self.finish(&call_id);
            return;
        }
        let answer = screen::sdp_body(&msg).map(|b| String::from_utf8_lossy(b).into_owned());
        if call.awaiting_answer {
            match answer.as_deref().map(|a| call.sdp.accept_answer(a)) {
                Some(Ok(media)) => {
                    call.negotiated = Some(media);
                    call.awaiting_answer = false;
                }
                Some(Err(e)) => {
                    let reason = format!("Q.850;cause=88;text=\"{}\"", sanitize(&e.to_string()));
                    self.send_bye(&call_id, &reason);
                    self.finish(&call_id);
                    return;
                }
                None if call.state == CallState::Answered => {
                    self.send_bye(
                        &call_id,
                        "SIP;cause=488;text=\"the ACK carried no SDP answer to our offer\"",
                    );
                    self.finish(&call_id);
                    return;
                }
                None => {}
            }
        }
        let Some(media) = call.negotiated.clone() else {
            return;
        };
        let event = match call.state {
            CallState::Answered => {
                call.state = CallState::Confirmed;
                CallEvent::Confirmed(media)
            }
            _ => CallEvent::MediaUpdate(media),
        };
        if call.to_task.try_send(event).is_err() {
            self.metrics
                .queue_full
                .with_label_values(&["call_events"])
                .inc();
        }
    }

    /// re-INVITE or UPDATE: answer an offer with our SDP (hold, resume, refresh), or make an
    /// offer when a re-INVITE brings none (the ACK then answers it).
    fn renegotiate(
        &mut self,
        txn: ServerTxnId,
        request: &OwnedMessage,
        dialog: DialogId,
        method: &str,
    ) {
        let msg = request.message();
        let call_id = msg.call_id().unwrap_or("").to_owned();
        let contact = match self.calls.get(&call_id) {
            Some(call) => self.contact(call.transport),
            None => {
                self.reply(txn, 481, None, Some("no such call"), &[]);
                return;
            }
        };
        let Some(call) = self.calls.get_mut(&call_id) else {
            return;
        };
        call.dialog = Some(dialog);
        if method == "INVITE" && call.state == CallState::Answered {
            // Our 200 is not acknowledged yet (RFC 3261 §14.2).
            self.reply(
                txn,
                491,
                None,
                Some("previous INVITE not yet acknowledged"),
                &[],
            );
            return;
        }
        let offer = screen::sdp_body(&msg).map(|b| String::from_utf8_lossy(b).into_owned());
        let outcome = match offer {
            Some(offer) => call
                .sdp
                .answer(&offer)
                .map(|(a, m)| Some((a.into_string(), Some(m)))),
            None if method == "INVITE" => {
                call.awaiting_answer = true;
                Ok(Some((call.sdp.offer().into_string(), None)))
            }
            // UPDATE without SDP: a session refresh.
            None => Ok(None),
        };
        let (body, media) = match outcome {
            Ok(Some(pair)) => pair,
            Ok(None) => {
                self.reply(txn, 200, None, None, &[]);
                return;
            }
            Err(e) => {
                // The call keeps its previous media (RFC 3261 §14.2).
                self.refuse_media(txn, &e, false);
                return;
            }
        };
        if let Some(media) = media {
            call.negotiated = Some(media.clone());
            if call
                .to_task
                .try_send(CallEvent::MediaUpdate(media))
                .is_err()
            {
                self.metrics
                    .queue_full
                    .with_label_values(&["call_events"])
                    .inc();
            }
        }
        let headers = [("Contact", contact), ("Allow", ALLOW.to_owned())];
        if let Some(ok) = self.response(txn, 200, None, None, &headers) {
            self.send(txn, 200, ok.body("application/sdp", body.as_bytes()));
        }
    }

    /// Ends a call from our side: a final response while it rings, BYE once answered
    /// (deferred until the ACK if it has not come yet).
    fn hang_up(&mut self, call_id: &str, reason: &HangupReason) {
        let Some(call) = self.calls.get_mut(call_id) else {
            return;
        };
        let header = reason.header();
        match (call.state, call.dialog) {
            (CallState::Ringing, _) => {
                let status = match reason {
                    HangupReason::Requested(_) => 480,
                    _ => 503,
                };
                self.reply_to_invite(call_id, status, Some(&header), None);
            }
            (_, None) => {
                call.bye_pending = Some(header);
                return;
            }
            (_, Some(_)) => self.send_bye(call_id, &header),
        }
        self.finish(call_id);
    }

    /// Sends BYE with `reason` in the call's dialog and forgets the dialog.
    fn send_bye(&mut self, call_id: &str, reason: &str) {
        let Some(dialog) = self.calls.get(call_id).and_then(|c| c.dialog) else {
            return;
        };
        let Some(builder) = self.endpoint.dialog_request(dialog, "BYE") else {
            return;
        };
        let Some((hop, transport)) = self
            .endpoint
            .dialog(dialog)
            .map(|d| (d.next_hop(), d.transport()))
        else {
            return;
        };
        let built = builder
            .header("Reason", reason)
            .header("User-Agent", SERVER)
            .build();
        self.endpoint.remove_dialog(dialog);
        match built.map(|bye| {
            self.endpoint
                .send_request(Instant::now(), hop, transport, bye)
        }) {
            Ok(Ok(_)) => {}
            Ok(Err(e)) | Err(e) => tracing::warn!(%call_id, error = %e, "cannot send BYE"),
        }
    }

    /// Forgets a call on the SIP side and tells its task (which releases the ports).
    fn finish(&mut self, call_id: &str) {
        let Some(call) = self.calls.remove(call_id) else {
            return;
        };
        self.by_invite.remove(&call.invite_txn);
        self.state.calls.remove(&call.call_sid);
        self.metrics.calls_active.dec();
        let _ = call.to_task.try_send(CallEvent::Ended);
        tracing::info!(call_sid = %call.call_sid, %call_id, "call ended");
    }
}

fn capabilities() -> Vec<(&'static str, String)> {
    vec![
        ("Allow", ALLOW.to_owned()),
        ("Accept", ACCEPT.to_owned()),
        ("Accept-Encoding", "identity".to_owned()),
        ("Supported", screen::SUPPORTED.join(", ")),
    ]
}

/// `start.customParameters` for a routed call.
fn custom_parameters(route: &Route) -> CustomParameters {
    let called = route.called().to_string();
    let caller = route.caller().map(|c| c.to_string()).unwrap_or_default();
    let split_variant = route.split().map(|_| route.app_version().to_string());
    let cohort = route.cohort();
    let variables: Vec<(String, String)> = cohort
        .map(|m| {
            m.app_variables
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default();
    let overrides: Vec<(String, String)> = cohort
        .map(|m| {
            let o = &m.app_overrides;
            [
                ("initial_bot_message", &o.initial_bot_message),
                ("initial_state_name", &o.initial_state_name),
                ("initial_language_name", &o.initial_language_name),
            ]
            .into_iter()
            .filter_map(|(k, v)| v.as_ref().map(|v| (k.to_owned(), v.clone())))
            .collect()
        })
        .unwrap_or_default();
    CustomParameters::for_call(&CallInfo {
        from_number: &caller,
        to_number: &called,
        deployment_id: route.deployment_id(),
        app_id: route.app_id(),
        app_version: route.app_version(),
        split_variant: split_variant.as_deref(),
        user_identifier: cohort.map(|m| m.user_identifier.as_str()),
        app_variables: &variables,
        app_overrides: &overrides,
    })
}

/// Text safe inside a quoted string of a header value.
fn sanitize(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c == '"' || c == '\\' || c.is_control() {
                '\''
            } else {
                c
            }
        })
        .take(200)
        .collect()
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_text_cannot_break_out_of_its_quoted_string() {
        assert_eq!(
            sanitize("no \"route\"\r\nInjected: 1"),
            "no 'route'''Injected: 1"
        );
        assert_eq!(sanitize(&"x".repeat(500)).len(), 200);
    }

    #[test]
    fn options_answers_advertise_what_we_do() {
        let caps = capabilities();
        let get = |name: &str| {
            caps.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("Allow"), Some(ALLOW));
        assert_eq!(get("Accept"), Some("application/sdp"));
        assert!(get("Supported").is_some());
    }
}
