//! The fuzz targets of `tests/fuzz/mod.rs` over their committed seeds and a bounded number of
//! seeded mutations of each (the short run CI affords), plus the long run
//! (`fuzz_long`, ignored; docs/fuzzing.md) and the seed writer (`write_seed_corpus`, ignored).

mod common;
mod fuzz;

use fuzz::{mutate, seeds, Scratch, Target, TARGETS};
use rand::{Rng, SeedableRng};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::time::{Duration, Instant};

thread_local! {
    static FEEDING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Keep the panic message of a fed input off stderr (it is reported as a finding), but not
/// that of the test's own assertions.
fn quiet_panics_while_feeding() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !FEEDING.with(|f| f.get()) {
            default(info)
        }
    }));
}

/// Feed one input; a panic is a finding, saved under `target/fuzz-findings/` to reproduce.
fn feed(t: &Target, s: &Scratch, data: &[u8]) -> Result<bool, String> {
    FEEDING.with(|f| f.set(true));
    let result = catch_unwind(AssertUnwindSafe(|| (t.feed)(s, data)));
    FEEDING.with(|f| f.set(false));
    result.map_err(|e| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-findings");
        std::fs::create_dir_all(&dir).ok();
        use sha2::{Digest, Sha256};
        let file = dir.join(format!(
            "{}-{}",
            t.name,
            &hex::encode(Sha256::digest(data))[..16]
        ));
        std::fs::write(&file, data).ok();
        let msg = e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        format!("{}: panic {msg:?} on {}", t.name, file.display())
    })
}

/// Run `t` over its seeds, then over mutations until `execs` inputs or `time` have passed;
/// returns (executions, findings).
fn campaign(t: &Target, seed: u64, execs: u64, time: Duration) -> (u64, Vec<String>) {
    let s = Scratch::new();
    let corpus = seeds(t.name);
    assert!(!corpus.is_empty(), "{}: no seeds", t.name);
    let mut findings = Vec::new();
    let mut n = 0u64;
    for (path, bytes) in &corpus {
        match feed(t, &s, bytes) {
            // A seed the reader refuses would only test its first check.
            Ok(accepted) => assert!(
                accepted,
                "{}: the seed {} is refused",
                t.name,
                path.display()
            ),
            Err(f) => findings.push(f),
        }
        n += 1;
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let started = Instant::now();
    while n < execs && started.elapsed() < time {
        let base = &corpus[rng.random_range(0..corpus.len())].1;
        let other = &corpus[rng.random_range(0..corpus.len())].1;
        let input = mutate(&mut rng, base, other);
        if let Err(f) = feed(t, &s, &input) {
            findings.push(f);
        }
        n += 1;
    }
    (n, findings)
}

#[test]
fn every_target_survives_its_seeds_and_some_mutations() {
    quiet_panics_while_feeding();
    let mut all = Vec::new();
    for (i, t) in TARGETS.iter().enumerate() {
        let (n, findings) = campaign(t, 1000 + i as u64, 300, Duration::from_secs(20));
        assert!(n >= 2, "{}: {n} executions", t.name);
        all.extend(findings);
    }
    assert!(all.is_empty(), "findings:\n{}", all.join("\n"));
}

/// The harness itself: a reader that panics is a finding, not a passed input or a crash of
/// the run.
#[test]
fn a_panicking_reader_is_reported_as_a_finding() {
    fn fragile(_: &Scratch, data: &[u8]) -> bool {
        assert!(!data.starts_with(b"boom"), "fragile reader met its input");
        true
    }
    quiet_panics_while_feeding();
    let t = Target {
        name: "fragile",
        feed: fragile,
    };
    let s = Scratch::new();
    assert_eq!(feed(&t, &s, b"fine"), Ok(true));
    let finding = feed(&t, &s, b"boom!").unwrap_err();
    assert!(
        finding.contains("fragile reader met its input"),
        "{finding}"
    );
}

/// The long run: `L3KIT_FUZZ_TARGET=NAME[,NAME...]` (default all), `L3KIT_FUZZ_EXECS` (default
/// 500000) and `L3KIT_FUZZ_SECS` (default 300) per target, whichever comes first, under a
/// 4 GiB address-space limit so a huge allocation aborts instead of passing.
#[test]
#[ignore]
fn fuzz_long() {
    let lim = libc::rlimit {
        rlim_cur: 4 << 30,
        rlim_max: 4 << 30,
    };
    // SAFETY: setrlimit on this process with a valid struct.
    unsafe { libc::setrlimit(libc::RLIMIT_AS, &lim) };
    quiet_panics_while_feeding();
    let only = std::env::var("L3KIT_FUZZ_TARGET").ok();
    let env_u64 = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let execs = env_u64("L3KIT_FUZZ_EXECS", 500_000);
    let secs = env_u64("L3KIT_FUZZ_SECS", 300);
    let seed = env_u64("L3KIT_FUZZ_SEED", 1);
    let mut all = Vec::new();
    for t in TARGETS.iter().filter(|t| {
        only.as_deref()
            .is_none_or(|o| o.split(',').any(|o| o == t.name))
    }) {
        let started = Instant::now();
        let (n, findings) = campaign(t, seed, execs, Duration::from_secs(secs));
        let took = started.elapsed().as_secs_f64();
        eprintln!(
            "fuzz {}: {n} executions in {took:.0} s ({:.0}/s), {} findings",
            t.name,
            n as f64 / took,
            findings.len()
        );
        all.extend(findings);
    }
    assert!(all.is_empty(), "findings:\n{}", all.join("\n"));
}

/// Write the seed corpora under `fuzz/corpus/` from the fixtures and small files made here
/// (`cargo test --release --test fuzz_smoke write_seed_corpus -- --ignored`).
#[test]
#[ignore]
fn write_seed_corpus() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let corpus = root.join("fuzz/corpus");
    let put = |target: &str, name: &str, bytes: &[u8]| {
        let d = corpus.join(target);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(name), bytes).unwrap();
    };
    let fixture = |rel: &str| std::fs::read(common::fixture(rel)).unwrap();
    let s = Scratch::new();
    // safetensors: a small source checkpoint and an allocation.
    let small = s.dir.join("small");
    l3kit::synth::small(
        &small,
        l3kit::checkpoint::Dialect::Nanochat,
        l3kit::formats::dtype::TableDtype::Bf16,
    )
    .unwrap();
    put(
        "safetensors",
        "synth-nanochat.safetensors",
        &std::fs::read(small.join("model.safetensors")).unwrap(),
    );
    put(
        "safetensors",
        "allocation-tiny.safetensors",
        &fixture("checkpoints/allocation-tiny.safetensors"),
    );
    put(
        "allocation",
        "allocation-tiny.safetensors",
        &fixture("checkpoints/allocation-tiny.safetensors"),
    );
    put(
        "allocation",
        "synth.safetensors",
        &std::fs::read(small.join("allocation.safetensors")).unwrap(),
    );
    // profile: one from ids, one from text.
    let ids = s.dir.join("ids.u16");
    let words: Vec<u8> = [1u16, 2, 3, 1, 2, 3, 4, 0, 5, 5, 5, 0, 2, 3]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    std::fs::write(&ids, words).unwrap();
    let p = s.dir.join("ids-profile.safetensors");
    common::assert_ok(&common::run([
        "profile",
        "--vocab-size",
        "8",
        "--separator",
        "0",
        ids.to_str().unwrap(),
        "--out",
        p.to_str().unwrap(),
    ]));
    put("profile", "ids.safetensors", &std::fs::read(&p).unwrap());
    let text = s.dir.join("t.txt");
    std::fs::write(&text, "the cat sat on the mat\nthe dog\n").unwrap();
    let p = s.dir.join("text-profile.safetensors");
    common::assert_ok(&common::run([
        "profile",
        "--tokenizer",
        common::fixture("tokenizer/tiny-bpe-512.json")
            .to_str()
            .unwrap(),
        text.to_str().unwrap(),
        "--out",
        p.to_str().unwrap(),
    ]));
    put("profile", "text.safetensors", &std::fs::read(&p).unwrap());
    // sharded index over the scratch's shard.
    put(
        "sharded_index",
        "index.json",
        br#"{"metadata":{"total_size":20},"weight_map":{"a":"model-00001-of-00001.safetensors","b":"model-00001-of-00001.safetensors"}}"#,
    );
    // pytorch: the small fixtures.
    put(
        "pytorch",
        "tiny_state_dict.pt",
        &fixture("pt/tiny_state_dict.pt"),
    );
    put("pytorch", "tiny_nested.pt", &fixture("pt/tiny_nested.pt"));
    // packed config: the scratch folder's own.
    put(
        "packed_config",
        "config.json",
        &std::fs::read(s.packed.join("config.json")).unwrap(),
    );
    // map files.
    put(
        "map",
        "paper.toml",
        b"dialect = \"paper\"\nresidual = \"replace\"\nscore_scale = 0.125\n\n[[layers]]\nname = \"l3.0\"\nkeys = \"l3.0.w_k.weight\"\nvalues = \"l3.0.w_v.weight\"\nbounds = \"l3.0.bounds\"\nw_up = \"l3.0.w_up.weight\"\nw_mix = \"l3.0.w_mix.weight\"\n",
    );
    put(
        "map",
        "nanochat.toml",
        b"dialect = \"nanochat\"\n\n[[layers]]\nname = \"l3_layers.1\"\nkeys = \"l3_layers.1.kv_weight\"\nbounds = \"l3_layers.1.bounds\"\nw_up = \"l3_layers.1.w_up.weight\"\nw_mix = \"l3_layers.1.w_mix.weight\"\n",
    );
    // forward inputs.
    let inputs = s.dir.join("inputs.safetensors");
    let hidden: Vec<f32> = (0..4 * 8).map(|i| i as f32 / 8.0).collect();
    l3kit::verify::write_inputs(&inputs, &[0, 1, 7, 2], &[("hidden".into(), hidden, 8)]).unwrap();
    put(
        "forward_inputs",
        "inputs.safetensors",
        &std::fs::read(&inputs).unwrap(),
    );
    // MoE map files and controller states.
    put(
        "moe_map",
        "olmoe.toml",
        b"[[moe]]\nname = \"model.layers.0.mlp\"\ngate = \"model.layers.0.mlp.gate.weight\"\nw1 = \"model.layers.0.mlp.experts.{j}.gate_proj.weight\"\nw2 = \"model.layers.0.mlp.experts.{j}.down_proj.weight\"\nw3 = \"model.layers.0.mlp.experts.{j}.up_proj.weight\"\n",
    );
    put(
        "controller_state",
        "global.json",
        &fixture("trained-moe/controller.json"),
    );
    let golden: serde_json::Value =
        serde_json::from_slice(&fixture("trained-moe/controller_golden.json")).unwrap();
    put(
        "controller_state",
        "per-layer.json",
        golden["runs"]["per-layer_T2"]["final_state"]
            .to_string()
            .as_bytes(),
    );
}
