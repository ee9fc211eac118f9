//! The integration tests, as one test binary.
//!
//! Every test here links all of tally (DataFusion, the AWS SDK, axum): as separate binaries
//! under `tests/`, each was a ~300 MB link, and a cold CI build spent its time and its disk on
//! seventeen of them. One binary is one link. The modules are the former test files; name a
//! group with nextest's filter, e.g. `cargo nextest run serve::`.

mod common;
mod invoice_support;
mod reconcile_support;
mod support;

mod bad_input;
mod demo;
mod every_record_counts;
mod exactly_once;
mod gzip;
mod hostile;
mod invoice;
mod invoice_golden;
mod invoice_properties;
mod properties;
mod realdata;
mod reconcile;
mod reconcile_aws;
mod reconcile_properties;
mod reconcile_queries;
mod reconcile_realdata;
mod serve;
mod sources_aws;
mod store_dynamodb;
mod store_sqlite;
