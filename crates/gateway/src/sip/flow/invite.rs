//! A new INVITE, stage by stage: admit → route → prepare media → ring. Each stage either
//! hands the next what it learnt or refuses with a [`Refusal`], sent without a transaction.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use switchboard_media::{
    AgentDialect, AllowedSources, BridgeConfig, CallInfo, CustomParameters, MediaEncryption,
    NegotiatedMedia, SdpSession, StartParams, StreamIds,
};
use switchboard_routing::model::{self, Connection};
use switchboard_routing::{Route, RouteDecision, RoutingSnapshot};
use switchboard_sip::{HeaderName, OwnedMessage, ServerTxnId, Transport};

use super::super::agent_headers;
use super::super::guard::Offence;
use super::super::identity;
use super::super::refusal::Refusal;
use super::super::screen;
use super::super::trunk::TrunkVerdict;
use super::ending::CallRecord;
use super::{Call, CallFlow, CallStart, CallState, MediaPorts, Now, Output};

/// A connection's `max_calls_per_second` token bucket.
#[derive(Debug, Clone, Copy)]
struct CallRate {
    tokens: f64,
    refilled_at: Instant,
}
use crate::events::{Event, EventKind};
use crate::live_calls::{account_sid_for, CallDetails};

/// What admission learnt about an INVITE.
struct Admitted {
    call_id: String,
    called: String,
    caller: String,
    /// The trunk owning the called number, if the number is known.
    connection: Option<Connection>,
    /// The Request-URI is `sips:`.
    secure: bool,
    /// INVITE headers the trunk passes to the agent (`headers_to_parameters`,
    /// `include_headers`), already bounded and sanitised.
    header_parameters: Vec<(String, String)>,
    /// `host[:port]` a transfer to a number is addressed to (see [`carrier_host`]).
    carrier_host: String,
}

/// Media for an accepted call: our SDP and the reserved ports.
struct PreparedMedia<R> {
    sdp: SdpSession,
    local_sdp: String,
    negotiated: Option<NegotiatedMedia>,
    awaiting_answer: bool,
    reservation: R,
}

impl<P: MediaPorts> CallFlow<P> {
    pub(super) fn on_invite(
        &mut self,
        now: Now,
        txn: ServerTxnId,
        request: &OwnedMessage,
        source: SocketAddr,
        transport: Transport,
    ) {
        self.metrics.invites.inc();
        let snapshot = self.routing.snapshot();
        // A measurement only (no decision depends on it): admission and routing take
        // microseconds, which the flow's one `now` per input cannot show.
        let routing_started = Instant::now();
        let outcome = self
            .admit(now, request, source, &snapshot)
            .and_then(|admitted| {
                let route = self.route(now, &snapshot, &admitted)?;
                self.metrics.call.setup("route", routing_started.elapsed());
                let media = self
                    .prepare_media(
                        request,
                        media_policy(admitted.connection.as_ref()),
                        agent_dialect(route.runtime().dialect),
                    )
                    .inspect_err(|refusal| {
                        let mut event =
                            routed_event(EventKind::CallRejected, now, &admitted, &route);
                        event.reason = Some("media_unavailable".to_owned());
                        event.sip_status = Some(refusal.status);
                        self.emit(event);
                    })?;
                Ok((admitted, route, media))
            });
        match outcome {
            Ok((admitted, route, media)) => {
                self.ring(now, txn, transport, source, admitted, &route, media);
            }
            Err(refusal) => self.refuse(txn, &refusal),
        }
    }

    /// Stage 1: is this INVITE one we may take? A merged request, trunk authentication
    /// (allowlist, digest), the trunk's call rate, and our own readiness.
    fn admit(
        &mut self,
        now: Now,
        request: &OwnedMessage,
        source: SocketAddr,
        snapshot: &RoutingSnapshot,
    ) -> Result<Admitted, Refusal> {
        let msg = request.message();
        let call_id = msg
            .call_id()
            .map(str::to_owned)
            .map_err(|e| Refusal::protocol(400, e.to_string()))?;
        if self.calls.contains_key(&call_id) {
            // Same Call-ID, new transaction, no To tag: a merged or looped request (§8.2.2.2).
            return Err(Refusal::merged_request());
        }
        let is_number = |s: &str| snapshot.normalize(s).is_ok();
        let called = identity::called_party(&msg, is_number)
            .unwrap_or("")
            .to_owned();
        let caller = identity::calling_party(&msg, is_number)
            .unwrap_or("")
            .to_owned();
        let connection = snapshot.trunk_for_number(&called);
        let request_uri = msg
            .request_uri_raw()
            .and_then(|r| std::str::from_utf8(r).ok())
            .unwrap_or("");
        let authorization = msg
            .header(HeaderName::Authorization)
            .and_then(|h| h.value_str());
        let verdict = self.trunk.check(
            now.unix_secs(),
            rand::Rng::random(&mut self.rng),
            source.ip(),
            connection,
            snapshot.admits_source(source.ip()),
            "INVITE",
            request_uri,
            authorization,
        );
        match verdict {
            TrunkVerdict::Admit => {}
            TrunkVerdict::Forbidden(why) => {
                self.metrics.auth.with_label_values(&["forbidden"]).inc();
                tracing::debug!(%source, %called, why, "INVITE refused by trunk authentication");
                return Err(Refusal::trunk_forbidden(why));
            }
            TrunkVerdict::WrongCredentials(why) => {
                self.metrics.auth.with_label_values(&["failed"]).inc();
                self.outputs.push_back(Output::Offence {
                    ip: source.ip(),
                    offence: Offence::DigestFailure,
                });
                return Err(Refusal::trunk_forbidden(why));
            }
            TrunkVerdict::Challenge {
                www_authenticate,
                stale,
            } => {
                let outcome = if stale { "stale" } else { "challenged" };
                self.metrics.auth.with_label_values(&[outcome]).inc();
                return Err(Refusal::challenge(www_authenticate));
            }
        }
        if self.is_draining() {
            return Err(Refusal::draining());
        }
        if let Some(connection) = connection {
            if let Some(limit) = connection.max_calls_per_second {
                if !self.take_call_token(now.instant, &connection.connection_id, limit) {
                    self.metrics
                        .rate_limited
                        .with_label_values(&["connection_503"])
                        .inc();
                    return Err(Refusal::connection_call_rate());
                }
            }
        }
        if !self.is_ready() {
            return Err(Refusal::not_ready());
        }
        Ok(Admitted {
            call_id,
            called,
            caller,
            header_parameters: connection
                .map(|c| agent_headers::header_parameters(&msg, c))
                .unwrap_or_default(),
            carrier_host: carrier_host(&msg, source),
            connection: connection.cloned(),
            secure: request_uri
                .get(..5)
                .is_some_and(|s| s.eq_ignore_ascii_case("sips:")),
        })
    }

    /// Stage 2: the routing table's answer (404/480/503 with their causes when it refuses).
    fn route(
        &mut self,
        now: Now,
        snapshot: &RoutingSnapshot,
        admitted: &Admitted,
    ) -> Result<Route, Refusal> {
        let wall = chrono::DateTime::<chrono::Utc>::from(now.wall);
        match snapshot.route(wall, &admitted.called, &admitted.caller, &admitted.call_id) {
            RouteDecision::Accept(route) => Ok(route),
            RouteDecision::Reject(reject) => {
                let reason = reject.reason();
                self.metrics
                    .route_rejects
                    .with_label_values(&[reason.as_str()])
                    .inc();
                // Counted; a log line per refused call would cost more than the refusal.
                tracing::debug!(reason = reason.as_str(), "INVITE rejected by routing");
                if let (Some(scope), Some(deployment_id)) = (reject.scope(), reject.deployment_id())
                {
                    let mut event = Event::new(
                        EventKind::CallRejected,
                        now.wall,
                        scope.clone(),
                        deployment_id.to_owned(),
                    );
                    event.app_version = reject.app_version();
                    event.sip_call_id = Some(admitted.call_id.clone());
                    event.from = Some(admitted.caller.clone()).filter(|c| !c.is_empty());
                    event.to = Some(admitted.called.clone());
                    event.reason = Some(reason.as_str().to_owned());
                    event.sip_status = Some(reject.sip_status());
                    self.emit(event);
                }
                Err(Refusal::route(&reject))
            }
        }
    }

    /// Stage 3: an RTP port pair and our SDP (the answer to the offer, or our offer when the
    /// INVITE has none).
    fn prepare_media(
        &mut self,
        request: &OwnedMessage,
        encryption: MediaEncryption,
        dialect: AgentDialect,
    ) -> Result<PreparedMedia<P::Reservation>, Refusal> {
        let (rtp_port, reservation) = self.ports.reserve().map_err(|why| {
            self.metrics
                .queue_full
                .with_label_values(&["rtp_ports"])
                .inc();
            Refusal::no_rtp_ports(why)
        })?;
        let mut sdp = SdpSession::new(self.config.advertised_ip, rtp_port)
            .with_encryption(encryption)
            .with_preference(dialect.codec_preference());
        let offer =
            screen::sdp_body(&request.message()).map(|b| String::from_utf8_lossy(b).into_owned());
        // On a refusal the reservation is dropped here, which returns the ports.
        match offer {
            Some(offer) => {
                let (answer, negotiated) = sdp.answer(&offer).map_err(|e| Refusal::media(&e))?;
                Ok(PreparedMedia {
                    sdp,
                    local_sdp: answer.into_string(),
                    negotiated: Some(negotiated),
                    awaiting_answer: false,
                    reservation,
                })
            }
            None => {
                let local_sdp = sdp.offer().into_string();
                Ok(PreparedMedia {
                    sdp,
                    local_sdp,
                    negotiated: None,
                    awaiting_answer: true,
                    reservation,
                })
            }
        }
    }

    /// Stage 4: register the call, ring, and ask the I/O loop to start its task.
    #[allow(clippy::too_many_arguments)]
    fn ring(
        &mut self,
        now: Now,
        txn: ServerTxnId,
        transport: Transport,
        source: SocketAddr,
        admitted: Admitted,
        route: &Route,
        media: PreparedMedia<P::Reservation>,
    ) {
        let ids = StreamIds {
            account_sid: account_sid_for(route.scope()),
            call_sid: self.new_sid("CA"),
            stream_sid: self.new_sid("MZ"),
        };
        let details = CallDetails {
            call_sid: ids.call_sid.clone(),
            account_sid: ids.account_sid.clone(),
            sip_call_id: admitted.call_id.clone(),
            to: route.called().to_string(),
            from: route.caller().map(|c| c.to_string()).unwrap_or_default(),
            deployment_id: route.deployment_id().to_owned(),
            app_id: route.app_id().to_owned(),
            app_version: route.app_version(),
            scope: route.scope().clone(),
        };
        let call_sid = ids.call_sid.clone();
        let transfer_mode = admitted
            .connection
            .as_ref()
            .map(|c| c.transfer)
            .unwrap_or_default();
        let mut record = routed_event(EventKind::CallOffered, now, &admitted, route);
        record.call_sid = Some(call_sid.clone());
        record.started_at = Some(now.wall);
        let start = CallStart {
            call_id: admitted.call_id.clone(),
            details,
            runtime_url: route.runtime_url().to_owned(),
            start: StartParams {
                ids,
                custom_parameters: custom_parameters(route, &admitted.header_parameters),
                dialect: agent_dialect(route.runtime().dialect),
            },
            connect_timeout: self.config.agent_connect_timeout,
            bridge: BridgeConfig {
                media_timeout: self.config.media_timeout,
                // Strict RTP: besides the SDP address, the INVITE's source IP (callers behind
                // NAT) and the trunk's media networks.
                allowed_sources: AllowedSources {
                    signalling_ip: Some(source.ip()),
                    media_networks: admitted
                        .connection
                        .map(|c| c.media_addresses)
                        .unwrap_or_default(),
                },
                ..BridgeConfig::default()
            },
            reservation: media.reservation,
        };
        tracing::debug!(%call_sid, call_id = %admitted.call_id, explanation = %route.explanation(), "routing call");
        self.calls.insert(
            admitted.call_id.clone(),
            Call {
                record: Box::new(record.clone()),
                call_sid,
                invite_txn: txn,
                transport,
                secure: admitted.secure,
                state: CallState::Ringing,
                dialog: None,
                sdp: media.sdp,
                local_sdp: media.local_sdp,
                awaiting_answer: media.awaiting_answer,
                negotiated: media.negotiated,
                bye_pending: None,
                transfer_mode,
                carrier_host: admitted.carrier_host,
                summary: CallRecord {
                    deployment_id: route.deployment_id().to_owned(),
                    app_id: route.app_id().to_owned(),
                    app_version: route.app_version().to_string(),
                    from: route.caller().map(|c| c.to_string()).unwrap_or_default(),
                    to: route.called().to_string(),
                    rang_at: now.instant,
                    answered_at: None,
                },
            },
        );
        self.by_invite.insert(txn, admitted.call_id);
        self.metrics.calls_active.inc();
        let ringing =
            Refusal::status(180).with("Contact", self.contact(transport, admitted.secure));
        self.reply(now, txn, &ringing);
        self.outputs.push_back(Output::StartCall(Box::new(start)));
        self.emit(record);
    }

    fn take_call_token(&mut self, now: Instant, id: &str, limit: u32) -> bool {
        self.call_rates.take(now, id, limit)
    }
}

/// Every connection's `max_calls_per_second` bucket, shared by all engines (a trunk's calls
/// spread over them by Call-ID). Locked once per INVITE to a rate-limited connection only;
/// bounded by the number of connections.
#[derive(Debug, Clone, Default)]
pub struct CallRates {
    buckets: Arc<Mutex<HashMap<String, CallRate>>>,
}

impl CallRates {
    /// Charges one new call to connection `id`'s bucket of `limit` calls per second (burst:
    /// one second's worth); false when it is empty.
    pub fn take(&self, now: Instant, id: &str, limit: u32) -> bool {
        let limit = f64::from(limit);
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let rate = buckets.entry(id.to_owned()).or_insert(CallRate {
            tokens: limit,
            refilled_at: now,
        });
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
}

/// The address to bind RTP sockets on for an advertised address of the same family.
pub fn rtp_bind_ip(advertised: IpAddr) -> IpAddr {
    if advertised.is_ipv4() {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    } else {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    }
}

/// An event about a routed INVITE: the deployment, app and numbers the route chose.
fn routed_event(kind: EventKind, now: Now, admitted: &Admitted, route: &Route) -> Event {
    let mut event = Event::new(
        kind,
        now.wall,
        route.scope().clone(),
        route.deployment_id().to_owned(),
    );
    event.app_id = Some(route.app_id().to_owned());
    event.app_version = Some(route.app_version());
    event.sip_call_id = Some(admitted.call_id.clone());
    event.from = route.caller().map(|c| c.to_string());
    event.to = Some(route.called().to_string());
    event
}

/// `start.customParameters` for a routed call: the standard keys, then the trunk's header
/// parameters (which never replace a reserved or cohort key).
fn custom_parameters(route: &Route, header_parameters: &[(String, String)]) -> CustomParameters {
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
    let mut params = CustomParameters::for_call(&CallInfo {
        from_number: &caller,
        to_number: &called,
        deployment_id: route.deployment_id(),
        app_id: route.app_id(),
        app_version: route.app_version(),
        split_variant: split_variant.as_deref(),
        user_identifier: cohort.map(|m| m.user_identifier.as_str()),
        app_variables: &variables,
        app_overrides: &overrides,
    });
    for (key, value) in header_parameters {
        params.insert_user(key, value);
    }
    params
}

/// Where a transfer to a number goes: the host (and port) of the INVITE's From URI, i.e. the
/// carrier's own domain or signalling host, which routes numbers it is sent; the INVITE's source
/// address when From is not a SIP URI (a `tel:` From).
fn carrier_host(msg: &switchboard_sip::Message<'_>, source: SocketAddr) -> String {
    let from = msg.from().ok();
    match from.as_ref().and_then(|f| f.uri.as_sip()) {
        Some(uri) => match uri.port {
            Some(port) => format!("{}:{port}", uri.host),
            None => uri.host.to_string(),
        },
        None => source.to_string(),
    }
}

/// The trunk's `media_encryption` as the SDP layer takes it; a call with no known trunk (it
/// will be refused by routing anyway) gets the default.
/// The app version's dialect as the media crate speaks it.
fn agent_dialect(dialect: model::Dialect) -> AgentDialect {
    match dialect {
        model::Dialect::Twilio => AgentDialect::Twilio,
        model::Dialect::L16Wideband => AgentDialect::L16Wideband,
    }
}

fn media_policy(connection: Option<&Connection>) -> MediaEncryption {
    match connection.map(|c| c.media_encryption).unwrap_or_default() {
        model::MediaEncryption::Disable => MediaEncryption::Disable,
        model::MediaEncryption::Allow => MediaEncryption::Allow,
        model::MediaEncryption::Require => MediaEncryption::Require,
    }
}
