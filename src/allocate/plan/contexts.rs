//! Context counts: for every token, the counts of the codewords that end in it, sorted in
//! descending order. This is what *context coverage* is measured on.
//!
//! An allocation that gives token t `d` rows covers the first `d - 1` of its codewords (the
//! one row every token owns stands for the token itself; each further row covers one more
//! context ending in t, the most frequent first). Coverage is the covered count mass over the
//! total count mass of all codewords. See `docs/planner.md`.
//!
//! Storage is run-length encoded per token (value, multiplicity), values descending, only
//! positive values, and at most `limit` items per token: codewords further down can never be
//! covered by an allocation whose blocks are at most `limit + 1` rows. Almost every codeword
//! has count 0 or 1, so the runs are short and building them is one linear pass plus a sort of
//! the (few) counts above 1.

use crate::util::error::{Error, Result};

/// Per-token sorted codeword counts (see the module docs).
#[derive(Clone, Debug)]
pub struct Contexts {
    vocab: usize,
    limit: u64,
    /// Token t's runs are `start[t]..start[t + 1]`.
    start: Vec<usize>,
    value: Vec<u64>,
    len: Vec<u64>,
    /// Count mass of every codeword ending in t, kept or not.
    token_mass: Vec<u128>,
    /// Positive-count codewords ending in t, kept or not.
    token_contexts: Vec<u64>,
    total_mass: u128,
}

/// Covered and total mass of an allocation on one profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Coverage {
    pub covered: u128,
    pub total: u128,
}

impl Coverage {
    /// Covered mass over total mass (0 when there is no mass at all).
    pub fn fraction(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.covered as f64 / self.total as f64
        }
    }
}

impl Contexts {
    /// Group codewords given as (last token, count) columns by last token. `limit` is the most
    /// items kept per token (`k_max - 1` for an allocation capped at `k_max`).
    pub fn build(vocab: usize, last_tokens: &[u32], counts: &[u64], limit: u64) -> Result<Self> {
        if last_tokens.len() != counts.len() {
            return Err(Error::input(format!(
                "codeword columns disagree in length ({} last tokens, {} counts)",
                last_tokens.len(),
                counts.len()
            )));
        }
        if let Some(bad) = last_tokens.iter().position(|&t| t as usize >= vocab) {
            return Err(Error::input(format!(
                "codeword {bad} ends in token {}, not below the vocabulary size {vocab}",
                last_tokens[bad]
            )));
        }
        // Pass 1: per token, how many counts of 1 and how many above 1; the mass.
        let mut ones = vec![0u64; vocab];
        let mut big = vec![0usize; vocab + 1];
        let mut token_mass = vec![0u128; vocab];
        let mut token_contexts = vec![0u64; vocab];
        for (&t, &c) in last_tokens.iter().zip(counts) {
            let t = t as usize;
            token_mass[t] += c as u128;
            if c > 0 {
                token_contexts[t] += 1;
            }
            match c {
                0 => {}
                1 => ones[t] += 1,
                _ => big[t + 1] += 1,
            }
        }
        for t in 0..vocab {
            big[t + 1] += big[t];
        }
        // Pass 2: the counts above 1, bucketed by token (CSR).
        let mut fill = big.clone();
        let mut values = vec![0u64; big[vocab]];
        for (&t, &c) in last_tokens.iter().zip(counts) {
            if c > 1 {
                let slot = &mut fill[t as usize];
                values[*slot] = c;
                *slot += 1;
            }
        }
        let mut start = Vec::with_capacity(vocab + 1);
        let mut value = Vec::new();
        let mut len = Vec::new();
        start.push(0);
        for t in 0..vocab {
            let bucket = &mut values[big[t]..big[t + 1]];
            let keep = (bucket.len() as u64).min(limit) as usize;
            if keep < bucket.len() {
                bucket.select_nth_unstable_by(keep, |a, b| b.cmp(a));
            }
            let bucket = &mut bucket[..keep];
            bucket.sort_unstable_by(|a, b| b.cmp(a));
            let mut kept = 0u64;
            for &c in bucket.iter() {
                if value.last() == Some(&c) && value.len() > *start.last().expect("non-empty") {
                    *len.last_mut().expect("run exists") += 1;
                } else {
                    value.push(c);
                    len.push(1);
                }
                kept += 1;
            }
            let room = limit - kept;
            let n_ones = ones[t].min(room);
            if n_ones > 0 {
                value.push(1);
                len.push(n_ones);
            }
            start.push(value.len());
        }
        let total_mass = token_mass.iter().sum();
        Ok(Contexts {
            vocab,
            limit,
            start,
            value,
            len,
            token_mass,
            token_contexts,
            total_mass,
        })
    }

    /// From a profile's dictionary.
    pub fn from_profile(profile: &crate::formats::profile::Profile, limit: u64) -> Result<Self> {
        Self::build(
            profile.meta.vocab_size as usize,
            &profile.codewords.tokens,
            &profile.codewords.counts,
            limit,
        )
    }

    pub fn vocab(&self) -> usize {
        self.vocab
    }
    /// Most items kept per token.
    pub fn limit(&self) -> u64 {
        self.limit
    }
    pub fn total_mass(&self) -> u128 {
        self.total_mass
    }
    pub fn token_mass(&self, t: usize) -> u128 {
        self.token_mass[t]
    }
    /// Number of codewords with a positive count ending in `t`.
    pub fn token_contexts(&self, t: usize) -> u64 {
        self.token_contexts[t]
    }
    /// Token t's runs as (value, multiplicity), values descending and positive.
    pub fn runs(&self, t: usize) -> impl Iterator<Item = (u64, u64)> + '_ {
        let r = self.start[t]..self.start[t + 1];
        self.value[r.clone()]
            .iter()
            .copied()
            .zip(self.len[r].iter().copied())
    }

    /// Mass of token t's `items` largest codeword counts (items beyond the kept ones count 0;
    /// build with a large enough `limit`).
    pub fn prefix(&self, t: usize, items: u64) -> u128 {
        let mut left = items;
        let mut sum = 0u128;
        for (v, n) in self.runs(t) {
            if left == 0 {
                break;
            }
            let take = n.min(left);
            sum += v as u128 * take as u128;
            left -= take;
        }
        sum
    }

    /// Context coverage of per-token rows (each at least 1). Rows beyond `limit + 1` cover
    /// nothing more than `limit + 1` would, so build with `limit >= max(rows) - 1` for exact
    /// figures.
    pub fn coverage(&self, rows: &[u32]) -> Coverage {
        let covered = rows
            .iter()
            .enumerate()
            .take(self.vocab)
            .map(|(t, &d)| self.prefix(t, (d as u64).saturating_sub(1)))
            .sum();
        Coverage {
            covered,
            total: self.total_mass,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_sorted_grouped_and_truncated() {
        // Token 0: counts 5, 1, 3, 3, 0, 1, 2; token 1: 7; token 2: nothing.
        let last = [0, 0, 0, 0, 0, 0, 0, 1];
        let counts = [5, 1, 3, 3, 0, 1, 2, 7];
        let c = Contexts::build(3, &last, &counts, 10).unwrap();
        assert_eq!(
            c.runs(0).collect::<Vec<_>>(),
            vec![(5, 1), (3, 2), (2, 1), (1, 2)]
        );
        assert_eq!(c.runs(1).collect::<Vec<_>>(), vec![(7, 1)]);
        assert_eq!(c.runs(2).count(), 0);
        assert_eq!(c.total_mass(), 22);
        assert_eq!(c.token_mass(0), 15);
        assert_eq!(c.token_contexts(0), 6);
        // Limit 3 keeps 5, 3, 3.
        let c3 = Contexts::build(3, &last, &counts, 3).unwrap();
        assert_eq!(c3.runs(0).collect::<Vec<_>>(), vec![(5, 1), (3, 2)]);
        assert_eq!(c3.total_mass(), 22, "the total counts every codeword");
        // Rows 1 cover nothing, 3 rows cover 5 + 3, 10 rows cover all of token 0.
        assert_eq!(c.coverage(&[1, 1, 1]).covered, 0);
        assert_eq!(c.coverage(&[3, 1, 1]).covered, 8);
        assert_eq!(c.coverage(&[10, 2, 1]).covered, 22);
        assert!((c.coverage(&[3, 2, 1]).fraction() - 15.0 / 22.0).abs() < 1e-12);
    }

    #[test]
    fn rejects_out_of_range_tokens() {
        assert!(Contexts::build(2, &[0, 2], &[1, 1], 4).is_err());
        assert!(Contexts::build(2, &[0], &[1, 1], 4).is_err());
    }
}
