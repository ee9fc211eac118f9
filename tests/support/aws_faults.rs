//! A loopback HTTP proxy in front of moto for the S3 and CloudWatch Logs sources: it answers a
//! share of calls itself with the errors those services give under load (S3 `503 SlowDown` or
//! `500 InternalError`, CloudWatch Logs throttling or `ServiceUnavailableException`), cuts a
//! share of object bodies off half-way, and remembers every request line so a test can check
//! what was (never) fetched.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

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

/// A deterministic pseudo-random draw per call (splitmix64).
fn draw(calls: &AtomicU64) -> u64 {
    let mut z = calls.fetch_add(0x9e3779b97f4a7c15, Ordering::Relaxed).wrapping_add(0x9e3779b97f4a7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
    z ^ (z >> 31)
}

fn serve(conn: TcpStream, s: &Shared) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut client = conn;
    let mut head = Vec::new();
    let mut length = 0usize;
    let mut logs = false;
    let mut request_line = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        if request_line.is_empty() {
            request_line = line.trim_end().trim_end_matches(" HTTP/1.1").to_string();
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        if lower.starts_with("x-amz-target:") && lower.contains("logs_") {
            logs = true;
        }
        if line == "\r\n" {
            break;
        }
        if !lower.starts_with("connection:") {
            head.extend_from_slice(line.as_bytes());
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body)?;
    s.requests.lock().unwrap().push(request_line.clone());

    let percent = u64::from(s.percent.load(Ordering::Relaxed));
    let roll = draw(&s.calls);
    if roll % 100 < percent {
        s.errors.fetch_add(1, Ordering::Relaxed);
        let (status, ctype, body) = match (logs, (roll >> 8) % 2 == 0) {
            (true, true) => ("400 Bad Request", "application/x-amz-json-1.1", r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#.to_string()),
            (true, false) => ("500 Internal Server Error", "application/x-amz-json-1.1", r#"{"__type":"ServiceUnavailableException","message":"injected"}"#.to_string()),
            (false, true) => ("503 Slow Down", "application/xml", "<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>".to_string()),
            (false, false) => ("500 Internal Server Error", "application/xml", "<Error><Code>InternalError</Code><Message>injected</Message></Error>".to_string()),
        };
        write!(client, "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())?;
        return client.flush();
    }
    let mut up = TcpStream::connect(&s.upstream)?;
    up.write_all(&head)?;
    up.write_all(b"Connection: close\r\n\r\n")?;
    up.write_all(&body)?;
    let mut response = Vec::new();
    up.read_to_end(&mut response)?;
    let split = response.windows(4).position(|w| w == b"\r\n\r\n").map_or(response.len(), |p| p + 2);
    let (resp_head, resp_body) = response.split_at(split);
    let object_get = !logs && request_line.starts_with("GET ") && !request_line.contains("list-type=") && resp_head.starts_with(b"HTTP/1.1 200");
    // A second draw decides whether an object body is cut off half-way.
    let cut = object_get && resp_body.len() > 64 && (roll >> 16) % 100 < percent;
    for line in String::from_utf8_lossy(resp_head).split_inclusive("\r\n").filter(|l| !l.to_ascii_lowercase().starts_with("connection:")) {
        client.write_all(line.as_bytes())?;
    }
    client.write_all(b"Connection: close\r\n")?;
    if cut {
        s.cuts.fetch_add(1, Ordering::Relaxed);
        client.write_all(&resp_body[..resp_body.len() / 2])?;
    } else {
        client.write_all(resp_body)?;
    }
    client.flush()
}
