//! `l3kit profile`: its flags and its report.

use super::{id_split, parse_size_arg, print_json, CorpusArgs};
use clap::Args;
use l3kit::profile::lzw::LzwVariant;
use l3kit::profile::{self, ProfileOptions, ProfileSummary};
use l3kit::util::fs::{check_output, OutputKind};
use l3kit::util::progress::Ui;
use l3kit::Result;
use serde::Serialize;
use std::path::PathBuf;

#[derive(Args)]
pub(crate) struct ProfileArgs {
    #[command(flatten)]
    corpus: CorpusArgs,
    /// Pre-tokenised input: this id ends a sequence (and belongs to none).
    #[arg(long, conflicts_with = "seq_len")]
    separator: Option<u32>,
    /// Pre-tokenised input: cut into sequences of this many ids.
    #[arg(long)]
    seq_len: Option<usize>,
    /// LZW scan: the paper's reference (default) or textbook LZW.
    #[arg(long, value_enum, default_value = "reference")]
    lzw: LzwVariant,
    /// Stop (exit 2, nothing written) before the LZW dictionary's next growth would pass this
    /// much memory, e.g. 16GiB. Without it, profile warns once when the growth would pass 80%
    /// of the memory available at the start.
    #[arg(long, value_parser = parse_size_arg)]
    max_memory: Option<u64>,
    /// Where to write the profile (safetensors).
    #[arg(long)]
    out: PathBuf,
}

pub(crate) fn cmd_profile(args: ProfileArgs, ui: &Ui, json: bool) -> Result<()> {
    let split = id_split(args.separator, args.seq_len)?;
    check_output(&args.out, &args.corpus.files(), OutputKind::File, "--out")?;
    let opts = ProfileOptions {
        stream: args.corpus.stream_options(split)?,
        variant: args.lzw,
        max_memory: args.max_memory,
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
    if let Some(d) = s.dictionary_bytes {
        println!(
            "  dictionary        {:.1} MiB ({:.1} bytes per codeword)",
            d as f64 / (1 << 20) as f64,
            d as f64 / s.codewords.max(1) as f64
        );
    }
    if let Some(rss) = s.peak_rss_bytes {
        println!(
            "  peak memory       {:.1} MiB",
            rss as f64 / (1 << 20) as f64
        );
    }
}
