//! Whole models against PyTorch: logits of both families' fixtures equal the goldens computed
//! by independent PyTorch code (`fixtures/make_decoder_golden.py`) and by the nanochat fork's
//! own code (`fixtures/make_nanochat_golden.py`); the KV-cached decode equals recomputation;
//! greedy generation is deterministic and matches the fork's.

mod common;

use candle_core::Device;
use l3kit::model::decoder::Decoder;
use l3kit::model::runtime::L3Runtime;
use l3kit::model::sampling::Sampling;
use l3kit::util::safetensors_file::MappedSafetensors;
use l3kit::verify::SourceOptions;
use std::path::{Path, PathBuf};

fn fixture(rel: &str) -> PathBuf {
    common::fixture(rel)
}

fn read_i64(path: &Path, name: &str) -> (Vec<i64>, Vec<usize>) {
    let f = MappedSafetensors::open(path).unwrap();
    let st = f.parse().unwrap();
    let v = st.tensor(name).unwrap();
    let data = v
        .data()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    (data, v.shape().to_vec())
}

fn read_f32(path: &Path, name: &str) -> Vec<f32> {
    l3kit::verify::read_f32(path, name).unwrap()
}

fn rows(ids: &[i64], shape: &[usize]) -> Vec<Vec<u32>> {
    ids.chunks(shape[1])
        .map(|r| r.iter().map(|&x| x as u32).collect())
        .collect()
}

fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let (mut e, mut n) = (0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        e += ((x - y) as f64).powi(2);
        n += (*y as f64).powi(2);
    }
    (e / n).sqrt()
}

fn logits(model: &Decoder, ids: &[Vec<u32>], prefetch: bool) -> Vec<f32> {
    let mut cache = model.new_cache();
    let mut rt = L3Runtime::new(model.l3.len(), prefetch);
    model
        .forward(ids, &mut cache, &mut rt)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

fn trained() -> Decoder {
    let opts = SourceOptions {
        allocation: Some(fixture("trained/allocation.safetensors")),
        ..Default::default()
    };
    Decoder::open(&fixture("trained"), &opts, &Device::Cpu).unwrap()
}

#[test]
fn trained_tiny_model_logits_match_pytorch() {
    let model = trained();
    let golden = fixture("trained/logits.safetensors");
    let (ids, shape) = read_i64(&golden, "token_ids");
    let want = read_f32(&golden, "logits");
    let got = logits(&model, &rows(&ids, &shape), true);
    let e = rel_l2(&got, &want);
    assert!(e <= 1e-5, "relative L2 of the logits {e:.3e}");
    // Prefetch on or off, the same bits.
    assert_eq!(got, logits(&model, &rows(&ids, &shape), false));
}

fn nanochat(variant: &str) -> Decoder {
    Decoder::open(
        &fixture(&format!("nanochat/{variant}")),
        &SourceOptions::default(),
        &Device::Cpu,
    )
    .unwrap_or_else(|e| panic!("{variant}: {e}"))
}

fn check_nanochat(variant: &str) {
    let model = nanochat(variant);
    let golden = fixture(&format!("golden/nanochat-{variant}.safetensors"));
    let (ids, shape) = read_i64(&golden, "token_ids");
    let want = read_f32(&golden, "logits");
    let got = logits(&model, &rows(&ids, &shape), true);
    let e = rel_l2(&got, &want);
    let max = got
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        e <= 1e-5 && max <= 1e-4,
        "{variant}: relative L2 {e:.3e}, max abs {max:.3e}"
    );
}

#[test]
fn nanochat_default_logits_match_the_fork() {
    check_nanochat("default");
}

#[test]
fn nanochat_without_lambdas_logits_match_the_fork() {
    check_nanochat("nolambda");
}

#[test]
fn packed_nanochat_models_run_from_their_folder() {
    // `pack` carries meta_NNNNNN.json into the packed folder, so the folder runs on its own;
    // the tables keep their bf16 values, so the logits are the source's.
    let dir = tempfile::tempdir().unwrap();
    for variant in ["default", "looped"] {
        let out = dir.path().join(variant);
        common::assert_ok(&common::run([
            "pack",
            &fixture(&format!("nanochat/{variant}"))
                .display()
                .to_string(),
            "--out",
            &out.display().to_string(),
        ]));
        let packed = Decoder::open(&out, &SourceOptions::default(), &Device::Cpu).unwrap();
        assert!(packed.packed);
        let source = nanochat(variant);
        let golden = fixture(&format!("golden/nanochat-{variant}.safetensors"));
        let (ids, shape) = read_i64(&golden, "token_ids");
        let ids = rows(&ids, &shape);
        assert_eq!(
            logits(&packed, &ids, true),
            logits(&source, &ids, true),
            "{variant}"
        );
    }
}

#[test]
fn nanochat_swiglu_gqa_logits_match_the_fork() {
    check_nanochat("swiglu_gqa");
}

#[test]
fn nanochat_convswiglu_logits_match_the_fork() {
    check_nanochat("convswiglu");
}

#[test]
fn nanochat_looped_logits_match_the_fork() {
    check_nanochat("looped");
}

#[test]
fn nanochat_without_l3_logits_match_the_fork() {
    check_nanochat("no_l3");
}

#[test]
fn nanochat_greedy_generation_matches_the_fork() {
    let model = nanochat("default");
    let golden = fixture("golden/nanochat-default.safetensors");
    let (prompt, _) = read_i64(&golden, "generate_prompt");
    let (want, _) = read_i64(&golden, "generate_greedy");
    let prompt: Vec<u32> = prompt.iter().map(|&x| x as u32).collect();
    let run = |full: bool| {
        l3kit::infer::generate::generate(
            &model,
            &prompt,
            want.len(),
            &Sampling::greedy(),
            true,
            full,
            &mut |_| Ok(()),
        )
        .unwrap()
        .new_token_ids
    };
    let cached = run(false);
    let want: Vec<u32> = want.iter().map(|&x| x as u32).collect();
    assert_eq!(cached, want, "KV-cached greedy decode");
    assert_eq!(run(true), want, "full recomputation");
}

#[test]
fn kv_cached_decoding_equals_recomputation() {
    // Step by step through the cache, the last position's logits equal a full forward's, for
    // both families (the ConvSwiGLU variant carries conv state across steps).
    let cases: Vec<(Decoder, Vec<u32>)> = vec![
        (trained(), (0..40).map(|i| (i * 37 % 512) as u32).collect()),
        (nanochat("convswiglu"), {
            let mut v = vec![512u32];
            v.extend((0..39).map(|i| (i * 53 % 512) as u32));
            v
        }),
        (nanochat("default"), {
            let mut v = vec![512u32];
            v.extend((0..39).map(|i| (i * 29 % 512) as u32));
            v
        }),
    ];
    for (model, seq) in cases {
        let vocab = model.vocab_size();
        let full = logits(&model, std::slice::from_ref(&seq), false);
        let mut cache = model.new_cache();
        let mut rt = L3Runtime::new(model.l3.len(), true);
        let split = 17;
        let first = model
            .forward(&[seq[..split].to_vec()], &mut cache, &mut rt)
            .unwrap();
        let mut stepped: Vec<f32> = first.flatten_all().unwrap().to_vec1().unwrap();
        for &t in &seq[split..] {
            let l = model.forward(&[vec![t]], &mut cache, &mut rt).unwrap();
            stepped.extend(l.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        }
        assert_eq!(stepped.len(), full.len());
        let e = rel_l2(&stepped, &full);
        assert!(
            e <= 1e-5,
            "cached vs full: relative L2 {e:.3e} (vocab {vocab})"
        );
    }
}
