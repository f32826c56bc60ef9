//! Deployments (seeds 000, 001, 002): create, read, list, partial update, pause/resume, delete.

use chrono::{SecondsFormat, Utc};
use http::{Response, StatusCode};
use switchboard_routing::model::{
    ChannelDirection, ConnectionConfig, Deployment, DeploymentStatus, Scope,
};
use switchboard_routing::Change;
use switchboard_store::StoreError;

use super::error::{json_response, ApiError};
use super::request::{
    at, body_loc, deny_unknown, object, optional, read_json, required, uint, Problems,
};
use super::{validate, webhook_config, Body, Ctx, RequestBody};

/// Fields of a create request (seed 000).
const CREATE_FIELDS: [&str; 8] = [
    "name",
    "app_id",
    "app_version",
    "connection_configs",
    "description",
    "inbound_config",
    "channel_direction",
    "webhook_config",
];
/// Fields of a partial update (seed 001).
const PATCH_FIELDS: [&str; 6] = [
    "name",
    "description",
    "app_version",
    "connection_configs",
    "inbound_config",
    "webhook_config",
];

/// Default page size of `GET /deployments`, and the largest one accepted.
pub const DEFAULT_PAGE_LIMIT: u64 = 50;
pub const MAX_PAGE_LIMIT: u64 = 500;

/// Attempts at drawing an unused deployment id before giving up (48 random bits make even one
/// retry unlikely).
const ID_ATTEMPTS: usize = 4;

fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// `dep-` + 12 hex digits, in the seed's `dep-a1b2c3d4` style.
fn new_deployment_id() -> String {
    format!("dep-{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff)
}

/// `POST /deployments`: 201 with the full deployment, `status: "active"`.
pub async fn create(cx: &Ctx, body: RequestBody) -> Result<Response<Body>, ApiError> {
    let scope = cx.scope()?;
    let value = read_json(&cx.headers, body, cx.max_body()).await?;
    let mut p = Problems::default();
    let root = body_loc();
    let Some(map) = object(&value, &root, &mut p) else {
        return Err(finish_err(p));
    };
    deny_unknown(map, &CREATE_FIELDS, &root, &mut p);
    let name = required(map, "name", &root, &mut p)
        .and_then(|v| validate::name(v, at(&root, "name"), &mut p));
    let app_id = required(map, "app_id", &root, &mut p)
        .and_then(|v| validate::identifier(v, at(&root, "app_id"), &mut p));
    let app_version = required(map, "app_version", &root, &mut p)
        .and_then(|v| uint(v, at(&root, "app_version"), &mut p));
    let connection_configs = required(map, "connection_configs", &root, &mut p).and_then(|v| {
        validate::connection_configs(
            v,
            cx.country_code(),
            at(&root, "connection_configs"),
            &mut p,
        )
    });
    let description = optional(map, "description")
        .map(|v| validate::description(v, at(&root, "description"), &mut p));
    let inbound_config = optional(map, "inbound_config")
        .map(|v| validate::inbound_config(v, at(&root, "inbound_config"), &mut p));
    let channel_direction = optional(map, "channel_direction")
        .map(|v| validate::channel_direction(v, at(&root, "channel_direction"), &mut p));
    let webhook = optional(map, "webhook_config")
        .and_then(|v| webhook_config::parse(v, at(&root, "webhook_config"), &mut p));
    if let Some(configs) = &connection_configs {
        check_connections_exist(cx, &scope, configs, &mut p).await?;
    }
    p.finish()?;
    let (Some(name), Some(app_id), Some(app_version), Some(connection_configs)) =
        (name, app_id, app_version, connection_configs)
    else {
        // Unreachable: a `None` above always recorded a problem, and `finish` returned it.
        return Err(ApiError::invalid(root, "missing", "Field required"));
    };
    let actor = cx.principal.actor();
    let stamp = now();
    let mut deployment = Deployment {
        deployment_id: String::new(),
        name,
        description: description.flatten(),
        app_id,
        app_version,
        connection_configs,
        channel_direction: channel_direction
            .flatten()
            .unwrap_or(ChannelDirection::Inbound),
        status: DeploymentStatus::Active,
        inbound_config: inbound_config.flatten(),
        webhook_config: webhook.map(Box::new),
        created_by: actor.clone(),
        created_at: stamp.clone(),
        updated_by: actor,
        updated_at: stamp,
    };
    let _write = cx.state.write_lock().await;
    for attempt in 1..=ID_ATTEMPTS {
        deployment.deployment_id = new_deployment_id();
        match cx.state.store.insert_deployment(&scope, &deployment).await {
            Ok(_) => break,
            Err(StoreError::AlreadyExists { .. }) if attempt < ID_ATTEMPTS => continue,
            Err(e) => return Err(e.into()),
        }
    }
    cx.state
        .apply(&[Change::UpsertDeployment(scope, deployment.clone())])
        .await;
    Ok(json_response(
        StatusCode::CREATED,
        &webhook_config::public(&deployment),
    ))
}

/// `GET /deployments/{id}`.
pub async fn get(cx: &Ctx) -> Result<Response<Body>, ApiError> {
    let deployment = load(cx, &cx.scope()?).await?;
    Ok(json_response(
        StatusCode::OK,
        &webhook_config::public(&deployment),
    ))
}

/// `GET /deployments?offset=&limit=`: `{"items": [...], "total", "offset", "limit"}`.
pub async fn list(cx: &Ctx) -> Result<Response<Body>, ApiError> {
    let scope = cx.scope()?;
    let (offset, limit) = cx.page(DEFAULT_PAGE_LIMIT, MAX_PAGE_LIMIT)?;
    let (items, total) = cx
        .state
        .store
        .list_deployments(&scope, offset, limit)
        .await?;
    let items: Vec<serde_json::Value> = items.iter().map(webhook_config::public).collect();
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({ "items": items, "total": total, "offset": offset, "limit": limit }),
    ))
}

/// `PATCH /deployments/{id}` (seed 001): only the fields given; null or omitted = unchanged.
pub async fn patch(cx: &Ctx, body: RequestBody) -> Result<Response<Body>, ApiError> {
    let scope = cx.scope()?;
    let value = read_json(&cx.headers, body, cx.max_body()).await?;
    let mut p = Problems::default();
    let root = body_loc();
    let Some(map) = object(&value, &root, &mut p) else {
        return Err(finish_err(p));
    };
    deny_unknown(map, &PATCH_FIELDS, &root, &mut p);
    let name = optional(map, "name").map(|v| validate::name(v, at(&root, "name"), &mut p));
    let description = optional(map, "description")
        .map(|v| validate::description(v, at(&root, "description"), &mut p));
    let app_version =
        optional(map, "app_version").map(|v| uint(v, at(&root, "app_version"), &mut p));
    let connection_configs = optional(map, "connection_configs").map(|v| {
        validate::connection_configs(
            v,
            cx.country_code(),
            at(&root, "connection_configs"),
            &mut p,
        )
    });
    let inbound_config = optional(map, "inbound_config")
        .map(|v| validate::inbound_config(v, at(&root, "inbound_config"), &mut p));
    // Unlike the seed's fields, an explicit null removes the webhook.
    let webhook = map.get("webhook_config").map(|v| match v.is_null() {
        true => None,
        false => webhook_config::parse(v, at(&root, "webhook_config"), &mut p),
    });
    if let Some(Some(configs)) = &connection_configs {
        check_connections_exist(cx, &scope, configs, &mut p).await?;
    }
    p.finish()?;
    let _write = cx.state.write_lock().await;
    let mut deployment = load(cx, &scope).await?;
    if let Some(Some(v)) = name {
        deployment.name = v;
    }
    if let Some(Some(v)) = description {
        deployment.description = Some(v);
    }
    if let Some(Some(v)) = app_version {
        deployment.app_version = v;
    }
    if let Some(Some(v)) = connection_configs {
        deployment.connection_configs = v;
    }
    if let Some(Some(v)) = inbound_config {
        deployment.inbound_config = Some(v);
    }
    if let Some(v) = webhook {
        deployment.webhook_config = v.map(Box::new);
    }
    commit_update(cx, scope, deployment).await
}

/// `PUT /deployments/{id}/status` (seed 002): `{"action": "pause" | "resume"}`.
pub async fn set_status(cx: &Ctx, body: RequestBody) -> Result<Response<Body>, ApiError> {
    let scope = cx.scope()?;
    let value = read_json(&cx.headers, body, cx.max_body()).await?;
    let mut p = Problems::default();
    let root = body_loc();
    let Some(map) = object(&value, &root, &mut p) else {
        return Err(finish_err(p));
    };
    deny_unknown(map, &["action"], &root, &mut p);
    let status = required(map, "action", &root, &mut p).and_then(|v| match v.as_str() {
        Some("pause") => Some(DeploymentStatus::Paused),
        Some("resume") => Some(DeploymentStatus::Active),
        _ => {
            p.push(
                at(&root, "action"),
                "enum",
                "Input should be 'pause' or 'resume'",
            );
            None
        }
    });
    p.finish()?;
    let Some(status) = status else {
        return Err(ApiError::invalid(
            at(&root, "action"),
            "missing",
            "Field required",
        ));
    };
    let _write = cx.state.write_lock().await;
    let mut deployment = load(cx, &scope).await?;
    deployment.status = status;
    commit_update(cx, scope, deployment).await
}

/// `DELETE /deployments/{id}`: 204; the numbers stop routing at once.
pub async fn delete(cx: &Ctx) -> Result<Response<Body>, ApiError> {
    let scope = cx.scope()?;
    let id = cx.params.get("deployment_id").to_owned();
    let _write = cx.state.write_lock().await;
    cx.state
        .store
        .delete_deployment(&scope, &id)
        .await
        .map_err(|e| not_found_as(e, &id))?;
    cx.state.apply(&[Change::RemoveDeployment(scope, id)]).await;
    Ok(super::no_content())
}

/// Stamps, commits and applies an updated deployment (caller holds the write lock).
async fn commit_update(
    cx: &Ctx,
    scope: Scope,
    mut deployment: Deployment,
) -> Result<Response<Body>, ApiError> {
    deployment.updated_by = cx.principal.actor();
    deployment.updated_at = now();
    let id = deployment.deployment_id.clone();
    cx.state
        .store
        .update_deployment(&scope, &deployment)
        .await
        .map_err(|e| not_found_as(e, &id))?;
    cx.state
        .apply(&[Change::UpsertDeployment(scope, deployment.clone())])
        .await;
    Ok(json_response(
        StatusCode::OK,
        &webhook_config::public(&deployment),
    ))
}

/// The deployment of the path, or 404.
pub async fn load(cx: &Ctx, scope: &Scope) -> Result<Deployment, ApiError> {
    let id = cx.params.get("deployment_id");
    cx.state
        .store
        .get_deployment(scope, id)
        .await?
        .ok_or_else(|| deployment_not_found(id))
}

pub fn deployment_not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("Deployment {id}"))
}

fn not_found_as(e: StoreError, id: &str) -> ApiError {
    match e {
        StoreError::NotFound { .. } => deployment_not_found(id),
        other => other.into(),
    }
}

/// Seed rule: an unknown `connection_id` is a 422 on that item.
async fn check_connections_exist(
    cx: &Ctx,
    scope: &Scope,
    configs: &[ConnectionConfig],
    p: &mut Problems,
) -> Result<(), ApiError> {
    for (i, c) in configs.iter().enumerate() {
        if cx
            .state
            .store
            .get_connection(scope, &c.connection_id)
            .await?
            .is_none()
        {
            p.push(
                at(&at(&at(&body_loc(), "connection_configs"), i), "connection_id"),
                "value_error",
                format!("Value error, unknown connection_id {:?}: create it with PUT /connections/{{connection_id}} first", c.connection_id),
            );
        }
    }
    Ok(())
}

fn finish_err(p: Problems) -> ApiError {
    p.finish().err().unwrap_or_else(|| {
        ApiError::invalid(
            body_loc(),
            "model_attributes_type",
            "Input should be an object",
        )
    })
}
