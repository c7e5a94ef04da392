//! Stage 2: turn a profile into a per-token allocation.
//!
//! `lzw` is the paper's Algorithm 1 walk, reproduced exactly: every token starts with one row;
//! codewords are visited by count (descending, insertion order on ties) and each gives one row
//! to its last token unless that token is at `k_max`; the walk stops as soon as the budget is
//! met. `uniform` and `frequency` are the baselines the paper compares against.
//!
//! When the codewords run out before the budget is met the reference has no rule, so l3kit
//! refuses to guess: the caller must name a [`FillPolicy`].

pub mod methods;
pub mod plan;
pub mod report;

pub use methods::{
    check_budget, frequency, lzw_walk, n_emb_for_ratio, proportional_fill, round_robin, uniform,
    walk_order, FillPolicy, Walk,
};
pub use report::{report, AllocationReport, LayerShape, MemoryReport, TopToken};

use crate::formats::allocation::{Allocation, AllocationMeta};
use crate::formats::profile::Profile;
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

#[derive(Clone, Copy, Debug)]
pub struct AllocateOptions {
    pub n_emb: u64,
    pub k_max: u32,
    pub method: Method,
    pub fill: Option<FillPolicy>,
}

pub fn allocate(profile: &Profile, opts: &AllocateOptions) -> Result<Allocation> {
    let vocab = profile.meta.vocab_size as usize;
    check_budget(vocab as u64, opts.n_emb, opts.k_max)?;
    let mut fill = None;
    let mut fill_rows = 0;
    let rows = match opts.method {
        Method::Uniform => uniform(vocab, opts.n_emb),
        Method::Frequency => frequency(&profile.unigram, opts.n_emb, opts.k_max),
        // Without a cost budget; `plan::allocate_optimal` takes one.
        Method::Optimal => crate::allocate::plan::optimal_rows(profile, opts.n_emb, opts.k_max)?,
        Method::Lzw => {
            let Walk {
                mut rows,
                remaining,
            } = lzw_walk(
                vocab,
                &profile.codewords.tokens,
                &profile.codewords.counts,
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
                        profile.codewords.len(),
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
