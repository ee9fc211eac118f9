//! The config loader: `tally::config::Config::from_toml` on any text, then what the program
//! does with a config it accepted. Besides "no panic", checks that
//! - an error names the file, and a validation error names a field and says what is wrong;
//! - a config that validates builds everything the commands build from it without a panic or
//!   an error: its plans and tenants (`plans()`), `tally serve`'s keys, the tenant resolver,
//!   and the durations `tally ingest --follow` / `serve` / the DynamoDB store make of its
//!   numbers (as src/bin/tally/ and src/serve/mod.rs do);
//! - loading is deterministic.
#![no_main]

use std::path::{Path, PathBuf};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tally::config::{Config, ConfigError};
use tally::tenant::Resolver;

/// `TALLY_FUZZ_VERBOSE=1` prints each input's verdict (to see why a seed is refused).
fn verbose() -> bool {
    static VERBOSE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *VERBOSE.get_or_init(|| std::env::var_os("TALLY_FUZZ_VERBOSE").is_some())
}

fuzz_target!(|data: &[u8]| {
    // `Config::load` reads the file with read_to_string: only UTF-8 reaches the parser.
    let Ok(text) = std::str::from_utf8(data) else { return };
    let path = Path::new("fuzz/tally.toml");
    let base = PathBuf::from("/etc/tally");
    let loaded = Config::from_toml(text, path, base.clone());
    if verbose() {
        eprintln!("config: {:?}", loaded.as_ref().map(|_| "valid").map_err(ToString::to_string));
    }
    match loaded {
        Ok(config) => {
            assert_eq!(config.base_dir, base);
            let plans = config.plans();
            assert!(plans.is_ok(), "validated config, but plans() fails: {plans:?}");
            let keys = config.serve.keys();
            assert!(keys.is_ok(), "validated config, but serve keys fail: {keys:?}");
            let _ = Resolver::new(&config.tenancy);
            // What the commands do with the numbers (src/bin/tally/, src/serve/mod.rs).
            let _ = Duration::from_secs_f64(config.ingest.poll_seconds);
            let _ = Duration::from_secs_f64(config.ingest.commit_seconds);
            let _ = config.ingest_settings(true);
            let _ = Duration::from_secs_f64(config.store.lease_seconds);
            let _ = Duration::from_secs_f64(config.serve.alerts.check_seconds);
            let _ = Duration::from_secs((u64::from(config.ingest.dedup_window_days) + 2) * 86_400);
            let _ = config.resolve(&config.store.path);
            let _ = config.resolve(&config.ingest.quarantine);
            assert!(Config::from_toml(text, path, base).is_ok(), "loading is deterministic");
        }
        Err(e) => {
            let message = e.to_string();
            assert!(message.contains("fuzz/tally.toml"), "the error names the file: {message}");
            match &e {
                ConfigError::Invalid { field, message, .. } => {
                    assert!(!field.trim().is_empty(), "a validation error names a field: {e}");
                    assert!(!message.trim().is_empty(), "a validation error says what is wrong: {e}");
                }
                ConfigError::Parse { message, .. } => assert!(!message.trim().is_empty(), "a parse error has a message"),
                ConfigError::Read { .. } => panic!("from_toml reads no file"),
            }
            let again = Config::from_toml(text, path, base).map(|_| ()).map_err(|e| e.to_string());
            assert_eq!(again, Err(message), "loading is deterministic");
        }
    }
});
