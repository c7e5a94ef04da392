//! `l3kit tokenize`: its flags and its report.

use super::{id_split, print_json, CorpusArgs};
use clap::Args;
use l3kit::corpus::tokenize::{default_manifest, tokenize, TokenizeOptions, TokenizeSummary};
use l3kit::util::fs::{check_output, OutputKind};
use l3kit::util::progress::Ui;
use l3kit::Result;
use std::path::PathBuf;

#[derive(Args)]
pub(crate) struct TokenizeArgs {
    #[command(flatten)]
    corpus: CorpusArgs,
    /// The id written after every sequence (default: the tokenizer's <|endoftext|> or a
    /// similar end-of-text token). It must not occur inside a sequence.
    #[arg(long)]
    separator: Option<u32>,
    /// Pre-tokenised input: this id ends an input sequence (re-sharding id files).
    #[arg(long, conflicts_with = "seq_len")]
    input_separator: Option<u32>,
    /// Pre-tokenised input: cut into sequences of this many ids.
    #[arg(long)]
    seq_len: Option<usize>,
    /// The id file to write: .u16 or .u32 (the id width, little-endian).
    #[arg(long)]
    out: PathBuf,
    /// The manifest (default: the id file's name with .json added).
    #[arg(long)]
    manifest: Option<PathBuf>,
}

pub(crate) fn cmd_tokenize(args: TokenizeArgs, ui: &Ui, json: bool) -> Result<()> {
    let split = id_split(args.input_separator, args.seq_len)?;
    let manifest = args
        .manifest
        .clone()
        .unwrap_or_else(|| default_manifest(&args.out));
    let inputs = args.corpus.files();
    check_output(&args.out, &inputs, OutputKind::File, "--out")?;
    let mut with_ids = inputs.clone();
    with_ids.push(&args.out);
    check_output(&manifest, &with_ids, OutputKind::File, "--manifest")?;
    let s = tokenize(
        &TokenizeOptions {
            stream: args.corpus.stream_options(split)?,
            out: args.out.clone(),
            manifest: Some(manifest),
            separator: args.separator,
        },
        ui,
    )?;
    if json {
        print_json(&s);
    } else {
        print_summary(&s, &args.out);
    }
    Ok(())
}

fn print_summary(s: &TokenizeSummary, out: &std::path::Path) {
    let m = &s.manifest;
    println!("tokenize");
    println!("  sequences         {}", m.sequences);
    println!("  tokens            {}", m.tokens);
    println!(
        "  ids written       {} ({}, separator {} after every sequence)",
        m.ids_written, m.dtype, m.separator
    );
    println!(
        "  throughput        {:.0} tokens/s ({:.2} s)",
        s.tokens_per_second, s.seconds
    );
    println!("wrote {} and {}", out.display(), s.manifest_path.display());
    println!("profile it with: {}", m.profile_with);
}
