//! `l3kit demo`: the pipeline on the bundled data (a GPT-2 tokenizer and public-domain
//! English text in `fixtures/`), so a fresh checkout can see every stage work.

use crate::allocate::{self, AllocateOptions, AllocationReport, LayerShape, Method};
use crate::formats::dtype::TableDtype;
use crate::profile::{self, ProfileOptions, ProfileSummary};
use crate::util::error::{Error, Result};
use crate::util::fs::OutputKind;
use crate::util::progress::Ui;
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
    /// The planner on the bundled data: LZW vs optimal, held-out coverage, the plots.
    pub plan: crate::allocate::plan::sweep::PlanReport,
    /// The bundled trained model: its allocation re-derived, packed, checked and verified.
    pub trained: TrainedDemo,
}

#[derive(Debug, Serialize)]
pub struct TrainedDemo {
    pub allocation_matches_training: bool,
    pub pack: crate::pack::PackSummary,
    pub check: crate::formats::packed::CheckReport,
    pub verify: crate::verify::VerifyReport,
    /// The whole model: held-out perplexity of the checkpoint and of the packed int8 folder.
    pub eval: crate::infer::eval::EvalReport,
    /// A line generated greedily by the packed model.
    pub generated: GeneratedLine,
}

#[derive(Debug, Serialize)]
pub struct GeneratedLine {
    pub prompt: String,
    pub text: String,
    pub tokens_per_second: f64,
}

/// Held-out tokens the demo's perplexity covers (a tenth of the file keeps the demo quick;
/// `l3kit eval` without `--max-tokens` takes all of it).
const DEMO_EVAL_TOKENS: u64 = 20_000;
const DEMO_PROMPT: &str = "To be, or not to be";

/// Steps 3-5 on the bundled trained model (fixtures/trained): profile the corpus with the
/// model's tokenizer and allocate as it was trained (4 rows per token, k_max 64), confirm that
/// this reproduces the allocation it was trained with, pack it as int8 and verify the packed
/// tables against the checkpoint on hidden states captured from the model.
fn trained_demo(data_dir: &Path, out_dir: &Path, ui: &Ui) -> Result<TrainedDemo> {
    let trained = data_dir.join("trained");
    let mut opts = ProfileOptions::new(vec![data_dir.join("corpus/train.txt")]);
    opts.stream.tokenizer = Some(data_dir.join("tokenizer/tiny-bpe-512.json"));
    let (profile, _) = profile::run(&opts, ui)?;
    let alloc = allocate::allocate(
        &profile,
        &AllocateOptions {
            n_emb: profile.meta.vocab_size as u64 * 4,
            k_max: 64,
            method: Method::Lzw,
            fill: None,
        },
    )?;
    let alloc_path = out_dir.join("trained-allocation.safetensors");
    alloc.write(&alloc_path)?;
    let used = crate::Allocation::read(&trained.join("allocation.safetensors"))?;
    let allocation_matches_training = used.bounds() == alloc.bounds();
    if !allocation_matches_training {
        return Err(Error::Check(format!(
            "{}: the allocation derived from the corpus differs from the one the model was trained with",
            alloc_path.display()
        )));
    }
    let packed = out_dir.join("trained-packed-int8");
    let mut pack_opts = crate::pack::PackOptions::new(trained.clone(), packed.clone());
    pack_opts.allocation = Some(alloc_path.clone());
    pack_opts.dtype = Some(TableDtype::Int8);
    pack_opts.force = true;
    let pack = crate::pack::pack(&pack_opts, ui)?;
    let check = crate::formats::packed::check_packed(&packed, ui);
    let verify = crate::verify::verify(
        &crate::verify::VerifyOptions {
            source: trained.clone(),
            packed: packed.clone(),
            source_opts: crate::verify::SourceOptions {
                allocation: Some(alloc_path.clone()),
                ..Default::default()
            },
            inputs: Some(trained.join("inputs.safetensors")),
            profile: None,
            tokens: 0,
            seed: 0,
            device: "cpu".into(),
            tolerance: None,
        },
        ui,
    )?;
    if !check.ok() || !verify.passed {
        return Err(Error::Check(format!(
            "{}: the demo's packed model failed its check or verify step",
            out_dir.display()
        )));
    }
    let (eval, generated) = whole_model_demo(data_dir, &trained, &packed, &alloc_path, ui)?;
    Ok(TrainedDemo {
        allocation_matches_training,
        pack,
        check,
        verify,
        eval,
        generated,
    })
}

/// The packed model as a whole: its held-out perplexity next to the checkpoint's, and a line
/// of text from it.
fn whole_model_demo(
    data_dir: &Path,
    trained: &Path,
    packed: &Path,
    alloc_path: &Path,
    ui: &Ui,
) -> Result<(crate::infer::eval::EvalReport, GeneratedLine)> {
    use crate::infer::{eval, generate, OpenModel};
    let device = candle_core::Device::Cpu;
    let source_opts = crate::verify::SourceOptions {
        allocation: Some(alloc_path.to_path_buf()),
        ..Default::default()
    };
    let model = OpenModel::open(packed, &source_opts, &device)?;
    let source = OpenModel::open(trained, &source_opts, &device)?;
    let tok_path = data_dir.join("tokenizer/tiny-bpe-512.json");
    let (tok, _) = crate::formats::tokenizer::load_tokenizer(&tok_path)?;
    let bos = model.bos_for(&tok, &tok_path)?;
    let stream = eval::token_stream(
        &[data_dir.join("corpus/heldout.txt")],
        None,
        None,
        false,
        &tok,
        bos,
        Some(DEMO_EVAL_TOKENS),
    )?;
    let report = eval::eval(
        (&model.decoder, packed),
        Some((&source.decoder, trained)),
        &stream,
        &tok,
        model.packed_dtype,
        &eval::EvalOptions {
            seq_len: None,
            prefetch: true,
            max_ppl_increase: None,
            ui,
        },
    )?;
    if report.comparison.as_ref().is_some_and(|c| !c.passed) {
        return Err(Error::Check(format!(
            "{}: the packed model's perplexity rose beyond the bound",
            packed.display()
        )));
    }
    let mut prompt: Vec<u32> = bos.into_iter().collect();
    prompt.extend(
        tok.encode_fast(DEMO_PROMPT, false)
            .map_err(|e| Error::Other(format!("tokenisation failed: {e}")))?
            .get_ids(),
    );
    let g = generate::generate(
        &model.decoder,
        &prompt,
        32,
        &crate::model::sampling::Sampling::greedy(),
        true,
        false,
        &mut |_| Ok(()),
    )?;
    let text = tok
        .decode(&g.new_token_ids, true)
        .map_err(|e| Error::Other(format!("cannot decode: {e}")))?;
    Ok((
        report,
        GeneratedLine {
            prompt: DEMO_PROMPT.to_string(),
            text,
            tokens_per_second: g.tokens_per_second,
        },
    ))
}

/// Profile the bundled corpus and allocate with the paper's method at its rows-per-token ratio
/// (710K rows for a 180K vocabulary, about 3.9; here 4).
pub fn run(data_dir: &Path, out_dir: &Path, ui: &Ui) -> Result<DemoResult> {
    crate::util::fs::check_output(out_dir, &[data_dir], OutputKind::Folder, "--out")?;
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
    opts.stream.tokenizer = Some(tokenizer.clone());
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
    )?;
    let plan = crate::allocate::plan::sweep::demo(&profile, &profile_path, data_dir, out_dir, ui)?;
    let trained = trained_demo(data_dir, out_dir, ui)?;
    Ok(DemoResult {
        out_dir: out_dir.to_path_buf(),
        profile_path,
        allocation_path,
        profile: summary,
        allocation: report,
        plan,
        trained,
    })
}
