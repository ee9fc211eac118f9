//! Allocation of CUR usage cost to tenants (SPEC §3). Pure: lines and usage in, shares out.
//!
//! Each usage line, grouped by UTC day × resource × token type (and tenant tag), goes:
//! 1. to the tenant its tenant tag names (`tag`);
//! 2. else to the tenant its resource is registered to (`profile`);
//! 3. else, for a shared profile or model, to the tenants whose counters used that resource
//!    that day, in proportion to their tokens of that token type (`usage`), split in integer
//!    units of 10⁻¹⁰ USD by the largest-remainder method;
//! 4. else it is unallocated, with the reason (`no_resource`, `no_usage_metered`).
//!
//! Money is `i128` units of 10⁻¹⁰ USD here (see `cur::money`), so every sum is exact and the
//! shares of a group add up to the group's cost with nothing left over.

use std::collections::BTreeMap;

use crate::cur::classify::TokenType;
use crate::ids::TenantId;

/// One CUR usage line (or a sum of lines with the same key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageLine {
    /// `YYYY-MM-DD`, UTC.
    pub day: String,
    /// `line_item_resource_id`; empty when the line has none.
    pub resource: String,
    pub token_type: TokenType,
    /// The tenant tag's value, when the line carries one.
    pub tag: Option<TenantId>,
    /// Units of 10⁻¹⁰ USD.
    pub cost: i128,
}

/// Why a share went to its tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Basis {
    Tag,
    Profile,
    Usage,
}

impl Basis {
    pub fn as_str(self) -> &'static str {
        match self {
            Basis::Tag => "tag",
            Basis::Profile => "profile",
            Basis::Usage => "usage",
        }
    }
}

/// Why cost stayed unallocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// The line has no resource id (a bare model call, or a CUR without resource ids).
    NoResource,
    /// The resource is shared (or unknown) and no counter used it that day.
    NoUsageMetered,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NoResource => "no_resource",
            Reason::NoUsageMetered => "no_usage_metered",
        }
    }
}

/// Key of an allocated share: tenant × day × resource × token type × basis.
pub type ShareKey = (TenantId, String, String, TokenType, Basis);
/// Key of unallocated cost: day × resource × token type × reason.
pub type UnallocatedKey = (String, String, TokenType, Reason);
/// Metered usage per day × resource key × token type: tenant → weight (tokens of that type;
/// requests for `TokenType::Other`).
pub type Weights = BTreeMap<(String, String, TokenType), BTreeMap<TenantId, u64>>;

/// The result: every unit of every line is in exactly one of the two maps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allocation {
    pub shares: BTreeMap<ShareKey, i128>,
    pub unallocated: BTreeMap<UnallocatedKey, i128>,
}

/// The key a resource is matched on between CUR and counters: the id after the last `/` of a
/// profile ARN (so `…:inference-profile/us.anthropic…` matches a logged `us.anthropic…`), and
/// `None` for a base model, whose CUR lines carry no resource id.
pub fn resource_key(resource: &str) -> Option<String> {
    if resource.is_empty() {
        return None;
    }
    match crate::ids::Target::parse(resource) {
        crate::ids::Target::Model { .. } => None,
        _ => Some(resource.rsplit('/').next().unwrap_or(resource).to_string()),
    }
}

/// Allocates `lines`. `owner` answers the profile registry: the tenant a resource is
/// dedicated to, if any.
pub fn allocate<'a, I, F>(lines: I, owner: F, weights: &Weights) -> Allocation
where
    I: IntoIterator<Item = &'a UsageLine>,
    F: Fn(&str) -> Option<TenantId>,
{
    // One decision per day × resource × token type × tag.
    let mut groups: BTreeMap<(&str, &str, TokenType, Option<&TenantId>), i128> = BTreeMap::new();
    for l in lines {
        *groups.entry((l.day.as_str(), l.resource.as_str(), l.token_type, l.tag.as_ref())).or_default() += l.cost;
    }
    let mut out = Allocation::default();
    for ((day, resource, token_type, tag), cost) in groups {
        let mut give = |tenant: TenantId, basis: Basis, units: i128| {
            *out.shares.entry((tenant, day.to_string(), resource.to_string(), token_type, basis)).or_default() += units;
        };
        if let Some(t) = tag {
            give(t.clone(), Basis::Tag, cost);
            continue;
        }
        let Some(key) = resource_key(resource) else {
            *out.unallocated
                .entry((day.to_string(), resource.to_string(), token_type, Reason::NoResource))
                .or_default() += cost;
            continue;
        };
        if let Some(t) = owner(resource) {
            give(t, Basis::Profile, cost);
            continue;
        }
        let users: Vec<(TenantId, u64)> = weights
            .get(&(day.to_string(), key, token_type))
            .map(|m| m.iter().filter(|(_, w)| **w > 0).map(|(t, w)| (t.clone(), *w)).collect())
            .unwrap_or_default();
        if users.is_empty() {
            *out.unallocated
                .entry((day.to_string(), resource.to_string(), token_type, Reason::NoUsageMetered))
                .or_default() += cost;
            continue;
        }
        for (tenant, units) in split(cost, &users) {
            give(tenant, Basis::Usage, units);
        }
    }
    out.shares.retain(|_, v| *v != 0);
    out
}

/// Splits `total` units among `weights` (all positive) by the largest-remainder method: each
/// gets ⌊total·w/W⌋, and the units left over go one each to the largest remainders, ties to
/// the tenant whose id sorts first (byte order). The shares add up to `total` exactly and each
/// is within one unit of `total·w/W`. A negative total is split as its magnitude, negated.
pub fn split(total: i128, weights: &[(TenantId, u64)]) -> Vec<(TenantId, i128)> {
    let sum: u128 = weights.iter().map(|(_, w)| u128::from(*w)).sum();
    assert!(sum > 0, "split needs a positive total weight");
    let sign = total.signum();
    let magnitude = total.unsigned_abs();
    let mut parts: Vec<(u128, u128, &TenantId)> = weights
        .iter()
        .map(|(t, w)| {
            let p = mul_div(magnitude, u128::from(*w), sum);
            (p.0, p.1, t)
        })
        .collect();
    let given: u128 = parts.iter().map(|p| p.0).sum();
    let mut left = magnitude - given;
    let mut order: Vec<usize> = (0..parts.len()).collect();
    order.sort_by(|&a, &b| {
        parts[b].1.cmp(&parts[a].1).then_with(|| parts[a].2.as_str().as_bytes().cmp(parts[b].2.as_str().as_bytes()))
    });
    for i in order {
        if left == 0 {
            break;
        }
        parts[i].0 += 1;
        left -= 1;
    }
    let mut shares: Vec<(TenantId, i128)> = parts.into_iter().map(|(q, _, t)| (t.clone(), sign * q as i128)).collect();
    shares.sort_by(|a, b| a.0.as_str().as_bytes().cmp(b.0.as_str().as_bytes()));
    shares
}

/// (⌊a·b/c⌋, (a·b) mod c) for b ≤ c, without overflow while c < 2⁶⁴ (a total weight of
/// 18 quintillion tokens in one group).
fn mul_div(a: u128, b: u128, c: u128) -> (u128, u128) {
    match a.checked_mul(b) {
        Some(p) => (p / c, p % c),
        None => {
            // a·b = (qa·c + ra)·b = qa·b·c + ra·b, with ra < c so ra·b fits when b ≤ c < 2⁶⁴.
            let (qa, ra) = (a / c, a % c);
            let rb = ra * b;
            (qa * b + rb / c, rb % c)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> TenantId {
        TenantId::new(s).unwrap()
    }

    fn check(total: i128, weights: &[(&str, u64)], expected: &[(&str, i128)]) {
        let w: Vec<(TenantId, u64)> = weights.iter().map(|(n, w)| (t(n), *w)).collect();
        let got: Vec<(String, i128)> = split(total, &w).into_iter().map(|(t, u)| (t.as_str().to_string(), u)).collect();
        let want: Vec<(String, i128)> = expected.iter().map(|(n, u)| (n.to_string(), *u)).collect();
        assert_eq!(got, want, "split {total} by {weights:?}");
    }

    #[test]
    fn largest_remainder_with_ties_to_the_first_id() {
        check(10, &[("a", 1), ("b", 1), ("c", 1)], &[("a", 4), ("b", 3), ("c", 3)]);
        check(10, &[("c", 1), ("b", 1), ("a", 1)], &[("a", 4), ("b", 3), ("c", 3)]);
        check(-10, &[("a", 1), ("b", 1), ("c", 1)], &[("a", -4), ("b", -3), ("c", -3)]);
        check(7, &[("x", 2), ("y", 5)], &[("x", 2), ("y", 5)]);
        check(100, &[("big", 66), ("small", 1)], &[("big", 99), ("small", 1)]);
        check(1, &[("_unattributed", 1), ("tenant-0001", 1)], &[("_unattributed", 1), ("tenant-0001", 0)]);
    }

    #[test]
    fn a_line_goes_by_tag_then_profile_then_usage_then_unallocated() {
        let line = |resource: &str, tag: Option<&str>, cost| UsageLine {
            day: "2025-11-02".into(),
            resource: resource.into(),
            token_type: TokenType::Input,
            tag: tag.map(t),
            cost,
        };
        let shared = "arn:aws:bedrock:us-east-1:1:application-inference-profile/pool";
        let dedicated = "arn:aws:bedrock:us-east-1:1:application-inference-profile/acme1";
        let lines = [
            line(dedicated, Some("globex"), 5),
            line(dedicated, None, 7),
            line(shared, None, 9),
            line("", None, 11),
            line("arn:aws:bedrock:us-east-1:1:application-inference-profile/nobody", None, 13),
        ];
        let mut weights = Weights::new();
        weights.insert(("2025-11-02".into(), "pool".into(), TokenType::Input), [(t("a"), 1), (t("b"), 2)].into());
        let got = allocate(&lines, |r| r.ends_with("/acme1").then(|| t("acme")), &weights);
        let shares: Vec<(&str, Basis, i128)> = got.shares.iter().map(|(k, v)| (k.0.as_str(), k.4, *v)).collect();
        assert_eq!(
            shares,
            [("a", Basis::Usage, 3), ("acme", Basis::Profile, 7), ("b", Basis::Usage, 6), ("globex", Basis::Tag, 5)]
        );
        let unallocated: Vec<(Reason, i128)> = got.unallocated.iter().map(|(k, v)| (k.3, *v)).collect();
        assert_eq!(unallocated, [(Reason::NoResource, 11), (Reason::NoUsageMetered, 13)]);
    }

    #[test]
    fn resources_match_on_the_profile_id() {
        assert_eq!(
            resource_key("arn:aws:bedrock:us-east-1:1:inference-profile/us.anthropic.claude-x-v1:0").as_deref(),
            Some("us.anthropic.claude-x-v1:0")
        );
        assert_eq!(resource_key("us.anthropic.claude-x-v1:0").as_deref(), Some("us.anthropic.claude-x-v1:0"));
        assert_eq!(resource_key("amazon.nova-lite-v1:0"), None);
        assert_eq!(resource_key("arn:aws:bedrock:us-east-1::foundation-model/amazon.nova-pro-v1:0"), None);
        assert_eq!(resource_key(""), None);
    }
}
