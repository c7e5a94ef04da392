//! `l3kit evaluate`: its flags and its report.

use super::{print_json, LayerShapeArgs};
use clap::Args;
use l3kit::allocate::plan::evaluate::{self, EvaluationReport, ProfileFigures};
use l3kit::profile::{self, Profile};
use l3kit::util::units::human_bytes;
use l3kit::{Allocation, Result};
use std::path::PathBuf;

// ---- evaluate ----------------------------------------------------------------------------
#[derive(Args)]
pub(crate) struct EvaluateArgs {
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

pub(crate) fn cmd_evaluate(args: EvaluateArgs, json: bool) -> Result<()> {
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

pub(crate) fn print_evaluation(r: &EvaluationReport) {
    let a = &r.allocation;
    // The method comes from the file's metadata: escaped, so it cannot drive the terminal.
    println!(
        "allocation {} ({}): vocabulary {}, n_emb {}, k_max {}, largest block {}",
        a.path,
        a.method.escape_debug(),
        a.vocab_size,
        a.n_emb,
        a.k_max,
        a.max_rows
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
