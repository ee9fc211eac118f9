//! The invoice export formats: the JSON document (wire format `tally.invoice/1`, with its JSON
//! Schema), the CSV of every line, the margin report, and the `invoice_lines` Arrow table that
//! `tally sql` serves. Pure: text and batches out, no files.
//!
//! Money is a decimal string everywhere: amounts with exactly two places (`"49.00"`), costs
//! with ten (the reconciled tables' scale), prices and quantities as exact as they are.

use std::fmt::Write as _;

use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::RecordBatch;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::charge::{is_zero, round_cents, sum_cents, AllowanceUse, LineKind, TokenUsage};
use super::issue::{Invoice, Issued, Line, MarginRow, Status};
use super::plan::PlanKind;
use crate::ids::TenantId;
use crate::money;
use crate::tables::{self, Col};

/// The `schema` value of every document of this version.
pub const SCHEMA_ID: &str = "tally.invoice/1";

/// One invoice as exported: the wire format, versioned apart from the domain type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvoiceV1 {
    pub schema: String,
    pub id: String,
    pub tenant: String,
    pub period: String,
    pub status: Status,
    pub version: u32,
    pub supersedes: Option<String>,
    pub currency: String,
    pub plan: PlanRef,
    pub lines: Vec<LineV1>,
    #[serde(with = "rust_decimal::serde::str")]
    pub total: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub cumulative_total: Decimal,
    pub usage: UsageV1,
    pub allowance: Option<AllowanceUse>,
    pub internal: InternalV1,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanRef {
    pub name: String,
    pub kind: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LineV1 {
    pub id: String,
    pub plan: String,
    pub kind: LineKind,
    pub description: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub quantity: Decimal,
    pub unit: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub unit_price: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub amount: Decimal,
    #[serde(with = "rust_decimal::serde::str_option")]
    pub previous_amount: Option<Decimal>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageV1 {
    pub input: u64,
    pub output: u64,
    pub cache_read: u64,
    pub cache_write: u64,
    pub tokens: u64,
    pub requests: u64,
    /// The dimensions besides tokens, each only when used (a document without them reads as
    /// 0; `cache_write_1h` is the 1 h part of `cache_write`, seconds are in milliseconds).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub images: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub video_ms: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub audio_ms: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub search_units: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cache_write_1h: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub latency_optimized: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cross_region: u64,
}

/// For the business, not the tenant: what the tenant cost and the margin on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InternalV1 {
    /// `reconciled` (final) or `estimate` (provisional).
    pub cost_source: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub cost_basis: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub estimated_cost: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub margin: Decimal,
    #[serde(with = "rust_decimal::serde::str_option")]
    pub margin_pct: Option<Decimal>,
}

impl From<&Invoice> for InvoiceV1 {
    fn from(i: &Invoice) -> Self {
        let u = &i.usage;
        InvoiceV1 {
            schema: SCHEMA_ID.to_string(),
            id: i.id.clone(),
            tenant: i.tenant.to_string(),
            period: i.period.clone(),
            status: i.status,
            version: i.version,
            supersedes: i.supersedes.clone(),
            currency: "USD".to_string(),
            plan: PlanRef { name: i.plan.clone(), kind: i.plan_kind.as_str().to_string() },
            lines: i.lines.iter().map(LineV1::from).collect(),
            total: i.total,
            cumulative_total: i.cumulative_total,
            usage: UsageV1 {
                input: u.input,
                output: u.output,
                cache_read: u.cache_read,
                cache_write: u.cache_write,
                tokens: u.tokens(),
                requests: u.requests,
                images: u.images,
                video_ms: u.video_ms,
                audio_ms: u.audio_ms,
                search_units: u.search_units,
                cache_write_1h: u.cache_write_1h,
                latency_optimized: u.latency_optimized,
                cross_region: u.cross_region,
            },
            allowance: i.allowance,
            internal: InternalV1 {
                cost_source: if i.status == Status::Final { "reconciled" } else { "estimate" }.to_string(),
                cost_basis: i.cost_basis,
                estimated_cost: i.estimated_cost,
                margin: i.margin,
                margin_pct: i.margin_pct,
            },
        }
    }
}

impl From<&Line> for LineV1 {
    fn from(l: &Line) -> Self {
        LineV1 {
            id: l.id.clone(),
            plan: l.plan.clone(),
            kind: l.kind,
            description: l.description.clone(),
            quantity: l.quantity,
            unit: l.unit.clone(),
            unit_price: l.unit_price,
            amount: l.amount,
            previous_amount: l.previous_amount,
        }
    }
}

impl InvoiceV1 {
    /// What issuing the next version needs of this one; `None` when it is not a final
    /// invoice of this schema.
    pub fn issued(&self) -> Option<Issued> {
        if self.schema != SCHEMA_ID || self.status != Status::Final {
            return None;
        }
        let plan_kind = [PlanKind::Bundled, PlanKind::Quota, PlanKind::Metered, PlanKind::AddOn]
            .into_iter()
            .find(|k| k.as_str() == self.plan.kind)?;
        Some(Issued {
            id: self.id.clone(),
            version: self.version,
            plan: self.plan.name.clone(),
            plan_kind,
            lines: self.lines.iter().map(|l| (l.plan.clone(), l.kind, l.amount)).collect(),
            cumulative_total: self.cumulative_total,
            cost_basis: self.internal.cost_basis,
            usage: TokenUsage {
                input: self.usage.input,
                output: self.usage.output,
                cache_read: self.usage.cache_read,
                cache_write: self.usage.cache_write,
                requests: self.usage.requests,
                images: self.usage.images,
                video_ms: self.usage.video_ms,
                audio_ms: self.usage.audio_ms,
                search_units: self.usage.search_units,
                cache_write_1h: self.usage.cache_write_1h,
                latency_optimized: self.usage.latency_optimized,
                cross_region: self.usage.cross_region,
            },
        })
    }

    pub fn tenant_id(&self) -> Option<TenantId> {
        TenantId::new(&self.tenant)
    }
}

/// The JSON Schema (draft 2020-12) every exported invoice validates against; `tally schema
/// invoice` prints it.
pub fn json_schema() -> serde_json::Value {
    let cents = serde_json::json!({"type": "string", "pattern": "^-?[0-9]+\\.[0-9]{2}$", "description": "USD, exactly two places"});
    let decimal =
        serde_json::json!({"type": "string", "pattern": "^-?[0-9]+(\\.[0-9]+)?$", "description": "an exact decimal"});
    let count = serde_json::json!({"type": "integer", "minimum": 0});
    let id = |prefix: &str| serde_json::json!({"type": "string", "pattern": format!("^{prefix}_[0-9a-f]{{32}}$")});
    serde_json::json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://github.com/tally-billing/tally/schema/invoice-v1.json",
        "title": "tally invoice",
        "description": "One tenant's invoice for one billing period and version, as `tally invoice` exports it. Ids are deterministic (tenant, period, plan, line kind, version) and meant as idempotency keys. `internal` is for the business, not the tenant.",
        "type": "object",
        "additionalProperties": false,
        "required": ["schema", "id", "tenant", "period", "status", "version", "supersedes", "currency", "plan", "lines", "total", "cumulative_total", "usage", "allowance", "internal"],
        "properties": {
            "schema": {"const": SCHEMA_ID},
            "id": id("inv"),
            "tenant": {"type": "string", "minLength": 1},
            "period": {"type": "string", "pattern": "^[0-9]{4}-(0[1-9]|1[0-2])$"},
            "status": {"enum": ["provisional", "final"], "description": "provisional: from the list-price estimate before reconcile, replaced by each run (version 0); final: from the reconciled cost, immutable"},
            "version": {"type": "integer", "minimum": 0},
            "supersedes": {"type": ["string", "null"], "pattern": "^inv_[0-9a-f]{32}$", "description": "the previous version's id; this version's lines are deltas to it"},
            "currency": {"const": "USD"},
            "plan": {
                "type": "object", "additionalProperties": false, "required": ["name", "kind"],
                "properties": {"name": {"type": "string", "minLength": 1}, "kind": {"enum": ["bundled", "quota", "metered", "add_on"]}}
            },
            "lines": {
                "type": "array",
                "items": {
                    "type": "object", "additionalProperties": false,
                    "required": ["id", "plan", "kind", "description", "quantity", "unit", "unit_price", "amount", "previous_amount"],
                    "properties": {
                        "id": id("line"),
                        "plan": {"type": "string", "minLength": 1},
                        "kind": {"enum": ["fee", "seats", "usage", "overage"]},
                        "description": {"type": "string"},
                        "quantity": decimal,
                        "unit": {"enum": ["month", "seat", "1K tokens", "credit", "USD of cost", "reversal"]},
                        "unit_price": decimal,
                        "amount": cents,
                        "previous_amount": {"anyOf": [cents, {"type": "null"}], "description": "delta lines: what earlier versions charged for this plan and kind"}
                    }
                }
            },
            "total": cents,
            "cumulative_total": cents,
            "usage": {
                "type": "object", "additionalProperties": false,
                "required": ["input", "output", "cache_read", "cache_write", "tokens", "requests"],
                "description": "token counts; the other dimensions only when used (absent means 0): images, seconds of video and audio in milliseconds, rerank search units, the 1 h part of cache_write, latency-optimized and cross-region requests",
                "properties": {
                    "input": count, "output": count, "cache_read": count, "cache_write": count, "tokens": count, "requests": count,
                    "images": count, "video_ms": count, "audio_ms": count, "search_units": count,
                    "cache_write_1h": count, "latency_optimized": count, "cross_region": count
                }
            },
            "allowance": {
                "type": ["object", "null"], "additionalProperties": false, "required": ["unit", "included", "used", "over"],
                "properties": {"unit": {"enum": ["tokens", "credits"]}, "included": decimal, "used": decimal, "over": decimal}
            },
            "internal": {
                "type": "object", "additionalProperties": false,
                "required": ["cost_source", "cost_basis", "estimated_cost", "margin", "margin_pct"],
                "properties": {
                    "cost_source": {"enum": ["reconciled", "estimate"]},
                    "cost_basis": decimal,
                    "estimated_cost": decimal,
                    "margin": decimal,
                    "margin_pct": {"anyOf": [decimal, {"type": "null"}]}
                }
            }
        }
    })
}

/// The document as written: pretty JSON with a final newline.
pub fn to_json(invoice: &Invoice) -> String {
    let mut s = serde_json::to_string_pretty(&InvoiceV1::from(invoice)).expect("an invoice serializes");
    s.push('\n');
    s
}

/// The columns of `invoice_lines.csv` (and of the `invoice_lines` table).
pub const LINE_COLUMNS: [&str; 15] = [
    "invoice_id",
    "line_id",
    "tenant",
    "period",
    "status",
    "version",
    "plan",
    "plan_kind",
    "kind",
    "description",
    "quantity",
    "unit",
    "unit_price",
    "amount",
    "previous_amount",
];

/// A CSV field, quoted when it has to be (RFC 4180).
fn field(out: &mut String, v: &str) {
    if v.contains([',', '"', '\n', '\r']) {
        out.push('"');
        out.push_str(&v.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(v);
    }
}

fn row(out: &mut String, fields: &[&str]) {
    for (i, f) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        field(out, f);
    }
    out.push('\n');
}

/// Every line of `docs` as CSV with a header, in document order.
pub fn lines_csv(docs: &[InvoiceV1]) -> String {
    let mut out = String::with_capacity(64 + docs.len() * 400);
    row(&mut out, &LINE_COLUMNS);
    for d in docs {
        let version = d.version.to_string();
        for l in &d.lines {
            let previous = l.previous_amount.map(|p| p.to_string()).unwrap_or_default();
            row(
                &mut out,
                &[
                    &d.id,
                    &l.id,
                    &d.tenant,
                    &d.period,
                    d.status.as_str(),
                    &version,
                    &l.plan,
                    &d.plan.kind,
                    l.kind.as_str(),
                    &l.description,
                    &l.quantity.to_string(),
                    &l.unit,
                    &l.unit_price.to_string(),
                    &l.amount.to_string(),
                    &previous,
                ],
            );
        }
    }
    out
}

/// Every line of `docs` as the `invoice_lines` table (money columns `Decimal128(38, 10)`).
pub fn lines_table(docs: &[InvoiceV1]) -> Result<RecordBatch, ArrowError> {
    let lines: Vec<(&InvoiceV1, &LineV1)> = docs.iter().flat_map(|d| d.lines.iter().map(move |l| (d, l))).collect();
    let text = |f: &dyn for<'a> Fn(&'a InvoiceV1, &'a LineV1) -> &'a str| {
        Col::Strings(lines.iter().map(|(d, l)| Some(f(d, l))).collect())
    };
    let dec = |f: &dyn Fn(&LineV1) -> Option<Decimal>| {
        Col::Money(lines.iter().map(|(_, l)| f(l).map(money::to_units)).collect())
    };
    tables::batch(vec![
        ("invoice_id", text(&|d, _| d.id.as_str())),
        ("line_id", text(&|_, l| l.id.as_str())),
        ("tenant", text(&|d, _| d.tenant.as_str())),
        ("period", text(&|d, _| d.period.as_str())),
        ("status", text(&|d, _| d.status.as_str())),
        ("version", Col::Int(lines.iter().map(|(d, _)| Some(i64::from(d.version))).collect())),
        ("plan", text(&|_, l| l.plan.as_str())),
        ("plan_kind", text(&|d, _| d.plan.kind.as_str())),
        ("kind", text(&|_, l| l.kind.as_str())),
        ("description", text(&|_, l| l.description.as_str())),
        ("quantity", dec(&|l| Some(l.quantity))),
        ("unit", text(&|_, l| l.unit.as_str())),
        ("unit_price", dec(&|l| Some(l.unit_price))),
        ("amount", dec(&|l| Some(l.amount))),
        ("previous_amount", dec(&|l| l.previous_amount)),
    ])
}

/// The columns of `margin.csv`.
pub const MARGIN_COLUMNS: [&str; 11] =
    ["tenant", "billed", "plan", "plan_kind", "status", "version", "tokens", "charge", "cost", "margin", "margin_pct"];

fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref().map(ToString::to_string).unwrap_or_default()
}

/// The margin report as CSV: one row per tenant (billed or not), by tenant.
pub fn margin_csv(rows: &[MarginRow]) -> String {
    let mut out = String::with_capacity(64 + rows.len() * 120);
    row(&mut out, &MARGIN_COLUMNS);
    for r in rows {
        row(
            &mut out,
            &[
                r.tenant.as_str(),
                if r.plan.is_some() { "true" } else { "false" },
                &opt(&r.plan),
                &opt(&r.plan_kind.map(PlanKind::as_str)),
                &opt(&r.status.map(Status::as_str)),
                &opt(&r.version),
                &r.tokens.to_string(),
                &r.charge.to_string(),
                &r.cost.to_string(),
                &r.margin.to_string(),
                &opt(&r.margin_pct),
            ],
        );
    }
    out
}

/// The margin report as a text table with a totals row; with more than `limit` rows, the
/// `limit` costliest are shown and the rest counted.
pub fn margin_table(rows: &[MarginRow], limit: usize) -> String {
    let mut shown: Vec<&MarginRow> = rows.iter().collect();
    if shown.len() > limit {
        shown.sort_by(|a, b| b.cost.cmp(&a.cost).then_with(|| a.tenant.cmp(&b.tenant)));
        shown.truncate(limit);
        shown.sort_by(|a, b| a.tenant.cmp(&b.tenant));
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<20} {:<12} {:<8} {:>14} {:>12} {:>12} {:>12} {:>9}",
        "tenant", "plan", "kind", "tokens", "charge", "cost", "margin", "margin %"
    );
    let line = |out: &mut String,
                tenant: &str,
                plan: &str,
                kind: &str,
                tokens: u64,
                charge: Decimal,
                cost: Decimal,
                pct: Option<Decimal>| {
        let pct = pct.map(|p| format!("{p}%")).unwrap_or_else(|| "—".into());
        let _ = writeln!(
            out,
            "{tenant:<20} {plan:<12} {kind:<8} {tokens:>14} {:>12} {:>12} {:>12} {pct:>9}",
            round_cents(charge),
            round_cents(cost),
            round_cents(charge - cost)
        );
    };
    for r in &shown {
        let plan = r.plan.as_deref().unwrap_or("(unbilled)");
        line(
            &mut out,
            r.tenant.as_str(),
            plan,
            r.plan_kind.map(PlanKind::as_str).unwrap_or(""),
            r.tokens,
            r.charge,
            r.cost,
            r.margin_pct,
        );
    }
    if rows.len() > shown.len() {
        let _ = writeln!(
            out,
            "… {} more tenants (the {limit} costliest are shown; all are in margin.csv)",
            rows.len() - shown.len()
        );
    }
    let charge = sum_cents(rows.iter().map(|r| &r.charge));
    let cost: Decimal = rows.iter().map(|r| r.cost).sum();
    let tokens: u64 = rows.iter().map(|r| r.tokens).sum();
    line(&mut out, "total", "", "", tokens, charge, cost, super::issue::margin_of(charge, cost).1);
    out
}
