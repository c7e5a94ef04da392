//! Rows served from a packed folder's memory-mapped part files, one contiguous byte range per
//! (token, layer), converted to f32 (int8 dequantised) on the way.

use super::{check_tokens, per_token_slices, staging, Blocks, TableSource};
use crate::formats::dtype::{self as convert, TableDtype};
use crate::formats::packed::{PackedConfig, PackedModel};
use crate::util::error::{Error, Result};
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One part file of a packed layer, memory-mapped.
struct MappedPart {
    token_end: u64,
    row_start: u64,
    path: PathBuf,
    map: Arc<memmap2::Mmap>,
    rows_at: usize,
    /// Where the part's scales start in the map: int8 only.
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
    /// Map every part of layer `layer` of a packed model. The model's opening validated every
    /// part's tensors and offsets; the maps are of the same descriptors whose headers were
    /// read, and each tensor's byte range is checked against its map once here, so serving a
    /// token never indexes outside a map.
    pub fn open(model: &PackedModel, layer: usize) -> Result<PackedStore> {
        let c: &PackedConfig = &model.config;
        let l = c
            .layers
            .get(layer)
            .ok_or_else(|| Error::input(format!("the packed model has no L3 layer {layer}")))?;
        let row_bytes = (l.row_width * c.dtype.value_bytes()) as usize;
        let scale_bytes = if c.semantics.tied { 4 } else { 8 };
        let mut parts = Vec::new();
        for p in &l.parts {
            let shard = model
                .shards
                .file_of(&p.rows)
                .and_then(|f| model.shards.file(f))
                .ok_or_else(|| {
                    Error::in_file(&model.dir, format!("no shard holds tensor {}", p.rows))
                })?;
            let map = shard.map()?;
            let n_rows = (p.row_end - p.row_start) as usize;
            let place = |name: &str, len: usize| -> Result<usize> {
                let at = model.shards.data_offset(name).unwrap_or(u64::MAX);
                match usize::try_from(at)
                    .ok()
                    .filter(|a| a.checked_add(len).is_some_and(|end| end <= map.len()))
                {
                    Some(a) => Ok(a),
                    None => Err(Error::in_file(
                        &shard.path,
                        format!("tensor {name} does not lie inside the file"),
                    )),
                }
            };
            let rows_at = place(&p.rows, n_rows * row_bytes)?;
            let scales_at = match (&p.scales, c.dtype) {
                (Some(s), TableDtype::Int8) => Some(place(s, n_rows * scale_bytes)?),
                (None, TableDtype::Int8) => {
                    return Err(Error::in_file(
                        &shard.path,
                        format!("int8 rows {} have no scales", p.rows),
                    ))
                }
                _ => None,
            };
            parts.push(MappedPart {
                token_end: p.token_end,
                row_start: p.row_start,
                path: shard.path.clone(),
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

    /// The part holding `token` and the token's global rows, or an error for a token outside
    /// the vocabulary.
    fn locate(&self, token: u32) -> Result<(&MappedPart, u64, u64)> {
        let t = token as usize;
        let (Some(&r0), Some(&r1)) = (self.bounds.get(t), self.bounds.get(t + 1)) else {
            return Err(Error::input(format!(
                "token id {token} is not below the vocabulary size {}",
                self.vocab()
            )));
        };
        let i = self.parts.partition_point(|p| p.token_end <= token as u64);
        let part = self
            .parts
            .get(i)
            .ok_or_else(|| Error::input(format!("token id {token}: no table part holds it")))?;
        Ok((part, r0 as u64, r1 as u64))
    }

    /// The packed bytes of one token: one contiguous range of its part file.
    pub fn token_bytes(&self, token: u32) -> Result<&[u8]> {
        let (part, r0, r1) = self.locate(token)?;
        self.rows_of(part, token, r0, r1)
    }

    fn rows_of<'a>(&self, part: &'a MappedPart, token: u32, r0: u64, r1: u64) -> Result<&'a [u8]> {
        let row_bytes = self.row_width * self.dtype.value_bytes() as usize;
        let start = r0
            .checked_sub(part.row_start)
            .map(|r| part.rows_at + r as usize * row_bytes);
        let len = (r1 - r0) as usize * row_bytes;
        start.and_then(|s| part.map.get(s..s + len)).ok_or_else(|| {
            Error::in_file(
                &part.path,
                format!("token {token}: its rows {r0}..{r1} lie outside the part's rows"),
            )
        })
    }

    /// Copy the packed bytes of `tokens` back to back into `out` (no conversion): what an
    /// engine that computes in the packed dtype would ship to the accelerator.
    pub fn gather_raw(&self, tokens: &[u32], out: &mut Vec<u8>) -> Result<()> {
        check_tokens(tokens, self.vocab())?;
        let ranges: Vec<&[u8]> = tokens
            .iter()
            .map(|&t| self.token_bytes(t))
            .collect::<Result<_>>()?;
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
            .try_for_each(|(dst, &t)| self.fill(t, dst))
    }
}

impl PackedStore {
    fn fill(&self, token: u32, dst: &mut [f32]) -> Result<()> {
        let (part, r0, r1) = self.locate(token)?;
        let bytes = self.rows_of(part, token, r0, r1)?;
        if let Some(f) = self.dtype.float() {
            convert::decode_into(f, bytes, dst);
            return Ok(());
        }
        let scale_parts = if self.tied { 1 } else { 2 };
        let missing = || {
            Error::in_file(
                &part.path,
                format!("token {token}: its int8 rows have no scales"),
            )
        };
        let at = part.scales_at.ok_or_else(missing)?;
        let first = at + (r0 - part.row_start) as usize * scale_parts * 4;
        let scales = part
            .map
            .get(first..first + (r1 - r0) as usize * scale_parts * 4)
            .ok_or_else(missing)?;
        let rows = bytes
            .chunks_exact(self.row_width)
            .zip(dst.chunks_exact_mut(self.row_width))
            .zip(scales.chunks_exact(scale_parts * 4));
        for ((row, out), s) in rows {
            let scale =
                |k: usize| f32::from_le_bytes([s[4 * k], s[4 * k + 1], s[4 * k + 2], s[4 * k + 3]]);
            let (key_out, value_out) = out.split_at_mut(self.key_width);
            convert::dequantise_into(&row[..self.key_width], scale(0), key_out);
            if !self.tied {
                convert::dequantise_into(&row[self.key_width..], scale(1), value_out);
            }
        }
        Ok(())
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
