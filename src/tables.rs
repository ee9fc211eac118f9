//! The reconcile tables as Arrow record batches, and writing them as Parquet or CSV.
//!
//! Every money column is `Decimal128(38, 10)` (see `cur::money`); rows are sorted by their key
//! so the same inputs give the same bytes.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BooleanArray, Decimal128Array, Int64Array, StringArray, TimestampSecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::Compression;
use datafusion::parquet::errors::ParquetError;
use datafusion::parquet::file::properties::WriterProperties;

use crate::money;

/// The folder under `<out>/<period>/` that holds the invoices (written by `invoice`, kept
/// together with the reconciled tables by `reconcile`).
pub const INVOICES: &str = "invoices";

/// `YYYY-MM-DD` of an Arrow `Date32` (days since the epoch).
pub fn date32_label(days: i32) -> String {
    let d = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid date") + chrono::Duration::days(i64::from(days));
    d.format("%Y-%m-%d").to_string()
}

/// A column of a table being built.
pub enum Col {
    Text(Vec<Option<String>>),
    /// Text already built as an array (from borrowed strings, without a copy of each).
    Strings(StringArray),
    Int(Vec<Option<i64>>),
    Money(Vec<Option<i128>>),
    Bool(Vec<bool>),
    /// Seconds since the epoch, UTC.
    Time(Vec<i64>),
}

impl Col {
    fn field(&self, name: &str) -> Field {
        let (t, nullable) = match self {
            Col::Text(_) | Col::Strings(_) => (DataType::Utf8, true),
            Col::Int(_) => (DataType::Int64, true),
            Col::Money(_) => (money::arrow_type(), true),
            Col::Bool(_) => (DataType::Boolean, false),
            Col::Time(_) => (DataType::Timestamp(TimeUnit::Second, Some("UTC".into())), false),
        };
        Field::new(name, t, nullable)
    }

    fn array(self) -> Result<ArrayRef, ArrowError> {
        Ok(match self {
            Col::Text(v) => Arc::new(StringArray::from(v)),
            Col::Strings(v) => Arc::new(v),
            Col::Int(v) => Arc::new(Int64Array::from(v)),
            Col::Money(v) => Arc::new(Decimal128Array::from(v).with_precision_and_scale(38, money::SCALE as i8)?),
            Col::Bool(v) => Arc::new(BooleanArray::from(v)),
            Col::Time(v) => Arc::new(TimestampSecondArray::from(v).with_timezone("UTC")),
        })
    }
}

/// A record batch from named columns. Text, integer and money columns are declared nullable
/// whatever the data, so a table's schema is the same from run to run.
pub fn batch(columns: Vec<(&str, Col)>) -> Result<RecordBatch, ArrowError> {
    let fields: Vec<Field> = columns.iter().map(|(n, c)| c.field(n)).collect();
    let arrays = columns.into_iter().map(|(_, c)| c.array()).collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
}

/// Writes a batch as one Parquet file: snappy, one row group per 1M rows, a fixed
/// `created_by`, so the bytes depend on the data only.
pub fn write_parquet(path: &Path, batch: &RecordBatch) -> Result<(), ParquetError> {
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(1 << 20))
        .set_created_by(format!("tally {}", env!("CARGO_PKG_VERSION")))
        .build();
    let mut w = ArrowWriter::try_new(File::create(path)?, batch.schema(), Some(props))?;
    w.write(batch)?;
    w.close()?;
    Ok(())
}

/// Writes batches as CSV with a header line.
pub fn write_csv<W: std::io::Write>(out: W, batches: &[RecordBatch]) -> Result<(), ArrowError> {
    let mut w = datafusion::arrow::csv::WriterBuilder::new().with_header(true).build(out);
    for b in batches {
        w.write(b)?;
    }
    Ok(())
}

/// Σ of a money column, exactly.
pub fn money_sum(batch: &RecordBatch, column: &str) -> i128 {
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::Decimal128Type;
    let a = batch.column_by_name(column).expect("the column exists").as_primitive::<Decimal128Type>();
    (0..a.len()).filter(|&i| !a.is_null(i)).map(|i| a.value(i)).sum()
}
