//! The one reader of a packed model folder: `config.json`'s `l3` section, the index, and the
//! safetensors files the index lists (each header validated, every tensor where the index
//! says it is). Every consumer (`inspect`, `verify`, `forward`, `unpack`, `upload`, the table
//! store) opens packed folders through [`PackedModel::open`].

use super::{PackedConfig, CONFIG_FILE, INDEX_FILE, PACKED_FORMAT, PACKED_VERSION};
use crate::formats::allocation::read_bounds;
use crate::formats::safetensors::{
    check_range, safe_relative, OpenSafetensors, TensorInfo, TensorReader,
};
use crate::util::error::{Error, IoContext, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// `model.safetensors.index.json` as l3kit writes it.
#[derive(Clone, Debug, Deserialize)]
pub struct Index {
    pub metadata: IndexMetadata,
    pub weight_map: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct IndexMetadata {
    pub total_size: u64,
    #[serde(default)]
    pub format: Option<String>,
    #[serde(default)]
    pub sha256: BTreeMap<String, String>,
}

/// The safetensors files of a packed folder, as its index lists them.
pub struct PackedShards {
    dir: PathBuf,
    files: Vec<OpenSafetensors>,
    tensors: BTreeMap<String, (TensorInfo, usize, u64)>,
}

impl PackedShards {
    /// Open every file the weight map names and check that the map and the headers agree.
    fn open(dir: &Path, index_path: &Path, index: &Index) -> Result<PackedShards> {
        let mut by_file: BTreeMap<PathBuf, Vec<&String>> = BTreeMap::new();
        for (tensor, file) in &index.weight_map {
            let rel = safe_relative(file).map_err(|why| {
                Error::in_file(
                    index_path,
                    format!("weight_map entry for tensor {tensor} points at \"{file}\": {why}"),
                )
            })?;
            by_file.entry(rel).or_default().push(tensor);
        }
        let mut shards = PackedShards {
            dir: dir.to_path_buf(),
            files: Vec::new(),
            tensors: BTreeMap::new(),
        };
        for (rel, listed) in by_file {
            let full = dir.join(&rel);
            if !full.is_file() {
                return Err(Error::in_file(
                    index_path,
                    format!(
                        "weight_map points at missing shard {} (for tensor {}): no such file in {}",
                        rel.display(),
                        listed[0],
                        dir.display()
                    ),
                ));
            }
            let opened = OpenSafetensors::open(&full)?;
            let fi = shards.files.len();
            for (info, offset) in opened.tensor_infos() {
                match index.weight_map.get(&info.name) {
                    None => {
                        return Err(Error::in_file(
                            index_path,
                            format!(
                                "shard {} holds tensor {}, which the weight_map does not list",
                                rel.display(),
                                info.name
                            ),
                        ))
                    }
                    Some(f) if safe_relative(f).ok().as_deref() != Some(rel.as_path()) => {
                        return Err(Error::in_file(
                            index_path,
                            format!(
                                "shard {} holds tensor {}, but the weight_map assigns it to shard {f}",
                                rel.display(),
                                info.name
                            ),
                        ))
                    }
                    Some(_) => {}
                }
                shards.tensors.insert(info.name.clone(), (info, fi, offset));
            }
            for t in listed {
                if !shards.tensors.contains_key(t.as_str()) {
                    return Err(Error::in_file(
                        index_path,
                        format!(
                            "weight_map names tensor {t} in shard {}, which does not contain it",
                            rel.display()
                        ),
                    ));
                }
            }
            shards.files.push(opened);
        }
        Ok(shards)
    }

    pub fn get(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.get(name).map(|(t, _, _)| t)
    }

    /// All tensors, sorted by name.
    pub fn tensors(&self) -> Vec<&TensorInfo> {
        self.tensors.values().map(|(t, _, _)| t).collect()
    }

    /// The files, in the order of their paths.
    pub fn files(&self) -> Vec<&Path> {
        self.files.iter().map(|f| f.path.as_path()).collect()
    }

    fn entry(&self, name: &str) -> Result<&(TensorInfo, usize, u64)> {
        self.tensors.get(name).ok_or_else(|| {
            Error::in_file(
                &self.dir,
                format!("the packed model has no tensor named {name}"),
            )
        })
    }
}

impl TensorReader for PackedShards {
    fn origin(&self) -> &Path {
        &self.dir
    }
    fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.get(name)
    }
    fn read_range(&self, name: &str, start: usize, len: usize, buf: &mut Vec<u8>) -> Result<()> {
        buf.clear();
        let (info, file, offset) = self.entry(name)?;
        check_range(info, start, len)?;
        buf.resize(len, 0);
        let r = self.files[*file].read_at(name, *offset, start, buf);
        if r.is_err() {
            buf.clear();
        }
        r
    }
    fn read_all(&self, name: &str) -> Result<Vec<u8>> {
        let (info, file, offset) = self.entry(name)?;
        let mut buf = vec![0u8; info.byte_len()];
        self.files[*file].read_at(name, *offset, 0, &mut buf)?;
        Ok(buf)
    }
}

/// A packed model folder: its config, index and shards.
pub struct PackedModel {
    pub dir: PathBuf,
    pub config: PackedConfig,
    pub index: Index,
    pub shards: PackedShards,
}

impl PackedModel {
    pub fn open(dir: &Path) -> Result<PackedModel> {
        if !dir.is_dir() {
            return Err(Error::in_file(dir, "is not a packed model folder"));
        }
        let index_path = dir.join(INDEX_FILE);
        let config_path = dir.join(CONFIG_FILE);
        if !index_path.is_file() {
            return Err(Error::in_file(
                dir,
                format!("no {INDEX_FILE}: not a packed model (or an interrupted pack)"),
            ));
        }
        let index: Index =
            serde_json::from_slice(&std::fs::read(&index_path).with_path(&index_path)?)
                .map_err(|e| Error::in_file(&index_path, format!("not a valid index: {e}")))?;
        if index.metadata.format.as_deref() != Some(PACKED_FORMAT) {
            return Err(Error::in_file(
                &index_path,
                "not an l3kit packed model (metadata.format is not l3kit-packed)",
            ));
        }
        let config_json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&config_path).with_path(&config_path)?)
                .map_err(|e| Error::in_file(&config_path, format!("not valid JSON: {e}")))?;
        let l3 = config_json
            .get("l3")
            .ok_or_else(|| Error::in_file(&config_path, "has no \"l3\" section"))?;
        let config: PackedConfig = serde_json::from_value(l3.clone())
            .map_err(|e| Error::in_file(&config_path, format!("invalid \"l3\" section: {e}")))?;
        if config.format != PACKED_FORMAT || config.format_version != PACKED_VERSION {
            return Err(Error::in_file(
                &config_path,
                format!(
                    "packed format {} version {} is not supported (this l3kit reads {PACKED_FORMAT} {PACKED_VERSION})",
                    config.format, config.format_version
                ),
            ));
        }
        let shards = PackedShards::open(dir, &index_path, &index)?;
        Ok(PackedModel {
            dir: dir.to_path_buf(),
            config,
            index,
            shards,
        })
    }

    /// The layer's full bounds, from its parts' offsets.
    pub fn bounds(&self, layer: usize) -> Result<Vec<i64>> {
        let l = &self.config.layers[layer];
        let mut bounds = Vec::with_capacity(self.config.vocab_size as usize + 1);
        for part in &l.parts {
            let offsets = read_bounds(&self.shards, &part.offsets)?;
            if bounds.is_empty() {
                bounds.extend_from_slice(&offsets);
            } else {
                bounds.extend_from_slice(&offsets[1..]);
            }
        }
        Ok(bounds)
    }
}
