//! `l3kit plan`: its flags and its report (and the demo's short form of it).

use super::{print_json, shape_of};
use clap::Args;
use l3kit::allocate::plan::sweep::{self, PlanOptions, PlanPoint, PlanReport};
use l3kit::allocate::FillPolicy;
use l3kit::formats::dtype::TableDtype;
use l3kit::profile::Profile;
use l3kit::util::fs::{check_output, OutputKind};
use l3kit::util::progress::Ui;
use l3kit::util::units::human_bytes;
use l3kit::Result;
use serde::Serialize;
use std::path::PathBuf;

// ---- plan --------------------------------------------------------------------------------
#[derive(Args)]
pub(crate) struct PlanArgs {
    /// Profile of the training text (the allocations are planned on it).
    #[arg(long)]
    profile: PathBuf,
    /// Profile of held-out text, for held-out coverage.
    #[arg(long)]
    heldout: Option<PathBuf>,
    /// Output folder (plan.csv, plan.json, frontier.svg/.png, rows.svg/.png).
    #[arg(long)]
    out: PathBuf,
    /// n_emb grid as rows per token (at most 64 values).
    #[arg(long, value_delimiter = ',', default_value = "1.5,2,3,3.9,6")]
    rows_per_token: Vec<f64>,
    /// E[d_t] budgets (default: --budgets points per n_emb, log-spaced from the smallest
    /// feasible budget to the unconstrained optimum; at most 200 values).
    #[arg(long, value_delimiter = ',')]
    mean_rows: Vec<f64>,
    /// Automatic budgets per n_emb (2 to 200; each is one solve).
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

pub(crate) fn cmd_plan(args: PlanArgs, ui: &Ui, json: bool) -> Result<()> {
    let mut inputs = vec![args.profile.as_path()];
    inputs.extend(args.heldout.as_deref());
    check_output(&args.out, &inputs, OutputKind::Folder, "--out")?;
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

pub(crate) fn point_line(p: &PlanPoint) -> String {
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

pub(crate) const POINT_HEADER: &str =
    "  budget   E[d] tr    cov tr   E[d] ho     cov ho   bytes/tok";

pub(crate) fn print_plan(r: &PlanReport) {
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
pub(crate) fn print_demo_plan(r: &PlanReport) {
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
