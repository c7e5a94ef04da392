//! `l3kit pack`: its flags and its report.

use super::{parse_size_arg, print_json, SourceArgs};
use clap::Args;
use l3kit::formats::dtype::TableDtype;
use l3kit::pack::{self, PackOptions, PackSummary};
use l3kit::util::progress::Ui;
use l3kit::util::units::human_bytes;
use l3kit::Result;
use std::path::PathBuf;

/// The float dtypes the tensors other than the tables can be converted to (int8 is a table
/// format: quantising W_up or the embeddings is not offered).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum OtherDtype {
    F32,
    Bf16,
    F16,
}

impl From<OtherDtype> for TableDtype {
    fn from(d: OtherDtype) -> TableDtype {
        match d {
            OtherDtype::F32 => TableDtype::F32,
            OtherDtype::Bf16 => TableDtype::Bf16,
            OtherDtype::F16 => TableDtype::F16,
        }
    }
}

#[derive(Args)]
pub(crate) struct PackArgs {
    /// A .safetensors file, a .pt/.bin file, or a checkpoint folder (sharded index allowed).
    source: PathBuf,
    #[command(flatten)]
    src: SourceArgs,
    /// Table dtype (default: the source's).
    #[arg(long, value_enum)]
    dtype: Option<TableDtype>,
    /// Convert the other floating-point tensors too (default: unchanged).
    #[arg(long, value_enum)]
    other_dtype: Option<OtherDtype>,
    /// Largest shard (e.g. 5GB, 500MB, 2GiB).
    #[arg(long, default_value = "5GB", value_parser = parse_size_arg)]
    max_shard_size: u64,
    /// Pack even if tables hold NaN or Inf. Float tables keep them as they are; int8 cannot
    /// represent them: a NaN is stored as 0 and an infinity makes its row part's scale NaN
    /// (every value of that part reads back as NaN). `verify` reports where they differ.
    #[arg(long)]
    allow_nonfinite: bool,
    /// Replace an existing output folder.
    #[arg(long)]
    force: bool,
    #[arg(long)]
    out: PathBuf,
}

pub(crate) fn cmd_pack(args: PackArgs, ui: &Ui, json: bool) -> Result<()> {
    let opts = PackOptions {
        source: args.source,
        out: args.out,
        dialect: args.src.dialect,
        map: args.src.map,
        allocation: args.src.allocation,
        dtype: args.dtype,
        other_dtype: args.other_dtype.map(TableDtype::from),
        max_shard_size: args.max_shard_size,
        force: args.force,
        allow_nonfinite: args.allow_nonfinite,
    };
    let summary = pack::pack(&opts, ui)?;
    if json {
        print_json(&summary);
    } else {
        print_pack(&summary);
    }
    Ok(())
}

pub(crate) fn print_pack(s: &PackSummary) {
    println!(
        "packed {} L3 layer(s), {} dialect ({} residual), vocab {}, tables as {}",
        s.layers.len(),
        s.dialect,
        s.residual,
        s.vocab_size,
        s.dtype.name()
    );
    match (s.allocation.from.as_str(), &s.allocation.path) {
        ("beside", Some(p)) => println!(
            "  allocation: {} from beside the checkpoint (the checkpoint has no bounds of its own)",
            p.display()
        ),
        ("file", Some(p)) => println!("  allocation: {}", p.display()),
        _ => println!("  allocation: the checkpoint's bounds"),
    }
    if !s.carried.is_empty() {
        println!("  carried over: {}", s.carried.join(", "));
    }
    for l in &s.layers {
        print!(
            "  {}: n_emb {} d_in {} d_emb {}, {} in {} part(s)",
            l.name,
            l.n_emb,
            l.d_in,
            l.d_emb,
            human_bytes(l.table_bytes as f64),
            l.parts
        );
        match &l.conversion_error {
            Some(e) => println!(
                ", conversion error: max abs {:.3e}, relative L2 {:.3e}",
                e.max_abs_error, e.relative_l2_error
            ),
            None => println!(", lossless"),
        }
    }
    for n in &s.nonfinite {
        println!(
            "  warning: {} holds {} non-finite values (first in row {}, token {})",
            n.tensor, n.count, n.first_row, n.first_token
        );
    }
    println!(
        "  read {} wrote {} in {} files, {:.2} s ({:.0} MB/s)",
        human_bytes(s.bytes_read as f64),
        human_bytes(s.bytes_written as f64),
        s.files.len(),
        s.seconds,
        s.bytes_read as f64 / s.seconds.max(1e-9) / 1e6
    );
    if let Some(rss) = s.peak_rss_bytes {
        println!("  peak memory {}", human_bytes(rss as f64));
    }
    println!("wrote {}", s.out.display());
}
