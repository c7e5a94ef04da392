//! `l3kit tokenize`: the id file reads back as exactly the sequences of the text (profiling
//! the ids gives the profile of the text), the manifest counts every input, the output is
//! deterministic, and bad input is refused with nothing written.

mod common;

use common::{assert_ok, assert_refused, fixture, run};
use l3kit::formats::profile::Profile;
use std::path::{Path, PathBuf};

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn gpt2() -> String {
    s(&fixture("tokenizer/gpt2.json"))
}

fn texts() -> Vec<String> {
    vec![
        s(&fixture("corpus/heldout.txt")),
        s(&fixture("corpus/train.txt")),
    ]
}

fn manifest(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn profile(args: &[String], out: &Path) -> Profile {
    let mut a = vec!["profile".to_string()];
    a.extend(args.iter().cloned());
    a.extend(["--out".to_string(), s(out)]);
    assert_ok(&run(a));
    Profile::read(out).unwrap()
}

#[test]
fn profiling_the_ids_gives_the_profile_of_the_text() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for budget in [None, Some("50000")] {
        let ids = d.join(format!("ids-{}.u16", budget.unwrap_or("all")));
        let mut a = vec![
            "--json".to_string(),
            "tokenize".into(),
            "--tokenizer".into(),
            gpt2(),
        ];
        a.extend(texts());
        a.extend(["--out".into(), s(&ids)]);
        let mut budget_flags = Vec::new();
        if let Some(b) = budget {
            budget_flags = vec!["--max-tokens".to_string(), b.to_string()];
        }
        a.extend(budget_flags.iter().cloned());
        let summary: serde_json::Value = serde_json::from_str(&assert_ok(&run(a))).unwrap();
        let m = manifest(&PathBuf::from(format!("{}.json", ids.display())));
        assert_eq!(m["format"], "l3kit-token-ids");
        assert_eq!(
            m["separator"], 50256,
            "GPT-2's <|endoftext|> is the default"
        );
        assert_eq!(summary["tokens"], m["tokens"]);
        let (seqs, toks) = (
            m["sequences"].as_u64().unwrap(),
            m["tokens"].as_u64().unwrap(),
        );
        assert_eq!(
            std::fs::metadata(&ids).unwrap().len(),
            (seqs + toks) * 2,
            "one u16 per token and one separator per sequence"
        );
        let per_input: u64 = m["inputs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["tokens"].as_u64().unwrap())
            .sum();
        assert_eq!(per_input, toks);
        let mut text_args = vec!["--tokenizer".to_string(), gpt2()];
        text_args.extend(texts());
        text_args.extend(budget_flags.iter().cloned());
        let from_text = profile(&text_args, &d.join("text.safetensors"));
        let from_ids = profile(
            &[
                "--vocab-size".into(),
                "50257".into(),
                "--separator".into(),
                "50256".into(),
                s(&ids),
            ],
            &d.join("ids.safetensors"),
        );
        assert_eq!(from_text.content_sha256, from_ids.content_sha256);
        assert_eq!(from_text.meta.tokens, toks);
        assert_eq!(from_text.meta.sequences, seqs);
        if budget.is_some() {
            assert!(toks <= 50_000 && toks > 45_000, "{toks}");
        }
    }
}

#[test]
fn the_same_inputs_give_the_same_files_and_ids_reshard() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tok = |out: &Path| {
        let mut a = vec!["tokenize".to_string(), "--tokenizer".into(), gpt2()];
        a.push(texts()[0].clone());
        a.extend(["--out".into(), s(out)]);
        assert_ok(&run(a));
    };
    let (a, b) = (d.join("a.u16"), d.join("b.u16"));
    tok(&a);
    tok(&b);
    assert!(std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap());
    let (ma, mb) = (
        manifest(&d.join("a.u16.json")),
        manifest(&d.join("b.u16.json")),
    );
    assert_eq!(ma["sha256"], mb["sha256"]);
    // Id files in, wider ids out: the same sequences, each id widened.
    let wide = d.join("wide.u32");
    assert_ok(&run([
        "tokenize",
        "--vocab-size",
        "50257",
        "--input-separator",
        "50256",
        &s(&a),
        "--separator",
        "50256",
        "--out",
        &s(&wide),
    ]));
    let narrow = std::fs::read(&a).unwrap();
    let widened: Vec<u8> = narrow
        .chunks_exact(2)
        .flat_map(|c| (u16::from_le_bytes([c[0], c[1]]) as u32).to_le_bytes())
        .collect();
    assert!(std::fs::read(&wide).unwrap() == widened);
}

#[test]
fn bad_input_is_refused_with_nothing_written() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let heldout = texts()[0].clone();
    let tiny = s(&fixture("tokenizer/tiny-bpe-512.json"));
    // A token the text uses: as the separator, its sequences could not be read back whole.
    let (tok, _) = l3kit::profile::load_tokenizer(&fixture("tokenizer/tiny-bpe-512.json")).unwrap();
    let used = tok.encode_fast(" the", false).unwrap().get_ids()[0].to_string();
    let cases: Vec<(Vec<String>, &str, Vec<&str>)> = vec![
        (
            vec![
                "--tokenizer".into(),
                gpt2(),
                heldout.clone(),
                "--out".into(),
                s(&d.join("x.bin")),
            ],
            "x.bin",
            vec!["--out must end in .u16 or .u32"],
        ),
        (
            vec![
                "--tokenizer".into(),
                tiny.clone(),
                heldout.clone(),
                "--out".into(),
                s(&d.join("x.u16")),
            ],
            "x.u16",
            vec!["give --separator"],
        ),
        (
            vec![
                "--tokenizer".into(),
                tiny.clone(),
                heldout.clone(),
                "--separator".into(),
                "512".into(),
                "--out".into(),
                s(&d.join("x.u16")),
            ],
            "x.u16",
            vec!["--separator 512", "vocabulary size 512"],
        ),
        (
            vec![
                "--tokenizer".into(),
                tiny.clone(),
                heldout.clone(),
                "--separator".into(),
                used.clone(),
                "--out".into(),
                s(&d.join("x.u16")),
            ],
            "x.u16",
            vec!["heldout.txt: line", "is the separator id"],
        ),
        (
            vec![
                "--vocab-size".into(),
                "70000".into(),
                "--input-separator".into(),
                "0".into(),
                heldout.clone(),
                "--format".into(),
                "u32".into(),
                "--separator".into(),
                "1".into(),
                "--out".into(),
                s(&d.join("x.u16")),
            ],
            "x.u16",
            vec!["does not fit u16"],
        ),
        (
            vec![
                "--tokenizer".into(),
                gpt2(),
                heldout.clone(),
                "--out".into(),
                s(&d.join("x.u16")),
                "--manifest".into(),
                s(&d.join("x.u16")),
            ],
            "x.u16",
            vec!["--manifest", "is the input"],
        ),
    ];
    for (args, out, needles) in cases {
        let mut a = vec!["tokenize".to_string()];
        a.extend(args);
        let o = run(&a);
        assert_refused(&o, 2, &needles);
        assert!(!d.join(out).exists(), "{a:?} left {out}");
        assert!(
            std::fs::read_dir(d).unwrap().next().is_none(),
            "{a:?} left files behind"
        );
    }
    // The output may not be an input.
    let copy = d.join("in.u16");
    std::fs::write(&copy, [1u8, 0, 0, 0]).unwrap();
    let o = run([
        "tokenize",
        "--vocab-size",
        "10",
        "--input-separator",
        "0",
        &s(&copy),
        "--separator",
        "0",
        "--out",
        &s(&copy),
    ]);
    assert_refused(&o, 2, &["is the input"]);
    assert_eq!(std::fs::read(&copy).unwrap(), [1u8, 0, 0, 0]);
}

#[test]
fn profile_stops_before_its_dictionary_passes_max_memory() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("p.safetensors");
    let args = |limit: &str| {
        vec![
            "--json".to_string(),
            "profile".into(),
            "--tokenizer".into(),
            gpt2(),
            texts()[1].clone(),
            "--max-memory".into(),
            limit.into(),
            "--out".into(),
            s(&out),
        ]
    };
    // GPT-2's 50257 single tokens and the first edge table already need more than 1 MiB.
    assert_refused(
        &run(args("1MiB")),
        2,
        &["--max-memory 1.00 MiB", "codewords"],
    );
    assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
    let v: serde_json::Value = serde_json::from_str(&assert_ok(&run(args("4GiB")))).unwrap();
    let bytes = v["dictionary_bytes"].as_u64().unwrap();
    let codewords = v["codewords"].as_u64().unwrap();
    assert!(
        bytes > codewords * 16 && bytes < 4 << 30,
        "{bytes} for {codewords}"
    );
}

#[test]
fn outputs_that_are_links_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let target = d.join("target.u16");
    std::fs::write(&target, b"keep").unwrap();
    let link = d.join("link.u16");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let tok = |extra: &[String]| {
        let mut a = vec![
            "tokenize".to_string(),
            "--tokenizer".into(),
            gpt2(),
            texts()[0].clone(),
        ];
        a.extend(extra.iter().cloned());
        run(a)
    };
    assert_refused(
        &tok(&["--out".into(), s(&link)]),
        2,
        &["--out", "symbolic link"],
    );
    let manifest_link = d.join("m.json");
    std::os::unix::fs::symlink(&target, &manifest_link).unwrap();
    let out = d.join("ids.u16");
    assert_refused(
        &tok(&[
            "--out".into(),
            s(&out),
            "--manifest".into(),
            s(&manifest_link),
        ]),
        2,
        &["--manifest", "symbolic link"],
    );
    assert!(!out.exists(), "nothing written");
    assert_eq!(std::fs::read(&target).unwrap(), b"keep");
}
