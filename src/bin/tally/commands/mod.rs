//! One function per subcommand, grouped by what they work on. Each takes the global flags
//! ([`crate::args::Global`]) if it needs them and its own flags, and returns the exit code.

pub mod billing;
pub mod counters;
pub mod demo;
pub mod generate;
pub mod ingest;
pub mod keys;
pub mod serve;
