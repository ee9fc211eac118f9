//! `tally serve`: live meters over HTTP for dashboards and rate limiters (SPEC §5).
//!
//! Routes (all JSON but `/metrics` and `/`):
//! - `GET /v1/usage?period=YYYY-MM` — the caller's tenant by day and by resource;
//! - `GET /v1/quota` — used, included, remaining, requests today, `ok` / `warn` / `exceeded`;
//! - `GET /v1/tenants?period=` — every tenant, by usage (admin key only);
//! - `?tenant=` on the first two — admin keys name the tenant; a tenant key may only name its own;
//! - `GET /metrics` (Prometheus), `GET /healthz`, `GET /` (the dashboard page).
//!
//! Reads go through [`cache::Cache`] to a small pool of store connections on blocking threads.
//! A background task samples ingest totals for `/metrics`, another checks alert thresholds.

pub mod alerts;
pub mod auth;
pub mod cache;
pub mod config;
pub mod metrics;
pub mod quota;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use crate::ids::{self, EpochSeconds, TenantId};
use crate::invoice::plan::Plans;
use crate::store::{CounterStore, PeriodUsage, StoreError};
use crate::usage::{Resource, Usage};
use auth::{Caller, Denied, Keys};
use cache::{Cache, Source};
use config::ServeConfig;
use metrics::Metrics;

/// Opens one store connection (the caller decides the backend).
pub type OpenStore = Arc<dyn Fn() -> anyhow::Result<Box<dyn CounterStore>> + Send + Sync>;

/// What `tally serve` needs besides the config.
pub struct Options {
    pub open: OpenStore,
    /// Answer as if the clock read this (replaying a past period); `None`: the real clock.
    pub as_of: Option<EpochSeconds>,
    /// The first wait between webhook attempts.
    pub webhook_backoff: Duration,
    /// `sqlite` or `dynamodb`, for `/healthz`.
    pub backend: String,
}

/// A pool of store connections used from blocking threads.
struct Readers {
    stores: Vec<Mutex<Box<dyn CounterStore>>>,
    next: AtomicUsize,
}

impl Readers {
    /// Runs `f` on a free connection (or waits for one) on a blocking thread.
    async fn read<T, F>(self: &Arc<Self>, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&dyn CounterStore) -> Result<T, StoreError> + Send + 'static,
    {
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            let n = me.stores.len();
            let start = me.next.fetch_add(1, Ordering::Relaxed);
            let free = (0..n).find_map(|i| me.stores[(start + i) % n].try_lock().ok());
            let guard = match free {
                Some(g) => g,
                None => me.stores[start % n].lock().unwrap_or_else(|e| e.into_inner()),
            };
            f(&**guard)
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("a store read panicked: {e}")))?
    }
}

/// Every tenant's month, from the hourly counters: what `/v1/tenants` lists. Each entry has
/// the month's total and today's usage in `by_day` (all a quota position needs).
struct TenantsView {
    by_tenant: BTreeMap<TenantId, PeriodUsage>,
}

struct App {
    keys: Keys,
    plans: Plans,
    readers: Arc<Readers>,
    usage: Cache<(TenantId, String), PeriodUsage>,
    tenants: Cache<(String, String), TenantsView>,
    metrics: Metrics,
    as_of: Option<EpochSeconds>,
    backend: String,
}

impl App {
    fn now(&self) -> EpochSeconds {
        self.as_of.unwrap_or_else(|| chrono::Utc::now().timestamp())
    }

    fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, Response> {
        let header = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        self.keys.authenticate(header).map_err(denied)
    }

    /// A tenant's month, through the cache.
    async fn period_usage(&self, tenant: TenantId, period: String) -> Result<(Instant, Arc<PeriodUsage>), Response> {
        let key = (tenant.clone(), period.clone());
        let readers = self.readers.clone();
        let got =
            self.usage.get(&key, || async move { readers.read(move |s| s.period_usage(&tenant, &period)).await }).await;
        self.answer_from(got)
    }

    /// Every tenant's month, through the cache; `today` sets which day's requests count.
    async fn tenants_view(&self, period: String, today: String) -> Result<(Instant, Arc<TenantsView>), Response> {
        let readers = self.readers.clone();
        let key = (period.clone(), today.clone());
        let got = self
            .tenants
            .get(&key, || async move {
                let month = period.clone();
                let hours = readers.read(move |s| s.hours(&month)).await?;
                Ok::<_, StoreError>(tenants_view(period, hours, &today))
            })
            .await;
        self.answer_from(got)
    }

    fn answer_from<V>(
        &self,
        got: Result<(Instant, Arc<V>, Source), StoreError>,
    ) -> Result<(Instant, Arc<V>), Response> {
        match got {
            Ok((at, v, source)) => {
                let counter =
                    if source == Source::Cache { &self.metrics.cache_hits } else { &self.metrics.cache_misses };
                counter.fetch_add(1, Ordering::Relaxed);
                Ok((at, v))
            }
            Err(StoreError::Invalid(m)) => Err(error(StatusCode::BAD_REQUEST, "bad_request", &m)),
            Err(e) => {
                self.metrics.store_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "store read failed");
                Err(error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "the counters cannot be read right now; retry",
                ))
            }
        }
    }
}

fn tenants_view(period: String, hours: Vec<(crate::usage::CounterKey, Usage)>, today: &str) -> TenantsView {
    let mut by_tenant: BTreeMap<TenantId, PeriodUsage> = BTreeMap::new();
    for (key, usage) in hours {
        let p = by_tenant.entry(key.tenant.clone()).or_insert_with(|| PeriodUsage {
            tenant: key.tenant.clone(),
            period: period.clone(),
            ..Default::default()
        });
        p.total += &usage;
        let day = ids::day_of(key.hour);
        if day == today {
            *p.by_day.entry(day).or_default() += &usage;
        }
    }
    TenantsView { by_tenant }
}

/// A JSON error body: `{"error": code, "message": …}`.
fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let mut r = (status, Json(serde_json::json!({ "error": code, "message": message }))).into_response();
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"tally\""));
    }
    r
}

fn denied(d: Denied) -> Response {
    match d {
        Denied::Unauthenticated => {
            error(StatusCode::UNAUTHORIZED, "unauthorized", "send a configured key as `Authorization: Bearer <key>`")
        }
        Denied::Forbidden => error(StatusCode::FORBIDDEN, "forbidden", "this key may not read that"),
        Denied::NeedsTenant => {
            error(StatusCode::BAD_REQUEST, "bad_request", "an admin key names the tenant: ?tenant=<id>")
        }
    }
}

#[derive(Debug, Default, Deserialize)]
struct Params {
    tenant: Option<String>,
    period: Option<String>,
}

fn params(q: Result<Query<Params>, QueryRejection>) -> Result<Params, Response> {
    q.map(|Query(p)| p).map_err(|e| error(StatusCode::BAD_REQUEST, "bad_request", &e.body_text()))
}

fn period_of(app: &App, p: &Params) -> Result<String, Response> {
    let period = p.period.clone().unwrap_or_else(|| ids::month_of(app.now()));
    crate::store::month_range(&period).map_err(|e| error(StatusCode::BAD_REQUEST, "bad_request", &e.to_string()))?;
    Ok(period)
}

/// When a cached value was read, as RFC 3339.
fn read_time(at: Instant) -> String {
    let t = SystemTime::now() - at.elapsed();
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[derive(Serialize)]
struct UsageAnswer<'a> {
    tenant: &'a TenantId,
    period: &'a str,
    /// When the counters were read (the answer is at most `cache_ms` older than the response).
    as_of: String,
    total: &'a Usage,
    by_day: &'a BTreeMap<String, Usage>,
    by_resource: &'a BTreeMap<Resource, Usage>,
}

async fn usage(State(app): State<Arc<App>>, headers: HeaderMap, q: Result<Query<Params>, QueryRejection>) -> Response {
    let run = async {
        let caller = app.authenticate(&headers)?;
        let p = params(q)?;
        let tenant = caller.tenant(p.tenant.as_deref()).map_err(denied)?;
        let period = period_of(&app, &p)?;
        let (at, u) = app.period_usage(tenant, period).await?;
        let body = UsageAnswer {
            tenant: &u.tenant,
            period: &u.period,
            as_of: read_time(at),
            total: &u.total,
            by_day: &u.by_day,
            by_resource: &u.by_resource,
        };
        Ok::<_, Response>(Json(body).into_response())
    };
    run.await.unwrap_or_else(|r| r)
}

#[derive(Serialize)]
struct QuotaAnswer {
    #[serde(flatten)]
    quota: quota::Quota,
    as_of: String,
    cache_ms: u128,
}

async fn quota_handler(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    q: Result<Query<Params>, QueryRejection>,
) -> Response {
    let run = async {
        let caller = app.authenticate(&headers)?;
        let p = params(q)?;
        let tenant = caller.tenant(p.tenant.as_deref()).map_err(denied)?;
        let now = app.now();
        let (at, u) = app.period_usage(tenant, ids::month_of(now)).await?;
        let quota = quota::position(&app.plans, &u, &ids::day_of(now));
        Ok::<_, Response>(
            Json(QuotaAnswer { quota, as_of: read_time(at), cache_ms: app.usage.ttl().as_millis() }).into_response(),
        )
    };
    run.await.unwrap_or_else(|r| r)
}

#[derive(Serialize)]
struct TenantRow<'a> {
    tenant: &'a str,
    plan: Option<String>,
    status: quota::Status,
    /// used ÷ the allowance, when the plan has one.
    allowance_fraction: Option<String>,
    requests_today: u64,
    usage: Usage,
}

async fn tenants(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    q: Result<Query<Params>, QueryRejection>,
) -> Response {
    let run = async {
        let caller = app.authenticate(&headers)?;
        if !caller.is_admin() {
            return Err(denied(Denied::Forbidden));
        }
        let p = params(q)?;
        let period = period_of(&app, &p)?;
        let today = ids::day_of(app.now());
        let (at, view) = app.tenants_view(period.clone(), today.clone()).await?;
        let empty: Vec<PeriodUsage> = app
            .plans
            .tenants
            .keys()
            .filter(|t| !view.by_tenant.contains_key(*t))
            .map(|t| PeriodUsage { tenant: t.clone(), period: period.clone(), ..Default::default() })
            .collect();
        let mut rows: Vec<TenantRow> = view
            .by_tenant
            .values()
            .chain(empty.iter())
            .map(|u| {
                let q = quota::position(&app.plans, u, &today);
                TenantRow {
                    tenant: u.tenant.as_str(),
                    plan: q.plan,
                    status: q.status,
                    allowance_fraction: q.allowance.map(|a| a.limit.fraction.to_string()),
                    requests_today: q.requests_today,
                    usage: u.total,
                }
            })
            .collect();
        rows.sort_by(|a, b| {
            (b.usage.tokens(), b.usage.est_cost, b.usage.requests)
                .cmp(&(a.usage.tokens(), a.usage.est_cost, a.usage.requests))
                .then(a.tenant.cmp(b.tenant))
        });
        let body = serde_json::json!({ "period": period, "as_of": read_time(at), "tenants": rows });
        Ok::<_, Response>(Json(body).into_response())
    };
    run.await.unwrap_or_else(|r| r)
}

async fn metrics_handler(State(app): State<Arc<App>>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], app.metrics.render()).into_response()
}

async fn healthz(State(app): State<Arc<App>>) -> Response {
    let check = tokio::time::timeout(Duration::from_secs(5), app.readers.read(|s| s.max_hour())).await;
    match check {
        Ok(Ok(_)) => Json(serde_json::json!({ "status": "ok", "store": app.backend })).into_response(),
        Ok(Err(e)) => {
            app.metrics.store_errors.fetch_add(1, Ordering::Relaxed);
            let body = serde_json::json!({ "status": "unavailable", "store": app.backend, "message": e.to_string() });
            (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
        }
        Err(_) => {
            let body = serde_json::json!({ "status": "unavailable", "store": app.backend, "message": "the store did not answer within 5 s" });
            (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
        }
    }
}

const DASHBOARD: &str = include_str!("dashboard.html");

async fn dashboard() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'",
            ),
            (header::CACHE_CONTROL, "no-store"),
        ],
        DASHBOARD,
    )
        .into_response()
}

async fn fallback() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such route; see GET /v1/quota, /v1/usage, /v1/tenants, /metrics, /healthz",
    )
}

/// Times every request into the latency histogram.
async fn observe(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let route = metrics::route_index(req.uri().path());
    let started = Instant::now();
    let response = next.run(req).await;
    app.metrics.observe(route, response.status().as_u16(), started.elapsed());
    response
}

fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v1/usage", get(usage))
        .route("/v1/quota", get(quota_handler))
        .route("/v1/tenants", get(tenants))
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz))
        .route("/", get(dashboard))
        .fallback(fallback)
        .layer(middleware::from_fn_with_state(app.clone(), observe))
        .with_state(app)
}

/// Samples the ingest totals for `/metrics` every few seconds.
async fn sample_ingest(app: Arc<App>) {
    loop {
        match app.readers.read(|s| Ok((s.totals()?, s.max_hour()?))).await {
            Ok((totals, newest)) => app.metrics.sample_ingest(totals, newest),
            Err(e) => {
                app.metrics.store_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "cannot read ingest totals");
            }
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

/// Checks alert thresholds every `check_seconds`, raises each crossing once and delivers.
async fn check_alerts(app: Arc<App>, mut ledger: alerts::Ledger, webhook: Option<alerts::Webhook>, every: Duration) {
    loop {
        if let Err(e) = check_alerts_once(&app, &mut ledger, webhook.as_ref()).await {
            tracing::error!(error = %e, "alert check failed; trying again next time");
        }
        tokio::time::sleep(every).await;
    }
}

async fn check_alerts_once(
    app: &App,
    ledger: &mut alerts::Ledger,
    webhook: Option<&alerts::Webhook>,
) -> anyhow::Result<()> {
    let now = app.now();
    let months = alerts::months_needed(&app.plans, now);
    let hours = app
        .readers
        .read(move |s| {
            let mut all = Vec::new();
            for m in &months {
                all.extend(s.hours(m)?);
            }
            Ok(all)
        })
        .await
        .inspect_err(|_| {
            app.metrics.store_errors.fetch_add(1, Ordering::Relaxed);
        })?;
    let raised = ledger.raise(alerts::evaluate(&app.plans, &hours, now))?;
    for a in &raised {
        app.metrics.alerts_raised.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(alert = %a.id, tenant = %a.tenant, kind = ?a.kind, used = %a.used, limit = %a.limit, "{}", a.text);
    }
    let Some(webhook) = webhook else {
        // Logged is delivered when there is nowhere else to send it.
        for a in raised {
            ledger.delivered(&a.id, 0)?;
        }
        return Ok(());
    };
    // Oldest first; stop at the first failure (the receiver is likely down) and resume next check.
    let pending: Vec<alerts::Alert> = ledger.pending().to_vec();
    for a in pending {
        match webhook.send(&a).await {
            alerts::Delivery::Delivered { attempts } => {
                ledger.delivered(&a.id, attempts)?;
                app.metrics.alerts_delivered.fetch_add(1, Ordering::Relaxed);
            }
            alerts::Delivery::Failed { attempts, last_error } => {
                app.metrics.webhook_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(alert = %a.id, attempts, error = %last_error, "alert not delivered; it is sent again at the next check");
                break;
            }
        }
    }
    Ok(())
}

/// At most two glibc malloc arenas for the process. Requests run on tokio's worker threads and
/// its blocking threads, which come and go; each new thread may take an arena of its own (up to
/// 8 per core), and memory freed into one is not reused by another. In the 10-minute soak
/// (`tests/bench/soak.sh`, 24 million requests) serve's RSS rose from 29.5 to 48.7 MB with the
/// default and from 28.6 to 37.7 MB with two arenas, at the same request rate. Called before the
/// runtime starts its threads; `MALLOC_ARENA_MAX` in the environment still wins when set.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; M_ARENA_MAX takes any positive count.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

/// What `tally serve` runs on, built from the config ([`crate::config::Config::serve_setup`]).
pub struct Setup {
    pub serve: ServeConfig,
    pub plans: Plans,
    /// The alert ledger's file.
    pub ledger: PathBuf,
}

/// Serves on `listener` until `shutdown` completes (the command line passes
/// [`shutdown_signal`]: SIGTERM or Ctrl-C).
pub fn run(
    setup: Setup,
    options: Options,
    listener: std::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    limit_malloc_arenas();
    let Setup { serve: s, plans, ledger: ledger_path } = setup;
    let keys = s.keys().map_err(|(f, m)| anyhow::anyhow!("config field `{f}`: {m}"))?;
    if keys.is_empty() {
        tracing::warn!(
            "no [[serve.keys]] configured: every /v1 request will be refused (make one with `tally key new`)"
        );
    }
    let mut stores = Vec::with_capacity(s.readers);
    for _ in 0..s.readers {
        stores.push(Mutex::new((options.open)()?));
    }
    let ttl = Duration::from_millis(s.cache_ms);
    let app = Arc::new(App {
        keys: Keys::new(keys),
        plans,
        readers: Arc::new(Readers { stores, next: AtomicUsize::new(0) }),
        usage: Cache::new(ttl),
        tenants: Cache::new(ttl),
        metrics: Metrics::default(),
        as_of: options.as_of,
        backend: options.backend.clone(),
    });
    let ledger = alerts::Ledger::open(&ledger_path)
        .map_err(|e| anyhow::anyhow!("cannot read the alert ledger {}: {e}", ledger_path.display()))?;
    let webhook = match &s.alerts.webhook {
        Some(url) => Some(alerts::Webhook::new(url, s.alerts.attempts, options.webhook_backoff)?),
        None => None,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("tally-serve").build()?;
    runtime.block_on(async {
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let addr = listener.local_addr()?;
        tracing::info!(%addr, backend = %options.backend, cache_ms = s.cache_ms, "serving live meters");
        tokio::spawn(sample_ingest(app.clone()));
        tokio::spawn(check_alerts(app.clone(), ledger, webhook, Duration::from_secs_f64(s.alerts.check_seconds)));
        let limits = Limits {
            header_timeout: Duration::from_millis(s.header_timeout_ms),
            request_timeout: Duration::from_millis(s.request_timeout_ms),
            max_connections: connection_cap(s.max_connections),
        };
        serve_connections(listener, router(app), limits, shutdown).await;
        tracing::info!("stopped");
        Ok::<_, anyhow::Error>(())
    })
}

/// How `tally serve` bounds what clients hold: a slow or half-sent request must not keep a
/// connection (and its file descriptor) from real requests.
#[derive(Debug, Clone, Copy)]
struct Limits {
    header_timeout: Duration,
    request_timeout: Duration,
    max_connections: usize,
}

/// `configured`, lowered to leave room under the open-file limit for the store, the log and
/// the webhook client (a connection over the limit would fail to accept and spin).
fn connection_cap(configured: usize) -> usize {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct it is given.
    let nofile = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 { lim.rlim_cur } else { 1024 };
    let room = usize::try_from(nofile).unwrap_or(usize::MAX).saturating_sub(32).max(1);
    if room < configured {
        tracing::info!(
            configured,
            cap = room,
            open_file_limit = nofile,
            "serve.max_connections lowered to fit the open-file limit"
        );
    }
    configured.min(room)
}

/// Accepts connections while there is room for them (the rest wait in the listen backlog,
/// holding no descriptor), serves HTTP/1 on each with a deadline on its request head, and
/// answers 408 to a request not answered in time. On `shutdown`, stops accepting and lets
/// open connections finish their requests (up to the request timeout).
async fn serve_connections(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()>,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};

    let router = router.layer(middleware::from_fn(move |req: Request, next: Next| async move {
        match tokio::time::timeout(limits.request_timeout, next.run(req)).await {
            Ok(response) => response,
            Err(_) => error(StatusCode::REQUEST_TIMEOUT, "timeout", "the request was not answered in time"),
        }
    }));
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            permit = slots.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        let (stream, _) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // EMFILE and the like: wait a little rather than spin.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(limits.header_timeout);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let stopping = tokio::select! {
                _ = conn.as_mut() => false,
                stopped = stop.wait_for(|s| *s) => stopped.is_ok(),
            };
            if stopping {
                conn.as_mut().graceful_shutdown();
                let _ = tokio::time::timeout(limits.request_timeout, conn).await;
            }
        });
    }
    let _ = stop_tx.send(true);
    // Wait for open connections to finish (every slot back), for at most the request timeout.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(limits.request_timeout, slots.acquire_many(all)).await;
}

/// SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
