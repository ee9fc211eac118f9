//! `tally demo`, the README's first command: the whole pipeline on generated fixtures with no
//! services, checked end to end against the generator's truth.

use crate::support;

use rust_decimal::Decimal;

fn dec(v: &serde_json::Value) -> Decimal {
    v.as_str().unwrap_or_else(|| panic!("not a decimal string: {v}")).parse().unwrap()
}

#[test]
fn the_demo_runs_the_whole_pipeline_and_it_adds_up() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo");
    let run = || {
        let o = support::tally_bin()
            .args(["demo", "--tenants", "4", "--records", "2000", "--json", "--out"])
            .arg(&out)
            .output()
            .unwrap();
        assert!(o.status.success(), "demo failed: {}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).expect("demo --json prints JSON")
    };
    let d = run();
    let truth: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("truth.json")).unwrap()).unwrap();

    // Ingest: exactly the generator's counts, and the accounting balances.
    let i = &d["ingest"];
    for k in ["received", "counted", "duplicates"] {
        assert_eq!(i[k], truth[k], "ingest {k}");
    }
    let skipped: u64 = i["skipped"].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(
        i["received"].as_u64().unwrap(),
        i["counted"].as_u64().unwrap() + i["duplicates"].as_u64().unwrap() + skipped
    );

    // Reconcile: every CUR dollar allocated or unallocated.
    let r = &d["reconcile"];
    assert!(dec(&r["usage_cost"]) > Decimal::ZERO);
    assert_eq!(dec(&r["allocated"]) + dec(&r["unallocated"]), dec(&r["usage_cost"]));

    // Invoices: final after reconcile, one per tenant on a plan (the last tenant has none).
    let v = &d["invoice"];
    assert_eq!((v["status"].as_str(), v["written"].as_u64()), (Some("final"), Some(3)));
    let billed: Decimal =
        v["margin"].as_array().unwrap().iter().filter(|m| !m["plan"].is_null()).map(|m| dec(&m["charge"])).sum();
    assert_eq!(billed, dec(&v["charge"]));

    // The demo's serve key is stored as a hash only.
    let config = std::fs::read_to_string(out.join("tally.toml")).unwrap();
    assert!(config.contains("admin = true") && config.contains("hash = \"sha256:") && !config.contains("tly_"));

    // Run again on the same folder: it starts over and gives the same counts and bill.
    let again = run();
    assert_eq!(
        (&again["ingest"]["counted"], &again["invoice"]["charge"]),
        (&d["ingest"]["counted"], &d["invoice"]["charge"])
    );
}
