//! Plans and tenants: `[plans.<name>]` and `[tenants.<id>]` in tally.toml (SPEC §4), and the
//! checked domain types the invoice is computed from.
//!
//! Money in the config is a decimal string (`monthly_fee = "49.00"`); a whole number is
//! accepted too, a TOML float is refused because it cannot hold cents exactly. Validation
//! builds the domain [`Plans`] and names the field that is wrong (`plans.pro.overage_rate`).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::Deserialize;

use crate::ids::{TenantId, UNATTRIBUTED};

/// A decimal as written in the config: a string (`"49.99"`) or a whole number (`49`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecimalText(pub String);

impl<'de> Deserialize<'de> for DecimalText {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = DecimalText;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a decimal string such as \"49.99\", or a whole number")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<DecimalText, E> {
                Ok(DecimalText(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<DecimalText, E> {
                Ok(DecimalText(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<DecimalText, E> {
                Ok(DecimalText(v.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<DecimalText, E> {
                Err(E::custom(format!(
                    "write {v} as a decimal string (\"{v}\"): a TOML float cannot hold money exactly"
                )))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// `[plans.<name>]`: one plan. Which fields apply depends on `kind` (SPEC §4).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanConfig {
    /// `bundled`, `quota`, `metered` or `add_on`.
    pub kind: String,
    /// bundled, quota: the fixed charge per month (USD).
    #[serde(default)]
    pub monthly_fee: Option<DecimalText>,
    /// quota: the allowance per month, in `unit`s.
    #[serde(default)]
    pub included: Option<DecimalText>,
    /// quota: `tokens` (input + output + cache_read + cache_write; the default) or `credits`.
    #[serde(default)]
    pub unit: Option<String>,
    /// quota in credits: the list-price usage (USD) one credit stands for.
    #[serde(default)]
    pub credit_usd: Option<DecimalText>,
    /// quota, add_on: USD per 1K tokens (or per credit) beyond the allowance, pro rata.
    #[serde(default)]
    pub overage_rate: Option<DecimalText>,
    /// metered: the charge is the tenant's cost × `markup` (e.g. "4.0").
    #[serde(default)]
    pub markup: Option<DecimalText>,
    /// metered: the least the usage line charges (USD; default 0).
    #[serde(default)]
    pub minimum: Option<DecimalText>,
    /// add_on: USD per seat per month (seats are set on the tenant).
    #[serde(default)]
    pub seat_price: Option<DecimalText>,
    /// add_on: tokens included per seat; with `overage_rate`, usage beyond is billed.
    #[serde(default)]
    pub included_per_seat: Option<u64>,
    /// Requests per UTC day the live meters allow a tenant on this plan (no limit if absent).
    #[serde(default)]
    pub requests_per_day: Option<u64>,
    /// Fractions of the allowance and of `requests_per_day` at which `tally serve` raises an
    /// alert, once per month (allowance) or day (requests); default `["0.8", "1.0"]`. The
    /// lowest one below 1 is where `/v1/quota` turns from `ok` to `warn`.
    #[serde(default)]
    pub alert_at: Option<Vec<DecimalText>>,
    /// An hour whose tokens exceed this many times the tenant's trailing hourly average raises
    /// an alert (e.g. "5"); no spike alerts if absent.
    #[serde(default)]
    pub spike_factor: Option<DecimalText>,
    /// The trailing window of the spike average, in hours (default 24).
    #[serde(default)]
    pub spike_window_hours: Option<u32>,
}

/// `[tenants.<id>]`: a tenant's plan.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// The name of a `[plans.<name>]` table.
    pub plan: String,
    /// add_on plans: the seats the tenant pays for.
    #[serde(default)]
    pub seats: Option<u64>,
}

/// The four plan kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PlanKind {
    Bundled,
    Quota,
    Metered,
    AddOn,
}

impl PlanKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PlanKind::Bundled => "bundled",
            PlanKind::Quota => "quota",
            PlanKind::Metered => "metered",
            PlanKind::AddOn => "add_on",
        }
    }

    fn parse(s: &str) -> Option<PlanKind> {
        Some(match s {
            "bundled" => PlanKind::Bundled,
            "quota" => PlanKind::Quota,
            "metered" => PlanKind::Metered,
            "add_on" | "add-on" => PlanKind::AddOn,
            _ => return None,
        })
    }
}

/// A quota plan's allowance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allowance {
    /// Tokens of any type; `overage_rate` is per 1K tokens.
    Tokens { included: u64 },
    /// Credits of `credit_usd` list-price usage each; `overage_rate` is per credit.
    Credits { included: Decimal, credit_usd: Decimal },
}

/// A plan's pricing, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pricing {
    Bundled {
        monthly_fee: Decimal,
    },
    Quota {
        monthly_fee: Decimal,
        allowance: Allowance,
        overage_rate: Decimal,
    },
    Metered {
        markup: Decimal,
        minimum: Decimal,
    },
    /// `overage`: tokens included per seat and USD per 1K tokens beyond them.
    AddOn {
        seat_price: Decimal,
        overage: Option<(u64, Decimal)>,
    },
}

impl Pricing {
    pub fn kind(&self) -> PlanKind {
        match self {
            Pricing::Bundled { .. } => PlanKind::Bundled,
            Pricing::Quota { .. } => PlanKind::Quota,
            Pricing::Metered { .. } => PlanKind::Metered,
            Pricing::AddOn { .. } => PlanKind::AddOn,
        }
    }
}

/// When the live meters raise alerts for a plan's tenants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertPolicy {
    /// Fractions of each limit, ascending, each above zero.
    pub at: Vec<Decimal>,
    /// (factor, trailing window in hours) of the hourly spike alert.
    pub spike: Option<(Decimal, u32)>,
}

impl Default for AlertPolicy {
    fn default() -> Self {
        AlertPolicy { at: vec![Decimal::new(8, 1), Decimal::ONE], spike: None }
    }
}

impl AlertPolicy {
    /// The fraction of a limit from which the quota status is `warn`: the lowest alert
    /// threshold below 1, else 0.8.
    pub fn warn_at(&self) -> Decimal {
        self.at.iter().copied().find(|t| *t < Decimal::ONE).unwrap_or(Decimal::new(8, 1))
    }
}

/// A named plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub name: String,
    pub pricing: Pricing,
    pub requests_per_day: Option<u64>,
    pub alerts: AlertPolicy,
}

/// A tenant's subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub plan: String,
    /// Seats of an add-on plan (0 for the other kinds).
    pub seats: u64,
}

/// Every plan and every tenant's subscription, checked against each other.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plans {
    pub plans: BTreeMap<String, Plan>,
    pub tenants: BTreeMap<TenantId, Subscription>,
}

impl Plans {
    /// The plan a tenant is on, if any.
    pub fn of(&self, tenant: &TenantId) -> Option<(&Plan, &Subscription)> {
        let s = self.tenants.get(tenant)?;
        Some((self.plans.get(&s.plan).expect("validated: every tenant's plan exists"), s))
    }
}

/// (field, message) of the first thing wrong.
type Invalid = (String, String);

/// Checks `[plans]` and `[tenants]` and builds the domain types; the error names the field.
pub fn build(plans: &BTreeMap<String, PlanConfig>, tenants: &BTreeMap<String, TenantConfig>) -> Result<Plans, Invalid> {
    let mut out = Plans::default();
    for (name, p) in plans {
        out.plans.insert(name.clone(), build_plan(name, p)?);
    }
    for (id, t) in tenants {
        let field = |f: &str| format!("tenants.{id}.{f}");
        let tenant =
            TenantId::new(id).ok_or_else(|| (format!("tenants.{id:?}"), "a tenant id cannot be blank".to_string()))?;
        if let Some(why) = crate::ids::tenant_id_problem(id) {
            return Err((format!("tenants.{id:?}"), why));
        }
        if out.tenants.contains_key(&tenant) {
            return Err((
                format!("tenants.{id:?}"),
                format!(
                    "is the tenant {:?} again (tenant ids are compared without surrounding white space)",
                    tenant.as_str()
                ),
            ));
        }
        if tenant.as_str() == UNATTRIBUTED {
            return Err((
                format!("tenants.{id}"),
                format!("`{UNATTRIBUTED}` is the reserved tenant of unattributed usage and cannot have a plan"),
            ));
        }
        let Some(plan) = out.plans.get(&t.plan) else {
            let known: Vec<&str> = out.plans.keys().map(String::as_str).collect();
            return Err((
                field("plan"),
                format!(
                    "no plan named {:?} (plans: {})",
                    t.plan,
                    if known.is_empty() { "none".to_string() } else { known.join(", ") }
                ),
            ));
        };
        let seats = match (plan.pricing.kind(), t.seats) {
            (PlanKind::AddOn, Some(n)) => n,
            (PlanKind::AddOn, None) => {
                return Err((field("seats"), format!("plan {:?} is an add-on plan: set the tenant's seats", t.plan)))
            }
            (_, Some(_)) => {
                return Err((
                    field("seats"),
                    format!("only add-on plans have seats; {:?} is {}", t.plan, plan.pricing.kind().as_str()),
                ))
            }
            (_, None) => 0,
        };
        out.tenants.insert(tenant, Subscription { plan: t.plan.clone(), seats });
    }
    Ok(out)
}

fn build_plan(name: &str, p: &PlanConfig) -> Result<Plan, Invalid> {
    let field = |f: &str| format!("plans.{name}.{f}");
    if name.trim().is_empty() {
        return Err(("plans".into(), "a plan name cannot be blank".into()));
    }
    let kind = PlanKind::parse(&p.kind).ok_or_else(|| {
        (field("kind"), format!("must be \"bundled\", \"quota\", \"metered\" or \"add_on\", not {:?}", p.kind))
    })?;
    let money = |f: &str, v: &Option<DecimalText>| -> Result<Option<Decimal>, Invalid> {
        match v {
            None => Ok(None),
            Some(DecimalText(text)) => match Decimal::from_str(text.trim()) {
                Ok(d) if d >= Decimal::ZERO => Ok(Some(d)),
                Ok(_) => Err((field(f), format!("must not be negative, not {text:?}"))),
                Err(_) => Err((field(f), format!("must be a decimal string such as \"49.99\", not {text:?}"))),
            },
        }
    };
    let required =
        |f: &str, v: Option<Decimal>| v.ok_or_else(|| (field(f), format!("is required for a {} plan", kind.as_str())));
    let kind_fields = [
        ("monthly_fee", p.monthly_fee.is_some(), matches!(kind, PlanKind::Bundled | PlanKind::Quota)),
        ("included", p.included.is_some(), kind == PlanKind::Quota),
        ("unit", p.unit.is_some(), kind == PlanKind::Quota),
        ("credit_usd", p.credit_usd.is_some(), kind == PlanKind::Quota),
        ("overage_rate", p.overage_rate.is_some(), matches!(kind, PlanKind::Quota | PlanKind::AddOn)),
        ("markup", p.markup.is_some(), kind == PlanKind::Metered),
        ("minimum", p.minimum.is_some(), kind == PlanKind::Metered),
        ("seat_price", p.seat_price.is_some(), kind == PlanKind::AddOn),
        ("included_per_seat", p.included_per_seat.is_some(), kind == PlanKind::AddOn),
    ];
    for (f, set, applies) in kind_fields {
        if set && !applies {
            return Err((field(f), format!("is not a field of a {} plan", kind.as_str())));
        }
    }
    if p.requests_per_day == Some(0) {
        return Err((field("requests_per_day"), "must be at least 1 (leave it out for no limit)".into()));
    }
    let pricing = match kind {
        PlanKind::Bundled => {
            Pricing::Bundled { monthly_fee: required("monthly_fee", money("monthly_fee", &p.monthly_fee)?)? }
        }
        PlanKind::Quota => {
            let monthly_fee = required("monthly_fee", money("monthly_fee", &p.monthly_fee)?)?;
            let included = required("included", money("included", &p.included)?)?;
            let overage_rate = required("overage_rate", money("overage_rate", &p.overage_rate)?)?;
            let credit_usd = money("credit_usd", &p.credit_usd)?;
            let allowance = match p.unit.as_deref().unwrap_or("tokens") {
                "tokens" => {
                    if credit_usd.is_some() {
                        return Err((field("credit_usd"), "only applies with unit = \"credits\"".into()));
                    }
                    let whole = u64::try_from(included).ok().filter(|n| Decimal::from(*n) == included);
                    let included =
                        whole.ok_or_else(|| (field("included"), "must be a whole number of tokens".to_string()))?;
                    Allowance::Tokens { included }
                }
                "credits" => {
                    let credit_usd = required("credit_usd", credit_usd)?;
                    if credit_usd.is_zero() {
                        return Err((field("credit_usd"), "must be above zero".into()));
                    }
                    Allowance::Credits { included, credit_usd }
                }
                other => return Err((field("unit"), format!("must be \"tokens\" or \"credits\", not {other:?}"))),
            };
            Pricing::Quota { monthly_fee, allowance, overage_rate }
        }
        PlanKind::Metered => {
            let markup = required("markup", money("markup", &p.markup)?)?;
            if markup.is_zero() {
                return Err((field("markup"), "must be above zero".into()));
            }
            Pricing::Metered { markup, minimum: money("minimum", &p.minimum)?.unwrap_or_default() }
        }
        PlanKind::AddOn => {
            let seat_price = required("seat_price", money("seat_price", &p.seat_price)?)?;
            let overage = match (p.included_per_seat, money("overage_rate", &p.overage_rate)?) {
                (Some(per_seat), Some(rate)) => Some((per_seat, rate)),
                (None, None) => None,
                (Some(_), None) => return Err((field("overage_rate"), "is required with included_per_seat".into())),
                (None, Some(_)) => {
                    return Err((field("included_per_seat"), "is required with overage_rate (it may be 0)".into()))
                }
            };
            Pricing::AddOn { seat_price, overage }
        }
    };
    Ok(Plan { name: name.to_string(), pricing, requests_per_day: p.requests_per_day, alerts: alert_policy(p, &field)? })
}

fn alert_policy(p: &PlanConfig, field: &dyn Fn(&str) -> String) -> Result<AlertPolicy, Invalid> {
    let mut policy = AlertPolicy::default();
    if let Some(list) = &p.alert_at {
        let mut at = Vec::with_capacity(list.len());
        for (n, DecimalText(text)) in list.iter().enumerate() {
            match Decimal::from_str(text.trim()) {
                Ok(d) if d > Decimal::ZERO && d <= Decimal::TEN => at.push(d.normalize()),
                _ => {
                    return Err((
                        format!("{}[{n}]", field("alert_at")),
                        format!("must be a fraction above 0 and at most 10 (\"0.8\" is 80%), not {text:?}"),
                    ))
                }
            }
        }
        at.sort_unstable();
        at.dedup();
        policy.at = at;
    }
    match (&p.spike_factor, p.spike_window_hours) {
        (None, Some(_)) => return Err((field("spike_window_hours"), "only applies with spike_factor".into())),
        (None, None) => {}
        (Some(DecimalText(text)), hours) => {
            let factor = Decimal::from_str(text.trim()).ok().filter(|d| *d > Decimal::ONE).ok_or_else(|| {
                (field("spike_factor"), format!("must be a decimal string above 1 such as \"5\", not {text:?}"))
            })?;
            let hours = hours.unwrap_or(24);
            if !(1..=24 * 31).contains(&hours) {
                return Err((field("spike_window_hours"), "must be between 1 and 744".into()));
            }
            policy.spike = Some((factor, hours));
        }
    }
    Ok(policy)
}

/// The demo's plans (`fixtures/invoice/demo-plans.toml`) and its tenants on them in turn; the
/// last tenant is left without a plan, to show an unbilled tenant.
pub fn demo_plans(tenants: usize) -> String {
    use std::fmt::Write as _;
    let mut text = include_str!("../../fixtures/invoice/demo-plans.toml").to_string();
    let plans = ["pro", "payg", "team", "starter", "pro-credits"];
    for k in 0..tenants.saturating_sub(1) {
        let plan = plans[k % plans.len()];
        let _ = write!(text, "\n[tenants.tenant-{k:04}]\nplan = \"{plan}\"\n");
        if plan == "team" {
            let _ = writeln!(text, "seats = {}", 3 + k % 7);
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use crate::config::Config;

    use crate::config::invalid_field as field_of;

    #[test]
    fn plan_errors_name_the_field() {
        let check = |text: &str, field: &str| assert_eq!(field_of(text), field, "{text}");
        check("[plans.pro]\nkind = 'gold'", "plans.pro.kind");
        check("[plans.pro]\nkind = 'quota'\nmonthly_fee = '10'\nincluded = 1000", "plans.pro.overage_rate");
        check(
            "[plans.pro]\nkind = 'quota'\nmonthly_fee = '10'\nincluded = 1000\noverage_rate = 'two'",
            "plans.pro.overage_rate",
        );
        check(
            "[plans.pro]\nkind = 'quota'\nmonthly_fee = '-1'\nincluded = 1000\noverage_rate = '2'",
            "plans.pro.monthly_fee",
        );
        check(
            "[plans.pro]\nkind = 'quota'\nmonthly_fee = '1'\nincluded = '10.5'\noverage_rate = '2'",
            "plans.pro.included",
        );
        check(
            "[plans.pro]\nkind = 'quota'\nmonthly_fee = '1'\nincluded = 10\nunit = 'credits'\noverage_rate = '2'",
            "plans.pro.credit_usd",
        );
        check(
            "[plans.pro]\nkind = 'quota'\nmonthly_fee = '1'\nincluded = 10\nunit = 'euros'\noverage_rate = '2'",
            "plans.pro.unit",
        );
        check("[plans.b]\nkind = 'bundled'\nmonthly_fee = '1'\nmarkup = '2'", "plans.b.markup");
        check("[plans.b]\nkind = 'bundled'", "plans.b.monthly_fee");
        check("[plans.b]\nkind = 'bundled'\nmonthly_fee = '1'\nrequests_per_day = 0", "plans.b.requests_per_day");
        check("[plans.b]\nkind = 'bundled'\nmonthly_fee = '1'\nalert_at = ['0.5', '0']", "plans.b.alert_at[1]");
        check("[plans.b]\nkind = 'bundled'\nmonthly_fee = '1'\nspike_factor = '0.5'", "plans.b.spike_factor");
        check("[plans.b]\nkind = 'bundled'\nmonthly_fee = '1'\nspike_window_hours = 4", "plans.b.spike_window_hours");
        check("[plans.m]\nkind = 'metered'\nmarkup = '0'", "plans.m.markup");
        check("[plans.a]\nkind = 'add_on'\nseat_price = '5'\nincluded_per_seat = 100", "plans.a.overage_rate");
        check("[plans.a]\nkind = 'add_on'\nseat_price = '5'\n[tenants.acme]\nplan = 'a'", "tenants.acme.seats");
        check(
            "[plans.b]\nkind = 'bundled'\nmonthly_fee = '1'\n[tenants.acme]\nplan = 'b'\nseats = 3",
            "tenants.acme.seats",
        );
        check("[plans.b]\nkind = 'bundled'\nmonthly_fee = '1'\n[tenants.acme]\nplan = 'gold'", "tenants.acme.plan");
        check(
            "[plans.b]\nkind = 'bundled'\nmonthly_fee = '1'\n[tenants._unattributed]\nplan = 'b'",
            "tenants._unattributed",
        );
    }

    #[test]
    fn a_float_is_refused_and_unknown_fields_are_named() {
        let err = Config::from_toml("[plans.b]\nkind = 'bundled'\nmonthly_fee = 49.99", Path::new("t"), PathBuf::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("decimal string"), "{err}");
        let err = Config::from_toml("[plans.b]\nkind = 'bundled'\nmonthly_fees = '1'", Path::new("t"), PathBuf::new())
            .unwrap_err()
            .to_string();
        assert!(err.contains("monthly_fees"), "{err}");
    }

    #[test]
    fn the_sample_config_has_every_kind() {
        let config = Config::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/tally.toml")).unwrap();
        let plans = config.plans().unwrap();
        let mut kinds: Vec<&str> = plans.plans.values().map(|p| p.pricing.kind().as_str()).collect();
        kinds.sort_unstable();
        kinds.dedup();
        assert_eq!(kinds, ["add_on", "bundled", "metered", "quota"]);
        assert!(!plans.tenants.is_empty());
    }

    #[test]
    fn plans_build_into_their_kinds() {
        let text = "[plans.b]\nkind = 'bundled'\nmonthly_fee = 49\nrequests_per_day = 1000\n\
                    [plans.q]\nkind = 'quota'\nmonthly_fee = '10'\nincluded = '2.5'\nunit = 'credits'\ncredit_usd = '0.01'\noverage_rate = '0.012'\n\
                    [plans.a]\nkind = 'add-on'\nseat_price = '15'\nincluded_per_seat = 0\noverage_rate = '0.5'\n\
                    [tenants.acme]\nplan = 'a'\nseats = 4\n[tenants.\"beta co\"]\nplan = 'b'";
        let c = Config::from_toml(text, Path::new("t"), PathBuf::new()).unwrap();
        let plans = c.plans().unwrap();
        use super::*;
        let d = |s: &str| Decimal::from_str(s).unwrap();
        assert_eq!(plans.plans["b"].pricing, Pricing::Bundled { monthly_fee: d("49") });
        assert_eq!(plans.plans["b"].requests_per_day, Some(1000));
        assert_eq!(
            plans.plans["q"].pricing,
            Pricing::Quota {
                monthly_fee: d("10"),
                allowance: Allowance::Credits { included: d("2.5"), credit_usd: d("0.01") },
                overage_rate: d("0.012")
            }
        );
        let (plan, sub) = plans.of(&TenantId::new("acme").unwrap()).unwrap();
        assert_eq!((plan.pricing.kind(), sub.seats), (PlanKind::AddOn, 4));
        assert_eq!(plans.of(&TenantId::new("beta co").unwrap()).unwrap().0.name, "b");
    }
}
