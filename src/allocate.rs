//! Stage 2: turn a profile into a per-token allocation.
//!
//! `lzw` is the paper's Algorithm 1 walk, reproduced exactly: every token starts with one row;
//! codewords are visited by count (descending, insertion order on ties) and each gives one row
//! to its last token unless that token is at `k_max`; the walk stops as soon as the budget is
//! met. `uniform` and `frequency` are the baselines the paper compares against.
//!
//! When the codewords run out before the budget is met the reference has no rule, so l3kit
//! refuses to guess: the caller must name a [`FillPolicy`].

use crate::allocation::{Allocation, AllocationMeta};
use crate::layout::TableDtype;
use crate::lzw::walk_order;
use crate::profile::Profile;
use crate::util::error::{Error, Result};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// The paper's LZW walk (Algorithm 1), exact.
    Lzw,
    /// The same number of rows for every token (lower ids take the remainder).
    Uniform,
    /// Rows proportional to unigram frequency, at least 1 and at most k_max each.
    Frequency,
    /// Maximal context coverage, optionally under an E[d_t] budget (see `plan`).
    Optimal,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::Lzw => "lzw",
            Method::Uniform => "uniform",
            Method::Frequency => "frequency",
            Method::Optimal => "optimal",
        }
    }
}

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

#[derive(Clone, Copy, Debug)]
pub struct AllocateOptions {
    pub n_emb: u64,
    pub k_max: u32,
    pub method: Method,
    pub fill: Option<FillPolicy>,
}

/// Check that a budget can be met at all.
pub fn check_budget(vocab: u64, n_emb: u64, k_max: u32) -> Result<()> {
    if k_max == 0 {
        return Err(Error::input("--k-max must be at least 1"));
    }
    if n_emb < vocab {
        return Err(Error::input(format!(
            "n_emb {n_emb} is below the vocabulary size {vocab}: every token needs at least one row"
        )));
    }
    let most = vocab * k_max as u64;
    if n_emb > most {
        return Err(Error::input(format!(
            "n_emb {n_emb} exceeds vocab x k_max = {vocab} x {k_max} = {most}; raise --k-max or lower the budget"
        )));
    }
    Ok(())
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
pub fn round_robin(rows: &mut [u32], mut extra: u64, k_max: u32) {
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
            break; // every token at the cap; the budget check rules this out
        }
    }
}

/// Allocate from a profile.
pub fn allocate(profile: &Profile, opts: &AllocateOptions) -> Result<Allocation> {
    let vocab = profile.meta.vocab_size as usize;
    check_budget(vocab as u64, opts.n_emb, opts.k_max)?;
    let mut fill = None;
    let mut fill_rows = 0;
    let rows = match opts.method {
        Method::Uniform => uniform(vocab, opts.n_emb),
        Method::Frequency => frequency(&profile.unigram, opts.n_emb, opts.k_max),
        // Without a cost budget; `plan::allocate_optimal` takes one.
        Method::Optimal => crate::plan::optimal_rows(profile, opts.n_emb, opts.k_max)?,
        Method::Lzw => {
            let Walk {
                mut rows,
                remaining,
            } = lzw_walk(
                vocab,
                profile.dict.tokens(),
                profile.dict.counts(),
                opts.n_emb,
                opts.k_max,
            );
            if remaining > 0 {
                let policy = opts.fill.ok_or_else(|| {
                    Error::input(format!(
                        "the LZW codewords ran out with {remaining} of {} rows left to place \
                         ({} codewords from {} tokens); profile more text, lower --n-emb, or choose \
                         --fill frequency|round-robin to place the rest explicitly",
                        opts.n_emb,
                        profile.dict.len(),
                        profile.meta.tokens
                    ))
                })?;
                match policy {
                    FillPolicy::Frequency => {
                        proportional_fill(&mut rows, &profile.unigram, remaining, opts.k_max)
                    }
                    FillPolicy::RoundRobin => round_robin(&mut rows, remaining, opts.k_max),
                }
                fill = Some(policy.name().to_string());
                fill_rows = remaining;
            }
            rows
        }
    };
    let meta = AllocationMeta {
        method: opts.method.name().to_string(),
        k_max: opts.k_max,
        n_emb: opts.n_emb,
        vocab_size: vocab as u32,
        profile_sha256: Some(profile.content_sha256.clone()),
        tokenizer_sha256: profile.meta.tokenizer_sha256.clone(),
        fill,
        fill_rows,
    };
    Allocation::from_rows(&rows, meta)
}

/// Layer shape for the memory part of the report.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct LayerShape {
    pub d_in: u64,
    pub d_emb: u64,
    pub tied: bool,
    pub dtype: TableDtype,
}

#[derive(Clone, Debug, Serialize)]
pub struct Bucket {
    pub label: String,
    pub min_rows: u32,
    pub max_rows: u32,
    pub tokens: u64,
    pub rows: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct MemoryReport {
    pub d_in: u64,
    pub d_emb: u64,
    pub tied: bool,
    pub dtype: TableDtype,
    pub bytes_per_row: u64,
    pub bytes_per_layer: u64,
    pub worst_case_bytes_per_token: u64,
    pub expected_bytes_per_token: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct TopToken {
    pub id: u32,
    pub text: Option<String>,
    pub rows: u32,
    pub count: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct AllocationReport {
    pub method: String,
    pub vocab_size: u64,
    pub n_emb: u64,
    pub k_max: u32,
    pub mean_rows_per_token: f64,
    pub max_rows: u32,
    pub tokens_at_cap: u64,
    pub histogram: Vec<Bucket>,
    /// E[d_t] under the profile's unigram distribution.
    pub expected_rows_per_token: Option<f64>,
    pub fill: Option<String>,
    pub fill_rows: u64,
    pub memory: Option<MemoryReport>,
    pub top_tokens: Vec<TopToken>,
}

/// E[d_t] = sum_t p(t) d_t.
pub fn expected_rows(rows: &[u32], unigram: &[u64]) -> Option<f64> {
    let total: u64 = unigram.iter().sum();
    if total == 0 || rows.len() != unigram.len() {
        return None;
    }
    let weighted: f64 = rows
        .iter()
        .zip(unigram)
        .map(|(&r, &c)| r as f64 * c as f64)
        .sum();
    Some(weighted / total as f64)
}

/// Buckets 1, 2, 3-4, 5-8, ... up to k_max.
pub fn histogram(rows: &[u32], k_max: u32) -> Vec<Bucket> {
    let mut buckets = Vec::new();
    let (mut lo, mut hi) = (1u32, 1u32);
    loop {
        let label = if lo == hi {
            lo.to_string()
        } else {
            format!("{lo}-{hi}")
        };
        buckets.push(Bucket {
            label,
            min_rows: lo,
            max_rows: hi,
            tokens: 0,
            rows: 0,
        });
        if hi >= k_max {
            break;
        }
        lo = hi + 1;
        hi = hi.saturating_mul(2);
    }
    for &r in rows {
        let i = buckets
            .iter()
            .position(|b| r <= b.max_rows)
            .unwrap_or(buckets.len() - 1);
        buckets[i].tokens += 1;
        buckets[i].rows += r as u64;
    }
    buckets
}

pub fn report(
    alloc: &Allocation,
    unigram: Option<&[u64]>,
    shape: Option<LayerShape>,
    tokenizer: Option<&tokenizers::Tokenizer>,
) -> AllocationReport {
    let rows = alloc.rows_vec();
    let k_max = alloc.meta.k_max;
    let max_rows = rows.iter().copied().max().unwrap_or(0);
    let expected = unigram.and_then(|u| expected_rows(&rows, u));
    let memory = shape.map(|s| {
        let per_row = s.dtype.row_bytes(s.d_in, s.d_emb, s.tied);
        MemoryReport {
            d_in: s.d_in,
            d_emb: s.d_emb,
            tied: s.tied,
            dtype: s.dtype,
            bytes_per_row: per_row,
            bytes_per_layer: per_row * alloc.n_emb(),
            worst_case_bytes_per_token: per_row * max_rows as u64,
            expected_bytes_per_token: expected.map(|e| e * per_row as f64),
        }
    });
    let mut top: Vec<usize> = (0..rows.len()).collect();
    let count = |t: usize| unigram.map(|u| u[t]).unwrap_or(0);
    top.sort_by(|&a, &b| {
        rows[b]
            .cmp(&rows[a])
            .then(count(b).cmp(&count(a)))
            .then(a.cmp(&b))
    });
    let top_tokens = top
        .into_iter()
        .take(10)
        .map(|t| TopToken {
            id: t as u32,
            text: tokenizer.and_then(|tok| tok.decode(&[t as u32], false).ok()),
            rows: rows[t],
            count: count(t),
        })
        .collect();
    AllocationReport {
        method: alloc.meta.method.clone(),
        vocab_size: alloc.vocab() as u64,
        n_emb: alloc.n_emb(),
        k_max,
        mean_rows_per_token: alloc.n_emb() as f64 / alloc.vocab() as f64,
        max_rows,
        tokens_at_cap: rows.iter().filter(|&&r| r == k_max).count() as u64,
        histogram: histogram(&rows, k_max),
        expected_rows_per_token: expected,
        fill: alloc.meta.fill.clone(),
        fill_rows: alloc.meta.fill_rows,
        memory,
        top_tokens,
    }
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
    fn histogram_buckets() {
        let h = histogram(&[1, 2, 3, 4, 5, 512], 512);
        let labels: Vec<_> = h.iter().map(|b| b.label.as_str()).collect();
        assert_eq!(labels[..4], ["1", "2", "3-4", "5-8"]);
        assert_eq!(labels.last().copied(), Some("257-512"));
        assert_eq!(h[2].tokens, 2);
        assert_eq!(h.last().unwrap().tokens, 1);
    }
}
