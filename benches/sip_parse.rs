//! SIP parsing on a typical carrier INVITE (~900 octets with SDP).
//!
//! - `switchboard/index`: frame the datagram and index every header (what every received
//!   datagram costs). Target: ≤ 1 µs median.
//! - `switchboard/index+typed`: the above plus the typed Via, From, To, CSeq and Call-ID views
//!   the transaction layer and router read.
//! - `rsip/...`: rsip 0.4 on the same bytes, as the baseline, in the same run.
//!
//! Run: `cargo bench -p switchboard-benches --bench sip_parse -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rsip::prelude::*;

const SDP: &str = "v=0\r\n\
o=- 1712345678 1712345678 IN IP4 198.51.100.21\r\n\
s=CarrierSBC\r\n\
c=IN IP4 198.51.100.21\r\n\
t=0 0\r\n\
m=audio 31554 RTP/AVP 0 8 101\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-16\r\n\
a=ptime:20\r\n\
a=sendrecv\r\n";

/// The INVITE a carrier SBC sends to the gateway's trunk: rport Via, display names, tags,
/// PAI, Allow/Supported, SDP offering PCMU/PCMA/telephone-event.
fn carrier_invite() -> Vec<u8> {
    format!(
        "INVITE sip:+14155550123@gw.switchboard.example.com:5060;user=phone SIP/2.0\r\n\
Via: SIP/2.0/UDP 198.51.100.20:5060;branch=z9hG4bK-2f8a1c93-7d41-4b1e;rport\r\n\
Max-Forwards: 69\r\n\
From: \"ACME Corp\" <sip:+14085550100@198.51.100.20;user=phone>;tag=as5e6f7a8b\r\n\
To: <sip:+14155550123@gw.switchboard.example.com;user=phone>\r\n\
Call-ID: 6f1c3a2e4d5b7a8c9e0f1a2b3c4d5e6f@198.51.100.20\r\n\
CSeq: 102 INVITE\r\n\
Contact: <sip:+14085550100@198.51.100.20:5060;transport=udp>\r\n\
P-Asserted-Identity: \"ACME Corp\" <sip:+14085550100@carrier.example.net;user=phone>\r\n\
Allow: INVITE, ACK, CANCEL, OPTIONS, BYE, REFER, NOTIFY, INFO, UPDATE, PRACK\r\n\
Supported: replaces, timer, 100rel\r\n\
User-Agent: CarrierSBC/4.2.1\r\n\
Content-Type: application/sdp\r\n\
Content-Length: {}\r\n\
\r\n\
{SDP}",
        SDP.len()
    )
    .into_bytes()
}

fn sip_parse(c: &mut Criterion) {
    let invite = carrier_invite();
    // Sanity: both parsers accept the message before we time them.
    let ours = switchboard_sip::parse(&invite).expect("switchboard parses the INVITE");
    ours.validate().expect("the INVITE is valid");
    rsip::SipMessage::try_from(&invite[..]).expect("rsip parses the INVITE");
    println!(
        "carrier INVITE: {} octets, {} header fields",
        invite.len(),
        ours.header_count()
    );

    let mut group = c.benchmark_group("sip_parse/carrier_invite");
    group.throughput(Throughput::Bytes(invite.len() as u64));

    group.bench_function("switchboard/index", |b| {
        b.iter(|| {
            let m = switchboard_sip::parse(black_box(&invite)).expect("parses");
            black_box(m.header_count())
        })
    });
    group.bench_function("switchboard/index+typed", |b| {
        b.iter(|| {
            let m = switchboard_sip::parse(black_box(&invite)).expect("parses");
            let via = m.via().expect("via");
            let from = m.from().expect("from");
            let to = m.to().expect("to");
            let cseq = m.cseq().expect("cseq");
            let call_id = m.call_id().expect("call-id");
            black_box((via.branch(), from.tag(), to.uri, cseq.seq, call_id))
        })
    });
    group.bench_function("rsip/parse", |b| {
        b.iter(|| {
            let m = rsip::SipMessage::try_from(black_box(&invite[..])).expect("parses");
            black_box(m.headers().iter().count())
        })
    });
    group.bench_function("rsip/parse+typed", |b| {
        b.iter(|| {
            let m = rsip::SipMessage::try_from(black_box(&invite[..])).expect("parses");
            let via = m.via_header().expect("via").typed().expect("typed via");
            let from = m.from_header().expect("from").typed().expect("typed from");
            let to = m.to_header().expect("to").typed().expect("typed to");
            let cseq = m.cseq_header().expect("cseq").typed().expect("typed cseq");
            let call_id = m.call_id_header().expect("call-id").value().len();
            black_box((via, from, to, cseq, call_id))
        })
    });
    group.finish();
}

criterion_group!(benches, sip_parse);
criterion_main!(benches);
