//! RFC 4475 / RFC 5118 torture corpus: every file of `../shared/sip-torture/manifest.tsv`
//! against the codec's verdict, plus field checks on the messages that parse.
//!
//! The verdict of the codec is what a UAS built on it does before application logic:
//! `parse` → `validate` → `check_require(SUPPORTED)`. Some manifest actions are decisions
//! above the codec (501 for an unknown method, 415 for an unknown body type, 483 for a proxy,
//! 406 for Accept): for those the codec must accept the message and expose the field the
//! decision needs; the table below says which.
//!
//! Choices where RFC 4475 allows "reject 400 or be liberal":
//! - lwsstart (§3.1.2.9), trws (§3.1.2.10): liberal — extra SP in the request line is
//!   ignored; the printer never forwards it (checked below).
//! - ltgtruri (§3.1.2.7): reject 400 (`<` is not a scheme character).
//! - escruri (§3.1.2.11): reject 400 (RFC 3261 §19.1.1: no headers in a Request-URI).
//! - baddate (§3.1.2.12): liberal — the gateway never interprets Date.
//! - badaspec (§3.1.2.14): reject 400 (white space inside `<>`).
//! - regbadct, baddn, quotbal (§3.1.2.13, .15, .6): reject 400.
//!
//! Exception to the manifest's first choice (allowed by the RFC's own text):
//! - mismatch02 (§3.1.2.18): the RFC prefers 501 (unknown method) but accepts 400; the codec
//!   answers 400 for the CSeq mismatch because it does not know which methods the
//!   application implements.
//!
//! RFC 5118 files are not wire format (bare LF, two without the empty line, two with wrong
//! Content-Length; see the corpus README). Each is run twice: the raw bytes (must not panic;
//! the verdict is recorded in the table) and a wire form made here (LF→CRLF, header section
//! closed, Content-Length recounted), which must meet the RFC's expectation.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use bytes::BytesMut;
use switchboard_sip::{
    parse, ContactValue, Frame, HeaderName, Host, Message, Rport, SipError, SipUri, StreamDecoder,
    Transport, Uri,
};

/// What a UAS built on this codec does with the message before application logic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Accept,
    Reject(u16),
    Discard,
}
use Verdict::{Accept, Discard, Reject};

/// Option tags the gateway supports (for the 420 check of bext01).
const SUPPORTED: &[&str] = &["100rel", "timer", "replaces"];

fn verdict(bytes: &[u8]) -> (Verdict, Option<SipError>) {
    let classify = |e: SipError| match e.response_status() {
        Some(code) => (Reject(code), Some(e)),
        None => (Discard, Some(e)),
    };
    let m = match parse(bytes) {
        Ok(m) => m,
        Err(e) => return classify(e),
    };
    if let Err(e) = m.validate() {
        return classify(e);
    }
    if m.is_request() {
        if let Err(e) = m.check_require(SUPPORTED) {
            return classify(e);
        }
    }
    (Accept, None)
}

type Check = fn(&Message<'_>);

struct Case {
    file: &'static str,
    verdict: Verdict,
    /// Verdict on the raw bytes of an RFC 5118 file (not wire format); `None` for RFC 4475.
    raw_verdict: Option<Verdict>,
    /// Field checks on accepted messages (or on the parsed message of a semantic reject).
    check: Option<Check>,
    /// What the verdict means relative to the manifest's action, when they differ in form.
    note: &'static str,
}

const fn case(file: &'static str, verdict: Verdict, check: Option<Check>) -> Case {
    Case {
        file,
        verdict,
        raw_verdict: None,
        check,
        note: "",
    }
}

fn sip<'a>(u: &Uri<'a>) -> SipUri<'a> {
    match u {
        Uri::Sip(s) => *s,
        other => panic!("expected a SIP URI, got {other:?}"),
    }
}

fn user_decoded(u: &Uri<'_>) -> Vec<u8> {
    sip(u).user_decoded().expect("user part").into_owned()
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

fn cases() -> Vec<Case> {
    vec![
        // ---- RFC 4475 §3.1.1: valid messages -------------------------------------------
        case(
            "rfc4475/wsinv.dat",
            Accept,
            Some(|m| {
                let to = m.to().unwrap();
                assert_eq!(to.tag(), Some("1918181833n"));
                assert_eq!(sip(&to.uri).user, Some("vivekg"));
                let from = m.from().unwrap();
                assert_eq!(from.display_name().as_deref(), Some(r#"J Rosenberg \""#));
                assert_eq!(from.tag(), Some("98asjd8"));
                assert_eq!(m.max_forwards().unwrap(), Some(68));
                let cseq = m.cseq().unwrap();
                assert_eq!((cseq.seq, cseq.method), (9, "INVITE"));
                let vias: Vec<_> = m.vias().map(Result::unwrap).collect();
                assert_eq!(vias.len(), 3);
                assert_eq!(vias[0].host, Host::Ipv4(Ipv4Addr::new(192, 0, 2, 2)));
                assert_eq!(vias[0].branch(), Some("390skdjuw"));
                assert_eq!(vias[1].transport_kind(), Some(Transport::Tcp));
                assert_eq!(vias[1].host, Host::Domain("spindle.example.com"));
                assert_eq!(vias[1].branch(), Some("z9hG4bK9ikj8"));
                assert_eq!(vias[2].branch(), Some("z9hG4bK30239"));
                let contact = m.contact().unwrap().unwrap();
                assert_eq!(
                    contact.display_name().as_deref(),
                    Some(r#"Quoted string """#)
                );
                assert_eq!(contact.params.value("newparam"), Some("newvalue"));
                assert!(contact.params.contains("secondparam"));
                assert_eq!(contact.params.value("q"), Some("0.33"));
                let odd = m.header_by_name("UnknownHeaderWithUnusualValue").unwrap();
                assert_eq!(odd.value, b";;,,;;,;");
                let nf = m
                    .header_by_name("NewFangledHeader")
                    .unwrap()
                    .value_str()
                    .unwrap();
                assert!(
                    nf.starts_with("newfangled value")
                        && nf.ends_with("continued newfangled value")
                );
                assert_eq!(m.header(HeaderName::Subject).unwrap().value, b"");
                let route = m.routes().next().unwrap().unwrap();
                assert!(route.uri.params().contains("lr"));
                assert_eq!(m.body().len(), 150);
            }),
        ),
        case(
            "rfc4475/intmeth.dat",
            Accept,
            Some(|m| {
                let method = "!interesting-Method0123456789_*+`.%indeed'~";
                assert_eq!(m.method(), Some(method));
                assert_eq!(
                    m.known_method(),
                    None,
                    "unknown method: the application answers 501"
                );
                assert_eq!(m.cseq().unwrap().method, method);
                let ruri = sip(&m.request_uri().unwrap());
                assert_eq!(
                    ruri.user,
                    Some("1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*")
                );
                assert_eq!(
                    ruri.password,
                    Some("&it+has=1,weird!*pas$wo~d_too.(doesn't-it)")
                );
                assert_eq!(ruri.host, Host::Domain("example.com"));
                let to = m.to().unwrap();
                assert_eq!(
                    to.display_name().as_deref(),
                    Some("BEL:\x07 NUL:\0 DEL:\x7f")
                );
                let from = m.from().unwrap();
                assert_eq!(
                    from.display_name().as_deref(),
                    Some("token1~` token2'+_ token3*%!.-")
                );
                assert_eq!(from.tag(), Some("_token~1'+`*%!-."));
                assert_eq!(
                    m.call_id().unwrap(),
                    r#"intmeth.word%ZK-!.*_+'@word`~)(><:\/"][?}{"#
                );
                assert!(m.header_by_name("extensionHeader-!.%*+_`'~").is_some());
                assert_eq!(m.max_forwards().unwrap(), Some(255));
            }),
        ),
        case(
            "rfc4475/esc01.dat",
            Accept,
            Some(|m| {
                assert_eq!(
                    user_decoded(&m.request_uri().unwrap()),
                    b"sips:user@example.com"
                );
                assert_eq!(user_decoded(&m.to().unwrap().uri), b"user");
                assert_eq!(user_decoded(&m.from().unwrap().uri), b"I have spaces");
                let contact = m.contact().unwrap().unwrap();
                assert_eq!(user_decoded(&contact.uri), b"caller");
                let params: Vec<_> = contact
                    .uri
                    .params()
                    .iter()
                    .map(|p| {
                        (
                            switchboard_sip::percent_decode(p.name).into_owned(),
                            p.value
                                .map(|v| switchboard_sip::percent_decode(v).into_owned()),
                        )
                    })
                    .collect();
                assert_eq!(
                    params,
                    vec![
                        (b"lr".to_vec(), None),
                        (b"name".to_vec(), Some(b"value%41".to_vec()))
                    ]
                );
            }),
        ),
        case(
            "rfc4475/escnull.dat",
            Accept,
            Some(|m| {
                assert_eq!(user_decoded(&m.to().unwrap().uri), b"null-\0-null");
                let users: Vec<_> = m
                    .contacts()
                    .map(|c| match c.unwrap() {
                        ContactValue::Address(a) => user_decoded(&a.uri),
                        ContactValue::Wildcard => panic!("wildcard"),
                    })
                    .collect();
                assert_eq!(users, vec![b"\0".to_vec(), b"\0\0".to_vec()]);
            }),
        ),
        case(
            "rfc4475/esc02.dat",
            Accept,
            Some(|m| {
                assert_eq!(m.method(), Some("RE%47IST%45R"));
                assert_eq!(
                    m.known_method(),
                    None,
                    "not REGISTER: the application answers 501"
                );
                let hosts: Vec<_> = m
                    .contacts()
                    .map(|c| match c.unwrap() {
                        ContactValue::Address(a) => sip(&a.uri).host.to_string(),
                        ContactValue::Wildcard => panic!("wildcard"),
                    })
                    .collect();
                assert_eq!(hosts, vec!["host1.example.com", "host3.example.com"]);
                assert!(m.header_by_name("C%6Fntact").is_some());
                assert_eq!(m.to().unwrap().display_name().as_deref(), Some("%Z%45"));
                assert_eq!(m.via().unwrap().branch(), Some("z9hG4bK209%fzsnel234"));
            }),
        ),
        case(
            "rfc4475/lwsdisp.dat",
            Accept,
            Some(|m| {
                let from = m.from().unwrap();
                assert_eq!(from.display_name().as_deref(), Some("caller"));
                assert_eq!(from.tag(), Some("323"));
            }),
        ),
        case(
            "rfc4475/longreq.dat",
            Accept,
            Some(|m| {
                let vias: Vec<_> = m.vias().map(Result::unwrap).collect();
                assert_eq!(vias.len(), 34);
                assert_eq!(vias[0].host, Host::Domain("sip33.example.com"));
                assert_eq!(
                    vias[33].received().and_then(|h| h.ip()),
                    Some(ip("192.0.2.5"))
                );
                let to = m.to().unwrap();
                assert!(to.display_name().unwrap().contains("extremeextreme"));
                assert_eq!(sip(&to.uri).port, Some(6000));
                assert!(m.from().unwrap().tag().unwrap().len() > 100);
                assert!(m.call_id().unwrap().starts_with("longreq.onereally"));
                assert_eq!(m.body().len(), 150);
            }),
        ),
        case(
            "rfc4475/dblreq.dat",
            Accept,
            Some(|m| {
                assert_eq!(m.method(), Some("REGISTER"));
                assert_eq!(m.body(), b"");
                assert!(!m.as_bytes().windows(6).any(|w| w == b"INVITE"));
            }),
        ),
        case(
            "rfc4475/semiuri.dat",
            Accept,
            Some(|m| {
                let ruri = m.request_uri().unwrap();
                assert_eq!(sip(&ruri).user, Some("user;par=u%40example.net"));
                assert_eq!(user_decoded(&ruri), b"user;par=u@example.net");
                assert!(sip(&ruri).params.is_empty());
                assert_eq!(m.list_elements(HeaderName::Accept).count(), 6);
            }),
        ),
        case(
            "rfc4475/transports.dat",
            Accept,
            Some(|m| {
                let t: Vec<_> = m.vias().map(|v| v.unwrap().transport).collect();
                assert_eq!(t, vec!["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]);
                assert_eq!(m.vias().nth(3).unwrap().unwrap().transport_kind(), None);
            }),
        ),
        case(
            "rfc4475/mpart01.dat",
            Accept,
            Some(|m| {
                assert_eq!(m.body().len(), 553);
                assert!(m.body().contains(&0));
                let ct = m.content_type().unwrap().unwrap();
                assert!(ct.is("multipart", "mixed"));
                assert_eq!(ct.params.value("boundary"), Some("7a9cbec02ceef655"));
                assert_eq!(m.via().unwrap().rport(), Some(Rport::Requested));
            }),
        ),
        case(
            "rfc4475/unreason.dat",
            Accept,
            Some(|m| {
                assert_eq!(m.status(), Some(200));
                let reason = std::str::from_utf8(m.reason_phrase().unwrap()).unwrap();
                assert!(reason.starts_with("= 2**3 * 5**2 "));
                assert_eq!(m.body().len(), 154);
            }),
        ),
        case(
            "rfc4475/noreason.dat",
            Accept,
            Some(|m| {
                assert_eq!(m.status(), Some(100));
                assert_eq!(m.reason_phrase(), Some(&b""[..]));
            }),
        ),
        // ---- RFC 4475 §3.1.2: invalid messages -----------------------------------------
        case("rfc4475/badinv01.dat", Reject(400), None),
        case("rfc4475/clerr.dat", Reject(400), None),
        case("rfc4475/ncl.dat", Reject(400), None),
        case("rfc4475/scalar02.dat", Reject(400), None),
        case("rfc4475/scalarlg.dat", Discard, None),
        case("rfc4475/quotbal.dat", Reject(400), None),
        case("rfc4475/ltgtruri.dat", Reject(400), None),
        case("rfc4475/lwsruri.dat", Reject(400), None),
        case(
            "rfc4475/lwsstart.dat",
            Accept,
            Some(|m| {
                assert_eq!(m.request_uri_raw(), Some(&b"sip:user@example.com"[..]));
                assert!(m
                    .to_vec()
                    .starts_with(b"INVITE sip:user@example.com SIP/2.0\r\n"));
            }),
        ),
        case(
            "rfc4475/trws.dat",
            Accept,
            Some(|m| {
                assert!(m
                    .to_vec()
                    .starts_with(b"OPTIONS sip:remote-target@example.com SIP/2.0\r\n"));
            }),
        ),
        case("rfc4475/escruri.dat", Reject(400), None),
        case(
            "rfc4475/baddate.dat",
            Accept,
            Some(|m| {
                assert!(m.header(HeaderName::Date).is_some());
            }),
        ),
        case("rfc4475/regbadct.dat", Reject(400), None),
        case("rfc4475/badaspec.dat", Reject(400), None),
        case("rfc4475/baddn.dat", Reject(400), None),
        case("rfc4475/badvers.dat", Reject(505), None),
        case("rfc4475/mismatch01.dat", Reject(400), None),
        Case {
            note: "RFC prefers 501 for the unknown method; 400 (CSeq mismatch) is allowed",
            ..case("rfc4475/mismatch02.dat", Reject(400), None)
        },
        case("rfc4475/bigcode.dat", Discard, None),
        // ---- RFC 4475 §3.2-§3.4: syntactically valid, semantically tortuous --------------
        case(
            "rfc4475/badbranch.dat",
            Accept,
            Some(|m| {
                let via = m.via().unwrap();
                assert_eq!(via.branch(), Some("z9hG4bK"));
                assert!(!via.has_rfc3261_branch(), "bare cookie: RFC 2543 matching");
            }),
        ),
        case("rfc4475/insuf.dat", Reject(400), None),
        case("rfc4475/unkscm.dat", Reject(416), None),
        case("rfc4475/novelsc.dat", Reject(416), None),
        Case {
            note: "the gateway is not a registrar: opaque URIs in To/From/Contact are kept",
            ..case(
                "rfc4475/unksm2.dat",
                Accept,
                Some(|m| {
                    assert!(matches!(m.to().unwrap().uri, Uri::Absolute(a) if a.scheme == "isbn"));
                    assert!(
                        matches!(m.from().unwrap().uri, Uri::Absolute(a) if a.scheme == "http")
                    );
                    let c = m.contact().unwrap().unwrap();
                    assert!(matches!(c.uri, Uri::Absolute(a) if a.opaque == "John_Smith"));
                }),
            )
        },
        case(
            "rfc4475/bext01.dat",
            Reject(420),
            Some(|m| {
                assert_eq!(
                    m.unsupported_requirements(SUPPORTED).unwrap(),
                    vec!["nothingSupportsThis", "nothingSupportsThisEither"]
                );
                match m.check_proxy_require(SUPPORTED) {
                    Err(SipError::BadExtension { unsupported }) => assert_eq!(
                        unsupported,
                        vec!["noProxiesSupportThis", "norDoAnyProxiesSupportThis"]
                    ),
                    other => panic!("{other:?}"),
                }
            }),
        ),
        Case {
            note: "415 is the application's answer to the body type the codec exposes",
            ..case(
                "rfc4475/invut.dat",
                Accept,
                Some(|m| {
                    assert!(m
                        .content_type()
                        .unwrap()
                        .unwrap()
                        .is("application", "unknownformat"));
                    assert_eq!(m.body().len(), 40);
                }),
            )
        },
        case(
            "rfc4475/regaut01.dat",
            Accept,
            Some(|m| {
                let auth = m.header(HeaderName::Authorization).unwrap();
                assert_eq!(auth.value, b"NoOneKnowsThisScheme opaque-data=here");
                assert_eq!(m.content_length(), Some(0));
            }),
        ),
        case("rfc4475/multi01.dat", Reject(400), None),
        case("rfc4475/mcl01.dat", Reject(400), None),
        Case {
            note: "an endpoint/proxy drops it on the broadcast Via the codec exposes",
            ..case(
                "rfc4475/bcast.dat",
                Accept,
                Some(|m| {
                    let second = m.vias().nth(1).unwrap().unwrap();
                    assert_eq!(second.host, Host::Ipv4(Ipv4Addr::BROADCAST));
                }),
            )
        },
        Case {
            note: "483 is a proxy's answer; an endpoint processes Max-Forwards 0 normally",
            ..case(
                "rfc4475/zeromf.dat",
                Accept,
                Some(|m| {
                    assert_eq!(m.max_forwards().unwrap(), Some(0));
                }),
            )
        },
        case(
            "rfc4475/cparam01.dat",
            Accept,
            Some(|m| {
                let c = m.contact().unwrap().unwrap();
                assert!(!c.bracketed);
                assert!(c.params.contains("unknownparam"));
                assert!(c.uri.params().is_empty());
                assert_eq!(c.uri.user_or_number(), Some("+19725552222"));
            }),
        ),
        case(
            "rfc4475/cparam02.dat",
            Accept,
            Some(|m| {
                let c = m.contact().unwrap().unwrap();
                assert!(c.params.is_empty());
                assert!(c.uri.params().contains("unknownparam"));
            }),
        ),
        case(
            "rfc4475/regescrt.dat",
            Accept,
            Some(|m| {
                let c = m.contact().unwrap().unwrap();
                assert_eq!(sip(&c.uri).headers, Some("Route=%3Csip:sip.example.com%3E"));
                assert_eq!(m.count(HeaderName::Route), 0);
            }),
        ),
        Case {
            note: "406 is the application's answer to the Accept header the codec exposes",
            ..case(
                "rfc4475/sdp01.dat",
                Accept,
                Some(|m| {
                    assert_eq!(
                        m.header(HeaderName::Accept).unwrap().value,
                        b"text/nobodyKnowsThis"
                    );
                }),
            )
        },
        case(
            "rfc4475/inv2543.dat",
            Accept,
            Some(|m| {
                assert_eq!(m.content_length(), None);
                assert!(m.body().starts_with(b"v=0") && m.body().ends_with(b"RTP/AVP 0\r\n"));
                assert_eq!(m.max_forwards().unwrap(), None);
                assert_eq!(m.via().unwrap().branch(), None);
                assert_eq!(m.from().unwrap().tag(), None);
                assert!(sip(&m.from().unwrap().uri).is_phone());
                // addr-spec form: ";user=phone" after a bare URI is a header parameter (§20).
                let to = m.to().unwrap();
                assert!(!sip(&to.uri).is_phone() && to.params.value("user") == Some("phone"));
            }),
        ),
        // ---- RFC 5118 ---------------------------------------------------------------------
        v6(
            "rfc5118/ipv6-good.dat",
            Accept,
            Accept,
            Some(|m| {
                let r = sip(&m.request_uri().unwrap());
                assert_eq!(r.host.ip(), Some(ip("2001:db8::10")));
                assert_eq!(r.port, None);
                assert_eq!(m.via().unwrap().host.ip(), Some(ip("2001:db8::9:1")));
                let c = m.contact().unwrap().unwrap();
                assert_eq!(sip(&c.uri).host.ip(), Some(ip("2001:db8::1")));
            }),
        ),
        v6("rfc5118/ipv6-bad.dat", Reject(400), Reject(400), None),
        v6(
            "rfc5118/port-ambiguous.dat",
            Accept,
            Accept,
            Some(|m| {
                let r = sip(&m.request_uri().unwrap());
                assert_eq!(r.host.ip(), Some(ip("2001:db8::10:5070")));
                assert_eq!(r.port, None);
            }),
        ),
        v6(
            "rfc5118/port-unambiguous.dat",
            Accept,
            Accept,
            Some(|m| {
                let r = sip(&m.request_uri().unwrap());
                assert_eq!(r.host.ip(), Some(ip("2001:db8::10")));
                assert_eq!(r.port, Some(5070));
            }),
        ),
        v6(
            "rfc5118/via-received-param-with-delim.dat",
            Accept,
            Accept,
            Some(|m| {
                let received = m.via().unwrap().received().unwrap();
                assert_eq!(received.ip(), Some(ip("2001:db8::9:255")));
            }),
        ),
        v6(
            "rfc5118/via-received-param-no-delim.dat",
            Accept,
            Accept,
            Some(|m| {
                let received = m.via().unwrap().received().unwrap();
                assert_eq!(received.ip(), Some(ip("2001:db8::9:255")));
            }),
        ),
        v6(
            "rfc5118/ipv6-in-sdp.dat",
            Accept,
            Reject(400),
            Some(|m| {
                assert!(m.body().windows(20).any(|w| w == b"IN IP6 2001:db8::20\r"));
                assert_eq!(m.content_length(), Some(m.body().len()));
            }),
        ),
        v6(
            "rfc5118/mult-ip-in-header.dat",
            Accept,
            Accept,
            Some(|m| {
                let vias: Vec<_> = m.vias().map(Result::unwrap).collect();
                assert_eq!(vias.len(), 3);
                assert_eq!(vias[0].host.ip(), Some(ip("2001:db8::9:1")));
                assert_eq!(vias[0].port, Some(6050));
                assert_eq!(vias[1].host.ip(), Some(ip("192.0.2.1")));
                assert_eq!(vias[2].transport_kind(), Some(Transport::Tcp));
                assert_eq!(
                    vias[2].received().and_then(|h| h.ip()),
                    Some(ip("192.0.2.200"))
                );
            }),
        ),
        v6(
            "rfc5118/mult-ip-in-sdp.dat",
            Accept,
            Reject(400),
            Some(|m| {
                assert!(m.body().windows(11).any(|w| w == b"IN IP6 2001"));
                assert!(m.body().windows(11).any(|w| w == b"IN IP4 192."));
            }),
        ),
        v6(
            "rfc5118/ipv4-mapped-ipv6.dat",
            Accept,
            Accept,
            Some(|m| {
                let via = m.via().unwrap();
                assert_eq!(via.host.ip(), Some(ip("::ffff:192.0.2.10")));
                assert_eq!(via.port, Some(19823));
                assert_eq!(
                    m.vias().nth(1).unwrap().unwrap().host.ip(),
                    Some(ip("::ffff:192.0.2.2"))
                );
            }),
        ),
        Case {
            note: "three colons are not a valid IPv6 address; RFC 5118 §4.10 says tolerate it",
            ..v6(
                "rfc5118/ipv6-bug-abnf-3-colons.dat",
                Accept,
                Reject(400),
                Some(|m| {
                    let r = sip(&m.request_uri().unwrap());
                    assert!(matches!(
                        r.host,
                        Host::Ipv6 {
                            text: "2001:db8:::192.0.2.1",
                            addr: None
                        }
                    ));
                }),
            )
        },
        v6(
            "rfc5118/ipv6-correct-abnf-2-colons.dat",
            Accept,
            Reject(400),
            Some(|m| {
                let r = sip(&m.request_uri().unwrap());
                assert_eq!(r.host.ip(), Some(ip("2001:db8::192.0.2.1")));
            }),
        ),
    ]
}

/// An RFC 5118 case: `wire` is the verdict on the wire form, `raw` on the archive bytes
/// (bare LF is accepted; the two §4.10 files lack the empty line → 400; ipv6-in-sdp and
/// mult-ip-in-sdp declare more octets than their LF bodies hold → 400).
fn v6(file: &'static str, wire: Verdict, raw: Verdict, check: Option<Check>) -> Case {
    Case {
        raw_verdict: Some(raw),
        ..case(file, wire, check)
    }
}

/// Converts an RFC 5118 archive file into wire form: LF→CRLF, close the header section,
/// recount Content-Length.
fn wire_form(raw: &[u8]) -> Vec<u8> {
    let text = String::from_utf8(raw.to_vec()).expect("RFC 5118 files are text");
    let crlf = text.replace("\r\n", "\n").replace('\n', "\r\n");
    let (head, body) = match crlf.find("\r\n\r\n") {
        Some(i) => (crlf[..i].to_string(), crlf[i + 4..].to_string()),
        None => (crlf.trim_end_matches("\r\n").to_string(), String::new()),
    };
    let head: Vec<String> = head
        .split("\r\n")
        .map(|line| {
            if line.to_ascii_lowercase().starts_with("content-length") {
                format!("Content-Length: {}", body.len())
            } else {
                line.to_string()
            }
        })
        .collect();
    format!("{}\r\n\r\n{}", head.join("\r\n"), body).into_bytes()
}

/// Coarse class of a manifest action, where the text states it outright.
fn manifest_class(action: &str) -> Option<Verdict> {
    let a = action.to_ascii_lowercase();
    if a.contains("505") {
        Some(Reject(505))
    } else if a.contains("416") {
        Some(Reject(416))
    } else if a.contains("420") {
        Some(Reject(420))
    } else if a.contains("silently") {
        Some(Discard)
    } else if a.starts_with("reject 400") || a.starts_with("respond with error (400)") {
        Some(Reject(400))
    } else if a.starts_with("parse and accept") {
        Some(Accept)
    } else {
        None
    }
}

fn corpus_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/sip-torture");
    dir.join("manifest.tsv").exists().then_some(dir)
}

#[test]
fn every_manifest_file_gets_the_expected_verdict() {
    let Some(dir) = corpus_dir() else {
        println!("skipped: ../shared not found");
        return;
    };
    let manifest = std::fs::read_to_string(dir.join("manifest.tsv")).unwrap();
    let rows: Vec<Vec<&str>> = manifest
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split('\t').collect())
        .collect();
    let table: BTreeMap<&str, Case> = cases().into_iter().map(|c| (c.file, c)).collect();
    assert_eq!(rows.len(), 61, "manifest rows");
    assert_eq!(table.len(), 61, "table entries");

    let mut failures = Vec::new();
    let mut passed = 0;
    for row in &rows {
        let (file, validity, action) = (row[0], row[1], row[2]);
        let case = table
            .get(file)
            .unwrap_or_else(|| panic!("{file} is in the manifest but not in the table"));
        let raw = std::fs::read(dir.join(file)).unwrap();
        let declared_len: usize = row[5].parse().unwrap();
        assert_eq!(raw.len(), declared_len, "{file}: corpus file size");

        // The table must agree with the manifest wherever the manifest names an outcome,
        // except for documented exceptions (notes).
        if let Some(class) = manifest_class(action) {
            if case.note.is_empty() {
                assert_eq!(case.verdict, class, "{file}: table vs manifest ({action})");
            }
        }
        if validity == "invalid" && case.verdict == Accept {
            assert!(
                action.contains("may")
                    || action.contains("liberal")
                    || action.contains("tolerate")
                    || action.contains("only if"),
                "{file}: accepted an invalid message the RFC gives no leeway for"
            );
        }

        let bytes = if file.starts_with("rfc5118/") {
            let (raw_verdict, raw_err) = verdict(&raw);
            println!("{file}: raw archive bytes -> {raw_verdict:?} {raw_err:?}");
            if Some(raw_verdict) != case.raw_verdict {
                failures.push(format!(
                    "{file} (raw): expected {:?}, got {raw_verdict:?} ({raw_err:?})",
                    case.raw_verdict
                ));
            }
            wire_form(&raw)
        } else {
            raw
        };
        let (got, err) = verdict(&bytes);
        if got != case.verdict {
            failures.push(format!(
                "{file}: expected {:?}, got {got:?} ({err:?})",
                case.verdict
            ));
            continue;
        }
        if let Some(check) = case.check {
            let m = parse(&bytes).unwrap();
            check(&m);
            // Everything that parses must print and re-parse to an equal message.
            assert_eq!(parse(&m.to_vec()).unwrap(), m, "{file}: round trip");
        }
        println!(
            "{file}: {got:?} {}",
            err.map(|e| e.to_string()).unwrap_or_default()
        );
        passed += 1;
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(passed, 61);
}

#[test]
fn specific_errors_name_the_fault() {
    let Some(dir) = corpus_dir() else {
        println!("skipped: ../shared not found");
        return;
    };
    let err = |f: &str| verdict(&std::fs::read(dir.join(f)).unwrap()).1.unwrap();
    assert!(matches!(
        err("rfc4475/clerr.dat"),
        SipError::ContentLengthExceedsDatagram { declared: 9999, .. }
    ));
    assert!(matches!(
        err("rfc4475/ncl.dat"),
        SipError::BadHeader {
            header: "Content-Length",
            ..
        }
    ));
    assert!(matches!(
        err("rfc4475/scalar02.dat"),
        SipError::BadHeader { header: "CSeq", .. }
    ));
    assert!(matches!(
        err("rfc4475/mismatch01.dat"),
        SipError::CseqMethodMismatch { .. }
    ));
    assert!(matches!(
        err("rfc4475/multi01.dat"),
        SipError::DuplicateHeader { .. }
    ));
    assert!(matches!(
        err("rfc4475/mcl01.dat"),
        SipError::ConflictingContentLength {
            first: 13,
            second: 5
        }
    ));
    assert!(matches!(
        err("rfc4475/insuf.dat"),
        SipError::MissingHeader { .. }
    ));
    assert!(matches!(
        err("rfc4475/badvers.dat"),
        SipError::VersionNotSupported { .. }
    ));
    assert!(
        matches!(err("rfc4475/unkscm.dat"), SipError::UnsupportedUriScheme { scheme } if scheme == "nobodyKnowsThisScheme")
    );
    assert!(matches!(
        err("rfc4475/escruri.dat"),
        SipError::BadRequestUri { .. }
    ));
    assert!(matches!(
        err("rfc4475/lwsruri.dat"),
        SipError::BadStartLine { .. }
    ));
    assert!(matches!(
        err("rfc4475/quotbal.dat"),
        SipError::BadHeader { header: "To", .. }
    ));
    assert!(matches!(
        err("rfc4475/baddn.dat"),
        SipError::BadHeader { header: "From", .. }
    ));
    assert!(matches!(
        err("rfc4475/regbadct.dat"),
        SipError::BadHeader {
            header: "Contact",
            ..
        }
    ));
    assert!(matches!(
        err("rfc4475/badinv01.dat"),
        SipError::BadHeader { header: "Via", .. }
    ));
    match err("rfc4475/scalarlg.dat") {
        SipError::MalformedResponse { source } => {
            assert!(matches!(
                *source,
                SipError::BadHeader { header: "CSeq", .. }
            ))
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        err("rfc4475/bigcode.dat"),
        SipError::MalformedResponse { .. }
    ));
}

#[test]
fn responses_to_torture_requests_follow_8_2_6() {
    let Some(dir) = corpus_dir() else {
        println!("skipped: ../shared not found");
        return;
    };
    // The gateway answers every rejected request; the response must copy the request's
    // Via/From/To/Call-ID/CSeq even when the request is odd (folded, compact, tortuous).
    for file in [
        "rfc4475/wsinv.dat",
        "rfc4475/bext01.dat",
        "rfc4475/unkscm.dat",
        "rfc4475/esc02.dat",
    ] {
        let raw = std::fs::read(dir.join(file)).unwrap();
        let req = parse(&raw).unwrap();
        let (v, _) = verdict(&raw);
        let status = match v {
            Reject(code) => code,
            _ => 501,
        };
        let resp = req
            .response(status)
            .to_tag("gw1")
            .header("Unsupported", "nothingSupportsThis")
            .build_message()
            .unwrap();
        let m = resp.message();
        m.validate().unwrap();
        assert_eq!(m.status(), Some(status));
        let req_branches: Vec<_> = req.vias().map(|v| v.unwrap().branch()).collect();
        let resp_branches: Vec<_> = m.vias().map(|v| v.unwrap().branch()).collect();
        assert_eq!(req_branches, resp_branches, "{file}");
        assert_eq!(m.call_id().unwrap(), req.call_id().unwrap());
        assert_eq!(m.cseq().unwrap(), req.cseq().unwrap());
        assert_eq!(m.from().unwrap().tag(), req.from().unwrap().tag());
        let expected_tag = req.to().unwrap().tag().unwrap_or("gw1");
        assert_eq!(m.to().unwrap().tag(), Some(expected_tag), "{file}");
    }
}

#[test]
fn stream_framing_of_torture_messages() {
    let Some(dir) = corpus_dir() else {
        println!("skipped: ../shared not found");
        return;
    };
    // clerr over TCP: Content-Length larger than what arrived -> wait for more data.
    let clerr = std::fs::read(dir.join("rfc4475/clerr.dat")).unwrap();
    let mut d = StreamDecoder::default();
    let mut buf = BytesMut::from(&clerr[..]);
    assert_eq!(d.decode(&mut buf).unwrap(), None);
    // ncl over TCP: negative Content-Length -> error (close the connection).
    let ncl = std::fs::read(dir.join("rfc4475/ncl.dat")).unwrap();
    let mut d = StreamDecoder::default();
    assert!(d.decode(&mut BytesMut::from(&ncl[..])).is_err());
    // Valid messages back to back on one stream frame exactly.
    let files = [
        "rfc4475/wsinv.dat",
        "rfc4475/mpart01.dat",
        "rfc4475/esc01.dat",
    ];
    let mut stream = BytesMut::new();
    for f in files {
        stream.extend_from_slice(&std::fs::read(dir.join(f)).unwrap());
    }
    let mut d = StreamDecoder::default();
    let mut got = Vec::new();
    while let Some(frame) = d.decode(&mut stream).unwrap() {
        match frame {
            Frame::Message(m) => got.push(m),
            Frame::KeepAlive => panic!("no keep-alive in this stream"),
        }
    }
    assert_eq!(got.len(), 3);
    for (m, f) in got.iter().zip(files) {
        let datagram = std::fs::read(dir.join(f)).unwrap();
        assert_eq!(m.message(), parse(&datagram).unwrap(), "{f}");
    }
}
