//! Speed and memory benchmarks for `l3kit profile` (issue 2, "Speed and memory").
//!
//! A plain binary (`harness = false`) that parses its own arguments, repeats every measurement
//! and prints medians with min/max, so that one run gives every figure side by side:
//!
//! ```text
//! cargo bench --bench profile -- lzw    # (a)  LZW scan of Zipf ids, one core
//! cargo bench --bench profile -- cli    # (a') the same ids through `l3kit profile` (u32 file)
//! cargo bench --bench profile -- e2e    # (b)  text profiling vs tokenisation alone
//! cargo bench --bench profile -- all    # all three (the default)
//! cargo bench --bench profile -- --help
//! ```
//!
//! See `docs/benchmarks.md` for what each measures and the figures measured so far.

use l3kit::profile::lzw::{LzwDictionary, LzwVariant};
use l3kit::profile::{self, ProfileOptions};
use l3kit::util::progress::Ui;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_distr::Zipf;
use rayon::prelude::*;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// The reader's batch size in `profile` (`input::BATCH_BYTES`); the baseline batches the same.
const BATCH_BYTES: usize = 1 << 20;

const HELP: &str = "\
usage: cargo bench --bench profile -- [lzw|cli|e2e|all]... [options]

  lzw   (a)  time LzwDictionary::scan over Zipf-distributed ids generated in memory (one core)
  cli   (a') write the same ids to a .u32 file and time `l3kit profile --seq-len` on it
  e2e   (b)  time l3kit::profile::run on a text file vs tokenisation alone (same tokenizer,
             same rayon pool, same 1 MiB line batches, encode_fast(line, false)), alternated
  all   all of the above (default)
  mem   memory latency of this machine: a dependent random walk over 1 GiB (what bounds (a))

options:
  --reps N         repetitions of each measurement (default 5)
  --tokens N       Zipf ids to generate (default 100000000)
  --seq-len N      ids per sequence (default 1024)
  --vocab N        vocabulary size (default 50000)
  --zipf S         Zipf exponent (default 1.1)
  --seed N         RNG seed (default 42)
  --text-mb N      size of the e2e text file in MB, made by repeating --corpus (default 32)
  --corpus PATH    text to repeat (default fixtures/corpus/train.txt)
  --tokenizer PATH tokenizer.json (default fixtures/tokenizer/gpt2.json)
  --tmp DIR        scratch folder (default /tmp/l3kit-profile-bench)
  --keep           keep the scratch files
  --thp            rerun with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (transparent huge pages
                   for malloc; the l3kit child process of `cli` inherits it)
";

struct Args {
    modes: Vec<String>,
    reps: usize,
    tokens: usize,
    seq_len: usize,
    vocab: u32,
    zipf: f64,
    seed: u64,
    text_mb: usize,
    corpus: PathBuf,
    tokenizer: PathBuf,
    tmp: PathBuf,
    keep: bool,
    thp: bool,
}

fn parse_args() -> Args {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut a = Args {
        modes: Vec::new(),
        reps: 5,
        tokens: 100_000_000,
        seq_len: 1024,
        vocab: 50_000,
        zipf: 1.1,
        seed: 42,
        text_mb: 32,
        corpus: root.join("fixtures/corpus/train.txt"),
        tokenizer: root.join("fixtures/tokenizer/gpt2.json"),
        tmp: PathBuf::from("/tmp/l3kit-profile-bench"),
        keep: false,
        thp: false,
    };
    let mut it = std::env::args().skip(1);
    fn value<T: std::str::FromStr>(it: &mut impl Iterator<Item = String>, flag: &str) -> T {
        let v = it
            .next()
            .unwrap_or_else(|| die(&format!("{flag} needs a value")));
        v.parse()
            .unwrap_or_else(|_| die(&format!("{flag}: cannot parse {v:?}")))
    }
    while let Some(arg) = it.next() {
        match arg.as_str() {
            // `cargo bench` appends --bench to the arguments of every bench target.
            "--bench" => {}
            "-h" | "--help" => {
                print!("{HELP}");
                std::process::exit(0);
            }
            "--reps" => a.reps = value(&mut it, &arg),
            "--tokens" => a.tokens = value(&mut it, &arg),
            "--seq-len" => a.seq_len = value(&mut it, &arg),
            "--vocab" => a.vocab = value(&mut it, &arg),
            "--zipf" => a.zipf = value(&mut it, &arg),
            "--seed" => a.seed = value(&mut it, &arg),
            "--text-mb" => a.text_mb = value(&mut it, &arg),
            "--corpus" => a.corpus = value(&mut it, &arg),
            "--tokenizer" => a.tokenizer = value(&mut it, &arg),
            "--tmp" => a.tmp = value(&mut it, &arg),
            "--keep" => a.keep = true,
            "--thp" => a.thp = true,
            "lzw" | "cli" | "e2e" | "mem" | "all" => a.modes.push(arg),
            other => die(&format!("unknown argument {other:?} (try --help)")),
        }
    }
    if a.modes.is_empty() || a.modes.iter().any(|m| m == "all") {
        a.modes = vec!["lzw".into(), "cli".into(), "e2e".into()];
    }
    if a.reps == 0 || a.seq_len == 0 || a.vocab == 0 || a.tokens == 0 {
        die("--reps, --seq-len, --vocab and --tokens must be at least 1");
    }
    a
}

fn die(msg: &str) -> ! {
    eprintln!("bench profile: {msg}");
    std::process::exit(2);
}

// ---------------------------------------------------------------------------------------------
// Statistics and memory

/// Median, min and max of a sample.
struct Stats {
    median: f64,
    min: f64,
    max: f64,
}

fn stats(xs: &[f64]) -> Stats {
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Stats {
        median,
        min: v[0],
        max: v[n - 1],
    }
}

fn mtok(x: f64) -> String {
    format!("{:.2}M", x / 1e6)
}

fn mib(bytes: u64) -> String {
    format!("{:.0} MiB", bytes as f64 / (1u64 << 20) as f64)
}

/// Current resident memory (Linux `VmRSS`).
fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Reset the peak-RSS mark (`VmHWM`) to the current RSS, so that the next
/// `peak_rss_bytes()` is the peak of what runs in between. Linux only; false where the
/// kernel refuses, and then the peak is the process's peak so far.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// CPU time of this process so far (all threads, user + system), in seconds.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses): utime and stime are the 12th
    // and 13th, in clock ticks (100 per second on Linux).
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let f: Vec<u64> = after
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|x| x.parse().ok())
        .collect();
    f.iter().sum::<u64>() as f64 / 100.0
}

fn fmt_opt_mib(b: Option<u64>) -> String {
    b.map(mib).unwrap_or_else(|| "n/a".into())
}

// ---------------------------------------------------------------------------------------------
// Memory latency

/// Nanoseconds per access of a dependent random walk (each address comes from the previous
/// load) over one cycle through all cache lines of 1 GiB: the cost of one cache miss that
/// nothing overlaps, TLB miss included. The LZW scan pays about one of these per phrase.
fn bench_mem(a: &Args) {
    const BYTES: usize = 1 << 30;
    let lines = BYTES / 64;
    // Sattolo's shuffle: a random permutation that is a single cycle.
    let mut order: Vec<u32> = (0..lines as u32).collect();
    let mut rng = StdRng::seed_from_u64(a.seed);
    for i in (1..lines).rev() {
        let j = rng.random_range(0..i);
        order.swap(i, j);
    }
    let mut next = vec![0u64; BYTES / 8];
    for (i, &o) in order.iter().enumerate() {
        // Line i points at line order[i]; a cycle, since order is one.
        next[i * 8] = o as u64 * 8;
    }
    drop(order);
    let steps = 20_000_000usize;
    let mut results = Vec::new();
    for _ in 0..a.reps {
        let t = Instant::now();
        let mut p = 0usize;
        for _ in 0..steps {
            p = next[p] as usize;
        }
        std::hint::black_box(p);
        results.push(t.elapsed().as_secs_f64() * 1e9 / steps as f64);
    }
    let s = stats(&results);
    println!(
        "== memory: dependent random reads over 1 GiB: median {:.0} ns per access (min {:.0}, max {:.0}); GLIBC_TUNABLES={}",
        s.median,
        s.min,
        s.max,
        std::env::var("GLIBC_TUNABLES").unwrap_or_else(|_| "(unset)".into())
    );
}

// ---------------------------------------------------------------------------------------------
// (a) LZW scan of Zipf ids

/// `n` Zipf(s)-distributed ids over `vocab`, reproducible from `seed`. Rank r (1 = most
/// frequent) maps to a fixed random id, so frequent tokens are scattered over the vocabulary
/// as in a real BPE vocabulary. Generated in parallel, one seeded RNG per 1M-id chunk.
fn zipf_ids(n: usize, vocab: u32, s: f64, seed: u64) -> Vec<u32> {
    let mut perm: Vec<u32> = (0..vocab).collect();
    perm.shuffle(&mut StdRng::seed_from_u64(seed));
    let dist = Zipf::new(vocab as f64, s).unwrap_or_else(|e| die(&format!("zipf: {e}")));
    let mut ids = vec![0u32; n];
    const CHUNK: usize = 1 << 20;
    ids.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(i, chunk)| {
            let mut rng =
                StdRng::seed_from_u64(seed ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            for x in chunk {
                let rank = rng.sample(dist) as usize; // 1..=vocab
                *x = perm[rank.clamp(1, vocab as usize) - 1];
            }
        });
    ids
}

fn bench_lzw(a: &Args, ids: &[u32]) {
    println!(
        "== (a) LZW scan: {} Zipf({}) ids, vocab {}, sequences of {}, reference variant, one thread",
        ids.len(),
        a.zipf,
        a.vocab,
        a.seq_len
    );
    let base_rss = rss_bytes();
    println!(
        "   resident before the scan (the ids themselves, {}): {}",
        mib((ids.len() * 4) as u64),
        fmt_opt_mib(base_rss)
    );
    let mut rates = Vec::new();
    let mut peaks = Vec::new();
    let mut summary = None;
    for rep in 0..a.reps {
        let resettable = reset_peak_rss();
        let t = Instant::now();
        let mut dict = LzwDictionary::new(a.vocab, LzwVariant::Reference).expect("vocab in range");
        for seq in ids.chunks(a.seq_len) {
            dict.scan(seq).expect("ids are in range");
        }
        let secs = t.elapsed().as_secs_f64();
        let peak = l3kit::util::fs::peak_rss_bytes();
        let rate = ids.len() as f64 / secs;
        println!(
            "   rep {}: {:.3} s  {} tokens/s  peak RSS {}{}",
            rep + 1,
            secs,
            mtok(rate),
            fmt_opt_mib(peak),
            if resettable { "" } else { " (process peak)" }
        );
        rates.push(rate);
        if let Some(p) = peak {
            peaks.push(p);
        }
        summary = Some((dict.len(), dict.phrases(), dict.phrase_tokens()));
        drop(std::hint::black_box(dict));
    }
    let s = stats(&rates);
    let (codewords, phrases, phrase_tokens) = summary.expect("reps >= 1");
    println!(
        "   codewords {codewords}, phrases {phrases}, mean phrase length {:.2}",
        phrase_tokens as f64 / phrases.max(1) as f64
    );
    println!(
        "   RESULT lzw: median {} tokens/s (min {}, max {}) over {} reps; target >= 20M: {}",
        mtok(s.median),
        mtok(s.min),
        mtok(s.max),
        a.reps,
        if s.median >= 20e6 { "met" } else { "NOT met" }
    );
    if let (Some(&peak), Some(base)) = (peaks.iter().max(), base_rss) {
        println!(
            "   RESULT lzw: peak RSS {} (ids {} + dictionary and scan {})",
            mib(peak),
            mib(base),
            mib(peak.saturating_sub(base))
        );
    }
}

// ---------------------------------------------------------------------------------------------
// (a') the CLI on a .u32 file

fn bench_cli(a: &Args, ids: &[u32]) {
    std::fs::create_dir_all(&a.tmp).unwrap_or_else(|e| die(&format!("{}: {e}", a.tmp.display())));
    let file = a.tmp.join(format!("zipf-{}.u32", ids.len()));
    let out = a.tmp.join("p.safetensors");
    {
        let mut w = BufWriter::with_capacity(
            1 << 20,
            std::fs::File::create(&file).unwrap_or_else(|e| die(&format!("{e}"))),
        );
        for chunk in ids.chunks(1 << 16) {
            let bytes: Vec<u8> = chunk.iter().flat_map(|t| t.to_le_bytes()).collect();
            w.write_all(&bytes).expect("write ids");
        }
        w.flush().expect("write ids");
    }
    let exe = env!("CARGO_BIN_EXE_l3kit");
    let cmd = format!(
        "l3kit --quiet --json profile --vocab-size {} --seq-len {} {} --out {}",
        a.vocab,
        a.seq_len,
        file.display(),
        out.display()
    );
    println!(
        "== (a') CLI: {cmd}\n   ({} ids, {} MiB file; reader thread + scanner thread, unigram counts, writing the profile)",
        ids.len(),
        (ids.len() * 4) >> 20
    );
    let mut rates = Vec::new();
    let mut walls = Vec::new();
    let mut peaks = Vec::new();
    for rep in 0..a.reps {
        let t = Instant::now();
        let output = Command::new(exe)
            .args(["--quiet", "--json", "profile", "--vocab-size"])
            .arg(a.vocab.to_string())
            .arg("--seq-len")
            .arg(a.seq_len.to_string())
            .arg(&file)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap_or_else(|e| die(&format!("{exe}: {e}")));
        let wall = t.elapsed().as_secs_f64();
        if !output.status.success() {
            die(&format!(
                "l3kit profile failed: {}",
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        let json: serde_json::Value =
            serde_json::from_slice(&output.stdout).expect("--json prints JSON");
        let rate = json["tokens_per_second"].as_f64().unwrap_or(f64::NAN);
        let peak = json["peak_rss_bytes"].as_u64();
        println!(
            "   rep {}: {} tokens/s (profile::run)  wall {:.2} s incl. start-up and write  peak RSS {}  codewords {}",
            rep + 1,
            mtok(rate),
            wall,
            fmt_opt_mib(peak),
            json["codewords"]
        );
        rates.push(rate);
        walls.push(ids.len() as f64 / wall);
        if let Some(p) = peak {
            peaks.push(p);
        }
    }
    let s = stats(&rates);
    let w = stats(&walls);
    println!(
        "   RESULT cli: median {} tokens/s (min {}, max {}); by wall clock incl. writing the profile {} tokens/s",
        mtok(s.median),
        mtok(s.min),
        mtok(s.max),
        mtok(w.median)
    );
    if let Some(&p) = peaks.iter().max() {
        println!("   RESULT cli: peak RSS {}", mib(p));
    }
    if !a.keep {
        let _ = std::fs::remove_file(&file);
        let _ = std::fs::remove_file(&out);
    }
}

// ---------------------------------------------------------------------------------------------
// (b) end-to-end text profiling vs tokenisation alone

/// `target_bytes` (at least) of `corpus` repeated, in a scratch file.
fn make_text(a: &Args) -> PathBuf {
    std::fs::create_dir_all(&a.tmp).unwrap_or_else(|e| die(&format!("{}: {e}", a.tmp.display())));
    let mut text =
        std::fs::read(&a.corpus).unwrap_or_else(|e| die(&format!("{}: {e}", a.corpus.display())));
    if !text.ends_with(b"\n") {
        text.push(b'\n');
    }
    let path = a.tmp.join(format!("corpus-{}mb.txt", a.text_mb));
    let mut w =
        BufWriter::new(std::fs::File::create(&path).unwrap_or_else(|e| die(&format!("{e}"))));
    let mut written = 0;
    while written < a.text_mb * 1_000_000 {
        w.write_all(&text).expect("write corpus");
        written += text.len();
    }
    w.flush().expect("write corpus");
    path
}

/// The text file in the reader's batches: lines with their newline, about 1 MiB per batch.
fn read_batches(path: &Path) -> Vec<Vec<String>> {
    let mut reader = BufReader::with_capacity(1 << 20, std::fs::File::open(path).expect("open"));
    let mut batches = Vec::new();
    let mut texts = Vec::new();
    let mut bytes = 0;
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).expect("read") == 0 {
            break;
        }
        let s = String::from_utf8(line.clone()).expect("UTF-8");
        bytes += s.len();
        texts.push(s);
        if bytes >= BATCH_BYTES {
            batches.push(std::mem::take(&mut texts));
            bytes = 0;
        }
    }
    if !texts.is_empty() {
        batches.push(texts);
    }
    batches
}

/// Tokenise one batch exactly as `profile` does: rayon `par_iter` over the lines,
/// `encode_fast(line, false)`, ids flattened with sequence offsets.
fn tokenise_batch(tok: &tokenizers::Tokenizer, texts: &[String]) -> (Vec<u32>, Vec<usize>) {
    let encoded: Vec<Vec<u32>> = texts
        .par_iter()
        .map(|text| {
            tok.encode_fast(text.as_str(), false)
                .map(|e| e.get_ids().to_vec())
                .expect("tokenisation")
        })
        .collect();
    let mut offsets = Vec::with_capacity(encoded.len() + 1);
    offsets.push(0);
    let mut flat = Vec::with_capacity(encoded.iter().map(Vec::len).sum());
    for ids in encoded {
        flat.extend_from_slice(&ids);
        offsets.push(flat.len());
    }
    (flat, offsets)
}

fn bench_e2e(a: &Args) {
    let text = make_text(a);
    let text_bytes = std::fs::metadata(&text).expect("corpus").len();
    let (tok, _) = profile::load_tokenizer(&a.tokenizer)
        .unwrap_or_else(|e| die(&format!("{}: {e}", a.tokenizer.display())));
    let threads = rayon::current_num_threads();
    println!(
        "== (b) end-to-end: {} ({} MB, {} repeated), tokenizer {}, rayon threads {threads}",
        text.display(),
        text_bytes / 1_000_000,
        a.corpus.file_name().unwrap_or_default().to_string_lossy(),
        a.tokenizer.display()
    );
    println!("   tok-only: the file pre-read into 1 MiB batches of lines (untimed), then only the");
    println!(
        "   tokenisation timed; profile: l3kit::profile::run (read + tokenise + LZW + unigram)"
    );
    let mut opts = ProfileOptions::new(vec![text.clone()]);
    opts.stream.tokenizer = Some(a.tokenizer.clone());
    let mut tok_rates = Vec::new();
    let mut prof_rates = Vec::new();
    let mut ratios = Vec::new();
    let mut prof_peaks = Vec::new();
    let mut tok_peaks = Vec::new();
    let mut cpu_ratios = Vec::new();
    let mut tokens_seen = 0u64;
    for rep in 0..a.reps {
        let tok_only = || {
            let batches = read_batches(&text);
            reset_peak_rss();
            let cpu = cpu_seconds();
            let t = Instant::now();
            let mut tokens = 0usize;
            for batch in &batches {
                let (flat, offsets) = tokenise_batch(&tok, batch);
                tokens += flat.len();
                std::hint::black_box((flat, offsets));
            }
            let secs = t.elapsed().as_secs_f64();
            let cpu = cpu_seconds() - cpu;
            (tokens as u64, secs, l3kit::util::fs::peak_rss_bytes(), cpu)
        };
        let prof = || {
            reset_peak_rss();
            let cpu = cpu_seconds();
            let t = Instant::now();
            let (p, summary) = profile::run(&opts, &Ui::quiet()).expect("profile::run");
            let secs = t.elapsed().as_secs_f64();
            let cpu = cpu_seconds() - cpu;
            let peak = l3kit::util::fs::peak_rss_bytes();
            (p.meta.tokens, secs, peak, summary.codewords, cpu)
        };
        // Alternate which goes first, so drift (another process, caches) hits both alike.
        let ((tt, ts, tp, tc), (pt, ps, pp, codewords, pc)) = if rep % 2 == 0 {
            let x = tok_only();
            (x, prof())
        } else {
            let y = prof();
            (tok_only(), y)
        };
        assert_eq!(
            tt, pt,
            "the baseline tokenised a different number of tokens"
        );
        tokens_seen = tt;
        let (tr, pr) = (tt as f64 / ts, pt as f64 / ps);
        println!(
            "   rep {}: tok-only {:.3} s {} tok/s | profile {:.3} s {} tok/s | ratio {:.3} | CPU s {:.1} vs {:.1} | profile peak RSS {} | codewords {codewords}",
            rep + 1,
            ts,
            mtok(tr),
            ps,
            mtok(pr),
            pr / tr,
            tc,
            pc,
            fmt_opt_mib(pp)
        );
        cpu_ratios.push(tc / pc);
        tok_rates.push(tr);
        prof_rates.push(pr);
        ratios.push(pr / tr);
        prof_peaks.extend(pp);
        tok_peaks.extend(tp);
    }
    let (t, p, r) = (stats(&tok_rates), stats(&prof_rates), stats(&ratios));
    println!("   {tokens_seen} tokens per run");
    println!(
        "   RESULT e2e: tok-only median {} tok/s (min {}, max {}) = {:.1} MB/s",
        mtok(t.median),
        mtok(t.min),
        mtok(t.max),
        text_bytes as f64 / (tokens_seen as f64 / t.median) / 1e6
    );
    println!(
        "   RESULT e2e: profile  median {} tok/s (min {}, max {}) = {:.1} MB/s",
        mtok(p.median),
        mtok(p.min),
        mtok(p.max),
        text_bytes as f64 / (tokens_seen as f64 / p.median) / 1e6
    );
    println!(
        "   RESULT e2e: ratio profile/tok-only median {:.3} (min {:.3}, max {:.3}; ratio of medians {:.3}); target >= 0.85: {}",
        r.median,
        r.min,
        r.max,
        p.median / t.median,
        if r.median >= 0.85 { "met" } else { "NOT met" }
    );
    let c = stats(&cpu_ratios);
    println!(
        "   RESULT e2e: CPU time tok-only/profile median {:.3} (min {:.3}, max {:.3}): the ratio if both had the cores to themselves",
        c.median, c.min, c.max
    );
    if let (Some(pp), Some(tp)) = (prof_peaks.iter().max(), tok_peaks.iter().max()) {
        println!(
            "   RESULT e2e: in-process peak RSS, highest rep: profile::run {}; tok-only {} (incl. the pre-read text)",
            mib(*pp),
            mib(*tp)
        );
    }
    // The peak memory of profiling alone, in a fresh process: the in-process figures above
    // also hold what earlier repetitions left in the allocator.
    let out = a.tmp.join("p-text.safetensors");
    let exe = env!("CARGO_BIN_EXE_l3kit");
    let output = Command::new(exe)
        .args(["--quiet", "--json", "profile", "--tokenizer"])
        .arg(&a.tokenizer)
        .arg(&text)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap_or_else(|e| die(&format!("{exe}: {e}")));
    if output.status.success() {
        let json: serde_json::Value =
            serde_json::from_slice(&output.stdout).expect("--json prints JSON");
        println!(
            "   RESULT e2e: `l3kit profile --tokenizer {} {}` once, fresh process: {} tok/s, peak RSS {}",
            a.tokenizer.display(),
            text.display(),
            mtok(json["tokens_per_second"].as_f64().unwrap_or(f64::NAN)),
            fmt_opt_mib(json["peak_rss_bytes"].as_u64())
        );
    } else {
        println!(
            "   l3kit profile failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    if !a.keep {
        let _ = std::fs::remove_file(&text);
        let _ = std::fs::remove_file(&out);
    }
}

/// With --thp, run this benchmark again with glibc's malloc asking for transparent huge pages
/// (glibc reads its tunables at start-up only). Huge pages cut the TLB misses of the random
/// accesses into the LZW table; `l3kit profile` gets the same from the same variable.
fn rerun_with_thp() -> ! {
    let exe = std::env::current_exe().unwrap_or_else(|e| die(&format!("current_exe: {e}")));
    let status = Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1")
        .env("L3KIT_BENCH_THP", "1")
        .status()
        .unwrap_or_else(|e| die(&format!("rerun: {e}")));
    std::process::exit(status.code().unwrap_or(1));
}

fn main() {
    let a = parse_args();
    if a.thp && std::env::var_os("L3KIT_BENCH_THP").is_none() {
        rerun_with_thp();
    }
    println!(
        "l3kit profile benchmarks: modes {:?}, {} reps, {} cores (rayon threads {}), GLIBC_TUNABLES={}",
        a.modes,
        a.reps,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        rayon::current_num_threads(),
        std::env::var("GLIBC_TUNABLES").unwrap_or_else(|_| "(unset)".into())
    );
    let needs_ids = a.modes.iter().any(|m| m == "lzw" || m == "cli");
    let ids = if needs_ids {
        let t = Instant::now();
        let ids = zipf_ids(a.tokens, a.vocab, a.zipf, a.seed);
        println!(
            "generated {} Zipf ids in {:.1} s",
            ids.len(),
            t.elapsed().as_secs_f64()
        );
        ids
    } else {
        Vec::new()
    };
    let has = |m: &str| a.modes.iter().any(|x| x == m);
    if has("mem") {
        bench_mem(&a);
    }
    if has("lzw") {
        bench_lzw(&a, &ids);
    }
    if has("cli") {
        bench_cli(&a, &ids);
    }
    // Free the ids first, so that they do not count in the e2e peak memory.
    drop(ids);
    if has("e2e") {
        bench_e2e(&a);
    }
}
