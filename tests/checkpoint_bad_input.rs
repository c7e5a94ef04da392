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

// ---- PyTorch files crafted byte by byte (tests have no Python) ----

/// `torch.save`-style zip files written from Rust: a pickle of a state dict of
/// `_rebuild_tensor_v2` records, the storages as `archive/data/KEY`, stored uncompressed.
mod pt {
    /// One tensor record, as `torch.save` writes it (every field may be made wrong).
    #[derive(Clone, Debug)]
    pub struct Rec {
        pub storage: String,
        pub key: String,
        pub location: String,
        pub storage_numel: i64,
        pub offset: i64,
        pub shape: Vec<i64>,
        pub stride: Vec<i64>,
        /// The rebuild function (module, name).
        pub func: (String, String),
    }

    impl Rec {
        /// A contiguous f32 tensor of `shape` over its own storage `key`.
        pub fn f32(key: &str, shape: &[i64]) -> Rec {
            let mut stride = vec![1i64; shape.len()];
            for k in (0..shape.len().saturating_sub(1)).rev() {
                stride[k] = stride[k + 1] * shape[k + 1];
            }
            Rec {
                storage: "FloatStorage".into(),
                key: key.into(),
                location: "cuda:0".into(),
                storage_numel: shape.iter().product(),
                offset: 0,
                shape: shape.to_vec(),
                stride,
                func: ("torch._utils".into(), "_rebuild_tensor_v2".into()),
            }
        }

        pub fn with_storage(mut self, class: &str) -> Rec {
            self.storage = class.into();
            self
        }
    }

    /// A pickle writer with just the opcodes torch.save uses.
    pub struct Pickle(pub Vec<u8>);

    impl Pickle {
        /// Protocol 2, an empty dict and a MARK: items follow, `finish` closes them.
        pub fn state_dict() -> Pickle {
            Pickle(vec![0x80, 2, b'}', b'('])
        }
        pub fn str(&mut self, s: &str) {
            self.0.push(b'X');
            self.0.extend_from_slice(&(s.len() as u32).to_le_bytes());
            self.0.extend_from_slice(s.as_bytes());
        }
        /// BININT for what fits (the form torch writes), LONG1 for the rest.
        pub fn int(&mut self, v: i64) {
            if (0..=i32::MAX as i64).contains(&v) {
                self.0.push(b'J');
                self.0.extend_from_slice(&(v as i32).to_le_bytes());
            } else {
                self.0.extend_from_slice(&[0x8a, 8]);
                self.0.extend_from_slice(&v.to_le_bytes());
            }
        }
        pub fn global(&mut self, module: &str, name: &str) {
            self.0.push(b'c');
            self.0
                .extend_from_slice(format!("{module}\n{name}\n").as_bytes());
        }
        pub fn ints(&mut self, v: &[i64]) {
            self.0.push(b'(');
            for &x in v {
                self.int(x);
            }
            self.0.push(b't');
        }
        pub fn tensor(&mut self, name: &str, r: &Rec) {
            self.str(name);
            self.global(&r.func.0, &r.func.1);
            self.0.extend_from_slice(b"((");
            self.str("storage");
            self.global("torch", &r.storage);
            self.str(&r.key);
            self.str(&r.location);
            self.int(r.storage_numel);
            self.0.extend_from_slice(b"tQ");
            self.int(r.offset);
            self.ints(&r.shape);
            self.ints(&r.stride);
            self.0.push(0x89);
            self.global("collections", "OrderedDict");
            self.0.extend_from_slice(b")Rt");
            self.0.push(b'R');
        }
        /// A raw value under `name` (bytes that push one object).
        pub fn raw(&mut self, name: &str, value: &[u8]) {
            self.str(name);
            self.0.extend_from_slice(value);
        }
        pub fn finish(mut self) -> Vec<u8> {
            self.0.extend_from_slice(b"u.");
            self.0
        }
    }

    fn crc32(data: &[u8]) -> u32 {
        let mut c = flate2::Crc::new();
        c.update(data);
        c.sum()
    }

    /// A zip of stored entries.
    pub fn zip(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut dir = Vec::new();
        for (name, data) in entries {
            let offset = out.len() as u32;
            let crc = crc32(data);
            let mut fixed = Vec::new();
            fixed.extend_from_slice(&20u16.to_le_bytes()); // version needed
            fixed.extend_from_slice(&0u16.to_le_bytes()); // flags
            fixed.extend_from_slice(&0u16.to_le_bytes()); // stored
            fixed.extend_from_slice(&0u32.to_le_bytes()); // time, date
            fixed.extend_from_slice(&crc.to_le_bytes());
            fixed.extend_from_slice(&(data.len() as u32).to_le_bytes());
            fixed.extend_from_slice(&(data.len() as u32).to_le_bytes());
            fixed.extend_from_slice(&(name.len() as u16).to_le_bytes());
            fixed.extend_from_slice(&0u16.to_le_bytes()); // extra
            out.extend_from_slice(b"PK\x03\x04");
            out.extend_from_slice(&fixed);
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(data);
            dir.extend_from_slice(b"PK\x01\x02");
            dir.extend_from_slice(&20u16.to_le_bytes()); // version made by
            dir.extend_from_slice(&fixed);
            dir.extend_from_slice(&[0u8; 6]); // comment length, disk, internal attributes
            dir.extend_from_slice(&[0u8; 4]); // external attributes
            dir.extend_from_slice(&offset.to_le_bytes());
            dir.extend_from_slice(name.as_bytes());
        }
        let dir_offset = out.len() as u32;
        out.extend_from_slice(&dir);
        out.extend_from_slice(b"PK\x05\x06\0\0\0\0");
        out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
        out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
        out.extend_from_slice(&(dir.len() as u32).to_le_bytes());
        out.extend_from_slice(&dir_offset.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out
    }

    /// A torch.save file from a pickle and its storages (key, bytes).
    pub fn file(pickle: Vec<u8>, storages: &[(String, Vec<u8>)]) -> Vec<u8> {
        let mut entries = vec![
            ("archive/data.pkl".to_string(), pickle),
            ("archive/byteorder".to_string(), b"little".to_vec()),
        ];
        for (k, d) in storages {
            entries.push((format!("archive/data/{k}"), d.clone()));
        }
        entries.push(("archive/version".to_string(), b"3\n".to_vec()));
        zip(&entries)
    }

    pub fn f32_bytes(n: usize) -> Vec<u8> {
        (0..n)
            .flat_map(|i| (i as f32 * 0.25).to_le_bytes())
            .collect()
    }

    /// A packable nanochat checkpoint (one L3 layer) as a .pt file, plus `extra` tensors.
    pub fn nanochat(extra: &[(&str, Rec, Vec<u8>)]) -> Vec<u8> {
        let mut p = Pickle::state_dict();
        let mut storages = Vec::new();
        let plain = [
            ("l3_layers.0.kv_weight", vec![5i64, 4]),
            ("l3_layers.0.w_up.weight", vec![6, 4]),
            ("l3_layers.0.w_mix.weight", vec![4, 10]),
            ("l3_lambdas", vec![1]),
        ];
        for (i, (name, shape)) in plain.iter().enumerate() {
            let r = Rec::f32(&format!("s{i}"), shape);
            p.tensor(name, &r);
            storages.push((r.key.clone(), f32_bytes(r.storage_numel as usize)));
        }
        let mut b = Rec::f32("sb", &[4]).with_storage("LongStorage");
        b.location = "cpu".into();
        p.tensor("l3_layers.0.bounds", &b);
        storages.push((
            "sb".into(),
            [0i64, 2, 3, 5]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        ));
        for (name, r, data) in extra {
            p.tensor(name, r);
            if !data.is_empty() || r.storage_numel == 0 {
                storages.push((r.key.clone(), data.clone()));
            }
        }
        file(p.finish(), &storages)
    }
}

mod common;

/// Run `l3kit pack SRC --out DIR/out` under the memory and time limits and expect a clean
/// refusal naming `file` and every needle, with nothing left behind and the inputs unchanged.
#[track_caller]
fn pack_refused(dir: &Path, src: &Path, file: &str, needles: &[&str]) -> String {
    let before = common::snapshot(dir);
    let out = common::run([
        "pack".as_ref(),
        src.as_os_str(),
        "--out".as_ref(),
        dir.join("out").as_os_str(),
    ]);
    let mut all = needles.to_vec();
    all.push(file);
    common::assert_refused(&out, 2, &all);
    let err = common::stderr(&out);
    assert!(!err.contains("skipping"), "{err}");
    assert_eq!(
        before,
        common::snapshot(dir),
        "the run left files behind or changed an input"
    );
    err
}

#[test]
fn pytorch_tensors_that_cannot_be_read_exactly_are_refused() {
    use pt::Rec;
    let two = |k: &str| Rec::f32(k, &[2]);
    let data8 = pt::f32_bytes(2);
    let cases: Vec<(&str, Rec, Vec<u8>, Vec<&str>)> = vec![
        (
            "quantized storage",
            two("x").with_storage("QUInt8Storage"),
            vec![0; 2],
            vec!["QUInt8Storage"],
        ),
        (
            "complex storage",
            two("x").with_storage("ComplexFloatStorage"),
            vec![0; 16],
            vec!["ComplexFloatStorage"],
        ),
        (
            "negative shape",
            Rec {
                shape: vec![-1, 2],
                stride: vec![2, 1],
                ..two("x")
            },
            data8.clone(),
            vec!["negative"],
        ),
        (
            "huge shape",
            Rec {
                shape: vec![1 << 40, 1 << 40],
                stride: vec![1 << 40, 1],
                ..two("x")
            },
            data8.clone(),
            vec!["too large"],
        ),
        (
            "negative stride",
            Rec {
                stride: vec![-1],
                ..two("x")
            },
            data8.clone(),
            vec!["negative"],
        ),
        (
            "huge stride",
            Rec {
                stride: vec![1 << 62],
                ..two("x")
            },
            data8.clone(),
            vec!["needs element 4611686018427387904"],
        ),
        (
            "storage offset 2^62",
            Rec {
                offset: 1 << 62,
                ..two("x")
            },
            data8.clone(),
            vec!["storage offset 4611686018427387904"],
        ),
        (
            "negative storage offset",
            Rec {
                offset: -4,
                ..two("x")
            },
            data8.clone(),
            vec!["negative"],
        ),
        (
            "storage larger than its entry",
            Rec {
                storage_numel: 1000,
                ..two("x")
            },
            data8.clone(),
            vec!["1000 elements", "holds 8 bytes"],
        ),
        (
            "storage smaller than its entry",
            Rec {
                storage_numel: 1,
                shape: vec![1],
                ..two("x")
            },
            data8.clone(),
            vec!["holds 8 bytes"],
        ),
        (
            "storage entry missing",
            two("nowhere"),
            Vec::new(),
            vec!["archive/data/nowhere", "missing"],
        ),
        (
            "shape and stride of different lengths",
            Rec {
                stride: vec![1, 1],
                ..two("x")
            },
            data8.clone(),
            vec!["different lengths"],
        ),
        (
            "a quantized tensor record",
            Rec {
                func: ("torch._utils".into(), "_rebuild_qtensor".into()),
                ..two("x")
            },
            data8.clone(),
            vec!["_rebuild_qtensor"],
        ),
        (
            "a broadcast view",
            Rec {
                shape: vec![4, 2],
                stride: vec![0, 1],
                ..two("x")
            },
            data8.clone(),
            vec!["broadcast"],
        ),
        (
            "a view past its storage",
            Rec {
                offset: 1,
                ..two("x")
            },
            data8.clone(),
            vec!["needs element 2", "holds 2 elements"],
        ),
    ];
    for (what, rec, data, needles) in cases {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("model.pt");
        std::fs::write(&src, pt::nanochat(&[("extra.weight", rec, data)])).unwrap();
        let mut all = needles.clone();
        all.push("tensor extra.weight");
        let err = pack_refused(d.path(), &src, "model.pt", &all);
        eprintln!("{what}: {err}");
        let e = Checkpoint::open(&src).unwrap_err();
        assert_eq!(e.exit_code(), 2, "{what}: {e}");
    }
    // A name given twice.
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("model.pt");
    let mut p = pt::Pickle::state_dict();
    let r = Rec::f32("a", &[2]);
    p.tensor("w", &r);
    p.tensor("w", &r);
    std::fs::write(&src, pt::file(p.finish(), &[("a".into(), data8.clone())])).unwrap();
    pack_refused(d.path(), &src, "model.pt", &["tensor w", "appears twice"]);
    // The control: the same file without a bad tensor packs.
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("model.pt");
    std::fs::write(&src, pt::nanochat(&[])).unwrap();
    let out = common::run([
        "pack".as_ref(),
        src.as_os_str(),
        "--out".as_ref(),
        d.path().join("out").as_os_str(),
    ]);
    common::assert_ok(&out);
}

#[test]
fn deeply_nested_pickles_are_refused_without_overflowing_the_stack() {
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "200k nested tuples",
            std::iter::once(b')')
                .chain(std::iter::repeat_n(0x85u8, 200_000))
                .collect(),
            "nested more than 1000 levels deep",
        ),
        (
            "200k nested lists",
            std::iter::repeat_n(b']', 200_000)
                .chain(std::iter::repeat_n(b'a', 199_999))
                .collect(),
            "nested more than 1000 levels deep",
        ),
        (
            "200k nested MARK tuples",
            std::iter::repeat_n(b'(', 200_000)
                .chain(std::iter::repeat_n(b't', 200_000))
                .collect(),
            "more than 1000 MARKs",
        ),
        (
            "200k nested dicts",
            std::iter::repeat_n(*b"}X\x01\0\0\0k", 200_000)
                .flatten()
                .chain(std::iter::once(b'}'))
                .chain(std::iter::repeat_n(b's', 200_000))
                .collect(),
            "nested more than 1000 levels deep",
        ),
    ];
    for (what, value, needle) in cases {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("deep.pt");
        let mut p = pt::Pickle::state_dict();
        let r = pt::Rec::f32("a", &[2]);
        p.tensor("w", &r);
        p.raw("junk", &value);
        std::fs::write(
            &src,
            pt::file(p.finish(), &[("a".into(), pt::f32_bytes(2))]),
        )
        .unwrap();
        let err = pack_refused(d.path(), &src, "deep.pt", &["data.pkl", needle]);
        eprintln!("{what}: {err}");
    }
}

#[test]
fn pickle_lengths_are_checked_before_allocating() {
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "a string of 4 GiB",
            [&b"X"[..], &u32::MAX.to_le_bytes()].concat(),
            "BINUNICODE has length 4294967295",
        ),
        (
            "bytes of 2^32",
            [&[0x8eu8][..], &(1u64 << 32).to_le_bytes()].concat(),
            "BINBYTES8 has length 4294967296",
        ),
        (
            "a string of 2^32",
            [&[0x8du8][..], &(1u64 << 32).to_le_bytes()].concat(),
            "BINUNICODE8 has length 4294967296",
        ),
        (
            "a 2 GiB integer",
            [&[0x8bu8][..], &i32::MAX.to_le_bytes()].concat(),
            "LONG4 has length 2147483647",
        ),
    ];
    for (what, value, needle) in cases {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("long.pt");
        let mut p = pt::Pickle::state_dict();
        p.tensor("w", &pt::Rec::f32("a", &[2]));
        p.raw("junk", &value);
        std::fs::write(
            &src,
            pt::file(p.finish(), &[("a".into(), pt::f32_bytes(2))]),
        )
        .unwrap();
        let err = pack_refused(
            d.path(),
            &src,
            "long.pt",
            &["data.pkl", needle, "bytes left"],
        );
        eprintln!("{what}: {err}");
    }
}

/// Views PyTorch saves routinely are read exactly: a transposed weight, a row of a shared
/// storage, a scalar, an empty tensor, and the storage types candle's reader skipped.
#[test]
fn pytorch_views_and_storage_types_read_exactly() {
    use pt::Rec;
    let d = tempfile::tempdir().unwrap();
    let src = d.path().join("views.pt");
    let mut p = pt::Pickle::state_dict();
    let base: Vec<f32> = (0..6).map(|i| i as f32).collect();
    let base_bytes: Vec<u8> = base.iter().flat_map(|v| v.to_le_bytes()).collect();
    // [2, 3] row-major storage; its transpose [3, 2] has strides [1, 3].
    p.tensor("w", &Rec::f32("s", &[2, 3]));
    p.tensor(
        "w_t",
        &Rec {
            shape: vec![3, 2],
            stride: vec![1, 3],
            ..Rec::f32("s", &[2, 3])
        },
    );
    p.tensor(
        "row1",
        &Rec {
            offset: 3,
            shape: vec![3],
            stride: vec![1],
            ..Rec::f32("s", &[2, 3])
        },
    );
    p.tensor(
        "every_other",
        &Rec {
            offset: 1,
            shape: vec![3],
            stride: vec![2],
            ..Rec::f32("s", &[2, 3])
        },
    );
    p.tensor(
        "scalar",
        &Rec {
            offset: 5,
            shape: vec![],
            stride: vec![],
            ..Rec::f32("s", &[2, 3])
        },
    );
    let empty = Rec {
        storage_numel: 0,
        shape: vec![0, 4],
        stride: vec![4, 1],
        ..Rec::f32("e", &[0])
    };
    p.tensor("empty", &empty);
    p.tensor("flags", &Rec::f32("b", &[3]).with_storage("BoolStorage"));
    p.tensor("bytes", &Rec::f32("c", &[2]).with_storage("CharStorage"));
    p.tensor("ints", &Rec::f32("i", &[2]).with_storage("IntStorage"));
    let storages = vec![
        ("s".to_string(), base_bytes.clone()),
        ("e".to_string(), Vec::new()),
        ("b".to_string(), vec![1, 0, 1]),
        ("c".to_string(), vec![0xFF, 7]),
        (
            "i".to_string(),
            [-3i32, 9].iter().flat_map(|v| v.to_le_bytes()).collect(),
        ),
    ];
    std::fs::write(&src, pt::file(p.finish(), &storages)).unwrap();
    let ck = Checkpoint::open(&src).unwrap();
    let f = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    assert_eq!(ck.read_all("w").unwrap(), base_bytes);
    assert_eq!(ck.get("w_t").unwrap().shape, vec![3, 2]);
    assert_eq!(
        ck.read_all("w_t").unwrap(),
        f(&[0.0, 3.0, 1.0, 4.0, 2.0, 5.0])
    );
    let mut buf = Vec::new();
    ck.read_range("w_t", 8, 8, &mut buf).unwrap();
    assert_eq!(buf, f(&[1.0, 4.0]));
    assert_eq!(ck.read_all("row1").unwrap(), f(&[3.0, 4.0, 5.0]));
    assert_eq!(ck.read_all("every_other").unwrap(), f(&[1.0, 3.0, 5.0]));
    assert_eq!(ck.read_all("scalar").unwrap(), f(&[5.0]));
    assert_eq!(ck.get("empty").unwrap().shape, vec![0, 4]);
    assert!(ck.read_all("empty").unwrap().is_empty());
    assert_eq!(ck.get("flags").unwrap().dtype, Dtype::BOOL);
    assert_eq!(ck.read_all("flags").unwrap(), vec![1, 0, 1]);
    assert_eq!(ck.get("bytes").unwrap().dtype, Dtype::I8);
    assert_eq!(ck.read_all("bytes").unwrap(), vec![0xFF, 7]);
    assert_eq!(ck.get("ints").unwrap().dtype, Dtype::I32);
    assert_eq!(ck.len(), 9);
}

#[test]
fn pytorch_archives_that_are_not_state_dicts_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("x.pt");
    let data = pt::f32_bytes(2);
    let mut pk = pt::Pickle::state_dict();
    pk.tensor("w", &pt::Rec::f32("a", &[2]));
    let pickle = pk.finish();
    // Big-endian tensors.
    let z = pt::zip(&[
        ("archive/data.pkl".into(), pickle.clone()),
        ("archive/byteorder".into(), b"big".to_vec()),
        ("archive/data/a".into(), data.clone()),
    ]);
    std::fs::write(&p, z).unwrap();
    expect_err(&p, "x.pt", &["big", "little-endian"]);
    // A TorchScript archive.
    let z = pt::zip(&[
        ("archive/data.pkl".into(), pickle.clone()),
        ("archive/constants.pkl".into(), b"\x80\x02).".to_vec()),
        ("archive/data/a".into(), data.clone()),
    ]);
    std::fs::write(&p, z).unwrap();
    expect_err(&p, "x.pt", &["TorchScript"]);
    // No pickle, or two.
    std::fs::write(&p, pt::zip(&[("archive/data/a".into(), data.clone())])).unwrap();
    expect_err(&p, "x.pt", &["without data.pkl"]);
    let z = pt::zip(&[
        ("a/data.pkl".into(), pickle.clone()),
        ("b/data.pkl".into(), pickle.clone()),
    ]);
    std::fs::write(&p, z).unwrap();
    expect_err(&p, "x.pt", &["several pickles"]);
    // A pickle that is not a dict, and one whose CRC is wrong.
    std::fs::write(&p, pt::file(b"\x80\x02K\x05.".to_vec(), &[])).unwrap();
    expect_err(&p, "x.pt", &["an int, not a dict"]);
    let mut z = pt::file(pickle.clone(), &[("a".into(), data.clone())]);
    let at = z.windows(7).position(|w| w == b"storage").unwrap();
    z[at] = b'S';
    std::fs::write(&p, z).unwrap();
    expect_err(&p, "x.pt", &["CRC-32 mismatch"]);
    // A directory that claims more entries than it holds, and one beyond the file.
    let mut z = pt::file(pickle.clone(), &[("a".into(), data.clone())]);
    let n = z.len();
    z[n - 12..n - 10].copy_from_slice(&0xFFFFu16.to_le_bytes());
    std::fs::write(&p, &z).unwrap();
    expect_err(
        &p,
        "x.pt",
        &["cannot read the PyTorch checkpoint", "entries"],
    );
    let mut z = pt::file(pickle, &[("a".into(), data)]);
    let n = z.len();
    z[n - 6..n - 2].copy_from_slice(&0x7FFF_FFFFu32.to_le_bytes());
    std::fs::write(&p, &z).unwrap();
    expect_err(
        &p,
        "x.pt",
        &["cannot read the PyTorch checkpoint", "beyond"],
    );
}

#[test]
fn fifo_checkpoints_are_refused_without_blocking() {
    let d = tempfile::tempdir().unwrap();
    let ck = d.path().join("ck");
    std::fs::create_dir(&ck).unwrap();
    // Given directly.
    let fifo = ck.join("model.safetensors");
    common::mkfifo(&fifo);
    pack_refused(d.path(), &fifo, "model.safetensors", &["FIFO"]);
    // Found in a folder.
    pack_refused(d.path(), &ck, "model.safetensors", &["FIFO"]);
    // A shard named by an index.
    let d = tempfile::tempdir().unwrap();
    let ck = d.path().join("ck");
    std::fs::create_dir(&ck).unwrap();
    shard(&ck, "s1.safetensors", &["a"]);
    common::mkfifo(&ck.join("s2.safetensors"));
    index(&ck, &[("a", "s1.safetensors"), ("b", "s2.safetensors")]);
    pack_refused(d.path(), &ck, "s2.safetensors", &["FIFO"]);
    // The index itself.
    std::fs::remove_file(ck.join("model.safetensors.index.json")).unwrap();
    common::mkfifo(&ck.join("model.safetensors.index.json"));
    pack_refused(d.path(), &ck, "model.safetensors.index.json", &["FIFO"]);
}
