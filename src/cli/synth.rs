//! `l3kit synth`: its flags and its report.

use super::print_json;
use clap::Args;
use l3kit::checkpoint::Dialect;
use l3kit::formats::dtype::TableDtype;
use l3kit::util::fs::{check_output, OutputKind};
use l3kit::util::units::human_bytes;
use l3kit::Result;
use std::path::PathBuf;

#[derive(Args)]
pub(crate) struct SynthArgs {
    #[arg(long, value_enum, default_value = "paper")]
    dialect: Dialect,
    #[arg(long, default_value_t = 50_000)]
    vocab: u64,
    #[arg(long, default_value_t = 200_000)]
    n_emb: u64,
    #[arg(long, default_value_t = 512)]
    k_max: u32,
    #[arg(long, default_value_t = 1024)]
    d_in: u64,
    #[arg(long, default_value_t = 512)]
    d_emb: u64,
    #[arg(long, default_value_t = 4096)]
    d_up: u64,
    /// Decoder positions of the L3 layers.
    #[arg(long, value_delimiter = ',', default_value = "4,16")]
    layers: Vec<u32>,
    #[arg(long, value_enum, default_value = "bf16")]
    dtype: TableDtype,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long)]
    out: PathBuf,
    /// Write a whole model of this family around the L3 layers (with its config.json), so
    /// `eval`, `generate` and the decode benchmark can run it. `tiny` is the bundled trained
    /// model's family; `--layers` are then the blocks the L3 sublayers follow.
    #[arg(long, value_enum)]
    family: Option<SynthFamily>,
    /// Decoder blocks (with --family).
    #[arg(long, default_value_t = 8)]
    n_layer: u64,
    /// Attention heads; must divide --d-in (with --family).
    #[arg(long, default_value_t = 16)]
    n_head: u64,
    /// Context length, learned positions (with --family).
    #[arg(long, default_value_t = 1024)]
    block_size: u64,
    /// MLP width (with --family; default 4 x --d-in).
    #[arg(long)]
    mlp_hidden: Option<u64>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum SynthFamily {
    Tiny,
}

pub(crate) fn cmd_synth(args: SynthArgs, json: bool) -> Result<()> {
    check_output(&args.out, &[], OutputKind::Folder, "--out")?;
    let s = l3kit::synth::synthesize(&l3kit::synth::SynthOptions {
        dialect: args.dialect,
        vocab: args.vocab,
        n_emb: args.n_emb,
        k_max: args.k_max,
        d_in: args.d_in,
        d_emb: args.d_emb,
        d_up: args.d_up,
        layers: args.layers,
        dtype: args.dtype,
        seed: args.seed,
        out: args.out,
        decoder: args
            .family
            .map(|SynthFamily::Tiny| l3kit::synth::TinyShape {
                n_layer: args.n_layer,
                n_head: args.n_head,
                block_size: args.block_size,
                mlp_hidden: args.mlp_hidden.unwrap_or(args.d_in.saturating_mul(4)),
            }),
    })?;
    if json {
        print_json(&s);
    } else {
        println!(
            "wrote {} ({}) and {}",
            s.checkpoint.display(),
            human_bytes(s.bytes as f64),
            s.allocation.display()
        );
    }
    Ok(())
}
