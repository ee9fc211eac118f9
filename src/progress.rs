//! How long work reports its progress (`tally ingest`, `tally reconcile`): hooks the command
//! line fills with a progress bar, and a no-op.

/// Progress reporting hooks (a no-op by default).
pub trait Progress: Sync {
    fn start(&self, _total_bytes: u64) {}
    fn update(&self, _bytes: u64, _records: u64) {}
    fn finish(&self) {}
}

/// No progress display.
pub struct NoProgress;
impl Progress for NoProgress {}
