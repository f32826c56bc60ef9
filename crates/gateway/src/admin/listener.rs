//! The admin listener: accepts connections, caps how many are open, and bounds how long a client
//! may take to send a request, so that a few deliberately slow clients (slowloris) cannot hold
//! the admin API, its tasks or the process's file descriptors.
//!
//! Three bounds, one per way of stalling:
//! * request head: [`HEADER_READ_TIMEOUT`] (hyper's `header_read_timeout`). hyper arms it
//!   whenever it waits for a request head, which includes an idle keep-alive connection waiting
//!   for its next request, so idle connections are closed after the same time;
//! * request body: `[admin] body_timeout_secs` (see [`super::body_timeout`]), answered 408;
//! * open connections: `[admin] max_connections`; more are closed at accept.
//!
//! With `[admin] tls_cert`/`tls_key` every connection is TLS (HTTPS only): the handshake must
//! finish within the header timeout, so a client that connects and never says hello is bounded
//! like a slowloris one.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::IntGauge;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::body_timeout::{Deadline, TimedBody};
use super::request::media_type;
use crate::config::AdminConfig;
use crate::state::AppState;

/// How long a client may take to send a request head, and how long a keep-alive connection may
/// sit idle before its next one. 10 s: a real client sends its head in one packet, within
/// milliseconds; hyper's own default (30 s) lets a slowloris client hold a connection three
/// times as long for nothing.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The bounds [`serve_with`] enforces. [`Limits::from_config`] gives the production values;
/// tests use short ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// See [`HEADER_READ_TIMEOUT`].
    pub header_read_timeout: Duration,
    /// `[admin] body_timeout_secs`: total for JSON bodies, between reads for multipart uploads.
    pub body_timeout: Duration,
    /// `[admin] max_connections`.
    pub max_connections: usize,
}

impl Limits {
    pub fn from_config(admin: &AdminConfig) -> Self {
        Self {
            header_read_timeout: HEADER_READ_TIMEOUT,
            body_timeout: Duration::from_secs(admin.body_timeout_secs),
            max_connections: admin.max_connections,
        }
    }
}

/// Accepts admin connections until `shutdown`, then lets in-flight requests finish; the limits
/// come from `[admin]`. With `tls`, connections are HTTPS.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    state: AppState,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    let limits = Limits::from_config(&state.config.admin);
    accept_loop(
        listener,
        tls,
        state,
        shutdown,
        tasks,
        limits,
        Surface::Admin,
    )
    .await;
}

/// `[metrics] listen`: `/metrics`, `/healthz` and `/readyz` only (anything else 404), with
/// the admin listener's bounds, so Prometheus and load balancers need no admin access.
pub async fn serve_probes(
    listener: TcpListener,
    state: AppState,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    let limits = Limits::from_config(&state.config.admin);
    accept_loop(
        listener,
        None,
        state,
        shutdown,
        tasks,
        limits,
        Surface::Probes,
    )
    .await;
}

/// What a listener answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Surface {
    /// The whole admin API.
    Admin,
    /// Metrics and health only (`[metrics] listen`).
    Probes,
}

/// [`serve`] over plain HTTP with explicit limits.
pub async fn serve_with(
    listener: TcpListener,
    state: AppState,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    limits: Limits,
) {
    accept_loop(
        listener,
        None,
        state,
        shutdown,
        tasks,
        limits,
        Surface::Admin,
    )
    .await;
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    state: AppState,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    limits: Limits,
    surface: Surface,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => {
                // Open event streams end, so their connections can drain.
                state.events.close();
                break;
            }
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: keep serving the connections we have, and back off a
                    // little so a persistent error does not spin.
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Over the cap the connection is closed at once (dropped) rather than left waiting:
        // the client learns immediately, and we hold no descriptor or task for it.
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            state.metrics.admin_connections_rejected.inc();
            tracing::debug!(%peer, max = limits.max_connections, "admin connection over the cap, closed");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let slot = Slot::new(permit, state.metrics.admin_connections_open.clone());
        let (state, shutdown) = (state.clone(), shutdown.clone());
        match &tls {
            None => tasks.spawn(connection(
                stream, peer, state, shutdown, limits, slot, surface,
            )),
            Some(acceptor) => {
                let accept = acceptor.accept(stream);
                tasks.spawn(async move {
                    match tokio::time::timeout(limits.header_read_timeout, accept).await {
                        Ok(Ok(tls)) => {
                            connection(tls, peer, state, shutdown, limits, slot, surface).await
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "admin TLS handshake failed");
                        }
                        Err(_) => {
                            state.metrics.admin_header_timeouts.inc();
                            tracing::debug!(%peer, "admin TLS handshake timed out");
                        }
                    }
                })
            }
        };
    }
}

/// One of the `max_connections` slots, held for the life of a connection; keeps the gauge.
#[derive(Debug)]
struct Slot {
    _permit: OwnedSemaphorePermit,
    open: IntGauge,
}

impl Slot {
    fn new(permit: OwnedSemaphorePermit, open: IntGauge) -> Self {
        open.inc();
        Self {
            _permit: permit,
            open,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.dec();
    }
}

async fn connection<S>(
    stream: S,
    peer: SocketAddr,
    state: AppState,
    shutdown: CancellationToken,
    limits: Limits,
    _slot: Slot,
    surface: Surface,
) where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let metrics = state.metrics.clone();
    let service = service_fn(move |req: Request<Incoming>| {
        let state = state.clone();
        // Uploads stream up to `max_upload_bytes`, so they get an idle bound rather than a total.
        let deadline = match media_type(req.headers()).as_str() {
            "multipart/form-data" => Deadline::Idle(limits.body_timeout),
            _ => Deadline::Total(limits.body_timeout),
        };
        let counter = state.metrics.admin_body_timeouts.clone();
        let req = req.map(|body| TimedBody::new(body, deadline, counter));
        async move {
            Ok::<_, Infallible>(match surface {
                Surface::Admin => super::handle(state, req).await,
                Surface::Probes => super::handle_probe(state, req).await,
            })
        }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => {
            if let Err(e) = res {
                if e.is_timeout() {
                    metrics.admin_header_timeouts.inc();
                }
                tracing::debug!(%peer, error = %e, "admin connection ended with an error");
            }
        }
        () = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

#[cfg(test)]
mod tests {
    //! Real TCP against a gateway started in-process, with a second admin listener on short
    //! limits. Every wait is bounded by [`GUARD`] so that a regression fails instead of hanging;
    //! nothing asserts how fast anything was.

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpStream;

    use super::*;
    use crate::config::{ApiKey, Config};
    use crate::Running;

    const KEY: &str = "listener-test-key";
    /// Upper bound on any wait; far above the limits under test.
    const GUARD: Duration = Duration::from_secs(10);
    const SHORT: Duration = Duration::from_millis(300);

    struct Harness {
        running: Running,
        admin: SocketAddr,
        _dir: tempfile::TempDir,
    }

    async fn start(limits: Limits) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Config::default();
        c.admin.listen = "127.0.0.1:0".parse().unwrap();
        c.admin.api_keys = vec![ApiKey::new(KEY)];
        c.store.url = format!("sqlite://{}", dir.path().join("t.db").display());
        c.sip.udp = "127.0.0.1:0".parse().unwrap();
        c.sip.tcp = "127.0.0.1:0".parse().unwrap();
        let running = crate::start(c).await.unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = listener.local_addr().unwrap();
        let (state, token) = (running.state.clone(), running.shutdown_token());
        let tasks = TaskTracker::new();
        tokio::spawn(serve_with(listener, state, token, tasks, limits));
        Harness {
            running,
            admin,
            _dir: dir,
        }
    }

    fn limits(max_connections: usize) -> Limits {
        Limits {
            header_read_timeout: SHORT,
            body_timeout: SHORT,
            max_connections,
        }
    }

    /// Reads until the peer closes (EOF or reset); `None` if it is still open after [`GUARD`].
    async fn until_closed(s: &mut TcpStream) -> Option<String> {
        let mut got = Vec::new();
        let read = tokio::time::timeout(GUARD, async {
            let mut buf = [0u8; 4096];
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
        });
        read.await
            .ok()
            .map(|()| String::from_utf8_lossy(&got).into_owned())
    }

    /// One keep-alive `GET /healthz` on `s`; the status line and headers of the answer.
    async fn healthz(s: &mut TcpStream) -> String {
        s.write_all(b"GET /healthz HTTP/1.1\r\nhost: t\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        // `{"status":"ok"}` is the whole body; stop once it is in.
        while !got.ends_with(b"}") {
            let n = tokio::time::timeout(GUARD, s.read(&mut buf))
                .await
                .expect("answer within the guard")
                .unwrap();
            assert!(n > 0, "closed before answering: {got:?}");
            got.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&got).into_owned()
    }

    async fn connect(addr: SocketAddr) -> TcpStream {
        TcpStream::connect(addr).await.unwrap()
    }

    #[tokio::test]
    async fn stalled_headers_and_idle_keep_alive_are_cut_off_while_others_are_served() {
        let h = start(limits(16)).await;
        let mut stalled = connect(h.admin).await;
        stalled
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: t\r\n")
            .await
            .unwrap();
        let mut idle = connect(h.admin).await;
        assert!(healthz(&mut idle).await.starts_with("HTTP/1.1 200"));

        // A normal client is served while the other two wait.
        let mut normal = connect(h.admin).await;
        assert!(healthz(&mut normal).await.starts_with("HTTP/1.1 200"));

        let cut = until_closed(&mut stalled).await;
        assert!(cut.is_some(), "half-sent headers kept the connection open");
        assert!(!cut.unwrap().contains("200 OK"));
        assert_eq!(until_closed(&mut idle).await.as_deref(), Some(""));
        assert!(h.running.state.metrics.admin_header_timeouts.get() >= 2);

        // And the API still answers new clients afterwards.
        let mut after = connect(h.admin).await;
        assert!(healthz(&mut after).await.starts_with("HTTP/1.1 200"));
        h.running.stop().await;
    }

    #[tokio::test]
    async fn connections_over_the_cap_are_closed_and_the_api_recovers() {
        let h = start(Limits {
            header_read_timeout: GUARD * 3,
            ..limits(2)
        })
        .await;
        let metrics = h.running.state.metrics.clone();
        let mut a = connect(h.admin).await;
        let mut b = connect(h.admin).await;
        assert!(healthz(&mut a).await.starts_with("HTTP/1.1 200"));
        assert!(healthz(&mut b).await.starts_with("HTTP/1.1 200"));
        assert_eq!(metrics.admin_connections_open.get(), 2);

        let mut over = connect(h.admin).await;
        let _ = over
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: t\r\n\r\n")
            .await;
        let answer = until_closed(&mut over).await;
        assert_eq!(
            answer.as_deref(),
            Some(""),
            "the third connection was served"
        );
        assert_eq!(metrics.admin_connections_rejected.get(), 1);

        // The two within the cap keep working.
        assert!(healthz(&mut a).await.starts_with("HTTP/1.1 200"));
        assert!(healthz(&mut b).await.starts_with("HTTP/1.1 200"));

        // Once they close, their slots are free again.
        drop((a, b));
        tokio::time::timeout(GUARD, async {
            while metrics.admin_connections_open.get() > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("closed connections release their slots");
        let mut again = connect(h.admin).await;
        assert!(healthz(&mut again).await.starts_with("HTTP/1.1 200"));
        h.running.stop().await;
    }

    #[tokio::test]
    async fn a_stalled_json_body_gets_408_and_the_connection_closes() {
        let h = start(limits(16)).await;
        let mut slow = connect(h.admin).await;
        let head = format!(
            "PUT /v1/orgs/acme/workspaces/ws1/connections/c1 HTTP/1.1\r\nhost: t\r\n\
             x-api-key: {KEY}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"na"
        );
        slow.write_all(head.as_bytes()).await.unwrap();
        let answer = until_closed(&mut slow).await.expect("connection closed");
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert_eq!(h.running.state.metrics.admin_body_timeouts.get(), 1);
        let mut normal = connect(h.admin).await;
        assert!(healthz(&mut normal).await.starts_with("HTTP/1.1 200"));
        h.running.stop().await;
    }

    #[tokio::test]
    async fn an_open_event_stream_ends_at_shutdown_so_the_listener_drains() {
        let h = start(limits(8)).await;
        let mut s = connect(h.admin).await;
        let request = format!(
            "GET /v1/orgs/o/workspaces/w/events HTTP/1.1\r\nhost: t\r\nx-api-key: {KEY}\r\n\r\n"
        );
        s.write_all(request.as_bytes()).await.unwrap();
        let mut head = [0u8; 256];
        let n = tokio::time::timeout(GUARD, s.read(&mut head))
            .await
            .expect("stream opens")
            .unwrap();
        let head = String::from_utf8_lossy(&head[..n]).into_owned();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(head.contains("text/event-stream"), "{head}");
        let stopping = h.running.shutdown_token();
        stopping.cancel();
        // The stream ends and the connection closes well before the drain timeout.
        let rest = until_closed(&mut s).await.expect("closed at shutdown");
        assert!(!rest.contains("event: "), "{rest}");
        tokio::time::timeout(GUARD, h.running.wait())
            .await
            .expect("drained");
    }
}
