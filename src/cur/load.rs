//! Loading one billing period of CUR Parquet with DataFusion: the period's files, read by
//! column name, Bedrock lines only, summed per day × line type × usage type × resource × tag.
//!
//! Both CUR shapes are read by the same query, built per file from that file's own schema:
//! CUR 2.0 data exports (`resource_tags` is a `map<string,string>` keyed `user_<tag>`,
//! `product` a map) and legacy CUR (one `resource_tags_user_<tag>` column per tag, flat
//! `product_*` columns, the set of columns varying between files). A column a file lacks is
//! read as NULL; a file lacking a column tally cannot do without is an error naming both.
//!
//! Which files: below the `--cur` folder, a path component that is a partition
//! (`BILLING_PERIOD=YYYY-MM`, `year=YYYY`, `month=M`, or a legacy `YYYYMMDD-YYYYMMDD` folder)
//! must name the period; files under no partition folder are all read. Within a file, rows are
//! kept when `bill_billing_period_start_date` (if the file has it) is in the period. A period is
//! loaded whole, as one snapshot: each CUR refresh restates the whole period, so re-running
//! replaces and never adds.
//!
//! Bedrock lines: `line_item_product_code = 'AmazonBedrock'`, or a product name containing
//! `Amazon Bedrock` (Marketplace-billed models such as "Claude 3 Haiku (Amazon Bedrock
//! Edition)", whose product code is a Marketplace code). Money is converted exactly per line
//! before it is summed (see `cur::money`).

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Decimal128Array, Float64Array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Date32Type, Decimal128Type, Int64Type, Schema};
use datafusion::error::DataFusionError;
use datafusion::logical_expr::{create_udf, ColumnarValue, ScalarFunctionImplementation, ScalarUDF, Volatility};
use datafusion::parquet::arrow::parquet_to_arrow_schema;
use datafusion::parquet::file::reader::{FileReader, SerializedFileReader};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};
use futures::StreamExt;

use crate::cur::money;
use crate::ingest::Progress;

/// A CUR that could not be read, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum CurError {
    #[error("cur folder {path}: {message}")]
    Folder { path: PathBuf, message: String },
    #[error("cur file {path}: not a readable Parquet file: {message}")]
    NotParquet { path: PathBuf, message: String },
    #[error("cur file {path}: missing column `{column}` (a CUR line item always has it; is this a Cost and Usage Report?)")]
    MissingColumn { path: PathBuf, column: String },
    #[error("cur file {path}: column `{column}` has type {found}, expected {expected}")]
    WrongType { path: PathBuf, column: String, found: String, expected: String },
    #[error("cur file {path}: {source}")]
    Query { path: PathBuf, source: DataFusionError },
    #[error("the period must be YYYY-MM, not {0:?}")]
    Period(String),
}

/// One group of Bedrock lines: day × line type × product code × usage type × resource × tag ×
/// pricing unit × description (descriptions kept for adjustments only).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupKey {
    /// `YYYY-MM-DD` of `line_item_usage_start_date`, UTC.
    pub day: String,
    pub line_item_type: String,
    pub product_code: String,
    pub usage_type: String,
    /// `line_item_resource_id`, empty when absent.
    pub resource: String,
    /// The tenant tag's value; `None` when absent or blank.
    pub tag: Option<String>,
    pub pricing_unit: String,
    /// `line_item_line_item_description` for adjustments; empty for usage.
    pub description: String,
}

/// Sums of one group, money and quantity in units of 10⁻¹⁰.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GroupSums {
    /// `line_item_usage_amount`, in the pricing unit.
    pub quantity: i128,
    /// `line_item_unblended_cost`.
    pub cost: i128,
    pub lines: u64,
}

/// The period's Bedrock lines.
#[derive(Debug, Clone, Default)]
pub struct CurSnapshot {
    /// The files read, sorted.
    pub files: Vec<PathBuf>,
    pub bytes: u64,
    pub groups: BTreeMap<GroupKey, GroupSums>,
}

impl CurSnapshot {
    pub fn lines(&self) -> u64 {
        self.groups.values().map(|g| g.lines).sum()
    }
}

/// What to read.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// `YYYY-MM`.
    pub period: String,
    /// The tenant tag's name (`tenant` reads `resource_tags['user_tenant']` and
    /// `resource_tags_user_tenant`).
    pub tenant_tag: String,
}

/// Where the CUR is: `--cur` as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CurInput {
    /// A folder (a data export or legacy report), or one Parquet file.
    Folder(PathBuf),
    /// `s3://bucket/prefix`, read through [`super::s3::SdkStore`] with these settings.
    #[cfg(feature = "aws")]
    S3 { url: crate::source::s3::S3Url, aws: crate::aws::AwsSettings },
}

impl CurInput {
    /// `--cur`: an `s3://bucket/prefix` (reached as `[sources]` says: region, endpoint) or a path.
    pub fn parse(arg: &str, sources: &crate::config::SourcesConfig) -> Result<CurInput, CurError> {
        if !arg.starts_with("s3://") {
            return Ok(CurInput::Folder(PathBuf::from(arg)));
        }
        #[cfg(feature = "aws")]
        {
            let mut url = crate::source::s3::S3Url::parse(arg).map_err(|message| CurError::Folder { path: arg.into(), message })?;
            url.prefix = url.prefix.trim_start_matches('/').to_string();
            Ok(CurInput::S3 { url, aws: sources.aws() })
        }
        #[cfg(not(feature = "aws"))]
        {
            let _ = sources;
            Err(CurError::Folder {
                path: arg.into(),
                message: "reading the CUR from S3 needs a build with the `aws` feature (cargo build --features aws); or copy the export to a folder".into(),
            })
        }
    }
}

impl std::fmt::Display for CurInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CurInput::Folder(p) => write!(f, "{}", p.display()),
            #[cfg(feature = "aws")]
            CurInput::S3 { url, .. } => write!(f, "{url}"),
        }
    }
}

/// One file of the period: where DataFusion reads it and how errors name it.
struct CurFile {
    /// A local path, or `s3://bucket/key`.
    location: String,
    /// The name in errors and in `CurSnapshot::files`.
    name: PathBuf,
    size: u64,
}

/// Reads the period's Bedrock lines under the folder `dir` (or the one file `dir`).
pub fn load(dir: &Path, opts: &LoadOptions, progress: &dyn Progress) -> Result<CurSnapshot, CurError> {
    load_from(&CurInput::Folder(dir.to_owned()), opts, progress)
}

/// Reads the period's Bedrock lines from a folder or from S3.
pub fn load_from(input: &CurInput, opts: &LoadOptions, progress: &dyn Progress) -> Result<CurSnapshot, CurError> {
    let (year, month) = parse_period(&opts.period)?;
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .map_err(|e| CurError::Folder { path: input.to_string().into(), message: format!("cannot start the query runtime: {e}") })?;
    let config = SessionConfig::new().with_information_schema(false);
    let ctx = SessionContext::new_with_config(config);
    ctx.register_udf(money_udf());
    let files = match input {
        CurInput::Folder(dir) => period_files(dir, year, month)?
            .into_iter()
            .map(|(path, size)| CurFile { location: path.to_string_lossy().into_owned(), name: path, size })
            .collect::<Vec<_>>(),
        #[cfg(feature = "aws")]
        CurInput::S3 { url, aws } => runtime.block_on(s3_files(&ctx, url, aws, year, month))?,
    };
    let mut snap = CurSnapshot { files: files.iter().map(|f| f.name.clone()).collect(), ..CurSnapshot::default() };
    let total: u64 = files.iter().map(|f| f.size).sum();
    progress.start(total);
    // Files are queried `threads` at a time: a CUR file is often one row group, which
    // DataFusion scans on one core. Groups are merged in file order as each file's query ends
    // (sums of integers, so the result does not depend on which file finishes first).
    let local = matches!(input, CurInput::Folder(_));
    let queries = files.iter().enumerate().map(|(i, file)| {
        let ctx = ctx.clone();
        async move { file_groups(&ctx, &format!("cur_file_{i}"), file, local, opts).await }
    });
    runtime.block_on(async {
        let mut results = futures::stream::iter(queries).buffered(threads);
        let mut files = files.iter();
        while let Some(batches) = results.next().await {
            let (batches, file) = (batches?, files.next().expect("one result per file"));
            for b in &batches {
                add_groups(&mut snap.groups, b).map_err(|source| CurError::Query { path: file.name.clone(), source })?;
            }
            snap.bytes += file.size;
            progress.update(snap.bytes, snap.lines());
        }
        Ok::<(), CurError>(())
    })?;
    progress.finish();
    Ok(snap)
}

/// One file's Bedrock lines, grouped: the query is built from the file's own schema.
async fn file_groups(ctx: &SessionContext, table: &str, file: &CurFile, local: bool, opts: &LoadOptions) -> Result<Vec<RecordBatch>, CurError> {
    let query_err = |source| CurError::Query { path: file.name.clone(), source };
    // A local file's footer is read first, so a file that is not Parquet is named as such.
    let local_schema = if local { Some(read_schema(&file.name)?) } else { None };
    ctx.register_parquet(table, &file.location, ParquetReadOptions::default()).await.map_err(query_err)?;
    let schema = match local_schema {
        Some(schema) => schema,
        None => ctx.table_provider(table).await.map_err(query_err)?.schema().as_ref().clone(),
    };
    let result = match file_query(&file.name, &schema, table, opts) {
        Ok(sql) => async { ctx.sql(&sql).await?.collect().await }.await.map_err(query_err),
        Err(e) => Err(e),
    };
    ctx.deregister_table(table).map_err(query_err)?;
    result
}

/// Lists the period's objects and registers the bucket's store with DataFusion.
#[cfg(feature = "aws")]
async fn s3_files(ctx: &SessionContext, url: &crate::source::s3::S3Url, aws: &crate::aws::AwsSettings, year: i32, month: u32) -> Result<Vec<CurFile>, CurError> {
    let folder_err = |message: String| CurError::Folder { path: url.to_string().into(), message };
    let store = super::s3::SdkStore::connect(aws, &url.bucket).await;
    let objects = super::s3::list_period(&store, url, year, month).await.map_err(|e| folder_err(e.to_string()))?;
    let bucket_url = datafusion::execution::object_store::ObjectStoreUrl::parse(format!("s3://{}", url.bucket))
        .map_err(|e| folder_err(e.to_string()))?;
    ctx.register_object_store(bucket_url.as_ref(), Arc::new(store));
    Ok(objects
        .into_iter()
        .map(|o| {
            let location = format!("s3://{}/{}", url.bucket, o.location.as_ref());
            CurFile { name: PathBuf::from(&location), location, size: o.size }
        })
        .collect())
}

/// `YYYY-MM` → (year, month).
pub fn parse_period(period: &str) -> Result<(i32, u32), CurError> {
    let bad = || CurError::Period(period.to_string());
    let (y, m) = period.split_once('-').ok_or_else(bad)?;
    if y.len() != 4 || m.len() != 2 {
        return Err(bad());
    }
    let (y, m): (i32, u32) = (y.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if !(1..=12).contains(&m) {
        return Err(bad());
    }
    Ok((y, m))
}

/// The month after (year, month).
pub fn next_month(y: i32, m: u32) -> (i32, u32) {
    if m == 12 { (y + 1, 1) } else { (y, m + 1) }
}

/// The Parquet files under `dir` that belong to the period, with their sizes, sorted by path.
fn period_files(dir: &Path, year: i32, month: u32) -> Result<Vec<(PathBuf, u64)>, CurError> {
    let folder_err = |message: String| CurError::Folder { path: dir.to_owned(), message };
    let meta = std::fs::metadata(dir).map_err(|e| folder_err(e.to_string()))?;
    if meta.is_file() {
        return Ok(vec![(dir.to_owned(), meta.len())]);
    }
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|e| folder_err(format!("{}: {e}", d.display())))?;
        for entry in entries {
            let entry = entry.map_err(|e| folder_err(e.to_string()))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let kind = entry.file_type().map_err(|e| folder_err(e.to_string()))?;
            if name.starts_with('.') {
                continue;
            }
            if kind.is_dir() {
                if partition_matches(&name, year, month) {
                    stack.push(path);
                }
            } else if name.ends_with(".parquet") {
                let len = entry.metadata().map_err(|e| folder_err(e.to_string()))?.len();
                out.push((path, len));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Whether a folder name is compatible with the period: not a partition, or the period's.
pub fn partition_matches(name: &str, year: i32, month: u32) -> bool {
    if let Some((key, value)) = name.split_once('=') {
        return match key.to_ascii_lowercase().as_str() {
            "billing_period" => value == format!("{year:04}-{month:02}"),
            "year" => value.parse::<i32>().ok() == Some(year),
            "month" => value.parse::<u32>().ok() == Some(month),
            _ => true,
        };
    }
    // Legacy CUR report folders: `20241101-20241201`.
    let b = name.as_bytes();
    if b.len() == 17 && b[8] == b'-' && b.iter().enumerate().all(|(i, c)| i == 8 || c.is_ascii_digit()) {
        return name[..6] == format!("{year:04}{month:02}");
    }
    true
}

/// The per-file query, built from the file's schema.
fn file_query(path: &Path, schema: &Schema, table: &str, opts: &LoadOptions) -> Result<String, CurError> {
    let has = |c: &str| schema.field_with_name(c).ok().map(|f| f.data_type().clone());
    let missing = |c: &str| CurError::MissingColumn { path: path.to_owned(), column: c.to_string() };
    let text = |c: &str| -> String {
        match has(c) {
            Some(_) => format!("CAST(\"{c}\" AS VARCHAR)"),
            None => "CAST(NULL AS VARCHAR)".into(),
        }
    };
    let required = |c: &str| has(c).map(|_| ()).ok_or_else(|| missing(c));
    for c in ["line_item_product_code", "line_item_usage_type", "line_item_unblended_cost", "line_item_usage_start_date", "line_item_line_item_type"] {
        required(c)?;
    }
    let number = |c: &str| -> Result<String, CurError> {
        Ok(match has(c) {
            None => format!("CAST(NULL AS DECIMAL(38, {}))", money::SCALE),
            Some(DataType::Float64 | DataType::Float32 | DataType::Float16) => format!("tally_money(CAST(\"{c}\" AS DOUBLE))"),
            Some(t) if t.is_numeric() || matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View) => {
                format!("CAST(\"{c}\" AS DECIMAL(38, {}))", money::SCALE)
            }
            Some(t) => {
                return Err(CurError::WrongType { path: path.to_owned(), column: c.into(), found: t.to_string(), expected: "a number".into() })
            }
        })
    };
    let map_or_column = |map: &str, key: &str, flat: &str| -> String {
        match (has(map), has(flat)) {
            (Some(DataType::Map(..)), _) => format!("CAST(\"{map}\"['{key}'] AS VARCHAR)"),
            (_, Some(_)) => format!("CAST(\"{flat}\" AS VARCHAR)"),
            _ => "CAST(NULL AS VARCHAR)".into(),
        }
    };
    let tag = opts.tenant_tag.replace('\'', "''");
    let tag_expr = map_or_column("resource_tags", &format!("user_{tag}"), &format!("resource_tags_user_{tag}"));
    let product_name = map_or_column("product", "product_name", "product_product_name");
    let line_type = text("line_item_line_item_type");
    let (y, m) = parse_period(&opts.period)?;
    let (ny, nm) = next_month(y, m);
    let period_filter = match has("bill_billing_period_start_date") {
        Some(_) => format!(
            " AND CAST(\"bill_billing_period_start_date\" AS TIMESTAMP) >= TIMESTAMP '{y:04}-{m:02}-01T00:00:00' \
             AND CAST(\"bill_billing_period_start_date\" AS TIMESTAMP) < TIMESTAMP '{ny:04}-{nm:02}-01T00:00:00'"
        ),
        None => String::new(),
    };
    Ok(format!(
        "SELECT CAST(CAST(\"line_item_usage_start_date\" AS TIMESTAMP) AS DATE) AS day, \
         COALESCE({line_type}, '') AS line_item_type, \
         COALESCE({code}, '') AS product_code, \
         COALESCE({usage}, '') AS usage_type, \
         COALESCE({resource}, '') AS resource, \
         NULLIF(TRIM({tag_expr}), '') AS tag, \
         COALESCE({unit}, '') AS pricing_unit, \
         CASE WHEN {line_type} = 'Usage' THEN '' ELSE COALESCE({description}, '') END AS description, \
         SUM({quantity}) AS quantity, SUM({cost}) AS cost, COUNT(*) AS lines \
         FROM {table} \
         WHERE ({code} = 'AmazonBedrock' OR {product_name} LIKE '%Amazon Bedrock%'){period_filter} \
         GROUP BY 1, 2, 3, 4, 5, 6, 7, 8",
        code = text("line_item_product_code"),
        usage = text("line_item_usage_type"),
        resource = text("line_item_resource_id"),
        unit = text("pricing_unit"),
        description = text("line_item_line_item_description"),
        quantity = number("line_item_usage_amount")?,
        cost = number("line_item_unblended_cost")?,
    ))
}

fn read_schema(path: &Path) -> Result<Schema, CurError> {
    let not_parquet = |message: String| CurError::NotParquet { path: path.to_owned(), message };
    let file = File::open(path).map_err(|e| not_parquet(e.to_string()))?;
    let reader = SerializedFileReader::new(file).map_err(|e| not_parquet(e.to_string()))?;
    let meta = reader.metadata().file_metadata();
    parquet_to_arrow_schema(meta.schema_descr(), meta.key_value_metadata()).map_err(|e| not_parquet(e.to_string()))
}

/// `tally_money(double) → decimal(38, 10)`: a CUR double read back as the decimal it was
/// written from (see `cur::money`).
fn money_udf() -> ScalarUDF {
    let f: ScalarFunctionImplementation = Arc::new(|args: &[ColumnarValue]| {
        let arrays = ColumnarValue::values_to_arrays(args)?;
        let values = arrays[0]
            .as_any()
            .downcast_ref::<Float64Array>()
            .ok_or_else(|| DataFusionError::Internal("tally_money takes a double".into()))?;
        let out: Decimal128Array = values.iter().map(|v| v.and_then(money::to_units_f64)).collect();
        let out = out.with_precision_and_scale(38, money::SCALE as i8)?;
        Ok(ColumnarValue::Array(Arc::new(out)))
    });
    create_udf("tally_money", vec![DataType::Float64], money::arrow_type(), Volatility::Immutable, f)
}

fn strings(col: &ArrayRef) -> Result<ArrayRef, DataFusionError> {
    Ok(cast(col, &DataType::Utf8)?)
}

fn add_groups(groups: &mut BTreeMap<GroupKey, GroupSums>, b: &datafusion::arrow::record_batch::RecordBatch) -> Result<(), DataFusionError> {
    let day = b.column(0).as_primitive::<Date32Type>();
    let text: Vec<ArrayRef> = (1..8).map(|i| strings(b.column(i))).collect::<Result<_, _>>()?;
    let text: Vec<&datafusion::arrow::array::StringArray> = text.iter().map(|a| a.as_string::<i32>()).collect();
    let quantity = b.column(8).as_primitive::<Decimal128Type>();
    let cost = b.column(9).as_primitive::<Decimal128Type>();
    let lines = b.column(10).as_primitive::<Int64Type>();
    let s = |i: usize, row: usize| -> String { if text[i].is_null(row) { String::new() } else { text[i].value(row).to_string() } };
    for row in 0..b.num_rows() {
        if day.is_null(row) {
            return Err(DataFusionError::Execution("a Bedrock line has no line_item_usage_start_date".into()));
        }
        let key = GroupKey {
            day: crate::reconcile::tables::date32_label(day.value(row)),
            line_item_type: s(0, row),
            product_code: s(1, row),
            usage_type: s(2, row),
            resource: s(3, row),
            tag: (!text[4].is_null(row)).then(|| text[4].value(row).to_string()),
            pricing_unit: s(5, row),
            description: s(6, row),
        };
        let g = groups.entry(key).or_default();
        g.quantity += if quantity.is_null(row) { 0 } else { quantity.value(row) };
        g.cost += if cost.is_null(row) { 0 } else { cost.value(row) };
        g.lines += lines.value(row) as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_folders_select_the_period() {
        assert!(partition_matches("BILLING_PERIOD=2025-11", 2025, 11));
        assert!(!partition_matches("BILLING_PERIOD=2025-10", 2025, 11));
        assert!(partition_matches("year=2024", 2024, 9) && partition_matches("month=9", 2024, 9));
        assert!(partition_matches("month=09", 2024, 9));
        assert!(!partition_matches("month=10", 2024, 9));
        assert!(partition_matches("20241101-20241201", 2024, 11));
        assert!(!partition_matches("20241001-20241101", 2024, 11));
        assert!(partition_matches("data", 2024, 11));
    }
}
