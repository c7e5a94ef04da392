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
//! PyTorch files are read with candle's pickle reader, which interprets the pickle without
//! running any code. A tensor is loaded whole on first access and the most recently loaded one
//! is cached, so repeated range reads of one tensor load it once. Calls into the pickle reader
//! are guarded with `catch_unwind`, so a malformed file gives an error, not a panic.
//! Limitation (candle's): tensors whose storage type the reader does not know (int32, int16,
//! bool, ...) are skipped with a message on stderr rather than listed.

use crate::util::error::{Error, IoContext, Result};
use crate::util::json::json_kind;
use safetensors::Dtype;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Largest safetensors header accepted (the safetensors crate's own limit).
pub const MAX_HEADER_LEN: u64 = 100 * 1024 * 1024;

/// Keys tried, in order, when a PyTorch file has no tensors at its top level.
pub const PT_NESTED_KEYS: [&str; 3] = ["state_dict", "model", "module"];

/// One tensor of a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// The data file holding the tensor.
    pub file: PathBuf,
}

impl TensorInfo {
    /// Number of elements (1 for a scalar).
    pub fn numel(&self) -> usize {
        // Validated when the checkpoint was opened: the product does not overflow.
        self.shape.iter().product()
    }

    /// Size of the tensor's data in bytes.
    pub fn byte_len(&self) -> usize {
        self.numel() * self.dtype.bitsize() / 8
    }
}

/// Byte size of a tensor, `None` on overflow or when sub-byte elements do not fill whole bytes.
pub fn checked_byte_len(dtype: Dtype, shape: &[usize]) -> Option<usize> {
    let numel = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))?;
    let bits = numel.checked_mul(dtype.bitsize())?;
    (bits % 8 == 0).then_some(bits / 8)
}

/// What kind of files a checkpoint is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Safetensors,
    PyTorch,
    /// An index whose shards are of both kinds.
    Mixed,
}

/// One tensor entry of a safetensors header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderTensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Offsets relative to the start of the data section, `begin..end`.
    pub begin: u64,
    pub end: u64,
}

/// A parsed and validated safetensors header.
#[derive(Debug, Clone)]
pub struct SafetensorsHeader {
    /// Absolute file offset of the data section (8 + header length).
    pub data_start: u64,
    /// Bytes from `data_start` to the end of the file.
    pub data_len: u64,
    /// The `__metadata__` map (values that are not strings are kept as JSON text).
    pub metadata: BTreeMap<String, String>,
    /// Tensors in header order.
    pub tensors: Vec<HeaderTensor>,
}

/// Parse and validate the header of the safetensors file `file`, opened from `path`.
///
/// Checks: the file holds the 8-byte length and the header it announces; the header is a JSON
/// object; every tensor entry has a known dtype, a shape and two data offsets; no name appears
/// twice; offsets are in order and inside the data section; each tensor's byte range matches
/// its dtype and shape; no two tensors overlap.
pub fn read_safetensors_header(path: &Path, file: &File) -> Result<SafetensorsHeader> {
    let file_len = file.metadata().with_path(path)?.len();
    if file_len < 8 {
        return Err(Error::in_file(
            path,
            format!(
                "truncated: the file has {file_len} bytes, fewer than the 8-byte header length \
                 a safetensors file starts with"
            ),
        ));
    }
    let mut len_bytes = [0u8; 8];
    file.read_exact_at(&mut len_bytes, 0).with_path(path)?;
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > file_len - 8 {
        return Err(Error::in_file(
            path,
            format!(
                "header length {header_len} reaches beyond the end of the file ({file_len} \
                 bytes): the file is truncated or not a safetensors file"
            ),
        ));
    }
    if header_len > MAX_HEADER_LEN {
        return Err(Error::in_file(
            path,
            format!("header length {header_len} is larger than the {MAX_HEADER_LEN}-byte limit"),
        ));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact_at(&mut header, 8).with_path(path)?;
    let data_start = 8 + header_len;
    let data_len = file_len - data_start;

    let value: serde_json::Value = serde_json::from_slice(&header)
        .map_err(|e| Error::in_file(path, format!("the header is not JSON: {e}")))?;
    if !value.is_object() {
        return Err(Error::in_file(
            path,
            format!(
                "the header is not a JSON object (it is {})",
                json_kind(&value)
            ),
        ));
    }
    // serde_json's map keeps the last of duplicate keys; parse again, keeping every entry.
    let entries: OrderedEntries = serde_json::from_slice(&header)
        .map_err(|e| Error::in_file(path, format!("the header is not JSON: {e}")))?;

    let mut metadata = BTreeMap::new();
    let mut tensors: Vec<HeaderTensor> = Vec::with_capacity(entries.0.len());
    let mut seen = std::collections::HashSet::new();
    for (name, entry) in entries.0 {
        if name == "__metadata__" {
            if let serde_json::Value::Object(map) = entry {
                for (k, v) in map {
                    let v = match v {
                        serde_json::Value::String(s) => s,
                        other => other.to_string(),
                    };
                    metadata.insert(k, v);
                }
            }
            continue;
        }
        if !seen.insert(name.clone()) {
            return Err(Error::in_file(
                path,
                format!("tensor {name} appears twice in the header"),
            ));
        }
        tensors.push(parse_tensor_entry(path, &name, &entry, data_len)?);
    }

    // Overlap check: sort by offsets, compare each non-empty range with the furthest end so far.
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by_key(|&i| (tensors[i].begin, tensors[i].end));
    let mut furthest: Option<usize> = None;
    for &i in &order {
        let t = &tensors[i];
        if t.begin == t.end {
            continue;
        }
        if let Some(j) = furthest {
            let prev = &tensors[j];
            if t.begin < prev.end {
                return Err(Error::in_file(
                    path,
                    format!(
                        "tensors {} (data_offsets [{}, {}]) and {} (data_offsets [{}, {}]) \
                         overlap",
                        prev.name, prev.begin, prev.end, t.name, t.begin, t.end
                    ),
                ));
            }
        }
        match furthest {
            Some(j) if tensors[j].end >= t.end => {}
            _ => furthest = Some(i),
        }
    }

    Ok(SafetensorsHeader {
        data_start,
        data_len,
        metadata,
        tensors,
    })
}

/// How a JSON value is described in error messages ("a number", "an array", ...).
fn parse_tensor_entry(
    path: &Path,
    name: &str,
    entry: &serde_json::Value,
    data_len: u64,
) -> Result<HeaderTensor> {
    let bad = |msg: String| Error::in_file(path, format!("tensor {name}: {msg}"));
    let obj = entry
        .as_object()
        .ok_or_else(|| bad(format!("its entry is {}, not an object", json_kind(entry))))?;
    let field = |key: &str| {
        obj.get(key)
            .ok_or_else(|| bad(format!("the header entry is missing \"{key}\"")))
    };
    let dtype_value = field("dtype")?;
    let dtype_name = dtype_value.as_str().ok_or_else(|| {
        bad(format!(
            "\"dtype\" is {}, not a string",
            json_kind(dtype_value)
        ))
    })?;
    let dtype =
        parse_dtype(dtype_name).ok_or_else(|| bad(format!("unknown dtype \"{dtype_name}\"")))?;
    let shape_value = field("shape")?;
    let shape = shape_value
        .as_array()
        .and_then(|dims| {
            dims.iter()
                .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
                .collect::<Option<Vec<usize>>>()
        })
        .ok_or_else(|| {
            bad(format!(
                "\"shape\" must be an array of non-negative integers, found {shape_value}"
            ))
        })?;
    let offsets_value = field("data_offsets")?;
    let offsets = offsets_value
        .as_array()
        .and_then(|o| o.iter().map(|v| v.as_u64()).collect::<Option<Vec<u64>>>())
        .filter(|o| o.len() == 2)
        .ok_or_else(|| {
            bad(format!(
                "\"data_offsets\" must be two non-negative integers, found {offsets_value}"
            ))
        })?;
    let (begin, end) = (offsets[0], offsets[1]);
    if begin > end {
        return Err(bad(format!(
            "data_offsets [{begin}, {end}] are out of range: the begin is past the end"
        )));
    }
    if end > data_len {
        return Err(bad(format!(
            "data_offsets [{begin}, {end}] reach beyond the data section ({data_len} bytes): \
             the file is truncated or the offsets are out of range"
        )));
    }
    let need = checked_byte_len(dtype, &shape).ok_or_else(|| {
        bad(format!(
            "shape {shape:?} of dtype {dtype:?} is too large (its size overflows) or does not \
             fill whole bytes"
        ))
    })?;
    if need as u64 != end - begin {
        return Err(bad(format!(
            "dtype {dtype:?} and shape {shape:?} need {need} bytes, but data_offsets \
             [{begin}, {end}] hold {}: the dtype or shape does not match the data size",
            end - begin
        )));
    }
    Ok(HeaderTensor {
        name: name.to_string(),
        dtype,
        shape,
        begin,
        end,
    })
}

/// A safetensors dtype from its header spelling ("F32", "BF16", ...).
pub fn parse_dtype(name: &str) -> Option<Dtype> {
    serde_json::from_value(serde_json::Value::String(name.to_string())).ok()
}

/// The entries of a JSON object in file order, duplicates kept.
struct OrderedEntries(Vec<(String, serde_json::Value)>);

impl<'de> serde::Deserialize<'de> for OrderedEntries {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = OrderedEntries;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<OrderedEntries, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = map.next_entry::<String, serde_json::Value>()? {
                    out.push(entry);
                }
                Ok(OrderedEntries(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// An open safetensors data file.
struct StFile {
    path: PathBuf,
    file: File,
    data_start: u64,
    metadata: BTreeMap<String, String>,
}

/// An open PyTorch zip checkpoint.
struct PtFile {
    path: PathBuf,
    pth: candle_core::pickle::PthTensors,
}

#[derive(Debug, Clone, Copy)]
enum Loc {
    /// Shard index and absolute file offset of the tensor's first byte.
    St {
        file: usize,
        offset: u64,
    },
    Pt {
        file: usize,
    },
}

struct Entry {
    info: TensorInfo,
    loc: Loc,
}

/// A checkpoint opened for reading; see the module documentation.
pub struct Checkpoint {
    path: PathBuf,
    folder: Option<PathBuf>,
    files: Vec<PathBuf>,
    st: Vec<StFile>,
    pt: Vec<PtFile>,
    entries: BTreeMap<String, Entry>,
    index_metadata: BTreeMap<String, serde_json::Value>,
    /// The most recently loaded PyTorch tensor.
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

fn sniff(path: &Path) -> Result<Sniff> {
    let file = File::open(path).with_path(path)?;
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
    Ok(
        if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
            Sniff::Zip
        } else if head.len() == 9 && head[8] == b'{' {
            Sniff::Safetensors
        } else if head.first() == Some(&0x80) {
            Sniff::Pickle
        } else {
            Sniff::Unknown
        },
    )
}

impl Checkpoint {
    /// A .safetensors file, a PyTorch .pt/.pth/.bin file, an index file, or a folder holding
    /// either `model.safetensors.index.json` (+ shards), a single `*.safetensors`,
    /// `pytorch_model.bin.index.json` (+ shards) or a single .pt/.bin.
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
            ck.folder = Some(path.to_path_buf());
            ck.open_folder(path)?;
        } else if file_name(path).ends_with(".index.json") {
            let folder = match path.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            };
            ck.folder = Some(folder.clone());
            ck.open_index(path, &folder)?;
        } else {
            let tensors = ck.open_data_file(path)?;
            for (name, entry) in tensors {
                ck.entries.insert(name, entry);
            }
        }
        Ok(ck)
    }

    fn open_folder(&mut self, dir: &Path) -> Result<()> {
        let mut names: Vec<String> = Vec::new();
        for entry in std::fs::read_dir(dir).with_path(dir)? {
            let entry = entry.with_path(dir)?;
            let p = entry.path();
            // Follows symlinks (the Hugging Face cache links files to blobs).
            if p.is_file() {
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
            return self.open_index(&dir.join(index), dir);
        }

        // 2. A single safetensors file.
        let st_files: Vec<&String> = names
            .iter()
            .filter(|n| has_ext(Path::new(n), &["safetensors"]))
            .collect();
        // `model.safetensors` is the conventional name; other files beside it (an
        // `allocation.safetensors`, say) are not part of the checkpoint.
        if st_files.iter().any(|n| *n == "model.safetensors") {
            return self.open_single(&dir.join("model.safetensors"));
        }
        match st_files.len() {
            0 => {}
            1 => return self.open_single(&dir.join(st_files[0])),
            _ => {
                return Err(Error::in_file(
                    dir,
                    format!(
                        "several .safetensors files ({}) and no model.safetensors.index.json \
                         saying how they fit together; name one file, or add the index",
                        list(&st_files)
                    ),
                ))
            }
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
            return self.open_index(&dir.join(index), dir);
        }

        // 4. A single PyTorch file; among several, the one named like a model's weights.
        let pt_files: Vec<&String> = names
            .iter()
            .filter(|n| has_ext(Path::new(n), &PT_EXTENSIONS))
            .collect();
        let pick: Vec<&String> = if pt_files.len() > 1 {
            pt_files
                .iter()
                .copied()
                .filter(|n| n.starts_with("model") || n.starts_with("pytorch_model"))
                .collect()
        } else {
            pt_files.clone()
        };
        match pick.len() {
            1 => self.open_single(&dir.join(pick[0])),
            0 if pt_files.is_empty() => Err(Error::in_file(
                dir,
                "no checkpoint found in this folder: expected model.safetensors.index.json, a \
                 .safetensors file, pytorch_model.bin.index.json, or a .pt/.pth/.bin file",
            )),
            _ => Err(Error::in_file(
                dir,
                format!(
                    "several PyTorch files ({}) and no index; name the file to read",
                    list(&pt_files)
                ),
            )),
        }
    }

    fn open_single(&mut self, path: &Path) -> Result<()> {
        let tensors = self.open_data_file(path)?;
        for (name, entry) in tensors {
            self.entries.insert(name, entry);
        }
        Ok(())
    }

    /// Open one data file (safetensors or PyTorch, by content and name), register it in
    /// `files`, and return its tensors.
    fn open_data_file(&mut self, path: &Path) -> Result<Vec<(String, Entry)>> {
        let kind = sniff(path)?;
        let is_st_name = has_ext(path, &["safetensors"]);
        if kind == Sniff::Zip {
            self.open_pt(path)
        } else if kind == Sniff::Safetensors || is_st_name {
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
        let file = File::open(path).with_path(path)?;
        let header = read_safetensors_header(path, &file)?;
        let idx = self.st.len();
        let out = header
            .tensors
            .into_iter()
            .map(|t| {
                let entry = Entry {
                    info: TensorInfo {
                        name: t.name.clone(),
                        dtype: t.dtype,
                        shape: t.shape,
                        file: path.to_path_buf(),
                    },
                    loc: Loc::St {
                        file: idx,
                        offset: header.data_start + t.begin,
                    },
                };
                (t.name, entry)
            })
            .collect();
        self.st.push(StFile {
            path: path.to_path_buf(),
            file,
            data_start: header.data_start,
            metadata: header.metadata,
        });
        self.files.push(path.to_path_buf());
        Ok(out)
    }

    fn open_pt(&mut self, path: &Path) -> Result<Vec<(String, Entry)>> {
        let file_len = std::fs::metadata(path).with_path(path)?.len();
        let mut first_error: Option<String> = None;
        let mut found = None;
        let keys = std::iter::once(None).chain(PT_NESTED_KEYS.iter().map(|k| Some(*k)));
        for key in keys {
            match guarded(|| candle_core::pickle::PthTensors::new(path, key)) {
                Ok(p) if !p.tensor_infos().is_empty() => {
                    found = Some(p);
                    break;
                }
                Ok(_) => {}
                // A missing key is expected while probing; anything else is a real failure.
                Err(e) if key.is_none() => first_error = Some(e),
                Err(_) => {}
            }
        }
        let pth = match found {
            Some(p) => p,
            None => {
                return Err(Error::in_file(
                    path,
                    match first_error {
                        Some(e) => format!("cannot read the PyTorch checkpoint: {e}"),
                        None => format!(
                            "no tensors found in the PyTorch checkpoint (looked at the top level \
                             and under {})",
                            PT_NESTED_KEYS.map(|k| format!("\"{k}\"")).join(", ")
                        ),
                    },
                ))
            }
        };
        let idx = self.pt.len();
        let mut out = Vec::with_capacity(pth.tensor_infos().len());
        for (name, ti) in pth.tensor_infos() {
            let bad = |msg: String| Error::in_file(path, format!("tensor {name}: {msg}"));
            let dtype = dtype_from_candle(ti.dtype)
                .ok_or_else(|| bad(format!("unsupported dtype {:?}", ti.dtype)))?;
            let shape = ti.layout.dims().to_vec();
            let len = checked_byte_len(dtype, &shape)
                .ok_or_else(|| bad(format!("shape {shape:?} is too large")))?;
            let start = ti.layout.start_offset() as u64;
            if start.saturating_add(len as u64) > file_len {
                return Err(bad(format!(
                    "shape {shape:?} of dtype {dtype:?} needs {len} bytes at storage offset \
                     {start}, more than the file's {file_len} bytes: the file is truncated or \
                     the shape is wrong"
                )));
            }
            if !ti.layout.is_contiguous() && !ti.layout.is_fortran_contiguous() {
                return Err(bad(format!(
                    "stored with strides {:?}, neither row- nor column-major, which l3kit \
                     cannot read; save a .contiguous() copy",
                    ti.layout.stride()
                )));
            }
            out.push((
                name.clone(),
                Entry {
                    info: TensorInfo {
                        name: name.clone(),
                        dtype,
                        shape,
                        file: path.to_path_buf(),
                    },
                    loc: Loc::Pt { file: idx },
                },
            ));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        self.pt.push(PtFile {
            path: path.to_path_buf(),
            pth,
        });
        self.files.push(path.to_path_buf());
        Ok(out)
    }

    /// Open an index (`*.index.json` with a `weight_map`) and its shards, checking that the
    /// map and the shards' contents agree exactly.
    fn open_index(&mut self, index: &Path, folder: &Path) -> Result<()> {
        let text = std::fs::read(index).with_path(index)?;
        let value: serde_json::Value = serde_json::from_slice(&text)
            .map_err(|e| Error::in_file(index, format!("the index is not JSON: {e}")))?;
        let obj = value.as_object().ok_or_else(|| {
            Error::in_file(
                index,
                format!("the index is {}, not a JSON object", json_kind(&value)),
            )
        })?;
        if let Some(serde_json::Value::Object(m)) = obj.get("metadata") {
            self.index_metadata = m.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        }
        let map = obj
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| Error::in_file(index, "the index has no \"weight_map\" object"))?;
        if map.is_empty() {
            return Err(Error::in_file(index, "the index's weight_map is empty"));
        }

        // tensor -> shard (normalised relative path); shards in sorted order.
        let mut weight_map: BTreeMap<String, PathBuf> = BTreeMap::new();
        for (tensor, shard) in map {
            let shard = shard.as_str().ok_or_else(|| {
                Error::in_file(
                    index,
                    format!("weight_map entry for tensor {tensor} is not a string: {shard}"),
                )
            })?;
            let rel = safe_relative(shard).map_err(|why| {
                Error::in_file(
                    index,
                    format!("weight_map entry for tensor {tensor} points at \"{shard}\": {why}"),
                )
            })?;
            weight_map.insert(tensor.clone(), rel);
        }
        let mut shards: Vec<PathBuf> = weight_map.values().cloned().collect();
        shards.sort();
        shards.dedup();
        for rel in &shards {
            let full = folder.join(rel);
            if !full.is_file() {
                let tensor = weight_map
                    .iter()
                    .find(|(_, r)| *r == rel)
                    .map(|(t, _)| t.as_str())
                    .unwrap_or_default();
                return Err(Error::in_file(
                    index,
                    format!(
                        "weight_map points at missing shard {} (for tensor {tensor}): no such \
                         file in {}",
                        rel.display(),
                        folder.display()
                    ),
                ));
            }
        }

        // Open every shard; a tensor may live in only one of them.
        let mut owner: HashMap<String, usize> = HashMap::new();
        let mut shard_tensors: Vec<Vec<String>> = Vec::with_capacity(shards.len());
        for (si, rel) in shards.iter().enumerate() {
            let full = folder.join(rel);
            let tensors = self.open_data_file(&full)?;
            let mut names = Vec::with_capacity(tensors.len());
            for (name, entry) in tensors {
                if let Some(&other) = owner.get(&name) {
                    return Err(Error::in_file(
                        index,
                        format!(
                            "tensor {name} is in two shards, {} and {} (both headers list it)",
                            shards[other].display(),
                            rel.display()
                        ),
                    ));
                }
                owner.insert(name.clone(), si);
                names.push(name.clone());
                self.entries.insert(name, entry);
            }
            shard_tensors.push(names);
        }

        // The weight_map and the shards must agree.
        for (si, names) in shard_tensors.iter().enumerate() {
            for name in names {
                match weight_map.get(name) {
                    None => {
                        return Err(Error::in_file(
                            index,
                            format!(
                                "shard {} holds tensor {name}, which the weight_map does not list",
                                shards[si].display()
                            ),
                        ))
                    }
                    Some(rel) if *rel != shards[si] => {
                        return Err(Error::in_file(
                            index,
                            format!(
                                "shard {} holds tensor {name}, but the weight_map assigns it to \
                                 shard {}",
                                shards[si].display(),
                                rel.display()
                            ),
                        ))
                    }
                    Some(_) => {}
                }
            }
        }
        for (tensor, rel) in &weight_map {
            if !owner.contains_key(tensor) {
                return Err(Error::in_file(
                    index,
                    format!(
                        "weight_map names tensor {tensor} in shard {}, which does not contain it",
                        rel.display()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The path this checkpoint was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The folder it came from (to find `config.json`), when opened from a folder or an index.
    pub fn folder(&self) -> Option<&Path> {
        self.folder.as_deref()
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
            .map(|f| f.metadata.clone())
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
        let total = e.info.byte_len();
        match start.checked_add(len) {
            Some(end) if end <= total => Ok(()),
            _ => Err(Error::in_file(
                &e.info.file,
                format!(
                    "tensor {}: byte range {start}+{len} is beyond its {total} bytes",
                    e.info.name
                ),
            )),
        }
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
                buf.clear();
                let bytes = self.pt_bytes(e)?;
                buf.extend_from_slice(&bytes[start..start + len]);
                Ok(())
            }
        }
    }

    /// Like [`Checkpoint::read_range`], filling `out` exactly (`len = out.len()`).
    pub fn read_into(&self, name: &str, start: usize, out: &mut [u8]) -> Result<()> {
        let e = self.entry(name)?;
        self.check_range(e, start, out.len())?;
        match e.loc {
            Loc::St { .. } => self.read_st(e, start, out),
            Loc::Pt { .. } => {
                let bytes = self.pt_bytes(e)?;
                out.copy_from_slice(&bytes[start..start + out.len()]);
                Ok(())
            }
        }
    }

    /// The tensor's whole data.
    pub fn read_all(&self, name: &str) -> Result<Vec<u8>> {
        let e = self.entry(name)?;
        match e.loc {
            Loc::St { .. } => {
                let mut buf = vec![0u8; e.info.byte_len()];
                self.read_st(e, 0, &mut buf)?;
                Ok(buf)
            }
            Loc::Pt { .. } => {
                let bytes = self.pt_bytes(e)?;
                // Hand the cached buffer over when nobody else holds it.
                let mut cache = lock(&self.cache);
                if cache.as_ref().is_some_and(|(n, _)| n == name) {
                    *cache = None;
                }
                drop(cache);
                Ok(Arc::try_unwrap(bytes).unwrap_or_else(|a| a.as_ref().clone()))
            }
        }
    }

    fn read_st(&self, e: &Entry, start: usize, out: &mut [u8]) -> Result<()> {
        let Loc::St { file, offset } = e.loc else {
            unreachable!("read_st on a safetensors entry")
        };
        let f = &self.st[file];
        debug_assert!(offset >= f.data_start);
        f.file
            .read_exact_at(out, offset + start as u64)
            .map_err(|err| {
                Error::in_file(
                    &f.path,
                    format!(
                        "tensor {}: reading {} bytes at byte {start} failed: {err} (was the file \
                         truncated or changed after it was opened?)",
                        e.info.name,
                        out.len()
                    ),
                )
            })
    }

    /// The whole data of a PyTorch tensor, from the cache or loaded now.
    fn pt_bytes(&self, e: &Entry) -> Result<Arc<Vec<u8>>> {
        let Loc::Pt { file } = e.loc else {
            unreachable!("pt_bytes on a PyTorch entry")
        };
        let mut cache = lock(&self.cache);
        if let Some((n, bytes)) = cache.as_ref() {
            if *n == e.info.name {
                return Ok(bytes.clone());
            }
        }
        // Free the previous tensor before loading the next one.
        *cache = None;
        let f = &self.pt[file];
        let name = &e.info.name;
        let bad = |msg: String| Error::in_file(&f.path, format!("tensor {name}: {msg}"));
        let tensor = guarded(|| f.pth.get(name))
            .map_err(|m| bad(format!("cannot load: {m}")))?
            .ok_or_else(|| bad("listed but not found when loading".to_string()))?;
        let bytes =
            guarded(|| tensor_le_bytes(tensor)).map_err(|m| bad(format!("cannot convert: {m}")))?;
        if bytes.len() != e.info.byte_len() {
            return Err(bad(format!(
                "loaded {} bytes, its dtype and shape need {}",
                bytes.len(),
                e.info.byte_len()
            )));
        }
        let bytes = Arc::new(bytes);
        *cache = Some((name.clone(), bytes.clone()));
        Ok(bytes)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Run a call into candle's pickle reader, turning both its errors and its panics into a message.
fn guarded<T>(f: impl FnOnce() -> candle_core::Result<T>) -> std::result::Result<T, String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            Err(format!(
                "the pickle reader failed on malformed data ({msg})"
            ))
        }
    }
}

/// The safetensors dtype for a candle dtype, where one exists.
pub fn dtype_from_candle(d: candle_core::DType) -> Option<Dtype> {
    use candle_core::DType as C;
    Some(match d {
        C::U8 => Dtype::U8,
        C::U32 => Dtype::U32,
        C::I16 => Dtype::I16,
        C::I32 => Dtype::I32,
        C::I64 => Dtype::I64,
        C::BF16 => Dtype::BF16,
        C::F16 => Dtype::F16,
        C::F32 => Dtype::F32,
        C::F64 => Dtype::F64,
        C::F8E4M3 => Dtype::F8_E4M3,
        _ => return None,
    })
}

/// A candle tensor's data as contiguous row-major little-endian bytes (consumes the tensor so
/// that at most two copies of the data exist at once).
fn tensor_le_bytes(t: candle_core::Tensor) -> candle_core::Result<Vec<u8>> {
    use candle_core::DType as C;
    fn le<T, const N: usize>(v: Vec<T>, f: impl Fn(&T) -> [u8; N]) -> Vec<u8> {
        let mut out = Vec::with_capacity(v.len() * N);
        for x in &v {
            out.extend_from_slice(&f(x));
        }
        out
    }
    macro_rules! conv {
        ($ty:ty) => {{
            let v = t.flatten_all()?.to_vec1::<$ty>()?;
            drop(t);
            le(v, |x| x.to_le_bytes())
        }};
    }
    Ok(match t.dtype() {
        C::U8 => {
            let v = t.flatten_all()?.to_vec1::<u8>()?;
            drop(t);
            v
        }
        C::U32 => conv!(u32),
        C::I16 => conv!(i16),
        C::I32 => conv!(i32),
        C::I64 => conv!(i64),
        C::BF16 => conv!(half::bf16),
        C::F16 => conv!(half::f16),
        C::F32 => conv!(f32),
        C::F64 => conv!(f64),
        other => candle_core::bail!("unsupported dtype {other:?}"),
    })
}

/// A path from an index made safe to join to the index's folder: relative, no `..`, normalised.
fn safe_relative(shard: &str) -> std::result::Result<PathBuf, &'static str> {
    if shard.is_empty() {
        return Err("an empty path");
    }
    let p = Path::new(shard);
    if p.is_absolute() || shard.starts_with('/') || shard.starts_with('\\') || shard.contains(':') {
        return Err("an absolute path, which an index may not hold");
    }
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(part) => {
                if part.to_string_lossy().split('\\').any(|s| s == "..") {
                    return Err("a path containing '..', which an index may not hold");
                }
                out.push(part)
            }
            Component::CurDir => {}
            Component::ParentDir => {
                return Err("a path containing '..', which an index may not hold")
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err("an absolute path, which an index may not hold")
            }
        }
    }
    if out.as_os_str().is_empty() {
        return Err("a path naming no file");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::safetensors_file::{write_file, TensorBytes};
    use std::borrow::Cow;

    fn tb(name: &str, dtype: Dtype, shape: &[usize], data: Vec<u8>) -> TensorBytes<'static> {
        TensorBytes {
            name: name.to_string(),
            dtype,
            shape: shape.to_vec(),
            data: Cow::Owned(data),
        }
    }

    fn f32_bytes(v: impl IntoIterator<Item = f32>) -> Vec<u8> {
        v.into_iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    fn pattern(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn single_file_lists_and_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        let w = f32_bytes((0..12).map(|i| i as f32));
        let kv = pattern(4 * 3 * 2, 7);
        let bounds: Vec<i64> = vec![0, 1, 4];
        let mut meta = BTreeMap::new();
        meta.insert("format".to_string(), "pt".to_string());
        write_file(
            &path,
            &[
                tb("z.w", Dtype::F32, &[3, 4], w.clone()),
                tb("a.kv_weight", Dtype::BF16, &[4, 3], kv.clone()),
                TensorBytes::i64s("a.bounds", &bounds),
                tb("scalar", Dtype::F32, &[], f32_bytes([2.5])),
                tb("empty", Dtype::F32, &[0, 4], vec![]),
            ],
            &meta,
            4096,
        )
        .unwrap();

        let ck = Checkpoint::open(&path).unwrap();
        assert_eq!(ck.path(), path);
        assert_eq!(ck.folder(), None);
        assert_eq!(ck.files(), std::slice::from_ref(&path));
        assert_eq!(ck.format(), Format::Safetensors);
        let names: Vec<_> = ck.tensors().iter().map(|t| t.name.clone()).collect();
        assert_eq!(names, ["a.bounds", "a.kv_weight", "empty", "scalar", "z.w"]);
        let w_info = ck.get("z.w").unwrap();
        assert_eq!(w_info.dtype, Dtype::F32);
        assert_eq!(w_info.shape, vec![3, 4]);
        assert_eq!(w_info.numel(), 12);
        assert_eq!(w_info.byte_len(), 48);
        assert_eq!(w_info.file, path);
        assert_eq!(ck.get("scalar").unwrap().numel(), 1);
        assert_eq!(ck.get("empty").unwrap().byte_len(), 0);
        assert!(ck.get("nope").is_none());
        assert_eq!(ck.total_bytes(), 48 + 24 + 24 + 4);

        assert_eq!(ck.read_all("z.w").unwrap(), w);
        assert_eq!(ck.read_all("a.kv_weight").unwrap(), kv);
        assert_eq!(ck.read_all("empty").unwrap(), Vec::<u8>::new());
        let b: Vec<u8> = bounds.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(ck.read_all("a.bounds").unwrap(), b);
        assert_eq!(
            ck.metadata(&path).get("format").map(String::as_str),
            Some("pt")
        );

        // Reading a missing tensor or past the end is an input error, not a panic.
        let mut buf = vec![1, 2, 3];
        let e = ck.read_range("z.w", 40, 9, &mut buf).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("beyond"), "{e}");
        assert!(buf.is_empty(), "a failed read leaves the buffer empty");
        // A reused, longer buffer holds exactly the range afterwards.
        let mut buf = vec![0xEE; 100];
        ck.read_range("z.w", 4, 8, &mut buf).unwrap();
        assert_eq!(buf, &w[4..12]);
        assert!(ck.read_range("nope", 0, 0, &mut buf).is_err());
        assert!(ck.read_range("z.w", usize::MAX, 2, &mut buf).is_err());
    }

    #[test]
    fn range_reads_match_slices() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.safetensors");
        let a = pattern(1000, 1);
        let b = pattern(3000, 2);
        write_file(
            &path,
            &[
                tb("a", Dtype::U8, &[1000], a.clone()),
                tb("b", Dtype::BF16, &[30, 50], b.clone()),
            ],
            &BTreeMap::new(),
            8,
        )
        .unwrap();
        let ck = Checkpoint::open(&path).unwrap();
        let mut buf = vec![0xAA; 5];
        for &(start, len) in &[
            (0, 0),
            (0, 1),
            (0, 3000),
            (1, 2999),
            (100, 200),
            (2999, 1),
            (3000, 0),
        ] {
            ck.read_range("b", start, len, &mut buf).unwrap();
            assert_eq!(buf, &b[start..start + len], "b[{start}..+{len}]");
            let mut out = vec![0u8; len];
            ck.read_into("b", start, &mut out).unwrap();
            assert_eq!(out, &b[start..start + len]);
        }
        ck.read_range("a", 999, 1, &mut buf).unwrap();
        assert_eq!(buf, &a[999..]);
        assert!(ck.read_range("a", 999, 2, &mut buf).is_err());
    }

    fn write_index(dir: &Path, name: &str, map: &[(&str, &str)]) {
        let wm: serde_json::Map<String, serde_json::Value> = map
            .iter()
            .map(|(t, s)| (t.to_string(), serde_json::Value::String(s.to_string())))
            .collect();
        let idx = serde_json::json!({"metadata": {"total_size": 123}, "weight_map": wm});
        std::fs::write(dir.join(name), serde_json::to_vec_pretty(&idx).unwrap()).unwrap();
    }

    #[test]
    fn sharded_index_folder() {
        let dir = tempfile::tempdir().unwrap();
        let s1 = "model-00001-of-00002.safetensors";
        let s2 = "model-00002-of-00002.safetensors";
        let a = f32_bytes((0..6).map(|i| i as f32));
        let b = pattern(16, 3);
        let c = pattern(40, 4);
        write_file(
            &dir.path().join(s1),
            &[
                tb("a.weight", Dtype::F32, &[2, 3], a.clone()),
                tb("b", Dtype::BF16, &[8], b.clone()),
            ],
            &BTreeMap::new(),
            4096,
        )
        .unwrap();
        write_file(
            &dir.path().join(s2),
            &[tb("c.kv_weight", Dtype::U8, &[5, 8], c.clone())],
            &BTreeMap::new(),
            4096,
        )
        .unwrap();
        write_index(
            dir.path(),
            "model.safetensors.index.json",
            &[
                ("a.weight", s1),
                ("b", &format!("./{s1}")),
                ("c.kv_weight", s2),
            ],
        );
        std::fs::write(dir.path().join("config.json"), "{}").unwrap();
        // A stray file the index does not mention is ignored.
        std::fs::write(dir.path().join("training_args.bin"), "junk").unwrap();

        let ck = Checkpoint::open(dir.path()).unwrap();
        assert_eq!(ck.folder(), Some(dir.path()));
        assert_eq!(ck.files(), &[dir.path().join(s1), dir.path().join(s2)]);
        assert_eq!(ck.len(), 3);
        assert_eq!(ck.get("c.kv_weight").unwrap().file, dir.path().join(s2));
        assert_eq!(ck.get("c.kv_weight").unwrap().shape, vec![5, 8]);
        assert_eq!(ck.read_all("a.weight").unwrap(), a);
        assert_eq!(ck.read_all("b").unwrap(), b);
        let mut buf = Vec::new();
        ck.read_range("c.kv_weight", 8, 16, &mut buf).unwrap();
        assert_eq!(buf, &c[8..24]);
        assert_eq!(ck.index_metadata()["total_size"], serde_json::json!(123));

        // The index file itself opens the same checkpoint.
        let ck2 = Checkpoint::open(&dir.path().join("model.safetensors.index.json")).unwrap();
        assert_eq!(ck2.files(), ck.files());
        assert_eq!(ck2.folder(), Some(dir.path()));
    }

    #[test]
    fn folder_with_single_safetensors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("weights.safetensors");
        write_file(
            &p,
            &[TensorBytes::u32s("t", &[1, 2, 3])],
            &BTreeMap::new(),
            8,
        )
        .unwrap();
        let ck = Checkpoint::open(dir.path()).unwrap();
        assert_eq!(ck.files(), &[p]);
        assert_eq!(ck.folder(), Some(dir.path()));
        assert_eq!(
            ck.read_all("t").unwrap(),
            [1u32, 2, 3]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn header_parse_allows_metadata_and_gaps() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("h.safetensors");
        let header = br#"{"x":{"dtype":"U8","shape":[2],"data_offsets":[4,6]},"__metadata__":{"k":"v","n":3}}"#;
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header);
        bytes.extend_from_slice(&[0, 0, 0, 0, 9, 8]);
        std::fs::write(&p, &bytes).unwrap();
        let ck = Checkpoint::open(&p).unwrap();
        assert_eq!(ck.read_all("x").unwrap(), vec![9, 8]);
        let meta = ck.metadata(&p);
        assert_eq!(meta["k"], "v");
        assert_eq!(meta["n"], "3");
        assert!(ck.get("__metadata__").is_none());
    }

    fn pt_fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures/pt")
            .join(name)
    }

    #[test]
    fn pytorch_state_dict_fixture() {
        let path = pt_fixture("tiny_state_dict.pt");
        let ck = Checkpoint::open(&path).unwrap();
        assert_eq!(ck.format(), Format::PyTorch);
        assert_eq!(ck.files(), std::slice::from_ref(&path));
        let names: Vec<_> = ck.names().collect();
        assert_eq!(names, ["a.weight", "b.bounds", "b.kv_weight"]);

        let a = ck.get("a.weight").unwrap();
        assert_eq!((a.dtype, a.shape.clone()), (Dtype::F32, vec![2, 3]));
        assert_eq!(
            ck.read_all("a.weight").unwrap(),
            f32_bytes((0..6).map(|i| i as f32))
        );

        let kv = ck.get("b.kv_weight").unwrap();
        assert_eq!((kv.dtype, kv.shape.clone()), (Dtype::BF16, vec![4, 2]));
        let want: Vec<u8> = (0..8)
            .flat_map(|i| half::bf16::from_f32(i as f32).to_le_bytes())
            .collect();
        assert_eq!(ck.read_all("b.kv_weight").unwrap(), want);
        // Range reads, repeated (served from the cache).
        let mut buf = Vec::new();
        ck.read_range("b.kv_weight", 4, 6, &mut buf).unwrap();
        assert_eq!(buf, &want[4..10]);
        ck.read_range("b.kv_weight", 14, 2, &mut buf).unwrap();
        assert_eq!(buf, &want[14..16]);

        let b = ck.get("b.bounds").unwrap();
        assert_eq!((b.dtype, b.shape.clone()), (Dtype::I64, vec![3]));
        let want: Vec<u8> = [0i64, 1, 4].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(ck.read_all("b.bounds").unwrap(), want);
        // Back to the first tensor after the cache moved on.
        ck.read_range("a.weight", 4, 8, &mut buf).unwrap();
        assert_eq!(buf, f32_bytes([1.0, 2.0]));
    }

    #[test]
    fn pytorch_nested_fixture_and_folder() {
        let path = pt_fixture("tiny_nested.pt");
        let ck = Checkpoint::open(&path).unwrap();
        let names: Vec<_> = ck.names().collect();
        assert_eq!(names, ["h.weight", "w.row2", "w.weight"]);
        assert_eq!(
            ck.read_all("w.weight").unwrap(),
            f32_bytes((0..12).map(|i| i as f32))
        );
        // A view sharing storage at an offset reads only its own elements.
        assert_eq!(ck.get("w.row2").unwrap().shape, vec![4]);
        assert_eq!(
            ck.read_all("w.row2").unwrap(),
            f32_bytes([8.0, 9.0, 10.0, 11.0])
        );
        let h = ck.get("h.weight").unwrap();
        assert_eq!((h.dtype, h.shape.clone()), (Dtype::F16, vec![2, 2]));
        let want: Vec<u8> = [0.0f32, 0.25, 0.5, 0.75]
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect();
        assert_eq!(ck.read_all("h.weight").unwrap(), want);

        // A folder holding one model file plus an optimizer file picks the model.
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(
            pt_fixture("tiny_state_dict.pt"),
            dir.path().join("model_000100.pt"),
        )
        .unwrap();
        std::fs::copy(&path, dir.path().join("optim_000100_rank0.pt")).unwrap();
        std::fs::write(dir.path().join("meta_000100.json"), "{}").unwrap();
        let ck = Checkpoint::open(dir.path()).unwrap();
        assert_eq!(ck.files(), &[dir.path().join("model_000100.pt")]);
        assert_eq!(ck.folder(), Some(dir.path()));
        assert_eq!(ck.len(), 3);
    }

    #[test]
    fn pytorch_sharded_index() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(
            pt_fixture("tiny_state_dict.pt"),
            dir.path().join("pytorch_model-00001.bin"),
        )
        .unwrap();
        std::fs::copy(
            pt_fixture("tiny_nested.pt"),
            dir.path().join("pytorch_model-00002.bin"),
        )
        .unwrap();
        write_index(
            dir.path(),
            "pytorch_model.bin.index.json",
            &[
                ("a.weight", "pytorch_model-00001.bin"),
                ("b.bounds", "pytorch_model-00001.bin"),
                ("b.kv_weight", "pytorch_model-00001.bin"),
                ("h.weight", "pytorch_model-00002.bin"),
                ("w.row2", "pytorch_model-00002.bin"),
                ("w.weight", "pytorch_model-00002.bin"),
            ],
        );
        let ck = Checkpoint::open(dir.path()).unwrap();
        assert_eq!(ck.len(), 6);
        assert_eq!(ck.files().len(), 2);
        assert_eq!(
            ck.read_all("w.row2").unwrap(),
            f32_bytes([8.0, 9.0, 10.0, 11.0])
        );
        assert_eq!(
            ck.read_all("a.weight").unwrap(),
            f32_bytes((0..6).map(|i| i as f32))
        );
    }

    #[test]
    fn safe_relative_paths() {
        assert_eq!(
            safe_relative("a.safetensors").unwrap(),
            PathBuf::from("a.safetensors")
        );
        assert_eq!(
            safe_relative("./sub/a.bin").unwrap(),
            PathBuf::from("sub/a.bin")
        );
        assert!(safe_relative("/etc/passwd")
            .unwrap_err()
            .contains("absolute"));
        assert!(safe_relative("C:\\x").unwrap_err().contains("absolute"));
        assert!(safe_relative("../x").unwrap_err().contains(".."));
        assert!(safe_relative("a/../../x").unwrap_err().contains(".."));
        assert!(safe_relative("a\\..\\x").unwrap_err().contains(".."));
        assert!(safe_relative("").is_err());
        assert!(safe_relative(".").is_err());
    }
}
