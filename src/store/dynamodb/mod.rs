//! The DynamoDB counter store (the `aws` feature): the same [`CounterStore`] as SQLite, on one
//! DynamoDB table, passing the same conformance suite.
//!
//! It is chosen with `[store] backend = "dynamodb"` and `table`, plus `region` / `endpoint_url`
//! when the standard AWS chain's are not the ones wanted; `tally init` creates the table, and
//! running it again is harmless. Credentials always come from the standard chain (environment,
//! profile, SSO, role); the config file holds none. Ingest's batches are 50,000 records here by
//! default (`ingest.batch_records`, 20,000 on SQLite): each batch rewrites the roll-up items and
//! the dedup buckets it touches, and those writes are billed. `docker-compose.yml` runs this
//! backend on moto.
//!
//! # Table
//!
//! One table, string keys `pk` and `sk`, on-demand billing, TTL on `expires`
//! ([`DynamoStore::create_table`], run by `tally init`). Items (`<s>` is a counter shard, 0 unless
//! `shards` > 1; tenant ids go last in keys because they may contain `#`):
//!
//! | pk | sk | holds |
//! |---|---|---|
//! | `C#<YYYY-MM>#<s>#<tenant>` | `M#<resource>` | the tenant's month on one resource |
//! | same | `D#<YYYY-MM-DD>#<resource>` | one day on one resource |
//! | same | `T#<YYYY-MM-DDTHH>#<resource>[#<via>]` | one UTC hour on one resource (the finest counter); `#identity` or `#account` when a silo account or the identity rule decided the tenant (attribute `via`) |
//! | `DIR#<YYYY-MM>#<d>` | `<s>#<tenant>` | the tenant's month total; the tenant directory (`d` = hash(tenant) mod 16) |
//! | `S#<YYYY-MM-DDTHH>#<b>` | `S` | dedup bucket `b` (of 64) of an hour: sorted 16-byte request keys, version `v`, TTL |
//! | `CP` | `<source>` | a source's `position`, and `pending` while a split batch holds it |
//! | `I#<id>` | `H`, `P0000`… | a split batch's intent: header (owner, lease, progress), then its plan as JSON parts |
//! | `TOTALS` | `TOTALS` | lifetime received / counted / duplicates / `skip_<reason>` |
//! | `META` | `META` | `max_hour` and the dedup horizon (`prune_before`) |
//!
//! Every counter item holds `input`, `output`, `cache_read`, `cache_write`, `requests`, `errors`,
//! `no_usage` and `est_cost` as DynamoDB Numbers, added with `ADD`: DynamoDB adds Numbers as exact
//! decimals of up to 38 digits, so costs are never floats here either. The other dimensions
//! (`images`, `video_ms`, `audio_ms`, `search_units`, `cache_write_1h`, `latency_optimized`,
//! `cross_region`) are added the same way, but only when not 0: an item without one, like every
//! item written before they existed, holds 0.
//!
//! Access patterns: one tenant's month (by day and by resource) is one `Query` on its `C#`
//! partition with `sk < "T"` (one per shard); all tenants of a month are the 16 `DIR#`
//! partitions; all hourly counters of a month (the reconciler's read) are one `Query` with
//! `begins_with(sk, "T#")` per tenant and shard listed in the directory; the checkpoints are one
//! `Query` on `CP`.
//!
//! `shards = N` spreads each batch's counter writes for a tenant over N partitions
//! (`C#<month>#<0..N-1>#<tenant>`, a different shard per batch), so one hot tenant can go past a
//! partition's write limit; reads sum the shards, one `Query` each. Only ever raise it: reads
//! look at the shards below N only.
//!
//! # Writes scale with keys, not records
//!
//! A batch writes one `ADD` per distinct hourly key, day key, month key and tenant-month, one
//! write per dedup bucket it adds keys to (at most 64 per hour touched, whatever the number of
//! records), one totals item and its checkpoints. Dedup buckets are read first (strongly
//! consistent `BatchGetItem`), and written back whole with a condition on their version `v`, so
//! two ingesters that see the same new request id concurrently cannot both count it: the second
//! transaction is cancelled, re-reads and finds it. A bucket holds up to 23,000 keys
//! (368 KB, under the 400 KB item limit), i.e. about 1.4 million records per hour. TTL removes
//! buckets two days after the dedup window; a prune (`prune_before` in `META`) takes effect at
//! once, because reads ignore buckets before the horizon. The write counts of a 1M-record
//! ingest are measured by `tests/bench/dynamodb.sh`.
//!
//! # Exactly once, also when a batch needs several transactions
//!
//! A batch that fits one `TransactWriteItems` (100 actions, 4 MB) is one transaction: the
//! checkpoint moves (conditioned on the expected position and on no `pending` marker), the bucket
//! writes (conditioned on their versions), the counter `ADD`s and the totals. All or nothing.
//!
//! A bigger batch is written under an *intent*, like a database's undo/redo log:
//! 1. its plan (checkpoints, the keys it adds to each bucket, the counter deltas, the totals) is
//!    stored as items `I#<id>` before anything else is written;
//! 2. *claim* transactions set `pending = <id>` on its checkpoints, conditioned on the expected
//!    positions (a refused claim releases the earlier ones and reports `ConditionFailed`);
//! 3. *bucket* transactions, then *counter* transactions, each moving the intent's `step`
//!    (conditioned on the step before and on the intent's owner);
//! 4. the *commit point*: one conditional write of `state = committed` on the intent header;
//! 5. *finish* transactions move the checkpoints (clearing `pending`) and add the totals; then
//!    the intent is deleted.
//!
//! Before the commit point every step can be undone: claims are released, the intent's keys are
//! taken out of the buckets again, counter deltas are added negated. After it every step can be
//! redone. A failure while the writer is alive (a bucket version conflict, or a persistent AWS
//! error) undoes the steps done and reports the error with the checkpoint where it was. A writer
//! killed half way leaves the intent with its `pending` markers; the next reader of those
//! checkpoints (the restarted ingester, in `checkpoints()` or `apply()`) takes the intent over —
//! once its owner is known to be dead (same host, process gone) or its lease (`lease_seconds`,
//! renewed by every step) has run out — and undoes or redoes it. Positions reported by
//! `checkpoints()` are the committed ones. Between the first counter step and the end of an
//! undo, readers can see part of an uncommitted batch; they never see a batch twice.
//!
//! Undoing bucket writes is safe against other writers: a key the intent added was absent
//! before it, so another writer that saw it meanwhile counted that record as a duplicate of a
//! record that is not counted yet; the intent's own source is read again from the old position,
//! and the record is counted then.
//!
//! # Retries
//!
//! The SDK retries throttling, 5xx and network errors of every call with backoff and jitter
//! ([`crate::aws`]); a transaction cancelled for throttling or a transaction conflict is retried
//! here the same way. A failure that persists is returned as an error: the ingester stops, and
//! the checkpoint has not moved past anything uncounted.
//!
//! # Code
//!
//! `schema` names the keys and attributes and decodes items; `plan` turns a batch and the
//! buckets read into the writes it makes and lays them out in transactions (no AWS); `write`
//! encodes each write as a transaction action; `client` sends requests, retries and counts
//! them; `intent` runs a split batch and recovers another writer's; `admin` creates the table.
//! This file reads and ties them together.

mod admin;
mod client;
mod intent;
mod plan;
mod schema;
mod write;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use client::{Table, TxnFailure};
use intent::{checkpoint_refusal, Attempt, Owner, Protocol};
use plan::{Bucket, Stored};
pub use schema::DEDUP_BUCKETS;
use schema::{counter_pk, dir_partition, get_i64, get_s, get_u64, keys_from_item, tenant_of, usage_of, DIR_PARTITIONS};
use write::{Action, Requests, Role};

use super::{month_range, Applied, Batch, CounterStore, IngestTotals, PeriodUsage, StoreError, WriteStats};
use crate::aws::AwsSettings;
use crate::ids::{EpochSeconds, TenantId};
use crate::usage::{CounterKey, Resource, Usage, Via};

/// Whole-batch attempts after a dedup bucket changed between read and write.
const CONFLICT_ATTEMPTS: u32 = 12;

/// How to reach the table. Plain data, from `[store]` in the config.
#[derive(Debug, Clone)]
pub struct DynamoSettings {
    pub table: String,
    pub aws: AwsSettings,
    /// Counter shards per tenant (1 = unsharded). Only ever raise it: reads sum shards below it.
    pub shards: u32,
    /// How long a split batch's intent stays owned by its writer without a step.
    pub lease: Duration,
    /// How long dedup buckets are kept (DynamoDB TTL), measured from their hour.
    pub dedup_ttl: Duration,
}

/// The DynamoDB backend.
pub struct DynamoStore {
    table: Table,
    requests: Requests,
    owner: Owner,
    shards: u32,
    batch_no: u64,
}

impl DynamoStore {
    /// Connects to the table (which `create_table` made). No request is sent until first use.
    pub fn open(settings: &DynamoSettings) -> Result<DynamoStore, StoreError> {
        Ok(DynamoStore {
            table: Table::open(&settings.table, &settings.aws)?,
            requests: Requests { table: settings.table.clone(), dedup_ttl_secs: settings.dedup_ttl.as_secs() as i64 },
            owner: Owner::new(settings.lease),
            shards: settings.shards.max(1),
            batch_no: 0,
        })
    }

    /// Creates the table (on-demand billing, TTL on `expires`) if it does not exist, and waits
    /// until it is active. Running it again is harmless.
    pub fn create_table(&self) -> Result<(), StoreError> {
        admin::create_table(&self.table)
    }

    /// Checks that the table exists and can be reached (one `DescribeTable`).
    pub fn health_check(&self) -> Result<(), StoreError> {
        admin::health_check(&self.table)
    }

    fn protocol(&self) -> Protocol<'_> {
        Protocol { table: &self.table, requests: &self.requests, owner: &self.owner }
    }

    /// `max_hour` and the dedup horizon (`prune_before`) from `META`.
    async fn meta(&self) -> Result<(Option<i64>, Option<i64>), StoreError> {
        match self.table.get("META", "META").await? {
            None => Ok((None, None)),
            Some(item) => Ok((get_i64(&item, "max_hour")?, get_i64(&item, "prune_before")?)),
        }
    }

    async fn apply_async(&self, batch: &Batch, shard: u32) -> Result<Applied, StoreError> {
        let mut conflicts = 0;
        let mut delay = Duration::from_millis(20);
        loop {
            match self.try_apply(batch, shard).await {
                Ok(a) => return Ok(a),
                Err(Attempt::Store(e)) => return Err(e),
                Err(Attempt::Pending(id)) => self.protocol().recover(&id, true).await?,
                Err(Attempt::Conflict) => {
                    conflicts += 1;
                    if conflicts >= CONFLICT_ATTEMPTS {
                        return Err(StoreError::Busy("dedup buckets kept changing underneath this batch".into()));
                    }
                    tokio::time::sleep(client::jitter(delay)).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// Reads what the batch depends on, plans it, and writes it: in one transaction when it
    /// fits, else under an intent.
    async fn try_apply(&self, batch: &Batch, shard: u32) -> Result<Applied, Attempt> {
        // Checkpoints first: a stale or held one refuses the batch before anything is read.
        let cp_items = self
            .table
            .batch_get(batch.checkpoints.iter().map(|c| ("CP".to_string(), c.source.clone())).collect())
            .await?;
        for cp in &batch.checkpoints {
            let item = cp_items.get(&("CP".to_string(), cp.source.clone()));
            if let Some(p) = item.and_then(|i| get_s(i, "pending")) {
                return Err(Attempt::Pending(p.to_string()));
            }
            let found = item.and_then(|i| get_s(i, "position")).map(str::to_string);
            if found != cp.expected {
                return Err(Attempt::Store(StoreError::ConditionFailed {
                    source_key: cp.source.clone(),
                    expected: cp.expected.clone(),
                    found,
                }));
            }
        }
        let (max_hour, horizon) = self.meta().await?;

        // Dedup: read every bucket the batch touches; the plan decides in batch order.
        let index = plan::buckets_of(batch);
        let read = self.table.batch_get(index.hours.keys().map(|pk| (pk.clone(), "S".to_string())).collect()).await?;
        let mut stored = Stored { buckets: BTreeMap::new(), max_hour, horizon };
        for pk in index.hours.keys() {
            if let Some(item) = read.get(&(pk.clone(), "S".to_string())) {
                stored.buckets.insert(pk.clone(), Bucket { keys: keys_from_item(item), version: get_u64(item, "v")? });
            }
        }
        let plan = plan::plan(batch, shard, &index, &stored);
        let applied = plan.applied;

        let bucket_actions: Vec<Action> =
            plan.writes.iter().map(|w| self.requests.bucket(w)).collect::<Result<_, _>>()?;
        if !plan.fits_one_transaction() {
            self.protocol().apply(plan.into_intent(), bucket_actions).await?;
            return Ok(applied);
        }
        let mut actions: Vec<Action> = plan.moves.iter().map(|c| self.requests.checkpoint(c, None)).collect();
        actions.extend(bucket_actions);
        actions.extend(plan.ops.iter().map(|o| self.requests.counter(o, false)));
        actions.extend(self.requests.totals(&plan.totals));
        actions.extend(self.requests.meta(plan.max_hour, plan.prune_before));
        let roles: Vec<Role> = actions.iter().map(|a| a.role.clone()).collect();
        match self.table.transact(actions).await {
            Ok(()) => Ok(applied),
            Err(TxnFailure::Store(e)) => Err(Attempt::Store(e)),
            Err(TxnFailure::Condition(i)) => Err(match &roles[i] {
                Role::Checkpoint(src) => {
                    checkpoint_refusal(&self.table, plan.moves.iter().find(|c| &c.source == src).expect("a move")).await
                }
                _ => Attempt::Conflict,
            }),
        }
    }

    /// Every (tenant, shard) with counters in a month, from the directory, with its month total.
    async fn directory(&self, month: &str) -> Result<Vec<(TenantId, u32, Usage)>, StoreError> {
        let mut out = Vec::new();
        for d in 0..DIR_PARTITIONS {
            for item in self.table.query(&dir_partition(month, d), None).await? {
                let shard = get_u64(&item, "shard")? as u32;
                out.push((tenant_of(&item)?, shard, usage_of(&item)?));
            }
        }
        Ok(out)
    }
}

impl CounterStore for DynamoStore {
    fn apply(&mut self, batch: &Batch) -> Result<Applied, StoreError> {
        self.batch_no += 1;
        let shard = ((self.owner.nonce.wrapping_add(self.batch_no)) % u64::from(self.shards)) as u32;
        self.table.run(self.apply_async(batch, shard))
    }

    fn checkpoints(&self) -> Result<HashMap<String, String>, StoreError> {
        self.table.run(self.protocol().checkpoints())
    }

    fn max_hour(&self) -> Result<Option<EpochSeconds>, StoreError> {
        self.table.run(async { Ok(self.meta().await?.0) })
    }

    fn period_usage(&self, tenant: &TenantId, month: &str) -> Result<PeriodUsage, StoreError> {
        month_range(month)?;
        self.table.run(async {
            let mut out = PeriodUsage { tenant: tenant.clone(), period: month.to_string(), ..PeriodUsage::default() };
            for shard in 0..self.shards {
                for item in self.table.query(&counter_pk(month, shard, tenant.as_str()), Some(("<", "T"))).await? {
                    let u = usage_of(&item)?;
                    if u.requests == 0 {
                        continue;
                    }
                    let sk = get_s(&item, "sk").unwrap_or_default();
                    let resource = Resource::new(get_s(&item, "resource").unwrap_or_default());
                    if sk.starts_with("M#") {
                        out.total += &u;
                        *out.by_resource.entry(resource).or_default() += &u;
                    } else if let Some(day) = sk.strip_prefix("D#").and_then(|d| d.get(..10)) {
                        *out.by_day.entry(day.to_string()).or_default() += &u;
                    }
                }
            }
            Ok(out)
        })
    }

    fn tenants(&self, month: &str) -> Result<Vec<(TenantId, Usage)>, StoreError> {
        month_range(month)?;
        self.table.run(async {
            let mut by: BTreeMap<TenantId, Usage> = BTreeMap::new();
            for (t, _, u) in self.directory(month).await? {
                if u.requests > 0 {
                    *by.entry(t).or_default() += &u;
                }
            }
            Ok(by.into_iter().collect())
        })
    }

    fn hours(&self, month: &str) -> Result<Vec<(CounterKey, Usage)>, StoreError> {
        month_range(month)?;
        self.table.run(async {
            let mut by: BTreeMap<CounterKey, Usage> = BTreeMap::new();
            for (tenant, shard, _) in self.directory(month).await? {
                for item in
                    self.table.query(&counter_pk(month, shard, tenant.as_str()), Some(("begins_with", "T#"))).await?
                {
                    let u = usage_of(&item)?;
                    if u.requests == 0 {
                        continue;
                    }
                    let hour = get_i64(&item, "hour")?
                        .ok_or_else(|| StoreError::Unavailable("hourly counter without an hour".into()))?;
                    let key = CounterKey {
                        tenant: tenant.clone(),
                        hour,
                        resource: Resource::new(get_s(&item, "resource").unwrap_or_default()),
                        via: match get_s(&item, "via") {
                            None => Via::Pool,
                            Some(v) => Via::parse(v)
                                .ok_or_else(|| StoreError::Invalid(format!("hourly counter with via {v:?}")))?,
                        },
                    };
                    *by.entry(key).or_default() += &u;
                }
            }
            Ok(by.into_iter().collect())
        })
    }

    fn totals(&self) -> Result<IngestTotals, StoreError> {
        self.table.run(async {
            let mut out = IngestTotals::default();
            let Some(item) = self.table.get("TOTALS", "TOTALS").await? else { return Ok(out) };
            out.received = get_u64(&item, "received")?;
            out.counted = get_u64(&item, "counted")?;
            out.duplicates = get_u64(&item, "duplicates")?;
            for name in item.keys() {
                if let Some(reason) = name.strip_prefix("skip_") {
                    let v = get_u64(&item, name)?;
                    if v > 0 {
                        out.skipped.insert(reason.to_string(), v);
                    }
                }
            }
            Ok(out)
        })
    }

    fn write_stats(&self) -> Option<WriteStats> {
        Some(self.table.stats())
    }
}
