//! Reading user files safely, and small filesystem facts.
//!
//! Every file l3kit reads is opened through [`open_regular`]: the open itself never blocks (a
//! FIFO opened for reading would wait for a writer forever), and anything that is not a regular
//! file (a FIFO, a device such as `/dev/zero`, a socket, a directory) is refused with a message
//! saying what it is. Small files (configs, indexes, maps, tokens, tokenizers) are read whole
//! through [`read_small`], bounded by a limit per kind of file, so a huge or endless input is an
//! error rather than a huge allocation. [`check_output`] refuses an output path that would
//! destroy an input or is not a file or folder.

use crate::util::error::{Error, IoContext, Result};
use std::fs::{File, Metadata};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Size limits of the small files l3kit reads whole (documented in `docs/format.md`).
pub mod limits {
    /// `config.json` of a checkpoint or a packed folder, `meta_*.json`.
    pub const CONFIG: u64 = 16 << 20;
    /// `*.index.json` (a weight map of a few hundred thousand tensors fits).
    pub const INDEX: u64 = 64 << 20;
    /// `--map` files.
    pub const MAP: u64 = 1 << 20;
    /// A Hub token file.
    pub const TOKEN: u64 = 64 << 10;
    /// `tokenizer.json` (the largest public ones are a few tens of MB).
    pub const TOKENIZER: u64 = 512 << 20;
    /// A safetensors header (the safetensors crate's own limit).
    pub const SAFETENSORS_HEADER: u64 = 100 << 20;
}

/// What a filesystem entry is, for messages ("a FIFO", "a character device", ...).
pub fn kind_of(meta: &Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_file() {
        "a regular file"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO (named pipe)"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_symlink() {
        "a symbolic link"
    } else {
        "not a regular file"
    }
}

/// Open `path` for reading, refusing anything but a regular file (symlinks are followed).
///
/// The open uses `O_NONBLOCK`, so a FIFO cannot make it wait; the type check is made on the
/// opened descriptor, so swapping the path between a check and the open changes nothing.
pub fn open_regular(path: &Path) -> Result<File> {
    let (file, meta) = open_nonblocking(path)?;
    if !meta.is_file() {
        return Err(Error::in_file(
            path,
            format!("is {}, not a regular file", kind_of(&meta)),
        ));
    }
    set_blocking(&file);
    Ok(file)
}

/// Open `path` for reading as a regular file or a FIFO (a named pipe, or a pipe such as the
/// `/dev/fd/N` of a shell's `<(command)`), refusing devices, sockets and folders.
///
/// The open never blocks. A regular file is returned ready for ordinary reads; a FIFO is
/// returned still in non-blocking mode, so the caller decides how long to wait for a writer
/// and for data.
pub fn open_regular_or_fifo(path: &Path) -> Result<(File, Metadata)> {
    let (file, meta) = open_nonblocking(path)?;
    if meta.is_file() {
        set_blocking(&file);
    } else if !meta.file_type().is_fifo() {
        return Err(Error::in_file(
            path,
            format!("is {}, not a regular file or a FIFO", kind_of(&meta)),
        ));
    }
    Ok((file, meta))
}

fn open_nonblocking(path: &Path) -> Result<(File, Metadata)> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::in_file(path, "no such file"),
            _ => Error::io(path, e),
        })?;
    let meta = file.metadata().with_path(path)?;
    Ok((file, meta))
}

/// Clear `O_NONBLOCK` on a descriptor opened by this module, so reads wait for data again.
fn set_blocking(file: &File) {
    // SAFETY: fcntl on a descriptor the caller owns; no memory is passed.
    unsafe {
        use std::os::fd::AsRawFd;
        let fd = file.as_raw_fd();
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK);
        }
    }
}

/// The metadata of a regular file at `path` (symlinks followed), or an error naming what the
/// path is instead.
pub fn regular_metadata(path: &Path) -> Result<Metadata> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::in_file(path, "no such file"),
        _ => Error::io(path, e),
    })?;
    if !meta.is_file() {
        return Err(Error::in_file(
            path,
            format!("is {}, not a regular file", kind_of(&meta)),
        ));
    }
    Ok(meta)
}

/// Read a small file whole, refusing one larger than `limit` bytes (`what` names the kind of
/// file in the message, e.g. "a config file").
pub fn read_small(path: &Path, limit: u64, what: &str) -> Result<Vec<u8>> {
    let file = open_regular(path)?;
    let len = file.metadata().with_path(path)?.len();
    if len > limit {
        return Err(Error::in_file(
            path,
            format!("is {len} bytes, larger than the {limit}-byte limit for {what}"),
        ));
    }
    let mut buf = Vec::with_capacity(len as usize);
    // Read one byte past the limit: a file that grows while being read is refused too.
    file.take(limit + 1).read_to_end(&mut buf).with_path(path)?;
    if buf.len() as u64 > limit {
        return Err(Error::in_file(
            path,
            format!("grew past the {limit}-byte limit for {what} while being read"),
        ));
    }
    Ok(buf)
}

/// [`read_small`] as UTF-8 text.
pub fn read_small_text(path: &Path, limit: u64, what: &str) -> Result<String> {
    String::from_utf8(read_small(path, limit, what)?)
        .map_err(|e| Error::in_file(path, format!("is not UTF-8 text ({e})")))
}

/// SHA-256 of a file's contents, as lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut file = open_regular(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).with_path(path)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Peak resident memory of this process in bytes (Linux `VmHWM`), when the OS reports it.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// `path` made absolute with every symlink resolved; a path that does not exist yet keeps its
/// missing tail (its deepest existing ancestor is resolved).
pub fn resolve(path: &Path) -> Result<PathBuf> {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| Error::io(Path::new("."), e))?
            .join(path)
    };
    let mut missing = Vec::new();
    let mut cur = abs.as_path();
    loop {
        match cur.canonicalize() {
            Ok(c) => {
                let mut out = c;
                for part in missing.iter().rev() {
                    out.push(part);
                }
                return Ok(out);
            }
            Err(_) => {
                let (Some(parent), Some(name)) = (cur.parent(), cur.file_name()) else {
                    return Ok(abs.clone());
                };
                missing.push(name.to_os_string());
                cur = parent;
            }
        }
    }
}

/// Memory the kernel reports as available for new allocations (`MemAvailable`), if known.
pub fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kb.checked_mul(1024)
}

/// Whether the output is one file or a folder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputKind {
    File,
    Folder,
}

/// Refuse an output path that would destroy an input or is not what it should be, before any
/// work starts: it must not be, contain, or lie inside any of `inputs`; if it exists it must be
/// a regular file (`OutputKind::File`) or a folder (`OutputKind::Folder`), never a device, FIFO
/// or socket; a file output may not be spelled as a folder (`out/`). `flag` names the option in
/// messages (`--out`).
pub fn check_output(out: &Path, inputs: &[&Path], kind: OutputKind, flag: &str) -> Result<()> {
    let shown = out.display();
    if kind == OutputKind::File {
        let text = out.as_os_str().to_string_lossy();
        if text.ends_with('/') || out.file_name().is_none() {
            return Err(Error::input(format!(
                "{flag} {shown}: names a folder; give the path of the file to write"
            )));
        }
    }
    // Overlap first: the message about the input at stake is the one that matters.
    let out_abs = resolve(out)?;
    for input in inputs {
        let input_abs = resolve(input)?;
        let clash = if out_abs == input_abs {
            Some("is")
        } else if input_abs.starts_with(&out_abs) {
            Some("contains")
        } else if out_abs.starts_with(&input_abs) {
            Some("is inside")
        } else {
            None
        };
        if let Some(how) = clash {
            return Err(Error::input(format!(
                "{flag} {shown}: {how} the input {}; writing there would destroy it, choose \
                 another output path",
                input.display()
            )));
        }
    }
    if let Ok(meta) = std::fs::symlink_metadata(out) {
        let target = std::fs::metadata(out).ok();
        let ok = match (kind, &target) {
            (OutputKind::File, Some(m)) => m.is_file(),
            (OutputKind::Folder, Some(m)) => m.is_dir(),
            // A dangling symlink: writing would create its target somewhere else.
            (_, None) => false,
        };
        if !ok || meta.file_type().is_symlink() {
            let what = match &target {
                Some(m) if meta.file_type().is_symlink() => {
                    format!("a symbolic link to {}", kind_of(m))
                }
                Some(m) => kind_of(m).to_string(),
                None => "a dangling symbolic link".to_string(),
            };
            let want = match kind {
                OutputKind::File => "a regular file",
                OutputKind::Folder => "a folder",
            };
            if !(ok && meta.file_type().is_symlink()) {
                return Err(Error::input(format!(
                    "{flag} {shown}: is {what}; the output must be {want} (or not exist yet)"
                )));
            }
            return Err(Error::input(format!(
                "{flag} {shown}: is {what}; l3kit replaces outputs by renaming, which would \
                 break the link: name the link's target instead"
            )));
        }
    }
    Ok(())
}

/// Is `path` (after resolving symlinks) inside `root` (resolved too)?
pub fn is_inside(path: &Path, root: &Path) -> Result<bool> {
    Ok(resolve(path)?.starts_with(resolve(root)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifo_and_devices_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("pipe");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = open_regular(&fifo).unwrap_err().to_string();
        assert!(e.contains("FIFO"), "{e}");
        let e = read_small(Path::new("/dev/zero"), 10, "a test file")
            .unwrap_err()
            .to_string();
        assert!(e.contains("character device"), "{e}");
        let e = open_regular(dir.path()).unwrap_err().to_string();
        assert!(e.contains("directory"), "{e}");
    }

    #[test]
    fn small_reads_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big.json");
        std::fs::write(&p, vec![b'x'; 100]).unwrap();
        assert_eq!(read_small(&p, 100, "x").unwrap().len(), 100);
        let e = read_small(&p, 99, "a config file").unwrap_err().to_string();
        assert!(e.contains("99-byte limit for a config file"), "{e}");
    }

    #[test]
    fn outputs_never_overlap_inputs() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let input = d.join("in.txt");
        std::fs::write(&input, "x").unwrap();
        let sub = d.join("src");
        std::fs::create_dir(&sub).unwrap();
        let f = OutputKind::File;
        assert!(check_output(&d.join("out.bin"), &[&input], f, "--out").is_ok());
        let e = check_output(&input, &[&input], f, "--out")
            .unwrap_err()
            .to_string();
        assert!(e.contains("is the input"), "{e}");
        // The same file through another spelling.
        let e = check_output(&d.join("src/../in.txt"), &[&input], f, "--out")
            .unwrap_err()
            .to_string();
        assert!(e.contains("is the input"), "{e}");
        let folder = OutputKind::Folder;
        let e = check_output(d, &[&input], folder, "--out")
            .unwrap_err()
            .to_string();
        assert!(e.contains("contains the input"), "{e}");
        let e = check_output(&sub.join("packed"), &[&sub], folder, "--out")
            .unwrap_err()
            .to_string();
        assert!(e.contains("is inside the input"), "{e}");
        let e = check_output(Path::new("/dev/full"), &[], f, "--out")
            .unwrap_err()
            .to_string();
        assert!(e.contains("character device"), "{e}");
        let e = check_output(Path::new("newdir/"), &[], f, "--out")
            .unwrap_err()
            .to_string();
        assert!(e.contains("names a folder"), "{e}");
        // A symlink as the output would be replaced by a regular file.
        let link = d.join("link");
        std::os::unix::fs::symlink(&input, &link).unwrap();
        let e = check_output(&link, &[], f, "--out")
            .unwrap_err()
            .to_string();
        assert!(e.contains("symbolic link"), "{e}");
    }
}
