//! The `l3kit` command line, one file per command: its clap flags and its human report. The
//! library does the work and returns summaries; these files only parse and print. What several
//! commands share (the JSON printer, the source-checkpoint flags, the layer-shape flags) is here.

pub mod allocate;
pub mod demo;
pub mod eval;
pub mod evaluate;
pub mod forward;
pub mod generate;
pub mod inspect;
pub mod pack;
pub mod plan;
pub mod profile;
pub mod route;
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

/// `--prefetch on|off`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OnOff {
    On,
    Off,
}

/// The model a whole-model command runs, and how it is served.
#[derive(clap::Args)]
pub(crate) struct ModelArgs {
    /// A packed folder or a source checkpoint folder.
    #[arg(long)]
    pub(crate) model: PathBuf,
    /// Gather each step's L3 rows on a background thread while the first blocks run (on), or
    /// inside each L3 layer (off). The outputs are identical.
    #[arg(long, value_enum, default_value = "on")]
    pub(crate) prefetch: OnOff,
    /// cpu, cuda or auto (CUDA if built with it and a GPU is present, else CPU).
    #[arg(long, default_value = "cpu")]
    pub(crate) device: String,
}

impl ModelArgs {
    pub(crate) fn prefetch(&self) -> bool {
        self.prefetch == OnOff::On
    }

    pub(crate) fn open(
        &self,
        src: &l3kit::verify::SourceOptions,
    ) -> l3kit::Result<l3kit::infer::OpenModel> {
        self.open_other(&self.model, src)
    }

    /// Another model (a comparison's source) with the same serving choices.
    pub(crate) fn open_other(
        &self,
        path: &std::path::Path,
        src: &l3kit::verify::SourceOptions,
    ) -> l3kit::Result<l3kit::infer::OpenModel> {
        let (device, note) = l3kit::model::select_device(&self.device)?;
        if let Some(n) = note {
            eprintln!("note: {n}");
        }
        l3kit::infer::OpenModel::open(path, src, &device)
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
