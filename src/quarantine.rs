//! Reasons a record is not counted, and the dead-letter file that keeps every bad record.
//!
//! A bad record is data, not an error: it gets a [`Reason`], a count, and a line in the
//! quarantine file naming the file and line it came from, and ingest goes on.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

/// Why a received record was not counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// The "Permissions are correctly set for Amazon Bedrock logs." event. Expected; not quarantined.
    PermissionCheck,
    /// The zero-byte `amazon-bedrock-logs-permission-check` object. Expected; not quarantined.
    MarkerObject,
    /// A CloudWatch Logs subscription's control message ("CWL CONTROL MESSAGE: Checking
    /// health of destination…"), delivered beside the data. Expected; not quarantined.
    ControlMessage,
    /// A line or event that is not JSON at all.
    NonJson,
    /// JSON that does not parse (truncated, unbalanced, bad syntax).
    MalformedJson,
    /// Bytes that are not UTF-8.
    NonUtf8,
    /// A field tally reads has the wrong JSON type (e.g. a token count that is a string).
    WrongType,
    /// A token count below zero.
    NegativeCount,
    /// A token count above the configured ceiling.
    AbsurdCount,
    MissingRequestId,
    MissingTimestamp,
    MissingModelId,
    /// A `timestamp` that is not an ISO-8601 UTC instant.
    BadTimestamp,
    /// A line longer than `ingest.max_record_bytes`.
    LineTooLong,
    /// A gzip stream that ends early or is corrupt; what came before was counted.
    TruncatedGzip,
    /// A JSON document (export, array) that is not an invocation record or a known container.
    NotARecord,
    /// Older than the dedup window: it can no longer be checked for duplicates, so it is not
    /// counted rather than risk counting it twice.
    OutsideDedupWindow,
}

impl Reason {
    pub const ALL: [Reason; 17] = [
        Reason::PermissionCheck,
        Reason::MarkerObject,
        Reason::ControlMessage,
        Reason::NonJson,
        Reason::MalformedJson,
        Reason::NonUtf8,
        Reason::WrongType,
        Reason::NegativeCount,
        Reason::AbsurdCount,
        Reason::MissingRequestId,
        Reason::MissingTimestamp,
        Reason::MissingModelId,
        Reason::BadTimestamp,
        Reason::LineTooLong,
        Reason::TruncatedGzip,
        Reason::NotARecord,
        Reason::OutsideDedupWindow,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::PermissionCheck => "permission_check",
            Reason::MarkerObject => "marker_object",
            Reason::ControlMessage => "control_message",
            Reason::NonJson => "non_json",
            Reason::MalformedJson => "malformed_json",
            Reason::NonUtf8 => "non_utf8",
            Reason::WrongType => "wrong_type",
            Reason::NegativeCount => "negative_count",
            Reason::AbsurdCount => "absurd_count",
            Reason::MissingRequestId => "missing_request_id",
            Reason::MissingTimestamp => "missing_timestamp",
            Reason::MissingModelId => "missing_model_id",
            Reason::BadTimestamp => "bad_timestamp",
            Reason::LineTooLong => "line_too_long",
            Reason::TruncatedGzip => "truncated_gzip",
            Reason::NotARecord => "not_a_record",
            Reason::OutsideDedupWindow => "outside_dedup_window",
        }
    }

    pub fn parse(s: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// Expected non-records that are counted but not worth a dead-letter entry.
    pub fn is_benign(self) -> bool {
        matches!(self, Reason::PermissionCheck | Reason::MarkerObject | Reason::ControlMessage)
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One rejected record, with where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub reason: Reason,
    /// Human detail, e.g. which field had the wrong type.
    pub detail: String,
    /// 1-based line in the file (for documents: the line where the event starts).
    pub line: u64,
    /// Byte offset of the record in the decoded stream.
    pub offset: u64,
    /// The start of the record, for a human to look at (at most [`SNIPPET_BYTES`]).
    pub snippet: String,
}

/// How much of a bad record the dead-letter file keeps.
pub const SNIPPET_BYTES: usize = 2048;

impl Rejected {
    pub fn new(reason: Reason, detail: impl Into<String>, line: u64, offset: u64, bytes: &[u8]) -> Self {
        let cut = &bytes[..bytes.len().min(SNIPPET_BYTES)];
        Rejected { reason, detail: detail.into(), line, offset, snippet: String::from_utf8_lossy(cut).into_owned() }
    }
}

/// The wire format of one dead-letter line (version 1).
#[derive(Serialize)]
struct DeadLetter<'a> {
    v: u8,
    source: &'a str,
    line: u64,
    offset: u64,
    reason: &'a str,
    detail: &'a str,
    record: &'a str,
}

/// Appends rejected records to a JSON-lines dead-letter file.
///
/// Entries are written and flushed before the batch they belong to is committed, so a crash
/// can repeat an entry (same source, line and offset) but never lose one.
///
/// What one run writes is bounded ([`Quarantine::with_limit`]): a small gzip of junk lines
/// inflates to millions of bad records, and each would be an entry. Past the limit entries are
/// counted, not written; the skip counts stay exact either way.
pub struct Quarantine {
    path: PathBuf,
    out: Option<BufWriter<File>>,
    written: u64,
    bytes: u64,
    limit: u64,
    omitted: u64,
}

/// The default bound on what one run writes to the quarantine file.
pub const DEFAULT_RUN_LIMIT: u64 = 64 << 20;

impl Quarantine {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Quarantine { path: path.into(), out: None, written: 0, bytes: 0, limit: DEFAULT_RUN_LIMIT, omitted: 0 }
    }

    /// At most `limit` bytes of entries per run.
    pub fn with_limit(mut self, limit: u64) -> Self {
        self.limit = limit;
        self
    }

    /// Entries not written because the run's limit was reached.
    pub fn omitted(&self) -> u64 {
        self.omitted
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    pub fn write(&mut self, source: &str, rejected: &Rejected) -> std::io::Result<()> {
        if rejected.reason.is_benign() {
            return Ok(());
        }
        if self.out.is_none() {
            if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            let file = OpenOptions::new().create(true).append(true).open(&self.path)?;
            self.out = Some(BufWriter::new(file));
        }
        let entry = DeadLetter {
            v: 1,
            source,
            line: rejected.line,
            offset: rejected.offset,
            reason: rejected.reason.as_str(),
            detail: &rejected.detail,
            record: &rejected.snippet,
        };
        let mut line = serde_json::to_vec(&entry)?;
        line.push(b'\n');
        if self.bytes + line.len() as u64 > self.limit {
            if self.omitted == 0 {
                tracing::warn!(quarantine = %self.path.display(), limit = self.limit,
                    "the quarantine file reached this run's limit (ingest.quarantine_max_bytes); further bad records are counted, not written");
            }
            self.omitted += 1;
            return Ok(());
        }
        let out = self.out.as_mut().expect("opened above");
        out.write_all(&line)?;
        self.bytes += line.len() as u64;
        self.written += 1;
        Ok(())
    }

    /// Makes everything written so far durable.
    pub fn flush(&mut self) -> std::io::Result<()> {
        if let Some(out) = self.out.as_mut() {
            out.flush()?;
            out.get_ref().sync_data()?;
        }
        Ok(())
    }
}
