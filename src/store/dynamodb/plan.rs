//! The batch planner: from a [`Batch`] and the dedup buckets and `META` as read, what the batch
//! writes — which entries are duplicates, the new contents of each bucket it adds keys to, one
//! counter delta per distinct hourly, daily and monthly key and tenant-month, the totals, and
//! whether `max_hour` and the dedup horizon go up. Then how those writes are laid out: one
//! transaction when they fit DynamoDB's limits (100 actions, 4 MB), else an [`Intent`] of
//! chunks that each fit one. Plain data only: no client, no clock.

use std::collections::{BTreeMap, HashSet};

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::schema::{bucket_pk, counter_pk, day_sk, dims_of, dir_pk, dir_sk, hour_sk, keys_to_hex, month_sk, nums_of};
use crate::ids::{month_of, EpochSeconds, TenantId};
use crate::store::{Applied, Batch, CheckpointUpdate};
use crate::usage::{rollup, Granularity, Usage, Via};

/// Actions per transaction DynamoDB allows.
const TXN_MAX_ACTIONS: usize = 100;
/// Actions per transaction of a split batch (one of DynamoDB's 100 is kept for the intent header).
pub(super) const TXN_ACTIONS: usize = TXN_MAX_ACTIONS - 1;
/// Bytes per transaction (DynamoDB allows 4 MB).
pub(super) const TXN_BYTES: usize = 3_500_000;
/// Bytes a counter write is reckoned at when deciding whether a batch fits one transaction:
/// keys, tenant and resource, and up to 15 numbers (the seven token and request counts, the
/// cost and the seven other dimensions, each a name and up to 21 digits).
const COUNTER_BYTES: usize = 700;

// ---- the plan's parts (also an intent's JSON) -------------------------------------------------

/// One counter item's delta.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct CounterOp {
    pub pk: String,
    pub sk: String,
    pub tenant: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hour: Option<i64>,
    /// An hourly counter's `via` when it is not `pool` (absent on older intents: `pool`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<u32>,
    pub nums: [u64; 7],
    /// The other dimensions' counts, in `DIMENSION_ATTRS` order (absent on older intents and
    /// when all 0).
    #[serde(default, skip_serializing_if = "all_zero")]
    pub dims: [u64; 7],
    #[serde(with = "rust_decimal::serde::str")]
    pub cost: Decimal,
}

fn all_zero(counts: &[u64; 7]) -> bool {
    counts.iter().all(|&c| c == 0)
}

impl CounterOp {
    fn new(pk: String, sk: String, tenant: &TenantId, u: &Usage) -> CounterOp {
        CounterOp {
            pk,
            sk,
            tenant: tenant.as_str().to_string(),
            resource: None,
            hour: None,
            via: None,
            shard: None,
            nums: nums_of(u),
            dims: dims_of(u),
            cost: u.est_cost,
        }
    }
}

/// The keys an intent added to one bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct BucketAdd {
    pub pk: String,
    /// 32 hex digits per key.
    pub keys: String,
}

/// A checkpoint move.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct CpMove {
    pub source: String,
    pub expected: Option<String>,
    pub position: String,
}

impl From<&CheckpointUpdate> for CpMove {
    fn from(c: &CheckpointUpdate) -> Self {
        CpMove { source: c.source.clone(), expected: c.expected.clone(), position: c.position.clone() }
    }
}

/// What a batch adds to the lifetime totals.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct TotalsOp {
    pub received: u64,
    pub counted: u64,
    pub duplicates: u64,
    pub skipped: BTreeMap<String, u64>,
}

/// A split batch's plan: enough to undo it before its commit point and redo it after.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Intent {
    pub checkpoints: Vec<CpMove>,
    pub bucket_chunks: Vec<Vec<BucketAdd>>,
    pub counter_chunks: Vec<Vec<CounterOp>>,
    pub totals: TotalsOp,
    #[serde(default)]
    pub max_hour: Option<i64>,
    #[serde(default)]
    pub prune_before: Option<i64>,
}

impl Intent {
    /// Claim steps: one per [`TXN_ACTIONS`] checkpoints.
    pub fn claim_chunks(&self) -> usize {
        self.checkpoints.len().div_ceil(TXN_ACTIONS)
    }

    /// Steps before the commit point: claims, then bucket chunks, then counter chunks.
    pub fn steps(&self) -> usize {
        self.claim_chunks() + self.bucket_chunks.len() + self.counter_chunks.len()
    }

    /// What step `s` (below [`Intent::steps`]) writes.
    pub fn step(&self, s: usize) -> Step<'_> {
        let claims = self.claim_chunks();
        if s < claims {
            let from = s * TXN_ACTIONS;
            Step::Claim(&self.checkpoints[from..(from + TXN_ACTIONS).min(self.checkpoints.len())])
        } else if s < claims + self.bucket_chunks.len() {
            Step::Buckets(s - claims)
        } else {
            Step::Counters(&self.counter_chunks[s - claims - self.bucket_chunks.len()])
        }
    }

    /// Finish chunks: checkpoint moves, the first one also carrying the totals.
    pub fn finish_chunks(&self) -> Vec<&[CpMove]> {
        let first = self.checkpoints.len().min(TXN_ACTIONS - 1);
        let mut out = vec![&self.checkpoints[..first]];
        out.extend(self.checkpoints[first..].chunks(TXN_ACTIONS));
        out
    }
}

/// One step of an intent before its commit point.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Step<'a> {
    /// Claims these checkpoints.
    Claim(&'a [CpMove]),
    /// Writes bucket chunk `usize` (an index into `bucket_chunks`).
    Buckets(usize),
    /// Adds these counter deltas.
    Counters(&'a [CounterOp]),
}

// ---- the planner's input ----------------------------------------------------------------------

/// The dedup buckets a batch touches: each entry's bucket, and each bucket's hour.
#[derive(Debug, Default)]
pub(super) struct BucketIndex {
    /// The bucket of `batch.entries[i]`.
    pub of_entry: Vec<String>,
    /// Bucket → its hour; the buckets to read, in key order.
    pub hours: BTreeMap<String, EpochSeconds>,
}

/// The buckets a batch's entries fall in.
pub(super) fn buckets_of(batch: &Batch) -> BucketIndex {
    let mut index = BucketIndex { of_entry: Vec::with_capacity(batch.entries.len()), hours: BTreeMap::new() };
    for e in &batch.entries {
        let pk = bucket_pk(e.key.hour, e.dedup.as_u128());
        index.hours.insert(pk.clone(), e.key.hour);
        index.of_entry.push(pk);
    }
    index
}

/// A dedup bucket as read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Bucket {
    /// Sorted.
    pub keys: Vec<u128>,
    /// 0: the item does not exist.
    pub version: u64,
}

/// What the table held when the batch was read.
#[derive(Debug, Default)]
pub(super) struct Stored {
    /// The buckets of [`BucketIndex::hours`] that exist; one missing here does not exist yet.
    pub buckets: BTreeMap<String, Bucket>,
    /// `max_hour` in `META`.
    pub max_hour: Option<i64>,
    /// The dedup horizon (`prune_before` in `META`): buckets of earlier hours are forgotten.
    pub horizon: Option<i64>,
}

// ---- the plan ---------------------------------------------------------------------------------

/// A bucket write of this batch: the whole bucket, conditioned on the version read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct BucketWrite {
    pub pk: String,
    pub hour: EpochSeconds,
    pub old_version: u64,
    /// Sorted: the keys read plus `added`.
    pub keys: Vec<u128>,
    /// Sorted: the keys this batch adds.
    pub added: Vec<u128>,
}

impl BucketWrite {
    /// About how big the item is.
    pub fn bytes(&self) -> usize {
        self.keys.len() * 16 + 80
    }
}

/// Everything one batch writes.
#[derive(Debug)]
pub(super) struct Plan {
    pub moves: Vec<CpMove>,
    /// In bucket key order.
    pub writes: Vec<BucketWrite>,
    /// Hours, then days, then months (each in key order), then tenant-months.
    pub ops: Vec<CounterOp>,
    pub totals: TotalsOp,
    pub applied: Applied,
    /// The new `max_hour`, when the batch raises it.
    pub max_hour: Option<i64>,
    /// The new dedup horizon, when the batch raises it.
    pub prune_before: Option<i64>,
}

/// Plans `batch` on counter shard `shard`: an entry is a duplicate when its key is in its bucket
/// (unless the bucket's hour is before the horizon) or earlier in the batch.
pub(super) fn plan(batch: &Batch, shard: u32, index: &BucketIndex, stored: &Stored) -> Plan {
    // Dedup: decide in batch order against the buckets as read.
    let absent = Bucket::default();
    let mut known: BTreeMap<&str, (EpochSeconds, u64, &[u128])> = BTreeMap::new();
    for (pk, &hour) in &index.hours {
        let b = stored.buckets.get(pk).unwrap_or(&absent);
        // A bucket of an hour before the dedup horizon is forgotten (TTL deletes it later).
        let keys: &[u128] = if stored.horizon.is_some_and(|h| hour < h) { &[] } else { &b.keys };
        known.insert(pk, (hour, b.version, keys));
    }
    let mut duplicates = Vec::new();
    let mut added: BTreeMap<&str, Vec<u128>> = BTreeMap::new();
    let mut in_batch: HashSet<(&str, u128)> = HashSet::with_capacity(batch.entries.len());
    for (i, e) in batch.entries.iter().enumerate() {
        let k = e.dedup.as_u128();
        let pk = index.of_entry[i].as_str();
        if known[pk].2.binary_search(&k).is_ok() || !in_batch.insert((pk, k)) {
            duplicates.push(i);
        } else {
            added.entry(pk).or_default().push(k);
        }
    }
    let mut writes: Vec<BucketWrite> = Vec::with_capacity(added.len());
    for (pk, mut new) in added {
        let (hour, version, old) = known[pk];
        new.sort_unstable();
        let mut keys = Vec::with_capacity(old.len() + new.len());
        keys.extend_from_slice(old);
        keys.extend_from_slice(&new);
        keys.sort_unstable();
        writes.push(BucketWrite { pk: pk.to_string(), hour, old_version: version, keys, added: new });
    }

    // Counter deltas: hours, their day and month roll-ups, and each tenant's month total.
    let hours = batch.counted_sums(&duplicates);
    let mut ops = Vec::new();
    for (k, u) in &hours {
        let month = month_of(k.hour);
        ops.push(CounterOp {
            resource: Some(k.resource.as_str().to_string()),
            hour: Some(k.hour),
            via: (k.via != Via::Pool).then(|| k.via.as_str().to_string()),
            ..CounterOp::new(
                counter_pk(&month, shard, k.tenant.as_str()),
                hour_sk(k.hour, &k.resource, k.via),
                &k.tenant,
                u,
            )
        });
    }
    let mut tenant_months: BTreeMap<(TenantId, String), Usage> = BTreeMap::new();
    for ((tenant, day, resource), u) in rollup(&hours, Granularity::Day) {
        ops.push(CounterOp {
            resource: Some(resource.as_str().to_string()),
            ..CounterOp::new(counter_pk(&day[..7], shard, tenant.as_str()), day_sk(&day, &resource), &tenant, &u)
        });
    }
    for ((tenant, month, resource), u) in rollup(&hours, Granularity::Month) {
        ops.push(CounterOp {
            resource: Some(resource.as_str().to_string()),
            ..CounterOp::new(counter_pk(&month, shard, tenant.as_str()), month_sk(&resource), &tenant, &u)
        });
        *tenant_months.entry((tenant, month)).or_default() += &u;
    }
    for ((tenant, month), u) in tenant_months {
        ops.push(CounterOp {
            shard: Some(shard),
            ..CounterOp::new(dir_pk(&month, tenant.as_str()), dir_sk(shard, &tenant), &tenant, &u)
        });
    }

    let counted = (batch.entries.len() - duplicates.len()) as u64;
    let totals = TotalsOp {
        received: batch.received,
        counted,
        duplicates: duplicates.len() as u64,
        skipped: batch.skipped.iter().map(|(r, n)| (r.as_str().to_string(), *n)).collect(),
    };
    let applied = Applied { counted, duplicates: duplicates.len() as u64, keys_written: hours.len() as u64 };
    let max_hour = hours.keys().map(|k| k.hour).max().filter(|h| stored.max_hour.is_none_or(|m| *h > m));
    let prune_before = batch.prune_before.filter(|h| stored.horizon.is_none_or(|o| *h > o));
    Plan {
        moves: batch.checkpoints.iter().map(CpMove::from).collect(),
        writes,
        ops,
        totals,
        applied,
        max_hour,
        prune_before,
    }
}

impl Plan {
    /// Whether the whole batch fits one transaction: its checkpoints, bucket writes, counter
    /// writes, the totals and `META`, within DynamoDB's 100 actions and [`TXN_BYTES`].
    pub fn fits_one_transaction(&self) -> bool {
        let actions = self.moves.len() + self.writes.len() + self.ops.len() + 2;
        let bytes = self.writes.iter().map(BucketWrite::bytes).sum::<usize>() + self.ops.len() * COUNTER_BYTES;
        actions <= TXN_MAX_ACTIONS && bytes <= TXN_BYTES
    }

    /// The plan as an intent of transaction-sized chunks: bucket writes in order, at most
    /// [`TXN_ACTIONS`] and [`TXN_BYTES`] per chunk; counter writes [`TXN_ACTIONS`] per chunk.
    pub fn into_intent(self) -> Intent {
        let mut bucket_chunks: Vec<Vec<BucketAdd>> = Vec::new();
        let mut bytes = 0;
        for w in &self.writes {
            if bucket_chunks.last().is_none_or(|c| c.len() >= TXN_ACTIONS || bytes + w.bytes() > TXN_BYTES) {
                bucket_chunks.push(Vec::new());
                bytes = 0;
            }
            bytes += w.bytes();
            bucket_chunks.last_mut().expect("pushed").push(BucketAdd { pk: w.pk.clone(), keys: keys_to_hex(&w.added) });
        }
        Intent {
            checkpoints: self.moves,
            bucket_chunks,
            counter_chunks: self.ops.chunks(TXN_ACTIONS).map(<[CounterOp]>::to_vec).collect(),
            totals: self.totals,
            max_hour: self.max_hour,
            prune_before: self.prune_before,
        }
    }
}

#[cfg(test)]
mod tests {
    use rust_decimal::Decimal;

    use super::*;
    use crate::ids::DedupKey;
    use crate::quarantine::Reason;
    use crate::usage::{add_to, CounterKey, Entry, Resource, Sums, Via};

    /// 2025-03-31T22:00:00Z: two hours before April.
    const MAR31_22: EpochSeconds = 1_743_458_400;
    const HOUR: EpochSeconds = 3600;

    /// A request key in dedup bucket `b` (its high 64 bits), told apart by `low`.
    fn in_bucket(b: u64, low: u64) -> u128 {
        (u128::from(b) << 64) | u128::from(low)
    }

    fn entry(tenant: &str, hour: EpochSeconds, resource: &str, dedup: u128, input: u64) -> Entry {
        Entry {
            dedup: DedupKey::from_u128(dedup),
            key: CounterKey {
                tenant: TenantId::new(tenant).unwrap(),
                hour,
                resource: Resource::new(resource),
                via: Via::Pool,
            },
            usage: Usage { input, requests: 1, est_cost: Decimal::new(input as i64, 6), ..Usage::default() },
        }
    }

    fn batch(entries: Vec<Entry>) -> Batch {
        Batch { received: entries.len() as u64, entries, ..Batch::default() }
    }

    /// Plans `batch` on shard `shard` against the buckets in `stored` (keys by bucket pk).
    fn plan_of(batch: &Batch, shard: u32, stored: &[(&str, &[u128], u64)], horizon: Option<i64>) -> Plan {
        let index = buckets_of(batch);
        let buckets = stored
            .iter()
            .map(|(pk, keys, version)| (pk.to_string(), Bucket { keys: keys.to_vec(), version: *version }))
            .collect();
        plan(batch, shard, &index, &Stored { buckets, max_hour: None, horizon })
    }

    fn keys_of(ops: &[CounterOp]) -> Vec<(&str, &str)> {
        ops.iter().map(|o| (o.pk.as_str(), o.sk.as_str())).collect()
    }

    #[test]
    fn a_batch_over_hours_and_tenants_writes_each_distinct_key_once() {
        let b = batch(vec![
            entry("acme", MAR31_22, "nova", in_bucket(1, 1), 10),
            entry("acme", MAR31_22, "nova", in_bucket(2, 2), 20),
            entry("acme", MAR31_22 + HOUR, "nova", in_bucket(1, 3), 30),
            entry("acme", MAR31_22 + 2 * HOUR, "nova", in_bucket(1, 4), 40),
            entry("globex", MAR31_22 + HOUR, "claude", in_bucket(1, 5), 50),
        ]);
        let p = plan_of(&b, 0, &[], None);
        assert_eq!(
            keys_of(&p.ops),
            [
                // Hours, in (tenant, hour, resource) order.
                ("C#2025-03#0#acme", "T#2025-03-31T22#nova"),
                ("C#2025-03#0#acme", "T#2025-03-31T23#nova"),
                ("C#2025-04#0#acme", "T#2025-04-01T00#nova"),
                ("C#2025-03#0#globex", "T#2025-03-31T23#claude"),
                // Days, then months: each in the partition of its own month.
                ("C#2025-03#0#acme", "D#2025-03-31#nova"),
                ("C#2025-04#0#acme", "D#2025-04-01#nova"),
                ("C#2025-03#0#globex", "D#2025-03-31#claude"),
                ("C#2025-03#0#acme", "M#nova"),
                ("C#2025-04#0#acme", "M#nova"),
                ("C#2025-03#0#globex", "M#claude"),
                // Tenant-months in the directory.
                ("DIR#2025-03#15", "0#acme"),
                ("DIR#2025-04#15", "0#acme"),
                ("DIR#2025-03#14", "0#globex"),
            ]
        );
        // The two entries of acme's 22:00 hour are one write, summed.
        let first = &p.ops[0];
        assert_eq!((first.nums[0], first.nums[4], first.cost), (30, 2, Decimal::new(30, 6)));
        assert_eq!((first.resource.as_deref(), first.hour, first.shard), (Some("nova"), Some(MAR31_22), None));
        let march = &p.ops[7];
        assert_eq!((march.nums[0], march.nums[4], march.hour), (60, 3, None));
        let dir = &p.ops[10];
        assert_eq!((dir.nums[0], dir.resource.as_deref(), dir.shard), (60, None, Some(0)));
        assert_eq!(p.applied, Applied { counted: 5, duplicates: 0, keys_written: 4 });
        assert_eq!((p.totals.received, p.totals.counted, p.totals.duplicates), (5, 5, 0));
        assert_eq!(p.max_hour, Some(MAR31_22 + 2 * HOUR));
    }

    #[test]
    fn a_shard_names_the_counter_partitions_and_the_directory_entry() {
        let p = plan_of(&batch(vec![entry("acme", MAR31_22, "nova", 1, 10)]), 3, &[], None);
        assert_eq!(
            keys_of(&p.ops),
            [
                ("C#2025-03#3#acme", "T#2025-03-31T22#nova"),
                ("C#2025-03#3#acme", "D#2025-03-31#nova"),
                ("C#2025-03#3#acme", "M#nova"),
                ("DIR#2025-03#15", "3#acme"),
            ]
        );
        assert_eq!(p.ops[3].shard, Some(3));
    }

    #[test]
    fn dedup_keys_land_in_the_bucket_of_their_hour_and_high_bits() {
        let b = batch(vec![
            entry("acme", MAR31_22, "nova", in_bucket(5, 2), 1),
            // 69 mod 64 = 5: the same bucket.
            entry("acme", MAR31_22, "nova", in_bucket(69, 1), 1),
            entry("acme", MAR31_22, "nova", in_bucket(63, 1), 1),
            entry("acme", MAR31_22 + HOUR, "nova", in_bucket(5, 3), 1),
        ]);
        let index = buckets_of(&b);
        assert_eq!(
            index.of_entry,
            ["S#2025-03-31T22#05", "S#2025-03-31T22#05", "S#2025-03-31T22#63", "S#2025-03-31T23#05"]
        );
        assert_eq!(index.hours.values().copied().collect::<Vec<_>>(), [MAR31_22, MAR31_22, MAR31_22 + HOUR]);

        // Bucket 05 of 22:00 exists at version 4; the others do not exist yet.
        let p = plan_of(&b, 0, &[("S#2025-03-31T22#05", &[in_bucket(5, 9)], 4)], None);
        let writes: Vec<(&str, EpochSeconds, u64, usize, usize)> =
            p.writes.iter().map(|w| (w.pk.as_str(), w.hour, w.old_version, w.keys.len(), w.added.len())).collect();
        assert_eq!(
            writes,
            [
                ("S#2025-03-31T22#05", MAR31_22, 4, 3, 2),
                ("S#2025-03-31T22#63", MAR31_22, 0, 1, 1),
                ("S#2025-03-31T23#05", MAR31_22 + HOUR, 0, 1, 1),
            ]
        );
        // The whole bucket is written back, sorted: the key read and the two added.
        assert_eq!(p.writes[0].keys, [in_bucket(5, 2), in_bucket(5, 9), in_bucket(69, 1)]);
        assert_eq!(p.writes[0].added, [in_bucket(5, 2), in_bucket(69, 1)]);
    }

    /// One hour's entries with request keys `batch_keys` (all in bucket 0), against bucket 0
    /// holding `read`, with the dedup horizon at `horizon` hours after the entries' hour.
    fn check(read: &[u128], horizon: Option<i64>, batch_keys: &[u128], duplicates: u64, added: &[u128]) {
        let b = batch(batch_keys.iter().map(|k| entry("acme", MAR31_22, "nova", *k, 1)).collect());
        let horizon = horizon.map(|h| MAR31_22 + h * HOUR);
        let p = plan_of(&b, 0, &[("S#2025-03-31T22#00", read, 1)], horizon);
        assert_eq!(p.applied.duplicates, duplicates, "duplicates of {batch_keys:?} against {read:?}");
        assert_eq!(p.applied.counted, batch_keys.len() as u64 - duplicates);
        assert_eq!(p.totals.duplicates, duplicates);
        let got: Vec<u128> = p.writes.iter().flat_map(|w| w.added.clone()).collect();
        assert_eq!(got, added, "keys added for {batch_keys:?} against {read:?}");
        // A batch of duplicates only writes no counters.
        assert_eq!(p.ops.is_empty(), duplicates == batch_keys.len() as u64);
    }

    #[test]
    fn duplicates_are_found_in_the_bucket_read_and_within_the_batch() {
        check(&[], None, &[1, 2], 0, &[1, 2]);
        check(&[2], None, &[1, 2], 1, &[1]);
        check(&[], None, &[3, 1, 3], 1, &[1, 3]);
        check(&[1, 2], None, &[2, 1], 2, &[]);
        // A bucket of an hour before the horizon is forgotten; one at the horizon is not.
        check(&[1, 2], Some(1), &[1, 3], 0, &[1, 3]);
        check(&[1, 2], Some(0), &[1, 3], 1, &[3]);
    }

    #[test]
    fn a_duplicate_is_taken_out_of_presummed_counters_too() {
        let mut b = batch(vec![entry("acme", MAR31_22, "nova", 1, 10), entry("acme", MAR31_22, "nova", 2, 20)]);
        let mut sums = Sums::default();
        for e in &b.entries {
            add_to(&mut sums, &e.key, &e.usage);
        }
        b.sums = Some(sums);
        let p = plan_of(&b, 0, &[("S#2025-03-31T22#00", &[2], 1)], None);
        assert_eq!((p.ops[0].nums[0], p.ops[0].nums[4]), (10, 1));
    }

    #[test]
    fn totals_max_hour_and_horizon_go_only_up() {
        let mut b = batch(vec![entry("acme", MAR31_22, "nova", 1, 10)]);
        b.received = 3;
        b.skipped = BTreeMap::from([(Reason::NonJson, 2)]);
        b.prune_before = Some(MAR31_22 - 24 * HOUR);
        let index = buckets_of(&b);
        let raise = |max_hour, horizon| {
            let p = plan(&b, 0, &index, &Stored { buckets: BTreeMap::new(), max_hour, horizon });
            (p.max_hour, p.prune_before)
        };
        assert_eq!(raise(None, None), (Some(MAR31_22), Some(MAR31_22 - 24 * HOUR)));
        assert_eq!(
            raise(Some(MAR31_22 - HOUR), Some(MAR31_22 - 48 * HOUR)),
            (Some(MAR31_22), Some(MAR31_22 - 24 * HOUR))
        );
        assert_eq!(raise(Some(MAR31_22), Some(MAR31_22 - 24 * HOUR)), (None, None));
        let p = plan(&b, 0, &index, &Stored::default());
        let skipped = BTreeMap::from([(Reason::NonJson.as_str().to_string(), 2)]);
        assert_eq!(p.totals, TotalsOp { received: 3, counted: 1, duplicates: 0, skipped });
    }

    fn moves(n: usize) -> Vec<CheckpointUpdate> {
        (0..n)
            .map(|i| CheckpointUpdate { source: format!("file:{i}"), expected: None, position: format!("{i}") })
            .collect()
    }

    #[test]
    fn a_small_batch_is_one_transaction_and_100_actions_are_the_limit() {
        // Checkpoints + buckets + counters + totals + META: 1 + 1 + 4 + 2.
        let mut b = batch(vec![entry("acme", MAR31_22, "nova", 1, 10)]);
        b.checkpoints = moves(1);
        assert!(plan_of(&b, 0, &[], None).fits_one_transaction());
        // 93 + 1 + 4 + 2 = 100 actions fit; one more checkpoint does not.
        b.checkpoints = moves(93);
        assert!(plan_of(&b, 0, &[], None).fits_one_transaction());
        b.checkpoints = moves(94);
        assert!(!plan_of(&b, 0, &[], None).fits_one_transaction());
    }

    #[test]
    fn full_buckets_go_past_the_byte_limit_of_one_transaction() {
        // Buckets 0..n of 22:00, each holding 20,000 keys (320 KB), and one new key for each.
        let plan_with = |n: u64| {
            let b = batch((0..n).map(|i| entry("acme", MAR31_22, "nova", in_bucket(i, 1 << 40), 1)).collect());
            let stored: Vec<(String, Vec<u128>)> = (0..n)
                .map(|i| (format!("S#2025-03-31T22#{i:02}"), (0..20_000).map(|k| in_bucket(i, k)).collect()))
                .collect();
            let stored: Vec<(&str, &[u128], u64)> =
                stored.iter().map(|(pk, k)| (pk.as_str(), k.as_slice(), 1)).collect();
            plan_of(&b, 0, &stored, None)
        };
        // 10 × 320 KB fit in 3.5 MB; 11 do not, though they are only 11 + 4 + 2 actions.
        assert!(plan_with(10).fits_one_transaction());
        assert!(!plan_with(11).fits_one_transaction());
    }

    #[test]
    fn a_split_batch_keeps_every_transaction_within_100_actions() {
        // 150 checkpoints; one entry in each of the 64 buckets of two hours (128 bucket writes);
        // 60 resources, so 2 × 60 hourly keys, 60 days, 60 months and one tenant-month.
        let mut entries = Vec::new();
        for h in 0..2 {
            for bucket in 0..64u64 {
                let resource = format!("m{:02}", bucket % 60);
                entries.push(entry("acme", MAR31_22 + h * HOUR, &resource, in_bucket(bucket, 7), 1));
            }
        }
        let mut b = batch(entries);
        b.checkpoints = moves(150);
        let p = plan_of(&b, 0, &[], None);
        assert!(!p.fits_one_transaction());
        assert_eq!((p.writes.len(), p.ops.len()), (128, 241));
        let ops = p.ops.clone();
        let intent = p.into_intent();

        // Each chunk within 99 actions: the intent's header is the 100th.
        let lens = |chunks: &[Vec<BucketAdd>]| chunks.iter().map(Vec::len).collect::<Vec<_>>();
        assert_eq!(lens(&intent.bucket_chunks), [99, 29]);
        assert_eq!(intent.counter_chunks.iter().map(Vec::len).collect::<Vec<_>>(), [99, 99, 43]);
        assert_eq!(intent.counter_chunks.concat(), ops);
        assert_eq!(
            intent.bucket_chunks[0][0],
            BucketAdd { pk: "S#2025-03-31T22#00".into(), keys: format!("{:032x}", in_bucket(0, 7)) }
        );

        // Steps: 2 claim chunks (99 + 51), the bucket chunks, then the counter chunks.
        assert_eq!(intent.claim_chunks(), 2);
        assert_eq!(intent.steps(), 2 + 2 + 3);
        assert!(matches!(intent.step(0), Step::Claim(c) if c.len() == 99 && c[0].source == "file:0"));
        assert!(matches!(intent.step(1), Step::Claim(c) if c.len() == 51 && c[0].source == "file:99"));
        assert_eq!(intent.step(2), Step::Buckets(0));
        assert_eq!(intent.step(3), Step::Buckets(1));
        assert_eq!(intent.step(4), Step::Counters(&intent.counter_chunks[0]));
        assert_eq!(intent.step(6), Step::Counters(&intent.counter_chunks[2]));

        // Finish chunks: the first leaves room for the totals and the header.
        let finish: Vec<usize> = intent.finish_chunks().iter().map(|c| c.len()).collect();
        assert_eq!(finish, [98, 52]);
    }

    #[test]
    fn a_split_batch_keeps_every_bucket_transaction_within_the_byte_limit() {
        // Every bucket of an hour holds 20,000 keys (320 KB written back): 10 fit in 3.5 MB.
        let mut entries = Vec::new();
        let mut stored = Vec::new();
        for bucket in 0..64u64 {
            stored.push((format!("S#2025-03-31T22#{bucket:02}"), (0..20_000).map(|k| in_bucket(bucket, k)).collect()));
            entries.push(entry("acme", MAR31_22, "nova", in_bucket(bucket, 1 << 40), 1));
        }
        let stored: Vec<(String, Vec<u128>)> = stored;
        let stored: Vec<(&str, &[u128], u64)> = stored.iter().map(|(pk, k)| (pk.as_str(), k.as_slice(), 1)).collect();
        let p = plan_of(&batch(entries), 0, &stored, None);
        assert!(!p.fits_one_transaction());
        let writes = p.writes.clone();
        let intent = p.into_intent();
        assert_eq!(intent.bucket_chunks.iter().map(Vec::len).collect::<Vec<_>>(), [10, 10, 10, 10, 10, 10, 4]);
        let mut rest = writes.iter();
        for chunk in &intent.bucket_chunks {
            let mine: Vec<&BucketWrite> = rest.by_ref().take(chunk.len()).collect();
            assert!(mine.iter().zip(chunk).all(|(w, c)| w.pk == c.pk && c.keys == keys_to_hex(&w.added)));
            assert!(mine.iter().map(|w| w.bytes()).sum::<usize>() <= TXN_BYTES);
        }
        assert!(rest.next().is_none());
    }

    #[test]
    fn an_intent_keeps_its_json_form() {
        // Intents written by one version are recovered by the next: the JSON must not change.
        let mut b = batch(vec![entry("acme", MAR31_22, "nova", in_bucket(5, 1), 10)]);
        b.checkpoints = moves(1);
        let intent = plan_of(&b, 0, &[], None).into_intent();
        let json = serde_json::to_string(&intent).unwrap();
        assert_eq!(
            json,
            concat!(
                r#"{"checkpoints":[{"source":"file:0","expected":null,"position":"0"}],"#,
                r#""bucket_chunks":[[{"pk":"S#2025-03-31T22#05","keys":"00000000000000050000000000000001"}]],"#,
                r#""counter_chunks":[[{"pk":"C#2025-03#0#acme","sk":"T#2025-03-31T22#nova","tenant":"acme","resource":"nova","hour":1743458400,"nums":[10,0,0,0,1,0,0],"cost":"0.000010"},"#,
                r#"{"pk":"C#2025-03#0#acme","sk":"D#2025-03-31#nova","tenant":"acme","resource":"nova","nums":[10,0,0,0,1,0,0],"cost":"0.000010"},"#,
                r#"{"pk":"C#2025-03#0#acme","sk":"M#nova","tenant":"acme","resource":"nova","nums":[10,0,0,0,1,0,0],"cost":"0.000010"},"#,
                r#"{"pk":"DIR#2025-03#15","sk":"0#acme","tenant":"acme","shard":0,"nums":[10,0,0,0,1,0,0],"cost":"0.000010"}]],"#,
                r#""totals":{"received":1,"counted":1,"duplicates":0,"skipped":{}},"max_hour":1743458400,"prune_before":null}"#
            )
        );
        let back: Intent = serde_json::from_str(&json).unwrap();
        assert_eq!(back.counter_chunks, intent.counter_chunks);
    }
}
