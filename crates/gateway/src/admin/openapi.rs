//! `GET /openapi.json`: a hand-written OpenAPI 3.1 description of the admin API.
//!
//! Written by hand (not derived) so it reads like documentation; a unit test checks that every
//! route of [`super::router::ROUTES`] appears here with its method, so the two cannot drift.

use std::sync::OnceLock;

use serde_json::{json, Value};

/// The rendered document (built once).
pub fn document() -> String {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| spec().to_string()).clone()
}

fn r(name: &str) -> Value {
    json!({ "$ref": format!("#/components/schemas/{name}") })
}

fn path_param(name: &str, description: &str) -> Value {
    json!({ "name": name, "in": "path", "required": true, "description": description, "schema": { "type": "string" } })
}

fn scope_params() -> Vec<Value> {
    vec![
        path_param("org_id", "Organisation id"),
        path_param("workspace_id", "Workspace id"),
    ]
}

fn with(mut params: Vec<Value>, more: &[(&str, &str)]) -> Vec<Value> {
    params.extend(more.iter().map(|(n, d)| path_param(n, d)));
    params
}

fn json_body(schema: Value) -> Value {
    json!({ "required": true, "content": { "application/json": { "schema": schema } } })
}

fn ok(description: &str, schema: Value) -> Value {
    json!({ "description": description, "content": { "application/json": { "schema": schema } } })
}

/// The error responses every authenticated operation may give.
fn errors(extra: &[&str]) -> Value {
    let mut m = serde_json::Map::new();
    let all = [
        ("401", "Missing or invalid API key", "HTTPError"),
        (
            "404",
            "Not found (also: a scope the key may not see)",
            "HTTPError",
        ),
        ("413", "Body larger than the configured cap", "HTTPError"),
        ("415", "Wrong Content-Type", "HTTPError"),
        (
            "422",
            "Validation Error: every problem of the request",
            "HTTPValidationError",
        ),
        (
            "409",
            "Conflict (phone number owned by another deployment, record in use)",
            "HTTPError",
        ),
        ("403", "The key cannot act on this path", "HTTPError"),
        (
            "503",
            "Store unavailable or snapshot still loading",
            "HTTPError",
        ),
    ];
    for (code, desc, schema) in all {
        if ["401", "404", "422", "503"].contains(&code) || extra.contains(&code) {
            m.insert(code.to_owned(), ok(desc, r(schema)));
        }
    }
    Value::Object(m)
}

fn op(
    summary: &str,
    params: Vec<Value>,
    body: Option<Value>,
    success: (&str, Value),
    extra_errors: &[&str],
) -> Value {
    let mut responses = errors(extra_errors);
    if let Value::Object(m) = &mut responses {
        m.insert(success.0.to_owned(), success.1);
    }
    let mut o = json!({ "summary": summary, "parameters": params, "responses": responses, "security": [{ "ApiKey": [] }] });
    if let (Some(body), Value::Object(m)) = (body, &mut o) {
        m.insert("requestBody".to_owned(), body);
    }
    o
}

/// A `text/event-stream` operation; `Last-Event-ID` resumes.
fn sse_op(summary: &str, mut params: Vec<Value>) -> Value {
    params.push(json!({ "name": "Last-Event-ID", "in": "header", "required": false,
        "description": "Resume after this event id; an id older than the kept events replays them all after a `gap` event",
        "schema": { "type": "string" } }));
    op(
        summary,
        params,
        None,
        (
            "200",
            json!({ "description": "One `id:`/`event:`/`data:` block per event (data: the event JSON, see README); `:` keep-alive comments",
        "content": { "text/event-stream": { "schema": { "type": "string" } } } }),
        ),
        &[],
    )
}

fn no_content(description: &str) -> Value {
    json!({ "description": description })
}

fn spec() -> Value {
    let p = "/v1/orgs/{org_id}/workspaces/{workspace_id}";
    let dep = with(
        scope_params(),
        &[("deployment_id", "Deployment id (dep-…)")],
    );
    let conn = with(
        scope_params(),
        &[("connection_id", "Connection (trunk) id")],
    );
    let app = with(scope_params(), &[("app_id", "Agent (app) id")]);
    let ver = with(
        scope_params(),
        &[("app_id", "Agent (app) id"), ("version", "Version number")],
    );
    let agent = vec![path_param("agent_id", "Agent (app) id")];
    let call = with(scope_params(), &[("call_sid", "Call SID (CA…)")]);
    let agent_scoped = with(scope_params(), &[("agent_id", "Agent (app) id")]);
    let page = vec![
        json!({ "name": "offset", "in": "query", "schema": { "type": "integer", "minimum": 0, "default": 0 } }),
        json!({ "name": "limit", "in": "query", "schema": { "type": "integer", "minimum": 1, "maximum": 500, "default": 50 } }),
    ];
    let mut list_params = scope_params();
    list_params.extend(page);
    let open_get = |summary: &str, content_type: &str, schema: Value| {
        json!({ "get": { "summary": summary, "security": [], "responses": { "200": {
            "description": "OK", "content": { content_type: { "schema": schema } } } } } })
    };
    let split_ops = |params: Vec<Value>| {
        json!({
            "post": op("Create or update the traffic split (ElevenLabs shape): percentages per branch (= version) must total 100",
                params.clone(), Some(json_body(r("AgentDeploymentCreate"))), ("200", ok("The split now in force", r("AgentDeploymentResponse"))), &["403"]),
            "get": op("The traffic split in force (empty map when none)", params, None,
                ("200", ok("The split", r("AgentDeploymentResponse"))), &["403"]),
        })
    };
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "switchboard admin API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Deployments, cohorts, trunks, agent versions and traffic splits. Every accepted write is committed to the store and live for the next INVITE before the response is sent. Errors: 422 bodies are FastAPI's HTTPValidationError listing every problem; others are {\"detail\": \"…\"}."
        },
        "components": {
            "securitySchemes": {
                "ApiKey": { "type": "apiKey", "in": "header", "name": "X-API-Key",
                    "description": "Keys in [admin] api_keys reach every org; [[admin.scoped_keys]] reach one org (and optionally one workspace). xi-api-key is accepted too." }
            },
            "schemas": schemas(),
        },
        "paths": {
            "/healthz": open_get("Liveness", "application/json", json!({ "type": "object" })),
            "/readyz": open_get("Readiness: 200 once the routing snapshot is loaded, 503 before", "application/json", json!({ "type": "object" })),
            "/metrics": open_get("Prometheus metrics (text exposition format)", "text/plain", json!({ "type": "string" })),
            "/openapi.json": open_get("This document", "application/json", json!({ "type": "object" })),
            format!("{p}/deployments"): {
                "get": op("List deployments (paginated)", list_params, None, ("200", ok("A page", r("DeploymentPage"))), &[]),
                "post": op("Create a deployment (seed 000): status active, live at once", scope_params(),
                    Some(json_body(r("DeploymentCreate"))), ("201", ok("The full deployment", r("Deployment"))), &["409", "413", "415"]),
            },
            format!("{p}/deployments/{{deployment_id}}"): {
                "get": op("Get a deployment", dep.clone(), None, ("200", ok("The deployment", r("Deployment"))), &[]),
                "patch": op("Update a deployment (seed 001): only the fields given; null or omitted = unchanged", dep.clone(),
                    Some(json_body(r("DeploymentUpdate"))), ("200", ok("The full deployment", r("Deployment"))), &["409", "413", "415"]),
                "delete": op("Delete a deployment; its numbers stop routing at once", dep.clone(), None, ("204", no_content("Deleted")), &[]),
            },
            format!("{p}/deployments/{{deployment_id}}/status"): {
                "put": op("Pause or resume (seed 002)", dep.clone(), Some(json_body(r("DeploymentStatusUpdate"))),
                    ("200", ok("The full deployment", r("Deployment"))), &["413", "415"]),
            },
            format!("{p}/deployments/{{deployment_id}}/cohorts/upload"): {
                "post": op("Upload a cohort CSV (streamed; batches of 10,000 rows)", dep.clone(), Some(json!({
                    "required": true,
                    "content": { "multipart/form-data": { "schema": {
                        "type": "object",
                        "required": ["cohort_file"],
                        "properties": {
                            "name": { "type": "string", "maxLength": 100 },
                            "cohort_file": { "type": "string", "format": "binary", "description": "CSV with a header row" },
                            "cohort_transformation_file": { "type": "string", "format": "binary",
                                "description": "JSON mapping columns (CohortTransformation). Without it the header names the fields: phone_number, user_identifier, app_overrides names; other columns become app variables." }
                        }
                    } } }
                })), ("201", ok("The finished cohort", r("Cohort"))), &["413", "415"]),
            },
            format!("{p}/deployments/{{deployment_id}}/cohorts/stream"): {
                "post": op("Add 1–1000 users as JSON", dep.clone(), Some(json_body(r("CohortStream"))),
                    ("201", ok("The finished cohort", r("Cohort"))), &["413", "415"]),
            },
            format!("{p}/deployments/{{deployment_id}}/cohorts"): {
                "get": op("List the deployment's cohorts", dep.clone(), None, ("200", ok("Cohorts", json!({ "type": "object",
                    "properties": { "total": { "type": "integer" }, "items": { "type": "array", "items": r("Cohort") } } }))), &[]),
            },
            format!("{p}/deployments/{{deployment_id}}/cohorts/{{cohort_id}}"): {
                "get": op("Get a cohort: status processing | completed | failed, counts and rejected rows",
                    with(dep.clone(), &[("cohort_id", "Cohort id (coh-…)")]), None, ("200", ok("The cohort", r("Cohort"))), &[]),
            },
            format!("{p}/connections"): {
                "get": op("List connections (trunks)", scope_params(), None, ("200", ok("Connections", json!({ "type": "object",
                    "properties": { "total": { "type": "integer" }, "items": { "type": "array", "items": r("Connection") } } }))), &[]),
            },
            format!("{p}/connections/{{connection_id}}"): {
                "put": op("Create or replace a connection", conn.clone(), Some(json_body(r("ConnectionPut"))),
                    ("200", ok("The connection (password redacted)", r("Connection"))), &["413", "415"]),
                "get": op("Get a connection", conn.clone(), None, ("200", ok("The connection (password redacted)", r("Connection"))), &[]),
                "delete": op("Delete a connection (409 while a deployment uses it)", conn, None, ("204", no_content("Deleted")), &["409"]),
            },
            format!("{p}/apps/{{app_id}}/versions"): {
                "get": op("List an agent's versions", app, None, ("200", ok("Versions", json!({ "type": "object",
                    "properties": { "total": { "type": "integer" }, "items": { "type": "array", "items": r("AppVersion") } } }))), &[]),
            },
            format!("{p}/apps/{{app_id}}/versions/{{version}}"): {
                "put": op("Register a version's runtime; probed at once (WebSocket handshake) and periodically", ver.clone(),
                    Some(json_body(r("AppVersionPut"))), ("200", ok("The version, status provisioning", r("AppVersion"))), &["413", "415"]),
                "get": op("Get a version and its runtime status", ver.clone(), None, ("200", ok("The version", r("AppVersion"))), &[]),
                "delete": op("Delete a version (409 while a deployment or split uses it)", ver, None, ("204", no_content("Deleted")), &["409"]),
            },
            format!("{p}/deployments/{{deployment_id}}/events"): {
                "get": sse_op("Stream the deployment's call events (Server-Sent Events)", dep.clone()),
            },
            format!("{p}/events"): {
                "get": sse_op("Stream every call and deployment event of the workspace (Server-Sent Events)", scope_params()),
            },
            format!("{p}/calls"): {
                "get": op("List live calls", scope_params(), None, ("200", ok("Live calls", json!({ "type": "object",
                    "properties": { "total": { "type": "integer" }, "items": { "type": "array", "items": r("LiveCall") } } }))), &[]),
            },
            format!("{p}/calls/{{call_sid}}"): {
                "get": op("Get a live call", call.clone(), None, ("200", ok("The call", r("LiveCall"))), &[]),
                "delete": op("Hang up a live call: BYE when answered, 480 while ringing", call, None, ("204", no_content("Hang-up sent")), &[]),
            },
            "/v1/convai/agents/{agent_id}/deployments": split_ops(agent),
            format!("{p}/convai/agents/{{agent_id}}/deployments"): split_ops(agent_scoped),
        }
    })
}

fn schemas() -> Value {
    let inbound = json!({
        "type": "object", "additionalProperties": false,
        "required": ["start_time", "end_time", "allowed_days", "timezone"],
        "properties": {
            "start_time": { "type": "string", "pattern": "^([01][0-9]|2[0-3]):[0-5][0-9]$", "example": "09:00" },
            "end_time": { "type": "string", "description": "Exclusive; before start_time = overnight window; 24:00 allowed", "example": "18:00" },
            "allowed_days": { "type": "array", "minItems": 1, "items": { "enum": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"] } },
            "timezone": { "type": "string", "description": "IANA time zone name", "example": "Asia/Kolkata" }
        }
    });
    let connection_config = json!({
        "type": "object", "additionalProperties": false, "required": ["connection_id", "phone_numbers"],
        "properties": {
            "connection_id": { "type": "string", "description": "An existing connection (422 otherwise)" },
            "phone_numbers": { "type": "array", "minItems": 1, "items": { "type": "string",
                "description": "E.164 after normalisation with [routing] default_country_code; owned by one deployment only (409)" } }
        }
    });
    let name = json!({ "type": "string", "maxLength": 50, "pattern": "^[\\w\\- ]{1,50}$" });
    let description = json!({ "type": "string", "maxLength": 150 });
    let status_enum = json!({ "enum": ["provisioning", "ready", "error"] });
    json!({
        "HTTPError": { "type": "object", "properties": { "detail": { "type": "string" } } },
        "ValidationError": { "type": "object", "required": ["loc", "msg", "type"], "properties": {
            "loc": { "type": "array", "items": { "oneOf": [{ "type": "string" }, { "type": "integer" }] } },
            "msg": { "type": "string" }, "type": { "type": "string" } } },
        "HTTPValidationError": { "type": "object", "properties": { "detail": { "type": "array", "items": r("ValidationError") } } },
        "InboundConfig": inbound,
        "ConnectionConfig": connection_config,
        "DeploymentCreate": { "type": "object", "additionalProperties": false,
            "required": ["name", "app_id", "app_version", "connection_configs"],
            "properties": {
                "name": name, "description": description,
                "app_id": { "type": "string" }, "app_version": { "type": "integer", "minimum": 0 },
                "connection_configs": { "type": "array", "minItems": 1, "items": r("ConnectionConfig") },
                "inbound_config": r("InboundConfig"),
                "webhook_config": r("WebhookConfigInput"),
                "channel_direction": { "enum": ["inbound", "outbound", "inbound_outbound"], "default": "inbound" }
            } },
        "DeploymentUpdate": { "type": "object", "additionalProperties": false, "properties": {
                "name": { "oneOf": [name, { "type": "null" }] },
                "description": { "oneOf": [description, { "type": "null" }] },
                "app_version": { "type": ["integer", "null"], "minimum": 0 },
                "connection_configs": { "type": ["array", "null"], "minItems": 1, "items": r("ConnectionConfig") },
                "inbound_config": { "oneOf": [r("InboundConfig"), { "type": "null" }] },
                "webhook_config": { "oneOf": [r("WebhookConfigInput"), { "type": "null" }], "description": "null removes the webhook" }
            } },
        "DeploymentStatusUpdate": { "type": "object", "additionalProperties": false, "required": ["action"],
            "properties": { "action": { "enum": ["pause", "resume"] } } },
        "Deployment": { "type": "object",
            "required": ["deployment_id", "app_id", "app_version", "connection_configs", "channel_direction", "created_by", "created_at", "updated_at"],
            "properties": {
                "deployment_id": { "type": "string", "example": "dep-a1b2c3d4e5f6" },
                "name": { "type": "string" }, "description": { "type": ["string", "null"] },
                "app_id": { "type": "string" }, "app_version": { "type": "integer" },
                "connection_configs": { "type": "array", "items": r("ConnectionConfig") },
                "channel_direction": { "enum": ["inbound", "outbound", "inbound_outbound"] },
                "status": { "enum": ["active", "paused"] },
                "inbound_config": { "oneOf": [r("InboundConfig"), { "type": "null" }] },
                "webhook_config": r("WebhookConfig"),
                "created_by": { "type": "string" }, "created_at": { "type": "string", "format": "date-time" },
                "updated_by": { "type": "string" }, "updated_at": { "type": "string", "format": "date-time" }
            } },
        "WebhookConfigInput": { "type": "object", "additionalProperties": false, "required": ["url", "secret"], "properties": {
            "url": { "type": "string", "format": "uri", "description": "http:// or https:// receiver (certificate verified against the system roots plus media.agent_ca_file)" },
            "secret": { "type": "string", "minLength": 16, "writeOnly": true, "description": "HMAC-SHA256 key for X-Switchboard-Signature; never returned" },
            "events": { "type": "array", "items": { "enum": crate::events::EVENT_NAMES }, "default": ["call.ended"] } } },
        "WebhookConfig": { "type": "object", "properties": {
            "url": { "type": "string" }, "has_secret": { "type": "boolean" },
            "events": { "type": "array", "items": { "type": "string" } } } },
        "LiveCall": { "type": "object", "properties": {
            "call_sid": { "type": "string" }, "deployment_id": { "type": "string" },
            "app_id": { "type": "string" }, "app_version": { "type": "integer" },
            "from": { "type": "string" }, "to": { "type": "string" },
            "state": { "enum": ["ringing", "answered"] },
            "started_at": { "type": "string", "format": "date-time" },
            "answered_at": { "type": ["string", "null"], "format": "date-time" } } },
        "DeploymentPage": { "type": "object", "required": ["items", "total", "offset", "limit"], "properties": {
            "items": { "type": "array", "items": r("Deployment") }, "total": { "type": "integer" },
            "offset": { "type": "integer" }, "limit": { "type": "integer" } } },
        "CohortColumn": { "type": "object", "additionalProperties": false, "required": ["column_name"],
            "properties": { "column_name": { "type": "string" }, "required": { "type": "boolean", "default": false } } },
        "CohortTransformation": { "type": "object", "additionalProperties": false, "required": ["phone_number"], "properties": {
            "phone_number": r("CohortColumn"), "user_identifier": r("CohortColumn"),
            "app_variables": { "type": "object", "additionalProperties": r("CohortColumn") },
            "app_overrides": { "type": "object", "additionalProperties": false, "properties": {
                "initial_bot_message": r("CohortColumn"), "initial_state_name": r("CohortColumn"), "initial_language_name": r("CohortColumn") } } } },
        "CohortUser": { "type": "object", "additionalProperties": false, "required": ["phone_number"], "properties": {
            "phone_number": { "type": "string" }, "user_identifier": { "type": "string" },
            "app_variables": { "type": "object", "additionalProperties": { "type": "string" } },
            "app_overrides": { "type": "object", "properties": {
                "initial_bot_message": { "type": "string" }, "initial_state_name": { "type": "string" }, "initial_language_name": { "type": "string" } } } } },
        "CohortStream": { "type": "object", "additionalProperties": false, "required": ["name", "users"], "properties": {
            "name": { "type": "string", "maxLength": 100 },
            "users": { "type": "array", "minItems": 1, "maxItems": 1000, "items": r("CohortUser") } } },
        "Cohort": { "type": "object", "properties": {
            "cohort_id": { "type": "string" }, "deployment_id": { "type": "string" }, "name": { "type": "string" },
            "status": { "enum": ["processing", "completed", "failed"] },
            "result": { "type": "object", "properties": {
                "total_records": { "type": "integer" }, "valid_records": { "type": "integer" }, "rejected_records": { "type": "integer" } } },
            "rejections": { "type": "array", "description": "First 1000 rejected rows (row 1 = first row after the header)",
                "items": { "type": "object", "properties": { "row": { "type": "integer" }, "reason": { "type": "string" } } } } } },
        "ConnectionPut": { "type": "object", "additionalProperties": false, "required": ["allowed_addresses"], "properties": {
            "allowed_addresses": { "type": "array", "items": { "type": "string", "description": "IP or CIDR" }, "example": ["203.0.113.0/24", "127.0.0.1/32"] },
            "media_addresses": { "type": "array", "default": [], "items": { "type": "string", "description": "IP or CIDR" },
                "description": "Other hosts the carrier's RTP may come from; media is otherwise accepted only from the SDP address and the INVITE's source IP",
                "example": ["198.51.100.0/25"] },
            "digest": { "type": "object", "additionalProperties": false, "required": ["username", "password"], "properties": {
                "username": { "type": "string" }, "password": { "type": "string", "writeOnly": true } } },
            "provider": { "type": "string", "example": "exotel" },
            "media_encryption": { "enum": ["disable", "allow", "require"], "default": "allow",
                "description": "SRTP (RTP/SAVP with SDES a=crypto) policy: disable = plain RTP only, allow = answer what is offered, require = SRTP only; the other kind of offer gets 488" },
            "headers_to_parameters": { "type": "object", "maxProperties": 32, "default": {},
                "additionalProperties": { "type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$" },
                "description": "SIP header name -> start.customParameters key; reserved keys and the sip.h. prefix are refused; values are sanitised (control characters removed) and cut to 256 bytes",
                "example": { "X-Customer-Id": "customer_id" } },
            "include_headers": { "enum": ["none", "x-headers", "all"], "default": "none",
                "description": "Other INVITE headers passed as sip.h.<lower-case name> (all: except Authorization and Proxy-Authorization); at most 32 header parameters per call" },
            "transfer": { "enum": ["refer", "disabled"], "default": "refer",
                "description": "refer: an agent's <Dial>/<Refer> call update sends the carrier an in-dialog REFER (RFC 3515) and reports its NOTIFY progress on the stream; disabled: such updates get 400 (code 13227)" } } },
        "Connection": { "type": "object", "properties": {
            "connection_id": { "type": "string" }, "allowed_addresses": { "type": "array", "items": { "type": "string" } },
            "media_addresses": { "type": "array", "items": { "type": "string" } },
            "digest": { "type": ["object", "null"], "properties": { "username": { "type": "string" }, "password": { "const": "***" } } },
            "provider": { "type": ["string", "null"] },
            "media_encryption": { "enum": ["disable", "allow", "require"] },
            "headers_to_parameters": { "type": "object", "additionalProperties": { "type": "string" } },
            "include_headers": { "enum": ["none", "x-headers", "all"] },
            "transfer": { "enum": ["refer", "disabled"] } } },
        "AppVersionPut": { "type": "object", "additionalProperties": false, "required": ["runtime_url"], "properties": {
            "runtime_url": { "type": "string", "description": "ws:// or wss:// URL of the agent runtime" },
            "dialect": { "enum": ["twilio", "l16-16k"], "default": "twilio",
                "description": "twilio: 8 kHz µ-law; l16-16k: 16 kHz 16-bit little-endian PCM (audio/L16)" } } },
        "AppVersion": { "type": "object", "properties": {
            "app_id": { "type": "string" }, "version": { "type": "integer" }, "runtime_url": { "type": "string" },
            "dialect": { "enum": ["twilio", "l16-16k"] }, "status": status_enum,
            "status_detail": { "type": ["string", "null"], "description": "Why the status is error" } } },
        "AgentDeploymentPercentageStrategy": { "type": "object", "required": ["traffic_percentage"], "properties": {
            "type": { "enum": ["percentage"] }, "traffic_percentage": { "type": "number", "minimum": 0, "maximum": 100 } } },
        "AgentDeploymentRequestItem": { "type": "object", "required": ["branch_id", "deployment_strategy"], "properties": {
            "branch_id": { "type": "string", "description": "A registered version of the agent, e.g. \"3\"" },
            "deployment_strategy": r("AgentDeploymentPercentageStrategy") } },
        "AgentDeploymentCreate": { "type": "object", "required": ["deployment_request"], "properties": {
            "deployment_request": { "type": "object", "required": ["requests"], "properties": {
                "requests": { "type": "array", "minItems": 1, "items": r("AgentDeploymentRequestItem"),
                    "description": "Percentages must total 100" } } } } },
        "AgentDeploymentResponse": { "type": "object", "properties": {
            "traffic_percentage_branch_id_map": { "type": "object", "additionalProperties": { "type": "number" } } } }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::router::ROUTES;

    #[test]
    fn every_routed_path_and_method_is_documented() {
        let doc: Value = serde_json::from_str(&document()).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        for route in ROUTES {
            let method = route.method.as_str().to_ascii_lowercase();
            assert!(
                doc["paths"][route.pattern][&method].is_object(),
                "{} {} is not in openapi.json",
                route.method,
                route.pattern
            );
        }
    }

    #[test]
    fn every_reference_resolves() {
        let doc: Value = serde_json::from_str(&document()).unwrap();
        let text = document();
        for part in text.split("\"#/components/schemas/").skip(1) {
            let name = part.split('"').next().unwrap();
            assert!(
                doc["components"]["schemas"][name].is_object(),
                "dangling $ref {name}"
            );
        }
    }
}
