//! Malformed checkpoints: `Checkpoint::open` must refuse each with an input error (exit code 2)
//! whose message names the file and the problem, and must never panic.

use l3kit::checkpoint::Checkpoint;
use l3kit::util::safetensors_file::{write_file, TensorBytes};
use safetensors::Dtype;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A safetensors file from a raw header string and data section.
fn raw_st(dir: &Path, name: &str, header: &str, data: &[u8]) -> PathBuf {
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn u8_tensor(name: &str, n: usize) -> TensorBytes<'static> {
    TensorBytes {
        name: name.to_string(),
        dtype: Dtype::U8,
        shape: vec![n],
        data: Cow::Owned((0..n).map(|i| i as u8).collect()),
    }
}

/// A valid shard holding the named u8 tensors.
fn shard(dir: &Path, file: &str, tensors: &[&str]) {
    let ts: Vec<_> = tensors.iter().map(|t| u8_tensor(t, 4)).collect();
    write_file(&dir.join(file), &ts, &BTreeMap::new(), 8).unwrap();
}

fn index(dir: &Path, map: &[(&str, &str)]) -> PathBuf {
    let wm: serde_json::Map<String, serde_json::Value> = map
        .iter()
        .map(|(t, s)| (t.to_string(), serde_json::Value::String(s.to_string())))
        .collect();
    let p = dir.join("model.safetensors.index.json");
    std::fs::write(
        &p,
        serde_json::to_vec(&serde_json::json!({"metadata": {}, "weight_map": wm})).unwrap(),
    )
    .unwrap();
    p
}

/// Open `path`, expect an input error naming `file` and containing every one of `needles`.
#[track_caller]
fn expect_err(path: &Path, file: &str, needles: &[&str]) -> String {
    let e = match Checkpoint::open(path) {
        Ok(ck) => panic!("{} opened, expected an error: {ck:?}", path.display()),
        Err(e) => e,
    };
    let msg = e.to_string();
    assert_eq!(e.exit_code(), 2, "{msg}");
    assert!(msg.contains(file), "message does not name {file}: {msg}");
    for n in needles {
        assert!(msg.contains(n), "message lacks {n:?}: {msg}");
    }
    msg
}

const T: &str = r#""t":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]}"#;

// ---- safetensors files ----

#[test]
fn shorter_than_eight_bytes() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("short.safetensors");
    std::fs::write(&p, [1, 2, 3]).unwrap();
    expect_err(&p, "short.safetensors", &["truncated", "3 bytes"]);
    std::fs::write(&p, []).unwrap();
    expect_err(&p, "short.safetensors", &["truncated"]);
}

#[test]
fn data_shorter_than_offsets_claim() {
    let d = tempfile::tempdir().unwrap();
    let p = raw_st(d.path(), "cut.safetensors", &format!("{{{T}}}"), &[0u8; 12]);
    expect_err(&p, "cut.safetensors", &["tensor t", "truncated"]);
}

#[test]
fn truncated_copy_of_a_valid_file() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("full.safetensors");
    write_file(
        &p,
        &[u8_tensor("a", 100), u8_tensor("b", 100)],
        &BTreeMap::new(),
        64,
    )
    .unwrap();
    let bytes = std::fs::read(&p).unwrap();
    let cut = d.path().join("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() - 1]).unwrap();
    expect_err(&cut, "cut.safetensors", &["tensor b", "truncated"]);
    // Cut inside the header: the announced header length is now beyond the file.
    std::fs::write(&cut, &bytes[..20]).unwrap();
    expect_err(&cut, "cut.safetensors", &["beyond"]);
}

#[test]
fn header_length_beyond_file() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("long.safetensors");
    let mut bytes = 1_000_000u64.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{}");
    std::fs::write(&p, bytes).unwrap();
    expect_err(&p, "long.safetensors", &["header length 1000000", "beyond"]);
    let mut bytes = u64::MAX.to_le_bytes().to_vec();
    bytes.extend_from_slice(b"{}");
    std::fs::write(&p, bytes).unwrap();
    expect_err(&p, "long.safetensors", &["beyond"]);
}

#[test]
fn header_not_json() {
    let d = tempfile::tempdir().unwrap();
    let p = raw_st(d.path(), "nj.safetensors", "{\"t\": oops", &[0u8; 24]);
    expect_err(&p, "nj.safetensors", &["not JSON"]);
    let p = raw_st(d.path(), "bin.safetensors", "\u{0}\u{1}\u{2}", &[]);
    expect_err(&p, "bin.safetensors", &["not JSON"]);
}

#[test]
fn header_not_an_object() {
    let d = tempfile::tempdir().unwrap();
    let p = raw_st(d.path(), "arr.safetensors", "[1, 2, 3]", &[]);
    expect_err(&p, "arr.safetensors", &["not a JSON object", "an array"]);
    let p = raw_st(d.path(), "ent.safetensors", r#"{"t": 5}"#, &[]);
    expect_err(&p, "ent.safetensors", &["tensor t", "not an object"]);
}

#[test]
fn entry_missing_fields() {
    let d = tempfile::tempdir().unwrap();
    for (field, header) in [
        ("dtype", r#"{"t":{"shape":[2],"data_offsets":[0,2]}}"#),
        ("shape", r#"{"t":{"dtype":"U8","data_offsets":[0,2]}}"#),
        ("data_offsets", r#"{"t":{"dtype":"U8","shape":[2]}}"#),
    ] {
        let p = raw_st(d.path(), "miss.safetensors", header, &[0, 0]);
        expect_err(&p, "miss.safetensors", &["tensor t", "missing", field]);
    }
    // Wrong types in the fields.
    let p = raw_st(
        d.path(),
        "typ.safetensors",
        r#"{"t":{"dtype":"U8","shape":[-2],"data_offsets":[0,2]}}"#,
        &[0, 0],
    );
    expect_err(&p, "typ.safetensors", &["tensor t", "shape"]);
    let p = raw_st(
        d.path(),
        "typ.safetensors",
        r#"{"t":{"dtype":"U8","shape":[2],"data_offsets":[0]}}"#,
        &[0, 0],
    );
    expect_err(&p, "typ.safetensors", &["tensor t", "data_offsets"]);
    let p = raw_st(
        d.path(),
        "typ.safetensors",
        r#"{"t":{"dtype":8,"shape":[2],"data_offsets":[0,2]}}"#,
        &[0, 0],
    );
    expect_err(&p, "typ.safetensors", &["tensor t", "dtype"]);
}

#[test]
fn unknown_dtype() {
    let d = tempfile::tempdir().unwrap();
    let p = raw_st(
        d.path(),
        "dt.safetensors",
        r#"{"t":{"dtype":"F99","shape":[2],"data_offsets":[0,2]}}"#,
        &[0, 0],
    );
    expect_err(&p, "dt.safetensors", &["tensor t", "unknown dtype", "F99"]);
}

#[test]
fn begin_after_end() {
    let d = tempfile::tempdir().unwrap();
    let p = raw_st(
        d.path(),
        "be.safetensors",
        r#"{"t":{"dtype":"U8","shape":[2],"data_offsets":[4,2]}}"#,
        &[0; 8],
    );
    expect_err(
        &p,
        "be.safetensors",
        &["tensor t", "out of range", "[4, 2]"],
    );
}

#[test]
fn offsets_past_the_data() {
    let d = tempfile::tempdir().unwrap();
    let p = raw_st(
        d.path(),
        "oor.safetensors",
        r#"{"t":{"dtype":"U8","shape":[2],"data_offsets":[1000,1002]}}"#,
        &[0; 8],
    );
    expect_err(
        &p,
        "oor.safetensors",
        &["tensor t", "out of range", "[1000, 1002]"],
    );
}

#[test]
fn overlapping_tensors() {
    let d = tempfile::tempdir().unwrap();
    let header = r#"{"a":{"dtype":"U8","shape":[6],"data_offsets":[0,6]},"b":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}}"#;
    let p = raw_st(d.path(), "ov.safetensors", header, &[0; 8]);
    expect_err(&p, "ov.safetensors", &["overlap", "a", "b"]);
    // Overlap with a tensor that is not the latest to start (contained range).
    let header = r#"{"a":{"dtype":"U8","shape":[8],"data_offsets":[0,8]},"b":{"dtype":"U8","shape":[1],"data_offsets":[2,3]},"c":{"dtype":"U8","shape":[2],"data_offsets":[5,7]}}"#;
    let p = raw_st(d.path(), "ov2.safetensors", header, &[0; 8]);
    expect_err(&p, "ov2.safetensors", &["overlap"]);
    // Touching ranges and empty tensors are fine.
    let header = r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"e":{"dtype":"U8","shape":[0],"data_offsets":[4,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}}"#;
    let p = raw_st(d.path(), "ok.safetensors", header, &[0; 8]);
    assert_eq!(Checkpoint::open(&p).unwrap().len(), 3);
}

#[test]
fn dtype_or_shape_does_not_match_size() {
    let d = tempfile::tempdir().unwrap();
    let p = raw_st(
        d.path(),
        "sz.safetensors",
        r#"{"t":{"dtype":"F32","shape":[2,3],"data_offsets":[0,20]}}"#,
        &[0; 24],
    );
    expect_err(
        &p,
        "sz.safetensors",
        &["tensor t", "need 24 bytes", "hold 20", "does not match"],
    );
    let p = raw_st(
        d.path(),
        "sz2.safetensors",
        r#"{"t":{"dtype":"BF16","shape":[2,3],"data_offsets":[0,24]}}"#,
        &[0; 24],
    );
    expect_err(&p, "sz2.safetensors", &["tensor t", "does not match"]);
}

#[test]
fn shape_that_overflows() {
    let d = tempfile::tempdir().unwrap();
    let header = format!(
        r#"{{"t":{{"dtype":"F32","shape":[{0},{0},{0}],"data_offsets":[0,8]}}}}"#,
        1u64 << 40
    );
    let p = raw_st(d.path(), "big.safetensors", &header, &[0; 8]);
    expect_err(&p, "big.safetensors", &["tensor t", "too large"]);
}

#[test]
fn duplicate_tensor_name() {
    let d = tempfile::tempdir().unwrap();
    let header = r#"{"t":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"t":{"dtype":"U8","shape":[2],"data_offsets":[2,4]}}"#;
    let p = raw_st(d.path(), "dup.safetensors", header, &[0; 4]);
    expect_err(&p, "dup.safetensors", &["tensor t", "twice"]);
}

#[test]
fn metadata_is_allowed_and_ignored() {
    let d = tempfile::tempdir().unwrap();
    let header =
        r#"{"__metadata__":{"format":"pt"},"t":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}"#;
    let p = raw_st(d.path(), "meta.safetensors", header, &[5, 6]);
    let ck = Checkpoint::open(&p).unwrap();
    assert_eq!(ck.len(), 1);
    assert_eq!(ck.read_all("t").unwrap(), vec![5, 6]);
    assert_eq!(ck.metadata(&p)["format"], "pt");
}

// ---- indexes ----

#[test]
fn index_points_at_missing_shard() {
    let d = tempfile::tempdir().unwrap();
    shard(d.path(), "s1.safetensors", &["a"]);
    let p = index(
        d.path(),
        &[("a", "s1.safetensors"), ("b", "s2.safetensors")],
    );
    expect_err(
        d.path(),
        "model.safetensors.index.json",
        &["missing shard", "s2.safetensors", "tensor b"],
    );
    expect_err(&p, "model.safetensors.index.json", &["missing shard"]);
}

#[test]
fn index_with_absolute_path() {
    let d = tempfile::tempdir().unwrap();
    shard(d.path(), "s1.safetensors", &["a"]);
    let abs = d.path().join("s1.safetensors");
    index(d.path(), &[("a", abs.to_str().unwrap())]);
    expect_err(
        d.path(),
        "model.safetensors.index.json",
        &["absolute", "tensor a"],
    );
}

#[test]
fn index_with_parent_dir() {
    let d = tempfile::tempdir().unwrap();
    let sub = d.path().join("ck");
    std::fs::create_dir(&sub).unwrap();
    shard(d.path(), "s1.safetensors", &["a"]);
    index(&sub, &[("a", "../s1.safetensors")]);
    expect_err(&sub, "model.safetensors.index.json", &["..", "tensor a"]);
    index(&sub, &[("a", "x/../../s1.safetensors")]);
    expect_err(&sub, "model.safetensors.index.json", &[".."]);
}

#[test]
fn same_tensor_in_two_shards() {
    let d = tempfile::tempdir().unwrap();
    shard(d.path(), "s1.safetensors", &["a", "x"]);
    shard(d.path(), "s2.safetensors", &["b", "x"]);
    index(
        d.path(),
        &[
            ("a", "s1.safetensors"),
            ("b", "s2.safetensors"),
            ("x", "s1.safetensors"),
        ],
    );
    expect_err(
        d.path(),
        "model.safetensors.index.json",
        &[
            "tensor x",
            "two shards",
            "both",
            "s1.safetensors",
            "s2.safetensors",
        ],
    );
}

#[test]
fn weight_map_names_tensor_its_shard_lacks() {
    let d = tempfile::tempdir().unwrap();
    shard(d.path(), "s1.safetensors", &["a"]);
    index(
        d.path(),
        &[("a", "s1.safetensors"), ("ghost", "s1.safetensors")],
    );
    expect_err(
        d.path(),
        "model.safetensors.index.json",
        &["tensor ghost", "s1.safetensors", "does not contain"],
    );
}

#[test]
fn shard_holds_tensor_assigned_elsewhere() {
    let d = tempfile::tempdir().unwrap();
    shard(d.path(), "s1.safetensors", &["a", "b"]);
    shard(d.path(), "s2.safetensors", &["c"]);
    index(
        d.path(),
        &[
            ("a", "s1.safetensors"),
            ("b", "s2.safetensors"),
            ("c", "s2.safetensors"),
        ],
    );
    expect_err(
        d.path(),
        "model.safetensors.index.json",
        &[
            "tensor b",
            "assigns it to shard s2.safetensors",
            "s1.safetensors",
        ],
    );
}

#[test]
fn shard_holds_tensor_the_map_omits() {
    let d = tempfile::tempdir().unwrap();
    shard(d.path(), "s1.safetensors", &["a", "extra"]);
    index(d.path(), &[("a", "s1.safetensors")]);
    expect_err(
        d.path(),
        "model.safetensors.index.json",
        &["tensor extra", "does not list"],
    );
}

#[test]
fn malformed_index_file() {
    let d = tempfile::tempdir().unwrap();
    shard(d.path(), "s1.safetensors", &["a"]);
    let p = d.path().join("model.safetensors.index.json");
    std::fs::write(&p, "{not json").unwrap();
    expect_err(d.path(), "model.safetensors.index.json", &["not JSON"]);
    std::fs::write(&p, r#"{"metadata": {}}"#).unwrap();
    expect_err(d.path(), "model.safetensors.index.json", &["weight_map"]);
    std::fs::write(&p, r#"{"weight_map": {}}"#).unwrap();
    expect_err(d.path(), "model.safetensors.index.json", &["empty"]);
    std::fs::write(&p, r#"{"weight_map": {"a": 3}}"#).unwrap();
    expect_err(
        d.path(),
        "model.safetensors.index.json",
        &["tensor a", "not a string"],
    );
}

#[test]
fn bad_shard_is_named() {
    let d = tempfile::tempdir().unwrap();
    shard(d.path(), "s1.safetensors", &["a"]);
    raw_st(
        d.path(),
        "s2.safetensors",
        r#"{"b":{"dtype":"U8","shape":[2],"data_offsets":[0,9]}}"#,
        &[0; 2],
    );
    index(
        d.path(),
        &[("a", "s1.safetensors"), ("b", "s2.safetensors")],
    );
    expect_err(d.path(), "s2.safetensors", &["tensor b", "truncated"]);
}

// ---- folders and file kinds ----

#[test]
fn folder_without_checkpoint() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("config.json"), "{}").unwrap();
    let name = d.path().file_name().unwrap().to_str().unwrap().to_string();
    expect_err(d.path(), &name, &["no checkpoint found"]);
}

#[test]
fn folder_with_several_unindexed_files() {
    let d = tempfile::tempdir().unwrap();
    shard(d.path(), "a.safetensors", &["a"]);
    shard(d.path(), "b.safetensors", &["b"]);
    let name = d.path().file_name().unwrap().to_str().unwrap().to_string();
    expect_err(
        d.path(),
        &name,
        &["several", "a.safetensors", "b.safetensors"],
    );
}

#[test]
fn missing_path() {
    let d = tempfile::tempdir().unwrap();
    expect_err(
        &d.path().join("nope.safetensors"),
        "nope.safetensors",
        &["cannot open"],
    );
}

#[test]
fn neither_zip_nor_safetensors() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("weights.pt");
    std::fs::write(&p, "this is plain text, not a checkpoint").unwrap();
    expect_err(&p, "weights.pt", &["not a PyTorch zip checkpoint"]);
    let p = d.path().join("weights.dat");
    std::fs::write(&p, "this is plain text, not a checkpoint").unwrap();
    expect_err(
        &p,
        "weights.dat",
        &["neither a safetensors file nor a PyTorch zip"],
    );
}

#[test]
fn legacy_pickle() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("old.bin");
    std::fs::write(&p, b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.").unwrap();
    expect_err(&p, "old.bin", &["legacy"]);
}

#[test]
fn corrupt_zip() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("broken.pt");
    std::fs::write(&p, b"PK\x03\x04 this is not really a zip archive").unwrap();
    expect_err(&p, "broken.pt", &["cannot read the PyTorch checkpoint"]);
}

fn pt_fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/pt/tiny_state_dict.pt")
}

#[test]
fn truncated_pytorch_file() {
    let d = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(pt_fixture()).unwrap();
    let p = d.path().join("cut.pt");
    for keep in [bytes.len() / 2, bytes.len() - 30, 10] {
        std::fs::write(&p, &bytes[..keep]).unwrap();
        expect_err(&p, "cut.pt", &[]);
    }
}

/// Every single-byte corruption of the PyTorch fixture either opens and reads (checked against
/// the declared sizes) or fails with an input error: never a panic.
#[test]
fn corrupted_pytorch_bytes_never_panic() {
    let d = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(pt_fixture()).unwrap();
    let p = d.path().join("fuzz.pt");
    for pos in 0..bytes.len() {
        for flip in [0xFFu8, 0x01] {
            let mut b = bytes.clone();
            b[pos] ^= flip;
            std::fs::write(&p, &b).unwrap();
            match Checkpoint::open(&p) {
                Err(e) => assert_eq!(e.exit_code(), 2, "{e}"),
                Ok(ck) => {
                    for t in ck.tensors() {
                        match ck.read_all(&t.name) {
                            Ok(data) => assert_eq!(data.len(), t.byte_len()),
                            Err(e) => assert_eq!(e.exit_code(), 2, "{e}"),
                        }
                    }
                }
            }
        }
    }
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn valid_file() -> Vec<u8> {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("v.safetensors");
        write_file(
            &p,
            &[
                u8_tensor("alpha", 16),
                u8_tensor("beta", 8),
                TensorBytes::i64s("gamma", &[0, 1, 4]),
            ],
            &BTreeMap::from([("k".to_string(), "v".to_string())]),
            8,
        )
        .unwrap();
        std::fs::read(p).unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 400, .. ProptestConfig::default() })]

        /// Random edits and truncations of a valid safetensors file never panic; when the file
        /// still opens, every tensor reads back at its declared size.
        #[test]
        fn mutated_safetensors_never_panic(
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
            cut in any::<prop::sample::Index>(),
            do_cut in any::<bool>(),
        ) {
            let mut bytes = valid_file();
            for (i, v) in edits {
                let i = i.index(bytes.len());
                bytes[i] = v;
            }
            if do_cut {
                let n = cut.index(bytes.len());
                bytes.truncate(n);
            }
            let d = tempfile::tempdir().unwrap();
            let p = d.path().join("m.safetensors");
            std::fs::write(&p, &bytes).unwrap();
            match Checkpoint::open(&p) {
                Err(e) => {
                    prop_assert_eq!(e.exit_code(), 2);
                    prop_assert!(e.to_string().contains("m.safetensors"), "{}", e);
                }
                Ok(ck) => {
                    for t in ck.tensors() {
                        let data = ck.read_all(&t.name).unwrap();
                        prop_assert_eq!(data.len(), t.byte_len());
                    }
                }
            }
        }
    }
}
