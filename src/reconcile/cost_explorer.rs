//! `tally reconcile --cost-explorer`: a cross-check of the CUR against Cost Explorer.
//!
//! Cost Explorer's `GetCostAndUsage` for the period (monthly, `UnblendedCost`, service Amazon
//! Bedrock, record type Usage), grouped by the tenant tag, gives AWS's own per-tag total. The
//! CUR lines that carry the same tag should add up to it: a difference means the CUR read is
//! incomplete, stale (CE is refreshed more often than a CUR), or filtered differently. So each
//! tag value is compared with what tally read from the CUR under that tag (`cur_tagged`), and
//! tally's full allocation for the tenant (tag + dedicated profile + split) is shown beside it;
//! cost with no tag is the row with no tenant. A row is flagged by the drift thresholds
//! (`[reconcile] drift_min_usd`, `drift_fraction`).
//!
//! The comparison (`compare`) is pure; `fetch` (the `aws` feature) makes the calls. The table
//! `cost_explorer` is written with the period's other outputs.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::Serialize;

use super::drift::Thresholds;
use crate::money;
use crate::month::Month;

/// One tag value's cost as Cost Explorer reports it; `tag` `None` is the untagged cost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CeGroup {
    pub tag: Option<String>,
    /// In 10⁻¹⁰ USD (`money` units).
    pub cost: i128,
}

/// One row of the `cost_explorer` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CeRow {
    pub tenant: Option<String>,
    pub cost_explorer: i128,
    pub cur_tagged: i128,
    pub allocated: i128,
    /// `cost_explorer − cur_tagged`.
    pub difference: i128,
    pub flagged: bool,
}

/// Totals for the run report.
#[derive(Debug, Clone, Serialize)]
pub struct CeSummary {
    #[serde(with = "rust_decimal::serde::str")]
    pub cost_explorer: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub cur_usage: Decimal,
    pub rows: usize,
    pub flagged: usize,
}

/// Cost Explorer's group key for a tag: `"<tag>$<value>"`, `"<tag>$"` when untagged.
pub fn parse_key(key: &str) -> Option<String> {
    let value = key.split_once('$').map_or(key, |(_, v)| v).trim();
    (!value.is_empty()).then(|| value.to_string())
}

/// Every tag value in either source, by tenant (untagged first).
pub fn compare(
    ce: &[CeGroup],
    cur_tagged: &BTreeMap<Option<String>, i128>,
    allocated: &BTreeMap<String, i128>,
    th: Thresholds,
) -> Vec<CeRow> {
    let mut by_tag: BTreeMap<Option<String>, i128> = BTreeMap::new();
    for g in ce {
        *by_tag.entry(g.tag.clone()).or_default() += g.cost;
    }
    let mut tags: Vec<Option<String>> = by_tag.keys().chain(cur_tagged.keys()).cloned().collect();
    tags.sort();
    tags.dedup();
    tags.into_iter()
        .map(|tag| {
            let cost_explorer = by_tag.get(&tag).copied().unwrap_or(0);
            let cur = cur_tagged.get(&tag).copied().unwrap_or(0);
            let difference = cost_explorer - cur;
            let larger = money::from_units(cost_explorer.abs().max(cur.abs()));
            let limit = th.min_usd.max(th.fraction * larger);
            CeRow {
                allocated: tag.as_ref().and_then(|t| allocated.get(t)).copied().unwrap_or(0),
                tenant: tag,
                cost_explorer,
                cur_tagged: cur,
                difference,
                flagged: money::from_units(difference.abs()) > limit,
            }
        })
        .collect()
}

/// GetCostAndUsage for the period, grouped by `tag`, every page.
#[cfg(feature = "aws")]
pub fn fetch(settings: &crate::aws::AwsSettings, period: &str, tag: &str) -> Result<Vec<CeGroup>, String> {
    use aws_sdk_costexplorer::types::{
        DateInterval, Dimension, DimensionValues, Expression, Granularity, GroupDefinition, GroupDefinitionType,
    };

    let (start, end) = period_bounds(period)?;
    let rt = crate::aws::runtime().map_err(|e| format!("cannot start the AWS runtime: {e}"))?;
    let config = crate::aws::block_on(&rt, crate::aws::sdk_config(settings));
    let client = aws_sdk_costexplorer::Client::new(&config);
    let dim = |key: Dimension, value: &str| {
        Expression::builder().dimensions(DimensionValues::builder().key(key).values(value).build()).build()
    };
    let filter = Expression::builder()
        .and(dim(Dimension::Service, "Amazon Bedrock"))
        .and(dim(Dimension::RecordType, "Usage"))
        .build();
    let interval = DateInterval::builder().start(start).end(end).build().map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let req = client
            .get_cost_and_usage()
            .time_period(interval.clone())
            .granularity(Granularity::Monthly)
            .metrics("UnblendedCost")
            .filter(filter.clone())
            .group_by(GroupDefinition::builder().r#type(GroupDefinitionType::Tag).key(tag).build())
            .set_next_page_token(token.clone());
        let page = crate::aws::block_on(&rt, req.send()).map_err(|e| {
            format!("Cost Explorer GetCostAndUsage: {}", aws_sdk_costexplorer::error::DisplayErrorContext(&e))
        })?;
        for result in page.results_by_time() {
            for group in result.groups() {
                let key = group.keys().first().map(String::as_str).unwrap_or_default();
                let Some(metric) = group.metrics().and_then(|m| m.get("UnblendedCost")) else { continue };
                let amount = metric.amount().unwrap_or("0");
                let cost = money::to_units_text(amount)
                    .ok_or_else(|| format!("Cost Explorer returned the amount {amount:?} for {key:?}"))?;
                out.push(CeGroup { tag: parse_key(key), cost });
            }
        }
        match page.next_page_token() {
            Some(t) if !t.is_empty() => token = Some(t.to_string()),
            _ => return Ok(out),
        }
    }
}

/// `YYYY-MM` → the first day of the month and of the next (Cost Explorer's end is exclusive).
/// The error is the message, worded as the CUR loader words a bad period.
pub fn period_bounds(period: &str) -> Result<(String, String), String> {
    let m = Month::parse(period).map_err(|_| format!("the period must be YYYY-MM, not {period:?}"))?;
    Ok((format!("{m}-01"), format!("{}-01", m.next())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn usd(s: &str) -> i128 {
        money::to_units(Decimal::from_str(s).unwrap())
    }

    #[test]
    fn keys_and_bounds() {
        assert_eq!(parse_key("tenant$acme"), Some("acme".into()));
        assert_eq!(parse_key("tenant$"), None);
        assert_eq!(period_bounds("2025-12").unwrap(), ("2025-12-01".into(), "2026-01-01".into()));
        assert_eq!(period_bounds("2025-13"), Err("the period must be YYYY-MM, not \"2025-13\"".to_string()));
    }

    #[test]
    fn every_tag_of_either_side_is_compared_and_flagged_by_the_thresholds() {
        let th =
            Thresholds { min_usd: Decimal::from_str("0.01").unwrap(), fraction: Decimal::from_str("0.05").unwrap() };
        let ce = vec![
            CeGroup { tag: Some("acme".into()), cost: usd("10.00") },
            CeGroup { tag: Some("globex".into()), cost: usd("5.00") },
            CeGroup { tag: None, cost: usd("2.00") },
        ];
        let cur: BTreeMap<Option<String>, i128> = [
            (Some("acme".to_string()), usd("10.004")),
            (Some("initech".to_string()), usd("1.00")),
            (None, usd("2.00")),
        ]
        .into();
        let allocated: BTreeMap<String, i128> = [("acme".to_string(), usd("11.5"))].into();
        let rows = compare(&ce, &cur, &allocated, th);
        let by: BTreeMap<Option<&str>, &CeRow> = rows.iter().map(|r| (r.tenant.as_deref(), r)).collect();
        assert_eq!(rows.len(), 4);
        assert!(!by[&Some("acme")].flagged, "0.004 is within 5% of 10");
        assert_eq!(by[&Some("acme")].difference, usd("-0.004"));
        assert_eq!(by[&Some("acme")].allocated, usd("11.5"));
        assert!(by[&Some("globex")].flagged, "in Cost Explorer, absent from the CUR");
        assert!(by[&Some("initech")].flagged, "in the CUR, absent from Cost Explorer");
        assert!(!by[&None].flagged);
    }
}
