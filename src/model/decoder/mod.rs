//! Whole models: the decoder families whose checkpoints l3kit packs, run from a source
//! checkpoint or a packed folder. Dense weights come from the checkpoint or the packed
//! folder's dense shards; L3 layers get their rows through the table store, the same code
//! `verify` uses.
//!
//! - [`tiny`]: the bundled trained model's family (`config.json`, `model_type:
//!   "l3-tiny-trained"`), paper dialect, L3 output replaces the hidden state;
//! - [`nanochat`]: the public nanochat fork's GPT (`meta_NNNNNN.json`'s `model_config`),
//!   nanochat dialect, L3 output added as x + lambda * delta.
//!
//! A model option l3kit does not implement is refused by name, never ignored.

pub mod blocks;
pub mod nanochat;
pub mod tiny;

pub use blocks::KvCache;

use crate::formats::packed::{PackedModel, CONFIG_FILE};
use crate::formats::safetensors::TensorReader;
use crate::model::load::{load_tier, LoadedLayer, LoadedModel, SourceOptions};
use crate::model::runtime::L3Runtime;
use crate::serve::TableTier;
use crate::util::error::{Error, Result};
use crate::util::fs::{limits, read_small};
use blocks::{ce, Weights};
use candle_core::{Device, Tensor};
use nanochat::{NanochatConfig, NanochatGpt};
use std::path::{Path, PathBuf};
use tiny::{TinyConfig, TinyLm};

/// Where an L3 layer sits in a decoder.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum L3Slot {
    /// After decoder block i.
    AfterBlock(usize),
    /// At the start of loop k of a looped model (k >= 1).
    AtLoop(usize),
}

/// Refuse configuration keys that would change the computation and that l3kit does not
/// implement: every key not in `descriptive` is named in the error.
pub(crate) fn refuse_unknown<'a>(
    path: &Path,
    keys: impl Iterator<Item = &'a String>,
    descriptive: &[&str],
) -> Result<()> {
    let unknown: Vec<&str> = keys
        .map(String::as_str)
        .filter(|k| !descriptive.contains(k))
        .collect();
    if unknown.is_empty() {
        Ok(())
    } else {
        Err(Error::in_file(
            path,
            format!(
                "model option(s) {} not supported by l3kit's decoder (refused rather than \
                 ignored: the model would compute something else)",
                unknown
                    .iter()
                    .map(|k| format!("{k:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ))
    }
}

pub enum Family {
    Tiny(TinyLm),
    Nanochat(NanochatGpt),
}

/// Which family a model folder holds, and the file that configures it.
#[derive(Clone, Debug)]
pub enum FamilyConfig {
    Tiny(TinyConfig, PathBuf),
    Nanochat(NanochatConfig, PathBuf),
}

impl FamilyConfig {
    pub fn name(&self) -> &'static str {
        match self {
            FamilyConfig::Tiny(..) => "l3-tiny",
            FamilyConfig::Nanochat(..) => "nanochat",
        }
    }

    pub fn path(&self) -> &Path {
        match self {
            FamilyConfig::Tiny(_, p) | FamilyConfig::Nanochat(_, p) => p,
        }
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            FamilyConfig::Tiny(c, _) => c.vocab_size,
            FamilyConfig::Nanochat(c, _) => c.vocab_size,
        }
    }

    /// The window length the model was trained on.
    pub fn context(&self) -> usize {
        match self {
            FamilyConfig::Tiny(c, _) => c.block_size,
            FamilyConfig::Nanochat(c, _) => c.sequence_len,
        }
    }

    /// The longest sequence the model can run (positions).
    pub fn max_positions(&self) -> usize {
        match self {
            FamilyConfig::Tiny(c, _) => c.block_size,
            FamilyConfig::Nanochat(c, _) => c.max_positions(),
        }
    }

    /// Decoder blocks in one pass over the stack (a looped model runs it several times).
    pub fn blocks_per_loop(&self) -> usize {
        match self {
            FamilyConfig::Tiny(c, _) => c.n_layer,
            FamilyConfig::Nanochat(c, _) => c.n_layer,
        }
    }

    /// Decoder blocks one forward step runs, loops included.
    pub fn blocks_per_step(&self) -> usize {
        match self {
            FamilyConfig::Tiny(c, _) => c.n_layer,
            FamilyConfig::Nanochat(c, _) => c.n_layer * c.n_loops.max(1),
        }
    }

    /// Whether the family starts every document with a BOS token.
    pub fn uses_bos(&self) -> bool {
        matches!(self, FamilyConfig::Nanochat(..))
    }

    fn slot(&self, layer: &LoadedLayer) -> Option<L3Slot> {
        match self {
            FamilyConfig::Tiny(c, _) => tiny::l3_slot(&layer.name, c),
            FamilyConfig::Nanochat(c, _) => nanochat::l3_slot(&layer.name, c),
        }
    }

    /// The L3 slots the configuration declares.
    fn slots(&self) -> Result<Vec<L3Slot>> {
        Ok(match self {
            FamilyConfig::Tiny(c, _) => {
                c.l3_layers.iter().map(|&i| L3Slot::AfterBlock(i)).collect()
            }
            FamilyConfig::Nanochat(c, p) => {
                if c.n_loops > 1 {
                    if c.l3_n_emb == 0 {
                        Vec::new()
                    } else {
                        c.l3_loops().into_iter().map(L3Slot::AtLoop).collect()
                    }
                } else if c.l3_n_emb == 0 {
                    Vec::new()
                } else {
                    c.l3_after(p)?.into_iter().map(L3Slot::AfterBlock).collect()
                }
            }
        })
    }
}

/// The newest `meta_NNNNNN.json` in a folder (the nanochat fork's checkpoint metadata).
fn find_meta(dir: &Path) -> Result<Option<PathBuf>> {
    let mut best: Option<(u64, PathBuf)> = None;
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(_) => return Ok(None),
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(step) = name
            .strip_prefix("meta_")
            .and_then(|s| s.strip_suffix(".json"))
            .and_then(|s| s.parse::<u64>().ok())
        else {
            continue;
        };
        if best.as_ref().is_none_or(|(b, _)| step > *b) {
            best = Some((step, e.path()));
        }
    }
    Ok(best.map(|(_, p)| p))
}

/// Read the model family's configuration from a model folder (a checkpoint folder, or a
/// packed folder into which `pack` carried the training run's config files).
pub fn family_config(model: &Path) -> Result<FamilyConfig> {
    let dir = if model.is_dir() {
        model.to_path_buf()
    } else {
        model
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."))
    };
    if let Some(meta) = find_meta(&dir)? {
        let bytes = read_small(&meta, limits::CONFIG, "a checkpoint metadata file")?;
        let value: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| Error::in_file(&meta, format!("not valid JSON: {e}")))?;
        let mc = value
            .get("model_config")
            .ok_or_else(|| Error::in_file(&meta, "has no \"model_config\""))?;
        let cfg: NanochatConfig = serde_json::from_value(mc.clone())
            .map_err(|e| Error::in_file(&meta, format!("model_config: {e}")))?;
        cfg.check(&meta)?;
        return Ok(FamilyConfig::Nanochat(cfg, meta));
    }
    let config = dir.join(CONFIG_FILE);
    if config.is_file() {
        let bytes = read_small(&config, limits::CONFIG, "a config file")?;
        let value: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| Error::in_file(&config, format!("not valid JSON: {e}")))?;
        match value.get("model_type").and_then(|v| v.as_str()) {
            Some("l3-tiny-trained" | "tiny-moe-dtopp-trained" | "tiny-moe-topk-trained") => {
                let cfg: TinyConfig = serde_json::from_value(value)
                    .map_err(|e| Error::in_file(&config, format!("{e}")))?;
                cfg.check(&config)?;
                return Ok(FamilyConfig::Tiny(cfg, config));
            }
            Some(other) => {
                return Err(Error::in_file(
                    &config,
                    format!(
                        "model_type {other:?} is not a family l3kit runs (l3-tiny-trained, or \
                         a nanochat checkpoint with its meta_NNNNNN.json)"
                    ),
                ))
            }
            None => {}
        }
    }
    Err(Error::in_file(
        &dir,
        "cannot tell which model this is: no meta_NNNNNN.json (nanochat) and no config.json \
         with a known model_type (l3-tiny-trained)",
    ))
}

/// A whole model ready to run.
pub struct Decoder {
    pub family: Family,
    pub config: FamilyConfig,
    /// The L3 layers, in the order the forward meets them.
    pub l3: Vec<(L3Slot, LoadedLayer)>,
    pub packed: bool,
    device: Device,
}

impl Decoder {
    /// Load a packed folder or a source checkpoint.
    pub fn open(path: &Path, source: &SourceOptions, device: &Device) -> Result<Decoder> {
        Self::open_tier(path, source, device, None)
    }

    /// Load a packed folder with its tables served from `tables` (memory-mapped when None),
    /// or a source checkpoint (which refuses a tier).
    pub fn open_tier(
        path: &Path,
        source: &SourceOptions,
        device: &Device,
        tables: Option<TableTier>,
    ) -> Result<Decoder> {
        let config = family_config(path)?;
        let mut want = config.slots()?;
        want.sort();
        let packed = crate::model::load::is_packed(path);
        // A model without L3 layers (a dense nanochat run) has no tables to load.
        let loaded: Option<LoadedModel> = if want.is_empty() {
            None
        } else {
            Some(load_tier(path, source, device, tables)?)
        };
        let family = if packed {
            let model = PackedModel::open(path)?;
            Self::build(&config, &model.shards, device)?
        } else {
            let ckpt = crate::checkpoint::Checkpoint::open(path)?;
            Self::build(&config, &ckpt, device)?
        };
        let mut l3 = Vec::new();
        let (layers, tables_vocab) = match loaded {
            Some(l) => (l.layers, Some(l.vocab)),
            None => (Vec::new(), None),
        };
        for layer in layers {
            let slot = config.slot(&layer).ok_or_else(|| {
                Error::in_file(
                    config.path(),
                    format!(
                        "the checkpoint has an L3 layer {} that the model's config does not place",
                        layer.name
                    ),
                )
            })?;
            l3.push((slot, layer));
        }
        l3.sort_by_key(|(s, _)| *s);
        let have: Vec<L3Slot> = l3.iter().map(|(s, _)| *s).collect();
        if have != want {
            return Err(Error::in_file(
                config.path(),
                format!(
                    "the config places L3 layers at {want:?}, the checkpoint holds them at {have:?}"
                ),
            ));
        }
        if let Some(v) = tables_vocab.filter(|&v| v != config.vocab_size()) {
            return Err(Error::in_file(
                config.path(),
                format!(
                    "vocab_size is {}, the L3 tables have {} tokens",
                    config.vocab_size(),
                    v
                ),
            ));
        }
        Ok(Decoder {
            family,
            config,
            l3,
            packed,
            device: device.clone(),
        })
    }

    fn build(config: &FamilyConfig, reader: &dyn TensorReader, device: &Device) -> Result<Family> {
        let w = Weights::new(reader, device);
        Ok(match config {
            FamilyConfig::Tiny(c, _) => Family::Tiny(TinyLm::load(c.clone(), &w)?),
            FamilyConfig::Nanochat(c, p) => Family::Nanochat(NanochatGpt::load(c.clone(), &w, p)?),
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.config.vocab_size()
    }

    /// Keep the rows of `tokens` resident for every L3 layer, in front of the tier they are
    /// served from; returns the bytes the hot set holds.
    pub fn use_hot_set(&mut self, tokens: &[u32]) -> Result<u64> {
        let mut bytes = 0u64;
        for (_, layer) in &mut self.l3 {
            let hot = crate::serve::HotSet::new(std::sync::Arc::clone(&layer.tables), tokens)?;
            bytes += hot.resident_bytes();
            layer.tables = std::sync::Arc::new(hot);
        }
        Ok(bytes)
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// A cache for `batch` sequences.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(match &self.family {
            Family::Tiny(m) => m.attention_layers(),
            Family::Nanochat(m) => m.attention_layers(),
        })
    }

    /// Logits [B, T, vocab] (f32) of `ids` (B rows of T ids) after the positions in `cache`.
    /// `runtime` serves the L3 layers' rows (prefetching them when it is asked to).
    pub fn forward(
        &self,
        ids: &[Vec<u32>],
        cache: &mut KvCache,
        runtime: &mut L3Runtime,
    ) -> Result<Tensor> {
        let b = ids.len();
        let t = ids.first().map(Vec::len).unwrap_or(0);
        if b == 0 || t == 0 || ids.iter().any(|r| r.len() != t) {
            return Err(Error::input(
                "a forward needs at least one row of tokens, all rows of one length",
            ));
        }
        let vocab = self.vocab_size();
        if let Some(bad) = ids.iter().flatten().find(|&&id| id as usize >= vocab) {
            return Err(Error::input(format!(
                "token id {bad} is not below the model's vocabulary size {vocab}"
            )));
        }
        let flat: Vec<u32> = ids.iter().flatten().copied().collect();
        runtime.begin_step(&self.l3, &flat)?;
        let tensor = Tensor::from_slice(&flat, (b, t), &self.device).map_err(ce)?;
        let l3 = &self.l3;
        let mut run = |slot: L3Slot, hidden: &Tensor| -> Result<Tensor> {
            let i = l3
                .iter()
                .position(|(s, _)| *s == slot)
                .ok_or_else(|| Error::Other(format!("no L3 layer at {slot:?}")))?;
            runtime.run_layer(i, &l3[i].1, hidden, &flat)
        };
        let out = match &self.family {
            Family::Tiny(m) => m.forward(&tensor, cache, &mut |i, h| run(L3Slot::AfterBlock(i), h)),
            Family::Nanochat(m) => m.forward(&tensor, cache, &mut run),
        };
        runtime.end_step();
        out
    }
}
