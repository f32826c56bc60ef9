//! The admin HTTP API: hyper 1 (HTTP/1.1) with a small router of its own.
//!
//! Layout: [`listener`] (accept loop, connection cap, header and idle timeouts), [`router`] (the
//! route table), [`auth`] (API keys), [`request`] (bodies, limits and the field reader),
//! [`body_timeout`] (slow bodies get 408), [`error`] (FastAPI-shaped errors), [`validate`] (seed
//! rules), one module per resource ([`deployments`] with its [`webhook_config`], [`cohorts`]
//! with its streaming [`csv`] reader, [`connections`], [`apps`] with the runtime [`probe`],
//! [`splits`], live [`calls`]), [`events`] (Server-Sent Events), [`openapi`] (the hand-written
//! spec) and [`sync`] (changes committed by other gateways).
//!
//! Every handler that writes follows one order: validate everything (one 422 listing all
//! problems), take the write lock, commit to the store, apply the same change to the routing
//! table, answer. An acknowledged write is durable and live for the next INVITE.

pub mod apps;
pub mod auth;
pub mod body_timeout;
pub mod calls;
pub mod cohorts;
pub mod connections;
pub mod csv;
pub mod deployments;
pub mod error;
pub mod events;
pub mod listener;
pub mod openapi;
pub mod probe;
pub mod request;
pub mod router;
pub mod splits;
pub mod sync;
pub mod twilio_rest;
pub mod twiml;
pub mod validate;
pub mod webhook_config;

use std::time::Instant;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::Request;
use switchboard_routing::model::Scope;

pub use self::body_timeout::RequestBody;
pub use self::listener::{serve, serve_with, Limits, HEADER_READ_TIMEOUT};

use self::auth::{Principal, API_KEY_HEADER, ELEVENLABS_KEY_HEADER};
use self::error::{json_response, ApiError};
use self::router::{Match, Params, RouteId};
use crate::state::AppState;

/// Response body type of every admin handler.
pub type Body = Full<Bytes>;

/// What the listener sends: a whole body, or an event stream ([`events::SseBody`]).
pub type ResponseBody = Either<Body, events::SseBody>;

/// Everything a handler needs besides the body.
#[derive(Debug)]
pub struct Ctx {
    pub state: AppState,
    pub principal: Principal,
    pub params: Params,
    pub headers: HeaderMap,
    pub query: Option<String>,
}

impl Ctx {
    /// The org/workspace of the path, if this key may see it; 404 otherwise (never a leak).
    pub fn scope(&self) -> Result<Scope, ApiError> {
        let scope = Scope::new(self.params.get("org_id"), self.params.get("workspace_id"));
        match self.principal.may_access(&scope) {
            true => Ok(scope),
            false => Err(ApiError::no_route()),
        }
    }

    /// `[routing] default_country_code` for normalising numbers.
    pub fn country_code(&self) -> Option<&str> {
        self.state.config.routing.country_code()
    }

    /// `[admin] max_body_bytes`.
    pub fn max_body(&self) -> usize {
        self.state.config.admin.max_body_bytes
    }

    /// `?offset=&limit=` with defaults; 422 for non-numbers or a limit over `max`.
    pub fn page(&self, default_limit: u64, max: u64) -> Result<(u64, u64), ApiError> {
        let mut p = request::Problems::default();
        let (mut offset, mut limit) = (0, default_limit);
        for (k, v) in request::query_pairs(self.query.as_deref()) {
            let slot = match k.as_str() {
                "offset" => &mut offset,
                "limit" => &mut limit,
                _ => continue,
            };
            match v.parse::<u64>() {
                Ok(n) => *slot = n,
                Err(_) => p.push(
                    vec!["query".into(), k.as_str().into()],
                    "int_parsing",
                    "Input should be a valid integer",
                ),
            }
        }
        if limit == 0 || limit > max {
            p.push(
                vec!["query".into(), "limit".into()],
                "less_than_equal",
                format!("Input should be between 1 and {max}"),
            );
        }
        p.finish()?;
        Ok((offset, limit))
    }
}

/// 204 with no body.
pub fn no_content() -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::NO_CONTENT;
    resp
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// A request on the `[metrics] listen` listener: `/metrics`, `/healthz`, `/readyz`, else 404.
pub async fn handle_probe(state: AppState, req: Request<RequestBody>) -> Response<ResponseBody> {
    match req.uri().path() {
        "/metrics" | "/healthz" | "/readyz" => handle(state, req).await,
        _ => ApiError::no_route().into_response().map(Either::Left),
    }
}

/// Routes, authenticates, dispatches, and records metrics for one request.
pub async fn handle(state: AppState, req: Request<RequestBody>) -> Response<ResponseBody> {
    // SIP side hook: the Twilio-compatible call resource (REST hang-up), own auth and errors.
    if twilio_rest::matches(req.uri().path()) {
        return twilio_rest::handle(&state, req).await.map(Either::Left);
    }
    let started = Instant::now();
    let method = req.method().clone();
    let (route_label, resp) = match router::find(&method, req.uri().path()) {
        Match::NotFound => (
            "unmatched",
            ApiError::no_route().into_response().map(Either::Left),
        ),
        Match::WrongMethod(allow) => (
            "unmatched",
            ApiError::MethodNotAllowed { allow }
                .into_response()
                .map(Either::Left),
        ),
        Match::Found(route, params) => {
            let resp = match route.id {
                RouteId::DeploymentEvents | RouteId::WorkspaceEvents => {
                    open_stream(&state, route, params, req).await
                }
                _ => dispatch(&state, route, params, req)
                    .await
                    .map(|r| r.map(Either::Left)),
            };
            let resp = resp.unwrap_or_else(|e| e.into_response().map(Either::Left));
            (route.pattern, resp)
        }
    };
    let status = resp.status();
    state
        .metrics
        .admin_requests
        .with_label_values(&[method.as_str(), route_label, status.as_str()])
        .inc();
    state
        .metrics
        .admin_request_seconds
        .with_label_values(&[route_label])
        .observe(started.elapsed().as_secs_f64());
    if status.is_server_error() {
        tracing::warn!(%method, route = route_label, %status, "admin request failed");
    }
    resp
}

/// Authenticates and builds the [`Ctx`] of an API (non-health) request.
fn context(
    state: &AppState,
    params: Params,
    req: Request<RequestBody>,
) -> Result<(Ctx, RequestBody), ApiError> {
    let principal = authenticate(state, req.headers())?;
    if !state.is_ready() {
        return Err(ApiError::NotReady);
    }
    let (parts, body) = req.into_parts();
    let cx = Ctx {
        state: state.clone(),
        principal,
        params,
        headers: parts.headers,
        query: parts.uri.query().map(str::to_owned),
    };
    Ok((cx, body))
}

/// The event-stream routes: their body is a stream, not a whole document.
async fn open_stream(
    state: &AppState,
    route: &'static router::Route,
    params: Params,
    req: Request<RequestBody>,
) -> Result<Response<ResponseBody>, ApiError> {
    let (cx, _) = context(state, params, req)?;
    let for_deployment = route.id == RouteId::DeploymentEvents;
    Ok(events::stream(&cx, for_deployment)
        .await?
        .map(Either::Right))
}

async fn dispatch(
    state: &AppState,
    route: &'static router::Route,
    params: Params,
    req: Request<RequestBody>,
) -> Result<Response<Body>, ApiError> {
    match route.id {
        RouteId::Healthz => {
            return Ok(json_response(
                StatusCode::OK,
                &serde_json::json!({"status": "ok"}),
            ))
        }
        RouteId::Readyz => {
            return Ok(readiness(state));
        }
        RouteId::Metrics => {
            return Ok(text(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                state.metrics.render(),
            ))
        }
        RouteId::OpenApi => {
            return Ok(text(
                StatusCode::OK,
                "application/json",
                openapi::document(),
            ))
        }
        _ => {}
    }
    let (cx, body) = context(state, params, req)?;
    match route.id {
        RouteId::ListDeployments => deployments::list(&cx).await,
        RouteId::CreateDeployment => deployments::create(&cx, body).await,
        RouteId::GetDeployment => deployments::get(&cx).await,
        RouteId::PatchDeployment => deployments::patch(&cx, body).await,
        RouteId::DeleteDeployment => deployments::delete(&cx).await,
        RouteId::SetDeploymentStatus => deployments::set_status(&cx, body).await,
        RouteId::UploadCohort => cohorts::upload(&cx, body).await,
        RouteId::StreamCohort => cohorts::stream(&cx, body).await,
        RouteId::ListCohorts => cohorts::list(&cx).await,
        RouteId::GetCohort => cohorts::get(&cx).await,
        RouteId::ListConnections => connections::list(&cx).await,
        RouteId::PutConnection => connections::put(&cx, body).await,
        RouteId::GetConnection => connections::get(&cx).await,
        RouteId::DeleteConnection => connections::delete(&cx).await,
        RouteId::ListAppVersions => apps::list(&cx).await,
        RouteId::PutAppVersion => apps::put(&cx, body).await,
        RouteId::GetAppVersion => apps::get(&cx).await,
        RouteId::DeleteAppVersion => apps::delete(&cx).await,
        RouteId::SetSplit => splits::set(&cx, body, false).await,
        RouteId::GetSplit => splits::get(&cx, false).await,
        RouteId::SetSplitScoped => splits::set(&cx, body, true).await,
        RouteId::GetSplitScoped => splits::get(&cx, true).await,
        RouteId::ListCalls => calls::list(&cx).await,
        RouteId::GetCall => calls::get(&cx).await,
        RouteId::HangUpCall => calls::hang_up(&cx).await,
        RouteId::Healthz
        | RouteId::Readyz
        | RouteId::Metrics
        | RouteId::OpenApi
        | RouteId::DeploymentEvents
        | RouteId::WorkspaceEvents => Err(ApiError::no_route()),
    }
}

/// `/readyz`: 200 once the routing table is loaded; 503 while loading and once draining.
pub fn readiness(state: &AppState) -> Response<Body> {
    let (status, word) = match (state.is_ready(), state.is_draining()) {
        (_, true) => (StatusCode::SERVICE_UNAVAILABLE, "draining"),
        (true, false) => (StatusCode::OK, "ready"),
        (false, false) => (StatusCode::SERVICE_UNAVAILABLE, "loading"),
    };
    json_response(status, &serde_json::json!({ "status": word }))
}

/// `X-API-Key` (or seed 003's `xi-api-key`) → principal; 401 when missing or unknown.
fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Principal, ApiError> {
    let presented = headers
        .get(API_KEY_HEADER)
        .or_else(|| headers.get(ELEVENLABS_KEY_HEADER));
    presented
        .and_then(|k| state.keyring.authenticate(k.as_bytes()))
        .ok_or(ApiError::Unauthorized)
}
