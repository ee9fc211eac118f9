//! The table as the SDK reaches it: the client and the runtime it runs on, the requests the
//! store sends (consistent reads, paged queries, batched gets, transactions, single writes),
//! retries of what the SDK does not retry itself, SDK errors as store errors, and the
//! [`WriteStats`] of everything sent.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{KeysAndAttributes, ReturnConsumedCapacity, TransactWriteItem};
use aws_sdk_dynamodb::Client;

use super::schema::{fnv, get_s, key, s, Item};
use super::write::{Action, UpdateOf};
use crate::aws::AwsSettings;
use crate::store::{StoreError, WriteStats};

/// Attempts for a transaction cancelled by throttling or a conflicting transaction.
const TXN_ATTEMPTS: u32 = 10;

/// A transaction that did not go through.
pub(super) enum TxnFailure {
    /// The condition of action `usize` failed.
    Condition(usize),
    Store(StoreError),
}

/// One DynamoDB table and the client that reaches it.
pub(super) struct Table {
    rt: tokio::runtime::Runtime,
    pub client: Client,
    pub name: String,
    stats: Mutex<WriteStats>,
}

impl Table {
    /// A client for the table `name`. No request is sent until first use.
    pub fn open(name: &str, aws: &AwsSettings) -> Result<Table, StoreError> {
        let rt =
            crate::aws::runtime().map_err(|e| StoreError::Unavailable(format!("cannot start the AWS runtime: {e}")))?;
        let sdk = crate::aws::block_on(&rt, crate::aws::sdk_config(aws));
        Ok(Table { rt, client: Client::new(&sdk), name: name.to_string(), stats: Mutex::new(WriteStats::default()) })
    }

    /// Runs a request (or several) to completion on the table's runtime.
    pub fn run<F: std::future::Future + Send>(&self, fut: F) -> F::Output
    where
        F::Output: Send,
    {
        crate::aws::block_on(&self.rt, fut)
    }

    pub fn stats(&self) -> WriteStats {
        *self.stats.lock().expect("stats lock")
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

    // ---- reads ----------------------------------------------------------------------------------

    pub async fn get(&self, pk: &str, sk: &str) -> Result<Option<Item>, StoreError> {
        self.count_read(1);
        let out = self
            .client
            .get_item()
            .table_name(&self.name)
            .set_key(Some(key(pk, sk)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_error("get item", e))?;
        Ok(out.item)
    }

    /// Every item of a partition with an optional sort-key condition (`sk < :x` etc.).
    pub async fn query(&self, pk: &str, sk_condition: Option<(&str, &str)>) -> Result<Vec<Item>, StoreError> {
        let mut out = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let mut q = self
                .client
                .query()
                .table_name(&self.name)
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
    pub async fn batch_get(&self, keys: Vec<(String, String)>) -> Result<HashMap<(String, String), Item>, StoreError> {
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
                .request_items(&self.name, req)
                .send()
                .await
                .map_err(|e| sdk_error("batch get", e))?;
            if let Some(mut r) = res.responses {
                for item in r.remove(&self.name).unwrap_or_default() {
                    let k = (
                        get_s(&item, "pk").unwrap_or_default().to_string(),
                        get_s(&item, "sk").unwrap_or_default().to_string(),
                    );
                    out.insert(k, item);
                }
            }
            if let Some(mut u) = res.unprocessed_keys {
                if let Some(ka) = u.remove(&self.name) {
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

    // ---- writes ---------------------------------------------------------------------------------

    /// Runs one transaction, retrying throttling and conflicts with backoff and jitter.
    pub async fn transact(&self, actions: Vec<Action>) -> Result<(), TxnFailure> {
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

    /// One item written outside a transaction.
    pub async fn put(&self, item: Item, bytes: usize) -> Result<(), StoreError> {
        self.client
            .put_item()
            .table_name(&self.name)
            .set_item(Some(item))
            .send()
            .await
            .map_err(|e| sdk_error("put item", e))?;
        self.count_write(1, bytes.div_ceil(1024).max(1) as f64, None, false);
        Ok(())
    }

    /// One conditional update outside a transaction; `Ok(false)` when its condition failed.
    /// `what` names it in errors.
    pub async fn update_if(&self, u: UpdateOf<'_>, what: &str) -> Result<bool, StoreError> {
        let res = self
            .client
            .update_item()
            .table_name(&self.name)
            .set_key(Some(key(u.pk, u.sk)))
            .update_expression(u.update)
            .set_condition_expression(u.condition)
            .set_expression_attribute_names(u.expr.names())
            .set_expression_attribute_values(u.expr.values())
            .send()
            .await;
        match res {
            Ok(_) => {
                self.count_write(1, 1.0, None, false);
                Ok(true)
            }
            Err(e) if e.as_service_error().is_some_and(|s| s.is_conditional_check_failed_exception()) => Ok(false),
            Err(e) => Err(sdk_error(what, e)),
        }
    }

    /// Deletes one item. `what` names it in errors.
    pub async fn delete(&self, pk: &str, sk: &str, what: &str) -> Result<(), StoreError> {
        self.client
            .delete_item()
            .table_name(&self.name)
            .set_key(Some(key(pk, sk)))
            .send()
            .await
            .map_err(|e| sdk_error(what, e))?;
        self.count_write(1, 1.0, None, false);
        Ok(())
    }
}

/// Billed write units of an item of `bytes` written in a transaction (2 per started KB).
fn txn_units(bytes: usize) -> f64 {
    2.0 * bytes.div_ceil(1024).max(1) as f64
}

/// Milliseconds since the epoch: the clock leases and retry jitter read.
pub(super) fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// A retry delay with full jitter: uniformly in [delay/2, delay).
pub(super) fn jitter(delay: Duration) -> Duration {
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
pub(super) fn sdk_error<E, R>(what: &str, e: SdkError<E, R>) -> StoreError
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
