//! A reconcile fixture: a month of generated logs for 12 tenants, ingested, and the CUR that
//! bills them (both variants), from fixed seeds, so every run builds the same thing.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::AtomicBool;

use tally::config::Config;
use tally::generate::cur::{CurSpec, CurSummary};
use tally::generate::{self, Spec};
use tally::ingest::{self, Run};
use tally::progress::NoProgress;
use tally::quarantine::Quarantine;
use tally::store::sqlite::SqliteStore;

pub const MONTH: &str = "2025-11";

/// Drift thresholds small enough for a small fixture's daily costs.
pub const CONFIG_EXTRA: &str =
    "\n[reconcile]\ntenant_tag = \"tenant\"\ndrift_min_usd = \"0.0001\"\ndrift_fraction = \"0.05\"\n";

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub cur: CurSummary,
}

impl Fixture {
    /// Logs generated, ingested into the fixture's SQLite store, and billed in CUR.
    pub fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let spec = Spec {
            out: dir.path().to_path_buf(),
            tenants: 12,
            records: 6_000,
            month: MONTH.into(),
            seed: 7,
            ..Spec::default()
        };
        let summary = generate::generate(&spec).unwrap();
        let mut text = std::fs::read_to_string(&summary.config).unwrap();
        text.push_str(CONFIG_EXTRA);
        std::fs::write(&summary.config, text).unwrap();
        let config = Config::load(&summary.config).unwrap();
        let pipeline = config.pipeline().unwrap();
        let mut store = SqliteStore::open(&config.resolve(&config.store.path), false).unwrap();
        let mut q = Quarantine::new(config.resolve(&config.ingest.quarantine));
        let settings = config.ingest_settings(false);
        let mut run = Run {
            store: &mut store,
            pipeline: &pipeline,
            settings: &settings,
            quarantine: &mut q,
            shutdown: &AtomicBool::new(false),
            progress: &NoProgress,
        };
        let report = ingest::run_once(std::slice::from_ref(&summary.logs), &mut run).unwrap();
        assert_eq!(report.counted, 6_000);
        let cur = tally::generate::cur::generate(&CurSpec::new(
            dir.path().to_path_buf(),
            dir.path().join("cur"),
            MONTH.into(),
        ))
        .unwrap();
        Fixture { dir, config: summary.config, cur }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// `tally reconcile` on a CUR folder, outputs under `out`.
    pub fn reconcile(&self, cur: &Path, out: &Path, extra: &[&str]) -> Output {
        self.tally()
            .args(["reconcile", "--period", MONTH, "--cur"])
            .arg(cur)
            .arg("--out")
            .arg(out)
            .args(extra)
            .output()
            .unwrap()
    }

    pub fn tally(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_tally"));
        c.arg("--config").arg(&self.config).arg("--quiet");
        c
    }
}

/// Every file in `dir` (a period's outputs), by name, with its bytes.
pub fn files(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).unwrap()))
        .collect()
}

/// Runs SQL over reconciled outputs through the library and renders CSV.
pub fn sql_csv(out: &Path, query: &str) -> String {
    let batches = tally::reconcile::sql::query(out, MONTH, query).unwrap_or_else(|e| panic!("{query}: {e}"));
    let mut buf = Vec::new();
    tally::tables::write_csv(&mut buf, &batches).unwrap();
    String::from_utf8(buf).unwrap()
}

/// The rows of a CSV (header dropped), split on commas (the tables queried here have no
/// commas inside fields).
pub fn rows(csv: &str) -> Vec<Vec<String>> {
    csv.lines().skip(1).map(|l| l.split(',').map(str::to_string).collect()).collect()
}
