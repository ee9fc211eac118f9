//! The counter store: one trait, with an embedded SQLite backend (the default).
//!
//! A store applies a [`Batch`] exactly once: the batch's records are checked against the
//! dedup index, the new ones are summed into hourly, daily and monthly counters, and the
//! source positions the batch came from are moved — all in one atomic write. If the write
//! fails nothing of it is visible; if it succeeds all of it is. The behaviour is pinned by the
//! conformance suite in `tests/suite/common/conformance.rs`, which every backend runs.

#[cfg(feature = "aws")]
pub mod dynamodb;
pub mod sqlite;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::ids::{EpochSeconds, TenantId};
use crate::month::Month;
use crate::quarantine::Reason;
use crate::usage::{add_to, CounterKey, Entry, Resource, Sums, Usage};

/// `[store]`: where the counters live.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `sqlite` (the embedded default) or `dynamodb` (needs a build with the `aws` feature).
    #[serde(default = "StoreConfig::default_backend")]
    pub backend: String,
    /// The SQLite file.
    #[serde(default = "StoreConfig::default_path")]
    pub path: PathBuf,
    /// SQLite `synchronous`: `normal` survives a killed process; `full` also a power cut.
    #[serde(default = "StoreConfig::default_synchronous")]
    pub synchronous: String,
    /// DynamoDB: the table (`tally init` creates it).
    #[serde(default = "StoreConfig::default_table")]
    pub table: String,
    /// DynamoDB: the region; default from the standard AWS chain (`AWS_REGION`, profile).
    #[serde(default)]
    pub region: Option<String>,
    /// DynamoDB: an endpoint URL such as `http://127.0.0.1:5000` (moto); default from the
    /// standard chain (`AWS_ENDPOINT_URL`), else AWS itself. Credentials never go here.
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// DynamoDB: counter shards per tenant, so one hot tenant can go past one partition's write
    /// limit; reads sum the shards. Only ever raise it.
    #[serde(default = "StoreConfig::default_shards")]
    pub shards: u32,
    /// DynamoDB: seconds a batch split over several transactions stays owned by its writer
    /// without progress before another process may finish it.
    #[serde(default = "StoreConfig::default_lease_seconds")]
    pub lease_seconds: f64,
}

/// The counter store `[store] backend` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The embedded SQLite file (the default).
    Sqlite,
    /// DynamoDB (the `aws` feature).
    Dynamodb,
}

impl Backend {
    /// The name as the config writes it.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Dynamodb => "dynamodb",
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl StoreConfig {
    /// The backend, or why `backend` names none (the config's validation reports it, naming
    /// the field, so a loaded config always has one).
    pub fn parse_backend(&self) -> Result<Backend, String> {
        match self.backend.as_str() {
            "sqlite" => Ok(Backend::Sqlite),
            "dynamodb" => Ok(Backend::Dynamodb),
            _ => Err("must be \"sqlite\" or \"dynamodb\"".into()),
        }
    }

    /// The backend of a validated config (`sqlite` for one that names none).
    pub fn kind(&self) -> Backend {
        self.parse_backend().unwrap_or(Backend::Sqlite)
    }

    fn default_backend() -> String {
        "sqlite".into()
    }
    fn default_path() -> PathBuf {
        "tally.sqlite".into()
    }
    fn default_synchronous() -> String {
        "normal".into()
    }
    fn default_table() -> String {
        "tally".into()
    }
    fn default_shards() -> u32 {
        1
    }
    fn default_lease_seconds() -> f64 {
        30.0
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            backend: Self::default_backend(),
            path: Self::default_path(),
            synchronous: Self::default_synchronous(),
            table: Self::default_table(),
            region: None,
            endpoint_url: None,
            shards: Self::default_shards(),
            lease_seconds: Self::default_lease_seconds(),
        }
    }
}

/// `[start, end)` epoch seconds of a `YYYY-MM` period, or the store's error for a bad one.
pub fn month_range(month: &str) -> Result<(EpochSeconds, EpochSeconds), StoreError> {
    Month::parse(month).map(Month::range).map_err(|e| StoreError::Invalid(e.to_string()))
}

/// Moves one source's position. `expected` is the position the writer started from; the
/// store refuses the whole batch if the stored position is different (another writer moved
/// it), which keeps two ingesters from counting the same data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointUpdate {
    pub source: String,
    pub expected: Option<String>,
    pub position: String,
}

/// What one atomic write carries.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub entries: Vec<Entry>,
    /// The usage of `entries` summed per key, when the writer has summed it already (ingest
    /// workers do, in parallel). `None`: the store sums the entries itself. When set it must
    /// equal `aggregate(entries)`.
    pub sums: Option<Sums>,
    pub checkpoints: Vec<CheckpointUpdate>,
    /// Records received in this batch (entries + skipped).
    pub received: u64,
    /// Records not counted, by reason.
    pub skipped: BTreeMap<Reason, u64>,
    /// Dedup entries for hours before this may be forgotten.
    pub prune_before: Option<EpochSeconds>,
}

impl Batch {
    /// The counters this batch adds when the entries at `duplicates` (indices into `entries`)
    /// were counted before: the sum of every other entry, per key, in key order. Keys whose
    /// every entry was a duplicate are left out.
    pub fn counted_sums(&self, duplicates: &[usize]) -> BTreeMap<CounterKey, Usage> {
        let mut sums = Sums::default();
        self.add_counted(duplicates, &mut sums);
        sums.into_iter().collect()
    }

    /// Adds [`Batch::counted_sums`] to `into`, key by key (a store that writes the counters of
    /// several batches at once sums them here). A key whose entries were all duplicates adds
    /// nothing, not even an empty row.
    pub fn add_counted(&self, duplicates: &[usize], into: &mut Sums) {
        match &self.sums {
            Some(sums) => {
                for (k, u) in sums {
                    add_to(into, k, u);
                }
                for &i in duplicates {
                    let e = &self.entries[i];
                    if let Some(u) = into.get_mut(&e.key) {
                        *u -= &e.usage;
                        // Every counted entry is one request: none left, none counted.
                        if u.requests == 0 {
                            into.remove(&e.key);
                        }
                    }
                }
            }
            None => {
                let mut skip = vec![false; self.entries.len()];
                for &i in duplicates {
                    skip[i] = true;
                }
                for (e, _) in self.entries.iter().zip(skip).filter(|(_, s)| !s) {
                    add_to(into, &e.key, &e.usage);
                }
            }
        }
    }
}

/// The outcome of applying a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Applied {
    /// Entries added to the counters.
    pub counted: u64,
    /// Entries whose `requestId` was already counted.
    pub duplicates: u64,
    /// Distinct hourly keys written (0 for a batch applied into a group: the group's commit
    /// writes them, see [`CounterStore::commit_group`]).
    pub keys_written: u64,
}

/// What a store has written since it was opened, for backends that bill per request
/// (DynamoDB). Write units are DynamoDB's: 1 per started KB of item, 2 inside a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct WriteStats {
    /// `TransactWriteItems` calls that succeeded.
    pub transactions: u64,
    /// Items written (transaction actions plus single writes).
    pub write_requests: u64,
    /// Write units as DynamoDB bills them, from the sizes of the items written.
    pub write_units: f64,
    /// Write units the service reported (`ReturnConsumedCapacity`), when it reports them.
    pub consumed_write_units: f64,
    /// Read requests sent (`GetItem`, `BatchGetItem`, `Query` pages).
    pub read_requests: u64,
}

/// Lifetime ingest totals kept beside the counters.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct IngestTotals {
    pub received: u64,
    pub counted: u64,
    pub duplicates: u64,
    pub skipped: BTreeMap<String, u64>,
}

/// One tenant's usage in a period.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct PeriodUsage {
    pub tenant: TenantId,
    pub period: String,
    pub total: Usage,
    /// `YYYY-MM-DD` → usage, over all resources.
    pub by_day: BTreeMap<String, Usage>,
    /// Resource → usage, over the period.
    pub by_resource: BTreeMap<Resource, Usage>,
}

impl Default for TenantId {
    fn default() -> Self {
        TenantId::unattributed()
    }
}

/// A store failure, shaped by what the caller does about it.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another writer holds the store; try again.
    #[error("store busy: {0}")]
    Busy(Box<dyn std::error::Error + Send + Sync>),
    /// A checkpoint was not where this writer expected: another ingester moved it.
    #[error("checkpoint for {source_key} moved underneath this ingester (expected {expected:?}, found {found:?})")]
    ConditionFailed { source_key: String, expected: Option<String>, found: Option<String> },
    /// The store cannot be used (missing, unreadable, wrong schema).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The request itself is wrong (e.g. a period that is not `YYYY-MM`).
    #[error("{0}")]
    Invalid(String),
    /// Any other backend failure.
    #[error("store error: {0}")]
    Backend(Box<dyn std::error::Error + Send + Sync>),
}

impl StoreError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Busy(_))
    }
}

/// The interface every counter backend provides.
pub trait CounterStore: Send {
    /// Applies a batch atomically and exactly once (see the module docs). A store with an
    /// open group commits the group with it.
    fn apply(&mut self, batch: &Batch) -> Result<Applied, StoreError>;

    /// Applies a batch into the open group, opening one if there is none. A group is one
    /// atomic write of several batches: their duplicates are found as each is applied (a
    /// request id twice in one group is counted once), but nothing of the group is visible,
    /// or durable, before [`CounterStore::commit_group`]; then all of it is. Summing the
    /// batches' counters and writing each key once per group is what makes it cheaper than
    /// one transaction per batch. A failure abandons the whole group; when the group held
    /// earlier batches the error is not retryable, since retrying this batch alone would
    /// drop them. A store without groups (the default) applies and commits each batch on
    /// its own.
    fn apply_grouped(&mut self, batch: &Batch) -> Result<Applied, StoreError> {
        self.apply(batch)
    }

    /// Commits the open group, if any, and returns the hourly keys it wrote. On failure the
    /// group is abandoned, none of it written, and the error is not retryable when the group
    /// held more than one batch.
    fn commit_group(&mut self) -> Result<u64, StoreError> {
        Ok(0)
    }

    /// Abandons the open group, if any: none of its batches is written.
    fn rollback_group(&mut self) {}

    /// Whether [`CounterStore::apply_grouped`] keeps batches in an open group (false: each
    /// batch is committed as it is applied).
    fn groups_batches(&self) -> bool {
        false
    }

    /// Every source position, by source key.
    fn checkpoints(&self) -> Result<HashMap<String, String>, StoreError>;

    /// The latest hour any counted record fell in (the dedup window is measured from it).
    fn max_hour(&self) -> Result<Option<EpochSeconds>, StoreError>;

    /// One tenant's usage in a month (`YYYY-MM`), by day and by resource.
    fn period_usage(&self, tenant: &TenantId, month: &str) -> Result<PeriodUsage, StoreError>;

    /// Every tenant's total for a month, sorted by tenant.
    fn tenants(&self, month: &str) -> Result<Vec<(TenantId, Usage)>, StoreError>;

    /// Every hourly counter whose hour falls in a month.
    fn hours(&self, month: &str) -> Result<Vec<(CounterKey, Usage)>, StoreError>;

    /// Lifetime ingest totals.
    fn totals(&self) -> Result<IngestTotals, StoreError>;

    /// Requests and write units sent since the store was opened; `None` for stores where that
    /// costs nothing (SQLite).
    fn write_stats(&self) -> Option<WriteStats> {
        None
    }
}
