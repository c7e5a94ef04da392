//! Parquet input: one row of a string column is one sequence.
//!
//! The Parquet reader trusts sizes it reads from the file: the footer's list lengths and
//! schema child counts become `Vec::with_capacity`, a page header's sizes become the buffers
//! it reads and decompresses into, and gzip, zstd and LZ4-frame pages are inflated to their
//! end whatever the header says. A few hundred crafted bytes could therefore make it allocate
//! gigabytes, overflow its stack or trip its assertions. So before the Parquet reader sees a
//! byte, this module walks the footer and every page header of the text column itself (a
//! bounded walk over Thrift's compact encoding) and refuses what does not fit the file or
//! [`page_limit`], inflating compressed pages with a cap to learn their true size.

use super::{parquet_needs_a_file, RawBatch, ReadEnd, ReadOptions, TextPending};
use crate::util::error::{Error, IoContext, Result};
use crate::util::fs::open_regular_or_fifo;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Pages may hold this much more than the longest value accepted (a page holds many values).
pub const PAGE_SLACK: usize = 64 << 20;

/// The largest footer read.
pub const FOOTER_LIMIT: u64 = 256 << 20;

/// The deepest schema nesting accepted (the Parquet reader recurses once per level).
pub const SCHEMA_DEPTH_LIMIT: usize = 64;

/// Thrift structs nest at most this deep in a footer or page header.
const THRIFT_DEPTH_LIMIT: u32 = 64;

/// The largest page (compressed or not) a Parquet input may have.
pub fn page_limit(max_sequence_bytes: usize) -> usize {
    max_sequence_bytes.saturating_add(PAGE_SLACK)
}

pub(super) fn read_parquet(
    path: &Path,
    opts: &ReadOptions,
    progress: &Arc<AtomicU64>,
    emit: &mut dyn FnMut(RawBatch) -> bool,
) -> Result<ReadEnd> {
    use parquet::basic::Type as PhysicalType;
    use parquet::file::reader::{FileReader, SerializedFileReader};

    let field = opts.field.as_deref().ok_or_else(|| {
        Error::in_file(path, "Parquet input needs --field NAME (a string column)")
    })?;
    let (file, meta) = open_regular_or_fifo(path)?;
    if !meta.is_file() {
        return Err(parquet_needs_a_file(path));
    }
    let file_len = meta.len();
    check_footer(path, &file, file_len)?;
    let reader = SerializedFileReader::new(file.try_clone().with_path(path)?)
        .map_err(|e| Error::in_file(path, format!("not a readable Parquet file: {e}")))?;
    let meta = reader.metadata();
    let schema = meta.file_metadata().schema_descr();
    let columns: Vec<String> = schema.columns().iter().map(|c| c.path().string()).collect();
    let col_index = columns.iter().position(|c| c == field).ok_or_else(|| {
        Error::in_file(
            path,
            format!("no column \"{field}\" (columns: {})", columns.join(", ")),
        )
    })?;
    let descr = schema.column(col_index);
    if descr.physical_type() != PhysicalType::BYTE_ARRAY {
        return Err(Error::in_file(
            path,
            format!(
                "column \"{field}\" holds {:?}, not strings",
                descr.physical_type()
            ),
        ));
    }
    if descr.max_rep_level() > 0 {
        return Err(Error::in_file(
            path,
            format!("column \"{field}\" is a list; it must hold one string per row"),
        ));
    }
    let mut pending = TextPending::new(Arc::new(path.to_path_buf()), "row");
    let end = scan_rows(
        path,
        &file,
        file_len,
        &reader,
        col_index,
        field,
        descr.max_def_level(),
        opts,
        progress,
        &mut pending,
        emit,
    );
    pending.finish(end, emit)
}

#[allow(clippy::too_many_arguments)]
fn scan_rows(
    path: &Path,
    file: &File,
    file_len: u64,
    reader: &parquet::file::serialized_reader::SerializedFileReader<File>,
    col_index: usize,
    field: &str,
    max_def: i16,
    opts: &ReadOptions,
    progress: &Arc<AtomicU64>,
    pending: &mut TextPending,
    emit: &mut dyn FnMut(RawBatch) -> bool,
) -> Result<ReadEnd> {
    use parquet::column::reader::ColumnReader;
    use parquet::file::reader::FileReader;

    let cap = opts.max_sequence_bytes;
    let mut row = 0u64;
    for rg in 0..reader.num_row_groups() {
        let chunk = reader.metadata().row_group(rg).column(col_index);
        check_chunk(path, file, file_len, rg, field, chunk, cap)?;
        let group = reader
            .get_row_group(rg)
            .map_err(|e| Error::in_file(path, format!("row group {rg}: {e}")))?;
        let compressed = group.metadata().compressed_size().max(0) as u64;
        let column = group
            .get_column_reader(col_index)
            .map_err(|e| Error::in_file(path, format!("row group {rg}: {e}")))?;
        let ColumnReader::ByteArrayColumnReader(mut column) = column else {
            return Err(Error::in_file(
                path,
                format!("column \"{field}\" is not a string column"),
            ));
        };
        let mut values = Vec::new();
        let mut defs = Vec::new();
        loop {
            values.clear();
            defs.clear();
            let (records, _, levels) = column
                .read_records(4096, Some(&mut defs), None, &mut values)
                .map_err(|e| Error::in_file(path, format!("row group {rg}: {e}")))?;
            if records == 0 {
                break;
            }
            let mut next_value = values.iter();
            for i in 0..records {
                row += 1;
                let present = max_def == 0 || (i < levels && defs.get(i) == Some(&max_def));
                if !present {
                    return Err(Error::in_file(
                        path,
                        format!("row {row}: the record has no value in field \"{field}\" (null)"),
                    ));
                }
                let bytes = next_value
                    .next()
                    .ok_or_else(|| Error::in_file(path, format!("row {row}: missing value")))?;
                if bytes.data().len() > cap {
                    return Err(Error::in_file(
                        path,
                        format!(
                            "row {row}: the value in field \"{field}\" is {} bytes, longer than \
                             {cap} bytes, the longest sequence accepted (--max-sequence-bytes)",
                            bytes.data().len()
                        ),
                    ));
                }
                let text = std::str::from_utf8(bytes.data()).map_err(|e| {
                    Error::in_file(
                        path,
                        format!(
                            "row {row}: invalid UTF-8 in field \"{field}\" at byte {}",
                            e.valid_up_to()
                        ),
                    )
                })?;
                pending.push(text.to_string(), row);
                if pending.full() && !emit(pending.take()) {
                    return Ok(ReadEnd::Stopped);
                }
            }
        }
        progress.fetch_add(compressed, Ordering::Relaxed);
    }
    Ok(ReadEnd::Complete)
}

/// Malformed Thrift, or bytes that ran out before the value did.
#[derive(Debug, PartialEq, Eq)]
enum ThriftError {
    Truncated,
    Bad(String),
}

/// A bounded reader of Thrift's compact protocol over a byte slice: every length and count
/// is checked against the bytes left before it is believed.
struct Compact<'a> {
    buf: &'a [u8],
    pos: usize,
}

type ThriftResult<T> = std::result::Result<T, ThriftError>;

impl<'a> Compact<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Compact { buf, pos: 0 }
    }

    fn left(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn byte(&mut self) -> ThriftResult<u8> {
        let b = *self.buf.get(self.pos).ok_or(ThriftError::Truncated)?;
        self.pos += 1;
        Ok(b)
    }

    fn varint(&mut self) -> ThriftResult<u64> {
        let mut v = 0u64;
        for shift in (0..70).step_by(7) {
            let b = self.byte()?;
            if shift == 63 && b > 1 {
                return Err(ThriftError::Bad("a varint overflows 64 bits".into()));
            }
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(ThriftError::Bad("a varint is longer than 10 bytes".into()))
    }

    fn zigzag(&mut self) -> ThriftResult<i64> {
        let v = self.varint()?;
        Ok((v >> 1) as i64 ^ -((v & 1) as i64))
    }

    fn skip(&mut self, n: u64) -> ThriftResult<()> {
        if n > self.left() as u64 {
            return Err(ThriftError::Truncated);
        }
        self.pos += n as usize;
        Ok(())
    }

    /// A collection's element count, which must fit the bytes left (every element takes at
    /// least `min_size` bytes).
    fn count(&mut self, n: u64, min_size: u64) -> ThriftResult<u64> {
        if n.saturating_mul(min_size) > self.left() as u64 {
            return Err(ThriftError::Bad(format!(
                "a list claims {n} elements in {} bytes",
                self.left()
            )));
        }
        Ok(n)
    }

    /// The next field header of a struct: None at its end, else (field id, compact type).
    fn field(&mut self, last: &mut i16) -> ThriftResult<Option<(i16, u8)>> {
        let b = self.byte()?;
        if b == 0 {
            return Ok(None);
        }
        let ty = b & 0x0f;
        let delta = (b >> 4) as i16;
        let id = if delta == 0 {
            let v = self.zigzag()?;
            i16::try_from(v).map_err(|_| ThriftError::Bad(format!("field id {v}")))?
        } else {
            last.checked_add(delta)
                .ok_or_else(|| ThriftError::Bad("field id overflows".into()))?
        };
        *last = id;
        Ok(Some((id, ty)))
    }

    /// A list or set header: (element count, element type).
    fn list(&mut self) -> ThriftResult<(u64, u8)> {
        let b = self.byte()?;
        let mut n = u64::from(b >> 4);
        if n == 15 {
            n = self.varint()?;
        }
        Ok((self.count(n, 1)?, b & 0x0f))
    }

    /// An i32 value (compact type 5).
    fn i32(&mut self) -> ThriftResult<i32> {
        let v = self.zigzag()?;
        i32::try_from(v).map_err(|_| ThriftError::Bad(format!("an i32 holds {v}")))
    }

    /// Skip one value of compact type `ty` (`in_list`: a bool takes a byte).
    fn skip_value(&mut self, ty: u8, in_list: bool, depth: u32) -> ThriftResult<()> {
        if depth > THRIFT_DEPTH_LIMIT {
            return Err(ThriftError::Bad(format!(
                "values nest deeper than {THRIFT_DEPTH_LIMIT} levels"
            )));
        }
        match ty {
            1 | 2 => {
                if in_list {
                    self.skip(1)?;
                }
            }
            3 => self.skip(1)?,
            4..=6 => {
                self.varint()?;
            }
            7 => self.skip(8)?,
            8 => {
                let n = self.varint()?;
                self.skip(n)?;
            }
            9 | 10 => {
                let (n, elem) = self.list()?;
                for _ in 0..n {
                    self.skip_value(elem, true, depth + 1)?;
                }
            }
            11 => {
                let n = self.varint()?;
                let n = self.count(n, 2)?;
                if n > 0 {
                    let kv = self.byte()?;
                    for _ in 0..n {
                        self.skip_value(kv >> 4, true, depth + 1)?;
                        self.skip_value(kv & 0x0f, true, depth + 1)?;
                    }
                }
            }
            12 => self.skip_struct(depth + 1)?,
            other => return Err(ThriftError::Bad(format!("unknown Thrift type {other}"))),
        }
        Ok(())
    }

    fn skip_struct(&mut self, depth: u32) -> ThriftResult<()> {
        let mut last = 0;
        while let Some((_, ty)) = self.field(&mut last)? {
            self.skip_value(ty, false, depth)?;
        }
        Ok(())
    }
}

/// Check the footer before the Parquet reader decodes it: its length fits the file, every
/// list in it fits its bytes, and the schema's child counts describe a tree of bounded depth.
fn check_footer(path: &Path, file: &File, file_len: u64) -> Result<()> {
    if file_len < 12 {
        // Too short to be Parquet; the reader says so.
        return Ok(());
    }
    let mut tail = [0u8; 8];
    file.read_exact_at(&mut tail, file_len - 8)
        .with_path(path)?;
    if &tail[4..] != b"PAR1" {
        return Ok(());
    }
    let len = u64::from(u32::from_le_bytes(tail[..4].try_into().expect("4 bytes")));
    if len > file_len - 8 {
        return Ok(()); // the reader reports the impossible length
    }
    if len > FOOTER_LIMIT {
        return Err(Error::in_file(
            path,
            format!("the Parquet footer is {len} bytes, more than the {FOOTER_LIMIT}-byte limit"),
        ));
    }
    let mut footer = vec![0u8; len as usize];
    file.read_exact_at(&mut footer, file_len - 8 - len)
        .with_path(path)?;
    let bad = |e: ThriftError| {
        let what = match e {
            ThriftError::Truncated => "it ends inside a value".to_string(),
            ThriftError::Bad(m) => m,
        };
        Error::in_file(
            path,
            format!("not a readable Parquet file: the footer is malformed ({what})"),
        )
    };
    let mut c = Compact::new(&footer);
    let mut children: Vec<i32> = Vec::new();
    let mut last = 0;
    // FileMetaData: field 2 is the schema, a list of SchemaElement (field 5: num_children).
    while let Some((id, ty)) = c.field(&mut last).map_err(bad)? {
        if id == 2 && ty == 9 {
            let (n, elem) = c.list().map_err(bad)?;
            if n > 0 && elem != 12 {
                return Err(bad(ThriftError::Bad(
                    "the schema is not a list of structs".into(),
                )));
            }
            for _ in 0..n {
                let mut num_children = 0;
                let mut last = 0;
                while let Some((id, ty)) = c.field(&mut last).map_err(bad)? {
                    if id == 5 && ty == 5 {
                        num_children = c.i32().map_err(bad)?;
                    } else {
                        c.skip_value(ty, false, 1).map_err(bad)?;
                    }
                }
                children.push(num_children);
            }
        } else {
            c.skip_value(ty, false, 0).map_err(bad)?;
        }
    }
    check_schema_tree(&children).map_err(|m| {
        Error::in_file(
            path,
            format!("not a readable Parquet file: its schema is malformed ({m})"),
        )
    })
}

/// The schema is a tree flattened depth-first, each element giving its number of children.
fn check_schema_tree(children: &[i32]) -> std::result::Result<(), String> {
    // Per open group: children still to come.
    let mut open: Vec<u64> = Vec::new();
    for (i, &n) in children.iter().enumerate() {
        if n < 0 {
            return Err(format!("element {i} has {n} children"));
        }
        if i > 0 {
            match open.last_mut() {
                Some(left) => *left -= 1,
                None => return Err(format!("element {i} lies outside the root")),
            }
        }
        if n as usize > children.len() - i - 1 {
            return Err(format!(
                "element {i} claims {n} children, more than the {} elements after it",
                children.len() - i - 1
            ));
        }
        if n > 0 || i == 0 {
            open.push(n as u64);
            if open.len() > SCHEMA_DEPTH_LIMIT {
                return Err(format!("it nests deeper than {SCHEMA_DEPTH_LIMIT} levels"));
            }
        }
        while open.last() == Some(&0) {
            open.pop();
        }
    }
    Ok(())
}

/// A data page header's sizes (and the v2 fields the decompression needs).
#[derive(Debug, Default)]
struct PageSizes {
    header_len: usize,
    uncompressed: i32,
    compressed: i32,
    /// Data page v2: bytes of levels stored uncompressed before the data, and whether the
    /// data is compressed at all.
    v2_levels: Option<i64>,
    v2_compressed: bool,
}

fn page_header(buf: &[u8]) -> ThriftResult<PageSizes> {
    let mut c = Compact::new(buf);
    let mut p = PageSizes {
        v2_compressed: true,
        ..Default::default()
    };
    let mut last = 0;
    while let Some((id, ty)) = c.field(&mut last)? {
        match (id, ty) {
            (2, 5) => p.uncompressed = c.i32()?,
            (3, 5) => p.compressed = c.i32()?,
            (8, 12) => {
                let mut levels = 0i64;
                let mut last = 0;
                while let Some((id, ty)) = c.field(&mut last)? {
                    match (id, ty) {
                        (5, 5) | (6, 5) => levels += i64::from(c.i32()?.max(0)),
                        (7, 1) => p.v2_compressed = true,
                        (7, 2) => p.v2_compressed = false,
                        _ => c.skip_value(ty, false, 1)?,
                    }
                }
                p.v2_levels = Some(levels);
            }
            _ => c.skip_value(ty, false, 0)?,
        }
    }
    p.header_len = c.pos;
    Ok(p)
}

/// Check one column chunk of the text column before the Parquet reader reads it: its byte
/// range lies in the file, and every page header in it is well formed, fits the chunk and
/// stays within [`page_limit`], its compressed data inflating to no more than the header says.
fn check_chunk(
    path: &Path,
    file: &File,
    file_len: u64,
    rg: usize,
    field: &str,
    chunk: &parquet::file::metadata::ColumnChunkMetaData,
    cap: usize,
) -> Result<()> {
    let limit = page_limit(cap);
    let at = |msg: String| {
        Error::in_file(
            path,
            format!("row group {rg}, column \"{field}\": {msg} (a truncated or corrupted file?)"),
        )
    };
    let start = chunk
        .dictionary_page_offset()
        .unwrap_or_else(|| chunk.data_page_offset());
    let len = chunk.compressed_size();
    let end = u64::try_from(start)
        .ok()
        .zip(u64::try_from(len).ok())
        .and_then(|(s, l)| s.checked_add(l));
    let (start, end) = match end {
        Some(e) if e <= file_len => (start as u64, e),
        _ => {
            return Err(at(format!(
                "its data (offset {start}, {len} bytes) does not lie within the file's \
                 {file_len} bytes"
            )))
        }
    };
    let codec = chunk.compression();
    let mut pos = start;
    let mut window = Vec::new();
    while pos < end {
        let room = end - pos;
        // Page headers are small but may carry statistics: read more until one fits.
        let mut want = room.min(64 << 10);
        let sizes = loop {
            window.resize(want as usize, 0);
            file.read_exact_at(&mut window, pos).with_path(path)?;
            match page_header(&window) {
                Ok(p) => break p,
                Err(ThriftError::Truncated) if want < room.min(limit as u64) => {
                    want = (want * 4).min(room.min(limit as u64));
                }
                Err(ThriftError::Truncated) => {
                    return Err(at(format!("the page header at byte {pos} is cut short")))
                }
                Err(ThriftError::Bad(m)) => {
                    return Err(at(format!(
                        "the page header at byte {pos} is malformed ({m})"
                    )))
                }
            }
        };
        let (u, c) = (sizes.uncompressed, sizes.compressed);
        if u < 0 || c < 0 {
            return Err(at(format!("the page at byte {pos} has a negative size")));
        }
        let (u, c) = (u as u64, c as u64);
        if u.max(c) > limit as u64 {
            return Err(Error::in_file(
                path,
                format!(
                    "row group {rg}, column \"{field}\": the page at byte {pos} is {} bytes, more \
                     than the {limit}-byte limit on Parquet pages (--max-sequence-bytes + 64 MiB)",
                    u.max(c)
                ),
            ));
        }
        let data = pos + sizes.header_len as u64;
        if c > end - data {
            return Err(at(format!(
                "the page at byte {pos} runs past the end of its column chunk"
            )));
        }
        check_inflated(path, file, data, &sizes, codec, limit)
            .map_err(|m| at(format!("the page at byte {pos}: {m}")))?;
        pos = data + c;
    }
    Ok(())
}

/// The codecs whose Parquet decoders inflate a page to its end whatever its header says are
/// inflated here first, with a cap, so a page cannot grow past its declared size there.
fn check_inflated(
    path: &Path,
    file: &File,
    data: u64,
    sizes: &PageSizes,
    codec: parquet::basic::Compression,
    limit: usize,
) -> std::result::Result<(), String> {
    use parquet::basic::Compression as C;
    if !matches!(codec, C::GZIP(_) | C::ZSTD(_) | C::LZ4) || !sizes.v2_compressed {
        return Ok(());
    }
    let levels = sizes.v2_levels.unwrap_or(0).max(0) as u64;
    let c = sizes.compressed as u64;
    if levels > c {
        return Err("its level data is larger than the page".into());
    }
    let mut bytes = vec![0u8; c as usize];
    file.read_exact_at(&mut bytes, data)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let body = &bytes[levels as usize..];
    let declared = (sizes.uncompressed as u64).saturating_sub(levels);
    let cap = declared.min(limit as u64) + 1;
    let inflated = match codec {
        C::GZIP(_) => measure(flate2::read::MultiGzDecoder::new(body), cap),
        C::ZSTD(_) => match zstd::stream::read::Decoder::new(body) {
            Ok(d) => measure(d, cap),
            Err(_) => return Ok(()),
        },
        // Parquet's LZ4 is Hadoop framing first, then the LZ4 frame format as a fallback;
        // only the fallback inflates without bound.
        _ => measure(lz4_flex::frame::FrameDecoder::new(body), cap),
    };
    match inflated {
        // Undecodable data is the Parquet reader's to report.
        None => Ok(()),
        Some(n) if n > declared => Err(format!(
            "its data inflates to more than the {declared} bytes its header declares"
        )),
        Some(_) => Ok(()),
    }
}

/// Bytes `r` yields, reading at most `cap`; None when it fails to decode.
fn measure(r: impl Read, cap: u64) -> Option<u64> {
    std::io::copy(&mut r.take(cap), &mut std::io::sink()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_trees() {
        assert!(check_schema_tree(&[1, 0]).is_ok());
        assert!(check_schema_tree(&[2, 1, 0, 0]).is_ok());
        assert!(check_schema_tree(&[0]).is_ok());
        assert!(check_schema_tree(&[3, 0]).unwrap_err().contains("claims 3"));
        assert!(check_schema_tree(&[1, -1])
            .unwrap_err()
            .contains("-1 children"));
        assert!(check_schema_tree(&[1, 0, 0])
            .unwrap_err()
            .contains("outside the root"));
        let deep: Vec<i32> = (0..100).map(|i| if i < 99 { 1 } else { 0 }).collect();
        assert!(check_schema_tree(&deep).unwrap_err().contains("deeper"));
    }

    #[test]
    fn compact_counts_are_checked_against_the_bytes_left() {
        // A list header claiming 2^31 i32 elements, then nothing.
        let mut c = Compact::new(&[0xf5, 0x80, 0x80, 0x80, 0x80, 0x08]);
        assert!(matches!(c.list(), Err(ThriftError::Bad(m)) if m.contains("claims")));
        // A binary of 100 bytes with 2 present.
        let mut c = Compact::new(&[0x18, 100, 1, 2]);
        let mut last = 0;
        let (id, ty) = c.field(&mut last).unwrap().unwrap();
        assert_eq!((id, ty), (1, 8));
        assert_eq!(c.skip_value(ty, false, 0), Err(ThriftError::Truncated));
        // Structs nested past the limit.
        let deep = vec![0x1c; 200];
        assert!(matches!(
            Compact::new(&deep).skip_struct(0),
            Err(ThriftError::Bad(m)) if m.contains("nest")
        ));
    }

    #[test]
    fn page_headers() {
        // type 0 (i32 field 1 = 0), uncompressed 300, compressed 100, then stop.
        let buf = [0x15, 0x00, 0x15, 0xd8, 0x04, 0x15, 0xc8, 0x01, 0x00, 0xff];
        let p = page_header(&buf).unwrap();
        assert_eq!((p.uncompressed, p.compressed, p.header_len), (300, 100, 9));
        assert_eq!(page_header(&buf[..5]).unwrap_err(), ThriftError::Truncated);
    }
}
