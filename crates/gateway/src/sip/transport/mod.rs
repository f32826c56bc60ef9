//! SIP over UDP, TCP and TLS: the socket side of the front end.
//!
//! Each SIP engine reads its own UDP socket inline ([`UdpReader`]); one task per TCP or TLS
//! connection ([`stream`]) frames stream messages and queues them, as [`Inbound`] items, for the engine
//! owning their Call-ID ([`owner`]). Before
//! anything is copied or parsed, the source is screened ([`Guard`]): untrusted and banned
//! addresses are dropped (or, in `reject` mode, get a rare stateless 403) and TCP connections
//! from them are closed at accept. A trusted message is then charged to its source's token
//! bucket ([`RateLimiter`]) and checked against `[sip] max_message_bytes`, so a flood is shed
//! in the reader and never fills the queue other carriers share. Excess INVITEs get a
//! stateless `503` with `Retry-After` (a few per second per source); the rest is dropped.
//!
//! Sending never blocks an engine: UDP uses `try_send_to` (a full socket buffer
//! drops the datagram; the transaction layer retransmits), TCP hands the bytes to the
//! connection's writer task through a bounded queue. TCP responses go out on the connection
//! the request came in on (RFC 3261 §18.2.2), looked up by the peer's address.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use switchboard_sip::stateless::StatelessTagger;
use switchboard_sip::{HeaderName, OwnedMessage, Transport};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::guard::{Guard, Offence, Standing};
use super::metrics::SipMetrics;
use super::rate_limit::{RateLimiter, Verdict};
use super::refusal::Refusal;

/// Messages waiting for one engine (forwarded from TCP or other engines). At ~10 µs per message this is ~40 ms of work:
/// enough to ride out a burst, small enough that a stalled task is noticed (drops are
/// counted in `sip_queue_full_total{queue="inbound"}`).
pub const INBOUND_QUEUE: usize = 4096;

/// Outgoing messages queued per TCP connection before further ones are dropped (a peer
/// that does not read its socket must not make us buffer without bound).
pub const TCP_WRITE_QUEUE: usize = 256;

/// Concurrent TCP connections; more are refused at accept. Carriers open a handful each.
pub const MAX_TCP_CONNECTIONS: usize = 4096;

/// A TCP connection that carried nothing (not even a CRLF keep-alive) for this long is
/// closed. Carriers ping every 30–60 s; five minutes of silence means the peer is gone.
pub const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// One message from the network, for a SIP engine.
#[derive(Debug, Clone)]
pub struct Inbound {
    /// Where it came from (IPv4-mapped addresses already turned into IPv4).
    pub source: SocketAddr,
    pub transport: Transport,
    pub message: Parsed,
}

/// A message as the reader left it: parsed (the engine does not parse again), or raw
/// when it does not parse (the endpoint answers what it can salvage, statelessly).
#[derive(Debug, Clone)]
pub enum Parsed {
    /// Boxed: the parsed index is ~760 bytes, and the queue moves items by value.
    Message(Box<OwnedMessage>),
    Unparsed(Bytes),
}

impl Parsed {
    /// The bytes as they will be handed on.
    pub fn bytes(&self) -> Bytes {
        match self {
            Parsed::Message(m) => m.bytes(),
            Parsed::Unparsed(b) => b.clone(),
        }
    }
}

/// What the readers share: limits, the rate limiter, metrics and the queue to the endpoint.
#[derive(Debug, Clone)]
pub struct ReaderShared {
    pub max_message_bytes: usize,
    /// The per-source bucket for TCP messages (each engine has its own for its UDP socket).
    pub limiter: Arc<Mutex<RateLimiter>>,
    pub metrics: SipMetrics,
    /// Each SIP engine's queue of messages read elsewhere (TCP, or another engine's socket),
    /// indexed by engine; a message goes to the engine owning its Call-ID ([`owner`]).
    pub engines: Arc<[mpsc::Sender<Inbound>]>,
    pub guard: Guard,
    /// To tags for the 403s untrusted sources get in `reject` mode.
    pub tagger: StatelessTagger,
}

impl ReaderShared {
    /// Screens a message by its source before anything is allocated for it. `Ok(())`: a
    /// trusted source, go on. `Err(reply)`: dropped, with a stateless 403 to send back for an
    /// untrusted source in `reject` mode.
    fn screen(&self, source: SocketAddr, bytes: &[u8]) -> Result<(), Option<Bytes>> {
        let now = Instant::now();
        match self.guard.standing(now, source.ip()) {
            Standing::Trusted => Ok(()),
            Standing::Banned => {
                self.guard.dropped(now, source.ip(), Standing::Banned);
                Err(None)
            }
            Standing::Untrusted => {
                if !self.guard.reply_to_untrusted(now, source.ip()) {
                    return Err(None);
                }
                let reply = untrusted_response(bytes, source, &self.tagger);
                if reply.is_some() {
                    self.metrics.response(403);
                }
                Err(reply)
            }
        }
    }

    /// Rate-limits (in `limiter`) and parses one message from a trusted source.
    pub fn admit_message(
        &self,
        limiter: &mut RateLimiter,
        source: SocketAddr,
        transport: Transport,
        bytes: Bytes,
    ) -> Admission {
        match limiter.check(Instant::now(), source.ip()) {
            Verdict::Allow => Admission::Process(Inbound {
                source,
                transport,
                message: self.prepare(bytes, source, transport),
            }),
            Verdict::RejectWithReply => {
                let reply =
                    overload_response(&bytes, "rate limit exceeded for this source", &self.metrics);
                let action = if reply.is_some() { "503" } else { "dropped" };
                self.metrics.rate_limited.with_label_values(&[action]).inc();
                reply.map_or(Admission::Drop, Admission::Reply)
            }
            Verdict::Drop => {
                self.metrics
                    .rate_limited
                    .with_label_values(&["dropped"])
                    .inc();
                Admission::Drop
            }
        }
    }

    /// Hands a message to engine `engine`'s queue; returns a stateless 503 to send back when
    /// that queue is full (for an INVITE).
    pub fn forward(&self, engine: usize, inbound: Inbound) -> Option<Bytes> {
        let queue = &self.engines[engine % self.engines.len()];
        match queue.try_send(inbound) {
            Ok(()) => None,
            Err(mpsc::error::TrySendError::Full(item)) => {
                self.metrics
                    .queue_full
                    .with_label_values(&["inbound"])
                    .inc();
                overload_response(
                    &item.message.bytes(),
                    "overloaded: inbound queue full",
                    &self.metrics,
                )
            }
            Err(mpsc::error::TrySendError::Closed(_)) => None,
        }
    }

    /// The stream path: rate-limits with the shared limiter, parses, and queues one message
    /// for the engine owning it; returns a stateless response to send back, if any.
    fn admit(&self, source: SocketAddr, transport: Transport, bytes: Bytes) -> Option<Bytes> {
        let admission = {
            let mut limiter = self.limiter.lock().unwrap_or_else(PoisonError::into_inner);
            self.admit_message(&mut limiter, source, transport, bytes)
        };
        match admission {
            Admission::Process(inbound) => {
                let engine = owner(&inbound, self.engines.len());
                self.forward(engine, inbound)
            }
            Admission::Reply(reply) => Some(reply),
            Admission::Drop => None,
        }
    }
}

/// What becomes of a message from a trusted source after rate limiting.
#[derive(Debug)]
pub enum Admission {
    /// Parsed: for the SIP engine owning it.
    Process(Inbound),
    /// Shed with a stateless answer (503 + Retry-After).
    Reply(Bytes),
    /// Shed silently.
    Drop,
}

/// The engine (of `engines`) owning a message: by its Call-ID, so every message of a call or
/// transaction — retransmissions, ACK, CANCEL, BYE — meets the same engine whichever socket
/// it arrived on. A message without a readable Call-ID goes to engine 0 (it is refused
/// statelessly whichever engine sees it).
pub fn owner(inbound: &Inbound, engines: usize) -> usize {
    if engines <= 1 {
        return 0;
    }
    let Parsed::Message(message) = &inbound.message else {
        return 0;
    };
    match message.message().call_id() {
        Ok(call_id) => {
            let hash = xxhash_rust::xxh3::xxh3_64(call_id.as_bytes());
            usize::try_from(hash % engines as u64).unwrap_or(0)
        }
        Err(_) => 0,
    }
}

/// A stateless `503 Service Unavailable` + `Retry-After` for an INVITE we cannot take, or
/// `None` for anything else (ACKs and responses are never answered; other requests are
/// retransmitted by the peer and shed again).
pub fn overload_response(bytes: &[u8], why: &str, metrics: &SipMetrics) -> Option<Bytes> {
    if !bytes.starts_with(b"INVITE ") {
        return None;
    }
    let request = switchboard_sip::parse(bytes).ok()?;
    let response = Refusal::source_rate(why)
        .apply(
            request
                .response(503)
                .to_tag(&crate::live_calls::new_sid("t")),
        )
        .build()
        .ok()?;
    metrics.response(503);
    Some(response)
}

/// The stateless 403 an untrusted source gets in `reject` mode: for requests other than ACK
/// that parse; nothing for anything else.
fn untrusted_response(bytes: &[u8], source: SocketAddr, tagger: &StatelessTagger) -> Option<Bytes> {
    let request = switchboard_sip::parse(bytes).ok()?;
    if !request.is_request() || request.method() == Some("ACK") {
        return None;
    }
    let tag = tagger.tag_for(&request)?;
    Refusal::untrusted_source(source.ip())
        .apply(request.response(403).to_tag(&tag))
        .build()
        .ok()
}

impl ReaderShared {
    /// Parses a message before the call flow sees it, counting what does not parse
    /// or validate (the endpoint answers those, and a burst of them bans the source), and
    /// asks for symmetric response routing on UDP requests ([`request_rport`]).
    fn prepare(&self, bytes: Bytes, source: SocketAddr, transport: Transport) -> Parsed {
        let count = |e: &switchboard_sip::SipError| {
            let action = e
                .response_status()
                .map_or_else(|| "dropped".to_owned(), |s| s.to_string());
            self.metrics
                .parse_errors
                .with_label_values(&[action.as_str()])
                .inc();
            self.guard
                .offence(Instant::now(), source.ip(), Offence::Malformed);
        };
        let udp = transport == Transport::Udp;
        match OwnedMessage::parse(bytes.clone()) {
            Err(e) => {
                count(&e);
                // The endpoint salvages a 400 from the raw lines; it must go back to the source
                // port like every other response.
                Parsed::Unparsed(if udp { raw_request_rport(bytes) } else { bytes })
            }
            Ok(message) => {
                if let Err(e) = message.message().validate() {
                    count(&e);
                }
                if udp {
                    Parsed::Message(Box::new(request_rport(message)))
                } else {
                    Parsed::Message(Box::new(message))
                }
            }
        }
    }
}

/// [`request_rport`] for a request the codec cannot parse: the first Via header line, when
/// it is not folded, gets `;rport` after its first value. Anything else passes unchanged.
fn raw_request_rport(bytes: Bytes) -> Bytes {
    if bytes.starts_with(b"SIP/") {
        return bytes;
    }
    let head_end = find(&bytes, b"\r\n\r\n").unwrap_or(bytes.len());
    let Some(first_break) = find(&bytes, b"\r\n") else {
        return bytes;
    };
    let mut line_start = first_break + 2;
    while line_start < head_end {
        let line_end = find(&bytes[line_start..], b"\r\n").map_or(head_end, |p| line_start + p);
        let line = &bytes[line_start..line_end];
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            break;
        };
        let name = line[..colon].trim_ascii();
        if name.eq_ignore_ascii_case(b"via") || name.eq_ignore_ascii_case(b"v") {
            let folded = bytes
                .get(line_end + 2)
                .is_some_and(|b| *b == b' ' || *b == b'\t');
            let value = &line[colon + 1..];
            let first = value.iter().position(|b| *b == b',').unwrap_or(value.len());
            let parm = &value[..first];
            let has_rport = parm.split(|b| *b == b';').skip(1).any(|p| {
                p.split(|b| *b == b'=')
                    .next()
                    .unwrap_or(b"")
                    .trim_ascii()
                    .eq_ignore_ascii_case(b"rport")
            });
            if folded || has_rport {
                return bytes;
            }
            let trimmed = parm.len()
                - parm
                    .iter()
                    .rev()
                    .take_while(|b| b.is_ascii_whitespace())
                    .count();
            let at = line_start + colon + 1 + trimmed;
            let mut out = Vec::with_capacity(bytes.len() + 6);
            out.extend_from_slice(&bytes[..at]);
            out.extend_from_slice(b";rport");
            out.extend_from_slice(&bytes[at..]);
            return Bytes::from(out);
        }
        line_start = line_end + 2;
    }
    bytes
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Asks for symmetric response routing on a UDP request: appends `;rport` to its top Via
/// when the peer did not (RFC 3581). The endpoint then answers to the packet's source port,
/// as carrier-facing SBCs do for every UDP peer: a trunk's signalling source is where it
/// listens, and behind NAT the Via port is fiction. Responses, and requests that already
/// carry `rport`, pass unchanged.
pub fn request_rport(message: OwnedMessage) -> OwnedMessage {
    let offset = {
        let m = message.message();
        if !m.is_request() || m.via().map(|v| v.rport().is_some()).unwrap_or(true) {
            return message;
        }
        let Some(Ok(element)) = m.list_elements(HeaderName::Via).next() else {
            return message;
        };
        let bytes = m.as_bytes();
        // The element borrows the message buffer: its end is where the parameter goes.
        let start = (element.as_ptr() as usize).checked_sub(bytes.as_ptr() as usize);
        match start.map(|s| s + element.len()) {
            Some(end) if end <= bytes.len() => end,
            _ => return message,
        }
    };
    let bytes = message.bytes();
    let mut out = Vec::with_capacity(bytes.len() + 6);
    out.extend_from_slice(&bytes[..offset]);
    out.extend_from_slice(b";rport");
    out.extend_from_slice(&bytes[offset..]);
    OwnedMessage::parse(Bytes::from(out)).unwrap_or(message)
}

/// Canonical form of a peer address: IPv4-mapped IPv6 (dual-stack sockets) becomes IPv4, so
/// allowlists and rate limits see one address per peer.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// Sends SIP messages; cheap to clone.
#[derive(Debug, Clone)]
pub struct Outbound {
    udp: Arc<UdpSocket>,
    udp_is_v6: bool,
    /// TCP and TLS connections alike: a peer's address names one connection.
    tcp: stream::Connections,
    metrics: SipMetrics,
}

impl Outbound {
    /// Sends `bytes` to `destination` without waiting. Returns false when the message was
    /// dropped (full buffer, no such TCP connection); callers rely on retransmission.
    pub fn send(&self, transport: Transport, destination: SocketAddr, bytes: Bytes) -> bool {
        match transport {
            Transport::Udp => {
                let destination = match (self.udp_is_v6, destination) {
                    (true, SocketAddr::V4(v4)) => {
                        SocketAddr::new(v4.ip().to_ipv6_mapped().into(), v4.port())
                    }
                    _ => destination,
                };
                match self.udp.try_send_to(&bytes, destination) {
                    Ok(_) => true,
                    Err(e) => {
                        self.metrics
                            .queue_full
                            .with_label_values(&["udp_send"])
                            .inc();
                        tracing::debug!(%destination, error = %e, "UDP send failed");
                        false
                    }
                }
            }
            _ => {
                let Some(writer) = self.tcp.get(&destination).map(|w| w.clone()) else {
                    tracing::debug!(%destination, "no TCP connection to send on");
                    return false;
                };
                match writer.try_send(bytes) {
                    Ok(()) => true,
                    Err(_) => {
                        self.metrics
                            .queue_full
                            .with_label_values(&["tcp_write"])
                            .inc();
                        false
                    }
                }
            }
        }
    }
}

/// Datagrams one engine takes from its socket per wake-up before it handles anything else:
/// enough to amortise the wake-up under load, few enough that timers and commands wait at most
/// a few hundred microseconds.
pub const UDP_BATCH: usize = 32;

/// Bound listeners, before their tasks run.
#[derive(Debug)]
pub struct Listeners {
    /// One UDP socket per engine, all on the same address (`SO_REUSEPORT`: the kernel spreads
    /// peers over them by address hash).
    pub udp: Vec<Arc<UdpSocket>>,
    pub tcp: TcpListener,
    /// The SIP over TLS listener and its acceptor, when `[sip] tls` is set.
    pub tls: Option<(TcpListener, Arc<rustls::ServerConfig>)>,
}

impl Listeners {
    /// Binds `engines` UDP sockets on `udp`, the TCP listener and, with `tls`, the TLS
    /// listener (port 0 allowed: the first UDP socket picks the port, the others join it). An
    /// IPv6 wildcard address is dual-stack on Linux, so `[::]:5060` serves IPv4 and IPv6 peers.
    pub async fn bind(
        udp: SocketAddr,
        tcp: SocketAddr,
        tls: Option<(SocketAddr, Arc<rustls::ServerConfig>)>,
        engines: usize,
    ) -> std::io::Result<Listeners> {
        let first = reuse_port_udp(udp)?;
        let bound = first.local_addr()?;
        let mut sockets = vec![Arc::new(first)];
        for _ in 1..engines.max(1) {
            sockets.push(Arc::new(reuse_port_udp(bound)?));
        }
        let tcp = TcpListener::bind(tcp).await?;
        let tls = match tls {
            None => None,
            Some((addr, config)) => Some((TcpListener::bind(addr).await?, config)),
        };
        Ok(Listeners {
            udp: sockets,
            tcp,
            tls,
        })
    }

    /// Spawns the TCP (and TLS) acceptors; returns each engine's sending half (its own UDP
    /// socket, the shared stream connections).
    pub fn spawn(
        self,
        shared: ReaderShared,
        shutdown: CancellationToken,
        tasks: &TaskTracker,
    ) -> std::io::Result<Vec<Outbound>> {
        let tcp_conns: stream::Connections = Arc::default();
        let mut outbounds = Vec::with_capacity(self.udp.len());
        for udp in &self.udp {
            outbounds.push(Outbound {
                udp_is_v6: udp.local_addr()?.is_ipv6(),
                udp: Arc::clone(udp),
                tcp: Arc::clone(&tcp_conns),
                metrics: shared.metrics.clone(),
            });
        }
        if let Some((listener, config)) = self.tls {
            tasks.spawn(stream::acceptor(
                listener,
                stream::StreamKind::Tls(tokio_rustls::TlsAcceptor::from(config)),
                shared.clone(),
                Arc::clone(&tcp_conns),
                shutdown.clone(),
                tasks.clone(),
            ));
        }
        tasks.spawn(stream::acceptor(
            self.tcp,
            stream::StreamKind::Tcp,
            shared,
            tcp_conns,
            shutdown,
            tasks.clone(),
        ));
        Ok(outbounds)
    }
}

/// A non-blocking UDP socket with `SO_REUSEPORT` (where the platform has it), registered with
/// tokio.
fn reuse_port_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    #[cfg(unix)]
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// One engine's UDP socket and what reading it needs: a receive buffer and the engine's own
/// rate limiter (a peer always hashes to the same socket, so per-engine buckets are
/// per-source buckets, and no lock is taken per datagram).
#[derive(Debug)]
pub struct UdpReader {
    socket: Arc<UdpSocket>,
    buf: Vec<u8>,
    limiter: RateLimiter,
}

impl UdpReader {
    pub fn new(socket: Arc<UdpSocket>, shared: &ReaderShared, limiter: RateLimiter) -> Self {
        // One byte more than the limit tells an oversized datagram from one that fits exactly.
        let size = shared.max_message_bytes.saturating_add(1).min(65_536);
        UdpReader {
            socket,
            buf: vec![0u8; size],
            limiter,
        }
    }

    /// Waits until the socket has something to read.
    pub async fn readable(&self) -> std::io::Result<()> {
        self.socket.readable().await
    }

    /// Reads one datagram without waiting: `None` when there is none, `Some(None)` for one
    /// dealt with here (screened out, shed, answered statelessly, or a receive error),
    /// `Some(Some(inbound))` for one the engines must handle.
    pub fn try_take(&mut self, shared: &ReaderShared) -> Option<Option<Inbound>> {
        let (len, source) = match self.socket.try_recv_from(&mut self.buf) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return None,
            Err(e) => {
                // ICMP port unreachable from an earlier send surfaces here on some systems.
                tracing::debug!(error = %e, "UDP receive error");
                return Some(None);
            }
        };
        let source = canonical(source);
        if let Err(reply) = shared.screen(source, &self.buf[..len]) {
            if let Some(reply) = reply {
                let _ = self.socket.try_send_to(&reply, source);
            }
            return Some(None);
        }
        if len > shared.max_message_bytes {
            shared.metrics.oversized.inc();
            return Some(None);
        }
        let bytes = Bytes::copy_from_slice(&self.buf[..len]);
        match shared.admit_message(&mut self.limiter, source, Transport::Udp, bytes) {
            Admission::Process(inbound) => Some(Some(inbound)),
            Admission::Reply(reply) => {
                let _ = self.socket.try_send_to(&reply, source);
                Some(None)
            }
            Admission::Drop => Some(None),
        }
    }
}

pub mod stream;

#[cfg(test)]
mod tests;
