//! Rendered invoices, one per plan kind and case, against golden files in
//! `fixtures/invoice/golden/` (regenerate on purpose with `TALLY_BLESS=1`), each also checked
//! against amounts worked out by hand here, and validated against the published JSON Schema.

use crate::invoice_support;

use std::path::{Path, PathBuf};
use std::str::FromStr;

use rust_decimal::Decimal;
use tally::config::Config;
use tally::ids::TenantId;
use tally::invoice::charge::{Basis, TokenUsage};
use tally::invoice::export::{self, InvoiceV1};
use tally::invoice::issue::{self, Invoice, Issued, Status};
use tally::invoice::plan::Plans;

const PLANS: &str = r#"
[plans.starter]
kind = "bundled"
monthly_fee = "29.00"

[plans.pro]
kind = "quota"
monthly_fee = "99.00"
included = 2000000
overage_rate = "0.004"

[plans.credits]
kind = "quota"
monthly_fee = "49.00"
included = "500"
unit = "credits"
credit_usd = "0.01"
overage_rate = "0.012"

[plans.payg]
kind = "metered"
markup = "4.0"
minimum = "10.00"

[plans.team]
kind = "add_on"
seat_price = "15.00"
included_per_seat = 250000
overage_rate = "0.006"

[tenants.bundled]
plan = "starter"
[tenants.quota-tokens]
plan = "pro"
[tenants.quota-credits]
plan = "credits"
[tenants.metered]
plan = "payg"
[tenants.metered-minimum]
plan = "payg"
[tenants.add-on]
plan = "team"
seats = 4
"#;

fn d(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

fn plans() -> Plans {
    Config::from_toml(PLANS, Path::new("plans.toml"), PathBuf::new()).unwrap().plans().unwrap()
}

fn basis(input: u64, output: u64, cache_read: u64, estimate: &str, reconciled: Option<&str>) -> Basis {
    Basis {
        usage: TokenUsage { input, output, cache_read, cache_write: 0, requests: 100, ..TokenUsage::default() },
        estimated_cost: d(estimate),
        reconciled_cost: reconciled.map(d),
    }
}

fn tenant(s: &str) -> TenantId {
    TenantId::new(s).unwrap()
}

/// Compares the rendered document with its golden file and validates it against the schema.
fn golden(name: &str, invoice: &Invoice) {
    let got = export::to_json(invoice);
    invoice_support::validate(&serde_json::from_str(&got).unwrap()).unwrap_or_else(|e| panic!("{name}: {e}"));
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/invoice/golden").join(format!("{name}.json"));
    if std::env::var_os("TALLY_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("no golden invoice {}; run with TALLY_BLESS=1", path.display()));
    assert_eq!(got, want, "{name} differs from {}", path.display());
}

/// (kind, amount) of each line, and the total.
fn amounts(i: &Invoice) -> (Vec<(&'static str, String)>, String) {
    (i.lines.iter().map(|l| (l.kind.as_str(), l.amount.to_string())).collect(), i.total.to_string())
}

fn final_v1(t: &str, b: &Basis) -> Invoice {
    issue::next_final("2025-11", &tenant(t), &plans(), b, &[]).unwrap()
}

#[test]
fn bundled_has_the_fee_line_only_and_shows_what_it_cost() {
    let inv = final_v1("bundled", &basis(9_000_000, 2_000_000, 0, "41.20", Some("43.5123456789")));
    assert_eq!(amounts(&inv), (vec![("fee", "29.00".into())], "29.00".into()));
    assert_eq!((inv.cost_basis, inv.margin), (d("43.5123456789"), d("-14.5123456789")));
    golden("bundled", &inv);
}

#[test]
fn quota_in_tokens_bills_the_overage_pro_rata() {
    // 2,000,000 included; 1,600,000 + 500,000 + 123,457 = 2,223,457 used: 223.457K × 0.004 =
    // 0.893828 → 0.89 (not 224 whole blocks).
    let inv = final_v1("quota-tokens", &basis(1_600_000, 500_000, 123_457, "8.10", Some("8.25")));
    assert_eq!(amounts(&inv), (vec![("fee", "99.00".into()), ("overage", "0.89".into())], "99.89".into()));
    let a = inv.allowance.unwrap();
    assert_eq!((a.used, a.over), (d("2223457"), d("223457")));
    golden("quota_tokens", &inv);
    // Under the allowance: the fee alone.
    let under = final_v1("quota-tokens", &basis(1_000_000, 0, 0, "1", Some("1")));
    assert_eq!(amounts(&under), (vec![("fee", "99.00".into())], "99.00".into()));
}

#[test]
fn quota_in_credits_counts_list_price_usage_not_reconciled_cost() {
    // 7.345 USD of list-price usage = 734.5 credits of 0.01; 234.5 over × 0.012 = 2.814 → 2.81.
    // The reconciled cost (9.99) changes the margin, not the credits.
    let inv = final_v1("quota-credits", &basis(500_000, 100_000, 0, "7.345", Some("9.99")));
    assert_eq!(amounts(&inv), (vec![("fee", "49.00".into()), ("overage", "2.81".into())], "51.81".into()));
    assert_eq!(inv.allowance.unwrap().over, d("234.5"));
    assert_eq!(inv.margin, d("41.82"));
    golden("quota_credits", &inv);
}

#[test]
fn metered_charges_cost_times_markup() {
    // 12.3456789012 × 4 = 49.3827156048 → 49.38.
    let inv = final_v1("metered", &basis(3_000_000, 400_000, 0, "11.00", Some("12.3456789012")));
    assert_eq!(amounts(&inv), (vec![("usage", "49.38".into())], "49.38".into()));
    golden("metered", &inv);
}

#[test]
fn metered_charges_the_minimum_when_usage_is_small() {
    // 1.2345 × 4 = 4.938 < 10.00.
    let inv = final_v1("metered-minimum", &basis(100_000, 20_000, 0, "1.20", Some("1.2345")));
    assert_eq!(amounts(&inv), (vec![("usage", "10.00".into())], "10.00".into()));
    assert_eq!(inv.margin, d("8.7655"));
    golden("metered_minimum", &inv);
}

#[test]
fn add_on_bills_seats_and_the_overage_beyond_the_seats_tokens() {
    // 4 seats × 15 = 60.00; 4 × 250,000 = 1,000,000 included; 1,456,789 used: 456.789K ×
    // 0.006 = 2.740734 → 2.74.
    let inv = final_v1("add-on", &basis(1_000_000, 456_789, 0, "5.00", Some("5.10")));
    assert_eq!(amounts(&inv), (vec![("seats", "60.00".into()), ("overage", "2.74".into())], "62.74".into()));
    golden("add_on_overage", &inv);
}

#[test]
fn a_restated_cost_issues_a_delta_version() {
    let plans = plans();
    let t = tenant("metered");
    let v1 =
        issue::next_final("2025-11", &t, &plans, &basis(3_000_000, 400_000, 0, "11.00", Some("12.3456789012")), &[])
            .unwrap();
    let issued = [Issued::from(&v1)];
    // Unchanged inputs: nothing new.
    assert_eq!(
        issue::next_final(
            "2025-11",
            &t,
            &plans,
            &basis(3_000_000, 400_000, 0, "11.00", Some("12.3456789012")),
            &issued
        ),
        None
    );
    // The CUR is restated: 13.0000000001 × 4 = 52.0000000004 → 52.00; delta 52.00 − 49.38 = 2.62.
    let v2 = issue::next_final(
        "2025-11",
        &t,
        &plans,
        &basis(3_000_000, 400_000, 0, "11.00", Some("13.0000000001")),
        &issued,
    )
    .unwrap();
    assert_eq!((v2.version, v2.supersedes.as_deref()), (2, Some(v1.id.as_str())));
    assert_eq!(amounts(&v2), (vec![("usage", "2.62".into())], "2.62".into()));
    assert_eq!(v2.lines[0].previous_amount, Some(d("49.38")));
    assert_eq!(v2.cumulative_total, d("52.00"));
    assert_ne!(v2.lines[0].id, v1.lines[0].id);
    assert_ne!(v2.id, v1.id);
    golden("metered_v2_delta", &v2);
}

#[test]
fn provisional_invoices_are_version_0_from_the_estimate() {
    let plans = plans();
    let b = basis(3_000_000, 400_000, 0, "11.00", Some("12.3456789012"));
    let inv = issue::provisional("2025-11", &tenant("metered"), &plans, &b).unwrap();
    assert_eq!((inv.status, inv.version, inv.cost_basis), (Status::Provisional, 0, d("11.0000000000")));
    assert_eq!(amounts(&inv).1, "44.00");
    let doc: InvoiceV1 = serde_json::from_str(&export::to_json(&inv)).unwrap();
    assert_eq!((doc.status, doc.internal.cost_source.as_str()), (Status::Provisional, "estimate"));
    golden("metered_provisional", &inv);
}

#[test]
fn the_schema_refuses_what_is_not_an_invoice() {
    let inv = final_v1("add-on", &basis(1_000_000, 456_789, 0, "5.00", Some("5.10")));
    let good: serde_json::Value = serde_json::from_str(&export::to_json(&inv)).unwrap();
    assert!(invoice_support::validate(&good).is_ok());
    let broken = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut v = good.clone();
        f(&mut v);
        invoice_support::validate(&v).is_err()
    };
    assert!(broken(&|v| v["total"] = serde_json::json!(62.74)), "a float amount");
    assert!(broken(&|v| v["lines"][0]["amount"] = serde_json::json!("60.0")), "one decimal place");
    assert!(broken(&|v| v["status"] = serde_json::json!("draft")), "an unknown status");
    assert!(broken(&|v| v["extra"] = serde_json::json!(1)), "an unknown field");
    assert!(broken(&|v| v["id"] = serde_json::json!("inv_123")), "a malformed id");
    assert!(
        broken(&|v| {
            v.as_object_mut().unwrap().remove("internal");
        }),
        "no cost basis"
    );
}
