//! End to end: the real `switchboard` binary, seeded through its admin API, driven by SIPp as
//! a carrier would drive it. Needs `sipp` (Debian package `sip-tester`): without it the tests
//! print a notice and pass, unless `CI` is set, where they fail.
//!
//! The SRTP and `wss://` agent tests (`srtp.rs`) need the Python venv tests/run.sh makes; the
//! transfer test (`transfer.rs`) uses Twilio's Python library from another (plain HTTP without).
//!
//! The packet-loss run needs root and iproute2 (`tests/netem.sh`): it re-runs this test binary
//! inside a private network namespace whose loopback drops 10 % of packets.

#[path = "sip_e2e/control.rs"]
mod control;
#[path = "sip_e2e/harness.rs"]
mod harness;
#[path = "sip_e2e/hostile.rs"]
mod hostile;
#[path = "sip_e2e/srtp.rs"]
mod srtp;
#[path = "sip_e2e/tls.rs"]
mod tls;
#[path = "sip_e2e/torture.rs"]
mod torture;
#[path = "sip_e2e/transfer.rs"]
mod transfer;
#[path = "sip_e2e/wideband.rs"]
mod wideband;

use std::net::{IpAddr, Ipv4Addr, UdpSocket};
use std::process::Command;
use std::time::Duration;

use harness::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routed_call_over_udp_reaches_the_agent_and_ends_with_bye() {
    if sipp_missing() {
        return;
    }
    let fixture = Fixture::start(FixtureOptions::default()).await;
    expect_sipp_ok(
        &fixture.daemon,
        Sipp::new("uac_call.xml", fixture.daemon.sip_udp),
    )
    .await;
    let metrics = fixture.daemon.admin().metrics().expect("metrics");
    assert_eq!(
        metric(&metrics, "switchboard_sip_calls_answered_total", ""),
        1.0,
        "{metrics}"
    );
    assert_eq!(metric(&metrics, "switchboard_sip_invites_total", ""), 1.0);
    assert_eq!(metric(&metrics, "switchboard_sip_calls_active", ""), 0.0);
    // The agent got `connected`, `start` with the call's parameters, and `stop` on the BYE.
    let calls = fixture.agent.calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    let events: Vec<&str> = calls[0]
        .messages
        .iter()
        .filter_map(|m| m["event"].as_str())
        .collect();
    assert_eq!(events.first(), Some(&"connected"), "{events:?}");
    assert_eq!(events.get(1), Some(&"start"), "{events:?}");
    assert_eq!(events.last(), Some(&"stop"), "{events:?}");
    let start = &calls[0].messages[1]["start"];
    let params = &start["customParameters"];
    assert_eq!(params["to_number"], CALLED, "{start}");
    assert_eq!(params["from_number"], CALLER, "{start}");
    assert_eq!(
        params["deployment_id"],
        fixture.deployment_id.as_str(),
        "{start}"
    );
    assert_eq!(params["app_id"], APP, "{start}");
    assert_eq!(params["app_version"], "1", "{start}");
    assert!(
        start["callSid"]
            .as_str()
            .is_some_and(|s| s.starts_with("CA")),
        "{start}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routed_call_over_tcp() {
    if sipp_missing() {
        return;
    }
    let fixture = Fixture::start(FixtureOptions::default()).await;
    let sipp = Sipp::new("uac_call.xml", fixture.daemon.sip_tcp).transport(Transport::Tcp);
    expect_sipp_ok(&fixture.daemon, sipp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_number_is_404_with_a_reason() {
    if sipp_missing() {
        return;
    }
    let fixture = Fixture::start(FixtureOptions::default()).await;
    let sipp = Sipp::new("uac_reject_404.xml", fixture.daemon.sip_udp).service("+918000000999");
    expect_sipp_ok(&fixture.daemon, sipp).await;
    let metrics = fixture.daemon.admin().metrics().expect("metrics");
    assert_eq!(
        metric(&metrics, "switchboard_sip_responses_total", "code=\"404\""),
        1.0,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_deployment_is_480() {
    if sipp_missing() {
        return;
    }
    let fixture = Fixture::start(FixtureOptions::default()).await;
    let admin = fixture.daemon.admin();
    let id = fixture.deployment_id.clone();
    tokio::task::spawn_blocking(move || admin.set_status(&id, "pause"))
        .await
        .unwrap()
        .expect("pause");
    expect_sipp_ok(
        &fixture.daemon,
        Sipp::new("uac_reject_480.xml", fixture.daemon.sip_udp),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_business_hours_is_480() {
    if sipp_missing() {
        return;
    }
    // A one-hour window starting two hours from now (UTC): closed now, whatever the time.
    let now = chrono::Utc::now();
    let start = now + chrono::Duration::hours(2);
    let end = now + chrono::Duration::hours(3);
    let window = json!({
        "start_time": start.format("%H:00").to_string(),
        "end_time": end.format("%H:00").to_string(),
        "allowed_days": ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"],
        "timezone": "UTC",
    });
    let fixture = Fixture::start(FixtureOptions {
        inbound_config: Some(window),
        ..Default::default()
    })
    .await;
    expect_sipp_ok(
        &fixture.daemon,
        Sipp::new("uac_reject_480.xml", fixture.daemon.sip_udp),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_while_ringing_is_487_and_frees_the_call() {
    if sipp_missing() {
        return;
    }
    // The agent takes 2 s to accept the WebSocket: the call rings meanwhile and SIPp cancels.
    let options = FixtureOptions {
        agent: AgentBehaviour {
            handshake_delay: Duration::from_secs(2),
            hang_up_after: None,
        },
        daemon: DaemonOptions {
            agent_connect_timeout_ms: 10_000,
            ..Default::default()
        },
        ..Default::default()
    };
    let fixture = Fixture::start(options).await;
    expect_sipp_ok(
        &fixture.daemon,
        Sipp::new("uac_cancel.xml", fixture.daemon.sip_udp),
    )
    .await;
    let metrics = fixture.daemon.admin().metrics().expect("metrics");
    expect_metrics(
        &metrics,
        &[
            ("switchboard_sip_responses_total", "code=\"487\"", 1.0),
            ("switchboard_sip_calls_active", "", 0.0),
            ("switchboard_sip_calls_answered_total", "", 0.0),
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_keepalive_is_200_over_udp_and_tcp() {
    if sipp_missing() {
        return;
    }
    let fixture = Fixture::start(FixtureOptions::default()).await;
    expect_sipp_ok(
        &fixture.daemon,
        Sipp::new("uac_options.xml", fixture.daemon.sip_udp),
    )
    .await;
    let tcp = Sipp::new("uac_options.xml", fixture.daemon.sip_tcp).transport(Transport::Tcp);
    expect_sipp_ok(&fixture.daemon, tcp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_outside_the_numbers_trunk_allowlist_is_403() {
    if sipp_missing() {
        return;
    }
    // The number's trunk admits 127.0.0.1/32 only; 127.0.0.2 is another connection's peer, so
    // it passes screening and is refused by trunk authentication.
    let fixture = Fixture::start(FixtureOptions::default()).await;
    fixture
        .daemon
        .admin()
        .put_connection("conn-other", &["127.0.0.2/32"], None)
        .expect("connection");
    let sipp = Sipp::new("uac_reject_403.xml", fixture.daemon.sip_udp)
        .local_ip(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
    expect_sipp_ok(&fixture.daemon, sipp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digest_protected_trunk_challenges_then_answers() {
    if sipp_missing() {
        return;
    }
    let fixture = Fixture::start(FixtureOptions {
        digest: Some(("trunkuser", "s3cret-pw")),
        ..Default::default()
    })
    .await;
    // The digest `uri` must be the Request-URI (checked strictly); SIPp would hash
    // `sip:host:port` unless told.
    let target = fixture.daemon.sip_udp;
    // SIPp prepends the `sip:` scheme itself.
    let request_uri = format!("{CALLED}@{}:{};user=phone", target.ip(), target.port());
    let sipp = Sipp::new("uac_digest.xml", target)
        .arg("-au")
        .arg("trunkuser")
        .arg("-ap")
        .arg("s3cret-pw")
        .arg("-auth_uri")
        .arg(&request_uri);
    expect_sipp_ok(&fixture.daemon, sipp).await;
    let metrics = fixture.daemon.admin().metrics().expect("metrics");
    expect_metrics(
        &metrics,
        &[
            ("switchboard_sip_responses_total", "code=\"401\"", 1.0),
            ("switchboard_sip_calls_answered_total", "", 1.0),
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_not_ready_is_503_with_retry_after() {
    if sipp_missing() {
        return;
    }
    let fixture = Fixture::start(FixtureOptions::default()).await;
    let admin = fixture.daemon.admin();
    // Version 2 of another app points at a port nobody listens on: probed `error`.
    let dead = format!(
        "ws://127.0.0.1:{}/agent",
        free_port(IpAddr::V4(Ipv4Addr::LOCALHOST)).unwrap()
    );
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        admin.put_app_version("dead-agent", 2, &dead, false)?;
        admin.create_deployment("Dead line", "dead-agent", 2, &["+918047168001"], None)?;
        Ok(())
    })
    .await
    .unwrap()
    .expect("seed");
    let sipp = Sipp::new("uac_reject_503.xml", fixture.daemon.sip_udp).service("+918047168001");
    expect_sipp_ok(&fixture.daemon, sipp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_too_slow_to_connect_is_503_and_the_call_is_released() {
    if sipp_missing() {
        return;
    }
    // The runtime is ready (its probe waits long enough) but answers a call's WebSocket
    // after 1.5 s, beyond the 300 ms the daemon gives it.
    let options = FixtureOptions {
        agent: AgentBehaviour {
            handshake_delay: Duration::from_millis(1500),
            hang_up_after: None,
        },
        daemon: DaemonOptions {
            agent_connect_timeout_ms: 300,
            ..Default::default()
        },
        ..Default::default()
    };
    let fixture = Fixture::start(options).await;
    expect_sipp_ok(
        &fixture.daemon,
        Sipp::new("uac_reject_503.xml", fixture.daemon.sip_udp),
    )
    .await;
    let metrics = fixture.daemon.admin().metrics().expect("metrics");
    expect_metrics(
        &metrics,
        &[
            ("switchboard_sip_responses_total", "code=\"180\"", 1.0),
            ("switchboard_sip_calls_active", "", 0.0),
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_offer_and_hold_reinvite() {
    if sipp_missing() {
        return;
    }
    let fixture = Fixture::start(FixtureOptions::default()).await;
    expect_sipp_ok(
        &fixture.daemon,
        Sipp::new("uac_late_offer.xml", fixture.daemon.sip_udp),
    )
    .await;
    expect_sipp_ok(
        &fixture.daemon,
        Sipp::new("uac_reinvite.xml", fixture.daemon.sip_udp),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_source_is_shed_while_the_carrier_still_gets_through() {
    if sipp_missing() {
        return;
    }
    let options = FixtureOptions {
        daemon: DaemonOptions {
            rate_limit_per_second: 20,
            rate_limit_burst: 40,
            ..Default::default()
        },
        ..Default::default()
    };
    let fixture = Fixture::start(options).await;
    let target = fixture.daemon.sip_udp;
    // 127.0.0.3, a trusted peer of another connection, floods INVITEs as fast as it can for
    // as long as the carrier (127.0.0.1) takes to place a call.
    fixture
        .daemon
        .admin()
        .put_connection("conn-flooder", &["127.0.0.3/32"], None)
        .expect("connection");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flooding = std::sync::Arc::clone(&stop);
    let flood = tokio::task::spawn_blocking(move || {
        let socket = UdpSocket::bind("127.0.0.3:0").expect("flood socket");
        socket.set_nonblocking(true).expect("nonblocking");
        let mut got_503 = 0;
        let mut buf = [0u8; 4096];
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut i = 0u64;
        while !flooding.load(std::sync::atomic::Ordering::Relaxed)
            && std::time::Instant::now() < deadline
        {
            i += 1;
            let invite = format!(
                "INVITE sip:+918047168000@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.3:5060;branch=z9hG4bK-flood-{i}\r\n\
                 Max-Forwards: 70\r\nFrom: <sip:flood@127.0.0.3>;tag=f{i}\r\nTo: <sip:+918047168000@127.0.0.1>\r\n\
                 Call-ID: flood-{i}\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
            );
            let _ = socket.send_to(invite.as_bytes(), target);
            while let Ok(n) = socket.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]);
                if text.starts_with("SIP/2.0 503") && text.contains("Retry-After:") {
                    got_503 += 1;
                }
            }
        }
        got_503
    });
    // Let the flood get going before the carrier calls.
    tokio::time::sleep(Duration::from_millis(200)).await;
    expect_sipp_ok(&fixture.daemon, Sipp::new("uac_call.xml", target)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let got_503 = flood.await.unwrap();
    assert!(
        got_503 > 0,
        "the flooding source never saw a 503 with Retry-After"
    );
    let metrics = fixture.daemon.admin().metrics().expect("metrics");
    assert!(
        metric(&metrics, "switchboard_sip_rate_limited_total", "") > 1000.0,
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "switchboard_sip_calls_answered_total", ""),
        1.0,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torture_corpus_over_udp_then_still_answers_options() {
    let Some(shared) = shared_dir() else {
        eprintln!("skipped: ../shared not found");
        return;
    };
    if sipp_missing() {
        return;
    }
    let fixture = Fixture::start(FixtureOptions::default()).await;
    let target = fixture.daemon.sip_udp;
    let failures = tokio::task::spawn_blocking(move || torture::run(&shared, target))
        .await
        .unwrap();
    assert!(
        failures.is_empty(),
        "{} torture messages mishandled:\n{}\n--- switchboard log ---\n{}",
        failures.len(),
        failures.join("\n"),
        tail(&fixture.daemon.log(), 60)
    );
    expect_sipp_ok(&fixture.daemon, Sipp::new("uac_options.xml", target)).await;
    let mut daemon = fixture.daemon;
    assert!(daemon.is_running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_hanging_up_ends_the_call_with_a_bye_carrying_a_reason() {
    if sipp_missing() {
        return;
    }
    let options = FixtureOptions {
        agent: AgentBehaviour {
            handshake_delay: Duration::ZERO,
            hang_up_after: Some(Duration::from_millis(500)),
        },
        ..Default::default()
    };
    let fixture = Fixture::start(options).await;
    expect_sipp_ok(
        &fixture.daemon,
        Sipp::new("uac_call_remote_bye.xml", fixture.daemon.sip_udp),
    )
    .await;
    let metrics = fixture.daemon.admin().metrics().expect("metrics");
    assert_eq!(
        metric(&metrics, "switchboard_sip_calls_active", ""),
        0.0,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilio_rest_call_update_hangs_up_and_unknown_calls_are_20404() {
    if sipp_missing() {
        return;
    }
    let fixture = Fixture::start(FixtureOptions::default()).await;
    let sipp = Sipp::new("uac_call_remote_bye.xml", fixture.daemon.sip_udp);
    let name = sipp.scenario.display().to_string();
    let call = tokio::task::spawn_blocking(move || sipp.run());
    // Wait for the agent's `start`, which names the call and the account.
    let start = loop {
        if let Some(start) = fixture.agent.calls().first().and_then(|c| {
            c.messages
                .iter()
                .find(|m| m["event"] == "start")
                .map(|m| m["start"].clone())
        }) {
            break start;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let call_sid = start["callSid"].as_str().expect("callSid").to_owned();
    let account_sid = start["accountSid"].as_str().expect("accountSid").to_owned();
    let admin = fixture.daemon.admin();
    let path = format!("/2010-04-01/Accounts/{account_sid}/Calls/{call_sid}.json");
    let basic = |password: &str| {
        use base64::Engine as _;
        let token =
            base64::engine::general_purpose::STANDARD.encode(format!("{account_sid}:{password}"));
        vec![format!("Authorization: Basic {token}")]
    };
    let form = "application/x-www-form-urlencoded";
    let (wrong, done, again) = tokio::task::spawn_blocking({
        let (path, right, bad) = (path.clone(), basic(API_KEY), basic("not-the-key"));
        move || {
            let wrong = admin
                .request("POST", &path, Some(form), b"Status=completed", &bad)
                .unwrap();
            let done = admin
                .request("POST", &path, Some(form), b"Status=completed", &right)
                .unwrap();
            // Give the BYE time to complete, then the call is gone.
            std::thread::sleep(Duration::from_millis(500));
            let again = admin
                .request("POST", &path, Some(form), b"Status=completed", &right)
                .unwrap();
            (wrong, done, again)
        }
    })
    .await
    .unwrap();
    assert_eq!(wrong.status, 401, "{}", wrong.body);
    assert_eq!(wrong.json()["code"], 20003);
    assert_eq!(done.status, 200, "{}", done.body);
    assert_eq!(done.json()["sid"], call_sid.as_str());
    assert_eq!(done.json()["status"], "completed");
    let run = call.await.unwrap().expect("sipp ran");
    assert!(
        run.success,
        "{name} failed\n{}\n--- switchboard log ---\n{}",
        run.report,
        tail(&fixture.daemon.log(), 80)
    );
    assert_eq!(again.status, 404, "{}", again.body);
    let body = again.json();
    assert_eq!(body["code"], 20404, "{body}");
    assert_eq!(body["status"], 404, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains(&call_sid)),
        "{body}"
    );
    assert!(body["more_info"].as_str().is_some(), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_rtp_pair_serves_call_after_call_because_every_path_releases_it() {
    if sipp_missing() {
        return;
    }
    let options = FixtureOptions {
        daemon: DaemonOptions {
            rtp_pairs: 1,
            ..Default::default()
        },
        ..Default::default()
    };
    let fixture = Fixture::start(options).await;
    let target = fixture.daemon.sip_udp;
    // Answered calls, one at a time: each needs the single pair the previous one released.
    expect_sipp_ok(
        &fixture.daemon,
        Sipp::new("uac_call.xml", target).calls(3, 1),
    )
    .await;
    // An INVITE refused after the pair was taken (no codec in common) releases it too.
    expect_sipp_ok(&fixture.daemon, Sipp::new("uac_reject_488.xml", target)).await;
    expect_sipp_ok(&fixture.daemon, Sipp::new("uac_call.xml", target)).await;
    let metrics = fixture.daemon.admin().metrics().expect("metrics");
    assert_eq!(
        metric(&metrics, "switchboard_sip_calls_answered_total", ""),
        4.0,
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "switchboard_sip_queue_full_total",
            "queue=\"rtp_ports\""
        ),
        0.0,
        "{metrics}"
    );
}

/// Strict RTP end to end: RTP sprayed at a live call's port from a host the call never
/// signalled (127.0.0.2) is dropped, counted, and never answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rtp_from_a_foreign_host_is_dropped_and_counted() {
    if sipp_missing() {
        return;
    }
    const SPRAYED: u16 = 50;
    // One pair above every other daemon's block (30000-49999), so no parallel test's call
    // can take it; per process, so parallel test binaries differ too.
    let port = 50_000 + (std::process::id() % 5_000) as u16 * 2;
    let options = FixtureOptions {
        daemon: DaemonOptions {
            rtp_ports: Some(port..=port + 1),
            ..Default::default()
        },
        ..Default::default()
    };
    let fixture = Fixture::start(options).await;
    let rtp = std::net::SocketAddr::new(
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        *fixture.daemon.rtp_ports.start(),
    );
    let admin = fixture.daemon.admin();
    let sipp = Sipp::new("uac_call.xml", fixture.daemon.sip_udp)
        .arg("-d")
        .arg("2000");
    let call = tokio::task::spawn_blocking(move || sipp.run());
    let answered = wait_for_metric(&admin, "switchboard_sip_calls_answered_total", "", 1.0).await;
    assert!(
        answered,
        "call not answered\n{}",
        tail(&fixture.daemon.log(), 80)
    );

    let attacker = tokio::net::UdpSocket::bind((Ipv4Addr::new(127, 0, 0, 2), 0))
        .await
        .expect("bind 127.0.0.2");
    for seq in 0..SPRAYED {
        // In sequence, PCMU, a fixed SSRC: the strongest blind injection.
        let mut packet = vec![0x80, 0, 0, 0, 0, 0, 0, 0, 0x12, 0x34, 0x56, 0x78];
        packet[2..4].copy_from_slice(&seq.to_be_bytes());
        packet[4..8].copy_from_slice(&(u32::from(seq) * 160).to_be_bytes());
        packet.extend_from_slice(&[0xEE; 160]);
        attacker.send_to(&packet, rtp).await.expect("send");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let run = call.await.expect("sipp thread").expect("sipp ran");
    assert!(run.success, "{}", run.report);

    let counted = wait_for_metric(
        &admin,
        "switchboard_rtp_dropped_total",
        "reason=\"foreign_source\"",
        f64::from(SPRAYED),
    )
    .await;
    assert!(counted, "{}", admin.metrics().unwrap_or_default());
    let mut buf = [0u8; 1500];
    assert!(
        attacker.try_recv_from(&mut buf).is_err(),
        "the gateway sent media to the attacker"
    );
    let calls = fixture.agent.calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert!(
        !calls[0].messages.iter().any(|m| m["event"] == "media"),
        "sprayed audio reached the agent: {:?}",
        calls[0].messages
    );
}

/// Polls `/metrics` until `name{labels}` equals `value` (5 s at most).
async fn wait_for_metric(admin: &Admin, name: &str, labels: &str, value: f64) -> bool {
    for _ in 0..100 {
        let admin = *admin;
        let page = tokio::task::spawn_blocking(move || admin.metrics())
            .await
            .expect("thread")
            .unwrap_or_default();
        if metric(&page, name, labels) == value {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_listeners_take_calls() {
    if sipp_missing() {
        return;
    }
    let options = FixtureOptions {
        daemon: DaemonOptions {
            sip_host: "[::1]",
            ..Default::default()
        },
        ..Default::default()
    };
    let fixture = Fixture::start(options).await;
    let v6 = IpAddr::V6(std::net::Ipv6Addr::LOCALHOST);
    expect_sipp_ok(
        &fixture.daemon,
        Sipp::new("uac_options.xml", fixture.daemon.sip_udp).local_ip(v6),
    )
    .await;
    expect_sipp_ok(
        &fixture.daemon,
        Sipp::new("uac_call.xml", fixture.daemon.sip_udp).local_ip(v6),
    )
    .await;
    let tcp = Sipp::new("uac_call.xml", fixture.daemon.sip_tcp)
        .local_ip(v6)
        .transport(Transport::Tcp);
    expect_sipp_ok(&fixture.daemon, tcp).await;
}

/// Name of the environment variable that marks the run inside the lossy namespace.
const NETEM_INNER: &str = "SWITCHBOARD_NETEM_INNER";

#[test]
fn calls_survive_ten_percent_packet_loss() {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/netem.sh");
    let ci = std::env::var_os("CI").is_some();
    let usable = Command::new(&script).arg("check").output();
    match usable {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            let why = String::from_utf8_lossy(&out.stderr).trim().to_owned();
            assert!(!ci, "packet-loss run impossible in CI: {why}");
            eprintln!("skipped: {why}");
            return;
        }
        Err(e) => {
            assert!(!ci, "tests/netem.sh: {e}");
            eprintln!("skipped: tests/netem.sh: {e}");
            return;
        }
    }
    if sipp_missing() {
        return;
    }
    let namespace = format!("sbloss{}", std::process::id());
    let up = Command::new(&script)
        .args(["up", &namespace, "10"])
        .output()
        .expect("netem up");
    assert!(
        up.status.success(),
        "netem.sh up: {}",
        String::from_utf8_lossy(&up.stderr)
    );
    eprintln!("loss via {}", String::from_utf8_lossy(&up.stdout).trim());
    let me = std::env::current_exe().expect("test binary path");
    let inner = Command::new(&script)
        .args(["exec", &namespace])
        .arg(me)
        .args([
            "--exact",
            "lossy_calls_inside_namespace",
            "--ignored",
            "--nocapture",
        ])
        .env(NETEM_INNER, "1")
        .output();
    let _ = Command::new(&script).args(["down", &namespace]).status();
    let inner = inner.expect("inner run");
    let out = String::from_utf8_lossy(&inner.stdout);
    let err = String::from_utf8_lossy(&inner.stderr);
    assert!(
        inner.status.success(),
        "lossy run failed\n--- stdout ---\n{out}\n--- stderr ---\n{err}"
    );
    assert!(
        out.contains("1 passed"),
        "inner test did not run\n{out}\n{err}"
    );
    for line in out.lines().filter(|l| l.contains("retransmissions")) {
        eprintln!("{line}");
    }
}

/// Runs inside the namespace `calls_survive_ten_percent_packet_loss` sets up (10 % loss on
/// loopback): 30 calls, each INVITE/200/ACK/BYE over UDP with retransmissions; none may fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by calls_survive_ten_percent_packet_loss inside a lossy network namespace"]
async fn lossy_calls_inside_namespace() {
    assert!(
        std::env::var_os(NETEM_INNER).is_some(),
        "run this through calls_survive_ten_percent_packet_loss"
    );
    let fixture = Fixture::start(FixtureOptions::default()).await;
    let mut sipp = Sipp::new("uac_call_lossy.xml", fixture.daemon.sip_udp)
        .calls(30, 10)
        .arg("-d")
        .arg("500");
    sipp.timeout = Duration::from_secs(180);
    let run = expect_sipp_ok(&fixture.daemon, sipp).await;
    // Proof that the loss was real: the carrier side had to retransmit.
    let retransmissions = run.retransmissions.expect("SIPp statistics");
    println!("SIPp retransmissions under loss: {retransmissions}");
    assert!(
        retransmissions > 0,
        "no retransmission at all: is the loss active?"
    );
    let metrics = fixture.daemon.admin().metrics().expect("metrics");
    assert_eq!(
        metric(&metrics, "switchboard_sip_calls_answered_total", ""),
        30.0,
        "{metrics}"
    );
}
