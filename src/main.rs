//! The `tally` command line. The only place that reads the environment, installs signal
//! handlers, draws progress bars and chooses exit codes.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use tally::config::{Config, ConfigError};
use tally::generate::cur::CurSpec;
use tally::generate::{self, Spec};
use tally::ids::TenantId;
use tally::ingest::{self, IngestError, Inputs, RunReport};
use tally::invoice::{self, InvoiceError};
use tally::progress::Progress;
use tally::quarantine::{Quarantine, Reason};
use tally::reconcile::{self as reconcile, ReconcileError};
use tally::source::Input;
use tally::store::sqlite::SqliteStore;
use tally::store::{CounterStore, PeriodUsage, WriteStats};
use tally::usage::Usage;

/// Exit codes, as documented in the README.
mod exit {
    pub const FAILED: u8 = 1;
    pub const CONFIG: u8 = 2;
    pub const ACCOUNTING: u8 = 3;
    pub const PARTIAL: u8 = 4;
    pub const UNBALANCED: u8 = 5;
}

#[derive(Parser)]
#[command(
    name = "tally",
    version,
    about = "Meter and bill generative-AI usage per tenant, from Amazon Bedrock's own records.",
    long_about = "Meter and bill generative-AI usage per tenant, from Amazon Bedrock's own records.\n\n\
    Ingest model-invocation logs into per-tenant counters (exactly once), and read them back.\n\
    Start with `tally demo`, which runs the pipeline on generated fixtures."
)]
struct Cli {
    /// The config file. Without it, `tally.toml` in the current folder is used if present,
    /// otherwise built-in defaults.
    #[arg(long, global = true, env = "TALLY_CONFIG")]
    config: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, global = true, value_parser = ["text", "json"], default_value = "text")]
    log_format: String,
    /// No progress bar.
    #[arg(long, short, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Count invocation-log records into the counters: files, directory trees, .json.gz.
    ///
    /// Re-running over the same inputs changes nothing; grown files continue where they
    /// stopped. Bad records go to the quarantine file with file, line and reason. Prints
    /// received = counted + duplicates + skipped, and fails (exit 3) if that does not hold.
    Ingest {
        /// What to read: files or directories; with a build that has the `aws` feature also
        /// s3://bucket/prefix (Bedrock's S3 delivery) and cloudwatch://log-group (every stream;
        /// cloudwatch://log-group?stream=name for one).
        #[arg(required = true, value_name = "INPUT", value_parser = Input::parse)]
        inputs: Vec<Input>,
        /// Keep polling for new data until SIGTERM or Ctrl-C (then flush and exit 0).
        #[arg(long)]
        follow: bool,
        /// Print the run report as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Create the counter store: the DynamoDB table (on-demand billing, TTL on) or the SQLite file.
    ///
    /// Safe to run again. For DynamoDB the AWS credentials and region come from the standard
    /// chain (environment, profile, role); `[store] endpoint_url` points at a local endpoint.
    Init,
    /// Show one tenant's usage in a month, by day and by resource.
    Meter {
        tenant: String,
        /// The month, YYYY-MM (default: the current UTC month).
        #[arg(long)]
        period: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Show lifetime ingest totals: received, counted, duplicates, skipped by reason.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Generate a realistic month of invocation logs, a matching tally.toml and the truth.
    Generate {
        /// Output folder.
        #[arg(long, default_value = "out/fixtures")]
        out: PathBuf,
        #[arg(long, default_value_t = 20)]
        tenants: usize,
        #[arg(long, default_value_t = 10_000)]
        records: u64,
        /// YYYY-MM.
        #[arg(long, default_value = "2025-11")]
        month: String,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Mean prompt + completion text per record, in bytes.
        #[arg(long, default_value_t = 400)]
        body_bytes: usize,
        /// Share of records delivered as plain NDJSON instead of .json.gz.
        #[arg(long, default_value_t = 0.1)]
        plain_fraction: f64,
        /// Share of records delivered twice.
        #[arg(long, default_value_t = 0.01)]
        duplicate_fraction: f64,
        /// Records per .json.gz object.
        #[arg(long, default_value_t = 2_000)]
        records_per_object: usize,
        /// Spread the records over the month's first N hours instead of the whole month.
        #[arg(long, value_name = "N")]
        hours: Option<u64>,
        #[arg(long)]
        json: bool,
    },
    /// Reconcile a billing period: allocate the CUR's Bedrock cost to tenants, exactly.
    ///
    /// Reads the period's CUR 2.0 or legacy CUR Parquet under --cur and the period's counters,
    /// and writes allocation, drift, adjustments, summary, cur and usage under
    /// <out>/<period>/ (replacing that folder as a whole). Fails with exit 5 if
    /// allocated + unallocated != CUR Bedrock usage cost.
    Reconcile {
        /// The billing period, YYYY-MM.
        #[arg(long)]
        period: String,
        /// The CUR: a folder (a data export or legacy report), one Parquet file, or
        /// s3://bucket/prefix (a build with the `aws` feature; reached as [sources] says).
        #[arg(long)]
        cur: String,
        /// Outputs go to <out>/<period>/.
        #[arg(long, default_value = "out")]
        out: PathBuf,
        /// Also write each table as CSV.
        #[arg(long)]
        csv: bool,
        /// Cross-check against Cost Explorer (GetCostAndUsage grouped by the tenant tag): per-tag
        /// differences in the cost_explorer table. Needs the `aws` feature.
        #[arg(long)]
        cost_explorer: bool,
        #[arg(long)]
        json: bool,
    },
    /// Run SQL over a reconciled period: tables cur, usage, allocation, drift, adjustments, summary.
    Sql {
        /// The query, e.g. "SELECT tenant, sum(cost) FROM allocation GROUP BY tenant".
        query: String,
        /// The billing period, YYYY-MM (reconciled before).
        #[arg(long)]
        period: String,
        /// The folder reconcile wrote to.
        #[arg(long, default_value = "out")]
        out: PathBuf,
        /// Print CSV instead of a table.
        #[arg(long)]
        csv: bool,
        /// Write the result to this Parquet file instead of printing it.
        #[arg(long)]
        parquet: Option<PathBuf>,
    },
    /// Invoice a billing period: each tenant's plan ([plans], [tenants]) applied to its usage.
    ///
    /// `provisional` (counters and list-price estimates; rewritten by each run) until the
    /// period is reconciled, `final` (the reconciled cost) after. A final invoice is never
    /// rewritten: when what it stands on changes (a restated CUR, late records), the next run
    /// writes version n+1 with the delta lines. Writes <out>/<period>/invoices/: one JSON per
    /// tenant and version, invoice_lines.csv (+ .parquet for `tally sql`) and margin.csv.
    Invoice {
        /// The billing period, YYYY-MM.
        #[arg(long)]
        period: String,
        /// The folder reconcile writes to.
        #[arg(long, default_value = "out")]
        out: PathBuf,
        /// Rows of the margin table to print (the costliest tenants); margin.csv has them all.
        #[arg(long, default_value_t = 50)]
        top: usize,
        #[arg(long)]
        json: bool,
    },
    /// Print the JSON Schema of an export (`invoice`: the documents `tally invoice` writes).
    Schema {
        #[arg(value_parser = ["invoice"])]
        name: String,
    },
    /// Generate CUR Parquet (CUR 2.0 and legacy) that bills the logs `tally generate` wrote.
    GenerateCur {
        /// The folder `tally generate` wrote (truth.json, tally.toml).
        #[arg(long, default_value = "out/fixtures")]
        fixtures: PathBuf,
        /// Output folder (default: <fixtures>/cur); CUR 2.0 under cur2/, legacy under legacy/.
        #[arg(long)]
        out: Option<PathBuf>,
        /// YYYY-MM, as given to `tally generate`.
        #[arg(long, default_value = "2025-11")]
        month: String,
        /// About this many usage lines (hourly lines split across usage accounts); 0 = natural.
        #[arg(long, default_value_t = 0)]
        lines: u64,
        /// Lines per Parquet file.
        #[arg(long, default_value_t = 250_000)]
        rows_per_file: usize,
        /// How much the shared profile is billed above list price.
        #[arg(long, default_value = "0.3")]
        drift: rust_decimal::Decimal,
        /// The tenant tag's name.
        #[arg(long, default_value = "tenant")]
        tag: String,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long)]
        json: bool,
    },
    /// Serve live meters over HTTP: usage, quota, tenants, /metrics, a dashboard at /.
    ///
    /// Reads the counters (either backend) while `tally ingest --follow` writes them. Callers
    /// send a key from [[serve.keys]] as `Authorization: Bearer <key>`; a tenant key reads only
    /// its own tenant. Checks alert thresholds in the background and POSTs crossings to
    /// [serve.alerts] webhook. Stops on SIGTERM or Ctrl-C (exit 0).
    Serve {
        /// Address to listen on (default: [serve] listen, 127.0.0.1:8080).
        #[arg(long)]
        listen: Option<String>,
        /// Answer as if the clock read this RFC 3339 time: which month and day quotas and
        /// alerts count (for replaying a past period).
        #[arg(long, value_name = "TIME")]
        as_of: Option<String>,
    },
    /// Make or hash a bearer key for [[serve.keys]].
    #[command(subcommand)]
    Key(KeyCommand),
    /// Run the pipeline on generated fixtures with no services, and print a summary.
    Demo {
        /// Where the fixtures, counters and outputs go.
        #[arg(long, default_value = "out/demo")]
        out: PathBuf,
        #[arg(long, default_value_t = 12)]
        tenants: usize,
        #[arg(long, default_value_t = 20_000)]
        records: u64,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Print a new random key and the [[serve.keys]] entry to paste into tally.toml (which
    /// holds only the key's hash). Give the key to its user; it is not shown again.
    New {
        /// The tenant the key reads.
        #[arg(long, conflicts_with = "admin", required_unless_present = "admin")]
        tenant: Option<String>,
        /// An admin key: reads every tenant.
        #[arg(long)]
        admin: bool,
        /// A label for logs.
        #[arg(long)]
        name: Option<String>,
    },
    /// Print the `sha256:` hash of a key read from stdin (for keys made elsewhere).
    Hash,
}

fn main() -> ExitCode {
    // `tally meter … | head` should stop quietly when the reader goes away, as Unix tools do,
    // not panic on the broken pipe (Rust ignores SIGPIPE by default).
    // SAFETY: restoring the default disposition of one signal before any thread is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    init_logging(&cli.log_format);
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let config_error = e.downcast_ref::<ConfigError>().is_some()
                || e.downcast_ref::<tally::pricing::CatalogError>().is_some()
                || matches!(e.downcast_ref::<InvoiceError>(), Some(InvoiceError::Plans { .. }));
            let code = if config_error {
                exit::CONFIG
            } else if matches!(e.downcast_ref::<IngestError>(), Some(IngestError::Accounting(_))) {
                exit::ACCOUNTING
            } else if matches!(e.downcast_ref::<ReconcileError>(), Some(ReconcileError::Imbalance { .. })) {
                exit::UNBALANCED
            } else {
                exit::FAILED
            };
            eprintln!("tally: error: {e:#}");
            ExitCode::from(code)
        }
    }
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TALLY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,tally=info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.with_target(false).init();
    }
}

fn load_config(explicit: Option<&Path>) -> anyhow::Result<Config> {
    let (config, path) = match explicit {
        Some(p) => (Config::load(p)?, p.to_path_buf()),
        None if Path::new("tally.toml").exists() => {
            (Config::load(Path::new("tally.toml"))?, PathBuf::from("tally.toml"))
        }
        None => return Ok(Config::defaults_in(PathBuf::from("."))),
    };
    if config.store.backend == "dynamodb" && !cfg!(feature = "aws") {
        return Err(ConfigError::Invalid {
            path,
            field: "store.backend".into(),
            message: "\"dynamodb\" needs a tally built with the `aws` feature (the default; this one was built with --no-default-features)".into(),
        }
        .into());
    }
    Ok(config)
}

fn open_store(config: &Config) -> anyhow::Result<Box<dyn CounterStore>> {
    if config.store.backend == "dynamodb" {
        return open_dynamodb(config);
    }
    Ok(Box::new(open_sqlite(config)?))
}

fn open_sqlite(config: &Config) -> anyhow::Result<SqliteStore> {
    let path = config.resolve(&config.store.path);
    Ok(SqliteStore::open(&path, config.store.synchronous == "full")?)
}

/// A store connection for `tally serve`'s reader pool: SQLite with a small page cache each
/// (several readers share one file, and their caches would otherwise grow with it).
fn open_reader(config: &Config) -> anyhow::Result<Box<dyn CounterStore>> {
    if config.store.backend == "dynamodb" {
        return open_dynamodb(config);
    }
    Ok(Box::new(open_sqlite(config)?.with_page_cache(2_048)?))
}

#[cfg(feature = "aws")]
fn open_dynamodb(config: &Config) -> anyhow::Result<Box<dyn CounterStore>> {
    Ok(Box::new(dynamodb_store(config)?))
}

#[cfg(not(feature = "aws"))]
fn open_dynamodb(_config: &Config) -> anyhow::Result<Box<dyn CounterStore>> {
    anyhow::bail!("store.backend = \"dynamodb\" needs a tally built with the `aws` feature")
}

#[cfg(feature = "aws")]
fn dynamodb_store(config: &Config) -> anyhow::Result<tally::store::dynamodb::DynamoStore> {
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

/// `tally init` for DynamoDB: creates the table and checks that it can be reached.
#[cfg(feature = "aws")]
fn init_dynamodb(config: &Config) -> anyhow::Result<()> {
    let store = dynamodb_store(config)?;
    store.create_table()?;
    store.health_check()?;
    println!("dynamodb table {} is ready (on-demand billing, TTL on `expires`)", config.store.table);
    Ok(())
}

#[cfg(not(feature = "aws"))]
fn init_dynamodb(_config: &Config) -> anyhow::Result<()> {
    anyhow::bail!("store.backend = \"dynamodb\" needs a tally built with the `aws` feature")
}

/// `tally init`: creates the store and checks that it can be reached.
fn init_store(config: &Config) -> anyhow::Result<()> {
    if config.store.backend == "dynamodb" {
        return init_dynamodb(config);
    }
    let store = open_store(config)?;
    store.max_hour()?;
    println!("sqlite store {} is ready", config.resolve(&config.store.path).display());
    Ok(())
}

/// One line on what a billed-per-request store was sent.
fn print_write_stats(w: &WriteStats, records: u64) {
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

fn run(cli: Cli) -> anyhow::Result<u8> {
    let quiet = cli.quiet;
    match cli.command {
        Command::Ingest { inputs, follow, json } => {
            let config = load_config(cli.config.as_deref())?;
            let (report, writes) = ingest_inputs(&config, inputs, follow, quiet || json)?;
            let last_run = ingest::last_run_path(&config.resolve(&config.ingest.quarantine));
            // A run that read nothing new leaves the last one that did on show.
            let read_something =
                report.files_read + report.objects_read + report.streams_read + report.files_failed > 0;
            if read_something {
                if let Err(e) = ingest::LastRun::of(&report).save(&last_run) {
                    tracing::warn!(file = %last_run.display(), error = %e, "cannot save the run report for `tally status`");
                }
            }
            if json {
                let mut value = serde_json::to_value(&report)?;
                if let (Some(w), Some(obj)) = (writes, value.as_object_mut()) {
                    obj.insert("store_writes".into(), serde_json::to_value(w)?);
                }
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                print_report(&report);
                if let Some(w) = &writes {
                    print_write_stats(w, report.received);
                }
            }
            Ok(if report.files_failed > 0 { exit::PARTIAL } else { 0 })
        }
        Command::Init => {
            let config = load_config(cli.config.as_deref())?;
            init_store(&config)?;
            Ok(0)
        }
        Command::Meter { tenant, period, json } => {
            let config = load_config(cli.config.as_deref())?;
            let store = open_store(&config)?;
            let period = period.unwrap_or_else(|| chrono::Utc::now().format("%Y-%m").to_string());
            let tenant = TenantId::new(&tenant).context("the tenant id is empty")?;
            let usage = store.period_usage(&tenant, &period)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&usage)?);
            } else {
                print_meter(&usage);
            }
            Ok(0)
        }
        Command::Status { json } => {
            let config = load_config(cli.config.as_deref())?;
            let totals = open_store(&config)?.totals()?;
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
                let skipped: u64 = totals.skipped.values().sum();
                println!(
                    "received {} = counted {} + duplicates {} + skipped {skipped}",
                    totals.received, totals.counted, totals.duplicates
                );
                for (reason, n) in &totals.skipped {
                    println!("  {reason:<22} {n}");
                }
                println!("quarantined {quarantined} records → {}", quarantine.display());
                if let Some(run) = &last_run {
                    println!("last ingest {}: {} files failed", run.finished_at, run.files_failed);
                    print_failed(&run.failed);
                }
            }
            Ok(0)
        }
        Command::Generate {
            out,
            tenants,
            records,
            month,
            seed,
            body_bytes,
            plain_fraction,
            duplicate_fraction,
            records_per_object,
            hours,
            json,
        } => {
            let spec = Spec {
                out,
                tenants,
                records,
                month,
                seed,
                body_bytes,
                plain_fraction,
                duplicate_fraction,
                records_per_object,
                hours,
                ..Spec::default()
            };
            let summary = generate::generate(&spec)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                println!(
                    "wrote {} records in {} files ({:.1} MB) under {}\nconfig: {}\ntruth:  {}",
                    summary.records,
                    summary.files,
                    summary.bytes as f64 / 1e6,
                    summary.logs.display(),
                    summary.config.display(),
                    summary.truth.display()
                );
            }
            Ok(0)
        }
        Command::Reconcile { period, cur, out, csv, cost_explorer, json } => {
            let config = load_config(cli.config.as_deref())?;
            let options = ReconcileOptions { csv, cost_explorer, quiet: quiet || json };
            let report = reconcile_period(&config, &period, &cur, &out, options)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print_reconcile(&report);
            }
            Ok(0)
        }
        Command::Sql { query, period, out, csv, parquet } => {
            let batches = tally::reconcile::sql::query(&out, &period, &query)?;
            if let Some(path) = parquet {
                let schema = batches.first().map(|b| b.schema()).context("the query returned no schema")?;
                let all = datafusion::arrow::compute::concat_batches(&schema, &batches)?;
                tally::tables::write_parquet(&path, &all)?;
                eprintln!("wrote {} rows to {}", all.num_rows(), path.display());
            } else if csv {
                tally::tables::write_csv(std::io::stdout().lock(), &batches)?;
            } else {
                println!("{}", tally::reconcile::sql::pretty(&batches)?);
            }
            Ok(0)
        }
        Command::GenerateCur { fixtures, out, month, lines, rows_per_file, drift, tag, seed, json } => {
            let out = out.unwrap_or_else(|| fixtures.join("cur"));
            let spec =
                CurSpec { tenant_tag: tag, drift, lines, rows_per_file, seed, ..CurSpec::new(fixtures, out, month) };
            let summary = tally::generate::cur::generate(&spec)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                println!(
                    "wrote {} lines per variant in {} files ({} Bedrock usage lines of {}, cost {})\nCUR 2.0: {}\nlegacy:  {}",
                    summary.lines, summary.files, summary.usage_lines, spec.month, summary.usage_cost, summary.cur2.display(), summary.legacy.display()
                );
            }
            Ok(0)
        }
        Command::Invoice { period, out, top, json } => {
            let config = load_config(cli.config.as_deref())?;
            let report = invoice_period(&config, &period, &out)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print_invoice(&report, top);
            }
            Ok(0)
        }
        Command::Schema { name } => {
            debug_assert_eq!(name, "invoice");
            println!("{}", serde_json::to_string_pretty(&invoice::export::json_schema())?);
            Ok(0)
        }
        Command::Demo { out, tenants, records, json } => demo(&out, tenants, records, json, quiet),
        Command::Serve { listen, as_of } => {
            let mut config = load_config(cli.config.as_deref())?;
            if let Some(l) = listen {
                config.serve.listen = l;
                config.serve.validate().map_err(|(f, m)| anyhow::anyhow!("--listen: {m} ({f})"))?;
            }
            let as_of = match as_of {
                None => None,
                Some(t) => Some(
                    tally::ids::parse_timestamp(&t)
                        .with_context(|| format!("--as-of {t:?}: not an RFC 3339 time such as 2025-11-15T12:00:00Z"))?,
                ),
            };
            let shared = Arc::new(config.clone());
            let options = tally::serve::Options {
                open: Arc::new(move || open_reader(&shared)),
                as_of,
                webhook_backoff: Duration::from_millis(
                    std::env::var("TALLY_WEBHOOK_BACKOFF_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(500),
                ),
                backend: config.store.backend.clone(),
            };
            let setup = config.serve_setup().map_err(|(f, m)| anyhow::anyhow!("config field `{f}`: {m}"))?;
            let listen = &config.serve.listen;
            let listener = std::net::TcpListener::bind(listen)
                .map_err(|e| anyhow::anyhow!("cannot listen on {listen} (serve.listen): {e}"))?;
            // One line on stdout when bound, for scripts and tests that chose port 0.
            println!("listening on http://{}", listener.local_addr()?);
            tally::serve::run(setup, options, listener, tally::serve::shutdown_signal())?;
            Ok(0)
        }
        Command::Key(KeyCommand::New { tenant, admin, name }) => {
            let key = tally::serve::auth::new_key()?;
            let who = match (&tenant, admin) {
                (Some(t), _) => format!("tenant = {}", toml_string(t)),
                (None, _) => "admin = true".to_string(),
            };
            let label = name.map(|n| format!("name = {}\n", toml_string(&n))).unwrap_or_default();
            println!("key: {key}\n\n# tally.toml (the key itself is not stored):\n[[serve.keys]]\nhash = \"{}\"\n{who}\n{label}", tally::serve::auth::hash_text(&key));
            Ok(0)
        }
        Command::Key(KeyCommand::Hash) => {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)?;
            let key = line.trim();
            anyhow::ensure!(!key.is_empty(), "no key on stdin");
            println!("{}", tally::serve::auth::hash_text(key));
            Ok(0)
        }
    }
}

/// Limits glibc's malloc to one arena, before ingest starts its threads. Every piece a worker
/// allocates is freed by the committer; with glibc's default of an arena per thread the freed
/// memory stays spread over the workers' arenas, each holding its own slack. With one arena
/// it is reused wherever it was freed: the benchmark ingest's peak RSS is about 5 MB lower, at
/// no measured CPU cost (README, "Ingest throughput"). The readers allocate little per record
/// (malloc and free are 0.1% of their samples), so one arena's lock is not a queue even with
/// many of them. `MALLOC_ARENA_MAX` in the environment still wins when set.
fn one_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only tunes the allocator; it takes effect for arenas created later.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn ingest_inputs(
    config: &Config,
    inputs: Vec<Input>,
    follow: bool,
    quiet: bool,
) -> anyhow::Result<(RunReport, Option<WriteStats>)> {
    one_malloc_arena();
    let pipeline = config.pipeline()?;
    let mut inputs = Inputs::new(inputs, &config.sources)?;
    let settings = config.ingest_settings(follow);
    let mut store = open_store(config)?;
    let mut quarantine =
        Quarantine::new(config.resolve(&config.ingest.quarantine)).with_limit(config.ingest.quarantine_max_bytes);
    let shutdown = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, shutdown.clone()).context("cannot install signal handler")?;
    }
    let progress = Bar::new(quiet || follow);
    let report = if follow {
        let poll = Duration::from_secs_f64(config.ingest.poll_seconds);
        ingest::follow(&mut inputs, &mut *store, &pipeline, &settings, &mut quarantine, &shutdown, poll, &progress)?
    } else {
        ingest::run_pass(&mut inputs, &mut *store, &pipeline, &settings, &mut quarantine, &shutdown, &progress)?
    };
    Ok((report, store.write_stats()))
}

/// An indicatif bar over input bytes, drawn only on a terminal.
struct Bar(Option<ProgressBar>);

impl Bar {
    fn new(hidden: bool) -> Bar {
        if hidden || !std::io::stderr().is_terminal() {
            return Bar(None);
        }
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} ({bytes_per_sec}) {msg}",
            )
            .expect("valid template"),
        );
        Bar(Some(bar))
    }
}

impl Progress for Bar {
    fn start(&self, total: u64) {
        if let Some(b) = &self.0 {
            b.set_length(total);
            b.set_position(0);
        }
    }
    fn update(&self, bytes: u64, records: u64) {
        if let Some(b) = &self.0 {
            b.set_position(bytes);
            b.set_message(format!("{records} records"));
        }
    }
    fn finish(&self) {
        if let Some(b) = &self.0 {
            b.finish_and_clear();
        }
    }
}

fn print_report(r: &RunReport) {
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
    print_failed(&r.errors);
    for p in &r.passed_over {
        println!("passed over: {p}");
    }
}

/// The failed inputs shown on the terminal; all of them are in `--json` and `tally status --json`.
const FAILED_SHOWN: usize = 10;

fn print_failed(failed: &[String]) {
    for e in failed.iter().take(FAILED_SHOWN) {
        println!("failed: {e}");
    }
    if failed.len() > FAILED_SHOWN {
        println!("… and {} more failed inputs (tally status --json lists them all)", failed.len() - FAILED_SHOWN);
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

fn print_meter(u: &PeriodUsage) {
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
}

fn demo(out: &Path, tenants: usize, records: u64, json: bool, quiet: bool) -> anyhow::Result<u8> {
    let spec = Spec { out: out.to_path_buf(), tenants, records, ..Spec::default() };
    let summary = generate::generate(&spec)?;
    let mut config_text = std::fs::read_to_string(&summary.config)
        .with_context(|| format!("cannot read {}", summary.config.display()))?;
    config_text.push_str(&tally::invoice::plan::demo_plans(tenants));
    // An admin key for `tally serve` on the demo counters, printed below (only its hash is kept).
    let admin_key = tally::serve::auth::new_key()?;
    config_text.push_str(&format!(
        "\n[[serve.keys]]\nhash = \"{}\"\nadmin = true\nname = \"demo-admin\"\n",
        tally::serve::auth::hash_text(&admin_key)
    ));
    std::fs::write(&summary.config, config_text)
        .with_context(|| format!("cannot write {}", summary.config.display()))?;
    let config = Config::load(&summary.config)?;
    let invoices = out.join(&spec.month).join(tally::tables::INVOICES);
    if invoices.exists() {
        std::fs::remove_dir_all(&invoices).with_context(|| format!("cannot reset {}", invoices.display()))?;
    }
    for f in [config.resolve(&config.store.path), config.resolve(&config.ingest.quarantine)] {
        for suffix in ["", "-wal", "-shm"] {
            let p = PathBuf::from(format!("{}{suffix}", f.display()));
            if p.exists() {
                std::fs::remove_file(&p).with_context(|| format!("cannot reset {}", p.display()))?;
            }
        }
    }
    let (report, _) = ingest_inputs(&config, vec![Input::Path(summary.logs.clone())], false, quiet || json)?;
    // Before reconcile the period can only be invoiced provisionally (list-price estimates).
    let provisional = invoice_period(&config, &spec.month, out)?;
    // The nightly reconcile on a CUR generated to bill the same logs, then the final invoices.
    let cur = tally::generate::cur::generate(&CurSpec::new(out.to_path_buf(), out.join("cur"), spec.month.clone()))?;
    let reconciled = reconcile_period(
        &config,
        &spec.month,
        &cur.cur2.to_string_lossy(),
        out,
        ReconcileOptions { quiet: quiet || json, ..Default::default() },
    )?;
    let invoiced = invoice_period(&config, &spec.month, out)?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"ingest": report, "period": spec.month, "reconcile": reconciled, "invoice": invoiced})
            )?
        );
        return Ok(0);
    }
    println!(
        "tally demo · {} records for {} tenants in {} (generated under {})\n",
        records,
        spec.tenants,
        spec.month,
        out.display()
    );
    print_report(&report);
    println!(
        "\nprovisional invoices before reconcile: {} (charge {}, estimated cost {})",
        provisional.written,
        provisional.charge,
        provisional.cost.round_dp(4)
    );
    println!("\n— reconcile against a generated CUR ({}) —\n", cur.cur2.display());
    print_reconcile(&reconciled);
    println!("\n— invoices —\n");
    print_invoice(&invoiced, 50);
    println!(
        "\ncounters: {}\nquarantine: {}\ntry: tally --config {} meter tenant-0000 --period {}\n     tally sql --out {} --period {} \"SELECT tenant, sum(amount) FROM invoice_lines GROUP BY tenant ORDER BY 2 DESC\"\n     tally schema invoice\n     tally --config {} serve --as-of {}-28T12:00:00Z   # then open http://127.0.0.1:8080/#key={admin_key}",
        config.resolve(&config.store.path).display(),
        config.resolve(&config.ingest.quarantine).display(),
        summary.config.display(),
        spec.month,
        out.display(),
        spec.month,
        summary.config.display(),
        spec.month
    );
    Ok(0)
}

#[derive(Default)]
struct ReconcileOptions {
    csv: bool,
    cost_explorer: bool,
    quiet: bool,
}

fn reconcile_period(
    config: &Config,
    period: &str,
    cur: &str,
    out: &Path,
    o: ReconcileOptions,
) -> anyhow::Result<reconcile::Report> {
    let cur = tally::cur::load::CurInput::parse(cur, &config.sources)?;
    let pipeline = config.pipeline()?;
    let store = open_store(config)?;
    let request = reconcile::Request {
        period: period.to_string(),
        cur,
        out: out.to_path_buf(),
        csv: o.csv,
        cost_explorer: o.cost_explorer,
    };
    Ok(reconcile::run(&request, &config.reconcile, &pipeline, &*store, &Bar::new(o.quiet))?)
}

fn invoice_period(config: &Config, period: &str, out: &Path) -> anyhow::Result<invoice::Report> {
    let store = open_store(config)?;
    let plans = config.plans().map_err(|(field, message)| invoice::InvoiceError::Plans { field, message })?;
    Ok(invoice::run(&invoice::Request { period: period.to_string(), out: out.to_path_buf() }, &plans, &*store)?)
}

fn print_invoice(r: &invoice::Report, top: usize) {
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

fn print_reconcile(r: &reconcile::Report) {
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
