//! Allocation of CUR usage cost to tenants (SPEC §3). Pure: lines and usage in, shares out.
//!
//! Each usage line, grouped by UTC day × resource × unit (and whatever names a tenant), goes:
//! 1. to the tenant its tenant tag names (`tag`);
//! 2. else to the silo tenant that owns its usage account (`account`);
//! 3. else to the tenant its IAM principal names through the identity rule (`principal`); that
//!    tenant's usage decided by the identity rule is then left out of the splits of the same
//!    day × pool × unit, so nobody pays twice;
//! 4. else to the tenant its resource is registered to (`profile`);
//! 5. else, for a shared or system profile, to the tenants whose counters used that resource
//!    that day, by their quantity of that unit (`usage`);
//! 6. else, for a line without a resource id (or with a foundation-model ARN), to the tenants
//!    whose counters used that model by a bare id or a foundation-model ARN that day (`model`);
//! 7. else it is unallocated, with the reason (`no_usage_metered`, `unknown_model`).
//!
//! Splits are in integer units of 10⁻¹⁰ USD by the largest-remainder method. Usage a silo
//! account decided never enters a split: that account's own lines pay for it.
//!
//! Money is `i128` units of 10⁻¹⁰ USD here (see `cur::money`), so every sum is exact and the
//! shares of a group add up to the group's cost with nothing left over.

use std::collections::{BTreeMap, BTreeSet};

use crate::cur::classify::TokenType;
use crate::ids::TenantId;

/// What a line's cost is split over when no tenant is named for it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Pool {
    /// A profile, by [`resource_key`].
    Resource(String),
    /// A model (catalog model id), for lines without a resource id or with a foundation-model
    /// ARN, and the counters of calls by a bare model id or foundation-model ARN.
    Model(String),
    /// A model called through system (cross-region) profiles: a line without a resource id
    /// whose usage type says `cross-region` (a CUR without resource ids), split among the
    /// tenants whose counters used a system profile of that model. A CUR with resource ids
    /// bills those calls on the profile's own lines, so this pool is then never used and
    /// nobody pays twice.
    CrossRegion(String),
    /// A line without a resource id whose usage type names no model the catalog knows.
    UnknownModel,
}

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
    /// The silo tenant that owns the line's usage account.
    pub account: Option<TenantId>,
    /// The tenant the line's IAM principal names through the identity rule.
    pub principal: Option<TenantId>,
    pub pool: Pool,
    /// The usage type, kept for unallocated `unknown_model` rows.
    pub usage_type: String,
    /// Units of 10⁻¹⁰ USD.
    pub cost: i128,
}

/// Why a share went to its tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Basis {
    Tag,
    Account,
    Principal,
    Profile,
    Usage,
    Model,
}

impl Basis {
    pub fn as_str(self) -> &'static str {
        match self {
            Basis::Tag => "tag",
            Basis::Account => "account",
            Basis::Principal => "principal",
            Basis::Profile => "profile",
            Basis::Usage => "usage",
            Basis::Model => "model",
        }
    }
}

/// Why cost stayed unallocated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// No resource id, and the usage type (or Marketplace product name) names no model the
    /// catalog's billing names know.
    UnknownModel,
    /// The resource or model is shared (or unknown) and no counter used it that day.
    NoUsageMetered,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::UnknownModel => "unknown_model",
            Reason::NoUsageMetered => "no_usage_metered",
        }
    }
}

/// Key of an allocated share: tenant × day × resource × token type × basis. The resource of
/// a `model` share is the model id.
pub type ShareKey = (TenantId, String, String, TokenType, Basis);
/// Key of unallocated cost: day × resource × token type × reason × usage type (the usage type
/// only for `unknown_model`, else empty).
pub type UnallocatedKey = (String, String, TokenType, Reason, String);

/// A tenant's metered quantity of one unit in one pool on one day, by how its tenant was
/// decided. Usage decided by a silo account is not kept: it is never split.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Weight {
    /// Decided by request metadata, the profile registry, or no rule.
    pub pool: u64,
    /// Decided by the identity rule (left out where the tenant's principal pays).
    pub identity: u64,
}

/// Metered usage per day × pool × unit: tenant → weight (quantity of that unit; requests for
/// `TokenType::Other`).
pub type Weights = BTreeMap<(String, Pool, TokenType), BTreeMap<TenantId, Weight>>;

/// The result: every unit of every line is in exactly one of the two maps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allocation {
    pub shares: BTreeMap<ShareKey, i128>,
    pub unallocated: BTreeMap<UnallocatedKey, i128>,
}

/// The key a resource is matched on between CUR and counters: the id after the last `/` of a
/// profile ARN (so `…:inference-profile/us.anthropic…` matches a logged `us.anthropic…`), and
/// `None` for a base model (a bare id or a foundation-model ARN), which is pooled by model.
pub fn resource_key(resource: &str) -> Option<String> {
    if resource.is_empty() {
        return None;
    }
    match crate::ids::Target::parse(resource) {
        crate::ids::Target::Model { .. } => None,
        _ => Some(resource.rsplit('/').next().unwrap_or(resource).to_string()),
    }
}

/// The pool a counter's resource belongs to: its profile, or its model.
pub fn pool_of_counter(resource: &str) -> Pool {
    match resource_key(resource) {
        Some(key) => Pool::Resource(key),
        None => match crate::ids::Target::parse(resource) {
            crate::ids::Target::Model { model } => Pool::Model(model),
            _ => Pool::UnknownModel,
        },
    }
}

/// Allocates `lines`. `owner` answers the profile registry: the tenant a resource is
/// dedicated to, if any.
pub fn allocate<'a, I, F>(lines: I, owner: F, weights: &Weights) -> Allocation
where
    I: IntoIterator<Item = &'a UsageLine>,
    F: Fn(&str) -> Option<TenantId>,
{
    // One decision per day × resource × unit × pool × named tenants (× usage type, kept for
    // unknown models only).
    type Group<'l> = (
        &'l str,
        &'l str,
        TokenType,
        &'l Pool,
        Option<&'l TenantId>,
        Option<&'l TenantId>,
        Option<&'l TenantId>,
        &'l str,
    );
    let mut groups: BTreeMap<Group<'a>, i128> = BTreeMap::new();
    // Day × pool × unit × tenant where a line goes to the tenant by its principal.
    let mut by_principal: BTreeSet<(&'a str, &'a Pool, TokenType, &'a TenantId)> = BTreeSet::new();
    for l in lines {
        let usage_type = if l.pool == Pool::UnknownModel { l.usage_type.as_str() } else { "" };
        let key = (
            l.day.as_str(),
            l.resource.as_str(),
            l.token_type,
            &l.pool,
            l.tag.as_ref(),
            l.account.as_ref(),
            l.principal.as_ref(),
            usage_type,
        );
        *groups.entry(key).or_default() += l.cost;
        if let (None, None, Some(t)) = (&l.tag, &l.account, &l.principal) {
            by_principal.insert((l.day.as_str(), &l.pool, l.token_type, t));
        }
    }
    let mut out = Allocation::default();
    for ((day, resource, token_type, pool, tag, account, principal, usage_type), cost) in groups {
        let mut give = |tenant: TenantId, basis: Basis, label: &str, units: i128| {
            *out.shares.entry((tenant, day.to_string(), label.to_string(), token_type, basis)).or_default() += units;
        };
        let mut unallocated = |reason: Reason, usage_type: &str| {
            *out.unallocated
                .entry((day.to_string(), resource.to_string(), token_type, reason, usage_type.to_string()))
                .or_default() += cost;
        };
        if let Some(t) = tag {
            give(t.clone(), Basis::Tag, resource, cost);
            continue;
        }
        if let Some(t) = account {
            give(t.clone(), Basis::Account, resource, cost);
            continue;
        }
        if let Some(t) = principal {
            give(t.clone(), Basis::Principal, resource, cost);
            continue;
        }
        let (basis, label) = match pool {
            Pool::UnknownModel => {
                unallocated(Reason::UnknownModel, usage_type);
                continue;
            }
            Pool::Resource(_) => {
                if let Some(t) = owner(resource) {
                    give(t, Basis::Profile, resource, cost);
                    continue;
                }
                (Basis::Usage, resource)
            }
            Pool::Model(model) | Pool::CrossRegion(model) => (Basis::Model, model.as_str()),
        };
        let users: Vec<(TenantId, u64)> = weights
            .get(&(day.to_string(), pool.clone(), token_type))
            .map(|m| {
                m.iter()
                    .map(|(t, w)| {
                        let paid_by_principal = by_principal.contains(&(day, pool, token_type, t));
                        (t.clone(), w.pool + if paid_by_principal { 0 } else { w.identity })
                    })
                    .filter(|(_, w)| *w > 0)
                    .collect()
            })
            .unwrap_or_default();
        if users.is_empty() {
            unallocated(Reason::NoUsageMetered, "");
            continue;
        }
        for (tenant, units) in split(cost, &users) {
            give(tenant, basis, label, units);
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

    fn line(resource: &str, pool: Pool, cost: i128) -> UsageLine {
        UsageLine {
            day: "2025-11-02".into(),
            resource: resource.into(),
            token_type: TokenType::Input,
            tag: None,
            account: None,
            principal: None,
            pool,
            usage_type: "USE1-X-input-tokens".into(),
            cost,
        }
    }

    fn weight(pool: u64, identity: u64) -> Weight {
        Weight { pool, identity }
    }

    #[test]
    fn a_line_goes_by_tag_account_principal_profile_usage_model_then_unallocated() {
        let shared = "arn:aws:bedrock:us-east-1:1:application-inference-profile/pool";
        let dedicated = "arn:aws:bedrock:us-east-1:1:application-inference-profile/acme1";
        let nova = Pool::Model("amazon.nova-lite-v1:0".into());
        let lines = [
            UsageLine { tag: Some(t("globex")), ..line(dedicated, Pool::Resource("acme1".into()), 5) },
            UsageLine { account: Some(t("hooli")), tag: None, ..line(shared, Pool::Resource("pool".into()), 2) },
            UsageLine { principal: Some(t("initech")), ..line("", nova.clone(), 4) },
            line(dedicated, Pool::Resource("acme1".into()), 7),
            line(shared, Pool::Resource("pool".into()), 9),
            line("", nova.clone(), 30),
            line("", Pool::UnknownModel, 11),
            line(
                "arn:aws:bedrock:us-east-1:1:application-inference-profile/nobody",
                Pool::Resource("nobody".into()),
                13,
            ),
        ];
        let mut weights = Weights::new();
        let day = "2025-11-02".to_string();
        weights.insert(
            (day.clone(), Pool::Resource("pool".into()), TokenType::Input),
            [(t("a"), weight(1, 0)), (t("b"), weight(2, 0))].into(),
        );
        // initech's identity usage is paid by its principal's line; its pooled usage is split.
        weights.insert(
            (day.clone(), nova.clone(), TokenType::Input),
            [(t("a"), weight(1, 0)), (t("initech"), weight(1, 8))].into(),
        );
        let got = allocate(&lines, |r| r.ends_with("/acme1").then(|| t("acme")), &weights);
        let shares: Vec<(&str, Basis, i128)> = got.shares.iter().map(|(k, v)| (k.0.as_str(), k.4, *v)).collect();
        assert_eq!(
            shares,
            [
                ("a", Basis::Model, 15),
                ("a", Basis::Usage, 3),
                ("acme", Basis::Profile, 7),
                ("b", Basis::Usage, 6),
                ("globex", Basis::Tag, 5),
                ("hooli", Basis::Account, 2),
                ("initech", Basis::Principal, 4),
                ("initech", Basis::Model, 15),
            ]
        );
        let model_share = got.shares.keys().find(|k| k.4 == Basis::Model).unwrap();
        assert_eq!(model_share.2, "amazon.nova-lite-v1:0", "a model share names its model");
        let unallocated: Vec<(Reason, &str, i128)> =
            got.unallocated.iter().map(|(k, v)| (k.3, k.4.as_str(), *v)).collect();
        assert_eq!(unallocated, [(Reason::UnknownModel, "USE1-X-input-tokens", 11), (Reason::NoUsageMetered, "", 13)]);
    }

    #[test]
    fn a_cross_region_line_without_a_resource_is_split_among_the_system_profile_users() {
        let sonnet = "anthropic.claude-sonnet-4-20250514-v1:0".to_string();
        let lines = [line("", Pool::CrossRegion(sonnet.clone()), 8), line("", Pool::Model(sonnet.clone()), 5)];
        let day = "2025-11-02".to_string();
        let mut weights = Weights::new();
        weights.insert(
            (day.clone(), Pool::CrossRegion(sonnet.clone()), TokenType::Input),
            [(t("a"), weight(1, 0)), (t("b"), weight(3, 0))].into(),
        );
        weights.insert((day, Pool::Model(sonnet.clone()), TokenType::Input), [(t("c"), weight(2, 0))].into());
        let got = allocate(&lines, |_| None, &weights);
        let shares: Vec<(&str, &str, i128)> =
            got.shares.iter().map(|(k, v)| (k.0.as_str(), k.2.as_str(), *v)).collect();
        assert_eq!(shares, [("a", sonnet.as_str(), 2), ("b", sonnet.as_str(), 6), ("c", sonnet.as_str(), 5)]);
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
        assert_eq!(
            pool_of_counter("arn:aws:bedrock:us-east-1::foundation-model/amazon.nova-pro-v1:0"),
            Pool::Model("amazon.nova-pro-v1:0".into())
        );
        assert_eq!(pool_of_counter("amazon.nova-pro-v1:0"), Pool::Model("amazon.nova-pro-v1:0".into()));
        assert_eq!(pool_of_counter("us.amazon.nova-pro-v1:0"), Pool::Resource("us.amazon.nova-pro-v1:0".into()));
    }
}
