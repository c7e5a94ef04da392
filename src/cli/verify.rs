//! `l3kit verify`: its flags and its report.

use super::{print_json, source_options, SourceArgs};
use clap::Args;
use l3kit::util::progress::Ui;
use l3kit::{Error, Result};
use std::path::PathBuf;

#[derive(Args)]
pub(crate) struct VerifyArgs {
    /// The source checkpoint (file or folder).
    #[arg(long)]
    source: PathBuf,
    /// The packed folder.
    #[arg(long)]
    packed: PathBuf,
    #[command(flatten)]
    src: SourceArgs,
    /// Captured inputs (`token_ids`, `hidden` or `hidden.<layer>`); default: random.
    #[arg(long)]
    inputs: Option<PathBuf>,
    /// Draw random token ids from this profile's unigram distribution (default: uniform).
    #[arg(long)]
    profile: Option<PathBuf>,
    /// Random inputs: how many tokens.
    #[arg(long, default_value_t = 1024)]
    tokens: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// cpu, cuda or auto (CUDA if built with it and a GPU is present, else CPU).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Relative L2 error allowed (default: by packed dtype; see docs/verify.md).
    #[arg(long)]
    tolerance: Option<f64>,
}

pub(crate) fn cmd_verify(args: VerifyArgs, ui: &Ui, json: bool) -> Result<()> {
    let report = l3kit::verify::verify(
        &l3kit::verify::VerifyOptions {
            source: args.source.clone(),
            packed: args.packed.clone(),
            source_opts: source_options(&args.src),
            inputs: args.inputs.clone(),
            profile: args.profile.clone(),
            tokens: args.tokens,
            seed: args.seed,
            device: args.device.clone(),
            tolerance: args.tolerance,
        },
        ui,
    )?;
    if let Some(note) = &report.device_note {
        eprintln!("note: {note}");
    }
    if json {
        print_json(&report);
    } else {
        println!(
            "verify {} against {}: {} files re-hashed, {} tables, {} tokens ({}), device {}",
            report.packed.display(),
            report.source.display(),
            report.files_hashed,
            report.packed_dtype.name(),
            report.tokens,
            report.inputs,
            report.device
        );
        for l in &report.layers {
            println!(
                "  {} {}: max abs {:.3e}, relative L2 {:.3e} (tolerance {:.1e}), cosine {:.7}, worst token {} at position {}",
                if l.passed { "ok  " } else { "FAIL" },
                l.name,
                l.max_abs_error,
                l.relative_l2_error,
                l.tolerance,
                l.cosine_similarity,
                l.worst_token,
                l.worst_position
            );
        }
        println!("{}", if report.passed { "passed" } else { "FAILED" });
    }
    if report.passed {
        Ok(())
    } else {
        Err(Error::Check(format!(
            "{}: outputs differ from the source beyond the tolerance",
            args.packed.display()
        )))
    }
}
