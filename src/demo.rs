//! `l3kit demo`: the pipeline on the bundled data (a GPT-2 tokenizer and public-domain
//! English text in `fixtures/`), so a fresh checkout can see every stage work.

use crate::allocate::{self, AllocateOptions, AllocationReport, LayerShape, Method};
use crate::error::{Error, Result};
use crate::layout::TableDtype;
use crate::profile::{self, ProfileOptions, ProfileSummary};
use crate::progress::Ui;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Where the bundled data lives: `fixtures/` in the source tree.
pub fn default_data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

#[derive(Debug, Serialize)]
pub struct DemoResult {
    pub out_dir: PathBuf,
    pub profile_path: PathBuf,
    pub allocation_path: PathBuf,
    pub profile: ProfileSummary,
    pub allocation: AllocationReport,
}

/// Profile the bundled corpus and allocate with the paper's method at its rows-per-token ratio
/// (710K rows for a 180K vocabulary, about 3.9; here 4).
pub fn run(data_dir: &Path, out_dir: &Path, ui: &Ui) -> Result<DemoResult> {
    let tokenizer = data_dir.join("tokenizer/gpt2.json");
    let corpus = data_dir.join("corpus/train.txt");
    for p in [&tokenizer, &corpus] {
        if !p.is_file() {
            return Err(Error::input(format!(
                "{}: bundled demo data is missing (pass --data DIR pointing at l3kit's fixtures/)",
                p.display()
            )));
        }
    }
    std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
    let mut opts = ProfileOptions::new(vec![corpus]);
    opts.tokenizer = Some(tokenizer.clone());
    let (profile, summary) = profile::run(&opts, ui)?;
    let profile_path = out_dir.join("profile.safetensors");
    profile.write(&profile_path)?;

    let vocab = profile.meta.vocab_size as u64;
    let alloc = allocate::allocate(
        &profile,
        &AllocateOptions {
            n_emb: vocab * 4,
            k_max: 512,
            method: Method::Lzw,
            fill: None,
        },
    )?;
    let allocation_path = out_dir.join("allocation.safetensors");
    alloc.write(&allocation_path)?;
    let (tok, _) = profile::load_tokenizer(&tokenizer)?;
    let report = allocate::report(
        &alloc,
        Some(&profile.unigram),
        Some(LayerShape {
            d_in: 2048,
            d_emb: 1024,
            tied: false,
            dtype: TableDtype::Bf16,
        }),
        Some(&tok),
    );
    Ok(DemoResult {
        out_dir: out_dir.to_path_buf(),
        profile_path,
        allocation_path,
        profile: summary,
        allocation: report,
    })
}
