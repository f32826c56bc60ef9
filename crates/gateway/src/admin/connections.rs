//! Connections (trunks): where a carrier's INVITEs may come from and how they authenticate,
//! (`media_addresses`) which other hosts its RTP may come from (strict RTP), and
//! (`media_encryption`) whether its media must, may or must not be SRTP, and
//! (`headers_to_parameters`, `include_headers`) which INVITE headers reach the agent, and
//! (`transfer`) whether agents may transfer its callers (REFER) or not.
//!
//! `PUT /connections/{id}` creates or replaces; the digest password is write-only (responses
//! show `"password": "***"`), so listing trunks never exposes credentials.

use http::{Response, StatusCode};
use ipnet::IpNet;
use serde_json::{json, Value};
use switchboard_routing::model::{Connection, DigestCredentials, Scope};
use switchboard_routing::Change;
use switchboard_store::StoreError;

use super::error::{json_response, ApiError};
use super::request::{
    array, at, body_loc, deny_unknown, object, optional, read_json, required, string, Problems,
};
use super::{validate, Body, Ctx, RequestBody};

/// Longest provider label / digest username or password accepted.
const MAX_TEXT_CHARS: usize = 256;
/// Ranges per address list (`allowed_addresses`, `media_addresses`); carriers publish a
/// handful of signalling and media subnets.
const MAX_ADDRESS_RANGES: usize = 256;

/// The response shape: the connection with its password redacted.
pub fn redacted(c: &Connection) -> Value {
    json!({
        "connection_id": c.connection_id,
        "allowed_addresses": c.allowed_addresses.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "media_addresses": c.media_addresses.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "digest": c.digest.as_ref().map(|d| json!({ "username": d.username, "password": "***" })),
        "provider": c.provider,
        "max_calls_per_second": c.max_calls_per_second,
        "media_encryption": c.media_encryption.as_str(),
        "headers_to_parameters": c.headers_to_parameters,
        "include_headers": c.include_headers.as_str(),
        "transfer": c.transfer.as_str(),
    })
}

/// `PUT /connections/{connection_id}`: 200 with the stored connection.
pub async fn put(cx: &Ctx, body: RequestBody) -> Result<Response<Body>, ApiError> {
    let scope = cx.scope()?;
    let mut p = Problems::default();
    let id = validate::id_text(
        cx.params.get("connection_id"),
        vec!["path".into(), "connection_id".into()],
        &mut p,
    );
    let value = read_json(&cx.headers, body, cx.max_body()).await?;
    let root = body_loc();
    let map = object(&value, &root, &mut p);
    let mut parsed = None;
    if let Some(map) = map {
        deny_unknown(
            map,
            &[
                "allowed_addresses",
                "media_addresses",
                "digest",
                "provider",
                "max_calls_per_second",
                "media_encryption",
                "headers_to_parameters",
                "include_headers",
                "transfer",
            ],
            &root,
            &mut p,
        );
        let addresses = required(map, "allowed_addresses", &root, &mut p)
            .and_then(|v| address_ranges(v, at(&root, "allowed_addresses"), &mut p));
        let media = optional(map, "media_addresses")
            .map(|v| address_ranges(v, at(&root, "media_addresses"), &mut p));
        let digest = optional(map, "digest").map(|v| digest(v, at(&root, "digest"), &mut p));
        let provider = optional(map, "provider").map(|v| {
            super::request::bounded_string(v, MAX_TEXT_CHARS, at(&root, "provider"), &mut p)
        });
        let max_cps = optional(map, "max_calls_per_second")
            .filter(|v| !v.is_null())
            .and_then(|v| {
                let loc = at(&root, "max_calls_per_second");
                let n = super::request::uint(v, loc.clone(), &mut p)?;
                if n == 0 {
                    p.push(loc, "greater_than", "Input should be greater than 0");
                    return None;
                }
                Some(n)
            });
        let encryption = optional(map, "media_encryption")
            .filter(|v| !v.is_null())
            .map(|v| validate::media_encryption(v, at(&root, "media_encryption"), &mut p));
        let headers = optional(map, "headers_to_parameters")
            .filter(|v| !v.is_null())
            .map(|v| {
                validate::headers_to_parameters(v, at(&root, "headers_to_parameters"), &mut p)
            });
        let include = optional(map, "include_headers")
            .filter(|v| !v.is_null())
            .map(|v| validate::include_headers(v, at(&root, "include_headers"), &mut p));
        let transfer = optional(map, "transfer")
            .filter(|v| !v.is_null())
            .map(|v| validate::transfer_mode(v, at(&root, "transfer"), &mut p));
        parsed = Some((
            addresses, media, digest, provider, max_cps, encryption, headers, include, transfer,
        ));
    }
    p.finish()?;
    let (
        Some(connection_id),
        Some((
            Some(allowed_addresses),
            media,
            digest,
            provider,
            max_calls_per_second,
            encryption,
            headers,
            include,
            transfer,
        )),
    ) = (id, parsed)
    else {
        return Err(ApiError::invalid(root, "missing", "Field required"));
    };
    let connection = Connection {
        connection_id,
        allowed_addresses,
        media_addresses: media.flatten().unwrap_or_default(),
        digest: digest.flatten(),
        provider: provider.flatten(),
        max_calls_per_second,
        media_encryption: encryption.flatten().unwrap_or_default(),
        headers_to_parameters: headers.flatten().unwrap_or_default(),
        include_headers: include.flatten().unwrap_or_default(),
        transfer: transfer.flatten().unwrap_or_default(),
    };
    let _write = cx.state.write_lock().await;
    cx.state.store.put_connection(&scope, &connection).await?;
    cx.state
        .apply(&[Change::UpsertConnection(scope, connection.clone())])
        .await;
    Ok(json_response(StatusCode::OK, &redacted(&connection)))
}

/// `GET /connections/{connection_id}`.
pub async fn get(cx: &Ctx) -> Result<Response<Body>, ApiError> {
    let scope = cx.scope()?;
    let id = cx.params.get("connection_id");
    let c = cx
        .state
        .store
        .get_connection(&scope, id)
        .await?
        .ok_or_else(|| not_found(id))?;
    Ok(json_response(StatusCode::OK, &redacted(&c)))
}

/// `GET /connections`: `{"items": [...], "total"}` (a workspace has few trunks: no paging).
pub async fn list(cx: &Ctx) -> Result<Response<Body>, ApiError> {
    let scope = cx.scope()?;
    let items: Vec<Value> = cx
        .state
        .store
        .list_connections(&scope)
        .await?
        .iter()
        .map(redacted)
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({ "total": items.len(), "items": items }),
    ))
}

/// `DELETE /connections/{connection_id}`: 204; 409 while a deployment still uses it.
pub async fn delete(cx: &Ctx) -> Result<Response<Body>, ApiError> {
    let scope = cx.scope()?;
    let id = cx.params.get("connection_id").to_owned();
    let _write = cx.state.write_lock().await;
    if let Some(user) = deployment_using(cx, &scope, &id) {
        return Err(ApiError::Conflict {
            detail: format!("connection {id} is used by deployment {user}; change or delete the deployment first"),
        });
    }
    cx.state
        .store
        .delete_connection(&scope, &id)
        .await
        .map_err(|e| match e {
            StoreError::NotFound { .. } => not_found(&id),
            other => other.into(),
        })?;
    cx.state.apply(&[Change::RemoveConnection(scope, id)]).await;
    Ok(super::no_content())
}

/// A deployment of `scope` that lists connection `id` (the routing snapshot holds them all).
fn deployment_using(cx: &Ctx, scope: &Scope, id: &str) -> Option<String> {
    let snapshot = cx.state.routing.load();
    let user = snapshot
        .deployments()
        .find(|(s, d)| *s == scope && d.connection_configs.iter().any(|c| c.connection_id == id))
        .map(|(_, d)| d.deployment_id.clone());
    user
}

fn not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("Connection {id}"))
}

/// CIDR ranges; a bare address means just that host (`/32` or `/128`). Every bad item is
/// reported, each at its own index.
fn address_ranges(v: &Value, loc: super::request::Loc, p: &mut Problems) -> Option<Vec<IpNet>> {
    let items = array(v, loc.clone(), p)?;
    if items.len() > MAX_ADDRESS_RANGES {
        p.push(
            loc,
            "too_long",
            format!("List should have at most {MAX_ADDRESS_RANGES} items"),
        );
        return None;
    }
    let before = p.len();
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let Some(text) = string(item, at(&loc, i), p) else {
            continue;
        };
        let parsed = text
            .trim()
            .parse::<IpNet>()
            .or_else(|_| text.trim().parse::<std::net::IpAddr>().map(IpNet::from));
        match parsed {
            Ok(net) => out.push(net.trunc()),
            Err(_) => p.push(
                at(&loc, i),
                "value_error",
                format!("Value error, {text:?} is not an IP address or CIDR range (e.g. 203.0.113.0/24)"),
            ),
        }
    }
    (p.len() == before).then_some(out)
}

fn digest(v: &Value, loc: super::request::Loc, p: &mut Problems) -> Option<DigestCredentials> {
    let map = object(v, &loc, p)?;
    deny_unknown(map, &["username", "password"], &loc, p);
    let text = |key: &str, p: &mut Problems| {
        required(map, key, &loc, p).and_then(|v| {
            let s = super::request::bounded_string(v, MAX_TEXT_CHARS, at(&loc, key), p)?;
            if s.is_empty() {
                p.push(
                    at(&loc, key),
                    "string_too_short",
                    "String should have at least 1 character",
                );
                return None;
            }
            Some(s)
        })
    };
    let username = text("username", p);
    let password = text("password", p);
    Some(DigestCredentials {
        username: username?,
        password: password?,
    })
}
