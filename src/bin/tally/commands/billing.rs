//! The commands on a billing period: `tally reconcile`, `tally sql`, `tally invoice` and
//! `tally schema`, and the reconcile and invoice runs the demo shares.

use std::path::Path;

use anyhow::Context;

use tally::config::Config;
use tally::{invoice, reconcile};

use crate::args::{Global, InvoiceArgs, ReconcileArgs, SqlArgs};
use crate::bar::Bar;
use crate::{open, print};

pub fn reconcile(global: &Global, args: ReconcileArgs) -> anyhow::Result<u8> {
    let config = global.config()?;
    let options =
        ReconcileOptions { csv: args.csv, cost_explorer: args.cost_explorer, quiet: global.quiet || args.json };
    let report = reconcile_period(&config, &args.period, &args.cur, &args.out, options)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print::reconcile(&report);
    }
    Ok(0)
}

pub fn sql(args: SqlArgs) -> anyhow::Result<u8> {
    let batches = reconcile::sql::query(&args.out, &args.period, &args.query)?;
    if let Some(path) = args.parquet {
        let schema = batches.first().map(|b| b.schema()).context("the query returned no schema")?;
        let all = datafusion::arrow::compute::concat_batches(&schema, &batches)?;
        tally::tables::write_parquet(&path, &all)?;
        eprintln!("wrote {} rows to {}", all.num_rows(), path.display());
    } else if args.csv {
        tally::tables::write_csv(std::io::stdout().lock(), &batches)?;
    } else {
        println!("{}", reconcile::sql::pretty(&batches)?);
    }
    Ok(0)
}

pub fn invoice(global: &Global, args: InvoiceArgs) -> anyhow::Result<u8> {
    let config = global.config()?;
    let report = invoice_period(&config, &args.period, &args.out)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print::invoices(&report, args.top);
    }
    Ok(0)
}

/// `tally schema`: the JSON Schema of an export (`invoice`, the only one clap lets through).
pub fn schema(name: &str) -> anyhow::Result<u8> {
    debug_assert_eq!(name, "invoice");
    println!("{}", serde_json::to_string_pretty(&invoice::export::json_schema())?);
    Ok(0)
}

/// How a reconcile runs, beyond what it reconciles.
#[derive(Default)]
pub struct ReconcileOptions {
    pub csv: bool,
    pub cost_explorer: bool,
    pub quiet: bool,
}

/// Reconciles `period` against the CUR at `cur`, writing under `out`.
pub fn reconcile_period(
    config: &Config,
    period: &str,
    cur: &str,
    out: &Path,
    o: ReconcileOptions,
) -> anyhow::Result<reconcile::Report> {
    let cur = tally::cur::load::CurInput::parse(cur, &config.sources)?;
    let pipeline = config.pipeline()?;
    let store = open::store(config)?;
    let request = reconcile::Request {
        period: period.to_string(),
        cur,
        out: out.to_path_buf(),
        csv: o.csv,
        cost_explorer: o.cost_explorer,
    };
    Ok(reconcile::run(&request, &config.reconcile, &pipeline, &*store, &Bar::new(o.quiet))?)
}

/// Invoices `period` from the counters (and its reconciled cost under `out`, if any).
pub fn invoice_period(config: &Config, period: &str, out: &Path) -> anyhow::Result<invoice::Report> {
    let store = open::store(config)?;
    let plans = config.plans().map_err(|(field, message)| invoice::InvoiceError::Plans { field, message })?;
    Ok(invoice::run(&invoice::Request { period: period.to_string(), out: out.to_path_buf() }, &plans, &*store)?)
}
