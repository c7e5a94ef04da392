//! Stage 4: run the reference forward pass on packed and source tables and compare them
//! (`l3kit verify`), or run it on user inputs (`l3kit forward`).

use crate::checkpoint::Checkpoint;
use crate::convert;
use crate::dialect::Dialect;
use crate::layout::{LayerParams, Residual, TableDtype};
use crate::model::{self, L3Config, L3Layer};
use crate::pack::inspect::{check_packed, PackedModel};
use crate::pack::{detect_source, resolve_bounds, CONFIG_FILE, INDEX_FILE};
use crate::profile::Profile;
use crate::store::{PackedStore, SourceTables, TableSource};
use crate::util::error::{Error, Result};
use crate::util::progress::Ui;
use crate::util::safetensors_file::{self as st, MappedSafetensors, TensorBytes};
use candle_core::{Device, Tensor};
use safetensors::Dtype;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One loaded L3 layer: dense parameters on a device plus a table source.
pub struct LoadedLayer {
    pub name: String,
    pub layer_id: Option<u32>,
    pub layer: L3Layer,
    pub tables: Arc<dyn TableSource>,
    pub n_emb: u64,
}

/// A model's L3 layers, from a packed folder or a source checkpoint.
pub struct LoadedModel {
    pub layers: Vec<LoadedLayer>,
    pub vocab: usize,
    /// The table dtype of a packed model; None for a source checkpoint.
    pub packed_dtype: Option<TableDtype>,
    pub source_dtype: Option<Dtype>,
}

/// Where a source checkpoint's details come from when it is not packed.
#[derive(Clone, Debug, Default)]
pub struct SourceOptions {
    pub dialect: Option<Dialect>,
    pub map: Option<PathBuf>,
    pub allocation: Option<PathBuf>,
}

/// Is `path` a packed l3kit folder?
pub fn is_packed(path: &Path) -> bool {
    path.join(INDEX_FILE).is_file()
        && std::fs::read_to_string(path.join(CONFIG_FILE))
            .map(|c| c.contains(crate::layout::PACKED_FORMAT))
            .unwrap_or(false)
}

pub fn load_packed(dir: &Path, device: &Device) -> Result<LoadedModel> {
    let model = PackedModel::open(dir)?;
    let c = &model.config;
    let mut layers = Vec::new();
    for (i, l) in c.layers.iter().enumerate() {
        let cfg = L3Config {
            d_in: l.d_in as usize,
            d_emb: l.d_emb as usize,
            d_up: l.d_up as usize,
            semantics: c.semantics.clone(),
            lambda: l.lambda.map(|v| v as f32),
        };
        let vb = model::var_builder(&model.shards, &model::param_names(&l.params), device)?;
        layers.push(LoadedLayer {
            name: l.name.clone(),
            layer_id: l.layer_id,
            layer: L3Layer::new(cfg, &vb, &l.params)?,
            tables: Arc::new(PackedStore::open(&model, i)?),
            n_emb: l.n_emb,
        });
    }
    Ok(LoadedModel {
        layers,
        vocab: c.vocab_size as usize,
        packed_dtype: Some(c.dtype),
        source_dtype: None,
    })
}

pub fn load_source(path: &Path, opts: &SourceOptions, device: &Device) -> Result<LoadedModel> {
    let ckpt = Arc::new(Checkpoint::open(path)?);
    let (detected, alloc) = detect_source(
        &ckpt,
        opts.dialect,
        opts.map.as_deref(),
        opts.allocation.as_deref(),
    )?;
    let bounds = resolve_bounds(&ckpt, &detected, alloc.as_ref())?;
    let mut layers = Vec::new();
    let mut source_dtype = None;
    for (l, b) in detected.layers.iter().zip(bounds) {
        let lambda = match &l.lambda {
            Some((name, index)) => {
                let info = ckpt.get(name).expect("resolved by detect");
                let mut v = Vec::new();
                convert::decode_f32(info.dtype, &ckpt.read_all(name)?, &mut v);
                v.get(*index).copied()
            }
            None => None,
        };
        let cfg = L3Config {
            d_in: l.d_in as usize,
            d_emb: l.d_emb as usize,
            d_up: l.d_up as usize,
            semantics: detected.semantics.clone(),
            lambda,
        };
        let params = LayerParams {
            w_up: l.w_up.clone(),
            w_mix: l.w_mix.clone(),
            norm_in: l.norm_in.clone(),
            norm_out: l.norm_out.clone(),
            lambda: l.lambda.clone(),
        };
        let vb = model::var_builder(&ckpt, &model::param_names(&params), device)?;
        source_dtype = ckpt.get(&l.keys).map(|t| t.dtype);
        layers.push(LoadedLayer {
            name: l.name.clone(),
            layer_id: l.layer_id,
            layer: L3Layer::new(cfg, &vb, &params)?,
            tables: Arc::new(SourceTables::new(
                ckpt.clone(),
                &l.keys,
                l.values.as_deref(),
                b,
            )?),
            n_emb: l.n_emb,
        });
    }
    let vocab = layers[0].tables.vocab();
    Ok(LoadedModel {
        layers,
        vocab,
        packed_dtype: None,
        source_dtype,
    })
}

/// Load a packed folder or a source checkpoint, whichever `path` is.
pub fn load(path: &Path, opts: &SourceOptions, device: &Device) -> Result<LoadedModel> {
    if is_packed(path) {
        load_packed(path, device)
    } else {
        load_source(path, opts, device)
    }
}

/// Inputs for a forward: token ids and, per layer, hidden states.
pub struct Inputs {
    pub token_ids: Vec<u32>,
    /// Hidden states shared by every layer, or per layer name.
    pub shared: Option<(Vec<f32>, usize)>,
    pub per_layer: BTreeMap<String, (Vec<f32>, usize)>,
    pub description: String,
}

impl Inputs {
    /// Read `token_ids` and `hidden` / `hidden.<layer>` from a safetensors file.
    pub fn read(path: &Path) -> Result<Inputs> {
        let file = MappedSafetensors::open(path)?;
        let st = file.parse()?;
        let ids = st
            .tensor("token_ids")
            .map_err(|_| Error::in_file(path, "missing tensor token_ids"))?;
        if ids.shape().len() != 1 {
            return Err(Error::in_file(
                path,
                format!("token_ids has shape {:?}, expected [N]", ids.shape()),
            ));
        }
        let data = ids.data();
        let token_ids: Vec<u32> = match ids.dtype() {
            Dtype::I64 => data
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                .map(|v| u32::try_from(v).unwrap_or(u32::MAX))
                .collect(),
            Dtype::I32 => data
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes(c.try_into().expect("4 bytes")))
                .map(|v| u32::try_from(v).unwrap_or(u32::MAX))
                .collect(),
            Dtype::U32 => data
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
                .collect(),
            other => {
                return Err(Error::in_file(
                    path,
                    format!("token_ids has dtype {other:?}; expected I64, I32 or U32"),
                ))
            }
        };
        let n = token_ids.len();
        let mut shared = None;
        let mut per_layer = BTreeMap::new();
        for (name, view) in st.tensors() {
            let layer = if name == "hidden" {
                None
            } else if let Some(l) = name.strip_prefix("hidden.") {
                Some(l.to_string())
            } else {
                continue;
            };
            let shape = view.shape();
            if shape.len() != 2 || shape[0] != n || convert::float_size(view.dtype()).is_none() {
                return Err(Error::in_file(
                    path,
                    format!(
                        "{name} is {:?} {shape:?}; expected floats [{n}, d_in] (one row per token id)",
                        view.dtype()
                    ),
                ));
            }
            let mut values = Vec::with_capacity(shape[0] * shape[1]);
            convert::decode_f32(view.dtype(), view.data(), &mut values);
            match layer {
                None => shared = Some((values, shape[1])),
                Some(l) => {
                    per_layer.insert(l, (values, shape[1]));
                }
            }
        }
        if shared.is_none() && per_layer.is_empty() {
            return Err(Error::in_file(
                path,
                "holds no hidden states (tensor `hidden` or `hidden.<layer>`)",
            ));
        }
        Ok(Inputs {
            token_ids,
            shared,
            per_layer,
            description: format!("captured ({})", path.display()),
        })
    }

    /// Seeded random hidden states of unit RMS scale, with token ids drawn from a profile's
    /// unigram distribution (or uniformly).
    pub fn random(
        n: usize,
        d_in: usize,
        vocab: usize,
        profile: Option<&Profile>,
        seed: u64,
    ) -> Result<Inputs> {
        let mut rng = SplitMix(seed);
        let token_ids: Vec<u32> = match profile {
            Some(p) => {
                if p.meta.vocab_size as usize != vocab {
                    return Err(Error::input(format!(
                        "the profile's vocabulary ({}) differs from the model's ({vocab})",
                        p.meta.vocab_size
                    )));
                }
                let mut cumulative = Vec::with_capacity(vocab);
                let mut total = 0u64;
                for &c in &p.unigram {
                    total += c;
                    cumulative.push(total);
                }
                (0..n)
                    .map(|_| {
                        let r = rng.next() % total.max(1);
                        cumulative.partition_point(|&c| c <= r) as u32
                    })
                    .collect()
            }
            None => (0..n).map(|_| (rng.next() % vocab as u64) as u32).collect(),
        };
        let hidden: Vec<f32> = (0..n * d_in).map(|_| rng.normal()).collect();
        Ok(Inputs {
            token_ids,
            shared: Some((hidden, d_in)),
            per_layer: BTreeMap::new(),
            description: format!(
                "random (seed {seed}, tokens {})",
                if profile.is_some() {
                    "from the profile"
                } else {
                    "uniform"
                }
            ),
        })
    }

    /// The hidden states for a layer, by name or decoder id.
    pub fn hidden_for(&self, layer: &LoadedLayer) -> Result<(&[f32], usize)> {
        let by_id = layer.layer_id.map(|i| i.to_string());
        let found = self
            .per_layer
            .get(&layer.name)
            .or_else(|| by_id.as_ref().and_then(|i| self.per_layer.get(i)))
            .or(self.shared.as_ref());
        let (values, width) = found.ok_or_else(|| {
            Error::input(format!(
                "no hidden states for L3 layer {} (give `hidden` or `hidden.{}`)",
                layer.name, layer.name
            ))
        })?;
        if *width != layer.layer.cfg.d_in {
            return Err(Error::input(format!(
                "hidden states for L3 layer {} have width {width}; the layer's d_in is {}",
                layer.name, layer.layer.cfg.d_in
            )));
        }
        Ok((values, *width))
    }
}

/// SplitMix64 with a Box-Muller normal: reproducible on every platform.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f64 {
        ((self.next() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f32 {
        let (u, v) = (self.uniform(), self.uniform());
        ((-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()) as f32
    }
}

/// Run one layer on its inputs; the output [N, d_in] flattened.
pub fn run_layer(layer: &LoadedLayer, inputs: &Inputs, device: &Device) -> Result<Vec<f32>> {
    let (hidden, width) = inputs.hidden_for(layer)?;
    let n = inputs.token_ids.len();
    let x =
        Tensor::from_slice(hidden, (n, width), device).map_err(|e| Error::Other(e.to_string()))?;
    let y = layer
        .layer
        .forward(&x, &inputs.token_ids, layer.tables.as_ref())?;
    y.flatten_all()
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(|e| Error::Other(e.to_string()))
}

/// Read a float tensor of a safetensors file as f32 values (e.g. `output.<layer>`).
pub fn read_f32(path: &Path, name: &str) -> Result<Vec<f32>> {
    let file = MappedSafetensors::open(path)?;
    let st = file.parse()?;
    let view = st
        .tensor(name)
        .map_err(|_| Error::in_file(path, format!("missing tensor {name}")))?;
    if convert::float_size(view.dtype()).is_none() {
        return Err(Error::in_file(
            path,
            format!("{name} is not a float tensor"),
        ));
    }
    let mut values = Vec::new();
    convert::decode_f32(view.dtype(), view.data(), &mut values);
    Ok(values)
}

#[derive(Clone, Debug, Serialize)]
pub struct ForwardSummary {
    pub out: PathBuf,
    pub layers: Vec<String>,
    pub tokens: usize,
    pub device: String,
    pub seconds: f64,
}

/// `l3kit forward`: run every L3 layer on the inputs and write `output.<layer>` tensors.
pub fn forward_file(
    model_path: &Path,
    source: &SourceOptions,
    inputs_path: &Path,
    out: &Path,
    device: &Device,
) -> Result<ForwardSummary> {
    let started = std::time::Instant::now();
    let model = load(model_path, source, device)?;
    let inputs = Inputs::read(inputs_path)?;
    let mut tensors = Vec::new();
    for layer in &model.layers {
        let y = run_layer(layer, &inputs, device).map_err(|e| match e {
            Error::Input(m) => Error::Input(format!("{}: {m}", inputs_path.display())),
            other => other,
        })?;
        let bytes: Vec<u8> = y.iter().flat_map(|v| v.to_le_bytes()).collect();
        tensors.push(TensorBytes {
            name: format!("output.{}", layer.name),
            dtype: Dtype::F32,
            shape: vec![inputs.token_ids.len(), layer.layer.cfg.d_in],
            data: bytes.into(),
        });
    }
    let mut metadata = BTreeMap::new();
    metadata.insert("format".to_string(), "pt".to_string());
    metadata.insert("l3kit".to_string(), "forward outputs".to_string());
    st::write_file(out, &tensors, &metadata, 8)?;
    Ok(ForwardSummary {
        out: out.to_path_buf(),
        layers: model.layers.iter().map(|l| l.name.clone()).collect(),
        tokens: inputs.token_ids.len(),
        device: format!("{device:?}"),
        seconds: started.elapsed().as_secs_f64(),
    })
}

#[derive(Clone, Debug)]
pub struct VerifyOptions {
    pub source: PathBuf,
    pub packed: PathBuf,
    pub source_opts: SourceOptions,
    pub inputs: Option<PathBuf>,
    pub profile: Option<PathBuf>,
    pub tokens: usize,
    pub seed: u64,
    pub device: String,
    /// Override the dtype's relative-L2 tolerance.
    pub tolerance: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct LayerVerdict {
    pub name: String,
    pub max_abs_error: f64,
    pub relative_l2_error: f64,
    pub cosine_similarity: f64,
    pub worst_position: usize,
    pub worst_token: u32,
    pub tolerance: f64,
    pub passed: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct VerifyReport {
    pub source: PathBuf,
    pub packed: PathBuf,
    pub packed_dtype: TableDtype,
    pub device: String,
    pub device_note: Option<String>,
    pub files_hashed: usize,
    pub inputs: String,
    pub tokens: usize,
    pub layers: Vec<LayerVerdict>,
    pub passed: bool,
}

/// The relative L2 error allowed between source and packed outputs. A dtype that stores the
/// source's values exactly must agree to float rounding (the same f32 values go through the
/// same code); lossy dtypes get bounds a little above what their rounding produces on
/// unit-scale activations.
pub fn tolerance(packed: TableDtype, source: Option<Dtype>) -> f64 {
    let exact = matches!(
        (packed, source),
        (TableDtype::F32, _)
            | (TableDtype::Bf16, Some(Dtype::BF16))
            | (TableDtype::F16, Some(Dtype::F16))
    );
    if exact {
        return 1e-6;
    }
    match packed {
        TableDtype::F16 => 5e-3,
        TableDtype::Bf16 => 2e-2,
        TableDtype::Int8 => 5e-2,
        TableDtype::F32 => 1e-6,
    }
}

/// Compare two outputs: (max abs, relative L2, cosine, worst position).
pub fn compare(reference: &[f32], other: &[f32], width: usize) -> (f64, f64, f64, usize) {
    let (mut max_abs, mut err2, mut ref2, mut oth2, mut dot) = (0f64, 0f64, 0f64, 0f64, 0f64);
    let mut worst = (0usize, 0f64);
    for (i, (a, b)) in reference.iter().zip(other).enumerate() {
        let (a, b) = (*a as f64, *b as f64);
        let e = (a - b).abs();
        if e > max_abs || e.is_nan() {
            max_abs = if e.is_nan() { f64::INFINITY } else { e };
            worst = (i / width.max(1), e);
        }
        err2 += (a - b) * (a - b);
        ref2 += a * a;
        oth2 += b * b;
        dot += a * b;
    }
    let rel = if ref2 > 0.0 {
        (err2 / ref2).sqrt()
    } else {
        err2.sqrt()
    };
    let cos = if ref2 > 0.0 && oth2 > 0.0 {
        dot / (ref2.sqrt() * oth2.sqrt())
    } else {
        1.0
    };
    (
        max_abs,
        if rel.is_nan() { f64::INFINITY } else { rel },
        cos,
        worst.0,
    )
}

/// `l3kit verify`.
pub fn verify(opts: &VerifyOptions, ui: &Ui) -> Result<VerifyReport> {
    let check = check_packed(&opts.packed, ui);
    if !check.ok() {
        return Err(Error::input(format!(
            "{}: the packed folder fails its check: {}",
            opts.packed.display(),
            check.problems.join("; ")
        )));
    }
    let (device, device_note) = model::select_device(&opts.device)?;
    let packed = load_packed(&opts.packed, &device)?;
    let source = load_source(&opts.source, &opts.source_opts, &device)?;
    belong_together(&source, &packed, opts)?;
    let inputs = match &opts.inputs {
        Some(p) => Inputs::read(p)?,
        None => {
            let profile = match &opts.profile {
                Some(p) => Some(Profile::read(p)?),
                None => None,
            };
            Inputs::random(
                opts.tokens,
                source.layers[0].layer.cfg.d_in,
                source.vocab,
                profile.as_ref(),
                opts.seed,
            )?
        }
    };
    let packed_dtype = packed.packed_dtype.expect("packed model");
    let tol = opts
        .tolerance
        .unwrap_or_else(|| tolerance(packed_dtype, source.source_dtype));
    let mut layers = Vec::new();
    for (s, p) in source.layers.iter().zip(&packed.layers) {
        let with_file = |e: Error| match (e, &opts.inputs) {
            (Error::Input(m), Some(path)) => Error::Input(format!("{}: {m}", path.display())),
            (e, _) => e,
        };
        let ys = run_layer(s, &inputs, &device).map_err(with_file)?;
        let yp = run_layer(p, &inputs, &device).map_err(with_file)?;
        let width = s.layer.cfg.d_in;
        let (max_abs, rel, cos, worst) = compare(&ys, &yp, width);
        layers.push(LayerVerdict {
            name: s.name.clone(),
            max_abs_error: max_abs,
            relative_l2_error: rel,
            cosine_similarity: cos,
            worst_position: worst,
            worst_token: inputs.token_ids.get(worst).copied().unwrap_or(0),
            tolerance: tol,
            passed: rel <= tol,
        });
    }
    let passed = layers.iter().all(|l| l.passed);
    Ok(VerifyReport {
        source: opts.source.clone(),
        packed: opts.packed.clone(),
        packed_dtype,
        device: format!("{device:?}"),
        device_note,
        files_hashed: check.files_hashed,
        inputs: inputs.description.clone(),
        tokens: inputs.token_ids.len(),
        layers,
        passed,
    })
}

fn belong_together(source: &LoadedModel, packed: &LoadedModel, opts: &VerifyOptions) -> Result<()> {
    let mismatch = |what: String| {
        Error::input(format!(
            "{} and {} do not belong together: {what}",
            opts.source.display(),
            opts.packed.display()
        ))
    };
    if source.vocab != packed.vocab {
        return Err(mismatch(format!(
            "vocabulary {} vs {}",
            source.vocab, packed.vocab
        )));
    }
    if source.layers.len() != packed.layers.len() {
        return Err(mismatch(format!(
            "{} L3 layers vs {}",
            source.layers.len(),
            packed.layers.len()
        )));
    }
    for (s, p) in source.layers.iter().zip(&packed.layers) {
        let (a, b) = (&s.layer.cfg, &p.layer.cfg);
        if s.name != p.name {
            return Err(mismatch(format!("layer {} vs {}", s.name, p.name)));
        }
        if (a.d_in, a.d_emb, a.d_up, s.n_emb) != (b.d_in, b.d_emb, b.d_up, p.n_emb) {
            return Err(mismatch(format!(
                "layer {}: d_in/d_emb/d_up/n_emb {}/{}/{}/{} vs {}/{}/{}/{}",
                s.name, a.d_in, a.d_emb, a.d_up, s.n_emb, b.d_in, b.d_emb, b.d_up, p.n_emb
            )));
        }
        if a.semantics != b.semantics {
            return Err(mismatch(format!(
                "layer {}: the dialects' semantics differ",
                s.name
            )));
        }
        if a.semantics.residual == Residual::AddLambda && a.lambda != b.lambda {
            return Err(mismatch(format!("layer {}: lambda differs", s.name)));
        }
        if s.tables.bounds() != p.tables.bounds() {
            return Err(mismatch(format!(
                "layer {}: the allocations differ",
                s.name
            )));
        }
    }
    Ok(())
}

/// Write inputs for `forward` (used by tests and docs examples).
pub fn write_inputs(
    path: &Path,
    token_ids: &[u32],
    hidden: &[(String, Vec<f32>, usize)],
) -> Result<()> {
    let ids: Vec<i64> = token_ids.iter().map(|&t| t as i64).collect();
    let mut tensors = vec![TensorBytes::i64s("token_ids", &ids)];
    for (name, values, width) in hidden {
        tensors.push(TensorBytes {
            name: name.clone(),
            dtype: Dtype::F32,
            shape: vec![token_ids.len(), *width],
            data: values
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect::<Vec<u8>>()
                .into(),
        });
    }
    st::write_file(path, &tensors, &BTreeMap::new(), 8)
}
