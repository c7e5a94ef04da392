//! Reading trained checkpoints, the sources `l3kit pack` streams from.
//!
//! [`Checkpoint::open`] accepts a single `.safetensors` file, a PyTorch zip checkpoint
//! (`.pt`, `.pth`, `.bin`, as written by `torch.save`), an index file
//! (`model.safetensors.index.json`, `pytorch_model.bin.index.json`) or a folder holding one of
//! these. It lists every tensor (name, dtype, shape, file) and reads any byte range of a tensor's
//! row-major little-endian data.
//!
//! Safetensors headers are parsed here rather than by the safetensors crate so that every
//! problem gets a precise message (file, tensor, what is wrong), and data is read with positioned
//! reads (`pread`) on one open file per shard rather than through a memory map: packing a
//! 10 GB checkpoint streams through it, and touched mmap pages would count toward the process's
//! resident memory. A range read is one `pread`.
//!
//! PyTorch files are read by l3kit's own zip and pickle readers ([`pytorch`]), which run no
//! code and validate every tensor record before listing it: a tensor is read exactly or the
//! file is refused with an error naming it.
//!
//! Files found inside a checkpoint folder (shards, the index, the companion files `pack`
//! copies) are read only when they really are inside it: a symbolic link is followed when its
//! target stays inside the folder, or, for a Hugging Face cache snapshot
//! (`.../models--ORG--NAME/snapshots/REV/`), inside that model's `blobs/` folder. Any other
//! link is an error naming it, so a planted `tokenizer.json -> /etc/passwd` is never read.

use crate::formats::safetensors::{check_range, OpenSafetensors};
pub use crate::formats::safetensors::{checked_byte_len, parse_dtype, TensorInfo, TensorReader};
use crate::util::error::{Error, IoContext, Result};
use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

mod archive;
pub mod detect;
pub mod dialect;
mod index;
pub mod map;
pub mod moe;
mod pickle;
mod pytorch;

pub use detect::{detect_source, resolve_bounds};
pub use dialect::{Detected, Dialect, LayerTensors};
pub use map::MapFile;

pub use pickle::MAX_DEPTH as MAX_PICKLE_DEPTH;
use pytorch::PtFile;
pub use pytorch::{MAX_PICKLE_BYTES, PT_NESTED_KEYS};

/// What kind of files a checkpoint is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Safetensors,
    PyTorch,
    /// An index whose shards are of both kinds.
    Mixed,
}

#[derive(Debug, Clone, Copy)]
enum Loc {
    /// Shard index and absolute file offset of the tensor's first byte.
    St { file: usize, offset: u64 },
    /// PyTorch file index and the tensor's layout in it.
    Pt { file: usize, layout: usize },
}

struct Entry {
    info: TensorInfo,
    loc: Loc,
}

/// A checkpoint opened for reading; see the module documentation.
pub struct Checkpoint {
    path: PathBuf,
    folder: Option<Folder>,
    files: Vec<PathBuf>,
    st: Vec<OpenSafetensors>,
    pt: Vec<PtFile>,
    entries: BTreeMap<String, Entry>,
    index_metadata: BTreeMap<String, serde_json::Value>,
    /// The most recently gathered strided PyTorch tensor.
    cache: Mutex<Option<(String, Arc<Vec<u8>>)>>,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("path", &self.path)
            .field("files", &self.files)
            .field("tensors", &self.entries.len())
            .finish()
    }
}

const PT_EXTENSIONS: [&str; 4] = ["pt", "pth", "bin", "ckpt"];

fn has_ext(path: &Path, exts: &[&str]) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| exts.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// What the first bytes of a file say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sniff {
    Zip,
    Safetensors,
    Pickle,
    Unknown,
}

/// Open a data file (never blocking on a FIFO, refusing anything but a regular file) and say
/// what its first bytes make it.
fn sniff(path: &Path) -> Result<(Sniff, File)> {
    let file = crate::util::fs::open_regular(path)?;
    let mut head = [0u8; 9];
    let mut n = 0;
    while n < head.len() {
        match file.read_at(&mut head[n..], n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io(path, e)),
        }
    }
    let head = &head[..n];
    let kind = if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        Sniff::Zip
    } else if head.len() == 9 && head[8] == b'{' {
        Sniff::Safetensors
    } else if head.first() == Some(&0x80) {
        Sniff::Pickle
    } else {
        Sniff::Unknown
    };
    Ok((kind, file))
}

/// A checkpoint folder, and the rule for which files found in it may be read.
#[derive(Debug, Clone)]
struct Folder {
    /// As the user gave it (for messages and joined paths).
    dir: PathBuf,
    /// With every link resolved.
    real: PathBuf,
    /// For a Hugging Face cache snapshot (`models--ORG--NAME/snapshots/REV`), the model's
    /// `blobs` folder, where the snapshot's links point.
    blobs: Option<PathBuf>,
}

impl Folder {
    fn new(dir: &Path) -> Result<Folder> {
        let real = dir
            .canonicalize()
            .map_err(|e| Error::in_file(dir, format!("cannot open the checkpoint folder: {e}")))?;
        let blobs = (|| {
            let snapshots = real.parent()?;
            let model = snapshots.parent()?;
            let is_cache = snapshots.file_name()? == "snapshots"
                && model.file_name()?.to_str()?.starts_with("models--");
            is_cache.then(|| model.join("blobs"))
        })();
        Ok(Folder {
            dir: dir.to_path_buf(),
            real,
            blobs,
        })
    }

    /// Refuse `path`, a file found in the folder, when it resolves outside it (a symbolic link
    /// to elsewhere, or a path through a linked folder), except into the cache's blobs.
    fn check(&self, path: &Path) -> Result<()> {
        let target = match path.canonicalize() {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let dangling =
                    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
                return Err(Error::in_file(
                    path,
                    if dangling {
                        "is a dangling symbolic link"
                    } else {
                        "no such file"
                    },
                ));
            }
            Err(e) => return Err(Error::io(path, e)),
        };
        let inside = target.starts_with(&self.real)
            || self.blobs.as_ref().is_some_and(|b| target.starts_with(b));
        if inside {
            return Ok(());
        }
        Err(Error::in_file(
            path,
            format!(
                "is a symbolic link to {}, outside the checkpoint folder {}; l3kit follows links \
                 only within the folder (and, in a Hugging Face cache snapshot, into the model's \
                 blobs/ folder): copy the file into the folder, or give the target's own path",
                target.display(),
                self.real.display()
            ),
        ))
    }
}

/// Does a file name look like a model's weights (`model*.safetensors`, `model_000100.pt`,
/// `pytorch_model.bin`) rather than something kept beside them?
fn model_like(name: &str) -> bool {
    name.starts_with("model") || name.starts_with("pytorch_model")
}

impl Checkpoint {
    /// A .safetensors file, a PyTorch .pt/.pth/.bin file, an index file, or a folder holding
    /// an index (`model.safetensors.index.json`, `pytorch_model.bin.index.json`, + shards),
    /// `model.safetensors`, or a single data file (among several, the one named like a model's
    /// weights: `model*` or `pytorch_model*`).
    pub fn open(path: &Path) -> Result<Checkpoint> {
        let meta = std::fs::metadata(path)
            .map_err(|e| Error::in_file(path, format!("cannot open the checkpoint: {e}")))?;
        let mut ck = Checkpoint {
            path: path.to_path_buf(),
            folder: None,
            files: Vec::new(),
            st: Vec::new(),
            pt: Vec::new(),
            entries: BTreeMap::new(),
            index_metadata: BTreeMap::new(),
            cache: Mutex::new(None),
        };
        if meta.is_dir() {
            ck.folder = Some(Folder::new(path)?);
            ck.open_folder(path)?;
        } else if file_name(path).ends_with(".index.json") {
            let folder = match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            };
            ck.folder = Some(Folder::new(&folder)?);
            ck.open_index(path, &folder)?;
        } else {
            let tensors = ck.open_data_file(path)?;
            for (name, entry) in tensors {
                ck.entries.insert(name, entry);
            }
        }
        Ok(ck)
    }

    /// A file found inside the checkpoint folder, checked against the folder's link rule.
    fn folder_path(&self, name: &Path) -> Result<PathBuf> {
        let folder = self.folder.as_ref().expect("opened from a folder");
        let p = folder.dir.join(name);
        folder.check(&p)?;
        Ok(p)
    }

    fn open_folder(&mut self, dir: &Path) -> Result<()> {
        let mut names: Vec<String> = Vec::new();
        for entry in std::fs::read_dir(dir).with_path(dir)? {
            let entry = entry.with_path(dir)?;
            // Links are followed to skip folders; everything else (a dangling link, a FIFO) is
            // listed, so that choosing it gives an error saying what it is.
            if !std::fs::metadata(entry.path()).is_ok_and(|m| m.is_dir()) {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        names.sort();
        let list = |v: &[&String]| v.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ");

        // 1. A safetensors index.
        let st_indexes: Vec<&String> = names
            .iter()
            .filter(|n| n.ends_with(".safetensors.index.json"))
            .collect();
        let chosen = if names.iter().any(|n| n == "model.safetensors.index.json") {
            Some("model.safetensors.index.json".to_string())
        } else if st_indexes.len() == 1 {
            Some(st_indexes[0].clone())
        } else if st_indexes.len() > 1 {
            return Err(Error::in_file(
                dir,
                format!(
                    "several safetensors index files ({}) and no model.safetensors.index.json; \
                     name the one to use",
                    list(&st_indexes)
                ),
            ));
        } else {
            None
        };
        if let Some(index) = chosen {
            let index = self.folder_path(Path::new(&index))?;
            return self.open_index(&index, dir);
        }

        // 2. `model.safetensors`, the conventional name; other files beside it (an
        // `allocation.safetensors`, say) are not part of the checkpoint.
        if names.iter().any(|n| n == "model.safetensors") {
            return self.open_single(Path::new("model.safetensors"));
        }

        // 3. A PyTorch index.
        let pt_indexes: Vec<&String> = names
            .iter()
            .filter(|n| n.ends_with(".index.json"))
            .collect();
        let chosen = if names.iter().any(|n| n == "pytorch_model.bin.index.json") {
            Some("pytorch_model.bin.index.json".to_string())
        } else if pt_indexes.len() == 1 {
            Some(pt_indexes[0].clone())
        } else if pt_indexes.len() > 1 {
            return Err(Error::in_file(
                dir,
                format!(
                    "several index files ({}) and no pytorch_model.bin.index.json; name the one \
                     to use",
                    list(&pt_indexes)
                ),
            ));
        } else {
            None
        };
        if let Some(index) = chosen {
            let index = self.folder_path(Path::new(&index))?;
            return self.open_index(&index, dir);
        }

        // 4. A single data file; among several, the one named like a model's weights (a
        // training run keeps `optim_*.pt`, goldens or an allocation beside `model_*.pt`).
        let data: Vec<&String> = names
            .iter()
            .filter(|n| {
                has_ext(Path::new(n), &["safetensors"]) || has_ext(Path::new(n), &PT_EXTENSIONS)
            })
            .collect();
        let pick: Vec<&String> = if data.len() > 1 {
            data.iter().copied().filter(|n| model_like(n)).collect()
        } else {
            data.clone()
        };
        match pick.len() {
            1 => self.open_single(Path::new(pick[0].as_str())),
            0 if data.is_empty() => Err(Error::in_file(
                dir,
                "no checkpoint found in this folder: expected model.safetensors.index.json, a \
                 .safetensors file, pytorch_model.bin.index.json, or a .pt/.pth/.bin file",
            )),
            _ => Err(Error::in_file(
                dir,
                format!(
                    "several checkpoint files ({}) and no index saying how they fit together; \
                     name the file to read, or add an index",
                    list(if pick.is_empty() { &data } else { &pick })
                ),
            )),
        }
    }

    /// Open the data file `name` of the folder.
    fn open_single(&mut self, name: &Path) -> Result<()> {
        let path = self.folder_path(name)?;
        let tensors = self.open_data_file(&path)?;
        for (name, entry) in tensors {
            self.entries.insert(name, entry);
        }
        Ok(())
    }

    /// Open one data file (safetensors or PyTorch, by content and name), register it in
    /// `files`, and return its tensors.
    fn open_data_file(&mut self, path: &Path) -> Result<Vec<(String, Entry)>> {
        let (kind, file) = sniff(path)?;
        let is_st_name = has_ext(path, &["safetensors"]);
        if kind == Sniff::Zip {
            self.open_pt(path, file)
        } else if kind == Sniff::Safetensors || is_st_name {
            drop(file);
            self.open_st(path)
        } else if kind == Sniff::Pickle {
            Err(Error::in_file(
                path,
                "a legacy (pre-zip) PyTorch pickle, which l3kit does not read: re-save it with \
                 a current torch.save, or convert it to safetensors",
            ))
        } else if has_ext(path, &PT_EXTENSIONS) {
            Err(Error::in_file(
                path,
                "not a PyTorch zip checkpoint (no zip signature) and not a safetensors file",
            ))
        } else {
            Err(Error::in_file(
                path,
                "neither a safetensors file nor a PyTorch zip checkpoint",
            ))
        }
    }

    fn open_st(&mut self, path: &Path) -> Result<Vec<(String, Entry)>> {
        let opened = OpenSafetensors::open(path)?;
        let idx = self.st.len();
        let out = opened
            .tensor_infos()
            .map(|(info, offset)| {
                let name = info.name.clone();
                let entry = Entry {
                    info,
                    loc: Loc::St { file: idx, offset },
                };
                (name, entry)
            })
            .collect();
        self.st.push(opened);
        self.files.push(path.to_path_buf());
        Ok(out)
    }

    /// The path this checkpoint was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The folder it came from (to find `config.json`), when opened from a folder or an index.
    pub fn folder(&self) -> Option<&Path> {
        self.folder.as_ref().map(|f| f.dir.as_path())
    }

    /// The file `name` of the checkpoint folder, when the checkpoint came from a folder and the
    /// file exists there; a link leaving the folder (see the module documentation) is an error.
    /// The file's kind is not checked: open it with `util::fs::open_regular` or `read_small`.
    pub fn companion(&self, name: &str) -> Result<Option<PathBuf>> {
        let Some(folder) = &self.folder else {
            return Ok(None);
        };
        let p = folder.dir.join(name);
        match std::fs::symlink_metadata(&p) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(&p, e)),
            Ok(_) => {
                folder.check(&p)?;
                Ok(Some(p))
            }
        }
    }

    /// Names of the checkpoint folder's entries that are not folders, sorted (empty when the
    /// checkpoint is a single file).
    pub fn folder_names(&self) -> Result<Vec<String>> {
        let Some(folder) = &self.folder else {
            return Ok(Vec::new());
        };
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&folder.dir).with_path(&folder.dir)? {
            let entry = entry.with_path(&folder.dir)?;
            if !std::fs::metadata(entry.path()).is_ok_and(|m| m.is_dir()) {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    /// Every data file, in a stable order (shards sorted by their path in the index).
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// What kind of files the checkpoint is made of.
    pub fn format(&self) -> Format {
        match (self.st.is_empty(), self.pt.is_empty()) {
            (false, true) => Format::Safetensors,
            (true, false) => Format::PyTorch,
            _ => Format::Mixed,
        }
    }

    /// All tensors, sorted by name.
    pub fn tensors(&self) -> Vec<&TensorInfo> {
        self.entries.values().map(|e| &e.info).collect()
    }

    /// Tensor names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(|k| k.as_str())
    }

    pub fn get(&self, name: &str) -> Option<&TensorInfo> {
        self.entries.get(name).map(|e| &e.info)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Sum of every tensor's byte size.
    pub fn total_bytes(&self) -> u64 {
        self.entries
            .values()
            .map(|e| e.info.byte_len() as u64)
            .sum()
    }

    /// The `__metadata__` of the safetensors data file `file` (empty for PyTorch files, files
    /// without metadata, and files not part of this checkpoint).
    pub fn metadata(&self, file: &Path) -> BTreeMap<String, String> {
        self.st
            .iter()
            .find(|f| f.path == file)
            .map(|f| f.header.metadata.clone())
            .unwrap_or_default()
    }

    /// The index's `metadata` object (empty when not opened from an index).
    pub fn index_metadata(&self) -> &BTreeMap<String, serde_json::Value> {
        &self.index_metadata
    }

    fn entry(&self, name: &str) -> Result<&Entry> {
        self.entries.get(name).ok_or_else(|| {
            Error::in_file(
                &self.path,
                format!("the checkpoint has no tensor named {name}"),
            )
        })
    }

    fn check_range(&self, e: &Entry, start: usize, len: usize) -> Result<()> {
        check_range(&e.info, start, len)
    }

    /// Little-endian bytes `[start, start+len)` of the tensor's row-major data, appended to
    /// `buf` after clearing it. On safetensors this is one positioned read.
    pub fn read_range(
        &self,
        name: &str,
        start: usize,
        len: usize,
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        let e = match self.entry(name) {
            Ok(e) => e,
            Err(err) => {
                buf.clear();
                return Err(err);
            }
        };
        if let Err(err) = self.check_range(e, start, len) {
            buf.clear();
            return Err(err);
        }
        match e.loc {
            Loc::St { .. } => {
                // Every byte is overwritten by the read, so only bytes beyond the buffer's
                // current length need initialising: a reused buffer costs no memset.
                if buf.len() >= len {
                    buf.truncate(len);
                } else {
                    buf.resize(len, 0);
                }
                let r = self.read_st(e, start, buf);
                if r.is_err() {
                    buf.clear();
                }
                r
            }
            Loc::Pt { .. } => {
                if buf.len() >= len {
                    buf.truncate(len);
                } else {
                    buf.resize(len, 0);
                }
                let r = self.read_pt(e, start, buf);
                if r.is_err() {
                    buf.clear();
                }
                r
            }
        }
    }

    /// Like [`Checkpoint::read_range`], filling `out` exactly (`len = out.len()`).
    pub fn read_into(&self, name: &str, start: usize, out: &mut [u8]) -> Result<()> {
        let e = self.entry(name)?;
        self.check_range(e, start, out.len())?;
        match e.loc {
            Loc::St { .. } => self.read_st(e, start, out),
            Loc::Pt { .. } => self.read_pt(e, start, out),
        }
    }

    /// The tensor's whole data.
    pub fn read_all(&self, name: &str) -> Result<Vec<u8>> {
        let e = self.entry(name)?;
        let mut buf = vec![0u8; e.info.byte_len()];
        match e.loc {
            Loc::St { .. } => self.read_st(e, 0, &mut buf)?,
            Loc::Pt { .. } => self.read_pt(e, 0, &mut buf)?,
        }
        Ok(buf)
    }

    fn read_st(&self, e: &Entry, start: usize, out: &mut [u8]) -> Result<()> {
        let Loc::St { file, offset } = e.loc else {
            unreachable!("read_st on a safetensors entry")
        };
        self.st[file].read_at(&e.info.name, offset, start, out)
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl TensorReader for Checkpoint {
    fn origin(&self) -> &Path {
        &self.path
    }
    fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.get(name)
    }
    fn read_range(&self, name: &str, start: usize, len: usize, buf: &mut Vec<u8>) -> Result<()> {
        Checkpoint::read_range(self, name, start, len, buf)
    }
    fn read_all(&self, name: &str) -> Result<Vec<u8>> {
        Checkpoint::read_all(self, name)
    }
}

#[cfg(test)]
mod tests;
