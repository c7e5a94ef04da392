//! The allocation planner (issue 5): optimality against good_lp's MILP, equality with the LZW
//! walk's coverage without a cost budget, valid allocations from every method, infeasible
//! budgets, `evaluate` and `plan` through the binary, and the plot files.
//!
//! Instances are small (a handful of tokens and codewords) so the MILP oracle is quick; the
//! one test on the bundled corpus profiles the 0.4 MB held-out text once.

use l3kit::allocate::plan::plot::{self, FrontierPanel, RankSeries, Series};
use l3kit::allocate::plan::{milp, CostBudget, Optimality, Planner};
use l3kit::allocate::{self, lzw_walk, AllocateOptions, FillPolicy, Method};
use l3kit::profile::lzw::{LzwDictionary, LzwVariant};
use l3kit::profile::{
    InputFormat, InputRecord, Profile, ProfileMeta, ProfileOptions, RecordedOptions,
};
use l3kit::util::progress::Ui;
use proptest::prelude::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn l3kit<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    Command::new(env!("CARGO_BIN_EXE_l3kit"))
        .arg("--quiet")
        .args(args)
        .output()
        .expect("the l3kit binary runs")
}

#[track_caller]
fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[track_caller]
fn fails_with(out: &Output, code: i32, needles: &[&str]) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "stderr: {err}");
    for n in needles {
        assert!(err.contains(n), "{n:?} not in {err:?}");
    }
    err
}

/// A profile from token sequences, scanned by the reference LZW.
fn profile_of(vocab: u32, seqs: &[Vec<u32>]) -> Profile {
    let mut dict = LzwDictionary::new(vocab, LzwVariant::Reference).unwrap();
    let mut unigram = vec![0u64; vocab as usize];
    let mut tokens = 0;
    for s in seqs {
        dict.scan(s).unwrap();
        for &t in s {
            unigram[t as usize] += 1;
        }
        tokens += s.len() as u64;
    }
    Profile {
        meta: ProfileMeta {
            vocab_size: vocab,
            tokenizer_sha256: None,
            inputs: vec![InputRecord {
                path: "synthetic".into(),
                format: InputFormat::U32,
                bytes: 0,
            }],
            options: RecordedOptions {
                field: None,
                add_special_tokens: false,
                split: None,
                max_tokens: None,
                lzw_variant: LzwVariant::Reference,
            },
            sequences: seqs.len() as u64,
            tokens,
            phrases: dict.phrases(),
            phrase_tokens: dict.phrase_tokens(),
        },
        unigram,
        codewords: dict.into_codewords(),
        content_sha256: "synthetic".into(),
    }
}

/// A small instance given directly as codeword columns.
#[derive(Clone, Debug)]
struct Instance {
    vocab: usize,
    k_max: u32,
    last: Vec<u32>,
    counts: Vec<u64>,
    unigram: Vec<u64>,
}

fn instance() -> impl Strategy<Value = Instance> {
    (1usize..6, 1u32..6).prop_flat_map(|(vocab, k_max)| {
        (
            Just(vocab),
            Just(k_max),
            prop::collection::vec((0..vocab as u32, 0u64..12), 0..16),
            prop::collection::vec(0u64..40, vocab),
        )
            .prop_map(|(vocab, k_max, cw, unigram)| Instance {
                vocab,
                k_max,
                last: cw.iter().map(|x| x.0).collect(),
                counts: cw.iter().map(|x| x.1).collect(),
                unigram,
            })
    })
}

fn planner(i: &Instance) -> Planner {
    Planner::new(i.vocab, &i.last, &i.counts, &i.unigram, i.k_max).unwrap()
}

fn cost(rows: &[u32], unigram: &[u64]) -> u128 {
    rows.iter()
        .zip(unigram)
        .map(|(&r, &u)| r as u128 * u as u128)
        .sum()
}

#[track_caller]
fn assert_valid(rows: &[u32], n_emb: u64, k_max: u32) {
    assert_eq!(rows.iter().map(|&r| r as u64).sum::<u64>(), n_emb);
    assert!(rows.iter().all(|&r| r >= 1 && r <= k_max), "{rows:?}");
}

/// Exhaustive optimum of a tiny instance (every rows vector), for a second opinion.
fn brute_force(i: &Instance, n_emb: u64, cap: Option<u128>, p: &Planner) -> Option<u128> {
    let mut best = None;
    let mut rows = vec![1u32; i.vocab];
    loop {
        let sum: u64 = rows.iter().map(|&r| r as u64).sum();
        if sum == n_emb && cap.is_none_or(|c| cost(&rows, &i.unigram) <= c) {
            let v = p.coverage(&rows).covered;
            best = Some(best.map_or(v, |b: u128| b.max(v)));
        }
        // Next rows vector in [1, k_max]^vocab.
        let mut k = 0;
        loop {
            if k == i.vocab {
                return best;
            }
            if rows[k] < i.k_max {
                rows[k] += 1;
                break;
            }
            rows[k] = 1;
            k += 1;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Optimality
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// The solver's coverage equals good_lp's MILP optimum (and a brute force), its cost fits
    /// the budget, and its LP bound equals the LP relaxation's value.
    #[test]
    fn optimal_matches_milp(i in instance(), n_frac in 0.0f64..1.0, c_frac in -0.1f64..1.2) {
        let p = planner(&i);
        let v = i.vocab as u64;
        let n_emb = v + ((v * (i.k_max as u64 - 1)) as f64 * n_frac).round() as u64;
        let least = p.min_cost(n_emb);
        let free = p.solve(n_emb, None).unwrap();
        let most = cost(&free.rows, &i.unigram);
        let cap = (least as f64 + (most as f64 - least as f64) * c_frac).round().max(least as f64) as u128;
        for cap in [None, Some(cap)] {
            let opt = p.solve_cap(n_emb, cap, None, 1_000_000).unwrap();
            assert_valid(&opt.rows, n_emb, i.k_max);
            if let Some(c) = cap {
                prop_assert!(cost(&opt.rows, &i.unigram) <= c);
            }
            prop_assert_eq!(opt.summary.optimality, Optimality::Proven);
            let ctx = p.contexts();
            let milp = milp::solve_coverage(ctx, &i.unigram, n_emb, i.k_max, cap, true).unwrap();
            let covered = opt.summary.covered_mass as f64;
            prop_assert!((covered - milp).abs() < 1e-6, "solver {covered} vs MILP {milp} (cap {cap:?})");
            if i.vocab <= 4 && i.k_max <= 5 {
                let bf = brute_force(&i, n_emb, cap, &p).unwrap();
                prop_assert_eq!(opt.summary.covered_mass as u128, bf);
            }
            let lp = milp::solve_coverage(ctx, &i.unigram, n_emb, i.k_max, cap, false).unwrap();
            let bound = opt.summary.lp_bound_coverage.unwrap() * opt.summary.total_mass as f64;
            prop_assert!((bound - lp).abs() < 1e-6 * lp.max(1.0), "bound {bound} vs LP {lp}");
        }
    }

    /// Without a cost budget the optimum's coverage is exactly the LZW walk's (any fill).
    #[test]
    fn unconstrained_optimum_equals_lzw(i in instance(), n_frac in 0.0f64..1.0) {
        let p = planner(&i);
        let v = i.vocab as u64;
        let n_emb = v + ((v * (i.k_max as u64 - 1)) as f64 * n_frac).round() as u64;
        let walk = lzw_walk(i.vocab, &i.last, &i.counts, n_emb, i.k_max);
        let mut rows = walk.rows;
        allocate::round_robin(&mut rows, walk.remaining, i.k_max);
        let opt = p.solve(n_emb, None).unwrap();
        prop_assert_eq!(p.coverage(&rows).covered, opt.summary.covered_mass as u128);
    }

    /// Every method gives a valid allocation (total, floor 1, cap k_max) for any profile and
    /// budget; the optimal one also fits any feasible cost budget.
    #[test]
    fn every_method_is_valid(
        vocab in 1u32..12,
        seqs in prop::collection::vec(prop::collection::vec(0u32..12, 0..30), 1..8),
        k_max in 1u32..8,
        n_frac in 0.0f64..1.0,
        m_frac in 0.0f64..1.0,
    ) {
        let seqs: Vec<Vec<u32>> = seqs.into_iter().map(|s| s.into_iter().map(|t| t % vocab).collect()).collect();
        let profile = profile_of(vocab, &seqs);
        let v = vocab as u64;
        let n_emb = v + ((v * (k_max as u64 - 1)) as f64 * n_frac).round() as u64;
        for method in [Method::Lzw, Method::Uniform, Method::Frequency, Method::Optimal] {
            let a = allocate::allocate(&profile, &AllocateOptions {
                n_emb, k_max, method, fill: Some(FillPolicy::Frequency),
            }).unwrap();
            assert_valid(&a.rows_vec(), n_emb, k_max);
        }
        let p = Planner::from_profile(&profile, k_max).unwrap();
        let total = p.total_tokens();
        if total > 0 {
            let least = p.min_cost(n_emb) as f64 / total as f64;
            let m = least + m_frac * k_max as f64;
            let opt = p.solve(n_emb, Some(CostBudget::MeanRows { rows: m })).unwrap();
            assert_valid(&opt.rows, n_emb, k_max);
            prop_assert!(opt.summary.expected_rows.unwrap() <= m * (1.0 + 1e-9));
            let alloc = opt.to_allocation(&profile).unwrap();
            prop_assert_eq!(alloc.meta.method.as_str(), "optimal");
        }
    }
}

/// Large counts and weights (exact 128-bit arithmetic, multipliers with big denominators):
/// a fixed random sample against the MILP, its LP relaxation and the budget.
#[test]
fn optimal_matches_milp_with_large_numbers() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    for it in 0..400 {
        let vocab = rng.random_range(1..9usize);
        let k_max = rng.random_range(1..9u32);
        let n_cw = rng.random_range(0..30usize);
        let (c_max, w_max) = if it % 2 == 0 {
            (100_000u64, 10_000_000u64)
        } else {
            (15, 50)
        };
        let last: Vec<u32> = (0..n_cw)
            .map(|_| rng.random_range(0..vocab as u32))
            .collect();
        let counts: Vec<u64> = (0..n_cw).map(|_| rng.random_range(0..c_max)).collect();
        let unigram: Vec<u64> = (0..vocab)
            .map(|_| {
                if rng.random_bool(0.2) {
                    0
                } else {
                    rng.random_range(0..w_max)
                }
            })
            .collect();
        let p = Planner::new(vocab, &last, &counts, &unigram, k_max).unwrap();
        let v = vocab as u64;
        let n_emb = v + rng.random_range(0..=v * (k_max as u64 - 1));
        let least = p.min_cost(n_emb);
        let most = cost(&p.solve(n_emb, None).unwrap().rows, &unigram);
        let cap = least + ((most - least.min(most)) as f64 * rng.random_range(0.0..1.1)) as u128;
        let opt = p.solve_cap(n_emb, Some(cap), None, 1_000_000).unwrap();
        assert_valid(&opt.rows, n_emb, k_max);
        assert!(cost(&opt.rows, &unigram) <= cap);
        assert_eq!(opt.summary.optimality, Optimality::Proven);
        let ctx = p.contexts();
        let milp = milp::solve_coverage(ctx, &unigram, n_emb, k_max, Some(cap), true).unwrap();
        let covered = opt.summary.covered_mass as f64;
        assert!(
            (covered - milp).abs() <= 1e-6 * milp.max(1.0),
            "instance {it}: solver {covered}, MILP {milp}"
        );
        let lp = milp::solve_coverage(ctx, &unigram, n_emb, k_max, Some(cap), false).unwrap();
        let bound = opt.summary.lp_bound_coverage.unwrap() * opt.summary.total_mass as f64;
        assert!(
            (bound - lp).abs() <= 1e-6 * lp.max(1.0),
            "instance {it}: bound {bound}, LP {lp}"
        );
    }
}

#[test]
fn ties_prefer_cheap_tokens_and_budgets_bind() {
    // Token 0 is frequent (cost 10/row) with contexts 5, 5; token 1 rare (cost 1) with 4, 1.
    let i = Instance {
        vocab: 2,
        k_max: 3,
        last: vec![0, 0, 1, 1],
        counts: vec![5, 5, 4, 1],
        unigram: vec![10, 1],
    };
    let p = planner(&i);
    // Two extra rows, no budget: both to token 0 (coverage 10).
    let free = p.solve(4, None).unwrap();
    assert_eq!(free.rows, vec![3, 1]);
    assert_eq!(free.summary.covered_mass, 10);
    // E[d] <= 2 means sum u d <= 22: one extra row to 0 (cost 10) and one to 1 (cost 1).
    let b = p
        .solve(4, Some(CostBudget::MeanRows { rows: 2.0 }))
        .unwrap();
    assert_eq!(b.rows, vec![2, 2]);
    assert_eq!(b.summary.covered_mass, 9);
    // Budget 13/11 (the least feasible): only token 1 can take rows.
    let c = p
        .solve(4, Some(CostBudget::MeanRows { rows: 13.0 / 11.0 }))
        .unwrap();
    assert_eq!(c.rows, vec![1, 3]);
    assert_eq!(c.summary.covered_mass, 5);
    assert_eq!(c.summary.optimality, Optimality::Proven);
}

/// The worked example of `docs/planner.md`.
#[test]
fn docs_worked_example() {
    let i = Instance {
        vocab: 3,
        k_max: 4,
        last: vec![0, 0, 0, 1, 1, 2],
        counts: vec![6, 4, 2, 5, 1, 3],
        unigram: vec![50, 30, 20],
    };
    let p = planner(&i);
    let lzw = lzw_walk(3, &i.last, &i.counts, 6, 4);
    assert_eq!(lzw.rows, vec![3, 2, 1]);
    assert_eq!(p.coverage(&lzw.rows).covered, 15);
    assert_eq!(p.coverage(&lzw.rows).total, 21);
    assert_eq!(p.expected_rows(&lzw.rows), Some(2.3));
    let free = p.solve(6, None).unwrap();
    assert_eq!(
        (free.rows.clone(), free.summary.covered_mass),
        (vec![3, 2, 1], 15)
    );
    let two = p
        .solve(6, Some(CostBudget::MeanRows { rows: 2.0 }))
        .unwrap();
    assert_eq!(
        (two.rows.clone(), two.summary.covered_mass),
        (vec![2, 2, 2], 14)
    );
    let tight = p
        .solve(6, Some(CostBudget::MeanRows { rows: 1.9 }))
        .unwrap();
    assert_eq!(tight.summary.covered_mass, 9);
    assert_eq!(tight.summary.optimality, Optimality::Proven);
    // The LP bound at 1.9 is fractional: 12 (see the docs).
    let lp = tight.summary.lp_bound_coverage.unwrap() * 21.0;
    assert!((lp - 12.0).abs() < 1e-9, "{lp}");
    let e = p
        .solve(6, Some(CostBudget::MeanRows { rows: 1.5 }))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("--mean-rows 1.6000"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Infeasible budgets
// ---------------------------------------------------------------------------------------------

fn smallest_named(msg: &str, flag: &str) -> f64 {
    let at = msg
        .rfind(flag)
        .unwrap_or_else(|| panic!("{flag} not named in {msg:?}"));
    msg[at + flag.len()..]
        .trim()
        .trim_end_matches('.')
        .parse()
        .unwrap_or_else(|_| panic!("no number after {flag} in {msg:?}"))
}

#[test]
fn infeasible_budgets_name_the_smallest_feasible_value() {
    let seqs: Vec<Vec<u32>> = (0..40u32)
        .map(|s| (0..20).map(|j| (s * 7 + j * j) % 9).collect())
        .collect();
    let profile = profile_of(12, &seqs); // tokens 9..11 unseen: their rows cost nothing
    let p = Planner::from_profile(&profile, 8).unwrap();
    let n_emb = 12 * 5;
    // Below the all-ones cost.
    let e = p
        .solve(n_emb, Some(CostBudget::MeanRows { rows: 0.9 }))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("below the cost of one row per token"), "{e}");
    let m_min = smallest_named(&e, "--mean-rows");
    assert!(m_min > 1.0, "{e}");
    // Just below the smallest feasible value: the same value is named; it works.
    let e2 = p
        .solve(n_emb, Some(CostBudget::MeanRows { rows: m_min - 0.01 }))
        .err()
        .unwrap()
        .to_string();
    assert!(e2.contains("too low to place n_emb"), "{e2}");
    assert_eq!(smallest_named(&e2, "--mean-rows"), m_min);
    let opt = p
        .solve(n_emb, Some(CostBudget::MeanRows { rows: m_min }))
        .unwrap();
    assert_valid(&opt.rows, n_emb, 8);
    // Bytes per token: rows of 100 bytes.
    let e3 = p
        .solve(
            n_emb,
            Some(CostBudget::BytesPerToken {
                bytes: 90.0,
                row_bytes: 100,
            }),
        )
        .err()
        .unwrap()
        .to_string();
    let b_min = smallest_named(&e3, "--max-bytes-per-token");
    assert!(p
        .solve(
            n_emb,
            Some(CostBudget::BytesPerToken {
                bytes: b_min,
                row_bytes: 100
            })
        )
        .is_ok());
    assert!(p
        .solve(
            n_emb,
            Some(CostBudget::BytesPerToken {
                bytes: b_min - 1.0,
                row_bytes: 100
            })
        )
        .is_err());
    // Impossible memory budgets are refused as before.
    assert!(p.solve(11, None).is_err());
    assert!(p.solve(12 * 8 + 1, None).is_err());
}

// ---------------------------------------------------------------------------------------------
// The bundled corpus
// ---------------------------------------------------------------------------------------------

/// The bundled held-out text, profiled once (about a second).
fn bundled() -> &'static (Profile, tempfile::TempDir, PathBuf) {
    static P: OnceLock<(Profile, tempfile::TempDir, PathBuf)> = OnceLock::new();
    P.get_or_init(|| {
        let mut opts =
            ProfileOptions::new(vec![manifest_dir().join("fixtures/corpus/heldout.txt")]);
        opts.stream.tokenizer = Some(manifest_dir().join("fixtures/tokenizer/gpt2.json"));
        let (profile, _) = l3kit::profile::run(&opts, &Ui::quiet()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("heldout.safetensors");
        profile.write(&path).unwrap();
        (profile, dir, path)
    })
}

#[test]
fn bundled_corpus_optimum_equals_lzw_and_budgets_trade_coverage() {
    let (profile, _, _) = bundled();
    let vocab = profile.meta.vocab_size as u64;
    let p = Planner::from_profile(profile, 512).unwrap();
    let mut last_cov = 1.0;
    for ratio in [1.5f64, 2.0, 3.9] {
        let n_emb = (ratio * vocab as f64).round() as u64;
        let lzw = allocate::allocate(
            profile,
            &AllocateOptions {
                n_emb,
                k_max: 512,
                method: Method::Lzw,
                fill: Some(FillPolicy::Frequency),
            },
        )
        .unwrap();
        let lzw_rows = lzw.rows_vec();
        let free = p.solve(n_emb, None).unwrap();
        assert_eq!(
            p.coverage(&lzw_rows).covered,
            free.summary.covered_mass as u128
        );
        assert_eq!(free.summary.optimality, Optimality::Proven);
        // Ties go to cheap tokens, so the optimum never costs more than LZW.
        let e_lzw = p.expected_rows(&lzw_rows).unwrap();
        assert!(free.summary.expected_rows.unwrap() <= e_lzw + 1e-9);
        // A tenth of LZW's E[d_t]: valid, within budget, proven optimal, less coverage.
        let m = e_lzw / 10.0;
        let b = p
            .solve(n_emb, Some(CostBudget::MeanRows { rows: m }))
            .unwrap();
        assert_valid(&b.rows, n_emb, 512);
        assert!(b.summary.expected_rows.unwrap() <= m * (1.0 + 1e-12));
        assert!(b.summary.coverage <= free.summary.coverage);
        assert_eq!(b.summary.optimality, Optimality::Proven, "{:?}", b.summary);
        last_cov = b.summary.coverage.min(last_cov);
    }
    assert!(last_cov > 0.0);
}

// ---------------------------------------------------------------------------------------------
// The binary: allocate --method optimal, evaluate, plan
// ---------------------------------------------------------------------------------------------

#[test]
fn cli_allocate_optimal_evaluate_and_plan() {
    let (_, _, heldout) = bundled();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let alloc = d.join("opt.safetensors");
    let json = ok(&l3kit([
        "--json".as_ref(),
        "allocate".as_ref(),
        "--profile".as_ref(),
        heldout.as_os_str(),
        "--method".as_ref(),
        "optimal".as_ref(),
        "--rows-per-token".as_ref(),
        "3.9".as_ref(),
        "--mean-rows".as_ref(),
        "8".as_ref(),
        "--out".as_ref(),
        alloc.as_os_str(),
    ]));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["method"], "optimal");
    assert!(v["expected_rows_per_token"].as_f64().unwrap() <= 8.0);
    assert_eq!(v["planner"]["optimality"], "proven");
    assert!(v["planner"]["coverage"].as_f64().unwrap() > 0.0);
    let a = l3kit::Allocation::read(&alloc).unwrap();
    assert_eq!(a.meta.method, "optimal");

    // Bytes per token: needs the layer shape.
    let out = l3kit([
        "allocate".as_ref(),
        "--profile".as_ref(),
        heldout.as_os_str(),
        "--method".as_ref(),
        "optimal".as_ref(),
        "--rows-per-token".as_ref(),
        "2".as_ref(),
        "--max-bytes-per-token".as_ref(),
        "64KB".as_ref(),
        "--out".as_ref(),
        d.join("b.safetensors").as_os_str(),
    ]);
    fails_with(&out, 2, &["--d-in"]);
    ok(&l3kit([
        "allocate".as_ref(),
        "--profile".as_ref(),
        heldout.as_os_str(),
        "--method".as_ref(),
        "optimal".as_ref(),
        "--rows-per-token".as_ref(),
        "2".as_ref(),
        "--max-bytes-per-token".as_ref(),
        "64KB".as_ref(),
        "--d-in".as_ref(),
        "2048".as_ref(),
        "--out".as_ref(),
        d.join("b.safetensors").as_os_str(),
    ]));
    // An infeasible budget: exit 2, the smallest feasible value named, no output left.
    let bad = d.join("bad.safetensors");
    let out = l3kit([
        "allocate".as_ref(),
        "--profile".as_ref(),
        heldout.as_os_str(),
        "--method".as_ref(),
        "optimal".as_ref(),
        "--rows-per-token".as_ref(),
        "3.9".as_ref(),
        "--mean-rows".as_ref(),
        "0.5".as_ref(),
        "--out".as_ref(),
        bad.as_os_str(),
    ]);
    fails_with(
        &out,
        2,
        &[
            "--mean-rows 0.5",
            "smallest feasible budget",
            "--mean-rows 1.",
        ],
    );
    assert!(!bad.exists());
    // A budget with another method is a usage error.
    let out = l3kit([
        "allocate".as_ref(),
        "--profile".as_ref(),
        heldout.as_os_str(),
        "--rows-per-token".as_ref(),
        "2".as_ref(),
        "--mean-rows".as_ref(),
        "3".as_ref(),
        "--out".as_ref(),
        bad.as_os_str(),
    ]);
    fails_with(&out, 2, &["--method optimal"]);

    // evaluate: the allocation on the (same) profile, side by side with itself.
    let json = ok(&l3kit([
        "--json".as_ref(),
        "evaluate".as_ref(),
        "--allocation".as_ref(),
        alloc.as_os_str(),
        "--profile".as_ref(),
        heldout.as_os_str(),
        "--train-profile".as_ref(),
        heldout.as_os_str(),
        "--d-in".as_ref(),
        "1024".as_ref(),
    ]));
    let e: serde_json::Value = serde_json::from_str(&json).unwrap();
    let cov = e["heldout"]["coverage"].as_f64().unwrap();
    assert!((cov - v["planner"]["coverage"].as_f64().unwrap()).abs() < 1e-9);
    assert_eq!(e["heldout"]["coverage"], e["train"]["coverage"]);
    assert!(e["heldout"]["expected_bytes_per_token"].as_f64().unwrap() > 0.0);
    assert_eq!(e["starved"].as_array().unwrap().len(), 10);
    let human = ok(&l3kit([
        "evaluate".as_ref(),
        "--allocation".as_ref(),
        alloc.as_os_str(),
        "--profile".as_ref(),
        heldout.as_os_str(),
    ]));
    assert!(human.contains("context coverage") && human.contains("starved tokens"));

    // plan: every file, deterministic.
    let plan_dir = d.join("plan");
    let json = ok(&l3kit([
        "--json".as_ref(),
        "plan".as_ref(),
        "--profile".as_ref(),
        heldout.as_os_str(),
        "--heldout".as_ref(),
        heldout.as_os_str(),
        "--rows-per-token".as_ref(),
        "2,3.9".as_ref(),
        "--budgets".as_ref(),
        "4".as_ref(),
        "--out".as_ref(),
        plan_dir.as_os_str(),
    ]));
    let r: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(r["paper_default"]["method"], "lzw");
    let names = [
        "plan.csv",
        "plan.json",
        "frontier.svg",
        "frontier.png",
        "rows.svg",
        "rows.png",
    ];
    let first: Vec<Vec<u8>> = names
        .iter()
        .map(|n| std::fs::read(plan_dir.join(n)).unwrap())
        .collect();
    check_svg(&first[2]);
    check_png(&first[3]);
    check_svg(&first[4]);
    check_png(&first[5]);
    let csv = String::from_utf8(first[0].clone()).unwrap();
    assert!(csv.starts_with("method,rows_per_token,n_emb"));
    assert!(csv.lines().count() > 8);
    ok(&l3kit([
        "plan".as_ref(),
        "--profile".as_ref(),
        heldout.as_os_str(),
        "--heldout".as_ref(),
        heldout.as_os_str(),
        "--rows-per-token".as_ref(),
        "2,3.9".as_ref(),
        "--budgets".as_ref(),
        "4".as_ref(),
        "--out".as_ref(),
        plan_dir.as_os_str(),
    ]));
    for (n, before) in names.iter().zip(&first) {
        assert_eq!(
            &std::fs::read(plan_dir.join(n)).unwrap(),
            before,
            "{n} differs between runs"
        );
    }
}

#[test]
fn evaluate_refuses_a_different_vocabulary() {
    let (_, _, heldout) = bundled();
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small.safetensors");
    let ids = dir.path().join("small.u32");
    let bytes: Vec<u8> = [1u32, 2, 3, 1, 2, 3, 4, 5, 1, 2, 3, 6]
        .iter()
        .flat_map(|t| t.to_le_bytes())
        .collect();
    std::fs::write(&ids, bytes).unwrap();
    ok(&l3kit([
        "profile".as_ref(),
        "--vocab-size".as_ref(),
        "7".as_ref(),
        "--seq-len".as_ref(),
        "6".as_ref(),
        ids.as_os_str(),
        "--out".as_ref(),
        small.as_os_str(),
    ]));
    let alloc = dir.path().join("a.safetensors");
    ok(&l3kit([
        "allocate".as_ref(),
        "--profile".as_ref(),
        small.as_os_str(),
        "--n-emb".as_ref(),
        "10".as_ref(),
        "--fill".as_ref(),
        "frequency".as_ref(),
        "--out".as_ref(),
        alloc.as_os_str(),
    ]));
    let out = l3kit([
        "evaluate".as_ref(),
        "--allocation".as_ref(),
        alloc.as_os_str(),
        "--profile".as_ref(),
        heldout.as_os_str(),
    ]);
    fails_with(
        &out,
        2,
        &[
            "a.safetensors",
            "heldout.safetensors",
            "vocabulary of 7",
            "50257",
        ],
    );
    // Training and held-out profiles of different vocabularies in plan, too.
    let out = l3kit([
        "plan".as_ref(),
        "--profile".as_ref(),
        small.as_os_str(),
        "--heldout".as_ref(),
        heldout.as_os_str(),
        "--out".as_ref(),
        dir.path().join("p").as_os_str(),
    ]);
    fails_with(&out, 2, &["heldout.safetensors", "small.safetensors"]);
}

// ---------------------------------------------------------------------------------------------
// Plots
// ---------------------------------------------------------------------------------------------

#[track_caller]
fn check_svg(bytes: &[u8]) {
    let text = std::str::from_utf8(bytes).unwrap();
    assert!(text.contains("<svg") && text.trim_end().ends_with("</svg>"));
    assert!(text.contains("<text"), "labels are drawn");
}

#[track_caller]
fn check_png(bytes: &[u8]) {
    assert!(bytes.len() > 1000);
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
}

#[test]
fn plot_files_are_written() {
    let dir = tempfile::tempdir().unwrap();
    let panel = FrontierPanel {
        title: "test".into(),
        x_label: "E[d_t]".into(),
        y_label: "coverage".into(),
        curves: vec![Series {
            label: "a".into(),
            points: vec![(1.0, 0.1), (2.0, 0.3), (10.0, 0.5)],
            color: 0,
        }],
        lzw: vec![((12.0, 0.5), 0)],
        paper: Some((12.0, 0.5)),
        paper_label: "paper".into(),
    };
    let (svg, png) = (dir.path().join("f.svg"), dir.path().join("f.png"));
    plot::frontier(&[panel.clone(), panel], &svg, &png).unwrap();
    check_svg(&std::fs::read(&svg).unwrap());
    check_png(&std::fs::read(&png).unwrap());
    let (svg, png) = (dir.path().join("r.svg"), dir.path().join("r.png"));
    plot::rank_rows(
        "rows",
        &[RankSeries {
            label: "x".into(),
            rows: vec![4, 1, 2, 1],
        }],
        &[10, 0, 5, 1],
        8,
        &svg,
        &png,
    )
    .unwrap();
    check_svg(&std::fs::read(&svg).unwrap());
    check_png(&std::fs::read(&png).unwrap());
    // A mismatched vocabulary is an error, not a panic.
    assert!(plot::rank_rows(
        "rows",
        &[RankSeries {
            label: "x".into(),
            rows: vec![1]
        }],
        &[1, 2],
        8,
        &svg,
        &png
    )
    .is_err());
}
