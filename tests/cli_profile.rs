//! End-to-end tests of `l3kit profile` and `l3kit allocate` through the built binary.
//!
//! Bad input: every case must exit with code 2, print an error that names the offending file
//! (and the line, record, row or position where there is one) and says what is wrong, and
//! leave nothing behind in the output folder — neither the output nor its hidden temporary
//! sibling `.NAME.l3kit-tmp-PID`.
//!
//! Good input: the same corpus given in different formats gives the same profile tensors, runs
//! are deterministic, and the `--json` summaries and the allocation file have the documented
//! shape.
//!
//! The corpora are small (a few KB of the bundled text, or a handful of ids with a tiny
//! vocabulary) so the whole file stays fast; only the determinism test profiles more than one
//! tokenisation batch.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, OnceLock};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn gpt2() -> PathBuf {
    manifest_dir().join("fixtures/tokenizer/gpt2.json")
}

const GPT2_VOCAB: usize = 50257;

/// Run the binary with `args`; progress bars off so stderr holds only messages.
fn l3kit<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    Command::new(env!("CARGO_BIN_EXE_l3kit"))
        .arg("--quiet")
        .args(args)
        .output()
        .expect("the l3kit binary runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Assert success and return stdout.
#[track_caller]
fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "l3kit failed with {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        stdout(out),
        stderr(out)
    );
    stdout(out)
}

/// Assert success with `--json` and parse stdout (which must be nothing but the JSON).
#[track_caller]
fn ok_json(out: &Output) -> serde_json::Value {
    let text = ok(out);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{text}"))
}

/// Assert a bad-input failure: exit code 2 and an error on stderr containing every needle.
#[track_caller]
fn bad(out: &Output, needles: &[&str]) -> String {
    let err = stderr(out);
    assert_eq!(
        out.status.code(),
        Some(2),
        "expected exit code 2\nstdout:\n{}\nstderr:\n{err}",
        stdout(out)
    );
    assert!(
        err.contains("error"),
        "stderr does not report an error:\n{err}"
    );
    for needle in needles {
        assert!(
            err.contains(needle),
            "stderr does not mention {needle:?}:\n{err}"
        );
    }
    err
}

/// Assert the folder holds exactly these names (hidden files included), so a failed run left
/// neither its output nor a temporary file behind.
#[track_caller]
fn assert_holds_only(dir: &Path, names: &[&str]) {
    let mut found: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    found.sort();
    let mut expected: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(found, expected, "{} holds unexpected files", dir.display());
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// The bundled training corpus (about 2 MB of English text).
fn corpus_text() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| {
        fs::read_to_string(manifest_dir().join("fixtures/corpus/train.txt")).unwrap()
    })
}

/// The first `n` lines of the bundled corpus, each with its trailing newline.
fn corpus_lines(n: usize) -> Vec<String> {
    let lines: Vec<String> = corpus_text()
        .split_inclusive('\n')
        .take(n)
        .map(String::from)
        .collect();
    assert_eq!(
        lines.len(),
        n,
        "the bundled corpus has fewer than {n} lines"
    );
    lines
}

/// Write the lines (which carry their own newlines) as a text file.
fn write_text(path: &Path, lines: &[String]) {
    fs::write(path, lines.concat()).unwrap();
}

fn write_jsonl(path: &Path, field: &str, texts: &[String]) {
    let mut body = String::new();
    for t in texts {
        let mut record = serde_json::Map::new();
        record.insert(field.to_string(), serde_json::Value::String(t.clone()));
        body.push_str(&serde_json::Value::Object(record).to_string());
        body.push('\n');
    }
    fs::write(path, body).unwrap();
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// A Parquet file with one optional string column; each inner slice is one row group and
/// `None` is a null row.
fn write_parquet(path: &Path, column: &str, groups: &[&[Option<&str>]]) {
    use parquet::basic::Compression;
    use parquet::column::writer::ColumnWriter;
    use parquet::data_type::ByteArray;
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use parquet::schema::parser::parse_message_type;

    let schema = Arc::new(
        parse_message_type(&format!(
            "message schema {{ OPTIONAL BYTE_ARRAY {column} (UTF8); }}"
        ))
        .unwrap(),
    );
    let props = Arc::new(
        WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build(),
    );
    let file = fs::File::create(path).unwrap();
    let mut writer = SerializedFileWriter::new(file, schema, props).unwrap();
    for rows in groups {
        let values: Vec<ByteArray> = rows.iter().flatten().map(|s| ByteArray::from(*s)).collect();
        let defs: Vec<i16> = rows.iter().map(|r| i16::from(r.is_some())).collect();
        let mut group = writer.next_row_group().unwrap();
        while let Some(mut col) = group.next_column().unwrap() {
            match col.untyped() {
                ColumnWriter::ByteArrayColumnWriter(w) => {
                    w.write_batch(&values, Some(&defs), None).unwrap();
                }
                _ => unreachable!("the schema has one BYTE_ARRAY column"),
            }
            col.close().unwrap();
        }
        group.close().unwrap();
    }
    writer.close().unwrap();
}

fn write_u16(path: &Path, ids: &[u32]) {
    let bytes: Vec<u8> = ids
        .iter()
        .flat_map(|&v| u16::try_from(v).unwrap().to_le_bytes())
        .collect();
    fs::write(path, bytes).unwrap();
}

fn write_u32(path: &Path, ids: &[u32]) {
    let bytes: Vec<u8> = ids.iter().flat_map(|v| v.to_le_bytes()).collect();
    fs::write(path, bytes).unwrap();
}

/// Sequences joined with a separator id after each one.
fn join_with(seqs: &[Vec<u32>], sep: u32) -> Vec<u32> {
    let mut ids = Vec::new();
    for s in seqs {
        ids.extend_from_slice(s);
        ids.push(sep);
    }
    ids
}

type Tensors = BTreeMap<String, (String, Vec<usize>, Vec<u8>)>;

/// Every tensor of a safetensors file (read with the safetensors crate): dtype, shape, bytes.
fn tensors(path: &Path) -> Tensors {
    let bytes = fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .unwrap_or_else(|e| panic!("{} is not valid safetensors: {e}", path.display()));
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            (
                name,
                (
                    format!("{:?}", view.dtype()),
                    view.shape().to_vec(),
                    view.data().to_vec(),
                ),
            )
        })
        .collect()
}

fn metadata(path: &Path) -> BTreeMap<String, String> {
    let bytes = fs::read(path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    meta.metadata()
        .clone()
        .map(|m| m.into_iter().collect())
        .unwrap_or_default()
}

fn u64s(bytes: &[u8]) -> Vec<u64> {
    bytes
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn i64s(bytes: &[u8]) -> Vec<i64> {
    bytes
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// Assert two profiles hold the same data (their metadata differs: it records input paths).
#[track_caller]
fn assert_same_profile_data(a: &Path, b: &Path) {
    let (ta, tb) = (tensors(a), tensors(b));
    assert_eq!(
        ta.keys().collect::<Vec<_>>(),
        [
            "codeword_count",
            "codeword_parent",
            "codeword_token",
            "unigram_counts"
        ]
    );
    for name in ta.keys() {
        assert!(
            ta[name] == tb[name],
            "tensor {name} differs between {} and {}",
            a.display(),
            b.display()
        );
    }
    assert_eq!(metadata(a)["content_sha256"], metadata(b)["content_sha256"]);
}

/// Profile text inputs with the GPT-2 tokenizer; returns the `--json` summary.
fn profile_text(inputs: &[&Path], extra: &[&str], out: &Path) -> serde_json::Value {
    let mut args: Vec<String> = vec!["--json".into(), "profile".into()];
    args.extend(["--tokenizer".into(), s(&gpt2())]);
    args.extend(inputs.iter().map(|p| s(p)));
    args.extend(extra.iter().map(|a| a.to_string()));
    args.extend(["--out".into(), s(out)]);
    ok_json(&l3kit(&args))
}

/// Profile pre-tokenised inputs; returns the `--json` summary.
fn profile_ids(inputs: &[&Path], extra: &[&str], out: &Path) -> serde_json::Value {
    let mut args: Vec<String> = vec!["--json".into(), "profile".into()];
    args.extend(inputs.iter().map(|p| s(p)));
    args.extend(extra.iter().map(|a| a.to_string()));
    args.extend(["--out".into(), s(out)]);
    ok_json(&l3kit(&args))
}

/// A small GPT-2 profile of the first 60 corpus lines, at `dir/p.safetensors`.
fn small_text_profile(dir: &Path) -> PathBuf {
    let corpus = dir.join("corpus.txt");
    write_text(&corpus, &corpus_lines(60));
    let out = dir.join("p.safetensors");
    profile_text(&[&corpus], &[], &out);
    fs::remove_file(&corpus).unwrap();
    out
}

/// A tiny pre-tokenised profile (vocabulary 10) at `dir/p.safetensors`.
fn tiny_id_profile(dir: &Path) -> PathBuf {
    let ids = dir.join("ids.u16");
    write_u16(
        &ids,
        &join_with(
            &[vec![1, 2, 3, 1, 2, 3, 4], vec![5, 5, 5, 5], vec![2, 3]],
            0,
        ),
    );
    let out = dir.join("p.safetensors");
    profile_ids(&[&ids], &["--vocab-size", "10", "--separator", "0"], &out);
    fs::remove_file(&ids).unwrap();
    out
}

/// Run `allocate` with these arguments (the profile and `--out` given by the caller).
fn allocate(args: &[&str]) -> Output {
    let mut all = vec!["allocate"];
    all.extend_from_slice(args);
    l3kit(&all)
}

/// Check an allocation's bounds: length vocab+1, starts at 0, ends at n_emb, every token
/// owns between 1 and k_max rows. Returns the rows per token.
#[track_caller]
fn check_bounds(path: &Path, vocab: usize, n_emb: i64, k_max: i64) -> Vec<i64> {
    let t = tensors(path);
    let (dtype, shape, data) = &t["bounds"];
    assert_eq!(dtype, "I64");
    assert_eq!(shape, &vec![vocab + 1]);
    let bounds = i64s(data);
    assert_eq!(bounds[0], 0);
    assert_eq!(*bounds.last().unwrap(), n_emb, "bounds must sum to n_emb");
    let rows: Vec<i64> = bounds.windows(2).map(|w| w[1] - w[0]).collect();
    for (tok, &r) in rows.iter().enumerate() {
        assert!(
            (1..=k_max).contains(&r),
            "token {tok} owns {r} rows, outside 1..={k_max}"
        );
    }
    rows
}

// ---------------------------------------------------------------------------------------------
// Bad input to `profile`
// ---------------------------------------------------------------------------------------------

#[test]
fn missing_input_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nowhere.txt");
    let out = dir.path().join("p.safetensors");
    let res = l3kit([
        "profile",
        "--tokenizer",
        &s(&gpt2()),
        &s(&missing),
        "--out",
        &s(&out),
    ]);
    bad(&res, &[&s(&missing), "No such file"]);
    assert_holds_only(dir.path(), &[]);
}

#[test]
fn folder_given_as_input() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("folder.txt");
    fs::create_dir(&folder).unwrap();
    let out = dir.path().join("p.safetensors");
    let res = l3kit([
        "profile",
        "--tokenizer",
        &s(&gpt2()),
        &s(&folder),
        "--out",
        &s(&out),
    ]);
    bad(&res, &[&s(&folder), "folder"]);
    assert_holds_only(dir.path(), &["folder.txt"]);
}

#[test]
fn missing_tokenizer_file() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("c.txt");
    write_text(&corpus, &corpus_lines(3));
    let tok = dir.path().join("absent.json");
    let out = dir.path().join("p.safetensors");
    let res = l3kit([
        "profile",
        "--tokenizer",
        &s(&tok),
        &s(&corpus),
        "--out",
        &s(&out),
    ]);
    bad(&res, &[&s(&tok), "No such file"]);
    assert_holds_only(dir.path(), &["c.txt"]);
}

#[test]
fn invalid_tokenizer_json() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("c.txt");
    write_text(&corpus, &corpus_lines(3));
    let tok = dir.path().join("tokenizer.json");
    fs::write(&tok, b"{\"version\": \"1.0\", \"model\": [garbage").unwrap();
    let out = dir.path().join("p.safetensors");
    let res = l3kit([
        "profile",
        "--tokenizer",
        &s(&tok),
        &s(&corpus),
        "--out",
        &s(&out),
    ]);
    bad(&res, &[&s(&tok), "not a valid tokenizer.json"]);
    assert_holds_only(dir.path(), &["c.txt", "tokenizer.json"]);
}

#[test]
fn id_file_length_not_a_multiple_of_the_width() {
    let dir = tempfile::tempdir().unwrap();
    let u16_file = dir.path().join("odd.u16");
    fs::write(&u16_file, [1u8, 0, 2]).unwrap();
    let u32_file = dir.path().join("odd.u32");
    fs::write(&u32_file, [1u8, 0, 0, 0, 2, 0]).unwrap();
    let out = dir.path().join("p.safetensors");
    for (file, width) in [(&u16_file, "2 bytes"), (&u32_file, "4 bytes")] {
        let res = l3kit([
            "profile",
            "--vocab-size",
            "10",
            "--separator",
            "0",
            &s(file),
            "--out",
            &s(&out),
        ]);
        bad(&res, &[&s(file), "not a multiple of the id width", width]);
    }
    assert_holds_only(dir.path(), &["odd.u16", "odd.u32"]);
}

#[test]
fn id_at_or_above_the_vocabulary() {
    let dir = tempfile::tempdir().unwrap();
    let ids = dir.path().join("ids.u16");
    // Position 3 (byte offset 6) holds 12; the vocabulary is 10.
    write_u16(&ids, &[1, 2, 0, 12, 3, 0]);
    let out = dir.path().join("p.safetensors");
    let res = l3kit([
        "profile",
        "--vocab-size",
        "10",
        "--separator",
        "0",
        &s(&ids),
        "--out",
        &s(&out),
    ]);
    bad(
        &res,
        &[&s(&ids), "token id 12", "position 3", "vocabulary size 10"],
    );
    // The vocabulary size itself is already out of range (ids run 0..vocab).
    let ids32 = dir.path().join("ids.u32");
    write_u32(&ids32, &[1, 10, 0]);
    let res = l3kit([
        "profile",
        "--vocab-size",
        "10",
        "--separator",
        "0",
        &s(&ids32),
        "--out",
        &s(&out),
    ]);
    bad(&res, &[&s(&ids32), "token id 10", "position 1"]);
    assert_holds_only(dir.path(), &["ids.u16", "ids.u32"]);
}

#[test]
fn invalid_utf8_names_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("c.txt");
    fs::write(
        &corpus,
        b"first line\nsecond line\nthird \xff\xfe line\nfourth\n",
    )
    .unwrap();
    let out = dir.path().join("p.safetensors");
    let res = l3kit([
        "profile",
        "--tokenizer",
        &s(&gpt2()),
        &s(&corpus),
        "--out",
        &s(&out),
    ]);
    bad(&res, &[&s(&corpus), "UTF-8", "line 3"]);
    assert_holds_only(dir.path(), &["c.txt"]);
}

#[test]
fn empty_corpus() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("empty.txt");
    fs::write(&corpus, b"").unwrap();
    let ids = dir.path().join("empty.u16");
    fs::write(&ids, b"").unwrap();
    let out = dir.path().join("p.safetensors");
    let res = l3kit([
        "profile",
        "--tokenizer",
        &s(&gpt2()),
        &s(&corpus),
        "--out",
        &s(&out),
    ]);
    bad(&res, &[&s(&corpus), "empty"]);
    // Pre-tokenised: an empty file, and a file of nothing but separators.
    let res = l3kit([
        "profile",
        "--vocab-size",
        "10",
        "--separator",
        "0",
        &s(&ids),
        "--out",
        &s(&out),
    ]);
    bad(&res, &[&s(&ids), "empty"]);
    write_u16(&ids, &[0, 0, 0]);
    let res = l3kit([
        "profile",
        "--vocab-size",
        "10",
        "--separator",
        "0",
        &s(&ids),
        "--out",
        &s(&out),
    ]);
    bad(&res, &[&s(&ids), "empty"]);
    assert_holds_only(dir.path(), &["empty.txt", "empty.u16"]);
}

#[test]
fn jsonl_record_without_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("c.jsonl");
    fs::write(
        &corpus,
        "{\"text\": \"one\\n\"}\n{\"body\": \"two\\n\"}\n{\"text\": \"three\\n\"}\n",
    )
    .unwrap();
    let out = dir.path().join("p.safetensors");
    let res = l3kit([
        "profile",
        "--tokenizer",
        &s(&gpt2()),
        "--field",
        "text",
        &s(&corpus),
        "--out",
        &s(&out),
    ]);
    bad(&res, &[&s(&corpus), "line 2", "\"text\""]);
    assert_holds_only(dir.path(), &["c.jsonl"]);
}

#[test]
fn parquet_without_the_column() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("c.parquet");
    write_parquet(&corpus, "body", &[&[Some("one\n"), Some("two\n")]]);
    let out = dir.path().join("p.safetensors");
    let res = l3kit([
        "profile",
        "--tokenizer",
        &s(&gpt2()),
        "--field",
        "text",
        &s(&corpus),
        "--out",
        &s(&out),
    ]);
    bad(&res, &[&s(&corpus), "no column \"text\"", "body"]);
    assert_holds_only(dir.path(), &["c.parquet"]);
}

#[test]
fn parquet_null_row_names_the_row() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("c.parquet");
    // Two row groups; the null is the 4th row of the file (2nd of its group).
    write_parquet(
        &corpus,
        "text",
        &[&[Some("one\n"), Some("two\n")], &[Some("three\n"), None]],
    );
    let out = dir.path().join("p.safetensors");
    let res = l3kit([
        "profile",
        "--tokenizer",
        &s(&gpt2()),
        "--field",
        "text",
        &s(&corpus),
        "--out",
        &s(&out),
    ]);
    bad(&res, &[&s(&corpus), "row 4", "null"]);
    assert_holds_only(dir.path(), &["c.parquet"]);
}

#[test]
fn failed_run_leaves_an_existing_output_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("c.txt");
    fs::write(&corpus, b"fine\nstill fine\n\xc3 broken\n").unwrap();
    let out = dir.path().join("p.safetensors");
    fs::write(&out, b"previous contents").unwrap();
    let res = l3kit([
        "profile",
        "--tokenizer",
        &s(&gpt2()),
        &s(&corpus),
        "--out",
        &s(&out),
    ]);
    bad(&res, &[&s(&corpus), "line 3"]);
    assert_eq!(fs::read(&out).unwrap(), b"previous contents");
    assert_holds_only(dir.path(), &["c.txt", "p.safetensors"]);
}

// ---------------------------------------------------------------------------------------------
// Bad input to `allocate`
// ---------------------------------------------------------------------------------------------

#[test]
fn truncated_profile() {
    let dir = tempfile::tempdir().unwrap();
    let profile = tiny_id_profile(dir.path());
    let bytes = fs::read(&profile).unwrap();
    fs::write(&profile, &bytes[..bytes.len() / 2]).unwrap();
    let out = dir.path().join("a.safetensors");
    let res = allocate(&[
        "--profile",
        &s(&profile),
        "--n-emb",
        "20",
        "--out",
        &s(&out),
    ]);
    bad(&res, &[&s(&profile), "truncated or corrupted"]);
    assert_holds_only(dir.path(), &["p.safetensors"]);

    // A GPT-2 profile too, cut in its data section.
    let dir = tempfile::tempdir().unwrap();
    let profile = small_text_profile(dir.path());
    let bytes = fs::read(&profile).unwrap();
    fs::write(&profile, &bytes[..bytes.len() / 2]).unwrap();
    let res = allocate(&[
        "--profile",
        &s(&profile),
        "--n-emb",
        "60000",
        "--out",
        &s(&dir.path().join("a.safetensors")),
    ]);
    bad(&res, &[&s(&profile), "truncated or corrupted"]);
    assert_holds_only(dir.path(), &["p.safetensors"]);
}

#[test]
fn corrupted_profile() {
    let dir = tempfile::tempdir().unwrap();
    let profile = small_text_profile(dir.path());
    let mut bytes = fs::read(&profile).unwrap();
    let header = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let data_start = 8 + header;
    // Flip a byte inside unigram_counts (the first tensor, 8 x vocab bytes).
    let target = data_start + 8 * 1000 + 3;
    assert!(target < bytes.len());
    bytes[target] ^= 0x40;
    fs::write(&profile, &bytes).unwrap();
    let out = dir.path().join("a.safetensors");
    let res = allocate(&[
        "--profile",
        &s(&profile),
        "--n-emb",
        "60000",
        "--out",
        &s(&out),
    ]);
    bad(&res, &[&s(&profile), "content hash mismatch"]);
    assert_holds_only(dir.path(), &["p.safetensors"]);

    // Flipping the last byte (inside codeword_count) is caught as well.
    let mut bytes = fs::read(&profile).unwrap();
    bytes[target] ^= 0x40; // restore
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    fs::write(&profile, &bytes).unwrap();
    let res = allocate(&[
        "--profile",
        &s(&profile),
        "--n-emb",
        "60000",
        "--out",
        &s(&out),
    ]);
    bad(&res, &[&s(&profile)]);
    assert_holds_only(dir.path(), &["p.safetensors"]);

    // Not a profile at all: an allocation file given as --profile.
    bytes[last] ^= 0x01; // restore
    fs::write(&profile, &bytes).unwrap();
    ok(&allocate(&[
        "--profile",
        &s(&profile),
        "--n-emb",
        "60000",
        "--out",
        &s(&out),
    ]));
    let res = allocate(&[
        "--profile",
        &s(&out),
        "--n-emb",
        "60000",
        "--out",
        &s(&dir.path().join("b.safetensors")),
    ]);
    bad(&res, &[&s(&out), "not an l3kit profile"]);
    assert_holds_only(dir.path(), &["p.safetensors", "a.safetensors"]);
}

#[test]
fn profile_from_a_different_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    let profile = small_text_profile(dir.path());
    // The same tokenizer re-serialised compactly: identical behaviour, different SHA-256.
    let original = fs::read(gpt2()).unwrap();
    let value: serde_json::Value = serde_json::from_slice(&original).unwrap();
    let other = dir.path().join("other.json");
    fs::write(&other, serde_json::to_vec(&value).unwrap()).unwrap();
    assert_ne!(fs::read(&other).unwrap(), original);
    let out = dir.path().join("a.safetensors");
    let res = allocate(&[
        "--profile",
        &s(&profile),
        "--tokenizer",
        &s(&other),
        "--n-emb",
        "60000",
        "--out",
        &s(&out),
    ]);
    bad(&res, &[&s(&profile), &s(&other), "different tokenizer"]);
    assert_holds_only(dir.path(), &["p.safetensors", "other.json"]);

    // The tokenizer it was made with passes the check.
    ok(&allocate(&[
        "--profile",
        &s(&profile),
        "--tokenizer",
        &s(&gpt2()),
        "--n-emb",
        "60000",
        "--out",
        &s(&out),
    ]));
    assert_holds_only(
        dir.path(),
        &["p.safetensors", "other.json", "a.safetensors"],
    );
}

#[test]
fn impossible_budgets() {
    let dir = tempfile::tempdir().unwrap();
    let profile = tiny_id_profile(dir.path());
    let out = dir.path().join("a.safetensors");
    // Below the vocabulary (10).
    let res = allocate(&["--profile", &s(&profile), "--n-emb", "9", "--out", &s(&out)]);
    bad(&res, &["n_emb 9", "below the vocabulary size 10"]);
    // Above vocab x k_max = 10 x 4.
    let res = allocate(&[
        "--profile",
        &s(&profile),
        "--n-emb",
        "41",
        "--k-max",
        "4",
        "--out",
        &s(&out),
    ]);
    bad(&res, &["n_emb 41", "exceeds", "40"]);
    // The same limits apply to every method.
    for method in ["uniform", "frequency"] {
        let res = allocate(&[
            "--profile",
            &s(&profile),
            "--method",
            method,
            "--n-emb",
            "41",
            "--k-max",
            "4",
            "--out",
            &s(&out),
        ]);
        bad(&res, &["exceeds"]);
    }
    // Exactly vocab x k_max is possible.
    ok(&allocate(&[
        "--profile",
        &s(&profile),
        "--n-emb",
        "40",
        "--k-max",
        "4",
        "--fill",
        "round-robin",
        "--out",
        &s(&out),
    ]));
    let rows = check_bounds(&out, 10, 40, 4);
    assert!(rows.iter().all(|&r| r == 4));
    fs::remove_file(&out).unwrap();
    assert_holds_only(dir.path(), &["p.safetensors"]);
}

#[test]
fn codewords_run_out_without_fill() {
    let dir = tempfile::tempdir().unwrap();
    let profile = tiny_id_profile(dir.path());
    let out = dir.path().join("a.safetensors");
    // 10 tokens x 8 rows = 80 possible; the tiny corpus has far fewer codewords than 50 rows.
    let args = [
        "--profile",
        &s(&profile),
        "--n-emb",
        "60",
        "--k-max",
        "8",
        "--out",
        &s(&out),
    ];
    let err = bad(&allocate(&args), &["ran out", "--fill"]);
    assert!(
        err.contains("rows left"),
        "says how many rows are left: {err}"
    );
    assert_holds_only(dir.path(), &["p.safetensors"]);

    for policy in ["frequency", "round-robin"] {
        let mut with_fill = args.to_vec();
        with_fill.extend(["--fill", policy]);
        let mut json_args = vec!["--json"];
        json_args.extend(with_fill);
        let report = ok_json(&allocate(&json_args));
        assert_eq!(report["fill"], policy);
        assert!(report["fill_rows"].as_u64().unwrap() > 0);
        let rows = check_bounds(&out, 10, 60, 8);
        assert_eq!(rows.iter().sum::<i64>(), 60);
        let meta = metadata(&out);
        assert_eq!(meta["fill"], policy);
        assert_eq!(meta["fill_rows"], report["fill_rows"].to_string());
        fs::remove_file(&out).unwrap();
    }

    // A GPT-2 profile of a few lines with a budget of 4 rows per token runs out too.
    let dir = tempfile::tempdir().unwrap();
    let profile = small_text_profile(dir.path());
    let out = dir.path().join("a.safetensors");
    let n_emb = (4 * GPT2_VOCAB).to_string();
    let args = [
        "--profile",
        &s(&profile),
        "--n-emb",
        &n_emb,
        "--out",
        &s(&out),
    ];
    bad(&allocate(&args), &["--fill"]);
    assert_holds_only(dir.path(), &["p.safetensors"]);
    for policy in ["frequency", "round-robin"] {
        let mut with_fill = args.to_vec();
        with_fill.extend(["--fill", policy]);
        ok(&allocate(&with_fill));
        check_bounds(&out, GPT2_VOCAB, 4 * GPT2_VOCAB as i64, 512);
    }
}

// ---------------------------------------------------------------------------------------------
// Good input: formats agree
// ---------------------------------------------------------------------------------------------

#[test]
fn gzip_text_matches_plain_text() {
    let dir = tempfile::tempdir().unwrap();
    let lines = corpus_lines(80);
    let plain = dir.path().join("c.txt");
    write_text(&plain, &lines);
    let gz = dir.path().join("c.txt.gz");
    fs::write(&gz, gzip(lines.concat().as_bytes())).unwrap();
    let (pa, pb) = (dir.path().join("a.st"), dir.path().join("b.st"));
    let a = profile_text(&[&plain], &[], &pa);
    let b = profile_text(&[&gz], &[], &pb);
    assert_eq!(a["tokens"], b["tokens"]);
    assert_eq!(a["sequences"], 80);
    assert_eq!(b["sequences"], 80);
    assert_same_profile_data(&pa, &pb);
}

#[test]
fn jsonl_and_parquet_match_text() {
    let dir = tempfile::tempdir().unwrap();
    let lines = corpus_lines(50);
    let text = dir.path().join("c.txt");
    write_text(&text, &lines);
    let jsonl = dir.path().join("c.jsonl");
    write_jsonl(&jsonl, "text", &lines);
    let jsonl_gz = dir.path().join("c2.jsonl.gz");
    fs::write(&jsonl_gz, gzip(&fs::read(&jsonl).unwrap())).unwrap();
    let parquet = dir.path().join("c.parquet");
    let rows: Vec<Option<&str>> = lines.iter().map(|l| Some(l.as_str())).collect();
    // Two row groups, to cover reading across them.
    write_parquet(&parquet, "text", &[&rows[..20], &rows[20..]]);

    let p_text = dir.path().join("text.st");
    let summary = profile_text(&[&text], &[], &p_text);
    assert_eq!(summary["sequences"], 50);
    for (input, name) in [
        (&jsonl, "jsonl.st"),
        (&jsonl_gz, "jsonlgz.st"),
        (&parquet, "parquet.st"),
    ] {
        let p = dir.path().join(name);
        let other = profile_text(&[input.as_path()], &["--field", "text"], &p);
        assert_eq!(other["sequences"], 50, "{name}");
        assert_eq!(other["tokens"], summary["tokens"], "{name}");
        assert_same_profile_data(&p_text, &p);
    }

    // Mixed formats in one run: the inputs are read in order, as one corpus.
    let first = dir.path().join("first.txt");
    write_text(&first, &lines[..30]);
    let rest = dir.path().join("rest.jsonl");
    write_jsonl(&rest, "text", &lines[30..]);
    let p_mixed = dir.path().join("mixed.st");
    profile_text(&[&first, &rest], &["--field", "text"], &p_mixed);
    assert_same_profile_data(&p_text, &p_mixed);

    // The unigram counts are exactly those of tokenising each line on its own.
    let tok = tokenizers::Tokenizer::from_file(gpt2()).unwrap();
    let mut expected = vec![0u64; GPT2_VOCAB];
    for line in &lines {
        for &id in tok.encode_fast(line.as_str(), false).unwrap().get_ids() {
            expected[id as usize] += 1;
        }
    }
    assert_eq!(u64s(&tensors(&p_text)["unigram_counts"].2), expected);
}

#[test]
fn id_widths_separator_and_seq_len_agree() {
    let dir = tempfile::tempdir().unwrap();
    // 40 sequences of 7 ids in 1..300 (above u8, below u16), deterministic.
    let seqs: Vec<Vec<u32>> = (0..40u32)
        .map(|i| (0..7u32).map(|j| 1 + (i * 37 + j * j * 11) % 299).collect())
        .collect();
    let flat: Vec<u32> = seqs.concat();
    let sep_ids = join_with(&seqs, 0);
    let (a16, a32) = (dir.path().join("sep.u16"), dir.path().join("sep.u32"));
    write_u16(&a16, &sep_ids);
    write_u32(&a32, &sep_ids);
    let (b16, b32) = (dir.path().join("len.u16"), dir.path().join("len.u32"));
    write_u16(&b16, &flat);
    write_u32(&b32, &flat);

    let sep_args = ["--vocab-size", "300", "--separator", "0"];
    let len_args = ["--vocab-size", "300", "--seq-len", "7"];
    let runs = [
        (&a16, &sep_args, "a16.st"),
        (&a32, &sep_args, "a32.st"),
        (&b16, &len_args, "b16.st"),
        (&b32, &len_args, "b32.st"),
    ];
    let mut outs = Vec::new();
    for (input, args, name) in runs {
        let out = dir.path().join(name);
        let summary = profile_ids(&[input.as_path()], args, &out);
        assert_eq!(summary["sequences"], 40, "{name}");
        assert_eq!(summary["tokens"], 280, "{name}");
        assert_eq!(summary["vocab_size"], 300, "{name}");
        outs.push(out);
    }
    for out in &outs[1..] {
        assert_same_profile_data(&outs[0], out);
    }
    let unigram = u64s(&tensors(&outs[0])["unigram_counts"].2);
    assert_eq!(unigram.len(), 300);
    assert_eq!(unigram[0], 0, "the separator belongs to no sequence");
    let mut expected = vec![0u64; 300];
    for &id in &flat {
        expected[id as usize] += 1;
    }
    assert_eq!(unigram, expected);

    // --seq-len with a short last sequence.
    let out = dir.path().join("short.st");
    let summary = profile_ids(&[&b16], &["--vocab-size", "300", "--seq-len", "9"], &out);
    assert_eq!(summary["sequences"], 280_u64.div_ceil(9));
    assert_eq!(summary["tokens"], 280);
}

#[test]
fn max_tokens_keeps_whole_sequences() {
    let dir = tempfile::tempdir().unwrap();
    let ids = dir.path().join("ids.u16");
    // Sequences of 3, 4, 5 and 6 ids.
    let seqs: Vec<Vec<u32>> = (3..=6u32).map(|n| (1..=n).collect()).collect();
    write_u16(&ids, &join_with(&seqs, 0));
    let out = dir.path().join("p.st");
    for (limit, tokens, sequences) in [
        (7u64, 7u64, 2u64),
        (10, 7, 2),
        (11, 7, 2),
        (12, 12, 3),
        (100, 18, 4),
    ] {
        let summary = profile_ids(
            &[&ids],
            &[
                "--vocab-size",
                "10",
                "--separator",
                "0",
                "--max-tokens",
                &limit.to_string(),
            ],
            &out,
        );
        assert_eq!(summary["tokens"], tokens, "--max-tokens {limit}");
        assert_eq!(summary["sequences"], sequences, "--max-tokens {limit}");
        let unigram = u64s(&tensors(&out)["unigram_counts"].2);
        assert_eq!(unigram.iter().sum::<u64>(), tokens);
    }
    // Not even the first sequence fits: the sample is empty, which is an error.
    fs::remove_file(&out).unwrap();
    let res = l3kit([
        "profile",
        "--vocab-size",
        "10",
        "--separator",
        "0",
        "--max-tokens",
        "2",
        &s(&ids),
        "--out",
        &s(&out),
    ]);
    bad(&res, &[&s(&ids), "empty", "--max-tokens"]);
    assert_holds_only(dir.path(), &["ids.u16"]);

    // Text: the sample is the longest prefix of lines within the limit.
    let lines = corpus_lines(200);
    let corpus = dir.path().join("c.txt");
    write_text(&corpus, &lines);
    let tok = tokenizers::Tokenizer::from_file(gpt2()).unwrap();
    let limit = 1000u64;
    let (mut tokens, mut sequences) = (0u64, 0u64);
    for line in &lines {
        let n = tok.encode_fast(line.as_str(), false).unwrap().len() as u64;
        if tokens + n > limit {
            break;
        }
        tokens += n;
        sequences += 1;
    }
    assert!(sequences < 200, "the limit must cut the corpus");
    let summary = profile_text(&[&corpus], &["--max-tokens", "1000"], &out);
    assert_eq!(summary["tokens"], tokens);
    assert_eq!(summary["sequences"], sequences);
}

// ---------------------------------------------------------------------------------------------
// Determinism, summaries and the allocation file
// ---------------------------------------------------------------------------------------------

#[test]
fn profile_and_allocate_are_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    // About 1.2 MB: more than one tokenisation batch, so batching and parallel tokenisation
    // are part of what must not change the result.
    let mut lines = Vec::new();
    let mut bytes = 0;
    for line in corpus_text().split_inclusive('\n') {
        if bytes > 1_200_000 {
            break;
        }
        bytes += line.len();
        lines.push(line.to_string());
    }
    let corpus = dir.path().join("c.txt");
    write_text(&corpus, &lines);
    let (p1, p2) = (dir.path().join("p1.st"), dir.path().join("p2.st"));
    profile_text(&[&corpus], &[], &p1);
    profile_text(&[&corpus], &[], &p2);
    assert!(
        fs::read(&p1).unwrap() == fs::read(&p2).unwrap(),
        "two profiles of the same input differ"
    );
    for method in ["lzw", "frequency", "uniform"] {
        let (a1, a2) = (dir.path().join("a1.st"), dir.path().join("a2.st"));
        for out in [&a1, &a2] {
            ok(&allocate(&[
                "--profile",
                &s(&p1),
                "--method",
                method,
                "--n-emb",
                "150000",
                "--k-max",
                "64",
                "--out",
                &s(out),
            ]));
        }
        assert!(
            fs::read(&a1).unwrap() == fs::read(&a2).unwrap(),
            "two {method} allocations from the same profile differ"
        );
        check_bounds(&a1, GPT2_VOCAB, 150_000, 64);
    }
}

#[test]
fn profile_json_summary_fields() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("c.txt");
    write_text(&corpus, &corpus_lines(60));
    let out = dir.path().join("p.safetensors");
    let j = profile_text(&[&corpus], &[], &out);
    for field in [
        "tokens",
        "sequences",
        "codewords",
        "unigram_entropy_bits",
        "mean_phrase_length",
        "tokens_per_second",
        "peak_rss_bytes",
    ] {
        assert!(j.get(field).is_some(), "profile --json lacks {field}: {j}");
    }
    let tokens = j["tokens"].as_u64().unwrap();
    assert!(tokens > 60);
    assert_eq!(j["sequences"], 60);
    assert_eq!(j["vocab_size"], GPT2_VOCAB);
    // Every single token is a codeword, plus at least one phrase per sequence.
    assert!(j["codewords"].as_u64().unwrap() > GPT2_VOCAB as u64 + 60);
    let entropy = j["unigram_entropy_bits"].as_f64().unwrap();
    assert!(entropy > 1.0 && entropy < (GPT2_VOCAB as f64).log2());
    let phrase = j["mean_phrase_length"].as_f64().unwrap();
    assert!((1.0..=tokens as f64).contains(&phrase));
    assert!(j["tokens_per_second"].as_f64().unwrap() > 0.0);
    if cfg!(target_os = "linux") {
        assert!(j["peak_rss_bytes"].as_u64().unwrap() > 0);
    }
    assert_eq!(j["out"], s(&out));
    // The profile's metadata agrees with the summary.
    let meta = metadata(&out);
    assert_eq!(meta["format"], "l3kit-profile");
    let recorded: serde_json::Value = serde_json::from_str(&meta["profile"]).unwrap();
    assert_eq!(recorded["tokens"], tokens);
    assert_eq!(recorded["sequences"], 60);
    assert_eq!(recorded["vocab_size"], GPT2_VOCAB);
    assert!(recorded["tokenizer_sha256"].is_string());

    // The human report goes to stdout too, without --json.
    let human = ok(&l3kit([
        "profile",
        "--tokenizer",
        &s(&gpt2()),
        &s(&corpus),
        "--out",
        &s(&out),
    ]));
    assert!(human.contains("codewords") && human.contains("wrote"));
}

#[test]
fn allocate_json_summary_fields() {
    let dir = tempfile::tempdir().unwrap();
    let profile = small_text_profile(dir.path());
    let out = dir.path().join("a.safetensors");
    let j = ok_json(&allocate(&[
        "--json",
        "--profile",
        &s(&profile),
        "--n-emb",
        "60000",
        "--k-max",
        "16",
        "--d-in",
        "1024",
        "--out",
        &s(&out),
    ]));
    for field in ["histogram", "expected_rows_per_token", "tokens_at_cap"] {
        assert!(j.get(field).is_some(), "allocate --json lacks {field}: {j}");
    }
    let hist = j["histogram"].as_array().unwrap();
    let labels: Vec<&str> = hist.iter().map(|b| b["label"].as_str().unwrap()).collect();
    assert_eq!(labels, ["1", "2", "3-4", "5-8", "9-16"]);
    let tokens: u64 = hist.iter().map(|b| b["tokens"].as_u64().unwrap()).sum();
    let rows: u64 = hist.iter().map(|b| b["rows"].as_u64().unwrap()).sum();
    assert_eq!(tokens, GPT2_VOCAB as u64);
    assert_eq!(rows, 60_000);
    let expected = j["expected_rows_per_token"].as_f64().unwrap();
    assert!((1.0..=16.0).contains(&expected));
    let rows_per_token = check_bounds(&out, GPT2_VOCAB, 60_000, 16);
    let at_cap = rows_per_token.iter().filter(|&&r| r == 16).count() as u64;
    assert_eq!(j["tokens_at_cap"], at_cap);
    assert_eq!(j["n_emb"], 60_000);
    assert_eq!(j["k_max"], 16);
    assert_eq!(j["method"], "lzw");
    let memory = &j["memory"];
    assert_eq!(memory["d_in"], 1024);
    assert!(memory["bytes_per_layer"].as_u64().unwrap() > 0);
    assert!(memory["expected_bytes_per_token"].as_f64().unwrap() > 0.0);
}

#[test]
fn allocation_file_loads_with_safetensors() {
    let dir = tempfile::tempdir().unwrap();
    let profile = small_text_profile(dir.path());
    let out = dir.path().join("a.safetensors");
    ok(&allocate(&[
        "--profile",
        &s(&profile),
        "--rows-per-token",
        "1.2",
        "--out",
        &s(&out),
    ]));
    let n_emb = (1.2 * GPT2_VOCAB as f64).round() as i64;
    let bytes = fs::read(&out).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.names(), ["bounds"]);
    let view = st.tensor("bounds").unwrap();
    assert_eq!(view.dtype(), safetensors::Dtype::I64);
    assert_eq!(view.shape(), [GPT2_VOCAB + 1]);
    check_bounds(&out, GPT2_VOCAB, n_emb, 512);

    let meta = metadata(&out);
    assert_eq!(meta["format"], "l3kit-allocation");
    assert_eq!(meta["method"], "lzw");
    assert_eq!(meta["k_max"], "512");
    assert_eq!(meta["n_emb"], n_emb.to_string());
    assert_eq!(meta["vocab_size"], GPT2_VOCAB.to_string());
    assert_eq!(
        meta["profile_sha256"],
        metadata(&profile)["content_sha256"],
        "the allocation names the profile it came from"
    );
    // And l3kit's own reader accepts it.
    let alloc = l3kit::Allocation::read(&out).unwrap();
    assert_eq!(alloc.vocab(), GPT2_VOCAB);
    assert_eq!(alloc.n_emb(), n_emb as u64);
}
