//! Table tiers (`--tables ram|mmap|disk`): every tier serves the same bytes, so a whole model
//! gives bit-identical logits from each, with prefetch on and off; the disk tier's reads are
//! counted as device reads; a tier asked of a source checkpoint is refused; and
//! `synth --family tiny` writes whole models that `pack`, `eval` and `generate` run.

mod common;

use candle_core::Device;
use common::{assert_ok, assert_refused, fixture, run};
use l3kit::formats::dtype::TableDtype;
use l3kit::model::decoder::Decoder;
use l3kit::model::runtime::{L3Runtime, ServingStats};
use l3kit::serve::{TableSource, TableTier};
use l3kit::util::progress::Ui;
use l3kit::verify::SourceOptions;
use std::path::{Path, PathBuf};

const TIERS: [TableTier; 3] = [TableTier::Ram, TableTier::Mmap, TableTier::Disk];

fn pack_trained(dtype: &str, dir: &Path) -> PathBuf {
    let out = dir.join(format!("packed-{dtype}"));
    let mut o = l3kit::pack::PackOptions::new(fixture("trained"), out.clone());
    o.allocation = Some(fixture("trained/allocation.safetensors"));
    o.dtype = Some(<TableDtype as clap::ValueEnum>::from_str(dtype, true).unwrap());
    // Small shards: the layers' tables are split over several part files.
    o.max_shard_size = 64 << 10;
    l3kit::pack::pack(&o, &Ui::quiet()).unwrap();
    out
}

fn logits(model: &Decoder, ids: &[Vec<u32>], prefetch: bool) -> (Vec<u32>, ServingStats) {
    let mut cache = model.new_cache();
    let mut rt = L3Runtime::new(model.l3.len(), prefetch);
    let prefill: Vec<Vec<u32>> = ids.iter().map(|r| r[..8].to_vec()).collect();
    let mut bits = Vec::new();
    let out = model.forward(&prefill, &mut cache, &mut rt).unwrap();
    bits.extend(out.flatten_all().unwrap().to_vec1::<f32>().unwrap());
    // Then KV-cached decode steps, one token per row.
    for s in 8..ids[0].len() {
        let step: Vec<Vec<u32>> = ids.iter().map(|r| vec![r[s]]).collect();
        let out = model.forward(&step, &mut cache, &mut rt).unwrap();
        bits.extend(out.flatten_all().unwrap().to_vec1::<f32>().unwrap());
    }
    (
        bits.into_iter().map(f32::to_bits).collect(),
        rt.stats.clone(),
    )
}

#[test]
fn every_tier_and_prefetch_setting_gives_bit_identical_logits() {
    let dir = tempfile::tempdir().unwrap();
    let ids: Vec<Vec<u32>> = (0..3u32)
        .map(|r| (0..20).map(|i| (i * 37 + r * 101 + 5) % 512).collect())
        .collect();
    for dtype in ["bf16", "int8"] {
        let packed = pack_trained(dtype, dir.path());
        let mut reference: Option<Vec<u32>> = None;
        for tier in TIERS {
            let model =
                Decoder::open_tier(&packed, &SourceOptions::default(), &Device::Cpu, Some(tier))
                    .unwrap();
            for prefetch in [true, false] {
                let (bits, stats) = logits(&model, &ids, prefetch);
                match &reference {
                    None => reference = Some(bits),
                    Some(r) => assert!(
                        r == &bits,
                        "{dtype} {tier:?} prefetch {prefetch}: logits differ from ram's"
                    ),
                }
                assert!(stats.bytes_read > 0);
                match tier {
                    TableTier::Disk => {
                        assert!(stats.tables.starts_with("disk"), "{}", stats.tables);
                        // Every block is read from the device, rounded out to whole pages
                        // under O_DIRECT.
                        assert!(
                            stats.device_bytes_read >= stats.bytes_read,
                            "{} device bytes for {} bytes of rows",
                            stats.device_bytes_read,
                            stats.bytes_read
                        );
                    }
                    t => {
                        assert_eq!(stats.device_bytes_read, 0, "{t:?}");
                        assert_eq!(
                            stats.tables,
                            if t == TableTier::Ram { "ram" } else { "mmap" }
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn a_hot_set_serves_its_tokens_from_memory_with_identical_logits() {
    let dir = tempfile::tempdir().unwrap();
    let packed = pack_trained("int8", dir.path());
    let ids: Vec<Vec<u32>> = (0..2u32)
        .map(|r| (0..16).map(|i| (i * 13 + r * 7) % 40).collect())
        .collect();
    let open = || {
        Decoder::open_tier(
            &packed,
            &SourceOptions::default(),
            &Device::Cpu,
            Some(TableTier::Disk),
        )
        .unwrap()
    };
    let (want, cold) = logits(&open(), &ids, true);
    let mut hot = open();
    // Tokens 0..20 resident: about half the blocks of ids drawn from 0..40.
    let hot_tokens: Vec<u32> = (0..20).collect();
    assert!(hot.use_hot_set(&hot_tokens).unwrap() > 0);
    for prefetch in [true, false] {
        let (got, stats) = logits(&hot, &ids, prefetch);
        assert!(
            got == want,
            "prefetch {prefetch}: the hot set changed the logits"
        );
        assert!(stats.hot_blocks > 0 && stats.hot_blocks < stats.blocks);
        assert!(stats.hot_bytes_saved > 0);
        assert!(
            stats.device_bytes_read < cold.device_bytes_read,
            "hot rows are not read from the device"
        );
    }
    assert!(hot.use_hot_set(&[3, 3]).is_err(), "a token named twice");
}

#[test]
fn every_tier_serves_the_same_bytes_and_rows() {
    let dir = tempfile::tempdir().unwrap();
    for dtype in ["f16", "int8"] {
        let packed = pack_trained(dtype, dir.path());
        let opened: Vec<_> = TIERS
            .iter()
            .map(|&t| l3kit::serve::open_packed_tier(&packed, t).unwrap().1)
            .collect();
        let all: Vec<u32> = (0..512).collect();
        for layer in 0..opened[0].len() {
            let mut want_raw = Vec::new();
            opened[0][layer].gather_raw(&all, &mut want_raw).unwrap();
            let want_rows = opened[0][layer].gather(&all).unwrap();
            for (tier, stores) in TIERS.iter().zip(&opened).skip(1) {
                let s = &stores[layer];
                let mut raw = Vec::new();
                s.gather_raw(&all, &mut raw).unwrap();
                assert!(raw == want_raw, "{dtype} {tier:?}: packed bytes differ");
                let rows = s.gather(&all).unwrap();
                assert!(rows == want_rows, "{dtype} {tier:?}: rows differ");
                for t in [0u32, 17, 511] {
                    assert_eq!(
                        s.token_bytes(t).unwrap(),
                        opened[0][layer].token_bytes(t).unwrap()
                    );
                }
                let e = s.token_bytes(512).unwrap_err().to_string();
                assert!(e.contains("512"), "{e}");
            }
            assert_eq!(opened[2][layer].tier(), TableTier::Disk);
            assert!(opened[2][layer].disk_mode().is_some());
            assert!(opened[2][layer].device_bytes_read() > 0);
        }
    }
}

#[test]
fn ram_tier_refuses_tables_larger_than_the_memory() {
    let e = l3kit::serve::tier::check_ram_budget(u64::MAX / 2, Path::new("model-dir"))
        .unwrap_err()
        .to_string();
    if l3kit::util::fs::available_memory().is_some() {
        assert!(e.contains("model-dir") && e.contains("--tables ram"), "{e}");
    }
}

#[test]
fn the_cli_serves_each_tier_and_refuses_one_for_a_source_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let packed = pack_trained("bf16", dir.path());
    let eval = |tables: &str| {
        let out = run([
            "--json",
            "eval",
            "--model",
            &packed.display().to_string(),
            "--tokenizer",
            &fixture("tokenizer/tiny-bpe-512.json").display().to_string(),
            &fixture("corpus/heldout.txt").display().to_string(),
            "--max-tokens",
            "2000",
            "--tables",
            tables,
        ]);
        let v: serde_json::Value = serde_json::from_str(&assert_ok(&out)).unwrap();
        v["result"].clone()
    };
    let (ram, mmap, disk) = (eval("ram"), eval("mmap"), eval("disk"));
    assert_eq!(ram["total_nll"], mmap["total_nll"]);
    assert_eq!(disk["total_nll"], mmap["total_nll"]);
    assert_eq!(ram["serving"]["tables"], "ram");
    assert!(disk["serving"]["tables"]
        .as_str()
        .unwrap()
        .starts_with("disk"));
    assert!(disk["serving"]["device_bytes_read"].as_u64().unwrap() > 0);
    // A source checkpoint has no serving layout: the flag is refused, naming it.
    let out = run([
        "generate",
        "--model",
        &fixture("trained").display().to_string(),
        "--allocation",
        &fixture("trained/allocation.safetensors")
            .display()
            .to_string(),
        "--prompt-ids",
        "1,2,3",
        "--tables",
        "disk",
    ]);
    assert_refused(&out, 2, &["--tables disk", "source checkpoint"]);
}

#[test]
fn synth_writes_whole_models_that_pack_and_run() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    // (heads, blocks, dialect): the shape flags the bad cases below change.
    let synth = |out: &Path, (heads, blocks, dialect): (&str, &str, &str)| {
        let mut a: Vec<String> = [
            "synth",
            "--family",
            "tiny",
            "--vocab",
            "300",
            "--n-emb",
            "1200",
            "--k-max",
            "32",
            "--d-in",
            "32",
            "--d-emb",
            "16",
            "--d-up",
            "64",
            "--n-layer",
            blocks,
            "--n-head",
            heads,
            "--dialect",
            dialect,
            "--block-size",
            "64",
            "--layers",
            "0,2",
            "--dtype",
            "bf16",
            "--out",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.push(out.display().to_string());
        run(a)
    };
    let good = ("4", "3", "paper");
    assert_ok(&synth(&src, good));
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(src.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["model_type"], "l3-tiny-trained");
    // The same seed writes the same bytes.
    let again = dir.path().join("again");
    assert_ok(&synth(&again, good));
    for f in ["model.safetensors", "config.json", "allocation.safetensors"] {
        assert!(
            std::fs::read(src.join(f)).unwrap() == std::fs::read(again.join(f)).unwrap(),
            "{f} differs between two runs"
        );
    }
    let packed = dir.path().join("packed");
    assert_ok(&run([
        "pack",
        &src.display().to_string(),
        "--out",
        &packed.display().to_string(),
    ]));
    let gen = |model: &Path, tables: &[&str]| {
        let mut a: Vec<String> = [
            "--json",
            "generate",
            "--model",
            &model.display().to_string(),
            "--prompt-ids",
            "5,6,7",
            "--max-new-tokens",
            "8",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(tables.iter().map(|s| s.to_string()));
        let v: serde_json::Value = serde_json::from_str(&assert_ok(&run(a))).unwrap();
        v["new_token_ids"].clone()
    };
    let from_source = gen(&src, &[]);
    assert_eq!(from_source.as_array().unwrap().len(), 8);
    // bf16 tables packed losslessly from bf16: the packed model continues the same way.
    assert_eq!(gen(&packed, &["--tables", "disk"]), from_source);
    // Shapes that cannot make a model are refused before anything is written.
    for (shape, msg) in [
        (("5", "3", "paper"), "not a multiple of --n-head"),
        (("4", "2", "paper"), "names block 2"),
        (("4", "3", "nanochat"), "paper dialect"),
    ] {
        let out_dir = dir.path().join("bad");
        let out = synth(&out_dir, shape);
        assert_refused(&out, 2, &[msg]);
        assert!(!out_dir.exists(), "{shape:?} left {}", out_dir.display());
    }
}

#[test]
fn a_hot_set_needs_the_models_own_profile() {
    let dir = tempfile::tempdir().unwrap();
    let gpt2_profile = dir.path().join("gpt2.safetensors");
    assert_ok(&run([
        "profile",
        "--tokenizer",
        &fixture("tokenizer/gpt2.json").display().to_string(),
        &fixture("corpus/heldout.txt").display().to_string(),
        "--out",
        &gpt2_profile.display().to_string(),
    ]));
    let gen = |extra: &[&str]| {
        let mut a: Vec<String> = [
            "generate",
            "--model",
            &fixture("trained").display().to_string(),
            "--allocation",
            &fixture("trained/allocation.safetensors")
                .display()
                .to_string(),
            "--prompt-ids",
            "1,2,3",
            "--max-new-tokens",
            "2",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        run(a)
    };
    let p = gpt2_profile.display().to_string();
    assert_refused(
        &gen(&["--hot-set", "8", "--profile", &p]),
        2,
        &["gpt2.safetensors", "vocabulary of 50257", "512"],
    );
    assert_refused(&gen(&["--hot-set", "8"]), 2, &["--profile"]);
    // Not a profile at all.
    let bogus = fixture("trained/allocation.safetensors")
        .display()
        .to_string();
    assert_refused(
        &gen(&["--hot-set", "8", "--profile", &bogus]),
        2,
        &["allocation.safetensors"],
    );
}
