//! A CUR fixture generator consistent with the log fixtures of `tally generate`.
//!
//! It reads what `tally generate` wrote (`truth.json`: every tenant × hour × resource's token
//! counts; `tally.toml`: the profile registry and price catalogs) and bills that usage the way
//! CUR would: hourly lines per resource and usage type (no tenants: CUR has none), costs from
//! the same catalog as the ingest estimate, with
//! - a drifting profile: the first shared profile is billed `drift` above list price;
//! - tenant tags on the dedicated profiles of every other owner (the rest go by the registry);
//! - base-model calls with no resource id (unallocated), Claude 3 Haiku billed through AWS
//!   Marketplace (`…-MP:…InputTokenCount-Units`, quantities in millions), an application
//!   profile nobody's counters used (unallocated), credits, a refund and tax (adjustments);
//! - non-Bedrock lines (S3, Lambda) and a few lines of the previous billing period, which
//!   reconcile must leave out.
//!
//! Both CUR shapes are written from the same lines: CUR 2.0 (`data/BILLING_PERIOD=…/`,
//! `resource_tags` and `product` as maps) and legacy CUR (`year=…/month=…/`, flat
//! `resource_tags_user_<tag>` and `product_*` columns whose set and order vary between files).
//! Output is a pure function of the inputs and the seed.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, Float64Array, MapBuilder, StringArray, StringBuilder, TimestampMillisecondArray,
};
use datafusion::arrow::datatypes::{Field, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::Compression;
use datafusion::parquet::file::properties::WriterProperties;
use rust_decimal::{Decimal, RoundingStrategy};
use serde::Serialize;

use super::{Rng, Truth};
use crate::ids::{self, Target};
use crate::reconcile::allocate::resource_key;

/// What to generate.
#[derive(Debug, Clone)]
pub struct CurSpec {
    /// The folder `tally generate` wrote (holds `truth.json` and `tally.toml`).
    pub fixtures: PathBuf,
    /// CUR goes to `<out>/cur2/…` and `<out>/legacy/…`.
    pub out: PathBuf,
    /// `YYYY-MM`, the month the logs were generated for.
    pub month: String,
    /// The tenant tag's name (`resource_tags['user_<tag>']`).
    pub tenant_tag: String,
    /// How much the drifting profile is billed above list price (0.3 = +30%).
    pub drift: Decimal,
    /// About this many Bedrock usage lines: each hourly line is split across usage accounts
    /// until there are (a split that would get no tokens is left out). 0 = one line per hour ×
    /// resource × usage type.
    pub lines: u64,
    /// Lines per Parquet file.
    pub rows_per_file: usize,
    pub seed: u64,
}

impl CurSpec {
    pub fn new(fixtures: PathBuf, out: PathBuf, month: String) -> CurSpec {
        CurSpec {
            fixtures,
            out,
            month,
            tenant_tag: "tenant".into(),
            drift: Decimal::new(3, 1),
            lines: 0,
            rows_per_file: 250_000,
            seed: 1,
        }
    }
}

/// What was written.
#[derive(Debug, Clone, Serialize)]
pub struct CurSummary {
    pub cur2: PathBuf,
    pub legacy: PathBuf,
    pub files: usize,
    /// All lines written per variant, Bedrock or not, any period.
    pub lines: u64,
    /// Bedrock usage lines of the month.
    pub usage_lines: u64,
    /// Σ cost of the month's Bedrock usage lines (what reconcile must allocate), exact.
    #[serde(with = "rust_decimal::serde::str")]
    pub usage_cost: Decimal,
}

const PAYER: &str = "111122223333";
const REGION: &str = "us-east-1";
const MARKETPLACE_CODE: &str = "7g37zhparap7eesm9k78jrzqc";
const MARKETPLACE_MODEL: &str = "anthropic.claude-3-haiku-20240307-v1:0";
const ORPHAN_PROFILE: &str = "arn:aws:bedrock:us-east-1:111122223333:application-inference-profile/orphan000001";

/// One CUR line, as both variants write it.
#[derive(Debug, Clone)]
struct Line {
    /// Unique per line, for `identity_line_item_id` (set when the line is written).
    id: u64,
    start: i64,
    account: String,
    line_type: &'static str,
    product_code: String,
    product_name: String,
    usage_type: String,
    operation: &'static str,
    resource: String,
    amount: Decimal,
    rate: Decimal,
    cost: Decimal,
    description: String,
    unit: &'static str,
    tag: Option<String>,
    period_start: i64,
    /// `line_item_iam_principal`: the caller, for usage the identity rule attributes.
    principal: String,
}

/// Generates both variants.
pub fn generate(spec: &CurSpec) -> anyhow::Result<CurSummary> {
    use anyhow::Context;
    let truth_path = spec.fixtures.join("truth.json");
    let truth: Truth = serde_json::from_reader(io::BufReader::new(
        File::open(&truth_path)
            .with_context(|| format!("cannot open {} (run `tally generate` first)", truth_path.display()))?,
    ))
    .with_context(|| format!("{} is not a generator truth file", truth_path.display()))?;
    let config = crate::config::Config::load(&spec.fixtures.join("tally.toml"))?;
    let pipeline = config.pipeline()?;
    let month = crate::month::Month::parse(&spec.month)?;
    let (month_start, month_end) = month.range();
    let drifting: Option<String> = config.tenancy.profiles.iter().find(|p| p.shared).map(|p| p.profile.clone());

    // CUR has no tenants: sum the truth per hour × resource.
    // Per hour × resource × silo account × principal: input, output, cache reads, 5 m and
    // 1 h cache writes, images.
    let silos: std::collections::BTreeSet<&str> = config.tenancy.accounts.iter().map(|a| a.account.as_str()).collect();
    let mut usage: BTreeMap<(i64, String, String, String), [u64; 6]> = BTreeMap::new();
    for r in &truth.rows {
        let hour = ids::parse_timestamp(&r.hour).with_context(|| format!("truth row with a bad hour {:?}", r.hour))?;
        if hour < month_start || hour >= month_end {
            continue;
        }
        let silo = if silos.contains(r.account.as_str()) { r.account.clone() } else { String::new() };
        let u = usage.entry((hour, r.resource.clone(), silo, r.principal.clone())).or_default();
        let counts = [r.input, r.output, r.cache_read, r.cache_write - r.cache_write_1h, r.cache_write_1h, r.images];
        for (i, n) in counts.into_iter().enumerate() {
            u[i] += n;
        }
    }
    let groups: u64 = usage.values().map(|u| u.iter().filter(|n| **n > 0).count() as u64).sum();
    let parts = if spec.lines == 0 || groups == 0 { 1 } else { spec.lines.div_ceil(groups).max(1) };

    let cur2 = spec.out.join("cur2/tally-export");
    let legacy = spec.out.join("legacy/tally-report");
    for d in [&cur2, &legacy] {
        if d.exists() {
            fs::remove_dir_all(d)?;
        }
    }
    let mut w = Writers::new(spec, &cur2, &legacy)?;
    let mut rng = Rng(spec.seed ^ 0xc0_57);
    let mut summary = CurSummary {
        cur2: cur2.clone(),
        legacy: legacy.clone(),
        files: 0,
        lines: 0,
        usage_lines: 0,
        usage_cost: Decimal::ZERO,
    };
    let mut day_cost = Decimal::ZERO;
    let mut last_day = None;
    let (prev_start, _) = month.previous().range();

    // A few lines of the previous billing period, in its own partition.
    for h in 0..3 {
        let mut l = orphan_line(prev_start + h * 3600, prev_start, &mut rng);
        l.cost = Decimal::new(777, 2);
        w.push(l, true)?;
        summary.lines += 1;
    }

    for ((hour, resource, silo, principal), counts) in &usage {
        let day = ids::day_of(*hour);
        if last_day.as_ref() != Some(&day) {
            if last_day.is_some() {
                let last_hour_before = *hour - hour.rem_euclid(86_400) - 3600;
                let n = extras(&mut w, last_hour_before, month_start, &mut rng, &mut summary, day_cost)?;
                summary.lines += n;
            }
            last_day = Some(day);
            day_cost = Decimal::ZERO;
        }
        let prices = crate::reconcile::unit_prices(&pipeline, resource);
        let target = Target::parse(resource);
        let profile = pipeline.resolver.profile(resource, &target);
        let model = profile
            .and_then(|p| p.model.clone())
            .or_else(|| target.model().map(str::to_string))
            .unwrap_or_else(|| resource.clone());
        let marketplace = resource == MARKETPLACE_MODEL;
        let line_resource = match resource_key(resource) {
            None => String::new(),
            Some(_) if resource.starts_with("arn:") => resource.clone(),
            Some(id) => format!("arn:aws:bedrock:{REGION}:{PAYER}:inference-profile/{id}"),
        };
        let is_drifting = drifting.as_deref().is_some_and(|d| resource == d || resource.rsplit('/').next() == Some(d));
        let markup = if is_drifting { Decimal::ONE + spec.drift } else { Decimal::ONE };
        let owner = profile.and_then(|p| p.owner.clone());
        let tag = owner.filter(|o| o.as_str().bytes().last().is_some_and(|b| b % 2 == 1)).map(|o| o.to_string());
        let qualifier = if matches!(&target, Target::SystemProfile { prefix, .. } if prefix == "global") {
            "-cross-region-global"
        } else {
            ""
        };
        for (i, &tokens) in counts.iter().enumerate() {
            if tokens == 0 {
                continue;
            }
            let per_token = prices
                .map(|p| {
                    let (t, d) = (p.tokens, p.dimensions);
                    [t.input, t.output, t.cache_read, t.cache_write, d.cache_write_1h, d.image][i]
                })
                .unwrap_or_default()
                * markup;
            let (usage_type, unit, per_unit, product_code, product_name) = if i == 5 {
                (
                    // AWS names Titan Image Generator v1 `TitanImageGeneratorG1`.
                    format!("USE1-{}G1-T2I-1024-Standard", model_code(&model)),
                    "image",
                    Decimal::ONE,
                    "AmazonBedrock".to_string(),
                    "Amazon Bedrock".to_string(),
                )
            } else if marketplace {
                let kind = [
                    "InputTokenCount",
                    "OutputTokenCount",
                    "CacheReadInputTokenCount",
                    "CacheWriteInputTokenCount",
                    "CacheWriteInputTokenCount1h",
                ][i];
                (
                    format!("USE1-MP:USE1_{kind}-Units"),
                    "Units",
                    Decimal::from(1_000_000),
                    MARKETPLACE_CODE.to_string(),
                    "Claude 3 Haiku (Amazon Bedrock Edition)".to_string(),
                )
            } else {
                let kind = [
                    "input-tokens",
                    "output-tokens",
                    "cache-read-input-token-count",
                    "cache-write-input-token-count",
                    "cache-write-input-token-count",
                ][i];
                let ttl = if i == 4 { "-1h" } else { "" };
                (
                    format!("USE1-{}-{kind}{ttl}{qualifier}", model_code(&model)),
                    "1K tokens",
                    Decimal::from(1_000),
                    "AmazonBedrock".to_string(),
                    "Amazon Bedrock".to_string(),
                )
            };
            let rate = (per_token * per_unit).normalize();
            for p in 0..parts {
                let share = tokens / parts + u64::from(p < tokens % parts);
                if share == 0 {
                    continue;
                }
                let cost = money10(per_token * Decimal::from(share));
                let l = Line {
                    id: 0,
                    start: *hour,
                    // A silo tenant's lines are in its own account; pooled usage is spread over
                    // linked accounts of the payer.
                    account: if silo.is_empty() { format!("{:012}", 222_200_000_000u64 + p) } else { silo.clone() },
                    principal: principal.clone(),
                    line_type: "Usage",
                    product_code: product_code.clone(),
                    product_name: product_name.clone(),
                    usage_type: usage_type.clone(),
                    operation: "InvokeModelInference",
                    resource: line_resource.clone(),
                    amount: Decimal::from(share) / per_unit,
                    rate,
                    cost,
                    description: format!("${rate} per {unit} for {usage_type}"),
                    unit,
                    tag: tag.clone(),
                    period_start: month_start,
                };
                summary.usage_lines += 1;
                summary.usage_cost += cost;
                day_cost += cost;
                summary.lines += 1;
                w.push(l, false)?;
            }
        }
    }
    if let Some(day) = &last_day {
        let last_hour = ids::parse_timestamp(&format!("{day}T23:00:00Z")).expect("a day label");
        let n = extras(&mut w, last_hour, month_start, &mut rng, &mut summary, day_cost)?;
        summary.lines += n;
    }
    summary.files = w.finish()?;
    Ok(summary)
}

/// The lines each day ends with: usage of a profile nobody metered, a weekly credit, on the
/// first day tax and a refund, and some non-Bedrock lines.
fn extras(
    w: &mut Writers,
    hour: i64,
    month_start: i64,
    rng: &mut Rng,
    s: &mut CurSummary,
    day_cost: Decimal,
) -> anyhow::Result<u64> {
    let mut n = 0;
    let orphan = orphan_line(hour, month_start, rng);
    // A model no catalog knows, called by bare id: unallocated as `unknown_model`.
    let unknown = Line {
        resource: String::new(),
        usage_type: "USE1-Nova9Ultra-input-tokens".into(),
        description: "$0.003 per 1K input tokens for Nova9Ultra".into(),
        ..orphan_line(hour, month_start, rng)
    };
    for l in [orphan, unknown] {
        s.usage_lines += 1;
        s.usage_cost += l.cost;
        w.push(l, false)?;
        n += 1;
    }
    let day_index = (hour - month_start) / 86_400;
    let adjustment = |line_type: &'static str, cost: Decimal, description: &str| Line {
        id: 0,
        start: hour,
        account: PAYER.into(),
        line_type,
        product_code: "AmazonBedrock".into(),
        product_name: "Amazon Bedrock".into(),
        usage_type: String::new(),
        operation: "",
        resource: String::new(),
        amount: Decimal::ZERO,
        rate: Decimal::ZERO,
        cost,
        description: description.into(),
        unit: "",
        tag: None,
        period_start: month_start,
        principal: String::new(),
    };
    let mut lines = Vec::new();
    if day_index % 7 == 6 {
        lines.push(adjustment("Credit", -(day_cost * Decimal::new(2, 1)).round_dp(2), "AWS Activate credits"));
    }
    if day_index == 0 {
        lines.push(adjustment("Tax", Decimal::new(1234, 2), "Tax for product code AmazonBedrock"));
        lines.push(adjustment("Refund", Decimal::new(-250, 2), "Refund for throttled requests"));
    }
    for l in lines {
        w.push(l, false)?;
        n += 1;
    }
    for product in ["AmazonS3", "AWSLambda"] {
        let mut l = adjustment("Usage", money10(Decimal::new(rng.below(100_000) as i64, 6)), "not Bedrock");
        l.product_code = product.into();
        l.product_name = product.into();
        l.usage_type = format!("USE1-{product}-Requests");
        l.unit = "Requests";
        w.push(l, false)?;
        n += 1;
    }
    Ok(n)
}

fn orphan_line(hour: i64, period_start: i64, rng: &mut Rng) -> Line {
    let tokens = 1_000 + rng.below(50_000);
    let cost = money10(Decimal::from(tokens) * Decimal::new(3, 6));
    Line {
        id: 0,
        start: hour,
        account: PAYER.into(),
        line_type: "Usage",
        product_code: "AmazonBedrock".into(),
        product_name: "Amazon Bedrock".into(),
        usage_type: "USE1-Claude4Sonnet-input-tokens".into(),
        operation: "InvokeModelInference",
        resource: ORPHAN_PROFILE.into(),
        amount: Decimal::from(tokens) / Decimal::from(1_000),
        rate: Decimal::new(3, 3),
        cost,
        description: "$0.003 per 1K input tokens for Claude4Sonnet".into(),
        unit: "1K tokens",
        tag: None,
        period_start,
        principal: String::new(),
    }
}

/// A usage-type model code from a model id: `anthropic.claude-3-haiku-20240307-v1:0` →
/// `Claude3Haiku`.
fn model_code(model: &str) -> String {
    // Names AWS gives that do not follow from the model id.
    match model {
        "amazon.titan-embed-text-v2:0" => return "TitanEmbeddingV2-Text".into(),
        "amazon.titan-embed-text-v1" => return "TitanEmbeddingsG1-Text".into(),
        _ => {}
    }
    let name = model.split_once('.').map_or(model, |(_, m)| m);
    let name = match name.rfind("-v") {
        Some(i) if name[i + 2..].starts_with(|c: char| c.is_ascii_digit()) => &name[..i],
        _ => name,
    };
    name.split('-')
        .filter(|p| !p.is_empty() && (p.len() != 8 || !p.bytes().all(|b| b.is_ascii_digit())))
        .map(|p| {
            let mut c = p.chars();
            c.next().map(|f| f.to_ascii_uppercase().to_string() + c.as_str()).unwrap_or_default()
        })
        .collect()
}

/// A 64-bit mix (splitmix64's finaliser): line ids that look as random as AWS's.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_mul(0x9E3779B97F4A7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
    z ^ (z >> 31)
}

fn money10(d: Decimal) -> Decimal {
    d.round_dp_with_strategy(crate::money::SCALE, RoundingStrategy::MidpointNearestEven).normalize()
}

fn to_f64(d: Decimal) -> f64 {
    f64::from_str(&d.to_string()).expect("a decimal's text is a valid double")
}

/// Buffers lines and writes both variants' files, `rows_per_file` lines each.
struct Writers {
    cur2: PathBuf,
    legacy: PathBuf,
    tag: String,
    rows_per_file: usize,
    current: Vec<Line>,
    previous: Vec<Line>,
    files: usize,
    counter: u64,
    lines_pushed: u64,
    month: String,
}

impl Writers {
    fn new(spec: &CurSpec, cur2: &Path, legacy: &Path) -> io::Result<Writers> {
        Ok(Writers {
            cur2: cur2.to_owned(),
            legacy: legacy.to_owned(),
            tag: spec.tenant_tag.clone(),
            rows_per_file: spec.rows_per_file.max(1),
            current: Vec::new(),
            previous: Vec::new(),
            files: 0,
            counter: 0,
            lines_pushed: 0,
            month: spec.month.clone(),
        })
    }

    fn push(&mut self, mut l: Line, previous_period: bool) -> anyhow::Result<()> {
        self.lines_pushed += 1;
        l.id = self.lines_pushed;
        if previous_period {
            self.previous.push(l);
            return Ok(());
        }
        self.current.push(l);
        if self.current.len() >= self.rows_per_file {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        if self.current.is_empty() {
            return Ok(());
        }
        let lines = std::mem::take(&mut self.current);
        let month = self.month.clone();
        self.write_pair(&lines, &month)?;
        Ok(())
    }

    fn finish(mut self) -> anyhow::Result<usize> {
        self.flush()?;
        let previous = std::mem::take(&mut self.previous);
        if !previous.is_empty() {
            let month = ids::month_of(previous[0].start);
            self.write_pair(&previous, &month)?;
        }
        Ok(self.files)
    }

    fn write_pair(&mut self, lines: &[Line], month: &str) -> anyhow::Result<()> {
        self.counter += 1;
        let n = self.counter;
        let (y, m) = month.split_once('-').expect("YYYY-MM");
        let m: u32 = m.parse()?;
        let dir2 = self.cur2.join(format!("data/BILLING_PERIOD={month}"));
        let dirl = self.legacy.join(format!("year={y}/month={m}"));
        fs::create_dir_all(&dir2)?;
        fs::create_dir_all(&dirl)?;
        write_batch(&dir2.join(format!("tally-export-{n:05}.snappy.parquet")), &cur2_batch(lines, &self.tag)?)?;
        write_batch(&dirl.join(format!("tally-report-{n:05}.snappy.parquet")), &legacy_batch(lines, &self.tag, n)?)?;
        self.files += 2;
        Ok(())
    }
}

fn write_batch(path: &Path, batch: &RecordBatch) -> anyhow::Result<()> {
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(128 * 1024))
        .build();
    let mut w = ArrowWriter::try_new(File::create(path)?, batch.schema(), Some(props))?;
    w.write(batch)?;
    w.close()?;
    Ok(())
}

fn common_columns(lines: &[Line]) -> Vec<(String, ArrayRef)> {
    let text =
        |f: &dyn Fn(&Line) -> String| -> ArrayRef { Arc::new(StringArray::from_iter_values(lines.iter().map(f))) };
    let time = |f: &dyn Fn(&Line) -> i64| -> ArrayRef {
        Arc::new(TimestampMillisecondArray::from_iter_values(lines.iter().map(|l| f(l) * 1000)).with_timezone("UTC"))
    };
    let num = |f: &dyn Fn(&Line) -> Decimal| -> ArrayRef {
        Arc::new(Float64Array::from_iter_values(lines.iter().map(|l| to_f64(f(l)))))
    };
    vec![
        ("identity_line_item_id".into(), text(&|l| format!("{:016x}{:016x}", mix(l.id), mix(l.id ^ 0x5eed)))),
        (
            "identity_time_interval".into(),
            text(&|l| format!("{}/{}", ids::hour_label(l.start), ids::hour_label(l.start + 3600))),
        ),
        ("bill_billing_period_start_date".into(), time(&|l| l.period_start)),
        ("bill_payer_account_id".into(), text(&|_| PAYER.into())),
        ("line_item_usage_account_id".into(), text(&|l| l.account.clone())),
        ("line_item_line_item_type".into(), text(&|l| l.line_type.into())),
        ("line_item_usage_start_date".into(), time(&|l| l.start)),
        ("line_item_usage_end_date".into(), time(&|l| l.start + 3600)),
        ("line_item_product_code".into(), text(&|l| l.product_code.clone())),
        ("line_item_usage_type".into(), text(&|l| l.usage_type.clone())),
        ("line_item_operation".into(), text(&|l| l.operation.into())),
        ("line_item_resource_id".into(), text(&|l| l.resource.clone())),
        ("line_item_usage_amount".into(), num(&|l| l.amount)),
        ("line_item_unblended_rate".into(), text(&|l| format!("{:.10}", l.rate))),
        ("line_item_unblended_cost".into(), num(&|l| l.cost)),
        ("line_item_line_item_description".into(), text(&|l| l.description.clone())),
        ("line_item_currency_code".into(), text(&|_| "USD".into())),
        ("pricing_unit".into(), text(&|l| l.unit.into())),
        ("product_region_code".into(), text(&|_| REGION.into())),
        ("line_item_iam_principal".into(), text(&|l| l.principal.clone())),
    ]
}

fn cur2_batch(lines: &[Line], tag: &str) -> anyhow::Result<RecordBatch> {
    let mut cols = common_columns(lines);
    let mut product = MapBuilder::new(None, StringBuilder::new(), StringBuilder::new());
    let mut tags = MapBuilder::new(None, StringBuilder::new(), StringBuilder::new());
    for l in lines {
        product.keys().append_value("product_name");
        product.values().append_value(&l.product_name);
        product.keys().append_value("region_code");
        product.values().append_value(REGION);
        product.append(true)?;
        if let Some(t) = &l.tag {
            tags.keys().append_value(format!("user_{tag}"));
            tags.values().append_value(t);
        }
        if !l.resource.is_empty() {
            tags.keys().append_value("aws_createdBy");
            tags.values().append_value("AssumedRole:tally-fixtures");
        }
        tags.append(true)?;
    }
    cols.push(("product".into(), Arc::new(product.finish())));
    cols.push(("resource_tags".into(), Arc::new(tags.finish())));
    to_batch(cols)
}

/// Legacy files differ from each other as real ones do: the tag column only where a line is
/// tagged, `product_inference_type` in every other file, columns in another order.
fn legacy_batch(lines: &[Line], tag: &str, n: u64) -> anyhow::Result<RecordBatch> {
    let mut cols = common_columns(lines);
    cols.push((
        "product_product_name".into(),
        Arc::new(StringArray::from_iter_values(lines.iter().map(|l| l.product_name.clone()))),
    ));
    if n.is_multiple_of(2) {
        cols.push((
            "product_inference_type".into(),
            Arc::new(StringArray::from_iter_values(lines.iter().map(|_| "On-demand"))),
        ));
    }
    if lines.iter().any(|l| l.tag.is_some()) {
        cols.push((
            format!("resource_tags_user_{tag}"),
            Arc::new(StringArray::from_iter(lines.iter().map(|l| Some(l.tag.clone().unwrap_or_default())))),
        ));
    }
    if n % 2 == 1 {
        cols.reverse();
    }
    to_batch(cols)
}

fn to_batch(cols: Vec<(String, ArrayRef)>) -> anyhow::Result<RecordBatch> {
    let fields: Vec<Field> = cols.iter().map(|(n, a)| Field::new(n, a.data_type().clone(), true)).collect();
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), cols.into_iter().map(|(_, a)| a).collect())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_codes_read_like_cur_usage_types() {
        assert_eq!(model_code("anthropic.claude-3-haiku-20240307-v1:0"), "Claude3Haiku");
        assert_eq!(model_code("amazon.nova-lite-v1:0"), "NovaLite");
        assert_eq!(model_code("anthropic.claude-haiku-4-5-20251001-v1:0"), "ClaudeHaiku45");
        assert_eq!(model_code("meta.llama3-1-70b-instruct-v1:0"), "Llama3170bInstruct");
    }
}
