//! Drift (SPEC §3): per day × resource × token type, what the counters metered (tokens and the
//! cost estimated at list price) against what CUR billed (quantity and cost). Pure.
//!
//! A row is flagged when |CUR cost − estimated cost| > max(`min_usd`, `fraction` × the larger
//! of the two). Rows present on one side only are included. Usage of base models (whose CUR
//! lines carry no resource id) is compared per day and token type under resource `(none)`.

use std::collections::BTreeMap;

use rust_decimal::Decimal;

use crate::cur::classify::TokenType;
use crate::money;

/// The resource label of base-model usage.
pub const NO_RESOURCE: &str = "(none)";

/// Day × resource label × token type.
pub type DriftKey = (String, String, TokenType);

/// What the counters say for one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Metered {
    pub tokens: u64,
    /// Exact, at list price.
    pub estimated: Decimal,
}

/// What CUR says for one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Billed {
    /// Tokens billed, when the lines are in tokens.
    pub tokens: Option<i64>,
    /// Units of 10⁻¹⁰ USD.
    pub cost: i128,
}

/// When a difference is worth a look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    pub min_usd: Decimal,
    pub fraction: Decimal,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds { min_usd: Decimal::ONE, fraction: Decimal::new(5, 2) }
    }
}

/// One row of the drift table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriftRow {
    pub day: String,
    pub resource: String,
    pub token_type: TokenType,
    pub metered: Option<Metered>,
    pub billed: Option<Billed>,
    /// CUR cost − estimated cost.
    pub difference: Decimal,
    pub flagged: bool,
}

/// Joins the two sides, keyed and sorted by day, resource, token type.
pub fn drift(
    metered: &BTreeMap<DriftKey, Metered>,
    billed: &BTreeMap<DriftKey, Billed>,
    th: Thresholds,
) -> Vec<DriftRow> {
    let mut keys: Vec<&DriftKey> = metered.keys().chain(billed.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .map(|k| {
            let m = metered.get(k).copied();
            let b = billed.get(k).copied();
            let est = m.map(|m| m.estimated).unwrap_or_default();
            let cur = b.map(|b| money::from_units(b.cost)).unwrap_or_default();
            let difference = cur - est;
            let larger = est.abs().max(cur.abs());
            let flagged = difference.abs() > th.min_usd.max(th.fraction * larger);
            DriftRow {
                day: k.0.clone(),
                resource: k.1.clone(),
                token_type: k.2,
                metered: m,
                billed: b,
                difference,
                flagged,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    fn check(est: Option<&str>, cur: Option<&str>, th: Thresholds, flagged: bool) {
        let key: DriftKey = ("2025-11-01".into(), "p".into(), TokenType::Input);
        let metered: BTreeMap<_, _> =
            est.map(|e| (key.clone(), Metered { tokens: 1, estimated: dec(e) })).into_iter().collect();
        let billed: BTreeMap<_, _> =
            cur.map(|c| (key.clone(), Billed { tokens: Some(1), cost: money::to_units(dec(c)) })).into_iter().collect();
        let rows = drift(&metered, &billed, th);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].flagged, flagged, "est {est:?} cur {cur:?}");
        assert_eq!(rows[0].difference, dec(cur.unwrap_or("0")) - dec(est.unwrap_or("0")));
    }

    #[test]
    fn flagged_above_a_dollar_or_five_percent_of_the_larger() {
        let th = Thresholds::default();
        check(Some("10"), Some("10.99"), th, false);
        check(Some("10"), Some("11.01"), th, true);
        check(Some("100"), Some("104.9"), th, false);
        check(Some("100"), Some("106"), th, true);
        check(None, Some("1.5"), th, true);
        check(Some("0.5"), None, th, false);
        check(Some("1"), Some("1.2"), Thresholds { min_usd: dec("0.1"), fraction: dec("0.05") }, true);
    }
}
