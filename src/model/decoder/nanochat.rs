//! The public nanochat fork's GPT (the nanochat dialect of L3), rebuilt from a checkpoint's
//! `meta_NNNNNN.json` (`model_config`) and state dict. The numerical semantics follow the
//! fork's forward exactly (`fixtures/nanochat/README.md` lists them with what each mistake
//! costs): a weightless RMSNorm (eps = the f32 machine epsilon) everywhere; the normed
//! embedding as x0; per-block residual and x0 lambdas; rotary embeddings (half split, tables
//! rounded to bf16, rotation by -angle) followed by QK norm; grouped-query attention with a
//! sliding-window pattern whose last layer is always full; value embeddings mixed into v by a
//! gate on the first 32 channels; relu², SwiGLU or ConvSwiGLU MLPs; L3 layers after given
//! blocks, or at loop boundaries of a looped model, added as x + lambda * delta (lambda 1
//! without `l3_lambdas`); logits cropped to the vocabulary, then soft-capped at 15.

use super::blocks::{
    attention, causal_mask, ce, embed, merge_heads, rms_norm, softcap, KvCache, LayerCache, Linear,
    Weights,
};
use super::{refuse_unknown, L3Slot};
use crate::util::error::{Error, Result};
use candle_core::{Device, Tensor};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// The fork's weightless RMSNorm epsilon: `F.rms_norm(..., eps=None)` on f32 is 2^-23.
const NORM_EPS: f64 = f32::EPSILON as f64;
/// Logits are squashed into [-15, 15].
const SOFTCAP: f64 = 15.0;
/// Channels of the normed block input the value-embedding gate reads.
const VE_GATE_CHANNELS: usize = 32;
/// Rows of wte / lm_head / value embeddings are padded to a multiple of this.
const PAD_VOCAB_TO: usize = 64;
const ROTARY_BASE: f64 = 10000.0;

/// `model_config` of a checkpoint's `meta_NNNNNN.json` (the fork's `GPTConfig`).
#[derive(Clone, Debug, Deserialize)]
pub struct NanochatConfig {
    pub sequence_len: usize,
    pub vocab_size: usize,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub n_embd: usize,
    #[serde(default = "default_window")]
    pub window_pattern: String,
    #[serde(default)]
    pub l3_after_layers: String,
    #[serde(default)]
    pub l3_n_emb: usize,
    #[serde(default)]
    pub l3_d_up: usize,
    #[serde(default)]
    pub l3_k_max: usize,
    #[serde(default = "yes")]
    pub l3_lambda: bool,
    #[serde(default = "one")]
    pub n_loops: usize,
    #[serde(default)]
    pub l3_every_loops: usize,
    /// Truncated backprop through loops: training only, no effect on the forward.
    #[serde(default)]
    pub tbptl: usize,
    #[serde(default = "relu2")]
    pub mlp_type: String,
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

fn default_window() -> String {
    "SSSL".into()
}
fn yes() -> bool {
    true
}
fn one() -> usize {
    1
}
fn relu2() -> String {
    "relu2".into()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mlp {
    Relu2,
    SwiGlu,
    ConvSwiGlu,
}

impl NanochatConfig {
    pub fn check(&self, path: &Path) -> Result<()> {
        refuse_unknown(path, self.other.keys(), &[])?;
        let bad = |m: String| Err(Error::in_file(path, format!("model_config: {m}")));
        if self.n_layer == 0 || self.n_head == 0 || self.n_kv_head == 0 || self.n_embd == 0 {
            return bad("n_layer, n_head, n_kv_head and n_embd must be positive".into());
        }
        if !self.n_embd.is_multiple_of(self.n_head)
            || !(self.n_embd / self.n_head).is_multiple_of(2)
        {
            return bad(format!(
                "n_embd {} must be n_head {} times an even head dimension",
                self.n_embd, self.n_head
            ));
        }
        if self.n_kv_head > self.n_head || !self.n_head.is_multiple_of(self.n_kv_head) {
            return bad(format!(
                "n_kv_head {} must divide n_head {}",
                self.n_kv_head, self.n_head
            ));
        }
        if self.n_embd < VE_GATE_CHANNELS {
            return bad(format!(
                "n_embd {} is below the {VE_GATE_CHANNELS} channels the value-embedding gate reads",
                self.n_embd
            ));
        }
        if self.vocab_size == 0 || self.sequence_len == 0 {
            return bad("vocab_size and sequence_len must be positive".into());
        }
        let pattern = self.window_pattern.to_ascii_uppercase();
        if pattern.is_empty() || !pattern.chars().all(|c| c == 'S' || c == 'L') {
            return bad(format!(
                "window_pattern {:?} must be made of S and L",
                self.window_pattern
            ));
        }
        self.mlp(path)?;
        if self.n_loops == 0 {
            return bad("n_loops must be at least 1".into());
        }
        if self.n_loops > 1 && !self.l3_after_layers.trim().is_empty() {
            return bad("l3_after_layers and n_loops > 1 are mutually exclusive".into());
        }
        for i in self.l3_after(path)? {
            if i >= self.n_layer {
                return bad(format!(
                    "l3_after_layers names block {i}, but the model has {} blocks",
                    self.n_layer
                ));
            }
        }
        Ok(())
    }

    fn mlp(&self, path: &Path) -> Result<Mlp> {
        match self.mlp_type.as_str() {
            "relu2" => Ok(Mlp::Relu2),
            "swiglu" => Ok(Mlp::SwiGlu),
            "convswiglu" => Ok(Mlp::ConvSwiGlu),
            other => Err(Error::in_file(
                path,
                format!(
                    "model_config: mlp_type {other:?} is not supported (relu2, swiglu, convswiglu)"
                ),
            )),
        }
    }

    /// Blocks followed by an L3 layer (standard mode).
    pub fn l3_after(&self, path: &Path) -> Result<Vec<usize>> {
        let mut out: Vec<usize> = Vec::new();
        for part in self.l3_after_layers.split(',').map(str::trim) {
            if part.is_empty() {
                continue;
            }
            out.push(part.parse().map_err(|_| {
                Error::in_file(
                    path,
                    format!("model_config: l3_after_layers entry {part:?} is not a block index"),
                )
            })?);
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    /// Loop boundaries with an L3 layer (looped mode).
    pub fn l3_loops(&self) -> Vec<usize> {
        if self.n_loops <= 1 || self.l3_every_loops == 0 {
            return Vec::new();
        }
        (1..self.n_loops)
            .filter(|l| (l - 1) % self.l3_every_loops == 0)
            .collect()
    }

    pub fn head_dim(&self) -> usize {
        self.n_embd / self.n_head
    }

    pub fn padded_vocab(&self) -> usize {
        self.vocab_size.div_ceil(PAD_VOCAB_TO) * PAD_VOCAB_TO
    }

    fn has_value_embedding(&self, layer: usize) -> bool {
        layer % 2 == (self.n_layer - 1) % 2
    }

    /// Sliding window of layer i (keys at most this far behind the query), per the pattern
    /// tiled over layers with the last layer always long.
    fn window(&self, layer: usize) -> usize {
        let pattern: Vec<char> = self.window_pattern.to_ascii_uppercase().chars().collect();
        let long = self.sequence_len;
        if layer + 1 == self.n_layer {
            return long;
        }
        match pattern[layer % pattern.len()] {
            'S' => long / 2,
            _ => long,
        }
    }

    /// The longest sequence the model runs: the fork's rotary tables cover 10 x sequence_len.
    pub fn max_positions(&self) -> usize {
        self.sequence_len.saturating_mul(10)
    }
}

struct Attn {
    c_q: Linear,
    c_k: Linear,
    c_v: Linear,
    c_proj: Linear,
    ve_gate: Option<Linear>,
}

enum MlpWeights {
    Relu2 {
        c_fc: Linear,
        c_proj: Linear,
    },
    SwiGlu {
        c_gate_up: Linear,
        c_proj: Linear,
        inter: usize,
    },
    ConvSwiGlu {
        c_gate_up: Linear,
        c_proj: Linear,
        inter: usize,
        /// [inter, 2]: weight of the previous and of the current step.
        conv_w: Tensor,
        conv_b: Tensor,
    },
}

struct Block {
    attn: Attn,
    mlp: MlpWeights,
}

pub struct NanochatGpt {
    pub cfg: NanochatConfig,
    wte: Tensor,
    blocks: Vec<Block>,
    value_embeds: BTreeMap<usize, Tensor>,
    resid_lambdas: Vec<f32>,
    x0_lambdas: Vec<f32>,
    lm_head_t: Tensor,
    cos: Tensor,
    sin: Tensor,
    device: Device,
}

/// The fork's rotary tables: inverse frequencies and angles in f32, cos and sin rounded to
/// bf16 (they are kept in bf16 there), for positions `0..n`.
fn rotary_tables(n: usize, head_dim: usize, device: &Device) -> Result<(Tensor, Tensor)> {
    let half = head_dim / 2;
    let inv_freq: Vec<f32> = (0..half)
        .map(|c| {
            let e = (2 * c) as f32 / head_dim as f32;
            1.0f32 / (ROTARY_BASE.powf(e as f64) as f32)
        })
        .collect();
    let mut cos = Vec::with_capacity(n * half);
    let mut sin = Vec::with_capacity(n * half);
    for t in 0..n {
        for &f in &inv_freq {
            let angle = (t as f32 * f) as f64;
            cos.push(half::bf16::from_f32(angle.cos() as f32).to_f32());
            sin.push(half::bf16::from_f32(angle.sin() as f32).to_f32());
        }
    }
    Ok((
        Tensor::from_vec(cos, (n, half), device).map_err(ce)?,
        Tensor::from_vec(sin, (n, half), device).map_err(ce)?,
    ))
}

fn scalars(w: &Weights, name: &str, n: usize) -> Result<Vec<f32>> {
    w.get(name, &[n])?.to_vec1::<f32>().map_err(ce)
}

impl NanochatGpt {
    pub fn load(cfg: NanochatConfig, w: &Weights, config_path: &Path) -> Result<NanochatGpt> {
        let (c, l) = (cfg.n_embd, cfg.n_layer);
        let hd = cfg.head_dim();
        let kv = cfg.n_kv_head * hd;
        let vp = cfg.padded_vocab();
        let mlp = cfg.mlp(config_path)?;
        let wte = w.get("transformer.wte.weight", &[vp, c])?;
        let mut blocks = Vec::with_capacity(l);
        let mut value_embeds = BTreeMap::new();
        for i in 0..l {
            let p = |n: &str| format!("transformer.h.{i}.{n}");
            let ve = cfg.has_value_embedding(i);
            let attn = Attn {
                c_q: Linear::load(w, &p("attn.c_q.weight"), c, c)?,
                c_k: Linear::load(w, &p("attn.c_k.weight"), kv, c)?,
                c_v: Linear::load(w, &p("attn.c_v.weight"), kv, c)?,
                c_proj: Linear::load(w, &p("attn.c_proj.weight"), c, c)?,
                ve_gate: if ve {
                    Some(Linear::load(
                        w,
                        &p("attn.ve_gate.weight"),
                        cfg.n_kv_head,
                        VE_GATE_CHANNELS,
                    )?)
                } else {
                    None
                },
            };
            if ve {
                value_embeds.insert(i, w.get(&format!("value_embeds.{i}.weight"), &[vp, kv])?);
            }
            let inter = (4 * c * 2 / 3).div_ceil(256) * 256;
            let mlp = match mlp {
                Mlp::Relu2 => MlpWeights::Relu2 {
                    c_fc: Linear::load(w, &p("mlp.c_fc.weight"), 4 * c, c)?,
                    c_proj: Linear::load(w, &p("mlp.c_proj.weight"), c, 4 * c)?,
                },
                Mlp::SwiGlu => MlpWeights::SwiGlu {
                    c_gate_up: Linear::load(w, &p("mlp.c_gate_up.weight"), 2 * inter, c)?,
                    c_proj: Linear::load(w, &p("mlp.c_proj.weight"), c, inter)?,
                    inter,
                },
                Mlp::ConvSwiGlu => MlpWeights::ConvSwiGlu {
                    c_gate_up: Linear::load(w, &p("mlp.c_gate_up.weight"), 2 * inter, c)?,
                    c_proj: Linear::load(w, &p("mlp.c_proj.weight"), c, inter)?,
                    inter,
                    conv_w: w
                        .get(&p("mlp.dwconv.weight"), &[inter, 1, 2])?
                        .reshape((inter, 2))
                        .map_err(ce)?,
                    conv_b: w.get(&p("mlp.dwconv.bias"), &[inter])?,
                },
            };
            blocks.push(Block { attn, mlp });
        }
        let lm_head = w.get("lm_head.weight", &[vp, c])?;
        let lm_head_t = lm_head
            .narrow(0, 0, cfg.vocab_size)
            .and_then(|t| t.t())
            .and_then(|t| t.contiguous())
            .map_err(ce)?;
        let (cos, sin) = rotary_tables(cfg.max_positions(), hd, w.device())?;
        Ok(NanochatGpt {
            resid_lambdas: scalars(w, "resid_lambdas", l)?,
            x0_lambdas: scalars(w, "x0_lambdas", l)?,
            wte,
            blocks,
            value_embeds,
            lm_head_t,
            cos,
            sin,
            device: w.device().clone(),
            cfg,
        })
    }

    /// Attention layers a KV cache needs (every block of every loop).
    pub fn attention_layers(&self) -> usize {
        self.blocks.len() * self.cfg.n_loops
    }

    /// q or k [B, T, H, D] rotated for positions `pos..pos+T`.
    fn rotate(&self, x: &Tensor, pos: usize) -> candle_core::Result<Tensor> {
        let (_, t, _, d) = x.dims4()?;
        let half = d / 2;
        let cos = self.cos.narrow(0, pos, t)?.unsqueeze(0)?.unsqueeze(2)?;
        let sin = self.sin.narrow(0, pos, t)?.unsqueeze(0)?.unsqueeze(2)?;
        let x1 = x.narrow(3, 0, half)?;
        let x2 = x.narrow(3, half, half)?;
        let y1 = (x1.broadcast_mul(&cos)? + x2.broadcast_mul(&sin)?)?;
        let y2 = (x2.broadcast_mul(&cos)? - x1.broadcast_mul(&sin)?)?;
        Tensor::cat(&[&y1, &y2], 3)
    }

    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        layer: usize,
        h: &Tensor,
        ve: Option<&Tensor>,
        cache: &mut LayerCache,
        pos: usize,
    ) -> candle_core::Result<Tensor> {
        let a = &self.blocks[layer].attn;
        let cfg = &self.cfg;
        let (b, t, _) = h.dims3()?;
        let hd = cfg.head_dim();
        let q = a.c_q.forward(h)?.reshape((b, t, cfg.n_head, hd))?;
        let k = a.c_k.forward(h)?.reshape((b, t, cfg.n_kv_head, hd))?;
        let mut v = a.c_v.forward(h)?.reshape((b, t, cfg.n_kv_head, hd))?;
        if let (Some(ve), Some(gate)) = (ve, &a.ve_gate) {
            let g =
                candle_nn::ops::sigmoid(&gate.forward(&h.narrow(2, 0, VE_GATE_CHANNELS)?)?)?;
            let g = (g * 2.0)?.unsqueeze(3)?;
            let ve = ve.reshape((b, t, cfg.n_kv_head, hd))?;
            v = (v + ve.broadcast_mul(&g)?)?;
        }
        let q = rms_norm(&self.rotate(&q, pos)?, None, NORM_EPS)?;
        let k = rms_norm(&self.rotate(&k, pos)?, None, NORM_EPS)?;
        let q = q.transpose(1, 2)?;
        let k = k.transpose(1, 2)?.contiguous()?;
        let v = v.transpose(1, 2)?.contiguous()?;
        let (k, v) = cache.append(&k, &v)?;
        let t_k = k.dims()[2];
        let mask = causal_mask(
            t,
            t_k,
            pos,
            Some(cfg.window(layer % self.blocks.len())),
            &self.device,
        )?;
        let y = attention(&q, &k, &v, &mask, 1.0 / (hd as f64).sqrt())?;
        a.c_proj.forward(&merge_heads(&y)?)
    }

    fn mlp(&self, layer: usize, h: &Tensor, cache: &mut LayerCache) -> candle_core::Result<Tensor> {
        match &self.blocks[layer].mlp {
            MlpWeights::Relu2 { c_fc, c_proj } => c_proj.forward(&c_fc.forward(h)?.relu()?.sqr()?),
            MlpWeights::SwiGlu {
                c_gate_up,
                c_proj,
                inter,
            } => {
                let gu = c_gate_up.forward(h)?;
                let m = (candle_nn::ops::silu(&gu.narrow(2, 0, *inter)?)?
                    * gu.narrow(2, *inter, *inter)?)?;
                c_proj.forward(&m)
            }
            MlpWeights::ConvSwiGlu {
                c_gate_up,
                c_proj,
                inter,
                conv_w,
                conv_b,
            } => {
                let gu = c_gate_up.forward(h)?;
                let m = (candle_nn::ops::silu(&gu.narrow(2, 0, *inter)?)?
                    * gu.narrow(2, *inter, *inter)?)?;
                // Causal depthwise conv of kernel 2: m'[t] = w0 m[t-1] + w1 m[t] + b, with
                // m[-1] the last step of the previous call (zero at the start).
                let (b, t, ch) = m.dims3()?;
                let prev_step = match &cache.conv {
                    Some(p) => p.clone(),
                    None => Tensor::zeros((b, 1, ch), m.dtype(), m.device())?,
                };
                let shifted = Tensor::cat(&[&prev_step, &m.narrow(1, 0, t - 1)?], 1)?;
                cache.conv = Some(m.narrow(1, t - 1, 1)?.contiguous()?);
                let w0 = conv_w.narrow(1, 0, 1)?.squeeze(1)?;
                let w1 = conv_w.narrow(1, 1, 1)?.squeeze(1)?;
                let conv =
                    (shifted.broadcast_mul(&w0)? + m.broadcast_mul(&w1)?)?.broadcast_add(conv_b)?;
                c_proj.forward(&candle_nn::ops::silu(&conv)?)
            }
        }
    }

    /// Logits [B, T, vocab] of `ids` [B, T]; `cache` holds the earlier positions; `l3` runs
    /// the L3 layer of a slot on hidden states [B*T, C] and returns x + lambda * delta.
    pub fn forward(
        &self,
        ids: &Tensor,
        cache: &mut KvCache,
        l3: &mut dyn FnMut(L3Slot, &Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let cfg = &self.cfg;
        let (b, t) = ids.dims2().map_err(ce)?;
        let pos = cache.position();
        if pos + t > cfg.max_positions() {
            return Err(Error::input(format!(
                "{} positions exceed the model's rotary tables ({} = 10 x sequence_len)",
                pos + t,
                cfg.max_positions()
            )));
        }
        let c = cfg.n_embd;
        let flat = ids.flatten_all().map_err(ce)?;
        let x = embed(&self.wte, &flat)
            .and_then(|x| x.reshape((b, t, c)))
            .and_then(|x| rms_norm(&x, None, NORM_EPS))
            .map_err(ce)?;
        let x0 = x.clone();
        let mut ves = BTreeMap::new();
        for (&i, table) in &self.value_embeds {
            ves.insert(i, embed(table, &flat).map_err(ce)?);
        }
        let run_l3 = |slot: L3Slot,
                      x: &Tensor,
                      l3: &mut dyn FnMut(L3Slot, &Tensor) -> Result<Tensor>|
         -> Result<Tensor> {
            let flat = x.reshape((b * t, c)).map_err(ce)?;
            l3(slot, &flat)?.reshape((b, t, c)).map_err(ce)
        };
        let l3_after = cfg.l3_after(Path::new("model_config"))?;
        let l3_loops = cfg.l3_loops();
        let n_layer = self.blocks.len();
        let mut x = x;
        for lp in 0..cfg.n_loops {
            if lp > 0 && l3_loops.contains(&lp) {
                x = run_l3(L3Slot::AtLoop(lp), &x, l3)?;
            }
            for i in 0..n_layer {
                let layer_cache = &mut cache.layers[lp * n_layer + i];
                let step =
                    |x: &Tensor, layer_cache: &mut LayerCache| -> candle_core::Result<Tensor> {
                        let x = ((x * self.resid_lambdas[i] as f64)?
                            + (&x0 * self.x0_lambdas[i] as f64)?)?;
                        let h = rms_norm(&x, None, NORM_EPS)?;
                        let x = (&x + self.attention(i, &h, ves.get(&i), layer_cache, pos)?)?;
                        let h = rms_norm(&x, None, NORM_EPS)?;
                        &x + self.mlp(i, &h, layer_cache)?
                    };
                x = step(&x, layer_cache).map_err(ce)?;
                if cfg.n_loops == 1 && l3_after.contains(&i) {
                    x = run_l3(L3Slot::AfterBlock(i), &x, l3)?;
                }
            }
        }
        let logits = rms_norm(&x, None, NORM_EPS)
            .and_then(|h| h.reshape((b * t, c)))
            .and_then(|h| h.matmul(&self.lm_head_t))
            .and_then(|l| softcap(&l, SOFTCAP))
            .and_then(|l| l.reshape((b, t, cfg.vocab_size)))
            .map_err(ce)?;
        Ok(logits)
    }
}

/// Where the fork's L3 layers sit: `l3_layers.{k}` after block k, or at loop boundary k.
pub fn l3_slot(name: &str, cfg: &NanochatConfig) -> Option<L3Slot> {
    let k: usize = name.rsplit('.').next()?.parse().ok()?;
    if !name.contains("l3_layers.") {
        return None;
    }
    if cfg.n_loops > 1 {
        cfg.l3_loops().contains(&k).then_some(L3Slot::AtLoop(k))
    } else {
        Some(L3Slot::AfterBlock(k))
    }
}
