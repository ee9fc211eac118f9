//! `tally.toml`: the one config file. Plain data with a doc comment on every field; validation
//! does no I/O beyond reading the file itself, and every error names the field.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::ingest::{self, IngestConfig, Pipeline, Settings};
use crate::pricing::Catalog;
use crate::pricing::PricingConfig;
use crate::serve::config::is_http_url;
use crate::source::SourcesConfig;
use crate::store::StoreConfig;
use crate::tenant::{Resolver, Rule, TenancyConfig};

/// A config file that could not be used, naming the file and the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {error}")]
    Read { path: PathBuf, error: std::io::Error },
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config {path}: field `{field}`: {message}")]
    Invalid { path: PathBuf, field: String, message: String },
}

/// The highest `ingest.max_token_count` accepted: counts are summed in 64 bits, and a ceiling
/// of 10⁹ tokens per record leaves room for 10¹⁰ records in one counter.
pub const MAX_TOKEN_CEILING: u64 = 1_000_000_000;

/// The largest config file read (about 20,000 tenants with their plans and profiles).
pub const MAX_CONFIG_BYTES: usize = 2 << 20;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the counters live.
    #[serde(default)]
    pub store: StoreConfig,
    /// How log files are read.
    #[serde(default)]
    pub ingest: IngestConfig,
    /// How a record's tenant is found.
    #[serde(default)]
    pub tenancy: TenancyConfig,
    /// List prices used for the estimated cost.
    #[serde(default)]
    pub pricing: PricingConfig,
    /// Nightly reconcile: the tenant tag and drift thresholds.
    #[serde(default)]
    pub reconcile: crate::reconcile::ReconcileConfig,
    /// How the AWS sources (`s3://…`, `cloudwatch://…` inputs) are reached and listed.
    #[serde(default)]
    pub sources: SourcesConfig,
    /// Plans by name: `[plans.<name>]` with a `kind` and its prices (see `invoice::plan`).
    #[serde(default)]
    pub plans: BTreeMap<String, crate::invoice::plan::PlanConfig>,
    /// Tenants by id: `[tenants.<id>]` with their `plan` (and `seats` for add-on plans).
    #[serde(default)]
    pub tenants: BTreeMap<String, crate::invoice::plan::TenantConfig>,
    /// `tally serve`: where it listens, its bearer keys, its read cache and its alerts.
    #[serde(default)]
    pub serve: crate::serve::config::ServeConfig,
    /// The folder relative paths are resolved against (the config file's folder).
    #[serde(skip)]
    pub base_dir: PathBuf,
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read { path: path.to_owned(), error })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Config::from_toml(&text, path, base)
    }

    /// Parses and validates config text; `path` is only used in messages.
    pub fn from_toml(text: &str, path: &Path, base_dir: PathBuf) -> Result<Config, ConfigError> {
        if text.len() > MAX_CONFIG_BYTES {
            // Parsing TOML takes about fifty times the text's size in memory.
            let message = format!("is {} bytes, above the limit of {MAX_CONFIG_BYTES}", text.len());
            return Err(ConfigError::Parse { path: path.to_owned(), message });
        }
        let mut config: Config =
            toml::from_str(text).map_err(|e| ConfigError::Parse { path: path.to_owned(), message: e.to_string() })?;
        config.base_dir = base_dir;
        config.validate().map_err(|(field, message)| ConfigError::Invalid { path: path.to_owned(), field, message })?;
        Ok(config)
    }

    /// A config with every default, relative to `base_dir`.
    pub fn defaults_in(base_dir: PathBuf) -> Config {
        Config { base_dir, ..Config::default() }
    }

    /// A path from the config, resolved against the config file's folder.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    fn validate(&self) -> Result<(), (String, String)> {
        let bad = |f: &str, m: &str| Err((f.to_string(), m.to_string()));
        if let Err(why) = self.store.parse_backend() {
            return Err(("store.backend".into(), why));
        }
        self.validate_dynamodb()?;
        self.validate_sources()?;
        if !matches!(self.store.synchronous.as_str(), "normal" | "full") {
            return bad("store.synchronous", "must be \"normal\" or \"full\"");
        }
        let i = &self.ingest;
        if i.batch_records == Some(0) {
            return bad("ingest.batch_records", "must be at least 1");
        }
        if i.commit_records == 0 {
            return bad("ingest.commit_records", "must be at least 1");
        }
        if !(i.commit_seconds > 0.0 && i.commit_seconds <= 3_600.0) {
            return bad("ingest.commit_seconds", "must be above 0 and at most 3600");
        }
        if i.dedup_window_days == 0 {
            return bad("ingest.dedup_window_days", "must be at least 1");
        }
        if i.max_record_bytes < 1024 {
            return bad("ingest.max_record_bytes", "must be at least 1024");
        }
        if !(1..=MAX_TOKEN_CEILING).contains(&i.max_token_count) {
            return Err(("ingest.max_token_count".into(), format!("must be from 1 to {MAX_TOKEN_CEILING}")));
        }
        if !(0..=19).contains(&i.reader_nice) {
            return bad("ingest.reader_nice", "must be from 0 to 19");
        }
        if !(i.poll_seconds > 0.0 && i.poll_seconds <= 86_400.0) {
            return bad("ingest.poll_seconds", "must be above 0 and at most 86400");
        }
        let t = &self.tenancy;
        if t.order.is_empty() {
            return bad("tenancy.order", "must list at least one rule");
        }
        if t.metadata_key.trim().is_empty() {
            return bad("tenancy.metadata_key", "must not be empty");
        }
        if let Some(p) = &t.identity_pattern {
            match regex::Regex::new(p) {
                Err(e) => return Err(("tenancy.identity_pattern".into(), format!("not a valid regex: {e}"))),
                Ok(re) if !re.capture_names().any(|n| n == Some("tenant")) => {
                    return bad("tenancy.identity_pattern", "needs a named capture group `(?P<tenant>…)`")
                }
                Ok(_) => {}
            }
        } else if t.order.contains(&Rule::Identity) && self.tenancy_order_is_explicit_identity() {
            return bad("tenancy.identity_pattern", "the `identity` rule is listed but no pattern is set");
        }
        let mut accounts = std::collections::HashMap::new();
        for (n, a) in t.accounts.iter().enumerate() {
            let field = |f: &str| format!("tenancy.accounts[{n}].{f}");
            let id = a.account.trim();
            if id.len() != 12 || !id.bytes().all(|b| b.is_ascii_digit()) {
                return Err((field("account"), format!("{:?} is not a 12-digit AWS account id", a.account)));
            }
            if let Some(first) = accounts.insert(id, n) {
                return Err((
                    field("account"),
                    format!("{id} is listed twice (also tenancy.accounts[{first}]): one account has one tenant"),
                ));
            }
            if a.tenant.trim().is_empty() {
                return Err((field("tenant"), "must not be empty".into()));
            }
            if let Some(why) = crate::ids::tenant_id_problem(&a.tenant) {
                return Err((field("tenant"), why));
            }
        }
        let mut profiles = std::collections::HashMap::new();
        for (n, p) in t.profiles.iter().enumerate() {
            let field = |f: &str| format!("tenancy.profiles[{n}].{f}");
            if p.profile.trim().is_empty() {
                return Err((field("profile"), "must not be empty".into()));
            }
            if let Some(first) = profiles.insert(p.profile.trim(), n) {
                return Err((
                    field("profile"),
                    format!(
                        "{:?} is registered twice (also tenancy.profiles[{first}]): one profile has one owner",
                        p.profile.trim()
                    ),
                ));
            }
            if let Some(why) = p.tenant.as_deref().and_then(crate::ids::tenant_id_problem) {
                return Err((field("tenant"), why));
            }
            match (&p.tenant, p.shared) {
                (Some(_), true) | (None, false) => {
                    return Err((field("tenant"), "set either `tenant = \"…\"` or `shared = true`".into()))
                }
                (Some(tenant), false) if tenant.trim().is_empty() => {
                    return Err((field("tenant"), "must not be empty".into()))
                }
                _ => {}
            }
            if let Some(tier) = &p.tier {
                if !matches!(tier.as_str(), "on_demand" | "batch") {
                    return Err((field("tier"), "must be \"on_demand\" or \"batch\"".into()));
                }
            }
        }
        self.reconcile.validate()?;
        self.plans()?;
        self.serve.validate()?;
        Ok(())
    }

    /// The pure parts of ingest: the tenant resolver, and the price catalogs named in
    /// `[pricing]` (read here), merged in order; none named means the built-in catalog. The
    /// built-in billing names are kept whatever the catalogs.
    pub fn pipeline(&self) -> anyhow::Result<Pipeline> {
        let catalog = if self.pricing.catalogs.is_empty() {
            Catalog::builtin()
        } else {
            let mut merged = Catalog::default();
            for (n, p) in self.pricing.catalogs.iter().enumerate() {
                let path = self.resolve(p);
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    anyhow::anyhow!("config field `pricing.catalogs[{n}]`: cannot read {}: {e}", path.display())
                })?;
                let name = path.display().to_string();
                let c = if name.ends_with(".json") {
                    Catalog::from_litellm_json(&text, &name)?
                } else {
                    Catalog::from_toml(&text, &name)?
                };
                merged.merge(c);
            }
            // Billing names are facts about AWS, not prices: the built-in ones stay known.
            merged.merge_billing_names(&Catalog::builtin());
            merged
        };
        Ok(Pipeline { resolver: Resolver::new(&self.tenancy), catalog })
    }

    /// How ingest runs: `[ingest]` with the batch size the store wants, never reading tally's
    /// own files (the store, the quarantine and its last-run report) as input.
    pub fn ingest_settings(&self, follow: bool) -> Settings {
        let quarantine = self.resolve(&self.ingest.quarantine);
        let exclude = vec![self.resolve(&self.store.path), quarantine.clone(), ingest::last_run_path(&quarantine)];
        Settings::new(&self.ingest, self.ingest.batch_records_for(self.store.kind()), follow, exclude)
    }

    /// What `tally serve` runs on: `[serve]`, the plans, the alert ledger's path resolved.
    pub fn serve_setup(&self) -> Result<crate::serve::Setup, (String, String)> {
        let ledger = self.resolve(&self.serve.alerts.ledger);
        Ok(crate::serve::Setup { serve: self.serve.clone(), plans: self.plans()?, ledger })
    }

    /// The plans and tenants, checked; the error names the field.
    pub fn plans(&self) -> Result<crate::invoice::plan::Plans, (String, String)> {
        crate::invoice::plan::build(&self.plans, &self.tenants)
    }

    fn validate_dynamodb(&self) -> Result<(), (String, String)> {
        let st = &self.store;
        let bad = |f: &str, m: &str| Err((f.to_string(), m.to_string()));
        let name_ok = (3..=255).contains(&st.table.len())
            && st.table.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if !name_ok {
            return bad("store.table", "must be 3-255 characters of a-z, A-Z, 0-9, `_`, `-`, `.`");
        }
        if st.region.as_deref().is_some_and(|r| r.trim().is_empty()) {
            return bad("store.region", "must not be empty (leave it out to use the AWS chain's region)");
        }
        if st.endpoint_url.as_deref().is_some_and(|u| !is_http_url(u)) {
            return bad("store.endpoint_url", "must be an http:// or https:// URL");
        }
        if !(1..=1000).contains(&st.shards) {
            return bad("store.shards", "must be between 1 and 1000");
        }
        if !(0.1..=3600.0).contains(&st.lease_seconds) {
            return bad("store.lease_seconds", "must be between 0.1 and 3600");
        }
        Ok(())
    }

    fn validate_sources(&self) -> Result<(), (String, String)> {
        let src = &self.sources;
        let bad = |f: &str, m: &str| Err((f.to_string(), m.to_string()));
        if src.region.as_deref().is_some_and(|r| r.trim().is_empty()) {
            return bad("sources.region", "must not be empty (leave it out to use the AWS chain's region)");
        }
        if src.endpoint_url.as_deref().is_some_and(|u| !is_http_url(u)) {
            return bad("sources.endpoint_url", "must be an http:// or https:// URL");
        }
        if !(1..=24 * 35).contains(&src.s3_lookback_hours) {
            return bad("sources.s3_lookback_hours", "must be between 1 and 840 (35 days)");
        }
        Ok(())
    }

    /// The default order lists `identity`; only complain when the user wrote the order.
    fn tenancy_order_is_explicit_identity(&self) -> bool {
        self.tenancy.order != TenancyConfig::default_order()
    }
}

/// The field a config text's validation error names (panics if the text is valid).
#[cfg(test)]
pub(crate) fn invalid_field(text: &str) -> String {
    match Config::from_toml(text, Path::new("tally.toml"), PathBuf::new()) {
        Err(ConfigError::Invalid { field, .. }) => field,
        other => panic!("expected an invalid field, got {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, Path::new("tally.toml"), PathBuf::new())
    }

    use super::invalid_field as field_of;

    #[test]
    fn errors_name_the_field() {
        assert_eq!(field_of("[ingest]\nbatch_records = 0"), "ingest.batch_records");
        assert_eq!(field_of("[ingest]\nreader_nice = 20"), "ingest.reader_nice");
        assert_eq!(field_of("[ingest]\nreader_nice = -5"), "ingest.reader_nice");
        assert_eq!(field_of("[ingest]\ncommit_records = 0"), "ingest.commit_records");
        assert_eq!(field_of("[ingest]\ncommit_seconds = 0"), "ingest.commit_seconds");
        assert_eq!(field_of("[ingest]\ncommit_seconds = 7200"), "ingest.commit_seconds");
        assert_eq!(field_of("[tenancy]\nidentity_pattern = 'role/(.*)'"), "tenancy.identity_pattern");
        assert_eq!(field_of("[[tenancy.profiles]]\nprofile = 'p'\n"), "tenancy.profiles[0].tenant");
        assert_eq!(field_of("[[tenancy.accounts]]\naccount = '12345'\ntenant = 'a'"), "tenancy.accounts[0].account");
        assert_eq!(
            field_of("[[tenancy.accounts]]\naccount = '111122223333'\ntenant = 'a'\n[[tenancy.accounts]]\naccount = '111122223333'\ntenant = 'b'"),
            "tenancy.accounts[1].account"
        );
        assert_eq!(
            field_of("[[tenancy.accounts]]\naccount = '111122223333'\ntenant = ' '"),
            "tenancy.accounts[0].tenant"
        );
        assert_eq!(
            field_of("[[tenancy.profiles]]\nprofile = 'p'\ntenant = 'a'\ntier = 'spot'"),
            "tenancy.profiles[0].tier"
        );
        assert_eq!(field_of("[store]\nbackend = 'postgres'"), "store.backend");
        assert_eq!(field_of("[store]\nbackend = 'dynamodb'\ntable = 'a b'"), "store.table");
        assert_eq!(field_of("[store]\nbackend = 'dynamodb'\nshards = 0"), "store.shards");
        assert_eq!(field_of("[store]\nbackend = 'dynamodb'\nendpoint_url = 'localhost:5000'"), "store.endpoint_url");
        assert_eq!(field_of("[store]\nbackend = 'dynamodb'\nregion = ''"), "store.region");
        assert_eq!(field_of("[store]\nbackend = 'dynamodb'\nlease_seconds = 0"), "store.lease_seconds");
        let d = load("[store]\nbackend = 'dynamodb'\ntable = 'tally-prod'\nregion = 'eu-west-1'\nshards = 4").unwrap();
        assert_eq!(
            (d.store.table.as_str(), d.store.region.as_deref(), d.store.shards),
            ("tally-prod", Some("eu-west-1"), 4)
        );
        assert_eq!(field_of("[sources]\nendpoint_url = '127.0.0.1:5000'"), "sources.endpoint_url");
        assert_eq!(field_of("[sources]\ns3_lookback_hours = 0"), "sources.s3_lookback_hours");
        assert_eq!(field_of("[sources]\nregion = ' '"), "sources.region");
        let unknown = load("[ingest]\nbatch_record = 5").unwrap_err().to_string();
        assert!(unknown.contains("batch_record"), "{unknown}");
    }

    /// Found with the config fuzz target (2026-11-23): a huge `poll_seconds` validated, then
    /// `Duration::from_secs_f64` panicked in `tally ingest --follow`.
    #[test]
    fn a_poll_interval_beyond_a_duration_is_refused() {
        assert_eq!(field_of("[ingest]\npoll_seconds = 1e20\n"), "ingest.poll_seconds");
        assert_eq!(field_of("[ingest]\npoll_seconds = 86400.5"), "ingest.poll_seconds");
        assert_eq!(load("[ingest]\npoll_seconds = 86400.0").unwrap().ingest.poll_seconds, 86_400.0);
    }

    #[test]
    fn the_sample_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/tally.toml");
        let config = Config::load(&path).unwrap();
        assert!(!config.tenancy.profiles.is_empty());
        assert!(config.tenancy.identity_pattern.is_some());
    }
}
