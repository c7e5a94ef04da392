//! `l3kit traffic`: the bytes per step follow from the allocation and the stream, the stall
//! model is exact on hand-computed cases, a hot set removes exactly its tokens' rows, and bad
//! input is refused.

mod common;

use common::{assert_ok, assert_refused, fixture, mkfifo, run};
use l3kit::infer::traffic::predicted_stall_seconds;
use l3kit::util::safetensors_file::MappedSafetensors;

fn s(p: &std::path::Path) -> String {
    p.display().to_string()
}

#[test]
fn the_stall_model_matches_hand_computed_cases() {
    // 1 MB over 1 MB/s, needed after 2 blocks of 0.25 s: 0.5 s late.
    assert!((predicted_stall_seconds(&[1_000_000], &[2], 1e6, 0.25) - 0.5).abs() < 1e-12);
    // Arrives before it is needed: no stall.
    assert_eq!(predicted_stall_seconds(&[100], &[4], 1e6, 0.25), 0.0);
    // Two layers: the second's rows arrive after the first's (cumulative 3 s), needed at 2 s.
    let two = predicted_stall_seconds(&[1_000_000, 2_000_000], &[1, 4], 1e6, 0.5);
    assert!((two - 1.0).abs() < 1e-12, "{two}");
}

#[test]
fn bytes_per_step_follow_the_allocation_and_a_hot_set_saves_its_rows() {
    let dir = tempfile::tempdir().unwrap();
    // Four sequences of known ids: step s holds ids[b * per_seq + s].
    let ids: Vec<u16> = vec![5, 6, 7, 5, 5, 9, 5, 6, 8, 1, 2, 3];
    let path = dir.path().join("ids.u16");
    std::fs::write(
        &path,
        ids.iter()
            .flat_map(|i| i.to_le_bytes())
            .collect::<Vec<u8>>(),
    )
    .unwrap();
    let out = run([
        "--json",
        "traffic",
        "--model",
        &s(&fixture("trained")),
        "--tokens",
        &s(&path),
        "--batch",
        "1,4",
    ]);
    let v: serde_json::Value = serde_json::from_str(&assert_ok(&out)).unwrap();
    let f = MappedSafetensors::open(&fixture("trained/allocation.safetensors")).unwrap();
    let bounds = f.vec_i64("bounds").unwrap();
    let rows = |t: u16| (bounds[t as usize + 1] - bounds[t as usize]) as f64;
    // Paper dialect, f32 tables: (64 key + 32 value) x 4 bytes per row, two layers.
    let row_bytes = 96.0 * 4.0 * 2.0;
    let m = &v["models"][0];
    assert_eq!(m["sparse_layers"], 2);
    let b4 = &m["batches"][1];
    assert_eq!(b4["batch"], 4);
    assert_eq!(b4["steps"], 3);
    // Steps: {5,5,5,1} {6,5,6,2} {7,9,8,3}: 2, 3 and 4 distinct tokens.
    let want = [
        rows(5) + rows(1),
        rows(6) + rows(5) + rows(2),
        rows(7) + rows(9) + rows(8) + rows(3),
    ]
    .iter()
    .sum::<f64>()
        / 3.0
        * row_bytes;
    let got = b4["mean_bytes_per_step"].as_f64().unwrap();
    assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    assert!((b4["mean_distinct_tokens"].as_f64().unwrap() - 3.0).abs() < 1e-12);
    assert!(b4["predicted_stall_ms"].is_null(), "no link, no prediction");

    // A hot set ranked by a profile: its hit rate and savings are those of its tokens.
    let prof = dir.path().join("p.safetensors");
    assert_ok(&run([
        "profile",
        "--tokenizer",
        &s(&fixture("tokenizer/tiny-bpe-512.json")),
        &s(&fixture("corpus/train.txt")),
        "--out",
        &s(&prof),
    ]));
    let out = run([
        "--json",
        "traffic",
        "--model",
        &s(&fixture("trained")),
        "--text",
        &s(&fixture("corpus/heldout.txt")),
        "--tokenizer",
        &s(&fixture("tokenizer/tiny-bpe-512.json")),
        "--batch",
        "1,16",
        "--link",
        "0.0001",
        "--block-ms",
        "0.1",
        "--hot-set",
        "512",
        "--profile",
        &s(&prof),
    ]);
    let v: serde_json::Value = serde_json::from_str(&assert_ok(&out)).unwrap();
    for b in v["models"][0]["batches"].as_array().unwrap() {
        let hot = &b["hot"];
        // Every token is in a hot set of the whole vocabulary: nothing moves.
        assert_eq!(hot["hit_rate"].as_f64().unwrap(), 1.0);
        assert_eq!(
            hot["mean_bytes_saved_per_step"].as_f64().unwrap(),
            b["mean_bytes_per_step"].as_f64().unwrap()
        );
        assert_eq!(b["predicted_stall_ms_with_hot_set"].as_f64().unwrap(), 0.0);
        // At 100 KB/s the rows cannot arrive in time.
        assert!(b["predicted_stall_ms"].as_f64().unwrap() > 0.0);
        assert_eq!(b["timing"]["source"], "given");
    }
}

#[test]
fn bad_input_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let short = dir.path().join("short.u16");
    std::fs::write(&short, [1u8, 0, 2, 0]).unwrap();
    let big = dir.path().join("big.u16");
    std::fs::write(&big, [0xffu8, 0x7f]).unwrap();
    let base = |tokens: &std::path::Path, extra: &[&str]| {
        let mut a = vec![
            "traffic".to_string(),
            "--model".into(),
            s(&fixture("trained")),
            "--tokens".into(),
            s(tokens),
        ];
        a.extend(extra.iter().map(|x| x.to_string()));
        run(a)
    };
    assert_refused(
        &base(&short, &["--batch", "4"]),
        2,
        &["too few for --batch 4"],
    );
    assert_refused(&base(&big, &[]), 2, &["big.u16", "32767"]);
    assert_refused(&base(&short, &["--link", "0"]), 2, &["--link 0"]);
    assert_refused(&base(&short, &["--batch", "0"]), 2, &["--batch 0"]);
    let text = fixture("corpus/heldout.txt");
    assert_refused(&base(&text, &[]), 2, &["--tokens reads .u16 or .u32"]);
    // The output folder may not be the model's.
    let model = s(&fixture("trained"));
    assert_refused(
        &base(&short, &["--out", &model]),
        2,
        &["--out", "is the input"],
    );
}

#[test]
fn out_writes_the_summary_and_the_plot() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("traffic");
    let v: serde_json::Value = serde_json::from_str(&assert_ok(&run([
        "--json",
        "traffic",
        "--model",
        &s(&fixture("trained")),
        "--text",
        &s(&fixture("corpus/heldout.txt")),
        "--tokenizer",
        &s(&fixture("tokenizer/tiny-bpe-512.json")),
        "--batch",
        "1,4",
        "--link",
        "1",
        "--block-ms",
        "0.5",
        "--out",
        &s(&out),
    ])))
    .unwrap();
    let written: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("traffic.json")).unwrap()).unwrap();
    assert_eq!(written, v, "traffic.json holds what --json prints");
    assert!(std::fs::read(out.join("traffic.png"))
        .unwrap()
        .starts_with(b"\x89PNG"));
    let svg = std::fs::read_to_string(out.join("traffic.svg")).unwrap();
    assert!(svg.contains("<svg") && svg.contains("bytes the sparse layers move"));
}

#[test]
fn an_moe_model_reports_its_experts_on_the_critical_path() {
    let out = run([
        "--json",
        "traffic",
        "--model",
        &s(&fixture("trained-moe")),
        "--text",
        &s(&fixture("corpus/heldout.txt")),
        "--tokenizer",
        &s(&fixture("tokenizer/tiny-bpe-512.json")),
        "--batch",
        "1,8",
        "--steps",
        "16",
        "--link",
        "1",
    ]);
    let v: serde_json::Value = serde_json::from_str(&assert_ok(&out)).unwrap();
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("trained-moe/config.json")).unwrap())
            .unwrap();
    let experts = config["experts"].as_f64().unwrap();
    let mut distinct_at = Vec::new();
    for b in v["models"][0]["batches"].as_array().unwrap() {
        let m = &b["moe"];
        assert!(m["known_at"].as_str().unwrap().contains("router"));
        let per_layer = m["mean_distinct_experts"].as_array().unwrap();
        assert!(!per_layer.is_empty());
        let mut bytes = 0.0;
        for (d, e) in per_layer.iter().zip(m["expert_bytes"].as_array().unwrap()) {
            let d = d.as_f64().unwrap();
            assert!((1.0..=experts).contains(&d), "{d} of {experts} experts");
            bytes += d * e.as_f64().unwrap();
        }
        let got = m["mean_bytes_per_step"].as_f64().unwrap();
        assert!((got - bytes).abs() <= 1e-6 * bytes, "{got} vs {bytes}");
        // Nothing hides the experts' transfer: the stall is all of it (1 GB/s).
        let stall = m["predicted_stall_ms"].as_f64().unwrap();
        assert!((stall - bytes / 1e9 * 1e3).abs() <= 1e-9 * bytes, "{stall}");
        distinct_at.push(per_layer[0].as_f64().unwrap());
    }
    assert!(
        distinct_at[1] >= distinct_at[0],
        "a batch of 8 uses at least as many experts per step as one sequence: {distinct_at:?}"
    );
}

#[test]
fn tokens_stream_through_a_fifo_and_a_folder_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("ids.u16");
    mkfifo(&fifo);
    let writer = {
        let fifo = fifo.clone();
        std::thread::spawn(move || {
            let ids: Vec<u8> = (0..64u16).flat_map(|i| (i % 500).to_le_bytes()).collect();
            std::fs::write(&fifo, ids).unwrap();
        })
    };
    let out = run([
        "--json",
        "traffic",
        "--model",
        &s(&fixture("trained")),
        "--tokens",
        &s(&fifo),
        "--batch",
        "4",
    ]);
    writer.join().unwrap();
    let v: serde_json::Value = serde_json::from_str(&assert_ok(&out)).unwrap();
    assert_eq!(v["stream_tokens"], 64);
    let folder = dir.path().join("d.u16");
    std::fs::create_dir(&folder).unwrap();
    let out = run([
        "traffic",
        "--model",
        &s(&fixture("trained")),
        "--tokens",
        &s(&folder),
    ]);
    assert_refused(&out, 2, &["d.u16", "not a regular file or a FIFO"]);
}
