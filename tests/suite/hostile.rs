//! A careless or hostile input costs only itself: a bad clock, a broken CUR, an absurd config,
//! a quarantine bomb. Each test here failed on the code before its fix (SPEC §2, §3, §7).

use crate::reconcile_support;
use crate::support;

use std::io::Write;
use std::sync::Arc;

use support::{record, Scratch};

// --- records lost or miscounted ------------------------------------------------------------

/// One record stamped in 2099 moved the dedup window (measured back from the newest hour
/// counted) past every real record: billing stopped. It is now `bad_timestamp`, alone.
#[test]
fn one_record_from_the_far_future_costs_only_itself() {
    let s = Scratch::new("");
    let future = record("aaaaaaaa-0000-4000-8000-000000000099", "2099-01-01T00:00:00Z", "acme", 5, 5);
    let first = s.write(
        "a.ndjson",
        format!("{future}\n{}\n", record("aaaaaaaa-0000-4000-8000-000000000001", "2025-11-06T00:00:00Z", "acme", 1, 1)),
    );
    let report = s.ingest(&[first]);
    assert_eq!((report.counted, report.skipped.get("bad_timestamp").copied()), (1, Some(1)), "{report:?}");
    // Later, normal records still count.
    let later = s.write(
        "b.ndjson",
        format!("{}\n", record("aaaaaaaa-0000-4000-8000-000000000002", "2025-11-07T00:00:00Z", "acme", 1, 1)),
    );
    let report = s.ingest(&[later]);
    assert_eq!((report.counted, report.skipped_total()), (1, 0), "{report:?}");
    assert!(s.quarantined()[0]["detail"].as_str().unwrap().contains("future"));
}

/// A 2 KB gzip of junk lines wrote 176 MB of quarantine entries. Now one run writes at most
/// `ingest.quarantine_max_bytes`; the skip counts stay exact past it.
#[test]
fn a_quarantine_bomb_is_bounded_and_still_counted() {
    let s = Scratch::new("[ingest]\nquarantine_max_bytes = 100000");
    let junk = "x\n".repeat(1_000_000);
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(junk.as_bytes()).unwrap();
    let gz = e.finish().unwrap();
    assert!(gz.len() < 10_000);
    let path = s.write("bomb.json.gz", gz);
    let report = s.ingest(&[path]);
    assert_eq!((report.received, report.skipped.get("non_json").copied()), (1_000_000, Some(1_000_000)));
    assert!(report.quarantine_omitted > 900_000, "{report:?}");
    let size = std::fs::metadata(s.path("quarantine.jsonl")).unwrap().len();
    assert!(size <= 100_000, "the quarantine file is {size} bytes");
}

/// SQLite's `+` turns an integer sum past 2^63 - 1 into an inexact float, silently: a counter
/// brought near the top (here by hand, in life by a flood of forged records) took the next
/// record and stopped being exact. The sum is now checked: the batch is refused, named, and
/// nothing of it is written.
#[test]
fn a_counter_sum_past_its_range_is_an_error_that_writes_nothing() {
    let s = Scratch::new("");
    let rec = |i: u32| record(&format!("cccccccc-0000-4000-8000-{i:012}"), "2025-11-06T00:00:00Z", "acme", 7, 1);
    let first = s.write("a.ndjson", format!("{}\n", rec(1)));
    assert_eq!(s.ingest(&[first]).counted, 1);
    let near = i64::MAX - 3;
    let db = rusqlite::Connection::open(s.path("tally.sqlite")).unwrap();
    for table in ["counters_hour", "counters_day", "counters_month"] {
        db.execute(&format!("UPDATE {table} SET input = ?1"), [near]).unwrap();
    }
    drop(db);
    let second = s.write("b.ndjson", format!("{}\n", rec(2)));
    let out = s.tally().arg("ingest").arg(&second).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("counter overflow"), "{:?}: {stderr}", out.status);
    let db = rusqlite::Connection::open(s.path("tally.sqlite")).unwrap();
    for table in ["counters_hour", "counters_day", "counters_month"] {
        let (kind, input): (String, i64) = db
            .query_row(&format!("SELECT typeof(input), input FROM {table}"), [], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap();
        assert_eq!((kind.as_str(), input), ("integer", near), "{table}");
    }
}

// --- config and limits ---------------------------------------------------------------------

/// The config error for `text`, which must name `field`.
fn refused(text: &str, field: &str) {
    let s = Scratch::new(text);
    let err = tally::config::Config::load(&s.config_path).expect_err(text).to_string();
    assert!(err.contains(field), "{text}: {err}");
    let out = s.tally().arg("status").output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{text}: config errors exit 2");
}

#[test]
fn configs_accepted_then_fatal_or_silently_wrong_are_refused_at_load() {
    // One profile with two owners: the last one won.
    refused(
        "[tenancy]\n[[tenancy.profiles]]\nprofile = \"p1\"\ntenant = \"acme\"\n[[tenancy.profiles]]\nprofile = \"p1\"\ntenant = \"globex\"",
        "tenancy.profiles[1].profile",
    );
    // Tenant ids that are one after trimming.
    let plans = "[plans.payg]\nkind = \"metered\"\nmarkup = \"4.0\"\nminimum = \"1.00\"\n";
    refused(&format!("{plans}[tenants.acme]\nplan = \"payg\"\n[tenants.\" acme\"]\nplan = \"payg\""), "tenants.");
    // A tenant id too long to be a file name.
    refused(&format!("{plans}[tenants.{}]\nplan = \"payg\"", "t".repeat(300)), "at most 128 bytes");
    // A token ceiling where sums overflow.
    refused(&format!("[ingest]\nmax_token_count = {}", u64::MAX), "ingest.max_token_count");
}

#[test]
fn negative_or_absurd_prices_are_refused_naming_the_field_with_exit_2() {
    for (name, text, field) in [
        ("neg.toml", "[[price]]\nmodel = \"m\"\nper = \"1M\"\ninput = \"-1\"\n", "price[0].input"),
        ("big.toml", "[[price]]\nmodel = \"m\"\nper = \"1K\"\noutput = \"99999999999\"\n", "price[0].output"),
        (
            "neg.json",
            r#"{"m": {"litellm_provider": "bedrock", "input_cost_per_token": -0.000001}}"#,
            "m.input_cost_per_token",
        ),
    ] {
        let s = Scratch::new(&format!("[pricing]\ncatalogs = [\"{name}\"]"));
        s.write(name, text);
        let log = s.write(
            "a.ndjson",
            format!("{}\n", record("aaaaaaaa-0000-4000-8000-000000000001", "2025-11-06T00:00:00Z", "acme", 1, 1)),
        );
        let out = s.tally().arg("ingest").arg(&log).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(field), "{name}: {stderr}");
    }
}

#[test]
fn a_huge_config_is_refused_before_it_is_parsed() {
    let s = Scratch::new(&format!("# {}\n", "x".repeat(3 << 20)));
    let err = tally::config::Config::load(&s.config_path).expect_err("too big").to_string();
    assert!(err.contains("above the limit"), "{err}");
}

// --- money ---------------------------------------------------------------------------------

/// `reconcile --cur` at a folder with no file for the period replaced the good reconciled
/// period with an empty one. Now it is an error that changes nothing.
#[test]
fn a_period_without_cur_files_is_an_error_that_changes_nothing() {
    let f = reconcile_support::Fixture::new();
    let out = f.path("out");
    let ok = f.reconcile(&f.cur.cur2, &out, &[]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let before = reconcile_support::files(&out.join(reconcile_support::MONTH));
    let empty = f.path("empty-cur");
    std::fs::create_dir_all(&empty).unwrap();
    let run = f.reconcile(&empty, &out, &[]);
    assert_eq!(run.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&run.stderr).contains("no CUR file for the period"),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(reconcile_support::files(&out.join(reconcile_support::MONTH)), before, "the reconciled period changed");
}

/// A CUR cost of NaN, ±Inf or 1e30 was read as 0 and the run reported itself balanced. Now
/// it is an error naming the file, the row group and the column.
#[test]
fn non_finite_or_absurd_cur_money_is_an_error_naming_file_row_group_and_column() {
    use datafusion::arrow::array::{Array, ArrayRef, Float64Array, RecordBatch};
    use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use datafusion::parquet::arrow::ArrowWriter;

    let f = reconcile_support::Fixture::new();
    let sources: Vec<std::path::PathBuf> =
        walk(f.cur.cur2.clone()).into_iter().filter(|p| p.extension().is_some_and(|x| x == "parquet")).collect();
    assert!(!sources.is_empty());
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 1e30] {
        let dir = f.path(&format!("bad-cur-{bad}"));
        for (k, source) in sources.iter().enumerate() {
            let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(source).unwrap())
                .unwrap()
                .build()
                .unwrap();
            let batches: Vec<RecordBatch> = reader.map(Result::unwrap).collect();
            let rel = source.strip_prefix(&f.cur.cur2).unwrap();
            let path = dir.join(rel).with_file_name(format!("bad-{k}.parquet"));
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            let schema = batches[0].schema();
            let mut w = ArrowWriter::try_new(std::fs::File::create(&path).unwrap(), schema.clone(), None).unwrap();
            for b in &batches {
                let i = schema.index_of("line_item_unblended_cost").unwrap();
                let cost = b.column(i).as_any().downcast_ref::<Float64Array>().expect("costs are doubles").clone();
                // Every line's cost broken, so a Bedrock line is certainly hit.
                let broken: Float64Array = (0..cost.len()).map(|_| Some(bad)).collect();
                let mut columns: Vec<ArrayRef> = b.columns().to_vec();
                columns[i] = Arc::new(broken);
                w.write(&RecordBatch::try_new(schema.clone(), columns).unwrap()).unwrap();
            }
            w.close().unwrap();
        }
        let out = f.path(&format!("out-{bad}"));
        let run = f.reconcile(&dir, &out, &[]);
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(1), "{bad}: {stderr}");
        for part in ["bad-", ".parquet", "row group 0", "line_item_unblended_cost"] {
            assert!(stderr.contains(part), "{bad}: no {part:?} in {stderr}");
        }
        assert!(!out.join(reconcile_support::MONTH).exists(), "{bad}: outputs were written");
    }
}

fn walk(p: std::path::PathBuf) -> Vec<std::path::PathBuf> {
    if p.is_dir() {
        std::fs::read_dir(&p).unwrap().flat_map(|e| walk(e.unwrap().path())).collect()
    } else {
        vec![p]
    }
}

// --- what a record says ----------------------------------------------------------------------

/// A raw control byte in a string became part of a tenant id; a duplicated `tenant_id` took
/// the first value where standard JSON parsers take the last.
#[test]
fn control_bytes_are_quarantined_and_the_last_duplicate_key_wins() {
    let s = Scratch::new("");
    let base = record("aaaaaaaa-0000-4000-8000-000000000001", "2025-11-06T00:00:00Z", "acme", 1, 1);
    let nul =
        base.replace("\"tenant_id\":\"acme\"", "\"tenant_id\":\"ac\u{0}me\"").replace("000000000001", "000000000002");
    let soh =
        base.replace("\"tenant_id\":\"acme\"", "\"tenant_id\":\"acme\u{1}\"").replace("000000000001", "000000000003");
    let twice = base
        .replace("\"tenant_id\":\"acme\"", "\"tenant_id\":\"acme\",\"tenant_id\":\"globex\"")
        .replace("000000000001", "000000000004");
    let path = s.write("a.ndjson", format!("{base}\n{nul}\n{soh}\n{twice}\n"));
    let report = s.ingest(&[path]);
    assert_eq!((report.counted, report.skipped.get("malformed_json").copied()), (2, Some(2)), "{report:?}");
    let tenants: Vec<String> = tally::store::CounterStore::tenants(&s.store(), "2025-11")
        .unwrap()
        .into_iter()
        .map(|(t, _)| t.as_str().to_string())
        .collect();
    assert_eq!(tenants, ["acme", "globex"]);
    assert_eq!(s.quarantined().iter().map(|q| q["line"].as_u64().unwrap()).collect::<Vec<_>>(), [2, 3]);
}

// --- hangs and aborts ----------------------------------------------------------------------

/// A link to /dev/zero or a FIFO in the tree hung ingest; a dangling link or an unreadable
/// folder aborted it with nothing counted. Now: only regular files are read, what was passed
/// over is said, what could not be looked at is a failed input (exit 4), and the rest counts.
#[cfg(unix)]
#[test]
fn links_fifos_and_unreadable_folders_cost_only_themselves() {
    let s = Scratch::new("");
    s.write(
        "logs/good.ndjson",
        format!("{}\n", record("aaaaaaaa-0000-4000-8000-000000000001", "2025-11-06T00:00:00Z", "acme", 1, 1)),
    );
    let logs = s.path("logs");
    std::os::unix::fs::symlink("/dev/zero", logs.join("zero.json")).unwrap();
    std::os::unix::fs::symlink(logs.join("gone.json"), logs.join("dangling.json")).unwrap();
    let fifo = logs.join("pipe.ndjson");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a NUL-terminated path; creates a FIFO.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    let locked = logs.join("locked");
    std::fs::create_dir_all(&locked).unwrap();
    std::fs::write(locked.join("x.ndjson"), "{}\n").unwrap();
    std::fs::set_permissions(&locked, std::os::unix::fs::PermissionsExt::from_mode(0o000)).unwrap();
    let root_can_read = std::fs::read_dir(&locked).is_ok();

    let mut child =
        s.tally().args(["ingest", "--json"]).arg(&logs).stdout(std::process::Stdio::piped()).spawn().unwrap();
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > std::time::Duration::from_secs(60) {
            child.kill().unwrap();
            panic!("ingest hung on a FIFO or a device");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    std::fs::set_permissions(&locked, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut text).unwrap();
    let report: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(status.code(), Some(4), "{report}");
    assert!(report["counted"].as_u64().unwrap() >= 1, "{report}");
    let errors = report["errors"].to_string();
    assert!(errors.contains("dangling.json"), "{errors}");
    if !root_can_read {
        assert!(errors.contains("locked"), "{errors}");
    }
    let passed = report["passed_over"].to_string();
    assert!(passed.contains("zero.json") && passed.contains("pipe.ndjson"), "{passed}");
}

/// Growth detection is exact: a file rewritten with its first lines kept and records
/// inserted in the middle was taken as grown, and the inserted records were lost.
#[test]
fn records_inserted_before_the_checkpoint_are_counted() {
    let s = Scratch::new("");
    let rec = |i: u32| record(&format!("bbbbbbbb-0000-4000-8000-{i:012}"), "2025-11-06T00:00:00Z", "acme", 1, 1);
    let path = s.write("a.ndjson", format!("{}\n{}\n", rec(1), rec(2)));
    assert_eq!(s.ingest(std::slice::from_ref(&path)).counted, 2);
    std::fs::write(&path, format!("{}\n{}\n{}\n{}\n", rec(1), rec(10), rec(2), rec(3))).unwrap();
    let report = s.ingest(&[path]);
    assert_eq!((report.counted, report.duplicates), (2, 2), "{report:?}");
}

/// A file ingested again and again while its writer appends to it: a half-written last line
/// was quarantined, and then its completed tail again, so that record was never billed.
#[test]
fn a_file_read_while_it_is_written_loses_no_record() {
    let s = Scratch::new("");
    let path = s.path("live.ndjson");
    let all: String = (0..300u32)
        .map(|i| {
            format!("{}\n", record(&format!("cccccccc-0000-4000-8000-{i:012}"), "2025-11-06T00:00:00Z", "acme", 1, 1))
        })
        .collect();
    let mut written = 0;
    let mut counted = 0;
    // Cut at odd places, mid-line most of the time.
    for cut in (1..=13).map(|k| all.len() * k / 13 - if k < 13 { 37 } else { 0 }) {
        std::fs::write(&path, &all[..cut]).unwrap();
        written = cut;
        counted += s.ingest(std::slice::from_ref(&path)).counted;
    }
    assert_eq!(written, all.len());
    assert_eq!(counted, 300, "every record billed once");
}

/// A `.json.gz` copied in part and completed later: the record at the cut was lost.
#[test]
fn a_gzip_file_completed_later_loses_no_record() {
    let s = Scratch::new("");
    let text: String = (0..2000u32)
        .map(|i| {
            format!("{}\n", record(&format!("dddddddd-0000-4000-8000-{i:012}"), "2025-11-06T00:00:00Z", "acme", 1, 1))
        })
        .collect();
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(text.as_bytes()).unwrap();
    let gz = e.finish().unwrap();
    let path = s.path("2025-11-06.json.gz");
    std::fs::write(&path, &gz[..gz.len() / 2]).unwrap();
    let first = s.ingest(std::slice::from_ref(&path));
    assert!(first.counted > 0 && first.skipped.get("truncated_gzip") == Some(&1), "{first:?}");
    std::fs::write(&path, &gz).unwrap();
    let second = s.ingest(&[path]);
    assert_eq!(first.counted + second.counted, 2000, "{first:?} {second:?}");
}

/// `serve` never timed out a half-sent request: 140 such connections exhausted a
/// 128-descriptor limit and real requests timed out. Now a request head has a deadline and
/// connections are capped under the open-file limit.
#[cfg(unix)]
#[test]
fn half_sent_requests_cannot_starve_serve() {
    let s = Scratch::new("[serve]\nheader_timeout_ms = 1000");
    let server = support::serve::Server::start_with_open_files(&s.config_path, &[], &[], Some(128));
    let mut idle = Vec::new();
    for _ in 0..140 {
        // Connections the server may not accept yet wait in its listen backlog.
        if let Ok(mut c) = std::net::TcpStream::connect(&server.addr) {
            let _ = c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n");
            idle.push(c);
        }
    }
    let started = std::time::Instant::now();
    let r = server.get("/healthz", None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(started.elapsed() < std::time::Duration::from_secs(15), "a real request waited {:?}", started.elapsed());
    // The half-sent ones were closed.
    let mut closed = 0;
    for c in &mut idle {
        c.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 256];
        match std::io::Read::read(c, &mut buf) {
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            // End of stream, a reset, or a 408 before the close.
            _ => closed += 1,
        }
    }
    assert_eq!(closed, idle.len());
    assert!(server.stop().success());
}

/// A gzip member whose CRC fails had its records counted before the failure was noticed.
/// Now its records are not counted; the members before it are.
#[test]
fn a_gzip_member_that_fails_its_crc_counts_nothing() {
    let member = |from: u32, n: u32| {
        let text: String = (from..from + n)
            .map(|i| {
                format!(
                    "{}\n",
                    record(&format!("ffffffff-0000-4000-8000-{i:012}"), "2025-11-06T00:00:00Z", "acme", 1, 1)
                )
            })
            .collect();
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(text.as_bytes()).unwrap();
        e.finish().unwrap()
    };
    let good = member(0, 100);
    let mut bad = member(100, 50);
    let crc_at = bad.len() - 8;
    bad[crc_at] ^= 0xFF;
    // Large enough to be streamed, and small: both paths see the same.
    for (name, padding) in [("small.json.gz", 0usize), ("large.json.gz", 9 << 20)] {
        let s = Scratch::new("");
        let mut bytes = good.clone();
        if padding > 0 {
            // A member of blank lines, stored (incompressible) to pass the whole-file limit.
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::none());
            e.write_all(&vec![b'\n'; padding]).unwrap();
            bytes.extend(e.finish().unwrap());
        }
        bytes.extend(&bad);
        let path = s.write(name, &bytes);
        let report = s.ingest(&[path]);
        assert_eq!(
            (report.counted, report.skipped.get("truncated_gzip").copied()),
            (100, Some(1)),
            "{name}: {report:?}"
        );
        assert!(s.quarantined()[0]["detail"].as_str().unwrap().contains("corrupt"), "{name}");
    }
    // One member only, corrupt: nothing counted, and the file is a failed file.
    let s = Scratch::new("");
    let path = s.write("only.json.gz", &bad);
    let report = s.ingest(&[path]);
    assert_eq!((report.counted, report.files_failed), (0, 1), "{report:?}");
}
