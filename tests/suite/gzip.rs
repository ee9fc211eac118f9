//! Gzip inputs: whatever the layout of a `.json.gz` file (one member or several, small enough
//! to be inflated whole or streamed), what is counted, skipped and quarantined is what its text
//! holds, exactly as from the same text uncompressed.

use std::io::Write;

use crate::support::{record, Scratch};

use tally::ingest::RunReport;

/// NDJSON text of `n` records (ids from `first`) across tenants and hours, with a malformed
/// line and a line over the 4,096-byte record limit of [`CONFIG`] among them.
fn text(first: u32, n: u32) -> String {
    let mut out = String::new();
    for i in first..first + n {
        let id = format!("ffffffff-0000-4000-8000-{i:012}");
        let ts = format!("2025-11-{:02}T{:02}:00:00Z", 1 + i % 28, i % 24);
        out.push_str(&record(&id, &ts, &format!("t{}", i * 7919 % 13), u64::from(i), 1));
        out.push('\n');
        if i == first + n / 3 {
            out.push_str("{\"requestId\": \"cut\", \"modelId\"\n");
        }
        if i == first + n / 2 {
            out.push_str(&format!("{{\"pad\": \"{}\"}}\n", "x".repeat(5000)));
        }
    }
    out
}

const CONFIG: &str = "[ingest]\nmax_record_bytes = 4096";

fn gz(text: &str) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(text.as_bytes()).unwrap();
    e.finish().unwrap()
}

/// What a user sees of one ingest: the report's counts, the quarantine (line, reason) and the
/// stored hourly counters.
fn outcome(name: &str, bytes: &[u8]) -> (u64, u64, u64, Vec<(u64, String)>, String) {
    let s = Scratch::new(CONFIG);
    let path = s.write(name, bytes);
    let r: RunReport = s.ingest(&[path]);
    assert!(r.balanced(), "{name}: {r:?}");
    let q = s
        .quarantined()
        .iter()
        .map(|q| (q["line"].as_u64().unwrap(), q["reason"].as_str().unwrap().to_string()))
        .collect();
    let hours = tally::store::CounterStore::hours(&s.store(), "2025-11").unwrap();
    (r.received, r.counted, r.duplicates, q, format!("{hours:?}"))
}

#[test]
fn a_gzip_file_counts_as_its_text_does_whatever_its_members() {
    let t = text(0, 600);
    let plain = outcome("logs.ndjson", t.as_bytes());
    assert_eq!((plain.0, plain.1, plain.3.len()), (602, 600, 2), "{:?}", plain.3);

    // One member: inflated whole.
    assert_eq!(outcome("one.json.gz", &gz(&t)), plain, "one member");
    // Two members, cut between lines and inside a line: the first member's trailer is not the
    // file's, so it is streamed, and both members are read.
    let cut = t.find("\n{\"pad\"").unwrap();
    for at in [cut + 1, cut + 20] {
        let two = [gz(&t[..at]), gz(&t[at..])].concat();
        assert_eq!(outcome("two.json.gz", &two), plain, "two members cut at {at}");
    }
}

#[test]
fn a_file_of_two_identical_members_is_read_to_its_end() {
    // Each member's trailer matches the file's last eight bytes, so only reading to the end of
    // the file tells that there is a second one.
    let t = text(0, 50);
    let member = gz(&t);
    let (received, counted, duplicates, _, _) = outcome("twice.json.gz", &[member.clone(), member].concat());
    assert_eq!((received, counted, duplicates), (104, 50, 50));
}

#[test]
fn a_gzip_file_too_large_to_inflate_whole_is_streamed_with_the_same_result() {
    // Over the 8 MiB a worker inflates whole.
    let t = text(0, 24_000);
    assert!(t.len() > 8 << 20, "{}", t.len());
    assert_eq!(outcome("large.json.gz", &gz(&t)), outcome("large.ndjson", t.as_bytes()));
}
