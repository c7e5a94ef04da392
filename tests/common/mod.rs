//! Helpers for tests that feed the binary hostile or careless input: run it under a memory
//! limit and a time limit, check how it failed, and check that nothing was left behind and no
//! input was changed.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture(rel: &str) -> PathBuf {
    manifest_dir().join("fixtures").join(rel)
}

/// How a hostile run is confined.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Address-space limit (RLIMIT_AS) of the child, in bytes.
    pub memory: u64,
    /// Wall-clock limit; a run past it is killed and the test fails as a hang.
    pub time: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        // Small inputs must never make big allocations: 1.5 GiB of address space is far
        // above what any of them needs (the binary maps ~100 MB) and far below what the
        // faults this guards against allocate.
        Limits {
            memory: 1536 << 20,
            time: Duration::from_secs(60),
        }
    }
}

/// Run `l3kit --quiet ARGS` under `limits`, with extra environment variables.
pub fn run_limited<I, S>(args: I, env: &[(&str, &str)], limits: &Limits) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_l3kit"));
    cmd.arg("--quiet")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // glibc reserves 64 MB of address space per malloc arena; keep them few so the
        // address-space limit measures allocations, not arenas.
        .env("MALLOC_ARENA_MAX", "2")
        .env("RUST_BACKTRACE", "0");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let memory = limits.memory;
    // SAFETY: setrlimit is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: memory,
                rlim_max: memory,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("the l3kit binary starts");
    let started = Instant::now();
    // Drain the pipes on threads so a chatty child cannot block on a full pipe.
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut so, &mut v).ok();
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut se, &mut v).ok();
        v
    });
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for l3kit") {
            break s;
        }
        if started.elapsed() > limits.time {
            child.kill().ok();
            child.wait().ok();
            panic!(
                "l3kit hung: still running after {:?}; args {:?}",
                limits.time,
                cmd.get_args().collect::<Vec<_>>()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: t_out.join().unwrap(),
        stderr: t_err.join().unwrap(),
    }
}

/// [`run_limited`] with the default limits and no extra environment.
pub fn run<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run_limited(args, &[], &Limits::default())
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Assert a clean refusal: exit `code` (2 for bad input, 1 for a failed check), an error on
/// stderr that contains every needle, and no panic, abort or backtrace.
#[track_caller]
pub fn assert_refused(out: &Output, code: i32, needles: &[&str]) {
    let err = stderr(out);
    assert_eq!(
        out.status.code(),
        Some(code),
        "expected exit {code}, got {:?}\nstdout:\n{}\nstderr:\n{err}",
        out.status,
        stdout(out)
    );
    for bad in [
        "panicked",
        "RUST_BACKTRACE",
        "stack backtrace",
        "memory allocation of",
    ] {
        assert!(!err.contains(bad), "stderr shows a crash ({bad}):\n{err}");
    }
    for n in needles {
        assert!(err.contains(n), "stderr lacks {n:?}:\n{err}");
    }
}

/// Assert success and return stdout.
#[track_caller]
pub fn assert_ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "l3kit failed with {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        stdout(out),
        stderr(out)
    );
    stdout(out)
}

/// Every entry under `dir` (hidden ones included, symlinks not followed) with its kind and,
/// for regular files, a hash of the contents: compare two snapshots to prove that a run left
/// nothing behind and changed no input.
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            let desc = if meta.file_type().is_symlink() {
                format!("link -> {}", std::fs::read_link(&p).unwrap().display())
            } else if meta.is_dir() {
                walk(root, &p, out);
                "dir".to_string()
            } else if meta.is_file() {
                use sha2::{Digest, Sha256};
                let bytes = std::fs::read(&p).unwrap();
                format!("file {}", hex::encode(Sha256::digest(&bytes)))
            } else {
                "special".to_string()
            };
            out.insert(rel, desc);
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Make a FIFO at `path`.
pub fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(
        unsafe { libc::mkfifo(c.as_ptr(), 0o600) },
        0,
        "mkfifo {path:?}"
    );
}
