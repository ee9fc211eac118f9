//! SPEC §1.1 "Reading exports": a bad record costs that record, never the file, whatever line
//! it is on (the first included) and whatever the file's shape; exports of any size are read
//! element by element; a file refused whole is a failed file, named, exit 4.

use crate::support;

use std::io::Write;

use proptest::prelude::*;
use serde_json::{json, Value};
use support::{record, repo, Scratch};

/// `n` distinct good records, one day apart by the second.
fn records(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let id = format!("eeeeeeee-0000-4000-8000-{i:012}");
            let ts = format!("2025-11-06T{:02}:{:02}:{:02}Z", i / 3600 % 24, i / 60 % 60, i % 60);
            record(&id, &ts, &format!("t{}", i % 3), 10 + i as u64, 1 + i as u64)
        })
        .collect()
}

/// Ways one record goes bad.
#[derive(Debug, Clone, Copy)]
enum Damage {
    /// Cut short at `at` (a fraction of its length), as a crashed writer leaves it.
    Truncate(f64),
    /// One byte that is not UTF-8 at `at`.
    BadUtf8(f64),
    /// A token count that is a string.
    WrongType,
    /// A line of text that is not JSON; `true`: one that starts like an array, as a log
    /// line's level often does (`[ERROR] …`).
    Garbage(bool),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        (0.0..1.0f64).prop_map(Damage::Truncate),
        (0.0..1.0f64).prop_map(Damage::BadUtf8),
        Just(Damage::WrongType),
        any::<bool>().prop_map(Damage::Garbage),
    ]
}

/// `text` (one record's JSON) damaged; never empty, never with a line break.
fn damaged(text: &str, d: Damage) -> Vec<u8> {
    let b = text.as_bytes();
    match d {
        Damage::Truncate(at) => b[..1 + ((b.len() - 2) as f64 * at) as usize].to_vec(),
        Damage::BadUtf8(at) => {
            let mut b = b.to_vec();
            let i = ((b.len() - 1) as f64 * at) as usize;
            b[i] = 0xFF;
            b
        }
        Damage::WrongType => {
            let key = "\"inputTokenCount\":";
            let i = text.find(key).unwrap() + key.len();
            let j = i + text[i..].find(|c: char| !c.is_ascii_digit()).unwrap();
            format!("{}\"{}\"{}", &text[..i], &text[i..j], &text[j..]).into_bytes()
        }
        Damage::Garbage(false) => b"ERROR 2025-11-06 worker restarted: connection reset by peer".to_vec(),
        Damage::Garbage(true) => b"[ERROR] 2025-11-06 worker restarted: connection reset by peer".to_vec(),
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// Ingests `bytes` as `name` and checks: every other record counted, one quarantined, named
/// by this file and `line`.
fn exactly_one_lost(name: &str, bytes: &[u8], n: usize, line: u64) -> Result<(), TestCaseError> {
    let s = Scratch::new("");
    let path = s.write(name, bytes);
    let report = s.ingest(&[path]);
    prop_assert!(report.balanced(), "{report:?}");
    prop_assert_eq!(
        (report.received, report.counted, report.skipped_total()),
        (n as u64, n as u64 - 1, 1),
        "{:?}",
        report
    );
    let q = s.quarantined();
    prop_assert_eq!(q.len(), 1, "{:?}", q);
    prop_assert!(q[0]["source"].as_str().unwrap().ends_with(name), "{:?}", q);
    prop_assert_eq!(q[0]["line"].as_u64(), Some(line), "{:?}", q);
    Ok(())
}

/// An export the way `aws logs filter-log-events` prints it: 4-space indent, each record a
/// JSON string in `message`. Returns the text and the line each event starts on.
fn cli_export(messages: &[Value]) -> (String, Vec<u64>) {
    let events: Vec<Value> = messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            json!({"logStreamName": "aws/bedrock/modelinvocations", "timestamp": 1762387200000u64 + i as u64,
                   "message": m, "ingestionTime": 1762387201000u64 + i as u64, "eventId": format!("{i:056}")})
        })
        .collect();
    let doc = json!({"events": events, "searchedLogStreams": []});
    let mut out = Vec::new();
    let mut ser =
        serde_json::Serializer::with_formatter(&mut out, serde_json::ser::PrettyFormatter::with_indent(b"    "));
    serde::Serialize::serialize(&doc, &mut ser).unwrap();
    let text = String::from_utf8(out).unwrap();
    // Each event starts on a line that is `{` indented by eight spaces.
    let starts = text.lines().enumerate().filter(|(_, l)| *l == "        {").map(|(i, _)| i as u64 + 1).collect();
    (text, starts)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Any line of an NDJSON file, the first included, damaged any way: that record lost,
    /// every other counted.
    #[test]
    fn one_bad_line_of_ndjson_costs_one_record(n in 1usize..12, k in 0usize..12, d in damage(), gz in any::<bool>()) {
        let k = k % n;
        let mut lines: Vec<Vec<u8>> = records(n).into_iter().map(String::into_bytes).collect();
        lines[k] = damaged(std::str::from_utf8(&lines[k]).unwrap(), d);
        let mut bytes = lines.join(&b'\n');
        bytes.push(b'\n');
        let (name, bytes) = if gz { ("logs.json.gz", gzip(&bytes)) } else { ("logs.ndjson", bytes) };
        exactly_one_lost(name, &bytes, n, k as u64 + 1)?;
    }

    /// One event of a pretty-printed export damaged: in its message (cut, not UTF-8, a wrong
    /// type, not JSON) or in the export's own syntax (its line cut short).
    #[test]
    fn one_bad_event_of_an_export_costs_one_record(n in 1usize..10, k in 0usize..10, d in damage(), cut_the_line in any::<bool>(), gz in any::<bool>()) {
        let k = k % n;
        let recs = records(n);
        let mut messages: Vec<Value> = recs.iter().map(|r| Value::String(r.clone())).collect();
        if !cut_the_line {
            messages[k] = match d {
                Damage::WrongType => json!(12),
                _ => Value::String(String::from_utf8_lossy(&damaged(&recs[k], d)).into_owned()),
            };
        }
        let (text, starts) = cli_export(&messages);
        let mut bytes = text.into_bytes();
        if matches!(d, Damage::BadUtf8(_)) && !cut_the_line {
            // The lossy replacement character above stands where a raw bad byte goes.
            let at = memchr::memmem::find(&bytes, "\u{FFFD}".as_bytes()).unwrap();
            bytes.splice(at..at + 3, [0xFF]);
        }
        if cut_the_line {
            // The message line of event k, cut in the middle of its string.
            let message_line = starts[k] as usize + 2;
            let mut lines: Vec<Vec<u8>> = bytes.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect();
            let l = &mut lines[message_line];
            l.truncate(l.len() / 2);
            bytes = lines.join(&b'\n');
        }
        let (name, bytes) = if gz { ("export.json.gz", gzip(&bytes)) } else { ("export.json", bytes) };
        exactly_one_lost(name, &bytes, n, starts[k])?;
    }
}

/// The case the issue was filed on: a cut first line took the whole file for one bad document.
#[test]
fn a_cut_first_line_costs_only_that_line() {
    let recs = records(500);
    let mut text = recs[0][..40].to_string();
    for r in &recs[1..] {
        text.push('\n');
        text.push_str(r);
    }
    let s = Scratch::new("");
    let path = s.write("2025-11-06.ndjson", &text);
    let report = s.ingest(&[path]);
    assert_eq!((report.received, report.counted, report.skipped.get("malformed_json").copied()), (500, 499, Some(1)));
    assert_eq!(s.quarantined()[0]["line"], 1);
    assert_eq!(report.files_failed, 0);
}

/// A file whose contents are refused whole is a failed file: named, exit 4, never a quiet
/// balanced run.
#[test]
fn a_file_refused_whole_is_a_failed_file_with_exit_4() {
    let s = Scratch::new("");
    let bad = s.write("broken-export.json", b"{\"events\": [\n  {\"message\": \"{\\\"requestId\\\": \n");
    let good = s.write("good.ndjson", format!("{}\n", records(1)[0]));
    let out = s.tally().args(["ingest", "--json"]).arg(&bad).arg(&good).output().unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", String::from_utf8_lossy(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["files_failed"], 1);
    assert_eq!(report["counted"], 1);
    let errors = report["errors"].as_array().unwrap();
    assert!(errors[0].as_str().unwrap().contains("broken-export.json"), "{errors:?}");
    // `tally status` tells it too, with the quarantine.
    let status = s.tally().args(["status", "--json"]).output().unwrap();
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["quarantined"], 1, "{status}");
    assert_eq!(status["last_run"]["files_failed"], 1, "{status}");
    assert!(status["last_run"]["failed"][0].as_str().unwrap().contains("broken-export.json"), "{status}");
    // Read again unchanged, it is not reported again, and `status` still shows the last run
    // that read something.
    let again = s.tally().arg("ingest").arg(&bad).output().unwrap();
    assert_eq!(again.status.code(), Some(0));
    let status = s.tally().args(["status", "--json"]).output().unwrap();
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["last_run"]["files_failed"], 1, "{status}");
    // Printed for a person, with the reason.
    let other = s.write("broken-too.json", b"{\"events\": [\n  {\"message\": 12}\n");
    let out = s.tally().arg("ingest").arg(&other).output().unwrap();
    assert_eq!(out.status.code(), Some(4));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("failed:") && text.contains("broken-too.json") && text.contains("wrong_type"), "{text}");
}

/// The real CloudWatch records in every shape of §1.1 that the older suite does not cover.
#[test]
fn every_export_shape_of_the_real_records_is_counted() {
    let doc: Value = serde_json::from_str(
        &std::fs::read_to_string(repo(
            "fixtures/realdata/bedrock-invocation-logs-cwl-requestmetadata/bedrock_log_example_masked.json",
        ))
        .unwrap(),
    )
    .unwrap();
    let recs: Vec<Value> = doc["events"].as_array().unwrap().iter().map(|e| e["message"].clone()).collect();
    let n = recs.len() as u64;
    let events = |from: usize| -> Vec<Value> {
        recs.iter().enumerate().map(|(i, r)| json!({"id": format!("{}", from + i), "timestamp": 1764759284000u64, "message": r.to_string()})).collect()
    };
    let payload = |evs: Vec<Value>| {
        json!({"messageType": "DATA_MESSAGE", "owner": "111122223333", "logGroup": "/aws/bedrock/invocations",
               "logStream": "aws/bedrock/modelinvocations", "subscriptionFilters": ["to-firehose"], "logEvents": evs})
    };
    let control = json!({"messageType": "CONTROL_MESSAGE", "owner": "CloudwatchLogs", "logGroup": "", "logStream": "",
        "subscriptionFilters": [], "logEvents": [{"id": "", "timestamp": 1764759284000u64,
        "message": "CWL CONTROL MESSAGE: Checking health of destination Firehose."}]});
    // Firehose: payloads back to back, no separator, each its own gzip member, no extension.
    let firehose: Vec<u8> = [control.to_string(), payload(events(0)).to_string(), payload(events(100)).to_string()]
        .iter()
        .flat_map(|p| gzip(p.as_bytes()))
        .collect();
    let concatenated = format!("{}{}", payload(events(0)), payload(events(100)));
    // Logs Insights saved by PowerShell's ConvertTo-Json: one flat list of cells, BOM, pretty.
    let flat_cells: Vec<Value> = recs
        .iter()
        .enumerate()
        .flat_map(|(i, r)| {
            [
                json!({"field": "@timestamp", "value": "2025-12-03 10:54:44.000"}),
                json!({"field": "@message", "value": r.to_string()}),
                json!({"field": "@ptr", "value": format!("ptr{i}")}),
            ]
        })
        .collect();
    let flattened = [
        b"\xEF\xBB\xBF".as_slice(),
        serde_json::to_string_pretty(&json!({"results": flat_cells, "status": "Complete"}))
            .unwrap()
            .replace('\n', "\r\n")
            .as_bytes(),
    ]
    .concat();
    // Insights rows whose @message is an object, and an export merged by the CLI as one line.
    let object_rows: Vec<Value> = recs
        .iter()
        .map(|r| json!([{"field": "@message", "value": r}, {"field": "@logStream", "value": "s"}]))
        .collect();
    let one_line = json!({"events": events(0), "searchedLogStreams": []}).to_string();
    let shapes: Vec<(&str, Vec<u8>, u64, u64)> = vec![
        // (name, bytes, counted, skipped as expected)
        ("firehose-1-2025-12-03-10-55-00-abcd", firehose, 2 * n, 1),
        ("payloads.json", concatenated.into_bytes(), 2 * n, 0),
        ("insights-powershell.json", flattened, n, 0),
        ("insights-objects.json", serde_json::to_vec_pretty(&json!({"results": object_rows})).unwrap(), n, 0),
        ("one-line-export.json", one_line.into_bytes(), n, 0),
    ];
    for (name, bytes, counted, expected) in shapes {
        let s = Scratch::new("");
        let dir = s.path("logs");
        s.write(&format!("logs/{name}"), &bytes);
        let report = s.ingest(&[dir]);
        assert_eq!(
            (report.counted, report.duplicates, report.skipped_total()),
            (counted.min(n), counted - counted.min(n), expected),
            "{name}: {report:?}"
        );
        assert!(report.balanced(), "{name}");
        assert_eq!(report.files_read, 1, "{name}: found by its content");
        assert!(s.quarantined().is_empty(), "{name}: {:?}", s.quarantined());
    }
}

/// An export longer than `max_record_bytes` is read element by element: the limit bounds one
/// record, never the export.
#[test]
fn an_export_longer_than_the_record_limit_is_read_whole() {
    let recs = records(400);
    let (text, _) = cli_export(&recs.iter().map(|r| Value::String(r.clone())).collect::<Vec<_>>());
    assert!(text.len() > 200_000);
    let s = Scratch::new("[ingest]\nmax_record_bytes = 4096");
    let path = s.write("filter-log-events.json", &text);
    let report = s.ingest(&[path]);
    assert_eq!((report.received, report.counted), (400, 400), "{report:?}");
    // One record over the limit costs that record.
    let mut big = recs.clone();
    big[7] = big[7].replace("\"accountId\"", &format!("\"pad\":\"{}\",\"accountId\"", "x".repeat(5000)));
    let (text, starts) = cli_export(&big.iter().map(|r| Value::String(r.clone())).collect::<Vec<_>>());
    let s = Scratch::new("[ingest]\nmax_record_bytes = 4096");
    let path = s.write("filter-log-events.json", &text);
    let report = s.ingest(&[path]);
    assert_eq!(
        (report.received, report.counted, report.skipped.get("line_too_long").copied()),
        (400, 399, Some(1)),
        "{report:?}"
    );
    assert_eq!(s.quarantined()[0]["line"].as_u64(), Some(starts[7]));
}

/// Stops a run once its first batch is committed, as SIGTERM does.
struct StopAfterFirstBatch<'a>(&'a std::sync::atomic::AtomicBool);

impl tally::progress::Progress for StopAfterFirstBatch<'_> {
    fn start(&self, _total: u64) {}
    fn update(&self, _bytes: u64, records: u64) {
        if records > 0 {
            self.0.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
    fn finish(&self) {}
}

/// One ingest pass over `path`, stopped once its first batch is committed.
fn stopped_after_its_first_batch(s: &Scratch, path: &std::path::Path) -> tally::ingest::RunReport {
    let config = s.config();
    let pipeline = config.pipeline().unwrap();
    let settings = config.ingest_settings(false);
    let mut q = tally::quarantine::Quarantine::new(config.resolve(&config.ingest.quarantine));
    let stop = std::sync::atomic::AtomicBool::new(false);
    let paths = [path.to_path_buf()];
    let mut run = tally::ingest::Run {
        store: &mut s.store(),
        pipeline: &pipeline,
        settings: &settings,
        quarantine: &mut q,
        shutdown: &stop,
        progress: &StopAfterFirstBatch(&stop),
    };
    tally::ingest::run_once(&paths, &mut run).unwrap()
}

/// A read stopped part-way through an export goes on where it stopped: never skipping the
/// rest (the file has not changed, but it was not read to its end), never counting twice.
#[test]
fn an_export_read_part_way_goes_on_where_it_stopped() {
    let recs = records(3000);
    let (text, _) = cli_export(&recs.iter().map(|r| Value::String(r.clone())).collect::<Vec<_>>());
    let s = Scratch::new("[ingest]\nbatch_records = 100\ncommit_records = 100\nworkers = 1");
    let path = s.write("export.json", &text);
    let first = stopped_after_its_first_batch(&s, &path);
    assert!(first.counted > 0 && first.counted < 3000, "stopped part-way: {first:?}");
    let rest = s.ingest(std::slice::from_ref(&path));
    assert_eq!((rest.files_unchanged, rest.duplicates), (0, 0), "{rest:?}");
    assert_eq!(first.counted + rest.counted, 3000, "{first:?} {rest:?}");
    assert_eq!(s.ingest(&[path]).files_unchanged, 1, "read to its end: unchanged");
}

/// The same for NDJSON: a file stopped between two batches is not taken as unchanged.
#[test]
fn an_ndjson_file_read_part_way_goes_on_where_it_stopped() {
    let text: String = records(3000).iter().map(|r| format!("{r}\n")).collect();
    let s = Scratch::new("[ingest]\nbatch_records = 100\ncommit_records = 100\nworkers = 1");
    let path = s.write("2025-11-06.ndjson", &text);
    let first = stopped_after_its_first_batch(&s, &path);
    assert!(first.counted > 0 && first.counted < 3000, "stopped part-way: {first:?}");
    let rest = s.ingest(&[path]);
    assert_eq!(first.counted + rest.counted, 3000, "{first:?} {rest:?}");
}

/// A `FilterLogEvents` export of 300 MB (written here, not committed), read by the `tally`
/// binary: every record counted, in memory bounded by one record, not the export. The limit
/// is the ingest memory target (64 MB, README "Ingest throughput"), measured by the kernel
/// for that one process (`wait4`).
#[cfg(target_os = "linux")]
#[test]
// The child is waited for by `wait4`, which also reads its peak RSS.
#[allow(clippy::zombie_processes)]
fn a_300_mb_export_is_counted_whole_in_bounded_memory() {
    let s = Scratch::new("");
    let path = s.path("filter-log-events.json");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    let body = "Summarise the quarterly usage report for the finance team. ".repeat(24);
    out.write_all(b"{\n    \"events\": [\n").unwrap();
    let (mut written, mut n) = (0usize, 0u64);
    while written < 300_000_000 {
        let r = record(
            &format!("ffffffff-0000-4000-8000-{n:012}"),
            &format!("2025-11-{:02}T{:02}:{:02}:00Z", 3 + n % 5, n / 60 % 24, n % 60),
            &format!("t{}", n % 7),
            100 + n % 50,
            20,
        );
        // A realistic body, so events are about 2 KB as in real logs.
        let r = r.replacen("\"inputTokenCount\"", &format!("\"inputBodyJson\":{{\"messages\":[{{\"role\":\"user\",\"content\":[{{\"text\":\"{body}\"}}]}}]}},\"inputTokenCount\""), 1);
        let event = format!(
            "{}        {{\n            \"logStreamName\": \"aws/bedrock/modelinvocations\",\n            \"timestamp\": {},\n            \"message\": {},\n            \"ingestionTime\": {},\n            \"eventId\": \"{:056}\"\n        }}",
            if n == 0 { "" } else { ",\n" },
            1762128000000u64 + n,
            serde_json::to_string(&r).unwrap(),
            1762128001000u64 + n,
            n
        );
        out.write_all(event.as_bytes()).unwrap();
        written += event.len();
        n += 1;
    }
    out.write_all(b"\n    ],\n    \"searchedLogStreams\": []\n}\n").unwrap();
    out.flush().unwrap();
    drop(out);

    let child = s.tally().args(["ingest", "--json"]).arg(&path).stdout(std::process::Stdio::piped()).spawn().unwrap();
    let pid = child.id() as libc::pid_t;
    let mut stdout = child.stdout.unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut text).unwrap();
    let (mut status, mut usage) = (0, unsafe { std::mem::zeroed::<libc::rusage>() });
    // SAFETY: waits for our own child, writing into the two locals.
    assert_eq!(unsafe { libc::wait4(pid, &mut status, 0, &mut usage) }, pid);
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "exit status {status}");
    let report: Value = serde_json::from_str(&text).unwrap();
    assert_eq!((report["received"].as_u64(), report["counted"].as_u64()), (Some(n), Some(n)), "{report}");
    let peak_mb = usage.ru_maxrss as f64 / 1024.0;
    eprintln!("300 MB export: {n} records, peak RSS {peak_mb:.1} MB");
    assert!(peak_mb <= 64.0, "peak RSS {peak_mb:.1} MB is over the ingest memory target of 64 MB");
}
