//! The admin HTTP API: hyper 1 (HTTP/1.1) with a small router of its own.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::state::AppState;

/// Response body type of every admin handler.
pub type Body = Full<Bytes>;

/// Accepts admin connections until `shutdown`, then lets in-flight requests finish.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: keep serving the connections we have.
                    tracing::warn!(error = %e, "admin accept failed");
                    continue;
                }
            },
        };
        tasks.spawn(connection(stream, peer, state.clone(), shutdown.clone()));
    }
}

async fn connection(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    state: AppState,
    shutdown: CancellationToken,
) {
    let service = service_fn(move |req: Request<Incoming>| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(handle(state, req).await) }
    });
    let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => {
            if let Err(e) = res {
                tracing::debug!(%peer, error = %e, "admin connection ended with an error");
            }
        }
        () = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

async fn handle(state: AppState, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let (status, ctype, body) = match (req.method().as_str(), path.as_str()) {
        ("GET", "/healthz") => (
            StatusCode::OK,
            "application/json",
            r#"{"status":"ok"}"#.to_owned(),
        ),
        ("GET", "/readyz") if state.is_ready() => (
            StatusCode::OK,
            "application/json",
            r#"{"status":"ready"}"#.to_owned(),
        ),
        ("GET", "/readyz") => (
            StatusCode::SERVICE_UNAVAILABLE,
            "application/json",
            r#"{"status":"starting"}"#.to_owned(),
        ),
        ("GET", "/metrics") => (
            StatusCode::OK,
            "text/plain; version=0.0.4",
            state.metrics.render(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "application/json",
            r#"{"detail":"Not Found"}"#.to_owned(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(ctype) {
        resp.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    resp
}
