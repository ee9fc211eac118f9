//! The command line's grammar: the global flags, the subcommands and their flags. The doc
//! comments are the `--help` text.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use tally::config::Config;
use tally::source::Input;

#[derive(Parser)]
#[command(
    name = "tally",
    version,
    about = "Meter and bill generative-AI usage per tenant, from Amazon Bedrock's own records.",
    long_about = "Meter and bill generative-AI usage per tenant, from Amazon Bedrock's own records.\n\n\
    Ingest model-invocation logs into per-tenant counters (exactly once), and read them back.\n\
    Start with `tally demo`, which runs the pipeline on generated fixtures."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// The flags every subcommand takes: the context each command runs in.
#[derive(Args)]
pub struct Global {
    /// The config file. Without it, `tally.toml` in the current folder is used if present,
    /// otherwise built-in defaults.
    #[arg(long, global = true, env = "TALLY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, global = true, value_parser = ["text", "json"], default_value = "text")]
    pub log_format: String,
    /// No progress bar.
    #[arg(long, short, global = true)]
    pub quiet: bool,
}

impl Global {
    /// The config, from `--config` or where [`crate::open::config`] looks without it.
    pub fn config(&self) -> anyhow::Result<Config> {
        crate::open::config(self.config.as_deref())
    }
}

#[derive(Subcommand)]
pub enum Command {
    /// Count invocation-log records into the counters: files, directory trees, .json.gz.
    ///
    /// Re-running over the same inputs changes nothing; grown files continue where they
    /// stopped. Bad records go to the quarantine file with file, line and reason. Prints
    /// received = counted + duplicates + skipped, and fails (exit 3) if that does not hold.
    Ingest(IngestArgs),
    /// Create the counter store: the DynamoDB table (on-demand billing, TTL on) or the SQLite file.
    ///
    /// Safe to run again. For DynamoDB the AWS credentials and region come from the standard
    /// chain (environment, profile, role); `[store] endpoint_url` points at a local endpoint.
    Init,
    /// Show one tenant's usage in a month, by day and by resource.
    Meter(MeterArgs),
    /// Show lifetime ingest totals: received, counted, duplicates, skipped by reason.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Generate a realistic month of invocation logs, a matching tally.toml and the truth.
    Generate(GenerateArgs),
    /// Reconcile a billing period: allocate the CUR's Bedrock cost to tenants, exactly.
    ///
    /// Reads the period's CUR 2.0 or legacy CUR Parquet under --cur and the period's counters,
    /// and writes allocation, drift, adjustments, summary, cur and usage under
    /// <out>/<period>/ (replacing that folder as a whole). Fails with exit 5 if
    /// allocated + unallocated != CUR Bedrock usage cost.
    Reconcile(ReconcileArgs),
    /// Run SQL over a reconciled period: tables cur, usage, allocation, drift, adjustments, summary.
    Sql(SqlArgs),
    /// Invoice a billing period: each tenant's plan ([plans], [tenants]) applied to its usage.
    ///
    /// `provisional` (counters and list-price estimates; rewritten by each run) until the
    /// period is reconciled, `final` (the reconciled cost) after. A final invoice is never
    /// rewritten: when what it stands on changes (a restated CUR, late records), the next run
    /// writes version n+1 with the delta lines. Writes <out>/<period>/invoices/: one JSON per
    /// tenant and version, invoice_lines.csv (+ .parquet for `tally sql`) and margin.csv.
    Invoice(InvoiceArgs),
    /// Print the JSON Schema of an export (`invoice`: the documents `tally invoice` writes).
    Schema {
        #[arg(value_parser = ["invoice"])]
        name: String,
    },
    /// Generate CUR Parquet (CUR 2.0 and legacy) that bills the logs `tally generate` wrote.
    GenerateCur(GenerateCurArgs),
    /// Serve live meters over HTTP: usage, quota, tenants, /metrics, a dashboard at /.
    ///
    /// Reads the counters (either backend) while `tally ingest --follow` writes them. Callers
    /// send a key from [[serve.keys]] as `Authorization: Bearer <key>`; a tenant key reads only
    /// its own tenant. Checks alert thresholds in the background and POSTs crossings to
    /// [serve.alerts] webhook. Stops on SIGTERM or Ctrl-C (exit 0).
    Serve(ServeArgs),
    /// Make or hash a bearer key for [[serve.keys]].
    #[command(subcommand)]
    Key(KeyCommand),
    /// Run the pipeline on generated fixtures with no services, and print a summary.
    Demo(DemoArgs),
}

#[derive(Args)]
pub struct IngestArgs {
    /// What to read: files or directories; with a build that has the `aws` feature also
    /// s3://bucket/prefix (Bedrock's S3 delivery) and cloudwatch://log-group (every stream;
    /// cloudwatch://log-group?stream=name for one).
    #[arg(required = true, value_name = "INPUT", value_parser = Input::parse)]
    pub inputs: Vec<Input>,
    /// Keep polling for new data until SIGTERM or Ctrl-C (then flush and exit 0).
    #[arg(long)]
    pub follow: bool,
    /// Print the run report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct MeterArgs {
    pub tenant: String,
    /// The month, YYYY-MM (default: the current UTC month).
    #[arg(long)]
    pub period: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct GenerateArgs {
    /// Output folder.
    #[arg(long, default_value = "out/fixtures")]
    pub out: PathBuf,
    #[arg(long, default_value_t = 20)]
    pub tenants: usize,
    #[arg(long, default_value_t = 10_000)]
    pub records: u64,
    /// YYYY-MM.
    #[arg(long, default_value = "2025-11")]
    pub month: String,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Mean prompt + completion text per record, in bytes.
    #[arg(long, default_value_t = 400)]
    pub body_bytes: usize,
    /// Share of records delivered as plain NDJSON instead of .json.gz.
    #[arg(long, default_value_t = 0.1)]
    pub plain_fraction: f64,
    /// Share of records delivered twice.
    #[arg(long, default_value_t = 0.01)]
    pub duplicate_fraction: f64,
    /// Records per .json.gz object.
    #[arg(long, default_value_t = 2_000)]
    pub records_per_object: usize,
    /// Spread the records over the month's first N hours instead of the whole month.
    #[arg(long, value_name = "N")]
    pub hours: Option<u64>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct ReconcileArgs {
    /// The billing period, YYYY-MM.
    #[arg(long)]
    pub period: String,
    /// The CUR: a folder (a data export or legacy report), one Parquet file, or
    /// s3://bucket/prefix (a build with the `aws` feature; reached as [sources] says).
    #[arg(long)]
    pub cur: String,
    /// Outputs go to <out>/<period>/.
    #[arg(long, default_value = "out")]
    pub out: PathBuf,
    /// Also write each table as CSV.
    #[arg(long)]
    pub csv: bool,
    /// Cross-check against Cost Explorer (GetCostAndUsage grouped by the tenant tag): per-tag
    /// differences in the cost_explorer table. Needs the `aws` feature.
    #[arg(long)]
    pub cost_explorer: bool,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct SqlArgs {
    /// The query, e.g. "SELECT tenant, sum(cost) FROM allocation GROUP BY tenant".
    pub query: String,
    /// The billing period, YYYY-MM (reconciled before).
    #[arg(long)]
    pub period: String,
    /// The folder reconcile wrote to.
    #[arg(long, default_value = "out")]
    pub out: PathBuf,
    /// Print CSV instead of a table.
    #[arg(long)]
    pub csv: bool,
    /// Write the result to this Parquet file instead of printing it.
    #[arg(long)]
    pub parquet: Option<PathBuf>,
}

#[derive(Args)]
pub struct InvoiceArgs {
    /// The billing period, YYYY-MM.
    #[arg(long)]
    pub period: String,
    /// The folder reconcile writes to.
    #[arg(long, default_value = "out")]
    pub out: PathBuf,
    /// Rows of the margin table to print (the costliest tenants); margin.csv has them all.
    #[arg(long, default_value_t = 50)]
    pub top: usize,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct GenerateCurArgs {
    /// The folder `tally generate` wrote (truth.json, tally.toml).
    #[arg(long, default_value = "out/fixtures")]
    pub fixtures: PathBuf,
    /// Output folder (default: <fixtures>/cur); CUR 2.0 under cur2/, legacy under legacy/.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// YYYY-MM, as given to `tally generate`.
    #[arg(long, default_value = "2025-11")]
    pub month: String,
    /// About this many usage lines (hourly lines split across usage accounts); 0 = natural.
    #[arg(long, default_value_t = 0)]
    pub lines: u64,
    /// Lines per Parquet file.
    #[arg(long, default_value_t = 250_000)]
    pub rows_per_file: usize,
    /// How much the shared profile is billed above list price.
    #[arg(long, default_value = "0.3")]
    pub drift: rust_decimal::Decimal,
    /// The tenant tag's name.
    #[arg(long, default_value = "tenant")]
    pub tag: String,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on (default: [serve] listen, 127.0.0.1:8080).
    #[arg(long)]
    pub listen: Option<String>,
    /// Answer as if the clock read this RFC 3339 time: which month and day quotas and
    /// alerts count (for replaying a past period).
    #[arg(long, value_name = "TIME")]
    pub as_of: Option<String>,
}

#[derive(Subcommand)]
pub enum KeyCommand {
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

#[derive(Args)]
pub struct DemoArgs {
    /// Where the fixtures, counters and outputs go.
    #[arg(long, default_value = "out/demo")]
    pub out: PathBuf,
    #[arg(long, default_value_t = 12)]
    pub tenants: usize,
    #[arg(long, default_value_t = 20_000)]
    pub records: u64,
    #[arg(long)]
    pub json: bool,
}
