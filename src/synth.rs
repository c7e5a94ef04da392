//! Synthetic L3 checkpoints of any size, for benchmarks and tests (`l3kit synth`).
//!
//! Weights are seeded pseudo-random (SplitMix64), streamed to disk a few megabytes at a time,
//! so a 10 GB checkpoint costs no more memory than a small one. The allocation is Zipf-shaped
//! (rows fall off with token id, as real LZW allocations fall off with frequency rank).

use crate::allocate::proportional_fill;
use crate::checkpoint::dialect::Dialect;
use crate::formats::allocation::{Allocation, AllocationMeta};
use crate::formats::dtype as convert;
use crate::formats::dtype::TableDtype;
use crate::formats::profile::MAX_VOCAB;
use crate::util::atomic_file::AtomicFile;
use crate::util::error::{Error, IoContext, Result};
use crate::util::safetensors_file as st;
use safetensors::Dtype;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug)]
pub struct SynthOptions {
    pub dialect: Dialect,
    pub vocab: u64,
    pub n_emb: u64,
    pub k_max: u32,
    pub d_in: u64,
    /// Ignored for the tied nanochat dialect (d_emb = d_in).
    pub d_emb: u64,
    pub d_up: u64,
    pub layers: Vec<u32>,
    /// Table dtype (f32, bf16 or f16); the small tensors are f32.
    pub dtype: TableDtype,
    pub seed: u64,
    pub out: PathBuf,
    /// A whole model of the bundled trained family around the L3 layers (`--family tiny`):
    /// `layers` are then the blocks the L3 sublayers follow.
    pub decoder: Option<TinyShape>,
}

/// The dense part of a synthetic whole model of the bundled trained family
/// (`model_type: "l3-tiny-trained"`, `fixtures/train_tiny.py`): d_model is `d_in`.
#[derive(Clone, Debug)]
pub struct TinyShape {
    pub n_layer: u64,
    pub n_head: u64,
    pub block_size: u64,
    pub mlp_hidden: u64,
}

/// The most decoder blocks (`--n-layer`) a synthetic whole model may have.
pub const MAX_BLOCKS: u64 = 1024;

#[derive(Clone, Debug, Serialize)]
pub struct SynthSummary {
    pub checkpoint: PathBuf,
    pub allocation: PathBuf,
    pub bytes: u64,
}

/// SplitMix64: tiny, fast, and reproducible across platforms.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [-scale, scale).
    fn next_f32(&mut self, scale: f32) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
    }
}

/// The largest checkpoint `synth` writes: 1 TiB (the free disk space is checked too).
pub const MAX_SYNTH_BYTES: u64 = 1 << 40;

/// The most L3 layers (`--layers`) a synthetic checkpoint may have.
pub const MAX_LAYERS: usize = 1024;

/// A Zipf-shaped allocation: weights 1/(t+1), floor 1, cap k_max, exact total.
pub fn zipf_allocation(vocab: u64, n_emb: u64, k_max: u32) -> Result<Allocation> {
    let vocab32 = u32::try_from(vocab)
        .ok()
        .filter(|v| (1..=MAX_VOCAB).contains(v))
        .ok_or_else(|| {
            Error::input(format!(
                "--vocab {vocab} is out of range: 1 to {MAX_VOCAB} tokens"
            ))
        })?;
    crate::allocate::check_budget(vocab, n_emb, k_max)?;
    let weights: Vec<u64> = (0..vocab).map(|t| 1_000_000_000 / (t + 1)).collect();
    let mut rows = vec![1u32; vocab32 as usize];
    proportional_fill(&mut rows, &weights, n_emb - vocab, k_max);
    Allocation::from_rows(
        &rows,
        AllocationMeta {
            method: "synthetic-zipf".into(),
            k_max,
            n_emb,
            vocab_size: vocab32,
            ..Default::default()
        },
    )
}

/// One tensor of the synthetic checkpoint: name, dtype, shape, init scale (0 for bounds and
/// lambdas) and its size in bytes.
struct Spec {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    scale: f32,
    numel: usize,
    bytes: u64,
}

/// The tensors of the checkpoint, every size computed with checked arithmetic: a product or
/// sum that overflows is an error naming the flags, never a wrong header offset.
fn plan_tensors(opts: &SynthOptions, table_dtype: Dtype) -> Result<Vec<Spec>> {
    let tied = opts.dialect == Dialect::Nanochat;
    let d_emb = if tied { opts.d_in } else { opts.d_emb };
    let too_big = || {
        Error::input(format!(
            "--vocab {} --n-emb {} --d-in {} --d-emb {} --d-up {}: the checkpoint's sizes do not \
             fit 64 bits",
            opts.vocab, opts.n_emb, opts.d_in, opts.d_emb, opts.d_up
        ))
    };
    let dim = |v: u64| usize::try_from(v).map_err(|_| too_big());
    let (vocab, d_in, d_emb, d_up, n) = (
        dim(opts.vocab)?,
        dim(opts.d_in)?,
        dim(d_emb)?,
        dim(opts.d_up)?,
        dim(opts.n_emb)?,
    );
    let d_mix = d_up.checked_add(d_in).ok_or_else(too_big)?;
    let bounds_len = vocab.checked_add(1).ok_or_else(too_big)?;
    let mut raw: Vec<(String, Dtype, Vec<usize>, f32)> = Vec::new();
    match &opts.decoder {
        None => raw.push((
            "transformer.wte.weight".to_string(),
            Dtype::F32,
            vec![vocab, d_in],
            0.02,
        )),
        Some(shape) => dense_tensors(shape, vocab, d_in, dim, &mut raw)?,
    }
    for id in &opts.layers {
        match opts.dialect {
            Dialect::Paper => {
                let p = format!("l3.{id}");
                raw.push((format!("{p}.w_k.weight"), table_dtype, vec![n, d_in], 1.0));
                raw.push((format!("{p}.w_v.weight"), table_dtype, vec![n, d_emb], 1.0));
                raw.push((
                    format!("{p}.w_up.weight"),
                    Dtype::F32,
                    vec![d_up, d_emb],
                    0.05,
                ));
                raw.push((
                    format!("{p}.w_mix.weight"),
                    Dtype::F32,
                    vec![d_in, d_mix],
                    0.02,
                ));
                raw.push((format!("{p}.norm_in.weight"), Dtype::F32, vec![d_in], 1.0));
                raw.push((format!("{p}.norm_out.weight"), Dtype::F32, vec![d_up], 1.0));
            }
            Dialect::Nanochat => {
                let p = format!("l3_layers.{id}");
                raw.push((format!("{p}.kv_weight"), table_dtype, vec![n, d_in], 1.0));
                raw.push((format!("{p}.bounds"), Dtype::I64, vec![bounds_len], 0.0));
                raw.push((
                    format!("{p}.w_up.weight"),
                    Dtype::F32,
                    vec![d_up, d_in],
                    0.05,
                ));
                raw.push((
                    format!("{p}.w_mix.weight"),
                    Dtype::F32,
                    vec![d_in, d_mix],
                    0.02,
                ));
            }
        }
    }
    if tied {
        raw.push((
            "l3_lambdas".into(),
            Dtype::F32,
            vec![opts.layers.len()],
            0.0,
        ));
    }
    raw.sort_by(|a, b| a.0.cmp(&b.0));
    raw.into_iter()
        .map(|(name, dtype, shape, scale)| {
            let numel = shape
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .ok_or_else(too_big)?;
            let bytes = u64::try_from(numel)
                .ok()
                .and_then(|n| n.checked_mul(dtype.bitsize() as u64 / 8))
                .ok_or_else(too_big)?;
            Ok(Spec {
                name,
                dtype,
                shape,
                scale,
                numel,
                bytes,
            })
        })
        .collect()
}

/// The dense tensors of a whole model of the bundled trained family, with the names
/// `fixtures/train_tiny.py` gives them. Linear layers are scaled by 1/sqrt(fan-in) so the
/// activations of a deep random model stay finite.
fn dense_tensors(
    shape: &TinyShape,
    vocab: usize,
    d: usize,
    dim: impl Fn(u64) -> Result<usize>,
    raw: &mut Vec<(String, Dtype, Vec<usize>, f32)>,
) -> Result<()> {
    let (blocks, context, hidden) = (
        dim(shape.n_layer)?,
        dim(shape.block_size)?,
        dim(shape.mlp_hidden)?,
    );
    let qkv = d
        .checked_mul(3)
        .ok_or_else(|| Error::input("--d-in is too large"))?;
    let fan = |n: usize| 1.0 / (n as f32).sqrt();
    raw.push(("wte.weight".into(), Dtype::F32, vec![vocab, d], 0.02));
    raw.push(("wpe.weight".into(), Dtype::F32, vec![context, d], 0.02));
    raw.push(("ln_f.weight".into(), Dtype::F32, vec![d], 1.0));
    for i in 0..blocks {
        let p = |n: &str| format!("h.{i}.{n}");
        raw.push((p("ln1.weight"), Dtype::F32, vec![d], 1.0));
        raw.push((p("ln2.weight"), Dtype::F32, vec![d], 1.0));
        raw.push((p("attn.qkv.weight"), Dtype::F32, vec![qkv, d], fan(d)));
        raw.push((p("attn.proj.weight"), Dtype::F32, vec![d, d], fan(d)));
        raw.push((p("mlp.fc.weight"), Dtype::F32, vec![hidden, d], fan(d)));
        raw.push((
            p("mlp.proj.weight"),
            Dtype::F32,
            vec![d, hidden],
            fan(hidden),
        ));
    }
    Ok(())
}

/// Norm weights are drawn around 1, not around 0.
fn is_norm(name: &str) -> bool {
    name.contains("norm_")
        || [".ln1.", ".ln2."].iter().any(|n| name.contains(n))
        || name.starts_with("ln_f.")
}

/// The `config.json` of a synthetic whole model: what `l3kit eval`/`generate` read to run it.
fn tiny_config(opts: &SynthOptions, shape: &TinyShape) -> serde_json::Value {
    serde_json::json!({
        "model_type": "l3-tiny-trained",
        "vocab_size": opts.vocab,
        "n_embd": opts.d_in,
        "n_head": shape.n_head,
        "n_layer": shape.n_layer,
        "block_size": shape.block_size,
        "mlp_hidden": shape.mlp_hidden,
        "l3_layers": opts.layers,
        "d_emb": opts.d_emb,
        "d_up": opts.d_up,
        "norm_eps": 1e-6,
        "tied_embeddings": true,
        "mlp_activation": "gelu",
        "positions": "learned",
        "l3_dialect": "paper",
        "l3_residual": "replace",
        "n_emb": opts.n_emb,
        "k_max": opts.k_max,
        "allocation": "allocation.safetensors (synthetic Zipf, l3kit synth)",
    })
}

/// Check a whole model's shape against the L3 options.
fn check_decoder(opts: &SynthOptions, shape: &TinyShape) -> Result<()> {
    if opts.dialect != Dialect::Paper {
        return Err(Error::input(
            "--family tiny builds the bundled trained family, whose L3 layers are in the paper \
             dialect: leave out --dialect nanochat",
        ));
    }
    if shape.n_layer == 0 || shape.n_layer > MAX_BLOCKS {
        return Err(Error::input(format!(
            "--n-layer {} is out of range: 1 to {MAX_BLOCKS} blocks",
            shape.n_layer
        )));
    }
    if shape.n_head == 0 || !opts.d_in.is_multiple_of(shape.n_head) {
        return Err(Error::input(format!(
            "--d-in {} is not a multiple of --n-head {}",
            opts.d_in, shape.n_head
        )));
    }
    if shape.block_size == 0 || shape.mlp_hidden == 0 {
        return Err(Error::input(
            "--block-size and --mlp-hidden must be at least 1",
        ));
    }
    if let Some(l) = opts.layers.iter().find(|&&l| u64::from(l) >= shape.n_layer) {
        return Err(Error::input(format!(
            "--layers names block {l}, but the model has {} blocks (--n-layer)",
            shape.n_layer
        )));
    }
    Ok(())
}

/// Bytes free for an unprivileged writer in the filesystem that holds `path` (or its
/// nearest existing ancestor), when the OS reports it.
fn free_bytes(path: &Path) -> Option<u64> {
    let mut p = crate::util::fs::resolve(path).ok()?;
    while !p.exists() {
        p = p.parent()?.to_path_buf();
    }
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: statvfs writes into the zeroed struct we own; the path is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    (st.f_bavail as u64).checked_mul(st.f_frsize as u64)
}

/// Write a synthetic checkpoint folder: `model.safetensors` (+ `allocation.safetensors`).
///
/// Every size is checked before anything is created: the tensors' sizes with checked
/// arithmetic, their total against [`MAX_SYNTH_BYTES`] and the free disk space. A failure
/// part-way removes what was written (and the folder, when this run made it).
pub fn synthesize(opts: &SynthOptions) -> Result<SynthSummary> {
    if !matches!(
        opts.dtype,
        TableDtype::F32 | TableDtype::Bf16 | TableDtype::F16
    ) {
        return Err(Error::input("synthetic tables are f32, bf16 or f16"));
    }
    if opts.layers.is_empty() {
        return Err(Error::input("at least one L3 layer is needed"));
    }
    if opts.layers.len() > MAX_LAYERS {
        return Err(Error::input(format!(
            "--layers has {} entries; a synthetic checkpoint has at most {MAX_LAYERS}",
            opts.layers.len()
        )));
    }
    let mut sorted = opts.layers.clone();
    sorted.sort_unstable();
    if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
        return Err(Error::input(format!("--layers names layer {} twice", w[0])));
    }
    let tied = opts.dialect == Dialect::Nanochat;
    if opts.d_in == 0 || opts.d_up == 0 || (!tied && opts.d_emb == 0) {
        return Err(Error::input(
            "--d-in, --d-emb and --d-up must be at least 1",
        ));
    }
    if opts.vocab == 0 || opts.vocab > u64::from(MAX_VOCAB) {
        return Err(Error::input(format!(
            "--vocab {} is out of range: 1 to {MAX_VOCAB} tokens",
            opts.vocab
        )));
    }
    crate::allocate::check_budget(opts.vocab, opts.n_emb, opts.k_max)?;
    if let Some(shape) = &opts.decoder {
        check_decoder(opts, shape)?;
    }
    let table_dtype = match opts.dtype {
        TableDtype::F32 => Dtype::F32,
        TableDtype::F16 => Dtype::F16,
        _ => Dtype::BF16,
    };
    let specs = plan_tensors(opts, table_dtype)?;
    let total = specs
        .iter()
        .try_fold(0u64, |a, s| a.checked_add(s.bytes))
        .filter(|&t| t <= MAX_SYNTH_BYTES)
        .ok_or_else(|| {
            Error::input(format!(
                "--vocab {} --n-emb {} --d-in {} --d-emb {} --d-up {} --layers ({}): the \
                 checkpoint would be larger than the {MAX_SYNTH_BYTES}-byte (1 TiB) limit",
                opts.vocab,
                opts.n_emb,
                opts.d_in,
                opts.d_emb,
                opts.d_up,
                opts.layers.len()
            ))
        })?;
    let alloc_bytes = (opts.vocab + 1) * 8 + 4096;
    let need = total + alloc_bytes + (1 << 20);
    if let Some(free) = free_bytes(&opts.out) {
        if need > free {
            return Err(Error::in_file(
                &opts.out,
                format!(
                    "the checkpoint needs {} of disk space and only {} is free",
                    crate::util::units::human_bytes(need as f64),
                    crate::util::units::human_bytes(free as f64)
                ),
            ));
        }
    }
    let alloc = zipf_allocation(opts.vocab, opts.n_emb, opts.k_max)?;
    let made = !opts.out.exists();
    std::fs::create_dir_all(&opts.out).with_path(&opts.out)?;
    let written = write_checkpoint(opts, &alloc, &specs);
    if written.is_err() && made {
        let _ = std::fs::remove_dir_all(&opts.out);
    }
    let (path, alloc_path) = written?;
    Ok(SynthSummary {
        checkpoint: path,
        allocation: alloc_path,
        bytes: total,
    })
}

fn write_checkpoint(
    opts: &SynthOptions,
    alloc: &Allocation,
    specs: &[Spec],
) -> Result<(PathBuf, PathBuf)> {
    let header_specs: Vec<_> = specs
        .iter()
        .map(|s| (s.name.clone(), s.dtype, s.shape.clone(), s.bytes as usize))
        .collect();
    let mut metadata = BTreeMap::new();
    metadata.insert("format".to_string(), "pt".to_string());
    let header = st::header_bytes(&header_specs, &metadata, 8);
    let path = opts.out.join("model.safetensors");
    let mut file = AtomicFile::create(&path)?;
    file.write_all(&(header.len() as u64).to_le_bytes())
        .with_path(&path)?;
    file.write_all(&header).with_path(&path)?;
    let mut rng = Rng(opts.seed);
    let mut floats = Vec::new();
    let mut bytes = Vec::new();
    for spec in specs {
        if spec.dtype == Dtype::I64 {
            bytes.clear();
            bytes.extend(alloc.bounds().iter().flat_map(|v| v.to_le_bytes()));
            file.write_all(&bytes).with_path(&path)?;
        } else if spec.name.ends_with("l3_lambdas") {
            bytes.clear();
            let lambdas: Vec<f32> = (0..spec.numel).map(|i| 0.5 + 0.25 * i as f32).collect();
            convert::encode_f32(Dtype::F32, &lambdas, &mut bytes);
            file.write_all(&bytes).with_path(&path)?;
        } else {
            let mut left = spec.numel;
            while left > 0 {
                let step = left.min(1 << 20);
                floats.clear();
                if is_norm(&spec.name) {
                    floats.extend((0..step).map(|_| 1.0 + rng.next_f32(0.1)));
                } else {
                    floats.extend((0..step).map(|_| rng.next_f32(spec.scale)));
                }
                bytes.clear();
                convert::encode_f32(spec.dtype, &floats, &mut bytes);
                file.write_all(&bytes).with_path(&path)?;
                left -= step;
            }
        }
    }
    // The allocation (and config) first: if they cannot be written, the model's temporary
    // file goes too.
    let alloc_path = opts.out.join("allocation.safetensors");
    alloc.write(&alloc_path)?;
    if let Some(shape) = &opts.decoder {
        let config = opts.out.join("config.json");
        let text = serde_json::to_string_pretty(&tiny_config(opts, shape))
            .map_err(|e| Error::Other(format!("config.json: {e}")))?;
        crate::util::atomic_file::write_atomic(&config, format!("{text}\n").as_bytes())?;
    }
    file.commit()?;
    Ok((path, alloc_path))
}

/// Convenience for tests: a small synthetic checkpoint in `dir`.
pub fn small(dir: &Path, dialect: Dialect, dtype: TableDtype) -> Result<SynthSummary> {
    synthesize(&SynthOptions {
        dialect,
        vocab: 64,
        n_emb: 200,
        k_max: 16,
        d_in: 16,
        d_emb: 8,
        d_up: 32,
        layers: vec![1, 3],
        dtype,
        seed: 7,
        out: dir.to_path_buf(),
        decoder: None,
    })
}
