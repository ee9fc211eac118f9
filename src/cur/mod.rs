//! The Cost and Usage Report side of reconcile: what a line is (`classify`), money read
//! exactly (see `crate::money`), loading a period's Parquet (`load`: files and row-group tasks; `scan`:
//! one row group's Bedrock lines summed).
//! `--cur s3://…` (the `aws` feature) is read the same way through an object store that
//! makes its requests with the AWS SDK (`s3`).

pub mod classify;
pub mod load;
mod partition;
#[cfg(feature = "aws")]
pub mod s3;
mod scan;
