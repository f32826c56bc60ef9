//! The JSON of an event: Sarvam's post-call webhook names (`interaction_id`,
//! `user_phone_number`, `start_datetime`, ...) plus ours (`event`, `event_id`, `hangup_by`,
//! `sip_status`, `reason`). The SSE `data:` line and the webhook body are this same document.

use std::time::SystemTime;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Map, Value};

use super::{Event, EventKind};

/// `2026-03-01T10:00:00.123Z`.
pub fn rfc3339(t: SystemTime) -> String {
    DateTime::<Utc>::from(t).to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Renders `event` with its `event_id`.
pub fn to_json(event: &Event, event_id: &str) -> String {
    let mut doc = Map::new();
    let mut put = |key: &str, value: Value| {
        doc.insert(key.to_owned(), value);
    };
    put("event", json!(event.kind.as_str()));
    put("event_id", json!(event_id));
    put("occurred_at", json!(rfc3339(event.at)));
    put("org_id", json!(event.scope.org_id));
    put("workspace_id", json!(event.scope.workspace_id));
    put("deployment_id", json!(event.deployment_id));
    put("app_id", json!(event.app_id));
    put("app_version", json!(event.app_version));
    if event.kind == EventKind::DeploymentUpdated {
        put("status", json!(event.status));
        return Value::Object(doc).to_string();
    }
    put("interaction_id", json!(event.call_sid));
    put("sip_call_id", json!(event.sip_call_id));
    put("user_phone_number", json!(event.from));
    put("agent_phone_number", json!(event.to));
    put("start_datetime", json!(event.started_at.map(rfc3339)));
    put("answered_datetime", json!(event.answered_at.map(rfc3339)));
    let ended = matches!(event.kind, EventKind::CallEnded | EventKind::CallRejected);
    put("end_datetime", json!(ended.then(|| rfc3339(event.at))));
    let duration = (event.kind == EventKind::CallEnded).then(|| event.duration_secs());
    put("duration", json!(duration));
    put("duration_secs", json!(duration));
    put("hangup_by", json!(event.hangup_by.map(|h| h.as_str())));
    put("reason", json!(event.reason));
    put("sip_status", json!(event.sip_status));
    if event.kind == EventKind::CallTransfer {
        put("status", json!(event.status));
    }
    Value::Object(doc).to_string()
}
