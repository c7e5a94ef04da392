//! The reference forward pass, the table store and `verify` / `forward` on synthetic
//! checkpoints: source and packed agree, the two compute backends agree, a naive per-position
//! implementation agrees, and bad input is refused.

use candle_core::{Device, Tensor};
use l3kit::checkpoint::dialect::Dialect;
use l3kit::formats::dtype::TableDtype;
use l3kit::model::Backend;
use l3kit::pack::{pack, PackOptions};
use l3kit::serve::{PackedStore, TableSource};
use l3kit::synth;
use l3kit::util::progress::Ui;
use l3kit::verify::{self, Inputs, SourceOptions};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_l3kit"))
}

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    src: PathBuf,
    alloc: PathBuf,
}

fn fixture(dialect: Dialect, dtype: TableDtype) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let s = synth::small(&root.join("src"), dialect, dtype).unwrap();
    Fixture {
        _dir: dir,
        root,
        src: s.checkpoint,
        alloc: s.allocation,
    }
}

fn packed(f: &Fixture, dtype: Option<TableDtype>, name: &str) -> PathBuf {
    let out = f.root.join(name);
    let mut o = PackOptions::new(f.src.clone(), out.clone());
    o.allocation = Some(f.alloc.clone());
    o.dtype = dtype;
    o.max_shard_size = 6000;
    pack(&o, &Ui::quiet()).unwrap();
    out
}

fn source_opts(f: &Fixture) -> SourceOptions {
    SourceOptions {
        allocation: Some(f.alloc.clone()),
        ..Default::default()
    }
}

fn run(model: &verify::LoadedModel, inputs: &Inputs, backend: Backend) -> Vec<Vec<f32>> {
    model
        .layers
        .iter()
        .map(|l| {
            let (h, w) = inputs.hidden_for(l).unwrap();
            let x = Tensor::from_slice(h, (inputs.token_ids.len(), w), &Device::Cpu).unwrap();
            l.layer
                .forward_with(&x, &inputs.token_ids, l.tables.as_ref(), backend)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        })
        .collect()
}

#[test]
fn packed_lossless_forward_equals_source_bit_for_bit() {
    for (dialect, dtype) in [
        (Dialect::Paper, TableDtype::Bf16),
        (Dialect::Nanochat, TableDtype::F32),
    ] {
        let f = fixture(dialect, dtype);
        let p = packed(&f, None, "packed");
        let src = verify::load_source(&f.src, &source_opts(&f), &Device::Cpu).unwrap();
        let pk = verify::load_packed(&p, &Device::Cpu).unwrap();
        let inputs = Inputs::random(300, 16, 64, None, 3).unwrap();
        assert_eq!(
            run(&src, &inputs, Backend::Kernels),
            run(&pk, &inputs, Backend::Kernels)
        );
    }
}

#[test]
fn kernels_candle_and_bucketed_backends_agree() {
    for dialect in [Dialect::Paper, Dialect::Nanochat] {
        let f = fixture(dialect, TableDtype::F32);
        let src = verify::load_source(&f.src, &source_opts(&f), &Device::Cpu).unwrap();
        let inputs = Inputs::random(257, 16, 64, None, 11).unwrap();
        let a = run(&src, &inputs, Backend::Kernels);
        for backend in [Backend::Candle, Backend::Bucketed] {
            let b = run(&src, &inputs, backend);
            for (x, y) in a.iter().zip(&b) {
                let (_, rel, _, _) = verify::compare(x, y, 16);
                assert!(rel < 1e-5, "{dialect:?} {backend:?}: relative error {rel}");
            }
        }
    }
}

/// The layer computed position by position, straight from the method notes, in f64.
#[allow(clippy::too_many_arguments)]
fn naive_layer(
    x: &[f32],
    t: u32,
    tables: &dyn TableSource,
    w_up: &[f32],
    w_mix: &[f32],
    norm_in: &[f32],
    norm_out: &[f32],
    (d_in, d_emb, d_up): (usize, usize, usize),
) -> Vec<f64> {
    let rms = |v: &[f64], w: &[f32]| -> Vec<f64> {
        let ms = v.iter().map(|a| a * a).sum::<f64>() / v.len() as f64;
        v.iter()
            .zip(w)
            .map(|(a, w)| a / (ms + 1e-6).sqrt() * *w as f64)
            .collect()
    };
    let xd: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    let q = rms(&xd, norm_in);
    let blocks = tables.gather(&[t]).unwrap();
    let width = blocks.row_width;
    let rows: Vec<&[f32]> = blocks.rows.chunks(width).collect();
    let scores: Vec<f64> = rows
        .iter()
        .map(|r| r[..d_in].iter().zip(&q).map(|(k, q)| *k as f64 * q).sum())
        .collect();
    let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
    let z: f64 = e.iter().sum();
    let mut a = vec![0f64; d_emb];
    for (r, w) in rows.iter().zip(&e) {
        for j in 0..d_emb {
            a[j] += w / z * r[d_in + j] as f64;
        }
    }
    let u: Vec<f64> = (0..d_up)
        .map(|i| (0..d_emb).map(|j| w_up[i * d_emb + j] as f64 * a[j]).sum())
        .collect();
    let u = rms(&u, norm_out);
    let cat: Vec<f64> = u.iter().chain(xd.iter()).cloned().collect();
    (0..d_in)
        .map(|i| {
            (0..d_up + d_in)
                .map(|j| w_mix[i * (d_up + d_in) + j] as f64 * cat[j])
                .sum()
        })
        .collect()
}

#[test]
fn forward_matches_a_naive_per_position_implementation() {
    let f = fixture(Dialect::Paper, TableDtype::F32);
    let src = verify::load_source(&f.src, &source_opts(&f), &Device::Cpu).unwrap();
    let ckpt = l3kit::checkpoint::Checkpoint::open(&f.src).unwrap();
    let read = |name: &str| -> Vec<f32> {
        ckpt.read_all(name)
            .unwrap()
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    let inputs = Inputs::random(40, 16, 64, None, 5).unwrap();
    let ours = run(&src, &inputs, Backend::Kernels);
    let layer = &src.layers[0];
    let p = &layer.name;
    let (w_up, w_mix) = (
        read(&format!("{p}.w_up.weight")),
        read(&format!("{p}.w_mix.weight")),
    );
    let (n_in, n_out) = (
        read(&format!("{p}.norm_in.weight")),
        read(&format!("{p}.norm_out.weight")),
    );
    let (h, _) = inputs.hidden_for(layer).unwrap();
    for (pos, &t) in inputs.token_ids.iter().enumerate() {
        let want = naive_layer(
            &h[pos * 16..(pos + 1) * 16],
            t,
            layer.tables.as_ref(),
            &w_up,
            &w_mix,
            &n_in,
            &n_out,
            (16, 8, 32),
        );
        for (i, w) in want.iter().enumerate() {
            let got = ours[0][pos * 16 + i] as f64;
            assert!(
                (got - w).abs() <= 1e-4 * (1.0 + w.abs()),
                "pos {pos} dim {i}: {got} vs {w}"
            );
        }
    }
}

#[test]
fn prefetch_and_raw_gather_serve_the_packed_bytes() {
    let f = fixture(Dialect::Nanochat, TableDtype::Bf16);
    let p = packed(&f, None, "packed");
    let (_, stores) = l3kit::serve::open_packed(&p).unwrap();
    let store: &Arc<PackedStore> = &stores[0];
    let tokens = vec![3u32, 0, 63, 17];
    let fetched = store.prefetch(tokens.clone()).wait().unwrap();
    assert_eq!(fetched, store.gather(&tokens).unwrap());
    let mut raw = Vec::new();
    store.gather_raw(&tokens, &mut raw).unwrap();
    let expected: Vec<u8> = tokens
        .iter()
        .flat_map(|&t| store.token_bytes(t).unwrap().to_vec())
        .collect();
    assert_eq!(raw, expected);
    assert!(
        store.gather(&[64]).is_err(),
        "token id at the vocabulary size"
    );
    // Out-of-vocabulary ids are errors from every entry point, never an index panic.
    for t in [64, 1000, u32::MAX] {
        let e = store.token_bytes(t).unwrap_err().to_string();
        assert!(e.contains(&format!("token id {t}")), "{e}");
        assert!(store.gather_raw(&[0, t], &mut raw).is_err());
    }
}

fn verify_cmd(f: &Fixture, packed: &Path, extra: &[&str]) -> std::process::Output {
    bin()
        .args(["verify", "--json", "--source"])
        .arg(&f.src)
        .arg("--allocation")
        .arg(&f.alloc)
        .arg("--packed")
        .arg(packed)
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn verify_passes_for_every_dtype_and_fails_past_the_tolerance() {
    let f = fixture(Dialect::Paper, TableDtype::F32);
    for dtype in [
        TableDtype::F32,
        TableDtype::Bf16,
        TableDtype::F16,
        TableDtype::Int8,
    ] {
        let p = packed(&f, Some(dtype), &format!("p-{}", dtype.name()));
        let o = verify_cmd(&f, &p, &[]);
        assert!(
            o.status.success(),
            "{dtype:?}: {}",
            String::from_utf8_lossy(&o.stdout)
        );
        let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(r["passed"], true);
        let rel = r["layers"][0]["relative_l2_error"].as_f64().unwrap();
        if dtype == TableDtype::F32 {
            assert_eq!(rel, 0.0);
        } else {
            assert!(rel > 0.0);
            let o = verify_cmd(&f, &p, &["--tolerance", "1e-9"]);
            assert_eq!(o.status.code(), Some(1), "a failed check exits 1");
        }
    }
}

#[test]
fn verify_refuses_mismatched_or_corrupted_inputs() {
    let f = fixture(Dialect::Paper, TableDtype::F32);
    let p = packed(&f, None, "packed");
    // A packed folder from another checkpoint (other shapes).
    let other = tempfile::tempdir().unwrap();
    let s = synth::synthesize(&synth::SynthOptions {
        dialect: Dialect::Paper,
        vocab: 64,
        n_emb: 200,
        k_max: 16,
        d_in: 24,
        d_emb: 8,
        d_up: 32,
        layers: vec![1, 3],
        dtype: TableDtype::F32,
        seed: 1,
        out: other.path().join("src"),
        decoder: None,
    })
    .unwrap();
    let other_packed = other.path().join("packed");
    let mut o = PackOptions::new(s.checkpoint, other_packed.clone());
    o.allocation = Some(s.allocation);
    pack(&o, &Ui::quiet()).unwrap();
    let out = verify_cmd(&f, &other_packed, &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("do not belong together"));

    // Captured inputs with an out-of-range token id, and with the wrong width.
    let bad_ids = f.root.join("bad-ids.safetensors");
    verify::write_inputs(
        &bad_ids,
        &[1, 2, 64],
        &[("hidden".into(), vec![0.5; 48], 16)],
    )
    .unwrap();
    let out = verify_cmd(&f, &p, &["--inputs", bad_ids.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("token id 64") && err.contains("bad-ids.safetensors"),
        "{err}"
    );
    let bad_width = f.root.join("bad-width.safetensors");
    verify::write_inputs(
        &bad_width,
        &[1, 2, 3],
        &[("hidden".into(), vec![0.5; 15], 5)],
    )
    .unwrap();
    let out = verify_cmd(&f, &p, &["--inputs", bad_width.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("width 5"));

    // A corrupted shard: hash mismatch, exit 2, the file named.
    let model = l3kit::formats::packed::PackedModel::open(&p).unwrap();
    let part = model.config.layers[1].parts[0].file.clone();
    let path = p.join(&part);
    let mut bytes = std::fs::read(&path).unwrap();
    let i = bytes.len() - 9;
    bytes[i] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let out = verify_cmd(&f, &p, &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&part) && err.contains("SHA-256"), "{err}");
}

#[test]
fn forward_command_writes_outputs_per_layer() {
    let f = fixture(Dialect::Nanochat, TableDtype::Bf16);
    let p = packed(&f, None, "packed");
    let inputs = f.root.join("in.safetensors");
    let ids: Vec<u32> = (0..50).map(|i| (i * 7 % 64) as u32).collect();
    let h1: Vec<f32> = (0..50 * 16)
        .map(|i| ((i % 13) as f32 - 6.0) / 6.0)
        .collect();
    let h3: Vec<f32> = h1.iter().map(|v| -v).collect();
    verify::write_inputs(
        &inputs,
        &ids,
        &[
            ("hidden.l3_layers.1".into(), h1, 16),
            ("hidden.3".into(), h3, 16),
        ],
    )
    .unwrap();
    let out = f.root.join("out.safetensors");
    let o = bin()
        .args([
            "forward",
            "--model",
            p.to_str().unwrap(),
            "--inputs",
            inputs.to_str().unwrap(),
        ])
        .args(["--out", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // The same through the source checkpoint gives the same bytes (lossless pack).
    let out_src = f.root.join("out-src.safetensors");
    let o = bin()
        .args([
            "forward",
            "--model",
            f.src.to_str().unwrap(),
            "--inputs",
            inputs.to_str().unwrap(),
        ])
        .args(["--out", out_src.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let a = std::fs::read(&out).unwrap();
    assert_eq!(a, std::fs::read(&out_src).unwrap());
    let st = safetensors::SafeTensors::deserialize(&a).unwrap();
    let mut names = st.names();
    names.sort();
    assert_eq!(names, vec!["output.l3_layers.1", "output.l3_layers.3"]);
    assert_eq!(st.tensor("output.l3_layers.3").unwrap().shape(), &[50, 16]);
}

#[test]
fn cuda_device_is_a_clear_error_without_the_feature() {
    if cfg!(feature = "cuda") {
        return;
    }
    let f = fixture(Dialect::Paper, TableDtype::F32);
    let p = packed(&f, None, "packed");
    let o = verify_cmd(&f, &p, &["--device", "cuda"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("without CUDA"));
    let o = verify_cmd(&f, &p, &["--device", "auto"]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("using the CPU"));
}
