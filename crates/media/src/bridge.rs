//! One call's media: caller RTP ⇄ agent WebSocket, in one tokio task.
//!
//! The gateway calls [`crate::connect_agent`] before answering (a failure there becomes a 503), then
//! [`spawn_bridge`] once the 200 OK is sent. The task owns the RTP socket and the WebSocket
//! and reacts to four things: a caller datagram, an agent message (or a finished write), the
//! pacer's timer and the [`BridgeHandle`] (hang-up, re-INVITE). It ends with an [`EndReason`]
//! the gateway turns into a BYE (or not, when the caller hung up).
//!
//! Pacing is [`crate::pacer`]'s: the 20 ms frame slots phase-lock to the caller's packets, so
//! while the caller talks the wake-up that receives its packet also sends ours, and the timer
//! only stands in for a missing packet. Writes to the agent never wait: while the WebSocket is
//! busy, messages wait in a bounded [`AgentQueue`] that drops the oldest audio first.
//!
//! Which packets count as the caller's, and where ours go, is [`crate::strict_rtp`]'s call:
//! media from any other IP is dropped and counted, never latched.
//!
//! On an SRTP call ([`NegotiatedMedia::srtp`]) every datagram is verified and decrypted by
//! [`crate::srtp::SrtpStream`] before anything else reads it (forged and replayed packets are
//! counted in [`BridgeStats`]), and every packet we send is protected; there is no clear
//! fallback.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::future::poll_fn;
use std::task::{Context, Poll};

use futures_util::{SinkExt as _, StreamExt as _};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::agent_link::{AgentLink, AgentSocket, AGENT_CLOSE_TIMEOUT};
use crate::agent_queue::AgentQueue;
use crate::dtmf::DtmfDetector;
use crate::framer::CallerFramer;
use crate::pacer::{Due, Pacer};
use crate::playout::Playout;
use crate::rtp::{Inbound, RtpReceiver, RtpSender, FRAME_SAMPLES, MAX_PACKET};
use crate::sdp::NegotiatedMedia;
use crate::srtp::{SrtpDrop, SrtpStream, Unprotected};
use crate::strict_rtp::{AllowedSources, SourceGuard, Verdict};
use crate::transcode::Transcoder;
use crate::twilio::{parse_agent_message, AgentEvent, Outbound, StreamIds, TransferStatus};

pub use crate::pacer::{FRAME_INTERVAL, MAX_FRAMES_PER_WAKE, MAX_PACING_LAG};

/// Default `[media] timeout`: carriers send RTP continuously, so half a minute without a
/// packet means the caller is gone (lost BYE, dropped NAT binding) and the call should end.
pub const DEFAULT_MEDIA_TIMEOUT: Duration = Duration::from_secs(30);
/// Default cap on agent audio waiting to be played: a minute covers any sane TTS burst
/// while bounding memory to 480 kB per call.
pub const DEFAULT_MAX_AGENT_BACKLOG: Duration = Duration::from_secs(60);
/// An agent whose socket takes a write for this long is treated as dead.
const AGENT_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Receive buffer: G.711 and G.722 packets are ~172 bytes; anything bigger than this is not ours.
const RECV_BUFFER: usize = 2048;
/// Consecutive socket errors after which the bridge gives up instead of spinning.
const MAX_SOCKET_ERRORS: u32 = 100;
/// RTP timestamp ticks per millisecond: 8 kHz clock for PCMU, PCMA and G.722 alike.
const SAMPLES_PER_MS: u32 = 8;

/// What the bridge sends while the agent has nothing to say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IdleAudio {
    /// Silence frames every 20 ms: keeps carrier RTP-inactivity timers and NAT bindings
    /// alive. The default, because carriers hang up calls that go quiet.
    #[default]
    Silence,
    /// Nothing (silence suppression); the marker bit flags each new talkspurt.
    Nothing,
}

/// Per-call knobs.
#[derive(Debug, Clone)]
pub struct BridgeConfig {
    /// End the call when the caller sends no RTP for this long (`[media] timeout`).
    pub media_timeout: Duration,
    /// Cap on queued agent audio; excess is dropped.
    pub max_agent_backlog: Duration,
    pub idle_audio: IdleAudio,
    /// Where caller media may come from besides the SDP address (strict RTP). The default
    /// allows the SDP address only; the gateway adds the INVITE's source IP and the
    /// connection's `media_addresses`.
    pub allowed_sources: AllowedSources,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        BridgeConfig {
            media_timeout: DEFAULT_MEDIA_TIMEOUT,
            max_agent_backlog: DEFAULT_MAX_AGENT_BACKLOG,
            idle_audio: IdleAudio::default(),
            allowed_sources: AllowedSources::default(),
        }
    }
}

/// Why a bridge ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EndReason {
    /// [`BridgeHandle::hangup`] (caller BYE): `stop` was sent to the agent.
    CallerHangup,
    /// The agent closed the WebSocket: the gateway sends BYE.
    AgentClosed,
    /// The WebSocket failed mid-call: the gateway sends BYE with a Reason header.
    AgentError(String),
    /// No RTP from the caller for `media_timeout`: the gateway sends BYE.
    MediaTimeout,
    /// The RTP socket kept failing.
    SocketError(String),
    /// The negotiated SRTP keys could not be turned into contexts.
    SrtpSetup(String),
}

/// Live counters of one bridge (relaxed atomics; read them for metrics).
#[derive(Debug, Default)]
pub struct BridgeStats {
    pub rtp_received: AtomicU64,
    pub rtp_sent: AtomicU64,
    pub rtp_ignored: AtomicU64,
    /// Datagrams from an IP the call does not allow (strict RTP): dropped before parsing.
    pub rtp_dropped_foreign: AtomicU64,
    /// Packets from an allowed IP but an address still on probation (strict RTP learning).
    pub rtp_dropped_learning: AtomicU64,
    /// SRTP packets whose authentication tag did not verify (forged, corrupted, or plain RTP
    /// on an SRTP call).
    pub rtp_dropped_unauthenticated: AtomicU64,
    /// SRTP packets already received or older than the replay window.
    pub rtp_dropped_replayed: AtomicU64,
    pub media_to_agent: AtomicU64,
    pub agent_audio_bytes: AtomicU64,
    pub agent_audio_dropped: AtomicU64,
    /// Caller audio packets with an empty or oversized payload (see [`Transcoder`]): dropped.
    pub rtp_dropped_bad_payload: AtomicU64,
    /// Agent `media` messages the dialect cannot play (odd-length L16): dropped.
    pub agent_audio_malformed: AtomicU64,
    pub dtmf_digits: AtomicU64,
    pub marks_echoed: AtomicU64,
    pub bad_agent_messages: AtomicU64,
    /// Caller audio dropped, oldest first, because the agent's socket was still busy with
    /// earlier writes (a slow agent or an overloaded host; see [`crate::agent_queue`]).
    pub media_dropped_agent_busy: AtomicU64,
    /// Frames sent by the wake-up that received the caller's packet (pacer in phase lock)
    /// rather than by the timer.
    pub frames_phase_locked: AtomicU64,
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

/// The gateway's grip on a running bridge. Dropping it hangs up.
#[derive(Debug)]
pub struct BridgeHandle {
    control: Arc<Control>,
    /// Wakes the bridge to look at `control`; capacity 1: a pending wake-up is enough.
    wake: mpsc::Sender<()>,
    ended: watch::Receiver<Option<EndReason>>,
    stats: Arc<BridgeStats>,
    ids: StreamIds,
}

impl BridgeHandle {
    /// The caller hung up (BYE): send `stop`, close the WebSocket, end. Idempotent.
    pub fn hangup(&self) {
        self.control.hangup.store(true, Ordering::Relaxed);
        let _ = self.wake.try_send(());
    }

    /// Applies a re-INVITE's negotiation (hold, resume, new address or codec). The latest
    /// update wins if several arrive before the bridge looks.
    pub fn update_media(&self, media: NegotiatedMedia) {
        *self.control.media.lock().unwrap_or_else(|e| e.into_inner()) = Some(media);
        let _ = self.wake.try_send(());
    }

    /// Tells the agent how its transfer is going (a `transfer` event on the stream). Call it
    /// before [`BridgeHandle::hangup`] when a transfer completes: the event goes out before
    /// `stop`. Reports wait in order; a bridge that has ended drops them.
    pub fn report_transfer(&self, status: TransferStatus, sip_status: u16) {
        self.control
            .transfers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((status, sip_status));
        let _ = self.wake.try_send(());
    }

    /// Resolves when the bridge has ended (its RTP socket is closed by then, so the port
    /// may be reused). Can be awaited from several places.
    pub async fn ended(&self) -> EndReason {
        let mut ended = self.ended.clone();
        let reason = match ended.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or(EndReason::CallerHangup),
            Err(_) => EndReason::SocketError("bridge task stopped unexpectedly".into()),
        };
        reason
    }

    /// The end reason if the bridge has already ended.
    pub fn end_reason(&self) -> Option<EndReason> {
        self.ended.borrow().clone()
    }

    pub fn stats(&self) -> &BridgeStats {
        &self.stats
    }

    pub fn ids(&self) -> &StreamIds {
        &self.ids
    }
}

impl Drop for BridgeHandle {
    fn drop(&mut self) {
        self.hangup();
    }
}

/// Requests from the [`BridgeHandle`], read by the bridge when woken.
#[derive(Debug, Default)]
struct Control {
    hangup: std::sync::atomic::AtomicBool,
    media: Mutex<Option<NegotiatedMedia>>,
    /// Transfer progress to report to the agent, oldest first.
    transfers: Mutex<Vec<(TransferStatus, u16)>>,
}

/// Starts the bridge task for an answered call. `socket` is the bound RTP socket whose port
/// went into the SDP; must be called inside a tokio runtime.
pub fn spawn_bridge(
    socket: UdpSocket,
    negotiated: NegotiatedMedia,
    agent: AgentLink,
    cfg: BridgeConfig,
) -> BridgeHandle {
    let control = Arc::new(Control::default());
    let (wake_tx, wake_rx) = mpsc::channel(1);
    let (ended_tx, ended_rx) = watch::channel(None);
    let stats = Arc::new(BridgeStats::default());
    let ids = agent.outbound.ids().clone();
    let dialect = agent.outbound.dialect();
    let backlog = cfg.max_agent_backlog.as_millis() as usize * dialect.bytes_per_ms();
    let (srtp, setup_error) = match negotiated.srtp.as_ref().map(SrtpStream::new).transpose() {
        Ok(srtp) => (srtp, None),
        Err(e) => (None, Some(e.to_string())),
    };
    let bridge = Bridge {
        srtp,
        socket,
        ws: agent.ws,
        out: agent.outbound,
        receiver: RtpReceiver::new(negotiated.payload_type, negotiated.telephone_event),
        transcoder: Transcoder::new(negotiated.codec, dialect),
        agent_frame: vec![dialect.silence(); dialect.frame_bytes()],
        sources: SourceGuard::new(cfg.allowed_sources.clone(), negotiated.remote_rtp),
        media: negotiated,
        sender: RtpSender::new(),
        dtmf: DtmfDetector::new(),
        last_rtp: Instant::now(),
        first_timestamp: None,
        last_audio_timestamp: None,
        framer: CallerFramer::default(),
        playout: Playout::new(backlog).with_silence(dialect.silence()),
        pacer: Pacer::starting(Instant::now()),
        to_agent: AgentQueue::default(),
        writing_since: None,
        socket_errors: 0,
        stats: stats.clone(),
        cfg,
    };
    tokio::spawn(bridge.run(control.clone(), wake_rx, ended_tx, setup_error));
    BridgeHandle {
        control,
        wake: wake_tx,
        ended: ended_rx,
        stats,
        ids,
    }
}

struct Bridge {
    socket: UdpSocket,
    /// Present on SRTP calls: every datagram in is unprotected, every packet out protected.
    srtp: Option<SrtpStream>,
    ws: AgentSocket,
    out: Outbound,
    media: NegotiatedMedia,
    cfg: BridgeConfig,
    receiver: RtpReceiver,
    sender: RtpSender,
    dtmf: DtmfDetector,
    /// Strict RTP: which sources are the caller, where our packets go.
    sources: SourceGuard,
    last_rtp: Instant,
    first_timestamp: Option<u32>,
    /// RTP timestamp of the caller's previous audio packet: tells the pacer whether packets
    /// come as a steady 20 ms stream it can lock to.
    last_audio_timestamp: Option<u32>,
    framer: CallerFramer,
    playout: Playout,
    /// Caller codec ⇄ agent dialect (G.722 and resampler state, reused buffers).
    transcoder: Transcoder,
    /// Reused buffer for one 20 ms frame of agent audio.
    agent_frame: Vec<u8>,
    pacer: Pacer,
    /// Messages for the agent not yet handed to the WebSocket (bounded).
    to_agent: AgentQueue<Message>,
    /// Since when a WebSocket write has been in flight (the agent has not taken it all yet).
    writing_since: Option<Instant>,
    socket_errors: u32,
    stats: Arc<BridgeStats>,
}

impl Bridge {
    async fn run(
        mut self,
        control: Arc<Control>,
        mut wake: mpsc::Receiver<()>,
        ended_tx: watch::Sender<Option<EndReason>>,
        setup_error: Option<String>,
    ) {
        if let Some(why) = setup_error {
            // Never fall back to clear media on a call that negotiated SRTP.
            tracing::warn!(error = %why, "SRTP setup failed; ending the call");
            ended_tx.send_replace(Some(EndReason::SrtpSetup(why)));
            return;
        }
        let mut armed = self.pacer.deadline();
        let pacer = tokio::time::sleep_until(armed);
        tokio::pin!(pacer);
        let mut buf = vec![0u8; RECV_BUFFER];
        let reason = loop {
            let writing = self.writing_since.is_some();
            let ws = &mut self.ws;
            // Unbiased: a flood on one input must not starve the others (or the pacer).
            let step = tokio::select! {
                woken = wake.recv() => {
                    let media = control.media.lock().unwrap_or_else(|e| e.into_inner()).take();
                    if let Some(media) = media {
                        self.apply_media(media);
                    }
                    let transfers = std::mem::take(
                        &mut *control.transfers.lock().unwrap_or_else(|e| e.into_inner()),
                    );
                    // Queued, so a `stop` after a completed transfer follows them (the queue is
                    // written before `stop` at hang-up).
                    for (status, sip_status) in transfers {
                        let event = self.out.transfer(status, sip_status);
                        queue_for_agent(&mut self.to_agent, &self.stats, event, false);
                    }
                    // A dropped handle (None) hangs up too.
                    if woken.is_none() || control.hangup.load(Ordering::Relaxed) {
                        Err(EndReason::CallerHangup)
                    } else {
                        Ok(())
                    }
                }
                received = self.socket.recv_from(&mut buf) => match received {
                    Ok((len, from)) => {
                        self.socket_errors = 0;
                        self.on_datagram(&buf[..len], from)
                    }
                    Err(e) => self.on_socket_error(e),
                },
                io = poll_fn(|cx| poll_agent(ws, writing, cx)) => match io {
                    AgentIo::Written(result) => {
                        self.writing_since = None;
                        result.map_err(|e| EndReason::AgentError(e.to_string()))
                    }
                    AgentIo::Received(None) => Err(EndReason::AgentClosed),
                    AgentIo::Received(Some(Ok(message))) => self.on_agent_message(message),
                    AgentIo::Received(Some(Err(e))) => Err(EndReason::AgentError(e.to_string())),
                },
                () = &mut pacer => {
                    armed = Instant::now();
                    self.on_timer(armed)
                }
            };
            if let Err(reason) = step.and_then(|()| self.write_to_agent()) {
                break reason;
            }
            // Moving a tokio timer later is a compare-and-swap; the timer only fires when no
            // caller packet served the slot.
            let deadline = self.pacer.deadline();
            if deadline != armed {
                pacer.as_mut().reset(deadline);
                armed = deadline;
            }
        };
        if matches!(reason, EndReason::CallerHangup | EndReason::MediaTimeout) {
            let stop = Message::text(self.out.stop());
            let mut waiting = std::mem::take(&mut self.to_agent);
            let ws = &mut self.ws;
            let _ = tokio::time::timeout(AGENT_CLOSE_TIMEOUT, async {
                while let Some(message) = waiting.pop() {
                    ws.feed(message).await?;
                }
                ws.send(stop).await
            })
            .await;
        }
        let Bridge { socket, mut ws, .. } = self;
        drop(socket);
        tracing::debug!(?reason, "media bridge ended");
        ended_tx.send_replace(Some(reason.clone()));
        if !matches!(reason, EndReason::AgentError(_)) {
            let _ = tokio::time::timeout(AGENT_CLOSE_TIMEOUT, async {
                let _ = ws.close(None).await;
                // Drain until the agent's close frame (or EOF) completes the handshake.
                while let Some(Ok(_)) = ws.next().await {}
            })
            .await;
        }
    }

    fn apply_media(&mut self, media: NegotiatedMedia) {
        if media.srtp != self.media.srtp {
            // Rekeyed (or the stream changed profile) by a re-INVITE.
            match media.srtp.as_ref().map(SrtpStream::new).transpose() {
                Ok(srtp) => self.srtp = srtp,
                Err(e) => {
                    tracing::warn!(error = %e, "SRTP rekey failed; keeping the previous keys");
                    return;
                }
            }
        }
        self.receiver
            .set_payload_types(media.payload_type, media.telephone_event);
        self.transcoder.set_caller_codec(media.codec);
        // The far end may have moved (re-INVITE): follow its new SDP address at once.
        self.sources.set_signalled(media.remote_rtp);
        if !self.media.direction.receives() && media.direction.receives() {
            // Resuming from hold: the caller gets a full timeout to start sending again.
            self.last_rtp = Instant::now();
        }
        self.media = media;
    }

    fn on_socket_error(&mut self, error: std::io::Error) -> Result<(), EndReason> {
        // Transient errors (e.g. ICMP unreachable surfaced on recv) are skipped.
        self.socket_errors += 1;
        if self.socket_errors >= MAX_SOCKET_ERRORS {
            return Err(EndReason::SocketError(error.to_string()));
        }
        Ok(())
    }

    fn on_datagram(&mut self, datagram: &[u8], from: SocketAddr) -> Result<(), EndReason> {
        if !self.sources.allows_ip(from.ip()) {
            bump(&self.stats.rtp_dropped_foreign, 1);
            return Ok(());
        }
        let clear;
        let datagram = match &mut self.srtp {
            None => datagram,
            Some(srtp) => match srtp.unprotect(datagram) {
                Ok(Unprotected::Rtp(packet)) => {
                    clear = packet;
                    &clear[..]
                }
                Ok(Unprotected::Rtcp) => {
                    bump(&self.stats.rtp_ignored, 1);
                    return Ok(());
                }
                Err(SrtpDrop::Replayed) => {
                    bump(&self.stats.rtp_dropped_replayed, 1);
                    return Ok(());
                }
                Err(SrtpDrop::Unauthenticated) => {
                    bump(&self.stats.rtp_dropped_unauthenticated, 1);
                    return Ok(());
                }
            },
        };
        let inbound = match self.receiver.receive(datagram) {
            Ok(inbound) => inbound,
            Err(_) => {
                bump(&self.stats.rtp_ignored, 1);
                return Ok(());
            }
        };
        let (ssrc, seq, timestamp) = match inbound {
            Inbound::Audio {
                ssrc,
                seq,
                timestamp,
                ..
            }
            | Inbound::Event {
                ssrc,
                seq,
                timestamp,
                ..
            } => (ssrc, seq, timestamp),
            Inbound::Ignored => {
                bump(&self.stats.rtp_ignored, 1);
                return Ok(());
            }
        };
        match self.sources.check(from, ssrc, seq) {
            Verdict::Accept => {}
            Verdict::Relatched => tracing::debug!(%from, ssrc, "caller RTP source relatched"),
            Verdict::Learning => {
                bump(&self.stats.rtp_dropped_learning, 1);
                return Ok(());
            }
            Verdict::Foreign => {
                bump(&self.stats.rtp_dropped_foreign, 1);
                return Ok(());
            }
        }
        bump(&self.stats.rtp_received, 1);
        let now = Instant::now();
        self.last_rtp = now;
        let first = *self.first_timestamp.get_or_insert(timestamp);
        match inbound {
            Inbound::Audio { payload, .. } => {
                if !Transcoder::accepts_caller_payload(payload) {
                    bump(&self.stats.rtp_dropped_bad_payload, 1);
                    return Ok(());
                }
                // Framed in caller codec bytes (one per RTP tick), then converted per frame.
                let out = &mut self.out;
                let to_agent = &mut self.to_agent;
                let transcoder = &mut self.transcoder;
                let stats = &self.stats;
                self.framer
                    .push(timestamp, payload, |chunk_timestamp, chunk| {
                        let ms = chunk_timestamp.wrapping_sub(first) / SAMPLES_PER_MS;
                        if let Some(audio) = transcoder.caller_to_agent(chunk) {
                            bump(&stats.media_to_agent, 1);
                            queue_for_agent(to_agent, stats, out.media(u64::from(ms), audio), true);
                        }
                    });
                // One 20 ms frame after the previous one (RTP clock 8 kHz for PCMU, PCMA and
                // G.722): a stream the pacer may lock to.
                let steady = self
                    .last_audio_timestamp
                    .replace(timestamp)
                    .is_some_and(|last| timestamp.wrapping_sub(last) == FRAME_SAMPLES as u32);
                let due = self.pacer.on_caller_packet(now, steady);
                bump(&self.stats.frames_phase_locked, u64::from(due.send));
                self.on_due(due);
            }
            Inbound::Event { payload, .. } => {
                if let Some(digit) = self.dtmf.on_packet(ssrc, timestamp, payload) {
                    bump(&self.stats.dtmf_digits, 1);
                    let dtmf = self.out.dtmf(digit);
                    queue_for_agent(&mut self.to_agent, &self.stats, dtmf, false);
                }
            }
            Inbound::Ignored => {}
        }
        Ok(())
    }

    fn on_agent_message(&mut self, message: Message) -> Result<(), EndReason> {
        let text = match message {
            Message::Text(text) => text,
            Message::Close(_) => return Err(EndReason::AgentClosed),
            // Pings are answered by tungstenite on the next flush; binary is not the dialect.
            _ => return Ok(()),
        };
        match parse_agent_message(text.as_str()) {
            Ok(AgentEvent::Media(audio)) if !self.out.dialect().accepts_agent_payload(&audio) => {
                bump(&self.stats.agent_audio_malformed, 1);
            }
            Ok(AgentEvent::Media(audio)) => {
                let queued = self.playout.push_audio(&audio);
                bump(&self.stats.agent_audio_bytes, queued.accepted as u64);
                bump(&self.stats.agent_audio_dropped, queued.dropped as u64);
            }
            Ok(AgentEvent::Mark(name)) => {
                if let Some(name) = self.playout.push_mark(name) {
                    self.echo_mark(&name);
                }
            }
            Ok(AgentEvent::Clear) => {
                for name in self.playout.clear() {
                    self.echo_mark(&name);
                }
            }
            Ok(_) => {}
            Err(e) => {
                // One bad message does not end a call; count it for the operator.
                bump(&self.stats.bad_agent_messages, 1);
                tracing::debug!(error = %e, "ignoring agent message");
            }
        }
        Ok(())
    }

    fn echo_mark(&mut self, name: &str) {
        bump(&self.stats.marks_echoed, 1);
        let mark = self.out.mark(name);
        queue_for_agent(&mut self.to_agent, &self.stats, mark, false);
    }

    /// The pacer's timer: no caller packet served the slot (or the caller is silent). Also
    /// where the media timeout is noticed.
    fn on_timer(&mut self, now: Instant) -> Result<(), EndReason> {
        if self.media.direction.receives()
            && now.duration_since(self.last_rtp) >= self.cfg.media_timeout
        {
            return Err(EndReason::MediaTimeout);
        }
        let due = self.pacer.on_timer(now);
        self.on_due(due);
        Ok(())
    }

    /// Sends the frames `due` and echoes the marks whose audio has now been sent.
    fn on_due(&mut self, due: Due) {
        for _ in 0..due.skipped {
            // Their RTP time passes (the receiver sees a gap); the agent's audio stays queued.
            let mut unused = [0u8; MAX_PACKET];
            self.sender
                .tick(None, false, self.media.payload_type, &mut unused);
        }
        for _ in 0..due.send {
            self.send_frame();
        }
        while let Some(name) = self.playout.due_mark() {
            self.echo_mark(&name);
        }
    }

    /// One 20 ms frame slot: the next agent frame, or filler, or nothing (hold / no address).
    fn send_frame(&mut self) {
        let silence = self.out.dialect().silence();
        self.agent_frame.fill(silence);
        let agent_audio = self.playout.next_frame(&mut self.agent_frame).is_some();
        let destination = self.sources.destination().filter(|_| !self.media.on_hold());
        let send =
            destination.is_some() && (agent_audio || self.cfg.idle_audio == IdleAudio::Silence);
        // Silence is encoded too: keeps G.722 and resampler state continuous.
        let payload = send.then(|| self.transcoder.agent_to_caller(&self.agent_frame));
        let mut packet = [0u8; MAX_PACKET];
        let built = self
            .sender
            .tick(payload, agent_audio, self.media.payload_type, &mut packet);
        let (Some(len), Some(to)) = (built, destination) else {
            return;
        };
        // Never wait on a full socket buffer: a late frame is worth nothing.
        let sent = match &mut self.srtp {
            None => self.socket.try_send_to(&packet[..len], to).is_ok(),
            Some(srtp) => match srtp.protect(&packet[..len]) {
                Ok(wire) => self.socket.try_send_to(&wire, to).is_ok(),
                Err(e) => {
                    tracing::debug!(error = %e, "SRTP protect failed; frame dropped");
                    false
                }
            },
        };
        if sent {
            bump(&self.stats.rtp_sent, 1);
        }
    }

    /// Hands the waiting messages to the WebSocket and writes them with one flush, unless a
    /// write is still in flight (then the loop's agent branch finishes it first). Never waits.
    fn write_to_agent(&mut self) -> Result<(), EndReason> {
        if let Some(since) = self.writing_since {
            if since.elapsed() >= AGENT_WRITE_TIMEOUT {
                return Err(EndReason::AgentError(
                    "agent stopped reading its socket".into(),
                ));
            }
            return Ok(());
        }
        if self.to_agent.is_empty() {
            return Ok(());
        }
        let failed = |e: WsError| EndReason::AgentError(e.to_string());
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        while let Some(message) = self.to_agent.pop() {
            // Ready: the previous flush completed. tungstenite buffers the frame (128 kB
            // before it writes on its own) and accepts it even when the socket is full.
            self.ws.start_send_unpin(message).map_err(failed)?;
        }
        match self.ws.poll_flush_unpin(&mut cx) {
            Poll::Ready(result) => result.map_err(failed),
            Poll::Pending => {
                self.writing_since = Some(Instant::now());
                Ok(())
            }
        }
    }
}

/// Queues one message for the agent, counting audio dropped to keep the queue bounded.
fn queue_for_agent(
    queue: &mut AgentQueue<Message>,
    stats: &BridgeStats,
    text: String,
    media: bool,
) {
    let dropped = queue.push(Message::text(text), media);
    bump(&stats.media_dropped_agent_busy, dropped);
}

/// What happened on the agent's WebSocket.
enum AgentIo {
    /// The write in flight completed.
    Written(Result<(), WsError>),
    Received(Option<Result<Message, WsError>>),
}

/// Polls the agent's socket: the write in flight (when `writing`) and the next message.
fn poll_agent(ws: &mut AgentSocket, writing: bool, cx: &mut Context<'_>) -> Poll<AgentIo> {
    if writing {
        if let Poll::Ready(result) = ws.poll_flush_unpin(cx) {
            return Poll::Ready(AgentIo::Written(result));
        }
    }
    ws.poll_next_unpin(cx).map(AgentIo::Received)
}
