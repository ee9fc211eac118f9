//! One rule for every error tally shows: its message says what failed, names the file, field or
//! period, and includes its cause's text, so the cause is never also its `source`. The CLI
//! prints errors with `{:#}` (the message and every source after it): a cause that was both
//! said it twice. Each public error type is listed here variant by variant; the `match` in each
//! list does not compile when a variant is added without a case here.

use std::path::PathBuf;

use tally::config::ConfigError;
use tally::cur::load::CurError;
use tally::ingest::IngestError;
use tally::invoice::InvoiceError;
use tally::month::BadMonth;
use tally::pricing::CatalogError;
use tally::reconcile::sql::SqlError;
use tally::reconcile::ReconcileError;
use tally::source::remote::SourceError;
use tally::store::StoreError;

fn io() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::PermissionDenied, "CAUSE-io")
}

fn p() -> PathBuf {
    PathBuf::from("/data/x")
}

fn store_errors() -> Vec<StoreError> {
    let all = vec![
        StoreError::Busy("CAUSE-busy".into()),
        StoreError::ConditionFailed { source_key: "file:///a".into(), expected: None, found: Some("b".into()) },
        StoreError::Unavailable("CAUSE-unavailable".into()),
        StoreError::Invalid("CAUSE-invalid".into()),
        StoreError::Backend(Box::new(io())),
    ];
    for e in &all {
        match e {
            StoreError::Busy(_)
            | StoreError::ConditionFailed { .. }
            | StoreError::Unavailable(_)
            | StoreError::Invalid(_)
            | StoreError::Backend(_) => {}
        }
    }
    all
}

fn cur_errors() -> Vec<CurError> {
    let all = vec![
        CurError::Folder { path: p(), message: "CAUSE".into() },
        CurError::NotParquet { path: p(), message: "CAUSE".into() },
        CurError::MissingColumn { path: p(), column: "line_item_usage_type".into() },
        CurError::WrongType { path: p(), column: "c".into(), found: "Int8".into(), expected: "Utf8".into() },
        CurError::Read { path: p(), message: "CAUSE".into() },
        CurError::Period("2025-13".into()),
        CurError::NoFiles { input: "/cur".into(), period: "2025-11".into() },
    ];
    for e in &all {
        match e {
            CurError::Folder { .. }
            | CurError::NotParquet { .. }
            | CurError::MissingColumn { .. }
            | CurError::WrongType { .. }
            | CurError::Read { .. }
            | CurError::Period(_)
            | CurError::NoFiles { .. } => {}
        }
    }
    all
}

fn source_errors() -> Vec<SourceError> {
    let all = vec![
        SourceError::NotFound { what: "s3://b/k".into(), detail: "CAUSE".into() },
        SourceError::Denied { what: "s3://b/k".into(), detail: "CAUSE".into() },
        SourceError::Unavailable { what: "s3://b/k".into(), detail: "CAUSE".into() },
    ];
    for e in &all {
        match e {
            SourceError::NotFound { .. } | SourceError::Denied { .. } | SourceError::Unavailable { .. } => {}
        }
    }
    all
}

fn arrow() -> datafusion::arrow::error::ArrowError {
    datafusion::arrow::error::ArrowError::ComputeError("CAUSE-arrow".into())
}

fn parquet() -> datafusion::parquet::errors::ParquetError {
    datafusion::parquet::errors::ParquetError::General("CAUSE-parquet".into())
}

/// Every error, boxed, with its type and variant for the failure message.
fn every_error() -> Vec<(String, anyhow::Error)> {
    let mut out: Vec<(String, anyhow::Error)> = Vec::new();
    let mut add = |e: anyhow::Error| out.push((format!("{e:?}"), e));
    for e in store_errors() {
        add(e.into());
    }
    for e in cur_errors() {
        add(e.into());
    }
    for e in source_errors() {
        add(e.into());
    }
    let config = vec![
        ConfigError::Read { path: p(), error: io() },
        ConfigError::Parse { path: p(), message: "CAUSE".into() },
        ConfigError::Invalid { path: p(), field: "ingest.workers".into(), message: "CAUSE".into() },
    ];
    for e in config {
        match &e {
            ConfigError::Read { .. } | ConfigError::Parse { .. } | ConfigError::Invalid { .. } => {}
        }
        add(e.into());
    }
    let ingest = vec![
        IngestError::Store(StoreError::Backend(Box::new(io()))),
        IngestError::Input(io()),
        IngestError::Source(SourceError::Denied { what: "s3://b".into(), detail: "CAUSE".into() }),
        IngestError::Quarantine { path: "/q".into(), error: io() },
        IngestError::Accounting("CAUSE".into()),
    ];
    for e in ingest {
        match &e {
            IngestError::Store(_)
            | IngestError::Input(_)
            | IngestError::Source(_)
            | IngestError::Quarantine { .. }
            | IngestError::Accounting(_) => {}
        }
        add(e.into());
    }
    let invoice = vec![
        InvoiceError::Store(StoreError::Busy("CAUSE".into())),
        InvoiceError::Io { path: p(), error: io() },
        InvoiceError::Parquet { path: p(), error: parquet() },
        InvoiceError::BadDocument { path: p(), message: "CAUSE".into() },
        InvoiceError::FinalWithoutReconcile { period: "2025-11".into(), dir: p(), allocation: p() },
        InvoiceError::Plans { field: "plans.x.kind".into(), message: "CAUSE".into() },
        InvoiceError::Arrow(arrow()),
        InvoiceError::Recover("CAUSE".into()),
    ];
    for e in invoice {
        match &e {
            InvoiceError::Store(_)
            | InvoiceError::Io { .. }
            | InvoiceError::Parquet { .. }
            | InvoiceError::BadDocument { .. }
            | InvoiceError::FinalWithoutReconcile { .. }
            | InvoiceError::Plans { .. }
            | InvoiceError::Arrow(_)
            | InvoiceError::Recover(_) => {}
        }
        add(e.into());
    }
    let reconcile = vec![
        ReconcileError::Cur(CurError::Period("x".into())),
        ReconcileError::Store(StoreError::Invalid("CAUSE".into())),
        ReconcileError::Arrow(arrow()),
        ReconcileError::Write { path: p(), error: parquet() },
        ReconcileError::Io { path: p(), error: io() },
        ReconcileError::CostExplorer("CAUSE".into()),
        ReconcileError::Imbalance { cur: 3.into(), allocated: 1.into(), unallocated: 1.into() },
    ];
    for e in reconcile {
        match &e {
            ReconcileError::Cur(_)
            | ReconcileError::Store(_)
            | ReconcileError::Arrow(_)
            | ReconcileError::Write { .. }
            | ReconcileError::Io { .. }
            | ReconcileError::CostExplorer(_)
            | ReconcileError::Imbalance { .. } => {}
        }
        add(e.into());
    }
    let sql = vec![
        SqlError::NotReconciled { period: "2025-11".into(), dir: p() },
        SqlError::Query(datafusion::error::DataFusionError::Plan("CAUSE".into())),
        SqlError::Runtime(io()),
    ];
    for e in sql {
        match &e {
            SqlError::NotReconciled { .. } | SqlError::Query(_) | SqlError::Runtime(_) => {}
        }
        add(e.into());
    }
    add(CatalogError { source_name: "prices.toml".into(), message: "CAUSE".into() }.into());
    add(BadMonth("2025-13".into()).into());
    out
}

#[test]
fn every_error_says_its_cause_once_under_the_cli_format() {
    let mut twice = Vec::new();
    for (what, e) in every_error() {
        let alternate = format!("{e:#}");
        if alternate != e.to_string() {
            twice.push(format!("{what}\n  printed as: {alternate}"));
        }
    }
    assert!(
        twice.is_empty(),
        "errors whose cause is also their source (printed twice by the CLI):\n{}",
        twice.join("\n")
    );
}

#[test]
fn every_error_includes_its_cause_and_names_what_failed() {
    for (what, e) in every_error() {
        let text = e.to_string();
        if what.contains("CAUSE") {
            assert!(text.contains("CAUSE"), "{what} hides its cause: {text}");
        }
        if what.contains("/data/x") {
            assert!(text.contains("/data/x"), "{what} does not name the file: {text}");
        }
        assert!(!text.trim().is_empty() && !text.ends_with(": "), "{what}: {text:?}");
    }
}
