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
//! | same | `T#<YYYY-MM-DDTHH>#<resource>` | one UTC hour on one resource (the finest counter) |
//! | `DIR#<YYYY-MM>#<d>` | `<s>#<tenant>` | the tenant's month total; the tenant directory (`d` = hash(tenant) mod 16) |
//! | `S#<YYYY-MM-DDTHH>#<b>` | `S` | dedup bucket `b` (of 64) of an hour: sorted 16-byte request keys, version `v`, TTL |
//! | `CP` | `<source>` | a source's `position`, and `pending` while a split batch holds it |
//! | `I#<id>` | `H`, `P0000`… | a split batch's intent: header (owner, lease, progress), then its plan as JSON parts |
//! | `TOTALS` | `TOTALS` | lifetime received / counted / duplicates / `skip_<reason>` |
//! | `META` | `META` | `max_hour` and the dedup horizon (`prune_before`) |
//!
//! Every counter item holds `input`, `output`, `cache_read`, `cache_write`, `requests`, `errors`,
//! `no_usage` and `est_cost` as DynamoDB Numbers, added with `ADD`: DynamoDB adds Numbers as exact
//! decimals of up to 38 digits, so costs are never floats here either.
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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, KeysAndAttributes, Put,
    ReturnConsumedCapacity, ScalarAttributeType, TimeToLiveSpecification, TransactWriteItem, Update,
};
use aws_sdk_dynamodb::Client;
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::{month_range, Applied, Batch, CounterStore, IngestTotals, PeriodUsage, StoreError, WriteStats};
use crate::aws::AwsSettings;
use crate::ids::{hour_label, month_of, EpochSeconds, TenantId};
use crate::usage::{rollup, CounterKey, Granularity, Resource, Usage};

type Item = HashMap<String, AttributeValue>;

/// Dedup buckets per hour.
pub const DEDUP_BUCKETS: u64 = 64;
/// Directory partitions per month.
const DIR_PARTITIONS: u64 = 16;
/// Keys a dedup bucket may hold: 16 bytes each, under the 400 KB item limit with room to spare.
const BUCKET_MAX_KEYS: usize = 23_000;
/// Actions per transaction (DynamoDB allows 100; one is kept for the intent header).
const TXN_ACTIONS: usize = 99;
/// Bytes per transaction (DynamoDB allows 4 MB).
const TXN_BYTES: usize = 3_500_000;
/// Bytes of plan JSON per intent part.
const INTENT_PART_BYTES: usize = 300_000;
/// Attempts for a transaction cancelled by throttling or a conflicting transaction.
const TXN_ATTEMPTS: u32 = 10;
/// Whole-batch attempts after a dedup bucket changed between read and write.
const CONFLICT_ATTEMPTS: u32 = 12;

/// The counter fields, in `CounterOp::nums` order.
const NUM_ATTRS: [&str; 7] = ["input", "output", "cache_read", "cache_write", "requests", "errors", "no_usage"];

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
    rt: tokio::runtime::Runtime,
    client: Client,
    table: String,
    shards: u32,
    lease: Duration,
    dedup_ttl_secs: i64,
    /// `host|pid|nonce`: who owns the intents this store writes.
    owner: String,
    host: String,
    nonce: u64,
    batch_no: u64,
    /// Intents this store has started.
    intents: std::sync::atomic::AtomicU64,
    stats: Mutex<WriteStats>,
}

// ---------------------------------------------------------------------------------------------
// Plan types (also the intent's JSON)
// ---------------------------------------------------------------------------------------------

/// One counter item's delta.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct CounterOp {
    pk: String,
    sk: String,
    tenant: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    resource: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hour: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    shard: Option<u32>,
    nums: [u64; 7],
    #[serde(with = "rust_decimal::serde::str")]
    cost: Decimal,
}

/// The keys an intent added to one bucket.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct BucketAdd {
    pk: String,
    /// 32 hex digits per key.
    keys: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct CpMove {
    source: String,
    expected: Option<String>,
    position: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct TotalsOp {
    received: u64,
    counted: u64,
    duplicates: u64,
    skipped: BTreeMap<String, u64>,
}

/// A split batch's plan: enough to undo it before its commit point and redo it after.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Intent {
    checkpoints: Vec<CpMove>,
    bucket_chunks: Vec<Vec<BucketAdd>>,
    counter_chunks: Vec<Vec<CounterOp>>,
    totals: TotalsOp,
    #[serde(default)]
    max_hour: Option<i64>,
    #[serde(default)]
    prune_before: Option<i64>,
}

impl Intent {
    fn claim_chunks(&self) -> usize {
        self.checkpoints.len().div_ceil(TXN_ACTIONS)
    }
    fn steps(&self) -> usize {
        self.claim_chunks() + self.bucket_chunks.len() + self.counter_chunks.len()
    }
    /// Finish chunks: checkpoint moves, the first one also carrying the totals.
    fn finish_chunks(&self) -> Vec<&[CpMove]> {
        let first = self.checkpoints.len().min(TXN_ACTIONS - 1);
        let mut out = vec![&self.checkpoints[..first]];
        out.extend(self.checkpoints[first..].chunks(TXN_ACTIONS));
        out
    }
}

/// A dedup bucket as read.
#[derive(Debug, Clone, Default)]
struct Bucket {
    /// Sorted.
    keys: Vec<u128>,
    /// 0: the item does not exist.
    version: u64,
    hour: EpochSeconds,
}

/// A bucket write of this batch.
struct BucketWrite {
    pk: String,
    hour: EpochSeconds,
    old_version: u64,
    keys: Vec<u128>,
    added: Vec<u128>,
}

/// What one action in a transaction is, to interpret a cancellation.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Role {
    Checkpoint(String),
    Bucket,
    Other,
}

/// A transaction that did not go through.
enum TxnFailure {
    /// The condition of action `usize` failed.
    Condition(usize),
    Store(StoreError),
}

/// Why one attempt at a batch did not finish.
enum Attempt {
    /// A dedup bucket or the intent changed underneath: read again and retry.
    Conflict,
    /// A checkpoint is held by another batch's intent.
    Pending(String),
    Store(StoreError),
}

impl From<StoreError> for Attempt {
    fn from(e: StoreError) -> Self {
        Attempt::Store(e)
    }
}

// ---------------------------------------------------------------------------------------------
// Attribute helpers
// ---------------------------------------------------------------------------------------------

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn key(pk: &str, sk: &str) -> Item {
    HashMap::from([("pk".to_string(), s(pk)), ("sk".to_string(), s(sk))])
}

fn get_s<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    item.get(name).and_then(|v| v.as_s().ok()).map(String::as_str)
}

/// A DynamoDB Number as an exact decimal (moto writes small ones as `8.75E-8`).
fn get_dec(item: &Item, name: &str) -> Result<Decimal, StoreError> {
    let Some(v) = item.get(name) else { return Ok(Decimal::ZERO) };
    let text = v.as_n().map_err(|_| StoreError::Unavailable(format!("attribute {name} is not a number")))?;
    let parsed = if text.contains(['e', 'E']) { Decimal::from_scientific(text) } else { Decimal::from_str(text) };
    parsed.map(|d| d.normalize()).map_err(|e| StoreError::Unavailable(format!("attribute {name} = {text:?}: {e}")))
}

fn get_u64(item: &Item, name: &str) -> Result<u64, StoreError> {
    let d = get_dec(item, name)?;
    d.to_u64().ok_or_else(|| StoreError::Unavailable(format!("attribute {name} = {d} is not a count")))
}

fn get_i64(item: &Item, name: &str) -> Result<Option<i64>, StoreError> {
    if !item.contains_key(name) {
        return Ok(None);
    }
    get_dec(item, name)?
        .to_i64()
        .map(Some)
        .ok_or_else(|| StoreError::Unavailable(format!("attribute {name} is not an integer")))
}

fn usage_of(item: &Item) -> Result<Usage, StoreError> {
    Ok(Usage {
        input: get_u64(item, "input")?,
        output: get_u64(item, "output")?,
        cache_read: get_u64(item, "cache_read")?,
        cache_write: get_u64(item, "cache_write")?,
        requests: get_u64(item, "requests")?,
        errors: get_u64(item, "errors")?,
        no_usage: get_u64(item, "no_usage")?,
        est_cost: get_dec(item, "est_cost")?,
    })
}

fn nums_of(u: &Usage) -> [u64; 7] {
    [u.input, u.output, u.cache_read, u.cache_write, u.requests, u.errors, u.no_usage]
}

fn tenant_of(item: &Item) -> Result<TenantId, StoreError> {
    get_s(item, "tenant")
        .and_then(TenantId::new)
        .ok_or_else(|| StoreError::Unavailable("counter item without a tenant".into()))
}

fn keys_to_hex(keys: &[u128]) -> String {
    keys.iter().map(|k| format!("{k:032x}")).collect()
}

fn keys_from_hex(hex: &str) -> Result<Vec<u128>, StoreError> {
    (0..hex.len() / 32)
        .map(|i| u128::from_str_radix(&hex[i * 32..i * 32 + 32], 16))
        .collect::<Result<_, _>>()
        .map_err(|e| StoreError::Unavailable(format!("intent holds a bad key: {e}")))
}

fn keys_to_blob(keys: &[u128]) -> Blob {
    let mut b = Vec::with_capacity(keys.len() * 16);
    for k in keys {
        b.extend_from_slice(&k.to_be_bytes());
    }
    Blob::new(b)
}

fn keys_from_item(item: &Item) -> Vec<u128> {
    match item.get("keys").and_then(|v| v.as_b().ok()) {
        Some(b) => b.as_ref().chunks_exact(16).map(|c| u128::from_be_bytes(c.try_into().expect("16 bytes"))).collect(),
        None => Vec::new(),
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// FNV-1a, for stable small hashes (directory partition, shard rotation).
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100000001b3))
}

fn bucket_pk(hour: EpochSeconds, dedup: u128) -> String {
    let b = ((dedup >> 64) as u64) % DEDUP_BUCKETS;
    format!("S#{}#{b:02}", &hour_label(hour)[..13])
}

fn counter_pk(month: &str, shard: u32, tenant: &str) -> String {
    format!("C#{month}#{shard}#{tenant}")
}

fn dir_pk(month: &str, tenant: &str) -> String {
    format!("DIR#{month}#{}", fnv(tenant.as_bytes()) % DIR_PARTITIONS)
}

/// Builds expression attribute names and values without clashing with reserved words.
#[derive(Default)]
struct Expr {
    names: HashMap<String, String>,
    values: HashMap<String, AttributeValue>,
}

impl Expr {
    fn name(&mut self, name: &str) -> String {
        let k = format!("#a{}", self.names.len());
        self.names.insert(k.clone(), name.to_string());
        k
    }
    fn value(&mut self, v: AttributeValue) -> String {
        let k = format!(":v{}", self.values.len());
        self.values.insert(k.clone(), v);
        k
    }
    fn names(&self) -> Option<HashMap<String, String>> {
        (!self.names.is_empty()).then(|| self.names.clone())
    }
    fn values(&self) -> Option<HashMap<String, AttributeValue>> {
        (!self.values.is_empty()).then(|| self.values.clone())
    }
}

fn update(
    table: &str,
    pk: &str,
    sk: &str,
    expr: &Expr,
    update: String,
    condition: Option<String>,
) -> TransactWriteItem {
    let u = Update::builder()
        .table_name(table)
        .set_key(Some(key(pk, sk)))
        .update_expression(update)
        .set_condition_expression(condition)
        .set_expression_attribute_names(expr.names())
        .set_expression_attribute_values(expr.values())
        .build()
        .expect("update has its required fields");
    TransactWriteItem::builder().update(u).build()
}

/// Billed write units of an item of `bytes` written in a transaction (2 per started KB).
fn txn_units(bytes: usize) -> f64 {
    2.0 * bytes.div_ceil(1024).max(1) as f64
}

/// One transaction action with what it is and about how big the item is.
struct Action {
    item: TransactWriteItem,
    role: Role,
    bytes: usize,
}

// ---------------------------------------------------------------------------------------------
// The store
// ---------------------------------------------------------------------------------------------

impl DynamoStore {
    /// Connects to the table (which `create_table` made). No request is sent until first use.
    pub fn open(settings: &DynamoSettings) -> Result<DynamoStore, StoreError> {
        let rt =
            crate::aws::runtime().map_err(|e| StoreError::Unavailable(format!("cannot start the AWS runtime: {e}")))?;
        let sdk = crate::aws::block_on(&rt, crate::aws::sdk_config(&settings.aws));
        let client = Client::new(&sdk);
        let host =
            std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
        let nonce = fnv(format!("{}{:?}", std::process::id(), SystemTime::now()).as_bytes());
        let owner = format!("{host}|{}|{nonce:016x}", std::process::id());
        Ok(DynamoStore {
            rt,
            client,
            table: settings.table.clone(),
            shards: settings.shards.max(1),
            lease: settings.lease,
            dedup_ttl_secs: settings.dedup_ttl.as_secs() as i64,
            owner,
            host,
            nonce,
            batch_no: 0,
            intents: std::sync::atomic::AtomicU64::new(0),
            stats: Mutex::new(WriteStats::default()),
        })
    }

    /// Creates the table (on-demand billing, TTL on `expires`) if it does not exist, and waits
    /// until it is active. Running it again is harmless.
    pub fn create_table(&self) -> Result<(), StoreError> {
        crate::aws::block_on(&self.rt, async {
            let attr = |name: &str| {
                AttributeDefinition::builder()
                    .attribute_name(name)
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .expect("complete")
            };
            let schema = |name: &str, kind: KeyType| {
                KeySchemaElement::builder().attribute_name(name).key_type(kind).build().expect("complete")
            };
            let created = self
                .client
                .create_table()
                .table_name(&self.table)
                .attribute_definitions(attr("pk"))
                .attribute_definitions(attr("sk"))
                .key_schema(schema("pk", KeyType::Hash))
                .key_schema(schema("sk", KeyType::Range))
                .billing_mode(BillingMode::PayPerRequest)
                .send()
                .await;
            if let Err(e) = created {
                if e.as_service_error().map(|s| s.is_resource_in_use_exception()) != Some(true) {
                    return Err(sdk_error("create table", e));
                }
            }
            for _ in 0..600 {
                let d = self
                    .client
                    .describe_table()
                    .table_name(&self.table)
                    .send()
                    .await
                    .map_err(|e| sdk_error("describe table", e))?;
                if d.table().and_then(|t| t.table_status()).map(|s| s.as_str() == "ACTIVE") == Some(true) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let ttl =
                TimeToLiveSpecification::builder().enabled(true).attribute_name("expires").build().expect("complete");
            match self.client.update_time_to_live().table_name(&self.table).time_to_live_specification(ttl).send().await
            {
                Ok(_) => Ok(()),
                // Already on.
                Err(e)
                    if e.as_service_error()
                        .and_then(|s| s.message())
                        .is_some_and(|m| m.contains("already enabled")) =>
                {
                    Ok(())
                }
                Err(e) => Err(sdk_error("enable TTL", e)),
            }
        })
    }

    /// Checks that the table exists and can be reached (one `DescribeTable`).
    pub fn health_check(&self) -> Result<(), StoreError> {
        crate::aws::block_on(&self.rt, async {
            self.client.describe_table().table_name(&self.table).send().await.map(drop).map_err(|e| {
                match e.as_service_error() {
                    Some(s) if s.is_resource_not_found_exception() => StoreError::Unavailable(format!(
                        "DynamoDB table {:?} does not exist; run `tally init`",
                        self.table
                    )),
                    _ => sdk_error("describe table", e),
                }
            })
        })
    }

    fn run<F: std::future::Future + Send>(&self, fut: F) -> F::Output
    where
        F::Output: Send,
    {
        crate::aws::block_on(&self.rt, fut)
    }

    fn count_write(&self, requests: u64, units: f64, consumed: Option<f64>, txn: bool) {
        let mut s = self.stats.lock().expect("stats lock");
        s.write_requests += requests;
        s.write_units += units;
        if let Some(c) = consumed {
            s.consumed_write_units += c;
        }
        if txn {
            s.transactions += 1;
        }
    }

    fn count_read(&self, requests: u64) {
        self.stats.lock().expect("stats lock").read_requests += requests;
    }

    // ---- reads ------------------------------------------------------------------------------

    async fn get(&self, pk: &str, sk: &str) -> Result<Option<Item>, StoreError> {
        self.count_read(1);
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(pk, sk)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_error("get item", e))?;
        Ok(out.item)
    }

    /// Every item of a partition with an optional sort-key condition (`sk < :x` etc.).
    async fn query(&self, pk: &str, sk_condition: Option<(&str, &str)>) -> Result<Vec<Item>, StoreError> {
        let mut out = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let mut q = self
                .client
                .query()
                .table_name(&self.table)
                .consistent_read(true)
                .expression_attribute_values(":pk", s(pk))
                .set_exclusive_start_key(start.take());
            q = match sk_condition {
                None => q.key_condition_expression("pk = :pk"),
                Some((op, v)) => q
                    .key_condition_expression(if op == "begins_with" {
                        "pk = :pk AND begins_with(sk, :sk)".to_string()
                    } else {
                        format!("pk = :pk AND sk {op} :sk")
                    })
                    .expression_attribute_values(":sk", s(v)),
            };
            self.count_read(1);
            let page = q.send().await.map_err(|e| sdk_error("query", e))?;
            out.extend(page.items.unwrap_or_default());
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => return Ok(out),
            }
        }
    }

    /// Strongly consistent reads of many items by key, 100 per request.
    async fn batch_get(&self, keys: Vec<(String, String)>) -> Result<HashMap<(String, String), Item>, StoreError> {
        let mut out = HashMap::new();
        let mut pending: Vec<Item> = keys.iter().map(|(p, s)| key(p, s)).collect();
        let mut delay = Duration::from_millis(20);
        while !pending.is_empty() {
            let chunk: Vec<Item> = pending.drain(..pending.len().min(100)).collect();
            let req =
                KeysAndAttributes::builder().set_keys(Some(chunk)).consistent_read(true).build().expect("keys are set");
            self.count_read(1);
            let res = self
                .client
                .batch_get_item()
                .request_items(&self.table, req)
                .send()
                .await
                .map_err(|e| sdk_error("batch get", e))?;
            if let Some(mut r) = res.responses {
                for item in r.remove(&self.table).unwrap_or_default() {
                    let k = (
                        get_s(&item, "pk").unwrap_or_default().to_string(),
                        get_s(&item, "sk").unwrap_or_default().to_string(),
                    );
                    out.insert(k, item);
                }
            }
            if let Some(mut u) = res.unprocessed_keys {
                if let Some(ka) = u.remove(&self.table) {
                    if !ka.keys.is_empty() {
                        pending.extend(ka.keys);
                        tokio::time::sleep(jitter(delay)).await;
                        delay = (delay * 2).min(Duration::from_secs(2));
                    }
                }
            }
        }
        Ok(out)
    }

    async fn meta(&self) -> Result<(Option<i64>, Option<i64>), StoreError> {
        match self.get("META", "META").await? {
            None => Ok((None, None)),
            Some(item) => Ok((get_i64(&item, "max_hour")?, get_i64(&item, "prune_before")?)),
        }
    }

    // ---- transactions -----------------------------------------------------------------------

    /// Runs one transaction, retrying throttling and conflicts with backoff and jitter.
    async fn transact(&self, actions: Vec<Action>) -> Result<(), TxnFailure> {
        if actions.is_empty() {
            return Ok(());
        }
        let units: f64 = actions.iter().map(|a| txn_units(a.bytes)).sum();
        let count = actions.len() as u64;
        let items: Vec<TransactWriteItem> = actions.into_iter().map(|a| a.item).collect();
        let mut delay = Duration::from_millis(50);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let res = self
                .client
                .transact_write_items()
                .set_transact_items(Some(items.clone()))
                .return_consumed_capacity(ReturnConsumedCapacity::Total)
                .send()
                .await;
            let retry = match res {
                Ok(out) => {
                    let consumed: Option<f64> =
                        out.consumed_capacity.map(|c| c.iter().filter_map(|c| c.capacity_units).sum());
                    self.count_write(count, units, consumed.filter(|c| *c > 0.0), true);
                    return Ok(());
                }
                Err(e) => match e.as_service_error() {
                    Some(TransactWriteItemsError::TransactionCanceledException(c)) => {
                        let codes: Vec<&str> =
                            c.cancellation_reasons().iter().map(|r| r.code().unwrap_or("None")).collect();
                        if let Some(i) = codes.iter().position(|c| *c == "ConditionalCheckFailed") {
                            return Err(TxnFailure::Condition(i));
                        }
                        if codes.iter().any(|c| {
                            matches!(*c, "ThrottlingError" | "TransactionConflict" | "ProvisionedThroughputExceeded")
                        }) {
                            Some(e)
                        } else {
                            return Err(TxnFailure::Store(sdk_error("transaction", e)));
                        }
                    }
                    Some(TransactWriteItemsError::TransactionInProgressException(_)) => Some(e),
                    // Throttling, 5xx and network errors were retried by the SDK already.
                    _ => return Err(TxnFailure::Store(sdk_error("transaction", e))),
                },
            };
            if let Some(e) = retry {
                if attempt >= TXN_ATTEMPTS {
                    return Err(TxnFailure::Store(StoreError::Unavailable(format!(
                        "DynamoDB transaction still failing after {attempt} attempts: {}",
                        DisplayErrorContext(&e)
                    ))));
                }
                tracing::debug!(attempt, "dynamodb transaction throttled or conflicting, retrying");
                tokio::time::sleep(jitter(delay)).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }

    async fn put_plain(&self, item: Item, bytes: usize) -> Result<(), StoreError> {
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map_err(|e| sdk_error("put item", e))?;
        self.count_write(1, bytes.div_ceil(1024).max(1) as f64, None, false);
        Ok(())
    }

    fn counter_action(&self, op: &CounterOp, negate: bool) -> Action {
        let mut e = Expr::default();
        let mut adds = Vec::new();
        let sign = if negate { "-" } else { "" };
        for (name, v) in NUM_ATTRS.iter().zip(op.nums) {
            if v != 0 || !negate {
                adds.push(format!(
                    "{} {}",
                    e.name(name),
                    e.value(AttributeValue::N(format!("{}{v}", if v == 0 { "" } else { sign })))
                ));
            }
        }
        let cost = if negate { -op.cost } else { op.cost };
        adds.push(format!("{} {}", e.name("est_cost"), e.value(n(cost.normalize()))));
        let mut sets = vec![format!("{} = {}", e.name("tenant"), e.value(s(&op.tenant)))];
        if let Some(r) = &op.resource {
            sets.push(format!("{} = {}", e.name("resource"), e.value(s(r))));
        }
        if let Some(h) = op.hour {
            sets.push(format!("{} = {}", e.name("hour"), e.value(n(h))));
        }
        if let Some(sh) = op.shard {
            sets.push(format!("{} = {}", e.name("shard"), e.value(n(sh))));
        }
        let bytes =
            op.pk.len() + op.sk.len() + op.tenant.len() + op.resource.as_ref().map_or(0, String::len) + 8 * 12 + 60;
        Action {
            item: update(
                &self.table,
                &op.pk,
                &op.sk,
                &e,
                format!("ADD {} SET {}", adds.join(", "), sets.join(", ")),
                None,
            ),
            role: Role::Other,
            bytes,
        }
    }

    fn totals_action(&self, t: &TotalsOp) -> Option<Action> {
        if t.received == 0 && t.counted == 0 && t.duplicates == 0 && t.skipped.is_empty() {
            return None;
        }
        let mut e = Expr::default();
        let mut adds = Vec::new();
        for (name, v) in [("received", t.received), ("counted", t.counted), ("duplicates", t.duplicates)] {
            adds.push(format!("{} {}", e.name(name), e.value(n(v))));
        }
        for (reason, v) in &t.skipped {
            adds.push(format!("{} {}", e.name(&format!("skip_{reason}")), e.value(n(v))));
        }
        Some(Action {
            item: update(&self.table, "TOTALS", "TOTALS", &e, format!("ADD {}", adds.join(", ")), None),
            role: Role::Other,
            bytes: 200,
        })
    }

    fn bucket_action(&self, w: &BucketWrite) -> Result<Action, StoreError> {
        if w.keys.len() > BUCKET_MAX_KEYS {
            return Err(StoreError::Unavailable(format!(
                "dedup bucket {} would hold {} request ids, more than {BUCKET_MAX_KEYS}: over ~1.4 million records in one hour is beyond this table design",
                w.pk,
                w.keys.len()
            )));
        }
        let mut item = key(&w.pk, "S");
        item.insert("keys".into(), AttributeValue::B(keys_to_blob(&w.keys)));
        item.insert("v".into(), n(w.old_version + 1));
        item.insert("hour".into(), n(w.hour));
        item.insert("expires".into(), n(w.hour + self.dedup_ttl_secs));
        let mut e = Expr::default();
        let cond = if w.old_version == 0 {
            "attribute_not_exists(pk)".to_string()
        } else {
            format!("{} = {}", e.name("v"), e.value(n(w.old_version)))
        };
        let put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression(cond)
            .set_expression_attribute_names(e.names())
            .set_expression_attribute_values(e.values())
            .build()
            .expect("put has its required fields");
        Ok(Action {
            item: TransactWriteItem::builder().put(put).build(),
            role: Role::Bucket,
            bytes: w.keys.len() * 16 + 80,
        })
    }

    /// Moves a checkpoint: conditioned on the expected position and on no batch holding it
    /// (`held_by` None), or on this intent holding it.
    fn checkpoint_action(&self, cp: &CpMove, held_by: Option<&str>) -> Action {
        let mut e = Expr::default();
        let pos = e.name("position");
        let pending = e.name("pending");
        let update_expr = format!("SET {pos} = {} REMOVE {pending}", e.value(s(&cp.position)));
        let cond = match held_by {
            Some(id) => format!("{pending} = {}", e.value(s(id))),
            None => {
                let at = match &cp.expected {
                    None => format!("attribute_not_exists({pos})"),
                    Some(x) => format!("{pos} = {}", e.value(s(x))),
                };
                format!("{at} AND attribute_not_exists({pending})")
            }
        };
        Action {
            item: update(&self.table, "CP", &cp.source, &e, update_expr, Some(cond)),
            role: Role::Checkpoint(cp.source.clone()),
            bytes: cp.source.len() + cp.position.len() + 40,
        }
    }

    /// Why a checkpoint condition failed: held by an intent, or not at the expected position.
    async fn checkpoint_refusal(&self, cp: &CpMove) -> Attempt {
        match self.get("CP", &cp.source).await {
            Err(e) => Attempt::Store(e),
            Ok(item) => {
                let item = item.unwrap_or_default();
                if let Some(p) = get_s(&item, "pending") {
                    return Attempt::Pending(p.to_string());
                }
                let found = get_s(&item, "position").map(str::to_string);
                if found == cp.expected {
                    // It moved and came back, or the bucket raced: just try again.
                    Attempt::Conflict
                } else {
                    Attempt::Store(StoreError::ConditionFailed {
                        source_key: cp.source.clone(),
                        expected: cp.expected.clone(),
                        found,
                    })
                }
            }
        }
    }

    // ---- apply ------------------------------------------------------------------------------

    async fn apply_async(&self, batch: &Batch, shard: u32) -> Result<Applied, StoreError> {
        let mut conflicts = 0;
        let mut delay = Duration::from_millis(20);
        loop {
            match self.try_apply(batch, shard).await {
                Ok(a) => return Ok(a),
                Err(Attempt::Store(e)) => return Err(e),
                Err(Attempt::Pending(id)) => self.recover(&id, true).await?,
                Err(Attempt::Conflict) => {
                    conflicts += 1;
                    if conflicts >= CONFLICT_ATTEMPTS {
                        return Err(StoreError::Busy("dedup buckets kept changing underneath this batch".into()));
                    }
                    tokio::time::sleep(jitter(delay)).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    async fn try_apply(&self, batch: &Batch, shard: u32) -> Result<Applied, Attempt> {
        let moves: Vec<CpMove> = batch
            .checkpoints
            .iter()
            .map(|c| CpMove { source: c.source.clone(), expected: c.expected.clone(), position: c.position.clone() })
            .collect();
        // Checkpoints first: a stale or held one refuses the batch before anything is read.
        let cp_items = self.batch_get(moves.iter().map(|c| ("CP".to_string(), c.source.clone())).collect()).await?;
        for cp in &moves {
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

        // Dedup: read every bucket the batch touches, then decide in batch order.
        let mut bucket_of: Vec<String> = Vec::with_capacity(batch.entries.len());
        let mut wanted: BTreeMap<String, EpochSeconds> = BTreeMap::new();
        for e in &batch.entries {
            let pk = bucket_pk(e.key.hour, e.dedup.as_u128());
            wanted.insert(pk.clone(), e.key.hour);
            bucket_of.push(pk);
        }
        let read = self.batch_get(wanted.keys().map(|pk| (pk.clone(), "S".to_string())).collect()).await?;
        let mut buckets: BTreeMap<String, Bucket> = BTreeMap::new();
        for (pk, hour) in &wanted {
            let b = match read.get(&(pk.clone(), "S".to_string())) {
                None => Bucket { hour: *hour, ..Bucket::default() },
                Some(item) => {
                    let version = get_u64(item, "v")?;
                    // A bucket of an hour before the dedup horizon is forgotten (TTL deletes it later).
                    let keys = if horizon.is_some_and(|h| *hour < h) { Vec::new() } else { keys_from_item(item) };
                    Bucket { keys, version, hour: *hour }
                }
            };
            buckets.insert(pk.clone(), b);
        }
        let mut duplicates = Vec::new();
        let mut added: BTreeMap<&str, Vec<u128>> = BTreeMap::new();
        let mut in_batch: HashSet<(&str, u128)> = HashSet::with_capacity(batch.entries.len());
        for (i, e) in batch.entries.iter().enumerate() {
            let k = e.dedup.as_u128();
            let pk = bucket_of[i].as_str();
            if buckets[pk].keys.binary_search(&k).is_ok() || !in_batch.insert((pk, k)) {
                duplicates.push(i);
            } else {
                added.entry(pk).or_default().push(k);
            }
        }
        let mut writes: Vec<BucketWrite> = Vec::with_capacity(added.len());
        for (pk, mut new) in added {
            let b = &buckets[pk];
            new.sort_unstable();
            let mut keys = Vec::with_capacity(b.keys.len() + new.len());
            keys.extend_from_slice(&b.keys);
            keys.extend_from_slice(&new);
            keys.sort_unstable();
            writes.push(BucketWrite { pk: pk.to_string(), hour: b.hour, old_version: b.version, keys, added: new });
        }

        // Counter deltas: hours, their day and month roll-ups, and each tenant's month total.
        let hours = batch.counted_sums(&duplicates);
        let mut ops = Vec::new();
        for (k, u) in &hours {
            let month = month_of(k.hour);
            ops.push(CounterOp {
                pk: counter_pk(&month, shard, k.tenant.as_str()),
                sk: format!("T#{}#{}", &hour_label(k.hour)[..13], k.resource),
                tenant: k.tenant.as_str().to_string(),
                resource: Some(k.resource.as_str().to_string()),
                hour: Some(k.hour),
                shard: None,
                nums: nums_of(u),
                cost: u.est_cost,
            });
        }
        let mut tenant_months: BTreeMap<(TenantId, String), Usage> = BTreeMap::new();
        for ((tenant, day, resource), u) in rollup(&hours, Granularity::Day) {
            ops.push(CounterOp {
                pk: counter_pk(&day[..7], shard, tenant.as_str()),
                sk: format!("D#{day}#{resource}"),
                tenant: tenant.as_str().to_string(),
                resource: Some(resource.as_str().to_string()),
                hour: None,
                shard: None,
                nums: nums_of(&u),
                cost: u.est_cost,
            });
        }
        for ((tenant, month, resource), u) in rollup(&hours, Granularity::Month) {
            ops.push(CounterOp {
                pk: counter_pk(&month, shard, tenant.as_str()),
                sk: format!("M#{resource}"),
                tenant: tenant.as_str().to_string(),
                resource: Some(resource.as_str().to_string()),
                hour: None,
                shard: None,
                nums: nums_of(&u),
                cost: u.est_cost,
            });
            *tenant_months.entry((tenant, month)).or_default() += &u;
        }
        for ((tenant, month), u) in tenant_months {
            ops.push(CounterOp {
                pk: dir_pk(&month, tenant.as_str()),
                sk: format!("{shard}#{tenant}"),
                tenant: tenant.as_str().to_string(),
                resource: None,
                hour: None,
                shard: Some(shard),
                nums: nums_of(&u),
                cost: u.est_cost,
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

        let new_max = hours.keys().map(|k| k.hour).max().filter(|h| max_hour.map_or(true, |m| *h > m));
        let new_horizon = batch.prune_before.filter(|h| horizon.map_or(true, |o| *h > o));
        let bucket_actions: Vec<Action> = writes.iter().map(|w| self.bucket_action(w)).collect::<Result<_, _>>()?;
        let total_actions = moves.len() + bucket_actions.len() + ops.len() + 2;
        let total_bytes: usize = bucket_actions.iter().map(|a| a.bytes).sum::<usize>() + ops.len() * 300;
        if total_actions <= 100 && total_bytes <= TXN_BYTES {
            let mut actions: Vec<Action> = moves.iter().map(|c| self.checkpoint_action(c, None)).collect();
            actions.extend(bucket_actions);
            actions.extend(ops.iter().map(|o| self.counter_action(o, false)));
            actions.extend(self.totals_action(&totals));
            actions.extend(self.meta_action(new_max, new_horizon));
            let roles: Vec<Role> = actions.iter().map(|a| a.role.clone()).collect();
            match self.transact(actions).await {
                Ok(()) => {}
                Err(TxnFailure::Store(e)) => return Err(Attempt::Store(e)),
                Err(TxnFailure::Condition(i)) => {
                    return Err(match &roles[i] {
                        Role::Checkpoint(src) => {
                            self.checkpoint_refusal(moves.iter().find(|c| &c.source == src).expect("a move")).await
                        }
                        _ => Attempt::Conflict,
                    })
                }
            }
        } else {
            self.apply_split(moves, writes, bucket_actions, ops, totals, new_max, new_horizon).await?;
        }
        Ok(applied)
    }

    /// Raises `max_hour` and the dedup horizon in the batch's transaction; each only ever goes
    /// up, so the condition fails only when another writer raised it meanwhile (then the batch
    /// is read and tried again).
    fn meta_action(&self, new_max: Option<i64>, new_horizon: Option<i64>) -> Option<Action> {
        let mut e = Expr::default();
        let mut sets = Vec::new();
        let mut conds = Vec::new();
        for (attr, new) in [("max_hour", new_max), ("prune_before", new_horizon)] {
            let Some(new) = new else { continue };
            let a = e.name(attr);
            let v = e.value(n(new));
            sets.push(format!("{a} = {v}"));
            conds.push(format!("(attribute_not_exists({a}) OR {a} < {v})"));
        }
        if sets.is_empty() {
            return None;
        }
        let item =
            update(&self.table, "META", "META", &e, format!("SET {}", sets.join(", ")), Some(conds.join(" AND ")));
        Some(Action { item, role: Role::Other, bytes: 100 })
    }

    /// Raises `max_hour` and the dedup horizon outside a transaction, for a split batch; a
    /// failed condition means another writer raised it further already.
    async fn raise_meta(&self, new_max: Option<i64>, new_horizon: Option<i64>) -> Result<(), StoreError> {
        for (attr, new) in [("max_hour", new_max), ("prune_before", new_horizon)] {
            let Some(new) = new else { continue };
            let mut e = Expr::default();
            let a = e.name(attr);
            let v = e.value(n(new));
            let res = self
                .client
                .update_item()
                .table_name(&self.table)
                .set_key(Some(key("META", "META")))
                .update_expression(format!("SET {a} = {v}"))
                .condition_expression(format!("attribute_not_exists({a}) OR {a} < {v}"))
                .set_expression_attribute_names(e.names())
                .set_expression_attribute_values(e.values())
                .send()
                .await;
            match res {
                Ok(_) => self.count_write(1, 1.0, None, false),
                Err(e) if e.as_service_error().is_some_and(|s| s.is_conditional_check_failed_exception()) => {}
                Err(e) => return Err(sdk_error("update meta", e)),
            }
        }
        Ok(())
    }

    // ---- split batches ----------------------------------------------------------------------

    async fn apply_split(
        &self,
        moves: Vec<CpMove>,
        writes: Vec<BucketWrite>,
        bucket_actions: Vec<Action>,
        ops: Vec<CounterOp>,
        totals: TotalsOp,
        max_hour: Option<i64>,
        prune_before: Option<i64>,
    ) -> Result<(), Attempt> {
        // Bucket chunks by count and size.
        let mut bucket_chunks: Vec<Vec<BucketAdd>> = Vec::new();
        let mut action_chunks: Vec<Vec<Action>> = Vec::new();
        let mut bytes = 0;
        for (w, a) in writes.iter().zip(bucket_actions) {
            if action_chunks.last().map_or(true, |c| c.len() >= TXN_ACTIONS || bytes + a.bytes > TXN_BYTES) {
                action_chunks.push(Vec::new());
                bucket_chunks.push(Vec::new());
                bytes = 0;
            }
            bytes += a.bytes;
            action_chunks.last_mut().expect("pushed").push(a);
            bucket_chunks.last_mut().expect("pushed").push(BucketAdd { pk: w.pk.clone(), keys: keys_to_hex(&w.added) });
        }
        let intent = Intent {
            checkpoints: moves,
            bucket_chunks,
            counter_chunks: ops.chunks(TXN_ACTIONS).map(<[CounterOp]>::to_vec).collect(),
            totals,
            max_hour,
            prune_before,
        };
        let id = format!("{:016x}-{}", self.nonce, self.intents.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        self.write_intent(&id, &intent).await?;

        let mut step = 0usize;
        let mut bucket_actions = action_chunks.into_iter();
        for s in 0..intent.steps() {
            let claims = intent.claim_chunks();
            let actions: Vec<Action> = if s < claims {
                intent.checkpoints[s * TXN_ACTIONS..]
                    .iter()
                    .take(TXN_ACTIONS)
                    .map(|c| self.claim_action(c, &id))
                    .collect()
            } else if s < claims + intent.bucket_chunks.len() {
                bucket_actions.next().expect("one action chunk per bucket chunk")
            } else {
                intent.counter_chunks[s - claims - intent.bucket_chunks.len()]
                    .iter()
                    .map(|o| self.counter_action(o, false))
                    .collect()
            };
            match self.step(&id, actions, "step", s).await {
                Ok(()) => step = s + 1,
                Err(failure) => {
                    let why = match failure {
                        TxnFailure::Store(e) => Attempt::Store(e),
                        TxnFailure::Condition(i) if s < claims => {
                            self.checkpoint_refusal(&intent.checkpoints[s * TXN_ACTIONS + i]).await
                        }
                        TxnFailure::Condition(_) => Attempt::Conflict,
                    };
                    // Undo what this batch did, then report why it stopped.
                    self.undo(&id, &intent, step).await?;
                    return Err(why);
                }
            }
        }
        self.commit(&id, intent.steps()).await?;
        self.finish(&id, &intent, 0).await?;
        Ok(())
    }

    async fn write_intent(&self, id: &str, intent: &Intent) -> Result<(), StoreError> {
        let json = serde_json::to_string(intent).map_err(|e| StoreError::Backend(Box::new(e)))?;
        let parts: Vec<&str> = {
            let mut out = Vec::new();
            let mut rest = json.as_str();
            while !rest.is_empty() {
                let mut cut = rest.len().min(INTENT_PART_BYTES);
                while !rest.is_char_boundary(cut) {
                    cut -= 1;
                }
                out.push(&rest[..cut]);
                rest = &rest[cut..];
            }
            out
        };
        let expires = now_ms() / 1000 + 7 * 86_400;
        for (i, p) in parts.iter().enumerate() {
            let mut item = key(&format!("I#{id}"), &format!("P{i:04}"));
            item.insert("body".into(), s(*p));
            item.insert("expires".into(), n(expires));
            self.put_plain(item, p.len() + 40).await?;
        }
        let mut header = key(&format!("I#{id}"), "H");
        header.insert("owner".into(), s(&self.owner));
        header.insert("lease".into(), n(now_ms() + self.lease.as_millis() as i64));
        header.insert("step".into(), n(0));
        header.insert("fstep".into(), n(0));
        header.insert("state".into(), s("open"));
        header.insert("parts".into(), n(parts.len()));
        header.insert("expires".into(), n(expires));
        self.put_plain(header, 200).await
    }

    async fn read_intent(&self, id: &str) -> Result<Option<(Item, Intent)>, StoreError> {
        let items = self.query(&format!("I#{id}"), None).await?;
        let Some(header) = items.iter().find(|i| get_s(i, "sk") == Some("H")).cloned() else { return Ok(None) };
        let mut parts: Vec<(&str, &str)> = items
            .iter()
            .filter_map(|i| Some((get_s(i, "sk")?, get_s(i, "body")?)))
            .filter(|(sk, _)| sk.starts_with('P'))
            .collect();
        parts.sort();
        let json: String = parts.iter().map(|(_, b)| *b).collect();
        let intent = serde_json::from_str(&json)
            .map_err(|e| StoreError::Unavailable(format!("intent {id} cannot be read: {e}")))?;
        Ok(Some((header, intent)))
    }

    fn claim_action(&self, cp: &CpMove, id: &str) -> Action {
        let mut e = Expr::default();
        let pos = e.name("position");
        let pending = e.name("pending");
        let at = match &cp.expected {
            None => format!("attribute_not_exists({pos})"),
            Some(x) => format!("{pos} = {}", e.value(s(x))),
        };
        let update_expr = format!("SET {pending} = {}", e.value(s(id)));
        Action {
            item: update(
                &self.table,
                "CP",
                &cp.source,
                &e,
                update_expr,
                Some(format!("{at} AND attribute_not_exists({pending})")),
            ),
            role: Role::Checkpoint(cp.source.clone()),
            bytes: cp.source.len() + 80,
        }
    }

    /// One step of an intent: `actions` plus moving the header's `counter` from `from` to
    /// `from + 1` (or down, for an undo), conditioned on the owner. A condition failure of the
    /// header itself means another process took the intent over.
    async fn step(&self, id: &str, mut actions: Vec<Action>, counter: &str, from: usize) -> Result<(), TxnFailure> {
        self.step_to(id, &mut actions, counter, from, from + 1);
        let header = actions.len() - 1;
        match self.transact(actions).await {
            Err(TxnFailure::Condition(i)) if i == header => Err(TxnFailure::Store(StoreError::Unavailable(format!(
                "intent {id} was taken over by another process"
            )))),
            other => other,
        }
    }

    fn step_to(&self, id: &str, actions: &mut Vec<Action>, counter: &str, from: usize, to: usize) {
        let mut e = Expr::default();
        let c = e.name(counter);
        let owner = e.name("owner");
        let lease = e.name("lease");
        let update_expr =
            format!("SET {c} = {}, {lease} = {}", e.value(n(to)), e.value(n(now_ms() + self.lease.as_millis() as i64)));
        let cond = format!("{c} = {} AND {owner} = {}", e.value(n(from)), e.value(s(&self.owner)));
        actions.push(Action {
            item: update(&self.table, &format!("I#{id}"), "H", &e, update_expr, Some(cond)),
            role: Role::Other,
            bytes: 200,
        });
    }

    /// Takes back the first `step` steps of an intent, last first, then deletes it.
    async fn undo(&self, id: &str, intent: &Intent, mut step: usize) -> Result<(), StoreError> {
        let claims = intent.claim_chunks();
        while step > 0 {
            let s = step - 1;
            let mut actions: Vec<Action> = if s < claims {
                intent.checkpoints[s * TXN_ACTIONS..].iter().take(TXN_ACTIONS).map(|c| self.release_action(c)).collect()
            } else if s < claims + intent.bucket_chunks.len() {
                self.unbucket_actions(&intent.bucket_chunks[s - claims]).await?
            } else {
                intent.counter_chunks[s - claims - intent.bucket_chunks.len()]
                    .iter()
                    .map(|o| self.counter_action(o, true))
                    .collect()
            };
            self.step_to(id, &mut actions, "step", step, s);
            let header = actions.len() - 1;
            match self.transact(actions).await {
                Ok(()) => step = s,
                // A bucket changed since it was read for the undo: read it again.
                Err(TxnFailure::Condition(i))
                    if i != header && s >= claims && s < claims + intent.bucket_chunks.len() =>
                {
                    continue
                }
                Err(TxnFailure::Condition(_)) => {
                    return Err(StoreError::Unavailable(format!(
                        "intent {id} was taken over by another process during undo"
                    )))
                }
                Err(TxnFailure::Store(e)) => return Err(e),
            }
        }
        self.delete_intent(id).await
    }

    fn release_action(&self, cp: &CpMove) -> Action {
        let mut e = Expr::default();
        let update_expr = format!("REMOVE {}", e.name("pending"));
        Action {
            item: update(&self.table, "CP", &cp.source, &e, update_expr, None),
            role: Role::Checkpoint(cp.source.clone()),
            bytes: 80,
        }
    }

    /// Bucket writes that take an intent's keys out again.
    async fn unbucket_actions(&self, chunk: &[BucketAdd]) -> Result<Vec<Action>, StoreError> {
        let read = self.batch_get(chunk.iter().map(|b| (b.pk.clone(), "S".to_string())).collect()).await?;
        let mut out = Vec::new();
        for b in chunk {
            let Some(item) = read.get(&(b.pk.clone(), "S".to_string())) else { continue };
            let remove: HashSet<u128> = keys_from_hex(&b.keys)?.into_iter().collect();
            let keys: Vec<u128> = keys_from_item(item).into_iter().filter(|k| !remove.contains(k)).collect();
            let hour = get_i64(item, "hour")?.unwrap_or_default();
            let w = BucketWrite { pk: b.pk.clone(), hour, old_version: get_u64(item, "v")?, keys, added: Vec::new() };
            out.push(self.bucket_action(&w)?);
        }
        Ok(out)
    }

    async fn commit(&self, id: &str, steps: usize) -> Result<(), StoreError> {
        let mut e = Expr::default();
        let state = e.name("state");
        let update_expr = format!("SET {state} = {}", e.value(s("committed")));
        let cond =
            format!("{} = {} AND {} = {}", e.name("step"), e.value(n(steps)), e.name("owner"), e.value(s(&self.owner)));
        let item = update(&self.table, &format!("I#{id}"), "H", &e, update_expr, Some(cond));
        match self.transact(vec![Action { item, role: Role::Other, bytes: 200 }]).await {
            Ok(()) => Ok(()),
            Err(TxnFailure::Condition(_)) => {
                Err(StoreError::Unavailable(format!("intent {id} was taken over before its commit")))
            }
            Err(TxnFailure::Store(e)) => Err(e),
        }
    }

    /// Redoes the finish steps from `fstep`: `max_hour` and the horizon, checkpoint moves and
    /// totals; then deletes the intent.
    async fn finish(&self, id: &str, intent: &Intent, fstep: usize) -> Result<(), StoreError> {
        self.raise_meta(intent.max_hour, intent.prune_before).await?;
        for (f, chunk) in intent.finish_chunks().into_iter().enumerate().skip(fstep) {
            let mut actions: Vec<Action> = chunk.iter().map(|c| self.checkpoint_action(c, Some(id))).collect();
            if f == 0 {
                actions.extend(self.totals_action(&intent.totals));
            }
            match self.step(id, actions, "fstep", f).await {
                Ok(()) => {}
                Err(TxnFailure::Store(e)) => return Err(e),
                Err(TxnFailure::Condition(_)) => {
                    return Err(StoreError::Unavailable(format!(
                        "intent {id}: a checkpoint it holds was changed by another writer"
                    )))
                }
            }
        }
        self.delete_intent(id).await
    }

    async fn delete_intent(&self, id: &str) -> Result<(), StoreError> {
        let pk = format!("I#{id}");
        let items = self.query(&pk, None).await?;
        for item in items {
            let Some(sk) = get_s(&item, "sk") else { continue };
            self.client
                .delete_item()
                .table_name(&self.table)
                .set_key(Some(key(&pk, sk)))
                .send()
                .await
                .map_err(|e| sdk_error("delete intent", e))?;
            self.count_write(1, 1.0, None, false);
        }
        Ok(())
    }

    /// Whether the writer that owns an intent is gone: this store itself, a process of this
    /// host that no longer exists, or a lease that ran out.
    fn owner_gone(&self, header: &Item) -> bool {
        let owner = get_s(header, "owner").unwrap_or_default();
        if owner == self.owner {
            return true;
        }
        let mut parts = owner.split('|');
        if let (Some(host), Some(pid)) = (parts.next(), parts.next()) {
            if !self.host.is_empty()
                && host == self.host
                && pid != std::process::id().to_string()
                && !std::path::Path::new(&format!("/proc/{pid}")).exists()
            {
                return true;
            }
        }
        get_i64(header, "lease").ok().flatten().map_or(true, |l| l < now_ms())
    }

    /// Finishes another writer's intent: undoes it before its commit point, redoes it after.
    /// With `wait`, waits for a live owner's lease to run out first.
    async fn recover(&self, id: &str, wait: bool) -> Result<(), StoreError> {
        let deadline = std::time::Instant::now() + self.lease + Duration::from_secs(5);
        loop {
            let Some((header, intent)) = self.read_intent(id).await? else {
                // Finished meanwhile, or only a stray marker is left: clear it.
                return self.clear_stray(id).await;
            };
            if !self.owner_gone(&header) {
                if !wait || std::time::Instant::now() > deadline {
                    return Err(StoreError::Busy(format!("checkpoint held by batch {id} of a live writer").into()));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            // Take it over: owner and lease, conditioned on the owner we saw.
            let mut e = Expr::default();
            let owner = e.name("owner");
            let update_expr = format!(
                "SET {owner} = {}, {} = {}",
                e.value(s(&self.owner)),
                e.name("lease"),
                e.value(n(now_ms() + self.lease.as_millis() as i64))
            );
            let cond = format!("{owner} = {}", e.value(s(get_s(&header, "owner").unwrap_or_default())));
            let item = update(&self.table, &format!("I#{id}"), "H", &e, update_expr, Some(cond));
            match self.transact(vec![Action { item, role: Role::Other, bytes: 200 }]).await {
                Ok(()) => {}
                Err(TxnFailure::Condition(_)) => continue,
                Err(TxnFailure::Store(e)) => return Err(e),
            }
            let step = get_u64(&header, "step")? as usize;
            tracing::warn!(
                intent = id,
                state = get_s(&header, "state").unwrap_or_default(),
                step,
                "finishing a batch its writer left half done"
            );
            return if get_s(&header, "state") == Some("committed") {
                self.finish(id, &intent, get_u64(&header, "fstep")? as usize).await
            } else {
                self.undo(id, &intent, step).await
            };
        }
    }

    /// Removes `pending` markers that name an intent which no longer exists.
    async fn clear_stray(&self, id: &str) -> Result<(), StoreError> {
        for item in self.query("CP", None).await? {
            if get_s(&item, "pending") == Some(id) {
                let source = get_s(&item, "sk").unwrap_or_default().to_string();
                let mut e = Expr::default();
                let p = e.name("pending");
                let cond = format!("{p} = {}", e.value(s(id)));
                let item = update(&self.table, "CP", &source, &e, format!("REMOVE {p}"), Some(cond));
                let _ = self.transact(vec![Action { item, role: Role::Other, bytes: 80 }]).await;
            }
        }
        Ok(())
    }

    async fn checkpoints_async(&self) -> Result<HashMap<String, String>, StoreError> {
        let items = self.query("CP", None).await?;
        let held: std::collections::BTreeSet<String> =
            items.iter().filter_map(|i| get_s(i, "pending")).map(str::to_string).collect();
        if held.is_empty() {
            return Ok(items
                .iter()
                .filter_map(|i| Some((get_s(i, "sk")?.to_string(), get_s(i, "position")?.to_string())))
                .collect());
        }
        // Finish what dead writers left, then read again. A live writer's batch is reported at
        // its committed positions.
        for id in &held {
            match self.recover(id, false).await {
                Ok(()) | Err(StoreError::Busy(_)) => {}
                Err(e) => return Err(e),
            }
        }
        let items = self.query("CP", None).await?;
        let mut out = HashMap::new();
        for i in &items {
            let (Some(src), pos) = (get_s(i, "sk"), get_s(i, "position")) else { continue };
            let mut pos = pos.map(str::to_string);
            if let Some(id) = get_s(i, "pending") {
                if let Some((h, intent)) = self.read_intent(id).await? {
                    if get_s(&h, "state") == Some("committed") {
                        pos = intent.checkpoints.iter().find(|c| c.source == src).map(|c| c.position.clone()).or(pos);
                    }
                }
            }
            if let Some(p) = pos {
                out.insert(src.to_string(), p);
            }
        }
        Ok(out)
    }

    /// Every (tenant, shard) with counters in a month, from the directory, with its month total.
    async fn directory(&self, month: &str) -> Result<Vec<(TenantId, u32, Usage)>, StoreError> {
        let mut out = Vec::new();
        for d in 0..DIR_PARTITIONS {
            for item in self.query(&format!("DIR#{month}#{d}"), None).await? {
                let shard = get_u64(&item, "shard")? as u32;
                out.push((tenant_of(&item)?, shard, usage_of(&item)?));
            }
        }
        Ok(out)
    }
}

/// A retry delay with full jitter: uniformly in [delay/2, delay).
fn jitter(delay: Duration) -> Duration {
    let r = fnv(&now_ms().to_le_bytes()) ^ u64::from(std::process::id());
    let half = delay.as_micros() as u64 / 2;
    Duration::from_micros(half + r % half.max(1))
}

fn is_transient<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> bool {
    match e {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => true,
        SdkError::ServiceError(s) => matches!(
            s.err().code(),
            Some(
                "ThrottlingException"
                    | "ProvisionedThroughputExceededException"
                    | "RequestLimitExceeded"
                    | "InternalServerError"
                    | "ServiceUnavailable"
            )
        ),
        _ => false,
    }
}

/// An SDK error as a store error: throttling and transient failures (after the SDK's own
/// retries) are `Unavailable`, everything else `Backend`. Neither is retried by the ingester.
fn sdk_error<E, R>(what: &str, e: SdkError<E, R>) -> StoreError
where
    E: std::error::Error + ProvideErrorMetadata + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    if is_transient(&e) {
        StoreError::Unavailable(format!("dynamodb {what}: {}", DisplayErrorContext(&e)))
    } else {
        StoreError::Backend(format!("dynamodb {what}: {}", DisplayErrorContext(&e)).into())
    }
}

impl CounterStore for DynamoStore {
    fn apply(&mut self, batch: &Batch) -> Result<Applied, StoreError> {
        self.batch_no += 1;
        let shard = ((self.nonce.wrapping_add(self.batch_no)) % u64::from(self.shards)) as u32;
        self.run(self.apply_async(batch, shard))
    }

    fn checkpoints(&self) -> Result<HashMap<String, String>, StoreError> {
        self.run(self.checkpoints_async())
    }

    fn max_hour(&self) -> Result<Option<EpochSeconds>, StoreError> {
        self.run(async { Ok(self.meta().await?.0) })
    }

    fn period_usage(&self, tenant: &TenantId, month: &str) -> Result<PeriodUsage, StoreError> {
        month_range(month)?;
        self.run(async {
            let mut out = PeriodUsage { tenant: tenant.clone(), period: month.to_string(), ..PeriodUsage::default() };
            for shard in 0..self.shards {
                for item in self.query(&counter_pk(month, shard, tenant.as_str()), Some(("<", "T"))).await? {
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
        self.run(async {
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
        self.run(async {
            let mut by: BTreeMap<CounterKey, Usage> = BTreeMap::new();
            for (tenant, shard, _) in self.directory(month).await? {
                for item in self.query(&counter_pk(month, shard, tenant.as_str()), Some(("begins_with", "T#"))).await? {
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
                    };
                    *by.entry(key).or_default() += &u;
                }
            }
            Ok(by.into_iter().collect())
        })
    }

    fn totals(&self) -> Result<IngestTotals, StoreError> {
        self.run(async {
            let mut out = IngestTotals::default();
            let Some(item) = self.get("TOTALS", "TOTALS").await? else { return Ok(out) };
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
        Some(*self.stats.lock().expect("stats lock"))
    }
}
