//! The write requests: each planned write as one `TransactWriteItems` action — a counter delta
//! (`ADD`, or its negation to undo it), a whole dedup bucket conditioned on its version, a
//! checkpoint move, claim or release, the totals, `META` — with what it is (to read a
//! cancellation) and about how big it is (to bill it). No I/O.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem, Update};

use super::plan::{BucketWrite, CounterOp, CpMove, TotalsOp};
use super::schema::{key, keys_to_blob, n, s, BUCKET_MAX_KEYS, DIMENSION_ATTRS, NUM_ATTRS};
use crate::store::StoreError;

/// Builds expression attribute names and values without clashing with reserved words.
#[derive(Default)]
pub(super) struct Expr {
    names: HashMap<String, String>,
    values: HashMap<String, AttributeValue>,
}

impl Expr {
    pub fn name(&mut self, name: &str) -> String {
        let k = format!("#a{}", self.names.len());
        self.names.insert(k.clone(), name.to_string());
        k
    }
    pub fn value(&mut self, v: AttributeValue) -> String {
        let k = format!(":v{}", self.values.len());
        self.values.insert(k.clone(), v);
        k
    }
    pub fn names(&self) -> Option<HashMap<String, String>> {
        (!self.names.is_empty()).then(|| self.names.clone())
    }
    pub fn values(&self) -> Option<HashMap<String, AttributeValue>> {
        (!self.values.is_empty()).then(|| self.values.clone())
    }
}

/// What one action in a transaction is, to interpret a cancellation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Role {
    Checkpoint(String),
    Bucket,
    Other,
}

/// One transaction action with what it is and about how big the item is.
pub(super) struct Action {
    pub item: TransactWriteItem,
    pub role: Role,
    pub bytes: usize,
}

/// An update of the item `pk`/`sk`.
pub(super) struct UpdateOf<'a> {
    pub pk: &'a str,
    pub sk: &'a str,
    pub expr: &'a Expr,
    pub update: String,
    pub condition: Option<String>,
}

/// The request encoder of one table.
pub(super) struct Requests {
    pub table: String,
    /// How long dedup buckets are kept (their `expires`), in seconds from their hour.
    pub dedup_ttl_secs: i64,
}

impl Requests {
    /// An `Update` action.
    pub fn update(&self, u: UpdateOf<'_>) -> TransactWriteItem {
        let update = Update::builder()
            .table_name(&self.table)
            .set_key(Some(key(u.pk, u.sk)))
            .update_expression(u.update)
            .set_condition_expression(u.condition)
            .set_expression_attribute_names(u.expr.names())
            .set_expression_attribute_values(u.expr.values())
            .build()
            .expect("update has its required fields");
        TransactWriteItem::builder().update(update).build()
    }

    /// A counter delta, or with `negate` its negation (an undo).
    pub fn counter(&self, op: &CounterOp, negate: bool) -> Action {
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
        // The other dimensions only when used: most counters have none, and an item's size is
        // what a write is billed by.
        for (name, v) in DIMENSION_ATTRS.iter().zip(op.dims).filter(|&(_, v)| v != 0) {
            adds.push(format!("{} {}", e.name(name), e.value(AttributeValue::N(format!("{sign}{v}")))));
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
        if let Some(v) = &op.via {
            sets.push(format!("{} = {}", e.name("via"), e.value(s(v))));
        }
        if let Some(sh) = op.shard {
            sets.push(format!("{} = {}", e.name("shard"), e.value(n(sh))));
        }
        let dimensions = op.dims.iter().filter(|&&v| v != 0).count();
        let bytes = op.pk.len()
            + op.sk.len()
            + op.tenant.len()
            + op.resource.as_ref().map_or(0, String::len)
            + 8 * 12
            + 60
            + dimensions * 32;
        let update = format!("ADD {} SET {}", adds.join(", "), sets.join(", "));
        Action {
            item: self.update(UpdateOf { pk: &op.pk, sk: &op.sk, expr: &e, update, condition: None }),
            role: Role::Other,
            bytes,
        }
    }

    /// The totals a batch adds; `None` when it adds nothing.
    pub fn totals(&self, t: &TotalsOp) -> Option<Action> {
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
        let update = format!("ADD {}", adds.join(", "));
        Some(Action {
            item: self.update(UpdateOf { pk: "TOTALS", sk: "TOTALS", expr: &e, update, condition: None }),
            role: Role::Other,
            bytes: 200,
        })
    }

    /// A whole dedup bucket, conditioned on the version it was read at (or on not existing).
    pub fn bucket(&self, w: &BucketWrite) -> Result<Action, StoreError> {
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
        Ok(Action { item: TransactWriteItem::builder().put(put).build(), role: Role::Bucket, bytes: w.bytes() })
    }

    /// Moves a checkpoint: conditioned on the expected position and on no batch holding it
    /// (`held_by` None), or on this intent holding it.
    pub fn checkpoint(&self, cp: &CpMove, held_by: Option<&str>) -> Action {
        let mut e = Expr::default();
        let pos = e.name("position");
        let pending = e.name("pending");
        let update = format!("SET {pos} = {} REMOVE {pending}", e.value(s(&cp.position)));
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
            item: self.update(UpdateOf { pk: "CP", sk: &cp.source, expr: &e, update, condition: Some(cond) }),
            role: Role::Checkpoint(cp.source.clone()),
            bytes: cp.source.len() + cp.position.len() + 40,
        }
    }

    /// Claims a checkpoint for intent `id` (`pending = id`), conditioned on the expected
    /// position and on no batch holding it.
    pub fn claim(&self, cp: &CpMove, id: &str) -> Action {
        let mut e = Expr::default();
        let pos = e.name("position");
        let pending = e.name("pending");
        let at = match &cp.expected {
            None => format!("attribute_not_exists({pos})"),
            Some(x) => format!("{pos} = {}", e.value(s(x))),
        };
        let update = format!("SET {pending} = {}", e.value(s(id)));
        let condition = Some(format!("{at} AND attribute_not_exists({pending})"));
        Action {
            item: self.update(UpdateOf { pk: "CP", sk: &cp.source, expr: &e, update, condition }),
            role: Role::Checkpoint(cp.source.clone()),
            bytes: cp.source.len() + 80,
        }
    }

    /// Releases a claim.
    pub fn release(&self, cp: &CpMove) -> Action {
        let mut e = Expr::default();
        let update = format!("REMOVE {}", e.name("pending"));
        Action {
            item: self.update(UpdateOf { pk: "CP", sk: &cp.source, expr: &e, update, condition: None }),
            role: Role::Checkpoint(cp.source.clone()),
            bytes: 80,
        }
    }

    /// Raises `max_hour` and the dedup horizon in the batch's transaction; each only ever goes
    /// up, so the condition fails only when another writer raised it meanwhile (then the batch
    /// is read and tried again).
    pub fn meta(&self, new_max: Option<i64>, new_horizon: Option<i64>) -> Option<Action> {
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
        let update = format!("SET {}", sets.join(", "));
        let condition = Some(conds.join(" AND "));
        let item = self.update(UpdateOf { pk: "META", sk: "META", expr: &e, update, condition });
        Some(Action { item, role: Role::Other, bytes: 100 })
    }
}
