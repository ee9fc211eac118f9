//! Every `queries/*.sql` runs against the reconcile fixture and matches its golden output in
//! `queries/golden/<name>.csv`. Regenerate on purpose with `TALLY_BLESS=1`.

use crate::reconcile_support;

use reconcile_support::{sql_csv, Fixture};

#[test]
fn every_query_matches_its_golden_output() {
    let f = Fixture::new();
    let out = f.path("out");
    let r = f.reconcile(&f.cur.cur2, &out, &[]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("queries");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "sql"))
        .collect();
    names.sort();
    assert!(names.len() >= 5, "{names:?}");
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
        let want = std::fs::read_to_string(&golden).unwrap_or_else(|_| panic!("no golden output {}; run with TALLY_BLESS=1", golden.display()));
        if got != want {
            failed.push(format!("{name}:\n--- golden\n{want}\n--- got\n{got}"));
        }
        assert!(got.lines().count() > 1, "{name} returned no rows");
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}
