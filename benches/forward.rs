//! Forward-pass and table-store benchmarks (issue 4). Run with
//!
//!   cargo bench --bench forward -- forward DIR [REPS]   one L3 layer on a dumped problem
//!   cargo bench --bench forward -- store [REPS]          store gather vs memcpy
//!
//! `forward` reads a problem written by `benches/l3_torch_bench.py --dump DIR` (model,
//! allocation, inputs and PyTorch's output), times l3kit's CPU forward with one warm-up and
//! REPS timed runs (default 5), prints median/min/max tokens/s and checks the output against
//! PyTorch's. `benches/forward.sh` runs both sides one after the other on the same problem.
//!
//! `store` packs a synthetic bf16 layer (vocab 50K, n_emb 200K, d_in 1024, d_emb 512, about
//! 600 MB) into /tmp, page-caches it, draws 4096 Zipf-distributed token ids, and times
//! gathering their distinct tokens' rows from the mapped shards (`gather_raw`, and `gather`
//! into f32) against a plain memcpy of the same number of bytes, alternating the three in each
//! repetition; it prints medians and ratios.

use candle_core::{Device, Tensor};
use l3kit::formats::dtype::TableDtype;
use l3kit::serve::TableSource;
use l3kit::util::progress::Ui;
use l3kit::verify::{self, Inputs, SourceOptions};
use std::path::{Path, PathBuf};
use std::time::Instant;

mod shared;
use shared::median;

fn forward(dir: &Path, reps: usize) {
    let opts = SourceOptions {
        allocation: Some(dir.join("allocation.safetensors")),
        ..Default::default()
    };
    let model = verify::load_source(&dir.join("model.safetensors"), &opts, &Device::Cpu).unwrap();
    let inputs = Inputs::read(&dir.join("inputs.safetensors")).unwrap();
    let layer = &model.layers[0];
    // Tables in memory for both sides: PyTorch's benchmark holds them as tensors too.
    let all: Vec<u32> = (0..layer.tables.vocab() as u32).collect();
    let blocks = layer.tables.gather(&all).unwrap();
    let memory = MemoryTables {
        bounds: layer.tables.bounds().to_vec(),
        blocks,
    };
    let (h, w) = inputs.hidden_for(layer).unwrap();
    let n = inputs.token_ids.len();
    let x = Tensor::from_slice(h, (n, w), &Device::Cpu).unwrap();
    let run = || {
        layer
            .layer
            .forward(&x, &inputs.token_ids, &memory)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    let y = run();
    let mut times = Vec::new();
    for _ in 0..reps {
        let t = Instant::now();
        std::hint::black_box(run());
        times.push(t.elapsed().as_secs_f64());
    }
    let rates: Vec<f64> = times.iter().map(|t| n as f64 / t).collect();
    let mut sorted = rates.clone();
    let med = median(&mut sorted);
    let reference = dir.join("output.safetensors");
    let rel = if reference.exists() {
        let bytes = std::fs::read(&reference).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let want: Vec<f32> = st
            .tensor(&format!("output.{}", layer.name))
            .unwrap()
            .data()
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        Some(verify::compare(&want, &y, w).1)
    } else {
        None
    };
    println!(
        "l3kit forward: {n} tokens, median {med:.0} tokens/s (min {:.0}, max {:.0}) over {reps} runs; relative L2 vs PyTorch {}",
        sorted[0],
        sorted[sorted.len() - 1],
        rel.map(|r| format!("{r:.2e}")).unwrap_or_else(|| "n/a".into())
    );
    println!(
        "{{\"impl\": \"l3kit\", \"tokens\": {n}, \"median_tokens_per_s\": {med:.1}, \"min_tokens_per_s\": {:.1}, \"max_tokens_per_s\": {:.1}}}",
        sorted[0],
        sorted[sorted.len() - 1]
    );
}

/// Whole tables gathered once into memory, served by slicing.
struct MemoryTables {
    bounds: Vec<i64>,
    blocks: l3kit::serve::Blocks,
}

impl TableSource for MemoryTables {
    fn vocab(&self) -> usize {
        self.bounds.len() - 1
    }
    fn row_width(&self) -> usize {
        self.blocks.row_width
    }
    fn bounds(&self) -> &[i64] {
        &self.bounds
    }
    fn stored_row_bytes(&self) -> u64 {
        (self.blocks.row_width * 4) as u64
    }
    fn gather_into(&self, tokens: &[u32], out: &mut l3kit::serve::Blocks) -> l3kit::Result<()> {
        let width = self.blocks.row_width;
        out.tokens = tokens.to_vec();
        out.starts = vec![0usize];
        out.rows.clear();
        for &t in tokens {
            out.rows.extend_from_slice(self.blocks.block(t as usize));
            out.starts.push(out.rows.len() / width);
        }
        out.row_width = width;
        Ok(())
    }
}

fn zipf_tokens(vocab: usize, n: usize, s: f64, seed: u64) -> Vec<u32> {
    let mut cumulative = Vec::with_capacity(vocab);
    let mut total = 0f64;
    for i in 0..vocab {
        total += ((i + 1) as f64).powf(-s);
        cumulative.push(total);
    }
    let mut state = seed;
    (0..n)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            let u = ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64 * total;
            cumulative.partition_point(|&c| c < u) as u32
        })
        .collect()
}

fn store(reps: usize) {
    let work = PathBuf::from("/tmp/l3kit-store-bench");
    let packed = work.join("packed");
    if !packed.join("model.safetensors.index.json").exists() {
        std::fs::create_dir_all(&work).unwrap();
        let s = l3kit::synth::synthesize(&l3kit::synth::SynthOptions {
            dialect: l3kit::checkpoint::dialect::Dialect::Paper,
            vocab: 50_000,
            n_emb: 200_000,
            k_max: 512,
            d_in: 1024,
            d_emb: 512,
            d_up: 64,
            layers: vec![4],
            dtype: TableDtype::Bf16,
            seed: 0,
            out: work.join("src"),
        })
        .unwrap();
        let mut o = l3kit::pack::PackOptions::new(s.checkpoint, packed.clone());
        o.allocation = Some(s.allocation);
        o.force = true;
        l3kit::pack::pack(&o, &Ui::quiet()).unwrap();
        std::fs::remove_dir_all(work.join("src")).unwrap();
    }
    let (_, stores) = l3kit::serve::open_packed(&packed).unwrap();
    let store = &stores[0];
    let mut tokens = zipf_tokens(50_000, 4096, 1.1, 7);
    tokens.sort_unstable();
    tokens.dedup();
    // Page-cache every shard, as a serving process would have.
    let all: Vec<u32> = (0..50_000).collect();
    let mut raw = Vec::new();
    store.gather_raw(&all, &mut raw).unwrap();
    store.gather_raw(&tokens, &mut raw).unwrap();
    let bytes = raw.len();
    let source: Vec<u8> = (0..bytes).map(|i| i as u8).collect();
    let mut dst = vec![0u8; bytes];
    let (mut t_raw, mut t_f32, mut t_copy) = (Vec::new(), Vec::new(), Vec::new());
    // One staging buffer reused across steps, as a serving loop would keep it.
    let mut staging = l3kit::serve::Blocks::default();
    store.gather_into(&tokens, &mut staging).unwrap();
    for _ in 0..reps {
        let t = Instant::now();
        store.gather_raw(&tokens, &mut raw).unwrap();
        t_raw.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        store.gather_into(&tokens, &mut staging).unwrap();
        std::hint::black_box(&staging);
        t_f32.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        dst.copy_from_slice(std::hint::black_box(&source));
        std::hint::black_box(&dst);
        t_copy.push(t.elapsed().as_secs_f64());
    }
    let (r, f, c) = (median(&mut t_raw), median(&mut t_f32), median(&mut t_copy));
    let gb = |t: f64| bytes as f64 / t / 1e9;
    println!(
        "store: {} distinct tokens of 4096 Zipf draws, {:.1} MB of bf16 rows, {reps} reps",
        tokens.len(),
        bytes as f64 / 1e6
    );
    println!(
        "  memcpy of the same bytes   median {:.3} ms  {:.2} GB/s",
        c * 1e3,
        gb(c)
    );
    println!(
        "  gather_raw (packed bytes)  median {:.3} ms  {:.2} GB/s  ratio {:.2}x memcpy",
        r * 1e3,
        gb(r),
        c / r
    );
    println!(
        "  gather (to f32 staging)    median {:.3} ms  {:.2} GB/s of source bytes  ratio {:.2}x memcpy",
        f * 1e3,
        gb(f),
        c / f
    );
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    match args.first().map(String::as_str) {
        Some("forward") => {
            let dir = args.get(1).expect("forward DIR [REPS]");
            let reps = args.get(2).and_then(|r| r.parse().ok()).unwrap_or(5);
            forward(Path::new(dir), reps);
        }
        Some("store") => store(args.get(1).and_then(|r| r.parse().ok()).unwrap_or(9)),
        _ => eprintln!("usage: cargo bench --bench forward -- forward DIR [REPS] | store [REPS]"),
    }
}
