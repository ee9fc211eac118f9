//! The log-record parser: `tally::record::parse` on any bytes, and the elements of any
//! container it finds. Besides "no panic", checks that
//! - the bytes and the checked-UTF-8 entry points (`parse` / `parse_str`) agree;
//! - every reject carries a detail;
//! - a record's token counts, timestamp, request id and model id are what the input says,
//!   whenever serde_json reads the input as JSON too (the scanner skips bodies loosely, so it
//!   may accept more than serde_json; never less);
//! - JSON that serde_json accepts is never called malformed or non-JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tally::quarantine::Reason;
use tally::record::{parse, parse_record, parse_str, ElementBody, LogRecord, ParseOptions, Parsed, Reject};

/// A small ceiling, so the absurd-count path is reached by short inputs too.
const OPTS: ParseOptions = ParseOptions { max_token_count: 1_000_000, latest_timestamp: None };

fuzz_target!(|data: &[u8]| {
    let got = parse(data, &OPTS);

    if let Ok(text) = std::str::from_utf8(data) {
        let again = parse_str(text, &OPTS);
        assert_eq!(summary(&got), summary(&again), "parse and parse_str disagree");
    }

    let json: Option<Value> = serde_json::from_slice(data).ok();
    match &got {
        Ok(Parsed::Record(rec)) => {
            check_record(rec);
            if let Some(v) = &json {
                agrees_with_serde(rec, v);
            }
        }
        Ok(Parsed::Container(c)) => {
            for el in c.elements() {
                match el.body {
                    ElementBody::Json(raw) => {
                        if let Ok(Parsed::Record(rec)) = parse(raw, &OPTS) {
                            check_record(&rec);
                        }
                    }
                    ElementBody::Text(text) => match parse_record(text.as_bytes(), &OPTS) {
                        Ok(rec) => check_record(&rec),
                        Err(r) => check_reject(&r),
                    },
                    ElementBody::Bad(r) => check_reject(&r),
                }
            }
        }
        Err(r) => {
            check_reject(r);
            if json.is_some() {
                assert!(
                    !matches!(r.reason, Reason::MalformedJson | Reason::NonJson),
                    "serde_json reads this as JSON, the scanner rejected it as {:?}: {}",
                    r.reason,
                    r.detail
                );
            }
        }
    }

    // The default limits must hold the same way (no arithmetic on the ceiling overflows).
    let _ = parse(data, &ParseOptions { max_token_count: u64::MAX, latest_timestamp: None });
});

/// What a parse result is, comparable across the two entry points.
fn summary<'a>(r: &'a Result<Parsed<'a>, Reject>) -> String {
    match r {
        Ok(Parsed::Record(rec)) => format!("record {rec:?}"),
        Ok(Parsed::Container(_)) => "container".to_string(),
        Err(e) => format!("reject {:?} {}", e.reason, e.detail),
    }
}

fn check_reject(r: &Reject) {
    assert!(!r.detail.trim().is_empty(), "reject {:?} without a detail", r.reason);
}

fn check_record(rec: &LogRecord<'_>) {
    assert!(!rec.request_id.trim().is_empty());
    assert!(!rec.model_id.trim().is_empty());
    for n in [rec.input_tokens, rec.output_tokens, rec.cache_read_tokens, rec.cache_write_tokens].into_iter().flatten() {
        assert!(n <= OPTS.max_token_count, "count {n} above the ceiling was accepted");
    }
    if let Some(meta) = rec.request_metadata {
        assert_eq!(meta.first(), Some(&b'{'), "requestMetadata is not an object");
    }
}

/// The record agrees with serde_json's reading of the same text. With duplicate keys the last
/// one wins in both, so only values serde_json sees are compared.
fn agrees_with_serde(rec: &LogRecord<'_>, v: &Value) {
    let count = |outer: &str, inner: &str| v.get(outer).and_then(|o| o.get(inner)).and_then(Value::as_u64);
    let pairs = [
        ("input", "inputTokenCount", rec.input_tokens),
        ("input", "cacheReadInputTokenCount", rec.cache_read_tokens),
        ("input", "cacheWriteInputTokenCount", rec.cache_write_tokens),
        ("output", "outputTokenCount", rec.output_tokens),
    ];
    for (outer, inner, got) in pairs {
        if let Some(n) = count(outer, inner) {
            assert_eq!(got, Some(n), "{outer}.{inner}");
        }
    }
    for (key, got) in [("timestamp", Some(&rec.timestamp)), ("requestId", Some(&rec.request_id)), ("modelId", Some(&rec.model_id))] {
        if let (Some(Value::String(s)), Some(got)) = (v.get(key), got) {
            assert_eq!(got.as_ref(), s.as_str(), "{key}");
        }
    }
    if let Some(Value::String(s)) = v.get("identity").and_then(|i| i.get("arn")) {
        assert_eq!(rec.identity_arn.as_deref(), Some(s.as_str()), "identity.arn");
    }
}
