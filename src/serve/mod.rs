//! Table sources for the forward pass: the rows of a batch's distinct tokens, gathered into one
//! contiguous staging buffer.
//!
//! [`PackedStore`] serves them straight from memory-mapped packed shards the way an offloading
//! inference engine would: one contiguous byte range per (token, layer), converted to f32 (and
//! int8 dequantised) on the way, never loading a whole table. [`SourceTables`] serves the same
//! rows from a source checkpoint, so the two can be compared. [`PackedStore::prefetch`] gathers
//! the next batch's rows on a background thread while the current forward runs.

pub mod hot;
pub mod packed;
pub mod source;
pub mod tier;

pub use hot::HotSet;
pub use packed::{open_packed, open_packed_tier, open_stores, PackedStore, Prefetch};
pub use source::SourceTables;
pub use tier::{DiskMode, TableTier};

use crate::util::error::{Error, Result};

/// The rows of a set of distinct tokens, back to back: token `tokens[i]` owns staging rows
/// `starts[i]..starts[i+1]`, each `row_width` f32 values (`[key | value]`, or the tied row).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Blocks {
    pub tokens: Vec<u32>,
    pub starts: Vec<usize>,
    pub rows: Vec<f32>,
    pub row_width: usize,
}

impl Blocks {
    pub fn block(&self, i: usize) -> &[f32] {
        &self.rows[self.starts[i] * self.row_width..self.starts[i + 1] * self.row_width]
    }
}

/// Anything that can hand out one layer's rows by token.
pub trait TableSource: Send + Sync {
    fn vocab(&self) -> usize;
    fn row_width(&self) -> usize;
    fn bounds(&self) -> &[i64];
    /// Bytes one row occupies where the rows are stored (what a gather reads).
    fn stored_row_bytes(&self) -> u64;
    /// Bytes read from the storage device itself so far (the `disk` tier; 0 elsewhere).
    fn device_bytes_read(&self) -> u64 {
        0
    }
    /// Where the rows come from, for reports: `ram`, `mmap`, `disk (O_DIRECT)`, ...
    fn served_from(&self) -> &'static str;
    /// Blocks served from a resident hot set so far, and their stored bytes (0 without one).
    fn hot_hits(&self) -> (u64, u64) {
        (0, 0)
    }
    /// Gather the rows of `tokens` (distinct ids, any order) as f32 into `blocks`, reusing
    /// its buffer (a serving loop keeps one staging buffer and never reallocates it).
    fn gather_into(&self, tokens: &[u32], blocks: &mut Blocks) -> Result<()>;

    /// Gather into a fresh buffer.
    fn gather(&self, tokens: &[u32]) -> Result<Blocks> {
        let mut blocks = Blocks::default();
        self.gather_into(tokens, &mut blocks)?;
        Ok(blocks)
    }
}

/// Check token ids against a vocabulary, naming the first bad one.
pub fn check_tokens(tokens: &[u32], vocab: usize) -> Result<()> {
    if let Some(i) = tokens.iter().position(|&t| t as usize >= vocab) {
        return Err(Error::input(format!(
            "token id {} (position {i}) is not below the vocabulary size {vocab}",
            tokens[i]
        )));
    }
    Ok(())
}

/// Split `rows` into one mutable slice per token, so tokens can be filled in parallel.
pub(crate) fn per_token_slices<'a>(
    rows: &'a mut [f32],
    starts: &[usize],
    width: usize,
) -> Vec<&'a mut [f32]> {
    let mut out = Vec::with_capacity(starts.len().saturating_sub(1));
    let mut rest = rows;
    for w in starts.windows(2) {
        let (head, tail) = rest.split_at_mut((w[1] - w[0]) * width);
        out.push(head);
        rest = tail;
    }
    out
}

/// Lay out `blocks` for `tokens`, reusing its allocations; every row is overwritten by the
/// gather, so the buffer is only grown, never cleared.
pub(crate) fn staging(blocks: &mut Blocks, tokens: &[u32], bounds: &[i64], width: usize) {
    blocks.tokens.clear();
    blocks.tokens.extend_from_slice(tokens);
    blocks.starts.clear();
    blocks.starts.push(0);
    let mut total = 0usize;
    for &t in tokens {
        total += (bounds[t as usize + 1] - bounds[t as usize]) as usize;
        blocks.starts.push(total);
    }
    blocks.rows.resize(total * width, 0.0);
    blocks.row_width = width;
}
