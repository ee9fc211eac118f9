//! Loading one billing period of CUR Parquet with Arrow's Parquet reader (the one DataFusion
//! runs on): the period's files, read by column name, Bedrock lines only, summed per day × line
//! type × usage type × resource × tag (`scan` does the summing; its docs give the SQL it is
//! equivalent to).
//!
//! Both CUR shapes are read by the same plan, built per file from that file's own schema:
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
//! Bedrock lines: `line_item_product_code` `AmazonBedrock`, `AmazonBedrockFoundationModels` or
//! `AmazonBedrockService`, or a product name containing
//! `Amazon Bedrock` (Marketplace-billed models such as "Claude 3 Haiku (Amazon Bedrock
//! Edition)", whose product code is a Marketplace code). Money is converted exactly per line
//! before it is summed (see `cur::money`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::object_store::local::LocalFileSystem;
use datafusion::object_store::path::Path as ObjectPath;
use datafusion::object_store::{ObjectStore, ObjectStoreExt};
use datafusion::parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};
use datafusion::parquet::arrow::async_reader::{AsyncFileReader, ParquetRecordBatchStreamBuilder};
use datafusion::parquet::arrow::ProjectionMask;
use datafusion::parquet::errors::ParquetError;
use datafusion::parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader, RowGroupMetaData};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};

use super::partition::partition_matches;
use super::scan::{self, FilePlan, Groups, PlanError};
pub use super::scan::{GroupKey, GroupSums, KeyFilter};
use crate::month::Month;
use crate::progress::Progress;

/// A CUR that could not be read, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum CurError {
    #[error("cur folder {path}: {message}")]
    Folder { path: PathBuf, message: String },
    #[error("cur file {path}: not a readable Parquet file: {message}")]
    NotParquet { path: PathBuf, message: String },
    #[error(
        "cur file {path}: missing column `{column}` (a CUR line item always has it; is this a Cost and Usage Report?)"
    )]
    MissingColumn { path: PathBuf, column: String },
    #[error("cur file {path}: column `{column}` has type {found}, expected {expected}")]
    WrongType { path: PathBuf, column: String, found: String, expected: String },
    #[error("cur file {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("the period must be YYYY-MM, not {0:?}")]
    Period(String),
    #[error("{input}: no CUR file for the period {period}; nothing was reconciled or changed")]
    NoFiles { input: String, period: String },
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
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// `YYYY-MM`.
    pub period: String,
    /// The tenant tag's name (`tenant` reads `resource_tags['user_tenant']` and
    /// `resource_tags_user_tenant`).
    pub tenant_tag: String,
    /// Which usage accounts and principals are kept in the group key (see [`scan::KeyFilter`]).
    pub keep: scan::KeyFilter,
}

/// Where the CUR is: `--cur` as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CurInput {
    /// A folder (a data export or legacy report), or one Parquet file.
    Folder(PathBuf),
    /// `s3://bucket/prefix`, read through [`super::s3::SdkStore`] with these settings.
    #[cfg(feature = "aws")]
    S3 { url: crate::aws::S3Url, aws: crate::aws::AwsSettings },
}

impl CurInput {
    /// `--cur`: an `s3://bucket/prefix` (reached as `[sources]` says: region, endpoint) or a path.
    pub fn parse(arg: &str, sources: &crate::source::SourcesConfig) -> Result<CurInput, CurError> {
        if !arg.starts_with("s3://") {
            return Ok(CurInput::Folder(PathBuf::from(arg)));
        }
        #[cfg(feature = "aws")]
        {
            let mut url =
                crate::aws::S3Url::parse(arg).map_err(|message| CurError::Folder { path: arg.into(), message })?;
            url.prefix = url.prefix.trim_start_matches('/').to_string();
            Ok(CurInput::S3 { url, aws: sources.aws() })
        }
        #[cfg(not(feature = "aws"))]
        {
            let _ = sources;
            Err(CurError::Folder {
                path: arg.into(),
                message: "reading the CUR from S3 needs a build with the `aws` feature (the default; this one was built with --no-default-features); or copy the export to a folder".into(),
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

/// One file of the period.
struct CurFile {
    /// Where the store has it.
    location: ObjectPath,
    /// The name in errors and in `CurSnapshot::files`: a local path, or `s3://bucket/key`.
    name: PathBuf,
    size: u64,
}

/// A file whose footer has been read, with the plan to read it by.
struct OpenFile {
    store: Arc<dyn ObjectStore>,
    file: CurFile,
    metadata: ArrowReaderMetadata,
    plan: Arc<FilePlan>,
}

/// Reads the period's Bedrock lines under the folder `dir` (or the one file `dir`).
pub fn load(dir: &Path, opts: &LoadOptions, progress: &dyn Progress) -> Result<CurSnapshot, CurError> {
    load_from(&CurInput::Folder(dir.to_owned()), opts, progress)
}

/// Reads the period's Bedrock lines from a folder or from S3.
///
/// Every row group of every file is one task, `threads` (or, from S3, four times as many)
/// at a time: a CUR file is often a few row groups, and a row group is decoded on one core.
/// Sums are merged as tasks end, in file and row-group order (integer sums, so the result
/// does not depend on which task finishes first).
pub fn load_from(input: &CurInput, opts: &LoadOptions, progress: &dyn Progress) -> Result<CurSnapshot, CurError> {
    let (year, month) = parse_period(&opts.period)?;
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build().map_err(|e| {
            CurError::Folder {
                path: input.to_string().into(),
                message: format!("cannot start the reader runtime: {e}"),
            }
        })?;
    let (store, files, in_flight): (Arc<dyn ObjectStore>, Vec<CurFile>, usize) = match input {
        CurInput::Folder(dir) => (Arc::new(LocalFileSystem::new()), local_files(dir, year, month)?, threads),
        #[cfg(feature = "aws")]
        CurInput::S3 { url, aws } => {
            let (store, files) = runtime.block_on(s3_files(url, aws, year, month))?;
            (store, files, threads * 4)
        }
    };
    if files.is_empty() {
        // Reconciling nothing would replace a good period with an empty one, and invoices
        // would then be issued final at cost 0.
        return Err(CurError::NoFiles { input: input.to_string(), period: opts.period.clone() });
    }
    let mut snap = CurSnapshot { files: files.iter().map(|f| f.name.clone()).collect(), ..CurSnapshot::default() };
    let total: u64 = files.iter().map(|f| f.size).sum();
    progress.start(total);
    runtime.block_on(async {
        // Footers first (small reads), so a file that is not a CUR fails before any is scanned.
        let opened: Vec<Arc<OpenFile>> =
            futures::stream::iter(files.into_iter().map(|file| open(store.clone(), file, year, month, opts)))
                .buffered(in_flight)
                .map(|r| r.map(Arc::new))
                .collect::<Vec<_>>()
                .await
                .into_iter()
                .collect::<Result<_, _>>()?;
        let tasks = opened.iter().flat_map(|f| {
            let groups = f.metadata.metadata().row_groups();
            let code = code_leaf(f);
            let share = |rg: &RowGroupMetaData| {
                f.file.size * rg.num_rows().max(0) as u64
                    / (f.metadata.metadata().file_metadata().num_rows().max(1) as u64)
            };
            groups.iter().enumerate().map(move |(i, rg)| {
                let all_bedrock = code.is_some_and(|c| scan::all_bedrock(rg.column(c).statistics()));
                let (f, bytes) = (f.clone(), share(rg));
                async move {
                    let name = f.file.name.clone();
                    let joined = tokio::spawn(scan_row_group(f, i, all_bedrock)).await;
                    let groups = joined
                        .map_err(|e| CurError::Read { path: name, message: format!("a reader task failed: {e}") })??;
                    Ok::<_, CurError>((groups, bytes))
                }
            })
        });
        let mut results = futures::stream::iter(tasks).buffered(in_flight);
        let mut lines = 0u64;
        while let Some(result) = results.next().await {
            let (groups, bytes) = result?;
            for (key, sums) in groups {
                lines += sums.lines;
                let g = snap.groups.entry(key).or_default();
                g.quantity += sums.quantity;
                g.cost += sums.cost;
                g.lines += sums.lines;
            }
            snap.bytes += bytes;
            progress.update(snap.bytes, lines);
        }
        Ok::<(), CurError>(())
    })?;
    snap.bytes = total;
    progress.finish();
    Ok(snap)
}

/// Reads a file's footer and plans how to read it from its schema.
async fn open(
    store: Arc<dyn ObjectStore>,
    file: CurFile,
    year: i32,
    month: u32,
    opts: &LoadOptions,
) -> Result<OpenFile, CurError> {
    let not_parquet = |e: ParquetError| CurError::NotParquet { path: file.name.clone(), message: e.to_string() };
    let mut reader = StoreReader::new(&store, &file);
    // The schema Parquet's own types give (not an embedded Arrow schema), so every writer's
    // files are read alike.
    let metadata =
        ArrowReaderMetadata::load_async(&mut reader, ArrowReaderOptions::new().with_skip_arrow_metadata(true))
            .await
            .map_err(not_parquet)?;
    let plan =
        FilePlan::new(metadata.schema(), year, month, &opts.tenant_tag, opts.keep.clone()).map_err(|e| match e {
            PlanError::MissingColumn(column) => CurError::MissingColumn { path: file.name.clone(), column },
            PlanError::WrongType { column, found, expected } => {
                CurError::WrongType { path: file.name.clone(), column, found, expected }
            }
        })?;
    let metadata = ArrowReaderMetadata::try_new(
        metadata.metadata().clone(),
        ArrowReaderOptions::new().with_schema(plan.reader_schema()),
    )
    .map_err(|e| CurError::Read { path: file.name.clone(), message: e.to_string() })?;
    Ok(OpenFile { store, file, metadata, plan: Arc::new(plan) })
}

/// The leaf column of the product code, whose statistics can spare reading product names.
fn code_leaf(f: &OpenFile) -> Option<usize> {
    f.metadata.parquet_schema().columns().iter().position(|c| c.path().parts() == [scan::REQUIRED[0]])
}

/// One row group's Bedrock lines, summed.
async fn scan_row_group(
    f: Arc<OpenFile>,
    row_group: usize,
    all_bedrock: bool,
) -> Result<Vec<(GroupKey, GroupSums)>, CurError> {
    let read_err = |message: String| CurError::Read { path: f.file.name.clone(), message };
    let reader = StoreReader::new(&f.store, &f.file);
    let mask = ProjectionMask::roots(f.metadata.parquet_schema(), f.plan.projection(all_bedrock));
    let mut batches = ParquetRecordBatchStreamBuilder::new_with_metadata(reader, f.metadata.clone())
        .with_projection(mask)
        .with_row_groups(vec![row_group])
        .with_batch_size(BATCH_ROWS)
        .build()
        .map_err(|e| read_err(e.to_string()))?;
    let mut groups = Groups::new(f.plan.clone());
    while let Some(batch) = batches.next().await {
        let batch = batch.map_err(|e| read_err(e.to_string()))?;
        groups.add(&batch).map_err(|m| read_err(format!("row group {row_group}: {m}")))?;
    }
    Ok(groups.into_keys())
}

/// Parquet's reads of one file (footer, then column chunks), answered by the object store.
struct StoreReader {
    store: Arc<dyn ObjectStore>,
    location: ObjectPath,
    size: u64,
}

impl StoreReader {
    fn new(store: &Arc<dyn ObjectStore>, file: &CurFile) -> StoreReader {
        StoreReader { store: store.clone(), location: file.location.clone(), size: file.size }
    }
}

fn store_err(e: datafusion::object_store::Error) -> ParquetError {
    ParquetError::External(Box::new(e))
}

impl AsyncFileReader for StoreReader {
    fn get_bytes(&mut self, range: std::ops::Range<u64>) -> BoxFuture<'_, Result<bytes::Bytes, ParquetError>> {
        async move { self.store.get_range(&self.location, range).await.map_err(store_err) }.boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<std::ops::Range<u64>>,
    ) -> BoxFuture<'_, Result<Vec<bytes::Bytes>, ParquetError>> {
        async move { self.store.get_ranges(&self.location, &ranges).await.map_err(store_err) }.boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, Result<Arc<ParquetMetaData>, ParquetError>> {
        async move {
            let size = self.size;
            let reader =
                ParquetMetaDataReader::new().with_metadata_options(options.map(|o| o.metadata_options().clone()));
            Ok(Arc::new(reader.load_and_finish(self, size).await?))
        }
        .boxed()
    }
}

/// Rows per decoded batch.
const BATCH_ROWS: usize = 8192;

/// The period's files under a local folder (or the one file), as the local store names them.
fn local_files(dir: &Path, year: i32, month: u32) -> Result<Vec<CurFile>, CurError> {
    period_files(dir, year, month)?
        .into_iter()
        .map(|(path, size)| {
            let absolute = std::path::absolute(&path)
                .map_err(|e| CurError::Folder { path: path.clone(), message: e.to_string() })?;
            let location = ObjectPath::from_absolute_path(&absolute)
                .map_err(|e| CurError::Folder { path: path.clone(), message: e.to_string() })?;
            Ok(CurFile { location, name: path, size })
        })
        .collect()
}

/// Lists the period's objects.
#[cfg(feature = "aws")]
async fn s3_files(
    url: &crate::aws::S3Url,
    aws: &crate::aws::AwsSettings,
    year: i32,
    month: u32,
) -> Result<(Arc<dyn ObjectStore>, Vec<CurFile>), CurError> {
    let folder_err = |message: String| CurError::Folder { path: url.to_string().into(), message };
    let store = super::s3::SdkStore::connect(aws, &url.bucket).await;
    let objects = super::s3::list_period(&store, url, year, month).await.map_err(|e| folder_err(e.to_string()))?;
    let files = objects
        .into_iter()
        .map(|o| CurFile {
            name: PathBuf::from(format!("s3://{}/{}", url.bucket, o.location.as_ref())),
            location: o.location,
            size: o.size,
        })
        .collect();
    Ok((Arc::new(store), files))
}

/// `YYYY-MM` → (year, month).
pub fn parse_period(period: &str) -> Result<(i32, u32), CurError> {
    let m = Month::parse(period).map_err(|_| CurError::Period(period.to_string()))?;
    Ok((m.year(), m.number()))
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

#[cfg(test)]
mod tests {
    use super::*;

    use crate::money;
    use datafusion::arrow::array::{ArrayRef, Float64Array, RecordBatch, StringArray};
    use datafusion::parquet::arrow::ArrowWriter;
    use datafusion::parquet::file::properties::WriterProperties;

    /// A legacy-CUR row: (code, product name, tag, billing period start, cost).
    type LegacyRow<'a> = (&'a str, &'a str, Option<&'a str>, &'a str, f64);

    fn legacy_batch(rows: &[LegacyRow<'_>]) -> RecordBatch {
        let text = |f: &dyn Fn(&LegacyRow<'_>) -> Option<String>| -> ArrayRef {
            Arc::new(rows.iter().map(f).collect::<StringArray>())
        };
        RecordBatch::try_from_iter(vec![
            ("line_item_product_code", text(&|r| Some(r.0.to_string()))),
            ("product_product_name", text(&|r| Some(r.1.to_string()))),
            ("resource_tags_user_tenant", text(&|r| r.2.map(str::to_string))),
            ("bill_billing_period_start_date", text(&|r| Some(r.3.to_string()))),
            ("line_item_usage_start_date", text(&|_| Some("2025-11-03T05:00:00Z".into()))),
            ("line_item_line_item_type", text(&|_| Some("Usage".into()))),
            ("line_item_usage_type", text(&|_| Some("USE1-Claude3Haiku-input-tokens".into()))),
            ("line_item_resource_id", text(&|_| None)),
            (
                "line_item_unblended_cost",
                Arc::new(rows.iter().map(|r| Some(r.4)).collect::<Float64Array>()) as ArrayRef,
            ),
        ])
        .unwrap()
    }

    fn write(path: &Path, dictionary: bool, row_groups: &[RecordBatch]) {
        let props = WriterProperties::builder().set_dictionary_enabled(dictionary).build();
        let mut w =
            ArrowWriter::try_new(std::fs::File::create(path).unwrap(), row_groups[0].schema(), Some(props)).unwrap();
        for rg in row_groups {
            w.write(rg).unwrap();
            w.flush().unwrap();
        }
        w.close().unwrap();
    }

    /// A row group of Bedrock lines only (its statistics spare the product names) and one of
    /// mixed services: a Marketplace-billed Bedrock model counts, another service and another
    /// period do not; tags are trimmed and a blank one is none. Dictionary-encoded and plain
    /// text read alike.
    #[test]
    fn bedrock_lines_are_picked_by_code_or_product_name_in_every_row_group() {
        let dir = tempfile::tempdir().unwrap();
        let groups = [
            legacy_batch(&[
                ("AmazonBedrock", "Amazon Bedrock", Some(" acme "), "2025-11-01T00:00:00Z", 0.1),
                ("AmazonBedrock", "Amazon Bedrock", Some("  "), "2025-11-01T00:00:00Z", 0.2),
            ]),
            legacy_batch(&[
                (
                    "7g37zhparap7eesm9k78jrzqc",
                    "Claude 3 Haiku (Amazon Bedrock Edition)",
                    Some("acme"),
                    "2025-11-01T00:00:00Z",
                    0.3,
                ),
                ("AmazonEC2", "Amazon Elastic Compute Cloud", Some("acme"), "2025-11-01T00:00:00Z", 5.0),
                ("AmazonBedrock", "Amazon Bedrock", Some("acme"), "2025-10-01T00:00:00Z", 7.0),
                (
                    "AmazonBedrockFoundationModels",
                    "Amazon Bedrock Foundation Models",
                    None,
                    "2025-11-01T00:00:00Z",
                    0.4,
                ),
                ("AmazonBedrockService", "Amazon Bedrock Service", None, "2025-11-01T00:00:00Z", 0.5),
            ]),
        ];
        let opts = LoadOptions { period: "2025-11".into(), tenant_tag: "tenant".into(), ..Default::default() };
        let mut results = Vec::new();
        for dictionary in [true, false] {
            let path = dir.path().join(format!("cur-{dictionary}.parquet"));
            write(&path, dictionary, &groups);
            let snap = load(&path, &opts, &crate::progress::NoProgress).unwrap();
            assert_eq!(snap.lines(), 5, "dictionary {dictionary}");
            let by_code = |code: &str, tag: Option<&str>| {
                snap.groups
                    .iter()
                    .filter(|(k, _)| k.product_code == code && k.tag.as_deref() == tag)
                    .map(|(_, s)| (s.lines, s.cost))
                    .collect::<Vec<_>>()
            };
            assert_eq!(by_code("AmazonBedrock", Some("acme")), vec![(1, money::to_units_text("0.1").unwrap())]);
            assert_eq!(by_code("AmazonBedrock", None), vec![(1, money::to_units_text("0.2").unwrap())]);
            assert_eq!(
                by_code("7g37zhparap7eesm9k78jrzqc", Some("acme")),
                vec![(1, money::to_units_text("0.3").unwrap())]
            );
            for (code, cost) in [("AmazonBedrockFoundationModels", "0.4"), ("AmazonBedrockService", "0.5")] {
                assert_eq!(by_code(code, None), vec![(1, money::to_units_text(cost).unwrap())], "{code}");
            }
            // A Marketplace line keeps its product name (it names the model); first-party ones
            // do not need it.
            let names: Vec<(&str, &str)> =
                snap.groups.keys().map(|k| (k.product_code.as_str(), k.product_name.as_str())).collect();
            assert!(names.contains(&("7g37zhparap7eesm9k78jrzqc", "Claude 3 Haiku (Amazon Bedrock Edition)")));
            assert!(names.iter().filter(|(c, _)| c.starts_with("AmazonBedrock")).all(|(_, n)| n.is_empty()));
            assert!(snap.groups.keys().all(|k| k.day == "2025-11-03" && k.resource.is_empty()));
            results.push(snap.groups);
        }
        assert_eq!(results[0], results[1]);
    }
}
