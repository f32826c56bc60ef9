//! Offer/answer tests: real carrier-shaped bodies in, the exact SDP lines out.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::*;
use crate::MediaError;

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 5));

fn carrier_offer(formats: &str, extra: &str) -> String {
    format!(
        "v=0\r\no=carrier 123 456 IN IP4 198.51.100.7\r\ns=-\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\n\
         m=audio 40000 RTP/AVP {formats}\r\n{extra}"
    )
}

fn lines(sdp: &Answer) -> Vec<&str> {
    sdp.as_str()
        .split("\r\n")
        .filter(|l| !l.is_empty())
        .collect()
}

#[test]
fn pcmu_offer_with_telephone_event_is_answered_in_kind() {
    let offer = carrier_offer(
        "0 8 96",
        "a=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:96 telephone-event/8000\r\n\
         a=fmtp:96 0-15\r\na=ptime:20\r\na=sendrecv\r\n",
    );
    let (answer, media) = negotiate(&offer, LOCAL, 30000).unwrap();
    assert_eq!(media.codec, Codec::Pcmu);
    assert_eq!(media.payload_type, 0);
    assert_eq!(media.telephone_event, Some(96));
    assert_eq!(
        media.remote_rtp,
        Some("198.51.100.7:40000".parse().unwrap())
    );
    assert_eq!(media.direction, Direction::SendRecv);
    assert!(!media.on_hold());
    let l = lines(&answer);
    assert_eq!(l[0], "v=0");
    assert!(l[1].starts_with("o=switchboard ") && l[1].ends_with(" IN IP4 203.0.113.5"));
    assert!(l.contains(&"c=IN IP4 203.0.113.5"));
    assert!(l.contains(&"m=audio 30000 RTP/AVP 0 96"));
    assert!(l.contains(&"a=rtpmap:0 PCMU/8000"));
    assert!(l.contains(&"a=rtpmap:96 telephone-event/8000"));
    assert!(l.contains(&"a=ptime:20"));
    assert!(l.contains(&"a=sendrecv"));
    // The answer is itself valid SDP.
    let reparsed = SessionDescription::parse(answer.as_str()).unwrap();
    assert_eq!(reparsed.media.len(), 1);
}

#[test]
fn pcma_only_offer_and_static_types_without_rtpmap() {
    let (answer, media) = negotiate(
        &carrier_offer("8 101", "a=rtpmap:101 telephone-event/8000\r\n"),
        LOCAL,
        30002,
    )
    .unwrap();
    assert_eq!(media.codec, Codec::Pcma);
    assert_eq!(media.payload_type, 8);
    assert!(answer.as_str().contains("m=audio 30002 RTP/AVP 8 101\r\n"));
    assert!(answer.as_str().contains("a=rtpmap:8 PCMA/8000\r\n"));
}

#[test]
fn dynamic_payload_type_for_pcmu_is_kept() {
    let (answer, media) = negotiate(
        &carrier_offer("18 112", "a=rtpmap:112 pcmu/8000\r\n"),
        LOCAL,
        30000,
    )
    .unwrap();
    assert_eq!((media.codec, media.payload_type), (Codec::Pcmu, 112));
    assert_eq!(media.telephone_event, None);
    assert!(answer.as_str().contains("m=audio 30000 RTP/AVP 112\r\n"));
}

#[test]
fn no_common_codec_is_488() {
    let err = negotiate(
        &carrier_offer("18 97", "a=rtpmap:97 opus/48000/2\r\n"),
        LOCAL,
        30000,
    )
    .unwrap_err();
    assert!(matches!(err, MediaError::NoCommonCodec { .. }), "{err}");
    assert_eq!(err.sip_status(), 488);
    // SRTP-only is not plain RTP either.
    let srtp = carrier_offer("0", "").replace("RTP/AVP", "RTP/SAVP");
    assert_eq!(
        negotiate(&srtp, LOCAL, 30000).unwrap_err().sip_status(),
        488
    );
}

#[test]
fn garbage_is_400() {
    for bad in [
        "",
        "hello",
        "o=x 1 1 IN IP4 1.2.3.4\r\nv=0\r\n",
        "v=1\r\n",
        "v=0\r\nc=IN IP4 not-an-ip\r\n",
        "v=0\r\nc=IN IP6 1.2.3.4\r\n",
        "v=0\r\nm=audio seventy RTP/AVP 0\r\n",
        "v=0\r\nm=audio 4000 RTP/AVP\r\n",
        "v=0\r\nm=audio 4000 RTP/AVP 0\r\na=rtpmap:0 PCMU\r\n",
        "v=0\r\nm=audio 4000 RTP/AVP 0\r\na=rtpmap:300 PCMU/8000\r\n",
    ] {
        let err = negotiate(bad, LOCAL, 30000).unwrap_err();
        assert_eq!(err.sip_status(), 400, "{bad:?}: {err}");
    }
    // Audio without any c= line.
    let no_c = "v=0\r\no=a 1 1 IN IP4 1.1.1.1\r\ns=-\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";
    assert_eq!(negotiate(no_c, LOCAL, 30000).unwrap_err().sip_status(), 400);
}

#[test]
fn ipv6_and_media_level_connection() {
    let offer = "v=0\r\no=- 1 1 IN IP6 2001:db8::1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n\
                 m=audio 5004 RTP/AVP 0\r\nc=IN IP6 2001:db8::9\r\n";
    let local6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x5));
    let (answer, media) = negotiate(offer, local6, 30000).unwrap();
    assert_eq!(
        media.remote_rtp,
        Some("[2001:db8::9]:5004".parse().unwrap())
    );
    assert!(answer.as_str().contains("c=IN IP6 2001:db8::5\r\n"));
    assert!(answer.as_str().contains(" IN IP6 2001:db8::5\r\n"));
}

#[test]
fn extra_streams_are_rejected_with_port_zero_in_order() {
    let offer = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n\
                 m=video 6000 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n\
                 m=audio 5004 RTP/AVP 8\r\n\
                 m=audio 5006 RTP/AVP 0\r\n";
    let (answer, media) = negotiate(offer, LOCAL, 30000).unwrap();
    assert_eq!(media.remote_rtp, Some("192.0.2.1:5004".parse().unwrap()));
    let m_lines: Vec<&str> = lines(&answer)
        .into_iter()
        .filter(|l| l.starts_with("m="))
        .collect();
    assert_eq!(
        m_lines,
        [
            "m=video 0 RTP/AVP 96",
            "m=audio 30000 RTP/AVP 8",
            "m=audio 0 RTP/AVP 0"
        ]
    );
}

#[test]
fn hold_offers_are_answered_recvonly_or_inactive() {
    let mut session = SdpSession::new(LOCAL, 30000);
    let (first, media) = session
        .answer(&carrier_offer("0", "a=sendrecv\r\n"))
        .unwrap();
    assert!(!media.on_hold());

    let (held, media) = session
        .answer(&carrier_offer("0", "a=sendonly\r\n"))
        .unwrap();
    assert_eq!(media.direction, Direction::RecvOnly);
    assert!(media.on_hold());
    assert!(held.as_str().contains("a=recvonly\r\n"));

    let (inactive, media) = session
        .answer(&carrier_offer("0", "a=inactive\r\n"))
        .unwrap();
    assert_eq!(media.direction, Direction::Inactive);
    assert!(inactive.as_str().contains("a=inactive\r\n"));

    let old_style = carrier_offer("0", "").replace("c=IN IP4 198.51.100.7", "c=IN IP4 0.0.0.0");
    let (answer, media) = session.answer(&old_style).unwrap();
    assert_eq!(media.remote_rtp, None);
    assert_eq!(media.direction, Direction::RecvOnly);
    assert!(media.on_hold());
    assert!(answer.as_str().contains("a=recvonly\r\n"));

    // Session-level direction applies when the media section has none.
    let session_level = carrier_offer("0", "").replace("t=0 0\r\n", "t=0 0\r\na=sendonly\r\n");
    assert_eq!(
        session.answer(&session_level).unwrap().1.direction,
        Direction::RecvOnly
    );

    // Resume: back to sendrecv, same session id, version moved on.
    let (resumed, media) = session
        .answer(&carrier_offer("0", "a=sendrecv\r\n"))
        .unwrap();
    assert!(!media.on_hold());
    let origin = |a: &Answer| {
        SessionDescription::parse(a.as_str())
            .unwrap()
            .origin
            .unwrap()
    };
    assert_eq!(origin(&first).session_id, origin(&resumed).session_id);
    let v = |a: &Answer| origin(a).session_version.parse::<u64>().unwrap();
    assert!(v(&held) > v(&first));
    assert!(v(&resumed) > v(&inactive));
}

#[test]
fn unchanged_refresh_keeps_the_version() {
    let mut session = SdpSession::new(LOCAL, 30000);
    let offer = carrier_offer("0", "");
    let (a, _) = session.answer(&offer).unwrap();
    let (b, _) = session.answer(&offer).unwrap();
    assert_eq!(a, b);
}

#[test]
fn late_offer_and_its_answer() {
    let mut session = SdpSession::new(LOCAL, 31000);
    let offer = session.offer();
    let parsed = SessionDescription::parse(offer.as_str()).unwrap();
    let m = &parsed.media[0];
    assert_eq!((m.port, m.proto.as_str()), (31000, "RTP/AVP"));
    assert_eq!(m.formats, ["0", "8", "9", "101"]);
    assert_eq!(m.ptime, Some(20));
    assert!(offer.as_str().contains("a=rtpmap:9 G722/8000\r\n"));
    // A wideband agent's late offer puts G.722 first.
    let wide = SdpSession::new(LOCAL, 31000)
        .with_preference(CodecPreference::Wideband)
        .offer();
    let parsed = SessionDescription::parse(wide.as_str()).unwrap();
    assert_eq!(parsed.media[0].formats, ["9", "0", "8", "101"]);

    let answer = "v=0\r\no=carrier 9 9 IN IP4 198.51.100.7\r\ns=-\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\n\
                  m=audio 41000 RTP/AVP 8 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\n";
    let media = session.accept_answer(answer).unwrap();
    assert_eq!(
        (media.codec, media.payload_type, media.telephone_event),
        (Codec::Pcma, 8, Some(101))
    );
    assert_eq!(
        media.remote_rtp,
        Some("198.51.100.7:41000".parse().unwrap())
    );
    assert_eq!(media.direction, Direction::SendRecv);

    let refused = answer.replace("m=audio 41000", "m=audio 0");
    assert_eq!(
        session.accept_answer(&refused).unwrap_err().sip_status(),
        488
    );
    let recvonly = format!("{answer}a=recvonly\r\n");
    assert_eq!(
        session.accept_answer(&recvonly).unwrap().direction,
        Direction::SendOnly
    );
}

#[test]
fn lf_only_and_unknown_lines_are_tolerated() {
    let offer = "v=0\no=- 1 1 IN IP4 192.0.2.1\ns=-\nc=IN IP4 192.0.2.1\nt=0 0\nb=AS:64\n\
                 m=audio 5004 RTP/AVP 0\na=rtcp:5005\na=silenceSupp:off - - - -\nx=unknown\n";
    assert_eq!(negotiate(offer, LOCAL, 30000).unwrap().1.codec, Codec::Pcmu);
}

const THEIR_KEY: &str = "WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz";

fn savp_offer(crypto_lines: &str) -> String {
    carrier_offer(
        "0 101",
        &format!("a=rtpmap:101 telephone-event/8000\r\n{crypto_lines}"),
    )
    .replace("RTP/AVP", "RTP/SAVP")
}

fn crypto_lines_of(answer: &Answer) -> Vec<&str> {
    lines(answer)
        .into_iter()
        .filter(|l| l.starts_with("a=crypto:"))
        .collect()
}

#[test]
fn savp_offer_is_answered_with_our_own_key_for_the_first_usable_suite() {
    let offer = savp_offer(&format!(
        "a=crypto:1 AEAD_AES_256_GCM inline:{THEIR_KEY}\r\n\
         a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:{THEIR_KEY}|2^31\r\n\
         a=crypto:3 AES_CM_128_HMAC_SHA1_80 inline:{THEIR_KEY}\r\n"
    ));
    let mut session = SdpSession::new(LOCAL, 30000);
    let (answer, media) = session.answer(&offer).unwrap();
    let srtp = media.srtp.clone().unwrap();
    assert_eq!(
        (srtp.tag, srtp.suite),
        (2, CryptoSuite::AesCm128HmacSha1_32)
    );
    assert_eq!(srtp.remote.to_base64(), THEIR_KEY);
    assert_ne!(srtp.local, srtp.remote);
    assert!(answer.as_str().contains("m=audio 30000 RTP/SAVP 0 101\r\n"));
    let ours = format!(
        "a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:{}",
        srtp.local.to_base64()
    );
    assert_eq!(crypto_lines_of(&answer), [ours.as_str()]);
    // A refresh keeps our key, so the body (and the o= version) does not change...
    let (again, media2) = session.answer(&offer).unwrap();
    assert_eq!(again, answer);
    assert_eq!(media2.srtp.unwrap().local, srtp.local);
    // ...and another call gets another key.
    let (_, other) = negotiate(&offer, LOCAL, 30000).unwrap();
    assert_ne!(other.srtp.unwrap().local, srtp.local);
}

#[test]
fn unknown_suites_only_is_488_naming_what_was_offered() {
    let offer = savp_offer(&format!(
        "a=crypto:1 AEAD_AES_256_GCM inline:{THEIR_KEY}\r\n"
    ));
    let err = negotiate(&offer, LOCAL, 30000).unwrap_err();
    assert!(matches!(err, MediaError::NoCryptoSuite { .. }), "{err}");
    assert_eq!(err.sip_status(), 488);
    let text = err.to_string();
    assert!(
        text.contains("AEAD_AES_256_GCM") && text.contains("AES_CM_128_HMAC_SHA1_80"),
        "{text}"
    );
    // SAVP without any a=crypto (DTLS-style keying) is the same answer.
    assert!(matches!(
        negotiate(&savp_offer(""), LOCAL, 30000).unwrap_err(),
        MediaError::NoCryptoSuite { .. }
    ));
    // A malformed line is a 400 that says where.
    let bad = savp_offer("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:short\r\n");
    let err = negotiate(&bad, LOCAL, 30000).unwrap_err();
    assert_eq!(err.sip_status(), 400, "{err}");
    assert!(err.to_string().contains("a=crypto"), "{err}");
}

#[test]
fn media_encryption_policy_decides_which_offers_are_taken() {
    let plain = carrier_offer("0", "");
    let srtp = savp_offer(&format!(
        "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{THEIR_KEY}\r\n"
    ));
    let answer = |policy, offer: &str| {
        SdpSession::new(LOCAL, 30000)
            .with_encryption(policy)
            .answer(offer)
    };
    assert!(answer(MediaEncryption::Allow, &plain)
        .unwrap()
        .1
        .srtp
        .is_none());
    assert!(answer(MediaEncryption::Allow, &srtp)
        .unwrap()
        .1
        .srtp
        .is_some());
    assert!(answer(MediaEncryption::Disable, &plain)
        .unwrap()
        .1
        .srtp
        .is_none());
    assert!(answer(MediaEncryption::Require, &srtp)
        .unwrap()
        .1
        .srtp
        .is_some());
    for (policy, offer, says) in [
        (MediaEncryption::Require, &plain, "requires SRTP"),
        (MediaEncryption::Disable, &srtp, "plain RTP only"),
    ] {
        let err = answer(policy, offer).unwrap_err();
        assert!(matches!(err, MediaError::EncryptionPolicy { .. }), "{err}");
        assert_eq!(err.sip_status(), 488);
        assert!(err.to_string().contains(says), "{err}");
    }
    // Best-effort SRTP (RFC 5939 style: SAVP and AVP offered side by side): the policy
    // picks the stream, the other is refused with port 0.
    let both = format!("{srtp}m=audio 40002 RTP/AVP 0\r\n");
    let (a, m) = answer(MediaEncryption::Disable, &both).unwrap();
    assert!(m.srtp.is_none() && m.remote_rtp.unwrap().port() == 40002);
    assert!(a.as_str().contains("m=audio 0 RTP/SAVP 0 101\r\n"), "{a}");
    let (_, m) = answer(MediaEncryption::Require, &both).unwrap();
    assert_eq!(m.remote_rtp.unwrap().port(), 40000);
    // DTLS-SRTP is out of scope: refused with a reason, not mistaken for SDES.
    let dtls = carrier_offer("0", "").replace("RTP/AVP", "UDP/TLS/RTP/SAVP");
    let err = answer(MediaEncryption::Allow, &dtls).unwrap_err();
    assert!(err.to_string().contains("DTLS-SRTP"), "{err}");
}

#[test]
fn late_offer_under_require_is_savp_and_takes_the_keyed_answer() {
    let mut session = SdpSession::new(LOCAL, 31000).with_encryption(MediaEncryption::Require);
    let offer = session.offer();
    assert!(
        offer
            .as_str()
            .contains("m=audio 31000 RTP/SAVP 0 8 9 101\r\n"),
        "{offer}"
    );
    let ours = crypto_lines_of(&offer)[0].to_owned();
    assert!(
        ours.starts_with("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:"),
        "{ours}"
    );
    let answer = format!(
        "v=0\r\no=c 9 9 IN IP4 198.51.100.7\r\ns=-\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\n\
         m=audio 41000 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{THEIR_KEY}\r\n"
    );
    let srtp = session.accept_answer(&answer).unwrap().srtp.unwrap();
    assert_eq!(srtp.remote.to_base64(), THEIR_KEY);
    assert!(ours.ends_with(&srtp.local.to_base64()));
    let unkeyed = answer.replace("a=crypto:1", "a=crypto:2");
    assert_eq!(
        session.accept_answer(&unkeyed).unwrap_err().sip_status(),
        488
    );
    // Allow keeps the late offer plain.
    let mut plain = SdpSession::new(LOCAL, 31000);
    assert!(plain.offer().as_str().contains("RTP/AVP 0 8 9 101"));
}

/// Which codec each kind of offer gets, for µ-law (narrowband) and L16 16 kHz (wideband) agents.
#[test]
fn codec_choice_table() {
    const TE: &str = "a=rtpmap:101 telephone-event/8000\r\n";
    let g722 = "a=rtpmap:9 G722/8000\r\n";
    let cases: &[(&str, String, Codec, Codec)] = &[
        // formats, attributes, narrowband pick, wideband pick
        ("0 8 9 101", format!("{g722}{TE}"), Codec::Pcmu, Codec::G722),
        ("9 0 101", format!("{g722}{TE}"), Codec::Pcmu, Codec::G722),
        ("8 9 101", format!("{g722}{TE}"), Codec::Pcma, Codec::G722),
        ("9 101", format!("{g722}{TE}"), Codec::G722, Codec::G722),
        // Static PT 9 without an rtpmap is G.722 too.
        ("9", String::new(), Codec::G722, Codec::G722),
        ("8 0", String::new(), Codec::Pcmu, Codec::Pcmu),
        ("8", String::new(), Codec::Pcma, Codec::Pcma),
        // The common mistake G722/16000: still G.722, answered with the RFC 3551 clock.
        (
            "9 0",
            "a=rtpmap:9 G722/16000\r\n".into(),
            Codec::Pcmu,
            Codec::G722,
        ),
    ];
    for (formats, attributes, narrow, wide) in cases {
        let offer = carrier_offer(formats, attributes);
        for (preference, want) in [
            (CodecPreference::Narrowband, narrow),
            (CodecPreference::Wideband, wide),
        ] {
            let (answer, media) = SdpSession::new(LOCAL, 30000)
                .with_preference(preference)
                .answer(&offer)
                .unwrap();
            assert_eq!(media.codec, *want, "{formats} {preference:?}");
            assert_eq!(media.payload_type, want.static_payload_type());
            // Exactly the chosen codec plus telephone-event when offered.
            let te = if attributes.contains("telephone-event") {
                " 101"
            } else {
                ""
            };
            let m_line = format!("m=audio 30000 RTP/AVP {}{te}", media.payload_type);
            let l = lines(&answer);
            assert!(
                l.contains(&m_line.as_str()),
                "{formats} {preference:?}: {answer}"
            );
            let rtpmap = format!(
                "a=rtpmap:{} {}/8000",
                want.static_payload_type(),
                want.encoding_name()
            );
            assert!(l.contains(&rtpmap.as_str()), "{answer}");
            assert_eq!(
                l.iter().filter(|l| l.starts_with("a=rtpmap:")).count(),
                1 + te.len().min(1)
            );
        }
    }
}

#[test]
fn late_offer_answered_with_g722_is_taken() {
    let mut session = SdpSession::new(LOCAL, 31000);
    session.offer();
    let answer =
        "v=0\r\no=carrier 9 9 IN IP4 198.51.100.7\r\ns=-\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\n\
                  m=audio 41000 RTP/AVP 9\r\na=rtpmap:9 G722/8000\r\n";
    let media = session.accept_answer(answer).unwrap();
    assert_eq!((media.codec, media.payload_type), (Codec::G722, 9));
}
