//! MoE routing: which experts a token's router logits choose, and with what weights.
//!
//! Three modes, specified exactly (with their rounding) in `fixtures/MOE.md`, so that the
//! chosen sets are identical to the PyTorch reference's on every token that is not within
//! rounding of a threshold:
//!
//! - `topk:K` — softmax, the K largest probabilities (ties to the lower expert index),
//!   weights renormalised over the chosen set (`topk:K:norenorm` keeps the raw probabilities);
//! - `topp:P` — softmax, experts ranked by probability, the smallest prefix whose cumulative
//!   probability reaches P (the crossing expert included), weights renormalised;
//! - `dtopp:P` — DTop-p: the logits standardised per token over the experts (zero mean, unit
//!   population std, epsilon [`DTOPP_EPS`]) times the layer's learned scale tau, then `topp:P`.
//!
//! Probabilities are f32; cumulative sums and renormalisation run in f64 in ranked order, as
//! the reference does, so the weights agree to the last bit or two.

use crate::util::error::{Error, Result};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::fmt;

/// The epsilon under DTop-p's standard deviation.
pub const DTOPP_EPS: f32 = 1e-6;

pub use crate::checkpoint::moe::MAX_EXPERTS;

/// A routing mode.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "lowercase")]
pub enum Routing {
    TopK { k: usize, renorm: bool },
    TopP { p: f64 },
    DTopP { p: f64 },
}

impl fmt::Display for Routing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Routing::TopK { k, renorm: true } => write!(f, "topk:{k}"),
            Routing::TopK { k, renorm: false } => write!(f, "topk:{k}:norenorm"),
            Routing::TopP { p } => write!(f, "topp:{p}"),
            Routing::DTopP { p } => write!(f, "dtopp:{p}"),
        }
    }
}

fn check_p(p: f64, text: &str) -> Result<f64> {
    if p.is_finite() && p > 0.0 && p <= 1.0 {
        Ok(p)
    } else {
        Err(Error::input(format!(
            "routing {text}: the threshold P must lie in (0, 1], got {p}"
        )))
    }
}

impl Routing {
    /// Parse `topk:K`, `topk:K:norenorm`, `topp:P` or `dtopp:P`. K must be at least 1 (its
    /// upper bound, the layer's experts, is checked by [`Routing::check_experts`]); P must
    /// lie in (0, 1].
    pub fn parse(text: &str) -> Result<Routing> {
        let bad = |why: &str| {
            Error::input(format!(
                "routing {text:?}: {why} (expected topk:K, topk:K:norenorm, topp:P or dtopp:P)"
            ))
        };
        let parts: Vec<&str> = text.split(':').collect();
        match parts.as_slice() {
            ["topk", k, rest @ ..] => {
                let renorm = match rest {
                    [] => true,
                    ["norenorm"] => false,
                    _ => return Err(bad("only `norenorm` may follow K")),
                };
                let k: usize = k.parse().map_err(|_| bad("K is not a whole number"))?;
                if k == 0 {
                    return Err(Error::input(format!(
                        "routing {text}: K must be at least 1"
                    )));
                }
                Ok(Routing::TopK { k, renorm })
            }
            [mode @ ("topp" | "dtopp"), p] => {
                let p: f64 = p.parse().map_err(|_| bad("P is not a number"))?;
                let p = check_p(p, text)?;
                Ok(if *mode == "topp" {
                    Routing::TopP { p }
                } else {
                    Routing::DTopP { p }
                })
            }
            _ => Err(bad("unknown mode")),
        }
    }

    /// Refuse K larger than the layer's `n_experts` (and a layer without experts).
    pub fn check_experts(&self, n_experts: usize) -> Result<()> {
        if n_experts == 0 || n_experts > MAX_EXPERTS {
            return Err(Error::input(format!(
                "a layer with {n_experts} experts cannot be routed (1 to {MAX_EXPERTS})"
            )));
        }
        if let Routing::TopK { k, .. } = *self {
            if k == 0 || k > n_experts {
                return Err(Error::input(format!(
                    "routing {self}: K = {k} but the layer has {n_experts} experts (1 <= K <= {n_experts})"
                )));
            }
        }
        Ok(())
    }

    pub fn needs_scale(&self) -> bool {
        matches!(self, Routing::DTopP { .. })
    }

    /// The same mode with another threshold (`topk` is unchanged).
    pub fn with_p(&self, p: f64) -> Routing {
        match *self {
            Routing::TopP { .. } => Routing::TopP { p },
            Routing::DTopP { .. } => Routing::DTopP { p },
            other => other,
        }
    }
}

/// The decisions for N tokens of one layer: dense [N, E] masks and weights.
#[derive(Clone, Debug, PartialEq)]
pub struct Routed {
    pub n_tokens: usize,
    pub n_experts: usize,
    /// 1 where the expert is chosen, row-major [N, E].
    pub chosen: Vec<u8>,
    /// The routing weight, 0 where not chosen, row-major [N, E].
    pub weights: Vec<f32>,
    /// Experts chosen per token.
    pub active: Vec<u32>,
}

impl Routed {
    /// Mean number of active experts per token.
    pub fn mean_active(&self) -> f64 {
        if self.n_tokens == 0 {
            return 0.0;
        }
        self.active.iter().map(|&a| a as u64).sum::<u64>() as f64 / self.n_tokens as f64
    }

    /// Per expert, the tokens that chose it (ascending) and their weights.
    pub fn by_expert(&self) -> Vec<(Vec<u32>, Vec<f32>)> {
        let e = self.n_experts;
        let mut groups = vec![(Vec::new(), Vec::new()); e];
        let rows = self
            .chosen
            .chunks_exact(e)
            .zip(self.weights.chunks_exact(e));
        for (t, (chosen, weights)) in rows.enumerate() {
            for (g, (&c, &w)) in groups.iter_mut().zip(chosen.iter().zip(weights)) {
                if c != 0 {
                    g.0.push(t as u32);
                    g.1.push(w);
                }
            }
        }
        groups
    }
}

/// Softmax of one row in f32 (max subtracted).
pub fn softmax(x: &[f32], out: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for (o, &v) in out.iter_mut().zip(x) {
        *o = (v - max).exp();
        sum += *o;
    }
    for o in out.iter_mut() {
        *o /= sum;
    }
}

/// DTop-p's normalisation of one row: `((l - mean) / sqrt(var + eps)) * tau`, in f32.
pub fn dtopp_normalise(l: &[f32], tau: f32, out: &mut [f32]) {
    let n = l.len() as f32;
    let mean = l.iter().sum::<f32>() / n;
    let var = l.iter().map(|&v| (v - mean) * (v - mean)).sum::<f32>() / n;
    let sd = (var + DTOPP_EPS).sqrt();
    for (o, &v) in out.iter_mut().zip(l) {
        *o = ((v - mean) / sd) * tau;
    }
}

/// Per-thread working rows of [`route_row`], E long each.
struct Scratch {
    normalised: Vec<f32>,
    probs: Vec<f32>,
    order: Vec<usize>,
}

/// Route one token: fills `chosen` and `weights` (length E) and returns the number chosen.
fn route_row(
    logits: &[f32],
    routing: Routing,
    tau: f32,
    chosen: &mut [u8],
    weights: &mut [f32],
    s: &mut Scratch,
) -> u32 {
    let e = logits.len();
    let (probs, order) = (&mut s.probs, &mut s.order);
    match routing {
        Routing::DTopP { .. } => {
            dtopp_normalise(logits, tau, &mut s.normalised);
            softmax(&s.normalised, probs);
        }
        _ => softmax(logits, probs),
    }
    for (i, o) in order.iter_mut().enumerate() {
        *o = i;
    }
    // Stable and descending: equal probabilities keep the lower index first.
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]).then(a.cmp(&b)));
    let (k, total) = match routing {
        Routing::TopK { k, .. } => {
            let total: f64 = order[..k].iter().map(|&j| probs[j] as f64).sum();
            (k, total)
        }
        Routing::TopP { p } | Routing::DTopP { p } => {
            let mut c = 0f64;
            let mut k = e;
            let mut total = 0f64;
            for (i, &j) in order.iter().enumerate() {
                c += probs[j] as f64;
                if c >= p {
                    k = i + 1;
                    total = c;
                    break;
                }
            }
            if k == e {
                total = c;
            }
            (k, total)
        }
    };
    let renorm = !matches!(routing, Routing::TopK { renorm: false, .. });
    chosen.fill(0);
    weights.fill(0.0);
    for &j in &order[..k] {
        chosen[j] = 1;
        weights[j] = if renorm {
            (probs[j] as f64 / total) as f32
        } else {
            probs[j]
        };
    }
    k as u32
}

/// Route N tokens whose logits are `logits` [N, E] (row-major). `tau` is the layer's DTop-p
/// scale, required for `dtopp`. Non-finite logits are refused: their ranking means nothing.
pub fn route_logits(
    logits: &[f32],
    n_experts: usize,
    routing: Routing,
    tau: Option<f32>,
) -> Result<Routed> {
    routing.check_experts(n_experts)?;
    let e = n_experts;
    if !logits.len().is_multiple_of(e) {
        return Err(Error::Other(format!(
            "{} logits do not form rows of {e} experts",
            logits.len()
        )));
    }
    let n = logits.len() / e;
    let tau = match (routing.needs_scale(), tau) {
        (true, Some(t)) if t.is_finite() => t,
        (true, Some(t)) => {
            return Err(Error::input(format!(
                "the DTop-p scale tau is {t}, not a finite number"
            )))
        }
        (true, None) => {
            return Err(Error::input(
                "dtopp routing needs the layer's scale tensor (`gate.scale`), which is missing",
            ))
        }
        (false, _) => 1.0,
    };
    if let Some(i) = logits.iter().position(|v| !v.is_finite()) {
        return Err(Error::input(format!(
            "token {}: router logit {} of expert {} is not finite (the hidden states hold NaN or Inf)",
            i / e,
            logits[i],
            i % e
        )));
    }
    let mut chosen = vec![0u8; n * e];
    let mut weights = vec![0f32; n * e];
    let mut active = vec![0u32; n];
    // Tokens are independent, so the chunks give the same bytes whatever the thread count.
    const ROWS: usize = 64;
    chosen
        .par_chunks_mut(ROWS * e)
        .zip(weights.par_chunks_mut(ROWS * e))
        .zip(active.par_chunks_mut(ROWS))
        .zip(logits.par_chunks(ROWS * e))
        .for_each(|(((c, w), a), l)| {
            let mut scratch = Scratch {
                normalised: vec![0f32; e],
                probs: vec![0f32; e],
                order: vec![0usize; e],
            };
            for (r, a) in a.iter_mut().enumerate() {
                let span = r * e..(r + 1) * e;
                *a = route_row(
                    &l[span.clone()],
                    routing,
                    tau,
                    &mut c[span.clone()],
                    &mut w[span],
                    &mut scratch,
                );
            }
        });
    Ok(Routed {
        n_tokens: n,
        n_experts: e,
        chosen,
        weights,
        active,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_print() {
        for s in [
            "topk:2",
            "topk:3:norenorm",
            "topp:0.5",
            "dtopp:0.7",
            "topp:1",
        ] {
            assert_eq!(Routing::parse(s).unwrap().to_string(), s);
        }
        for bad in [
            "topk:0",
            "topk:x",
            "topk:2:raw",
            "topp:0",
            "topp:1.5",
            "topp:-0.1",
            "dtopp:nan",
            "topp",
            "mix:2",
        ] {
            assert!(Routing::parse(bad).is_err(), "{bad}");
        }
        assert!(Routing::parse("topk:9").unwrap().check_experts(8).is_err());
    }

    #[test]
    fn ties_go_to_the_lower_index() {
        let r = route_logits(
            &[1.0, 2.0, 2.0, 2.0],
            4,
            Routing::parse("topk:2").unwrap(),
            None,
        )
        .unwrap();
        assert_eq!(r.chosen, vec![0, 1, 1, 0]);
        assert_eq!(r.weights[1], 0.5);
    }
}
