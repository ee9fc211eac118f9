//! Issuing a period's invoices: provisional drafts before reconcile, immutable final versions
//! after, with delta versions when what a final invoice stood on changes. Pure: the issued
//! versions come in as data and the new ones go out as data.
//!
//! Versions. A provisional invoice is version 0 and is replaced by each run until the period
//! is reconciled. The first final invoice is version 1 with every line. When a later run finds
//! that the recomputed invoice differs from what was issued — a restated CUR changed the cost
//! (and so a metered charge or the margin), late records changed the tokens — it issues
//! version n+1 holding only the delta lines: for each (plan, line kind), the recomputed amount
//! minus the sum of what versions 1..n charged for it. Importing every version gives the
//! restated total; no issued document is ever rewritten.

use std::collections::BTreeMap;

use rust_decimal::Decimal;

use super::charge::{self, AllowanceUse, Basis, LineKind, TokenUsage};
use super::plan::{PlanKind, Plans};
use crate::ids::TenantId;
use crate::money;
use crate::usage::Usage;

/// Whether an invoice stands on the reconciled cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Before reconcile: cost is the list-price estimate; replaced by every run.
    Provisional,
    /// After reconcile: immutable.
    Final,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Provisional => "provisional",
            Status::Final => "final",
        }
    }
}

/// An invoice line with its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub id: String,
    /// The plan the line charges for (an earlier plan's lines can be reversed in a delta).
    pub plan: String,
    pub kind: LineKind,
    pub description: String,
    pub quantity: Decimal,
    pub unit: String,
    pub unit_price: Decimal,
    /// Cents, rounded once (a delta line: the difference of two rounded amounts).
    pub amount: Decimal,
    /// Delta lines only: what versions 1..n-1 charged for this plan and kind.
    pub previous_amount: Option<Decimal>,
}

/// One tenant's invoice for one period, one version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invoice {
    pub id: String,
    pub tenant: TenantId,
    pub period: String,
    pub status: Status,
    /// 0 for provisional, 1.. for final.
    pub version: u32,
    /// The id of the version this one adds to.
    pub supersedes: Option<String>,
    pub plan: String,
    pub plan_kind: PlanKind,
    pub lines: Vec<Line>,
    /// Σ of this document's line amounts.
    pub total: Decimal,
    /// Σ of the totals of every version up to this one: what the tenant owes for the period.
    pub cumulative_total: Decimal,
    pub usage: TokenUsage,
    pub allowance: Option<AllowanceUse>,
    /// Internal: the list-price estimate, to 10 places.
    pub estimated_cost: Decimal,
    /// Internal: the cost of the tenant (reconciled when final, else the estimate), to 10 places.
    pub cost_basis: Decimal,
    /// Internal: `cumulative_total − cost_basis`.
    pub margin: Decimal,
    /// Internal: margin as a percentage of `cumulative_total`, 2 places; none when that is 0.
    pub margin_pct: Option<Decimal>,
}

/// What a final version already issued says, as far as issuing the next one needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    pub id: String,
    pub version: u32,
    pub plan: String,
    pub plan_kind: PlanKind,
    /// (plan, kind, amount) of each line.
    pub lines: Vec<(String, LineKind, Decimal)>,
    pub cumulative_total: Decimal,
    pub cost_basis: Decimal,
    pub usage: TokenUsage,
}

impl From<&Invoice> for Issued {
    fn from(i: &Invoice) -> Self {
        Issued {
            id: i.id.clone(),
            version: i.version,
            plan: i.plan.clone(),
            plan_kind: i.plan_kind,
            lines: i.lines.iter().map(|l| (l.plan.clone(), l.kind, l.amount)).collect(),
            cumulative_total: i.cumulative_total,
            cost_basis: i.cost_basis,
            usage: i.usage,
        }
    }
}

/// A deterministic id: FNV-1a (128 bits) over the length-prefixed parts, so that no two part
/// lists give the same input, then an invertible mix (murmur3's finalizer over the two halves)
/// so that ids differing in one part differ in every digit. Billing systems use these as
/// idempotency keys.
fn stable_id(prefix: &str, parts: &[&str]) -> String {
    fn fmix(mut k: u64) -> u64 {
        k ^= k >> 33;
        k = k.wrapping_mul(0xff51afd7ed558ccd);
        k ^= k >> 33;
        k = k.wrapping_mul(0xc4ceb9fe1a85ec53);
        k ^ (k >> 33)
    }
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013B;
    let mut h = OFFSET;
    for part in parts {
        for b in (part.len() as u64).to_le_bytes().iter().chain(part.as_bytes()) {
            h ^= u128::from(*b);
            h = h.wrapping_mul(PRIME);
        }
    }
    let (mut hi, mut lo) = ((h >> 64) as u64, h as u64);
    for _ in 0..2 {
        hi = fmix(hi ^ lo);
        lo = fmix(lo ^ hi);
    }
    format!("{prefix}_{hi:016x}{lo:016x}")
}

/// The id of a tenant's invoice for a period, plan and version.
pub fn invoice_id(tenant: &TenantId, period: &str, plan: &str, version: u32) -> String {
    stable_id("inv", &[tenant.as_str(), period, plan, &version.to_string()])
}

/// The id of a line: the invoice's parts and the line kind.
pub fn line_id(tenant: &TenantId, period: &str, plan: &str, kind: LineKind, version: u32) -> String {
    stable_id("line", &[tenant.as_str(), period, plan, kind.as_str(), &version.to_string()])
}

/// Money to the 10 places of the reconciled tables (half to even past them).
fn ten_places(d: Decimal) -> Decimal {
    money::from_units(money::to_units(d))
}

/// margin and margin % of a charge over a cost.
pub fn margin_of(charge: Decimal, cost: Decimal) -> (Decimal, Option<Decimal>) {
    let margin = charge - cost;
    let pct = (!charge.is_zero()).then(|| (margin * Decimal::ONE_HUNDRED / charge).round_dp(2));
    (margin, pct)
}

/// Computes one tenant's invoice at `version`, with every line (no delta).
fn full(
    period: &str,
    tenant: &TenantId,
    plans: &Plans,
    basis: &Basis,
    status: Status,
    version: u32,
) -> Option<Invoice> {
    let (plan, sub) = plans.of(tenant)?;
    let (charges, allowance) = charge::charges(plan, sub, basis);
    let lines: Vec<Line> = charges
        .into_iter()
        .map(|c| Line {
            id: line_id(tenant, period, &plan.name, c.kind, version),
            plan: plan.name.clone(),
            kind: c.kind,
            description: c.description,
            quantity: c.quantity,
            unit: c.unit.to_string(),
            unit_price: c.unit_price,
            amount: c.amount,
            previous_amount: None,
        })
        .collect();
    let total = charge::sum_cents(lines.iter().map(|l| &l.amount));
    let cost_basis = ten_places(basis.cost());
    let (margin, margin_pct) = margin_of(total, cost_basis);
    Some(Invoice {
        id: invoice_id(tenant, period, &plan.name, version),
        tenant: tenant.clone(),
        period: period.to_string(),
        status,
        version,
        supersedes: None,
        plan: plan.name.clone(),
        plan_kind: plan.pricing.kind(),
        lines,
        total,
        cumulative_total: total,
        usage: basis.usage,
        allowance,
        estimated_cost: ten_places(basis.estimated_cost),
        cost_basis,
        margin,
        margin_pct,
    })
}

/// A provisional invoice (version 0), from the estimate; `None` for a tenant without a plan.
pub fn provisional(period: &str, tenant: &TenantId, plans: &Plans, basis: &Basis) -> Option<Invoice> {
    let basis = Basis { reconciled_cost: None, ..*basis };
    full(period, tenant, plans, &basis, Status::Provisional, 0)
}

/// The next final version of a tenant's invoice given the versions issued so far (sorted by
/// version): version 1 with every line when none was issued; else the delta lines as version
/// n+1, or `None` when nothing it stands on has changed.
pub fn next_final(period: &str, tenant: &TenantId, plans: &Plans, basis: &Basis, issued: &[Issued]) -> Option<Invoice> {
    let Some(last) = issued.last() else {
        return full(period, tenant, plans, basis, Status::Final, 1);
    };
    let version = last.version + 1;
    let now = full(period, tenant, plans, basis, Status::Final, version)?;
    let mut before: BTreeMap<(&str, LineKind), Decimal> = BTreeMap::new();
    for (plan, kind, amount) in issued.iter().flat_map(|i| &i.lines) {
        *before.entry((plan.as_str(), *kind)).or_default() += *amount;
    }
    let mut lines = Vec::new();
    for l in &now.lines {
        let previous = before.remove(&(l.plan.as_str(), l.kind)).unwrap_or_default();
        if l.amount != previous {
            lines.push(Line {
                description: format!("restated: {}", l.description),
                amount: l.amount - previous,
                previous_amount: Some(previous),
                ..l.clone()
            });
        }
    }
    // What was charged before under a kind (or plan) that no longer applies is reversed.
    for ((plan, kind), previous) in before {
        if !previous.is_zero() {
            lines.push(Line {
                id: line_id(tenant, period, plan, kind, version),
                plan: plan.to_string(),
                kind,
                description: format!("reversal: {} of plan {plan} no longer applies", kind.as_str()),
                quantity: Decimal::ONE,
                unit: "reversal".to_string(),
                unit_price: -previous,
                amount: -previous,
                previous_amount: Some(previous),
            });
        }
    }
    if lines.is_empty() && now.cost_basis == last.cost_basis && now.usage == last.usage && now.plan == last.plan {
        return None;
    }
    let total = charge::sum_cents(lines.iter().map(|l| &l.amount));
    let cumulative_total = last.cumulative_total + total;
    let (margin, margin_pct) = margin_of(cumulative_total, now.cost_basis);
    Some(Invoice { supersedes: Some(last.id.clone()), lines, total, cumulative_total, margin, margin_pct, ..now })
}

/// One row of the margin report: a billed tenant, or one with usage or cost and no plan.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MarginRow {
    pub tenant: TenantId,
    /// `None`: unbilled (no plan).
    pub plan: Option<String>,
    pub plan_kind: Option<PlanKind>,
    /// The invoice's status; `None` for an unbilled tenant.
    pub status: Option<Status>,
    /// The latest version (0 = provisional).
    pub version: Option<u32>,
    pub tokens: u64,
    /// What the tenant is charged for the period (all versions).
    pub charge: Decimal,
    pub cost: Decimal,
    pub margin: Decimal,
    pub margin_pct: Option<Decimal>,
}

/// A period's inputs: counters per tenant, reconciled cost per tenant when reconciled, and the
/// final versions issued so far per tenant (sorted by version).
pub struct Period<'a> {
    pub period: &'a str,
    pub plans: &'a Plans,
    pub usage: &'a BTreeMap<TenantId, Usage>,
    pub reconciled: Option<&'a BTreeMap<TenantId, Decimal>>,
    pub issued: &'a BTreeMap<TenantId, Vec<Issued>>,
}

/// A period's invoicing: the invoices to write and the margin report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Billing {
    pub status: Status,
    /// New documents: every provisional invoice, or the final versions issued by this run.
    pub invoices: Vec<Invoice>,
    /// Final invoices already issued and still right (nothing new issued for them).
    pub unchanged: usize,
    /// Every billed tenant and every unbilled tenant with usage or cost, by tenant.
    pub margin: Vec<MarginRow>,
}

/// Invoices a period (see the module docs): provisional when `reconciled` is `None`. A large
/// period is billed on every core (up to 8).
pub fn bill(p: &Period<'_>) -> Billing {
    let tenants = p.plans.tenants.len().max(p.usage.len());
    let threads = if tenants < 4096 { 1 } else { super::cores() };
    bill_on(p, threads)
}

/// [`bill`] on `threads` threads: the same billing whatever their number.
pub fn bill_on(p: &Period<'_>, threads: usize) -> Billing {
    let status = if p.reconciled.is_some() { Status::Final } else { Status::Provisional };
    let mut tenants: Vec<&TenantId> = p.plans.tenants.keys().chain(p.usage.keys()).chain(p.issued.keys()).collect();
    if let Some(r) = p.reconciled {
        tenants.extend(r.keys());
    }
    tenants.sort_unstable();
    tenants.dedup();
    // Each tenant's invoice depends on nothing but its own inputs: a large period is billed in
    // one contiguous run of tenants per core, put back together in tenant order.
    let mut parts = super::in_runs(&tenants, threads, |part| bill_tenants(p, status, part));
    let mut out = Billing { status, invoices: Vec::new(), unchanged: 0, margin: Vec::with_capacity(tenants.len()) };
    for part in &mut parts {
        out.invoices.append(&mut part.invoices);
        out.unchanged += part.unchanged;
        out.margin.append(&mut part.margin);
    }
    out
}

/// [`bill`] for a run of tenants, in their order.
fn bill_tenants(p: &Period<'_>, status: Status, tenants: &[&TenantId]) -> Billing {
    let mut out = Billing { status, invoices: Vec::new(), unchanged: 0, margin: Vec::with_capacity(tenants.len()) };
    let none = Vec::new();
    for &tenant in tenants {
        let usage = p.usage.get(tenant).copied().unwrap_or_default();
        let reconciled = p.reconciled.map(|r| r.get(tenant).copied().unwrap_or_default());
        let basis =
            Basis { usage: TokenUsage::from(&usage), estimated_cost: usage.est_cost, reconciled_cost: reconciled };
        let issued = p.issued.get(tenant).unwrap_or(&none);
        let row = match status {
            Status::Provisional => provisional(p.period, tenant, p.plans, &basis).map(|inv| {
                let row = row_of(&inv);
                out.invoices.push(inv);
                row
            }),
            Status::Final => match next_final(p.period, tenant, p.plans, &basis, issued) {
                Some(inv) => {
                    let row = row_of(&inv);
                    out.invoices.push(inv);
                    Some(row)
                }
                None => issued.last().map(|last| {
                    // Still right as issued, or issued under a plan the tenant no longer has.
                    out.unchanged += 1;
                    let cost = ten_places(basis.cost());
                    let (margin, margin_pct) = margin_of(last.cumulative_total, cost);
                    MarginRow {
                        tenant: tenant.clone(),
                        plan: Some(last.plan.clone()),
                        plan_kind: Some(last.plan_kind),
                        status: Some(Status::Final),
                        version: Some(last.version),
                        tokens: basis.usage.tokens(),
                        charge: last.cumulative_total,
                        cost,
                        margin,
                        margin_pct,
                    }
                }),
            },
        };
        let row = row.unwrap_or_else(|| {
            let cost = ten_places(basis.cost());
            let charge = charge::sum_cents([]);
            let (margin, margin_pct) = margin_of(charge, cost);
            MarginRow {
                tenant: tenant.clone(),
                plan: None,
                plan_kind: None,
                status: None,
                version: None,
                tokens: basis.usage.tokens(),
                charge,
                cost,
                margin,
                margin_pct,
            }
        });
        out.margin.push(row);
    }
    out
}

fn row_of(inv: &Invoice) -> MarginRow {
    MarginRow {
        tenant: inv.tenant.clone(),
        plan: Some(inv.plan.clone()),
        plan_kind: Some(inv.plan_kind),
        status: Some(inv.status),
        version: Some(inv.version),
        tokens: inv.usage.tokens(),
        charge: inv.cumulative_total,
        cost: inv.cost_basis,
        margin: inv.margin,
        margin_pct: inv.margin_pct,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_tell_their_parts_apart() {
        let t = TenantId::new("acme").unwrap();
        assert_eq!(invoice_id(&t, "2025-11", "pro", 1), invoice_id(&t, "2025-11", "pro", 1));
        let all = [
            invoice_id(&t, "2025-11", "pro", 1),
            invoice_id(&t, "2025-11", "pro", 2),
            invoice_id(&t, "2025-12", "pro", 1),
            invoice_id(&t, "2025-11", "pr", 1),
            invoice_id(&TenantId::new("acm").unwrap(), "e2025-11", "pro", 1),
            line_id(&t, "2025-11", "pro", LineKind::Fee, 1),
            line_id(&t, "2025-11", "pro", LineKind::Overage, 1),
        ];
        let distinct: std::collections::BTreeSet<&String> = all.iter().collect();
        assert_eq!(distinct.len(), all.len());
        assert!(all[0].starts_with("inv_") && all[0].len() == 36, "{}", all[0]);
    }
}
