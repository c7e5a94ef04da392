//! Table layout facts shared by the allocation report, packing and the forward pass: which
//! dtypes tables can be stored in and how many bytes one token's row costs.

use serde::{Deserialize, Serialize};

/// The dtype of packed L3 tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TableDtype {
    F32,
    Bf16,
    F16,
    /// Symmetric per-row int8 with one f32 scale per row part (key part, value part).
    Int8,
}

impl TableDtype {
    pub fn name(self) -> &'static str {
        match self {
            TableDtype::F32 => "f32",
            TableDtype::Bf16 => "bf16",
            TableDtype::F16 => "f16",
            TableDtype::Int8 => "int8",
        }
    }

    /// Bytes per stored value.
    pub fn value_bytes(self) -> u64 {
        match self {
            TableDtype::F32 => 4,
            TableDtype::Bf16 | TableDtype::F16 => 2,
            TableDtype::Int8 => 1,
        }
    }

    /// Bytes one table row costs: the key part (d_in values) and, unless K and V are tied,
    /// the value part (d_emb values), plus one f32 scale per part for int8.
    pub fn row_bytes(self, d_in: u64, d_emb: u64, tied: bool) -> u64 {
        let (values, parts) = if tied { (d_in, 1) } else { (d_in + d_emb, 2) };
        let scales = if self == TableDtype::Int8 {
            4 * parts
        } else {
            0
        };
        values * self.value_bytes() + scales
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_bytes() {
        assert_eq!(TableDtype::Bf16.row_bytes(2048, 1024, false), 3072 * 2);
        assert_eq!(TableDtype::F32.row_bytes(768, 768, true), 768 * 4);
        assert_eq!(TableDtype::Int8.row_bytes(1024, 512, false), 1536 + 8);
    }
}

/// The packed format's identifier and version, recorded in `config.json` under `l3`.
pub const PACKED_FORMAT: &str = "l3kit-packed";
pub const PACKED_VERSION: u32 = 1;
/// Every packed file's tensor data starts at a multiple of this (the header is padded).
pub const DATA_ALIGNMENT: usize = 4096;

/// How the layer output reaches the residual stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Residual {
    /// The layer output replaces the hidden state (the paper's module).
    Replace,
    /// x <- x + lambda * out, one learned scalar per L3 layer (nanochat).
    AddLambda,
}

/// The numerical choices that differ between dialects; one forward pass covers them all.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Semantics {
    /// One table serves as both keys and values (d_emb = d_in).
    pub tied: bool,
    /// RMSNorms carry a learnable weight (`norm_in.weight`, `norm_out.weight`).
    pub norm_weights: bool,
    /// RMSNorm epsilon (paper: 1e-6; nanochat: the f32 machine epsilon, 2^-23).
    pub norm_eps: f64,
    /// Scores are multiplied by this before the softmax (1 in both dialects; a third-party
    /// variant uses 1/sqrt(d_in)).
    pub score_scale: f64,
    /// Keys are RMS-normalised (without weight) before scoring.
    pub key_norm: bool,
    pub residual: Residual,
}

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
    pub max_abs_error: f64,
    pub relative_l2_error: f64,
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
