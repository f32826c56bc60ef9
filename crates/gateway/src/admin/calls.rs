//! Live calls (issue 12): list, inspect and hang up the calls in progress in a workspace.
//!
//! The calls are the live-call registry's (`AppState::calls`, filled by the SIP engines);
//! hanging up goes through the same [`CallHandle::hangup`] as the Twilio-compatible REST API,
//! as an operator's request (the BYE's Reason says so; its `call.ended` counts it as the
//! gateway's).

use http::{Response, StatusCode};
use serde_json::{json, Value};
use switchboard_routing::model::Scope;

use super::error::{json_response, ApiError};
use super::{Body, Ctx};
use crate::events::rfc3339;
use crate::live_calls::{CallHandle, HangupCause};

/// Who an admin hang-up names in the BYE's Reason header.
const OPERATOR: &str = "an operator (admin API)";

/// `GET /calls`: the workspace's live calls, oldest first.
pub async fn list(cx: &Ctx) -> Result<Response<Body>, ApiError> {
    let scope = cx.scope()?;
    let mut calls: Vec<CallHandle> = cx
        .state
        .calls
        .iter()
        .filter(|c| c.details.scope == scope && c.is_live())
        .map(|c| c.clone())
        .collect();
    calls.sort_by_key(|c| c.started_at);
    let items: Vec<Value> = calls.iter().map(resource).collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({ "total": items.len(), "items": items }),
    ))
}

/// `GET /calls/{call_sid}`.
pub async fn get(cx: &Ctx) -> Result<Response<Body>, ApiError> {
    let call = find(cx, &cx.scope()?)?;
    Ok(json_response(StatusCode::OK, &resource(&call)))
}

/// `DELETE /calls/{call_sid}`: 204 once the hang-up is queued for the call (BYE when
/// answered, 480 while ringing); 404 for a call that is unknown or already over.
pub async fn hang_up(cx: &Ctx) -> Result<Response<Body>, ApiError> {
    let call = find(cx, &cx.scope()?)?;
    call.hangup(HangupCause::Admin(OPERATOR.to_owned()))
        .map_err(|_| not_found(call.call_sid()))?;
    Ok(super::no_content())
}

fn find(cx: &Ctx, scope: &Scope) -> Result<CallHandle, ApiError> {
    let sid = cx.params.get("call_sid");
    cx.state
        .calls
        .get(sid)
        .map(|c| c.clone())
        .filter(|c| c.details.scope == *scope && c.is_live())
        .ok_or_else(|| not_found(sid))
}

fn not_found(sid: &str) -> ApiError {
    ApiError::not_found(format!("Call {sid}"))
}

fn resource(call: &CallHandle) -> Value {
    let d = &call.details;
    let answered = call.answered_at();
    json!({
        "call_sid": d.call_sid,
        "sip_call_id": d.sip_call_id,
        "deployment_id": d.deployment_id,
        "app_id": d.app_id,
        "app_version": d.app_version,
        "from": d.from,
        "to": d.to,
        "state": if answered.is_some() { "answered" } else { "ringing" },
        "started_at": rfc3339(call.started_at),
        "answered_at": answered.map(rfc3339),
    })
}
