//! Where a packed layer's rows are read from: memory (`ram`), the page cache through a memory
//! map (`mmap`), or the storage device itself (`disk`).
//!
//! The three tiers hold the same bytes and hand the same bytes to the same conversion code,
//! so a model computes bit-identical outputs from any of them; they differ only in what a
//! gather costs. `disk` is the tier per-layer-embedding engines serve from NVMe: every read
//! goes to the device. It opens the shard a second time with `O_DIRECT` (through
//! `/proc/self/fd`, so it is the very file whose header was validated, not whatever the path
//! names now) and reads whole 4 KiB-aligned blocks into a reused per-thread buffer. Where
//! the filesystem refuses `O_DIRECT` (tmpfs, some overlay and network filesystems) the tier
//! falls back to buffered reads of a file whose page cache is dropped with
//! `posix_fadvise(DONTNEED)` when it is opened: the first read of each page goes to the
//! device, repeats may not. Reports say which of the two ran.

use crate::util::error::{Error, Result};
use crate::util::units::human_bytes;
use serde::Serialize;
use std::cell::RefCell;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// `--tables ram|mmap|disk`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TableTier {
    /// Every layer's packed rows read into memory when the model is opened.
    Ram,
    /// The part files memory-mapped: rows come from the page cache, or fault in from disk.
    #[default]
    Mmap,
    /// Every read goes to the storage device (O_DIRECT, or a dropped page cache).
    Disk,
}

/// How the `disk` tier reaches the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DiskMode {
    /// `O_DIRECT` reads of whole aligned blocks: nothing is cached between reads.
    ODirect,
    /// Buffered reads after `posix_fadvise(DONTNEED)`: the filesystem refused `O_DIRECT`.
    Fadvise,
}

impl DiskMode {
    pub fn describe(self) -> &'static str {
        match self {
            DiskMode::ODirect => "O_DIRECT reads",
            DiskMode::Fadvise => "page cache dropped with posix_fadvise (O_DIRECT refused)",
        }
    }
}

/// The block size `O_DIRECT` reads are aligned to: the logical block size of every common
/// device and filesystem, and a multiple of the smaller ones.
pub const DIRECT_ALIGN: u64 = 4096;

/// The bytes of one part file as a tier holds them.
pub(crate) enum PartBytes {
    /// A map of the whole file; offsets are file offsets.
    Mapped(Arc<memmap2::Mmap>),
    /// The part's rows (then its scales) copied into memory; offsets are into the copy.
    Owned(Vec<u8>),
    /// Reads from the device; offsets are file offsets.
    Device(DeviceFile),
}

pub(crate) struct DeviceFile {
    file: File,
    len: u64,
    mode: DiskMode,
    /// Bytes read from the device, alignment padding included.
    read: Arc<AtomicU64>,
}

thread_local! {
    /// Each gathering thread's read buffer, over-allocated so that an aligned window of it
    /// can be used: it only grows, so a serving loop stops allocating after its first steps.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl DeviceFile {
    /// Open `file` (already validated, `len` bytes long) for device reads.
    pub(crate) fn open(file: &File, path: &Path, len: u64, read: Arc<AtomicU64>) -> Result<Self> {
        let proc_path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        let direct = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(&proc_path)
            .ok()
            .map(|f| DeviceFile {
                file: f,
                len,
                mode: DiskMode::ODirect,
                read: Arc::clone(&read),
            })
            // Some filesystems accept the flag at open and refuse the read: probe one block.
            .filter(|d| len == 0 || d.read_range(0, len.min(16), &mut |_| ()).is_ok());
        if let Some(d) = direct {
            d.read.store(0, Ordering::Relaxed);
            return Ok(d);
        }
        let file = file.try_clone().map_err(|e| Error::io(path, e))?;
        // SAFETY: plain advice on a descriptor we own; failure only means the cache stays.
        let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        if rc != 0 {
            return Err(Error::in_file(
                path,
                format!(
                    "--tables disk: the filesystem refuses O_DIRECT and posix_fadvise failed \
                     (error {rc}), so reads cannot be sent to the device"
                ),
            ));
        }
        Ok(DeviceFile {
            file,
            len,
            mode: DiskMode::Fadvise,
            read,
        })
    }

    pub(crate) fn mode(&self) -> DiskMode {
        self.mode
    }

    /// Read `len` bytes at file offset `at` and hand them to `f`.
    pub(crate) fn read_range(&self, at: u64, len: u64, f: &mut dyn FnMut(&[u8])) -> Result<()> {
        let end = at
            .checked_add(len)
            .filter(|&e| e <= self.len)
            .ok_or_else(|| {
                Error::Other(format!(
                    "a read of {len} bytes at {at} lies outside the {}-byte file",
                    self.len
                ))
            })?;
        let (first, last) = match self.mode {
            DiskMode::ODirect => (
                at / DIRECT_ALIGN * DIRECT_ALIGN,
                end.div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN,
            ),
            DiskMode::Fadvise => (at, end),
        };
        let span = usize::try_from(last - first)
            .map_err(|_| Error::Other(format!("a read of {len} bytes is too large")))?;
        SCRATCH.with(|cell| {
            let mut buf = cell.borrow_mut();
            let need = span + DIRECT_ALIGN as usize;
            if buf.len() < need {
                buf.resize(need, 0);
            }
            let skip = buf.as_ptr().align_offset(DIRECT_ALIGN as usize);
            let window = &mut buf[skip..skip + span];
            let want = (end - first) as usize;
            let mut got = 0usize;
            while got < want {
                match self.file.read_at(&mut window[got..], first + got as u64) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(Error::Other(format!("reading the tables failed: {e}"))),
                }
            }
            if got < want {
                return Err(Error::Other(format!(
                    "the tables' file ended after {} of {len} bytes at {at}: was it truncated \
                     after it was opened?",
                    got.saturating_sub((at - first) as usize)
                )));
            }
            self.read.fetch_add(got as u64, Ordering::Relaxed);
            let from = (at - first) as usize;
            f(&window[from..from + len as usize]);
            Ok(())
        })
    }
}

impl PartBytes {
    /// Hand `len` bytes at offset `at` (as the variant counts offsets) to `f`.
    pub(crate) fn with_range(&self, at: u64, len: u64, f: &mut dyn FnMut(&[u8])) -> Result<()> {
        let slice = |bytes: &[u8]| -> Option<std::ops::Range<usize>> {
            let s = usize::try_from(at).ok()?;
            let e = s.checked_add(usize::try_from(len).ok()?)?;
            (e <= bytes.len()).then_some(s..e)
        };
        match self {
            PartBytes::Mapped(map) => {
                let r = slice(map).ok_or_else(|| out_of_file(at, len))?;
                f(&map[r]);
                Ok(())
            }
            PartBytes::Owned(v) => {
                let r = slice(v).ok_or_else(|| out_of_file(at, len))?;
                f(&v[r]);
                Ok(())
            }
            PartBytes::Device(d) => d.read_range(at, len, f),
        }
    }

    /// A slice of the bytes, for the tiers that hold them (not `disk`).
    pub(crate) fn slice(&self, at: u64, len: u64) -> Option<&[u8]> {
        let bytes: &[u8] = match self {
            PartBytes::Mapped(map) => map,
            PartBytes::Owned(v) => v,
            PartBytes::Device(_) => return None,
        };
        let s = usize::try_from(at).ok()?;
        bytes.get(s..s.checked_add(usize::try_from(len).ok()?)?)
    }
}

fn out_of_file(at: u64, len: u64) -> Error {
    Error::Other(format!(
        "a read of {len} bytes at {at} lies outside the tables"
    ))
}

/// Refuse `--tables ram` for tables that would not fit: `bytes` must leave a quarter of the
/// available memory for everything else.
pub fn check_ram_budget(bytes: u64, model: &Path) -> Result<()> {
    if let Some(avail) = crate::util::fs::available_memory() {
        if bytes > avail / 4 * 3 {
            return Err(Error::in_file(
                model,
                format!(
                    "--tables ram needs {} for the L3 tables and only {} of memory is \
                     available (at most three quarters of it is used); serve them with \
                     --tables mmap or --tables disk",
                    human_bytes(bytes as f64),
                    human_bytes(avail as f64)
                ),
            ));
        }
    }
    Ok(())
}

/// Copy `len` bytes at `at` of a validated map into memory, failing cleanly (not aborting)
/// when the allocation is refused.
pub(crate) fn owned_copy(map: &[u8], at: usize, len: usize, path: &Path) -> Result<Vec<u8>> {
    let src = at
        .checked_add(len)
        .and_then(|e| map.get(at..e))
        .ok_or_else(|| Error::in_file(path, "a table lies outside its file"))?;
    let mut v = Vec::new();
    v.try_reserve_exact(len).map_err(|_| {
        Error::in_file(
            path,
            format!(
                "--tables ram: could not allocate {} for the tables",
                human_bytes(len as f64)
            ),
        )
    })?;
    v.extend_from_slice(src);
    Ok(v)
}
