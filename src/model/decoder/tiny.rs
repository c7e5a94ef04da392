//! The bundled trained model's family (`fixtures/train_tiny.py`): a GPT-style pre-norm decoder
//! with learned positions, a GELU MLP, RMSNorms with weights, tied input/output embeddings, no
//! biases, and paper-dialect L3 sublayers after given blocks whose output *replaces* the hidden
//! state. Configured by the model's `config.json` (`model_type: "l3-tiny-trained"`).
//!
//! The same skeleton with MoE sublayers instead (`fixtures/train_moe.py`, `model_type:
//! "tiny-moe-dtopp-trained"` or `"tiny-moe-topk-trained"`): after each block i of
//! `moe_layers`, `x <- x + MoE_i(RMSNorm_i(x))`, with SwiGLU experts under
//! `moe.{i}.block_sparse_moe` (Mixtral names) and routing fixed at evaluation: DTop-p at the
//! controller's final p, or the mode string the config records.

use super::blocks::{
    attention, causal_mask, ce, embed, merge_heads, rms_norm, split_heads, KvCache, LayerCache,
    Linear, Weights,
};
use super::{refuse_unknown, L3Slot};
use crate::checkpoint::moe::{ExpertTensors, MoeTensors};
use crate::model::moe::{routing::DTOPP_EPS, MoeLayer, Routing};
use crate::util::error::{Error, Result};
use candle_core::{Device, Tensor};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// `config.json` of the family (the fields `train_tiny.py` writes).
#[derive(Clone, Debug, Deserialize)]
pub struct TinyConfig {
    pub vocab_size: usize,
    pub n_embd: usize,
    pub n_head: usize,
    pub n_layer: usize,
    pub block_size: usize,
    pub mlp_hidden: usize,
    #[serde(default)]
    pub l3_layers: Vec<usize>,
    pub norm_eps: f64,
    pub tied_embeddings: bool,
    #[serde(default = "gelu")]
    pub mlp_activation: String,
    #[serde(default = "learned")]
    pub positions: String,
    /// Blocks followed by an MoE sublayer (MoE models only).
    #[serde(default)]
    pub moe_layers: Vec<usize>,
    #[serde(default)]
    pub experts: usize,
    #[serde(default)]
    pub expert_hidden: usize,
    #[serde(default)]
    pub shared_experts: usize,
    #[serde(default)]
    pub expert_activation: Option<String>,
    /// `dtopp` (at `controller.final_p`), or a full mode string (`topk:2`).
    #[serde(default)]
    pub routing: Option<String>,
    #[serde(default)]
    pub dtopp: Option<serde_json::Value>,
    #[serde(default)]
    pub controller: Option<serde_json::Value>,
    /// Everything else in the file: descriptive keys are fine, an option that would change
    /// the computation is refused by name.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

fn gelu() -> String {
    "gelu".into()
}
fn learned() -> String {
    "learned".into()
}

/// Keys of `config.json` that describe the run without changing the computation.
const DESCRIPTIVE: &[&str] = &[
    "model_type",
    "d_emb",
    "d_up",
    "norm",
    "l3_dialect",
    "l3_residual",
    "l3_placement",
    "n_emb",
    "k_max",
    "allocation",
    "train",
    "results",
    "log",
    "capture_checks",
    "l3",
    "moe_placement",
    "moe_names",
    "controller_tracking",
    "trajectory",
];

impl TinyConfig {
    pub fn check(&self, path: &Path) -> Result<()> {
        refuse_unknown(path, self.other.keys(), DESCRIPTIVE)?;
        let bad = |m: String| Err(Error::in_file(path, m));
        if self.mlp_activation != "gelu" {
            return bad(format!(
                "mlp_activation {:?} is not supported (this family uses gelu)",
                self.mlp_activation
            ));
        }
        if self.positions != "learned" {
            return bad(format!(
                "positions {:?} is not supported (this family uses learned positions)",
                self.positions
            ));
        }
        if !self.tied_embeddings {
            return bad("tied_embeddings false is not supported by this family".into());
        }
        if self.n_head == 0 || self.n_embd == 0 || !self.n_embd.is_multiple_of(self.n_head) {
            return bad(format!(
                "n_embd {} is not a positive multiple of n_head {}",
                self.n_embd, self.n_head
            ));
        }
        if self.n_layer == 0 || self.block_size == 0 || self.vocab_size == 0 {
            return bad("n_layer, block_size and vocab_size must be positive".into());
        }
        if !(self.norm_eps.is_finite() && self.norm_eps > 0.0) {
            return bad(format!(
                "norm_eps {} is not a positive number",
                self.norm_eps
            ));
        }
        if let Some(&i) = self.l3_layers.iter().find(|&&i| i >= self.n_layer) {
            return bad(format!(
                "l3_layers names block {i}, but the model has {} blocks",
                self.n_layer
            ));
        }
        if !self.moe_layers.is_empty() {
            if let Some(&i) = self.moe_layers.iter().find(|&&i| i >= self.n_layer) {
                return bad(format!(
                    "moe_layers names block {i}, but the model has {} blocks",
                    self.n_layer
                ));
            }
            if let Some(i) = self.moe_layers.iter().find(|i| self.l3_layers.contains(i)) {
                return bad(format!(
                    "block {i} is followed by both an L3 and an MoE sublayer; this family has one per block"
                ));
            }
            if self.experts == 0 || self.expert_hidden == 0 {
                return bad("an MoE model needs experts and expert_hidden above 0".into());
            }
            if self.expert_activation.as_deref().unwrap_or("swiglu") != "swiglu" {
                return bad(format!(
                    "expert_activation {:?} is not supported (the experts are SwiGLU)",
                    self.expert_activation
                ));
            }
            if let Some(eps) = self.dtopp.as_ref().and_then(|v| v.get("eps")) {
                if eps.as_f64().map(|e| e as f32) != Some(DTOPP_EPS) {
                    return bad(format!(
                        "dtopp.eps {eps} is not the epsilon l3kit's DTop-p uses ({DTOPP_EPS})"
                    ));
                }
            }
            self.moe_routing()
                .map_err(|e| Error::in_file(path, e.to_string()))?;
        }
        Ok(())
    }

    /// How the MoE sublayers route at evaluation.
    pub fn moe_routing(&self) -> Result<Routing> {
        match self.routing.as_deref() {
            Some("dtopp") => {
                let p = self
                    .controller
                    .as_ref()
                    .and_then(|c| c.get("final_p"))
                    .and_then(|p| p.as_f64())
                    .ok_or_else(|| {
                        Error::input(
                            "routing \"dtopp\" needs the threshold controller.final_p (a number)",
                        )
                    })?;
                Routing::parse(&format!("dtopp:{p}"))
            }
            Some(mode) => Routing::parse(mode),
            None => Err(Error::input(
                "an MoE model needs `routing` (dtopp with controller.final_p, or a mode string)",
            )),
        }
    }
}

/// One MoE sublayer: its pre-norm, its layer and how it routes.
struct MoeSublayer {
    block: usize,
    norm: Tensor,
    layer: MoeLayer,
    routing: Routing,
    /// Stored bytes of one routed expert (w1, w2, w3), what serving it from elsewhere moves.
    expert_bytes: u64,
}

/// An MoE sublayer as `traffic` sees it.
#[derive(Clone, Debug)]
pub struct MoeInfo {
    pub name: String,
    /// Decoder blocks that run before the sublayer's router.
    pub blocks_before: usize,
    pub n_experts: usize,
    pub expert_bytes: u64,
}

struct Block {
    ln1: Tensor,
    qkv: Linear,
    proj: Linear,
    ln2: Tensor,
    fc: Linear,
    fc_proj: Linear,
}

pub struct TinyLm {
    pub cfg: TinyConfig,
    wte: Tensor,
    wpe: Tensor,
    blocks: Vec<Block>,
    moe: Vec<MoeSublayer>,
    ln_f: Tensor,
    /// The output head: the embedding, transposed once.
    head_t: Tensor,
    device: Device,
    /// When recording: per forward, per MoE sublayer, the distinct experts its router chose.
    moe_trace: std::sync::Mutex<Option<Vec<Vec<Vec<u32>>>>>,
}

impl TinyLm {
    pub fn load(cfg: TinyConfig, w: &Weights) -> Result<TinyLm> {
        let (d, v, h) = (cfg.n_embd, cfg.vocab_size, cfg.mlp_hidden);
        let wte = w.get("wte.weight", &[v, d])?;
        let wpe = w.get("wpe.weight", &[cfg.block_size, d])?;
        let mut blocks = Vec::with_capacity(cfg.n_layer);
        for i in 0..cfg.n_layer {
            let p = |n: &str| format!("h.{i}.{n}");
            blocks.push(Block {
                ln1: w.get(&p("ln1.weight"), &[d])?,
                qkv: Linear::load(w, &p("attn.qkv.weight"), 3 * d, d)?,
                proj: Linear::load(w, &p("attn.proj.weight"), d, d)?,
                ln2: w.get(&p("ln2.weight"), &[d])?,
                fc: Linear::load(w, &p("mlp.fc.weight"), h, d)?,
                fc_proj: Linear::load(w, &p("mlp.proj.weight"), d, h)?,
            });
        }
        let mut moe = Vec::with_capacity(cfg.moe_layers.len());
        for &i in &cfg.moe_layers {
            let prefix = format!("moe.{i}.block_sparse_moe");
            let expert = |kind: &str, j: usize| ExpertTensors {
                w1: format!("{prefix}.{kind}.{j}.w1.weight"),
                w2: format!("{prefix}.{kind}.{j}.w2.weight"),
                w3: format!("{prefix}.{kind}.{j}.w3.weight"),
            };
            let scale = format!("{prefix}.gate.scale");
            let names = MoeTensors {
                layer_id: Some(i as u32),
                scheme: "mixtral".into(),
                gate: format!("{prefix}.gate.weight"),
                scale: w.has(&scale).then_some(scale),
                experts: (0..cfg.experts).map(|j| expert("experts", j)).collect(),
                shared: (0..cfg.shared_experts)
                    .map(|j| expert("shared_experts", j))
                    .collect(),
                d_model: d,
                n_experts: cfg.experts,
                expert_hidden: cfg.expert_hidden,
                shared_hidden: (cfg.shared_experts > 0).then_some(cfg.expert_hidden),
                name: prefix,
            };
            let routing = cfg.moe_routing()?;
            if routing.needs_scale() && names.scale.is_none() {
                return Err(Error::in_file(
                    w.reader().origin(),
                    format!(
                        "routing {routing} needs the scale tensor {}.gate.scale",
                        names.name
                    ),
                ));
            }
            routing.check_experts(cfg.experts)?;
            let expert_bytes = names
                .experts
                .first()
                .map(|e| {
                    [&e.w1, &e.w2, &e.w3]
                        .iter()
                        .filter_map(|n| w.reader().tensor(n))
                        .map(|t| t.byte_len() as u64)
                        .sum()
                })
                .unwrap_or(0);
            moe.push(MoeSublayer {
                expert_bytes,
                block: i,
                norm: w.get(&format!("moe.{i}.norm.weight"), &[d])?,
                layer: MoeLayer::load(w.reader(), &names, w.device())?,
                routing,
            });
        }
        let ln_f = w.get("ln_f.weight", &[d])?;
        let head_t = wte.t().and_then(|t| t.contiguous()).map_err(ce)?;
        Ok(TinyLm {
            cfg,
            wte,
            wpe,
            blocks,
            moe,
            ln_f,
            head_t,
            device: w.device().clone(),
            moe_trace: std::sync::Mutex::new(None),
        })
    }

    fn block(
        &self,
        blk: &Block,
        x: &Tensor,
        cache: &mut LayerCache,
        mask: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let (d, heads, eps) = (self.cfg.n_embd, self.cfg.n_head, self.cfg.norm_eps);
        let scale = 1.0 / ((d / heads) as f64).sqrt();
        let hnorm = rms_norm(x, Some(&blk.ln1), eps)?;
        let qkv = blk.qkv.forward(&hnorm)?;
        let q = split_heads(&qkv.narrow(2, 0, d)?, heads)?;
        let k = split_heads(&qkv.narrow(2, d, d)?, heads)?;
        let v = split_heads(&qkv.narrow(2, 2 * d, d)?, heads)?;
        let (k, v) = cache.append(&k.contiguous()?, &v.contiguous()?)?;
        let y = attention(&q, &k, &v, mask, scale)?;
        let x1 = (x + blk.proj.forward(&merge_heads(&y)?)?)?;
        let m = blk
            .fc
            .forward(&rms_norm(&x1, Some(&blk.ln2), eps)?)?
            .gelu_erf()?;
        &x1 + blk.fc_proj.forward(&m)?
    }

    /// The MoE sublayers, in forward order.
    pub fn moe_info(&self) -> Vec<MoeInfo> {
        self.moe
            .iter()
            .map(|m| MoeInfo {
                name: format!("moe.{}", m.block),
                blocks_before: m.block + 1,
                n_experts: m.layer.cfg.n_experts,
                expert_bytes: m.expert_bytes,
            })
            .collect()
    }

    /// Start (or stop) recording which experts each MoE sublayer chooses.
    pub fn record_routing(&self, on: bool) {
        if let Ok(mut t) = self.moe_trace.lock() {
            *t = on.then(Vec::new);
        }
    }

    /// What was recorded since the last call: per forward, per MoE sublayer, the distinct
    /// experts chosen.
    pub fn take_routing(&self) -> Vec<Vec<Vec<u32>>> {
        self.moe_trace
            .lock()
            .ok()
            .and_then(|mut t| t.as_mut().map(std::mem::take))
            .unwrap_or_default()
    }

    fn record(&self, routed: &crate::model::moe::routing::Routed) {
        let Ok(mut guard) = self.moe_trace.lock() else {
            return;
        };
        let Some(trace) = guard.as_mut() else {
            return;
        };
        let e = routed.n_experts;
        let distinct: Vec<u32> = (0..e)
            .filter(|&j| (0..routed.n_tokens).any(|t| routed.chosen[t * e + j] != 0))
            .map(|j| j as u32)
            .collect();
        // The first sublayer of a forward opens a new entry.
        if trace.last().is_none_or(|f| f.len() == self.moe.len()) {
            trace.push(Vec::with_capacity(self.moe.len()));
        }
        if let Some(f) = trace.last_mut() {
            f.push(distinct);
        }
    }

    pub fn attention_layers(&self) -> usize {
        self.blocks.len()
    }

    /// Logits [B, T, V] of `ids` [B, T] at positions `pos..pos+T`; with a cache, keys and
    /// values are appended to it. `l3` runs the L3 sublayers (after their blocks).
    pub fn forward(
        &self,
        ids: &Tensor,
        cache: &mut KvCache,
        l3: &mut dyn FnMut(usize, &Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let (b, t) = ids.dims2().map_err(ce)?;
        let pos = cache.position();
        if pos + t > self.cfg.block_size {
            return Err(Error::input(format!(
                "{} positions exceed the model's context of {} (learned positions)",
                pos + t,
                self.cfg.block_size
            )));
        }
        let d = self.cfg.n_embd;
        let flat = ids.flatten_all().map_err(ce)?;
        let tok = embed(&self.wte, &flat).map_err(ce)?;
        let positions = Tensor::arange(pos as u32, (pos + t) as u32, &self.device).map_err(ce)?;
        let pe = embed(&self.wpe, &positions).map_err(ce)?;
        let mut x = tok
            .reshape((b, t, d))
            .and_then(|x| x.broadcast_add(&pe))
            .map_err(ce)?;
        let mask = causal_mask(t, pos + t, pos, None, &self.device).map_err(ce)?;
        for (i, blk) in self.blocks.iter().enumerate() {
            x = self
                .block(blk, &x, &mut cache.layers[i], &mask)
                .map_err(ce)?;
            if self.cfg.l3_layers.contains(&i) {
                // Replace residual: the L3 layer's output is the new hidden state.
                let flat = x.reshape((b * t, d)).map_err(ce)?;
                x = l3(i, &flat)?.reshape((b, t, d)).map_err(ce)?;
            }
            if let Some(m) = self.moe.iter().find(|m| m.block == i) {
                let flat = x.reshape((b * t, d)).map_err(ce)?;
                let h = rms_norm(&flat, Some(&m.norm), self.cfg.norm_eps).map_err(ce)?;
                let (y, routed) = m.layer.forward(&h, m.routing)?;
                self.record(&routed);
                x = (x + y.reshape((b, t, d)).map_err(ce)?).map_err(ce)?;
            }
        }
        let out = rms_norm(&x, Some(&self.ln_f), self.cfg.norm_eps)
            .and_then(|h| h.reshape((b * t, d)))
            .and_then(|h| h.matmul(&self.head_t))
            .and_then(|l| l.reshape((b, t, self.cfg.vocab_size)))
            .map_err(ce)?;
        Ok(out)
    }
}

/// Where this family's L3 layers sit: `l3.{i}` after block i.
pub fn l3_slot(name: &str, cfg: &TinyConfig) -> Option<L3Slot> {
    let i: usize = name.strip_prefix("l3.")?.parse().ok()?;
    cfg.l3_layers.contains(&i).then_some(L3Slot::AfterBlock(i))
}
