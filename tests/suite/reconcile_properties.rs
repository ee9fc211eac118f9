//! Property tests for the money invariants of allocation (SPEC §3): a split adds up to the
//! group's cost exactly, each share is within one unit (10⁻¹⁰ USD) of its proportional value,
//! and the result does not depend on the order tenants or lines come in.

use std::collections::BTreeMap;

use proptest::prelude::*;
use tally::cur::classify::TokenType;
use tally::ids::TenantId;
use tally::reconcile::allocate::{allocate, split, UsageLine, Weights};

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
        lines in prop::collection::vec((0u8..3, 0u8..4, 0u8..5, any::<bool>(), -1_000_000_000i128..1_000_000_000_000), 0..60),
        usage in prop::collection::vec((0u8..3, 0u8..4, 0u8..6, 0u64..10_000), 0..40),
    ) {
        let resources = ["", "arn:aws:bedrock:us-east-1:1:application-inference-profile/pool",
            "arn:aws:bedrock:us-east-1:1:application-inference-profile/acme1",
            "arn:aws:bedrock:us-east-1:1:inference-profile/us.anthropic.claude-x-v1:0"];
        let lines: Vec<UsageLine> = lines.into_iter().map(|(day, r, tt, tagged, cost)| UsageLine {
            day: format!("2025-11-0{}", day + 1),
            resource: resources[r as usize].to_string(),
            token_type: [TokenType::Input, TokenType::Output, TokenType::CacheRead, TokenType::CacheWrite, TokenType::Other][tt as usize],
            tag: tagged.then(|| tenant(99)),
            cost,
        }).collect();
        let mut w = Weights::new();
        for (day, r, t, n) in usage {
            let key = tally::reconcile::allocate::resource_key(resources[r as usize]);
            if let Some(key) = key {
                *w.entry((format!("2025-11-0{}", day + 1), key, TokenType::Input)).or_default().entry(tenant(t)).or_default() += n;
            }
        }
        let owner = |r: &str| r.ends_with("/acme1").then(|| tenant(200));
        let a = allocate(&lines, owner, &w);
        let total: i128 = lines.iter().map(|l| l.cost).sum();
        let out: i128 = a.shares.values().sum::<i128>() + a.unallocated.values().sum::<i128>();
        prop_assert_eq!(out, total);
        // Deterministic: the same lines in reverse order allocate identically.
        let reversed: Vec<UsageLine> = lines.iter().rev().cloned().collect();
        prop_assert_eq!(allocate(&reversed, owner, &w), a);
    }
}
