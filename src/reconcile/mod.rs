//! Reconcile (SPEC §3): the period's CUR Bedrock lines and the period's counters in, the
//! reconciled tables out, under `<out>/<period>/`.
//!
//! `run` is the thin I/O shell: it loads the CUR (`cur::load`, Arrow's Parquet reader) and the counters
//! (any `CounterStore`), hands them to the pure stages — `allocate` (tag → silo account →
//! principal → dedicated profile → split by usage → split by model → unallocated) and `drift`
//! — builds the tables (`tables`), checks the
//! invariant Σ allocated + Σ unallocated = Σ CUR Bedrock usage cost on the very arrays that are
//! written, and replaces the period's folder as a whole. Adjustments (credits, refunds, tax,
//! discounts) are reported and never allocated. `sql` serves the written tables to analysts.
//!
//! Outputs (Parquet, plus CSV with `csv`): `allocation` (tenant × day × resource × token type
//! × basis; unallocated cost is in the same table with no tenant and its reason), `drift`,
//! `adjustments`, `summary`, and the inputs as reconciled: `cur` (the Bedrock lines summed per
//! day) and `usage` (the hourly counters).

pub mod allocate;
pub mod cost_explorer;
pub mod drift;
pub mod sql;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::parquet::errors::ParquetError;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::cur::classify::{self, TokenType, UsageType};
use crate::cur::load::{self, CurError, CurSnapshot, LoadOptions};
use crate::ids::{self, Target, TenantId};
use crate::ingest::Pipeline;
use crate::money;
use crate::pricing::Prices;
use crate::progress::Progress;
use crate::store::{CounterStore, StoreError};
use crate::tables::{self, Col};
use crate::usage::{CounterKey, Usage, Via};
use allocate::{Allocation, Pool, UsageLine, Weights};
use drift::{Billed, DriftKey, DriftRow, Metered, Thresholds};

/// `[reconcile]` in tally.toml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReconcileConfig {
    /// The cost-allocation tag that names a line's tenant: `resource_tags['user_<tag>']` in
    /// CUR 2.0, column `resource_tags_user_<tag>` in legacy CUR.
    #[serde(default = "ReconcileConfig::default_tenant_tag")]
    pub tenant_tag: String,
    /// A drift row is flagged when |CUR − estimate| exceeds the larger of this (USD, as a
    /// string) and `drift_fraction` of the larger of the two costs.
    #[serde(default = "ReconcileConfig::default_drift_min_usd")]
    pub drift_min_usd: String,
    /// See `drift_min_usd`; a decimal string, e.g. "0.05" for 5%.
    #[serde(default = "ReconcileConfig::default_drift_fraction")]
    pub drift_fraction: String,
    /// `--cost-explorer`: an endpoint URL for Cost Explorer (e.g. moto); default from the
    /// standard chain (`AWS_ENDPOINT_URL_COST_EXPLORER`, `AWS_ENDPOINT_URL`), else AWS.
    #[serde(default)]
    pub cost_explorer_endpoint_url: Option<String>,
}

impl ReconcileConfig {
    fn default_tenant_tag() -> String {
        "tenant".into()
    }
    fn default_drift_min_usd() -> String {
        "1".into()
    }
    fn default_drift_fraction() -> String {
        "0.05".into()
    }

    /// Checks the fields; the error names the field.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let tag_ok = !self.tenant_tag.is_empty()
            && self
                .tenant_tag
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | ':' | '.' | '/' | '@' | ' '));
        if !tag_ok {
            return Err(("reconcile.tenant_tag".into(), "must be a tag name (letters, digits, _ - : . / @)".into()));
        }
        for (field, v) in
            [("reconcile.drift_min_usd", &self.drift_min_usd), ("reconcile.drift_fraction", &self.drift_fraction)]
        {
            match Decimal::from_str(v.trim()) {
                Ok(d) if d >= Decimal::ZERO => {}
                _ => return Err((field.into(), format!("must be a non-negative decimal string, not {v:?}"))),
            }
        }
        Ok(())
    }

    pub fn thresholds(&self) -> Thresholds {
        let d = |s: &str| Decimal::from_str(s.trim()).expect("validated with the config");
        Thresholds { min_usd: d(&self.drift_min_usd), fraction: d(&self.drift_fraction) }
    }
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        ReconcileConfig {
            tenant_tag: Self::default_tenant_tag(),
            drift_min_usd: Self::default_drift_min_usd(),
            drift_fraction: Self::default_drift_fraction(),
            cost_explorer_endpoint_url: None,
        }
    }
}

/// A reconcile that did not complete.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Cur(#[from] CurError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("building the tables: {0}")]
    Arrow(ArrowError),
    #[error("writing {path}: {error}")]
    Write { path: PathBuf, error: ParquetError },
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    #[error("cost explorer cross-check: {0}")]
    CostExplorer(String),
    /// The invariant broke: a bug. Nothing was written.
    #[error("allocation does not add up: CUR Bedrock usage {cur} ≠ allocated {allocated} + unallocated {unallocated}; nothing was written")]
    Imbalance { cur: Decimal, allocated: Decimal, unallocated: Decimal },
}

/// What to reconcile.
#[derive(Debug, Clone)]
pub struct Request {
    /// `YYYY-MM`.
    pub period: String,
    /// The CUR: a folder, one file, or (the `aws` feature) `s3://bucket/prefix`.
    pub cur: load::CurInput,
    /// Outputs go to `<out>/<period>/`.
    pub out: PathBuf,
    /// Also write CSV beside the Parquet.
    pub csv: bool,
    /// Cross-check against Cost Explorer (`cost_explorer` module; the `aws` feature).
    pub cost_explorer: bool,
}

/// One tenant's reconciled cost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TenantCost {
    pub tenant: String,
    #[serde(with = "rust_decimal::serde::str")]
    pub cost: Decimal,
}

/// What a run did.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub period: String,
    pub output: PathBuf,
    pub cur_files: usize,
    pub cur_bytes: u64,
    /// Bedrock lines read (usage and adjustments).
    pub cur_lines: u64,
    #[serde(with = "rust_decimal::serde::str")]
    pub usage_cost: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub allocated: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub unallocated: Decimal,
    #[serde(with = "rust_decimal::serde::str")]
    pub adjustments: Decimal,
    /// Unallocated cost by reason.
    pub unallocated_by_reason: BTreeMap<String, String>,
    /// Allocated cost by basis (`tag`, `account`, `principal`, `profile`, `usage`, `model`).
    pub allocated_by_basis: BTreeMap<String, String>,
    pub counters: usize,
    pub drift_rows: usize,
    pub drift_flagged: usize,
    /// Allocated cost per tenant, by tenant.
    pub tenants: Vec<TenantCost>,
    /// With `--cost-explorer`: its totals (rows in the `cost_explorer` table).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost_explorer: Option<cost_explorer::CeSummary>,
    pub files_written: Vec<PathBuf>,
}

/// The reconciled tables of one period, before they are written.
pub struct Tables {
    pub report: Report,
    /// (name, batch), in writing order.
    pub batches: Vec<(&'static str, RecordBatch)>,
}

impl From<ArrowError> for ReconcileError {
    fn from(e: ArrowError) -> Self {
        ReconcileError::Arrow(e)
    }
}

/// Loads, allocates, checks and writes (see the module docs).
pub fn run(
    req: &Request,
    config: &ReconcileConfig,
    pipeline: &Pipeline,
    store: &dyn CounterStore,
    progress: &dyn Progress,
) -> Result<Report, ReconcileError> {
    if req.cost_explorer && !cfg!(feature = "aws") {
        // Refused before the CUR is read, not after.
        return Err(ReconcileError::CostExplorer(NEEDS_AWS.into()));
    }
    let resolver = &pipeline.resolver;
    let keep = load::KeyFilter {
        accounts: Arc::new(resolver.silo_accounts().map(str::to_string).collect()),
        principal: resolver.identity_pattern().cloned(),
    };
    let opts = LoadOptions { period: req.period.clone(), tenant_tag: config.tenant_tag.clone(), keep };
    let started = std::time::Instant::now();
    // The counters are read while the CUR loads (the store stays on this thread).
    let (cur, hours) = std::thread::scope(|scope| {
        let cur = scope.spawn(|| load::load_from(&req.cur, &opts, progress));
        let hours = store.hours(&req.period);
        tracing::debug!(elapsed_ms = started.elapsed().as_millis() as u64, "counters loaded");
        (cur.join().expect("the CUR loader panicked"), hours)
    });
    let (cur, hours) = (cur?, hours?);
    tracing::debug!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        groups = cur.groups.len(),
        hours = hours.len(),
        "CUR loaded"
    );
    let mut t = reconcile(&req.period, &cur, &hours, pipeline, config.thresholds())?;
    tracing::debug!(elapsed_ms = started.elapsed().as_millis() as u64, "allocated");
    if req.cost_explorer {
        let groups = fetch_cost_explorer(config, &req.period)?;
        cross_check(&mut t, &cur, &groups, config.thresholds())?;
    }
    t.report.output = req.out.join(&req.period);
    t.report.files_written = write(&t, &req.out, &req.period, req.csv)?;
    tracing::debug!(elapsed_ms = started.elapsed().as_millis() as u64, "written");
    Ok(t.report)
}

/// The pure middle of `run`: CUR snapshot and counters in, checked tables out.
pub fn reconcile(
    period: &str,
    cur: &CurSnapshot,
    hours: &[(CounterKey, Usage)],
    pipeline: &Pipeline,
    th: Thresholds,
) -> Result<Tables, ReconcileError> {
    let mut prices: HashMap<&str, Option<Prices>> = HashMap::new();
    let mut weights = Weights::new();
    let mut metered: BTreeMap<DriftKey, Metered> = BTreeMap::new();
    // Hours summed into days first: everything below is per day, and a month has 24× fewer
    // tenant × day × resource keys than hourly ones.
    // Tenant × UTC day number × resource × via.
    type DayKey<'a> = (&'a TenantId, i64, &'a str, Via);
    let mut days: rustc_hash::FxHashMap<DayKey, Usage> = Default::default();
    for (k, u) in hours {
        *days.entry((&k.tenant, k.hour.div_euclid(86_400), k.resource.as_str(), k.via)).or_default() += u;
    }
    let mut days: Vec<(DayKey, Usage)> = days.into_iter().collect();
    days.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    for ((tenant, day_no, resource, via), u) in &days {
        let (tenant, resource): (&TenantId, &str) = (tenant, resource);
        let p = *prices.entry(resource).or_insert_with(|| unit_prices(pipeline, resource));
        let day = ids::day_of(day_no * 86_400);
        let key = allocate::resource_key(resource);
        let pool = allocate::pool_of_counter(resource);
        // A system profile's usage also weighs in its model's cross-region pool (used only by
        // lines without a resource id that say `cross-region`).
        let cross_region = match Target::parse(resource) {
            Target::SystemProfile { model, .. } => Some(Pool::CrossRegion(model)),
            _ => None,
        };
        let mut weigh = |tt: TokenType, n: u64| {
            // Usage a silo account decided is paid by that account's own lines, never split.
            for pool in std::iter::once(&pool).chain(&cross_region) {
                let w = weights.entry((day.clone(), pool.clone(), tt)).or_default().entry(tenant.clone()).or_default();
                match via {
                    Via::Pool => w.pool += n,
                    Via::Identity => w.identity += n,
                    Via::Account => {}
                }
            }
        };
        for tt in TokenType::METERED {
            let n = unit_count(u, tt);
            if n == 0 {
                continue;
            }
            if tt.is_tokens() {
                let est = p.map(|p| price_of(&p, tt) * Decimal::from(n)).unwrap_or_default();
                let label = key.clone().unwrap_or_else(|| drift::NO_RESOURCE.to_string());
                // Drift compares the four token types; 1 h cache writes are cache writes there.
                let drift_tt = if tt == TokenType::CacheWrite1h { TokenType::CacheWrite } else { tt };
                let m = metered.entry((day.clone(), label, drift_tt)).or_default();
                m.tokens += n;
                m.estimated += est;
            }
            weigh(tt, n);
        }
        if u.requests > 0 {
            weigh(TokenType::Other, u.requests);
        }
    }

    let resolver = &pipeline.resolver;
    let catalog = &pipeline.catalog;
    let mut lines = Vec::new();
    let mut billed: BTreeMap<DriftKey, Billed> = BTreeMap::new();
    let mut adjustments: Vec<(&load::GroupKey, &load::GroupSums)> = Vec::new();
    for (g, s) in &cur.groups {
        if !classify::is_usage(&g.line_item_type) {
            adjustments.push((g, s));
            continue;
        }
        let ut = UsageType::parse(&g.usage_type, &g.pricing_unit);
        let tt = ut.unit;
        lines.push(UsageLine {
            day: g.day.clone(),
            resource: g.resource.clone(),
            token_type: tt,
            tag: g.tag.as_deref().and_then(TenantId::new),
            account: resolver.account_owner(&g.account).cloned(),
            principal: (!g.principal.is_empty()).then(|| resolver.principal_tenant(&g.principal)).flatten(),
            pool: line_pool(g, &ut, catalog),
            usage_type: g.usage_type.clone(),
            cost: s.cost,
        });
        let label = allocate::resource_key(&g.resource).unwrap_or_else(|| drift::NO_RESOURCE.to_string());
        if tt.is_tokens() {
            let drift_tt = if tt == TokenType::CacheWrite1h { TokenType::CacheWrite } else { tt };
            let b = billed.entry((g.day.clone(), label, drift_tt)).or_default();
            b.cost += s.cost;
            if let Some(t) = group_tokens(g, s) {
                *b.tokens.get_or_insert(0) += t;
            }
        }
    }
    let resolver = &pipeline.resolver;
    let allocation =
        allocate::allocate(&lines, |r| resolver.profile(r, &Target::parse(r)).and_then(|p| p.owner.clone()), &weights);
    let drift_rows = drift::drift(&metered, &billed, th);

    let usage_cost: i128 = lines.iter().map(|l| l.cost).sum();
    let adjustment_cost: i128 = adjustments.iter().map(|(_, s)| s.cost).sum();
    let allocation_batch = allocation_table(&allocation)?;
    check_balance(&allocation_batch, usage_cost)?;

    let mut per_tenant: BTreeMap<&TenantId, i128> = BTreeMap::new();
    for (k, v) in &allocation.shares {
        *per_tenant.entry(&k.0).or_default() += v;
    }
    let mut by_basis: BTreeMap<&str, i128> = BTreeMap::new();
    for (k, v) in &allocation.shares {
        *by_basis.entry(k.4.as_str()).or_default() += v;
    }
    let mut by_reason: BTreeMap<String, i128> = BTreeMap::new();
    for (k, v) in &allocation.unallocated {
        *by_reason.entry(k.3.as_str().to_string()).or_default() += v;
    }
    let allocated: i128 = per_tenant.values().sum();
    let unallocated: i128 = by_reason.values().sum();
    let report = Report {
        period: period.to_string(),
        output: PathBuf::new(),
        cur_files: cur.files.len(),
        cur_bytes: cur.bytes,
        cur_lines: cur.lines(),
        usage_cost: money::from_units(usage_cost),
        allocated: money::from_units(allocated),
        unallocated: money::from_units(unallocated),
        adjustments: money::from_units(adjustment_cost),
        unallocated_by_reason: by_reason.into_iter().map(|(k, v)| (k, money::from_units(v).to_string())).collect(),
        allocated_by_basis: by_basis
            .into_iter()
            .map(|(k, v)| (k.to_string(), money::from_units(v).to_string()))
            .collect(),
        counters: hours.len(),
        drift_rows: drift_rows.len(),
        drift_flagged: drift_rows.iter().filter(|r| r.flagged).count(),
        tenants: per_tenant
            .into_iter()
            .map(|(t, v)| TenantCost { tenant: t.to_string(), cost: money::from_units(v) })
            .collect(),
        cost_explorer: None,
        files_written: Vec::new(),
    };
    let batches = vec![
        ("allocation", allocation_batch),
        ("drift", drift_table(&drift_rows)?),
        ("adjustments", adjustments_table(&adjustments)?),
        ("cur", cur_table(cur, &pipeline.catalog)?),
        ("usage", usage_table(hours)?),
        ("summary", summary_table(&report)?),
    ];
    Ok(Tables { report, batches })
}

#[cfg(feature = "aws")]
fn fetch_cost_explorer(config: &ReconcileConfig, period: &str) -> Result<Vec<cost_explorer::CeGroup>, ReconcileError> {
    // Cost Explorer answers in us-east-1 only.
    let settings = crate::aws::AwsSettings {
        region: Some("us-east-1".into()),
        endpoint_url: config.cost_explorer_endpoint_url.clone(),
        max_attempts: None,
    };
    cost_explorer::fetch(&settings, period, &config.tenant_tag).map_err(ReconcileError::CostExplorer)
}

#[cfg(not(feature = "aws"))]
fn fetch_cost_explorer(_: &ReconcileConfig, _: &str) -> Result<Vec<cost_explorer::CeGroup>, ReconcileError> {
    Err(ReconcileError::CostExplorer(NEEDS_AWS.into()))
}

const NEEDS_AWS: &str =
    "needs a build with the `aws` feature (the default; this one was built with --no-default-features)";

/// Adds the `cost_explorer` table and its totals: Cost Explorer's cost per tag value against
/// the CUR usage lines carrying that tag, and the tenant's full allocation.
pub fn cross_check(
    t: &mut Tables,
    cur: &CurSnapshot,
    groups: &[cost_explorer::CeGroup],
    th: Thresholds,
) -> Result<(), ReconcileError> {
    let mut cur_tagged: BTreeMap<Option<String>, i128> = BTreeMap::new();
    for (g, s) in &cur.groups {
        if classify::is_usage(&g.line_item_type) {
            *cur_tagged.entry(g.tag.clone()).or_default() += s.cost;
        }
    }
    let allocated: BTreeMap<String, i128> =
        t.report.tenants.iter().map(|c| (c.tenant.clone(), money::to_units(c.cost))).collect();
    let rows = cost_explorer::compare(groups, &cur_tagged, &allocated, th);
    t.report.cost_explorer = Some(cost_explorer::CeSummary {
        cost_explorer: money::from_units(groups.iter().map(|g| g.cost).sum()),
        cur_usage: t.report.usage_cost,
        rows: rows.len(),
        flagged: rows.iter().filter(|r| r.flagged).count(),
    });
    let m = |f: fn(&cost_explorer::CeRow) -> i128| Col::Money(rows.iter().map(|r| Some(f(r))).collect());
    let batch = tables::batch(vec![
        ("tenant", Col::Text(rows.iter().map(|r| r.tenant.clone()).collect())),
        ("cost_explorer", m(|r| r.cost_explorer)),
        ("cur_tagged", m(|r| r.cur_tagged)),
        ("allocated", m(|r| r.allocated)),
        ("difference", m(|r| r.difference)),
        ("flagged", Col::Bool(rows.iter().map(|r| r.flagged).collect())),
    ])?;
    t.batches.push(("cost_explorer", batch));
    Ok(())
}

/// Σ allocated + Σ unallocated = Σ CUR Bedrock usage cost, on the allocation table itself.
pub fn check_balance(allocation: &RecordBatch, usage_cost: i128) -> Result<(), ReconcileError> {
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::Decimal128Type;
    let cost = allocation.column_by_name("cost").expect("allocation has cost").as_primitive::<Decimal128Type>();
    let tenant = allocation.column_by_name("tenant").expect("allocation has tenant");
    let (mut allocated, mut unallocated) = (0i128, 0i128);
    for i in 0..allocation.num_rows() {
        if tenant.is_null(i) {
            unallocated += cost.value(i);
        } else {
            allocated += cost.value(i);
        }
    }
    if allocated + unallocated != usage_cost {
        return Err(ReconcileError::Imbalance {
            cur: money::from_units(usage_cost),
            allocated: money::from_units(allocated),
            unallocated: money::from_units(unallocated),
        });
    }
    Ok(())
}

/// The list prices for what a counter resource names (as the ingest estimate uses them).
pub fn unit_prices(pipeline: &Pipeline, resource: &str) -> Option<Prices> {
    let target = Target::parse(resource);
    let profile = pipeline.resolver.profile(resource, &target);
    let hint = profile.and_then(|p| p.model.as_deref());
    let tier = profile.map(|p| p.tier).unwrap_or_default();
    pipeline.catalog.lookup(&target, hint).map(|p| p.priced(tier))
}

/// What a CUR line's cost is split over when no tenant is named for it: its profile; the
/// model of a foundation-model ARN; for a line without a resource id, the model its usage type
/// (or Marketplace product name) names through the catalog's billing names.
fn line_pool(g: &load::GroupKey, ut: &UsageType, catalog: &crate::pricing::Catalog) -> Pool {
    if !g.resource.is_empty() {
        return allocate::pool_of_counter(&g.resource);
    }
    let name = if ut.marketplace { classify::marketplace_model_name(&g.product_name) } else { ut.model.as_str() };
    let cross_region = ut.qualifiers.iter().any(|q| q.starts_with("cross-region"));
    match catalog.model_of_billing_name(name) {
        Some(model) if cross_region => Pool::CrossRegion(model.to_string()),
        Some(model) => Pool::Model(model.to_string()),
        None => Pool::UnknownModel,
    }
}

/// A counter's quantity of `tt` (milliseconds for seconds: only proportions matter).
fn unit_count(u: &Usage, tt: TokenType) -> u64 {
    match tt {
        TokenType::Input => u.input,
        TokenType::Output => u.output,
        TokenType::CacheRead => u.cache_read,
        TokenType::CacheWrite => u.cache_write.saturating_sub(u.cache_write_1h),
        TokenType::CacheWrite1h => u.cache_write_1h,
        TokenType::Image => u.images,
        TokenType::VideoSecond => u.video_ms,
        TokenType::AudioSecond => u.audio_ms,
        TokenType::SearchUnit => u.search_units,
        TokenType::Other => 0,
    }
}

/// The list price of one token of `tt`.
fn price_of(p: &Prices, tt: TokenType) -> Decimal {
    match tt {
        TokenType::Input => p.tokens.input,
        TokenType::Output => p.tokens.output,
        TokenType::CacheRead => p.tokens.cache_read,
        TokenType::CacheWrite => p.tokens.cache_write,
        TokenType::CacheWrite1h => p.dimensions.cache_write_1h,
        _ => Decimal::ZERO,
    }
}

/// Tokens billed by a group, when its unit is tokens: quantity × tokens per unit, rounded.
fn group_tokens(g: &load::GroupKey, s: &load::GroupSums) -> Option<i64> {
    let per = classify::tokens_per_unit(&g.pricing_unit, &g.usage_type)?;
    let t = (money::from_units(s.quantity) * per).round();
    i64::try_from(t.mantissa() / 10i128.pow(t.scale())).ok()
}

fn text<S: AsRef<str>>(v: impl IntoIterator<Item = S>) -> Col {
    Col::Text(v.into_iter().map(|s| Some(s.as_ref().to_string())).collect())
}

fn allocation_table(a: &Allocation) -> Result<RecordBatch, ArrowError> {
    // Tenants' shares first (sorted by tenant, day, resource, token type, basis), then the
    // unallocated rows (sorted by day, resource, token type, reason).
    let n = a.shares.len() + a.unallocated.len();
    let (mut tenant, mut day, mut resource, mut tt, mut basis, mut reason, mut cost, mut usage_type) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for ((t, d, r, k, b), v) in &a.shares {
        tenant.push(Some(t.to_string()));
        day.push(Some(d.clone()));
        resource.push(Some(r.clone()));
        tt.push(Some(k.as_str().to_string()));
        basis.push(Some(b.as_str().to_string()));
        reason.push(None);
        cost.push(Some(*v));
        usage_type.push(None);
    }
    for ((d, r, k, why, u), v) in &a.unallocated {
        tenant.push(None);
        day.push(Some(d.clone()));
        resource.push(Some(r.clone()));
        tt.push(Some(k.as_str().to_string()));
        basis.push(Some("unallocated".to_string()));
        reason.push(Some(why.as_str().to_string()));
        cost.push(Some(*v));
        usage_type.push((!u.is_empty()).then(|| u.clone()));
    }
    tables::batch(vec![
        ("tenant", Col::Text(tenant)),
        ("day", Col::Text(day)),
        ("resource", Col::Text(resource)),
        ("token_type", Col::Text(tt)),
        ("basis", Col::Text(basis)),
        ("unallocated_reason", Col::Text(reason)),
        ("cost", Col::Money(cost)),
        // The usage type of `unknown_model` rows, whose model no billing name matched.
        ("usage_type", Col::Text(usage_type)),
    ])
}

fn drift_table(rows: &[DriftRow]) -> Result<RecordBatch, ArrowError> {
    tables::batch(vec![
        ("day", text(rows.iter().map(|r| &r.day))),
        ("resource", text(rows.iter().map(|r| &r.resource))),
        ("token_type", text(rows.iter().map(|r| r.token_type.as_str()))),
        ("metered_tokens", Col::Int(rows.iter().map(|r| r.metered.map(|m| m.tokens as i64)).collect())),
        ("estimated_cost", Col::Money(rows.iter().map(|r| r.metered.map(|m| money::to_units(m.estimated))).collect())),
        ("cur_tokens", Col::Int(rows.iter().map(|r| r.billed.and_then(|b| b.tokens)).collect())),
        ("cur_cost", Col::Money(rows.iter().map(|r| r.billed.map(|b| b.cost)).collect())),
        ("difference", Col::Money(rows.iter().map(|r| Some(money::to_units(r.difference))).collect())),
        ("flagged", Col::Bool(rows.iter().map(|r| r.flagged).collect())),
    ])
}

fn adjustments_table(rows: &[(&load::GroupKey, &load::GroupSums)]) -> Result<RecordBatch, ArrowError> {
    tables::batch(vec![
        ("day", text(rows.iter().map(|(g, _)| &g.day))),
        ("line_item_type", text(rows.iter().map(|(g, _)| &g.line_item_type))),
        ("usage_type", text(rows.iter().map(|(g, _)| &g.usage_type))),
        ("resource", text(rows.iter().map(|(g, _)| &g.resource))),
        ("description", text(rows.iter().map(|(g, _)| &g.description))),
        ("lines", Col::Int(rows.iter().map(|(_, s)| Some(s.lines as i64)).collect())),
        ("cost", Col::Money(rows.iter().map(|(_, s)| Some(s.cost)).collect())),
    ])
}

fn cur_table(cur: &CurSnapshot, catalog: &crate::pricing::Catalog) -> Result<RecordBatch, ArrowError> {
    let g: Vec<(&load::GroupKey, &load::GroupSums)> = cur.groups.iter().collect();
    let parsed: Vec<Option<UsageType>> = g
        .iter()
        .map(|(k, _)| classify::is_usage(&k.line_item_type).then(|| UsageType::parse(&k.usage_type, &k.pricing_unit)))
        .collect();
    let model = |(k, _): &(&load::GroupKey, &load::GroupSums), ut: &Option<UsageType>| match ut {
        Some(ut) => match line_pool(k, ut, catalog) {
            Pool::Model(m) | Pool::CrossRegion(m) => Some(m),
            _ => None,
        },
        None => None,
    };
    tables::batch(vec![
        ("day", text(g.iter().map(|(k, _)| &k.day))),
        ("line_item_type", text(g.iter().map(|(k, _)| &k.line_item_type))),
        ("product_code", text(g.iter().map(|(k, _)| &k.product_code))),
        ("usage_type", text(g.iter().map(|(k, _)| &k.usage_type))),
        ("token_type", Col::Text(parsed.iter().map(|ut| ut.as_ref().map(|ut| ut.unit.as_str().to_string())).collect())),
        ("resource", text(g.iter().map(|(k, _)| &k.resource))),
        ("tenant_tag", Col::Text(g.iter().map(|(k, _)| k.tag.clone()).collect())),
        ("pricing_unit", text(g.iter().map(|(k, _)| &k.pricing_unit))),
        ("description", text(g.iter().map(|(k, _)| &k.description))),
        ("lines", Col::Int(g.iter().map(|(_, s)| Some(s.lines as i64)).collect())),
        ("quantity", Col::Money(g.iter().map(|(_, s)| Some(s.quantity)).collect())),
        ("tokens", Col::Int(g.iter().map(|(k, s)| group_tokens(k, s)).collect())),
        ("cost", Col::Money(g.iter().map(|(_, s)| Some(s.cost)).collect())),
        // Added with allocation by model, account and principal (SPEC §3).
        ("qualifiers", Col::Text(parsed.iter().map(|ut| ut.as_ref().map(UsageType::qualifier_text)).collect())),
        ("model", Col::Text(g.iter().zip(&parsed).map(|(x, ut)| model(x, ut)).collect())),
        ("product_name", text(g.iter().map(|(k, _)| &k.product_name))),
        ("usage_account", text(g.iter().map(|(k, _)| &k.account))),
        ("iam_principal", text(g.iter().map(|(k, _)| &k.principal))),
    ])
}

/// The period's hourly counters as an Arrow table, sorted by tenant, hour, resource.
pub fn usage_table(hours: &[(CounterKey, Usage)]) -> Result<RecordBatch, ArrowError> {
    let mut rows: Vec<&(CounterKey, Usage)> = hours.iter().collect();
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    let int = |f: fn(&Usage) -> u64| Col::Int(rows.iter().map(|(_, u)| Some(f(u) as i64)).collect());
    let mut labels = HashMap::new();
    tables::batch(vec![
        ("tenant", text(rows.iter().map(|(k, _)| k.tenant.as_str()))),
        ("hour", Col::Time(rows.iter().map(|(k, _)| k.hour).collect())),
        ("day", text(rows.iter().map(|(k, _)| day_label(&mut labels, k.hour)))),
        ("resource", text(rows.iter().map(|(k, _)| k.resource.as_str()))),
        ("via", text(rows.iter().map(|(k, _)| k.via.as_str()))),
        ("input", int(|u| u.input)),
        ("output", int(|u| u.output)),
        ("cache_read", int(|u| u.cache_read)),
        ("cache_write", int(|u| u.cache_write)),
        ("requests", int(|u| u.requests)),
        ("errors", int(|u| u.errors)),
        ("no_usage", int(|u| u.no_usage)),
        ("est_cost", Col::Money(rows.iter().map(|(_, u)| Some(money::to_units(u.est_cost))).collect())),
    ])
}

/// `YYYY-MM-DD` of an hour, formatted once per day.
fn day_label(labels: &mut HashMap<i64, String>, hour: i64) -> String {
    labels.entry(hour.div_euclid(86_400)).or_insert_with(|| ids::day_of(hour)).clone()
}

fn summary_table(r: &Report) -> Result<RecordBatch, ArrowError> {
    let m = |d: Decimal| Col::Money(vec![Some(money::to_units(d))]);
    let i = |n: usize| Col::Int(vec![Some(n as i64)]);
    tables::batch(vec![
        ("period", text([&r.period])),
        ("cur_files", i(r.cur_files)),
        ("cur_lines", Col::Int(vec![Some(r.cur_lines as i64)])),
        ("usage_cost", m(r.usage_cost)),
        ("allocated", m(r.allocated)),
        ("unallocated", m(r.unallocated)),
        ("adjustments", m(r.adjustments)),
        ("net_cost", m(r.usage_cost + r.adjustments)),
        ("tenants", i(r.tenants.len())),
        ("counters", i(r.counters)),
        ("drift_rows", i(r.drift_rows)),
        ("drift_flagged", i(r.drift_flagged)),
        ("balanced", Col::Bool(vec![r.allocated + r.unallocated == r.usage_cost])),
    ])
}

/// Writes the tables into a fresh folder beside the period's, then swaps it in: the period's
/// outputs are replaced as a whole, never appended to or left half-written.
/// An I/O error on `path`, as a [`ReconcileError`].
fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ReconcileError {
    let path = path.to_owned();
    move |error| ReconcileError::Io { path, error }
}

/// A period's output folder, and the two beside it that a run swaps it through.
struct Dirs {
    final_dir: PathBuf,
    partial: PathBuf,
    old: PathBuf,
}

impl Dirs {
    fn of(out: &Path, period: &str) -> Dirs {
        Dirs {
            final_dir: out.join(period),
            partial: out.join(format!(".{period}.partial")),
            old: out.join(format!(".{period}.old")),
        }
    }
}

/// The file written last into a staged period folder: with it the folder is complete, and an
/// interrupted swap is finished rather than undone.
const COMPLETE: &str = ".complete";

/// Puts a period's folder back in one piece after a run of `reconcile` was stopped between
/// its renames: a staged folder that was complete finishes the swap, otherwise the old folder
/// is restored; issued invoices, which move with the folder, end up in the period's folder.
/// Called first by `reconcile` and by `invoice`, so neither ever sees a half-swapped period
/// (an `invoice` run that did would issue afresh, and the next `reconcile` would drop the
/// stranded, issued documents). Refuses, changing nothing, where two invoice folders meet.
pub fn recover_interrupted(out: &Path, period: &str) -> Result<(), ReconcileError> {
    let Dirs { final_dir, partial, old } = Dirs::of(out, period);
    if !final_dir.exists() {
        if partial.join(COMPLETE).exists() {
            std::fs::rename(&partial, &final_dir).map_err(io(&partial))?;
        } else if old.exists() {
            std::fs::rename(&old, &final_dir).map_err(io(&old))?;
        }
    }
    let invoices = final_dir.join(crate::tables::INVOICES);
    for d in [&partial, &old] {
        let stranded = d.join(crate::tables::INVOICES);
        if stranded.exists() {
            if invoices.exists() {
                return Err(ReconcileError::Io {
                    path: stranded,
                    error: std::io::Error::other(format!(
                        "issued invoices are in two folders, this one and {}; move one aside by hand (nothing was changed)",
                        invoices.display()
                    )),
                });
            }
            std::fs::create_dir_all(&final_dir).map_err(io(&final_dir))?;
            std::fs::rename(&stranded, &invoices).map_err(io(&stranded))?;
        }
        if d.exists() {
            std::fs::remove_dir_all(d).map_err(io(d))?;
        }
    }
    let marker = final_dir.join(COMPLETE);
    if marker.exists() {
        std::fs::remove_file(&marker).map_err(io(&marker))?;
    }
    Ok(())
}

fn write(t: &Tables, out: &Path, period: &str, csv: bool) -> Result<Vec<PathBuf>, ReconcileError> {
    let Dirs { final_dir, partial, old } = Dirs::of(out, period);
    // Issued invoices live in the period's folder but are not reconcile's to replace: they
    // move into the new folder below; a run stopped half-way is put in order first.
    let invoices = final_dir.join(crate::tables::INVOICES);
    recover_interrupted(out, period)?;
    std::fs::create_dir_all(&partial).map_err(io(&partial))?;
    let mut written = Vec::new();
    for (name, batch) in &t.batches {
        let p = partial.join(format!("{name}.parquet"));
        tables::write_parquet(&p, batch).map_err(|error| ReconcileError::Write { path: p.clone(), error })?;
        written.push(final_dir.join(format!("{name}.parquet")));
        if csv {
            let p = partial.join(format!("{name}.csv"));
            let f = std::fs::File::create(&p).map_err(io(&p))?;
            tables::write_csv(std::io::BufWriter::new(f), std::slice::from_ref(batch))?;
            written.push(final_dir.join(format!("{name}.csv")));
        }
    }
    let marker = partial.join(COMPLETE);
    std::fs::write(&marker, b"").map_err(io(&marker))?;
    if invoices.exists() {
        std::fs::rename(&invoices, partial.join(crate::tables::INVOICES)).map_err(io(&invoices))?;
    }
    if final_dir.exists() {
        std::fs::rename(&final_dir, &old).map_err(io(&final_dir))?;
    }
    std::fs::rename(&partial, &final_dir).map_err(io(&final_dir))?;
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(io(&old))?;
    }
    let marker = final_dir.join(COMPLETE);
    std::fs::remove_file(&marker).map_err(io(&marker))?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, ConfigError};

    #[test]
    fn a_broken_balance_is_refused() {
        let mut a = Allocation::default();
        a.shares.insert(
            (TenantId::new("a").unwrap(), "2025-11-01".into(), "p".into(), TokenType::Input, allocate::Basis::Usage),
            7,
        );
        a.unallocated.insert(
            (
                "2025-11-01".into(),
                String::new(),
                TokenType::Input,
                allocate::Reason::UnknownModel,
                "USE1-X-input-tokens".into(),
            ),
            5,
        );
        let batch = allocation_table(&a).unwrap();
        assert!(check_balance(&batch, 12).is_ok());
        match check_balance(&batch, 13) {
            Err(ReconcileError::Imbalance { cur, allocated, unallocated }) => {
                assert_eq!(
                    (money::to_units(cur), money::to_units(allocated), money::to_units(unallocated)),
                    (13, 7, 5)
                );
            }
            other => panic!("expected an imbalance, got {other:?}"),
        }
    }

    #[test]
    fn reconcile_config_errors_name_the_field() {
        let field = |text: &str| match Config::from_toml(text, Path::new("tally.toml"), PathBuf::new()) {
            Err(ConfigError::Invalid { field, .. }) => field,
            other => panic!("expected an invalid field, got {other:?}"),
        };
        assert_eq!(field("[reconcile]\ndrift_fraction = \"five percent\""), "reconcile.drift_fraction");
        assert_eq!(field("[reconcile]\ndrift_min_usd = \"-1\""), "reconcile.drift_min_usd");
        assert_eq!(field("[reconcile]\ntenant_tag = \"\""), "reconcile.tenant_tag");
        let ok = Config::from_toml(
            "[reconcile]\ntenant_tag = \"tenant_id\"\ndrift_min_usd = \"0.5\"",
            Path::new("t"),
            PathBuf::new(),
        )
        .unwrap();
        assert_eq!(ok.reconcile.thresholds(), Thresholds { min_usd: Decimal::new(5, 1), fraction: Decimal::new(5, 2) });
    }
}
