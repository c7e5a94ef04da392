//! `l3kit unpack`: its flags and its report.

use super::{parse_size_arg, print_json};
use clap::Args;
use l3kit::pack::{self};
use l3kit::util::progress::Ui;
use l3kit::util::units::human_bytes;
use l3kit::Result;
use std::path::PathBuf;

#[derive(Args)]
pub(crate) struct UnpackArgs {
    /// A packed folder.
    dir: PathBuf,
    #[arg(long, default_value = "5GB", value_parser = parse_size_arg)]
    max_shard_size: u64,
    #[arg(long)]
    force: bool,
    #[arg(long)]
    out: PathBuf,
    /// Skip re-hashing the packed files against the index (the structure is still
    /// validated). Without it, a corrupted shard is refused before anything is written.
    #[arg(long)]
    no_check: bool,
}

pub(crate) fn cmd_unpack(args: UnpackArgs, ui: &Ui, json: bool) -> Result<()> {
    let hashes = if args.no_check {
        pack::unpack::Hashes::Skip
    } else {
        pack::unpack::Hashes::Check
    };
    let summary = pack::unpack::unpack_with(
        &pack::unpack::UnpackOptions {
            dir: args.dir,
            out: args.out,
            force: args.force,
            max_shard_size: args.max_shard_size,
        },
        hashes,
        ui,
    )?;
    if json {
        print_json(&summary);
    } else {
        println!(
            "unpacked {} tensors ({}) into {}: {}{}",
            summary.tensors,
            human_bytes(summary.bytes as f64),
            summary.out.display(),
            summary.files.join(", "),
            if args.no_check {
                " (hashes not checked: --no-check)"
            } else {
                ""
            }
        );
    }
    Ok(())
}
