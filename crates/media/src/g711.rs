//! G.711 µ-law (PCMU) and A-law (PCMA) by lookup table.
//!
//! Every table is computed at compile time from the ITU-T G.711 segment rules, so a sample
//! conversion is one array index. The agent side always speaks µ-law (Twilio's
//! `audio/x-mulaw`); a PCMA caller is transcoded byte for byte through the 256-entry
//! [`alaw_to_ulaw`] / [`ulaw_to_alaw`] tables without going through linear PCM at run time.

/// µ-law code of digital silence (positive zero). Used to pad partial frames.
pub const ULAW_SILENCE: u8 = 0xFF;
/// A-law code of digital silence (the smallest positive step).
pub const ALAW_SILENCE: u8 = 0xD5;

/// µ-law bias added before the segment search (G.711: 33 in 14-bit units = 132 in 16-bit).
const ULAW_BIAS: i32 = 0x84;
/// Largest 14-bit magnitude µ-law can represent once biased (8159 + 33 = 8192 - 1).
const ULAW_CLIP: i32 = 8159;

const fn ulaw_decode(code: u8) -> i16 {
    let u = !code;
    let mantissa = ((u & 0x0F) as i32) << 3;
    let segment = ((u & 0x70) >> 4) as u32;
    let magnitude = ((mantissa + ULAW_BIAS) << segment) - ULAW_BIAS;
    if u & 0x80 != 0 {
        -magnitude as i16
    } else {
        magnitude as i16
    }
}

const fn alaw_decode(code: u8) -> i16 {
    let a = code ^ 0x55;
    let mantissa = ((a & 0x0F) as i32) << 4;
    let segment = ((a & 0x70) >> 4) as u32;
    let magnitude = match segment {
        0 => mantissa + 8,
        1 => mantissa + 0x108,
        _ => (mantissa + 0x108) << (segment - 1),
    };
    if a & 0x80 != 0 {
        magnitude as i16
    } else {
        -magnitude as i16
    }
}

/// Encodes a 14-bit (sample >> 2) value to µ-law.
const fn ulaw_encode_14(value: i32) -> u8 {
    let (mut magnitude, mask) = if value < 0 {
        (-value, 0x7F_u8)
    } else {
        (value, 0xFF_u8)
    };
    if magnitude > ULAW_CLIP {
        magnitude = ULAW_CLIP;
    }
    magnitude += ULAW_BIAS >> 2;
    // Segment: the first whose upper bound (0x3F, 0x7F, 0xFF, ...) holds the magnitude.
    let mut segment = 0;
    while segment < 8 && magnitude > (0x40 << segment) - 1 {
        segment += 1;
    }
    if segment >= 8 {
        return 0x7F ^ mask;
    }
    let code = ((segment as u8) << 4) | (((magnitude >> (segment + 1)) & 0x0F) as u8);
    code ^ mask
}

/// Encodes a 13-bit (sample >> 3) value to A-law.
const fn alaw_encode_13(value: i32) -> u8 {
    let (magnitude, mask) = if value >= 0 {
        (value, 0xD5_u8)
    } else {
        (-value - 1, 0x55_u8)
    };
    let mut segment = 0;
    while segment < 8 && magnitude > (0x20 << segment) - 1 {
        segment += 1;
    }
    if segment >= 8 {
        return 0x7F ^ mask;
    }
    let shift = if segment < 2 { 1 } else { segment };
    let code = ((segment as u8) << 4) | (((magnitude >> shift) & 0x0F) as u8);
    code ^ mask
}

const ULAW_DECODE: [i16; 256] = {
    let mut table = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = ulaw_decode(i as u8);
        i += 1;
    }
    table
};

const ALAW_DECODE: [i16; 256] = {
    let mut table = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = alaw_decode(i as u8);
        i += 1;
    }
    table
};

/// µ-law code for every 14-bit linear value, indexed by `(sample >> 2) & 0x3FFF`.
static ULAW_ENCODE: [u8; 1 << 14] = {
    let mut table = [0u8; 1 << 14];
    let mut i = 0;
    while i < (1 << 14) {
        // Sign-extend the 14-bit index.
        let value = if i >= (1 << 13) {
            i as i32 - (1 << 14)
        } else {
            i as i32
        };
        table[i] = ulaw_encode_14(value);
        i += 1;
    }
    table
};

/// A-law code for every 13-bit linear value, indexed by `(sample >> 3) & 0x1FFF`.
static ALAW_ENCODE: [u8; 1 << 13] = {
    let mut table = [0u8; 1 << 13];
    let mut i = 0;
    while i < (1 << 13) {
        let value = if i >= (1 << 12) {
            i as i32 - (1 << 13)
        } else {
            i as i32
        };
        table[i] = alaw_encode_13(value);
        i += 1;
    }
    table
};

const ALAW_TO_ULAW: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = ulaw_encode_14((alaw_decode(i as u8) as i32) >> 2);
        i += 1;
    }
    table
};

const ULAW_TO_ALAW: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = alaw_encode_13((ulaw_decode(i as u8) as i32) >> 3);
        i += 1;
    }
    table
};

/// Decodes one µ-law byte to a 16-bit linear sample.
#[inline]
pub fn ulaw_to_linear(code: u8) -> i16 {
    ULAW_DECODE[code as usize]
}

/// Decodes one A-law byte to a 16-bit linear sample.
#[inline]
pub fn alaw_to_linear(code: u8) -> i16 {
    ALAW_DECODE[code as usize]
}

/// Encodes a 16-bit linear sample to µ-law.
#[inline]
pub fn linear_to_ulaw(sample: i16) -> u8 {
    ULAW_ENCODE[((sample >> 2) as usize) & 0x3FFF]
}

/// Encodes a 16-bit linear sample to A-law.
#[inline]
pub fn linear_to_alaw(sample: i16) -> u8 {
    ALAW_ENCODE[((sample >> 3) as usize) & 0x1FFF]
}

/// Transcodes one A-law byte to the µ-law byte of the nearest level.
#[inline]
pub fn alaw_to_ulaw(code: u8) -> u8 {
    ALAW_TO_ULAW[code as usize]
}

/// Transcodes one µ-law byte to the A-law byte of the nearest level.
#[inline]
pub fn ulaw_to_alaw(code: u8) -> u8 {
    ULAW_TO_ALAW[code as usize]
}

/// Transcodes a buffer of A-law bytes to µ-law in place.
pub fn alaw_to_ulaw_in_place(buf: &mut [u8]) {
    for b in buf {
        *b = ALAW_TO_ULAW[*b as usize];
    }
}

/// Transcodes a buffer of µ-law bytes to A-law in place.
pub fn ulaw_to_alaw_in_place(buf: &mut [u8]) {
    for b in buf {
        *b = ULAW_TO_ALAW[*b as usize];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulaw_known_values() {
        // Values from the G.711 µ-law decision table (16-bit scale).
        assert_eq!(ulaw_to_linear(0xFF), 0);
        assert_eq!(ulaw_to_linear(0x7F), 0);
        assert_eq!(ulaw_to_linear(0x00), -32124);
        assert_eq!(ulaw_to_linear(0x80), 32124);
        assert_eq!(ulaw_to_linear(0xFE), 8);
        assert_eq!(ulaw_to_linear(0xEF), 132);
        assert_eq!(ulaw_to_linear(0x9F), 8316);
        assert_eq!(linear_to_ulaw(0), 0xFF);
        assert_eq!(linear_to_ulaw(i16::MAX), 0x80);
        assert_eq!(linear_to_ulaw(i16::MIN), 0x00);
        assert_eq!(linear_to_ulaw(-1), 0x7E);
        assert_eq!(linear_to_ulaw(1000), 0xCE);
        assert_eq!(linear_to_ulaw(-1000), 0x4E);
    }

    #[test]
    fn alaw_known_values() {
        assert_eq!(alaw_to_linear(0xD5), 8);
        assert_eq!(alaw_to_linear(0x55), -8);
        assert_eq!(alaw_to_linear(0xAA), 32256);
        assert_eq!(alaw_to_linear(0x2A), -32256);
        assert_eq!(alaw_to_linear(0xC5), 264);
        assert_eq!(linear_to_alaw(0), 0xD5);
        assert_eq!(linear_to_alaw(-1), 0x55);
        assert_eq!(linear_to_alaw(i16::MAX), 0xAA);
        assert_eq!(linear_to_alaw(i16::MIN), 0x2A);
        assert_eq!(linear_to_alaw(1000), 0xFA);
        assert_eq!(linear_to_alaw(-1000), 0x7A);
    }

    #[test]
    fn every_code_survives_decode_then_encode() {
        for code in 0..=255u8 {
            assert_eq!(
                linear_to_alaw(alaw_to_linear(code)),
                code,
                "A-law {code:#04x}"
            );
            // µ-law has two zeros (0x7F = -0, 0xFF = +0); -0 encodes as +0.
            let expected = if code == 0x7F { 0xFF } else { code };
            assert_eq!(
                linear_to_ulaw(ulaw_to_linear(code)),
                expected,
                "µ-law {code:#04x}"
            );
        }
    }

    #[test]
    fn encoding_is_monotonic_in_level() {
        let mut previous = i16::MIN;
        for sample in (i16::MIN..=i16::MAX).step_by(7) {
            let level = ulaw_to_linear(linear_to_ulaw(sample));
            assert!(level >= previous, "µ-law level went down at {sample}");
            previous = level;
            let error =
                (i32::from(ulaw_to_linear(linear_to_ulaw(sample))) - i32::from(sample)).abs();
            // Quantisation step of the top segment is 1024; half of it plus clipping headroom.
            assert!(error <= 1024, "µ-law error {error} at {sample}");
            let error =
                (i32::from(alaw_to_linear(linear_to_alaw(sample))) - i32::from(sample)).abs();
            assert!(error <= 1024, "A-law error {error} at {sample}");
        }
    }

    #[test]
    fn transcoding_tables_pick_the_nearest_level() {
        for code in 0..=255u8 {
            let linear = i32::from(alaw_to_linear(code));
            let via_table = i32::from(ulaw_to_linear(alaw_to_ulaw(code)));
            // No µ-law level is closer than the one the table picked, within one step.
            let best = (0..=255u8)
                .map(|u| (i32::from(ulaw_to_linear(u)) - linear).abs())
                .min()
                .unwrap_or(0);
            let step = if linear.abs() < 256 {
                16
            } else {
                linear.abs() / 16
            };
            assert!(
                (via_table - linear).abs() <= best + step,
                "A-law {code:#04x}"
            );
            // Same sign.
            assert!(
                via_table.signum() * linear.signum() >= 0,
                "sign of {code:#04x}"
            );
        }
        // A-law's smallest level (+8) exists in µ-law too (0xFE).
        assert_eq!(alaw_to_ulaw(ALAW_SILENCE), 0xFE);
        assert_eq!(ulaw_to_alaw(ULAW_SILENCE), ALAW_SILENCE);
        // Mid-range levels round-trip exactly (both laws share these levels).
        for code in 0x80u8..=0xFF {
            let back = alaw_to_ulaw(ulaw_to_alaw(code));
            let diff = (i32::from(ulaw_to_linear(back)) - i32::from(ulaw_to_linear(code))).abs();
            assert!(
                diff <= 64.max(i32::from(ulaw_to_linear(code)).abs() / 8),
                "µ-law {code:#04x}"
            );
        }
    }

    #[test]
    fn in_place_buffers_match_the_scalar_functions() {
        let mut buf: Vec<u8> = (0..=255u8).collect();
        alaw_to_ulaw_in_place(&mut buf);
        for (i, b) in buf.iter().enumerate() {
            assert_eq!(*b, alaw_to_ulaw(i as u8));
        }
        let mut buf: Vec<u8> = (0..=255u8).collect();
        ulaw_to_alaw_in_place(&mut buf);
        for (i, b) in buf.iter().enumerate() {
            assert_eq!(*b, ulaw_to_alaw(i as u8));
        }
    }
}
