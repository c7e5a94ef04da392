//! Tampered packed folders: a real folder is packed from a fixture checkpoint, one thing in it
//! is changed (a number of the `l3` section, an offsets or scales tensor, the index, a file
//! replaced by a FIFO, a folder or a link), and then every consumer is run on it: `inspect
//! --check`, `forward`, `verify` and `unpack` under a memory and a time limit, and the library
//! (`PackedModel::open`, `serve::open_packed`). Each must refuse cleanly (exit 2, a message
//! naming the file and the field, no panic), write nothing and change no input. A check that
//! legitimately finds a mismatch (a hash) exits 1.

mod common;

use common::{assert_ok, assert_refused, fixture, mkfifo, run, snapshot, stderr, stdout};
use l3kit::formats::dtype::TableDtype;
use l3kit::formats::packed::PackedModel;
use l3kit::pack::{pack, PackOptions};
use l3kit::util::progress::Ui;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Output;

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// Paper dialect, f32 tables cut into several parts per layer.
    Paper,
    /// Paper dialect, int8 tables (with scales), several parts.
    PaperInt8,
    /// Nanochat dialect: tied bf16 table, add-lambda residual, lambdas tensor.
    Nano,
}

struct Case {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    packed: PathBuf,
    source: PathBuf,
    allocation: Option<PathBuf>,
    inputs: PathBuf,
}

fn case(kind: Kind) -> Case {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let packed = root.join("packed");
    let (source, allocation) = match kind {
        Kind::Nano => (fixture("checkpoints/nanochat"), None),
        _ => (
            fixture("checkpoints/paper/model.safetensors"),
            Some(fixture("checkpoints/paper/allocation.safetensors")),
        ),
    };
    let mut o = PackOptions::new(source.clone(), packed.clone());
    o.allocation = allocation.clone();
    if kind != Kind::Nano {
        o.max_shard_size = 100_000;
    }
    if kind == Kind::PaperInt8 {
        o.dtype = Some(TableDtype::Int8);
    }
    pack(&o, &Ui::quiet()).unwrap();
    let inputs = root.join("inputs.safetensors");
    let ids = [0u32, 1, 5, 511, 0, 200, 3];
    let hidden: Vec<f32> = (0..ids.len() * 32)
        .map(|i| ((i % 11) as f32 - 5.0) / 5.0)
        .collect();
    l3kit::verify::write_inputs(&inputs, &ids, &[("hidden".into(), hidden, 32)]).unwrap();
    Case {
        _tmp: tmp,
        root,
        packed,
        source,
        allocation,
        inputs,
    }
}

fn s(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

impl Case {
    fn config_path(&self) -> PathBuf {
        self.packed.join("config.json")
    }

    /// Change the `l3` section, and the index's hash of config.json with it (a careful
    /// attacker), so the check sees the contradiction rather than a hash mismatch.
    fn edit_l3(&self, f: impl FnOnce(&mut Value)) {
        let mut v: Value =
            serde_json::from_slice(&std::fs::read(self.config_path()).unwrap()).unwrap();
        f(&mut v["l3"]);
        std::fs::write(self.config_path(), serde_json::to_vec_pretty(&v).unwrap()).unwrap();
        self.rehash("config.json");
    }

    fn edit_index(&self, f: impl FnOnce(&mut Value)) {
        let p = self.packed.join("model.safetensors.index.json");
        let mut v: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        f(&mut v);
        std::fs::write(&p, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    }

    fn rehash(&self, file: &str) {
        let bytes = std::fs::read(self.packed.join(file)).unwrap();
        let hash = hex::encode(Sha256::digest(&bytes));
        self.edit_index(|v| v["metadata"]["sha256"][file] = json!(hash));
    }

    fn file_of(&self, tensor: &str) -> String {
        let p = self.packed.join("model.safetensors.index.json");
        let v: Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
        v["weight_map"][tensor].as_str().unwrap().to_string()
    }

    /// The absolute byte range of a tensor's data in its file.
    fn tensor_range(&self, tensor: &str) -> (String, usize, usize) {
        let file = self.file_of(tensor);
        let bytes = std::fs::read(self.packed.join(&file)).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        let off = &header[tensor]["data_offsets"];
        let (b, e) = (
            off[0].as_u64().unwrap() as usize,
            off[1].as_u64().unwrap() as usize,
        );
        (file, 8 + n + b, 8 + n + e)
    }

    /// Overwrite a tensor's data (same length) and re-hash its file.
    fn write_tensor(&self, tensor: &str, data: &[u8]) {
        let (file, b, e) = self.tensor_range(tensor);
        assert_eq!(data.len(), e - b, "{tensor}: same length");
        let path = self.packed.join(&file);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[b..e].copy_from_slice(data);
        std::fs::write(&path, bytes).unwrap();
        self.rehash(&file);
    }

    fn write_offsets(&self, tensor: &str, values: &[i64]) {
        let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.write_tensor(tensor, &data);
    }

    fn read_offsets(&self, tensor: &str) -> Vec<i64> {
        let (file, b, e) = self.tensor_range(tensor);
        std::fs::read(self.packed.join(file)).unwrap()[b..e]
            .chunks(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }

    /// Change a tensor's dtype in its header to another of the same size (the header keeps its
    /// length and layout), and re-hash the file.
    fn set_dtype(&self, tensor: &str, from: &str, to: &str) {
        assert_eq!(from.len(), to.len());
        let file = self.file_of(tensor);
        let path = self.packed.join(&file);
        let mut bytes = std::fs::read(&path).unwrap();
        let needle = format!("\"{tensor}\":{{\"dtype\":\"{from}\"");
        let with = format!("\"{tensor}\":{{\"dtype\":\"{to}\"");
        let at = bytes
            .windows(needle.len())
            .position(|w| w == needle.as_bytes())
            .unwrap_or_else(|| panic!("{needle} in {file}"));
        bytes[at..at + with.len()].copy_from_slice(with.as_bytes());
        std::fs::write(&path, bytes).unwrap();
        self.rehash(&file);
    }

    fn check(&self) -> Output {
        run(["inspect", "--check", &s(&self.packed)])
    }

    fn forward(&self, extra: &[&str]) -> Output {
        let out = s(&self.root.join("out.safetensors"));
        let mut args = vec![
            "forward".to_string(),
            "--model".into(),
            s(&self.packed),
            "--inputs".into(),
            s(&self.inputs),
            "--out".into(),
            out,
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        run(args)
    }

    fn verify(&self, extra: &[&str]) -> Output {
        let mut args = vec![
            "verify".to_string(),
            "--source".into(),
            s(&self.source),
            "--packed".into(),
            s(&self.packed),
        ];
        if !extra.iter().any(|a| a.starts_with("--tokens")) {
            args.extend(["--tokens".to_string(), "64".into()]);
        }
        if let Some(a) = &self.allocation {
            args.extend(["--allocation".to_string(), s(a)]);
        }
        args.extend(extra.iter().map(|a| a.to_string()));
        run(args)
    }

    fn unpack(&self, extra: &[&str]) -> Output {
        let mut args = vec![
            "unpack".to_string(),
            s(&self.packed),
            "--out".into(),
            s(&self.root.join("unpacked")),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        run(args)
    }

    /// Every consumer refuses the folder: exit 2 with every needle in its message, no panic,
    /// nothing written, no input changed; the library refuses it too.
    #[track_caller]
    fn refused_everywhere(&self, needles: &[&str]) {
        let before = snapshot(&self.root);
        for (what, o) in [
            ("inspect --check", self.check()),
            ("forward", self.forward(&[])),
            ("verify", self.verify(&[])),
            ("unpack", self.unpack(&[])),
        ] {
            let err = stderr(&o);
            assert_eq!(
                o.status.code(),
                Some(2),
                "{what}: expected exit 2\nstdout:\n{}\nstderr:\n{err}",
                stdout(&o)
            );
            for n in needles {
                assert!(err.contains(n), "{what}: stderr lacks {n:?}:\n{err}");
            }
            assert_refused(&o, 2, needles);
        }
        assert_eq!(
            snapshot(&self.root),
            before,
            "a refused run left files or changed inputs"
        );
        let e = PackedModel::open(&self.packed)
            .err()
            .expect("the reader refuses it");
        for n in needles {
            assert!(
                e.to_string().contains(n),
                "PackedModel::open: {e} lacks {n:?}"
            );
        }
        assert!(l3kit::serve::open_packed(&self.packed).is_err());
    }
}

#[test]
fn pristine_folders_pass_everything_and_forward_rehashes_them() {
    for kind in [Kind::Paper, Kind::PaperInt8, Kind::Nano] {
        let c = case(kind);
        assert_ok(&c.check());
        let r: Value = serde_json::from_str(&assert_ok(&c.forward(&["--json"]))).unwrap();
        let files = std::fs::read_dir(&c.packed).unwrap().count() as u64;
        assert_eq!(
            r["files_hashed"],
            json!(files - 1),
            "every file but the index: {r}"
        );
        assert_ok(&c.verify(&[]));
        assert_ok(&c.unpack(&[]));
    }
}

// ---- the l3 section contradicts the tensors ----

#[test]
fn zero_sizes_are_refused() {
    for (field, kind) in [
        ("d_emb", Kind::Paper),
        ("d_up", Kind::Paper),
        ("d_in", Kind::Nano),
    ] {
        let c = case(kind);
        c.edit_l3(|l3| l3["layers"][0][field] = json!(0));
        c.refused_everywhere(&["config.json", &format!(".{field}: is 0")]);
    }
    let c = case(Kind::Paper);
    c.edit_l3(|l3| l3["k_max"] = json!(0));
    c.refused_everywhere(&["config.json", "l3.k_max: is 0"]);
    let c = case(Kind::Paper);
    c.edit_l3(|l3| l3["vocab_size"] = json!(0));
    c.refused_everywhere(&["config.json", "l3.vocab_size"]);
}

#[test]
fn tied_on_untied_rows_and_a_wrong_row_width_are_refused() {
    let c = case(Kind::Paper);
    c.edit_l3(|l3| l3["semantics"]["tied"] = json!(true));
    c.refused_everywhere(&["config.json", "l3.layers[0] (l3.1).d_emb", "tied"]);
    // Tied with a consistent d_emb: the rows are still 48 wide, not 32.
    let c = case(Kind::Paper);
    c.edit_l3(|l3| {
        l3["semantics"]["tied"] = json!(true);
        for l in l3["layers"].as_array_mut().unwrap() {
            l["d_emb"] = json!(32);
        }
    });
    c.refused_everywhere(&["config.json", "row_width", "tied"]);
    let c = case(Kind::Paper);
    c.edit_l3(|l3| l3["layers"][1]["row_width"] = json!(47));
    c.refused_everywhere(&["config.json", "l3.layers[1] (l3.3).row_width: is 47"]);
    // Untied on a tied table: values would be read past each row.
    let c = case(Kind::Nano);
    c.edit_l3(|l3| l3["semantics"]["tied"] = json!(false));
    c.refused_everywhere(&["config.json", "row_width"]);
}

#[test]
fn parameters_naming_other_tensors_are_refused() {
    // Another layer's w_up (same shape): two layers may not share a parameter.
    let c = case(Kind::Paper);
    c.edit_l3(|l3| l3["layers"][0]["params"]["w_up"] = json!("l3.3.w_up.weight"));
    c.refused_everywhere(&["config.json", "params.w_up", "l3.3.w_up.weight"]);
    // A tensor of another shape.
    let c = case(Kind::Paper);
    c.edit_l3(|l3| l3["layers"][0]["params"]["w_up"] = json!("lm_head.weight"));
    c.refused_everywhere(&["lm_head.weight", "params.w_up", "[64, 16]"]);
    // A table tensor.
    let c = case(Kind::Paper);
    c.edit_l3(|l3| l3["layers"][0]["params"]["w_mix"] = json!("l3.1.packed_rows.0"));
    c.refused_everywhere(&["config.json", "params.w_mix", "l3.1.packed_rows.0"]);
    // A tensor that does not exist.
    let c = case(Kind::Paper);
    c.edit_l3(|l3| l3["layers"][1]["params"]["norm_out"] = json!("nowhere.weight"));
    c.refused_everywhere(&["config.json", "params.norm_out", "nowhere.weight"]);
    // Norm weights the semantics promise but the config does not name.
    let c = case(Kind::Paper);
    c.edit_l3(|l3| l3["layers"][0]["params"]["norm_in"] = Value::Null);
    c.refused_everywhere(&["config.json", "params.norm_in", "norm_weights"]);
}

#[test]
fn duplicate_layers_and_shared_parts_are_refused() {
    let c = case(Kind::Paper);
    c.edit_l3(|l3| l3["layers"][1]["name"] = json!("l3.1"));
    c.refused_everywhere(&["config.json", "l3.layers[1].name", "l3.layers[0]"]);
    // The second layer claims the first one's parts.
    let c = case(Kind::Paper);
    c.edit_l3(|l3| {
        let parts = l3["layers"][0]["parts"].clone();
        l3["layers"][1]["parts"] = parts;
    });
    c.refused_everywhere(&["config.json", "l3.layers[1] (l3.3).parts[0]", "names too"]);
    // Two parts of one layer in one file.
    let c = case(Kind::Paper);
    c.edit_l3(|l3| {
        let f = l3["layers"][0]["parts"][0]["file"].clone();
        l3["layers"][0]["parts"][1]["file"] = f;
    });
    c.refused_everywhere(&["config.json", "l3.layers[0] (l3.1).parts[1]"]);
    // The whole layer listed twice under another name.
    let c = case(Kind::Paper);
    c.edit_l3(|l3| {
        let mut copy = l3["layers"][0].clone();
        copy["name"] = json!("l3.9");
        l3["layers"].as_array_mut().unwrap().push(copy);
    });
    c.refused_everywhere(&["config.json", "l3.layers[2] (l3.9)", "names too"]);
}

#[test]
fn lambdas_must_exist_and_agree() {
    let c = case(Kind::Nano);
    c.edit_l3(|l3| l3["layers"][0]["lambda"] = Value::Null);
    c.refused_everywhere(&[
        "config.json",
        "l3.layers[0] (l3_layers.1).lambda",
        "add_lambda",
    ]);
    let c = case(Kind::Nano);
    c.edit_l3(|l3| {
        l3["layers"][1]["lambda"] = Value::Null;
        l3["layers"][1]["params"]["lambda"] = Value::Null;
    });
    c.refused_everywhere(&[
        "config.json",
        "l3.layers[1] (l3_layers.3).lambda",
        "add_lambda",
    ]);
    // The unscaled residual with a lambda recorded: which of the two was trained?
    let c = case(Kind::Nano);
    c.edit_l3(|l3| l3["semantics"]["residual"] = json!("add"));
    c.refused_everywhere(&[
        "config.json",
        "l3.layers[0] (l3_layers.1).lambda",
        "residual is add",
    ]);
    // A value the tensor does not hold.
    let c = case(Kind::Nano);
    c.edit_l3(|l3| l3["layers"][0]["lambda"] = json!(0.5));
    c.refused_everywhere(&["config.json", ".lambda: is 0.5", "l3_lambdas[0]"]);
    // An index beyond the tensor, and two layers on one element.
    let c = case(Kind::Nano);
    c.edit_l3(|l3| l3["layers"][1]["params"]["lambda"] = json!(["l3_lambdas", 7]));
    c.refused_everywhere(&["params.lambda", "index 7"]);
    let c = case(Kind::Nano);
    c.edit_l3(|l3| {
        l3["layers"][1]["params"]["lambda"] = json!(["l3_lambdas", 0]);
        l3["layers"][1]["lambda"] = l3["layers"][0]["lambda"].clone();
    });
    c.refused_everywhere(&["params.lambda", "l3_lambdas[0]", "names too"]);
}

#[test]
fn unknown_dialects_empty_layers_and_bad_semantics_are_refused() {
    let c = case(Kind::Paper);
    c.edit_l3(|l3| l3["dialect"] = json!("gpt5"));
    c.refused_everywhere(&["config.json", "l3.dialect", "unknown dialect \"gpt5\""]);
    let c = case(Kind::Paper);
    c.edit_l3(|l3| l3["layers"] = json!([]));
    c.refused_everywhere(&["config.json", "l3.layers: is empty"]);
    let c = case(Kind::Paper);
    c.edit_l3(|l3| l3["semantics"]["norm_eps"] = json!(-1.0));
    c.refused_everywhere(&["config.json", "l3.semantics.norm_eps"]);
    let c = case(Kind::Paper);
    c.edit_l3(|l3| l3["semantics"]["residual"] = json!("multiply"));
    c.refused_everywhere(&["config.json", "l3.semantics", "multiply"]);
    let c = case(Kind::Paper);
    c.edit_l3(|l3| l3["format_version"] = json!(2));
    c.refused_everywhere(&["config.json", "version 2"]);
    let c = case(Kind::Paper);
    c.edit_l3(|l3| l3["layers"][0]["source"]["dtype"] = json!("I32"));
    c.refused_everywhere(&["config.json", "source.dtype", "I32"]);
    let c = case(Kind::Paper);
    c.edit_l3(|l3| l3["layers"][0]["source"]["keys"] = json!("lm_head.weight"));
    c.refused_everywhere(&["config.json", "source.keys", "unpack would write it twice"]);
    let c = case(Kind::Paper);
    c.edit_l3(|l3| l3["allocation"]["max_rows"] = json!(3));
    c.refused_everywhere(&["config.json", "l3.allocation.max_rows"]);
    // A field of the wrong type is pinned to its layer and part.
    let c = case(Kind::Paper);
    c.edit_l3(|l3| l3["layers"][1]["parts"][2]["row_end"] = json!(-5));
    c.refused_everywhere(&["config.json", "l3.layers[1].parts[2]", "-5"]);
}

#[test]
fn absurd_sizes_are_refused_before_allocating() {
    // Each would make a reader that trusts the config allocate terabytes.
    let c = case(Kind::Paper);
    c.edit_l3(|l3| l3["vocab_size"] = json!(1u64 << 40));
    c.refused_everywhere(&["config.json", "l3.vocab_size", "1099511627776"]);
    // A cap below the blocks the offsets give.
    let c = case(Kind::Paper);
    c.edit_l3(|l3| l3["k_max"] = json!(8));
    c.refused_everywhere(&["config.json", "k_max 8"]);
    let c = case(Kind::Paper);
    c.edit_l3(|l3| l3["vocab_size"] = json!(u32::MAX));
    c.refused_everywhere(&["config.json", "vocab_size"]);
    let c = case(Kind::Paper);
    c.edit_l3(|l3| l3["layers"][0]["d_in"] = json!(1u64 << 31));
    c.refused_everywhere(&["config.json", "l3.layers[0] (l3.1)", "2147483648"]);
    let c = case(Kind::Nano);
    c.edit_l3(|l3| {
        l3["layers"][0]["d_in"] = json!(1u64 << 31);
        l3["layers"][0]["d_emb"] = json!(1u64 << 31);
        l3["layers"][0]["row_width"] = json!(1u64 << 31);
    });
    c.refused_everywhere(&["l3_layers.1.packed_rows.0", "2147483648"]);
    let c = case(Kind::Paper);
    c.edit_l3(|l3| l3["layers"][0]["d_emb"] = json!(u64::MAX));
    c.refused_everywhere(&["config.json", "l3.layers[0] (l3.1).row_width"]);
    let c = case(Kind::Paper);
    c.edit_l3(|l3| l3["layers"][0]["n_emb"] = json!(1u64 << 40));
    c.refused_everywhere(&["config.json", "l3.layers[0] (l3.1).n_emb"]);
    let c = case(Kind::Paper);
    c.edit_l3(|l3| {
        let last = l3["layers"][0]["parts"].as_array().unwrap().len() - 1;
        l3["layers"][0]["parts"][last]["row_end"] = json!(1u64 << 40);
    });
    c.refused_everywhere(&["config.json", "row_end"]);
}

#[test]
fn part_ranges_must_tile_the_table() {
    let c = case(Kind::Paper);
    c.edit_l3(|l3| {
        let p = &mut l3["layers"][0]["parts"][1];
        p["token_start"] = json!(p["token_start"].as_u64().unwrap() + 1);
    });
    c.refused_everywhere(&["config.json", "l3.layers[0] (l3.1).parts[1]", "contiguous"]);
    let c = case(Kind::Paper);
    c.edit_l3(|l3| {
        let parts = l3["layers"][0]["parts"].as_array_mut().unwrap();
        parts.pop();
    });
    c.refused_everywhere(&["config.json", "l3.layers[0] (l3.1).parts", "end at token"]);
    let c = case(Kind::Paper);
    c.edit_l3(|l3| l3["layers"][0]["parts"] = json!([]));
    c.refused_everywhere(&["config.json", "parts: is empty"]);
    let c = case(Kind::Paper);
    c.edit_l3(|l3| l3["layers"][0]["parts"][0]["row_end"] = json!(10));
    c.refused_everywhere(&["config.json", "l3.layers[0] (l3.1).parts[0]"]);
}

// ---- tampered offsets and scales ----

#[test]
fn tampered_offsets_are_refused() {
    let name = "l3.1.packed_offsets.0";
    let c = case(Kind::Paper);
    let good = c.read_offsets(name);
    let file = c.file_of(name);
    // All zeros: every token would own no rows (and silently read token 0's).
    c.write_offsets(name, &vec![0; good.len()]);
    c.refused_everywhere(&[&file, name, "offsets", "owns 1 to k_max"]);
    // An entry of 2^40.
    let c = case(Kind::Paper);
    let mut bad = good.clone();
    bad[3] = 1 << 40;
    c.write_offsets(name, &bad);
    c.refused_everywhere(&[&file, name, "k_max"]);
    // Decreasing, negative, and ending short.
    for (i, v) in [
        (2, good[1] - 1),
        (1, -1),
        (good.len() - 1, good[good.len() - 1] - 1),
    ] {
        let c = case(Kind::Paper);
        let mut bad = good.clone();
        bad[i] = v;
        c.write_offsets(name, &bad);
        c.refused_everywhere(&[&file, name]);
    }
    // Not starting at the part's first row.
    let c = case(Kind::Paper);
    let second = "l3.1.packed_offsets.1";
    let mut bad = c.read_offsets(second);
    bad[0] += 1;
    c.write_offsets(second, &bad);
    c.refused_everywhere(&[second, "starts at"]);
    // An offsets tensor of the wrong dtype.
    let c = case(Kind::Paper);
    c.set_dtype(name, "I64", "U64");
    c.refused_everywhere(&[name, "I64"]);
}

#[test]
fn tampered_scales_are_refused() {
    let c = case(Kind::PaperInt8);
    c.edit_l3(|l3| l3["layers"][0]["parts"][0]["scales"] = Value::Null);
    c.refused_everywhere(&["config.json", "l3.layers[0] (l3.1).parts[0].scales", "int8"]);
    let c = case(Kind::PaperInt8);
    c.set_dtype("l3.1.packed_scales.0", "F32", "I32");
    c.refused_everywhere(&["l3.1.packed_scales.0", "F32"]);
    // Scales on a float table.
    let c = case(Kind::Paper);
    c.edit_l3(|l3| l3["layers"][0]["parts"][0]["scales"] = json!("l3.1.packed_rows.0"));
    c.refused_everywhere(&["config.json", "scales"]);
    // The config says f32 but the rows are int8.
    let c = case(Kind::PaperInt8);
    c.edit_l3(|l3| l3["dtype"] = json!("f32"));
    c.refused_everywhere(&["config.json", "scales"]);
}

#[test]
fn wrong_dtypes_are_refused_at_the_edge() {
    // Item 11: lambdas stored as integers used to panic in the conversion.
    let c = case(Kind::Nano);
    c.set_dtype("l3_lambdas", "F32", "I32");
    c.refused_everywhere(&["l3_lambdas", "I32"]);
    // Dense weights as integers.
    let c = case(Kind::Paper);
    c.set_dtype("l3.1.w_up.weight", "F32", "I32");
    c.refused_everywhere(&["l3.1.w_up.weight", "I32", "params.w_up"]);
    // Rows of another dtype than the config's.
    let c = case(Kind::Paper);
    c.set_dtype("l3.3.packed_rows.0", "F32", "I32");
    c.refused_everywhere(&["l3.3.packed_rows.0", "I32"]);
}

#[test]
fn integer_lambdas_in_a_source_checkpoint_are_an_error_not_a_panic() {
    // The source side of item 11: `forward` and `verify` on a checkpoint whose lambdas are
    // I32 used to panic in the conversion (`decode_f32 called with non-float dtype`).
    let c = case(Kind::Nano);
    let src_dir = c.root.join("int-lambdas");
    std::fs::create_dir(&src_dir).unwrap();
    let mut bytes = std::fs::read(fixture("checkpoints/nanochat/model.safetensors")).unwrap();
    let (from, to) = (
        br#""l3_lambdas":{"dtype":"F32""#.as_slice(),
        br#""l3_lambdas":{"dtype":"I32""#.as_slice(),
    );
    let at = bytes.windows(from.len()).position(|w| w == from).unwrap();
    bytes[at..at + to.len()].copy_from_slice(to);
    std::fs::write(src_dir.join("model.safetensors"), bytes).unwrap();
    let out = c.root.join("out.safetensors");
    let before = snapshot(&c.root);
    let o = run([
        "forward",
        "--model",
        &s(&src_dir),
        "--inputs",
        &s(&c.inputs),
        "--out",
        &s(&out),
    ]);
    assert_refused(&o, 2, &["l3_lambdas", "I32", "int-lambdas"]);
    let o = run([
        "verify",
        "--source",
        &s(&src_dir),
        "--packed",
        &s(&c.packed),
    ]);
    assert_refused(&o, 2, &["l3_lambdas", "I32"]);
    assert_eq!(snapshot(&c.root), before);
    // The dense-weight loader checks dtypes itself too, whatever the reader in front of it.
    let ckpt = l3kit::Checkpoint::open(&src_dir.join("model.safetensors")).unwrap();
    let e = l3kit::model::var_builder(&ckpt, &["l3_lambdas"], &candle_core::Device::Cpu)
        .err()
        .expect("integers are refused");
    assert!(
        e.to_string().contains("tensor l3_lambdas has dtype I32"),
        "{e}"
    );
}

// ---- the index and the files ----

#[test]
fn a_tampered_index_is_refused() {
    let c = case(Kind::Paper);
    c.edit_index(|v| v["weight_map"]["lm_head.weight"] = json!("model-99999-of-00003.safetensors"));
    c.refused_everywhere(&["model.safetensors.index.json", "model-99999-of-00003"]);
    let c = case(Kind::Paper);
    c.edit_index(|v| v["weight_map"]["l3.9.extra"] = json!("model-99999-of-00003.safetensors"));
    c.refused_everywhere(&["model-99999-of-00003", "does not exist"]);
    let c = case(Kind::Paper);
    c.edit_index(|v| v["weight_map"]["lm_head.weight"] = json!("../outside.safetensors"));
    c.refused_everywhere(&["model.safetensors.index.json", "'..'"]);
    let c = case(Kind::Paper);
    c.edit_index(|v| v["metadata"]["sha256"]["../../etc/passwd"] = json!("0".repeat(64)));
    c.refused_everywhere(&["model.safetensors.index.json", "metadata.sha256", "'..'"]);
    let c = case(Kind::Paper);
    c.edit_index(|v| v["metadata"]["sha256"]["config.json"] = json!("not-a-hash"));
    c.refused_everywhere(&["model.safetensors.index.json", "64 lowercase hex"]);
    let c = case(Kind::Paper);
    c.edit_index(|v| v["metadata"]["format_version"] = json!(7));
    c.refused_everywhere(&["model.safetensors.index.json", "format_version is 7"]);
}

#[test]
fn special_files_are_named_for_what_they_are() {
    // A shard that is a FIFO (which must not block), a folder, or config.json as a FIFO.
    for (victim, what) in [
        ("lm_head.weight", "FIFO"),
        ("l3.3.packed_rows.1", "directory"),
        ("config.json", "FIFO"),
    ] {
        let c = case(Kind::Paper);
        let victim = if victim.ends_with(".json") {
            victim.to_string()
        } else {
            c.file_of(victim)
        };
        let victim = victim.as_str();
        let p = c.packed.join(victim);
        assert!(p.is_file(), "{victim} exists in the pristine folder");
        std::fs::remove_file(&p).unwrap();
        if what == "FIFO" {
            mkfifo(&p);
        } else {
            std::fs::create_dir(&p).unwrap();
        }
        c.refused_everywhere(&[victim, what]);
        for o in [c.check(), c.forward(&[]), c.unpack(&[])] {
            assert!(!stderr(&o).contains("no such file"), "{}", stderr(&o));
        }
    }
}

#[test]
fn inputs_and_profiles_that_are_fifos_do_not_hang() {
    let c = case(Kind::Paper);
    let fifo = c.root.join("fifo.safetensors");
    mkfifo(&fifo);
    let o = run([
        "forward",
        "--model",
        &s(&c.packed),
        "--inputs",
        &s(&fifo),
        "--out",
        &s(&c.root.join("out.safetensors")),
    ]);
    assert_refused(&o, 2, &["fifo.safetensors", "FIFO"]);
    assert_refused(
        &c.verify(&["--inputs", &s(&fifo)]),
        2,
        &["fifo.safetensors", "FIFO"],
    );
    assert_refused(
        &c.verify(&["--profile", &s(&fifo)]),
        2,
        &["fifo.safetensors", "FIFO"],
    );
}

#[test]
fn oversized_small_files_are_refused() {
    let c = case(Kind::Paper);
    let mut text = std::fs::read(c.config_path()).unwrap();
    text.extend(std::iter::repeat_n(b' ', 17 << 20));
    std::fs::write(c.config_path(), text).unwrap();
    c.rehash("config.json");
    c.refused_everywhere(&["config.json", "limit"]);
    // Nesting deeper than the JSON parser follows.
    let c = case(Kind::Paper);
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    std::fs::write(c.config_path(), deep).unwrap();
    c.rehash("config.json");
    c.refused_everywhere(&["config.json", "JSON"]);
}

#[test]
fn links_out_of_the_folder_are_refused() {
    // A stray link to a system file, listed nowhere.
    let c = case(Kind::Paper);
    std::os::unix::fs::symlink("/etc/passwd", c.packed.join("passwd.txt")).unwrap();
    let o = c.check();
    assert_refused(&o, 2, &["passwd.txt", "/etc/passwd", "outside the folder"]);
    // A shard replaced by a link to a copy outside the folder.
    let c = case(Kind::Paper);
    let victim = c.file_of("lm_head.weight");
    let shard = c.packed.join(&victim);
    let outside = c.root.join("elsewhere.safetensors");
    std::fs::rename(&shard, &outside).unwrap();
    std::os::unix::fs::symlink(&outside, &shard).unwrap();
    c.refused_everywhere(&[&victim, "outside the folder"]);
    // A companion listed in the index that leads out.
    let c = case(Kind::Paper);
    std::os::unix::fs::symlink("/etc/passwd", c.packed.join("tokenizer.json")).unwrap();
    let before = snapshot(&c.root);
    assert_refused(&c.check(), 2, &["tokenizer.json", "outside the folder"]);
    assert_refused(
        &c.unpack(&["--no-check"]),
        2,
        &["tokenizer.json", "outside"],
    );
    assert_eq!(snapshot(&c.root), before, "nothing unpacked");
    // Links that stay inside are fine.
    let c = case(Kind::Paper);
    std::os::unix::fs::symlink("config.json", c.packed.join("config-link.json")).unwrap();
    std::fs::create_dir(c.packed.join("sub")).unwrap();
    std::os::unix::fs::symlink(
        "../model.safetensors.index.json",
        c.packed.join("sub/i.json"),
    )
    .unwrap();
    assert_ok(&c.check());
}

// ---- hashes: a check that finds a mismatch, and --no-check ----

#[test]
fn hash_mismatches_exit_1_in_the_check_and_stop_forward_and_unpack() {
    let c = case(Kind::Paper);
    // Flip a byte inside a table's rows (the structure stays valid).
    let (file, b, _) = c.tensor_range("l3.1.packed_rows.0");
    let path = c.packed.join(&file);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[b + 100] ^= 0x40;
    std::fs::write(&path, bytes).unwrap();
    let o = c.check();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stdout(&o).contains(&file) && stdout(&o).contains("SHA-256 mismatch"));
    let before = snapshot(&c.root);
    for o in [c.forward(&[]), c.unpack(&[]), c.verify(&[])] {
        assert_refused(&o, 2, &[&file, "SHA-256 mismatch"]);
    }
    assert_eq!(snapshot(&c.root), before);
    // --no-check trusts the bytes, and says so.
    let o = c.forward(&["--no-check"]);
    assert!(assert_ok(&o).contains("hashes not checked (--no-check)"));
    let o = c.unpack(&["--no-check"]);
    assert!(assert_ok(&o).contains("hashes not checked"));
}

#[test]
fn a_mismatch_that_breaks_the_structure_is_reported_as_the_mismatch() {
    // Offsets changed without re-hashing: the hash is the finding (exit 1), the structure
    // error its consequence.
    let c = case(Kind::Paper);
    let name = "l3.1.packed_offsets.0";
    let (file, b, _) = c.tensor_range(name);
    let path = c.packed.join(&file);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[b + 8 * 3 + 5] ^= 0x10;
    std::fs::write(&path, bytes).unwrap();
    let o = c.check();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stdout(&o).contains("SHA-256 mismatch") && stdout(&o).contains(name));
    assert_refused(&c.forward(&[]), 2, &[&file, "SHA-256 mismatch", name]);
    // With --no-check the structure error alone refuses it.
    assert_refused(&c.forward(&["--no-check"]), 2, &[&file, name]);
}

// ---- outputs that are inputs ----

#[test]
fn outputs_may_not_overwrite_inputs() {
    let c = case(Kind::Paper);
    let before = snapshot(&c.root);
    let o = run([
        "forward",
        "--model",
        &s(&c.packed),
        "--inputs",
        &s(&c.inputs),
        "--out",
        &s(&c.inputs),
    ]);
    assert_refused(&o, 2, &["--out", "is the input"]);
    let o = run([
        "forward",
        "--model",
        &s(&c.packed),
        "--inputs",
        &s(&c.inputs),
        "--out",
        &s(&c.packed.join(c.file_of("lm_head.weight"))),
    ]);
    assert_refused(&o, 2, &["--out", "is inside the input"]);
    let o = run(["unpack", &s(&c.packed), "--force", "--out", &s(&c.packed)]);
    assert_refused(&o, 2, &["--out", "is the input"]);
    let o = run(["unpack", &s(&c.packed), "--out", &s(&c.packed.join("sub"))]);
    assert_refused(&o, 2, &["--out", "is inside the input"]);
    assert_eq!(snapshot(&c.root), before);
}

// ---- messages ----

#[test]
fn bad_token_ids_are_reported_as_given() {
    use l3kit::util::safetensors_file::{write_file, TensorBytes};
    let c = case(Kind::Paper);
    for (v, shown) in [
        (-1i64, "-1"),
        (1 << 40, "1099511627776"),
        (i64::MIN, "-9223372036854775808"),
    ] {
        let ids = [3i64, 4, v, 5];
        let hidden: Vec<u8> = vec![0u8; 4 * 32 * 4];
        write_file(
            &c.inputs,
            &[
                TensorBytes::i64s("token_ids", &ids),
                TensorBytes {
                    name: "hidden".into(),
                    dtype: safetensors::Dtype::F32,
                    shape: vec![4, 32],
                    data: hidden.into(),
                },
            ],
            &Default::default(),
            8,
        )
        .unwrap();
        let o = c.forward(&[]);
        assert_refused(&o, 2, &["inputs.safetensors", "token_ids[2]", shown]);
        assert!(!stderr(&o).contains("4294967295"), "{}", stderr(&o));
        let o = c.verify(&["--inputs", &s(&c.inputs)]);
        assert_refused(&o, 2, &["inputs.safetensors", "token_ids[2]", shown]);
    }
    // In range for 32 bits but not for the vocabulary: the value and where it is.
    l3kit::verify::write_inputs(
        &c.inputs,
        &[1, 700],
        &[("hidden".into(), vec![0.5; 64], 32)],
    )
    .unwrap();
    assert_refused(
        &c.forward(&[]),
        2,
        &["inputs.safetensors", "token id 700", "position 1"],
    );
}

#[test]
fn verify_flags_are_checked_and_named() {
    let c = case(Kind::Paper);
    for (flag, value, needle) in [
        ("--tolerance", "nan", "--tolerance NaN"),
        ("--tolerance=-1", "", "--tolerance -1"),
        ("--tolerance", "inf", "--tolerance inf"),
        ("--tokens", "0", "--tokens 0"),
        ("--tokens", "100000000", "--tokens 100000000"),
        // Under the hard limit, but beyond what verify lets random inputs take.
        ("--tokens", "5000000", "about"),
        // Not a count at all: clap's usage error.
        ("--tokens", "1e10", "--tokens"),
    ] {
        let args: Vec<&str> = [flag, value]
            .into_iter()
            .filter(|a| !a.is_empty())
            .collect();
        let o = c.verify(&args);
        assert_refused(&o, 2, &[needle]);
    }
}

#[test]
fn verify_names_the_profile_its_tokens_come_from() {
    use l3kit::Profile;
    let c = case(Kind::Paper);
    // A profile of another vocabulary.
    let ids: Vec<u8> = (0..400u16).flat_map(|i| (i % 500).to_le_bytes()).collect();
    let ids_path = c.root.join("ids.u16");
    std::fs::write(&ids_path, ids).unwrap();
    let other = c.root.join("other.safetensors");
    let o = run([
        "profile",
        "--vocab-size",
        "600",
        "--seq-len",
        "8",
        &s(&ids_path),
        "--out",
        &s(&other),
    ]);
    assert_ok(&o);
    assert_refused(
        &c.verify(&["--profile", &s(&other)]),
        2,
        &["other.safetensors", "600"],
    );
    // A profile with no counts: no token can be drawn from it.
    let right = c.root.join("right.safetensors");
    let o = run([
        "profile",
        "--vocab-size",
        "512",
        "--seq-len",
        "8",
        &s(&ids_path),
        "--out",
        &s(&right),
    ]);
    assert_ok(&o);
    assert_ok(&c.verify(&["--profile", &s(&right)]));
    let mut p = Profile::read(&right).unwrap();
    p.unigram = vec![0; 512];
    p.meta.tokens = 0;
    (p.meta.phrases, p.meta.phrase_tokens) = (0, 0);
    // Only the single tokens, never seen.
    p.codewords.parents.truncate(512);
    p.codewords.tokens.truncate(512);
    p.codewords.counts = vec![0; 512];
    p.content_sha256 = l3kit::formats::profile::content_hash(&p.unigram, &p.codewords);
    let zero = c.root.join("zero.safetensors");
    p.write(&zero).unwrap();
    let o = c.verify(&["--profile", &s(&zero)]);
    assert_refused(&o, 2, &["zero.safetensors", "unigram count"]);
}

#[test]
fn verify_reports_devices_and_exact_agreement_plainly() {
    let c = case(Kind::Paper);
    let o = c.verify(&[]);
    let out = assert_ok(&o);
    assert!(out.contains("device cpu"), "{out}");
    assert!(
        !out.contains("worst token"),
        "no worst token when nothing differs: {out}"
    );
    let o = c.verify(&["--json"]);
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["device"], "cpu");
    for l in r["layers"].as_array().unwrap() {
        assert_eq!(l["relative_l2_error"], 0.0);
        assert!(
            l["worst_token"].is_null() && l["worst_position"].is_null(),
            "{l}"
        );
        assert_eq!(l["measured"], "output");
        assert!(l["after_residual"].is_null());
    }
    let o = c.forward(&["--json"]);
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["device"], "cpu");
    assert!(r["files_hashed"].as_u64().unwrap() > 10);
}

#[test]
fn verify_compares_nonfinite_values_position_by_position() {
    let tmp = tempfile::tempdir().unwrap();
    let src = fixture("checkpoints/nonfinite");
    let packed = tmp.path().join("packed");
    let mut o = PackOptions::new(src.clone(), packed.clone());
    o.allow_nonfinite = true;
    pack(&o, &Ui::quiet()).unwrap();
    let o = run([
        "verify",
        "--source",
        &s(&src),
        "--packed",
        &s(&packed),
        "--json",
    ]);
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(o.status.code(), Some(0), "{r}\n{}", stderr(&o));
    let l = &r["layers"][0];
    assert!(l["nonfinite_source"].as_u64().unwrap() > 0, "{l}");
    assert_eq!(l["nonfinite_source"], l["nonfinite_packed"]);
    assert_eq!(l["nonfinite_mismatches"], 0);
    assert_eq!(l["relative_l2_error"], 0.0);
    let o = run(["verify", "--source", &s(&src), "--packed", &s(&packed)]);
    let out = assert_ok(&o);
    assert!(
        out.contains("non-finite values") && out.contains("compared as equal"),
        "{out}"
    );
    // int8 packing turns the NaN into a number: a mismatch, reported where it is.
    let packed8 = tmp.path().join("packed8");
    let mut o = PackOptions::new(src.clone(), packed8.clone());
    o.allow_nonfinite = true;
    o.dtype = Some(TableDtype::Int8);
    pack(&o, &Ui::quiet()).unwrap();
    let o = run([
        "verify",
        "--source",
        &s(&src),
        "--packed",
        &s(&packed8),
        "--json",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    let l = &r["layers"][0];
    assert!(l["nonfinite_mismatches"].as_u64().unwrap() > 0, "{l}");
    assert!(l["first_nonfinite_mismatch"].is_u64());
    assert!(
        stderr(&o).contains("NaN/Inf on one side only"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn verify_checks_the_delta_of_add_lambda_layers() {
    let tmp = tempfile::tempdir().unwrap();
    let src = fixture("checkpoints/nanochat");
    let packed = tmp.path().join("packed");
    let mut o = PackOptions::new(src.clone(), packed.clone());
    o.dtype = Some(TableDtype::Int8);
    pack(&o, &Ui::quiet()).unwrap();
    let o = run([
        "verify",
        "--source",
        &s(&src),
        "--packed",
        &s(&packed),
        "--json",
    ]);
    let r: Value = serde_json::from_slice(&assert_ok(&o).into_bytes()).unwrap();
    for l in r["layers"].as_array().unwrap() {
        assert_eq!(l["measured"], "delta");
        let delta = l["relative_l2_error"].as_f64().unwrap();
        let after = l["after_residual"]["relative_l2_error"].as_f64().unwrap();
        // The residual's x dilutes the error: the checked figure is the larger one.
        assert!(
            delta > after * 1.5,
            "delta {delta} vs after the residual {after}"
        );
    }
    let o = run(["verify", "--source", &s(&src), "--packed", &s(&packed)]);
    let out = assert_ok(&o);
    assert!(
        out.contains("delta (the layer's output before the residual)"),
        "{out}"
    );
    assert!(out.contains("after the residual"), "{out}");
}

#[test]
fn forward_delta_is_the_output_before_the_residual() {
    use candle_core::{Device, Tensor};
    let c = case(Kind::Nano);
    let model = l3kit::verify::load_packed(&c.packed, &Device::Cpu).unwrap();
    let inputs = l3kit::verify::Inputs::random(40, 32, 512, None, 9).unwrap();
    for l in &model.layers {
        let (h, w) = inputs.hidden_for(l).unwrap();
        let x = Tensor::from_slice(h, (40, w), &Device::Cpu).unwrap();
        let y = l
            .layer
            .forward(&x, &inputs.token_ids, l.tables.as_ref())
            .unwrap();
        let d = l
            .layer
            .forward_delta(&x, &inputs.token_ids, l.tables.as_ref())
            .unwrap();
        let lambda = l.layer.cfg.lambda.unwrap() as f64;
        let rebuilt = (x + (d * lambda).unwrap()).unwrap();
        let (y, r) = (
            y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            rebuilt.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        assert_eq!(y, r, "{}: x + lambda * delta is the layer's output", l.name);
    }
    // For a replace layer the delta is the output itself.
    let c = case(Kind::Paper);
    let model = l3kit::verify::load_packed(&c.packed, &Device::Cpu).unwrap();
    let l = &model.layers[0];
    let (h, w) = inputs.hidden_for(l).unwrap();
    let x = Tensor::from_slice(h, (40, w), &Device::Cpu).unwrap();
    let ids = &inputs.token_ids;
    let y = l.layer.forward(&x, ids, l.tables.as_ref()).unwrap();
    let d = l.layer.forward_delta(&x, ids, l.tables.as_ref()).unwrap();
    assert_eq!(
        y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        d.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    );
}

#[test]
fn unpack_restores_f64_sources() {
    // pack stores f64 tables as f32; unpack converts back (it used to hit an unreachable!).
    use l3kit::util::safetensors_file::{write_file, TensorBytes};
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = l3kit::Checkpoint::open(&fixture("checkpoints/paper/model.safetensors")).unwrap();
    let mut tensors = Vec::new();
    for t in ckpt.tensors() {
        let bytes = ckpt.read_all(&t.name).unwrap();
        let (dtype, data) = if t.name.ends_with("w_k.weight") || t.name.ends_with("w_v.weight") {
            let wide: Vec<u8> = bytes
                .chunks(4)
                .flat_map(|c| (f32::from_le_bytes(c.try_into().unwrap()) as f64).to_le_bytes())
                .collect();
            (safetensors::Dtype::F64, wide)
        } else {
            (t.dtype, bytes)
        };
        tensors.push(TensorBytes {
            name: t.name.clone(),
            dtype,
            shape: t.shape.clone(),
            data: data.into(),
        });
    }
    let src = tmp.path().join("f64.safetensors");
    write_file(&src, &tensors, &Default::default(), 8).unwrap();
    let packed = tmp.path().join("packed");
    let mut o = PackOptions::new(src.clone(), packed.clone());
    o.allocation = Some(fixture("checkpoints/paper/allocation.safetensors"));
    pack(&o, &Ui::quiet()).unwrap();
    let out = tmp.path().join("unpacked");
    assert_ok(&run(["unpack", &s(&packed), "--out", &s(&out)]));
    let back = l3kit::Checkpoint::open(&out.join("model.safetensors")).unwrap();
    let orig = l3kit::Checkpoint::open(&src).unwrap();
    for name in ["l3.1.w_k.weight", "l3.3.w_v.weight"] {
        assert_eq!(back.get(name).unwrap().dtype, safetensors::Dtype::F64);
        assert_eq!(back.read_all(name).unwrap(), orig.read_all(name).unwrap());
    }
}

// ---- property: no mutation of config.json or an offsets tensor makes a consumer panic ----

#[derive(Clone, Debug)]
enum Mutation {
    /// Set one byte of config.json.
    ConfigByte(usize, u8),
    /// Replace the n-th number of the `l3` section.
    ConfigNumber(usize, Value),
    /// Replace the n-th leaf of the `l3` section with null.
    ConfigNull(usize),
    /// Set one entry of an offsets tensor.
    Offset(usize, i64),
}

fn leaves(v: &Value, at: String, numbers_only: bool, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                leaves(x, format!("{at}/{k}"), numbers_only, out);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                leaves(x, format!("{at}/{i}"), numbers_only, out);
            }
        }
        Value::Number(_) => out.push(at),
        _ if !numbers_only => out.push(at),
        _ => {}
    }
}

fn mutation() -> impl proptest::strategy::Strategy<Value = Mutation> {
    use proptest::prelude::*;
    let number = prop_oneof![
        prop::sample::select(vec![
            json!(0),
            json!(1),
            json!(2),
            json!(47),
            json!(64),
            json!(65),
            json!(511),
            json!(512),
            json!(513),
            json!(2047),
            json!(2049),
            json!(1u64 << 31),
            json!(1u64 << 32),
            json!(1u64 << 40),
            json!(u64::MAX),
            json!(-1),
            json!(-(1i64 << 40)),
            json!(0.5),
            json!(1e300),
        ]),
        any::<u64>().prop_map(|v| json!(v)),
    ];
    let offset = prop_oneof![
        prop::sample::select(vec![0i64, -1, 1, 1 << 40, i64::MIN, i64::MAX, 2047, 2048]),
        any::<i64>(),
    ];
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::ConfigByte(i, b)),
        (any::<usize>(), number).prop_map(|(i, v)| Mutation::ConfigNumber(i, v)),
        any::<usize>().prop_map(Mutation::ConfigNull),
        (any::<usize>(), offset).prop_map(|(i, v)| Mutation::Offset(i, v)),
    ]
}

#[test]
fn mutated_configs_and_offsets_never_panic() {
    use candle_core::Device;
    use proptest::test_runner::{Config, TestCaseError, TestRunner};
    let c = case(Kind::PaperInt8);
    let config = std::fs::read(c.config_path()).unwrap();
    let pristine: Value = serde_json::from_slice(&config).unwrap();
    let (mut numbers, mut all) = (Vec::new(), Vec::new());
    leaves(&pristine["l3"], "/l3".into(), true, &mut numbers);
    leaves(&pristine["l3"], "/l3".into(), false, &mut all);
    let name = "l3.1.packed_offsets.1";
    let (file, b, e) = c.tensor_range(name);
    let shard_path = c.packed.join(&file);
    let shard = std::fs::read(&shard_path).unwrap();
    let entries = (e - b) / 8;
    let mut runner = TestRunner::new(Config {
        cases: 96,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&mutation(), |m| {
            std::fs::write(c.config_path(), &config).unwrap();
            std::fs::write(&shard_path, &shard).unwrap();
            match &m {
                Mutation::ConfigByte(i, byte) => {
                    let mut bytes = config.clone();
                    let i = i % bytes.len();
                    bytes[i] = *byte;
                    std::fs::write(c.config_path(), bytes).unwrap();
                }
                Mutation::ConfigNumber(i, _) | Mutation::ConfigNull(i) => {
                    let paths = if matches!(m, Mutation::ConfigNull(_)) {
                        &all
                    } else {
                        &numbers
                    };
                    let mut edited = pristine.clone();
                    let at = &paths[i % paths.len()];
                    let new = match &m {
                        Mutation::ConfigNumber(_, v) => v.clone(),
                        _ => Value::Null,
                    };
                    *edited.pointer_mut(at).unwrap() = new;
                    std::fs::write(c.config_path(), serde_json::to_vec(&edited).unwrap()).unwrap();
                }
                Mutation::Offset(i, v) => {
                    let mut bytes = shard.clone();
                    let at = b + (i % entries) * 8;
                    bytes[at..at + 8].copy_from_slice(&v.to_le_bytes());
                    std::fs::write(&shard_path, bytes).unwrap();
                }
            }
            let packed = c.packed.clone();
            let outcome = std::panic::catch_unwind(move || {
                let Ok(model) = PackedModel::open(&packed) else {
                    return;
                };
                let Ok(loaded) = l3kit::verify::load_packed_model(&model, &Device::Cpu) else {
                    return;
                };
                for l in &loaded.layers {
                    let d_in = l.layer.cfg.d_in;
                    let inputs =
                        l3kit::verify::Inputs::random(16, d_in, loaded.vocab, None, 1).unwrap();
                    let _ = l3kit::verify::run_layer(l, &inputs, &Device::Cpu);
                }
                let _ = l3kit::serve::open_packed(&packed);
            });
            if outcome.is_err() {
                return Err(TestCaseError::fail(format!("a consumer panicked on {m:?}")));
            }
            Ok(())
        })
        .unwrap();
}
