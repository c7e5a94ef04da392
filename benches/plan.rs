//! Speed benchmark of the allocation planner (issue 5): `allocate --method optimal` at the
//! scale of a large vocabulary, on one core.
//!
//! ```text
//! cargo bench --bench plan                       # vocab 262144, n_emb 4194304, k_max 512
//! cargo bench --bench plan -- --runs 7 --tokens 60000000
//! cargo bench --bench plan -- --help
//! ```
//!
//! The profile is synthetic but real: Zipf-distributed ids (rank r mapped to a fixed random id)
//! are scanned by the reference LZW into a genuine codeword dictionary. What is timed is what
//! `allocate --method optimal` does after reading the profile: grouping codewords by last token
//! and sorting their counts, merging identical tokens, and solving, once without a cost budget
//! and at several E[d_t] budgets. Every scenario is repeated; medians are printed with min/max,
//! along with the optimality status and the gap to the LP bound. The solver is sequential, and
//! the benchmark pins rayon to one thread as well. See `docs/planner.md`.

use l3kit::allocate::plan::{CostBudget, Planner};
use l3kit::profile::lzw::{LzwDictionary, LzwVariant};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_distr::Zipf;
use std::time::Instant;

const HELP: &str = "\
usage: cargo bench --bench plan -- [options]

  --vocab N      vocabulary size (default 262144)
  --n-emb N      total rows (default 4194304, 16 per token)
  --k-max K      cap (default 512)
  --tokens N     Zipf ids scanned into the synthetic profile (default 40000000)
  --zipf S       Zipf exponent (default 1.1)
  --seq-len N    sequence length (default 1024)
  --runs N       repetitions per scenario (default 5)
  --seed N       (default 7)
";

struct Args {
    vocab: u32,
    n_emb: u64,
    k_max: u32,
    tokens: usize,
    zipf: f64,
    seq_len: usize,
    runs: usize,
    seed: u64,
}

fn die(msg: &str) -> ! {
    eprintln!("error: {msg}\n\n{HELP}");
    std::process::exit(2)
}

fn parse() -> Args {
    let mut a = Args {
        vocab: 262_144,
        n_emb: 4_194_304,
        k_max: 512,
        tokens: 40_000_000,
        zipf: 1.1,
        seq_len: 1024,
        runs: 5,
        seed: 7,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| -> String {
            it.next()
                .unwrap_or_else(|| die(&format!("{name} needs a value")))
        };
        fn num<T: std::str::FromStr>(s: String, name: &str) -> T {
            s.parse()
                .unwrap_or_else(|_| die(&format!("{name}: {s:?} is not a number")))
        }
        match arg.as_str() {
            "--vocab" => a.vocab = num(value("--vocab"), "--vocab"),
            "--n-emb" => a.n_emb = num(value("--n-emb"), "--n-emb"),
            "--k-max" => a.k_max = num(value("--k-max"), "--k-max"),
            "--tokens" => a.tokens = num(value("--tokens"), "--tokens"),
            "--zipf" => a.zipf = num(value("--zipf"), "--zipf"),
            "--seq-len" => a.seq_len = num(value("--seq-len"), "--seq-len"),
            "--runs" => a.runs = num(value("--runs"), "--runs"),
            "--seed" => a.seed = num(value("--seed"), "--seed"),
            "--bench" => {} // passed by `cargo bench`
            "-h" | "--help" => {
                print!("{HELP}");
                std::process::exit(0)
            }
            other => die(&format!("unknown argument {other:?}")),
        }
    }
    if a.runs == 0 || a.seq_len == 0 || a.vocab == 0 || a.tokens == 0 {
        die("--runs, --seq-len, --vocab and --tokens must be positive");
    }
    a
}

fn zipf_ids(n: usize, vocab: u32, s: f64, seed: u64) -> Vec<u32> {
    let mut perm: Vec<u32> = (0..vocab).collect();
    perm.shuffle(&mut StdRng::seed_from_u64(seed));
    let dist = Zipf::new(vocab as f64, s).unwrap_or_else(|e| die(&format!("zipf: {e}")));
    let mut rng = StdRng::seed_from_u64(seed ^ 0x9E37_79B9_7F4A_7C15);
    (0..n)
        .map(|_| {
            let rank = rng.sample(dist) as usize;
            perm[rank.clamp(1, vocab as usize) - 1]
        })
        .collect()
}

fn stats(mut xs: Vec<f64>) -> (f64, f64, f64) {
    xs.sort_by(f64::total_cmp);
    (xs[xs.len() / 2], xs[0], xs[xs.len() - 1])
}

fn main() {
    let a = parse();
    rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build_global()
        .ok();
    println!(
        "== synthetic profile: {} Zipf({}) ids over vocab {}, sequences of {}",
        a.tokens, a.zipf, a.vocab, a.seq_len
    );
    let t = Instant::now();
    let ids = zipf_ids(a.tokens, a.vocab, a.zipf, a.seed);
    let mut dict = LzwDictionary::new(a.vocab, LzwVariant::Reference).expect("vocab in range");
    let mut unigram = vec![0u64; a.vocab as usize];
    for seq in ids.chunks(a.seq_len) {
        dict.scan(seq).expect("ids in range");
        for &x in seq {
            unigram[x as usize] += 1;
        }
    }
    drop(ids);
    let seen = unigram.iter().filter(|&&u| u > 0).count();
    let positive = dict.counts().iter().filter(|&&c| c > 0).count();
    println!(
        "   {} codewords ({} with a positive count), {} tokens seen, built in {:.1} s",
        dict.len(),
        positive,
        seen,
        t.elapsed().as_secs_f64()
    );
    println!(
        "== optimal allocation: n_emb {} ({:.1} rows/token), k_max {}, one thread, {} runs each",
        a.n_emb,
        a.n_emb as f64 / a.vocab as f64,
        a.k_max,
        a.runs
    );

    // Build (grouping + sorting + merging) is part of every solve from a profile.
    let mut build = Vec::new();
    let mut planner = None;
    for _ in 0..a.runs {
        let t = Instant::now();
        let p = Planner::new(
            a.vocab as usize,
            dict.tokens(),
            dict.counts(),
            &unigram,
            a.k_max,
        )
        .unwrap_or_else(|e| die(&e.to_string()));
        build.push(t.elapsed().as_secs_f64());
        planner = Some(p);
    }
    let planner = planner.expect("at least one run");
    let (build_median, lo, hi) = stats(build);
    println!(
        "   build: median {build_median:.3} s (min {lo:.3}, max {hi:.3}); {} token groups",
        planner.groups()
    );
    let free = planner
        .solve(a.n_emb, None)
        .unwrap_or_else(|e| die(&e.to_string()));
    let e_free = free.summary.expected_rows.unwrap_or(1.0);
    let least = planner.min_cost(a.n_emb) as f64 / planner.total_tokens() as f64;
    let mut scenarios: Vec<(String, Option<CostBudget>)> = vec![("no budget".into(), None)];
    for m in [e_free / 2.0, e_free / 8.0, e_free / 32.0, least * 1.5] {
        if m >= least {
            scenarios.push((
                format!("E[d_t] <= {m:.3}"),
                Some(CostBudget::MeanRows { rows: m }),
            ));
        }
    }
    println!(
        "   {:<20} {:>9} {:>9} {:>9} {:>10} {:>9} {:>12} {:>10} {:>7}",
        "scenario",
        "median s",
        "min s",
        "max s",
        "+build s",
        "E[d_t]",
        "coverage",
        "LP gap",
        "status"
    );
    for (name, budget) in scenarios {
        let mut times = Vec::new();
        let mut last = None;
        for _ in 0..a.runs {
            let t = Instant::now();
            let opt = planner
                .solve(a.n_emb, budget)
                .unwrap_or_else(|e| die(&e.to_string()));
            times.push(t.elapsed().as_secs_f64());
            last = Some(opt);
        }
        let opt = last.expect("at least one run");
        let (m, lo, hi) = stats(times);
        let s = &opt.summary;
        let gap = s
            .gap_to_lp_bound
            .map(|g| format!("{:.2e}", g / s.total_mass.max(1) as f64))
            .unwrap_or_else(|| "-".into());
        println!(
            "   {:<20} {:>9.3} {:>9.3} {:>9.3} {:>10.3} {:>9.3} {:>12.6} {:>10} {:>7?}",
            name,
            m,
            lo,
            hi,
            m + build_median,
            s.expected_rows.unwrap_or(0.0),
            s.coverage,
            gap,
            s.optimality
        );
        println!(
            "   {:<20} multiplier {:.4e}, core groups {}, search nodes {}",
            "", s.multiplier, s.core_groups, s.search_nodes
        );
    }
    println!("   (LP gap: codeword mass between the allocation and the LP bound, as a share of the total)");
}
