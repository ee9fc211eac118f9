//! The embedded SQLite counter store, the default backend: one file, no service.
//!
//! # Tables
//!
//! | table | key | holds |
//! |---|---|---|
//! | `counters_hour` | tenant, hour (epoch s, UTC), resource, via (`pool`, `identity`, `account`: how the tenant was decided) | input, output, cache_read, cache_write, requests, errors, no_usage, est_cost (decimal text), images, video_ms, audio_ms, search_units, cache_write_1h, latency_optimized, cross_region |
//! | `counters_day` | tenant, day `YYYY-MM-DD`, resource | the same sums |
//! | `counters_month` | tenant, month `YYYY-MM`, resource | the same sums ("tenant X this month" is one range read) |
//! | `seen_runs` | hour (hours since the epoch) | the dedup index: sorted runs of 16-byte request-id keys |
//! | `checkpoints` | source | position (versioned JSON) |
//! | `skipped`, `totals` | reason / name | lifetime ingest accounting |
//! | `meta` | key | `schema_version`, `max_hour` (the newest hour counted) |
//!
//! The dedup index keeps, per UTC hour, sorted runs of [`seen_key`]s (104 bits of the request
//! id's 128-bit key). A batch reads the runs of the hours it touches, finds its keys by binary
//! search and adds its new keys as one run, merged into the runs before it while they are less
//! than `RUN_FANOUT` (4) times larger, so an hour keeps O(log n) runs. Stores of schema 2 (one
//! `seen` row per key) are converted when first opened.
//!
//! The counts after `est_cost` (the dimensions besides tokens, [`Usage`]) came with schema 5:
//! a store without them gains them on opening (`ALTER TABLE … ADD COLUMN … DEFAULT 0`, see
//! [`add_dimension_columns`]), its counters unchanged and the new sums 0.
//!
//! # Transactions
//!
//! A [`Batch`], or a group of them ([`CounterStore::apply_grouped`]), is one `BEGIN IMMEDIATE`
//! transaction. Ingest hands the store batches (`ingest.batch_records`, by default 20,000
//! records on SQLite), their usage pre-summed per key so that writes scale with distinct keys,
//! not records. The batches go into one open transaction until it holds `ingest.commit_records`
//! records (default 100,000) or has been open `ingest.commit_seconds` (default 1 s); the
//! transaction then commits, at once, every batch's counter deltas, new dedup entries, skip
//! counts, totals and checkpoints. Duplicates are found batch by batch inside the open
//! transaction, so a request id twice in one transaction counts once; the counters are summed
//! over the batches and written when the sums reach `GROUP_KEYS` (8,192) keys and at the
//! commit, so a key that several batches touch is written once or a few times and the sums stay
//! under ~2 MB. Nothing of a transaction is visible to readers, or survives a kill, before its
//! commit; a failure rolls all of it back, with the checkpoints, so the next run reads those
//! batches again. The live meters therefore lag a busy ingester by at most `commit_seconds`; a
//! `--follow` pass also commits when it ends.
//!
//! Costs are decimal text, summed exactly by the `dec_add` function this module registers,
//! never as floats; counts are summed by `int_add`, which refuses a sum past 2⁶³ − 1 (the batch
//! fails with `counter overflow` and nothing of it is written) where SQLite's `+` would turn it
//! into an inexact float.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::str::FromStr;

use rusqlite::functions::FunctionFlags;
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use rust_decimal::Decimal;

use super::{month_range, Applied, Batch, CounterStore, IngestTotals, PeriodUsage, StoreError};
use crate::ids::{DedupKey, EpochSeconds, TenantId};
use crate::usage::{rollup_days_and_months, CounterKey, Entry, Resource, Sums, Usage, Via};

/// 3: the dedup index is `seen_runs` (one row per key in `seen` before; [`migrate_seen`]).
/// 4: hourly counters are keyed by `via` too ([`migrate_via`]).
/// 5: the counters sum the dimensions besides tokens too ([`add_dimension_columns`]).
const SCHEMA_VERSION: &str = "5";

/// The tables that are not counters.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS seen_runs (id INTEGER PRIMARY KEY, hour INTEGER NOT NULL, keys BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS seen_runs_by_hour ON seen_runs (hour);
CREATE TABLE IF NOT EXISTS checkpoints (source TEXT PRIMARY KEY, position TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS skipped (reason TEXT PRIMARY KEY, count INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS totals (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
-- Stores of schema 2 had an index by hour that no reader uses any more; it doubled the cost
-- of every new hourly key.
DROP INDEX IF EXISTS counters_hour_by_hour;
";

/// The three counter tables: (table, bucket column, bucket type).
const COUNTER_TABLES: [(&str, &str, &str); 3] =
    [("counters_hour", "hour", "INTEGER"), ("counters_day", "day", "TEXT"), ("counters_month", "month", "TEXT")];

/// The key columns of a counter table: the hourly one also keeps `via`.
fn key_columns(bucket: &str) -> String {
    if bucket == "hour" {
        "tenant, hour, resource, via".to_string()
    } else {
        format!("tenant, {bucket}, resource")
    }
}

fn counter_table_sql(table: &str, bucket: &str, ty: &str) -> String {
    let via = if bucket == "hour" { "via TEXT NOT NULL DEFAULT 'pool'," } else { "" };
    let key = key_columns(bucket);
    format!(
        "CREATE TABLE IF NOT EXISTS {table} (
            tenant TEXT NOT NULL, {bucket} {ty} NOT NULL, resource TEXT NOT NULL, {via}
            input INTEGER NOT NULL, output INTEGER NOT NULL, cache_read INTEGER NOT NULL,
            cache_write INTEGER NOT NULL, requests INTEGER NOT NULL, errors INTEGER NOT NULL,
            no_usage INTEGER NOT NULL, est_cost TEXT NOT NULL, {dimensions},
            PRIMARY KEY ({key})) WITHOUT ROWID;",
        dimensions = DIMENSION_COLUMNS.map(|c| format!("{c} INTEGER NOT NULL DEFAULT 0")).join(", "),
    )
}

/// The counts of schema 5 on ([`Usage::COUNTS`] after the first seven).
const DIMENSION_COLUMNS: [&str; 7] =
    ["images", "video_ms", "audio_ms", "search_units", "cache_write_1h", "latency_optimized", "cross_region"];

/// The sums of a counter row, as [`SqliteStore::usage_row`] reads them: the first seven of
/// [`Usage::COUNTS`], `est_cost`, then [`DIMENSION_COLUMNS`].
const COLUMNS: &str = "input, output, cache_read, cache_write, requests, errors, no_usage, est_cost, \
                       images, video_ms, audio_ms, search_units, cache_write_1h, latency_optimized, cross_region";

/// Keys per multi-row counter upsert (19 parameters each, far below SQLite's limit).
const UPSERT_ROWS: usize = 32;

/// Schema 4 → 5: each counter table gains the columns of [`DIMENSION_COLUMNS`] it lacks, 0 in
/// every row already counted. Run on every opening (a few catalog reads), so a store is
/// complete whatever migration ran before; in one transaction, so a store is either migrated
/// or left as it was.
fn add_dimension_columns(conn: &Connection) -> Result<(), StoreError> {
    let tx = Transaction::new_unchecked(conn, rusqlite::TransactionBehavior::Immediate).map_err(backend)?;
    for (table, _, _) in COUNTER_TABLES {
        let mut st = tx.prepare(&format!("SELECT name FROM pragma_table_info('{table}')")).map_err(backend)?;
        let have: Vec<String> =
            st.query_map([], |r| r.get(0)).map_err(backend)?.collect::<rusqlite::Result<_>>().map_err(backend)?;
        for column in DIMENSION_COLUMNS.iter().filter(|c| !have.iter().any(|h| h == *c)) {
            tx.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} INTEGER NOT NULL DEFAULT 0"))
                .map_err(backend)?;
        }
    }
    tx.execute("UPDATE meta SET value = ?1 WHERE key = 'schema_version'", [SCHEMA_VERSION]).map_err(backend)?;
    tx.commit().map_err(backend)
}

/// The dedup key of a record as two integers: `k1` is the hour number (hours since the epoch,
/// 21 bits, good until 2209) over the top 42 bits of the request id key, `k2` the next 63
/// bits. A UUID has 122 random bits; the 104 of them kept here make a collision between two ids
/// in the dedup window a ~n²/2¹⁰⁵ event (below 10⁻¹³ for a billion ids). Stored big-endian as
/// 16 bytes in the runs of `seen_runs` (see [`RunKey`]), so byte order is (hour, key) order.
pub fn seen_key(hour: EpochSeconds, dedup: DedupKey) -> (i64, i64) {
    let v = dedup.as_u128();
    let hi = (v >> 64) as u64;
    let lo = v as u64;
    let hour_no = hour.div_euclid(3600).clamp(0, (1 << 21) - 1);
    ((hour_no << 42) | (hi >> 22) as i64, (lo & (i64::MAX as u64)) as i64)
}

/// A record's key in a run of `seen_runs`: [`seen_key`]'s two integers, big-endian.
pub type RunKey = [u8; 16];

fn run_key(k1: i64, k2: i64) -> RunKey {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&k1.to_be_bytes());
    key[8..].copy_from_slice(&k2.to_be_bytes());
    key
}

/// The hour number `seen_runs` files a [`seen_key`] under.
fn run_hour(k1: i64) -> i64 {
    k1 >> 42
}

/// A run is merged with the one before it once it holds at least 1/`RUN_FANOUT` as many keys,
/// so an hour has O(log n) runs and a key is rewritten O(log n) times, however small the
/// batches that bring them (`--follow`).
const RUN_FANOUT: usize = 4;

/// Whether the sorted run `run` (16-byte keys) holds `key`.
fn run_contains(run: &[u8], key: &RunKey) -> bool {
    let (mut lo, mut hi) = (0, run.len() / 16);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match run[mid * 16..mid * 16 + 16].cmp(&key[..]) {
            std::cmp::Ordering::Less => lo = mid + 1,
            std::cmp::Ordering::Greater => hi = mid,
            std::cmp::Ordering::Equal => return true,
        }
    }
    false
}

/// Two sorted runs with no key in common, as one.
fn merge_runs(a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut a, mut b) = (a.chunks_exact(16).peekable(), b.chunks_exact(16).peekable());
    while let (Some(x), Some(y)) = (a.peek(), b.peek()) {
        if x <= y {
            out.extend_from_slice(a.next().expect("peeked"));
        } else {
            out.extend_from_slice(b.next().expect("peeked"));
        }
    }
    a.for_each(|x| out.extend_from_slice(x));
    b.for_each(|y| out.extend_from_slice(y));
    out
}

/// Checks a batch's request ids against the dedup index and adds the new ones; returns the
/// indices of the entries that are duplicates. Of two entries with one request id in the batch,
/// the first is counted.
///
/// The index holds, per UTC hour, sorted runs of keys (one row each). A batch reads the runs
/// of the hours it touches, finds its duplicates by binary search and writes its new keys of
/// each hour as one run, merging it into the runs before it while they are not much larger
/// (see [`RUN_FANOUT`]). That is a few statements per hour instead of one B-tree insert per
/// record, the ingest's largest write cost before.
fn dedup(tx: &Connection, entries: &[Entry]) -> Result<Vec<usize>, StoreError> {
    let mut keyed: Vec<(RunKey, usize)> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let (k1, k2) = seen_key(e.key.hour, e.dedup);
            (run_key(k1, k2), i)
        })
        .collect();
    // By key, then batch order (the index): of equal keys the first read is the one counted.
    // The pairs are unique, so the unstable sort gives that one order, without scratch space.
    keyed.sort_unstable();
    let mut runs_of =
        tx.prepare_cached("SELECT id, keys FROM seen_runs WHERE hour = ?1 ORDER BY id").map_err(backend)?;
    let mut insert = tx.prepare_cached("INSERT INTO seen_runs (hour, keys) VALUES (?1, ?2)").map_err(backend)?;
    let mut delete = tx.prepare_cached("DELETE FROM seen_runs WHERE id = ?1").map_err(backend)?;
    let mut duplicates = Vec::new();
    let hour_of = |k: &RunKey| run_hour(i64::from_be_bytes(k[..8].try_into().expect("8 bytes")));
    for group in keyed.chunk_by(|a, b| hour_of(&a.0) == hour_of(&b.0)) {
        let hour = hour_of(&group[0].0);
        let runs: Vec<(i64, Vec<u8>)> = runs_of
            .query_map([hour], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(backend)?
            .collect::<Result<_, _>>()
            .map_err(backend)?;
        if let Some((id, _)) = runs.iter().find(|(_, keys)| keys.len() % 16 != 0) {
            return Err(StoreError::Invalid(format!("seen_runs row {id} is not a run of 16-byte keys")));
        }
        let mut fresh: Vec<u8> = Vec::with_capacity(group.len() * 16);
        let mut previous: Option<&RunKey> = None;
        for (key, i) in group {
            if previous == Some(key) || runs.iter().any(|(_, run)| run_contains(run, key)) {
                duplicates.push(*i);
            } else {
                fresh.extend_from_slice(key);
            }
            previous = Some(key);
        }
        if fresh.is_empty() {
            continue;
        }
        let mut run = fresh;
        let mut older = runs;
        while older.last().is_some_and(|(_, below)| run.len() * RUN_FANOUT >= below.len()) {
            let (id, below) = older.pop().expect("checked");
            run = merge_runs(&below, &run);
            delete.execute([id]).map_err(backend)?;
        }
        insert.execute(params![hour, run]).map_err(backend)?;
    }
    Ok(duplicates)
}

/// Schema 2 → 3: the one-row-per-key `seen` table becomes one run per hour in `seen_runs`.
/// In one transaction, so a store is either migrated or left as it was.
fn migrate_seen(conn: &Connection) -> Result<(), StoreError> {
    let tx = Transaction::new_unchecked(conn, rusqlite::TransactionBehavior::Immediate).map_err(backend)?;
    let version: Option<String> = tx
        .query_row("SELECT value FROM meta WHERE key = 'schema_version'", [], |r| r.get(0))
        .optional()
        .map_err(backend)?;
    let has_seen: bool = tx
        .query_row("SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'seen'", [], |r| r.get(0))
        .map_err(backend)?;
    if version.as_deref() == Some("2") && has_seen {
        let mut read = tx.prepare("SELECT k1, k2 FROM seen ORDER BY k1, k2").map_err(backend)?;
        let mut insert = tx.prepare("INSERT INTO seen_runs (hour, keys) VALUES (?1, ?2)").map_err(backend)?;
        let mut rows = read.query([]).map_err(backend)?;
        let mut current: Option<(i64, Vec<u8>)> = None;
        while let Some(row) = rows.next().map_err(backend)? {
            let (k1, k2): (i64, i64) = (row.get(0).map_err(backend)?, row.get(1).map_err(backend)?);
            let hour = run_hour(k1);
            if current.as_ref().is_some_and(|(h, _)| *h != hour) {
                let (h, keys) = current.take().expect("checked");
                insert.execute(params![h, keys]).map_err(backend)?;
            }
            current.get_or_insert_with(|| (hour, Vec::new())).1.extend_from_slice(&run_key(k1, k2));
        }
        if let Some((h, keys)) = current {
            insert.execute(params![h, keys]).map_err(backend)?;
        }
        drop(rows);
        drop((read, insert));
        tx.execute_batch("DROP TABLE seen").map_err(backend)?;
    }
    if version.as_deref() == Some("2") {
        tx.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'", []).map_err(backend)?;
    }
    tx.commit().map_err(backend)
}

/// Schema 3 → 4: `counters_hour` gains `via` in its key; every hour counted before is `pool`
/// (before schema 4 no tenant was decided by a silo account, and usage decided by the identity
/// rule was split like any other). In one transaction, so a store is either migrated or left
/// as it was.
fn migrate_via(conn: &Connection) -> Result<(), StoreError> {
    // The columns of schema 3, named so that later columns (with defaults) do not break this.
    const V3: &str =
        "tenant, hour, resource, input, output, cache_read, cache_write, requests, errors, no_usage, est_cost";
    let tx = Transaction::new_unchecked(conn, rusqlite::TransactionBehavior::Immediate).map_err(backend)?;
    let has_via: bool = tx
        .query_row("SELECT count(*) > 0 FROM pragma_table_info('counters_hour') WHERE name = 'via'", [], |r| r.get(0))
        .map_err(backend)?;
    if !has_via {
        tx.execute_batch(&format!(
            "ALTER TABLE counters_hour RENAME TO counters_hour_v3;
             {create}
             INSERT INTO counters_hour ({V3}, via) SELECT {V3}, 'pool' FROM counters_hour_v3;
             DROP TABLE counters_hour_v3;",
            create = counter_table_sql("counters_hour", "hour", "INTEGER"),
        ))
        .map_err(backend)?;
    }
    tx.execute("UPDATE meta SET value = ?1 WHERE key = 'schema_version'", [SCHEMA_VERSION]).map_err(backend)?;
    tx.commit().map_err(backend)
}

/// The SQLite backend.
pub struct SqliteStore {
    conn: Connection,
    /// The open group: its transaction is open on `conn`.
    group: Option<Group>,
    /// The last group's map, emptied, for the next: grown once to a group's keys rather
    /// than by doubling in every group.
    spare: Sums,
}

/// What an open group has applied and not yet written: the counted usage per hourly key,
/// summed over its batches. Dedup runs, checkpoints and totals are written batch by batch;
/// the counters when the sums reach [`GROUP_KEYS`] keys and at commit, so a key that several
/// batches touch is written once or a few times, and the sums' memory stays bounded however
/// large the group.
struct Group {
    sums: Sums,
    batches: usize,
    /// Hourly keys written by the group so far.
    keys_written: u64,
}

/// Hourly keys a group sums before it writes them into the open transaction (about 1.5 MB
/// of sums).
const GROUP_KEYS: usize = 8_192;

/// An error that abandoned a group holding `earlier` batches besides the one the caller could
/// retry: not retryable, as retrying would drop them.
fn group_lost(e: StoreError, earlier: usize) -> StoreError {
    if earlier == 0 || !e.is_retryable() {
        return e;
    }
    StoreError::Backend(format!("{e}; the transaction, with {earlier} earlier batches, was rolled back").into())
}

fn backend(e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => StoreError::Busy(Box::new(e)),
        _ => StoreError::Backend(Box::new(e)),
    }
}

/// `int_add(a, b)`: the counter upsert's integer sum, refused when it would pass SQLite's
/// 64-bit range (SQLite's own `+` silently turns such a sum into an inexact float).
fn int_add(ctx: &rusqlite::functions::Context<'_>) -> rusqlite::Result<i64> {
    let (a, b): (i64, i64) = (ctx.get(0)?, ctx.get(1)?);
    a.checked_add(b).ok_or_else(|| {
        rusqlite::Error::UserFunctionError(format!("counter overflow: {a} + {b} passes 2^63 - 1").into())
    })
}

fn dec_add(ctx: &rusqlite::functions::Context<'_>) -> rusqlite::Result<String> {
    let parse = |i: usize| -> rusqlite::Result<Decimal> {
        // Borrowed from SQLite's value, not copied: this runs for every counter key updated.
        let s = ctx.get_raw(i).as_str().map_err(|e| rusqlite::Error::UserFunctionError(Box::new(e)))?;
        Decimal::from_str(s).map_err(|e| rusqlite::Error::UserFunctionError(Box::new(e)))
    };
    let sum = parse(0)?
        .checked_add(parse(1)?)
        .ok_or_else(|| rusqlite::Error::UserFunctionError("decimal overflow in dec_add".into()))?;
    Ok(sum.normalize().to_string())
}

impl SqliteStore {
    /// Opens (creating if needed) the store at `path`. `full_sync` makes every commit survive
    /// a power cut, not just a killed process.
    pub fn open(path: &Path, full_sync: bool) -> Result<SqliteStore, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Unavailable(format!("cannot create {}: {e}", dir.display())))?;
        }
        let conn = Connection::open(path)
            .map_err(|e| StoreError::Unavailable(format!("cannot open {}: {e}", path.display())))?;
        Self::init(conn, full_sync)
    }

    /// Caps this connection's page cache at `kib` KiB (a reader of `tally serve` needs only
    /// the pages of the tenants it is asked about; the default is sized for ingest's writes).
    pub fn with_page_cache(self, kib: u32) -> Result<SqliteStore, StoreError> {
        self.conn.pragma_update(None, "cache_size", -i64::from(kib)).map_err(backend)?;
        Ok(self)
    }

    /// A private in-memory store, for tests.
    pub fn in_memory() -> Result<SqliteStore, StoreError> {
        Self::init(Connection::open_in_memory().map_err(backend)?, false)
    }

    fn init(conn: Connection, full_sync: bool) -> Result<SqliteStore, StoreError> {
        conn.busy_timeout(std::time::Duration::from_secs(10)).map_err(backend)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(backend)?;
        conn.pragma_update(None, "synchronous", if full_sync { "FULL" } else { "NORMAL" }).map_err(backend)?;
        // 4 MB of page cache: the dedup index is written in (hour, key) order, so its hot end
        // is the last hours' pages, and the counter tables are written in key order per
        // transaction. Bounded for RSS: against 8 MB, 4 MB of less peak RSS on the benchmark
        // ingest and the same CPU time (README, "Ingest throughput").
        conn.pragma_update(None, "cache_size", -4_000).map_err(backend)?;
        let flags = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC;
        conn.create_scalar_function("dec_add", 2, flags, dec_add).map_err(backend)?;
        conn.create_scalar_function("int_add", 2, flags, int_add).map_err(backend)?;
        for (table, bucket, ty) in COUNTER_TABLES {
            conn.execute_batch(&counter_table_sql(table, bucket, ty)).map_err(backend)?;
        }
        conn.execute_batch(SCHEMA).map_err(backend)?;
        let version: Option<String> = conn
            .query_row("SELECT value FROM meta WHERE key = 'schema_version'", [], |r| r.get(0))
            .optional()
            .map_err(backend)?;
        match version.as_deref() {
            None => {
                conn.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?1)", [SCHEMA_VERSION])
                    .map_err(backend)?;
            }
            Some(SCHEMA_VERSION | "4") => {}
            Some("2") => {
                migrate_seen(&conn)?;
                migrate_via(&conn)?;
            }
            Some("3") => migrate_via(&conn)?,
            Some(other) => {
                return Err(StoreError::Unavailable(format!(
                    "store schema version {other} is not {SCHEMA_VERSION}; this tally cannot read it"
                )))
            }
        }
        add_dimension_columns(&conn)?;
        Ok(SqliteStore { conn, group: None, spare: Sums::default() })
    }

    /// Keeps a finished group's map, emptied, for the next group.
    fn keep_spare(&mut self, mut sums: Sums) {
        sums.clear();
        self.spare = sums;
    }

    /// An upsert of `rows` keys into one counter table: one statement's set-up and reset is
    /// shared by [`UPSERT_ROWS`] keys.
    fn upsert_sql(table: &str, bucket: &str, rows: usize) -> String {
        let key = key_columns(bucket);
        let row = format!("({})", vec!["?"; key.split(',').count() + Usage::COUNTS.len() + 1].join(", "));
        let values = vec![row.as_str(); rows].join(", ");
        let sums: Vec<String> = Usage::COUNTS.iter().map(|c| format!("{c} = int_add({c}, excluded.{c})")).collect();
        format!(
            "INSERT INTO {table} ({key}, {COLUMNS}) VALUES {values}
             ON CONFLICT ({key}) DO UPDATE SET {sums}, est_cost = dec_add(est_cost, excluded.est_cost)",
            sums = sums.join(", ")
        )
    }

    /// Adds each key's usage to `table`: (tenant, bucket, resource, via, usage), keys distinct;
    /// `via` is bound only for the hourly table, whose key has it.
    fn upsert_all<B: rusqlite::ToSql>(
        tx: &Connection,
        table: &str,
        bucket: &str,
        rows: &[(&str, B, &str, Option<&str>, &Usage)],
    ) -> Result<(), StoreError> {
        let bind = |st: &mut rusqlite::CachedStatement<'_>, at: usize, v: &dyn rusqlite::ToSql| {
            st.raw_bind_parameter(at, v).map_err(backend)
        };
        let full = rows.len() - rows.len() % UPSERT_ROWS;
        for (chunk, n) in [(&rows[..full], UPSERT_ROWS), (&rows[full..], 1)] {
            if chunk.is_empty() {
                continue;
            }
            let mut st = tx.prepare_cached(&Self::upsert_sql(table, bucket, n)).map_err(backend)?;
            for statement_rows in chunk.chunks(n) {
                let mut at = 1;
                for (tenant, b, resource, via, u) in statement_rows {
                    bind(&mut st, at, tenant)?;
                    bind(&mut st, at + 1, b)?;
                    bind(&mut st, at + 2, resource)?;
                    if let Some(via) = via {
                        bind(&mut st, at + 3, via)?;
                        at += 1;
                    }
                    // In the order of COLUMNS: seven counts, the cost, the other counts.
                    let mut column = at + 3;
                    for (i, c) in u.counts().into_iter().enumerate() {
                        if i == 7 {
                            bind(&mut st, column, &u.est_cost.to_string())?;
                            column += 1;
                        }
                        let c = i64::try_from(c)
                            .map_err(|_| StoreError::Invalid(format!("counter overflow: {c} passes 2^63 - 1")))?;
                        bind(&mut st, column, &c)?;
                        column += 1;
                    }
                    at = column;
                }
                st.raw_execute().map_err(backend)?;
            }
        }
        Ok(())
    }

    /// Applies one batch into the open transaction: checkpoints, dedup, totals; the counted
    /// usage goes to `group`, for [`SqliteStore::write_counters`].
    fn apply_in(tx: &Connection, batch: &Batch, group: &mut Group) -> Result<Applied, StoreError> {
        for cp in &batch.checkpoints {
            let found: Option<String> = tx
                .query_row("SELECT position FROM checkpoints WHERE source = ?1", [&cp.source], |r| r.get(0))
                .optional()
                .map_err(backend)?;
            if found != cp.expected {
                return Err(StoreError::ConditionFailed {
                    source_key: cp.source.clone(),
                    expected: cp.expected.clone(),
                    found,
                });
            }
            tx.execute(
                "INSERT INTO checkpoints (source, position) VALUES (?1, ?2)
                 ON CONFLICT (source) DO UPDATE SET position = excluded.position",
                params![cp.source, cp.position],
            )
            .map_err(backend)?;
        }

        let started = std::time::Instant::now();
        let duplicates = dedup(tx, &batch.entries)?;
        let dedup_done = started.elapsed();
        let duplicates_n = duplicates.len() as u64;
        let counted = batch.entries.len() as u64 - duplicates_n;
        batch.add_counted(&duplicates, &mut group.sums);
        if let Some(before) = batch.prune_before {
            tx.execute("DELETE FROM seen_runs WHERE hour < ?1", [seen_key(before, DedupKey::from_u128(0)).0 >> 42])
                .map_err(backend)?;
        }
        {
            let mut add = tx
                .prepare_cached(
                    "INSERT INTO skipped (reason, count) VALUES (?1, ?2)
                     ON CONFLICT (reason) DO UPDATE SET count = count + excluded.count",
                )
                .map_err(backend)?;
            for (reason, n) in &batch.skipped {
                add.execute(params![reason.as_str(), *n as i64]).map_err(backend)?;
            }
            let mut total = tx
                .prepare_cached(
                    "INSERT INTO totals (name, value) VALUES (?1, ?2)
                     ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
                )
                .map_err(backend)?;
            for (name, n) in [("received", batch.received), ("counted", counted), ("duplicates", duplicates_n)] {
                total.execute(params![name, n as i64]).map_err(backend)?;
            }
        }
        tracing::debug!(entries = batch.entries.len(), dedup = ?dedup_done, total = ?started.elapsed(), "batch applied");
        Ok(Applied { counted, duplicates: duplicates_n, keys_written: 0 })
    }

    /// Adds a group's counted usage to the hourly, daily and monthly counters; returns the
    /// hourly keys written. Leaves `sums` empty.
    fn write_counters(tx: &Connection, sums: &mut Sums) -> Result<u64, StoreError> {
        let started = std::time::Instant::now();
        let mut hours: Vec<(&CounterKey, &Usage)> = sums.iter().collect();
        // In key order, so the writes walk the tables' B-trees front to back.
        hours.sort_unstable_by_key(|&(k, _)| k);
        let rows: Vec<_> = hours
            .iter()
            .map(|(k, u)| (k.tenant.as_str(), k.hour, k.resource.as_str(), Some(k.via.as_str()), *u))
            .collect();
        Self::upsert_all(tx, "counters_hour", "hour", &rows)?;
        let hours_done = started.elapsed();
        let [days, months] = rollup_days_and_months(hours.iter().copied());
        for (table, bucket, rolled) in [("counters_day", "day", days), ("counters_month", "month", months)] {
            let rows: Vec<_> =
                rolled.iter().map(|((t, b, r), u)| (t.as_str(), b.as_str(), r.as_str(), None, u)).collect();
            Self::upsert_all(tx, table, bucket, &rows)?;
        }
        if let Some(max) = hours.iter().map(|(k, _)| k.hour).max() {
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('max_hour', ?1)
                 ON CONFLICT (key) DO UPDATE SET value = MAX(CAST(value AS INTEGER), CAST(excluded.value AS INTEGER))",
                [max.to_string()],
            )
            .map_err(backend)?;
        }
        let written = hours.len() as u64;
        tracing::debug!(hour_keys = written, hours = ?hours_done, total = ?started.elapsed(), "counters written");
        drop((hours, rows));
        sums.clear();
        Ok(written)
    }

    fn usage_row(r: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<Usage> {
        let cost: String = r.get(first + 7)?;
        let est_cost = Decimal::from_str(&cost).map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(first + 7, rusqlite::types::Type::Text, Box::new(e))
        })?;
        let mut counts = [0u64; 14];
        for (i, c) in counts.iter_mut().enumerate() {
            // The cost sits between the seventh count and the eighth (see COLUMNS).
            let column = if i < 7 { first + i } else { first + i + 1 };
            *c = r.get::<_, i64>(column)? as u64;
        }
        Ok(Usage::from_counts(counts, est_cost))
    }

    fn tenant_of(s: String) -> rusqlite::Result<TenantId> {
        TenantId::new(&s).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, "empty tenant id".into())
        })
    }

    fn via_of(s: String) -> rusqlite::Result<Via> {
        Via::parse(&s).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(3, rusqlite::types::Type::Text, format!("via {s:?}").into())
        })
    }
}

impl CounterStore for SqliteStore {
    fn apply(&mut self, batch: &Batch) -> Result<Applied, StoreError> {
        let applied = self.apply_grouped(batch)?;
        Ok(Applied { keys_written: self.commit_group()?, ..applied })
    }

    fn apply_grouped(&mut self, batch: &Batch) -> Result<Applied, StoreError> {
        if self.group.is_none() {
            self.conn.execute_batch("BEGIN IMMEDIATE").map_err(backend)?;
            self.group = Some(Group { sums: std::mem::take(&mut self.spare), batches: 0, keys_written: 0 });
        }
        let group = self.group.as_mut().expect("opened above");
        let applied = Self::apply_in(&self.conn, batch, group).and_then(|applied| {
            if group.sums.len() >= GROUP_KEYS {
                group.keys_written += Self::write_counters(&self.conn, &mut group.sums)?;
            }
            Ok(applied)
        });
        match applied {
            Ok(applied) => {
                group.batches += 1;
                Ok(applied)
            }
            Err(e) => {
                let earlier = group.batches;
                self.rollback_group();
                Err(group_lost(e, earlier))
            }
        }
    }

    fn commit_group(&mut self) -> Result<u64, StoreError> {
        let Some(mut group) = self.group.take() else { return Ok(0) };
        let earlier = group.batches.saturating_sub(1);
        let written = Self::write_counters(&self.conn, &mut group.sums)
            .and_then(|keys| self.conn.execute_batch("COMMIT").map(|()| group.keys_written + keys).map_err(backend));
        if written.is_err() {
            // SQLite may have rolled back already (an I/O error); then there is nothing to undo.
            let _ = self.conn.execute_batch("ROLLBACK");
        }
        self.keep_spare(group.sums);
        written.map_err(|e| group_lost(e, earlier))
    }

    fn groups_batches(&self) -> bool {
        true
    }

    fn rollback_group(&mut self) {
        if let Some(group) = self.group.take() {
            let _ = self.conn.execute_batch("ROLLBACK");
            self.keep_spare(group.sums);
        }
    }

    fn checkpoints(&self) -> Result<HashMap<String, String>, StoreError> {
        let mut st = self.conn.prepare("SELECT source, position FROM checkpoints").map_err(backend)?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).map_err(backend)?;
        rows.collect::<rusqlite::Result<_>>().map_err(backend)
    }

    fn max_hour(&self) -> Result<Option<EpochSeconds>, StoreError> {
        self.conn
            .query_row("SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'max_hour'", [], |r| r.get(0))
            .optional()
            .map_err(backend)
    }

    fn period_usage(&self, tenant: &TenantId, month: &str) -> Result<PeriodUsage, StoreError> {
        month_range(month)?;
        let mut out = PeriodUsage { tenant: tenant.clone(), period: month.to_string(), ..PeriodUsage::default() };
        let mut st = self
            .conn
            .prepare_cached(&format!("SELECT resource, {COLUMNS} FROM counters_month WHERE tenant = ?1 AND month = ?2"))
            .map_err(backend)?;
        let rows = st
            .query_map(params![tenant.as_str(), month], |r| Ok((r.get::<_, String>(0)?, Self::usage_row(r, 1)?)))
            .map_err(backend)?;
        for row in rows {
            let (resource, u) = row.map_err(backend)?;
            out.total += &u;
            out.by_resource.insert(Resource::new(&resource), u);
        }
        let mut st = self
            .conn
            .prepare_cached(&format!(
                "SELECT day, {COLUMNS} FROM counters_day WHERE tenant = ?1 AND day >= ?2 AND day < ?3"
            ))
            .map_err(backend)?;
        let rows = st
            .query_map(params![tenant.as_str(), format!("{month}-01"), format!("{month}-99")], |r| {
                Ok((r.get::<_, String>(0)?, Self::usage_row(r, 1)?))
            })
            .map_err(backend)?;
        for row in rows {
            let (day, u) = row.map_err(backend)?;
            *out.by_day.entry(day).or_default() += &u;
        }
        Ok(out)
    }

    fn tenants(&self, month: &str) -> Result<Vec<(TenantId, Usage)>, StoreError> {
        month_range(month)?;
        let mut st = self
            .conn
            .prepare(&format!("SELECT tenant, {COLUMNS} FROM counters_month WHERE month = ?1"))
            .map_err(backend)?;
        let rows =
            st.query_map([month], |r| Ok((Self::tenant_of(r.get(0)?)?, Self::usage_row(r, 1)?))).map_err(backend)?;
        let mut by: BTreeMap<TenantId, Usage> = BTreeMap::new();
        for row in rows {
            let (t, u) = row.map_err(backend)?;
            *by.entry(t).or_default() += &u;
        }
        Ok(by.into_iter().collect())
    }

    fn hours(&self, month: &str) -> Result<Vec<(CounterKey, Usage)>, StoreError> {
        let (start, end) = month_range(month)?;
        let mut st = self
            .conn
            .prepare(&format!(
                // Each of the month's tenants (from the small month table) as one range of the
                // primary key (tenant, hour, resource): no per-row lookups through the hour
                // index, which took most of the time on a big month.
                "SELECT h.tenant, h.hour, h.resource, h.via, {COLUMNS}
                 FROM (SELECT DISTINCT tenant FROM counters_month WHERE month = ?3) m
                 CROSS JOIN counters_hour h ON h.tenant = m.tenant AND h.hour >= ?1 AND h.hour < ?2"
            ))
            .map_err(backend)?;
        let rows = st
            .query_map(rusqlite::params![start, end, month], |r| {
                let key = CounterKey {
                    tenant: Self::tenant_of(r.get(0)?)?,
                    hour: r.get(1)?,
                    resource: Resource::new(&r.get::<_, String>(2)?),
                    via: Self::via_of(r.get(3)?)?,
                };
                Ok((key, Self::usage_row(r, 4)?))
            })
            .map_err(backend)?;
        // In key order already (tenant by tenant, each in primary-key order); sorted to be sure.
        let mut rows: Vec<(CounterKey, Usage)> = rows.collect::<rusqlite::Result<_>>().map_err(backend)?;
        rows.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Ok(rows)
    }

    fn totals(&self) -> Result<IngestTotals, StoreError> {
        let mut out = IngestTotals::default();
        let mut st = self.conn.prepare("SELECT name, value FROM totals").map_err(backend)?;
        let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))).map_err(backend)?;
        for row in rows {
            let (name, v) = row.map_err(backend)?;
            match name.as_str() {
                "received" => out.received = v,
                "counted" => out.counted = v,
                "duplicates" => out.duplicates = v,
                _ => {}
            }
        }
        let mut st = self.conn.prepare("SELECT reason, count FROM skipped").map_err(backend)?;
        let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64))).map_err(backend)?;
        out.skipped = rows.collect::<rusqlite::Result<_>>().map_err(backend)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_columns_are_the_usage_counts_with_the_cost_after_the_seventh() {
        let mut want: Vec<&str> = Usage::COUNTS.to_vec();
        want.insert(7, "est_cost");
        let columns: Vec<&str> = COLUMNS.split(',').map(str::trim).collect();
        assert_eq!(columns, want);
        assert_eq!(&Usage::COUNTS[7..], &DIMENSION_COLUMNS[..]);
    }
}
