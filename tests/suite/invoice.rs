//! `tally invoice` end to end: generated logs ingested, invoiced provisionally, reconciled
//! against the CUR that bills them, invoiced finally, then the CUR restated and invoiced again.
//! Every exported document is validated against the schema `tally schema invoice` prints.

use crate::invoice_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::str::FromStr;

use rust_decimal::{Decimal, RoundingStrategy};
use tally::invoice::export::InvoiceV1;
use tally::invoice::issue::Status;

const MONTH: &str = "2025-11";

/// Plans for the generated tenants: every kind, and tenant-0005 left without a plan.
const PLANS: &str = r#"
[plans.starter]
kind = "bundled"
monthly_fee = "29.00"

[plans.pro]
kind = "quota"
monthly_fee = "99.00"
included = 200000
overage_rate = "0.004"

[plans.credits]
kind = "quota"
monthly_fee = "49.00"
included = "50"
unit = "credits"
credit_usd = "0.01"
overage_rate = "0.012"

[plans.payg]
kind = "metered"
markup = "4.0"
minimum = "1.00"

[plans.team]
kind = "add_on"
seat_price = "15.00"
included_per_seat = 20000
overage_rate = "0.006"

[tenants.tenant-0000]
plan = "payg"
[tenants.tenant-0001]
plan = "pro"
[tenants.tenant-0002]
plan = "team"
seats = 3
[tenants.tenant-0003]
plan = "payg"
[tenants.tenant-0004]
plan = "credits"
[tenants.tenant-0006]
plan = "starter"
[tenants.tenant-0007]
plan = "payg"
[tenants.tenant-0008]
plan = "payg"
"#;

fn d(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

struct Fixture {
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Fixture {
    /// A month of logs for 10 tenants, with plans, ingested.
    fn new() -> Fixture {
        Fixture::generated(10, 4000, 11, PLANS)
    }

    /// A generated month of logs for `tenants` tenants, `plans` (config text) appended to the
    /// generated config, ingested.
    fn generated(tenants: usize, records: u64, seed: u64, plans: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let f = Fixture { config: dir.path().join("tally.toml"), dir };
        let (tenants, records, seed) = (tenants.to_string(), records.to_string(), seed.to_string());
        ok(&f.tally(
            &["generate", "--tenants", &tenants, "--records", &records, "--seed", &seed, "--month", MONTH, "--out"],
            &[f.dir.path()],
        ));
        let mut text = std::fs::read_to_string(&f.config).unwrap();
        text.push_str(plans);
        std::fs::write(&f.config, text).unwrap();
        ok(&f.tally(&["ingest"], &[&f.path("logs")]));
        f
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn command(&self, args: &[&str], paths: &[&Path]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_tally"));
        c.arg("--config").arg(&self.config).arg("--quiet").args(args).args(paths);
        c
    }

    fn tally(&self, args: &[&str], paths: &[&Path]) -> Output {
        self.command(args, paths).output().unwrap()
    }

    fn invoice(&self) -> String {
        ok(&self.tally(&["invoice", "--period", MONTH, "--out"], &[&self.path("out")]))
    }

    /// A CUR billing the logs, with the shared pool billed `drift` above list price.
    fn cur(&self, name: &str, drift: &str) -> PathBuf {
        let out = self.path(name);
        ok(&self.tally(
            &["generate-cur", "--month", MONTH, "--drift", drift, "--fixtures"],
            &[self.dir.path(), Path::new("--out"), &out],
        ));
        out.join("cur2")
    }

    fn reconcile(&self, cur: &Path) {
        ok(&self.tally(&["reconcile", "--period", MONTH, "--out"], &[&self.path("out"), Path::new("--cur"), cur]));
    }

    fn invoices(&self) -> PathBuf {
        self.path("out").join(MONTH).join("invoices")
    }

    /// Every document in the folder, by file name, validated against the printed schema.
    fn documents(&self) -> BTreeMap<String, InvoiceV1> {
        let schema: serde_json::Value = serde_json::from_str(&ok(&self.tally(&["schema", "invoice"], &[]))).unwrap();
        let validator = invoice_support::Validator::new(&schema);
        let mut docs = BTreeMap::new();
        for e in std::fs::read_dir(self.invoices()).unwrap() {
            let path = e.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.ends_with(".json") {
                let value: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
                validator.check(&value).unwrap_or_else(|e| panic!("{name} does not validate: {e}"));
                docs.insert(name, serde_json::from_value(value).unwrap());
            }
        }
        docs
    }

    /// Reconciled cost per tenant, from the allocation table through `tally sql`.
    fn allocated(&self) -> BTreeMap<String, Decimal> {
        let csv = ok(&self.tally(
            &["sql", "--csv", "--period", MONTH, "--out"],
            &[
                &self.path("out"),
                Path::new("SELECT tenant, sum(cost) AS cost FROM allocation WHERE tenant IS NOT NULL GROUP BY tenant"),
            ],
        ));
        csv.lines().skip(1).map(|l| l.split_once(',').unwrap()).map(|(t, c)| (t.to_string(), d(c))).collect()
    }

    fn file(&self, name: &str) -> String {
        std::fs::read_to_string(self.invoices().join(name)).unwrap()
    }
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "tally failed ({:?}): {}", out.status.code(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn cents(x: Decimal) -> Decimal {
    x.round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero)
}

/// The rows of a CSV without quoted fields, as maps from column to value.
fn csv_rows(text: &str) -> Vec<BTreeMap<String, String>> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    lines.map(|l| header.iter().map(|h| h.to_string()).zip(l.split(',').map(str::to_string)).collect()).collect()
}

#[test]
fn provisional_then_final_then_a_delta_after_the_cur_is_restated() {
    let f = Fixture::new();

    // Before reconcile: provisional, labelled, version 0, from the estimate.
    let text = f.invoice();
    assert!(text.contains("PROVISIONAL"), "{text}");
    let docs = f.documents();
    assert_eq!(docs.len(), 8, "{:?}", docs.keys());
    for (name, doc) in &docs {
        assert!(name.ends_with(".provisional.json"), "{name}");
        assert_eq!(
            (doc.status, doc.version, doc.internal.cost_source.as_str()),
            (Status::Provisional, 0, "estimate"),
            "{name}"
        );
        assert_eq!(doc.total, doc.lines.iter().map(|l| l.amount).sum::<Decimal>(), "{name}");
    }
    // A second provisional run gives the drafts the same bytes. An unchanged draft is left
    // as it is (same inode, so the run creates no file); one that differs is replaced.
    let before = f.file("tenant-0000.provisional.json");
    let inode = |name: &str| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(f.invoices().join(name)).unwrap());
    let inode_before = inode("tenant-0000.provisional.json");
    let tampered = f.file("tenant-0001.provisional.json");
    std::fs::write(
        f.invoices().join("tenant-0001.provisional.json"),
        tampered.replace("\"provisional\"", "\"tampered\""),
    )
    .unwrap();
    let text = f.invoice();
    assert!(text.contains("1 documents written (0 delta versions), 7 drafts and 0 final invoices unchanged"), "{text}");
    assert_eq!(f.file("tenant-0000.provisional.json"), before);
    assert_eq!(inode("tenant-0000.provisional.json"), inode_before, "an unchanged draft was rewritten");
    assert_eq!(f.file("tenant-0001.provisional.json"), tampered, "a draft that differs was not replaced");

    // Reconciled: final version 1 from the allocation; the drafts are gone.
    let cur = f.cur("cur-a", "0.3");
    f.reconcile(&cur);
    let text = f.invoice();
    assert!(text.contains("final") && !text.contains("PROVISIONAL"), "{text}");
    let docs = f.documents();
    assert_eq!(
        docs.keys().cloned().collect::<Vec<_>>(),
        (0..9).filter(|k| *k != 5).map(|k| format!("tenant-{k:04}.v1.json")).collect::<Vec<_>>()
    );
    let allocated = f.allocated();
    for doc in docs.values() {
        assert_eq!((doc.status, doc.version, doc.supersedes.as_deref()), (Status::Final, 1, None));
        let cost = allocated.get(&doc.tenant).copied().unwrap_or_default();
        assert_eq!(doc.internal.cost_basis, cost, "{}", doc.tenant);
        assert_eq!(doc.internal.margin, doc.cumulative_total - cost);
        if doc.plan.kind == "metered" {
            assert_eq!(doc.total, cents(cost * d("4")).max(d("1.00")), "{}", doc.tenant);
        }
    }
    let v1_bytes: BTreeMap<String, String> = docs.keys().map(|n| (n.clone(), f.file(n))).collect();

    // The lines CSV holds every line; the margin report lists the unbilled tenants too.
    let lines = csv_rows(&f.file("invoice_lines.csv"));
    let by_tenant = |rows: &[BTreeMap<String, String>]| {
        let mut m: BTreeMap<String, Decimal> = BTreeMap::new();
        for r in rows {
            *m.entry(r["tenant"].clone()).or_default() += d(&r["amount"]);
        }
        m
    };
    let totals: BTreeMap<String, Decimal> = docs.values().map(|d| (d.tenant.clone(), d.cumulative_total)).collect();
    assert_eq!(by_tenant(&lines), totals);
    let margin = csv_rows(&f.file("margin.csv"));
    let unbilled: Vec<&str> = margin.iter().filter(|r| r["billed"] == "false").map(|r| r["tenant"].as_str()).collect();
    assert!(unbilled.contains(&"_unattributed") && unbilled.contains(&"tenant-0005"), "{unbilled:?}");
    for r in &margin {
        let cost = allocated.get(&r["tenant"]).copied().unwrap_or_default();
        assert_eq!(d(&r["cost"]), cost, "{r:?}");
        assert_eq!(d(&r["margin"]), d(&r["charge"]) - cost, "{r:?}");
    }
    // `tally sql` serves the lines.
    let sql = ok(&f.tally(
        &["sql", "--csv", "--period", MONTH, "--out"],
        &[&f.path("out"), Path::new("SELECT sum(amount) AS total FROM invoice_lines")],
    ));
    assert_eq!(d(sql.lines().nth(1).unwrap()), totals.values().sum::<Decimal>());

    // Re-invoicing unchanged inputs issues nothing new.
    let text = f.invoice();
    assert!(text.contains("0 documents written"), "{text}");
    assert_eq!(f.documents().len(), docs.len());

    // The CUR is restated (the shared pool billed 90% above list price) and reconciled again:
    // version 1 stays as it was, version 2 carries the deltas.
    let restated = f.cur("cur-b", "0.9");
    f.reconcile(&restated);
    f.invoice();
    let after = f.documents();
    for (name, bytes) in &v1_bytes {
        assert_eq!(&f.file(name), bytes, "{name} was rewritten");
    }
    let allocated2 = f.allocated();
    let v2: Vec<&InvoiceV1> = after.values().filter(|d| d.version == 2).collect();
    assert!(v2.iter().any(|d| d.plan.kind == "metered" && !d.lines.is_empty()), "no metered delta: {:?}", after.keys());
    for doc in &v2 {
        let v1 = &docs[&format!("{}.v1.json", doc.tenant)];
        assert_eq!(doc.supersedes.as_deref(), Some(v1.id.as_str()));
        assert_eq!(doc.cumulative_total, v1.total + doc.total);
        assert_eq!(doc.total, doc.lines.iter().map(|l| l.amount).sum::<Decimal>());
        let cost = allocated2.get(&doc.tenant).copied().unwrap_or_default();
        assert_eq!(doc.internal.cost_basis, cost);
        if doc.plan.kind == "metered" {
            let restated = cents(cost * d("4")).max(d("1.00"));
            assert_eq!(doc.cumulative_total, restated, "{}", doc.tenant);
            for l in &doc.lines {
                assert_eq!((l.previous_amount, l.amount), (Some(v1.total), restated - v1.total));
            }
        }
    }
    // Tenants whose cost did not move got no new version.
    for doc in docs.values() {
        let moved = allocated.get(&doc.tenant) != allocated2.get(&doc.tenant);
        assert_eq!(after.contains_key(&format!("{}.v2.json", doc.tenant)), moved, "{}", doc.tenant);
    }
    // The lines CSV now holds both versions and adds up to each tenant's latest cumulative
    // total (documents sort by version within a tenant).
    let mut expected: BTreeMap<String, Decimal> = BTreeMap::new();
    for doc in after.values() {
        expected.insert(doc.tenant.clone(), doc.cumulative_total);
    }
    assert_eq!(by_tenant(&csv_rows(&f.file("invoice_lines.csv"))), expected);
}

#[test]
fn a_missing_reconcile_after_final_invoices_is_refused() {
    let f = Fixture::new();
    let cur = f.cur("cur", "0.3");
    f.reconcile(&cur);
    f.invoice();
    std::fs::remove_file(f.path("out").join(MONTH).join("allocation.parquet")).unwrap();
    let out = f.tally(&["invoice", "--period", MONTH, "--out"], &[&f.path("out")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("holds final invoices"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `reconcile` killed between its folder renames leaves the period in pieces; whatever runs
/// next (`invoice` or `reconcile`) puts it back together first, so an issued final invoice
/// never changes and no version of it is lost. Each kill point of the swap is tried: the new
/// folder complete but not yet in place (finished), and not yet complete (rolled back).
#[test]
fn an_interrupted_reconcile_never_changes_an_issued_invoice() {
    for complete in [true, false] {
        let f = Fixture::new();
        f.reconcile(&f.cur("cur", "0.3"));
        f.invoice();
        let restated = f.cur("restated", "0.9");
        f.reconcile(&restated);
        f.invoice();
        let issued: BTreeMap<String, String> = f.documents().keys().map(|n| (n.clone(), f.file(n))).collect();
        assert!(issued.keys().any(|n| n.ends_with(".v2.json")), "a restated CUR gives deltas: {:?}", issued.keys());

        // As a SIGKILL leaves it: the new tables staged (and marked complete, or not yet),
        // the issued invoices moved in with them, the old folder moved aside.
        let out = f.path("out");
        let (period, partial, old) =
            (out.join(MONTH), out.join(format!(".{MONTH}.partial")), out.join(format!(".{MONTH}.old")));
        std::fs::create_dir_all(&partial).unwrap();
        for e in std::fs::read_dir(&period).unwrap() {
            let p = e.unwrap().path();
            if p.is_file() {
                std::fs::copy(&p, partial.join(p.file_name().unwrap())).unwrap();
            }
        }
        if complete {
            std::fs::write(partial.join(".complete"), b"").unwrap();
        }
        std::fs::rename(period.join("invoices"), partial.join("invoices")).unwrap();
        std::fs::rename(&period, &old).unwrap();

        // Then invoice, reconcile, invoice, as the issue's report ran them.
        f.invoice();
        f.reconcile(&restated);
        f.invoice();
        let after: BTreeMap<String, String> = f.documents().keys().map(|n| (n.clone(), f.file(n))).collect();
        for (name, text) in &issued {
            assert_eq!(after.get(name), Some(text), "complete={complete}: issued document {name} changed or vanished");
        }
        assert!(!partial.exists() && !old.exists(), "complete={complete}: staging folders left behind");
    }
}

/// A run stopped while creating documents leaves `.in-flight` naming them. The next run
/// removes the named documents that are incomplete and issues them again; complete ones stay
/// as they are, named or not; and without the record an incomplete document is an error that
/// names it, never silently replaced.
#[test]
fn a_run_stopped_while_writing_is_recovered_by_the_next() {
    let f = Fixture::new();
    let cur = f.cur("cur", "0.3");
    f.reconcile(&cur);
    f.invoice();
    let issued: BTreeMap<String, String> = f.documents().keys().map(|n| (n.clone(), f.file(n))).collect();
    let inode = |name: &str| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(f.invoices().join(name)).unwrap());

    // As a crash leaves it: one document cut short after its last `}` line but before the
    // object closed, one empty (created, never written), one never created, one complete.
    let whole = issued["tenant-0002.v1.json"].clone();
    let cut = &whole[..whole.trim_end().len() - 1];
    assert!(cut.ends_with("}\n") || cut.ends_with("]\n"), "{cut}");
    std::fs::write(f.invoices().join("tenant-0002.v1.json"), cut).unwrap();
    std::fs::write(f.invoices().join("tenant-0003.v1.json"), "").unwrap();
    std::fs::remove_file(f.invoices().join("tenant-0004.v1.json")).unwrap();
    let kept = inode("tenant-0006.v1.json");
    let record = f.invoices().join(".in-flight");

    // Without the record, the cut documents are refused by name.
    let out = f.tally(&["invoice", "--period", MONTH, "--out"], &[&f.path("out")]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("tenant-0002.v1.json") || stderr.contains("tenant-0003.v1.json"), "{stderr}");

    std::fs::write(&record, "tenant-0002.v1.json\ntenant-0003.v1.json\ntenant-0004.v1.json\ntenant-0006.v1.json\n")
        .unwrap();
    let text = f.invoice();
    assert!(text.contains("3 documents written (0 delta versions)"), "{text}");
    assert!(!record.exists(), "the in-flight record outlived a finished run");
    let after: BTreeMap<String, String> = f.documents().keys().map(|n| (n.clone(), f.file(n))).collect();
    assert_eq!(after, issued, "the recovered folder differs from the uninterrupted run's");
    assert_eq!(inode("tenant-0006.v1.json"), kept, "a complete document named in the record was rewritten");
}

/// `tally invoice` SIGKILLed at random points of its provisional run and then of its final
/// run, and run again each time, ends with the same files, byte for byte, as runs that were
/// never interrupted.
#[test]
fn sigkill_at_random_points_of_an_invoice_run_then_rerun_gives_the_same_invoices() {
    use crate::support::kill::Lcg;
    const TENANTS: usize = 3_000;
    // Every tenant of a bigger month on a plan: thousands of documents per run.
    let mut plans = PLANS.split("[tenants.").next().unwrap().to_string();
    let kinds = ["payg", "pro", "team", "credits", "starter"];
    for k in 0..TENANTS {
        let plan = kinds[k % kinds.len()];
        let seats = if plan == "team" { "seats = 2\n" } else { "" };
        plans.push_str(&format!("[tenants.tenant-{k:04}]\nplan = \"{plan}\"\n{seats}"));
    }
    let big = Fixture::generated(TENANTS, 20_000, 12, &plans);

    let invoice = |out: &Path| {
        let mut c = big.command(&["invoice", "--period", MONTH, "--out"], &[out]);
        c.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped());
        c
    };
    let folder = |out: &Path| -> BTreeMap<String, Vec<u8>> {
        let dir = out.join(MONTH).join("invoices");
        std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_none_or(|x| x != "tmp"))
            .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
            .collect()
    };
    let (reference, killed) = (big.path("reference"), big.path("killed"));
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    let mut rng = Lcg(seed);
    let cur = big.cur("cur", "0.3");
    for stage in ["provisional", "final"] {
        if stage == "final" {
            for out in [&reference, &killed] {
                ok(&big.tally(&["reconcile", "--period", MONTH, "--out"], &[out, Path::new("--cur"), &cur]));
            }
        }
        let started = std::time::Instant::now();
        let run = invoice(&reference).output().unwrap();
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
        let full_ms = started.elapsed().as_millis().max(20) as u64;
        let expected = folder(&reference);
        assert!(expected.len() >= TENANTS, "{} files", expected.len());
        eprintln!("{stage}: kill-time seed {seed}, a full run takes {full_ms} ms");
        // Each run after a kill goes on from what the killed ones left. A run that finished
        // before its kill leaves nothing to interrupt, so the folder is put back as it was
        // before the stage and the next run starts over.
        let dir = killed.join(MONTH).join("invoices");
        let before: BTreeMap<String, Vec<u8>> = if dir.exists() { folder(&killed) } else { BTreeMap::new() };
        let mut mid_run = 0;
        // Kills land in the first half of a run. Run times vary by an order of magnitude on a
        // disk that is slow to create files right after many were deleted, so a run that ends
        // before its kill narrows the window to half of what it took.
        let mut window = (full_ms / 2).max(1);
        for _ in 0..10 {
            let spawned = std::time::Instant::now();
            let mut child = invoice(&killed).spawn().unwrap();
            std::thread::sleep(std::time::Duration::from_millis(rng.below(window)));
            if child.try_wait().unwrap().is_none() {
                mid_run += 1;
                child.kill().unwrap(); // SIGKILL
                child.wait().unwrap();
            } else {
                window = window.min((spawned.elapsed().as_millis() as u64 / 2).max(1));
                std::fs::remove_dir_all(&dir).unwrap();
                std::fs::create_dir_all(&dir).unwrap();
                for (name, bytes) in &before {
                    std::fs::write(dir.join(name), bytes).unwrap();
                }
            }
        }
        assert!(mid_run >= 5, "{stage}: only {mid_run} of 10 kills landed mid-run");
        let last = invoice(&killed).output().unwrap();
        assert!(
            last.status.success(),
            "{stage}: the run after the kills failed: {}",
            String::from_utf8_lossy(&last.stderr)
        );
        let got = folder(&killed);
        assert_eq!(got.keys().collect::<Vec<_>>(), expected.keys().collect::<Vec<_>>(), "{stage}: other files");
        for (name, bytes) in &expected {
            assert!(&got[name] == bytes, "{stage}: {name} differs from the uninterrupted run's");
        }
    }
}
