//! What the commands print on a terminal: run reports, usage tables, reconcile and invoice
//! summaries. `--json` output is the reports' own serialization and does not come through here.

use std::path::Path;

use tally::generate::cur::CurSummary;
use tally::ingest::{LastRun, RunReport};
use tally::store::{IngestTotals, PeriodUsage, WriteStats};
use tally::usage::Usage;
use tally::{generate, invoice, reconcile};

/// The failed inputs shown on the terminal; all of them are in `--json` and `tally status --json`.
const FAILED_SHOWN: usize = 10;

/// An ingest run: its accounting, throughput and everything that needs a look.
pub fn run_report(r: &RunReport) {
    let reasons: Vec<String> = r.skipped.iter().map(|(k, v)| format!("{k} {v}")).collect();
    println!(
        "received {} = counted {} + duplicates {} + skipped {}{}",
        r.received,
        r.counted,
        r.duplicates,
        r.skipped_total(),
        if reasons.is_empty() { String::new() } else { format!(" ({})", reasons.join(", ")) }
    );
    let secs = r.elapsed_secs.max(1e-9);
    println!(
        "files: {} read, {} unchanged, {} failed; {:.1} MB in {:.2} s ({:.0} records/s, {:.0} MB/s); {} counter keys written in {} batches",
        r.files_read,
        r.files_unchanged,
        r.files_failed,
        r.bytes_read as f64 / 1e6,
        r.elapsed_secs,
        r.received as f64 / secs,
        r.bytes_read as f64 / 1e6 / secs,
        r.keys_written,
        r.batches
    );
    if r.objects_read > 0 || r.streams_read > 0 {
        println!("aws: {} S3 objects read, {} CloudWatch Logs streams read", r.objects_read, r.streams_read);
    }
    if r.quarantined > 0 {
        println!("quarantined {} records → {}", r.quarantined, r.quarantine_file);
    }
    if r.quarantine_omitted > 0 {
        println!(
            "  of which {} counted but not written: the run reached ingest.quarantine_max_bytes",
            r.quarantine_omitted
        );
    }
    if r.unattributed > 0 || r.conflicts > 0 {
        println!("unattributed records: {}; tenant-rule conflicts: {}", r.unattributed, r.conflicts);
    }
    if r.unexpected_schema > 0 {
        println!("records with a schemaVersion other than 1.0 (counted): {}", r.unexpected_schema);
    }
    for (model, n) in &r.unknown_models {
        println!("unknown model, priced at 0: {model} ({n} records)");
    }
    failed(&r.errors);
    for p in &r.passed_over {
        println!("passed over: {p}");
    }
}

/// The first failed inputs, and how many more there are.
pub fn failed(failed: &[String]) {
    for e in failed.iter().take(FAILED_SHOWN) {
        println!("failed: {e}");
    }
    if failed.len() > FAILED_SHOWN {
        println!("… and {} more failed inputs (tally status --json lists them all)", failed.len() - FAILED_SHOWN);
    }
}

/// One line on what a billed-per-request store was sent.
pub fn write_stats(w: &WriteStats, records: u64) {
    let per_million = |v: f64| if records == 0 { 0.0 } else { v * 1e6 / records as f64 };
    println!(
        "store writes: {} write requests, {:.0} write units in {} transactions ({:.0} requests and {:.0} units per 1M records received); {} read requests",
        w.write_requests,
        w.write_units,
        w.transactions,
        per_million(w.write_requests as f64),
        per_million(w.write_units),
        w.read_requests
    );
}

/// `tally status`: the lifetime accounting, skipped records by reason, and the last run's failures.
pub fn status(totals: &IngestTotals, quarantined: u64, quarantine: &Path, last_run: Option<&LastRun>) {
    let skipped: u64 = totals.skipped.values().sum();
    println!(
        "received {} = counted {} + duplicates {} + skipped {skipped}",
        totals.received, totals.counted, totals.duplicates
    );
    for (reason, n) in &totals.skipped {
        println!("  {reason:<22} {n}");
    }
    println!("quarantined {quarantined} records → {}", quarantine.display());
    if let Some(run) = last_run {
        println!("last ingest {}: {} files failed", run.finished_at, run.files_failed);
        failed(&run.failed);
    }
}

fn usage_header() -> String {
    format!(
        "{:>9} {:>7} {:>8} {:>12} {:>12} {:>12} {:>12} {:>14}",
        "requests", "errors", "no_usage", "input", "output", "cache_read", "cache_write", "est_cost_usd"
    )
}

fn usage_cells(u: &Usage) -> String {
    format!(
        "{:>9} {:>7} {:>8} {:>12} {:>12} {:>12} {:>12} {:>14}",
        u.requests,
        u.errors,
        u.no_usage,
        u.input,
        u.output,
        u.cache_read,
        u.cache_write,
        u.est_cost.round_dp(6)
    )
}

/// `tally meter`: a tenant's month by day, its total, and by resource.
pub fn meter(u: &PeriodUsage) {
    println!("tenant {} · {} · live counters, cost estimated at list price\n", u.tenant, u.period);
    println!("{:<10} {}", "day", usage_header());
    for (day, usage) in &u.by_day {
        println!("{day:<10} {}", usage_cells(usage));
    }
    println!("{:<10} {}\n", "total", usage_cells(&u.total));
    println!("{:<10} {}  resource", "", usage_header());
    for (resource, usage) in &u.by_resource {
        println!("{:<10} {}  {resource}", "", usage_cells(usage));
    }
    if has_dimensions(&u.total) {
        println!("\nother dimensions (seconds of video and audio to the millisecond)\n");
        println!("{:<10} {}", "day", dimension_header());
        for (day, usage) in u.by_day.iter().filter(|(_, usage)| has_dimensions(usage)) {
            println!("{day:<10} {}", dimension_cells(usage));
        }
        println!("{:<10} {}\n", "total", dimension_cells(&u.total));
        println!("{:<10} {}  resource", "", dimension_header());
        for (resource, usage) in u.by_resource.iter().filter(|(_, usage)| has_dimensions(usage)) {
            println!("{:<10} {}  {resource}", "", dimension_cells(usage));
        }
    }
}

/// Whether `u` has any of the dimensions besides tokens; a month without them prints as it
/// always did.
fn has_dimensions(u: &Usage) -> bool {
    u.counts()[7..].iter().any(|&c| c != 0)
}

fn dimension_header() -> String {
    format!(
        "{:>8} {:>12} {:>12} {:>12} {:>14} {:>17} {:>12}",
        "images", "video_s", "audio_s", "search_units", "cache_write_1h", "latency_optimized", "cross_region"
    )
}

fn dimension_cells(u: &Usage) -> String {
    let seconds = |ms: u64| format!("{}.{:03}", ms / 1000, ms % 1000);
    format!(
        "{:>8} {:>12} {:>12} {:>12} {:>14} {:>17} {:>12}",
        u.images,
        seconds(u.video_ms),
        seconds(u.audio_ms),
        u.search_units,
        u.cache_write_1h,
        u.latency_optimized,
        u.cross_region
    )
}

/// `tally generate`: what was written where.
pub fn generated(s: &generate::Summary) {
    println!(
        "wrote {} records in {} files ({:.1} MB) under {}\nconfig: {}\ntruth:  {}",
        s.records,
        s.files,
        s.bytes as f64 / 1e6,
        s.logs.display(),
        s.config.display(),
        s.truth.display()
    );
}

/// `tally generate-cur`: what was written where, for the month `month`.
pub fn generated_cur(s: &CurSummary, month: &str) {
    println!(
        "wrote {} lines per variant in {} files ({} Bedrock usage lines of {}, cost {})\nCUR 2.0: {}\nlegacy:  {}",
        s.lines,
        s.files,
        s.usage_lines,
        month,
        s.usage_cost,
        s.cur2.display(),
        s.legacy.display()
    );
}

/// `tally reconcile`: the balance, adjustments, drift, and the cost each tenant was allocated.
pub fn reconcile(r: &reconcile::Report) {
    println!(
        "reconciled {}: {} Bedrock lines from {} CUR files ({:.1} MB), {} hourly counters",
        r.period,
        r.cur_lines,
        r.cur_files,
        r.cur_bytes as f64 / 1e6,
        r.counters
    );
    let reasons: Vec<String> = r.unallocated_by_reason.iter().map(|(k, v)| format!("{k} {v}")).collect();
    println!(
        "CUR Bedrock usage {} = allocated {} + unallocated {}{}",
        r.usage_cost,
        r.allocated,
        r.unallocated,
        if reasons.is_empty() { String::new() } else { format!(" ({})", reasons.join(", ")) }
    );
    let bases: Vec<String> = r.allocated_by_basis.iter().map(|(k, v)| format!("{k} {v}")).collect();
    if !bases.is_empty() {
        println!("allocated by basis: {}", bases.join(", "));
    }
    println!("adjustments (credits, refunds, tax; not allocated): {}", r.adjustments);
    println!("drift: {} rows, {} flagged", r.drift_rows, r.drift_flagged);
    if let Some(ce) = &r.cost_explorer {
        println!(
            "cost explorer: {} (CUR usage {}), {} tag values compared, {} flagged (table cost_explorer)",
            ce.cost_explorer, ce.cur_usage, ce.rows, ce.flagged
        );
    }
    println!("\n{:<16} {:>16}", "tenant", "cost_usd");
    for t in &r.tenants {
        println!("{:<16} {:>16}", t.tenant, t.cost.round_dp(6));
    }
    println!("\noutputs: {}", r.output.display());
}

/// `tally invoice`: what was written, the margin table's `top` rows, and the files.
pub fn invoices(r: &invoice::Report, top: usize) {
    let label = match r.status {
        invoice::issue::Status::Final => "final (reconciled cost)",
        invoice::issue::Status::Provisional => "PROVISIONAL (list-price estimate; the period is not reconciled)",
    };
    println!("invoices {} · {label}", r.period);
    println!(
        "{} documents written ({} delta versions), {} drafts and {} final invoices unchanged, {} unbilled tenants (usage but no plan)\n",
        r.written, r.deltas, r.drafts_unchanged, r.unchanged, r.unbilled
    );
    print!("{}", invoice::export::margin_table(&r.margin, top));
    println!("\ninvoices: {}", r.folder.display());
    for f in &r.files {
        println!("          {}", f.display());
    }
}
