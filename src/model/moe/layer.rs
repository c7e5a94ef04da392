//! The MoE layer forward pass, written with candle:
//!
//! ```text
//! out(h) = sum_{shared j} S_j(h) + sum_{chosen e} w_e E_e(h),    E(h) = W2 (silu(W1 h) * (W3 h))
//! ```
//!
//! Tokens are grouped by expert, so every expert runs once on the rows that chose it (the MoE
//! analogue of the L3 layer grouping positions by token). On CPU the rows are gathered and the
//! weighted outputs accumulated by hand, in ascending expert order (the reference's order);
//! on other devices the same runs as candle ops (`index_select`, `index_add`).

use super::routing::{route_logits, Routed, Routing};
use crate::checkpoint::moe::{ExpertTensors, MoeTensors};
use crate::formats::safetensors::TensorReader;
use crate::model::l3::Backend;
use crate::model::weights::var_builder;
use crate::util::error::{Error, Result};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

fn ce(e: candle_core::Error) -> Error {
    Error::Other(format!("compute error: {e}"))
}

/// A layer's shape.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MoeConfig {
    pub d_model: usize,
    pub n_experts: usize,
    pub expert_hidden: usize,
    pub n_shared_experts: usize,
    /// The shared experts' hidden width (may differ from the routed experts').
    pub shared_hidden: usize,
    /// Whether the layer has DTop-p's scale tau.
    pub has_scale: bool,
}

impl MoeConfig {
    pub fn of(t: &MoeTensors) -> Self {
        MoeConfig {
            d_model: t.d_model,
            n_experts: t.n_experts,
            expert_hidden: t.expert_hidden,
            n_shared_experts: t.shared.len(),
            shared_hidden: t.shared_hidden.unwrap_or(0),
            has_scale: t.scale.is_some(),
        }
    }
}

/// One SwiGLU expert.
struct Expert {
    w1: Tensor,
    w2: Tensor,
    w3: Tensor,
}

impl Expert {
    fn load(vb: &candle_nn::VarBuilder, n: &ExpertTensors, h: usize, d: usize) -> Result<Self> {
        Ok(Expert {
            w1: get(vb, &[h, d], &n.w1)?,
            w2: get(vb, &[d, h], &n.w2)?,
            w3: get(vb, &[h, d], &n.w3)?,
        })
    }

    /// `x` [n, d] -> [n, d].
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let a = x.matmul(&self.w1.t()?)?.silu()?;
        let b = x.matmul(&self.w3.t()?)?;
        (a * b)?.matmul(&self.w2.t()?)
    }
}

fn get(vb: &candle_nn::VarBuilder, shape: &[usize], name: &str) -> Result<Tensor> {
    vb.get(shape, name)
        .and_then(|t| t.to_dtype(DType::F32))
        .map_err(|e| Error::input(format!("tensor {name}: {e}")))
}

/// One MoE layer's parameters on a device.
pub struct MoeLayer {
    pub cfg: MoeConfig,
    gate: Tensor,
    scale: Option<f32>,
    experts: Vec<Expert>,
    shared: Vec<Expert>,
    device: Device,
}

impl MoeLayer {
    /// Build from a VarBuilder holding the tensors named in `names`.
    pub fn new(cfg: MoeConfig, vb: &candle_nn::VarBuilder, names: &MoeTensors) -> Result<Self> {
        let (d, e) = (cfg.d_model, cfg.n_experts);
        if names.experts.len() != e || names.shared.len() != cfg.n_shared_experts {
            return Err(Error::input(format!(
                "MoE layer {}: the config has {e} experts and {} shared, the names {} and {}",
                names.name,
                cfg.n_shared_experts,
                names.experts.len(),
                names.shared.len()
            )));
        }
        let gate = get(vb, &[e, d], &names.gate)?;
        let scale = match (&names.scale, cfg.has_scale) {
            (Some(s), true) => {
                let t = vb
                    .get_unchecked(s)
                    .and_then(|t| t.to_dtype(DType::F32))
                    .and_then(|t| t.flatten_all())
                    .and_then(|t| t.to_vec1::<f32>())
                    .map_err(|err| Error::input(format!("tensor {s}: {err}")))?;
                match t.as_slice() {
                    [v] => Some(*v),
                    _ => {
                        return Err(Error::input(format!(
                            "scale tensor {s} holds {} values; expected 1",
                            t.len()
                        )))
                    }
                }
            }
            _ => None,
        };
        let experts = names
            .experts
            .iter()
            .map(|n| Expert::load(vb, n, cfg.expert_hidden, d))
            .collect::<Result<Vec<_>>>()?;
        let shared = names
            .shared
            .iter()
            .map(|n| Expert::load(vb, n, cfg.shared_hidden, d))
            .collect::<Result<Vec<_>>>()?;
        Ok(MoeLayer {
            device: vb.device().clone(),
            cfg,
            gate,
            scale,
            experts,
            shared,
        })
    }

    /// Load a detected layer's tensors from a checkpoint (or any tensor reader) onto `device`.
    pub fn load(reader: &dyn TensorReader, names: &MoeTensors, device: &Device) -> Result<Self> {
        let list = tensor_names(names);
        let vb = var_builder(reader, &list, device)?;
        MoeLayer::new(MoeConfig::of(names), &vb, names)
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// DTop-p's learned scale tau, if the layer has one.
    pub fn scale(&self) -> Option<f32> {
        self.scale
    }

    fn input(&self, hidden: &Tensor) -> Result<Tensor> {
        let dims = hidden.dims();
        if dims.len() != 2 || dims[1] != self.cfg.d_model {
            return Err(Error::input(format!(
                "hidden states have shape {dims:?}; the router needs [N, {}]",
                self.cfg.d_model
            )));
        }
        hidden
            .to_dtype(DType::F32)
            .and_then(|t| t.to_device(&self.device))
            .map_err(ce)
    }

    /// Router logits [N, E] for `hidden` [N, d], flattened row-major.
    pub fn logits(&self, hidden: &Tensor) -> Result<Vec<f32>> {
        let x = self.input(hidden)?;
        x.matmul(&self.gate.t().map_err(ce)?)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(ce)
    }

    /// Route `hidden` [N, d].
    pub fn route(&self, hidden: &Tensor, routing: Routing) -> Result<Routed> {
        let logits = self.logits(hidden)?;
        route_logits(&logits, self.cfg.n_experts, routing, self.scale)
    }

    /// Route and apply the layer: returns the output [N, d] and the decisions.
    pub fn forward(&self, hidden: &Tensor, routing: Routing) -> Result<(Tensor, Routed)> {
        let routed = self.route(hidden, routing)?;
        let backend = if self.device.is_cpu() {
            Backend::Kernels
        } else {
            Backend::Candle
        };
        let out = self.forward_routed(hidden, &routed, backend)?;
        Ok((out, routed))
    }

    /// Apply the layer with decisions made beforehand (by [`MoeLayer::route`]).
    pub fn forward_routed(
        &self,
        hidden: &Tensor,
        routed: &Routed,
        backend: Backend,
    ) -> Result<Tensor> {
        let x = self.input(hidden)?;
        let (n, d) = (x.dims()[0], self.cfg.d_model);
        if routed.n_tokens != n || routed.n_experts != self.cfg.n_experts {
            return Err(Error::Other(format!(
                "MoE layer: decisions for {} tokens x {} experts do not fit {n} tokens x {} experts",
                routed.n_tokens, routed.n_experts, self.cfg.n_experts
            )));
        }
        let mut out = Tensor::zeros((n, d), DType::F32, &self.device).map_err(ce)?;
        for s in &self.shared {
            out = (out + s.forward(&x).map_err(ce)?).map_err(ce)?;
        }
        let groups = routed.by_expert();
        match backend {
            Backend::Kernels => {
                let xs = x
                    .flatten_all()
                    .and_then(|t| t.to_vec1::<f32>())
                    .map_err(ce)?;
                let mut acc = out
                    .flatten_all()
                    .and_then(|t| t.to_vec1::<f32>())
                    .map_err(ce)?;
                let mut rows = Vec::new();
                for (expert, (tokens, weights)) in self.experts.iter().zip(&groups) {
                    if tokens.is_empty() {
                        continue;
                    }
                    rows.clear();
                    for &t in tokens {
                        let t = t as usize;
                        rows.extend_from_slice(&xs[t * d..(t + 1) * d]);
                    }
                    let g =
                        Tensor::from_slice(&rows, (tokens.len(), d), &self.device).map_err(ce)?;
                    let y = expert
                        .forward(&g)
                        .and_then(|t| t.flatten_all())
                        .and_then(|t| t.to_vec1::<f32>())
                        .map_err(ce)?;
                    for (i, (&t, &w)) in tokens.iter().zip(weights).enumerate() {
                        let dst = &mut acc[t as usize * d..(t as usize + 1) * d];
                        for (o, &v) in dst.iter_mut().zip(&y[i * d..(i + 1) * d]) {
                            *o += w * v;
                        }
                    }
                }
                Tensor::from_vec(acc, (n, d), &self.device).map_err(ce)
            }
            Backend::Candle | Backend::Bucketed => {
                for (expert, (tokens, weights)) in self.experts.iter().zip(&groups) {
                    if tokens.is_empty() {
                        continue;
                    }
                    let k = tokens.len();
                    let idx = Tensor::from_slice(tokens, k, &self.device).map_err(ce)?;
                    let w = Tensor::from_slice(weights, (k, 1), &self.device).map_err(ce)?;
                    let y = x
                        .index_select(&idx, 0)
                        .and_then(|g| expert.forward(&g))
                        .and_then(|y| y.broadcast_mul(&w))
                        .map_err(ce)?;
                    out = out.index_add(&idx, &y, 0).map_err(ce)?;
                }
                Ok(out)
            }
        }
    }
}

/// Every tensor name of a layer, for [`var_builder`].
pub fn tensor_names(t: &MoeTensors) -> Vec<&str> {
    let mut names = vec![t.gate.as_str()];
    names.extend(t.scale.as_deref());
    for e in t.experts.iter().chain(&t.shared) {
        names.extend([e.w1.as_str(), e.w2.as_str(), e.w3.as_str()]);
    }
    names
}
