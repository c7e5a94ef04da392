//! A corpus as a stream of token-id sequences, in corpus order: the pipeline `profile` scans
//! and `tokenize` writes out.
//!
//! Three stages overlap: a reader thread streams batches of sequences from the input files,
//! the calling thread tokenises each batch on all cores (rayon), and a consumer thread takes
//! the token batches in corpus order. Bounded channels keep at most a few batches in memory.
//! Errors travel in order with the data, so a consumer that meets its token budget before the
//! point of an error never sees it, however far ahead the reader ran.

use super::{check_input, read_file, Origin, RawBatch, ReadEnd, ReadOptions};
use super::{DEFAULT_MAX_SEQUENCE_BYTES, MAX_SEQUENCE_BYTES_LIMIT};
use crate::formats::profile::{IdSplit, InputFormat, MAX_VOCAB};
use crate::formats::tokenizer::load_tokenizer;
use crate::util::error::{Error, Result};
use crate::util::progress::Ui;
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// What reading a corpus as token ids needs to know.
#[derive(Clone, Debug)]
pub struct StreamOptions {
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
    /// The longest sequence accepted, in bytes of input (see [`ReadOptions`]).
    pub max_sequence_bytes: usize,
}

impl StreamOptions {
    pub fn new(inputs: Vec<PathBuf>) -> Self {
        StreamOptions {
            inputs,
            format: None,
            field: None,
            tokenizer: None,
            vocab_size: None,
            add_special_tokens: false,
            split: None,
            max_tokens: None,
            max_sequence_bytes: DEFAULT_MAX_SEQUENCE_BYTES,
        }
    }
}

/// One input file of the plan.
#[derive(Clone, Debug)]
pub struct PlannedInput {
    pub path: PathBuf,
    pub format: InputFormat,
    /// Its size in bytes (0 for a FIFO).
    pub bytes: u64,
}

/// The checked inputs of a run, with the tokenizer loaded.
pub struct StreamPlan {
    pub inputs: Vec<PlannedInput>,
    pub total_bytes: u64,
    pub vocab: u32,
    /// The tokenizer and the SHA-256 of its file.
    pub tokenizer: Option<(tokenizers::Tokenizer, String)>,
}

/// A batch of tokenised sequences: sequence i is `flat[offsets[i]..offsets[i + 1]]`.
pub struct TokenBatch {
    pub origin: Origin,
    pub flat: Vec<u32>,
    pub offsets: Vec<usize>,
}

/// What flows down the pipeline, in corpus order.
pub enum Msg<B> {
    Batch(B),
    /// An id reader found that the next sequence cannot fit the token budget.
    Budget,
    Failed(Error),
}

/// The vocabulary size of the run: the tokenizer's, `--vocab-size`, or both when they agree.
fn vocabulary(
    tokenizer: Option<(&tokenizers::Tokenizer, &Path)>,
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

/// Check the options and every input before anything is read.
pub fn plan(opts: &StreamOptions) -> Result<StreamPlan> {
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
    let mut inputs = Vec::new();
    let mut total_bytes = 0u64;
    for path in &opts.inputs {
        let format = match opts.format {
            Some(f) => f,
            None => InputFormat::infer(path)?,
        };
        let bytes = check_input(path, format)?;
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
        inputs.push(PlannedInput {
            path: path.clone(),
            format,
            bytes,
        });
    }
    Ok(StreamPlan {
        inputs,
        total_bytes,
        vocab,
        tokenizer,
    })
}

/// Read and tokenise the plan's inputs in corpus order, handing the token batches to
/// `consume` on its own thread; returns what `consume` returns. `consume` ends the run when
/// it returns (the budget met, an error): the reader stops at its next batch.
pub fn stream<T: Send + 'static>(
    plan: &StreamPlan,
    opts: &StreamOptions,
    ui: &Ui,
    label: &str,
    consume: impl FnOnce(crossbeam_channel::Receiver<Msg<TokenBatch>>) -> Result<T> + Send + 'static,
) -> Result<T> {
    let read_opts = ReadOptions {
        field: opts.field.clone(),
        split: opts.split,
        vocab: plan.vocab,
        max_sequence_bytes: opts.max_sequence_bytes,
        max_ids: None,
    };
    let progress_bytes = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let bar = ui.bytes(plan.total_bytes, label);

    let (raw_tx, raw_rx) = crossbeam_channel::bounded::<Msg<RawBatch>>(2);
    let (tok_tx, tok_rx) = crossbeam_channel::bounded::<Msg<TokenBatch>>(2);
    let max_tokens = opts.max_tokens;

    let reader = {
        let files: Vec<(PathBuf, InputFormat)> = plan
            .inputs
            .iter()
            .map(|i| (i.path.clone(), i.format))
            .collect();
        let progress = progress_bytes.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            // Tokens of the id files read so far: a lower bound on the sample so far (text
            // is counted only once tokenised), so the budget left to an id file is never
            // underestimated.
            let mut id_tokens = 0u64;
            for (path, format) in &files {
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
                match read_file(path, *format, &file_opts, &progress, &mut emit) {
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

    // Dropped by the consumer when it ends: wakes this thread even while the reader is stuck
    // in a read (a pipe whose writer stalls after the budget was met).
    let (done_tx, done_rx) = crossbeam_channel::bounded::<()>(0);
    let consumer = {
        let stop = stop.clone();
        std::thread::spawn(move || -> Result<T> {
            let result = consume(tok_rx);
            // Whatever ended the consumer, the reader need not go on.
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
            recv(done_rx) -> _ => break, // the consumer is done
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
                let (tok, _) = plan.tokenizer.as_ref().expect("checked by plan()");
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
            break; // the consumer stopped (the budget, or an error), or nothing follows
        }
    }
    drop(raw_rx);
    drop(tok_tx);
    let result = consumer.join();
    bar.finish_and_clear();
    // A reader still blocked in a read (a stalled pipe) has nothing the result needs: it is
    // left to end on its own, at its next read or with the process. Its sends fail from now.
    if reader.is_finished() && reader.join().is_err() {
        return Err(Error::Other("the corpus reader thread failed".into()));
    }
    result.map_err(|_| Error::Other(format!("the {label} thread failed")))?
}

/// Tokenise a batch in parallel. A failure ends the batch: the sequences before it are
/// returned with the error, which names the line.
fn tokenise(
    tok: &tokenizers::Tokenizer,
    origin: &Origin,
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
