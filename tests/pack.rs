//! `pack`, `unpack` and `inspect` on synthetic checkpoints: lossless round trips, every table
//! dtype, sharding, determinism, the byte layout promised by docs/format.md, and bad input.

use l3kit::checkpoint::dialect::Dialect;
use l3kit::checkpoint::Checkpoint;
use l3kit::formats::dtype::TableDtype;
use l3kit::formats::packed::{check_packed, PackedModel};
use l3kit::pack::unpack::{unpack, UnpackOptions};
use l3kit::pack::{pack, PackOptions};
use l3kit::synth;
use l3kit::util::progress::Ui;
use l3kit::util::safetensors_file::{self as st, TensorBytes};
use safetensors::Dtype;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_l3kit"))
}

fn small(dir: &Path, dialect: Dialect, dtype: TableDtype) -> (PathBuf, PathBuf) {
    let s = synth::small(dir, dialect, dtype).unwrap();
    (s.checkpoint, s.allocation)
}

fn pack_opts(
    src: &Path,
    alloc: Option<&Path>,
    out: &Path,
    dtype: Option<TableDtype>,
) -> PackOptions {
    let mut o = PackOptions::new(src.to_path_buf(), out.to_path_buf());
    o.allocation = alloc.map(Path::to_path_buf);
    o.dtype = dtype;
    o
}

fn tensors(path: &Path) -> BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)> {
    let c = Checkpoint::open(path).unwrap();
    c.tensors()
        .into_iter()
        .map(|t| {
            (
                t.name.clone(),
                (t.dtype, t.shape.clone(), c.read_all(&t.name).unwrap()),
            )
        })
        .collect()
}

fn dir_bytes(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().to_string(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

#[test]
fn lossless_round_trip_is_bit_exact() {
    for (dialect, dtype) in [
        (Dialect::Paper, TableDtype::F32),
        (Dialect::Paper, TableDtype::Bf16),
        (Dialect::Nanochat, TableDtype::Bf16),
        (Dialect::Nanochat, TableDtype::F16),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (src, alloc) = small(&dir.path().join("src"), dialect, dtype);
        let alloc = (dialect == Dialect::Paper).then_some(alloc.as_path());
        let packed = dir.path().join("packed");
        pack(&pack_opts(&src, alloc, &packed, None), &Ui::quiet()).unwrap();
        assert!(check_packed(&packed, &Ui::quiet()).ok());
        let out = dir.path().join("unpacked");
        unpack(
            &UnpackOptions {
                dir: packed,
                out: out.clone(),
                force: false,
                max_shard_size: 5_000_000_000,
            },
            &Ui::quiet(),
        )
        .unwrap();
        assert_eq!(
            tensors(&src),
            tensors(&out.join("model.safetensors")),
            "{dialect:?} {dtype:?}"
        );
    }
}

#[test]
fn every_table_dtype_packs_and_checks() {
    let dir = tempfile::tempdir().unwrap();
    let (src, alloc) = small(&dir.path().join("src"), Dialect::Paper, TableDtype::F32);
    for dtype in [
        TableDtype::F32,
        TableDtype::Bf16,
        TableDtype::F16,
        TableDtype::Int8,
    ] {
        let packed = dir.path().join(format!("packed-{}", dtype.name()));
        let s = pack(
            &pack_opts(&src, Some(&alloc), &packed, Some(dtype)),
            &Ui::quiet(),
        )
        .unwrap();
        let report = check_packed(&packed, &Ui::quiet());
        assert!(report.ok(), "{dtype:?}: {:?}", report.problems);
        for l in &s.layers {
            match dtype {
                TableDtype::F32 => assert!(l.conversion_error.is_none()),
                _ => {
                    let e = l.conversion_error.as_ref().unwrap();
                    let bound = if dtype == TableDtype::Int8 {
                        1e-2
                    } else {
                        5e-3
                    };
                    assert!(
                        e.relative_l2_error > 0.0 && e.relative_l2_error < bound,
                        "{e:?}"
                    );
                }
            }
        }
        // Unpacking a lossy pack gives the source dtype back, close to the original.
        let out = dir.path().join(format!("unpacked-{}", dtype.name()));
        unpack(
            &UnpackOptions {
                dir: packed,
                out: out.clone(),
                force: false,
                max_shard_size: 5_000_000_000,
            },
            &Ui::quiet(),
        )
        .unwrap();
        let (a, b) = (tensors(&src), tensors(&out.join("model.safetensors")));
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
        for (name, (dt, shape, bytes)) in &a {
            let (dt2, shape2, bytes2) = &b[name];
            assert_eq!((dt, shape), (dt2, shape2), "{name}");
            if name.ends_with("w_k.weight") && dtype != TableDtype::F32 {
                let x: Vec<f32> = bytes
                    .chunks(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect();
                let y: Vec<f32> = bytes2
                    .chunks(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect();
                let worst = x
                    .iter()
                    .zip(&y)
                    .map(|(p, q)| (p - q).abs())
                    .fold(0f32, f32::max);
                assert!(worst < 0.01, "{name}: {worst}");
            } else if !name.contains("w_k") && !name.contains("w_v") {
                assert_eq!(bytes, bytes2, "{name} must pass through unchanged");
            }
        }
    }
}

#[test]
fn token_rows_are_one_contiguous_range_as_specified() {
    let dir = tempfile::tempdir().unwrap();
    let (src, alloc) = small(&dir.path().join("src"), Dialect::Paper, TableDtype::Bf16);
    let packed = dir.path().join("packed");
    let mut o = pack_opts(&src, Some(&alloc), &packed, None);
    o.max_shard_size = 4000; // several parts per layer
    pack(&o, &Ui::quiet()).unwrap();
    let model = PackedModel::open(&packed).unwrap();
    let source = Checkpoint::open(&src).unwrap();
    let layer = &model.config.layers[0];
    assert!(layer.parts.len() > 2, "expected several parts");
    let bounds = model.bounds(0).unwrap();
    let (d_in, d_emb) = (layer.d_in as usize, layer.d_emb as usize);
    let row_bytes = (d_in + d_emb) * 2;
    for t in [0usize, 1, 5, 17, 63] {
        let part = layer
            .parts
            .iter()
            .find(|p| (p.token_start as usize..p.token_end as usize).contains(&t))
            .unwrap();
        // Read the header length from the part file, as a foreign reader would.
        let bytes = std::fs::read(packed.join(&part.file)).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let data_start = 8 + n;
        assert_eq!(data_start % 4096, 0);
        let first = data_start + (bounds[t] as usize - part.row_start as usize) * row_bytes;
        let len = (bounds[t + 1] - bounds[t]) as usize * row_bytes;
        let block = &bytes[first..first + len];
        let rows = (bounds[t + 1] - bounds[t]) as usize;
        let mut k = Vec::new();
        let mut v = Vec::new();
        source
            .read_range(
                &layer.source.keys,
                bounds[t] as usize * d_in * 2,
                rows * d_in * 2,
                &mut k,
            )
            .unwrap();
        source
            .read_range(
                layer.source.values.as_ref().unwrap(),
                bounds[t] as usize * d_emb * 2,
                rows * d_emb * 2,
                &mut v,
            )
            .unwrap();
        for r in 0..rows {
            assert_eq!(
                &block[r * row_bytes..r * row_bytes + d_in * 2],
                &k[r * d_in * 2..(r + 1) * d_in * 2]
            );
            assert_eq!(
                &block[r * row_bytes + d_in * 2..(r + 1) * row_bytes],
                &v[r * d_emb * 2..(r + 1) * d_emb * 2]
            );
        }
    }
}

#[test]
fn packing_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let (src, alloc) = small(&dir.path().join("src"), Dialect::Paper, TableDtype::F32);
    for dtype in [TableDtype::Bf16, TableDtype::Int8] {
        let a = dir.path().join(format!("a-{}", dtype.name()));
        let b = dir.path().join(format!("b-{}", dtype.name()));
        pack(
            &pack_opts(&src, Some(&alloc), &a, Some(dtype)),
            &Ui::quiet(),
        )
        .unwrap();
        pack(
            &pack_opts(&src, Some(&alloc), &b, Some(dtype)),
            &Ui::quiet(),
        )
        .unwrap();
        assert_eq!(dir_bytes(&a), dir_bytes(&b));
    }
}

#[test]
fn shards_load_with_the_safetensors_crate_and_index_covers_everything() {
    let dir = tempfile::tempdir().unwrap();
    let (src, _) = small(&dir.path().join("src"), Dialect::Nanochat, TableDtype::Bf16);
    let packed = dir.path().join("packed");
    let mut o = pack_opts(&src, None, &packed, Some(TableDtype::Int8));
    o.max_shard_size = 3000;
    pack(&o, &Ui::quiet()).unwrap();
    let index: serde_json::Value = serde_json::from_slice(
        &std::fs::read(packed.join("model.safetensors.index.json")).unwrap(),
    )
    .unwrap();
    let weight_map = index["weight_map"].as_object().unwrap();
    let mut seen = 0;
    let mut total = 0u64;
    let files: std::collections::BTreeSet<&str> =
        weight_map.values().map(|v| v.as_str().unwrap()).collect();
    for f in files {
        let bytes = std::fs::read(packed.join(f)).unwrap();
        let (n, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        assert_eq!((8 + n) % 4096, 0, "{f}");
        assert_eq!(meta.metadata().as_ref().unwrap()["format"], "pt");
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        for (name, view) in st.tensors() {
            assert_eq!(weight_map[&name], f);
            total += view.data().len() as u64;
            seen += 1;
        }
    }
    assert_eq!(seen, weight_map.len());
    assert_eq!(index["metadata"]["total_size"].as_u64().unwrap(), total);
}

fn write_ckpt(path: &Path, tensors: Vec<TensorBytes<'static>>) {
    st::write_file(path, &tensors, &BTreeMap::new(), 8).unwrap();
}

fn f32s(name: &str, shape: &[usize]) -> TensorBytes<'static> {
    let n: usize = shape.iter().product();
    let data: Vec<u8> = (0..n)
        .flat_map(|i| ((i % 7) as f32 * 0.1).to_le_bytes())
        .collect();
    TensorBytes {
        name: name.into(),
        dtype: Dtype::F32,
        shape: shape.to_vec(),
        data: data.into(),
    }
}

/// A nanochat-style layer with the given bounds and table rows.
fn nanochat_layer(i: usize, bounds: &[i64], rows: usize) -> Vec<TensorBytes<'static>> {
    vec![
        f32s(&format!("l3_layers.{i}.kv_weight"), &[rows, 4]),
        TensorBytes::i64s(&format!("l3_layers.{i}.bounds"), bounds),
        f32s(&format!("l3_layers.{i}.w_up.weight"), &[6, 4]),
        f32s(&format!("l3_layers.{i}.w_mix.weight"), &[4, 10]),
    ]
}

/// Run `l3kit pack` on `src`; it must fail with exit code 2, say `needle`, and leave no output.
fn pack_fails(src: &Path, extra: &[&str], needle: &str) {
    let out = src.parent().unwrap().join("packed-out");
    let o = bin()
        .arg("pack")
        .arg(src)
        .args(extra)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "stderr: {stderr}");
    assert!(stderr.contains(needle), "expected {needle:?} in: {stderr}");
    assert!(!out.exists(), "no output on failure");
    let leftovers: Vec<_> = std::fs::read_dir(src.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.contains("l3kit-tmp"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "temporary folders left: {leftovers:?}"
    );
}

#[test]
fn bad_bounds_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.safetensors");
    let lambdas = || f32s("l3_lambdas", &[1]);
    let cases: Vec<(Vec<i64>, usize, &str)> = vec![
        (vec![0, 2, 1, 5], 5, "not monotone"),
        (vec![1, 2, 3, 5], 5, "must be 0"),
        (vec![0, 2, 3, 4], 5, "end at 4"),
        (vec![0, 2, 2, 5], 5, "owns no rows"),
    ];
    for (bounds, rows, needle) in cases {
        let mut t = nanochat_layer(0, &bounds, rows);
        t.push(lambdas());
        write_ckpt(&p, t);
        pack_fails(&p, &[], needle);
    }
    // Wrong length against an allocation file (vocab 3 vs 4).
    let mut t = nanochat_layer(0, &[0, 2, 3, 5], 5);
    t.push(lambdas());
    write_ckpt(&p, t);
    let alloc = dir.path().join("a.safetensors");
    l3kit::Allocation::from_rows(&[1, 1, 1, 2], Default::default())
        .unwrap()
        .write(&alloc)
        .unwrap();
    pack_fails(
        &p,
        &["--allocation", alloc.to_str().unwrap()],
        "vocabulary 3 vs 4",
    );
    // Same vocabulary, different split: the first differing token is named.
    l3kit::Allocation::from_rows(&[1, 2, 2], Default::default())
        .unwrap()
        .write(&alloc)
        .unwrap();
    pack_fails(
        &p,
        &["--allocation", alloc.to_str().unwrap()],
        "first difference at token 0",
    );
}

#[test]
fn layers_disagreeing_on_the_vocabulary_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.safetensors");
    let mut t = nanochat_layer(0, &[0, 2, 3, 5], 5);
    t.extend(nanochat_layer(1, &[0, 2, 3, 4, 5], 5));
    t.push(f32s("l3_lambdas", &[2]));
    write_ckpt(&p, t);
    pack_fails(&p, &[], "disagree on the vocabulary");
}

#[test]
fn missing_tensors_and_shape_mismatches_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.safetensors");
    let mut t = nanochat_layer(0, &[0, 2, 3, 5], 5);
    t.retain(|x| !x.name.ends_with("w_mix.weight"));
    t.push(f32s("l3_lambdas", &[1]));
    write_ckpt(&p, t);
    pack_fails(&p, &[], "missing tensor l3_layers.0.w_mix.weight");

    // Without l3_lambdas a nanochat checkpoint is the --l3-no-lambda variant (packed in
    // `nanochat_without_lambdas_packs_with_the_add_residual`), unless the run's metadata says
    // it had lambdas, or a lambdas tensor sits under another prefix.
    let ck = dir.path().join("meta-says-lambdas");
    std::fs::create_dir(&ck).unwrap();
    write_ckpt(
        &ck.join("model.safetensors"),
        nanochat_layer(0, &[0, 2, 3, 5], 5),
    );
    std::fs::write(
        ck.join("meta_000100.json"),
        r#"{"model_config": {"l3_lambda": true}}"#,
    )
    .unwrap();
    pack_fails(&ck, &[], "l3_lambdas");
    let mut t = nanochat_layer(0, &[0, 2, 3, 5], 5);
    t.push(f32s("model.l3_lambdas", &[1]));
    write_ckpt(&p, t);
    pack_fails(&p, &[], "model.l3_lambdas");

    let mut t = nanochat_layer(0, &[0, 2, 3, 5], 5);
    t[2] = f32s("l3_layers.0.w_up.weight", &[6, 3]);
    t.push(f32s("l3_lambdas", &[1]));
    write_ckpt(&p, t);
    pack_fails(&p, &[], "l3_layers.0.w_up.weight has shape [6, 3]");

    // A paper checkpoint without bounds needs an allocation.
    let src = dir.path().join("paper");
    let (ckpt, _) = small(&src, Dialect::Paper, TableDtype::F32);
    pack_fails(&ckpt, &[], "pass --allocation");
}

#[test]
fn nonfinite_values_are_reported_and_refused_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.safetensors");
    let mut t = nanochat_layer(0, &[0, 2, 3, 5], 5);
    let mut data = t[0].data.to_vec();
    data[3 * 16..3 * 16 + 4].copy_from_slice(&f32::NAN.to_le_bytes()); // row 3 = token 2
    data[4 * 16..4 * 16 + 4].copy_from_slice(&f32::INFINITY.to_le_bytes());
    t[0].data = data.into();
    t.push(f32s("l3_lambdas", &[1]));
    write_ckpt(&p, t);
    pack_fails(&p, &[], "2 non-finite values, first in row 3 (token 2)");
    let out = dir.path().join("allowed");
    let o = bin()
        .args([
            "pack",
            p.to_str().unwrap(),
            "--allow-nonfinite",
            "--json",
            "--out",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["nonfinite"][0]["count"], 2);
}

#[test]
fn existing_destination_needs_force() {
    let dir = tempfile::tempdir().unwrap();
    let (src, _) = small(&dir.path().join("src"), Dialect::Nanochat, TableDtype::Bf16);
    let out = dir.path().join("packed");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "mine").unwrap();
    let o = bin()
        .args([
            "pack",
            src.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--force"));
    assert!(out.join("keep.txt").exists(), "untouched without --force");
    let o = bin()
        .args([
            "pack",
            src.to_str().unwrap(),
            "--force",
            "--out",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success());
    assert!(!out.join("keep.txt").exists());
    assert!(check_packed(&out, &Ui::quiet()).ok());
}

#[test]
fn check_catches_tampering_and_incomplete_folders() {
    let dir = tempfile::tempdir().unwrap();
    let (src, _) = small(&dir.path().join("src"), Dialect::Nanochat, TableDtype::Bf16);
    let packed = dir.path().join("packed");
    pack(&pack_opts(&src, None, &packed, None), &Ui::quiet()).unwrap();
    let check = |p: &Path| {
        bin()
            .args(["inspect", "--check", p.to_str().unwrap()])
            .output()
            .unwrap()
    };
    assert!(check(&packed).status.success());

    // One flipped byte in a table part: hash mismatch, exit 1, the file named.
    let part = PackedModel::open(&packed).unwrap().config.layers[0].parts[0]
        .file
        .clone();
    let path = packed.join(&part);
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 20;
    bytes[last] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    let o = check(&packed);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stdout).contains(&part));

    // What an interrupted pack leaves (no index) is never accepted.
    let interrupted = dir.path().join("interrupted");
    std::fs::create_dir(&interrupted).unwrap();
    for e in std::fs::read_dir(&packed).unwrap() {
        let e = e.unwrap();
        if e.file_name() != "model.safetensors.index.json" {
            std::fs::copy(e.path(), interrupted.join(e.file_name())).unwrap();
        }
    }
    let o = check(&interrupted);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stdout).contains("no model.safetensors.index.json"));
}

#[test]
fn inspect_reports_source_and_packed() {
    let dir = tempfile::tempdir().unwrap();
    let (src, alloc) = small(&dir.path().join("src"), Dialect::Paper, TableDtype::Bf16);
    let o = bin()
        .args([
            "inspect",
            src.to_str().unwrap(),
            "--allocation",
            alloc.to_str().unwrap(),
            "--json",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["dialect"], "paper");
    assert_eq!(r["vocab_size"], 64);
    assert_eq!(r["layers"].as_array().unwrap().len(), 2);
    assert_eq!(r["layers"][0]["d_emb"], 8);
    assert_eq!(r["layers"][0]["tied"], false);

    let packed = dir.path().join("packed");
    pack(
        &pack_opts(&src, Some(&alloc), &packed, Some(TableDtype::Int8)),
        &Ui::quiet(),
    )
    .unwrap();
    let o = bin()
        .args(["inspect", packed.to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    assert!(o.status.success());
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["dtype"], "int8");
    // int8 row: 16 + 8 values plus two f32 scales.
    assert_eq!(r["layers"][0]["bytes_per_row"], 24 + 8);
}

// ---- source checkpoints: real nanochat runs, carried files, links, FIFOs, maps, dtypes ----

fn fixture(rel: &str) -> PathBuf {
    common::fixture(rel)
}

fn json_of(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// `l3kit ARGS` must be refused (exit 2) with every needle, leave `root` as it was (no output,
/// no temporary folder, inputs unchanged), and never block or allocate much.
#[track_caller]
fn refused(root: &Path, args: &[&std::ffi::OsStr], needles: &[&str]) -> String {
    let before = common::snapshot(root);
    let out = common::run(args);
    common::assert_refused(&out, 2, needles);
    assert_eq!(
        before,
        common::snapshot(root),
        "the run left files behind or changed an input"
    );
    common::stderr(&out)
}

fn os(s: &Path) -> &std::ffi::OsStr {
    s.as_os_str()
}

/// Every variant of the fork's own checkpoints (`torch.save` zips, storages tagged `cuda:0`,
/// bf16 `kv_weight` beside f32 tensors, L3 under `l3_layers.{k}`) packs, checks and verifies,
/// and its `meta_000100.json` travels into the packed folder byte for byte.
#[test]
fn nanochat_fork_checkpoints_pack_inspect_and_verify() {
    for (variant, residual, layers) in [
        ("default", "add_lambda", 2),
        ("nolambda", "add", 2),
        ("looped", "add_lambda", 1),
        ("swiglu_gqa", "add_lambda", 1),
        ("convswiglu", "add_lambda", 1),
    ] {
        let src = fixture(&format!("nanochat/{variant}"));
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("packed");
        let o = common::run([os(Path::new("inspect")), os(&src), os(Path::new("--json"))]);
        let r: serde_json::Value = serde_json::from_str(&common::assert_ok(&o)).unwrap();
        assert_eq!(r["dialect"], "nanochat", "{variant}");
        assert_eq!(r["semantics"]["residual"], residual, "{variant}");
        assert_eq!(r["vocab_size"], 513, "{variant}");

        let o = common::run([
            os(Path::new("pack")),
            os(&src),
            os(Path::new("--out")),
            os(&out),
            os(Path::new("--json")),
        ]);
        let s: serde_json::Value = serde_json::from_str(&common::assert_ok(&o)).unwrap();
        assert_eq!(s["residual"], residual, "{variant}");
        assert_eq!(s["layers"].as_array().unwrap().len(), layers, "{variant}");
        assert_eq!(s["allocation"]["from"], "checkpoint", "{variant}");
        let config = json_of(&out.join("config.json"));
        let l3 = &config["l3"];
        assert_eq!(l3["semantics"]["residual"], residual, "{variant}");
        for l in l3["layers"].as_array().unwrap() {
            assert!(l["name"].as_str().unwrap().starts_with("l3_layers."));
            assert_eq!(l["source"]["dtype"], "BF16");
            assert_eq!(l["lambda"].is_null(), residual == "add", "{variant}");
        }
        let meta = std::fs::read(src.join("meta_000100.json")).unwrap();
        assert_eq!(std::fs::read(out.join("meta_000100.json")).unwrap(), meta);
        let index = json_of(&out.join("model.safetensors.index.json"));
        assert!(index["metadata"]["sha256"]["meta_000100.json"].is_string());
        assert!(!out.join("golden.safetensors").exists());

        let o = common::run([os(Path::new("inspect")), os(Path::new("--check")), os(&out)]);
        common::assert_ok(&o);
        let o = common::run([
            os(Path::new("verify")),
            os(Path::new("--source")),
            os(&src),
            os(Path::new("--packed")),
            os(&out),
            os(Path::new("--json")),
        ]);
        let v: serde_json::Value = serde_json::from_str(&common::assert_ok(&o)).unwrap();
        assert_eq!(v["passed"], true, "{variant}");
        for l in v["layers"].as_array().unwrap() {
            assert_eq!(
                l["max_abs_error"], 0.0,
                "{variant}: bf16 tables are copied bit for bit"
            );
        }

        // unpack carries the run's metadata back beside the rebuilt checkpoint.
        let unpacked = dir.path().join("unpacked");
        common::assert_ok(&common::run([
            os(Path::new("unpack")),
            os(&out),
            os(Path::new("--out")),
            os(&unpacked),
        ]));
        assert_eq!(
            std::fs::read(unpacked.join("meta_000100.json")).unwrap(),
            meta,
            "{variant}: unpack carries meta_000100.json"
        );

        // The carried metadata is covered by the hashes.
        let meta_out = out.join("meta_000100.json");
        let mut bytes = std::fs::read(&meta_out).unwrap();
        bytes[10] ^= 1;
        std::fs::write(&meta_out, bytes).unwrap();
        let o = common::run([os(Path::new("inspect")), os(Path::new("--check")), os(&out)]);
        assert_eq!(o.status.code(), Some(1), "{variant}");
        assert!(common::stdout(&o).contains("meta_000100.json"));

        // A run-metadata file swapped for a link out of the packed folder is refused by
        // unpack (even unhashed), named, and nothing is written.
        std::fs::remove_file(&meta_out).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", &meta_out).unwrap();
        let leaked = dir.path().join("leaked");
        let o = common::run([
            os(Path::new("unpack")),
            os(&out),
            os(Path::new("--no-check")),
            os(Path::new("--out")),
            os(&leaked),
        ]);
        common::assert_refused(&o, 2, &["meta_000100.json"]);
        assert!(!leaked.exists(), "{variant}: nothing written");
    }
}

/// The `add` residual is x + out: on the `nolambda` checkpoint, the layer's output minus its
/// input equals what the same weights give with the `replace` residual.
#[test]
fn the_add_residual_adds_the_output_to_the_hidden_state() {
    use candle_core::Device;
    use l3kit::verify::{self, Inputs, SourceOptions};
    let src = fixture("nanochat/nolambda");
    let dir = tempfile::tempdir().unwrap();
    let map = dir.path().join("replace.toml");
    let mut text = String::from("dialect = \"nanochat\"\nresidual = \"replace\"\n");
    for k in [1, 2] {
        text.push_str(&format!(
            "[[layers]]\nname = \"l3_layers.{k}\"\nkeys = \"l3_layers.{k}.kv_weight\"\n\
             bounds = \"l3_layers.{k}.bounds\"\nw_up = \"l3_layers.{k}.w_up.weight\"\n\
             w_mix = \"l3_layers.{k}.w_mix.weight\"\n"
        ));
    }
    std::fs::write(&map, text).unwrap();
    let add = verify::load_source(&src, &SourceOptions::default(), &Device::Cpu).unwrap();
    let replace = verify::load_source(
        &src,
        &SourceOptions {
            map: Some(map),
            ..Default::default()
        },
        &Device::Cpu,
    )
    .unwrap();
    let inputs = Inputs::random(64, 48, add.vocab, None, 7).unwrap();
    let x = &inputs.shared.as_ref().unwrap().0;
    for (a, r) in add.layers.iter().zip(&replace.layers) {
        assert_eq!(
            a.layer.cfg.semantics.residual,
            l3kit::formats::semantics::Residual::Add
        );
        let ya = verify::run_layer(a, &inputs, &Device::Cpu).unwrap();
        let yr = verify::run_layer(r, &inputs, &Device::Cpu).unwrap();
        let mut moved = 0f32;
        for ((ya, yr), x) in ya.iter().zip(&yr).zip(x) {
            assert!(
                (ya - (x + yr)).abs() <= 1e-5 * (1.0 + x.abs()),
                "{ya} vs {x} + {yr}"
            );
            moved = moved.max(yr.abs());
        }
        assert!(moved > 1e-3, "the layer output is not trivially zero");
    }
}

#[test]
fn config_json_and_run_metadata_are_carried_over() {
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("ck");
    std::fs::create_dir(&ck).unwrap();
    std::fs::copy(
        fixture("nanochat/default/model_000100.pt"),
        ck.join("model_000100.pt"),
    )
    .unwrap();
    std::fs::copy(
        fixture("nanochat/default/meta_000100.json"),
        ck.join("meta_000100.json"),
    )
    .unwrap();
    std::fs::write(ck.join("meta_000200.json"), "{\"step\": 200}").unwrap();
    std::fs::write(
        ck.join("config.json"),
        r#"{"model_type": "nanochat", "n_layer": 4}"#,
    )
    .unwrap();
    std::fs::write(ck.join("tokenizer.json"), "{}").unwrap();
    let out = dir.path().join("out");
    let o = common::run([
        os(Path::new("pack")),
        os(&ck),
        os(Path::new("--out")),
        os(&out),
    ]);
    let report = common::assert_ok(&o);
    assert!(
        report.contains(
            "carried over: config.json, meta_000100.json, meta_000200.json, tokenizer.json"
        ),
        "{report}"
    );
    for f in ["meta_000100.json", "meta_000200.json", "tokenizer.json"] {
        assert_eq!(
            std::fs::read(out.join(f)).unwrap(),
            std::fs::read(ck.join(f)).unwrap(),
            "{f}"
        );
    }
    let config = json_of(&out.join("config.json"));
    assert_eq!(config["model_type"], "nanochat");
    assert_eq!(config["n_layer"], 4);
    assert_eq!(config["l3"]["format"], "l3kit-packed");
    let index = json_of(&out.join("model.safetensors.index.json"));
    let hashed: Vec<&String> = index["metadata"]["sha256"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    for f in [
        "config.json",
        "meta_000100.json",
        "meta_000200.json",
        "tokenizer.json",
    ] {
        assert!(hashed.iter().any(|h| *h == f), "{f} not in {hashed:?}");
    }
    common::assert_ok(&common::run([
        os(Path::new("inspect")),
        os(Path::new("--check")),
        os(&out),
    ]));

    // A carried file that is not JSON, or config.json that is not an object: refused early.
    std::fs::write(ck.join("meta_000200.json"), "step 200").unwrap();
    let out2 = dir.path().join("out2");
    refused(
        dir.path(),
        &[
            os(Path::new("pack")),
            os(&ck),
            os(Path::new("--out")),
            os(&out2),
        ],
        &["meta_000200.json", "not valid JSON"],
    );
    std::fs::write(ck.join("meta_000200.json"), "{}").unwrap();
    std::fs::write(ck.join("config.json"), "[1, 2]").unwrap();
    refused(
        dir.path(),
        &[
            os(Path::new("pack")),
            os(&ck),
            os(Path::new("--out")),
            os(&out2),
        ],
        &["config.json", "not a JSON object"],
    );
}

/// With `--other-dtype bf16` the lambdas are stored in bf16, and the config records exactly
/// what is stored.
#[test]
fn lambdas_are_recorded_as_stored() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("checkpoints/nanochat/model.safetensors");
    let out = dir.path().join("packed");
    let mut o = PackOptions::new(src, out.clone());
    o.other_dtype = Some(TableDtype::Bf16);
    pack(&o, &Ui::quiet()).unwrap();
    let model = PackedModel::open(&out).unwrap();
    let lambdas = model.shards.tensor("l3_lambdas").unwrap().clone();
    assert_eq!(lambdas.dtype, Dtype::BF16);
    use l3kit::formats::safetensors::TensorReader;
    let bytes = model.shards.read_all("l3_lambdas").unwrap();
    for (i, l) in model.config.layers.iter().enumerate() {
        let stored = half::bf16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]]).to_f32() as f64;
        assert_eq!(l.lambda, Some(stored), "layer {}", l.name);
    }
    // 0.3 and 0.7 are not bf16 values: the f32 value would differ.
    assert_ne!(model.config.layers[0].lambda, Some(0.3f32 as f64));

    // Such a folder still verifies against its source (int8 tables leave room for the bf16
    // dense weights): the rounded lambda is the same lambda.
    let out = dir.path().join("int8");
    let src = fixture("nanochat/default");
    common::assert_ok(&common::run([
        os(Path::new("pack")),
        os(&src),
        os(Path::new("--dtype")),
        os(Path::new("int8")),
        os(Path::new("--other-dtype")),
        os(Path::new("bf16")),
        os(Path::new("--out")),
        os(&out),
    ]));
    common::assert_ok(&common::run([
        os(Path::new("verify")),
        os(Path::new("--source")),
        os(&src),
        os(Path::new("--packed")),
        os(&out),
    ]));
}

#[test]
fn an_allocation_beside_the_weights_is_used_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("packed");
    let src = fixture("trained");
    let o = common::run([
        os(Path::new("pack")),
        os(&src),
        os(Path::new("--out")),
        os(&out),
        os(Path::new("--json")),
    ]);
    let s: serde_json::Value = serde_json::from_str(&common::assert_ok(&o)).unwrap();
    assert_eq!(s["allocation"]["from"], "beside");
    assert!(s["allocation"]["path"]
        .as_str()
        .unwrap()
        .ends_with("allocation.safetensors"));
    common::assert_ok(&common::run([
        os(Path::new("inspect")),
        os(Path::new("--check")),
        os(&out),
    ]));
    let out2 = dir.path().join("packed2");
    let o = common::run([
        os(Path::new("pack")),
        os(&src),
        os(Path::new("--out")),
        os(&out2),
    ]);
    let report = common::assert_ok(&o);
    assert!(report.contains("beside the checkpoint"), "{report}");
    // The same bounds as when the file is named.
    let a = PackedModel::open(&out).unwrap();
    let b = PackedModel::open(&out2).unwrap();
    assert_eq!(a.bounds(0).unwrap(), b.bounds(0).unwrap());
}

#[test]
fn other_dtype_offers_only_float_dtypes() {
    let o = common::run(["pack", "--help"]);
    let help = common::assert_ok(&o);
    let section = help
        .split("--other-dtype")
        .nth(1)
        .unwrap()
        .split("--max-shard-size")
        .next()
        .unwrap();
    assert!(section.contains("bf16"), "{section}");
    assert!(
        !section.contains("int8"),
        "--other-dtype offers int8:\n{section}"
    );
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("checkpoints/nanochat/model.safetensors");
    let out = dir.path().join("out");
    refused(
        dir.path(),
        &[
            os(Path::new("pack")),
            os(&src),
            os(Path::new("--other-dtype")),
            os(Path::new("int8")),
            os(Path::new("--out")),
            os(&out),
        ],
        &["int8", "--other-dtype"],
    );
}

#[test]
fn the_output_may_not_overlap_the_source() {
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("ck");
    std::fs::create_dir(&ck).unwrap();
    std::fs::copy(
        fixture("checkpoints/nanochat/model.safetensors"),
        ck.join("model.safetensors"),
    )
    .unwrap();
    for out in [ck.clone(), ck.join("packed"), dir.path().to_path_buf()] {
        refused(
            dir.path(),
            &[
                os(Path::new("pack")),
                os(&ck),
                os(Path::new("--out")),
                os(&out),
                os(Path::new("--force")),
            ],
            &["--out", "would destroy it"],
        );
    }
}

/// The link rule of docs/format.md, "Source checkpoints".
#[test]
fn links_leaving_the_checkpoint_folder_are_refused() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let secret = root.join("secret.txt");
    std::fs::write(&secret, "HF_TOKEN=hf_do_not_leak").unwrap();
    let weights = fixture("checkpoints/nanochat/model.safetensors");
    let ck = root.join("ck");
    let fresh = |extra: &dyn Fn(&Path)| {
        if ck.exists() {
            std::fs::remove_dir_all(&ck).unwrap();
        }
        std::fs::create_dir(&ck).unwrap();
        std::fs::copy(&weights, ck.join("model.safetensors")).unwrap();
        extra(&ck);
    };
    let out = root.join("out");
    let pack_args = |src: &Path| -> Vec<std::ffi::OsString> {
        vec![
            "pack".into(),
            src.into(),
            "--out".into(),
            out.clone().into(),
        ]
    };
    let run_refused = |src: &Path, needles: &[&str]| {
        let args = pack_args(src);
        let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        let err = refused(root, &args, needles);
        assert!(!err.contains("hf_do_not_leak"), "{err}");
        assert!(!err.contains("root:x:0"), "{err}");
    };
    for (file, target) in [
        ("tokenizer.json", Path::new("/etc/passwd").to_path_buf()),
        ("tokenizer.json", secret.clone()),
        ("config.json", secret.clone()),
        ("meta_000100.json", secret.clone()),
        ("special_tokens_map.json", PathBuf::from("../secret.txt")),
    ] {
        fresh(&|ck| symlink(&target, ck.join(file)).unwrap());
        run_refused(
            &ck,
            &[file, "symbolic link", "outside the checkpoint folder"],
        );
    }
    // A dangling link.
    fresh(&|ck| symlink(ck.join("nowhere.json"), ck.join("tokenizer.json")).unwrap());
    run_refused(&ck, &["tokenizer.json", "dangling"]);
    // The checkpoint's own data file, and a shard reached through a linked subfolder.
    let elsewhere = root.join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    std::fs::copy(&weights, elsewhere.join("model.safetensors")).unwrap();
    fresh(&|ck| {
        std::fs::remove_file(ck.join("model.safetensors")).unwrap();
        symlink(
            elsewhere.join("model.safetensors"),
            ck.join("model.safetensors"),
        )
        .unwrap();
    });
    run_refused(&ck, &["model.safetensors", "outside the checkpoint folder"]);
    fresh(&|ck| {
        std::fs::remove_file(ck.join("model.safetensors")).unwrap();
        symlink(&elsewhere, ck.join("shards")).unwrap();
        let names: Vec<String> = Checkpoint::open(&weights)
            .unwrap()
            .names()
            .map(str::to_string)
            .collect();
        let map: serde_json::Map<String, serde_json::Value> = names
            .into_iter()
            .map(|n| (n, "shards/model.safetensors".into()))
            .collect();
        std::fs::write(
            ck.join("model.safetensors.index.json"),
            serde_json::to_vec(&serde_json::json!({"weight_map": map})).unwrap(),
        )
        .unwrap();
    });
    run_refused(
        &ck,
        &["shards/model.safetensors", "outside the checkpoint folder"],
    );

    // Links that stay inside the folder are followed, and the file is copied.
    fresh(&|ck| {
        std::fs::create_dir(ck.join("sub")).unwrap();
        std::fs::write(ck.join("sub/tok.json"), "{\"inside\": true}").unwrap();
        symlink("sub/tok.json", ck.join("tokenizer.json")).unwrap();
    });
    common::assert_ok(&common::run(pack_args(&ck)));
    assert_eq!(
        std::fs::read_to_string(out.join("tokenizer.json")).unwrap(),
        "{\"inside\": true}"
    );
    assert!(!out.join("tokenizer.json").is_symlink());
    std::fs::remove_dir_all(&out).unwrap();
    // A checkpoint given as a path on the command line is followed wherever it points.
    let link = root.join("link.safetensors");
    symlink(&weights, &link).unwrap();
    common::assert_ok(&common::run(pack_args(&link)));
    std::fs::remove_dir_all(&out).unwrap();
}

/// A Hugging Face cache snapshot links its files to `../../blobs/HASH`: followed within the
/// same `models--ORG--NAME` folder, refused into another model's blobs.
#[test]
fn hugging_face_cache_snapshots_are_read_through_their_blobs() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let hub = dir.path().join("hub");
    let model = hub.join("models--org--tiny");
    let snap = model.join("snapshots/0123abcd");
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(model.join("blobs")).unwrap();
    std::fs::copy(
        fixture("checkpoints/nanochat/model.safetensors"),
        model.join("blobs/aaaa"),
    )
    .unwrap();
    std::fs::write(model.join("blobs/bbbb"), "{\"tok\": 1}").unwrap();
    symlink("../../blobs/aaaa", snap.join("model.safetensors")).unwrap();
    symlink("../../blobs/bbbb", snap.join("tokenizer.json")).unwrap();
    let out = dir.path().join("out");
    common::assert_ok(&common::run([
        os(Path::new("pack")),
        os(&snap),
        os(Path::new("--out")),
        os(&out),
    ]));
    assert_eq!(
        std::fs::read_to_string(out.join("tokenizer.json")).unwrap(),
        "{\"tok\": 1}"
    );
    // Another model's blob is outside this snapshot's model folder.
    let other = hub.join("models--org--other/blobs");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("cccc"), "{\"other\": 1}").unwrap();
    std::fs::remove_file(snap.join("tokenizer.json")).unwrap();
    symlink(
        "../../../models--org--other/blobs/cccc",
        snap.join("tokenizer.json"),
    )
    .unwrap();
    let out2 = dir.path().join("out2");
    refused(
        dir.path(),
        &[
            os(Path::new("pack")),
            os(&snap),
            os(Path::new("--out")),
            os(&out2),
        ],
        &["tokenizer.json", "outside the checkpoint folder"],
    );
    // A folder that merely looks like a snapshot elsewhere gets no such allowance.
    let fake = dir.path().join("fake/snapshots/rev");
    std::fs::create_dir_all(&fake).unwrap();
    symlink(model.join("blobs/aaaa"), fake.join("model.safetensors")).unwrap();
    refused(
        dir.path(),
        &[
            os(Path::new("pack")),
            os(&fake),
            os(Path::new("--out")),
            os(&out2),
        ],
        &["model.safetensors", "outside the checkpoint folder"],
    );
}

#[test]
fn fifos_in_a_source_folder_never_block() {
    for name in [
        "config.json",
        "tokenizer.json",
        "meta_000100.json",
        "generation_config.json",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let ck = dir.path().join("ck");
        std::fs::create_dir(&ck).unwrap();
        std::fs::copy(
            fixture("checkpoints/nanochat/model.safetensors"),
            ck.join("model.safetensors"),
        )
        .unwrap();
        common::mkfifo(&ck.join(name));
        let out = dir.path().join("out");
        refused(
            dir.path(),
            &[
                os(Path::new("pack")),
                os(&ck),
                os(Path::new("--out")),
                os(&out),
            ],
            &[name, "FIFO"],
        );
    }
    // The allocation beside the weights.
    let dir = tempfile::tempdir().unwrap();
    let ck = dir.path().join("ck");
    std::fs::create_dir(&ck).unwrap();
    std::fs::copy(
        fixture("checkpoints/paper/model.safetensors"),
        ck.join("model.safetensors"),
    )
    .unwrap();
    common::mkfifo(&ck.join("allocation.safetensors"));
    let out = dir.path().join("out");
    refused(
        dir.path(),
        &[
            os(Path::new("pack")),
            os(&ck),
            os(Path::new("--out")),
            os(&out),
        ],
        &["allocation.safetensors", "FIFO"],
    );
}

/// Every tensor the pipeline decodes as floats is refused at detection when it is not one,
/// naming the tensor and its dtype.
#[test]
fn tensors_decoded_as_floats_must_be_floats() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.safetensors");
    let ints = |name: &str, dtype: Dtype, shape: &[usize]| {
        let n: usize = shape.iter().product();
        TensorBytes {
            name: name.into(),
            dtype,
            shape: shape.to_vec(),
            data: vec![1u8; n * dtype.bitsize() / 8].into(),
        }
    };
    for (name, dtype) in [
        ("l3_lambdas", Dtype::I32),
        ("l3_layers.0.w_up.weight", Dtype::I64),
        ("l3_layers.0.w_mix.weight", Dtype::U8),
        ("l3_layers.0.kv_weight", Dtype::I16),
    ] {
        let mut t = nanochat_layer(0, &[0, 2, 3, 5], 5);
        t.push(f32s("l3_lambdas", &[1]));
        let i = t.iter().position(|x| x.name == name).unwrap();
        let shape = t[i].shape.clone();
        t[i] = ints(name, dtype, &shape);
        write_ckpt(&p, t);
        let out = dir.path().join("out");
        refused(
            dir.path(),
            &[
                os(Path::new("pack")),
                os(&p),
                os(Path::new("--out")),
                os(&out),
            ],
            &[name, &format!("{dtype:?}"), "float"],
        );
    }
    // Norm weights of a paper checkpoint.
    let src = fixture("checkpoints/paper/model.safetensors");
    let ck = Checkpoint::open(&src).unwrap();
    let mut t: Vec<TensorBytes> = ck
        .tensors()
        .iter()
        .map(|i| TensorBytes {
            name: i.name.clone(),
            dtype: i.dtype,
            shape: i.shape.clone(),
            data: ck.read_all(&i.name).unwrap().into(),
        })
        .collect();
    let i = t
        .iter()
        .position(|x| x.name == "l3.1.norm_in.weight")
        .unwrap();
    t[i] = ints("l3.1.norm_in.weight", Dtype::U8, &[32]);
    write_ckpt(&p, t);
    let alloc = fixture("checkpoints/allocation-tiny.safetensors");
    let out = dir.path().join("out");
    refused(
        dir.path(),
        &[
            os(Path::new("pack")),
            os(&p),
            os(Path::new("--allocation")),
            os(&alloc),
            os(Path::new("--out")),
            os(&out),
        ],
        &["l3.1.norm_in.weight", "U8", "float"],
    );
}

/// `--map` files are validated like any input; a valid one packs into a folder that passes
/// `inspect --check`.
#[test]
fn map_files_are_validated() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let ck = root.join("m.safetensors");
    let mut t = nanochat_layer(0, &[0, 2, 3, 5], 5);
    t.extend(nanochat_layer(1, &[0, 2, 3, 5], 5));
    t.push(f32s("l3_lambdas", &[2]));
    write_ckpt(&ck, t);
    let layer = |i: usize| {
        format!(
            "[[layers]]\nkeys = \"l3_layers.{i}.kv_weight\"\nbounds = \"l3_layers.{i}.bounds\"\n\
             w_up = \"l3_layers.{i}.w_up.weight\"\nw_mix = \"l3_layers.{i}.w_mix.weight\"\n"
        )
    };
    let head = "dialect = \"nanochat\"\nlambdas = \"l3_lambdas\"\n";
    let good = format!("{head}{}{}", layer(0), layer(1));
    let map = root.join("map.toml");
    let out = root.join("out");
    let args = [
        os(Path::new("pack")),
        os(&ck),
        os(Path::new("--map")),
        os(&map),
        os(Path::new("--out")),
        os(&out),
    ];
    std::fs::write(&map, &good).unwrap();
    common::assert_ok(&common::run(args));
    common::assert_ok(&common::run([
        os(Path::new("inspect")),
        os(Path::new("--check")),
        os(&out),
    ]));
    let config = json_of(&out.join("config.json"));
    assert_eq!(config["l3"]["dialect"], "map:nanochat");
    std::fs::remove_dir_all(&out).unwrap();

    let with = |extra: &str| format!("{head}{extra}\n{}{}", layer(0), layer(1));
    let cases: Vec<(String, Vec<&str>)> = vec![
        (
            with("score_scale = nan"),
            vec!["score_scale = NaN", "finite"],
        ),
        (
            with("score_scale = inf"),
            vec!["score_scale = inf", "finite"],
        ),
        (
            with("score_scale = -0.5"),
            vec!["score_scale", "greater than 0"],
        ),
        (with("norm_eps = 0.0"), vec!["norm_eps", "greater than 0"]),
        (with("norm_eps = -inf"), vec!["norm_eps", "finite"]),
        (
            format!("{head}{}{}", layer(0), layer(0)),
            vec!["two layers are named l3_layers.0"],
        ),
        (
            format!(
                "{head}{}name = \"a\"\nid = 3\n{}name = \"b\"\nid = 3\n",
                layer(0),
                layer(1)
            ),
            vec!["both have id 3"],
        ),
        (
            format!(
                "{head}{}{}",
                layer(0),
                layer(1).replace("l3_layers.1.w_up.weight", "l3_layers.0.w_up.weight")
            ),
            vec!["l3_layers.0.w_up.weight", "used twice"],
        ),
        (
            format!(
                "{head}{}{}",
                layer(0),
                layer(1).replace("l3_layers.1.w_mix.weight", "l3_layers.0.kv_weight")
            ),
            vec!["l3_layers.0.kv_weight", "used twice"],
        ),
        (
            format!("{head}{}", layer(0)),
            vec!["l3_lambdas", "one lambda per L3 layer"],
        ),
        (
            format!("dialect = \"nanochat\"\n{}{}", layer(0), layer(1)),
            vec!["add_lambda needs lambdas", "residual = \"add\""],
        ),
        (
            with("residual = \"replace\""),
            vec!["lambdas", "uses no lambdas"],
        ),
        (
            format!(
                "{head}{}values = \"l3_layers.0.w_up.weight\"\n{}",
                layer(0),
                layer(1)
            ),
            vec!["names values", "tied"],
        ),
        (
            format!(
                "{head}{}norm_in = \"l3_layers.0.w_up.weight\"\n{}",
                layer(0),
                layer(1)
            ),
            vec!["norm weights", "norm_weights is false"],
        ),
        (
            format!("{head}{}{}", layer(0), layer(1).replace("kv_weight", "kv")),
            vec!["missing tensor l3_layers.1.kv"],
        ),
        (
            with("residual = \"sideways\""),
            vec!["sideways", "replace, add_lambda or add"],
        ),
        (format!("{good}\nbogus = 1\n"), vec!["not a valid map file"]),
        (
            format!("{good}\n{}", "# padding\n".repeat(120_000)),
            vec!["1048576-byte limit"],
        ),
    ];
    for (text, mut needles) in cases {
        std::fs::write(&map, &text).unwrap();
        needles.push("map.toml");
        refused(root, &args, &needles);
    }
    // A FIFO as the map.
    std::fs::remove_file(&map).unwrap();
    common::mkfifo(&map);
    refused(root, &args, &["map.toml", "FIFO"]);
    std::fs::remove_file(&map).unwrap();

    // residual = "add" without lambdas packs as the add residual.
    std::fs::write(
        &map,
        format!(
            "dialect = \"nanochat\"\nresidual = \"add\"\n{}{}",
            layer(0),
            layer(1)
        ),
    )
    .unwrap();
    common::assert_ok(&common::run(args));
    let config = json_of(&out.join("config.json"));
    assert_eq!(config["l3"]["semantics"]["residual"], "add");
    assert!(config["l3"]["layers"][0]["lambda"].is_null());
}

#[test]
fn nanochat_without_lambdas_packs_with_the_add_residual() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.safetensors");
    write_ckpt(&p, nanochat_layer(0, &[0, 2, 3, 5], 5));
    let out = dir.path().join("packed");
    let s = pack(&PackOptions::new(p, out.clone()), &Ui::quiet()).unwrap();
    assert_eq!(s.residual, "add");
    let model = PackedModel::open(&out).unwrap();
    assert_eq!(
        model.config.semantics.residual,
        l3kit::formats::semantics::Residual::Add
    );
    assert!(model.config.layers[0].lambda.is_none());
    assert!(check_packed(&out, &Ui::quiet()).ok());
}
