//! The `CounterStore` conformance suite.
//!
//! Every function here takes a factory that returns a fresh, empty store on each call, so every
//! backend (SQLite, DynamoDB) runs exactly the same checks: write one `#[test]` per function,
//! call [`run_all`], or share them out over several tests with [`run_part`] (DynamoDB does: on
//! moto a check can take hundreds of calls). Each check asserts observable behaviour through
//! the trait only, and each is written so that a store that gets the behaviour wrong fails it.

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;

use rust_decimal::Decimal;
use tally::ids::{day_of, hour_of, month_of, parse_timestamp, DedupKey, EpochSeconds, TenantId};
use tally::quarantine::Reason;
use tally::store::{Applied, Batch, CheckpointUpdate, CounterStore, IngestTotals, PeriodUsage, StoreError};
use tally::usage::Entry;
use tally::usage::{CounterKey, Resource, Usage, Via};

/// Returns a fresh, empty store on every call.
pub type Factory<'a> = &'a dyn Fn() -> Box<dyn CounterStore>;

/// One conformance check.
pub type Check = fn(Factory);

// ---------------------------------------------------------------------------------------------
// Builders
// ---------------------------------------------------------------------------------------------

/// An exact decimal from its text.
pub fn dec(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap_or_else(|e| panic!("bad decimal {s:?}: {e}"))
}

pub fn tenant(s: &str) -> TenantId {
    TenantId::new(s).unwrap_or_else(|| panic!("bad tenant id {s:?}"))
}

/// The start of the UTC hour holding an RFC 3339 instant.
pub fn hour(rfc3339: &str) -> EpochSeconds {
    hour_of(parse_timestamp(rfc3339).unwrap_or_else(|| panic!("bad timestamp {rfc3339:?}")))
}

pub fn key(tenant_id: &str, hour_rfc3339: &str, resource: &str) -> CounterKey {
    CounterKey {
        tenant: tenant(tenant_id),
        hour: hour(hour_rfc3339),
        resource: Resource::new(resource),
        via: Via::Pool,
    }
}

/// One request's usage: `requests = 1`, the given tokens and cost, nothing else.
pub fn usage(input: u64, output: u64, cost: &str) -> Usage {
    Usage { input, output, requests: 1, est_cost: dec(cost), ..Usage::default() }
}

/// One counted record: `tenant`'s request `request_id` at `hour_rfc3339` (any instant in the
/// hour) on `resource`.
pub fn entry(
    tenant_id: &str,
    hour_rfc3339: &str,
    resource: &str,
    request_id: &str,
    input: u64,
    output: u64,
    cost: &str,
) -> Entry {
    Entry {
        dedup: DedupKey::from_request_id(request_id),
        key: key(tenant_id, hour_rfc3339, resource),
        usage: usage(input, output, cost),
    }
}

pub fn cp(source: &str, expected: Option<&str>, position: &str) -> CheckpointUpdate {
    CheckpointUpdate {
        source: source.to_string(),
        expected: expected.map(str::to_string),
        position: position.to_string(),
    }
}

/// A batch of `entries` and `checkpoints`, every received record counted (nothing skipped).
pub fn batch(entries: Vec<Entry>, checkpoints: Vec<CheckpointUpdate>) -> Batch {
    Batch { received: entries.len() as u64, entries, checkpoints, ..Batch::default() }
}

/// Sums usages.
pub fn sum<'a>(items: impl IntoIterator<Item = &'a Usage>) -> Usage {
    let mut out = Usage::default();
    for u in items {
        out += u;
    }
    out
}

/// Applies a batch that must succeed.
pub fn apply_ok(s: &mut dyn CounterStore, b: &Batch) -> Applied {
    s.apply(b).unwrap_or_else(|e| panic!("apply failed: {e}"))
}

/// Applies a batch that must be refused because the checkpoint of `source` moved.
pub fn apply_refused(s: &mut dyn CounterStore, b: &Batch, source: &str) {
    match s.apply(b) {
        Err(StoreError::ConditionFailed { source_key, .. }) => {
            assert_eq!(source_key, source, "the refusal names the wrong checkpoint source")
        }
        Err(other) => panic!("expected ConditionFailed for {source}, got {other:?}"),
        Ok(applied) => panic!("expected ConditionFailed for {source}, but the batch was applied: {applied:?}"),
    }
}

/// Every hourly counter of a month, as a map (the trait does not promise an order for `hours`).
pub fn hours_map(s: &dyn CounterStore, month: &str) -> BTreeMap<CounterKey, Usage> {
    let rows = s.hours(month).unwrap();
    let n = rows.len();
    let map: BTreeMap<_, _> = rows.into_iter().collect();
    assert_eq!(map.len(), n, "hours({month}) returned a key twice");
    map
}

/// Everything the read side of a store shows about some months and tenants.
#[derive(Debug, Clone, PartialEq)]
pub struct Counters {
    pub hours: Vec<(String, BTreeMap<CounterKey, Usage>)>,
    pub tenants: Vec<(String, Vec<(TenantId, Usage)>)>,
    pub periods: Vec<PeriodUsage>,
}

pub fn counters(s: &dyn CounterStore, months: &[&str], tenants: &[&str]) -> Counters {
    Counters {
        hours: months.iter().map(|m| (m.to_string(), hours_map(s, m))).collect(),
        tenants: months.iter().map(|m| (m.to_string(), s.tenants(m).unwrap())).collect(),
        periods: months
            .iter()
            .flat_map(|m| tenants.iter().map(move |t| (m, t)))
            .map(|(m, t)| s.period_usage(&tenant(t), m).unwrap())
            .collect(),
    }
}

/// Everything observable about a store: counters, totals, checkpoints and `max_hour`.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub counters: Counters,
    pub totals: IngestTotals,
    pub checkpoints: BTreeMap<String, String>,
    pub max_hour: Option<EpochSeconds>,
}

pub fn snapshot(s: &dyn CounterStore, months: &[&str], tenants: &[&str]) -> Snapshot {
    Snapshot {
        counters: counters(s, months, tenants),
        totals: s.totals().unwrap(),
        checkpoints: s.checkpoints().unwrap().into_iter().collect(),
        max_hour: s.max_hour().unwrap(),
    }
}

/// Checks that the day and month roll-ups (`period_usage`, `tenants`) are exactly the sums of
/// the hourly counters of `month`.
pub fn assert_rollups_match_hours(s: &dyn CounterStore, month: &str) {
    let mut want: BTreeMap<TenantId, PeriodUsage> = BTreeMap::new();
    for (k, u) in hours_map(s, month) {
        assert_eq!(month_of(k.hour), month, "hours({month}) returned {k:?}, from another month");
        let p = want.entry(k.tenant.clone()).or_insert_with(|| PeriodUsage {
            tenant: k.tenant.clone(),
            period: month.to_string(),
            ..PeriodUsage::default()
        });
        p.total += &u;
        *p.by_day.entry(day_of(k.hour)).or_default() += &u;
        *p.by_resource.entry(k.resource.clone()).or_default() += &u;
    }
    let want_tenants: Vec<(TenantId, Usage)> = want.iter().map(|(t, p)| (t.clone(), p.total)).collect();
    assert_eq!(s.tenants(month).unwrap(), want_tenants, "tenants({month}) is not the sum of the hours");
    for (t, p) in &want {
        assert_eq!(&s.period_usage(t, month).unwrap(), p, "period_usage({t}, {month}) is not the sum of the hours");
    }
}

fn empty_period(t: &str, month: &str) -> PeriodUsage {
    PeriodUsage { tenant: tenant(t), period: month.to_string(), ..PeriodUsage::default() }
}

// ---------------------------------------------------------------------------------------------
// The suite
// ---------------------------------------------------------------------------------------------

/// Runs every check, each on fresh stores from `factory`.
pub fn run_all(factory: Factory) {
    run_part(factory, 0, 1);
}

/// Runs every `parts`-th check, from the `part`-th (counting from 0), each on fresh stores from
/// `factory`: `parts` tests, one for each `part` below `parts`, run every check once between
/// them.
pub fn run_part(factory: Factory, part: usize, parts: usize) {
    let checks: &[(&str, Check)] = &[
        ("a_fresh_store_is_empty", a_fresh_store_is_empty),
        ("apply_counts_every_field_and_rolls_up", apply_counts_every_field_and_rolls_up),
        ("costs_sum_exactly_as_decimals", costs_sum_exactly_as_decimals),
        ("counters_accumulate_across_batches", counters_accumulate_across_batches),
        ("a_request_counted_before_is_a_duplicate", a_request_counted_before_is_a_duplicate),
        ("a_request_twice_in_one_batch_counts_once", a_request_twice_in_one_batch_counts_once),
        ("applied_accounts_for_every_entry", applied_accounts_for_every_entry),
        ("dedup_keys_are_compared_exactly", dedup_keys_are_compared_exactly),
        ("replay_with_current_checkpoint_changes_no_counter", replay_with_current_checkpoint_changes_no_counter),
        (
            "replay_with_stale_checkpoint_is_refused_and_writes_nothing",
            replay_with_stale_checkpoint_is_refused_and_writes_nothing,
        ),
        ("a_failed_condition_writes_nothing", a_failed_condition_writes_nothing),
        ("checkpoints_round_trip", checkpoints_round_trip),
        ("the_first_checkpoint_write_requires_none", the_first_checkpoint_write_requires_none),
        ("totals_accumulate_across_batches", totals_accumulate_across_batches),
        ("max_hour_is_the_newest_hour_applied", max_hour_is_the_newest_hour_applied),
        ("prune_forgets_dedup_entries_before_the_window", prune_forgets_dedup_entries_before_the_window),
        ("reads_are_isolated_by_tenant", reads_are_isolated_by_tenant),
        ("month_and_day_boundaries_are_utc", month_and_day_boundaries_are_utc),
        ("an_empty_batch_moves_only_the_checkpoint", an_empty_batch_moves_only_the_checkpoint),
        ("via_keeps_hours_apart_and_meters_sum_over_it", via_keeps_hours_apart_and_meters_sum_over_it),
        ("every_dimension_is_summed_and_rolls_up", every_dimension_is_summed_and_rolls_up),
    ];
    for (name, check) in checks.iter().skip(part).step_by(parts) {
        eprintln!("conformance: {name}");
        check(factory);
    }
}

/// One tenant, hour and resource decided three ways (`via`) is three hourly counters, each
/// read back with its own sums; the roll-ups and meters sum over them.
pub fn via_keeps_hours_apart_and_meters_sum_over_it(factory: Factory) {
    let mut s = factory();
    let mut entries = Vec::new();
    for (n, via) in Via::ALL.into_iter().enumerate() {
        let mut e = entry("acme", "2025-11-03T10:00:00Z", "m", &format!("via-{n}"), 10 + n as u64, 1, "0.5");
        e.key.via = via;
        entries.push(e);
    }
    apply_ok(&mut *s, &batch(entries, vec![]));
    let hours = hours_map(&*s, "2025-11");
    let got: Vec<(Via, u64)> = hours.iter().map(|(k, u)| (k.via, u.input)).collect();
    assert_eq!(got, [(Via::Pool, 10), (Via::Identity, 11), (Via::Account, 12)]);
    assert_rollups_match_hours(&*s, "2025-11");
    assert_eq!(s.period_usage(&tenant("acme"), "2025-11").unwrap().total.input, 33);
}

/// The dimensions besides tokens (images, seconds, search units, 1 h cache writes,
/// latency-optimized and cross-region requests) are summed per key like tokens, over batches,
/// into every roll-up; a key that never had them reads 0, and one batch's `Usage` with every
/// count different makes a store that mixes two columns up fail.
pub fn every_dimension_is_summed_and_rolls_up(factory: Factory) {
    let mut s = factory();
    let counts = |base: u64| -> [u64; 14] { std::array::from_fn(|i| base * 100 + i as u64 + 1) };
    let used = |request: &str, at: &str, resource: &str, base: u64| Entry {
        dedup: DedupKey::from_request_id(request),
        key: key("acme", at, resource),
        usage: Usage::from_counts(counts(base), dec("0.5")),
    };
    let b1 = vec![
        used("d1", "2025-11-03T10:05:00Z", "m-canvas", 1),
        used("d2", "2025-11-03T10:55:00Z", "m-canvas", 2),
        entry("acme", "2025-11-03T10:30:00Z", "m-text", "d3", 5, 5, "0.1"),
    ];
    apply_ok(&mut *s, &batch(b1, vec![]));
    // Across batches, and into another day of the month.
    apply_ok(
        &mut *s,
        &batch(
            vec![used("d4", "2025-11-04T23:59:59Z", "m-canvas", 3), used("d1", "2025-11-03T10:05:00Z", "m-canvas", 1)],
            vec![],
        ),
    );

    let canvas_hour = Usage::from_counts(std::array::from_fn(|i| counts(1)[i] + counts(2)[i]), dec("1.0"));
    let canvas_day4 = Usage::from_counts(counts(3), dec("0.5"));
    let hours = hours_map(&*s, "2025-11");
    assert_eq!(hours[&key("acme", "2025-11-03T10:00:00Z", "m-canvas")], canvas_hour);
    assert_eq!(hours[&key("acme", "2025-11-04T23:00:00Z", "m-canvas")], canvas_day4);
    let text = hours[&key("acme", "2025-11-03T10:00:00Z", "m-text")];
    assert_eq!(text.counts()[7..], [0; 7], "a key without the dimensions reads 0");
    assert_rollups_match_hours(&*s, "2025-11");

    let p = s.period_usage(&tenant("acme"), "2025-11").unwrap();
    let total = sum([&canvas_hour, &canvas_day4, &text]);
    assert_eq!(p.total, total);
    assert_eq!(p.total.images, 108 + 208 + 308);
    assert_eq!(p.total.cross_region, 114 + 214 + 314);
    assert_eq!(p.by_resource[&Resource::new("m-canvas")], sum([&canvas_hour, &canvas_day4]));
    assert_eq!(p.by_day["2025-11-04"], canvas_day4);
    assert_eq!(s.tenants("2025-11").unwrap(), vec![(tenant("acme"), total)]);
}

/// A new store has no counters, checkpoints, totals or `max_hour`.
pub fn a_fresh_store_is_empty(factory: Factory) {
    let s = factory();
    assert!(s.hours("2025-11").unwrap().is_empty());
    assert!(s.tenants("2025-11").unwrap().is_empty());
    assert_eq!(s.period_usage(&tenant("acme"), "2025-11").unwrap(), empty_period("acme", "2025-11"));
    assert!(s.checkpoints().unwrap().is_empty());
    assert_eq!(s.max_hour().unwrap(), None);
    assert_eq!(s.totals().unwrap(), IngestTotals::default());
}

/// A batch's entries are summed per hourly key (every `Usage` field), and read back through
/// `hours`, `period_usage` (by day, by resource, total) and `tenants`.
pub fn apply_counts_every_field_and_rolls_up(factory: Factory) {
    let mut s = factory();
    let mut e1 = entry("acme", "2025-11-03T09:15:00Z", "m-haiku", "r1", 100, 20, "0.0000000875");
    e1.usage.cache_read = 1000;
    e1.usage.cache_write = 7;
    // Same hour, tenant and resource as e1: one hourly key.
    let e2 = entry("acme", "2025-11-03T09:59:59Z", "m-haiku", "r2", 50, 5, "0.0000000875");
    let mut e3 = entry("acme", "2025-11-03T10:00:00Z", "m-sonnet", "r3", 1, 2, "0.1");
    e3.usage.errors = 1;
    let mut e4 = entry("acme", "2025-11-04T00:30:00Z", "m-haiku", "r4", 0, 0, "0");
    e4.usage.no_usage = 1;
    let e5 = entry("acme", "2025-11-04T05:00:00Z", "m-sonnet", "r5", 10, 10, "0.2");
    let e6 = entry("globex", "2025-11-03T09:00:00Z", "m-haiku", "r6", 7, 8, "12345678.9");
    let e7 = entry("globex", "2025-11-03T09:05:00Z", "m-haiku", "r7", 1, 1, "0.0000000001");

    let applied = apply_ok(&mut *s, &batch(vec![e1, e2, e3, e4, e5, e6, e7], vec![]));
    assert_eq!(applied, Applied { counted: 7, duplicates: 0, keys_written: 5 });

    let acme_0309_haiku = Usage {
        input: 150,
        output: 25,
        cache_read: 1000,
        cache_write: 7,
        requests: 2,
        est_cost: dec("0.000000175"),
        ..Usage::default()
    };
    let acme_0310_sonnet =
        Usage { input: 1, output: 2, requests: 1, errors: 1, est_cost: dec("0.1"), ..Usage::default() };
    let acme_0400_haiku = Usage { requests: 1, no_usage: 1, ..Usage::default() };
    let acme_0405_sonnet = Usage { input: 10, output: 10, requests: 1, est_cost: dec("0.2"), ..Usage::default() };
    let globex_0309_haiku =
        Usage { input: 8, output: 9, requests: 2, est_cost: dec("12345678.9000000001"), ..Usage::default() };

    let want_hours: BTreeMap<CounterKey, Usage> = [
        (key("acme", "2025-11-03T09:00:00Z", "m-haiku"), acme_0309_haiku),
        (key("acme", "2025-11-03T10:00:00Z", "m-sonnet"), acme_0310_sonnet),
        (key("acme", "2025-11-04T00:00:00Z", "m-haiku"), acme_0400_haiku),
        (key("acme", "2025-11-04T05:00:00Z", "m-sonnet"), acme_0405_sonnet),
        (key("globex", "2025-11-03T09:00:00Z", "m-haiku"), globex_0309_haiku),
    ]
    .into_iter()
    .collect();
    assert_eq!(hours_map(&*s, "2025-11"), want_hours);

    let acme_total = Usage {
        input: 161,
        output: 37,
        cache_read: 1000,
        cache_write: 7,
        requests: 5,
        errors: 1,
        no_usage: 1,
        est_cost: dec("0.300000175"),
        ..Usage::default()
    };
    let want_acme = PeriodUsage {
        tenant: tenant("acme"),
        period: "2025-11".into(),
        total: acme_total,
        by_day: [
            ("2025-11-03".to_string(), sum([&acme_0309_haiku, &acme_0310_sonnet])),
            ("2025-11-04".to_string(), sum([&acme_0400_haiku, &acme_0405_sonnet])),
        ]
        .into_iter()
        .collect(),
        by_resource: [
            (Resource::new("m-haiku"), sum([&acme_0309_haiku, &acme_0400_haiku])),
            (Resource::new("m-sonnet"), sum([&acme_0310_sonnet, &acme_0405_sonnet])),
        ]
        .into_iter()
        .collect(),
    };
    assert_eq!(s.period_usage(&tenant("acme"), "2025-11").unwrap(), want_acme);
    let want_globex = PeriodUsage {
        tenant: tenant("globex"),
        period: "2025-11".into(),
        total: globex_0309_haiku,
        by_day: [("2025-11-03".to_string(), globex_0309_haiku)].into_iter().collect(),
        by_resource: [(Resource::new("m-haiku"), globex_0309_haiku)].into_iter().collect(),
    };
    assert_eq!(s.period_usage(&tenant("globex"), "2025-11").unwrap(), want_globex);
    assert_eq!(
        s.tenants("2025-11").unwrap(),
        vec![(tenant("acme"), acme_total), (tenant("globex"), globex_0309_haiku)]
    );
    assert_rollups_match_hours(&*s, "2025-11");

    // Nothing leaks into neighbouring months.
    for month in ["2025-10", "2025-12"] {
        assert!(s.hours(month).unwrap().is_empty(), "{month}");
        assert!(s.tenants(month).unwrap().is_empty(), "{month}");
        assert_eq!(s.period_usage(&tenant("acme"), month).unwrap(), empty_period("acme", month));
    }
}

/// Costs are summed as exact decimals at every level, whether the sum happens inside one batch
/// or across batches. (As binary floats, 0.1 × 10 is 0.9999999999999999 and
/// 12345678.9 + 0.0000000001 loses its last digit.)
pub fn costs_sum_exactly_as_decimals(factory: Factory) {
    let mut s = factory();
    // Ten batches of one 0.1 each: the sum is formed by the store across writes.
    for i in 0..10 {
        apply_ok(
            &mut *s,
            &batch(vec![entry("acme", "2025-11-05T08:00:00Z", "m", &format!("a{i}"), 1, 0, "0.1")], vec![]),
        );
    }
    // Eight entries of 0.0000000875 in one batch: the sum is formed within one write.
    let small: Vec<Entry> =
        (0..8).map(|i| entry("acme", "2025-11-05T08:00:00Z", "m", &format!("b{i}"), 0, 1, "0.0000000875")).collect();
    apply_ok(&mut *s, &batch(small, vec![]));
    // A large and a tiny cost in another hour of the same day.
    apply_ok(
        &mut *s,
        &batch(
            vec![
                entry("acme", "2025-11-05T09:00:00Z", "m", "c1", 0, 0, "12345678.9"),
                entry("acme", "2025-11-05T09:00:00Z", "m", "c2", 0, 0, "0.0000000001"),
            ],
            vec![],
        ),
    );
    apply_ok(&mut *s, &batch(vec![entry("acme", "2025-11-05T09:00:00Z", "m", "c3", 0, 0, "0.0000000002")], vec![]));

    let hours = hours_map(&*s, "2025-11");
    assert_eq!(hours[&key("acme", "2025-11-05T08:00:00Z", "m")].est_cost, dec("1.0000007"));
    assert_eq!(hours[&key("acme", "2025-11-05T09:00:00Z", "m")].est_cost, dec("12345678.9000000003"));
    let total = dec("12345679.9000007003");
    let p = s.period_usage(&tenant("acme"), "2025-11").unwrap();
    assert_eq!(p.total.est_cost, total);
    assert_eq!(p.by_day["2025-11-05"].est_cost, total);
    assert_eq!(p.by_resource[&Resource::new("m")].est_cost, total);
    assert_eq!(s.tenants("2025-11").unwrap()[0].1.est_cost, total);
    assert_eq!(p.total.requests, 21);
    assert_rollups_match_hours(&*s, "2025-11");
}

/// A second batch adds to the counters the first wrote — every `Usage` field — at hour, day
/// and month level.
pub fn counters_accumulate_across_batches(factory: Factory) {
    let mut s = factory();
    // Every field non-zero and distinct, so a field that is overwritten or dropped shows.
    let full = |n: u64, cost: &str| Usage {
        input: n,
        output: 2 * n,
        cache_read: 3 * n,
        cache_write: 4 * n,
        requests: 5 * n,
        errors: 6 * n,
        no_usage: 7 * n,
        est_cost: dec(cost),
        images: 8 * n,
        video_ms: 9 * n,
        audio_ms: 10 * n,
        search_units: 11 * n,
        cache_write_1h: 12 * n,
        latency_optimized: 13 * n,
        cross_region: 14 * n,
    };
    let e = |ts: &str, r: &str, u: Usage| Entry { usage: u, ..entry("acme", ts, "m", r, 0, 0, "0") };
    apply_ok(
        &mut *s,
        &batch(
            vec![e("2025-11-07T10:00:00Z", "r1", full(1, "0.001")), e("2025-11-08T10:00:00Z", "r2", full(10, "0.002"))],
            vec![],
        ),
    );
    apply_ok(
        &mut *s,
        &batch(
            vec![
                e("2025-11-07T10:30:00Z", "r3", full(100, "0.01")),
                e("2025-11-07T11:00:00Z", "r4", full(1000, "0.1")),
            ],
            vec![],
        ),
    );
    apply_ok(&mut *s, &batch(vec![e("2025-11-07T10:45:00Z", "r5", full(10000, "0.0000000875"))], vec![]));
    let hours = hours_map(&*s, "2025-11");
    assert_eq!(hours.len(), 3);
    assert_eq!(hours[&key("acme", "2025-11-07T10:00:00Z", "m")], full(10101, "0.0110000875"));
    assert_eq!(hours[&key("acme", "2025-11-07T11:00:00Z", "m")], full(1000, "0.1"));
    assert_eq!(hours[&key("acme", "2025-11-08T10:00:00Z", "m")], full(10, "0.002"));
    let p = s.period_usage(&tenant("acme"), "2025-11").unwrap();
    assert_eq!(p.total, full(11111, "0.1130000875"));
    assert_eq!(p.by_day["2025-11-07"], full(11101, "0.1110000875"));
    assert_eq!(p.by_day["2025-11-08"], full(10, "0.002"));
    assert_eq!(p.by_resource[&Resource::new("m")], full(11111, "0.1130000875"));
    assert_eq!(s.tenants("2025-11").unwrap(), vec![(tenant("acme"), full(11111, "0.1130000875"))]);
    assert_rollups_match_hours(&*s, "2025-11");
}

/// The same request id in the same hour, applied in a later batch, counts nothing and is
/// reported as a duplicate — even if the later copy claims another tenant or other usage.
pub fn a_request_counted_before_is_a_duplicate(factory: Factory) {
    let mut s = factory();
    let first = entry("acme", "2025-11-10T12:00:00Z", "m", "req-1", 10, 5, "0.5");
    let a1 = apply_ok(&mut *s, &batch(vec![first.clone()], vec![]));
    assert_eq!(a1, Applied { counted: 1, duplicates: 0, keys_written: 1 });
    let before = counters(&*s, &["2025-11"], &["acme", "globex"]);

    // The identical record, the same record seen at another second of the hour, and one whose
    // attribution changed: all the same (hour, request id).
    let again = entry("acme", "2025-11-10T12:59:00Z", "m", "req-1", 10, 5, "0.5");
    let other = entry("globex", "2025-11-10T12:00:00Z", "m2", "req-1", 99, 99, "9");
    let a2 = apply_ok(&mut *s, &batch(vec![first, again, other], vec![]));
    assert_eq!(a2, Applied { counted: 0, duplicates: 3, keys_written: 0 });
    assert_eq!(counters(&*s, &["2025-11"], &["acme", "globex"]), before, "a duplicate changed a counter");
    let t = s.totals().unwrap();
    assert_eq!((t.counted, t.duplicates, t.received), (1, 3, 4));
}

/// The same request id twice inside one batch counts once: the first occurrence.
pub fn a_request_twice_in_one_batch_counts_once(factory: Factory) {
    let mut s = factory();
    let a = apply_ok(
        &mut *s,
        &batch(
            vec![
                entry("acme", "2025-11-11T03:00:00Z", "m", "dup", 7, 3, "0.07"),
                entry("acme", "2025-11-11T03:10:00Z", "m", "dup", 7, 3, "0.07"),
                entry("acme", "2025-11-11T03:20:00Z", "m", "dup", 500, 500, "5"),
                entry("acme", "2025-11-11T03:30:00Z", "m", "single", 1, 1, "0.01"),
            ],
            vec![],
        ),
    );
    assert_eq!(a.counted, 2);
    assert_eq!(a.duplicates, 2);
    assert_eq!(a.keys_written, 1);
    let hours = hours_map(&*s, "2025-11");
    assert_eq!(hours.len(), 1);
    assert_eq!(hours[&key("acme", "2025-11-11T03:00:00Z", "m")], sum([&usage(7, 3, "0.07"), &usage(1, 1, "0.01")]));
    assert_rollups_match_hours(&*s, "2025-11");
    let t = s.totals().unwrap();
    assert_eq!((t.counted, t.duplicates), (2, 2));
}

/// `counted + duplicates == entries.len()` for a batch that mixes new records, records counted
/// by an earlier batch and repeats within the batch. Dedup is per (hour, request id): the same
/// id in another hour is another record.
pub fn applied_accounts_for_every_entry(factory: Factory) {
    let mut s = factory();
    let h1 = "2025-11-12T01:00:00Z";
    let h2 = "2025-11-12T02:00:00Z";
    apply_ok(
        &mut *s,
        &batch(vec![entry("acme", h1, "m", "r1", 1, 0, "0"), entry("acme", h1, "m", "r2", 1, 0, "0")], vec![]),
    );
    let entries = vec![
        entry("acme", h1, "m", "r1", 1, 0, "0"), // counted before
        entry("acme", h1, "m", "r3", 1, 0, "0"), // new
        entry("acme", h1, "m", "r3", 1, 0, "0"), // repeat in batch
        entry("acme", h2, "m", "r3", 1, 0, "0"), // same id, another hour: new
        entry("acme", h2, "m", "r4", 1, 0, "0"), // new
        entry("acme", h2, "m", "r4", 1, 0, "0"), // repeat in batch
        entry("acme", h2, "m", "r2", 1, 0, "0"), // r2 was counted in h1 only: new here
    ];
    let n = entries.len() as u64;
    let a = apply_ok(&mut *s, &batch(entries, vec![]));
    assert_eq!(a.counted + a.duplicates, n);
    assert_eq!(a, Applied { counted: 4, duplicates: 3, keys_written: 2 });
    let hours = hours_map(&*s, "2025-11");
    assert_eq!(hours[&key("acme", h1, "m")].requests, 3);
    assert_eq!(hours[&key("acme", h2, "m")].requests, 3);
    let t = s.totals().unwrap();
    assert_eq!((t.received, t.counted, t.duplicates), (9, 6, 3));
}

/// Dedup keys are compared as exact bytes: binary UUID keys that are not UTF-8 stay distinct,
/// the upper- and lower-case spellings of a UUID are one request, and hashed long ids work.
pub fn dedup_keys_are_compared_exactly(factory: Factory) {
    let mut s = factory();
    let h = "2025-11-13T13:00:00Z";
    // These two differ only in a first byte that is not valid UTF-8 (0xff vs 0xfe), and the
    // rest contains NUL bytes: a backend that stores keys as lossy text would merge them.
    let u1 = "ff000000-0000-0000-0000-000000000001";
    let u2 = "fe000000-0000-0000-0000-000000000001";
    let long_a = format!("{}a", "x".repeat(100));
    let long_b = format!("{}b", "x".repeat(100));
    let a = apply_ok(
        &mut *s,
        &batch(
            vec![
                entry("acme", h, "m", u1, 1, 0, "0"),
                entry("acme", h, "m", u2, 1, 0, "0"),
                entry("acme", h, "m", "7ee514f3-9eff-467c-af75-8fd564ce58e5", 1, 0, "0"),
                entry("acme", h, "m", &long_a, 1, 0, "0"),
                entry("acme", h, "m", &long_b, 1, 0, "0"),
                entry("acme", h, "m", "", 1, 0, "0"),
            ],
            vec![],
        ),
    );
    assert_eq!(a.counted, 6, "distinct request ids were merged");
    let a = apply_ok(
        &mut *s,
        &batch(
            vec![
                entry("acme", h, "m", &u1.to_uppercase(), 1, 0, "0"),
                entry("acme", h, "m", "7EE514F3-9EFF-467C-AF75-8FD564CE58E5", 1, 0, "0"),
                entry("acme", h, "m", &long_b, 1, 0, "0"),
                entry("acme", h, "m", "", 1, 0, "0"),
                entry("acme", h, "m", "fd000000-0000-0000-0000-000000000001", 1, 0, "0"),
            ],
            vec![],
        ),
    );
    assert_eq!(a, Applied { counted: 1, duplicates: 4, keys_written: 1 });
    assert_eq!(hours_map(&*s, "2025-11")[&key("acme", h, "m")].requests, 7);
}

fn replay_entries() -> Vec<Entry> {
    vec![
        entry("acme", "2025-11-14T08:00:00Z", "m-haiku", "r1", 100, 10, "0.0000000875"),
        entry("acme", "2025-11-14T08:30:00Z", "m-haiku", "r2", 200, 20, "0.0000000875"),
        entry("acme", "2025-11-15T09:00:00Z", "m-sonnet", "r3", 300, 30, "0.003"),
        entry("globex", "2025-11-14T08:00:00Z", "m-haiku", "r4", 400, 40, "0.004"),
        entry("globex", "2025-11-30T23:00:00Z", "m-haiku", "r5", 500, 50, "0.005"),
    ]
}

/// (a) Replaying the identical entries with the checkpoint's current position as `expected`
/// is accepted, but dedup makes it a no-op on every counter.
pub fn replay_with_current_checkpoint_changes_no_counter(factory: Factory) {
    let mut s = factory();
    let src = "s3://logs/AWSLogs/111122223333/BedrockModelInvocationLogs/us-east-1/2025/11/14/08/a.json.gz";
    let entries = replay_entries();
    let n = entries.len() as u64;
    let a = apply_ok(&mut *s, &batch(entries.clone(), vec![cp(src, None, "line:5")]));
    assert_eq!(a, Applied { counted: n, duplicates: 0, keys_written: 4 });
    let months = ["2025-11", "2025-12"];
    let tenants = ["acme", "globex"];
    let before = counters(&*s, &months, &tenants);
    let max_before = s.max_hour().unwrap();
    assert!(!before.hours[0].1.is_empty());

    let a = apply_ok(&mut *s, &batch(entries.clone(), vec![cp(src, Some("line:5"), "line:5")]));
    assert_eq!(a, Applied { counted: 0, duplicates: n, keys_written: 0 });
    // Once more, moving the position on.
    let a = apply_ok(&mut *s, &batch(entries, vec![cp(src, Some("line:5"), "line:6")]));
    assert_eq!(a, Applied { counted: 0, duplicates: n, keys_written: 0 });

    assert_eq!(counters(&*s, &months, &tenants), before, "a replay changed a counter");
    assert_eq!(s.max_hour().unwrap(), max_before);
    assert_eq!(s.checkpoints().unwrap(), HashMap::from([(src.to_string(), "line:6".to_string())]));
    let t = s.totals().unwrap();
    assert_eq!((t.received, t.counted, t.duplicates), (3 * n, n, 2 * n));
}

/// (b) Replaying the identical batch — same stale `expected` — is refused with
/// `ConditionFailed` and writes nothing at all: no counter, total, skip count, checkpoint,
/// prune, or dedup entry.
pub fn replay_with_stale_checkpoint_is_refused_and_writes_nothing(factory: Factory) {
    let mut s = factory();
    let src = "file:///var/log/bedrock/2025-11-14.jsonl";
    let entries = replay_entries();
    let n = entries.len() as u64;
    let mut first = batch(entries.clone(), vec![cp(src, None, "offset:4096")]);
    first.received = n + 1;
    first.skipped = BTreeMap::from([(Reason::MalformedJson, 1)]);
    apply_ok(&mut *s, &first);
    let months = ["2025-11", "2025-12"];
    let tenants = ["acme", "globex", "initech"];
    let before = snapshot(&*s, &months, &tenants);

    // The identical batch again: its `expected` (None) is stale now.
    apply_refused(&mut *s, &first, src);
    // A stale replay that also carries new records, skips and a prune of the whole dedup index.
    let mut stale = first.clone();
    stale.entries.push(entry("initech", "2025-12-01T00:00:00Z", "m-haiku", "new", 1, 1, "1"));
    stale.received += 1;
    stale.prune_before = Some(hour("2026-01-01T00:00:00Z"));
    apply_refused(&mut *s, &stale, src);
    // One look after both: a refusal never takes back what an earlier one wrote, so whatever
    // either wrote shows here (and on DynamoDB each look is dozens of calls).
    assert_eq!(snapshot(&*s, &months, &tenants), before, "a refused replay wrote something");

    // The prune was not written either: the dedup index still knows every entry.
    let a = apply_ok(&mut *s, &batch(entries, vec![cp(src, Some("offset:4096"), "offset:8192")]));
    assert_eq!(a, Applied { counted: 0, duplicates: n, keys_written: 0 });
    assert_eq!(counters(&*s, &months, &tenants), before.counters);
}

/// A batch whose checkpoint condition fails writes nothing: not its counters, totals, skips,
/// `max_hour`, other checkpoints in the same batch, nor its dedup entries (which is proven by
/// applying the same entries with a correct checkpoint and seeing them all counted).
pub fn a_failed_condition_writes_nothing(factory: Factory) {
    let mut s = factory();
    let setup = batch(
        vec![entry("acme", "2025-11-16T10:00:00Z", "m", "x1", 5, 5, "0.05")],
        vec![cp("source-a", None, "a1"), cp("source-b", None, "b1")],
    );
    apply_ok(&mut *s, &setup);
    let months = ["2025-11", "2025-12"];
    let tenants = ["acme", "globex"];
    let before = snapshot(&*s, &months, &tenants);

    let fresh = vec![
        entry("globex", "2025-12-02T07:00:00Z", "m", "y1", 11, 1, "0.11"),
        entry("globex", "2025-12-02T07:00:00Z", "m", "y2", 22, 2, "0.22"),
        entry("acme", "2025-11-16T10:00:00Z", "m", "y3", 33, 3, "0.33"),
        entry("acme", "2025-12-03T23:00:00Z", "m2", "y4", 44, 4, "0.44"),
    ];
    let n = fresh.len() as u64;
    let with = |checkpoints: Vec<CheckpointUpdate>| {
        let mut b = batch(fresh.clone(), checkpoints);
        b.received = n + 2;
        b.skipped = BTreeMap::from([(Reason::NonJson, 1), (Reason::BadTimestamp, 1)]);
        b
    };
    // The failing condition last, after one that holds...
    apply_refused(&mut *s, &with(vec![cp("source-a", Some("a1"), "a2"), cp("source-b", Some("b0"), "b2")]), "source-b");
    // ...and first.
    apply_refused(&mut *s, &with(vec![cp("source-b", Some("b0"), "b2"), cp("source-a", Some("a1"), "a2")]), "source-b");
    // A new source claimed as already started (refused for source-c, as long as the refusals
    // before left source-a where it was).
    apply_refused(&mut *s, &with(vec![cp("source-a", Some("a1"), "a2"), cp("source-c", Some("c0"), "c1")]), "source-c");
    // One look after all three: a refusal never takes back what an earlier one wrote, so
    // whatever any of them wrote shows here (and on DynamoDB each look is dozens of calls).
    assert_eq!(snapshot(&*s, &months, &tenants), before, "a refused batch wrote something");

    // No dedup entry of the refused batches survived: with the right checkpoints all count.
    let a = apply_ok(&mut *s, &with(vec![cp("source-a", Some("a1"), "a2"), cp("source-b", Some("b1"), "b2")]));
    assert_eq!(a, Applied { counted: n, duplicates: 0, keys_written: 3 });
    let t = s.totals().unwrap();
    assert_eq!((t.received, t.counted, t.duplicates), (1 + n + 2, 1 + n, 0));
    assert_eq!(t.skipped, BTreeMap::from([("non_json".to_string(), 1), ("bad_timestamp".to_string(), 1)]));
    assert_eq!(s.max_hour().unwrap(), Some(hour("2025-12-03T23:00:00Z")));
    assert_eq!(
        s.checkpoints().unwrap(),
        HashMap::from([("source-a".to_string(), "a2".to_string()), ("source-b".to_string(), "b2".to_string())])
    );
    let dec_hours = hours_map(&*s, "2025-12");
    assert_eq!(
        dec_hours[&key("globex", "2025-12-02T07:00:00Z", "m")],
        sum([&usage(11, 1, "0.11"), &usage(22, 2, "0.22")])
    );
    assert_eq!(
        hours_map(&*s, "2025-11")[&key("acme", "2025-11-16T10:00:00Z", "m")],
        sum([&usage(5, 5, "0.05"), &usage(33, 3, "0.33")])
    );
    assert_rollups_match_hours(&*s, "2025-11");
    assert_rollups_match_hours(&*s, "2025-12");
}

/// `checkpoints()` returns exactly what was written; one batch can move several sources; a
/// source not in a batch keeps its position.
pub fn checkpoints_round_trip(factory: Factory) {
    let mut s = factory();
    let sources = [
        ("s3://bucket/AWSLogs/1/2025/11/17/00/file one.json.gz", "{\"object\":\"etag-1\",\"line\":42}"),
        ("cloudwatch:/aws/bedrock/invocations|stream-ü", "49650283462986112300293856364893001057"),
        ("file:///tmp/x.jsonl", ""),
    ];
    let a = apply_ok(&mut *s, &batch(vec![], sources.iter().map(|(k, p)| cp(k, None, p)).collect()));
    assert_eq!(a, Applied::default());
    let want: HashMap<String, String> = sources.iter().map(|(k, p)| (k.to_string(), p.to_string())).collect();
    assert_eq!(s.checkpoints().unwrap(), want);

    // Move two of three, with entries.
    apply_ok(
        &mut *s,
        &batch(
            vec![entry("acme", "2025-11-17T00:00:00Z", "m", "r", 1, 1, "0")],
            vec![cp(sources[0].0, Some(sources[0].1), "done"), cp(sources[2].0, Some(""), "offset:10")],
        ),
    );
    let want: HashMap<String, String> = HashMap::from([
        (sources[0].0.to_string(), "done".to_string()),
        (sources[1].0.to_string(), sources[1].1.to_string()),
        (sources[2].0.to_string(), "offset:10".to_string()),
    ]);
    assert_eq!(s.checkpoints().unwrap(), want);
}

/// The first write of a source must expect `None`; after that, `None` is stale.
pub fn the_first_checkpoint_write_requires_none(factory: Factory) {
    let mut s = factory();
    let e = || vec![entry("acme", "2025-11-18T05:00:00Z", "m", "r1", 3, 4, "0.5")];
    apply_refused(&mut *s, &batch(e(), vec![cp("src", Some("p0"), "p1")]), "src");
    assert!(s.checkpoints().unwrap().is_empty());
    assert!(s.hours("2025-11").unwrap().is_empty(), "a refused batch wrote counters");
    assert_eq!(s.totals().unwrap(), IngestTotals::default());
    assert_eq!(s.max_hour().unwrap(), None);

    let a = apply_ok(&mut *s, &batch(e(), vec![cp("src", None, "p1")]));
    assert_eq!(a.counted, 1);
    apply_refused(&mut *s, &batch(vec![], vec![cp("src", None, "p2")]), "src");
    assert_eq!(s.checkpoints().unwrap(), HashMap::from([("src".to_string(), "p1".to_string())]));
}

/// `totals()` accumulates received, counted, duplicates and skips by reason over batches.
pub fn totals_accumulate_across_batches(factory: Factory) {
    let mut s = factory();
    let h = "2025-11-19T19:00:00Z";
    let mut b1 = batch(
        vec![
            entry("acme", h, "m", "r1", 1, 0, "0"),
            entry("acme", h, "m", "r2", 1, 0, "0"),
            entry("acme", h, "m", "r2", 1, 0, "0"),
        ],
        vec![],
    );
    b1.received = 6;
    b1.skipped = BTreeMap::from([(Reason::NonJson, 1), (Reason::BadTimestamp, 1), (Reason::PermissionCheck, 1)]);
    apply_ok(&mut *s, &b1);
    let t = s.totals().unwrap();
    assert_eq!((t.received, t.counted, t.duplicates), (6, 2, 1));
    assert_eq!(
        t.skipped,
        BTreeMap::from([
            (Reason::NonJson.as_str().to_string(), 1),
            (Reason::BadTimestamp.as_str().to_string(), 1),
            (Reason::PermissionCheck.as_str().to_string(), 1),
        ])
    );

    let mut b2 = batch(vec![entry("acme", h, "m", "r1", 1, 0, "0"), entry("acme", h, "m", "r3", 1, 0, "0")], vec![]);
    b2.received = 7;
    b2.skipped = BTreeMap::from([(Reason::NonJson, 4), (Reason::OutsideDedupWindow, 1)]);
    apply_ok(&mut *s, &b2);
    let t = s.totals().unwrap();
    assert_eq!(
        t,
        IngestTotals {
            received: 13,
            counted: 3,
            duplicates: 2,
            skipped: BTreeMap::from([
                ("non_json".to_string(), 5),
                ("bad_timestamp".to_string(), 1),
                ("permission_check".to_string(), 1),
                ("outside_dedup_window".to_string(), 1),
            ]),
        }
    );
}

/// `max_hour()` is the newest hour of any applied entry; an older batch does not lower it.
pub fn max_hour_is_the_newest_hour_applied(factory: Factory) {
    let mut s = factory();
    assert_eq!(s.max_hour().unwrap(), None);
    apply_ok(
        &mut *s,
        &batch(
            vec![
                entry("acme", "2025-11-20T10:00:00Z", "m", "r1", 1, 0, "0"),
                entry("globex", "2025-11-20T12:45:00Z", "m", "r2", 1, 0, "0"),
                entry("acme", "2025-11-20T11:00:00Z", "m", "r3", 1, 0, "0"),
            ],
            vec![],
        ),
    );
    assert_eq!(s.max_hour().unwrap(), Some(hour("2025-11-20T12:00:00Z")));
    apply_ok(&mut *s, &batch(vec![entry("acme", "2025-11-01T00:00:00Z", "m", "r4", 1, 0, "0")], vec![]));
    assert_eq!(s.max_hour().unwrap(), Some(hour("2025-11-20T12:00:00Z")), "an older batch lowered max_hour");
    apply_ok(&mut *s, &batch(vec![], vec![]));
    assert_eq!(s.max_hour().unwrap(), Some(hour("2025-11-20T12:00:00Z")), "an empty batch changed max_hour");
    apply_ok(&mut *s, &batch(vec![entry("acme", "2025-12-01T13:30:00Z", "m", "r5", 1, 0, "0")], vec![]));
    assert_eq!(s.max_hour().unwrap(), Some(hour("2025-12-01T13:00:00Z")));
}

/// `prune_before` forgets dedup entries of hours strictly before it: a record of a pruned hour
/// applied again is counted again (that is the dedup window), while records of the boundary
/// hour and later stay deduplicated. Counters are never pruned.
pub fn prune_forgets_dedup_entries_before_the_window(factory: Factory) {
    let mut s = factory();
    let h1 = "2025-11-21T01:00:00Z";
    let h2 = "2025-11-21T02:00:00Z";
    let h3 = "2025-11-21T03:00:00Z";
    let e = |h: &str, r: &str| entry("acme", h, "m", r, 1, 0, "0.001");
    apply_ok(&mut *s, &batch(vec![e(h1, "r1"), e(h2, "r2"), e(h3, "r3")], vec![]));

    let mut prune = batch(vec![], vec![]);
    prune.prune_before = Some(hour(h2));
    assert_eq!(apply_ok(&mut *s, &prune), Applied::default());
    let hours = hours_map(&*s, "2025-11");
    assert_eq!(hours.len(), 3, "pruning removed counters");

    let a = apply_ok(&mut *s, &batch(vec![e(h1, "r1"), e(h2, "r2"), e(h3, "r3")], vec![]));
    assert_eq!(a, Applied { counted: 1, duplicates: 2, keys_written: 1 }, "only h1 (before the window) is forgotten");
    let hours = hours_map(&*s, "2025-11");
    assert_eq!(hours[&key("acme", h1, "m")], sum([&usage(1, 0, "0.001"), &usage(1, 0, "0.001")]));
    assert_eq!(hours[&key("acme", h2, "m")], usage(1, 0, "0.001"));
    assert_eq!(hours[&key("acme", h3, "m")], usage(1, 0, "0.001"));

    // A prune carried by a batch with entries keeps the batch's own (in-window) entries.
    let mut b = batch(vec![e(h3, "r4")], vec![]);
    b.prune_before = Some(hour(h3));
    assert_eq!(apply_ok(&mut *s, &b).counted, 1);
    let a = apply_ok(&mut *s, &batch(vec![e(h2, "r2"), e(h3, "r3"), e(h3, "r4")], vec![]));
    assert_eq!(a, Applied { counted: 1, duplicates: 2, keys_written: 1 }, "h2 is forgotten now, h3 is not");
    assert_rollups_match_hours(&*s, "2025-11");
}

/// Reads for one tenant never include another's counters, including tenants whose ids are
/// prefixes of each other, differ only in case, or contain SQL `LIKE` wildcards.
pub fn reads_are_isolated_by_tenant(factory: Factory) {
    let mut s = factory();
    let h = "2025-11-22T22:00:00Z";
    let tenants = [("acme", 1u64), ("acme-corp", 10), ("acme%", 100), ("ACME", 1000), ("acm_", 10000)];
    let entries: Vec<Entry> = tenants
        .iter()
        .flat_map(|&(t, n)| {
            [
                entry(t, h, "m", &format!("{t}-1"), n, n, "0.0000000875"),
                entry(t, "2025-11-23T00:00:00Z", "m2", &format!("{t}-2"), n, 0, "0.01"),
            ]
        })
        .collect();
    apply_ok(&mut *s, &batch(entries, vec![]));

    let mut want_list = vec![];
    for &(t, n) in &tenants {
        let u1 = usage(n, n, "0.0000000875");
        let u2 = usage(n, 0, "0.01");
        let want = PeriodUsage {
            tenant: tenant(t),
            period: "2025-11".into(),
            total: sum([&u1, &u2]),
            by_day: [("2025-11-22".to_string(), u1), ("2025-11-23".to_string(), u2)].into_iter().collect(),
            by_resource: [(Resource::new("m"), u1), (Resource::new("m2"), u2)].into_iter().collect(),
        };
        assert_eq!(s.period_usage(&tenant(t), "2025-11").unwrap(), want, "period_usage({t}) mixed in another tenant");
        want_list.push((tenant(t), sum([&u1, &u2])));
    }
    want_list.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(s.tenants("2025-11").unwrap(), want_list, "tenants() is not one row per tenant, sorted");
    for t in ["acm", "acme-", "Acme", "acme-corp-x", "_unattributed"] {
        assert_eq!(s.period_usage(&tenant(t), "2025-11").unwrap(), empty_period(t, "2025-11"), "{t}");
    }
    let hours = hours_map(&*s, "2025-11");
    assert_eq!(hours.len(), 2 * tenants.len());
    assert_rollups_match_hours(&*s, "2025-11");
}

/// Hours, days and months are UTC buckets: the last hour of a month and the first of the next
/// land in different months and days (also across a year end and a leap day).
pub fn month_and_day_boundaries_are_utc(factory: Factory) {
    let mut s = factory();
    let e = |ts: &str, r: &str, n: u64| entry("acme", ts, "m", r, n, 0, "0.0000000875");
    apply_ok(
        &mut *s,
        &batch(
            vec![
                e("2025-11-30T23:00:00Z", "r1", 1),
                e("2025-11-30T23:59:59Z", "r2", 2),
                e("2025-12-01T00:00:00Z", "r3", 4),
                e("2025-12-01T00:59:59.999Z", "r4", 8),
                e("2025-12-31T23:30:00Z", "r5", 16),
                e("2026-01-01T00:00:00Z", "r6", 32),
                e("2024-02-29T23:00:00Z", "r7", 64),
                e("2024-03-01T00:00:00Z", "r8", 128),
                // 2025-12-01T01:30+02:00 is 2025-11-30T23:30Z.
                e("2025-12-01T01:30:00+02:00", "r9", 256),
            ],
            vec![],
        ),
    );
    let two = |input: u64| Usage { input, requests: 2, est_cost: dec("0.000000175"), ..Usage::default() };
    let one = |input: u64| usage(input, 0, "0.0000000875");
    let three = |input: u64| Usage { input, requests: 3, est_cost: dec("0.0000002625"), ..Usage::default() };
    let cases: [(&str, Vec<(&str, Usage)>); 5] = [
        ("2025-11", vec![("2025-11-30T23:00:00Z", three(1 + 2 + 256))]),
        ("2025-12", vec![("2025-12-01T00:00:00Z", two(4 + 8)), ("2025-12-31T23:00:00Z", one(16))]),
        ("2026-01", vec![("2026-01-01T00:00:00Z", one(32))]),
        ("2024-02", vec![("2024-02-29T23:00:00Z", one(64))]),
        ("2024-03", vec![("2024-03-01T00:00:00Z", one(128))]),
    ];
    for (month, want) in &cases {
        let want_hours: BTreeMap<CounterKey, Usage> = want.iter().map(|(h, u)| (key("acme", h, "m"), *u)).collect();
        assert_eq!(hours_map(&*s, month), want_hours, "hours({month})");
        let p = s.period_usage(&tenant("acme"), month).unwrap();
        let want_days: BTreeMap<String, Usage> = want.iter().map(|(h, u)| (h[..10].to_string(), *u)).collect();
        assert_eq!(p.by_day, want_days, "by_day of {month}");
        assert_eq!(p.total, sum(want.iter().map(|(_, u)| u)), "total of {month}");
        assert_eq!(p.period, *month);
        assert_rollups_match_hours(&*s, month);
    }
    for month in ["2025-10", "2024-01", "2024-04", "2026-02"] {
        assert!(s.hours(month).unwrap().is_empty(), "{month}");
        assert_eq!(s.period_usage(&tenant("acme"), month).unwrap(), empty_period("acme", month));
    }
}

/// A batch with no entries but a checkpoint (a file of only skipped records, or a caught-up
/// source) moves the checkpoint and the totals, and nothing else.
pub fn an_empty_batch_moves_only_the_checkpoint(factory: Factory) {
    let mut s = factory();
    let mut b = batch(vec![], vec![cp("s3://b/marker", None, "eof")]);
    b.received = 2;
    b.skipped = BTreeMap::from([(Reason::PermissionCheck, 1), (Reason::MarkerObject, 1)]);
    assert_eq!(apply_ok(&mut *s, &b), Applied::default());
    assert_eq!(s.checkpoints().unwrap(), HashMap::from([("s3://b/marker".to_string(), "eof".to_string())]));
    assert!(s.hours("2025-11").unwrap().is_empty());
    assert!(s.tenants("2025-11").unwrap().is_empty());
    assert_eq!(s.max_hour().unwrap(), None);
    let t = s.totals().unwrap();
    assert_eq!((t.received, t.counted, t.duplicates), (2, 0, 0));
    assert_eq!(t.skipped.values().sum::<u64>(), 2);

    // And on a store that has counters, an empty batch changes none of them.
    apply_ok(&mut *s, &batch(vec![entry("acme", "2025-11-24T04:00:00Z", "m", "r", 9, 9, "0.9")], vec![]));
    let before = counters(&*s, &["2025-11"], &["acme"]);
    assert_eq!(apply_ok(&mut *s, &batch(vec![], vec![cp("s3://b/marker", Some("eof"), "eof2")])), Applied::default());
    assert_eq!(counters(&*s, &["2025-11"], &["acme"]), before);
    assert_eq!(s.checkpoints().unwrap()["s3://b/marker"], "eof2");
}
