//! The allocation report: histogram, tokens at the cap, E[d_t], and with a layer shape the
//! bytes per layer and per token.

pub use crate::formats::allocation::Bucket;
use crate::formats::allocation::{expected_rows, histogram, Allocation};
use crate::formats::dtype::TableDtype;
use crate::util::error::{Error, Result};
use serde::Serialize;

/// Layer shape for the memory part of the report.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct LayerShape {
    pub d_in: u64,
    pub d_emb: u64,
    pub tied: bool,
    pub dtype: TableDtype,
}

impl LayerShape {
    /// Bytes of one table row, refused (naming the flags) when a width is 0 or the row's size
    /// does not fit 64 bits.
    pub fn row_bytes(&self) -> Result<u64> {
        if self.d_in == 0 || self.d_emb == 0 {
            return Err(Error::input(format!(
                "--d-in {} --d-emb {}: a layer's widths must be at least 1",
                self.d_in, self.d_emb
            )));
        }
        self.dtype
            .checked_row_bytes(self.d_in, self.d_emb, self.tied)
            .ok_or_else(|| {
                Error::input(format!(
                    "--d-in {} --d-emb {}: one table row would take more than 2^64 bytes",
                    self.d_in, self.d_emb
                ))
            })
    }

    /// Bytes of one L3 table of `n_emb` rows, refused when it does not fit 64 bits.
    pub fn layer_bytes(&self, n_emb: u64) -> Result<u64> {
        let row = self.row_bytes()?;
        row.checked_mul(n_emb).ok_or_else(|| {
            Error::input(format!(
                "--d-in {} --d-emb {}: a layer of {n_emb} rows of {row} bytes would take more \
                 than 2^64 bytes",
                self.d_in, self.d_emb
            ))
        })
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct MemoryReport {
    pub d_in: u64,
    pub d_emb: u64,
    pub tied: bool,
    pub dtype: TableDtype,
    pub bytes_per_row: u64,
    pub bytes_per_layer: u64,
    pub worst_case_bytes_per_token: u64,
    pub expected_bytes_per_token: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct TopToken {
    pub id: u32,
    pub text: Option<String>,
    pub rows: u32,
    pub count: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct AllocationReport {
    pub method: String,
    pub vocab_size: u64,
    pub n_emb: u64,
    pub k_max: u32,
    pub mean_rows_per_token: f64,
    pub max_rows: u32,
    pub tokens_at_cap: u64,
    pub histogram: Vec<Bucket>,
    /// E[d_t] under the profile's unigram distribution.
    pub expected_rows_per_token: Option<f64>,
    pub fill: Option<String>,
    pub fill_rows: u64,
    pub memory: Option<MemoryReport>,
    pub top_tokens: Vec<TopToken>,
}

/// The report of an allocation. Refused only when the layer shape's sizes overflow 64 bits
/// (see [`LayerShape::layer_bytes`]), so every figure is exact.
pub fn report(
    alloc: &Allocation,
    unigram: Option<&[u64]>,
    shape: Option<LayerShape>,
    tokenizer: Option<&tokenizers::Tokenizer>,
) -> Result<AllocationReport> {
    let rows = alloc.rows_vec();
    let k_max = alloc.meta.k_max;
    let max_rows = rows.iter().copied().max().unwrap_or(0);
    let expected = unigram.and_then(|u| expected_rows(&rows, u));
    let memory = match shape {
        None => None,
        Some(s) => {
            let per_row = s.row_bytes()?;
            Some(MemoryReport {
                d_in: s.d_in,
                d_emb: s.d_emb,
                tied: s.tied,
                dtype: s.dtype,
                bytes_per_row: per_row,
                bytes_per_layer: s.layer_bytes(alloc.n_emb())?,
                // A block is at most n_emb rows, so this fits when the layer does.
                worst_case_bytes_per_token: per_row * u64::from(max_rows),
                expected_bytes_per_token: expected.map(|e| e * per_row as f64),
            })
        }
    };
    let mut top: Vec<usize> = (0..rows.len()).collect();
    let count = |t: usize| unigram.and_then(|u| u.get(t).copied()).unwrap_or(0);
    top.sort_by(|&a, &b| {
        rows[b]
            .cmp(&rows[a])
            .then(count(b).cmp(&count(a)))
            .then(a.cmp(&b))
    });
    let top_tokens = top
        .into_iter()
        .take(10)
        .map(|t| TopToken {
            id: t as u32,
            text: tokenizer.and_then(|tok| tok.decode(&[t as u32], false).ok()),
            rows: rows[t],
            count: count(t),
        })
        .collect();
    Ok(AllocationReport {
        method: alloc.meta.method.clone(),
        vocab_size: alloc.vocab() as u64,
        n_emb: alloc.n_emb(),
        k_max,
        mean_rows_per_token: alloc.n_emb() as f64 / alloc.vocab() as f64,
        max_rows,
        tokens_at_cap: rows.iter().filter(|&&r| r == k_max).count() as u64,
        histogram: histogram(&rows, k_max),
        expected_rows_per_token: expected,
        fill: alloc.meta.fill.clone(),
        fill_rows: alloc.meta.fill_rows,
        memory,
        top_tokens,
    })
}
