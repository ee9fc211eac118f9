//! The merge step: the workers' pieces gathered into batches, in a thread of its own while
//! the committer applies the previous batch.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::ids::EpochSeconds;
use crate::quarantine::{Reason, Rejected};
use crate::source::{DecodeStats, Piece};
use crate::store::{Batch, CheckpointUpdate};

use super::settings::Settings;

pub(super) enum Message {
    Piece(Box<Piece>),
    Failed(String),
}

/// The longest a piece waits for others to share its batch.
pub(super) const BATCH_WAIT: Duration = Duration::from_millis(250);

/// One batch, merged and ready to apply, with what goes beside it.
pub(super) struct Merged {
    pub(super) batch: Batch,
    /// Records to quarantine, with the source they came from.
    pub(super) rejected: Vec<(String, Rejected)>,
    /// Inputs that could not be read.
    pub(super) failed: Vec<String>,
}

/// The merger: gathers pieces into batches until the workers are done (or the committer
/// stops taking batches); returns the decode statistics of everything it merged.
pub(super) fn merge_batches(
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
            Message::Piece(p) => *p,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::ids::{DedupKey, TenantId};
    use crate::source::Origin;
    use crate::usage::{aggregate, CounterKey, Entry, Resource, Usage, Via};

    const HOUR: EpochSeconds = 1_762_164_000; // 2025-11-03 10:00 UTC

    /// A piece of `source` from `expected` to `position` with one record per (request id, hour,
    /// input tokens), and `bad` quarantined lines.
    fn piece(
        source: &str,
        expected: Option<&str>,
        position: &str,
        records: &[(&str, EpochSeconds, u64)],
        bad: usize,
    ) -> Piece {
        let mut p = Piece {
            source: source.into(),
            expected: expected.map(str::to_string),
            position: position.into(),
            received: (records.len() + bad) as u64,
            ..Piece::default()
        };
        for (i, (id, hour, input)) in records.iter().enumerate() {
            p.entries.push(Entry {
                dedup: DedupKey::from_request_id(id),
                key: CounterKey {
                    tenant: TenantId::new("acme").unwrap(),
                    hour: *hour,
                    resource: Resource::new("m"),
                    via: Via::Pool,
                },
                usage: Usage { input: *input, requests: 1, ..Usage::default() },
            });
            p.origins.push(Origin { line: i as u64 + 1, offset: 0 });
        }
        for i in 0..bad {
            p.rejects.push(Rejected::new(Reason::MalformedJson, "cut", (records.len() + i) as u64 + 1, 0, b"{"));
        }
        p.finish();
        p
    }

    fn merge(
        settings: &Settings,
        max_hour: Option<EpochSeconds>,
        messages: Vec<Message>,
    ) -> (Merged, Option<EpochSeconds>) {
        let mut merging = Merging::new(settings, max_hour);
        let mut stats = DecodeStats::default();
        for m in messages {
            merging.add(m, &mut stats);
        }
        let mut max = max_hour;
        (merging.finish(&mut max), max)
    }

    #[test]
    fn pieces_of_several_sources_become_one_batch_with_one_checkpoint_each() {
        let settings = Config::default().ingest_settings(false);
        let (merged, max) = merge(
            &settings,
            None,
            vec![
                Message::Piece(Box::new(piece("file://a", None, "a@1", &[("r1", HOUR, 3)], 1))),
                Message::Piece(Box::new(piece("file://b", Some("b@0"), "b@5", &[("r2", HOUR + 3600, 4)], 0))),
                Message::Piece(Box::new(piece("file://a", Some("a@1"), "a@2", &[("r3", HOUR, 5)], 0))),
                Message::Failed("c: permission denied".into()),
            ],
        );
        let b = &merged.batch;
        assert_eq!((b.entries.len(), b.received), (3, 4));
        let moves: Vec<_> =
            b.checkpoints.iter().map(|c| (c.source.as_str(), c.expected.as_deref(), c.position.as_str())).collect();
        assert_eq!(
            moves,
            [("file://a", None, "a@2"), ("file://b", Some("b@0"), "b@5")],
            "first expected, last position"
        );
        let sums: std::collections::BTreeMap<_, _> = b.sums.clone().unwrap().into_iter().collect();
        assert_eq!(
            sums,
            aggregate(b.entries.iter().map(|e| (&e.key, &e.usage))),
            "the pieces' sums add up to the entries'"
        );
        assert_eq!(b.skipped.get(&Reason::MalformedJson), Some(&1));
        assert_eq!((merged.rejected.len(), merged.rejected[0].0.as_str()), (1, "a"));
        assert_eq!(merged.failed, ["c: permission denied"]);
        assert_eq!(max, Some(HOUR + 3600), "the newest hour merged");
    }

    #[test]
    fn a_record_before_the_dedup_window_is_set_aside_and_its_usage_taken_out() {
        let settings = Config::default().ingest_settings(false);
        let newest = HOUR + 40 * 86_400;
        let old = HOUR;
        let (merged, max) = merge(
            &settings,
            Some(newest),
            vec![Message::Piece(Box::new(piece("file://a", None, "a@2", &[("old", old, 7), ("new", newest, 2)], 0)))],
        );
        let b = &merged.batch;
        assert_eq!(b.entries.len(), 1);
        assert_eq!(b.prune_before, Some(newest - settings.dedup_window));
        let sums: std::collections::BTreeMap<_, _> = b.sums.clone().unwrap().into_iter().collect();
        assert_eq!(
            sums,
            aggregate(b.entries.iter().map(|e| (&e.key, &e.usage))),
            "the old record's tokens are not in the sums"
        );
        assert_eq!(b.skipped.get(&Reason::OutsideDedupWindow), Some(&1));
        assert_eq!(merged.rejected[0].1.line, 1);
        assert_eq!(max, Some(newest));
    }
}
