//! `unpack`: rebuild a checkpoint in the source dialect's layout from a packed folder. For
//! lossless table dtypes the rebuilt tensors equal the originals bit for bit.

use super::{carried_file_names, FileSink, Planned};
use crate::formats::allocation::{Allocation, AllocationMeta};
use crate::formats::dtype::{self as convert, FloatDtype};
use crate::formats::packed::reader::inside_folder;
pub use crate::formats::packed::Hashes;
use crate::formats::packed::{open_checked, PackedLayer, TableDtype};
use crate::formats::packed::{PackedModel, CONFIG_FILE, INDEX_FILE};
use crate::formats::safetensors::TensorReader;
use crate::util::atomic_file::StagingDir;
use crate::util::error::{Error, IoContext, Result};
use crate::util::fs::{check_output, open_regular, OutputKind};
use crate::util::progress::Ui;
use crate::util::safetensors_file as st;
use safetensors::Dtype;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Clone, Debug)]
pub struct UnpackOptions {
    pub dir: PathBuf,
    pub out: PathBuf,
    pub force: bool,
    pub max_shard_size: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct UnpackSummary {
    pub out: PathBuf,
    pub files: Vec<String>,
    pub tensors: usize,
    pub bytes: u64,
}

/// Where an output tensor's bytes come from.
enum Origin {
    Copy(String),
    /// Key (false) or value (true) columns of a layer's rows.
    Table(usize, bool),
    Bounds(usize),
}

/// The float dtype of a layer's source tables (validated when the model was opened).
fn source_dtype(model: &PackedModel, layer: &PackedLayer) -> Result<FloatDtype> {
    crate::formats::safetensors::parse_dtype(&layer.source.dtype)
        .and_then(FloatDtype::of)
        .ok_or_else(|| {
            Error::in_file(
                &model.dir.join(CONFIG_FILE),
                format!(
                    "layer {}: source table dtype {} is not supported",
                    layer.name, layer.source.dtype
                ),
            )
        })
}

/// Rebuild the checkpoint, after checking every hash of the packed folder.
pub fn unpack(opts: &UnpackOptions, ui: &Ui) -> Result<UnpackSummary> {
    unpack_with(opts, Hashes::Check, ui)
}

pub fn unpack_with(opts: &UnpackOptions, hashes: Hashes, ui: &Ui) -> Result<UnpackSummary> {
    check_output(&opts.out, &[&opts.dir], OutputKind::Folder, "--out")?;
    let (model, _) = open_checked(&opts.dir, hashes, ui)?;
    let staging = StagingDir::create(&opts.out, opts.force)?;
    let c = &model.config;
    let mut packed_names = std::collections::BTreeSet::new();
    for l in &c.layers {
        for p in &l.parts {
            packed_names.insert(p.rows.clone());
            packed_names.insert(p.offsets.clone());
            if let Some(s) = &p.scales {
                packed_names.insert(s.clone());
            }
        }
    }
    let mut planned: Vec<(Planned, Origin)> = Vec::new();
    for t in model.shards.tensors() {
        if !packed_names.contains(&t.name) {
            planned.push((
                Planned {
                    name: t.name.clone(),
                    dtype: t.dtype,
                    shape: t.shape.clone(),
                },
                Origin::Copy(t.name.clone()),
            ));
        }
    }
    for (i, l) in c.layers.iter().enumerate() {
        let dtype = source_dtype(&model, l)?.dtype();
        planned.push((
            Planned {
                name: l.source.keys.clone(),
                dtype,
                shape: vec![l.n_emb as usize, l.d_in as usize],
            },
            Origin::Table(i, false),
        ));
        if let Some(v) = &l.source.values {
            planned.push((
                Planned {
                    name: v.clone(),
                    dtype,
                    shape: vec![l.n_emb as usize, l.d_emb as usize],
                },
                Origin::Table(i, true),
            ));
        }
        if let Some(b) = &l.source.bounds {
            planned.push((
                Planned {
                    name: b.clone(),
                    dtype: Dtype::I64,
                    shape: vec![c.vocab_size as usize + 1],
                },
                Origin::Bounds(i),
            ));
        }
    }
    planned.sort_by(|a, b| a.0.name.cmp(&b.0.name));

    let mut shards: Vec<Vec<(Planned, Origin)>> = vec![Vec::new()];
    let mut bytes = 0u64;
    for p in planned {
        let b = p.0.bytes() as u64;
        if !shards.last().expect("non-empty").is_empty() && bytes + b > opts.max_shard_size {
            shards.push(Vec::new());
            bytes = 0;
        }
        bytes += b;
        shards.last_mut().expect("non-empty").push(p);
    }
    let n = shards.len();
    let name_of = |i: usize| {
        if n == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{n:05}.safetensors", i + 1)
        }
    };
    let total: u64 = shards.iter().flatten().map(|(p, _)| p.bytes() as u64).sum();
    let bar = ui.bytes(total, "unpack");
    let mut weight_map = BTreeMap::new();
    let mut files = Vec::new();
    let mut tensors = 0usize;
    let mut metadata = BTreeMap::new();
    metadata.insert("format".to_string(), "pt".to_string());
    for (i, shard) in shards.iter().enumerate() {
        let name = name_of(i);
        let path = staging_path(&staging, &name);
        let sink = FileSink::create(&path)?;
        let specs: Vec<_> = shard
            .iter()
            .map(|(p, _)| (p.name.clone(), p.dtype, p.shape.clone(), p.bytes()))
            .collect();
        let header = st::header_bytes(&specs, &metadata, 8);
        let mut first = (header.len() as u64).to_le_bytes().to_vec();
        first.extend_from_slice(&header);
        sink.send(first)?;
        for (p, origin) in shard {
            match origin {
                Origin::Copy(src) => {
                    let len = p.bytes();
                    let mut pos = 0;
                    while pos < len {
                        let step = (8 << 20).min(len - pos);
                        let mut buf = Vec::new();
                        model.shards.read_range(src, pos, step, &mut buf)?;
                        sink.send(buf)?;
                        pos += step;
                    }
                }
                Origin::Table(li, values) => {
                    write_table(&model, &c.layers[*li], *values, p.dtype, &sink)?
                }
                Origin::Bounds(li) => {
                    let b = model.bounds(*li)?;
                    sink.send(b.iter().flat_map(|v| v.to_le_bytes()).collect())?;
                }
            }
            bar.inc(p.bytes() as u64);
            weight_map.insert(p.name.clone(), name.clone());
            tensors += 1;
        }
        sink.finish()?;
        files.push(name);
    }
    bar.finish_and_clear();
    if n > 1 {
        let index = serde_json::json!({
            "metadata": {"total_size": total},
            "weight_map": weight_map,
        });
        let p = staging_path(&staging, INDEX_FILE);
        std::fs::write(&p, serde_json::to_vec_pretty(&index).expect("serialises")).with_path(&p)?;
        files.push(INDEX_FILE.to_string());
    }
    // The model's own config.json (as the reader validated it), without the l3 section.
    if let serde_json::Value::Object(mut m) = model.config_json.clone() {
        m.remove("l3");
        if !m.is_empty() {
            let p = staging_path(&staging, CONFIG_FILE);
            std::fs::write(&p, serde_json::to_vec_pretty(&m).expect("serialises")).with_path(&p)?;
            files.push(CONFIG_FILE.to_string());
        }
    }
    // The companions pack carried, and the training run's own `meta_*.json`, so the unpacked
    // checkpoint is loadable by the code that trained it again.
    let entries: Vec<String> = std::fs::read_dir(&opts.dir)
        .with_path(&opts.dir)?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    for name in carried_file_names(&entries) {
        let name = name.as_str();
        let src = opts.dir.join(name);
        if std::fs::symlink_metadata(&src).is_err() {
            continue;
        }
        // A companion that is a link out of the folder, a FIFO or a device is refused, not
        // copied (or waited on).
        inside_folder(&opts.dir, &src)?;
        let mut from = open_regular(&src)?;
        let dst = staging_path(&staging, name);
        let mut to = std::fs::File::create(&dst).with_path(&dst)?;
        std::io::copy(&mut from, &mut to).with_path(&src)?;
        files.push(name.to_string());
    }
    // A dialect that keeps the allocation outside the checkpoint gets it back as a file.
    if c.layers.iter().all(|l| l.source.bounds.is_none()) {
        let alloc = Allocation::from_bounds(
            model.bounds(0)?,
            AllocationMeta {
                method: c
                    .allocation
                    .method
                    .clone()
                    .unwrap_or_else(|| "external".into()),
                k_max: c.k_max,
                profile_sha256: c.allocation.profile_sha256.clone(),
                tokenizer_sha256: c.allocation.tokenizer_sha256.clone(),
                ..Default::default()
            },
        )
        .map_err(|m| Error::in_file(&opts.dir, format!("packed bounds are invalid: {m}")))?;
        alloc.write(&staging_path(&staging, "allocation.safetensors"))?;
        files.push("allocation.safetensors".to_string());
    }
    staging.commit()?;
    files.sort();
    Ok(UnpackSummary {
        out: opts.out.clone(),
        files,
        tensors,
        bytes: total,
    })
}

fn staging_path(staging: &StagingDir, name: &str) -> PathBuf {
    staging.tmp.join(name)
}

/// Stream one table (keys or values) of a layer out of its packed rows.
fn write_table(
    model: &PackedModel,
    layer: &PackedLayer,
    values: bool,
    out_dtype: Dtype,
    sink: &FileSink,
) -> Result<()> {
    let c = &model.config;
    let packed = c.dtype.float();
    let elem = c.dtype.value_bytes() as usize;
    let width = layer.row_width as usize;
    let (col0, cols) = if values {
        (layer.d_in as usize, layer.d_emb as usize)
    } else {
        (0, layer.d_in as usize)
    };
    let row_bytes = width * elem;
    let rows_per_chunk = ((8 << 20) / row_bytes.max(1)).max(1);
    let mut buf = Vec::new();
    let mut scales_buf = Vec::new();
    let mut floats = Vec::new();
    for part in &layer.parts {
        let rows = (part.row_end - part.row_start) as usize;
        let mut r = 0;
        while r < rows {
            let n = rows_per_chunk.min(rows - r);
            model
                .shards
                .read_range(&part.rows, r * row_bytes, n * row_bytes, &mut buf)?;
            let mut out = Vec::with_capacity(n * cols * out_dtype.bitsize() / 8);
            if packed.map(FloatDtype::dtype) == Some(out_dtype) {
                for i in 0..n {
                    let s = i * row_bytes + col0 * elem;
                    out.extend_from_slice(&buf[s..s + cols * elem]);
                }
            } else if c.dtype == TableDtype::Int8 {
                let parts = if c.semantics.tied { 1 } else { 2 };
                let scales_name = part.scales.as_ref().ok_or_else(|| {
                    Error::in_file(&model.dir, format!("{} has no scales", part.rows))
                })?;
                model.shards.read_range(
                    scales_name,
                    r * parts * 4,
                    n * parts * 4,
                    &mut scales_buf,
                )?;
                for i in 0..n {
                    let k = i * parts + usize::from(values);
                    let scale = f32::from_le_bytes(
                        scales_buf[k * 4..k * 4 + 4].try_into().expect("4 bytes"),
                    );
                    floats.clear();
                    let s = i * row_bytes + col0;
                    convert::dequantise_int8(&buf[s..s + cols], scale, &mut floats);
                    convert::encode_f32(out_dtype, &floats, &mut out);
                }
            } else if let Some(from) = packed {
                for i in 0..n {
                    floats.clear();
                    let s = i * row_bytes + col0 * elem;
                    convert::decode_f32(from, &buf[s..s + cols * elem], &mut floats);
                    convert::encode_f32(out_dtype, &floats, &mut out);
                }
            }
            sink.send(out)?;
            r += n;
        }
    }
    Ok(())
}
