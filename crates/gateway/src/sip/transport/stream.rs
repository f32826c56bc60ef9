//! SIP over streams: TCP, and TLS (RFC 3261 §26) as a handshake in front of the same framing.
//!
//! One acceptor task per listener screens each source at accept (an untrusted or banned address
//! never holds a socket of ours, and never gets a TLS handshake: that is CPU we would spend for a
//! stranger), caps connections per source and in all, registers the connection's writer so that
//! responses and our in-dialog requests go out on it, and spawns one task per connection. A TLS
//! connection must finish its handshake within [`TLS_HANDSHAKE_TIMEOUT`]; a failed handshake
//! (garbage, a plain SIP message, no client certificate under mutual TLS) closes the connection,
//! is counted in `switchboard_sip_tls_handshake_failures_total` and logged at most once a second.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use dashmap::DashMap;
use switchboard_sip::{Frame, StreamDecoder, Transport};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::super::guard::{Standing, TcpSlot};
use super::{canonical, ReaderShared, MAX_TCP_CONNECTIONS, TCP_IDLE_TIMEOUT, TCP_WRITE_QUEUE};
use crate::tls::LogGate;

/// Read buffer for streams; messages larger than this are assembled across reads.
const TCP_READ_CHUNK: usize = 16 * 1024;

/// A TLS client must complete its handshake within this. A real peer needs two round trips
/// (tens of milliseconds); 10 s tolerates a congested link while a client that opens a
/// connection and sends nothing holds its slot only briefly.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Writers of open stream connections (TCP and TLS), by peer address.
pub type Connections = Arc<DashMap<SocketAddr, mpsc::Sender<Bytes>>>;

/// What kind of stream a listener accepts.
#[derive(Clone)]
pub enum StreamKind {
    Tcp,
    Tls(TlsAcceptor),
}

impl std::fmt::Debug for StreamKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StreamKind::Tcp => "Tcp",
            StreamKind::Tls(_) => "Tls",
        })
    }
}

impl StreamKind {
    fn transport(&self) -> Transport {
        match self {
            StreamKind::Tcp => Transport::Tcp,
            StreamKind::Tls(_) => Transport::Tls,
        }
    }
}

/// Removes a connection's writer from the registry when its reader ends.
struct Registered {
    peer: SocketAddr,
    conns: Connections,
    /// The source's TCP slot, given back when the connection ends.
    _slot: TcpSlot,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.conns.remove(&self.peer);
    }
}

/// Accepts connections on `listener` until `shutdown`.
pub async fn acceptor(
    listener: TcpListener,
    kind: StreamKind,
    shared: ReaderShared,
    conns: Connections,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    let gate = Arc::new(LogGate::default());
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, transport = kind.transport().as_str(), "SIP stream accept failed");
                    // EMFILE: back off briefly instead of spinning.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let peer = canonical(peer);
        let now = Instant::now();
        let standing = shared.guard.standing(now, peer.ip());
        if standing != Standing::Trusted {
            // Closed at accept: an untrusted address never holds a socket of ours.
            shared.guard.dropped(now, peer.ip(), standing);
            drop(stream);
            continue;
        }
        let Some(slot) = shared.guard.tcp_slot(peer.ip()) else {
            drop(stream);
            continue;
        };
        if conns.len() >= MAX_TCP_CONNECTIONS {
            shared
                .metrics
                .queue_full
                .with_label_values(&["tcp_connections"])
                .inc();
            drop(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let (writer_tx, writer_rx) = mpsc::channel(TCP_WRITE_QUEUE);
        conns.insert(peer, writer_tx.clone());
        let registered = Registered {
            peer,
            conns: Arc::clone(&conns),
            _slot: slot,
        };
        let connection = Connection {
            peer,
            shared: shared.clone(),
            writer_tx,
            writer_rx,
            registered,
            shutdown: shutdown.clone(),
        };
        let kind = kind.clone();
        let gate = Arc::clone(&gate);
        tasks.spawn(async move {
            match kind {
                StreamKind::Tcp => connection.serve(stream, Transport::Tcp).await,
                StreamKind::Tls(acceptor) => {
                    let shutdown = connection.shutdown.clone();
                    let handshake =
                        tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream));
                    let outcome = tokio::select! {
                        () = shutdown.cancelled() => return,
                        outcome = handshake => outcome,
                    };
                    match outcome {
                        Ok(Ok(tls)) => connection.serve(tls, Transport::Tls).await,
                        Ok(Err(e)) => handshake_failed(&connection, &gate, "error", &e.to_string()),
                        Err(_) => handshake_failed(
                            &connection,
                            &gate,
                            "timeout",
                            "no handshake within the timeout",
                        ),
                    }
                }
            }
        });
    }
}

/// Counts and (rate-limited) logs a failed TLS handshake; the connection is then dropped.
fn handshake_failed(connection: &Connection, gate: &LogGate, reason: &str, detail: &str) {
    connection
        .shared
        .metrics
        .tls_handshake_failures
        .with_label_values(&[reason])
        .inc();
    if gate.allow() {
        tracing::info!(peer = %connection.peer, reason, detail, "SIP TLS handshake failed; connection closed (at most one such line per second)");
    }
}

/// One accepted stream connection and what serving it needs.
struct Connection {
    peer: SocketAddr,
    shared: ReaderShared,
    writer_tx: mpsc::Sender<Bytes>,
    writer_rx: mpsc::Receiver<Bytes>,
    registered: Registered,
    shutdown: CancellationToken,
}

impl Connection {
    /// Frames SIP messages from `stream` until it closes, idles out or cannot be framed; a
    /// writer task sends what the engines queue for this peer.
    async fn serve<S>(self, stream: S, transport: Transport)
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let Connection {
            peer,
            shared,
            writer_tx,
            mut writer_rx,
            registered,
            shutdown,
        } = self;
        let (mut read, mut write) = tokio::io::split(stream);
        let writer_shutdown = shutdown.child_token();
        let writer_done = writer_shutdown.clone();
        let writer = tokio::spawn(async move {
            loop {
                let bytes = tokio::select! {
                    () = writer_shutdown.cancelled() => break,
                    next = writer_rx.recv() => match next {
                        Some(b) => b,
                        None => break,
                    },
                };
                // Flush: TLS may hold records back until asked (a no-op for TCP).
                if write.write_all(&bytes).await.is_err() || write.flush().await.is_err() {
                    break;
                }
            }
            let _ = write.shutdown().await;
        });
        let mut decoder = StreamDecoder::new(shared.max_message_bytes);
        let mut buf = BytesMut::with_capacity(TCP_READ_CHUNK);
        'conn: loop {
            buf.reserve(TCP_READ_CHUNK);
            let read_result = tokio::select! {
                () = shutdown.cancelled() => break,
                r = tokio::time::timeout(TCP_IDLE_TIMEOUT, read.read_buf(&mut buf)) => r,
            };
            match read_result {
                Err(_) | Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(_)) => {}
            }
            loop {
                match decoder.decode(&mut buf) {
                    Ok(None) => break,
                    Ok(Some(Frame::KeepAlive)) => {
                        // RFC 5626 §3.5.1: answer a CRLFCRLF ping with a CRLF pong.
                        let _ = writer_tx.try_send(Bytes::from_static(b"\r\n"));
                    }
                    Ok(Some(Frame::Message(message))) => {
                        if shared.screen(peer, &message.bytes()).is_err() {
                            // Banned (or no longer trusted) mid-connection: close it.
                            break 'conn;
                        }
                        if let Some(reply) = shared.admit(peer, transport, message.bytes()) {
                            let _ = writer_tx.try_send(reply);
                        }
                    }
                    Err(e) => {
                        // The stream can no longer be framed (RFC 3261 §18.3): close it.
                        shared
                            .metrics
                            .parse_errors
                            .with_label_values(&["closed"])
                            .inc();
                        if matches!(e, switchboard_sip::SipError::MessageTooLarge { .. }) {
                            shared.metrics.oversized.inc();
                        }
                        tracing::debug!(%peer, error = %e, "closing SIP stream connection");
                        break 'conn;
                    }
                }
            }
        }
        drop(registered);
        drop(writer_tx);
        // Let queued responses drain, but not forever.
        if tokio::time::timeout(Duration::from_secs(2), writer)
            .await
            .is_err()
        {
            writer_done.cancel();
        }
    }
}
