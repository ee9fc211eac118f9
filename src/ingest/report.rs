//! What a run did (and why it stopped): the report, the last run kept for `tally status`, and
//! the tally of one input that tells a file refused whole.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;

#[cfg(feature = "aws")]
use crate::source::remote::SourceError;
use crate::source::Piece;
use crate::store::StoreError;

/// What a run did. `received = counted + duplicates + Σ skipped` always.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunReport {
    pub files_seen: u64,
    pub files_unchanged: u64,
    pub files_read: u64,
    pub files_failed: u64,
    /// S3 objects read (including the marker object, counted without being fetched).
    pub objects_read: u64,
    /// CloudWatch Logs streams asked for new events.
    pub streams_read: u64,
    pub bytes_read: u64,
    /// Inputs passed over on purpose, with why (FIFOs, devices: not regular files).
    pub passed_over: Vec<String>,
    pub received: u64,
    pub counted: u64,
    pub duplicates: u64,
    pub skipped: BTreeMap<String, u64>,
    pub quarantined: u64,
    /// Quarantined records not written to the file: past `ingest.quarantine_max_bytes`.
    pub quarantine_omitted: u64,
    pub quarantine_file: String,
    pub conflicts: u64,
    pub unattributed: u64,
    pub unexpected_schema: u64,
    pub unknown_models: BTreeMap<String, u64>,
    pub batches: u64,
    pub keys_written: u64,
    pub elapsed_secs: f64,
    pub errors: Vec<String>,
}

impl RunReport {
    pub fn skipped_total(&self) -> u64 {
        self.skipped.values().sum()
    }

    /// The accounting identity.
    pub fn balanced(&self) -> bool {
        self.received == self.counted + self.duplicates + self.skipped_total()
    }

    pub(super) fn merge(&mut self, o: &RunReport) {
        self.files_seen = self.files_seen.max(o.files_seen);
        self.files_unchanged = o.files_unchanged;
        self.files_read += o.files_read;
        self.files_failed += o.files_failed;
        self.objects_read += o.objects_read;
        self.streams_read += o.streams_read;
        self.bytes_read += o.bytes_read;
        // A FIFO passed over is passed over at every poll of --follow: said once.
        for p in &o.passed_over {
            if !self.passed_over.contains(p) {
                self.passed_over.push(p.clone());
            }
        }
        self.received += o.received;
        self.counted += o.counted;
        self.duplicates += o.duplicates;
        for (k, v) in &o.skipped {
            *self.skipped.entry(k.clone()).or_default() += v;
        }
        self.quarantined += o.quarantined;
        self.quarantine_omitted += o.quarantine_omitted;
        self.quarantine_file.clone_from(&o.quarantine_file);
        self.conflicts += o.conflicts;
        self.unattributed += o.unattributed;
        self.unexpected_schema += o.unexpected_schema;
        for (k, v) in &o.unknown_models {
            *self.unknown_models.entry(k.clone()).or_default() += v;
        }
        self.batches += o.batches;
        self.keys_written += o.keys_written;
        self.elapsed_secs += o.elapsed_secs;
        self.errors.extend(o.errors.iter().cloned());
    }
}

/// Why a run stopped.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Store(#[from] StoreError),
    // The messages below include their cause, which is therefore not also a `source`: a
    // chain printed with `{:#}` (the CLI's error line) said it twice.
    #[error("cannot list input: {0}")]
    Input(std::io::Error),
    /// An S3 prefix or log group could not be listed (after the SDK's retries).
    #[cfg(feature = "aws")]
    #[error("cannot list input: {0}")]
    Source(SourceError),
    #[error("cannot write quarantine file {path}: {error}")]
    Quarantine { path: String, error: std::io::Error },
    #[error("accounting does not add up: {0}")]
    Accounting(String),
}

#[cfg(feature = "aws")]
impl From<SourceError> for IngestError {
    fn from(e: SourceError) -> Self {
        IngestError::Source(e)
    }
}

/// Where the last run's report is kept, beside the quarantine file: what `tally status`
/// shows of the failed inputs and the quarantine.
pub fn last_run_path(quarantine: &std::path::Path) -> PathBuf {
    quarantine.with_file_name("last-ingest.json")
}

/// The last run's report as `tally status` shows it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct LastRun {
    pub finished_at: String,
    pub received: u64,
    pub counted: u64,
    pub quarantined: u64,
    /// Quarantined records not written to the file: past `ingest.quarantine_max_bytes`.
    pub quarantine_omitted: u64,
    pub quarantine_file: String,
    pub files_failed: u64,
    /// The failed inputs, each with why.
    pub failed: Vec<String>,
}

impl LastRun {
    pub fn of(report: &RunReport) -> LastRun {
        LastRun {
            finished_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            received: report.received,
            counted: report.counted,
            quarantined: report.quarantined,
            quarantine_omitted: report.quarantine_omitted,
            quarantine_file: report.quarantine_file.clone(),
            files_failed: report.files_failed,
            failed: report.errors.clone(),
        }
    }

    /// Writes it (whole: to a temporary file, then renamed over the old one).
    pub fn save(&self, path: &std::path::Path) -> std::io::Result<()> {
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self).expect("serialises"))?;
        std::fs::rename(&tmp, path)
    }

    pub fn load(path: &std::path::Path) -> Option<LastRun> {
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    }
}

/// What one input gave, to tell a file whose contents were refused whole.
#[derive(Default)]
pub(super) struct ReadTally {
    counted: u64,
    refused: u64,
    first: Option<String>,
}

impl ReadTally {
    pub(super) fn add(&mut self, p: &Piece) {
        self.counted += p.entries.len() as u64;
        for r in p.rejects.iter().filter(|r| !r.reason.is_benign()) {
            self.refused += 1;
            if self.first.is_none() {
                self.first = Some(format!("{} at line {}: {}", r.reason, r.line, r.detail));
            }
        }
    }

    /// Why the input counts as failed: read from its start, it gave records to quarantine and
    /// none to count (a document refused as a whole, a file of nothing but bad lines). A
    /// balanced run of one "received" must not hide it.
    pub(super) fn refused_whole(&self, from_start: bool) -> Option<String> {
        (from_start && self.counted == 0 && self.refused > 0).then(|| {
            format!(
                "no record in it could be read: {} quarantined, the first {}",
                self.refused,
                self.first.as_deref().unwrap_or_default()
            )
        })
    }
}
