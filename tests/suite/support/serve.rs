//! Running `tally serve` from tests: start it on a free port, talk HTTP to it, and a webhook
//! receiver that can be told to fail.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running `tally serve`; killed when dropped.
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
