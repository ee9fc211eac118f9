//! Running `tally serve` from tests: [`tally::serve::run`] in the test's own process (what
//! the HTTP tests use), or the binary on a free port (for what only the process shows: its
//! flags, its signals, its exit code, its limits), talking HTTP to either, and a webhook
//! receiver that can be told to fail.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tally::config::Config;
use tally::ids::{EpochSeconds, TenantId};
use tally::ingest::{self, Run};
use tally::progress::NoProgress;
use tally::quarantine::Quarantine;
use tally::store::sqlite::SqliteStore;
use tally::store::{Applied, Backend, Batch, CounterStore, IngestTotals, PeriodUsage, StoreError};
use tally::usage::{CounterKey, Usage};

/// `tally serve` run in this process by [`tally::serve::run`], on a thread of its own (it
/// builds its own runtime), with a listener bound to `127.0.0.1:0` before it starts: a request
/// sent at once waits in the listen backlog, so nothing waits for the port. Stopped through its
/// shutdown future when dropped, or by [`InProcess::stop`].
pub struct InProcess {
    pub addr: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    running: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
    /// Reads of a month's hourly counters by its store connections.
    hours_read: Arc<AtomicU64>,
}

impl InProcess {
    /// Serves the config at `config` as `tally --config <config> serve --as-of <as_of>` does,
    /// its webhook retried first after `webhook_backoff`.
    pub fn start(config: &Path, as_of: &str, webhook_backoff: Duration) -> InProcess {
        capture_log();
        let config = Config::load(config).expect("test config is valid");
        let setup = config.serve_setup().expect("test config serves");
        let hours_read = Arc::new(AtomicU64::new(0));
        let (shared, counted) = (Arc::new(config.clone()), hours_read.clone());
        let options = tally::serve::Options {
            open: Arc::new(move || {
                Ok(Box::new(CountedReads { store: open_store(&shared), hours_read: counted.clone() })
                    as Box<dyn CounterStore>)
            }),
            as_of: Some(tally::ids::parse_timestamp(as_of).expect("an RFC 3339 time")),
            webhook_backoff,
            backend: config.store.kind().to_string(),
        };
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = std::thread::spawn(move || {
            tally::serve::run(setup, options, listener, async {
                // A dropped sender stops it as well.
                let _ = stopped.await;
            })
        });
        InProcess { addr, stop: Some(stop), running: Some(running), hours_read }
    }

    pub fn get(&self, path: &str, key: Option<&str>) -> Response {
        get(&self.addr, path, key)
    }

    /// Completes its shutdown future (what SIGTERM does to the process), and how its run ended.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.stop.take().expect("running").send(()).expect("serve is still running");
        self.running.take().expect("running").join().expect("serve did not panic")
    }

    /// Waits until `n` more alert checks have run to their end. Each check reads the hourly
    /// counters of its months (one month here, with `as_of` mid-month), and nothing else these
    /// tests ask reads them, so the `n + 1`-th read from now starts only after `n` whole checks.
    pub fn wait_for_alert_checks(&self, n: u64) {
        let until = self.hours_read.load(Ordering::Relaxed) + n + 1;
        wait_for(30, &format!("{n} alert checks"), || self.hours_read.load(Ordering::Relaxed) >= until);
    }

    /// What the library logged in this process (see [`log`]).
    pub fn log(&self) -> String {
        log()
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(running) = self.running.take() {
            let _ = running.join();
        }
    }
}

/// A store connection for `config`'s store, as `tally` opens one.
pub fn open_store(config: &Config) -> Box<dyn CounterStore> {
    match config.store.kind() {
        Backend::Sqlite => Box::new(SqliteStore::open(&config.resolve(&config.store.path), false).unwrap()),
        #[cfg(feature = "aws")]
        Backend::Dynamodb => {
            let st = &config.store;
            let endpoint = st.endpoint_url.as_deref().expect("a test table is on moto's endpoint");
            Box::new(super::aws::dynamo_store(endpoint, &st.table, st.shards))
        }
        #[cfg(not(feature = "aws"))]
        Backend::Dynamodb => panic!("DynamoDB needs the `aws` feature"),
    }
}

/// One ingest pass over `paths` into `config`'s store, as `tally ingest` makes it.
pub fn ingest(config: &Path, paths: &[PathBuf]) {
    let config = Config::load(config).expect("test config is valid");
    let pipeline = config.pipeline().unwrap();
    let settings = config.ingest_settings(false);
    let mut store = open_store(&config);
    let mut q =
        Quarantine::new(config.resolve(&config.ingest.quarantine)).with_limit(config.ingest.quarantine_max_bytes);
    let mut run = Run {
        store: &mut *store,
        pipeline: &pipeline,
        settings: &settings,
        quarantine: &mut q,
        shutdown: &AtomicBool::new(false),
        progress: &NoProgress,
    };
    ingest::run_once(paths, &mut run).expect("ingest runs");
}

/// A store that counts its reads of hourly counters (and passes everything through).
struct CountedReads {
    store: Box<dyn CounterStore>,
    hours_read: Arc<AtomicU64>,
}

impl CounterStore for CountedReads {
    fn apply(&mut self, batch: &Batch) -> Result<Applied, StoreError> {
        self.store.apply(batch)
    }

    fn checkpoints(&self) -> Result<std::collections::HashMap<String, String>, StoreError> {
        self.store.checkpoints()
    }

    fn max_hour(&self) -> Result<Option<EpochSeconds>, StoreError> {
        self.store.max_hour()
    }

    fn period_usage(&self, tenant: &TenantId, month: &str) -> Result<PeriodUsage, StoreError> {
        self.store.period_usage(tenant, month)
    }

    fn tenants(&self, month: &str) -> Result<Vec<(TenantId, Usage)>, StoreError> {
        self.store.tenants(month)
    }

    fn hours(&self, month: &str) -> Result<Vec<(CounterKey, Usage)>, StoreError> {
        self.hours_read.fetch_add(1, Ordering::Relaxed);
        self.store.hours(month)
    }

    fn totals(&self) -> Result<IngestTotals, StoreError> {
        self.store.totals()
    }
}

/// What the library logged in this process so far, formatted as `tally` formats its log: the
/// same filter (`warn,tally=info`) and text lines, without colours. nextest runs each test in a
/// process of its own, so this is the test's own log.
pub fn log() -> String {
    String::from_utf8_lossy(&capture_log().lock().unwrap()).into_owned()
}

/// Sends this process's log to a buffer, once; the buffer.
fn capture_log() -> &'static Mutex<Vec<u8>> {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOG.get_or_init(|| {
        let log: Arc<Mutex<Vec<u8>>> = Arc::default();
        let sink = log.clone();
        let filter = tracing_subscriber::EnvFilter::new("warn,tally=info");
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(move || LogSink(sink.clone()))
            .with_target(false)
            .with_ansi(false)
            .try_init();
        log
    })
}

/// Appends what it is given to the captured log.
struct LogSink(Arc<Mutex<Vec<u8>>>);

impl Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A running `tally serve` process; killed when dropped.
pub struct Server {
    child: Child,
    pub addr: String,
    pub stderr: PathBuf,
}

impl Server {
    /// Starts `tally --config <config> serve --listen 127.0.0.1:0 <args>` and waits for its
    /// "listening on" line. Its stderr goes to `<config dir>/serve-<n>.log`.
    pub fn start(config: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        Server::start_with_open_files(config, args, env, None)
    }

    /// [`Server::start`], with the process's open-file limit set to `open_files`.
    pub fn start_with_open_files(
        config: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        open_files: Option<u64>,
    ) -> Server {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let stderr = config.parent().unwrap().join(format!("serve-{n}.log"));
        let mut cmd = super::tally_bin();
        cmd.arg("--config").arg(config).args(["serve", "--listen", "127.0.0.1:0"]).args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        if let Some(n) = open_files {
            use std::os::unix::process::CommandExt;
            // SAFETY: only setrlimit, async-signal-safe, between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit { rlim_cur: n, rlim_max: n };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("tally serve starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let Some(addr) = line.trim().strip_prefix("listening on http://") else {
            let _ = child.kill();
            panic!("tally serve did not start: {line:?}\n{}", std::fs::read_to_string(&stderr).unwrap_or_default());
        };
        Server { child, addr: addr.to_string(), stderr }
    }

    pub fn get(&self, path: &str, key: Option<&str>) -> Response {
        get(&self.addr, path, key)
    }

    /// SIGTERM, and the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let _ = std::process::Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "tally serve did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Response {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// `GET path` with an optional bearer key, on a fresh connection.
pub fn get(addr: &str, path: &str, key: Option<&str>) -> Response {
    let mut s = TcpStream::connect(addr).expect("connect to tally serve");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let auth = key.map(|k| format!("Authorization: Bearer {k}\r\n")).unwrap_or_default();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8(raw).expect("UTF-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).expect("a status code");
    Response { status, head: head.to_string(), body: body.to_string() }
}

/// Waits until `f` is true, up to `secs`.
pub fn wait_for(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out after {secs} s waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One request the webhook receiver got, and the status it answered.
#[derive(Debug, Clone)]
pub struct Hook {
    pub body: serde_json::Value,
    pub idempotency_key: Option<String>,
    pub status: u16,
}

/// A webhook receiver that answers 500 to its first `fail_first` requests and 200 after.
pub struct Receiver {
    pub url: String,
    pub got: Arc<Mutex<Vec<Hook>>>,
}

impl Receiver {
    pub fn start(fail_first: usize) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hooks/tally", listener.local_addr().unwrap());
        let got: Arc<Mutex<Vec<Hook>>> = Arc::default();
        let seen = got.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
                let Ok(reader) = conn.try_clone() else { continue };
                let Ok(Some(req)) = super::proxy::read_request(&mut BufReader::new(reader)) else { continue };
                let (head, body) = (String::from_utf8_lossy(&req.head).into_owned(), req.body);
                let key = head.lines().find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("idempotency-key").then(|| v.trim().to_string())
                });
                let mut all = seen.lock().unwrap();
                let status = if all.len() < fail_first { 500 } else { 200 };
                all.push(Hook {
                    body: serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
                    idempotency_key: key,
                    status,
                });
                drop(all);
                let reason = if status == 200 { "OK" } else { "Internal Server Error" };
                let _ = write!(conn, "HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            }
        });
        Receiver { url, got }
    }

    pub fn hooks(&self) -> Vec<Hook> {
        self.got.lock().unwrap().clone()
    }

    /// The ids of the alerts it accepted (answered 200), in order.
    pub fn delivered(&self) -> Vec<String> {
        self.hooks()
            .iter()
            .filter(|h| h.status == 200)
            .map(|h| h.body["id"].as_str().unwrap_or_default().to_string())
            .collect()
    }
}
