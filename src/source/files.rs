//! The file source: a file or a directory tree of NDJSON, gzip NDJSON (the S3 delivery
//! layout), and JSON exports (CloudWatch `GetLogEvents`/`FilterLogEvents`, Logs Insights).
//!
//! Each file has a checkpoint: how far its decoded bytes have been counted, its size then, and
//! a hash of its first bytes. An unchanged file is skipped without being opened; a grown plain
//! file is read from where it stopped; a grown gzip file is decoded again and the counted part
//! passed over; a file whose first bytes changed was replaced and is read from the start (the
//! dedup index keeps already-counted records from counting twice).

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::document;
use super::lines::LineReader;
use super::stream::{self, End, Frame, Mark, Start};
use super::{Decoder, Piece};
use crate::quarantine::{Reason, Rejected};

/// The zero-byte object Bedrock writes to check bucket permissions.
pub const MARKER_OBJECT: &str = "amazon-bedrock-logs-permission-check";

/// How many leading bytes identify a file.
const HEAD_BYTES: u64 = 1024;

/// The checkpoint of one file (wire format, version 1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilePosition {
    pub v: u8,
    /// Decoded bytes consumed.
    pub offset: u64,
    /// Lines consumed (so line numbers stay right after a resume).
    pub line: u64,
    /// The file's size when this position was committed.
    pub size: u64,
    /// How many leading bytes `head` covers.
    pub head_len: u64,
    /// FNV-1a-64 of the leading bytes, hex.
    pub head: String,
    /// The file is read as JSON documents (an export): it is read again from its start
    /// whenever it changes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub document: bool,
    /// Where in a document `offset` lies.
    #[serde(default, skip_serializing_if = "Frame::is_top")]
    pub frame: Frame,
    /// The file was not read to its end (a crash or SIGTERM stopped the read between two
    /// pieces): the next pass resumes from here even though the file has not changed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub partial: bool,
    /// CRC-32 of the decoded bytes before `offset`: a file whose counted part changed (records
    /// inserted, a rewrite that kept the first lines) is read again from the start, not taken
    /// as grown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crc: Option<u32>,
}

impl FilePosition {
    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("a position serialises")
    }

    pub fn decode(s: &str) -> Option<FilePosition> {
        serde_json::from_str::<FilePosition>(s).ok().filter(|p| p.v == 1)
    }
}

/// One file to read, with where to start.
#[derive(Debug, Clone)]
pub struct FileJob {
    pub path: PathBuf,
    pub key: String,
    pub size: u64,
    /// The stored position this job starts from.
    pub expected: Option<String>,
    /// Where to start reading (`None`: from the start).
    pub resume: Option<FilePosition>,
}

/// Settings for reading files.
#[derive(Debug, Clone)]
pub struct ReadSettings {
    pub max_record_bytes: usize,
    /// Records per piece. Small pieces keep memory flat; the committer merges them into
    /// batches of `ingest.batch_records`.
    pub piece_records: usize,
    /// Follow mode: an unterminated last line that does not parse yet is left for later.
    pub follow: bool,
}

/// What every read of one input carries: the decoder, the settings, the byte counter shown as
/// progress, the stop flag and where pieces go (`send` is false once the receiver is gone).
pub struct Reading<'r, 'd> {
    pub decoder: &'r mut Decoder<'d>,
    pub settings: &'r ReadSettings,
    pub bytes_read: &'r Arc<AtomicU64>,
    pub shutdown: &'r AtomicBool,
    pub send: &'r mut dyn FnMut(Piece) -> bool,
}

/// The checkpoint key of a file, from its canonical path.
fn source_key(canonical: &Path) -> String {
    format!("file://{}", canonical.display())
}

/// Whether a file found in a directory is read: by its name, or, for a name with no
/// extension (the objects Kinesis Data Firehose writes, CloudWatch Logs subscription data,
/// have none), by its first bytes: gzip, or JSON.
fn is_log_file(name: &str, path: &Path) -> bool {
    if name.starts_with('.') {
        return false;
    }
    is_log_file_name(name) || (!name.contains('.') && looks_like_logs(path))
}

/// A name with a log extension (or Bedrock's marker object's name).
fn is_log_file_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    name == MARKER_OBJECT
        || [".json", ".jsonl", ".ndjson", ".log", ".json.gz", ".jsonl.gz", ".ndjson.gz", ".log.gz", ".gz"]
            .iter()
            .any(|ext| lower.ends_with(ext))
}

/// A file that starts with the gzip magic bytes, or with a JSON object or array (after a BOM
/// and white space).
fn looks_like_logs(path: &Path) -> bool {
    let mut head = [0u8; 64];
    let Ok(n) = File::open(path).and_then(|mut f| f.read(&mut head)) else { return false };
    let head = &head[..n];
    let text = head.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(head).trim_ascii_start();
    head.starts_with(&[0x1f, 0x8b]) || matches!(text.first(), Some(b'{' | b'['))
}

/// A file to read: its path as named or found, and its canonical path (the checkpoint key).
pub struct Found {
    pub path: PathBuf,
    canonical: PathBuf,
}

/// Every log file under `paths`, each file once, in the order to read them: by the time its
/// path names ([`path_time`]; files whose path names none last), then by path. Named files
/// are taken whatever their name; inside directories only log-looking names are. `exclude`
/// keeps tally's own files out.
///
/// Time order matters for a backfill from several sources: the dedup window is measured back
/// from the newest hour merged so far, so in path order the whole S3 tree (`AWSLogs/…`) came
/// before CloudWatch exports of its first days, which were then refused as too old. It also
/// spreads the exports (plain text, many counter keys per batch) among the S3 objects
/// (compressed, few keys each), so the readers and the committer work side by side instead of
/// each in turn.
///
/// A directory is canonicalized once and the files in it get their canonical path by joining
/// their names to it; only a symbolic link is resolved one by one. Resolving every file
/// (`realpath`: a `readlink` per path component) was 29,000 system calls for the benchmark's
/// 1,472 files, most of a pass's set-up time before any file was read.
pub fn discover(paths: &[PathBuf], exclude: &[PathBuf]) -> io::Result<Discovered> {
    let excluded: Vec<PathBuf> = exclude.iter().filter_map(|p| std::fs::canonicalize(p).ok()).collect();
    let mut d = Discovered::default();
    for p in paths {
        // A path named on the command line that does not exist is a mistake in the command:
        // the run stops before reading anything.
        let meta = std::fs::metadata(p).map_err(|e| named(p, e))?;
        let canonical = std::fs::canonicalize(p).map_err(|e| named(p, e))?;
        if meta.is_dir() {
            walk(p, &canonical, &mut d);
        } else if meta.is_file() {
            d.files.push(Found { path: p.clone(), canonical });
        } else {
            d.passed_over.push(format!("{}: not a regular file ({})", p.display(), kind_of(&meta)));
        }
    }
    let out = &mut d.files;
    out.retain(|f| !excluded.contains(&f.canonical));
    out.sort_by(|a, b| a.path.cmp(&b.path));
    let mut seen = std::collections::HashSet::new();
    out.retain(|f| seen.insert(f.canonical.clone()));
    // Stable: files of one time stay in path order.
    out.sort_by_cached_key(|f| path_time(&f.path).unwrap_or(i64::MAX));
    Ok(d)
}

/// What discovery found under the inputs.
#[derive(Default)]
pub struct Discovered {
    /// The regular files to read, in order.
    pub files: Vec<Found>,
    /// Inputs that could not be looked at (a dangling symbolic link, an unreadable folder),
    /// each named with why: failed inputs, while the rest is read.
    pub failed: Vec<String>,
    /// What was passed over on purpose: FIFOs, devices, sockets (reading one could block
    /// forever, or never end).
    pub passed_over: Vec<String>,
}

fn kind_of(meta: &std::fs::Metadata) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        let t = meta.file_type();
        if t.is_fifo() {
            return "a FIFO";
        }
        if t.is_char_device() || t.is_block_device() {
            return "a device";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    let _ = meta;
    "not a file or folder"
}

/// The time a path names, as seconds since the epoch: its last date, at the hour given with
/// it or else midnight UTC. Dates are `YYYY/MM/DD[/HH]` (the S3 layout's folders),
/// `YYYY-MM-DD[THH…]` (a file named by day) or `YYYYMMDDTHH…` (an S3 object's name), not
/// inside a longer run of digits.
pub fn path_time(path: &Path) -> Option<i64> {
    let text = path.to_string_lossy();
    let b = text.as_bytes();
    (0..b.len()).rev().filter(|&i| i == 0 || !b[i - 1].is_ascii_digit()).find_map(|i| time_at(&b[i..]))
}

/// The date (and hour) `b` starts with, in one of [`path_time`]'s forms.
fn time_at(b: &[u8]) -> Option<i64> {
    let num = |at: usize, len: usize| -> Option<u32> {
        let d = b.get(at..at + len)?;
        d.iter().all(u8::is_ascii_digit).then(|| d.iter().fold(0, |n, c| n * 10 + u32::from(c - b'0')))
    };
    let is_digit = |at: usize| b.get(at).is_some_and(u8::is_ascii_digit);
    let year = num(0, 4).filter(|y| (2000..3000).contains(y))?;
    // (month, day, where the date ends, what may join an hour to it)
    let (month, day, end, joiner) = match b.get(4)? {
        &sep @ (b'/' | b'-') if b.get(7) == Some(&sep) => {
            (num(5, 2)?, num(8, 2)?, 10, if sep == b'/' { b'/' } else { b'T' })
        }
        _ if b.get(8) == Some(&b'T') => (num(4, 2)?, num(6, 2)?, 8, b'T'),
        _ => return None,
    };
    let hour = match num(end + 1, 2) {
        // An hour folder stands alone; after a `T`, minutes and seconds may follow.
        Some(h) if b[end] == joiner && (joiner == b'T' || !is_digit(end + 3)) => h,
        _ if end == 8 => return None,
        _ if is_digit(end) => return None,
        _ => 0,
    };
    let at = chrono::NaiveDate::from_ymd_opt(year as i32, month, day)?.and_hms_opt(hour, 0, 0)?;
    Some(at.and_utc().timestamp())
}

/// `e`, with the path it happened on in its message.
fn named(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// The log files under `dir`, whose canonical path is `canonical`. What cannot be looked at
/// is a failed input, named; what is not a regular file is passed over; the rest is read.
fn walk(dir: &Path, canonical: &Path, d: &mut Discovered) {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) => return d.failed.push(format!("{}: cannot read the folder: {e}", dir.display())),
    };
    for entry in rd {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                d.failed.push(format!("{}: cannot read the folder: {e}", dir.display()));
                continue;
            }
        };
        let name = entry.file_name();
        let shown = name.to_string_lossy();
        let path = entry.path();
        let Ok(ft) = entry.file_type() else {
            d.failed.push(format!("{}: cannot tell what it is", path.display()));
            continue;
        };
        if ft.is_dir() {
            if !shown.starts_with('.') {
                walk(&path, &canonical.join(&name), d);
            }
        } else if ft.is_file() {
            if is_log_file(&shown, &path) {
                d.files.push(Found { canonical: canonical.join(&name), path });
            }
        } else if ft.is_symlink() {
            if shown.starts_with('.') {
                continue;
            }
            // What the link points at decides, as for a named file.
            match std::fs::metadata(&path) {
                Err(e) => d.failed.push(format!("{}: symbolic link to nothing readable: {e}", path.display())),
                Ok(meta) if meta.is_file() => {
                    if is_log_file(&shown, &path) {
                        let canonical = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
                        d.files.push(Found { path, canonical });
                    }
                }
                // A linked folder is not followed (it could loop, or leave the tree).
                Ok(meta) if meta.is_dir() => {}
                Ok(meta) => d.passed_over.push(format!(
                    "{}: not a regular file ({}, through a link)",
                    path.display(),
                    kind_of(&meta)
                )),
            }
        } else if is_log_file_name(&shown) {
            let kind = std::fs::symlink_metadata(&path).map(|m| kind_of(&m)).unwrap_or("not a regular file");
            d.passed_over.push(format!("{}: not a regular file ({kind})", path.display()));
        }
    }
}

fn fnv1a_64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100000001b3))
}

fn head_of(path: &Path, len: u64) -> io::Result<String> {
    let mut buf = Vec::with_capacity(len as usize);
    File::open(path)?.take(len).read_to_end(&mut buf)?;
    Ok(format!("{:016x}", fnv1a_64(&buf)))
}

/// Decides, per file, whether there is anything new and where to start. Returns the jobs and
/// how many files were unchanged.
pub fn plan(
    files: Vec<Found>,
    checkpoints: &std::collections::HashMap<String, String>,
) -> io::Result<(Vec<FileJob>, usize)> {
    let mut jobs = Vec::new();
    let mut unchanged = 0;
    for Found { path, canonical } in files {
        let size = match std::fs::metadata(&path) {
            Ok(m) => m.len(),
            // Gone since it was listed: nothing to read.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(named(&path, e)),
        };
        let key = source_key(&canonical);
        let expected = checkpoints.get(&key).cloned();
        let stored = expected.as_deref().and_then(FilePosition::decode);
        let resume = match stored {
            Some(pos) if head_of(&path, pos.head_len)? == pos.head && size >= pos.size => {
                if size == pos.size && !pos.partial {
                    unchanged += 1;
                    continue;
                }
                Some(pos)
            }
            Some(_) => {
                tracing::warn!(file = %path.display(), "file was replaced or truncated since it was last read; reading it again from the start (already-counted records are deduplicated)");
                None
            }
            None => None,
        };
        jobs.push(FileJob { path, key, size, expected, resume });
    }
    Ok((jobs, unchanged))
}

/// Opens a file positioned at its start, and tells whether it is gzip (by its magic bytes,
/// not its name).
fn open_sniffed(path: &Path) -> io::Result<(File, bool)> {
    let mut file = File::open(path)?;
    let mut magic = [0u8; 2];
    let gz = file.read(&mut magic)? == 2 && magic == [0x1f, 0x8b];
    file.seek(SeekFrom::Start(0))?;
    Ok((file, gz))
}

/// Counts bytes read from the underlying file, for the progress bar.
struct Counting<R> {
    inner: R,
    counter: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.counter.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Reads one file from its checkpoint, sending pieces of at most `piece_records` records.
/// `send` returns false when the receiver is gone. Stops early, at a line boundary, when
/// `shutdown` is set.
pub fn read_file(
    job: &FileJob,
    decoder: &mut Decoder<'_>,
    settings: &ReadSettings,
    bytes_read: &Arc<AtomicU64>,
    shutdown: &AtomicBool,
    send: &mut dyn FnMut(Piece) -> bool,
) -> io::Result<()> {
    let mut r = Reading { decoder, settings, bytes_read, shutdown, send };
    let name = job.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let head_len = job.size.min(HEAD_BYTES);
    let head = head_of(&job.path, head_len)?;
    let expected = job.expected.clone();
    let position = |m: Mark, document: bool| FilePosition {
        v: 1,
        offset: m.offset,
        line: m.line,
        size: job.size,
        head_len,
        head: head.clone(),
        document,
        frame: m.frame,
        partial: m.partial,
        crc: m.crc,
    };

    if name == MARKER_OBJECT {
        let mut piece = Piece { source: job.key.clone(), expected, ..Piece::default() };
        piece.received = 1;
        piece.rejects.push(Rejected::new(Reason::MarkerObject, "bucket permission-check object", 1, 0, b""));
        piece.position = position(Mark { offset: job.size, line: 1, ..Mark::default() }, false).encode();
        (r.send)(piece);
        return Ok(());
    }

    if let Some(p) = job.resume.as_ref().filter(|p| p.document) {
        // A document stopped part-way goes on where it stopped; a changed one is read again
        // from its start (records already counted are deduplicated).
        let from =
            if p.partial && p.size == job.size { Mark { partial: false, ..mark_of(p) } } else { Mark::default() };
        return read_documents(job, from, &mut r, &|m| position(m, true).encode());
    }
    let (mut file, gz) = open_sniffed(&job.path)?;
    let mut inflater = (gz && job.size <= WHOLE_GZ_BYTES).then(|| INFLATER.take().unwrap_or_else(Inflater::new));
    let whole = match inflater.as_mut() {
        Some(inf) => inf.inflate(&mut file, job.size)?,
        None => None,
    };
    let counted_to = job.resume.as_ref().map_or(0, |p| p.offset);
    // A streamed gzip file is decoded whole once before it is read (see `check_members`); that
    // pass also gives the CRC of its counted part.
    let members = if gz && whole.is_none() { Some(check_members(&mut file, counted_to)?) } else { None };
    // Where to go on: after the counted part, if it is still what was counted.
    let (mut start_offset, mut start_line, mut prefix_crc) = (0, 0, 0);
    if let Some(p) = job.resume.as_ref().filter(|p| p.offset > 0) {
        let actual = match (&whole, &members) {
            (Some(text), _) => text.get(..p.offset as usize).map(crc32fast::hash),
            (None, Some(m)) => m.prefix_crc,
            (None, None) => plain_prefix_crc(&job.path, p.offset)?,
        };
        match actual {
            Some(actual) if p.crc.is_none_or(|c| c == actual) => {
                (start_offset, start_line, prefix_crc) = (p.offset, p.line, actual)
            }
            _ => {
                tracing::warn!(file = %job.path.display(), "file changed before where it was counted to (not only grown); reading it again from the start (already-counted records are deduplicated)")
            }
        }
    }
    let start = Start {
        source: &job.key,
        name: None,
        expected: expected.clone(),
        offset: start_offset,
        line: start_line,
        gz,
        detect_document: true,
        follow: settings.follow,
        max_record_bytes: settings.max_record_bytes,
        piece_records: settings.piece_records,
    };
    let encoded = |m: Mark| position(m, false).encode();
    // An unchanged position is not sent again, unless the file's size moved.
    let moved = |done: u64, _: u64| job.resume.as_ref().is_none_or(|p| p.offset != done || p.size != job.size);

    let reached = if let Some(text) = whole {
        let inf = inflater.as_mut().expect("inflated by it");
        bytes_read.fetch_add(inf.compressed.len() as u64, Ordering::Relaxed);
        let mut lines = LineReader::whole(text, start_offset, settings.max_record_bytes).with_prefix_crc(prefix_crc);
        let reached = stream::read_lines(&mut lines, start, r.decoder, r.shutdown, &encoded, r.send, &moved);
        inf.text = lines.into_buf();
        reached
    } else {
        file.seek(SeekFrom::Start(0))?;
        let corrupt = members.and_then(|m| m.corrupt);
        stream_file(Opened { file, gz, corrupt, prefix_crc }, start, &mut r, &encoded, &moved)?
    };
    if inflater.is_some() {
        INFLATER.set(inflater);
    }
    match reached.end {
        // JSON documents (an export, payloads back to back): streamed from the start.
        End::Document => read_documents(job, Mark::default(), &mut r, &|m| position(m, true).encode()),
        End::Fetch(e) => Err(e),
        End::Done | End::Stopped => Ok(()),
    }
}

/// Where a stored position says to go on.
fn mark_of(p: &FilePosition) -> Mark {
    Mark { offset: p.offset, line: p.line, frame: p.frame, partial: p.partial, crc: p.crc }
}

/// A sink that hashes the first `left` bytes written to it and passes over the rest.
struct PrefixCrc {
    hasher: crc32fast::Hasher,
    left: u64,
}

impl PrefixCrc {
    fn new(len: u64) -> PrefixCrc {
        PrefixCrc { hasher: crc32fast::Hasher::new(), left: len }
    }

    /// The CRC of the first `len` bytes, or `None` when fewer were written.
    fn finish(self) -> Option<u32> {
        (self.left == 0).then(|| self.hasher.finalize())
    }
}

impl io::Write for PrefixCrc {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        let n = b.len().min(usize::try_from(self.left).unwrap_or(usize::MAX));
        self.hasher.update(&b[..n]);
        self.left -= n as u64;
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The CRC-32 of a plain file's first `len` bytes; `None` when it has fewer.
fn plain_prefix_crc(path: &Path, len: u64) -> io::Result<Option<u32>> {
    let mut crc = PrefixCrc::new(len);
    io::copy(&mut File::open(path)?.take(len), &mut crc)?;
    Ok(crc.finish())
}

/// A file opened for streaming: gzip or plain, where its first corrupt gzip member starts (if
/// any), and the CRC-32 of the decoded bytes before the offset it is read from.
struct Opened {
    file: File,
    gz: bool,
    corrupt: Option<Corrupt>,
    prefix_crc: u32,
}

/// Reads `file` (at its start) as a stream from `start.offset`, gunzipping it if `gz`;
/// `prefix_crc` is the CRC-32 of the decoded bytes before that offset.
fn stream_file(
    opened: Opened,
    start: Start<'_>,
    r: &mut Reading<'_, '_>,
    encoded: &dyn Fn(Mark) -> String,
    moved: &dyn Fn(u64, u64) -> bool,
) -> io::Result<stream::Reached> {
    let Opened { mut file, gz, corrupt, prefix_crc } = opened;
    let bytes_read = r.bytes_read;
    let start_offset = start.offset;
    // A streamed gzip file is read only up to its first corrupt member (`check_members`).
    let reader: Box<dyn Read> = if gz {
        file.seek(SeekFrom::Start(0))?;
        let counted = Counting { inner: BufReader::with_capacity(256 * 1024, file), counter: bytes_read.clone() };
        let mut dec = flate2::read::MultiGzDecoder::new(counted);
        // Pass over what was already counted; gzip cannot seek.
        io::copy(&mut (&mut dec).take(start_offset), &mut io::sink())?;
        match &corrupt {
            Some(c) => Box::new(dec.take(c.at.saturating_sub(start_offset))),
            None => Box::new(dec),
        }
    } else {
        file.seek(SeekFrom::Start(start_offset))?;
        bytes_read.fetch_add(start_offset, Ordering::Relaxed);
        Box::new(Counting { inner: file, counter: bytes_read.clone() })
    };
    let (source, gz_start) = (start.source.to_string(), start.offset);
    let mut lines = LineReader::new(reader, start.offset, start.max_record_bytes).with_prefix_crc(prefix_crc);
    let reached = stream::read_lines(&mut lines, start, r.decoder, r.shutdown, encoded, r.send, moved);
    if let (Some(c), stream::End::Done) = (&corrupt, &reached.end) {
        if c.at >= gz_start {
            // The corrupt member is one quarantined record; the checkpoint stays before it.
            let position = reached.expected.clone().unwrap_or_else(|| {
                encoded(Mark {
                    offset: reached.offset,
                    line: reached.line,
                    crc: Some(lines.crc_through(reached.offset)),
                    ..Mark::default()
                })
            });
            let detail = format!("gzip member starting at decoded byte {} is corrupt ({}): its records are not counted, and nothing after it is read", c.at, c.why);
            let piece = Piece {
                source,
                expected: reached.expected.clone(),
                position,
                received: 1,
                rejects: vec![Rejected::new(Reason::TruncatedGzip, detail, reached.line + 1, c.at, b"")],
                ..Piece::default()
            };
            (r.send)(piece);
        }
    }
    Ok(reached)
}

/// A gzip member that fails its check.
struct Corrupt {
    /// Decoded offset where the member starts.
    at: u64,
    why: String,
}

/// What [`check_members`] found.
struct Members {
    /// The first member that fails its check.
    corrupt: Option<Corrupt>,
    /// The CRC-32 of the first decoded bytes asked for, when the file holds that many before
    /// any corrupt member.
    prefix_crc: Option<u32>,
}

/// Decodes a gzip file member by member, checking each (CRC and length), and finds the first
/// that fails, with the CRC of the first `prefix` decoded bytes. A member is checked only at
/// its end, after its records were decoded: streamed as they are, they would be counted
/// before the check failed, so a streamed gzip file is checked whole first. A file cut short
/// is not corrupt: what it holds is read, and a copy completed later is read on from there.
fn check_members(file: &mut File, prefix: u64) -> io::Result<Members> {
    file.seek(SeekFrom::Start(0))?;
    let mut input = BufReader::with_capacity(256 * 1024, &*file);
    let mut crc = PrefixCrc::new(prefix);
    let mut at = 0u64;
    let corrupt = loop {
        if io::BufRead::fill_buf(&mut input)?.is_empty() {
            break None;
        }
        let mut member = flate2::bufread::GzDecoder::new(&mut input);
        match io::copy(&mut member, &mut crc) {
            Ok(n) => at += n,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break None,
            Err(e) => break Some(Corrupt { at, why: e.to_string() }),
        }
    };
    // Bytes of a corrupt member are not to be trusted, nor their CRC.
    let prefix_crc = if corrupt.as_ref().is_some_and(|c| c.at < prefix) { None } else { crc.finish() };
    Ok(Members { corrupt, prefix_crc })
}

/// Gzip files of at most this many bytes, compressed and inflated, are inflated whole in one
/// libdeflate call into a buffer the lines are then read from in place ([`LineReader::whole`]),
/// instead of streamed through zlib-rs: 30% less CPU on the inflate (measured on the benchmark
/// set's 2 MB objects), for at most this much memory per worker. Bedrock's S3 objects are far
/// smaller; anything larger, or that libdeflate will not take whole (several gzip members,
/// a truncated or corrupt stream), is streamed, so what is counted and quarantined is the same.
const WHOLE_GZ_BYTES: u64 = 8 << 20;

thread_local! {
    /// The worker's [`Inflater`], kept from file to file so its buffers are reused.
    static INFLATER: std::cell::Cell<Option<Inflater>> = const { std::cell::Cell::new(None) };
}

/// A libdeflate decompressor with the compressed and inflated buffers of the last file.
struct Inflater {
    decompressor: std::ptr::NonNull<libdeflate_sys::libdeflate_decompressor>,
    compressed: Vec<u8>,
    text: Vec<u8>,
}

impl Inflater {
    fn new() -> Inflater {
        // SAFETY: no arguments; a null return (out of memory) is checked.
        let d = unsafe { libdeflate_sys::libdeflate_alloc_decompressor() };
        let decompressor = std::ptr::NonNull::new(d).expect("libdeflate_alloc_decompressor: out of memory");
        Inflater { decompressor, compressed: Vec::new(), text: Vec::new() }
    }

    /// Reads the gzip `file` (at its start, `size` bytes) and inflates it whole: the text, or
    /// `None` when it is not one complete gzip member of at most [`WHOLE_GZ_BYTES`] (the
    /// caller then streams it). The buffer returned is this inflater's, to be given back.
    fn inflate(&mut self, file: &mut File, size: u64) -> io::Result<Option<Vec<u8>>> {
        self.compressed.clear();
        file.take(size.min(WHOLE_GZ_BYTES) + 1).read_to_end(&mut self.compressed)?;
        let Some(isize_bytes) = self.compressed.last_chunk::<4>() else { return Ok(None) };
        // The trailer's ISIZE: the inflated length (mod 2³²) of the last member.
        let inflated = u32::from_le_bytes(*isize_bytes) as u64;
        if self.compressed.len() as u64 > WHOLE_GZ_BYTES || inflated > WHOLE_GZ_BYTES {
            return Ok(None);
        }
        self.text.resize(inflated as usize, 0);
        let (mut used_in, mut written) = (0usize, 0usize);
        // SAFETY: the pointers and lengths are those of two live, distinct buffers; libdeflate
        // reads at most `compressed.len()` bytes and writes at most `text.len()`.
        let result = unsafe {
            libdeflate_sys::libdeflate_gzip_decompress_ex(
                self.decompressor.as_ptr(),
                self.compressed.as_ptr().cast(),
                self.compressed.len(),
                self.text.as_mut_ptr().cast(),
                self.text.len(),
                &mut used_in,
                &mut written,
            )
        };
        // One member that ends the file and fills ISIZE exactly; anything else is streamed.
        let complete = result == libdeflate_sys::libdeflate_result_LIBDEFLATE_SUCCESS
            && used_in == self.compressed.len()
            && written == self.text.len();
        Ok(complete.then(|| std::mem::take(&mut self.text)))
    }
}

impl Drop for Inflater {
    fn drop(&mut self) {
        // SAFETY: allocated by `libdeflate_alloc_decompressor` in `new`, freed once.
        unsafe { libdeflate_sys::libdeflate_free_decompressor(self.decompressor.as_ptr()) }
    }
}

/// Reads a file as JSON documents, streamed ([`document`]) from `from`: a position the
/// document reader made, or the start.
fn read_documents(
    job: &FileJob,
    from: Mark,
    r: &mut Reading<'_, '_>,
    position: &dyn Fn(Mark) -> String,
) -> io::Result<()> {
    let (settings, bytes_read) = (r.settings, r.bytes_read);
    let (mut file, gz) = open_sniffed(&job.path)?;
    let reader: Box<dyn Read> = if gz {
        let counted = Counting { inner: BufReader::with_capacity(256 * 1024, file), counter: bytes_read.clone() };
        let mut dec = flate2::read::MultiGzDecoder::new(counted);
        io::copy(&mut (&mut dec).take(from.offset), &mut io::sink())?;
        Box::new(dec)
    } else {
        file.seek(SeekFrom::Start(from.offset))?;
        Box::new(Counting { inner: file, counter: bytes_read.clone() })
    };
    let start = Start {
        source: &job.key,
        name: None,
        expected: job.expected.clone(),
        offset: from.offset,
        line: from.line,
        gz,
        detect_document: false,
        follow: false,
        max_record_bytes: settings.max_record_bytes,
        piece_records: settings.piece_records,
    };
    match document::read_document(reader, start, from.frame, r.decoder, r.shutdown, position, r.send).end {
        End::Fetch(e) => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gz(text: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        io::Write::write_all(&mut e, text).unwrap();
        e.finish().unwrap()
    }

    /// What [`Inflater::inflate`] makes of a file holding `bytes`.
    fn inflate(inf: &mut Inflater, bytes: &[u8]) -> Option<Vec<u8>> {
        let mut f = tempfile::tempfile().unwrap();
        io::Write::write_all(&mut f, bytes).unwrap();
        f.seek(SeekFrom::Start(0)).unwrap();
        let text = inf.inflate(&mut f, bytes.len() as u64).unwrap();
        if let Some(t) = &text {
            inf.text = t.clone();
        }
        text
    }

    #[test]
    fn a_path_names_the_time_of_its_last_date() {
        let t = |p: &str| path_time(Path::new(p)).map(|s| chrono::DateTime::from_timestamp(s, 0).unwrap().to_rfc3339());
        let at = |s: &str| Some(s.to_string());
        // The S3 layout: the object's name is the last date, to the hour.
        let s3 = "logs/AWSLogs/1/BedrockModelInvocationLogs/us-east-1/2025/11/04/13/20251104T131500Z_8e8dac1b119cbbd4.json.gz";
        assert_eq!(t(s3), at("2025-11-04T13:00:00+00:00"));
        assert_eq!(t("s3/2025/11/04/13/part.json.gz"), at("2025-11-04T13:00:00+00:00"), "hour folder");
        assert_eq!(t("s3/2025/11/04/x.json"), at("2025-11-04T00:00:00+00:00"), "day folder");
        assert_eq!(t("cloudwatch/2025-11-04.ndjson"), at("2025-11-04T00:00:00+00:00"));
        assert_eq!(t("export-2025-11-04T07.jsonl"), at("2025-11-04T07:00:00+00:00"));
        assert_eq!(
            t("2024-01-15-backup/cloudwatch/2025-11-04.ndjson"),
            at("2025-11-04T00:00:00+00:00"),
            "the last date wins"
        );
        assert_eq!(t("2024-01-15-backup/logs/app.jsonl"), at("2024-01-15T00:00:00+00:00"));
        // Not dates: no date at all, digits inside longer runs, impossible days, a bare 8 digits.
        for p in [
            "logs/app.jsonl",
            "exportedlogs/4f1e/stream/000000.gz",
            "ids/120251104T1300.json",
            "x/2025-11-041.json",
            "x/2025-02-30.json",
            "x/2025/13/01/a.json",
            "run-20251104.json",
            "x/1999-12-31.json",
            "x/2025/11-04.json",
        ] {
            assert_eq!(t(p), None, "{p}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn discovered_files_are_keyed_by_their_real_path_once_each_and_tallys_own_files_left_out() {
        // The keys of files found by walking must be the ones `realpath` gives: checkpoints
        // stored under those keys are how a restart knows what it has read.
        let root = tempfile::tempdir().unwrap();
        let logs = root.path().join("logs");
        let other = root.path().join("elsewhere");
        std::fs::create_dir_all(logs.join("2025/11/03")).unwrap();
        std::fs::create_dir_all(&other).unwrap();
        for f in ["2025/11/03/a.json.gz", "2025/11/03/b.json", "quarantine.jsonl", "notes.txt"] {
            std::fs::write(logs.join(f), b"{}\n").unwrap();
        }
        std::fs::write(other.join("linked.json"), b"{}\n").unwrap();
        std::fs::write(other.join("inner.json"), b"{}\n").unwrap();
        std::os::unix::fs::symlink(other.join("linked.json"), logs.join("link.json")).unwrap();
        std::os::unix::fs::symlink(&other, logs.join("linked-dir")).unwrap();

        // The tree through a relative path with a `..`, and one of its files named again.
        let through = root.path().join("elsewhere/../logs");
        let again = logs.join("2025/11/03/../03/b.json");
        let found = discover(&[through, again], &[logs.join("quarantine.jsonl")]).unwrap().files;

        let keys: Vec<(String, String)> = found
            .iter()
            .map(|f| (f.path.file_name().unwrap().to_string_lossy().into_owned(), source_key(&f.canonical)))
            .collect();
        let real = |p: PathBuf| format!("file://{}", std::fs::canonicalize(p).unwrap().display());
        assert_eq!(
            keys,
            vec![
                ("a.json.gz".to_string(), real(logs.join("2025/11/03/a.json.gz"))),
                ("b.json".to_string(), real(logs.join("2025/11/03/b.json"))),
                ("link.json".to_string(), real(other.join("linked.json"))),
            ],
            "each log file once (b.json was named twice), the link by its target, the excluded \
             quarantine file, the non-log name and the linked directory left out"
        );
    }

    #[test]
    fn only_one_complete_member_within_the_limit_is_inflated_whole() {
        let mut inf = Inflater::new();
        let text = b"{\"a\": 1}\n{\"b\": 2}\n".repeat(1000);
        let one = gz(&text);
        assert_eq!(inflate(&mut inf, &one).as_deref(), Some(&text[..]), "one member");
        assert_eq!(inflate(&mut inf, &gz(b"")).as_deref(), Some(&b""[..]), "an empty member");
        // Streamed instead: the stream decoder reads every member, and reports a cut stream.
        assert_eq!(inflate(&mut inf, &[one.clone(), one.clone()].concat()), None, "two members");
        assert_eq!(inflate(&mut inf, &one[..one.len() - 1]), None, "truncated");
        assert_eq!(inflate(&mut inf, &[one.clone(), vec![0]].concat()), None, "trailing garbage");
        let mut corrupt = one.clone();
        corrupt[one.len() - 6] ^= 1;
        assert_eq!(inflate(&mut inf, &corrupt), None, "CRC mismatch");
        let large = vec![b'x'; (WHOLE_GZ_BYTES + 1) as usize];
        assert_eq!(inflate(&mut inf, &gz(&large)), None, "over the limit");
        // The buffers are reused: a smaller file after a larger one is not padded.
        assert_eq!(inflate(&mut inf, &gz(b"x\n")).as_deref(), Some(&b"x\n"[..]));
    }
}
