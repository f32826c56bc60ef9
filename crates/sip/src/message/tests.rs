use super::*;

const INVITE: &[u8] = b"INVITE sip:+14155550123@gw.example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK776asdhds;rport\r\n\
Max-Forwards: 70\r\n\
To: <sip:+14155550123@gw.example.com>\r\n\
From: \"Alice\" <sip:+14085550100@carrier.example.net>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710@pc33.example.net\r\n\
CSeq: 314159 INVITE\r\n\
Contact: <sip:+14085550100@192.0.2.1:5060>\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 4\r\n\
\r\n\
v=0\r\ntrailing";

#[test]
fn indexes_and_frames_a_request() {
    let m = parse(INVITE).unwrap();
    assert!(m.is_request());
    assert_eq!(m.method(), Some("INVITE"));
    assert_eq!(m.known_method(), Some(Method::Invite));
    assert_eq!(m.header_count(), 9);
    assert_eq!(m.body(), b"v=0\r");
    assert_eq!(m.content_length(), Some(4));
    let via = m.via().unwrap();
    assert_eq!(via.branch(), Some("z9hG4bK776asdhds"));
    assert_eq!(m.from().unwrap().tag(), Some("1928301774"));
    assert_eq!(m.to().unwrap().tag(), None);
    assert_eq!(m.call_id().unwrap(), "a84b4c76e66710@pc33.example.net");
    assert_eq!(m.cseq().unwrap().seq, 314159);
    assert_eq!(m.max_forwards().unwrap(), Some(70));
    assert!(m.content_type().unwrap().unwrap().is("application", "sdp"));
    assert!(m.contact().unwrap().is_some());
    match m.request_uri().unwrap() {
        Uri::Sip(u) => assert_eq!(u.user, Some("+14155550123")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn round_trip_and_owned() {
    let m = parse(INVITE).unwrap();
    let printed = m.to_vec();
    let again = parse(&printed).unwrap();
    assert_eq!(m, again);
    let owned = OwnedMessage::parse(Bytes::from_static(INVITE)).unwrap();
    assert_eq!(owned.message(), m);
    assert!(owned.bytes().ends_with(b"v=0\r"));
    assert_eq!(m.to_owned_message(), owned);
}

#[test]
fn folds_compact_forms_and_spacing() {
    let raw = b"OPTIONS sip:a@b SIP/2.0\r\nTO :\r\n sip:x@y ;tag=1\r\nf: <sip:c@d>\r\n ;tag=2\r\nl: 0\r\n\r\n";
    let m = parse(raw).unwrap();
    assert_eq!(m.to().unwrap().tag(), Some("1"));
    assert_eq!(m.from().unwrap().tag(), Some("2"));
    assert_eq!(m.header(HeaderName::To).unwrap().value, b"sip:x@y ;tag=1");
    assert_eq!(parse(&m.to_vec()).unwrap(), m);
}

#[test]
fn responses() {
    let m = parse(b"SIP/2.0 180 Ringing\r\nContent-Length: 0\r\n\r\n").unwrap();
    assert_eq!(m.status(), Some(180));
    assert_eq!(m.reason_phrase(), Some(&b"Ringing"[..]));
    let e = parse(b"SIP/2.0 4294967301 big\r\n\r\n").unwrap_err();
    assert_eq!(e.response_status(), None);
    let e = parse(b"SIP/2.0 200 OK\r\nContent-Length: 10\r\n\r\nabc").unwrap_err();
    assert_eq!(e.response_status(), None);
}

#[test]
fn framing_errors() {
    let e = parse(b"OPTIONS sip:a@b SIP/2.0\r\nl: 10\r\n\r\nabc").unwrap_err();
    assert!(matches!(
        e,
        SipError::ContentLengthExceedsDatagram {
            declared: 10,
            available: 3
        }
    ));
    let e = parse(b"OPTIONS sip:a@b SIP/2.0\r\nl: 1\r\nContent-Length: 2\r\n\r\nabc").unwrap_err();
    assert!(matches!(e, SipError::ConflictingContentLength { .. }));
    assert_eq!(parse(b"\r\n\r\n").unwrap_err(), SipError::Empty);
    assert_eq!(
        parse(b"OPTIONS sip:a@b SIP/2.0\r\nTo: x\r\n").unwrap_err(),
        SipError::IncompleteHeaders
    );
    let e = parse(b"OPTIONS sip:a@b SIP/3.0\r\n\r\n").unwrap_err();
    assert_eq!(e.response_status(), Some(505));
    let e = parse(b"OPTIONS sip:a@b HTTP/1.1\r\n\r\n").unwrap_err();
    assert_eq!(e.response_status(), Some(400));
    let e = parse(b"OPTIONS sip:a@b SIP/2.0\r\nBad Name: x\r\n\r\n").unwrap_err();
    assert!(matches!(e, SipError::BadHeaderLine { line: 2, .. }));
}

#[test]
fn token_lists_and_identity_headers() {
    let raw = b"OPTIONS sip:a@b SIP/2.0\r\nSupported: 100rel, timer\r\nk: replaces\r\nAllow: INVITE,,ACK\r\n\
P-Asserted-Identity: \"Alice, A\" <sip:+14085550100@c.example.net>, <tel:+14085550100>\r\n\
Diversion: <sip:+14155550000@c.example.net>;reason=unconditional;counter=1\r\n\
Remote-Party-ID: \"A\" <sip:+1408@c>;party=calling;screen=yes;privacy=off\r\nContact: *\r\n\r\n";
    let m = parse(raw).unwrap();
    let sup: Result<Vec<_>, _> = m.supported().collect();
    assert_eq!(sup.unwrap(), vec!["100rel", "timer", "replaces"]);
    assert!(m.allow().any(|r| r.is_err()));
    let pai: Vec<_> = m.p_asserted_identity().map(|r| r.unwrap()).collect();
    assert_eq!(pai.len(), 2);
    assert_eq!(pai[0].display_name().as_deref(), Some("Alice, A"));
    assert_eq!(pai[1].uri.user_or_number(), Some("+14085550100"));
    let div = m.diversion().next().unwrap().unwrap();
    assert_eq!(div.params.value("reason"), Some("unconditional"));
    let rpid = m.remote_party_id().next().unwrap().unwrap();
    assert_eq!(rpid.params.value("party"), Some("calling"));
    assert_eq!(m.contacts().next(), Some(Ok(ContactValue::Wildcard)));
    assert_eq!(m.contact(), Ok(None));
}

#[test]
fn many_headers_spill_and_cap() {
    let mut raw = b"OPTIONS sip:a@b SIP/2.0\r\n".to_vec();
    for i in 0..100 {
        raw.extend_from_slice(format!("Via: SIP/2.0/UDP h{i}\r\n").as_bytes());
    }
    raw.extend_from_slice(b"\r\n");
    let m = parse(&raw).unwrap();
    assert_eq!(m.vias().count(), 100);
    assert_eq!(m.vias().last().unwrap().unwrap().host.to_string(), "h99");
    let mut big = b"OPTIONS sip:a@b SIP/2.0\r\n".to_vec();
    for _ in 0..=MAX_HEADERS {
        big.extend_from_slice(b"X: y\r\n");
    }
    big.extend_from_slice(b"\r\n");
    assert!(matches!(parse(&big), Err(SipError::TooManyHeaders { .. })));
}
