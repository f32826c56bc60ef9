//! One webhook attempt: a single HTTP/1.1 POST on a fresh connection, bounded as a whole by
//! `[webhooks] timeout_ms` (connect, send, response head). The response body is not read.
//!
//! A fresh connection per attempt keeps a hanging receiver's socket from outliving its
//! timeout: when the budget runs out, the connection is dropped with everything else.

use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST, USER_AGENT};
use http::{Request, Uri};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::sign::SIGNATURE_HEADER;

/// Why an attempt did not deliver.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttemptError {
    /// The receiver answered, but not 2xx.
    #[error("receiver answered {0}")]
    Status(u16),
    #[error("no response within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Transport(String),
}

/// What goes out with each attempt besides the body.
#[derive(Debug, Clone)]
pub struct Attempt<'a> {
    pub url: &'a str,
    pub body: Bytes,
    pub signature: String,
    pub event: &'a str,
    pub event_id: &'a str,
}

/// POSTs once; `Ok` with the status for a 2xx answer.
pub async fn post(attempt: Attempt<'_>, budget: Duration) -> Result<u16, AttemptError> {
    match tokio::time::timeout(budget, post_unbounded(attempt)).await {
        Ok(result) => result,
        Err(_) => Err(AttemptError::Timeout(budget)),
    }
}

async fn post_unbounded(attempt: Attempt<'_>) -> Result<u16, AttemptError> {
    let transport = |e: &dyn std::fmt::Display| AttemptError::Transport(e.to_string());
    let uri: Uri = attempt.url.parse().map_err(|e| transport(&e))?;
    if uri.scheme_str() != Some("http") {
        return Err(AttemptError::Transport(
            "only http:// receivers are supported (validation refuses others)".to_owned(),
        ));
    }
    let host = uri.host().unwrap_or("").trim_matches(['[', ']']);
    let port = uri.port_u16().unwrap_or(80);
    let stream = TcpStream::connect((host, port))
        .await
        .map_err(|e| transport(&e))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| transport(&e))?;
    let authority = uri.authority().map_or(host, |a| a.as_str()).to_owned();
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let request = Request::post(path)
        .header(HOST, authority)
        .header(CONTENT_TYPE, "application/json")
        .header(
            USER_AGENT,
            concat!("switchboard/", env!("CARGO_PKG_VERSION")),
        )
        .header(SIGNATURE_HEADER, attempt.signature)
        .header("x-switchboard-event", attempt.event)
        .header("x-switchboard-event-id", attempt.event_id)
        .body(Full::new(attempt.body))
        .map_err(|e| transport(&e))?;
    let mut conn = std::pin::pin!(conn);
    let mut response = std::pin::pin!(sender.send_request(request));
    let response = tokio::select! {
        response = response.as_mut() => response,
        // With `Connection: close` the connection may finish in the same poll that read the
        // response: the response is then ready too.
        ended = conn.as_mut() => match ended {
            Ok(()) => response.await,
            Err(e) => return Err(transport(&e)),
        },
    }
    .map_err(|e| transport(&e))?;
    let status = response.status();
    match status.is_success() {
        true => Ok(status.as_u16()),
        false => Err(AttemptError::Status(status.as_u16())),
    }
}
