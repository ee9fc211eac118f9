//! `tally sql`: DataFusion SQL over a reconciled period's tables.
//!
//! The tables are the Parquet files `reconcile` wrote under `<out>/<period>/`: `cur`, `usage`,
//! `allocation`, `drift`, `adjustments` and `summary`, and `invoice_lines` once `tally invoice`
//! has written `<out>/<period>/invoices/invoice_lines.parquet`.

use std::path::{Path, PathBuf};

use datafusion::arrow::record_batch::RecordBatch;
use datafusion::error::DataFusionError;
use datafusion::prelude::{ParquetReadOptions, SessionContext};

/// The tables `tally sql` serves, in the order they are described.
pub const TABLES: [&str; 6] = ["cur", "usage", "allocation", "drift", "adjustments", "summary"];

/// A query that could not run.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    #[error("no reconciled outputs for {period} in {dir}: run `tally reconcile --period {period}` first")]
    NotReconciled { period: String, dir: PathBuf },
    #[error("{0}")]
    Query(DataFusionError),
    #[error("cannot start the query runtime: {0}")]
    Runtime(std::io::Error),
}

impl From<DataFusionError> for SqlError {
    fn from(e: DataFusionError) -> Self {
        SqlError::Query(e)
    }
}

/// Runs `query` over the period's tables under `out` and returns the result.
pub fn query(out: &Path, period: &str, query: &str) -> Result<Vec<RecordBatch>, SqlError> {
    let dir = out.join(period);
    if !dir.join("summary.parquet").exists() {
        return Err(SqlError::NotReconciled { period: period.to_string(), dir });
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().build().map_err(SqlError::Runtime)?;
    runtime.block_on(async {
        let ctx = SessionContext::new();
        for t in TABLES {
            let p = dir.join(format!("{t}.parquet"));
            ctx.register_parquet(t, p.to_string_lossy().as_ref(), ParquetReadOptions::default()).await?;
        }
        // Present only after `--cost-explorer`, and once invoices exist.
        let optional = [
            ("cost_explorer", dir.join("cost_explorer.parquet")),
            ("invoice_lines", dir.join(crate::tables::INVOICES).join("invoice_lines.parquet")),
        ];
        for (name, p) in optional {
            if p.exists() {
                ctx.register_parquet(name, p.to_string_lossy().as_ref(), ParquetReadOptions::default()).await?;
            }
        }
        Ok(ctx.sql(query).await?.collect().await?)
    })
}

/// The result as a text table, as `tally sql` prints it.
pub fn pretty(batches: &[RecordBatch]) -> Result<String, DataFusionError> {
    Ok(datafusion::arrow::util::pretty::pretty_format_batches(batches)?.to_string())
}
