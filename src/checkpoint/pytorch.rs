//! PyTorch checkpoints (`torch.save` zip files), read with candle's pickle reader, which
//! interprets the pickle without running any code. A tensor is loaded whole on first access
//! and the most recently loaded one is cached, so repeated range reads of one tensor load it
//! once. Calls into the pickle reader are guarded with `catch_unwind`, so a malformed file
//! gives an error, not a panic.

use super::{lock, Checkpoint, Entry, Loc};
use crate::formats::safetensors::{checked_byte_len, TensorInfo};
use crate::util::error::{Error, IoContext, Result};
use safetensors::Dtype;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Keys tried, in order, when a PyTorch file has no tensors at its top level.
pub const PT_NESTED_KEYS: [&str; 3] = ["state_dict", "model", "module"];

/// An open PyTorch zip checkpoint.
pub(super) struct PtFile {
    pub(super) path: PathBuf,
    pub(super) pth: candle_core::pickle::PthTensors,
}

impl Checkpoint {
    pub(super) fn open_pt(&mut self, path: &Path) -> Result<Vec<(String, Entry)>> {
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

    /// The whole data of a PyTorch tensor, from the cache or loaded now.
    pub(super) fn pt_bytes(&self, e: &Entry) -> Result<Arc<Vec<u8>>> {
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
