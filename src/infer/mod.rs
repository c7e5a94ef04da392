//! Running whole models: perplexity ([`eval`]) and text generation ([`generate`]), on a
//! source checkpoint or a packed folder, with the L3 tables served from RAM, a memory map or
//! the disk.

pub mod eval;
pub mod generate;
pub mod traffic;

use crate::formats::dtype::TableDtype;
use crate::model::decoder::Decoder;
use crate::model::load::SourceOptions;
use crate::serve::TableTier;
use crate::util::error::{Error, Result};
use candle_core::Device;
use std::path::{Path, PathBuf};

/// A model opened for running, with what its reports need to say about it.
pub struct OpenModel {
    pub decoder: Decoder,
    pub path: PathBuf,
    /// The table dtype of a packed folder (None for a source checkpoint).
    pub packed_dtype: Option<TableDtype>,
}

/// The BOS token of a family that uses one (nanochat: `<|bos|>`).
const BOS_TOKENS: &[&str] = &["<|bos|>"];

impl OpenModel {
    pub fn open(path: &Path, source: &SourceOptions, device: &Device) -> Result<OpenModel> {
        Self::open_tier(path, source, device, None)
    }

    /// Open with the tables served from `tables` (a packed folder only; None: memory-mapped).
    pub fn open_tier(
        path: &Path,
        source: &SourceOptions,
        device: &Device,
        tables: Option<TableTier>,
    ) -> Result<OpenModel> {
        let decoder = Decoder::open_tier(path, source, device, tables)?;
        let packed_dtype = if decoder.packed {
            Some(
                crate::formats::packed::PackedModel::open(path)?
                    .config
                    .dtype,
            )
        } else {
            None
        };
        Ok(OpenModel {
            decoder,
            path: path.to_path_buf(),
            packed_dtype,
        })
    }

    /// The tokenizer must cover exactly the model's vocabulary.
    pub fn check_tokenizer(&self, tok: &tokenizers::Tokenizer, path: &Path) -> Result<()> {
        let have = tok.get_vocab_size(true);
        let want = self.decoder.vocab_size();
        if have != want {
            return Err(Error::in_file(
                path,
                format!(
                    "the tokenizer has {have} tokens, the model {} has a vocabulary of {want}",
                    self.path.display()
                ),
            ));
        }
        Ok(())
    }

    /// The id to put before every document, for families that use one; checks the tokenizer.
    pub fn bos_for(&self, tok: &tokenizers::Tokenizer, path: &Path) -> Result<Option<u32>> {
        self.check_tokenizer(tok, path)?;
        if !self.decoder.config.uses_bos() {
            return Ok(None);
        }
        for name in BOS_TOKENS {
            if let Some(id) = tok.token_to_id(name) {
                return Ok(Some(id));
            }
        }
        Err(Error::in_file(
            path,
            format!(
                "the model's family starts documents with a BOS token, and the tokenizer has \
                 none of {}",
                BOS_TOKENS.join(", ")
            ),
        ))
    }
}
