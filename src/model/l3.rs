//! The reference L3 forward pass, written with candle.
//!
//! One implementation covers every dialect through [`L3Config`] (tied or separate K and V,
//! RMSNorm with or without weights, replace, lambda-add or plain add residual, score scale,
//! key norm):
//!
//! ```text
//! q   = RMSNorm_in(x)
//! s   = softmax(score_scale * K_t q)      over token t's d_t rows only
//! a   = V_t^T s
//! u   = RMSNorm_out(W_up a)
//! out = W_mix [u ; x]                     then x <- out, x <- x + lambda * out, or x <- x + out
//! ```
//!
//! The per-token attention is computed once per *distinct* token for all positions holding it,
//! never padded to k_max. On CPU it runs as hand-written kernels over the staging buffer
//! (parallel over token segments); on other devices as candle ops per distinct token. The dense
//! projections (W_up, W_mix) are candle matmuls on the chosen device.

use crate::formats::packed::{LayerParams, Residual, Semantics};
use crate::serve::{check_tokens, Blocks, TableSource};
use crate::util::error::{Error, Result};
use candle_core::{DType, Device, Tensor, D};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// A layer's shape and numerical semantics.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct L3Config {
    pub d_in: usize,
    pub d_emb: usize,
    pub d_up: usize,
    pub semantics: Semantics,
    /// The learned scale of the add-lambda residual.
    pub lambda: Option<f32>,
}

/// How the per-token attention runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Hand-written CPU kernels (the default on CPU).
    Kernels,
    /// candle ops per distinct token (any device): two small matmuls per token.
    Candle,
    /// candle ops per bucket of tokens (any device; the default off the CPU): the step's
    /// distinct tokens grouped by block size and by positions, both rounded up to a power of
    /// two, padded within the bucket, the padding masked (-inf scores), one batched matmul
    /// pair per bucket: a handful of launches per layer instead of two per token.
    Bucketed,
}

fn ce(e: candle_core::Error) -> Error {
    Error::Other(format!("compute error: {e}"))
}

/// One L3 layer's dense parameters on a device.
pub struct L3Layer {
    pub cfg: L3Config,
    w_up: Tensor,
    w_mix: Tensor,
    norm_in: Option<Tensor>,
    norm_out: Option<Tensor>,
    device: Device,
}

impl L3Layer {
    /// Build from a VarBuilder holding the tensors named in `names`.
    pub fn new(cfg: L3Config, vb: &candle_nn::VarBuilder, names: &LayerParams) -> Result<Self> {
        let get = |shape: &[usize], name: &str| -> Result<Tensor> {
            vb.get(shape, name)
                .and_then(|t| t.to_dtype(DType::F32))
                .map_err(|e| Error::input(format!("tensor {name}: {e}")))
        };
        let w_up = get(&[cfg.d_up, cfg.d_emb], &names.w_up)?;
        let w_mix = get(&[cfg.d_in, cfg.d_up + cfg.d_in], &names.w_mix)?;
        let (norm_in, norm_out) = if cfg.semantics.norm_weights {
            let need = |n: &Option<String>| {
                n.clone().ok_or_else(|| {
                    Error::input("the config says the norms have weights, but none are named")
                })
            };
            (
                Some(get(&[cfg.d_in], &need(&names.norm_in)?)?),
                Some(get(&[cfg.d_up], &need(&names.norm_out)?)?),
            )
        } else {
            (None, None)
        };
        Ok(L3Layer {
            device: vb.device().clone(),
            cfg,
            w_up,
            w_mix,
            norm_in,
            norm_out,
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Apply the layer to `hidden` [N, d_in] for tokens `token_ids` [N]; returns [N, d_in].
    pub fn forward(
        &self,
        hidden: &Tensor,
        token_ids: &[u32],
        tables: &dyn TableSource,
    ) -> Result<Tensor> {
        let backend = if self.device.is_cpu() {
            Backend::Kernels
        } else {
            Backend::Candle
        };
        self.forward_with(hidden, token_ids, tables, backend)
    }

    /// The layer's own output `W_mix [u ; x]` for `hidden` [N, d_in], before any residual:
    /// under the add-lambda residual the hidden state becomes `x + lambda * delta` (under
    /// `add`, `x + delta`). `verify` measures packing errors on this, since adding `x` back
    /// dilutes them.
    pub fn forward_delta(
        &self,
        hidden: &Tensor,
        token_ids: &[u32],
        tables: &dyn TableSource,
    ) -> Result<Tensor> {
        // The residual is the layer's last step, so its delta is the output of the same layer
        // with the replace residual (the tensors are shared, not copied).
        let own = L3Layer {
            cfg: L3Config {
                semantics: Semantics {
                    residual: Residual::Replace,
                    ..self.cfg.semantics.clone()
                },
                ..self.cfg.clone()
            },
            w_up: self.w_up.clone(),
            w_mix: self.w_mix.clone(),
            norm_in: self.norm_in.clone(),
            norm_out: self.norm_out.clone(),
            device: self.device.clone(),
        };
        own.forward(hidden, token_ids, tables)
    }

    pub fn forward_with(
        &self,
        hidden: &Tensor,
        token_ids: &[u32],
        tables: &dyn TableSource,
        backend: Backend,
    ) -> Result<Tensor> {
        let cfg = &self.cfg;
        let dims = hidden.dims();
        if dims.len() != 2 || dims[1] != cfg.d_in {
            return Err(Error::input(format!(
                "hidden states have shape {dims:?}; this layer needs [N, {}]",
                cfg.d_in
            )));
        }
        if dims[0] != token_ids.len() {
            return Err(Error::input(format!(
                "{} hidden states but {} token ids",
                dims[0],
                token_ids.len()
            )));
        }
        check_tokens(token_ids, tables.vocab())?;
        let want_width = if cfg.semantics.tied {
            cfg.d_in
        } else {
            cfg.d_in + cfg.d_emb
        };
        if tables.row_width() != want_width {
            return Err(Error::input(format!(
                "the tables have rows of {} values; the layer needs {want_width}",
                tables.row_width()
            )));
        }
        let groups = Groups::new(token_ids);
        let blocks = tables.gather(&groups.tokens)?;
        self.forward_gathered_with(hidden, token_ids, &groups, &blocks, backend)
    }

    /// [`L3Layer::forward`] on rows gathered beforehand (by a prefetch): `groups` must be
    /// `Groups::new(token_ids)` and `blocks` the rows of `groups.tokens`, in that order.
    pub fn forward_gathered(
        &self,
        hidden: &Tensor,
        token_ids: &[u32],
        groups: &Groups,
        blocks: &Blocks,
    ) -> Result<Tensor> {
        let backend = if self.device.is_cpu() {
            Backend::Kernels
        } else {
            Backend::Bucketed
        };
        self.forward_gathered_with(hidden, token_ids, groups, blocks, backend)
    }

    fn forward_gathered_with(
        &self,
        hidden: &Tensor,
        token_ids: &[u32],
        groups: &Groups,
        blocks: &Blocks,
        backend: Backend,
    ) -> Result<Tensor> {
        let cfg = &self.cfg;
        let want_width = if cfg.semantics.tied {
            cfg.d_in
        } else {
            cfg.d_in + cfg.d_emb
        };
        if hidden.dims() != [token_ids.len(), cfg.d_in]
            || groups.order.len() != token_ids.len()
            || blocks.tokens != groups.tokens
            || blocks.row_width != want_width
        {
            return Err(Error::Other(format!(
                "L3 layer: hidden {:?}, {} ids, {} grouped positions, rows of width {} for {} tokens do not belong together",
                hidden.dims(),
                token_ids.len(),
                groups.order.len(),
                blocks.row_width,
                blocks.tokens.len()
            )));
        }
        let x = hidden
            .to_dtype(DType::F32)
            .and_then(|t| t.to_device(&self.device))
            .map_err(ce)?;
        let q = rms_norm(&x, self.norm_in.as_ref(), cfg.semantics.norm_eps).map_err(ce)?;
        let a = match backend {
            Backend::Kernels => {
                let q_host = q
                    .flatten_all()
                    .and_then(|t| t.to_vec1::<f32>())
                    .map_err(ce)?;
                let a = attend_kernels(cfg, &q_host, groups, blocks);
                Tensor::from_vec(a, (token_ids.len(), cfg.d_emb), &self.device).map_err(ce)?
            }
            Backend::Candle => attend_candle(cfg, &q, groups, blocks, &self.device).map_err(ce)?,
            Backend::Bucketed => {
                attend_bucketed(cfg, &q, groups, blocks, &self.device).map_err(ce)?
            }
        };
        self.project(&x, &a).map_err(ce)
    }

    fn project(&self, x: &Tensor, a: &Tensor) -> candle_core::Result<Tensor> {
        let u = a.matmul(&self.w_up.t()?)?;
        let u = rms_norm(&u, self.norm_out.as_ref(), self.cfg.semantics.norm_eps)?;
        let out = Tensor::cat(&[&u, x], 1)?.matmul(&self.w_mix.t()?)?;
        match self.cfg.semantics.residual {
            Residual::Replace => Ok(out),
            Residual::AddLambda => {
                // A missing lambda is not 1: that is the `add` residual, a different model.
                let lambda = self.cfg.lambda.ok_or_else(|| {
                    candle_core::Error::Msg(
                        "the add-lambda residual needs the layer's lambda, and none was loaded"
                            .into(),
                    )
                })?;
                x + (out * lambda as f64)?
            }
            Residual::Add => x + out,
        }
    }
}

/// RMSNorm over the last dimension, in f32, with an optional weight.
pub fn rms_norm(x: &Tensor, weight: Option<&Tensor>, eps: f64) -> candle_core::Result<Tensor> {
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    let y = x.broadcast_div(&(ms + eps)?.sqrt()?)?;
    match weight {
        Some(w) => y.broadcast_mul(w),
        None => Ok(y),
    }
}

/// Positions grouped by distinct token.
pub struct Groups {
    /// Distinct tokens in ascending order.
    pub tokens: Vec<u32>,
    /// Positions sorted by token (stable): positions of `tokens[i]` are
    /// `order[starts[i]..starts[i+1]]`.
    pub order: Vec<usize>,
    pub starts: Vec<usize>,
}

impl Groups {
    pub fn new(token_ids: &[u32]) -> Groups {
        let mut order: Vec<usize> = (0..token_ids.len()).collect();
        order.sort_by_key(|&p| token_ids[p]);
        let mut tokens = Vec::new();
        let mut starts = Vec::new();
        for (i, &p) in order.iter().enumerate() {
            if tokens.last() != Some(&token_ids[p]) {
                tokens.push(token_ids[p]);
                starts.push(i);
            }
        }
        starts.push(order.len());
        Groups {
            tokens,
            order,
            starts,
        }
    }
}

/// Positions per parallel task: small enough to balance the load of frequent tokens across
/// cores, large enough that each key row is reused from cache for several queries.
const SEGMENT: usize = 16;

#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

#[inline]
fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    for (yi, xi) in y.iter_mut().zip(x) {
        *yi += alpha * xi;
    }
}

/// The attention part on CPU: returns A [N, d_emb] in the original position order.
fn attend_kernels(cfg: &L3Config, q: &[f32], groups: &Groups, blocks: &Blocks) -> Vec<f32> {
    let (d_in, d_emb, width) = (cfg.d_in, cfg.d_emb, blocks.row_width);
    let tied = cfg.semantics.tied;
    let scale = cfg.semantics.score_scale as f32;
    let eps = cfg.semantics.norm_eps as f32;
    let n = groups.order.len();
    // Work items: (distinct token index, range of sorted positions).
    let mut segments = Vec::new();
    for i in 0..groups.tokens.len() {
        let (s, e) = (groups.starts[i], groups.starts[i + 1]);
        let mut p = s;
        while p < e {
            segments.push((i, p, (p + SEGMENT).min(e)));
            p += SEGMENT;
        }
    }
    let mut sorted = vec![0f32; n * d_emb];
    let mut outs: Vec<&mut [f32]> = Vec::with_capacity(segments.len());
    let mut rest = sorted.as_mut_slice();
    for &(_, s, e) in &segments {
        let (head, tail) = rest.split_at_mut((e - s) * d_emb);
        outs.push(head);
        rest = tail;
    }
    segments
        .par_iter()
        .zip(outs.into_par_iter())
        .for_each(|(&(i, s, e), out)| {
            let block = blocks.block(i);
            let rows = block.len() / width;
            let normed: Option<Vec<f32>> = cfg.semantics.key_norm.then(|| {
                let mut k = Vec::with_capacity(rows * d_in);
                for r in 0..rows {
                    let row = &block[r * width..r * width + d_in];
                    let inv =
                        1.0 / (row.iter().map(|v| v * v).sum::<f32>() / d_in as f32 + eps).sqrt();
                    k.extend(row.iter().map(|v| v * inv));
                }
                k
            });
            let key = |r: usize| -> &[f32] {
                match &normed {
                    Some(k) => &k[r * d_in..(r + 1) * d_in],
                    None => &block[r * width..r * width + d_in],
                }
            };
            let value = |r: usize| -> &[f32] {
                if tied {
                    &block[r * width..r * width + d_in]
                } else {
                    &block[r * width + d_in..(r + 1) * width]
                }
            };
            let count = e - s;
            let mut scores = vec![0f32; count * rows];
            for r in 0..rows {
                let k = key(r);
                for j in 0..count {
                    let p = groups.order[s + j];
                    scores[j * rows + r] = scale * dot(k, &q[p * d_in..(p + 1) * d_in]);
                }
            }
            for j in 0..count {
                let sj = &mut scores[j * rows..(j + 1) * rows];
                let max = sj.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
                let mut sum = 0f32;
                for v in sj.iter_mut() {
                    *v = (*v - max).exp();
                    sum += *v;
                }
                for v in sj.iter_mut() {
                    *v /= sum;
                }
            }
            for r in 0..rows {
                let v = value(r);
                for j in 0..count {
                    axpy(
                        scores[j * rows + r],
                        v,
                        &mut out[j * d_emb..(j + 1) * d_emb],
                    );
                }
            }
        });
    // Back to position order.
    let mut a = vec![0f32; n * d_emb];
    for (rank, &p) in groups.order.iter().enumerate() {
        a[p * d_emb..(p + 1) * d_emb].copy_from_slice(&sorted[rank * d_emb..(rank + 1) * d_emb]);
    }
    a
}

/// The attention part with candle ops per distinct token (any device).
fn attend_candle(
    cfg: &L3Config,
    q: &Tensor,
    groups: &Groups,
    blocks: &Blocks,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let width = blocks.row_width;
    let total_rows = blocks.starts.last().copied().unwrap_or(0);
    let rows = Tensor::from_slice(&blocks.rows, (total_rows, width), device)?;
    let mut parts = Vec::with_capacity(groups.tokens.len());
    for i in 0..groups.tokens.len() {
        let positions: Vec<u32> = groups.order[groups.starts[i]..groups.starts[i + 1]]
            .iter()
            .map(|&p| p as u32)
            .collect();
        let idx = Tensor::from_vec(positions.clone(), positions.len(), device)?;
        let qg = q.index_select(&idx, 0)?;
        let block = rows.narrow(0, blocks.starts[i], blocks.starts[i + 1] - blocks.starts[i])?;
        let mut k = block.narrow(1, 0, cfg.d_in)?;
        let v = if cfg.semantics.tied {
            k.clone()
        } else {
            block.narrow(1, cfg.d_in, cfg.d_emb)?
        };
        if cfg.semantics.key_norm {
            k = rms_norm(&k, None, cfg.semantics.norm_eps)?;
        }
        let s = (qg.matmul(&k.t()?)? * cfg.semantics.score_scale)?;
        let s = candle_nn::ops::softmax_last_dim(&s)?;
        parts.push(s.matmul(&v.contiguous()?)?);
    }
    let sorted = Tensor::cat(&parts, 0)?;
    let mut inverse = vec![0u32; groups.order.len()];
    for (rank, &p) in groups.order.iter().enumerate() {
        inverse[p] = rank as u32;
    }
    let inv = Tensor::from_vec(inverse, groups.order.len(), device)?;
    sorted.index_select(&inv, 0)
}

/// The buckets of [`Backend::Bucketed`]: (rows, positions) rounded up to powers of two, each
/// with its distinct-token indices; tokens without rows are in none (their output is zero,
/// as the kernels give).
pub fn buckets(groups: &Groups, blocks: &Blocks) -> Vec<((usize, usize), Vec<usize>)> {
    let mut map: std::collections::BTreeMap<(usize, usize), Vec<usize>> = Default::default();
    for i in 0..groups.tokens.len() {
        let rows = blocks.starts[i + 1] - blocks.starts[i];
        if rows == 0 {
            continue;
        }
        let positions = groups.starts[i + 1] - groups.starts[i];
        map.entry((rows.next_power_of_two(), positions.next_power_of_two()))
            .or_default()
            .push(i);
    }
    map.into_iter().collect()
}

/// The attention part with one padded, masked batched matmul pair per bucket (any device).
fn attend_bucketed(
    cfg: &L3Config,
    q: &Tensor,
    groups: &Groups,
    blocks: &Blocks,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let (width, d_in, d_emb) = (blocks.row_width, cfg.d_in, cfg.d_emb);
    let n = groups.order.len();
    let total_rows = blocks.starts.last().copied().unwrap_or(0);
    // One zero row after the real ones: what padding indexes.
    let rows = Tensor::cat(
        &[
            &Tensor::from_slice(&blocks.rows, (total_rows, width), device)?,
            &Tensor::zeros((1, width), DType::F32, device)?,
        ],
        0,
    )?;
    let q_ext = Tensor::cat(&[q, &Tensor::zeros((1, d_in), DType::F32, device)?], 0)?;
    let mut outputs = Vec::new();
    // Where each position's output row lands in the concatenated bucket outputs; positions
    // of tokens without rows point at a final zero row.
    let mut at = vec![u32::MAX; n];
    let mut produced = 0usize;
    for ((k, m), members) in buckets(groups, blocks) {
        let g = members.len();
        let mut row_idx = Vec::with_capacity(g * k);
        let mut q_idx = Vec::with_capacity(g * m);
        let mut mask = Vec::with_capacity(g * k);
        for (slot, &i) in members.iter().enumerate() {
            let (r0, r1) = (blocks.starts[i], blocks.starts[i + 1]);
            for r in 0..k {
                let valid = r0 + r < r1;
                row_idx.push(if valid {
                    (r0 + r) as u32
                } else {
                    total_rows as u32
                });
                mask.push(if valid { 0f32 } else { f32::NEG_INFINITY });
            }
            let positions = &groups.order[groups.starts[i]..groups.starts[i + 1]];
            for j in 0..m {
                match positions.get(j) {
                    Some(&p) => {
                        q_idx.push(p as u32);
                        at[p] = (produced + slot * m + j) as u32;
                    }
                    None => q_idx.push(n as u32),
                }
            }
        }
        let block = rows
            .index_select(&Tensor::from_vec(row_idx, g * k, device)?, 0)?
            .reshape((g, k, width))?;
        let mut keys = block.narrow(2, 0, d_in)?;
        let values = if cfg.semantics.tied {
            keys.clone()
        } else {
            block.narrow(2, d_in, d_emb)?
        };
        if cfg.semantics.key_norm {
            keys = rms_norm(&keys, None, cfg.semantics.norm_eps)?;
        }
        let qb = q_ext
            .index_select(&Tensor::from_vec(q_idx, g * m, device)?, 0)?
            .reshape((g, m, d_in))?;
        let scores = (qb.matmul(&keys.transpose(1, 2)?.contiguous()?)?
            * cfg.semantics.score_scale)?
            .broadcast_add(&Tensor::from_vec(mask, (g, 1, k), device)?)?;
        let weights = candle_nn::ops::softmax_last_dim(&scores)?;
        outputs.push(
            weights
                .matmul(&values.contiguous()?)?
                .reshape((g * m, d_emb))?,
        );
        produced += g * m;
    }
    outputs.push(Tensor::zeros((1, d_emb), DType::F32, device)?);
    let all = Tensor::cat(&outputs, 0)?;
    let zero_row = produced as u32;
    let index: Vec<u32> = at
        .into_iter()
        .map(|a| if a == u32::MAX { zero_row } else { a })
        .collect();
    all.index_select(&Tensor::from_vec(index, n, device)?, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_sort_positions_by_token() {
        let g = Groups::new(&[5, 2, 5, 9, 2]);
        assert_eq!(g.tokens, vec![2, 5, 9]);
        assert_eq!(g.order, vec![1, 4, 0, 2, 3]);
        assert_eq!(g.starts, vec![0, 2, 4, 5]);
    }

    #[test]
    fn buckets_round_rows_and_positions_up_and_skip_empty_blocks() {
        // Tokens 1, 2, 3, 4 hold 3, 4, 0 and 1 rows; 4 appears at three positions.
        let g = Groups::new(&[1, 2, 3, 4, 4, 4]);
        let blocks = Blocks {
            tokens: g.tokens.clone(),
            starts: vec![0, 3, 7, 7, 8],
            rows: vec![0.0; 8],
            row_width: 1,
        };
        let b = buckets(&g, &blocks);
        assert_eq!(b, vec![((1, 4), vec![3]), ((4, 1), vec![0, 1])]);
    }

    #[test]
    fn dot_handles_remainders() {
        let a: Vec<f32> = (0..19).map(|i| i as f32).collect();
        let b = vec![1f32; 19];
        assert_eq!(dot(&a, &b), (0..19).sum::<i32>() as f32);
    }
}
