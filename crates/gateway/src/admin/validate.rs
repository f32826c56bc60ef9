//! Field validation shared by the deployment endpoints (seed 000/001 rules).
//!
//! Every function reports into [`Problems`] and returns `None` for a bad value, so one request
//! gets one 422 listing everything wrong with it.

use std::collections::{BTreeMap, HashSet};

use serde_json::{Map, Value};
use switchboard_media::RESERVED_PARAMETERS;
use switchboard_routing::model::{
    ChannelDirection, ConnectionConfig, InboundConfig, IncludeHeaders, MediaEncryption,
    TransferMode,
};
use switchboard_routing::{normalize_number, RoutingError, Schedule};

use crate::sip::agent_headers::{HEADER_KEY_PREFIX, MAX_HEADER_PARAMETERS};

use super::request::{
    array, at, deny_unknown, non_empty_array, object, required, string, Loc, Problems,
};

/// Seed 000: name max 50 characters.
pub const MAX_NAME_CHARS: usize = 50;
/// Seed 000: description max 150 characters.
pub const MAX_DESCRIPTION_CHARS: usize = 150;
/// Ids in paths and bodies (app ids, connection ids): long enough for UUIDs and slugs, short
/// enough to keep keys and logs tidy.
pub const MAX_ID_CHARS: usize = 128;
/// Connection configs per deployment. Real deployments have a handful; the cap keeps one
/// request's store and routing work bounded (the JSON body cap bounds the numbers).
pub const MAX_CONNECTION_CONFIGS: usize = 100;
/// The seed's pattern, quoted in the 422 message as pydantic does.
const NAME_PATTERN: &str = r"^[\w\- ]{1,50}$";

/// Seed 000: `^[\w\- ]{1,50}$` (Python's `\w`: Unicode letters and digits, and `_`).
pub fn name(v: &Value, loc: Loc, p: &mut Problems) -> Option<String> {
    let s = string(v, loc.clone(), p)?;
    let chars = s.chars().count();
    if chars == 0 {
        p.push(
            loc,
            "string_too_short",
            "String should have at least 1 character",
        );
        return None;
    }
    if chars > MAX_NAME_CHARS {
        p.push(
            loc,
            "string_too_long",
            format!("String should have at most {MAX_NAME_CHARS} characters"),
        );
        return None;
    }
    if !s
        .chars()
        .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | ' '))
    {
        p.push(
            loc,
            "string_pattern_mismatch",
            format!("String should match pattern '{NAME_PATTERN}'"),
        );
        return None;
    }
    Some(s.to_owned())
}

/// Seed 000: description max 150 characters.
pub fn description(v: &Value, loc: Loc, p: &mut Problems) -> Option<String> {
    super::request::bounded_string(v, MAX_DESCRIPTION_CHARS, loc, p)
}

/// A non-empty identifier of at most [`MAX_ID_CHARS`] characters without `/` (ids appear in
/// paths and in the store's `app_id/version` keys).
pub fn identifier(v: &Value, loc: Loc, p: &mut Problems) -> Option<String> {
    let s = string(v, loc.clone(), p)?;
    id_text(s, loc, p)
}

/// [`identifier`]'s rule for a path segment or an already-extracted string.
pub fn id_text(s: &str, loc: Loc, p: &mut Problems) -> Option<String> {
    if s.trim().is_empty() {
        p.push(
            loc,
            "string_too_short",
            "String should have at least 1 character",
        );
        None
    } else if s.chars().count() > MAX_ID_CHARS {
        p.push(
            loc,
            "string_too_long",
            format!("String should have at most {MAX_ID_CHARS} characters"),
        );
        None
    } else if s.contains('/') || s.chars().any(char::is_control) {
        p.push(
            loc,
            "string_pattern_mismatch",
            "String must not contain '/' or control characters",
        );
        None
    } else {
        Some(s.to_owned())
    }
}

pub fn channel_direction(v: &Value, loc: Loc, p: &mut Problems) -> Option<ChannelDirection> {
    match v.as_str() {
        Some("inbound") => Some(ChannelDirection::Inbound),
        Some("outbound") => Some(ChannelDirection::Outbound),
        Some("inbound_outbound") => Some(ChannelDirection::InboundOutbound),
        _ => {
            p.push(
                loc,
                "enum",
                "Input should be 'inbound', 'outbound' or 'inbound_outbound'",
            );
            None
        }
    }
}

/// A connection's `media_encryption`: `"disable"`, `"allow"` or `"require"`.
pub fn media_encryption(v: &Value, loc: Loc, p: &mut Problems) -> Option<MediaEncryption> {
    let parsed = v.as_str().and_then(MediaEncryption::from_name);
    if parsed.is_none() {
        p.push(
            loc,
            "enum",
            "Input should be 'disable', 'allow' or 'require'",
        );
    }
    parsed
}

/// A connection's `include_headers`: `"none"`, `"x-headers"` or `"all"`.
pub fn include_headers(v: &Value, loc: Loc, p: &mut Problems) -> Option<IncludeHeaders> {
    let parsed = v.as_str().and_then(IncludeHeaders::from_name);
    if parsed.is_none() {
        p.push(loc, "enum", "Input should be 'none', 'x-headers' or 'all'");
    }
    parsed
}

/// A connection's `transfer`: `"refer"` or `"disabled"`.
pub fn transfer_mode(v: &Value, loc: Loc, p: &mut Problems) -> Option<TransferMode> {
    let parsed = v.as_str().and_then(TransferMode::from_name);
    if parsed.is_none() {
        p.push(loc, "enum", "Input should be 'refer' or 'disabled'");
    }
    parsed
}

/// Longest header name or parameter key in `headers_to_parameters`.
const MAX_HEADER_KEY_CHARS: usize = 64;

/// A connection's `headers_to_parameters`: at most [`MAX_HEADER_PARAMETERS`] SIP header names
/// (RFC 3261 tokens) each mapped to a distinct key of letters, digits, `_`, `-` and `.` that is
/// neither reserved ([`RESERVED_PARAMETERS`]) nor in the `sip.h.` namespace.
pub fn headers_to_parameters(
    v: &Value,
    loc: Loc,
    p: &mut Problems,
) -> Option<BTreeMap<String, String>> {
    let map = object(v, &loc, p)?;
    if map.len() > MAX_HEADER_PARAMETERS {
        p.push(
            loc,
            "too_long",
            format!("Object should have at most {MAX_HEADER_PARAMETERS} items"),
        );
        return None;
    }
    let before = p.len();
    let mut out = BTreeMap::new();
    let mut keys = HashSet::new();
    for (header, key) in map {
        let item = at(&loc, header.as_str());
        let token = |c: char| c.is_ascii_alphanumeric() || "-.!%*_+`'~".contains(c);
        if header.is_empty() || header.len() > MAX_HEADER_KEY_CHARS || !header.chars().all(token) {
            p.push(
                item.clone(),
                "value_error",
                format!("Value error, {header:?} is not a SIP header name (1-{MAX_HEADER_KEY_CHARS} token characters)"),
            );
            continue;
        }
        let Some(key) = string(key, item.clone(), p) else {
            continue;
        };
        let key_char = |c: char| c.is_ascii_alphanumeric() || "_-.".contains(c);
        let why = if key.is_empty()
            || key.len() > MAX_HEADER_KEY_CHARS
            || !key.chars().all(key_char)
        {
            Some(format!("is not a parameter key (1-{MAX_HEADER_KEY_CHARS} letters, digits, '_', '-' or '.')"))
        } else if RESERVED_PARAMETERS.contains(&key) || key.starts_with(HEADER_KEY_PREFIX) {
            Some(format!(
                "is reserved (the gateway sets it, or it is in the {HEADER_KEY_PREFIX} namespace)"
            ))
        } else if !keys.insert(key) {
            Some("is used by another header".to_owned())
        } else {
            None
        };
        match why {
            Some(why) => p.push(
                item,
                "value_error",
                format!("Value error, key {key:?} {why}"),
            ),
            None => {
                out.insert(header.clone(), key.to_owned());
            }
        }
    }
    (p.len() == before).then_some(out)
}

/// Seed 000: at least one connection with at least one phone number; numbers normalised to
/// E.164 with the configured default country code; a number listed twice is a problem.
pub fn connection_configs(
    v: &Value,
    country_code: Option<&str>,
    loc: Loc,
    p: &mut Problems,
) -> Option<Vec<ConnectionConfig>> {
    let items = non_empty_array(v, loc.clone(), p)?;
    if items.len() > MAX_CONNECTION_CONFIGS {
        p.push(
            loc,
            "too_long",
            format!("List should have at most {MAX_CONNECTION_CONFIGS} items"),
        );
        return None;
    }
    let before = p.len();
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let item_loc = at(&loc, i);
        let Some(map) = object(item, &item_loc, p) else {
            continue;
        };
        deny_unknown(map, &["connection_id", "phone_numbers"], &item_loc, p);
        let id = required(map, "connection_id", &item_loc, p)
            .and_then(|v| identifier(v, at(&item_loc, "connection_id"), p));
        let numbers = required(map, "phone_numbers", &item_loc, p).and_then(|v| {
            phone_numbers(
                v,
                country_code,
                &mut seen,
                at(&item_loc, "phone_numbers"),
                p,
            )
        });
        if let (Some(connection_id), Some(phone_numbers)) = (id, numbers) {
            out.push(ConnectionConfig {
                connection_id,
                phone_numbers,
            });
        }
    }
    (p.len() == before).then_some(out)
}

fn phone_numbers(
    v: &Value,
    country_code: Option<&str>,
    seen: &mut HashSet<String>,
    loc: Loc,
    p: &mut Problems,
) -> Option<Vec<String>> {
    let items = non_empty_array(v, loc.clone(), p)?;
    let before = p.len();
    let mut out = Vec::with_capacity(items.len());
    for (j, item) in items.iter().enumerate() {
        let Some(raw) = string(item, at(&loc, j), p) else {
            continue;
        };
        match normalize_number(raw, country_code) {
            Ok(e164) => {
                let text = e164.to_string();
                if !seen.insert(text.clone()) {
                    p.push(
                        at(&loc, j),
                        "value_error",
                        format!("Value error, phone number {text} is listed more than once"),
                    );
                } else {
                    out.push(text);
                }
            }
            Err(e) => p.push(
                at(&loc, j),
                "value_error",
                format!("Value error, {raw:?} is not a valid E.164 phone number: {e}"),
            ),
        }
    }
    (p.len() == before).then_some(out)
}

/// Seed 000's `inbound_config`: `HH:MM` times, day names as the seed spells them, an IANA zone.
/// Each field is checked on its own through [`Schedule::compile`] (the routing table's own
/// rules), so every bad field is reported; day names are stored in the seed's spelling.
pub fn inbound_config(v: &Value, loc: Loc, p: &mut Problems) -> Option<InboundConfig> {
    let map: &Map<String, Value> = object(v, &loc, p)?;
    deny_unknown(
        map,
        &["start_time", "end_time", "allowed_days", "timezone"],
        &loc,
        p,
    );
    let before = p.len();
    let text = |key: &str, p: &mut Problems| {
        required(map, key, &loc, p)
            .and_then(|v| string(v, at(&loc, key), p))
            .map(str::to_owned)
    };
    let start_time = text("start_time", p);
    let end_time = text("end_time", p);
    let timezone = text("timezone", p);
    let days: Option<Vec<String>> = required(map, "allowed_days", &loc, p)
        .and_then(|v| array(v, at(&loc, "allowed_days"), p))
        .map(|items| {
            items
                .iter()
                .enumerate()
                .filter_map(|(i, d)| {
                    string(d, at(&at(&loc, "allowed_days"), i), p).map(str::to_owned)
                })
                .collect()
        });
    // A template that compiles, with one field swapped in at a time.
    let template = InboundConfig {
        start_time: "00:00".into(),
        end_time: "00:00".into(),
        allowed_days: vec!["Monday".into()],
        timezone: "UTC".into(),
    };
    let check = |cfg: InboundConfig, loc: Loc, p: &mut Problems| {
        if let Err(e) = Schedule::compile(&cfg) {
            p.push(loc, schedule_error_type(&e), format!("Value error, {e}"));
        }
    };
    if let Some(t) = &start_time {
        check(
            InboundConfig {
                start_time: t.clone(),
                ..template.clone()
            },
            at(&loc, "start_time"),
            p,
        );
    }
    if let Some(t) = &end_time {
        check(
            InboundConfig {
                end_time: t.clone(),
                ..template.clone()
            },
            at(&loc, "end_time"),
            p,
        );
    }
    if let Some(tz) = &timezone {
        check(
            InboundConfig {
                timezone: tz.clone(),
                ..template.clone()
            },
            at(&loc, "timezone"),
            p,
        );
    }
    if let Some(days) = &days {
        let days_loc = at(&loc, "allowed_days");
        if days.is_empty() {
            p.push(
                days_loc.clone(),
                "too_short",
                "List should have at least 1 item after validation, not 0",
            );
        }
        for (i, d) in days.iter().enumerate() {
            check(
                InboundConfig {
                    allowed_days: vec![d.clone()],
                    ..template.clone()
                },
                at(&days_loc, i),
                p,
            );
        }
    }
    if p.len() != before {
        return None;
    }
    let cfg = InboundConfig {
        start_time: start_time?,
        end_time: end_time?,
        allowed_days: days?,
        timezone: timezone?,
    };
    match Schedule::compile(&cfg) {
        Ok(schedule) => Some(InboundConfig {
            allowed_days: schedule.allowed_days().map(str::to_owned).collect(),
            ..cfg
        }),
        Err(e) => {
            p.push(loc, schedule_error_type(&e), format!("Value error, {e}"));
            None
        }
    }
}

fn schedule_error_type(e: &RoutingError) -> &'static str {
    match e {
        RoutingError::InvalidTime { .. } => "time_format",
        RoutingError::UnknownDay { .. } => "enum",
        RoutingError::UnknownTimezone { .. } => "timezone",
        _ => "value_error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::error::ApiError;
    use serde_json::json;

    fn problems_of(f: impl FnOnce(&mut Problems)) -> Vec<(String, String)> {
        let mut p = Problems::default();
        f(&mut p);
        match p.finish() {
            Ok(()) => Vec::new(),
            Err(ApiError::Validation(errs)) => errs
                .into_iter()
                .map(|e| (serde_json::to_string(&e.loc).unwrap(), e.kind))
                .collect(),
            Err(other) => panic!("{other:?}"),
        }
    }

    #[test]
    fn names_follow_the_seed_pattern() {
        let mut p = Problems::default();
        assert_eq!(
            name(&json!("Customer Support Line"), vec![], &mut p).as_deref(),
            Some("Customer Support Line")
        );
        assert_eq!(
            name(&json!("Ünïcode_ok-1"), vec![], &mut p).as_deref(),
            Some("Ünïcode_ok-1")
        );
        assert!(p.is_empty());
        for bad in [
            json!(""),
            json!("x".repeat(51)),
            json!("semi;colon"),
            json!(5),
        ] {
            let mut p = Problems::default();
            assert_eq!(name(&bad, vec![], &mut p), None, "{bad}");
            assert!(!p.is_empty());
        }
    }

    #[test]
    fn connection_configs_normalise_and_report_each_bad_number() {
        let mut p = Problems::default();
        let ok = connection_configs(
            &json!([{"connection_id": "c1", "phone_numbers": ["080 4716 8000", "+1 212 555 1234"]}]),
            Some("91"),
            vec![],
            &mut p,
        )
        .unwrap();
        assert_eq!(ok[0].phone_numbers, ["+918047168000", "+12125551234"]);
        let errs = problems_of(|p| {
            connection_configs(
                &json!([
                    {"connection_id": "c1", "phone_numbers": ["+918047168000", "abc", "+918047168000"]},
                    {"connection_id": "", "phone_numbers": [], "extra": 1}
                ]),
                None,
                vec!["body".into(), "connection_configs".into()],
                p,
            );
        });
        let locs: Vec<&str> = errs.iter().map(|(l, _)| l.as_str()).collect();
        assert_eq!(
            locs,
            [
                r#"["body","connection_configs",0,"phone_numbers",1]"#,
                r#"["body","connection_configs",0,"phone_numbers",2]"#,
                r#"["body","connection_configs",1,"extra"]"#,
                r#"["body","connection_configs",1,"connection_id"]"#,
                r#"["body","connection_configs",1,"phone_numbers"]"#,
            ]
        );
        assert_eq!(
            problems_of(|p| {
                connection_configs(&json!([]), None, vec![], p);
            })[0]
                .1,
            "too_short"
        );
    }

    #[test]
    fn inbound_config_reports_every_bad_field_and_canonicalises_days() {
        let mut p = Problems::default();
        let cfg = inbound_config(
            &json!({"start_time": "09:00", "end_time": "18:00", "allowed_days": ["monday", "Friday"], "timezone": "Asia/Kolkata"}),
            vec![],
            &mut p,
        )
        .unwrap();
        assert_eq!(cfg.allowed_days, ["Monday", "Friday"]);
        let errs = problems_of(|p| {
            inbound_config(
                &json!({"start_time": "9am", "end_time": "25:00", "allowed_days": ["Funday"], "timezone": "Mars/Base"}),
                vec![],
                p,
            );
        });
        let locs: Vec<&str> = errs.iter().map(|(l, _)| l.as_str()).collect();
        assert_eq!(
            locs,
            [
                r#"["start_time"]"#,
                r#"["end_time"]"#,
                r#"["timezone"]"#,
                r#"["allowed_days",0]"#
            ]
        );
    }
}
