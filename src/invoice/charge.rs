//! What a plan charges for a period's usage (SPEC §4): pure, no I/O, money in `Decimal`.
//!
//! Every line amount is computed from exact inputs and rounded once, by [`round_cents`]; the
//! invoice total is the sum of the rounded lines. Quantities are shown for the reader and may
//! carry more places than the amount; the amount is never recomputed from a shown quantity.

use rust_decimal::{Decimal, RoundingStrategy};
use serde::{Deserialize, Serialize};

use super::plan::{Allowance, Plan, Pricing, Subscription};

/// The one rounding of money on an invoice: to cents, half away from zero, always shown with
/// two places (`49.00`).
pub fn round_cents(amount: Decimal) -> Decimal {
    let mut r = amount.round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero);
    r.rescale(2);
    r
}

/// The sum of rounded amounts, shown with two places even when there are none (`0.00`).
pub fn sum_cents<'a>(amounts: impl IntoIterator<Item = &'a Decimal>) -> Decimal {
    amounts.into_iter().fold(Decimal::new(0, 2), |sum, a| sum + a)
}

/// Token counts of a tenant's period, from the counters, and the other dimensions it used
/// (shown on the invoice when not 0; no plan charges them apart: their cost is in the cost).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenUsage {
    pub input: u64,
    pub output: u64,
    pub cache_read: u64,
    pub cache_write: u64,
    pub requests: u64,
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

/// For `skip_serializing_if`: a dimension not used is not shown.
pub fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl TokenUsage {
    /// What an allowance in tokens counts: every token type.
    pub fn tokens(&self) -> u64 {
        self.input + self.output + self.cache_read + self.cache_write
    }
}

impl From<&crate::usage::Usage> for TokenUsage {
    fn from(u: &crate::usage::Usage) -> Self {
        TokenUsage {
            input: u.input,
            output: u.output,
            cache_read: u.cache_read,
            cache_write: u.cache_write,
            requests: u.requests,
            images: u.images,
            video_ms: u.video_ms,
            audio_ms: u.audio_ms,
            search_units: u.search_units,
            cache_write_1h: u.cache_write_1h,
            latency_optimized: u.latency_optimized,
            cross_region: u.cross_region,
        }
    }
}

/// What a tenant's invoice is computed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Basis {
    pub usage: TokenUsage,
    /// The usage at catalog list price (the counters' estimate); what credits measure.
    pub estimated_cost: Decimal,
    /// The tenant's share of the CUR, once the period is reconciled.
    pub reconciled_cost: Option<Decimal>,
}

impl Basis {
    /// The cost of the tenant to the business: reconciled when known, else the estimate.
    pub fn cost(&self) -> Decimal {
        self.reconciled_cost.unwrap_or(self.estimated_cost)
    }
}

/// The kinds of line an invoice can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LineKind {
    /// The monthly fee of a bundled or quota plan.
    Fee,
    /// Seats × seat price of an add-on plan.
    Seats,
    /// A metered plan's usage line: max(cost × markup, minimum).
    Usage,
    /// Usage beyond a quota or the seats' included tokens.
    Overage,
}

impl LineKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LineKind::Fee => "fee",
            LineKind::Seats => "seats",
            LineKind::Usage => "usage",
            LineKind::Overage => "overage",
        }
    }
}

/// One charge before it has an id or a version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    pub kind: LineKind,
    pub description: String,
    pub quantity: Decimal,
    /// What `quantity` counts: `month`, `seat`, `1K tokens`, `credit`, `USD of cost`.
    pub unit: &'static str,
    pub unit_price: Decimal,
    /// Rounded to cents.
    pub amount: Decimal,
}

/// How much of an allowance was used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowanceUse {
    /// `tokens` or `credits`.
    pub unit: Unit,
    #[serde(with = "rust_decimal::serde::str")]
    pub included: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub used: Decimal,
    /// Beyond `included` (never negative).
    #[serde(with = "rust_decimal::serde::str")]
    pub over: Decimal,
}

/// The unit of an allowance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    Tokens,
    Credits,
}

/// Places a shown quantity keeps (credits can divide without end).
const QUANTITY_PLACES: u32 = 10;

/// The charges of one tenant on one plan, and the allowance position when the plan has one.
pub fn charges(plan: &Plan, sub: &Subscription, basis: &Basis) -> (Vec<Charge>, Option<AllowanceUse>) {
    let mut lines = Vec::new();
    let mut allowance = None;
    match plan.pricing {
        Pricing::Bundled { monthly_fee } => lines.push(fee(plan, monthly_fee)),
        Pricing::Quota { monthly_fee, allowance: a, overage_rate } => {
            lines.push(fee(plan, monthly_fee));
            let (over_line, used) = match a {
                Allowance::Tokens { included } => token_overage(basis.usage.tokens(), included, overage_rate, "quota"),
                Allowance::Credits { included, credit_usd } => {
                    credit_overage(basis.estimated_cost, included, credit_usd, overage_rate)
                }
            };
            lines.extend(over_line);
            allowance = Some(used);
        }
        Pricing::Metered { markup, minimum } => lines.push(metered(basis.cost(), markup, minimum)),
        Pricing::AddOn { seat_price, overage } => {
            let seats = Decimal::from(sub.seats);
            lines.push(Charge {
                kind: LineKind::Seats,
                description: format!("{} seats of plan {}", sub.seats, plan.name),
                quantity: seats,
                unit: "seat",
                unit_price: seat_price,
                amount: round_cents(seats * seat_price),
            });
            if let Some((per_seat, rate)) = overage {
                let included = per_seat.saturating_mul(sub.seats);
                let (over_line, used) = token_overage(basis.usage.tokens(), included, rate, "included seat tokens");
                lines.extend(over_line);
                allowance = Some(used);
            }
        }
    }
    (lines, allowance)
}

fn fee(plan: &Plan, monthly_fee: Decimal) -> Charge {
    Charge {
        kind: LineKind::Fee,
        description: format!("monthly fee, plan {}", plan.name),
        quantity: Decimal::ONE,
        unit: "month",
        unit_price: monthly_fee,
        amount: round_cents(monthly_fee),
    }
}

/// Tokens beyond `included`, at `rate` per 1K tokens pro rata; no line when it rounds to 0.
fn token_overage(used: u64, included: u64, rate: Decimal, what: &str) -> (Option<Charge>, AllowanceUse) {
    let over = used.saturating_sub(included);
    let thousands = Decimal::from(over) / Decimal::ONE_THOUSAND;
    let position = AllowanceUse {
        unit: Unit::Tokens,
        included: Decimal::from(included),
        used: Decimal::from(used),
        over: Decimal::from(over),
    };
    let amount = round_cents(thousands * rate);
    let line = (!amount.is_zero()).then(|| Charge {
        kind: LineKind::Overage,
        description: format!("{over} tokens beyond {included} {what} tokens"),
        quantity: thousands.normalize(),
        unit: "1K tokens",
        unit_price: rate,
        amount,
    });
    (line, position)
}

/// Credits beyond `included`, at `rate` per credit; one credit is `credit_usd` of list-price
/// usage. The amount is (estimate − included × credit_usd) × rate ÷ credit_usd: one division,
/// then the one rounding.
fn credit_overage(
    estimate: Decimal,
    included: Decimal,
    credit_usd: Decimal,
    rate: Decimal,
) -> (Option<Charge>, AllowanceUse) {
    let over_usd = (estimate - included * credit_usd).max(Decimal::ZERO);
    let credits = |usd: Decimal| (usd / credit_usd).round_dp(QUANTITY_PLACES).normalize();
    let position = AllowanceUse {
        unit: Unit::Credits,
        included: included.normalize(),
        used: credits(estimate),
        over: credits(over_usd),
    };
    let amount = round_cents(over_usd * rate / credit_usd);
    let line = (!amount.is_zero()).then(|| Charge {
        kind: LineKind::Overage,
        description: format!("{} credits beyond {} included credits", position.over, position.included),
        quantity: position.over,
        unit: "credit",
        unit_price: rate,
        amount,
    });
    (line, position)
}

/// max(cost × markup, minimum), as one line.
fn metered(cost: Decimal, markup: Decimal, minimum: Decimal) -> Charge {
    let marked_up = cost * markup;
    if marked_up >= minimum {
        let shown = cost.round_dp(QUANTITY_PLACES).normalize();
        Charge {
            kind: LineKind::Usage,
            description: format!("usage: {shown} USD of cost × markup {}", markup.normalize()),
            quantity: shown,
            unit: "USD of cost",
            unit_price: markup,
            amount: round_cents(marked_up),
        }
    } else {
        Charge {
            kind: LineKind::Usage,
            description: format!("usage: monthly minimum (cost × markup = {})", marked_up.round_dp(4).normalize()),
            quantity: Decimal::ONE,
            unit: "month",
            unit_price: minimum,
            amount: round_cents(minimum),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::super::plan::PlanKind;
    use super::*;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    fn check(
        pricing: Pricing,
        seats: u64,
        tokens: u64,
        estimate: &str,
        reconciled: Option<&str>,
        expected: &[(LineKind, &str)],
    ) {
        let plan = Plan { name: "p".into(), pricing, requests_per_day: None, alerts: Default::default() };
        let sub = Subscription { plan: "p".into(), seats };
        let basis = Basis {
            usage: TokenUsage { input: tokens, ..TokenUsage::default() },
            estimated_cost: d(estimate),
            reconciled_cost: reconciled.map(d),
        };
        let (lines, _) = charges(&plan, &sub, &basis);
        let got: Vec<(LineKind, String)> = lines.iter().map(|l| (l.kind, l.amount.to_string())).collect();
        let want: Vec<(LineKind, String)> = expected.iter().map(|(k, a)| (*k, a.to_string())).collect();
        assert_eq!(got, want, "{:?}", plan.pricing.kind());
    }

    #[test]
    fn rounding_is_to_cents_half_away_from_zero() {
        for (x, want) in [
            ("0.005", "0.01"),
            ("0.015", "0.02"),
            ("0.0049999", "0.00"),
            ("-0.005", "-0.01"),
            ("2", "2.00"),
            ("1.255", "1.26"),
        ] {
            assert_eq!(round_cents(d(x)).to_string(), want, "{x}");
        }
    }

    #[test]
    fn each_kind_charges_by_its_rule() {
        use LineKind::*;
        let bundled = Pricing::Bundled { monthly_fee: d("49.999") };
        check(bundled, 0, 10_000_000, "500", Some("800"), &[(Fee, "50.00")]);
        let quota = Pricing::Quota {
            monthly_fee: d("100"),
            allowance: Allowance::Tokens { included: 1_000_000 },
            overage_rate: d("0.015"),
        };
        check(quota, 0, 999_999, "1", None, &[(Fee, "100.00")]);
        // 1,000,333 tokens: 0.333K over × 0.015 = 0.004995 → 0.00: no line.
        check(quota, 0, 1_000_333, "1", None, &[(Fee, "100.00")]);
        // 1,000,334: 0.00501 → 0.01, pro rata, not a whole block.
        check(quota, 0, 1_000_334, "1", None, &[(Fee, "100.00"), (Overage, "0.01")]);
        let credits = Pricing::Quota {
            monthly_fee: d("10"),
            allowance: Allowance::Credits { included: d("100"), credit_usd: d("0.03") },
            overage_rate: d("0.05"),
        };
        // 3.5 USD of estimate = 116.67 credits; 16.67 over × 0.05 = (3.5 − 3) × 0.05 / 0.03 = 0.8333… → 0.83.
        check(credits, 0, 5, "3.5", Some("9"), &[(Fee, "10.00"), (Overage, "0.83")]);
        let metered = Pricing::Metered { markup: d("4"), minimum: d("20") };
        check(metered, 0, 5, "1", Some("6.1234567891"), &[(Usage, "24.49")]);
        check(metered, 0, 5, "1", Some("4.99"), &[(Usage, "20.00")]);
        check(metered, 0, 5, "7.125", None, &[(Usage, "28.50")]);
        let add_on = Pricing::AddOn { seat_price: d("12.5"), overage: Some((100_000, d("0.2"))) };
        check(add_on, 3, 300_000, "1", None, &[(Seats, "37.50")]);
        check(add_on, 3, 312_345, "1", None, &[(Seats, "37.50"), (Overage, "2.47")]);
        check(Pricing::AddOn { seat_price: d("9"), overage: None }, 2, 10_000_000, "1", None, &[(Seats, "18.00")]);
        assert_eq!(add_on.kind(), PlanKind::AddOn);
    }
}
