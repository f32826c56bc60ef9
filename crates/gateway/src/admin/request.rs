//! Request plumbing: body limits, media types, query strings, and a JSON field reader that
//! collects every validation problem instead of stopping at the first (FastAPI reports all).

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::HeaderMap;
use http_body_util::{BodyExt, Limited};
use serde_json::{Map, Value};

use super::body_timeout::is_timeout;
use super::error::{ApiError, FieldError, LocItem};

/// A `loc` under construction: `["body", "connection_configs", 0]`.
pub type Loc = Vec<LocItem>;

/// `loc` extended by one item.
pub fn at(loc: &[LocItem], item: impl Into<LocItem>) -> Loc {
    let mut l = loc.to_vec();
    l.push(item.into());
    l
}

/// The `["body"]` root location.
pub fn body_loc() -> Loc {
    vec![LocItem::from("body")]
}

/// The media type of the request without parameters, lower-cased (`""` when absent).
pub fn media_type(headers: &HeaderMap) -> String {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default()
}

/// Rejects a request whose declared `Content-Length` is over `limit` before reading anything.
pub fn check_declared_length(headers: &HeaderMap, limit: u64) -> Result<(), ApiError> {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(n) if n > limit => Err(ApiError::PayloadTooLarge { limit }),
        _ => Ok(()),
    }
}

/// Reads a JSON body: 415 unless `application/json` (or `…+json`), 413 over `limit` bytes,
/// 408 when it stalls (see [`super::body_timeout`]), 422 `json_invalid` for malformed JSON and
/// `missing` for an empty body.
pub async fn read_json<B>(headers: &HeaderMap, body: B, limit: usize) -> Result<Value, ApiError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    let mt = media_type(headers);
    if mt != "application/json" && !mt.ends_with("+json") {
        return Err(ApiError::UnsupportedMediaType {
            expected: "application/json",
        });
    }
    check_declared_length(headers, limit as u64)?;
    let bytes = match Limited::new(body, limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Err(ApiError::PayloadTooLarge {
                limit: limit as u64,
            })
        }
        Err(e) if is_timeout(&*e) => return Err(ApiError::RequestTimeout),
        // The client went away or sent a broken chunked body: report it as unreadable input.
        Err(e) => {
            return Err(ApiError::invalid(
                body_loc(),
                "body_unreadable",
                format!("could not read the body: {e}"),
            ))
        }
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid(body_loc(), "missing", "Field required"));
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::invalid(
            at(&body_loc(), offset_of(&bytes, e.line(), e.column())),
            "json_invalid",
            format!("JSON decode error: {e}"),
        )
    })
}

/// Byte offset of a serde_json (line, column) position, as FastAPI reports `json_invalid`.
fn offset_of(bytes: &[u8], line: usize, column: usize) -> usize {
    let line_start: usize = bytes
        .split(|b| *b == b'\n')
        .take(line.saturating_sub(1))
        .map(|l| l.len() + 1)
        .sum();
    (line_start + column.saturating_sub(1)).min(bytes.len())
}

/// `key=value` pairs of the query string, percent-decoded (`+` is a space).
pub fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let dec = |s: &str| {
                super::router::percent_decode(&s.replace('+', " ")).unwrap_or_else(|| s.to_owned())
            };
            (dec(k), dec(v))
        })
        .collect()
}

/// Collects validation problems; [`Problems::finish`] turns them into one 422.
#[derive(Debug, Default)]
pub struct Problems(Vec<FieldError>);

impl Problems {
    pub fn push(&mut self, loc: Loc, kind: &str, msg: impl Into<String>) {
        self.0.push(FieldError::new(loc, kind, msg));
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many problems so far; compare before/after to tell whether a sub-check failed.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// `Ok` when nothing was found, else the 422 listing everything.
    pub fn finish(self) -> Result<(), ApiError> {
        match self.0.is_empty() {
            true => Ok(()),
            false => Err(ApiError::Validation(self.0)),
        }
    }
}

/// The value as an object, or a `model_attributes_type` problem.
pub fn object<'v>(
    v: &'v Value,
    loc: &[LocItem],
    p: &mut Problems,
) -> Option<&'v Map<String, Value>> {
    let o = v.as_object();
    if o.is_none() {
        p.push(
            loc.to_vec(),
            "model_attributes_type",
            "Input should be a valid dictionary or object to extract fields from",
        );
    }
    o
}

/// Reports every key of `map` not in `known` (`extra_forbidden`).
pub fn deny_unknown(map: &Map<String, Value>, known: &[&str], loc: &[LocItem], p: &mut Problems) {
    for k in map.keys().filter(|k| !known.contains(&k.as_str())) {
        p.push(
            at(loc, k.as_str()),
            "extra_forbidden",
            "Extra inputs are not permitted",
        );
    }
}

/// A required field: reports `missing` when absent.
pub fn required<'v>(
    map: &'v Map<String, Value>,
    key: &str,
    loc: &[LocItem],
    p: &mut Problems,
) -> Option<&'v Value> {
    let v = map.get(key);
    if v.is_none() {
        p.push(at(loc, key), "missing", "Field required");
    }
    v
}

/// An optional field: `None` when absent or `null` (the seed's "null or omitted = unchanged").
pub fn optional<'v>(map: &'v Map<String, Value>, key: &str) -> Option<&'v Value> {
    map.get(key).filter(|v| !v.is_null())
}

pub fn string<'v>(v: &'v Value, loc: Loc, p: &mut Problems) -> Option<&'v str> {
    let s = v.as_str();
    if s.is_none() {
        p.push(loc, "string_type", "Input should be a valid string");
    }
    s
}

/// A non-negative integer that fits `u32`. Numeric strings and integral floats are accepted, as
/// pydantic's lax mode does.
pub fn uint(v: &Value, loc: Loc, p: &mut Problems) -> Option<u32> {
    let n = match v {
        Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64)),
        Value::String(s) => s.trim().parse::<i64>().ok(),
        _ => None,
    };
    match n {
        None => {
            p.push(loc, "int_parsing", "Input should be a valid integer");
            None
        }
        Some(n) if n < 0 => {
            p.push(
                loc,
                "greater_than_equal",
                "Input should be greater than or equal to 0",
            );
            None
        }
        Some(n) => match u32::try_from(n) {
            Ok(n) => Some(n),
            Err(_) => {
                p.push(
                    loc,
                    "less_than_equal",
                    format!("Input should be less than or equal to {}", u32::MAX),
                );
                None
            }
        },
    }
}

/// A finite number.
pub fn number(v: &Value, loc: Loc, p: &mut Problems) -> Option<f64> {
    let n = match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    let n = n.filter(|f| f.is_finite());
    if n.is_none() {
        p.push(loc, "float_parsing", "Input should be a valid number");
    }
    n
}

pub fn array<'v>(v: &'v Value, loc: Loc, p: &mut Problems) -> Option<&'v Vec<Value>> {
    let a = v.as_array();
    if a.is_none() {
        p.push(loc, "list_type", "Input should be a valid list");
    }
    a
}

/// A list with at least one item (`list_type`, `too_short`).
pub fn non_empty_array<'v>(v: &'v Value, loc: Loc, p: &mut Problems) -> Option<&'v Vec<Value>> {
    let items = array(v, loc.clone(), p)?;
    if items.is_empty() {
        p.push(
            loc,
            "too_short",
            "List should have at least 1 item after validation, not 0",
        );
        return None;
    }
    Some(items)
}

/// A string with at most `max` characters (`string_too_long`).
pub fn bounded_string(v: &Value, max: usize, loc: Loc, p: &mut Problems) -> Option<String> {
    let s = string(v, loc.clone(), p)?;
    if s.chars().count() > max {
        p.push(
            loc,
            "string_too_long",
            format!("String should have at most {max} characters"),
        );
        return None;
    }
    Some(s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_reader_collects_every_problem() {
        let v: Value = serde_json::json!({"a": 1, "b": "x", "c": -1, "zz": true});
        let mut p = Problems::default();
        let m = object(&v, &body_loc(), &mut p).unwrap();
        deny_unknown(m, &["a", "b", "c", "d"], &body_loc(), &mut p);
        string(
            required(m, "a", &body_loc(), &mut p).unwrap(),
            at(&body_loc(), "a"),
            &mut p,
        );
        uint(
            required(m, "b", &body_loc(), &mut p).unwrap(),
            at(&body_loc(), "b"),
            &mut p,
        );
        uint(
            required(m, "c", &body_loc(), &mut p).unwrap(),
            at(&body_loc(), "c"),
            &mut p,
        );
        assert!(required(m, "d", &body_loc(), &mut p).is_none());
        let ApiError::Validation(errs) = p.finish().unwrap_err() else {
            panic!()
        };
        let kinds: Vec<_> = errs.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "extra_forbidden",
                "string_type",
                "int_parsing",
                "greater_than_equal",
                "missing"
            ]
        );
        assert_eq!(
            serde_json::to_value(&errs[0].loc).unwrap(),
            serde_json::json!(["body", "zz"])
        );
    }

    #[test]
    fn lax_integers_like_pydantic() {
        let mut p = Problems::default();
        assert_eq!(uint(&serde_json::json!("4"), body_loc(), &mut p), Some(4));
        assert_eq!(uint(&serde_json::json!(4.0), body_loc(), &mut p), Some(4));
        assert_eq!(uint(&serde_json::json!(4.5), body_loc(), &mut p), None);
        assert_eq!(uint(&serde_json::json!(u64::MAX), body_loc(), &mut p), None);
    }

    #[test]
    fn query_pairs_decode() {
        assert_eq!(
            query_pairs(Some("limit=5&offset=%31&x=a+b&flag")),
            [
                ("limit".into(), "5".into()),
                ("offset".into(), "1".into()),
                ("x".into(), "a b".into()),
                ("flag".into(), String::new())
            ]
        );
    }

    #[test]
    fn json_error_offsets_count_bytes() {
        assert_eq!(offset_of(b"{\n  \"a\": ,\n}", 2, 8), 9);
    }
}
