//! MoE routing, the PI controller and the MoE layer against the independent PyTorch
//! implementation's goldens (`fixtures/MOE.md`), their properties, bad inputs, and the
//! `l3kit route` command.

mod common;

use candle_core::{Device, Tensor};
use common::fixture;
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
                Backend::Candle => layer.forward_routed(&x, &routed, backend).unwrap(),
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
