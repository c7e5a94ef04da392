//! Corpus readers: plain text, JSON Lines, Parquet (all but Parquet optionally gzip-compressed)
//! and pre-tokenised u16/u32 id files.
//!
//! Readers stream: they hand out batches of about [`BATCH_BYTES`] of sequences and never hold a
//! file as a whole. Each batch remembers where it came from so that later stages (tokenisation,
//! id checks) can name the file and line, record or position in their errors.

pub use crate::formats::profile::{IdSplit, InputFormat};
use crate::util::error::{Error, IoContext, Result};
use crate::util::json::json_kind;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Roughly how much text (or ids) goes into one batch: large enough to keep every core busy
/// tokenising, small enough that a few batches in flight cost little memory.
pub const BATCH_BYTES: usize = 1 << 20;

/// Where a batch came from, for error messages.
#[derive(Clone, Debug)]
pub struct Origin {
    pub file: Arc<PathBuf>,
    /// Line, record or row number (1-based) of the batch's first sequence; for id files, the
    /// index of the first id.
    pub first: u64,
    pub unit: &'static str,
    /// Per sequence, its line/record/row number (text formats only).
    pub numbers: Vec<u64>,
}

impl Origin {
    pub fn describe(&self, index: usize) -> String {
        let n = self.numbers.get(index).copied().unwrap_or(self.first);
        format!("{}: {} {n}", self.file.display(), self.unit)
    }
}

/// A batch of sequences as read: text still to be tokenised, or token ids.
pub enum RawBatch {
    Text {
        origin: Origin,
        texts: Vec<String>,
    },
    Ids {
        origin: Origin,
        flat: Vec<u32>,
        offsets: Vec<usize>,
    },
}

/// What every reader needs besides the file.
#[derive(Clone, Debug)]
pub struct ReadOptions {
    pub field: Option<String>,
    pub split: Option<IdSplit>,
    pub vocab: u32,
}

/// Counts bytes read from the underlying file, for the progress bar.
struct Counting<R> {
    inner: R,
    counter: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.counter.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Read one input file, calling `emit` for every batch. `emit` returns false to stop early.
pub fn read_file(
    path: &Path,
    format: InputFormat,
    opts: &ReadOptions,
    progress: &Arc<AtomicU64>,
    emit: &mut dyn FnMut(RawBatch) -> bool,
) -> Result<()> {
    match format {
        InputFormat::Text | InputFormat::Jsonl => read_lines(path, format, opts, progress, emit),
        InputFormat::Parquet => read_parquet(path, opts, progress, emit),
        InputFormat::U16 => read_ids(path, 2, opts, progress, emit),
        InputFormat::U32 => read_ids(path, 4, opts, progress, emit),
    }
}

fn open_counting(path: &Path, progress: &Arc<AtomicU64>) -> Result<Counting<File>> {
    let file = File::open(path).with_path(path)?;
    if file.metadata().with_path(path)?.is_dir() {
        return Err(Error::in_file(path, "is a folder, not a file"));
    }
    Ok(Counting {
        inner: file,
        counter: progress.clone(),
    })
}

/// A line reader that looks through gzip (detected by its magic bytes, not the name).
fn line_reader(path: &Path, progress: &Arc<AtomicU64>) -> Result<Box<dyn BufRead + Send>> {
    let mut raw = BufReader::with_capacity(1 << 20, open_counting(path, progress)?);
    let head = raw.fill_buf().with_path(path)?;
    if head.starts_with(&[0x1f, 0x8b]) {
        let gz = flate2::bufread::MultiGzDecoder::new(raw);
        Ok(Box::new(BufReader::with_capacity(1 << 20, gz)))
    } else {
        Ok(Box::new(raw))
    }
}

fn read_lines(
    path: &Path,
    format: InputFormat,
    opts: &ReadOptions,
    progress: &Arc<AtomicU64>,
    emit: &mut dyn FnMut(RawBatch) -> bool,
) -> Result<()> {
    let field = match format {
        InputFormat::Jsonl => Some(opts.field.as_deref().ok_or_else(|| {
            Error::in_file(path, "JSON Lines input needs --field NAME (the text field)")
        })?),
        _ => None,
    };
    let file = Arc::new(path.to_path_buf());
    let unit = if field.is_some() { "record" } else { "line" };
    let mut reader = line_reader(path, progress)?;
    let mut line = Vec::new();
    let mut line_no = 0u64;
    let mut byte_offset = 0u64;
    let mut texts = Vec::new();
    let mut numbers = Vec::new();
    let mut batch_bytes = 0usize;
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(|e| Error::in_file(path, format!("read failed after line {line_no}: {e}")))?;
        if n == 0 {
            break;
        }
        line_no += 1;
        let text =
            match std::str::from_utf8(&line) {
                Ok(t) => t,
                Err(e) => {
                    return Err(Error::in_file(
                        path,
                        format!(
                        "invalid UTF-8 at line {line_no}, column {} (byte offset {} of the {}text)",
                        e.valid_up_to() + 1,
                        byte_offset + e.valid_up_to() as u64,
                        if format == InputFormat::Jsonl { "JSON " } else { "" }
                    ),
                    ))
                }
            };
        byte_offset += n as u64;
        let sequence = match field {
            None => text.to_string(),
            Some(field) => {
                if text.trim().is_empty() {
                    continue;
                }
                jsonl_field(text, field)
                    .map_err(|msg| Error::in_file(path, format!("line {line_no}: {msg}")))?
            }
        };
        batch_bytes += sequence.len();
        texts.push(sequence);
        numbers.push(line_no);
        if batch_bytes >= BATCH_BYTES {
            let origin = Origin {
                file: file.clone(),
                first: numbers[0],
                unit,
                numbers: std::mem::take(&mut numbers),
            };
            if !emit(RawBatch::Text {
                origin,
                texts: std::mem::take(&mut texts),
            }) {
                return Ok(());
            }
            batch_bytes = 0;
        }
    }
    if !texts.is_empty() {
        let origin = Origin {
            file,
            first: numbers[0],
            unit,
            numbers,
        };
        emit(RawBatch::Text { origin, texts });
    }
    Ok(())
}

fn jsonl_field(line: &str, field: &str) -> std::result::Result<String, String> {
    let value: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("not valid JSON: {e}"))?;
    let obj = value
        .as_object()
        .ok_or_else(|| "the record is not a JSON object".to_string())?;
    match obj.get(field) {
        Some(serde_json::Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(format!(
            "field \"{field}\" is not a string (found {})",
            json_kind(other)
        )),
        None => Err(format!("the record has no field \"{field}\"")),
    }
}

fn read_parquet(
    path: &Path,
    opts: &ReadOptions,
    progress: &Arc<AtomicU64>,
    emit: &mut dyn FnMut(RawBatch) -> bool,
) -> Result<()> {
    use parquet::basic::Type as PhysicalType;
    use parquet::column::reader::ColumnReader;
    use parquet::file::reader::{FileReader, SerializedFileReader};

    let field = opts.field.as_deref().ok_or_else(|| {
        Error::in_file(path, "Parquet input needs --field NAME (a string column)")
    })?;
    let file = File::open(path).with_path(path)?;
    let reader = SerializedFileReader::new(file)
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
    let max_def = descr.max_def_level();
    let file_arc = Arc::new(path.to_path_buf());
    let mut row = 0u64;
    let mut texts = Vec::new();
    let mut numbers = Vec::new();
    let mut batch_bytes = 0usize;
    for rg in 0..reader.num_row_groups() {
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
                let text = std::str::from_utf8(bytes.data()).map_err(|e| {
                    Error::in_file(
                        path,
                        format!(
                            "row {row}: invalid UTF-8 in field \"{field}\" at byte {}",
                            e.valid_up_to()
                        ),
                    )
                })?;
                batch_bytes += text.len();
                texts.push(text.to_string());
                numbers.push(row);
                if batch_bytes >= BATCH_BYTES {
                    let origin = Origin {
                        file: file_arc.clone(),
                        first: numbers[0],
                        unit: "row",
                        numbers: std::mem::take(&mut numbers),
                    };
                    if !emit(RawBatch::Text {
                        origin,
                        texts: std::mem::take(&mut texts),
                    }) {
                        return Ok(());
                    }
                    batch_bytes = 0;
                }
            }
        }
        progress.fetch_add(compressed, Ordering::Relaxed);
    }
    if !texts.is_empty() {
        let origin = Origin {
            file: file_arc,
            first: numbers[0],
            unit: "row",
            numbers,
        };
        emit(RawBatch::Text { origin, texts });
    }
    Ok(())
}

fn read_ids(
    path: &Path,
    width: usize,
    opts: &ReadOptions,
    progress: &Arc<AtomicU64>,
    emit: &mut dyn FnMut(RawBatch) -> bool,
) -> Result<()> {
    let split = opts.split.ok_or_else(|| {
        Error::in_file(
            path,
            "pre-tokenised input needs --separator ID or --seq-len N to cut it into sequences",
        )
    })?;
    let mut reader = open_counting(path, progress)?;
    let len = reader.inner.metadata().with_path(path)?.len();
    if len % width as u64 != 0 {
        return Err(Error::in_file(
            path,
            format!(
                "{len} bytes is not a multiple of the id width ({width} bytes for u{})",
                width * 8
            ),
        ));
    }
    let file = Arc::new(path.to_path_buf());
    let mut buf = vec![0u8; BATCH_BYTES / width * width];
    let mut index = 0u64; // index of the next id in the file
    let mut flat: Vec<u32> = Vec::new();
    let mut offsets = vec![0usize];
    let mut batch_first = 0u64;
    let mut current_len = 0usize; // ids of the open sequence already in `flat`
    loop {
        let n = read_full(&mut reader, &mut buf).with_path(path)?;
        if n == 0 {
            break;
        }
        if n % width != 0 {
            return Err(Error::in_file(path, "the file changed while being read"));
        }
        for chunk in buf[..n].chunks_exact(width) {
            let id = if width == 2 {
                u16::from_le_bytes([chunk[0], chunk[1]]) as u32
            } else {
                u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]])
            };
            let position = index;
            index += 1;
            if let IdSplit::Separator(sep) = split {
                if id == sep {
                    if current_len > 0 {
                        offsets.push(flat.len());
                        current_len = 0;
                    }
                    continue;
                }
            }
            if id >= opts.vocab {
                return Err(Error::in_file(
                    path,
                    format!(
                        "token id {id} at position {position} (byte offset {}) is not below the vocabulary size {}",
                        position * width as u64,
                        opts.vocab
                    ),
                ));
            }
            flat.push(id);
            current_len += 1;
            if let IdSplit::SeqLen(len) = split {
                if current_len == len {
                    offsets.push(flat.len());
                    current_len = 0;
                }
            }
        }
        // Hand out the complete sequences; the open one moves to the next batch.
        if flat.len() - current_len >= BATCH_BYTES / 4 && offsets.len() > 1 {
            let done = *offsets.last().expect("offsets start with 0");
            let tail = flat.split_off(done);
            let origin = Origin {
                file: file.clone(),
                first: batch_first,
                unit: "id",
                numbers: Vec::new(),
            };
            batch_first = index - tail.len() as u64;
            let batch = RawBatch::Ids {
                origin,
                flat: std::mem::replace(&mut flat, tail),
                offsets: std::mem::replace(&mut offsets, vec![0]),
            };
            if !emit(batch) {
                return Ok(());
            }
        }
    }
    if current_len > 0 {
        offsets.push(flat.len());
    }
    if offsets.len() > 1 {
        let origin = Origin {
            file,
            first: batch_first,
            unit: "id",
            numbers: Vec::new(),
        };
        emit(RawBatch::Ids {
            origin,
            flat,
            offsets,
        });
    }
    Ok(())
}

/// Fill `buf` as far as the reader allows (short reads are retried until end of file).
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(path: &Path, format: InputFormat, opts: &ReadOptions) -> Result<Vec<Vec<u32>>> {
        let progress = Arc::new(AtomicU64::new(0));
        let mut seqs = Vec::new();
        read_file(path, format, opts, &progress, &mut |b| {
            if let RawBatch::Ids { flat, offsets, .. } = b {
                for w in offsets.windows(2) {
                    seqs.push(flat[w[0]..w[1]].to_vec());
                }
            }
            true
        })?;
        Ok(seqs)
    }

    fn write_u16(dir: &Path, ids: &[u16]) -> PathBuf {
        let p = dir.join("ids.u16");
        let bytes: Vec<u8> = ids.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn separator_splits_and_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let p = write_u16(dir.path(), &[1, 2, 9, 9, 3, 9, 4]);
        let opts = ReadOptions {
            field: None,
            split: Some(IdSplit::Separator(9)),
            vocab: 10,
        };
        let seqs = collect(&p, InputFormat::U16, &opts).unwrap();
        assert_eq!(seqs, vec![vec![1, 2], vec![3], vec![4]]);
    }

    #[test]
    fn seq_len_keeps_short_tail() {
        let dir = tempfile::tempdir().unwrap();
        let p = write_u16(dir.path(), &[1, 2, 3, 4, 5]);
        let opts = ReadOptions {
            field: None,
            split: Some(IdSplit::SeqLen(2)),
            vocab: 10,
        };
        let seqs = collect(&p, InputFormat::U16, &opts).unwrap();
        assert_eq!(seqs, vec![vec![1, 2], vec![3, 4], vec![5]]);
    }

    #[test]
    fn infer_formats() {
        assert_eq!(
            InputFormat::infer(Path::new("a.txt.gz")).unwrap(),
            InputFormat::Text
        );
        assert_eq!(
            InputFormat::infer(Path::new("a.jsonl")).unwrap(),
            InputFormat::Jsonl
        );
        assert_eq!(
            InputFormat::infer(Path::new("x/a.parquet")).unwrap(),
            InputFormat::Parquet
        );
        assert_eq!(
            InputFormat::infer(Path::new("a.u32")).unwrap(),
            InputFormat::U32
        );
        assert!(InputFormat::infer(Path::new("a.bin")).is_err());
    }
}
