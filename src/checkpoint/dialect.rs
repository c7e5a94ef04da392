//! Finding the L3 layers in a checkpoint and the dialect they follow.
//!
//! The two dialects of the method notes are recognised from tensor names under any prefix:
//! `paper` modules own `w_k.weight` and `w_v.weight`, `nanochat` modules own a tied
//! `kv_weight` (with a `bounds` buffer, and one `l3_lambdas` vector beside the `l3_layers`;
//! a nanochat model trained with `--l3-no-lambda` has none and adds its output unscaled).
//! Checkpoints with other names are described by a `--map` TOML file, validated like any
//! input. Every tensor the later stages decode as floats is checked to be a float here, so a
//! wrong dtype is refused up front with the tensor's name.

use super::map::MapFile;
use crate::checkpoint::{Checkpoint, TensorInfo};
use crate::formats::semantics::{Residual, Semantics};
use crate::util::error::{Error, Result};
use crate::util::fs::{limits, read_small};
use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Dialect {
    /// Separate `w_k` / `w_v`, RMSNorms with weights (eps 1e-6), output replaces the hidden state.
    Paper,
    /// Tied `kv_weight`, weightless RMSNorm (eps = f32 epsilon), output added as lambda x delta
    /// (or as delta when the checkpoint has no `l3_lambdas`).
    Nanochat,
}

impl Dialect {
    pub fn name(self) -> &'static str {
        match self {
            Dialect::Paper => "paper",
            Dialect::Nanochat => "nanochat",
        }
    }

    pub fn semantics(self) -> Semantics {
        match self {
            Dialect::Paper => Semantics {
                tied: false,
                norm_weights: true,
                norm_eps: 1e-6,
                score_scale: 1.0,
                key_norm: false,
                residual: Residual::Replace,
            },
            Dialect::Nanochat => Semantics {
                tied: true,
                norm_weights: false,
                norm_eps: f32::EPSILON as f64,
                score_scale: 1.0,
                key_norm: false,
                residual: Residual::AddLambda,
            },
        }
    }
}

/// The tensors of one L3 layer in a source checkpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerTensors {
    pub name: String,
    pub layer_id: Option<u32>,
    pub keys: String,
    pub values: Option<String>,
    pub bounds: Option<String>,
    pub w_up: String,
    pub w_mix: String,
    pub norm_in: Option<String>,
    pub norm_out: Option<String>,
    pub lambda: Option<(String, usize)>,
    pub d_in: u64,
    pub d_emb: u64,
    pub d_up: u64,
    pub n_emb: u64,
}

/// What detection found.
#[derive(Clone, Debug)]
pub struct Detected {
    pub dialect: String,
    pub semantics: Semantics,
    pub layers: Vec<LayerTensors>,
}

pub(crate) fn last_integer(name: &str) -> Option<u32> {
    name.split('.').rev().find_map(|part| part.parse().ok())
}

/// Detect the L3 layers of `ckpt`.
pub fn detect(
    ckpt: &Checkpoint,
    dialect: Option<Dialect>,
    map: Option<(&Path, &MapFile)>,
) -> Result<Detected> {
    if let Some((map_path, map)) = map {
        return from_map(ckpt, map_path, map);
    }
    let names: Vec<&str> = ckpt.tensors().iter().map(|t| t.name.as_str()).collect();
    let paper: Vec<String> = names
        .iter()
        .filter_map(|n| n.strip_suffix(".w_k.weight"))
        .map(str::to_string)
        .collect();
    let nanochat: Vec<String> = names
        .iter()
        .filter_map(|n| n.strip_suffix(".kv_weight"))
        .map(str::to_string)
        .collect();
    let chosen = match dialect {
        Some(d) => d,
        None => match (paper.is_empty(), nanochat.is_empty()) {
            (false, true) => Dialect::Paper,
            (true, false) => Dialect::Nanochat,
            (false, false) => {
                return Err(Error::in_file(
                    ckpt.path(),
                    "holds both paper-style (w_k/w_v) and nanochat-style (kv_weight) L3 tensors; choose with --dialect",
                ))
            }
            (true, true) => {
                return Err(Error::in_file(
                    ckpt.path(),
                    "no L3 layers found (looked for *.w_k.weight and *.kv_weight); describe the tensors with --map FILE",
                ))
            }
        },
    };
    let prefixes = match chosen {
        Dialect::Paper => paper,
        Dialect::Nanochat => nanochat,
    };
    if prefixes.is_empty() {
        return Err(Error::in_file(
            ckpt.path(),
            format!("no {} L3 layers found", chosen.name()),
        ));
    }
    let mut layers = Vec::new();
    for prefix in &prefixes {
        let layer = match chosen {
            Dialect::Paper => LayerNames {
                name: prefix.clone(),
                layer_id: last_integer(prefix),
                keys: format!("{prefix}.w_k.weight"),
                values: Some(format!("{prefix}.w_v.weight")),
                bounds: ckpt
                    .get(&format!("{prefix}.bounds"))
                    .map(|t| t.name.clone()),
                w_up: format!("{prefix}.w_up.weight"),
                w_mix: format!("{prefix}.w_mix.weight"),
                norm_in: Some(format!("{prefix}.norm_in.weight")),
                norm_out: Some(format!("{prefix}.norm_out.weight")),
            },
            Dialect::Nanochat => LayerNames {
                name: prefix.clone(),
                layer_id: last_integer(prefix),
                keys: format!("{prefix}.kv_weight"),
                values: None,
                bounds: ckpt
                    .get(&format!("{prefix}.bounds"))
                    .map(|t| t.name.clone()),
                w_up: format!("{prefix}.w_up.weight"),
                w_mix: format!("{prefix}.w_mix.weight"),
                norm_in: None,
                norm_out: None,
            },
        };
        layers.push(layer);
    }
    // Decoder order: by layer id, then name.
    layers.sort_by(|a, b| a.layer_id.cmp(&b.layer_id).then(a.name.cmp(&b.name)));
    let mut semantics = chosen.semantics();
    let lambdas = match chosen {
        Dialect::Nanochat => {
            // `l3_lambdas` sits beside the `l3_layers` container.
            let outer = layers[0]
                .name
                .rfind("l3_layers.")
                .map(|i| &layers[0].name[..i])
                .unwrap_or("");
            let want = format!("{outer}l3_lambdas");
            match ckpt.get(&want) {
                Some(t) => Some(t.name.clone()),
                None => {
                    no_lambdas(ckpt, &want)?;
                    semantics.residual = Residual::Add;
                    None
                }
            }
        }
        Dialect::Paper => None,
    };
    let layers = resolve(ckpt, layers, lambdas.as_deref(), &semantics)?;
    Ok(Detected {
        dialect: chosen.name().to_string(),
        semantics,
        layers,
    })
}

/// A nanochat checkpoint without `want` (its lambdas) was trained with `--l3-no-lambda`,
/// unless something says otherwise: a lambdas tensor under another prefix, or the run's
/// `meta_*.json` recording `l3_lambda: true`. Then the model would be misdescribed.
fn no_lambdas(ckpt: &Checkpoint, want: &str) -> Result<()> {
    if let Some(other) = ckpt.names().find(|n| n.ends_with("l3_lambdas")) {
        return Err(Error::in_file(
            ckpt.path(),
            format!(
                "the L3 lambdas are expected at {want}, but the checkpoint holds {other}; \
                 describe the layers with --map FILE"
            ),
        ));
    }
    for name in ckpt.folder_names()? {
        if !(name.starts_with("meta_") && name.ends_with(".json")) {
            continue;
        }
        let Some(path) = ckpt.companion(&name)? else {
            continue;
        };
        let text = read_small(&path, limits::CONFIG, "a training metadata file")?;
        let meta: serde_json::Value = serde_json::from_slice(&text)
            .map_err(|e| Error::in_file(&path, format!("is not JSON: {e}")))?;
        if meta["model_config"]["l3_lambda"] == serde_json::Value::Bool(true) {
            return Err(Error::in_file(
                ckpt.path(),
                format!(
                    "{} says the model was trained with L3 lambdas (model_config.l3_lambda is \
                     true), but the checkpoint has no {want}",
                    path.display()
                ),
            ));
        }
    }
    Ok(())
}

fn from_map(ckpt: &Checkpoint, path: &Path, map: &MapFile) -> Result<Detected> {
    let bad = |msg: String| Error::in_file(path, msg);
    let base = match map.dialect.as_deref() {
        None | Some("paper") => Dialect::Paper,
        Some("nanochat") => Dialect::Nanochat,
        Some(other) => return Err(bad(format!("dialect {other:?} is not paper or nanochat"))),
    };
    let mut semantics = base.semantics();
    if let Some(v) = map.tied {
        semantics.tied = v;
    }
    if let Some(v) = map.norm_weights {
        semantics.norm_weights = v;
    }
    if let Some(v) = map.norm_eps {
        semantics.norm_eps = v;
    }
    if let Some(v) = map.score_scale {
        semantics.score_scale = v;
    }
    if let Some(v) = map.key_norm {
        semantics.key_norm = v;
    }
    for (key, v) in [
        ("norm_eps", semantics.norm_eps),
        ("score_scale", semantics.score_scale),
    ] {
        if !(v.is_finite() && v > 0.0) {
            return Err(bad(format!(
                "{key} = {v} must be a finite number greater than 0"
            )));
        }
    }
    if let Some(r) = map.residual.as_deref() {
        semantics.residual = match r {
            "replace" => Residual::Replace,
            "add_lambda" => Residual::AddLambda,
            "add" => Residual::Add,
            other => {
                return Err(bad(format!(
                    "residual {other:?} is not replace, add_lambda or add"
                )))
            }
        };
    }
    match (semantics.residual, &map.lambdas) {
        (Residual::AddLambda, None) => {
            return Err(bad(
                "residual add_lambda needs lambdas = \"TENSOR\" (one value per layer); a model \
                 trained without lambdas has residual = \"add\""
                    .into(),
            ))
        }
        (Residual::Replace | Residual::Add, Some(l)) => {
            return Err(bad(format!(
                "lambdas = {l:?} is given, but residual {} uses no lambdas",
                semantics.residual.name()
            )))
        }
        _ => {}
    }
    if map.layers.is_empty() {
        return Err(bad("the map names no layers".into()));
    }
    let mut names = std::collections::BTreeSet::new();
    let mut ids = std::collections::BTreeMap::new();
    let mut layers = Vec::with_capacity(map.layers.len());
    for (i, l) in map.layers.iter().enumerate() {
        let name = l.name.clone().unwrap_or_else(|| {
            l.keys
                .rsplit_once('.')
                .map(|(p, _)| p.to_string())
                .unwrap_or_else(|| l.keys.clone())
        });
        let which = format!("layer {} ({name})", i + 1);
        if name.is_empty() {
            return Err(bad(format!("layer {} has an empty name", i + 1)));
        }
        if !names.insert(name.clone()) {
            return Err(bad(format!(
                "two layers are named {name}; layer names must be unique"
            )));
        }
        let layer_id = l.id.or_else(|| last_integer(&name));
        if let Some(id) = l.id {
            if let Some(other) = ids.insert(id, name.clone()) {
                return Err(bad(format!(
                    "layers {other} and {name} both have id {id}; ids must be unique"
                )));
            }
        }
        if semantics.tied && l.values.is_some() {
            return Err(bad(format!(
                "{which} names values, but the layers are tied (K = V); drop values or set \
                 tied = false"
            )));
        }
        if !semantics.norm_weights && (l.norm_in.is_some() || l.norm_out.is_some()) {
            return Err(bad(format!(
                "{which} names norm weights, but norm_weights is false; drop them or set \
                 norm_weights = true"
            )));
        }
        layers.push(LayerNames {
            layer_id,
            name,
            keys: l.keys.clone(),
            values: l.values.clone(),
            bounds: l.bounds.clone(),
            w_up: l.w_up.clone(),
            w_mix: l.w_mix.clone(),
            norm_in: l.norm_in.clone(),
            norm_out: l.norm_out.clone(),
        });
    }
    // Each tensor has one role in one layer (a shared bounds tensor, one allocation for
    // every layer, is the exception).
    let mut owner: std::collections::BTreeMap<&str, String> = std::collections::BTreeMap::new();
    if let Some(l) = &map.lambdas {
        owner.insert(l, "the lambdas".into());
    }
    for l in &layers {
        let roles = [
            ("keys", Some(&l.keys)),
            ("values", l.values.as_ref()),
            ("w_up", Some(&l.w_up)),
            ("w_mix", Some(&l.w_mix)),
            ("norm_in", l.norm_in.as_ref()),
            ("norm_out", l.norm_out.as_ref()),
        ];
        for (role, t) in roles {
            let Some(t) = t else { continue };
            let this = format!("{role} of layer {}", l.name);
            if let Some(prev) = owner.insert(t, this.clone()) {
                return Err(bad(format!(
                    "tensor {t} is used twice: as {prev} and as {this}"
                )));
            }
        }
    }
    let layers = resolve(ckpt, layers, map.lambdas.as_deref(), &semantics)
        .map_err(|e| bad(format!("does not match the checkpoint: {e}")))?;
    Ok(Detected {
        dialect: format!("map:{}", base.name()),
        semantics,
        layers,
    })
}

struct LayerNames {
    name: String,
    layer_id: Option<u32>,
    keys: String,
    values: Option<String>,
    bounds: Option<String>,
    w_up: String,
    w_mix: String,
    norm_in: Option<String>,
    norm_out: Option<String>,
}

/// Look every tensor up and check the shapes agree with each other.
fn resolve(
    ckpt: &Checkpoint,
    layers: Vec<LayerNames>,
    lambdas: Option<&str>,
    semantics: &Semantics,
) -> Result<Vec<LayerTensors>> {
    let path = ckpt.path();
    let get = |name: &str, layer: &str| -> Result<&TensorInfo> {
        ckpt.get(name).ok_or_else(|| {
            Error::in_file(path, format!("missing tensor {name} (L3 layer {layer})"))
        })
    };
    let shape_err = |t: &TensorInfo, want: String| {
        Error::in_file(
            path,
            format!("tensor {} has shape {:?}, expected {want}", t.name, t.shape),
        )
    };
    // Everything pack, verify and the forward pass decode as floats.
    let float = |t: &TensorInfo, role: &str| -> Result<()> {
        if crate::formats::dtype::float_size(t.dtype).is_none() {
            return Err(Error::in_file(
                path,
                format!(
                    "tensor {} ({role}) has dtype {:?}; it must be a float tensor (F32, BF16, \
                     F16 or F64)",
                    t.name, t.dtype
                ),
            ));
        }
        Ok(())
    };
    let lambda_tensor = match lambdas {
        Some(name) => Some(get(name, "lambdas")?),
        None => None,
    };
    if semantics.residual == Residual::AddLambda && lambda_tensor.is_none() {
        return Err(Error::in_file(
            path,
            "the add-lambda residual needs the l3_lambdas tensor, which is missing",
        ));
    }
    if let Some(t) = lambda_tensor {
        float(t, "the L3 lambdas")?;
        if t.shape.len() != 1 || t.shape[0] != layers.len() {
            return Err(shape_err(
                t,
                format!("[{}] (one lambda per L3 layer)", layers.len()),
            ));
        }
    }
    let mut out = Vec::new();
    for (index, l) in layers.into_iter().enumerate() {
        let keys = get(&l.keys, &l.name)?;
        float(keys, "an L3 table")?;
        if keys.shape.len() != 2 || keys.shape.contains(&0) {
            return Err(shape_err(keys, "[n_emb, d_in], both at least 1".into()));
        }
        let (n_emb, d_in) = (keys.shape[0] as u64, keys.shape[1] as u64);
        let d_emb = match &l.values {
            Some(v) => {
                let values = get(v, &l.name)?;
                float(values, "an L3 table")?;
                if values.shape.len() != 2
                    || values.shape[0] as u64 != n_emb
                    || values.shape[1] == 0
                {
                    return Err(shape_err(
                        values,
                        format!("[{n_emb}, d_emb] (as many rows as {})", keys.name),
                    ));
                }
                if values.dtype != keys.dtype {
                    return Err(Error::in_file(
                        path,
                        format!(
                            "{} is {:?} but {} is {:?}; keys and values must share a dtype",
                            values.name, values.dtype, keys.name, keys.dtype
                        ),
                    ));
                }
                values.shape[1] as u64
            }
            None => {
                if !semantics.tied {
                    return Err(Error::in_file(
                        path,
                        format!("L3 layer {} has no values tensor and is not tied", l.name),
                    ));
                }
                d_in
            }
        };
        let w_up = get(&l.w_up, &l.name)?;
        float(w_up, "W_up")?;
        if w_up.shape.len() != 2 || w_up.shape[1] as u64 != d_emb || w_up.shape[0] == 0 {
            return Err(shape_err(w_up, format!("[d_up, {d_emb}], d_up at least 1")));
        }
        let d_up = w_up.shape[0] as u64;
        let w_mix = get(&l.w_mix, &l.name)?;
        float(w_mix, "W_mix")?;
        if w_mix.shape != [d_in as usize, (d_up + d_in) as usize] {
            return Err(shape_err(
                w_mix,
                format!("[{d_in}, {}] (d_in, d_up + d_in)", d_up + d_in),
            ));
        }
        let check_norm = |name: &Option<String>, width: u64| -> Result<Option<String>> {
            match name {
                Some(n) if semantics.norm_weights => {
                    let t = get(n, &l.name)?;
                    float(t, "an RMSNorm weight")?;
                    if t.shape != [width as usize] {
                        return Err(shape_err(t, format!("[{width}]")));
                    }
                    Ok(Some(n.clone()))
                }
                None if semantics.norm_weights => Err(Error::in_file(
                    path,
                    format!("L3 layer {} needs norm weights (norm_in, norm_out)", l.name),
                )),
                _ => Ok(None),
            }
        };
        let norm_in = check_norm(&l.norm_in, d_in)?;
        let norm_out = check_norm(&l.norm_out, d_up)?;
        if let Some(b) = &l.bounds {
            let t = get(b, &l.name)?;
            if t.shape.len() != 1 {
                return Err(shape_err(t, "[vocab + 1]".into()));
            }
            if !matches!(t.dtype, safetensors::Dtype::I64 | safetensors::Dtype::I32) {
                return Err(Error::in_file(
                    path,
                    format!(
                        "bounds tensor {} has dtype {:?}, expected I64 (or I32)",
                        t.name, t.dtype
                    ),
                ));
            }
        }
        out.push(LayerTensors {
            name: l.name,
            layer_id: l.layer_id,
            keys: l.keys,
            values: l.values,
            bounds: l.bounds,
            w_up: l.w_up,
            w_mix: l.w_mix,
            norm_in,
            norm_out,
            lambda: lambda_tensor.map(|t| (t.name.clone(), index)),
            d_in,
            d_emb,
            d_up,
            n_emb,
        });
    }
    Ok(out)
}
