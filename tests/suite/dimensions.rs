//! Every dimension Bedrock bills besides tokens (SPEC §2), end to end: the real-shaped records
//! of `fixtures/dimensions` (each shape's source in its `SOURCE.md`) through `tally ingest`,
//! into the counters, out of `tally meter` (table and `--json`) and `GET /v1/usage`, with
//! every count and the list-price estimate worked out by hand below.

use crate::support;

use serde_json::Value;
use support::serve::Server;
use support::{record, Scratch};

const KEY: &str = "tly_acme_dimensions_0123456789";

/// What the thirteen records add up to, per counter (`fixtures/dimensions/SOURCE.md`).
const WANT: [(&str, u64); 12] = [
    ("requests", 13),
    // 2 in the envelope (Nova Canvas) + 3 in the body (Titan).
    ("images", 5),
    // Nova Reel's 6.0 s out + Pegasus's 30 s in.
    ("video_ms", 36_000),
    // Marengo's 12.5 s in.
    ("audio_ms", 12_500),
    // 4 documents: one search unit; then 2 as Cohere billed them.
    ("search_units", 3),
    // 1,000 (InvokeModel) + 31,814 (stream) + 500 (Converse).
    ("cache_write", 33_314),
    // 600 + 31,814 + 200: what the bodies say of TTLs.
    ("cache_write_1h", 32_614),
    // The envelope's, and the Converse request served optimized; not the one served standard.
    ("latency_optimized", 2),
    // ap-southeast-4 and us-west-2 for us-east-1; us-east-2 for us-east-2 is not.
    ("cross_region", 2),
    ("input", 3 + 3 + 10 + 100 + 10 + 10),
    ("output", 200 + 130 + 130 + 20 + 50 + 10 + 10),
    ("no_usage", 0),
];

/// The list price of each record, from the built-in catalog (per 1M tokens unless said).
fn want_cost() -> rust_decimal::Decimal {
    let d = |s: &str| s.parse::<rust_decimal::Decimal>().unwrap();
    let m = d("1000000");
    [
        d("2") * d("0.06"),                                // Nova Canvas, per image
        d("3") * d("0.008"),                               // Titan Image v2, per image
        d("6") * d("0.08"),                                // Nova Reel, per second
        d("12.5") * d("0.00014"),                          // Marengo, per audio second
        d("30") * d("0.00049") + d("200") * d("7.50") / m, // Pegasus
        d("0.002"),                                        // rerank, 1 unit
        d("2") * d("0.002"),                               // rerank, 2 units
        (d("3") * d("1") + d("130") * d("5") + d("400") * d("1.25") + d("600") * d("2")) / m, // 5 m and 1 h
        (d("3") * d("1") + d("130") * d("5") + d("31814") * d("2")) / m, // global.: the base prices
        (d("10") * d("1.1") + d("20") * d("5.5") + d("300") * d("1.375") + d("200") * d("2.2")) / m, // us.
        (d("100") * d("0.80") + d("50") * d("4.00")) / m,  // latency-optimized: no own price, standard
        d("20") * d("0.72") / m,
        d("20") * d("0.72") / m,
    ]
    .into_iter()
    .sum()
}

fn scratch() -> Scratch {
    let s = Scratch::new(&format!(
        "[[serve.keys]]\nhash = \"{}\"\ntenant = \"acme\"\n",
        tally::serve::auth::hash_text(KEY)
    ));
    let records = std::fs::read_to_string(support::repo("fixtures/dimensions/records.ndjson")).unwrap();
    let plain = record("plain-1", "2025-11-06T09:00:00Z", "globex", 40, 2);
    s.write("logs/dimensions.ndjson", records + &plain + "\n");
    let out = s.tally().arg("ingest").arg(s.path("logs")).output().unwrap();
    assert!(out.status.success(), "ingest: {}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("received 14 = counted 14 + duplicates 0 + skipped 0"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    s
}

fn meter_json(s: &Scratch, tenant: &str) -> Value {
    let out = s.tally().args(["meter", tenant, "--period", "2025-11", "--json"]).output().unwrap();
    assert!(out.status.success(), "meter: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn check_total(total: &Value, what: &str) {
    for (field, want) in WANT {
        assert_eq!(total[field].as_u64(), Some(want), "{what}: {field} in {total}");
    }
    let cost: rust_decimal::Decimal = total["est_cost"].as_str().unwrap().parse().unwrap();
    assert_eq!(cost, want_cost(), "{what}: est_cost");
}

#[test]
fn every_dimension_reaches_the_counters_meter_and_usage_api() {
    let s = scratch();
    let meter = meter_json(&s, "acme");
    check_total(&meter["total"], "meter --json");
    let by = |resource: &str, field: &str| meter["by_resource"][resource][field].as_u64().unwrap();
    assert_eq!(by("amazon.nova-canvas-v1:0", "images"), 2);
    assert_eq!(by("amazon.titan-image-generator-v2:0", "images"), 3);
    assert_eq!(by("amazon.nova-reel-v1:1", "video_ms"), 6_000);
    assert_eq!(by("cohere.rerank-v3-5:0", "search_units"), 3);
    let stream =
        "arn:aws:bedrock:us-east-1:111122223333:inference-profile/global.anthropic.claude-haiku-4-5-20251001-v1:0";
    assert_eq!((by(stream, "cache_write_1h"), by(stream, "cross_region")), (31_814, 1));
    assert_eq!(by("us.meta.llama3-1-70b-instruct-v1:0", "latency_optimized"), 1);
    assert_eq!(by("us.meta.llama3-1-70b-instruct-v1:0", "requests"), 2);

    // A tenant with tokens only: every other dimension 0, its table as it always was.
    let plain = meter_json(&s, "globex");
    for field in
        ["images", "video_ms", "audio_ms", "search_units", "cache_write_1h", "latency_optimized", "cross_region"]
    {
        assert_eq!(plain["total"][field].as_u64(), Some(0), "{field}");
    }
    let table = |tenant: &str| {
        let out = s.tally().args(["meter", tenant, "--period", "2025-11"]).output().unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    assert!(!table("globex").contains("other dimensions"), "{}", table("globex"));
    let acme = table("acme");
    let total = acme.lines().filter(|l| l.starts_with("total")).nth(1).expect("a total row of other dimensions");
    let cells: Vec<&str> = total.split_whitespace().collect();
    assert_eq!(cells, ["total", "5", "36.000", "12.500", "3", "32614", "2", "2"], "{acme}");

    let server = Server::start(&s.config_path, &["--as-of", "2025-11-15T12:30:00Z"], &[]);
    let usage = server.get("/v1/usage?period=2025-11", Some(KEY));
    assert_eq!(usage.status, 200, "{}", usage.body);
    let usage = usage.json();
    check_total(&usage["total"], "/v1/usage");
    assert_eq!(usage["by_day"]["2025-11-05"], meter["by_day"]["2025-11-05"]);
    assert_eq!(usage["by_resource"], meter["by_resource"]);
}

#[test]
fn bad_dimension_values_are_quarantined_and_the_rest_counted() {
    let s = Scratch::new("");
    let good = record("ok-1", "2025-11-05T10:00:00Z", "acme", 1, 1);
    let with = |id: &str, output: &str| good.replace("ok-1", id).replace(r#""outputTokenCount":1"#, output);
    let text = [
        good.clone(),
        with("bad-images", r#""outputImagesCount":-2"#),
        with("bad-video", r#""outputVideoDurationSeconds":"6""#),
        with("bad-audio", r#""outputAudioDurationSeconds":1e30"#),
    ]
    .join("\n");
    let report = s.ingest(&[s.write("logs/bad.ndjson", text + "\n")]);
    assert_eq!((report.received, report.counted), (4, 1));
    let reasons: Vec<(String, String)> = s
        .quarantined()
        .iter()
        .map(|q| (q["reason"].as_str().unwrap().to_string(), q["detail"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(reasons[0].0 == "negative_count" && reasons[0].1.contains("output.outputImagesCount"), "{reasons:?}");
    assert!(reasons[1].0 == "wrong_type" && reasons[1].1.contains("output.outputVideoDurationSeconds"), "{reasons:?}");
    assert!(
        reasons[2].0 == "absurd_count" && reasons[2].1.contains("output.outputAudioDurationSeconds"),
        "{reasons:?}"
    );
}
