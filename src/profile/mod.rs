//! Stage 1: tokenise a corpus and collect what the allocation needs — unigram counts and the
//! complete LZW codeword dictionary — into a profile file.
//!
//! Three stages overlap: a reader thread streams batches of sequences from the input files,
//! the calling thread tokenises each batch on all cores (rayon), and a scanner thread runs the
//! LZW scan and the unigram count over the token batches in corpus order (LZW is
//! order-dependent, so the scan itself is sequential; at tens of millions of tokens per second
//! it is never the bottleneck). Bounded channels keep at most a few batches in memory.

pub mod lzw;

use crate::corpus::{RawBatch, ReadOptions};
use crate::formats::profile::content_hash;
pub use crate::formats::profile::{
    IdSplit, InputFormat, InputRecord, LzwVariant, Profile, ProfileMeta, RecordedOptions,
};
pub use crate::formats::tokenizer::load_tokenizer;
use crate::util::error::{Error, IoContext, Result};
use crate::util::progress::Ui;
use lzw::{LzwDictionary, ScanError};
use rayon::prelude::*;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Everything `profile` needs to know.
#[derive(Clone, Debug)]
pub struct ProfileOptions {
    pub inputs: Vec<PathBuf>,
    /// Overrides the format inferred from each file name.
    pub format: Option<InputFormat>,
    pub field: Option<String>,
    pub tokenizer: Option<PathBuf>,
    /// Vocabulary size for pre-tokenised input without a tokenizer.
    pub vocab_size: Option<u32>,
    pub add_special_tokens: bool,
    pub split: Option<IdSplit>,
    /// Stop once the sample holds this many tokens; sequences are never cut, so the sample
    /// ends with the last sequence that still fits.
    pub max_tokens: Option<u64>,
    pub variant: LzwVariant,
}

impl ProfileOptions {
    pub fn new(inputs: Vec<PathBuf>) -> Self {
        ProfileOptions {
            inputs,
            format: None,
            field: None,
            tokenizer: None,
            vocab_size: None,
            add_special_tokens: false,
            split: None,
            max_tokens: None,
            variant: LzwVariant::Reference,
        }
    }
}

/// The human and `--json` summary of a profiling run.
#[derive(Clone, Debug, Serialize)]
pub struct ProfileSummary {
    pub vocab_size: u32,
    pub tokens: u64,
    pub sequences: u64,
    pub codewords: u64,
    pub unigram_entropy_bits: f64,
    pub mean_phrase_length: f64,
    pub distinct_tokens: u64,
    pub seconds: f64,
    pub tokens_per_second: f64,
    pub input_bytes: u64,
    pub peak_rss_bytes: Option<u64>,
}

struct TokenBatch {
    origin: crate::corpus::Origin,
    flat: Vec<u32>,
    offsets: Vec<usize>,
}

struct ScanResult {
    dict: LzwDictionary,
    unigram: Vec<u64>,
    sequences: u64,
    tokens: u64,
}

/// Tokenise and scan the corpus.
pub fn run(opts: &ProfileOptions, ui: &Ui) -> Result<(Profile, ProfileSummary)> {
    let started = Instant::now();
    if opts.inputs.is_empty() {
        return Err(Error::input("no input files given"));
    }
    let tokenizer = match &opts.tokenizer {
        Some(path) => Some(load_tokenizer(path)?),
        None => None,
    };
    let vocab = match (&tokenizer, opts.vocab_size) {
        (Some((tok, _)), Some(v)) => {
            let tv = tok.get_vocab_size(true) as u32;
            if tv != v {
                return Err(Error::input(format!(
                    "--vocab-size {v} disagrees with the tokenizer's vocabulary size {tv}"
                )));
            }
            v
        }
        (Some((tok, _)), None) => tok.get_vocab_size(true) as u32,
        (None, Some(v)) => v,
        (None, None) => {
            return Err(Error::input(
                "give --tokenizer tokenizer.json (or --vocab-size for pre-tokenised input)",
            ))
        }
    };
    if vocab == 0 {
        return Err(Error::input("the vocabulary size must be at least 1"));
    }

    let mut plan = Vec::new();
    let mut total_bytes = 0u64;
    for path in &opts.inputs {
        let format = match opts.format {
            Some(f) => f,
            None => InputFormat::infer(path)?,
        };
        let meta = std::fs::metadata(path).with_path(path)?;
        if meta.is_dir() {
            return Err(Error::in_file(path, "is a folder, not a file"));
        }
        if !format.is_pretokenised() && tokenizer.is_none() {
            return Err(Error::in_file(
                path,
                format!("{} input needs --tokenizer tokenizer.json", format.name()),
            ));
        }
        if format.is_pretokenised() && opts.split.is_none() {
            return Err(Error::in_file(
                path,
                "pre-tokenised input needs --separator ID or --seq-len N",
            ));
        }
        total_bytes += meta.len();
        plan.push((path.clone(), format, meta.len()));
    }

    let read_opts = ReadOptions {
        field: opts.field.clone(),
        split: opts.split,
        vocab,
    };
    let progress_bytes = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let bar = ui.bytes(total_bytes, "profile");

    let (raw_tx, raw_rx) = crossbeam_channel::bounded::<RawBatch>(2);
    let (tok_tx, tok_rx) = crossbeam_channel::bounded::<TokenBatch>(2);

    let reader = {
        let plan = plan.clone();
        let progress = progress_bytes.clone();
        let stop = stop.clone();
        std::thread::spawn(move || -> Result<()> {
            for (path, format, _) in &plan {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                crate::corpus::read_file(path, *format, &read_opts, &progress, &mut |batch| {
                    !stop.load(Ordering::Relaxed) && raw_tx.send(batch).is_ok()
                })?;
            }
            Ok(())
        })
    };

    let scanner = {
        let stop = stop.clone();
        let max_tokens = opts.max_tokens;
        let variant = opts.variant;
        std::thread::spawn(move || -> Result<ScanResult> {
            let mut dict = LzwDictionary::new(vocab, variant)?;
            let mut unigram = vec![0u64; vocab as usize];
            let mut sequences = 0u64;
            let mut tokens = 0u64;
            'batches: for batch in tok_rx.iter() {
                for (i, w) in batch.offsets.windows(2).enumerate() {
                    let seq = &batch.flat[w[0]..w[1]];
                    if let Some(limit) = max_tokens {
                        if tokens + seq.len() as u64 > limit {
                            stop.store(true, Ordering::Relaxed);
                            break 'batches;
                        }
                    }
                    match dict.scan(seq) {
                        Ok(()) => {}
                        Err(ScanError::OutOfRange(e)) => {
                            return Err(Error::input(format!(
                                "{}: token id {} at position {} of the sequence is not below the vocabulary size {vocab}",
                                batch.origin.describe(i),
                                e.token,
                                e.position
                            )))
                        }
                        Err(ScanError::Full(e)) => return Err(e),
                    }
                    for &t in seq {
                        unigram[t as usize] += 1;
                    }
                    sequences += 1;
                    tokens += seq.len() as u64;
                }
            }
            Ok(ScanResult {
                dict,
                unigram,
                sequences,
                tokens,
            })
        })
    };

    // Tokenise on this thread (rayon spreads each batch over all cores).
    let mut tokenise_error = None;
    for batch in raw_rx.iter() {
        let batch = match batch {
            RawBatch::Ids {
                origin,
                flat,
                offsets,
            } => TokenBatch {
                origin,
                flat,
                offsets,
            },
            RawBatch::Text { origin, texts } => {
                let (tok, _) = tokenizer.as_ref().expect("checked above");
                match tokenise(tok, &origin, &texts, opts.add_special_tokens) {
                    Ok((flat, offsets)) => TokenBatch {
                        origin,
                        flat,
                        offsets,
                    },
                    Err(e) => {
                        tokenise_error = Some(e);
                        stop.store(true, Ordering::Relaxed);
                        break;
                    }
                }
            }
        };
        bar.set_position(progress_bytes.load(Ordering::Relaxed));
        if tok_tx.send(batch).is_err() {
            break; // the scanner stopped (max tokens or an error)
        }
    }
    drop(raw_rx);
    drop(tok_tx);
    let read_result = reader.join().expect("reader thread does not panic");
    let scan_result = scanner.join().expect("scanner thread does not panic");
    bar.finish_and_clear();
    if let Some(e) = tokenise_error {
        return Err(e);
    }
    let scan = scan_result?;
    read_result?;

    if scan.tokens == 0 {
        let names: Vec<_> = opts
            .inputs
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        return Err(Error::input(format!(
            "{}: the corpus is empty (no tokens{})",
            names.join(", "),
            if opts.max_tokens.is_some() {
                " within --max-tokens"
            } else {
                ""
            }
        )));
    }

    let meta = ProfileMeta {
        vocab_size: vocab,
        tokenizer_sha256: tokenizer.as_ref().map(|(_, h)| h.clone()),
        inputs: plan
            .iter()
            .map(|(p, f, b)| InputRecord {
                path: p.display().to_string(),
                format: *f,
                bytes: *b,
            })
            .collect(),
        options: RecordedOptions {
            field: opts.field.clone(),
            add_special_tokens: opts.add_special_tokens,
            split: opts.split,
            max_tokens: opts.max_tokens,
            lzw_variant: opts.variant,
        },
        sequences: scan.sequences,
        tokens: scan.tokens,
        phrases: scan.dict.phrases(),
        phrase_tokens: scan.dict.phrase_tokens(),
    };
    let codewords = scan.dict.into_codewords();
    let content_sha256 = content_hash(&scan.unigram, &codewords);
    let profile = Profile {
        meta,
        unigram: scan.unigram,
        codewords,
        content_sha256,
    };
    let seconds = started.elapsed().as_secs_f64();
    let mut summary = summary(&profile);
    summary.seconds = seconds;
    summary.tokens_per_second = profile.meta.tokens as f64 / seconds.max(1e-9);
    summary.input_bytes = total_bytes;
    summary.peak_rss_bytes = crate::util::fs::peak_rss_bytes();
    Ok((profile, summary))
}

fn tokenise(
    tok: &tokenizers::Tokenizer,
    origin: &crate::corpus::Origin,
    texts: &[String],
    add_special_tokens: bool,
) -> Result<(Vec<u32>, Vec<usize>)> {
    let encoded: Vec<Vec<u32>> = texts
        .par_iter()
        .enumerate()
        .map(|(i, text)| {
            tok.encode_fast(text.as_str(), add_special_tokens)
                .map(|e| e.get_ids().to_vec())
                .map_err(|e| {
                    Error::input(format!("{}: tokenisation failed: {e}", origin.describe(i)))
                })
        })
        .collect::<Result<_>>()?;
    let mut offsets = Vec::with_capacity(encoded.len() + 1);
    offsets.push(0);
    let mut flat = Vec::with_capacity(encoded.iter().map(Vec::len).sum());
    for ids in encoded {
        flat.extend_from_slice(&ids);
        offsets.push(flat.len());
    }
    Ok((flat, offsets))
}

/// Shannon entropy of a count vector, in bits.
pub fn entropy_bits(counts: &[u64]) -> f64 {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return 0.0;
    }
    let total = total as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / total;
            -p * p.log2()
        })
        .sum()
}

/// The summary of a profile as read back (no timing figures).
pub fn summary(profile: &Profile) -> ProfileSummary {
    ProfileSummary {
        vocab_size: profile.meta.vocab_size,
        tokens: profile.meta.tokens,
        sequences: profile.meta.sequences,
        codewords: profile.codewords.len() as u64,
        unigram_entropy_bits: entropy_bits(&profile.unigram),
        mean_phrase_length: if profile.meta.phrases == 0 {
            0.0
        } else {
            profile.meta.phrase_tokens as f64 / profile.meta.phrases as f64
        },
        distinct_tokens: profile.unigram.iter().filter(|&&c| c > 0).count() as u64,
        seconds: 0.0,
        tokens_per_second: 0.0,
        input_bytes: profile.meta.inputs.iter().map(|i| i.bytes).sum(),
        peak_rss_bytes: None,
    }
}
