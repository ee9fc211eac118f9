//! Ingest: sources → pieces → atomic batches in the counter store.
//!
//! # Why the result is exactly-once
//!
//! Every source has a checkpoint (a position) stored in the same store as the counters. A
//! worker reads a source from its stored position and produces pieces; each piece says which
//! position it started from (`expected`) and which it ends at. The committer merges pieces into
//! one [`Batch`] and the store applies it in one atomic write: counter deltas, dedup entries,
//! skip counts and the new positions together, refused whole if a stored position is not the
//! expected one. So at any instant the stored counters are exactly the sum of the records
//! before the stored positions. A process killed at any point leaves either the old state or
//! the new one; on restart the sources are read again from the stored positions, and the records
//! after them are counted for the first time.
//!
//! A store may take several batches into one atomic write (a group, see
//! [`CounterStore::apply_grouped`]; SQLite does, until `ingest.commit_records` or
//! `ingest.commit_seconds`). The argument is the same with the group in place of the batch:
//! its batches' deltas and positions become visible together at its commit, or not at all, and
//! the report counts them only once the commit returned.
//!
//! Independently of positions, every record's `requestId` (with its hour) is remembered for
//! the dedup window inside the same write, so the same record arriving through another file,
//! object or stream, or a replaced file read again, is counted once.
//!
//! Nothing is dropped: every record received is counted, a duplicate, or skipped with a reason
//! (and quarantined unless expected), and each run checks `received = counted + duplicates +
//! skipped` and fails when it does not hold.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::ids::EpochSeconds;
use crate::pricing::Catalog;
use crate::progress::Progress;
use crate::quarantine::{Quarantine, Reason, Rejected};
use crate::record::ParseOptions;
use crate::source::files::{self, ReadSettings};
#[cfg(feature = "aws")]
use crate::source::{
    cloudwatch,
    remote::{Remote, SourceError},
    s3,
};
use crate::source::{DecodeStats, Decoder, Input, Piece, SourcesConfig};
use crate::store::{Batch, CheckpointUpdate, CounterStore, StoreError};
use crate::tenant::Resolver;
use crate::usage::Metering;

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
    pub fn batch_records_for(&self, backend: &str) -> usize {
        self.batch_records.unwrap_or(if backend == "dynamodb" { 50_000 } else { 20_000 })
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
            exclude,
        }
    }
}

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

    fn merge(&mut self, o: &RunReport) {
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

enum Message {
    Piece(Piece),
    Failed(String),
}

/// What `tally ingest` reads. Kept between the passes of `--follow`, so an S3 source
/// remembers the partitions it found.
pub struct Inputs {
    paths: Vec<PathBuf>,
    #[cfg(feature = "aws")]
    s3: Vec<s3::S3Source>,
    #[cfg(feature = "aws")]
    logs: Vec<cloudwatch::LogsSource>,
    /// The SDK clients, when there is an AWS input.
    #[cfg(feature = "aws")]
    remote: Option<Remote>,
}

impl Inputs {
    /// Files and directories only.
    pub fn paths(paths: &[PathBuf]) -> Inputs {
        Inputs {
            paths: paths.to_vec(),
            #[cfg(feature = "aws")]
            s3: Vec::new(),
            #[cfg(feature = "aws")]
            logs: Vec::new(),
            #[cfg(feature = "aws")]
            remote: None,
        }
    }

    /// Any inputs; AWS ones get SDK clients from the standard chain and `[sources]` (built
    /// here, without a network call).
    #[cfg_attr(not(feature = "aws"), allow(unused_variables))]
    pub fn new(inputs: Vec<Input>, sources: &SourcesConfig) -> Result<Inputs, IngestError> {
        let mut out = Inputs::paths(&[]);
        for input in inputs {
            match input {
                Input::Path(p) => out.paths.push(p),
                #[cfg(feature = "aws")]
                Input::S3(url) => out.s3.push(s3::S3Source::new(url, sources.s3_lookback_hours)),
                #[cfg(feature = "aws")]
                Input::Logs(url) => out.logs.push(cloudwatch::LogsSource::new(url)),
            }
        }
        #[cfg(feature = "aws")]
        if !out.s3.is_empty() || !out.logs.is_empty() {
            out.remote = Some(Remote::new(&sources.aws()).map_err(IngestError::Input)?);
        }
        Ok(out)
    }

    /// Lists what is new in the AWS inputs.
    #[cfg(feature = "aws")]
    fn plan_remote(
        &mut self,
        checkpoints: &HashMap<String, String>,
        jobs: &mut Vec<Job>,
        report: &mut RunReport,
    ) -> Result<(), SourceError> {
        let Some(remote) = &self.remote else { return Ok(()) };
        for source in &mut self.s3 {
            for job in source.plan(remote, checkpoints)? {
                report.objects_read += job.objects.len() as u64;
                jobs.push(Job::S3(job));
            }
        }
        for source in &self.logs {
            for job in source.plan(remote, checkpoints)? {
                report.streams_read += 1;
                jobs.push(Job::Stream(job));
            }
        }
        Ok(())
    }
}

/// One unit of work for a worker: a file, an S3 partition's new objects, a log stream.
enum Job {
    File(files::FileJob),
    #[cfg(feature = "aws")]
    S3(s3::S3Job),
    #[cfg(feature = "aws")]
    Stream(cloudwatch::StreamJob),
}

impl Job {
    /// Bytes to read, for progress (unknown for a log stream).
    fn size(&self) -> u64 {
        match self {
            Job::File(j) => j.size,
            #[cfg(feature = "aws")]
            Job::S3(j) => j.size(),
            #[cfg(feature = "aws")]
            Job::Stream(_) => 0,
        }
    }
}

/// Reads `paths` once: every file from its checkpoint to its current end.
#[allow(clippy::too_many_arguments)]
pub fn run_once(
    paths: &[PathBuf],
    store: &mut dyn CounterStore,
    pipeline: &Pipeline,
    settings: &Settings,
    quarantine: &mut Quarantine,
    shutdown: &AtomicBool,
    progress: &dyn Progress,
) -> Result<RunReport, IngestError> {
    run_pass(&mut Inputs::paths(paths), store, pipeline, settings, quarantine, shutdown, progress)
}

/// Reads every input once: files from their checkpoints to their current ends, S3 partitions'
/// new objects, log streams' new events.
#[allow(clippy::too_many_arguments)]
pub fn run_pass(
    inputs: &mut Inputs,
    store: &mut dyn CounterStore,
    pipeline: &Pipeline,
    settings: &Settings,
    quarantine: &mut Quarantine,
    shutdown: &AtomicBool,
    progress: &dyn Progress,
) -> Result<RunReport, IngestError> {
    let started = Instant::now();
    let omitted_before = quarantine.omitted();
    let checkpoints = store.checkpoints()?;
    let mut report = RunReport { quarantine_file: quarantine.path().display().to_string(), ..RunReport::default() };
    let mut jobs: Vec<Job> = Vec::new();
    if !inputs.paths.is_empty() {
        let discovered = files::discover(&inputs.paths, &settings.exclude).map_err(IngestError::Input)?;
        for why in &discovered.failed {
            tracing::error!(error = %why, "cannot read input");
        }
        for why in &discovered.passed_over {
            tracing::warn!(input = %why, "passed over");
        }
        report.files_failed += discovered.failed.len() as u64;
        report.errors.extend(discovered.failed);
        report.passed_over.extend(discovered.passed_over);
        let found = discovered.files;
        report.files_seen = found.len() as u64;
        let (file_jobs, unchanged) = files::plan(found, &checkpoints).map_err(IngestError::Input)?;
        report.files_unchanged = unchanged as u64;
        report.files_read = file_jobs.len() as u64;
        jobs.extend(file_jobs.into_iter().map(Job::File));
    }
    #[cfg(feature = "aws")]
    inputs.plan_remote(&checkpoints, &mut jobs, &mut report)?;
    if jobs.is_empty() {
        return Ok(report);
    }
    let total: u64 = jobs.iter().map(Job::size).sum();
    progress.start(total);
    let bytes_read = Arc::new(AtomicU64::new(0));
    let mut committer = Committer::new(store, quarantine, settings, &mut report)?;

    let (job_tx, job_rx) = crossbeam_channel::unbounded();
    for job in jobs {
        job_tx.send(job).expect("receiver alive");
    }
    drop(job_tx);
    let workers = settings.workers.max(1);
    // Four pieces per worker, and a finished batch queued for the committer (below): the
    // committer's time per batch varies (a batch spread over many hours writes many keys), and
    // with two pieces per worker and no queued batch the readers stopped whenever it was slow,
    // leaving a core idle. 8 alternating runs on the benchmark tree: wall -0.16 to -0.25 s,
    // peak RSS +3.5 MB (README, "Ingest throughput").
    let in_flight = workers * 4;
    let (tx, rx) = crossbeam_channel::bounded::<Message>(in_flight);

    #[cfg(feature = "aws")]
    let remote = inputs.remote.as_ref();
    let result = std::thread::scope(|scope| {
        for _ in 0..workers {
            let (job_rx, tx, bytes_read) = (job_rx.clone(), tx.clone(), bytes_read.clone());
            scope.spawn(move || {
                lower_priority(settings.reader_nice);
                let mut decoder = Decoder::new(Metering::new(&pipeline.resolver, &pipeline.catalog), settings.parse);
                for job in job_rx.iter() {
                    if shutdown.load(Ordering::Relaxed) {
                        break;
                    }
                    let mut read = ReadTally::default();
                    let mut send = |mut p: Piece| {
                        read.add(&p);
                        p.finish();
                        tx.send(Message::Piece(p)).is_ok()
                    };
                    let failed = match &job {
                        Job::File(j) => {
                            files::read_file(j, &mut decoder, &settings.read, &bytes_read, shutdown, &mut send)
                                .err()
                                .map(|e| format!("{}: {e}", j.path.display()))
                                .or_else(|| {
                                    read.refused_whole(j.resume.is_none())
                                        .map(|why| format!("{}: {why}", j.path.display()))
                                })
                        }
                        #[cfg(feature = "aws")]
                        Job::S3(j) => remote
                            .and_then(|r| {
                                s3::read_job(r, j, &mut decoder, &settings.read, &bytes_read, shutdown, &mut send).err()
                            })
                            .map(|e| e.to_string()),
                        #[cfg(feature = "aws")]
                        Job::Stream(j) => remote
                            .and_then(|r| {
                                cloudwatch::read_job(r, j, &mut decoder, &settings.read, shutdown, &mut send).err()
                            })
                            .map(|e| e.to_string()),
                    };
                    if let Some(msg) = failed {
                        tracing::error!(error = %msg, "cannot read input");
                        if tx.send(Message::Failed(msg)).is_err() {
                            break;
                        }
                    }
                }
            });
        }
        drop(tx);
        let outcome = committer.run(&rx, &bytes_read, progress);
        if outcome.is_err() {
            // Stop the workers: they see the flag, and their sends fail once `rx` is gone.
            shutdown.store(true, Ordering::Relaxed);
        }
        drop(rx);
        outcome
    });
    progress.finish();
    result?;
    report.bytes_read = bytes_read.load(Ordering::Relaxed);
    report.quarantine_omitted = quarantine.omitted() - omitted_before;
    report.elapsed_secs = started.elapsed().as_secs_f64();
    if !report.balanced() {
        return Err(IngestError::Accounting(format!(
            "received {} ≠ counted {} + duplicates {} + skipped {}",
            report.received,
            report.counted,
            report.duplicates,
            report.skipped_total()
        )));
    }
    Ok(report)
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
struct ReadTally {
    counted: u64,
    refused: u64,
    first: Option<String>,
}

impl ReadTally {
    fn add(&mut self, p: &Piece) {
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
    fn refused_whole(&self, from_start: bool) -> Option<String> {
        (from_start && self.counted == 0 && self.refused > 0).then(|| {
            format!(
                "no record in it could be read: {} quarantined, the first {}",
                self.refused,
                self.first.as_deref().unwrap_or_default()
            )
        })
    }
}

/// Lowers the calling thread's scheduling priority by `increment` (a nice increment).
///
/// Ingest runs one worker per core, plus the merger and the committer, which applies batches
/// one at a time: the serial stage. With the workers at the committer's priority, the
/// scheduler shares the cores evenly, the committer gets a fraction of one, and the workers
/// then wait on it with a core idle (on 2 cores, 15% of the plain-NDJSON ingest's wall time).
/// Linux keeps a nice value per thread (`setpriority(2)`, NOTES), so this touches only the
/// calling worker. Failure (a seccomp filter, say) only costs that speed.
fn lower_priority(increment: i32) {
    #[cfg(target_os = "linux")]
    if increment > 0 {
        // SAFETY: `nice` changes only the calling thread's scheduling priority on Linux.
        let failed = unsafe {
            *libc::__errno_location() = 0;
            libc::nice(increment) == -1 && *libc::__errno_location() != 0
        };
        if failed {
            tracing::debug!(error = %std::io::Error::last_os_error(), "cannot lower the worker thread's priority");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = increment;
}

/// Runs passes until `shutdown` is set, sleeping `poll` between them. An AWS input that
/// cannot be listed for a while (after the SDK's retries) is tried again at the next poll.
#[allow(clippy::too_many_arguments)]
pub fn follow(
    inputs: &mut Inputs,
    store: &mut dyn CounterStore,
    pipeline: &Pipeline,
    settings: &Settings,
    quarantine: &mut Quarantine,
    shutdown: &AtomicBool,
    poll: Duration,
    progress: &dyn Progress,
) -> Result<RunReport, IngestError> {
    let mut total = RunReport::default();
    while !shutdown.load(Ordering::Relaxed) {
        let pass = match run_pass(inputs, store, pipeline, settings, quarantine, shutdown, progress) {
            Ok(pass) => pass,
            #[cfg(feature = "aws")]
            Err(IngestError::Source(e)) if e.is_retryable() => {
                tracing::warn!(error = %e, "input unavailable; trying again at the next poll");
                RunReport::default()
            }
            Err(e) => return Err(e),
        };
        if pass.received > 0 {
            tracing::info!(
                received = pass.received,
                counted = pass.counted,
                duplicates = pass.duplicates,
                skipped = pass.skipped_total(),
                "ingest pass"
            );
        }
        total.merge(&pass);
        let until = Instant::now() + poll;
        while Instant::now() < until && !shutdown.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50).min(poll));
        }
    }
    Ok(total)
}

/// Quarantined records logged one by one per run; the rest are only in the quarantine file.
const LOGGED_REJECTS: u64 = 50;

/// The longest a piece waits for others to share its batch.
const BATCH_WAIT: Duration = Duration::from_millis(250);

/// Merges pieces into batches and applies them: a merger thread gathers the workers' pieces
/// into the next batch while this thread applies the previous one.
struct Committer<'a> {
    store: &'a mut dyn CounterStore,
    quarantine: &'a mut Quarantine,
    settings: &'a Settings,
    report: &'a mut RunReport,
    /// The newest hour in the store before this pass.
    max_hour: Option<EpochSeconds>,
    /// Quarantined records logged so far this run.
    logged: u64,
    /// What the store's open group holds: reported once the group commits.
    uncommitted: Option<Uncommitted>,
}

/// The batches applied into the store's open group, not yet committed.
struct Uncommitted {
    opened: Instant,
    batches: u64,
    received: u64,
    counted: u64,
    duplicates: u64,
    skipped: BTreeMap<Reason, u64>,
    /// Hourly keys written by stores that write them batch by batch.
    keys_written: u64,
}

/// One batch, merged and ready to apply, with what goes beside it.
struct Merged {
    batch: Batch,
    /// Records to quarantine, with the source they came from.
    rejected: Vec<(String, Rejected)>,
    /// Inputs that could not be read.
    failed: Vec<String>,
}

impl<'a> Committer<'a> {
    fn new(
        store: &'a mut dyn CounterStore,
        quarantine: &'a mut Quarantine,
        settings: &'a Settings,
        report: &'a mut RunReport,
    ) -> Result<Self, StoreError> {
        let max_hour = store.max_hour()?;
        Ok(Committer { store, quarantine, settings, report, max_hour, logged: 0, uncommitted: None })
    }

    fn run(
        &mut self,
        rx: &crossbeam_channel::Receiver<Message>,
        bytes_read: &AtomicU64,
        progress: &dyn Progress,
    ) -> Result<(), IngestError> {
        // One finished batch may wait while one applies, and the merger fills the next: at most
        // three batches' memory.
        let (batch_tx, batch_rx) = crossbeam_channel::bounded::<Merged>(1);
        let (settings, max_hour) = (self.settings, self.max_hour);
        let (result, stats) = std::thread::scope(|scope| {
            let merger = scope.spawn(move || merge_batches(rx, &batch_tx, settings, max_hour));
            let mut result = Ok(());
            loop {
                // With a group open, wait for the next batch only until the group is due.
                let next = match &self.uncommitted {
                    None => batch_rx.recv().map_err(|_| crossbeam_channel::RecvTimeoutError::Disconnected),
                    Some(u) => batch_rx.recv_deadline(u.opened + self.settings.commit_interval),
                };
                let step = match next {
                    Ok(merged) => self.apply(merged),
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => self.commit_group(),
                    Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
                };
                if let Err(e) = step {
                    result = Err(e);
                    break;
                }
                let pending = self.uncommitted.as_ref().map_or(0, |u| u.received);
                progress.update(bytes_read.load(Ordering::Relaxed), self.report.received + pending);
            }
            if result.is_ok() {
                result = self.commit_group();
            }
            if result.is_err() {
                self.store.rollback_group();
                self.uncommitted = None;
            }
            // Once this end is gone the merger's next send fails and it stops.
            drop(batch_rx);
            (result, merger.join().expect("the batch merger panicked"))
        });
        self.report.conflicts = stats.conflicts;
        self.report.unattributed = stats.unattributed;
        self.report.unexpected_schema = stats.unexpected_schema;
        self.report.unknown_models = stats.unknown_models;
        result
    }

    /// Applies one batch into the store's open group, and commits the group once it holds
    /// `commit_records` records or has been open `commit_interval`.
    fn apply(&mut self, merged: Merged) -> Result<(), IngestError> {
        let Merged { batch, rejected, failed } = merged;
        self.report.files_failed += failed.len() as u64;
        self.report.errors.extend(failed);
        for (source, r) in &rejected {
            if !r.reason.is_benign() {
                self.logged += 1;
                if self.logged <= LOGGED_REJECTS {
                    tracing::warn!(file = %source, line = r.line, reason = %r.reason, detail = %r.detail, "record quarantined");
                } else if self.logged == LOGGED_REJECTS + 1 {
                    tracing::warn!(quarantine = %self.quarantine.path().display(), "more records quarantined; they are not logged one by one, see the quarantine file");
                }
            }
            self.quarantine.write(source, r).map_err(|e| self.quarantine_error(e))?;
        }
        self.quarantine.flush().map_err(|e| self.quarantine_error(e))?;
        if batch.checkpoints.is_empty() && batch.received == 0 {
            return Ok(());
        }

        self.report.quarantined += rejected.iter().filter(|(_, x)| !x.reason.is_benign()).count() as u64;
        let applied = self.apply_with_retry(&batch)?;
        let offered = batch.entries.len() as u64;
        if applied.counted + applied.duplicates != offered {
            return Err(IngestError::Accounting(format!(
                "store counted {} and found {} duplicates of {offered} records",
                applied.counted, applied.duplicates
            )));
        }
        let u = self.uncommitted.get_or_insert_with(|| Uncommitted {
            opened: Instant::now(),
            batches: 0,
            received: 0,
            counted: 0,
            duplicates: 0,
            skipped: BTreeMap::new(),
            keys_written: 0,
        });
        u.batches += 1;
        u.received += batch.received;
        u.counted += applied.counted;
        u.duplicates += applied.duplicates;
        for (reason, n) in &batch.skipped {
            *u.skipped.entry(*reason).or_default() += n;
        }
        u.keys_written += applied.keys_written;
        // A store that commits each batch as it applies it (DynamoDB) has nothing to wait for.
        if !self.store.groups_batches()
            || u.received >= self.settings.commit_records
            || u.opened.elapsed() >= self.settings.commit_interval
        {
            self.commit_group()?;
        }
        Ok(())
    }

    /// Commits the store's open group and adds what it held to the report.
    fn commit_group(&mut self) -> Result<(), IngestError> {
        let Some(u) = self.uncommitted.take() else { return Ok(()) };
        let keys_written = self.store.commit_group()?;
        let r = &mut *self.report;
        r.batches += u.batches;
        r.received += u.received;
        r.counted += u.counted;
        r.duplicates += u.duplicates;
        for (reason, n) in u.skipped {
            *r.skipped.entry(reason.as_str().to_string()).or_default() += n;
        }
        r.keys_written += u.keys_written + keys_written;
        Ok(())
    }

    fn quarantine_error(&self, e: std::io::Error) -> IngestError {
        IngestError::Quarantine { path: self.quarantine.path().display().to_string(), error: e }
    }

    /// Retries a busy store with backoff; any other failure stops ingest with the checkpoint
    /// where it was.
    fn apply_with_retry(&mut self, batch: &Batch) -> Result<crate::store::Applied, StoreError> {
        let mut delay = Duration::from_millis(50);
        let mut attempt = 0;
        loop {
            match self.store.apply_grouped(batch) {
                Err(e) if e.is_retryable() && attempt < 8 => {
                    attempt += 1;
                    tracing::warn!(attempt, error = %e, "store busy, retrying");
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                other => return other,
            }
        }
    }
}

/// The merger: gathers pieces into batches until the workers are done (or the committer
/// stops taking batches); returns the decode statistics of everything it merged.
fn merge_batches(
    rx: &crossbeam_channel::Receiver<Message>,
    batches: &crossbeam_channel::Sender<Merged>,
    settings: &Settings,
    mut max_hour: Option<EpochSeconds>,
) -> DecodeStats {
    let mut stats = DecodeStats::default();
    while let Ok(first) = rx.recv() {
        // Gather pieces into one batch until it is full or has waited long enough, so
        // counter writes scale with distinct keys rather than with files. Each piece is
        // merged as it arrives, so its memory is given back before the next comes.
        let deadline = Instant::now() + BATCH_WAIT;
        let mut merging = Merging::new(settings, max_hour);
        let mut next = Some(first);
        while let Some(m) = next.take() {
            merging.add(m, &mut stats);
            if merging.records >= settings.batch_records {
                break;
            }
            next = rx.recv_deadline(deadline).ok();
        }
        if batches.send(merging.finish(&mut max_hour)).is_err() {
            break;
        }
    }
    stats
}

/// A batch being merged from pieces. Records too old to check for duplicates (before the
/// dedup window, measured back from the newest hour merged before this batch) are set aside
/// for quarantine.
struct Merging {
    batch: Batch,
    window: EpochSeconds,
    horizon: Option<EpochSeconds>,
    /// Records offered so far (entries and rejects), to know when the batch is full.
    records: usize,
    checkpoints: Vec<CheckpointUpdate>,
    index: HashMap<String, usize>,
    rejected: Vec<(String, Rejected)>,
    failed: Vec<String>,
}

/// The most entries a batch allocates room for up front; a larger `batch_records` grows it.
const MAX_RESERVED_ENTRIES: usize = 1 << 20;

impl Merging {
    fn new(settings: &Settings, max_hour: Option<EpochSeconds>) -> Self {
        let window = settings.dedup_window;
        let horizon = max_hour.map(|h| h - window);
        let mut batch = Batch { prune_before: horizon, ..Batch::default() };
        // Sized once for a full batch and the piece that fills it: grown by doubling, it could
        // hold twice its records' memory. Pages never written are not resident.
        batch.entries.reserve_exact((settings.batch_records + settings.read.piece_records).min(MAX_RESERVED_ENTRIES));
        Merging {
            batch,
            window,
            horizon,
            records: 0,
            checkpoints: Vec::new(),
            index: HashMap::new(),
            rejected: Vec::new(),
            failed: Vec::new(),
        }
    }

    fn add(&mut self, m: Message, stats: &mut DecodeStats) {
        let mut piece = match m {
            Message::Piece(p) => p,
            Message::Failed(msg) => {
                self.failed.push(msg);
                return;
            }
        };
        self.records += piece.entries.len() + piece.rejects.len();
        let display = match piece.name.take() {
            Some(name) => name,
            None => piece.source.strip_prefix("file://").unwrap_or(&piece.source).to_string(),
        };
        let batch = &mut self.batch;
        batch.received += piece.received;
        stats.merge(&piece.stats);
        let mut sums = piece.sums;
        // Records too old to check for duplicates (rare: a late file, a clock far behind).
        if let Some(h) = self.horizon.filter(|&h| piece.entries.iter().any(|e| e.key.hour < h)) {
            let entries = std::mem::take(&mut piece.entries);
            let origins = std::mem::take(&mut piece.origins);
            for (entry, origin) in entries.into_iter().zip(origins) {
                if entry.key.hour >= h {
                    piece.entries.push(entry);
                    piece.origins.push(origin);
                    continue;
                }
                if let Some(u) = sums.get_mut(&entry.key) {
                    *u -= &entry.usage;
                    if u.requests == 0 {
                        sums.remove(&entry.key);
                    }
                }
                let detail = format!(
                    "record hour {} is more than {} days before the newest counted hour; it can no longer be checked for duplicates",
                    crate::ids::hour_label(entry.key.hour),
                    self.window / 86_400
                );
                self.rejected.push((
                    display.clone(),
                    Rejected::new(Reason::OutsideDedupWindow, detail, origin.line, origin.offset, b""),
                ));
            }
        }
        batch.entries.append(&mut piece.entries);
        let all = batch.sums.get_or_insert_with(Default::default);
        for (k, u) in sums {
            *all.entry(k).or_default() += &u;
        }
        self.rejected.extend(piece.rejects.into_iter().map(|r| (display.clone(), r)));
        match self.index.get(&piece.source) {
            Some(&i) => self.checkpoints[i].position = piece.position,
            None => {
                self.index.insert(piece.source.clone(), self.checkpoints.len());
                self.checkpoints.push(CheckpointUpdate {
                    source: piece.source,
                    expected: piece.expected,
                    position: piece.position,
                });
            }
        }
    }

    fn finish(self, max_hour: &mut Option<EpochSeconds>) -> Merged {
        let Merging { mut batch, checkpoints, rejected, failed, .. } = self;
        batch.checkpoints = checkpoints;
        for (_, r) in &rejected {
            *batch.skipped.entry(r.reason).or_default() += 1;
        }
        if let Some(max) = batch.entries.iter().map(|e| e.key.hour).max() {
            *max_hour = Some(max_hour.map_or(max, |h| h.max(max)));
        }
        Merged { batch, rejected, failed }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::lower_priority;

    fn nice_of_this_thread() -> i32 {
        // SAFETY: reads the calling thread's nice value (per thread on Linux); -1 is a valid
        // result, so errno is cleared first and checked after.
        unsafe {
            *libc::__errno_location() = 0;
            let n = libc::getpriority(libc::PRIO_PROCESS, 0);
            assert_eq!(*libc::__errno_location(), 0, "getpriority failed");
            n
        }
    }

    /// The committer must keep its priority while the workers lower theirs: were the nice
    /// value per process, lowering a worker would lower the committer (and the whole ingest)
    /// with it, and the serial stage would be no better off.
    #[test]
    fn a_worker_lowers_only_its_own_priority() {
        let before = nice_of_this_thread();
        let (in_worker, after_zero) = std::thread::spawn(move || {
            lower_priority(0);
            let after_zero = nice_of_this_thread();
            lower_priority(10);
            (nice_of_this_thread(), after_zero)
        })
        .join()
        .unwrap();
        assert_eq!(after_zero, before, "an increment of 0 leaves the priority alone");
        assert_eq!(in_worker, (before + 10).min(19), "the worker runs 10 lower (capped at 19)");
        assert_eq!(nice_of_this_thread(), before, "the spawning (committer) thread keeps its priority");
    }
}

#[cfg(test)]
mod commit_tests {
    use super::*;
    use crate::ids::{DedupKey, TenantId};
    use crate::progress::NoProgress;
    use crate::source::Origin;
    use crate::store::sqlite::SqliteStore;
    use crate::usage::{CounterKey, Entry, Resource, Usage};

    /// One record of `acme` on 2025-11-03 10:00 UTC, moving `file://f` from `expected` to
    /// `position`.
    fn piece(expected: Option<&str>, position: &str, request_id: &str) -> Piece {
        let entry = Entry {
            dedup: DedupKey::from_request_id(request_id),
            key: CounterKey {
                tenant: TenantId::new("acme").unwrap(),
                hour: 1_762_164_000,
                resource: Resource::new("m"),
            },
            usage: Usage { input: 3, requests: 1, ..Usage::default() },
        };
        let mut p = Piece {
            source: "file://f".into(),
            expected: expected.map(str::to_string),
            position: position.into(),
            entries: vec![entry],
            origins: vec![Origin { line: 1, offset: 0 }],
            received: 1,
            ..Piece::default()
        };
        p.finish();
        p
    }

    /// The SQLite store as a store without groups (as DynamoDB is): every batch commits as it
    /// is applied.
    struct OneByOne(SqliteStore);

    impl CounterStore for OneByOne {
        fn apply(&mut self, batch: &Batch) -> Result<crate::store::Applied, StoreError> {
            self.0.apply(batch)
        }
        fn checkpoints(&self) -> Result<HashMap<String, String>, StoreError> {
            self.0.checkpoints()
        }
        fn max_hour(&self) -> Result<Option<EpochSeconds>, StoreError> {
            self.0.max_hour()
        }
        fn period_usage(&self, tenant: &TenantId, month: &str) -> Result<crate::store::PeriodUsage, StoreError> {
            self.0.period_usage(tenant, month)
        }
        fn tenants(&self, month: &str) -> Result<Vec<(TenantId, Usage)>, StoreError> {
            self.0.tenants(month)
        }
        fn hours(&self, month: &str) -> Result<Vec<(CounterKey, Usage)>, StoreError> {
            self.0.hours(month)
        }
        fn totals(&self) -> Result<crate::store::IngestTotals, StoreError> {
            self.0.totals()
        }
    }

    /// Feeds two batches, the second with a stale checkpoint, through a committer over
    /// `store`; returns the run's error and report.
    fn run_with_a_refused_second_batch(
        store: &mut dyn CounterStore,
        dir: &std::path::Path,
    ) -> (IngestError, RunReport) {
        let mut settings = crate::config::Config::default().ingest_settings(false);
        settings.commit_interval = Duration::from_secs(60);
        let mut quarantine = Quarantine::new(dir.join("quarantine.jsonl"));
        let mut report = RunReport::default();
        let (tx, rx) = crossbeam_channel::bounded(4);
        let store_seen = std::thread::scope(|scope| {
            scope.spawn(move || {
                tx.send(Message::Piece(piece(None, "1", "r1"))).unwrap();
                // After the merger's wait, so the two pieces make two batches.
                std::thread::sleep(BATCH_WAIT * 2);
                tx.send(Message::Piece(piece(Some("0"), "2", "r2"))).unwrap();
            });
            let mut committer = Committer::new(store, &mut quarantine, &settings, &mut report).unwrap();
            committer.run(&rx, &AtomicU64::new(0), &NoProgress)
        });
        (store_seen.expect_err("the stale checkpoint stops the run"), report)
    }

    #[test]
    fn the_report_counts_what_was_committed_when_a_run_fails() {
        let dir = tempfile::tempdir().unwrap();
        // Grouped (SQLite): the refused batch takes the first one with it; nothing counted.
        let mut grouped = SqliteStore::open(&dir.path().join("grouped.db"), false).unwrap();
        let (e, report) = run_with_a_refused_second_batch(&mut grouped, dir.path());
        assert!(matches!(e, IngestError::Store(StoreError::ConditionFailed { .. })), "{e:?}");
        assert_eq!((report.received, report.counted, report.batches), (0, 0, 0));
        assert_eq!(grouped.totals().unwrap().counted, 0);
        assert!(grouped.checkpoints().unwrap().is_empty());
        // One transaction per batch: the first batch stays committed, and reported.
        let mut one_by_one = OneByOne(SqliteStore::open(&dir.path().join("one.db"), false).unwrap());
        let (e, report) = run_with_a_refused_second_batch(&mut one_by_one, dir.path());
        assert!(matches!(e, IngestError::Store(StoreError::ConditionFailed { .. })), "{e:?}");
        assert_eq!((report.received, report.counted, report.batches), (1, 1, 1));
        assert_eq!(one_by_one.totals().unwrap().counted, 1);
        assert_eq!(one_by_one.checkpoints().unwrap()["file://f"], "1");
    }

    #[test]
    fn an_open_group_commits_once_due_without_waiting_for_the_next_batch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tally.db");
        let mut store = SqliteStore::open(&path, false).unwrap();
        let mut settings = crate::config::Config::default().ingest_settings(false);
        settings.commit_interval = Duration::from_millis(200);
        settings.commit_records = 1_000_000;
        let mut quarantine = Quarantine::new(dir.path().join("quarantine.jsonl"));
        let mut report = RunReport::default();
        let (tx, rx) = crossbeam_channel::bounded(4);
        let path = &path;
        std::thread::scope(|scope| {
            let feeder = scope.spawn(move || {
                let reader = SqliteStore::open(path, false).unwrap();
                let seen =
                    || (reader.totals().unwrap().counted, reader.checkpoints().unwrap().get("file://f").cloned());
                tx.send(Message::Piece(piece(None, "1", "r1"))).unwrap();
                // The first batch is far below `commit_records` and the next one is not sent
                // until the first is visible: only the interval can commit it.
                let deadline = Instant::now() + Duration::from_secs(20);
                while seen() != (1, Some("1".to_string())) {
                    assert!(Instant::now() < deadline, "the open group was never committed: {:?}", seen());
                    std::thread::sleep(Duration::from_millis(20));
                }
                tx.send(Message::Piece(piece(Some("1"), "2", "r2"))).unwrap();
            });
            let mut committer = Committer::new(&mut store, &mut quarantine, &settings, &mut report).unwrap();
            committer.run(&rx, &AtomicU64::new(0), &NoProgress).unwrap();
            feeder.join().unwrap();
        });
        assert_eq!((report.received, report.counted, report.batches), (2, 2, 2));
        assert_eq!(store.totals().unwrap().counted, 2);
        assert_eq!(store.checkpoints().unwrap()["file://f"], "2");
        assert_eq!(store.period_usage(&TenantId::new("acme").unwrap(), "2025-11").unwrap().total.input, 6);
    }
}
