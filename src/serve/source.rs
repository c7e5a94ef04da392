//! The same rows read from a source checkpoint, so packed and source tables go through the
//! same forward code.

use super::{check_tokens, per_token_slices, staging, Blocks, TableSource};
use crate::checkpoint::Checkpoint;
use crate::formats::dtype::{self as convert, FloatDtype};
use crate::util::error::{Error, Result};
use rayon::prelude::*;
use std::sync::Arc;

/// One layer's tables read from a source checkpoint, in the same `[key | value]` row form.
pub struct SourceTables {
    bounds: Vec<i64>,
    key_width: usize,
    value_width: usize,
    dtype: FloatDtype,
    source: TableBytes,
    keys: String,
    values: Option<String>,
}

enum TableBytes {
    /// Positioned reads from a safetensors checkpoint.
    Checkpoint(Arc<Checkpoint>),
    /// Whole tables in memory (PyTorch files, whose reader loads tensors whole).
    Memory(Vec<u8>, Option<Vec<u8>>),
}

impl SourceTables {
    pub fn new(
        ckpt: Arc<Checkpoint>,
        keys: &str,
        values: Option<&str>,
        bounds: Vec<i64>,
    ) -> Result<SourceTables> {
        let k = ckpt
            .get(keys)
            .ok_or_else(|| Error::in_file(ckpt.path(), format!("missing tensor {keys}")))?
            .clone();
        let dtype = k.float_dtype()?;
        let width = |t: &crate::checkpoint::TensorInfo| -> Result<usize> {
            match t.shape.as_slice() {
                [_, w] => Ok(*w),
                other => Err(Error::in_file(
                    &t.file,
                    format!(
                        "tensor {} has shape {other:?}; a table is [rows, width]",
                        t.name
                    ),
                )),
            }
        };
        let key_width = width(&k)?;
        let value_width = match values {
            Some(v) => {
                let t = ckpt
                    .get(v)
                    .ok_or_else(|| Error::in_file(ckpt.path(), format!("missing tensor {v}")))?;
                if t.dtype != k.dtype {
                    return Err(Error::in_file(
                        &t.file,
                        format!(
                            "tensor {v} is {:?}, but the keys {keys} are {:?}",
                            t.dtype, k.dtype
                        ),
                    ));
                }
                width(t)?
            }
            None => 0,
        };
        let is_pt = ckpt
            .files()
            .iter()
            .any(|f| f.extension().is_none_or(|e| e != "safetensors"));
        let source = if is_pt {
            TableBytes::Memory(
                ckpt.read_all(keys)?,
                values.map(|v| ckpt.read_all(v)).transpose()?,
            )
        } else {
            TableBytes::Checkpoint(ckpt)
        };
        Ok(SourceTables {
            bounds,
            key_width,
            value_width,
            dtype,
            source,
            keys: keys.to_string(),
            values: values.map(str::to_string),
        })
    }

    fn read(&self, values: bool, start: usize, len: usize, buf: &mut Vec<u8>) -> Result<()> {
        let name = if values {
            self.values.as_deref().unwrap_or(&self.keys)
        } else {
            &self.keys
        };
        match &self.source {
            TableBytes::Checkpoint(c) => c.read_range(name, start, len, buf),
            TableBytes::Memory(k, v) => {
                let src = if values { v.as_ref() } else { Some(k) };
                buf.clear();
                let bytes = src
                    .and_then(|s| s.get(start..start.checked_add(len)?))
                    .ok_or_else(|| {
                        Error::input(format!(
                            "tensor {name}: bytes {start}+{len} are beyond the table"
                        ))
                    })?;
                buf.extend_from_slice(bytes);
                Ok(())
            }
        }
    }
}

impl TableSource for SourceTables {
    fn vocab(&self) -> usize {
        self.bounds.len() - 1
    }
    fn row_width(&self) -> usize {
        self.key_width + self.value_width
    }
    fn bounds(&self) -> &[i64] {
        &self.bounds
    }
    fn served_from(&self) -> &'static str {
        "source checkpoint"
    }
    fn stored_row_bytes(&self) -> u64 {
        let size = self.dtype.size() as u64;
        (self.key_width + self.value_width) as u64 * size
    }

    fn gather_into(&self, tokens: &[u32], blocks: &mut Blocks) -> Result<()> {
        check_tokens(tokens, self.vocab())?;
        let width = self.row_width();
        staging(blocks, tokens, &self.bounds, width);
        let size = self.dtype.size();
        let slices = per_token_slices(&mut blocks.rows, &blocks.starts, width);
        slices
            .into_par_iter()
            .zip(tokens.par_iter())
            .try_for_each(|(dst, &t)| -> Result<()> {
                let r0 = self.bounds[t as usize] as usize;
                let n = self.bounds[t as usize + 1] as usize - r0;
                let (mut kb, mut vb) = (Vec::new(), Vec::new());
                let (mut kf, mut vf) = (Vec::new(), Vec::new());
                self.read(
                    false,
                    r0 * self.key_width * size,
                    n * self.key_width * size,
                    &mut kb,
                )?;
                convert::decode_f32(self.dtype, &kb, &mut kf);
                if self.value_width > 0 {
                    self.read(
                        true,
                        r0 * self.value_width * size,
                        n * self.value_width * size,
                        &mut vb,
                    )?;
                    convert::decode_f32(self.dtype, &vb, &mut vf);
                }
                for r in 0..n {
                    let row = &mut dst[r * width..(r + 1) * width];
                    row[..self.key_width]
                        .copy_from_slice(&kf[r * self.key_width..(r + 1) * self.key_width]);
                    row[self.key_width..]
                        .copy_from_slice(&vf[r * self.value_width..(r + 1) * self.value_width]);
                }
                Ok(())
            })?;
        Ok(())
    }
}
