//! `inspect --check`: re-hash every file of a packed folder and check every structural
//! invariant, collecting the problems rather than stopping at the first.

use super::{PackedModel, TableDtype, DATA_ALIGNMENT};
use crate::formats::allocation::{check_bounds, read_bounds};
use crate::util::error::{Error, IoContext, Result};
use safetensors::Dtype;
use serde::Serialize;
use std::path::{Path, PathBuf};

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
