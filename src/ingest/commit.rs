//! The committer: applies merged batches to the store (grouped where the store groups them),
//! retries a busy store, writes the quarantine and keeps the report.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::ids::EpochSeconds;
use crate::progress::Progress;
use crate::quarantine::{Quarantine, Reason};
use crate::store::{Batch, CounterStore, StoreError};

use super::merge::{merge_batches, Merged, Message};
use super::report::{IngestError, RunReport};
use super::settings::Settings;

/// Quarantined records logged one by one per run; the rest are only in the quarantine file.
const LOGGED_REJECTS: u64 = 50;

/// Merges pieces into batches and applies them: a merger thread gathers the workers' pieces
/// into the next batch while this thread applies the previous one.
pub(super) struct Committer<'a> {
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

impl<'a> Committer<'a> {
    pub(super) fn new(
        store: &'a mut dyn CounterStore,
        quarantine: &'a mut Quarantine,
        settings: &'a Settings,
        report: &'a mut RunReport,
    ) -> Result<Self, StoreError> {
        let max_hour = store.max_hour()?;
        Ok(Committer { store, quarantine, settings, report, max_hour, logged: 0, uncommitted: None })
    }

    pub(super) fn run(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{DedupKey, TenantId};
    use crate::ingest::merge::BATCH_WAIT;
    use crate::progress::NoProgress;
    use crate::source::Origin;
    use crate::source::Piece;
    use crate::store::sqlite::SqliteStore;
    use crate::usage::{CounterKey, Entry, Resource, Usage, Via};
    use std::collections::HashMap;

    /// One record of `acme` on 2025-11-03 10:00 UTC, moving `file://f` from `expected` to
    /// `position`.
    fn piece(expected: Option<&str>, position: &str, request_id: &str) -> Piece {
        let entry = Entry {
            dedup: DedupKey::from_request_id(request_id),
            key: CounterKey {
                tenant: TenantId::new("acme").unwrap(),
                hour: 1_762_164_000,
                resource: Resource::new("m"),
                via: Via::Pool,
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
                tx.send(Message::Piece(Box::new(piece(None, "1", "r1")))).unwrap();
                // After the merger's wait, so the two pieces make two batches.
                std::thread::sleep(BATCH_WAIT * 2);
                tx.send(Message::Piece(Box::new(piece(Some("0"), "2", "r2")))).unwrap();
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
                tx.send(Message::Piece(Box::new(piece(None, "1", "r1")))).unwrap();
                // The first batch is far below `commit_records` and the next one is not sent
                // until the first is visible: only the interval can commit it.
                let deadline = Instant::now() + Duration::from_secs(20);
                while seen() != (1, Some("1".to_string())) {
                    assert!(Instant::now() < deadline, "the open group was never committed: {:?}", seen());
                    std::thread::sleep(Duration::from_millis(20));
                }
                tx.send(Message::Piece(Box::new(piece(Some("1"), "2", "r2")))).unwrap();
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
