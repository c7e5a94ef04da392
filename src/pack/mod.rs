//! Stage 3: pack a trained checkpoint's L3 tables into offload-friendly safetensors shards.
//!
//! Layout (specified in `docs/format.md`): per L3 layer, one row per table row holding
//! `[key row | value row]`, rows grouped by token in token order, so everything one token needs
//! from one layer is one contiguous byte range. Tables are split into parts only at token
//! boundaries, each part in its own file whose data starts on a 4096-byte boundary with the rows
//! tensor first. Every other tensor passes through unchanged.
//!
//! Packing streams: tables are read a few megabytes at a time with positioned reads, converted,
//! and handed to a writer thread that writes and hashes, so memory stays flat whatever the
//! checkpoint's size and reading overlaps writing.
//!
//! One file on purpose: the plan of the output, the streaming conversion and the staging/commit
//! of the folder share one set of invariants (which bytes land where); `inspect` and `unpack`,
//! which only read, live beside it.

pub mod inspect;
pub mod unpack;

use crate::checkpoint::detect::{detect_source, resolve_bounds};
use crate::checkpoint::dialect::{Dialect, LayerTensors};
use crate::checkpoint::Checkpoint;
use crate::formats::dtype::{self as convert, ErrorStats};
use crate::formats::packed::{
    AllocationInfo, ConversionError, LayerParams, PackedConfig, PackedLayer, PackedPart,
    SourceNames, TableDtype, DATA_ALIGNMENT, PACKED_FORMAT, PACKED_VERSION,
};
use crate::formats::packed::{CONFIG_FILE, INDEX_FILE};
use crate::util::atomic_file::StagingDir;
use crate::util::error::{Error, IoContext, Result};
use crate::util::fs::{check_output, limits, read_small, OutputKind};
use crate::util::progress::Ui;
use crate::util::safetensors_file as st;
use safetensors::Dtype;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Small files beside a checkpoint that travel with the packed model unchanged. The
/// training run's own metadata (`meta_*.json`, see [`is_run_metadata`]) travels too, and
/// `config.json` is carried over with an `l3` section added.
const COMPANION_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "vocab.json",
    "merges.txt",
];

/// Is `name` a training run's metadata file (nanochat's `meta_000100.json`: the step and the
/// `model_config` needed to rebuild the whole model)?
pub fn is_run_metadata(name: &str) -> bool {
    name.strip_prefix("meta_")
        .and_then(|r| r.strip_suffix(".json"))
        .is_some_and(|mid| !mid.is_empty() && !mid.contains('/'))
}

/// The side files that travel between a checkpoint folder and its packed folder, both ways:
/// the fixed companions, then the training run's `meta_*.json` among `names` (the folder's
/// entries), in name order.
pub(crate) fn carried_file_names(names: &[String]) -> Vec<String> {
    let mut run_metadata: Vec<String> = names
        .iter()
        .filter(|n| is_run_metadata(n))
        .cloned()
        .collect();
    run_metadata.sort();
    COMPANION_FILES
        .iter()
        .map(|s| s.to_string())
        .chain(run_metadata)
        .collect()
}

/// The read limit for a companion file (tokenizers can be large; the rest are small JSON).
fn companion_limit(name: &str) -> u64 {
    match name {
        "tokenizer.json" | "vocab.json" | "merges.txt" => limits::TOKENIZER,
        _ => limits::CONFIG,
    }
}
/// Bytes of output prepared per step while streaming a table.
const CHUNK_BYTES: usize = 8 << 20;

#[derive(Clone, Debug)]
pub struct PackOptions {
    pub source: PathBuf,
    pub out: PathBuf,
    pub dialect: Option<Dialect>,
    pub map: Option<PathBuf>,
    pub allocation: Option<PathBuf>,
    /// Table dtype; None keeps the source's (f64 becomes f32).
    pub dtype: Option<TableDtype>,
    /// Convert the other floating-point tensors too (None: unchanged).
    pub other_dtype: Option<TableDtype>,
    pub max_shard_size: u64,
    pub force: bool,
    pub allow_nonfinite: bool,
}

impl PackOptions {
    pub fn new(source: PathBuf, out: PathBuf) -> Self {
        PackOptions {
            source,
            out,
            dialect: None,
            map: None,
            allocation: None,
            dtype: None,
            other_dtype: None,
            max_shard_size: 5_000_000_000,
            force: false,
            allow_nonfinite: false,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct FileSummary {
    pub file: String,
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct NonFinite {
    pub tensor: String,
    pub count: u64,
    pub first_row: u64,
    pub first_token: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct LayerSummary {
    pub name: String,
    pub n_emb: u64,
    pub d_in: u64,
    pub d_emb: u64,
    pub parts: usize,
    pub table_bytes: u64,
    pub conversion_error: Option<ConversionError>,
}

/// Where the packed allocation came from.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct AllocationSource {
    /// `checkpoint` (the layers' own bounds buffers), `file` (`--allocation`), or `beside`
    /// (the checkpoint folder's `allocation.safetensors`, used because the checkpoint has no
    /// bounds of its own).
    pub from: String,
    pub path: Option<PathBuf>,
}

#[derive(Clone, Debug, Serialize)]
pub struct PackSummary {
    pub out: PathBuf,
    pub dialect: String,
    /// The residual mode (`replace`, `add_lambda`, `add`).
    pub residual: String,
    pub allocation: AllocationSource,
    /// Files carried over from the checkpoint folder (`config.json` with an `l3` section
    /// added, the rest byte for byte).
    pub carried: Vec<String>,
    pub dtype: TableDtype,
    pub vocab_size: u64,
    pub layers: Vec<LayerSummary>,
    pub files: Vec<FileSummary>,
    pub nonfinite: Vec<NonFinite>,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub seconds: f64,
    pub peak_rss_bytes: Option<u64>,
}

/// Writes one output file on a background thread, hashing as it goes.
struct FileSink {
    tx: Option<crossbeam_channel::Sender<Vec<u8>>>,
    handle: Option<std::thread::JoinHandle<Result<(u64, String)>>>,
    path: PathBuf,
}

impl FileSink {
    fn create(path: &Path) -> Result<Self> {
        let file = std::fs::File::create(path).with_path(path)?;
        let (tx, rx) = crossbeam_channel::bounded::<Vec<u8>>(3);
        let p = path.to_path_buf();
        let handle = std::thread::spawn(move || -> Result<(u64, String)> {
            let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
            let mut hasher = Sha256::new();
            let mut bytes = 0u64;
            for chunk in rx.iter() {
                hasher.update(&chunk);
                w.write_all(&chunk).with_path(&p)?;
                bytes += chunk.len() as u64;
            }
            let file = w.into_inner().map_err(|e| Error::io(&p, e.into_error()))?;
            file.sync_all().with_path(&p)?;
            Ok((bytes, hex::encode(hasher.finalize())))
        });
        Ok(FileSink {
            tx: Some(tx),
            handle: Some(handle),
            path: path.to_path_buf(),
        })
    }

    fn send(&self, chunk: Vec<u8>) -> Result<()> {
        self.tx
            .as_ref()
            .expect("open until finish")
            .send(chunk)
            .map_err(|_| Error::in_file(&self.path, "writer stopped"))
    }

    fn finish(mut self) -> Result<(u64, String)> {
        drop(self.tx.take());
        self.handle
            .take()
            .expect("joined once")
            .join()
            .expect("writer thread does not panic")
    }
}

impl Drop for FileSink {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// One tensor planned into an output file.
struct Planned {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
}

impl Planned {
    fn bytes(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.bitsize() / 8
    }
}

fn header_for(tensors: &[Planned], metadata: &BTreeMap<String, String>) -> Vec<u8> {
    let specs: Vec<_> = tensors
        .iter()
        .map(|t| (t.name.clone(), t.dtype, t.shape.clone(), t.bytes()))
        .collect();
    st::header_bytes(&specs, metadata, DATA_ALIGNMENT)
}

fn shard_metadata() -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    m.insert("format".to_string(), "pt".to_string());
    m.insert("l3kit_format".to_string(), PACKED_FORMAT.to_string());
    m.insert(
        "l3kit_format_version".to_string(),
        PACKED_VERSION.to_string(),
    );
    m
}

fn target_dtype(t: TableDtype) -> Dtype {
    match t {
        TableDtype::F32 => Dtype::F32,
        TableDtype::Bf16 => Dtype::BF16,
        TableDtype::F16 => Dtype::F16,
        TableDtype::Int8 => Dtype::I8,
    }
}

fn table_dtype_of(d: Dtype) -> TableDtype {
    match d {
        Dtype::BF16 => TableDtype::Bf16,
        Dtype::F16 => TableDtype::F16,
        _ => TableDtype::F32,
    }
}

/// Split tokens into parts whose files stay under `max_bytes` (a single token bigger than
/// that gets a part of its own).
fn split_parts(bounds: &[i64], row_bytes: u64, max_bytes: u64) -> Vec<(u64, u64)> {
    let vocab = bounds.len() - 1;
    let mut parts = Vec::new();
    let mut start = 0usize;
    let mut bytes = 8u64; // the offsets tensor's closing entry
    for t in 0..vocab {
        let rows = (bounds[t + 1] - bounds[t]) as u64;
        let cost = rows * row_bytes + 8;
        if t > start && bytes + cost > max_bytes {
            parts.push((start as u64, t as u64));
            start = t;
            bytes = 8;
        }
        bytes += cost;
    }
    parts.push((start as u64, vocab as u64));
    parts
}

/// Pack a checkpoint.
pub fn pack(opts: &PackOptions, ui: &Ui) -> Result<PackSummary> {
    let started = Instant::now();
    let mut inputs = vec![opts.source.as_path()];
    inputs.extend(opts.map.as_deref());
    inputs.extend(opts.allocation.as_deref());
    check_output(&opts.out, &inputs, OutputKind::Folder, "--out")?;
    if opts.other_dtype == Some(TableDtype::Int8) {
        return Err(Error::input(
            "--other-dtype int8 is not supported: only L3 tables are quantised",
        ));
    }
    let ckpt = Checkpoint::open(&opts.source)?;
    let (detected, allocation) = detect_source(
        &ckpt,
        opts.dialect,
        opts.map.as_deref(),
        opts.allocation.as_deref(),
    )?;
    let bounds = resolve_bounds(&ckpt, &detected, allocation.as_ref())?;
    let vocab = (bounds[0].len() - 1) as u64;
    let allocation_source = match (&allocation, &opts.allocation) {
        (None, _) => AllocationSource {
            from: "checkpoint".into(),
            path: None,
        },
        (Some((p, _)), Some(_)) => AllocationSource {
            from: "file".into(),
            path: Some(p.clone()),
        },
        (Some((p, _)), None) => AllocationSource {
            from: "beside".into(),
            path: Some(p.clone()),
        },
    };
    // Read the files carried over before writing anything, so a bad one fails early.
    let carried = read_carried(&ckpt)?;
    let staging = StagingDir::create(&opts.out, opts.force)?;

    let source_dtype = ckpt.get(&detected.layers[0].keys).expect("resolved").dtype;
    let dtype = opts.dtype.unwrap_or(table_dtype_of(source_dtype));
    let tied = detected.semantics.tied;

    // Tensors that pass through: everything but the tables and their bounds.
    let mut consumed = std::collections::BTreeSet::new();
    for l in &detected.layers {
        consumed.insert(l.keys.clone());
        if let Some(v) = &l.values {
            consumed.insert(v.clone());
        }
        if let Some(b) = &l.bounds {
            consumed.insert(b.clone());
        }
    }
    let passthrough: Vec<&crate::checkpoint::TensorInfo> = ckpt
        .tensors()
        .into_iter()
        .filter(|t| !consumed.contains(&t.name))
        .collect();
    let other_dtype = |d: Dtype| -> Dtype {
        match (opts.other_dtype, convert::float_size(d)) {
            (Some(t), Some(_)) if t != TableDtype::Int8 => target_dtype(t),
            _ => d,
        }
    };

    // Plan the dense shards.
    let mut dense_shards: Vec<Vec<Planned>> = Vec::new();
    let mut current: Vec<Planned> = Vec::new();
    let mut current_bytes = 0u64;
    for t in &passthrough {
        let planned = Planned {
            name: t.name.clone(),
            dtype: other_dtype(t.dtype),
            shape: t.shape.clone(),
        };
        let b = planned.bytes() as u64;
        if !current.is_empty() && current_bytes + b > opts.max_shard_size {
            dense_shards.push(std::mem::take(&mut current));
            current_bytes = 0;
        }
        current_bytes += b;
        current.push(planned);
    }
    if !current.is_empty() {
        dense_shards.push(current);
    }

    // Plan the table parts.
    let scale_parts: u64 = if tied { 1 } else { 2 };
    let stored_row_bytes = |l: &LayerTensors| -> u64 {
        let width = if tied { l.d_in } else { l.d_in + l.d_emb };
        width * dtype.value_bytes()
            + if dtype == TableDtype::Int8 {
                4 * scale_parts
            } else {
                0
            }
    };
    let layer_parts: Vec<Vec<(u64, u64)>> = detected
        .layers
        .iter()
        .zip(&bounds)
        .map(|(l, b)| split_parts(b, stored_row_bytes(l), opts.max_shard_size))
        .collect();
    let total_files = dense_shards.len() + layer_parts.iter().map(Vec::len).sum::<usize>();
    let file_name = |i: usize| format!("model-{:05}-of-{:05}.safetensors", i + 1, total_files);

    let total_read: u64 = passthrough.iter().map(|t| t.byte_len() as u64).sum::<u64>()
        + detected
            .layers
            .iter()
            .map(|l| {
                let info = ckpt.get(&l.keys).expect("resolved");
                info.byte_len() as u64
                    + l.values
                        .as_ref()
                        .map(|v| ckpt.get(v).expect("resolved").byte_len() as u64)
                        .unwrap_or(0)
            })
            .sum::<u64>();
    let bar = ui.bytes(total_read, "pack");
    let mut files = Vec::new();
    let mut weight_map = BTreeMap::new();
    let mut total_size = 0u64;
    let mut bytes_read = 0u64;
    let mut file_index = 0usize;

    for shard in &dense_shards {
        let name = file_name(file_index);
        file_index += 1;
        let path = staging.tmp.join(&name);
        let sink = FileSink::create(&path)?;
        let header = header_for(shard, &shard_metadata());
        let mut first = (header.len() as u64).to_le_bytes().to_vec();
        first.extend_from_slice(&header);
        sink.send(first)?;
        let mut buf = Vec::new();
        let mut floats = Vec::new();
        for planned in shard {
            let info = ckpt
                .get(&planned.name)
                .expect("planned from the checkpoint");
            let len = info.byte_len();
            let step = CHUNK_BYTES / 8 * 8;
            let mut pos = 0;
            while pos < len {
                let n = step.min(len - pos);
                ckpt.read_range(&info.name, pos, n, &mut buf)?;
                if planned.dtype == info.dtype {
                    sink.send(buf.clone())?;
                } else {
                    floats.clear();
                    convert::decode_f32(info.float_dtype()?, &buf, &mut floats);
                    let mut out = Vec::with_capacity(floats.len() * 4);
                    convert::encode_f32(planned.dtype, &floats, &mut out);
                    sink.send(out)?;
                }
                pos += n;
                bytes_read += n as u64;
                bar.set_position(bytes_read);
            }
            weight_map.insert(planned.name.clone(), name.clone());
            total_size += planned.bytes() as u64;
        }
        let (bytes, sha256) = sink.finish()?;
        files.push(FileSummary {
            file: name,
            bytes,
            sha256,
        });
    }

    let mut layers = Vec::new();
    let mut summaries = Vec::new();
    let mut nonfinite = Vec::new();
    for ((layer, b), parts) in detected.layers.iter().zip(&bounds).zip(&layer_parts) {
        let keys = ckpt.get(&layer.keys).expect("resolved").clone();
        let values = layer
            .values
            .as_ref()
            .map(|v| ckpt.get(v).expect("resolved").clone());
        let src = keys.dtype;
        let src_size = convert::float_size(src).expect("checked float");
        let key_w = layer.d_in as usize;
        let val_w = if tied { 0 } else { layer.d_emb as usize };
        let row_width = key_w + val_w;
        let out_dtype = target_dtype(dtype);
        let lossless = out_dtype == src;
        let mut stats = ErrorStats::default();
        let mut nf_keys = (0u64, None::<u64>);
        let mut nf_vals = (0u64, None::<u64>);
        let mut packed_parts = Vec::new();
        let mut table_bytes = 0u64;
        for (pi, &(t0, t1)) in parts.iter().enumerate() {
            let name = file_name(file_index);
            file_index += 1;
            let path = staging.tmp.join(&name);
            let (r0, r1) = (b[t0 as usize] as u64, b[t1 as usize] as u64);
            let n_rows = (r1 - r0) as usize;
            let rows_name = format!("{}.packed_rows.{pi}", layer.name);
            let offsets_name = format!("{}.packed_offsets.{pi}", layer.name);
            let scales_name = format!("{}.packed_scales.{pi}", layer.name);
            let mut planned = vec![Planned {
                name: rows_name.clone(),
                dtype: out_dtype,
                shape: vec![n_rows, row_width],
            }];
            if dtype == TableDtype::Int8 {
                planned.push(Planned {
                    name: scales_name.clone(),
                    dtype: Dtype::F32,
                    shape: vec![n_rows, scale_parts as usize],
                });
            }
            planned.push(Planned {
                name: offsets_name.clone(),
                dtype: Dtype::I64,
                shape: vec![(t1 - t0 + 1) as usize],
            });
            let sink = FileSink::create(&path)?;
            let header = header_for(&planned, &shard_metadata());
            let mut first = (header.len() as u64).to_le_bytes().to_vec();
            first.extend_from_slice(&header);
            sink.send(first)?;

            let rows_per_chunk =
                (CHUNK_BYTES / (row_width * src_size).max(1)).clamp(1, n_rows.max(1));
            let mut kbuf = Vec::new();
            let mut vbuf = Vec::new();
            let mut kf = Vec::new();
            let mut vf = Vec::new();
            let mut back = Vec::new();
            let mut scales: Vec<u8> = Vec::new();
            let mut row = r0 as usize;
            while row < r1 as usize {
                let n = rows_per_chunk.min(r1 as usize - row);
                ckpt.read_range(
                    &keys.name,
                    row * key_w * src_size,
                    n * key_w * src_size,
                    &mut kbuf,
                )?;
                let (c, first_bad) = convert::count_nonfinite(src, &kbuf);
                if c > 0 {
                    nf_keys.0 += c;
                    nf_keys
                        .1
                        .get_or_insert((row + first_bad.unwrap_or(0) / key_w) as u64);
                }
                if let Some(v) = &values {
                    ckpt.read_range(
                        &v.name,
                        row * val_w * src_size,
                        n * val_w * src_size,
                        &mut vbuf,
                    )?;
                    let (c, first_bad) = convert::count_nonfinite(src, &vbuf);
                    if c > 0 {
                        nf_vals.0 += c;
                        nf_vals
                            .1
                            .get_or_insert((row + first_bad.unwrap_or(0) / val_w) as u64);
                    }
                }
                bytes_read += (kbuf.len() + vbuf.len()) as u64;
                let out_value = dtype.value_bytes() as usize;
                let mut out = Vec::with_capacity(n * row_width * out_value);
                if lossless {
                    let (kb, vb) = (key_w * src_size, val_w * src_size);
                    for r in 0..n {
                        out.extend_from_slice(&kbuf[r * kb..(r + 1) * kb]);
                        if vb > 0 {
                            out.extend_from_slice(&vbuf[r * vb..(r + 1) * vb]);
                        }
                    }
                } else {
                    kf.clear();
                    vf.clear();
                    convert::decode_f32(keys.float_dtype()?, &kbuf, &mut kf);
                    if val_w > 0 {
                        convert::decode_f32(keys.float_dtype()?, &vbuf, &mut vf);
                    }
                    for r in 0..n {
                        let parts: [&[f32]; 2] = [
                            &kf[r * key_w..(r + 1) * key_w],
                            if val_w > 0 {
                                &vf[r * val_w..(r + 1) * val_w]
                            } else {
                                &[]
                            },
                        ];
                        for part in parts.iter().filter(|p| !p.is_empty()) {
                            let start = out.len();
                            back.clear();
                            if dtype == TableDtype::Int8 {
                                let s = convert::quantise_int8(part, &mut out);
                                scales.extend_from_slice(&s.to_le_bytes());
                                convert::dequantise_int8(&out[start..], s, &mut back);
                            } else if let Some(f) = convert::FloatDtype::of(out_dtype) {
                                convert::encode_f32(out_dtype, part, &mut out);
                                convert::decode_f32(f, &out[start..], &mut back);
                            }
                            stats.add(part, &back);
                        }
                    }
                }
                table_bytes += out.len() as u64;
                sink.send(out)?;
                bar.set_position(bytes_read);
                row += n;
            }
            if dtype == TableDtype::Int8 {
                table_bytes += scales.len() as u64;
                sink.send(scales)?;
            }
            let offsets: Vec<u8> = b[t0 as usize..=t1 as usize]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect();
            sink.send(offsets)?;
            let (bytes, sha256) = sink.finish()?;
            for p in &planned {
                weight_map.insert(p.name.clone(), name.clone());
                total_size += p.bytes() as u64;
            }
            packed_parts.push(PackedPart {
                file: name.clone(),
                rows: rows_name,
                offsets: offsets_name,
                scales: (dtype == TableDtype::Int8).then_some(scales_name),
                token_start: t0,
                token_end: t1,
                row_start: r0,
                row_end: r1,
            });
            files.push(FileSummary {
                file: name,
                bytes,
                sha256,
            });
        }
        let token_of = |row: u64| -> u64 { (b.partition_point(|&x| x as u64 <= row) - 1) as u64 };
        for (tensor, (count, first)) in [(&keys.name, nf_keys)]
            .into_iter()
            .chain(values.as_ref().map(|v| (&v.name, nf_vals)))
        {
            if count > 0 {
                let first = first.unwrap_or(0);
                nonfinite.push(NonFinite {
                    tensor: tensor.clone(),
                    count,
                    first_row: first,
                    first_token: token_of(first),
                });
            }
        }
        let conversion_error = (!lossless).then(|| ConversionError {
            max_abs_error: stats.max_abs_error,
            relative_l2_error: stats.relative_l2(),
        });
        // The config records the lambda as stored in the dense shards, after any
        // --other-dtype conversion, so the two never disagree.
        let lambda = match &layer.lambda {
            Some((name, index)) => {
                let info = ckpt.get(name).expect("resolved");
                let stored = other_dtype(info.dtype);
                let size = convert::float_size(info.dtype).expect("checked float");
                let mut bytes = Vec::new();
                ckpt.read_range(name, index * size, size, &mut bytes)?;
                Some(stored_value(info.dtype, stored, &bytes))
            }
            None => None,
        };
        summaries.push(LayerSummary {
            name: layer.name.clone(),
            n_emb: layer.n_emb,
            d_in: layer.d_in,
            d_emb: layer.d_emb,
            parts: packed_parts.len(),
            table_bytes,
            conversion_error: conversion_error.clone(),
        });
        layers.push(PackedLayer {
            name: layer.name.clone(),
            layer_id: layer.layer_id,
            d_in: layer.d_in,
            d_emb: layer.d_emb,
            d_up: layer.d_up,
            n_emb: layer.n_emb,
            row_width: row_width as u64,
            lambda,
            source: SourceNames {
                keys: layer.keys.clone(),
                values: layer.values.clone(),
                bounds: layer.bounds.clone(),
                dtype: st::dtype_name(src),
            },
            params: LayerParams {
                w_up: layer.w_up.clone(),
                w_mix: layer.w_mix.clone(),
                norm_in: layer.norm_in.clone(),
                norm_out: layer.norm_out.clone(),
                lambda: layer.lambda.clone(),
            },
            parts: packed_parts,
            conversion_error,
        });
    }
    bar.finish_and_clear();
    if !nonfinite.is_empty() && !opts.allow_nonfinite {
        let list: Vec<String> = nonfinite
            .iter()
            .map(|n| {
                format!(
                    "{}: {} non-finite values, first in row {} (token {})",
                    n.tensor, n.count, n.first_row, n.first_token
                )
            })
            .collect();
        return Err(Error::input(format!(
            "{}: non-finite values (NaN or Inf) in the L3 tables: {}; pass --allow-nonfinite to pack anyway",
            opts.source.display(),
            list.join("; ")
        )));
    }

    let k_max = bounds
        .iter()
        .flat_map(|b| b.windows(2).map(|w| (w[1] - w[0]) as u32))
        .max()
        .unwrap_or(1);
    let allocation_info = match &allocation {
        Some((_, a)) => AllocationInfo {
            source: "file".into(),
            method: Some(a.meta.method.clone()),
            profile_sha256: a.meta.profile_sha256.clone(),
            tokenizer_sha256: a.meta.tokenizer_sha256.clone(),
            max_rows: k_max,
        },
        None => AllocationInfo {
            source: "checkpoint".into(),
            method: None,
            profile_sha256: None,
            tokenizer_sha256: None,
            max_rows: k_max,
        },
    };
    let config = PackedConfig {
        format: PACKED_FORMAT.to_string(),
        format_version: PACKED_VERSION,
        dialect: detected.dialect.clone(),
        vocab_size: vocab,
        k_max: allocation
            .as_ref()
            .map(|(_, a)| a.meta.k_max)
            .unwrap_or(k_max)
            .max(k_max),
        dtype,
        semantics: detected.semantics.clone(),
        allocation: allocation_info,
        layers,
    };

    // Companion files and the run's metadata travel along unchanged.
    let mut carried_names = Vec::new();
    for (name, bytes) in &carried.files {
        let dst = staging.tmp.join(name);
        std::fs::write(&dst, bytes).with_path(&dst)?;
        files.push(FileSummary {
            file: name.clone(),
            bytes: bytes.len() as u64,
            sha256: hex::encode(Sha256::digest(bytes)),
        });
        carried_names.push(name.clone());
    }
    // config.json: the source's, with an `l3` section.
    let mut model_config = carried.config.clone().unwrap_or_default();
    if carried.config.is_some() {
        carried_names.push(CONFIG_FILE.to_string());
    }
    carried_names.sort();
    model_config.insert(
        "l3".to_string(),
        serde_json::to_value(&config).expect("config serialises"),
    );
    let config_bytes = serde_json::to_vec_pretty(&serde_json::Value::Object(model_config))
        .expect("config serialises");
    let config_path = staging.tmp.join(CONFIG_FILE);
    std::fs::write(&config_path, &config_bytes).with_path(&config_path)?;
    files.push(FileSummary {
        file: CONFIG_FILE.to_string(),
        bytes: config_bytes.len() as u64,
        sha256: hex::encode(Sha256::digest(&config_bytes)),
    });
    files.sort_by(|a, b| a.file.cmp(&b.file));

    // The index goes last: a folder without it is never a packed model.
    let index = serde_json::json!({
        "metadata": {
            "total_size": total_size,
            "format": PACKED_FORMAT,
            "format_version": PACKED_VERSION,
            "sha256": files.iter().map(|f| (f.file.clone(), serde_json::Value::String(f.sha256.clone()))).collect::<serde_json::Map<_, _>>(),
        },
        "weight_map": weight_map,
    });
    let index_path = staging.tmp.join(INDEX_FILE);
    std::fs::write(
        &index_path,
        serde_json::to_vec_pretty(&index).expect("index serialises"),
    )
    .with_path(&index_path)?;
    staging.commit()?;

    let bytes_written = files.iter().map(|f| f.bytes).sum();
    Ok(PackSummary {
        out: opts.out.clone(),
        residual: detected.semantics.residual.name().to_string(),
        dialect: detected.dialect,
        allocation: allocation_source,
        carried: carried_names,
        dtype,
        vocab_size: vocab,
        layers: summaries,
        files,
        nonfinite,
        bytes_read,
        bytes_written,
        seconds: started.elapsed().as_secs_f64(),
        peak_rss_bytes: crate::util::fs::peak_rss_bytes(),
    })
}

/// What a checkpoint folder hands to its packed folder.
struct Carried {
    /// `config.json` as a JSON object.
    config: Option<serde_json::Map<String, serde_json::Value>>,
    /// Files copied byte for byte, by name (sorted).
    files: Vec<(String, Vec<u8>)>,
}

/// Read `config.json`, the companion files and the run's `meta_*.json` from the checkpoint
/// folder, each through the folder's link rule and bounded by its size limit.
fn read_carried(ckpt: &Checkpoint) -> Result<Carried> {
    let mut files = Vec::new();
    for name in carried_file_names(&ckpt.folder_names()?) {
        if let Some(src) = ckpt.companion(&name)? {
            let what = if is_run_metadata(&name) {
                "a training metadata file"
            } else {
                "a companion file"
            };
            let bytes = read_small(&src, companion_limit(&name), what)?;
            if name.ends_with(".json") {
                serde_json::from_slice::<serde::de::IgnoredAny>(&bytes)
                    .map_err(|e| Error::in_file(&src, format!("is not valid JSON: {e}")))?;
            }
            files.push((name, bytes));
        }
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    let config = match ckpt.companion(CONFIG_FILE)? {
        Some(src) => {
            let bytes = read_small(&src, limits::CONFIG, "a config file")?;
            match serde_json::from_slice::<serde_json::Value>(&bytes) {
                Ok(serde_json::Value::Object(m)) => Some(m),
                Ok(other) => {
                    return Err(Error::in_file(
                        &src,
                        format!(
                            "is {}, not a JSON object",
                            crate::util::json::json_kind(&other)
                        ),
                    ))
                }
                Err(e) => return Err(Error::in_file(&src, format!("is not valid JSON: {e}"))),
            }
        }
        None => None,
    };
    Ok(Carried { config, files })
}

/// A float element of dtype `src` (little-endian `bytes`) as it reads after being stored as
/// `stored` (the same conversion the dense shards go through).
fn stored_value(src: Dtype, stored: Dtype, bytes: &[u8]) -> f64 {
    if src == stored && src == Dtype::F64 {
        return f64::from_le_bytes(bytes.try_into().expect("8 bytes"));
    }
    // Only float lambdas reach here (their dtype is checked where they are resolved).
    let (Some(from), Some(to)) = (
        convert::FloatDtype::of(src),
        convert::FloatDtype::of(stored),
    ) else {
        return f64::NAN;
    };
    let mut v = Vec::new();
    convert::decode_f32(from, bytes, &mut v);
    if src == stored {
        return v[0] as f64;
    }
    let mut out = Vec::new();
    convert::encode_f32(stored, &v, &mut out);
    let mut back = Vec::new();
    convert::decode_f32(to, &out, &mut back);
    back[0] as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_metadata_names() {
        assert!(is_run_metadata("meta_000100.json"));
        assert!(!is_run_metadata("meta_.json"));
        assert!(!is_run_metadata("meta_1.json.bak"));
        assert!(!is_run_metadata("model_000100.json"));
    }

    #[test]
    fn stored_values_follow_the_conversion() {
        let x = 0.3f32;
        let b = x.to_le_bytes();
        assert_eq!(stored_value(Dtype::F32, Dtype::F32, &b), x as f64);
        let bf = half::bf16::from_f32(x).to_f32() as f64;
        assert_eq!(stored_value(Dtype::F32, Dtype::BF16, &b), bf);
        assert_ne!(bf, x as f64);
        let d = 0.1f64.to_le_bytes();
        assert_eq!(stored_value(Dtype::F64, Dtype::F64, &d), 0.1);
    }

    #[test]
    fn parts_split_at_token_boundaries() {
        let bounds = [0i64, 2, 3, 7, 8];
        // 10 bytes per row: tokens cost 28, 18, 48, 18 (+8 for the closing offset).
        let parts = split_parts(&bounds, 10, 60);
        assert_eq!(parts, vec![(0, 2), (2, 3), (3, 4)]);
        assert_eq!(split_parts(&bounds, 10, 1 << 20), vec![(0, 4)]);
    }
}
