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
pub mod tokenize;
pub mod traffic;
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
    /// Where a packed folder's L3 rows are read from: ram (loaded at open), mmap (the page
    /// cache; the default) or disk (every read goes to the device: O_DIRECT). Packed folders
    /// only; the outputs are identical.
    #[arg(long, value_enum)]
    pub(crate) tables: Option<l3kit::serve::TableTier>,
    /// Keep the rows of the N most frequent tokens (by --profile) resident in memory, in front
    /// of the tier; reports give the share of blocks it served. The outputs are identical.
    #[arg(long, requires = "profile")]
    pub(crate) hot_set: Option<usize>,
    /// The profile that ranks tokens for --hot-set.
    #[arg(long, requires = "hot_set")]
    pub(crate) profile: Option<PathBuf>,
}

impl ModelArgs {
    pub(crate) fn prefetch(&self) -> bool {
        self.prefetch == OnOff::On
    }

    pub(crate) fn open(
        &self,
        src: &l3kit::verify::SourceOptions,
    ) -> l3kit::Result<l3kit::infer::OpenModel> {
        let mut model = self.open_path(&self.model, src, self.tables)?;
        if let (Some(n), Some(p)) = (self.hot_set, &self.profile) {
            let vocab = model.decoder.vocab_size();
            let tokens = l3kit::formats::profile::Profile::read_hot_set(p, n, vocab)?;
            model.decoder.use_hot_set(&tokens)?;
        }
        Ok(model)
    }

    /// Another model (a comparison's source) on the same device, its tables served the same
    /// way when it is a packed folder too.
    pub(crate) fn open_other(
        &self,
        path: &std::path::Path,
        src: &l3kit::verify::SourceOptions,
    ) -> l3kit::Result<l3kit::infer::OpenModel> {
        let tables = self.tables.filter(|_| l3kit::model::load::is_packed(path));
        self.open_path(path, src, tables)
    }

    fn open_path(
        &self,
        path: &std::path::Path,
        src: &l3kit::verify::SourceOptions,
        tables: Option<l3kit::serve::TableTier>,
    ) -> l3kit::Result<l3kit::infer::OpenModel> {
        let (device, note) = l3kit::model::select_device(&self.device)?;
        if let Some(n) = note {
            eprintln!("note: {n}");
        }
        l3kit::infer::OpenModel::open_tier(path, src, &device, tables)
    }
}

/// The corpus flags `profile` and `tokenize` share: the inputs and how they become token ids.
#[derive(clap::Args)]
pub(crate) struct CorpusArgs {
    /// Input files: text, JSON Lines, Parquet (text and JSONL may be gzip-compressed), or
    /// pre-tokenised little-endian u16/u32 ids.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// Hugging Face tokenizer.json.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Input format for every file (default: from each file name).
    #[arg(long, value_enum)]
    format: Option<l3kit::corpus::InputFormat>,
    /// The text field of JSON Lines records or the string column of Parquet files.
    #[arg(long)]
    field: Option<String>,
    /// Vocabulary size of pre-tokenised input (default: the tokenizer's).
    #[arg(long)]
    vocab_size: Option<u32>,
    /// Stop after a sample of at most this many tokens (whole sequences only).
    #[arg(long)]
    max_tokens: Option<u64>,
    /// Let the tokenizer add its special tokens (BOS/EOS) to every sequence.
    #[arg(long)]
    add_special_tokens: bool,
    /// The longest sequence accepted, in bytes of input: a text line or JSON Lines record
    /// (newline included), a Parquet value, or a run of ids (e.g. 16MiB; at most 1GiB).
    /// Tokenising a line takes about 130 times its size in memory with GPT-2's tokenizer.
    #[arg(long, value_parser = parse_size_arg, default_value = "4MiB")]
    max_sequence_bytes: u64,
}

impl CorpusArgs {
    /// The files an output must not overwrite.
    pub(crate) fn files(&self) -> Vec<&std::path::Path> {
        let mut v: Vec<&std::path::Path> = self.inputs.iter().map(PathBuf::as_path).collect();
        v.extend(self.tokenizer.as_deref());
        v
    }

    pub(crate) fn stream_options(
        &self,
        split: Option<l3kit::corpus::IdSplit>,
    ) -> l3kit::Result<l3kit::corpus::tokens::StreamOptions> {
        let limit = l3kit::corpus::MAX_SEQUENCE_BYTES_LIMIT;
        let max_sequence_bytes = usize::try_from(self.max_sequence_bytes)
            .ok()
            .filter(|&b| b <= limit)
            .ok_or_else(|| {
                l3kit::Error::input(format!(
                    "--max-sequence-bytes {} is above the limit of {limit} bytes (1 GiB)",
                    self.max_sequence_bytes
                ))
            })?;
        Ok(l3kit::corpus::tokens::StreamOptions {
            inputs: self.inputs.clone(),
            format: self.format,
            field: self.field.clone(),
            tokenizer: self.tokenizer.clone(),
            vocab_size: self.vocab_size,
            add_special_tokens: self.add_special_tokens,
            split,
            max_tokens: self.max_tokens,
            max_sequence_bytes,
        })
    }
}

/// How pre-tokenised input is cut into sequences: a separator id or a fixed length.
pub(crate) fn id_split(
    separator: Option<u32>,
    seq_len: Option<usize>,
) -> l3kit::Result<Option<l3kit::corpus::IdSplit>> {
    use l3kit::corpus::IdSplit;
    match (separator, seq_len) {
        (Some(s), _) => Ok(Some(IdSplit::Separator(s))),
        (None, Some(0)) => Err(l3kit::Error::input("--seq-len must be at least 1")),
        (None, Some(n)) => Ok(Some(IdSplit::SeqLen(n))),
        (None, None) => Ok(None),
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
