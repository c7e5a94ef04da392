//! Sharded checkpoints: an index file (`*.index.json` with a `weight_map`) and its shards,
//! checked to agree exactly (every tensor listed once, in the shard the map names).

use super::Checkpoint;
use crate::formats::safetensors::safe_relative;
use crate::util::error::{Error, Result};
use crate::util::fs::{limits, read_small};
use crate::util::json::json_kind;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

impl Checkpoint {
    /// Open an index (`*.index.json` with a `weight_map`) and its shards, checking that the
    /// map and the shards' contents agree exactly.
    pub(super) fn open_index(&mut self, index: &Path, folder: &Path) -> Result<()> {
        let text = read_small(index, limits::INDEX, "an index file")?;
        let value: serde_json::Value = serde_json::from_slice(&text)
            .map_err(|e| Error::in_file(index, format!("the index is not JSON: {e}")))?;
        let obj = value.as_object().ok_or_else(|| {
            Error::in_file(
                index,
                format!("the index is {}, not a JSON object", json_kind(&value)),
            )
        })?;
        if let Some(serde_json::Value::Object(m)) = obj.get("metadata") {
            self.index_metadata = m.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        }
        let map = obj
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| Error::in_file(index, "the index has no \"weight_map\" object"))?;
        if map.is_empty() {
            return Err(Error::in_file(index, "the index's weight_map is empty"));
        }

        // tensor -> shard (normalised relative path); shards in sorted order.
        let mut weight_map: BTreeMap<String, PathBuf> = BTreeMap::new();
        for (tensor, shard) in map {
            let shard = shard.as_str().ok_or_else(|| {
                Error::in_file(
                    index,
                    format!("weight_map entry for tensor {tensor} is not a string: {shard}"),
                )
            })?;
            let rel = safe_relative(shard).map_err(|why| {
                Error::in_file(
                    index,
                    format!("weight_map entry for tensor {tensor} points at \"{shard}\": {why}"),
                )
            })?;
            weight_map.insert(tensor.clone(), rel);
        }
        let mut shards: Vec<PathBuf> = weight_map.values().cloned().collect();
        shards.sort();
        shards.dedup();
        for rel in &shards {
            let full = folder.join(rel);
            if std::fs::symlink_metadata(&full).is_err() {
                let tensor = weight_map
                    .iter()
                    .find(|(_, r)| *r == rel)
                    .map(|(t, _)| t.as_str())
                    .unwrap_or_default();
                return Err(Error::in_file(
                    index,
                    format!(
                        "weight_map points at missing shard {} (for tensor {tensor}): no such \
                         file in {}",
                        rel.display(),
                        folder.display()
                    ),
                ));
            }
        }

        // Open every shard; a tensor may live in only one of them.
        let mut owner: HashMap<String, usize> = HashMap::new();
        let mut shard_tensors: Vec<Vec<String>> = Vec::with_capacity(shards.len());
        for (si, rel) in shards.iter().enumerate() {
            let full = self.folder_path(rel)?;
            let tensors = self.open_data_file(&full)?;
            let mut names = Vec::with_capacity(tensors.len());
            for (name, entry) in tensors {
                if let Some(&other) = owner.get(&name) {
                    return Err(Error::in_file(
                        index,
                        format!(
                            "tensor {name} is in two shards, {} and {} (both headers list it)",
                            shards[other].display(),
                            rel.display()
                        ),
                    ));
                }
                owner.insert(name.clone(), si);
                names.push(name.clone());
                self.entries.insert(name, entry);
            }
            shard_tensors.push(names);
        }

        // The weight_map and the shards must agree.
        for (si, names) in shard_tensors.iter().enumerate() {
            for name in names {
                match weight_map.get(name) {
                    None => {
                        return Err(Error::in_file(
                            index,
                            format!(
                                "shard {} holds tensor {name}, which the weight_map does not list",
                                shards[si].display()
                            ),
                        ))
                    }
                    Some(rel) if *rel != shards[si] => {
                        return Err(Error::in_file(
                            index,
                            format!(
                                "shard {} holds tensor {name}, but the weight_map assigns it to \
                                 shard {}",
                                shards[si].display(),
                                rel.display()
                            ),
                        ))
                    }
                    Some(_) => {}
                }
            }
        }
        for (tensor, rel) in &weight_map {
            if !owner.contains_key(tensor) {
                return Err(Error::in_file(
                    index,
                    format!(
                        "weight_map names tensor {tensor} in shard {}, which does not contain it",
                        rel.display()
                    ),
                ));
            }
        }
        Ok(())
    }
}
