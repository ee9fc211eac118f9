//! Reaching the local AWS API (moto server) from tests.
//!
//! `tests/run-all.sh` starts `moto_server` on a free loopback port and exports:
//! - `TALLY_TEST_AWS_ENDPOINT` — its URL, e.g. `http://127.0.0.1:41234` (one port serves
//!   DynamoDB, S3, CloudWatch Logs and Cost Explorer);
//! - `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` (dummies) and `AWS_REGION=us-east-1`, which the
//!   SDK's standard chain picks up, in the test process and in the `tally` binary it starts;
//! - `TALLY_TEST_REQUIRE_AWS=1`, so an AWS test without an endpoint fails instead of skipping.
//!
//! Run by hand (`cargo nextest run`) without the endpoint, AWS tests print a
//! note and pass without checking anything. Tests isolate themselves by name: every table,
//! bucket or log group a test makes comes from [`unique_name`].

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tally::aws::AwsSettings;
use tally::source::remote::Remote;
use tally::store::dynamodb::{DynamoSettings, DynamoStore};

pub const ENDPOINT_VAR: &str = "TALLY_TEST_AWS_ENDPOINT";
pub const REQUIRE_VAR: &str = "TALLY_TEST_REQUIRE_AWS";

/// The local AWS endpoint; `None` (after a printed note) when the test should not run. Panics
/// when `TALLY_TEST_REQUIRE_AWS=1` and no endpoint is set.
pub fn endpoint() -> Option<String> {
    match std::env::var(ENDPOINT_VAR) {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var(REQUIRE_VAR).is_ok_and(|v| v == "1") => {
            panic!(
                "{REQUIRE_VAR}=1 but {ENDPOINT_VAR} is not set: the AWS tests need moto (tests/run-all.sh starts it)"
            )
        }
        _ => {
            eprintln!("note: {ENDPOINT_VAR} is not set, so this AWS test checks nothing; tests/run-all.sh starts moto and sets it");
            None
        }
    }
}

/// A name no other test (or earlier run against the same moto) uses: `<prefix>-<pid>-<n>-<t>`.
pub fn unique_name(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("{prefix}-{}-{}-{t:09}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// SDK settings for `endpoint` in `us-east-1`.
pub fn settings(endpoint: &str) -> AwsSettings {
    AwsSettings { region: Some("us-east-1".into()), endpoint_url: Some(endpoint.to_string()), max_attempts: None }
}

pub fn dynamo_settings(endpoint: &str, table: &str, shards: u32) -> DynamoSettings {
    DynamoSettings {
        table: table.to_string(),
        aws: settings(endpoint),
        shards,
        lease: Duration::from_secs(2),
        dedup_ttl: Duration::from_secs(37 * 86_400),
    }
}

/// A store on an existing table.
pub fn dynamo_store(endpoint: &str, table: &str, shards: u32) -> DynamoStore {
    DynamoStore::open(&dynamo_settings(endpoint, table, shards)).expect("dynamodb store opens")
}

/// A store on a new, empty table.
pub fn fresh_dynamo_store(endpoint: &str, shards: u32) -> (DynamoStore, String) {
    let table = unique_name("tally-test");
    let store = dynamo_store(endpoint, &table, shards);
    store.create_table().expect("table created");
    (store, table)
}

/// The `[store]` section of a `tally.toml` for a DynamoDB table at `endpoint`.
pub fn store_section(endpoint: &str, table: &str) -> String {
    format!("[store]\nbackend = \"dynamodb\"\ntable = \"{table}\"\nendpoint_url = \"{endpoint}\"\nregion = \"us-east-1\"\nlease_seconds = 2\n")
}

/// SDK clients (S3, CloudWatch Logs) on `endpoint`.
pub fn remote(endpoint: &str) -> Remote {
    Remote::new(&settings(endpoint)).unwrap()
}

/// A new, empty bucket.
pub fn new_bucket(r: &Remote) -> String {
    let bucket = unique_name("tally-src");
    r.block_on(r.s3.create_bucket().bucket(&bucket).send()).unwrap();
    bucket
}

pub fn put_object(r: &Remote, bucket: &str, key: &str, bytes: Vec<u8>) {
    r.block_on(r.s3.put_object().bucket(bucket).key(key).body(bytes.into()).send()).unwrap();
}

/// Uploads every file under `root` to `bucket` under `prefix`, keeping relative paths.
pub fn upload_tree(r: &Remote, bucket: &str, prefix: &str, root: &Path) -> usize {
    let mut n = 0;
    for path in files_under(root) {
        let rel = path.strip_prefix(root).unwrap().to_string_lossy().replace('\\', "/");
        put_object(r, bucket, &format!("{prefix}{rel}"), std::fs::read(&path).unwrap());
        n += 1;
    }
    n
}

pub fn files_under(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// POSTs JSON to moto's own API (e.g. `/moto-api/static/ce/cost-and-usage-results`, which
/// queues what Cost Explorer answers) and returns the status code.
pub fn moto_post(endpoint: &str, path: &str, body: &serde_json::Value) -> u16 {
    use std::io::{Read, Write};
    let host = endpoint.trim_start_matches("http://").trim_end_matches('/');
    let body = body.to_string();
    let mut s = std::net::TcpStream::connect(host).expect("moto is reachable");
    write!(s, "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    response.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}
