//! Shared test support. Each integration-test binary includes this with `mod common;` and uses
//! only part of it, hence the `dead_code` allowances.

#[allow(dead_code)]
pub mod conformance;
