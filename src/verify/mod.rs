//! Stage 4: run the reference forward pass on packed and source tables and compare them
//! (`l3kit verify`), or run it on user inputs (`l3kit forward`, [`forward`]). Inputs are
//! captured hidden states or seeded random ones ([`inputs`]).

pub mod forward;
pub mod inputs;
pub mod route;

pub use crate::model::load::{
    is_packed, load, load_packed, load_packed_model, load_source, LoadedLayer, LoadedModel,
    SourceOptions,
};
pub use forward::{forward_file, run_layer, run_layer_delta, ForwardSummary};
pub use inputs::{read_f32, write_inputs, Inputs};

use crate::formats::packed::{open_checked, Hashes, Residual, TableDtype};
use crate::formats::profile::Profile;
use crate::model::{self};
use crate::util::error::{Error, Result};
use crate::util::progress::Ui;
use candle_core::{Device, DeviceLocation};
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

/// The most random tokens `verify --tokens` draws.
pub const MAX_TOKENS: usize = 1 << 24;

/// Random inputs whose estimated working memory ([`working_bytes_per_token`] x tokens)
/// exceeds this are refused before anything is allocated.
pub const MAX_WORKING_BYTES: u64 = 4 << 30;

/// About how many bytes verifying one random token takes: its hidden state, the outputs kept
/// for comparison (source and packed, with and without the residual) and the working copies
/// of one layer's forward (the query, the attention result, W_up's output and the
/// concatenation W_mix reads).
pub fn working_bytes_per_token(d_in: u64, d_emb: u64, d_up: u64) -> u64 {
    4 * (11 * d_in + 3 * d_emb + 3 * d_up)
}

/// How two outputs of one layer compare, value by value.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Comparison {
    /// Over the values that are finite on both sides.
    pub max_abs_error: f64,
    pub relative_l2_error: f64,
    pub cosine_similarity: f64,
    /// The position (row) of the largest absolute error; None when the outputs agree exactly.
    pub worst_position: Option<usize>,
    /// NaN or infinite values on each side (a value that is the same NaN/Inf on both sides
    /// counts as equal and is left out of the figures above).
    pub nonfinite_source: u64,
    pub nonfinite_packed: u64,
    /// Values where the sides differ in finiteness or in which non-finite value they hold.
    pub nonfinite_mismatches: u64,
    pub first_nonfinite_mismatch: Option<usize>,
}

#[derive(Clone, Debug, Serialize)]
pub struct LayerVerdict {
    pub name: String,
    /// What the checked figures measure: `output` (the layer's output, which replaces the
    /// hidden state) or `delta` (the layer's own output before an `add_lambda` or `add`
    /// residual, whose x would dilute the error).
    pub measured: String,
    pub max_abs_error: f64,
    pub relative_l2_error: f64,
    pub cosine_similarity: f64,
    /// Where the largest error is; None when source and packed agree exactly.
    pub worst_position: Option<usize>,
    pub worst_token: Option<u32>,
    pub nonfinite_source: u64,
    pub nonfinite_packed: u64,
    pub nonfinite_mismatches: u64,
    pub first_nonfinite_mismatch: Option<usize>,
    /// For a residual layer, the same comparison after the residual (x + lambda * delta, or
    /// x + delta), for information: the check is on the delta.
    pub after_residual: Option<Comparison>,
    pub tolerance: f64,
    pub passed: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct VerifyReport {
    pub source: PathBuf,
    pub packed: PathBuf,
    pub packed_dtype: TableDtype,
    /// `cpu` or `cuda:N`.
    pub device: String,
    pub device_note: Option<String>,
    pub files_hashed: usize,
    pub inputs: String,
    pub tokens: usize,
    pub layers: Vec<LayerVerdict>,
    pub passed: bool,
}

impl VerifyReport {
    /// The report as a result: Ok when every layer passed, else `Error::Check` (exit 1)
    /// naming each failing layer and why.
    pub fn into_result(self) -> Result<VerifyReport> {
        if self.passed {
            return Ok(self);
        }
        let failed: Vec<String> = self
            .layers
            .iter()
            .filter(|l| !l.passed)
            .map(|l| {
                if l.nonfinite_mismatches > 0 {
                    format!(
                        "{}: {} values are NaN/Inf on one side only",
                        l.name, l.nonfinite_mismatches
                    )
                } else {
                    format!(
                        "{}: relative L2 {:.3e} > {:.1e}",
                        l.name, l.relative_l2_error, l.tolerance
                    )
                }
            })
            .collect();
        Err(Error::Check(format!(
            "{}: outputs differ from the source beyond the tolerance ({})",
            self.packed.display(),
            failed.join("; ")
        )))
    }
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

/// How a device is named in reports: `cpu`, `cuda:0`, `metal:0`.
pub fn device_name(device: &Device) -> String {
    match device.location() {
        DeviceLocation::Cpu => "cpu".to_string(),
        DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// Compare two outputs [N, width] value by value: the source's (`reference`) and the packed
/// model's (`other`). Non-finite values are compared by kind (NaN, +Inf, -Inf): the same kind
/// on both sides is equal and left out of the error figures; anything else is a mismatch.
pub fn compare_outputs(reference: &[f32], other: &[f32], width: usize) -> Comparison {
    let kind = |v: f32| -> u8 {
        if v.is_nan() {
            1
        } else if v == f32::INFINITY {
            2
        } else if v == f32::NEG_INFINITY {
            3
        } else {
            0
        }
    };
    let mut c = Comparison::default();
    let (mut err2, mut ref2, mut oth2, mut dot) = (0f64, 0f64, 0f64, 0f64);
    let row = |i: usize| i / width.max(1);
    for (i, (&a, &b)) in reference.iter().zip(other).enumerate() {
        let (ka, kb) = (kind(a), kind(b));
        c.nonfinite_source += u64::from(ka != 0);
        c.nonfinite_packed += u64::from(kb != 0);
        if ka != 0 || kb != 0 {
            if ka != kb {
                c.nonfinite_mismatches += 1;
                c.first_nonfinite_mismatch.get_or_insert(row(i));
            }
            continue;
        }
        let (a, b) = (a as f64, b as f64);
        let e = (a - b).abs();
        if e > c.max_abs_error {
            c.max_abs_error = e;
            c.worst_position = Some(row(i));
        }
        err2 += (a - b) * (a - b);
        ref2 += a * a;
        oth2 += b * b;
        dot += a * b;
    }
    // Outputs of different lengths differ everywhere the shorter one ends.
    let longer = reference.len().max(other.len());
    let shorter = reference.len().min(other.len());
    if longer > shorter {
        c.nonfinite_mismatches += (longer - shorter) as u64;
        c.first_nonfinite_mismatch.get_or_insert(row(shorter));
    }
    c.relative_l2_error = if ref2 > 0.0 {
        (err2 / ref2).sqrt()
    } else {
        err2.sqrt()
    };
    c.cosine_similarity = if ref2 > 0.0 && oth2 > 0.0 {
        dot / (ref2.sqrt() * oth2.sqrt())
    } else if ref2 == oth2 {
        1.0
    } else {
        0.0
    };
    c
}

/// [`compare_outputs`] in one line: (max abs, relative L2, cosine, worst position), with any
/// non-finite mismatch counted as an infinite error, for tests that want one figure.
pub fn compare(reference: &[f32], other: &[f32], width: usize) -> (f64, f64, f64, usize) {
    let c = compare_outputs(reference, other, width);
    if c.nonfinite_mismatches > 0 {
        return (f64::INFINITY, f64::INFINITY, c.cosine_similarity, 0);
    }
    (
        c.max_abs_error,
        c.relative_l2_error,
        c.cosine_similarity,
        c.worst_position.unwrap_or(0),
    )
}

/// Refuse option values that cannot mean anything, naming the flag.
fn check_options(opts: &VerifyOptions) -> Result<()> {
    if let Some(t) = opts.tolerance {
        if !t.is_finite() || t < 0.0 {
            return Err(Error::input(format!(
                "--tolerance {t}: the relative L2 error allowed must be a finite number >= 0"
            )));
        }
    }
    if opts.inputs.is_none() && !(1..=MAX_TOKENS).contains(&opts.tokens) {
        return Err(Error::input(format!(
            "--tokens {}: draw between 1 and {MAX_TOKENS} random tokens",
            opts.tokens
        )));
    }
    Ok(())
}

/// `l3kit verify`.
pub fn verify(opts: &VerifyOptions, ui: &Ui) -> Result<VerifyReport> {
    check_options(opts)?;
    let (model, check) = open_checked(&opts.packed, Hashes::Check, ui)?;
    let files_hashed = check.map_or(0, |c| c.files_hashed);
    let (device, device_note) = model::select_device(&opts.device)?;
    let packed = load_packed_model(&model, &device)?;
    drop(model);
    let source = load_source(&opts.source, &opts.source_opts, &device)?;
    belong_together(&source, &packed, opts)?;
    let inputs = match &opts.inputs {
        Some(p) => Inputs::read(p)?,
        None => {
            let first = source
                .layers
                .first()
                .ok_or_else(|| Error::in_file(&opts.source, "has no L3 layers"))?;
            let per_token = source
                .layers
                .iter()
                .map(|l| {
                    let c = &l.layer.cfg;
                    working_bytes_per_token(c.d_in as u64, c.d_emb as u64, c.d_up as u64)
                })
                .max()
                .unwrap_or(0);
            let need = per_token.saturating_mul(opts.tokens as u64);
            if need > MAX_WORKING_BYTES {
                return Err(Error::input(format!(
                    "--tokens {}: random inputs for this model take about {} ({} per token), \
                     more than the {} verify allows; draw fewer tokens",
                    opts.tokens,
                    crate::util::units::human_bytes(need as f64),
                    crate::util::units::human_bytes(per_token as f64),
                    crate::util::units::human_bytes(MAX_WORKING_BYTES as f64)
                )));
            }
            let profile = match &opts.profile {
                Some(p) => Some((p.as_path(), Profile::read(p)?)),
                None => None,
            };
            Inputs::random(
                opts.tokens,
                first.layer.cfg.d_in,
                source.vocab,
                profile.as_ref().map(|(p, prof)| (*p, prof)),
                opts.seed,
            )?
        }
    };
    let packed_dtype = packed
        .packed_dtype
        .ok_or_else(|| Error::in_file(&opts.packed, "is not a packed model"))?;
    let tol = opts
        .tolerance
        .unwrap_or_else(|| tolerance(packed_dtype, source.source_dtype));
    // Say where a bad input came from: the captured file, or the profile the ids were drawn
    // from.
    let origin = |e: Error| match (e, &opts.inputs, &opts.profile) {
        (Error::Input(m), Some(path), _) => Error::Input(format!("{}: {m}", path.display())),
        (Error::Input(m), None, Some(profile)) => Error::Input(format!(
            "token ids drawn from the profile {}: {m}",
            profile.display()
        )),
        (e, _, _) => e,
    };
    let mut layers = Vec::new();
    for (s, p) in source.layers.iter().zip(&packed.layers) {
        let width = s.layer.cfg.d_in;
        let full = compare_outputs(
            &run_layer(s, &inputs, &device).map_err(origin)?,
            &run_layer(p, &inputs, &device).map_err(origin)?,
            width,
        );
        let (measured, checked, after_residual) =
            if s.layer.cfg.semantics.residual == Residual::Replace {
                ("output", full, None)
            } else {
                let delta = compare_outputs(
                    &run_layer_delta(s, &inputs, &device).map_err(origin)?,
                    &run_layer_delta(p, &inputs, &device).map_err(origin)?,
                    width,
                );
                ("delta", delta, Some(full))
            };
        let passed = checked.nonfinite_mismatches == 0 && checked.relative_l2_error <= tol;
        layers.push(LayerVerdict {
            name: s.name.clone(),
            measured: measured.to_string(),
            max_abs_error: checked.max_abs_error,
            relative_l2_error: checked.relative_l2_error,
            cosine_similarity: checked.cosine_similarity,
            worst_position: checked.worst_position,
            worst_token: checked
                .worst_position
                .and_then(|i| inputs.token_ids.get(i).copied()),
            nonfinite_source: checked.nonfinite_source,
            nonfinite_packed: checked.nonfinite_packed,
            nonfinite_mismatches: checked.nonfinite_mismatches,
            first_nonfinite_mismatch: checked.first_nonfinite_mismatch,
            after_residual,
            tolerance: tol,
            passed,
        });
    }
    let passed = layers.iter().all(|l| l.passed);
    Ok(VerifyReport {
        source: opts.source.clone(),
        packed: opts.packed.clone(),
        packed_dtype,
        device: device_name(&device),
        device_note,
        files_hashed,
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
