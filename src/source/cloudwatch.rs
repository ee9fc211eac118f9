//! The CloudWatch Logs source: a log group's streams (Bedrock writes to
//! `aws/bedrock/modelinvocations`), one invocation record per event.
//!
//! Every stream is its own scope with its own checkpoint, `cloudwatch://<group>?stream=<stream>`,
//! so streams are read in parallel. A stream is read with `GetLogEvents` from the head, page
//! by page with the forward token; each page is a piece whose position ([`StreamPosition`])
//! holds the token after it, the timestamp of its last event and the events read so far. The
//! stream's end is where the service hands back the token it was given. Streams are listed
//! with `DescribeLogStreams` on every pass, and every stream is asked for new events, because
//! its last-event time is only eventually consistent.
//!
//! If a stored token is refused (forward tokens are not documented to last forever), the stream
//! is read again from the stored timestamp: the events of that millisecond come again, their
//! records are deduplicated by `requestId`, and non-record events of that millisecond are
//! received and skipped a second time.
//!
//! Events that are not JSON are received and skipped: the "Permissions are correctly set…"
//! event as `permission_check`, anything else as `non_json` (quarantined). In quarantine
//! entries of this source, `line` is the event's number in its stream and `offset` the event's
//! timestamp in milliseconds.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

use super::files::ReadSettings;
use super::remote::{Remote, SourceError};
use super::{Decoder, Piece};

/// The most events `GetLogEvents` returns in one call.
const PAGE_EVENTS: usize = 10_000;

/// `cloudwatch://<log-group>[?stream=<log-stream>]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogsUrl {
    pub group: String,
    /// Only this stream; all of the group's streams when `None`.
    pub stream: Option<String>,
}

impl LogsUrl {
    pub fn parse(url: &str) -> Result<LogsUrl, String> {
        let rest = url.strip_prefix("cloudwatch://").ok_or_else(|| {
            format!("{url}: a CloudWatch Logs source is cloudwatch://<log-group>[?stream=<log-stream>]")
        })?;
        // `?` cannot occur in a log group name, so it always starts the query.
        let (group, stream) = match rest.split_once("?stream=") {
            Some((g, s)) if !s.is_empty() => (g, Some(s.to_string())),
            Some(_) => return Err(format!("{url}: the stream name after ?stream= is empty")),
            None => (rest, None),
        };
        if group.is_empty() || group.contains('?') {
            return Err(format!(
                "{url}: the log group name is missing or has a `?` (cloudwatch://<log-group>[?stream=<log-stream>])"
            ));
        }
        Ok(LogsUrl { group: group.to_string(), stream })
    }

    /// The checkpoint key of one stream of the group.
    pub fn stream_key(&self, stream: &str) -> String {
        format!("cloudwatch://{}?stream={stream}", self.group)
    }
}

impl std::fmt::Display for LogsUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.stream {
            Some(s) => write!(f, "cloudwatch://{}?stream={s}", self.group),
            None => write!(f, "cloudwatch://{}", self.group),
        }
    }
}

/// The checkpoint of one stream (wire format, version 1).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamPosition {
    pub v: u8,
    /// The forward token after the last page read (empty: none yet).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub token: String,
    /// The timestamp (ms) of the last event read.
    #[serde(default)]
    pub ts: i64,
    /// Events read from this stream.
    #[serde(default)]
    pub events: u64,
}

impl StreamPosition {
    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("a position serialises")
    }

    pub fn decode(s: &str) -> Option<StreamPosition> {
        serde_json::from_str::<StreamPosition>(s).ok().filter(|p| p.v == 1)
    }
}

/// One stream to read this pass.
#[derive(Debug, Clone)]
pub struct StreamJob {
    pub group: String,
    pub stream: String,
    /// The checkpoint key.
    pub key: String,
    pub expected: Option<String>,
    pub start: StreamPosition,
}

/// One `cloudwatch://` input.
pub struct LogsSource {
    pub url: LogsUrl,
}

impl LogsSource {
    pub fn new(url: LogsUrl) -> LogsSource {
        LogsSource { url }
    }

    /// One job per stream of the group.
    pub fn plan(&self, remote: &Remote, checkpoints: &HashMap<String, String>) -> Result<Vec<StreamJob>, SourceError> {
        let streams = match &self.url.stream {
            Some(s) => vec![s.clone()],
            None => self.streams(remote)?,
        };
        Ok(streams
            .into_iter()
            .map(|stream| {
                let key = self.url.stream_key(&stream);
                let expected = checkpoints.get(&key).cloned();
                let start = expected
                    .as_deref()
                    .and_then(StreamPosition::decode)
                    .unwrap_or(StreamPosition { v: 1, ..StreamPosition::default() });
                StreamJob { group: self.url.group.clone(), stream, key, expected, start }
            })
            .collect())
    }

    fn streams(&self, remote: &Remote) -> Result<Vec<String>, SourceError> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut req = remote.logs.describe_log_streams().log_group_name(&self.url.group);
            if let Some(t) = &token {
                req = req.next_token(t);
            }
            let page = remote.block_on(req.send()).map_err(|e| SourceError::from_sdk(self.url.to_string(), &e))?;
            out.extend(page.log_streams().iter().filter_map(|s| s.log_stream_name().map(str::to_string)));
            match page.next_token() {
                Some(t) if token.as_deref() != Some(t) => token = Some(t.to_string()),
                _ => break,
            }
        }
        out.sort();
        Ok(out)
    }
}

/// Reads one stream from its position to its current end, one page per piece.
pub fn read_job(
    remote: &Remote,
    job: &StreamJob,
    decoder: &mut Decoder<'_>,
    settings: &ReadSettings,
    shutdown: &AtomicBool,
    send: &mut dyn FnMut(Piece) -> bool,
) -> Result<(), SourceError> {
    let mut pos = job.start.clone();
    let mut expected = job.expected.clone();
    let limit = settings.piece_records.clamp(1, PAGE_EVENTS) as i32;
    loop {
        if shutdown.load(Ordering::Relaxed) {
            return Ok(());
        }
        let mut req = remote
            .logs
            .get_log_events()
            .log_group_name(&job.group)
            .log_stream_name(&job.stream)
            .start_from_head(true)
            .limit(limit);
        if !pos.token.is_empty() {
            req = req.next_token(&pos.token);
        } else if pos.ts > 0 {
            req = req.start_time(pos.ts);
        }
        let page = match remote.block_on(req.send()) {
            Ok(page) => page,
            Err(e) => {
                let refused_token =
                    !pos.token.is_empty() && e.as_service_error().is_some_and(|s| s.is_invalid_parameter_exception());
                if refused_token {
                    tracing::warn!(stream = %job.key, "the stored forward token was refused; reading again from the last event's timestamp (records are deduplicated)");
                    pos.token.clear();
                    continue;
                }
                return Err(SourceError::from_sdk(job.key.clone(), &e));
            }
        };
        let next = page.next_forward_token().unwrap_or_default().to_string();
        let events = page.events();
        if events.is_empty() && (next.is_empty() || next == pos.token) {
            return Ok(());
        }
        let mut piece = Piece { source: job.key.clone(), expected: expected.clone(), ..Piece::default() };
        for event in events {
            pos.events += 1;
            let ts = event.timestamp().unwrap_or(pos.ts);
            decoder.line(event.message().unwrap_or_default().as_bytes(), pos.events, ts.max(0) as u64, &mut piece);
            pos.ts = ts;
        }
        pos.token = next;
        piece.position = pos.encode();
        expected = Some(piece.position.clone());
        if !send(piece) {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = LogsUrl::parse("cloudwatch:///aws/bedrock/invocations").unwrap();
        assert_eq!((u.group.as_str(), u.stream.as_deref()), ("/aws/bedrock/invocations", None));
        assert_eq!(
            u.stream_key("aws/bedrock/modelinvocations"),
            "cloudwatch:///aws/bedrock/invocations?stream=aws/bedrock/modelinvocations"
        );
        let one = LogsUrl::parse(&u.stream_key("aws/bedrock/modelinvocations")).unwrap();
        assert_eq!(one.stream.as_deref(), Some("aws/bedrock/modelinvocations"));
        assert_eq!(one.to_string(), u.stream_key("aws/bedrock/modelinvocations"));
        assert!(LogsUrl::parse("cloudwatch://").is_err());
        assert!(LogsUrl::parse("cloudwatch://g?stream=").is_err());
        assert!(LogsUrl::parse("s3://b").is_err());
    }
}
