//! CPU per 20 ms packet for each caller codec ⇄ agent dialect conversion the bridge does:
//!
//! ```text
//! cargo bench -p switchboard-benches --bench media_codec -- [--rounds 31] [--packets 2000]
//! ```
//! One "packet" is one call of the [`Transcoder`] the bridge makes per call, on a 1 kHz tone
//! (a codec's cost can depend on the signal; silence would flatter G.722): caller → agent on a
//! caller payload, or agent → caller on one agent frame. The cases run interleaved round by
//! round on one thread, each on its own long-lived transcoder (state carried across packets,
//! as in a call). Reported per case: median, p10 and p90 over the rounds of µs per packet, and
//! heap allocations per packet (counted by an instrumented allocator; must be 0).

use std::alloc::System;
use std::hint::black_box;
use std::time::Instant;

use anyhow::Result;
use audio_codec::g722::G722Encoder;
use audio_codec::Encoder as _;
use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};
use switchboard_media::g711;
use switchboard_media::tone::sine;
use switchboard_media::{AgentDialect, Codec, Transcoder};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Which way a case converts.
#[derive(Clone, Copy)]
enum Direction {
    CallerToAgent,
    AgentToCaller,
}

struct Case {
    name: &'static str,
    transcoder: Transcoder,
    direction: Direction,
    /// One second of 20 ms inputs, cycled.
    inputs: Vec<Vec<u8>>,
    per_packet_us: Vec<f64>,
    allocations: usize,
    packets: usize,
}

fn tone_frames(
    rate: u32,
    samples_per_frame: usize,
    encode: impl FnMut(&[i16]) -> Vec<u8>,
) -> Vec<Vec<u8>> {
    sine(1000.0, rate, 0.4, samples_per_frame * 50)
        .chunks(samples_per_frame)
        .map(encode)
        .collect()
}

fn cases() -> Vec<Case> {
    let ulaw = tone_frames(8000, 160, |f| {
        f.iter().map(|s| g711::linear_to_ulaw(*s)).collect()
    });
    let alaw = tone_frames(8000, 160, |f| {
        f.iter().map(|s| g711::linear_to_alaw(*s)).collect()
    });
    let l16 = tone_frames(16000, 320, |f| {
        f.iter().flat_map(|s| s.to_le_bytes()).collect()
    });
    let mut encoder = G722Encoder::new();
    let g722 = tone_frames(16000, 320, |f| encoder.encode(f));
    let case = |name, codec, dialect, direction, inputs: &Vec<Vec<u8>>| Case {
        name,
        transcoder: Transcoder::new(codec, dialect),
        direction,
        inputs: inputs.clone(),
        per_packet_us: Vec::new(),
        allocations: 0,
        packets: 0,
    };
    use AgentDialect::{L16Wideband, Twilio};
    use Direction::{AgentToCaller, CallerToAgent};
    vec![
        case(
            "PCMU -> µ-law (passthrough)",
            Codec::Pcmu,
            Twilio,
            CallerToAgent,
            &ulaw,
        ),
        case("PCMA -> µ-law", Codec::Pcma, Twilio, CallerToAgent, &alaw),
        case(
            "G.722 -> µ-law 8k",
            Codec::G722,
            Twilio,
            CallerToAgent,
            &g722,
        ),
        case(
            "µ-law 8k -> G.722",
            Codec::G722,
            Twilio,
            AgentToCaller,
            &ulaw,
        ),
        case(
            "G.722 -> L16 16k",
            Codec::G722,
            L16Wideband,
            CallerToAgent,
            &g722,
        ),
        case(
            "L16 16k -> G.722",
            Codec::G722,
            L16Wideband,
            AgentToCaller,
            &l16,
        ),
        case(
            "PCMU -> L16 16k",
            Codec::Pcmu,
            L16Wideband,
            CallerToAgent,
            &ulaw,
        ),
        case(
            "L16 16k -> PCMU",
            Codec::Pcmu,
            L16Wideband,
            AgentToCaller,
            &l16,
        ),
    ]
}

/// One batch of `packets` conversions; µs per packet.
fn batch(case: &mut Case, packets: usize) -> f64 {
    let mut produced = 0usize;
    let allocations_before = GLOBAL.stats().allocations;
    let started = Instant::now();
    for input in case.inputs.iter().cycle().take(packets) {
        produced += match case.direction {
            Direction::CallerToAgent => case
                .transcoder
                .caller_to_agent(black_box(input))
                .map_or(0, |out| black_box(out).len()),
            Direction::AgentToCaller => {
                black_box(case.transcoder.agent_to_caller(black_box(input))).len()
            }
        };
    }
    let elapsed = started.elapsed();
    case.allocations += GLOBAL.stats().allocations - allocations_before;
    case.packets += packets;
    assert!(
        produced >= packets * 160,
        "{}: the batch did no work",
        case.name
    );
    elapsed.as_secs_f64() * 1e6 / packets as f64
}

fn main() -> Result<()> {
    let (mut rounds, mut packets) = (31usize, 2000usize);
    switchboard_benches::count_args(&mut [("rounds", &mut rounds), ("packets", &mut packets)])
        .map_err(anyhow::Error::msg)?;
    let mut cases = cases();
    // Warm-up: caches, branch predictors, the resamplers' first calls.
    for case in &mut cases {
        batch(case, 200);
    }
    for case in &mut cases {
        (case.allocations, case.packets) = (0, 0);
    }
    for _ in 0..rounds {
        for case in &mut cases {
            let us = batch(case, packets);
            case.per_packet_us.push(us);
        }
    }
    println!("media_codec: µs per 20 ms packet, {rounds} rounds × {packets} packets");
    println!("| conversion | median | p10 | p90 | allocations/packet |");
    println!("|---|---:|---:|---:|---:|");
    for case in &mut cases {
        case.per_packet_us.sort_by(f64::total_cmp);
        let at = |q: f64| {
            let v = &case.per_packet_us;
            v[((v.len() - 1) as f64 * q).round() as usize]
        };
        println!(
            "| {} | {:.3} | {:.3} | {:.3} | {} |",
            case.name,
            at(0.5),
            at(0.1),
            at(0.9),
            case.allocations as f64 / case.packets as f64
        );
    }
    let allocating: Vec<&str> = cases
        .iter()
        .filter(|c| c.allocations > 0)
        .map(|c| c.name)
        .collect();
    anyhow::ensure!(
        allocating.is_empty(),
        "allocated per packet: {allocating:?}"
    );
    Ok(())
}
