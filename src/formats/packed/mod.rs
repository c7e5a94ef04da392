//! The packed model folder: its identifiers, file names and the `l3` section of its
//! `config.json` (specified in `docs/format.md`). [`reader`] is the one validated reader of
//! such a folder that every consumer goes through (it validates the `l3` section against the
//! tensors present, in `validate.rs`); [`check`] re-hashes it and checks the byte layout.

pub mod check;
pub mod reader;
mod validate;

pub use crate::formats::dtype::TableDtype;
pub use crate::formats::semantics::{Residual, Semantics};
pub use check::{
    check_packed, check_packed_folder, check_packed_model, open_checked, CheckReport, Hashes,
};
pub use reader::{Index, IndexMetadata, PackedModel, PackedShards};
pub use validate::DIALECTS;

use serde::{Deserialize, Serialize};

/// Name of the index file (the Hugging Face convention for sharded checkpoints).
pub const INDEX_FILE: &str = "model.safetensors.index.json";
pub const CONFIG_FILE: &str = "config.json";

/// The packed format's identifier and version, recorded in `config.json` under `l3`.
pub const PACKED_FORMAT: &str = "l3kit-packed";
pub const PACKED_VERSION: u32 = 1;
/// Every packed file's tensor data starts at a multiple of this (the header is padded).
pub const DATA_ALIGNMENT: usize = 4096;

/// One contiguous token range of one layer's table, in one file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackedPart {
    pub file: String,
    /// Tensor [row_end - row_start, row_width]: row r = [key row | value row].
    pub rows: String,
    /// I64 [token_end - token_start + 1]: global row index of each token's first row, then
    /// the end of the last token's rows (a slice of the layer's bounds).
    pub offsets: String,
    /// F32 [row_end - row_start, parts] per-row scales (int8 only; key scale, value scale).
    pub scales: Option<String>,
    pub token_start: u64,
    pub token_end: u64,
    pub row_start: u64,
    pub row_end: u64,
}

/// Names of the layer's tensors in the source checkpoint, for `unpack`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceNames {
    pub keys: String,
    pub values: Option<String>,
    pub bounds: Option<String>,
    /// The tables' dtype in the source (safetensors spelling, e.g. "BF16").
    pub dtype: String,
}

/// The layer's small dense parameters, which pass through unchanged under these names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerParams {
    pub w_up: String,
    pub w_mix: String,
    pub norm_in: Option<String>,
    pub norm_out: Option<String>,
    /// The per-layer lambda: (tensor name, index) for the add-lambda residual.
    pub lambda: Option<(String, usize)>,
}

/// Conversion error of a layer's tables (when the packed dtype is lossy for the source).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConversionError {
    /// NaN when the tables held non-finite values (`pack --allow-nonfinite`); JSON writes it
    /// as null.
    #[serde(deserialize_with = "null_as_nan")]
    pub max_abs_error: f64,
    #[serde(deserialize_with = "null_as_nan")]
    pub relative_l2_error: f64,
}

/// serde_json writes a NaN as null; read it back as NaN.
fn null_as_nan<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PackedLayer {
    /// The module prefix in the source (e.g. `l3_layers.4` or `model.l3.0`).
    pub name: String,
    /// The decoder position it belongs to, when the name says (the last integer in it).
    pub layer_id: Option<u32>,
    pub d_in: u64,
    pub d_emb: u64,
    pub d_up: u64,
    pub n_emb: u64,
    /// Values per packed row: d_in (tied) or d_in + d_emb.
    pub row_width: u64,
    pub lambda: Option<f64>,
    pub source: SourceNames,
    pub params: LayerParams,
    pub parts: Vec<PackedPart>,
    pub conversion_error: Option<ConversionError>,
}

/// Where the allocation came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocationInfo {
    /// `checkpoint` (bounds buffers) or the allocation file's method (`lzw`, ...).
    pub source: String,
    pub method: Option<String>,
    pub profile_sha256: Option<String>,
    pub tokenizer_sha256: Option<String>,
    /// Largest block of any token.
    pub max_rows: u32,
}

/// The `l3` section of a packed model's `config.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PackedConfig {
    pub format: String,
    pub format_version: u32,
    pub dialect: String,
    pub vocab_size: u64,
    pub k_max: u32,
    pub dtype: TableDtype,
    pub semantics: Semantics,
    pub allocation: AllocationInfo,
    pub layers: Vec<PackedLayer>,
}

impl PackedConfig {
    pub fn row_bytes(&self, layer: &PackedLayer) -> u64 {
        self.dtype
            .row_bytes(layer.d_in, layer.d_emb, self.semantics.tied)
    }
}
