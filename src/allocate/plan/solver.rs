//! The optimal allocation: maximise context coverage subject to
//!
//! ```text
//!   sum_t d_t = n_emb,   1 <= d_t <= k_max,   and optionally   sum_t u_t d_t <= C
//! ```
//!
//! where `u_t` is token t's unigram count (so `C = M x total` is the budget `E[d_t] <= M`).
//!
//! Writing `x_t = d_t - 1`, every token offers `k_max - 1` *items*: its codeword counts in
//! descending order (padded with zeros), each costing `u_t`. Coverage is separable and concave
//! per token, so the problem is to pick exactly `R = n_emb - vocab` items, at most cost
//! `C' = C - total`, of largest total count; within a token the chosen items are always a
//! prefix.
//!
//! The method (see `docs/planner.md` for the argument):
//!
//! 1. **Lagrangian water-filling.** For a multiplier `mu >= 0` on the cost, the best `R` items
//!    by reduced value `c - mu u_t` are found by bisection on the threshold (every token's
//!    items above it form a prefix, found by binary search). Ties at the threshold go to the
//!    cheapest tokens. With no cost budget, or when it does not bind, `mu = 0`: that is the
//!    LZW walk's greedy, and its coverage is the optimum. Otherwise `mu` is bisected (in f64,
//!    to adjacent floats) to the smallest value whose selection fits the budget.
//! 2. **An exact bound.** The multiplier at the breakpoint is the slope between two tied items,
//!    a rational `P/Q`; at that `mu` and the matching threshold, the Lagrangian dual gives the
//!    LP bound in exact integer arithmetic (i128). Any integer solution's coverage is at most
//!    its floor.
//! 3. **Exact fix-up.** Every solution's shortfall below the bound is a sum of non-negative
//!    penalties (reduced values of items taken or left against the LP's choice, plus `mu` times
//!    unused budget). An improvement on the incumbent must fit in the remaining gap, which
//!    fixes almost every token (reduced-cost fixing); a depth-first branch and bound over the
//!    few tokens left (the *core*) either finds the optimum and proves it, or stops at a node
//!    limit and reports the remaining gap.
//!
//! Tokens with identical cost and identical counts are merged into groups first (rare tokens
//! repeat a lot: all unseen tokens form one group), and a group's rows are spread evenly over
//! its members, which is optimal for identical concave pieces.
//!
//! This file is long on purpose: the bound, the rounding, the fixing and the branch and bound
//! share one item representation and one set of invariants, and reading them side by side is
//! how the proof of optimality is checked.

use super::contexts::Contexts;
use crate::util::error::{Error, Result};

/// Tokens merged by identical (unigram count, codeword counts).
pub struct Groups {
    limit: u64,
    weight: Vec<u64>,
    weight_f: Vec<f64>,
    member_start: Vec<usize>,
    members: Vec<u32>,
    run_start: Vec<usize>,
    run_c: Vec<u64>,
    run_cf: Vec<f64>,
    /// Items of the group through this run (group level: member items x members).
    run_cum: Vec<u64>,
}

impl Groups {
    /// Build from per-token contexts (items per token = `contexts.limit()`) and unigram counts.
    pub fn build(contexts: &Contexts, weights: &[u64]) -> Result<Self> {
        let vocab = contexts.vocab();
        if weights.len() != vocab {
            return Err(Error::input(format!(
                "{} unigram counts for a vocabulary of {vocab}",
                weights.len()
            )));
        }
        let limit = contexts.limit();
        let mut order: Vec<u32> = (0..vocab as u32).collect();
        order.sort_by(|&a, &b| {
            let (a, b) = (a as usize, b as usize);
            weights[a]
                .cmp(&weights[b])
                .then_with(|| contexts.runs(a).cmp(contexts.runs(b)))
        });
        let mut g = Groups {
            limit,
            weight: Vec::new(),
            weight_f: Vec::new(),
            member_start: vec![0],
            members: Vec::with_capacity(vocab),
            run_start: vec![0],
            run_c: Vec::new(),
            run_cf: Vec::new(),
            run_cum: Vec::new(),
        };
        let mut i = 0;
        while i < order.len() {
            let first = order[i] as usize;
            let mut j = i + 1;
            while j < order.len() {
                let t = order[j] as usize;
                if weights[t] != weights[first] || !contexts.runs(t).eq(contexts.runs(first)) {
                    break;
                }
                j += 1;
            }
            let k = (j - i) as u64;
            g.members.extend_from_slice(&order[i..j]);
            g.member_start.push(g.members.len());
            g.weight.push(weights[first]);
            g.weight_f.push(weights[first] as f64);
            let mut cum = 0u64;
            let mut items = 0u64;
            for (v, n) in contexts.runs(first) {
                cum += n * k;
                items += n;
                g.run_c.push(v);
                g.run_cf.push(v as f64);
                g.run_cum.push(cum);
            }
            if items < limit {
                cum += (limit - items) * k;
                g.run_c.push(0);
                g.run_cf.push(0.0);
                g.run_cum.push(cum);
            }
            g.run_start.push(g.run_c.len());
            i = j;
        }
        Ok(g)
    }

    pub fn len(&self) -> usize {
        self.weight.len()
    }
    pub fn is_empty(&self) -> bool {
        self.weight.is_empty()
    }
    fn runs(&self, g: usize) -> std::ops::Range<usize> {
        self.run_start[g]..self.run_start[g + 1]
    }
    fn members(&self, g: usize) -> &[u32] {
        &self.members[self.member_start[g]..self.member_start[g + 1]]
    }
    fn mult(&self, g: usize) -> u64 {
        (self.member_start[g + 1] - self.member_start[g]) as u64
    }
    /// Items the group offers in all.
    fn items(&self, g: usize) -> u64 {
        self.limit * self.mult(g)
    }
    fn total_items(&self) -> u64 {
        (0..self.len()).map(|g| self.items(g)).sum()
    }

    /// Items through run index `i` of group g (0 before the first run).
    fn cum_before(&self, g: usize, k: usize) -> u64 {
        if k == 0 {
            0
        } else {
            self.run_cum[self.run_start[g] + k - 1]
        }
    }

    /// Coverage mass of the group's best `y` items.
    fn value(&self, g: usize, y: u64) -> u128 {
        let mut sum = 0u128;
        let mut prev = 0u64;
        for i in self.runs(g) {
            let upto = self.run_cum[i].min(y);
            if upto > prev {
                sum += self.run_c[i] as u128 * (upto - prev) as u128;
            }
            if self.run_cum[i] >= y {
                break;
            }
            prev = self.run_cum[i];
        }
        sum
    }

    fn total_value(&self, y: &[u64]) -> u128 {
        (0..self.len()).map(|g| self.value(g, y[g])).sum()
    }
    fn total_cost(&self, y: &[u64]) -> u128 {
        (0..self.len())
            .map(|g| self.weight[g] as u128 * y[g] as u128)
            .sum()
    }

    // ---- the float Lagrangian -------------------------------------------------------------

    /// Items with reduced value `c - mu w >= lam`.
    fn count_ge(&self, mu: f64, lam: f64) -> u64 {
        let mut total = 0u64;
        for g in 0..self.len() {
            let mw = mu * self.weight_f[g];
            let r = self.runs(g);
            let k = self.run_cf[r].partition_point(|&c| c - mw >= lam);
            total += self.cum_before(g, k);
        }
        total
    }

    /// The smallest and largest reduced values of any item.
    fn reduced_range(&self, mu: f64) -> (f64, f64) {
        let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
        for g in 0..self.len() {
            let mw = mu * self.weight_f[g];
            let r = self.runs(g);
            if r.is_empty() {
                continue;
            }
            hi = hi.max(self.run_cf[r.start] - mw);
            lo = lo.min(self.run_cf[r.end - 1] - mw);
        }
        (lo, hi)
    }

    /// The `r`-th largest reduced value at `mu` (1 <= r <= total items): the largest float
    /// `tau` with `count_ge(mu, tau) >= r`. `bracket` = (a value known to qualify, a value
    /// known not to), when the caller has one.
    fn select(&self, mu: f64, r: u64, bracket: Option<(f64, f64)>) -> f64 {
        let (mut lo, mut hi) = match bracket {
            Some((lo, hi)) if self.count_ge(mu, lo) >= r && self.count_ge(mu, hi) < r => {
                (key(lo), key(hi))
            }
            _ => {
                let (min, max) = self.reduced_range(mu);
                (key(min), key(max) + 1)
            }
        };
        while (hi as i128) - (lo as i128) > 1 {
            let mid = midpoint(lo, hi);
            if self.count_ge(mu, unkey(mid)) >= r {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        unkey(lo)
    }

    /// The best `r` items at `mu` given the threshold `tau` from [`Self::select`]: everything
    /// above it, then tied items from the lightest groups (or the heaviest).
    fn pick(&self, mu: f64, tau: f64, r: u64, light_first: bool) -> Vec<u64> {
        let n = self.len();
        let mut y = vec![0u64; n];
        let mut extra = vec![0u64; n];
        let mut taken = 0u64;
        for g in 0..n {
            let mw = mu * self.weight_f[g];
            let runs = self.runs(g);
            let above = self.run_cf[runs.clone()].partition_point(|&c| c - mw > tau);
            let at = self.run_cf[runs].partition_point(|&c| c - mw >= tau);
            y[g] = self.cum_before(g, above);
            extra[g] = self.cum_before(g, at) - y[g];
            taken += y[g];
        }
        let mut need = r.saturating_sub(taken);
        let mut visit = |g: usize, y: &mut [u64]| {
            let t = extra[g].min(need);
            y[g] += t;
            need -= t;
        };
        if light_first {
            for g in 0..n {
                visit(g, &mut y);
            }
        } else {
            for g in (0..n).rev() {
                visit(g, &mut y);
            }
        }
        y
    }

    /// (weight, count) of items whose reduced value at `mu` is exactly `tau`.
    fn tied_points(&self, mu: f64, tau: f64, out: &mut Vec<(u64, u64)>) {
        for g in 0..self.len() {
            let mw = mu * self.weight_f[g];
            for i in self.runs(g) {
                if self.run_cf[i] - mw == tau {
                    let p = (self.weight[g], self.run_c[i]);
                    if !out.contains(&p) && out.len() < 64 {
                        out.push(p);
                    }
                }
            }
        }
    }

    /// The cheapest `r` items (by weight; most valuable first among equal weights).
    fn pick_min_cost(&self, r: u64) -> Vec<u64> {
        let n = self.len();
        let mut y = vec![0u64; n];
        let mut need = r;
        let mut g = 0;
        while g < n && need > 0 {
            let mut h = g;
            while h < n && self.weight[h] == self.weight[g] {
                h += 1;
            }
            // One weight class: take its items by value, descending.
            let mut runs: Vec<(u64, usize, u64)> = Vec::new();
            for k in g..h {
                let mut prev = 0;
                for i in self.runs(k) {
                    runs.push((self.run_c[i], k, self.run_cum[i] - prev));
                    prev = self.run_cum[i];
                }
            }
            runs.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
            for (_, k, n_items) in runs {
                let t = n_items.min(need);
                y[k] += t;
                need -= t;
                if need == 0 {
                    break;
                }
            }
            g = h;
        }
        y
    }

    // ---- exact arithmetic at a rational multiplier ----------------------------------------

    /// Items with `Q c - P w >= lam`, or None on overflow.
    fn count_ge_exact(&self, p: i128, q: i128, lam: i128) -> Option<u64> {
        let mut total = 0u64;
        for g in 0..self.len() {
            let pw = p.checked_mul(self.weight[g] as i128)?;
            let thr = ceil_div(lam.checked_add(pw)?, q);
            let r = self.runs(g);
            let k = if thr <= 0 {
                r.len()
            } else {
                self.run_c[r].partition_point(|&c| (c as i128) >= thr)
            };
            total += self.cum_before(g, k);
        }
        Some(total)
    }

    /// The exact Lagrangian bound at `mu = P/Q`: the `r`-th largest scaled reduced value
    /// `lam` and `Q x bound`, or None on overflow.
    fn exact_bound(&self, p: i128, q: i128, r: u64, cap: u128) -> Option<ExactDual> {
        // Scaled reduced values Q c - P w.
        let (mut lo, mut hi) = (i128::MAX, i128::MIN);
        for g in 0..self.len() {
            let runs = self.runs(g);
            if runs.is_empty() {
                continue;
            }
            let pw = p.checked_mul(self.weight[g] as i128)?;
            let top = q
                .checked_mul(self.run_c[runs.start] as i128)?
                .checked_sub(pw)?;
            let bottom = q
                .checked_mul(self.run_c[runs.end - 1] as i128)?
                .checked_sub(pw)?;
            hi = hi.max(top);
            lo = lo.min(bottom);
        }
        let mut hi = hi.checked_add(1)?;
        while hi.checked_sub(lo)? > 1 {
            let mid = lo + (hi - lo) / 2;
            if self.count_ge_exact(p, q, mid)? >= r {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        let lam = lo;
        // Q x bound = lam R + P C' + sum over items above lam of (Q c - P w - lam).
        let mut qub = lam.checked_mul(r as i128)?;
        qub = qub.checked_add(p.checked_mul(i128::try_from(cap).ok()?)?)?;
        for g in 0..self.len() {
            let pw = p.checked_mul(self.weight[g] as i128)?;
            let mut prev = 0u64;
            for i in self.runs(g) {
                let rho = q.checked_mul(self.run_c[i] as i128)?.checked_sub(pw)?;
                let excess = rho.checked_sub(lam)?;
                if excess <= 0 {
                    break;
                }
                let n = (self.run_cum[i] - prev) as i128;
                qub = qub.checked_add(excess.checked_mul(n)?)?;
                prev = self.run_cum[i];
            }
        }
        Some(ExactDual { p, q, lam, qub })
    }
}

/// An exact dual point: multiplier P/Q, threshold lam/Q, and Q times the bound.
#[derive(Clone, Copy, Debug)]
struct ExactDual {
    p: i128,
    q: i128,
    lam: i128,
    qub: i128,
}

impl ExactDual {
    /// The largest integer not above the bound.
    fn floor(&self) -> i128 {
        floor_div(self.qub, self.q)
    }
    fn value(&self) -> f64 {
        self.qub as f64 / self.q as f64
    }
}

/// How the solver's answer stands against the LP bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Optimality {
    /// No allocation covers more (proven: bound reached, or the core search completed).
    Proven,
    /// The core search hit its node limit; the gap to the bound is reported.
    NodeLimit,
    /// The exact bound overflowed 128-bit arithmetic (counts near 2^64); no proof.
    NoBound,
}

/// The solver's answer in group terms, plus how it stands.
pub struct GroupSolution {
    pub y: Vec<u64>,
    pub value: u128,
    pub cost: u128,
    /// Largest integer not above the LP bound (the LP optimum, by strong duality).
    pub lp_bound_floor: Option<u128>,
    pub lp_bound: Option<f64>,
    pub optimality: Optimality,
    pub multiplier: f64,
    pub core_groups: usize,
    pub nodes: u64,
}

/// Maximise coverage with exactly `r` items and (optionally) cost at most `cap`.
/// The caller checks feasibility (`r` <= total items, cheapest `r` items within `cap`).
pub fn solve(groups: &Groups, r: u64, cap: Option<u128>, node_limit: u64) -> GroupSolution {
    let n = groups.len();
    if r == 0 || r >= groups.total_items() {
        let y: Vec<u64> = if r == 0 {
            vec![0; n]
        } else {
            (0..n).map(|g| groups.items(g)).collect()
        };
        let value = groups.total_value(&y);
        return GroupSolution {
            cost: groups.total_cost(&y),
            y,
            value,
            lp_bound_floor: Some(value),
            lp_bound: Some(value as f64),
            optimality: Optimality::Proven,
            multiplier: 0.0,
            core_groups: 0,
            nodes: 0,
        };
    }
    let fits = |y: &[u64]| cap.is_none_or(|c| groups.total_cost(y) <= c);

    // mu = 0: the unconstrained optimum (cheapest ties).
    let tau0 = groups.select(0.0, r, None);
    let y0 = groups.pick(0.0, tau0, r, true);
    let mut duals: Vec<ExactDual> = Vec::new();
    let (incumbent, mu) = if fits(&y0) {
        // At mu = 0 the budget term vanishes (P C' = 0), whatever the cap.
        if let Some(d) = groups.exact_bound(0, 1, r, 0) {
            duals.push(d);
        }
        (y0, 0.0)
    } else {
        let cap = cap.expect("only a budget can be exceeded");
        let max_c = groups.run_c.iter().copied().max().unwrap_or(0) as f64;
        let mut mu_hi = (max_c + 1.0) * 4.0;
        let mut tau_hi = groups.select(mu_hi, r, None);
        let mut ok = fits(&groups.pick(mu_hi, tau_hi, r, true));
        for _ in 0..8 {
            if ok {
                break;
            }
            mu_hi *= 1024.0;
            tau_hi = groups.select(mu_hi, r, None);
            ok = fits(&groups.pick(mu_hi, tau_hi, r, true));
        }
        if !ok {
            // Floating point could not separate the weights: take the cheapest items.
            let y = groups.pick_min_cost(r);
            (y, mu_hi)
        } else {
            let (mut mu_lo, mut tau_lo) = (0.0f64, tau0);
            let (mut klo, mut khi) = (key(mu_lo), key(mu_hi));
            while (khi as i128) - (klo as i128) > 1 {
                let kmid = midpoint(klo, khi);
                let mu = unkey(kmid);
                let tau = groups.select(mu, r, Some((tau_hi, next_up(tau_lo))));
                if fits(&groups.pick(mu, tau, r, true)) {
                    khi = kmid;
                    mu_hi = mu;
                    tau_hi = tau;
                } else {
                    klo = kmid;
                    mu_lo = mu;
                    tau_lo = tau;
                }
            }
            // Candidate rational multipliers: slopes between items tied at the threshold on
            // either side of the breakpoint (the R-th and R+1-th largest), and a rational
            // approximation of mu_hi. Each gives a valid bound; the best is kept.
            let mut points = Vec::new();
            for (mu, tau) in [(mu_lo, tau_lo), (mu_hi, tau_hi)] {
                groups.tied_points(mu, tau, &mut points);
                let tau_next = groups.select(mu, r + 1, None);
                groups.tied_points(mu, tau_next, &mut points);
            }
            let mut cands: Vec<(i128, i128)> = Vec::new();
            for &(w1, c1) in &points {
                for &(w2, c2) in &points {
                    if w1 > w2 && c1 > c2 {
                        let (p, q) = ((c1 - c2) as i128, (w1 - w2) as i128);
                        let g = gcd(p, q);
                        let (p, q) = (p / g, q / g);
                        let m = p as f64 / q as f64;
                        if m >= mu_lo * (1.0 - 1e-9) && m <= mu_hi * (1.0 + 1e-9) {
                            cands.push((p, q));
                        }
                    }
                }
            }
            cands.sort_unstable();
            cands.dedup();
            cands.truncate(8);
            cands.push(rational_approx(mu_hi, 1 << 31));
            for (p, q) in cands {
                if let Some(d) = groups.exact_bound(p, q, r, cap) {
                    duals.push(d);
                }
            }
            (groups.pick(mu_hi, tau_hi, r, true), mu_hi)
        }
    };

    let value = groups.total_value(&incumbent);
    let best_dual = duals.iter().copied().min_by(|a, b| {
        a.floor()
            .cmp(&b.floor())
            .then(a.value().total_cmp(&b.value()))
    });
    let Some(dual) = best_dual else {
        return GroupSolution {
            cost: groups.total_cost(&incumbent),
            y: incumbent,
            value,
            lp_bound_floor: None,
            lp_bound: None,
            optimality: Optimality::NoBound,
            multiplier: mu,
            core_groups: 0,
            nodes: 0,
        };
    };
    // Round the LP's tied items to the best integer choice the greedy finds, then improve
    // by pairwise swaps.
    let (mut incumbent, mut value) = (incumbent, value);
    if let Some(c) = cap {
        if dual.p > 0 {
            if let Some(y) = tie_fill(groups, &dual, r, c) {
                let v = groups.total_value(&y);
                if v > value && groups.total_cost(&y) <= c {
                    (incumbent, value) = (y, v);
                }
            }
        }
        if dual.floor() > value as i128 {
            value = swap_search(groups, &mut incumbent, c, SWAP_ROUNDS);
        }
    }
    let mut sol = GroupSolution {
        cost: groups.total_cost(&incumbent),
        y: incumbent,
        value,
        lp_bound_floor: Some(dual.floor().max(0) as u128),
        lp_bound: Some(dual.value()),
        optimality: Optimality::Proven,
        multiplier: dual.p as f64 / dual.q as f64,
        core_groups: 0,
        nodes: 0,
    };
    if dual.floor() > value as i128 {
        match core_search(
            groups,
            &dual,
            r,
            cap.unwrap_or(u128::MAX / 4),
            &mut sol,
            node_limit,
        ) {
            Some(true) => sol.optimality = Optimality::Proven,
            Some(false) => sol.optimality = Optimality::NodeLimit,
            None => sol.optimality = Optimality::NoBound,
        }
    }
    sol
}

/// Rounds of the pairwise swap search.
const SWAP_ROUNDS: usize = 64;

/// The LP's integral part (every item with positive reduced value) plus the tied items
/// (reduced value 0) chosen to use as much of the budget as possible: at the exact multiplier
/// a tied item's value is `(lam + P w) / Q`, so with the count fixed the value grows with the
/// weight. Heaviest groups first, each taking as many as still leave room to complete the
/// count with the lightest remaining ties. None when the dual point does not fit.
fn tie_fill(groups: &Groups, d: &ExactDual, r: u64, cap: u128) -> Option<Vec<u64>> {
    let n = groups.len();
    let mut y = vec![0u64; n];
    let mut ties: Vec<(u128, u64, usize)> = Vec::new();
    let (mut taken, mut used) = (0u64, 0u128);
    for (g, yg) in y.iter_mut().enumerate() {
        let p = Penalties::new(groups, g, d)?;
        *yg = p.y_pos;
        taken += p.y_pos;
        used += groups.weight[g] as u128 * p.y_pos as u128;
        if p.y_nonneg > p.y_pos {
            ties.push((groups.weight[g] as u128, p.y_nonneg - p.y_pos, g));
        }
    }
    if taken > r || used > cap {
        return None;
    }
    let mut left = r - taken;
    let mut budget = cap - used;
    // Groups are in ascending weight order, so the ties are too.
    let mut cum_cnt = vec![0u64; ties.len() + 1];
    let mut cum_w = vec![0u128; ties.len() + 1];
    for (i, &(w, c, _)) in ties.iter().enumerate() {
        cum_cnt[i + 1] = cum_cnt[i] + c;
        cum_w[i + 1] = cum_w[i] + w * c as u128;
    }
    // Weight of the m lightest tied items among ties[..j] (m <= cum_cnt[j]).
    let lightest = |m: u64, j: usize| -> u128 {
        let k = cum_cnt[1..=j].partition_point(|&c| c < m);
        cum_w[k] + (m - cum_cnt[k]) as u128 * ties[k.min(j.saturating_sub(1))].0
    };
    for j in (1..=ties.len()).rev() {
        if left == 0 {
            break;
        }
        let (w, cnt, g) = ties[j - 1];
        let below = cum_cnt[j - 1];
        let t_min = left.saturating_sub(below);
        let t_max = cnt.min(left);
        if t_min > t_max {
            return None;
        }
        let fits = |t: u64| -> bool { t as u128 * w + lightest(left - t, j - 1) <= budget };
        if !fits(t_min) {
            return None;
        }
        let (mut lo, mut hi) = (t_min, t_max);
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            if fits(mid) {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        y[g] += lo;
        left -= lo;
        budget -= lo as u128 * w;
    }
    (left == 0).then_some(y)
}

/// Value of item `idx` (0-based, best first) of group g.
fn item_value(groups: &Groups, g: usize, idx: u64) -> u64 {
    let runs = groups.runs(g);
    let k = groups.run_cum[runs.clone()].partition_point(|&c| c <= idx);
    groups.run_c[runs.start + k.min(runs.len() - 1)]
}

/// Best-improvement pairwise swaps (one more item in one group, one fewer in another) that
/// gain coverage and fit the budget. Returns the new value.
fn swap_search(groups: &Groups, y: &mut [u64], cap: u128, rounds: usize) -> u128 {
    let n = groups.len();
    let mut cost = groups.total_cost(y);
    for _ in 0..rounds {
        let slack = cap.saturating_sub(cost);
        // Removable items in ascending weight (group order), with suffix minima of their value.
        let removes: Vec<(u128, u64, usize)> = (0..n)
            .filter(|&g| y[g] > 0)
            .map(|g| (groups.weight[g] as u128, item_value(groups, g, y[g] - 1), g))
            .collect();
        if removes.is_empty() {
            break;
        }
        // Suffix best and second best (distinct groups, since each group appears once).
        let mut best1 = vec![usize::MAX; removes.len() + 1];
        let mut best2 = vec![usize::MAX; removes.len() + 1];
        for i in (0..removes.len()).rev() {
            let (b1, b2) = (best1[i + 1], best2[i + 1]);
            let better = |a: usize, b: usize| b == usize::MAX || removes[a].1 < removes[b].1;
            if better(i, b1) {
                best1[i] = i;
                best2[i] = b1;
            } else {
                best1[i] = b1;
                best2[i] = if better(i, b2) { i } else { b2 };
            }
        }
        let mut best: Option<(u64, u128, usize, usize)> = None; // gain, extra cost, add, remove
        for (a, &ya) in y.iter().enumerate() {
            if ya >= groups.items(a) {
                continue;
            }
            let wa = groups.weight[a] as u128;
            let ca = item_value(groups, a, ya);
            let floor_w = wa.saturating_sub(slack);
            let i = removes.partition_point(|x| x.0 < floor_w);
            let pick = if best1[i] != usize::MAX && removes[best1[i]].2 != a {
                best1[i]
            } else {
                best2[i]
            };
            if pick == usize::MAX {
                continue;
            }
            let (wr, cr, gr) = removes[pick];
            if ca <= cr {
                continue;
            }
            let gain = ca - cr;
            let extra = wa.saturating_sub(wr);
            if best.is_none_or_worse(gain, extra) {
                best = Some((gain, extra, a, gr));
            }
        }
        let Some((_, _, a, r)) = best else { break };
        y[a] += 1;
        y[r] -= 1;
        cost = cost + groups.weight[a] as u128 - groups.weight[r] as u128;
    }
    groups.total_value(y)
}

trait Candidate {
    fn is_none_or_worse(&self, gain: u64, extra: u128) -> bool;
}

impl Candidate for Option<(u64, u128, usize, usize)> {
    fn is_none_or_worse(&self, gain: u64, extra: u128) -> bool {
        match self {
            None => true,
            Some((g, e, _, _)) => gain > *g || (gain == *g && extra < *e),
        }
    }
}

/// Per-group penalty structure at an exact dual point.
struct Penalties {
    /// Scaled reduced value minus lam, per run (descending).
    excess: Vec<i128>,
    /// Items with positive excess (the LP takes them all).
    y_pos: u64,
    /// Items with non-negative excess.
    y_nonneg: u64,
}

impl Penalties {
    fn new(groups: &Groups, g: usize, d: &ExactDual) -> Option<Self> {
        let pw = d.p.checked_mul(groups.weight[g] as i128)?;
        let mut excess = Vec::with_capacity(groups.runs(g).len());
        let (mut y_pos, mut y_nonneg) = (0, 0);
        for i in groups.runs(g) {
            let e =
                d.q.checked_mul(groups.run_c[i] as i128)?
                    .checked_sub(pw)?
                    .checked_sub(d.lam)?;
            if e > 0 {
                y_pos = groups.run_cum[i];
            }
            if e >= 0 {
                y_nonneg = groups.run_cum[i];
            }
            excess.push(e);
        }
        Some(Penalties {
            excess,
            y_pos,
            y_nonneg,
        })
    }

    /// Scaled penalty of taking `y` items instead of the LP's choice.
    fn pen(&self, groups: &Groups, g: usize, y: u64) -> i128 {
        let start = groups.run_start[g];
        let mut total = 0i128;
        let mut prev = 0u64;
        for (k, &e) in self.excess.iter().enumerate() {
            let cum = groups.run_cum[start + k];
            // Items of this run strictly between y and the plateau.
            let (lo, hi) = (prev, cum);
            if y < self.y_pos && e > 0 {
                let from = y.max(lo);
                if hi > from {
                    total = total.saturating_add(e.saturating_mul((hi - from) as i128));
                }
            } else if y > self.y_nonneg && e < 0 {
                let to = y.min(hi);
                if to > lo {
                    total = total.saturating_add((-e).saturating_mul((to - lo) as i128));
                }
            }
            prev = cum;
        }
        total
    }

    /// The range of `y` whose penalty is at most `budget` (budget >= 0).
    fn range(&self, groups: &Groups, g: usize, budget: i128) -> (u64, u64) {
        let start = groups.run_start[g];
        // Downwards from y_pos through the runs with positive excess.
        let mut lo = self.y_pos;
        let mut left = budget;
        for k in (0..self.excess.len()).rev() {
            let e = self.excess[k];
            let cum = groups.run_cum[start + k];
            let prev = if k == 0 {
                0
            } else {
                groups.run_cum[start + k - 1]
            };
            if e <= 0 || prev >= lo {
                continue;
            }
            let avail = lo.min(cum) - prev;
            let can = (left / e).min(avail as i128) as u64;
            lo -= can;
            left -= can as i128 * e;
            if can < avail {
                break;
            }
        }
        let mut hi = self.y_nonneg;
        let mut left = budget;
        for k in 0..self.excess.len() {
            let e = self.excess[k];
            let cum = groups.run_cum[start + k];
            if e >= 0 || cum <= hi {
                continue;
            }
            let avail = cum - hi;
            let can = (left / -e).min(avail as i128) as u64;
            hi += can;
            left -= can as i128 * -e;
            if can < avail {
                break;
            }
        }
        (lo, hi)
    }
}

/// Branch and bound over the groups whose choice is not fixed by the gap. Returns
/// Some(true) when the search completed (the incumbent is optimal), Some(false) at the node
/// limit, None on overflow.
fn core_search(
    groups: &Groups,
    d: &ExactDual,
    r: u64,
    cap: u128,
    sol: &mut GroupSolution,
    node_limit: u64,
) -> Option<bool> {
    let n = groups.len();
    let qi = d.q;
    // An improvement needs value >= best + 1, i.e. scaled penalty <= qub - q (best + 1).
    let budget_for = |best: u128| -> Option<i128> {
        d.qub
            .checked_sub(qi.checked_mul(i128::try_from(best).ok()?.checked_add(1)?)?)
    };
    let mut budget = budget_for(sol.value)?;
    if budget < 0 {
        return Some(true);
    }
    let mut pens = Vec::with_capacity(n);
    let mut core: Vec<usize> = Vec::new();
    let mut ranges = Vec::with_capacity(n);
    let (mut fixed_count, mut fixed_cost) = (0u128, 0u128);
    for g in 0..n {
        let p = Penalties::new(groups, g, d)?;
        let (a, b) = p.range(groups, g, budget);
        if a == b {
            fixed_count += a as u128;
            fixed_cost += groups.weight[g] as u128 * a as u128;
        } else {
            core.push(g);
        }
        ranges.push((a, b));
        pens.push(p);
    }
    sol.core_groups = core.len();
    if fixed_count > r as u128 || fixed_cost > cap {
        return Some(true); // nothing better can exist
    }
    let need = (r as u128 - fixed_count) as i128;
    let cap_core = (cap - fixed_cost) as i128;
    // Heaviest first: they decide how much of the budget is used.
    core.sort_by(|&a, &b| groups.weight[b].cmp(&groups.weight[a]).then(a.cmp(&b)));
    let m = core.len();
    let w: Vec<i128> = core.iter().map(|&g| groups.weight[g] as i128).collect();
    let a: Vec<i128> = core.iter().map(|&g| ranges[g].0 as i128).collect();
    let b: Vec<i128> = core.iter().map(|&g| ranges[g].1 as i128).collect();
    // Suffix sums for the bounds.
    let mut sa = vec![0i128; m + 1];
    let mut sb = vec![0i128; m + 1];
    let mut saw = vec![0i128; m + 1];
    let mut sbw = vec![0i128; m + 1];
    let mut minw = vec![i128::MAX; m + 1];
    let mut maxw = vec![0i128; m + 1];
    for i in (0..m).rev() {
        sa[i] = sa[i + 1] + a[i];
        sb[i] = sb[i + 1] + b[i];
        saw[i] = saw[i + 1].checked_add(a[i].checked_mul(w[i])?)?;
        sbw[i] = sbw[i + 1].checked_add(b[i].checked_mul(w[i])?)?;
        minw[i] = minw[i + 1].min(w[i]);
        maxw[i] = maxw[i + 1].max(w[i]);
    }
    // Count-balance bound: the rest must supply `rem` items; below the LP's choice every
    // dropped item costs at least the cheapest drop, above it every added item the cheapest add.
    let excess_of = |g: usize, idx: u64| -> i128 {
        let runs = groups.runs(g);
        let k = groups.run_cum[runs].partition_point(|&c| c <= idx);
        pens[g].excess[k.min(pens[g].excess.len() - 1)]
    };
    let mut spos = vec![0i128; m + 1];
    let mut snn = vec![0i128; m + 1];
    let mut min_drop = vec![i128::MAX; m + 1];
    let mut min_add = vec![i128::MAX; m + 1];
    for i in (0..m).rev() {
        let g = core[i];
        let yp = (pens[g].y_pos as i128).clamp(a[i], b[i]);
        let yn = (pens[g].y_nonneg as i128).clamp(a[i], b[i]);
        spos[i] = spos[i + 1] + yp;
        snn[i] = snn[i + 1] + yn;
        let drop = if yp > a[i] {
            excess_of(g, yp as u64 - 1).max(0)
        } else {
            i128::MAX
        };
        let add = if yn < b[i] {
            (-excess_of(g, yn as u64)).max(0)
        } else {
            i128::MAX
        };
        min_drop[i] = min_drop[i + 1].min(drop);
        min_add[i] = min_add[i + 1].min(add);
    }
    let p = d.p;
    let mut cnt = vec![0i128; m + 1];
    let mut wsum = vec![0i128; m + 1];
    let mut pen = vec![0i128; m + 1];
    let mut cur = vec![0i128; m + 1];
    let mut low = vec![0i128; m + 1];
    let mut choice = vec![0i128; m];
    let mut nodes = 0u64;
    let mut best: Option<Vec<i128>> = None;
    // Enter a node at depth i: set its candidate range, or report it pruned.
    let enter = |i: usize,
                 cnt: &[i128],
                 wsum: &[i128],
                 pen: &[i128],
                 cur: &mut [i128],
                 low: &mut [i128],
                 budget: i128|
     -> bool {
        let rem = need - cnt[i];
        if rem < sa[i] || rem > sb[i] {
            return false;
        }
        let min_w = saw[i].saturating_add((rem - sa[i]).saturating_mul(minw[i]));
        if wsum[i].saturating_add(min_w) > cap_core {
            return false;
        }
        let max_w = sbw[i].min(saw[i].saturating_add((rem - sa[i]).saturating_mul(maxw[i])));
        let slack = (cap_core - wsum[i] - max_w).max(0);
        let balance = if rem < spos[i] {
            (spos[i] - rem).saturating_mul(min_drop[i])
        } else if rem > snn[i] {
            (rem - snn[i]).saturating_mul(min_add[i])
        } else {
            0
        };
        if pen[i]
            .saturating_add(balance)
            .saturating_add(p.saturating_mul(slack))
            > budget
        {
            return false;
        }
        if i < m {
            low[i] = a[i].max(rem - sb[i + 1]);
            cur[i] = b[i].min(rem - sa[i + 1]);
        }
        true
    };
    let mut depth: isize = 0;
    if !enter(0, &cnt, &wsum, &pen, &mut cur, &mut low, budget) {
        sol.nodes = 1;
        return Some(true);
    }
    let mut completed = true;
    while depth >= 0 {
        let i = depth as usize;
        if i == m {
            // A complete assignment within the budget (enter() checked count and cost).
            let slack = cap_core - wsum[m];
            let total = pen[m].saturating_add(p.saturating_mul(slack));
            if total <= budget {
                let mut y = sol.y.clone();
                for (k, &g) in core.iter().enumerate() {
                    y[g] = choice[k] as u64;
                }
                for g in 0..n {
                    if ranges[g].0 == ranges[g].1 {
                        y[g] = ranges[g].0;
                    }
                }
                let value = groups.total_value(&y);
                if value > sol.value && groups.total_cost(&y) <= cap {
                    sol.value = value;
                    sol.cost = groups.total_cost(&y);
                    sol.y = y;
                    best = Some(choice.clone());
                    budget = budget_for(value)?;
                }
            }
            depth -= 1;
            if depth >= 0 {
                cur[depth as usize] -= 1;
            }
            continue;
        }
        if cur[i] < low[i] || budget < 0 {
            depth -= 1;
            if depth >= 0 {
                cur[depth as usize] -= 1;
            }
            continue;
        }
        nodes += 1;
        if nodes > node_limit {
            completed = false;
            break;
        }
        let y = cur[i];
        let g = core[i];
        let pg = pens[g].pen(groups, g, y as u64);
        let pen_next = pen[i].saturating_add(pg);
        let w_next = wsum[i] + y * w[i];
        if pen_next > budget || w_next > cap_core {
            cur[i] -= 1;
            continue;
        }
        choice[i] = y;
        cnt[i + 1] = cnt[i] + y;
        wsum[i + 1] = w_next;
        pen[i + 1] = pen_next;
        if enter(i + 1, &cnt, &wsum, &pen, &mut cur, &mut low, budget) {
            depth += 1;
        } else {
            cur[i] -= 1;
        }
    }
    sol.nodes = nodes;
    let _ = best;
    if completed {
        sol.lp_bound_floor = Some(sol.value);
    }
    Some(completed)
}

/// Spread each group's items over its members: `y = q k + s` gives the first `s` members
/// (lowest ids) `q + 1` items and the rest `q`. Returns rows per token (1 + items).
pub fn expand(groups: &Groups, y: &[u64], vocab: usize) -> Vec<u32> {
    let mut rows = vec![1u32; vocab];
    for (g, &yg) in y.iter().enumerate().take(groups.len()) {
        let members = groups.members(g);
        let k = members.len() as u64;
        let (q, s) = (yg / k, yg % k);
        let mut sorted = members.to_vec();
        sorted.sort_unstable();
        for (i, &t) in sorted.iter().enumerate() {
            rows[t as usize] = 1 + (q + u64::from((i as u64) < s)) as u32;
        }
    }
    rows
}

// ---- numeric helpers ----------------------------------------------------------------------

/// A monotone map from f64 to i64 (total order of non-NaN floats).
fn key(x: f64) -> i64 {
    let b = x.to_bits() as i64;
    if b < 0 {
        b ^ i64::MAX
    } else {
        b
    }
}

/// A key strictly between `lo` and `hi` (hi - lo >= 2), without overflow.
fn midpoint(lo: i64, hi: i64) -> i64 {
    ((lo as i128 + hi as i128) / 2) as i64
}

fn unkey(k: i64) -> f64 {
    let b = if k < 0 { k ^ i64::MAX } else { k };
    f64::from_bits(b as u64)
}

fn next_up(x: f64) -> f64 {
    unkey(key(x) + 1)
}

fn ceil_div(a: i128, b: i128) -> i128 {
    let q = a / b;
    if (a % b != 0) && ((a > 0) == (b > 0)) {
        q + 1
    } else {
        q
    }
}

fn floor_div(a: i128, b: i128) -> i128 {
    let q = a / b;
    if (a % b != 0) && ((a < 0) != (b < 0)) {
        q - 1
    } else {
        q
    }
}

fn gcd(mut a: i128, mut b: i128) -> i128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a.abs().max(1)
}

/// Best rational approximation p/q of x >= 0 with q <= max_q (continued fractions).
fn rational_approx(x: f64, max_q: i128) -> (i128, i128) {
    let (mut h0, mut h1) = (0i128, 1i128);
    let (mut k0, mut k1) = (1i128, 0i128);
    let mut v = x;
    for _ in 0..64 {
        let a = v.floor();
        if !a.is_finite() || a > 1e30 {
            break;
        }
        let a = a as i128;
        let (Some(h2), Some(k2)) = (
            a.checked_mul(h1).and_then(|t| t.checked_add(h0)),
            a.checked_mul(k1).and_then(|t| t.checked_add(k0)),
        ) else {
            break;
        };
        if k2 > max_q {
            break;
        }
        (h0, h1, k0, k1) = (h1, h2, k1, k2);
        let frac = v - v.floor();
        if frac < 1e-18 {
            break;
        }
        v = 1.0 / frac;
    }
    if k1 == 0 {
        (x.round() as i128, 1)
    } else {
        (h1, k1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn float_keys_are_monotone() {
        let xs = [-1e300, -2.5, -0.0, 0.0, 1e-300, 0.5, 1.0, 3.0, 1e300];
        for w in xs.windows(2) {
            assert!(key(w[0]) <= key(w[1]), "{} {}", w[0], w[1]);
            assert_eq!(unkey(key(w[1])), w[1]);
        }
        assert!(next_up(1.0) > 1.0);
    }

    #[test]
    fn integer_division_rounding() {
        assert_eq!(ceil_div(7, 2), 4);
        assert_eq!(ceil_div(-7, 2), -3);
        assert_eq!(floor_div(7, 2), 3);
        assert_eq!(floor_div(-7, 2), -4);
        assert_eq!(ceil_div(6, 3), 2);
        assert_eq!(floor_div(-6, 3), -2);
    }

    #[test]
    fn rational_approximation() {
        assert_eq!(rational_approx(0.75, 1000), (3, 4));
        assert_eq!(rational_approx(2.0, 1000), (2, 1));
        let (p, q) = rational_approx(std::f64::consts::PI, 1000);
        assert_eq!((p, q), (355, 113));
    }
}
