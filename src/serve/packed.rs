//! Rows served from a packed folder's memory-mapped part files, one contiguous byte range per
//! (token, layer), converted to f32 (int8 dequantised) on the way.

use super::{check_tokens, per_token_slices, staging, Blocks, TableSource};
use crate::formats::dtype::{self as convert, TableDtype};
use crate::formats::packed::{PackedConfig, PackedModel};
use crate::util::error::{Error, IoContext, Result};
use rayon::prelude::*;
use safetensors::Dtype;
use std::path::Path;
use std::sync::Arc;

/// One part file of a packed layer, memory-mapped.
struct MappedPart {
    token_start: u64,
    token_end: u64,
    row_start: u64,
    map: Arc<memmap2::Mmap>,
    rows_at: usize,
    scales_at: Option<usize>,
}

/// One layer of a packed folder, served from its mapped part files.
pub struct PackedStore {
    dtype: TableDtype,
    row_width: usize,
    key_width: usize,
    tied: bool,
    bounds: Vec<i64>,
    parts: Vec<MappedPart>,
}

impl PackedStore {
    /// Map every part of layer `layer` of a packed model.
    pub fn open(model: &PackedModel, layer: usize) -> Result<PackedStore> {
        let c: &PackedConfig = &model.config;
        let l = c
            .layers
            .get(layer)
            .ok_or_else(|| Error::input(format!("the packed model has no L3 layer {layer}")))?;
        let mut parts = Vec::new();
        for p in &l.parts {
            let path = model.dir.join(&p.file);
            let file = std::fs::File::open(&path).with_path(&path)?;
            // SAFETY: read-only map of a file l3kit does not modify; a concurrent truncation
            // by another process is the usual mmap caveat.
            let map = unsafe { memmap2::Mmap::map(&file) }.with_path(&path)?;
            let st = safetensors::SafeTensors::deserialize(&map)
                .map_err(|e| Error::in_file(&path, format!("not a valid safetensors file: {e}")))?;
            let at = |name: &str, dtype: Dtype, len: usize| -> Result<usize> {
                let view = st
                    .tensor(name)
                    .map_err(|_| Error::in_file(&path, format!("missing tensor {name}")))?;
                if view.dtype() != dtype || view.data().len() != len {
                    return Err(Error::in_file(
                        &path,
                        format!("tensor {name} does not match the packed config"),
                    ));
                }
                Ok(view.data().as_ptr() as usize - map.as_ptr() as usize)
            };
            let n_rows = (p.row_end - p.row_start) as usize;
            let rows_at = at(
                &p.rows,
                packed_dtype(c.dtype),
                n_rows * l.row_width as usize * c.dtype.value_bytes() as usize,
            )?;
            let scale_parts = if c.semantics.tied { 1 } else { 2 };
            let scales_at = match &p.scales {
                Some(s) => Some(at(s, Dtype::F32, n_rows * scale_parts * 4)?),
                None => None,
            };
            drop(st);
            parts.push(MappedPart {
                token_start: p.token_start,
                token_end: p.token_end,
                row_start: p.row_start,
                map: Arc::new(map),
                rows_at,
                scales_at,
            });
        }
        Ok(PackedStore {
            dtype: c.dtype,
            row_width: l.row_width as usize,
            key_width: l.d_in as usize,
            tied: c.semantics.tied,
            bounds: model.bounds(layer)?,
            parts,
        })
    }

    fn part_of(&self, token: u32) -> &MappedPart {
        let i = self.parts.partition_point(|p| p.token_end <= token as u64);
        &self.parts[i]
    }

    /// The packed bytes of one token: one contiguous range of its part file.
    pub fn token_bytes(&self, token: u32) -> &[u8] {
        let part = self.part_of(token);
        debug_assert!(part.token_start <= token as u64);
        let row_bytes = self.row_width * self.dtype.value_bytes() as usize;
        let (r0, r1) = (
            self.bounds[token as usize] as u64,
            self.bounds[token as usize + 1] as u64,
        );
        let start = part.rows_at + (r0 - part.row_start) as usize * row_bytes;
        &part.map[start..start + (r1 - r0) as usize * row_bytes]
    }

    /// Copy the packed bytes of `tokens` back to back into `out` (no conversion): what an
    /// engine that computes in the packed dtype would ship to the accelerator.
    pub fn gather_raw(&self, tokens: &[u32], out: &mut Vec<u8>) -> Result<()> {
        check_tokens(tokens, self.vocab())?;
        let ranges: Vec<&[u8]> = tokens.iter().map(|&t| self.token_bytes(t)).collect();
        let total: usize = ranges.iter().map(|r| r.len()).sum();
        if out.len() != total {
            out.clear();
            out.resize(total, 0);
        }
        let mut slices = Vec::with_capacity(ranges.len());
        let mut rest = out.as_mut_slice();
        for r in &ranges {
            let (head, tail) = rest.split_at_mut(r.len());
            slices.push(head);
            rest = tail;
        }
        slices
            .into_par_iter()
            .zip(ranges.par_iter())
            .for_each(|(dst, src)| dst.copy_from_slice(src));
        Ok(())
    }

    /// Start gathering `tokens` on a background thread.
    pub fn prefetch(self: &Arc<Self>, tokens: Vec<u32>) -> Prefetch {
        let store = Arc::clone(self);
        Prefetch {
            handle: std::thread::spawn(move || store.gather(&tokens)),
        }
    }
}

/// Rows being gathered in the background; `wait` hands them over.
pub struct Prefetch {
    handle: std::thread::JoinHandle<Result<Blocks>>,
}

impl Prefetch {
    pub fn wait(self) -> Result<Blocks> {
        self.handle
            .join()
            .map_err(|_| Error::Other("the prefetch thread panicked".into()))?
    }
}

fn packed_dtype(t: TableDtype) -> Dtype {
    match t {
        TableDtype::F32 => Dtype::F32,
        TableDtype::Bf16 => Dtype::BF16,
        TableDtype::F16 => Dtype::F16,
        TableDtype::Int8 => Dtype::I8,
    }
}

impl TableSource for PackedStore {
    fn vocab(&self) -> usize {
        self.bounds.len() - 1
    }
    fn row_width(&self) -> usize {
        self.row_width
    }
    fn bounds(&self) -> &[i64] {
        &self.bounds
    }
    fn stored_row_bytes(&self) -> u64 {
        self.dtype.row_bytes(
            self.key_width as u64,
            (self.row_width - self.key_width) as u64,
            self.tied,
        )
    }

    fn gather_into(&self, tokens: &[u32], blocks: &mut Blocks) -> Result<()> {
        check_tokens(tokens, self.vocab())?;
        staging(blocks, tokens, &self.bounds, self.row_width);
        let width = self.row_width;
        let slices = per_token_slices(&mut blocks.rows, &blocks.starts, width);
        slices
            .into_par_iter()
            .zip(tokens.par_iter())
            .for_each(|(dst, &t)| self.fill(t, dst));
        Ok(())
    }
}

impl PackedStore {
    fn fill(&self, token: u32, dst: &mut [f32]) {
        let bytes = self.token_bytes(token);
        match self.dtype {
            TableDtype::F32 => convert::decode_into(Dtype::F32, bytes, dst),
            TableDtype::Bf16 => convert::decode_into(Dtype::BF16, bytes, dst),
            TableDtype::F16 => convert::decode_into(Dtype::F16, bytes, dst),
            TableDtype::Int8 => {
                let part = self.part_of(token);
                let scale_parts = if self.tied { 1 } else { 2 };
                let at = part.scales_at.expect("int8 parts carry scales");
                let r0 = (self.bounds[token as usize] as u64 - part.row_start) as usize;
                let rows = bytes
                    .chunks_exact(self.row_width)
                    .zip(dst.chunks_exact_mut(self.row_width));
                for (r, (row, out)) in rows.enumerate() {
                    let s = at + (r0 + r) * scale_parts * 4;
                    let scale = |k: usize| {
                        f32::from_le_bytes(
                            part.map[s + 4 * k..s + 4 * k + 4]
                                .try_into()
                                .expect("4 bytes"),
                        )
                    };
                    let (key_out, value_out) = out.split_at_mut(self.key_width);
                    convert::dequantise_into(&row[..self.key_width], scale(0), key_out);
                    if !self.tied {
                        convert::dequantise_into(&row[self.key_width..], scale(1), value_out);
                    }
                }
            }
        }
    }
}

/// Open every layer of a packed folder as stores.
pub fn open_packed(dir: &Path) -> Result<(PackedModel, Vec<Arc<PackedStore>>)> {
    let model = PackedModel::open(dir)?;
    let stores = (0..model.config.layers.len())
        .map(|i| PackedStore::open(&model, i).map(Arc::new))
        .collect::<Result<_>>()?;
    Ok((model, stores))
}
