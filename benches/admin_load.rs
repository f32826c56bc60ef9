//! Admin API load driver (not a criterion bench: it measures a running gateway end to end).
//!
//! Starts the gateway in-process on port 0 with a temporary SQLite file (synchronous=FULL, so
//! every write is an fsync), then:
//! 1. GET throughput: `GET /deployments/{id}` from N keep-alive connections for a fixed time.
//! 2. PATCH storm: 1,000 `PATCH {"app_version": …}` writes while a thread routes calls against
//!    the live table without pause; every lookup must be accepted (lookup errors must be 0).
//! 3. Cohort upload: a 1,000,000-row CSV streamed as multipart (generated on the fly by the
//!    client), timed until the cohort is `completed`.
//!
//! Run: `cargo bench -p switchboard-benches --bench admin_load`
//! Knobs (env): ADMIN_LOAD_CONNECTIONS (32), ADMIN_LOAD_GET_SECS (3), ADMIN_LOAD_PATCHES (1000),
//! ADMIN_LOAD_PATCH_CONCURRENCY (8), ADMIN_LOAD_COHORT_ROWS (1000000; 0 skips).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _, Result};
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use switchboard::config::{ApiKey, Config};

const KEY: &str = "load-key";
const BASE: &str = "/v1/orgs/load/workspaces/w";
const DEPLOYMENTS: usize = 100;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn number(i: usize) -> String {
    format!("+1415{:07}", 1_000_000 + i)
}

/// One keep-alive HTTP/1.1 connection.
struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Conn {
    async fn open(addr: std::net::SocketAddr) -> Result<Self> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        Ok(Self { sender })
    }

    async fn send(
        &mut self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Bytes)> {
        self.sender.ready().await?;
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "bench")
            .header("x-api-key", KEY);
        let bytes = match body {
            Some(b) => {
                req = req.header("content-type", "application/json");
                Bytes::from(b.to_string())
            }
            None => Bytes::new(),
        };
        let resp = self
            .sender
            .send_request(req.body(Full::new(bytes))?)
            .await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

/// A WebSocket server standing in for the agent runtime, so versions probe `ready`.
async fn fake_runtime() -> Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("ws://{}/media", listener.local_addr()?);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await {
                    use futures_util::StreamExt as _;
                    while let Some(Ok(_)) = ws.next().await {}
                }
            });
        }
    });
    Ok(url)
}

async fn setup(conn: &mut Conn, runtime_url: &str) -> Result<Vec<String>> {
    let (s, _) = conn
        .send(
            Method::PUT,
            &format!("{BASE}/connections/trunk"),
            Some(&json!({ "allowed_addresses": ["127.0.0.1/32"] })),
        )
        .await?;
    ensure!(s == StatusCode::OK, "connection: {s}");
    for v in [1, 2] {
        let (s, _) = conn
            .send(
                Method::PUT,
                &format!("{BASE}/apps/agent/versions/{v}"),
                Some(&json!({ "runtime_url": runtime_url })),
            )
            .await?;
        ensure!(s == StatusCode::OK, "app version: {s}");
        // Wait for the probe to mark it ready.
        for _ in 0..200 {
            let (_, body) = conn
                .send(
                    Method::GET,
                    &format!("{BASE}/apps/agent/versions/{v}"),
                    None,
                )
                .await?;
            if serde_json::from_slice::<Value>(&body)?["status"] == "ready" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let mut ids = Vec::with_capacity(DEPLOYMENTS);
    for i in 0..DEPLOYMENTS {
        let body = json!({
            "name": format!("load {i}"), "app_id": "agent", "app_version": 1,
            "connection_configs": [{ "connection_id": "trunk", "phone_numbers": [number(i)] }]
        });
        let (s, b) = conn
            .send(Method::POST, &format!("{BASE}/deployments"), Some(&body))
            .await?;
        ensure!(
            s == StatusCode::CREATED,
            "create: {s} {}",
            String::from_utf8_lossy(&b)
        );
        ids.push(
            serde_json::from_slice::<Value>(&b)?["deployment_id"]
                .as_str()
                .context("id")?
                .to_owned(),
        );
    }
    Ok(ids)
}

async fn get_throughput(addr: std::net::SocketAddr, ids: &[String]) -> Result<()> {
    let connections = env_num("ADMIN_LOAD_CONNECTIONS", 32) as usize;
    let secs = env_num("ADMIN_LOAD_GET_SECS", 3);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let errors = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for c in 0..connections {
        let ids = ids.to_vec();
        let errors = errors.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let Ok(mut conn) = Conn::open(addr).await else {
                return latencies;
            };
            let mut i = c;
            while Instant::now() < deadline {
                let path = format!("{BASE}/deployments/{}", ids[i % ids.len()]);
                let t = Instant::now();
                match conn.send(Method::GET, &path, None).await {
                    Ok((StatusCode::OK, _)) => latencies.push(t.elapsed()),
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                i += connections;
            }
            latencies
        }));
    }
    let started = Instant::now();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await?);
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_unstable();
    println!(
        "admin_load: GET /deployments/{{id}}: {connections} connections, {elapsed:.1} s, {} requests, {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, errors {}",
        all.len(),
        all.len() as f64 / elapsed,
        percentile(&all, 0.5),
        percentile(&all, 0.99),
        errors.load(Ordering::Relaxed)
    );
    Ok(())
}

async fn patch_storm(
    addr: std::net::SocketAddr,
    ids: &[String],
    state: &switchboard::state::AppState,
) -> Result<()> {
    let patches = env_num("ADMIN_LOAD_PATCHES", 1000) as usize;
    let concurrency = env_num("ADMIN_LOAD_PATCH_CONCURRENCY", 8) as usize;
    // The lookup thread: route calls to every deployment's number, without pause, until told.
    let stop = Arc::new(AtomicBool::new(false));
    let routing = state.routing.clone();
    let lookup = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let numbers: Vec<String> = (0..DEPLOYMENTS).map(number).collect();
            let (mut lookups, mut errors, mut versions) =
                (0u64, 0u64, std::collections::BTreeSet::new());
            let now = chrono::Utc::now();
            while !stop.load(Ordering::Relaxed) {
                for n in &numbers {
                    let snapshot = routing.load();
                    versions.insert(snapshot.version());
                    match snapshot.route(now, n, "+14155550000", "call") {
                        switchboard_routing::RouteDecision::Accept(r)
                            if matches!(r.app_version(), 1 | 2) => {}
                        _ => errors += 1,
                    }
                    lookups += 1;
                }
            }
            (lookups, errors, versions.len())
        })
    };
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (ids, next) = (ids.to_vec(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(addr).await?;
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= patches {
                    return Ok::<_, anyhow::Error>(latencies);
                }
                let body = json!({ "app_version": 1 + (i % 2) });
                let t = Instant::now();
                let (s, b) = conn
                    .send(
                        Method::PATCH,
                        &format!("{BASE}/deployments/{}", ids[i % ids.len()]),
                        Some(&body),
                    )
                    .await?;
                ensure!(
                    s == StatusCode::OK,
                    "patch: {s} {}",
                    String::from_utf8_lossy(&b)
                );
                latencies.push(t.elapsed());
            }
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let (lookups, errors, versions) = lookup
        .join()
        .map_err(|_| anyhow::anyhow!("lookup thread panicked"))?;
    all.sort_unstable();
    println!(
        "admin_load: PATCH storm: {} writes in {elapsed:.2} s = {:.0} writes/s (concurrency {concurrency}), p50 {:.2} ms, p99 {:.2} ms",
        all.len(),
        all.len() as f64 / elapsed,
        percentile(&all, 0.5),
        percentile(&all, 0.99)
    );
    println!(
        "admin_load: lookups during the storm: {lookups} ({:.2} M/s on one thread), lookup errors: {errors}, snapshot versions seen: {versions}",
        lookups as f64 / elapsed / 1e6
    );
    ensure!(
        errors == 0,
        "{errors} lookups failed during the PATCH storm"
    );
    Ok(())
}

/// Streams a generated CSV of `rows` rows as a multipart upload; the client never holds it.
async fn cohort_upload(addr: std::net::SocketAddr, deployment: &str, rows: u64) -> Result<()> {
    let boundary = "----admin-load-boundary";
    let mapping = r#"{"phone_number":{"column_name":"mobile"},"user_identifier":{"column_name":"customer_id","required":true},"app_variables":{"customer_name":{"column_name":"name"}},"app_overrides":{"initial_language_name":{"column_name":"language"}}}"#;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(8);
    let head = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\nload\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"cohort_transformation_file\"; filename=\"t.json\"\r\n\r\n{mapping}\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"cohort_file\"; filename=\"users.csv\"\r\nContent-Type: text/csv\r\n\r\n\
         customer_id,mobile,name,language\n"
    );
    let tail = format!("\r\n--{boundary}--\r\n");
    tokio::spawn(async move {
        let _ = tx.send(Ok(Frame::data(Bytes::from(head)))).await;
        let mut chunk = String::with_capacity(256 * 1024);
        for i in 0..rows {
            use std::fmt::Write as _;
            let _ = writeln!(chunk, "cust{i},+91 9{:09},Customer {i},Hindi", i);
            if chunk.len() > 240 * 1024
                && tx
                    .send(Ok(Frame::data(Bytes::from(std::mem::take(&mut chunk)))))
                    .await
                    .is_err()
            {
                return;
            }
        }
        chunk.push_str(&tail);
        let _ = tx.send(Ok(Frame::data(Bytes::from(chunk)))).await;
    });
    let body = StreamBody::new(tokio_stream_from(rx));
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = Request::post(format!("{BASE}/deployments/{deployment}/cohorts/upload"))
        .header("host", "bench")
        .header("x-api-key", KEY)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(body)?;
    let started = Instant::now();
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let body: Value = serde_json::from_slice(&resp.into_body().collect().await?.to_bytes())?;
    let elapsed = started.elapsed().as_secs_f64();
    ensure!(status == StatusCode::CREATED, "upload: {status} {body}");
    println!(
        "admin_load: cohort upload: {rows} rows in {elapsed:.2} s ({:.0} rows/s), status {}, valid {}, rejected {}",
        rows as f64 / elapsed,
        body["status"],
        body["result"]["valid_records"],
        body["result"]["rejected_records"]
    );
    Ok(())
}

/// Adapts an mpsc receiver to a `Stream` (no tokio-stream dependency needed).
fn tokio_stream_from<T>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// A `/proc/self/status` memory figure (`VmHWM:` peak, `VmRSS:` current) in MiB.
fn proc_mib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok());
    kib.unwrap_or(0) / 1024
}

fn main() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let dir = tempfile::tempdir()?;
        let mut config = Config::default();
        config.admin.listen = "127.0.0.1:0".parse()?;
        config.admin.api_keys = vec![ApiKey::new(KEY)];
        config.store.url = format!("sqlite://{}", dir.path().join("load.db").display());
        config.sip.udp = "127.0.0.1:0".parse()?;
        config.sip.tcp = "127.0.0.1:0".parse()?;
        let running = switchboard::start(config).await?;
        let addr = running.admin;
        let runtime_url = fake_runtime().await?;
        let mut conn = Conn::open(addr).await?;
        let ids = setup(&mut conn, &runtime_url).await?;
        get_throughput(addr, &ids).await?;
        patch_storm(addr, &ids, &running.state).await?;
        let rows = env_num("ADMIN_LOAD_COHORT_ROWS", 1_000_000);
        if rows > 0 {
            let before = proc_mib("VmRSS:");
            cohort_upload(addr, &ids[0], rows).await?;
            let members = running.state.routing.load().cohort_member_count();
            println!(
                "admin_load: memory (whole process): RSS before upload {before} MiB, peak {} MiB, RSS after {} MiB with {members} cohort members held by the routing snapshot",
                proc_mib("VmHWM:"),
                proc_mib("VmRSS:"),
            );
        }
        running.stop().await;
        Ok(())
    })
}
