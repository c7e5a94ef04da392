//! Crash-safe outputs: files and folders built under a hidden temporary name beside their
//! destination and renamed into place when complete.
//!
//! Outputs are written to a temporary name in the destination's own folder and renamed into
//! place only once complete, so a reader never sees a half-written file and a failed or
//! interrupted run leaves the destination as it was. The same folder matters: `rename` is only
//! atomic within one filesystem.

use crate::util::error::{Error, IoContext, Result};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// A file being written under a temporary name beside its destination.
///
/// Dropping it without [`AtomicFile::commit`] removes the temporary file.
pub struct AtomicFile {
    dest: PathBuf,
    tmp: PathBuf,
    writer: Option<BufWriter<File>>,
}

impl AtomicFile {
    pub fn create(dest: &Path) -> Result<Self> {
        let tmp = temp_sibling(dest)?;
        let file = File::create(&tmp).with_path(&tmp)?;
        Ok(AtomicFile {
            dest: dest.to_path_buf(),
            tmp,
            writer: Some(BufWriter::with_capacity(1 << 20, file)),
        })
    }

    pub fn writer(&mut self) -> &mut BufWriter<File> {
        self.writer.as_mut().expect("writer present until commit")
    }

    /// Flush, fsync and rename into place.
    pub fn commit(mut self) -> Result<()> {
        let writer = self.writer.take().expect("writer present until commit");
        let file = writer
            .into_inner()
            .map_err(|e| Error::io(&self.tmp, e.into_error()))?;
        file.sync_all().with_path(&self.tmp)?;
        drop(file);
        std::fs::rename(&self.tmp, &self.dest).with_path(&self.dest)?;
        Ok(())
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.writer().write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.writer().flush()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.writer.is_some() {
            self.writer = None;
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Write `bytes` to `dest` atomically.
pub fn write_atomic(dest: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = AtomicFile::create(dest)?;
    f.writer().write_all(bytes).with_path(dest)?;
    f.commit()
}

/// A hidden temporary name in the same folder as `dest`, unique to this process.
pub fn temp_sibling(dest: &Path) -> Result<PathBuf> {
    let name = dest
        .file_name()
        .ok_or_else(|| Error::input(format!("{}: not a file name", dest.display())))?;
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !parent.is_dir() {
        return Err(Error::input(format!(
            "{}: the output folder {} does not exist",
            dest.display(),
            parent.display()
        )));
    }
    remove_stale_temps(&parent, name)?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!("{TEMP_MARKER}{}", std::process::id()));
    Ok(parent.join(tmp_name))
}

/// The marker in every temporary name. The rule (docs/format.md, "Temporary files"): the
/// output `DIR/NAME` is built as `DIR/.NAME.l3kit-tmp-PID`, and an output folder being
/// replaced is moved aside to `DIR/.NAME.l3kit-tmp-PID-old` for the moment of the swap, where
/// PID is the writing process.
pub const TEMP_MARKER: &str = ".l3kit-tmp-";

/// Remove what killed runs left beside `DIR/NAME`: every `.NAME.l3kit-tmp-PID[-old]` whose
/// process no longer runs. A run killed with SIGKILL cannot clean up after itself, so the
/// next run into the same destination does; temporaries of a live process (a concurrent run)
/// are left alone.
fn remove_stale_temps(parent: &Path, name: &std::ffi::OsStr) -> Result<()> {
    let Some(name) = name.to_str() else {
        return Ok(());
    };
    let prefix = format!(".{name}{TEMP_MARKER}");
    let Ok(entries) = std::fs::read_dir(parent) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(rest) = file_name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
            continue;
        };
        let pid_text = rest.strip_suffix("-old").unwrap_or(rest);
        let Ok(pid) = pid_text.parse::<u32>() else {
            continue;
        };
        if pid == std::process::id() || process_is_running(pid) {
            continue;
        }
        let path = entry.path();
        let removed = match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(&path),
            Ok(_) => std::fs::remove_file(&path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        };
        removed.map_err(|e| {
            Error::in_file(
                &path,
                format!("is left over from a killed run and cannot be removed ({e}); remove it"),
            )
        })?;
    }
    Ok(())
}

/// Whether a process with this id exists (one we may not signal still exists).
fn process_is_running(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks that the process exists; nothing is sent.
    if unsafe { libc::kill(pid, 0) } == 0 {
        return true;
    }
    std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// A folder being built beside its destination; removed on drop unless committed.
pub struct StagingDir {
    pub tmp: PathBuf,
    dest: PathBuf,
    committed: bool,
}

impl StagingDir {
    pub fn create(dest: &Path, force: bool) -> Result<Self> {
        if dest.exists() && !force {
            return Err(Error::in_file(
                dest,
                "already exists; pass --force to replace it",
            ));
        }
        let tmp = temp_sibling(dest)?;
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).with_path(&tmp)?;
        }
        std::fs::create_dir(&tmp).with_path(&tmp)?;
        Ok(StagingDir {
            tmp,
            dest: dest.to_path_buf(),
            committed: false,
        })
    }

    pub fn commit(mut self) -> Result<()> {
        if self.dest.exists() {
            let mut old = self.tmp.clone().into_os_string();
            old.push("-old");
            let old = PathBuf::from(old);
            std::fs::rename(&self.dest, &old).with_path(&self.dest)?;
            std::fs::rename(&self.tmp, &self.dest).with_path(&self.dest)?;
            if old.is_dir() {
                std::fs::remove_dir_all(&old).with_path(&old)?;
            } else {
                std::fs::remove_file(&old).with_path(&old)?;
            }
        } else {
            std::fs::rename(&self.tmp, &self.dest).with_path(&self.dest)?;
        }
        self.committed = true;
        Ok(())
    }
}

impl Drop for StagingDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporaries_of_dead_processes_are_removed_and_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.bin");
        // A pid far above any kernel's pid_max never runs; pid 1 always does.
        let dead_file = dir.path().join(format!(".out.bin{TEMP_MARKER}4000000000"));
        let dead_dir = dir
            .path()
            .join(format!(".out.bin{TEMP_MARKER}4000000001-old"));
        let live = dir.path().join(format!(".out.bin{TEMP_MARKER}1"));
        let other = dir
            .path()
            .join(format!(".other.bin{TEMP_MARKER}4000000000"));
        std::fs::write(&dead_file, "half").unwrap();
        std::fs::create_dir(&dead_dir).unwrap();
        std::fs::write(dead_dir.join("shard"), "x").unwrap();
        std::fs::write(&live, "busy").unwrap();
        std::fs::write(&other, "not ours").unwrap();
        write_atomic(&dest, b"done").unwrap();
        assert!(!dead_file.exists() && !dead_dir.exists());
        assert!(live.exists() && other.exists());
        assert_eq!(std::fs::read(&dest).unwrap(), b"done");
    }
}
