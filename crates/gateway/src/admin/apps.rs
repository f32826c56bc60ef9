//! Agent versions: which runtime serves version N of an app, and whether it is up (seed 004's
//! lifecycle: `provisioning` → `ready` | `error`, with `status_detail` saying why).
//!
//! A PUT stores the version as `provisioning` and starts a probe at once; the periodic prober in
//! [`super::probe`] re-checks every version afterwards.

use http::{Response, StatusCode};
use serde_json::{json, Value};
use switchboard_routing::model::{AppVersion, Dialect, RuntimeStatus, Scope};
use switchboard_routing::Change;
use switchboard_store::StoreError;

use super::error::{json_response, ApiError};
use super::request::{
    at, body_loc, deny_unknown, object, optional, read_json, required, string, Loc, Problems,
};
use super::{probe, validate, Body, Ctx, RequestBody};

/// Longest runtime URL accepted.
const MAX_URL_CHARS: usize = 2048;

/// `PUT /apps/{app_id}/versions/{version}`: 200 with the version, `status: "provisioning"` for a
/// new runtime URL (the status it had when the URL is unchanged), probed at once.
pub async fn put(cx: &Ctx, body: RequestBody) -> Result<Response<Body>, ApiError> {
    let scope = cx.scope()?;
    let mut p = Problems::default();
    let (app_id, version) = path_ids(cx, &mut p);
    let value = read_json(&cx.headers, body, cx.max_body()).await?;
    let root = body_loc();
    let mut fields = None;
    if let Some(map) = object(&value, &root, &mut p) {
        deny_unknown(map, &["runtime_url", "dialect"], &root, &mut p);
        let url = required(map, "runtime_url", &root, &mut p)
            .and_then(|v| runtime_url(v, at(&root, "runtime_url"), &mut p));
        let dialect = optional(map, "dialect").map(|v| {
            let dialect = v.as_str().and_then(Dialect::from_name);
            if dialect.is_none() {
                p.push(
                    at(&root, "dialect"),
                    "literal_error",
                    "Input should be 'twilio' or 'l16-16k'",
                );
            }
            dialect
        });
        fields = Some((url, dialect));
    }
    p.finish()?;
    let (Some(app_id), Some(version), Some((Some(runtime_url), dialect))) =
        (app_id, version, fields)
    else {
        return Err(ApiError::invalid(root, "missing", "Field required"));
    };
    let app_version = AppVersion {
        app_id,
        version,
        runtime_url,
        dialect: dialect.flatten().unwrap_or_default(),
        status: RuntimeStatus::Provisioning,
        status_detail: None,
    };
    let app_version = {
        let _write = cx.state.write_lock().await;
        // Re-registering the same runtime keeps its known status: resetting a ready version to
        // provisioning would turn its calls away until the probe answers.
        let existing = cx
            .state
            .store
            .get_app_version(&scope, &app_version.app_id, app_version.version)
            .await?;
        let app_version = match existing {
            Some(old)
                if old.runtime_url == app_version.runtime_url
                    && old.dialect == app_version.dialect =>
            {
                AppVersion {
                    status: old.status,
                    status_detail: old.status_detail,
                    ..app_version
                }
            }
            _ => app_version,
        };
        cx.state.store.put_app_version(&scope, &app_version).await?;
        cx.state
            .apply(&[Change::UpsertAppVersion(scope.clone(), app_version.clone())])
            .await;
        app_version
    };
    probe::spawn_probe(cx.state.clone(), scope, app_version.clone());
    Ok(json_response(StatusCode::OK, &app_version))
}

/// `GET /apps/{app_id}/versions/{version}`.
pub async fn get(cx: &Ctx) -> Result<Response<Body>, ApiError> {
    let scope = cx.scope()?;
    let (app_id, version) = checked_path_ids(cx)?;
    let v = cx
        .state
        .store
        .get_app_version(&scope, &app_id, version)
        .await?
        .ok_or_else(|| not_found(&app_id, version))?;
    Ok(json_response(StatusCode::OK, &v))
}

/// `GET /apps/{app_id}/versions`: `{"items": [...], "total"}`.
pub async fn list(cx: &Ctx) -> Result<Response<Body>, ApiError> {
    let scope = cx.scope()?;
    let items = cx
        .state
        .store
        .list_app_versions(&scope, cx.params.get("app_id"))
        .await?;
    Ok(json_response(
        StatusCode::OK,
        &json!({ "total": items.len(), "items": items }),
    ))
}

/// `DELETE /apps/{app_id}/versions/{version}`: 204; 409 while a deployment or split uses it.
pub async fn delete(cx: &Ctx) -> Result<Response<Body>, ApiError> {
    let scope = cx.scope()?;
    let (app_id, version) = checked_path_ids(cx)?;
    let _write = cx.state.write_lock().await;
    if let Some(user) = in_use_by(cx, &scope, &app_id, version).await? {
        return Err(ApiError::Conflict {
            detail: format!("{app_id} version {version} is in use by {user}"),
        });
    }
    cx.state
        .store
        .delete_app_version(&scope, &app_id, version)
        .await
        .map_err(|e| match e {
            StoreError::NotFound { .. } => not_found(&app_id, version),
            other => other.into(),
        })?;
    cx.state
        .apply(&[Change::RemoveAppVersion(scope, app_id, version)])
        .await;
    Ok(super::no_content())
}

async fn in_use_by(
    cx: &Ctx,
    scope: &Scope,
    app_id: &str,
    version: u32,
) -> Result<Option<String>, ApiError> {
    let deployment = cx
        .state
        .routing
        .load()
        .deployments()
        .find(|(s, d)| *s == scope && d.app_id == app_id && d.app_version == version)
        .map(|(_, d)| format!("deployment {}", d.deployment_id));
    if deployment.is_some() {
        return Ok(deployment);
    }
    let split = cx.state.store.get_traffic_split(scope, app_id).await?;
    Ok(split
        .filter(|s| s.percentages.contains_key(&version))
        .map(|_| "its traffic split".to_owned()))
}

fn not_found(app_id: &str, version: u32) -> ApiError {
    ApiError::not_found(format!("App {app_id} version {version}"))
}

/// `{app_id}` and `{version}` of the path, reporting problems at `["path", …]`.
fn path_ids(cx: &Ctx, p: &mut Problems) -> (Option<String>, Option<u32>) {
    let app_id = validate::id_text(
        cx.params.get("app_id"),
        vec!["path".into(), "app_id".into()],
        p,
    );
    let version = match cx.params.get("version").parse::<u32>() {
        Ok(v) => Some(v),
        Err(_) => {
            p.push(
                vec!["path".into(), "version".into()],
                "int_parsing",
                "Input should be a valid integer",
            );
            None
        }
    };
    (app_id, version)
}

fn checked_path_ids(cx: &Ctx) -> Result<(String, u32), ApiError> {
    let mut p = Problems::default();
    let ids = path_ids(cx, &mut p);
    p.finish()?;
    match ids {
        (Some(a), Some(v)) => Ok((a, v)),
        _ => Err(ApiError::invalid(
            vec!["path".into()],
            "missing",
            "Field required",
        )),
    }
}

/// A `ws://` or `wss://` URL with a host.
fn runtime_url(v: &Value, loc: Loc, p: &mut Problems) -> Option<String> {
    let s = string(v, loc.clone(), p)?;
    if s.len() > MAX_URL_CHARS {
        p.push(
            loc,
            "string_too_long",
            format!("String should have at most {MAX_URL_CHARS} characters"),
        );
        return None;
    }
    let ok = s.parse::<http::Uri>().ok().filter(|u| {
        matches!(u.scheme_str(), Some("ws" | "wss")) && u.host().is_some_and(|h| !h.is_empty())
    });
    if ok.is_none() {
        p.push(
            loc,
            "url_scheme",
            "URL scheme should be 'ws' or 'wss', with a host (e.g. ws://agent.internal:8765/media)",
        );
        return None;
    }
    Some(s.to_owned())
}
