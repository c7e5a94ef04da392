//! The planner's problem as a mixed-integer program for good_lp's pure-Rust solver (microlp):
//! the independent oracle that [`super::solver`] is checked against, and the LP relaxation
//! whose value the solver's exact bound must equal.
//!
//! One integer variable per (token, run of equal codeword counts), between 0 and the run's
//! length, worth the count per unit; the padding of zero-count items is one more run. Within
//! a token the runs are sorted by count, so an optimum always takes them as a prefix and the
//! formulation needs no ordering constraints.
//!
//! A general-purpose branch and bound: fine for the small instances of the tests, far too
//! slow for a real vocabulary.

use super::contexts::Contexts;
use crate::util::error::{Error, Result};
use good_lp::{constraint, microlp, variable, variables, Expression, Solution, SolverModel};

/// Solve for the covered mass: exactly `n_emb` rows, each token 1..=k_max, and (optionally)
/// `sum_t u_t d_t <= cap`. `integer: false` solves the LP relaxation instead.
/// `contexts` must keep at least `k_max - 1` items per token.
pub fn solve_coverage(
    contexts: &Contexts,
    unigram: &[u64],
    n_emb: u64,
    k_max: u32,
    cap: Option<u128>,
    integer: bool,
) -> Result<f64> {
    let vocab = contexts.vocab();
    if unigram.len() != vocab || k_max == 0 || n_emb < vocab as u64 {
        return Err(Error::input("inconsistent MILP instance"));
    }
    let limit = (k_max - 1) as u64;
    let r = n_emb - vocab as u64;
    let total: u128 = unigram.iter().map(|&u| u as u128).sum();
    let mut vars = variables!();
    let mut objective = Expression::from(0.0);
    let mut count = Expression::from(0.0);
    let mut cost = Expression::from(0.0);
    for (t, &u) in unigram.iter().enumerate() {
        let mut used = 0u64;
        let mut runs: Vec<(u64, u64)> = contexts.runs(t).collect();
        for run in runs.iter_mut() {
            run.1 = run.1.min(limit - used);
            used += run.1;
        }
        if used < limit {
            runs.push((0, limit - used));
        }
        for (c, n) in runs {
            if n == 0 {
                continue;
            }
            let def = variable().min(0.0).max(n as f64);
            let x = vars.add(if integer { def.integer() } else { def });
            objective += c as f64 * x;
            count += x;
            cost += u as f64 * x;
        }
    }
    let mut model = vars
        .maximise(objective.clone())
        .using(microlp)
        .with(constraint!(count == r as f64));
    if let Some(cap) = cap {
        let extra = cap.saturating_sub(total);
        model = model.with(constraint!(cost <= extra as f64));
    }
    let solution = model
        .solve()
        .map_err(|e| Error::input(format!("MILP solver: {e}")))?;
    Ok(solution.eval(&objective))
}
