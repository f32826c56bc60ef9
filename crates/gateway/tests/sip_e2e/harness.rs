//! What the SIP end-to-end tests run against: the real `switchboard` binary on port 0 with a
//! temporary SQLite store, its admin API (plain HTTP/1.1 over a TCP stream), a real WebSocket
//! agent runtime, and SIPp.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use futures_util::StreamExt as _;
use serde_json::{json, Value};

/// The org/workspace every test seeds into.
pub const ORG: &str = "org-test";
pub const WORKSPACE: &str = "ws-test";
/// Admin API key written into the daemon's config.
pub const API_KEY: &str = "sb-test-admin-key-0123456789";
/// The trunk's connection id and the number the test deployment owns.
pub const CONNECTION: &str = "conn-carrier";
pub const CALLED: &str = "+918047168000";
pub const CALLER: &str = "+919812345678";
pub const APP: &str = "support-agent";

/// How long to wait for the daemon's `listening` line.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long an app version may take to be probed `ready`.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// `../../../shared` beside the clone: the read-only reference material.
pub fn shared_dir() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared");
    dir.is_dir().then_some(dir)
}

/// `tests/sipp` of the repository.
pub fn scenario(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/sipp")
        .join(name)
}

/// Whether a required external tool may be missing: true (skip) outside CI, panic in CI.
pub fn tool_missing(tool: &str, why: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return false;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{tool} is required in CI ({why}) but was not found on PATH");
    }
    eprintln!("skipped: {tool} not found ({why}); install it to run this test");
    true
}

/// True (after printing a notice) when SIPp is missing and CI is unset.
pub fn sipp_missing() -> bool {
    tool_missing("sipp", "Debian package sip-tester")
}

/// Distinct port blocks per daemon so parallel tests never fight over RTP ports.
static NEXT_RTP_BLOCK: AtomicU16 = AtomicU16::new(0);

/// Knobs a test may turn on the daemon's configuration.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    pub rate_limit_per_second: u32,
    pub rate_limit_burst: u32,
    pub agent_connect_timeout_ms: u64,
    /// Address the SIP listeners bind (port 0): `127.0.0.1` or `[::1]`.
    pub sip_host: &'static str,
    /// RTP port pairs to configure (the range is chosen per daemon).
    pub rtp_pairs: u16,
    /// A fixed `[media] rtp_ports` instead of the per-daemon block (`rtp_pairs` is ignored):
    /// for a test that must know its call's port without sharing it with a parallel test.
    pub rtp_ports: Option<std::ops::RangeInclusive<u16>>,
    /// Extra `SWITCHBOARD_*` environment variables.
    pub env: Vec<(String, String)>,
}

impl Default for DaemonOptions {
    fn default() -> Self {
        Self {
            // The product defaults: a trusted trunk's bursts are never shed.
            rate_limit_per_second: 5_000,
            rate_limit_burst: 10_000,
            agent_connect_timeout_ms: 5_000,
            sip_host: "127.0.0.1",
            rtp_pairs: 100,
            rtp_ports: None,
            env: Vec::new(),
        }
    }
}

/// A running `switchboard` process, killed on drop.
#[derive(Debug)]
pub struct Daemon {
    child: Child,
    pub sip_udp: SocketAddr,
    pub sip_tcp: SocketAddr,
    /// The SIP over TLS listener, when the options' env set `SWITCHBOARD_SIP_TLS`.
    pub sip_tls: Option<SocketAddr>,
    pub admin: SocketAddr,
    /// The `[metrics] listen` address, when configured.
    #[allow(dead_code)] // ops_e2e
    pub metrics: Option<SocketAddr>,
    /// The configured `[media] rtp_ports` (with one pair, its first port is every call's).
    pub rtp_ports: std::ops::RangeInclusive<u16>,
    /// Holds the config and database until the daemon is dropped.
    _dir: tempfile::TempDir,
    log: PathBuf,
}

impl Daemon {
    pub fn start(options: &DaemonOptions) -> anyhow::Result<Daemon> {
        let dir = tempfile::tempdir()?;
        let block = NEXT_RTP_BLOCK.fetch_add(1, Ordering::Relaxed);
        // 200 ports per daemon, from a range per process so parallel test binaries differ too.
        let base = 30_000 + (std::process::id() % 50) as u16 * 400 + (block % 2) * 200;
        let rtp_ports = options
            .rtp_ports
            .clone()
            .unwrap_or(base..=base + options.rtp_pairs.clamp(1, 100) * 2 - 1);
        let config = format!(
            r#"
[sip]
udp = "{sip_host}:0"
tcp = "{sip_host}:0"
rate_limit_per_second = {rate}
rate_limit_burst = {burst}
nonce_ttl_secs = 60

[admin]
listen = "127.0.0.1:0"
api_keys = ["{API_KEY}"]

[store]
url = "sqlite://{db}"

[media]
rtp_ports = "{low}-{high}"
advertised_ip = "127.0.0.1"
timeout_secs = 60
agent_connect_timeout_ms = {connect}
"#,
            rate = options.rate_limit_per_second,
            burst = options.rate_limit_burst,
            db = dir.path().join("switchboard.db").display(),
            low = rtp_ports.start(),
            high = rtp_ports.end(),
            sip_host = options.sip_host,
            connect = options.agent_connect_timeout_ms,
        );
        let config_path = dir.path().join("switchboard.toml");
        std::fs::write(&config_path, config)?;
        let log = dir.path().join("switchboard.log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .arg("--config")
            .arg(&config_path)
            .current_dir(dir.path())
            .env("RUST_LOG", "info,switchboard=debug")
            .envs(options.env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("spawning switchboard")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.contains("\"listening\"") {
                    let _ = tx.send(line);
                }
            }
        });
        let line = match rx.recv_timeout(START_TIMEOUT) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                bail!("switchboard did not print its listening line; log:\n{log}");
            }
        };
        let v: Value = serde_json::from_str(&line).context("listening line is not JSON")?;
        let addr = |k: &str| -> anyhow::Result<SocketAddr> {
            v[k].as_str()
                .ok_or_else(|| anyhow!("listening line has no {k}: {line}"))?
                .parse()
                .with_context(|| format!("{k} in {line}"))
        };
        Ok(Daemon {
            sip_udp: addr("sip_udp")?,
            sip_tcp: addr("sip_tcp")?,
            sip_tls: addr("sip_tls").ok(),
            admin: addr("admin")?,
            metrics: addr("metrics").ok(),
            rtp_ports,
            child,
            _dir: dir,
            log,
        })
    }

    /// The daemon's process id (for /proc readings).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The daemon's log so far (stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// True while the process is running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends `signal` (`TERM`, `INT`, `KILL`) to the daemon.
    #[allow(dead_code)] // ops_e2e, scale_out
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args(["-s", signal, &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -s {signal} failed");
    }

    /// The daemon's exit status once it has exited, waiting up to `timeout`; `None` if it
    /// is still running then.
    #[allow(dead_code)] // ops_e2e, scale_out
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn admin(&self) -> Admin {
        Admin { addr: self.admin }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal admin API client (one request per connection).
#[derive(Debug, Clone, Copy)]
pub struct Admin {
    pub addr: SocketAddr,
}

/// An HTTP response: status and body.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub body: String,
}

impl HttpResponse {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

impl Admin {
    /// Sends one request; `headers` are extra lines (`Name: value`).
    pub fn request(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: &[u8],
        headers: &[String],
    ) -> anyhow::Result<HttpResponse> {
        let mut stream = TcpStream::connect(self.addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.addr,
            body.len()
        );
        if let Some(ct) = content_type {
            head.push_str(&format!("Content-Type: {ct}\r\n"));
        }
        for h in headers {
            head.push_str(h);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes())?;
        stream.write_all(body)?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw)?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("bad HTTP response: {text}"))?;
        let chunked = head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked");
        let body = if chunked {
            dechunk(body)
        } else {
            body.to_owned()
        };
        Ok(HttpResponse { status, body })
    }

    /// A JSON request with the admin key.
    pub fn json(&self, method: &str, path: &str, body: &Value) -> anyhow::Result<HttpResponse> {
        let body = serde_json::to_vec(body)?;
        self.request(
            method,
            path,
            Some("application/json"),
            &body,
            &[format!("X-API-Key: {API_KEY}")],
        )
    }

    pub fn get(&self, path: &str) -> anyhow::Result<HttpResponse> {
        self.request("GET", path, None, b"", &[format!("X-API-Key: {API_KEY}")])
    }

    /// A JSON request that must answer 2xx.
    pub fn ok(&self, method: &str, path: &str, body: &Value) -> anyhow::Result<Value> {
        let resp = self.json(method, path, body)?;
        if !(200..300).contains(&resp.status) {
            bail!("{method} {path} -> {}: {}", resp.status, resp.body);
        }
        Ok(resp.json())
    }

    /// Scope prefix of every workspace path.
    pub fn scoped(path: &str) -> String {
        format!("/v1/orgs/{ORG}/workspaces/{WORKSPACE}{path}")
    }

    /// Creates or replaces the trunk connection.
    pub fn put_connection(
        &self,
        id: &str,
        allowed: &[&str],
        digest: Option<(&str, &str)>,
    ) -> anyhow::Result<()> {
        let mut body = json!({ "allowed_addresses": allowed });
        if let Some((username, password)) = digest {
            body["digest"] = json!({ "username": username, "password": password });
        }
        self.ok("PUT", &Self::scoped(&format!("/connections/{id}")), &body)?;
        Ok(())
    }

    /// Registers an app version served at `runtime_url` and waits until it is probed ready
    /// (or, with `expect_ready == false`, until it has been probed at all).
    pub fn put_app_version(
        &self,
        app: &str,
        version: u32,
        runtime_url: &str,
        expect_ready: bool,
    ) -> anyhow::Result<()> {
        self.put_app_version_in(app, version, runtime_url, "twilio", expect_ready)
    }

    /// [`Admin::put_app_version`] with the agent's media `dialect` (`twilio`, `l16-16k`).
    pub fn put_app_version_in(
        &self,
        app: &str,
        version: u32,
        runtime_url: &str,
        dialect: &str,
        expect_ready: bool,
    ) -> anyhow::Result<()> {
        let path = Self::scoped(&format!("/apps/{app}/versions/{version}"));
        let body = json!({ "runtime_url": runtime_url, "dialect": dialect });
        self.ok("PUT", &path, &body)?;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let status = self.get(&path)?.json()["status"]
                .as_str()
                .unwrap_or("")
                .to_owned();
            match (status.as_str(), expect_ready) {
                ("ready", true) | ("error", false) => return Ok(()),
                _ if Instant::now() > deadline => {
                    bail!("app version {app}/{version} still {status:?} after {READY_TIMEOUT:?}")
                }
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Creates a deployment of `app` v`version` on `numbers`; returns its id.
    pub fn create_deployment(
        &self,
        name: &str,
        app: &str,
        version: u32,
        numbers: &[&str],
        inbound_config: Option<Value>,
    ) -> anyhow::Result<String> {
        let mut body = json!({
            "name": name,
            "app_id": app,
            "app_version": version,
            "connection_configs": [{ "connection_id": CONNECTION, "phone_numbers": numbers }],
        });
        if let Some(cfg) = inbound_config {
            body["inbound_config"] = cfg;
        }
        let created = self.ok("POST", &Self::scoped("/deployments"), &body)?;
        created["deployment_id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("no deployment_id in {created}"))
    }

    pub fn set_status(&self, deployment_id: &str, action: &str) -> anyhow::Result<()> {
        let path = Self::scoped(&format!("/deployments/{deployment_id}/status"));
        self.ok("PUT", &path, &json!({ "action": action }))?;
        Ok(())
    }

    /// The Prometheus page.
    pub fn metrics(&self) -> anyhow::Result<String> {
        Ok(self.request("GET", "/metrics", None, b"", &[])?.body)
    }
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].trim_start_matches("\r\n");
    }
    out
}

/// Reads one metric's value (sum over label sets matching `labels`, e.g. `code="404"`).
pub fn metric(page: &str, name: &str, labels: &str) -> f64 {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter(|l| labels.is_empty() || l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// What the agent runtime saw of one call.
#[derive(Debug, Default, Clone)]
pub struct AgentSession {
    /// Text frames received, in order.
    pub messages: Vec<Value>,
    /// The socket was closed by the gateway.
    pub closed: bool,
}

/// A real WebSocket server standing in for an agent runtime. Probes (connections that send
/// nothing) are tolerated; sessions are recorded.
#[derive(Debug, Clone)]
pub struct Agent {
    pub addr: SocketAddr,
    pub sessions: Arc<Mutex<Vec<AgentSession>>>,
}

/// How the agent behaves.
#[derive(Debug, Clone, Copy, Default)]
pub struct AgentBehaviour {
    /// Delay before completing every WebSocket handshake (holds a call in 180 Ringing).
    pub handshake_delay: Duration,
    /// Close the socket this long after the `start` event (agent hangs up).
    pub hang_up_after: Option<Duration>,
}

impl Agent {
    /// Starts the server on 127.0.0.1 (port 0) in the current tokio runtime.
    pub async fn start(behaviour: AgentBehaviour) -> anyhow::Result<Agent> {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let sessions: Arc<Mutex<Vec<AgentSession>>> = Arc::default();
        let recorded = Arc::clone(&sessions);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let recorded = Arc::clone(&recorded);
                tokio::spawn(serve_agent(stream, behaviour, recorded));
            }
        });
        Ok(Agent { addr, sessions })
    }

    pub fn url(&self) -> String {
        format!("ws://{}/agent", self.addr)
    }

    /// Sessions that got at least one message (i.e. calls, not probes).
    pub fn calls(&self) -> Vec<AgentSession> {
        self.sessions
            .lock()
            .map(|s| {
                s.iter()
                    .filter(|s| !s.messages.is_empty())
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }
}

async fn serve_agent(
    stream: tokio::net::TcpStream,
    behaviour: AgentBehaviour,
    recorded: Arc<Mutex<Vec<AgentSession>>>,
) {
    // A handshake delay holds the 180 Ringing phase open (CANCEL tests); probes see it too,
    // which only slows the status poll down.
    tokio::time::sleep(behaviour.handshake_delay).await;
    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    let index = {
        let Ok(mut all) = recorded.lock() else { return };
        all.push(AgentSession::default());
        all.len() - 1
    };
    let mut hang_up_at: Option<tokio::time::Instant> = None;
    loop {
        let hang_up = async {
            match hang_up_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = hang_up => {
                let _ = ws.close(None).await;
                break;
            }
            msg = ws.next() => match msg {
                Some(Ok(tokio_tungstenite::tungstenite::Message::Text(text))) => {
                    let value: Value = serde_json::from_str(text.as_str()).unwrap_or(Value::Null);
                    if value["event"] == "start" {
                        hang_up_at = behaviour.hang_up_after.map(|d| tokio::time::Instant::now() + d);
                    }
                    if let Ok(mut all) = recorded.lock() {
                        all[index].messages.push(value);
                    }
                }
                Some(Ok(tokio_tungstenite::tungstenite::Message::Close(_))) | None | Some(Err(_)) => {
                    if let Ok(mut all) = recorded.lock() {
                        all[index].closed = true;
                    }
                    break;
                }
                Some(Ok(_)) => {}
            }
        }
    }
}

/// Polls the agent's first call every 20 ms for up to 10 s until `found` picks something out
/// of it; panics with `what` and the sessions seen otherwise.
async fn wait_on_first_call<T>(
    agent: &Agent,
    what: &str,
    found: impl Fn(&AgentSession) -> Option<T>,
) -> T {
    for _ in 0..500 {
        if let Some(value) = agent.calls().first().and_then(&found) {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the agent's first call got no {what}: {:?}", agent.calls());
}

/// The agent's first call once its stream has ended with `stop` (within 10 s): the bridge
/// sends `stop` after the SIP side has ended, so a test that just saw SIPp finish waits here.
pub async fn first_call_stopped(agent: &Agent) -> AgentSession {
    wait_on_first_call(agent, "stop", |call| {
        call.messages
            .last()
            .is_some_and(|m| m["event"] == "stop")
            .then(|| call.clone())
    })
    .await
}

/// The `start` of the agent's first call (within 10 s).
pub async fn first_start(agent: &Agent) -> Value {
    wait_on_first_call(agent, "start event", |call| {
        call.messages
            .iter()
            .find(|m| m["event"] == "start")
            .map(|m| m["start"].clone())
    })
    .await
}

/// The `Authorization` header a Twilio SDK sends for `account_sid` with the admin key.
pub fn twilio_basic_auth(account_sid: &str) -> String {
    use base64::Engine as _;
    let token =
        base64::engine::general_purpose::STANDARD.encode(format!("{account_sid}:{API_KEY}"));
    format!("Authorization: Basic {token}")
}

/// Transport SIPp uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// One SIPp run.
#[derive(Debug, Clone)]
pub struct Sipp {
    pub scenario: PathBuf,
    pub target: SocketAddr,
    pub transport: Transport,
    pub local_ip: IpAddr,
    pub service: String,
    pub keys: BTreeMap<String, String>,
    pub calls: u32,
    /// Concurrent calls limit and rate (calls per second) for multi-call runs.
    pub rate: Option<u32>,
    pub extra: Vec<String>,
    pub timeout: Duration,
}

/// The outcome of a SIPp run, with its logs for failure messages.
#[derive(Debug)]
pub struct SippRun {
    pub success: bool,
    /// SIPp's cumulative `Retransmissions(C)` statistic (requests it had to resend).
    pub retransmissions: Option<u64>,
    pub report: String,
}

impl Sipp {
    pub fn new(scenario_file: &str, target: SocketAddr) -> Sipp {
        let mut keys = BTreeMap::new();
        keys.insert("caller".to_owned(), CALLER.to_owned());
        Sipp {
            scenario: scenario(scenario_file),
            target,
            transport: Transport::Udp,
            local_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            service: CALLED.to_owned(),
            keys,
            calls: 1,
            rate: None,
            extra: Vec::new(),
            timeout: Duration::from_secs(60),
        }
    }

    pub fn transport(mut self, t: Transport) -> Sipp {
        self.transport = t;
        self
    }

    pub fn service(mut self, number: &str) -> Sipp {
        self.service = number.to_owned();
        self
    }

    pub fn local_ip(mut self, ip: IpAddr) -> Sipp {
        self.local_ip = ip;
        self
    }

    pub fn arg(mut self, a: &str) -> Sipp {
        self.extra.push(a.to_owned());
        self
    }

    pub fn calls(mut self, n: u32, rate: u32) -> Sipp {
        self.calls = n;
        self.rate = Some(rate);
        self
    }

    /// Runs SIPp to completion (blocking; call from `spawn_blocking` in async tests).
    pub fn run(&self) -> anyhow::Result<SippRun> {
        let logs = tempfile::tempdir()?;
        let port = free_port(self.local_ip)?;
        let media_port = free_media_ports(self.local_ip)?;
        let errors = logs.path().join("errors.log");
        let messages = logs.path().join("messages.log");
        let stats = logs.path().join("stats.csv");
        let mut cmd = Command::new("sipp");
        cmd.arg(self.target.to_string())
            .arg("-sf")
            .arg(&self.scenario)
            .args(["-i", &self.local_ip.to_string()])
            .args(["-p", &port.to_string()])
            .args(["-mi", &self.local_ip.to_string()])
            .args(["-mp", &media_port.to_string()])
            .args([
                "-t",
                if self.transport == Transport::Udp {
                    "u1"
                } else {
                    "t1"
                },
            ])
            .args(["-s", &self.service])
            .args(["-m", &self.calls.to_string()])
            .args(["-timeout", &format!("{}s", self.timeout.as_secs())])
            .arg("-timeout_error")
            .arg("-nostdin")
            .arg("-trace_err")
            .arg("-error_file")
            .arg(&errors)
            .arg("-trace_msg")
            .arg("-message_file")
            .arg(&messages)
            .arg("-trace_stat")
            .arg("-stf")
            .arg(&stats);
        if let Some(rate) = self.rate {
            cmd.args(["-r", &rate.to_string()])
                .args(["-l", &rate.max(1).to_string()]);
        }
        for (k, v) in &self.keys {
            cmd.args(["-key", k, v]);
        }
        cmd.args(&self.extra);
        let output = cmd.stdin(Stdio::null()).output().context("running sipp")?;
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let tail: String = {
            let lines: Vec<&str> = stdout.lines().collect();
            lines[lines.len().saturating_sub(40)..].join("\n")
        };
        let mut msgs = read(&messages);
        if msgs.len() > 20_000 {
            msgs = msgs[msgs.len() - 20_000..].to_owned();
        }
        let report = format!(
            "sipp {:?} exit {:?}\n--- stdout (tail) ---\n{tail}\n--- stderr ---\n{}\n--- errors ---\n{}\n--- messages ---\n{msgs}",
            self.scenario.file_name().unwrap_or_default(),
            output.status.code(),
            String::from_utf8_lossy(&output.stderr),
            read(&errors),
        );
        Ok(SippRun {
            success: output.status.success(),
            retransmissions: cumulative_stat(&read(&stats), "Retransmissions(C)"),
            report,
        })
    }
}

/// The last value of `column` in SIPp's `;`-separated statistics file.
fn cumulative_stat(csv: &str, column: &str) -> Option<u64> {
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next()?.split(';').collect();
    let index = header.iter().position(|h| h.trim() == column)?;
    lines
        .rfind(|l| !l.trim().is_empty())?
        .split(';')
        .nth(index)?
        .trim()
        .parse()
        .ok()
}

/// A port free for both UDP and TCP on `ip` right now.
pub fn free_port(ip: IpAddr) -> anyhow::Result<u16> {
    for _ in 0..50 {
        let udp = UdpSocket::bind((ip, 0))?;
        let port = udp.local_addr()?.port();
        if std::net::TcpListener::bind((ip, port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port on {ip}")
}

/// A base port for SIPp's media sockets: SIPp binds audio RTP at the port and video RTP two
/// above it (RTCP one above each), so all four must be free, not just the first.
pub fn free_media_ports(ip: IpAddr) -> anyhow::Result<u16> {
    for _ in 0..50 {
        let first = UdpSocket::bind((ip, 0))?;
        let base = first.local_addr()?.port();
        if base > u16::MAX - 4 {
            continue;
        }
        let rest: Vec<_> = (1..4).map(|i| UdpSocket::bind((ip, base + i))).collect();
        if rest.iter().all(Result::is_ok) {
            return Ok(base);
        }
    }
    bail!("no four free consecutive UDP ports on {ip}")
}

/// Runs SIPp on a blocking thread and asserts success, printing the logs (and the daemon's)
/// on failure.
pub async fn expect_sipp_ok(daemon: &Daemon, sipp: Sipp) -> SippRun {
    let name = sipp.scenario.display().to_string();
    let run = tokio::task::spawn_blocking(move || sipp.run())
        .await
        .expect("sipp thread")
        .expect("sipp ran");
    assert!(
        run.success,
        "{name} failed\n{}\n--- switchboard log ---\n{}",
        run.report,
        tail(&daemon.log(), 150)
    );
    run
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A daemon with one trunk (allowlist 127.0.0.1/32, optional digest), one ready app version
/// served by `agent`, and one deployment owning [`CALLED`].
#[derive(Debug)]
pub struct Fixture {
    pub daemon: Daemon,
    pub agent: Agent,
    pub deployment_id: String,
}

/// Options for [`Fixture::start`].
#[derive(Debug, Clone, Default)]
pub struct FixtureOptions {
    pub daemon: DaemonOptions,
    pub agent: AgentBehaviour,
    pub digest: Option<(&'static str, &'static str)>,
    pub inbound_config: Option<Value>,
}

impl Fixture {
    pub async fn start(options: FixtureOptions) -> Fixture {
        let agent = Agent::start(options.agent).await.expect("agent server");
        let daemon_options = options.daemon.clone();
        let daemon = tokio::task::spawn_blocking(move || Daemon::start(&daemon_options))
            .await
            .expect("thread")
            .expect("daemon starts");
        let admin = daemon.admin();
        let url = agent.url();
        let digest = options.digest;
        let inbound = options.inbound_config.clone();
        let deployment_id = tokio::task::spawn_blocking(move || -> anyhow::Result<String> {
            admin.put_connection(CONNECTION, &["127.0.0.1/32", "::1/128"], digest)?;
            admin.put_app_version(APP, 1, &url, true)?;
            admin.create_deployment("Support line", APP, 1, &[CALLED], inbound)
        })
        .await
        .expect("thread");
        let deployment_id = match deployment_id {
            Ok(id) => id,
            Err(e) => panic!(
                "seeding failed: {e:#}\n--- switchboard log ---\n{}",
                tail(&daemon.log(), 80)
            ),
        };
        Fixture {
            daemon,
            agent,
            deployment_id,
        }
    }
}

/// Asserts each `(name, labels, value)` against the scraped `page` (as [`metric`] reads it),
/// reporting every mismatch at once with the page.
pub fn expect_metrics(page: &str, expected: &[(&str, &str, f64)]) {
    let wrong: Vec<String> = expected
        .iter()
        .filter_map(|&(name, labels, want)| {
            let got = metric(page, name, labels);
            (got != want).then(|| format!("{name}{{{labels}}} = {got}, expected {want}"))
        })
        .collect();
    assert!(wrong.is_empty(), "{}\n{page}", wrong.join("\n"));
}
