//! Reconcile's AWS side on moto (started by `tests/run-all.sh`): `--cur s3://…` reads the
//! same CUR from a bucket as from a folder, byte for byte in every output, for both CUR
//! shapes and only the period's partition; a missing bucket fails naming it; and
//! `--cost-explorer` compares Cost Explorer's per-tag cost (queued in moto) with the CUR.
#![cfg(feature = "aws")]

use std::collections::BTreeMap;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde_json::{json, Value};

use crate::reconcile_support::{self, files, sql_csv, Fixture, MONTH};
use crate::support::aws::{self, moto_post, new_bucket, put_object, remote, upload_tree};
use tally::cur::classify;
use tally::cur::load::{self, LoadOptions};
use tally::progress::NoProgress;

/// The fixture, its config pointed at moto for S3 (`[sources]`) and Cost Explorer.
fn fixture_on(endpoint: &str) -> Fixture {
    let f = Fixture::new();
    let mut text = std::fs::read_to_string(&f.config).unwrap();
    text = text.replace("[reconcile]\n", &format!("[reconcile]\ncost_explorer_endpoint_url = \"{endpoint}\"\n"));
    text.push_str(&format!("\n[sources]\nendpoint_url = \"{endpoint}\"\nregion = \"us-east-1\"\n"));
    std::fs::write(&f.config, text).unwrap();
    f
}

fn report(out: &std::process::Output) -> Value {
    assert!(out.status.success(), "tally failed ({:?}): {}", out.status.code(), String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_cur_in_s3_reconciles_exactly_as_the_same_cur_in_a_folder() {
    let Some(ep) = aws::endpoint() else { return };
    let f = fixture_on(&ep);
    let r = remote(&ep);
    let bucket = new_bucket(&r);
    for (variant, dir) in [("cur2", f.cur.cur2.clone()), ("legacy", f.cur.legacy.clone())] {
        // Both periods' partitions go up; only November's may be read. A manifest beside them
        // is not Parquet and is not read either.
        let uploaded = upload_tree(&r, &bucket, &format!("billing/{variant}/"), &dir);
        assert!(uploaded >= 2, "the fixture has another period's partition too");
        put_object(&r, &bucket, &format!("billing/{variant}/manifest.json"), b"{}".to_vec());

        let local_out = f.path(&format!("out-local-{variant}"));
        let local = report(&f.reconcile(&dir, &local_out, &["--csv", "--json"]));
        let s3_out = f.path(&format!("out-s3-{variant}"));
        let url = format!("s3://{bucket}/billing/{variant}/");
        let s3 = report(
            &f.tally()
                .args(["reconcile", "--period", MONTH, "--cur", &url, "--csv", "--json", "--out"])
                .arg(&s3_out)
                .output()
                .unwrap(),
        );

        assert_eq!(s3["cur_files"], local["cur_files"], "{variant}: the period's partition only");
        assert_eq!(s3["cur_lines"], local["cur_lines"], "{variant}");
        let usage = Decimal::from_str(s3["usage_cost"].as_str().unwrap()).unwrap();
        assert_eq!(usage, f.cur.usage_cost, "{variant}: the whole bill, exactly");
        assert_eq!(s3["tenants"], local["tenants"], "{variant}");
        let (a, b) = (files(&local_out.join(MONTH)), files(&s3_out.join(MONTH)));
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>(), "{variant}");
        for (name, bytes) in &a {
            assert!(bytes == &b[name], "{variant}: {name} differs between the folder and S3");
        }
    }
}

#[test]
fn a_missing_bucket_fails_naming_it() {
    let Some(ep) = aws::endpoint() else { return };
    let f = fixture_on(&ep);
    let missing = aws::unique_name("tally-no-such-bucket");
    let out = f
        .tally()
        .args(["reconcile", "--period", MONTH, "--cur", &format!("s3://{missing}/cur"), "--out"])
        .arg(f.path("out"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("s3://{missing}")), "{stderr}");
    assert!(!f.path("out").join(MONTH).exists(), "nothing is written");
}

#[test]
fn cost_explorer_differences_are_reported_per_tenant() {
    let Some(ep) = aws::endpoint() else { return };
    let f = fixture_on(&ep);
    // What the CUR carries per tag value, read through the library.
    let snap = load::load(
        &f.cur.cur2,
        &LoadOptions { period: MONTH.into(), tenant_tag: "tenant".into(), ..Default::default() },
        &NoProgress,
    )
    .unwrap();
    let mut by_tag: BTreeMap<Option<String>, i128> = BTreeMap::new();
    for (g, s) in &snap.groups {
        if classify::is_usage(&g.line_item_type) {
            *by_tag.entry(g.tag.clone()).or_default() += s.cost;
        }
    }
    let off = by_tag.keys().flatten().next().expect("the fixture tags a tenant").clone();
    assert!(by_tag.get(&None).is_some_and(|c| *c > 0), "the fixture has untagged cost");
    // Cost Explorer agrees on every tag value but `off` (one dollar more) and the untagged
    // cost (absent), and knows a tag the CUR has no line for.
    let units = |u: i128| tally::money::from_units(u).to_string();
    let mut groups = Vec::new();
    for (tag, cost) in &by_tag {
        if tag.is_none() {
            continue;
        }
        let cost = if tag.as_ref() == Some(&off) { cost + 10_000_000_000 } else { *cost };
        groups.push(json!({"Keys": [format!("tenant${}", tag.clone().unwrap_or_default())], "Metrics": {"UnblendedCost": {"Amount": units(cost), "Unit": "USD"}}}));
    }
    groups.push(json!({"Keys": ["tenant$ghost"], "Metrics": {"UnblendedCost": {"Amount": "3.25", "Unit": "USD"}}}));
    let queued = json!({"results": [{"ResultsByTime": [{"TimePeriod": {"Start": "2025-11-01", "End": "2025-12-01"}, "Total": {}, "Groups": groups, "Estimated": false}]}]});
    assert_eq!(moto_post(&ep, "/moto-api/static/ce/cost-and-usage-results", &queued), 201);

    let out_dir = f.path("out");
    let r = report(&f.reconcile(&f.cur.cur2, &out_dir, &["--cost-explorer", "--json"]));
    assert_eq!(r["cost_explorer"]["flagged"], json!(3), "{}", r["cost_explorer"]);

    let rows = reconcile_support::rows(&sql_csv(
        &out_dir,
        "SELECT tenant, cost_explorer, cur_tagged, allocated, difference, flagged FROM cost_explorer ORDER BY tenant NULLS FIRST",
    ));
    let d = |s: &str| Decimal::from_str(if s.is_empty() { "0" } else { s }).unwrap();
    let allocated: BTreeMap<String, Decimal> = r["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["tenant"].as_str().unwrap().to_string(), d(t["cost"].as_str().unwrap())))
        .collect();
    assert_eq!(rows.len(), by_tag.len() + 1, "every CUR tag value plus the one only Cost Explorer knows");
    for row in &rows {
        let (tenant, ce, cur, alloc, diff, flagged) =
            (&row[0], d(&row[1]), d(&row[2]), d(&row[3]), d(&row[4]), &row[5]);
        assert_eq!(diff, ce - cur, "{row:?}");
        let expect_flag = tenant == &off || tenant.is_empty() || tenant == "ghost";
        assert_eq!(flagged == "true", expect_flag, "{row:?}");
        if tenant == &off {
            assert_eq!(diff, Decimal::ONE);
        }
        if !tenant.is_empty() {
            assert_eq!(
                alloc,
                allocated.get(tenant).copied().unwrap_or_default(),
                "allocated is tally's allocation: {row:?}"
            );
        }
    }
}
