//! Part of the `l3kit` binary (`src/main.rs`): the planner's commands — `allocate --method
//! optimal`, `evaluate` and `plan` — and their reports. A thin layer over `l3kit::plan`.

use crate::{human_bytes, print_allocation, print_json, AllocateArgs};
use clap::Args;
use l3kit::allocate::{self, AllocationReport, FillPolicy, LayerShape, Method};
use l3kit::layout::TableDtype;
use l3kit::plan::evaluate::{self, EvaluationReport, ProfileFigures};
use l3kit::plan::sweep::{self, PlanOptions, PlanPoint, PlanReport};
use l3kit::plan::{self, CostBudget, OptimalSummary, Optimality};
use l3kit::profile::{self, Profile};
use l3kit::util::progress::Ui;
use l3kit::{Allocation, Error, Result};
use serde::Serialize;
use std::path::PathBuf;

/// `--d-in/--d-emb/--tied/--dtype`: the layer shape for memory and bytes-per-token figures.
#[derive(clap::Args, Clone, Copy, Debug)]
pub struct LayerShapeArgs {
    /// Layer width, for the memory and bytes-per-token figures.
    #[arg(long)]
    pub d_in: Option<u64>,
    /// Value width (default d_in / 2, the paper's untied layout; d_in when --tied).
    #[arg(long)]
    pub d_emb: Option<u64>,
    /// Keys and values share one table (the nanochat dialect).
    #[arg(long)]
    pub tied: bool,
    #[arg(long, value_enum, default_value = "bf16")]
    pub dtype: TableDtype,
}

impl LayerShapeArgs {
    pub fn shape(&self) -> Option<LayerShape> {
        shape_of(self.d_in, self.d_emb, self.tied, self.dtype)
    }
}

/// The layer shape of `--d-in/--d-emb/--tied/--dtype` (d_emb defaults to d_in / 2, the
/// paper's untied layout, or d_in when tied).
pub(crate) fn shape_of(
    d_in: Option<u64>,
    d_emb: Option<u64>,
    tied: bool,
    dtype: TableDtype,
) -> Option<LayerShape> {
    d_in.map(|d_in| LayerShape {
        d_in,
        d_emb: d_emb.unwrap_or(if tied { d_in } else { (d_in / 2).max(1) }),
        tied,
        dtype,
    })
}

/// The cost budget of `allocate`, checked against the method and the layer shape.
pub fn budget_of(args: &AllocateArgs, shape: Option<LayerShape>) -> Result<Option<CostBudget>> {
    let given = args.mean_rows.is_some() || args.max_bytes_per_token.is_some();
    if given && args.method != Method::Optimal {
        return Err(Error::input(
            "--mean-rows and --max-bytes-per-token budget the optimal allocation: add --method optimal",
        ));
    }
    Ok(match (args.mean_rows, args.max_bytes_per_token) {
        (Some(m), _) => Some(CostBudget::MeanRows { rows: m }),
        (None, Some(b)) => {
            let s = shape.ok_or_else(|| {
                Error::input(
                    "--max-bytes-per-token needs the layer shape to price a row: give --d-in (and --d-emb, --tied, --dtype)",
                )
            })?;
            Some(CostBudget::BytesPerToken {
                bytes: b as f64,
                row_bytes: s.dtype.row_bytes(s.d_in, s.d_emb, s.tied),
            })
        }
        (None, None) => None,
    })
}

/// `allocate --method optimal`.
pub fn cmd_allocate_optimal(
    args: &AllocateArgs,
    profile: &Profile,
    n_emb: u64,
    tokenizer: Option<&tokenizers::Tokenizer>,
    json: bool,
) -> Result<()> {
    let shape = args.layer.shape();
    let budget = budget_of(args, shape)?;
    let (alloc, opt) = plan::allocate_optimal(profile, n_emb, args.k_max, budget)?;
    alloc.write_with_metadata(&args.out, &opt.metadata())?;
    let report = allocate::report(&alloc, Some(&profile.unigram), shape, tokenizer);
    if json {
        #[derive(Serialize)]
        struct Out<'a> {
            out: &'a PathBuf,
            #[serde(flatten)]
            report: &'a AllocationReport,
            planner: &'a OptimalSummary,
            seconds: f64,
        }
        print_json(&Out {
            out: &args.out,
            report: &report,
            planner: &opt.summary,
            seconds: opt.summary.seconds,
        });
    } else {
        print_allocation(&report);
        print_optimal(&opt.summary);
        println!("wrote {}", args.out.display());
    }
    Ok(())
}

fn optimality_text(s: &OptimalSummary) -> String {
    match s.optimality {
        Optimality::Proven => "optimal (proven)".into(),
        Optimality::NodeLimit => format!(
            "best found; the search stopped at its node limit {:.3e} below the LP bound",
            s.gap_to_lp_bound.unwrap_or(0.0) / s.total_mass.max(1) as f64
        ),
        Optimality::NoBound => "best found; the exact bound overflowed (counts near 2^64)".into(),
    }
}

pub fn print_optimal(s: &OptimalSummary) {
    match &s.budget {
        Some(b) => println!(
            "  budget {} -> E[d_t] <= {:.4}",
            b.describe(),
            s.mean_rows_cap.unwrap_or(0.0)
        ),
        None => println!("  no cost budget (coverage equals the LZW walk's)"),
    }
    println!(
        "  context coverage {:.6} ({} of {} codeword mass), {}",
        s.coverage,
        s.covered_mass,
        s.total_mass,
        optimality_text(s)
    );
    if let (Some(b), Some(g)) = (s.lp_bound_coverage, s.gap_to_lp_bound) {
        println!("  LP bound {b:.6} (gap {g:.2} codeword counts)");
    }
    println!(
        "  solved in {:.3} s: {} token groups, {} in the exact search, {} nodes",
        s.seconds, s.groups, s.core_groups, s.search_nodes
    );
}

// ---- evaluate ----------------------------------------------------------------------------

#[derive(Args)]
pub struct EvaluateArgs {
    /// Any allocation file (a safetensors file with an I64 `bounds` tensor).
    #[arg(long)]
    allocation: PathBuf,
    /// Profile of held-out text (same tokenizer).
    #[arg(long)]
    profile: PathBuf,
    /// Profile of the training text, for the figures side by side.
    #[arg(long)]
    train_profile: Option<PathBuf>,
    /// Check the held-out profile's tokenizer and show starved tokens as text.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    #[command(flatten)]
    layer: LayerShapeArgs,
    /// How many starved tokens to list.
    #[arg(long, default_value_t = 10)]
    top: usize,
}

pub fn cmd_evaluate(args: EvaluateArgs, json: bool) -> Result<()> {
    let alloc = Allocation::read(&args.allocation)?;
    let heldout = Profile::read(&args.profile)?;
    let train = match &args.train_profile {
        Some(p) => Some(Profile::read(p)?),
        None => None,
    };
    let tokenizer = match &args.tokenizer {
        Some(path) => {
            heldout.check_tokenizer(&args.profile, path)?;
            Some(profile::load_tokenizer(path)?.0)
        }
        None => None,
    };
    let shape = args.layer.shape();
    let report = evaluate::evaluate(
        &alloc,
        &args.allocation,
        &heldout,
        &args.profile,
        train.as_ref().zip(args.train_profile.as_deref()),
        shape,
        tokenizer.as_ref(),
        args.top,
    )?;
    if json {
        print_json(&report);
    } else {
        print_evaluation(&report);
    }
    Ok(())
}

fn print_evaluation(r: &EvaluationReport) {
    let a = &r.allocation;
    println!(
        "allocation {} ({}): vocabulary {}, n_emb {}, k_max {}, largest block {}",
        a.path, a.method, a.vocab_size, a.n_emb, a.k_max, a.max_rows
    );
    if let (Some(row), Some(layer)) = (a.bytes_per_row, a.bytes_per_layer) {
        println!(
            "  {} per row, {} per L3 layer",
            human_bytes(row as f64),
            human_bytes(layer as f64)
        );
    }
    let cols: Vec<(&str, &ProfileFigures)> = std::iter::once(("held-out", &r.heldout))
        .chain(r.train.as_ref().map(|t| ("training", t)))
        .collect();
    print!("  {:<34}", "");
    for (name, _) in &cols {
        print!(" {name:>16}");
    }
    println!();
    let row = |label: &str, f: &dyn Fn(&ProfileFigures) -> String| {
        print!("  {label:<34}");
        for (_, p) in &cols {
            print!(" {:>16}", f(p));
        }
        println!();
    };
    row("tokens", &|p| p.tokens.to_string());
    row("context coverage", &|p| format!("{:.6}", p.coverage));
    row("E[d_t] (expected rows per token)", &|p| {
        p.expected_rows
            .map(|e| format!("{e:.3}"))
            .unwrap_or("-".into())
    });
    row("expected bytes per token", &|p| {
        p.expected_bytes_per_token
            .map(human_bytes)
            .unwrap_or("-".into())
    });
    row("seen tokens with a single row", &|p| {
        p.seen_tokens_with_one_row.to_string()
    });
    for (name, p) in &cols {
        println!("  {name} profile: {}", p.profile);
    }
    if !r.starved.is_empty() {
        println!("  starved tokens (held-out contexts left uncovered, most mass first):");
        println!(
            "    {:>6} {:<14} {:>5} {:>9} {:>6} {:>9} {:>9} {:>10}",
            "token", "text", "rows", "held-out", "rank", "train", "contexts", "uncovered"
        );
        for s in &r.starved {
            let text = s
                .text
                .as_deref()
                .map(|t| format!("{t:?}"))
                .unwrap_or_default();
            println!(
                "    {:>6} {:<14} {:>5} {:>9} {:>6} {:>9} {:>9} {:>9.3}%",
                s.id,
                text,
                s.rows,
                s.heldout_count,
                s.heldout_rank,
                s.train_count.map(|c| c.to_string()).unwrap_or("-".into()),
                s.heldout_contexts,
                100.0 * s.uncovered_share
            );
        }
    }
}

// ---- plan --------------------------------------------------------------------------------

#[derive(Args)]
pub struct PlanArgs {
    /// Profile of the training text (the allocations are planned on it).
    #[arg(long)]
    profile: PathBuf,
    /// Profile of held-out text, for held-out coverage.
    #[arg(long)]
    heldout: Option<PathBuf>,
    /// Output folder (plan.csv, plan.json, frontier.svg/.png, rows.svg/.png).
    #[arg(long)]
    out: PathBuf,
    /// n_emb grid as rows per token.
    #[arg(long, value_delimiter = ',', default_value = "1.5,2,3,3.9,6")]
    rows_per_token: Vec<f64>,
    /// E[d_t] budgets (default: --budgets points per n_emb, log-spaced from the smallest
    /// feasible budget to the unconstrained optimum).
    #[arg(long, value_delimiter = ',')]
    mean_rows: Vec<f64>,
    /// Automatic budgets per n_emb.
    #[arg(long, default_value_t = 12)]
    budgets: usize,
    #[arg(long, default_value_t = 512)]
    k_max: u32,
    /// Layer shape for memory and bytes per token (default: the paper's 2048 / 1024, bf16).
    #[arg(long, default_value_t = 2048)]
    d_in: u64,
    #[arg(long)]
    d_emb: Option<u64>,
    #[arg(long)]
    tied: bool,
    #[arg(long, value_enum, default_value = "bf16")]
    dtype: TableDtype,
    /// Where the paper's default point (LZW) sits, in rows per token.
    #[arg(long, default_value_t = sweep::PAPER_ROWS_PER_TOKEN)]
    paper_rows_per_token: f64,
    /// E[d_t] budget of the optimal allocation in the rows plot (default: a tenth of the
    /// paper point's).
    #[arg(long)]
    rows_plot_mean_rows: Option<f64>,
    /// How LZW places rows when its codewords run out.
    #[arg(long, value_enum, default_value = "frequency")]
    fill: FillPolicy,
}

pub fn cmd_plan(args: PlanArgs, ui: &Ui, json: bool) -> Result<()> {
    let train = Profile::read(&args.profile)?;
    let heldout = match &args.heldout {
        Some(p) => Some(Profile::read(p)?),
        None => None,
    };
    let mut opts = PlanOptions::new(args.out.clone());
    opts.rows_per_token = args.rows_per_token;
    opts.mean_rows = args.mean_rows;
    opts.budgets = args.budgets;
    opts.k_max = args.k_max;
    opts.shape = shape_of(Some(args.d_in), args.d_emb, args.tied, args.dtype).expect("d_in given");
    opts.paper_rows_per_token = args.paper_rows_per_token;
    opts.rows_plot_mean_rows = args.rows_plot_mean_rows;
    opts.fill = args.fill;
    let report = sweep::plan(
        &train,
        &args.profile,
        heldout.as_ref().zip(args.heldout.as_deref()),
        &opts,
        ui,
    )?;
    if json {
        #[derive(Serialize)]
        struct Out<'a> {
            #[serde(flatten)]
            report: &'a PlanReport,
            seconds: f64,
        }
        print_json(&Out {
            report: &report,
            seconds: report.seconds,
        });
    } else {
        print_plan(&report);
    }
    Ok(())
}

fn point_line(p: &PlanPoint) -> String {
    format!(
        "{:>8} {:>9} {:>9} {:>10} {:>10} {:>11}",
        p.mean_rows_budget
            .map(|m| format!("{m:.2}"))
            .unwrap_or("-".into()),
        format!("{:.3}", p.train_expected_rows),
        format!("{:.4}", p.train_coverage),
        p.heldout_expected_rows
            .map(|e| format!("{e:.3}"))
            .unwrap_or("-".into()),
        p.heldout_coverage
            .map(|c| format!("{c:.4}"))
            .unwrap_or("-".into()),
        human_bytes(p.train_bytes_per_token)
    )
}

const POINT_HEADER: &str = "  budget   E[d] tr    cov tr   E[d] ho     cov ho   bytes/tok";

pub fn print_plan(r: &PlanReport) {
    println!(
        "plan: vocabulary {}, k_max {}, {} per row ({} {}x{}{})",
        r.vocab_size,
        r.k_max,
        human_bytes(r.bytes_per_row as f64),
        r.shape.dtype.name(),
        r.shape.d_in,
        r.shape.d_emb,
        if r.shape.tied { ", tied" } else { "" }
    );
    println!("  (tr = training profile, ho = held-out profile, cov = context coverage)");
    let mut n_embs: Vec<u64> = r.points.iter().map(|p| p.n_emb).collect();
    n_embs.dedup();
    n_embs.sort_unstable();
    n_embs.dedup();
    for n in n_embs {
        let ratio = n as f64 / r.vocab_size as f64;
        let bytes = r
            .points
            .iter()
            .find(|p| p.n_emb == n)
            .map(|p| p.memory_per_layer_bytes)
            .unwrap_or(0);
        println!(
            "\n  n_emb {n} ({ratio:.2} rows/token, {} per layer)",
            human_bytes(bytes as f64)
        );
        println!("  {:<8}{POINT_HEADER}", "");
        for p in r.points.iter().filter(|p| p.n_emb == n) {
            let tag = if p.method == "lzw" {
                if p.lzw_fill_rows > 0 {
                    "lzw+fill"
                } else {
                    "lzw"
                }
            } else {
                "optimal"
            };
            println!("  {tag:<8}{}", point_line(p));
        }
    }
    let pd = &r.paper_default;
    println!(
        "\n  paper default (LZW, {:.1} rows/token, k_max {}): E[d_t] {:.2}, coverage {:.4} training{}",
        pd.rows_per_token,
        pd.k_max,
        pd.train_expected_rows,
        pd.train_coverage,
        pd.heldout_coverage
            .map(|c| format!(", {c:.4} held-out"))
            .unwrap_or_default()
    );
    if !r.same_expected_rows.is_empty() {
        println!(
            "  optimal at the paper point's E[d_t] <= {:.2} (same speed), by memory:",
            pd.train_expected_rows
        );
        for p in &r.same_expected_rows {
            println!(
                "    {:>5.2} rows/token: coverage {:.4} training{}, E[d_t] {:.2}",
                p.rows_per_token,
                p.train_coverage,
                p.heldout_coverage
                    .map(|c| format!(", {c:.4} held-out"))
                    .unwrap_or_default(),
                p.train_expected_rows
            );
        }
    }
    for f in &r.files {
        println!("wrote {f}");
    }
}

/// The demo's planner section.
pub fn print_demo_plan(r: &PlanReport) {
    let pd = &r.paper_default;
    let ho = |p: &PlanPoint| {
        p.heldout_coverage
            .map(|c| format!(", held-out {c:.4}"))
            .unwrap_or_default()
    };
    println!(
        "  LZW (paper, {:.1} rows/token):               E[d_t] {:>7.2}, coverage training {:.4}{}",
        pd.rows_per_token,
        pd.train_expected_rows,
        pd.train_coverage,
        ho(pd)
    );
    let o = &r.rows_plot_optimal;
    println!(
        "  optimal, same n_emb, budget E[d_t] <= {:>6.2}: E[d_t] {:>7.2}, coverage training {:.4}{}",
        o.mean_rows_budget.unwrap_or(0.0),
        o.train_expected_rows,
        o.train_coverage,
        ho(o)
    );
    println!(
        "  optimal under LZW's E[d_t] <= {:.2} (same speed), by memory:",
        pd.train_expected_rows
    );
    for p in &r.same_expected_rows {
        println!(
            "    {:>4.1} rows/token: E[d_t] {:>7.2}, coverage training {:.4}{}",
            p.rows_per_token,
            p.train_expected_rows,
            p.train_coverage,
            ho(p)
        );
    }
    for f in &r.files {
        println!("  wrote {f}");
    }
}
