//! The profile file: a corpus's unigram counts and its LZW codeword dictionary, with the
//! options and inputs it was made from (specified in `docs/profile-format.md`). Written by
//! `profile`, read by `allocate`, `evaluate`, `plan`, `inspect` and `verify`.
//!
//! The dictionary is stored as three columns in insertion order (parent codeword, last token,
//! count): a trie, whose node order is the reference scan's dictionary insertion order. Readers
//! get the columns as they are ([`Codewords`]); nothing downstream needs the trie's lookup
//! structure, so it is not rebuilt.

use crate::util::error::{Error, Result};
use crate::util::fs::sha256_file;
use crate::util::safetensors_file::{self as st, MappedSafetensors, TensorBytes};
use safetensors::Dtype;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::Path;

/// Identifies a profile file in its `__metadata__`.
pub const PROFILE_FORMAT: &str = "l3kit-profile";
pub const PROFILE_VERSION: &str = "1";

/// The parent of a single-token codeword.
pub const NO_PARENT: u32 = u32::MAX;

/// The largest vocabulary l3kit profiles, allocates or synthesises (2^24 = 16,777,216 tokens,
/// far above any tokenizer in use). Every per-token table is dense (a profile holds 24 bytes
/// per token before any text is read), and keeping vocabularies below 2^24 keeps every
/// product of a vocabulary with a per-token count of rows within 64 bits.
pub const MAX_VOCAB: u32 = 1 << 24;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum InputFormat {
    /// One line is one sequence, its trailing newline included.
    Text,
    /// One JSON object per line; `--field` names the text.
    Jsonl,
    /// A Parquet file; `--field` names a string column.
    Parquet,
    /// Little-endian u16 token ids.
    U16,
    /// Little-endian u32 token ids.
    U32,
}

impl InputFormat {
    pub fn name(self) -> &'static str {
        match self {
            InputFormat::Text => "text",
            InputFormat::Jsonl => "jsonl",
            InputFormat::Parquet => "parquet",
            InputFormat::U16 => "u16",
            InputFormat::U32 => "u32",
        }
    }

    pub fn is_pretokenised(self) -> bool {
        matches!(self, InputFormat::U16 | InputFormat::U32)
    }

    /// Infer the format from a file name (`.gz` is looked through).
    pub fn infer(path: &Path) -> Result<Self> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        let name = name.strip_suffix(".gz").unwrap_or(&name);
        let ext = name.rsplit_once('.').map(|(_, e)| e).unwrap_or("");
        match ext {
            "txt" | "text" | "md" => Ok(InputFormat::Text),
            "jsonl" | "ndjson" => Ok(InputFormat::Jsonl),
            "parquet" => Ok(InputFormat::Parquet),
            "u16" => Ok(InputFormat::U16),
            "u32" => Ok(InputFormat::U32),
            _ => Err(Error::in_file(
                path,
                "cannot tell the format from the file name; pass --format text|jsonl|parquet|u16|u32",
            )),
        }
    }
}

/// How pre-tokenised ids are cut into sequences.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdSplit {
    /// A separator id ends a sequence and belongs to none.
    Separator(u32),
    /// Fixed-length sequences; the last one may be shorter.
    SeqLen(usize),
}

/// Which LZW scan builds the dictionary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum LzwVariant {
    /// The paper's reference code, quirks included: the breaking token is consumed into the new
    /// codeword, and the codeword reached at the end of a sequence is reset to count 1.
    Reference,
    /// Textbook LZW: the breaking token starts the next phrase, each emitted phrase is counted
    /// once, new codewords start at 0 and nothing is ever reset.
    Textbook,
}

impl LzwVariant {
    pub fn name(self) -> &'static str {
        match self {
            LzwVariant::Reference => "reference",
            LzwVariant::Textbook => "textbook",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "reference" => Some(LzwVariant::Reference),
            "textbook" => Some(LzwVariant::Textbook),
            _ => None,
        }
    }
}

/// One input as recorded in the profile.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputRecord {
    pub path: String,
    pub format: InputFormat,
    pub bytes: u64,
}

/// The options recorded in the profile, so a profile says how it was made.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedOptions {
    pub field: Option<String>,
    pub add_special_tokens: bool,
    pub split: Option<IdSplit>,
    pub max_tokens: Option<u64>,
    pub lzw_variant: LzwVariant,
}

/// Everything in a profile besides the big arrays.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileMeta {
    pub vocab_size: u32,
    pub tokenizer_sha256: Option<String>,
    pub inputs: Vec<InputRecord>,
    pub options: RecordedOptions,
    pub sequences: u64,
    pub tokens: u64,
    pub phrases: u64,
    pub phrase_tokens: u64,
}

/// A corpus profile: unigram counts and the LZW dictionary.
pub struct Profile {
    pub meta: ProfileMeta,
    pub unigram: Vec<u64>,
    pub codewords: Codewords,
    /// SHA-256 of the profile's tensor data; identifies the profile in allocation files.
    pub content_sha256: String,
}

/// The codeword dictionary as stored: codeword `i` is codeword `parents[i]` extended by
/// `tokens[i]`, seen `counts[i]` times. Codewords `0..vocab` are the single tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Codewords {
    pub parents: Vec<u32>,
    pub tokens: Vec<u32>,
    pub counts: Vec<u64>,
}

/// The first codeword (in id order) whose (parent, token) edge an earlier codeword already
/// has: a repeated edge is a repeated codeword. `parents` and `tokens` are already checked to
/// be in range. A parallel sort of the edges: a profile is read on every `allocate`, and this
/// check is most of the reading.
fn first_repeated_edge(vocab: u32, parents: &[u32], tokens: &[u32]) -> Option<usize> {
    use rayon::prelude::*;
    let n = parents.len();
    let mut edges: Vec<u64> = (vocab as usize..n)
        .map(|i| ((parents[i] as u64) << 32) | tokens[i] as u64)
        .collect();
    edges.par_sort_unstable();
    let w = edges.par_windows(2).find_first(|w| w[0] == w[1])?;
    let (p, t) = ((w[0] >> 32) as u32, w[0] as u32);
    (vocab as usize..n)
        .filter(|&i| parents[i] == p && tokens[i] == t)
        .nth(1)
}

impl Codewords {
    /// Check that stored columns form a trie in insertion order: the single tokens first, every
    /// later codeword extending an earlier one by an in-vocabulary token, no codeword twice.
    pub fn from_columns(
        vocab: u32,
        parents: Vec<u32>,
        tokens: Vec<u32>,
        counts: Vec<u64>,
    ) -> std::result::Result<Codewords, String> {
        let n = parents.len();
        if tokens.len() != n || counts.len() != n {
            return Err(format!(
                "codeword columns disagree in length (parent {n}, token {}, count {})",
                tokens.len(),
                counts.len()
            ));
        }
        if n < vocab as usize {
            return Err(format!(
                "{n} codewords, fewer than the vocabulary size {vocab}"
            ));
        }
        // Codeword ids are 32-bit everywhere (parents, the walk order).
        if n > NO_PARENT as usize {
            return Err(format!("{n} codewords, more than 2^32 - 1"));
        }
        for i in 0..n {
            let (p, t) = (parents[i], tokens[i]);
            if i < vocab as usize {
                if p != NO_PARENT || t != i as u32 {
                    return Err(format!(
                        "codeword {i} should be the single token {i} (parent {p}, token {t})"
                    ));
                }
            } else if p as usize >= i || t >= vocab {
                return Err(format!(
                    "codeword {i} is out of order or out of range (parent {p}, token {t})"
                ));
            }
        }
        if let Some(i) = first_repeated_edge(vocab, &parents, &tokens) {
            return Err(format!("codeword {i} duplicates an earlier codeword"));
        }
        Ok(Codewords {
            parents,
            tokens,
            counts,
        })
    }

    pub fn len(&self) -> usize {
        self.parents.len()
    }

    pub fn is_empty(&self) -> bool {
        self.parents.is_empty()
    }

    /// The token sequence of codeword `id`, first token first.
    pub fn codeword(&self, id: u32) -> Vec<u32> {
        let mut out = Vec::new();
        let mut node = id;
        while node != NO_PARENT {
            out.push(self.tokens[node as usize]);
            node = self.parents[node as usize];
        }
        out.reverse();
        out
    }
}

/// What the scan guarantees about its own figures, checked on read so every total computed
/// from a profile fits in 64 bits: each phrase covers at least two tokens (reference) or one
/// (textbook), adds at most one codeword, and adds at most 2 (reference) or exactly 1
/// (textbook) to the sum of codeword counts.
fn check_scan_stats(meta: &ProfileMeta, codewords: &Codewords) -> std::result::Result<(), String> {
    let (min_tokens, max_count) = match meta.options.lzw_variant {
        LzwVariant::Reference => (2u128, 2u128),
        LzwVariant::Textbook => (1, 1),
    };
    let phrases = u128::from(meta.phrases);
    if meta.phrase_tokens > meta.tokens {
        return Err(format!(
            "phrase_tokens {} exceeds the {} tokens of the sample",
            meta.phrase_tokens, meta.tokens
        ));
    }
    if phrases * min_tokens > u128::from(meta.phrase_tokens) {
        return Err(format!(
            "{} phrases cannot cover only {} tokens",
            meta.phrases, meta.phrase_tokens
        ));
    }
    let multi = (codewords.len() - meta.vocab_size as usize) as u128;
    if multi > phrases {
        return Err(format!(
            "{multi} multi-token codewords from {} phrases (a phrase adds at most one)",
            meta.phrases
        ));
    }
    let mass: u128 = codewords.counts.iter().map(|&c| u128::from(c)).sum();
    if mass > phrases * max_count {
        return Err(format!(
            "the codeword counts add up to {mass}, more than {} phrases can give",
            meta.phrases
        ));
    }
    Ok(())
}

pub fn content_hash(unigram: &[u64], codewords: &Codewords) -> String {
    let mut h = Sha256::new();
    for tensor in tensors(unigram, codewords) {
        h.update(&tensor.data);
    }
    hex::encode(h.finalize())
}

pub fn tensors<'a>(unigram: &[u64], codewords: &Codewords) -> Vec<TensorBytes<'a>> {
    vec![
        TensorBytes::u64s("unigram_counts", unigram),
        TensorBytes::u32s("codeword_parent", &codewords.parents),
        TensorBytes::u32s("codeword_token", &codewords.tokens),
        TensorBytes::u64s("codeword_count", &codewords.counts),
    ]
}

impl Profile {
    /// Write the profile as a safetensors file (atomically).
    pub fn write(&self, path: &Path) -> Result<()> {
        let mut metadata = BTreeMap::new();
        metadata.insert("format".to_string(), PROFILE_FORMAT.to_string());
        metadata.insert("version".to_string(), PROFILE_VERSION.to_string());
        metadata.insert(
            "profile".to_string(),
            serde_json::to_string(&self.meta).expect("meta serialises"),
        );
        metadata.insert("content_sha256".to_string(), self.content_sha256.clone());
        st::write_file(path, &tensors(&self.unigram, &self.codewords), &metadata, 8)
    }

    /// Read and validate a profile file.
    pub fn read(path: &Path) -> Result<Profile> {
        // What the path is (a FIFO, a folder, nothing) is said plainly, not as corruption.
        crate::util::fs::regular_metadata(path)?;
        let file = MappedSafetensors::open(path).map_err(|e| match e {
            Error::Input(msg) => Error::Input(format!("{msg} (a truncated or corrupted profile?)")),
            other => other,
        })?;
        let metadata = file.metadata()?;
        let bad = |msg: String| Error::in_file(path, msg);
        if metadata.get("format").map(String::as_str) != Some(PROFILE_FORMAT) {
            return Err(bad(
                "not an l3kit profile (metadata format is not l3kit-profile)".into(),
            ));
        }
        let version = metadata.get("version").cloned().unwrap_or_default();
        if version != PROFILE_VERSION {
            return Err(bad(format!(
                "profile format version {version:?} is not supported (this l3kit reads {PROFILE_VERSION})"
            )));
        }
        let meta: ProfileMeta = serde_json::from_str(
            metadata
                .get("profile")
                .ok_or_else(|| bad("metadata has no \"profile\" entry".into()))?,
        )
        .map_err(|e| bad(format!("metadata \"profile\" is not valid: {e}")))?;
        if meta.vocab_size == 0 || meta.vocab_size > MAX_VOCAB {
            return Err(bad(format!(
                "vocab_size {} is out of range (l3kit reads vocabularies of 1 to {MAX_VOCAB} \
                 tokens)",
                meta.vocab_size
            )));
        }
        let stored_hash = metadata
            .get("content_sha256")
            .cloned()
            .ok_or_else(|| bad("metadata has no content_sha256".into()))?;
        let columns = [
            ("unigram_counts", Dtype::U64),
            ("codeword_parent", Dtype::U32),
            ("codeword_token", Dtype::U32),
            ("codeword_count", Dtype::U64),
        ]
        .iter()
        .map(|&(name, dtype)| file.bytes_1d(name, dtype))
        .collect::<Result<Vec<&[u8]>>>()?;
        // The hash is over the stored bytes, so it runs beside the decoding and the trie check.
        let (content_sha256, decoded) = rayon::join(
            || {
                let mut h = Sha256::new();
                for c in &columns {
                    h.update(c);
                }
                hex::encode(h.finalize())
            },
            || {
                let unigram = st::le_u64s(columns[0]);
                let codewords = Codewords::from_columns(
                    meta.vocab_size,
                    st::le_u32s(columns[1]),
                    st::le_u32s(columns[2]),
                    st::le_u64s(columns[3]),
                );
                (unigram, codewords)
            },
        );
        let (unigram, codewords) = decoded;
        if unigram.len() != meta.vocab_size as usize {
            return Err(bad(format!(
                "unigram_counts has {} entries for a vocabulary of {}",
                unigram.len(),
                meta.vocab_size
            )));
        }
        let codewords =
            codewords.map_err(|m| bad(format!("corrupted codeword dictionary: {m}")))?;
        if content_sha256 != stored_hash {
            return Err(bad(
                "content hash mismatch: the profile's data was changed or corrupted".into(),
            ));
        }
        let total = unigram
            .iter()
            .try_fold(0u64, |sum, &c| sum.checked_add(c))
            .ok_or_else(|| bad("unigram counts add up to more than 2^64 - 1".into()))?;
        if total != meta.tokens {
            return Err(bad(format!(
                "unigram counts do not add up to the token count ({total}, the metadata says {})",
                meta.tokens
            )));
        }
        check_scan_stats(&meta, &codewords)
            .map_err(|m| bad(format!("inconsistent counts: {m}")))?;
        Ok(Profile {
            meta,
            unigram,
            codewords,
            content_sha256,
        })
    }

    /// Read the profile at `path` and return its `n` most frequent tokens (a hot set for a
    /// model of `vocab` tokens), refusing a profile of another vocabulary.
    pub fn read_hot_set(path: &Path, n: usize, vocab: usize) -> Result<Vec<u32>> {
        let profile = Profile::read(path)?;
        if profile.unigram.len() != vocab {
            return Err(Error::in_file(
                path,
                format!(
                    "the profile has a vocabulary of {}, the model {vocab}: a hot set needs the \
                     model's own tokenizer's profile",
                    profile.unigram.len()
                ),
            ));
        }
        Ok(profile.most_frequent(n))
    }

    /// The `n` most frequent tokens by unigram count (ties to the lower id), in id order.
    pub fn most_frequent(&self, n: usize) -> Vec<u32> {
        let mut ranked: Vec<u32> = (0..self.unigram.len() as u32).collect();
        ranked.sort_by(|&a, &b| {
            self.unigram[b as usize]
                .cmp(&self.unigram[a as usize])
                .then(a.cmp(&b))
        });
        ranked.truncate(n);
        ranked.sort_unstable();
        ranked
    }

    /// Check that this profile was made with the tokenizer file at `path`.
    pub fn check_tokenizer(&self, profile_path: &Path, tokenizer: &Path) -> Result<()> {
        let hash = sha256_file(tokenizer)?;
        match &self.meta.tokenizer_sha256 {
            Some(h) if *h == hash => Ok(()),
            Some(_) => Err(Error::input(format!(
                "{}: the profile was made with a different tokenizer than {} (SHA-256 differs)",
                profile_path.display(),
                tokenizer.display()
            ))),
            None => Err(Error::input(format!(
                "{}: the profile was made from pre-tokenised ids without a tokenizer, so it cannot be checked against {}",
                profile_path.display(),
                tokenizer.display()
            ))),
        }
    }
}
