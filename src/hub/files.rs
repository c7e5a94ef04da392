//! The files of an upload: what is sent (regular files of the folder, hidden ones skipped), their hashes, and which travel as large (LFS) files.

use super::LARGE_FILE_BYTES;
use crate::util::error::{Error, IoContext, Result};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Where a file's bytes come from.
#[derive(Clone, Debug)]
pub(crate) enum Source {
    File(PathBuf),
    Generated(Vec<u8>),
}

#[derive(Clone, Debug)]
pub(crate) struct LocalFile {
    pub path: String,
    pub source: Source,
    pub size: u64,
    pub sha256: String,
    pub modified: Option<SystemTime>,
    pub large: bool,
}

impl LocalFile {
    pub(crate) fn sample(&self) -> Result<Vec<u8>> {
        match &self.source {
            Source::Generated(b) => Ok(b[..b.len().min(512)].to_vec()),
            Source::File(p) => {
                let mut buf = Vec::with_capacity(512);
                std::fs::File::open(p)
                    .with_path(p)?
                    .take(512)
                    .read_to_end(&mut buf)
                    .with_path(p)?;
                Ok(buf)
            }
        }
    }

    pub(crate) fn bytes(&self) -> Result<Vec<u8>> {
        match &self.source {
            Source::Generated(b) => Ok(b.clone()),
            Source::File(p) => std::fs::read(p).with_path(p),
        }
    }

    /// The git blob id (`sha1("blob {len}\0" + bytes)`), which the Hub reports for regular files.
    pub(crate) fn git_blob_id(&self) -> Result<String> {
        use sha1::{Digest, Sha1};
        let mut h = Sha1::new();
        h.update(format!("blob {}\0", self.size).as_bytes());
        match &self.source {
            Source::Generated(b) => h.update(b),
            Source::File(p) => {
                let mut f = std::fs::File::open(p).with_path(p)?;
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let n = f.read(&mut buf).with_path(p)?;
                    if n == 0 {
                        break;
                    }
                    h.update(&buf[..n]);
                }
            }
        }
        Ok(hex::encode(h.finalize()))
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

/// Every regular file under `dir` (hidden names skipped), sorted by repository path, with the
/// SHA-256 from the index when the check just verified it, else computed here.
pub(crate) fn collect_files(
    dir: &Path,
    verified: &BTreeMap<String, String>,
) -> Result<Vec<LocalFile>> {
    let mut out = Vec::new();
    walk(dir, dir, verified, &mut out)?;
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

pub(crate) fn walk(
    root: &Path,
    dir: &Path,
    verified: &BTreeMap<String, String>,
    out: &mut Vec<LocalFile>,
) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_path(dir)? {
        let entry = entry.with_path(dir)?;
        let path = entry.path();
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            return Err(Error::in_file(
                &path,
                "the file name is not UTF-8; the Hub needs UTF-8 paths",
            ));
        };
        if name.starts_with('.') {
            continue;
        }
        let meta = std::fs::metadata(&path).with_path(&path)?;
        if meta.is_dir() {
            walk(root, &path, verified, out)?;
            continue;
        }
        if !meta.is_file() {
            continue;
        }
        let rel = path
            .strip_prefix(root)
            .expect("walk stays under its root")
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join("/");
        let sha256 = match verified.get(&rel) {
            Some(s) => s.clone(),
            None => crate::util::fs::sha256_file(&path)?,
        };
        out.push(LocalFile {
            large: guess_large(&rel, meta.len()),
            path: rel,
            source: Source::File(path),
            size: meta.len(),
            sha256,
            modified: meta.modified().ok(),
        });
    }
    Ok(())
}

/// Refuse to commit when a file changed on disk since it was hashed (its size or modification
/// time moved): the commit would name bytes that were not sent.
pub(crate) fn check_unchanged(files: &[LocalFile], which: &[usize]) -> Result<()> {
    for &i in which {
        let f = &files[i];
        if let Source::File(p) = &f.source {
            let m = std::fs::metadata(p).with_path(p)?;
            if m.len() != f.size || m.modified().ok() != f.modified {
                return Err(Error::in_file(
                    p,
                    "changed during the upload; nothing was committed, run the upload again",
                ));
            }
        }
    }
    Ok(())
}
