//! Finding the MoE layers of a checkpoint.
//!
//! Two naming schemes are recognised under any prefix, from the expert tensors beside a
//! router `<prefix>.gate.weight` [E, d]:
//!
//! - Mixtral: `<prefix>.experts.{j}.w1/w2/w3.weight` (and `shared_experts.{j}.w1/w2/w3`);
//! - OLMoE / Qwen-MoE: `<prefix>.experts.{j}.gate_proj/up_proj/down_proj.weight` (W1, W3,
//!   W2; and `shared_experts.{j}.…`).
//!
//! DTop-p's learned scale is `<prefix>.gate.scale` (shape [] or [1]). Other names come
//! through a `--map` TOML file (`[[moe]]` tables, format in `docs/moe.md`). Every shape is
//! checked here against the router's, so a layer that reaches the model is consistent.

use super::dialect::last_integer;
use super::{Checkpoint, TensorInfo};
use crate::util::error::{Error, Result};
use crate::util::fs::{limits, read_small_text};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The most experts a layer may have (as the router accepts).
pub const MAX_EXPERTS: usize = 4096;
/// The most shared experts looked for per layer.
const MAX_SHARED: usize = 64;

/// The three matrices of one SwiGLU expert: `E(x) = W2 (silu(W1 x) * (W3 x))`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ExpertTensors {
    /// [H, d]
    pub w1: String,
    /// [d, H]
    pub w2: String,
    /// [H, d]
    pub w3: String,
}

/// The tensors and shape of one MoE layer.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MoeTensors {
    pub name: String,
    pub layer_id: Option<u32>,
    pub scheme: String,
    /// The router [E, d].
    pub gate: String,
    /// DTop-p's scale tau, when the checkpoint has one.
    pub scale: Option<String>,
    pub experts: Vec<ExpertTensors>,
    pub shared: Vec<ExpertTensors>,
    pub d_model: usize,
    pub n_experts: usize,
    pub expert_hidden: usize,
    /// The shared experts' hidden width (None without shared experts).
    pub shared_hidden: Option<usize>,
}

/// What MoE detection found.
#[derive(Clone, Debug, Serialize)]
pub struct MoeDetected {
    /// `mixtral`, `olmoe`, `map`, or several joined with `+`.
    pub scheme: String,
    pub layers: Vec<MoeTensors>,
}

/// A `--map` file for MoE layers: one `[[moe]]` table per layer. The expert names are
/// templates in which `{j}` stands for the expert index.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoeMapFile {
    pub moe: Vec<MoeMapLayer>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoeMapLayer {
    /// The layer's name (default: the router's name without its last two parts).
    pub name: Option<String>,
    pub gate: String,
    pub scale: Option<String>,
    pub w1: String,
    pub w2: String,
    pub w3: String,
    pub shared_w1: Option<String>,
    pub shared_w2: Option<String>,
    pub shared_w3: Option<String>,
}

impl MoeMapFile {
    pub fn read(path: &Path) -> Result<MoeMapFile> {
        let text = read_small_text(path, limits::MAP, "a map file")?;
        toml::from_str(&text)
            .map_err(|e| Error::in_file(path, format!("not a valid MoE map file: {e}")))
    }
}

struct Scheme {
    name: &'static str,
    /// Suffixes of W1, W2, W3 under `experts.{j}.`.
    parts: [&'static str; 3],
}

const SCHEMES: [Scheme; 2] = [
    Scheme {
        name: "mixtral",
        parts: ["w1.weight", "w2.weight", "w3.weight"],
    },
    Scheme {
        name: "olmoe",
        parts: ["gate_proj.weight", "down_proj.weight", "up_proj.weight"],
    },
];

fn template(t: &str, j: usize) -> String {
    t.replace("{j}", &j.to_string())
}

/// Detect the MoE layers of `ckpt` by scheme, or through the `--map` file `map`.
pub fn detect_moe(ckpt: &Checkpoint, map: Option<&Path>) -> Result<MoeDetected> {
    let mut layers = Vec::new();
    let mut schemes: Vec<&str> = Vec::new();
    match map {
        Some(path) => {
            let m = MoeMapFile::read(path)?;
            if m.moe.is_empty() {
                return Err(Error::in_file(path, "the map names no [[moe]] layers"));
            }
            for (i, l) in m.moe.iter().enumerate() {
                let bad = |msg: String| Error::in_file(path, format!("[[moe]] {}: {msg}", i + 1));
                for (key, t) in [("w1", &l.w1), ("w2", &l.w2), ("w3", &l.w3)] {
                    if !t.contains("{j}") {
                        return Err(bad(format!(
                            "{key} = {t:?} has no {{j}} for the expert index"
                        )));
                    }
                }
                let shared = match (&l.shared_w1, &l.shared_w2, &l.shared_w3) {
                    (Some(a), Some(b), Some(c)) => Some([a.as_str(), b.as_str(), c.as_str()]),
                    (None, None, None) => None,
                    _ => {
                        return Err(bad(
                            "shared_w1, shared_w2 and shared_w3 go together".to_string()
                        ))
                    }
                };
                let name = l.name.clone().unwrap_or_else(|| {
                    let mut parts: Vec<&str> = l.gate.split('.').collect();
                    parts.truncate(parts.len().saturating_sub(2));
                    if parts.is_empty() {
                        l.gate.clone()
                    } else {
                        parts.join(".")
                    }
                });
                if layers.iter().any(|x: &MoeTensors| x.name == name) {
                    return Err(bad(format!("a second layer is named {name}")));
                }
                let layer = build(
                    ckpt,
                    &name,
                    "map",
                    &l.gate,
                    l.scale.as_deref(),
                    [&l.w1, &l.w2, &l.w3],
                    shared,
                )
                .map_err(|e| match e {
                    Error::Input(m) => Error::Input(format!("{} (map {})", m, path.display())),
                    other => other,
                })?;
                layers.push(layer);
            }
            schemes.push("map");
        }
        None => {
            let mut prefixes: Vec<&str> = ckpt
                .names()
                .filter_map(|n| n.strip_suffix(".gate.weight"))
                .collect();
            prefixes.sort_unstable();
            for prefix in prefixes {
                let Some(scheme) = SCHEMES.iter().find(|s| {
                    ckpt.get(&format!("{prefix}.experts.0.{}", s.parts[0]))
                        .is_some()
                }) else {
                    continue;
                };
                let t = |p: &str| format!("{prefix}.experts.{{j}}.{p}");
                let s = |p: &str| format!("{prefix}.shared_experts.{{j}}.{p}");
                let experts = [t(scheme.parts[0]), t(scheme.parts[1]), t(scheme.parts[2])];
                let shared = [s(scheme.parts[0]), s(scheme.parts[1]), s(scheme.parts[2])];
                let scale = format!("{prefix}.gate.scale");
                let layer = build(
                    ckpt,
                    prefix,
                    scheme.name,
                    &format!("{prefix}.gate.weight"),
                    ckpt.get(&scale).map(|_| scale.as_str()),
                    [&experts[0], &experts[1], &experts[2]],
                    Some([&shared[0], &shared[1], &shared[2]]),
                )?;
                if !schemes.contains(&scheme.name) {
                    schemes.push(scheme.name);
                }
                layers.push(layer);
            }
            if layers.is_empty() {
                return Err(Error::in_file(
                    ckpt.path(),
                    "no MoE layers found (looked for *.gate.weight beside \
                     experts.{j}.w1/w2/w3.weight (Mixtral) or \
                     experts.{j}.gate_proj/up_proj/down_proj.weight (OLMoE, Qwen-MoE)); \
                     describe the tensors with --map FILE",
                ));
            }
        }
    }
    // Decoder order: by layer id, then name.
    layers.sort_by(|a, b| a.layer_id.cmp(&b.layer_id).then(a.name.cmp(&b.name)));
    Ok(MoeDetected {
        scheme: schemes.join("+"),
        layers,
    })
}

fn float_tensor<'a>(ckpt: &'a Checkpoint, name: &str, what: &str) -> Result<&'a TensorInfo> {
    let t = ckpt
        .get(name)
        .ok_or_else(|| Error::in_file(ckpt.path(), format!("missing {what} tensor {name}")))?;
    t.float_dtype()?;
    Ok(t)
}

fn shape_is(ckpt: &Checkpoint, t: &TensorInfo, want: [usize; 2], why: &str) -> Result<()> {
    if t.shape != want {
        return Err(Error::in_file(
            ckpt.path(),
            format!(
                "tensor {} has shape {:?}; expected {want:?} ({why})",
                t.name, t.shape
            ),
        ));
    }
    Ok(())
}

/// Read the experts named by `names` (templates) for j = 0..count, checking that they are
/// SwiGLU experts of width d sharing one hidden width; returns them and that width.
fn experts(
    ckpt: &Checkpoint,
    layer: &str,
    names: [&str; 3],
    count: usize,
    d: usize,
    what: &str,
) -> Result<(Vec<ExpertTensors>, usize)> {
    let mut out = Vec::with_capacity(count);
    let mut hidden = 0;
    for j in 0..count {
        let [n1, n2, n3] = names.map(|t| template(t, j));
        let w1 = float_tensor(ckpt, &n1, what)?;
        let w2 = float_tensor(ckpt, &n2, what)?;
        let w3 = float_tensor(ckpt, &n3, what)?;
        if j == 0 {
            hidden = match w1.shape.as_slice() {
                [h, _] if *h > 0 => *h,
                s => {
                    return Err(Error::in_file(
                        ckpt.path(),
                        format!("tensor {n1} has shape {s:?}; expected [H, {d}] with H > 0"),
                    ))
                }
            };
        }
        let why = format!("{what} {j} of MoE layer {layer}: W1, W3 [H, d], W2 [d, H], with d {d} from the router and H {hidden} from the first {what}");
        shape_is(ckpt, w1, [hidden, d], &why)?;
        shape_is(ckpt, w3, [hidden, d], &why)?;
        shape_is(ckpt, w2, [d, hidden], &why)?;
        out.push(ExpertTensors {
            w1: n1,
            w2: n2,
            w3: n3,
        });
    }
    Ok((out, hidden))
}

#[allow(clippy::too_many_arguments)]
fn build(
    ckpt: &Checkpoint,
    name: &str,
    scheme: &str,
    gate: &str,
    scale: Option<&str>,
    routed: [&str; 3],
    shared: Option<[&str; 3]>,
) -> Result<MoeTensors> {
    let g = float_tensor(ckpt, gate, "router")?;
    let (e, d) = match g.shape.as_slice() {
        [e, d] if (1..=MAX_EXPERTS).contains(e) && *d > 0 => (*e, *d),
        s => {
            return Err(Error::in_file(
                ckpt.path(),
                format!(
                    "router {gate} has shape {s:?}; expected [E, d] with 1 <= E <= {MAX_EXPERTS} and d > 0"
                ),
            ))
        }
    };
    let beyond = template(routed[0], e);
    if ckpt.get(&beyond).is_some() {
        return Err(Error::in_file(
            ckpt.path(),
            format!(
                "MoE layer {name}: the router {gate} has {e} rows, but there is an expert {beyond}"
            ),
        ));
    }
    let (experts_list, hidden) = experts(ckpt, name, routed, e, d, "expert")?;
    let (shared_list, shared_hidden) = match shared {
        Some(names) => {
            let count = (0..MAX_SHARED)
                .take_while(|&j| ckpt.get(&template(names[0], j)).is_some())
                .count();
            let (list, h) = experts(ckpt, name, names, count, d, "shared expert")?;
            (list, (count > 0).then_some(h))
        }
        None => (Vec::new(), None),
    };
    let scale = match scale {
        Some(s) => {
            let t = ckpt.get(s).ok_or_else(|| {
                Error::in_file(
                    ckpt.path(),
                    format!("missing scale tensor {s} of MoE layer {name}"),
                )
            })?;
            t.float_dtype()?;
            if t.numel() != 1 || t.shape.len() > 1 {
                return Err(Error::in_file(
                    ckpt.path(),
                    format!(
                        "scale tensor {s} has shape {:?}; expected [] or [1]",
                        t.shape
                    ),
                ));
            }
            Some(s.to_string())
        }
        None => None,
    };
    Ok(MoeTensors {
        name: name.to_string(),
        layer_id: last_integer(name),
        scheme: scheme.to_string(),
        gate: gate.to_string(),
        scale,
        experts: experts_list,
        shared: shared_list,
        d_model: d,
        n_experts: e,
        expert_hidden: hidden,
        shared_hidden,
    })
}
