//! MoE routing and layer-forward throughput on CPU (issue 12). Run with
//!
//!   cargo bench --bench moe -- [REPS] [TOKENS]
//!
//! The problem is the realistic layer: d 2048, 64 SwiGLU experts of width 1408, top-8
//! routing (and DTop-p at the threshold giving about the same mean), 4096 tokens (REPS default
//! 3, TOKENS default 4096). Weights and hidden states are seeded normals scaled like a
//! trained layer's (std d^-1/2, H^-1/2 for W2), built in memory (about 2.2 GB of f32). Each
//! figure is the median of REPS timed runs after one warm-up.

use candle_core::{DType, Device, Tensor};
use l3kit::checkpoint::moe::{ExpertTensors, MoeTensors};
use l3kit::model::l3::Backend;
use l3kit::model::moe::{route_logits, MoeConfig, MoeLayer, Routing};
use std::collections::HashMap;
use std::time::Instant;

mod common;
use common::median;

fn time(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    let mut t: Vec<f64> = (0..reps)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    median(&mut t)
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let reps: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(3);
    let n: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(4096);
    let (d, e, h) = (2048usize, 64usize, 1408usize);
    let dev = Device::Cpu;
    let prefix = "layers.0.block_sparse_moe";
    let names = MoeTensors {
        name: prefix.into(),
        layer_id: Some(0),
        scheme: "mixtral".into(),
        gate: format!("{prefix}.gate.weight"),
        scale: Some(format!("{prefix}.gate.scale")),
        experts: (0..e)
            .map(|j| ExpertTensors {
                w1: format!("{prefix}.experts.{j}.w1.weight"),
                w2: format!("{prefix}.experts.{j}.w2.weight"),
                w3: format!("{prefix}.experts.{j}.w3.weight"),
            })
            .collect(),
        shared: vec![],
        d_model: d,
        n_experts: e,
        expert_hidden: h,
        shared_hidden: None,
    };
    let randn = |shape: &[usize], std: f64| Tensor::randn(0f32, std as f32, shape, &dev).unwrap();
    let mut map = HashMap::new();
    map.insert(names.gate.clone(), randn(&[e, d], 1.5 / (d as f64).sqrt()));
    map.insert(
        names.scale.clone().unwrap(),
        Tensor::new(&[1.2f32], &dev).unwrap(),
    );
    for x in &names.experts {
        map.insert(x.w1.clone(), randn(&[h, d], 1.0 / (d as f64).sqrt()));
        map.insert(x.w2.clone(), randn(&[d, h], 1.0 / (h as f64).sqrt()));
        map.insert(x.w3.clone(), randn(&[h, d], 1.0 / (d as f64).sqrt()));
    }
    let vb = candle_nn::VarBuilder::from_tensors(map, DType::F32, &dev);
    let layer = MoeLayer::new(MoeConfig::of(&names), &vb, &names).unwrap();
    let x = randn(&[n, d], 1.0);
    println!(
        "MoE layer d {d}, {e} experts x {h}, {n} tokens, {} threads",
        rayon::current_num_threads()
    );
    let logits = layer.logits(&x).unwrap();
    let t_logits = time(reps, || {
        layer.logits(&x).unwrap();
    });
    println!(
        "router logits (matmul [N, d] x [d, E]): median {:.4} s, {:.0} tokens/s",
        t_logits,
        n as f64 / t_logits
    );
    let topk = Routing::parse("topk:8").unwrap();
    // The DTop-p threshold whose mean is about 8 active experts on these logits.
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    for _ in 0..40 {
        let mid = (lo + hi) / 2.0;
        let r = route_logits(&logits, e, Routing::DTopP { p: mid }, layer.scale()).unwrap();
        if r.mean_active() < 8.0 {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let dtopp = Routing::DTopP { p: hi };
    for routing in [topk, dtopp] {
        let r = route_logits(&logits, e, routing, layer.scale()).unwrap();
        let t = time(reps, || {
            route_logits(&logits, e, routing, layer.scale()).unwrap();
        });
        println!(
            "routing {routing} (softmax, rank, select on the logits; mean active {:.3}): median {:.5} s, {:.0} tokens/s",
            r.mean_active(),
            t,
            n as f64 / t
        );
    }
    let routed = route_logits(&logits, e, topk, None).unwrap();
    let flops = 6.0 * (d * h) as f64 * routed.active.iter().map(|&a| a as f64).sum::<f64>();
    for backend in [Backend::Kernels, Backend::Candle] {
        let t = time(reps, || {
            layer.forward_routed(&x, &routed, backend).unwrap();
        });
        println!(
            "forward topk:8, {backend:?} (tokens grouped by expert): median {:.3} s, {:.0} tokens/s, {:.1} GFLOP/s",
            t,
            n as f64 / t,
            flops / t / 1e9
        );
    }
}
