//! Corpus readers: plain text, JSON Lines, Parquet (all but Parquet optionally gzip-compressed)
//! and pre-tokenised u16/u32 id files.
//!
//! Readers stream: they hand out batches of about [`BATCH_BYTES`] of sequences and never hold a
//! file as a whole. Each batch remembers where it came from so that later stages (tokenisation,
//! id checks) can name the file and line, record or position in their errors.
//!
//! Memory is bounded by the input's structure, never by its size: one sequence (a line, a JSON
//! Lines record, a Parquet value, a run of ids) may hold at most
//! [`ReadOptions::max_sequence_bytes`] bytes of input, and a longer one is an error naming it,
//! found before more than that was read (a 10 MB line without a newline, `/dev/zero` through a
//! pipe or a gzip bomb all stop there). Parquet pages are checked against the same bound before
//! the Parquet reader allocates them (see `parquet.rs`).
//!
//! Inputs must be regular files, or FIFOs (named pipes, a shell's `<(command)`) for the
//! streaming formats: text, JSON Lines and ids. Parquet is read by seeking, so it must be a
//! regular file. Devices, sockets and folders are refused. Opening a FIFO never blocks: the
//! reader waits at most [`FIFO_WAIT`] for a writer, then reads until the writer closes.
//!
//! When a reader fails part-way it first hands out the complete sequences before the failure,
//! then returns the error: a consumer that stops early (a token budget) therefore sees the
//! same sequences and the same outcome whatever the timing of the threads around it.
//!
//! One file on purpose: the readers share the batch type, the sequence bound and the FIFO
//! rule, and each format's reader is a few dozen lines on top of them (Parquet, which needs its
//! own page-level bounds, has its own file).

mod parquet;
pub mod tokenize;
pub mod tokens;

pub use crate::formats::profile::{IdSplit, InputFormat};
use crate::util::error::{Error, IoContext, Result};
use crate::util::fs::{kind_of, open_regular_or_fifo};
use crate::util::json::json_kind;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Roughly how much text (or ids) goes into one batch: large enough to keep every core busy
/// tokenising, small enough that a few batches in flight cost little memory.
pub const BATCH_BYTES: usize = 1 << 20;

/// The default cap on one sequence, in bytes of input (`--max-sequence-bytes`). Tokenising
/// text costs far more memory than the text (about 130 bytes per byte with GPT-2's
/// tokenizer), so 4 MiB keeps the worst line near half a gigabyte.
pub const DEFAULT_MAX_SEQUENCE_BYTES: usize = 4 << 20;

/// The largest cap `--max-sequence-bytes` accepts.
pub const MAX_SEQUENCE_BYTES_LIMIT: usize = 1 << 30;

/// How long a FIFO may go without a writer before the read is given up.
pub const FIFO_WAIT: Duration = Duration::from_secs(10);

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
    /// The longest sequence accepted, in bytes of input: a text line or JSON Lines record
    /// (its newline included), a Parquet value, or a sequence of ids (ids x width).
    pub max_sequence_bytes: usize,
    /// Id files: hand out at most this many ids. A sequence that would go past it is not read
    /// to its end; the read ends with [`ReadEnd::Budget`] instead.
    pub max_ids: Option<u64>,
}

impl ReadOptions {
    pub fn new(vocab: u32) -> Self {
        ReadOptions {
            field: None,
            split: None,
            vocab,
            max_sequence_bytes: DEFAULT_MAX_SEQUENCE_BYTES,
            max_ids: None,
        }
    }
}

/// How a read ended (errors aside).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadEnd {
    /// The whole file was read and handed out.
    Complete,
    /// `emit` asked to stop.
    Stopped,
    /// Id files: the next sequence would have taken the ids handed out past
    /// [`ReadOptions::max_ids`]; it was not handed out, and nothing after it was read.
    Budget,
}

/// Check, without opening it, that `path` can be read as `format`; returns its size in bytes
/// (0 for a FIFO, whose size is unknown). [`read_file`] checks again on the opened file.
pub fn check_input(path: &Path, format: InputFormat) -> Result<u64> {
    let meta = std::fs::metadata(path).with_path(path)?;
    if meta.is_file() {
        return Ok(meta.len());
    }
    if meta.is_dir() {
        return Err(Error::in_file(path, "is a folder, not a file"));
    }
    if meta.file_type().is_fifo() {
        if format == InputFormat::Parquet {
            return Err(parquet_needs_a_file(path));
        }
        return Ok(0);
    }
    Err(Error::in_file(
        path,
        format!(
            "is {}; a corpus must be a regular file or a FIFO (named pipe)",
            kind_of(&meta)
        ),
    ))
}

fn parquet_needs_a_file(path: &Path) -> Error {
    Error::in_file(
        path,
        "is a FIFO; Parquet is read by seeking, so it must be a regular file",
    )
}

/// Read one input file, calling `emit` for every batch. `emit` returns false to stop early.
pub fn read_file(
    path: &Path,
    format: InputFormat,
    opts: &ReadOptions,
    progress: &Arc<AtomicU64>,
    emit: &mut dyn FnMut(RawBatch) -> bool,
) -> Result<ReadEnd> {
    if opts.max_sequence_bytes == 0 {
        return Err(Error::input("--max-sequence-bytes must be at least 1"));
    }
    match format {
        InputFormat::Text | InputFormat::Jsonl => read_lines(path, format, opts, progress, emit),
        InputFormat::Parquet => parquet::read_parquet(path, opts, progress, emit),
        InputFormat::U16 => read_ids(path, 2, opts, progress, emit),
        InputFormat::U32 => read_ids(path, 4, opts, progress, emit),
    }
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

/// An opened input: its bytes, and its size when it is a regular file (None for a FIFO).
struct Input {
    reader: Box<dyn Read + Send>,
    len: Option<u64>,
}

fn open_input(path: &Path) -> Result<Input> {
    let (file, meta) = open_regular_or_fifo(path)?;
    if meta.is_file() {
        return Ok(Input {
            reader: Box::new(file),
            len: Some(meta.len()),
        });
    }
    Ok(Input {
        reader: wait_for_writer(path, file, FIFO_WAIT)?,
        len: None,
    })
}

/// Wait for a FIFO opened without blocking to have a writer, for at most `wait`, and return
/// it as a [`PipeReader`].
///
/// A non-blocking read tells the cases apart: data (a writer, and the bytes it sent, which are
/// kept), "would block" (a writer that has not written yet: from then on the stream is the
/// writer's to pace), or end of file (no writer: either none has connected yet, or one came
/// and left without writing; both are waited on until `wait` runs out).
fn wait_for_writer(path: &Path, file: File, wait: Duration) -> Result<Box<dyn Read + Send>> {
    let deadline = Instant::now() + wait;
    let mut probe = vec![0u8; 64 << 10];
    loop {
        match (&file).read(&mut probe) {
            Ok(0) => {
                if Instant::now() >= deadline {
                    return Err(Error::in_file(
                        path,
                        format!(
                            "is a FIFO and nothing was written to it within {} s (no writer)",
                            wait.as_secs()
                        ),
                    ));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(n) => {
                probe.truncate(n);
                let pipe = PipeReader::new(file);
                return Ok(Box::new(std::io::Cursor::new(probe).chain(pipe)));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                return Ok(Box::new(PipeReader::new(file)));
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io(path, e)),
        }
    }
}

/// A pipe that says when it runs dry: the first read that finds no data returns
/// `WouldBlock` (the readers then hand out the sequences they hold, so a writer that pauses
/// after the budget is met cannot hold the sample back), and the next one waits for data.
struct PipeReader {
    file: File,
    told: bool,
}

impl PipeReader {
    fn new(file: File) -> Self {
        PipeReader { file, told: false }
    }
}

impl Read for PipeReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::os::fd::AsRawFd;
        loop {
            match (&self.file).read(buf) {
                Ok(n) => {
                    self.told = false;
                    return Ok(n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if !self.told {
                        self.told = true;
                        return Err(e);
                    }
                    let mut fd = libc::pollfd {
                        fd: self.file.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // SAFETY: one pollfd we own; -1 waits until data or hang-up.
                    let r = unsafe { libc::poll(&mut fd, 1, -1) };
                    if r < 0 {
                        let e = std::io::Error::last_os_error();
                        if e.kind() != std::io::ErrorKind::Interrupted {
                            return Err(e);
                        }
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
}

fn would_block(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::WouldBlock
}

/// A line reader that looks through gzip (detected by its magic bytes, not the name).
fn line_reader(path: &Path, progress: &Arc<AtomicU64>) -> Result<(Box<dyn BufRead + Send>, bool)> {
    let mut raw = Counting {
        inner: open_input(path)?.reader,
        counter: progress.clone(),
    };
    // Read the magic bytes whole: a pipe may deliver them one at a time.
    let mut head = [0u8; 2];
    let got = read_full(&mut raw, &mut head).with_path(path)?;
    let head = head[..got].to_vec();
    let gz = head == [0x1f, 0x8b];
    let joined = std::io::Cursor::new(head).chain(raw);
    if gz {
        let dec = flate2::bufread::MultiGzDecoder::new(BufReader::with_capacity(1 << 20, joined));
        Ok((Box::new(BufReader::with_capacity(1 << 20, dec)), true))
    } else {
        Ok((Box::new(BufReader::with_capacity(1 << 20, joined)), false))
    }
}

enum Line {
    Eof,
    Read,
    /// The line went past the cap; it was read no further.
    TooLong,
}

/// Read one line (its newline included) onto the end of `line`, refusing to hold more than
/// `cap` bytes. The caller clears `line` once it has used it: after an error such as
/// `WouldBlock` the bytes read so far stay, and a second call goes on with the line.
fn read_line_capped(r: &mut dyn BufRead, line: &mut Vec<u8>, cap: usize) -> std::io::Result<Line> {
    loop {
        let buf = match r.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            return Ok(if line.is_empty() {
                Line::Eof
            } else {
                Line::Read
            });
        }
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        if take > cap - line.len() {
            return Ok(Line::TooLong);
        }
        line.extend_from_slice(&buf[..take]);
        r.consume(take);
        if done {
            return Ok(Line::Read);
        }
    }
}

/// Text sequences waiting to be handed out as one batch.
struct TextPending {
    file: Arc<PathBuf>,
    unit: &'static str,
    texts: Vec<String>,
    numbers: Vec<u64>,
    bytes: usize,
}

impl TextPending {
    fn new(file: Arc<PathBuf>, unit: &'static str) -> Self {
        TextPending {
            file,
            unit,
            texts: Vec::new(),
            numbers: Vec::new(),
            bytes: 0,
        }
    }

    fn push(&mut self, text: String, number: u64) {
        self.bytes += text.len();
        self.texts.push(text);
        self.numbers.push(number);
    }

    fn full(&self) -> bool {
        self.bytes >= BATCH_BYTES
    }

    fn take(&mut self) -> RawBatch {
        self.bytes = 0;
        let numbers = std::mem::take(&mut self.numbers);
        RawBatch::Text {
            origin: Origin {
                file: self.file.clone(),
                first: numbers.first().copied().unwrap_or(0),
                unit: self.unit,
                numbers,
            },
            texts: std::mem::take(&mut self.texts),
        }
    }

    /// Hand out what is left after `end` (the reader's result), then return that result.
    fn finish(
        &mut self,
        end: Result<ReadEnd>,
        emit: &mut dyn FnMut(RawBatch) -> bool,
    ) -> Result<ReadEnd> {
        if matches!(end, Ok(ReadEnd::Stopped)) || self.texts.is_empty() {
            return end;
        }
        if !emit(self.take()) {
            return Ok(ReadEnd::Stopped);
        }
        end
    }
}

fn read_lines(
    path: &Path,
    format: InputFormat,
    opts: &ReadOptions,
    progress: &Arc<AtomicU64>,
    emit: &mut dyn FnMut(RawBatch) -> bool,
) -> Result<ReadEnd> {
    let field = match format {
        InputFormat::Jsonl => Some(opts.field.as_deref().ok_or_else(|| {
            Error::in_file(path, "JSON Lines input needs --field NAME (the text field)")
        })?),
        _ => None,
    };
    let unit = if field.is_some() { "record" } else { "line" };
    let (mut reader, gz) = line_reader(path, progress)?;
    let mut pending = TextPending::new(Arc::new(path.to_path_buf()), unit);
    let end = scan_lines(path, field, opts, gz, &mut *reader, &mut pending, emit);
    pending.finish(end, emit)
}

fn scan_lines(
    path: &Path,
    field: Option<&str>,
    opts: &ReadOptions,
    gz: bool,
    reader: &mut dyn BufRead,
    pending: &mut TextPending,
    emit: &mut dyn FnMut(RawBatch) -> bool,
) -> Result<ReadEnd> {
    let cap = opts.max_sequence_bytes;
    let mut line = Vec::new();
    let mut line_no = 0u64;
    let mut byte_offset = 0u64;
    loop {
        line.clear();
        let read = loop {
            match read_line_capped(reader, &mut line, cap) {
                Ok(read) => break read,
                // A pipe ran dry: hand out what is complete before waiting for more.
                Err(e) if would_block(&e) => {
                    if !pending.texts.is_empty() && !emit(pending.take()) {
                        return Ok(ReadEnd::Stopped);
                    }
                }
                Err(e) => {
                    return Err(Error::in_file(
                        path,
                        format!("read failed after line {line_no}: {e}"),
                    ))
                }
            }
        };
        line_no += 1;
        match read {
            Line::Eof => return Ok(ReadEnd::Complete),
            Line::Read => {}
            Line::TooLong => {
                return Err(Error::in_file(
                    path,
                    format!(
                        "line {line_no}{} is longer than {cap} bytes, the longest sequence \
                         accepted (--max-sequence-bytes; it bounds memory, since tokenising a \
                         line costs about a hundred times its size)",
                        if gz { " of the decompressed text" } else { "" }
                    ),
                ))
            }
        }
        let n = line.len();
        let text = match std::str::from_utf8(&line) {
            Ok(t) => t,
            Err(e) => {
                return Err(Error::in_file(
                    path,
                    format!(
                        "invalid UTF-8 at line {line_no}, column {} (byte offset {} of the {}text)",
                        e.valid_up_to() + 1,
                        byte_offset + e.valid_up_to() as u64,
                        if field.is_some() { "JSON " } else { "" }
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
        pending.push(sequence, line_no);
        if pending.full() && !emit(pending.take()) {
            return Ok(ReadEnd::Stopped);
        }
    }
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

/// Id sequences waiting to be handed out: complete sequences in `flat[..offsets.last()]`,
/// then the open one.
struct IdPending {
    file: Arc<PathBuf>,
    flat: Vec<u32>,
    offsets: Vec<usize>,
    /// Index in the file of `flat[0]`.
    first: u64,
}

impl IdPending {
    fn complete(&self) -> usize {
        *self.offsets.last().expect("offsets start with 0")
    }

    /// Hand out the complete sequences; the open one stays. `next` is the index in the file
    /// of the id after `flat`.
    fn take(&mut self, next: u64) -> RawBatch {
        let done = self.complete();
        let tail = self.flat.split_off(done);
        let origin = Origin {
            file: self.file.clone(),
            first: self.first,
            unit: "id",
            numbers: Vec::new(),
        };
        self.first = next - tail.len() as u64;
        RawBatch::Ids {
            origin,
            flat: std::mem::replace(&mut self.flat, tail),
            offsets: std::mem::replace(&mut self.offsets, vec![0]),
        }
    }

    /// Hand out the complete sequences after `end` (the reader's result), then return it.
    fn finish(
        &mut self,
        end: Result<ReadEnd>,
        next: u64,
        emit: &mut dyn FnMut(RawBatch) -> bool,
    ) -> Result<ReadEnd> {
        if matches!(end, Ok(ReadEnd::Stopped)) || self.offsets.len() < 2 {
            return end;
        }
        if !emit(self.take(next)) {
            return Ok(ReadEnd::Stopped);
        }
        end
    }
}

fn read_ids(
    path: &Path,
    width: usize,
    opts: &ReadOptions,
    progress: &Arc<AtomicU64>,
    emit: &mut dyn FnMut(RawBatch) -> bool,
) -> Result<ReadEnd> {
    let split = opts.split.ok_or_else(|| {
        Error::in_file(
            path,
            "pre-tokenised input needs --separator ID or --seq-len N to cut it into sequences",
        )
    })?;
    let bits = width * 8;
    let max_ids = (opts.max_sequence_bytes / width).max(1);
    match split {
        IdSplit::Separator(sep) if width == 2 && sep > u16::MAX as u32 => {
            return Err(Error::in_file(
                path,
                format!(
                    "--separator {sep} cannot occur in a u16 file (its ids are below 65536), so \
                     the whole file would be one sequence"
                ),
            ))
        }
        IdSplit::SeqLen(n) if n > max_ids => {
            return Err(Error::in_file(
                path,
                format!(
                    "--seq-len {n} is longer than the longest sequence accepted: {max_ids} u{bits} \
                     ids ({} bytes, --max-sequence-bytes)",
                    opts.max_sequence_bytes
                ),
            ))
        }
        _ => {}
    }
    let input = open_input(path)?;
    if let Some(len) = input.len {
        if len % width as u64 != 0 {
            return Err(Error::in_file(
                path,
                format!(
                    "{len} bytes is not a multiple of the id width ({width} bytes for u{bits})"
                ),
            ));
        }
    }
    let mut reader = Counting {
        inner: input.reader,
        counter: progress.clone(),
    };
    let mut pending = IdPending {
        file: Arc::new(path.to_path_buf()),
        flat: Vec::new(),
        offsets: vec![0],
        first: 0,
    };
    let mut next = 0u64;
    let end = scan_ids(
        path,
        width,
        split,
        max_ids,
        opts,
        input.len.is_some(),
        &mut reader,
        &mut pending,
        &mut next,
        emit,
    );
    pending.finish(end, next, emit)
}

#[allow(clippy::too_many_arguments)]
fn scan_ids(
    path: &Path,
    width: usize,
    split: IdSplit,
    max_ids: usize,
    opts: &ReadOptions,
    regular: bool,
    reader: &mut impl Read,
    pending: &mut IdPending,
    index: &mut u64,
    emit: &mut dyn FnMut(RawBatch) -> bool,
) -> Result<ReadEnd> {
    let mut buf = vec![0u8; BATCH_BYTES / width * width];
    // Ids in complete sequences so far (handed out or pending), for `max_ids`.
    let mut handed = 0u64;
    let budget = opts.max_ids;
    let mut current_len = 0usize; // ids of the open sequence already in `flat`
    loop {
        let (n, dry) = read_ids_full(reader, &mut buf, width).with_path(path)?;
        if n == 0 && !dry {
            break;
        }
        if n % width != 0 {
            return Err(Error::in_file(
                path,
                if regular {
                    "the file changed while being read".to_string()
                } else {
                    format!(
                        "the stream ended inside an id ({} of its {width} bytes)",
                        n % width
                    )
                },
            ));
        }
        for chunk in buf[..n].chunks_exact(width) {
            let id = if width == 2 {
                u16::from_le_bytes([chunk[0], chunk[1]]) as u32
            } else {
                u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]])
            };
            let position = *index;
            *index += 1;
            if let IdSplit::Separator(sep) = split {
                if id == sep {
                    if current_len > 0 {
                        pending.offsets.push(pending.flat.len());
                        handed += current_len as u64;
                        current_len = 0;
                    }
                    continue;
                }
            }
            if id >= opts.vocab {
                return Err(Error::in_file(
                    path,
                    format!(
                        "token id {id} at position {position} (byte offset {}) is not below the \
                         vocabulary size {}",
                        position * width as u64,
                        opts.vocab
                    ),
                ));
            }
            pending.flat.push(id);
            current_len += 1;
            if budget.is_some_and(|b| current_len as u64 > b.saturating_sub(handed)) {
                // This sequence cannot fit: drop it unread and hand out the ones before.
                pending.flat.truncate(pending.complete());
                return Ok(ReadEnd::Budget);
            }
            if current_len > max_ids {
                let start = position + 1 - current_len as u64;
                let why = match split {
                    IdSplit::Separator(sep) => format!(" (the separator {sep} never came)"),
                    IdSplit::SeqLen(_) => String::new(),
                };
                return Err(Error::in_file(
                    path,
                    format!(
                        "the sequence starting at id {start} (byte offset {}) is longer than \
                         {max_ids} ids{why}, the longest accepted ({} bytes, \
                         --max-sequence-bytes)",
                        start * width as u64,
                        opts.max_sequence_bytes
                    ),
                ));
            }
            if let IdSplit::SeqLen(len) = split {
                if current_len == len {
                    pending.offsets.push(pending.flat.len());
                    handed += current_len as u64;
                    current_len = 0;
                }
            }
        }
        // Full enough, or a pipe ran dry: hand out the complete sequences.
        let ready = pending.complete() >= BATCH_BYTES / 4 || (dry && pending.offsets.len() > 1);
        if ready && !emit(pending.take(*index)) {
            return Ok(ReadEnd::Stopped);
        }
    }
    if current_len > 0 {
        if budget.is_some_and(|b| current_len as u64 > b.saturating_sub(handed)) {
            pending.flat.truncate(pending.complete());
            return Ok(ReadEnd::Budget);
        }
        pending.offsets.push(pending.flat.len());
    }
    Ok(ReadEnd::Complete)
}

/// Fill `buf` as far as the reader allows (short reads are retried until end of file; a
/// pipe that runs dry is waited on).
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted || would_block(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// [`read_full`] for ids: also stops, returning `true`, when a pipe runs dry on a whole
/// number of ids, so the complete sequences can be handed out before it is waited on.
fn read_ids_full(
    reader: &mut impl Read,
    buf: &mut [u8],
    width: usize,
) -> std::io::Result<(usize, bool)> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if would_block(&e) && filled % width == 0 => return Ok((filled, true)),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted || would_block(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok((filled, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(path: &Path, format: InputFormat, opts: &ReadOptions) -> Result<Vec<Vec<u32>>> {
        collect_end(path, format, opts).map(|(s, _)| s)
    }

    fn collect_end(
        path: &Path,
        format: InputFormat,
        opts: &ReadOptions,
    ) -> Result<(Vec<Vec<u32>>, ReadEnd)> {
        let progress = Arc::new(AtomicU64::new(0));
        let mut seqs = Vec::new();
        let end = read_file(path, format, opts, &progress, &mut |b| {
            if let RawBatch::Ids { flat, offsets, .. } = b {
                for w in offsets.windows(2) {
                    seqs.push(flat[w[0]..w[1]].to_vec());
                }
            }
            true
        })?;
        Ok((seqs, end))
    }

    fn write_u16(dir: &Path, ids: &[u16]) -> PathBuf {
        let p = dir.join("ids.u16");
        let bytes: Vec<u8> = ids.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(&p, bytes).unwrap();
        p
    }

    fn ids_opts(split: IdSplit, vocab: u32) -> ReadOptions {
        ReadOptions {
            split: Some(split),
            ..ReadOptions::new(vocab)
        }
    }

    #[test]
    fn separator_splits_and_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let p = write_u16(dir.path(), &[1, 2, 9, 9, 3, 9, 4]);
        let seqs = collect(&p, InputFormat::U16, &ids_opts(IdSplit::Separator(9), 10)).unwrap();
        assert_eq!(seqs, vec![vec![1, 2], vec![3], vec![4]]);
    }

    #[test]
    fn seq_len_keeps_short_tail() {
        let dir = tempfile::tempdir().unwrap();
        let p = write_u16(dir.path(), &[1, 2, 3, 4, 5]);
        let seqs = collect(&p, InputFormat::U16, &ids_opts(IdSplit::SeqLen(2), 10)).unwrap();
        assert_eq!(seqs, vec![vec![1, 2], vec![3, 4], vec![5]]);
    }

    #[test]
    fn id_budget_stops_before_the_sequence_that_does_not_fit() {
        let dir = tempfile::tempdir().unwrap();
        let p = write_u16(dir.path(), &[1, 2, 9, 3, 4, 5, 9, 6]);
        for (budget, seqs, end) in [
            (2, vec![vec![1, 2]], ReadEnd::Budget),
            (4, vec![vec![1, 2]], ReadEnd::Budget),
            (5, vec![vec![1, 2], vec![3, 4, 5]], ReadEnd::Budget),
            (
                6,
                vec![vec![1, 2], vec![3, 4, 5], vec![6]],
                ReadEnd::Complete,
            ),
            (1, vec![], ReadEnd::Budget),
        ] {
            let opts = ReadOptions {
                max_ids: Some(budget),
                ..ids_opts(IdSplit::Separator(9), 10)
            };
            let got = collect_end(&p, InputFormat::U16, &opts).unwrap();
            assert_eq!(got, (seqs, end), "budget {budget}");
        }
    }

    #[test]
    fn long_id_sequences_are_refused_after_the_complete_ones() {
        let dir = tempfile::tempdir().unwrap();
        let p = write_u16(dir.path(), &[1, 2, 9, 3, 4, 5, 6]);
        let opts = ReadOptions {
            max_sequence_bytes: 6, // 3 u16 ids
            ..ids_opts(IdSplit::Separator(9), 10)
        };
        let progress = Arc::new(AtomicU64::new(0));
        let mut seqs = Vec::new();
        let e = read_file(&p, InputFormat::U16, &opts, &progress, &mut |b| {
            if let RawBatch::Ids { offsets, .. } = b {
                seqs.push(offsets.len() - 1);
            }
            true
        })
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("starting at id 3") && e.contains("never came"),
            "{e}"
        );
        assert_eq!(seqs, vec![1], "the complete sequence is handed out first");
        let e = collect(
            &p,
            InputFormat::U16,
            &ReadOptions {
                max_sequence_bytes: 6,
                ..ids_opts(IdSplit::SeqLen(4), 10)
            },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("--seq-len 4"), "{e}");
        let e = collect(
            &p,
            InputFormat::U16,
            &ids_opts(IdSplit::Separator(70000), 10),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("cannot occur in a u16 file"), "{e}");
    }

    #[test]
    fn capped_lines() {
        let read = |r: &mut &[u8], line: &mut Vec<u8>| read_line_capped(r, line, 3).unwrap();
        let mut r: &[u8] = b"ab\ncdef\ngh";
        let mut line = Vec::new();
        assert!(matches!(read(&mut r, &mut line), Line::Read));
        assert_eq!(line, b"ab\n");
        line.clear();
        assert!(matches!(read(&mut r, &mut line), Line::TooLong));
        let mut r: &[u8] = b"abc";
        line.clear();
        assert!(matches!(read(&mut r, &mut line), Line::Read));
        line.clear();
        assert!(matches!(read(&mut r, &mut line), Line::Eof));
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
