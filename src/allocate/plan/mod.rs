//! The allocation planner: trade memory, speed and quality explicitly.
//!
//! The paper controls an allocation with the total rows `n_emb` (memory) and the cap `k_max`.
//! What a deployed model pays per token, in FLOPs and in bytes fetched from host memory, grows
//! with the expected rows per token `E[d_t] = sum_t p(t) d_t`. This module makes that a third
//! knob:
//!
//! - [`contexts`]: *context coverage*, the quality measure (the share of LZW codeword mass an
//!   allocation covers; the paper's walk maximises it under the memory budget alone);
//! - [`solver`]: the optimal allocation under memory and expected-cost budgets, with an exact
//!   LP bound and a proof of optimality;
//! - [`milp`]: the same problem for good_lp's MILP solver, the oracle the solver is tested
//!   against;
//! - [`evaluate`]: any allocation on a held-out profile;
//! - [`sweep`] and [`plot`]: the trade-off over a grid of budgets, as CSV, JSON and pictures.
//!
//! See `docs/planner.md`.

pub mod contexts;
pub mod evaluate;
pub mod milp;
pub mod plot;
pub mod solver;
pub mod sweep;

pub use contexts::{Contexts, Coverage};
pub use solver::Optimality;

use crate::allocate::check_budget;
use crate::formats::allocation::{Allocation, AllocationMeta};
use crate::formats::profile::Profile;
use crate::util::error::{Error, Result};
use serde::Serialize;
use solver::Groups;
use std::time::Instant;

/// Default node limit of the exact core search.
pub const DEFAULT_NODE_LIMIT: u64 = 2_000_000;

/// A budget on the expected cost per token.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum CostBudget {
    /// E[d_t] <= rows (`--mean-rows`).
    MeanRows { rows: f64 },
    /// E[d_t] x row_bytes <= bytes (`--max-bytes-per-token`).
    BytesPerToken { bytes: f64, row_bytes: u64 },
}

impl CostBudget {
    /// The flag that sets it, with its value, for messages.
    pub fn describe(&self) -> String {
        match self {
            CostBudget::MeanRows { rows } => format!("--mean-rows {rows}"),
            CostBudget::BytesPerToken { bytes, .. } => format!("--max-bytes-per-token {bytes}"),
        }
    }

    /// The budget as a cap on E[d_t].
    pub fn mean_rows(&self) -> f64 {
        match *self {
            CostBudget::MeanRows { rows } => rows,
            CostBudget::BytesPerToken { bytes, row_bytes } => bytes / row_bytes as f64,
        }
    }

    /// The cap on `sum_t u_t d_t` for a profile of `total` tokens: floor(M x total), with a
    /// relative allowance of 1e-12 for the decimal value's float rounding.
    pub fn cost_cap(&self, total: u128) -> Result<u128> {
        let m = self.mean_rows();
        let value = match *self {
            CostBudget::MeanRows { rows } => rows,
            CostBudget::BytesPerToken { bytes, .. } => bytes,
        };
        if !value.is_finite() || value <= 0.0 {
            return Err(Error::input(format!(
                "{} must be a positive number",
                self.describe()
            )));
        }
        if let CostBudget::BytesPerToken { row_bytes: 0, .. } = self {
            return Err(Error::input("the layer shape gives rows of 0 bytes"));
        }
        let c = m * total as f64;
        Ok((c + c * 1e-12).floor() as u128)
    }
}

/// The smallest E[d_t] budget that can place `n_emb` rows, as the exact rational
/// (numerator, denominator) over the profile's unigram counts.
pub fn min_cost(unigram: &[u64], n_emb: u64, k_max: u32) -> u128 {
    let mut w: Vec<u64> = unigram.to_vec();
    w.sort_unstable();
    let mut left = n_emb.saturating_sub(unigram.len() as u64) as u128;
    let room = k_max.saturating_sub(1) as u128;
    let mut cost: u128 = w.iter().map(|&u| u as u128).sum();
    for &u in &w {
        if left == 0 {
            break;
        }
        let t = left.min(room);
        cost += t * u as u128;
        left -= t;
    }
    cost
}

/// `num / den` rounded up to 4 decimals, as text.
fn ceil_decimal(num: u128, den: u128) -> String {
    let scaled = (num * 10_000).div_ceil(den.max(1));
    format!("{}.{:04}", scaled / 10_000, scaled % 10_000)
}

/// One solved allocation and how it stands.
#[derive(Clone, Debug, Serialize)]
pub struct OptimalSummary {
    pub vocab_size: u64,
    pub n_emb: u64,
    pub k_max: u32,
    pub budget: Option<CostBudget>,
    /// The cap on E[d_t] the budget amounts to.
    pub mean_rows_cap: Option<f64>,
    /// Context coverage on the profile it was planned on.
    pub coverage: f64,
    pub covered_mass: u64,
    pub total_mass: u64,
    /// E[d_t] under the profile's unigram distribution.
    pub expected_rows: Option<f64>,
    /// The LP relaxation's coverage (an upper bound on any allocation's).
    pub lp_bound_coverage: Option<f64>,
    /// Codeword mass between the allocation and the LP bound (0: optimal and tight).
    pub gap_to_lp_bound: Option<f64>,
    pub optimality: Optimality,
    /// The Lagrange multiplier of the cost budget (coverage mass per unit of sum u_t d_t).
    pub multiplier: f64,
    pub groups: u64,
    pub core_groups: u64,
    pub search_nodes: u64,
    #[serde(skip)]
    pub seconds: f64,
}

/// An optimal allocation: rows per token and its summary.
pub struct OptimalAllocation {
    pub rows: Vec<u32>,
    pub summary: OptimalSummary,
}

impl OptimalAllocation {
    /// As an [`Allocation`] with provenance.
    pub fn to_allocation(&self, profile: &Profile) -> Result<Allocation> {
        Allocation::from_rows(
            &self.rows,
            AllocationMeta {
                method: "optimal".into(),
                k_max: self.summary.k_max,
                n_emb: self.summary.n_emb,
                vocab_size: self.summary.vocab_size as u32,
                profile_sha256: Some(profile.content_sha256.clone()),
                tokenizer_sha256: profile.meta.tokenizer_sha256.clone(),
                fill: None,
                fill_rows: 0,
            },
        )
    }

    /// Extra allocation-file metadata: the budget and the coverage reached.
    pub fn metadata(&self) -> Vec<(String, String)> {
        let mut out = vec![
            ("objective".to_string(), "context_coverage".to_string()),
            (
                "coverage".to_string(),
                format!("{:.9}", self.summary.coverage),
            ),
        ];
        if let Some(b) = &self.summary.budget {
            out.push((
                "cost_budget".to_string(),
                serde_json::to_string(b).expect("budget serialises"),
            ));
        }
        out
    }
}

/// Everything the solver needs from a profile at one `k_max`, built once and reused for any
/// number of budgets.
pub struct Planner {
    vocab: usize,
    k_max: u32,
    contexts: Contexts,
    groups: Groups,
    unigram: Vec<u64>,
    total_tokens: u128,
}

impl Planner {
    /// From codeword columns (last token, count) and unigram counts.
    pub fn new(
        vocab: usize,
        last_tokens: &[u32],
        counts: &[u64],
        unigram: &[u64],
        k_max: u32,
    ) -> Result<Self> {
        if k_max == 0 {
            return Err(Error::input("--k-max must be at least 1"));
        }
        if vocab == 0 {
            return Err(Error::input("the vocabulary is empty"));
        }
        let contexts = Contexts::build(vocab, last_tokens, counts, k_max as u64 - 1)?;
        let groups = Groups::build(&contexts, unigram)?;
        Ok(Planner {
            vocab,
            k_max,
            contexts,
            groups,
            unigram: unigram.to_vec(),
            total_tokens: unigram.iter().map(|&u| u as u128).sum(),
        })
    }

    pub fn from_profile(profile: &Profile, k_max: u32) -> Result<Self> {
        Self::new(
            profile.meta.vocab_size as usize,
            &profile.codewords.tokens,
            &profile.codewords.counts,
            &profile.unigram,
            k_max,
        )
    }

    pub fn vocab(&self) -> usize {
        self.vocab
    }
    pub fn k_max(&self) -> u32 {
        self.k_max
    }
    pub fn contexts(&self) -> &Contexts {
        &self.contexts
    }
    pub fn unigram(&self) -> &[u64] {
        &self.unigram
    }
    pub fn total_tokens(&self) -> u128 {
        self.total_tokens
    }
    /// Number of token groups (tokens with identical counts merged).
    pub fn groups(&self) -> usize {
        self.groups.len()
    }

    /// Coverage of any rows (each at most k_max) on this profile.
    pub fn coverage(&self, rows: &[u32]) -> Coverage {
        self.contexts.coverage(rows)
    }

    /// E[d_t] of any rows under this profile's unigram distribution.
    pub fn expected_rows(&self, rows: &[u32]) -> Option<f64> {
        crate::formats::allocation::expected_rows(rows, &self.unigram)
    }

    /// The smallest `sum_t u_t d_t` with which `n_emb` rows fit.
    pub fn min_cost(&self, n_emb: u64) -> u128 {
        min_cost(&self.unigram, n_emb, self.k_max)
    }

    /// Turn a budget into a cap on `sum_t u_t d_t`, or the error that names the smallest
    /// feasible budget.
    pub fn cost_cap(&self, n_emb: u64, budget: &CostBudget) -> Result<u128> {
        let total = self.total_tokens;
        if total == 0 {
            return Err(Error::input(format!(
                "{}: the profile has no tokens, so it gives no unigram distribution to budget E[d_t] under",
                budget.describe()
            )));
        }
        let cap = budget.cost_cap(total)?;
        let least = self.min_cost(n_emb);
        if cap >= least {
            return Ok(cap);
        }
        let smallest = match budget {
            CostBudget::MeanRows { .. } => {
                format!("--mean-rows {}", ceil_decimal(least, total))
            }
            CostBudget::BytesPerToken { row_bytes, .. } => format!(
                "--max-bytes-per-token {}",
                (least * *row_bytes as u128).div_ceil(total)
            ),
        };
        let why = if cap < total {
            "is below the cost of one row per token (E[d_t] = 1)".to_string()
        } else {
            format!(
                "is too low to place n_emb = {n_emb} rows (vocabulary {}, k_max {}): even the \
                 rarest tokens filled to the cap cost more",
                self.vocab, self.k_max
            )
        };
        Err(Error::input(format!(
            "{} {why}; the smallest feasible budget at n_emb {n_emb} is {smallest}",
            budget.describe()
        )))
    }

    /// The optimal allocation of `n_emb` rows under an optional budget.
    pub fn solve(&self, n_emb: u64, budget: Option<CostBudget>) -> Result<OptimalAllocation> {
        let cap = match &budget {
            Some(b) => Some(self.cost_cap(n_emb, b)?),
            None => None,
        };
        self.solve_cap(n_emb, cap, budget, DEFAULT_NODE_LIMIT)
    }

    /// The optimal allocation with a raw cap on `sum_t u_t d_t` (checked here too).
    pub fn solve_cap(
        &self,
        n_emb: u64,
        cap: Option<u128>,
        budget: Option<CostBudget>,
        node_limit: u64,
    ) -> Result<OptimalAllocation> {
        let started = Instant::now();
        check_budget(self.vocab as u64, n_emb, self.k_max)?;
        let r = n_emb - self.vocab as u64;
        let extra_cap = match cap {
            None => None,
            Some(c) => {
                let least = self.min_cost(n_emb);
                if c < least {
                    return Err(Error::input(format!(
                        "the cost cap {c} is below the least cost {least} of n_emb {n_emb} rows"
                    )));
                }
                Some(c - self.total_tokens)
            }
        };
        let sol = solver::solve(&self.groups, r, extra_cap, node_limit);
        let rows = solver::expand(&self.groups, &sol.y, self.vocab);
        let coverage = self.contexts.coverage(&rows);
        // The solver's invariants, checked on the result rather than trusted.
        let placed: u64 = rows.iter().map(|&d| d as u64).sum();
        let cost: u128 = rows
            .iter()
            .zip(&self.unigram)
            .map(|(&d, &u)| d as u128 * u as u128)
            .sum();
        if placed != n_emb
            || rows.iter().any(|&d| d == 0 || d > self.k_max)
            || cap.is_some_and(|c| cost > c)
            || coverage.covered != sol.value
        {
            return Err(Error::Check(format!(
                "the planner produced an inconsistent allocation ({placed} rows for n_emb {n_emb}, \
                 cost {cost} for cap {cap:?}); this is a bug in l3kit, please report it"
            )));
        }
        let total = coverage.total;
        let frac = |m: f64| if total == 0 { 0.0 } else { m / total as f64 };
        let summary = OptimalSummary {
            vocab_size: self.vocab as u64,
            n_emb,
            k_max: self.k_max,
            budget,
            mean_rows_cap: cap.map(|c| c as f64 / self.total_tokens.max(1) as f64),
            coverage: coverage.fraction(),
            covered_mass: sat64(coverage.covered),
            total_mass: sat64(total),
            expected_rows: self.expected_rows(&rows),
            lp_bound_coverage: sol.lp_bound.map(frac),
            gap_to_lp_bound: sol.lp_bound.map(|b| (b - sol.value as f64).max(0.0)),
            optimality: sol.optimality,
            multiplier: sol.multiplier,
            groups: self.groups.len() as u64,
            core_groups: sol.core_groups as u64,
            search_nodes: sol.nodes,
            seconds: started.elapsed().as_secs_f64(),
        };
        Ok(OptimalAllocation { rows, summary })
    }
}

fn sat64(x: u128) -> u64 {
    x.min(u64::MAX as u128) as u64
}

/// `allocate --method optimal` without a cost budget: the rows only.
pub fn optimal_rows(profile: &Profile, n_emb: u64, k_max: u32) -> Result<Vec<u32>> {
    Ok(Planner::from_profile(profile, k_max)?
        .solve(n_emb, None)?
        .rows)
}

/// `allocate --method optimal` with an optional budget: the allocation and the summary.
pub fn allocate_optimal(
    profile: &Profile,
    n_emb: u64,
    k_max: u32,
    budget: Option<CostBudget>,
) -> Result<(Allocation, OptimalAllocation)> {
    let planner = Planner::from_profile(profile, k_max)?;
    let opt = planner.solve(n_emb, budget)?;
    Ok((opt.to_allocation(profile)?, opt))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceil_decimal_rounds_up() {
        assert_eq!(ceil_decimal(3, 2), "1.5000");
        assert_eq!(ceil_decimal(10, 3), "3.3334");
        assert_eq!(ceil_decimal(7, 7), "1.0000");
    }

    #[test]
    fn min_cost_fills_the_rarest_tokens() {
        // Vocab 3 with counts 5, 1, 0; k_max 3: one row each costs 6; 2 extra rows go to the
        // unseen token (free), the next 2 to the count-1 token.
        assert_eq!(min_cost(&[5, 1, 0], 3, 3), 6);
        assert_eq!(min_cost(&[5, 1, 0], 5, 3), 6);
        assert_eq!(min_cost(&[5, 1, 0], 7, 3), 8);
        assert_eq!(min_cost(&[5, 1, 0], 8, 3), 13);
    }

    #[test]
    fn budget_caps() {
        let b = CostBudget::MeanRows { rows: 2.5 };
        assert_eq!(b.cost_cap(4).unwrap(), 10);
        let b = CostBudget::BytesPerToken {
            bytes: 300.0,
            row_bytes: 100,
        };
        assert_eq!(b.cost_cap(7).unwrap(), 21);
        assert!(CostBudget::MeanRows { rows: f64::NAN }.cost_cap(4).is_err());
        assert!(CostBudget::MeanRows { rows: -1.0 }.cost_cap(4).is_err());
    }
}
