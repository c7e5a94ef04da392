//! What a source checkpoint holds: its L3 layers (by dialect or `--map`) and each layer's
//! bounds, from the checkpoint's own buffers or an allocation file, checked to agree with each
//! other and with the tables.

use super::dialect::{self, Detected, Dialect};
use super::map::MapFile;
use super::Checkpoint;
use crate::formats::allocation::{check_bounds, read_bounds, Allocation};
use crate::util::error::{Error, Result};
use std::path::{Path, PathBuf};

/// The allocation file a checkpoint folder may keep beside its weights (as the paper keeps
/// the allocation outside the module).
pub const ALLOCATION_BESIDE: &str = "allocation.safetensors";

/// Detect a source checkpoint's L3 layers (by dialect, or through a `--map` file) and read the
/// allocation: the file given, or, when some layer has no bounds of its own and none is given,
/// the checkpoint folder's `allocation.safetensors`.
pub fn detect_source(
    ckpt: &Checkpoint,
    dialect: Option<Dialect>,
    map: Option<&Path>,
    allocation: Option<&Path>,
) -> Result<(Detected, Option<(PathBuf, Allocation)>)> {
    let map = match map {
        Some(p) => Some((p.to_path_buf(), MapFile::read(p)?)),
        None => None,
    };
    let detected = dialect::detect(ckpt, dialect, map.as_ref().map(|(p, m)| (p.as_path(), m)))?;
    let path = match allocation {
        Some(p) => Some(p.to_path_buf()),
        None if detected.layers.iter().any(|l| l.bounds.is_none()) => {
            ckpt.companion(ALLOCATION_BESIDE)?
        }
        None => None,
    };
    let allocation = match path {
        Some(p) => {
            // Refuse a FIFO or device before the reader maps it.
            crate::util::fs::open_regular(&p)?;
            let a = Allocation::read(&p)?;
            Some((p, a))
        }
        None => None,
    };
    Ok((detected, allocation))
}

/// Resolve each layer's bounds from the checkpoint and/or the allocation file, checking that
/// they agree with each other and with the tables.
pub fn resolve_bounds(
    ckpt: &Checkpoint,
    detected: &Detected,
    allocation: Option<&(PathBuf, Allocation)>,
) -> Result<Vec<Vec<i64>>> {
    let mut all = Vec::new();
    for layer in &detected.layers {
        let from_ckpt = match &layer.bounds {
            Some(name) => {
                let b = read_bounds(ckpt, name)?;
                check_bounds(&b).map_err(|m| {
                    Error::in_file(ckpt.path(), format!("bounds tensor {name}: {m}"))
                })?;
                Some(b)
            }
            None => None,
        };
        let bounds = match (from_ckpt, allocation) {
            (Some(b), Some((path, alloc))) => {
                if b.as_slice() != alloc.bounds() {
                    let detail = if b.len() != alloc.bounds().len() {
                        format!("vocabulary {} vs {}", b.len() - 1, alloc.bounds().len() - 1)
                    } else {
                        let t = b
                            .windows(2)
                            .zip(alloc.bounds().windows(2))
                            .position(|(x, y)| x[1] - x[0] != y[1] - y[0])
                            .unwrap_or(0);
                        format!("first difference at token {t}")
                    };
                    return Err(Error::input(format!(
                        "{}: the bounds of L3 layer {} disagree with the allocation {} ({detail})",
                        ckpt.path().display(),
                        layer.name,
                        path.display()
                    )));
                }
                b
            }
            (Some(b), None) => b,
            (None, Some((_, alloc))) => alloc.bounds().to_vec(),
            (None, None) => {
                return Err(Error::in_file(
                    ckpt.path(),
                    format!(
                        "L3 layer {} has no bounds in the checkpoint; pass --allocation FILE",
                        layer.name
                    ),
                ))
            }
        };
        let last = *bounds.last().expect("checked non-empty") as u64;
        if last != layer.n_emb {
            return Err(Error::in_file(
                ckpt.path(),
                format!(
                    "the bounds of L3 layer {} end at {last}, but its table {} has {} rows",
                    layer.name, layer.keys, layer.n_emb
                ),
            ));
        }
        if let Some(first) = all.first() {
            let first: &Vec<i64> = first;
            if first.len() != bounds.len() {
                return Err(Error::in_file(
                    ckpt.path(),
                    format!(
                        "L3 layers disagree on the vocabulary: {} has {}, {} has {}",
                        detected.layers[0].name,
                        first.len() - 1,
                        layer.name,
                        bounds.len() - 1
                    ),
                ));
            }
        }
        all.push(bounds);
    }
    Ok(all)
}
