//! SIGKILL `pack`, `unpack`, `profile` and `plan` at random moments: afterwards the
//! destination either does not exist or is the complete output (byte for byte the output of
//! an uninterrupted run), the next run into the same destination succeeds, and it removes the
//! hidden temporaries the killed runs left (`.NAME.l3kit-tmp-PID`, docs/format.md).
//!
//! The delays come from a seeded RNG, spread over the length of an uninterrupted run, so a
//! failure reproduces with the same seed (`L3KIT_KILL_SEED`).

mod common;

use common::{fixture, snapshot};
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const KILLS: usize = 50;

fn seed() -> u64 {
    std::env::var("L3KIT_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x13_4b17)
}

fn command(args: &[OsString]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_l3kit"));
    cmd.arg("--quiet")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

fn run_to_completion(args: &[OsString]) -> Duration {
    let started = Instant::now();
    let out = command(args).output().unwrap();
    assert!(
        out.status.success(),
        "l3kit {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    started.elapsed()
}

/// What is at `dest`: None when nothing, else every file's hash (a file destination is one
/// entry with an empty name).
fn state(dest: &Path) -> Option<BTreeMap<PathBuf, String>> {
    let meta = std::fs::symlink_metadata(dest).ok()?;
    if meta.is_dir() {
        return Some(snapshot(dest));
    }
    use sha2::{Digest, Sha256};
    let bytes = std::fs::read(dest).unwrap();
    let mut one = BTreeMap::new();
    one.insert(PathBuf::new(), hex::encode(Sha256::digest(bytes)));
    Some(one)
}

fn temporaries(dest: &Path) -> Vec<String> {
    let parent = dest.parent().unwrap();
    std::fs::read_dir(parent)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".l3kit-tmp-"))
        .collect()
}

/// Run `args` (which write `dest`) once to learn its output and its length, then kill it
/// `KILLS` times at random moments within that length; check the destination after each
/// kill, and that a final run restores the output and leaves no temporaries.
fn kill_at_random_moments(what: &str, args: &[OsString], dest: &Path, seed: u64) {
    let length = run_to_completion(args);
    let complete = state(dest).expect("an uninterrupted run writes its output");
    std::fs::remove_dir_all(dest)
        .or_else(|_| std::fs::remove_file(dest))
        .unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let span = (length.as_micros() as u64).max(1000);
    let (mut interrupted, mut finished) = (0, 0);
    for kill in 0..KILLS {
        let delay = Duration::from_micros(rng.random_range(0..=span));
        let mut child = command(args).spawn().unwrap();
        std::thread::sleep(delay);
        match child.try_wait().unwrap() {
            Some(_) => finished += 1,
            None => interrupted += 1,
        }
        child.kill().ok(); // SIGKILL
        child.wait().unwrap();
        if let Some(found) = state(dest) {
            assert!(
                found == complete,
                "{what}: kill {kill} after {delay:?} (seed {seed}) left a destination that is \
                 not the complete output: {found:?}"
            );
        }
        // The killed run's temporaries may lie there now, but never more than one run's:
        // every run removes those of runs that are gone.
        let left = temporaries(dest);
        assert!(
            left.len() <= 2,
            "{what}: temporaries pile up after kill {kill}: {left:?}"
        );
    }
    assert!(
        interrupted >= KILLS / 2,
        "{what}: only {interrupted} of {KILLS} kills hit a running process ({finished} had \
         finished); the delays do not test anything"
    );
    run_to_completion(args);
    assert_eq!(
        state(dest).as_ref(),
        Some(&complete),
        "{what}: the run after the kills"
    );
    assert_eq!(
        temporaries(dest),
        Vec::<String>::new(),
        "{what}: the run after the kills leaves no temporaries"
    );
}

fn os(parts: &[&dyn AsRef<std::ffi::OsStr>]) -> Vec<OsString> {
    parts.iter().map(|p| p.as_ref().to_os_string()).collect()
}

#[test]
fn profile_and_plan_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let profile = dir.path().join("heldout.safetensors");
    let profile_args = os(&[
        &"profile",
        &"--tokenizer",
        &fixture("tokenizer/tiny-bpe-512.json"),
        &fixture("corpus/heldout.txt"),
        &"--out",
        &profile,
    ]);
    kill_at_random_moments("profile", &profile_args, &profile, seed());
    let plan = dir.path().join("plan");
    let plan_args = os(&[
        &"plan",
        &"--profile",
        &profile,
        &"--budgets",
        &"3",
        &"--rows-per-token",
        &"2,4",
        &"--out",
        &plan,
    ]);
    kill_at_random_moments("plan", &plan_args, &plan, seed() + 1);
}

#[test]
fn pack_and_unpack_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source");
    run_to_completion(&os(&[
        &"synth", &"--vocab", &"2000", &"--n-emb", &"8000", &"--k-max", &"64", &"--d-in", &"128",
        &"--d-emb", &"128", &"--out", &source,
    ]));
    let packed = dir.path().join("packed");
    let pack_args = os(&[
        &"pack",
        &source,
        &"--allocation",
        &source.join("allocation.safetensors"),
        &"--force",
        &"--out",
        &packed,
    ]);
    kill_at_random_moments("pack", &pack_args, &packed, seed() + 2);
    let check = command(&os(&[&"inspect", &"--check", &packed]))
        .output()
        .unwrap();
    assert!(check.status.success(), "the packed folder passes the check");
    let unpacked = dir.path().join("unpacked");
    let unpack_args = os(&[&"unpack", &packed, &"--force", &"--out", &unpacked]);
    kill_at_random_moments("unpack", &unpack_args, &unpacked, seed() + 3);
}
