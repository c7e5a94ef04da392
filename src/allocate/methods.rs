//! The allocation methods themselves, below both the `allocate` entry point and the planner:
//! the paper's LZW walk, the uniform and frequency baselines, and the fill policies for rows
//! left over when the codewords run out.

use crate::util::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// What to do with rows left over when the LZW codewords run out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum FillPolicy {
    /// Spread the rest in proportion to unigram counts (largest remainder, capped at k_max).
    Frequency,
    /// One more row to every token below the cap, in id order, round after round.
    RoundRobin,
}

impl FillPolicy {
    pub fn name(self) -> &'static str {
        match self {
            FillPolicy::Frequency => "frequency",
            FillPolicy::RoundRobin => "round-robin",
        }
    }
}

/// Check that a budget can be met at all.
pub fn check_budget(vocab: u64, n_emb: u64, k_max: u32) -> Result<()> {
    if k_max == 0 {
        return Err(Error::input("--k-max must be at least 1"));
    }
    if vocab == 0 {
        return Err(Error::input("the vocabulary is empty"));
    }
    if n_emb < vocab {
        return Err(Error::input(format!(
            "n_emb {n_emb} is below the vocabulary size {vocab}: every token needs at least one row"
        )));
    }
    match vocab.checked_mul(u64::from(k_max)) {
        Some(most) if n_emb > most => Err(Error::input(format!(
            "n_emb {n_emb} exceeds vocab x k_max = {vocab} x {k_max} = {most}; raise --k-max or lower the budget"
        ))),
        _ => Ok(()),
    }
}

/// n_emb = round(`ratio` x vocab) for a rows-per-token flag (`flag` names it in messages),
/// refused unless [`check_budget`] accepts it. The ratio is checked before it is converted,
/// so `inf`, `nan` or `1e30` never become a saturated integer.
pub fn n_emb_for_ratio(ratio: f64, vocab: u64, k_max: u32, flag: &str) -> Result<u64> {
    if k_max == 0 {
        return Err(Error::input("--k-max must be at least 1"));
    }
    if !ratio.is_finite() || ratio <= 0.0 {
        return Err(Error::input(format!(
            "{flag} {ratio} must be a positive number"
        )));
    }
    if ratio > f64::from(k_max) + 0.5 {
        return Err(Error::input(format!(
            "{flag} {ratio} exceeds --k-max {k_max}: no token may own more than k_max rows"
        )));
    }
    // Below (k_max + 1) x vocab < 2^57, so the float is an exact integer after rounding.
    let n = (ratio * vocab as f64).round() as u64;
    check_budget(vocab, n, k_max)
        .map_err(|e| Error::input(format!("{flag} {ratio} (n_emb {n}): {e}")))?;
    Ok(n)
}

/// The result of the LZW walk: rows per token and rows still unplaced when the list ran out.
pub struct Walk {
    pub rows: Vec<u32>,
    pub remaining: u64,
}

/// The paper's walk over codewords given as (last token, count) columns in insertion order.
pub fn lzw_walk(vocab: usize, last_tokens: &[u32], counts: &[u64], n_emb: u64, k_max: u32) -> Walk {
    let mut rows = vec![1u32; vocab];
    let mut remaining = n_emb.saturating_sub(vocab as u64);
    if remaining > 0 {
        for id in walk_order(counts) {
            let t = last_tokens[id as usize] as usize;
            if rows[t] < k_max {
                rows[t] += 1;
                remaining -= 1;
                if remaining == 0 {
                    break;
                }
            }
        }
    }
    Walk { rows, remaining }
}

/// Equal rows; the first `n_emb % vocab` tokens get one more.
pub fn uniform(vocab: usize, n_emb: u64) -> Vec<u32> {
    let base = (n_emb / vocab as u64) as u32;
    let extra = (n_emb % vocab as u64) as usize;
    (0..vocab).map(|t| base + u32::from(t < extra)).collect()
}

/// Rows proportional to `weights`: floor 1, cap `k_max`, total exactly `n_emb`.
pub fn frequency(weights: &[u64], n_emb: u64, k_max: u32) -> Vec<u32> {
    let mut rows = vec![1u32; weights.len()];
    let extra = n_emb - weights.len() as u64;
    proportional_fill(&mut rows, weights, extra, k_max);
    rows
}

/// Add `extra` rows in proportion to `weights`, never taking a token past `k_max`.
///
/// Water-filling: each token gets min(room, lambda x weight) with lambda chosen so the total is
/// `extra`; integer parts first, then the largest remainders (ties to the lower id). Weights of
/// zero get nothing unless nothing else has room, then they share round-robin. Integer
/// arithmetic throughout, so the result does not depend on float rounding.
pub fn proportional_fill(rows: &mut [u32], weights: &[u64], extra: u64, k_max: u32) {
    let room = |t: usize, rows: &[u32]| (k_max - rows[t]) as u128;
    let mut left = extra as u128;
    // Tokens that can take rows, most "saturating" first: weight / room descending.
    let mut order: Vec<usize> = (0..rows.len())
        .filter(|&t| rows[t] < k_max && weights[t] > 0)
        .collect();
    order.sort_by(|&a, &b| {
        let lhs = weights[a] as u128 * room(b, rows);
        let rhs = weights[b] as u128 * room(a, rows);
        rhs.cmp(&lhs).then(a.cmp(&b))
    });
    let mut weight_sum: u128 = order.iter().map(|&t| weights[t] as u128).sum();
    let mut start = 0;
    // Cap every token whose proportional share reaches its room.
    while start < order.len() && left > 0 {
        let t = order[start];
        let r = room(t, rows);
        if weights[t] as u128 * left >= r * weight_sum {
            rows[t] = k_max;
            left -= r;
            weight_sum -= weights[t] as u128;
            start += 1;
        } else {
            break;
        }
    }
    if left > 0 && weight_sum > 0 {
        let rest = &order[start..];
        let mut remainders = Vec::with_capacity(rest.len());
        let mut placed = 0u128;
        for &t in rest {
            let share = weights[t] as u128 * left;
            let whole = share / weight_sum;
            rows[t] += whole as u32;
            placed += whole;
            remainders.push((share % weight_sum, t));
        }
        let mut leftover = left - placed;
        remainders.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        for &(_, t) in &remainders {
            if leftover == 0 {
                break;
            }
            if rows[t] < k_max {
                rows[t] += 1;
                leftover -= 1;
            }
        }
        left = leftover;
    }
    if left > 0 {
        round_robin(rows, left as u64, k_max);
    }
}

/// One row to each token below the cap in id order, round after round.
///
/// After m full rounds token t holds min(rows_t + m, k_max), so the number of full rounds is
/// found by bisection and the last, partial round placed in id order: the same rows as the
/// round-by-round loop, in time independent of `extra` (which may be billions).
pub fn round_robin(rows: &mut [u32], extra: u64, k_max: u32) {
    let placed = |rows: &[u32], m: u64| -> u128 {
        rows.iter()
            .map(|&r| u128::from(m.min(u64::from(k_max.saturating_sub(r)))))
            .sum()
    };
    let extra128 = u128::from(extra);
    let (mut lo, mut hi) = (0u64, u64::from(k_max));
    if placed(rows, hi) <= extra128 {
        // Every token reaches the cap; the budget check keeps anything from being left over.
        lo = hi;
    } else {
        // placed(lo) <= extra < placed(hi)
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if placed(rows, mid) <= extra128 {
                lo = mid;
            } else {
                hi = mid;
            }
        }
    }
    let mut left = extra128 - placed(rows, lo).min(extra128);
    for r in rows.iter_mut() {
        let room = k_max.saturating_sub(*r);
        *r += lo.min(u64::from(room)) as u32;
    }
    for r in rows.iter_mut() {
        if left == 0 {
            break;
        }
        if *r < k_max {
            *r += 1;
            left -= 1;
        }
    }
}

/// Allocate from a profile.
/// Codeword ids in the reference's walk order: count descending, insertion order on ties.
///
/// Almost every codeword has count 0 or 1 (a codeword is inserted with 1 and most are never
/// matched again), so only the few with a larger count are sorted; the rest follow as two runs
/// that are already in id order. This is the same order as a stable sort, in linear time for
/// all but the sorted head.
pub fn walk_order(counts: &[u64]) -> Vec<u32> {
    let mut head: Vec<(u64, u32)> = counts
        .iter()
        .enumerate()
        .filter(|(_, &c)| c > 1)
        .map(|(i, &c)| (c, i as u32))
        .collect();
    head.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut order = Vec::with_capacity(counts.len());
    order.extend(head.iter().map(|&(_, i)| i));
    for wanted in [1u64, 0] {
        order.extend(
            counts
                .iter()
                .enumerate()
                .filter(|(_, &c)| c == wanted)
                .map(|(i, _)| i as u32),
        );
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walk_skips_tokens_at_cap_and_stops_at_budget() {
        // Codewords (last token, count): singles 0,1,2 then [.,0] x3 with high counts.
        let last = [0, 1, 2, 0, 0, 0, 1];
        let counts = [0, 0, 0, 9, 8, 7, 1];
        // k_max 2: token 0 takes one row from the first codeword, then is capped; the next
        // codewords for 0 are skipped; [.,1] (count 1) gives token 1 its row.
        let w = lzw_walk(3, &last, &counts, 5, 2);
        assert_eq!(w.rows, vec![2, 2, 1]);
        assert_eq!(w.remaining, 0);
        // Single tokens with count 0 come last, in id order: 0 and 1 are capped, so 2 gets it.
        let w = lzw_walk(3, &last, &counts, 6, 2);
        assert_eq!(w.rows, vec![2, 2, 2]);
        // A higher cap lets token 0 take all three frequent codewords.
        let w = lzw_walk(3, &last, &counts, 6, 5);
        assert_eq!(w.rows, vec![4, 1, 1]);
        assert_eq!(w.remaining, 0);
        // The list runs out: 7 codewords place 7 rows at most, 5 of 12 are left.
        let w = lzw_walk(3, &last, &counts, 15, 5);
        assert_eq!(w.rows, vec![5, 3, 2]);
        assert_eq!(w.remaining, 15 - 10);
    }

    #[test]
    fn ties_keep_insertion_order() {
        // Two codewords with equal counts ending in different tokens: the earlier one wins
        // the single remaining row.
        let last = [0, 1, 1, 0];
        let counts = [0, 0, 4, 4];
        assert_eq!(lzw_walk(2, &last, &counts, 3, 8).rows, vec![1, 2]);
    }

    #[test]
    fn frequency_is_exact_and_capped() {
        let rows = frequency(&[100, 10, 1, 0], 10, 5);
        assert_eq!(rows.iter().sum::<u32>(), 10);
        assert_eq!(rows[0], 5);
        assert!(rows.iter().all(|&r| (1..=5).contains(&r)));
        assert!(rows[1] >= rows[2] && rows[2] >= rows[3]);
        // All weight zero: falls back to round-robin.
        assert_eq!(frequency(&[0, 0, 0], 5, 4), vec![2, 2, 1]);
    }

    /// The round-by-round loop `round_robin` replaces.
    fn round_robin_loop(rows: &mut [u32], mut extra: u64, k_max: u32) {
        while extra > 0 {
            let mut progressed = false;
            for r in rows.iter_mut() {
                if extra == 0 {
                    break;
                }
                if *r < k_max {
                    *r += 1;
                    extra -= 1;
                    progressed = true;
                }
            }
            if !progressed {
                break;
            }
        }
    }

    #[test]
    fn round_robin_matches_the_loop() {
        let mut seed = 7u64;
        let mut next = |m: u64| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) % m
        };
        for _ in 0..2000 {
            let k_max = 1 + next(9) as u32;
            let rows: Vec<u32> = (0..1 + next(7))
                .map(|_| 1 + next(k_max as u64) as u32)
                .collect();
            let extra = next(60);
            let (mut a, mut b) = (rows.clone(), rows.clone());
            round_robin(&mut a, extra, k_max);
            round_robin_loop(&mut b, extra, k_max);
            assert_eq!(a, b, "rows {rows:?} extra {extra} k_max {k_max}");
        }
    }

    #[test]
    fn round_robin_is_fast_for_huge_budgets() {
        // 10^12 rows over 50,000 tokens: the loop would take 10^12 steps.
        let mut rows = vec![1u32; 50_000];
        round_robin(&mut rows, 1_000_000_000_000, u32::MAX);
        let total: u64 = rows.iter().map(|&r| u64::from(r)).sum();
        assert_eq!(total, 50_000 + 1_000_000_000_000);
        assert_eq!(rows[0], 20_000_001);
        assert_eq!(rows[49_999], 20_000_001);
    }

    #[test]
    fn ratios_are_checked_before_conversion() {
        for r in [f64::NAN, f64::INFINITY, -1.0, 0.0] {
            let e = n_emb_for_ratio(r, 100, 512, "--rows-per-token")
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("--rows-per-token") && e.contains("positive"),
                "{e}"
            );
        }
        let e = n_emb_for_ratio(1e30, 100, 512, "--rows-per-token")
            .unwrap_err()
            .to_string();
        assert!(e.contains("exceeds --k-max 512"), "{e}");
        let e = n_emb_for_ratio(0.5, 100, 512, "--rows-per-token")
            .unwrap_err()
            .to_string();
        assert!(e.contains("n_emb 50") && e.contains("below"), "{e}");
        assert_eq!(n_emb_for_ratio(3.9, 100, 512, "--x").unwrap(), 390);
        assert!(check_budget(u64::MAX, u64::MAX, u32::MAX).is_ok());
        assert!(check_budget(0, 1, 1).is_err());
    }

    #[test]
    fn uniform_spreads_remainder_to_low_ids() {
        assert_eq!(uniform(3, 8), vec![3, 3, 2]);
    }

    #[test]
    fn budget_checks() {
        assert!(check_budget(10, 9, 4)
            .unwrap_err()
            .to_string()
            .contains("below"));
        assert!(check_budget(10, 41, 4)
            .unwrap_err()
            .to_string()
            .contains("exceeds"));
        assert!(check_budget(10, 40, 4).is_ok());
    }

    #[test]
    fn walk_order_is_a_stable_descending_sort() {
        let counts = [0, 3, 1, 3, 0, 1, 7, 2];
        let mut expected: Vec<u32> = (0..counts.len() as u32).collect();
        expected.sort_by(|a, b| counts[*b as usize].cmp(&counts[*a as usize]));
        assert_eq!(walk_order(&counts), expected);
    }
}
