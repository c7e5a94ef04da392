//! A hot set: the rows of the most frequent tokens kept resident in memory (as f32, ready
//! for the layer), in front of any table source; the other tokens' rows still come from the
//! source's tier. Zipf-distributed text makes a small hot set serve most of a step's blocks.
//!
//! The rows are those the source gathers, so a model computes the same outputs with and
//! without a hot set (tested).

use super::{check_tokens, staging, Blocks, TableSource};
use crate::util::error::{Error, Result};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Marks a token outside the hot set in [`HotSet::slot`].
const COLD: u32 = u32::MAX;

pub struct HotSet {
    inner: Arc<dyn TableSource>,
    /// Per token, its index among the hot tokens, or [`COLD`].
    slot: Vec<u32>,
    /// Hot token k owns `rows[starts[k] * width .. starts[k + 1] * width]`.
    starts: Vec<usize>,
    rows: Vec<f32>,
    /// The cold tokens of a gather, reused from call to call.
    scratch: Mutex<(Vec<u32>, Blocks)>,
    hits: AtomicU64,
    hit_bytes: AtomicU64,
}

impl HotSet {
    /// Keep the rows of `tokens` (distinct ids below the vocabulary) resident.
    pub fn new(inner: Arc<dyn TableSource>, tokens: &[u32]) -> Result<HotSet> {
        let vocab = inner.vocab();
        check_tokens(tokens, vocab)?;
        let mut slot = vec![COLD; vocab];
        for (k, &t) in tokens.iter().enumerate() {
            if slot[t as usize] != COLD {
                return Err(Error::input(format!("the hot set names token {t} twice")));
            }
            slot[t as usize] = k as u32;
        }
        let blocks = inner.gather(tokens)?;
        Ok(HotSet {
            slot,
            starts: blocks.starts,
            rows: blocks.rows,
            inner,
            scratch: Mutex::new((Vec::new(), Blocks::default())),
            hits: AtomicU64::new(0),
            hit_bytes: AtomicU64::new(0),
        })
    }

    /// Bytes the resident rows take (f32).
    pub fn resident_bytes(&self) -> u64 {
        (self.rows.len() * 4) as u64
    }
}

impl TableSource for HotSet {
    fn vocab(&self) -> usize {
        self.inner.vocab()
    }
    fn row_width(&self) -> usize {
        self.inner.row_width()
    }
    fn bounds(&self) -> &[i64] {
        self.inner.bounds()
    }
    fn stored_row_bytes(&self) -> u64 {
        self.inner.stored_row_bytes()
    }
    fn device_bytes_read(&self) -> u64 {
        self.inner.device_bytes_read()
    }
    fn served_from(&self) -> &'static str {
        self.inner.served_from()
    }
    fn hot_hits(&self) -> (u64, u64) {
        (
            self.hits.load(Ordering::Relaxed),
            self.hit_bytes.load(Ordering::Relaxed),
        )
    }

    fn gather_into(&self, tokens: &[u32], blocks: &mut Blocks) -> Result<()> {
        check_tokens(tokens, self.vocab())?;
        let width = self.row_width();
        staging(blocks, tokens, self.bounds(), width);
        let mut guard = self
            .scratch
            .lock()
            .map_err(|_| Error::Other("a hot-set gather panicked".into()))?;
        let (cold, cold_blocks) = &mut *guard;
        cold.clear();
        cold.extend(
            tokens
                .iter()
                .copied()
                .filter(|&t| self.slot[t as usize] == COLD),
        );
        if !cold.is_empty() {
            self.inner.gather_into(cold, cold_blocks)?;
        }
        let (mut next_cold, mut hit_rows) = (0usize, 0u64);
        for (i, &t) in tokens.iter().enumerate() {
            let dst = &mut blocks.rows[blocks.starts[i] * width..blocks.starts[i + 1] * width];
            let k = self.slot[t as usize];
            if k == COLD {
                dst.copy_from_slice(cold_blocks.block(next_cold));
                next_cold += 1;
            } else {
                let k = k as usize;
                dst.copy_from_slice(&self.rows[self.starts[k] * width..self.starts[k + 1] * width]);
                hit_rows += (self.starts[k + 1] - self.starts[k]) as u64;
            }
        }
        self.hits
            .fetch_add((tokens.len() - cold.len()) as u64, Ordering::Relaxed);
        self.hit_bytes
            .fetch_add(hit_rows * self.stored_row_bytes(), Ordering::Relaxed);
        Ok(())
    }
}
