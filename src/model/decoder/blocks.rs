//! Dense building blocks the decoders share, written with candle ops: linear maps without
//! bias, embeddings, RMSNorm, causal self-attention (grouped-query heads, a sliding window, a
//! KV cache), and the small activations. Every block computes in f32.

use crate::formats::safetensors::TensorReader;
use crate::model::weights::var_builder;
use crate::util::error::{Error, Result};
use candle_core::{DType, Device, Tensor};

pub(crate) fn ce(e: candle_core::Error) -> Error {
    Error::Other(format!("compute error: {e}"))
}

/// Dense weights looked up by name, with the shape each model expects checked on load.
pub struct Weights<'a> {
    reader: &'a dyn TensorReader,
    device: Device,
}

impl<'a> Weights<'a> {
    pub fn new(reader: &'a dyn TensorReader, device: &Device) -> Self {
        Weights {
            reader,
            device: device.clone(),
        }
    }

    /// The reader the weights come from (for layers that load their own tensors).
    pub fn reader(&self) -> &'a dyn TensorReader {
        self.reader
    }

    pub fn has(&self, name: &str) -> bool {
        self.reader.tensor(name).is_some()
    }

    /// The tensor `name` as f32 on the device; its shape must be `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let info = self.reader.tensor(name).ok_or_else(|| {
            Error::in_file(
                self.reader.origin(),
                format!("missing tensor {name} (the model's config needs it)"),
            )
        })?;
        if info.shape != shape {
            return Err(Error::in_file(
                self.reader.origin(),
                format!(
                    "tensor {name} has shape {:?}; the model's config needs {shape:?}",
                    info.shape
                ),
            ));
        }
        let vb = var_builder(self.reader, &[name], &self.device)?;
        vb.get(shape, name)
            .and_then(|t| t.to_dtype(DType::F32))
            .map_err(|e| Error::in_file(self.reader.origin(), format!("tensor {name}: {e}")))
    }

    pub fn device(&self) -> &Device {
        &self.device
    }
}

/// A bias-free linear map: y = x W^T, W [out, in].
pub struct Linear {
    weight_t: Tensor,
}

impl Linear {
    pub fn load(w: &Weights, name: &str, out_dim: usize, in_dim: usize) -> Result<Linear> {
        let weight = w.get(name, &[out_dim, in_dim])?;
        Ok(Linear {
            weight_t: weight.t().and_then(|t| t.contiguous()).map_err(ce)?,
        })
    }

    /// x [.., in] -> [.., out].
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let dims = x.dims().to_vec();
        let last = *dims.last().expect("at least one dim");
        let rows: usize = dims[..dims.len() - 1].iter().product();
        let y = x.reshape((rows, last))?.matmul(&self.weight_t)?;
        let mut out = dims;
        *out.last_mut().expect("at least one dim") = self.weight_t.dim(1)?;
        y.reshape(out)
    }
}

/// RMSNorm over the last dimension: x / sqrt(mean(x^2) + eps), times a weight when given.
pub fn rms_norm(x: &Tensor, weight: Option<&Tensor>, eps: f64) -> candle_core::Result<Tensor> {
    crate::model::l3::rms_norm(x, weight, eps)
}

/// Rows `ids` of an embedding table [V, C] -> [N, C].
pub fn embed(table: &Tensor, ids: &Tensor) -> candle_core::Result<Tensor> {
    table.index_select(ids, 0)
}

/// One layer's cached keys and values, [B, H_kv, T, D] each, grown by concatenation.
#[derive(Default)]
pub struct LayerCache {
    k: Option<Tensor>,
    v: Option<Tensor>,
    /// Extra per-layer state (the ConvSwiGLU's previous step), [B, 1, C].
    pub conv: Option<Tensor>,
}

impl LayerCache {
    pub fn len(&self) -> usize {
        self.k.as_ref().map(|k| k.dims()[2]).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Append `k`, `v` [B, H_kv, T, D]; returns every key and value so far.
    pub fn append(&mut self, k: &Tensor, v: &Tensor) -> candle_core::Result<(Tensor, Tensor)> {
        let (k, v) = match (&self.k, &self.v) {
            (Some(pk), Some(pv)) => (Tensor::cat(&[pk, k], 2)?, Tensor::cat(&[pv, v], 2)?),
            _ => (k.clone(), v.clone()),
        };
        self.k = Some(k.clone());
        self.v = Some(v.clone());
        Ok((k, v))
    }
}

/// A decoder's cache: one [`LayerCache`] per attention layer (per loop, for looped models),
/// and the number of positions it holds.
#[derive(Default)]
pub struct KvCache {
    pub layers: Vec<LayerCache>,
}

impl KvCache {
    pub fn new(layers: usize) -> Self {
        KvCache {
            layers: (0..layers).map(|_| LayerCache::default()).collect(),
        }
    }

    /// Positions already in the cache.
    pub fn position(&self) -> usize {
        self.layers.first().map(LayerCache::len).unwrap_or(0)
    }
}

/// The additive attention mask [T, T_k] for queries at absolute positions `pos..pos+T` over
/// keys `0..T_k`: key j is visible from query i iff j <= i and i - j <= window.
pub fn causal_mask(
    t: usize,
    t_k: usize,
    pos: usize,
    window: Option<usize>,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let mut m = vec![0f32; t * t_k];
    for i in 0..t {
        let qi = pos + i;
        for j in 0..t_k {
            let visible = j <= qi && window.is_none_or(|w| qi - j <= w);
            if !visible {
                m[i * t_k + j] = f32::NEG_INFINITY;
            }
        }
    }
    Tensor::from_vec(m, (t, t_k), device)
}

/// Scaled dot-product attention: q [B, H, T, D], k and v [B, H_kv, T_k, D] (query head h uses
/// key/value head h / (H / H_kv)), mask [T, T_k] added to the scores; returns [B, H, T, D].
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    scale: f64,
) -> candle_core::Result<Tensor> {
    let (b, h, _t, d) = q.dims4()?;
    let (_, h_kv, t_k, _) = k.dims4()?;
    let (k, v) = if h_kv == h {
        (k.clone(), v.clone())
    } else {
        let rep = h / h_kv;
        let grow = |x: &Tensor| {
            x.unsqueeze(2)?
                .expand((b, h_kv, rep, t_k, d))?
                .reshape((b, h, t_k, d))
        };
        (grow(k)?, grow(v)?)
    };
    let scores = (q.contiguous()?.matmul(&k.t()?.contiguous()?)? * scale)?;
    let scores = scores.broadcast_add(mask)?;
    let p = candle_nn::ops::softmax_last_dim(&scores)?;
    p.matmul(&v.contiguous()?)
}

/// `cap * tanh(x / cap)`.
pub fn softcap(x: &Tensor, cap: f64) -> candle_core::Result<Tensor> {
    (x / cap)?.tanh()? * cap
}

/// [B, T, H*D] <-> [B, H, T, D].
pub fn split_heads(x: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let (b, t, c) = x.dims3()?;
    x.reshape((b, t, heads, c / heads))?.transpose(1, 2)
}

pub fn merge_heads(x: &Tensor) -> candle_core::Result<Tensor> {
    let (b, h, t, d) = x.dims4()?;
    x.transpose(1, 2)?.contiguous()?.reshape((b, t, h * d))
}
