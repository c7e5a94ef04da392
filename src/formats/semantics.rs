//! The numerical semantics of an L3 layer: the choices that differ between dialects
//! (tied K/V, norm weights and epsilon, score scale, key norm, residual mode). Detected from a
//! source checkpoint's tensor names, recorded in a packed folder's config, and read by the
//! forward pass, so one implementation covers every dialect.

use serde::{Deserialize, Serialize};

/// How the layer output reaches the residual stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Residual {
    /// The layer output replaces the hidden state (the paper's module).
    Replace,
    /// x <- x + lambda * out, one learned scalar per L3 layer (nanochat).
    AddLambda,
    /// x <- x + out: the add residual with no learned scale (nanochat trained with
    /// `--l3-no-lambda`, which saves no `l3_lambdas`).
    Add,
}

impl Residual {
    /// The name a packed config and a `--map` file use.
    pub fn name(self) -> &'static str {
        match self {
            Residual::Replace => "replace",
            Residual::AddLambda => "add_lambda",
            Residual::Add => "add",
        }
    }
}

/// The numerical choices that differ between dialects; one forward pass covers them all.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Semantics {
    /// One table serves as both keys and values (d_emb = d_in).
    pub tied: bool,
    /// RMSNorms carry a learnable weight (`norm_in.weight`, `norm_out.weight`).
    pub norm_weights: bool,
    /// RMSNorm epsilon (paper: 1e-6; nanochat: the f32 machine epsilon, 2^-23).
    pub norm_eps: f64,
    /// Scores are multiplied by this before the softmax (1 in both dialects; a third-party
    /// variant uses 1/sqrt(d_in)).
    pub score_scale: f64,
    /// Keys are RMS-normalised (without weight) before scoring.
    pub key_norm: bool,
    pub residual: Residual,
}
