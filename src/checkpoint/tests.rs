//! Tests of the checkpoint reader: single files, range reads, sharded indexes, PyTorch files.
use super::*;
use crate::util::safetensors_file::{write_file, TensorBytes};
use safetensors::Dtype;
use std::borrow::Cow;

fn tb(name: &str, dtype: Dtype, shape: &[usize], data: Vec<u8>) -> TensorBytes<'static> {
    TensorBytes {
        name: name.to_string(),
        dtype,
        shape: shape.to_vec(),
        data: Cow::Owned(data),
    }
}

fn f32_bytes(v: impl IntoIterator<Item = f32>) -> Vec<u8> {
    v.into_iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn single_file_lists_and_reads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let w = f32_bytes((0..12).map(|i| i as f32));
    let kv = pattern(4 * 3 * 2, 7);
    let bounds: Vec<i64> = vec![0, 1, 4];
    let mut meta = BTreeMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    write_file(
        &path,
        &[
            tb("z.w", Dtype::F32, &[3, 4], w.clone()),
            tb("a.kv_weight", Dtype::BF16, &[4, 3], kv.clone()),
            TensorBytes::i64s("a.bounds", &bounds),
            tb("scalar", Dtype::F32, &[], f32_bytes([2.5])),
            tb("empty", Dtype::F32, &[0, 4], vec![]),
        ],
        &meta,
        4096,
    )
    .unwrap();

    let ck = Checkpoint::open(&path).unwrap();
    assert_eq!(ck.path(), path);
    assert_eq!(ck.folder(), None);
    assert_eq!(ck.files(), std::slice::from_ref(&path));
    assert_eq!(ck.format(), Format::Safetensors);
    let names: Vec<_> = ck.tensors().iter().map(|t| t.name.clone()).collect();
    assert_eq!(names, ["a.bounds", "a.kv_weight", "empty", "scalar", "z.w"]);
    let w_info = ck.get("z.w").unwrap();
    assert_eq!(w_info.dtype, Dtype::F32);
    assert_eq!(w_info.shape, vec![3, 4]);
    assert_eq!(w_info.numel(), 12);
    assert_eq!(w_info.byte_len(), 48);
    assert_eq!(w_info.file, path);
    assert_eq!(ck.get("scalar").unwrap().numel(), 1);
    assert_eq!(ck.get("empty").unwrap().byte_len(), 0);
    assert!(ck.get("nope").is_none());
    assert_eq!(ck.total_bytes(), 48 + 24 + 24 + 4);

    assert_eq!(ck.read_all("z.w").unwrap(), w);
    assert_eq!(ck.read_all("a.kv_weight").unwrap(), kv);
    assert_eq!(ck.read_all("empty").unwrap(), Vec::<u8>::new());
    let b: Vec<u8> = bounds.iter().flat_map(|v| v.to_le_bytes()).collect();
    assert_eq!(ck.read_all("a.bounds").unwrap(), b);
    assert_eq!(
        ck.metadata(&path).get("format").map(String::as_str),
        Some("pt")
    );

    // Reading a missing tensor or past the end is an input error, not a panic.
    let mut buf = vec![1, 2, 3];
    let e = ck.read_range("z.w", 40, 9, &mut buf).unwrap_err();
    assert_eq!(e.exit_code(), 2);
    assert!(e.to_string().contains("beyond"), "{e}");
    assert!(buf.is_empty(), "a failed read leaves the buffer empty");
    // A reused, longer buffer holds exactly the range afterwards.
    let mut buf = vec![0xEE; 100];
    ck.read_range("z.w", 4, 8, &mut buf).unwrap();
    assert_eq!(buf, &w[4..12]);
    assert!(ck.read_range("nope", 0, 0, &mut buf).is_err());
    assert!(ck.read_range("z.w", usize::MAX, 2, &mut buf).is_err());
}

#[test]
fn range_reads_match_slices() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.safetensors");
    let a = pattern(1000, 1);
    let b = pattern(3000, 2);
    write_file(
        &path,
        &[
            tb("a", Dtype::U8, &[1000], a.clone()),
            tb("b", Dtype::BF16, &[30, 50], b.clone()),
        ],
        &BTreeMap::new(),
        8,
    )
    .unwrap();
    let ck = Checkpoint::open(&path).unwrap();
    let mut buf = vec![0xAA; 5];
    for &(start, len) in &[
        (0, 0),
        (0, 1),
        (0, 3000),
        (1, 2999),
        (100, 200),
        (2999, 1),
        (3000, 0),
    ] {
        ck.read_range("b", start, len, &mut buf).unwrap();
        assert_eq!(buf, &b[start..start + len], "b[{start}..+{len}]");
        let mut out = vec![0u8; len];
        ck.read_into("b", start, &mut out).unwrap();
        assert_eq!(out, &b[start..start + len]);
    }
    ck.read_range("a", 999, 1, &mut buf).unwrap();
    assert_eq!(buf, &a[999..]);
    assert!(ck.read_range("a", 999, 2, &mut buf).is_err());
}

fn write_index(dir: &Path, name: &str, map: &[(&str, &str)]) {
    let wm: serde_json::Map<String, serde_json::Value> = map
        .iter()
        .map(|(t, s)| (t.to_string(), serde_json::Value::String(s.to_string())))
        .collect();
    let idx = serde_json::json!({"metadata": {"total_size": 123}, "weight_map": wm});
    std::fs::write(dir.join(name), serde_json::to_vec_pretty(&idx).unwrap()).unwrap();
}

#[test]
fn sharded_index_folder() {
    let dir = tempfile::tempdir().unwrap();
    let s1 = "model-00001-of-00002.safetensors";
    let s2 = "model-00002-of-00002.safetensors";
    let a = f32_bytes((0..6).map(|i| i as f32));
    let b = pattern(16, 3);
    let c = pattern(40, 4);
    write_file(
        &dir.path().join(s1),
        &[
            tb("a.weight", Dtype::F32, &[2, 3], a.clone()),
            tb("b", Dtype::BF16, &[8], b.clone()),
        ],
        &BTreeMap::new(),
        4096,
    )
    .unwrap();
    write_file(
        &dir.path().join(s2),
        &[tb("c.kv_weight", Dtype::U8, &[5, 8], c.clone())],
        &BTreeMap::new(),
        4096,
    )
    .unwrap();
    write_index(
        dir.path(),
        "model.safetensors.index.json",
        &[
            ("a.weight", s1),
            ("b", &format!("./{s1}")),
            ("c.kv_weight", s2),
        ],
    );
    std::fs::write(dir.path().join("config.json"), "{}").unwrap();
    // A stray file the index does not mention is ignored.
    std::fs::write(dir.path().join("training_args.bin"), "junk").unwrap();

    let ck = Checkpoint::open(dir.path()).unwrap();
    assert_eq!(ck.folder(), Some(dir.path()));
    assert_eq!(ck.files(), &[dir.path().join(s1), dir.path().join(s2)]);
    assert_eq!(ck.len(), 3);
    assert_eq!(ck.get("c.kv_weight").unwrap().file, dir.path().join(s2));
    assert_eq!(ck.get("c.kv_weight").unwrap().shape, vec![5, 8]);
    assert_eq!(ck.read_all("a.weight").unwrap(), a);
    assert_eq!(ck.read_all("b").unwrap(), b);
    let mut buf = Vec::new();
    ck.read_range("c.kv_weight", 8, 16, &mut buf).unwrap();
    assert_eq!(buf, &c[8..24]);
    assert_eq!(ck.index_metadata()["total_size"], serde_json::json!(123));

    // The index file itself opens the same checkpoint.
    let ck2 = Checkpoint::open(&dir.path().join("model.safetensors.index.json")).unwrap();
    assert_eq!(ck2.files(), ck.files());
    assert_eq!(ck2.folder(), Some(dir.path()));
}

#[test]
fn folder_with_single_safetensors() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("weights.safetensors");
    write_file(
        &p,
        &[TensorBytes::u32s("t", &[1, 2, 3])],
        &BTreeMap::new(),
        8,
    )
    .unwrap();
    let ck = Checkpoint::open(dir.path()).unwrap();
    assert_eq!(ck.files(), &[p]);
    assert_eq!(ck.folder(), Some(dir.path()));
    assert_eq!(
        ck.read_all("t").unwrap(),
        [1u32, 2, 3]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<_>>()
    );
}

#[test]
fn header_parse_allows_metadata_and_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("h.safetensors");
    let header =
        br#"{"x":{"dtype":"U8","shape":[2],"data_offsets":[4,6]},"__metadata__":{"k":"v","n":3}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    bytes.extend_from_slice(&[0, 0, 0, 0, 9, 8]);
    std::fs::write(&p, &bytes).unwrap();
    let ck = Checkpoint::open(&p).unwrap();
    assert_eq!(ck.read_all("x").unwrap(), vec![9, 8]);
    let meta = ck.metadata(&p);
    assert_eq!(meta["k"], "v");
    assert_eq!(meta["n"], "3");
    assert!(ck.get("__metadata__").is_none());
}

fn pt_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/pt")
        .join(name)
}

#[test]
fn pytorch_state_dict_fixture() {
    let path = pt_fixture("tiny_state_dict.pt");
    let ck = Checkpoint::open(&path).unwrap();
    assert_eq!(ck.format(), Format::PyTorch);
    assert_eq!(ck.files(), std::slice::from_ref(&path));
    let names: Vec<_> = ck.names().collect();
    assert_eq!(names, ["a.weight", "b.bounds", "b.kv_weight"]);

    let a = ck.get("a.weight").unwrap();
    assert_eq!((a.dtype, a.shape.clone()), (Dtype::F32, vec![2, 3]));
    assert_eq!(
        ck.read_all("a.weight").unwrap(),
        f32_bytes((0..6).map(|i| i as f32))
    );

    let kv = ck.get("b.kv_weight").unwrap();
    assert_eq!((kv.dtype, kv.shape.clone()), (Dtype::BF16, vec![4, 2]));
    let want: Vec<u8> = (0..8)
        .flat_map(|i| half::bf16::from_f32(i as f32).to_le_bytes())
        .collect();
    assert_eq!(ck.read_all("b.kv_weight").unwrap(), want);
    // Range reads, repeated (served from the cache).
    let mut buf = Vec::new();
    ck.read_range("b.kv_weight", 4, 6, &mut buf).unwrap();
    assert_eq!(buf, &want[4..10]);
    ck.read_range("b.kv_weight", 14, 2, &mut buf).unwrap();
    assert_eq!(buf, &want[14..16]);

    let b = ck.get("b.bounds").unwrap();
    assert_eq!((b.dtype, b.shape.clone()), (Dtype::I64, vec![3]));
    let want: Vec<u8> = [0i64, 1, 4].iter().flat_map(|v| v.to_le_bytes()).collect();
    assert_eq!(ck.read_all("b.bounds").unwrap(), want);
    // Back to the first tensor after the cache moved on.
    ck.read_range("a.weight", 4, 8, &mut buf).unwrap();
    assert_eq!(buf, f32_bytes([1.0, 2.0]));
}

#[test]
fn pytorch_nested_fixture_and_folder() {
    let path = pt_fixture("tiny_nested.pt");
    let ck = Checkpoint::open(&path).unwrap();
    let names: Vec<_> = ck.names().collect();
    assert_eq!(names, ["h.weight", "w.row2", "w.weight"]);
    assert_eq!(
        ck.read_all("w.weight").unwrap(),
        f32_bytes((0..12).map(|i| i as f32))
    );
    // A view sharing storage at an offset reads only its own elements.
    assert_eq!(ck.get("w.row2").unwrap().shape, vec![4]);
    assert_eq!(
        ck.read_all("w.row2").unwrap(),
        f32_bytes([8.0, 9.0, 10.0, 11.0])
    );
    let h = ck.get("h.weight").unwrap();
    assert_eq!((h.dtype, h.shape.clone()), (Dtype::F16, vec![2, 2]));
    let want: Vec<u8> = [0.0f32, 0.25, 0.5, 0.75]
        .iter()
        .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
        .collect();
    assert_eq!(ck.read_all("h.weight").unwrap(), want);

    // A folder holding one model file plus an optimizer file picks the model.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        pt_fixture("tiny_state_dict.pt"),
        dir.path().join("model_000100.pt"),
    )
    .unwrap();
    std::fs::copy(&path, dir.path().join("optim_000100_rank0.pt")).unwrap();
    std::fs::write(dir.path().join("meta_000100.json"), "{}").unwrap();
    let ck = Checkpoint::open(dir.path()).unwrap();
    assert_eq!(ck.files(), &[dir.path().join("model_000100.pt")]);
    assert_eq!(ck.folder(), Some(dir.path()));
    assert_eq!(ck.len(), 3);
}

#[test]
fn pytorch_sharded_index() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        pt_fixture("tiny_state_dict.pt"),
        dir.path().join("pytorch_model-00001.bin"),
    )
    .unwrap();
    std::fs::copy(
        pt_fixture("tiny_nested.pt"),
        dir.path().join("pytorch_model-00002.bin"),
    )
    .unwrap();
    write_index(
        dir.path(),
        "pytorch_model.bin.index.json",
        &[
            ("a.weight", "pytorch_model-00001.bin"),
            ("b.bounds", "pytorch_model-00001.bin"),
            ("b.kv_weight", "pytorch_model-00001.bin"),
            ("h.weight", "pytorch_model-00002.bin"),
            ("w.row2", "pytorch_model-00002.bin"),
            ("w.weight", "pytorch_model-00002.bin"),
        ],
    );
    let ck = Checkpoint::open(dir.path()).unwrap();
    assert_eq!(ck.len(), 6);
    assert_eq!(ck.files().len(), 2);
    assert_eq!(
        ck.read_all("w.row2").unwrap(),
        f32_bytes([8.0, 9.0, 10.0, 11.0])
    );
    assert_eq!(
        ck.read_all("a.weight").unwrap(),
        f32_bytes((0..6).map(|i| i as f32))
    );
}
