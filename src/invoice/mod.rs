//! Invoice (SPEC §4): each tenant's plan applied to the period's usage, as documents a billing
//! system imports and a finance team signs off.
//!
//! `plan` reads and checks `[plans]` and `[tenants]`; `charge` computes a plan's lines (the one
//! rounding to cents lives there); `issue` turns them into provisional drafts or immutable final
//! versions with deltas; `export` renders JSON, CSV and the `invoice_lines` table. Those four do
//! no I/O. [`run`] is the shell around them: it reads the counters (tokens and the list-price
//! estimate), the reconciled allocation when the period has one (`<out>/<period>/allocation.parquet`
//! makes the period final), and the final versions already written, and writes under
//! `<out>/<period>/invoices/`:
//!
//! - `<tenant>.provisional.json` — the draft of every billed tenant, rewritten by each run and
//!   removed once the period is final;
//! - `<tenant>.v<N>.json` — final version N, written once, never rewritten;
//! - `invoice_lines.csv` and `invoice_lines.parquet` — every line of every document present;
//! - `margin.csv` — charge, cost and margin per tenant, unbilled tenants included;
//! - `.in-flight` — while a run writes documents, their names (see [`IN_FLIGHT`]).
//!
//! A re-run on unchanged inputs writes no new version and the same bytes.

pub mod charge;
pub mod export;
pub mod issue;
pub mod plan;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::Decimal128Type;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use datafusion::parquet::errors::ParquetError;
use rust_decimal::Decimal;
use serde::Serialize;

use crate::ids::TenantId;
use crate::money;
use crate::store::{CounterStore, StoreError};
use crate::tables;
use crate::usage::Usage;
use export::InvoiceV1;
use issue::{Issued, MarginRow, Status};
use plan::Plans;

/// An invoice run that did not complete. Nothing already issued is ever changed by one.
#[derive(Debug, thiserror::Error)]
pub enum InvoiceError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: std::io::Error },
    #[error("reading {path}: {error}")]
    Parquet { path: PathBuf, error: ParquetError },
    #[error("{path}: not a tally invoice: {message}")]
    BadDocument { path: PathBuf, message: String },
    #[error("{dir} holds final invoices for {period} but {allocation} is missing: reconcile the period again before invoicing it")]
    FinalWithoutReconcile { period: String, dir: PathBuf, allocation: PathBuf },
    #[error("the config's plans: field `{field}`: {message}")]
    Plans { field: String, message: String },
    #[error("building invoice_lines: {0}")]
    Arrow(datafusion::arrow::error::ArrowError),
    #[error("putting the period's folder back together after an interrupted reconcile: {0}")]
    Recover(String),
}

/// What to invoice.
#[derive(Debug, Clone)]
pub struct Request {
    /// `YYYY-MM`.
    pub period: String,
    /// The folder reconcile writes to; invoices go to `<out>/<period>/invoices/`.
    pub out: PathBuf,
}

/// What a run did.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub period: String,
    pub status: Status,
    pub folder: PathBuf,
    /// Documents written by this run (provisional drafts or new final versions).
    pub written: usize,
    /// Drafts this run issued that were already on disk with the same bytes, left as they are.
    pub drafts_unchanged: usize,
    /// Final versions written by this run that are deltas (version ≥ 2).
    pub deltas: usize,
    /// Final invoices already issued and still right.
    pub unchanged: usize,
    /// Tenants with usage or cost and no plan.
    pub unbilled: usize,
    /// Σ of what billed tenants are charged (all versions).
    #[serde(with = "rust_decimal::serde::str")]
    pub charge: Decimal,
    /// Σ of every listed tenant's cost basis.
    #[serde(with = "rust_decimal::serde::str")]
    pub cost: Decimal,
    pub margin: Vec<MarginRow>,
    pub files: Vec<PathBuf>,
}

impl From<datafusion::arrow::error::ArrowError> for InvoiceError {
    fn from(e: datafusion::arrow::error::ArrowError) -> Self {
        InvoiceError::Arrow(e)
    }
}

/// Loads, invoices and writes (see the module docs).
pub fn run(req: &Request, plans: &Plans, store: &dyn CounterStore) -> Result<Report, InvoiceError> {
    // A reconcile stopped between its renames leaves the period in pieces: put it together
    // first, or this run would issue afresh beside the stranded, issued documents.
    crate::reconcile::recover_interrupted(&req.out, &req.period).map_err(|e| InvoiceError::Recover(e.to_string()))?;
    let period_dir = req.out.join(&req.period);
    let dir = period_dir.join(tables::INVOICES);
    let usage: BTreeMap<TenantId, Usage> = store.tenants(&req.period)?.into_iter().collect();
    let allocation = period_dir.join("allocation.parquet");
    let reconciled = if allocation.exists() { Some(reconciled_costs(&allocation)?) } else { None };
    recover_in_flight(&dir)?;
    let (finals, provisional_files) = read_folder(&dir)?;
    let issued = issued_by_tenant(&finals)?;
    if reconciled.is_none() && !issued.is_empty() {
        return Err(InvoiceError::FinalWithoutReconcile { period: req.period.clone(), dir, allocation });
    }
    let billing = issue::bill(&issue::Period {
        period: &req.period,
        plans,
        usage: &usage,
        reconciled: reconciled.as_ref(),
        issued: &issued,
    });

    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    // The tables depend on what is issued, not on the files: one thread builds them while the
    // others write the documents, and they are published after the last document.
    let finals: Vec<InvoiceV1> = finals.into_iter().map(|(_, d)| d).collect();
    let (documents, tables) = std::thread::scope(|scope| {
        let tables = scope.spawn(|| Tables::stage(&dir, finals, &billing));
        let documents = write_documents(&dir, &billing.invoices);
        (documents, tables.join().expect("the invoice tables thread panicked"))
    });
    let (documents, tables) = match (documents, tables) {
        (Ok(documents), Ok(tables)) => (documents, tables),
        (documents, tables) => {
            if let Ok(tables) = &tables {
                tables.discard();
            }
            return Err(documents.err().or(tables.err()).expect("one of the two failed"));
        }
    };
    let drafts_unchanged = documents.iter().filter(|(_, wrote)| !wrote).count();
    // Drafts are replaced as a whole: by this run's drafts, or by the final versions. (By file
    // name: hashing a whole path walks its components, which a profile saw.)
    let issued: std::collections::HashSet<&std::ffi::OsStr> =
        documents.iter().filter_map(|(path, _)| path.file_name()).collect();
    let stale: Vec<&PathBuf> =
        provisional_files.iter().filter(|p| p.file_name().is_some_and(|n| !issued.contains(n))).collect();
    if let Err(e) = on_every_core(&stale, |p| std::fs::remove_file(p).map_err(io(p))) {
        tables.discard();
        return Err(e);
    }
    let files = tables.publish()?;

    Ok(Report {
        period: req.period.clone(),
        status: billing.status,
        folder: dir.clone(),
        written: billing.invoices.len() - drafts_unchanged,
        drafts_unchanged,
        deltas: billing.invoices.iter().filter(|i| i.version >= 2).count(),
        unchanged: billing.unchanged,
        unbilled: billing.margin.iter().filter(|r| r.plan.is_none()).count(),
        charge: charge::sum_cents(billing.margin.iter().map(|r| &r.charge)),
        cost: billing.margin.iter().map(|r| r.cost).sum(),
        margin: billing.margin,
        files,
    })
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> InvoiceError {
    let path = path.to_owned();
    move |error| InvoiceError::Io { path, error }
}

/// The folder's tables (`invoice_lines.csv`, `invoice_lines.parquet`, `margin.csv`), written
/// under temporary names beside their final ones until [`Tables::publish`] renames them.
struct Tables {
    /// (temporary, final) per table.
    staged: Vec<(PathBuf, PathBuf)>,
}

impl Tables {
    /// Builds and writes the tables of every document present after this run — the final
    /// versions read from the folder and the ones `billing` issues — in (tenant, version) order.
    fn stage(dir: &Path, finals: Vec<InvoiceV1>, billing: &issue::Billing) -> Result<Tables, InvoiceError> {
        let mut docs = finals;
        docs.extend(billing.invoices.iter().map(InvoiceV1::from));
        docs.sort_by(|a, b| (a.tenant.as_str(), a.version).cmp(&(b.tenant.as_str(), b.version)));
        let mut tables = Tables { staged: Vec::with_capacity(3) };
        let result = tables.write_all(dir, &docs, &billing.margin);
        match result {
            Ok(()) => Ok(tables),
            Err(e) => {
                tables.discard();
                Err(e)
            }
        }
    }

    /// The Parquet table on one thread, the two CSVs on this one.
    fn write_all(&mut self, dir: &Path, docs: &[InvoiceV1], margin: &[MarginRow]) -> Result<(), InvoiceError> {
        let names = ["invoice_lines.csv", "invoice_lines.parquet", "margin.csv"].map(|name| Self::names(dir, name));
        self.staged.extend(names.iter().cloned());
        let [(csv, _), (parquet, _), (margin_csv, _)] = &names;
        std::thread::scope(|scope| {
            let table = scope.spawn(|| {
                let batch = export::lines_table(docs)?;
                crate::tables::write_parquet(parquet, &batch)
                    .map_err(|error| InvoiceError::Parquet { path: parquet.clone(), error })
            });
            let csvs = std::fs::write(csv, export::lines_csv(docs))
                .map_err(io(csv))
                .and_then(|()| std::fs::write(margin_csv, export::margin_csv(margin)).map_err(io(margin_csv)));
            let table = table.join().expect("the invoice_lines.parquet thread panicked");
            csvs.and(table)
        })
    }

    /// A table's temporary name (hidden, so no reader takes it for the table) and its own.
    fn names(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        (dir.join(format!(".{name}.tmp")), dir.join(name))
    }

    /// Renames every table into place; returns their paths.
    fn publish(self) -> Result<Vec<PathBuf>, InvoiceError> {
        let mut files = Vec::with_capacity(self.staged.len());
        for (tmp, path) in &self.staged {
            std::fs::rename(tmp, path).map_err(io(path))?;
            files.push(path.clone());
        }
        Ok(files)
    }

    /// Removes the temporary files of a run that fails (what is already in place stays).
    fn discard(&self) {
        for (tmp, _) in &self.staged {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

/// The record, inside the invoice folder, of the documents a run is creating in place: their
/// file names, one per line. Written (through a temporary file and a rename) before the first
/// document and removed after the last, so it is only found after a run that did not finish.
pub const IN_FLIGHT: &str = ".in-flight";

/// Renders and writes the documents, on every core (rendering and the file writes are most of
/// a large run's time); returns their paths, each with whether it was written (false: a draft
/// already on disk with the same bytes).
///
/// A document whose name is free is created in place (`O_EXCL`), not through a temporary file
/// and a rename: on ext4 the rename doubles the cost of each of 100,000 new files. Such a file
/// is incomplete for the instant between its creation and its one write; [`IN_FLIGHT`] names
/// every document of the run so that the next run removes the ones a crash left incomplete
/// ([`recover_in_flight`]). A draft that exists and differs is replaced through a temporary
/// file and a rename, so a reader never sees a good draft turn into half of a new one.
fn write_documents(dir: &Path, invoices: &[issue::Invoice]) -> Result<Vec<(PathBuf, bool)>, InvoiceError> {
    if invoices.is_empty() {
        return Ok(Vec::new());
    }
    let names: Vec<String> = invoices.iter().map(|inv| document_name(&inv.tenant, inv.status, inv.version)).collect();
    let record = dir.join(IN_FLIGHT);
    let mut listing = String::with_capacity(names.iter().map(|n| n.len() + 1).sum());
    for name in &names {
        listing.push_str(name);
        listing.push('\n');
    }
    write_atomically(&record, listing.as_bytes())?;
    let pairs: Vec<(&issue::Invoice, &String)> = invoices.iter().zip(&names).collect();
    let written = on_every_core(&pairs, |(inv, name)| {
        let path = dir.join(name);
        let json = export::to_json(inv);
        match create_new(&path, json.as_bytes()) {
            Ok(()) => return Ok((path, true)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(error) => return Err(InvoiceError::Io { path, error }),
        }
        if inv.status == Status::Final {
            // Never reached while only tally writes the folder: the version number comes from
            // the documents read before.
            let error = std::io::Error::new(std::io::ErrorKind::AlreadyExists, "a final invoice is never rewritten");
            return Err(InvoiceError::Io { path, error });
        }
        if std::fs::read(&path).is_ok_and(|on_disk| on_disk == json.as_bytes()) {
            // An unchanged draft is left as it is: same bytes, and no new inode. Replacing
            // 100,000 drafts with themselves made ext4 without a journal skip past 100,000
            // recently freed inodes on the next run's every create.
            return Ok((path, false));
        }
        write_atomically(&path, json.as_bytes())?;
        Ok((path, true))
    })?;
    std::fs::remove_file(&record).map_err(io(&record))?;
    Ok(written)
}

/// Creates `path`, which must not exist, with `bytes` in one write.
fn create_new(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).open(path)?;
    file.write_all(bytes)
}

/// After a run that stopped while creating documents ([`IN_FLIGHT`] is still there): each
/// document it names that is incomplete (not a whole rendering: a JSON object and the final
/// newline) is removed, to be issued again by this run; complete ones, which a billing system
/// may already have imported, stay. Then the record goes.
fn recover_in_flight(dir: &Path) -> Result<(), InvoiceError> {
    let record = dir.join(IN_FLIGHT);
    let listing = match std::fs::read_to_string(&record) {
        Ok(listing) => listing,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(InvoiceError::Io { path: record, error }),
    };
    let names: Vec<&str> =
        listing.lines().filter(|n| !n.is_empty() && !n.contains('/') && n.ends_with(".json")).collect();
    let removed = on_every_core(&names, |name| {
        let path = dir.join(name);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(error) => return Err(InvoiceError::Io { path, error }),
        };
        if is_whole_document(&bytes) {
            return Ok(false);
        }
        std::fs::remove_file(&path).map_err(io(&path))?;
        Ok(true)
    })?;
    let removed = removed.into_iter().filter(|r| *r).count();
    if removed > 0 {
        tracing::warn!(folder = %dir.display(), removed, "an earlier invoice run stopped while writing; its incomplete documents were removed and are issued again");
    }
    std::fs::remove_file(&record).map_err(io(&record))
}

/// Whether `bytes` are a whole rendered document: a JSON object followed by the one newline
/// [`export::to_json`] ends with. Any cut of a rendering fails one or the other.
fn is_whole_document(bytes: &[u8]) -> bool {
    bytes.ends_with(b"}\n") && serde_json::from_slice::<serde_json::Value>(bytes).is_ok_and(|v| v.is_object())
}

/// The threads a large invoice run works on: every core, up to 8.
pub(crate) fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 8)
}

/// `f` over `items` cut into at most `threads` contiguous runs, a thread each; the runs'
/// results in the order of `items`.
pub(crate) fn in_runs<T: Sync, R: Send>(items: &[T], threads: usize, f: impl Fn(&[T]) -> R + Sync) -> Vec<R> {
    let chunk = items.len().div_ceil(threads.max(1)).max(1);
    let f = &f;
    std::thread::scope(|scope| {
        let handles: Vec<_> = items.chunks(chunk).map(|part| scope.spawn(move || f(part))).collect();
        handles.into_iter().map(|h| h.join().expect("an invoice worker panicked")).collect()
    })
}

/// `f` over `items` on every core ([`in_runs`]), results in the order of `items`; the first
/// error wins.
fn on_every_core<T: Sync, R: Send>(
    items: &[T],
    f: impl Fn(&T) -> Result<R, InvoiceError> + Sync,
) -> Result<Vec<R>, InvoiceError> {
    let parts = in_runs(items, cores(), |part| part.iter().map(&f).collect::<Result<Vec<R>, InvoiceError>>());
    let mut all = Vec::with_capacity(items.len());
    for part in parts {
        all.extend(part?);
    }
    Ok(all)
}

/// A tenant's document file name: the tenant id with every byte outside `[A-Za-z0-9_-]`
/// percent-encoded, then `.provisional.json` or `.v<N>.json`.
pub fn document_name(tenant: &TenantId, status: Status, version: u32) -> String {
    let mut name = String::with_capacity(tenant.as_str().len() + 16);
    for b in tenant.as_str().bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            name.push(b as char);
        } else {
            name.push_str(&format!("%{b:02X}"));
        }
    }
    match status {
        Status::Provisional => name.push_str(".provisional.json"),
        Status::Final => name.push_str(&format!(".v{version}.json")),
    }
    name
}

/// Writes a file through a temporary beside it and a rename, so a reader never sees half.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), InvoiceError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

/// The final documents of a folder, each with its path, in no particular order.
pub type FinalDocuments = Vec<(PathBuf, InvoiceV1)>;

/// The final documents in the folder and the paths of the provisional ones (in no order).
pub fn read_folder(dir: &Path) -> Result<(FinalDocuments, Vec<PathBuf>), InvoiceError> {
    let mut provisional = Vec::new();
    if !dir.exists() {
        return Ok((Vec::new(), provisional));
    }
    let mut final_paths = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let path = entry.map_err(io(dir))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with('.') || !name.ends_with(".json") {
            continue;
        }
        if name.ends_with(".provisional.json") {
            provisional.push(path);
        } else {
            final_paths.push(path);
        }
    }
    // Read and parsed on every core: a large period has a document per tenant and version.
    let finals = on_every_core(&final_paths, |path| {
        let bytes = std::fs::read(path).map_err(io(path))?;
        let doc = serde_json::from_slice::<InvoiceV1>(&bytes)
            .map_err(|e| InvoiceError::BadDocument { path: path.clone(), message: e.to_string() })?;
        Ok((path.clone(), doc))
    })?;
    Ok((finals, provisional))
}

/// The final versions issued per tenant, sorted by version.
fn issued_by_tenant(finals: &[(PathBuf, InvoiceV1)]) -> Result<BTreeMap<TenantId, Vec<Issued>>, InvoiceError> {
    let mut issued: BTreeMap<TenantId, Vec<Issued>> = BTreeMap::new();
    for (path, doc) in finals {
        let bad = |message: &str| InvoiceError::BadDocument { path: path.clone(), message: message.to_string() };
        let tenant = doc.tenant_id().ok_or_else(|| bad("blank tenant"))?;
        let one = doc.issued().ok_or_else(|| bad("not a final invoice of schema tally.invoice/1"))?;
        issued.entry(tenant).or_default().push(one);
    }
    for versions in issued.values_mut() {
        versions.sort_by_key(|i| i.version);
    }
    Ok(issued)
}

/// Σ allocated cost per tenant from a reconciled `allocation.parquet` (unallocated rows, which
/// have no tenant, are left out).
fn reconciled_costs(path: &Path) -> Result<BTreeMap<TenantId, Decimal>, InvoiceError> {
    let err = |error| InvoiceError::Parquet { path: path.to_owned(), error };
    let file = File::open(path).map_err(io(path))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file).map_err(err)?.build().map_err(err)?;
    let mut units: BTreeMap<TenantId, i128> = BTreeMap::new();
    for batch in reader {
        let batch = batch.map_err(|e| err(e.into()))?;
        let missing =
            |c: &str| InvoiceError::BadDocument { path: path.to_owned(), message: format!("no `{c}` column") };
        let tenant = batch.column_by_name("tenant").ok_or_else(|| missing("tenant"))?.as_string::<i32>().clone();
        let cost =
            batch.column_by_name("cost").ok_or_else(|| missing("cost"))?.as_primitive::<Decimal128Type>().clone();
        for i in 0..batch.num_rows() {
            if tenant.is_null(i) || cost.is_null(i) {
                continue;
            }
            if let Some(t) = TenantId::new(tenant.value(i)) {
                *units.entry(t).or_default() += cost.value(i);
            }
        }
    }
    Ok(units.into_iter().map(|(t, u)| (t, money::from_units(u))).collect())
}
