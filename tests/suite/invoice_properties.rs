//! Property tests of the invoice money invariants (SPEC §4): the total is the sum of lines
//! each rounded once to cents; overage is never negative; a bundled plan's margin is fee − cost;
//! the versions issued over any sequence of restatements add up to a fresh computation.

use std::collections::BTreeMap;

use proptest::prelude::*;
use rust_decimal::{Decimal, RoundingStrategy};
use tally::ids::TenantId;
use tally::invoice::charge::{Basis, LineKind, TokenUsage};
use tally::invoice::issue::{self, Invoice, Issued};
use tally::invoice::plan::{Allowance, Plan, Plans, Pricing, Subscription};

/// A decimal of `mantissa` × 10^-`scale`.
fn money(max: i64, scale: u32) -> impl Strategy<Value = Decimal> {
    (0..=max).prop_map(move |m| Decimal::new(m, scale))
}

fn pricing() -> impl Strategy<Value = Pricing> {
    prop_oneof![
        money(100_000, 2).prop_map(|monthly_fee| Pricing::Bundled { monthly_fee }),
        (money(100_000, 2), 0..5_000_000u64, money(100_000, 5)).prop_map(|(monthly_fee, included, overage_rate)| {
            Pricing::Quota { monthly_fee, allowance: Allowance::Tokens { included }, overage_rate }
        }),
        (money(100_000, 2), money(1_000_000, 1), 1..10_000i64, money(100_000, 5)).prop_map(
            |(monthly_fee, included, c, overage_rate)| Pricing::Quota {
                monthly_fee,
                allowance: Allowance::Credits { included, credit_usd: Decimal::new(c, 4) },
                overage_rate
            }
        ),
        (1..100_000i64, money(10_000, 2))
            .prop_map(|(m, minimum)| Pricing::Metered { markup: Decimal::new(m, 3), minimum }),
        (money(10_000, 2), proptest::option::of((0..1_000_000u64, money(100_000, 5))))
            .prop_map(|(seat_price, overage)| Pricing::AddOn { seat_price, overage }),
    ]
}

fn basis() -> impl Strategy<Value = Basis> {
    (
        0..50_000_000u64,
        0..10_000_000u64,
        0..10_000_000u64,
        0..1_000_000u64,
        money(10_000_000_000, 8),
        proptest::option::of(money(1_000_000_000_000, 10)),
    )
        .prop_map(|(input, output, cache_read, cache_write, estimated_cost, reconciled_cost)| Basis {
            usage: TokenUsage { input, output, cache_read, cache_write, requests: 1, ..TokenUsage::default() },
            estimated_cost,
            reconciled_cost,
        })
}

fn plans_of(pricing: Pricing, seats: u64) -> (Plans, TenantId) {
    let tenant = TenantId::new("t").unwrap();
    let mut plans = Plans::default();
    plans
        .plans
        .insert("p".into(), Plan { name: "p".into(), pricing, requests_per_day: None, alerts: Default::default() });
    plans.tenants.insert(
        tenant.clone(),
        Subscription { plan: "p".into(), seats: if matches!(pricing, Pricing::AddOn { .. }) { seats } else { 0 } },
    );
    (plans, tenant)
}

fn cents(x: Decimal) -> Decimal {
    x.round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero)
}

fn amounts_by_kind(invoices: &[Invoice]) -> BTreeMap<LineKind, Decimal> {
    let mut m = BTreeMap::new();
    for l in invoices.iter().flat_map(|i| &i.lines) {
        *m.entry(l.kind).or_default() += l.amount;
    }
    m.retain(|_, v: &mut Decimal| !v.is_zero());
    m
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn the_total_is_the_sum_of_lines_rounded_once(pricing in pricing(), seats in 0..500u64, b in basis()) {
        let (plans, t) = plans_of(pricing, seats);
        let inv = issue::next_final("2025-11", &t, &plans, &b, &[]).unwrap();
        for l in &inv.lines {
            prop_assert_eq!(l.amount.scale(), 2);
            prop_assert_eq!(cents(l.amount), l.amount);
        }
        prop_assert_eq!(inv.total, inv.lines.iter().map(|l| l.amount).sum::<Decimal>());
        prop_assert_eq!(inv.total.scale(), 2);
        prop_assert_eq!(inv.margin, inv.total - inv.cost_basis);
    }

    #[test]
    fn overage_is_never_negative(pricing in pricing(), seats in 0..500u64, b in basis()) {
        let (plans, t) = plans_of(pricing, seats);
        let inv = issue::next_final("2025-11", &t, &plans, &b, &[]).unwrap();
        for l in inv.lines.iter().filter(|l| l.kind == LineKind::Overage) {
            prop_assert!(l.amount > Decimal::ZERO, "{:?}", l);
            prop_assert!(l.quantity > Decimal::ZERO, "{:?}", l);
        }
        if let Some(a) = inv.allowance {
            prop_assert!(a.over >= Decimal::ZERO);
            prop_assert_eq!(a.over.is_zero(), a.used <= a.included);
        }
        // The overage line is there exactly when the unrounded overage reaches half a cent.
        if let Pricing::Quota { allowance: Allowance::Tokens { included }, overage_rate, .. } = pricing {
            let exact = Decimal::from(b.usage.tokens().saturating_sub(included)) * overage_rate / Decimal::ONE_THOUSAND;
            let line = inv.lines.iter().find(|l| l.kind == LineKind::Overage).map(|l| l.amount).unwrap_or_default();
            prop_assert_eq!(line, cents(exact));
        }
    }

    #[test]
    fn bundled_margin_is_fee_minus_cost(fee in money(10_000_000, 2), b in basis()) {
        let (plans, t) = plans_of(Pricing::Bundled { monthly_fee: fee }, 0);
        let inv = issue::next_final("2025-11", &t, &plans, &b, &[]).unwrap();
        prop_assert_eq!(inv.lines.len(), 1);
        prop_assert_eq!(inv.total, fee);
        prop_assert_eq!(inv.margin, fee - b.cost());
    }

    #[test]
    fn metered_is_markup_or_minimum(markup in 1..100_000i64, minimum in money(100_000, 2), b in basis()) {
        let markup = Decimal::new(markup, 3);
        let (plans, t) = plans_of(Pricing::Metered { markup, minimum }, 0);
        let inv = issue::next_final("2025-11", &t, &plans, &b, &[]).unwrap();
        prop_assert_eq!(inv.total, cents((b.cost() * markup).max(minimum)));
    }

    #[test]
    fn versions_add_up_to_a_fresh_invoice(pricing in pricing(), seats in 0..500u64, restatements in proptest::collection::vec(basis(), 1..5)) {
        let (plans, t) = plans_of(pricing, seats);
        let mut issued: Vec<Issued> = Vec::new();
        let mut invoices: Vec<Invoice> = Vec::new();
        for b in &restatements {
            if let Some(inv) = issue::next_final("2025-11", &t, &plans, b, &issued) {
                prop_assert_eq!(inv.version as usize, issued.len() + 1);
                prop_assert_eq!(inv.total, inv.lines.iter().map(|l| l.amount).sum::<Decimal>());
                prop_assert_eq!((inv.total.scale(), inv.cumulative_total.scale()), (2, 2));
                issued.push(Issued::from(&inv));
                invoices.push(inv);
            }
            let fresh = issue::next_final("2025-11", &t, &plans, b, &[]).unwrap();
            prop_assert_eq!(invoices.last().unwrap().cumulative_total, fresh.total);
            prop_assert_eq!(amounts_by_kind(&invoices), amounts_by_kind(std::slice::from_ref(&fresh)));
            prop_assert_eq!(invoices.last().unwrap().cost_basis, fresh.cost_basis);
        }
        // The same inputs again issue nothing.
        let last = restatements.last().unwrap();
        prop_assert!(issue::next_final("2025-11", &t, &plans, last, &issued).is_none());
    }
}

/// A large period: every plan kind, tenants with usage and none, tenants with usage and no plan,
/// and (for a final run) tenants with versions already issued — some still right, some not.
fn large_period(tenants: usize) -> (Plans, BTreeMap<TenantId, tally::usage::Usage>, BTreeMap<TenantId, Decimal>) {
    let mut plans = Plans::default();
    let kinds = [
        Pricing::Bundled { monthly_fee: Decimal::new(4900, 2) },
        Pricing::Quota {
            monthly_fee: Decimal::new(1900, 2),
            allowance: Allowance::Tokens { included: 50_000 },
            overage_rate: Decimal::new(2, 5),
        },
        Pricing::Quota {
            monthly_fee: Decimal::new(1000, 2),
            allowance: Allowance::Credits { included: Decimal::new(1000, 0), credit_usd: Decimal::new(1, 3) },
            overage_rate: Decimal::new(15, 4),
        },
        Pricing::Metered { markup: Decimal::new(1250, 3), minimum: Decimal::new(500, 2) },
        Pricing::AddOn { seat_price: Decimal::new(1200, 2), overage: Some((10_000, Decimal::new(3, 5))) },
    ];
    for (k, pricing) in kinds.into_iter().enumerate() {
        let name = format!("plan{k}");
        plans.plans.insert(name.clone(), Plan { name, pricing, requests_per_day: None, alerts: Default::default() });
    }
    let mut usage = BTreeMap::new();
    let mut reconciled = BTreeMap::new();
    for i in 0..tenants {
        let t = TenantId::new(&format!("tenant-{i:06}")).unwrap();
        if i % 11 != 0 {
            let plan = format!("plan{}", i % 5);
            plans.tenants.insert(t.clone(), Subscription { plan, seats: (i % 7) as u64 });
        }
        if i % 3 != 0 {
            let n = (i as u64 * 7919) % 200_000;
            let u = tally::usage::Usage {
                input: n,
                output: n / 3,
                cache_read: n / 5,
                cache_write: n / 50,
                requests: 1 + n / 1000,
                est_cost: Decimal::new(n as i64 * 37, 8),
                ..Default::default()
            };
            usage.insert(t.clone(), u);
            reconciled.insert(t, Decimal::new(n as i64 * 41, 8));
        }
    }
    (plans, usage, reconciled)
}

/// Billing a large period on several threads gives exactly the billing of one thread: the same
/// invoices and margin rows in the same (tenant) order, provisional and final, with versions
/// already issued.
#[test]
fn billing_on_every_core_is_billing_tenant_by_tenant() {
    let (plans, usage, reconciled) = large_period(20_000);
    let no_issued = BTreeMap::new();
    let period =
        |reconciled, issued| issue::Period { period: "2025-11", plans: &plans, usage: &usage, reconciled, issued };

    let provisional = issue::bill_on(&period(None, &no_issued), 1);
    assert_eq!(provisional.invoices.len(), plans.tenants.len());
    for threads in [2, 3, 8] {
        assert_eq!(issue::bill_on(&period(None, &no_issued), threads), provisional, "provisional on {threads} threads");
    }
    assert_eq!(issue::bill(&period(None, &no_issued)), provisional);

    // Version 1 for everyone, then a restatement that changes every fifth tenant's cost.
    let first = issue::bill_on(&period(Some(&reconciled), &no_issued), 1);
    let issued: BTreeMap<TenantId, Vec<Issued>> =
        first.invoices.iter().map(|i| (i.tenant.clone(), vec![Issued::from(i)])).collect();
    let mut restated = reconciled.clone();
    for (k, cost) in restated.iter_mut().enumerate() {
        if k % 5 == 0 {
            *cost.1 += Decimal::new(123_456, 6);
        }
    }
    let second = issue::bill_on(&period(Some(&restated), &issued), 1);
    assert!(second.invoices.iter().all(|i| i.version == 2) && !second.invoices.is_empty());
    assert!(second.unchanged > 0);
    for threads in [2, 3, 8] {
        assert_eq!(
            issue::bill_on(&period(Some(&reconciled), &no_issued), threads),
            first,
            "final v1 on {threads} threads"
        );
        assert_eq!(issue::bill_on(&period(Some(&restated), &issued), threads), second, "final v2 on {threads} threads");
    }
    let tenants: Vec<&TenantId> = second.margin.iter().map(|r| &r.tenant).collect();
    assert!(tenants.windows(2).all(|w| w[0] < w[1]), "margin rows in tenant order, each once");
}
