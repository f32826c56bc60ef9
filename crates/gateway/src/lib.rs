//! switchboard: the gateway daemon.
//!
//! Layout, top to bottom:
//! - [`config`]: TOML + environment configuration, every problem reported at once.
//! - [`state`]: [`state::AppState`], what every part shares (routing table, store, metrics).
//! - [`live_calls`]: the registry entry of a call in progress, for the admin side.
//! - [`events`]: call and deployment events (SSE streams, webhooks) and their bus.
//! - [`webhooks`]: signed, outbox-backed delivery of events to HTTP receivers.
//! - [`admin`]: the admin HTTP API (hyper 1) that writes the store and hot-swaps the routing table.
//! - [`metrics`]: Prometheus metrics, served by the admin listener at `/metrics`.
//! - [`sip`]: sockets, transactions, trunk auth and the call flow (the SIP side).
//! - [`tls`]: certificates for the SIP TLS and admin HTTPS listeners, reloaded on SIGHUP.
//!
//! [`start`] binds every listener (port 0 allowed) and returns a [`Running`] gateway with the
//! bound addresses; [`run`] is `start` + wait for the shutdown token. Cancelling the shutdown
//! token stops at once: live calls get BYE, in-flight admin work finishes, and it returns.
//! [`run_until`] adds the graceful drain the binary uses on SIGTERM (see [`Stop`]).

pub mod admin;
pub mod config;
pub mod events;
pub mod live_calls;
pub mod metrics;
pub mod sip;
pub mod state;
pub mod tls;
pub mod webhooks;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use switchboard_store::Store;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::auth::{Keyring, GENERATED_KEY_SETTING};
use crate::config::{ApiKey, Config};
use crate::metrics::Metrics;
use crate::state::AppState;

/// How long shutdown waits for in-flight requests and calls before giving up on them.
/// Long enough for an admin write to commit; calls are asked to hang up well within it.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the drain logs how many calls are left.
const DRAIN_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// How a running gateway is asked to stop gracefully (the binary maps signals onto these).
#[derive(Debug, Clone, Default)]
pub struct Stop {
    /// Cancel to drain (SIGTERM): `/readyz` answers 503, new INVITEs a stateless 503 +
    /// Retry-After, OPTIONS 503; live calls go on until they end or `[shutdown]
    /// grace_period_secs` passes (then BYE, Q.850 41); the gateway stops once none is left.
    pub drain: CancellationToken,
    /// Cancel to end every live call now (a second SIGTERM, or SIGINT), then stop the same way.
    pub end_calls: CancellationToken,
}

/// Addresses the SIP service bound (filled in by the SIP side's start hook).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SipAddrs {
    pub udp: SocketAddr,
    pub tcp: SocketAddr,
    /// The SIP over TLS listener, when `[sip] tls` is set.
    pub tls: Option<SocketAddr>,
}

/// A started gateway: bound addresses, shared state, and the handle to stop it.
#[derive(Debug)]
pub struct Running {
    /// Bound SIP UDP address; `None` until the SIP service is wired in.
    pub sip_udp: Option<SocketAddr>,
    /// Bound SIP TCP address; `None` until the SIP service is wired in.
    pub sip_tcp: Option<SocketAddr>,
    /// Bound SIP TLS address; `None` without `[sip] tls`.
    pub sip_tls: Option<SocketAddr>,
    /// Bound admin HTTP address.
    pub admin: SocketAddr,
    /// Bound `[metrics] listen` address, when configured.
    pub metrics: Option<SocketAddr>,
    /// The shared state (tests look at `state.routing` directly).
    pub state: AppState,
    shutdown: CancellationToken,
    stop: Stop,
    tasks: TaskTracker,
    /// One token per SIP engine, dropped once it has drained: the drain is over when all are.
    engines: TaskTracker,
}

impl Running {
    /// The drain controls of this gateway (see [`Stop`]).
    pub fn stop_signals(&self) -> Stop {
        self.stop.clone()
    }

    /// The token that stops this gateway; cancel it (or call [`Running::stop`]) to shut down.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// The one JSON line printed on stdout at start, for tests and supervisors to read.
    pub fn listening_line(&self) -> String {
        // Written by hand so that "event" comes first for humans reading the log.
        let addr = |a: Option<SocketAddr>| match a {
            Some(a) => format!("\"{a}\""),
            None => "null".to_owned(),
        };
        format!(
            r#"{{"event":"listening","sip_udp":{},"sip_tcp":{},"sip_tls":{},"admin":"{}","metrics":{}}}"#,
            addr(self.sip_udp),
            addr(self.sip_tcp),
            addr(self.sip_tls),
            self.admin,
            addr(self.metrics),
        )
    }

    /// Waits until the shutdown token is cancelled, or a drain (see [`Stop`]) has seen the last
    /// call end; then stops everything and waits for the tasks (bounded by [`DRAIN_TIMEOUT`]).
    pub async fn wait(self) {
        tokio::select! {
            () = self.shutdown.cancelled() => {}
            () = self.stop.drain.cancelled() => self.drain_calls().await,
            () = self.stop.end_calls.cancelled() => self.drain_calls().await,
        }
        self.shutdown.cancel();
        self.tasks.close();
        if tokio::time::timeout(DRAIN_TIMEOUT, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                remaining = self.tasks.len(),
                "drain timed out; exiting anyway"
            );
        }
    }

    /// The drain: readiness off, then wait for every SIP engine to see its last call end (they
    /// all keep serving until then, since each owns a share of the SIP port's datagrams),
    /// logging the calls left every [`DRAIN_LOG_INTERVAL`].
    async fn drain_calls(&self) {
        self.state.mark_draining();
        let grace = self.state.config.shutdown.grace_period_secs;
        tracing::info!(
            calls = self.state.calls.len(),
            grace_period_secs = grace,
            "draining: new calls refused, live calls go on"
        );
        self.engines.close();
        let mut log = tokio::time::interval(DRAIN_LOG_INTERVAL);
        log.tick().await;
        loop {
            tokio::select! {
                () = self.engines.wait() => break,
                () = self.shutdown.cancelled() => return,
                _ = log.tick() => tracing::info!(calls = self.state.calls.len(), "draining: calls left"),
            }
        }
        tracing::info!("drained: the last call has ended");
    }

    /// Cancels the shutdown token and stops at once (live calls get BYE).
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.wait().await;
    }
}

/// Binds every listener, loads the routing snapshot from the store and spawns the services.
/// Returns once the gateway is serving and ready; the caller owns the returned [`Running`].
///
/// Order matters: the admin listener is bound first (so `/healthz` answers and `/readyz` says
/// "loading" during a long load), the store subscription is taken before the snapshot is read
/// (so no change committed meanwhile is missed; re-applying one is harmless), and the gateway is
/// marked ready only after the snapshot is in place.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    let shutdown = CancellationToken::new();
    let stop = Stop::default();
    let tasks = TaskTracker::new();
    let engines = TaskTracker::new();
    let started = start_services(config, shutdown.clone(), &stop, tasks.clone(), &engines).await;
    match started {
        Ok((state, Bound { admin, metrics }, sip_addrs)) => Ok(Running {
            sip_udp: sip_addrs.map(|a| a.udp),
            sip_tcp: sip_addrs.map(|a| a.tcp),
            sip_tls: sip_addrs.and_then(|a| a.tls),
            admin,
            metrics,
            state,
            shutdown,
            stop,
            tasks,
            engines,
        }),
        Err(e) => {
            // Stop whatever was already spawned before reporting the failure.
            shutdown.cancel();
            tasks.close();
            let _ = tokio::time::timeout(DRAIN_TIMEOUT, tasks.wait()).await;
            Err(e)
        }
    }
}

async fn start_services(
    config: Config,
    shutdown: CancellationToken,
    stop: &Stop,
    tasks: TaskTracker,
    engines: &TaskTracker,
) -> anyhow::Result<(AppState, Bound, Option<SipAddrs>)> {
    let config = Arc::new(config);
    let metrics = Arc::new(Metrics::new().context("registering metrics")?);
    let store = Store::open(&config.store.url)
        .await
        .context("opening the store")?;
    let generated = generated_admin_key(&config, &store).await?;
    let keyring = Keyring::new(&config.admin, generated);
    let agent_tls = switchboard_media::AgentTls::new(config.media.agent_ca_file.as_deref())
        .context("loading the TLS trust for wss:// agent runtimes")?;
    tracing::debug!(anchors = agent_tls.anchors(), "agent TLS trust loaded");
    let state = AppState::new(config.clone(), metrics, store.clone(), keyring, agent_tls)
        .context("creating the routing table")?;
    let notices = store.subscribe();

    let admin_listener = TcpListener::bind(config.admin.listen)
        .await
        .with_context(|| format!("binding the admin listener on {}", config.admin.listen))?;
    let admin = admin_listener
        .local_addr()
        .context("admin listener address")?;
    let mut reloadable = Vec::new();
    let admin_tls = match (&config.admin.tls_cert, &config.admin.tls_key) {
        (Some(cert), Some(key)) => {
            let cert = tls::ReloadingCert::load("admin", cert, key).context("[admin] tls")?;
            reloadable.push(Arc::clone(&cert));
            let server = tls::server_config(cert, None, &[b"http/1.1"]).context("[admin] tls")?;
            Some(tokio_rustls::TlsAcceptor::from(server))
        }
        _ => None,
    };
    tasks.spawn(admin::listener::serve(
        admin_listener,
        admin_tls,
        state.clone(),
        shutdown.clone(),
        tasks.clone(),
    ));

    let mut metrics = None;
    if let Some(listen) = config.metrics.listen {
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding the metrics listener on {listen}"))?;
        let bound = listener.local_addr().context("metrics listener address")?;
        tracing::info!(%bound, "metrics, healthz and readyz listening");
        metrics = Some(bound);
        tasks.spawn(admin::listener::serve_probes(
            listener,
            state.clone(),
            shutdown.clone(),
            tasks.clone(),
        ));
    }

    {
        let _write = state.write_lock().await;
        state
            .load_snapshot()
            .await
            .context("building the routing snapshot from the store")?;
    }
    tasks.spawn(admin::sync::follow_remote_changes(
        state.clone(),
        notices,
        shutdown.clone(),
    ));
    // Runtimes are probed once now (their stored status may be stale after a restart), then
    // every `probe_interval_secs`.
    for (scope, version) in state.runtimes() {
        let state = state.clone();
        tasks.spawn(async move { admin::probe::probe_and_record(&state, &scope, &version).await });
    }
    let interval = Duration::from_secs(config.admin.probe_interval_secs);
    tasks.spawn(admin::probe::run_periodic(
        state.clone(),
        interval,
        shutdown.clone(),
    ));

    // SIP service hook: the SIP side replaces `None` with its start call, e.g.
    // `Some(sip::start(&state, shutdown.clone(), &tasks).await?)`.
    let (sip_addrs, sip_cert) = sip::start(&state, shutdown.clone(), stop, &tasks, engines).await?;
    reloadable.extend(sip_cert);
    // Always installed, so that SIGHUP (`systemctl reload`) never kills a gateway without TLS.
    match tls::reload_on_sighup(reloadable, shutdown.clone()) {
        Ok(reloader) => {
            tasks.spawn(reloader);
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot install the SIGHUP handler: certificates will not be reloaded")
        }
    }
    let sip_addrs = Some(sip_addrs);
    // Webhooks: pending deliveries in the outbox resume here after a restart.
    webhooks::spawn(&state, shutdown.clone(), &tasks);

    state.mark_ready();
    tracing::info!(%admin, store = config.store.url.split("://").next().unwrap_or(""), "switchboard started");
    Ok((state, Bound { admin, metrics }, sip_addrs))
}

/// The HTTP listeners' bound addresses.
#[derive(Debug)]
struct Bound {
    admin: SocketAddr,
    metrics: Option<SocketAddr>,
}

/// With no `[admin] api_keys`, the admin key generated on first start (kept as a store setting
/// and printed once, to stderr); `None` when keys are configured.
async fn generated_admin_key(config: &Config, store: &Store) -> anyhow::Result<Option<ApiKey>> {
    if !config.admin.api_keys.is_empty() {
        return Ok(None);
    }
    if let Some(existing) = store
        .get_setting(GENERATED_KEY_SETTING)
        .await
        .context("reading the admin key")?
    {
        return Ok(Some(ApiKey::new(existing)));
    }
    let fresh = admin::auth::generate_key();
    // Two gateways starting at once on one database agree on whichever key was stored first.
    let kept = store
        .put_setting_if_absent(GENERATED_KEY_SETTING, fresh.expose())
        .await
        .context("storing the generated admin key")?;
    if kept == fresh.expose() {
        eprintln!(
            "switchboard: no [admin] api_keys configured, so an admin API key was generated and stored.\n\
             switchboard: it is shown only this once; send it as the X-API-Key header:\n\n    {kept}\n"
        );
    }
    Ok(Some(ApiKey::new(kept)))
}

/// Runs the gateway until `shutdown` is cancelled, then stops at once (live calls get BYE).
/// Prints the `listening` line.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let running = start(config).await?;
    println!("{}", running.listening_line());
    let own = running.shutdown_token();
    tokio::select! {
        () = shutdown.cancelled() => own.cancel(),
        () = own.cancelled() => {}
    }
    running.wait().await;
    Ok(())
}

/// Runs the gateway until a drain started by `stop` is over (see [`Stop`]). Prints the
/// `listening` line.
pub async fn run_until(config: Config, stop: Stop) -> anyhow::Result<()> {
    let running = start(config).await?;
    println!("{}", running.listening_line());
    let own = running.stop_signals();
    tokio::spawn(async move {
        tokio::select! {
            () = stop.drain.cancelled() => own.drain.cancel(),
            () = stop.end_calls.cancelled() => own.end_calls.cancel(),
        }
        // A drain may still be escalated to ending the calls now.
        stop.end_calls.cancelled().await;
        own.end_calls.cancel();
    });
    running.wait().await;
    Ok(())
}
