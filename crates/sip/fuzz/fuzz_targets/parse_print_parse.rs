//! parse -> print -> parse: no panic on any input, and the printed form of every message
//! that parses re-parses to an equal message. Typed views and validation run too, since
//! they are where input-derived slicing happens.
//!
//! Run: `cd crates/sip/fuzz && cargo +nightly fuzz run parse_print_parse`
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_sip::{parse, HeaderName, StreamDecoder};

fuzz_target!(|data: &[u8]| {
    let mut stream = bytes::BytesMut::from(data);
    let mut decoder = StreamDecoder::default();
    while let Ok(Some(_)) = decoder.decode(&mut stream) {}

    let Ok(msg) = parse(data) else { return };
    let _ = msg.validate();
    let _ = msg.request_uri().map(|u| u.to_string());
    for via in msg.vias() {
        let _ = via.map(|v| (v.to_string(), v.received(), v.rport()));
    }
    let _ = msg.from().map(|a| (a.display_name(), a.tag()));
    let _ = msg.to().map(|a| (a.display_name(), a.tag()));
    let _ = (
        msg.call_id(),
        msg.cseq(),
        msg.max_forwards(),
        msg.content_type(),
    );
    let _ = msg.contacts().count();
    let _ = msg.name_addrs(HeaderName::PAssertedIdentity).count();

    let printed = msg.to_vec();
    let again = parse(&printed).expect("printed message re-parses");
    assert_eq!(again, msg, "round trip changed the message");
    assert_eq!(again.to_vec(), printed, "printing is not idempotent");
    if msg.is_request() {
        if let Ok(resp) = msg.response(500).to_tag("fz").build() {
            parse(&resp).expect("built response parses");
        }
    }
});
