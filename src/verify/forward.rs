//! `l3kit forward`: every L3 layer of a model on the hidden states of an inputs file.

use super::inputs::Inputs;
use crate::formats::packed::open_checked;
pub use crate::formats::packed::Hashes;
use crate::model::load::{is_packed, load_packed_model, load_source, LoadedLayer, SourceOptions};
use crate::util::error::{Error, Result};
use crate::util::fs::{check_output, OutputKind};
use crate::util::progress::Ui;
use crate::util::safetensors_file::{self as st, TensorBytes};
use candle_core::{Device, Tensor};
use safetensors::Dtype;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Run one layer on its inputs; the output [N, d_in] flattened.
pub fn run_layer(layer: &LoadedLayer, inputs: &Inputs, device: &Device) -> Result<Vec<f32>> {
    run(layer, inputs, device, false)
}

/// Run one layer on its inputs and return its own output before the residual (the delta of
/// an add-lambda layer; the same as [`run_layer`] for a replace layer), [N, d_in] flattened.
pub fn run_layer_delta(layer: &LoadedLayer, inputs: &Inputs, device: &Device) -> Result<Vec<f32>> {
    run(layer, inputs, device, true)
}

fn run(layer: &LoadedLayer, inputs: &Inputs, device: &Device, delta: bool) -> Result<Vec<f32>> {
    let (hidden, width) = inputs.hidden_for(layer)?;
    let n = inputs.token_ids.len();
    let x =
        Tensor::from_slice(hidden, (n, width), device).map_err(|e| Error::Other(e.to_string()))?;
    let (ids, tables) = (&inputs.token_ids, layer.tables.as_ref());
    let y = if delta {
        layer.layer.forward_delta(&x, ids, tables)?
    } else {
        layer.layer.forward(&x, ids, tables)?
    };
    y.flatten_all()
        .and_then(|t| t.to_vec1::<f32>())
        .map_err(|e| Error::Other(e.to_string()))
}

#[derive(Clone, Debug, Serialize)]
pub struct ForwardSummary {
    pub out: PathBuf,
    pub layers: Vec<String>,
    pub tokens: usize,
    /// `cpu` or `cuda:N`.
    pub device: String,
    /// Files of a packed model re-hashed against its index first; None for a source
    /// checkpoint, or with `--no-check`.
    pub files_hashed: Option<usize>,
    pub seconds: f64,
}

/// `l3kit forward`: run every L3 layer on the inputs and write `output.<layer>` tensors. A
/// packed model's files are re-hashed against its index first unless `hashes` is
/// [`Hashes::Skip`] (`--no-check`); its structure is validated either way.
pub fn forward_file(
    model_path: &Path,
    source: &SourceOptions,
    inputs_path: &Path,
    out: &Path,
    device: &Device,
    hashes: Hashes,
) -> Result<ForwardSummary> {
    let started = std::time::Instant::now();
    check_output(out, &[model_path, inputs_path], OutputKind::File, "--out")?;
    let mut files_hashed = None;
    let model = if is_packed(model_path) {
        let (packed, check) = open_checked(model_path, hashes, &Ui::quiet())?;
        files_hashed = check.map(|c| c.files_hashed);
        load_packed_model(&packed, device)?
    } else {
        load_source(model_path, source, device)?
    };
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
        device: super::device_name(device),
        files_hashed,
        seconds: started.elapsed().as_secs_f64(),
    })
}
