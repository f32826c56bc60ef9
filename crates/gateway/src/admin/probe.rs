//! Agent runtime health probes: a WebSocket handshake to each version's `runtime_url`.
//!
//! A successful handshake (then a polite close) marks the version `ready`; a refused connection,
//! a failed upgrade or a timeout marks it `error` with `status_detail` saying which. The result is
//! written to the store first and then applied to the routing table, like any other write, so a
//! runtime that goes down stops taking new calls. Status is only written when it changes, so the
//! periodic re-probe costs no writes while nothing changes.

use std::time::Duration;

use futures_util::StreamExt as _;
use switchboard_media::AgentTls;
use switchboard_routing::model::{AppVersion, RuntimeStatus, Scope};
use switchboard_routing::Change;
use tokio_util::sync::CancellationToken;

use crate::state::AppState;

/// How many runtimes are probed at once by the periodic sweep: enough to finish a sweep of
/// hundreds of versions well within one interval, few enough not to look like a flood.
const PROBE_CONCURRENCY: usize = 16;

/// Handshakes with `url` within `timeout`, verifying a `wss://` runtime's certificate with
/// `tls`. `Err` carries the human-readable reason (for TLS: untrusted issuer, expired, wrong
/// host name, as rustls words it).
pub async fn handshake(url: &str, timeout: Duration, tls: &AgentTls) -> Result<(), String> {
    let connect =
        tokio_tungstenite::connect_async_tls_with_config(url, None, false, Some(tls.connector()));
    match tokio::time::timeout(timeout, connect).await {
        Err(_) => Err(format!(
            "no WebSocket handshake within {} ms",
            timeout.as_millis()
        )),
        Ok(Err(e)) => Err(format!("WebSocket handshake failed: {e}")),
        Ok(Ok((mut ws, _response))) => {
            // Close politely so the runtime does not log an aborted session; a failure to close
            // does not make the runtime unhealthy.
            let _ = tokio::time::timeout(timeout, ws.close(None)).await;
            let _ = tokio::time::timeout(timeout, ws.next()).await;
            Ok(())
        }
    }
}

/// Probes one version in the background (right after it is written).
pub fn spawn_probe(state: AppState, scope: Scope, version: AppVersion) {
    tokio::spawn(async move { probe_and_record(&state, &scope, &version).await });
}

/// Probes `version` and records the outcome if it changed the status.
pub async fn probe_and_record(state: &AppState, scope: &Scope, version: &AppVersion) {
    let timeout = Duration::from_millis(state.config.admin.probe_timeout_ms);
    let outcome = handshake(&version.runtime_url, timeout, &state.agent_tls).await;
    let (status, detail) = match outcome {
        Ok(()) => (RuntimeStatus::Ready, None),
        Err(reason) => (RuntimeStatus::Error, Some(reason)),
    };
    let label = if status == RuntimeStatus::Ready {
        "ready"
    } else {
        "error"
    };
    state
        .metrics
        .runtime_probes
        .with_label_values(&[label])
        .inc();
    let _write = state.write_lock().await;
    // Re-read under the lock: the version may have been replaced or deleted while we probed.
    let current = match state
        .store
        .get_app_version(scope, &version.app_id, version.version)
        .await
    {
        Ok(Some(v)) => v,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(error = %e, app_id = %version.app_id, version = version.version, "probe: store read failed");
            return;
        }
    };
    if current.runtime_url != version.runtime_url
        || (current.status == status && current.status_detail == detail)
    {
        return;
    }
    let updated = AppVersion {
        status,
        status_detail: detail,
        ..current
    };
    match state.store.put_app_version(scope, &updated).await {
        Ok(_) => {
            match &updated.status_detail {
                Some(reason) => {
                    tracing::warn!(app_id = %updated.app_id, version = updated.version, url = %updated.runtime_url, %reason, "runtime status changed to error")
                }
                None => {
                    tracing::info!(app_id = %updated.app_id, version = updated.version, status = label, "runtime status changed")
                }
            }
            state
                .apply(&[Change::UpsertAppVersion(scope.clone(), updated)])
                .await;
        }
        Err(e) => tracing::warn!(error = %e, "probe: storing the runtime status failed"),
    }
}

/// Re-probes every known version each `interval` until `shutdown`. The list is the routing
/// table's, so versions written by other gateways (applied by the change listener) are probed too.
pub async fn run_periodic(state: AppState, interval: Duration, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await; // the first tick is immediate; versions were just probed on write
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let versions = state.runtimes();
        let sweep = futures_util::stream::iter(versions)
            .map(|(scope, version)| {
                let state = state.clone();
                async move { probe_and_record(&state, &scope, &version).await }
            })
            .buffer_unordered(PROBE_CONCURRENCY)
            .collect::<Vec<()>>();
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = sweep => {}
        }
    }
}
