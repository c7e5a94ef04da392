//! `l3kit tokenize`: a corpus to a flat file of token ids with a separator after every
//! sequence, the format nanoGPT- and Megatron-style pipelines already use, plus a manifest.
//!
//! Tokenisation is the part of profiling that parallelises (the exact LZW scan is sequential
//! by definition), so a large corpus can be tokenised in shards by many jobs and the shards
//! profiled in order on one node: `profile --separator S shard-*.u16` reads back exactly the
//! sequences the text held, and gives the same profile as profiling the text (tested). The
//! separator id must therefore not occur inside a sequence; a text that encodes it is refused,
//! naming its line.

use super::tokens::{self, Msg, StreamOptions};
use crate::formats::profile::InputFormat;
use crate::util::atomic_file::{write_atomic, AtomicFile};
use crate::util::error::{Error, IoContext, Result};
use crate::util::progress::Ui;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The manifest's `format` field.
pub const MANIFEST_FORMAT: &str = "l3kit-token-ids";

/// Special tokens tried, in order, when no `--separator` is given.
const SEPARATOR_TOKENS: &[&str] = &["<|endoftext|>", "<|bos|>", "</s>", "<eos>"];

#[derive(Clone, Debug)]
pub struct TokenizeOptions {
    pub stream: StreamOptions,
    /// The id file: its extension (`.u16` or `.u32`) is the id width.
    pub out: PathBuf,
    /// The manifest (default: the id file's name + `.json`).
    pub manifest: Option<PathBuf>,
    /// The id written after every sequence (default: the tokenizer's end-of-text token).
    pub separator: Option<u32>,
}

/// One input's share of the output.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ManifestInput {
    pub path: String,
    pub format: InputFormat,
    pub bytes: u64,
    pub sequences: u64,
    pub tokens: u64,
}

/// The manifest written beside the ids: everything needed to check and reuse them. It holds
/// no time or host, so the same inputs give the same manifest.
#[derive(Clone, Debug, Serialize)]
pub struct TokenizeManifest {
    pub format: &'static str,
    pub version: u32,
    /// The id file's name (beside the manifest).
    pub ids: String,
    pub dtype: &'static str,
    pub separator: u32,
    pub vocab_size: u32,
    pub tokenizer_sha256: Option<String>,
    pub add_special_tokens: bool,
    pub field: Option<String>,
    pub max_tokens: Option<u64>,
    pub inputs: Vec<ManifestInput>,
    pub sequences: u64,
    /// Token ids of the sequences (separators not counted).
    pub tokens: u64,
    /// Ids in the file: tokens plus one separator per sequence.
    pub ids_written: u64,
    pub bytes_written: u64,
    /// SHA-256 of the id file.
    pub sha256: String,
    /// The `profile` command that reads the file back.
    pub profile_with: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct TokenizeSummary {
    pub manifest_path: PathBuf,
    #[serde(flatten)]
    pub manifest: TokenizeManifest,
    pub seconds: f64,
    pub tokens_per_second: f64,
}

/// The id width an output name asks for.
fn width_of(out: &Path) -> Result<(usize, &'static str)> {
    match InputFormat::infer(out) {
        Ok(InputFormat::U16) => Ok((2, "u16")),
        Ok(InputFormat::U32) => Ok((4, "u32")),
        _ => Err(Error::in_file(
            out,
            "--out must end in .u16 or .u32 (the id width, which profile reads from the name)",
        )),
    }
}

/// The default manifest path: the id file's name with `.json` added.
pub fn default_manifest(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".json");
    out.with_file_name(name)
}

pub fn tokenize(opts: &TokenizeOptions, ui: &Ui) -> Result<TokenizeSummary> {
    let started = Instant::now();
    let (width, dtype) = width_of(&opts.out)?;
    let plan = tokens::plan(&opts.stream)?;
    let vocab = plan.vocab;
    let separator = match opts.separator {
        Some(s) => s,
        None => plan
            .tokenizer
            .as_ref()
            .and_then(|(t, _)| SEPARATOR_TOKENS.iter().find_map(|n| t.token_to_id(n)))
            .ok_or_else(|| {
                Error::input(format!(
                    "give --separator ID: the id written after every sequence (the tokenizer \
                     has none of {})",
                    SEPARATOR_TOKENS.join(", ")
                ))
            })?,
    };
    if separator >= vocab {
        return Err(Error::input(format!(
            "--separator {separator} is not below the vocabulary size {vocab}"
        )));
    }
    if width == 2 && vocab > 1 << 16 {
        return Err(Error::in_file(
            &opts.out,
            format!("a vocabulary of {vocab} ids does not fit u16: name the output .u32"),
        ));
    }
    let manifest_path = opts
        .manifest
        .clone()
        .unwrap_or_else(|| default_manifest(&opts.out));
    let file = AtomicFile::create(&opts.out)?;
    let index: HashMap<PathBuf, usize> = plan
        .inputs
        .iter()
        .enumerate()
        .map(|(i, p)| (p.path.clone(), i))
        .collect();
    let out_path = opts.out.clone();
    let max_tokens = opts.stream.max_tokens;
    let n_inputs = plan.inputs.len();
    let written = tokens::stream(&plan, &opts.stream, ui, "tokenize", move |rx| {
        write_ids(
            rx, file, &out_path, width, separator, max_tokens, &index, n_inputs,
        )
    })?;
    let (counts, sequences, tokens, hash, file) = written;
    if tokens == 0 && sequences == 0 {
        return Err(Error::input(format!(
            "{}: the corpus is empty (no sequences{})",
            opts.stream
                .inputs
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
            if max_tokens.is_some() {
                " within --max-tokens"
            } else {
                ""
            }
        )));
    }
    let ids_written = tokens + sequences;
    let name = opts
        .out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let manifest = TokenizeManifest {
        format: MANIFEST_FORMAT,
        version: 1,
        ids: name.clone(),
        dtype,
        separator,
        vocab_size: vocab,
        tokenizer_sha256: plan.tokenizer.as_ref().map(|(_, h)| h.clone()),
        add_special_tokens: opts.stream.add_special_tokens,
        field: opts.stream.field.clone(),
        max_tokens,
        inputs: plan
            .inputs
            .iter()
            .zip(&counts)
            .map(|(p, &(s, t))| ManifestInput {
                path: p.path.display().to_string(),
                format: p.format,
                bytes: p.bytes,
                sequences: s,
                tokens: t,
            })
            .collect(),
        sequences,
        tokens,
        ids_written,
        bytes_written: ids_written * width as u64,
        sha256: hex::encode(hash),
        profile_with: format!(
            "l3kit profile --vocab-size {vocab} --separator {separator} {name} --out PROFILE"
        ),
    };
    let text = serde_json::to_string_pretty(&manifest)
        .map_err(|e| Error::Other(format!("the manifest: {e}")))?;
    // The ids land first; a manifest that cannot be written takes them back out.
    file.commit()?;
    if let Err(e) = write_atomic(&manifest_path, format!("{text}\n").as_bytes()) {
        let _ = std::fs::remove_file(&opts.out);
        return Err(e);
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(TokenizeSummary {
        manifest_path,
        manifest,
        seconds,
        tokens_per_second: tokens as f64 / seconds.max(1e-9),
    })
}

type Written = (Vec<(u64, u64)>, u64, u64, [u8; 32], AtomicFile);

/// The consumer: write every sequence and its separator, in corpus order, until the input
/// ends, the budget is met or an error arrives.
#[allow(clippy::too_many_arguments)]
fn write_ids(
    rx: crossbeam_channel::Receiver<Msg<tokens::TokenBatch>>,
    mut file: AtomicFile,
    out: &Path,
    width: usize,
    separator: u32,
    max_tokens: Option<u64>,
    index: &HashMap<PathBuf, usize>,
    n_inputs: usize,
) -> Result<Written> {
    let mut counts = vec![(0u64, 0u64); n_inputs];
    let (mut sequences, mut tokens) = (0u64, 0u64);
    let mut hash = Sha256::new();
    let mut bytes = Vec::with_capacity(1 << 20);
    let push = |bytes: &mut Vec<u8>, id: u32| {
        if width == 2 {
            bytes.extend_from_slice(&(id as u16).to_le_bytes());
        } else {
            bytes.extend_from_slice(&id.to_le_bytes());
        }
    };
    'batches: for msg in rx.iter() {
        let batch = match msg {
            Msg::Batch(b) => b,
            Msg::Budget => break,
            Msg::Failed(e) => return Err(e),
        };
        let input = index.get(batch.origin.file.as_ref()).copied();
        bytes.clear();
        let mut stop = false;
        for (i, w) in batch.offsets.windows(2).enumerate() {
            let seq = &batch.flat[w[0]..w[1]];
            let after = tokens.saturating_add(seq.len() as u64);
            if max_tokens.is_some_and(|limit| after > limit) {
                stop = true;
                break;
            }
            if let Some(p) = seq.iter().position(|&t| t == separator) {
                return Err(Error::input(format!(
                    "{}: token {p} of the sequence is the separator id {separator}, so the \
                     sequence could not be read back whole; choose another --separator",
                    batch.origin.describe(i)
                )));
            }
            for &t in seq {
                push(&mut bytes, t);
            }
            push(&mut bytes, separator);
            sequences += 1;
            tokens = after;
            if let Some(c) = input.and_then(|k| counts.get_mut(k)) {
                c.0 += 1;
                c.1 += seq.len() as u64;
            }
            if max_tokens == Some(tokens) {
                stop = true;
                break;
            }
        }
        hash.update(&bytes);
        file.write_all(&bytes).with_path(out)?;
        if stop {
            break 'batches;
        }
    }
    Ok((counts, sequences, tokens, hash.finalize().into(), file))
}
