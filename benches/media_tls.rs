//! What TLS everywhere costs the media path, side by side in one run:
//!
//! ```text
//! cargo bench -p switchboard-benches --bench media_tls -- [--rounds 31] [--packets 10000] [--connects 200]
//! ```
//! 1. **SRTP vs plain RTP, CPU per packet.** One "packet" is what the bridge does per 20 ms
//!    frame each way: parse a caller packet and build one of ours, plus, for SRTP, unprotect
//!    the caller's (AES-CM + HMAC-SHA1-80 check, replay window) and protect ours. Plain and
//!    SRTP batches alternate round by round on one thread; the caller's SRTP packets are
//!    made before the clock starts. Reported: median µs/packet over the rounds for both, and
//!    the difference.
//! 2. **Agent connect, ws vs wss.** `connect_agent` (TCP connect, for wss the TLS 1.3
//!    handshake with certificate and host-name verification, the WebSocket upgrade, then
//!    `connected` + `start`) against an in-process server on loopback, ws and wss alternating.
//!    Reported: p50/p99 in ms for both.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use futures_util::StreamExt as _;
use switchboard_media::rtp::{RtpReceiver, RtpSender, MAX_PACKET};
use switchboard_media::sdp::{CryptoSuite, SrtpKey, SrtpParams};
use switchboard_media::srtp::SrtpStream;
use switchboard_media::twilio::new_sid;
use switchboard_media::{connect_agent, AgentTls, CustomParameters, StartParams, StreamIds};
use tokio::net::TcpListener;

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const FRAME: [u8; 160] = [0x55; 160];

struct Options {
    rounds: usize,
    packets: usize,
    connects: usize,
}

fn options() -> Result<Options> {
    let mut o = Options {
        rounds: 31,
        packets: 10_000,
        connects: 200,
    };
    switchboard_benches::count_args(&mut [
        ("rounds", &mut o.rounds),
        ("packets", &mut o.packets),
        ("connects", &mut o.connects),
    ])
    .map_err(anyhow::Error::msg)?;
    Ok(o)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

/// The caller's packets for one batch: `count` in-sequence PCMU frames.
fn caller_packets(count: usize) -> Vec<Vec<u8>> {
    let mut sender = RtpSender::with_initial(0x1234_5678, 1, 0);
    (0..count)
        .map(|_| {
            let mut buf = [0u8; MAX_PACKET];
            let len = sender.tick(Some(&FRAME), true, 0, &mut buf).unwrap_or(0);
            buf[..len].to_vec()
        })
        .collect()
}

/// One batch of the bridge's per-frame packet work; µs per packet.
fn packet_batch(inbound: &[Vec<u8>], mut srtp: Option<SrtpStream>) -> f64 {
    let mut receiver = RtpReceiver::new(0, None);
    let mut sender = RtpSender::new();
    let mut out = [0u8; MAX_PACKET];
    let mut checksum = 0usize;
    let started = Instant::now();
    for datagram in inbound {
        let clear = match &mut srtp {
            Some(s) => match s.unprotect(datagram) {
                Ok(switchboard_media::srtp::Unprotected::Rtp(p)) => p,
                _ => continue,
            },
            None => bytes_of(datagram),
        };
        if receiver.receive(&clear).is_ok() {
            checksum += 1;
        }
        if let Some(len) = sender.tick(Some(&FRAME), true, 0, &mut out) {
            checksum += match &mut srtp {
                Some(s) => s.protect(&out[..len]).map_or(0, |w| w.len()),
                None => std::hint::black_box(&out[..len]).len(),
            };
        }
    }
    let elapsed = started.elapsed();
    assert!(checksum > inbound.len(), "the batch did no work");
    elapsed.as_secs_f64() * 1e6 / inbound.len() as f64
}

/// The plain path gets the same owned-buffer shape as SRTP's output, minus the crypto.
fn bytes_of(datagram: &[u8]) -> bytes::Bytes {
    bytes::Bytes::copy_from_slice(datagram)
}

fn srtp_vs_plain(o: &Options) -> Result<()> {
    let plain_packets = caller_packets(o.packets);
    let (mut plain, mut srtp) = (Vec::new(), Vec::new());
    for _ in 0..o.rounds {
        plain.push(packet_batch(&plain_packets, None));
        // Fresh keys per round: the replay window must see new indexes.
        let (caller_key, our_key) = (SrtpKey::random(), SrtpKey::random());
        let params = |remote: &SrtpKey, local: &SrtpKey| SrtpParams {
            suite: CryptoSuite::AesCm128HmacSha1_80,
            tag: 1,
            remote: remote.clone(),
            local: local.clone(),
        };
        let mut caller = SrtpStream::new(&params(&our_key, &caller_key))?;
        let protected: Vec<Vec<u8>> = plain_packets
            .iter()
            .map(|p| caller.protect(p).map(|b| b.to_vec()))
            .collect::<Result<_, _>>()?;
        let ours = SrtpStream::new(&params(&caller_key, &our_key))?;
        srtp.push(packet_batch(&protected, Some(ours)));
    }
    let (plain, srtp) = (sorted(plain), sorted(srtp));
    let (p50, s50) = (percentile(&plain, 0.5), percentile(&srtp, 0.5));
    println!(
        "\nper packet (parse caller packet + build ours; SRTP adds unprotect + protect), {} rounds x {} packets:",
        o.rounds, o.packets
    );
    println!("| path | median µs/packet | p10 | p90 |");
    println!("|---|---:|---:|---:|");
    for (name, v) in [
        ("plain RTP", &plain),
        ("SRTP AES_CM_128_HMAC_SHA1_80", &srtp),
    ] {
        println!(
            "| {name} | {:.3} | {:.3} | {:.3} |",
            percentile(v, 0.5),
            percentile(v, 0.1),
            percentile(v, 0.9)
        );
    }
    println!(
        "added by SRTP: {:.3} µs/packet ({:.1}x plain)",
        s50 - p50,
        s50 / p50
    );
    Ok(())
}

/// A self-signed CA and a `localhost` server certificate it signed, made in process.
fn test_pki() -> Result<(Arc<rustls::ServerConfig>, AgentTls)> {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_key = rcgen::KeyPair::generate()?;
    let ca = ca_params.self_signed(&ca_key)?;
    let server_key = rcgen::KeyPair::generate()?;
    let server = rcgen::CertificateParams::new(vec!["localhost".to_owned()])?.signed_by(
        &server_key,
        &ca,
        &ca_key,
    )?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(
            vec![server.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(server_key.serialize_der().into()),
        )?;
    let trust = AgentTls::from_pem(ca.pem().as_bytes())?;
    Ok((Arc::new(config), trust))
}

/// Accepts agent WebSockets (TLS when `tls` is set) until the runtime stops; each session
/// is read to its end so the client's close completes.
async fn serve(listener: TcpListener, tls: Option<tokio_rustls::TlsAcceptor>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            return;
        };
        let tls = tls.clone();
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            match tls {
                Some(acceptor) => {
                    if let Ok(stream) = acceptor.accept(tcp).await {
                        if let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await {
                            while let Some(Ok(_)) = ws.next().await {}
                        }
                    }
                }
                None => {
                    if let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await {
                        while let Some(Ok(_)) = ws.next().await {}
                    }
                }
            }
        });
    }
}

async fn connect_times(o: &Options) -> Result<()> {
    let (server_config, trust) = test_pki()?;
    let ws_listener = TcpListener::bind((LOOPBACK, 0)).await?;
    let wss_listener = TcpListener::bind((LOOPBACK, 0)).await?;
    let ws_url = format!("ws://127.0.0.1:{}/media", ws_listener.local_addr()?.port());
    let wss_url = format!(
        "wss://localhost:{}/media",
        wss_listener.local_addr()?.port()
    );
    tokio::spawn(serve(ws_listener, None));
    tokio::spawn(serve(
        wss_listener,
        Some(tokio_rustls::TlsAcceptor::from(server_config)),
    ));
    let (mut ws, mut wss) = (Vec::new(), Vec::new());
    for i in 0..o.connects * 2 {
        let (url, times) = if i % 2 == 0 {
            (&ws_url, &mut ws)
        } else {
            (&wss_url, &mut wss)
        };
        let params = StartParams {
            ids: StreamIds::generate(new_sid("AC")),
            custom_parameters: CustomParameters::new(),
            dialect: switchboard_media::AgentDialect::Twilio,
        };
        let started = Instant::now();
        let link = connect_agent(url, params, Duration::from_secs(5), &trust).await?;
        times.push(started.elapsed().as_secs_f64() * 1e3);
        link.abandon().await;
    }
    let (ws, wss) = (sorted(ws), sorted(wss));
    println!(
        "\nagent connect (TCP + [TLS 1.3 handshake, chain + host name verified] + WebSocket upgrade + connected/start), {} each, alternating:",
        o.connects
    );
    println!("| runtime | p50 ms | p99 ms | max ms |");
    println!("|---|---:|---:|---:|");
    for (name, v) in [("ws://", &ws), ("wss://", &wss)] {
        println!(
            "| {name} | {:.3} | {:.3} | {:.3} |",
            percentile(v, 0.5),
            percentile(v, 0.99),
            percentile(v, 1.0)
        );
    }
    Ok(())
}

fn main() -> Result<()> {
    let o = options()?;
    srtp_vs_plain(&o)?;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(connect_times(&o))
}
