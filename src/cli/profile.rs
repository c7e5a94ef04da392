//! `l3kit profile`: its flags and its report.

use super::{parse_size_arg, print_json};
use clap::Args;
use l3kit::corpus::MAX_SEQUENCE_BYTES_LIMIT;
use l3kit::profile::lzw::LzwVariant;
use l3kit::profile::{self, IdSplit, InputFormat, ProfileOptions, ProfileSummary};
use l3kit::util::fs::{check_output, OutputKind};
use l3kit::util::progress::Ui;
use l3kit::{Error, Result};
use serde::Serialize;
use std::path::PathBuf;

#[derive(Args)]
pub(crate) struct ProfileArgs {
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
    /// The longest sequence accepted, in bytes of input: a text line or JSON Lines record
    /// (newline included), a Parquet value, or a run of ids (e.g. 16MiB; at most 1GiB).
    /// Tokenising a line takes about 130 times its size in memory with GPT-2's tokenizer.
    #[arg(long, value_parser = parse_size_arg, default_value = "4MiB")]
    max_sequence_bytes: u64,
    /// LZW scan: the paper's reference (default) or textbook LZW.
    #[arg(long, value_enum, default_value = "reference")]
    lzw: LzwVariant,
    /// Where to write the profile (safetensors).
    #[arg(long)]
    out: PathBuf,
}

pub(crate) fn cmd_profile(args: ProfileArgs, ui: &Ui, json: bool) -> Result<()> {
    let split = match (args.separator, args.seq_len) {
        (Some(s), _) => Some(IdSplit::Separator(s)),
        (None, Some(0)) => return Err(Error::input("--seq-len must be at least 1")),
        (None, Some(n)) => Some(IdSplit::SeqLen(n)),
        (None, None) => None,
    };
    let mut inputs: Vec<&std::path::Path> = args.inputs.iter().map(PathBuf::as_path).collect();
    inputs.extend(args.tokenizer.as_deref());
    check_output(&args.out, &inputs, OutputKind::File, "--out")?;
    let max_sequence_bytes = usize::try_from(args.max_sequence_bytes)
        .ok()
        .filter(|&b| b <= MAX_SEQUENCE_BYTES_LIMIT)
        .ok_or_else(|| {
            Error::input(format!(
                "--max-sequence-bytes {} is above the limit of {MAX_SEQUENCE_BYTES_LIMIT} bytes (1 GiB)",
                args.max_sequence_bytes
            ))
        })?;
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
        max_sequence_bytes,
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

pub(crate) fn print_profile(s: &ProfileSummary) {
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
