//! `l3kit eval`: its flags and its report.

use super::{print_json, source_options, ModelArgs, SourceArgs};
use clap::Args;
use l3kit::formats::profile::InputFormat;
use l3kit::infer::eval::{self, EvalOptions, EvalReport, ModelFigures};
use l3kit::util::progress::Ui;
use l3kit::{Error, Result};
use std::path::PathBuf;

#[derive(Args)]
pub(crate) struct EvalArgs {
    /// Text to evaluate on (text, JSON Lines, Parquet; one record per line/record/row).
    #[arg(required = true)]
    pub(crate) texts: Vec<PathBuf>,
    #[command(flatten)]
    pub(crate) model: ModelArgs,
    /// Hugging Face tokenizer.json of the model.
    #[arg(long)]
    pub(crate) tokenizer: PathBuf,
    /// Window length (default: the model's training context).
    #[arg(long)]
    pub(crate) seq_len: Option<usize>,
    /// Evaluate at most this many tokens of the stream.
    #[arg(long)]
    pub(crate) max_tokens: Option<u64>,
    /// Input format for every file (default: from each file name).
    #[arg(long, value_enum)]
    pub(crate) format: Option<InputFormat>,
    /// The text field of JSON Lines records or the string column of Parquet files.
    #[arg(long)]
    pub(crate) field: Option<String>,
    /// Each text file is one record (default: one record per line, as `profile` reads).
    #[arg(long)]
    pub(crate) whole_file: bool,
    /// The source checkpoint of a packed --model: evaluate both and compare.
    #[arg(long)]
    pub(crate) compare: Option<PathBuf>,
    /// With --compare: the allowed relative perplexity increase (default: by table dtype).
    #[arg(long)]
    pub(crate) max_ppl_increase: Option<f64>,
    #[command(flatten)]
    pub(crate) src: SourceArgs,
}

pub(crate) fn cmd_eval(args: EvalArgs, ui: &Ui, json: bool) -> Result<()> {
    if let Some(m) = args.max_ppl_increase {
        if !(m.is_finite() && m >= 0.0) {
            return Err(Error::input(format!(
                "--max-ppl-increase {m}: must be a number >= 0"
            )));
        }
    }
    let loaded = args.model.open(&source_options(&args.src))?;
    let (tokenizer, _) = l3kit::formats::tokenizer::load_tokenizer(&args.tokenizer)?;
    let bos = loaded.bos_for(&tokenizer, &args.tokenizer)?;
    let stream = eval::token_stream(
        &args.texts,
        args.format,
        args.field.as_deref(),
        args.whole_file,
        &tokenizer,
        bos,
        args.max_tokens,
    )?;
    let source = match &args.compare {
        Some(p) => Some(args.model.open_other(p, &source_options(&args.src))?),
        None => None,
    };
    let report = eval::eval(
        (&loaded.decoder, &loaded.path),
        source.as_ref().map(|s| (&s.decoder, s.path.as_path())),
        &stream,
        &tokenizer,
        loaded.packed_dtype,
        &EvalOptions {
            seq_len: args.seq_len,
            prefetch: args.model.prefetch(),
            max_ppl_increase: args.max_ppl_increase,
            ui,
        },
    )?;
    if json {
        print_json(&report);
    } else {
        print_report(&report);
    }
    match &report.comparison {
        Some(c) if !c.passed => Err(Error::Check(format!(
            "{}: perplexity rose {:.3e} (relative) over the source, more than the allowed {:.1e}",
            report.result.model.display(),
            c.relative_perplexity_change,
            c.max_perplexity_increase
        ))),
        _ => Ok(()),
    }
}

fn print_figures(f: &ModelFigures) {
    println!(
        "  {}: mean NLL {:.6}, perplexity {:.4}, {:.4} bits/byte ({:.0} tokens/s)",
        f.model.display(),
        f.mean_nll,
        f.perplexity,
        f.bits_per_byte,
        f.tokens_per_second
    );
    if f.serving.bytes_read > 0 {
        println!("    {}", f.serving.describe());
    }
}

fn print_report(r: &EvalReport) {
    println!(
        "eval ({} family): {} records, {} tokens, {} windows of {} (+1), {} targets, {} bytes",
        r.family, r.records, r.stream_tokens, r.windows, r.seq_len, r.targets, r.bytes
    );
    print_figures(&r.result);
    if let (Some(s), Some(c)) = (&r.source, &r.comparison) {
        print_figures(s);
        println!(
            "  {} perplexity change {:+.3e} (allowed {:.1e}), top-1 prediction changed at {:.3}% of positions",
            if c.passed { "ok  " } else { "FAIL" },
            c.relative_perplexity_change,
            c.max_perplexity_increase,
            100.0 * c.top1_changed
        );
    }
}
