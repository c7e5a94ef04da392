//! Loading a model's L3 layers, dense parameters on a device plus a table source, from a
//! packed folder or a source checkpoint: the same layer code runs on both.

use crate::checkpoint::detect::{detect_source, resolve_bounds};
use crate::checkpoint::{Checkpoint, Dialect};
use crate::formats::dtype as convert;
use crate::formats::packed::{LayerParams, PackedModel, TableDtype, CONFIG_FILE, INDEX_FILE};
use crate::model::{self, L3Config, L3Layer};
use crate::serve::{SourceTables, TableSource, TableTier};
use crate::util::error::{Error, Result};
use crate::util::fs::{limits, read_small};
use candle_core::Device;
use safetensors::Dtype;
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

/// Is `path` a packed l3kit folder (an index, and the packed format named in it or in
/// `config.json`)? This only picks the reader; the packed reader validates. A folder with an
/// index and a file that cannot be read (a FIFO, a device, too large) is handed to the packed
/// reader too, so that the error names the file and what it is.
pub fn is_packed(path: &Path) -> bool {
    let (index, config) = (path.join(INDEX_FILE), path.join(CONFIG_FILE));
    if std::fs::symlink_metadata(&index).is_err() {
        return false;
    }
    let marked = |p: &Path, limit: u64| {
        read_small(p, limit, "a packed model's JSON file").map(|bytes| {
            let mark = crate::formats::packed::PACKED_FORMAT.as_bytes();
            bytes.windows(mark.len()).any(|w| w == mark)
        })
    };
    let unreadable_or_marked = |p: &Path, limit: u64| match marked(p, limit) {
        Ok(m) => m,
        Err(_) => std::fs::symlink_metadata(p).is_ok(),
    };
    unreadable_or_marked(&index, limits::INDEX) || unreadable_or_marked(&config, limits::CONFIG)
}

pub fn load_packed(dir: &Path, device: &Device) -> Result<LoadedModel> {
    load_packed_model(&PackedModel::open(dir)?, device)
}

/// Load the layers of a packed model that is already open (and validated by opening), its
/// tables memory-mapped.
pub fn load_packed_model(model: &PackedModel, device: &Device) -> Result<LoadedModel> {
    load_packed_model_tier(model, device, TableTier::Mmap)
}

/// Load the layers of an open packed model with its tables served from `tier`.
pub fn load_packed_model_tier(
    model: &PackedModel,
    device: &Device,
    tier: TableTier,
) -> Result<LoadedModel> {
    let c = &model.config;
    let mut stores = crate::serve::open_stores(model, tier)?.into_iter();
    let mut layers = Vec::new();
    for l in c.layers.iter() {
        // These sizes were checked against the tensors present when the model was opened.
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
            tables: stores
                .next()
                .ok_or_else(|| Error::Other("a packed layer has no store".into()))?,
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
                let info = ckpt.get(name).ok_or_else(|| {
                    Error::in_file(ckpt.path(), format!("missing lambdas tensor {name}"))
                })?;
                // Checked before reading: a tensor of integers is an error, not a decode.
                let dtype = info.float_dtype()?;
                let mut v = Vec::new();
                convert::decode_f32(dtype, &ckpt.read_all(name)?, &mut v);
                let value = v.get(*index).copied().ok_or_else(|| {
                    Error::in_file(
                        &info.file,
                        format!(
                            "tensor {name} holds {} lambdas; layer {} needs element {index}",
                            v.len(),
                            l.name
                        ),
                    )
                })?;
                Some(value)
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
        let vb = model::var_builder(ckpt.as_ref(), &model::param_names(&params), device)?;
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
    let vocab = layers
        .first()
        .map(|l| l.tables.vocab())
        .ok_or_else(|| Error::in_file(path, "has no L3 layers"))?;
    Ok(LoadedModel {
        layers,
        vocab,
        packed_dtype: None,
        source_dtype,
    })
}

/// Load a packed folder or a source checkpoint, whichever `path` is.
pub fn load(path: &Path, opts: &SourceOptions, device: &Device) -> Result<LoadedModel> {
    load_tier(path, opts, device, None)
}

/// Load a packed folder with its tables served from `tier` (memory-mapped when None), or a
/// source checkpoint. A tier asked of a source checkpoint is refused: its tables are read
/// from the checkpoint's own files, which are not laid out for serving.
pub fn load_tier(
    path: &Path,
    opts: &SourceOptions,
    device: &Device,
    tier: Option<TableTier>,
) -> Result<LoadedModel> {
    if is_packed(path) {
        load_packed_model_tier(&PackedModel::open(path)?, device, tier.unwrap_or_default())
    } else if let Some(t) = tier {
        Err(Error::in_file(
            path,
            format!(
                "--tables {} serves a packed folder's tables; this is a source checkpoint (pack \
                 it first, or leave out --tables)",
                serde_json::to_value(t)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default()
            ),
        ))
    } else {
        load_source(path, opts, device)
    }
}
