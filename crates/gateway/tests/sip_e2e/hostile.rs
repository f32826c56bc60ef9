//! Hostile network: scanners, floods, idle TCP sockets and password guessing against the real
//! binary, from several loopback addresses. The fixture's trunk trusts 127.0.0.1 only, so
//! 127.0.0.2 and up are strangers. Nothing they send may cost state or stop the trunk's calls.

use std::io::Read as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::harness::*;

fn loopback(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// An INVITE as a scanner (or a carrier) would send it, for `number`.
fn invite(from: SocketAddr, target: SocketAddr, number: &str, id: &str) -> String {
    format!(
        "INVITE sip:{number}@{target} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {from};branch=z9hG4bK-{id}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:scan@{from}>;tag=t-{id}\r\nTo: <sip:{number}@{target}>\r\n\
         Call-ID: {id}\r\nCSeq: 1 INVITE\r\nUser-Agent: friendly-scanner\r\nContent-Length: 0\r\n\r\n"
    )
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scanners_from_untrusted_addresses_get_nothing_while_the_trunk_is_served() {
    if sipp_missing() {
        return;
    }
    let fixture = Fixture::start(FixtureOptions::default()).await;
    let target = fixture.daemon.sip_udp;
    // Three scanners (127.0.0.2-4) flood INVITEs that never ACK for as long as the trunk
    // takes to get its rejects and a routed call through.
    let stop = Arc::new(AtomicBool::new(false));
    let mut scanners = Vec::new();
    for last in 2..=4u8 {
        let stop = Arc::clone(&stop);
        scanners.push(tokio::task::spawn_blocking(move || {
            let socket = UdpSocket::bind((loopback(last), 0)).expect("scanner socket");
            socket.set_nonblocking(true).expect("nonblocking");
            let from = socket.local_addr().unwrap();
            let (mut sent, mut answers) = (0u64, 0u64);
            let mut buf = [0u8; 4096];
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                sent += 1;
                let number = format!("+91800000{:04}", sent % 10_000);
                let id = format!("scan-{last}-{sent}");
                let _ = socket.send_to(invite(from, target, &number, &id).as_bytes(), target);
                while socket.recv(&mut buf).is_ok() {
                    answers += 1;
                }
                if sent % 64 == 0 {
                    // ~190 INVITE/s per scanner at most: the rate of the issue's attack.
                    std::thread::sleep(Duration::from_millis(300));
                }
            }
            std::thread::sleep(Duration::from_millis(200));
            while socket.recv(&mut buf).is_ok() {
                answers += 1;
            }
            (sent, answers)
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rejects = Sipp::new("uac_reject_404.xml", target)
        .service("+918000000999")
        .calls(200, 100);
    expect_sipp_ok(&fixture.daemon, rejects).await;
    expect_sipp_ok(&fixture.daemon, Sipp::new("uac_call.xml", target)).await;
    stop.store(true, Ordering::Relaxed);
    let mut sent = 0;
    for scanner in scanners {
        let (s, answers) = scanner.await.unwrap();
        assert_eq!(answers, 0, "an untrusted scanner got {answers} answers");
        sent += s;
    }
    let metrics = fixture.daemon.admin().metrics().expect("metrics");
    let dropped = metric(
        &metrics,
        "switchboard_sip_dropped_total",
        "reason=\"untrusted\"",
    );
    assert!(
        sent > 300 && dropped >= sent as f64 * 0.9,
        "sent {sent}, dropped {dropped}\n{metrics}"
    );
    assert_eq!(
        metric(&metrics, "switchboard_sip_calls_answered_total", ""),
        1.0
    );
    assert_eq!(
        metric(&metrics, "switchboard_sip_responses_total", "code=\"503\""),
        0.0,
        "{metrics}"
    );
    // Operators are told why, once per source, not once per packet.
    let log = fixture.daemon.log();
    let hints = log
        .matches("add it to a connection's allowed_addresses")
        .count();
    assert!((1..=3).contains(&hints), "{hints} hint lines");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trunk_bursting_thousands_of_invites_to_unknown_numbers_gets_a_404_for_each() {
    if sipp_missing() {
        return;
    }
    let fixture = Fixture::start(FixtureOptions::default()).await;
    let target = fixture.daemon.sip_udp;
    let pid = fixture.daemon.pid();
    let burst = |calls: u32| {
        Sipp::new("uac_reject_404.xml", target)
            .service("+918000000999")
            .calls(calls, 1_000)
    };
    // Warm up allocator pools and tables, then measure a burst five times larger.
    expect_sipp_ok(&fixture.daemon, burst(2_000)).await;
    let before = rss_kib(pid);
    expect_sipp_ok(&fixture.daemon, burst(10_000)).await;
    let after = rss_kib(pid);
    let metrics = fixture.daemon.admin().metrics().expect("metrics");
    // SIPp counted a 404 for each of its 12,000 calls (expect_sipp_ok). On a loaded machine
    // SIPp also retransmits INVITEs whose 404 it has not read yet; each retransmission is
    // answered again, statelessly, so the count may exceed the calls but never fall short.
    let not_found = metric(&metrics, "switchboard_sip_responses_total", "code=\"404\"");
    assert!(
        not_found >= 12_000.0,
        "every INVITE answered 404\n{metrics}"
    );
    assert_eq!(
        metric(&metrics, "switchboard_sip_responses_total", "code=\"503\""),
        0.0,
        "none shed with 503\n{metrics}"
    );
    assert_eq!(
        metric(&metrics, "switchboard_sip_transactions", ""),
        0.0,
        "refusals keep no transaction"
    );
    assert!(
        metric(
            &metrics,
            "switchboard_sip_stateless_total",
            "what=\"ack_absorbed\""
        ) >= 11_000.0,
        "{metrics}"
    );
    // 10,000 more refusals may not leave 10,000 of anything behind: under 4 MiB of growth
    // is allocator noise (a kept transaction alone would be ~2 KiB, 20 MiB for the burst).
    assert!(
        after < before + 4 * 1024,
        "RSS grew from {before} KiB to {after} KiB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retransmitted_invite_gets_the_identical_answer_and_its_ack_is_absorbed() {
    let fixture = Fixture::start(FixtureOptions::default()).await;
    let target = fixture.daemon.sip_udp;
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let from = socket.local_addr().unwrap();
    let request = invite(from, target, "+918000000999", "retx-1");
    let mut answers = Vec::new();
    for _ in 0..2 {
        socket.send_to(request.as_bytes(), target).unwrap();
        let mut buf = [0u8; 4096];
        let n = socket.recv(&mut buf).expect("an answer");
        answers.push(buf[..n].to_vec());
    }
    let first = String::from_utf8_lossy(&answers[0]).into_owned();
    assert!(first.starts_with("SIP/2.0 404 "), "{first}");
    assert_eq!(
        answers[0], answers[1],
        "a retransmission gets the same bytes"
    );
    let to = first
        .lines()
        .find(|l| l.starts_with("To:"))
        .expect("To header")
        .trim_start_matches("To:")
        .trim();
    let ack = format!(
        "ACK sip:+918000000999@{target} SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch=z9hG4bK-retx-1\r\n\
         Max-Forwards: 70\r\nFrom: <sip:scan@{from}>;tag=t-retx-1\r\nTo: {to}\r\nCall-ID: retx-1\r\n\
         CSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
    );
    socket.send_to(ack.as_bytes(), target).unwrap();
    let mut metrics = String::new();
    for _ in 0..50 {
        metrics = fixture.daemon.admin().metrics().expect("metrics");
        if metric(
            &metrics,
            "switchboard_sip_stateless_total",
            "what=\"ack_absorbed\"",
        ) > 0.0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        metric(
            &metrics,
            "switchboard_sip_stateless_total",
            "what=\"ack_absorbed\""
        ),
        1.0,
        "{metrics}"
    );
    assert_eq!(metric(&metrics, "switchboard_sip_transactions", ""), 0.0);
    assert_eq!(
        metric(
            &metrics,
            "switchboard_sip_stateless_total",
            "what=\"ack_stray\""
        ),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_tcp_connections_from_a_stranger_or_too_many_from_one_peer_do_not_stop_a_trunk_call() {
    if sipp_missing() {
        return;
    }
    let fixture = Fixture::start(FixtureOptions::default()).await;
    let target = fixture.daemon.sip_tcp;
    // 3,000 idle connections from a stranger: each is closed at accept. The client keeps the
    // newest 500 open (its own descriptor limit may be 1,024); the gateway holds none.
    let mut stranger = std::collections::VecDeque::new();
    let mut connected = 0;
    for _ in 0..3_000 {
        if let Some(stream) = connect_from(loopback(5), target) {
            connected += 1;
            stranger.push_back(stream);
            if stranger.len() > 500 {
                stranger.pop_front();
            }
        }
    }
    assert!(connected > 2_900, "only {connected} connected");
    let mut probe = connect_from(loopback(5), target).expect("connects");
    probe
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut byte = [0u8; 1];
    assert!(
        matches!(probe.read(&mut byte), Ok(0) | Err(_)),
        "closed at accept"
    );
    // A trusted peer (a second connection trusting 127.0.0.6) may hold 64, no more.
    fixture
        .daemon
        .admin()
        .put_connection("conn-second", &["127.0.0.6/32"], None)
        .expect("connection");
    let held: Vec<TcpStream> = (0..64)
        .filter_map(|_| connect_from(loopback(6), target))
        .collect();
    assert_eq!(held.len(), 64);
    let mut over = connect_from(loopback(6), target).expect("connects");
    over.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert!(
        matches!(over.read(&mut byte), Ok(0) | Err(_)),
        "65th closed"
    );

    expect_sipp_ok(
        &fixture.daemon,
        Sipp::new("uac_call.xml", target).transport(Transport::Tcp),
    )
    .await;
    let metrics = fixture.daemon.admin().metrics().expect("metrics");
    assert!(
        metric(
            &metrics,
            "switchboard_sip_dropped_total",
            "reason=\"untrusted\""
        ) >= 2_900.0,
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "switchboard_sip_dropped_total",
            "reason=\"tcp_per_source\""
        ),
        1.0,
        "{metrics}"
    );
    drop((stranger, held));
}

fn connect_from(source: IpAddr, target: SocketAddr) -> Option<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).ok()?;
    socket.bind(&SocketAddr::new(source, 0).into()).ok()?;
    socket
        .connect_timeout(&target.into(), Duration::from_secs(2))
        .ok()?;
    Some(socket.into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_sources_get_a_stateless_403_in_reject_mode() {
    if sipp_missing() {
        return;
    }
    let fixture = Fixture::start(FixtureOptions {
        daemon: DaemonOptions {
            env: vec![("SWITCHBOARD_SIP_UNTRUSTED".into(), "reject".into())],
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let sipp = Sipp::new("uac_reject_403.xml", fixture.daemon.sip_udp).local_ip(loopback(2));
    expect_sipp_ok(&fixture.daemon, sipp).await;
}

/// Runs SIPVicious `tool` (`svmap`, `svwar`, `svcrack`; PyPI `sipvicious`, installed by
/// tests/run.sh into a venv on PATH) from `source`, through `tests/sipvicious/bound.py`
/// because svwar and svcrack ignore their own `-b`.
fn sipvicious(source: IpAddr, tool: &str, args: &[&str]) -> String {
    let entry = Command::new("sh")
        .arg("-c")
        .arg("command -v sipvicious_svmap")
        .output()
        .expect("sh");
    let entry = String::from_utf8_lossy(&entry.stdout).trim().to_owned();
    let python = std::path::Path::new(&entry).with_file_name("python3");
    let shim =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/sipvicious/bound.py");
    let output = Command::new(python)
        .arg(shim)
        .arg(source.to_string())
        .arg(tool)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {tool}: {e}"));
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

async fn sipvicious_from(source: IpAddr, tool: &'static str, args: Vec<String>) -> String {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        sipvicious(source, tool, &args)
    })
    .await
    .expect("sipvicious thread")
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| (*a).to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sipvicious_finds_nothing_from_an_untrusted_address() {
    if sipp_missing() || tool_missing("sipvicious_svmap", "PyPI sipvicious, see tests/run.sh") {
        return;
    }
    let fixture = Fixture::start(FixtureOptions::default()).await;
    let target = fixture.daemon.sip_udp;
    let port = target.port().to_string();
    let found = format!("127.0.0.1:{port}");
    let map = sipvicious_from(loopback(2), "svmap", strings(&["-p", &port, "127.0.0.1"])).await;
    assert!(!map.contains(&found), "svmap found the gateway:\n{map}");
    // 21 numbers around the configured one, written `+<digits>` by the template.
    let war = sipvicious_from(
        loopback(2),
        "svwar",
        strings(&[
            "-m",
            "INVITE",
            "-e",
            "918047167990-918047168010",
            "-T",
            "+%d",
            "-p",
            &port,
            "127.0.0.1",
        ]),
    )
    .await;
    assert!(
        !war.contains("8047168000"),
        "svwar enumerated the number:\n{war}"
    );
    let metrics = fixture.daemon.admin().metrics().expect("metrics");
    assert_eq!(
        metric(&metrics, "switchboard_sip_responses_total", ""),
        0.0,
        "nothing answered\n{metrics}"
    );
    let dropped = metric(
        &metrics,
        "switchboard_sip_dropped_total",
        "reason=\"untrusted\"",
    );
    assert!(
        dropped >= 2.0,
        "the scans never reached the gateway\n{map}\n{war}"
    );
    // Unanswered, svwar gives up after its first probe.
    assert!(war.contains("timed out"), "svwar got an answer:\n{war}");
    // The control: from the trunk's own address svmap does find it (its OPTIONS get 200).
    let control = sipvicious_from(loopback(1), "svmap", strings(&["-p", &port, "127.0.0.1"])).await;
    assert!(control.contains(&found), "svmap from the trunk:\n{control}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sipvicious_password_guessing_gets_the_source_banned() {
    if sipp_missing() || tool_missing("sipvicious_svcrack", "PyPI sipvicious, see tests/run.sh") {
        return;
    }
    let password = "not-in-any-dictionary";
    let fixture = Fixture::start(FixtureOptions {
        digest: Some(("trunkuser", password)),
        ..Default::default()
    })
    .await;
    let target = fixture.daemon.sip_udp;
    // The trunk widens its allowlist to 127.0.0.0/24 (digest makes that safe), so 127.0.0.7
    // is trusted by CIDR: it gets challenges and may guess until it is banned.
    fixture
        .daemon
        .admin()
        .put_connection(CONNECTION, &["127.0.0.0/24"], Some(("trunkuser", password)))
        .expect("connection");
    let port = target.port().to_string();
    let crack = sipvicious_from(
        loopback(7),
        "svcrack",
        strings(&[
            "-u",
            "trunkuser",
            "-e",
            CALLED,
            "-m",
            "INVITE",
            "-r",
            "1000-1100",
            "-p",
            &port,
            "--maximumtime",
            "3",
            "127.0.0.1",
        ]),
    )
    .await;
    let metrics = fixture.daemon.admin().metrics().expect("metrics");
    assert_eq!(
        metric(&metrics, "switchboard_sip_bans_total", ""),
        1.0,
        "svcrack output:\n{crack}\n{metrics}\n{}",
        tail(&fixture.daemon.log(), 40)
    );
    assert!(
        metric(
            &metrics,
            "switchboard_sip_dropped_total",
            "reason=\"banned\""
        ) > 0.0,
        "{crack}"
    );
    // Exactly the limit of wrong answers was heard before the ban.
    assert_eq!(
        metric(
            &metrics,
            "switchboard_sip_trunk_auth_total",
            "outcome=\"failed\""
        ),
        10.0,
        "{metrics}"
    );
    assert!(
        fixture.daemon.log().contains("banning 127.0.0.7"),
        "the ban names the guesser"
    );
    // The trunk itself is unaffected.
    let request_uri = format!("{CALLED}@{}:{};user=phone", target.ip(), target.port());
    let sipp = Sipp::new("uac_digest.xml", target)
        .arg("-au")
        .arg("trunkuser")
        .arg("-ap")
        .arg(password)
        .arg("-auth_uri")
        .arg(&request_uri);
    expect_sipp_ok(&fixture.daemon, sipp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_over_its_max_calls_per_second_gets_stateless_503s() {
    let fixture = Fixture::start(FixtureOptions::default()).await;
    let admin = fixture.daemon.admin();
    admin
        .ok(
            "PUT",
            &Admin::scoped(&format!("/connections/{CONNECTION}")),
            &serde_json::json!({
                "allowed_addresses": ["127.0.0.1/32"],
                "max_calls_per_second": 5
            }),
        )
        .expect("connection");
    // Paused: every call is refused by routing (480) unless the rate limit refuses it first.
    admin
        .set_status(&fixture.deployment_id, "pause")
        .expect("pause");
    let target = fixture.daemon.sip_udp;
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let from = socket.local_addr().unwrap();
    for i in 0..20 {
        let request = invite(from, target, CALLED, &format!("cps-{i}"));
        socket.send_to(request.as_bytes(), target).unwrap();
    }
    let mut statuses = Vec::new();
    let mut buf = [0u8; 4096];
    while statuses.len() < 20 {
        let n = socket.recv(&mut buf).expect("every INVITE is answered");
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        if text.starts_with("SIP/2.0 503") {
            assert!(text.contains("Retry-After: 1\r\n"), "{text}");
        }
        statuses.push(text[8..11].to_owned());
    }
    let over = statuses.iter().filter(|s| *s == "503").count();
    let routed = statuses.iter().filter(|s| *s == "480").count();
    // A burst of one second's worth (5) passes; the rest is over the rate.
    assert!((5..=7).contains(&routed), "{statuses:?}");
    assert_eq!(over + routed, 20, "{statuses:?}");
    let metrics = admin.metrics().expect("metrics");
    assert_eq!(metric(&metrics, "switchboard_sip_transactions", ""), 0.0);
}
