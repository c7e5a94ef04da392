//! `l3kit plan`: sweep memory and cost budgets and write the trade-off.
//!
//! For every n_emb of a grid (given as rows per token) the optimal allocation is solved at a
//! range of E[d_t] budgets, from the smallest feasible one to the unconstrained optimum (whose
//! coverage is the LZW walk's), and the LZW walk itself is placed beside it. Every point gets
//! its training and held-out coverage, E[d_t] under both distributions, memory per layer and
//! bytes fetched per token. Written as `plan.csv`, `plan.json`, `frontier.svg`/`.png` and
//! `rows.svg`/`.png`. The files depend only on the inputs (no timings), so reruns are
//! byte-identical.

use super::contexts::Contexts;
use super::plot::{self, FrontierPanel, RankSeries, Series};
use super::{Optimality, Planner};
use crate::allocate::methods::{self as allocate, n_emb_for_ratio, FillPolicy};
use crate::allocate::report::LayerShape;
use crate::formats::allocation::expected_rows;
use crate::formats::profile::Profile;
use crate::util::atomic_file;
use crate::util::error::{Error, IoContext, Result};
use crate::util::progress::Ui;
use rayon::prelude::*;
use serde::Serialize;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The paper's memory budget: 710K rows for a 180K vocabulary.
pub const PAPER_ROWS_PER_TOKEN: f64 = 3.9;

/// The most n_emb values (`--rows-per-token`) one sweep takes.
pub const MAX_GRID: usize = 64;
/// The most automatic budgets per n_emb (`--budgets`).
pub const MAX_BUDGETS: usize = 200;
/// The most explicit E[d_t] budgets (`--mean-rows`).
pub const MAX_MEAN_ROWS: usize = 200;

#[derive(Clone, Debug)]
pub struct PlanOptions {
    /// n_emb grid as rows per token (n_emb = round(R x vocab)).
    pub rows_per_token: Vec<f64>,
    /// Explicit E[d_t] budgets; empty: `budgets` points per n_emb, log-spaced from the
    /// smallest feasible budget to the unconstrained optimum.
    pub mean_rows: Vec<f64>,
    pub budgets: usize,
    pub k_max: u32,
    pub shape: LayerShape,
    /// Where the paper's default point (LZW) sits.
    pub paper_rows_per_token: f64,
    /// Budget of the optimal allocation in the rows plot (default: a tenth of the paper
    /// point's E[d_t]).
    pub rows_plot_mean_rows: Option<f64>,
    /// How LZW places rows when the codewords run out.
    pub fill: FillPolicy,
    pub out: PathBuf,
}

impl PlanOptions {
    pub fn new(out: PathBuf) -> Self {
        PlanOptions {
            rows_per_token: vec![1.5, 2.0, 3.0, PAPER_ROWS_PER_TOKEN, 6.0],
            mean_rows: Vec::new(),
            budgets: 12,
            k_max: 512,
            shape: LayerShape {
                d_in: 2048,
                d_emb: 1024,
                tied: false,
                dtype: crate::formats::dtype::TableDtype::Bf16,
            },
            paper_rows_per_token: PAPER_ROWS_PER_TOKEN,
            rows_plot_mean_rows: None,
            fill: FillPolicy::Frequency,
            out,
        }
    }
}

/// One allocation of the sweep.
#[derive(Clone, Debug, Serialize)]
pub struct PlanPoint {
    /// `optimal` or `lzw`.
    pub method: String,
    pub rows_per_token: f64,
    pub n_emb: u64,
    pub k_max: u32,
    /// The E[d_t] cap the optimal allocation was solved under (None: unconstrained / LZW).
    pub mean_rows_budget: Option<f64>,
    pub train_coverage: f64,
    pub train_expected_rows: f64,
    pub heldout_coverage: Option<f64>,
    pub heldout_expected_rows: Option<f64>,
    pub memory_per_layer_bytes: u64,
    pub train_bytes_per_token: f64,
    pub heldout_bytes_per_token: Option<f64>,
    /// The LP bound on training coverage (optimal points).
    pub lp_bound_coverage: Option<f64>,
    pub optimality: Option<Optimality>,
    /// Rows LZW placed with the fill policy after its codewords ran out.
    pub lzw_fill_rows: u64,
    #[serde(skip)]
    pub rows: Vec<u32>,
}

#[derive(Clone, Debug, Serialize)]
pub struct PlanReport {
    pub train_profile: String,
    pub heldout_profile: Option<String>,
    pub vocab_size: u64,
    pub k_max: u32,
    pub shape: LayerShape,
    pub bytes_per_row: u64,
    pub points: Vec<PlanPoint>,
    /// LZW at the paper's rows per token.
    pub paper_default: PlanPoint,
    /// The optimal allocation at each n_emb under the paper point's E[d_t] (training).
    pub same_expected_rows: Vec<PlanPoint>,
    /// The optimal allocation drawn in the rows plot.
    pub rows_plot_optimal: PlanPoint,
    pub files: Vec<String>,
    #[serde(skip)]
    pub seconds: f64,
}

struct Eval<'a> {
    planner: &'a Planner,
    heldout: Option<(&'a Contexts, &'a [u64])>,
    vocab: usize,
    row_bytes: u64,
}

impl Eval<'_> {
    fn point(
        &self,
        method: &str,
        n_emb: u64,
        rows: Vec<u32>,
        budget: Option<f64>,
        k_max: u32,
    ) -> PlanPoint {
        let train_e = self.planner.expected_rows(&rows).unwrap_or(0.0);
        let (hc, he) = match self.heldout {
            Some((ctx, uni)) => (
                Some(ctx.coverage(&rows).fraction()),
                expected_rows(&rows, uni),
            ),
            None => (None, None),
        };
        PlanPoint {
            method: method.to_string(),
            rows_per_token: n_emb as f64 / self.vocab as f64,
            n_emb,
            k_max,
            mean_rows_budget: budget,
            train_coverage: self.planner.coverage(&rows).fraction(),
            train_expected_rows: train_e,
            heldout_coverage: hc,
            heldout_expected_rows: he,
            memory_per_layer_bytes: n_emb * self.row_bytes,
            train_bytes_per_token: train_e * self.row_bytes as f64,
            heldout_bytes_per_token: he.map(|e| e * self.row_bytes as f64),
            lp_bound_coverage: None,
            optimality: None,
            lzw_fill_rows: 0,
            rows,
        }
    }
}

fn n_emb_for(ratio: f64, vocab: usize, k_max: u32, flag: &str) -> Result<u64> {
    n_emb_for_ratio(ratio, vocab as u64, k_max, flag)
}

/// Refuse a sweep whose size is out of bounds before any work: every job is a solve that
/// takes up to about a second at a vocabulary of 256K.
fn check_sweep_size(opts: &PlanOptions) -> Result<()> {
    if opts.rows_per_token.len() > MAX_GRID {
        return Err(Error::input(format!(
            "--rows-per-token has {} values; a sweep takes at most {MAX_GRID}",
            opts.rows_per_token.len()
        )));
    }
    if opts.mean_rows.is_empty() && !(2..=MAX_BUDGETS).contains(&opts.budgets) {
        return Err(Error::input(format!(
            "--budgets {} is out of range: 2 to {MAX_BUDGETS} budgets per n_emb",
            opts.budgets
        )));
    }
    if opts.mean_rows.len() > MAX_MEAN_ROWS {
        return Err(Error::input(format!(
            "--mean-rows has {} values; a sweep takes at most {MAX_MEAN_ROWS}",
            opts.mean_rows.len()
        )));
    }
    Ok(())
}

/// LZW rows at `n_emb`, filling with `fill` when the codewords run out.
fn lzw_rows(profile: &Profile, n_emb: u64, k_max: u32, fill: FillPolicy) -> (Vec<u32>, u64) {
    let vocab = profile.meta.vocab_size as usize;
    let walk = allocate::lzw_walk(
        vocab,
        &profile.codewords.tokens,
        &profile.codewords.counts,
        n_emb,
        k_max,
    );
    let mut rows = walk.rows;
    if walk.remaining > 0 {
        match fill {
            FillPolicy::Frequency => {
                allocate::proportional_fill(&mut rows, &profile.unigram, walk.remaining, k_max)
            }
            FillPolicy::RoundRobin => allocate::round_robin(&mut rows, walk.remaining, k_max),
        }
    }
    (rows, walk.remaining)
}

/// Run the sweep and write its files into `opts.out`.
pub fn plan(
    train: &Profile,
    train_path: &Path,
    heldout: Option<(&Profile, &Path)>,
    opts: &PlanOptions,
    ui: &Ui,
) -> Result<PlanReport> {
    let started = Instant::now();
    let vocab = train.meta.vocab_size as usize;
    if let Some((h, hp)) = heldout {
        if h.meta.vocab_size != train.meta.vocab_size {
            return Err(Error::input(format!(
                "the held-out profile {} has a vocabulary of {} tokens, the training profile {} has {}",
                hp.display(),
                h.meta.vocab_size,
                train_path.display(),
                train.meta.vocab_size
            )));
        }
        if let (Some(a), Some(b)) = (&h.meta.tokenizer_sha256, &train.meta.tokenizer_sha256) {
            if a != b {
                return Err(Error::input(format!(
                    "the profiles {} and {} were made with different tokenizers (SHA-256 differs)",
                    train_path.display(),
                    hp.display()
                )));
            }
        }
    }
    if opts.rows_per_token.is_empty() {
        return Err(Error::input("give at least one --rows-per-token value"));
    }
    check_sweep_size(opts)?;
    if train.meta.tokens == 0 {
        return Err(Error::in_file(train_path, "the profile has no tokens"));
    }
    if let Some(m) = opts.rows_plot_mean_rows {
        if !m.is_finite() || m <= 0.0 {
            return Err(Error::input(format!(
                "--rows-plot-mean-rows {m} must be a positive number"
            )));
        }
    }
    for &m in &opts.mean_rows {
        if !m.is_finite() || m <= 0.0 {
            return Err(Error::input(format!(
                "--mean-rows {m} must be a positive number"
            )));
        }
    }
    let k_max = opts.k_max;
    let mut ratios = opts.rows_per_token.clone();
    ratios.sort_by(f64::total_cmp);
    ratios.dedup();
    let n_embs: Vec<u64> = ratios
        .iter()
        .map(|&r| n_emb_for(r, vocab, k_max, "--rows-per-token"))
        .collect::<Result<_>>()?;
    let paper_n = n_emb_for(
        opts.paper_rows_per_token,
        vocab,
        k_max,
        "--paper-rows-per-token",
    )?;
    let row_bytes = opts.shape.row_bytes()?;
    let largest = n_embs
        .iter()
        .copied()
        .chain([paper_n])
        .max()
        .unwrap_or(paper_n);
    opts.shape.layer_bytes(largest)?;

    let planner = Planner::from_profile(train, k_max)?;
    let held_ctx = match heldout {
        Some((h, _)) => Some(Contexts::from_profile(h, k_max as u64 - 1)?),
        None => None,
    };
    let eval = Eval {
        planner: &planner,
        heldout: held_ctx
            .as_ref()
            .zip(heldout.map(|(h, _)| h.unigram.as_slice())),
        vocab,
        row_bytes,
    };
    let total = planner.total_tokens();

    // LZW points, the paper's default among them.
    let mut lzw_points = Vec::new();
    let mut lzw_ns = n_embs.clone();
    if !lzw_ns.contains(&paper_n) {
        lzw_ns.push(paper_n);
        lzw_ns.sort_unstable();
    }
    for &n in &lzw_ns {
        let (rows, filled) = lzw_rows(train, n, k_max, opts.fill);
        let mut p = eval.point("lzw", n, rows, None, k_max);
        p.lzw_fill_rows = filled;
        // Only the rows plot needs rows (vocabulary-sized): keep them for its two points.
        if n != paper_n {
            p.rows = Vec::new();
        }
        lzw_points.push(p);
    }
    let paper = lzw_points
        .iter()
        .find(|p| p.n_emb == paper_n)
        .expect("the paper's n_emb is among the LZW points")
        .clone();
    let paper_cost = (paper.train_expected_rows * total as f64).round() as u128;

    // Unconstrained optimum per n_emb: the top of each budget range.
    let free: Vec<_> = n_embs
        .par_iter()
        .map(|&n| planner.solve_cap(n, None, None, super::DEFAULT_NODE_LIMIT))
        .collect::<Result<_>>()?;

    // The jobs: (n_emb, cap on sum u d). The cap at the paper point's cost is the
    // same-E[d_t] comparison.
    let mut jobs: Vec<(u64, u128)> = Vec::new();
    let mut same_caps: Vec<(u64, u128)> = Vec::new();
    for (i, &n) in n_embs.iter().enumerate() {
        let least = planner.min_cost(n);
        let most = cost_of(&free[i].rows, planner.unigram());
        let mut caps: Vec<u128> = if opts.mean_rows.is_empty() {
            log_space(least, most, opts.budgets)
        } else {
            opts.mean_rows
                .iter()
                .map(|&m| (m * total as f64 * (1.0 + 1e-12)).floor() as u128)
                .filter(|&c| c >= least)
                .map(|c| c.min(most))
                .collect()
        };
        if paper_cost >= least {
            caps.push(paper_cost.min(most));
            same_caps.push((n, paper_cost.min(most)));
        }
        caps.sort_unstable();
        caps.dedup();
        jobs.extend(caps.into_iter().map(|c| (n, c)));
    }
    // The optimal allocation of the rows plot.
    let paper_e = paper.train_expected_rows;
    let plot_m = opts.rows_plot_mean_rows.unwrap_or(paper_e / 10.0);
    let plot_least = planner.min_cost(paper_n);
    let plot_cap = ((plot_m * total as f64 * (1.0 + 1e-12)).floor() as u128).max(plot_least);
    jobs.push((paper_n, plot_cap));

    let bar = ui.items(jobs.len() as u64, "plan");
    let plot_job = jobs.len() - 1;
    let mut solved: Vec<PlanPoint> = jobs
        .par_iter()
        .enumerate()
        .map(|(i, &(n, cap))| {
            let opt = planner.solve_cap(n, Some(cap), None, super::DEFAULT_NODE_LIMIT)?;
            let mut p = eval.point(
                "optimal",
                n,
                opt.rows,
                Some(cap as f64 / total as f64),
                k_max,
            );
            p.lp_bound_coverage = opt.summary.lp_bound_coverage;
            p.optimality = Some(opt.summary.optimality);
            if i != plot_job {
                p.rows = Vec::new();
            }
            bar.inc(1);
            Ok(p)
        })
        .collect::<Result<_>>()?;
    bar.finish_and_clear();
    let plot_point = solved.pop().expect("the rows-plot job is last");
    jobs.pop();
    let same: Vec<PlanPoint> = jobs
        .iter()
        .zip(&solved)
        .filter(|(job, _)| same_caps.contains(job))
        .map(|(_, p)| p.clone())
        .collect();

    let mut points = Vec::new();
    for &n in &n_embs {
        points.extend(solved.iter().filter(|p| p.n_emb == n).cloned());
    }
    points.extend(lzw_points.iter().cloned());

    // Files: written into a hidden folder beside the output and moved into it only once all
    // are complete, so a failed run leaves the output folder as it was.
    let out = &opts.out;
    let staging = StagingFolder::create(out)?;
    let mut report = write_files(
        train,
        train_path,
        heldout,
        opts,
        &staging.path,
        &n_embs,
        points,
        paper,
        same,
        plot_point,
        row_bytes,
        vocab,
        k_max,
    )?;
    staging.move_into(out)?;
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// The files `plan` writes into its folder.
pub const PLAN_FILES: [&str; 6] = [
    "plan.csv",
    "plan.json",
    "frontier.svg",
    "frontier.png",
    "rows.svg",
    "rows.png",
];

/// A hidden folder beside `plan`'s output, removed unless its files were moved into place.
struct StagingFolder {
    path: PathBuf,
}

impl StagingFolder {
    fn create(out: &Path) -> Result<Self> {
        if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).with_path(parent)?;
        }
        let path = atomic_file::temp_sibling(out)?;
        if path.exists() {
            std::fs::remove_dir_all(&path).with_path(&path)?;
        }
        std::fs::create_dir(&path).with_path(&path)?;
        Ok(StagingFolder { path })
    }

    fn move_into(self, out: &Path) -> Result<()> {
        // A new output folder appears whole, in one rename, so a run killed at any moment
        // leaves either no folder or the complete one; into an existing folder the files
        // are renamed one by one, each replacing its old version whole.
        if !out.exists() && std::fs::rename(&self.path, out).is_ok() {
            return Ok(());
        }
        std::fs::create_dir_all(out).with_path(out)?;
        for name in PLAN_FILES {
            let dest = out.join(name);
            std::fs::rename(self.path.join(name), &dest).with_path(&dest)?;
        }
        Ok(())
    }
}

impl Drop for StagingFolder {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

#[allow(clippy::too_many_arguments)]
fn write_files(
    train: &Profile,
    train_path: &Path,
    heldout: Option<(&Profile, &Path)>,
    opts: &PlanOptions,
    dir: &Path,
    n_embs: &[u64],
    points: Vec<PlanPoint>,
    paper: PlanPoint,
    same: Vec<PlanPoint>,
    plot_point: PlanPoint,
    row_bytes: u64,
    vocab: usize,
    k_max: u32,
) -> Result<PlanReport> {
    let out = dir;
    let csv_path = out.join("plan.csv");
    atomic_file::write_atomic(&csv_path, to_csv(&points).as_bytes())?;
    let mut report = PlanReport {
        train_profile: train_path.display().to_string(),
        heldout_profile: heldout.map(|(_, p)| p.display().to_string()),
        vocab_size: vocab as u64,
        k_max,
        shape: opts.shape,
        bytes_per_row: row_bytes,
        points,
        paper_default: paper.clone(),
        same_expected_rows: same,
        rows_plot_optimal: plot_point.clone(),
        files: Vec::new(),
        seconds: 0.0,
    };
    let json_path = out.join("plan.json");
    let (svg, png) = (out.join("frontier.svg"), out.join("frontier.png"));
    plot::frontier(&frontier_panels(&report, n_embs), &svg, &png)?;
    let (svg, png) = (out.join("rows.svg"), out.join("rows.png"));
    let series = [
        RankSeries {
            label: format!(
                "LZW (paper): E[d] {:.1}, coverage {:.3}",
                paper.train_expected_rows, paper.train_coverage
            ),
            rows: paper.rows.clone(),
        },
        RankSeries {
            label: format!(
                "optimal, E[d] <= {:.1}: coverage {:.3}",
                plot_point.mean_rows_budget.unwrap_or(0.0),
                plot_point.train_coverage
            ),
            rows: plot_point.rows.clone(),
        },
    ];
    let caption = format!(
        "Rows per token by training frequency rank (n_emb = {:.1} x vocab, k_max {k_max})",
        paper.rows_per_token
    );
    plot::rank_rows(&caption, &series, &train.unigram, k_max, &svg, &png)?;
    // Where the files end up (the folder they are written in is a hidden staging one).
    report.files = PLAN_FILES
        .iter()
        .map(|name| opts.out.join(name).display().to_string())
        .collect();
    let json = serde_json::to_string_pretty(&report).expect("report serialises");
    atomic_file::write_atomic(&json_path, (json + "\n").as_bytes())?;
    Ok(report)
}

fn cost_of(rows: &[u32], unigram: &[u64]) -> u128 {
    rows.iter()
        .zip(unigram)
        .map(|(&r, &u)| r as u128 * u as u128)
        .sum()
}

/// `count` values from `lo` to `hi` (inclusive), evenly spaced in log scale, deduplicated.
fn log_space(lo: u128, hi: u128, count: usize) -> Vec<u128> {
    if hi <= lo || count < 2 {
        return vec![lo.max(hi)];
    }
    let (a, b) = ((lo.max(1)) as f64, hi as f64);
    let mut out: Vec<u128> = (0..count)
        .map(|i| {
            if i == 0 {
                lo
            } else if i + 1 == count {
                hi
            } else {
                let f = i as f64 / (count - 1) as f64;
                ((a.ln() + f * (b.ln() - a.ln())).exp().round() as u128).clamp(lo, hi)
            }
        })
        .collect();
    out.dedup();
    out
}

fn opt_f(x: Option<f64>, digits: usize) -> String {
    x.map(|v| format!("{v:.digits$}")).unwrap_or_default()
}

/// The sweep as CSV (fixed decimals, so the text is stable).
pub fn to_csv(points: &[PlanPoint]) -> String {
    let mut s = String::from(
        "method,rows_per_token,n_emb,k_max,mean_rows_budget,train_coverage,train_expected_rows,\
         heldout_coverage,heldout_expected_rows,memory_per_layer_bytes,train_bytes_per_token,\
         heldout_bytes_per_token,lp_bound_coverage,optimality,lzw_fill_rows\n",
    );
    for p in points {
        let _ = writeln!(
            s,
            "{},{:.4},{},{},{},{:.6},{:.4},{},{},{},{:.1},{},{},{},{}",
            p.method,
            p.rows_per_token,
            p.n_emb,
            p.k_max,
            opt_f(p.mean_rows_budget, 4),
            p.train_coverage,
            p.train_expected_rows,
            opt_f(p.heldout_coverage, 6),
            opt_f(p.heldout_expected_rows, 4),
            p.memory_per_layer_bytes,
            p.train_bytes_per_token,
            opt_f(p.heldout_bytes_per_token, 1),
            opt_f(p.lp_bound_coverage, 6),
            p.optimality
                .map(|o| serde_json::to_value(o).expect("serialises"))
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default(),
            p.lzw_fill_rows
        );
    }
    s
}

fn frontier_panels(report: &PlanReport, n_embs: &[u64]) -> Vec<FrontierPanel> {
    let mut panels = Vec::new();
    let sides: Vec<(&str, bool)> = if report.heldout_profile.is_some() {
        vec![("training profile", false), ("held-out profile", true)]
    } else {
        vec![("training profile", false)]
    };
    for (title, held) in sides {
        let xy = |p: &PlanPoint| -> Option<(f64, f64)> {
            if held {
                Some((p.heldout_expected_rows?, p.heldout_coverage?))
            } else {
                Some((p.train_expected_rows, p.train_coverage))
            }
        };
        let mut curves = Vec::new();
        let mut lzw = Vec::new();
        for (i, &n) in n_embs.iter().enumerate() {
            let mut pts: Vec<(f64, f64)> = report
                .points
                .iter()
                .filter(|p| p.method == "optimal" && p.n_emb == n)
                .filter_map(xy)
                .collect();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            let ratio = n as f64 / report.vocab_size as f64;
            curves.push(Series {
                label: format!("optimal, n_emb = {ratio:.1} x vocab"),
                points: pts,
                color: i,
            });
            if let Some(p) = report
                .points
                .iter()
                .find(|p| p.method == "lzw" && p.n_emb == n)
                .and_then(xy)
            {
                lzw.push((p, i));
            }
        }
        panels.push(FrontierPanel {
            title: format!("Coverage vs E[d_t], {title}"),
            x_label: if held {
                "E[d_t] under the held-out distribution (log)".into()
            } else {
                "E[d_t] under the training distribution (log)".into()
            },
            y_label: if held {
                "held-out context coverage".into()
            } else {
                "training context coverage".into()
            },
            curves,
            lzw,
            paper: xy(&report.paper_default),
            paper_label: format!(
                "paper default: LZW, {:.1} rows/token, k_max {}",
                report.paper_default.rows_per_token, report.k_max
            ),
        });
    }
    panels
}

/// The demo's planner step: profile the bundled held-out text and sweep a small grid into
/// `out_dir/plan/` (a few seconds).
pub fn demo(
    train: &Profile,
    train_path: &Path,
    data_dir: &Path,
    out_dir: &Path,
    ui: &Ui,
) -> Result<PlanReport> {
    let corpus = data_dir.join("corpus/heldout.txt");
    if !corpus.is_file() {
        return Err(Error::input(format!(
            "{}: bundled demo data is missing (pass --data DIR pointing at l3kit's fixtures/)",
            corpus.display()
        )));
    }
    let mut popts = crate::profile::ProfileOptions::new(vec![corpus]);
    popts.stream.tokenizer = Some(data_dir.join("tokenizer/gpt2.json"));
    let (heldout, _) = crate::profile::run(&popts, ui)?;
    let heldout_path = out_dir.join("heldout-profile.safetensors");
    heldout.write(&heldout_path)?;
    let mut opts = PlanOptions::new(out_dir.join("plan"));
    opts.rows_per_token = vec![2.0, PAPER_ROWS_PER_TOKEN, 8.0];
    opts.budgets = 8;
    plan(
        train,
        train_path,
        Some((&heldout, &heldout_path)),
        &opts,
        ui,
    )
}
