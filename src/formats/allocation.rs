//! The allocation: how many rows of each L3 table every token owns, stored as the CSR prefix
//! sum `bounds` (length vocab + 1, `bounds[0] = 0`, `bounds[vocab] = n_emb`). This type is
//! shared by every stage after `allocate`: packing, the forward pass and evaluation all read it,
//! with the figures every report gives of it (histogram, E[d_t]).

use crate::formats::safetensors::TensorReader;
use crate::util::error::{Error, Result};
use crate::util::safetensors_file::{self as st, MappedSafetensors, TensorBytes};
use safetensors::Dtype;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

pub const ALLOCATION_FORMAT: &str = "l3kit-allocation";
pub const ALLOCATION_VERSION: &str = "1";

/// Provenance of an allocation, stored in the file's metadata.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocationMeta {
    /// `lzw`, `uniform`, `frequency`, or `external` for bounds from elsewhere.
    pub method: String,
    pub k_max: u32,
    pub n_emb: u64,
    pub vocab_size: u32,
    /// Content hash of the profile it was made from, when made from one.
    pub profile_sha256: Option<String>,
    pub tokenizer_sha256: Option<String>,
    /// The fill policy used when the codewords ran out, and how many rows it placed.
    pub fill: Option<String>,
    pub fill_rows: u64,
}

/// A validated allocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocation {
    bounds: Vec<i64>,
    pub meta: AllocationMeta,
}

impl Allocation {
    /// Build from per-token row counts (every count >= 1).
    pub fn from_rows(rows: &[u32], meta: AllocationMeta) -> Result<Self> {
        let mut bounds = Vec::with_capacity(rows.len() + 1);
        let mut total = 0i64;
        bounds.push(0);
        for &r in rows {
            total = total
                .checked_add(i64::from(r))
                .ok_or_else(|| Error::input("an allocation of more than 2^63 rows"))?;
            bounds.push(total);
        }
        Self::from_bounds(bounds, meta).map_err(Error::Input)
    }

    /// Validate bounds: length >= 2, starts at 0, strictly increasing (every token owns at
    /// least one row). The error text says what is wrong and where.
    pub fn from_bounds(
        bounds: Vec<i64>,
        mut meta: AllocationMeta,
    ) -> std::result::Result<Self, String> {
        check_bounds(&bounds)?;
        let vocab = u32::try_from(bounds.len() - 1).map_err(|_| {
            format!(
                "{} tokens is more than a vocabulary can have",
                bounds.len() - 1
            )
        })?;
        let n_emb = *bounds.last().expect("checked non-empty") as u64;
        if meta.vocab_size == 0 {
            meta.vocab_size = vocab;
        }
        if meta.n_emb == 0 {
            meta.n_emb = n_emb;
        }
        if meta.vocab_size != vocab || meta.n_emb != n_emb {
            return Err(format!(
                "metadata says vocab {} and n_emb {}, the bounds give vocab {vocab} and n_emb {n_emb}",
                meta.vocab_size, meta.n_emb
            ));
        }
        // Strictly increasing from 0, so every difference is positive and fits i64.
        let (wide_token, widest) = bounds
            .windows(2)
            .map(|w| w[1] - w[0])
            .enumerate()
            .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)))
            .expect("at least one token");
        let widest = u32::try_from(widest).map_err(|_| {
            format!(
                "token {wide_token} owns {widest} rows; a block holds at most {} rows",
                u32::MAX
            )
        })?;
        if meta.fill_rows > n_emb - u64::from(vocab) {
            return Err(format!(
                "metadata says a fill policy placed {} rows, more than the {} rows beyond one \
                 per token",
                meta.fill_rows,
                n_emb - u64::from(vocab)
            ));
        }
        if meta.k_max == 0 {
            meta.k_max = widest;
        } else if widest > meta.k_max {
            return Err(format!(
                "token {wide_token} owns {widest} rows, more than k_max {}",
                meta.k_max
            ));
        }
        Ok(Allocation { bounds, meta })
    }

    pub fn bounds(&self) -> &[i64] {
        &self.bounds
    }
    pub fn vocab(&self) -> usize {
        self.bounds.len() - 1
    }
    pub fn n_emb(&self) -> u64 {
        *self.bounds.last().expect("non-empty") as u64
    }
    /// Rows of token `t`.
    pub fn rows(&self, t: usize) -> u32 {
        (self.bounds[t + 1] - self.bounds[t]) as u32
    }
    pub fn rows_vec(&self) -> Vec<u32> {
        self.bounds
            .windows(2)
            .map(|w| (w[1] - w[0]) as u32)
            .collect()
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        self.write_with_metadata(path, &[])
    }

    /// Write with extra metadata entries (e.g. the planner's budget); l3kit's own keys win.
    pub fn write_with_metadata(&self, path: &Path, extra: &[(String, String)]) -> Result<()> {
        let mut metadata: BTreeMap<String, String> = extra.iter().cloned().collect();
        metadata.insert("format".into(), ALLOCATION_FORMAT.into());
        metadata.insert("version".into(), ALLOCATION_VERSION.into());
        metadata.insert("method".into(), self.meta.method.clone());
        metadata.insert("k_max".into(), self.meta.k_max.to_string());
        metadata.insert("n_emb".into(), self.meta.n_emb.to_string());
        metadata.insert("vocab_size".into(), self.meta.vocab_size.to_string());
        if let Some(h) = &self.meta.profile_sha256 {
            metadata.insert("profile_sha256".into(), h.clone());
        }
        if let Some(h) = &self.meta.tokenizer_sha256 {
            metadata.insert("tokenizer_sha256".into(), h.clone());
        }
        if let Some(f) = &self.meta.fill {
            metadata.insert("fill".into(), f.clone());
            metadata.insert("fill_rows".into(), self.meta.fill_rows.to_string());
        }
        st::write_file(
            path,
            &[TensorBytes::i64s("bounds", &self.bounds)],
            &metadata,
            8,
        )
    }

    /// Read an allocation file: any safetensors file with an I64 `bounds` tensor. l3kit's own
    /// metadata is used when present, so allocations made elsewhere load too.
    pub fn read(path: &Path) -> Result<Self> {
        let file = MappedSafetensors::open(path)?;
        let metadata = file.metadata()?;
        let bounds = file.vec_i64("bounds")?;
        let number = |key: &str| -> Result<u64> {
            match metadata.get(key) {
                None => Ok(0),
                Some(v) => v.parse().map_err(|_| {
                    Error::in_file(path, format!("metadata {key} = {v:?} is not a number"))
                }),
            }
        };
        let number32 = |key: &str| -> Result<u32> {
            let v = number(key)?;
            u32::try_from(v).map_err(|_| {
                Error::in_file(
                    path,
                    format!(
                        "metadata {key} = {v} does not fit 32 bits (at most {})",
                        u32::MAX
                    ),
                )
            })
        };
        let meta = AllocationMeta {
            method: metadata
                .get("method")
                .cloned()
                .unwrap_or_else(|| "external".into()),
            k_max: number32("k_max")?,
            n_emb: number("n_emb")?,
            vocab_size: number32("vocab_size")?,
            profile_sha256: metadata.get("profile_sha256").cloned(),
            tokenizer_sha256: metadata.get("tokenizer_sha256").cloned(),
            fill: metadata.get("fill").cloned(),
            fill_rows: number("fill_rows")?,
        };
        Allocation::from_bounds(bounds, meta)
            .map_err(|m| Error::in_file(path, format!("invalid bounds: {m}")))
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Bucket {
    pub label: String,
    pub min_rows: u32,
    pub max_rows: u32,
    pub tokens: u64,
    pub rows: u64,
}

/// E[d_t] = sum_t p(t) d_t.
pub fn expected_rows(rows: &[u32], unigram: &[u64]) -> Option<f64> {
    let total: u128 = unigram.iter().map(|&u| u128::from(u)).sum();
    if total == 0 || rows.len() != unigram.len() {
        return None;
    }
    let weighted: f64 = rows
        .iter()
        .zip(unigram)
        .map(|(&r, &c)| r as f64 * c as f64)
        .sum();
    Some(weighted / total as f64)
}

/// Buckets 1, 2, 3-4, 5-8, ... up to k_max.
pub fn histogram(rows: &[u32], k_max: u32) -> Vec<Bucket> {
    let mut buckets = Vec::new();
    let (mut lo, mut hi) = (1u32, 1u32);
    loop {
        let label = if lo == hi {
            lo.to_string()
        } else {
            format!("{lo}-{hi}")
        };
        buckets.push(Bucket {
            label,
            min_rows: lo,
            max_rows: hi,
            tokens: 0,
            rows: 0,
        });
        if hi >= k_max {
            break;
        }
        lo = hi + 1;
        hi = hi.saturating_mul(2);
    }
    for &r in rows {
        let i = buckets
            .iter()
            .position(|b| r <= b.max_rows)
            .unwrap_or(buckets.len() - 1);
        buckets[i].tokens += 1;
        buckets[i].rows += r as u64;
    }
    buckets
}

/// Read a bounds-like tensor (I64, or I32 as some exporters write it) from a tensor reader.
pub fn read_bounds<R: TensorReader + ?Sized>(reader: &R, name: &str) -> Result<Vec<i64>> {
    let info = reader
        .tensor(name)
        .ok_or_else(|| Error::in_file(reader.origin(), format!("missing tensor {name}")))?;
    let dtype = info.dtype;
    let bytes = reader.read_all(name)?;
    Ok(match dtype {
        Dtype::I64 => bytes
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect(),
        Dtype::I32 => bytes
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes(c.try_into().expect("4 bytes")) as i64)
            .collect(),
        other => {
            return Err(Error::in_file(
                reader.origin(),
                format!("bounds tensor {name} has dtype {other:?}, expected I64"),
            ))
        }
    })
}

/// The structural invariants of a bounds vector, with the first violation described.
pub fn check_bounds(bounds: &[i64]) -> std::result::Result<(), String> {
    if bounds.len() < 2 {
        return Err(format!(
            "bounds has {} entries; it needs vocab + 1 >= 2",
            bounds.len()
        ));
    }
    if bounds[0] != 0 {
        return Err(format!("bounds[0] is {}, it must be 0", bounds[0]));
    }
    for (t, w) in bounds.windows(2).enumerate() {
        if w[1] <= w[0] {
            return Err(if w[1] < w[0] {
                format!(
                    "bounds are not monotone: bounds[{}] = {} < bounds[{t}] = {}",
                    t + 1,
                    w[1],
                    w[0]
                )
            } else {
                format!(
                    "token {t} owns no rows (bounds[{t}] = bounds[{}] = {})",
                    t + 1,
                    w[0]
                )
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_invariants() {
        assert!(check_bounds(&[0, 1, 3]).is_ok());
        assert!(check_bounds(&[0]).unwrap_err().contains("entries"));
        assert!(check_bounds(&[1, 2]).unwrap_err().contains("must be 0"));
        assert!(check_bounds(&[0, 2, 1])
            .unwrap_err()
            .contains("not monotone"));
        assert!(check_bounds(&[0, 2, 2])
            .unwrap_err()
            .contains("owns no rows"));
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.safetensors");
        let a = Allocation::from_rows(
            &[1, 3, 2],
            AllocationMeta {
                method: "lzw".into(),
                k_max: 4,
                ..Default::default()
            },
        )
        .unwrap();
        a.write(&p).unwrap();
        let b = Allocation::read(&p).unwrap();
        assert_eq!(a, b);
        assert_eq!(b.bounds(), &[0, 1, 4, 6]);
        assert_eq!(b.n_emb(), 6);
    }

    #[test]
    fn histogram_buckets() {
        let h = histogram(&[1, 2, 3, 4, 5, 512], 512);
        let labels: Vec<_> = h.iter().map(|b| b.label.as_str()).collect();
        assert_eq!(labels[..4], ["1", "2", "3-4", "5-8"]);
        assert_eq!(labels.last().copied(), Some("257-512"));
        assert_eq!(h[2].tokens, 2);
        assert_eq!(h.last().unwrap().tokens, 1);
    }
}
