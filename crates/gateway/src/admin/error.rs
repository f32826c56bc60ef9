//! Error responses in the seed pages' shapes.
//!
//! Validation problems answer 422 with FastAPI's `HTTPValidationError`
//! (`{"detail":[{"loc":["body","name"],"msg":…,"type":…}]}`, seed 003), listing every problem of
//! the request at once. Everything else answers `{"detail": "<message>"}` like FastAPI's
//! `HTTPException`.

use bytes::Bytes;
use http::header::{ALLOW, CONNECTION, CONTENT_TYPE};
use http::{HeaderValue, Method, Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;
use switchboard_store::StoreError;

use super::Body;

/// One element of a FastAPI `loc`: a field name or an array index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum LocItem {
    Field(String),
    Index(usize),
}

impl From<&str> for LocItem {
    fn from(s: &str) -> Self {
        LocItem::Field(s.to_owned())
    }
}

impl From<usize> for LocItem {
    fn from(i: usize) -> Self {
        LocItem::Index(i)
    }
}

/// One validation problem: where (`loc`), what (`msg`) and its pydantic error type (`type`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldError {
    pub loc: Vec<LocItem>,
    pub msg: String,
    #[serde(rename = "type")]
    pub kind: String,
}

impl FieldError {
    pub fn new(loc: Vec<LocItem>, kind: &str, msg: impl Into<String>) -> Self {
        Self {
            loc,
            msg: msg.into(),
            kind: kind.to_owned(),
        }
    }
}

/// Why an admin request failed; each variant knows its status code.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// 422: every problem found in the request.
    #[error("{} validation problem(s)", .0.len())]
    Validation(Vec<FieldError>),
    /// 401: missing or unknown API key. Deliberately says nothing about which.
    #[error("missing or invalid API key")]
    Unauthorized,
    /// 403: the key is valid but cannot act here (an org-less path with an unscoped key).
    #[error("{detail}")]
    Forbidden { detail: String },
    /// 404: no such path, a scope the key may not see, or a record that does not exist.
    #[error("{detail}")]
    NotFound { detail: String },
    /// 405: the path exists but not with this method.
    #[error("method not allowed")]
    MethodNotAllowed { allow: Vec<Method> },
    /// 409: the write conflicts with existing data (a phone number owned elsewhere, an id taken).
    #[error("{detail}")]
    Conflict { detail: String },
    /// 408: the body stalled past `[admin] body_timeout_secs`. The connection is closed after
    /// the answer (the rest of the body is never read).
    #[error("request body not received in time")]
    RequestTimeout,
    /// 413: the body is larger than the configured cap.
    #[error("request body larger than {limit} bytes")]
    PayloadTooLarge { limit: u64 },
    /// 415: the body is not of the expected media type.
    #[error("unsupported media type; expected {expected}")]
    UnsupportedMediaType { expected: &'static str },
    /// 503: the routing snapshot is not loaded yet.
    #[error("not ready: the routing snapshot is still loading")]
    NotReady,
    /// 503: the store failed (not the caller's fault). Logged with its cause, not returned.
    #[error("store unavailable")]
    Store(#[source] StoreError),
}

impl ApiError {
    /// A 422 with a single problem.
    pub fn invalid(loc: Vec<LocItem>, kind: &str, msg: impl Into<String>) -> Self {
        ApiError::Validation(vec![FieldError::new(loc, kind, msg)])
    }

    /// 404 for a record: `"<what> not found"`.
    pub fn not_found(what: impl std::fmt::Display) -> Self {
        ApiError::NotFound {
            detail: format!("{what} not found"),
        }
    }

    /// 404 exactly as for an unknown path (FastAPI's `{"detail": "Not Found"}`): also what a
    /// scoped key gets for another org, so it cannot tell "exists elsewhere" from "no such path".
    pub fn no_route() -> Self {
        ApiError::NotFound {
            detail: "Not Found".to_owned(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden { .. } => StatusCode::FORBIDDEN,
            ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::NotReady | ApiError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The response: 422 lists `detail` as an array, everything else as a string.
    pub fn into_response(self) -> Response<Body> {
        let status = self.status();
        let body = match &self {
            ApiError::Validation(errors) => serde_json::json!({ "detail": errors }),
            ApiError::MethodNotAllowed { .. } => {
                serde_json::json!({ "detail": "Method Not Allowed" })
            }
            ApiError::Store(e) => {
                tracing::error!(error = %e, "store call failed");
                serde_json::json!({ "detail": "store unavailable; retry later" })
            }
            other => serde_json::json!({ "detail": other.to_string() }),
        };
        let mut resp = json_response(status, &body);
        if let ApiError::MethodNotAllowed { allow } = &self {
            let list = allow
                .iter()
                .map(Method::as_str)
                .collect::<Vec<_>>()
                .join(", ");
            if let Ok(v) = HeaderValue::from_str(&list) {
                resp.headers_mut().insert(ALLOW, v);
            }
        }
        if matches!(self, ApiError::RequestTimeout) {
            // Say so explicitly: hyper closes the connection anyway (the body was not read).
            resp.headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
        if matches!(self, ApiError::Unauthorized) {
            resp.headers_mut()
                .insert("www-authenticate", HeaderValue::from_static("X-API-Key"));
        }
        resp
    }
}

impl From<StoreError> for ApiError {
    /// Data answers become 404/409; anything else is the store being unwell (503).
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { kind, id } => ApiError::not_found(format!("{kind} {id}")),
            StoreError::AlreadyExists { kind, id } => ApiError::Conflict {
                detail: format!("{kind} {id} already exists"),
            },
            // The owner may sit in another org: name the number, never the owner.
            StoreError::NumberTaken { phone_number, .. } => ApiError::Conflict {
                detail: format!(
                    "phone number {phone_number} is already assigned to another deployment"
                ),
            },
            // A value the database cannot hold (e.g. a version beyond its integer type) is input.
            StoreError::OutOfRange { field, value } => ApiError::invalid(
                vec![LocItem::from("body"), LocItem::from(field)],
                "value_error",
                format!("Value error, {value} is out of range"),
            ),
            other => ApiError::Store(other),
        }
    }
}

/// Serialises `body` as the JSON response with `status`.
pub fn json_response(status: StatusCode, body: &impl Serialize) -> Response<Body> {
    // Serialising our own response types cannot fail (string keys, no non-finite floats from
    // input: splits are validated finite); fall back to an empty object rather than panic.
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    let mut resp = Response::new(Full::new(Bytes::from(bytes)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}
