//! The real legacy CUR (fixtures/cur/legacy-workshop, from an AWS workshop, MIT-0): every one
//! of its 52 Bedrock rows is loaded, in its own billing period, with its cost and tokens. Its
//! rows have no resource ids (Titan and Claude v2 called by bare model id): each is attributed
//! to its model through the catalog's billing names and split by the counters of the tenants
//! that used that model that day; with no counters it is unallocated, never dropped.
//!
//! The expected values come from `derived_bedrock_rows.csv`, which was extracted from the same
//! Parquet with pyarrow, not by tally.

use crate::support;

use std::collections::BTreeMap;
use std::str::FromStr;

use rust_decimal::Decimal;
use support::{repo, Scratch};
use tally::cur::classify::{self, TokenType};
use tally::cur::load::{self, LoadOptions};
use tally::ids::{self, TenantId};
use tally::progress::NoProgress;
use tally::reconcile::{self, drift::Thresholds};
use tally::usage::{CounterKey, Resource, Usage, Via};

/// (period → (rows, Σ unblended cost, Σ tokens of the 1K-token rows)) from the CSV.
fn expected() -> BTreeMap<String, (u64, Decimal, i64)> {
    let text = std::fs::read_to_string(repo("fixtures/cur/legacy-workshop/derived_bedrock_rows.csv")).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').map(|h| h.trim_matches('"')).collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let (period, cost, amount, unit) = (
        col("bill_billing_period_start_date"),
        col("line_item_unblended_cost"),
        col("line_item_usage_amount"),
        col("pricing_unit"),
    );
    let mut out: BTreeMap<String, (u64, Decimal, i64)> = BTreeMap::new();
    for line in lines {
        // No field of the selected columns contains a comma except descriptions, which come
        // before the columns used here only as whole quoted strings; split on `","` safely.
        let fields = split_csv(line);
        let e = out.entry(fields[period][..7].to_string()).or_default();
        e.0 += 1;
        e.1 += Decimal::from_str(&fields[cost]).unwrap_or_else(|_| Decimal::from_scientific(&fields[cost]).unwrap());
        if fields[unit] == "1K tokens" {
            e.2 += (Decimal::from_str(&fields[amount]).unwrap() * Decimal::from(1000))
                .round()
                .to_string()
                .parse::<i64>()
                .unwrap();
        }
    }
    out
}

fn split_csv(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out
}

#[test]
fn all_52_bedrock_rows_load_in_their_periods_with_their_costs() {
    let expected = expected();
    assert_eq!(expected.values().map(|e| e.0).sum::<u64>(), 52);
    let dir = repo("fixtures/cur/legacy-workshop/year=2024/month=9");
    let mut rows = 0;
    for month in 3..=10 {
        let period = format!("2024-{month:02}");
        let snap = load::load(
            &dir,
            &LoadOptions { period: period.clone(), tenant_tag: "tenant_id".into(), ..Default::default() },
            &NoProgress,
        )
        .unwrap();
        assert_eq!(snap.files.len(), 8, "every chunk is read; rows are kept by billing period");
        let (n, cost, tokens) = expected.get(&period).copied().unwrap_or_default();
        assert_eq!(snap.lines(), n, "{period}: Bedrock rows");
        let got_cost: Decimal = snap.groups.values().map(|g| tally::money::from_units(g.cost)).sum();
        assert_eq!(got_cost.normalize(), cost.normalize(), "{period}: Σ unblended cost");
        let got_tokens: i64 = snap
            .groups
            .iter()
            .filter_map(|(k, s)| {
                classify::tokens_per_unit(&k.pricing_unit, &k.usage_type)
                    .map(|per| (tally::money::from_units(s.quantity) * per).round())
            })
            .map(|d| d.to_string().parse::<i64>().unwrap())
            .sum();
        assert_eq!(got_tokens, tokens, "{period}: tokens of the 1K-token rows");
        rows += snap.lines();
    }
    assert_eq!(rows, 52);
}

#[test]
fn without_resource_ids_the_real_cost_is_unallocated_and_balances() {
    let s = Scratch::new("[reconcile]\ntenant_tag = \"tenant_id\"");
    let config = s.config();
    let pipeline = config.pipeline().unwrap();
    let dir = repo("fixtures/cur/legacy-workshop/year=2024/month=9");
    let snap = load::load(
        &dir,
        &LoadOptions { period: "2024-08".into(), tenant_tag: "tenant_id".into(), ..Default::default() },
        &NoProgress,
    )
    .unwrap();
    let t = reconcile::reconcile("2024-08", &snap, &[], &pipeline, Thresholds::default()).unwrap();
    let (_, cost, _) = expected()["2024-08"];
    assert_eq!(t.report.usage_cost.normalize(), cost.normalize());
    assert_eq!(t.report.allocated, Decimal::ZERO);
    assert_eq!(t.report.unallocated.normalize(), cost.normalize());
    // Every model is known by its billing name: nothing is `unknown_model`.
    assert_eq!(t.report.unallocated_by_reason.keys().collect::<Vec<_>>(), ["no_usage_metered"]);
}

/// Counters that match the real CUR: on each line's day, two tenants called its model by its
/// bare id, `tenant-a` twice as much as `tenant-b` (tokens, or images for the image lines).
fn matching_counters(period: &str) -> Vec<(CounterKey, Usage)> {
    let text = std::fs::read_to_string(repo("fixtures/cur/legacy-workshop/derived_bedrock_rows.csv")).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').map(|h| h.trim_matches('"')).collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let catalog = tally::pricing::Catalog::builtin();
    let mut out: BTreeMap<CounterKey, Usage> = BTreeMap::new();
    for line in lines {
        let f = split_csv(line);
        if !f[col("bill_billing_period_start_date")].starts_with(period) {
            continue;
        }
        let ut = classify::UsageType::parse(&f[col("line_item_usage_type")], &f[col("pricing_unit")]);
        let model = catalog.model_of_billing_name(&ut.model).unwrap_or_else(|| panic!("no billing name {}", ut.model));
        let amount = Decimal::from_str(&f[col("line_item_usage_amount")]).unwrap();
        let n = if ut.unit.is_tokens() { amount * Decimal::from(1000) } else { amount };
        let n: u64 = (n * Decimal::from(3)).round().to_string().parse().unwrap();
        let hour = ids::parse_timestamp(&format!("{}T12:00:00Z", &f[col("line_item_usage_start_date")][..10])).unwrap();
        for (tenant, part) in [("tenant-a", 2 * n / 3), ("tenant-b", n - 2 * n / 3)] {
            let key = CounterKey {
                tenant: TenantId::new(tenant).unwrap(),
                hour,
                resource: Resource::new(model),
                via: Via::Pool,
            };
            let u = out.entry(key).or_default();
            u.requests += 1;
            match ut.unit {
                TokenType::Input => u.input += part,
                TokenType::Output => u.output += part,
                TokenType::Image => u.images += part,
                other => panic!("the workshop CUR has no {other} lines"),
            }
        }
    }
    out.into_iter().collect()
}

#[test]
fn without_resource_ids_the_real_cost_is_allocated_by_model_against_matching_counters() {
    let s = Scratch::new("[reconcile]\ntenant_tag = \"tenant_id\"");
    let pipeline = s.config().pipeline().unwrap();
    let dir = repo("fixtures/cur/legacy-workshop/year=2024/month=9");
    let mut periods = 0;
    for (period, (_, cost, _)) in expected() {
        let opts = LoadOptions { period: period.clone(), tenant_tag: "tenant_id".into(), ..Default::default() };
        let snap = load::load(&dir, &opts, &NoProgress).unwrap();
        let hours = matching_counters(&period);
        let t = reconcile::reconcile(&period, &snap, &hours, &pipeline, Thresholds::default()).unwrap();
        assert_eq!(t.report.usage_cost.normalize(), cost.normalize(), "{period}");
        assert_eq!(t.report.unallocated, Decimal::ZERO, "{period}: {:?}", t.report.unallocated_by_reason);
        assert_eq!(t.report.allocated.normalize(), cost.normalize(), "{period}");
        assert_eq!(t.report.allocated_by_basis.keys().collect::<Vec<_>>(), ["model"], "{period}");
        // tenant-a used two thirds of every model on every day, so it pays two thirds of the
        // bill, to within the largest-remainder unit (10⁻¹⁰ USD) per group.
        let a = t.report.tenants.iter().find(|c| c.tenant == "tenant-a").map(|c| c.cost).unwrap_or_default();
        let off = (a - cost * Decimal::from(2) / Decimal::from(3)).abs();
        assert!(off < Decimal::new(1, 7), "{period}: tenant-a pays {a} of {cost}");
        periods += 1;
    }
    assert_eq!(periods, 5, "the five billing periods that have Bedrock rows");
}
