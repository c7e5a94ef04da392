//! A deterministic safetensors writer.
//!
//! The safetensors crate writes `__metadata__` from a `HashMap`, so the header's key order (and
//! therefore the file's bytes) can change from run to run. l3kit promises byte-identical output
//! for identical input, so it writes headers itself: metadata keys sorted, tensors in the order
//! given, and the header padded with spaces so the data section starts on a chosen alignment.
//! Files are read back with the safetensors crate, which validates them.

use crate::util::atomic_file::AtomicFile;
use crate::util::error::{Error, IoContext, Result};
use safetensors::Dtype;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

/// One tensor to write: its name, dtype, shape and little-endian bytes.
pub struct TensorBytes<'a> {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: std::borrow::Cow<'a, [u8]>,
}

impl<'a> TensorBytes<'a> {
    pub fn u64s(name: &str, values: &[u64]) -> Self {
        Self::owned(name, Dtype::U64, vec![values.len()], le_bytes_u64(values))
    }
    pub fn i64s(name: &str, values: &[i64]) -> Self {
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Self::owned(name, Dtype::I64, vec![values.len()], bytes)
    }
    pub fn u32s(name: &str, values: &[u32]) -> Self {
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        Self::owned(name, Dtype::U32, vec![values.len()], bytes)
    }
    fn owned(name: &str, dtype: Dtype, shape: Vec<usize>, data: Vec<u8>) -> Self {
        TensorBytes {
            name: name.to_string(),
            dtype,
            shape,
            data: std::borrow::Cow::Owned(data),
        }
    }
}

fn le_bytes_u64(values: &[u64]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Name of a dtype as written in safetensors headers.
pub fn dtype_name(dtype: Dtype) -> String {
    // Dtype's Debug output is exactly the header spelling ("F32", "BF16", "U64", ...).
    format!("{dtype:?}")
}

/// The JSON header for tensors laid out back to back, padded so that
/// `8 + header.len()` is a multiple of `alignment`.
pub fn header_bytes(
    tensors: &[(String, Dtype, Vec<usize>, usize)],
    metadata: &BTreeMap<String, String>,
    alignment: usize,
) -> Vec<u8> {
    let mut header = String::from("{");
    if !metadata.is_empty() {
        header.push_str("\"__metadata__\":");
        header.push_str(&serde_json::to_string(metadata).expect("string map serialises"));
    }
    let mut offset = 0usize;
    for (name, dtype, shape, len) in tensors {
        if header.len() > 1 {
            header.push(',');
        }
        header.push_str(&serde_json::to_string(name).expect("string serialises"));
        header.push_str(&format!(
            ":{{\"dtype\":\"{}\",\"shape\":{},\"data_offsets\":[{},{}]}}",
            dtype_name(*dtype),
            serde_json::to_string(shape).expect("shape serialises"),
            offset,
            offset + len
        ));
        offset += len;
    }
    header.push('}');
    let mut bytes = header.into_bytes();
    let alignment = alignment.max(8);
    let total = 8 + bytes.len();
    let padded = total.div_ceil(alignment) * alignment;
    bytes.resize(padded - 8, b' ');
    bytes
}

/// Write a complete safetensors file atomically.
pub fn write_file(
    path: &Path,
    tensors: &[TensorBytes<'_>],
    metadata: &BTreeMap<String, String>,
    alignment: usize,
) -> Result<()> {
    let specs: Vec<_> = tensors
        .iter()
        .map(|t| (t.name.clone(), t.dtype, t.shape.clone(), t.data.len()))
        .collect();
    for t in tensors {
        let expected = t.shape.iter().product::<usize>() * t.dtype.bitsize() / 8;
        if expected != t.data.len() {
            return Err(Error::input(format!(
                "{}: tensor {} has {} bytes, its shape {:?} needs {expected}",
                path.display(),
                t.name,
                t.data.len(),
                t.shape
            )));
        }
    }
    let header = header_bytes(&specs, metadata, alignment);
    let mut out = AtomicFile::create(path)?;
    let w = out.writer();
    w.write_all(&(header.len() as u64).to_le_bytes())
        .with_path(path)?;
    w.write_all(&header).with_path(path)?;
    for t in tensors {
        w.write_all(&t.data).with_path(path)?;
    }
    out.commit()
}

/// A memory-mapped safetensors file, validated by the safetensors crate on open.
pub struct MappedSafetensors {
    path: std::path::PathBuf,
    mmap: memmap2::Mmap,
}

impl MappedSafetensors {
    pub fn open(path: &Path) -> Result<Self> {
        // Never a FIFO (File::open would wait for a writer forever) or a device.
        let file = crate::util::fs::open_regular(path)?;
        // SAFETY: the map is read-only; l3kit never writes the files it reads while mapped.
        // A file truncated by someone else meanwhile would fault, which is the accepted risk
        // of every mmap-based safetensors reader.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.with_path(path)?;
        let this = MappedSafetensors {
            path: path.to_path_buf(),
            mmap,
        };
        this.parse()?;
        Ok(this)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn parse(&self) -> Result<safetensors::SafeTensors<'_>> {
        safetensors::SafeTensors::deserialize(&self.mmap)
            .map_err(|e| Error::in_file(&self.path, format!("not a valid safetensors file: {e}")))
    }

    /// The `__metadata__` map (empty when absent).
    pub fn metadata(&self) -> Result<BTreeMap<String, String>> {
        let (_, meta) = safetensors::SafeTensors::read_metadata(&self.mmap).map_err(|e| {
            Error::in_file(&self.path, format!("not a valid safetensors file: {e}"))
        })?;
        Ok(meta
            .metadata()
            .clone()
            .map(|m| m.into_iter().collect())
            .unwrap_or_default())
    }

    fn tensor(&self, name: &str, dtype: Dtype) -> Result<(Vec<usize>, &[u8])> {
        let st = self.parse()?;
        let view = st
            .tensor(name)
            .map_err(|_| Error::in_file(&self.path, format!("missing tensor {name}")))?;
        if view.dtype() != dtype {
            return Err(Error::in_file(
                &self.path,
                format!(
                    "tensor {name} has dtype {:?}, expected {dtype:?}",
                    view.dtype()
                ),
            ));
        }
        Ok((view.shape().to_vec(), view.data()))
    }

    /// A 1-D tensor of u64 values.
    pub fn vec_u64(&self, name: &str) -> Result<Vec<u64>> {
        Ok(le_u64s(self.bytes_1d(name, Dtype::U64)?))
    }

    pub fn vec_i64(&self, name: &str) -> Result<Vec<i64>> {
        let data = self.bytes_1d(name, Dtype::I64)?;
        Ok(data
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect())
    }

    pub fn vec_u32(&self, name: &str) -> Result<Vec<u32>> {
        Ok(le_u32s(self.bytes_1d(name, Dtype::U32)?))
    }

    /// The stored bytes of a 1-D tensor of `dtype`, borrowed from the map.
    pub fn bytes_1d(&self, name: &str, dtype: Dtype) -> Result<&[u8]> {
        let (shape, data) = self.tensor(name, dtype)?;
        if shape.len() != 1 {
            return Err(Error::in_file(
                &self.path,
                format!("tensor {name} should be 1-D, has shape {shape:?}"),
            ));
        }
        Ok(data)
    }
}

/// Little-endian u64 values of `data` (a whole number of them).
pub fn le_u64s(data: &[u8]) -> Vec<u64> {
    data.chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect()
}

/// Little-endian u32 values of `data` (a whole number of them).
pub fn le_u32s(data: &[u8]) -> Vec<u32> {
    data.chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect()
}
