//! Whole-model decode with the L3 tables served from RAM, the page cache or the disk, with
//! prefetch on and off (issue 11). Run with
//!
//!   cargo bench --bench decode -- [--dir DIR] [--n-emb N] [--steps N] [--reps N]
//!
//! The first run writes a synthetic whole model of the bundled trained family with
//! `l3kit synth --family tiny` semantics (d_model 1024, 8 blocks, 16 heads, L3 sublayers
//! after blocks 2 and 6, vocab 32768, `--n-emb` rows per layer, default 655360: 4 GB of bf16
//! tables) and packs it into DIR (default /tmp/l3kit-decode-bench/packed); later runs reuse it.
//!
//! Each measurement prefills one token per row, then decodes `--steps` (default 24) steps,
//! teacher-forced with Zipf-distributed token ids (exponent 1.0, seeded), at batch 1 and 16.
//! The tiers: `ram` (tables loaded at open), `mmap warm` (every shard page-cached before the
//! run), `mmap cold` (the shards' page cache dropped with posix_fadvise before the run) and
//! `disk` (O_DIRECT reads), each with prefetch on and off. The configurations are run in turn
//! within each of `--reps` repetitions (default 3), so they see the same machine noise; the
//! report gives medians. Beside them it measures the disk's read bandwidth: 1 GiB of O_DIRECT
//! sequential 4 MiB reads from a shard, and the tables' own O_DIRECT gather of random tokens.

use candle_core::Device;
use l3kit::model::decoder::Decoder;
use l3kit::model::runtime::L3Runtime;
use l3kit::serve::{TableSource, TableTier};
use l3kit::util::progress::Ui;
use l3kit::verify::SourceOptions;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Instant;

mod common;
use common::{median, zipf_tokens};

const VOCAB: u64 = 32_768;
const D_MODEL: u64 = 1024;

struct Args {
    dir: PathBuf,
    n_emb: u64,
    steps: usize,
    reps: usize,
}

fn parse_args() -> Args {
    let mut a = Args {
        dir: PathBuf::from("/tmp/l3kit-decode-bench"),
        n_emb: 655_360,
        steps: 24,
        reps: 3,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < argv.len() {
        let value = argv.get(i + 1).cloned().unwrap_or_default();
        match argv[i].as_str() {
            "--dir" => a.dir = PathBuf::from(value),
            "--n-emb" => a.n_emb = value.parse().expect("--n-emb N"),
            "--steps" => a.steps = value.parse().expect("--steps N"),
            "--reps" => a.reps = value.parse().expect("--reps N"),
            "--bench" => {
                i += 1;
                continue;
            }
            other => panic!("unknown argument {other}"),
        }
        i += 2;
    }
    a
}

fn build_model(dir: &Path, n_emb: u64) -> PathBuf {
    let packed = dir.join("packed");
    if packed.join("model.safetensors.index.json").exists() {
        return packed;
    }
    std::fs::create_dir_all(dir).unwrap();
    let started = Instant::now();
    let src = dir.join("src");
    l3kit::synth::synthesize(&l3kit::synth::SynthOptions {
        dialect: l3kit::checkpoint::dialect::Dialect::Paper,
        vocab: VOCAB,
        n_emb,
        k_max: 512,
        d_in: D_MODEL,
        d_emb: D_MODEL / 2,
        d_up: 1024,
        layers: vec![2, 6],
        dtype: l3kit::formats::dtype::TableDtype::Bf16,
        seed: 0,
        out: src.clone(),
        decoder: Some(l3kit::synth::TinyShape {
            n_layer: 8,
            n_head: 16,
            block_size: 1024,
            mlp_hidden: 4 * D_MODEL,
        }),
    })
    .unwrap();
    let mut o = l3kit::pack::PackOptions::new(src.clone(), packed.clone());
    o.force = true;
    o.max_shard_size = 1 << 30;
    l3kit::pack::pack(&o, &Ui::quiet()).unwrap();
    std::fs::remove_dir_all(&src).unwrap();
    eprintln!(
        "wrote and packed the model in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    packed
}

fn shards(packed: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(packed)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    v.sort();
    v
}

/// Drop the page cache of every shard (what `mmap cold` starts from).
fn drop_cache(packed: &Path) {
    for p in shards(packed) {
        let f = std::fs::File::open(&p).unwrap();
        f.sync_all().ok();
        // SAFETY: advice on a descriptor we own.
        unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    }
}

/// Read every shard once, so `mmap warm` finds it in the page cache.
fn warm_cache(packed: &Path) {
    let mut buf = vec![0u8; 8 << 20];
    for p in shards(packed) {
        let f = std::fs::File::open(&p).unwrap();
        let mut at = 0u64;
        while let Ok(n) = f.read_at(&mut buf, at) {
            if n == 0 {
                break;
            }
            at += n as u64;
        }
    }
}

/// Sequential O_DIRECT read bandwidth of the largest shard: up to 1 GiB in 4 MiB requests.
fn sequential_bandwidth(packed: &Path) -> f64 {
    let path = shards(packed)
        .into_iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
        .unwrap();
    let len = f.metadata().unwrap().len().min(1 << 30) / (4 << 20) * (4 << 20);
    let mut raw = vec![0u8; (4 << 20) + 4096];
    let skip = raw.as_ptr().align_offset(4096);
    let buf = &mut raw[skip..skip + (4 << 20)];
    let started = Instant::now();
    let mut at = 0;
    while at < len {
        at += f.read_at(buf, at).unwrap() as u64;
    }
    len as f64 / started.elapsed().as_secs_f64()
}

/// The tables' own O_DIRECT gather of 2048 random (uniform) tokens' rows, one layer.
fn gather_bandwidth(packed: &Path) -> (f64, f64) {
    let (_, stores) = l3kit::serve::open_packed_tier(packed, TableTier::Disk).unwrap();
    let mut tokens = zipf_tokens(VOCAB as usize, 2048, 0.0, 11);
    tokens.sort_unstable();
    tokens.dedup();
    let mut blocks = l3kit::serve::Blocks::default();
    let started = Instant::now();
    stores[0].gather_into(&tokens, &mut blocks).unwrap();
    let secs = started.elapsed().as_secs_f64();
    let rows = *blocks.starts.last().unwrap() as f64;
    (
        rows * stores[0].stored_row_bytes() as f64 / secs,
        stores[0].device_bytes_read() as f64 / secs,
    )
}

#[derive(Clone, Copy, PartialEq)]
enum Setting {
    Ram,
    MmapWarm,
    MmapCold,
    Disk,
}

impl Setting {
    fn name(self) -> &'static str {
        match self {
            Setting::Ram => "ram",
            Setting::MmapWarm => "mmap warm",
            Setting::MmapCold => "mmap cold",
            Setting::Disk => "disk",
        }
    }
    fn tier(self) -> TableTier {
        match self {
            Setting::Ram => TableTier::Ram,
            Setting::MmapWarm | Setting::MmapCold => TableTier::Mmap,
            Setting::Disk => TableTier::Disk,
        }
    }
}

/// One run's figures, per decode step.
#[derive(Default, Clone)]
struct Run {
    tokens_per_second: f64,
    wait_ms: f64,
    before_first_l3_ms: f64,
    gather_ms: f64,
    bytes_per_token: f64,
    device_bytes_per_token: f64,
    /// The first step's logits (for the bit-identity check across settings).
    logits: Vec<f32>,
}

fn decode(model: &Decoder, batch: usize, steps: usize, prefetch: bool) -> Run {
    let ids: Vec<Vec<u32>> = (0..batch)
        .map(|b| zipf_tokens(VOCAB as usize, steps + 1, 1.0, 100 + b as u64))
        .collect();
    let mut cache = model.new_cache();
    let mut prefill_rt = L3Runtime::new(model.l3.len(), prefetch);
    let first: Vec<Vec<u32>> = ids.iter().map(|r| vec![r[0]]).collect();
    model.forward(&first, &mut cache, &mut prefill_rt).unwrap();
    let mut rt = L3Runtime::new(model.l3.len(), prefetch);
    let mut logits = Vec::new();
    let started = Instant::now();
    for s in 1..=steps {
        let step: Vec<Vec<u32>> = ids.iter().map(|r| vec![r[s]]).collect();
        let out = model.forward(&step, &mut cache, &mut rt).unwrap();
        if s == 1 {
            logits = out.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let st = &rt.stats;
    let n = steps as f64;
    let positions = (batch * steps) as f64;
    Run {
        tokens_per_second: positions / secs,
        wait_ms: st.wait_seconds / n * 1e3,
        before_first_l3_ms: st.before_first_l3_seconds / n * 1e3,
        gather_ms: st.gather_seconds / n * 1e3,
        bytes_per_token: st.bytes_read as f64 / positions,
        device_bytes_per_token: st.device_bytes_read as f64 / positions,
        logits,
    }
}

fn main() {
    let args = parse_args();
    let packed = build_model(&args.dir, args.n_emb);
    let table_bytes: u64 = {
        let (_, stores) = l3kit::serve::open_packed(&packed).unwrap();
        stores.iter().map(|s| s.table_bytes()).sum()
    };
    println!(
        "model: d_model {D_MODEL}, 8 blocks, L3 after blocks 2 and 6, vocab {VOCAB}, {} rows \
         per layer, {:.2} GB of bf16 tables; {} decode steps per run, {} repetitions",
        args.n_emb,
        table_bytes as f64 / 1e9,
        args.steps,
        args.reps
    );
    let seq = sequential_bandwidth(&packed);
    let (gather_bw, gather_dev_bw) = gather_bandwidth(&packed);
    println!(
        "disk read bandwidth: sequential O_DIRECT {:.0} MB/s; table gather (O_DIRECT, 2048 \
         random tokens) {:.0} MB/s of rows, {:.0} MB/s from the device",
        seq / 1e6,
        gather_bw / 1e6,
        gather_dev_bw / 1e6
    );
    let settings = [
        Setting::Ram,
        Setting::MmapWarm,
        Setting::MmapCold,
        Setting::Disk,
    ];
    let models: Vec<(Setting, Decoder)> = settings
        .iter()
        .map(|&s| {
            let m = Decoder::open_tier(
                &packed,
                &SourceOptions::default(),
                &Device::Cpu,
                Some(s.tier()),
            )
            .unwrap();
            (s, m)
        })
        .collect();
    for batch in [1usize, 16] {
        // One untimed run per model first: thread pools started, staging buffers grown.
        for (_, model) in &models {
            decode(model, batch, 2, true);
        }
        let mut runs: Vec<Vec<Run>> = vec![Vec::new(); models.len() * 2];
        for rep in 0..args.reps {
            for (mi, (setting, model)) in models.iter().enumerate() {
                for (pi, prefetch) in [true, false].into_iter().enumerate() {
                    match setting {
                        Setting::MmapCold => drop_cache(&packed),
                        Setting::MmapWarm => warm_cache(&packed),
                        _ => {}
                    }
                    let r = decode(model, batch, args.steps, prefetch);
                    eprintln!(
                        "  batch {batch} rep {rep} {} prefetch {}: {:.1} tokens/s",
                        setting.name(),
                        if prefetch { "on" } else { "off" },
                        r.tokens_per_second
                    );
                    runs[mi * 2 + pi].push(r);
                }
            }
        }
        let reference = runs[0][0].logits.clone();
        let identical = runs.iter().flatten().all(|r| r.logits == reference);
        println!("\nbatch {batch} (medians over {} runs):", args.reps);
        println!(
            "  {:<10} {:>8} {:>11} {:>9} {:>10} {:>15} {:>11} {:>12} {:>9}",
            "tables",
            "prefetch",
            "tokens/s",
            "vs ram",
            "wait ms",
            "before-L3 ms",
            "gather ms",
            "KB/token",
            "dev KB/t"
        );
        let ram_on = median(
            &mut runs[0]
                .iter()
                .map(|r| r.tokens_per_second)
                .collect::<Vec<_>>(),
        );
        for (mi, (setting, _)) in models.iter().enumerate() {
            for (pi, prefetch) in ["on", "off"].into_iter().enumerate() {
                let rs = &runs[mi * 2 + pi];
                let m = |f: fn(&Run) -> f64| median(&mut rs.iter().map(f).collect::<Vec<_>>());
                let tps = m(|r| r.tokens_per_second);
                println!(
                    "  {:<10} {:>8} {:>11.2} {:>8.3}x {:>10.2} {:>15.2} {:>11.2} {:>12.1} {:>9.1}",
                    setting.name(),
                    prefetch,
                    tps,
                    tps / ram_on,
                    m(|r| r.wait_ms),
                    m(|r| r.before_first_l3_ms),
                    m(|r| r.gather_ms),
                    m(|r| r.bytes_per_token) / 1e3,
                    m(|r| r.device_bytes_per_token) / 1e3,
                );
            }
        }
        // Prefetch hides the reads when they finish within the blocks before the first L3
        // layer: the break-even bandwidth is the step's device bytes over that time.
        let disk_on = &runs[(models.len() - 1) * 2];
        let dev_bytes_per_step = median(
            &mut disk_on
                .iter()
                .map(|r| r.device_bytes_per_token * batch as f64)
                .collect::<Vec<_>>(),
        );
        let before = median(
            &mut disk_on
                .iter()
                .map(|r| r.before_first_l3_ms)
                .collect::<Vec<_>>(),
        );
        println!(
            "  disk, prefetch on: {:.2} MB per step from the device, {:.2} ms of blocks before \
             the first L3 layer: break-even read bandwidth {:.0} MB/s",
            dev_bytes_per_step / 1e6,
            before,
            dev_bytes_per_step / (before / 1e3) / 1e6
        );
        // The stall model of `l3kit traffic` against the measured wait: the two layers (after
        // blocks 2 and 6, equal allocations) each read half the step's bytes over the link the
        // gather measured, with the per-block time of ram / prefetch off.
        let ram_off = &runs[1];
        let block_s = median(
            &mut ram_off
                .iter()
                .map(|r| r.before_first_l3_ms / 3.0 / 1e3)
                .collect::<Vec<_>>(),
        );
        let half = (dev_bytes_per_step / 2.0) as u64;
        let predicted = l3kit::infer::traffic::predicted_stall_seconds(
            &[half, half],
            &[3, 7],
            gather_dev_bw,
            block_s,
        );
        let measured_wait = median(&mut disk_on.iter().map(|r| r.wait_ms).collect::<Vec<_>>());
        println!(
            "  stall model (l3kit traffic) at the measured {:.0} MB/s and {:.2} ms per block: \
             predicted {:.2} ms per step, measured wait {:.2} ms (disk, prefetch on)",
            gather_dev_bw / 1e6,
            block_s * 1e3,
            predicted * 1e3,
            measured_wait
        );
        println!(
            "  first-step logits bit-identical across every tier and prefetch setting: {identical}"
        );
    }
}
