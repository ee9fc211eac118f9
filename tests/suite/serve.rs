//! `tally serve` end to end: [`tally::serve::run`] in the test's process on a free port, over
//! counters written by an ingest, on SQLite and on DynamoDB (moto); and the binary itself, for
//! its flags, its log and its exit on SIGTERM.
//!
//! The data is small and written by hand so every number below is worked out from it. The
//! server runs `--as-of 2025-11-15T12:30:00Z`:
//! - acme (plan `pro`: 1,000 tokens a month, 5 requests a day, alerts at 50% and 100%, spike
//!   alerts at 3× the 4-hour average): 3 requests yesterday, 1 at 08:30 and 2 at 11:05 today,
//!   770 tokens this month; one request last month (1,000 tokens) that must not count;
//! - beta (plan `flat`, bundled): 2 requests today, 4,000 tokens;
//! - gamma (no plan): 1 request, 20 tokens;  delta (plan `pro`): no usage.

use crate::support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use support::serve::{wait_for, InProcess, Receiver, Server};
use support::{record, Scratch};

const AS_OF: &str = "2025-11-15T12:30:00Z";
const ACME_KEY: &str = "tly_acme_0123456789abcdef";
const BETA_KEY: &str = "tly_beta_fedcba9876543210";
const ADMIN_KEY: &str = "tly_admin_55aa55aa55aa55aa";
/// `tally serve`'s first wait between webhook attempts, unless `TALLY_WEBHOOK_BACKOFF_MS` says.
const DEFAULT_BACKOFF: Duration = Duration::from_millis(500);

fn hash(key: &str) -> String {
    tally::serve::auth::hash_text(key)
}

/// Plans, tenants and keys; `extra` goes into `[serve]` / `[serve.alerts]`.
fn serve_config(alerts: &str) -> String {
    format!(
        "[plans.pro]\nkind = \"quota\"\nmonthly_fee = \"99\"\nincluded = 1000\noverage_rate = \"0.004\"\nrequests_per_day = 5\n\
         alert_at = [\"0.5\", \"1\"]\nspike_factor = \"3\"\nspike_window_hours = 4\n\
         [plans.flat]\nkind = \"bundled\"\nmonthly_fee = \"29\"\nrequests_per_day = 100\n\
         [tenants.acme]\nplan = \"pro\"\n[tenants.beta]\nplan = \"flat\"\n[tenants.delta]\nplan = \"pro\"\n\
         [serve]\ncache_ms = 200\n\
         [[serve.keys]]\nhash = \"{}\"\ntenant = \"acme\"\nname = \"acme-app\"\n\
         [[serve.keys]]\nhash = \"{}\"\ntenant = \"beta\"\n\
         [[serve.keys]]\nhash = \"{}\"\nadmin = true\nname = \"ops\"\n\
         [serve.alerts]\n{alerts}\n",
        hash(ACME_KEY),
        hash(BETA_KEY),
        hash(ADMIN_KEY)
    )
}

fn phase_one() -> String {
    let mut lines = vec![record("acme-0", "2025-10-30T10:00:00Z", "acme", 500, 500)];
    for i in 0..3 {
        lines.push(record(&format!("acme-y{i}"), "2025-11-14T09:10:00Z", "acme", 100, 50));
    }
    lines.push(record("acme-early", "2025-11-15T08:30:00Z", "acme", 20, 0));
    for i in 0..2 {
        lines.push(record(&format!("acme-t{i}"), "2025-11-15T11:05:00Z", "acme", 100, 50));
        lines.push(record(&format!("beta-t{i}"), "2025-11-15T10:00:00Z", "beta", 1000, 1000));
    }
    lines.push(record("gamma-0", "2025-11-15T09:00:00Z", "gamma", 10, 10));
    lines.join("\n") + "\n"
}

/// Two more acme requests today: 1,070 tokens (past the allowance), 5 requests (the daily limit).
fn phase_two() -> String {
    (0..2)
        .map(|i| record(&format!("acme-more{i}"), "2025-11-15T12:10:00Z", "acme", 100, 50))
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

fn ingest(config: &Path, file: &Path) {
    support::serve::ingest(config, &[file.to_path_buf()]);
}

/// A scratch folder with the config (SQLite unless `store` says otherwise) and phase one ingested.
fn setup(store: &str, alerts: &str) -> (Scratch, PathBuf) {
    let s = Scratch::new("");
    let store = if store.is_empty() { "[store]\npath = \"tally.sqlite\"\n" } else { store };
    std::fs::write(&s.config_path, format!("{store}\n{}", serve_config(alerts))).unwrap();
    let config = s.config_path.clone();
    #[cfg(feature = "aws")]
    if store.contains("dynamodb") {
        let c = tally::config::Config::load(&config).unwrap();
        let endpoint = c.store.endpoint_url.as_deref().unwrap();
        support::aws::dynamo_store(endpoint, &c.store.table, c.store.shards).create_table().expect("table created");
    }
    let logs = s.write("logs/one.jsonl", phase_one());
    ingest(&config, &logs);
    (s, config)
}

/// Every endpoint refuses what the caller may not read, and answers what it may, exactly.
fn check_endpoints(config: &Path) {
    let server = InProcess::start(config, AS_OF, DEFAULT_BACKOFF);
    let get = |path: &str, key: Option<&str>| server.get(path, key);

    // No key, a wrong key, a key's hash instead of the key: 401 with a JSON error, everywhere.
    for path in ["/v1/quota", "/v1/usage", "/v1/tenants", "/v1/quota?tenant=acme"] {
        for key in [None, Some("tly_nope"), Some(hash(ACME_KEY).as_str())] {
            let r = get(path, key);
            assert_eq!(r.status, 401, "{path} with {key:?}: {}", r.body);
            assert_eq!(r.json()["error"], "unauthorized");
            assert!(r.head.to_ascii_lowercase().contains("www-authenticate: bearer"), "{}", r.head);
        }
    }

    // A tenant key reads its own tenant; naming another is refused and shows none of its data.
    for (key, own, other) in [(ACME_KEY, "acme", "beta"), (BETA_KEY, "beta", "acme")] {
        for path in ["/v1/quota", "/v1/usage"] {
            let r = get(path, Some(key));
            assert_eq!((r.status, r.json()["tenant"].as_str()), (200, Some(own)), "{path}: {}", r.body);
            assert_eq!(get(&format!("{path}?tenant={own}"), Some(key)).status, 200);
            for asked in [other, "gamma", "_unattributed", "ACME"] {
                let r = get(&format!("{path}?tenant={asked}&period=2025-11"), Some(key));
                assert_eq!(
                    (r.status, r.json()["error"].as_str()),
                    (403, Some("forbidden")),
                    "{own}'s key on {asked}: {}",
                    r.body
                );
                assert!(!r.body.contains(asked), "a refusal names nothing of {asked}: {}", r.body);
            }
        }
        let r = get("/v1/tenants", Some(key));
        assert_eq!(r.status, 403, "a tenant key lists tenants: {}", r.body);
        assert!(!r.body.contains(other));
    }

    // acme's quota, worked out from the data: 770 of 1,000 tokens (warn at 50%), 3 of 5 requests.
    let q = get("/v1/quota", Some(ACME_KEY)).json();
    assert_eq!(
        (q["plan"].as_str(), q["period"].as_str(), q["day"].as_str()),
        (Some("pro"), Some("2025-11"), Some("2025-11-15"))
    );
    let a = &q["allowance"];
    assert_eq!(
        (a["unit"].as_str(), a["used"].as_str(), a["limit"].as_str(), a["remaining"].as_str()),
        (Some("tokens"), Some("770"), Some("1000"), Some("230"))
    );
    assert_eq!(
        (q["requests_today"].as_u64(), q["requests"]["limit"].as_str(), q["requests"]["remaining"].as_str()),
        (Some(3), Some("5"), Some("2"))
    );
    assert_eq!((q["status"].as_str(), q["tokens"].as_u64()), (Some("warn"), Some(770)));
    assert!(q["as_of"].as_str().is_some_and(|t| t.ends_with('Z')) && q["cache_ms"] == 200, "{q}");

    // acme's usage: by day (last month's request is not in November) and by resource.
    let u = get("/v1/usage?period=2025-11", Some(ACME_KEY)).json();
    assert_eq!(u["by_day"]["2025-11-14"]["requests"], 3);
    assert_eq!(u["by_day"]["2025-11-15"]["input"], 220);
    assert_eq!((u["total"]["requests"].as_u64(), u["total"]["output"].as_u64()), (Some(6), Some(250)));
    assert_eq!(u["by_resource"]["amazon.nova-micro-v1:0"]["requests"], 6);
    let october = get("/v1/usage?period=2025-10", Some(ACME_KEY)).json();
    assert_eq!((october["total"]["requests"].as_u64(), october["total"]["input"].as_u64()), (Some(1), Some(500)));
    let bad = get("/v1/usage?period=2025-13", Some(ACME_KEY));
    assert_eq!((bad.status, bad.json()["error"].as_str()), (400, Some("bad_request")));

    // beta has no allowance and no warning; gamma's usage is there for the admin only.
    let qb = get("/v1/quota", Some(BETA_KEY)).json();
    assert_eq!(
        (qb["status"].as_str(), qb["allowance"].is_null(), qb["requests_today"].as_u64()),
        (Some("ok"), true, Some(2))
    );

    // The admin lists every tenant, by usage, and reads any of them; must name one for quota.
    let t = get("/v1/tenants", Some(ADMIN_KEY)).json();
    let order: Vec<&str> = t["tenants"].as_array().unwrap().iter().map(|r| r["tenant"].as_str().unwrap()).collect();
    assert_eq!(order, ["beta", "acme", "gamma", "delta"]);
    let acme_row = &t["tenants"][1];
    assert_eq!(
        (acme_row["status"].as_str(), acme_row["requests_today"].as_u64(), acme_row["allowance_fraction"].as_str()),
        (Some("warn"), Some(3), Some("0.77"))
    );
    let by_admin = get("/v1/quota?tenant=acme", Some(ADMIN_KEY)).json();
    assert_eq!(
        (&by_admin["allowance"], &by_admin["status"], &by_admin["requests"]),
        (&q["allowance"], &q["status"], &q["requests"])
    );
    assert_eq!(get("/v1/usage?tenant=gamma", Some(ADMIN_KEY)).json()["total"]["input"], 10);
    assert_eq!(get("/v1/quota", Some(ADMIN_KEY)).status, 400);

    // Health, metrics and the page need no key and carry no tenant's data.
    assert_eq!(get("/healthz", None).json()["status"], "ok");
    let page = get("/", None);
    assert!(page.status == 200 && page.body.contains("tally · live meter") && !page.body.contains("acme"));
    wait_for(15, "an ingest sample in /metrics", || {
        get("/metrics", None).body.contains("tally_ingest_records_total{outcome=\"received\"} 10")
    });
    let m = get("/metrics", None).body;
    assert!(!m.contains("acme") && !m.contains("beta"), "metrics name no tenant");
    let quota_count: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("tally_http_request_duration_seconds_count{route=\"/v1/quota\"} "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(quota_count >= 20, "every /v1/quota request is timed: {quota_count}");
    assert!(m.contains("tally_http_responses_total{route=\"/v1/quota\",code=\"403\"}"));

    // Keys never reach the log.
    let log = server.log();
    assert!(log.contains("serving live meters"), "the log is captured: {log}");
    for key in [ACME_KEY, BETA_KEY, ADMIN_KEY] {
        assert!(!log.contains(key), "a key is in the log:\n{log}");
    }
    server.stop().expect("the shutdown future stops serve without an error");
}

/// The binary: `--listen 127.0.0.1:0` and its "listening on" line, `--as-of`, answers, no key
/// in its log, and exit 0 on SIGTERM.
#[test]
fn the_process_serves_until_sigterm_and_exits_0() {
    let (_s, config) = setup("", "check_seconds = 3600");
    let server = Server::start(&config, &["--as-of", AS_OF], &[]);
    for key in [None, Some("tly_nope")] {
        let r = server.get("/v1/quota", key);
        assert_eq!((r.status, r.json()["error"].as_str()), (401, Some("unauthorized")), "{key:?}: {}", r.body);
    }
    let q = server.get("/v1/quota", Some(ACME_KEY)).json();
    assert_eq!((q["day"].as_str(), q["allowance"]["used"].as_str()), (Some("2025-11-15"), Some("770")), "{q}");
    assert_eq!(server.get("/v1/tenants", Some(ADMIN_KEY)).json()["tenants"].as_array().map(Vec::len), Some(4));
    let log = server.log();
    assert!(log.contains("serving live meters"), "{log}");
    for key in [ACME_KEY, ADMIN_KEY] {
        assert!(!log.contains(key), "a key is in the log:\n{log}");
    }
    assert!(server.stop().success(), "SIGTERM stops serve with exit 0");
}

#[test]
fn every_endpoint_keeps_tenants_apart_on_sqlite() {
    let (_s, config) = setup("", "check_seconds = 3600");
    check_endpoints(&config);
}

#[test]
fn quota_answers_are_at_most_cache_ms_old() {
    let (s, config) = setup("", "check_seconds = 3600");
    let server = InProcess::start(&config, AS_OF, DEFAULT_BACKOFF);
    let used = || server.get("/v1/quota", Some(ACME_KEY)).json()["allowance"]["used"].as_str().unwrap().to_string();
    assert_eq!(used(), "770");
    ingest(&config, &s.write("logs/two.jsonl", phase_two()));
    // cache_ms = 200: within 200 ms of the ingest committing, every answer has the new count.
    // (The wait is what is tested, not a wait for the server.)
    std::thread::sleep(Duration::from_millis(250));
    let q = server.get("/v1/quota", Some(ACME_KEY)).json();
    assert_eq!(
        (q["allowance"]["used"].as_str(), q["requests_today"].as_u64(), q["status"].as_str()),
        (Some("1070"), Some(5), Some("exceeded"))
    );
    assert_eq!(q["allowance"]["remaining"], "0");
}

fn alert_ids(r: &Receiver) -> Vec<String> {
    let mut ids = r.delivered();
    ids.sort();
    ids
}

#[test]
fn each_alert_threshold_fires_once_and_the_webhook_is_retried() {
    let receiver = Receiver::start(2);
    let alerts =
        format!("webhook = \"{}\"\ncheck_seconds = 0.2\nattempts = 4\nledger = \"alerts.jsonl\"", receiver.url);
    let (s, config) = setup("", &alerts);
    let backoff = Duration::from_millis(50);
    let server = InProcess::start(&config, AS_OF, backoff);
    let first =
        ["acme/allowance/2025-11/0.5", "acme/requests_per_day/2025-11-15/0.5", "acme/spike/2025-11-15T11:00:00Z/3"];
    wait_for(20, "the first alerts", || receiver.delivered().len() >= 3);
    // Several more checks: nothing is raised twice.
    server.wait_for_alert_checks(5);
    assert_eq!(alert_ids(&receiver), first);
    let hooks = receiver.hooks();
    assert_eq!(hooks.iter().filter(|h| h.body["id"] == first[0]).count(), 3, "two 500s, then delivered: {hooks:?}");
    assert!(hooks.iter().all(|h| h.idempotency_key.as_deref() == h.body["id"].as_str()));
    let spike = hooks.iter().find(|h| h.body["kind"] == "spike").unwrap();
    assert_eq!(
        (spike.body["used"].as_str(), spike.body["limit"].as_str()),
        (Some("300"), Some("5")),
        "300 tokens in 11:00 against 20/4 before"
    );

    // Past the allowance and the daily limit: only the 100% crossings are new, and the 12:00
    // hour (300 tokens against (20 + 300) / 4 = 80 before it) is a spike of its own.
    ingest(&config, &s.write("logs/two.jsonl", phase_two()));
    wait_for(20, "the 100% alerts", || receiver.delivered().len() >= 6);
    server.wait_for_alert_checks(3);
    let mut expected: Vec<String> = first.iter().map(|s| s.to_string()).collect();
    expected.extend(
        ["acme/allowance/2025-11/1", "acme/requests_per_day/2025-11-15/1", "acme/spike/2025-11-15T12:00:00Z/3"]
            .map(String::from),
    );
    expected.sort();
    assert_eq!(alert_ids(&receiver), expected);
    assert!(server.log().contains("acme/allowance/2025-11/1"), "each alert is also a log line");
    server.stop().unwrap();

    // A restart reads the ledger: nothing is raised or sent again.
    let before = receiver.hooks().len();
    let again = InProcess::start(&config, AS_OF, backoff);
    again.wait_for_alert_checks(6);
    assert_eq!(receiver.hooks().len(), before, "a restart re-sent alerts: {:?}", &receiver.hooks()[before..]);
    drop(again);
}

#[test]
fn an_alert_not_delivered_is_sent_after_a_restart() {
    // The receiver refuses everything at first: the alerts stay pending in the ledger.
    let receiver = Receiver::start(usize::MAX);
    let alerts = format!("webhook = \"{}\"\ncheck_seconds = 0.2\nattempts = 2", receiver.url);
    let (_s, config) = setup("", &alerts);
    let backoff = Duration::from_millis(20);
    let server = InProcess::start(&config, AS_OF, backoff);
    wait_for(20, "failed attempts", || receiver.hooks().len() >= 4);
    server.stop().unwrap();
    assert!(receiver.delivered().is_empty());
    let ledger = std::fs::read_to_string(config.parent().unwrap().join("alerts.jsonl")).unwrap();
    assert_eq!(ledger.lines().filter(|l| l.contains("\"event\":\"raised\"")).count(), 3, "{ledger}");

    // A receiver that works now: everything pending arrives, once each.
    let working = Receiver::start(0);
    let text = std::fs::read_to_string(&config).unwrap().replace(&receiver.url, &working.url);
    std::fs::write(&config, text).unwrap();
    let again = InProcess::start(&config, AS_OF, backoff);
    wait_for(20, "the pending alerts", || working.delivered().len() >= 3);
    again.wait_for_alert_checks(3);
    assert_eq!(
        alert_ids(&working),
        ["acme/allowance/2025-11/0.5", "acme/requests_per_day/2025-11-15/0.5", "acme/spike/2025-11-15T11:00:00Z/3"]
    );
}

#[test]
fn keys_are_made_and_hashed_by_the_cli() {
    let out = support::tally_bin().args(["key", "new", "--tenant", "acme", "--name", "acme prod"]).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let key = text.lines().find_map(|l| l.strip_prefix("key: ")).unwrap().to_string();
    let entry = &text[text.find("[[serve.keys]]").unwrap()..];
    let parsed: toml::Value = toml::from_str(entry).unwrap();
    let k = &parsed["serve"]["keys"][0];
    assert_eq!((k["tenant"].as_str(), k["name"].as_str()), (Some("acme"), Some("acme prod")));
    assert_eq!(k["hash"].as_str(), Some(hash(&key).as_str()));
    assert!(!entry.contains(&key), "the config entry holds the hash, not the key");
    let mut child = support::tally_bin()
        .args(["key", "hash"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(format!("{key}\n").as_bytes()).unwrap();
    let hashed = child.wait_with_output().unwrap();
    assert_eq!(String::from_utf8(hashed.stdout).unwrap().trim(), hash(&key));
}

#[test]
fn the_dashboard_renders_the_meters_in_chromium() {
    let Some(chromium) = browser() else { return };
    let (_s, config) = setup("", "check_seconds = 3600");
    let server = InProcess::start(&config, AS_OF, DEFAULT_BACKOFF);
    let artifacts = support::repo("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();

    let dom = render(&chromium, &server.addr, ACME_KEY, None);
    let q = server.get("/v1/quota", Some(ACME_KEY)).json();
    assert_eq!(q["allowance"]["used"], "770");
    assert_eq!(text_of(&dom, "tenant"), "acme");
    assert_eq!(text_of(&dom, "status"), "warn");
    assert_eq!(text_of(&dom, "used"), "770");
    assert_eq!(text_of(&dom, "included"), "1,000");
    assert_eq!(text_of(&dom, "remaining"), "230");
    assert_eq!(text_of(&dom, "requests-today"), "3");
    assert_eq!(text_of(&dom, "tokens"), "770");
    assert!(!dom.contains("beta"), "the tenant page shows no other tenant");
    render(&chromium, &server.addr, ACME_KEY, Some(&artifacts.join("dashboard-tenant.png")));

    let dom = render(&chromium, &server.addr, ADMIN_KEY, None);
    let rows: Vec<&str> = dom
        .match_indices("data-tenant=\"")
        .map(|(i, m)| &dom[i + m.len()..])
        .map(|rest| &rest[..rest.find('"').unwrap()])
        .collect();
    assert_eq!(rows, ["beta", "acme", "gamma", "delta"], "the admin sees every tenant, by usage");
    assert!(
        dom.contains("<td class=\"tokens\">4,000</td>") && dom.contains("<td class=\"allowance\">77.0%</td>"),
        "{dom}"
    );
    let shot = artifacts.join("dashboard-admin.png");
    render(&chromium, &server.addr, ADMIN_KEY, Some(&shot));
    assert!(std::fs::metadata(&shot).unwrap().len() > 5_000, "a screenshot was written: {}", shot.display());
}

/// Debian's Chromium; `None` (after a note) when it is missing and not required.
fn browser() -> Option<PathBuf> {
    let path = PathBuf::from(std::env::var("TALLY_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()));
    if path.exists() {
        return Some(path);
    }
    if std::env::var("TALLY_TEST_REQUIRE_BROWSER").is_ok_and(|v| v == "1") {
        panic!(
            "TALLY_TEST_REQUIRE_BROWSER=1 but {} is missing (tests/run-all.sh installs Debian's chromium)",
            path.display()
        );
    }
    eprintln!(
        "note: no Chromium at {}, so the dashboard test checks nothing; tests/run-all.sh installs it",
        path.display()
    );
    None
}

/// Loads the dashboard with `key` in headless Chromium: the DOM after its scripts ran, or a
/// screenshot into `shot`.
fn render(chromium: &Path, addr: &str, key: &str, shot: Option<&Path>) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new(chromium);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
    ])
    .args([
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--virtual-time-budget=8000",
        "--window-size=1100,900",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()));
    match shot {
        Some(p) => cmd.arg(format!("--screenshot={}", p.display())),
        None => cmd.arg("--dump-dom"),
    };
    let out = cmd.arg(format!("http://{addr}/#key={key}")).output().expect("chromium runs");
    assert!(out.status.success(), "chromium failed: {}", String::from_utf8_lossy(&out.stderr));
    let dom = String::from_utf8_lossy(&out.stdout).to_string();
    if shot.is_none() {
        assert!(dom.contains("data-ready=\"yes\""), "the page did not finish loading:\n{dom}");
    }
    dom
}

/// The text of the element with `id` in a dumped DOM.
fn text_of(dom: &str, id: &str) -> String {
    let at = dom.find(&format!("id=\"{id}\"")).unwrap_or_else(|| panic!("no #{id} in the page"));
    let rest = &dom[at..];
    let start = rest.find('>').unwrap() + 1;
    rest[start..start + rest[start..].find('<').unwrap()].to_string()
}

#[cfg(feature = "aws")]
#[test]
fn every_endpoint_keeps_tenants_apart_on_dynamodb() {
    let Some(endpoint) = support::aws::endpoint() else { return };
    let table = support::aws::unique_name("tally-serve");
    let (_s, config) = setup(&support::aws::store_section(&endpoint, &table), "check_seconds = 3600");
    check_endpoints(&config);
}
