//! Every real record in fixtures/realdata parses with the right counts, in every container
//! shape users export them in.

use crate::support;

use std::collections::BTreeMap;
use std::io::Write;

use serde_json::{json, Value};
use support::{repo, Scratch};
use tally::ids::TenantId;
use tally::store::CounterStore;

const CWL: &str = "fixtures/realdata/bedrock-invocation-logs-cwl-requestmetadata/bedrock_log_example_masked.json";
const NOVA: &str = "fixtures/realdata/bedrock-invocation-log-example-conversestream/conversestream_nova_lite.json";

/// The records of the real CloudWatch export, as JSON values (read with serde_json, not tally).
fn cwl_records() -> Vec<Value> {
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(repo(CWL)).unwrap()).unwrap();
    doc["events"].as_array().unwrap().iter().map(|e| e["message"].clone()).collect()
}

/// Expected (requests, input, output) per tenant, computed from the file by serde_json.
fn expected_by_tenant(records: &[Value]) -> BTreeMap<String, (u64, u64, u64)> {
    let mut out: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new();
    for r in records {
        let tenant = r["requestMetadata"]["tenant_id"].as_str().unwrap_or("_unattributed").to_string();
        let e = out.entry(tenant).or_default();
        e.0 += 1;
        e.1 += r["input"]["inputTokenCount"].as_u64().unwrap();
        e.2 += r["output"]["outputTokenCount"].as_u64().unwrap();
    }
    out
}

fn counted_by_tenant(s: &Scratch, month: &str) -> BTreeMap<String, (u64, u64, u64)> {
    s.store()
        .tenants(month)
        .unwrap()
        .into_iter()
        .map(|(t, u)| (t.as_str().to_string(), (u.requests, u.input, u.output)))
        .collect()
}

#[test]
fn the_real_cloudwatch_export_is_counted_per_tenant() {
    let s = Scratch::new("");
    let report = s.ingest(&[repo(CWL)]);
    assert_eq!((report.received, report.counted, report.skipped_total()), (5, 5, 0));
    let expected = expected_by_tenant(&cwl_records());
    assert_eq!(expected.len(), 4, "three tenants and the unattributed");
    assert_eq!(counted_by_tenant(&s, "2025-12"), expected);
    // Event #3 of the file, checked by hand: acme-corp, 17 in, 90 out.
    assert_eq!(expected["acme-corp"], (1, 17, 90));
    let acme = s.store().period_usage(&TenantId::new("acme-corp").unwrap(), "2025-12").unwrap();
    assert_eq!(acme.by_day.keys().collect::<Vec<_>>(), ["2025-12-03"]);
    // Claude 3 Haiku at $0.25 / $1.25 per 1M tokens.
    assert_eq!(acme.total.est_cost.to_string(), "0.00011675");
}

#[test]
fn the_real_conversestream_record_keeps_its_cache_counts() {
    let s = Scratch::new("");
    let report = s.ingest(&[repo(NOVA)]);
    assert_eq!((report.received, report.counted), (1, 1));
    let u = s.store().period_usage(&TenantId::unattributed(), "2025-03").unwrap();
    assert_eq!((u.total.input, u.total.output, u.total.cache_read, u.total.cache_write), (4, 38, 0, 0));
    // Nova Lite: 4 × $0.06/1M + 38 × $0.24/1M.
    assert_eq!(u.total.est_cost.to_string(), "0.00000936");
    assert_eq!(u.by_resource.keys().map(|r| r.as_str()).collect::<Vec<_>>(), ["amazon.nova-lite-v1:0"]);
}

/// The same five real records in each shape people have them in give the same counters.
#[test]
fn every_export_shape_gives_the_same_counters() {
    let records = cwl_records();
    let expected = expected_by_tenant(&records);
    let as_string_events: Vec<Value> = records
        .iter()
        .enumerate()
        .map(|(i, r)| json!({"timestamp": 1764759284000u64 + i as u64, "message": r.to_string(), "ingestionTime": 1764759295865u64}))
        .collect();
    let mut with_permission =
        vec![json!({"timestamp": 1, "message": tally::source::PERMISSION_CHECK_TEXT, "ingestionTime": 2})];
    with_permission.extend(as_string_events.iter().cloned());
    let ndjson: String = records.iter().map(|r| format!("{r}\n")).collect();
    let gz = {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(ndjson.as_bytes()).unwrap();
        e.finish().unwrap()
    };
    let insights = json!({"status": "Complete", "results": records.iter().map(|r| json!([
        {"field": "@timestamp", "value": "2025-12-03 10:54:44.000"},
        {"field": "@message", "value": r.to_string()}
    ])).collect::<Vec<_>>()});
    let shapes: Vec<(&str, Vec<u8>, u64)> = vec![
        (
            "get-log-events.json",
            serde_json::to_vec_pretty(&json!({"events": as_string_events, "nextForwardToken": "f/1"})).unwrap(),
            0,
        ),
        (
            "filter-log-events.json",
            serde_json::to_vec(&json!({"events": with_permission, "searchedLogStreams": []})).unwrap(),
            1,
        ),
        ("records.ndjson", ndjson.clone().into_bytes(), 0),
        ("bom.ndjson", [b"\xEF\xBB\xBF".as_slice(), ndjson.as_bytes()].concat(), 0),
        (
            "bom-export.json",
            [b"\xEF\xBB\xBF".as_slice(), &serde_json::to_vec_pretty(&json!({"events": as_string_events})).unwrap()]
                .concat(),
            0,
        ),
        ("object.json.gz", gz, 0),
        ("insights.json", serde_json::to_vec_pretty(&insights).unwrap(), 0),
        ("array.json", serde_json::to_vec_pretty(&Value::Array(records.clone())).unwrap(), 0),
        ("crlf.ndjson", ndjson.replace('\n', "\r\n").into_bytes(), 0),
    ];
    for (name, bytes, permission_events) in shapes {
        let s = Scratch::new("");
        let path = s.write(name, &bytes);
        let report = s.ingest(&[path]);
        assert_eq!(report.counted, 5, "{name}: {report:?}");
        assert_eq!(report.skipped.get("permission_check").copied().unwrap_or(0), permission_events, "{name}");
        assert!(report.balanced(), "{name}");
        assert_eq!(counted_by_tenant(&s, "2025-12"), expected, "{name}");
    }
}

#[test]
fn every_model_id_form_in_real_records_is_priced_and_kept_as_logged() {
    // The AWS documentation's InvokeModel example (§1.2 a of the research notes): a bare
    // Llama id, requestMetadata without tenant_id, bodies with prose.
    let s = Scratch::new("");
    let forms = [
        "meta.llama3-1-405b-instruct-v1:0",
        "arn:aws:bedrock:us-east-1:111122223333:inference-profile/us.anthropic.claude-haiku-4-5-20251001-v1:0",
        "arn:aws:bedrock:us-east-1::foundation-model/amazon.nova-pro-v1:0",
        "apac.amazon.nova-micro-v1:0",
    ];
    let lines: String = forms
        .iter()
        .enumerate()
        .map(|(i, m)| {
            format!(
                r#"{{"schemaType":"ModelInvocationLog","schemaVersion":"1.0","timestamp":"2024-09-11T17:16:18Z","accountId":"XXXXX","identity":{{"arn":"arn:aws:sts::XXXXXXX:assumed-role/Admin/XXXXXX"}},"region":"us-east-1","requestId":"7ee514f3-9eff-467c-af75-8fd564ce58e{i}","operation":"InvokeModel","modelId":"{m}","input":{{"inputContentType":"application/json","inputBodyJson":{{"prompt":"story of two dogs","max_tokens_to_sample":300}},"inputTokenCount":13}},"output":{{"outputContentType":"application/json","outputBodyJson":{{"type":"completion","completion":" Here is a story","stop_reason":"max_tokens","stop":null}},"outputTokenCount":300}},"requestMetadata":{{"project":"CustomerService"}}}}"#
            ) + "\n"
        })
        .collect();
    let report = s.ingest(&[s.write("doc.ndjson", lines)]);
    assert_eq!(report.counted, 4);
    assert!(report.unknown_models.is_empty(), "{:?}", report.unknown_models);
    let u = s.store().period_usage(&TenantId::unattributed(), "2024-09").unwrap();
    let resources: Vec<&str> = u.by_resource.keys().map(|r| r.as_str()).collect();
    let mut want = forms.to_vec();
    want.sort();
    assert_eq!(resources, want);
    // 13 in + 300 out on Llama 3.1 405B at $2.40/1M each.
    let llama = u.by_resource.iter().find(|(r, _)| r.as_str().starts_with("meta.")).unwrap().1;
    assert_eq!(llama.est_cost.to_string(), "0.0007512");
}
