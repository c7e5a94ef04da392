//! Rows served from a packed folder's memory-mapped part files, one contiguous byte range per
//! (token, layer), converted to f32 (int8 dequantised) on the way.

use super::tier::{owned_copy, DeviceFile, DiskMode, PartBytes, TableTier};
use super::{check_tokens, per_token_slices, staging, Blocks, TableSource};
use crate::formats::dtype::{self as convert, TableDtype};
use crate::formats::packed::{PackedConfig, PackedModel};
use crate::util::error::{Error, Result};
use rayon::prelude::*;
use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// One part file of a packed layer, as its tier holds it.
struct StoredPart {
    token_end: u64,
    row_start: u64,
    path: PathBuf,
    bytes: PartBytes,
    /// Where the part's rows start in `bytes`.
    rows_at: u64,
    /// Where the part's scales start in `bytes`: int8 only.
    scales_at: Option<u64>,
}

/// One layer of a packed folder, served from its part files through a [`TableTier`].
pub struct PackedStore {
    dtype: TableDtype,
    row_width: usize,
    key_width: usize,
    tied: bool,
    bounds: Vec<i64>,
    parts: Vec<StoredPart>,
    tier: TableTier,
    disk_mode: Option<DiskMode>,
    /// Bytes the `disk` tier read from the device (alignment padding included).
    device_bytes: Arc<AtomicU64>,
}

impl PackedStore {
    /// Map every part of layer `layer` of a packed model. The model's opening validated every
    /// part's tensors and offsets; the maps are of the same descriptors whose headers were
    /// read, and each tensor's byte range is checked against its map once here, so serving a
    /// token never indexes outside a map.
    pub fn open(model: &PackedModel, layer: usize) -> Result<PackedStore> {
        Self::open_tier(model, layer, TableTier::Mmap)
    }

    /// Open layer `layer` served from `tier`. `ram` copies the layer's rows (and scales) out
    /// of the maps now; `disk` keeps no map and reads from the device on every gather.
    pub fn open_tier(model: &PackedModel, layer: usize, tier: TableTier) -> Result<PackedStore> {
        let c: &PackedConfig = &model.config;
        let device_bytes = Arc::new(AtomicU64::new(0));
        let mut disk_mode = None;
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
            let rows_len = n_rows * row_bytes;
            let rows_at = place(&p.rows, rows_len)?;
            let scales_len = n_rows * scale_bytes;
            let scales_at = match (&p.scales, c.dtype) {
                (Some(s), TableDtype::Int8) => Some(place(s, scales_len)?),
                (None, TableDtype::Int8) => {
                    return Err(Error::in_file(
                        &shard.path,
                        format!("int8 rows {} have no scales", p.rows),
                    ))
                }
                _ => None,
            };
            let (bytes, rows_at, scales_at) = match tier {
                TableTier::Mmap => (
                    PartBytes::Mapped(Arc::new(map)),
                    rows_at as u64,
                    scales_at.map(|a| a as u64),
                ),
                TableTier::Ram => {
                    let mut owned = owned_copy(&map, rows_at, rows_len, &shard.path)?;
                    if let Some(a) = scales_at {
                        owned.extend_from_slice(&owned_copy(&map, a, scales_len, &shard.path)?);
                    }
                    let scales = scales_at.map(|_| rows_len as u64);
                    (PartBytes::Owned(owned), 0, scales)
                }
                TableTier::Disk => {
                    let d = DeviceFile::open(
                        shard.file(),
                        &shard.path,
                        map.len() as u64,
                        Arc::clone(&device_bytes),
                    )?;
                    disk_mode = Some(d.mode());
                    (
                        PartBytes::Device(d),
                        rows_at as u64,
                        scales_at.map(|a| a as u64),
                    )
                }
            };
            parts.push(StoredPart {
                token_end: p.token_end,
                row_start: p.row_start,
                path: shard.path.clone(),
                bytes,
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
            tier,
            disk_mode,
            device_bytes,
        })
    }

    pub fn tier(&self) -> TableTier {
        self.tier
    }

    /// How the `disk` tier reaches the device (None for the other tiers).
    pub fn disk_mode(&self) -> Option<DiskMode> {
        self.disk_mode
    }

    /// Bytes of the layer's tables the store holds (rows and scales): what `ram` loads.
    pub fn table_bytes(&self) -> u64 {
        let rows = self.bounds.last().copied().unwrap_or(0).max(0) as u64;
        rows * self.stored_row_bytes()
    }

    /// The part holding `token` and the token's global rows, or an error for a token outside
    /// the vocabulary.
    fn locate(&self, token: u32) -> Result<(&StoredPart, u64, u64)> {
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

    /// The packed bytes of one token: one contiguous range of its part file (borrowed from
    /// memory or the map; read from the device for the `disk` tier).
    pub fn token_bytes(&self, token: u32) -> Result<Cow<'_, [u8]>> {
        let (part, r0, r1) = self.locate(token)?;
        let (at, len) = self.rows_range(part, token, r0, r1)?;
        if let Some(b) = part.bytes.slice(at, len) {
            return Ok(Cow::Borrowed(b));
        }
        let mut v = Vec::new();
        part.bytes
            .with_range(at, len, &mut |b| v.extend_from_slice(b))
            .map_err(|e| in_part(part, e))?;
        Ok(Cow::Owned(v))
    }

    /// Where token `token`'s rows `r0..r1` lie in its part's bytes.
    fn rows_range(&self, part: &StoredPart, token: u32, r0: u64, r1: u64) -> Result<(u64, u64)> {
        let row_bytes = (self.row_width * self.dtype.value_bytes() as usize) as u64;
        r0.checked_sub(part.row_start)
            .and_then(|r| r.checked_mul(row_bytes))
            .and_then(|r| r.checked_add(part.rows_at))
            .zip((r1 - r0).checked_mul(row_bytes))
            .ok_or_else(|| {
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
        let ranges: Vec<(&StoredPart, u64, u64)> = tokens
            .iter()
            .map(|&t| {
                let (part, r0, r1) = self.locate(t)?;
                let (at, len) = self.rows_range(part, t, r0, r1)?;
                Ok((part, at, len))
            })
            .collect::<Result<_>>()?;
        let total: usize = ranges.iter().map(|r| r.2 as usize).sum();
        if out.len() != total {
            out.clear();
            out.resize(total, 0);
        }
        let mut slices = Vec::with_capacity(ranges.len());
        let mut rest = out.as_mut_slice();
        for r in &ranges {
            let (head, tail) = rest.split_at_mut(r.2 as usize);
            slices.push(head);
            rest = tail;
        }
        self.on_pool(|| {
            slices
                .into_par_iter()
                .zip(ranges.par_iter())
                .try_for_each(|(dst, &(part, at, len))| {
                    part.bytes
                        .with_range(at, len, &mut |b| dst.copy_from_slice(b))
                        .map_err(|e| in_part(part, e))
                })
        })
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
    fn device_bytes_read(&self) -> u64 {
        self.device_bytes.load(Ordering::Relaxed)
    }
    fn served_from(&self) -> &'static str {
        match (self.tier, self.disk_mode) {
            (TableTier::Ram, _) => "ram",
            (TableTier::Mmap, _) => "mmap",
            (TableTier::Disk, Some(DiskMode::Fadvise)) => "disk (fadvise)",
            (TableTier::Disk, _) => "disk (O_DIRECT)",
        }
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
        self.on_pool(|| {
            slices
                .into_par_iter()
                .zip(tokens.par_iter())
                .try_for_each(|(dst, &t)| self.fill(t, dst))
        })
    }
}

/// The threads that gather from tiers whose reads can block on the device (`disk`, and
/// `mmap` when a page is not cached). A thread blocked in a read must not be one of the
/// compute pool's: the blocks running beside a prefetch would lose a core to a sleeping
/// thread. These threads mostly wait, so there are more of them than cores: their reads are
/// in flight together (queue depth), which is what a device's bandwidth needs.
fn io_pool() -> Option<&'static rayon::ThreadPool> {
    static POOL: std::sync::OnceLock<Option<rayon::ThreadPool>> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(IO_THREADS)
            .thread_name(|i| format!("l3kit-io-{i}"))
            .build()
            .ok()
    })
    .as_ref()
}

/// Reads in flight at once on the I/O pool.
const IO_THREADS: usize = 8;

impl PackedStore {
    /// Run a parallel gather on the pool that suits the tier: memory copies on the compute
    /// pool, reads that may block on the I/O pool (the compute pool if it cannot be made).
    fn on_pool<R: Send>(&self, job: impl FnOnce() -> R + Send) -> R {
        match (self.tier, io_pool()) {
            (TableTier::Disk | TableTier::Mmap, Some(pool)) => pool.install(job),
            _ => job(),
        }
    }

    fn fill(&self, token: u32, dst: &mut [f32]) -> Result<()> {
        let (part, r0, r1) = self.locate(token)?;
        let (at, len) = self.rows_range(part, token, r0, r1)?;
        if let Some(f) = self.dtype.float() {
            return part
                .bytes
                .with_range(at, len, &mut |b| convert::decode_into(f, b, dst))
                .map_err(|e| in_part(part, e));
        }
        let scale_parts = if self.tied { 1 } else { 2 };
        let at_scales = part.scales_at.ok_or_else(|| {
            Error::in_file(
                &part.path,
                format!("token {token}: its int8 rows have no scales"),
            )
        })?;
        let scale_len = (r1 - r0) * scale_parts * 4;
        let first = at_scales + (r0 - part.row_start) * scale_parts * 4;
        let mut scales = Vec::with_capacity(scale_len as usize / 4);
        part.bytes
            .with_range(first, scale_len, &mut |b| {
                scales.extend(
                    b.chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
                )
            })
            .map_err(|e| in_part(part, e))?;
        let (width, key_width, tied) = (self.row_width, self.key_width, self.tied);
        part.bytes
            .with_range(at, len, &mut |bytes| {
                let rows = bytes
                    .chunks_exact(width)
                    .zip(dst.chunks_exact_mut(width))
                    .zip(scales.chunks_exact(scale_parts as usize));
                for ((row, out), s) in rows {
                    let (key_out, value_out) = out.split_at_mut(key_width);
                    convert::dequantise_into(&row[..key_width], s[0], key_out);
                    if !tied {
                        convert::dequantise_into(&row[key_width..], s[1], value_out);
                    }
                }
            })
            .map_err(|e| in_part(part, e))
    }
}

/// Name the part file in a read error.
fn in_part(part: &StoredPart, e: Error) -> Error {
    match e {
        Error::Other(m) => Error::in_file(&part.path, m),
        other => other,
    }
}

/// Open every layer of a packed folder as stores (memory-mapped).
pub fn open_packed(dir: &Path) -> Result<(PackedModel, Vec<Arc<PackedStore>>)> {
    open_packed_tier(dir, TableTier::Mmap)
}

/// Open every layer of a packed folder as stores served from `tier`; `ram` is refused when
/// the tables would not fit in the available memory.
pub fn open_packed_tier(
    dir: &Path,
    tier: TableTier,
) -> Result<(PackedModel, Vec<Arc<PackedStore>>)> {
    let model = PackedModel::open(dir)?;
    let stores = open_stores(&model, tier)?;
    Ok((model, stores))
}

/// The stores of every layer of an open packed model.
pub fn open_stores(model: &PackedModel, tier: TableTier) -> Result<Vec<Arc<PackedStore>>> {
    if tier == TableTier::Ram {
        // From the validated config: every layer holds n_emb rows of the packed row size.
        let c = &model.config;
        let total = c.layers.iter().fold(0u64, |sum, l| {
            let row = c.dtype.row_bytes(l.d_in, l.d_emb, c.semantics.tied);
            sum.saturating_add(l.n_emb.saturating_mul(row))
        });
        super::tier::check_ram_budget(total, &model.dir)?;
    }
    (0..model.config.layers.len())
        .map(|i| PackedStore::open_tier(model, i, tier).map(Arc::new))
        .collect()
}
