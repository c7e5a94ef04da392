//! Stage 4: run the reference forward pass on packed and source tables and compare them
//! (`l3kit verify`), or run it on user inputs (`l3kit forward`, [`forward`]). Inputs are
//! captured hidden states or seeded random ones ([`inputs`]).

pub mod forward;
pub mod inputs;

pub use crate::model::load::{
    is_packed, load, load_packed, load_source, LoadedLayer, LoadedModel, SourceOptions,
};
pub use forward::{forward_file, run_layer, ForwardSummary};
pub use inputs::{read_f32, write_inputs, Inputs};

use crate::formats::packed::check_packed;
use crate::formats::packed::{Residual, TableDtype};
use crate::formats::profile::Profile;
use crate::model::{self};
use crate::util::error::{Error, Result};
use crate::util::progress::Ui;
use safetensors::Dtype;
use serde::Serialize;
use std::path::PathBuf;

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
        // A packed config records the lambda as stored, which `--other-dtype` may have
        // rounded to bf16 or f16 (a relative step of at most 2^-8): that is the same lambda.
        let same_lambda = match (a.lambda, b.lambda) {
            (Some(x), Some(y)) => (x - y).abs() <= x.abs().max(y.abs()) * 2f32.powi(-8),
            (x, y) => x == y,
        };
        if a.semantics.residual == Residual::AddLambda && !same_lambda {
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
