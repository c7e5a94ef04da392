//! `inspect --check`: on top of what [`PackedModel::open`] validates (the config against the
//! tensors, the offsets against the bounds), re-hash every file against the index and check
//! the byte layout docs/format.md promises, collecting the problems rather than stopping at
//! the first.
//!
//! Two kinds of failure are kept apart because they exit differently: a folder that cannot be
//! read as a packed model at all (it fails to open, a link in it leads outside it, a listed
//! file is a FIFO or a device) is bad input, exit 2; a readable folder whose bytes do not match
//! its index or layout is a check that found a mismatch, exit 1.

use super::reader::inside_folder;
use super::{PackedModel, CONFIG_FILE, DATA_ALIGNMENT, INDEX_FILE, PACKED_FORMAT, PACKED_VERSION};
use crate::formats::safetensors::safe_relative;
use crate::util::error::{Error, Result};
use crate::util::progress::Ui;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Whether a command re-hashes a packed folder against its index before using it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hashes {
    /// Re-hash every file (the default): a corrupted table is refused, not used.
    Check,
    /// Trust the bytes (`--no-check`): the structure is still validated when it is opened.
    Skip,
}

#[derive(Clone, Debug, Serialize)]
pub struct CheckReport {
    pub dir: PathBuf,
    pub files_hashed: usize,
    pub bytes_hashed: u64,
    pub problems: Vec<String>,
    /// The folder is not readable as a packed model (exit 2) rather than mismatched (exit 1);
    /// the reason is the first of `problems`.
    pub bad_input: bool,
}

impl CheckReport {
    fn new(dir: &Path) -> CheckReport {
        CheckReport {
            dir: dir.to_path_buf(),
            files_hashed: 0,
            bytes_hashed: 0,
            problems: Vec::new(),
            bad_input: false,
        }
    }

    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }

    fn refuse(mut self, e: Error) -> CheckReport {
        self.problems.insert(0, e.to_string());
        self.bad_input = true;
        self
    }

    fn message(&self) -> String {
        format!(
            "{}: the packed folder fails its check: {}",
            self.dir.display(),
            self.problems.join("; ")
        )
    }

    /// The report of `inspect --check`, whose purpose is the check, as a result: Ok when every
    /// check passed, else `Error::Input` (exit 2) for bad input and `Error::Check` (exit 1)
    /// for mismatches, naming every problem.
    pub fn into_result(self) -> Result<CheckReport> {
        match (self.ok(), self.bad_input) {
            (true, _) => Ok(self),
            (false, true) => Err(Error::Input(self.message())),
            (false, false) => Err(Error::Check(self.message())),
        }
    }

    /// For a command that needs a sound folder to do its work (`verify`, `forward`,
    /// `unpack`): any problem is bad input, exit 2.
    pub fn require_ok(self) -> Result<CheckReport> {
        if self.ok() {
            Ok(self)
        } else {
            Err(Error::Input(self.message()))
        }
    }
}

/// `inspect --check`: [`check_packed`], and no symbolic link anywhere in the folder leads out of
/// it. A folder checked this way can be copied or served whole without carrying a link to a
/// system file along; `upload`, which sends only the files it has checked, uses
/// [`check_packed`] and deals with the other entries itself.
pub fn check_packed_folder(dir: &Path, ui: &Ui) -> CheckReport {
    // Links are looked at before anything is opened through them.
    if dir.is_dir() {
        if let Err(e) = links_stay_inside(dir) {
            return CheckReport::new(dir).refuse(e);
        }
    }
    check_packed(dir, ui)
}

/// Open a packed folder and check it: every hash and every invariant.
pub fn check_packed(dir: &Path, ui: &Ui) -> CheckReport {
    let report = CheckReport::new(dir);
    if !dir.is_dir() {
        // Not a folder at all: the reader says what it is.
        return match PackedModel::open(dir) {
            Err(e) => report.refuse(e),
            Ok(model) => check_packed_model(&model, ui),
        };
    }
    // A folder an interrupted `pack` left behind is what this check exists to catch: a
    // finding (exit 1), not unreadable input.
    if std::fs::symlink_metadata(dir.join(INDEX_FILE)).is_err() {
        let mut report = report;
        report.problems.push(format!(
            "{}: no {INDEX_FILE}: not a packed model (or an interrupted pack)",
            dir.display()
        ));
        return report;
    }
    let e = match PackedModel::open(dir) {
        Ok(model) => return check_packed_model(&model, ui),
        Err(e) => e,
    };
    // A folder whose files no longer match their hashes was corrupted after it was written:
    // that is the finding, and the content errors it causes are its consequence. A folder
    // whose hashes all match and yet does not open was written wrong (or re-hashed after
    // tampering): bad input.
    let Ok(index) = PackedModel::read_index(dir) else {
        return report.refuse(e);
    };
    let mut report = report;
    if let Err(bad) = hash_listed(dir, &index.metadata.sha256, ui, &mut report) {
        return report.refuse(bad);
    }
    if report.problems.is_empty() {
        return report.refuse(e);
    }
    report.problems.push(format!(
        "{e} (the folder does not open; the mismatches above say why)"
    ));
    report
}

/// Open a packed folder for a command that uses it (`verify`, `forward`, `unpack`). With
/// [`Hashes::Check`] every file is re-hashed too, and any problem is bad input (exit 2); a
/// folder that does not open is re-hashed as well, so that a corrupted file is reported as
/// what caused the error. Returns the check's report when there was one.
pub fn open_checked(
    dir: &Path,
    hashes: Hashes,
    ui: &Ui,
) -> Result<(PackedModel, Option<CheckReport>)> {
    match (PackedModel::open(dir), hashes) {
        (Ok(model), Hashes::Check) => {
            let report = check_packed_model(&model, ui).require_ok()?;
            Ok((model, Some(report)))
        }
        (Ok(model), Hashes::Skip) => Ok((model, None)),
        (Err(e), Hashes::Check) => {
            let report = check_packed(dir, ui);
            if report.bad_input || report.ok() {
                return Err(e);
            }
            Err(report.require_ok().err().unwrap_or(e))
        }
        (Err(e), Hashes::Skip) => Err(e),
    }
}

/// Check a packed folder that is already open: every hash against the index, and the byte
/// layout. (The files the reader and the hashing open may not lead out of the folder; other
/// entries are looked at by [`check_packed_folder`].)
pub fn check_packed_model(model: &PackedModel, ui: &Ui) -> CheckReport {
    let dir = model.dir.as_path();
    let mut report = CheckReport::new(dir);
    let sha = &model.index.metadata.sha256;
    if let Err(e) = hash_listed(dir, sha, ui, &mut report) {
        return report.refuse(e);
    }
    if !sha.contains_key(CONFIG_FILE) {
        report.problems.push(format!(
            "{CONFIG_FILE}: has no SHA-256 in the index, so its l3 section is unprotected"
        ));
    }
    for file in model.index.weight_map.values() {
        if !sha.contains_key(file) {
            report.problems.push(format!(
                "{file}: in the weight map but has no SHA-256 in the index"
            ));
        }
    }
    let data_total = model
        .shards
        .tensors()
        .iter()
        .try_fold(0u64, |acc, t| acc.checked_add(t.byte_len() as u64));
    if data_total != Some(model.index.metadata.total_size) {
        report.problems.push(format!(
            "index total_size is {} but the shards hold {} bytes of tensors",
            model.index.metadata.total_size,
            data_total.map_or("too many".to_string(), |t| t.to_string())
        ));
    }
    check_layout(model, &mut report.problems);
    report
}

/// Re-hash every file the index lists, recording mismatches and missing files in `report`.
/// A listed file that leads outside the folder or is not a regular file is bad input (the
/// error returned).
fn hash_listed(
    dir: &Path,
    sha: &std::collections::BTreeMap<String, String>,
    ui: &Ui,
    report: &mut CheckReport,
) -> Result<()> {
    let mut listed = Vec::with_capacity(sha.len());
    for (file, expected) in sha {
        let rel = safe_relative(file).map_err(|why| {
            Error::in_file(
                &dir.join(INDEX_FILE),
                format!("metadata.sha256 lists \"{file}\": {why}"),
            )
        })?;
        let path = dir.join(&rel);
        let Ok(meta) = std::fs::metadata(&path) else {
            report.problems.push(format!(
                "{}: listed in {INDEX_FILE} but missing",
                path.display()
            ));
            continue;
        };
        inside_folder(dir, &path)?;
        if !meta.is_file() {
            return Err(Error::in_file(
                &path,
                format!(
                    "is {}, not a regular file (listed in {INDEX_FILE})",
                    crate::util::fs::kind_of(&meta)
                ),
            ));
        }
        listed.push((path, expected, meta.len()));
    }
    let total: u64 = listed.iter().map(|(_, _, len)| len).sum();
    let bar = ui.bytes(total, "check");
    for (path, expected, len) in &listed {
        let actual = crate::util::fs::sha256_file(path)?;
        report.files_hashed += 1;
        report.bytes_hashed += len;
        bar.inc(*len);
        if &actual != *expected {
            report.problems.push(format!(
                "{}: SHA-256 mismatch (index says {expected}, file has {actual})",
                path.display()
            ));
        }
    }
    bar.finish_and_clear();
    Ok(())
}

/// The byte layout of every shard: data on a page boundary, the metadata `transformers` and
/// l3kit expect, tensors back to back in header order, and a table part's rows first.
fn check_layout(model: &PackedModel, problems: &mut Vec<String>) {
    for (rel, shard) in model.shards.shards() {
        let file = rel.display();
        let h = &shard.header;
        if h.data_start % DATA_ALIGNMENT as u64 != 0 {
            problems.push(format!(
                "{file}: tensor data starts at byte {}, not a multiple of {DATA_ALIGNMENT}",
                h.data_start
            ));
        }
        let meta = |k: &str| h.metadata.get(k).map(String::as_str);
        if meta("format") != Some("pt") {
            problems.push(format!("{file}: __metadata__ lacks \"format\": \"pt\""));
        }
        let version = PACKED_VERSION.to_string();
        if meta("l3kit_format") != Some(PACKED_FORMAT)
            || meta("l3kit_format_version") != Some(version.as_str())
        {
            problems.push(format!(
                "{file}: __metadata__ lacks \"l3kit_format\": \"{PACKED_FORMAT}\" and \
                 \"l3kit_format_version\": \"{PACKED_VERSION}\""
            ));
        }
        let mut end = 0u64;
        let mut back_to_back = true;
        for t in &h.tensors {
            if t.begin != end {
                problems.push(format!(
                    "{file}: tensor {} starts at data byte {}, not at {end} where the one \
                     before it in the header ends (tensors are back to back, in header order)",
                    t.name, t.begin
                ));
                back_to_back = false;
                break;
            }
            end = t.end;
        }
        if back_to_back && end != h.data_len {
            problems.push(format!(
                "{file}: {} bytes after the last tensor's data",
                h.data_len.saturating_sub(end)
            ));
        }
    }
    for l in &model.config.layers {
        for (pi, part) in l.parts.iter().enumerate() {
            let first = model
                .shards
                .file_of(&part.rows)
                .and_then(|f| model.shards.file(f))
                .and_then(|s| s.header.tensors.iter().min_by_key(|t| t.begin));
            if let Some(first) = first {
                if first.name != part.rows {
                    problems.push(format!(
                        "{}: layer {} part {pi}: the first tensor is {}, not the rows tensor {}",
                        part.file, l.name, first.name, part.rows
                    ));
                }
            }
        }
    }
}

/// Refuse a symbolic link anywhere in the folder whose target lies outside it (a link that
/// stays inside is fine). Links to folders are not followed.
fn links_stay_inside(dir: &Path) -> Result<()> {
    let root = crate::util::fs::resolve(dir)?;
    let mut pending = vec![(dir.to_path_buf(), 0usize)];
    while let Some((folder, depth)) = pending.pop() {
        let entries = std::fs::read_dir(&folder).map_err(|e| Error::io(&folder, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(&folder, e))?;
            let path = entry.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.file_type().is_symlink() {
                let target = crate::util::fs::resolve(&path)?;
                if !target.starts_with(&root) {
                    let link = std::fs::read_link(&path)
                        .map(|t| t.display().to_string())
                        .unwrap_or_default();
                    return Err(Error::in_file(
                        &path,
                        format!(
                            "is a symbolic link to {link} ({}), outside the folder: a packed \
                             folder's files must stay inside it (remove the link, or put the \
                             file itself there)",
                            target.display()
                        ),
                    ));
                }
            } else if meta.is_dir() && depth < 16 {
                pending.push((path, depth + 1));
            }
        }
    }
    Ok(())
}
