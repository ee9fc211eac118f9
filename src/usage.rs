//! Usage counters and the per-record metering step: record → (dedup key, counter key, usage).
//!
//! Counters are keyed by tenant × UTC hour × cost resource (the `modelId` as logged, which is
//! what CUR's `line_item_resource_id` holds). Aggregation is a commutative, associative sum,
//! so batches can be pre-aggregated in any order and merged.
//!
//! Besides tokens, a counter sums every other dimension Bedrock bills ([`Usage`]): images,
//! video and audio (whole milliseconds: the logs give seconds with a fraction), rerank search
//! units, the 1 h part of the cache writes (`cache_write` stays the total of both TTLs, so every
//! meter that reads it keeps its meaning), latency-optimized requests, and cross-region
//! requests: those `inferenceRegion` says were served in another region than the one called
//! (what the counters keep of `inferenceRegion`; the region itself is not a key, as CUR bills a
//! cross-region call in the source region).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::{AddAssign, SubAssign};
use std::sync::Arc;

use rust_decimal::Decimal;
use rustc_hash::FxHashMap;
use serde::Serialize;

use crate::ids::{self, DedupKey, EpochSeconds, Target, TenantId};
use crate::pricing::{Catalog, Prices, Quantities, Tokens};
use crate::quarantine::Reason;
use crate::record::{LogRecord, Reject};
use crate::tenant::{Names, ProfileInfo, Resolver, Rule};

/// A cost resource: the `modelId` exactly as logged.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Resource(Arc<str>);

impl Resource {
    pub fn new(s: &str) -> Resource {
        Resource(Arc::from(s))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The counts kept per key. Every field is a sum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Usage {
    pub input: u64,
    pub output: u64,
    pub cache_read: u64,
    pub cache_write: u64,
    pub requests: u64,
    /// Requests that carried an `errorCode` (a subset of `requests`).
    pub errors: u64,
    /// Requests without an error that reported no token counts at all, e.g. guardrail-blocked
    /// (a subset of `requests`, disjoint from `errors`).
    pub no_usage: u64,
    /// Cost at catalog list price, exact.
    #[serde(with = "rust_decimal::serde::str")]
    pub est_cost: Decimal,
    /// Images generated.
    pub images: u64,
    /// Seconds of video, in whole milliseconds.
    pub video_ms: u64,
    /// Seconds of audio, in whole milliseconds.
    pub audio_ms: u64,
    /// Rerank search units.
    pub search_units: u64,
    /// The part of `cache_write` written with a 1 h TTL (the rest is 5 m).
    pub cache_write_1h: u64,
    /// Requests served latency-optimized (a subset of `requests`).
    pub latency_optimized: u64,
    /// Requests served in another region than the one called (a subset of `requests`).
    pub cross_region: u64,
}

impl Usage {
    pub fn tokens(&self) -> u64 {
        self.input + self.output + self.cache_read + self.cache_write
    }

    /// The counts, in the order the stores keep them: [`Usage::COUNTS`] names them.
    pub fn counts(&self) -> [u64; 14] {
        [
            self.input,
            self.output,
            self.cache_read,
            self.cache_write,
            self.requests,
            self.errors,
            self.no_usage,
            self.images,
            self.video_ms,
            self.audio_ms,
            self.search_units,
            self.cache_write_1h,
            self.latency_optimized,
            self.cross_region,
        ]
    }

    /// The names of [`Usage::counts`], as stores and outputs spell them.
    pub const COUNTS: [&'static str; 14] = [
        "input",
        "output",
        "cache_read",
        "cache_write",
        "requests",
        "errors",
        "no_usage",
        "images",
        "video_ms",
        "audio_ms",
        "search_units",
        "cache_write_1h",
        "latency_optimized",
        "cross_region",
    ];

    /// A usage from [`Usage::counts`] and a cost.
    pub fn from_counts(c: [u64; 14], est_cost: Decimal) -> Usage {
        Usage {
            input: c[0],
            output: c[1],
            cache_read: c[2],
            cache_write: c[3],
            requests: c[4],
            errors: c[5],
            no_usage: c[6],
            est_cost,
            images: c[7],
            video_ms: c[8],
            audio_ms: c[9],
            search_units: c[10],
            cache_write_1h: c[11],
            latency_optimized: c[12],
            cross_region: c[13],
        }
    }
}

impl AddAssign<&Usage> for Usage {
    fn add_assign(&mut self, o: &Usage) {
        self.input += o.input;
        self.output += o.output;
        self.cache_read += o.cache_read;
        self.cache_write += o.cache_write;
        self.requests += o.requests;
        self.errors += o.errors;
        self.no_usage += o.no_usage;
        self.est_cost += o.est_cost;
        self.images += o.images;
        self.video_ms += o.video_ms;
        self.audio_ms += o.audio_ms;
        self.search_units += o.search_units;
        self.cache_write_1h += o.cache_write_1h;
        self.latency_optimized += o.latency_optimized;
        self.cross_region += o.cross_region;
    }
}

impl SubAssign<&Usage> for Usage {
    /// Takes back a contribution that was added before (a duplicate found late).
    fn sub_assign(&mut self, o: &Usage) {
        self.input -= o.input;
        self.output -= o.output;
        self.cache_read -= o.cache_read;
        self.cache_write -= o.cache_write;
        self.requests -= o.requests;
        self.errors -= o.errors;
        self.no_usage -= o.no_usage;
        self.est_cost -= o.est_cost;
        self.images -= o.images;
        self.video_ms -= o.video_ms;
        self.audio_ms -= o.audio_ms;
        self.search_units -= o.search_units;
        self.cache_write_1h -= o.cache_write_1h;
        self.latency_optimized -= o.latency_optimized;
        self.cross_region -= o.cross_region;
    }
}

/// The finest counter key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CounterKey {
    pub tenant: TenantId,
    /// Start of the UTC hour, seconds since the epoch.
    pub hour: EpochSeconds,
    pub resource: Resource,
    /// How the tenant was decided, as far as the bill cares. Kept on hourly counters only;
    /// roll-ups and meters sum over it.
    pub via: Via,
}

/// How a record's tenant was decided, as far as reconcile cares (SPEC §3): usage a silo
/// account or the identity rule decided is paid by that account's or that principal's own CUR
/// lines, so it is left out of the splits of pooled lines, and nobody pays twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// Request metadata, the profile registry, or no rule (`_unattributed`).
    #[default]
    Pool,
    /// The identity rule, on `identity.arn` (the IAM principal).
    Identity,
    /// A silo tenant's own account (`[[tenancy.accounts]]`).
    Account,
}

impl Via {
    pub const ALL: [Via; 3] = [Via::Pool, Via::Identity, Via::Account];

    /// The name stored in counters and written to the `usage` table.
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Pool => "pool",
            Via::Identity => "identity",
            Via::Account => "account",
        }
    }

    pub fn parse(s: &str) -> Option<Via> {
        Via::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// What a tenant-resolution rule means for the bill.
    pub fn of_rule(rule: Option<Rule>) -> Via {
        match rule {
            Some(Rule::Identity) => Via::Identity,
            Some(Rule::Account) => Via::Account,
            Some(Rule::RequestMetadata | Rule::Profile) | None => Via::Pool,
        }
    }
}

/// A roll-up bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Granularity {
    Day,
    Month,
}

impl Granularity {
    pub fn bucket(self, hour: EpochSeconds) -> String {
        match self {
            Granularity::Day => ids::day_of(hour),
            Granularity::Month => ids::month_of(hour),
        }
    }
}

/// A roll-up key: tenant × day (`YYYY-MM-DD`) or month (`YYYY-MM`) × resource.
pub type RollupKey = (TenantId, String, Resource);

/// Sums usage per key. Order-insensitive and mergeable: `aggregate(a ++ b)` equals merging
/// `aggregate(a)` and `aggregate(b)`. Sums in a hash map (one hash per record instead of a
/// tree walk of string compares) and sorts the few keys once at the end.
pub fn aggregate<'a, I>(items: I) -> BTreeMap<CounterKey, Usage>
where
    I: IntoIterator<Item = (&'a CounterKey, &'a Usage)>,
{
    let mut sums: HashMap<&'a CounterKey, Usage, rustc_hash::FxBuildHasher> = HashMap::default();
    for (k, u) in items {
        *sums.entry(k).or_default() += u;
    }
    sums.into_iter().map(|(k, u)| (k.clone(), u)).collect()
}

/// Rolls hourly counters up to days or months. Sums per (tenant, UTC day number, resource)
/// in a hash map first and names each bucket once at the end: a batch has thousands of hourly
/// keys but a few hundred roll-up keys, so no bucket label is built or compared per hour.
pub fn rollup<'a>(
    hours: impl IntoIterator<Item = (&'a CounterKey, &'a Usage)>,
    g: Granularity,
) -> BTreeMap<RollupKey, Usage> {
    label_days(&sum_days(hours), g)
}

/// The day and the month roll-ups of hourly counters ([`rollup`] of each), with one pass over
/// the hours: the months are summed from the days.
pub fn rollup_days_and_months<'a>(
    hours: impl IntoIterator<Item = (&'a CounterKey, &'a Usage)>,
) -> [BTreeMap<RollupKey, Usage>; 2] {
    let days = sum_days(hours);
    [label_days(&days, Granularity::Day), label_days(&days, Granularity::Month)]
}

type DaySums<'a> = HashMap<(&'a TenantId, i64, &'a Resource), Usage, rustc_hash::FxBuildHasher>;

/// Hourly counters summed per (tenant, UTC day number, resource).
fn sum_days<'a>(hours: impl IntoIterator<Item = (&'a CounterKey, &'a Usage)>) -> DaySums<'a> {
    let mut by_day = DaySums::default();
    for (k, u) in hours {
        *by_day.entry((&k.tenant, k.hour.div_euclid(86_400), &k.resource)).or_default() += u;
    }
    by_day
}

/// Day sums under the bucket labels of `g`, summed where days share a bucket.
fn label_days(by_day: &DaySums<'_>, g: Granularity) -> BTreeMap<RollupKey, Usage> {
    let mut labels: HashMap<i64, String, rustc_hash::FxBuildHasher> = HashMap::default();
    let mut out: BTreeMap<RollupKey, Usage> = BTreeMap::new();
    for (&(tenant, day, resource), u) in by_day {
        let label = labels.entry(day).or_insert_with(|| g.bucket(day * 86_400)).clone();
        *out.entry((tenant.clone(), label, resource.clone())).or_default() += u;
    }
    out
}

/// One record, measured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Measured {
    pub dedup: DedupKey,
    pub key: CounterKey,
    pub usage: Usage,
    /// Two tenant rules disagreed.
    pub conflict: bool,
    /// The catalog had no price for the model (priced at 0).
    pub unknown_model: bool,
    /// `schemaVersion` other than 1.0 (still counted).
    pub unexpected_schema: bool,
}

struct ResourceInfo {
    resource: Resource,
    profile: Option<ProfileInfo>,
    prices: Option<Prices>,
}

/// Turns parsed records into counter contributions. Holds caches, so keep one per thread.
pub struct Metering<'c> {
    resolver: &'c Resolver,
    catalog: &'c Catalog,
    resources: FxHashMap<String, Arc<ResourceInfo>>,
    names: Names,
    /// Records stamped after this (epoch seconds) are refused as `bad_timestamp`.
    latest: Option<i64>,
}

impl<'c> Metering<'c> {
    pub fn new(resolver: &'c Resolver, catalog: &'c Catalog) -> Self {
        Metering { resolver, catalog, resources: FxHashMap::default(), names: Names::default(), latest: None }
    }

    /// Refuses records stamped after `latest` (epoch seconds) as `bad_timestamp`.
    pub fn with_latest(mut self, latest: Option<i64>) -> Self {
        self.latest = latest;
        self
    }

    fn resource(&mut self, model_id: &str) -> Arc<ResourceInfo> {
        if let Some(info) = self.resources.get(model_id) {
            return info.clone();
        }
        let target = Target::parse(model_id);
        let profile = self.resolver.profile(model_id, &target).cloned();
        let hint = profile.as_ref().and_then(|p| p.model.as_deref());
        let tier = profile.as_ref().map(|p| p.tier).unwrap_or_default();
        let prices = self.catalog.lookup(&target, hint).map(|p| p.priced(tier));
        let info = Arc::new(ResourceInfo { resource: Resource::new(model_id), profile, prices });
        self.resources.insert(model_id.to_string(), info.clone());
        info
    }

    /// Measures one record. The only reject left at this stage is a bad timestamp.
    pub fn measure(&mut self, rec: &LogRecord<'_>) -> Result<Measured, Reject> {
        let ts = ids::parse_timestamp(&rec.timestamp).ok_or_else(|| {
            Reject::new(Reason::BadTimestamp, format!("`timestamp` {:?} is not an ISO-8601 UTC time", rec.timestamp))
        })?;
        if self.latest.is_some_and(|latest| ts > latest) {
            return Err(Reject::new(
                Reason::BadTimestamp,
                format!("`timestamp` {:?} is in the future, past ingest.max_future_hours", rec.timestamp),
            ));
        }
        let info = self.resource(&rec.model_id);
        let resolution = self.resolver.resolve(rec, info.profile.as_ref(), &mut self.names);
        let via = Via::of_rule(resolution.rule);
        let tenant = resolution.tenant;
        let tokens = Tokens {
            input: rec.input_tokens.unwrap_or(0),
            output: rec.output_tokens.unwrap_or(0),
            cache_read: rec.cache_read_tokens.unwrap_or(0),
            cache_write: rec.cache_write_tokens.unwrap_or(0),
        };
        let failed = rec.error_code.as_deref().is_some_and(|c| !c.is_empty());
        let used = Quantities {
            tokens,
            cache_write_1h: rec.cache_write_1h_tokens.unwrap_or(0).min(tokens.cache_write),
            images: rec.images.unwrap_or(0),
            video_ms: rec.video_ms.unwrap_or(0),
            audio_ms: rec.audio_ms.unwrap_or(0),
            search_units: rec.search_units.unwrap_or(0),
            // A failed call was not served at all, let alone latency-optimized.
            latency_optimized: rec.latency_optimized && !failed,
        };
        let est_cost = info.prices.as_ref().map(|p| p.cost(&used)).unwrap_or_default();
        Ok(Measured {
            dedup: DedupKey::from_request_id(&rec.request_id),
            key: CounterKey { tenant, hour: ids::hour_of(ts), resource: info.resource.clone(), via },
            usage: Usage {
                input: tokens.input,
                output: tokens.output,
                cache_read: tokens.cache_read,
                cache_write: tokens.cache_write,
                requests: 1,
                errors: u64::from(failed),
                no_usage: u64::from(rec.no_usage_reported() && !failed),
                est_cost,
                images: used.images,
                video_ms: used.video_ms,
                audio_ms: used.audio_ms,
                search_units: used.search_units,
                cache_write_1h: used.cache_write_1h,
                latency_optimized: u64::from(used.latency_optimized),
                cross_region: u64::from(rec.served_elsewhere()),
            },
            conflict: resolution.conflict,
            unknown_model: info.prices.is_none(),
            unexpected_schema: !rec.has_expected_schema(),
        })
    }
}

/// One counted record as the store sees it: its request-id key, where it counts, what it used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub dedup: DedupKey,
    pub key: CounterKey,
    pub usage: Usage,
}

/// Usage per hourly key, in a map with a fast hasher.
pub type Sums = HashMap<CounterKey, Usage, rustc_hash::FxBuildHasher>;

/// Adds `usage` to `key`'s sum, cloning the key only when it is new.
#[inline]
pub fn add_to(sums: &mut Sums, key: &CounterKey, usage: &Usage) {
    match sums.get_mut(key) {
        Some(total) => *total += usage,
        None => {
            sums.insert(key.clone(), *usage);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{parse_record, ParseOptions};
    use crate::tenant::TenancyConfig;

    #[test]
    fn a_record_is_measured_with_exact_cost_in_its_own_hour() {
        let resolver = Resolver::new(&TenancyConfig::default());
        let catalog = Catalog::builtin();
        let mut m = Metering::new(&resolver, &catalog);
        let text = r#"{"timestamp":"2025-03-11T00:38:02Z","requestId":"r","modelId":"amazon.nova-lite-v1:0","requestMetadata":{"tenant_id":"acme"},"input":{"inputTokenCount":4,"cacheReadInputTokenCount":1000},"output":{"outputTokenCount":38}}"#;
        let rec = parse_record(text.as_bytes(), &ParseOptions::default()).unwrap();
        let got = m.measure(&rec).unwrap();
        assert_eq!(got.key.tenant.as_str(), "acme");
        assert_eq!(ids::hour_label(got.key.hour), "2025-03-11T00:00:00Z");
        // 4 × 0.06/1M + 38 × 0.24/1M + 1000 × 0.015/1M
        assert_eq!(got.usage.est_cost, "0.00002436".parse::<Decimal>().unwrap());
        assert_eq!((got.usage.requests, got.usage.no_usage, got.usage.errors), (1, 0, 0));
        assert!(!got.unknown_model);
    }
}
