//! The Cost and Usage Report side of reconcile: what a line is (`classify`), money read
//! exactly (`money`), loading a period with DataFusion (`load`) and a fixture generator
//! consistent with the log fixtures (`generate`).
//!
//! Reading from S3 (`--cur s3://…`) belongs to the `aws` feature and is not here yet: `load`
//! takes a local folder; an object-store source plugs in where `load::period_files` lists files.

pub mod classify;
pub mod generate;
pub mod load;
pub mod money;
