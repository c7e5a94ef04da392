//! The files of an upload: which files of the folder are sent (those its index lists and the
//! known side files, nothing else), how each is opened (regular files only, never through a link
//! that leaves the folder), their hashes, and which travel as large (LFS) files.
//!
//! Why an allowlist rather than "every file in the folder": a packed folder is also a working
//! folder (notes, logs, a token file, a link someone made to look at something), and whatever
//! upload sends becomes public on the Hub. The index says which files make the model; the side
//! files are the ones the Hugging Face tools and l3kit's readers look for beside it.

use super::{SkippedFile, LARGE_FILE_BYTES};
use crate::formats::packed::{CONFIG_FILE, INDEX_FILE};
use crate::formats::safetensors::safe_relative;
use crate::util::error::{Error, IoContext, Result};
use crate::util::fs::{kind_of, open_regular};
use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

/// Files sent from the top of the folder besides those the index lists, when present (see
/// `docs/upload.md`): the model card, the configs and tokenizer files of the Hugging Face
/// tools, the allocation, and the repository's `.gitattributes`. `meta_*.json` (the nanochat
/// fork's model config) and `LICENSE*` are matched by [`is_side_file`].
pub const SIDE_FILES: &[&str] = &[
    "README.md",
    CONFIG_FILE,
    INDEX_FILE,
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "vocab.json",
    "merges.txt",
    "allocation.safetensors",
    ".gitattributes",
];

/// Whether `name` (a file at the top of the folder) is a side file that upload sends.
pub fn is_side_file(name: &str) -> bool {
    SIDE_FILES.contains(&name)
        || (name.starts_with("meta_") && name.ends_with(".json") && !name.contains('/'))
        || (name.starts_with("LICENSE") && !name.contains('/'))
}

/// Where a file's bytes come from.
#[derive(Clone, Debug)]
pub(crate) enum Source {
    /// A file of the folder, opened once when the files were listed: every later read goes
    /// through this handle, so the bytes sent are those of the file that was checked.
    File {
        path: PathBuf,
        file: Arc<File>,
    },
    Generated(Vec<u8>),
}

#[derive(Clone, Debug)]
pub(crate) struct LocalFile {
    pub path: String,
    pub source: Source,
    pub size: u64,
    pub sha256: String,
    pub modified: Option<SystemTime>,
    /// The device and inode of the opened file (to notice the path being replaced).
    pub identity: Option<(u64, u64)>,
    pub large: bool,
}

impl LocalFile {
    pub(crate) fn sample(&self) -> Result<Vec<u8>> {
        match &self.source {
            Source::Generated(b) => Ok(b[..b.len().min(512)].to_vec()),
            Source::File { path, file } => {
                let mut buf = vec![0u8; self.size.min(512) as usize];
                file.read_exact_at(&mut buf, 0)
                    .map_err(|e| changed_or_io(path, e))?;
                Ok(buf)
            }
        }
    }

    /// The whole file (only for files the Hub takes inline, which are at most
    /// `MAX_INLINE_BYTES`; the size is the one measured on the open handle).
    pub(crate) fn bytes(&self) -> Result<Vec<u8>> {
        match &self.source {
            Source::Generated(b) => Ok(b.clone()),
            Source::File { path, file } => {
                let len = usize::try_from(self.size)
                    .map_err(|_| Error::in_file(path, "is too large to send inline"))?;
                let mut buf = vec![0u8; len];
                file.read_exact_at(&mut buf, 0)
                    .map_err(|e| changed_or_io(path, e))?;
                Ok(buf)
            }
        }
    }

    /// The git blob id (`sha1("blob {len}\0" + bytes)`), which the Hub reports for regular files.
    pub(crate) fn git_blob_id(&self) -> Result<String> {
        use sha1::{Digest, Sha1};
        let mut h = Sha1::new();
        h.update(format!("blob {}\0", self.size).as_bytes());
        match &self.source {
            Source::Generated(b) => h.update(b),
            Source::File { path, file } => {
                for_each_chunk(file, path, self.size, |c| h.update(c))?;
            }
        }
        Ok(hex::encode(h.finalize()))
    }
}

/// Feed exactly `size` bytes of `file` to `f`, a MiB at a time.
fn for_each_chunk(file: &File, path: &Path, size: u64, mut f: impl FnMut(&[u8])) -> Result<()> {
    let mut buf = vec![0u8; (1 << 20).min(size as usize).max(1)];
    let mut pos = 0u64;
    while pos < size {
        let n = (size - pos).min(buf.len() as u64) as usize;
        file.read_exact_at(&mut buf[..n], pos)
            .map_err(|e| changed_or_io(path, e))?;
        f(&buf[..n]);
        pos += n as u64;
    }
    Ok(())
}

fn changed_or_io(path: &Path, e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        Error::in_file(
            path,
            "became shorter while it was read; nothing was committed, run the upload again",
        )
    } else {
        Error::io(path, e)
    }
}

/// Extensions the Hub's default `.gitattributes` stores in LFS (a dry run's guess).
pub(crate) const LFS_EXTENSIONS: &[&str] = &[
    "7z",
    "arrow",
    "bin",
    "bz2",
    "ckpt",
    "ftz",
    "gguf",
    "gz",
    "h5",
    "joblib",
    "mlmodel",
    "model",
    "msgpack",
    "npy",
    "npz",
    "onnx",
    "ot",
    "parquet",
    "pb",
    "pickle",
    "pkl",
    "pt",
    "pth",
    "rar",
    "safetensors",
    "tar",
    "tflite",
    "tgz",
    "wasm",
    "xz",
    "zip",
    "zst",
];

pub(crate) fn guess_large(path: &str, size: u64) -> bool {
    let ext = path.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase());
    size >= LARGE_FILE_BYTES || ext.is_some_and(|e| LFS_EXTENSIONS.contains(&e.as_str()))
}

/// The files to send, sorted by repository path (each opened, with the SHA-256 from the index
/// when the check just verified it, else computed here), and every other entry of the folder
/// with the reason it is not sent.
pub(crate) fn collect_files(
    dir: &Path,
    verified: &BTreeMap<String, String>,
) -> Result<(Vec<LocalFile>, Vec<SkippedFile>)> {
    let root = dir.canonicalize().map_err(|e| Error::io(dir, e))?;
    let index_path = dir.join(INDEX_FILE);
    // Repository path -> the SHA-256 the index records (None: a side file, hashed here).
    let mut send: BTreeMap<String, Option<String>> = BTreeMap::new();
    for (key, sha) in verified {
        let rel = safe_relative(key).map_err(|why| {
            Error::in_file(
                &index_path,
                format!(
                    "metadata.sha256 lists {key:?}: {why}; upload sends only files inside the \
                     folder, so the index must name them by relative paths"
                ),
            )
        })?;
        send.insert(repo_path(&rel), Some(sha.clone()));
    }
    let mut skipped = Vec::new();
    let mut side = Vec::new();
    walk(dir, "", &send, &mut side, &mut skipped)?;
    for s in side {
        send.entry(s).or_insert(None);
    }

    let mut out = Vec::with_capacity(send.len());
    for (rel, sha) in send {
        let path = dir.join(&rel);
        let why = if sha.is_some() {
            format!("{INDEX_FILE} lists it")
        } else {
            "it is one of the side files upload sends".to_string()
        };
        let file = open_inside(&root, dir, &path, &why)?;
        let meta = file.metadata().with_path(&path)?;
        let sha256 = match sha {
            Some(s) => s,
            None => {
                use sha2::{Digest, Sha256};
                let mut h = Sha256::new();
                for_each_chunk(&file, &path, meta.len(), |c| h.update(c))?;
                hex::encode(h.finalize())
            }
        };
        out.push(LocalFile {
            large: guess_large(&rel, meta.len()),
            path: rel,
            source: Source::File {
                path,
                file: Arc::new(file),
            },
            size: meta.len(),
            sha256,
            modified: meta.modified().ok(),
            identity: Some((meta.dev(), meta.ino())),
        });
    }
    skipped.sort_by(|a: &SkippedFile, b| a.path.cmp(&b.path));
    Ok((out, skipped))
}

/// `a/b/c` for a relative path of normal components.
fn repo_path(rel: &Path) -> String {
    rel.components()
        .filter_map(|c| match c {
            Component::Normal(p) => Some(p.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// List `dir/prefix`: side files (top level only) go to `side`, files the index lists are left
/// for the caller, folders that hold listed files are walked, and everything else is skipped
/// with its reason. Links are never followed here, and a folder holding no listed file is not
/// entered (it is reported once, however much it holds).
fn walk(
    dir: &Path,
    prefix: &str,
    send: &BTreeMap<String, Option<String>>,
    side: &mut Vec<String>,
    skipped: &mut Vec<SkippedFile>,
) -> Result<()> {
    let here = if prefix.is_empty() {
        dir.to_path_buf()
    } else {
        dir.join(prefix)
    };
    for entry in std::fs::read_dir(&here).with_path(&here)? {
        let entry = entry.with_path(&here)?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            skipped.push(SkippedFile {
                path: format!("{prefix}{}", name.to_string_lossy()),
                reason: "the name is not UTF-8 (the Hub needs UTF-8 paths)".to_string(),
            });
            continue;
        };
        let rel = format!("{prefix}{name}");
        if send.contains_key(&rel) {
            continue;
        }
        if prefix.is_empty() && is_side_file(name) {
            side.push(rel);
            continue;
        }
        let meta = std::fs::symlink_metadata(entry.path()).with_path(&entry.path())?;
        let inner = format!("{rel}/");
        if send.keys().any(|k| k.starts_with(&inner)) {
            // A link on the way to a listed file is judged where that file is opened (inside
            // the folder or an error); it is never walked.
            if meta.is_dir() {
                walk(dir, &inner, send, side, skipped)?;
            }
            continue;
        }
        let reason = if meta.file_type().is_symlink() {
            "a symbolic link that is not one of the files upload sends (not followed)".to_string()
        } else if meta.is_dir() {
            "a folder holding none of the files the index lists".to_string()
        } else if !meta.is_file() {
            format!("{}, not a regular file", kind_of(&meta))
        } else if name.starts_with('.') {
            "a hidden file".to_string()
        } else {
            format!("not listed by {INDEX_FILE} and not one of the side files upload sends")
        };
        skipped.push(SkippedFile { path: rel, reason });
    }
    Ok(())
}

/// Open a file to send: it must be a regular file (never a FIFO or a device, and the open never
/// blocks) whose real location, symbolic links resolved, is inside the folder. `why` says why it
/// is sent, for the message.
fn open_inside(root: &Path, dir: &Path, path: &Path, why: &str) -> Result<File> {
    let outside = |target: &Path| {
        Error::in_file(
            path,
            format!(
                "leads outside the folder {} (to {}) through a symbolic link; upload sends only \
                 files inside the folder: copy the file in, or remove the link",
                dir.display(),
                target.display()
            ),
        )
    };
    let resolved = path.canonicalize().map_err(|e| {
        let what = match e.kind() {
            std::io::ErrorKind::NotFound => match std::fs::symlink_metadata(path) {
                Ok(_) => "is a symbolic link to nothing (its target is missing)".to_string(),
                Err(_) => "no such file".to_string(),
            },
            _ => e.to_string(),
        };
        Error::in_file(
            path,
            format!("{what}; upload sends this file because {why}: restore it and run again"),
        )
    })?;
    if !resolved.starts_with(root) {
        return Err(outside(&resolved));
    }
    let file = open_regular(path).map_err(|e| {
        Error::input(format!(
            "{e}; upload sends this file because {why}: make it a regular file, or remove it"
        ))
    })?;
    // The link could have been swapped between the check and the open: where the opened file
    // really is decides (Linux names it in /proc; elsewhere the check above stands alone).
    use std::os::fd::AsRawFd;
    if let Ok(real) = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())) {
        if !real.starts_with(root) {
            return Err(outside(&real));
        }
    }
    Ok(file)
}

/// Refuse to commit when a file changed on disk since it was hashed (its size or modification
/// time moved, or another file took its path): the commit would name bytes that were not sent.
pub(crate) fn check_unchanged(files: &[LocalFile], which: &[usize]) -> Result<()> {
    for &i in which {
        let f = &files[i];
        if let Source::File { path, file } = &f.source {
            let now = file.metadata().with_path(path)?;
            let at_path = std::fs::metadata(path).ok();
            let same = now.len() == f.size
                && now.modified().ok() == f.modified
                && at_path.is_some_and(|m| Some((m.dev(), m.ino())) == f.identity);
            if !same {
                return Err(Error::in_file(
                    path,
                    "changed during the upload (its size or modification time moved, or \
                     another file took its place); nothing was committed, run the upload again",
                ));
            }
        }
    }
    Ok(())
}
