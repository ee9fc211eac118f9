//! Every `queries/*.sql` runs against the reconcile fixture, reconciled and invoiced (the demo's
//! plans), and matches its golden output in `queries/golden/<name>.csv`. Regenerate on purpose
//! with `TALLY_BLESS=1`.

use crate::reconcile_support;

use reconcile_support::{sql_csv, Fixture};

#[test]
fn every_query_matches_its_golden_output() {
    let f = Fixture::new();
    let mut config = std::fs::read_to_string(&f.config).unwrap();
    config.push_str(&tally::invoice::plan::demo_plans(12));
    std::fs::write(&f.config, config).unwrap();
    let out = f.path("out");
    let r = f.reconcile(&f.cur.cur2, &out, &[]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let r = f.tally().args(["invoice", "--period", reconcile_support::MONTH, "--out"]).arg(&out).output().unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("queries");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "sql"))
        .collect();
    names.sort();
    assert!(names.len() >= 6, "{names:?}");
    let bless = std::env::var_os("TALLY_BLESS").is_some();
    let mut failed = Vec::new();
    for sql_path in names {
        let name = sql_path.file_stem().unwrap().to_string_lossy().into_owned();
        let got = sql_csv(&out, &std::fs::read_to_string(&sql_path).unwrap());
        let golden = dir.join("golden").join(format!("{name}.csv"));
        if bless {
            std::fs::write(&golden, &got).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&golden)
            .unwrap_or_else(|_| panic!("no golden output {}; run with TALLY_BLESS=1", golden.display()));
        if got != want {
            failed.push(format!("{name}:\n--- golden\n{want}\n--- got\n{got}"));
        }
        assert!(got.lines().count() > 1, "{name} returned no rows");
        if name == "margin" {
            margin_matches_the_invoice_report(&out, &got);
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

/// `margin.sql` agrees with the margin report `tally invoice` writes (`margin.csv`): the same
/// charge and cost for every tenant, so analysts and the billing export tell one story.
fn margin_matches_the_invoice_report(out: &std::path::Path, sql: &str) {
    use std::collections::BTreeMap;
    use std::str::FromStr;
    let d = |s: &str| rust_decimal::Decimal::from_str(if s.is_empty() { "0" } else { s }).unwrap();
    let report =
        std::fs::read_to_string(out.join(reconcile_support::MONTH).join("invoices").join("margin.csv")).unwrap();
    let head: Vec<&str> = report.lines().next().unwrap().split(',').collect();
    let col = |n: &str| head.iter().position(|h| *h == n).unwrap();
    let (tenant, charge, cost) = (col("tenant"), col("charge"), col("cost"));
    let want: BTreeMap<String, (rust_decimal::Decimal, rust_decimal::Decimal)> = report
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect::<Vec<_>>())
        .map(|r| (r[tenant].to_string(), (d(r[charge]), d(r[cost]))))
        .collect();
    let got: BTreeMap<String, (rust_decimal::Decimal, rust_decimal::Decimal)> =
        reconcile_support::rows(sql).into_iter().map(|r| (r[0].clone(), (d(&r[2]), d(&r[3])))).collect();
    assert!(want.len() > 3, "{report}");
    for (t, (charge, cost)) in &want {
        let (c, k) = got.get(t).unwrap_or_else(|| panic!("margin.sql has no row for {t}"));
        assert_eq!(c, charge, "{t}: charge");
        assert_eq!(k.round_dp(2), cost.round_dp(2), "{t}: cost");
    }
}
