//! The endpoint task: one tokio task owning the transaction layer and the SIP side of every
//! call, so nothing here needs a lock. It loops over three inputs — messages from the socket
//! readers, commands from call tasks, and the transaction timers (`sleep_until` the earliest
//! deadline) — and after each one drains the transaction layer: transmits to the sockets,
//! events to the call logic below.
//!
//! Call flow for an initial INVITE: screening (§8.2) → trunk authentication (allowlist,
//! digest) → routing (404/480/503 with Reason and Warning) → RTP port pair and SDP answer
//! (488 when no codec matches; late offer when the INVITE has none) → 180 Ringing and a call
//! task that reaches the agent → 200 OK when it did (503 when it did not) → ACK → media.
//! BYE either way, CANCEL before the answer (487), re-INVITE/UPDATE (hold, refresh),
//! OPTIONS/INFO inside and outside dialogs.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use switchboard_media::{
    BridgeConfig, CallInfo, CustomParameters, MediaError, NegotiatedMedia, SdpSession, StartParams,
    StreamIds,
};
use switchboard_routing::{Reject, RejectReason, Route, RouteDecision};
use switchboard_sip::{HeaderName, Message, MessageBuilder, OwnedMessage, Transport};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::call::{self, CallEvent, CallSetup, CoreCommand, HangupReason, CALL_EVENT_QUEUE};
use super::calls::{account_sid_for, CallDetails, CallHandle};
use super::identity;
use super::metrics::SipMetrics;
use super::ports::RtpPortAllocator;
use super::screen::{self, ACCEPT, ALLOW};
use super::transport::{Inbound, Outbound};
use super::trunk::{TrunkAuth, TrunkVerdict};
use super::txn::{new_branch, Transmit, TxnEvent, TxnId, TxnLayer};
use crate::state::AppState;

/// Commands from call tasks waiting for the endpoint task; a few per call.
pub const CORE_COMMAND_QUEUE: usize = 4096;
/// `Retry-After` when we are out of RTP ports or not ready: long enough for calls to end.
const OVERLOAD_RETRY_AFTER_SECS: u32 = 5;
/// `Retry-After` for a runtime in `error` (routing gives none): a minute lets an operator act.
const RUNTIME_ERROR_RETRY_AFTER_SECS: u32 = 60;
/// How long shutdown gives BYEs to leave before the task exits.
const SHUTDOWN_FLUSH: Duration = Duration::from_millis(200);
/// Product token in Server headers.
const SERVER: &str = concat!("switchboard/", env!("CARGO_PKG_VERSION"));

/// Where we can be reached, for Via and Contact.
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

/// The SIP side of one call (UAS dialog).
#[derive(Debug)]
struct Call {
    call_sid: String,
    invite_txn: TxnId,
    invite: OwnedMessage,
    source: SocketAddr,
    transport: Transport,
    local_tag: String,
    state: CallState,
    sdp: SdpSession,
    /// Our SDP for the 200 (answer, or offer for a late-offer INVITE).
    local_sdp: String,
    /// The offer was ours (late offer, or a re-INVITE without SDP): the ACK brings the answer.
    awaiting_answer: bool,
    negotiated: Option<NegotiatedMedia>,
    /// Highest CSeq seen from the caller and the INVITE's (the one its ACK carries).
    remote_cseq: u32,
    invite_cseq: u32,
    local_cseq: u32,
    to_task: mpsc::Sender<CallEvent>,
}

/// The endpoint task's state.
#[derive(Debug)]
pub struct Core {
    state: AppState,
    metrics: SipMetrics,
    outbound: Outbound,
    txn: TxnLayer,
    trunk: TrunkAuth,
    ports: RtpPortAllocator,
    local: LocalAddrs,
    calls: HashMap<String, Call>,
    by_invite: HashMap<TxnId, String>,
    commands: mpsc::Sender<CoreCommand>,
    tasks: TaskTracker,
}

impl Core {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        state: AppState,
        metrics: SipMetrics,
        outbound: Outbound,
        txn: TxnLayer,
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
            txn,
            trunk,
            ports,
            local,
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
            let deadline = self.txn.poll_timeout();
            let sleep = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => break,
                Some(message) = inbound.recv() => {
                    self.txn.handle_message(Instant::now(), message.source, message.transport, message.bytes);
                }
                Some(command) = commands.recv() => self.on_command(command),
                () = sleep => self.txn.handle_timeout(Instant::now()),
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

    /// Sends what the transaction layer wants sent and handles its events, until both are
    /// drained (handling an event may produce more of either).
    fn pump(&mut self) {
        loop {
            let mut progressed = false;
            while let Some(Transmit {
                destination,
                transport,
                bytes,
            }) = self.txn.poll_transmit()
            {
                progressed = true;
                self.outbound.send(transport, destination, bytes);
            }
            while let Some(event) = self.txn.poll_event() {
                progressed = true;
                self.on_event(event);
            }
            if !progressed {
                break;
            }
        }
    }

    fn on_event(&mut self, event: TxnEvent) {
        match event {
            TxnEvent::Request {
                txn,
                request,
                source,
                transport,
            } => self.on_request(txn, request, source, transport),
            TxnEvent::Ack { request, .. } => self.on_ack(&request),
            TxnEvent::Cancelled { invite } => {
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
            TxnEvent::AckTimedOut { call_id } => {
                let reason = "SIP;cause=408;text=\"no ACK for the 200 OK\"";
                self.send_bye(&call_id, reason);
                self.finish(&call_id);
            }
            TxnEvent::Response { .. } | TxnEvent::RequestTimedOut { .. } => {
                // Responses to our BYEs: the call is already gone; nothing to do.
            }
            TxnEvent::Malformed { status, error } => {
                let action = status.map_or_else(|| "dropped".to_owned(), |s| s.to_string());
                self.metrics
                    .parse_errors
                    .with_label_values(&[action.as_str()])
                    .inc();
                if let Some(status) = status {
                    self.metrics.response(status);
                }
                tracing::debug!(error = %error, "malformed SIP message");
            }
        }
    }

    /// Sends a response on `txn` and counts it.
    fn respond(&mut self, txn: TxnId, status: u16, bytes: Bytes) {
        self.metrics.response(status);
        self.txn.respond(Instant::now(), txn, status, bytes);
    }

    /// A response to `request`: `status`, our tag, Server, optional Reason/Warning and more.
    fn build(
        &self,
        request: &Message<'_>,
        status: u16,
        tag: &str,
        reason: Option<&str>,
        warning: Option<&str>,
        headers: &[(&str, String)],
    ) -> Option<Bytes> {
        let mut b = request
            .response(status)
            .to_tag(tag)
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
        match b.build() {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                tracing::warn!(error = %e, status, "cannot build response");
                None
            }
        }
    }

    /// Refuses `request` statelessly-in-a-transaction (no call state).
    fn refuse(
        &mut self,
        txn: TxnId,
        request: &Message<'_>,
        status: u16,
        reason: Option<&str>,
        warning: Option<&str>,
        headers: &[(&str, String)],
    ) {
        let tag = new_tag();
        if let Some(bytes) = self.build(request, status, &tag, reason, warning, headers) {
            self.respond(txn, status, bytes);
        }
    }

    fn on_request(
        &mut self,
        txn: TxnId,
        request: OwnedMessage,
        source: SocketAddr,
        transport: Transport,
    ) {
        let msg = request.message();
        let method = msg.method().unwrap_or("").to_owned();
        self.metrics.request(&method);
        if let Err(refusal) = screen::screen(&msg) {
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
            self.refuse(
                txn,
                &msg,
                refusal.status,
                Some(&reason),
                Some(&refusal.why),
                &headers,
            );
            return;
        }
        let to_tag = msg.to().ok().and_then(|t| t.tag().map(str::to_owned));
        if let Some(to_tag) = to_tag {
            self.in_dialog(txn, &request, &to_tag);
            return;
        }
        match method.as_str() {
            "INVITE" => self.on_invite(txn, request, source, transport),
            "OPTIONS" => {
                // Keep-alives from the carriers we serve get 200; anyone else is refused
                // like their INVITEs would be, so scanners learn nothing.
                let admitted = self.state.routing.load().admits_source(source.ip());
                if admitted {
                    let headers = capabilities();
                    self.refuse(txn, &msg, 200, None, None, &headers);
                } else {
                    self.metrics.auth.with_label_values(&["forbidden"]).inc();
                    let why = format!("source {} is not in any trunk's allowlist", source.ip());
                    self.refuse(
                        txn,
                        &msg,
                        403,
                        Some("Q.850;cause=21;text=\"source not allowed\""),
                        Some(&why),
                        &[],
                    );
                }
            }
            // BYE, INFO, UPDATE outside a dialog (RFC 3261 §12.2.2).
            _ => self.refuse(txn, &msg, 481, None, Some("no such dialog"), &[]),
        }
    }

    fn on_invite(
        &mut self,
        txn: TxnId,
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
                &msg,
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
        match verdict {
            TrunkVerdict::Admit => {}
            TrunkVerdict::Forbidden(why) => {
                self.metrics.auth.with_label_values(&["forbidden"]).inc();
                tracing::info!(%source, %called, why, "INVITE refused by trunk authentication");
                self.refuse(
                    txn,
                    &msg,
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
                    &msg,
                    401,
                    None,
                    None,
                    &[("WWW-Authenticate", www_authenticate)],
                );
                return;
            }
        }
        if !self.state.is_ready() {
            let retry = [("Retry-After", OVERLOAD_RETRY_AFTER_SECS.to_string())];
            self.refuse(
                txn,
                &msg,
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
                self.reject_route(txn, &msg, &reject);
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
                    &msg,
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
                    self.refuse_media(txn, &msg, &e);
                    return;
                }
            },
            None => (sdp.offer().into_string(), None, true),
        };

        // Register the call, ring, and start the task that reaches the agent.
        let local_tag = new_tag();
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
                ..BridgeConfig::default()
            },
            ports,
            rtp_socket,
        };
        let ringing = self.build(
            &msg,
            180,
            &local_tag,
            None,
            None,
            &[("Contact", self.contact(transport))],
        );
        let invite_cseq = msg.cseq().map(|c| c.seq).unwrap_or(0);
        tracing::info!(%call_sid, %call_id, explanation = %route.explanation(), "routing call");
        self.calls.insert(
            call_id.clone(),
            Call {
                call_sid: call_sid.clone(),
                invite_txn: txn,
                invite: request.clone(),
                source,
                transport,
                local_tag,
                state: CallState::Ringing,
                sdp,
                local_sdp,
                awaiting_answer,
                negotiated,
                remote_cseq: invite_cseq,
                invite_cseq,
                local_cseq: 0,
                to_task,
            },
        );
        self.by_invite.insert(txn, call_id);
        self.state.calls.insert(call_sid, handle);
        self.metrics.calls_active.inc();
        if let Some(ringing) = ringing {
            self.respond(txn, 180, ringing);
        }
        self.tasks
            .spawn(call::run(setup, events_rx, admin_rx, self.commands.clone()));
    }

    fn reject_route(&mut self, txn: TxnId, msg: &Message<'_>, reject: &Reject) {
        let reason = reject.reason();
        self.metrics
            .route_rejects
            .with_label_values(&[reason.as_str()])
            .inc();
        let status = reject.sip_status();
        let why = reject.explanation();
        tracing::info!(
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
        let mut headers = Vec::new();
        let retry = match (reject.retry_after(), status) {
            (Some(secs), _) => Some(secs),
            (None, 503) => Some(RUNTIME_ERROR_RETRY_AFTER_SECS),
            _ => None,
        };
        if let Some(secs) = retry {
            headers.push(("Retry-After", secs.to_string()));
        }
        self.refuse(txn, msg, status, Some(&reason_header), Some(&why), &headers);
    }

    fn refuse_media(&mut self, txn: TxnId, msg: &Message<'_>, error: &MediaError) {
        let status = error.sip_status();
        let why = error.to_string();
        // 304/305: Warning codes for media type / format not available (RFC 3261 §20.43).
        let mut headers = Vec::new();
        if status == 488 {
            headers.push((
                "Warning",
                "304 switchboard \"only PCMU, PCMA and telephone-event are available\"".to_owned(),
            ));
            headers.push(("Accept", ACCEPT.to_owned()));
        }
        let reason = format!("Q.850;cause=88;text=\"{}\"", sanitize(&why));
        self.refuse(txn, msg, status, Some(&reason), Some(&why), &headers);
    }

    fn contact(&self, transport: Transport) -> String {
        let addr = self.local.for_transport(transport);
        let proto = if transport.is_stream() { "tcp" } else { "udp" };
        match addr.ip() {
            IpAddr::V6(ip) => format!("<sip:switchboard@[{ip}]:{};transport={proto}>", addr.port()),
            IpAddr::V4(ip) => format!("<sip:switchboard@{ip}:{};transport={proto}>", addr.port()),
        }
    }

    /// Answers the pending INVITE of `call_id` with a final non-2xx response.
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
        if !self.txn.is_pending(call.invite_txn) {
            return;
        }
        let (txn, tag) = (call.invite_txn, call.local_tag.clone());
        let invite = call.invite.clone();
        let headers: Vec<(&str, String)> = retry_after
            .map(|s| ("Retry-After", s.to_string()))
            .into_iter()
            .collect();
        if let Some(bytes) = self.build(&invite.message(), status, &tag, reason, None, &headers) {
            self.respond(txn, status, bytes);
        }
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
        self.pump();
    }

    fn answer(&mut self, call_id: &str) {
        let Some(call) = self.calls.get(call_id) else {
            return;
        };
        if call.state != CallState::Ringing || !self.txn.is_pending(call.invite_txn) {
            return;
        }
        let invite = call.invite.clone();
        let (txn, tag, sdp) = (
            call.invite_txn,
            call.local_tag.clone(),
            call.local_sdp.clone(),
        );
        let contact = self.contact(call.transport);
        let msg = invite.message();
        let built = msg
            .response(200)
            .to_tag(&tag)
            .header("Server", SERVER)
            .header("Contact", contact)
            .header("Allow", ALLOW)
            .header("Supported", screen::SUPPORTED.join(", "))
            .body("application/sdp", sdp.as_bytes())
            .build();
        let Ok(bytes) = built else { return };
        self.respond(txn, 200, bytes);
        self.metrics.calls_answered.inc();
        if let Some(call) = self.calls.get_mut(call_id) {
            call.state = CallState::Answered;
        }
    }

    fn on_ack(&mut self, ack: &OwnedMessage) {
        let msg = ack.message();
        let Ok(call_id) = msg.call_id() else { return };
        let Some(call) = self.calls.get_mut(call_id) else {
            return;
        };
        let Ok(cseq) = msg.cseq() else { return };
        if cseq.seq != call.invite_cseq {
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
                    let call_id = call_id.to_owned();
                    self.send_bye(&call_id, &reason);
                    self.finish(&call_id);
                    return;
                }
                None if call.state == CallState::Answered => {
                    let call_id = call_id.to_owned();
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

    fn in_dialog(&mut self, txn: TxnId, request: &OwnedMessage, to_tag: &str) {
        let msg = request.message();
        let method = msg.method().unwrap_or("").to_owned();
        let call_id = msg.call_id().unwrap_or("").to_owned();
        let known = self
            .calls
            .get(&call_id)
            .is_some_and(|c| c.local_tag == to_tag && c.state != CallState::Ringing);
        if !known {
            self.refuse(txn, &msg, 481, None, Some("no such dialog"), &[]);
            return;
        }
        let cseq = msg.cseq().map(|c| c.seq).unwrap_or(0);
        let Some(call) = self.calls.get_mut(&call_id) else {
            return;
        };
        if cseq < call.remote_cseq {
            // §12.2.2: out of order.
            self.refuse(
                txn,
                &msg,
                500,
                None,
                Some("CSeq out of order"),
                &[("Retry-After", "1".to_owned())],
            );
            return;
        }
        call.remote_cseq = cseq;
        let tag = call.local_tag.clone();
        match method.as_str() {
            "BYE" => {
                if let Some(bytes) = self.build(&msg, 200, &tag, None, None, &[]) {
                    self.respond(txn, 200, bytes);
                }
                self.finish(&call_id);
            }
            "INVITE" | "UPDATE" => self.renegotiate(txn, &msg, &call_id, &method, cseq),
            _ => {
                // OPTIONS and INFO inside the dialog.
                let headers = if method == "OPTIONS" {
                    capabilities()
                } else {
                    Vec::new()
                };
                if let Some(bytes) = self.build(&msg, 200, &tag, None, None, &headers) {
                    self.respond(txn, 200, bytes);
                }
            }
        }
    }

    /// re-INVITE or UPDATE: answer an offer with our SDP (hold, resume, refresh), or make an
    /// offer when a re-INVITE brings none (the ACK then answers it).
    fn renegotiate(
        &mut self,
        txn: TxnId,
        msg: &Message<'_>,
        call_id: &str,
        method: &str,
        cseq: u32,
    ) {
        let Some(call) = self.calls.get_mut(call_id) else {
            return;
        };
        let (transport, tag, state) = (call.transport, call.local_tag.clone(), call.state);
        if method == "INVITE" && state == CallState::Answered {
            // Our 200 is not acknowledged yet (RFC 3261 §14.2).
            self.refuse(
                txn,
                msg,
                491,
                None,
                Some("previous INVITE not yet acknowledged"),
                &[],
            );
            return;
        }
        let offer = screen::sdp_body(msg).map(|b| String::from_utf8_lossy(b).into_owned());
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
                if let Some(bytes) = self.build(msg, 200, &tag, None, None, &[]) {
                    self.respond(txn, 200, bytes);
                }
                return;
            }
            Err(e) => {
                // The call keeps its previous media (RFC 3261 §14.2).
                self.refuse_media(txn, msg, &e);
                return;
            }
        };
        if method == "INVITE" {
            call.invite_cseq = cseq;
        }
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
        let built = msg
            .response(200)
            .to_tag(&tag)
            .header("Server", SERVER)
            .header("Contact", self.contact(transport))
            .header("Allow", ALLOW)
            .body("application/sdp", body.as_bytes())
            .build();
        if let Ok(bytes) = built {
            self.respond(txn, 200, bytes);
        }
    }

    /// Ends a call from our side: a final response while it rings, BYE once answered.
    fn hang_up(&mut self, call_id: &str, reason: &HangupReason) {
        let Some(call) = self.calls.get(call_id) else {
            return;
        };
        let header = reason.header();
        if call.state == CallState::Ringing {
            let status = match reason {
                HangupReason::Requested(_) => 480,
                _ => 503,
            };
            self.reply_to_invite(call_id, status, Some(&header), None);
        } else {
            self.send_bye(call_id, &header);
        }
        self.finish(call_id);
    }

    /// Sends BYE with `reason` in the call's dialog (to where the INVITE came from: the
    /// carrier's signalling address, over the same transport/connection).
    fn send_bye(&mut self, call_id: &str, reason: &str) {
        let local = self.local;
        let Some(call) = self.calls.get_mut(call_id) else {
            return;
        };
        call.local_cseq += 1;
        let invite = call.invite.message();
        let branch = new_branch();
        let via_addr = local.for_transport(call.transport);
        let via = format!(
            "SIP/2.0/{} {};branch={branch};rport",
            if call.transport.is_stream() {
                "TCP"
            } else {
                "UDP"
            },
            via_addr
        );
        let target = invite
            .contact()
            .ok()
            .flatten()
            .map(|c| c.uri_text.to_owned())
            .or_else(|| invite.from().ok().map(|f| f.uri_text.to_owned()))
            .unwrap_or_else(|| format!("sip:{}", call.source));
        let Some(from) = invite.header(HeaderName::From).and_then(|h| h.value_str()) else {
            return;
        };
        let Some(to) = invite.header(HeaderName::To).and_then(|h| h.value_str()) else {
            return;
        };
        let mut b = MessageBuilder::request("BYE", &target)
            .header("Via", via)
            .header("Max-Forwards", 70);
        for route in invite
            .headers_named(HeaderName::RecordRoute)
            .filter_map(|h| h.value_str())
        {
            b = b.header("Route", route);
        }
        let b = b
            .header("From", format!("{to};tag={}", call.local_tag))
            .header("To", from)
            .header("Call-ID", call_id)
            .header("CSeq", format!("{} BYE", call.local_cseq))
            .header("Reason", reason)
            .header("User-Agent", SERVER);
        match b.build() {
            Ok(bytes) => {
                let (destination, transport) = (call.source, call.transport);
                self.txn
                    .send_request(Instant::now(), "BYE", branch, destination, transport, bytes);
            }
            Err(e) => tracing::warn!(%call_id, error = %e, "cannot build BYE"),
        }
    }

    /// Forgets a call on the SIP side and tells its task (which releases the ports).
    fn finish(&mut self, call_id: &str) {
        let Some(call) = self.calls.remove(call_id) else {
            return;
        };
        self.by_invite.remove(&call.invite_txn);
        self.txn.forget_answer(call_id);
        self.state.calls.remove(&call.call_sid);
        self.metrics.calls_active.dec();
        let _ = call.to_task.try_send(CallEvent::Ended);
        tracing::info!(call_sid = %call.call_sid, %call_id, "call ended");
    }
}

/// Allow/Accept/Supported, what an OPTIONS answer advertises.
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

/// A random dialog tag (RFC 3261 §19.3: at least 32 random bits; we use 64).
fn new_tag() -> String {
    format!("sb{:016x}", rand::random::<u64>())
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
