//! Tenant resolution (SPEC §2): which tenant a record is billed to, by server-side rules.
//!
//! A silo tenant's own AWS accounts (`[[tenancy.accounts]]`) decide first: a record from such an
//! account is that tenant's. Then the rules are tried in the configured order: request
//! metadata, the profile registry, a pattern on the caller's identity. The first that names a
//! tenant wins; when a later rule names a different tenant the disagreement is counted as a
//! conflict. No rule → `_unattributed`.
//!
//! Reconcile asks the same resolver about CUR lines: which tenant owns a usage account
//! ([`Resolver::account_owner`]) and which tenant an IAM principal names through the identity
//! rule ([`Resolver::principal_tenant`]).

use std::collections::HashMap;

use rustc_hash::FxHashMap;

use regex::Regex;
use serde::Deserialize;

use crate::ids::{Target, TenantId};
use crate::json;
use crate::pricing::Tier;
use crate::record::LogRecord;

/// A thread's memory of the strings it has turned into tenants: request-metadata values and
/// identity ARNs repeat on nearly every record, so each is trimmed, allocated and (for ARNs)
/// matched against the identity pattern once, not per record. Equal names share one
/// [`TenantId`]. Bounded: past [`Names::MAX`] entries of a kind it starts over.
#[derive(Debug, Default)]
pub struct Names {
    values: FxHashMap<Box<str>, Option<TenantId>>,
    identities: FxHashMap<Box<str>, Option<TenantId>>,
    unattributed: Option<TenantId>,
}

impl Names {
    /// Entries kept per kind; inputs with more distinct names than this only lose the cache.
    const MAX: usize = 1 << 16;

    fn remember(
        map: &mut FxHashMap<Box<str>, Option<TenantId>>,
        key: &str,
        make: impl FnOnce(&str) -> Option<TenantId>,
    ) -> Option<TenantId> {
        if let Some(found) = map.get(key) {
            return found.clone();
        }
        if map.len() >= Self::MAX {
            map.clear();
        }
        let made = make(key);
        map.insert(key.into(), made.clone());
        made
    }

    /// The tenant a request-metadata value names (`None` when blank).
    fn value(&mut self, v: &str) -> Option<TenantId> {
        Self::remember(&mut self.values, v, TenantId::new)
    }

    fn unattributed(&mut self) -> TenantId {
        self.unattributed.get_or_insert_with(TenantId::unattributed).clone()
    }
}

/// What the registry knows about one inference profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileInfo {
    /// The tenant of a dedicated profile; `None` for a shared pool.
    pub owner: Option<TenantId>,
    /// The model it routes to, for pricing.
    pub model: Option<String>,
    pub tier: Tier,
}

/// The tenant a record belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    pub tenant: TenantId,
    /// The rule that decided; `None` means unattributed.
    pub rule: Option<Rule>,
    /// A later rule named a different tenant.
    pub conflict: bool,
}

/// A tenant-resolution rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// `requestMetadata[metadata_key]`.
    RequestMetadata,
    /// The application inference profile's owner in the registry.
    Profile,
    /// `identity_pattern` on `identity.arn`.
    Identity,
    /// The record's `accountId` is a silo tenant's (`[[tenancy.accounts]]`). Not listed in
    /// `order`: it always decides first.
    #[serde(skip)]
    Account,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenancyConfig {
    /// Rules in the order they are tried; the first that names a tenant wins.
    #[serde(default = "TenancyConfig::default_order")]
    pub order: Vec<Rule>,
    /// The `requestMetadata` key holding the tenant id.
    #[serde(default = "TenancyConfig::default_metadata_key")]
    pub metadata_key: String,
    /// A regex on `identity.arn` with a named capture `tenant`.
    #[serde(default)]
    pub identity_pattern: Option<String>,
    /// The profile registry.
    #[serde(default)]
    pub profiles: Vec<ProfileEntry>,
    /// Silo tenants' AWS accounts: account id → tenant.
    #[serde(default)]
    pub accounts: Vec<AccountEntry>,
}

impl TenancyConfig {
    pub(crate) fn default_order() -> Vec<Rule> {
        vec![Rule::RequestMetadata, Rule::Profile, Rule::Identity]
    }
    fn default_metadata_key() -> String {
        "tenant_id".into()
    }
}

impl Default for TenancyConfig {
    fn default() -> Self {
        TenancyConfig {
            order: Self::default_order(),
            metadata_key: Self::default_metadata_key(),
            identity_pattern: None,
            profiles: Vec::new(),
            accounts: Vec::new(),
        }
    }
}

/// One inference profile: dedicated to a tenant, or a shared pool.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileEntry {
    /// The profile's ARN or its id (the part after the last `/`).
    pub profile: String,
    /// The tenant that owns a dedicated profile.
    #[serde(default)]
    pub tenant: Option<String>,
    /// True for a profile shared by several tenants (cost split by usage at reconcile).
    #[serde(default)]
    pub shared: bool,
    /// The model the profile routes to; used for pricing.
    #[serde(default)]
    pub model: Option<String>,
    /// `on_demand` (default) or `batch` (priced at the batch rate).
    #[serde(default)]
    pub tier: Option<String>,
}

/// A silo tenant's AWS account (the seeds' silo and bridge models: an enterprise tenant in its
/// own linked account). Its records and its CUR lines are that tenant's.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountEntry {
    /// The 12-digit AWS account id (`accountId` in logs, `line_item_usage_account_id` in CUR).
    pub account: String,
    pub tenant: String,
}

/// The configured rules, ready to apply.
#[derive(Debug, Clone)]
pub struct Resolver {
    order: Vec<Rule>,
    metadata_key: String,
    identity: Option<Regex>,
    profiles: HashMap<String, ProfileInfo>,
    accounts: HashMap<String, TenantId>,
}

impl Resolver {
    /// Builds the resolver from validated config.
    pub fn new(cfg: &TenancyConfig) -> Resolver {
        let mut profiles = HashMap::new();
        for p in &cfg.profiles {
            let info = ProfileInfo {
                owner: p.tenant.as_deref().and_then(TenantId::new),
                model: p.model.clone(),
                tier: if p.tier.as_deref() == Some("batch") { Tier::Batch } else { Tier::OnDemand },
            };
            profiles.insert(p.profile.trim().to_string(), info);
        }
        Resolver {
            order: cfg.order.clone(),
            metadata_key: cfg.metadata_key.clone(),
            identity: cfg.identity_pattern.as_deref().map(|p| Regex::new(p).expect("validated with the config")),
            profiles,
            accounts: cfg
                .accounts
                .iter()
                .filter_map(|a| Some((a.account.trim().to_string(), TenantId::new(&a.tenant)?)))
                .collect(),
        }
    }

    /// The silo tenants' accounts.
    pub fn silo_accounts(&self) -> impl Iterator<Item = &str> {
        self.accounts.keys().map(String::as_str)
    }

    /// The identity rule's pattern, when the rule is in use.
    pub fn identity_pattern(&self) -> Option<&Regex> {
        self.order.contains(&Rule::Identity).then_some(self.identity.as_ref()).flatten()
    }

    /// The silo tenant that owns AWS account `account`, if any.
    pub fn account_owner(&self, account: &str) -> Option<&TenantId> {
        if self.accounts.is_empty() {
            return None;
        }
        self.accounts.get(account.trim())
    }

    /// The tenant an IAM principal ARN names through the identity rule, when that rule is
    /// configured (CUR 2.0's `line_item_iam_principal` is the caller's ARN, as `identity.arn` is
    /// in the logs).
    pub fn principal_tenant(&self, principal: &str) -> Option<TenantId> {
        if !self.order.contains(&Rule::Identity) {
            return None;
        }
        TenantId::new(self.identity.as_ref()?.captures(principal)?.name("tenant")?.as_str())
    }

    /// The registry entry for a `modelId`: by the exact string, then by the id after the last
    /// `/` (so a registry keyed by id matches the ARN in the log, and vice versa).
    pub fn profile(&self, model_id: &str, target: &Target) -> Option<&ProfileInfo> {
        if self.profiles.is_empty() {
            return None;
        }
        if let Some(p) = self.profiles.get(model_id) {
            return Some(p);
        }
        let id = match target {
            Target::ApplicationProfile { id } => id.as_str(),
            _ => model_id.rsplit('/').next().unwrap_or(model_id),
        };
        self.profiles
            .get(id)
            .or_else(|| self.profiles.iter().find(|(k, _)| k.rsplit('/').next() == Some(id)).map(|(_, v)| v))
    }

    fn by_rule(
        &self,
        rule: Rule,
        rec: &LogRecord<'_>,
        profile: Option<&ProfileInfo>,
        names: &mut Names,
    ) -> Option<TenantId> {
        match rule {
            Rule::RequestMetadata => {
                let meta = rec.request_metadata?;
                json::lookup_string(meta, &self.metadata_key).and_then(|v| names.value(&v))
            }
            Rule::Profile => profile.and_then(|p| p.owner.clone()),
            Rule::Identity => {
                let pattern = self.identity.as_ref()?;
                Names::remember(&mut names.identities, rec.identity_arn.as_deref()?, |arn| {
                    TenantId::new(pattern.captures(arn)?.name("tenant")?.as_str())
                })
            }
            Rule::Account => self.account_owner(rec.account_id.as_deref()?).cloned(),
        }
    }

    /// The tenant of `rec`; `names` is the calling thread's cache (see [`Names`]).
    pub fn resolve(&self, rec: &LogRecord<'_>, profile: Option<&ProfileInfo>, names: &mut Names) -> Resolution {
        if let Some(tenant) = self.by_rule(Rule::Account, rec, profile, names) {
            return Resolution { tenant, rule: Some(Rule::Account), conflict: false };
        }
        let mut found: Option<(Rule, TenantId)> = None;
        let mut conflict = false;
        for &rule in &self.order {
            let Some(tenant) = self.by_rule(rule, rec, profile, names) else { continue };
            match &found {
                None => found = Some((rule, tenant)),
                Some((_, first)) if *first != tenant => conflict = true,
                Some(_) => {}
            }
        }
        match found {
            Some((rule, tenant)) => Resolution { tenant, rule: Some(rule), conflict },
            None => Resolution { tenant: names.unattributed(), rule: None, conflict: false },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolver() -> Resolver {
        Resolver::new(&TenancyConfig {
            identity_pattern: Some("assumed-role/tenant-(?P<tenant>[a-z0-9-]+)/".into()),
            profiles: vec![
                ProfileEntry {
                    profile: "arn:aws:bedrock:us-east-1:111122223333:application-inference-profile/aip0globex".into(),
                    tenant: Some("globex".into()),
                    shared: false,
                    model: Some("amazon.nova-lite-v1:0".into()),
                    tier: None,
                },
                ProfileEntry { profile: "pool1".into(), tenant: None, shared: true, model: None, tier: None },
            ],
            accounts: vec![AccountEntry { account: "444455556666".into(), tenant: "hooli".into() }],
            ..TenancyConfig::default()
        })
    }

    fn check(meta: Option<&str>, model_id: &str, arn: Option<&str>, want: &str, conflict: bool) {
        let r = resolver();
        let rec = LogRecord {
            model_id: model_id.into(),
            identity_arn: arn.map(Into::into),
            request_metadata: meta.map(str::as_bytes),
            ..LogRecord::default()
        };
        let target = Target::parse(model_id);
        let got = r.resolve(&rec, r.profile(model_id, &target), &mut Names::default());
        assert_eq!((got.tenant.as_str(), got.conflict), (want, conflict), "{meta:?} {model_id} {arn:?}");
    }

    #[test]
    fn rules_apply_in_order() {
        let aip = "arn:aws:bedrock:us-east-1:111122223333:application-inference-profile/aip0globex";
        let role = "arn:aws:sts::111122223333:assumed-role/tenant-initech/s1";
        check(Some(r#"{"tenant_id":"acme"}"#), "m.x", None, "acme", false);
        check(Some(r#"{"tenant_id":"  "}"#), "m.x", None, "_unattributed", false);
        check(None, aip, None, "globex", false);
        check(None, "arn:aws:bedrock:eu-west-1:1:application-inference-profile/aip0globex", None, "globex", false);
        check(None, "m.x", Some(role), "initech", false);
        check(Some(r#"{"tenant_id":"acme"}"#), aip, None, "acme", true);
        check(Some(r#"{"tenant_id":"globex"}"#), aip, Some(role), "globex", true);
        check(None, "arn:aws:bedrock:us-east-1:1:application-inference-profile/pool1", None, "_unattributed", false);
        check(Some(r#"{"team":"x"}"#), "m.x", Some("arn:aws:iam::1:user/bob"), "_unattributed", false);
    }

    #[test]
    fn a_silo_account_decides_before_every_rule() {
        let r = resolver();
        let rec = LogRecord {
            model_id: "amazon.nova-lite-v1:0".into(),
            account_id: Some("444455556666".into()),
            identity_arn: Some("arn:aws:sts::444455556666:assumed-role/tenant-initech/s1".into()),
            request_metadata: Some(br#"{"tenant_id":"acme"}"#),
            ..LogRecord::default()
        };
        let got = r.resolve(&rec, None, &mut Names::default());
        assert_eq!((got.tenant.as_str(), got.rule, got.conflict), ("hooli", Some(Rule::Account), false));
        let other = LogRecord { account_id: Some("111122223333".into()), ..rec };
        let got = r.resolve(&other, None, &mut Names::default());
        assert_eq!((got.tenant.as_str(), got.rule), ("acme", Some(Rule::RequestMetadata)));
        assert_eq!(r.account_owner("444455556666").map(TenantId::as_str), Some("hooli"));
        assert_eq!(r.account_owner("111122223333"), None);
    }

    #[test]
    fn a_principal_names_its_tenant_through_the_identity_rule() {
        let r = resolver();
        let arn = "arn:aws:sts::111122223333:assumed-role/tenant-initech/session-7";
        assert_eq!(r.principal_tenant(arn).as_ref().map(TenantId::as_str), Some("initech"));
        assert_eq!(r.principal_tenant("arn:aws:sts::111122223333:assumed-role/app/s"), None);
        let without = Resolver::new(&TenancyConfig {
            order: vec![Rule::RequestMetadata],
            identity_pattern: Some("assumed-role/tenant-(?P<tenant>[a-z0-9-]+)/".into()),
            ..TenancyConfig::default()
        });
        assert_eq!(without.principal_tenant(arn), None, "the identity rule is not in `order`");
    }
}
