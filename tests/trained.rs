//! The bundled *trained* model (fixtures/trained/: a tiny LM trained with two paper-dialect L3
//! layers by fixtures/train_tiny.py) with real hidden states captured at each L3 layer's input:
//! l3kit's forward matches PyTorch's outputs on them, and packing in every table dtype
//! verifies against the source.

use candle_core::{Device, Tensor};
use l3kit::layout::TableDtype;
use l3kit::pack::{pack, PackOptions};
use l3kit::progress::Ui;
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
    let bytes = std::fs::read(&path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    for layer in &model.layers {
        let (h, w) = inputs.hidden_for(layer).unwrap();
        let x = Tensor::from_slice(h, (inputs.token_ids.len(), w), &Device::Cpu).unwrap();
        let y = layer
            .layer
            .forward(&x, &inputs.token_ids, layer.tables.as_ref())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let want: Vec<f32> = st
            .tensor(&format!("output.{}", layer.name))
            .unwrap()
            .data()
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let (_, rel, _, _) = verify::compare(&want, &y, w);
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
