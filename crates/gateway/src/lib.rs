//! switchboard: the gateway daemon.
//!
//! Layout, top to bottom:
//! - [`config`]: TOML + environment configuration, every problem reported at once.
//! - [`state`]: [`state::AppState`], what every part shares (routing table, store, metrics).
//! - [`admin`]: the admin HTTP API (hyper 1) that writes the store and hot-swaps the routing table.
//! - [`metrics`]: Prometheus metrics, served by the admin listener at `/metrics`.
//! - `sip` (SIP side): sockets, transactions and the call flow.
//!
//! [`start`] binds every listener (port 0 allowed) and returns a [`Running`] gateway with the
//! bound addresses; [`run`] is `start` + wait for the shutdown token + drain. Shutdown is one
//! [`CancellationToken`]: cancelling it stops accepting, lets in-flight work finish, and returns.

pub mod admin;
pub mod config;
pub mod metrics;
pub mod state;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
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

/// Binds every listener, loads the routing snapshot and spawns the services. Returns once the
/// gateway is serving; the caller owns the returned [`Running`].
pub async fn start(config: Config) -> anyhow::Result<Running> {
    let config = Arc::new(config);
    let metrics = Arc::new(Metrics::new().context("registering metrics")?);
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    let state = AppState::new(config.clone(), metrics);

    let admin_listener = TcpListener::bind(config.admin.listen)
        .await
        .with_context(|| format!("binding the admin listener on {}", config.admin.listen))?;
    let admin = admin_listener
        .local_addr()
        .context("admin listener address")?;

    // SIP service hook: the SIP side replaces `None` with its start call, e.g.
    // `Some(sip::start(&state, shutdown.clone(), &tasks).await?)`.
    let sip_addrs: Option<SipAddrs> = None;

    tasks.spawn(admin::serve(
        admin_listener,
        state.clone(),
        shutdown.clone(),
        tasks.clone(),
    ));
    state.mark_ready();
    tracing::info!(%admin, "switchboard started");
    Ok(Running {
        sip_udp: sip_addrs.map(|a| a.udp),
        sip_tcp: sip_addrs.map(|a| a.tcp),
        admin,
        state,
        shutdown,
        tasks,
    })
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
