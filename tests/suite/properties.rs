//! Property tests: aggregation and roll-up algebra, and the store's replay and ordering
//! guarantees against a simple model.

use crate::common;

use std::collections::{BTreeMap, HashSet};

use proptest::prelude::*;
use rust_decimal::Decimal;
use tally::ids::{day_of, month_of, DedupKey, EpochSeconds, TenantId};
use tally::store::sqlite::SqliteStore;
use tally::store::{Applied, CounterStore};
use tally::usage::Entry;
use tally::usage::{aggregate, rollup, CounterKey, Granularity, Resource, Usage, Via};

use common::conformance::{apply_ok, batch, counters, cp, hour, hours_map};

const TENANTS: [&str; 4] = ["acme", "acme-corp", "globex", "_unattributed"];
const RESOURCES: [&str; 3] = ["amazon.nova-lite-v1:0", "us.anthropic.claude-3-5-haiku-20241022-v1:0", "m"];

fn config() -> ProptestConfig {
    ProptestConfig { cases: 64, ..ProptestConfig::default() }
}

/// An exact cost with up to 12 decimal places.
fn cost() -> impl Strategy<Value = Decimal> {
    (0i64..1_000_000_000, 0u32..=12).prop_map(|(m, scale)| Decimal::new(m, scale))
}

fn usage() -> impl Strategy<Value = Usage> {
    (
        (0u64..100_000, 0u64..100_000, 0u64..10_000, 0u64..10_000, 1u64..4, 0u64..2, 0u64..2),
        // The other dimensions: images, video and audio ms, search units, 1 h cache writes,
        // latency-optimized and cross-region requests.
        prop::array::uniform7(0u64..1_000),
        cost(),
    )
        .prop_map(|((input, output, cache_read, cache_write, requests, errors, no_usage), dims, est_cost)| {
            let tokens = [input, output, cache_read, cache_write, requests, errors, no_usage];
            Usage::from_counts(std::array::from_fn(|i| if i < 7 { tokens[i] } else { dims[i - 7] }), est_cost)
        })
}

/// A counter key from a small domain (so keys collide) whose hours span a month boundary:
/// 2025-11-28T00:00Z plus up to five days.
fn counter_key() -> impl Strategy<Value = CounterKey> {
    (
        prop::sample::select(TENANTS.to_vec()),
        0i64..120,
        prop::sample::select(RESOURCES.to_vec()),
        prop::sample::select(Via::ALL.to_vec()),
    )
        .prop_map(|(t, h, r, via)| CounterKey {
            tenant: TenantId::new(t).unwrap(),
            hour: hour("2025-11-28T00:00:00Z") + h * 3600,
            resource: Resource::new(r),
            via,
        })
}

fn items(max: usize) -> impl Strategy<Value = Vec<(CounterKey, Usage)>> {
    prop::collection::vec((counter_key(), usage()), 0..max)
}

fn agg(items: &[(CounterKey, Usage)]) -> BTreeMap<CounterKey, Usage> {
    aggregate(items.iter().map(|(k, u)| (k, u)))
}

fn per_tenant<K>(map: &BTreeMap<K, Usage>, tenant_of: impl Fn(&K) -> &TenantId) -> BTreeMap<TenantId, Usage> {
    let mut out: BTreeMap<TenantId, Usage> = BTreeMap::new();
    for (k, u) in map {
        *out.entry(tenant_of(k).clone()).or_default() += u;
    }
    out
}

/// One generated record: tenant, hour, resource and request id from small pools, so in-batch
/// and cross-batch duplicates happen often.
#[derive(Debug, Clone)]
struct Rec {
    tenant: &'static str,
    hour: EpochSeconds,
    resource: &'static str,
    request_id: String,
    usage: Usage,
}

impl Rec {
    fn entry(&self) -> Entry {
        Entry {
            dedup: DedupKey::from_request_id(&self.request_id),
            key: CounterKey {
                tenant: TenantId::new(self.tenant).unwrap(),
                hour: self.hour,
                resource: Resource::new(self.resource),
                via: Via::Pool,
            },
            usage: self.usage,
        }
    }
}

/// Hours of one month (2025-11), from a small set so that (hour, request id) pairs repeat, and
/// including both ends of the month.
fn month_hour() -> impl Strategy<Value = EpochSeconds> {
    prop::sample::select(vec![
        hour("2025-11-01T00:00:00Z"),
        hour("2025-11-01T01:00:00Z"),
        hour("2025-11-15T12:00:00Z"),
        hour("2025-11-16T00:00:00Z"),
        hour("2025-11-30T23:00:00Z"),
    ])
}

fn rec_with(
    request_id: impl Strategy<Value = String>,
    hour: impl Strategy<Value = EpochSeconds>,
) -> impl Strategy<Value = Rec> {
    (prop::sample::select(TENANTS.to_vec()), hour, prop::sample::select(RESOURCES.to_vec()), request_id, usage())
        .prop_map(|(tenant, hour, resource, request_id, usage)| Rec { tenant, hour, resource, request_id, usage })
}

/// The model of a store: dedup by (hour, request id), the first occurrence counts.
fn model(recs: &[Rec]) -> (BTreeMap<CounterKey, Usage>, u64) {
    let mut seen: HashSet<(EpochSeconds, DedupKey)> = HashSet::new();
    let mut out: BTreeMap<CounterKey, Usage> = BTreeMap::new();
    let mut counted = 0;
    for r in recs {
        let e = r.entry();
        if seen.insert((e.key.hour, e.dedup)) {
            *out.entry(e.key).or_default() += &e.usage;
            counted += 1;
        }
    }
    (out, counted)
}

fn fresh_store() -> SqliteStore {
    SqliteStore::in_memory().expect("in-memory store")
}

proptest! {
    #![proptest_config(config())]

    /// `aggregate` does not depend on the order of its input.
    #[test]
    fn aggregate_is_order_insensitive(
        (items, shuffled) in items(60).prop_flat_map(|v| (Just(v.clone()), Just(v).prop_shuffle()))
    ) {
        prop_assert_eq!(agg(&items), agg(&shuffled));
    }

    /// `aggregate(a ++ b)` is the key-wise sum of `aggregate(a)` and `aggregate(b)`, and it
    /// keeps the grand total.
    #[test]
    fn aggregate_is_mergeable(a in items(40), b in items(40)) {
        let mut merged = agg(&a);
        for (k, u) in agg(&b) {
            *merged.entry(k).or_default() += &u;
        }
        let all: Vec<_> = a.iter().chain(b.iter()).cloned().collect();
        let whole = agg(&all);
        prop_assert_eq!(&whole, &merged);
        let mut total = Usage::default();
        for (_, u) in &all {
            total += u;
        }
        let mut agg_total = Usage::default();
        for u in whole.values() {
            agg_total += u;
        }
        prop_assert_eq!(agg_total, total);
    }

    /// Day and month roll-ups keep every tenant's total, and each bucket is the sum of the
    /// hours that fall in that UTC day or month.
    #[test]
    fn rollups_keep_tenant_totals(items in items(80)) {
        let hours = agg(&items);
        let hourly = per_tenant(&hours, |k| &k.tenant);
        for g in [Granularity::Day, Granularity::Month] {
            let rolled = rollup(&hours, g);
            prop_assert_eq!(&per_tenant(&rolled, |k| &k.0), &hourly, "{:?}", g);
            let mut want: BTreeMap<(TenantId, String, Resource), Usage> = BTreeMap::new();
            for (k, u) in &hours {
                let bucket = match g {
                    Granularity::Day => day_of(k.hour),
                    Granularity::Month => month_of(k.hour),
                };
                *want.entry((k.tenant.clone(), bucket, k.resource.clone())).or_default() += u;
            }
            prop_assert_eq!(&rolled, &want, "{:?}", g);
        }
    }

    /// Applying a batch counts what the model counts (dedup by hour and request id, first
    /// occurrence wins), and applying the same entries again (with a correct checkpoint chain)
    /// changes no counter.
    #[test]
    fn replaying_a_batch_is_a_no_op(
        recs in prop::collection::vec(
            rec_with(prop::sample::select((0..8).map(|i| format!("req-{i}")).collect::<Vec<_>>()), month_hour()),
            0..40,
        )
    ) {
        let mut s = fresh_store();
        let entries: Vec<Entry> = recs.iter().map(Rec::entry).collect();
        let n = entries.len() as u64;
        let (want, want_counted) = model(&recs);

        let a = apply_ok(&mut s, &batch(entries.clone(), vec![cp("src", None, "1")]));
        prop_assert_eq!(a.counted, want_counted);
        prop_assert_eq!(a.counted + a.duplicates, n);
        prop_assert_eq!(a.keys_written, want.len() as u64);
        let after_first = hours_map(&s, "2025-11");
        prop_assert_eq!(&after_first, &want);

        let a = apply_ok(&mut s, &batch(entries, vec![cp("src", Some("1"), "2")]));
        prop_assert_eq!(a, Applied { counted: 0, duplicates: n, keys_written: 0 });
        prop_assert_eq!(&hours_map(&s, "2025-11"), &after_first);
        let tenants: Vec<(TenantId, Usage)> = per_tenant(&want, |k| &k.tenant).into_iter().collect();
        prop_assert_eq!(s.tenants("2025-11").unwrap(), tenants);
    }

    /// With unique request ids, splitting entries into two batches and applying them in either
    /// order gives the same counters (hours, roll-ups, tenants), totals and `max_hour`.
    #[test]
    fn apply_order_does_not_matter(
        (recs, split) in prop::collection::vec(
            rec_with(Just(String::new()), (0i64..240).prop_map(|h| hour("2025-11-25T00:00:00Z") + h * 3600)),
            0..40,
        )
        .prop_flat_map(|recs| { let n = recs.len(); (Just(recs), 0..=n) })
    ) {
        let entries: Vec<Entry> = recs
            .iter()
            .enumerate()
            .map(|(i, r)| Rec { request_id: format!("7ee514f3-9eff-467c-af75-{i:012x}"), ..r.clone() }.entry())
            .collect();
        let (first, second) = entries.split_at(split);
        let run = |order: [&[Entry]; 2]| {
            let mut s = fresh_store();
            apply_ok(&mut s, &batch(order[0].to_vec(), vec![cp("src", None, "1")]));
            apply_ok(&mut s, &batch(order[1].to_vec(), vec![cp("src", Some("1"), "2")]));
            (counters(&s, &["2025-11", "2025-12"], &TENANTS), s.totals().unwrap(), s.max_hour().unwrap())
        };
        let ab = run([first, second]);
        let ba = run([second, first]);
        prop_assert_eq!(&ab, &ba);

        let mut want = BTreeMap::new();
        for e in &entries {
            *want.entry(e.key.clone()).or_insert_with(Usage::default) += &e.usage;
        }
        let mut got = ab.0.hours[0].1.clone();
        got.extend(ab.0.hours[1].1.clone());
        prop_assert_eq!(got, want);
        prop_assert_eq!(ab.1.counted, entries.len() as u64);
        prop_assert_eq!(ab.2, entries.iter().map(|e| e.key.hour).max());
    }
}

/// `entries` as a batch, with the usage pre-summed per key as ingest workers send it when
/// `presummed`, else left for the store to sum.
fn batch_of(entries: Vec<Entry>, presummed: bool) -> tally::store::Batch {
    let mut b = batch(entries, vec![]);
    if presummed {
        let mut sums = tally::usage::Sums::default();
        for e in &b.entries {
            *sums.entry(e.key.clone()).or_default() += &e.usage;
        }
        b.sums = Some(sums);
    }
    b
}

proptest! {
    #![proptest_config(config())]

    /// Batches applied into groups (one transaction per group, counters written once at its
    /// commit) count exactly what the model counts, and leave the store exactly as applying
    /// each batch on its own does: counters, roll-ups, totals and `max_hour`. Request ids
    /// repeat within batches, across batches of one group and across groups.
    #[test]
    fn grouping_batches_changes_nothing_counted(
        (recs, cuts, ends, presummed) in prop::collection::vec(
            rec_with(prop::sample::select((0..10).map(|i| format!("req-{i}")).collect::<Vec<_>>()), month_hour()),
            0..60,
        )
        .prop_flat_map(|recs| {
            let n = recs.len();
            (Just(recs), prop::collection::vec(0..=n, 0..6), prop::collection::vec(any::<bool>(), 7), any::<bool>())
        })
    ) {
        let mut cuts = cuts;
        cuts.push(0);
        cuts.push(recs.len());
        cuts.sort_unstable();
        let batches: Vec<Vec<Entry>> = cuts.windows(2).map(|w| recs[w[0]..w[1]].iter().map(Rec::entry).collect()).collect();
        let (want, want_counted) = model(&recs);

        let mut grouped = fresh_store();
        let mut counted = 0;
        let mut keys_written = 0;
        for (i, entries) in batches.iter().enumerate() {
            let a = grouped.apply_grouped(&batch_of(entries.clone(), presummed)).unwrap();
            prop_assert_eq!(a.counted + a.duplicates, entries.len() as u64);
            counted += a.counted;
            if ends[i % ends.len()] {
                keys_written += grouped.commit_group().unwrap();
            }
        }
        keys_written += grouped.commit_group().unwrap();
        prop_assert_eq!(counted, want_counted);
        prop_assert_eq!(&hours_map(&grouped, "2025-11"), &want);
        prop_assert!(keys_written >= want.len() as u64, "{} keys written for {} counters", keys_written, want.len());

        let mut alone = fresh_store();
        for entries in &batches {
            apply_ok(&mut alone, &batch_of(entries.clone(), presummed));
        }
        let seen = |s: &SqliteStore| (counters(s, &["2025-11"], &TENANTS), s.totals().unwrap(), s.max_hour().unwrap());
        prop_assert_eq!(seen(&grouped), seen(&alone));
    }
}
