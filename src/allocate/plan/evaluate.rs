//! `l3kit evaluate`: any allocation (a bounds tensor is all it needs) on a held-out profile,
//! side by side with the training profile.
//!
//! Reported per profile: context coverage, E[d_t] and the expected bytes fetched per token
//! under that profile's unigram distribution. And the *starved* tokens: those whose held-out
//! contexts lose the most coverage mass for want of rows (frequent in the held-out text, few
//! rows), with their training counts for comparison.

use super::contexts::Contexts;
use crate::allocate::report::LayerShape;
use crate::formats::allocation::expected_rows;
use crate::formats::allocation::Allocation;
use crate::formats::profile::Profile;
use crate::util::error::{Error, Result};
use serde::Serialize;
use std::path::Path;

/// The figures of one allocation on one profile.
#[derive(Clone, Debug, Serialize)]
pub struct ProfileFigures {
    pub profile: String,
    pub tokens: u64,
    pub codewords: u64,
    pub coverage: f64,
    pub covered_mass: u64,
    pub total_mass: u64,
    pub expected_rows: Option<f64>,
    pub expected_bytes_per_token: Option<f64>,
    /// Tokens seen in this profile that own a single row.
    pub seen_tokens_with_one_row: u64,
}

/// A token whose held-out contexts are left uncovered.
#[derive(Clone, Debug, Serialize)]
pub struct StarvedToken {
    pub id: u32,
    pub text: Option<String>,
    pub rows: u32,
    pub heldout_count: u64,
    /// 1 = the most frequent token of the held-out text.
    pub heldout_rank: u64,
    pub train_count: Option<u64>,
    /// Codewords with a positive count ending in this token, in the held-out profile.
    pub heldout_contexts: u64,
    /// Held-out codeword mass of this token that its rows do not cover.
    pub uncovered_mass: u64,
    /// That mass as a share of the held-out total.
    pub uncovered_share: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct AllocationInfo {
    pub path: String,
    pub method: String,
    pub vocab_size: u64,
    pub n_emb: u64,
    pub k_max: u32,
    pub max_rows: u32,
    pub bytes_per_row: Option<u64>,
    pub bytes_per_layer: Option<u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct EvaluationReport {
    pub allocation: AllocationInfo,
    pub heldout: ProfileFigures,
    pub train: Option<ProfileFigures>,
    pub starved: Vec<StarvedToken>,
}

/// Check that an allocation and profiles belong together: same vocabulary and, where both
/// record one, the same tokenizer.
pub fn check_compatible(
    alloc: &Allocation,
    alloc_path: &Path,
    profiles: &[(&Profile, &Path)],
) -> Result<()> {
    for (p, path) in profiles {
        if p.meta.vocab_size as usize != alloc.vocab() {
            return Err(Error::input(format!(
                "{} covers a vocabulary of {} tokens but the profile {} has {}: they come from different tokenizers",
                alloc_path.display(),
                alloc.vocab(),
                path.display(),
                p.meta.vocab_size
            )));
        }
        if let (Some(a), Some(b)) = (&alloc.meta.tokenizer_sha256, &p.meta.tokenizer_sha256) {
            if a != b {
                return Err(Error::input(format!(
                    "{} was made with a different tokenizer than the profile {} (tokenizer SHA-256 differs)",
                    alloc_path.display(),
                    path.display()
                )));
            }
        }
    }
    if let [(a, pa), (b, pb), ..] = profiles {
        if let (Some(x), Some(y)) = (&a.meta.tokenizer_sha256, &b.meta.tokenizer_sha256) {
            if x != y {
                return Err(Error::input(format!(
                    "the profiles {} and {} were made with different tokenizers (SHA-256 differs)",
                    pa.display(),
                    pb.display()
                )));
            }
        }
    }
    Ok(())
}

/// A codeword mass as a 64-bit figure. A profile that passed [`Profile::read`] has at most
/// 2 codeword counts per phrase and a phrase per two tokens, so its mass fits; one built
/// otherwise is refused rather than printed wrong.
fn mass64(mass: u128, path: &Path) -> Result<u64> {
    u64::try_from(mass).map_err(|_| {
        Error::in_file(
            path,
            format!("the codeword counts add up to {mass}, more than 64 bits hold"),
        )
    })
}

fn figures(
    rows: &[u32],
    profile: &Profile,
    path: &Path,
    contexts: &Contexts,
    row_bytes: Option<u64>,
) -> Result<ProfileFigures> {
    let cov = contexts.coverage(rows);
    let e = expected_rows(rows, &profile.unigram);
    Ok(ProfileFigures {
        profile: path.display().to_string(),
        tokens: profile.meta.tokens,
        codewords: profile.codewords.len() as u64,
        coverage: cov.fraction(),
        covered_mass: mass64(cov.covered, path)?,
        total_mass: mass64(cov.total, path)?,
        expected_rows: e,
        expected_bytes_per_token: e.zip(row_bytes).map(|(e, b)| e * b as f64),
        seen_tokens_with_one_row: rows
            .iter()
            .zip(&profile.unigram)
            .filter(|(&r, &u)| r == 1 && u > 0)
            .count() as u64,
    })
}

/// Evaluate `alloc` on a held-out profile (and, optionally, the training profile).
/// `top` starved tokens are listed.
#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    alloc: &Allocation,
    alloc_path: &Path,
    heldout: &Profile,
    heldout_path: &Path,
    train: Option<(&Profile, &Path)>,
    shape: Option<LayerShape>,
    tokenizer: Option<&tokenizers::Tokenizer>,
    top: usize,
) -> Result<EvaluationReport> {
    let mut profiles = vec![(heldout, heldout_path)];
    if let Some(t) = train {
        profiles.push(t);
    }
    check_compatible(alloc, alloc_path, &profiles)?;
    let rows = alloc.rows_vec();
    let max_rows = rows.iter().copied().max().unwrap_or(1);
    let limit = max_rows as u64 - 1;
    let (row_bytes, layer_bytes) = match shape {
        Some(s) => (Some(s.row_bytes()?), Some(s.layer_bytes(alloc.n_emb())?)),
        None => (None, None),
    };
    let held_ctx = Contexts::from_profile(heldout, limit)?;
    let held = figures(&rows, heldout, heldout_path, &held_ctx, row_bytes)?;
    let train_figures = match train {
        Some((p, path)) => {
            let ctx = Contexts::from_profile(p, limit)?;
            Some(figures(&rows, p, path, &ctx, row_bytes)?)
        }
        None => None,
    };
    // Held-out rank of every token (1 = most frequent; ties by id).
    let vocab = rows.len();
    let mut by_count: Vec<usize> = (0..vocab).collect();
    by_count.sort_by(|&a, &b| heldout.unigram[b].cmp(&heldout.unigram[a]).then(a.cmp(&b)));
    let mut rank = vec![0u64; vocab];
    for (i, &t) in by_count.iter().enumerate() {
        rank[t] = i as u64 + 1;
    }
    let total = held_ctx.total_mass();
    let mut lost: Vec<(u128, usize)> = (0..vocab)
        .map(|t| {
            let covered = held_ctx.prefix(t, rows[t] as u64 - 1);
            (held_ctx.token_mass(t) - covered, t)
        })
        .filter(|&(m, _)| m > 0)
        .collect();
    lost.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let starved = lost
        .into_iter()
        .take(top)
        .map(|(m, t)| -> Result<StarvedToken> {
            Ok(StarvedToken {
                id: t as u32,
                text: tokenizer.and_then(|tok| tok.decode(&[t as u32], false).ok()),
                rows: rows[t],
                heldout_count: heldout.unigram[t],
                heldout_rank: rank[t],
                train_count: train.map(|(p, _)| p.unigram[t]),
                heldout_contexts: held_ctx.token_contexts(t),
                uncovered_mass: mass64(m, heldout_path)?,
                uncovered_share: if total == 0 {
                    0.0
                } else {
                    m as f64 / total as f64
                },
            })
        })
        .collect::<Result<_>>()?;
    Ok(EvaluationReport {
        allocation: AllocationInfo {
            path: alloc_path.display().to_string(),
            method: alloc.meta.method.clone(),
            vocab_size: vocab as u64,
            n_emb: alloc.n_emb(),
            k_max: alloc.meta.k_max,
            max_rows,
            bytes_per_row: row_bytes,
            bytes_per_layer: layer_bytes,
        },
        heldout: held,
        train: train_figures,
        starved,
    })
}
