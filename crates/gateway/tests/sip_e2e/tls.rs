//! SIP over TLS (and the admin API over HTTPS) against the real daemon: a CA, server and client
//! certificates made with the `openssl` CLI at test time, a rustls client speaking SIP over the
//! TLS connection, and Python's `ssl` module as a second, independent client.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use super::harness::*;

/// Bound on every wait for a SIP message (the agent hang-up is 2 s after the call starts).
const WAIT: Duration = Duration::from_secs(15);

/// A throwaway CA with a server certificate (`127.0.0.1`, `localhost`) and a client certificate.
pub struct Pki {
    pub dir: tempfile::TempDir,
}

impl Pki {
    /// Makes the CA, a server certificate with serial `1001` and a client certificate.
    pub fn new() -> anyhow::Result<Pki> {
        let pki = Pki {
            dir: tempfile::tempdir()?,
        };
        pki.openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=switchboard test CA",
        ])?;
        pki.leaf(
            "server",
            1001,
            "serverAuth",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        )?;
        pki.leaf(
            "client",
            2001,
            "clientAuth",
            "subjectAltName=DNS:carrier.test",
        )?;
        Ok(pki)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn openssl(&self, args: &[&str]) -> anyhow::Result<()> {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .context("running openssl")?;
        if !out.status.success() {
            bail!("openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// (Re)issues `<name>.pem`/`<name>.key` signed by the CA with `serial`.
    pub fn leaf(&self, name: &str, serial: u32, usage: &str, san: &str) -> anyhow::Result<()> {
        let ext = format!(
            "{san}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage={usage}\n"
        );
        std::fs::write(self.path(&format!("{name}.ext")), ext)?;
        let (key, csr, pem, extfile) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.ext"),
        );
        self.openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &csr,
            "-subj",
            &format!("/CN={name}"),
        ])?;
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-set_serial",
            &serial.to_string(),
            "-days",
            "2",
            "-out",
            &pem,
            "-extfile",
            &extfile,
        ])
    }

    /// The environment that turns the daemon's TLS listener on with the server certificate.
    pub fn sip_env(&self) -> Vec<(String, String)> {
        vec![
            ("SWITCHBOARD_SIP_TLS".into(), "127.0.0.1:0".into()),
            (
                "SWITCHBOARD_SIP_TLS_CERT".into(),
                self.path("server.pem").display().to_string(),
            ),
            (
                "SWITCHBOARD_SIP_TLS_KEY".into(),
                self.path("server.key").display().to_string(),
            ),
        ]
    }

    /// A rustls client trusting the CA, presenting the client certificate when `with_cert`.
    pub fn connector(&self, with_cert: bool) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(self.path("ca.pem")).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
        let config = if with_cert {
            let chain = CertificateDer::pem_file_iter(self.path("client.pem"))
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_file(self.path("client.key")).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        } else {
            builder.with_no_client_auth()
        };
        TlsConnector::from(Arc::new(config))
    }
}

/// Connects and completes the TLS handshake to `addr` (as `127.0.0.1`).
pub async fn tls_connect(
    connector: &TlsConnector,
    addr: std::net::SocketAddr,
) -> anyhow::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("127.0.0.1")?.to_owned();
    Ok(connector.connect(name, tcp).await?)
}

/// Reads SIP messages off a stream, one at a time (head, then `Content-Length` body).
#[derive(Debug, Default)]
pub struct SipReader {
    buf: Vec<u8>,
}

impl SipReader {
    /// The next message, or an error on EOF, a read error or after [`WAIT`].
    pub async fn next<S: AsyncRead + Unpin>(&mut self, stream: &mut S) -> anyhow::Result<String> {
        tokio::time::timeout(WAIT, self.read(stream))
            .await
            .context("no SIP message in time")?
    }

    async fn read<S: AsyncRead + Unpin>(&mut self, stream: &mut S) -> anyhow::Result<String> {
        loop {
            // Keep-alive CRLFs between messages are skipped.
            while self.buf.starts_with(b"\r\n") {
                self.buf.drain(..2);
            }
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                let length = head
                    .lines()
                    .find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        let name = name.trim();
                        (name.eq_ignore_ascii_case("content-length") || name == "l")
                            .then(|| value.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                let total = end + 4 + length;
                if self.buf.len() >= total {
                    let message = String::from_utf8_lossy(&self.buf[..total]).into_owned();
                    self.buf.drain(..total);
                    return Ok(message);
                }
            }
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                bail!("connection closed");
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Skips provisional responses up to the first final one or request.
    pub async fn next_final<S: AsyncRead + Unpin>(
        &mut self,
        stream: &mut S,
    ) -> anyhow::Result<String> {
        loop {
            let m = self.next(stream).await?;
            if !m.starts_with("SIP/2.0 1") {
                return Ok(m);
            }
        }
    }
}

fn header<'a>(message: &'a str, name: &str) -> Option<&'a str> {
    message.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then_some(v.trim())
    })
}

fn status(message: &str) -> Option<u16> {
    message.strip_prefix("SIP/2.0 ")?.get(..3)?.parse().ok()
}

/// A SIP user agent on one TLS connection: builds requests with `SIP/2.0/TLS` Vias.
struct TlsCaller {
    local: std::net::SocketAddr,
    gateway: std::net::SocketAddr,
    seq: u32,
}

impl TlsCaller {
    /// A caller on `tls`, which is connected to the gateway's TLS listener `gateway`.
    fn on(tls: &TlsStream<TcpStream>, gateway: std::net::SocketAddr) -> TlsCaller {
        TlsCaller {
            local: tls.get_ref().0.local_addr().unwrap(),
            gateway,
            seq: 0,
        }
    }

    fn options(&mut self) -> String {
        self.seq += 1;
        let (local, gw, seq) = (self.local, self.gateway, self.seq);
        format!(
            "OPTIONS sip:{gw};transport=tls SIP/2.0\r\nVia: SIP/2.0/TLS {local};branch=z9hG4bKopt{seq}\r\n\
             From: <sip:carrier@{local}>;tag=o{seq}\r\nTo: <sip:{gw}>\r\nCall-ID: opt-{seq}-{local}\r\n\
             CSeq: {seq} OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        )
    }

    /// An INVITE to [`CALLED`] with a `sips:` Request-URI and a PCMU offer.
    fn invite(&mut self, call_id: &str, rtp_port: u16) -> String {
        self.seq += 1;
        let (local, gw, seq) = (self.local, self.gateway, self.seq);
        let sdp = format!(
            "v=0\r\no=carrier 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
             m=audio {rtp_port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n"
        );
        format!(
            "INVITE sips:{CALLED}@{gw};user=phone SIP/2.0\r\nVia: SIP/2.0/TLS {local};branch=z9hG4bKinv{seq}\r\n\
             From: <sips:carrier@{local}>;tag=c{seq}\r\nTo: <sips:{CALLED}@{gw};user=phone>\r\n\
             Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sips:carrier@{local};transport=tls>\r\n\
             P-Asserted-Identity: <sip:{CALLER}@127.0.0.1;user=phone>\r\nMax-Forwards: 70\r\n\
             Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
            sdp.len()
        )
    }

    /// An in-dialog request (`ACK` or `BYE`) after the 200 `ok` to `invite`.
    fn in_dialog(&mut self, method: &str, invite: &str, ok: &str) -> String {
        self.seq += 1;
        let (local, seq) = (self.local, self.seq);
        let target = header(ok, "Contact")
            .and_then(|c| c.split(['<', '>']).nth(1))
            .unwrap_or_default()
            .to_owned();
        let cseq = if method == "ACK" { 1 } else { 2 };
        format!(
            "{method} {target} SIP/2.0\r\nVia: SIP/2.0/TLS {local};branch=z9hG4bK{method}{seq}\r\n\
             From: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {cseq} {method}\r\nMax-Forwards: 70\r\n\
             Content-Length: 0\r\n\r\n",
            header(invite, "From").unwrap_or_default(),
            header(ok, "To").unwrap_or_default(),
            header(invite, "Call-ID").unwrap_or_default(),
        )
    }
}

/// The 200 OK a UAS sends for a request (echoing its Via, From, To, Call-ID and CSeq).
fn ok_for(request: &str) -> String {
    let mut out = String::from("SIP/2.0 200 OK\r\n");
    for name in ["Via", "From", "To", "Call-ID", "CSeq"] {
        if let Some(v) = header(request, name) {
            out.push_str(&format!("{name}: {v}\r\n"));
        }
    }
    out.push_str("Content-Length: 0\r\n\r\n");
    out
}

/// Sends an OPTIONS over `tls` and expects its 200 OK on the same connection.
async fn assert_options_answered(tls: &mut TlsStream<TcpStream>, gateway: std::net::SocketAddr) {
    let options = TlsCaller::on(tls, gateway).options();
    send(tls, &options).await;
    let answer = SipReader::default().next(tls).await.unwrap();
    assert_eq!(status(&answer), Some(200), "{answer}");
}

async fn send<S: AsyncWrite + Unpin>(stream: &mut S, message: &str) {
    stream.write_all(message.as_bytes()).await.expect("write");
}

fn openssl_missing() -> bool {
    tool_missing(
        "openssl",
        "Debian package openssl, makes the test certificates",
    )
}

/// A fixture whose daemon also listens for SIP over TLS with a fresh PKI (requiring client
/// certificates from the PKI's CA when `mutual_tls`), and that listener's address; `None`
/// (with a notice) when openssl is missing.
async fn tls_fixture(
    agent: AgentBehaviour,
    mutual_tls: bool,
) -> Option<(Fixture, Pki, std::net::SocketAddr)> {
    if openssl_missing() {
        return None;
    }
    let pki = Pki::new().expect("test PKI");
    let mut options = FixtureOptions {
        agent,
        ..FixtureOptions::default()
    };
    options.daemon.env = pki.sip_env();
    if mutual_tls {
        let ca = pki.path("ca.pem").display().to_string();
        options
            .daemon
            .env
            .push(("SWITCHBOARD_SIP_TLS_CLIENT_CA".into(), ca));
    }
    let fixture = Fixture::start(options).await;
    let tls_addr = fixture.daemon.sip_tls.expect("TLS listener");
    Some((fixture, pki, tls_addr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_over_tls_are_answered_and_hung_up_on_the_same_connection() {
    let agent = AgentBehaviour {
        hang_up_after: Some(Duration::from_secs(2)),
        ..AgentBehaviour::default()
    };
    let Some((fixture, pki, tls_addr)) = tls_fixture(agent, false).await else {
        return;
    };
    let mut tls = tls_connect(&pki.connector(false), tls_addr)
        .await
        .expect("TLS handshake");
    let mut ua = TlsCaller::on(&tls, tls_addr);
    let mut reader = SipReader::default();

    // OPTIONS keep-alive.
    send(&mut tls, &ua.options()).await;
    let answer = reader.next(&mut tls).await.expect("OPTIONS answer");
    assert_eq!(status(&answer), Some(200), "{answer}");
    assert!(
        header(&answer, "Via").unwrap().starts_with("SIP/2.0/TLS"),
        "{answer}"
    );

    // Call 1: we hang up. Ringing and the answer carry a sips: Contact with transport=tls.
    let rtp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let invite = ua.invite("tls-call-1", rtp.local_addr().unwrap().port());
    send(&mut tls, &invite).await;
    let mut ringing = reader.next(&mut tls).await.expect("provisional");
    while status(&ringing) == Some(100) {
        ringing = reader.next(&mut tls).await.expect("180");
    }
    assert_eq!(status(&ringing), Some(180), "{ringing}");
    let contact = header(&ringing, "Contact").unwrap();
    assert!(contact.starts_with("<sips:"), "{contact}");
    assert!(
        contact.contains(&format!("{tls_addr};transport=tls")),
        "{contact}"
    );
    let ok = reader.next_final(&mut tls).await.expect("200");
    assert_eq!(
        status(&ok),
        Some(200),
        "{ok}\n{}",
        tail(&fixture.daemon.log(), 40)
    );
    assert!(ok.contains("m=audio "), "{ok}");
    send(&mut tls, &ua.in_dialog("ACK", &invite, &ok)).await;
    send(&mut tls, &ua.in_dialog("BYE", &invite, &ok)).await;
    let bye_ok = reader.next_final(&mut tls).await.expect("200 to BYE");
    assert_eq!(status(&bye_ok), Some(200), "{bye_ok}");
    assert!(
        header(&bye_ok, "CSeq").unwrap().ends_with("BYE"),
        "{bye_ok}"
    );

    // Call 2: the agent hangs up after 2 s; the daemon's BYE comes over this TLS connection.
    let invite = ua.invite("tls-call-2", rtp.local_addr().unwrap().port());
    send(&mut tls, &invite).await;
    let ok = reader.next_final(&mut tls).await.expect("200");
    assert_eq!(status(&ok), Some(200), "{ok}");
    send(&mut tls, &ua.in_dialog("ACK", &invite, &ok)).await;
    let bye = reader.next(&mut tls).await.expect("the daemon's BYE");
    assert!(bye.starts_with("BYE sips:carrier@"), "{bye}");
    assert!(
        header(&bye, "Via").unwrap().starts_with("SIP/2.0/TLS"),
        "{bye}"
    );
    assert_eq!(header(&bye, "Call-ID"), Some("tls-call-2"), "{bye}");
    send(&mut tls, &ok_for(&bye)).await;

    let metrics = fixture.daemon.admin().metrics().unwrap();
    assert_eq!(
        metric(&metrics, "switchboard_sip_calls_answered_total", ""),
        2.0
    );
    assert_eq!(fixture.agent.calls().len(), 2);

    // Python's ssl module, as the SRTP caller script will use it, gets its OPTIONS answered.
    if !tool_missing("python3", "the Python ssl client check") {
        let reply = python_ssl_options(&pki.path("ca.pem"), tls_addr).expect("python ssl client");
        assert!(reply.starts_with("SIP/2.0 200"), "{reply}");
    }
}

/// Sends one OPTIONS with Python's `ssl` module (verifying against `ca`); returns the reply.
fn python_ssl_options(ca: &Path, addr: std::net::SocketAddr) -> anyhow::Result<String> {
    let script = r#"
import socket, ssl, sys
ca, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
ctx = ssl.create_default_context(cafile=ca)
with socket.create_connection((host, port), timeout=10) as raw:
    with ctx.wrap_socket(raw, server_hostname=host) as s:
        lhost, lport = s.getsockname()[:2]
        s.sendall((f"OPTIONS sip:{host}:{port};transport=tls SIP/2.0\r\n"
                   f"Via: SIP/2.0/TLS {lhost}:{lport};branch=z9hG4bKpy1\r\n"
                   f"From: <sip:py@{lhost}>;tag=py\r\nTo: <sip:{host}>\r\n"
                   f"Call-ID: py-options\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
                   f"Content-Length: 0\r\n\r\n").encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        print(data.decode(errors="replace"))
"#;
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(ca)
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string())
        .output()?;
    if !out.status.success() {
        bail!("python3: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_failed_handshakes_on_the_tls_port_are_closed_and_udp_keeps_serving() {
    let Some((fixture, pki, tls_addr)) = tls_fixture(AgentBehaviour::default(), false).await else {
        return;
    };

    // Plain SIP (and random bytes) on the TLS port: the connection is closed, no answer.
    for garbage in [
        b"OPTIONS sip:x SIP/2.0\r\nContent-Length: 0\r\n\r\n".to_vec(),
        (0u8..=255).cycle().take(4096).collect(),
    ] {
        let mut tcp = TcpStream::connect(tls_addr).await.unwrap();
        let _ = tcp.write_all(&garbage).await;
        let mut buf = Vec::new();
        let read = tokio::time::timeout(WAIT, tcp.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "the daemon must close a garbage connection");
        assert!(
            !String::from_utf8_lossy(&buf).contains("SIP/2.0"),
            "{buf:?}"
        );
    }
    // A source no connection allows (127.0.0.2) is closed at accept, before any handshake:
    // it counts as an untrusted drop, not as a handshake failure.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let stranger_tcp = socket.connect(tls_addr).await.unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap().to_owned();
    let refused = pki.connector(false).connect(name, stranger_tcp).await;
    assert!(refused.is_err(), "an untrusted source got a TLS session");
    let metrics = fixture.daemon.admin().metrics().unwrap();
    assert!(
        metric(
            &metrics,
            "switchboard_sip_dropped_total",
            "reason=\"untrusted\""
        ) >= 1.0,
        "{metrics}"
    );
    // A client that does not trust the server's certificate aborts the handshake.
    let stranger = Pki::new().unwrap();
    assert!(tls_connect(&stranger.connector(false), tls_addr)
        .await
        .is_err());

    // The server counts the failure when it sees the client's alert: poll briefly.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let metrics = fixture.daemon.admin().metrics().unwrap();
        let failures = metric(
            &metrics,
            "switchboard_sip_tls_handshake_failures_total",
            "reason=\"error\"",
        );
        if failures >= 3.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{failures}\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(fixture.daemon.log().contains("SIP TLS handshake failed"));

    // The daemon still serves: a TLS OPTIONS, and a routed call over UDP.
    let mut tls = tls_connect(&pki.connector(false), tls_addr).await.unwrap();
    assert_options_answered(&mut tls, tls_addr).await;
    if !sipp_missing() {
        expect_sipp_ok(
            &fixture.daemon,
            Sipp::new("uac_call.xml", fixture.daemon.sip_udp),
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_rejects_a_client_without_a_certificate() {
    let Some((fixture, pki, tls_addr)) = tls_fixture(AgentBehaviour::default(), true).await else {
        return;
    };

    // Without a certificate: TLS 1.3 lets the client finish first; the server's alert then
    // ends the connection before any SIP answer.
    let refused = async {
        let mut tls = tls_connect(&pki.connector(false), tls_addr).await?;
        tls.write_all(TlsCaller::on(&tls, tls_addr).options().as_bytes())
            .await?;
        SipReader::default().next(&mut tls).await
    }
    .await;
    assert!(
        refused.is_err(),
        "answered without a client certificate: {refused:?}"
    );

    // With the CA-signed client certificate: answered.
    let mut tls = tls_connect(&pki.connector(true), tls_addr).await.unwrap();
    assert_options_answered(&mut tls, tls_addr).await;
    let metrics = fixture.daemon.admin().metrics().unwrap();
    assert!(
        metric(
            &metrics,
            "switchboard_sip_tls_handshake_failures_total",
            "reason=\"error\""
        ) >= 1.0,
        "{metrics}"
    );
}

fn served_leaf(tls: &TlsStream<TcpStream>) -> Vec<u8> {
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn file_leaf(path: &Path) -> Vec<u8> {
    CertificateDer::pem_file_iter(path)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

async fn wait_for_log(daemon: &Daemon, needle: &str, count: usize) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while daemon.log().matches(needle).count() < count {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {needle:?} in the log:\n{}",
            tail(&daemon.log(), 30)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn sighup(daemon: &Daemon) {
    let status = Command::new("kill")
        .args(["-HUP", &daemon.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_swaps_the_certificate_without_dropping_connections() {
    let Some((fixture, pki, tls_addr)) = tls_fixture(AgentBehaviour::default(), false).await else {
        return;
    };
    let connector = pki.connector(false);
    let mut old = tls_connect(&connector, tls_addr).await.unwrap();
    let first = file_leaf(&pki.path("server.pem"));
    assert_eq!(served_leaf(&old), first);

    // A broken renewal (a key that does not match) keeps the old certificate.
    std::fs::copy(pki.path("client.key"), pki.path("server.key")).unwrap();
    sighup(&fixture.daemon);
    wait_for_log(&fixture.daemon, "TLS certificate reload failed", 1).await;
    let still = tls_connect(&connector, tls_addr).await.unwrap();
    assert_eq!(served_leaf(&still), first);

    // A good renewal (serial 1002) is served to new connections.
    pki.leaf(
        "server",
        1002,
        "serverAuth",
        "subjectAltName=IP:127.0.0.1,DNS:localhost",
    )
    .unwrap();
    let second = file_leaf(&pki.path("server.pem"));
    assert_ne!(first, second);
    sighup(&fixture.daemon);
    wait_for_log(&fixture.daemon, "TLS certificate reloaded", 1).await;
    let new = tls_connect(&connector, tls_addr).await.unwrap();
    assert_eq!(served_leaf(&new), second);

    // The connection made before the reload still carries SIP.
    assert_options_answered(&mut old, tls_addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_over_https() {
    if openssl_missing() {
        return;
    }
    let pki = Pki::new().expect("test PKI");
    let options = DaemonOptions {
        env: vec![
            (
                "SWITCHBOARD_ADMIN_TLS_CERT".into(),
                pki.path("server.pem").display().to_string(),
            ),
            (
                "SWITCHBOARD_ADMIN_TLS_KEY".into(),
                pki.path("server.key").display().to_string(),
            ),
        ],
        ..DaemonOptions::default()
    };
    let daemon = tokio::task::spawn_blocking(move || Daemon::start(&options))
        .await
        .unwrap()
        .expect("daemon starts");
    let mut tls = tls_connect(&pki.connector(false), daemon.admin)
        .await
        .unwrap();
    tls.write_all(
        format!("GET /v1/orgs/{ORG}/workspaces/{WORKSPACE}/connections HTTP/1.1\r\nHost: x\r\nX-API-Key: {API_KEY}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut body = Vec::new();
    let _ = tokio::time::timeout(WAIT, tls.read_to_end(&mut body)).await;
    let body = String::from_utf8_lossy(&body);
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");

    // Plain HTTP on the HTTPS port gets no HTTP answer.
    let mut plain = TcpStream::connect(daemon.admin).await.unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(WAIT, plain.read_to_end(&mut buf)).await;
    assert!(
        !String::from_utf8_lossy(&buf).contains("HTTP/1.1 200"),
        "{buf:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_without_tls_is_harmless() {
    let mut daemon = tokio::task::spawn_blocking(|| Daemon::start(&DaemonOptions::default()))
        .await
        .unwrap()
        .expect("daemon starts");
    sighup(&daemon);
    wait_for_log(&daemon, "nothing to reload", 1).await;
    assert!(daemon.is_running(), "{}", tail(&daemon.log(), 20));
}
