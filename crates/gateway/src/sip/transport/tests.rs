//! Screening, rate limits, rport and the UDP/TCP readers on real loopback sockets.
use super::*;

use crate::config::{SipConfig, UntrustedPolicy};
use switchboard_routing::model::{Connection, Scope};
use switchboard_routing::{Change, RoutingSettings, RoutingSnapshot, RoutingTable};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// A routing table whose one connection trusts `nets`.
fn table_trusting(nets: &[&str]) -> Arc<RoutingTable> {
    let table = RoutingTable::new(RoutingSnapshot::empty(RoutingSettings::default()).unwrap());
    let connection = Connection {
        connection_id: "trunk".into(),
        allowed_addresses: nets.iter().map(|n| n.parse().unwrap()).collect(),
        digest: None,
        provider: None,
        max_calls_per_second: None,
        media_encryption: Default::default(),
        headers_to_parameters: Default::default(),
        include_headers: Default::default(),
        transfer: Default::default(),
        media_addresses: Vec::new(),
    };
    table
        .apply(&[Change::UpsertConnection(Scope::new("o", "w"), connection)])
        .unwrap();
    Arc::new(table)
}

fn shared_with(
    per_second: u32,
    burst: u32,
    queue: usize,
    trusted: &[&str],
    sip: SipConfig,
) -> (ReaderShared, mpsc::Receiver<Inbound>) {
    let (tx, rx) = mpsc::channel(queue);
    let registry = prometheus::Registry::new();
    let metrics = SipMetrics::register(&registry).unwrap();
    let shared = ReaderShared {
        max_message_bytes: 2048,
        limiter: Arc::new(Mutex::new(RateLimiter::new(per_second, burst))),
        guard: Guard::new(table_trusting(trusted), &sip, metrics.clone()),
        tagger: StatelessTagger::new(7),
        metrics,
        engines: vec![tx].into(),
    };
    (shared, rx)
}

fn shared(per_second: u32, burst: u32, queue: usize) -> (ReaderShared, mpsc::Receiver<Inbound>) {
    shared_with(
        per_second,
        burst,
        queue,
        &["192.0.2.0/24", "127.0.0.1/32"],
        SipConfig::default(),
    )
}

#[test]
fn untrusted_sources_are_dropped_or_get_a_rare_stateless_403() {
    let stranger: SocketAddr = "198.51.100.9:5060".parse().unwrap();
    let (shared, _rx) = shared(1000, 1000, 16);
    assert_eq!(
        shared.screen(stranger, INVITE),
        Err(None),
        "drop by default"
    );
    assert!(shared
        .screen("192.0.2.1:5060".parse().unwrap(), INVITE)
        .is_ok());
    assert_eq!(
        shared
            .metrics
            .dropped
            .with_label_values(&["untrusted"])
            .get(),
        1
    );

    let reject = SipConfig {
        untrusted: UntrustedPolicy::Reject,
        ..SipConfig::default()
    };
    let (shared, _rx) = shared_with(1000, 1000, 16, &["192.0.2.0/24"], reject);
    let Err(Some(reply)) = shared.screen(stranger, INVITE) else {
        panic!("reject mode answers");
    };
    let text = String::from_utf8_lossy(&reply);
    assert!(text.starts_with("SIP/2.0 403 "), "{text}");
    assert!(text.contains("no connection allows 198.51.100.9"), "{text}");
    // The same request gets the same answer (the To tag is derived from it).
    assert_eq!(shared.screen(stranger, INVITE), Err(Some(reply)));
    // ACKs are never answered; the reply budget is small.
    let ack = b"ACK sip:x SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.9;branch=z9hG4bKa\r\n\r\n";
    assert_eq!(shared.screen(stranger, ack), Err(None));
    let answered = (0..100)
        .filter(|_| matches!(shared.screen(stranger, INVITE), Err(Some(_))))
        .count();
    assert!(answered < 20, "{answered} replies: a reflector");
}

#[test]
fn a_burst_of_malformed_messages_bans_the_source() {
    let sip = SipConfig {
        ban_malformed_messages: 3,
        ..SipConfig::default()
    };
    let (shared, _rx) = shared_with(1000, 1000, 64, &["192.0.2.0/24"], sip);
    let fuzzer: SocketAddr = "192.0.2.66:5060".parse().unwrap();
    let garbage = Bytes::from_static(b"INVITE sip:x SIP/2.0\r\nContent-Length: -5\r\n\r\n");
    for _ in 0..3 {
        assert!(shared.screen(fuzzer, &garbage).is_ok());
        shared.admit(fuzzer, Transport::Udp, garbage.clone());
    }
    assert_eq!(shared.screen(fuzzer, INVITE), Err(None), "banned");
    assert!(shared
        .screen("192.0.2.1:5060".parse().unwrap(), INVITE)
        .is_ok());
    assert_eq!(shared.metrics.bans.get(), 1);
    assert_eq!(
        shared.metrics.dropped.with_label_values(&["banned"]).get(),
        1
    );
}

const INVITE: &[u8] = b"INVITE sip:+918047168000@gw SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK-1\r\n\
Max-Forwards: 70\r\nTo: <sip:+918047168000@gw>\r\nFrom: <sip:a@b>;tag=x\r\n\
Call-ID: c1\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";

#[test]
fn over_limit_invites_get_a_stateless_503_with_retry_after() {
    let (shared, mut rx) = shared(1, 1, 16);
    let src: SocketAddr = "192.0.2.1:5060".parse().unwrap();
    assert!(shared
        .admit(src, Transport::Udp, Bytes::from_static(INVITE))
        .is_none());
    let reply = shared
        .admit(src, Transport::Udp, Bytes::from_static(INVITE))
        .unwrap();
    let text = String::from_utf8_lossy(&reply);
    assert!(text.starts_with("SIP/2.0 503 "), "{text}");
    assert!(text.contains("Retry-After: 2\r\n"), "{text}");
    assert!(text.contains("Call-ID: c1\r\n"), "{text}");
    // Within the reply interval a third INVITE is dropped silently.
    assert!(shared
        .admit(src, Transport::Udp, Bytes::from_static(INVITE))
        .is_none());
    assert_eq!(rx.try_recv().unwrap().source, src);
    assert!(rx.try_recv().is_err());
    assert_eq!(
        shared
            .metrics
            .rate_limited
            .with_label_values(&["503"])
            .get(),
        1
    );
    assert_eq!(
        shared
            .metrics
            .rate_limited
            .with_label_values(&["dropped"])
            .get(),
        1
    );
}

#[test]
fn a_full_queue_sheds_with_503_and_counts() {
    let (shared, _rx) = shared(1000, 1000, 1);
    let src: SocketAddr = "192.0.2.1:5060".parse().unwrap();
    assert!(shared
        .admit(src, Transport::Udp, Bytes::from_static(INVITE))
        .is_none());
    let reply = shared
        .admit(src, Transport::Udp, Bytes::from_static(INVITE))
        .unwrap();
    assert!(reply.starts_with(b"SIP/2.0 503 "));
    // Non-INVITEs are never answered statelessly.
    assert!(shared
        .admit(
            src,
            Transport::Udp,
            Bytes::from_static(b"OPTIONS sip:x SIP/2.0\r\n\r\n")
        )
        .is_none());
    assert_eq!(
        shared
            .metrics
            .queue_full
            .with_label_values(&["inbound"])
            .get(),
        2
    );
}

fn rport(raw: &'static [u8]) -> String {
    let parsed = OwnedMessage::parse(Bytes::from_static(raw)).unwrap();
    String::from_utf8_lossy(&request_rport(parsed).bytes()).into_owned()
}

#[test]
fn udp_requests_ask_for_rport_once() {
    let text = rport(INVITE);
    assert!(
        text.contains("Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK-1;rport\r\n"),
        "{text}"
    );
    let again = OwnedMessage::parse(Bytes::from(text.clone())).unwrap();
    assert_eq!(String::from_utf8_lossy(&request_rport(again).bytes()), text);
    // Only the first via-parm of a multi-value line is touched; folded lines work too.
    let text = rport(b"OPTIONS sip:x SIP/2.0\r\nv: SIP/2.0/UDP a;branch=z9hG4bK1 , SIP/2.0/UDP b;branch=z9hG4bK2\r\nf: <sip:a@b>;tag=1\r\nt: <sip:x>\r\ni: c\r\nCSeq: 1 OPTIONS\r\n\r\n");
    assert!(
        text.contains("v: SIP/2.0/UDP a;branch=z9hG4bK1;rport , SIP/2.0/UDP b"),
        "{text}"
    );
    let text = rport(b"OPTIONS sip:x SIP/2.0\r\nv: SIP/2.0/UDP a ;\r\n branch=z9hG4bK1\r\nf: <sip:a@b>;tag=1\r\nt: <sip:x>\r\ni: c\r\nCSeq: 1 OPTIONS\r\n\r\n");
    assert!(text.contains("branch=z9hG4bK1;rport\r\n"), "{text}");
    let response = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP a;branch=z9hG4bK1\r\n\r\n";
    assert!(!rport(response).contains("rport"));
}

#[test]
fn unparseable_requests_ask_for_rport_too() {
    let bad = Bytes::from_static(b"INVITE sip:x SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.53;branch=z9hG4bKk\r\nContent-Length: -5\r\n\r\n");
    let text = String::from_utf8_lossy(&raw_request_rport(bad)).into_owned();
    assert!(
        text.contains("Via: SIP/2.0/UDP 192.0.2.53;branch=z9hG4bKk;rport\r\n"),
        "{text}"
    );
    let already = Bytes::from_static(
        b"INVITE sip:x SIP/2.0\r\nv: SIP/2.0/UDP h;rport;branch=z9hG4bKk\r\n\r\n",
    );
    assert_eq!(raw_request_rport(already.clone()), already);
}

#[test]
fn mapped_addresses_are_canonical() {
    let mapped: SocketAddr = "[::ffff:192.0.2.1]:5060".parse().unwrap();
    assert_eq!(canonical(mapped), "192.0.2.1:5060".parse().unwrap());
    let v6: SocketAddr = "[2001:db8::1]:5060".parse().unwrap();
    assert_eq!(canonical(v6), v6);
}

#[tokio::test]
async fn udp_and_tcp_messages_reach_the_queue_and_tcp_replies_use_the_connection() {
    let (shared, mut rx) = shared(1000, 1000, 16);
    let listeners = Listeners::bind(
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
        None,
        2,
    )
    .await
    .unwrap();
    let udp_addr = listeners.udp[0].local_addr().unwrap();
    assert_eq!(
        listeners.udp[1].local_addr().unwrap(),
        udp_addr,
        "engines share the port"
    );
    let tcp_addr = listeners.tcp.local_addr().unwrap();
    let mut readers: Vec<UdpReader> = listeners
        .udp
        .iter()
        .map(|s| UdpReader::new(Arc::clone(s), &shared, RateLimiter::new(1000, 1000)))
        .collect();
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    let outbounds = listeners
        .spawn(shared.clone(), shutdown.clone(), &tasks)
        .unwrap();
    let outbound = &outbounds[0];

    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    client.send_to(INVITE, udp_addr).await.unwrap();
    // The kernel hands the datagram to one of the two sockets.
    let got = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            for reader in &mut readers {
                if let Some(Some(inbound)) = reader.try_take(&shared) {
                    return inbound;
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the datagram arrives");
    assert_eq!(
        (got.transport, got.source),
        (Transport::Udp, client.local_addr().unwrap())
    );
    let expected = request_rport(OwnedMessage::parse(Bytes::from_static(INVITE)).unwrap());
    assert_eq!(
        got.message.bytes(),
        expected.bytes(),
        "UDP requests ask for rport"
    );
    assert!(outbound.send(Transport::Udp, got.source, Bytes::from_static(b"pong")));
    let mut reply = [0u8; 16];
    let (n, _) = client.recv_from(&mut reply).await.unwrap();
    assert_eq!(&reply[..n], b"pong");

    // Two messages in one TCP segment, the second split across writes.
    let mut stream = TcpStream::connect(tcp_addr).await.unwrap();
    let (first, second) = INVITE.split_at(40);
    stream.write_all(&[INVITE, first].concat()).await.unwrap();
    let got = rx.recv().await.unwrap();
    assert_eq!(got.transport, Transport::Tcp);
    stream.write_all(second).await.unwrap();
    let again = rx.recv().await.unwrap();
    assert_eq!(
        &again.message.bytes()[..],
        INVITE,
        "TCP requests pass unchanged"
    );
    assert!(outbound.send(
        Transport::Tcp,
        got.source,
        Bytes::from_static(b"SIP/2.0 200 OK\r\n")
    ));
    let mut reply = [0u8; 16];
    stream.read_exact(&mut reply).await.unwrap();
    assert_eq!(&reply, b"SIP/2.0 200 OK\r\n");

    // A stream that cannot be framed is closed.
    stream
        .write_all(b"INVITE sip:x SIP/2.0\r\nContent-Length: -5\r\n\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
    assert!(
        matches!(closed, Ok(Ok(_))),
        "connection not closed: {closed:?}"
    );
    shutdown.cancel();
    tasks.close();
    tasks.wait().await;
}

#[test]
fn a_call_id_always_has_the_same_owner_and_owners_spread() {
    let inbound = |call_id: &str| {
        let raw =
            String::from_utf8_lossy(INVITE).replace("Call-ID: c1", &format!("Call-ID: {call_id}"));
        Inbound {
            source: "192.0.2.1:5060".parse().unwrap(),
            transport: Transport::Udp,
            message: Parsed::Message(Box::new(OwnedMessage::parse(Bytes::from(raw)).unwrap())),
        }
    };
    assert_eq!(owner(&inbound("a@b"), 4), owner(&inbound("a@b"), 4));
    assert_eq!(owner(&inbound("a@b"), 1), 0);
    let mut seen = [0usize; 4];
    for i in 0..400 {
        seen[owner(&inbound(&format!("call-{i}@host")), 4)] += 1;
    }
    assert!(seen.iter().all(|&n| n > 50), "{seen:?}");
    let unparsed = Inbound {
        source: "192.0.2.1:5060".parse().unwrap(),
        transport: Transport::Udp,
        message: Parsed::Unparsed(Bytes::from_static(b"garbage")),
    };
    assert_eq!(owner(&unparsed, 4), 0);
}
