//! The `l3kit` command line: a thin clap layer over the library.

use clap::{Args, Parser, Subcommand};
use l3kit::allocate::{self, AllocateOptions, AllocationReport, FillPolicy, LayerShape, Method};
use l3kit::layout::TableDtype;
use l3kit::lzw::LzwVariant;
use l3kit::profile::{self, IdSplit, InputFormat, Profile, ProfileOptions, ProfileSummary};
use l3kit::progress::Ui;
use l3kit::{Error, Result};
use serde::Serialize;
use std::path::PathBuf;
use std::process::ExitCode;

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
    /// Run the pipeline on the bundled data (GPT-2 tokenizer, public-domain English text).
    Demo(DemoArgs),
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
    /// What to do when the LZW codewords run out before the budget is met.
    #[arg(long, value_enum)]
    fill: Option<FillPolicy>,
    /// Check the profile was made with this tokenizer, and show tokens as text.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Layer width, for the memory and bytes-per-token report.
    #[arg(long)]
    d_in: Option<u64>,
    /// Value width (default d_in / 2, the paper's untied layout; d_in when --tied).
    #[arg(long)]
    d_emb: Option<u64>,
    /// Keys and values share one table (the nanochat dialect).
    #[arg(long)]
    tied: bool,
    #[arg(long, value_enum, default_value = "bf16")]
    dtype: TableDtype,
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
        Command::Demo(args) => cmd_demo(args, &ui, cli.json),
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
    let shape = args.d_in.map(|d_in| LayerShape {
        d_in,
        d_emb: args
            .d_emb
            .unwrap_or(if args.tied { d_in } else { (d_in / 2).max(1) }),
        tied: args.tied,
        dtype: args.dtype,
    });
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
    }
    Ok(())
}
