//! Choosing the next token: greedy (argmax, ties to the lower id) by default, or sampled from
//! the softmax at a temperature, optionally restricted to the top-p nucleus, with a seeded
//! generator so the same seed always gives the same text.

use crate::util::error::{Error, Result};

/// How the next token is chosen.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampling {
    /// 0 means greedy.
    pub temperature: f64,
    /// Nucleus: the smallest set of most likely tokens whose probability reaches top_p.
    pub top_p: f64,
    pub seed: u64,
}

impl Sampling {
    pub fn greedy() -> Self {
        Sampling {
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
        }
    }

    pub fn check(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(Error::input(format!(
                "--temperature {}: must be a number >= 0 (0 is greedy)",
                self.temperature
            )));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::input(format!(
                "--top-p {}: must be in (0, 1]",
                self.top_p
            )));
        }
        Ok(())
    }
}

/// SplitMix64: small, fast, and the same on every platform.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The index of the largest value (the lowest index among equals; NaN never wins).
pub fn argmax(logits: &[f32]) -> usize {
    let mut best = 0;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &v) in logits.iter().enumerate() {
        if v > best_v {
            best = i;
            best_v = v;
        }
    }
    best
}

/// Pick the next token from one position's logits.
pub fn choose(logits: &[f32], s: &Sampling, rng: &mut Rng) -> usize {
    if s.temperature == 0.0 {
        return argmax(logits);
    }
    let max = logits
        .iter()
        .copied()
        .filter(|v| v.is_finite())
        .fold(f32::NEG_INFINITY, f32::max) as f64;
    let mut probs: Vec<(usize, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let p = if v.is_finite() {
                ((v as f64 - max) / s.temperature).exp()
            } else {
                0.0
            };
            (i, p)
        })
        .collect();
    let total: f64 = probs.iter().map(|p| p.1).sum();
    if total.is_nan() || total <= 0.0 {
        return argmax(logits);
    }
    // Most likely first, ties by id, so the nucleus and the draw are deterministic.
    probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut keep = probs.len();
    if s.top_p < 1.0 {
        let mut acc = 0.0;
        for (k, p) in probs.iter().enumerate() {
            acc += p.1 / total;
            if acc >= s.top_p {
                keep = k + 1;
                break;
            }
        }
    }
    let kept = &probs[..keep];
    let mass: f64 = kept.iter().map(|p| p.1).sum();
    let mut r = rng.uniform() * mass;
    for p in kept {
        if r < p.1 {
            return p.0;
        }
        r -= p.1;
    }
    kept.last().map(|p| p.0).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_first_maximum() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, f32::NAN]), 1);
        let mut rng = Rng::new(0);
        assert_eq!(choose(&[0.0, 5.0, 1.0], &Sampling::greedy(), &mut rng), 1);
    }

    #[test]
    fn sampling_is_seeded_and_respects_the_nucleus() {
        let logits = [2.0f32, 1.0, 0.5, -3.0];
        let s = Sampling {
            temperature: 1.0,
            top_p: 1.0,
            seed: 7,
        };
        let draw = |seed| {
            let mut rng = Rng::new(seed);
            (0..50)
                .map(|_| choose(&logits, &s, &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
        // top_p 0.5: token 0 alone holds ~0.6 of the mass, so it is always chosen.
        let tight = Sampling { top_p: 0.5, ..s };
        let mut rng = Rng::new(1);
        assert!((0..100).all(|_| choose(&logits, &tight, &mut rng) == 0));
    }
}
