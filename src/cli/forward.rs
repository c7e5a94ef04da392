//! `l3kit forward`: its flags and its report.

use super::{print_json, source_options, SourceArgs};
use clap::Args;
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
    )?;
    if json {
        print_json(&s);
    } else {
        println!(
            "ran {} L3 layer(s) on {} tokens ({:.3} s): wrote {}",
            s.layers.len(),
            s.tokens,
            s.seconds,
            s.out.display()
        );
    }
    Ok(())
}
