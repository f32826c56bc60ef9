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
//!
//! [`start`] binds every listener (port 0 allowed) and returns a [`Running`] gateway with the
//! bound addresses; [`run`] is `start` + wait for the shutdown token + drain. Shutdown is one
//! [`CancellationToken`]: cancelling it stops accepting, lets in-flight work finish, and returns.

pub mod admin;
pub mod config;
pub mod events;
pub mod live_calls;
pub mod metrics;
pub mod sip;
pub mod state;
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

/// Addresses the SIP service bound (filled in by the SIP side's start hook).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SipAddrs {
    pub udp: SocketAddr,
    pub tcp: SocketAddr,
}

/// A started gateway: bound addresses, shared state, and the handle to stop it.
#[derive(Debug)]
pub struct Running {
    /// Bound SIP UDP address; `None` until the SIP service is wired in.
    pub sip_udp: Option<SocketAddr>,
    /// Bound SIP TCP address; `None` until the SIP service is wired in.
    pub sip_tcp: Option<SocketAddr>,
    /// Bound admin HTTP address.
    pub admin: SocketAddr,
    /// The shared state (tests look at `state.routing` directly).
    pub state: AppState,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl Running {
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
            r#"{{"event":"listening","sip_udp":{},"sip_tcp":{},"admin":"{}"}}"#,
            addr(self.sip_udp),
            addr(self.sip_tcp),
            self.admin
        )
    }

    /// Waits until the shutdown token is cancelled and every task has drained (bounded by
    /// [`DRAIN_TIMEOUT`]).
    pub async fn wait(self) {
        self.shutdown.cancelled().await;
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

    /// Cancels the shutdown token and drains.
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
    let tasks = TaskTracker::new();
    match start_services(config, shutdown.clone(), tasks.clone()).await {
        Ok((state, admin, sip_addrs)) => Ok(Running {
            sip_udp: sip_addrs.map(|a| a.udp),
            sip_tcp: sip_addrs.map(|a| a.tcp),
            admin,
            state,
            shutdown,
            tasks,
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
    tasks: TaskTracker,
) -> anyhow::Result<(AppState, SocketAddr, Option<SipAddrs>)> {
    let config = Arc::new(config);
    let metrics = Arc::new(Metrics::new().context("registering metrics")?);
    let store = Store::open(&config.store.url)
        .await
        .context("opening the store")?;
    let generated = generated_admin_key(&config, &store).await?;
    let keyring = Keyring::new(&config.admin, generated);
    let state = AppState::new(config.clone(), metrics, store.clone(), keyring)
        .context("creating the routing table")?;
    let notices = store.subscribe();

    let admin_listener = TcpListener::bind(config.admin.listen)
        .await
        .with_context(|| format!("binding the admin listener on {}", config.admin.listen))?;
    let admin = admin_listener
        .local_addr()
        .context("admin listener address")?;
    tasks.spawn(admin::serve(
        admin_listener,
        state.clone(),
        shutdown.clone(),
        tasks.clone(),
    ));

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
    let sip_addrs: Option<SipAddrs> = Some(sip::start(&state, shutdown.clone(), &tasks).await?);
    // Webhooks: pending deliveries in the outbox resume here after a restart.
    webhooks::spawn(&state, shutdown.clone(), &tasks);

    state.mark_ready();
    tracing::info!(%admin, store = config.store.url.split("://").next().unwrap_or(""), "switchboard started");
    Ok((state, admin, sip_addrs))
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

/// Runs the gateway until `shutdown` is cancelled, then drains. Prints the `listening` line.
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
