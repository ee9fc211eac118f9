//! The S3 source: Bedrock's S3 delivery,
//! `s3://bucket/[prefix/]AWSLogs/<account>/BedrockModelInvocationLogs/<region>/YYYY/MM/DD/HH/<object>.json.gz`.
//!
//! # Scopes and their checkpoints
//!
//! Below the prefix, the folder holding the `YYYY/` folders of one account and region is a
//! *partition*; inside it keys sort by time, so it is listed with `ListObjectsV2` and
//! `StartAfter`. Keys do not sort by time across partitions (`eu-west-1/2025/12/…` sorts before
//! `us-east-1/2025/11/…`), so every partition is its own scope with its own checkpoint,
//! `s3://bucket/<partition>`, and different partitions are read in parallel. Objects outside
//! the dated layout (the `amazon-bedrock-logs-permission-check` marker, stray files) are each
//! a scope of one key. Partitions are found by walking the prefix with `Delimiter=/` down to
//! the year folders, every [`REWALK`] while following (and on every pass while none is found yet).
//!
//! A partition's checkpoint ([`S3Position`]) holds the greatest key counted, every key counted
//! since the *lookback floor* (the hour folder `ingest.s3_lookback_hours` before the greatest
//! key's hour), and the object being read, if one was counted part-way. Each pass lists from
//! the floor and reads the keys that are not in the counted set, oldest first, so an object
//! that lands late with an earlier key — Bedrock writing an hour folder after the next one has
//! begun, or objects of the same second sorting by their random suffix — is still read as long
//! as it lands within the lookback. An object landing later than that, below the floor, is not
//! listed again; raise the lookback (or ingest that hour's prefix on its own, which is
//! deduplicated) if your deliveries can be that late.
//!
//! # Reading
//!
//! Objects are streamed and gunzipped (by their magic bytes, not their names) through the same
//! line loop as files, one piece at a time, each piece's position naming the object and the
//! decoded offset reached. A body cut off mid-stream is fetched again and the counted part
//! passed over; after a crash the open object resumes the same way, or is read again from the
//! start if its ETag changed (the dedup index keeps its records from counting twice). The
//! marker object is counted as a benign skip without being fetched, and keys in folders below
//! an hour folder (`…/HH/data/<requestId>_input.json.gz`: offloaded bodies and media, what
//! `inputBodyS3Path` and `outputBodyS3Path` point at) are never fetched.

use std::collections::{BTreeSet, HashMap};
use std::io::{self, BufRead, BufReader, Read};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::document;
use super::files::{ReadSettings, Reading, MARKER_OBJECT};
use super::lines::LineReader;
use super::remote::{Body, Remote, SourceError};
use super::stream::{self, End, Frame, Mark, Start};
use super::{Decoder, Piece};
use crate::aws::S3Url;
use crate::ids::EpochSeconds;
use crate::quarantine::{Reason, Rejected};

/// How often a followed prefix is walked again for new partitions (accounts, regions).
pub const REWALK: Duration = Duration::from_secs(60);

/// Folders below the prefix walked looking for the year folders.
const MAX_DEPTH: usize = 8;

/// Fetches of one object before giving up on it for this pass.
const FETCH_ATTEMPTS: u32 = 5;

/// The checkpoint of one scope (wire format, version 1). Keys are stored relative to `base`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct S3Position {
    pub v: u8,
    /// The partition folder (or, for a single object, its key).
    pub base: String,
    /// The greatest key counted.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub high: String,
    /// Keys counted at or after the lookback floor.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub done: BTreeSet<String>,
    /// The object counted part-way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open: Option<OpenObject>,
}

/// How far an object was counted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenObject {
    pub key: String,
    pub etag: String,
    /// Decoded bytes counted.
    pub offset: u64,
    pub line: u64,
    /// The object is read as JSON documents (Firehose's back-to-back subscription payloads,
    /// an export), and `offset` lies in this frame of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub document: Option<Frame>,
}

impl S3Position {
    fn new(base: &str) -> S3Position {
        S3Position { v: 1, base: base.to_string(), ..S3Position::default() }
    }

    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("a position serialises")
    }

    pub fn decode(s: &str) -> Option<S3Position> {
        serde_json::from_str::<S3Position>(s).ok().filter(|p| p.v == 1)
    }

    /// The position with `rel` counted whole: remembered, and keys below the new floor forgotten.
    fn finished(mut self, rel: &str, lookback: EpochSeconds) -> S3Position {
        self.open = None;
        self.done.insert(rel.to_string());
        if dated(rel).is_some_and(|d| d.partition.is_empty()) && rel > self.high.as_str() {
            self.high = rel.to_string();
        }
        if let Some(floor) = self.floor(lookback) {
            self.done = self.done.split_off(floor.as_str());
        }
        self
    }

    /// The hour folder (relative to `base`) the next listing starts at.
    fn floor(&self, lookback: EpochSeconds) -> Option<String> {
        let hour = dated(&self.high)?.hour;
        Some(hour_folder(hour - lookback))
    }

    fn at(&self, rel: &str, etag: &str, m: Mark, document: bool) -> String {
        let mut p = self.clone();
        let document = document.then_some(m.frame);
        p.open =
            Some(OpenObject { key: rel.to_string(), etag: etag.to_string(), offset: m.offset, line: m.line, document });
        p.encode()
    }
}

/// A key in the dated layout, `<partition>YYYY/MM/DD/HH/<name>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Dated<'k> {
    partition: &'k str,
    hour: EpochSeconds,
    /// The object sits directly in the hour folder (not in a folder below it, like `data/`).
    direct: bool,
}

fn digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// Finds the first `YYYY/MM/DD/HH/` run of folders in `key`.
fn dated(key: &str) -> Option<Dated<'_>> {
    let mut start = 0;
    loop {
        let rest = &key[start..];
        let b = rest.as_bytes();
        if b.len() > 14 && [4, 7, 10, 13].iter().all(|&i| b[i] == b'/') {
            let (y, m, d, h) = (&rest[0..4], &rest[5..7], &rest[8..10], &rest[11..13]);
            if [y, m, d, h].iter().all(|s| digits(s)) {
                let hour = chrono::NaiveDate::from_ymd_opt(y.parse().ok()?, m.parse().ok()?, d.parse().ok()?)
                    .and_then(|day| day.and_hms_opt(h.parse().ok()?, 0, 0))
                    .map(|t| t.and_utc().timestamp());
                if let Some(hour) = hour {
                    return Some(Dated { partition: &key[..start], hour, direct: !rest[14..].contains('/') });
                }
            }
        }
        start += rest.find('/')? + 1;
    }
}

fn hour_folder(hour: EpochSeconds) -> String {
    crate::ids::utc(hour).format("%Y/%m/%d/%H/").to_string()
}

/// The partition folder of a prefix that already reaches into the dated folders
/// (`…/us-east-1/2025/11/`), if it does.
fn dated_prefix(prefix: &str) -> Option<&str> {
    let mut start = 0;
    while start < prefix.len() {
        let seg_end = prefix[start..].find('/').map_or(prefix.len(), |i| start + i);
        if seg_end - start == 4 && digits(&prefix[start..seg_end]) {
            let after = &prefix[seg_end..];
            let month = after.strip_prefix('/').map(|a| a.split('/').next().unwrap_or(""));
            if month.is_none_or(|m| m.len() <= 2 && (m.is_empty() || digits(m))) {
                return Some(&prefix[..start]);
            }
        }
        start = seg_end + 1;
    }
    None
}

/// One object to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectRef {
    pub key: String,
    pub size: u64,
}

/// One scope to read this pass: its new objects, oldest first.
#[derive(Debug, Clone)]
pub struct S3Job {
    pub bucket: String,
    /// The checkpoint key, `s3://bucket/<scope>`.
    pub key: String,
    /// The stored position.
    pub expected: Option<String>,
    pub start: S3Position,
    pub objects: Vec<ObjectRef>,
    /// Seconds of lookback, for the floor.
    pub lookback: EpochSeconds,
}

impl S3Job {
    /// Compressed bytes to fetch.
    pub fn size(&self) -> u64 {
        self.objects.iter().map(|o| o.size).sum()
    }
}

/// A listing scope: what to list and what its keys are relative to.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Scope {
    list_prefix: String,
    base: String,
}

/// One `s3://bucket/prefix` input, kept between passes while following.
pub struct S3Source {
    pub url: S3Url,
    lookback: EpochSeconds,
    partitions: Vec<Scope>,
    walked: Option<Instant>,
}

impl S3Source {
    pub fn new(url: S3Url, lookback_hours: u32) -> S3Source {
        S3Source { url, lookback: i64::from(lookback_hours) * 3600, partitions: Vec::new(), walked: None }
    }

    fn checkpoint_key(&self, scope: &str) -> String {
        format!("s3://{}/{scope}", self.url.bucket)
    }

    /// Lists what is new since the stored positions: one job per scope with anything to read.
    pub fn plan(&mut self, remote: &Remote, checkpoints: &HashMap<String, String>) -> Result<Vec<S3Job>, SourceError> {
        let mut jobs = Vec::new();
        // Walk again every REWALK, and on every pass while no partition is known yet (a new
        // deployment's first records should not wait a minute).
        if self.partitions.is_empty() || self.walked.is_none_or(|t| t.elapsed() >= REWALK) {
            let (partitions, loose) = self.walk(remote)?;
            self.partitions = partitions;
            self.walked = Some(Instant::now());
            for object in loose {
                let key = self.checkpoint_key(&object.key);
                let expected = checkpoints.get(&key).cloned();
                let start = expected.as_deref().and_then(S3Position::decode).filter(|p| p.base == object.key);
                if start.as_ref().is_some_and(|p| p.done.contains("")) {
                    continue;
                }
                let start = start.unwrap_or_else(|| S3Position::new(&object.key));
                jobs.push(S3Job {
                    bucket: self.url.bucket.clone(),
                    key,
                    expected,
                    start,
                    objects: vec![object],
                    lookback: self.lookback,
                });
            }
        }
        for scope in &self.partitions {
            let key = self.checkpoint_key(&scope.list_prefix);
            let expected = checkpoints.get(&key).cloned();
            let start = expected
                .as_deref()
                .and_then(S3Position::decode)
                .filter(|p| p.base == scope.base)
                .unwrap_or_else(|| S3Position::new(&scope.base));
            let start_after = start.floor(self.lookback).map(|f| format!("{}{f}", scope.base));
            let mut objects = Vec::new();
            let mut ignored = 0u64;
            list(remote, &self.url.bucket, &scope.list_prefix, None, start_after.as_deref(), |key, size| {
                let rel = key.strip_prefix(scope.base.as_str()).unwrap_or(key);
                match dated(rel) {
                    Some(d) if d.partition.is_empty() && d.direct => {
                        if !start.done.contains(rel) {
                            objects.push(ObjectRef { key: key.to_string(), size });
                        }
                    }
                    // Offloaded bodies and media below the hour folders, and stray keys.
                    _ => ignored += 1,
                }
            })?;
            if ignored > 0 {
                tracing::debug!(scope = %key, ignored, "keys outside the hourly layout (offloaded bodies, media) not read");
            }
            if !objects.is_empty() {
                jobs.push(S3Job {
                    bucket: self.url.bucket.clone(),
                    key,
                    expected,
                    start,
                    objects,
                    lookback: self.lookback,
                });
            }
        }
        Ok(jobs)
    }

    /// Finds the partitions under the prefix, and the objects outside any partition.
    fn walk(&self, remote: &Remote) -> Result<(Vec<Scope>, Vec<ObjectRef>), SourceError> {
        let prefix = &self.url.prefix;
        if let Some(base) = dated_prefix(prefix) {
            return Ok((vec![Scope { list_prefix: prefix.clone(), base: base.to_string() }], Vec::new()));
        }
        let mut partitions = Vec::new();
        let mut loose = Vec::new();
        let mut pending = vec![(prefix.clone(), 0usize)];
        while let Some((p, depth)) = pending.pop() {
            let mut folders = Vec::new();
            list(remote, &self.url.bucket, &p, Some(&mut folders), None, |key, size| {
                if !key.ends_with('/') {
                    loose.push(ObjectRef { key: key.to_string(), size });
                }
            })?;
            let is_year = |f: &String| {
                let name = f.trim_end_matches('/').rsplit('/').next().unwrap_or("");
                name.len() == 4 && digits(name)
            };
            if let Some(year) = folders.iter().find(|f| is_year(f)) {
                let base = &year[..year.trim_end_matches('/').rfind('/').map_or(0, |i| i + 1)];
                partitions.push(Scope { list_prefix: p.clone(), base: base.to_string() });
            }
            if depth < MAX_DEPTH {
                pending.extend(folders.into_iter().filter(|f| !is_year(f)).map(|f| (f, depth + 1)));
            }
        }
        partitions.sort_by(|a, b| a.list_prefix.cmp(&b.list_prefix));
        loose.sort_by(|a, b| a.key.cmp(&b.key));
        Ok((partitions, loose))
    }
}

/// Lists every key under `prefix` (after `start_after`), calling `each(key, size)`; with
/// `folders`, lists one level (`Delimiter=/`) and collects the sub-folders there.
fn list(
    remote: &Remote,
    bucket: &str,
    prefix: &str,
    mut folders: Option<&mut Vec<String>>,
    start_after: Option<&str>,
    mut each: impl FnMut(&str, u64),
) -> Result<(), SourceError> {
    let mut token: Option<String> = None;
    loop {
        let mut req = remote.s3.list_objects_v2().bucket(bucket).prefix(prefix);
        if folders.is_some() {
            req = req.delimiter("/");
        }
        if let Some(after) = start_after {
            req = req.start_after(after);
        }
        if let Some(t) = &token {
            req = req.continuation_token(t);
        }
        let page =
            remote.block_on(req.send()).map_err(|e| SourceError::from_sdk(format!("s3://{bucket}/{prefix}"), &e))?;
        for o in page.contents() {
            if let Some(key) = o.key() {
                each(key, o.size().unwrap_or(0).max(0) as u64);
            }
        }
        if let Some(f) = folders.as_deref_mut() {
            f.extend(page.common_prefixes().iter().filter_map(|c| c.prefix().map(str::to_string)));
        }
        match page.next_continuation_token() {
            Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_string()),
            _ => return Ok(()),
        }
    }
}

/// Reads a job's objects in order, sending pieces. `send` returns false when the receiver is
/// gone. Returns early, with everything sent so far consistent, when `shutdown` is set.
pub fn read_job(
    remote: &Remote,
    job: &S3Job,
    decoder: &mut Decoder<'_>,
    settings: &ReadSettings,
    bytes_read: &Arc<AtomicU64>,
    shutdown: &AtomicBool,
    send: &mut dyn FnMut(Piece) -> bool,
) -> Result<(), SourceError> {
    let mut state = job.start.clone();
    let mut expected = job.expected.clone();
    for object in &job.objects {
        if shutdown.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(());
        }
        let rel = object.key.strip_prefix(state.base.as_str()).unwrap_or(&object.key).to_string();
        let what = format!("s3://{}/{}", job.bucket, object.key);
        let mut piece =
            Piece { source: job.key.clone(), expected: expected.clone(), name: Some(what.clone()), ..Piece::default() };
        if object.key.rsplit('/').next() == Some(MARKER_OBJECT) {
            // Bedrock's zero-byte permission check: received and skipped, never fetched.
            piece.received = 1;
            piece.rejects.push(Rejected::new(Reason::MarkerObject, "bucket permission-check object", 1, 0, b""));
        } else {
            let resume = state.open.take().filter(|o| o.key == rel);
            let target = Target { key: &object.key, rel: &rel, what: &what };
            let mut r = Reading { decoder: &mut *decoder, settings, bytes_read, shutdown, send: &mut *send };
            match read_object(remote, job, &state, &target, resume, &mut r, &mut expected)? {
                Read_::Done => {}
                Read_::Stopped => return Ok(()),
            }
            piece.expected = expected.clone();
        }
        state = state.finished(&rel, job.lookback);
        piece.position = state.encode();
        expected = Some(piece.position.clone());
        if !send(piece) {
            return Ok(());
        }
    }
    Ok(())
}

enum Read_ {
    Done,
    Stopped,
}

/// The object being read: its key, its key relative to the scope, its URL.
struct Target<'a> {
    key: &'a str,
    rel: &'a str,
    what: &'a str,
}

/// Streams one object from `resume` (or its start), retrying fetches that fail mid-body.
fn read_object(
    remote: &Remote,
    job: &S3Job,
    state: &S3Position,
    target: &Target<'_>,
    resume: Option<OpenObject>,
    r: &mut Reading<'_, '_>,
    expected: &mut Option<String>,
) -> Result<Read_, SourceError> {
    let (settings, bytes_read) = (r.settings, r.bytes_read);
    let Target { key, rel, what } = *target;
    let (mut offset, mut line) = resume.as_ref().map_or((0, 0), |o| (o.offset, o.line));
    // `Some(frame)`: read as JSON documents, from that frame.
    let mut document = resume.as_ref().and_then(|o| o.document);
    let mut attempt = 0;
    loop {
        let fetched = remote.block_on(remote.s3.get_object().bucket(&job.bucket).key(key).send());
        let object = match fetched {
            Ok(o) => o,
            Err(e) => match SourceError::from_sdk(what, &e) {
                SourceError::NotFound { .. } => {
                    tracing::warn!(object = %what, "object was deleted after it was listed; nothing to count");
                    return Ok(Read_::Done);
                }
                err => return Err(err),
            },
        };
        let etag = object.e_tag().unwrap_or_default().to_string();
        if offset > 0 && resume.as_ref().is_some_and(|o| o.etag != etag) {
            tracing::warn!(object = %what, "object was replaced since it was counted part-way; reading it again from the start (counted records are deduplicated)");
            (offset, line, document) = (0, 0, None);
        }
        let mut body = BufReader::with_capacity(256 * 1024, Body::new(remote, what, object.body, bytes_read.clone()));
        let outcome = (|| -> io::Result<stream::Reached> {
            let gz = is_gzip(&mut body)?;
            let mut reader: Box<dyn Read + '_> =
                if gz { Box::new(flate2::bufread::MultiGzDecoder::new(body)) } else { Box::new(body) };
            // Pass over what was already counted; gzip cannot seek.
            let skipped = io::copy(&mut (&mut reader).take(offset), &mut io::sink())?;
            if skipped < offset {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "object is shorter than its checkpoint"));
            }
            let start = Start {
                source: &job.key,
                name: Some(what),
                expected: expected.clone(),
                offset,
                line,
                gz,
                detect_document: offset == 0,
                follow: false,
                max_record_bytes: settings.max_record_bytes,
                piece_records: settings.piece_records,
            };
            if let Some(frame) = document {
                let position = |m: Mark| state.at(rel, &etag, m, true);
                return Ok(document::read_document(reader, start, frame, r.decoder, r.shutdown, &position, r.send));
            }
            let mut lines = LineReader::new(reader, start.offset, start.max_record_bytes);
            Ok(stream::read_lines(
                &mut lines,
                start,
                r.decoder,
                r.shutdown,
                &|m| state.at(rel, &etag, m, false),
                r.send,
                &|_, _| false,
            ))
        })();
        let failure = match outcome {
            Ok(reached) => {
                *expected = reached.expected;
                match reached.end {
                    End::Done => return Ok(Read_::Done),
                    End::Stopped => return Ok(Read_::Stopped),
                    // JSON documents: fetched again and streamed from the start.
                    End::Document => {
                        (offset, line, document) = (0, 0, Some(Frame::Top));
                        continue;
                    }
                    End::Fetch(e) => {
                        (offset, line) = (reached.offset, reached.line);
                        if document.is_some() {
                            document = Some(reached.frame);
                        }
                        e
                    }
                }
            }
            Err(e) if stream::Fetch::is(&e) => e,
            Err(e) => {
                // The part already counted no longer decodes: the object changed under the
                // same ETag. Read it again from the start; counted records are deduplicated.
                tracing::warn!(object = %what, error = %e, "cannot pass over the counted part; reading the object again from the start");
                (offset, line, document) = (0, 0, None);
                e
            }
        };
        attempt += 1;
        if attempt >= FETCH_ATTEMPTS {
            return Err(SourceError::Unavailable {
                what: what.to_string(),
                detail: format!("{failure} (after {attempt} fetches)"),
            });
        }
        tracing::warn!(object = %what, attempt, error = %failure, "object body failed mid-stream; fetching it again from the counted position");
        std::thread::sleep(Duration::from_millis(100 << attempt));
    }
}

/// Whether a stream starts with the gzip magic bytes (without consuming them).
fn is_gzip(r: &mut impl BufRead) -> io::Result<bool> {
    let buf = r.fill_buf()?;
    Ok(buf.len() >= 2 && buf[..2] == [0x1f, 0x8b])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            S3Url::parse("s3://logs/AWSLogs/").unwrap(),
            S3Url { bucket: "logs".into(), prefix: "AWSLogs/".into() }
        );
        assert_eq!(S3Url::parse("s3://logs").unwrap(), S3Url { bucket: "logs".into(), prefix: String::new() });
        assert!(S3Url::parse("s3:///x").is_err());
        assert!(S3Url::parse("/tmp/x").is_err());
    }

    #[test]
    fn dated_keys() {
        let k = "p/AWSLogs/111122223333/BedrockModelInvocationLogs/us-east-1/2025/11/03/10/20251103T100512Z_ab.json.gz";
        let d = dated(k).unwrap();
        assert_eq!(d.partition, "p/AWSLogs/111122223333/BedrockModelInvocationLogs/us-east-1/");
        assert_eq!(crate::ids::hour_label(d.hour), "2025-11-03T10:00:00Z");
        assert!(d.direct);
        let body = "AWSLogs/1/BedrockModelInvocationLogs/us-east-1/2025/11/03/10/data/abc_input.json.gz";
        assert!(!dated(body).unwrap().direct);
        assert_eq!(dated("AWSLogs/1/BedrockModelInvocationLogs/amazon-bedrock-logs-permission-check"), None);
        assert_eq!(dated("2025/11/03/10/x.json.gz").unwrap().partition, "");
        assert_eq!(dated("a/2025/13/03/10/x.json.gz"), None, "month 13 is not a date");
    }

    #[test]
    fn dated_prefixes() {
        assert_eq!(dated_prefix("AWSLogs/1/B/us-east-1/2025/11/"), Some("AWSLogs/1/B/us-east-1/"));
        assert_eq!(dated_prefix("AWSLogs/1/B/us-east-1/2025"), Some("AWSLogs/1/B/us-east-1/"));
        assert_eq!(dated_prefix("AWSLogs/1/B/us-east-1/"), None);
        assert_eq!(dated_prefix("bedrock/2024/AWSLogs/"), None, "a 4-digit folder not followed by a month");
    }

    #[test]
    fn the_counted_set_keeps_only_the_lookback() {
        let lookback = 2 * 3600;
        let mut p = S3Position::new("base/");
        for h in ["00", "01", "02", "03", "05"] {
            p = p.finished(&format!("2025/11/03/{h}/x.json.gz"), lookback);
        }
        assert_eq!(p.high, "2025/11/03/05/x.json.gz");
        assert_eq!(p.floor(lookback).as_deref(), Some("2025/11/03/03/"));
        assert_eq!(
            p.done.iter().cloned().collect::<Vec<_>>(),
            vec!["2025/11/03/03/x.json.gz", "2025/11/03/05/x.json.gz"]
        );
        // A late object with an earlier key inside the lookback is remembered without moving the floor.
        p = p.finished("2025/11/03/04/late.json.gz", lookback);
        assert_eq!(p.high, "2025/11/03/05/x.json.gz");
        assert_eq!(p.done.len(), 3);
        assert_eq!(S3Position::decode(&p.encode()), Some(p));
    }
}
