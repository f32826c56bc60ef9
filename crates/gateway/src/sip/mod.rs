//! The SIP front end: sockets, transaction driving, trunk auth, routing decisions, call flow.
//!
//! Layout (read top to bottom):
//! - [`service`]: the SIP engines (one per core): socket, call flow and call tasks.
//! - [`flow`]: the call flow as a sans-IO state machine ([`flow::CallFlow`]).
//! - [`refusal`]: every refusal and hang-up reason (status, Reason, Warning, Retry-After).
//! - [`call`]: one task per call: agent WebSocket, RTP bridge, port pair.
//! - [`ports`]: RTP port pairs with an RAII guard.
//! - [`guard`]: screening before state: trusted / untrusted / banned sources, TCP slots.
//! - [`rate_limit`]: per-source token buckets applied in the socket readers.
//! - [`metrics`]: SIP counters on the gateway's Prometheus registry.
//! - [`identity`]: called and calling numbers of an INVITE.
//! - [`agent_headers`]: INVITE headers passed to the agent (per connection, bounded).
//! - [`screen`]: RFC 3261 §8.2 request screening (405/501/483/420/415/406).
//! - [`trunk`]: source allowlists and digest authentication per connection.
//! - [`transport`]: UDP/TCP/TLS listeners, readers with rate limiting, non-blocking sends.
//!
//! # Decisions (what a production SBC facing carriers does)
//! - **Screening before state**: a source no connection admits is dropped before its datagram
//!   is copied (`[sip] untrusted = "drop"`, the default) or gets a stateless 403 (`reject`);
//!   its TCP connections are closed at accept. Scanners learn nothing.
//! - **Stateless refusals**: every answer that refuses a request before a call is taken on
//!   (400, 401, 403, 404, 480, 482, 483, 488, 503, ...) and every out-of-dialog OPTIONS answer
//!   leaves no transaction behind ([`switchboard_sip::Endpoint::respond_stateless`]); only
//!   accepted calls (180/200) hold an INVITE server transaction.
//! - **OPTIONS keep-alives** from trusted sources get 200 (Allow, Accept, Supported).
//! - **Responses** to UDP requests go to the packet's source address and port: the reader
//!   adds `rport` to every UDP request's top Via ([`transport::request_rport`]), so the
//!   endpoint's RFC 3581 routing applies whether or not the peer asked. Behind NAT the Via
//!   port is fiction; a trunk's signalling source is where it listens. TCP responses use
//!   the connection the request came on; so do TLS responses and our in-dialog requests.
//! - **Our BYE** waits for the ACK of our 200 (RFC 3261 §15) and carries a Reason header.
//! - **Unknown numbers** from sources no trunk admits get 403, not 404: strangers cannot
//!   probe which numbers exist. Admitted sources get the routing answer.
//! - **Max-Forwards 0** is 483 (we relay calls on to the agent like a proxy), except OPTIONS,
//!   which the element answers itself (RFC 3261 §16.3 step 2).
//! - **Digest**: the `uri` parameter must equal the Request-URI; a wrong password is 403
//!   (not a new 401) so a misconfigured carrier does not loop.
//! - **Transactions and dialogs** are crates/sip's [`Endpoint`], one per engine, owned by its
//!   [`flow::CallFlow`].

pub mod agent_headers;
pub mod call;
pub mod flow;
pub mod guard;
pub mod identity;
pub mod metrics;
pub mod ports;
pub mod rate_limit;
pub mod refusal;
pub mod screen;
pub mod service;
pub mod transport;
pub mod trunk;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use switchboard_sip::{Endpoint, EndpointConfig};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::state::AppState;
use crate::{SipAddrs, Stop};

/// Why the SIP service could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SipStartError {
    #[error("binding the SIP listeners (udp {udp}, tcp {tcp}): {source}")]
    Bind {
        udp: SocketAddr,
        tcp: SocketAddr,
        source: std::io::Error,
    },
    #[error("registering the SIP metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("[media] rtp_ports: {0}")]
    Ports(#[from] ports::PortError),
    #[error("[sip] tls: {0}")]
    Tls(#[from] crate::tls::TlsError),
}

/// Binds the SIP listeners from `[sip] udp/tcp/tls` and spawns the readers and the engine tasks
/// on `tasks`; each engine holds a token of `engine_tasks` until it has drained (the gateway
/// waits for them all, then cancels `shutdown`). Everything stops when `shutdown` is cancelled
/// (answered calls get BYE); `stop` drains (see [`Stop`]).
/// Returns the bound addresses (port 0 resolved) and the TLS certificate, for SIGHUP reloads.
pub async fn start(
    state: &AppState,
    shutdown: CancellationToken,
    stop: &Stop,
    tasks: &TaskTracker,
    engine_tasks: &TaskTracker,
) -> Result<(SipAddrs, Option<Arc<crate::tls::ReloadingCert>>), SipStartError> {
    let config = &state.config;
    let metrics = metrics::SipMetrics::register(state.metrics.registry())?;
    let bind_error = |source| SipStartError::Bind {
        udp: config.sip.udp,
        tcp: config.sip.tcp,
        source,
    };
    let engines = config.sip.engine_count();
    let (tls_config, tls_cert) = match tls_server_config(&config.sip)? {
        Some((addr, server, cert)) => (Some((addr, server)), Some(cert)),
        None => (None, None),
    };
    let listeners = transport::Listeners::bind(config.sip.udp, config.sip.tcp, tls_config, engines)
        .await
        .map_err(bind_error)?;
    let udp = listeners.udp[0].local_addr().map_err(bind_error)?;
    let tcp = listeners.tcp.local_addr().map_err(bind_error)?;
    let tls = match &listeners.tls {
        Some((l, _)) => Some(l.local_addr().map_err(bind_error)?),
        None => None,
    };
    let udp_sockets = listeners.udp.clone();
    let ports = ports::RtpPortAllocator::from_spec(&config.media.rtp_ports)?;
    let (queues, receivers): (Vec<_>, Vec<_>) = (0..engines)
        .map(|_| mpsc::channel(transport::INBOUND_QUEUE))
        .unzip();
    let guard = guard::Guard::new(Arc::clone(&state.routing), &config.sip, metrics.clone());
    let new_limiter = || {
        rate_limit::RateLimiter::new(
            config.sip.rate_limit_per_second,
            config.sip.rate_limit_burst,
        )
    };
    let shared = transport::ReaderShared {
        guard: guard.clone(),
        tagger: switchboard_sip::stateless::StatelessTagger::new(rand::random()),
        max_message_bytes: config.sip.max_message_bytes,
        limiter: Arc::new(Mutex::new(new_limiter())),
        metrics: metrics.clone(),
        engines: queues.into(),
    };
    let outbounds = listeners
        .spawn(shared.clone(), shutdown.clone(), tasks)
        .map_err(bind_error)?;
    // Via and Contact need an address peers can reach: a wildcard listener advertises
    // `[media] advertised_ip` (the gateway's public address) with the bound port.
    let reachable = |bound: SocketAddr| {
        if bound.ip().is_unspecified() {
            SocketAddr::new(config.media.advertised_ip, bound.port())
        } else {
            bound
        }
    };
    let local = flow::LocalAddrs {
        udp: reachable(udp),
        tcp: reachable(tcp),
        tls: tls.map(reachable),
    };
    // One nonce secret for every engine: a challenge from one is answered through another.
    let nonce_secret: [u8; 32] = rand::random();
    let call_rates = flow::CallRates::default();
    let engine_parts = udp_sockets.into_iter().zip(outbounds).zip(receivers);
    for (index, ((socket, outbound), inbound_rx)) in engine_parts.enumerate() {
        let flow = flow::CallFlow::new(
            Endpoint::new(endpoint_config(local.udp.to_string())),
            Arc::clone(&state.routing),
            state.ready_flag(),
            flow::FlowConfig {
                local,
                advertised_ip: config.media.advertised_ip,
                media_timeout: std::time::Duration::from_secs(config.media.timeout_secs),
                agent_connect_timeout: std::time::Duration::from_millis(
                    config.media.agent_connect_timeout_ms,
                ),
                seed: rand::random(),
                call_rates: call_rates.clone(),
                transfer_timeout: std::time::Duration::from_secs(config.sip.transfer_timeout_secs),
            },
            trunk::TrunkAuth::with_secret(nonce_secret.to_vec(), config.sip.nonce_ttl_secs),
            service::BoundPorts::new(ports.clone(), flow::rtp_bind_ip(config.media.advertised_ip)),
            metrics.clone(),
        );
        let (commands_tx, commands_rx) = mpsc::channel(service::CORE_COMMAND_QUEUE);
        let reader = transport::UdpReader::new(socket, &shared, new_limiter());
        let engine = service::Engine::new(
            index,
            flow,
            reader,
            shared.clone(),
            outbound,
            state.clone(),
            commands_tx,
            tasks.clone(),
        );
        let grace = std::time::Duration::from_secs(config.shutdown.grace_period_secs);
        let run = engine.run(
            inbound_rx,
            commands_rx,
            shutdown.clone(),
            stop.clone(),
            grace,
            engine_tasks.token(),
        );
        tasks.spawn(run);
    }
    tracing::info!(%udp, %tcp, tls = ?tls, engines, "SIP listening");
    Ok((SipAddrs { udp, tcp, tls }, tls_cert))
}

/// The TLS listener's address, server configuration and reloadable certificate, when
/// `[sip] tls` is set (config validation has checked the files already; they are read again
/// here, so a file changed in between is still caught).
fn tls_server_config(
    sip: &crate::config::SipConfig,
) -> Result<Option<TlsParts>, crate::tls::TlsError> {
    let (Some(addr), Some(cert), Some(key)) = (sip.tls, &sip.tls_cert, &sip.tls_key) else {
        return Ok(None);
    };
    let reloading = crate::tls::ReloadingCert::load("sip", cert, key)?;
    let server =
        crate::tls::server_config(Arc::clone(&reloading), sip.tls_client_ca.as_deref(), &[])?;
    Ok(Some((addr, server, reloading)))
}

type TlsParts = (
    SocketAddr,
    Arc<rustls::ServerConfig>,
    Arc<crate::tls::ReloadingCert>,
);

/// How the gateway runs the SIP engine: the call layer answers every new INVITE in the same
/// turn (a stateless refusal or 180), so the endpoint holds its `100 Trying` back for the
/// RFC 3261 §17.2.1 200 ms instead of sending one before every refusal.
fn endpoint_config(sent_by: String) -> EndpointConfig {
    let mut config = EndpointConfig::new(sent_by, rand::random());
    config.trying_delay = Some(TRYING_DELAY);
    config
}

/// RFC 3261 §17.2.1: a server transaction sends 100 Trying if the TU has not answered within
/// 200 ms.
const TRYING_DELAY: std::time::Duration = std::time::Duration::from_millis(200);
