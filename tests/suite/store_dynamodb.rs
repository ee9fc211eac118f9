//! The DynamoDB store on a real local DynamoDB API (moto server, started by
//! `tests/run-all.sh`): the conformance suite, batches too big for one transaction, a writer
//! stopped at every step of a split batch, throttling and 5xx on 10% of calls, a persistent
//! failure, `tally init`, and the SIGKILL test.
#![cfg(feature = "aws")]

use crate::common;
use crate::support;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::conformance::{self as c, apply_ok, batch, cp, entry, snapshot, Snapshot};
use support::aws::{self, dynamo_settings, dynamo_store, fresh_dynamo_store};
use support::proxy::FaultProxy;
use support::{kill, record};
use tally::generate::{self, Spec, Truth};
use tally::ids::{EpochSeconds, TenantId};
use tally::store::dynamodb::DynamoStore;
use tally::store::sqlite::SqliteStore;
use tally::store::{Applied, Batch, CounterStore, IngestTotals, PeriodUsage, StoreError, WriteStats};
use tally::usage::{CounterKey, Entry, Usage};

// The suite runs as two tests of every other check each: moto applies one DynamoDB request at
// a time for every test, and next to the SIGKILL test on a loaded machine the whole suite in
// one test came near the 5-minute limit.

#[test]
fn conformance_suite_on_dynamodb_part_1_of_2() {
    conformance_suite(1, 0);
}

#[test]
fn conformance_suite_on_dynamodb_part_2_of_2() {
    conformance_suite(1, 1);
}

/// With `shards = 3` each batch writes one shard and reads sum all three: the suite still holds.
#[test]
fn conformance_suite_with_sharded_counters_part_1_of_2() {
    conformance_suite(3, 0);
}

#[test]
fn conformance_suite_with_sharded_counters_part_2_of_2() {
    conformance_suite(3, 1);
}

/// Every other check of the conformance suite, from the `part`-th, on fresh tables with `shards`.
fn conformance_suite(shards: u32, part: usize) {
    let Some(ep) = aws::endpoint() else { return };
    let factory = || -> Box<dyn CounterStore> { Box::new(ReadsBetweenWrites::new(fresh_dynamo_store(&ep, shards).0)) };
    c::run_part(&factory, part, 2);
}

/// A DynamoDB store that answers a read it was asked before, with no write since, as it did
/// the first time. The conformance checks read a month several times between two writes (to
/// compare it with what they expect, then to check its roll-ups against it), and on DynamoDB
/// one month's hours or tenants are 16 directory queries plus one per tenant and shard, so many
/// of the suite's calls repeated a read. Every write, applied or refused, forgets them all:
/// each check still sees what the store answers after each of its writes.
struct ReadsBetweenWrites {
    store: DynamoStore,
    read: RefCell<Reads>,
}

/// The answers read since the last write, by what was asked.
#[derive(Default)]
struct Reads {
    checkpoints: Option<HashMap<String, String>>,
    max_hour: Option<Option<EpochSeconds>>,
    totals: Option<IngestTotals>,
    periods: HashMap<(TenantId, String), PeriodUsage>,
    tenants: HashMap<String, Vec<(TenantId, Usage)>>,
    hours: HashMap<String, Vec<(CounterKey, Usage)>>,
}

impl ReadsBetweenWrites {
    fn new(store: DynamoStore) -> Self {
        ReadsBetweenWrites { store, read: RefCell::default() }
    }

    /// What `slot` of the reads holds, else what `read` answers, kept there.
    fn remember<T: Clone>(
        &self,
        slot: impl Fn(&mut Reads) -> &mut Option<T>,
        read: impl FnOnce(&DynamoStore) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        if let Some(answer) = slot(&mut self.read.borrow_mut()) {
            return Ok(answer.clone());
        }
        let answer = read(&self.store)?;
        *slot(&mut self.read.borrow_mut()) = Some(answer.clone());
        Ok(answer)
    }

    /// What `slot` of the reads holds under `key`, else what `read` answers, kept there.
    fn remember_by<K: Eq + std::hash::Hash, T: Clone>(
        &self,
        slot: impl Fn(&mut Reads) -> &mut HashMap<K, T>,
        key: K,
        read: impl FnOnce(&DynamoStore) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        if let Some(answer) = slot(&mut self.read.borrow_mut()).get(&key) {
            return Ok(answer.clone());
        }
        let answer = read(&self.store)?;
        slot(&mut self.read.borrow_mut()).insert(key, answer.clone());
        Ok(answer)
    }
}

impl CounterStore for ReadsBetweenWrites {
    fn apply(&mut self, batch: &Batch) -> Result<Applied, StoreError> {
        *self.read.get_mut() = Reads::default();
        self.store.apply(batch)
    }

    fn checkpoints(&self) -> Result<HashMap<String, String>, StoreError> {
        self.remember(|r| &mut r.checkpoints, |s| s.checkpoints())
    }

    fn max_hour(&self) -> Result<Option<EpochSeconds>, StoreError> {
        self.remember(|r| &mut r.max_hour, |s| s.max_hour())
    }

    fn period_usage(&self, tenant: &TenantId, month: &str) -> Result<PeriodUsage, StoreError> {
        self.remember_by(|r| &mut r.periods, (tenant.clone(), month.to_string()), |s| s.period_usage(tenant, month))
    }

    fn tenants(&self, month: &str) -> Result<Vec<(TenantId, Usage)>, StoreError> {
        self.remember_by(|r| &mut r.tenants, month.to_string(), |s| s.tenants(month))
    }

    fn hours(&self, month: &str) -> Result<Vec<(CounterKey, Usage)>, StoreError> {
        self.remember_by(|r| &mut r.hours, month.to_string(), |s| s.hours(month))
    }

    fn totals(&self) -> Result<IngestTotals, StoreError> {
        self.remember(|r| &mut r.totals, |s| s.totals())
    }

    fn write_stats(&self) -> Option<WriteStats> {
        self.store.write_stats()
    }
}

const MONTHS: [&str; 2] = ["2025-11", "2025-12"];

/// A batch of `tenants` × `hours` × 2 resources × `per_key` records from 2025-11-30T20:00Z on
/// (so it crosses a day and a month), with every 13th record repeating an earlier request id.
fn big_batch(tenants: usize, hours: usize, per_key: usize, source: &str) -> (Batch, Vec<String>) {
    let mut entries: Vec<Entry> = Vec::new();
    let names: Vec<String> = (0..tenants).map(|t| format!("tenant-{t:02}")).collect();
    let start = c::hour("2025-11-30T20:00:00Z");
    for h in 0..hours {
        let at = tally::ids::utc(start + 3600 * h as i64).to_rfc3339();
        for t in &names {
            for m in ["m-haiku", "m-sonnet"] {
                for i in 0..per_key {
                    let n = entries.len();
                    let id = if n % 13 == 12 { format!("req-{}", n - 5) } else { format!("req-{n}") };
                    entries.push(entry(
                        t,
                        &at,
                        m,
                        &id,
                        10 + n as u64,
                        1 + (n % 7) as u64,
                        &format!("0.00000{}{}", n % 10, i),
                    ));
                }
            }
        }
    }
    (batch(entries, vec![cp(source, None, "end")]), names)
}

/// What SQLite, the reference backend, shows after the same batches.
fn reference(batches: &[&Batch], tenants: &[String]) -> Snapshot {
    let mut s = SqliteStore::in_memory().unwrap();
    for b in batches {
        apply_ok(&mut s, b);
    }
    let t: Vec<&str> = tenants.iter().map(String::as_str).collect();
    snapshot(&s, &MONTHS, &t)
}

fn snap(s: &dyn CounterStore, tenants: &[String]) -> Snapshot {
    let t: Vec<&str> = tenants.iter().map(String::as_str).collect();
    snapshot(s, &MONTHS, &t)
}

#[test]
fn a_batch_too_big_for_one_transaction_is_applied_exactly_once() {
    let Some(ep) = aws::endpoint() else { return };
    let (mut s, _) = fresh_dynamo_store(&ep, 1);
    let (b, tenants) = big_batch(12, 10, 2, "src");
    let a = apply_ok(&mut s, &b);
    assert_eq!(a.counted + a.duplicates, b.entries.len() as u64);
    let w = s.write_stats().unwrap();
    assert!(w.transactions > 5, "the batch should have needed several transactions, took {}", w.transactions);
    assert_eq!(snap(&s, &tenants), reference(&[&b], &tenants));

    // Replays: with the current checkpoint nothing is counted again; with the stale one the
    // whole batch is refused.
    let before = snap(&s, &tenants);
    let mut again = b.clone();
    again.checkpoints = vec![cp("src", Some("end"), "end-2")];
    let a2 = apply_ok(&mut s, &again);
    assert_eq!((a2.counted, a2.duplicates), (0, b.entries.len() as u64));
    assert_eq!(snap(&s, &tenants).counters, before.counters);
    let stale_before = snap(&s, &tenants);
    c::apply_refused(&mut s, &b, "src");
    assert_eq!(snap(&s, &tenants), stale_before, "a refused split batch wrote something");
}

/// The writer of a split batch loses DynamoDB after `k` calls, for every `k` from the first
/// call to the last: whatever it left is finished by the next writer (undone before the commit
/// point, redone after it), and applying the batch again from the position `checkpoints()`
/// reports gives exactly SQLite's counters and totals.
#[test]
fn a_writer_cut_off_at_any_call_of_a_split_batch_is_finished_by_the_next() {
    let Some(ep) = aws::endpoint() else { return };
    let (b, tenants) = big_batch(6, 6, 1, "src");
    let want = reference(&[&b], &tenants);

    // How many calls a whole apply makes.
    let counting = FaultProxy::start(&ep, 0, 1);
    let (_, table) = fresh_dynamo_store(&ep, 1);
    let mut s = dynamo_store(&counting.url, &table, 1);
    apply_ok(&mut s, &b);
    let calls = counting.forwarded.load(Ordering::Relaxed);
    assert!(s.write_stats().unwrap().transactions > 3, "the batch does not need several transactions");

    let step = (calls / 15).max(1);
    let mut undone = 0;
    let mut redone = 0;
    for k in (1..calls).step_by(step as usize) {
        let proxy = FaultProxy::start(&ep, 0, k);
        let (_, table) = fresh_dynamo_store(&ep, 1);
        let mut settings = dynamo_settings(&proxy.url, &table, 1);
        // Give up fast once the endpoint is gone, and hand over fast.
        settings.aws.max_attempts = Some(2);
        settings.lease = Duration::from_millis(400);
        let mut cut = DynamoStore::open(&settings).unwrap();
        // After k forwarded calls every call fails.
        let watch = {
            let (fwd, pct) = (proxy.forwarded.clone(), proxy.fault_percent.clone());
            std::thread::spawn(move || {
                while fwd.load(Ordering::Relaxed) < k {
                    std::thread::sleep(Duration::from_micros(200));
                }
                pct.store(100, Ordering::Relaxed);
            })
        };
        let result = cut.apply(&b);
        watch.join().unwrap();
        drop(cut);
        assert!(
            result.is_err() || proxy.injected.load(Ordering::Relaxed) == 0,
            "k={k}: apply succeeded through a dead endpoint"
        );

        // The next writer, after the first one's lease ran out.
        std::thread::sleep(Duration::from_millis(500));
        let mut next = dynamo_store(&ep, &table, 1);
        let positions = next.checkpoints().unwrap();
        match positions.get("src").map(String::as_str) {
            Some("end") => redone += 1,
            None => {
                undone += 1;
                apply_ok(&mut next, &b);
            }
            Some(other) => panic!("k={k}: checkpoint at {other:?}"),
        }
        assert_eq!(snap(&next, &tenants), want, "k={k} of {calls}: counters differ from the reference");
    }
    eprintln!("cut at {} points of {calls} calls: {undone} undone, {redone} redone", undone + redone);
    assert!(undone > 0 && redone > 0, "the cuts should land both before and after the commit point");
}

/// Generated records span this many hours: moto copies the whole table for every transaction
/// (to roll it back; see tests/moto_server.py), so a month of hourly counters and dedup buckets
/// would make each write slow.
const MOTO_HOURS: u64 = 24;

fn generated(dir: &std::path::Path, records: u64) -> (generate::Summary, Truth) {
    let spec = Spec {
        out: dir.join("gen"),
        tenants: 8,
        records,
        records_per_object: 300,
        duplicate_fraction: 0.02,
        hours: Some(MOTO_HOURS),
        ..Spec::default()
    };
    let summary = generate::generate(&spec).unwrap();
    let truth = serde_json::from_str(&std::fs::read_to_string(&summary.truth).unwrap()).unwrap();
    (summary, truth)
}

/// The generated config, with its store on DynamoDB at `endpoint` and small batches.
fn config_on(summary: &generate::Summary, endpoint: &str, table: &str, batch_records: usize) -> std::path::PathBuf {
    let text = std::fs::read_to_string(&summary.config)
        .unwrap()
        .replace("[store]\npath = \"tally.sqlite\"\n", &aws::store_section(endpoint, table))
        .replace("[ingest]\n", &format!("[ingest]\nbatch_records = {batch_records}\n"));
    let path = summary.config.with_file_name(format!("{table}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn tally_ingest(config: &std::path::Path, logs: &std::path::Path) -> std::process::Output {
    support::tally_bin()
        .arg("--config")
        .arg(config)
        .args(["-q", "ingest", "--json"])
        .arg(logs)
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

#[test]
fn throttling_and_500s_on_a_tenth_of_calls_leave_counters_exact() {
    let Some(ep) = aws::endpoint() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (summary, truth) = generated(dir.path(), 4_000);
    let proxy = FaultProxy::start(&ep, 10, 7);
    let (store, table) = fresh_dynamo_store(&ep, 1);
    let out = tally_ingest(&config_on(&summary, &proxy.url, &table, 400), &summary.logs);
    assert!(out.status.success(), "ingest failed: {}", String::from_utf8_lossy(&out.stderr));
    let injected = proxy.injected.load(Ordering::Relaxed);
    let forwarded = proxy.forwarded.load(Ordering::Relaxed);
    eprintln!("{injected} faults injected, {forwarded} calls forwarded");
    assert!(
        injected * 100 >= (injected + forwarded) * 5,
        "too few faults injected: {injected} of {}",
        injected + forwarded
    );
    assert_eq!(kill::counters(&store, "2025-11"), kill::sorted(truth.rows.clone()));
    let t = store.totals().unwrap();
    assert_eq!(
        (t.received, t.counted, t.duplicates, t.skipped),
        (truth.received, truth.counted, truth.duplicates, truth.skipped)
    );
}

#[test]
fn a_persistent_failure_stops_ingest_without_moving_the_checkpoint() {
    let Some(ep) = aws::endpoint() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (summary, truth) = generated(dir.path(), 1_000);
    let proxy = FaultProxy::start(&ep, 100, 3);
    let (store, table) = fresh_dynamo_store(&ep, 1);
    let config = config_on(&summary, &proxy.url, &table, 300);
    let out = tally_ingest(&config, &summary.logs);
    assert_eq!(out.status.code(), Some(1), "ingest should fail: {}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("dynamodb"), "the error should say what failed: {stderr}");
    assert!(store.checkpoints().unwrap().is_empty(), "a checkpoint moved");
    assert!(store.hours("2025-11").unwrap().is_empty(), "counters were written");

    // The endpoint recovers; the next run counts everything once.
    proxy.fault_percent.store(0, Ordering::Relaxed);
    let out = tally_ingest(&config, &summary.logs);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(kill::counters(&store, "2025-11"), kill::sorted(truth.rows));
}

#[test]
fn tally_init_creates_the_table_and_the_cli_runs_on_it() {
    let Some(ep) = aws::endpoint() else { return };
    let s = support::Scratch::new("");
    let table = aws::unique_name("tally-init");
    std::fs::write(&s.config_path, aws::store_section(&ep, &table)).unwrap();
    for _ in 0..2 {
        let out = s.tally().arg("init").output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stdout).contains(&table));
    }
    let r1 = record("11111111-2222-4333-8444-555555555555", "2025-11-03T10:00:05Z", "acme", 100, 20);
    let r2 = record("11111111-2222-4333-8444-666666666666", "2025-11-04T11:00:06Z", "acme", 7, 3);
    let logs = s.write("a.ndjson", format!("{r1}\n{r2}\n{r1}\n"));
    let out = s.tally().args(["ingest", "--json"]).arg(&logs).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((report["counted"].as_u64(), report["duplicates"].as_u64()), (Some(2), Some(1)));
    assert!(report["store_writes"]["write_requests"].as_u64().unwrap() > 0, "the run report counts DynamoDB writes");
    let out = s.tally().args(["meter", "acme", "--period", "2025-11", "--json"]).output().unwrap();
    let meter: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(meter["total"]["input"].as_u64(), Some(107));
    assert_eq!(meter["by_day"].as_object().unwrap().len(), 2);
    // A table that does not exist is reported as such.
    std::fs::write(&s.config_path, aws::store_section(&ep, "tally-no-such-table")).unwrap();
    let out = s.tally().args(["ingest"]).arg(&logs).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
}

/// DynamoDB tables, one per store name.
struct Dynamo {
    endpoint: String,
    made: RefCell<BTreeMap<String, String>>,
}

impl Dynamo {
    fn table(&self, name: &str) -> String {
        self.made
            .borrow_mut()
            .entry(name.to_string())
            .or_insert_with(|| {
                let (_, t) = fresh_dynamo_store(&self.endpoint, 1);
                t
            })
            .clone()
    }
}

impl kill::Backend for Dynamo {
    fn store_section(&self, name: &str) -> String {
        aws::store_section(&self.endpoint, &self.table(name))
    }
    fn open(&self, name: &str) -> Box<dyn CounterStore> {
        Box::new(dynamo_store(&self.endpoint, &self.table(name), 1))
    }
    fn hours(&self) -> Option<u64> {
        Some(MOTO_HOURS)
    }
}

#[test]
fn sigkill_at_random_points_then_restart_gives_exact_counters_on_dynamodb() {
    let Some(ep) = aws::endpoint() else { return };
    let dir = tempfile::tempdir().unwrap();
    let backend = Dynamo { endpoint: ep, made: RefCell::default() };
    // 3,000 records in batches of 375: the same 8 commits as 6,000 in 750s, so the kills land
    // before, between and inside commits as often, at half the DynamoDB writes per commit; 20
    // kills. It took 276 s of nextest's 300 s limit on a loaded 2-core machine at 6,000 and 30.
    kill::sigkill_at_random_points(&backend, dir.path(), 3_000, 375, 20);
}
