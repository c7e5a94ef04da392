//! MoE routing, the PI controller and the MoE layer against the independent PyTorch
//! implementation's goldens (`fixtures/MOE.md`), their properties, bad inputs, and the
//! `l3kit route` command.

mod common;

use candle_core::{Device, Tensor};
use common::{assert_ok, assert_refused, fixture, run};
use l3kit::checkpoint::moe::detect_moe;
use l3kit::model::l3::Backend;
use l3kit::model::moe::{
    route_logits, ControllerFile, MoeLayer, PiController, PiSettings, Routed, Routing,
};
use l3kit::Checkpoint;
use proptest::prelude::*;
use safetensors::SafeTensors;
use std::collections::BTreeMap;
use std::path::Path;

fn f32s(st: &SafeTensors, name: &str) -> (Vec<f32>, Vec<usize>) {
    let t = st.tensor(name).unwrap_or_else(|_| panic!("{name}"));
    assert_eq!(t.dtype(), safetensors::Dtype::F32, "{name}");
    let v = t
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    (v, t.shape().to_vec())
}

fn u8s(st: &SafeTensors, name: &str) -> Vec<u8> {
    st.tensor(name).unwrap().data().to_vec()
}

fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let num: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
        .sum();
    let den: f64 = b.iter().map(|&y| (y as f64).powi(2)).sum();
    (num / den).sqrt()
}

fn max_abs(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y as f64).abs())
        .fold(0.0, f64::max)
}

fn load_layers(path: &Path) -> Vec<(String, MoeLayer)> {
    let ckpt = Checkpoint::open(path).unwrap();
    let det = detect_moe(&ckpt, None).unwrap();
    det.layers
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                MoeLayer::load(&ckpt, t, &Device::Cpu).unwrap(),
            )
        })
        .collect()
}

fn check_golden(file: &str, scheme: &str, shared: usize) {
    let path = fixture(&format!("golden/{file}"));
    let ckpt = Checkpoint::open(&path).unwrap();
    let det = detect_moe(&ckpt, None).unwrap();
    assert_eq!(det.scheme, scheme);
    assert_eq!(det.layers.len(), 1);
    assert_eq!(det.layers[0].shared.len(), shared);
    let layers = load_layers(&path);
    let layer = &layers[0].1;
    let bytes = std::fs::read(&path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let meta: serde_json::Value = {
        let (_, m) = SafeTensors::read_metadata(&bytes).unwrap();
        let m = m.metadata().clone().unwrap();
        serde_json::from_str(&m["modes"]).unwrap()
    };
    let (hidden, shape) = f32s(&st, "hidden");
    let x = Tensor::from_slice(&hidden, (shape[0], shape[1]), &Device::Cpu).unwrap();
    let (logits, _) = f32s(&st, "logits");
    assert!(max_abs(&layer.logits(&x).unwrap(), &logits) < 1e-5);
    let modes = meta.as_object().unwrap();
    assert!(modes.len() >= 4);
    for (name, mode) in modes {
        let routing = Routing::parse(mode.as_str().unwrap()).unwrap();
        let (out, routed) = layer.forward(&x, routing).unwrap();
        assert_eq!(
            routed.chosen,
            u8s(&st, &format!("experts.{name}")),
            "{file} {name}: expert sets"
        );
        let (w, _) = f32s(&st, &format!("weights.{name}"));
        assert!(
            max_abs(&routed.weights, &w) <= 1e-6,
            "{file} {name}: weights"
        );
        assert!(
            rel_l2(&routed.weights, &w) <= 1e-5,
            "{file} {name}: weights"
        );
        let (want, _) = f32s(&st, &format!("output.{name}"));
        for backend in [Backend::Kernels, Backend::Candle] {
            let got = match backend {
                Backend::Kernels => out.clone(),
                Backend::Candle | Backend::Bucketed => {
                    layer.forward_routed(&x, &routed, backend).unwrap()
                }
            };
            let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let (r, m) = (rel_l2(&got, &want), max_abs(&got, &want));
            assert!(
                r <= 1e-5 && m <= 1e-5,
                "{file} {name} {backend:?}: rel_l2 {r}, max_abs {m}"
            );
        }
    }
}

#[test]
fn mixtral_golden_every_mode() {
    check_golden("moe-mixtral.safetensors", "mixtral", 1);
}

#[test]
fn olmoe_golden_every_mode() {
    check_golden("moe-olmoe.safetensors", "olmoe", 0);
}

#[test]
fn dtopp_without_scale_is_refused() {
    let layers = load_layers(&fixture("golden/moe-olmoe.safetensors"));
    let x = Tensor::zeros((2, 32), candle_core::DType::F32, &Device::Cpu).unwrap();
    let e = layers[0]
        .1
        .route(&x, Routing::parse("dtopp:0.5").unwrap())
        .unwrap_err();
    assert!(e.to_string().contains("scale"), "{e}");
    assert_eq!(e.exit_code(), 2);
}

#[test]
fn bad_routing_and_widths_are_refused() {
    for (mode, needle) in [
        ("topk:0", "at least 1"),
        ("topp:0", "(0, 1]"),
        ("topp:1.01", "(0, 1]"),
        ("dtopp:-1", "(0, 1]"),
        ("top:2", "unknown mode"),
    ] {
        let e = Routing::parse(mode).unwrap_err();
        assert!(e.to_string().contains(needle), "{mode}: {e}");
    }
    let e = route_logits(&[0.0; 16], 8, Routing::parse("topk:9").unwrap(), None).unwrap_err();
    assert!(e.to_string().contains("K = 9"), "{e}");
    let layers = load_layers(&fixture("golden/moe-mixtral.safetensors"));
    let x = Tensor::zeros((2, 31), candle_core::DType::F32, &Device::Cpu).unwrap();
    let e = layers[0]
        .1
        .route(&x, Routing::parse("topk:2").unwrap())
        .unwrap_err();
    assert!(e.to_string().contains("[N, 32]"), "{e}");
    let e = route_logits(
        &[f32::NAN, 0.0, 0.0, 0.0],
        4,
        Routing::parse("topk:1").unwrap(),
        None,
    )
    .unwrap_err();
    assert!(e.to_string().contains("not finite"), "{e}");
}

// ---- the trained model and the controller ----------------------------------------------

fn trained_inputs() -> (Vec<u8>, Vec<(String, MoeLayer)>) {
    let bytes = std::fs::read(fixture("trained-moe/inputs.safetensors")).unwrap();
    (
        bytes,
        load_layers(&fixture("trained-moe/model.safetensors")),
    )
}

#[test]
fn trained_model_matches_its_capture() {
    let (bytes, layers) = trained_inputs();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let routing: BTreeMap<String, String> =
        serde_json::from_str(&meta.metadata().clone().unwrap()["routing"]).unwrap();
    assert_eq!(layers.len(), 2);
    for (name, layer) in &layers {
        let (h, shape) = f32s(&st, &format!("hidden.{name}"));
        let x = Tensor::from_slice(&h, (shape[0], shape[1]), &Device::Cpu).unwrap();
        let (out, routed) = layer
            .forward(&x, Routing::parse(&routing[name]).unwrap())
            .unwrap();
        assert_eq!(
            routed.chosen,
            u8s(&st, &format!("experts.{name}")),
            "{name}"
        );
        let (w, _) = f32s(&st, &format!("weights.{name}"));
        assert!(max_abs(&routed.weights, &w) <= 1e-6, "{name}");
        let (want, _) = f32s(&st, &format!("output.{name}"));
        let got = out.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(
            rel_l2(&got, &want) <= 1e-5,
            "{name}: {}",
            rel_l2(&got, &want)
        );
    }
}

/// Per block, routing of every captured row at threshold p (logits computed once).
struct Blocks {
    names: Vec<String>,
    logits: Vec<Vec<f32>>,
    taus: Vec<f32>,
}

impl Blocks {
    fn load() -> Self {
        let (bytes, layers) = trained_inputs();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let mut b = Blocks {
            names: vec![],
            logits: vec![],
            taus: vec![],
        };
        for (name, layer) in &layers {
            let (h, shape) = f32s(&st, &format!("hidden.{name}"));
            let x = Tensor::from_slice(&h, (shape[0], shape[1]), &Device::Cpu).unwrap();
            b.names.push(name.clone());
            b.logits.push(layer.logits(&x).unwrap());
            b.taus.push(layer.scale().unwrap());
        }
        b
    }

    fn route(&self, i: usize, rows: std::ops::Range<usize>, p: f64) -> Routed {
        let l = &self.logits[i][rows.start * 8..rows.end * 8];
        route_logits(l, 8, Routing::DTopP { p }, Some(self.taus[i])).unwrap()
    }
}

fn golden() -> serde_json::Value {
    let text = std::fs::read_to_string(fixture("trained-moe/controller_golden.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn controller_trajectories_match_the_golden() {
    let blocks = Blocks::load();
    let g = golden();
    let close = |a: f64, b: &serde_json::Value| (a - b.as_f64().unwrap()).abs() <= 1e-12;
    for (run_name, run) in g["runs"].as_object().unwrap() {
        let start = ControllerFile::from_json(&run["start"].to_string(), run_name).unwrap();
        let mut finals = BTreeMap::new();
        match start {
            ControllerFile::Global(mut c) => {
                for (b, batch) in run["batches"].as_array().unwrap().iter().enumerate() {
                    assert!(close(c.p(), &batch["p"]), "{run_name} batch {b}");
                    let means: Vec<f64> = (0..2)
                        .map(|i| blocks.route(i, 32 * b..32 * b + 32, c.p()).mean_active())
                        .collect();
                    for (i, m) in means.iter().enumerate() {
                        assert_eq!(
                            *m,
                            batch["mean_active_per_layer"][&blocks.names[i]]
                                .as_f64()
                                .unwrap()
                        );
                    }
                    let a = (means[0] + means[1]) / 2.0;
                    assert_eq!(a, batch["mean_active"].as_f64().unwrap());
                    let u = c.update(a);
                    assert!(close(u.p, &batch["after"]["p"]), "{run_name} batch {b}");
                    assert!(close(u.integral, &batch["after"]["integral"]));
                    assert_eq!(u.clamped, batch["after"]["clamped"].as_bool().unwrap());
                }
                assert!(close(c.p(), &run["final_p"]), "{run_name}");
                let want =
                    ControllerFile::from_json(&run["final_state"].to_string(), "final").unwrap();
                assert_eq!(ControllerFile::Global(c.clone()), want);
                // Saving and reading back gives the same controller, bit for bit.
                let file = ControllerFile::Global(c);
                assert_eq!(
                    ControllerFile::from_json(&file.to_json(), "x").unwrap(),
                    file
                );
            }
            ControllerFile::PerLayer(mut cs) => {
                for (b, batch) in run["batches"].as_array().unwrap().iter().enumerate() {
                    for (i, name) in blocks.names.iter().enumerate() {
                        let c = cs.get_mut(name).unwrap();
                        assert!(close(c.p(), &batch["p"][name]), "{run_name} {name} {b}");
                        let m = blocks.route(i, 32 * b..32 * b + 32, c.p()).mean_active();
                        assert_eq!(m, batch["mean_active_per_layer"][name].as_f64().unwrap());
                        let u = c.update(m);
                        assert!(
                            close(u.p, &batch["after"][name]["p"]),
                            "{run_name} {name} {b}"
                        );
                        assert_eq!(
                            u.clamped,
                            batch["after"][name]["clamped"].as_bool().unwrap()
                        );
                    }
                }
                for (name, c) in &cs {
                    assert!(close(c.p(), &run["final_p"][name]), "{run_name} {name}");
                    finals.insert(name.clone(), c.clone());
                }
                let want =
                    ControllerFile::from_json(&run["final_state"].to_string(), "final").unwrap();
                assert_eq!(ControllerFile::PerLayer(finals), want);
            }
        }
    }
}

#[test]
fn resume_continues_identically() {
    let blocks = Blocks::load();
    let settings = PiSettings::new(2.0, 8);
    let mut whole = PiController::new(settings).unwrap();
    let mut first = PiController::new(settings).unwrap();
    let step = |c: &mut PiController, b: usize| {
        let a = (0..2)
            .map(|i| blocks.route(i, 32 * b..32 * b + 32, c.p()).mean_active())
            .sum::<f64>()
            / 2.0;
        c.update(a)
    };
    for b in 0..4 {
        step(&mut whole, b);
        step(&mut first, b);
    }
    let saved = ControllerFile::Global(first).to_json();
    let ControllerFile::Global(mut resumed) = ControllerFile::from_json(&saved, "saved").unwrap()
    else {
        panic!("variant")
    };
    for b in 4..8 {
        assert_eq!(step(&mut whole, b), step(&mut resumed, b));
    }
    assert_eq!(whole, resumed);
    // The training run's own final state reads back as saved.
    let path = fixture("trained-moe/controller.json");
    let ControllerFile::Global(c) = ControllerFile::read(&path).unwrap() else {
        panic!("variant")
    };
    assert_eq!(c.p(), 0.7325668334960938);
    assert_eq!(c.state.step, 400);
}

#[test]
fn bad_controller_settings_and_states_are_refused() {
    let ok = PiSettings::new(2.0, 8);
    for (s, needle) in [
        (PiSettings { target: 0.5, ..ok }, "--target"),
        (PiSettings { target: 9.0, ..ok }, "--target"),
        (PiSettings { p_min: 0.0, ..ok }, "clamp range"),
        (PiSettings { p_max: 1.5, ..ok }, "clamp range"),
        (PiSettings { p0: 0.01, ..ok }, "--p0"),
        (PiSettings { kp: f64::NAN, ..ok }, "finite"),
    ] {
        let e = PiController::new(s).unwrap_err();
        assert!(e.to_string().contains(needle), "{s:?}: {e}");
    }
    for text in [
        "{}",
        r#"{"kind":"other","variant":"global"}"#,
        r#"{"kind":"dtopp-pi","variant":"global"}"#,
        r#"{"kind":"dtopp-pi","variant":"per-layer","layers":{}}"#,
        r#"{"kind":"dtopp-pi","variant":"global","settings":{"target":2,"n_experts":8,"p0":0.5,"kp":1,"ki":0.25,"p_min":0.05,"p_max":1},"state":{"p":3,"integral":0,"step":0}}"#,
    ] {
        let e = ControllerFile::from_json(text, "state.json").unwrap_err();
        assert!(e.to_string().starts_with("state.json: "), "{e}");
    }
}

// ---- properties ---------------------------------------------------------------------------

fn probs_of(logits: &[f32], routing: Routing, tau: f32) -> Vec<f32> {
    let mut x = logits.to_vec();
    if let Routing::DTopP { .. } = routing {
        l3kit::model::moe::routing::dtopp_normalise(logits, tau, &mut x);
    }
    let mut p = vec![0f32; x.len()];
    l3kit::model::moe::routing::softmax(&x, &mut p);
    p
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn topk_chooses_exactly_k(
        (e, k, rows) in (1usize..20).prop_flat_map(|e| (Just(e), 1..=e,
            prop::collection::vec(prop::collection::vec(-8f32..8.0, e), 1..6))),
        renorm in any::<bool>(),
    ) {
        let logits: Vec<f32> = rows.concat();
        let r = route_logits(&logits, e, Routing::TopK { k, renorm }, None).unwrap();
        for t in 0..r.n_tokens {
            prop_assert_eq!(r.active[t] as usize, k);
            let row = &r.chosen[t * e..(t + 1) * e];
            prop_assert_eq!(row.iter().map(|&c| c as usize).sum::<usize>(), k);
            // The chosen are the largest: none left out beats one chosen.
            let p = probs_of(&logits[t * e..(t + 1) * e], Routing::TopK { k, renorm }, 1.0);
            let min_in = (0..e).filter(|&j| row[j] == 1).map(|j| p[j]).fold(f32::INFINITY, f32::min);
            let max_out = (0..e).filter(|&j| row[j] == 0).map(|j| p[j]).fold(f32::NEG_INFINITY, f32::max);
            prop_assert!(min_in >= max_out);
        }
    }

    #[test]
    fn topp_sets_are_minimal_prefixes(
        (e, rows) in (1usize..20).prop_flat_map(|e| (Just(e),
            prop::collection::vec(prop::collection::vec(-8f32..8.0, e), 1..6))),
        p in 0.001f64..=1.0,
        dynamic in any::<bool>(),
        tau in 0.1f32..4.0,
    ) {
        let logits: Vec<f32> = rows.concat();
        let routing = if dynamic { Routing::DTopP { p } } else { Routing::TopP { p } };
        let r = route_logits(&logits, e, routing, Some(tau)).unwrap();
        for t in 0..r.n_tokens {
            let a = r.active[t] as usize;
            prop_assert!(a >= 1 && a <= e);
            let row = &r.chosen[t * e..(t + 1) * e];
            let probs = probs_of(&logits[t * e..(t + 1) * e], routing, tau);
            let mut chosen: Vec<usize> = (0..e).filter(|&j| row[j] == 1).collect();
            chosen.sort_by(|&x, &y| probs[y].total_cmp(&probs[x]).then(x.cmp(&y)));
            let mass: f64 = chosen.iter().map(|&j| probs[j] as f64).sum();
            let without_last = mass - probs[*chosen.last().unwrap()] as f64;
            // All E are taken when rounding leaves the total short of P.
            prop_assert!(mass >= p - 1e-12 || a == e, "mass {} < p {}", mass, p);
            prop_assert!(without_last < p + 1e-12, "dropping the last still reaches p");
            let wsum: f64 = r.weights[t * e..(t + 1) * e].iter().map(|&w| w as f64).sum();
            prop_assert!((wsum - 1.0).abs() < 1e-5);
        }
    }

    #[test]
    fn p_stays_inside_its_clamp(
        means in prop::collection::vec(0f64..=16.0, 1..300),
        target in 1f64..=16.0,
        kp in 0f64..8.0,
        ki in 0f64..4.0,
        p_min in 0.01f64..0.5,
        width in 0f64..0.5,
    ) {
        let settings = PiSettings { target, n_experts: 16, p0: p_min + width / 2.0, kp, ki, p_min, p_max: (p_min + width).min(1.0) };
        let mut c = PiController::new(settings).unwrap();
        for m in means {
            let u = c.update(m);
            prop_assert!(u.p >= settings.p_min && u.p <= settings.p_max);
        }
    }
}

// ---- l3kit route --------------------------------------------------------------------------

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn route_writes_the_golden_decisions() {
    let dir = tempfile::tempdir().unwrap();
    let golden = fixture("golden/moe-mixtral.safetensors");
    let bytes = std::fs::read(&golden).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    for (name, mode) in [("topp0.9", "topp:0.9"), ("dtopp0.7", "dtopp:0.7")] {
        let out = dir.path().join(format!("{name}.safetensors"));
        let text = assert_ok(&run([
            "route",
            "--model",
            path_str(&golden),
            "--inputs",
            path_str(&golden),
            "--routing",
            mode,
            "--out",
            path_str(&out),
            "--json",
        ]));
        let report: serde_json::Value = serde_json::from_str(&text).unwrap();
        let layer = &report["layers"][0];
        let want = u8s(&st, &format!("experts.{name}"));
        let active = want.iter().map(|&c| c as f64).sum::<f64>() / 96.0;
        assert_eq!(layer["mean_active"].as_f64().unwrap(), active);
        let hist: u64 = layer["histogram"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .sum();
        assert_eq!(hist, 96);
        let written = std::fs::read(&out).unwrap();
        let w = SafeTensors::deserialize(&written).unwrap();
        assert_eq!(u8s(&w, "experts.layers.0.block_sparse_moe"), want);
        let (got, shape) = f32s(&w, "weights.layers.0.block_sparse_moe");
        assert_eq!(shape, vec![96, 8]);
        assert!(max_abs(&got, &f32s(&st, &format!("weights.{name}")).0) <= 1e-6);
    }
}

fn calibration(dir: &Path, extra: &[&str]) -> serde_json::Value {
    let (model, inputs) = (
        fixture("trained-moe/model.safetensors"),
        fixture("trained-moe/inputs.safetensors"),
    );
    let mut args = vec![
        "route",
        "--model",
        path_str(&model),
        "--inputs",
        path_str(&inputs),
        "--calibrate",
        "--target",
        "2",
        "--batch-tokens",
        "32",
        "--out",
        path_str(dir),
        "--json",
        "--quiet",
    ];
    args.extend_from_slice(extra);
    let stdout = assert_ok(&run(&args));
    let printed: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let text = std::fs::read_to_string(dir.join("trajectory.json")).unwrap();
    let file: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(printed["batches"], file["batches"]);
    assert!(printed["seconds"].is_f64() && file.get("seconds").is_none());
    for f in [
        "trajectory.csv",
        "trajectory.svg",
        "trajectory.png",
        "controller.json",
    ] {
        assert!(dir.join(f).is_file(), "{f}");
    }
    let csv = std::fs::read_to_string(dir.join("trajectory.csv")).unwrap();
    assert_eq!(csv.lines().count(), 9);
    file
}

#[test]
fn calibrate_reproduces_the_controller_golden() {
    let g = golden();
    let tmp = tempfile::tempdir().unwrap();
    let global = calibration(&tmp.path().join("global"), &[]);
    // A second run into the same folder replaces it with the same bytes.
    let first = common::snapshot(&tmp.path().join("global"));
    calibration(&tmp.path().join("global"), &[]);
    assert_eq!(common::snapshot(&tmp.path().join("global")), first);
    let want = &g["runs"]["global_T2"];
    assert_eq!(global["final_p"], want["final_p"]);
    for (b, w) in global["batches"]
        .as_array()
        .unwrap()
        .iter()
        .zip(want["batches"].as_array().unwrap())
    {
        assert_eq!(b["p"], w["p"]);
        assert_eq!(b["mean_active"], w["mean_active"]);
    }
    // The saved state resumes: the training controller's state gives the resumed run.
    let state = fixture("trained-moe/controller.json");
    let resumed = calibration(&tmp.path().join("resumed"), &["--resume", path_str(&state)]);
    assert_eq!(
        resumed["final_p"],
        g["runs"]["global_T2_resumed"]["final_p"]
    );
    let per = calibration(&tmp.path().join("per"), &["--per-layer"]);
    assert_eq!(per["final_p"], g["runs"]["per-layer_T2"]["final_p"]);
    let saved = ControllerFile::read(&tmp.path().join("per/controller.json")).unwrap();
    let want = ControllerFile::from_json(
        &g["runs"]["per-layer_T2"]["final_state"].to_string(),
        "golden",
    )
    .unwrap();
    assert_eq!(saved, want);
}

/// Write `tensors` (name, shape, f32 values) as a safetensors file.
fn write_f32s(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)]) {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((n, s, _), b)| {
            let v = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                .unwrap();
            (n.clone(), v)
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

/// The OLMoE golden's tensors with `edit` applied.
fn olmoe_with(
    edit: impl Fn(&mut Vec<(String, Vec<usize>, Vec<f32>)>),
) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(fixture("golden/moe-olmoe.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut all: Vec<_> = st
        .names()
        .into_iter()
        .filter(|n| n.starts_with("model.") || *n == "hidden")
        .map(|n| {
            let (v, s) = f32s(&st, n);
            (n.to_string(), s, v)
        })
        .collect();
    edit(&mut all);
    all
}

#[test]
fn route_refuses_bad_input_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let golden = fixture("golden/moe-olmoe.safetensors");
    let g = path_str(&golden);
    let narrow = d.join("narrow.safetensors");
    write_f32s(&narrow, &[("hidden".into(), vec![4, 31], vec![0.5; 124])]);
    let bad_expert = d.join("bad-expert.safetensors");
    write_f32s(
        &bad_expert,
        &olmoe_with(|all| {
            let t = all
                .iter_mut()
                .find(|t| t.0 == "model.layers.0.mlp.experts.3.up_proj.weight")
                .unwrap();
            t.1 = vec![47, 32];
            t.2.truncate(47 * 32);
        }),
    );
    let missing_expert = d.join("missing-expert.safetensors");
    write_f32s(
        &missing_expert,
        &olmoe_with(|all| all.retain(|t| !t.0.starts_with("model.layers.0.mlp.experts.7."))),
    );
    let map = d.join("map.toml");
    std::fs::write(
        &map,
        "[[moe]]\ngate = \"model.layers.0.mlp.gate.weight\"\nscale = \"model.layers.0.mlp.gate.tau\"\n\
         w1 = \"model.layers.0.mlp.experts.{j}.gate_proj.weight\"\n\
         w2 = \"model.layers.0.mlp.experts.{j}.down_proj.weight\"\n\
         w3 = \"model.layers.0.mlp.experts.{j}.up_proj.weight\"\n",
    )
    .unwrap();
    let no_moe = fixture("checkpoints/paper");
    let out = d.join("out.safetensors");
    let o = path_str(&out);
    let cases: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (vec!["--routing", "topk:0"], vec!["K must be at least 1"]),
        (vec!["--routing", "topk:9"], vec!["K = 9", "8 experts"]),
        (vec!["--routing", "topp:0"], vec!["(0, 1]"]),
        (vec!["--routing", "dtopp:1.5"], vec!["(0, 1]"]),
        (
            vec!["--routing", "dtopp:0.5"],
            vec!["no DTop-p scale tensor", "gate.scale"],
        ),
        (vec![], vec!["--routing"]),
        (
            vec!["--routing", "topk:2", "--map", path_str(&map)],
            vec!["missing scale tensor model.layers.0.mlp.gate.tau"],
        ),
    ];
    for (extra, needles) in cases {
        let mut args = vec!["route", "--model", g, "--inputs", g, "--out", o];
        args.extend(extra.iter());
        assert_refused(&run(&args), 2, &needles);
        assert!(!out.exists(), "{extra:?} wrote its output");
    }
    let model_cases = [
        (
            path_str(&golden),
            path_str(&narrow),
            vec!["width 31", "need width 32"],
        ),
        (
            path_str(&bad_expert),
            g,
            vec!["experts.3.up_proj.weight", "[47, 32]", "expected [48, 32]"],
        ),
        (
            path_str(&missing_expert),
            g,
            vec!["missing expert tensor", "experts.7"],
        ),
        (path_str(&no_moe), g, vec!["no MoE layers found", "--map"]),
    ];
    for (model, inputs, needles) in model_cases {
        let args = [
            "route",
            "--model",
            model,
            "--inputs",
            inputs,
            "--routing",
            "topk:2",
            "--out",
            o,
        ];
        assert_refused(&run(args), 2, &needles);
        assert!(!out.exists());
    }
    // Calibration: bad settings and a batch larger than the inputs.
    let calib = d.join("calib");
    let c = path_str(&calib);
    let mixtral = fixture("golden/moe-mixtral.safetensors");
    let m = path_str(&mixtral);
    for (extra, needles) in [
        (
            vec!["--target", "2", "--batch-tokens", "97"],
            vec!["fewer than one batch"],
        ),
        (
            vec!["--target", "9", "--batch-tokens", "8"],
            vec!["--target 9"],
        ),
        (
            vec!["--target", "2", "--batch-tokens", "8", "--p-min", "0"],
            vec!["clamp range"],
        ),
        (
            vec!["--target", "2", "--batch-tokens", "8", "--p0", "0.01"],
            vec!["--p0"],
        ),
    ] {
        let mut args = vec![
            "route",
            "--model",
            m,
            "--inputs",
            m,
            "--calibrate",
            "--out",
            c,
        ];
        args.extend(extra.iter());
        assert_refused(&run(&args), 2, &needles);
        assert!(!calib.exists(), "{extra:?}");
    }
    let args = [
        "route",
        "--model",
        g,
        "--inputs",
        g,
        "--calibrate",
        "--target",
        "2",
        "--batch-tokens",
        "8",
        "--out",
        c,
    ];
    assert_refused(&run(args), 2, &["no DTop-p scale tensor"]);
    assert!(!calib.exists());
}

// ---- the trained model as a whole decoder -------------------------------------------------

/// `torch.linspace(start, end, steps)` in f32 (CPU kernel: the first half counts up from the
/// start, the second half down from the end), truncated like `.long()`.
fn torch_linspace_long(start: f32, end: f32, steps: usize) -> Vec<usize> {
    let step = (end - start) / (steps - 1) as f32;
    (0..steps)
        .map(|i| {
            let v = if i < steps / 2 {
                start + step * i as f32
            } else {
                end - step * (steps - i - 1) as f32
            };
            v as usize
        })
        .collect()
}

#[test]
fn trained_moe_decoder_matches_its_heldout_loss() {
    use l3kit::model::decoder::Decoder;
    use l3kit::model::runtime::L3Runtime;
    let dir = fixture("trained-moe");
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    let want = cfg["results"]["heldout_loss"].as_f64().unwrap();
    let dec = Decoder::open(&dir, &Default::default(), &Device::Cpu).unwrap();
    let tok = tokenizers::Tokenizer::from_file(fixture("tokenizer/tiny-bpe-512.json")).unwrap();
    let stream = l3kit::infer::eval::token_stream(
        &[fixture("corpus/heldout.txt")],
        None,
        None,
        false,
        &tok,
        None,
        None,
    )
    .unwrap()
    .ids;
    // train_tiny.py's evaluate: 64 windows of T = 64 at linspace starts, one batch.
    let t = 64;
    let starts = torch_linspace_long(0.0, (stream.len() - t - 2) as f32, 64);
    let rows: Vec<Vec<u32>> = starts.iter().map(|&s| stream[s..s + t].to_vec()).collect();
    let mut cache = dec.new_cache();
    let mut runtime = L3Runtime::new(0, false);
    let logits = dec.forward(&rows, &mut cache, &mut runtime).unwrap();
    let v = dec.vocab_size();
    let logits = logits.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let mut nll = 0f64;
    for (r, &s) in starts.iter().enumerate() {
        for j in 0..t {
            let row = &logits[(r * t + j) * v..(r * t + j + 1) * v];
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let lse = max
                + row
                    .iter()
                    .map(|&x| (x as f64 - max).exp())
                    .sum::<f64>()
                    .ln();
            nll += lse - row[stream[s + j + 1] as usize] as f64;
        }
    }
    let loss = nll / (64 * t) as f64;
    // The config records the loss to 4 decimals.
    assert!(
        (loss - want).abs() <= 1e-4,
        "held-out loss {loss}, PyTorch {want}"
    );
}

#[test]
fn eval_runs_the_trained_moe_model_and_refuses_a_config_without_its_threshold() {
    let model = fixture("trained-moe");
    let tok = fixture("tokenizer/tiny-bpe-512.json");
    let text = fixture("corpus/heldout.txt");
    let args = |m: &Path| {
        vec![
            "--json".to_string(),
            "eval".into(),
            "--model".into(),
            path_str(m).into(),
            "--tokenizer".into(),
            path_str(&tok).into(),
            path_str(&text).into(),
            "--max-tokens".into(),
            "4000".into(),
        ]
    };
    let out: serde_json::Value = serde_json::from_str(&assert_ok(&run(args(&model)))).unwrap();
    let nll = out["result"]["mean_nll"].as_f64().unwrap();
    // Far below the 6.2 of the untrained model, near the 3.77 of the trained one.
    assert!(nll > 3.0 && nll < 4.5, "{nll}");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        model.join("model.safetensors"),
        dir.path().join("model.safetensors"),
    )
    .unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(model.join("config.json")).unwrap()).unwrap();
    cfg.as_object_mut().unwrap().remove("controller");
    std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
    assert_refused(&run(args(dir.path())), 2, &["controller.final_p"]);
    cfg["routing"] = "topk:9".into();
    std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
    assert_refused(&run(args(dir.path())), 2, &["K = 9"]);
}

#[test]
fn a_map_names_the_layer_like_detection_does() {
    let dir = tempfile::tempdir().unwrap();
    let golden = fixture("golden/moe-mixtral.safetensors");
    let g = path_str(&golden);
    let map = dir.path().join("moe.toml");
    let p = "layers.0.block_sparse_moe";
    std::fs::write(
        &map,
        format!(
            "[[moe]]\nname = \"router0\"\ngate = \"{p}.gate.weight\"\nscale = \"{p}.gate.scale\"\n\
             w1 = \"{p}.experts.{{j}}.w1.weight\"\nw2 = \"{p}.experts.{{j}}.w2.weight\"\n\
             w3 = \"{p}.experts.{{j}}.w3.weight\"\nshared_w1 = \"{p}.shared_experts.{{j}}.w1.weight\"\n\
             shared_w2 = \"{p}.shared_experts.{{j}}.w2.weight\"\nshared_w3 = \"{p}.shared_experts.{{j}}.w3.weight\"\n"
        ),
    )
    .unwrap();
    let ckpt = Checkpoint::open(&golden).unwrap();
    let mapped = detect_moe(&ckpt, Some(&map)).unwrap();
    let found = detect_moe(&ckpt, None).unwrap();
    assert_eq!(mapped.scheme, "map");
    assert_eq!(mapped.layers[0].name, "router0");
    assert_eq!(mapped.layers[0].experts, found.layers[0].experts);
    assert_eq!(mapped.layers[0].shared, found.layers[0].shared);
    let out = dir.path().join("d.safetensors");
    assert_ok(&run([
        "route",
        "--model",
        g,
        "--inputs",
        g,
        "--map",
        path_str(&map),
        "--routing",
        "dtopp:0.5",
        "--out",
        path_str(&out),
        "--quiet",
    ]));
    let bytes = std::fs::read(&golden).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let written = std::fs::read(&out).unwrap();
    let w = SafeTensors::deserialize(&written).unwrap();
    assert_eq!(u8s(&w, "experts.router0"), u8s(&st, "experts.dtopp0.5"));
    // A template without {j} names one tensor for every expert: refused.
    let text = std::fs::read_to_string(&map)
        .unwrap()
        .replace("experts.{j}.w2", "experts.0.w2");
    std::fs::write(&map, text).unwrap();
    let e = detect_moe(&ckpt, Some(&map)).unwrap_err();
    assert!(e.to_string().contains("has no {j}"), "{e}");
}
