//! The zip container of a `torch.save` file, read just far enough to locate each entry's
//! bytes: the end-of-central-directory record (zip64 included), the central directory and
//! each entry's local header. Every offset and size is checked against the file's length
//! before it is used, so a corrupt directory gives an error, never a huge allocation.
//!
//! `torch.save` stores entries uncompressed (with padding so tensor data is aligned), which is
//! what lets a tensor be read with positioned reads straight from the file. Compressed entries
//! are read whole only where they are small ([`Archive::read_small`]).

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;

/// Largest central directory accepted (about a million entries).
const MAX_DIRECTORY: u64 = 128 << 20;

/// One entry of the archive.
#[derive(Debug, Clone)]
pub struct ZipEntry {
    pub name: String,
    /// 0 stored, 8 deflate.
    pub method: u16,
    pub compressed: u64,
    pub size: u64,
    pub crc32: u32,
    /// Absolute file offset of the entry's (possibly compressed) bytes.
    pub data_start: u64,
}

/// The entries of a zip file, by name.
pub struct Archive {
    pub entries: Vec<ZipEntry>,
    by_name: HashMap<String, usize>,
}

fn u16_at(b: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([b[i], b[i + 1]])
}
fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], i: usize) -> u64 {
    u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"))
}

/// Errors are text; the caller adds the file.
type R<T> = std::result::Result<T, String>;

/// `len` bytes at `offset`, which must lie within the file's first `limit` bytes.
fn read_at(file: &File, offset: u64, len: u64, limit: u64, what: &str) -> R<Vec<u8>> {
    let end = offset.checked_add(len);
    if end.is_none_or(|e| e > limit) {
        return Err(format!(
            "the zip {what} at byte {offset} ({len} bytes) lies beyond the end of its data \
             ({limit} bytes): the file is truncated or corrupt"
        ));
    }
    let mut buf = vec![0u8; len as usize];
    file.read_exact_at(&mut buf, offset)
        .map_err(|e| format!("reading the zip {what} at byte {offset}: {e}"))?;
    Ok(buf)
}

impl Archive {
    /// The directory of the zip `file` (`file_len` bytes long).
    pub fn read(file: &File, file_len: u64) -> R<Archive> {
        let bad = |m: String| format!("not a readable zip archive: {m}");
        // The end-of-central-directory record: 22 bytes plus a comment of up to 64 KiB.
        let tail_len = file_len.min(22 + 65535);
        if tail_len < 22 {
            return Err(bad(format!("the file is only {file_len} bytes")));
        }
        let tail_start = file_len - tail_len;
        let tail = read_at(file, tail_start, tail_len, file_len, "end record")?;
        let eocd = (0..=tail.len() - 22)
            .rev()
            .find(|&i| {
                tail[i..i + 4] == *b"PK\x05\x06"
                    && i + 22 + u16_at(&tail, i + 20) as usize == tail.len()
            })
            .ok_or_else(|| {
                bad("no end-of-central-directory record (the file is truncated?)".into())
            })?;
        let rec = &tail[eocd..eocd + 22];
        let eocd_abs = tail_start + eocd as u64;
        let mut count = u16_at(rec, 10) as u64;
        let mut dir_size = u32_at(rec, 12) as u64;
        let mut dir_offset = u32_at(rec, 16) as u64;
        let mut dir_end_limit = eocd_abs;
        // A zip64 locator sits right before the record; torch writes one for large files.
        if eocd_abs >= 20 {
            let loc = read_at(file, eocd_abs - 20, 20, file_len, "zip64 locator")?;
            if loc[..4] == *b"PK\x06\x07" {
                let z_off = u64_at(&loc, 8);
                let z = read_at(file, z_off, 56, eocd_abs - 20, "zip64 end record")?;
                if z[..4] != *b"PK\x06\x06" {
                    return Err(bad(format!("no zip64 end record at byte {z_off}")));
                }
                count = u64_at(&z, 32);
                dir_size = u64_at(&z, 40);
                dir_offset = u64_at(&z, 48);
                dir_end_limit = z_off;
            }
        }
        if u16_at(rec, 4) != 0 || u16_at(rec, 6) != 0 {
            return Err(bad("a multi-volume archive".into()));
        }
        if dir_size > MAX_DIRECTORY {
            return Err(bad(format!(
                "its central directory is {dir_size} bytes, more than the {MAX_DIRECTORY}-byte limit"
            )));
        }
        // Every directory entry takes at least 46 bytes: the count is bounded by the size.
        if count > dir_size / 46 {
            return Err(bad(format!(
                "it claims {count} entries, more than its {dir_size}-byte central directory holds"
            )));
        }
        let dir = read_at(
            file,
            dir_offset,
            dir_size,
            dir_end_limit,
            "central directory",
        )?;
        let mut entries = Vec::with_capacity(count as usize);
        let mut by_name = HashMap::with_capacity(count as usize);
        let mut p = 0usize;
        for i in 0..count {
            if p + 46 > dir.len() || dir[p..p + 4] != *b"PK\x01\x02" {
                return Err(bad(format!("central directory entry {i} is malformed")));
            }
            let flags = u16_at(&dir, p + 8);
            let method = u16_at(&dir, p + 10);
            let crc32 = u32_at(&dir, p + 16);
            let mut compressed = u32_at(&dir, p + 20) as u64;
            let mut size = u32_at(&dir, p + 24) as u64;
            let name_len = u16_at(&dir, p + 28) as usize;
            let extra_len = u16_at(&dir, p + 30) as usize;
            let comment_len = u16_at(&dir, p + 32) as usize;
            let mut local = u32_at(&dir, p + 42) as u64;
            let fixed_end = p + 46;
            let end = fixed_end + name_len + extra_len + comment_len;
            if end > dir.len() {
                return Err(bad(format!(
                    "central directory entry {i} runs past the directory"
                )));
            }
            let name = std::str::from_utf8(&dir[fixed_end..fixed_end + name_len])
                .map_err(|_| bad(format!("the name of entry {i} is not UTF-8")))?
                .to_string();
            // The zip64 extra field holds, in order, whichever of the three were saturated.
            let mut extra = &dir[fixed_end + name_len..fixed_end + name_len + extra_len];
            while extra.len() >= 4 {
                let id = u16_at(extra, 0);
                let n = u16_at(extra, 2) as usize;
                if 4 + n > extra.len() {
                    break;
                }
                if id == 1 {
                    let mut f = &extra[4..4 + n];
                    for field in [&mut size, &mut compressed, &mut local] {
                        if *field == 0xFFFF_FFFF {
                            if f.len() < 8 {
                                return Err(bad(format!("entry {name}: short zip64 field")));
                            }
                            *field = u64_at(f, 0);
                            f = &f[8..];
                        }
                    }
                }
                extra = &extra[4 + n..];
            }
            if flags & 1 != 0 {
                return Err(bad(format!("entry {name} is encrypted")));
            }
            let header = read_at(
                file,
                local,
                30,
                dir_offset,
                &format!("local header of {name}"),
            )?;
            if header[..4] != *b"PK\x03\x04" {
                return Err(bad(format!(
                    "entry {name} has no local header at byte {local}"
                )));
            }
            let data_start = local + 30 + u16_at(&header, 26) as u64 + u16_at(&header, 28) as u64;
            if data_start
                .checked_add(compressed)
                .is_none_or(|e| e > dir_offset)
            {
                return Err(bad(format!(
                    "entry {name} claims {compressed} bytes at byte {data_start}, beyond the \
                     archive's data (the file is truncated or corrupt)"
                )));
            }
            if method == 0 && compressed != size {
                return Err(bad(format!(
                    "stored entry {name} has {compressed} bytes but claims a size of {size}"
                )));
            }
            if by_name.insert(name.clone(), entries.len()).is_some() {
                return Err(bad(format!("entry {name} appears twice")));
            }
            entries.push(ZipEntry {
                name,
                method,
                compressed,
                size,
                crc32,
                data_start,
            });
            p = end;
        }
        Ok(Archive { entries, by_name })
    }

    pub fn get(&self, name: &str) -> Option<&ZipEntry> {
        self.by_name.get(name).map(|&i| &self.entries[i])
    }

    /// An entry's whole contents, refusing one larger than `limit` bytes; the CRC is checked.
    pub fn read_small(&self, file: &File, e: &ZipEntry, limit: u64) -> R<Vec<u8>> {
        let bad = |m: String| format!("entry {}: {m}", e.name);
        if e.size > limit {
            return Err(bad(format!(
                "is {} bytes, more than the {limit}-byte limit for it",
                e.size
            )));
        }
        let data = match e.method {
            0 => read_at(file, e.data_start, e.size, u64::MAX, &e.name)?,
            8 => {
                let raw = read_at(file, e.data_start, e.compressed, u64::MAX, &e.name)?;
                // Deflate expands at most about 1032 times: a size the data cannot reach is
                // not reserved up front.
                let mut out =
                    Vec::with_capacity(e.size.min(e.compressed.saturating_mul(1032)) as usize);
                flate2::read::DeflateDecoder::new(raw.as_slice())
                    .take(e.size + 1)
                    .read_to_end(&mut out)
                    .map_err(|err| bad(format!("cannot be decompressed: {err}")))?;
                if out.len() as u64 != e.size {
                    return Err(bad(format!(
                        "decompresses to {} bytes, not the {} its directory entry says",
                        out.len(),
                        e.size
                    )));
                }
                out
            }
            m => {
                return Err(bad(format!(
                    "uses compression method {m}, which l3kit cannot read"
                )))
            }
        };
        let mut crc = flate2::Crc::new();
        crc.update(&data);
        if crc.sum() != e.crc32 {
            return Err(bad(format!(
                "CRC-32 mismatch (the directory says {:08x}, the data has {:08x}): the file is \
                 corrupt",
                e.crc32,
                crc.sum()
            )));
        }
        Ok(data)
    }
}
