//! A deployment's `webhook_config` (issue 12): validation, and the public view that never
//! shows the secret.
//!
//! `{"url": "http://…", "secret": "…", "events": ["call.ended", …]}`: the URL must be
//! `http` or `https` with a host (https receivers are verified against the system roots plus
//! `[media] agent_ca_file`); the secret is required (at least [`MIN_SECRET_CHARS`]);
//! `events` defaults to `["call.ended"]` (Sarvam's post-call webhook) and must name known
//! events. GET answers `{"url", "events", "has_secret": true}`.

use serde_json::{json, Value};
use switchboard_routing::model::{Deployment, WebhookConfig};

use super::request::{
    at, bounded_string, deny_unknown, non_empty_array, object, required, string, Loc, Problems,
};
use crate::events::EVENT_NAMES;

/// Shorter secrets are guessable; 16 characters of a random string is 80+ bits.
pub const MIN_SECRET_CHARS: usize = 16;
const MAX_SECRET_CHARS: usize = 256;
const MAX_URL_CHARS: usize = 2048;
const FIELDS: [&str; 3] = ["url", "secret", "events"];
const DEFAULT_EVENTS: [&str; 1] = ["call.ended"];

/// Validates a `webhook_config` value at `loc`, recording every problem.
pub fn parse(v: &Value, loc: Loc, p: &mut Problems) -> Option<WebhookConfig> {
    let map = object(v, &loc, p)?;
    deny_unknown(map, &FIELDS, &loc, p);
    let url = required(map, "url", &loc, p)
        .and_then(|v| string(v, at(&loc, "url"), p))
        .and_then(|u| url(u, at(&loc, "url"), p));
    let secret = required(map, "secret", &loc, p).and_then(|v| secret(v, at(&loc, "secret"), p));
    let events = match map.get("events").filter(|v| !v.is_null()) {
        None => Some(DEFAULT_EVENTS.iter().map(|e| (*e).to_owned()).collect()),
        Some(v) => events(v, at(&loc, "events"), p),
    };
    Some(WebhookConfig {
        url: url?,
        secret: secret?,
        events: events?,
    })
}

fn url(u: &str, loc: Loc, p: &mut Problems) -> Option<String> {
    let parsed = u.parse::<http::Uri>().ok().filter(|uri| {
        matches!(uri.scheme_str(), Some("http" | "https"))
            && uri.host().is_some_and(|h| !h.is_empty())
    });
    if u.len() > MAX_URL_CHARS || parsed.is_none() {
        p.push(
            loc,
            "url_parsing",
            "Input should be a valid http:// or https:// URL with a host",
        );
        return None;
    }
    Some(u.to_owned())
}

fn secret(v: &Value, loc: Loc, p: &mut Problems) -> Option<String> {
    let s = bounded_string(v, MAX_SECRET_CHARS, loc.clone(), p)?;
    if s.chars().count() < MIN_SECRET_CHARS {
        p.push(
            loc,
            "string_too_short",
            format!("String should have at least {MIN_SECRET_CHARS} characters"),
        );
        return None;
    }
    Some(s)
}

fn events(v: &Value, loc: Loc, p: &mut Problems) -> Option<Vec<String>> {
    let items = non_empty_array(v, loc.clone(), p)?;
    let mut names = Vec::new();
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        match item.as_str().filter(|n| EVENT_NAMES.contains(n)) {
            Some(name) if !names.iter().any(|n| n == name) => names.push(name.to_owned()),
            Some(_) => {}
            None => {
                ok = false;
                let expected: Vec<String> = EVENT_NAMES.iter().map(|n| format!("'{n}'")).collect();
                p.push(
                    at(&loc, i),
                    "enum",
                    format!("Input should be {}", expected.join(", ")),
                );
            }
        }
    }
    ok.then_some(names)
}

/// The deployment as the API shows it: the webhook secret replaced by `has_secret`.
pub fn public(d: &Deployment) -> Value {
    let mut v = serde_json::to_value(d).unwrap_or(Value::Null);
    if let (Some(config), Value::Object(map)) = (&d.webhook_config, &mut v) {
        map.insert(
            "webhook_config".to_owned(),
            json!({ "url": config.url, "events": config.events, "has_secret": !config.secret.is_empty() }),
        );
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::error::{ApiError, LocItem};
    use crate::admin::request::body_loc;

    fn problems(v: Value) -> Vec<(Vec<LocItem>, String)> {
        let mut p = Problems::default();
        let parsed = parse(&v, at(&body_loc(), "webhook_config"), &mut p);
        match p.finish() {
            Ok(()) => {
                assert!(parsed.is_some());
                Vec::new()
            }
            Err(ApiError::Validation(errors)) => {
                errors.into_iter().map(|e| (e.loc, e.kind)).collect()
            }
            Err(other) => panic!("{other:?}"),
        }
    }

    fn loc(tail: &[LocItem]) -> Vec<LocItem> {
        let mut l = vec!["body".into(), "webhook_config".into()];
        l.extend_from_slice(tail);
        l
    }

    #[test]
    fn a_valid_config_defaults_to_call_ended() {
        let mut p = Problems::default();
        let c = parse(
            &json!({"url": "http://hooks.example.com:8080/x?y=1", "secret": "0123456789abcdef"}),
            body_loc(),
            &mut p,
        )
        .unwrap();
        assert!(p.is_empty());
        assert_eq!(c.events, ["call.ended"]);
    }

    #[test]
    fn bad_url_unknown_event_and_missing_secret_each_get_their_loc() {
        let found = problems(json!({"url": "ftp://x", "events": ["call.ended", "call.exploded"]}));
        assert_eq!(
            found,
            [
                (loc(&["url".into()]), "url_parsing".to_owned()),
                (loc(&["secret".into()]), "missing".to_owned()),
                (loc(&["events".into(), 1.into()]), "enum".to_owned()),
            ]
        );
        for bad in [
            "not a url",
            "http://",
            "/relative",
            "mailto:a@b.c",
            "ftp://h/",
        ] {
            let found = problems(json!({"url": bad, "secret": "0123456789abcdef"}));
            assert_eq!(
                found,
                [(loc(&["url".into()]), "url_parsing".to_owned())],
                "{bad}"
            );
        }
        let found = problems(json!({"url": "http://h/", "secret": "short", "events": [], "x": 1}));
        assert_eq!(found.len(), 3, "{found:?}");
    }

    #[test]
    fn the_secret_is_never_shown() {
        let mut d: Deployment = serde_json::from_value(json!({
            "deployment_id": "dep-1", "name": "n", "app_id": "a", "app_version": 1,
            "connection_configs": [], "channel_direction": "inbound", "status": "active",
            "created_by": "t", "created_at": "t", "updated_by": "t", "updated_at": "t"
        }))
        .unwrap();
        assert!(public(&d).get("webhook_config").is_none());
        d.webhook_config = Some(Box::new(WebhookConfig {
            url: "http://h/".into(),
            secret: "0123456789abcdef-secret".into(),
            events: vec!["call.offered".into()],
        }));
        let shown = public(&d);
        assert!(!shown.to_string().contains("0123456789abcdef"));
        assert_eq!(
            shown["webhook_config"],
            json!({"url": "http://h/", "events": ["call.offered"], "has_secret": true})
        );
    }
}
