//! `[ingest]` and what is built from it: the pure pipeline and the run settings.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::pricing::Catalog;
use crate::record::ParseOptions;
use crate::source::files::ReadSettings;
use crate::store::Backend;
use crate::tenant::Resolver;

/// `[ingest]`: how log files are read and counted.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// Records per batch: the unit in which records are checked for duplicates and, on
    /// DynamoDB, the unit of one store transaction; unset, it depends on the store (see
    /// [`IngestConfig::batch_records_for`]).
    #[serde(default)]
    pub batch_records: Option<usize>,
    /// SQLite: records per store transaction. Batches are applied into one open transaction
    /// until it holds this many records (or `commit_seconds` pass), and their counters are
    /// summed and written once, at its commit.
    #[serde(default = "IngestConfig::default_commit_records")]
    pub commit_records: u64,
    /// SQLite: the longest a counted batch waits for its transaction's commit, in seconds; it
    /// bounds how far the live meters lag the ingester.
    #[serde(default = "IngestConfig::default_commit_seconds")]
    pub commit_seconds: f64,
    /// How long a `requestId` is remembered for deduplication, in days.
    #[serde(default = "IngestConfig::default_dedup_window_days")]
    pub dedup_window_days: u32,
    /// A line (or JSON document) longer than this is quarantined without being read into memory.
    #[serde(default = "IngestConfig::default_max_record_bytes")]
    pub max_record_bytes: usize,
    /// A token count above this is quarantined as absurd.
    #[serde(default = "IngestConfig::default_max_token_count")]
    pub max_token_count: u64,
    /// The dead-letter file (JSON lines).
    #[serde(default = "IngestConfig::default_quarantine")]
    pub quarantine: PathBuf,
    /// The most bytes of quarantine entries one run writes; bad records past it are counted,
    /// not written (a small gzip of junk can inflate to millions of them).
    #[serde(default = "IngestConfig::default_quarantine_max_bytes")]
    pub quarantine_max_bytes: u64,
    /// A record stamped more than this many hours after the ingest's clock is quarantined as
    /// `bad_timestamp`, so one bad clock cannot move the dedup window past everyone else.
    #[serde(default = "IngestConfig::default_max_future_hours")]
    pub max_future_hours: u32,
    /// Parser threads; 0 means one per core.
    #[serde(default)]
    pub workers: usize,
    /// How much lower the parser threads' scheduling priority is than the committer's (a
    /// `nice` increment, 0–19; Linux only). The committer is the one serial stage, so on a
    /// machine with as many busy parsers as cores it must not wait for a time slice. Higher
    /// is faster on an idle machine and slower next to busy processes of the same scheduling
    /// group (session or cgroup), to which the parsers yield as well.
    #[serde(default = "IngestConfig::default_reader_nice")]
    pub reader_nice: i32,
    /// With `--follow`, seconds between looks for new data.
    #[serde(default = "IngestConfig::default_poll_seconds")]
    pub poll_seconds: f64,
}

impl IngestConfig {
    /// Records per batch: as configured, else 20,000 on SQLite (a batch's memory is most of
    /// an ingest's; more transactions cost little) and 50,000 on DynamoDB (each batch rewrites
    /// the day, month and dedup items it touches, and writes are billed).
    pub fn batch_records_for(&self, backend: Backend) -> usize {
        self.batch_records.unwrap_or(if backend == Backend::Dynamodb { 50_000 } else { 20_000 })
    }
    fn default_commit_records() -> u64 {
        100_000
    }
    fn default_commit_seconds() -> f64 {
        1.0
    }
    fn default_dedup_window_days() -> u32 {
        35
    }
    fn default_max_record_bytes() -> usize {
        16 << 20
    }
    fn default_max_token_count() -> u64 {
        10_000_000
    }
    fn default_max_future_hours() -> u32 {
        24
    }
    fn default_quarantine_max_bytes() -> u64 {
        crate::quarantine::DEFAULT_RUN_LIMIT
    }
    fn default_quarantine() -> PathBuf {
        "quarantine.jsonl".into()
    }
    fn default_poll_seconds() -> f64 {
        2.0
    }
    fn default_reader_nice() -> i32 {
        5
    }
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            batch_records: None,
            commit_records: Self::default_commit_records(),
            commit_seconds: Self::default_commit_seconds(),
            dedup_window_days: Self::default_dedup_window_days(),
            max_record_bytes: Self::default_max_record_bytes(),
            max_token_count: Self::default_max_token_count(),
            quarantine: Self::default_quarantine(),
            quarantine_max_bytes: Self::default_quarantine_max_bytes(),
            max_future_hours: Self::default_max_future_hours(),
            workers: 0,
            reader_nice: Self::default_reader_nice(),
            poll_seconds: Self::default_poll_seconds(),
        }
    }
}

/// The pure parts of ingest, built from config.
pub struct Pipeline {
    pub resolver: Resolver,
    pub catalog: Catalog,
}

/// Records per piece a worker sends: small enough that pieces in flight stay a few MB.
const PIECE_RECORDS: usize = 4_096;

/// How ingest runs.
#[derive(Debug, Clone)]
pub struct Settings {
    pub read: ReadSettings,
    /// Records per batch.
    pub batch_records: usize,
    /// Records per store transaction, for stores that group batches (SQLite).
    pub commit_records: u64,
    /// The longest a batch waits for its transaction's commit.
    pub commit_interval: Duration,
    pub workers: usize,
    /// Nice increment of the worker threads (see [`IngestConfig::reader_nice`]).
    pub reader_nice: i32,
    pub dedup_window: i64,
    pub parse: ParseOptions,
    /// With `--follow`, the wait between passes.
    pub poll: Duration,
    /// Files never read as input (tally's own store and quarantine).
    pub exclude: Vec<PathBuf>,
}

impl Settings {
    /// `batch_records` as the store wants it ([`IngestConfig::batch_records_for`]); `exclude`:
    /// tally's own files (store, quarantine, last-run report), never read as input.
    pub fn new(i: &IngestConfig, batch_records: usize, follow: bool, exclude: Vec<PathBuf>) -> Settings {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Settings {
            read: ReadSettings {
                max_record_bytes: i.max_record_bytes,
                piece_records: batch_records.min(PIECE_RECORDS),
                follow,
            },
            batch_records,
            commit_records: i.commit_records,
            commit_interval: Duration::from_secs_f64(i.commit_seconds),
            workers: if i.workers == 0 { cores } else { i.workers },
            reader_nice: i.reader_nice,
            dedup_window: i64::from(i.dedup_window_days) * 86_400,
            parse: ParseOptions {
                max_token_count: i.max_token_count,
                latest_timestamp: Some(chrono::Utc::now().timestamp() + i64::from(i.max_future_hours) * 3600),
            },
            poll: Duration::from_secs_f64(i.poll_seconds),
            exclude,
        }
    }
}
