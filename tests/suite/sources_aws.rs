//! The S3 and CloudWatch Logs sources on a real local AWS API (moto server, started by
//! `tests/run-all.sh`): the same generated records give the same counters through files, S3
//! and CloudWatch Logs; 10% of calls failing and bodies cut off mid-stream lose and double
//! nothing; SIGKILLs mid-run followed by a restart end exact; late objects and new partitions
//! are found; the marker object is skipped and offloaded bodies are never fetched; `--follow`
//! picks up new objects and events and exits 0 on SIGTERM.
#![cfg(feature = "aws")]

use crate::support;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use support::aws::{self, files_under, new_bucket, put_object, remote, unique_name, upload_tree};
use support::aws_faults::SourceFaults;
use support::{kill, record, Scratch};
use tally::generate::{self, Spec, Truth, TruthRow};
use tally::ingest::{self, Inputs, Run, RunReport};
use tally::progress::NoProgress;
use tally::quarantine::Quarantine;
use tally::source::remote::Remote;
use tally::source::Input;
use tally::store::CounterStore;

const STREAM: &str = "aws/bedrock/modelinvocations";

/// Generated logs, their truth, and the config that matches them.
struct Fixture {
    logs: PathBuf,
    truth: Truth,
    config: String,
    month: String,
}

fn fixture(dir: &Path, records: u64) -> Fixture {
    let spec = Spec {
        out: dir.join("gen"),
        tenants: 8,
        records,
        body_bytes: 120,
        plain_fraction: 0.1,
        duplicate_fraction: 0.02,
        late_fraction: 0.02,
        records_per_object: 150,
        ..Spec::default()
    };
    let summary = generate::generate(&spec).unwrap();
    let truth = serde_json::from_str(&std::fs::read_to_string(&summary.truth).unwrap()).unwrap();
    let config = std::fs::read_to_string(&summary.config).unwrap();
    Fixture { logs: summary.logs, truth, config, month: spec.month }
}

/// A folder with the fixture's config, its own SQLite store, and `[sources]` pointing at
/// `endpoint`; `batch_records` small so objects and streams are committed part-way.
fn scratch(fx: &Fixture, endpoint: &str, batch_records: usize) -> Scratch {
    let s = Scratch::new("");
    let text =
        fx.config.replace("[ingest]\n", &format!("[ingest]\nbatch_records = {batch_records}\npoll_seconds = 0.2\n"));
    let text = format!("{text}\n[sources]\nendpoint_url = \"{endpoint}\"\nregion = \"us-east-1\"\n");
    std::fs::write(&s.config_path, text).unwrap();
    s
}

/// One pass over `inputs` through the library.
fn ingest(s: &Scratch, inputs: &[&str]) -> RunReport {
    let config = s.config();
    let pipeline = config.pipeline().unwrap();
    let settings = config.ingest_settings(false);
    let inputs: Vec<Input> = inputs.iter().map(|i| Input::parse(i).unwrap()).collect();
    let mut inputs = Inputs::new(inputs, &config.sources).unwrap();
    let mut store = s.store();
    let mut q = Quarantine::new(config.resolve(&config.ingest.quarantine));
    let mut run = Run {
        store: &mut store,
        pipeline: &pipeline,
        settings: &settings,
        quarantine: &mut q,
        shutdown: &AtomicBool::new(false),
        progress: &NoProgress,
    };
    ingest::run_pass(&mut inputs, &mut run).expect("ingest runs")
}

fn counters(s: &Scratch, month: &str) -> Vec<TruthRow> {
    kill::counters(&s.store(), month)
}

/// The lines of a log file, gunzipped if it is gzip.
fn lines_of(path: &Path) -> Vec<String> {
    let bytes = std::fs::read(path).unwrap();
    let mut text = String::new();
    if bytes.starts_with(&[0x1f, 0x8b]) {
        flate2::read::MultiGzDecoder::new(&bytes[..]).read_to_string(&mut text).unwrap();
    } else {
        text = String::from_utf8(bytes).unwrap();
    }
    text.lines().filter(|l| !l.trim().is_empty()).map(str::to_string).collect()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

fn new_log_group(r: &Remote, streams: &[&str]) -> String {
    let group = format!("/tally/test/{}", unique_name("g"));
    r.block_on(r.logs.create_log_group().log_group_name(&group).send()).unwrap();
    for s in streams {
        r.block_on(r.logs.create_log_stream().log_group_name(&group).log_stream_name(*s).send()).unwrap();
    }
    group
}

/// Puts `messages` into a stream as events a millisecond apart, in calls of at most 500.
fn put_events(r: &Remote, group: &str, stream: &str, messages: &[String]) {
    let start = now_ms() - 5_000;
    for (c, chunk) in messages.chunks(500).enumerate() {
        let mut req = r.logs.put_log_events().log_group_name(group).log_stream_name(stream);
        for (i, m) in chunk.iter().enumerate() {
            let ts = start + (c * 500 + i) as i64;
            req = req.log_events(
                aws_sdk_cloudwatchlogs::types::InputLogEvent::builder().timestamp(ts).message(m).build().unwrap(),
            );
        }
        let out = r.block_on(req.send()).unwrap();
        assert!(out.rejected_log_events_info().is_none(), "moto rejected events: {:?}", out.rejected_log_events_info());
    }
}

/// Every line of the fixture except the S3 marker object, spread over two streams.
fn fill_log_group(r: &Remote, fx: &Fixture) -> String {
    let group = new_log_group(r, &[STREAM, "second"]);
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for (i, path) in files_under(&fx.logs).iter().enumerate() {
        let target = if i % 3 == 2 { &mut b } else { &mut a };
        target.extend(lines_of(path));
    }
    put_events(r, &group, STREAM, &a);
    put_events(r, &group, "second", &b);
    group
}

/// What a CloudWatch Logs ingest of the fixture must find: the truth without the marker object.
fn truth_without_marker(t: &Truth) -> (u64, u64, u64) {
    (t.received - 1, t.counted, t.duplicates)
}

fn sorted(rows: Vec<TruthRow>) -> Vec<TruthRow> {
    kill::sorted(rows)
}

#[test]
fn files_s3_and_cloudwatch_give_the_same_counters() {
    let Some(ep) = aws::endpoint() else { return };
    let dir = tempfile::tempdir().unwrap();
    let fx = fixture(dir.path(), 6_000);
    let r = remote(&ep);
    let bucket = new_bucket(&r);
    upload_tree(&r, &bucket, "bedrock/", &fx.logs);
    let group = fill_log_group(&r, &fx);

    let from_files = scratch(&fx, &ep, 2_000);
    let f = from_files.ingest(std::slice::from_ref(&fx.logs));
    let from_s3 = scratch(&fx, &ep, 2_000);
    let s = ingest(&from_s3, &[&format!("s3://{bucket}/bedrock/")]);
    let from_logs = scratch(&fx, &ep, 2_000);
    let l = ingest(&from_logs, &[&format!("cloudwatch://{group}")]);

    let truth = sorted(fx.truth.rows.clone());
    assert_eq!(counters(&from_files, &fx.month), truth, "files");
    assert_eq!(counters(&from_s3, &fx.month), truth, "s3");
    assert_eq!(counters(&from_logs, &fx.month), truth, "cloudwatch");
    assert_eq!((f.received, f.counted, f.duplicates), (s.received, s.counted, s.duplicates));
    assert_eq!(s.skipped, f.skipped, "the marker object and the permission-check event are skipped alike");
    assert_eq!((l.received, l.counted, l.duplicates), truth_without_marker(&fx.truth));
    assert_eq!(l.skipped.get("permission_check"), Some(&1));

    // A second pass finds nothing new anywhere.
    let again = (
        ingest(&from_s3, &[&format!("s3://{bucket}/bedrock/")]),
        ingest(&from_logs, &[&format!("cloudwatch://{group}")]),
    );
    assert_eq!((again.0.received, again.1.received), (0, 0));
}

#[test]
fn ten_percent_of_calls_failing_and_cut_bodies_lose_and_double_nothing() {
    let Some(ep) = aws::endpoint() else { return };
    let dir = tempfile::tempdir().unwrap();
    let fx = fixture(dir.path(), 5_000);
    let r = remote(&ep);
    let bucket = new_bucket(&r);
    upload_tree(&r, &bucket, "", &fx.logs);
    let group = fill_log_group(&r, &fx);
    let faults = SourceFaults::start(&ep, 10, 7);

    // Small batches: objects and streams are committed part-way, so a cut body resumes
    // from a checkpoint inside the object.
    let s = scratch(&fx, &faults.url, 100);
    let report = ingest(&s, &[&format!("s3://{bucket}"), &format!("cloudwatch://{group}")]);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert!(faults.errors.load(Ordering::Relaxed) >= 10, "too few injected errors to mean anything");
    assert!(faults.cuts.load(Ordering::Relaxed) >= 3, "too few bodies cut to mean anything");
    // Every record arrives twice (S3 and CloudWatch); each counts once.
    assert_eq!(counters(&s, &fx.month), sorted(fx.truth.rows.clone()));
    let totals = s.store().totals().unwrap();
    assert_eq!(totals.counted, fx.truth.counted);
    assert_eq!(totals.received, fx.truth.received + truth_without_marker(&fx.truth).0);
    let again = ingest(&s, &[&format!("s3://{bucket}"), &format!("cloudwatch://{group}")]);
    assert_eq!(again.received, 0);
}

#[test]
fn marker_object_is_skipped_and_offloaded_bodies_are_never_fetched() {
    let Some(ep) = aws::endpoint() else { return };
    let r = remote(&ep);
    let bucket = new_bucket(&r);
    let root = "AWSLogs/111122223333/BedrockModelInvocationLogs/";
    let hour = format!("{root}us-east-1/2025/11/03/10/");
    let body_key = format!("{hour}data/dddddddd-0000-4000-8000-000000000001_input.json.gz");
    let offloaded = record("dddddddd-0000-4000-8000-000000000001", "2025-11-03T10:01:00Z", "acme", 100, 5).replace(
        r#""inputTokenCount":100"#,
        &format!(r#""inputBodyS3Path":"s3://{bucket}/{body_key}","inputTokenCount":100"#),
    );
    let plain = record("dddddddd-0000-4000-8000-000000000002", "2025-11-03T10:02:00Z", "acme", 7, 1);
    put_object(&r, &bucket, &format!("{root}amazon-bedrock-logs-permission-check"), Vec::new());
    put_object(&r, &bucket, &format!("{hour}20251103T100500Z_0001.json.gz"), gzip(&format!("{offloaded}\n{plain}\n")));
    put_object(&r, &bucket, &body_key, gzip("{\"messages\":\"a very large prompt\"}"));

    let proxy = SourceFaults::start(&ep, 0, 1);
    let s = Scratch::new(&format!("[sources]\nendpoint_url = \"{}\"\nregion = \"us-east-1\"\n", proxy.url));
    let report = ingest(&s, &[&format!("s3://{bucket}")]);
    assert_eq!((report.received, report.counted), (3, 2));
    assert_eq!(report.skipped.get("marker_object"), Some(&1));
    assert!(s.quarantined().is_empty(), "{:?}", s.quarantined());
    let u = s.store().period_usage(&tally::ids::TenantId::new("acme").unwrap(), "2025-11").unwrap();
    assert_eq!((u.total.requests, u.total.input, u.total.output), (2, 107, 6));
    assert_eq!(proxy.requests_with("/data/"), Vec::<String>::new(), "an offloaded body was fetched");
    assert_eq!(proxy.requests_with("permission-check"), Vec::<String>::new(), "the marker object was fetched");
    assert_eq!(proxy.requests_with("20251103T100500Z_0001").len(), 1, "the log object is fetched once");
}

/// Kinesis Data Firehose delivers CloudWatch Logs subscription data to S3 as objects with no
/// extension, each several gzip members of subscription payloads written back to back (with a
/// control message among them): recognised by their bytes, read record by record.
#[test]
fn firehose_objects_of_back_to_back_payloads_are_read_from_s3() {
    let Some(ep) = aws::endpoint() else { return };
    let r = remote(&ep);
    let bucket = new_bucket(&r);
    let rec =
        |n: u32| record(&format!("abababab-0000-4000-8000-{n:012}"), "2025-11-03T10:10:00Z", "acme", u64::from(n), 1);
    let payload = |ids: std::ops::Range<u32>| {
        let events: Vec<serde_json::Value> = ids
            .map(|n| serde_json::json!({"id": n.to_string(), "timestamp": 1762164600000u64, "message": rec(n)}))
            .collect();
        serde_json::json!({"messageType": "DATA_MESSAGE", "owner": "111122223333", "logGroup": "/aws/bedrock/invocations",
            "logStream": "aws/bedrock/modelinvocations", "subscriptionFilters": ["to-firehose"], "logEvents": events}).to_string()
    };
    let control = r#"{"messageType":"CONTROL_MESSAGE","owner":"CloudwatchLogs","logGroup":"","logStream":"","subscriptionFilters":[],"logEvents":[{"id":"","timestamp":1762164600000,"message":"CWL CONTROL MESSAGE: Checking health of destination Firehose."}]}"#;
    let object: Vec<u8> = [control.to_string(), payload(1..4), payload(4..6)].iter().flat_map(|p| gzip(p)).collect();
    put_object(&r, &bucket, "firehose/2025/11/03/10/bedrock-to-s3-1-2025-11-03-10-10-00-0a1b2c3d", object);
    let s = Scratch::new(&format!("[sources]\nendpoint_url = \"{ep}\"\nregion = \"us-east-1\"\n"));
    let report = ingest(&s, &[&format!("s3://{bucket}/firehose/")]);
    assert_eq!(
        (report.received, report.counted, report.skipped.get("control_message").copied()),
        (6, 5, Some(1)),
        "{report:?}"
    );
    assert!(s.quarantined().is_empty(), "{:?}", s.quarantined());
    let u = s.store().period_usage(&tally::ids::TenantId::new("acme").unwrap(), "2025-11").unwrap();
    assert_eq!(u.total.input, 1 + 2 + 3 + 4 + 5);
    assert_eq!(ingest(&s, &[&format!("s3://{bucket}/firehose/")]).received, 0);
}

fn gzip(text: &str) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, text.as_bytes()).unwrap();
    gz.finish().unwrap()
}

#[test]
fn late_objects_within_the_lookback_and_new_regions_are_read() {
    let Some(ep) = aws::endpoint() else { return };
    let r = remote(&ep);
    let bucket = new_bucket(&r);
    let part = |region: &str| format!("AWSLogs/111122223333/BedrockModelInvocationLogs/{region}/");
    let rec = |n: u32, ts: &str| record(&format!("eeeeeeee-0000-4000-8000-{n:012}"), ts, "acme", u64::from(n), 1);
    put_object(
        &r,
        &bucket,
        &format!("{}2025/11/03/10/b.json.gz", part("us-east-1")),
        gzip(&rec(1, "2025-11-03T10:10:00Z")),
    );
    put_object(
        &r,
        &bucket,
        &format!("{}2025/11/03/12/a.json.gz", part("us-east-1")),
        gzip(&rec(2, "2025-11-03T12:10:00Z")),
    );
    let s =
        Scratch::new(&format!("[sources]\nendpoint_url = \"{ep}\"\nregion = \"us-east-1\"\ns3_lookback_hours = 3\n"));
    let url = format!("s3://{bucket}");
    assert_eq!(ingest(&s, &[&url]).counted, 2);

    // Landing now, with keys before the newest counted one: same hour, earlier hour, and a
    // region whose keys sort before everything counted so far.
    put_object(
        &r,
        &bucket,
        &format!("{}2025/11/03/10/a.json.gz", part("us-east-1")),
        gzip(&rec(3, "2025-11-03T10:20:00Z")),
    );
    put_object(
        &r,
        &bucket,
        &format!("{}2025/11/03/11/z.json.gz", part("us-east-1")),
        gzip(&rec(4, "2025-11-03T11:20:00Z")),
    );
    put_object(
        &r,
        &bucket,
        &format!("{}2025/11/01/00/a.json.gz", part("eu-west-1")),
        gzip(&rec(5, "2025-11-01T00:20:00Z")),
    );
    let second = ingest(&s, &[&url]);
    assert_eq!((second.received, second.counted), (3, 3));
    let u = s.store().period_usage(&tally::ids::TenantId::new("acme").unwrap(), "2025-11").unwrap();
    assert_eq!(u.total.input, 1 + 2 + 3 + 4 + 5);
    assert_eq!(ingest(&s, &[&url]).received, 0);
}

/// `tally ingest` on S3 and CloudWatch Logs at once, SIGKILLed at random points and
/// restarted, ends with the truth.
#[test]
fn sigkill_mid_run_then_restart_gives_exact_counters() {
    let Some(ep) = aws::endpoint() else { return };
    let dir = tempfile::tempdir().unwrap();
    let fx = fixture(dir.path(), 8_000);
    let r = remote(&ep);
    let bucket = new_bucket(&r);
    upload_tree(&r, &bucket, "logs/", &fx.logs);
    let group = fill_log_group(&r, &fx);
    let inputs = [format!("s3://{bucket}/logs/"), format!("cloudwatch://{group}")];
    let probe = scratch(&fx, &ep, 300);
    let s = scratch(&fx, &ep, 300);
    let run = |s: &Scratch| {
        let mut c = s.tally();
        c.arg("ingest").args(&inputs).stdout(Stdio::null()).stderr(Stdio::null());
        c
    };
    let started = Instant::now();
    assert!(run(&probe).status().unwrap().success());
    let full_ms = started.elapsed().as_millis().max(50) as u64;

    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    eprintln!("kill-time seed {seed}, a full run takes {full_ms} ms");
    let mut rng = kill::Lcg(seed);
    let (kills, mut mid_run) = (12, 0);
    for _ in 0..kills {
        let mut child = run(&s).spawn().unwrap();
        // Each attempt goes on from the last checkpoint, so lifetimes stay short (together
        // about half a full run) to keep the kills landing mid-run.
        std::thread::sleep(Duration::from_millis(5 + rng.below(full_ms / 12)));
        if child.try_wait().unwrap().is_none() {
            mid_run += 1;
        }
        child.kill().unwrap();
        child.wait().unwrap();
    }
    assert!(mid_run >= kills * 2 / 3, "only {mid_run} of {kills} kills landed mid-run");
    assert!(run(&s).status().unwrap().success());
    assert_eq!(counters(&s, &fx.month), sorted(fx.truth.rows.clone()));
    let totals = s.store().totals().unwrap();
    assert_eq!(totals.counted, fx.truth.counted);
    assert!(s.quarantined().is_empty(), "{:?}", &s.quarantined()[..1]);
}

#[test]
fn follow_picks_up_new_objects_and_events_and_sigterm_exits_zero() {
    let Some(ep) = aws::endpoint() else { return };
    let r = remote(&ep);
    let bucket = new_bucket(&r);
    let group = new_log_group(&r, &[STREAM]);
    let s = Scratch::new(&format!(
        "[ingest]\npoll_seconds = 0.2\n[sources]\nendpoint_url = \"{ep}\"\nregion = \"us-east-1\"\n"
    ));
    let mut child = s
        .tally()
        .arg("ingest")
        .arg("--follow")
        .arg(format!("s3://{bucket}/AWSLogs/"))
        .arg(format!("cloudwatch://{group}"))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let wait_for = |n: u64| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if s.store().totals().map(|t| t.counted).unwrap_or(0) >= n {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("follow never counted {n} records");
    };
    let rec = |n: u32| record(&format!("ffffffff-0000-4000-8000-{n:012}"), "2025-11-05T02:00:00Z", "acme", 1, 1);
    let key = |n: u32| format!("AWSLogs/111122223333/BedrockModelInvocationLogs/us-east-1/2025/11/05/02/{n}.json.gz");
    put_object(&r, &bucket, &key(1), gzip(&rec(1)));
    wait_for(1);
    put_events(&r, &group, STREAM, &[crate_permission_check(), rec(2), "not json".to_string()]);
    wait_for(2);
    put_object(&r, &bucket, &key(3), gzip(&format!("{}\n{}\n", rec(3), rec(2))));
    wait_for(3);
    let status = std::process::Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    assert!(status.success());
    assert_eq!(child.wait().unwrap().code(), Some(0));
    let totals = s.store().totals().unwrap();
    assert_eq!((totals.received, totals.counted, totals.duplicates), (6, 3, 1));
    let quarantined = s.quarantined();
    assert_eq!(quarantined.len(), 1, "{quarantined:?}");
    assert_eq!(quarantined[0]["reason"], "non_json");
    assert_eq!(quarantined[0]["source"], format!("cloudwatch://{group}?stream={STREAM}"));
}

fn crate_permission_check() -> String {
    tally::source::PERMISSION_CHECK_TEXT.to_string()
}
