//! The split-batch intent protocol (the module docs of `store::dynamodb` give the argument):
//! a batch too big for one transaction is stored as an intent, its checkpoints claimed, its
//! bucket and counter chunks written step by step under the intent's header, committed with one
//! conditional write, and finished; before the commit point it is undone, after it redone. A
//! writer that finds a checkpoint held by another writer's intent takes the intent over once
//! that writer is gone, and undoes or redoes it.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use super::client::{now_ms, Table, TxnFailure};
use super::plan::{BucketAdd, BucketWrite, CpMove, Intent, Step};
use super::schema::{fnv, get_i64, get_s, get_u64, intent_pk, key, keys_from_hex, keys_from_item, n, s, Item};
use super::write::{Action, Expr, Requests, Role, UpdateOf};
use crate::store::StoreError;

/// Bytes of plan JSON per intent part.
const INTENT_PART_BYTES: usize = 300_000;
/// How long an intent's items are kept (DynamoDB TTL) in case nobody finishes it.
const INTENT_TTL_SECS: i64 = 7 * 86_400;

/// Why one attempt at a batch did not finish.
pub(super) enum Attempt {
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

/// Why a checkpoint condition failed: held by an intent, or not at the expected position.
pub(super) async fn checkpoint_refusal(table: &Table, cp: &CpMove) -> Attempt {
    match table.get("CP", &cp.source).await {
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

/// Who owns the intents a store writes.
pub(super) struct Owner {
    /// `host|pid|nonce`.
    id: String,
    host: String,
    /// Distinguishes this store from others of the same process; also rotates counter shards.
    pub nonce: u64,
    /// How long an intent stays owned without a step.
    lease: Duration,
    /// Intents this store has started.
    started: AtomicU64,
}

impl Owner {
    /// This process, with a fresh nonce.
    pub fn new(lease: Duration) -> Owner {
        let host =
            std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
        let nonce = fnv(format!("{}{:?}", std::process::id(), SystemTime::now()).as_bytes());
        let id = format!("{host}|{}|{nonce:016x}", std::process::id());
        Owner { id, host, nonce, lease, started: AtomicU64::new(0) }
    }

    fn next_intent_id(&self) -> String {
        format!("{:016x}-{}", self.nonce, self.started.fetch_add(1, Ordering::Relaxed))
    }

    /// The lease of a step taken now, in epoch milliseconds.
    fn lease_until(&self) -> i64 {
        now_ms() + self.lease.as_millis() as i64
    }
}

/// The protocol as one store runs it: its table, its request encoder and its identity.
pub(super) struct Protocol<'a> {
    pub table: &'a Table,
    pub requests: &'a Requests,
    pub owner: &'a Owner,
}

impl Protocol<'_> {
    /// Writes a split batch: stores its intent, runs its steps, commits and finishes it.
    /// `bucket_actions` are the intent's bucket writes in order. A failed step undoes the steps
    /// done before the error is returned.
    pub async fn apply(&self, intent: Intent, bucket_actions: Vec<Action>) -> Result<(), Attempt> {
        let id = self.owner.next_intent_id();
        self.write(&id, &intent).await?;

        let mut step = 0usize;
        let mut bucket_actions = bucket_actions.into_iter();
        for s in 0..intent.steps() {
            let kind = intent.step(s);
            let actions: Vec<Action> = match &kind {
                Step::Claim(cps) => cps.iter().map(|c| self.requests.claim(c, &id)).collect(),
                Step::Buckets(i) => bucket_actions.by_ref().take(intent.bucket_chunks[*i].len()).collect(),
                Step::Counters(ops) => ops.iter().map(|o| self.requests.counter(o, false)).collect(),
            };
            match self.step(&id, actions, "step", s).await {
                Ok(()) => step = s + 1,
                Err(failure) => {
                    let why = match (failure, &kind) {
                        (TxnFailure::Store(e), _) => Attempt::Store(e),
                        (TxnFailure::Condition(i), Step::Claim(cps)) => checkpoint_refusal(self.table, &cps[i]).await,
                        (TxnFailure::Condition(_), _) => Attempt::Conflict,
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

    /// Stores the plan as JSON parts `P0000`…, then the header `H` (owner, lease, steps done,
    /// state `open`).
    async fn write(&self, id: &str, intent: &Intent) -> Result<(), StoreError> {
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
        let expires = now_ms() / 1000 + INTENT_TTL_SECS;
        for (i, p) in parts.iter().enumerate() {
            let mut item = key(&intent_pk(id), &format!("P{i:04}"));
            item.insert("body".into(), s(*p));
            item.insert("expires".into(), n(expires));
            self.table.put(item, p.len() + 40).await?;
        }
        let mut header = key(&intent_pk(id), "H");
        header.insert("owner".into(), s(&self.owner.id));
        header.insert("lease".into(), n(self.owner.lease_until()));
        header.insert("step".into(), n(0));
        header.insert("fstep".into(), n(0));
        header.insert("state".into(), s("open"));
        header.insert("parts".into(), n(parts.len()));
        header.insert("expires".into(), n(expires));
        self.table.put(header, 200).await
    }

    /// An intent's header and plan; `None` when it no longer exists.
    async fn read(&self, id: &str) -> Result<Option<(Item, Intent)>, StoreError> {
        let items = self.table.query(&intent_pk(id), None).await?;
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

    /// One step of an intent: `actions` plus moving the header's `counter` from `from` to
    /// `from + 1`, conditioned on the owner. A condition failure of the header itself means
    /// another process took the intent over.
    async fn step(&self, id: &str, mut actions: Vec<Action>, counter: &str, from: usize) -> Result<(), TxnFailure> {
        actions.push(self.header_step(id, counter, from, from + 1));
        let header = actions.len() - 1;
        match self.table.transact(actions).await {
            Err(TxnFailure::Condition(i)) if i == header => Err(TxnFailure::Store(StoreError::Unavailable(format!(
                "intent {id} was taken over by another process"
            )))),
            other => other,
        }
    }

    /// Moves the header's `counter` from `from` to `to` and renews the lease, conditioned on
    /// this store owning the intent.
    fn header_step(&self, id: &str, counter: &str, from: usize, to: usize) -> Action {
        let mut e = Expr::default();
        let c = e.name(counter);
        let owner = e.name("owner");
        let lease = e.name("lease");
        let update = format!("SET {c} = {}, {lease} = {}", e.value(n(to)), e.value(n(self.owner.lease_until())));
        let cond = format!("{c} = {} AND {owner} = {}", e.value(n(from)), e.value(s(&self.owner.id)));
        self.header_action(id, &e, update, cond)
    }

    /// A conditional update of intent `id`'s header.
    fn header_action(&self, id: &str, e: &Expr, update: String, condition: String) -> Action {
        let pk = intent_pk(id);
        let item = self.requests.update(UpdateOf { pk: &pk, sk: "H", expr: e, update, condition: Some(condition) });
        Action { item, role: Role::Other, bytes: 200 }
    }

    /// Takes back the first `step` steps of an intent, last first, then deletes it.
    async fn undo(&self, id: &str, intent: &Intent, mut step: usize) -> Result<(), StoreError> {
        while step > 0 {
            let s = step - 1;
            let kind = intent.step(s);
            let mut actions: Vec<Action> = match &kind {
                Step::Claim(cps) => cps.iter().map(|c| self.requests.release(c)).collect(),
                Step::Buckets(i) => self.unbucket_actions(&intent.bucket_chunks[*i]).await?,
                Step::Counters(ops) => ops.iter().map(|o| self.requests.counter(o, true)).collect(),
            };
            actions.push(self.header_step(id, "step", step, s));
            let header = actions.len() - 1;
            match self.table.transact(actions).await {
                Ok(()) => step = s,
                // A bucket changed since it was read for the undo: read it again.
                Err(TxnFailure::Condition(i)) if i != header && matches!(kind, Step::Buckets(_)) => continue,
                Err(TxnFailure::Condition(_)) => {
                    return Err(StoreError::Unavailable(format!(
                        "intent {id} was taken over by another process during undo"
                    )))
                }
                Err(TxnFailure::Store(e)) => return Err(e),
            }
        }
        self.delete(id).await
    }

    /// Bucket writes that take an intent's keys out again.
    async fn unbucket_actions(&self, chunk: &[BucketAdd]) -> Result<Vec<Action>, StoreError> {
        let read = self.table.batch_get(chunk.iter().map(|b| (b.pk.clone(), "S".to_string())).collect()).await?;
        let mut out = Vec::new();
        for b in chunk {
            let Some(item) = read.get(&(b.pk.clone(), "S".to_string())) else { continue };
            let remove: HashSet<u128> = keys_from_hex(&b.keys)?.into_iter().collect();
            let keys: Vec<u128> = keys_from_item(item).into_iter().filter(|k| !remove.contains(k)).collect();
            let hour = get_i64(item, "hour")?.unwrap_or_default();
            let w = BucketWrite { pk: b.pk.clone(), hour, old_version: get_u64(item, "v")?, keys, added: Vec::new() };
            out.push(self.requests.bucket(&w)?);
        }
        Ok(out)
    }

    /// The commit point: `state = committed`, conditioned on all `steps` done and on the owner.
    async fn commit(&self, id: &str, steps: usize) -> Result<(), StoreError> {
        let mut e = Expr::default();
        let state = e.name("state");
        let update = format!("SET {state} = {}", e.value(s("committed")));
        let cond = format!(
            "{} = {} AND {} = {}",
            e.name("step"),
            e.value(n(steps)),
            e.name("owner"),
            e.value(s(&self.owner.id))
        );
        match self.table.transact(vec![self.header_action(id, &e, update, cond)]).await {
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
            let mut actions: Vec<Action> = chunk.iter().map(|c| self.requests.checkpoint(c, Some(id))).collect();
            if f == 0 {
                actions.extend(self.requests.totals(&intent.totals));
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
        self.delete(id).await
    }

    /// Raises `max_hour` and the dedup horizon outside a transaction, for a split batch; a
    /// failed condition means another writer raised it further already.
    async fn raise_meta(&self, new_max: Option<i64>, new_horizon: Option<i64>) -> Result<(), StoreError> {
        for (attr, new) in [("max_hour", new_max), ("prune_before", new_horizon)] {
            let Some(new) = new else { continue };
            let mut e = Expr::default();
            let a = e.name(attr);
            let v = e.value(n(new));
            let update = format!("SET {a} = {v}");
            let condition = Some(format!("attribute_not_exists({a}) OR {a} < {v}"));
            self.table
                .update_if(UpdateOf { pk: "META", sk: "META", expr: &e, update, condition }, "update meta")
                .await?;
        }
        Ok(())
    }

    async fn delete(&self, id: &str) -> Result<(), StoreError> {
        let pk = intent_pk(id);
        let items = self.table.query(&pk, None).await?;
        for item in items {
            let Some(sk) = get_s(&item, "sk") else { continue };
            self.table.delete(&pk, sk, "delete intent").await?;
        }
        Ok(())
    }

    /// Whether the writer that owns an intent is gone: this store itself, a process of this
    /// host that no longer exists, or a lease that ran out.
    fn owner_gone(&self, header: &Item) -> bool {
        let owner = get_s(header, "owner").unwrap_or_default();
        if owner == self.owner.id {
            return true;
        }
        let mut parts = owner.split('|');
        if let (Some(host), Some(pid)) = (parts.next(), parts.next()) {
            if !self.owner.host.is_empty()
                && host == self.owner.host
                && pid != std::process::id().to_string()
                && !std::path::Path::new(&format!("/proc/{pid}")).exists()
            {
                return true;
            }
        }
        get_i64(header, "lease").ok().flatten().is_none_or(|l| l < now_ms())
    }

    /// Finishes another writer's intent: undoes it before its commit point, redoes it after.
    /// With `wait`, waits for a live owner's lease to run out first.
    pub async fn recover(&self, id: &str, wait: bool) -> Result<(), StoreError> {
        let deadline = Instant::now() + self.owner.lease + Duration::from_secs(5);
        loop {
            let Some((header, intent)) = self.read(id).await? else {
                // Finished meanwhile, or only a stray marker is left: clear it.
                return self.clear_stray(id).await;
            };
            if !self.owner_gone(&header) {
                if !wait || Instant::now() > deadline {
                    return Err(StoreError::Busy(format!("checkpoint held by batch {id} of a live writer").into()));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            // Take it over: owner and lease, conditioned on the owner we saw.
            let mut e = Expr::default();
            let owner = e.name("owner");
            let update = format!(
                "SET {owner} = {}, {} = {}",
                e.value(s(&self.owner.id)),
                e.name("lease"),
                e.value(n(self.owner.lease_until()))
            );
            let cond = format!("{owner} = {}", e.value(s(get_s(&header, "owner").unwrap_or_default())));
            match self.table.transact(vec![self.header_action(id, &e, update, cond)]).await {
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
        for item in self.table.query("CP", None).await? {
            if get_s(&item, "pending") == Some(id) {
                let source = get_s(&item, "sk").unwrap_or_default().to_string();
                let mut e = Expr::default();
                let p = e.name("pending");
                let condition = Some(format!("{p} = {}", e.value(s(id))));
                let update = format!("REMOVE {p}");
                let item = self.requests.update(UpdateOf { pk: "CP", sk: &source, expr: &e, update, condition });
                let _ = self.table.transact(vec![Action { item, role: Role::Other, bytes: 80 }]).await;
            }
        }
        Ok(())
    }

    /// Every source's committed position. Intents of dead writers holding checkpoints are
    /// finished first; a live writer's batch is reported at its committed positions.
    pub async fn checkpoints(&self) -> Result<HashMap<String, String>, StoreError> {
        let items = self.table.query("CP", None).await?;
        let held: BTreeSet<String> = items.iter().filter_map(|i| get_s(i, "pending")).map(str::to_string).collect();
        if held.is_empty() {
            return Ok(items
                .iter()
                .filter_map(|i| Some((get_s(i, "sk")?.to_string(), get_s(i, "position")?.to_string())))
                .collect());
        }
        // Finish what dead writers left, then read again.
        for id in &held {
            match self.recover(id, false).await {
                Ok(()) | Err(StoreError::Busy(_)) => {}
                Err(e) => return Err(e),
            }
        }
        let items = self.table.query("CP", None).await?;
        let mut out = HashMap::new();
        for i in &items {
            let (Some(src), pos) = (get_s(i, "sk"), get_s(i, "position")) else { continue };
            let mut pos = pos.map(str::to_string);
            if let Some(id) = get_s(i, "pending") {
                if let Some((h, intent)) = self.read(id).await? {
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
}
