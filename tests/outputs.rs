//! `--out` of every command that writes, against every way an output can destroy something:
//! equal to an input (spelled directly, through `..`, through a symlinked folder), inside an
//! input, containing an input, a FIFO, a device node, a dangling link, a file output spelled
//! as a folder; with and without `--force`. Each is exit 2 naming `--out`, before any work,
//! with every file under the test folder unchanged and nothing left behind.

mod common;

use common::{assert_refused, fixture, mkfifo, run, snapshot};
use l3kit::checkpoint::dialect::Dialect;
use l3kit::formats::dtype::TableDtype;
use l3kit::pack::{pack, PackOptions};
use l3kit::util::progress::Ui;
use std::path::{Path, PathBuf};

fn s(p: &Path) -> String {
    p.display().to_string()
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    File,
    Folder,
}

/// A command's arguments for a given `--out`.
type ArgsFor = Box<dyn Fn(&Path) -> Vec<String>>;

/// One command that writes: its arguments for a given `--out`, the inputs it reads, whether
/// its output is a file or a folder, and whether it takes `--force`.
struct Writer {
    name: &'static str,
    args: ArgsFor,
    inputs: Vec<PathBuf>,
    kind: Kind,
    force: bool,
}

/// `route` on an MoE file that is both its model and its inputs, with `extra` flags.
fn route_writer(name: &'static str, moe: &Path, extra: &[&str], kind: Kind) -> Writer {
    let m = s(moe);
    let mut base: Vec<String> = vec!["route".into(), "--model".into(), m.clone()];
    base.extend(["--inputs".into(), m]);
    base.extend(extra.iter().map(|a| a.to_string()));
    Writer {
        name,
        args: Box::new(move |out| {
            let mut a = base.clone();
            a.extend(["--out".into(), s(out)]);
            a
        }),
        inputs: vec![moe.to_path_buf()],
        kind,
        force: false,
    }
}

struct World {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    writers: Vec<Writer>,
}

/// Every input every command needs, in one folder, and the commands over them.
fn world() -> World {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let corpus = root.join("corpus.txt");
    std::fs::write(
        &corpus,
        "the cat sat on the mat\nthe dog sat on the log\nthe cat saw the dog\n".repeat(20),
    )
    .unwrap();
    let tokenizer = root.join("tokenizer.json");
    std::fs::copy(fixture("tokenizer/tiny-bpe-512.json"), &tokenizer).unwrap();
    let profile = root.join("profile.safetensors");
    common::assert_ok(&run([
        "profile",
        "--tokenizer",
        &s(&tokenizer),
        &s(&corpus),
        "--out",
        &s(&profile),
    ]));
    let heldout = root.join("heldout.safetensors");
    std::fs::copy(&profile, &heldout).unwrap();
    let source = root.join("source");
    l3kit::synth::small(&source, Dialect::Paper, TableDtype::F32).unwrap();
    let allocation = source.join("allocation.safetensors");
    let packed = root.join("packed");
    let mut o = PackOptions::new(source.clone(), packed.clone());
    o.allocation = Some(allocation.clone());
    pack(&o, &Ui::quiet()).unwrap();
    let inputs = root.join("inputs.safetensors");
    let ids = [0u32, 1, 5, 63, 2];
    let hidden: Vec<f32> = (0..ids.len() * 16).map(|i| (i % 7) as f32 / 7.0).collect();
    l3kit::verify::write_inputs(&inputs, &ids, &[("hidden".into(), hidden, 16)]).unwrap();
    let data = root.join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("README"), "demo data").unwrap();
    // An MoE layer whose file also holds its hidden states.
    let moe = root.join("moe.safetensors");
    std::fs::copy(fixture("golden/moe-mixtral.safetensors"), &moe).unwrap();

    let writers = vec![
        Writer {
            name: "profile",
            args: {
                let (t, c) = (s(&tokenizer), s(&corpus));
                Box::new(move |out| {
                    vec![
                        "profile".into(),
                        "--tokenizer".into(),
                        t.clone(),
                        c.clone(),
                        "--out".into(),
                        s(out),
                    ]
                })
            },
            inputs: vec![corpus.clone(), tokenizer.clone()],
            kind: Kind::File,
            force: false,
        },
        Writer {
            name: "allocate",
            args: {
                let p = s(&profile);
                Box::new(move |out| {
                    vec![
                        "allocate".into(),
                        "--profile".into(),
                        p.clone(),
                        "--n-emb".into(),
                        "2000".into(),
                        "--out".into(),
                        s(out),
                    ]
                })
            },
            inputs: vec![profile.clone()],
            kind: Kind::File,
            force: false,
        },
        Writer {
            name: "plan",
            args: {
                let (p, h) = (s(&profile), s(&heldout));
                Box::new(move |out| {
                    vec![
                        "plan".into(),
                        "--profile".into(),
                        p.clone(),
                        "--heldout".into(),
                        h.clone(),
                        "--out".into(),
                        s(out),
                    ]
                })
            },
            inputs: vec![profile.clone(), heldout.clone()],
            kind: Kind::Folder,
            force: false,
        },
        Writer {
            name: "pack",
            args: {
                let (src, a) = (s(&source), s(&allocation));
                Box::new(move |out| {
                    vec![
                        "pack".into(),
                        src.clone(),
                        "--allocation".into(),
                        a.clone(),
                        "--out".into(),
                        s(out),
                    ]
                })
            },
            inputs: vec![source.clone(), allocation.clone()],
            kind: Kind::Folder,
            force: true,
        },
        Writer {
            name: "unpack",
            args: {
                let p = s(&packed);
                Box::new(move |out| vec!["unpack".into(), p.clone(), "--out".into(), s(out)])
            },
            inputs: vec![packed.clone()],
            kind: Kind::Folder,
            force: true,
        },
        Writer {
            name: "forward",
            args: {
                let (m, i) = (s(&packed), s(&inputs));
                Box::new(move |out| {
                    vec![
                        "forward".into(),
                        "--model".into(),
                        m.clone(),
                        "--inputs".into(),
                        i.clone(),
                        "--out".into(),
                        s(out),
                    ]
                })
            },
            inputs: vec![packed.clone(), inputs.clone()],
            kind: Kind::File,
            force: false,
        },
        route_writer("route", &moe, &["--routing", "topk:2"], Kind::File),
        route_writer(
            "route --calibrate",
            &moe,
            &["--calibrate", "--target", "2", "--batch-tokens", "32"],
            Kind::Folder,
        ),
        Writer {
            name: "synth",
            args: Box::new(|out| {
                [
                    "synth", "--vocab", "64", "--n-emb", "200", "--k-max", "16", "--d-in", "16",
                    "--d-emb", "8", "--out",
                ]
                .iter()
                .map(|a| a.to_string())
                .chain([s(out)])
                .collect()
            }),
            inputs: vec![],
            kind: Kind::Folder,
            force: false,
        },
        Writer {
            name: "demo",
            args: {
                let d = s(&data);
                Box::new(move |out| {
                    vec![
                        "demo".into(),
                        "--data".into(),
                        d.clone(),
                        "--out".into(),
                        s(out),
                    ]
                })
            },
            inputs: vec![data.clone()],
            kind: Kind::Folder,
            force: false,
        },
    ];
    World {
        _tmp: tmp,
        root,
        writers,
    }
}

/// What the message says when the output overlaps an input.
const OVERLAP: &str = "the input";

/// `--out` values that must be refused for `w`, each with what the message must say.
/// (An output that overlaps several inputs is reported against the first it meets, so
/// an overlap only promises "... the input ...".)
fn hostile_outputs(w: &Writer, root: &Path) -> Vec<(PathBuf, &'static str)> {
    let mut cases = Vec::new();
    for input in &w.inputs {
        let parent = input.parent().unwrap();
        let name = input.file_name().unwrap();
        cases.push((input.clone(), OVERLAP));
        // The same path through `..` and through a symlinked folder.
        let detour = parent
            .join("..")
            .join(parent.file_name().unwrap())
            .join(name);
        cases.push((detour, OVERLAP));
        let alias = root.join("alias");
        cases.push((alias.join(input.strip_prefix(root).unwrap()), OVERLAP));
        cases.push((input.join("sub"), OVERLAP));
        cases.push((parent.to_path_buf(), OVERLAP));
    }
    cases.push((root.join("fifo"), "FIFO"));
    cases.push((root.join("dangling"), "dangling symbolic link"));
    if root.join("null-device").exists() {
        cases.push((root.join("null-device"), "character device"));
    }
    if w.kind == Kind::File {
        cases.push((root.join("newdir/"), "names a folder"));
    }
    cases
}

#[test]
fn every_writer_refuses_every_destructive_output() {
    let world = world();
    let root = &world.root;
    std::os::unix::fs::symlink(root, root.join("alias")).unwrap();
    mkfifo(&root.join("fifo"));
    std::os::unix::fs::symlink(root.join("nowhere"), root.join("dangling")).unwrap();
    // A device node of our own (as root) rather than a system one: a regression here must
    // not replace /dev/null on the machine running the tests.
    let dev = std::ffi::CString::new(s(&root.join("null-device"))).unwrap();
    // SAFETY: mknod with a valid NUL-terminated path; failure (not root) just skips the case.
    unsafe {
        libc::mknod(dev.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(1, 3));
    }
    let before = snapshot(root);
    let mut checked = 0;
    for w in &world.writers {
        for (out, needle) in hostile_outputs(w, root) {
            let forces: &[bool] = if w.force { &[false, true] } else { &[false] };
            for &force in forces {
                let mut args = (w.args)(&out);
                if force {
                    args.push("--force".into());
                }
                let o = run(&args);
                assert_refused(&o, 2, &["--out", needle]);
                assert_eq!(
                    snapshot(root),
                    before,
                    "{} --out {} (force {force}) changed the folder",
                    w.name,
                    out.display()
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 60, "{checked} cases");
}

/// A folder output spelled `newdir/` that fails after its checks leaves nothing behind.
#[test]
fn failed_runs_into_a_trailing_slash_folder_leave_nothing() {
    let world = world();
    let root = &world.root;
    let garbage = root.join("garbage.safetensors");
    std::fs::write(&garbage, b"not a safetensors file at all").unwrap();
    let before = snapshot(root);
    let newdir = format!("{}/", s(&root.join("newdir")));
    let source = s(&root.join("source"));
    let packed = s(&root.join("packed"));
    let failing: Vec<Vec<String>> = vec![
        vec![
            "pack".into(),
            source,
            "--allocation".into(),
            s(&garbage),
            "--out".into(),
            newdir.clone(),
        ],
        vec![
            "plan".into(),
            "--profile".into(),
            s(&garbage),
            "--out".into(),
            newdir.clone(),
        ],
        vec![
            "unpack".into(),
            packed,
            "--max-shard-size".into(),
            "0".into(),
            "--out".into(),
            newdir.clone(),
        ],
        vec![
            "synth".into(),
            "--d-in".into(),
            "18446744073709551615".into(),
            "--out".into(),
            newdir,
        ],
    ];
    for args in failing {
        let o = run(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", common::stderr(&o));
        assert_eq!(snapshot(root), before, "{args:?} left something behind");
    }
}
