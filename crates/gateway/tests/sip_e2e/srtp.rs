//! SRTP (SDES) and `wss://` agents end to end: a Python caller speaking SRTP through libsrtp
//! (`pylibsrtp`) and a Python `websockets` agent over TLS with a certificate from a CA made at
//! test time (`tests/srtp/`). Needs the venv `tests/run.sh` makes (`SRTP_VENV`, default
//! `/tmp/srtp-venv`, with pylibsrtp and websockets) and the openssl CLI: without them the tests
//! print a notice and pass, unless `CI` is set, where they fail.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

use super::harness::*;
use super::wait_for_metric;

/// The number the `wss://` agent's deployment owns.
const SECURE_NUMBER: &str = "+918047168010";
/// Frames the Python agent plays back on `start` (tests/srtp/agent.py `--frames`).
const AGENT_FRAMES: u64 = 25;

fn scripts() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/srtp")
}

/// The venv's python when it has pylibsrtp and websockets; `None` (after a notice) to skip.
fn python() -> Option<PathBuf> {
    let venv = std::env::var_os("SRTP_VENV").map_or_else(|| "/tmp/srtp-venv".into(), PathBuf::from);
    let python = venv.join("bin/python");
    let usable = Command::new(&python)
        .args(["-c", "import pylibsrtp, websockets"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if usable && !tool_missing("openssl", "the test CA for the wss agent") {
        return Some(python);
    }
    if usable {
        return None;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{} lacks pylibsrtp/websockets in CI (tests/run.sh makes it)",
        venv.display()
    );
    eprintln!(
        "skipped: no SRTP venv at {} (tests/run.sh makes it: python3 -m venv; pip install pylibsrtp websockets)",
        venv.display()
    );
    None
}

/// tests/srtp/agent.py: a trusted and an untrusted wss listener; killed on drop.
struct PyAgent {
    child: Child,
    dir: tempfile::TempDir,
    trusted: u16,
    untrusted: u16,
}

impl PyAgent {
    fn start(python: &Path) -> PyAgent {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut child = Command::new(python)
            .arg(scripts().join("agent.py"))
            .arg(dir.path())
            .arg("--frames")
            .arg(AGENT_FRAMES.to_string())
            .stdin(Stdio::null())
            .spawn()
            .expect("spawning agent.py");
        let ports_file = dir.path().join("ports.json");
        let deadline = Instant::now() + Duration::from_secs(20);
        let ports: Value = loop {
            if let Ok(text) = std::fs::read_to_string(&ports_file) {
                break serde_json::from_str(&text).expect("ports.json");
            }
            if Instant::now() > deadline || !matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
                panic!("agent.py did not start");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let port = |k: &str| ports[k].as_u64().expect("port") as u16;
        PyAgent {
            trusted: port("trusted"),
            untrusted: port("untrusted"),
            child,
            dir,
        }
    }

    fn ca_file(&self) -> String {
        self.dir.path().join("ca.pem").display().to_string()
    }

    /// Every event the agent received so far, over all calls.
    fn events(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.path().join("events.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits until `count` calls have sent `stop`; returns the events.
    fn events_after_stops(&self, count: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let events = self.events();
            let stops = events.iter().filter(|e| e["event"] == "stop").count();
            if stops >= count || Instant::now() > deadline {
                return events;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for PyAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs tests/srtp/caller.py against the daemon's SIP `target`; returns its report, with
/// the audio it sent (`sent_payload_b64`) taken out to keep assertion messages short.
fn call(python: &Path, target: std::net::SocketAddr, transport: &str, args: &[&str]) -> Value {
    let (report, _) = call_with_audio(python, target, transport, args);
    report
}

fn call_with_audio(
    python: &Path,
    target: std::net::SocketAddr,
    transport: &str,
    args: &[&str],
) -> (Value, Vec<u8>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let report = dir.path().join("report.json");
    let out = Command::new(python)
        .arg(scripts().join("caller.py"))
        .args(["--target", &target.to_string(), "--transport", transport])
        .arg("--report")
        .arg(&report)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running caller.py");
    assert!(
        out.status.success(),
        "caller.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut report: Value =
        serde_json::from_str(&std::fs::read_to_string(&report).expect("report"))
            .expect("report JSON");
    let sent = report
        .as_object_mut()
        .and_then(|r| r.remove("sent_payload_b64"))
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let sent = base64::engine::general_purpose::STANDARD
        .decode(sent)
        .expect("base64");
    (report, sent)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("thread")
}

/// A fixture whose daemon trusts the Python agent's test CA, with a deployment of the agent's
/// trusted `wss://localhost` listener on [`SECURE_NUMBER`].
async fn secure_fixture(agent: &PyAgent) -> Fixture {
    secure_fixture_with(agent, Vec::new()).await
}

/// [`secure_fixture`] with more daemon environment (e.g. the SIP TLS listener's).
async fn secure_fixture_with(agent: &PyAgent, mut env: Vec<(String, String)>) -> Fixture {
    env.push(("SWITCHBOARD_MEDIA_AGENT_CA_FILE".into(), agent.ca_file()));
    let fixture = Fixture::start(FixtureOptions {
        daemon: DaemonOptions {
            env,
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let admin = fixture.daemon.admin();
    let url = format!("wss://localhost:{}/media", agent.trusted);
    let seeded = blocking(move || -> anyhow::Result<()> {
        admin.put_app_version("secure-agent", 1, &url, true)?;
        admin.create_deployment("Secure line", "secure-agent", 1, &[SECURE_NUMBER], None)?;
        Ok(())
    })
    .await;
    if let Err(e) = seeded {
        panic!("{e:#}\n{}", tail(&fixture.daemon.log(), 60));
    }
    fixture
}

fn set_media_encryption(admin: Admin, policy: &str) {
    let body = json!({ "allowed_addresses": ["127.0.0.1/32"], "media_encryption": policy });
    let stored = admin
        .ok(
            "PUT",
            &Admin::scoped(&format!("/connections/{CONNECTION}")),
            &body,
        )
        .expect("PUT connection");
    assert_eq!(stored["media_encryption"], policy, "{stored}");
}

/// The agent's audio came back to the caller: every frame in order, decryptable with the key
/// in our answer, and none of it in the clear on the wire.
fn assert_agent_audio_came_back(report: &Value) {
    let back: Vec<u64> = report["agent_frames_back"]
        .as_array()
        .expect("frames")
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    assert_eq!(back, (0..AGENT_FRAMES).collect::<Vec<_>>(), "{report}");
    assert_eq!(report["undecryptable"], 0, "{report}");
    assert_eq!(report["clear_agent_audio_on_wire"], false, "{report}");
}

/// The first call's `start` event.
fn first_start(events: &[Value]) -> &Value {
    events
        .iter()
        .find(|e| e["event"] == "start")
        .expect("start")
}

fn media_payloads(events: &[Value], stream_sid: &str) -> Vec<u8> {
    events
        .iter()
        .filter(|e| e["event"] == "media" && e["streamSid"] == stream_sid)
        .flat_map(|e| {
            base64::engine::general_purpose::STANDARD
                .decode(e["media"]["payload"].as_str().unwrap_or_default())
                .expect("base64")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srtp_caller_reaches_a_wss_agent_bit_exact_and_hears_it_back_encrypted() {
    let Some(python) = python() else { return };
    let agent = PyAgent::start(&python);
    let fixture = secure_fixture(&agent).await;
    let admin = fixture.daemon.admin();
    let target = fixture.daemon.sip_udp;

    let py = python.clone();
    let (report, sent) =
        blocking(move || call_with_audio(&py, target, "udp", &["--number", SECURE_NUMBER])).await;
    let log = || tail(&fixture.daemon.log(), 60);
    assert_eq!(report["status"], 200, "{report}\n{}", log());
    assert_eq!(report["answer_proto"], "RTP/SAVP", "{report}");
    assert_eq!(
        report["answer_suite"], "AES_CM_128_HMAC_SHA1_80",
        "{report}"
    );
    assert_eq!(
        report["keys_differ"], true,
        "our answer must carry our own key"
    );
    assert_eq!(report["bye_status"], 200, "{report}");
    // The agent's audio came back, every frame in order, decryptable with the answer's key;
    // nothing on the wire was undecryptable or in the clear.
    assert_agent_audio_came_back(&report);

    // The caller's audio reached the agent bit-exact: the replayed and the forged packet
    // were dropped, not delivered.
    let events = agent.events_after_stops(1);
    let start = first_start(&events);
    assert_eq!(
        start["start"]["customParameters"]["to_number"],
        SECURE_NUMBER
    );
    let stream_sid = start["streamSid"].as_str().expect("streamSid");
    let heard = media_payloads(&events, stream_sid);
    assert_eq!(heard.len(), sent.len(), "bytes at the agent");
    assert!(
        heard == sent,
        "the agent heard something else than was sent"
    );

    for (reason, count) in [("srtp_replay", 1.0), ("srtp_auth", 1.0)] {
        let label = format!("reason=\"{reason}\"");
        assert!(
            wait_for_metric(&admin, "switchboard_rtp_dropped_total", &label, count).await,
            "{reason}: {}",
            admin.metrics().unwrap_or_default()
        );
    }

    // The 32-bit-tag suite, SIP over TCP this time, offered after one we do not take.
    let py = python.clone();
    let tcp = fixture.daemon.sip_tcp;
    let report = blocking(move || {
        call(
            &py,
            tcp,
            "tcp",
            &[
                "--number",
                SECURE_NUMBER,
                "--suite",
                "AEAD_AES_256_GCM",
                "--suite",
                "AES_CM_128_HMAC_SHA1_32",
            ],
        )
    })
    .await;
    assert_eq!(report["status"], 200, "{report}\n{}", log());
    assert_eq!(
        report["answer_suite"], "AES_CM_128_HMAC_SHA1_32",
        "{report}"
    );
    assert_eq!(report["answer_tag"], 2, "{report}");
    assert_eq!(
        report["agent_frames_back"].as_array().map(Vec::len),
        Some(AGENT_FRAMES as usize),
        "{report}"
    );
    assert_eq!(report["undecryptable"], 0, "{report}");
}

/// Issue 11's whole path at once: SIP over TLS from Python's `ssl` module (verifying our
/// certificate), SRTP media through libsrtp, and a `wss://` agent trusted through
/// `agent_ca_file`: audio bit-exact both ways and nothing in the clear on the wire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_signalling_with_srtp_media_reaches_a_wss_agent_bit_exact() {
    let Some(python) = python() else { return };
    let pki = super::tls::Pki::new().expect("test PKI");
    let agent = PyAgent::start(&python);
    let fixture = secure_fixture_with(&agent, pki.sip_env()).await;
    let target = fixture.daemon.sip_tls.expect("TLS listener");
    let ca = pki.path("ca.pem").display().to_string();

    let py = python.clone();
    let (report, sent) = blocking(move || {
        call_with_audio(
            &py,
            target,
            "tls",
            &[
                "--number",
                SECURE_NUMBER,
                "--ca",
                &ca,
                "--server-name",
                "localhost",
            ],
        )
    })
    .await;
    let log = || tail(&fixture.daemon.log(), 60);
    assert_eq!(report["status"], 200, "{report}\n{}", log());
    assert_eq!(report["answer_proto"], "RTP/SAVP", "{report}");
    assert_eq!(report["bye_status"], 200, "{report}");
    assert_agent_audio_came_back(&report);

    let events = agent.events_after_stops(1);
    let start = first_start(&events);
    let stream_sid = start["streamSid"].as_str().expect("streamSid");
    let heard = media_payloads(&events, stream_sid);
    assert!(
        !heard.is_empty() && heard == sent,
        "the wss agent heard {} bytes, the caller sent {}",
        heard.len(),
        sent.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_encryption_policy_unknown_suites_and_bad_crypto_lines_are_refused_clearly() {
    let Some(python) = python() else { return };
    let fixture = Fixture::start(FixtureOptions::default()).await;
    let admin = fixture.daemon.admin();
    let target = fixture.daemon.sip_udp;
    let attempt = |policy: &'static str, args: &'static [&'static str]| {
        let python = python.clone();
        blocking(move || {
            set_media_encryption(admin, policy);
            let mut all = vec!["--number", CALLED, "--frames", "5"];
            all.extend_from_slice(args);
            call(&python, target, "udp", &all)
        })
    };
    let warning = |report: &Value| report["warning"].to_string();

    let r = attempt("require", &["--offer", "plain"]).await;
    assert_eq!(r["status"], 488, "{r}");
    assert!(
        warning(&r).contains("305 switchboard") && warning(&r).contains("requires SRTP"),
        "{r}"
    );

    let r = attempt("disable", &[]).await;
    assert_eq!(r["status"], 488, "{r}");
    assert!(
        warning(&r).contains("305 switchboard") && warning(&r).contains("plain RTP only"),
        "{r}"
    );

    let r = attempt("allow", &["--suite", "AEAD_AES_256_GCM"]).await;
    assert_eq!(r["status"], 488, "{r}");
    assert!(
        warning(&r).contains("305 switchboard") && warning(&r).contains("AEAD_AES_256_GCM"),
        "{r}"
    );

    let r = attempt(
        "allow",
        &[
            "--suite",
            "NO_SUCH_SUITE",
            "--crypto-line",
            "7 AES_CM_128_HMAC_SHA1_80 inline:c2hvcnQ=",
        ],
    )
    .await;
    assert_eq!(r["status"], 400, "{r}");
    assert!(warning(&r).contains("a=crypto"), "{r}");

    // The daemon keeps serving: the same trunk takes a plain call and an SRTP call.
    let r = attempt("allow", &["--offer", "plain"]).await;
    assert_eq!(
        (r["status"].clone(), r["bye_status"].clone()),
        (json!(200), json!(200)),
        "{r}"
    );
    let r = attempt("require", &[]).await;
    assert_eq!(r["status"], 200, "{r}");
    assert_eq!(r["answer_proto"], "RTP/SAVP", "{r}");

    // The API validates the field and stored connections without it read as "allow".
    let path = Admin::scoped(&format!("/connections/{CONNECTION}"));
    let bad = blocking(move || {
        admin.json(
            "PUT",
            &path,
            &json!({ "allowed_addresses": ["127.0.0.1/32"], "media_encryption": "sometimes" }),
        )
    })
    .await
    .expect("PUT");
    assert_eq!(bad.status, 422, "{}", bad.body);
    assert_eq!(
        bad.json()["detail"][0]["loc"],
        json!(["body", "media_encryption"])
    );
    let fresh = blocking(move || {
        admin.put_connection("conn-plain", &["127.0.0.9/32"], None)?;
        admin.get(&Admin::scoped("/connections/conn-plain"))
    })
    .await
    .expect("GET");
    assert_eq!(fresh.json()["media_encryption"], "allow", "{}", fresh.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_or_misnamed_agent_certificate_makes_the_runtime_error_with_the_reason() {
    let Some(python) = python() else { return };
    let agent = PyAgent::start(&python);
    let fixture = secure_fixture(&agent).await;
    let admin = fixture.daemon.admin();
    let cases = [
        (
            "rogue-ca",
            format!("wss://localhost:{}/media", agent.untrusted),
            "issuer",
        ),
        (
            "wrong-name",
            format!("wss://127.0.0.1:{}/media", agent.trusted),
            "name",
        ),
    ];
    for (app, url, why) in cases {
        let path = Admin::scoped(&format!("/apps/{app}/versions/1"));
        let version = blocking(move || {
            admin.put_app_version(app, 1, &url, false)?;
            admin.get(&path)
        })
        .await
        .expect("version");
        let v = version.json();
        assert_eq!(v["status"], "error", "{v}");
        let detail = v["status_detail"]
            .as_str()
            .unwrap_or_default()
            .to_lowercase();
        assert!(
            detail.contains("certificate") && detail.contains(why),
            "{app}: {v}"
        );
    }
    let log = fixture.daemon.log();
    assert!(
        log.contains("runtime status changed to error") && log.contains("rogue-ca"),
        "no log line for the failed runtime:\n{}",
        tail(&log, 40)
    );
    // A call to it gets what any failed runtime gets: 503.
    let number = "+918047168011";
    let target = fixture.daemon.sip_udp;
    let report = blocking(move || {
        admin.create_deployment("Rogue line", "rogue-ca", 1, &[number], None)?;
        anyhow::Ok(call(
            &python,
            target,
            "udp",
            &["--number", number, "--offer", "plain"],
        ))
    })
    .await
    .expect("seed");
    assert_eq!(report["status"], 503, "{report}");
    // The trusted runtime of the same daemon is still ready.
    assert_eq!(
        blocking(move || admin.get(&Admin::scoped("/apps/secure-agent/versions/1")))
            .await
            .expect("GET")
            .json()["status"],
        "ready"
    );
}
