//! Hostile and careless input to `profile`, `allocate`, `evaluate`, `plan` and `synth`: sizes
//! that do not match the data present, absurd flags, lines without end, FIFOs and devices,
//! crafted Parquet, profile and allocation files.
//!
//! Every case runs the binary under an address-space limit and a time limit (`run_limited`):
//! a huge allocation aborts the run and a hang is killed, and both fail the test. A refusal
//! must exit 2 with a message naming the file or flag and the problem, show no panic, leave
//! nothing behind and change no input (`snapshot` of the test's folder before and after).
//!
//! Big inputs (a 10 MB line, 2 GB of gzip-inflated zeros) are generated in temporary folders.

mod common;

use common::{assert_ok, assert_refused, fixture, mkfifo, run, run_limited, snapshot, Limits};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn gpt2() -> PathBuf {
    fixture("tokenizer/gpt2.json")
}

/// Run with the default limits and check it refused (exit 2) with every needle in stderr
/// and left the folder exactly as it was.
#[track_caller]
fn refused_in(dir: &Path, args: &[&str], needles: &[&str]) -> Output {
    let before = snapshot(dir);
    let out = run(args);
    assert_refused(&out, 2, needles);
    assert_eq!(before, snapshot(dir), "the run changed {}", dir.display());
    out
}

fn write_u16(path: &Path, ids: &[u16]) {
    let bytes: Vec<u8> = ids.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(path, bytes).unwrap();
}

/// A tiny pre-tokenised profile (vocabulary 10) at `dir/p.safetensors`.
fn tiny_profile(dir: &Path) -> PathBuf {
    let ids = dir.join("ids.u16");
    write_u16(&ids, &[1, 2, 3, 1, 2, 3, 4, 0, 5, 5, 5, 5, 0, 2, 3, 0]);
    let out = dir.join("p.safetensors");
    assert_ok(&run([
        "profile",
        "--vocab-size",
        "10",
        "--separator",
        "0",
        &s(&ids),
        "--out",
        &s(&out),
    ]));
    std::fs::remove_file(&ids).unwrap();
    out
}

/// A FIFO at `path` with a thread that writes `chunk` into it `times` times (forever when
/// None) and stops quietly when the reader goes away.
fn fifo_writer(path: &Path, chunk: Vec<u8>, times: Option<usize>) -> std::thread::JoinHandle<()> {
    mkfifo(path);
    let path = path.to_path_buf();
    std::thread::spawn(move || {
        // Blocks until the reader opens its end.
        let Ok(mut f) = std::fs::OpenOptions::new().write(true).open(&path) else {
            return;
        };
        let mut n = 0;
        while times.is_none_or(|t| n < t) {
            if f.write_all(&chunk).is_err() {
                return;
            }
            n += 1;
        }
    })
}

// ---------------------------------------------------------------------------------------------
// profile: sizes from flags
// ---------------------------------------------------------------------------------------------

#[test]
fn vocab_size_beyond_the_data_and_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let ids = dir.path().join("f.u16");
    std::fs::write(&ids, b"abcdefghijkl").unwrap(); // 12 bytes, 6 ids
    let out = s(&dir.path().join("p.safetensors"));
    for v in ["100000000", "4294967295", "0", "16777217"] {
        refused_in(
            dir.path(),
            &[
                "profile",
                "--vocab-size",
                v,
                "--seq-len",
                "2",
                &s(&ids),
                "--out",
                &out,
            ],
            &[&format!("--vocab-size {v}"), "out of range"],
        );
    }
    // clap refuses what does not fit 32 bits, naming the flag.
    refused_in(
        dir.path(),
        &[
            "profile",
            "--vocab-size",
            "18446744073709551615",
            "--seq-len",
            "2",
            &s(&ids),
            "--out",
            &out,
        ],
        &["--vocab-size"],
    );
}

#[test]
fn max_tokens_zero_is_refused_before_reading() {
    let dir = tempfile::tempdir().unwrap();
    let ids = dir.path().join("f.u16");
    write_u16(&ids, &[1, 2, 0, 3]);
    refused_in(
        dir.path(),
        &[
            "profile",
            "--vocab-size",
            "10",
            "--separator",
            "0",
            "--max-tokens",
            "0",
            &s(&ids),
            "--out",
            &s(&dir.path().join("p.st")),
        ],
        &["--max-tokens must be at least 1"],
    );
}

#[test]
fn max_sequence_bytes_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let ids = dir.path().join("f.u16");
    write_u16(&ids, &[1, 2, 0, 3]);
    let out = s(&dir.path().join("p.st"));
    for (v, needle) in [("2GiB", "above the limit"), ("0", "too small")] {
        refused_in(
            dir.path(),
            &[
                "profile",
                "--vocab-size",
                "10",
                "--separator",
                "0",
                "--max-sequence-bytes",
                v,
                &s(&ids),
                "--out",
                &out,
            ],
            &["--max-sequence-bytes", needle],
        );
    }
}

#[test]
fn seq_len_longer_than_any_sequence_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let ids = dir.path().join("f.u16");
    write_u16(&ids, &[1, 2, 3, 4]);
    let out = s(&dir.path().join("p.st"));
    for n in ["18446744073709551615", "2097153"] {
        refused_in(
            dir.path(),
            &[
                "profile",
                "--vocab-size",
                "10",
                "--seq-len",
                n,
                &s(&ids),
                "--out",
                &out,
            ],
            &[&s(&ids), &format!("--seq-len {n}"), "--max-sequence-bytes"],
        );
    }
    // The longest accepted is fine, even on a short file.
    assert_ok(&run([
        "profile",
        "--vocab-size",
        "10",
        "--seq-len",
        "2097152",
        &s(&ids),
        "--out",
        &out,
    ]));
}

#[test]
fn separator_that_can_never_occur_in_a_u16_file() {
    let dir = tempfile::tempdir().unwrap();
    let ids = dir.path().join("f.u16");
    write_u16(&ids, &[1, 2, 3, 4]);
    refused_in(
        dir.path(),
        &[
            "profile",
            "--vocab-size",
            "10",
            "--separator",
            "70000",
            &s(&ids),
            "--out",
            &s(&dir.path().join("p.st")),
        ],
        &[&s(&ids), "--separator 70000", "cannot occur in a u16 file"],
    );
}

// ---------------------------------------------------------------------------------------------
// profile: memory must not grow with the length of one sequence
// ---------------------------------------------------------------------------------------------

#[test]
fn ten_megabyte_line_without_newline() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("long.txt");
    // Words, so the tokenizer would have real work (and memory) per byte.
    let mut text = b"a short first line\nand a second\n".to_vec();
    while text.len() < 10_000_000 {
        text.extend_from_slice(b"lorem ipsum dolor sit amet ");
    }
    std::fs::write(&corpus, &text).unwrap();
    let out = s(&dir.path().join("p.st"));
    for extra in [&[][..], &["--max-tokens", "1000"][..]] {
        let mut args = vec!["profile", "--tokenizer"];
        let tok = s(&gpt2());
        let c = s(&corpus);
        args.extend([tok.as_str(), c.as_str(), "--out", out.as_str()]);
        args.extend_from_slice(extra);
        let started = Instant::now();
        refused_in(
            dir.path(),
            &args,
            &[
                &c,
                "line 3",
                "longer than 4194304 bytes",
                "--max-sequence-bytes",
            ],
        );
        assert!(started.elapsed() < Duration::from_secs(20), "too slow");
    }
    // A cap below the first line names line 1.
    refused_in(
        dir.path(),
        &[
            "profile",
            "--tokenizer",
            &s(&gpt2()),
            &s(&corpus),
            "--max-sequence-bytes",
            "10",
            "--out",
            &out,
        ],
        &["line 1", "longer than 10 bytes"],
    );
}

#[test]
fn a_budget_met_before_a_bad_line_never_reaches_it() {
    // The reader runs ahead of the scan, so whether it has reached a bad line when the budget
    // is met depends on thread timing; the outcome must not: the sample ends before the line,
    // and the line is never reported.
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("c.txt");
    let mut head = Vec::new();
    for i in 0..2000 {
        head.extend(format!("line number {i} of a short corpus\n").into_bytes());
    }
    let out = dir.path().join("p.st");
    for tail in [b"bad \xff byte\n".to_vec(), vec![b'x'; 5 << 20]] {
        std::fs::write(&corpus, [head.as_slice(), &tail].concat()).unwrap();
        for _ in 0..3 {
            let res = run([
                "--json",
                "profile",
                "--tokenizer",
                &s(&gpt2()),
                &s(&corpus),
                "--max-tokens",
                "5000",
                "--out",
                &s(&out),
            ]);
            let v: serde_json::Value = serde_json::from_str(&assert_ok(&res)).unwrap();
            assert!(v["tokens"].as_u64().unwrap() <= 5000);
            std::fs::remove_file(&out).unwrap();
        }
        // Without the budget the bad line is reached and named.
        let res = run([
            "profile",
            "--tokenizer",
            &s(&gpt2()),
            &s(&corpus),
            "--out",
            &s(&out),
        ]);
        assert_refused(&res, 2, &[&s(&corpus), "line 2001"]);
    }
}

#[test]
fn gzip_of_an_endless_line() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("bomb.txt.gz");
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let block = vec![b'a'; 1 << 20];
    for _ in 0..100 {
        enc.write_all(&block).unwrap();
    }
    let gz = enc.finish().unwrap();
    assert!(gz.len() < 200_000, "{} bytes", gz.len());
    std::fs::write(&corpus, gz).unwrap();
    refused_in(
        dir.path(),
        &[
            "profile",
            "--tokenizer",
            &s(&gpt2()),
            &s(&corpus),
            "--max-tokens",
            "1000",
            "--out",
            &s(&dir.path().join("p.st")),
        ],
        &[
            &s(&corpus),
            "line 1 of the decompressed text",
            "--max-sequence-bytes",
        ],
    );
}

#[test]
fn jsonl_record_too_long() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("c.jsonl");
    let body = format!(
        "{{\"text\": \"fine\"}}\n{{\"text\": \"{}\"}}\n",
        "y".repeat(5 << 20)
    );
    std::fs::write(&corpus, body).unwrap();
    refused_in(
        dir.path(),
        &[
            "profile",
            "--tokenizer",
            &s(&gpt2()),
            "--field",
            "text",
            &s(&corpus),
            "--out",
            &s(&dir.path().join("p.st")),
        ],
        &[&s(&corpus), "line 2", "--max-sequence-bytes"],
    );
}

#[test]
fn id_separator_that_never_comes() {
    let dir = tempfile::tempdir().unwrap();
    let ids = dir.path().join("f.u16");
    let mut v = vec![1u16, 2, 0];
    v.extend(std::iter::repeat_n(5u16, 3_000_000));
    write_u16(&ids, &v);
    refused_in(
        dir.path(),
        &[
            "profile",
            "--vocab-size",
            "10",
            "--separator",
            "0",
            &s(&ids),
            "--out",
            &s(&dir.path().join("p.st")),
        ],
        &[
            &s(&ids),
            "starting at id 3",
            "separator 0 never came",
            "--max-sequence-bytes",
        ],
    );
}

#[test]
fn max_tokens_stops_reading_ids_mid_sequence() {
    // 12 ids, a separator, then an endless sequence from a pipe: it cannot fit the budget, so
    // reading stops a few ids into it instead of holding it.
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("ids");
    mkfifo(&fifo);
    let path = fifo.clone();
    let writer = std::thread::spawn(move || {
        let Ok(mut f) = std::fs::OpenOptions::new().write(true).open(&path) else {
            return;
        };
        let mut head = Vec::new();
        for id in [1u32, 2, 3, 4, 5, 6, 7, 8, 9, 1, 2, 3, 0] {
            head.extend(id.to_le_bytes());
        }
        if f.write_all(&head).is_err() {
            return;
        }
        let fives: Vec<u8> = std::iter::repeat_n(5u32.to_le_bytes(), 1 << 14)
            .flatten()
            .collect();
        while f.write_all(&fives).is_ok() {}
    });
    let out = dir.path().join("p.st");
    let res = run_limited(
        [
            "--json",
            "profile",
            "--vocab-size",
            "10",
            "--separator",
            "0",
            "--format",
            "u32",
            "--max-tokens",
            "100",
            &s(&fifo),
            "--out",
            &s(&out),
        ],
        &[],
        &Limits {
            time: Duration::from_secs(30),
            ..Limits::default()
        },
    );
    let v: serde_json::Value = serde_json::from_str(&assert_ok(&res)).unwrap();
    assert_eq!(v["tokens"], 12);
    assert_eq!(v["sequences"], 1);
    writer.join().unwrap();
}

// ---------------------------------------------------------------------------------------------
// profile: FIFOs, devices, folders, outputs
// ---------------------------------------------------------------------------------------------

#[test]
fn dev_zero_and_other_devices_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = s(&dir.path().join("p.st"));
    for dev in ["/dev/zero", "/dev/null", "/dev/urandom"] {
        refused_in(
            dir.path(),
            &[
                "profile",
                "--tokenizer",
                &s(&gpt2()),
                "--format",
                "text",
                dev,
                "--max-tokens",
                "1000",
                "--out",
                &out,
            ],
            &[dev, "character device"],
        );
        refused_in(
            dir.path(),
            &[
                "profile",
                "--vocab-size",
                "10",
                "--format",
                "u16",
                "--seq-len",
                "4",
                dev,
                "--out",
                &out,
            ],
            &[dev, "character device"],
        );
        refused_in(
            dir.path(),
            &[
                "profile",
                "--tokenizer",
                dev,
                &s(&fixture("corpus/heldout.txt")),
                "--out",
                &out,
            ],
            &[dev, "character device"],
        );
    }
}

#[test]
fn fifo_streams_are_read_and_bounded() {
    let dir = tempfile::tempdir().unwrap();
    // A corpus through a pipe gives the same profile as the file.
    let text = std::fs::read(fixture("corpus/heldout.txt")).unwrap();
    let file = dir.path().join("c.txt");
    std::fs::write(&file, &text).unwrap();
    let fifo = dir.path().join("pipe");
    let writer = fifo_writer(&fifo, text, Some(1));
    let (a, b) = (dir.path().join("a.st"), dir.path().join("b.st"));
    let tok = s(&gpt2());
    assert_ok(&run([
        "profile",
        "--tokenizer",
        &tok,
        "--format",
        "text",
        &s(&fifo),
        "--out",
        &s(&a),
    ]));
    writer.join().unwrap();
    assert_ok(&run([
        "profile",
        "--tokenizer",
        &tok,
        &s(&file),
        "--out",
        &s(&b),
    ]));
    let (pa, pb) = (
        l3kit::profile::Profile::read(&a).unwrap(),
        l3kit::profile::Profile::read(&b).unwrap(),
    );
    assert_eq!(pa.content_sha256, pb.content_sha256);
    // A pipe that never ends a line stops at the cap.
    let fifo = dir.path().join("zeros");
    let writer = fifo_writer(&fifo, vec![0u8; 1 << 16], None);
    let started = Instant::now();
    let res = run([
        "profile",
        "--tokenizer",
        &s(&gpt2()),
        "--format",
        "text",
        &s(&fifo),
        "--max-tokens",
        "1000",
        "--out",
        &s(&dir.path().join("p.st")),
    ]);
    assert_refused(&res, 2, &[&s(&fifo), "line 1", "--max-sequence-bytes"]);
    assert!(started.elapsed() < Duration::from_secs(20));
    writer.join().unwrap();
    assert!(!dir.path().join("p.st").exists());
}

#[test]
fn endless_id_fifo_stops_at_the_sequence_cap() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("ids");
    let chunk: Vec<u8> = std::iter::repeat_n(5u16.to_le_bytes(), 1 << 15)
        .flatten()
        .collect();
    let writer = fifo_writer(&fifo, chunk, None);
    let res = run([
        "profile",
        "--vocab-size",
        "10",
        "--separator",
        "0",
        "--format",
        "u16",
        &s(&fifo),
        "--out",
        &s(&dir.path().join("p.st")),
    ]);
    assert_refused(&res, 2, &[&s(&fifo), "never came"]);
    writer.join().unwrap();
}

#[test]
fn fifo_that_stalls_after_the_budget_is_met() {
    // The writer sends a corpus and then holds the pipe open without writing: the sample is
    // complete, so the run must end rather than wait for the pipe. Text, gzip and ids.
    let text = std::fs::read(fixture("corpus/heldout.txt")).unwrap();
    let gz = {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&text).unwrap();
        enc.finish().unwrap()
    };
    let ids: Vec<u8> = std::iter::repeat_n([1u16, 2, 3, 0], 10_000)
        .flatten()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let tok = s(&gpt2());
    for (payload, args) in [
        (text, vec!["--tokenizer", tok.as_str(), "--format", "text"]),
        (gz, vec!["--tokenizer", tok.as_str(), "--format", "text"]),
        (
            ids,
            vec!["--vocab-size", "10", "--separator", "0", "--format", "u16"],
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe");
        mkfifo(&fifo);
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let path = fifo.clone();
        let writer = std::thread::spawn(move || {
            let Ok(mut f) = std::fs::OpenOptions::new().write(true).open(&path) else {
                return;
            };
            let _ = f.write_all(&payload);
            let _ = release_rx.recv_timeout(Duration::from_secs(120));
        });
        let out = s(&dir.path().join("p.st"));
        let mut all = vec!["--json", "profile", "--max-tokens", "20000"];
        all.extend(args);
        let f = s(&fifo);
        all.extend([f.as_str(), "--out", out.as_str()]);
        let res = run_limited(
            &all,
            &[],
            &Limits {
                time: Duration::from_secs(30),
                ..Limits::default()
            },
        );
        release_tx.send(()).unwrap();
        writer.join().unwrap();
        let v: serde_json::Value = serde_json::from_str(&assert_ok(&res)).unwrap();
        assert!(v["tokens"].as_u64().unwrap() <= 20000);
        assert!(v["tokens"].as_u64().unwrap() > 10000);
    }
}

#[test]
fn fifo_without_a_writer_is_given_up() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("silent");
    mkfifo(&fifo);
    let started = Instant::now();
    refused_in(
        dir.path(),
        &[
            "profile",
            "--tokenizer",
            &s(&gpt2()),
            "--format",
            "text",
            &s(&fifo),
            "--out",
            &s(&dir.path().join("p.st")),
        ],
        &[&s(&fifo), "FIFO", "no writer"],
    );
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[test]
fn fifos_where_a_file_is_needed_are_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("pipe");
    mkfifo(&fifo);
    let out = s(&dir.path().join("p.st"));
    let started = Instant::now();
    // Parquet is read by seeking.
    refused_in(
        dir.path(),
        &[
            "profile",
            "--tokenizer",
            &s(&gpt2()),
            "--field",
            "text",
            "--format",
            "parquet",
            &s(&fifo),
            "--out",
            &out,
        ],
        &[&s(&fifo), "Parquet", "regular file"],
    );
    // A tokenizer, a profile, an allocation: small files read whole.
    refused_in(
        dir.path(),
        &[
            "profile",
            "--tokenizer",
            &s(&fifo),
            &s(&fixture("corpus/heldout.txt")),
            "--out",
            &out,
        ],
        &[&s(&fifo), "FIFO"],
    );
    refused_in(
        dir.path(),
        &[
            "allocate",
            "--profile",
            &s(&fifo),
            "--n-emb",
            "100",
            "--out",
            &out,
        ],
        &[&s(&fifo), "FIFO"],
    );
    let profile = tiny_profile(dir.path());
    refused_in(
        dir.path(),
        &[
            "evaluate",
            "--allocation",
            &s(&fifo),
            "--profile",
            &s(&profile),
        ],
        &[&s(&fifo), "FIFO"],
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "a FIFO was waited on"
    );
}

#[test]
fn oversized_tokenizer_is_refused_unread() {
    let dir = tempfile::tempdir().unwrap();
    let tok = dir.path().join("tokenizer.json");
    // Sparse: 600 MB of nothing, above the 512 MiB limit for tokenizer files.
    std::fs::File::create(&tok)
        .unwrap()
        .set_len(600 << 20)
        .unwrap();
    refused_in(
        dir.path(),
        &[
            "profile",
            "--tokenizer",
            &s(&tok),
            &s(&fixture("corpus/heldout.txt")),
            "--out",
            &s(&dir.path().join("p.st")),
        ],
        &[&s(&tok), "limit"],
    );
}

#[test]
fn outputs_that_would_destroy_an_input() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("c.txt");
    std::fs::copy(fixture("corpus/heldout.txt"), &corpus).unwrap();
    let tok = dir.path().join("tok.json");
    std::fs::copy(gpt2(), &tok).unwrap();
    for out in [&corpus, &tok] {
        refused_in(
            dir.path(),
            &[
                "profile",
                "--tokenizer",
                &s(&tok),
                &s(&corpus),
                "--out",
                &s(out),
            ],
            &["--out", "is the input"],
        );
    }
    let profile = tiny_profile(dir.path());
    refused_in(
        dir.path(),
        &[
            "allocate",
            "--profile",
            &s(&profile),
            "--n-emb",
            "20",
            "--out",
            &s(&profile),
        ],
        &["--out", "is the input"],
    );
    refused_in(
        dir.path(),
        &[
            "plan",
            "--profile",
            &s(&profile),
            "--out",
            dir.path().to_str().unwrap(),
        ],
        &["--out", "contains the input"],
    );
}

// ---------------------------------------------------------------------------------------------
// profile: crafted Parquet (a minimal file written by hand, Thrift compact encoding)
// ---------------------------------------------------------------------------------------------

/// Just enough of Thrift's compact protocol to write a Parquet footer and page header.
#[derive(Default)]
struct Thrift {
    buf: Vec<u8>,
    last: Vec<i16>,
}

impl Thrift {
    fn new() -> Self {
        Thrift {
            buf: Vec::new(),
            last: vec![0],
        }
    }
    fn varint(&mut self, mut v: u64) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                self.buf.push(b);
                return;
            }
            self.buf.push(b | 0x80);
        }
    }
    fn zz(v: i64) -> u64 {
        ((v << 1) ^ (v >> 63)) as u64
    }
    fn field(&mut self, id: i16, ty: u8) {
        let last = self.last.last_mut().unwrap();
        let delta = id - *last;
        *last = id;
        if (1..=15).contains(&delta) {
            self.buf.push(((delta as u8) << 4) | ty);
        } else {
            self.buf.push(ty);
            self.varint(Self::zz(id as i64));
        }
    }
    fn i32(&mut self, id: i16, v: i32) -> &mut Self {
        self.field(id, 5);
        self.varint(Self::zz(v as i64));
        self
    }
    fn i64(&mut self, id: i16, v: i64) -> &mut Self {
        self.field(id, 6);
        self.varint(Self::zz(v));
        self
    }
    fn bin(&mut self, id: i16, v: &[u8]) -> &mut Self {
        self.field(id, 8);
        self.varint(v.len() as u64);
        self.buf.extend_from_slice(v);
        self
    }
    fn begin(&mut self, id: i16) -> &mut Self {
        self.field(id, 12);
        self.last.push(0);
        self
    }
    /// A list header; struct elements then go between `elem()` and `end()`.
    fn list(&mut self, id: i16, elem: u8, n: u64) -> &mut Self {
        self.field(id, 9);
        if n < 15 {
            self.buf.push(((n as u8) << 4) | elem);
        } else {
            self.buf.push(0xf0 | elem);
            self.varint(n);
        }
        self
    }
    fn elem(&mut self) -> &mut Self {
        self.last.push(0);
        self
    }
    fn end(&mut self) -> &mut Self {
        self.buf.push(0);
        self.last.pop();
        self
    }
}

/// How to spoil the hand-made Parquet file.
#[derive(Clone, Default)]
struct Craft {
    /// The page header's uncompressed size (default: the true one).
    uncompressed: Option<i32>,
    /// Parquet codec: 0 uncompressed, 1 snappy, 2 gzip.
    codec: i32,
    /// The page data as stored (default: the values, PLAIN-encoded).
    stored: Option<Vec<u8>>,
    /// The root's child count (default 1).
    root_children: Option<i32>,
    /// Nested groups between the root and the column.
    depth: usize,
    /// A row-group list that claims this many entries.
    row_groups: Option<u64>,
    data_page_offset: Option<i64>,
}

/// A Parquet file with one REQUIRED BYTE_ARRAY column `text`, one row group, one page.
fn parquet_file(values: &[&str], c: &Craft) -> Vec<u8> {
    let mut plain = Vec::new();
    for v in values {
        plain.extend((v.len() as u32).to_le_bytes());
        plain.extend_from_slice(v.as_bytes());
    }
    let stored = c.stored.clone().unwrap_or_else(|| plain.clone());
    let mut page = Thrift::new();
    page.i32(1, 0) // DATA_PAGE
        .i32(2, c.uncompressed.unwrap_or(plain.len() as i32))
        .i32(3, stored.len() as i32)
        .begin(5)
        .i32(1, values.len() as i32)
        .i32(2, 0) // PLAIN
        .i32(3, 3) // RLE
        .i32(4, 3)
        .end();
    page.buf.push(0);
    let mut file = b"PAR1".to_vec();
    let offset = file.len() as i64;
    file.extend_from_slice(&page.buf);
    file.extend_from_slice(&stored);
    let chunk_len = (page.buf.len() + stored.len()) as i64;
    let n = values.len() as i64;

    let mut m = Thrift::new();
    m.i32(1, 1);
    let elements = 2 + c.depth as u64;
    m.list(2, 12, elements);
    m.elem()
        .bin(4, b"schema")
        .i32(5, c.root_children.unwrap_or(1))
        .end();
    for i in 0..c.depth {
        m.elem()
            .i32(3, 0)
            .bin(4, format!("g{i}").as_bytes())
            .i32(5, 1)
            .end();
    }
    m.elem().i32(1, 6).i32(3, 0).bin(4, b"text").end();
    m.i64(3, n);
    if let Some(claimed) = c.row_groups {
        m.list(4, 12, claimed);
        m.buf.push(0); // the footer ends here
        m.buf.push(0);
    } else {
        m.list(4, 12, 1);
        m.elem().list(1, 12, 1);
        m.elem().i64(2, offset).begin(3);
        m.i32(1, 6).list(2, 5, 1).buf.push(0); // encodings [PLAIN]
        m.list(3, 8, 1);
        m.varint(4);
        m.buf.extend_from_slice(b"text");
        m.i32(4, c.codec)
            .i64(5, n)
            .i64(6, plain.len() as i64 + page.buf.len() as i64)
            .i64(7, chunk_len)
            .i64(9, c.data_page_offset.unwrap_or(offset))
            .end() // ColumnMetaData
            .end(); // ColumnChunk
        m.i64(2, chunk_len).i64(3, n).end(); // RowGroup
        m.buf.push(0); // FileMetaData
    }
    file.extend_from_slice(&m.buf);
    file.extend((m.buf.len() as u32).to_le_bytes());
    file.extend_from_slice(b"PAR1");
    file
}

fn profile_parquet(dir: &Path, bytes: &[u8]) -> (PathBuf, Vec<String>) {
    let path = dir.join("c.parquet");
    std::fs::write(&path, bytes).unwrap();
    let args = vec![
        "profile".to_string(),
        "--tokenizer".into(),
        s(&gpt2()),
        "--field".into(),
        "text".into(),
        s(&path),
        "--out".into(),
        s(&dir.join("p.st")),
    ];
    (path, args)
}

#[test]
fn parquet_page_claiming_two_gigabytes() {
    let dir = tempfile::tempdir().unwrap();
    // The hand-made file reads when nothing is spoilt.
    let good = ["hello world\n", "a second row\n"];
    let (path, args) = profile_parquet(dir.path(), &parquet_file(&good, &Craft::default()));
    let mut json = vec!["--json".to_string()];
    json.extend(args);
    let v: serde_json::Value = serde_json::from_str(&assert_ok(&run(json))).unwrap();
    assert_eq!(v["sequences"], 2);
    std::fs::remove_file(&path).unwrap();
    std::fs::remove_file(dir.path().join("p.st")).unwrap();

    let values = ["hello world\n"];
    let mut snappy = Vec::new();
    {
        // A valid snappy block of the values (an uncompressed literal): length, tag, bytes.
        let plain: Vec<u8> = [12u32.to_le_bytes().as_slice(), values[0].as_bytes()].concat();
        snappy.push(plain.len() as u8);
        snappy.push(((plain.len() - 1) as u8) << 2);
        snappy.extend_from_slice(&plain);
    }
    let craft = Craft {
        uncompressed: Some(i32::MAX),
        codec: 1,
        stored: Some(snappy),
        ..Craft::default()
    };
    let (path, args) = profile_parquet(dir.path(), &parquet_file(&values, &craft));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    refused_in(
        dir.path(),
        &args,
        &[
            &s(&path),
            "row group 0",
            "2147483647 bytes",
            "limit on Parquet pages",
        ],
    );
}

#[test]
fn parquet_gzip_page_that_inflates_past_its_header() {
    let dir = tempfile::tempdir().unwrap();
    // 2 GiB of zeros as 32 gzip members of 64 MiB each (about 2 MB in all).
    let member = {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..64 {
            enc.write_all(&zeros).unwrap();
        }
        enc.finish().unwrap()
    };
    let stored = member.repeat(32);
    let craft = Craft {
        uncompressed: Some(16),
        codec: 2,
        stored: Some(stored),
        ..Craft::default()
    };
    let (path, args) = profile_parquet(dir.path(), &parquet_file(&["0123456789ab"], &craft));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    refused_in(
        dir.path(),
        &args,
        &[&s(&path), "inflates to more than the 16 bytes"],
    );
}

#[test]
fn parquet_schema_with_absurd_child_counts() {
    let dir = tempfile::tempdir().unwrap();
    for (craft, needle) in [
        (
            Craft {
                root_children: Some(i32::MAX),
                ..Craft::default()
            },
            "claims 2147483647 children",
        ),
        (
            Craft {
                root_children: Some(-1),
                ..Craft::default()
            },
            "-1 children",
        ),
        (
            Craft {
                depth: 200_000,
                ..Craft::default()
            },
            "deeper than 64 levels",
        ),
    ] {
        let (path, args) = profile_parquet(dir.path(), &parquet_file(&["hello\n"], &craft));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        refused_in(
            dir.path(),
            &args,
            &[&s(&path), "schema is malformed", needle],
        );
    }
}

#[test]
fn parquet_footer_with_a_list_longer_than_itself() {
    let dir = tempfile::tempdir().unwrap();
    let craft = Craft {
        row_groups: Some(1 << 30),
        ..Craft::default()
    };
    let (path, args) = profile_parquet(dir.path(), &parquet_file(&["hello\n"], &craft));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    refused_in(
        dir.path(),
        &args,
        &[
            &s(&path),
            "footer is malformed",
            "claims 1073741824 elements",
        ],
    );
}

#[test]
fn parquet_column_outside_the_file() {
    let dir = tempfile::tempdir().unwrap();
    for offset in [-5i64, 1 << 40] {
        let craft = Craft {
            data_page_offset: Some(offset),
            ..Craft::default()
        };
        let (path, args) = profile_parquet(dir.path(), &parquet_file(&["hello\n"], &craft));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        refused_in(
            dir.path(),
            &args,
            &[&s(&path), "does not lie within the file"],
        );
    }
}

#[test]
fn parquet_value_too_long() {
    let dir = tempfile::tempdir().unwrap();
    let long = "z".repeat(5 << 20);
    let (path, args) = profile_parquet(
        dir.path(),
        &parquet_file(&["ok\n", &long], &Craft::default()),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    refused_in(
        dir.path(),
        &args,
        &[&s(&path), "row 2", "5242880 bytes", "--max-sequence-bytes"],
    );
}

// ---------------------------------------------------------------------------------------------
// Crafted profiles: counts that overflow or contradict the scan
// ---------------------------------------------------------------------------------------------

/// Write a profile with these columns and figures, its content hash made to match (as a
/// crafter would).
fn crafted_profile(
    path: &Path,
    vocab: u32,
    unigram: Vec<u64>,
    extra: &[(u32, u32, u64)],
    tokens: u64,
    phrases: u64,
    phrase_tokens: u64,
) {
    use l3kit::formats::profile::{content_hash, Codewords, NO_PARENT};
    use l3kit::profile::{
        InputFormat, InputRecord, LzwVariant, Profile, ProfileMeta, RecordedOptions,
    };
    let mut parents = vec![NO_PARENT; vocab as usize];
    let mut toks: Vec<u32> = (0..vocab).collect();
    let mut counts = vec![0u64; vocab as usize];
    for &(p, t, c) in extra {
        parents.push(p);
        toks.push(t);
        counts.push(c);
    }
    let codewords = Codewords {
        parents,
        tokens: toks,
        counts,
    };
    let meta = ProfileMeta {
        vocab_size: vocab,
        tokenizer_sha256: None,
        inputs: vec![InputRecord {
            path: "crafted".into(),
            format: InputFormat::U16,
            bytes: 0,
        }],
        options: RecordedOptions {
            field: None,
            add_special_tokens: false,
            split: None,
            max_tokens: None,
            lzw_variant: LzwVariant::Reference,
        },
        sequences: 1,
        tokens,
        phrases,
        phrase_tokens,
    };
    let content_sha256 = content_hash(&unigram, &codewords);
    Profile {
        meta,
        unigram,
        codewords,
        content_sha256,
    }
    .write(path)
    .unwrap();
}

#[test]
fn profile_whose_unigram_counts_overflow() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p.safetensors");
    // 2^64 - 1 + 1 wraps to 0, which matches the recorded token count when added unchecked.
    crafted_profile(&p, 2, vec![u64::MAX, 1], &[], 0, 0, 0);
    let alloc = dir.path().join("a.safetensors");
    std::fs::write(&alloc, allocation_bytes(&[0, 1, 2], &[])).unwrap();
    let (a2, plan) = (s(&dir.path().join("a2.st")), s(&dir.path().join("plan")));
    for args in [
        vec!["evaluate", "--allocation", &s(&alloc), "--profile", &s(&p)],
        vec![
            "allocate",
            "--profile",
            &s(&p),
            "--n-emb",
            "3",
            "--out",
            &a2,
        ],
        vec!["plan", "--profile", &s(&p), "--out", &plan],
    ] {
        refused_in(dir.path(), &args, &[&s(&p), "more than 2^64 - 1"]);
    }
}

#[test]
fn profile_whose_counts_contradict_its_totals() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p.safetensors");
    let alloc = dir.path().join("a.safetensors");
    std::fs::write(&alloc, allocation_bytes(&[0, 1, 3], &[])).unwrap();
    // Codeword counts near 2^64 from a scan of 4 tokens.
    crafted_profile(
        &p,
        2,
        vec![2, 2],
        &[(0, 1, u64::MAX), (1, 0, u64::MAX)],
        4,
        2,
        4,
    );
    refused_in(
        dir.path(),
        &["evaluate", "--allocation", &s(&alloc), "--profile", &s(&p)],
        &[
            &s(&p),
            "inconsistent counts",
            "more than 2 phrases can give",
        ],
    );
    // More codewords than phrases.
    crafted_profile(&p, 2, vec![2, 2], &[(0, 1, 1), (1, 0, 1)], 4, 1, 2);
    refused_in(
        dir.path(),
        &["evaluate", "--allocation", &s(&alloc), "--profile", &s(&p)],
        &[&s(&p), "2 multi-token codewords from 1 phrases"],
    );
    // Phrases that cover more tokens than the sample has.
    crafted_profile(&p, 2, vec![2, 2], &[], 4, 1, 9);
    refused_in(
        dir.path(),
        &["evaluate", "--allocation", &s(&alloc), "--profile", &s(&p)],
        &[&s(&p), "phrase_tokens 9"],
    );
    // Unigram counts that do not give the token count.
    crafted_profile(&p, 2, vec![2, 2], &[], 5, 0, 0);
    refused_in(
        dir.path(),
        &[
            "allocate",
            "--profile",
            &s(&p),
            "--n-emb",
            "3",
            "--out",
            &s(&dir.path().join("x.st")),
        ],
        &[&s(&p), "do not add up to the token count"],
    );
}

#[test]
fn profile_claiming_a_vast_vocabulary() {
    let dir = tempfile::tempdir().unwrap();
    let real = tiny_profile(dir.path());
    // Rewrite the metadata's vocab_size (the tensors stay 10 entries long).
    let bytes = std::fs::read(&real).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&bytes[8..8 + n]).unwrap();
    for v in ["4294967294", "16777217"] {
        let from = r#"\"vocab_size\":10,"#;
        assert!(header.contains(from), "{header}");
        let forged = header
            .replace(from, &format!(r#"\"vocab_size\":{v},"#))
            .trim_end()
            .to_string();
        let mut out = (forged.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(forged.as_bytes());
        out.extend_from_slice(&bytes[8 + n..]);
        let p = dir.path().join("vast.safetensors");
        std::fs::write(&p, out).unwrap();
        refused_in(
            dir.path(),
            &[
                "allocate",
                "--profile",
                &s(&p),
                "--n-emb",
                "20",
                "--out",
                &s(&dir.path().join("a.st")),
            ],
            &[&s(&p), &format!("vocab_size {v} is out of range")],
        );
        std::fs::remove_file(&p).unwrap();
    }
    // At the limit, the claim is checked against the arrays present before anything of the
    // vocabulary's size is allocated.
    let from = r#"\"vocab_size\":10,"#;
    let forged = header
        .replace(from, r#"\"vocab_size\":16777216,"#)
        .trim_end()
        .to_string();
    let mut out = (forged.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(forged.as_bytes());
    out.extend_from_slice(&bytes[8 + n..]);
    let p = dir.path().join("vast.safetensors");
    std::fs::write(&p, out).unwrap();
    let res = run_limited(
        [
            "allocate",
            "--profile",
            &s(&p),
            "--n-emb",
            "20000000",
            "--out",
            &s(&dir.path().join("a.st")),
        ],
        &[],
        &Limits {
            memory: 256 << 20,
            ..Limits::default()
        },
    );
    assert_refused(
        &res,
        2,
        &[
            &s(&p),
            "unigram_counts has 10 entries for a vocabulary of 16777216",
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// Crafted allocations: blocks beyond u32, k_max and n_emb that do not fit
// ---------------------------------------------------------------------------------------------

fn allocation_bytes(bounds: &[i64], meta: &[(&str, &str)]) -> Vec<u8> {
    let data: Vec<u8> = bounds.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::I64, vec![bounds.len()], &data)
            .unwrap();
    let info: std::collections::HashMap<String, String> = meta
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    safetensors::tensor::serialize([("bounds", view)], Some(info)).unwrap()
}

#[test]
fn allocation_blocks_that_do_not_fit_u32() {
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("p.safetensors");
    crafted_profile(&profile, 2, vec![1, 1], &[], 2, 0, 0);
    let alloc = dir.path().join("a.safetensors");
    let big = (1i64 << 32) + 1;
    for (bounds, meta, needles) in [
        // 2^32 + 1 rows read as u32 would be 1.
        (
            vec![0, big, big + 1],
            vec![],
            vec!["token 0 owns 4294967297 rows", "at most 4294967295"],
        ),
        (
            vec![0, 1, 2],
            vec![("k_max", "4294967296")],
            vec!["metadata k_max = 4294967296", "does not fit 32 bits"],
        ),
        (
            vec![0, 1, 2],
            vec![("vocab_size", "4294967298")],
            vec!["metadata vocab_size = 4294967298", "does not fit 32 bits"],
        ),
        (
            vec![0, 5, 6],
            vec![("k_max", "4")],
            vec!["token 0 owns 5 rows, more than k_max 4"],
        ),
        (
            vec![0, 1, 2],
            vec![("n_emb", "18446744073709551615")],
            vec!["n_emb 18446744073709551615"],
        ),
        (
            vec![0, 2, 3],
            vec![("fill_rows", "7"), ("fill", "frequency")],
            vec!["placed 7 rows"],
        ),
    ] {
        std::fs::write(&alloc, allocation_bytes(&bounds, &meta)).unwrap();
        let mut needles: Vec<&str> = needles;
        let a = s(&alloc);
        needles.push(&a);
        refused_in(
            dir.path(),
            &["evaluate", "--allocation", &a, "--profile", &s(&profile)],
            &needles,
        );
    }
}

// ---------------------------------------------------------------------------------------------
// allocate, evaluate, plan: flags that set the work
// ---------------------------------------------------------------------------------------------

#[test]
fn rows_per_token_that_is_not_a_budget() {
    let dir = tempfile::tempdir().unwrap();
    let profile = tiny_profile(dir.path());
    let out = s(&dir.path().join("a.st"));
    for (r, needle) in [
        ("inf", "must be a positive number"),
        ("NaN", "must be a positive number"),
        ("-1", "must be a positive number"),
        ("0", "must be a positive number"),
        ("1e30", "exceeds --k-max 512"),
        ("0.5", "below the vocabulary size"),
    ] {
        refused_in(
            dir.path(),
            &[
                "allocate",
                "--profile",
                &s(&profile),
                &format!("--rows-per-token={r}"),
                "--out",
                &out,
            ],
            &[
                &format!("--rows-per-token {}", r.parse::<f64>().unwrap()),
                needle,
            ],
        );
    }
}

#[test]
fn n_emb_and_k_max_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let profile = tiny_profile(dir.path());
    let out = s(&dir.path().join("a.st"));
    let p = s(&profile);
    for (args, needles) in [
        (
            vec!["--n-emb", "9223372036854775808"],
            vec!["--n-emb 9223372036854775808", "exceeds vocab x k_max"],
        ),
        (vec!["--n-emb", "18446744073709551616"], vec!["--n-emb"]),
        (
            vec!["--n-emb", "20", "--k-max", "0"],
            vec!["--k-max must be at least 1"],
        ),
        (
            vec!["--n-emb", "20", "--k-max", "4294967296"],
            vec!["--k-max"],
        ),
        (
            vec!["--n-emb", "20", "--d-in", "18446744073709551615"],
            vec!["--d-in 18446744073709551615", "more than 2^64 bytes"],
        ),
        (
            vec!["--n-emb", "20", "--d-in", "0"],
            vec!["--d-in 0", "at least 1"],
        ),
        (
            vec![
                "--n-emb",
                "20",
                "--method",
                "optimal",
                "--max-bytes-per-token",
                "99999999999999999999999",
                "--d-in",
                "8",
            ],
            vec!["--max-bytes-per-token", "too large"],
        ),
    ] {
        let mut all = vec!["allocate", "--profile", p.as_str(), "--out", out.as_str()];
        all.extend(args);
        refused_in(dir.path(), &all, &needles);
    }
    // 4 x 10^10 rows with k_max 2^32 - 1 fit 10 tokens, and the fill is not a loop over
    // tens of billions of rows.
    let started = Instant::now();
    let res = run([
        "--json",
        "allocate",
        "--profile",
        &p,
        "--n-emb",
        "40000000000",
        "--k-max",
        "4294967295",
        "--fill",
        "round-robin",
        "--d-in",
        "2048",
        "--out",
        &out,
    ]);
    let v: serde_json::Value = serde_json::from_str(&assert_ok(&res)).unwrap();
    assert_eq!(v["n_emb"], 40_000_000_000u64);
    assert_eq!(
        v["memory"]["bytes_per_layer"],
        40_000_000_000u64 * (2048 + 1024) * 2
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    let a = l3kit::Allocation::read(Path::new(&out)).unwrap();
    assert_eq!(a.n_emb(), 40_000_000_000);
    // 4 x 10^10 rows of 3 x 2^49 bf16 values do not fit 64 bits of bytes.
    std::fs::remove_file(&out).unwrap();
    refused_in(
        dir.path(),
        &[
            "allocate",
            "--profile",
            &p,
            "--n-emb",
            "40000000000",
            "--k-max",
            "4294967295",
            "--fill",
            "round-robin",
            "--d-in",
            "1125899906842624",
            "--out",
            &out,
        ],
        &["--d-in 1125899906842624", "more than 2^64 bytes"],
    );
}

#[test]
fn evaluate_with_a_shape_that_overflows() {
    let dir = tempfile::tempdir().unwrap();
    let profile = tiny_profile(dir.path());
    let alloc = dir.path().join("a.st");
    assert_ok(&run([
        "allocate",
        "--profile",
        &s(&profile),
        "--n-emb",
        "20",
        "--out",
        &s(&alloc),
    ]));
    refused_in(
        dir.path(),
        &[
            "evaluate",
            "--allocation",
            &s(&alloc),
            "--profile",
            &s(&profile),
            "--d-in",
            "9223372036854775807",
        ],
        &["--d-in 9223372036854775807", "more than 2^64 bytes"],
    );
}

#[test]
fn plan_sweeps_of_unbounded_size() {
    let dir = tempfile::tempdir().unwrap();
    let profile = tiny_profile(dir.path());
    let out = s(&dir.path().join("plan"));
    let p = s(&profile);
    let many: Vec<String> = (0..65)
        .map(|i| format!("{}", 1.0 + i as f64 / 100.0))
        .collect();
    let many = many.join(",");
    let many_m: Vec<String> = (0..201).map(|i| format!("{}", 1.0 + i as f64)).collect();
    let many_m = many_m.join(",");
    for (args, needles) in [
        (
            vec!["--budgets", "1000000000"],
            vec!["--budgets 1000000000", "out of range"],
        ),
        (vec!["--budgets", "1"], vec!["--budgets 1", "out of range"]),
        (
            vec!["--rows-per-token", many.as_str()],
            vec!["--rows-per-token has 65 values"],
        ),
        (
            vec!["--rows-per-token", "2", "--mean-rows", many_m.as_str()],
            vec!["--mean-rows has 201 values"],
        ),
        (
            vec!["--rows-per-token", "inf"],
            vec!["--rows-per-token inf", "positive"],
        ),
        (
            vec!["--rows-per-token", "1e30"],
            vec![
                "--rows-per-token 1000000000000000000000000000000",
                "--k-max",
            ],
        ),
        (
            vec!["--paper-rows-per-token", "NaN"],
            vec!["--paper-rows-per-token NaN"],
        ),
        (vec!["--k-max", "0"], vec!["--k-max must be at least 1"]),
        (
            vec!["--d-in", "9223372036854775807"],
            vec!["--d-in 9223372036854775807", "2^64 bytes"],
        ),
        (
            vec!["--rows-plot-mean-rows", "inf"],
            vec!["--rows-plot-mean-rows inf"],
        ),
    ] {
        let mut all = vec!["plan", "--profile", p.as_str(), "--out", out.as_str()];
        all.extend(args);
        refused_in(dir.path(), &all, &needles);
    }
}

// ---------------------------------------------------------------------------------------------
// synth: sizes that overflow, outputs beyond the limit or the disk
// ---------------------------------------------------------------------------------------------

#[test]
fn synth_sizes_that_overflow_or_do_not_fit() {
    let dir = tempfile::tempdir().unwrap();
    let out = s(&dir.path().join("ckpt"));
    for (args, needles) in [
        (
            vec!["--d-in", "18446744073709551615"],
            vec!["--d-in 18446744073709551615", "do not fit 64 bits"],
        ),
        (
            vec![
                "--vocab",
                "1000",
                "--n-emb",
                "5000",
                "--d-in",
                "4611686018427387904",
            ],
            vec!["--d-in 4611686018427387904", "do not fit 64 bits"],
        ),
        (
            vec!["--vocab", "9223372036854775808"],
            vec!["--vocab 9223372036854775808", "out of range"],
        ),
        (vec!["--vocab", "0"], vec!["--vocab 0", "out of range"]),
        (
            vec!["--vocab", "100", "--n-emb", "9223372036854775808"],
            vec!["n_emb 9223372036854775808", "exceeds"],
        ),
        (
            vec!["--layers", "4,4"],
            vec!["--layers names layer 4 twice"],
        ),
        (vec!["--d-up", "0"], vec!["at least 1"]),
        (
            // 50,000 x 512 rows of 16384 bf16 values: 0.8 PB.
            vec!["--n-emb", "25600000", "--d-in", "16384", "--d-emb", "16384"],
            vec!["larger than the", "1 TiB"],
        ),
    ] {
        let mut all = vec!["synth", "--out", out.as_str()];
        all.extend(args);
        refused_in(dir.path(), &all, &needles);
    }
    // Below the 1 TiB limit but above the free disk space: rows of 8192 + 8192 bf16 values
    // (32 KiB), two layers, as many rows as twice the free space takes.
    if let Some(free) = free_bytes(dir.path()).filter(|&f| f < 400 << 30) {
        let n_emb = (2 * free / (2 * 32768)).max(1_000_000).to_string();
        refused_in(
            dir.path(),
            &[
                "synth", "--out", &out, "--vocab", "50000", "--k-max", "100000", "--n-emb", &n_emb,
                "--d-in", "8192", "--d-emb", "8192",
            ],
            &["disk space", "free"],
        );
    }
    // A file where the folder should be.
    let file = dir.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    refused_in(
        dir.path(),
        &[
            "synth",
            "--vocab",
            "64",
            "--n-emb",
            "128",
            "--out",
            &s(&file),
        ],
        &["--out", "must be a folder"],
    );
    // A small checkpoint still works, and is valid safetensors.
    let out = dir.path().join("ckpt");
    assert_ok(&run([
        "synth",
        "--vocab",
        "64",
        "--n-emb",
        "200",
        "--k-max",
        "16",
        "--d-in",
        "16",
        "--d-emb",
        "8",
        "--d-up",
        "32",
        "--layers",
        "1,3",
        "--out",
        &s(&out),
    ]));
    let names: BTreeMap<String, ()> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| (e.unwrap().file_name().to_string_lossy().into_owned(), ()))
        .collect();
    assert_eq!(
        names.keys().collect::<Vec<_>>(),
        ["allocation.safetensors", "model.safetensors"]
    );
    let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
    safetensors::SafeTensors::deserialize(&bytes).unwrap();
}

fn free_bytes(path: &Path) -> Option<u64> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: statvfs fills the zeroed struct; the path is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}
