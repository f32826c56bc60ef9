//! Scale-out behind Kamailio (deploy/kamailio/kamailio.cfg, run as shipped): SIPp calls go
//! through Kamailio's dispatcher to two gateways sharing one PostgreSQL store; one gateway gets
//! SIGTERM mid-run; Kamailio sees its 503 to OPTIONS and sends the new calls to the other;
//! no call fails and the draining gateway's calls complete before it exits 0.
//!
//! Needs `sipp` and `kamailio` (skipped with a notice without them, outside CI) and PostgreSQL
//! (`eval "$(tests/pg.sh start)"` sets SWITCHBOARD_TEST_POSTGRES_URL); without PostgreSQL each
//! gateway gets its own SQLite store, seeded alike, and the test says so.

#[path = "sip_e2e/harness.rs"]
#[allow(dead_code)] // shared with sip_e2e, which uses the rest
mod harness;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use harness::*;

const CALLS: u32 = 40;
const RATE: u32 = 8;
/// Each call is held this long, so the SIGTERM finds the first gateway with calls up.
const HOLD: Duration = Duration::from_secs(4);
const GUARD: Duration = Duration::from_secs(60);

/// A fresh database beside the one `SWITCHBOARD_TEST_POSTGRES_URL` names (phone numbers are
/// global in a store, so this test must not share one).
fn fresh_postgres() -> Option<String> {
    let admin_url = std::env::var("SWITCHBOARD_TEST_POSTGRES_URL").ok()?;
    let name = format!(
        "sb_scale_out_{:x}",
        std::process::id() as u64 * 1_000_003 + rand_suffix()
    );
    let status = Command::new("psql")
        .arg(&admin_url)
        .args(["-qc", &format!("CREATE DATABASE {name}")])
        .status()
        .expect("psql runs");
    assert!(status.success(), "CREATE DATABASE {name} failed");
    // Keep the query (sslmode, sslrootcert): only the database name changes.
    let (path, query) = admin_url.split_once('?').unwrap_or((&admin_url, ""));
    let (base, _) = path.rsplit_once('/').expect("URL names a database");
    let query = if query.is_empty() {
        String::new()
    } else {
        format!("?{query}")
    };
    Some(format!("{base}/{name}{query}"))
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::from(d.subsec_nanos()))
}

/// Kamailio killed on drop.
struct Kamailio {
    child: Child,
    addr: SocketAddr,
    log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Kamailio {
    fn start(gateways: &[SocketAddr]) -> Kamailio {
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("dispatcher.list");
        let lines: String = gateways.iter().map(|g| format!("1 sip:{g}\n")).collect();
        std::fs::write(&list, lines).unwrap();
        let port = free_port(Ipv4Addr::LOCALHOST.into()).unwrap();
        let config =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/kamailio/kamailio.cfg");
        let log = dir.path().join("kamailio.log");
        let child = Command::new("kamailio")
            .arg("-f")
            .arg(config)
            .args([
                "-DD",
                "-E",
                "-n",
                "2",
                "-l",
                &format!("udp:127.0.0.1:{port}"),
            ])
            .arg("-Y")
            .arg(dir.path())
            .arg("-w")
            .arg(dir.path())
            .arg("-P")
            .arg(dir.path().join("kamailio.pid"))
            .args(["-A", &format!("DISPATCHER_LIST=\"{}\"", list.display())])
            .args(["-A", "PING_INTERVAL=1"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("kamailio starts");
        let mut kamailio = Kamailio {
            child,
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            log,
            _dir: dir,
        };
        // A config error stops it at once: fail with its log rather than wait for probes.
        std::thread::sleep(Duration::from_millis(500));
        if let Ok(Some(status)) = kamailio.child.try_wait() {
            panic!("kamailio exited ({status}):\n{}", kamailio.log());
        }
        kamailio
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn daemon_options(store_url: Option<&str>) -> DaemonOptions {
    let mut env = vec![(
        "SWITCHBOARD_SHUTDOWN_GRACE_PERIOD_SECS".to_owned(),
        "60".to_owned(),
    )];
    if let Some(url) = store_url {
        env.push(("SWITCHBOARD_STORE_URL".to_owned(), url.to_owned()));
    }
    DaemonOptions {
        env,
        ..DaemonOptions::default()
    }
}

fn seed(admin: Admin, agent_url: &str) -> anyhow::Result<()> {
    admin.put_connection(CONNECTION, &["127.0.0.1/32"], None)?;
    admin.put_app_version(APP, 1, agent_url, true)?;
    admin.create_deployment("Scale-out line", APP, 1, &[CALLED], None)?;
    Ok(())
}

async fn scrape(daemon: &Daemon) -> String {
    let admin = daemon.admin();
    tokio::task::spawn_blocking(move || admin.metrics().unwrap_or_default())
        .await
        .unwrap()
}

/// Polls `daemon`'s metrics until `check` holds.
async fn until_metric(daemon: &Daemon, what: &str, check: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + GUARD;
    loop {
        let page = scrape(daemon).await;
        if check(&page) {
            return page;
        }
        assert!(
            Instant::now() < deadline,
            "{what}\n{}",
            tail(&daemon.log(), 40)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_gateway_behind_kamailio_loses_no_call() {
    if sipp_missing() || tool_missing("kamailio", "Debian package kamailio") {
        return;
    }
    let store = fresh_postgres();
    if store.is_none() {
        eprintln!(
            "note: SWITCHBOARD_TEST_POSTGRES_URL not set; the two gateways get one SQLite store \
             each, seeded alike (eval \"$(tests/pg.sh start)\" for the shared PostgreSQL)"
        );
    }
    let agent = Agent::start(AgentBehaviour::default()).await.unwrap();
    let options = daemon_options(store.as_deref());
    let (a, b) = tokio::task::spawn_blocking(move || {
        (
            Daemon::start(&options).unwrap(),
            Daemon::start(&options).unwrap(),
        )
    })
    .await
    .unwrap();
    let url = agent.url();
    let (admin_a, admin_b, shared) = (a.admin(), b.admin(), store.is_some());
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        seed(admin_a, &url)?;
        if !shared {
            seed(admin_b, &url)?;
        }
        Ok(())
    })
    .await
    .unwrap()
    .expect("seeding");
    // With one store, B learns A's writes over LISTEN/NOTIFY.
    until_metric(&b, "B never loaded the number", |p| {
        metric(p, "switchboard_routing_numbers", "") >= 1.0
    })
    .await;
    let kamailio = Kamailio::start(&[a.sip_udp, b.sip_udp]);
    // Both gateways are probed (OPTIONS 200) before the calls start.
    until_metric(&a, "Kamailio never probed A", |p| {
        metric(p, "switchboard_sip_requests_total", "method=\"OPTIONS\"") >= 1.0
    })
    .await;

    let sipp = Sipp::new("uac_call.xml", kamailio.addr)
        .calls(CALLS, RATE)
        .arg("-l")
        .arg(&CALLS.to_string())
        .arg("-d")
        .arg(&HOLD.as_millis().to_string());
    let run = tokio::task::spawn_blocking(move || sipp.run().expect("sipp ran"));
    // Mid-run: A has answered a few calls and holds some of them when it gets SIGTERM.
    let before = until_metric(&a, "A answered no call", |p| {
        metric(p, "switchboard_sip_calls_answered_total", "") >= 3.0
    })
    .await;
    a.signal("TERM");
    let signalled = Instant::now();
    let live_at_sigterm = metric(&before, "switchboard_sip_calls_active", "");
    // A answers Kamailio's next probe with 503 while its calls go on.
    let draining = until_metric(&a, "A never answered 503", |p| {
        metric(p, "switchboard_sip_responses_total", "code=\"503\"") >= 1.0
    })
    .await;
    // A exits on its own once its last call has ended, while SIPp still runs on B.
    let mut a = a;
    let a_exit = tokio::task::spawn_blocking(move || {
        let status = a.wait_exit(GUARD);
        (status, signalled.elapsed(), a.log())
    });
    let run = run.await.unwrap();
    let (status, exited_after, log_a) = a_exit.await.unwrap();
    assert!(
        run.success,
        "{}\n--- A ---\n{}\n--- B ---\n{}\n--- kamailio ---\n{}",
        run.report,
        tail(&log_a, 40),
        tail(&b.log(), 40),
        tail(&kamailio.log(), 40)
    );
    let after_b = scrape(&b).await;
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "{}",
        tail(&log_a, 40)
    );
    // Every call A took on completed: answered and ended by the caller's BYE.
    let answered_a = log_a
        .lines()
        .filter(|l| l.contains("call ended") && l.contains("sip_status=200"))
        .count();
    let caller_ended_a = log_a
        .lines()
        .filter(|l| l.contains("call ended") && l.contains("hangup_by=\"caller\""))
        .count();
    assert_eq!(answered_a, caller_ended_a, "{}", tail(&log_a, 60));
    let answered_b = metric(&after_b, "switchboard_sip_calls_answered_total", "") as usize;
    assert_eq!(
        answered_a + answered_b,
        CALLS as usize,
        "every call answered exactly once"
    );
    assert!(
        answered_b > 0 && answered_a > 0,
        "A {answered_a}, B {answered_b}"
    );
    let refused_by_a = metric(&draining, "switchboard_sip_responses_total", "code=\"503\"");
    let failovers = kamailio.log().matches("failing over").count();
    println!(
        "scale-out: {CALLS} calls, 0 failed; A answered {answered_a} ({live_at_sigterm} live at \
         SIGTERM, all completed, exit 0 {:.1} s after SIGTERM), B answered {answered_b}; \
         A's 503s seen {refused_by_a}, Kamailio failovers {failovers}",
        exited_after.as_secs_f64()
    );
}
