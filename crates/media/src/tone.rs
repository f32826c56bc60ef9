//! Test signals and their measurement: a sine generator and the Goertzel power of one
//! frequency. Used by the codec tests, the media and SIP end-to-end tests (is the caller's
//! tone what the agent hears?) and the codec bench.

use std::f64::consts::TAU;

/// `count` samples of a sine at `freq` Hz sampled at `rate` Hz, peak `amplitude` × full scale.
pub fn sine(freq: f64, rate: u32, amplitude: f64, count: usize) -> Vec<i16> {
    let peak = amplitude.clamp(0.0, 1.0) * f64::from(i16::MAX);
    (0..count)
        .map(|n| (peak * (TAU * freq * n as f64 / f64::from(rate)).sin()).round() as i16)
        .collect()
}

/// Mean power of the `freq` component of `samples` (Goertzel), on the scale of the mean
/// square: a pure sine of peak A gives A²/2 when `samples` spans whole cycles.
pub fn tone_power(samples: &[i16], freq: f64, rate: u32) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let coeff = 2.0 * (TAU * freq / f64::from(rate)).cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for sample in samples {
        let s0 = f64::from(*sample) + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let magnitude_sq = s1 * s1 + s2 * s2 - coeff * s1 * s2;
    let n = samples.len() as f64;
    2.0 * magnitude_sq / (n * n)
}

/// Mean square of `samples` (total power, every frequency).
pub fn mean_power(samples: &[i16]) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    samples.iter().map(|s| f64::from(*s).powi(2)).sum::<f64>() / samples.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn goertzel_finds_the_tone_and_not_another() {
        let s = sine(1000.0, 8000, 0.5, 8000);
        let total = mean_power(&s);
        assert!((tone_power(&s, 1000.0, 8000) / total - 1.0).abs() < 0.01);
        assert!(tone_power(&s, 2000.0, 8000) / total < 1e-4);
        assert_eq!(tone_power(&[], 1000.0, 8000), 0.0);
    }
}
