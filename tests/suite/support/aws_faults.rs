//! A loopback HTTP proxy in front of moto for the S3 and CloudWatch Logs sources: it answers a
//! share of calls itself with the errors those services give under load (S3 `503 SlowDown` or
//! `500 InternalError`, CloudWatch Logs throttling or `ServiceUnavailableException`), cuts a
//! share of object bodies off half-way, and remembers every request line so a test can check
//! what was (never) fetched.

use std::io::{BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::proxy::{draw, forward, read_request, write_head_closing};

pub struct SourceFaults {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    /// Calls answered with an error.
    pub errors: Arc<AtomicU64>,
    /// Object bodies cut off half-way.
    pub cuts: Arc<AtomicU64>,
    /// `METHOD path?query` of every request, in arrival order.
    pub requests: Arc<Mutex<Vec<String>>>,
    /// Percentage of calls answered with an error, and of object bodies cut; can be changed
    /// while running.
    pub percent: Arc<AtomicU32>,
}

struct Shared {
    upstream: String,
    errors: Arc<AtomicU64>,
    cuts: Arc<AtomicU64>,
    requests: Arc<Mutex<Vec<String>>>,
    percent: Arc<AtomicU32>,
    calls: AtomicU64,
}

impl SourceFaults {
    /// Listens on a free loopback port and forwards to `upstream` (`http://host:port`).
    pub fn start(upstream: &str, percent: u32, seed: u64) -> SourceFaults {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let shared = Arc::new(Shared {
            upstream: upstream.trim_start_matches("http://").trim_end_matches('/').to_string(),
            errors: Arc::default(),
            cuts: Arc::default(),
            requests: Arc::default(),
            percent: Arc::new(AtomicU32::new(percent)),
            calls: AtomicU64::new(seed),
        });
        let faults = SourceFaults {
            url,
            errors: shared.errors.clone(),
            cuts: shared.cuts.clone(),
            requests: shared.requests.clone(),
            percent: shared.percent.clone(),
        };
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let shared = shared.clone();
                std::thread::spawn(move || {
                    let _ = serve(conn, &shared);
                });
            }
        });
        faults
    }

    /// Request lines containing `needle`.
    pub fn requests_with(&self, needle: &str) -> Vec<String> {
        self.requests.lock().unwrap().iter().filter(|r| r.contains(needle)).cloned().collect()
    }
}

fn serve(conn: TcpStream, s: &Shared) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut client = conn;
    let Some(req) = read_request(&mut reader)? else { return Ok(()) };
    let logs = req.target.contains("logs_");
    s.requests.lock().unwrap().push(req.line.clone());

    let percent = u64::from(s.percent.load(Ordering::Relaxed));
    let roll = draw(&s.calls);
    if roll % 100 < percent {
        s.errors.fetch_add(1, Ordering::Relaxed);
        let (status, ctype, body) = match (logs, (roll >> 8).is_multiple_of(2)) {
            (true, true) => (
                "400 Bad Request",
                "application/x-amz-json-1.1",
                r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#.to_string(),
            ),
            (true, false) => (
                "500 Internal Server Error",
                "application/x-amz-json-1.1",
                r#"{"__type":"ServiceUnavailableException","message":"injected"}"#.to_string(),
            ),
            (false, true) => (
                "503 Slow Down",
                "application/xml",
                "<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>".to_string(),
            ),
            (false, false) => (
                "500 Internal Server Error",
                "application/xml",
                "<Error><Code>InternalError</Code><Message>injected</Message></Error>".to_string(),
            ),
        };
        write!(
            client,
            "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
        return client.flush();
    }
    let (resp_head, resp_body) = forward(&s.upstream, &req)?;
    let object_get = !logs
        && req.line.starts_with("GET ")
        && !req.line.contains("list-type=")
        && resp_head.starts_with(b"HTTP/1.1 200");
    // A second draw decides whether an object body is cut off half-way.
    let cut = object_get && resp_body.len() > 64 && (roll >> 16) % 100 < percent;
    write_head_closing(&mut client, &resp_head)?;
    if cut {
        s.cuts.fetch_add(1, Ordering::Relaxed);
        client.write_all(&resp_body[..resp_body.len() / 2])?;
    } else {
        client.write_all(&resp_body)?;
    }
    client.flush()
}
