//! The Twilio-compatible call resource, so agent frameworks that hang up through Twilio's
//! REST API (Pipecat's `auto_hang_up` with `base_url` pointed at switchboard) work unchanged:
//!
//! * `POST /2010-04-01/Accounts/{AccountSid}/Calls/{CallSid}.json` with the form body
//!   `Status=completed` (or `canceled`) ends the call: BYE when answered, a final response
//!   when still ringing. Answers the call resource as JSON.
//! * The same update with `Twiml=<Response><Hangup/></Response>` does the same; the BYE's
//!   Reason and the call's summary line say the agent hung up through TwiML.
//! * `Twiml=<Response><Dial>+91…</Dial></Response>` (or `<Dial><Number>`, `<Dial><Sip>`,
//!   `<Refer><Sip>`) transfers the caller: the call flow sends the carrier a REFER and the
//!   answer is the call resource (200, `in-progress`); progress then reaches the agent as
//!   `transfer` events on its stream. Refused with Twilio's error shape: 400 for a connection
//!   with `transfer = "disabled"` (code 13227, Twilio's "Dial: no authorization to call this
//!   number", the nearest it has to "not allowed here"), 409 while another transfer of the call
//!   waits for its outcome or the call is not answered yet (21220, "invalid call state"), 503
//!   when the REFER cannot go out (20503). Other TwiML and malformed documents get 400
//!   ([`super::twiml`]).
//! * `GET` on the same path returns the resource of a live call.
//!
//! Authentication is HTTP Basic as Twilio's SDKs send it: the user name is the account SID
//! (not checked against anything secret), the password an admin API key. An unknown or
//! ended call, or one outside the key's scope, answers Twilio's 404 shape
//! `{"code":20404,"message":…,"more_info":…,"status":404}`.
//!
//! The admin router hands requests whose path [`matches()`] to [`handle`].

use std::time::UNIX_EPOCH;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use serde_json::{json, Value};

use super::body_timeout::RequestBody;
use crate::live_calls::{CallHandle, HangupCause, TransferRefused, TransferTarget};
use crate::state::AppState;

/// Path prefix of the Twilio REST API version we mimic.
const PREFIX: &str = "/2010-04-01/Accounts/";
/// A form with a handful of fields; anything larger is not a call update.
const MAX_FORM_BYTES: usize = 16 * 1024;
/// How long a call update waits for the call flow to take a transfer on (it answers within
/// one SIP engine turn; this only bounds a wedged engine).
const TRANSFER_ANSWER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// Twilio's documentation page for error `code`.
const MORE_INFO: &str = "https://www.twilio.com/docs/errors/";

/// Whether `path` is a call resource path (`/2010-04-01/Accounts/{sid}/Calls/{sid}.json`).
pub fn matches(path: &str) -> bool {
    parse_path(path).is_some()
}

fn parse_path(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix(PREFIX)?;
    let (account, rest) = rest.split_once('/')?;
    let call = rest.strip_prefix("Calls/")?.strip_suffix(".json")?;
    let valid = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric());
    (valid(account) && valid(call)).then_some((account, call))
}

/// Serves one call-resource request.
pub async fn handle(state: &AppState, req: Request<RequestBody>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let Some((account_sid, call_sid)) = parse_path(&path) else {
        return error(
            StatusCode::NOT_FOUND,
            20404,
            format!("The requested resource {path} was not found"),
        );
    };
    let Some(principal) = basic_password(req.headers().get(AUTHORIZATION))
        .and_then(|password| state.keyring.authenticate(password.as_bytes()))
    else {
        let mut resp = error(StatusCode::UNAUTHORIZED, 20003, "Authenticate".to_owned());
        resp.headers_mut().insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"Twilio API\""),
        );
        return resp;
    };
    let not_found = || {
        error(
            StatusCode::NOT_FOUND,
            20404,
            format!("The requested resource {path} was not found"),
        )
    };
    let Some(call) = state.calls.get(call_sid).map(|c| c.clone()) else {
        return not_found();
    };
    if call.details.account_sid != account_sid
        || !principal.may_access(&call.details.scope)
        || !call.is_live()
    {
        return not_found();
    }
    match *req.method() {
        Method::GET => json_response(StatusCode::OK, &resource(&call, "in-progress")),
        Method::POST => {
            let form = match Limited::new(req.into_body(), MAX_FORM_BYTES)
                .collect()
                .await
            {
                Ok(body) => parse_form(&body.to_bytes()),
                Err(_) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        20001,
                        "Request body could not be read".to_owned(),
                    )
                }
            };
            let field = |name: &str| {
                form.iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.as_str())
            };
            let status = field("Status");
            let hang_up = |cause| match call.hangup(cause) {
                Ok(()) => json_response(StatusCode::OK, &resource(&call, "completed")),
                Err(_) => not_found(),
            };
            if let (None, Some(twiml)) = (status, field("Twiml")) {
                return match super::twiml::parse(twiml) {
                    Ok(super::twiml::Instruction::Hangup) => hang_up(HangupCause::Twiml),
                    Ok(super::twiml::Instruction::Transfer { target }) => {
                        transfer(&call, target).await.unwrap_or_else(not_found)
                    }
                    Err(e) => error(StatusCode::BAD_REQUEST, e.code(), e.to_string()),
                };
            }
            match status {
                Some("completed" | "canceled") => hang_up(HangupCause::RestApi),
                Some(other) => error(
                    StatusCode::BAD_REQUEST,
                    21218,
                    format!(
                        "Invalid Status {other:?}: only 'completed' and 'canceled' are supported"
                    ),
                ),
                None => error(
                    StatusCode::BAD_REQUEST,
                    21218,
                    "Status or Twiml is required (Url updates are not supported)".to_owned(),
                ),
            }
        }
        _ => error(
            StatusCode::METHOD_NOT_ALLOWED,
            20004,
            "Method not allowed".to_owned(),
        ),
    }
}

/// Asks the call to transfer; `None` when the call has ended (the caller answers 404).
async fn transfer(call: &CallHandle, target: TransferTarget) -> Option<Response<Full<Bytes>>> {
    let answer = tokio::time::timeout(TRANSFER_ANSWER_TIMEOUT, call.transfer(target)).await;
    let refused = match answer {
        Ok(Ok(())) => {
            return Some(json_response(
                StatusCode::OK,
                &resource(call, "in-progress"),
            ))
        }
        Ok(Err(refused)) => refused,
        Err(_) => TransferRefused::NotSent("the call did not answer in time".to_owned()),
    };
    let (status, code) = match refused {
        TransferRefused::Ended => return None,
        TransferRefused::Disabled => (StatusCode::BAD_REQUEST, 13227),
        TransferRefused::InProgress | TransferRefused::NotInProgress => {
            (StatusCode::CONFLICT, 21220)
        }
        TransferRefused::NotSent(_) => (StatusCode::SERVICE_UNAVAILABLE, 20503),
    };
    Some(error(status, code, refused.to_string()))
}

/// The call resource in Twilio's JSON shape (the fields SDKs read).
fn resource(call: &CallHandle, status: &str) -> Value {
    let d = &call.details;
    let started = call
        .started_at
        .duration_since(UNIX_EPOCH)
        .map(|t| t.as_secs())
        .unwrap_or(0);
    let started = chrono::DateTime::from_timestamp(i64::try_from(started).unwrap_or(0), 0)
        .map(|t| t.format("%a, %d %b %Y %H:%M:%S +0000").to_string());
    json!({
        "sid": d.call_sid,
        "account_sid": d.account_sid,
        "to": d.to,
        "from": d.from,
        "status": status,
        "direction": "inbound",
        "date_created": started,
        "start_time": started,
        "uri": format!("{PREFIX}{}/Calls/{}.json", d.account_sid, d.call_sid),
    })
}

fn error(status: StatusCode, code: u32, message: String) -> Response<Full<Bytes>> {
    json_response(
        status,
        &json!({ "code": code, "message": message, "more_info": format!("{MORE_INFO}{code}"), "status": status.as_u16() }),
    )
}

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// The password of a `Basic` Authorization header.
fn basic_password(header: Option<&HeaderValue>) -> Option<String> {
    use base64::Engine as _;
    let value = header?.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    text.split_once(':')
        .map(|(_, password)| password.to_owned())
}

/// `application/x-www-form-urlencoded` pairs (`+` is a space, `%HH` an octet).
fn parse_form(body: &[u8]) -> Vec<(String, String)> {
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (form_decode(k), form_decode(v))
        })
        .collect()
}

fn form_decode(s: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16).and_then(|d| u8::try_from(d).ok());
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match (
                bytes.get(i + 1).and_then(|b| hex(*b)),
                bytes.get(i + 2).and_then(|b| hex(*b)),
            ) {
                (Some(high), Some(low)) => {
                    out.push(high << 4 | low);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_paths_are_recognised() {
        assert_eq!(
            parse_path("/2010-04-01/Accounts/AC1/Calls/CA2.json"),
            Some(("AC1", "CA2"))
        );
        assert!(!matches("/2010-04-01/Accounts/AC1/Calls/CA2"));
        assert!(!matches("/2010-04-01/Accounts/AC1/Calls/.json"));
        assert!(!matches("/2010-04-01/Accounts/AC1/Calls/CA2.json/x"));
        assert!(!matches("/v1/orgs/o/workspaces/w/deployments"));
    }

    #[test]
    fn forms_and_basic_auth_decode() {
        assert_eq!(
            parse_form(b"Status=completed&Twiml=%3CResponse%3E+x%2"),
            vec![
                ("Status".into(), "completed".into()),
                ("Twiml".into(), "<Response> x%2".into())
            ]
        );
        use base64::Engine as _;
        let header = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("ACxyz:key:with:colons")
        );
        assert_eq!(
            basic_password(Some(&HeaderValue::from_str(&header).unwrap())).as_deref(),
            Some("key:with:colons")
        );
        assert_eq!(
            basic_password(Some(&HeaderValue::from_static("Bearer abc"))),
            None
        );
        assert_eq!(basic_password(None), None);
    }
}
