//! Budget and unusual-usage alerts: each crossing raised once, delivered at least once.
//!
//! Every `check_seconds` the hourly counters of the current month are read and each tenant on
//! a plan is checked against its plan's [`AlertPolicy`](crate::invoice::plan::AlertPolicy):
//! - **allowance**: the month's use of the allowance reached a fraction in `alert_at`;
//! - **requests_per_day**: today's requests reached a fraction of `requests_per_day`;
//! - **spike**: the current or the previous hour used more than `spike_factor` × the tenant's
//!   average over the `spike_window_hours` before it (hours without use count as zero).
//!
//! An alert's id names its crossing (`acme/allowance/2025-11/0.8`), so it is raised once per
//! month, day or hour. Raised alerts and deliveries are appended to the ledger file before
//! anything else happens, which makes "once" hold across restarts; an alert raised but not
//! delivered (webhook down, process killed) is sent again on the next check, so delivery is at
//! least once and receivers deduplicate by `id`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::ids::{self, EpochSeconds, TenantId};
use crate::invoice::plan::Plans;
use crate::usage::{CounterKey, Usage};

/// What crossed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Allowance,
    RequestsPerDay,
    Spike,
}

/// One alert, as logged, kept in the ledger and POSTed to the webhook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    /// The crossing: tenant / kind / window / threshold. Receivers deduplicate on it.
    pub id: String,
    pub tenant: String,
    pub plan: String,
    pub kind: Kind,
    /// The month (allowance), day (requests) or hour (spike) the crossing belongs to.
    pub window: String,
    /// The fraction of the limit (allowance, requests) or the factor over average (spike).
    #[serde(with = "rust_decimal::serde::str")]
    pub threshold: Decimal,
    /// `tokens`, `credits` or `requests`.
    pub unit: String,
    /// Used so far in the window.
    #[serde(with = "rust_decimal::serde::str")]
    pub used: Decimal,
    /// The limit (allowance, requests) or the trailing hourly average (spike).
    #[serde(with = "rust_decimal::serde::str")]
    pub limit: Decimal,
    /// When tally saw the crossing (RFC 3339, UTC).
    pub raised_at: String,
    /// One line for people (and chat webhooks, which show `text`).
    pub text: String,
}

/// Per tenant: the month's usage, today's requests and tokens by hour.
#[derive(Debug, Default)]
struct TenantView {
    month: Usage,
    requests_today: u64,
    tokens_by_hour: HashMap<EpochSeconds, u64>,
}

/// The alerts the counters call for at `now`. `hours` must cover the current month and, for
/// spike alerts, the trailing windows (which may reach into the previous month).
pub fn evaluate(plans: &Plans, hours: &[(CounterKey, Usage)], now: EpochSeconds) -> Vec<Alert> {
    let (month, today, hour) = (ids::month_of(now), ids::day_of(now), ids::hour_of(now));
    let mut views: BTreeMap<&TenantId, TenantView> = BTreeMap::new();
    for (key, usage) in hours {
        let v = views.entry(&key.tenant).or_default();
        if ids::month_of(key.hour) == month {
            v.month += usage;
        }
        if ids::day_of(key.hour) == today {
            v.requests_today += usage.requests;
        }
        *v.tokens_by_hour.entry(key.hour).or_default() += usage.tokens();
    }
    let raised_at = ids::utc(now).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut out = Vec::new();
    for (tenant, view) in &views {
        let Some((plan, sub)) = plans.of(tenant) else { continue };
        let mut raise =
            |kind: Kind, window: &str, threshold: Decimal, unit: &str, used: Decimal, limit: Decimal, what: String| {
                let t = threshold.normalize();
                out.push(Alert {
                    id: format!("{tenant}/{}/{window}/{t}", kind_str(kind)),
                    tenant: tenant.as_str().to_string(),
                    plan: plan.name.clone(),
                    kind,
                    window: window.to_string(),
                    threshold: t,
                    unit: unit.to_string(),
                    used,
                    limit,
                    raised_at: raised_at.clone(),
                    text: format!("tally: tenant {tenant} ({} plan) {what}", plan.name),
                });
            };
        if let Some((unit, used, limit)) = crate::serve::quota::allowance(plan, sub, &view.month) {
            for &t in &plan.alerts.at {
                if used > Decimal::ZERO && used >= t * limit {
                    let what = format!("has used {used} of {limit} {unit} in {month} ({}% threshold)", percent(t));
                    raise(Kind::Allowance, &month, t, unit, used, limit, what);
                }
            }
        }
        if let Some(per_day) = plan.requests_per_day {
            let (used, limit) = (Decimal::from(view.requests_today), Decimal::from(per_day));
            for &t in &plan.alerts.at {
                if used > Decimal::ZERO && used >= t * limit {
                    let what = format!("has made {used} of {limit} requests on {today} ({}% threshold)", percent(t));
                    raise(Kind::RequestsPerDay, &today, t, "requests", used, limit, what);
                }
            }
        }
        if let Some((factor, window)) = plan.alerts.spike {
            for h in [hour - 3600, hour] {
                let used = view.tokens_by_hour.get(&h).copied().unwrap_or(0);
                let before: u64 = (1..=i64::from(window))
                    .map(|k| view.tokens_by_hour.get(&(h - k * 3600)).copied().unwrap_or(0))
                    .sum();
                let average = (Decimal::from(before) / Decimal::from(window)).round_dp(3);
                if average > Decimal::ZERO && Decimal::from(used) > factor * average {
                    let label = ids::hour_label(h);
                    let what = format!(
                        "used {used} tokens in the hour {label}, over {factor}× its {window}-hour average of {average}"
                    );
                    raise(Kind::Spike, &label, factor, "tokens", Decimal::from(used), average, what);
                }
            }
        }
    }
    out
}

fn kind_str(k: Kind) -> &'static str {
    match k {
        Kind::Allowance => "allowance",
        Kind::RequestsPerDay => "requests_per_day",
        Kind::Spike => "spike",
    }
}

fn percent(t: Decimal) -> Decimal {
    (t * Decimal::ONE_HUNDRED).normalize()
}

/// The months whose hourly counters [`evaluate`] needs at `now`: this one, and the previous
/// one while a spike window can reach back into it.
pub fn months_needed(plans: &Plans, now: EpochSeconds) -> Vec<String> {
    let window = plans.plans.values().filter_map(|p| p.alerts.spike.map(|(_, w)| i64::from(w))).max().unwrap_or(0);
    let this = ids::month_of(now);
    if window == 0 {
        return vec![this];
    }
    // The earliest hour a spike check reads; a window is at most 744 hours (31 days), so it
    // reaches back one month at most.
    let earliest = ids::month_of(ids::hour_of(now) - 3600 - window * 3600);
    if earliest == this {
        vec![this]
    } else {
        vec![earliest, this]
    }
}

/// A ledger line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
enum Entry {
    Raised { alert: Alert },
    Delivered { id: String, at: String, attempts: u32 },
}

/// Which alerts were raised and which delivered, kept in a JSON-lines file.
pub struct Ledger {
    path: PathBuf,
    raised: HashSet<String>,
    /// Raised and not yet delivered, in the order raised.
    pending: Vec<Alert>,
    /// Lines that could not be read (named in the log when loaded).
    pub bad_lines: u64,
}

impl Ledger {
    /// Loads the ledger (a missing file is an empty ledger). A line that is not a ledger entry is
    /// logged with its line number and skipped.
    pub fn open(path: &Path) -> std::io::Result<Ledger> {
        let mut ledger = Ledger { path: path.to_path_buf(), raised: HashSet::new(), pending: Vec::new(), bad_lines: 0 };
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ledger),
            Err(e) => return Err(e),
        };
        let mut delivered = HashSet::new();
        for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
            let line = line?;
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<Entry>(&line) {
                Ok(Entry::Raised { alert }) => {
                    if ledger.raised.insert(alert.id.clone()) {
                        ledger.pending.push(alert);
                    }
                }
                Ok(Entry::Delivered { id, .. }) => {
                    delivered.insert(id);
                }
                Err(e) => {
                    ledger.bad_lines += 1;
                    tracing::warn!(file = %path.display(), line = n + 1, error = %e, "alert ledger line skipped");
                }
            }
        }
        ledger.pending.retain(|a| !delivered.contains(&a.id));
        Ok(ledger)
    }

    fn append(&self, entry: &Entry) -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&self.path)?;
        let mut line = serde_json::to_vec(entry).map_err(std::io::Error::other)?;
        line.push(b'\n');
        f.write_all(&line)?;
        f.sync_data()
    }

    /// Records the alerts not raised before and returns them.
    pub fn raise(&mut self, alerts: Vec<Alert>) -> std::io::Result<Vec<Alert>> {
        let mut new = Vec::new();
        for a in alerts {
            if self.raised.contains(&a.id) {
                continue;
            }
            self.append(&Entry::Raised { alert: a.clone() })?;
            self.raised.insert(a.id.clone());
            self.pending.push(a.clone());
            new.push(a);
        }
        Ok(new)
    }

    /// Alerts raised and not yet delivered.
    pub fn pending(&self) -> &[Alert] {
        &self.pending
    }

    pub fn delivered(&mut self, id: &str, attempts: u32) -> std::io::Result<()> {
        let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        self.append(&Entry::Delivered { id: id.to_string(), at, attempts })?;
        self.pending.retain(|a| a.id != id);
        Ok(())
    }
}

/// POSTs alerts as JSON, retrying with backoff.
pub struct Webhook {
    client: reqwest::Client,
    url: String,
    attempts: u32,
    first_backoff: Duration,
}

/// How a delivery ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    Delivered {
        attempts: u32,
    },
    /// Every attempt failed or the receiver refused it (a 4xx other than 408/429).
    Failed {
        attempts: u32,
        last_error: String,
    },
}

impl Webhook {
    pub fn new(url: &str, attempts: u32, first_backoff: Duration) -> Result<Webhook, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .user_agent(concat!("tally/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Webhook { client, url: url.to_string(), attempts, first_backoff })
    }

    /// Sends one alert; a 2xx answer is delivery. Connection errors, timeouts, 408, 429 and 5xx
    /// are retried after 1×, 2×, 4×… the first backoff (at most 30 s apart).
    pub async fn send(&self, alert: &Alert) -> Delivery {
        let mut wait = self.first_backoff;
        let mut last_error = String::new();
        for attempt in 1..=self.attempts {
            let result = self.client.post(&self.url).header("Idempotency-Key", &alert.id).json(alert).send().await;
            match result {
                Ok(r) if r.status().is_success() => return Delivery::Delivered { attempts: attempt },
                Ok(r) => {
                    let status = r.status();
                    last_error = format!("HTTP {status}");
                    let retry = status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429;
                    if !retry {
                        return Delivery::Failed { attempts: attempt, last_error };
                    }
                }
                Err(e) => last_error = e.to_string(),
            }
            tracing::warn!(alert = %alert.id, attempt, error = %last_error, "alert webhook attempt failed");
            if attempt < self.attempts {
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(30));
            }
        }
        Delivery::Failed { attempts: self.attempts, last_error }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::config::Config;
    use crate::usage::{Resource, Via};

    fn plans(extra: &str) -> Plans {
        let text = format!(
            "[plans.q]\nkind = 'quota'\nmonthly_fee = '10'\nincluded = 1000\noverage_rate = '1'\nrequests_per_day = 10\n{extra}\n\
             [tenants.a]\nplan = 'q'\n[tenants.b]\nplan = 'q'"
        );
        Config::from_toml(&text, Path::new("t"), PathBuf::new()).unwrap().plans().unwrap()
    }

    const NOW: EpochSeconds = 1_763_200_000; // 2025-11-15T09:46:40Z

    fn hour(tenant: &str, h: EpochSeconds, input: u64, requests: u64) -> (CounterKey, Usage) {
        let key = CounterKey {
            tenant: TenantId::new(tenant).unwrap(),
            hour: ids::hour_of(h),
            resource: Resource::new("m"),
            via: Via::Pool,
        };
        (key, Usage { input, requests, ..Default::default() })
    }

    fn ids_of(alerts: &[Alert]) -> Vec<String> {
        alerts.iter().map(|a| a.id.clone()).collect()
    }

    #[test]
    fn each_threshold_is_its_own_crossing() {
        let p = plans("");
        assert!(evaluate(&p, &[hour("a", NOW, 799, 1)], NOW).is_empty());
        let alerts = evaluate(&p, &[hour("a", NOW - 86_400 * 3, 500, 1), hour("a", NOW, 300, 1)], NOW);
        assert_eq!(ids_of(&alerts), ["a/allowance/2025-11/0.8"]);
        let alerts = evaluate(&p, &[hour("a", NOW, 1000, 8), hour("b", NOW - 86_400, 5, 10)], NOW);
        assert_eq!(
            ids_of(&alerts),
            ["a/allowance/2025-11/0.8", "a/allowance/2025-11/1", "a/requests_per_day/2025-11-15/0.8"]
        );
        // Last month's usage does not count toward this month's allowance.
        assert!(evaluate(&p, &[hour("a", NOW - 86_400 * 20, 5000, 1)], NOW).is_empty());
        // Tenants without a plan raise nothing.
        assert!(evaluate(&p, &[hour("nobody", NOW, 1 << 40, 1 << 20)], NOW).is_empty());
    }

    #[test]
    fn a_spike_is_an_hour_over_factor_times_the_trailing_average() {
        let p = plans("spike_factor = '5'\nspike_window_hours = 4\nalert_at = ['10']");
        let base = ids::hour_of(NOW);
        let quiet: Vec<_> = (1..=4).map(|k| hour("a", base - k * 3600, 10, 1)).collect();
        let mut hours = quiet.clone();
        hours.push(hour("a", base, 50, 1));
        assert!(evaluate(&p, &hours, NOW).is_empty(), "5× the average is not above it");
        hours.push(hour("a", base, 1, 1));
        let alerts = evaluate(&p, &hours, NOW);
        assert_eq!(ids_of(&alerts), [format!("a/spike/{}/5", ids::hour_label(base))]);
        assert_eq!((alerts[0].used, alerts[0].limit), (Decimal::from(51), Decimal::from(10)));
        // A tenant with no history has no average to be unusual against.
        assert!(evaluate(&p, &[hour("b", NOW, 5_000, 1)], NOW).is_empty());
    }

    #[test]
    fn the_ledger_raises_once_and_keeps_undelivered_alerts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("alerts.jsonl");
        let p = plans("");
        let alerts = evaluate(&p, &[hour("a", NOW, 1000, 10)], NOW);
        assert_eq!(alerts.len(), 4);
        let mut ledger = Ledger::open(&path).unwrap();
        assert_eq!(ledger.raise(alerts.clone()).unwrap().len(), 4);
        assert!(ledger.raise(alerts.clone()).unwrap().is_empty());
        ledger.delivered(&alerts[0].id, 1).unwrap();
        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(b"not json\n").unwrap();
        let mut reopened = Ledger::open(&path).unwrap();
        assert_eq!(reopened.bad_lines, 1);
        assert!(reopened.raise(alerts.clone()).unwrap().is_empty(), "raised once across restarts");
        assert_eq!(ids_of(reopened.pending()), ids_of(&alerts[1..]));
    }

    #[test]
    fn spike_windows_reach_into_the_previous_month() {
        let p = plans("spike_factor = '3'\nspike_window_hours = 48");
        let early = 1_761_998_400; // 2025-11-01T12:00:00Z
        assert_eq!(months_needed(&p, early), ["2025-10", "2025-11"]);
        assert_eq!(months_needed(&p, NOW), ["2025-11"]);
        assert_eq!(months_needed(&plans(""), early), ["2025-11"]);
    }
}
