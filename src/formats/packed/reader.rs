//! The one reader of a packed model folder: `config.json`'s `l3` section, the index, and the
//! safetensors files the index lists (each header validated, every tensor where the index
//! says it is). Every consumer (`inspect`, `verify`, `forward`, `unpack`, `upload`, the table
//! store) opens packed folders through [`PackedModel::open`].
//!
//! `open` checks every number of the `l3` section against the others and against the tensors
//! actually present (dtype, shape, byte length) before anything is allocated from it, and reads
//! every offsets tensor to check that it is exactly its part's slice of the layer's bounds. A
//! model that opened is therefore safe to index with: every token below `vocab_size` has a
//! block of 1 to `k_max` rows inside its part's rows tensor, scales exist where the dtype needs
//! them, and every dense parameter has the shape its layer's sizes say. The hashes and the
//! byte layout are left to [`super::check_packed`], which reads every byte.

use super::validate;
use super::{PackedConfig, CONFIG_FILE, INDEX_FILE, PACKED_FORMAT, PACKED_VERSION};
use crate::formats::safetensors::{
    check_range, safe_relative, OpenSafetensors, TensorInfo, TensorReader,
};
use crate::util::error::{Error, Result};
use crate::util::fs::{self as ufs, limits};
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
    pub format_version: Option<u64>,
    #[serde(default)]
    pub sha256: BTreeMap<String, String>,
}

/// Where one tensor of a packed folder lives.
struct Located {
    info: TensorInfo,
    /// Position in `PackedShards::files`.
    file: usize,
    /// Absolute byte offset of the tensor's data in its file.
    offset: u64,
}

/// The safetensors files of a packed folder, as its index lists them.
pub struct PackedShards {
    dir: PathBuf,
    files: Vec<OpenSafetensors>,
    /// Each file's path relative to the folder, as the index spells it (normalised).
    rel: Vec<PathBuf>,
    tensors: BTreeMap<String, Located>,
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
            rel: Vec::new(),
            tensors: BTreeMap::new(),
        };
        for (rel, listed) in by_file {
            let full = dir.join(&rel);
            let named = |what: String| {
                Error::in_file(
                    index_path,
                    format!(
                        "weight_map names shard {} (for tensor {}), {what}",
                        rel.display(),
                        listed[0]
                    ),
                )
            };
            if std::fs::symlink_metadata(&full).is_err() {
                return Err(named(format!("which does not exist in {}", dir.display())));
            }
            inside_folder(dir, &full).map_err(|e| named(e.to_string()))?;
            let opened = OpenSafetensors::open(&full).map_err(|e| match e {
                // What the file is instead (a FIFO, a folder, a device) says more than the
                // index that names it, so keep the reader's words.
                Error::Input(m) => named(format!("which cannot be read: {m}")),
                other => other,
            })?;
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
                shards.tensors.insert(
                    info.name.clone(),
                    Located {
                        info,
                        file: fi,
                        offset,
                    },
                );
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
            shards.rel.push(rel);
        }
        Ok(shards)
    }

    pub fn get(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.get(name).map(|l| &l.info)
    }

    /// All tensors, sorted by name.
    pub fn tensors(&self) -> Vec<&TensorInfo> {
        self.tensors.values().map(|l| &l.info).collect()
    }

    /// The files, in the order of their paths.
    pub fn files(&self) -> Vec<&Path> {
        self.files.iter().map(|f| f.path.as_path()).collect()
    }

    /// The opened files with their paths relative to the folder, in the order of their paths.
    pub fn shards(&self) -> impl Iterator<Item = (&Path, &OpenSafetensors)> {
        self.rel.iter().map(PathBuf::as_path).zip(&self.files)
    }

    /// Which file (a position in [`PackedShards::shards`]) holds `name`.
    pub fn file_of(&self, name: &str) -> Option<usize> {
        self.tensors.get(name).map(|l| l.file)
    }

    /// The opened file at `index` (a position in [`PackedShards::shards`]).
    pub fn file(&self, index: usize) -> Option<&OpenSafetensors> {
        self.files.get(index)
    }

    /// The path of file `index` relative to the folder, as the index spells it (normalised).
    pub fn rel_path(&self, index: usize) -> Option<&Path> {
        self.rel.get(index).map(PathBuf::as_path)
    }

    /// How many tensors file `index` holds.
    pub fn tensors_in_file(&self, index: usize) -> usize {
        self.tensors.values().filter(|t| t.file == index).count()
    }

    /// Absolute byte offset of `name`'s data in its file.
    pub fn data_offset(&self, name: &str) -> Option<u64> {
        self.tensors.get(name).map(|l| l.offset)
    }

    fn entry(&self, name: &str) -> Result<&Located> {
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
        let l = self.entry(name)?;
        check_range(&l.info, start, len)?;
        buf.resize(len, 0);
        let r = self.files[l.file].read_at(name, l.offset, start, buf);
        if r.is_err() {
            buf.clear();
        }
        r
    }
    fn read_all(&self, name: &str) -> Result<Vec<u8>> {
        let l = self.entry(name)?;
        // The header parser checked this size against the bytes the file holds.
        let mut buf = vec![0u8; l.info.byte_len()];
        self.files[l.file].read_at(name, l.offset, 0, &mut buf)?;
        Ok(buf)
    }
}

/// A packed model folder: its config, index and shards, validated against each other.
pub struct PackedModel {
    pub dir: PathBuf,
    pub config: PackedConfig,
    pub index: Index,
    pub shards: PackedShards,
    /// `config.json` as read and validated (the model's own keys and the `l3` section).
    pub config_json: serde_json::Value,
    /// Each layer's bounds (vocab_size + 1 entries), read from its offsets tensors.
    bounds: Vec<Vec<i64>>,
}

/// Refuse a path inside a packed folder that resolves (through symlinks) outside it.
pub fn inside_folder(dir: &Path, path: &Path) -> Result<()> {
    if ufs::is_inside(path, dir)? {
        return Ok(());
    }
    let target = ufs::resolve(path)?;
    Err(Error::in_file(
        path,
        format!(
            "is a symbolic link to {}, outside the folder {}: a packed folder's files must stay \
             inside it (remove the link, or put the file itself there)",
            target.display(),
            dir.display()
        ),
    ))
}

/// Read a small JSON file of the folder (bounded, regular files only, inside the folder).
fn read_json(dir: &Path, path: &Path, limit: u64, what: &str) -> Result<serde_json::Value> {
    inside_folder(dir, path)?;
    let bytes = ufs::read_small(path, limit, what)?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Error::in_file(path, format!("is not valid JSON: {e}")))
}

impl PackedModel {
    /// Open a packed folder: read its index and config, open every shard the index lists and
    /// validate the `l3` section against the tensors (see the module's documentation).
    pub fn open(dir: &Path) -> Result<PackedModel> {
        let index = Self::read_index(dir)?;
        let index_path = dir.join(INDEX_FILE);
        let config_path = dir.join(CONFIG_FILE);
        let config_json = read_json(dir, &config_path, limits::CONFIG, "a config file")?;
        let l3 = config_json
            .get("l3")
            .ok_or_else(|| Error::in_file(&config_path, "has no \"l3\" section"))?;
        let config: PackedConfig = serde_json::from_value(l3.clone())
            .map_err(|_| Error::in_file(&config_path, validate::locate_serde_error(l3)))?;
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
        let bounds = validate::validate(&config, &shards, &config_path)?;
        Ok(PackedModel {
            dir: dir.to_path_buf(),
            config,
            index,
            shards,
            config_json,
            bounds,
        })
    }

    /// Read and check a packed folder's index alone (what `inspect --check` re-hashes when
    /// the folder does not open).
    pub fn read_index(dir: &Path) -> Result<Index> {
        match std::fs::metadata(dir) {
            Err(_) => return Err(Error::in_file(dir, "no such folder")),
            Ok(m) if !m.is_dir() => {
                return Err(Error::in_file(
                    dir,
                    format!("is {}, not a packed model folder", ufs::kind_of(&m)),
                ))
            }
            Ok(_) => {}
        }
        let index_path = dir.join(INDEX_FILE);
        if std::fs::symlink_metadata(&index_path).is_err() {
            return Err(Error::in_file(
                dir,
                format!("no {INDEX_FILE}: not a packed model (or an interrupted pack)"),
            ));
        }
        let index_json = read_json(dir, &index_path, limits::INDEX, "an index")?;
        let index: Index = serde_json::from_value(index_json)
            .map_err(|e| Error::in_file(&index_path, format!("not a valid index: {e}")))?;
        if index.metadata.format.as_deref() != Some(PACKED_FORMAT) {
            return Err(Error::in_file(
                &index_path,
                "not an l3kit packed model (metadata.format is not l3kit-packed)",
            ));
        }
        if let Some(v) = index.metadata.format_version {
            if v != PACKED_VERSION as u64 {
                return Err(Error::in_file(
                    &index_path,
                    format!(
                        "metadata.format_version is {v}; this l3kit reads version {PACKED_VERSION}"
                    ),
                ));
            }
        }
        for (file, hash) in &index.metadata.sha256 {
            if let Err(why) = safe_relative(file) {
                return Err(Error::in_file(
                    &index_path,
                    format!("metadata.sha256 lists \"{file}\": {why}"),
                ));
            }
            if hash.len() != 64 || !hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                return Err(Error::in_file(
                    &index_path,
                    format!("metadata.sha256 of {file} is {hash:?}, not 64 lowercase hex digits"),
                ));
            }
        }
        Ok(index)
    }

    /// The layer's full bounds (vocab_size + 1 entries, from 0 to n_emb), from its offsets.
    pub fn bounds(&self, layer: usize) -> Result<Vec<i64>> {
        self.layer_bounds(layer).map(<[i64]>::to_vec)
    }

    /// [`PackedModel::bounds`] without the copy.
    pub fn layer_bounds(&self, layer: usize) -> Result<&[i64]> {
        self.bounds.get(layer).map(Vec::as_slice).ok_or_else(|| {
            Error::input(format!(
                "{}: the packed model has {} L3 layers, there is no layer {layer}",
                self.dir.display(),
                self.bounds.len()
            ))
        })
    }
}
