//! `[serve]` in tally.toml: the listen address, bearer keys (stored as hashes), the read cache
//! and the alert webhook. Every error names the field.

use std::path::PathBuf;

use serde::Deserialize;

use crate::ids::TenantId;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// Address and port to listen on.
    #[serde(default = "ServeConfig::default_listen")]
    pub listen: String,
    /// How long a tenant's counters, once read, answer `/v1/quota` and `/v1/usage` before the
    /// store is read again, in milliseconds. An answer is never older than this (plus ingest lag).
    #[serde(default = "ServeConfig::default_cache_ms")]
    pub cache_ms: u64,
    /// Store connections reading in parallel.
    #[serde(default = "ServeConfig::default_readers")]
    pub readers: usize,
    /// Bearer keys: `[[serve.keys]]` with `hash` and either `tenant` or `admin = true`.
    #[serde(default)]
    pub keys: Vec<KeyConfig>,
    /// Budget and unusual-usage alerts.
    #[serde(default)]
    pub alerts: AlertsConfig,
    /// A connection that has not sent a whole request head this long after it opened (or
    /// after its last answer) is closed, in milliseconds.
    #[serde(default = "ServeConfig::default_header_timeout_ms")]
    pub header_timeout_ms: u64,
    /// A request not answered this long after its head arrived is answered 408, in ms.
    #[serde(default = "ServeConfig::default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// The most connections open at once; more wait to be accepted. Lowered at start-up to
    /// fit the process's open-file limit.
    #[serde(default = "ServeConfig::default_max_connections")]
    pub max_connections: usize,
}

impl ServeConfig {
    fn default_listen() -> String {
        "127.0.0.1:8080".into()
    }
    fn default_cache_ms() -> u64 {
        1000
    }
    fn default_readers() -> usize {
        4
    }
    fn default_header_timeout_ms() -> u64 {
        10_000
    }
    fn default_request_timeout_ms() -> u64 {
        30_000
    }
    fn default_max_connections() -> usize {
        1024
    }
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            listen: Self::default_listen(),
            cache_ms: Self::default_cache_ms(),
            readers: Self::default_readers(),
            keys: Vec::new(),
            alerts: AlertsConfig::default(),
            header_timeout_ms: Self::default_header_timeout_ms(),
            request_timeout_ms: Self::default_request_timeout_ms(),
            max_connections: Self::default_max_connections(),
        }
    }
}

/// One bearer key. The key itself is never in the config, only its SHA-256
/// (`tally key new` makes a key and prints this entry).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// `sha256:` and 64 hex digits: the SHA-256 of the key.
    pub hash: String,
    /// The tenant this key reads; it reads nothing else.
    #[serde(default)]
    pub tenant: Option<String>,
    /// An admin key reads every tenant and lists them.
    #[serde(default)]
    pub admin: bool,
    /// A label for logs (the key itself is never logged).
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    /// Where alerts are POSTed as JSON (http:// or https://); alerts are only logged if absent.
    #[serde(default)]
    pub webhook: Option<String>,
    /// Seconds between looks at the counters for thresholds crossed.
    #[serde(default = "AlertsConfig::default_check_seconds")]
    pub check_seconds: f64,
    /// Attempts per webhook delivery before it is left for the next start.
    #[serde(default = "AlertsConfig::default_attempts")]
    pub attempts: u32,
    /// The alert ledger (JSON lines): which alerts were raised and delivered, so each crossing
    /// is raised once across restarts.
    #[serde(default = "AlertsConfig::default_ledger")]
    pub ledger: PathBuf,
}

impl AlertsConfig {
    fn default_check_seconds() -> f64 {
        60.0
    }
    fn default_attempts() -> u32 {
        6
    }
    fn default_ledger() -> PathBuf {
        "alerts.jsonl".into()
    }
}

impl Default for AlertsConfig {
    fn default() -> Self {
        AlertsConfig {
            webhook: None,
            check_seconds: Self::default_check_seconds(),
            attempts: Self::default_attempts(),
            ledger: Self::default_ledger(),
        }
    }
}

/// Who a key belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    Admin,
    Tenant(TenantId),
}

/// A checked key: its hash bytes, role and label.
#[derive(Debug, Clone)]
pub struct Key {
    pub hash: [u8; 32],
    pub role: Role,
    pub name: String,
}

impl ServeConfig {
    /// Checks the section; the error is (field, message).
    pub fn validate(&self) -> Result<(), (String, String)> {
        self.keys()?;
        let bad = |f: &str, m: &str| Err((f.to_string(), m.to_string()));
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            return bad("serve.listen", "must be an address and port such as \"127.0.0.1:8080\"");
        }
        if self.cache_ms > 60_000 {
            return bad(
                "serve.cache_ms",
                "must be at most 60000 (a quota check on minute-old counters lets a tenant run far past its limit)",
            );
        }
        if !(1..=64).contains(&self.readers) {
            return bad("serve.readers", "must be between 1 and 64");
        }
        if !(100..=600_000).contains(&self.header_timeout_ms) {
            return bad("serve.header_timeout_ms", "must be between 100 and 600000");
        }
        if !(100..=600_000).contains(&self.request_timeout_ms) {
            return bad("serve.request_timeout_ms", "must be between 100 and 600000");
        }
        if !(1..=1_000_000).contains(&self.max_connections) {
            return bad("serve.max_connections", "must be between 1 and 1000000");
        }
        let a = &self.alerts;
        if !(a.check_seconds >= 0.05 && a.check_seconds <= 86_400.0) {
            return bad("serve.alerts.check_seconds", "must be between 0.05 and 86400");
        }
        if !(1..=100).contains(&a.attempts) {
            return bad("serve.alerts.attempts", "must be between 1 and 100");
        }
        if a.webhook.as_deref().is_some_and(|u| !is_http_url(u)) {
            return bad("serve.alerts.webhook", "must be an http:// or https:// URL");
        }
        Ok(())
    }

    /// The keys, checked: a well-formed hash, exactly one of `tenant` / `admin`, no hash twice.
    pub fn keys(&self) -> Result<Vec<Key>, (String, String)> {
        let mut out: Vec<Key> = Vec::with_capacity(self.keys.len());
        for (n, k) in self.keys.iter().enumerate() {
            let field = |f: &str| format!("serve.keys[{n}].{f}");
            let hash = parse_hash(&k.hash).ok_or_else(|| {
                (field("hash"), "must be \"sha256:\" and 64 hex digits (`tally key new` prints one; the key itself never goes in the config)".to_string())
            })?;
            let role = match (&k.tenant, k.admin) {
                (Some(_), true) | (None, false) => {
                    return Err((field("tenant"), "set either `tenant = \"…\"` or `admin = true`".into()))
                }
                (None, true) => Role::Admin,
                (Some(t), false) => {
                    Role::Tenant(TenantId::new(t).ok_or_else(|| (field("tenant"), "must not be blank".to_string()))?)
                }
            };
            if out.iter().any(|o| o.hash == hash) {
                return Err((field("hash"), "the same key is listed twice".into()));
            }
            let name = k.name.clone().unwrap_or_else(|| match &role {
                Role::Admin => format!("admin#{n}"),
                Role::Tenant(t) => format!("{t}#{n}"),
            });
            out.push(Key { hash, role, name });
        }
        Ok(out)
    }
}

fn parse_hash(text: &str) -> Option<[u8; 32]> {
    let hex = text.trim().strip_prefix("sha256:")?;
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

/// `http://` or `https://` and a host, no spaces.
pub fn is_http_url(u: &str) -> bool {
    let rest = u.strip_prefix("http://").or_else(|| u.strip_prefix("https://"));
    rest.is_some_and(|r| !r.is_empty() && !r.contains(char::is_whitespace))
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use crate::config::Config;

    use crate::config::invalid_field as field_of;

    const HASH: &str = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn serve_errors_name_the_field() {
        assert_eq!(field_of("[serve]\nlisten = 'localhost'"), "serve.listen");
        assert_eq!(field_of("[serve]\ncache_ms = 600000"), "serve.cache_ms");
        assert_eq!(field_of("[[serve.keys]]\nhash = 'abc'\nadmin = true"), "serve.keys[0].hash");
        assert_eq!(field_of(&format!("[[serve.keys]]\nhash = '{HASH}'")), "serve.keys[0].tenant");
        assert_eq!(
            field_of(&format!("[[serve.keys]]\nhash = '{HASH}'\nadmin = true\ntenant = 'a'")),
            "serve.keys[0].tenant"
        );
        assert_eq!(
            field_of(&format!(
                "[[serve.keys]]\nhash = '{HASH}'\nadmin = true\n[[serve.keys]]\nhash = '{HASH}'\ntenant = 'a'"
            )),
            "serve.keys[1].hash"
        );
        assert_eq!(field_of("[serve.alerts]\nwebhook = 'hooks.example.com'"), "serve.alerts.webhook");
        assert_eq!(field_of("[serve.alerts]\nattempts = 0"), "serve.alerts.attempts");
        let ok = Config::from_toml(
            &format!("[[serve.keys]]\nhash = '{HASH}'\ntenant = 'acme'"),
            Path::new("t"),
            PathBuf::new(),
        )
        .unwrap();
        assert_eq!(ok.serve.keys().unwrap()[0].role, super::Role::Tenant(crate::ids::TenantId::new("acme").unwrap()));
    }
}
