//! Following writes committed by other gateway instances (PostgreSQL LISTEN/NOTIFY).
//!
//! A notice names a record; the record is re-read from the store and applied (or removed when
//! it is gone), so notices that arrive late, twice or out of order still converge on what the
//! store holds. A subscriber that fell behind (`Lagged`) or a `Resync` notice rebuilds the whole
//! snapshot from the store.

use switchboard_routing::Change;
use switchboard_store::{ChangeNotice, RecordKind, StoreError};
use tokio::sync::broadcast::{self, error::RecvError};
use tokio_util::sync::CancellationToken;

use crate::state::AppState;

/// Applies other instances' changes until `shutdown` or until the store closes the channel.
pub async fn follow_remote_changes(
    state: AppState,
    mut notices: broadcast::Receiver<ChangeNotice>,
    shutdown: CancellationToken,
) {
    loop {
        let received = tokio::select! {
            () = shutdown.cancelled() => return,
            r = notices.recv() => r,
        };
        match received {
            Ok(notice) => {
                if let Err(e) = apply_notice(&state, &notice).await {
                    tracing::warn!(error = %e, kind = %notice.kind, key = %notice.key, "remote change: re-reading failed; rebuilding");
                    rebuild(&state).await;
                }
            }
            Err(RecvError::Lagged(missed)) => {
                tracing::warn!(
                    missed,
                    "remote change notices lagged; rebuilding the routing snapshot"
                );
                rebuild(&state).await;
            }
            Err(RecvError::Closed) => return,
        }
    }
}

async fn rebuild(state: &AppState) {
    let _write = state.write_lock().await;
    if let Err(e) = state.load_snapshot().await {
        tracing::error!(error = %e, "rebuilding the routing snapshot failed");
    }
}

/// What a notice asks of the routing table.
#[derive(Debug)]
enum Action {
    Apply(Box<Change>),
    /// Nothing routing-relevant changed (cohort metadata, settings).
    Ignore,
    /// Changes were missed: rebuild from the store.
    Rebuild,
}

/// The change that brings the routing table in line with the store for one notice.
async fn action_for(state: &AppState, n: &ChangeNotice) -> Result<Action, StoreError> {
    let (store, scope, key) = (&state.store, n.scope.clone(), n.key.clone());
    Ok(Action::Apply(Box::new(match n.kind {
        RecordKind::Deployment => match store.get_deployment(&scope, &key).await? {
            Some(d) => Change::UpsertDeployment(scope, d),
            None => Change::RemoveDeployment(scope, key),
        },
        RecordKind::Connection => match store.get_connection(&scope, &key).await? {
            Some(c) => Change::UpsertConnection(scope, c),
            None => Change::RemoveConnection(scope, key),
        },
        RecordKind::AppVersion => {
            let Some((app_id, version)) = key
                .rsplit_once('/')
                .and_then(|(a, v)| Some((a, v.parse::<u32>().ok()?)))
            else {
                tracing::warn!(key, "remote change: malformed app version key");
                return Ok(Action::Rebuild);
            };
            match store.get_app_version(&scope, app_id, version).await? {
                Some(v) => Change::UpsertAppVersion(scope, v),
                None => Change::RemoveAppVersion(scope, app_id.to_owned(), version),
            }
        }
        RecordKind::TrafficSplit => match store.get_traffic_split(&scope, &key).await? {
            Some(s) => Change::SetSplit(scope, s),
            None => Change::RemoveSplit(scope, key),
        },
        RecordKind::CohortMembers => {
            let members = store.cohort_members_at(&scope, &key, n.revision).await?;
            Change::UpsertCohortMembers(scope, key, members)
        }
        // Cohort metadata and settings do not affect routing.
        RecordKind::Cohort | RecordKind::Setting => return Ok(Action::Ignore),
        // Resync, and kinds this build does not know: rebuild everything.
        _ => return Ok(Action::Rebuild),
    })))
}

/// Re-reads the notice's record and applies it under the write lock.
pub async fn apply_notice(state: &AppState, notice: &ChangeNotice) -> Result<(), StoreError> {
    let _write = state.write_lock().await;
    match action_for(state, notice).await? {
        Action::Apply(change) => {
            state.apply(std::slice::from_ref(&*change)).await;
            state.metrics.remote_changes_applied.inc();
        }
        Action::Ignore => {}
        Action::Rebuild => {
            if let Err(e) = state.load_snapshot().await {
                tracing::error!(error = %e, "rebuilding the routing snapshot failed");
            }
        }
    }
    Ok(())
}
