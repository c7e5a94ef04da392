//! Stage 1: tokenise a corpus and collect what the allocation needs — unigram counts and the
//! complete LZW codeword dictionary — into a profile file.
//!
//! Three stages overlap: a reader thread streams batches of sequences from the input files,
//! the calling thread tokenises each batch on all cores (rayon), and a scanner thread runs the
//! LZW scan and the unigram count over the token batches in corpus order (LZW is
//! order-dependent, so the scan itself is sequential; at tens of millions of tokens per second
//! it is never the bottleneck). Bounded channels keep at most a few batches in memory.

pub mod lzw;

use crate::corpus::{
    RawBatch, ReadEnd, ReadOptions, DEFAULT_MAX_SEQUENCE_BYTES, MAX_SEQUENCE_BYTES_LIMIT,
};
use crate::formats::profile::{content_hash, MAX_VOCAB};
pub use crate::formats::profile::{
    IdSplit, InputFormat, InputRecord, LzwVariant, Profile, ProfileMeta, RecordedOptions,
};
pub use crate::formats::tokenizer::load_tokenizer;
use crate::util::error::{Error, Result};
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
    /// The longest sequence accepted, in bytes of input (see [`ReadOptions`]).
    pub max_sequence_bytes: usize,
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
            max_sequence_bytes: DEFAULT_MAX_SEQUENCE_BYTES,
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

/// What flows down the pipeline, in corpus order. Errors travel in order with the data, so a
/// run that meets its token budget before the point of an error never reports it, however
/// far ahead the reader ran.
enum Msg<B> {
    Batch(B),
    /// An id reader found that the next sequence cannot fit the token budget.
    Budget,
    Failed(Error),
}

/// The vocabulary size of the run: the tokenizer's, `--vocab-size`, or both when they agree.
fn vocabulary(
    tokenizer: Option<(&tokenizers::Tokenizer, &std::path::Path)>,
    vocab_size: Option<u32>,
) -> Result<u32> {
    if let Some(v) = vocab_size {
        if v == 0 || v > MAX_VOCAB {
            return Err(Error::input(format!(
                "--vocab-size {v} is out of range: a vocabulary has 1 to {MAX_VOCAB} tokens \
                 (a profile holds 24 bytes per token, seen or not)"
            )));
        }
    }
    let Some((tok, path)) = tokenizer else {
        return vocab_size.ok_or_else(|| {
            Error::input(
                "give --tokenizer tokenizer.json (or --vocab-size for pre-tokenised input)",
            )
        });
    };
    let size = tok.get_vocab_size(true);
    let tv = u32::try_from(size)
        .ok()
        .filter(|&v| (1..=MAX_VOCAB).contains(&v))
        .ok_or_else(|| {
            Error::in_file(
                path,
                format!("the tokenizer has {size} tokens; l3kit profiles 1 to {MAX_VOCAB}"),
            )
        })?;
    match vocab_size {
        Some(v) if v != tv => Err(Error::input(format!(
            "--vocab-size {v} disagrees with the tokenizer's vocabulary size {tv}"
        ))),
        _ => Ok(tv),
    }
}

/// Tokenise and scan the corpus.
pub fn run(opts: &ProfileOptions, ui: &Ui) -> Result<(Profile, ProfileSummary)> {
    let started = Instant::now();
    if opts.inputs.is_empty() {
        return Err(Error::input("no input files given"));
    }
    if opts.max_tokens == Some(0) {
        return Err(Error::input("--max-tokens must be at least 1"));
    }
    if !(1..=MAX_SEQUENCE_BYTES_LIMIT).contains(&opts.max_sequence_bytes) {
        return Err(Error::input(format!(
            "--max-sequence-bytes {} is out of range: 1 byte to {MAX_SEQUENCE_BYTES_LIMIT} bytes \
             (1 GiB)",
            opts.max_sequence_bytes
        )));
    }
    let tokenizer = match &opts.tokenizer {
        Some(path) => Some(load_tokenizer(path)?),
        None => None,
    };
    let vocab = vocabulary(
        tokenizer
            .as_ref()
            .map(|(t, _)| t)
            .zip(opts.tokenizer.as_deref()),
        opts.vocab_size,
    )?;

    let mut plan = Vec::new();
    let mut total_bytes = 0u64;
    for path in &opts.inputs {
        let format = match opts.format {
            Some(f) => f,
            None => InputFormat::infer(path)?,
        };
        let bytes = crate::corpus::check_input(path, format)?;
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
        total_bytes = total_bytes.saturating_add(bytes);
        plan.push((path.clone(), format, bytes));
    }

    let read_opts = ReadOptions {
        field: opts.field.clone(),
        split: opts.split,
        vocab,
        max_sequence_bytes: opts.max_sequence_bytes,
        max_ids: None,
    };
    let progress_bytes = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let bar = ui.bytes(total_bytes, "profile");

    let (raw_tx, raw_rx) = crossbeam_channel::bounded::<Msg<RawBatch>>(2);
    let (tok_tx, tok_rx) = crossbeam_channel::bounded::<Msg<TokenBatch>>(2);
    let max_tokens = opts.max_tokens;

    let reader = {
        let plan = plan.clone();
        let progress = progress_bytes.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            // Tokens of the id files read so far: a lower bound on the sample so far (text
            // is counted only once tokenised), so the budget left to an id file is never
            // underestimated.
            let mut id_tokens = 0u64;
            for (path, format, _) in &plan {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let file_opts = ReadOptions {
                    max_ids: max_tokens.map(|m| m.saturating_sub(id_tokens)),
                    ..read_opts.clone()
                };
                let mut emit = |batch: RawBatch| {
                    if let RawBatch::Ids { flat, .. } = &batch {
                        id_tokens += flat.len() as u64;
                    }
                    !stop.load(Ordering::Relaxed) && raw_tx.send(Msg::Batch(batch)).is_ok()
                };
                let end = crate::corpus::read_file(path, *format, &file_opts, &progress, &mut emit);
                match end {
                    Ok(ReadEnd::Complete) => {}
                    Ok(ReadEnd::Stopped) => return,
                    Ok(ReadEnd::Budget) => {
                        let _ = raw_tx.send(Msg::Budget);
                        return;
                    }
                    Err(e) => {
                        let _ = raw_tx.send(Msg::Failed(e));
                        return;
                    }
                }
            }
        })
    };

    // Dropped by the scanner when it ends: wakes this thread even while the reader is stuck
    // in a read (a pipe whose writer stalls after the budget was met).
    let (done_tx, done_rx) = crossbeam_channel::bounded::<()>(0);
    let scanner = {
        let stop = stop.clone();
        let variant = opts.variant;
        std::thread::spawn(move || -> Result<SequenceScanner> {
            let result = scan_batches(tok_rx, vocab, variant, max_tokens);
            // Whatever ended the scan, the reader need not go on.
            stop.store(true, Ordering::Relaxed);
            drop(done_tx);
            result
        })
    };

    // Tokenise on this thread (rayon spreads each batch over all cores).
    loop {
        let msg = crossbeam_channel::select! {
            recv(raw_rx) -> msg => match msg {
                Ok(msg) => msg,
                Err(_) => break, // the reader is done
            },
            recv(done_rx) -> _ => break, // the scanner is done
        };
        let (out, last) = match msg {
            Msg::Batch(RawBatch::Ids {
                origin,
                flat,
                offsets,
            }) => (
                Msg::Batch(TokenBatch {
                    origin,
                    flat,
                    offsets,
                }),
                false,
            ),
            Msg::Batch(RawBatch::Text { origin, texts }) => {
                let (tok, _) = tokenizer.as_ref().expect("checked above");
                let (flat, offsets, failed) =
                    tokenise(tok, &origin, &texts, opts.add_special_tokens);
                // The sequences before a failure come first: the budget may end the sample
                // before the failure is reached.
                let batch = TokenBatch {
                    origin,
                    flat,
                    offsets,
                };
                if let Some(e) = failed {
                    if tok_tx.send(Msg::Batch(batch)).is_err() {
                        break;
                    }
                    (Msg::Failed(e), true)
                } else {
                    (Msg::Batch(batch), false)
                }
            }
            Msg::Budget => (Msg::Budget, true),
            Msg::Failed(e) => (Msg::Failed(e), true),
        };
        bar.set_position(progress_bytes.load(Ordering::Relaxed));
        if tok_tx.send(out).is_err() || last {
            break; // the scanner stopped (the budget, or an error), or nothing follows
        }
    }
    drop(raw_rx);
    drop(tok_tx);
    let scan_result = scanner.join();
    bar.finish_and_clear();
    // A reader still blocked in a read (a stalled pipe) has nothing the result needs: it is
    // left to end on its own, at its next read or with the process. Its sends fail from now.
    if reader.is_finished() && reader.join().is_err() {
        return Err(Error::Other("the corpus reader thread failed".into()));
    }
    let scan = scan_result.map_err(|_| Error::Other("the LZW scanner thread failed".into()))??;

    if scan.tokens_seen() == 0 {
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

    let profile = scan.into_profile(
        tokenizer.as_ref().map(|(_, h)| h.clone()),
        plan.iter()
            .map(|(p, f, b)| InputRecord {
                path: p.display().to_string(),
                format: *f,
                bytes: *b,
            })
            .collect(),
        RecordedOptions {
            field: opts.field.clone(),
            add_special_tokens: opts.add_special_tokens,
            split: opts.split,
            max_tokens: opts.max_tokens,
            lzw_variant: opts.variant,
        },
    );
    let seconds = started.elapsed().as_secs_f64();
    let mut summary = summary(&profile);
    summary.seconds = seconds;
    summary.tokens_per_second = profile.meta.tokens as f64 / seconds.max(1e-9);
    summary.input_bytes = total_bytes;
    summary.peak_rss_bytes = crate::util::fs::peak_rss_bytes();
    Ok((profile, summary))
}

/// The LZW scan and the unigram count over sequences handed over one at a time, in corpus
/// order: what a profile holds, for callers that have the token ids already (the scanner
/// thread of [`run`], and the Python package's `lzw_allocation`, which streams a dataloader
/// through it).
pub struct SequenceScanner {
    dict: LzwDictionary,
    unigram: Vec<u64>,
    sequences: u64,
    tokens: u64,
}

impl SequenceScanner {
    pub fn new(vocab: u32, variant: LzwVariant) -> Result<Self> {
        if vocab == 0 || vocab > MAX_VOCAB {
            return Err(Error::input(format!(
                "vocabulary size {vocab} is out of range: a vocabulary has 1 to {MAX_VOCAB} tokens"
            )));
        }
        Ok(SequenceScanner {
            dict: LzwDictionary::new(vocab, variant)?,
            unigram: vec![0u64; vocab as usize],
            sequences: 0,
            tokens: 0,
        })
    }

    pub fn vocab(&self) -> u32 {
        self.dict.vocab()
    }

    /// Sequences scanned so far.
    pub fn sequences_seen(&self) -> u64 {
        self.sequences
    }

    /// Tokens scanned so far.
    pub fn tokens_seen(&self) -> u64 {
        self.tokens
    }

    /// Scan one sequence. A token id outside the vocabulary is an input error that starts
    /// with `place()` (where the sequence came from); the scan is then left as it was.
    pub fn scan(&mut self, seq: &[u32], place: impl FnOnce() -> String) -> Result<()> {
        match self.dict.scan(seq) {
            Ok(()) => {}
            Err(ScanError::OutOfRange(e)) => {
                return Err(Error::input(format!(
                    "{}: token id {} at position {} of the sequence is not below the \
                     vocabulary size {}",
                    place(),
                    e.token,
                    e.position,
                    self.dict.vocab()
                )))
            }
            Err(ScanError::Full(e)) => return Err(e),
        }
        for &t in seq {
            self.unigram[t as usize] += 1;
        }
        self.sequences += 1;
        self.tokens += seq.len() as u64;
        Ok(())
    }

    /// The profile of everything scanned, with the provenance the caller records.
    pub fn into_profile(
        self,
        tokenizer_sha256: Option<String>,
        inputs: Vec<InputRecord>,
        options: RecordedOptions,
    ) -> Profile {
        let meta = ProfileMeta {
            vocab_size: self.dict.vocab(),
            tokenizer_sha256,
            inputs,
            options,
            sequences: self.sequences,
            tokens: self.tokens,
            phrases: self.dict.phrases(),
            phrase_tokens: self.dict.phrase_tokens(),
        };
        let codewords = self.dict.into_codewords();
        let content_sha256 = content_hash(&self.unigram, &codewords);
        Profile {
            meta,
            unigram: self.unigram,
            codewords,
            content_sha256,
        }
    }
}

/// The scanner thread: the LZW scan and the unigram count over the batches in corpus order,
/// until the input ends, the budget is met or an error arrives.
fn scan_batches(
    rx: crossbeam_channel::Receiver<Msg<TokenBatch>>,
    vocab: u32,
    variant: LzwVariant,
    max_tokens: Option<u64>,
) -> Result<SequenceScanner> {
    let mut scanner = SequenceScanner::new(vocab, variant)?;
    'batches: for msg in rx.iter() {
        let batch = match msg {
            Msg::Batch(b) => b,
            Msg::Budget => break,
            Msg::Failed(e) => return Err(e),
        };
        for (i, w) in batch.offsets.windows(2).enumerate() {
            let seq = &batch.flat[w[0]..w[1]];
            let after = scanner.tokens.saturating_add(seq.len() as u64);
            if max_tokens.is_some_and(|limit| after > limit) {
                break 'batches;
            }
            scanner.scan(seq, || batch.origin.describe(i))?;
            if max_tokens == Some(scanner.tokens) {
                break 'batches; // the budget is met: read no further
            }
        }
    }
    Ok(scanner)
}

/// Tokenise a batch in parallel. A failure ends the batch: the sequences before it are
/// returned with the error, which names the line.
fn tokenise(
    tok: &tokenizers::Tokenizer,
    origin: &crate::corpus::Origin,
    texts: &[String],
    add_special_tokens: bool,
) -> (Vec<u32>, Vec<usize>, Option<Error>) {
    let encoded: Vec<Result<Vec<u32>>> = texts
        .par_iter()
        .enumerate()
        .map(|(i, text)| {
            tok.encode_fast(text.as_str(), add_special_tokens)
                .map(|e| e.get_ids().to_vec())
                .map_err(|e| {
                    Error::input(format!("{}: tokenisation failed: {e}", origin.describe(i)))
                })
        })
        .collect();
    let mut offsets = Vec::with_capacity(encoded.len() + 1);
    offsets.push(0);
    let mut flat = Vec::with_capacity(encoded.iter().map(|r| r.as_ref().map_or(0, Vec::len)).sum());
    for ids in encoded {
        match ids {
            Ok(ids) => {
                flat.extend_from_slice(&ids);
                offsets.push(flat.len());
            }
            Err(e) => return (flat, offsets, Some(e)),
        }
    }
    (flat, offsets, None)
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
