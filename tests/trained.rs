//! The bundled *trained* model (fixtures/trained/: a tiny LM trained with two paper-dialect L3
//! layers by fixtures/train_tiny.py) with real hidden states captured at each L3 layer's input:
//! l3kit's forward matches PyTorch's outputs on them, and packing in every table dtype
//! verifies against the source.

use candle_core::Device;
use l3kit::formats::dtype::TableDtype;
use l3kit::pack::{pack, PackOptions};
use l3kit::util::progress::Ui;
use l3kit::verify::{self, Inputs, SourceOptions, VerifyOptions};
use std::path::{Path, PathBuf};

fn trained() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/trained")
}

fn source_opts() -> SourceOptions {
    SourceOptions {
        allocation: Some(trained().join("allocation.safetensors")),
        ..Default::default()
    }
}

#[test]
fn forward_on_captured_states_matches_pytorch() {
    let model = verify::load_source(&trained(), &source_opts(), &Device::Cpu).unwrap();
    let path = trained().join("inputs.safetensors");
    let inputs = Inputs::read(&path).unwrap();
    for layer in &model.layers {
        let y = verify::run_layer(layer, &inputs, &Device::Cpu).unwrap();
        let want = verify::read_f32(&path, &format!("output.{}", layer.name)).unwrap();
        let (_, rel, _, _) = verify::compare(&want, &y, layer.layer.cfg.d_in);
        assert!(rel <= 1e-5, "{}: relative L2 error {rel:.3e}", layer.name);
    }
}

#[test]
fn every_dtype_packs_and_verifies_on_captured_states() {
    let dir = tempfile::tempdir().unwrap();
    for dtype in [
        TableDtype::F32,
        TableDtype::Bf16,
        TableDtype::F16,
        TableDtype::Int8,
    ] {
        let out = dir.path().join(dtype.name());
        let mut o = PackOptions::new(trained(), out.clone());
        o.allocation = Some(trained().join("allocation.safetensors"));
        o.dtype = Some(dtype);
        pack(&o, &Ui::quiet()).unwrap();
        let report = verify::verify(
            &VerifyOptions {
                source: trained(),
                packed: out,
                source_opts: source_opts(),
                inputs: Some(trained().join("inputs.safetensors")),
                profile: None,
                tokens: 0,
                seed: 0,
                device: "cpu".into(),
                tolerance: None,
            },
            &Ui::quiet(),
        )
        .unwrap();
        for l in &report.layers {
            eprintln!(
                "{:>5} {}: relative L2 {:.3e} cosine {:.6}",
                dtype.name(),
                l.name,
                l.relative_l2_error,
                l.cosine_similarity
            );
        }
        assert!(report.passed, "{dtype:?}: {:?}", report.layers);
    }
}
