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
}

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

/// A Zipf-shaped allocation: weights 1/(t+1), floor 1, cap k_max, exact total.
pub fn zipf_allocation(vocab: u64, n_emb: u64, k_max: u32) -> Result<Allocation> {
    crate::allocate::check_budget(vocab, n_emb, k_max)?;
    let weights: Vec<u64> = (0..vocab).map(|t| 1_000_000_000 / (t + 1)).collect();
    let mut rows = vec![1u32; vocab as usize];
    proportional_fill(&mut rows, &weights, n_emb - vocab, k_max);
    Allocation::from_rows(
        &rows,
        AllocationMeta {
            method: "synthetic-zipf".into(),
            k_max,
            n_emb,
            vocab_size: vocab as u32,
            ..Default::default()
        },
    )
}

/// Write a synthetic checkpoint folder: `model.safetensors` (+ `allocation.safetensors`).
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
    std::fs::create_dir_all(&opts.out).with_path(&opts.out)?;
    let alloc = zipf_allocation(opts.vocab, opts.n_emb, opts.k_max)?;
    let table_dtype = match opts.dtype {
        TableDtype::F32 => Dtype::F32,
        TableDtype::F16 => Dtype::F16,
        _ => Dtype::BF16,
    };
    let tied = opts.dialect == Dialect::Nanochat;
    let d_emb = if tied { opts.d_in } else { opts.d_emb };
    let (d_in, d_up, n) = (opts.d_in as usize, opts.d_up as usize, opts.n_emb as usize);

    // (name, dtype, shape, init scale or None for bounds/lambdas)
    let mut specs: Vec<(String, Dtype, Vec<usize>, f32)> = Vec::new();
    let embed = "transformer.wte.weight".to_string();
    specs.push((embed, Dtype::F32, vec![opts.vocab as usize, d_in], 0.02));
    for (i, id) in opts.layers.iter().enumerate() {
        let _ = i;
        match opts.dialect {
            Dialect::Paper => {
                let p = format!("l3.{id}");
                specs.push((format!("{p}.w_k.weight"), table_dtype, vec![n, d_in], 1.0));
                specs.push((
                    format!("{p}.w_v.weight"),
                    table_dtype,
                    vec![n, d_emb as usize],
                    1.0,
                ));
                specs.push((
                    format!("{p}.w_up.weight"),
                    Dtype::F32,
                    vec![d_up, d_emb as usize],
                    0.05,
                ));
                specs.push((
                    format!("{p}.w_mix.weight"),
                    Dtype::F32,
                    vec![d_in, d_up + d_in],
                    0.02,
                ));
                specs.push((format!("{p}.norm_in.weight"), Dtype::F32, vec![d_in], 1.0));
                specs.push((format!("{p}.norm_out.weight"), Dtype::F32, vec![d_up], 1.0));
            }
            Dialect::Nanochat => {
                let p = format!("l3_layers.{id}");
                specs.push((format!("{p}.kv_weight"), table_dtype, vec![n, d_in], 1.0));
                specs.push((
                    format!("{p}.bounds"),
                    Dtype::I64,
                    vec![opts.vocab as usize + 1],
                    0.0,
                ));
                specs.push((
                    format!("{p}.w_up.weight"),
                    Dtype::F32,
                    vec![d_up, d_in],
                    0.05,
                ));
                specs.push((
                    format!("{p}.w_mix.weight"),
                    Dtype::F32,
                    vec![d_in, d_up + d_in],
                    0.02,
                ));
            }
        }
    }
    if tied {
        specs.push((
            "l3_lambdas".into(),
            Dtype::F32,
            vec![opts.layers.len()],
            0.0,
        ));
    }
    specs.sort_by(|a, b| a.0.cmp(&b.0));
    let header_specs: Vec<_> = specs
        .iter()
        .map(|(name, d, s, _)| {
            (
                name.clone(),
                *d,
                s.clone(),
                s.iter().product::<usize>() * d.bitsize() / 8,
            )
        })
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
    let mut total = 0u64;
    let mut floats = Vec::new();
    let mut bytes = Vec::new();
    for (name, dtype, shape, scale) in &specs {
        let numel: usize = shape.iter().product();
        if *dtype == Dtype::I64 {
            bytes.clear();
            bytes.extend(alloc.bounds().iter().flat_map(|v| v.to_le_bytes()));
            file.write_all(&bytes).with_path(&path)?;
        } else if name.ends_with("l3_lambdas") {
            bytes.clear();
            let lambdas: Vec<f32> = (0..numel).map(|i| 0.5 + 0.25 * i as f32).collect();
            convert::encode_f32(Dtype::F32, &lambdas, &mut bytes);
            file.write_all(&bytes).with_path(&path)?;
        } else {
            let mut left = numel;
            while left > 0 {
                let step = left.min(1 << 20);
                floats.clear();
                if name.contains("norm_") {
                    floats.extend((0..step).map(|_| 1.0 + rng.next_f32(0.1)));
                } else {
                    floats.extend((0..step).map(|_| rng.next_f32(*scale)));
                }
                bytes.clear();
                convert::encode_f32(*dtype, &floats, &mut bytes);
                file.write_all(&bytes).with_path(&path)?;
                left -= step;
            }
        }
        total += (numel * dtype.bitsize() / 8) as u64;
    }
    file.commit()?;
    let alloc_path = opts.out.join("allocation.safetensors");
    alloc.write(&alloc_path)?;
    Ok(SynthSummary {
        checkpoint: path,
        allocation: alloc_path,
        bytes: total,
    })
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
    })
}
