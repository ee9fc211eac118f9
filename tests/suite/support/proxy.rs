//! A loopback HTTP proxy in front of moto that answers a share of DynamoDB calls itself with
//! throttling (HTTP 400 `ThrottlingException`) or an internal error (HTTP 500), without
//! forwarding them — so the store's retries are exercised while moto sees each write once.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

pub struct FaultProxy {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    /// Calls answered with a fault.
    pub injected: Arc<AtomicU64>,
    /// Calls passed to moto.
    pub forwarded: Arc<AtomicU64>,
    /// Percentage of DynamoDB calls to fail; can be changed while running.
    pub fault_percent: Arc<AtomicU32>,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `upstream` (`http://host:port`).
    pub fn start(upstream: &str, fault_percent: u32, seed: u64) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let upstream = upstream.trim_start_matches("http://").trim_end_matches('/').to_string();
        let injected = Arc::new(AtomicU64::new(0));
        let forwarded = Arc::new(AtomicU64::new(0));
        let percent = Arc::new(AtomicU32::new(fault_percent));
        let calls = Arc::new(AtomicU64::new(seed));
        let (inj, fwd, pct) = (injected.clone(), forwarded.clone(), percent.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (upstream, inj, fwd, pct, calls) =
                    (upstream.clone(), inj.clone(), fwd.clone(), pct.clone(), calls.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, &upstream, &inj, &fwd, &pct, &calls);
                });
            }
        });
        FaultProxy { url, injected, forwarded, fault_percent: percent }
    }
}

/// A deterministic pseudo-random draw per call (splitmix64).
pub fn draw(calls: &AtomicU64) -> u64 {
    let mut z = calls.fetch_add(0x9e3779b97f4a7c15, Ordering::Relaxed).wrapping_add(0x9e3779b97f4a7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
    z ^ (z >> 31)
}

/// One HTTP/1.1 request as read from the client: its request line (`METHOD path?query`), its
/// head without the `Connection` header (to forward), its `X-Amz-Target` (lowercase, empty
/// when absent) and its `Content-Length` body.
pub struct Request {
    pub line: String,
    pub head: Vec<u8>,
    pub target: String,
    pub body: Vec<u8>,
}

/// Reads the next request on a connection; `None` when the client closed it.
pub fn read_request(reader: &mut impl BufRead) -> std::io::Result<Option<Request>> {
    let mut req = Request { line: String::new(), head: Vec::new(), target: String::new(), body: Vec::new() };
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        if req.line.is_empty() {
            req.line = line.trim_end().trim_end_matches(" HTTP/1.1").to_string();
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        if let Some(v) = lower.strip_prefix("x-amz-target:") {
            req.target = v.trim().to_string();
        }
        if line == "\r\n" {
            break;
        }
        if !lower.starts_with("connection:") {
            req.head.extend_from_slice(line.as_bytes());
        }
    }
    req.body = vec![0u8; length];
    reader.read_exact(&mut req.body)?;
    Ok(Some(req))
}

/// Sends `req` to `upstream` (`host:port`) on a new connection and returns the response split
/// into its head (status line and headers, each ending in CRLF, without the blank line) and body.
pub fn forward(upstream: &str, req: &Request) -> std::io::Result<(Vec<u8>, Vec<u8>)> {
    let mut up = TcpStream::connect(upstream)?;
    up.write_all(&req.head)?;
    up.write_all(b"Connection: close\r\n\r\n")?;
    up.write_all(&req.body)?;
    let mut response = Vec::new();
    up.read_to_end(&mut response)?;
    let split = response.windows(4).position(|w| w == b"\r\n\r\n").map_or(response.len(), |p| p + 2);
    let body = response.split_off(split);
    Ok((response, body))
}

/// Writes a forwarded response's head with `Connection: close` in place of the upstream's, so
/// the client does not reuse the socket; the caller writes the body (or part of it) after.
pub fn write_head_closing(client: &mut impl Write, head: &[u8]) -> std::io::Result<()> {
    for line in String::from_utf8_lossy(head)
        .split_inclusive("\r\n")
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
    {
        client.write_all(line.as_bytes())?;
    }
    client.write_all(b"Connection: close\r\n")
}

fn serve(
    conn: TcpStream,
    upstream: &str,
    injected: &AtomicU64,
    forwarded: &AtomicU64,
    percent: &AtomicU32,
    calls: &AtomicU64,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut client = conn;
    loop {
        let Some(req) = read_request(&mut reader)? else { return Ok(()) };
        let roll = draw(calls);
        if req.target.contains("dynamodb") && roll % 100 < u64::from(percent.load(Ordering::Relaxed)) {
            injected.fetch_add(1, Ordering::Relaxed);
            let (status, kind) = if (roll >> 8).is_multiple_of(2) {
                ("400 Bad Request", "ThrottlingException")
            } else {
                ("500 Internal Server Error", "InternalServerError")
            };
            let body = format!(
                "{{\"__type\":\"com.amazonaws.dynamodb.v20120810#{kind}\",\"message\":\"injected by the test proxy\"}}"
            );
            write!(
                client,
                "HTTP/1.1 {status}\r\nContent-Type: application/x-amz-json-1.0\r\nx-amzn-ErrorType: {kind}\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )?;
            client.flush()?;
            continue;
        }
        forwarded.fetch_add(1, Ordering::Relaxed);
        let (head, body) = forward(upstream, &req)?;
        write_head_closing(&mut client, &head)?;
        client.write_all(&body)?;
        client.flush()?;
        // moto closes after each response; so does this proxy, and the SDK reconnects.
        return Ok(());
    }
}
