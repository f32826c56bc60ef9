//! Load driver for the media bridge: N concurrent bridged calls on loopback.
//!
//! ```text
//! cargo bench -p switchboard-benches --bench media_bridge -- --calls 500,2000 --seconds 5
//! ```
//! Threads: the bridges run on ONE current-thread tokio runtime on their own OS thread (so its
//! CPU time is "one core's worth" of bridging); the callers and an echo agent run on the main
//! thread. Each caller sends a 20 ms PCMU frame every 20 ms (calls spread over the 20 ms slot),
//! the agent echoes every `media` message back, the bridge paces the echo out as RTP.
//!
//! Reported per run:
//! * uplink latency: caller RTP sent → `media` JSON received by the agent (p50/p99/max);
//! * round trip: caller RTP → bridge → agent → bridge pacer → caller RTP (includes the 0-20 ms
//!   wait for the call's next frame slot, by design);
//! * pacing jitter at the caller: |arrival interval − 20 ms| between consecutive packets;
//! * bridge thread CPU (from /proc/thread-self/schedstat: ns-precise, per thread, the safe
//!   equivalent of getrusage(RUSAGE_THREAD) under `forbid(unsafe_code)`), µs per packet
//!   (RTP in + RTP out), and calls per core = calls / bridge-thread utilisation.
//!
//! `--baseline` replaces the bridge by a bare relay doing only what any bridge must (one UDP
//! receive + one WebSocket message per frame each way, base64 included, no pacing, framing,
//! marks or DTMF): the kernel/VM floor the real bridge is compared against.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use base64::Engine as _;
use futures_util::{SinkExt as _, StreamExt as _};
use switchboard_media::twilio::new_sid;
use switchboard_media::{
    connect_agent, negotiate, spawn_bridge, AgentTls, BridgeConfig, BridgeHandle, CustomParameters,
    IdleAudio, StartParams, StreamIds,
};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::Message;

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// Caller sockets shared by all calls (one receive task each): enough to keep each socket's
/// receive queue short at 100k packets/s.
const CALLER_SOCKETS: usize = 16;
/// Frame period and slots: call i sends at millisecond (i mod 20) of each 20 ms period.
const FRAME_MS: u64 = 20;
const PAYLOAD: usize = 160;
const AGENT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

struct Args {
    baseline: bool,
    calls: Vec<usize>,
    seconds: u64,
    warmup: u64,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        baseline: false,
        calls: vec![500, 2000],
        seconds: 5,
        warmup: 2,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--calls" => {
                let list = it.next().context("--calls needs a list")?;
                args.calls = list.split(',').map(str::parse).collect::<Result<_, _>>()?;
            }
            "--seconds" => args.seconds = it.next().context("--seconds needs a value")?.parse()?,
            "--baseline" => args.baseline = true,
            "--warmup" => args.warmup = it.next().context("--warmup needs a value")?.parse()?,
            // cargo bench passes --bench; criterion-style flags are ignored too.
            _ => {}
        }
    }
    Ok(args)
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

/// The bridge side: binds, negotiates, connects and spawns `calls` bridges, then serves samples.
/// Packet counters of the baseline relays.
#[derive(Default)]
struct RelayCounters {
    rtp_in: AtomicU64,
    rtp_out: AtomicU64,
}

/// The baseline: caller RTP → `media` JSON at once, agent `media` → RTP at once.
async fn raw_relay(
    socket: UdpSocket,
    caller: SocketAddr,
    agent_url: String,
    counters: Arc<RelayCounters>,
) -> Result<()> {
    let (mut ws, _) =
        tokio_tungstenite::connect_async_with_config(agent_url.as_str(), None, true).await?;
    let engine = base64::engine::general_purpose::STANDARD;
    let mut buf = [0u8; 1500];
    let mut packet = [0u8; 12 + PAYLOAD];
    packet[0] = 0x80;
    let mut seq: u16 = 0;
    loop {
        tokio::select! {
            received = socket.recv_from(&mut buf) => {
                let Ok((len, _)) = received else { continue };
                if len <= 12 { continue }
                counters.rtp_in.fetch_add(1, Ordering::Relaxed);
                let mut text = String::with_capacity(300);
                text.push_str("{\"event\":\"media\",\"media\":{\"payload\":\"");
                engine.encode_string(&buf[12..len], &mut text);
                text.push_str("\"}}");
                ws.send(Message::text(text)).await?;
            }
            message = ws.next() => {
                let Some(Ok(Message::Text(text))) = message else { return Ok(()) };
                let payload = text.as_str().split("\"payload\":\"").nth(1).unwrap_or_default();
                let payload = payload.split('"').next().unwrap_or_default();
                let Ok(bytes) = engine.decode(payload) else { continue };
                let len = bytes.len().min(PAYLOAD);
                seq = seq.wrapping_add(1);
                packet[2..4].copy_from_slice(&seq.to_be_bytes());
                packet[12..12 + len].copy_from_slice(&bytes[..len]);
                if socket.try_send_to(&packet[..12 + len], caller).is_ok() {
                    counters.rtp_out.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

fn bridge_thread(
    baseline: bool,
    calls: usize,
    agent_url: String,
    caller_addrs: Vec<SocketAddr>,
    ready: oneshot::Sender<Result<Vec<SocketAddr>>>,
    mut commands: mpsc::Receiver<BridgeCommand>,
) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let counters = Arc::new(RelayCounters::default());
    runtime.block_on(async move {
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
                let _ = ready.send(Ok(addrs));
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
                BridgeCommand::Shutdown => break,
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
    let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
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

fn summary(name: &str, mut samples_us: Vec<u32>) -> String {
    samples_us.sort_unstable();
    format!(
        "{name}: n={} p50={:.3}ms p99={:.3}ms p99.9={:.3}ms max={:.3}ms",
        samples_us.len(),
        percentile(&samples_us, 0.50),
        percentile(&samples_us, 0.99),
        percentile(&samples_us, 0.999),
        percentile(&samples_us, 1.0)
    )
}

fn run(baseline: bool, calls: usize, seconds: u64, warmup: u64) -> Result<()> {
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

        let (ready_tx, ready_rx) = oneshot::channel();
        let (command_tx, command_rx) = mpsc::channel(4);
        let setup_started = Instant::now();
        let bridge = std::thread::Builder::new().name("bridges".into()).spawn(move || {
            bridge_thread(baseline, calls, agent_url, caller_addrs, ready_tx, command_rx)
        })?;
        let bridge_addrs = ready_rx.await.context("bridge thread died")??;
        println!("  set up {calls} calls in {:.2}s", setup_started.elapsed().as_secs_f64());

        // Receivers: round-trip time per echoed packet.
        let (stop_tx, stop_rx) = watch::channel(false);
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

        let sample = |command_tx: mpsc::Sender<BridgeCommand>| async move {
            let (tx, rx) = oneshot::channel();
            command_tx.send(BridgeCommand::Sample(tx)).await.ok().context("bridge thread gone")?;
            rx.await.context("no sample")
        };
        tokio::time::sleep(Duration::from_secs(warmup)).await;
        recording.store(true, Ordering::Relaxed);
        let window_start = Instant::now();
        let driver_cpu_start = thread_cpu_ns();
        let (cpu0, in0, out0) = sample(command_tx.clone()).await?;
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        let (cpu1, in1, out1) = sample(command_tx.clone()).await?;
        let driver_cpu = thread_cpu_ns().0 - driver_cpu_start.0;
        let wall = window_start.elapsed();
        recording.store(false, Ordering::Relaxed);

        let _ = stop_tx.send(true);
        let _ = sender.await;
        let _ = command_tx.send(BridgeCommand::Shutdown).await;
        let mut rtt = Vec::new();
        let mut jitter = Vec::new();
        for r in receivers {
            let (round_trips, deviations) = r.await?;
            rtt.extend(round_trips);
            jitter.extend(deviations);
        }
        let mut uplink = Vec::new();
        for _ in 0..calls {
            match tokio::time::timeout(Duration::from_secs(5), uplink_rx.recv()).await {
                Ok(Some(samples)) => uplink.extend(samples),
                _ => break,
            }
        }
        acceptor.abort();
        match bridge.join() {
            Ok(result) => result?,
            Err(_) => bail!("bridge thread panicked"),
        }

        let bridge_cpu = cpu1.0 - cpu0.0;
        let bridge_wait = cpu1.1 - cpu0.1;
        let (packets_in, packets_out) = (in1 - in0, out1 - out0);
        let utilisation = bridge_cpu as f64 / wall.as_nanos() as f64;
        let sent = sent_in_window.load(Ordering::Relaxed);
        println!(
            "  window {:.2}s: caller sent {sent} packets, bridge RTP in {packets_in} out {packets_out}, echoes received {}",
            wall.as_secs_f64(),
            rtt.len()
        );
        println!("  {}", summary("uplink (RTP in -> agent WS)", uplink));
        println!("  {}", summary("round trip (RTP -> WS -> echo -> pacer -> RTP)", rtt.iter().map(|(_, us)| *us).collect()));
        println!("  {}", summary("caller-side pacing jitter |interval - 20 ms| of consecutive packets", jitter));
        // The per-core extrapolation means something only if both directions kept up.
        let sustained = rtt.len() as f64 >= 0.99 * sent as f64 && utilisation < 0.9;
        let verdict = if sustained {
            format!("sustained => {:.0} calls per core at this cost", calls as f64 / utilisation.max(f64::EPSILON))
        } else {
            "NOT sustained (echoes lost or bridge thread saturated): no per-core figure".to_owned()
        };
        println!(
            "  bridge thread CPU {:.1}% of one core, {:.2} µs per RTP packet (in+out), {:.2} µs per call-second; \
             {verdict}; bridge thread waited {:.1}% of the window for a CPU; \
             driver+echo-agent thread CPU {:.1}%",
            utilisation * 100.0,
            bridge_cpu as f64 / 1000.0 / (packets_in + packets_out).max(1) as f64,
            bridge_cpu as f64 / 1000.0 / calls as f64 / wall.as_secs_f64(),
            bridge_wait as f64 / wall.as_nanos() as f64 * 100.0,
            driver_cpu as f64 / wall.as_nanos() as f64 * 100.0
        );
        anyhow::Ok(())
    })
}

fn main() -> Result<()> {
    let args = parse_args()?;
    for calls in args.calls {
        let what = if args.baseline {
            "BASELINE bare relay"
        } else {
            "switchboard bridge"
        };
        println!(
            "media_bridge ({what}): {calls} concurrent calls, {}s measured after {}s warm-up",
            args.seconds, args.warmup
        );
        run(args.baseline, calls, args.seconds, args.warmup)?;
    }
    Ok(())
}
