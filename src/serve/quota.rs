//! A tenant's quota position, from its live counters and its plan: what `/v1/quota` answers
//! and what the application's rate limiter acts on.
//!
//! Two limits can apply. The **allowance** is monthly: a quota plan's `included` tokens or
//! credits, or an add-on plan's seats × `included_per_seat` tokens. **Requests per day** is the
//! plan's `requests_per_day`, counted over the current UTC day. The status is `exceeded` when
//! either limit is used up (used ≥ limit: the next request would be beyond it), `warn` when
//! either is at or past the plan's warning fraction, else `ok`. Bundled and metered plans
//! have no allowance; a tenant without a plan has no limits and is always `ok`.

use rust_decimal::Decimal;
use serde::Serialize;

use crate::invoice::plan::{Allowance, Plan, Plans, Pricing, Subscription};
use crate::store::PeriodUsage;
use crate::usage::Usage;

/// `ok`, `warn` or `exceeded`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    Warn,
    Exceeded,
}

/// One limit's position. Amounts are decimal strings, exact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Limit {
    #[serde(with = "rust_decimal::serde::str")]
    pub used: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub limit: Decimal,
    /// limit − used, never below zero.
    #[serde(with = "rust_decimal::serde::str")]
    pub remaining: Decimal,
    /// used ÷ limit (1 when the limit is zero and anything is used).
    #[serde(with = "rust_decimal::serde::str")]
    pub fraction: Decimal,
    pub status: Status,
}

impl Limit {
    pub fn new(used: Decimal, limit: Decimal, warn_at: Decimal) -> Limit {
        let fraction = if limit.is_zero() {
            if used.is_zero() {
                Decimal::ZERO
            } else {
                Decimal::ONE
            }
        } else {
            (used / limit).round_dp(6)
        };
        let status = if used >= limit {
            Status::Exceeded
        } else if used >= warn_at * limit {
            Status::Warn
        } else {
            Status::Ok
        };
        Limit { used, limit, remaining: (limit - used).max(Decimal::ZERO), fraction, status }
    }
}

/// The monthly allowance in its unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AllowancePosition {
    /// `tokens` or `credits`.
    pub unit: &'static str,
    #[serde(flatten)]
    pub limit: Limit,
}

/// What `/v1/quota` answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Quota {
    pub tenant: String,
    pub plan: Option<String>,
    /// The month (`YYYY-MM`) the allowance is counted over.
    pub period: String,
    /// The UTC day (`YYYY-MM-DD`) requests are counted over.
    pub day: String,
    /// The worst of the limits' statuses.
    pub status: Status,
    /// The monthly allowance; absent for plans without one.
    pub allowance: Option<AllowancePosition>,
    /// Requests today against `requests_per_day`; `limit` absent when the plan sets none.
    pub requests_today: u64,
    pub requests: Option<Limit>,
    /// Tokens and list-price cost so far this month, for display.
    pub tokens: u64,
    #[serde(with = "rust_decimal::serde::str")]
    pub est_cost: Decimal,
}

/// The allowance a subscription has, in (unit, amount), and what a month's usage uses of it.
pub fn allowance(plan: &Plan, sub: &Subscription, month: &Usage) -> Option<(&'static str, Decimal, Decimal)> {
    match plan.pricing {
        Pricing::Quota { allowance: Allowance::Tokens { included }, .. } => {
            Some(("tokens", Decimal::from(month.tokens()), Decimal::from(included)))
        }
        Pricing::Quota { allowance: Allowance::Credits { included, credit_usd }, .. } => {
            Some(("credits", (month.est_cost / credit_usd).round_dp(6), included))
        }
        Pricing::AddOn { overage: Some((per_seat, _)), .. } => {
            Some(("tokens", Decimal::from(month.tokens()), Decimal::from(per_seat) * Decimal::from(sub.seats)))
        }
        Pricing::AddOn { overage: None, .. } | Pricing::Bundled { .. } | Pricing::Metered { .. } => None,
    }
}

/// A tenant's position from its usage in `usage.period` and today's date (`YYYY-MM-DD`).
pub fn position(plans: &Plans, usage: &PeriodUsage, today: &str) -> Quota {
    let requests_today = usage.by_day.get(today).map_or(0, |u| u.requests);
    let mut q = Quota {
        tenant: usage.tenant.as_str().to_string(),
        plan: None,
        period: usage.period.clone(),
        day: today.to_string(),
        status: Status::Ok,
        allowance: None,
        requests_today,
        requests: None,
        tokens: usage.total.tokens(),
        est_cost: usage.total.est_cost,
    };
    let Some((plan, sub)) = plans.of(&usage.tenant) else {
        return q;
    };
    let warn_at = plan.alerts.warn_at();
    q.plan = Some(plan.name.clone());
    q.allowance = allowance(plan, sub, &usage.total)
        .map(|(unit, used, limit)| AllowancePosition { unit, limit: Limit::new(used, limit, warn_at) });
    q.requests = plan.requests_per_day.map(|n| Limit::new(Decimal::from(requests_today), Decimal::from(n), warn_at));
    q.status = [q.allowance.as_ref().map(|a| a.limit.status), q.requests.as_ref().map(|r| r.status)]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(Status::Ok);
    q
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::config::Config;
    use crate::ids::TenantId;

    fn plans() -> Plans {
        let text = "[plans.q]\nkind = 'quota'\nmonthly_fee = '10'\nincluded = 1000\noverage_rate = '1'\nrequests_per_day = 10\nalert_at = ['0.5', '1']\n\
                    [plans.c]\nkind = 'quota'\nmonthly_fee = '10'\nincluded = '2'\nunit = 'credits'\ncredit_usd = '0.01'\noverage_rate = '1'\n\
                    [plans.t]\nkind = 'add_on'\nseat_price = '5'\nincluded_per_seat = 100\noverage_rate = '1'\n\
                    [plans.b]\nkind = 'bundled'\nmonthly_fee = '5'\n\
                    [tenants.a]\nplan = 'q'\n[tenants.cr]\nplan = 'c'\n[tenants.team]\nplan = 't'\nseats = 3\n[tenants.flat]\nplan = 'b'";
        Config::from_toml(text, Path::new("t"), PathBuf::new()).unwrap().plans().unwrap()
    }

    fn usage(tenant: &str, input: u64, today_requests: u64, est_cost: &str) -> PeriodUsage {
        let mut u =
            PeriodUsage { tenant: TenantId::new(tenant).unwrap(), period: "2025-11".into(), ..Default::default() };
        u.total =
            Usage { input, requests: today_requests + 3, est_cost: est_cost.parse().unwrap(), ..Default::default() };
        u.by_day.insert("2025-11-02".into(), Usage { requests: 3, ..Default::default() });
        u.by_day.insert("2025-11-05".into(), Usage { requests: today_requests, ..Default::default() });
        u
    }

    #[test]
    fn token_allowance_and_daily_requests_set_the_status() {
        let p = plans();
        let q = position(&p, &usage("a", 400, 2, "0"), "2025-11-05");
        assert_eq!((q.status, q.requests_today), (Status::Ok, 2));
        let a = q.allowance.unwrap();
        assert_eq!(
            (a.unit, a.limit.used, a.limit.limit, a.limit.remaining),
            ("tokens", 400.into(), 1000.into(), 600.into())
        );
        // The plan warns at 50%: tokens at 50% is warn.
        assert_eq!(position(&p, &usage("a", 500, 2, "0"), "2025-11-05").status, Status::Warn);
        // The 10th request of the day uses the daily limit up.
        let q = position(&p, &usage("a", 0, 10, "0"), "2025-11-05");
        assert_eq!((q.status, q.requests.unwrap().remaining), (Status::Exceeded, Decimal::ZERO));
        // Yesterday's requests do not count today.
        assert_eq!(position(&p, &usage("a", 0, 10, "0"), "2025-11-06").requests_today, 0);
        let q = position(&p, &usage("a", 1500, 0, "0"), "2025-11-05");
        assert_eq!((q.status, q.allowance.unwrap().limit.remaining), (Status::Exceeded, Decimal::ZERO));
    }

    #[test]
    fn credits_seats_and_plans_without_allowance() {
        let p = plans();
        let q = position(&p, &usage("cr", 0, 0, "0.015"), "2025-11-05");
        let a = q.allowance.unwrap();
        assert_eq!((a.unit, a.limit.used.to_string().as_str(), q.status), ("credits", "1.5", Status::Ok));
        let a = position(&p, &usage("team", 290, 0, "0"), "2025-11-05").allowance.unwrap();
        assert_eq!((a.limit.limit, a.limit.status), (300.into(), Status::Warn));
        let flat = position(&p, &usage("flat", 1 << 40, 1 << 20, "9999"), "2025-11-05");
        assert_eq!((flat.status, flat.allowance.is_none(), flat.requests.is_none()), (Status::Ok, true, true));
        let nobody = position(&p, &usage("nobody", 5, 5, "1"), "2025-11-05");
        assert_eq!((nobody.plan, nobody.status), (None, Status::Ok));
    }
}
