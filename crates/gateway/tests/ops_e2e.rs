//! Operations, end to end with the real binary and SIPp: the SIGTERM drain (calls in progress
//! complete, new INVITEs and OPTIONS get 503, exit 0), grace expiry and second-signal BYEs with
//! Q.850 cause 41, the metrics the deploy kit's dashboard and alert rules use, and the JSON
//! call summary line. Needs `sipp` (skipped with a notice without it, outside CI).

#[path = "sip_e2e/harness.rs"]
#[allow(dead_code)] // shared with sip_e2e, which uses the rest
mod harness;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use harness::*;

/// Far above anything waited for; a regression fails instead of hanging.
const GUARD: Duration = Duration::from_secs(30);

fn fixture_with(env: &[(&str, &str)]) -> FixtureOptions {
    FixtureOptions {
        daemon: DaemonOptions {
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..DaemonOptions::default()
        },
        ..FixtureOptions::default()
    }
}

/// Starts SIPp with one call held for `hold` on a blocking thread.
fn call_in_background(
    daemon: &Daemon,
    scenario: &str,
    hold: Duration,
) -> tokio::task::JoinHandle<SippRun> {
    let sipp = Sipp::new(scenario, daemon.sip_udp)
        .arg("-d")
        .arg(&hold.as_millis().to_string());
    tokio::task::spawn_blocking(move || sipp.run().expect("sipp ran"))
}

/// Waits until `n` calls have been answered (the agent is on, media flows).
async fn wait_answered(daemon: &Daemon, n: f64) {
    let admin = daemon.admin();
    let deadline = Instant::now() + GUARD;
    loop {
        let page = tokio::task::spawn_blocking(move || admin.metrics())
            .await
            .unwrap()
            .unwrap_or_default();
        if metric(&page, "switchboard_sip_calls_answered_total", "") >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no answered call\n{}",
            tail(&daemon.log(), 60)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits for the daemon to exit and returns its exit code.
async fn exit_code(mut daemon: Daemon) -> (Option<i32>, String) {
    let (status, log) = tokio::task::spawn_blocking(move || {
        let status = daemon.wait_exit(GUARD);
        (status, daemon.log())
    })
    .await
    .unwrap();
    let status = status.unwrap_or_else(|| panic!("still running\n{}", tail(&log, 60)));
    (status.code(), log)
}

fn assert_sipp_ok(run: &SippRun, log: &str) {
    assert!(
        run.success,
        "{}\n--- switchboard log ---\n{}",
        run.report,
        tail(log, 80)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_live_call_finish_refuses_new_ones_and_exits_0() {
    if sipp_missing() {
        return;
    }
    let fixture = Fixture::start(FixtureOptions::default()).await;
    let daemon = &fixture.daemon;
    let live = call_in_background(daemon, "uac_call.xml", Duration::from_secs(8));
    wait_answered(daemon, 1.0).await;
    daemon.signal("TERM");
    // `kill` returns before the daemon has taken the signal: poll (bounded) for the 503.
    let admin = daemon.admin();
    let deadline = Instant::now() + GUARD;
    let ready = loop {
        let ready = tokio::task::spawn_blocking(move || admin.get("/readyz"))
            .await
            .unwrap()
            .expect("readyz answers while draining");
        if ready.status != 200 || Instant::now() > deadline {
            break ready;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert_eq!(ready.json()["status"], "draining");
    // New calls and dispatcher probes are refused while the live call goes on. Past the
    // engines' drain linger (2 s), and ten of each (distinct Call-IDs, so every engine gets
    // some): an engine without calls keeps serving its share of the port until all are done.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let refused = Sipp::new("uac_reject_503.xml", daemon.sip_udp).calls(10, 10);
    expect_sipp_ok(daemon, refused).await;
    let probes = Sipp::new("uac_options_503.xml", daemon.sip_udp).calls(10, 10);
    expect_sipp_ok(daemon, probes).await;
    let run = live.await.unwrap();
    assert_sipp_ok(&run, &daemon.log());
    let Fixture { daemon, agent, .. } = fixture;
    let (code, log) = exit_code(daemon).await;
    assert_eq!(code, Some(0), "{}", tail(&log, 60));
    assert!(
        log.contains("draining: new calls refused"),
        "{}",
        tail(&log, 60)
    );
    assert!(
        log.contains("drained: the last call has ended"),
        "{}",
        tail(&log, 60)
    );
    let summary = log
        .lines()
        .find(|l| l.contains("call ended") && l.contains("sip_status=200"))
        .unwrap_or_else(|| panic!("no summary line\n{}", tail(&log, 60)));
    assert!(
        summary.contains("hangup_by=\"caller\"") || summary.contains("hangup_by=caller"),
        "{summary}"
    );
    // The caller's media reached the agent after the SIGTERM: the bridge kept running.
    let calls = agent.calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert!(calls[0].messages.iter().any(|m| m["event"] == "stop"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_grace_period_is_over_the_call_gets_bye_with_cause_41_then_exit_0() {
    if sipp_missing() {
        return;
    }
    let options = fixture_with(&[("SWITCHBOARD_SHUTDOWN_GRACE_PERIOD_SECS", "2")]);
    let fixture = Fixture::start(options).await;
    let daemon = &fixture.daemon;
    let live = call_in_background(daemon, "uac_call_shutdown_bye.xml", Duration::ZERO);
    wait_answered(daemon, 1.0).await;
    let signalled = Instant::now();
    daemon.signal("TERM");
    let run = live.await.unwrap();
    assert_sipp_ok(&run, &daemon.log());
    assert!(
        signalled.elapsed() >= Duration::from_secs(2),
        "BYE before the grace period"
    );
    let Fixture { daemon, .. } = fixture;
    let (code, log) = exit_code(daemon).await;
    assert_eq!(code, Some(0), "{}", tail(&log, 60));
    assert!(log.contains("grace period over"), "{}", tail(&log, 60));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_or_a_sigint_ends_the_calls_now() {
    if sipp_missing() {
        return;
    }
    for signals in [&["TERM", "TERM"][..], &["INT"][..]] {
        // The grace period (300 s) is far beyond SIPp's 60 s timeout: only the second signal
        // can end this call in time.
        let fixture = Fixture::start(FixtureOptions::default()).await;
        let daemon = &fixture.daemon;
        let live = call_in_background(daemon, "uac_call_shutdown_bye.xml", Duration::ZERO);
        wait_answered(daemon, 1.0).await;
        for signal in signals {
            daemon.signal(signal);
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let run = live.await.unwrap();
        assert_sipp_ok(&run, &daemon.log());
        let Fixture { daemon, .. } = fixture;
        let (code, log) = exit_code(daemon).await;
        assert_eq!(code, Some(0), "{signals:?}\n{}", tail(&log, 60));
    }
}

/// Metric names a file refers to: `switchboard_…` and `process_…` words.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let is_word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut i = 0;
    while i < bytes.len() {
        let starts_word = i == 0 || !is_word(bytes[i - 1]);
        let rest = &text[i..];
        if starts_word && (rest.starts_with("switchboard_") || rest.starts_with("process_")) {
            let len = rest.bytes().take_while(|b| is_word(*b)).count();
            names.insert(rest[..len].to_owned());
            i += len;
        } else {
            i += 1;
        }
    }
    names
}

/// Families in an exposition page (`# TYPE name kind`), with their histogram series names.
fn exported_series(page: &str) -> BTreeSet<String> {
    let mut series = BTreeSet::new();
    for line in page.lines() {
        let mut words = line.split_whitespace();
        if let (Some("#"), Some("TYPE"), Some(name), Some(kind)) =
            (words.next(), words.next(), words.next(), words.next())
        {
            series.insert(name.to_owned());
            if kind == "histogram" || kind == "summary" {
                for suffix in ["_bucket", "_sum", "_count"] {
                    series.insert(format!("{name}{suffix}"));
                }
            }
        }
    }
    series
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_and_alerts_use_is_exported_after_a_call() {
    if sipp_missing() {
        return;
    }
    let options = fixture_with(&[
        ("SWITCHBOARD_METRICS_LISTEN", "127.0.0.1:0"),
        ("SWITCHBOARD_LOG_FORMAT", "json"),
    ]);
    let fixture = Fixture::start(options).await;
    let daemon = &fixture.daemon;
    // Held 1.5 s: the gateway paces RTP to the caller (20 ms packets) from the ACK on.
    let call = Sipp::new("uac_call.xml", daemon.sip_udp)
        .arg("-d")
        .arg("1500");
    expect_sipp_ok(daemon, call).await;
    // The separate listener serves metrics and health, and nothing of the admin API.
    let probes = Admin {
        addr: daemon
            .metrics
            .expect("the listening line names the metrics listener"),
    };
    let (page, ready, api) = tokio::task::spawn_blocking(move || {
        (
            probes.get("/metrics").unwrap(),
            probes.get("/readyz").unwrap(),
            probes.get(&Admin::scoped("/deployments")).unwrap(),
        )
    })
    .await
    .unwrap();
    assert_eq!((page.status, ready.status, api.status), (200, 200, 404));
    let page = page.body;
    let exported = exported_series(&page);
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
    for file in [
        "grafana/dashboards/switchboard.json",
        "prometheus/alerts.yml",
    ] {
        let text = std::fs::read_to_string(deploy.join(file)).expect(file);
        let used = metric_names(&text);
        assert!(used.len() >= 5, "{file} names only {used:?}");
        let missing: Vec<_> = used.difference(&exported).collect();
        assert!(
            missing.is_empty(),
            "{file} uses {missing:?}, not exported:\n{page}"
        );
    }
    assert_eq!(
        metric(
            &page,
            "switchboard_calls_ended_total",
            "hangup_by=\"caller\""
        ),
        1.0
    );
    assert_eq!(
        metric(&page, "switchboard_call_duration_seconds_count", ""),
        1.0
    );
    assert_eq!(
        metric(
            &page,
            "switchboard_call_setup_seconds_count",
            "stage=\"agent_connect\""
        ),
        1.0
    );
    let sent = metric(&page, "switchboard_rtp_packets_total", "direction=\"out\"");
    assert!(sent > 10.0, "{sent} RTP packets sent in 1.5 s\n{page}");
    // One JSON summary line for the call, with every field an operator searches by.
    let log = daemon.log();
    let summary: serde_json::Value = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["fields"]["message"] == "call ended")
        .unwrap_or_else(|| panic!("no JSON summary line\n{}", tail(&log, 40)));
    let fields = &summary["fields"];
    for key in [
        "call_sid",
        "sip_call_id",
        "deployment_id",
        "app_id",
        "app_version",
        "from",
        "to",
        "duration",
        "hangup_by",
        "sip_status",
    ] {
        assert!(!fields[key].is_null(), "{key} missing in {summary}");
    }
    assert_eq!(fields["deployment_id"], fixture.deployment_id.as_str());
    assert_eq!(fields["hangup_by"], "caller");
    assert_eq!(fields["sip_status"], 200);
}
