//! The commands on the counter store itself: `tally init`, `tally meter`, `tally status`.

use anyhow::Context;
use tally::store::Backend;

use tally::config::Config;
use tally::ids::TenantId;
use tally::ingest;
use tally::quarantine::Reason;

use crate::args::{Global, MeterArgs};
use crate::{open, print};

/// `tally init`: creates the store and checks that it can be reached.
pub fn init(global: &Global) -> anyhow::Result<u8> {
    let config = global.config()?;
    if config.store.kind() == Backend::Dynamodb {
        init_dynamodb(&config)?;
        return Ok(0);
    }
    let store = open::store(&config)?;
    store.max_hour()?;
    println!("sqlite store {} is ready", config.resolve(&config.store.path).display());
    Ok(0)
}

/// `tally init` for DynamoDB: creates the table and checks that it can be reached.
#[cfg(feature = "aws")]
fn init_dynamodb(config: &Config) -> anyhow::Result<()> {
    let store = open::dynamodb(config)?;
    store.create_table()?;
    store.health_check()?;
    println!("dynamodb table {} is ready (on-demand billing, TTL on `expires`)", config.store.table);
    Ok(())
}

#[cfg(not(feature = "aws"))]
fn init_dynamodb(_config: &Config) -> anyhow::Result<()> {
    anyhow::bail!("store.backend = \"dynamodb\" needs a tally built with the `aws` feature")
}

pub fn meter(global: &Global, args: MeterArgs) -> anyhow::Result<u8> {
    let config = global.config()?;
    let store = open::store(&config)?;
    let period = args.period.unwrap_or_else(|| chrono::Utc::now().format("%Y-%m").to_string());
    let tenant = TenantId::new(&args.tenant).context("the tenant id is empty")?;
    let usage = store.period_usage(&tenant, &period)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&usage)?);
    } else {
        print::meter(&usage);
    }
    Ok(0)
}

pub fn status(global: &Global, json: bool) -> anyhow::Result<u8> {
    let config = global.config()?;
    let totals = open::store(&config)?.totals()?;
    let quarantine = config.resolve(&config.ingest.quarantine);
    let last_run = ingest::LastRun::load(&ingest::last_run_path(&quarantine));
    // Skipped records that went to the quarantine file (not the expected, benign ones).
    let quarantined: u64 = totals
        .skipped
        .iter()
        .filter(|(reason, _)| Reason::parse(reason).is_none_or(|r| !r.is_benign()))
        .map(|(_, n)| n)
        .sum();
    if json {
        let mut value = serde_json::to_value(&totals)?;
        if let Some(obj) = value.as_object_mut() {
            obj.insert("quarantined".into(), quarantined.into());
            obj.insert("quarantine_file".into(), quarantine.display().to_string().into());
            obj.insert("last_run".into(), serde_json::to_value(&last_run)?);
        }
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print::status(&totals, quarantined, &quarantine, last_run.as_ref());
    }
    Ok(0)
}
