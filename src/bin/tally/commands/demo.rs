//! `tally demo`: the whole pipeline on generated fixtures, with no services. Generates a month
//! of logs and a config with plans and an admin key, ingests, invoices provisionally,
//! reconciles against a CUR generated to bill the same logs, invoices finally, and prints a
//! summary with commands to try next.

use std::path::{Path, PathBuf};

use anyhow::Context;

use tally::config::Config;
use tally::generate::cur::{CurSpec, CurSummary};
use tally::generate::{self, Spec};
use tally::ingest::RunReport;
use tally::source::Input;
use tally::{invoice, reconcile};

use super::billing::{invoice_period, reconcile_period, ReconcileOptions};
use super::ingest::ingest_inputs;
use crate::args::{DemoArgs, Global};
use crate::print;

pub fn run(global: &Global, args: &DemoArgs) -> anyhow::Result<u8> {
    let fixtures = Fixtures::write(args)?;
    let outcome = Outcome::of(&fixtures, &args.out, global.quiet || args.json)?;
    if args.json {
        let value = serde_json::json!({
            "ingest": outcome.report,
            "period": fixtures.spec.month,
            "reconcile": outcome.reconciled,
            "invoice": outcome.invoiced,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print_summary(args, &fixtures, &outcome);
    }
    Ok(0)
}

/// The generated logs and the config that reads them, with a fresh store.
struct Fixtures {
    spec: Spec,
    summary: generate::Summary,
    config: Config,
    /// An admin key for `tally serve` on the demo counters (the config keeps only its hash).
    admin_key: String,
}

impl Fixtures {
    fn write(args: &DemoArgs) -> anyhow::Result<Fixtures> {
        let spec = Spec { out: args.out.clone(), tenants: args.tenants, records: args.records, ..Spec::default() };
        let summary = generate::generate(&spec)?;
        let admin_key = add_plans_and_key(&summary.config, args.tenants)?;
        let config = Config::load(&summary.config)?;
        reset(&config, &args.out.join(&spec.month).join(tally::tables::INVOICES))?;
        Ok(Fixtures { spec, summary, config, admin_key })
    }
}

/// Appends the demo plans and an admin key's hash to the generated config; returns the key.
fn add_plans_and_key(config: &Path, tenants: usize) -> anyhow::Result<String> {
    let mut config_text =
        std::fs::read_to_string(config).with_context(|| format!("cannot read {}", config.display()))?;
    config_text.push_str(&invoice::plan::demo_plans(tenants));
    let admin_key = tally::serve::auth::new_key()?;
    config_text.push_str(&format!(
        "\n[[serve.keys]]\nhash = \"{}\"\nadmin = true\nname = \"demo-admin\"\n",
        tally::serve::auth::hash_text(&admin_key)
    ));
    std::fs::write(config, config_text).with_context(|| format!("cannot write {}", config.display()))?;
    Ok(admin_key)
}

/// Removes what an earlier demo in the same folder left: its invoices, counters and quarantine.
fn reset(config: &Config, invoices: &Path) -> anyhow::Result<()> {
    if invoices.exists() {
        std::fs::remove_dir_all(invoices).with_context(|| format!("cannot reset {}", invoices.display()))?;
    }
    for f in [config.resolve(&config.store.path), config.resolve(&config.ingest.quarantine)] {
        for suffix in ["", "-wal", "-shm"] {
            let p = PathBuf::from(format!("{}{suffix}", f.display()));
            if p.exists() {
                std::fs::remove_file(&p).with_context(|| format!("cannot reset {}", p.display()))?;
            }
        }
    }
    Ok(())
}

/// What each stage of the demo reported.
struct Outcome {
    report: RunReport,
    provisional: invoice::Report,
    cur: CurSummary,
    reconciled: reconcile::Report,
    invoiced: invoice::Report,
}

impl Outcome {
    fn of(f: &Fixtures, out: &Path, quiet: bool) -> anyhow::Result<Outcome> {
        let month = &f.spec.month;
        let (report, _) = ingest_inputs(&f.config, vec![Input::Path(f.summary.logs.clone())], false, quiet)?;
        // Before reconcile the period can only be invoiced provisionally (list-price estimates).
        let provisional = invoice_period(&f.config, month, out)?;
        // The nightly reconcile on a CUR generated to bill the same logs, then the final invoices.
        let cur = generate::cur::generate(&CurSpec::new(out.to_path_buf(), out.join("cur"), month.clone()))?;
        let options = ReconcileOptions { quiet, ..Default::default() };
        let reconciled = reconcile_period(&f.config, month, &cur.cur2.to_string_lossy(), out, options)?;
        let invoiced = invoice_period(&f.config, month, out)?;
        Ok(Outcome { report, provisional, cur, reconciled, invoiced })
    }
}

/// The text summary: each stage's report, then where things are and what to try next.
fn print_summary(args: &DemoArgs, f: &Fixtures, o: &Outcome) {
    let (out, month, config) = (args.out.display(), &f.spec.month, &f.config);
    println!(
        "tally demo · {} records for {} tenants in {month} (generated under {out})\n",
        args.records, f.spec.tenants
    );
    print::run_report(&o.report);
    println!(
        "\nprovisional invoices before reconcile: {} (charge {}, estimated cost {})",
        o.provisional.written,
        o.provisional.charge,
        o.provisional.cost.round_dp(4)
    );
    println!("\n— reconcile against a generated CUR ({}) —\n", o.cur.cur2.display());
    print::reconcile(&o.reconciled);
    println!("\n— invoices —\n");
    print::invoices(&o.invoiced, 50);
    println!(
        "\ncounters: {}\nquarantine: {}\ntry: tally --config {} meter tenant-0000 --period {month}\n     tally sql --out {out} --period {month} \"SELECT tenant, sum(amount) FROM invoice_lines GROUP BY tenant ORDER BY 2 DESC\"\n     tally schema invoice\n     tally --config {} serve --as-of {month}-28T12:00:00Z   # then open http://127.0.0.1:8080/#key={}",
        config.resolve(&config.store.path).display(),
        config.resolve(&config.ingest.quarantine).display(),
        f.summary.config.display(),
        f.summary.config.display(),
        f.admin_key
    );
}
