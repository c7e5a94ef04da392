//! The safetensors format as l3kit reads it: a strict header parser (every problem named with
//! the file, the tensor and what is wrong), opened files read with positioned reads, and the
//! tensor catalogue interface ([`TensorReader`]) that source checkpoints and packed folders
//! both offer.
//!
//! Headers are parsed here rather than by the safetensors crate so that every problem gets a
//! precise message, and data is read with positioned reads (`pread`) on one open file per
//! shard rather than through a memory map: packing a 10 GB checkpoint streams through it, and
//! touched mmap pages would count toward the process's resident memory.

use crate::formats::dtype::FloatDtype;
use crate::util::error::{Error, IoContext, Result};
use crate::util::json::json_kind;
use safetensors::Dtype;
use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Component, Path, PathBuf};

/// Largest safetensors header accepted (the safetensors crate's own limit).
pub const MAX_HEADER_LEN: u64 = 100 * 1024 * 1024;

/// One tensor of a set of files: name, dtype, shape and the file holding it.
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

    /// The tensor's dtype as a float dtype to decode, or an error naming the file and the
    /// tensor when it holds something else (integers, bools, 8-bit floats).
    pub fn float_dtype(&self) -> Result<FloatDtype> {
        FloatDtype::of(self.dtype).ok_or_else(|| {
            Error::in_file(
                &self.file,
                format!(
                    "tensor {} has dtype {:?}; expected floats (F32, BF16, F16 or F64)",
                    self.name, self.dtype
                ),
            )
        })
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

/// A path from an index made safe to join to the index's folder: relative, no `..`, normalised.
pub fn safe_relative(shard: &str) -> std::result::Result<PathBuf, &'static str> {
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

/// A named set of tensors that can be read by byte range: a source checkpoint or the shards of
/// a packed folder.
pub trait TensorReader {
    /// Where the tensors come from (for messages).
    fn origin(&self) -> &Path;
    fn tensor(&self, name: &str) -> Option<&TensorInfo>;
    /// Little-endian bytes `[start, start+len)` of the tensor's row-major data, into `buf`
    /// (cleared first).
    fn read_range(&self, name: &str, start: usize, len: usize, buf: &mut Vec<u8>) -> Result<()>;
    /// The tensor's whole data.
    fn read_all(&self, name: &str) -> Result<Vec<u8>>;
}

/// Check a byte range against a tensor's size.
pub fn check_range(info: &TensorInfo, start: usize, len: usize) -> Result<()> {
    let total = info.byte_len();
    match start.checked_add(len) {
        Some(end) if end <= total => Ok(()),
        _ => Err(Error::in_file(
            &info.file,
            format!(
                "tensor {}: byte range {start}+{len} is beyond its {total} bytes",
                info.name
            ),
        )),
    }
}

/// An open safetensors file with its validated header.
pub struct OpenSafetensors {
    pub path: PathBuf,
    file: File,
    pub header: SafetensorsHeader,
}

impl OpenSafetensors {
    pub fn open(path: &Path) -> Result<Self> {
        let file = crate::util::fs::open_regular(path)?;
        let header = read_safetensors_header(path, &file)?;
        Ok(OpenSafetensors {
            path: path.to_path_buf(),
            file,
            header,
        })
    }

    /// The tensors of the header, with their files set to this one.
    pub fn tensor_infos(&self) -> impl Iterator<Item = (TensorInfo, u64)> + '_ {
        self.header.tensors.iter().map(|t| {
            (
                TensorInfo {
                    name: t.name.clone(),
                    dtype: t.dtype,
                    shape: t.shape.clone(),
                    file: self.path.clone(),
                },
                self.header.data_start + t.begin,
            )
        })
    }

    /// The opened file (the descriptor whose header was validated).
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Map the opened file read-only. The map is of the descriptor whose header was
    /// validated, so a path swapped after the open changes nothing; a file shorter than the
    /// validated header says is refused.
    pub fn map(&self) -> Result<memmap2::Mmap> {
        // SAFETY: a read-only map of a file l3kit never writes; a concurrent truncation by
        // another process is the usual mmap caveat.
        let map = unsafe { memmap2::Mmap::map(&self.file) }.with_path(&self.path)?;
        let want = self.header.data_start + self.header.data_len;
        if (map.len() as u64) < want {
            return Err(Error::in_file(
                &self.path,
                format!(
                    "is {} bytes, fewer than the {want} its header was read with: the file \
                     changed after it was opened",
                    map.len()
                ),
            ));
        }
        Ok(map)
    }

    /// Fill `out` from absolute file offset `offset`; `name` is for the message.
    pub fn read_at(&self, name: &str, offset: u64, start: usize, out: &mut [u8]) -> Result<()> {
        self.file
            .read_exact_at(out, offset + start as u64)
            .map_err(|err| {
                Error::in_file(
                    &self.path,
                    format!(
                    "tensor {name}: reading {} bytes at byte {start} failed: {err} (was the file \
                     truncated or changed after it was opened?)",
                    out.len()
                ),
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
