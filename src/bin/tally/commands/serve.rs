//! `tally serve`: the live meters over HTTP, on the configured store's reader pool.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::args::{Global, ServeArgs};
use crate::open;

pub fn serve(global: &Global, args: ServeArgs) -> anyhow::Result<u8> {
    let mut config = global.config()?;
    if let Some(l) = args.listen {
        config.serve.listen = l;
        config.serve.validate().map_err(|(f, m)| anyhow::anyhow!("--listen: {m} ({f})"))?;
    }
    let as_of = match args.as_of {
        None => None,
        Some(t) => Some(
            tally::ids::parse_timestamp(&t)
                .with_context(|| format!("--as-of {t:?}: not an RFC 3339 time such as 2025-11-15T12:00:00Z"))?,
        ),
    };
    let shared = Arc::new(config.clone());
    let options = tally::serve::Options {
        open: Arc::new(move || open::reader(&shared)),
        as_of,
        webhook_backoff: Duration::from_millis(
            std::env::var("TALLY_WEBHOOK_BACKOFF_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(500),
        ),
        backend: config.store.kind().to_string(),
    };
    let setup = config.serve_setup().map_err(|(f, m)| anyhow::anyhow!("config field `{f}`: {m}"))?;
    let listen = &config.serve.listen;
    let listener = std::net::TcpListener::bind(listen)
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen} (serve.listen): {e}"))?;
    // One line on stdout when bound, for scripts and tests that chose port 0.
    println!("listening on http://{}", listener.local_addr()?);
    tally::serve::run(setup, options, listener, tally::serve::shutdown_signal())?;
    Ok(0)
}
