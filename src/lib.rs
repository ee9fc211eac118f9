//! tally: usage metering and billing for multi-tenant generative AI on Amazon Bedrock.
//!
//! The codemap is in README.md (## Architecture). In short: `record` and `json` parse log
//! records, `tenant` and `pricing` decide whose and how much, `usage` measures and sums,
//! `source` reads files into pieces, `store` keeps counters and checkpoints, and `ingest` ties
//! them together with its exactly-once argument in its module docs. `reconcile` allocates the
//! CUR to tenants and `invoice` applies their plans. `serve` answers live meters over HTTP.

#[cfg(feature = "aws")]
pub mod aws;
pub mod config;
pub mod cur;
pub mod generate;
pub mod ids;
pub mod ingest;
pub mod invoice;
pub mod json;
pub mod money;
pub mod month;
pub mod pricing;
pub mod progress;
pub mod quarantine;
pub mod reconcile;
pub mod record;
pub mod serve;
pub mod source;
pub mod store;
pub mod tables;
pub mod tenant;
pub mod usage;
