//! `l3kit verify`: its flags and its report.

use super::{print_json, source_options, SourceArgs};
use clap::Args;
use l3kit::util::progress::Ui;
use l3kit::Result;
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
    /// Random inputs: how many tokens (1 to 16777216, and at most what fits in about 4 GiB of
    /// working memory; see docs/verify.md).
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
            let figure = |max_abs: f64, rel: f64, cos: f64| {
                format!("max abs {max_abs:.3e}, relative L2 {rel:.3e}, cosine {cos:.7}")
            };
            let what = if l.measured == "delta" {
                "delta (the layer's output before the residual)"
            } else {
                "output"
            };
            let mut line = format!(
                "  {} {}: {what}: {} (tolerance {:.1e})",
                if l.passed { "ok  " } else { "FAIL" },
                l.name,
                figure(l.max_abs_error, l.relative_l2_error, l.cosine_similarity),
                l.tolerance
            );
            if let (Some(t), Some(p)) = (l.worst_token, l.worst_position) {
                line.push_str(&format!(", worst token {t} at position {p}"));
            }
            println!("{line}");
            if let Some(r) = &l.after_residual {
                println!(
                    "       after the residual: {}",
                    figure(r.max_abs_error, r.relative_l2_error, r.cosine_similarity)
                );
            }
            if l.nonfinite_source + l.nonfinite_packed > 0 {
                let agree = match l.first_nonfinite_mismatch {
                    None => "all at the same positions with the same values, compared as equal"
                        .to_string(),
                    Some(p) => format!(
                        "{} values differ in finiteness, the first at position {p}",
                        l.nonfinite_mismatches
                    ),
                };
                println!(
                    "       non-finite values (NaN/Inf): {} in the source's output, {} in the \
                     packed output; {agree}",
                    l.nonfinite_source, l.nonfinite_packed
                );
            }
        }
        println!("{}", if report.passed { "passed" } else { "FAILED" });
    }
    report.into_result().map(|_| ())
}
