//! The LZW allocation of the bundled corpus against allocations computed by an independent
//! Python transliteration of the paper's algorithm (fixtures/lzw_reference.py, run with the
//! Hugging Face `tokenizers` package on the same tokenizer file). Regenerate with the commands
//! in fixtures/README.md.

use l3kit::allocate::{allocate, AllocateOptions, Method};
use l3kit::profile::{self, ProfileOptions};
use l3kit::util::progress::Ui;
use l3kit::Allocation;
use std::path::Path;

#[test]
fn bundled_corpus_matches_python_reference() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let mut opts = ProfileOptions::new(vec![root.join("corpus/train.txt")]);
    opts.stream.tokenizer = Some(root.join("tokenizer/gpt2.json"));
    let (profile, _) = profile::run(&opts, &Ui::quiet()).unwrap();
    for (n_emb, k_max) in [(201_028u64, 512u32), (150_000, 64)] {
        let golden_path = root.join(format!("golden/lzw-train-n{n_emb}-k{k_max}.safetensors"));
        let golden = Allocation::read(&golden_path).unwrap();
        let ours = allocate(
            &profile,
            &AllocateOptions {
                n_emb,
                k_max,
                method: Method::Lzw,
                fill: None,
            },
        )
        .unwrap();
        assert_eq!(
            ours.bounds(),
            golden.bounds(),
            "n_emb {n_emb} k_max {k_max} differs from the Python reference"
        );
    }
}
