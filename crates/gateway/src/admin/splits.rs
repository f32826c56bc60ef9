//! Traffic splits in ElevenLabs' shape (seed 003): percentages of an agent's calls per version.
//!
//! Mounted twice: `/v1/convai/agents/{agent_id}/deployments` acts in the org/workspace of a
//! workspace-scoped key (the seed's path has no org), and
//! `/v1/orgs/{org_id}/workspaces/{workspace_id}/convai/agents/{agent_id}/deployments` names the
//! scope explicitly (for keys that reach several workspaces).

use std::collections::BTreeMap;

use http::{Response, StatusCode};
use serde_json::{json, Value};
use switchboard_routing::model::{Scope, TrafficSplit};
use switchboard_routing::Change;

use super::error::{json_response, ApiError};
use super::request::{
    array, at, body_loc, deny_unknown, number, object, optional, read_json, required, string,
    Problems,
};
use super::{validate, Body, Ctx, RequestBody};

/// Percentages must total 100; this absorbs float noise such as 33.33 + 33.33 + 33.34.
const TOTAL_TOLERANCE: f64 = 1e-6;
/// Branches per split; a split across more versions than this is a configuration mistake.
const MAX_BRANCHES: usize = 100;

/// The scope the request acts in: explicit in the path, or the key's own on the org-less path.
fn scope(cx: &Ctx, scoped_path: bool) -> Result<Scope, ApiError> {
    if scoped_path {
        return cx.scope();
    }
    cx.principal
        .implicit_scope()
        .ok_or_else(|| ApiError::Forbidden {
            detail: "this path acts in the org and workspace of a workspace-scoped key; use \
                 /v1/orgs/{org_id}/workspaces/{workspace_id}/convai/agents/{agent_id}/deployments"
                .to_owned(),
        })
}

fn response(split: Option<&TrafficSplit>) -> Value {
    let map: serde_json::Map<String, Value> = split
        .map(|s| {
            s.percentages
                .iter()
                .map(|(v, pct)| (v.to_string(), json!(pct)))
                .collect()
        })
        .unwrap_or_default();
    json!({ "traffic_percentage_branch_id_map": map })
}

/// `POST …/convai/agents/{agent_id}/deployments`: sets the split; 200 with the map.
pub async fn set(
    cx: &Ctx,
    body: RequestBody,
    scoped_path: bool,
) -> Result<Response<Body>, ApiError> {
    let scope = scope(cx, scoped_path)?;
    let mut p = Problems::default();
    let agent_id = validate::id_text(
        cx.params.get("agent_id"),
        vec!["path".into(), "agent_id".into()],
        &mut p,
    );
    let value = read_json(&cx.headers, body, cx.max_body()).await?;
    let root = body_loc();
    let mut branches: Vec<(usize, String, Option<f64>)> = Vec::new();
    let mut requests_loc = at(&root, "deployment_request");
    if let Some(map) = object(&value, &root, &mut p) {
        deny_unknown(map, &["deployment_request"], &root, &mut p);
        let req_loc = at(&root, "deployment_request");
        requests_loc = at(&req_loc, "requests");
        let requests = required(map, "deployment_request", &root, &mut p)
            .and_then(|v| object(v, &req_loc, &mut p))
            .and_then(|m| {
                deny_unknown(m, &["requests"], &req_loc, &mut p);
                required(m, "requests", &req_loc, &mut p)
            })
            .and_then(|v| array(v, requests_loc.clone(), &mut p));
        if let Some(items) = requests {
            if items.is_empty() {
                p.push(
                    requests_loc.clone(),
                    "too_short",
                    "List should have at least 1 item after validation, not 0",
                );
            } else if items.len() > MAX_BRANCHES {
                p.push(
                    requests_loc.clone(),
                    "too_long",
                    format!("List should have at most {MAX_BRANCHES} items"),
                );
            }
            for (i, item) in items.iter().enumerate().take(MAX_BRANCHES) {
                let loc = at(&requests_loc, i);
                let Some(m) = object(item, &loc, &mut p) else {
                    continue;
                };
                deny_unknown(m, &["branch_id", "deployment_strategy"], &loc, &mut p);
                let branch = required(m, "branch_id", &loc, &mut p)
                    .and_then(|v| string(v, at(&loc, "branch_id"), &mut p));
                let pct = required(m, "deployment_strategy", &loc, &mut p)
                    .and_then(|v| strategy(v, at(&loc, "deployment_strategy"), &mut p));
                if let Some(branch) = branch {
                    branches.push((i, branch.to_owned(), pct));
                }
            }
        }
    }
    let Some(agent_id) = agent_id else {
        return Err(p
            .finish()
            .err()
            .unwrap_or_else(|| ApiError::not_found("Agent")));
    };
    // Branches name versions of this agent; each must exist (an unknown branch is a 422).
    let mut percentages = BTreeMap::new();
    for (i, branch, pct) in &branches {
        let loc = at(&at(&requests_loc, *i), "branch_id");
        let version = branch.trim().parse::<u32>().ok();
        let known = match version {
            Some(v) => cx
                .state
                .store
                .get_app_version(&scope, &agent_id, v)
                .await?
                .is_some(),
            None => false,
        };
        match (version, known) {
            (Some(v), true) => {
                if percentages.insert(v, pct.unwrap_or(0.0)).is_some() {
                    p.push(loc, "value_error", format!("Value error, branch {branch:?} is listed more than once"));
                }
            }
            _ => p.push(
                loc,
                "value_error",
                format!("Value error, unknown branch_id {branch:?}: agent {agent_id} has no such version (register it with PUT /apps/{agent_id}/versions/{{version}})"),
            ),
        }
    }
    // The total is checked over every branch given (known or not), so a request with an unknown
    // branch and a bad total hears about both.
    let given: Option<Vec<f64>> = branches.iter().map(|(_, _, pct)| *pct).collect();
    if let Some(given) = given.filter(|g| !g.is_empty()) {
        let total: f64 = given.iter().sum();
        if (total - 100.0).abs() > TOTAL_TOLERANCE {
            p.push(
                requests_loc,
                "value_error",
                format!("Value error, traffic percentages must total 100, not {total}"),
            );
        }
    }
    p.finish()?;
    let split = TrafficSplit {
        app_id: agent_id,
        percentages,
    };
    let _write = cx.state.write_lock().await;
    cx.state.store.put_traffic_split(&scope, &split).await?;
    cx.state
        .apply(&[Change::SetSplit(scope, split.clone())])
        .await;
    Ok(json_response(StatusCode::OK, &response(Some(&split))))
}

/// `GET …/convai/agents/{agent_id}/deployments`: the current map (`{}` when no split is set).
pub async fn get(cx: &Ctx, scoped_path: bool) -> Result<Response<Body>, ApiError> {
    let scope = scope(cx, scoped_path)?;
    let split = cx
        .state
        .store
        .get_traffic_split(&scope, cx.params.get("agent_id"))
        .await?;
    Ok(json_response(StatusCode::OK, &response(split.as_ref())))
}

/// `{"type": "percentage", "traffic_percentage": 0..=100}` → the percentage.
fn strategy(v: &Value, loc: super::request::Loc, p: &mut Problems) -> Option<f64> {
    let m = object(v, &loc, p)?;
    deny_unknown(m, &["type", "traffic_percentage"], &loc, p);
    if let Some(t) = optional(m, "type") {
        if t.as_str() != Some("percentage") {
            p.push(at(&loc, "type"), "enum", "Input should be 'percentage'");
        }
    }
    let pct = required(m, "traffic_percentage", &loc, p)
        .and_then(|v| number(v, at(&loc, "traffic_percentage"), p))?;
    if !(0.0..=100.0).contains(&pct) {
        p.push(
            at(&loc, "traffic_percentage"),
            "value_error",
            "Value error, traffic_percentage must be between 0 and 100",
        );
        return None;
    }
    Some(pct)
}
