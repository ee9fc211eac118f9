//! The SQLite store against the `CounterStore` conformance suite, plus what only a real file
//! can show: data survives closing and reopening.

use crate::common;

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};

use common::conformance::{self as c, apply_ok, batch, cp, entry, snapshot};
use tally::quarantine::Reason;
use tally::store::sqlite::SqliteStore;
use tally::store::{Applied, CounterStore};
use tally::usage::Via;

fn in_memory() -> Box<dyn CounterStore> {
    Box::new(SqliteStore::in_memory().expect("in-memory store"))
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                c::$name(&in_memory);
            }
        )*
    };
}

conformance!(
    a_fresh_store_is_empty,
    apply_counts_every_field_and_rolls_up,
    costs_sum_exactly_as_decimals,
    counters_accumulate_across_batches,
    a_request_counted_before_is_a_duplicate,
    a_request_twice_in_one_batch_counts_once,
    applied_accounts_for_every_entry,
    dedup_keys_are_compared_exactly,
    replay_with_current_checkpoint_changes_no_counter,
    replay_with_stale_checkpoint_is_refused_and_writes_nothing,
    a_failed_condition_writes_nothing,
    checkpoints_round_trip,
    the_first_checkpoint_write_requires_none,
    totals_accumulate_across_batches,
    max_hour_is_the_newest_hour_applied,
    prune_forgets_dedup_entries_before_the_window,
    reads_are_isolated_by_tenant,
    month_and_day_boundaries_are_utc,
    an_empty_batch_moves_only_the_checkpoint,
    every_dimension_is_summed_and_rolls_up,
);

/// The whole suite once more on file-backed stores (WAL journal, real transactions on disk).
#[test]
fn conformance_suite_on_file_stores() {
    let dir = tempfile::tempdir().unwrap();
    let n = Cell::new(0u32);
    let factory = || -> Box<dyn CounterStore> {
        n.set(n.get() + 1);
        let path = dir.path().join(format!("store-{}", n.get())).join("tally.db");
        Box::new(SqliteStore::open(&path, false).expect("file store"))
    };
    c::run_all(&factory);
}

#[test]
fn data_survives_closing_and_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested").join("tally.db");
    let months = ["2025-11", "2025-12"];
    let tenants = ["acme", "globex"];
    let entries = vec![
        entry("acme", "2025-11-30T23:10:00Z", "m-haiku", "r1", 100, 10, "0.0000000875"),
        entry("acme", "2025-12-01T00:10:00Z", "m-haiku", "r2", 200, 20, "0.0000000875"),
        entry("globex", "2025-12-01T00:20:00Z", "m-sonnet", "r3", 300, 30, "0.1"),
    ];
    let before = {
        let mut s = SqliteStore::open(&path, false).unwrap();
        let mut b = batch(entries.clone(), vec![cp("src-a", None, "a1"), cp("src-b", None, "b1")]);
        b.received = 4;
        b.skipped = BTreeMap::from([(Reason::NonJson, 1)]);
        assert_eq!(apply_ok(&mut s, &b), Applied { counted: 3, duplicates: 0, keys_written: 3 });
        snapshot(&s, &months, &tenants)
        // `s` is dropped (closed) here.
    };
    assert!(path.exists());
    assert_eq!(before.counters.hours.iter().map(|(_, h)| h.len()).sum::<usize>(), 3);

    {
        let mut s = SqliteStore::open(&path, false).unwrap();
        assert_eq!(snapshot(&s, &months, &tenants), before, "reopening lost or changed data");
        assert_eq!(
            s.checkpoints().unwrap(),
            HashMap::from([("src-a".to_string(), "a1".to_string()), ("src-b".to_string(), "b1".to_string())])
        );
        // The dedup index survived too: replaying counts nothing; a stale checkpoint is refused.
        c::apply_refused(&mut s, &batch(entries.clone(), vec![cp("src-a", None, "a1")]), "src-a");
        let a = apply_ok(&mut s, &batch(entries.clone(), vec![cp("src-a", Some("a1"), "a2")]));
        assert_eq!(a, Applied { counted: 0, duplicates: 3, keys_written: 0 });
        assert_eq!(snapshot(&s, &months, &tenants).counters, before.counters);
        apply_ok(
            &mut s,
            &batch(vec![entry("acme", "2025-12-02T00:00:00Z", "m-haiku", "r4", 1, 1, "0.0000000001")], vec![]),
        );
    }

    // A full-sync reopen sees the second session's writes as well.
    let s = SqliteStore::open(&path, true).unwrap();
    assert_eq!(s.checkpoints().unwrap()["src-a"], "a2");
    assert_eq!(s.max_hour().unwrap(), Some(c::hour("2025-12-02T00:00:00Z")));
    let t = s.totals().unwrap();
    assert_eq!((t.received, t.counted, t.duplicates), (4 + 3 + 1, 4, 3));
    assert_eq!(t.skipped, BTreeMap::from([("non_json".to_string(), 1)]));
    let dec = s.period_usage(&c::tenant("acme"), "2025-12").unwrap();
    assert_eq!(dec.total.est_cost, c::dec("0.0000000876"));
    assert_eq!(dec.total.requests, 2);
    c::assert_rollups_match_hours(&s, "2025-11");
    c::assert_rollups_match_hours(&s, "2025-12");
}

/// How many runs `seen_runs` holds for `hour` and how many keys in all.
fn runs_of_hour(path: &std::path::Path, hour: i64) -> (i64, i64) {
    let db = rusqlite::Connection::open(path).unwrap();
    db.query_row(
        "SELECT count(*), coalesce(sum(length(keys)), 0) / 16 FROM seen_runs WHERE hour = ?1",
        [hour / 3600],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .unwrap()
}

#[test]
fn small_batches_in_one_hour_keep_few_dedup_runs_and_every_key() {
    // `--follow` commits a few records at a time: the hour's runs are merged as they come,
    // so a batch reads O(log n) runs, and no key is lost in a merge.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tally.db");
    let mut s = SqliteStore::open(&path, false).unwrap();
    let id = |n: usize| format!("req-{n}");
    for b in 0..300 {
        let entries =
            (0..5).map(|i| entry("acme", "2025-11-03T10:20:00Z", "m", &id(b * 5 + i), 1, 0, "0.01")).collect();
        assert_eq!(apply_ok(&mut s, &batch(entries, vec![])).counted, 5);
        let (runs, _) = runs_of_hour(&path, c::hour("2025-11-03T10:00:00Z"));
        assert!(runs <= 8, "after batch {b} the hour has {runs} runs");
    }
    assert_eq!(runs_of_hour(&path, c::hour("2025-11-03T10:00:00Z")).1, 1500);
    // Every id is still known, whichever run it ended up in; one new id is not.
    let mut replay: Vec<_> =
        (0..1500).step_by(7).map(|n| entry("acme", "2025-11-03T10:59:00Z", "m", &id(n), 1, 0, "0.01")).collect();
    let old = replay.len() as u64;
    replay.push(entry("acme", "2025-11-03T10:59:00Z", "m", "req-new", 1, 0, "0.01"));
    assert_eq!(apply_ok(&mut s, &batch(replay, vec![])), Applied { counted: 1, duplicates: old, keys_written: 1 });
    assert_eq!(s.period_usage(&c::tenant("acme"), "2025-11").unwrap().total.requests, 1501);
}

#[test]
fn a_schema_2_store_is_migrated_with_its_dedup_index() {
    // Stores written before the dedup runs kept one `seen` row per request id: opening one
    // converts them, and every id counted before is still a duplicate.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tally.db");
    let counted = [("r1", "2025-11-03T10:20:00Z"), ("r2", "2025-11-03T10:40:00Z"), ("r3", "2025-11-04T07:00:00Z")];
    drop(SqliteStore::open(&path, false).unwrap());
    {
        let db = rusqlite::Connection::open(&path).unwrap();
        db.execute_batch(
            "DROP TABLE seen_runs;
             CREATE TABLE seen (k1 INTEGER NOT NULL, k2 INTEGER NOT NULL, PRIMARY KEY (k1, k2)) WITHOUT ROWID;
             UPDATE meta SET value = '2' WHERE key = 'schema_version';",
        )
        .unwrap();
        for (request, at) in counted {
            let (k1, k2) = tally::store::sqlite::seen_key(c::hour(at), tally::ids::DedupKey::from_request_id(request));
            db.execute("INSERT INTO seen (k1, k2) VALUES (?1, ?2)", [k1, k2]).unwrap();
        }
    }
    let mut s = SqliteStore::open(&path, false).unwrap();
    let mut replay: Vec<_> = counted.iter().map(|(r, at)| entry("acme", at, "m", r, 1, 0, "0.01")).collect();
    replay.push(entry("acme", "2025-11-03T10:00:00Z", "m", "r4", 1, 0, "0.01"));
    assert_eq!(apply_ok(&mut s, &batch(replay, vec![])), Applied { counted: 1, duplicates: 3, keys_written: 1 });
    let db = rusqlite::Connection::open(&path).unwrap();
    let version: String =
        db.query_row("SELECT value FROM meta WHERE key = 'schema_version'", [], |r| r.get(0)).unwrap();
    assert_eq!(version, "5");
    let old_table: i64 =
        db.query_row("SELECT count(*) FROM sqlite_master WHERE name = 'seen'", [], |r| r.get(0)).unwrap();
    assert_eq!(old_table, 0, "the old table is dropped once converted");
}

#[test]
fn a_schema_3_store_keeps_its_hours_as_pool_and_then_counts_by_via() {
    // Schema 3's hourly counters had no `via`: opening one rebuilds the table, every hour
    // counted before is `pool`, and new usage decided by a silo account is a key of its own.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tally.db");
    {
        let mut s = SqliteStore::open(&path, false).unwrap();
        apply_ok(&mut s, &batch(vec![entry("acme", "2025-11-03T10:20:00Z", "m", "r1", 5, 2, "0.01")], vec![]));
    }
    {
        let db = rusqlite::Connection::open(&path).unwrap();
        db.execute_batch(
            "CREATE TABLE v3 (
                tenant TEXT NOT NULL, hour INTEGER NOT NULL, resource TEXT NOT NULL,
                input INTEGER NOT NULL, output INTEGER NOT NULL, cache_read INTEGER NOT NULL,
                cache_write INTEGER NOT NULL, requests INTEGER NOT NULL, errors INTEGER NOT NULL,
                no_usage INTEGER NOT NULL, est_cost TEXT NOT NULL,
                PRIMARY KEY (tenant, hour, resource)) WITHOUT ROWID;
             INSERT INTO v3 SELECT tenant, hour, resource, input, output, cache_read, cache_write, requests,
                errors, no_usage, est_cost FROM counters_hour;
             DROP TABLE counters_hour;
             ALTER TABLE v3 RENAME TO counters_hour;
             UPDATE meta SET value = '3' WHERE key = 'schema_version';",
        )
        .unwrap();
    }
    let mut s = SqliteStore::open(&path, false).unwrap();
    let mut silo = entry("acme", "2025-11-03T10:30:00Z", "m", "r2", 7, 1, "0.02");
    silo.key.via = Via::Account;
    apply_ok(&mut s, &batch(vec![silo], vec![]));
    let hours = s.hours("2025-11").unwrap();
    let got: Vec<(Via, u64)> = hours.iter().map(|(k, u)| (k.via, u.input)).collect();
    assert_eq!(got, [(Via::Pool, 5), (Via::Account, 7)], "one hour, one resource, two keys");
    assert_eq!(s.period_usage(&c::tenant("acme"), "2025-11").unwrap().total.input, 12, "meters sum over via");
    let db = rusqlite::Connection::open(&path).unwrap();
    let version: String =
        db.query_row("SELECT value FROM meta WHERE key = 'schema_version'", [], |r| r.get(0)).unwrap();
    assert_eq!(version, "5");
}

#[test]
fn a_group_is_invisible_until_it_commits_and_a_failure_rolls_all_of_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tally.db");
    let (months, tenants) = (["2025-11"], ["acme", "globex"]);
    let mut writer = SqliteStore::open(&path, false).unwrap();
    let reader = SqliteStore::open(&path, false).unwrap();
    let empty = snapshot(&reader, &months, &tenants);

    let b1 = batch(
        vec![
            entry("acme", "2025-11-03T10:05:00Z", "m", "r1", 100, 10, "0.25"),
            entry("globex", "2025-11-03T10:06:00Z", "m", "r2", 5, 1, "0.5"),
        ],
        vec![cp("src", None, "1")],
    );
    // r1 again (a duplicate of the group's first batch) and r3 on the same key as r1.
    let b2 = batch(
        vec![
            entry("acme", "2025-11-03T10:07:00Z", "m", "r1", 100, 10, "0.25"),
            entry("acme", "2025-11-03T10:08:00Z", "m", "r3", 1, 2, "0.125"),
        ],
        vec![cp("src", Some("1"), "2")],
    );
    assert_eq!(writer.apply_grouped(&b1).unwrap(), Applied { counted: 2, duplicates: 0, keys_written: 0 });
    assert_eq!(writer.apply_grouped(&b2).unwrap(), Applied { counted: 1, duplicates: 1, keys_written: 0 });
    assert_eq!(snapshot(&reader, &months, &tenants), empty, "another connection saw an uncommitted group");
    assert_eq!(writer.commit_group().unwrap(), 2, "two hourly keys, each written once");
    let committed = snapshot(&reader, &months, &tenants);
    assert_eq!(committed.checkpoints, BTreeMap::from([("src".to_string(), "2".to_string())]));
    let acme = reader.period_usage(&c::tenant("acme"), "2025-11").unwrap().total;
    assert_eq!((acme.requests, acme.input, acme.output, acme.est_cost), (2, 101, 12, c::dec("0.375")));
    assert_eq!((committed.totals.received, committed.totals.counted, committed.totals.duplicates), (4, 3, 1));
    assert_eq!(writer.commit_group().unwrap(), 0, "no group is open");

    // A group whose second batch is refused (its checkpoint is stale) leaves nothing of its
    // first batch either: not its counters, dedup keys, checkpoint or totals.
    let b3 = batch(vec![entry("acme", "2025-11-04T00:00:00Z", "m", "r4", 7, 7, "1")], vec![cp("src", Some("2"), "3")]);
    let stale =
        batch(vec![entry("globex", "2025-11-04T00:00:00Z", "m", "r5", 1, 1, "1")], vec![cp("src", Some("1"), "9")]);
    writer.apply_grouped(&b3).unwrap();
    match writer.apply_grouped(&stale) {
        Err(tally::store::StoreError::ConditionFailed { source_key, .. }) => assert_eq!(source_key, "src"),
        other => panic!("expected the stale checkpoint to be refused, got {other:?}"),
    }
    assert_eq!(writer.commit_group().unwrap(), 0, "the refused group is gone");
    assert_eq!(snapshot(&reader, &months, &tenants), committed);
    assert_eq!(snapshot(&writer, &months, &tenants), committed);
    // r4 was rolled back with its group, so it is new when it comes again.
    assert_eq!(apply_ok(&mut writer, &b3), Applied { counted: 1, duplicates: 0, keys_written: 1 });

    // An explicit rollback, and a store closed with a group open (a killed process), keep
    // nothing of the group.
    let b4 = batch(vec![entry("acme", "2025-11-05T00:00:00Z", "m", "r6", 1, 1, "1")], vec![cp("src", Some("3"), "4")]);
    writer.apply_grouped(&b4).unwrap();
    writer.rollback_group();
    let after_b3 = snapshot(&reader, &months, &tenants);
    assert_eq!(snapshot(&writer, &months, &tenants), after_b3);
    writer.apply_grouped(&b4).unwrap();
    drop(writer);
    let reopened = SqliteStore::open(&path, false).unwrap();
    assert_eq!(snapshot(&reopened, &months, &tenants), after_b3);
    assert_eq!(reopened.checkpoints().unwrap()["src"], "3");
}

/// The counter tables of schema 4, before the dimensions besides tokens: what a store written
/// by an earlier tally holds.
const SCHEMA_4_COUNTERS: &str = "
    CREATE TABLE counters_hour (
        tenant TEXT NOT NULL, hour INTEGER NOT NULL, resource TEXT NOT NULL, via TEXT NOT NULL DEFAULT 'pool',
        input INTEGER NOT NULL, output INTEGER NOT NULL, cache_read INTEGER NOT NULL,
        cache_write INTEGER NOT NULL, requests INTEGER NOT NULL, errors INTEGER NOT NULL,
        no_usage INTEGER NOT NULL, est_cost TEXT NOT NULL,
        PRIMARY KEY (tenant, hour, resource, via)) WITHOUT ROWID;
    CREATE TABLE counters_day (
        tenant TEXT NOT NULL, day TEXT NOT NULL, resource TEXT NOT NULL,
        input INTEGER NOT NULL, output INTEGER NOT NULL, cache_read INTEGER NOT NULL,
        cache_write INTEGER NOT NULL, requests INTEGER NOT NULL, errors INTEGER NOT NULL,
        no_usage INTEGER NOT NULL, est_cost TEXT NOT NULL,
        PRIMARY KEY (tenant, day, resource)) WITHOUT ROWID;
    CREATE TABLE counters_month (
        tenant TEXT NOT NULL, month TEXT NOT NULL, resource TEXT NOT NULL,
        input INTEGER NOT NULL, output INTEGER NOT NULL, cache_read INTEGER NOT NULL,
        cache_write INTEGER NOT NULL, requests INTEGER NOT NULL, errors INTEGER NOT NULL,
        no_usage INTEGER NOT NULL, est_cost TEXT NOT NULL,
        PRIMARY KEY (tenant, month, resource)) WITHOUT ROWID;";

#[test]
fn a_schema_4_store_gains_the_dimension_columns_and_keeps_its_counters() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tally.db");
    let old = entry("acme", "2025-11-03T10:20:00Z", "m", "r1", 5, 2, "0.01");
    {
        let mut s = SqliteStore::open(&path, false).unwrap();
        apply_ok(&mut s, &batch(vec![old.clone()], vec![cp("src", None, "1")]));
    }
    // The file as tally wrote it before schema 5: the same rows, tables without the columns.
    {
        let db = rusqlite::Connection::open(&path).unwrap();
        let copy = "tenant, input, output, cache_read, cache_write, requests, errors, no_usage, est_cost, resource";
        let mut sql = String::new();
        for (table, bucket) in [("counters_hour", "hour, via"), ("counters_day", "day"), ("counters_month", "month")] {
            sql += &format!("CREATE TABLE {table}_v5 AS SELECT {copy}, {bucket} FROM {table}; DROP TABLE {table};");
        }
        sql += SCHEMA_4_COUNTERS;
        for (table, bucket) in [("counters_hour", "hour, via"), ("counters_day", "day"), ("counters_month", "month")] {
            sql += &format!(
                "INSERT INTO {table} ({copy}, {bucket}) SELECT {copy}, {bucket} FROM {table}_v5; DROP TABLE {table}_v5;"
            );
        }
        sql += "UPDATE meta SET value = '4' WHERE key = 'schema_version';";
        db.execute_batch(&sql).unwrap();
        let columns: i64 = db
            .query_row("SELECT count(*) FROM pragma_table_info('counters_month') WHERE name = 'images'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(columns, 0, "the old file has no dimension columns");
    }
    let before = {
        let s = SqliteStore::open(&path, false).unwrap();
        s.period_usage(&c::tenant("acme"), "2025-11").unwrap()
    };
    assert_eq!(before.total, old.usage, "the old counters read back, the new sums 0");

    let mut s = SqliteStore::open(&path, false).unwrap();
    let mut new = entry("acme", "2025-11-03T10:40:00Z", "m", "r2", 1, 1, "0.02");
    (new.usage.images, new.usage.video_ms, new.usage.cache_write_1h, new.usage.cross_region) = (2, 6_000, 3, 1);
    new.usage.cache_write = 3;
    apply_ok(&mut s, &batch(vec![old.clone(), new.clone()], vec![cp("src", Some("1"), "2")]));
    let got = s.period_usage(&c::tenant("acme"), "2025-11").unwrap();
    let mut want = old.usage;
    want += &new.usage;
    assert_eq!(got.total, want, "r1 again is a duplicate; r2 adds every dimension");
    assert_eq!((got.total.images, got.total.video_ms, got.total.cache_write_1h), (2, 6_000, 3));
    c::assert_rollups_match_hours(&s, "2025-11");
    let db = rusqlite::Connection::open(&path).unwrap();
    let version: String =
        db.query_row("SELECT value FROM meta WHERE key = 'schema_version'", [], |r| r.get(0)).unwrap();
    assert_eq!(version, "5");
    for table in ["counters_hour", "counters_day", "counters_month"] {
        let n: i64 = db
            .query_row(
                &format!("SELECT count(*) FROM pragma_table_info('{table}') WHERE name IN ('images', 'video_ms', 'audio_ms', 'search_units', 'cache_write_1h', 'latency_optimized', 'cross_region')"),
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 7, "{table}");
    }
}
