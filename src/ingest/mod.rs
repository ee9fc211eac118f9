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

mod commit;
mod inputs;
mod merge;
mod report;
mod settings;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::progress::Progress;
use crate::quarantine::Quarantine;
use crate::source::files::{self};
#[cfg(feature = "aws")]
use crate::source::{cloudwatch, s3};
use crate::source::{Decoder, Piece};
use crate::store::CounterStore;
use crate::usage::Metering;

use commit::Committer;
use inputs::Job;
use merge::Message;
use report::ReadTally;

pub use inputs::Inputs;
pub use report::{last_run_path, IngestError, LastRun, RunReport};
pub use settings::{IngestConfig, Pipeline, Settings};

/// What an ingest run counts into and with: the store, the pure pipeline and the settings,
/// the dead-letter file, the stop flag and where progress goes. [`run_once`], [`run_pass`] and
/// [`follow`] take it; what they read (paths or [`Inputs`]) is their own argument.
pub struct Run<'a> {
    /// The counter store: counters, checkpoints and dedup entries, written in one batch.
    pub store: &'a mut dyn CounterStore,
    /// Tenant resolution and prices, applied to every record.
    pub pipeline: &'a Pipeline,
    /// Batch sizes, workers, read limits and the poll interval.
    pub settings: &'a Settings,
    /// Where bad records go.
    pub quarantine: &'a mut Quarantine,
    /// Set (by a signal, or by the run itself on a failed commit) to stop reading; what was
    /// read is committed first.
    pub shutdown: &'a AtomicBool,
    /// Told the bytes to read and, as batches commit, the bytes and records done.
    pub progress: &'a dyn Progress,
}

/// Reads `paths` once: every file from its checkpoint to its current end.
pub fn run_once(paths: &[PathBuf], run: &mut Run<'_>) -> Result<RunReport, IngestError> {
    run_pass(&mut Inputs::paths(paths), run)
}

/// Reads every input once: files from their checkpoints to their current ends, S3 partitions'
/// new objects, log streams' new events.
pub fn run_pass(inputs: &mut Inputs, run: &mut Run<'_>) -> Result<RunReport, IngestError> {
    let (pipeline, settings, shutdown, progress) = (run.pipeline, run.settings, run.shutdown, run.progress);
    let (store, quarantine) = (&mut *run.store, &mut *run.quarantine);
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
                        tx.send(Message::Piece(Box::new(p))).is_ok()
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

/// Runs passes until `run.shutdown` is set, sleeping `run.settings.poll` between them. An AWS
/// input that cannot be listed for a while (after the SDK's retries) is tried again at the next
/// poll.
pub fn follow(inputs: &mut Inputs, run: &mut Run<'_>) -> Result<RunReport, IngestError> {
    let (settings, shutdown) = (run.settings, run.shutdown);
    let mut total = RunReport::default();
    while !shutdown.load(Ordering::Relaxed) {
        let pass = match run_pass(inputs, run) {
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
        let poll = settings.poll;
        let until = Instant::now() + poll;
        while Instant::now() < until && !shutdown.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50).min(poll));
        }
    }
    Ok(total)
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
