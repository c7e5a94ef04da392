//! Reading packed models back: `inspect` (a summary of a packed folder or of a source
//! checkpoint) and `inspect --check` (every hash and structural invariant).

use crate::checkpoint::detect::{detect_source, resolve_bounds};
use crate::checkpoint::dialect::Dialect;
use crate::checkpoint::Checkpoint;
use crate::formats::allocation::expected_rows;
use crate::formats::packed::PackedModel;
use crate::formats::packed::TableDtype;
use crate::formats::profile::Profile;
use crate::util::error::{Error, IoContext, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Serialize)]
pub struct SourceLayerReport {
    pub name: String,
    pub layer_id: Option<u32>,
    pub keys: String,
    pub values: Option<String>,
    pub dtype: String,
    pub n_emb: u64,
    pub d_in: u64,
    pub d_emb: u64,
    pub d_up: u64,
    pub tied: bool,
    pub allocation_from: String,
    pub lambda: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct SourceReport {
    pub path: PathBuf,
    pub dialect: String,
    pub semantics: crate::formats::semantics::Semantics,
    pub vocab_size: Option<u64>,
    pub layers: Vec<SourceLayerReport>,
    pub other_tensors: usize,
    pub other_bytes: u64,
    pub files: Vec<PathBuf>,
}

/// What `inspect` sees in a source checkpoint.
pub fn inspect_source(
    path: &Path,
    dialect_choice: Option<Dialect>,
    map: Option<&Path>,
    allocation: Option<&Path>,
) -> Result<SourceReport> {
    let ckpt = Checkpoint::open(path)?;
    let (detected, alloc) = detect_source(&ckpt, dialect_choice, map, allocation)?;
    let has_all_bounds = detected.layers.iter().all(|l| l.bounds.is_some());
    let vocab = if alloc.is_some() || has_all_bounds {
        let bounds = resolve_bounds(&ckpt, &detected, alloc.as_ref())?;
        Some(bounds[0].len() as u64 - 1)
    } else {
        None
    };
    let mut table_names = std::collections::BTreeSet::new();
    let layers = detected
        .layers
        .iter()
        .map(|l| {
            table_names.insert(l.keys.clone());
            if let Some(v) = &l.values {
                table_names.insert(v.clone());
            }
            if let Some(b) = &l.bounds {
                table_names.insert(b.clone());
            }
            SourceLayerReport {
                name: l.name.clone(),
                layer_id: l.layer_id,
                keys: l.keys.clone(),
                values: l.values.clone(),
                dtype: crate::util::safetensors_file::dtype_name(
                    ckpt.get(&l.keys).expect("resolved").dtype,
                ),
                n_emb: l.n_emb,
                d_in: l.d_in,
                d_emb: l.d_emb,
                d_up: l.d_up,
                tied: l.values.is_none(),
                allocation_from: match (&l.bounds, &alloc) {
                    (Some(b), Some((p, _))) => {
                        format!("checkpoint tensor {b} (agrees with {})", p.display())
                    }
                    (Some(b), None) => format!("checkpoint tensor {b}"),
                    (None, Some((p, _))) => format!("allocation file {}", p.display()),
                    (None, None) => "none: pack needs --allocation FILE".to_string(),
                },
                lambda: l.lambda.as_ref().map(|(n, i)| format!("{n}[{i}]")),
            }
        })
        .collect();
    let others: Vec<_> = ckpt
        .tensors()
        .into_iter()
        .filter(|t| !table_names.contains(&t.name))
        .collect();
    Ok(SourceReport {
        path: path.to_path_buf(),
        dialect: detected.dialect,
        semantics: detected.semantics,
        vocab_size: vocab,
        layers,
        other_tensors: others.len(),
        other_bytes: others.iter().map(|t| t.byte_len() as u64).sum(),
        files: ckpt.files().to_vec(),
    })
}

#[derive(Clone, Debug, Serialize)]
pub struct PackedLayerReport {
    pub name: String,
    pub layer_id: Option<u32>,
    pub n_emb: u64,
    pub d_in: u64,
    pub d_emb: u64,
    pub d_up: u64,
    pub parts: usize,
    pub table_bytes: u64,
    pub bytes_per_row: u64,
    pub max_rows: u32,
    pub worst_case_bytes_per_token: u64,
    pub expected_bytes_per_token: Option<f64>,
    pub lambda: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct PackedReport {
    pub dir: PathBuf,
    pub format_version: u32,
    pub dialect: String,
    pub dtype: TableDtype,
    pub vocab_size: u64,
    pub k_max: u32,
    pub semantics: crate::formats::semantics::Semantics,
    pub layers: Vec<PackedLayerReport>,
    pub files: usize,
    pub total_bytes: u64,
}

/// Summarise a packed folder; with a profile, add the expected bytes per token.
pub fn inspect_packed(dir: &Path, profile: Option<&Profile>) -> Result<PackedReport> {
    let model = PackedModel::open(dir)?;
    let c = &model.config;
    if let Some(p) = profile {
        if p.meta.vocab_size as u64 != c.vocab_size {
            return Err(Error::input(format!(
                "the profile's vocabulary ({}) differs from the packed model's ({})",
                p.meta.vocab_size, c.vocab_size
            )));
        }
    }
    let mut layers = Vec::new();
    for (i, l) in c.layers.iter().enumerate() {
        let bounds = model.bounds(i)?;
        let rows: Vec<u32> = bounds.windows(2).map(|w| (w[1] - w[0]) as u32).collect();
        let max_rows = rows.iter().copied().max().unwrap_or(0);
        let per_row = c.row_bytes(l);
        let expected = profile.and_then(|p| expected_rows(&rows, &p.unigram));
        layers.push(PackedLayerReport {
            name: l.name.clone(),
            layer_id: l.layer_id,
            n_emb: l.n_emb,
            d_in: l.d_in,
            d_emb: l.d_emb,
            d_up: l.d_up,
            parts: l.parts.len(),
            table_bytes: per_row * l.n_emb,
            bytes_per_row: per_row,
            max_rows,
            worst_case_bytes_per_token: per_row * max_rows as u64,
            expected_bytes_per_token: expected.map(|e| e * per_row as f64),
            lambda: l.lambda,
        });
    }
    let mut total = 0u64;
    let mut files = 0usize;
    for f in model.index.metadata.sha256.keys() {
        let p = dir.join(f);
        total += std::fs::metadata(&p).with_path(&p)?.len();
        files += 1;
    }
    Ok(PackedReport {
        dir: dir.to_path_buf(),
        format_version: c.format_version,
        dialect: c.dialect.clone(),
        dtype: c.dtype,
        vocab_size: c.vocab_size,
        k_max: c.k_max,
        semantics: c.semantics.clone(),
        layers,
        files,
        total_bytes: total,
    })
}
