//! Exactly once, whatever crashes: a `tally ingest` killed with SIGKILL at random points and
//! restarted ends with counters equal to the generator's ground truth; re-runs change nothing;
//! duplicates across files count once; late records count in their own hour.

use crate::support;

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use support::{kill, record, Scratch};
use tally::generate::{self, Spec, Truth, TruthRow};
use tally::ids::{hour_label, TenantId};
use tally::store::sqlite::SqliteStore;
use tally::store::CounterStore;

/// The store's hourly counters in the truth's shape.
fn counters(s: &Scratch, month: &str) -> Vec<TruthRow> {
    kill::counters(&s.store(), month)
}

fn sorted(rows: Vec<TruthRow>) -> Vec<TruthRow> {
    kill::sorted(rows)
}

/// SQLite files in one folder, one per store name.
struct Sqlite(std::path::PathBuf);

impl kill::Backend for Sqlite {
    fn store_section(&self, name: &str) -> String {
        format!("[store]\npath = \"{}\"\n", self.0.join(format!("{name}.sqlite")).display())
    }
    fn open(&self, name: &str) -> Box<dyn CounterStore> {
        Box::new(SqliteStore::open(&self.0.join(format!("{name}.sqlite")), false).unwrap())
    }
}

#[test]
fn sigkill_at_random_points_then_restart_gives_exact_counters() {
    let s = Scratch::new("");
    kill::sigkill_at_random_points(&Sqlite(s.path("stores")), s.dir.path(), 60_000, 1500, 30);
}

/// A scratch view over a generated config (its store lives beside it).
fn s_for(config: &std::path::Path) -> Scratch {
    let dir = tempfile::tempdir().unwrap();
    Scratch { dir, config_path: config.to_path_buf() }
}

#[test]
fn rerunning_over_the_same_tree_changes_nothing() {
    let s = Scratch::new("");
    let spec = Spec { out: s.path("gen"), tenants: 5, records: 3_000, records_per_object: 200, ..Spec::default() };
    let summary = generate::generate(&spec).unwrap();
    let gen = s_for(&summary.config);
    let first = gen.ingest(std::slice::from_ref(&summary.logs));
    assert_eq!(first.counted, 3_000);
    let before = counters(&gen, &spec.month);
    let second = gen.ingest(std::slice::from_ref(&summary.logs));
    assert_eq!((second.received, second.files_read), (0, 0));
    assert_eq!(second.files_unchanged, first.files_read);
    assert_eq!(counters(&gen, &spec.month), before);
    // Touching a file without changing it does not recount it either.
    let truth: Truth = serde_json::from_str(&std::fs::read_to_string(&summary.truth).unwrap()).unwrap();
    assert_eq!(sorted(before), sorted(truth.rows));
}

#[test]
fn a_duplicate_request_id_in_another_file_counts_once() {
    let s = Scratch::new("");
    let r1 = record("11111111-2222-4333-8444-555555555555", "2025-11-03T10:00:05Z", "acme", 100, 20);
    let r2 = record("11111111-2222-4333-8444-666666666666", "2025-11-03T10:00:06Z", "acme", 7, 3);
    let a = s.write("s3/a.ndjson", format!("{r1}\n{r2}\n"));
    let b = s.write("cwl/b.ndjson", format!("{r1}\n"));
    let report = s.ingest(&[a, b.clone()]);
    assert_eq!((report.received, report.counted, report.duplicates), (3, 2, 1));
    let u = s.store().period_usage(&TenantId::new("acme").unwrap(), "2025-11").unwrap();
    assert_eq!((u.total.requests, u.total.input, u.total.output), (2, 107, 23));
    // Arriving again later, in a third file, still counts once.
    let c = s.write("late/c.ndjson", format!("{r1}\n"));
    let again = s.ingest(&[c]);
    assert_eq!((again.counted, again.duplicates), (0, 1));
}

#[test]
fn a_record_arriving_late_counts_in_its_own_hour() {
    let s = Scratch::new("");
    let now = record("aaaaaaaa-0000-4000-8000-000000000001", "2025-11-03T10:59:59Z", "acme", 10, 1);
    let first = s.write("hour10.ndjson", format!("{now}\n"));
    s.ingest(&[first]);
    // Delivered in a later folder and a later run, but stamped 08:15.
    let late = record("aaaaaaaa-0000-4000-8000-000000000002", "2025-11-03T08:15:00Z", "acme", 5, 2);
    let second = s.write("2025/11/03/12/late.ndjson", format!("{late}\n"));
    s.ingest(&[second]);
    let hours: BTreeMap<String, u64> =
        s.store().hours("2025-11").unwrap().into_iter().map(|(k, u)| (hour_label(k.hour), u.input)).collect();
    assert_eq!(
        hours,
        BTreeMap::from([("2025-11-03T08:00:00Z".to_string(), 5), ("2025-11-03T10:00:00Z".to_string(), 10)])
    );
}

#[test]
fn a_grown_file_continues_where_it_stopped() {
    let s = Scratch::new("");
    let line =
        |i: u32| record(&format!("bbbbbbbb-0000-4000-8000-{i:012}"), "2025-11-04T01:00:00Z", "acme", u64::from(i), 1);
    let path = s.write("tail.ndjson", format!("{}\n{}\n", line(1), line(2)));
    assert_eq!(s.ingest(std::slice::from_ref(&path)).counted, 2);
    let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
    std::io::Write::write_all(&mut f, format!("{}\n{}\n{}\n", line(3), line(4), line(5)).as_bytes()).unwrap();
    let second = s.ingest(&[path]);
    assert_eq!((second.received, second.counted, second.duplicates), (3, 3, 0));
    let u = s.store().period_usage(&TenantId::new("acme").unwrap(), "2025-11").unwrap();
    assert_eq!(u.total.input, 1 + 2 + 3 + 4 + 5);
}

#[test]
fn follow_picks_up_appended_lines_and_sigterm_flushes_and_exits_zero() {
    let s = Scratch::new("[ingest]\npoll_seconds = 0.1");
    let line = |i: u32| record(&format!("cccccccc-0000-4000-8000-{i:012}"), "2025-11-05T02:00:00Z", "acme", 1, 1);
    let path = s.write("live.ndjson", format!("{}\n", line(1)));
    let mut child = s.tally().arg("ingest").arg("--follow").arg(&path).stdout(Stdio::null()).spawn().unwrap();
    let wait_for = |n: u64| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if s.store().totals().unwrap().counted >= n {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("follow never counted {n} records");
    };
    wait_for(1);
    // Half a line, then the rest: the partial line must not be counted or lost.
    let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
    let l2 = line(2);
    let (head, tail) = l2.split_at(40);
    std::io::Write::write_all(&mut f, head.as_bytes()).unwrap();
    std::thread::sleep(Duration::from_millis(400));
    std::io::Write::write_all(&mut f, format!("{tail}\n{}\n", line(3)).as_bytes()).unwrap();
    wait_for(3);
    unsafe_sigterm(child.id());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    let totals = s.store().totals().unwrap();
    assert_eq!((totals.received, totals.counted), (3, 3));
    assert!(s.quarantined().is_empty(), "{:?}", s.quarantined());
}

fn unsafe_sigterm(pid: u32) {
    let status = std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status().unwrap();
    assert!(status.success());
}

#[test]
fn how_batches_are_grouped_into_transactions_changes_no_count() {
    // Many small batches (and duplicates across them), committed one transaction per batch,
    // then many batches to a transaction: the same counters, the same accounting, and the
    // generator's ground truth both times.
    let s = Scratch::new("");
    let spec = Spec {
        out: s.path("gen"),
        tenants: 4,
        records: 4_000,
        records_per_object: 150,
        duplicate_fraction: 0.05,
        ..Spec::default()
    };
    let summary = generate::generate(&spec).unwrap();
    let generated = std::fs::read_to_string(&summary.config).unwrap();
    let truth: Truth = serde_json::from_str(&std::fs::read_to_string(&summary.truth).unwrap()).unwrap();
    let run = |name: &str, commit_records: u64| {
        let config = s.path(&format!("{name}.toml"));
        let text = generated.replacen(
            "[ingest]",
            &format!("[ingest]\nbatch_records = 300\ncommit_records = {commit_records}"),
            1,
        );
        assert_ne!(text, generated, "the generated config has an [ingest] table");
        std::fs::write(&config, text.replace("tally.sqlite", &format!("{name}.sqlite"))).unwrap();
        let gen = s_for(&config);
        let report = gen.ingest(std::slice::from_ref(&summary.logs));
        assert!(report.batches >= 10, "only {} batches: the test needs many", report.batches);
        let key = (report.received, report.counted, report.duplicates, report.skipped.clone());
        (key, sorted(counters(&gen, &spec.month)), gen.store().totals().unwrap())
    };
    let one_each = run("one-each", 1);
    let grouped = run("grouped", 1_000_000);
    assert_eq!(grouped, one_each);
    assert_eq!(one_each.1, sorted(truth.rows));
    assert_eq!(one_each.0 .1, truth.counted);
}
