//! `l3kit allocate` (every method, `--method optimal` included): its flags and its report.

use super::{parse_size_arg, print_json, LayerShapeArgs};
use clap::Args;
use l3kit::allocate::plan::{self, CostBudget, OptimalSummary, Optimality};
use l3kit::allocate::{self, AllocateOptions, AllocationReport, FillPolicy, LayerShape, Method};
use l3kit::profile::{self, Profile};
use l3kit::util::fs::{check_output, OutputKind};
use l3kit::util::units::human_bytes;
use l3kit::{Error, Result};
use serde::Serialize;
use std::path::PathBuf;

#[derive(Args)]
pub(crate) struct AllocateArgs {
    #[arg(long)]
    profile: PathBuf,
    /// Total rows per L3 table (the memory budget).
    #[arg(
        long,
        required_unless_present = "rows_per_token",
        conflicts_with = "rows_per_token"
    )]
    n_emb: Option<u64>,
    /// Budget as a ratio: n_emb = round(R x vocab).
    #[arg(long)]
    rows_per_token: Option<f64>,
    /// Most rows any token may own.
    #[arg(long, default_value_t = 512)]
    k_max: u32,
    #[arg(long, value_enum, default_value = "lzw")]
    method: Method,
    /// With --method optimal: cap the expected rows per token E[d_t] (unigram-weighted).
    #[arg(long, conflicts_with = "max_bytes_per_token")]
    mean_rows: Option<f64>,
    /// With --method optimal: cap the expected bytes fetched per token per layer (e.g. 2MB;
    /// needs --d-in, and --d-emb, --tied, --dtype to price a row).
    #[arg(long, value_parser = parse_size_arg)]
    max_bytes_per_token: Option<u64>,
    /// What to do when the LZW codewords run out before the budget is met.
    #[arg(long, value_enum)]
    fill: Option<FillPolicy>,
    /// Check the profile was made with this tokenizer, and show tokens as text.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    #[command(flatten)]
    layer: LayerShapeArgs,
    /// Where to write the allocation (safetensors with an I64 `bounds` tensor).
    #[arg(long)]
    out: PathBuf,
}

pub(crate) fn cmd_allocate(args: AllocateArgs, json: bool) -> Result<()> {
    let mut inputs = vec![args.profile.as_path()];
    inputs.extend(args.tokenizer.as_deref());
    check_output(&args.out, &inputs, OutputKind::File, "--out")?;
    let profile = Profile::read(&args.profile)?;
    let tokenizer = match &args.tokenizer {
        Some(path) => {
            profile.check_tokenizer(&args.profile, path)?;
            Some(profile::load_tokenizer(path)?.0)
        }
        None => None,
    };
    let vocab = u64::from(profile.meta.vocab_size);
    let n_emb = match (args.n_emb, args.rows_per_token) {
        (Some(n), _) => {
            allocate::check_budget(vocab, n, args.k_max)
                .map_err(|e| Error::input(format!("--n-emb {n}: {e}")))?;
            n
        }
        (None, Some(r)) => allocate::n_emb_for_ratio(r, vocab, args.k_max, "--rows-per-token")?,
        (None, None) => {
            return Err(Error::input(
                "give the budget: --n-emb N or --rows-per-token R",
            ))
        }
    };
    let shape = args.layer.shape();
    if let Some(s) = shape {
        s.layer_bytes(n_emb)?;
    }
    if args.method == Method::Optimal {
        return cmd_allocate_optimal(&args, &profile, n_emb, tokenizer.as_ref(), json);
    }
    budget_of(&args, None)?;
    let alloc = allocate::allocate(
        &profile,
        &AllocateOptions {
            n_emb,
            k_max: args.k_max,
            method: args.method,
            fill: args.fill,
        },
    )?;
    // The report first: a run that fails leaves no output.
    let report = allocate::report(&alloc, Some(&profile.unigram), shape, tokenizer.as_ref())?;
    alloc.write(&args.out)?;
    if json {
        #[derive(Serialize)]
        struct Out<'a> {
            out: &'a PathBuf,
            #[serde(flatten)]
            report: &'a AllocationReport,
        }
        print_json(&Out {
            out: &args.out,
            report: &report,
        });
    } else {
        print_allocation(&report);
        println!("wrote {}", args.out.display());
    }
    Ok(())
}

pub(crate) fn print_allocation(r: &AllocationReport) {
    println!("allocation ({})", r.method);
    println!(
        "  vocabulary {}  n_emb {}  k_max {}  mean rows/token {:.3}",
        r.vocab_size, r.n_emb, r.k_max, r.mean_rows_per_token
    );
    if let Some(e) = r.expected_rows_per_token {
        println!(
            "  expected rows per token E[d_t] {e:.2} (under the profile's unigram distribution)"
        );
    }
    println!(
        "  tokens at the cap {}  largest block {}",
        r.tokens_at_cap, r.max_rows
    );
    if let Some(fill) = &r.fill {
        println!("  fill policy {fill} placed {} rows", r.fill_rows);
    }
    println!("  rows per token      tokens        rows");
    for b in &r.histogram {
        println!("  {:>13} {:>11} {:>11}", b.label, b.tokens, b.rows);
    }
    if let Some(m) = &r.memory {
        println!(
            "  layer d_in {} d_emb {}{} {}: {} per row, {} per L3 layer",
            m.d_in,
            m.d_emb,
            if m.tied { " (tied)" } else { "" },
            m.dtype.name(),
            human_bytes(m.bytes_per_row as f64),
            human_bytes(m.bytes_per_layer as f64)
        );
        print!(
            "  fetched per token per layer: worst case {}",
            human_bytes(m.worst_case_bytes_per_token as f64)
        );
        match m.expected_bytes_per_token {
            Some(e) => println!(", expected {}", human_bytes(e)),
            None => println!(),
        }
    }
    if !r.top_tokens.is_empty() {
        println!("  largest blocks:");
        for t in &r.top_tokens {
            let text = t
                .text
                .as_deref()
                .map(|s| format!(" {s:?}"))
                .unwrap_or_default();
            println!(
                "    token {:>6}{text}: {} rows, count {}",
                t.id, t.rows, t.count
            );
        }
    }
}

/// The cost budget of `allocate`, checked against the method and the layer shape.
pub(crate) fn budget_of(
    args: &AllocateArgs,
    shape: Option<LayerShape>,
) -> Result<Option<CostBudget>> {
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
                row_bytes: s.row_bytes()?,
            })
        }
        (None, None) => None,
    })
}

/// `allocate --method optimal`.
pub(crate) fn cmd_allocate_optimal(
    args: &AllocateArgs,
    profile: &Profile,
    n_emb: u64,
    tokenizer: Option<&tokenizers::Tokenizer>,
    json: bool,
) -> Result<()> {
    let shape = args.layer.shape();
    let budget = budget_of(args, shape)?;
    let (alloc, opt) = plan::allocate_optimal(profile, n_emb, args.k_max, budget)?;
    let report = allocate::report(&alloc, Some(&profile.unigram), shape, tokenizer)?;
    alloc.write_with_metadata(&args.out, &opt.metadata())?;
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

pub(crate) fn optimality_text(s: &OptimalSummary) -> String {
    match s.optimality {
        Optimality::Proven => "optimal (proven)".into(),
        Optimality::NodeLimit => format!(
            "best found; the search stopped at its node limit {:.3e} below the LP bound",
            s.gap_to_lp_bound.unwrap_or(0.0) / s.total_mass.max(1) as f64
        ),
        Optimality::NoBound => "best found; the exact bound overflowed (counts near 2^64)".into(),
    }
}

pub(crate) fn print_optimal(s: &OptimalSummary) {
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
