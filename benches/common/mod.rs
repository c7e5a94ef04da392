//! What several benchmarks share: medians and seeded Zipf-distributed token ids.

#![allow(dead_code)]

/// The median of `v` (sorted in place).
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// `n` token ids below `vocab`, Zipf-distributed with exponent `s` (id 0 the most frequent),
/// from a seeded SplitMix64 stream: the same arguments give the same ids.
pub fn zipf_tokens(vocab: usize, n: usize, s: f64, seed: u64) -> Vec<u32> {
    let mut cumulative = Vec::with_capacity(vocab);
    let mut total = 0f64;
    for i in 0..vocab {
        total += ((i + 1) as f64).powf(-s);
        cumulative.push(total);
    }
    let mut state = seed;
    (0..n)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            let u = ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64 * total;
            cumulative.partition_point(|&c| c < u) as u32
        })
        .collect()
}
