//! SIP over TLS connection cost, side by side with plain TCP in the same run (not a criterion
//! bench: it measures a running gateway end to end).
//!
//! Starts the gateway in-process with `[sip] tls` on a certificate from a throwaway CA (made
//! with the `openssl` CLI), trusts 127.0.0.1 through the admin API, then alternates, N times:
//! - TLS: TCP connect + TLS handshake (rustls client, TLS 1.3, full handshake, no resumption)
//!   + OPTIONS + its 200 OK;
//! - TCP: TCP connect + OPTIONS + its 200 OK.
//!
//! and prints p50/p90/p99 of the TLS handshake alone, the whole TLS round and the whole TCP
//! round. Client and gateway share the machine (and this process).
//!
//! Run: `cargo bench -p switchboard-benches --bench sip_tls_handshake`
//! Knobs (env): SIP_TLS_BENCH_ROUNDS (500).

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use switchboard::config::{ApiKey, Config};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const KEY: &str = "tls-bench-key";

fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .context("running openssl (Debian package openssl)")?;
    if !out.status.success() {
        bail!("openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// A CA (`ca.pem`) and a P-256 server certificate for 127.0.0.1 (`server.pem`, `server.key`).
fn make_pki(dir: &Path) -> Result<()> {
    let curve = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        dir,
        &[
            &["req", "-x509"],
            &curve[..],
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "1",
                "-subj",
                "/CN=bench CA",
            ],
        ]
        .concat(),
    )?;
    openssl(
        dir,
        &[
            &["req"],
            &curve[..],
            &[
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=127.0.0.1",
            ],
        ]
        .concat(),
    )?;
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-set_serial",
            "7",
            "-days",
            "1",
            "-extfile",
            "server.ext",
            "-out",
            "server.pem",
        ],
    )
}

fn options(local: SocketAddr, target: SocketAddr, transport: &str, n: usize) -> String {
    format!(
        "OPTIONS sip:{target} SIP/2.0\r\nVia: SIP/2.0/{transport} {local};branch=z9hG4bKb{n}\r\n\
         From: <sip:bench@{local}>;tag=b{n}\r\nTo: <sip:{target}>\r\nCall-ID: bench-{n}\r\n\
         CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    )
}

/// Sends `request` and reads until the end of a response head; fails unless it is a 200.
async fn round_trip<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    request: &str,
) -> Result<()> {
    stream.write_all(request.as_bytes()).await?;
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        ensure!(n > 0, "connection closed before the answer");
        got.extend_from_slice(&buf[..n]);
    }
    ensure!(
        got.starts_with(b"SIP/2.0 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    Ok(())
}

/// Trusts 127.0.0.1 (one connection) through the admin API, over a raw HTTP/1.1 request.
async fn trust_loopback(admin: SocketAddr) -> Result<()> {
    let body = r#"{"allowed_addresses":["127.0.0.1/32"]}"#;
    let request = format!(
        "PUT /v1/orgs/bench/workspaces/w/connections/local HTTP/1.1\r\nHost: b\r\nX-API-Key: {KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut s = TcpStream::connect(admin).await?;
    s.write_all(request.as_bytes()).await?;
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).await?;
    ensure!(
        reply.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    Ok(())
}

fn percentiles(name: &str, samples: &mut [Duration]) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "{name:<34} n={:<5} p50 {:>8.0} µs   p90 {:>8.0} µs   p99 {:>8.0} µs",
        samples.len(),
        us(at(0.50)),
        us(at(0.90)),
        us(at(0.99)),
    );
}

#[tokio::main]
async fn main() -> Result<()> {
    let rounds: usize = std::env::var("SIP_TLS_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let dir = tempfile::tempdir()?;
    make_pki(dir.path())?;
    let mut config = Config::default();
    config.admin.listen = "127.0.0.1:0".parse()?;
    config.admin.api_keys = vec![ApiKey::new(KEY)];
    config.store.url = format!("sqlite://{}", dir.path().join("bench.db").display());
    config.sip.udp = "127.0.0.1:0".parse()?;
    config.sip.tcp = "127.0.0.1:0".parse()?;
    config.sip.tls = Some("127.0.0.1:0".parse()?);
    config.sip.tls_cert = Some(dir.path().join("server.pem"));
    config.sip.tls_key = Some(dir.path().join("server.key"));
    config.sip.workers = 1;
    // Every round opens a connection; the per-source cap must not be what is measured.
    config.sip.max_tcp_connections_per_source = 10_000;
    let running = switchboard::start(config).await?;
    let (tcp, tls) = (
        running.sip_tcp.context("no TCP listener")?,
        running.sip_tls.context("no TLS listener")?,
    );
    trust_loopback(running.admin).await?;

    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(dir.path().join("ca.pem"))? {
        roots.add(cert?)?;
    }
    let mut client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    // Full handshakes only: carriers reconnect rarely, and resumption would hide the cost.
    client.resumption = rustls::client::Resumption::disabled();
    let connector = TlsConnector::from(Arc::new(client));
    let name = ServerName::try_from("127.0.0.1")?.to_owned();

    let (mut handshakes, mut tls_rounds, mut tcp_rounds) = (Vec::new(), Vec::new(), Vec::new());
    for n in 0..rounds {
        let start = Instant::now();
        let stream = TcpStream::connect(tls).await?;
        stream.set_nodelay(true)?;
        let local = stream.local_addr()?;
        let mut secure = connector.connect(name.clone(), stream).await?;
        handshakes.push(start.elapsed());
        round_trip(&mut secure, &options(local, tls, "TLS", 2 * n)).await?;
        tls_rounds.push(start.elapsed());
        drop(secure);

        let start = Instant::now();
        let mut plain = TcpStream::connect(tcp).await?;
        plain.set_nodelay(true)?;
        let local = plain.local_addr()?;
        round_trip(&mut plain, &options(local, tcp, "TCP", 2 * n + 1)).await?;
        tcp_rounds.push(start.elapsed());
    }
    println!(
        "SIP connection cost, {rounds} alternating rounds (client and gateway on one machine)"
    );
    percentiles("TLS 1.3 handshake (connect+hello)", &mut handshakes);
    percentiles("TLS connect+handshake+OPTIONS", &mut tls_rounds);
    percentiles("TCP connect+OPTIONS", &mut tcp_rounds);
    running.stop().await;
    Ok(())
}
