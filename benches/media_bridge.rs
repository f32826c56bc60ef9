//! Load driver for the media bridge: N concurrent calls on loopback, three relays side by side.
//!
//! ```text
//! cargo bench -p switchboard-benches --bench media_bridge -- \
//!     --calls 500,1000,2000 --seconds 5 --rounds 3 --modes relay,rtpengine,bridge
//! ```
//! Modes, run alternately (round 1: relay, rtpengine, bridge; round 2: ...) so machine noise
//! hits all alike; the table at the end gives the median of the rounds:
//! * `bridge`: switchboard's bridges, all on ONE current-thread tokio runtime on their own OS
//!   thread (so its CPU time is "one core's worth" of bridging);
//! * `relay` (also `--baseline`): a bare relay in the same place doing only what any bridge
//!   must (one UDP receive + one WebSocket message per frame each way, base64 included, no
//!   pacing, framing, marks or DTMF): the kernel/runtime floor;
//! * `rtpengine`: Debian's `rtpengine-daemon` in userspace forwarding (`--table=-1`, one
//!   worker thread), a port pair per call allocated over its ng protocol, the far end a UDP
//!   echo instead of a WebSocket agent. Skipped with a notice when not installed.
//!
//! Each caller sends a 20 ms PCMU frame every 20 ms (calls spread over the 20 ms slot), the
//! agent (or UDP echo) returns every frame, the relay sends it back to the caller.
//! With two or more CPUs the relay under test is pinned to CPU 0 and the callers, echo agent
//! and this driver to CPU 1 (`taskset`), so the CPU figure is the relay's own.
//!
//! Reported per run:
//! * uplink latency: caller RTP sent → `media` JSON (or UDP echo) received (p50/p99/max);
//! * round trip: caller RTP → relay → agent → relay (pacer) → caller RTP (the bridge adds the
//!   0-20 ms wait for the call's next frame slot, by design);
//! * pacing jitter at the caller: |arrival interval − 20 ms| between consecutive packets;
//! * relay CPU (from /proc/.../schedstat: ns-precise, per thread, the safe equivalent of
//!   getrusage(RUSAGE_THREAD) under `forbid(unsafe_code)`; all of rtpengine's threads), µs
//!   per caller-leg packet (RTP in + RTP out), and calls per core = calls / utilisation;
//! * heap allocated while setting the calls up, per call (counting allocator; includes the
//!   echo agent's end of each WebSocket), and the kernel's default socket buffer sizes.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use base64::Engine as _;
use futures_util::{SinkExt as _, StreamExt as _};
use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};
use switchboard_media::twilio::new_sid;
use switchboard_media::{
    connect_agent, negotiate, spawn_bridge, AgentTls, BridgeConfig, BridgeHandle, CustomParameters,
    IdleAudio, StartParams, StreamIds,
};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::Message;

#[path = "media_bridge/bare_relay.rs"]
mod bare_relay;
#[path = "media_bridge/rtpengine.rs"]
mod rtpengine;
use bare_relay::{raw_relay, RelayCounters};
use rtpengine::Rtpengine;

#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// Caller sockets shared by all calls (one receive task each): enough to keep each socket's
/// receive queue short at 100k packets/s.
const CALLER_SOCKETS: usize = 16;
/// Frame period and slots: call i sends at millisecond (i mod 20) of each 20 ms period.
const FRAME_MS: u64 = 20;
const PAYLOAD: usize = 160;
const AGENT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The relay under test runs here; everything else on [`DRIVER_CPU`].
const RELAY_CPU: usize = 0;
const DRIVER_CPU: usize = 1;
const RTPENGINE_NG_PORT: u16 = 22_999;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Mode {
    Relay,
    Rtpengine,
    Bridge,
}

impl Mode {
    fn parse(name: &str) -> Result<Mode> {
        Ok(match name {
            "relay" => Mode::Relay,
            "rtpengine" => Mode::Rtpengine,
            "bridge" => Mode::Bridge,
            other => bail!("unknown mode {other:?} (relay, rtpengine, bridge)"),
        })
    }

    fn label(self) -> &'static str {
        match self {
            Mode::Relay => "bare relay (tokio, WebSocket)",
            Mode::Rtpengine => "rtpengine userspace",
            Mode::Bridge => "switchboard bridge",
        }
    }
}

struct Args {
    modes: Vec<Mode>,
    calls: Vec<usize>,
    seconds: u64,
    warmup: u64,
    rounds: usize,
    pin: bool,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        modes: vec![Mode::Bridge],
        calls: vec![500, 2000],
        seconds: 5,
        warmup: 2,
        rounds: 1,
        pin: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--calls" => {
                let list = it.next().context("--calls needs a list")?;
                args.calls = list.split(',').map(str::parse).collect::<Result<_, _>>()?;
            }
            "--seconds" => args.seconds = it.next().context("--seconds needs a value")?.parse()?,
            "--baseline" => args.modes = vec![Mode::Relay],
            "--modes" => {
                let list = it.next().context("--modes needs a list")?;
                args.modes = list.split(',').map(Mode::parse).collect::<Result<_>>()?;
            }
            "--rounds" => args.rounds = it.next().context("--rounds needs a value")?.parse()?,
            "--no-pin" => args.pin = false,
            "--warmup" => args.warmup = it.next().context("--warmup needs a value")?.parse()?,
            // cargo bench passes --bench; criterion-style flags are ignored too.
            _ => {}
        }
    }
    Ok(args)
}

/// Pins the calling thread to `cpu` (taskset on its thread id: no unsafe, no extra crate).
fn pin_current_thread(cpu: usize) -> Result<()> {
    let link = std::fs::read_link("/proc/thread-self")?;
    let tid = link
        .file_name()
        .and_then(|t| t.to_str())
        .context("no thread id")?
        .to_owned();
    let status = std::process::Command::new("taskset")
        .args(["-p", "-c", &cpu.to_string(), &tid])
        .stdout(std::process::Stdio::null())
        .status()?;
    if !status.success() {
        bail!("taskset failed for thread {tid}");
    }
    Ok(())
}

fn heap_in_use() -> i64 {
    let stats = GLOBAL.stats();
    stats.bytes_allocated as i64 - stats.bytes_deallocated as i64
}

/// Kernel defaults that bound each socket's queued data (reserved on demand, not up front).
fn socket_buffer_defaults() -> String {
    let read = |name: &str| {
        std::fs::read_to_string(format!("/proc/sys/net/{name}"))
            .map(|v| v.split_whitespace().collect::<Vec<_>>().join("/"))
            .unwrap_or_else(|_| "?".into())
    };
    format!(
        "UDP rmem_default {} B, wmem_default {} B; TCP tcp_rmem {} B, tcp_wmem {} B (min/default/max)",
        read("core/rmem_default"),
        read("core/wmem_default"),
        read("ipv4/tcp_rmem"),
        read("ipv4/tcp_wmem")
    )
}

/// (CPU time, time spent runnable but waiting for a CPU) of the calling thread, in ns.
/// The second number shows how much the shared machine got in the way.
fn thread_cpu_ns() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    let mut fields = text
        .split_whitespace()
        .map(|v| v.parse::<u64>().unwrap_or(0));
    (fields.next().unwrap_or(0), fields.next().unwrap_or(0))
}

enum BridgeCommand {
    /// Window start/end: reply with (thread CPU ns, packets in, packets out).
    Sample(oneshot::Sender<((u64, u64), u64, u64)>),
    Shutdown,
}

/// The relay thread's addresses for the callers, and the heap it took per call to set up.
type Ready = Result<(Vec<SocketAddr>, i64)>;

/// The bridge side: binds, negotiates, connects and spawns `calls` bridges (or bare relays),
/// then serves samples.
fn bridge_thread(
    baseline: bool,
    calls: usize,
    agent_url: String,
    caller_addrs: Vec<SocketAddr>,
    pin: bool,
    ready: oneshot::Sender<Ready>,
    mut commands: mpsc::Receiver<BridgeCommand>,
) -> Result<()> {
    if pin {
        pin_current_thread(RELAY_CPU)?;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let counters = Arc::new(RelayCounters::default());
    runtime.block_on(async move {
        let heap_before = heap_in_use();
        let setup = async {
            let mut handles: Vec<BridgeHandle> = Vec::with_capacity(calls);
            let mut relays = Vec::new();
            let mut addrs = Vec::with_capacity(calls);
            // ws:// agent: the TLS trust is never consulted.
            let plain_ws = AgentTls::from_pem(b"")?;
            for i in 0..calls {
                let socket = UdpSocket::bind((LOOPBACK, 0)).await?;
                let local = socket.local_addr()?;
                let caller = caller_addrs[i % caller_addrs.len()];
                addrs.push(local);
                if baseline {
                    relays.push(tokio::spawn(raw_relay(
                        socket,
                        caller,
                        agent_url.clone(),
                        counters.clone(),
                    )));
                    continue;
                }
                let offer = format!(
                    "v=0\r\no=bench 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
                     m=audio {} RTP/AVP 0\r\n",
                    caller.port()
                );
                let (_, media) = negotiate(&offer, LOOPBACK, local.port())?;
                let params = StartParams {
                    ids: StreamIds::generate(new_sid("AC")),
                    custom_parameters: CustomParameters::new(),
                    dialect: switchboard_media::AgentDialect::Twilio,
                };
                let link =
                    connect_agent(&agent_url, params, AGENT_CONNECT_TIMEOUT, &plain_ws).await?;
                let cfg = BridgeConfig {
                    idle_audio: IdleAudio::Nothing,
                    media_timeout: Duration::from_secs(600),
                    ..BridgeConfig::default()
                };
                handles.push(spawn_bridge(socket, media, link, cfg));
            }
            anyhow::Ok((handles, relays, addrs))
        };
        let (handles, relays) = match setup.await {
            Ok((handles, relays, addrs)) => {
                let per_call = (heap_in_use() - heap_before) / calls.max(1) as i64;
                let _ = ready.send(Ok((addrs, per_call)));
                (handles, relays)
            }
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        while let Some(command) = commands.recv().await {
            match command {
                BridgeCommand::Sample(reply) => {
                    let relayed = (
                        counters.rtp_in.load(Ordering::Relaxed),
                        counters.rtp_out.load(Ordering::Relaxed),
                    );
                    let (rx, tx) = handles.iter().fold(relayed, |(rx, tx), h| {
                        (
                            rx + h.stats().rtp_received.load(Ordering::Relaxed),
                            tx + h.stats().rtp_sent.load(Ordering::Relaxed),
                        )
                    });
                    let _ = reply.send((thread_cpu_ns(), rx, tx));
                }
                BridgeCommand::Shutdown => {
                    let total = |f: fn(&BridgeHandle) -> u64| handles.iter().map(f).sum::<u64>();
                    let locked = total(|h| h.stats().frames_phase_locked.load(Ordering::Relaxed));
                    let sent = total(|h| h.stats().rtp_sent.load(Ordering::Relaxed));
                    let dropped = total(|h| h.stats().media_dropped_agent_busy.load(Ordering::Relaxed));
                    if !handles.is_empty() {
                        println!(
                            "  bridge: {:.1}% of frames sent by the caller's packet (phase lock), {dropped} caller frames dropped for a busy agent socket",
                            locked as f64 * 100.0 / sent.max(1) as f64
                        );
                    }
                    break;
                }
            }
        }
        for relay in relays {
            relay.abort();
        }
        for h in &handles {
            h.hangup();
        }
        for h in &handles {
            let _ = tokio::time::timeout(Duration::from_secs(2), h.ended()).await;
        }
    });
    Ok(())
}

/// Nanoseconds since `base`, and the call index, ride in the first 12 payload bytes.
fn stamp(payload: &mut [u8], sent_ns: u64, call: u32) {
    payload[..8].copy_from_slice(&sent_ns.to_le_bytes());
    payload[8..12].copy_from_slice(&call.to_le_bytes());
}

fn read_stamp(payload: &[u8]) -> Option<(u64, u32)> {
    let sent = u64::from_le_bytes(payload.get(..8)?.try_into().ok()?);
    let call = u32::from_le_bytes(payload.get(8..12)?.try_into().ok()?);
    Some((sent, call))
}

/// The agent: echoes every `media` message back, recording uplink latency from the stamp.
async fn echo_agent(
    tcp: tokio::net::TcpStream,
    base: Instant,
    recording: Arc<AtomicBool>,
) -> Vec<u32> {
    let mut uplink_us = Vec::new();
    // The same 4 KiB initial read buffer as the bridge's end, so the heap figure is ~2x ours.
    let config =
        tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(4096);
    let Ok(mut ws) = tokio_tungstenite::accept_async_with_config(tcp, Some(config)).await else {
        return uplink_us;
    };
    while let Some(Ok(message)) = ws.next().await {
        let Message::Text(text) = message else {
            continue;
        };
        if !text.as_str().starts_with("{\"event\":\"media\"") {
            continue;
        }
        if recording.load(Ordering::Relaxed) {
            let payload = text
                .as_str()
                .split("\"payload\":\"")
                .nth(1)
                .unwrap_or_default();
            // 16 base64 characters = the 12 stamp bytes.
            if let Some(prefix) = payload.get(..16) {
                if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(prefix) {
                    if let Some((sent, _)) = read_stamp(&bytes) {
                        let now = base.elapsed().as_nanos() as u64;
                        uplink_us.push((now.saturating_sub(sent) / 1000) as u32);
                    }
                }
            }
        }
        // The bridge ignores the extra fields (track, chunk, ...): echo the text as is.
        if ws.send(Message::Text(text)).await.is_err() {
            break;
        }
    }
    uplink_us
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() - 1) as f64 * p).round() as usize;
    f64::from(sorted[index]) / 1000.0
}

/// Prints the distribution; returns its p99 in ms.
fn summary(name: &str, mut samples_us: Vec<u32>) -> f64 {
    samples_us.sort_unstable();
    println!(
        "  {name}: n={} p50={:.3}ms p99={:.3}ms p99.9={:.3}ms max={:.3}ms",
        samples_us.len(),
        percentile(&samples_us, 0.50),
        percentile(&samples_us, 0.99),
        percentile(&samples_us, 0.999),
        percentile(&samples_us, 1.0)
    );
    percentile(&samples_us, 0.99)
}

/// The figures of one run, for the medians table.
#[derive(Debug, Clone, Copy)]
struct Figures {
    us_per_packet: f64,
    /// None when the run did not keep up (echoes lost or the relay saturated).
    calls_per_core: Option<f64>,
    /// One core's CPU divided by what one call's 100 caller-leg packets a second cost: the
    /// ceiling the cost allows, also when a crowded machine kept the run from sustaining it.
    calls_per_core_by_cost: f64,
    uplink_p99_ms: f64,
    jitter_p99_ms: f64,
}

/// Where the CPU of the relay under test is read.
enum Relay {
    /// Our thread (bridge or bare relay): answers samples over a channel.
    Thread(
        mpsc::Sender<BridgeCommand>,
        std::thread::JoinHandle<Result<()>>,
    ),
    /// The rtpengine daemon and the call-ids to delete afterwards.
    Daemon(Vec<String>),
}

/// UDP far end for rtpengine: returns each frame to where it came from, recording uplink
/// latency from the stamp.
async fn udp_echo(
    socket: Arc<UdpSocket>,
    base: Instant,
    recording: Arc<AtomicBool>,
    mut stop: watch::Receiver<bool>,
) -> Vec<u32> {
    let mut uplink_us = Vec::new();
    let mut buf = [0u8; 1500];
    loop {
        tokio::select! {
            received = socket.recv_from(&mut buf) => {
                let Ok((len, from)) = received else { continue };
                if recording.load(Ordering::Relaxed) {
                    if let Some((sent, _)) = buf.get(12..len).and_then(read_stamp) {
                        let now = base.elapsed().as_nanos() as u64;
                        uplink_us.push((now.saturating_sub(sent) / 1000) as u32);
                    }
                }
                let _ = socket.try_send_to(&buf[..len], from);
            }
            _ = stop.changed() => break,
        }
    }
    uplink_us
}

fn run(
    mode: Mode,
    calls: usize,
    args: &Args,
    mut engine: Option<&mut Rtpengine>,
    round: usize,
) -> Result<Figures> {
    let (seconds, warmup, pin) = (args.seconds, args.warmup, args.pin);
    let engine_pid = engine.as_ref().map(|e| e.pid());
    let base = Instant::now();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let recording = Arc::new(AtomicBool::new(false));
        let listener = TcpListener::bind((LOOPBACK, 0)).await?;
        let agent_url = format!("ws://{}/echo", listener.local_addr()?);
        let (uplink_tx, mut uplink_rx) = mpsc::channel::<Vec<u32>>(calls.max(1));
        let accept_recording = recording.clone();
        let acceptor = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let _ = tcp.set_nodelay(true);
                let tx = uplink_tx.clone();
                let recording = accept_recording.clone();
                tokio::spawn(async move {
                    let samples = echo_agent(tcp, base, recording).await;
                    let _ = tx.send(samples).await;
                });
            }
        });

        let mut callers = Vec::with_capacity(CALLER_SOCKETS);
        for _ in 0..CALLER_SOCKETS {
            callers.push(Arc::new(UdpSocket::bind((LOOPBACK, 0)).await?));
        }
        let caller_addrs = callers.iter().map(|s| s.local_addr()).collect::<Result<Vec<_>, _>>()?;
        let (stop_tx, stop_rx) = watch::channel(false);

        let setup_started = Instant::now();
        let mut udp_echoes = Vec::new();
        let (relay, bridge_addrs, heap_per_call) = if mode == Mode::Rtpengine {
            let engine = engine.as_deref_mut().context("rtpengine not started")?;
            let mut echo_addrs = Vec::with_capacity(CALLER_SOCKETS);
            for _ in 0..CALLER_SOCKETS {
                let socket = Arc::new(UdpSocket::bind((LOOPBACK, 0)).await?);
                echo_addrs.push(socket.local_addr()?);
                udp_echoes.push(tokio::spawn(udp_echo(socket, base, recording.clone(), stop_rx.clone())));
            }
            let mut addrs = Vec::with_capacity(calls);
            let mut call_ids = Vec::with_capacity(calls);
            for i in 0..calls {
                let call_id = format!("bench-{round}-{calls}-{i}");
                let (to_relay, _) = engine
                    .relay(&call_id, caller_addrs[i % CALLER_SOCKETS], echo_addrs[i % CALLER_SOCKETS])?;
                addrs.push(to_relay);
                call_ids.push(call_id);
            }
            (Relay::Daemon(call_ids), addrs, None)
        } else {
            let (ready_tx, ready_rx) = oneshot::channel();
            let (command_tx, command_rx) = mpsc::channel(4);
            let caller_addrs = caller_addrs.clone();
            let baseline = mode == Mode::Relay;
            let thread = std::thread::Builder::new().name("bridges".into()).spawn(move || {
                bridge_thread(baseline, calls, agent_url, caller_addrs, pin, ready_tx, command_rx)
            })?;
            let (addrs, heap) = ready_rx.await.context("bridge thread died")??;
            // The bare relay's tasks connect after set-up returns: only the bridge's figure counts.
            (Relay::Thread(command_tx, thread), addrs, (mode == Mode::Bridge).then_some(heap))
        };
        println!("  set up {calls} calls in {:.2}s", setup_started.elapsed().as_secs_f64());
        if let Some(heap) = heap_per_call {
            println!("  heap allocated by the setup: {:.1} kB per call (both ends of each WebSocket)", heap as f64 / 1000.0);
        }
        // Receivers: round-trip time per echoed packet.
        let mut receivers = Vec::new();
        for socket in &callers {
            let socket = socket.clone();
            let mut stop = stop_rx.clone();
            let recording = recording.clone();
            receivers.push(tokio::spawn(async move {
                let mut rtt: Vec<(u32, u32)> = Vec::new();
                let mut jitter_us: Vec<u32> = Vec::new();
                // Per call: (sequence number, arrival ns) of its previous packet.
                let mut previous: Vec<Option<(u16, u64)>> = vec![None; calls];
                let mut buf = [0u8; 1500];
                loop {
                    tokio::select! {
                        received = socket.recv_from(&mut buf) => {
                            let Ok((len, _)) = received else { continue };
                            if len < 12 + 12 || !recording.load(Ordering::Relaxed) { continue }
                            if let Some((sent, call)) = read_stamp(&buf[12..len]) {
                                let now = base.elapsed().as_nanos() as u64;
                                rtt.push((call, (now.saturating_sub(sent) / 1000) as u32));
                                let seq = u16::from_be_bytes([buf[2], buf[3]]);
                                if let Some(slot) = previous.get_mut(call as usize) {
                                    if let Some((last_seq, last_at)) = *slot {
                                        if seq == last_seq.wrapping_add(1) {
                                            let interval = now.saturating_sub(last_at) as i64;
                                            let deviation = (interval - FRAME_MS as i64 * 1_000_000).unsigned_abs();
                                            jitter_us.push((deviation / 1000) as u32);
                                        }
                                    }
                                    *slot = Some((seq, now));
                                }
                            }
                        }
                        _ = stop.changed() => break,
                    }
                }
                (rtt, jitter_us)
            }));
        }

        // Sender: every millisecond, the calls whose slot it is send one frame.
        let sent_in_window = Arc::new(AtomicU64::new(0));
        let sender = {
            let callers = callers.clone();
            let mut stop = stop_rx.clone();
            let recording = recording.clone();
            let sent_in_window = sent_in_window.clone();
            tokio::spawn(async move {
                let mut seq = vec![0u16; calls];
                let mut packet = [0x55u8; 12 + PAYLOAD];
                let mut tick = tokio::time::interval(Duration::from_millis(1));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let start_ms = base.elapsed().as_millis() as u64;
                let mut done_ms = start_ms;
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = stop.changed() => break,
                    }
                    // Catch up on late ticks so every call keeps exactly 50 packets/s.
                    let now_ms = base.elapsed().as_millis() as u64;
                    while done_ms < now_ms {
                        done_ms += 1;
                        let slot = (done_ms % FRAME_MS) as usize;
                        for call in (slot..calls).step_by(FRAME_MS as usize) {
                            let s = seq[call];
                            seq[call] = s.wrapping_add(1);
                            let ts = u32::from(s).wrapping_mul(PAYLOAD as u32);
                            packet[0] = 0x80;
                            packet[1] = 0; // PCMU
                            packet[2..4].copy_from_slice(&s.to_be_bytes());
                            packet[4..8].copy_from_slice(&ts.to_be_bytes());
                            packet[8..12].copy_from_slice(&(call as u32).to_be_bytes());
                            stamp(&mut packet[12..], base.elapsed().as_nanos() as u64, call as u32);
                            let socket = &callers[call % CALLER_SOCKETS];
                            if socket.try_send_to(&packet, bridge_addrs[call]).is_ok()
                                && recording.load(Ordering::Relaxed)
                            {
                                sent_in_window.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                }
            })
        };

        // ((relay CPU ns, ns it waited for a CPU), caller-leg packets it handled) now; rtpengine's
        // packets are counted at the callers instead (sent + echoes received).
        let sample = |relay: &Relay| {
            let (reply_tx, reply_rx) = oneshot::channel();
            let engine_cpu = engine_pid.map_or(0, rtpengine::process_cpu_ns);
            let command = match relay {
                Relay::Thread(commands, _) => Some(commands.clone()),
                Relay::Daemon(_) => None,
            };
            async move {
                match command {
                    Some(commands) => {
                        commands.send(BridgeCommand::Sample(reply_tx)).await.ok().context("bridge thread gone")?;
                        let (cpu, rx, tx) = reply_rx.await.context("no sample")?;
                        Ok((cpu, Some(rx + tx)))
                    }
                    None => anyhow::Ok(((engine_cpu, 0), None)),
                }
            }
        };
        tokio::time::sleep(Duration::from_secs(warmup)).await;
        recording.store(true, Ordering::Relaxed);
        let window_start = Instant::now();
        let driver_cpu_start = thread_cpu_ns();
        let cpu0 = sample(&relay).await?;
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        let cpu1 = sample(&relay).await?;
        let driver_cpu = thread_cpu_ns().0 - driver_cpu_start.0;
        let wall = window_start.elapsed();
        recording.store(false, Ordering::Relaxed);

        let _ = stop_tx.send(true);
        let _ = sender.await;
        let mut rtt = Vec::new();
        let mut jitter = Vec::new();
        for r in receivers {
            let (round_trips, deviations) = r.await?;
            rtt.extend(round_trips);
            jitter.extend(deviations);
        }
        let mut uplink = Vec::new();
        match relay {
            Relay::Thread(commands, thread) => {
                let _ = commands.send(BridgeCommand::Shutdown).await;
                for _ in 0..calls {
                    match tokio::time::timeout(Duration::from_secs(5), uplink_rx.recv()).await {
                        Ok(Some(samples)) => uplink.extend(samples),
                        _ => break,
                    }
                }
                match thread.join() {
                    Ok(result) => result?,
                    Err(_) => bail!("bridge thread panicked"),
                }
            }
            Relay::Daemon(call_ids) => {
                for echo in udp_echoes {
                    uplink.extend(echo.await?);
                }
                if let Some(engine) = engine.as_deref_mut() {
                    for call_id in call_ids {
                        let _ = engine.delete(&call_id);
                    }
                }
            }
        }
        acceptor.abort();

        let ((relay_cpu, relay_wait), handled) = match (cpu0, cpu1) {
            (((cpu0, wait0), Some(p0)), ((cpu1, wait1), Some(p1))) => ((cpu1 - cpu0, wait1 - wait0), Some(p1 - p0)),
            (((cpu0, wait0), _), ((cpu1, wait1), _)) => ((cpu1 - cpu0, wait1 - wait0), None),
        };
        let utilisation = relay_cpu as f64 / wall.as_nanos() as f64;
        let sent = sent_in_window.load(Ordering::Relaxed);
        let packets = handled.unwrap_or(sent + rtt.len() as u64);
        println!(
            "  window {:.2}s: caller sent {sent} packets, echoes received {}",
            wall.as_secs_f64(),
            rtt.len()
        );
        let uplink_p99 = summary("uplink (RTP in -> agent)", uplink);
        let jitter_p99 = summary("caller-side pacing jitter |interval - 20 ms| of consecutive packets", jitter);
        summary("round trip (RTP -> agent -> echo -> relay -> RTP)", rtt.iter().map(|(_, us)| *us).collect());
        // The per-core extrapolation means something only if both directions kept up.
        let sustained = rtt.len() as f64 >= 0.99 * sent as f64 && utilisation < 0.9;
        let calls_per_core = sustained.then(|| calls as f64 / utilisation.max(f64::EPSILON));
        let verdict = match calls_per_core {
            Some(per_core) => format!("sustained => {per_core:.0} calls per core at this cost"),
            None => "NOT sustained (echoes lost or relay saturated): no per-core figure".to_owned(),
        };
        let us_per_packet = relay_cpu as f64 / 1000.0 / packets.max(1) as f64;
        println!(
            "  {} CPU {:.1}% of one core, {us_per_packet:.2} µs per caller RTP packet (in+out), {:.2} µs per call-second; \
             {verdict}; relay waited {:.1}% of the window for a CPU; driver+echo thread CPU {:.1}%",
            mode.label(),
            utilisation * 100.0,
            relay_cpu as f64 / 1000.0 / calls as f64 / wall.as_secs_f64(),
            relay_wait as f64 / wall.as_nanos() as f64 * 100.0,
            driver_cpu as f64 / wall.as_nanos() as f64 * 100.0
        );
        // Each call is 50 packets/s in and 50 out on the caller leg.
        let calls_per_core_by_cost = 1e6 / (us_per_packet * 100.0).max(f64::EPSILON);
        anyhow::Ok(Figures { us_per_packet, calls_per_core, calls_per_core_by_cost, uplink_p99_ms: uplink_p99, jitter_p99_ms: jitter_p99 })
    })
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

fn main() -> Result<()> {
    let mut args = parse_args()?;
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    args.pin &= cpus >= 2;
    if args.pin {
        pin_current_thread(DRIVER_CPU)?;
        println!("relay under test on CPU {RELAY_CPU}; callers, echo agent and driver on CPU {DRIVER_CPU}");
    }
    println!("kernel socket buffers: {}", socket_buffer_defaults());
    let mut engine = None;
    if args.modes.contains(&Mode::Rtpengine) {
        if Rtpengine::available() {
            engine = Some(Rtpengine::start(RELAY_CPU, RTPENGINE_NG_PORT)?);
        } else {
            println!(
                "NOTE: {} not found (apt-get install rtpengine-daemon): rtpengine runs skipped",
                rtpengine::BINARY
            );
            args.modes.retain(|m| *m != Mode::Rtpengine);
        }
    }
    let mut results: Vec<(Mode, usize, Figures)> = Vec::new();
    for round in 1..=args.rounds {
        for &calls in &args.calls {
            for &mode in &args.modes {
                println!(
                    "media_bridge round {round}/{} ({}): {calls} concurrent calls, {}s measured after {}s warm-up",
                    args.rounds,
                    mode.label(),
                    args.seconds,
                    args.warmup
                );
                let figures = run(mode, calls, &args, engine.as_mut(), round)?;
                results.push((mode, calls, figures));
            }
        }
    }
    println!("\nmedians of {} round(s):", args.rounds);
    println!("| relay | calls | µs CPU per packet | calls per core (sustained) | calls per core by CPU cost | uplink p99 | jitter p99 |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for &calls in &args.calls {
        for &mode in &args.modes {
            let runs: Vec<Figures> = results
                .iter()
                .filter(|(m, c, _)| *m == mode && *c == calls)
                .map(|(_, _, f)| *f)
                .collect();
            let sustained: Vec<f64> = runs.iter().filter_map(|f| f.calls_per_core).collect();
            let per_core = if sustained.len() * 2 > runs.len() {
                format!("{:.0}", median(sustained))
            } else {
                format!("not sustained ({}/{} runs)", sustained.len(), runs.len())
            };
            println!(
                "| {} | {calls} | {:.2} | {per_core} | {:.0} | {:.2} ms | {:.2} ms |",
                mode.label(),
                median(runs.iter().map(|f| f.us_per_packet).collect()),
                median(runs.iter().map(|f| f.calls_per_core_by_cost).collect()),
                median(runs.iter().map(|f| f.uplink_p99_ms).collect()),
                median(runs.iter().map(|f| f.jitter_p99_ms).collect()),
            );
        }
    }
    Ok(())
}
