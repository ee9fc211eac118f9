//! Opening what the commands work on: the config file, and the counter store it names.

use std::path::{Path, PathBuf};
#[cfg(feature = "aws")]
use std::time::Duration;
use tally::store::Backend;

use tally::config::{Config, ConfigError};
use tally::store::sqlite::SqliteStore;
use tally::store::CounterStore;

/// The config file given, else `tally.toml` in the current folder if present, else the defaults.
pub fn config(explicit: Option<&Path>) -> anyhow::Result<Config> {
    let (config, path) = match explicit {
        Some(p) => (Config::load(p)?, p.to_path_buf()),
        None if Path::new("tally.toml").exists() => {
            (Config::load(Path::new("tally.toml"))?, PathBuf::from("tally.toml"))
        }
        None => return Ok(Config::defaults_in(PathBuf::from("."))),
    };
    if config.store.kind() == Backend::Dynamodb && !cfg!(feature = "aws") {
        return Err(ConfigError::Invalid {
            path,
            field: "store.backend".into(),
            message: "\"dynamodb\" needs a tally built with the `aws` feature (the default; this one was built with --no-default-features)".into(),
        }
        .into());
    }
    Ok(config)
}

pub fn store(config: &Config) -> anyhow::Result<Box<dyn CounterStore>> {
    if config.store.kind() == Backend::Dynamodb {
        return dynamodb_boxed(config);
    }
    Ok(Box::new(sqlite(config)?))
}

/// A store connection for `tally serve`'s reader pool: SQLite with a small page cache each
/// (several readers share one file, and their caches would otherwise grow with it).
pub fn reader(config: &Config) -> anyhow::Result<Box<dyn CounterStore>> {
    if config.store.kind() == Backend::Dynamodb {
        return dynamodb_boxed(config);
    }
    Ok(Box::new(sqlite(config)?.with_page_cache(2_048)?))
}

fn sqlite(config: &Config) -> anyhow::Result<SqliteStore> {
    let path = config.resolve(&config.store.path);
    Ok(SqliteStore::open(&path, config.store.synchronous == "full")?)
}

#[cfg(feature = "aws")]
fn dynamodb_boxed(config: &Config) -> anyhow::Result<Box<dyn CounterStore>> {
    Ok(Box::new(dynamodb(config)?))
}

#[cfg(not(feature = "aws"))]
fn dynamodb_boxed(_config: &Config) -> anyhow::Result<Box<dyn CounterStore>> {
    anyhow::bail!("store.backend = \"dynamodb\" needs a tally built with the `aws` feature")
}

#[cfg(feature = "aws")]
pub fn dynamodb(config: &Config) -> anyhow::Result<tally::store::dynamodb::DynamoStore> {
    use tally::store::dynamodb::{DynamoSettings, DynamoStore};
    let st = &config.store;
    let settings = DynamoSettings {
        table: st.table.clone(),
        aws: tally::aws::AwsSettings {
            region: st.region.clone(),
            endpoint_url: st.endpoint_url.clone(),
            max_attempts: None,
        },
        shards: st.shards,
        lease: Duration::from_secs_f64(st.lease_seconds),
        // Dedup buckets outlive the dedup window by two days.
        dedup_ttl: Duration::from_secs((u64::from(config.ingest.dedup_window_days) + 2) * 86_400),
    };
    Ok(DynamoStore::open(&settings)?)
}
