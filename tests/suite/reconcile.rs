//! `tally reconcile` end to end on generated logs and the CUR that bills them: the allocation
//! adds up to the bill, follows the rules of SPEC §3, does not depend on the CUR's shape, is
//! byte-for-byte repeatable, is replaced when the CUR is restated, and bad CUR input is named.

use crate::reconcile_support;

use std::str::FromStr;
use std::sync::Arc;

use reconcile_support::{files, rows, sql_csv, Fixture, MONTH};
use rust_decimal::Decimal;

fn dec(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

fn ok(out: &std::process::Output) -> String {
    assert!(out.status.success(), "tally failed ({:?}): {}", out.status.code(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// Checks one day × token type of the `allocation` rows `shares` selects against the `usage`
/// rows `used` selects: the same tenants, each share within 10⁻¹⁰ USD of the group's cost in
/// proportion to its tokens.
fn assert_split_by_usage(out: &std::path::Path, shares: &str, used: &str) {
    let split = rows(&sql_csv(
        out,
        &format!(
            "SELECT day, token_type, tenant, cost FROM allocation WHERE {shares} ORDER BY day, token_type, tenant"
        ),
    ));
    assert!(!split.is_empty(), "no shares where {shares}");
    let (day, tt) = (split[0][0].clone(), split[0][1].clone());
    let group: Vec<&Vec<String>> = split.iter().filter(|r| r[0] == day && r[1] == tt).collect();
    let used = rows(&sql_csv(
        out,
        &format!("SELECT tenant, sum({tt}) FROM usage WHERE {used} AND day = '{day}' GROUP BY tenant HAVING sum({tt}) > 0 ORDER BY tenant"),
    ));
    assert_eq!(
        group.iter().map(|r| r[2].clone()).collect::<Vec<_>>(),
        used.iter().map(|r| r[0].clone()).collect::<Vec<_>>()
    );
    let total: Decimal = group.iter().map(|r| dec(&r[3])).sum();
    let tokens: Decimal = used.iter().map(|r| dec(&r[1])).sum();
    for (share, u) in group.iter().zip(&used) {
        let exact = total * dec(&u[1]) / tokens;
        assert!((dec(&share[3]) - exact).abs() < dec("0.0000000001"), "{share:?} vs {exact}");
    }
}

#[test]
fn the_whole_bill_is_allocated_or_unallocated_by_the_rules() {
    let f = Fixture::new();
    let out = f.path("out");
    let text = ok(&f.reconcile(&f.cur.cur2, &out, &[]));
    assert!(text.contains("= allocated"), "{text}");
    let csv = sql_csv(&out, "SELECT sum(cost) AS total FROM allocation");
    // The generator's own sum of the month's Bedrock usage lines, not tally's.
    assert_eq!(dec(&rows(&csv)[0][0]).normalize(), f.cur.usage_cost.normalize());

    let by_basis = rows(&sql_csv(&out, "SELECT basis, count(*) AS n FROM allocation GROUP BY basis ORDER BY basis"));
    let bases: Vec<&str> = by_basis.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(bases, ["account", "model", "principal", "profile", "tag", "unallocated", "usage"]);

    // A silo tenant's account pays for its own lines, all of them and nothing else.
    let by_account = rows(&sql_csv(&out, "SELECT DISTINCT tenant FROM allocation WHERE basis = 'account' ORDER BY 1"));
    assert_eq!(by_account, [["tenant-0003"]], "tenant-0003 is the fixture's silo tenant");
    let silo_lines = rows(&sql_csv(
        &out,
        "SELECT sum(cost) FROM cur WHERE usage_account = '444400000003' AND line_item_type = 'Usage'",
    ));
    let account_cost =
        rows(&sql_csv(&out, "SELECT sum(cost), count(DISTINCT basis) FROM allocation WHERE tenant = 'tenant-0003'"));
    assert_eq!(dec(&account_cost[0][0]), dec(&silo_lines[0][0]));
    assert_eq!(account_cost[0][1], "1", "the silo tenant has no share of pooled lines");

    // A tenant the identity rule names pays its principal's lines, and no share of a split on
    // the same day × pool × unit for that usage: it pays once.
    let by_principal = rows(&sql_csv(
        &out,
        "SELECT tenant, count(DISTINCT basis) FROM allocation WHERE tenant IN \
         (SELECT tenant FROM allocation WHERE basis = 'principal') GROUP BY tenant ORDER BY 1",
    ));
    assert_eq!(by_principal, [["tenant-0009", "1"]]);
    let principal_lines = rows(&sql_csv(&out, "SELECT sum(cost) FROM cur WHERE iam_principal LIKE '%assumed-role/tenant-tenant-0009/%' AND line_item_type = 'Usage'"));
    let principal_cost = rows(&sql_csv(&out, "SELECT sum(cost) FROM allocation WHERE basis = 'principal'"));
    assert_eq!(dec(&principal_cost[0][0]), dec(&principal_lines[0][0]));

    // Base-model lines (no resource id) are split by model among the tenants whose counters
    // called that model by a bare id or foundation-model ARN that day, in proportion to tokens.
    assert_split_by_usage(
        &out,
        "basis = 'model' AND resource = 'amazon.nova-micro-v1:0'",
        "resource = 'amazon.nova-micro-v1:0' AND via = 'pool'",
    );

    // Dedicated profiles: tenant-0007 is tagged in CUR, tenant-0008 only in the registry.
    let dedicated = rows(&sql_csv(&out, "SELECT DISTINCT tenant, basis FROM allocation WHERE resource LIKE '%application-inference-profile/aip%' ORDER BY tenant"));
    assert_eq!(dedicated, [["tenant-0007", "tag"], ["tenant-0008", "profile"]]);

    // The shared pool is split among the tenants whose counters used it that day, in
    // proportion to their tokens.
    assert_split_by_usage(&out, "resource LIKE '%sharedpool01'", "resource LIKE '%sharedpool01'");

    // Unallocated: only the planted cases, a profile nobody metered and a model no catalog
    // knows (with its usage type).
    let unallocated = rows(&sql_csv(
        &out,
        "SELECT DISTINCT unallocated_reason, resource, coalesce(usage_type, '') FROM allocation WHERE tenant IS NULL ORDER BY 1, 2",
    ));
    assert_eq!(
        unallocated,
        [
            vec![
                "no_usage_metered".to_string(),
                "arn:aws:bedrock:us-east-1:111122223333:application-inference-profile/orphan000001".into(),
                String::new()
            ],
            vec!["unknown_model".into(), String::new(), "USE1-Nova9Ultra-input-tokens".into()],
        ]
    );

    // Adjustments are reported, not allocated; the previous period's lines are left out.
    let adj =
        rows(&sql_csv(&out, "SELECT line_item_type, count(*) FROM adjustments GROUP BY line_item_type ORDER BY 1"));
    assert_eq!(adj.iter().map(|r| r[0].as_str()).collect::<Vec<_>>(), ["Credit", "Refund", "Tax"]);
    let summary = rows(&sql_csv(&out, "SELECT cur_lines, balanced FROM summary"));
    let adjustment_lines: usize = adj.iter().map(|r| r[1].parse::<usize>().unwrap()).sum();
    assert_eq!(summary[0], [(f.cur.usage_lines as usize + adjustment_lines).to_string(), "true".into()]);

    // Drift: the drifting shared pool is flagged, and the base-model row `(none)`, whose bill
    // has the planted model no counter metered; nothing else billed at list price is.
    let flagged = rows(&sql_csv(&out, "SELECT DISTINCT resource FROM drift WHERE flagged AND metered_tokens IS NOT NULL AND cur_cost IS NOT NULL ORDER BY 1"));
    assert_eq!(flagged, [["(none)"], ["sharedpool01"]]);
    let marketplace = rows(&sql_csv(&out, "SELECT sum(tokens) FROM cur WHERE usage_type LIKE '%MP:%'"));
    assert!(dec(&marketplace[0][0]) > Decimal::ZERO, "Marketplace lines are read in millions of tokens");
}

#[test]
fn cur_2_and_legacy_cur_of_the_same_bill_allocate_identically() {
    let f = Fixture::new();
    let (a, b) = (f.path("out-cur2"), f.path("out-legacy"));
    ok(&f.reconcile(&f.cur.cur2, &a, &[]));
    ok(&f.reconcile(&f.cur.legacy, &b, &[]));
    let (fa, fb) = (files(&a.join(MONTH)), files(&b.join(MONTH)));
    for table in ["allocation.parquet", "drift.parquet", "adjustments.parquet", "cur.parquet"] {
        assert!(fa[table] == fb[table], "{table} differs between CUR 2.0 and legacy CUR");
    }
}

#[test]
fn the_same_inputs_write_the_same_bytes_and_a_restated_cur_replaces_them() {
    let f = Fixture::new();
    let out = f.path("out");
    ok(&f.reconcile(&f.cur.cur2, &out, &["--csv"]));
    let first = files(&out.join(MONTH));
    assert!(first.contains_key("allocation.csv") && first.contains_key("summary.parquet"));
    ok(&f.reconcile(&f.cur.cur2, &out, &["--csv"]));
    assert!(first == files(&out.join(MONTH)), "a re-run wrote different bytes");

    // AWS restates the period: the pool is now billed 50% over list instead of 30%.
    let mut spec = tally::generate::cur::CurSpec::new(f.dir.path().to_path_buf(), f.path("cur"), MONTH.into());
    spec.drift = dec("0.5");
    let restated = tally::generate::cur::generate(&spec).unwrap();
    assert!(restated.usage_cost > f.cur.usage_cost);
    ok(&f.reconcile(&restated.cur2, &out, &[]));
    let total = rows(&sql_csv(&out, "SELECT sum(cost) FROM allocation"));
    assert_eq!(dec(&total[0][0]).normalize(), restated.usage_cost.normalize(), "replaced, not added");
    let now = files(&out.join(MONTH));
    assert!(!now.contains_key("allocation.csv"), "the period's folder is replaced as a whole");
    let leftovers: Vec<_> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers, [std::ffi::OsString::from(MONTH)]);
}

#[test]
fn sql_prints_a_table_csv_or_parquet() {
    let f = Fixture::new();
    let out = f.path("out");
    ok(&f.reconcile(&f.cur.legacy, &out, &[]));
    let q = "SELECT tenant, sum(cost) AS cost FROM allocation WHERE tenant IS NOT NULL GROUP BY tenant ORDER BY tenant LIMIT 2";
    let table = ok(&f.tally().args(["sql", q, "--period", MONTH, "--out"]).arg(&out).output().unwrap());
    assert!(table.starts_with("+--") && table.contains("| tenant "), "{table}");
    let csv = ok(&f.tally().args(["sql", q, "--period", MONTH, "--csv", "--out"]).arg(&out).output().unwrap());
    assert_eq!(csv.lines().next(), Some("tenant,cost"));
    assert_eq!(csv.lines().count(), 3);
    let pq = f.path("result.parquet");
    ok(&f.tally().args(["sql", q, "--period", MONTH, "--out"]).arg(&out).arg("--parquet").arg(&pq).output().unwrap());
    let reader = datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        std::fs::File::open(&pq).unwrap(),
    )
    .unwrap();
    assert_eq!(reader.metadata().file_metadata().num_rows(), 2);
    assert_eq!(reader.schema().fields().iter().map(|f| f.name().as_str()).collect::<Vec<_>>(), ["tenant", "cost"]);
    let missing = f.tally().args(["sql", "SELECT 1", "--period", "2025-01", "--out"]).arg(&out).output().unwrap();
    assert!(String::from_utf8_lossy(&missing.stderr).contains("run `tally reconcile --period 2025-01` first"));
}

#[test]
fn bad_cur_input_is_named() {
    use datafusion::arrow::array::{Float64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::arrow::record_batch::RecordBatch;

    let f = Fixture::new();
    let out = f.path("out");
    // Text where Parquet should be.
    let bad = f.path("bad/data/BILLING_PERIOD=2025-11/bad-00001.snappy.parquet");
    std::fs::create_dir_all(bad.parent().unwrap()).unwrap();
    std::fs::write(&bad, "identity_line_item_id,line_item_unblended_cost\nx,1.0\n").unwrap();
    let r = f.reconcile(&f.path("bad"), &out, &[]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1));
    assert!(err.contains(&bad.display().to_string()) && err.contains("not a readable Parquet file"), "{err}");

    // Parquet, but without the cost column.
    let schema = Arc::new(Schema::new(vec![
        Field::new("line_item_product_code", DataType::Utf8, true),
        Field::new("line_item_usage_amount", DataType::Float64, true),
    ]));
    let batch = RecordBatch::try_new(
        schema,
        vec![Arc::new(StringArray::from(vec!["AmazonBedrock"])), Arc::new(Float64Array::from(vec![1.0]))],
    )
    .unwrap();
    let missing = f.path("missing/part-00001.parquet");
    std::fs::create_dir_all(missing.parent().unwrap()).unwrap();
    tally::tables::write_parquet(&missing, &batch).unwrap();
    let r = f.reconcile(&f.path("missing"), &out, &[]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1));
    assert!(
        err.contains(&missing.display().to_string()) && err.contains("missing column `line_item_usage_type`"),
        "{err}"
    );
    assert!(!out.join(MONTH).exists(), "nothing is written when the input is bad");

    // Without the `aws` feature an S3 location is refused with the way out; with it, reading
    // from S3 is tested on moto (reconcile_aws).
    if !cfg!(feature = "aws") {
        let s3 = f.reconcile(std::path::Path::new("s3://bucket/cur"), &out, &[]);
        assert!(String::from_utf8_lossy(&s3.stderr).contains("`aws` feature"));
    }
    let period = f.tally().args(["reconcile", "--period", "2025-13", "--cur"]).arg(&f.cur.cur2).output().unwrap();
    assert!(String::from_utf8_lossy(&period.stderr).contains("YYYY-MM"));
}
