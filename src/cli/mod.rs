//! The `l3kit` command line, one file per command: its clap flags and its human report. The
//! library does the work and returns summaries; these files only parse and print. What several
//! commands share (the JSON printer, the source-checkpoint flags, the layer-shape flags) is here.

pub mod allocate;
pub mod demo;
pub mod evaluate;
pub mod forward;
pub mod inspect;
pub mod pack;
pub mod plan;
pub mod profile;
pub mod synth;
pub mod unpack;
pub mod upload;
pub mod verify;

use l3kit::allocate::LayerShape;
use l3kit::checkpoint::Dialect;
use l3kit::formats::dtype::TableDtype;
use serde::Serialize;
use std::path::PathBuf;

pub(crate) fn print_json<T: Serialize>(value: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("summaries serialise")
    );
}

#[derive(clap::Args)]
pub(crate) struct SourceArgs {
    /// Force the dialect instead of detecting it from tensor names.
    #[arg(long, value_enum)]
    dialect: Option<Dialect>,
    /// A TOML file naming each layer's tensors (for checkpoints with other names).
    #[arg(long)]
    map: Option<PathBuf>,
    /// The allocation (bounds) for checkpoints that do not carry it; must agree when both do.
    #[arg(long)]
    allocation: Option<PathBuf>,
}

pub(crate) fn source_options(src: &SourceArgs) -> l3kit::verify::SourceOptions {
    l3kit::verify::SourceOptions {
        dialect: src.dialect,
        map: src.map.clone(),
        allocation: src.allocation.clone(),
    }
}

pub(crate) fn parse_size_arg(s: &str) -> std::result::Result<u64, String> {
    l3kit::util::units::parse_size(s)
}

/// `--d-in/--d-emb/--tied/--dtype`: the layer shape for memory and bytes-per-token figures.
#[derive(clap::Args, Clone, Copy, Debug)]
pub(crate) struct LayerShapeArgs {
    /// Layer width, for the memory and bytes-per-token figures.
    #[arg(long)]
    pub d_in: Option<u64>,
    /// Value width (default d_in / 2, the paper's untied layout; d_in when --tied).
    #[arg(long)]
    pub d_emb: Option<u64>,
    /// Keys and values share one table (the nanochat dialect).
    #[arg(long)]
    pub tied: bool,
    #[arg(long, value_enum, default_value = "bf16")]
    pub dtype: TableDtype,
}

impl LayerShapeArgs {
    pub fn shape(&self) -> Option<LayerShape> {
        shape_of(self.d_in, self.d_emb, self.tied, self.dtype)
    }
}

/// The layer shape of `--d-in/--d-emb/--tied/--dtype` (d_emb defaults to d_in / 2, the
/// paper's untied layout, or d_in when tied).
pub(crate) fn shape_of(
    d_in: Option<u64>,
    d_emb: Option<u64>,
    tied: bool,
    dtype: TableDtype,
) -> Option<LayerShape> {
    d_in.map(|d_in| LayerShape {
        d_in,
        d_emb: d_emb.unwrap_or(if tied { d_in } else { (d_in / 2).max(1) }),
        tied,
        dtype,
    })
}
