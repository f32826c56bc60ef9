//! No input makes the codec panic, and every message that parses prints and re-parses to an
//! equal message. Bounded so it runs in every `cargo test`: mutated torture-corpus and
//! built-in messages, plus random bytes. (The open-ended version is the cargo-fuzz target in
//! `crates/sip/fuzz`.)

use std::path::PathBuf;
use std::sync::OnceLock;

use bytes::BytesMut;
use proptest::prelude::*;
use proptest::test_runner::Config;
use switchboard_sip::{parse, ContactValue, HeaderName, Message, StreamDecoder};

/// Mutated messages per run: enough to hit every mutation kind on every seed several times
/// while keeping the test well under a second in release and a few seconds in debug.
const MUTATED_CASES: u32 = 2_000;
/// Random-byte inputs per run.
const RANDOM_CASES: u32 = 500;

/// Seeds that exist without the shared corpus, so the test always has material.
const BUILTIN: &[&[u8]] = &[
    b"INVITE sip:+14155550123@gw.example.com;user=phone SIP/2.0\r\n\
Via: SIP/2.0/UDP 198.51.100.7:5060;branch=z9hG4bK-524287-1;rport\r\n\
Max-Forwards: 69\r\n\
From: \"Carrier, Inc\" <sip:+14085550100@198.51.100.7>;tag=as4f1b\r\n\
To: <sip:+14155550123@gw.example.com>\r\n\
Call-ID: 3c26700c5b2f@198.51.100.7\r\n\
CSeq: 102 INVITE\r\n\
Contact: <sip:+14085550100@198.51.100.7:5060>\r\n\
P-Asserted-Identity: <sip:+14085550100@carrier.example.net>, <tel:+14085550100>\r\n\
Record-Route: <sip:[2001:db8::1]:5060;lr>\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 10\r\n\r\nv=0\r\ns=-\r\n",
    b"SIP/2.0 200 OK\r\nv: SIP/2.0/TCP a.example.com;branch=z9hG4bKx;received=[2001:db8::2]\r\n\
f: <sip:a@b>;tag=1\r\nt: <sip:c@d>;tag=2\r\ni: x@y\r\nCSeq: 1 BYE\r\nl: 0\r\n\r\n",
    b"REGISTER sips:example.com SIP/2.0\r\nVia: SIP/2.0/TLS h;branch=z9hG4bK1\r\n\
From: <sip:u@example.com>;tag=1\r\nTo: <sip:u@example.com>\r\nCall-ID: r\r\nCSeq: 1 REGISTER\r\n\
Contact: *\r\nContact: \"x\" <sip:u@h?Route=%3Csip:p%3E>;expires=0\r\nExpires: 0\r\nContent-Length: 0\r\n\r\n",
];

fn seeds() -> &'static Vec<Vec<u8>> {
    static SEEDS: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let mut seeds: Vec<Vec<u8>> = BUILTIN.iter().map(|s| s.to_vec()).collect();
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/sip-torture");
        match std::fs::read_to_string(dir.join("manifest.tsv")) {
            Ok(manifest) => {
                for line in manifest.lines().skip(1) {
                    if let Some(file) = line.split('\t').next().filter(|f| !f.is_empty()) {
                        if let Ok(bytes) = std::fs::read(dir.join(file)) {
                            seeds.push(bytes);
                        }
                    }
                }
            }
            Err(_) => println!("../shared not found: mutating the built-in seeds only"),
        }
        seeds
    })
}

/// Bytes that matter to the grammar: separators, quotes, brackets, line ends, escapes.
const INTERESTING: &[u8] = b":;,\"<>\r\n \t%\\[]@=/?*0123456789\x00\xff";

#[derive(Debug, Clone)]
enum Mutation {
    Flip { at: usize, byte: u8 },
    Insert { at: usize, byte: u8 },
    Delete { at: usize, len: usize },
    DuplicateSpan { at: usize, len: usize },
    Truncate { at: usize },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let byte = prop_oneof![
        3 => proptest::sample::select(INTERESTING.to_vec()),
        1 => any::<u8>(),
    ];
    prop_oneof![
        4 => (any::<usize>(), byte.clone()).prop_map(|(at, byte)| Mutation::Flip { at, byte }),
        4 => (any::<usize>(), byte).prop_map(|(at, byte)| Mutation::Insert { at, byte }),
        2 => (any::<usize>(), 1usize..16).prop_map(|(at, len)| Mutation::Delete { at, len }),
        1 => (any::<usize>(), 1usize..64).prop_map(|(at, len)| Mutation::DuplicateSpan { at, len }),
        1 => any::<usize>().prop_map(|at| Mutation::Truncate { at }),
    ]
}

fn apply(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let n = bytes.len().max(1);
        match *m {
            Mutation::Flip { at, byte } => {
                if let Some(b) = bytes.get_mut(at % n) {
                    *b = byte;
                }
            }
            Mutation::Insert { at, byte } => bytes.insert(at % (bytes.len() + 1), byte),
            Mutation::Delete { at, len } => {
                let start = at % n;
                let end = (start + len).min(bytes.len());
                if start < end {
                    bytes.drain(start..end);
                }
            }
            Mutation::DuplicateSpan { at, len } => {
                let start = at % n;
                let end = (start + len).min(bytes.len());
                if start < end {
                    let span = bytes[start..end].to_vec();
                    bytes.splice(end..end, span);
                }
            }
            Mutation::Truncate { at } => bytes.truncate(at % n),
        }
    }
    bytes
}

/// Runs every accessor (results ignored: only panics matter) and checks the round trip.
fn exercise(input: &[u8]) {
    let Ok(m) = parse(input) else {
        exercise_stream(input);
        return;
    };
    touch_everything(&m);
    let printed = m.to_vec();
    let again = parse(&printed).unwrap_or_else(|e| {
        panic!(
            "printed form does not re-parse ({e}):\n{:?}\n-> {:?}",
            String::from_utf8_lossy(input),
            String::from_utf8_lossy(&printed)
        )
    });
    assert_eq!(again, m, "round trip changed the message");
    assert_eq!(again.to_vec(), printed, "printing is not idempotent");
    if m.is_request() {
        if let Ok(resp) = m.response(400).to_tag("t1").build() {
            let r = parse(&resp).expect("a built response parses");
            assert_eq!(r.status(), Some(400));
            assert_eq!(r.count(HeaderName::Via), m.count(HeaderName::Via));
        }
    }
    exercise_stream(input);
}

fn touch_everything(m: &Message<'_>) {
    let _ = m.validate();
    let _ = m.check_require(&["100rel"]);
    let _ = m
        .request_uri()
        .map(|u| (u.to_string(), u.user_or_number(), u.params().iter().count()));
    let _ = m
        .via()
        .map(|v| (v.branch(), v.received(), v.rport(), v.sent_by().to_string()));
    for v in m.vias() {
        let _ = v.map(|v| v.to_string());
    }
    for h in [m.from(), m.to()] {
        let _ = h.map(|a| (a.display_name(), a.tag(), a.uri.to_string()));
    }
    let _ = m.call_id();
    let _ = m.cseq();
    let _ = m.max_forwards();
    let _ = m.content_type();
    for c in m.contacts() {
        if let Ok(ContactValue::Address(a)) = c {
            let _ = a.uri.as_sip().map(|s| s.user_decoded());
            for p in a.params.iter() {
                let _ = p.unquoted_value();
            }
        }
    }
    for name in [
        HeaderName::Route,
        HeaderName::RecordRoute,
        HeaderName::PAssertedIdentity,
        HeaderName::RemotePartyId,
        HeaderName::Diversion,
    ] {
        let _ = m.name_addrs(name).count();
    }
    for name in [
        HeaderName::Allow,
        HeaderName::Supported,
        HeaderName::Require,
    ] {
        let _ = m.tokens(name).count();
    }
    for h in m.headers() {
        let _ = h.value_str();
    }
    let _ = format!("{m:?}");
}

/// Feeds the same bytes to the stream decoder in uneven chunks.
fn exercise_stream(input: &[u8]) {
    let mut d = StreamDecoder::new(4096);
    let mut buf = BytesMut::new();
    for chunk in input.chunks(7) {
        buf.extend_from_slice(chunk);
        loop {
            match d.decode(&mut buf) {
                Ok(Some(_)) => continue,
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
}

fn config(cases: u32) -> Config {
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

proptest! {
    #![proptest_config(config(MUTATED_CASES))]

    #[test]
    fn mutated_messages_never_panic_and_round_trip(
        seed in any::<prop::sample::Index>(),
        mutations in prop::collection::vec(mutation(), 1..8),
    ) {
        let seeds = seeds();
        let input = apply(seeds[seed.index(seeds.len())].clone(), &mutations);
        exercise(&input);
    }
}

proptest! {
    #![proptest_config(config(RANDOM_CASES))]

    #[test]
    fn random_bytes_never_panic(input in prop::collection::vec(any::<u8>(), 0..512)) {
        exercise(&input);
    }

    #[test]
    fn random_headers_after_a_valid_start_line(
        lines in prop::collection::vec("[ -~\t]{0,40}", 0..12),
        body in prop::collection::vec(any::<u8>(), 0..32),
    ) {
        let mut input = b"INVITE sip:a@b SIP/2.0\r\n".to_vec();
        for l in &lines {
            input.extend_from_slice(l.as_bytes());
            input.extend_from_slice(b"\r\n");
        }
        input.extend_from_slice(b"\r\n");
        input.extend_from_slice(&body);
        exercise(&input);
    }
}

#[test]
fn every_seed_round_trips() {
    let mut parsed = 0;
    for s in seeds() {
        exercise(s);
        parsed += usize::from(parse(s).is_ok());
    }
    assert!(parsed >= BUILTIN.len());
}
