//! Hugging Face `tokenizer.json` files: loaded with their SHA-256, which profiles and
//! allocations record so a later stage can check it was given the same tokenizer.

use crate::util::error::{Error, IoContext, Result};
use crate::util::fs::{limits, read_small};
use sha2::{Digest, Sha256};
use std::path::Path;

/// Load a Hugging Face tokenizer.json; returns it with the file's SHA-256. The file is read
/// through [`read_small`], so a FIFO, a device or an oversized file is refused before any of
/// it is parsed.
pub fn load_tokenizer(path: &Path) -> Result<(tokenizers::Tokenizer, String)> {
    // The OS's own words for a missing file ("No such file or directory"), as before.
    std::fs::metadata(path).with_path(path)?;
    let bytes = read_small(path, limits::TOKENIZER, "a tokenizer.json")?;
    let tok = tokenizers::Tokenizer::from_bytes(&bytes)
        .map_err(|e| Error::in_file(path, format!("not a valid tokenizer.json: {e}")))?;
    let hash = hex::encode(Sha256::digest(&bytes));
    Ok((tok, hash))
}
