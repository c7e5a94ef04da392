//! `l3kit eval` and `l3kit generate` through the binary: the bundled trained model's held-out
//! perplexity equals PyTorch's (`fixtures/trained/eval.json`), packed tables stay within the
//! documented bounds, generation is deterministic, and bad input is refused cleanly.

mod common;

use common::{assert_ok, assert_refused, fixture, run, run_limited, snapshot, Limits};
use std::path::{Path, PathBuf};

fn tiny_tok() -> String {
    fixture("tokenizer/tiny-bpe-512.json").display().to_string()
}

fn trained() -> String {
    fixture("trained").display().to_string()
}

fn alloc() -> String {
    fixture("trained/allocation.safetensors")
        .display()
        .to_string()
}

fn heldout() -> String {
    fixture("corpus/heldout.txt").display().to_string()
}

/// Whole-file evaluations are legitimately long on a loaded machine: a hang guard, not a timer.
fn run_long<I, S>(args: I) -> std::process::Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let limits = Limits {
        time: std::time::Duration::from_secs(900),
        ..Limits::default()
    };
    run_limited(args, &[], &limits)
}

fn json(out: &std::process::Output) -> serde_json::Value {
    let text = assert_ok(out);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn golden() -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(fixture("trained/eval.json")).unwrap()).unwrap()
}

fn close(a: f64, b: f64, rel: f64) -> bool {
    ((a - b) / b).abs() <= rel
}

fn pack(dtype: &str, dir: &Path) -> PathBuf {
    let out = dir.join(format!("packed-{dtype}"));
    assert_ok(&run([
        "pack",
        &trained(),
        "--allocation",
        &alloc(),
        "--dtype",
        dtype,
        "--out",
        &out.display().to_string(),
    ]));
    out
}

#[test]
fn heldout_perplexity_equals_pytorch() {
    let want = golden();
    let args = |extra: &[&str]| {
        let mut a = vec![
            "--json".to_string(),
            "eval".into(),
            "--model".into(),
            trained(),
            "--allocation".into(),
            alloc(),
            "--tokenizer".into(),
            tiny_tok(),
            heldout(),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    for (extra, key) in [
        (vec![], None),
        (vec!["--max-tokens", "10000"], Some("max_tokens_10000")),
        (vec!["--seq-len", "32"], Some("seq_len_32")),
    ] {
        let got = json(&run_long(args(&extra)));
        let w = key.map(|k| &want[k]).unwrap_or(&want);
        for field in ["stream_tokens", "windows", "targets", "bytes"] {
            assert_eq!(got[field], w[field], "{field} ({extra:?})");
        }
        let r = &got["result"];
        for (field, tol) in [
            ("mean_nll", 1e-6),
            ("perplexity", 1e-6),
            ("bits_per_byte", 1e-6),
        ] {
            let (a, b) = (r[field].as_f64().unwrap(), w[field].as_f64().unwrap());
            assert!(
                close(a, b, tol),
                "{field}: l3kit {a} vs PyTorch {b} ({extra:?})"
            );
        }
    }
}

#[test]
fn packed_perplexity_stays_within_the_bounds() {
    let dir = tempfile::tempdir().unwrap();
    for dtype in ["f32", "f16", "bf16", "int8"] {
        let packed = pack(dtype, dir.path());
        let out = run_long([
            "--json",
            "eval",
            "--model",
            &packed.display().to_string(),
            "--compare",
            &trained(),
            "--allocation",
            &alloc(),
            "--tokenizer",
            &tiny_tok(),
            &heldout(),
            "--max-tokens",
            "20000",
        ]);
        let v = json(&out);
        let c = &v["comparison"];
        assert_eq!(c["passed"], true, "{dtype}: {c}");
        let change = c["relative_perplexity_change"].as_f64().unwrap();
        if dtype == "f32" {
            assert_eq!(
                change, 0.0,
                "lossless tables give the source's perplexity exactly"
            );
            assert_eq!(c["top1_changed"].as_f64().unwrap(), 0.0);
        }
    }
    // A bound of 0 fails a lossy pack whose perplexity rose: exit 1, a failed check.
    let packed = dir.path().join("packed-f16");
    let out = run([
        "eval",
        "--model",
        &packed.display().to_string(),
        "--compare",
        &trained(),
        "--allocation",
        &alloc(),
        "--tokenizer",
        &tiny_tok(),
        &heldout(),
        "--max-tokens",
        "20000",
        "--max-ppl-increase",
        "0",
    ]);
    assert_refused(&out, 1, &["perplexity rose"]);
}

#[test]
fn generation_is_deterministic_and_sampling_is_seeded() {
    let dir = tempfile::tempdir().unwrap();
    let packed = pack("int8", dir.path());
    let gen = |extra: &[&str]| {
        let mut a = vec![
            "--json".to_string(),
            "generate".into(),
            "--model".into(),
            packed.display().to_string(),
            "--tokenizer".into(),
            tiny_tok(),
            "--max-new-tokens".into(),
            "24".into(),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        json(&run(a))
    };
    let g1 = gen(&["--prompt", "To be, or not to be"]);
    let g2 = gen(&["--prompt", "To be, or not to be", "--prefetch", "off"]);
    assert_eq!(g1["new_token_ids"], g2["new_token_ids"]);
    assert_eq!(g1["new_token_ids"].as_array().unwrap().len(), 24);
    assert!(g1["text"].as_str().unwrap().len() > 10);
    let ids: Vec<String> = g1["prompt_token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.to_string())
        .collect();
    // The same prompt as ids gives the same continuation; nothing is added to ids.
    let g3 = gen(&["--prompt-ids", &ids.join(",")]);
    assert_eq!(g3["prompt_token_ids"], g1["prompt_token_ids"]);
    assert_eq!(g3["new_token_ids"], g1["new_token_ids"]);
    let s = |seed: &str| {
        gen(&[
            "--prompt",
            "Now is",
            "--temperature",
            "1.0",
            "--top-p",
            "0.9",
            "--seed",
            seed,
        ])["new_token_ids"]
            .clone()
    };
    assert_eq!(s("7"), s("7"));
    assert_ne!(s("7"), s("8"));
}

#[test]
fn bad_input_is_refused_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base = |model: &str, tok: &str, text: &str, extra: &[&str]| {
        let mut a = vec![
            "eval".to_string(),
            "--model".into(),
            model.to_string(),
            "--allocation".into(),
            alloc(),
            "--tokenizer".into(),
            tok.to_string(),
            text.to_string(),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let before = snapshot(&fixture("trained"));
    // A tokenizer whose vocabulary is not the model's.
    let gpt2 = fixture("tokenizer/gpt2.json").display().to_string();
    assert_refused(
        &run(base(&trained(), &gpt2, &heldout(), &[])),
        2,
        &["gpt2.json", "50257 tokens", "vocabulary of 512"],
    );
    // Text shorter than two tokens.
    let empty = d.join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    assert_refused(
        &run(base(
            &trained(),
            &tiny_tok(),
            &empty.display().to_string(),
            &[],
        )),
        2,
        &["at least 2"],
    );
    // A window longer than the model's context.
    assert_refused(
        &run(base(
            &trained(),
            &tiny_tok(),
            &heldout(),
            &["--seq-len", "65"],
        )),
        2,
        &["--seq-len 65", "context of 64"],
    );
    // Model options l3kit does not implement are refused by name.
    let copy = |name: &str, edit: &dyn Fn(&mut serde_json::Value)| -> String {
        let m = d.join(name);
        std::fs::create_dir(&m).unwrap();
        for f in ["model.safetensors", "allocation.safetensors"] {
            std::fs::copy(fixture("trained").join(f), m.join(f)).unwrap();
        }
        let mut cfg: serde_json::Value =
            serde_json::from_slice(&std::fs::read(fixture("trained/config.json")).unwrap())
                .unwrap();
        edit(&mut cfg);
        std::fs::write(m.join("config.json"), serde_json::to_vec(&cfg).unwrap()).unwrap();
        m.display().to_string()
    };
    let unknown = copy("unknown", &|c| c["rope_theta"] = 10000.into());
    assert_refused(
        &run(base(&unknown, &tiny_tok(), &heldout(), &[])),
        2,
        &["config.json", "\"rope_theta\"", "not supported"],
    );
    let act = copy("act", &|c| c["mlp_activation"] = "relu".into());
    assert_refused(
        &run(base(&act, &tiny_tok(), &heldout(), &[])),
        2,
        &["mlp_activation \"relu\""],
    );
    // Config and tensors that disagree.
    let deeper = copy("deeper", &|c| c["n_layer"] = 5.into());
    assert_refused(
        &run(base(&deeper, &tiny_tok(), &heldout(), &[])),
        2,
        &["h.4", "missing tensor"],
    );
    let wider = copy("wider", &|c| c["mlp_hidden"] = 256.into());
    assert_refused(
        &run(base(&wider, &tiny_tok(), &heldout(), &[])),
        2,
        &["h.0.mlp.fc.weight", "[128, 64]", "[256, 64]"],
    );
    let placed = copy("placed", &|c| c["l3_layers"] = serde_json::json!([1]));
    assert_refused(
        &run(base(&placed, &tiny_tok(), &heldout(), &[])),
        2,
        &["l3.3"],
    );
    // generate: an empty prompt, and ids beyond the vocabulary.
    let g = |extra: &[&str]| {
        let mut a = vec![
            "generate".to_string(),
            "--model".into(),
            trained(),
            "--allocation".into(),
            alloc(),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        run(a)
    };
    assert_refused(&g(&["--prompt-ids", "600"]), 2, &["token id 600", "512"]);
    assert_refused(
        &g(&["--prompt-ids", "1", "--temperature=-1"]),
        2,
        &["--temperature"],
    );
    assert_refused(&g(&["--prompt-ids", "1", "--top-p", "0"]), 2, &["--top-p"]);
    assert_eq!(snapshot(&fixture("trained")), before, "inputs unchanged");
}
