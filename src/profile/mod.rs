//! Stage 1: tokenise a corpus and collect what the allocation needs — unigram counts and the
//! complete LZW codeword dictionary — into a profile file.
//!
//! The corpus arrives as the token stream of [`crate::corpus::tokens`] (reading, tokenising on
//! all cores, in corpus order); the scanner thread at its end runs the LZW scan and the
//! unigram count (LZW is order-dependent, so the scan itself is sequential; at tens of
//! millions of tokens per second it is never the bottleneck).

pub mod lzw;

use crate::corpus::tokens::{self, Msg, StreamOptions, TokenBatch};
use crate::formats::profile::{content_hash, MAX_VOCAB};
pub use crate::formats::profile::{
    IdSplit, InputFormat, InputRecord, LzwVariant, Profile, ProfileMeta, RecordedOptions,
};
pub use crate::formats::tokenizer::load_tokenizer;
use crate::util::error::{Error, Result};
use crate::util::progress::Ui;
use lzw::{LzwDictionary, ScanError};
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;

/// Everything `profile` needs to know: the token stream, and the scan.
#[derive(Clone, Debug)]
pub struct ProfileOptions {
    pub stream: StreamOptions,
    pub variant: LzwVariant,
    /// Stop (an error, nothing written) before the dictionary's next growth would take it
    /// past this many bytes. Without it, a warning is printed once when the growth would
    /// pass 80% of the memory available at the start.
    pub max_memory: Option<u64>,
}

impl ProfileOptions {
    pub fn new(inputs: Vec<PathBuf>) -> Self {
        ProfileOptions {
            stream: StreamOptions::new(inputs),
            variant: LzwVariant::Reference,
            max_memory: None,
        }
    }
}

/// The share of the available memory past which the scan warns.
const WARN_SHARE: f64 = 0.8;

/// What the scan checks its dictionary's memory against after every batch.
#[derive(Clone, Copy, Debug)]
struct MemoryGuard {
    limit: Option<u64>,
    warn_at: Option<u64>,
}

impl MemoryGuard {
    fn check(&mut self, dict: &LzwDictionary, tokens: u64) -> Result<()> {
        let peak = dict.next_peak_bytes();
        let human = |b: u64| crate::util::units::human_bytes(b as f64);
        if let Some(limit) = self.limit.filter(|&l| peak > l) {
            return Err(Error::input(format!(
                "--max-memory {}: after {tokens} tokens the LZW dictionary holds {} codewords \
                 in {}, and its next growth needs up to {}; profile a smaller sample \
                 (--max-tokens) or allow more memory",
                human(limit),
                dict.len(),
                human(dict.memory_bytes()),
                human(peak)
            )));
        }
        if let Some(w) = self.warn_at.filter(|&w| peak > w) {
            eprintln!(
                "warning: after {tokens} tokens the LZW dictionary holds {} codewords in {}; \
                 its next growth needs up to {}, more than 80% of the {} of memory available \
                 when the run started (stop it with --max-memory, or sample with --max-tokens)",
                dict.len(),
                human(dict.memory_bytes()),
                human(peak),
                human((w as f64 / WARN_SHARE) as u64)
            );
            self.warn_at = None;
        }
        Ok(())
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
    /// Bytes the LZW dictionary held at the end of the scan (columns and edge table).
    pub dictionary_bytes: Option<u64>,
}

/// Tokenise and scan the corpus.
pub fn run(opts: &ProfileOptions, ui: &Ui) -> Result<(Profile, ProfileSummary)> {
    let started = Instant::now();
    let plan = tokens::plan(&opts.stream)?;
    let (vocab, variant, max_tokens) = (plan.vocab, opts.variant, opts.stream.max_tokens);
    let guard = MemoryGuard {
        limit: opts.max_memory,
        warn_at: opts
            .max_memory
            .is_none()
            .then(crate::util::fs::available_memory)
            .flatten()
            .map(|a| (a as f64 * WARN_SHARE) as u64),
    };
    let scan = tokens::stream(&plan, &opts.stream, ui, "profile", move |rx| {
        scan_batches(rx, vocab, variant, max_tokens, guard)
    })?;
    let dictionary_bytes = scan.dictionary_bytes();

    if scan.tokens_seen() == 0 {
        let names: Vec<_> = opts
            .stream
            .inputs
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        return Err(Error::input(format!(
            "{}: the corpus is empty (no tokens{})",
            names.join(", "),
            if opts.stream.max_tokens.is_some() {
                " within --max-tokens"
            } else {
                ""
            }
        )));
    }

    let profile = scan.into_profile(
        plan.tokenizer.as_ref().map(|(_, h)| h.clone()),
        plan.inputs
            .iter()
            .map(|i| InputRecord {
                path: i.path.display().to_string(),
                format: i.format,
                bytes: i.bytes,
            })
            .collect(),
        RecordedOptions {
            field: opts.stream.field.clone(),
            add_special_tokens: opts.stream.add_special_tokens,
            split: opts.stream.split,
            max_tokens: opts.stream.max_tokens,
            lzw_variant: opts.variant,
        },
    );
    let seconds = started.elapsed().as_secs_f64();
    let mut summary = summary(&profile);
    summary.seconds = seconds;
    summary.tokens_per_second = profile.meta.tokens as f64 / seconds.max(1e-9);
    summary.input_bytes = plan.total_bytes;
    summary.peak_rss_bytes = crate::util::fs::peak_rss_bytes();
    summary.dictionary_bytes = Some(dictionary_bytes);
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

    /// Bytes the dictionary holds now.
    pub fn dictionary_bytes(&self) -> u64 {
        self.dict.memory_bytes()
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
    mut guard: MemoryGuard,
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
            // Before every sequence: a sequence adds at most one codeword per two tokens, so
            // the dictionary grows at most once within one.
            guard.check(&scanner.dict, scanner.tokens)?;
            scanner.scan(seq, || batch.origin.describe(i))?;
            if max_tokens == Some(scanner.tokens) {
                break 'batches; // the budget is met: read no further
            }
        }
    }
    Ok(scanner)
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
        dictionary_bytes: None,
    }
}
