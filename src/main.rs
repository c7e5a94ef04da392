//! The `l3kit` command line: a thin clap layer over the library.

use clap::{Args, Parser, Subcommand};
use l3kit::allocate::{self, AllocateOptions, AllocationReport, FillPolicy, Method};
use l3kit::dialect::Dialect;
use l3kit::layout::TableDtype;
use l3kit::lzw::LzwVariant;
use l3kit::pack::{self, PackOptions, PackSummary};
use l3kit::profile::{self, IdSplit, InputFormat, Profile, ProfileOptions, ProfileSummary};
use l3kit::util::progress::Ui;
use l3kit::{Error, Result};
use serde::Serialize;
use std::path::PathBuf;
use std::process::ExitCode;

mod cli_plan;

#[derive(Parser)]
#[command(
    name = "l3kit",
    version,
    about = "Toolkit for Large Lookup Layers (L3): profile a corpus, allocate embedding rows, pack, verify, publish",
    after_help = "Exit codes: 0 success, 1 a check failed, 2 bad input or usage.\n\nStart with `l3kit demo` to run the pipeline on the bundled data."
)]
struct Cli {
    /// Print a machine-readable JSON summary on stdout instead of the human report.
    #[arg(long, global = true)]
    json: bool,
    /// No progress bars (they are also hidden when stderr is not a terminal).
    #[arg(long, short, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Tokenise a corpus and collect unigram counts and the LZW codeword dictionary.
    #[command(after_help = "Examples:\n  \
        l3kit profile --tokenizer tokenizer.json corpus.txt --out profile.safetensors\n  \
        l3kit profile --tokenizer tokenizer.json --field text shard-*.parquet --max-tokens 100000000 --out p.safetensors\n  \
        l3kit profile --vocab-size 50257 --separator 50256 train.u16 --out p.safetensors")]
    Profile(ProfileArgs),
    /// Turn a profile into a per-token allocation (the CSR `bounds` of every L3 table).
    #[command(after_help = "Examples:\n  \
        l3kit allocate --profile p.safetensors --rows-per-token 3.9 --out alloc.safetensors\n  \
        l3kit allocate --profile p.safetensors --n-emb 710000 --k-max 512 --d-in 2048 --d-emb 1024 --dtype bf16 --out a.safetensors\n\n\
        Python: safetensors.numpy.load_file(\"alloc.safetensors\")[\"bounds\"]")]
    Allocate(AllocateArgs),
    /// Pack a trained checkpoint's L3 tables into offload-friendly safetensors shards.
    #[command(after_help = "Examples:\n  \
        l3kit pack ckpt/ --out packed/\n  \
        l3kit pack model.pt --allocation alloc.safetensors --dtype int8 --max-shard-size 2GB --out packed/\n  \
        l3kit pack ckpt.safetensors --map names.toml --dtype bf16 --out packed/")]
    Pack(PackArgs),
    /// Rebuild a checkpoint in the source dialect's layout from a packed folder.
    Unpack(UnpackArgs),
    /// Summarise a packed folder or a source checkpoint; --check verifies a packed folder.
    #[command(after_help = "Examples:\n  \
        l3kit inspect ckpt/                 # what pack would detect\n  \
        l3kit inspect packed/ --profile p.safetensors\n  \
        l3kit inspect --check packed/       # exit 1 on any mismatch")]
    Inspect(InspectArgs),
    /// Write a synthetic L3 checkpoint of any size (for benchmarks and tests).
    Synth(SynthArgs),
    /// Check packed tables against their source with the reference forward pass.
    #[command(after_help = "Examples:\n  \
        l3kit verify --source ckpt/ --packed packed/\n  \
        l3kit verify --source model.pt --allocation alloc.safetensors --packed packed/ --profile p.safetensors --tokens 4096\n  \
        l3kit verify --source ckpt/ --packed packed/ --inputs captured.safetensors --json")]
    Verify(VerifyArgs),
    /// Run every L3 layer of a packed folder or checkpoint on hidden states from a file.
    #[command(
        after_help = "Inputs: a safetensors file with `token_ids` [N] (I64, I32 or U32) and\n\
        `hidden` [N, d_in] or `hidden.<layer name>` per layer (floats).\n\
        Output: a safetensors file with `output.<layer name>` [N, d_in] (F32)."
    )]
    Forward(ForwardArgs),
    /// Evaluate any allocation on a held-out profile: coverage, E[d_t], bytes, starved tokens.
    #[command(after_help = "Examples:\n  \
        l3kit evaluate --allocation alloc.safetensors --profile heldout.safetensors\n  \
        l3kit evaluate --allocation alloc.safetensors --profile heldout.safetensors --train-profile train.safetensors \\\n      \
        --d-in 2048 --d-emb 1024 --dtype bf16 --tokenizer tokenizer.json")]
    Evaluate(cli_plan::EvaluateArgs),
    /// Sweep memory and E[d_t] budgets: coverage frontier as CSV, JSON, SVG and PNG.
    #[command(after_help = "Examples:\n  \
        l3kit plan --profile train.safetensors --heldout heldout.safetensors --out plan/\n  \
        l3kit plan --profile train.safetensors --rows-per-token 2,3.9,8 --mean-rows 2,4,8,16,32 --out plan/\n\n\
        Single allocations: l3kit allocate --method optimal --mean-rows M (or --max-bytes-per-token B).")]
    Plan(cli_plan::PlanArgs),
    /// Run the pipeline on the bundled data (GPT-2 tokenizer, public-domain English text).
    Demo(DemoArgs),
    /// Publish a packed folder to the Hugging Face Hub in one commit (checked first).
    #[command(after_help = "Examples:\n  \
        l3kit upload packed/ --repo my-org/my-l3-model --dry-run\n  \
        HF_TOKEN=hf_... l3kit upload packed/ --repo my-org/my-l3-model --private\n  \
        l3kit upload packed/ --repo my-org/my-l3-model --create-pr --commit-message \"int8 tables\"\n\n\
        Token: HF_TOKEN, else $HF_TOKEN_PATH, else $HF_HOME/token (~/.cache/huggingface/token).\n\
        Files the Hub already holds (same SHA-256 / git blob id) are not sent again.")]
    Upload(UploadArgs),
}

#[derive(Args)]
struct UploadArgs {
    /// A packed model folder (must pass `inspect --check`).
    dir: PathBuf,
    /// The Hub repository, OWNER/NAME (created when missing).
    #[arg(long)]
    repo: String,
    /// Create the repository as private.
    #[arg(long)]
    private: bool,
    /// The branch to commit to (it must exist).
    #[arg(long, default_value = "main")]
    revision: String,
    /// The commit's title (default: "Upload L3 model packed by l3kit").
    #[arg(long)]
    commit_message: Option<String>,
    /// Open a pull request against --revision instead of committing to it.
    #[arg(long)]
    create_pr: bool,
    /// The Hub's URL (default: $HF_ENDPOINT, else https://huggingface.co).
    #[arg(long)]
    endpoint: Option<String>,
    /// Check the folder and print the plan (files, sizes, large files); send nothing.
    #[arg(long)]
    dry_run: bool,
    /// Offer the Hub Git LFS only for large files, never Xet.
    #[arg(long)]
    no_xet: bool,
    /// Retries after a connection error or a 5xx answer, with exponential backoff.
    #[arg(long, default_value_t = 5)]
    retries: u32,
    /// Run `verify` against this source checkpoint first (random inputs, CPU); refuse to
    /// upload when it fails. --dialect, --map and --allocation describe the source.
    #[arg(long)]
    verify_with: Option<PathBuf>,
    #[command(flatten)]
    src: SourceArgs,
}

#[derive(Args)]
struct SourceArgs {
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

#[derive(Args)]
struct PackArgs {
    /// A .safetensors file, a .pt/.bin file, or a checkpoint folder (sharded index allowed).
    source: PathBuf,
    #[command(flatten)]
    src: SourceArgs,
    /// Table dtype (default: the source's).
    #[arg(long, value_enum)]
    dtype: Option<TableDtype>,
    /// Convert the other floating-point tensors too (default: unchanged).
    #[arg(long, value_enum)]
    other_dtype: Option<TableDtype>,
    /// Largest shard (e.g. 5GB, 500MB, 2GiB).
    #[arg(long, default_value = "5GB", value_parser = parse_size_arg)]
    max_shard_size: u64,
    /// Pack even if tables hold NaN or Inf.
    #[arg(long)]
    allow_nonfinite: bool,
    /// Replace an existing output folder.
    #[arg(long)]
    force: bool,
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
struct UnpackArgs {
    /// A packed folder.
    dir: PathBuf,
    #[arg(long, default_value = "5GB", value_parser = parse_size_arg)]
    max_shard_size: u64,
    #[arg(long)]
    force: bool,
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
struct InspectArgs {
    /// A packed folder, or a source checkpoint.
    path: PathBuf,
    /// Re-hash every file and check every invariant of a packed folder (exit 1 on mismatch).
    #[arg(long)]
    check: bool,
    /// A profile, for the expected bytes fetched per token.
    #[arg(long)]
    profile: Option<PathBuf>,
    #[command(flatten)]
    src: SourceArgs,
}

#[derive(Args)]
struct SynthArgs {
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
}

#[derive(Args)]
struct VerifyArgs {
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

#[derive(Args)]
struct ForwardArgs {
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

fn parse_size_arg(s: &str) -> std::result::Result<u64, String> {
    l3kit::pack::parse_size(s)
}

#[derive(Args)]
struct ProfileArgs {
    /// Input files: text, JSON Lines, Parquet (text and JSONL may be gzip-compressed), or
    /// pre-tokenised little-endian u16/u32 ids.
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
    /// Hugging Face tokenizer.json.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Input format for every file (default: from each file name).
    #[arg(long, value_enum)]
    format: Option<InputFormat>,
    /// The text field of JSON Lines records or the string column of Parquet files.
    #[arg(long)]
    field: Option<String>,
    /// Vocabulary size of pre-tokenised input (default: the tokenizer's).
    #[arg(long)]
    vocab_size: Option<u32>,
    /// Pre-tokenised input: this id ends a sequence (and belongs to none).
    #[arg(long, conflicts_with = "seq_len")]
    separator: Option<u32>,
    /// Pre-tokenised input: cut into sequences of this many ids.
    #[arg(long)]
    seq_len: Option<usize>,
    /// Stop after a sample of at most this many tokens (whole sequences only).
    #[arg(long)]
    max_tokens: Option<u64>,
    /// Let the tokenizer add its special tokens (BOS/EOS) to every sequence.
    #[arg(long)]
    add_special_tokens: bool,
    /// LZW scan: the paper's reference (default) or textbook LZW.
    #[arg(long, value_enum, default_value = "reference")]
    lzw: LzwVariant,
    /// Where to write the profile (safetensors).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
struct AllocateArgs {
    #[arg(long)]
    profile: PathBuf,
    /// Total rows per L3 table (the memory budget).
    #[arg(
        long,
        required_unless_present = "rows_per_token",
        conflicts_with = "rows_per_token"
    )]
    n_emb: Option<u64>,
    /// Budget as a ratio: n_emb = round(R x vocab).
    #[arg(long)]
    rows_per_token: Option<f64>,
    /// Most rows any token may own.
    #[arg(long, default_value_t = 512)]
    k_max: u32,
    #[arg(long, value_enum, default_value = "lzw")]
    method: Method,
    /// With --method optimal: cap the expected rows per token E[d_t] (unigram-weighted).
    #[arg(long, conflicts_with = "max_bytes_per_token")]
    mean_rows: Option<f64>,
    /// With --method optimal: cap the expected bytes fetched per token per layer (e.g. 2MB;
    /// needs --d-in, and --d-emb, --tied, --dtype to price a row).
    #[arg(long, value_parser = parse_size_arg)]
    max_bytes_per_token: Option<u64>,
    /// What to do when the LZW codewords run out before the budget is met.
    #[arg(long, value_enum)]
    fill: Option<FillPolicy>,
    /// Check the profile was made with this tokenizer, and show tokens as text.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    #[command(flatten)]
    layer: cli_plan::LayerShapeArgs,
    /// Where to write the allocation (safetensors with an I64 `bounds` tensor).
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
struct DemoArgs {
    /// The bundled data folder (default: this source tree's fixtures/).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Where to write the demo's outputs.
    #[arg(long, default_value = "target/l3kit-demo")]
    out: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let ui = Ui { quiet: cli.quiet };
    let result = match cli.command {
        Command::Profile(args) => cmd_profile(args, &ui, cli.json),
        Command::Allocate(args) => cmd_allocate(args, cli.json),
        Command::Pack(args) => cmd_pack(args, &ui, cli.json),
        Command::Unpack(args) => cmd_unpack(args, &ui, cli.json),
        Command::Inspect(args) => cmd_inspect(args, &ui, cli.json),
        Command::Synth(args) => cmd_synth(args, cli.json),
        Command::Verify(args) => cmd_verify(args, &ui, cli.json),
        Command::Forward(args) => cmd_forward(args, cli.json),
        Command::Evaluate(args) => cli_plan::cmd_evaluate(args, cli.json),
        Command::Plan(args) => cli_plan::cmd_plan(args, &ui, cli.json),
        Command::Demo(args) => cmd_demo(args, &ui, cli.json),
        Command::Upload(args) => cmd_upload(args, &ui, cli.json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

fn print_json<T: Serialize>(value: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("summaries serialise")
    );
}

fn cmd_profile(args: ProfileArgs, ui: &Ui, json: bool) -> Result<()> {
    let split = match (args.separator, args.seq_len) {
        (Some(s), _) => Some(IdSplit::Separator(s)),
        (None, Some(0)) => return Err(Error::input("--seq-len must be at least 1")),
        (None, Some(n)) => Some(IdSplit::SeqLen(n)),
        (None, None) => None,
    };
    let opts = ProfileOptions {
        inputs: args.inputs,
        format: args.format,
        field: args.field,
        tokenizer: args.tokenizer,
        vocab_size: args.vocab_size,
        add_special_tokens: args.add_special_tokens,
        split,
        max_tokens: args.max_tokens,
        variant: args.lzw,
    };
    let (profile, summary) = profile::run(&opts, ui)?;
    profile.write(&args.out)?;
    if json {
        #[derive(Serialize)]
        struct Out<'a> {
            out: &'a PathBuf,
            #[serde(flatten)]
            summary: &'a ProfileSummary,
        }
        print_json(&Out {
            out: &args.out,
            summary: &summary,
        });
    } else {
        print_profile(&summary);
        println!("wrote {}", args.out.display());
    }
    Ok(())
}

fn print_profile(s: &ProfileSummary) {
    println!("profile");
    println!("  tokens            {}", s.tokens);
    println!("  sequences         {}", s.sequences);
    println!(
        "  vocabulary        {} ({} seen)",
        s.vocab_size, s.distinct_tokens
    );
    println!("  codewords         {}", s.codewords);
    println!(
        "  unigram entropy   {:.3} bits/token",
        s.unigram_entropy_bits
    );
    println!("  mean LZW phrase   {:.3} tokens", s.mean_phrase_length);
    println!(
        "  throughput        {:.0} tokens/s ({:.1} MB/s, {:.2} s)",
        s.tokens_per_second,
        s.input_bytes as f64 / s.seconds.max(1e-9) / 1e6,
        s.seconds
    );
    if let Some(rss) = s.peak_rss_bytes {
        println!(
            "  peak memory       {:.1} MiB",
            rss as f64 / (1 << 20) as f64
        );
    }
}

fn cmd_allocate(args: AllocateArgs, json: bool) -> Result<()> {
    let profile = Profile::read(&args.profile)?;
    let tokenizer = match &args.tokenizer {
        Some(path) => {
            profile.check_tokenizer(&args.profile, path)?;
            Some(profile::load_tokenizer(path)?.0)
        }
        None => None,
    };
    let vocab = profile.meta.vocab_size as u64;
    let n_emb = match (args.n_emb, args.rows_per_token) {
        (Some(n), _) => n,
        (None, Some(r)) if r.is_finite() && r > 0.0 => (r * vocab as f64).round() as u64,
        (None, Some(r)) => {
            return Err(Error::input(format!(
                "--rows-per-token {r} must be a positive number"
            )))
        }
        (None, None) => unreachable!("clap requires one of them"),
    };
    if args.method == Method::Optimal {
        return cli_plan::cmd_allocate_optimal(&args, &profile, n_emb, tokenizer.as_ref(), json);
    }
    cli_plan::budget_of(&args, None)?;
    let alloc = allocate::allocate(
        &profile,
        &AllocateOptions {
            n_emb,
            k_max: args.k_max,
            method: args.method,
            fill: args.fill,
        },
    )?;
    alloc.write(&args.out)?;
    let shape = args.layer.shape();
    let report = allocate::report(&alloc, Some(&profile.unigram), shape, tokenizer.as_ref());
    if json {
        #[derive(Serialize)]
        struct Out<'a> {
            out: &'a PathBuf,
            #[serde(flatten)]
            report: &'a AllocationReport,
        }
        print_json(&Out {
            out: &args.out,
            report: &report,
        });
    } else {
        print_allocation(&report);
        println!("wrote {}", args.out.display());
    }
    Ok(())
}

fn human_bytes(b: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{v:.0} B")
    } else {
        format!("{v:.2} {}", UNITS[i])
    }
}

fn print_allocation(r: &AllocationReport) {
    println!("allocation ({})", r.method);
    println!(
        "  vocabulary {}  n_emb {}  k_max {}  mean rows/token {:.3}",
        r.vocab_size, r.n_emb, r.k_max, r.mean_rows_per_token
    );
    if let Some(e) = r.expected_rows_per_token {
        println!(
            "  expected rows per token E[d_t] {e:.2} (under the profile's unigram distribution)"
        );
    }
    println!(
        "  tokens at the cap {}  largest block {}",
        r.tokens_at_cap, r.max_rows
    );
    if let Some(fill) = &r.fill {
        println!("  fill policy {fill} placed {} rows", r.fill_rows);
    }
    println!("  rows per token      tokens        rows");
    for b in &r.histogram {
        println!("  {:>13} {:>11} {:>11}", b.label, b.tokens, b.rows);
    }
    if let Some(m) = &r.memory {
        println!(
            "  layer d_in {} d_emb {}{} {}: {} per row, {} per L3 layer",
            m.d_in,
            m.d_emb,
            if m.tied { " (tied)" } else { "" },
            m.dtype.name(),
            human_bytes(m.bytes_per_row as f64),
            human_bytes(m.bytes_per_layer as f64)
        );
        print!(
            "  fetched per token per layer: worst case {}",
            human_bytes(m.worst_case_bytes_per_token as f64)
        );
        match m.expected_bytes_per_token {
            Some(e) => println!(", expected {}", human_bytes(e)),
            None => println!(),
        }
    }
    if !r.top_tokens.is_empty() {
        println!("  largest blocks:");
        for t in &r.top_tokens {
            let text = t
                .text
                .as_deref()
                .map(|s| format!(" {s:?}"))
                .unwrap_or_default();
            println!(
                "    token {:>6}{text}: {} rows, count {}",
                t.id, t.rows, t.count
            );
        }
    }
}

fn cmd_demo(args: DemoArgs, ui: &Ui, json: bool) -> Result<()> {
    let data = args.data.unwrap_or_else(l3kit::demo::default_data_dir);
    let result = l3kit::demo::run(&data, &args.out, ui)?;
    if json {
        print_json(&result);
    } else {
        println!("== 1. profile: {}", result.profile_path.display());
        print_profile(&result.profile);
        println!("\n== 2. allocate: {}", result.allocation_path.display());
        print_allocation(&result.allocation);
        println!(
            "\n== 3. plan: context coverage vs expected rows per token E[d_t] (training vs held-out)"
        );
        cli_plan::print_demo_plan(&result.plan);
        let t = &result.trained;
        println!("\n== 4. pack: the bundled trained model (fixtures/trained), int8 tables");
        println!(
            "  its allocation, re-derived from the corpus with its tokenizer (4 rows/token, k_max 64): {}",
            if t.allocation_matches_training {
                "identical to the one it was trained with"
            } else {
                "DIFFERS"
            }
        );
        print_pack(&t.pack);
        println!(
            "  inspect --check: {} files re-hashed, {}",
            t.check.files_hashed,
            if t.check.ok() {
                "every invariant holds".to_string()
            } else {
                format!("{} problems", t.check.problems.len())
            }
        );
        println!(
            "\n== 5. verify: packed against source on {}",
            t.verify.inputs
        );
        for l in &t.verify.layers {
            println!(
                "  {} {}: relative L2 {:.2e} (tolerance {:.0e}), cosine {:.6}, max abs {:.2e}",
                if l.passed { "ok  " } else { "FAIL" },
                l.name,
                l.relative_l2_error,
                l.tolerance,
                l.cosine_similarity,
                l.max_abs_error
            );
        }
    }
    Ok(())
}

fn cmd_pack(args: PackArgs, ui: &Ui, json: bool) -> Result<()> {
    let opts = PackOptions {
        source: args.source,
        out: args.out,
        dialect: args.src.dialect,
        map: args.src.map,
        allocation: args.src.allocation,
        dtype: args.dtype,
        other_dtype: args.other_dtype,
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

fn print_pack(s: &PackSummary) {
    println!(
        "packed {} L3 layer(s), {} dialect, vocab {}, tables as {}",
        s.layers.len(),
        s.dialect,
        s.vocab_size,
        s.dtype.name()
    );
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

fn cmd_unpack(args: UnpackArgs, ui: &Ui, json: bool) -> Result<()> {
    let summary = pack::unpack::unpack(
        &pack::unpack::UnpackOptions {
            dir: args.dir,
            out: args.out,
            force: args.force,
            max_shard_size: args.max_shard_size,
        },
        ui,
    )?;
    if json {
        print_json(&summary);
    } else {
        println!(
            "unpacked {} tensors ({}) into {}: {}",
            summary.tensors,
            human_bytes(summary.bytes as f64),
            summary.out.display(),
            summary.files.join(", ")
        );
    }
    Ok(())
}

fn cmd_inspect(args: InspectArgs, ui: &Ui, json: bool) -> Result<()> {
    if args.check {
        let report = pack::inspect::check_packed(&args.path, ui);
        if json {
            print_json(&report);
        } else if report.ok() {
            println!(
                "ok: {} files ({}) re-hashed, every invariant holds",
                report.files_hashed,
                human_bytes(report.bytes_hashed as f64)
            );
        } else {
            for p in &report.problems {
                println!("problem: {p}");
            }
        }
        if !report.ok() {
            return Err(Error::Check(format!(
                "{}: {} problem(s) found",
                args.path.display(),
                report.problems.len()
            )));
        }
        return Ok(());
    }
    if l3kit::verify::is_packed(&args.path) {
        let profile = match &args.profile {
            Some(p) => Some(Profile::read(p)?),
            None => None,
        };
        let r = pack::inspect::inspect_packed(&args.path, profile.as_ref())?;
        if json {
            print_json(&r);
            return Ok(());
        }
        println!(
            "packed model {} (format v{}, {} dialect): vocab {}, k_max {}, tables {}, {} files, {}",
            r.dir.display(),
            r.format_version,
            r.dialect,
            r.vocab_size,
            r.k_max,
            r.dtype.name(),
            r.files,
            human_bytes(r.total_bytes as f64)
        );
        println!(
            "  semantics {}",
            serde_json::to_string(&r.semantics).expect("serialises")
        );
        for l in &r.layers {
            print!(
                "  {}: n_emb {} d_in {} d_emb {} d_up {}, {} in {} part(s), worst case {} per token",
                l.name,
                l.n_emb,
                l.d_in,
                l.d_emb,
                l.d_up,
                human_bytes(l.table_bytes as f64),
                l.parts,
                human_bytes(l.worst_case_bytes_per_token as f64)
            );
            match l.expected_bytes_per_token {
                Some(e) => println!(", expected {}", human_bytes(e)),
                None => println!(),
            }
        }
        return Ok(());
    }
    let r = pack::inspect::inspect_source(
        &args.path,
        args.src.dialect,
        args.src.map.as_deref(),
        args.src.allocation.as_deref(),
    )?;
    if json {
        print_json(&r);
        return Ok(());
    }
    println!(
        "checkpoint {} ({} dialect{})",
        r.path.display(),
        r.dialect,
        r.vocab_size
            .map(|v| format!(", vocab {v}"))
            .unwrap_or_default()
    );
    println!(
        "  semantics {}",
        serde_json::to_string(&r.semantics).expect("serialises")
    );
    for l in &r.layers {
        println!(
            "  {} (layer {}): {} {}{}, n_emb {} d_in {} d_emb {} d_up {}{}",
            l.name,
            l.layer_id
                .map(|i| i.to_string())
                .unwrap_or_else(|| "?".into()),
            l.keys,
            l.dtype,
            if l.tied { ", tied K = V" } else { "" },
            l.n_emb,
            l.d_in,
            l.d_emb,
            l.d_up,
            l.lambda
                .as_ref()
                .map(|x| format!(", lambda {x}"))
                .unwrap_or_default()
        );
        println!("      allocation: {}", l.allocation_from);
    }
    println!(
        "  {} other tensors ({}) pass through unchanged",
        r.other_tensors,
        human_bytes(r.other_bytes as f64)
    );
    Ok(())
}

fn cmd_synth(args: SynthArgs, json: bool) -> Result<()> {
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

fn cmd_upload(args: UploadArgs, ui: &Ui, json: bool) -> Result<()> {
    let mut opts = l3kit::hub::UploadOptions::new(args.dir, args.repo);
    opts.private = args.private;
    opts.revision = args.revision;
    opts.commit_message = args.commit_message;
    opts.create_pr = args.create_pr;
    opts.endpoint = args.endpoint;
    opts.dry_run = args.dry_run;
    opts.xet = !args.no_xet;
    opts.retry.max_retries = args.retries;
    opts.verify = args.verify_with.map(|source| l3kit::verify::VerifyOptions {
        source,
        packed: opts.dir.clone(),
        source_opts: source_options(&args.src),
        inputs: None,
        profile: None,
        tokens: 1024,
        seed: 0,
        device: "cpu".to_string(),
        tolerance: None,
    });
    let summary = l3kit::hub::upload(&opts, ui)?;
    if json {
        print_json(&summary);
    } else {
        print!("{}", summary.render());
    }
    Ok(())
}

fn source_options(src: &SourceArgs) -> l3kit::verify::SourceOptions {
    l3kit::verify::SourceOptions {
        dialect: src.dialect,
        map: src.map.clone(),
        allocation: src.allocation.clone(),
    }
}

fn cmd_verify(args: VerifyArgs, ui: &Ui, json: bool) -> Result<()> {
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

fn cmd_forward(args: ForwardArgs, json: bool) -> Result<()> {
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
