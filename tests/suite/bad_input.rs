//! SPEC §7: every kind of bad input gets a message naming file and line, goes to the
//! quarantine with its reason, and the records around it are still counted.

use crate::support;

use std::io::Write;

use support::{record, Scratch};

const GOOD_1: &str = "dddddddd-0000-4000-8000-000000000001";
const GOOD_3: &str = "dddddddd-0000-4000-8000-000000000003";

/// Puts `bad` on line 2 between two good records and checks the outcome.
fn check(name: &str, bad: &[u8], reason: &str) {
    let s = Scratch::new("[ingest]\nmax_token_count = 5000000");
    let mut bytes = format!("{}\n", record(GOOD_1, "2025-11-06T00:00:00Z", "acme", 10, 1)).into_bytes();
    bytes.extend_from_slice(bad);
    bytes.push(b'\n');
    bytes.extend_from_slice(format!("{}\n", record(GOOD_3, "2025-11-06T00:00:01Z", "acme", 30, 3)).as_bytes());
    let path = s.write(&format!("{name}.ndjson"), &bytes);
    let report = s.ingest(&[path]);
    assert_eq!((report.received, report.counted), (3, 2), "{name}: {report:?}");
    assert_eq!(report.skipped.get(reason).copied(), Some(1), "{name}: {:?}", report.skipped);
    assert!(report.balanced());
    let q = s.quarantined();
    assert_eq!(q.len(), 1, "{name}: {q:?}");
    assert!(q[0]["source"].as_str().unwrap().ends_with(&format!("{name}.ndjson")), "{name}: {q:?}");
    assert_eq!(q[0]["line"], 2, "{name}");
    assert_eq!(q[0]["reason"], reason, "{name}");
    assert!(!q[0]["detail"].as_str().unwrap().is_empty());
    let totals = tally::store::CounterStore::totals(&s.store()).unwrap();
    assert_eq!(totals.skipped.get(reason).copied(), Some(1), "the skip count is kept in the store");
}

fn bad_record(f: impl Fn(&mut serde_json::Value)) -> Vec<u8> {
    let mut v: serde_json::Value =
        serde_json::from_str(&record("dddddddd-0000-4000-8000-000000000002", "2025-11-06T00:00:02Z", "acme", 20, 2))
            .unwrap();
    f(&mut v);
    serde_json::to_vec(&v).unwrap()
}

#[test]
fn malformed_json() {
    let good = record("x", "2025-11-06T00:00:02Z", "acme", 1, 1);
    check("malformed", &good.as_bytes()[..good.len() - 10], "malformed_json");
}

#[test]
fn non_json_line() {
    check("nonjson", b"ERROR something went wrong", "non_json");
}

#[test]
fn wrong_types() {
    check("wrongtype", &bad_record(|v| v["input"]["inputTokenCount"] = "20".into()), "wrong_type");
    check("wrongtype_model", &bad_record(|v| v["modelId"] = 42.into()), "wrong_type");
}

#[test]
fn negative_and_absurd_counts() {
    check("negative", &bad_record(|v| v["output"]["outputTokenCount"] = (-5).into()), "negative_count");
    check("absurd", &bad_record(|v| v["input"]["inputTokenCount"] = 9_000_000.into()), "absurd_count");
}

#[test]
fn missing_fields() {
    check("no_request_id", &bad_record(|v| drop(v.as_object_mut().unwrap().remove("requestId"))), "missing_request_id");
    check("no_timestamp", &bad_record(|v| drop(v.as_object_mut().unwrap().remove("timestamp"))), "missing_timestamp");
    check("no_model_id", &bad_record(|v| drop(v.as_object_mut().unwrap().remove("modelId"))), "missing_model_id");
    check("bad_timestamp", &bad_record(|v| v["timestamp"] = "2025-13-45T99:00:00Z".into()), "bad_timestamp");
}

#[test]
fn non_utf8() {
    let mut bad = bad_record(|_| {});
    let at = bad.len() / 2;
    bad[at] = 0xFF;
    check("nonutf8", &bad, "non_utf8");
}

#[test]
fn a_100_mb_line_is_quarantined_without_being_held() {
    let s = Scratch::new("");
    let path = s.path("huge.ndjson");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        writeln!(f, "{}", record(GOOD_1, "2025-11-06T00:00:00Z", "acme", 10, 1)).unwrap();
        let prefix = r#"{"schemaType":"ModelInvocationLog","input":{"inputBodyJson":{"text":""#;
        f.write_all(prefix.as_bytes()).unwrap();
        let chunk = vec![b'a'; 1 << 20];
        for _ in 0..100 {
            f.write_all(&chunk).unwrap();
        }
        f.write_all(b"\"}}}\n").unwrap();
        writeln!(f, "{}", record(GOOD_3, "2025-11-06T00:00:01Z", "acme", 30, 3)).unwrap();
    }
    let report = s.ingest(&[path]);
    assert_eq!((report.received, report.counted), (3, 2));
    assert_eq!(report.skipped.get("line_too_long").copied(), Some(1));
    let q = s.quarantined();
    assert_eq!((q[0]["line"].as_u64(), q[0]["reason"].as_str()), (Some(2), Some("line_too_long")));
    assert!(q[0]["record"].as_str().unwrap().len() <= tally::quarantine::SNIPPET_BYTES);
}

#[test]
fn truncated_gzip_keeps_what_came_before() {
    let s = Scratch::new("");
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    for i in 0..2000u32 {
        // Varied text so the stream does not compress to nothing.
        let id = format!("eeeeeeee-0000-4000-8000-{i:012}");
        writeln!(e, "{}", record(&id, "2025-11-06T00:00:00Z", &format!("t{}", i * 7919 % 101), u64::from(i), 1))
            .unwrap();
    }
    let full = e.finish().unwrap();
    let path = s.write("cut.json.gz", &full[..full.len() * 2 / 3]);
    let report = s.ingest(&[path]);
    assert_eq!(report.skipped.get("truncated_gzip").copied(), Some(1), "{report:?}");
    assert!(report.counted > 1000 && report.counted < 2000, "{report:?}");
    assert!(report.balanced());
    let q = s.quarantined();
    assert_eq!(q.len(), 1);
    assert!(q[0]["source"].as_str().unwrap().ends_with("cut.json.gz"));
    assert_eq!(q[0]["line"].as_u64(), Some(report.counted + 1), "the cut line is the one after the last counted");
}

#[test]
fn an_unexpected_schema_version_is_counted_and_reported() {
    let s = Scratch::new("");
    let v2 = bad_record(|v| v["schemaVersion"] = "2.0".into());
    let path = s.write("v2.ndjson", [v2.as_slice(), b"\n"].concat());
    let report = s.ingest(&[path]);
    assert_eq!((report.counted, report.unexpected_schema), (1, 1));
    assert!(s.quarantined().is_empty());
}

#[test]
fn a_bad_element_inside_an_export_names_its_line() {
    let s = Scratch::new("");
    let good = record(GOOD_1, "2025-11-06T00:00:00Z", "acme", 10, 1);
    let doc = serde_json::json!({"events": [
        {"timestamp": 1, "message": good, "ingestionTime": 2},
        {"timestamp": 1, "message": "{\"requestId\": \"r\", \"modelId\": \"m\"", "ingestionTime": 2},
    ]});
    let path = s.write("export.json", serde_json::to_vec_pretty(&doc).unwrap());
    let report = s.ingest(&[path]);
    assert_eq!((report.received, report.counted), (2, 1));
    let q = s.quarantined();
    assert_eq!(q[0]["reason"], "malformed_json");
    // The second event object starts on line 8 of the pretty-printed export.
    let text = serde_json::to_string_pretty(&doc).unwrap();
    let second_event_line = text.lines().position(|l| l.contains("\\\"requestId\\\": \\\"r\\\"")).unwrap() as u64;
    assert!(
        q[0]["line"].as_u64().unwrap() <= second_event_line + 1
            && q[0]["line"].as_u64().unwrap() >= second_event_line - 3,
        "{q:?}"
    );
}

#[test]
fn a_config_mistake_names_the_field_and_exits_2() {
    let s = Scratch::new("[ingest]\ndedup_window_days = 0");
    let out = s.tally().args(["status"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ingest.dedup_window_days"), "{err}");
}

#[test]
fn a_missing_input_path_is_named_and_the_run_fails() {
    let s = Scratch::new("");
    let good = s.write("in/good.ndjson", format!("{}\n", record(GOOD_1, "2025-11-06T00:00:00Z", "acme", 10, 1)));
    let missing = s.path("in/missing.ndjson");
    let out = s.tally().arg("ingest").arg(&good).arg(&missing).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("missing.ndjson").count(), 1, "the missing path, named once: {err}");
    // Nothing was half-done: the good file is counted on the next, corrected run.
    let ok = s.tally().arg("ingest").arg("--json").arg(&good).output().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!(report["counted"], 1);
}

/// A record older than the dedup window (measured back from the newest hour already counted)
/// can no longer be checked for duplicates: it is quarantined with its file and line, and the
/// records around it in the same file, older and newer hours alike, are counted.
#[test]
fn a_record_older_than_the_dedup_window_is_quarantined_and_its_neighbours_counted() {
    let s = Scratch::new("[ingest]\ndedup_window_days = 1");
    let first = s.write(
        "a.ndjson",
        format!("{}\n", record("eeeeeeee-0000-4000-8000-000000000001", "2025-11-06T00:10:00Z", "acme", 1, 1)),
    );
    assert_eq!(s.ingest(&[first]).counted, 1);
    // The horizon is now 2025-11-05T00:00Z. Line 2 is three days older; lines 1 and 3 are in it.
    let late = [
        record("eeeeeeee-0000-4000-8000-000000000002", "2025-11-05T12:00:00Z", "acme", 20, 2),
        record("eeeeeeee-0000-4000-8000-000000000003", "2025-11-03T08:00:00Z", "acme", 300, 3),
        record("eeeeeeee-0000-4000-8000-000000000004", "2025-11-05T12:30:00Z", "acme", 4000, 4),
    ];
    let second = s.write("b.ndjson", late.join("\n") + "\n");
    let report = s.ingest(&[second]);
    assert_eq!((report.received, report.counted), (3, 2), "{report:?}");
    assert_eq!(report.skipped.get("outside_dedup_window").copied(), Some(1), "{:?}", report.skipped);
    assert!(report.balanced());
    let q = s.quarantined();
    assert_eq!(q.len(), 1, "{q:?}");
    assert!(q[0]["source"].as_str().unwrap().ends_with("b.ndjson"), "{q:?}");
    assert_eq!(q[0]["line"], 2);
    assert_eq!(q[0]["reason"], "outside_dedup_window");
    let usage =
        tally::store::CounterStore::period_usage(&s.store(), &tally::ids::TenantId::new("acme").unwrap(), "2025-11")
            .unwrap();
    assert_eq!(
        (usage.total.input, usage.total.requests),
        (1 + 20 + 4000, 3),
        "the late record adds nothing: {usage:?}"
    );
    assert!(
        !usage.by_day.contains_key("2025-11-03"),
        "no counter for the quarantined record's day: {:?}",
        usage.by_day.keys()
    );
}

/// A backfill of months of logs from two sources (the S3 tree and CloudWatch exports named by
/// day) is read in time order, not path order: in path order the whole S3 tree came first,
/// and the January exports were then more than the dedup window before the newest counted
/// hour and were refused. One worker and one record per batch, so batches follow file order.
#[test]
fn a_backfill_of_two_sources_is_read_in_time_order_and_nothing_falls_outside_the_window() {
    let s = Scratch::new("[ingest]\nworkers = 1\nbatch_records = 1");
    let s3 = "logs/AWSLogs/111122223333/BedrockModelInvocationLogs/us-east-1";
    let files = [
        (
            format!("{s3}/2025/01/05/10/20250105T100000Z_a1.json"),
            "ffffffff-0000-4000-8000-000000000001",
            "2025-01-05T10:01:00Z",
            1,
        ),
        (
            format!("{s3}/2025/03/20/10/20250320T100000Z_b2.json"),
            "ffffffff-0000-4000-8000-000000000002",
            "2025-03-20T10:01:00Z",
            20,
        ),
        (
            "logs/cloudwatch/2025-01-05.ndjson".to_string(),
            "ffffffff-0000-4000-8000-000000000003",
            "2025-01-05T03:00:00Z",
            300,
        ),
        (
            "logs/cloudwatch/2025-03-20.ndjson".to_string(),
            "ffffffff-0000-4000-8000-000000000004",
            "2025-03-20T03:00:00Z",
            4000,
        ),
    ];
    for (name, id, at, input) in &files {
        s.write(name, format!("{}\n", record(id, at, "acme", *input, 1)));
    }
    let report = s.ingest(&[s.path("logs")]);
    assert_eq!((report.received, report.counted), (4, 4), "{report:?}");
    assert!(s.quarantined().is_empty(), "{:?}", s.quarantined());
    let store = s.store();
    let usage = |month| {
        tally::store::CounterStore::period_usage(&store, &tally::ids::TenantId::new("acme").unwrap(), month).unwrap()
    };
    assert_eq!(usage("2025-01").total.input, 1 + 300);
    assert_eq!(usage("2025-03").total.input, 20 + 4000);
}
