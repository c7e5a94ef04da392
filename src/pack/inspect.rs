//! Reading packed models back: `inspect` (a summary of a packed folder or of a source
//! checkpoint) and `inspect --check` (every hash and structural invariant).

use super::{detect_source, read_bounds, resolve_bounds, CONFIG_FILE, INDEX_FILE};
use crate::allocate::expected_rows;
use crate::allocation::check_bounds;
use crate::checkpoint::Checkpoint;
use crate::dialect::Dialect;
use crate::layout::{PackedConfig, TableDtype, DATA_ALIGNMENT, PACKED_FORMAT, PACKED_VERSION};
use crate::profile::Profile;
use crate::util::error::{Error, IoContext, Result};
use safetensors::Dtype;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// `model.safetensors.index.json` as l3kit writes it.
#[derive(Clone, Debug, Deserialize)]
pub struct Index {
    pub metadata: IndexMetadata,
    pub weight_map: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct IndexMetadata {
    pub total_size: u64,
    #[serde(default)]
    pub format: Option<String>,
    #[serde(default)]
    pub sha256: BTreeMap<String, String>,
}

/// A packed model folder: its config, index and shards.
pub struct PackedModel {
    pub dir: PathBuf,
    pub config: PackedConfig,
    pub index: Index,
    pub shards: Checkpoint,
}

impl PackedModel {
    pub fn open(dir: &Path) -> Result<PackedModel> {
        if !dir.is_dir() {
            return Err(Error::in_file(dir, "is not a packed model folder"));
        }
        let index_path = dir.join(INDEX_FILE);
        let config_path = dir.join(CONFIG_FILE);
        if !index_path.is_file() {
            return Err(Error::in_file(
                dir,
                format!("no {INDEX_FILE}: not a packed model (or an interrupted pack)"),
            ));
        }
        let index: Index =
            serde_json::from_slice(&std::fs::read(&index_path).with_path(&index_path)?)
                .map_err(|e| Error::in_file(&index_path, format!("not a valid index: {e}")))?;
        if index.metadata.format.as_deref() != Some(PACKED_FORMAT) {
            return Err(Error::in_file(
                &index_path,
                "not an l3kit packed model (metadata.format is not l3kit-packed)",
            ));
        }
        let config_json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&config_path).with_path(&config_path)?)
                .map_err(|e| Error::in_file(&config_path, format!("not valid JSON: {e}")))?;
        let l3 = config_json
            .get("l3")
            .ok_or_else(|| Error::in_file(&config_path, "has no \"l3\" section"))?;
        let config: PackedConfig = serde_json::from_value(l3.clone())
            .map_err(|e| Error::in_file(&config_path, format!("invalid \"l3\" section: {e}")))?;
        if config.format != PACKED_FORMAT || config.format_version != PACKED_VERSION {
            return Err(Error::in_file(
                &config_path,
                format!(
                    "packed format {} version {} is not supported (this l3kit reads {PACKED_FORMAT} {PACKED_VERSION})",
                    config.format, config.format_version
                ),
            ));
        }
        let shards = Checkpoint::open(dir)?;
        Ok(PackedModel {
            dir: dir.to_path_buf(),
            config,
            index,
            shards,
        })
    }

    /// The layer's full bounds, from its parts' offsets.
    pub fn bounds(&self, layer: usize) -> Result<Vec<i64>> {
        let l = &self.config.layers[layer];
        let mut bounds = Vec::with_capacity(self.config.vocab_size as usize + 1);
        for part in &l.parts {
            let offsets = read_bounds(&self.shards, &part.offsets)?;
            if bounds.is_empty() {
                bounds.extend_from_slice(&offsets);
            } else {
                bounds.extend_from_slice(&offsets[1..]);
            }
        }
        Ok(bounds)
    }
}

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
    pub semantics: crate::layout::Semantics,
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
    pub semantics: crate::layout::Semantics,
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

#[derive(Clone, Debug, Serialize)]
pub struct CheckReport {
    pub dir: PathBuf,
    pub files_hashed: usize,
    pub bytes_hashed: u64,
    pub problems: Vec<String>,
}

impl CheckReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Re-hash every file and check every structural invariant of a packed folder. Problems are
/// collected, not stopped at; a folder that cannot be opened at all is one problem.
pub fn check_packed(dir: &Path, ui: &crate::util::progress::Ui) -> CheckReport {
    let mut report = CheckReport {
        dir: dir.to_path_buf(),
        files_hashed: 0,
        bytes_hashed: 0,
        problems: Vec::new(),
    };
    let model = match PackedModel::open(dir) {
        Ok(m) => m,
        Err(e) => {
            report.problems.push(e.to_string());
            return report;
        }
    };
    let total: u64 = model
        .index
        .metadata
        .sha256
        .keys()
        .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
        .map(|m| m.len())
        .sum();
    let bar = ui.bytes(total, "check");
    for (file, expected) in &model.index.metadata.sha256 {
        let path = dir.join(file);
        match crate::util::fs::sha256_file(&path) {
            Ok(actual) => {
                report.files_hashed += 1;
                let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                report.bytes_hashed += len;
                bar.inc(len);
                if &actual != expected {
                    report.problems.push(format!(
                        "{}: SHA-256 mismatch (index says {expected}, file has {actual})",
                        path.display()
                    ));
                }
            }
            Err(e) => report.problems.push(e.to_string()),
        }
    }
    bar.finish_and_clear();
    for file in model.index.weight_map.values() {
        if !model.index.metadata.sha256.contains_key(file) {
            report.problems.push(format!(
                "{file}: in the weight map but has no SHA-256 in the index"
            ));
        }
    }
    let data_total: u64 = model
        .shards
        .tensors()
        .iter()
        .map(|t| t.byte_len() as u64)
        .sum();
    if data_total != model.index.metadata.total_size {
        report.problems.push(format!(
            "index total_size is {} but the shards hold {data_total} bytes of tensors",
            model.index.metadata.total_size
        ));
    }
    check_structure(&model, &mut report.problems);
    report
}

fn check_structure(model: &PackedModel, problems: &mut Vec<String>) {
    let c = &model.config;
    let s = &model.shards;
    let want_dtype = match c.dtype {
        TableDtype::F32 => Dtype::F32,
        TableDtype::Bf16 => Dtype::BF16,
        TableDtype::F16 => Dtype::F16,
        TableDtype::Int8 => Dtype::I8,
    };
    for file in model.index.metadata.sha256.keys() {
        if !file.ends_with(".safetensors") {
            continue;
        }
        let path = model.dir.join(file);
        match shard_layout(&path) {
            Ok((header_end, first, meta_format)) => {
                if header_end % DATA_ALIGNMENT as u64 != 0 {
                    problems.push(format!(
                        "{file}: tensor data starts at byte {header_end}, not a multiple of {DATA_ALIGNMENT}"
                    ));
                }
                if meta_format.as_deref() != Some("pt") {
                    problems.push(format!("{file}: __metadata__ lacks \"format\": \"pt\""));
                }
                if let Some(first) = first {
                    if first.contains(".packed_") && !first.contains(".packed_rows.") {
                        problems.push(format!(
                            "{file}: the first tensor is {first}, not the rows tensor"
                        ));
                    }
                }
            }
            Err(e) => problems.push(e.to_string()),
        }
    }
    for (li, l) in c.layers.iter().enumerate() {
        let mut next_token = 0u64;
        let mut next_row = 0u64;
        for (pi, part) in l.parts.iter().enumerate() {
            let at = format!("layer {} part {pi}", l.name);
            if part.token_start != next_token || part.row_start != next_row {
                problems.push(format!(
                    "{at}: starts at token {} row {}, expected token {next_token} row {next_row}",
                    part.token_start, part.row_start
                ));
            }
            next_token = part.token_end;
            next_row = part.row_end;
            let rows = part.row_end.saturating_sub(part.row_start) as usize;
            match s.get(&part.rows) {
                None => problems.push(format!("{at}: missing tensor {}", part.rows)),
                Some(t) => {
                    if t.dtype != want_dtype || t.shape != [rows, l.row_width as usize] {
                        problems.push(format!(
                            "{at}: {} is {:?} {:?}, expected {want_dtype:?} [{rows}, {}]",
                            part.rows, t.dtype, t.shape, l.row_width
                        ));
                    }
                    if model.index.weight_map.get(&part.rows) != Some(&part.file) {
                        problems.push(format!("{at}: {} is not in {}", part.rows, part.file));
                    }
                }
            }
            match (&part.scales, c.dtype == TableDtype::Int8) {
                (Some(name), true) => match s.get(name) {
                    Some(t) => {
                        let parts = if c.semantics.tied { 1 } else { 2 };
                        if t.dtype != Dtype::F32 || t.shape != [rows, parts] {
                            problems.push(format!(
                                "{at}: {name} is {:?} {:?}, expected F32 [{rows}, {parts}]",
                                t.dtype, t.shape
                            ));
                        }
                    }
                    None => problems.push(format!("{at}: missing tensor {name}")),
                },
                (None, true) => problems.push(format!("{at}: int8 rows without scales")),
                (Some(name), false) => {
                    problems.push(format!("{at}: scales {name} on a {} table", c.dtype.name()))
                }
                (None, false) => {}
            }
            match read_bounds(s, &part.offsets) {
                Err(e) => problems.push(format!("{at}: {e}")),
                Ok(off) => {
                    let want = (part.token_end - part.token_start + 1) as usize;
                    if off.len() != want
                        || off.first().copied() != Some(part.row_start as i64)
                        || off.last().copied() != Some(part.row_end as i64)
                    {
                        problems.push(format!(
                            "{at}: offsets {} do not run from row {} to {} over {want} entries",
                            part.offsets, part.row_start, part.row_end
                        ));
                    }
                }
            }
        }
        if next_token != c.vocab_size || next_row != l.n_emb {
            problems.push(format!(
                "layer {}: parts end at token {next_token} row {next_row}, expected {} and {}",
                l.name, c.vocab_size, l.n_emb
            ));
        }
        if let Ok(bounds) = model.bounds(li) {
            if let Err(m) = check_bounds(&bounds) {
                problems.push(format!("layer {}: {m}", l.name));
            } else {
                let max = bounds.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
                if max > c.k_max as i64 {
                    problems.push(format!(
                        "layer {}: a token owns {max} rows, more than k_max {}",
                        l.name, c.k_max
                    ));
                }
            }
        }
        let mut names = vec![&l.params.w_up, &l.params.w_mix];
        names.extend(l.params.norm_in.iter());
        names.extend(l.params.norm_out.iter());
        if let Some((n, _)) = &l.params.lambda {
            names.push(n);
        }
        for n in names {
            if s.get(n).is_none() {
                problems.push(format!("layer {}: missing tensor {n}", l.name));
            }
        }
    }
}

/// (data start, first tensor by offset, __metadata__ format) of a safetensors file.
fn shard_layout(path: &Path) -> Result<(u64, Option<String>, Option<String>)> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).with_path(path)?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).with_path(path)?;
    let n = u64::from_le_bytes(len);
    let mut header = vec![0u8; n as usize];
    f.read_exact(&mut header).with_path(path)?;
    let v: serde_json::Value = serde_json::from_slice(&header)
        .map_err(|e| Error::in_file(path, format!("header is not JSON: {e}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| Error::in_file(path, "header is not a JSON object"))?;
    let format = obj
        .get("__metadata__")
        .and_then(|m| m.get("format"))
        .and_then(|f| f.as_str())
        .map(str::to_string);
    let first = obj
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .filter_map(|(k, t)| {
            let begin = t.get("data_offsets")?.get(0)?.as_u64()?;
            Some((begin, k.clone()))
        })
        .min()
        .map(|(_, k)| k);
    Ok((8 + n, first, format))
}
