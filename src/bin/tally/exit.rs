//! Exit codes, as documented in the README, and the one function that picks a failed run's.

use tally::config::ConfigError;
use tally::ingest::IngestError;
use tally::invoice::InvoiceError;
use tally::pricing::CatalogError;
use tally::reconcile::ReconcileError;

pub const FAILED: u8 = 1;
pub const CONFIG: u8 = 2;
pub const ACCOUNTING: u8 = 3;
pub const PARTIAL: u8 = 4;
pub const UNBALANCED: u8 = 5;

/// The exit code of a run that ended in `error`.
pub fn for_error(error: &anyhow::Error) -> u8 {
    let config_error = error.downcast_ref::<ConfigError>().is_some()
        || error.downcast_ref::<CatalogError>().is_some()
        || matches!(error.downcast_ref::<InvoiceError>(), Some(InvoiceError::Plans { .. }));
    if config_error {
        CONFIG
    } else if matches!(error.downcast_ref::<IngestError>(), Some(IngestError::Accounting(_))) {
        ACCOUNTING
    } else if matches!(error.downcast_ref::<ReconcileError>(), Some(ReconcileError::Imbalance { .. })) {
        UNBALANCED
    } else {
        FAILED
    }
}
