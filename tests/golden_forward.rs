//! Parity with an independent PyTorch implementation (fixtures/l3_torch.py): the golden files
//! in fixtures/golden/ hold token ids, hidden states and PyTorch's outputs of every L3 layer of
//! the fixture checkpoints, in f32 and in bf16 (see fixtures/golden/README.md).

use candle_core::Device;
use l3kit::formats::dtype::TableDtype;
use l3kit::pack::{pack, PackOptions};
use l3kit::util::progress::Ui;
use l3kit::verify::{self, Inputs, LoadedModel, SourceOptions};
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

fn source(dialect: &str) -> (PathBuf, SourceOptions) {
    let root = fixtures().join("checkpoints");
    match dialect {
        "paper" => (
            root.join("paper/model.safetensors"),
            SourceOptions {
                allocation: Some(root.join("allocation-tiny.safetensors")),
                ..Default::default()
            },
        ),
        _ => (
            root.join("nanochat/model.safetensors"),
            SourceOptions::default(),
        ),
    }
}

/// Worst relative L2 error over the layers of `model` against the golden outputs.
fn golden_error(model: &LoadedModel, golden: &Path) -> f64 {
    let inputs = Inputs::read(golden).unwrap();
    let mut worst = 0f64;
    for layer in &model.layers {
        let y = verify::run_layer(layer, &inputs, &Device::Cpu).unwrap();
        let want = verify::read_f32(golden, &format!("output.{}", layer.name)).unwrap();
        let (_, rel, cos, _) = verify::compare(&want, &y, layer.layer.cfg.d_in);
        assert!(cos > 0.999, "{}: cosine {cos}", layer.name);
        worst = worst.max(rel);
    }
    worst
}

#[test]
fn f32_matches_pytorch_within_1e5() {
    for dialect in ["paper", "nanochat"] {
        let (ckpt, opts) = source(dialect);
        let model = verify::load_source(&ckpt, &opts, &Device::Cpu).unwrap();
        let golden = fixtures().join(format!("golden/forward-{dialect}-f32.safetensors"));
        let rel = golden_error(&model, &golden);
        eprintln!("{dialect} f32: relative L2 error {rel:.3e}");
        assert!(rel <= 1e-5, "{dialect}: relative L2 error {rel:.3e}");
        // The same tables served from a lossless packed folder give the same answer.
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("packed");
        let mut o = PackOptions::new(ckpt.clone(), out.clone());
        o.allocation = opts.allocation.clone();
        o.dtype = Some(TableDtype::F32);
        pack(&o, &Ui::quiet()).unwrap();
        let packed = verify::load_packed(&out, &Device::Cpu).unwrap();
        assert!(golden_error(&packed, &golden) <= 1e-5);
    }
}

/// PyTorch computes the bf16 goldens entirely in bf16 (every matmul output rounded); l3kit
/// computes in f32 on the same bf16 weights. The documented tolerance is 1e-2 relative L2 (measured: about 4e-3).
#[test]
fn bf16_matches_pytorch_within_documented_tolerance() {
    for dialect in ["paper", "nanochat"] {
        let (ckpt, opts) = source(dialect);
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("packed");
        let mut o = PackOptions::new(ckpt, out.clone());
        o.allocation = opts.allocation.clone();
        o.dtype = Some(TableDtype::Bf16);
        o.other_dtype = Some(TableDtype::Bf16);
        pack(&o, &Ui::quiet()).unwrap();
        let packed = verify::load_packed(&out, &Device::Cpu).unwrap();
        let golden = fixtures().join(format!("golden/forward-{dialect}-bf16.safetensors"));
        let rel = golden_error(&packed, &golden);
        eprintln!("{dialect} bf16: relative L2 error {rel:.3e}");
        assert!(rel <= 1e-2, "{dialect}: relative L2 error {rel:.3e}");
    }
}
