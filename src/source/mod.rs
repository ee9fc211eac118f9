//! Sources of invocation records. A source reads bytes, turns them into [`Piece`]s — the
//! counted entries and rejected records of a stretch of input, with the position after it —
//! and hands them to the ingester, which commits them.
//!
//! [`Decoder`] is shared by every source: it takes lines or whole JSON documents and unwraps
//! records, CloudWatch exports and Logs Insights results alike.

#[cfg(feature = "aws")]
pub mod cloudwatch;
pub mod document;
pub mod files;
pub mod lines;
#[cfg(feature = "aws")]
pub mod remote;
#[cfg(feature = "aws")]
pub mod s3;
pub mod stream;

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::quarantine::{Reason, Rejected};
use crate::record::{self, Container, ElementBody, ElementKind, LogRecord, ParseOptions, Parsed, Reject};
use crate::usage::Metering;
use crate::usage::{Entry, Sums};

/// The non-JSON event Bedrock writes when logging is set up.
pub const PERMISSION_CHECK_TEXT: &str = "Permissions are correctly set for Amazon Bedrock logs.";

/// How the control messages CloudWatch Logs sends to a subscription destination start.
pub const CONTROL_MESSAGE_PREFIX: &str = "CWL CONTROL MESSAGE";

/// Where one counted record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    pub line: u64,
    pub offset: u64,
}

/// Counts kept while decoding, reported at the end of a run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DecodeStats {
    /// Records where two tenant rules disagreed.
    pub conflicts: u64,
    /// Records counted under `_unattributed`.
    pub unattributed: u64,
    /// Records whose `schemaVersion` is not 1.0 (counted anyway).
    pub unexpected_schema: u64,
    /// Models without a price, with their record counts.
    pub unknown_models: BTreeMap<String, u64>,
}

impl DecodeStats {
    pub fn merge(&mut self, o: &DecodeStats) {
        self.conflicts += o.conflicts;
        self.unattributed += o.unattributed;
        self.unexpected_schema += o.unexpected_schema;
        for (m, n) in &o.unknown_models {
            *self.unknown_models.entry(m.clone()).or_default() += n;
        }
    }
}

/// A stretch of one source, ready to commit.
#[derive(Debug, Default)]
pub struct Piece {
    /// The checkpoint key of the source (e.g. `file:///abs/path`).
    pub source: String,
    /// What the quarantine names as the records' source when it is not the checkpoint key (an
    /// S3 object of a partition, a CloudWatch stream).
    pub name: Option<String>,
    /// The position this piece starts from, as stored (`None`: never read).
    pub expected: Option<String>,
    /// The position after this piece.
    pub position: String,
    pub entries: Vec<Entry>,
    /// `origins[i]` is where `entries[i]` came from.
    pub origins: Vec<Origin>,
    pub rejects: Vec<Rejected>,
    /// Records received: entries + rejects.
    pub received: u64,
    pub stats: DecodeStats,
    /// The usage of `entries` per key, filled by [`Piece::finish`].
    pub sums: Sums,
}

impl Piece {
    /// Readies a piece for the committer, on the worker's thread: its usage summed per key.
    /// Entries stay in the order they were read: the stores' dedup sorts request keys stably,
    /// so of two records with one request id the first read is the one counted.
    pub fn finish(&mut self) {
        self.sums.clear();
        for e in &self.entries {
            crate::usage::add_to(&mut self.sums, &e.key, &e.usage);
        }
    }
}

/// Turns bytes into counted entries and rejected records.
pub struct Decoder<'c> {
    metering: Metering<'c>,
    opts: ParseOptions,
}

impl<'c> Decoder<'c> {
    pub fn new(metering: Metering<'c>, opts: ParseOptions) -> Self {
        Decoder { metering: metering.with_latest(opts.latest_timestamp), opts }
    }

    fn reject(out: &mut Piece, r: Reject, line: u64, offset: u64, bytes: &[u8]) {
        out.received += 1;
        out.rejects.push(Rejected::new(r.reason, r.detail, line, offset, bytes));
    }

    /// One NDJSON line (or one CloudWatch event text). Blank lines are not records.
    pub fn line(&mut self, bytes: &[u8], line: u64, offset: u64, out: &mut Piece) {
        let text = bytes.trim_ascii();
        if text.is_empty() {
            return;
        }
        let text = match check_utf8(text) {
            Ok(t) => t,
            Err(detail) => return Self::reject(out, Reject::new(Reason::NonUtf8, detail), line, offset, text),
        };
        if let Some(r) = expected_text(text.as_bytes()) {
            return Self::reject(out, r, line, offset, text.as_bytes());
        }
        self.document(text, line, offset, out);
    }

    /// One complete JSON text: a record or a container of records. `line` and `offset` are
    /// where it starts; records inside a multi-line document get their own line numbers.
    pub fn document(&mut self, text: &str, line: u64, offset: u64, out: &mut Piece) {
        let bytes = text.as_bytes();
        match record::parse_str(text, &self.opts) {
            Ok(Parsed::Record(rec)) => self.record(&rec, line, offset, bytes, out),
            Ok(Parsed::Container(c)) => self.container(c, bytes, line, offset, out, 0),
            Err(r) => Self::reject(out, r, line, offset, bytes),
        }
    }

    fn container(&mut self, c: Container<'_>, whole: &[u8], line: u64, offset: u64, out: &mut Piece, depth: u8) {
        let base = container_start(whole, &c);
        let mut counted_to = 0usize;
        let mut el_line = line;
        for el in c.elements() {
            let at = base + el.offset;
            el_line += memchr::memchr_iter(b'\n', &whole[counted_to.min(at)..at]).count() as u64;
            counted_to = at;
            self.body(el.body, &whole[at.min(whole.len())..], el_line, offset + at as u64, out, depth);
        }
    }

    /// One element of a container streamed from a document (see [`document`]): `raw` is
    /// the element's JSON, `line` and `offset` where it starts.
    pub fn element(&mut self, raw: &[u8], kind: ElementKind, line: u64, offset: u64, out: &mut Piece) {
        if let Err(detail) = check_utf8(raw) {
            return Self::reject(out, Reject::new(Reason::NonUtf8, detail), line, offset, raw);
        }
        self.body(record::element_body(raw, kind), raw, line, offset, out, 0);
    }

    /// What an element holds, counted or rejected. `raw` is the element's bytes (for a
    /// rejected one's snippet).
    fn body(&mut self, body: ElementBody<'_>, raw: &[u8], line: u64, offset: u64, out: &mut Piece, depth: u8) {
        match body {
            ElementBody::Json(json) => match record::parse(json, &self.opts) {
                Ok(Parsed::Record(rec)) => self.record(&rec, line, offset, json, out),
                Ok(Parsed::Container(inner @ Container::Message(_))) if depth == 0 => {
                    self.container(inner, json, line, offset, out, depth + 1)
                }
                Ok(Parsed::Container(_)) => Self::reject(
                    out,
                    Reject::new(Reason::NotARecord, "a container nested inside a container"),
                    line,
                    offset,
                    json,
                ),
                Err(r) => Self::reject(out, r, line, offset, json),
            },
            ElementBody::Text(text) => {
                let t = text.trim();
                if let Some(r) = expected_text(t.as_bytes()) {
                    Self::reject(out, r, line, offset, t.as_bytes());
                } else {
                    // Text already known to be UTF-8: strings are sliced out unchecked.
                    match record::parse_record_str(t, &self.opts) {
                        Ok(rec) => self.record(&rec, line, offset, t.as_bytes(), out),
                        Err(r) => Self::reject(out, r, line, offset, t.as_bytes()),
                    }
                }
            }
            ElementBody::Bad(r) => Self::reject(out, r, line, offset, raw),
            ElementBody::Skip => {}
        }
    }

    fn record(&mut self, rec: &LogRecord<'_>, line: u64, offset: u64, raw: &[u8], out: &mut Piece) {
        match self.metering.measure(rec) {
            Ok(m) => {
                out.received += 1;
                if m.conflict {
                    out.stats.conflicts += 1;
                }
                if m.unexpected_schema {
                    out.stats.unexpected_schema += 1;
                }
                if m.unknown_model {
                    *out.stats.unknown_models.entry(rec.model_id.to_string()).or_default() += 1;
                }
                if m.key.tenant.as_str() == crate::ids::UNATTRIBUTED {
                    out.stats.unattributed += 1;
                }
                out.entries.push(Entry { dedup: m.dedup, key: m.key, usage: m.usage });
                out.origins.push(Origin { line, offset });
            }
            Err(r) => Self::reject(out, r, line, offset, raw),
        }
    }
}

/// The texts that are expected in a log and are not records: Bedrock's permission-check
/// event, and the control message CloudWatch Logs sends down a new subscription (delivered by
/// Firehose beside the data). Skipped and counted, not quarantined.
fn expected_text(text: &[u8]) -> Option<Reject> {
    if text == PERMISSION_CHECK_TEXT.as_bytes() {
        return Some(Reject::new(Reason::PermissionCheck, "logging permission check"));
    }
    text.starts_with(CONTROL_MESSAGE_PREFIX.as_bytes())
        .then(|| Reject::new(Reason::ControlMessage, "CloudWatch Logs subscription control message"))
}

/// Checks that bytes are UTF-8 (with a SIMD check first: every byte of every line goes
/// through here). The error names the first bad byte.
pub fn check_utf8(bytes: &[u8]) -> Result<&str, String> {
    match simdutf8::basic::from_utf8(bytes) {
        Ok(text) => Ok(text),
        Err(_) => match std::str::from_utf8(bytes) {
            Ok(text) => Ok(text),
            Err(e) => Err(format!("invalid UTF-8 at byte {}", e.valid_up_to())),
        },
    }
}

/// Where a container's element array starts inside the document text, so element offsets
/// (relative to the array) become document offsets.
fn container_start(whole: &[u8], c: &Container<'_>) -> usize {
    let inner = match *c {
        Container::Events(b) | Container::InsightsResults(b) | Container::Message(b) | Container::Array(b) => b,
    };
    let start = inner.as_ptr() as usize - whole.as_ptr() as usize;
    debug_assert!(start <= whole.len());
    start
}

/// `[sources]`: how the AWS sources are reached and listed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourcesConfig {
    /// The region of the buckets and log groups; default from the standard AWS chain.
    #[serde(default)]
    pub region: Option<String>,
    /// An endpoint URL for S3 and CloudWatch Logs, such as `http://127.0.0.1:5000` (moto);
    /// default from the standard chain (`AWS_ENDPOINT_URL`), else AWS itself. Credentials never
    /// go here.
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// S3: hours before the newest counted object's hour folder that every listing starts at,
    /// so objects landing late with earlier keys are still read.
    #[serde(default = "SourcesConfig::default_s3_lookback_hours")]
    pub s3_lookback_hours: u32,
}

impl SourcesConfig {
    fn default_s3_lookback_hours() -> u32 {
        3
    }

    /// How every S3 and CloudWatch Logs read is reached: log sources and `--cur s3://`.
    #[cfg(feature = "aws")]
    pub fn aws(&self) -> crate::aws::AwsSettings {
        crate::aws::AwsSettings {
            region: self.region.clone(),
            endpoint_url: self.endpoint_url.clone(),
            max_attempts: None,
        }
    }
}

impl Default for SourcesConfig {
    fn default() -> Self {
        SourcesConfig { region: None, endpoint_url: None, s3_lookback_hours: Self::default_s3_lookback_hours() }
    }
}

/// One input of `tally ingest`: a path, or (with the `aws` feature) an S3 prefix or a
/// CloudWatch Logs group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A file or a directory tree.
    Path(std::path::PathBuf),
    /// `s3://bucket[/prefix]`.
    #[cfg(feature = "aws")]
    S3(crate::aws::S3Url),
    /// `cloudwatch://<log-group>[?stream=<log-stream>]`.
    #[cfg(feature = "aws")]
    Logs(cloudwatch::LogsUrl),
}

impl Input {
    /// Reads an argument: a URL by its scheme, anything else a path.
    pub fn parse(arg: &str) -> Result<Input, String> {
        let remote = arg.starts_with("s3://") || arg.starts_with("cloudwatch://");
        #[cfg(feature = "aws")]
        if remote {
            return if arg.starts_with("s3://") {
                crate::aws::S3Url::parse(arg).map(Input::S3)
            } else {
                cloudwatch::LogsUrl::parse(arg).map(Input::Logs)
            };
        }
        if remote {
            return Err(format!(
                "{arg}: reading S3 and CloudWatch Logs needs a tally built with the `aws` feature (the default; this one was built with --no-default-features)"
            ));
        }
        Ok(Input::Path(arg.into()))
    }
}

#[cfg(test)]
mod input_tests {
    use super::Input;

    #[test]
    fn inputs_by_scheme() {
        assert_eq!(Input::parse("logs/2025").unwrap(), Input::Path("logs/2025".into()));
        let s3 = Input::parse("s3://bucket/AWSLogs/");
        let cw = Input::parse("cloudwatch:///aws/bedrock/invocations");
        if cfg!(feature = "aws") {
            assert!(s3.is_ok() && cw.is_ok());
        } else {
            assert!(s3.unwrap_err().contains("--no-default-features"));
            assert!(cw.unwrap_err().contains("--no-default-features"));
        }
    }
}
