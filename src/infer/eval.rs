//! `l3kit eval`: mean negative log-likelihood, perplexity and bits per byte of a model over
//! text, cut into windows the way the model family was trained; with `--compare`, a source
//! checkpoint and its packed folder side by side.
//!
//! The rule (also in `docs/verify.md`, and what `fixtures/make_decoder_golden.py` computes in
//! PyTorch):
//!
//! - **records**: the inputs are read with the corpus readers (`profile`'s: a text line with its
//!   newline, a JSON Lines record, a Parquet row; `--whole-file` makes each text file one
//!   record); each record is tokenised on its own (no special tokens added); families that
//!   start documents with a BOS token (nanochat) get it before every record; the ids of all
//!   records are concatenated into one stream, cut to `--max-tokens` if given;
//! - **windows**: with S = `--seq-len` (default: the model's training context), window k is
//!   `stream[k*S .. k*S + S + 1]`: inputs are its first S ids, targets the next S; the last,
//!   shorter window is kept when it has at least 2 ids; every window starts from position 0;
//! - **figures**: `mean_nll` = sum of -ln p(target) over all targets / targets, computed from
//!   f32 logits with a float64 log-softmax; `perplexity` = exp(mean_nll); `bytes` = sum over
//!   windows of the UTF-8 length of the decoded targets (special tokens skipped);
//!   `bits_per_byte` = total nll / ln 2 / bytes.

use crate::corpus::{self, RawBatch, ReadOptions};
use crate::formats::profile::InputFormat;
use crate::model::decoder::Decoder;
use crate::model::runtime::{L3Runtime, ServingStats};
use crate::util::error::{Error, Result};
use crate::util::fs::read_small_text;
use crate::util::progress::Ui;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

/// Windows evaluated in one forward.
const BATCH_WINDOWS: usize = 8;

/// The token stream of the inputs and what it came from.
pub struct Stream {
    pub ids: Vec<u32>,
    pub records: u64,
}

/// The largest text file `--whole-file` reads as one record.
pub const WHOLE_FILE_LIMIT: u64 = 256 << 20;

fn push_record(
    tokenizer: &tokenizers::Tokenizer,
    bos: Option<u32>,
    ids: &mut Vec<u32>,
    records: &mut u64,
    text: &str,
    origin: &dyn Fn() -> String,
) -> Result<()> {
    let enc = tokenizer
        .encode_fast(text, false)
        .map_err(|e| Error::input(format!("{}: tokenisation failed: {e}", origin())))?;
    if let Some(b) = bos {
        ids.push(b);
    }
    ids.extend_from_slice(enc.get_ids());
    *records += 1;
    Ok(())
}

/// Tokenise the inputs into one stream (see the module documentation).
pub fn token_stream(
    inputs: &[PathBuf],
    format: Option<InputFormat>,
    field: Option<&str>,
    whole_file: bool,
    tokenizer: &tokenizers::Tokenizer,
    bos: Option<u32>,
    max_tokens: Option<u64>,
) -> Result<Stream> {
    let mut ids = Vec::new();
    let mut records = 0u64;
    let limit = max_tokens.unwrap_or(u64::MAX) as usize;
    let progress = Arc::new(AtomicU64::new(0));
    for path in inputs {
        if ids.len() >= limit {
            break;
        }
        let fmt = match format {
            Some(f) => f,
            None => InputFormat::infer(path)?,
        };
        if fmt.is_pretokenised() {
            return Err(Error::in_file(
                path,
                "eval reads text (text, JSON Lines, Parquet): pass --prompt-ids style ids to \
                 generate instead, or a text file",
            ));
        }
        if whole_file && fmt == InputFormat::Text {
            let text = read_small_text(path, WHOLE_FILE_LIMIT, "a --whole-file record")?;
            push_record(tokenizer, bos, &mut ids, &mut records, &text, &|| {
                path.display().to_string()
            })?;
            continue;
        }
        let mut opts = ReadOptions::new(0);
        opts.field = field.map(str::to_string);
        let mut failed = None;
        corpus::read_file(path, fmt, &opts, &progress, &mut |batch| {
            if let RawBatch::Text { origin, texts } = batch {
                for (i, t) in texts.iter().enumerate() {
                    let pushed = push_record(tokenizer, bos, &mut ids, &mut records, t, &|| {
                        origin.describe(i)
                    });
                    if let Err(e) = pushed {
                        failed = Some(e);
                        return false;
                    }
                    if ids.len() >= limit {
                        return false;
                    }
                }
            }
            true
        })?;
        if let Some(e) = failed {
            return Err(e);
        }
    }
    ids.truncate(limit);
    Ok(Stream { ids, records })
}

/// The windows of a stream: (start, length in ids including the last target).
pub fn windows(stream_len: usize, seq_len: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut k = 0;
    while k * seq_len + 1 < stream_len {
        let start = k * seq_len;
        let len = (seq_len + 1).min(stream_len - start);
        out.push((start, len));
        k += 1;
    }
    out
}

/// Per-target results of one model over the windows.
struct Scored {
    nll: Vec<f64>,
    argmax: Vec<u32>,
    stats: ServingStats,
    seconds: f64,
}

fn log_softmax_at(row: &[f32], target: usize) -> (f64, u32) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
    let lp = row[target] as f64 - max - sum.ln();
    (-lp, crate::model::sampling::argmax(row) as u32)
}

fn score(
    model: &Decoder,
    stream: &[u32],
    wins: &[(usize, usize)],
    prefetch: bool,
    ui: &Ui,
) -> Result<Scored> {
    let started = Instant::now();
    let mut runtime = L3Runtime::new(model.l3.len(), prefetch);
    let total: u64 = wins.iter().map(|w| (w.1 - 1) as u64).sum();
    let bar = ui.items(total, "eval");
    let mut nll = Vec::with_capacity(total as usize);
    let mut argmax = Vec::with_capacity(total as usize);
    let vocab = model.vocab_size();
    // Windows of one length go in batches together.
    let mut i = 0;
    while i < wins.len() {
        let len = wins[i].1;
        let mut j = i;
        while j < wins.len() && j - i < BATCH_WINDOWS && wins[j].1 == len {
            j += 1;
        }
        let rows: Vec<Vec<u32>> = wins[i..j]
            .iter()
            .map(|&(s, l)| stream[s..s + l - 1].to_vec())
            .collect();
        let mut cache = model.new_cache();
        let logits = model.forward(&rows, &mut cache, &mut runtime)?;
        let flat: Vec<f32> = logits
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(|e| Error::Other(format!("compute error: {e}")))?;
        for (r, &(s, l)) in wins[i..j].iter().enumerate() {
            for p in 0..l - 1 {
                let at = (r * (l - 1) + p) * vocab;
                let (n, a) = log_softmax_at(&flat[at..at + vocab], stream[s + p + 1] as usize);
                nll.push(n);
                argmax.push(a);
            }
            bar.inc((l - 1) as u64);
        }
        i = j;
    }
    bar.finish_and_clear();
    Ok(Scored {
        nll,
        argmax,
        stats: runtime.stats.clone(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

#[derive(Clone, Debug, Serialize)]
pub struct ModelFigures {
    pub model: PathBuf,
    pub packed: bool,
    pub total_nll: f64,
    pub mean_nll: f64,
    pub perplexity: f64,
    pub bits_per_byte: f64,
    pub seconds: f64,
    pub tokens_per_second: f64,
    pub serving: ServingStats,
}

#[derive(Clone, Debug, Serialize)]
pub struct Comparison {
    /// (packed - source) / source perplexity.
    pub relative_perplexity_change: f64,
    /// Share of target positions whose top-1 prediction differs.
    pub top1_changed: f64,
    pub max_perplexity_increase: f64,
    pub passed: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct EvalReport {
    pub family: String,
    pub seq_len: usize,
    pub records: u64,
    pub stream_tokens: usize,
    pub windows: usize,
    pub targets: usize,
    pub bytes: usize,
    pub rule: String,
    pub result: ModelFigures,
    /// With `--compare`: the source checkpoint's figures and the comparison.
    pub source: Option<ModelFigures>,
    pub comparison: Option<Comparison>,
}

pub struct EvalOptions<'a> {
    pub seq_len: Option<usize>,
    pub prefetch: bool,
    /// The allowed relative perplexity increase with a comparison (None: by table dtype).
    pub max_ppl_increase: Option<f64>,
    pub ui: &'a Ui,
}

/// The default allowed perplexity increase of a packed model over its source, by the
/// table dtype (measured on the bundled trained model with a margin; docs/verify.md).
pub fn default_max_ppl_increase(dtype: Option<crate::formats::dtype::TableDtype>) -> f64 {
    use crate::formats::dtype::TableDtype as T;
    match dtype {
        Some(T::F32) | None => 1e-6,
        Some(T::F16) => 5e-4,
        Some(T::Bf16) => 2e-3,
        Some(T::Int8) => 1e-2,
    }
}

fn figures(model: &Decoder, path: &Path, s: &Scored, bytes: usize) -> ModelFigures {
    let total: f64 = s.nll.iter().sum();
    let n = s.nll.len().max(1) as f64;
    ModelFigures {
        model: path.to_path_buf(),
        packed: model.packed,
        total_nll: total,
        mean_nll: total / n,
        perplexity: (total / n).exp(),
        bits_per_byte: total / std::f64::consts::LN_2 / bytes.max(1) as f64,
        seconds: s.seconds,
        tokens_per_second: s.nll.len() as f64 / s.seconds.max(1e-9),
        serving: s.stats.clone(),
    }
}

/// Evaluate `model` (and `source`, to compare) on a token stream.
pub fn eval(
    model: (&Decoder, &Path),
    source: Option<(&Decoder, &Path)>,
    stream: &Stream,
    tokenizer: &tokenizers::Tokenizer,
    packed_dtype: Option<crate::formats::dtype::TableDtype>,
    opts: &EvalOptions,
) -> Result<EvalReport> {
    let (m, path) = model;
    let context = m.config.context();
    let seq_len = opts.seq_len.unwrap_or(context);
    if seq_len == 0 {
        return Err(Error::input("--seq-len must be at least 1"));
    }
    if seq_len > context {
        return Err(Error::input(format!(
            "--seq-len {seq_len} is beyond the model's context of {context} positions"
        )));
    }
    if stream.ids.len() < 2 {
        return Err(Error::input(format!(
            "the text gives {} token(s); evaluating needs at least 2",
            stream.ids.len()
        )));
    }
    let wins = windows(stream.ids.len(), seq_len);
    let mut bytes = 0usize;
    for &(s, l) in &wins {
        let text = tokenizer
            .decode(&stream.ids[s + 1..s + l], true)
            .map_err(|e| Error::input(format!("cannot decode the targets: {e}")))?;
        bytes += text.len();
    }
    let scored = score(m, &stream.ids, &wins, opts.prefetch, opts.ui)?;
    let result = figures(m, path, &scored, bytes);
    let (source_figures, comparison) = match source {
        None => (None, None),
        Some((src, src_path)) => {
            if src.vocab_size() != m.vocab_size() {
                return Err(Error::input(format!(
                    "{} and {} have different vocabularies ({} vs {})",
                    src_path.display(),
                    path.display(),
                    src.vocab_size(),
                    m.vocab_size()
                )));
            }
            let s = score(src, &stream.ids, &wins, opts.prefetch, opts.ui)?;
            let sf = figures(src, src_path, &s, bytes);
            let changed = scored
                .argmax
                .iter()
                .zip(&s.argmax)
                .filter(|(a, b)| a != b)
                .count();
            let rel = (result.perplexity - sf.perplexity) / sf.perplexity;
            let max = opts
                .max_ppl_increase
                .unwrap_or_else(|| default_max_ppl_increase(packed_dtype));
            (
                Some(sf),
                Some(Comparison {
                    relative_perplexity_change: rel,
                    top1_changed: changed as f64 / scored.argmax.len().max(1) as f64,
                    max_perplexity_increase: max,
                    passed: rel <= max,
                }),
            )
        }
    };
    Ok(EvalReport {
        family: m.config.name().to_string(),
        seq_len,
        records: stream.records,
        stream_tokens: stream.ids.len(),
        windows: wins.len(),
        targets: scored.nll.len(),
        bytes,
        rule: format!(
            "records tokenised one by one{}, concatenated; windows of {seq_len}+1 ids, \
             each from position 0; last window kept with >= 2 ids",
            if m.config.uses_bos() {
                ", BOS before each"
            } else {
                ""
            }
        ),
        result,
        source: source_figures,
        comparison,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_share_one_boundary_token() {
        assert_eq!(windows(10, 4), vec![(0, 5), (4, 5), (8, 2)]);
        assert_eq!(windows(9, 4), vec![(0, 5), (4, 5)]);
        assert_eq!(windows(1, 4), Vec::<(usize, usize)>::new());
        assert_eq!(windows(2, 4), vec![(0, 2)]);
    }
}
