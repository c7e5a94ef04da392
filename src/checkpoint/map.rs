//! `--map` files: TOML naming each L3 layer's tensors and the semantics, for checkpoints whose
//! names neither dialect recognises (format in `docs/format.md`). Only the syntax is checked
//! here; `dialect::detect` validates the values and checks the map against the checkpoint.

use crate::util::error::{Error, Result};
use crate::util::fs::{limits, read_small_text};
use serde::Deserialize;
use std::path::Path;

/// A `--map` file: the semantics and, per layer, the tensor names.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MapFile {
    /// Base semantics (`paper` or `nanochat`); the keys below override them.
    pub dialect: Option<String>,
    pub tied: Option<bool>,
    pub norm_weights: Option<bool>,
    pub norm_eps: Option<f64>,
    pub score_scale: Option<f64>,
    pub key_norm: Option<bool>,
    /// `replace`, `add_lambda` or `add`.
    pub residual: Option<String>,
    /// A 1-D tensor with one lambda per layer, in the order of `layers`.
    pub lambdas: Option<String>,
    pub layers: Vec<MapLayer>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MapLayer {
    /// A name for the layer (default: the keys tensor's prefix).
    pub name: Option<String>,
    pub id: Option<u32>,
    pub keys: String,
    pub values: Option<String>,
    pub bounds: Option<String>,
    pub w_up: String,
    pub w_mix: String,
    pub norm_in: Option<String>,
    pub norm_out: Option<String>,
}

impl MapFile {
    pub fn read(path: &Path) -> Result<MapFile> {
        let text = read_small_text(path, limits::MAP, "a map file")?;
        toml::from_str(&text)
            .map_err(|e| Error::in_file(path, format!("not a valid map file: {e}")))
    }
}
