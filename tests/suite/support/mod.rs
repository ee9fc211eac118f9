//! Helpers shared by the integration tests: a scratch folder with its own `tally.toml`, the
//! library ingest entry point, and the `tally` binary.
#![allow(dead_code)]

#[cfg(feature = "aws")]
pub mod aws;
#[cfg(feature = "aws")]
pub mod aws_faults;
pub mod kill;
pub mod proxy;
pub mod serve;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;

use tally::config::Config;
use tally::ingest::{self, Run, RunReport};
use tally::progress::NoProgress;
use tally::quarantine::Quarantine;
use tally::store::sqlite::SqliteStore;

/// A scratch folder with a config whose store and quarantine live inside it.
pub struct Scratch {
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
}

impl Scratch {
    /// `extra` is appended to the config (e.g. `[ingest]\nbatch_records = 10`).
    pub fn new(extra: &str) -> Scratch {
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("tally.toml");
        std::fs::write(&config_path, format!("[store]\npath = \"tally.sqlite\"\n{extra}\n")).unwrap();
        Scratch { dir, config_path }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn config(&self) -> Config {
        Config::load(&self.config_path).expect("test config is valid")
    }

    /// Writes a file under the scratch folder (creating folders) and returns its path.
    pub fn write(&self, name: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
        let p = self.path(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, bytes).unwrap();
        p
    }

    /// Runs one ingest pass through the library.
    pub fn ingest(&self, paths: &[PathBuf]) -> RunReport {
        let config = self.config();
        let pipeline = config.pipeline().unwrap();
        let settings = config.ingest_settings(false);
        let mut store = self.store();
        let mut q =
            Quarantine::new(config.resolve(&config.ingest.quarantine)).with_limit(config.ingest.quarantine_max_bytes);
        let mut run = Run {
            store: &mut store,
            pipeline: &pipeline,
            settings: &settings,
            quarantine: &mut q,
            shutdown: &AtomicBool::new(false),
            progress: &NoProgress,
        };
        ingest::run_once(paths, &mut run).expect("ingest runs")
    }

    pub fn store(&self) -> SqliteStore {
        let config = self.config();
        SqliteStore::open(&config.resolve(&config.store.path), false).unwrap()
    }

    /// The dead-letter entries written so far.
    pub fn quarantined(&self) -> Vec<serde_json::Value> {
        let config = self.config();
        match std::fs::read_to_string(config.resolve(&config.ingest.quarantine)) {
            Ok(text) => text.lines().map(|l| serde_json::from_str(l).expect("quarantine lines are JSON")).collect(),
            Err(_) => Vec::new(),
        }
    }

    /// The `tally` binary with this scratch config.
    pub fn tally(&self) -> Command {
        let mut c = tally_bin();
        c.arg("--config").arg(&self.config_path).arg("--quiet");
        c
    }
}

pub fn tally_bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tally"))
}

pub fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// A one-line record with the given parts.
pub fn record(request_id: &str, timestamp: &str, tenant: &str, input: u64, output: u64) -> String {
    format!(
        r#"{{"schemaType":"ModelInvocationLog","schemaVersion":"1.0","timestamp":"{timestamp}","accountId":"111122223333","identity":{{"arn":"arn:aws:iam::111122223333:user/app"}},"region":"us-east-1","requestId":"{request_id}","operation":"Converse","modelId":"amazon.nova-micro-v1:0","input":{{"inputContentType":"application/json","inputTokenCount":{input}}},"output":{{"outputContentType":"application/json","outputTokenCount":{output}}},"requestMetadata":{{"tenant_id":"{tenant}"}}}}"#
    )
}
