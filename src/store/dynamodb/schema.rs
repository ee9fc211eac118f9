//! The table's vocabulary: the key of every kind of item, the attribute names, and items
//! decoded into values (and request keys encoded into them). Which item holds what is in the
//! module docs of `store::dynamodb`. No I/O and no clock.

use std::collections::HashMap;
use std::str::FromStr;

use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue;
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;

use crate::ids::{hour_label, EpochSeconds, TenantId};
use crate::store::StoreError;
use crate::usage::{Resource, Usage, Via};

pub(super) type Item = HashMap<String, AttributeValue>;

/// Dedup buckets per hour.
pub const DEDUP_BUCKETS: u64 = 64;
/// Directory partitions per month.
pub(super) const DIR_PARTITIONS: u64 = 16;
/// Keys a dedup bucket may hold: 16 bytes each, under the 400 KB item limit with room to spare.
pub(super) const BUCKET_MAX_KEYS: usize = 23_000;

/// The counter fields, in `CounterOp::nums` order.
pub(super) const NUM_ATTRS: [&str; 7] =
    ["input", "output", "cache_read", "cache_write", "requests", "errors", "no_usage"];

/// The counts of the dimensions besides tokens, in `CounterOp::dims` order. Written only when
/// not 0; an item without one (every item written before they existed) holds 0.
pub(super) const DIMENSION_ATTRS: [&str; 7] =
    ["images", "video_ms", "audio_ms", "search_units", "cache_write_1h", "latency_optimized", "cross_region"];

// ---- keys -------------------------------------------------------------------------------------

/// The partition of a tenant's counters in a month, on one shard: `C#<YYYY-MM>#<s>#<tenant>`.
pub(super) fn counter_pk(month: &str, shard: u32, tenant: &str) -> String {
    format!("C#{month}#{shard}#{tenant}")
}

/// The sort key of an hourly counter: `T#<YYYY-MM-DDTHH>#<resource>`, with `#<via>` after it
/// when the tenant was decided by a silo account or the identity rule (`pool` has no suffix,
/// so the items written before `via` existed are `pool`'s).
pub(super) fn hour_sk(hour: EpochSeconds, resource: &Resource, via: Via) -> String {
    match via {
        Via::Pool => format!("T#{}#{resource}", &hour_label(hour)[..13]),
        _ => format!("T#{}#{resource}#{}", &hour_label(hour)[..13], via.as_str()),
    }
}

/// The sort key of a daily counter: `D#<YYYY-MM-DD>#<resource>`.
pub(super) fn day_sk(day: &str, resource: &Resource) -> String {
    format!("D#{day}#{resource}")
}

/// The sort key of a monthly counter: `M#<resource>`.
pub(super) fn month_sk(resource: &Resource) -> String {
    format!("M#{resource}")
}

/// Directory partition `d` (of [`DIR_PARTITIONS`]) of a month: `DIR#<YYYY-MM>#<d>`.
pub(super) fn dir_partition(month: &str, d: u64) -> String {
    format!("DIR#{month}#{d}")
}

/// The directory partition a tenant's month total lives in.
pub(super) fn dir_pk(month: &str, tenant: &str) -> String {
    dir_partition(month, fnv(tenant.as_bytes()) % DIR_PARTITIONS)
}

/// The sort key of a tenant's month total on one shard: `<s>#<tenant>`.
pub(super) fn dir_sk(shard: u32, tenant: &TenantId) -> String {
    format!("{shard}#{tenant}")
}

/// The dedup bucket a request key of an hour belongs to: `S#<YYYY-MM-DDTHH>#<b>`, `b` from the
/// key's high 64 bits.
pub(super) fn bucket_pk(hour: EpochSeconds, dedup: u128) -> String {
    let b = ((dedup >> 64) as u64) % DEDUP_BUCKETS;
    format!("S#{}#{b:02}", &hour_label(hour)[..13])
}

/// The partition of a split batch's intent: `I#<id>`.
pub(super) fn intent_pk(id: &str) -> String {
    format!("I#{id}")
}

/// FNV-1a, for stable small hashes (directory partition, shard rotation).
pub(super) fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100000001b3))
}

// ---- attributes -------------------------------------------------------------------------------

pub(super) fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

pub(super) fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

pub(super) fn key(pk: &str, sk: &str) -> Item {
    HashMap::from([("pk".to_string(), s(pk)), ("sk".to_string(), s(sk))])
}

pub(super) fn get_s<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    item.get(name).and_then(|v| v.as_s().ok()).map(String::as_str)
}

/// A DynamoDB Number as an exact decimal (moto writes small ones as `8.75E-8`).
pub(super) fn get_dec(item: &Item, name: &str) -> Result<Decimal, StoreError> {
    let Some(v) = item.get(name) else { return Ok(Decimal::ZERO) };
    let text = v.as_n().map_err(|_| StoreError::Unavailable(format!("attribute {name} is not a number")))?;
    let parsed = if text.contains(['e', 'E']) { Decimal::from_scientific(text) } else { Decimal::from_str(text) };
    parsed.map(|d| d.normalize()).map_err(|e| StoreError::Unavailable(format!("attribute {name} = {text:?}: {e}")))
}

pub(super) fn get_u64(item: &Item, name: &str) -> Result<u64, StoreError> {
    let d = get_dec(item, name)?;
    d.to_u64().ok_or_else(|| StoreError::Unavailable(format!("attribute {name} = {d} is not a count")))
}

pub(super) fn get_i64(item: &Item, name: &str) -> Result<Option<i64>, StoreError> {
    if !item.contains_key(name) {
        return Ok(None);
    }
    get_dec(item, name)?
        .to_i64()
        .map(Some)
        .ok_or_else(|| StoreError::Unavailable(format!("attribute {name} is not an integer")))
}

/// A counter item's usage; an absent count is 0.
pub(super) fn usage_of(item: &Item) -> Result<Usage, StoreError> {
    let mut counts = [0u64; 14];
    for (c, name) in counts.iter_mut().zip(NUM_ATTRS.iter().chain(&DIMENSION_ATTRS)) {
        *c = get_u64(item, name)?;
    }
    Ok(Usage::from_counts(counts, get_dec(item, "est_cost")?))
}

/// A usage's counts in [`NUM_ATTRS`] order.
pub(super) fn nums_of(u: &Usage) -> [u64; 7] {
    let c = u.counts();
    [c[0], c[1], c[2], c[3], c[4], c[5], c[6]]
}

/// A usage's other counts in [`DIMENSION_ATTRS`] order.
pub(super) fn dims_of(u: &Usage) -> [u64; 7] {
    let c = u.counts();
    [c[7], c[8], c[9], c[10], c[11], c[12], c[13]]
}

pub(super) fn tenant_of(item: &Item) -> Result<TenantId, StoreError> {
    get_s(item, "tenant")
        .and_then(TenantId::new)
        .ok_or_else(|| StoreError::Unavailable("counter item without a tenant".into()))
}

// ---- request keys -----------------------------------------------------------------------------

/// Request keys as an intent holds them: 32 hex digits each.
pub(super) fn keys_to_hex(keys: &[u128]) -> String {
    keys.iter().map(|k| format!("{k:032x}")).collect()
}

pub(super) fn keys_from_hex(hex: &str) -> Result<Vec<u128>, StoreError> {
    (0..hex.len() / 32)
        .map(|i| u128::from_str_radix(&hex[i * 32..i * 32 + 32], 16))
        .collect::<Result<_, _>>()
        .map_err(|e| StoreError::Unavailable(format!("intent holds a bad key: {e}")))
}

/// Request keys as a dedup bucket holds them: 16 big-endian bytes each.
pub(super) fn keys_to_blob(keys: &[u128]) -> Blob {
    let mut b = Vec::with_capacity(keys.len() * 16);
    for k in keys {
        b.extend_from_slice(&k.to_be_bytes());
    }
    Blob::new(b)
}

pub(super) fn keys_from_item(item: &Item) -> Vec<u128> {
    match item.get("keys").and_then(|v| v.as_b().ok()) {
        Some(b) => b.as_ref().chunks_exact(16).map(|c| u128::from_be_bytes(c.try_into().expect("16 bytes"))).collect(),
        None => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_attributes_are_the_usage_counts() {
        let names: Vec<&str> = NUM_ATTRS.iter().chain(&DIMENSION_ATTRS).copied().collect();
        assert_eq!(names, Usage::COUNTS);
        let u = Usage::from_counts(std::array::from_fn(|i| i as u64 + 1), Decimal::ONE);
        let item: Item = names
            .iter()
            .zip(nums_of(&u).into_iter().chain(dims_of(&u)))
            .map(|(name, v)| (name.to_string(), n(v)))
            .chain([("est_cost".to_string(), n(1))])
            .collect();
        assert_eq!(usage_of(&item).unwrap(), u);
        let old: Item = item.into_iter().filter(|(k, _)| !DIMENSION_ATTRS.contains(&k.as_str())).collect();
        assert_eq!(
            usage_of(&old).unwrap(),
            Usage::from_counts(std::array::from_fn(|i| if i < 7 { i as u64 + 1 } else { 0 }), Decimal::ONE)
        );
    }
}
