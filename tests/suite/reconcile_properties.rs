//! Property tests for the money invariants of allocation (SPEC §3): a split adds up to the
//! group's cost exactly, each share is within one unit (10⁻¹⁰ USD) of its proportional value,
//! and the result does not depend on the order tenants or lines come in.

use std::collections::BTreeMap;

use proptest::prelude::*;
use tally::cur::classify::TokenType;
use tally::ids::TenantId;
use tally::reconcile::allocate::{allocate, split, Basis, Pool, UsageLine, Weight, Weights};

fn tenant(n: u8) -> TenantId {
    TenantId::new(&format!("tenant-{n:03}")).unwrap()
}

fn weights() -> impl Strategy<Value = Vec<(TenantId, u64)>> {
    // Distinct tenants, positive weights, some of them equal to force ties.
    prop::collection::btree_map(0u8..40, prop_oneof![1u64..4, 1u64..1_000_000_000_000], 1..12)
        .prop_map(|m| m.into_iter().map(|(t, w)| (tenant(t), w)).collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn shares_add_up_exactly_and_each_is_within_one_unit(total in -10i128.pow(20)..10i128.pow(20), w in weights()) {
        let shares = split(total, &w);
        prop_assert_eq!(shares.iter().map(|s| s.1).sum::<i128>(), total);
        let sum_w: i128 = w.iter().map(|x| i128::from(x.1)).sum();
        let by_tenant: BTreeMap<_, _> = shares.into_iter().collect();
        for (t, weight) in &w {
            // |share − total·w/W| < 1  ⇔  |share·W − total·w| < W
            let share = by_tenant[t];
            let exact = total * i128::from(*weight);
            prop_assert!((share * sum_w - exact).abs() < sum_w, "tenant {} share {} of {} by {}/{}", t, share, total, weight, sum_w);
        }
    }

    #[test]
    fn a_split_does_not_depend_on_input_order(total in -10i128.pow(15)..10i128.pow(15), w in weights(), seed in any::<u64>()) {
        let mut shuffled = w.clone();
        // A deterministic shuffle from the seed.
        let mut s = seed;
        for i in (1..shuffled.len()).rev() {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            shuffled.swap(i, (s >> 33) as usize % (i + 1));
        }
        prop_assert_eq!(split(total, &w), split(total, &shuffled));
    }

    #[test]
    fn every_unit_of_every_line_is_allocated_or_unallocated(
        lines in prop::collection::vec(line(), 0..60),
        usage in prop::collection::vec((0u8..3, 0u8..POOLS, 0u8..6, 0u64..10_000, 0u64..10_000), 0..40),
    ) {
        let w = weights_of(&usage);
        let owner = |r: &str| r.ends_with("/acme1").then(|| tenant(200));
        let a = allocate(&lines, owner, &w);
        let total: i128 = lines.iter().map(|l| l.cost).sum();
        let out: i128 = a.shares.values().sum::<i128>() + a.unallocated.values().sum::<i128>();
        prop_assert_eq!(out, total);
        // Deterministic: the same lines in reverse order allocate identically.
        let reversed: Vec<UsageLine> = lines.iter().rev().cloned().collect();
        prop_assert_eq!(&allocate(&reversed, owner, &w), &a);
        // A tenant named by a tag, an account or a principal takes exactly its lines' cost on
        // that basis; a model share exists only where a model pool had usage.
        for (basis, pick) in [
            (Basis::Tag, (|l: &UsageLine| l.tag.clone()) as fn(&UsageLine) -> Option<TenantId>),
            (Basis::Account, |l: &UsageLine| l.account.clone().filter(|_| l.tag.is_none())),
            (Basis::Principal, |l: &UsageLine| l.principal.clone().filter(|_| l.tag.is_none() && l.account.is_none())),
        ] {
            let mut want: BTreeMap<TenantId, i128> = BTreeMap::new();
            for l in &lines {
                if let Some(t) = pick(l) {
                    *want.entry(t).or_default() += l.cost;
                }
            }
            want.retain(|_, v| *v != 0);
            let mut got: BTreeMap<TenantId, i128> = BTreeMap::new();
            for (k, v) in a.shares.iter().filter(|(k, _)| k.4 == basis) {
                *got.entry(k.0.clone()).or_default() += v;
            }
            got.retain(|_, v| *v != 0);
            prop_assert_eq!(got, want, "{:?}", basis);
        }
    }

    /// Where a principal's line and a split meet on one day × pool × unit, the tenant the
    /// principal names gets no share of the split for its identity usage: it pays for that once,
    /// through its own line. Its pooled usage (decided by request metadata) is split as usual.
    #[test]
    fn no_tenant_pays_twice_where_principal_and_split_meet(
        principal_cost in 1i128..1_000_000_000_000,
        pooled_cost in 1i128..1_000_000_000_000,
        identity in 1u64..1_000_000,
        others in prop::collection::btree_map(0u8..20, 1u64..1_000_000, 1..6),
        model in any::<bool>(),
    ) {
        let pool = if model { Pool::Model("amazon.nova-lite-v1:0".into()) } else { Pool::Resource("pool".into()) };
        let resource = if model { "" } else { "arn:aws:bedrock:us-east-1:1:application-inference-profile/pool" };
        let base = UsageLine {
            day: "2025-11-02".into(), resource: resource.into(), token_type: TokenType::Input, tag: None,
            account: None, principal: None, pool: pool.clone(), usage_type: String::new(), cost: pooled_cost,
        };
        let lines = [UsageLine { principal: Some(tenant(100)), cost: principal_cost, ..base.clone() }, base];
        let mut w = Weights::new();
        let group = w.entry(("2025-11-02".into(), pool, TokenType::Input)).or_default();
        group.insert(tenant(100), Weight { pool: 0, identity });
        for (t, n) in &others {
            group.insert(tenant(*t), Weight { pool: *n, identity: 0 });
        }
        let a = allocate(&lines, |_| None, &w);
        let paid: i128 = a.shares.iter().filter(|(k, _)| k.0 == tenant(100)).map(|(_, v)| *v).sum();
        prop_assert_eq!(paid, principal_cost, "the principal's tenant pays its own line, once");
        let split: i128 = a.shares.iter().filter(|(k, _)| k.0 != tenant(100)).map(|(_, v)| *v).sum();
        prop_assert_eq!(split, pooled_cost, "the pooled line is split among the others only");
    }
}

/// Number of pools a generated line or counter can be in.
const POOLS: u8 = 7;

fn pool(n: u8) -> (&'static str, Pool) {
    match n {
        0 => ("", Pool::Model("amazon.nova-lite-v1:0".into())),
        1 => ("arn:aws:bedrock:us-east-1:1:application-inference-profile/pool", Pool::Resource("pool".into())),
        2 => ("arn:aws:bedrock:us-east-1:1:application-inference-profile/acme1", Pool::Resource("acme1".into())),
        3 => (
            "arn:aws:bedrock:us-east-1:1:inference-profile/us.anthropic.claude-x-v1:0",
            Pool::Resource("us.anthropic.claude-x-v1:0".into()),
        ),
        4 => ("", Pool::UnknownModel),
        6 => ("", Pool::CrossRegion("amazon.nova-lite-v1:0".into())),
        _ => (
            "arn:aws:bedrock:us-east-1::foundation-model/amazon.nova-pro-v1:0",
            Pool::Model("amazon.nova-pro-v1:0".into()),
        ),
    }
}

/// A line: day, pool, unit, who is named (none, a tag, an account, a principal, all three).
fn line() -> impl Strategy<Value = UsageLine> {
    (0u8..3, 0u8..POOLS, 0u8..6, 0u8..5, -1_000_000_000i128..1_000_000_000_000).prop_map(|(day, p, tt, named, cost)| {
        let (resource, pool) = pool(p);
        UsageLine {
            day: format!("2025-11-0{}", day + 1),
            resource: resource.to_string(),
            token_type: [
                TokenType::Input,
                TokenType::Output,
                TokenType::CacheRead,
                TokenType::CacheWrite,
                TokenType::Image,
                TokenType::Other,
            ][tt as usize],
            tag: matches!(named, 1 | 4).then(|| tenant(99)),
            account: matches!(named, 2 | 4).then(|| tenant(98)),
            principal: matches!(named, 3 | 4).then(|| tenant((cost.rem_euclid(3)) as u8)),
            pool,
            usage_type: "USE1-Unknown-input-tokens".into(),
            cost,
        }
    })
}

/// Counters: day, pool, tenant, pooled quantity, identity quantity (of input tokens).
fn weights_of(usage: &[(u8, u8, u8, u64, u64)]) -> Weights {
    let mut w = Weights::new();
    for &(day, p, t, pooled, identity) in usage {
        let (_, pool) = pool(p);
        let e = w
            .entry((format!("2025-11-0{}", day + 1), pool, TokenType::Input))
            .or_default()
            .entry(tenant(t))
            .or_default();
        e.pool += pooled;
        e.identity += identity;
    }
    w
}
