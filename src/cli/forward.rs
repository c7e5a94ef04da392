//! `l3kit forward`: its flags and its report.

use super::{print_json, source_options, SourceArgs};
use clap::Args;
use l3kit::formats::packed::Hashes;
use l3kit::Result;
use std::path::PathBuf;

#[derive(Args)]
pub(crate) struct ForwardArgs {
    /// A packed folder or a source checkpoint.
    #[arg(long)]
    model: PathBuf,
    #[command(flatten)]
    src: SourceArgs,
    #[arg(long)]
    inputs: PathBuf,
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long)]
    out: PathBuf,
    /// Skip re-hashing a packed model's files against its index (its structure is still
    /// validated). Without it, a corrupted shard is refused before anything runs.
    #[arg(long)]
    no_check: bool,
}

pub(crate) fn cmd_forward(args: ForwardArgs, json: bool) -> Result<()> {
    let (device, note) = l3kit::model::select_device(&args.device)?;
    if let Some(note) = note {
        eprintln!("note: {note}");
    }
    let s = l3kit::verify::forward_file(
        &args.model,
        &source_options(&args.src),
        &args.inputs,
        &args.out,
        &device,
        if args.no_check {
            Hashes::Skip
        } else {
            Hashes::Check
        },
    )?;
    if json {
        print_json(&s);
    } else {
        let checked = match (s.files_hashed, args.no_check) {
            (Some(n), _) => format!(", {n} files re-hashed"),
            (None, true) => ", hashes not checked (--no-check)".to_string(),
            (None, false) => String::new(),
        };
        println!(
            "ran {} L3 layer(s) on {} tokens on {} ({:.3} s{checked}): wrote {}",
            s.layers.len(),
            s.tokens,
            s.device,
            s.seconds,
            s.out.display()
        );
    }
    Ok(())
}
