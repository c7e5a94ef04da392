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

    write_ckpt(&p, nanochat_layer(0, &[0, 2, 3, 5], 5));
    pack_fails(&p, &[], "l3_lambdas");

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
