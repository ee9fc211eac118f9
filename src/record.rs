//! The model-invocation log record (schema 1.0) and its parser: bytes → record or reject reason.
//!
//! Any key order, unknown keys ignored, bodies skipped without being built. The same parser
//! recognises the containers people export records in (CloudWatch `GetLogEvents` /
//! `FilterLogEvents` responses, subscription payloads, Logs Insights results), so a caller can
//! unwrap them whatever file they arrive in.
//!
//! # Every billed dimension
//!
//! Besides tokens, a record carries what Bedrock bills in other units. The envelope is read
//! first; a body is looked at only when the envelope is silent and the record can hold the
//! answer, so a plain text record costs what it did before (a body's bytes are skipped once,
//! as ever; the few records that need it are scanned a second time, at their top levels only).
//!
//! | dimension | envelope | where the envelope is silent |
//! |---|---|---|
//! | images | `output.outputImagesCount` (the SPEC's name) | the length of the response body's `images` array (Titan and Nova Canvas, Stability), for records that report no output tokens |
//! | video seconds | `output.outputVideoDurationSeconds` (Panther's schema of these logs: a float; Nova Reel), `input.inputVideoDurationSeconds` | — |
//! | audio seconds | `input.inputAudioDurationSeconds`, `output.outputAudioDurationSeconds` | — |
//! | search units | — | rerank models (`…rerank…` in `modelId`): the body's `meta.billed_units.search_units` (Cohere's shape), else one unit per started 100 `documents` of the request (how Bedrock prices rerank queries), else 1 |
//! | 1 h cache writes | — (`cacheWriteInputTokenCount` is the total) | Anthropic bodies: `usage.cache_creation.ephemeral_1h_input_tokens` (a stream: its first `message.usage`); Converse: `usage.cacheDetails[]` entries with `ttl` `1h`. Unsaid: every cache write is 5 m |
//! | latency-optimized | `performanceConfig.latency` = `optimized` (Panther's schema; the runtime API's `standard` \| `optimized`) | a Converse request body's `performanceConfig.latency`, unless the response's says it was served `standard` (AWS: a request past the optimized quota is served, and billed, standard) |
//! | served region | `inferenceRegion` (kept as is) | — |
//!
//! Seconds may have a fraction, so they are kept as whole milliseconds (rounded half away from
//! zero). The audio fields and `inputVideoDurationSeconds` are named after the one documented
//! video field; no public record shows them yet, and a record without them reads as before.
//! Counts from a body obey the envelope's rules (a negative, fractional or absurd one
//! quarantines the record); a body of another shape than expected is simply silent. The 1 h
//! part is capped at the envelope's cache-write total, which stays the billed truth.

use std::borrow::Cow;
use std::str::FromStr;

use rust_decimal::prelude::ToPrimitive;
use rust_decimal::{Decimal, RoundingStrategy};

use crate::json::{Kind, Number, Scanner, SyntaxError};
use crate::quarantine::Reason;

/// Limits applied while parsing.
#[derive(Debug, Clone, Copy)]
pub struct ParseOptions {
    /// A token count above this is rejected as absurd; so is any other count (images, search
    /// units) above it, and a duration above this many seconds.
    pub max_token_count: u64,
    /// A record stamped after this instant (epoch seconds) is rejected as `bad_timestamp`:
    /// one bad clock must not move the dedup window, which is measured back from the newest
    /// hour counted. `None`: no bound.
    pub latest_timestamp: Option<i64>,
}

impl Default for ParseOptions {
    fn default() -> Self {
        ParseOptions { max_token_count: 10_000_000, latest_timestamp: None }
    }
}

/// The fields of one invocation record that metering needs, borrowed from the input.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogRecord<'a> {
    pub schema_version: Option<Cow<'a, str>>,
    pub timestamp: Cow<'a, str>,
    pub request_id: Cow<'a, str>,
    pub model_id: Cow<'a, str>,
    pub operation: Option<Cow<'a, str>>,
    pub account_id: Option<Cow<'a, str>>,
    pub region: Option<Cow<'a, str>>,
    pub identity_arn: Option<Cow<'a, str>>,
    pub error_code: Option<Cow<'a, str>>,
    pub input_tokens: Option<u64>,
    pub cache_read_tokens: Option<u64>,
    pub cache_write_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    /// The raw `requestMetadata` object, looked up lazily by the tenant resolver.
    pub request_metadata: Option<&'a [u8]>,
    /// The region that served the call (`inferenceRegion`); absent for in-region calls.
    pub inference_region: Option<Cow<'a, str>>,
    /// Images generated (see the module docs for where each dimension is read).
    pub images: Option<u64>,
    /// Seconds of video, in and out, in whole milliseconds.
    pub video_ms: Option<u64>,
    /// Seconds of audio, in and out, in whole milliseconds.
    pub audio_ms: Option<u64>,
    /// Rerank search units.
    pub search_units: Option<u64>,
    /// The part of `cache_write_tokens` written with a 1 h TTL (the rest is 5 m).
    pub cache_write_1h_tokens: Option<u64>,
    /// Sent with `performanceConfig.latency` = `optimized`.
    pub latency_optimized: bool,
}

impl LogRecord<'_> {
    /// True when the record carries no token count and no other billed quantity at all (a
    /// guardrail-blocked InvokeModel).
    pub fn no_usage_reported(&self) -> bool {
        self.input_tokens.is_none()
            && self.output_tokens.is_none()
            && self.cache_read_tokens.is_none()
            && self.cache_write_tokens.is_none()
            && self.images.is_none()
            && self.video_ms.is_none()
            && self.audio_ms.is_none()
            && self.search_units.is_none()
    }

    /// True when `inferenceRegion` names another region than the one called.
    pub fn served_elsewhere(&self) -> bool {
        match (self.region.as_deref(), self.inference_region.as_deref()) {
            (Some(called), Some(served)) => !served.is_empty() && served != called,
            _ => false,
        }
    }

    pub fn has_expected_schema(&self) -> bool {
        self.schema_version.as_deref().is_none_or(|v| v == "1.0")
    }
}

/// What one JSON value turned out to be.
// Records are the hot path: boxing the large variant would allocate once per record.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Parsed<'a> {
    Record(LogRecord<'a>),
    /// A container of records; its elements are unwrapped by [`Container::elements`].
    Container(Container<'a>),
}

/// A JSON value that wraps invocation records.
#[derive(Debug, Clone, Copy)]
pub enum Container<'a> {
    /// `{"events":[{"timestamp","message","ingestionTime"}…]}` or a subscription payload's
    /// `logEvents`: each element holds a record in `message`.
    Events(&'a [u8]),
    /// A Logs Insights response's `results`: rows of `{"field","value"}` pairs.
    InsightsResults(&'a [u8]),
    /// A single event wrapper: `message` / `@message` holds the record (string or object).
    Message(&'a [u8]),
    /// A top-level array: records, events or Insights rows.
    Array(&'a [u8]),
}

/// A reject reason with a human detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    pub reason: Reason,
    pub detail: String,
}

impl Reject {
    pub fn new(reason: Reason, detail: impl Into<String>) -> Reject {
        Reject { reason, detail: detail.into() }
    }
}

fn syntax(e: SyntaxError) -> Reject {
    Reject::new(Reason::MalformedJson, e.to_string())
}

fn wrong_type(field: &str, kind: Kind) -> Reject {
    Reject::new(Reason::WrongType, format!("field `{field}` is {}", kind_name(kind)))
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Object => "an object",
        Kind::Array => "an array",
        Kind::String => "a string",
        Kind::Number => "a number",
        Kind::Bool => "a boolean",
        Kind::Null => "null",
    }
}

/// Parses one JSON value: a record, or a container of records.
pub fn parse<'a>(bytes: &'a [u8], opts: &ParseOptions) -> Result<Parsed<'a>, Reject> {
    parse_from(Scanner::new(bytes), opts)
}

/// [`parse`] for text already checked to be UTF-8 (faster: strings are not checked again).
pub fn parse_str<'a>(text: &'a str, opts: &ParseOptions) -> Result<Parsed<'a>, Reject> {
    parse_from(Scanner::new_str(text), opts)
}

fn parse_from<'a>(mut s: Scanner<'a>, opts: &ParseOptions) -> Result<Parsed<'a>, Reject> {
    let parsed = match s.peek_kind().map_err(|_| Reject::new(Reason::NonJson, "not a JSON value"))? {
        Kind::Object => parse_object(&mut s, opts)?,
        Kind::Array => Parsed::Container(Container::Array(s.raw_value().map_err(syntax)?)),
        other => {
            // A scalar is only peeked at by its first byte: `not json` starts like `null`.
            return Err(match s.skip_value() {
                Ok(()) if s.at_end() => {
                    Reject::new(Reason::NotARecord, format!("top-level value is {}", kind_name(other)))
                }
                _ => Reject::new(Reason::NonJson, "not a JSON value"),
            });
        }
    };
    if !s.at_end() {
        return Err(Reject::new(Reason::MalformedJson, format!("unexpected data after the value at byte {}", s.pos())));
    }
    Ok(parsed)
}

/// Parses one value that must be a record.
pub fn parse_record<'a>(bytes: &'a [u8], opts: &ParseOptions) -> Result<LogRecord<'a>, Reject> {
    only_record(parse(bytes, opts)?)
}

/// [`parse_record`] for text already checked to be UTF-8.
pub fn parse_record_str<'a>(text: &'a str, opts: &ParseOptions) -> Result<LogRecord<'a>, Reject> {
    only_record(parse_str(text, opts)?)
}

fn only_record(parsed: Parsed<'_>) -> Result<LogRecord<'_>, Reject> {
    match parsed {
        Parsed::Record(r) => Ok(r),
        Parsed::Container(_) => Err(Reject::new(Reason::NotARecord, "a container where a record was expected")),
    }
}

fn opt_string<'a>(s: &mut Scanner<'a>, field: &str) -> Result<Option<Cow<'a, str>>, Reject> {
    match s.peek_kind().map_err(syntax)? {
        Kind::String => s.string().map(Some).map_err(syntax),
        Kind::Null => {
            s.skip_value().map_err(syntax)?;
            Ok(None)
        }
        k => Err(wrong_type(field, k)),
    }
}

fn opt_count(s: &mut Scanner<'_>, field: &str, opts: &ParseOptions) -> Result<Option<u64>, Reject> {
    match s.peek_kind().map_err(syntax)? {
        Kind::Number => match s.number().map_err(syntax)? {
            Number::Integer(n) if n <= opts.max_token_count => Ok(Some(n)),
            Number::Integer(n) => Err(Reject::new(
                Reason::AbsurdCount,
                format!("field `{field}` is {n}, above the ceiling of {}", opts.max_token_count),
            )),
            Number::TooLarge => {
                Err(Reject::new(Reason::AbsurdCount, format!("field `{field}` does not fit in 64 bits")))
            }
            Number::Negative => Err(Reject::new(Reason::NegativeCount, format!("field `{field}` is negative"))),
            Number::Fractional => Err(Reject::new(Reason::WrongType, format!("field `{field}` is not a whole number"))),
        },
        Kind::Null => {
            s.skip_value().map_err(syntax)?;
            Ok(None)
        }
        k => Err(wrong_type(field, k)),
    }
}

/// A duration in seconds (a JSON number, a fraction allowed) as whole milliseconds, rounded
/// half away from zero; refused like a count when negative, absurd or not a number.
fn opt_millis(s: &mut Scanner<'_>, field: &str, opts: &ParseOptions) -> Result<Option<u64>, Reject> {
    match s.peek_kind().map_err(syntax)? {
        Kind::Number => {
            let raw = s.raw_value().map_err(syntax)?;
            // The scanner takes a number's bytes from `-+.eE0-9` only, so they are ASCII.
            let text = std::str::from_utf8(raw).unwrap_or_default();
            let seconds =
                if text.contains(['e', 'E']) { Decimal::from_scientific(text) } else { Decimal::from_str(text) }
                    .map_err(|_| {
                        Reject::new(Reason::AbsurdCount, format!("field `{field}` is not a number tally can hold"))
                    })?;
            if seconds.is_sign_negative() && !seconds.is_zero() {
                return Err(Reject::new(Reason::NegativeCount, format!("field `{field}` is negative")));
            }
            let ceiling = opts.max_token_count;
            seconds
                .checked_mul(Decimal::ONE_THOUSAND)
                .map(|ms| ms.round_dp_with_strategy(0, RoundingStrategy::MidpointAwayFromZero))
                .and_then(|ms| ms.to_u64())
                .filter(|&ms| ms <= ceiling.saturating_mul(1000))
                .map(Some)
                .ok_or_else(|| {
                    Reject::new(
                        Reason::AbsurdCount,
                        format!("field `{field}` is {text}, above the ceiling of {ceiling} s"),
                    )
                })
        }
        Kind::Null => {
            s.skip_value().map_err(syntax)?;
            Ok(None)
        }
        k => Err(wrong_type(field, k)),
    }
}

/// `performanceConfig`: `{"latency": "optimized" | "standard"}`; true for `optimized`. In the
/// envelope a wrong type is a broken record; in a request body (`strict` false), the model's
/// own business, and silent.
fn opt_latency(s: &mut Scanner<'_>, field: &str, strict: bool) -> Result<Option<bool>, Reject> {
    match s.peek_kind().map_err(syntax)? {
        Kind::Object => {
            s.begin_object().map_err(syntax)?;
            let mut optimized = None;
            let mut f = true;
            while let Some(k) = s.next_key(&mut f).map_err(syntax)? {
                match (k.as_ref(), s.peek_kind().map_err(syntax)?) {
                    ("latency", Kind::String) => optimized = Some(s.string().map_err(syntax)? == "optimized"),
                    ("latency", Kind::Null) => s.skip_value().map_err(syntax)?,
                    ("latency", k) if strict => return Err(wrong_type(&format!("{field}.latency"), k)),
                    _ => s.skip_value().map_err(syntax)?,
                }
            }
            Ok(optimized)
        }
        Kind::Null => {
            s.skip_value().map_err(syntax)?;
            Ok(None)
        }
        k if strict => Err(wrong_type(field, k)),
        _ => {
            s.skip_value().map_err(syntax)?;
            Ok(None)
        }
    }
}

/// What an `input.inputBodyJson` tells beyond the envelope, read while it is skipped (its top
/// level only): a Converse request's `performanceConfig`, and a rerank request's `documents`.
#[derive(Default)]
struct RequestBody<'a> {
    latency_optimized: Option<bool>,
    documents: Option<&'a [u8]>,
}

fn request_body<'a>(s: &mut Scanner<'a>) -> Result<RequestBody<'a>, Reject> {
    let mut body = RequestBody::default();
    if s.peek_kind().map_err(syntax)? != Kind::Object {
        s.skip_value().map_err(syntax)?;
        return Ok(body);
    }
    s.begin_object().map_err(syntax)?;
    let mut f = true;
    while let Some(k) = s.next_key(&mut f).map_err(syntax)? {
        match k.as_ref() {
            "performanceConfig" => body.latency_optimized = opt_latency(s, "performanceConfig", false)?,
            "documents" => body.documents = Some(s.raw_value().map_err(syntax)?),
            _ => s.skip_value().map_err(syntax)?,
        }
    }
    Ok(body)
}

/// Enters a nested object field, or reports its wrong type. Returns false for `null`.
fn enter_object(s: &mut Scanner<'_>, field: &str) -> Result<bool, Reject> {
    match s.peek_kind().map_err(syntax)? {
        Kind::Object => {
            s.begin_object().map_err(syntax)?;
            Ok(true)
        }
        Kind::Null => {
            s.skip_value().map_err(syntax)?;
            Ok(false)
        }
        k => Err(wrong_type(field, k)),
    }
}

#[derive(Default)]
struct Seen<'a> {
    record_fields: bool,
    timestamp: Option<Cow<'a, str>>,
    request_id: Option<Cow<'a, str>>,
    model_id: Option<Cow<'a, str>>,
    events: Option<&'a [u8]>,
    results: Option<&'a [u8]>,
    message: Option<&'a [u8]>,
}

fn parse_object<'a>(s: &mut Scanner<'a>, opts: &ParseOptions) -> Result<Parsed<'a>, Reject> {
    s.begin_object().map_err(syntax)?;
    let mut rec = LogRecord::default();
    let mut seen = Seen::default();
    let mut dims = Dimensions::default();
    let mut first = true;
    while let Some(key) = s.next_key(&mut first).map_err(syntax)? {
        match key.as_ref() {
            "schemaType" => {
                seen.record_fields = true;
                opt_string(s, "schemaType")?;
            }
            "schemaVersion" => rec.schema_version = opt_string(s, "schemaVersion")?,
            "timestamp" => match s.peek_kind().map_err(syntax)? {
                // A CloudWatch event's `timestamp` is epoch milliseconds; a record's is a string.
                Kind::Number => s.skip_value().map_err(syntax)?,
                _ => seen.timestamp = opt_string(s, "timestamp")?,
            },
            "requestId" => {
                seen.record_fields = true;
                seen.request_id = opt_string(s, "requestId")?;
            }
            "modelId" => {
                seen.record_fields = true;
                seen.model_id = opt_string(s, "modelId")?;
            }
            "operation" => {
                seen.record_fields = true;
                rec.operation = opt_string(s, "operation")?;
            }
            "accountId" => rec.account_id = opt_string(s, "accountId")?,
            "region" => rec.region = opt_string(s, "region")?,
            "inferenceRegion" => rec.inference_region = opt_string(s, "inferenceRegion")?,
            "performanceConfig" => dims.latency_optimized = opt_latency(s, "performanceConfig", true)?,
            "errorCode" => rec.error_code = opt_string(s, "errorCode")?,
            "identity" => {
                if enter_object(s, "identity")? {
                    let mut f = true;
                    while let Some(k) = s.next_key(&mut f).map_err(syntax)? {
                        if k == "arn" {
                            rec.identity_arn = opt_string(s, "identity.arn")?;
                        } else {
                            s.skip_value().map_err(syntax)?;
                        }
                    }
                }
            }
            "input" => {
                seen.record_fields = true;
                if enter_object(s, "input")? {
                    let mut f = true;
                    while let Some(k) = s.next_key(&mut f).map_err(syntax)? {
                        match k.as_ref() {
                            "inputTokenCount" => rec.input_tokens = opt_count(s, "input.inputTokenCount", opts)?,
                            "cacheReadInputTokenCount" => {
                                rec.cache_read_tokens = opt_count(s, "input.cacheReadInputTokenCount", opts)?
                            }
                            "cacheWriteInputTokenCount" => {
                                rec.cache_write_tokens = opt_count(s, "input.cacheWriteInputTokenCount", opts)?
                            }
                            "inputBodyJson" => dims.request = request_body(s)?,
                            "inputVideoDurationSeconds" => {
                                dims.video_in = opt_millis(s, "input.inputVideoDurationSeconds", opts)?
                            }
                            "inputAudioDurationSeconds" => {
                                dims.audio_in = opt_millis(s, "input.inputAudioDurationSeconds", opts)?
                            }
                            _ => s.skip_value().map_err(syntax)?,
                        }
                    }
                }
            }
            "output" => {
                seen.record_fields = true;
                if enter_object(s, "output")? {
                    let mut f = true;
                    while let Some(k) = s.next_key(&mut f).map_err(syntax)? {
                        match k.as_ref() {
                            "outputTokenCount" => rec.output_tokens = opt_count(s, "output.outputTokenCount", opts)?,
                            "outputBodyJson" => dims.response = Some(s.raw_value().map_err(syntax)?),
                            "outputImagesCount" => rec.images = opt_count(s, "output.outputImagesCount", opts)?,
                            "outputVideoDurationSeconds" => {
                                dims.video_out = opt_millis(s, "output.outputVideoDurationSeconds", opts)?
                            }
                            "outputAudioDurationSeconds" => {
                                dims.audio_out = opt_millis(s, "output.outputAudioDurationSeconds", opts)?
                            }
                            _ => s.skip_value().map_err(syntax)?,
                        }
                    }
                }
            }
            "requestMetadata" => match s.peek_kind().map_err(syntax)? {
                Kind::Object => {
                    let raw = s.raw_value().map_err(syntax)?;
                    check_metadata(raw)?;
                    rec.request_metadata = Some(raw);
                }
                Kind::Null => s.skip_value().map_err(syntax)?,
                k => return Err(wrong_type("requestMetadata", k)),
            },
            "events" | "logEvents" => seen.events = Some(s.raw_value().map_err(syntax)?),
            "results" => seen.results = Some(s.raw_value().map_err(syntax)?),
            "message" | "@message" => seen.message = Some(s.raw_value().map_err(syntax)?),
            _ => s.skip_value().map_err(syntax)?,
        }
    }

    if !seen.record_fields {
        if let Some(events) = seen.events {
            return Ok(Parsed::Container(Container::Events(events)));
        }
        if let Some(results) = seen.results {
            return Ok(Parsed::Container(Container::InsightsResults(results)));
        }
        if let Some(message) = seen.message {
            return Ok(Parsed::Container(Container::Message(message)));
        }
        return Err(Reject::new(Reason::NotARecord, "an object with none of the invocation-log fields"));
    }
    rec.timestamp = seen.timestamp.ok_or_else(|| Reject::new(Reason::MissingTimestamp, "no `timestamp`"))?;
    rec.request_id = seen
        .request_id
        .filter(|r| !r.trim().is_empty())
        .ok_or_else(|| Reject::new(Reason::MissingRequestId, "no `requestId`"))?;
    rec.model_id = seen
        .model_id
        .filter(|m| !m.trim().is_empty())
        .ok_or_else(|| Reject::new(Reason::MissingModelId, "no `modelId`"))?;
    dims.finish(&mut rec, opts)?;
    Ok(Parsed::Record(rec))
}

/// What a record says of its other billed dimensions besides the fields stored directly, kept
/// until the whole envelope is read: only then is it known whether a body must be looked at.
#[derive(Default)]
struct Dimensions<'a> {
    /// The envelope's `performanceConfig`.
    latency_optimized: Option<bool>,
    request: RequestBody<'a>,
    /// `output.outputBodyJson`, raw.
    response: Option<&'a [u8]>,
    video_in: Option<u64>,
    video_out: Option<u64>,
    audio_in: Option<u64>,
    audio_out: Option<u64>,
}

/// A rerank query is billed per started 100 documents (Cohere's "search unit", Bedrock's
/// "query").
const DOCUMENTS_PER_SEARCH_UNIT: u64 = 100;

impl Dimensions<'_> {
    fn finish(self, rec: &mut LogRecord<'_>, opts: &ParseOptions) -> Result<(), Reject> {
        let sum = |a: Option<u64>, b: Option<u64>| match (a, b) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0) + b.unwrap_or(0)),
        };
        rec.video_ms = sum(self.video_in, self.video_out);
        rec.audio_ms = sum(self.audio_in, self.audio_out);
        // A request that asked for latency-optimized inference is billed at standard rates when
        // it was served standard (its quota used up); the response says which it was.
        rec.latency_optimized = match (self.latency_optimized, self.request.latency_optimized) {
            (Some(envelope), _) => envelope,
            (None, Some(true)) => self.response.and_then(served_latency).unwrap_or(true),
            (None, _) => false,
        };
        let failed = rec.error_code.as_deref().is_some_and(|c| !c.is_empty());
        if let (Some(total), Some(body)) = (rec.cache_write_tokens.filter(|&n| n > 0), self.response) {
            rec.cache_write_1h_tokens = cache_write_1h(body, opts)?.map(|n| n.min(total));
        }
        if rec.images.is_none() && !failed && rec.output_tokens.unwrap_or(0) == 0 {
            rec.images = self.response.and_then(images_in_body).filter(|&n| n > 0);
        }
        if rec.search_units.is_none() && !failed && rec.model_id.contains("rerank") {
            let billed = self.response.map(|body| billed_search_units(body, opts)).transpose()?.flatten();
            let documents = self.request.documents.map(|d| count_elements(d).div_ceil(DOCUMENTS_PER_SEARCH_UNIT));
            rec.search_units = Some(billed.or(documents).unwrap_or(1).max(1));
        }
        Ok(())
    }
}

/// A count read from a body at `path` (its raw value), by the envelope's rules.
fn body_count(raw: &[u8], path: &str, opts: &ParseOptions) -> Result<Option<u64>, Reject> {
    opt_count(&mut Scanner::new(raw), path, opts)
}

/// The 1 h cache writes a response body reports; `None` when it says nothing of TTLs.
fn cache_write_1h(body: &[u8], opts: &ParseOptions) -> Result<Option<u64>, Reject> {
    let usage = match body.first() {
        Some(b'{') => find_field(body, &["usage"]),
        // InvokeModelWithResponseStream: the chunks; `message_start`, the first, holds the
        // message's usage with its cache writes.
        Some(b'[') => {
            first_element_with(body, |chunk| find_field(chunk, &["message"]).and_then(|m| find_field(m, &["usage"])))
        }
        _ => None,
    };
    let Some(usage) = usage.filter(|u| u.first() == Some(&b'{')) else { return Ok(None) };
    if let Some(creation) = find_field(usage, &["cache_creation"]).filter(|c| c.first() == Some(&b'{')) {
        let Some(raw) = find_field(creation, &["ephemeral_1h_input_tokens"]) else { return Ok(Some(0)) };
        return body_count(raw, "output.outputBodyJson.usage.cache_creation.ephemeral_1h_input_tokens", opts)
            .map(|n| Some(n.unwrap_or(0)));
    }
    let Some(details) = find_field(usage, &["cacheDetails"]).filter(|d| d.first() == Some(&b'[')) else {
        return Ok(None);
    };
    let mut hour = 0u64;
    let mut s = Scanner::new(details);
    s.begin_array().map_err(syntax)?;
    let mut first = true;
    while s.next_element(&mut first).map_err(syntax)? {
        let detail = s.raw_value().map_err(syntax)?;
        let ttl = find_field(detail, &["ttl"]).and_then(|t| Scanner::new(t).string().ok());
        if ttl.as_deref() == Some("1h") {
            if let Some(raw) = find_field(detail, &["inputTokens"]) {
                let n = body_count(raw, "output.outputBodyJson.usage.cacheDetails[].inputTokens", opts)?;
                hour = hour.saturating_add(n.unwrap_or(0));
            }
        }
    }
    Ok(Some(hour))
}

/// Whether a Converse response says it was served latency-optimized (`performanceConfig`).
fn served_latency(body: &[u8]) -> Option<bool> {
    let latency = find_field(body, &["performanceConfig"]).and_then(|c| find_field(c, &["latency"]))?;
    Some(Scanner::new(latency).string().ok()? == "optimized")
}

/// How many images a response body holds: its top-level `images` array.
fn images_in_body(body: &[u8]) -> Option<u64> {
    find_field(body, &["images"]).filter(|a| a.first() == Some(&b'[')).map(count_elements)
}

/// The search units a rerank response reports (`meta.billed_units.search_units`).
fn billed_search_units(body: &[u8], opts: &ParseOptions) -> Result<Option<u64>, Reject> {
    let raw = find_field(body, &["meta"])
        .and_then(|m| find_field(m, &["billed_units"]))
        .and_then(|b| find_field(b, &["search_units"]));
    match raw {
        Some(raw) => body_count(raw, "output.outputBodyJson.meta.billed_units.search_units", opts),
        None => Ok(None),
    }
}

/// The number of elements of a raw JSON array (0 for anything else).
fn count_elements(array: &[u8]) -> u64 {
    let mut s = Scanner::new(array);
    let mut n = 0;
    let mut first = true;
    if s.begin_array().is_err() {
        return 0;
    }
    while let Ok(true) = s.next_element(&mut first) {
        if s.skip_value().is_err() {
            break;
        }
        n += 1;
    }
    n
}

/// The first element of a raw JSON array for which `pick` finds something.
fn first_element_with<'a>(array: &'a [u8], pick: impl Fn(&'a [u8]) -> Option<&'a [u8]>) -> Option<&'a [u8]> {
    let mut s = Scanner::new(array);
    let mut first = true;
    s.begin_array().ok()?;
    while let Ok(true) = s.next_element(&mut first) {
        if let Some(found) = pick(s.raw_value().ok()?) {
            return Some(found);
        }
    }
    None
}

/// Checks the strings of a `requestMetadata` object strictly (its values name tenants): a
/// raw control character in one is a broken record, quarantined, never part of a tenant id.
fn check_metadata(raw: &[u8]) -> Result<(), Reject> {
    let mut s = Scanner::new(raw);
    s.begin_object().map_err(syntax)?;
    let mut first = true;
    while s.next_key(&mut first).map_err(syntax)?.is_some() {
        match s.peek_kind().map_err(syntax)? {
            Kind::String => {
                drop(s.string().map_err(|e| Reject::new(Reason::MalformedJson, format!("requestMetadata: {e}")))?)
            }
            _ => s.skip_value().map_err(syntax)?,
        }
    }
    Ok(())
}

/// One element of a container: where it starts (relative to the container's bytes) and the
/// record text it holds.
#[derive(Debug)]
pub struct Element<'a> {
    pub offset: usize,
    pub body: ElementBody<'a>,
}

#[derive(Debug)]
pub enum ElementBody<'a> {
    /// Raw JSON of a record (an object, or something to parse again).
    Json(&'a [u8]),
    /// A record that arrived as a JSON string (a CloudWatch `message`), already unescaped.
    Text(String),
    /// An element that holds no record.
    Bad(Reject),
    /// An element that is not a record and is not counted as one: a Logs Insights cell other
    /// than `@message` (`@timestamp`, `@ptr`…) in a flattened list of cells.
    Skip,
}

impl<'a> Container<'a> {
    /// The records inside, in order. A malformed container is one bad element.
    pub fn elements(&self) -> Vec<Element<'a>> {
        let mut out = Vec::new();
        let (bytes, kind) = match *self {
            Container::Events(b) => (b, ElementKind::Event),
            Container::InsightsResults(b) => (b, ElementKind::InsightsRow),
            Container::Array(b) => (b, ElementKind::Any),
            Container::Message(b) => {
                out.push(Element { offset: 0, body: message_body(b) });
                return out;
            }
        };
        let mut s = Scanner::new(bytes);
        let mut first = true;
        if let Err(e) = s.begin_array() {
            out.push(Element { offset: 0, body: ElementBody::Bad(syntax(e)) });
            return out;
        }
        loop {
            match s.next_element(&mut first) {
                Ok(false) => break,
                Ok(true) => {}
                Err(e) => {
                    out.push(Element { offset: s.pos(), body: ElementBody::Bad(syntax(e)) });
                    break;
                }
            }
            let offset = s.pos();
            let raw = match s.raw_value() {
                Ok(raw) => raw,
                Err(e) => {
                    out.push(Element { offset, body: ElementBody::Bad(syntax(e)) });
                    break;
                }
            };
            out.push(Element { offset, body: element_body(raw, kind) });
        }
        out
    }
}

/// What the elements of a container are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElementKind {
    /// CloudWatch events (`events`, `logEvents`): the record is in `message`.
    Event,
    /// Logs Insights `results`: rows of cells, or one flattened list of cells.
    InsightsRow,
    /// A top-level array: records, events, Insights rows or cells.
    Any,
}

/// What one element of a container holds.
pub fn element_body(raw: &[u8], kind: ElementKind) -> ElementBody<'_> {
    match (kind, raw.first()) {
        (ElementKind::InsightsRow | ElementKind::Any, Some(b'[')) => insights_row(raw),
        (ElementKind::InsightsRow | ElementKind::Any, Some(b'{')) => match insights_cell(raw) {
            Some(body) => body,
            None => ElementBody::Json(raw),
        },
        (ElementKind::Event, Some(b'{')) => match find_field(raw, &["message", "@message"]) {
            Some(m) => message_body(m),
            None => ElementBody::Bad(Reject::new(Reason::NotARecord, "event without `message`")),
        },
        (ElementKind::Event, _) => ElementBody::Bad(Reject::new(Reason::NotARecord, "event is not an object")),
        _ => ElementBody::Json(raw),
    }
}

/// A `message` is the record as a JSON string (real CloudWatch) or as an object (hand-edited
/// exports). A string that is not JSON, like the permission-check event, is passed on as text
/// so the caller classifies it.
fn message_body(raw: &[u8]) -> ElementBody<'_> {
    match raw.first() {
        Some(b'"') => match crate::json::unescape_string(raw) {
            Ok(text) => ElementBody::Text(text),
            Err(e) => ElementBody::Bad(syntax(e)),
        },
        Some(b'{') => ElementBody::Json(raw),
        _ => ElementBody::Bad(Reject::new(Reason::WrongType, "field `message` is neither a string nor an object")),
    }
}

/// A Logs Insights row: `[{"field":"@timestamp","value":…},{"field":"@message","value":"…"}]`.
fn insights_row(raw: &[u8]) -> ElementBody<'_> {
    let mut s = Scanner::new(raw);
    let mut first = true;
    if s.begin_array().is_err() {
        return ElementBody::Bad(Reject::new(Reason::MalformedJson, "bad Insights row"));
    }
    while let Ok(true) = s.next_element(&mut first) {
        let Ok(cell) = s.raw_value() else { break };
        let field = find_field(cell, &["field"]).and_then(|f| Scanner::new(f).string().ok());
        if field.as_deref() == Some("@message") {
            if let Some(value) = find_field(cell, &["value"]) {
                return message_body(value);
            }
        }
    }
    ElementBody::Bad(Reject::new(Reason::NotARecord, "Insights row without an `@message` field"))
}

/// A cell of a flattened Logs Insights result (`{"field":"@message","value":…}`, as
/// PowerShell's `ConvertTo-Json` writes the rows' cells one after another): the record of an
/// `@message` cell, [`ElementBody::Skip`] for any other field; `None` when `raw` is no cell.
fn insights_cell(raw: &[u8]) -> Option<ElementBody<'_>> {
    let field = find_field(raw, &["field"])?;
    let field = Scanner::new(field).string().ok()?;
    if field != "@message" {
        return Some(ElementBody::Skip);
    }
    Some(match find_field(raw, &["value"]) {
        Some(value) => message_body(value),
        None => ElementBody::Bad(Reject::new(Reason::NotARecord, "`@message` cell without a `value`")),
    })
}

/// The raw value of the first of `names` present in an object.
fn find_field<'a>(object: &'a [u8], names: &[&str]) -> Option<&'a [u8]> {
    let mut s = Scanner::new(object);
    s.begin_object().ok()?;
    let mut first = true;
    while let Some(k) = s.next_key(&mut first).ok()? {
        if names.contains(&k.as_ref()) {
            return s.raw_value().ok();
        }
        s.skip_value().ok()?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<LogRecord<'_>, Reject> {
        parse_record(text.as_bytes(), &ParseOptions::default())
    }

    fn reason(text: &str) -> Reason {
        check(text).expect_err("should be rejected").reason
    }

    const BASE: &str = r#""timestamp":"2025-03-11T00:38:02Z","requestId":"r1","modelId":"amazon.nova-lite-v1:0""#;

    #[test]
    fn reads_counts_in_any_key_order_and_skips_bodies() {
        let text = format!(
            r#"{{"output":{{"outputBodyJson":[{{"a":"}}"}}],"outputTokenCount":38}},"input":{{"cacheWriteInputTokenCount":5,"inputBodyJson":{{"x":[1,2,{{}}]}},"inputTokenCount":4}},{BASE},"schemaType":"ModelInvocationLog"}}"#
        );
        let r = check(&text).unwrap();
        assert_eq!(
            (r.input_tokens, r.output_tokens, r.cache_write_tokens, r.cache_read_tokens),
            (Some(4), Some(38), Some(5), None)
        );
        assert!(!r.no_usage_reported());
    }

    #[test]
    fn guardrail_blocked_record_has_no_usage() {
        let text = format!(r#"{{{BASE},"input":{{"inputContentType":"application/json"}},"output":{{}}}}"#);
        let r = check(&text).unwrap();
        assert!(r.no_usage_reported());
    }

    #[test]
    fn bad_fields_have_their_own_reasons() {
        assert_eq!(reason(r#"{"requestId":"r","modelId":"m"}"#), Reason::MissingTimestamp);
        assert_eq!(reason(r#"{"timestamp":"2025-01-01T00:00:00Z","modelId":"m"}"#), Reason::MissingRequestId);
        assert_eq!(
            reason(r#"{"timestamp":"2025-01-01T00:00:00Z","requestId":"","modelId":"m"}"#),
            Reason::MissingRequestId
        );
        assert_eq!(reason(r#"{"timestamp":"2025-01-01T00:00:00Z","requestId":"r"}"#), Reason::MissingModelId);
        assert_eq!(reason(&format!(r#"{{{BASE},"input":{{"inputTokenCount":"12"}}}}"#)), Reason::WrongType);
        assert_eq!(reason(&format!(r#"{{{BASE},"input":{{"inputTokenCount":-1}}}}"#)), Reason::NegativeCount);
        assert_eq!(reason(&format!(r#"{{{BASE},"output":{{"outputTokenCount":99999999999}}}}"#)), Reason::AbsurdCount);
        assert_eq!(reason(&format!(r#"{{{BASE},"input":{{"inputTokenCount":1.5}}}}"#)), Reason::WrongType);
        assert_eq!(reason(&format!(r#"{{{BASE},"modelId":7}}"#)), Reason::WrongType);
        assert_eq!(reason(&format!(r#"{{{BASE},"input":{{"inputTokenCount":3}}"#)), Reason::MalformedJson);
        assert_eq!(reason("Permissions are correctly set for Amazon Bedrock logs."), Reason::NonJson);
        // Text that starts like a JSON literal or number is still not JSON.
        for text in ["not json", "nothing here", "true story", "-- log rotated --", "2025-11-05 error"] {
            assert_eq!(reason(text), Reason::NonJson, "{text}");
        }
        assert_eq!(reason("null"), Reason::NotARecord);
        assert_eq!(reason(" 42 "), Reason::NotARecord);
    }

    #[test]
    fn other_dimensions_come_from_the_envelope() {
        let text = format!(
            r#"{{{BASE},"region":"us-east-1","inferenceRegion":"us-west-2","performanceConfig":{{"latency":"optimized"}},"input":{{"inputVideoDurationSeconds":2,"inputAudioDurationSeconds":12.5}},"output":{{"outputImagesCount":3,"outputVideoDurationSeconds":6.0005,"outputAudioDurationSeconds":1e1}}}}"#
        );
        let r = check(&text).unwrap();
        assert_eq!(r.inference_region.as_deref(), Some("us-west-2"));
        assert!(r.served_elsewhere() && r.latency_optimized);
        assert_eq!((r.images, r.video_ms, r.audio_ms, r.search_units), (Some(3), Some(8001), Some(22500), None));
        assert!(!r.no_usage_reported(), "images and seconds are usage");

        let plain = format!(
            r#"{{{BASE},"region":"us-east-1","inferenceRegion":"us-east-1","performanceConfig":{{"latency":"standard"}}}}"#
        );
        let plain = check(&plain).unwrap();
        assert!(!plain.served_elsewhere() && !plain.latency_optimized);
        assert_eq!(
            (plain.images, plain.video_ms, plain.audio_ms, plain.cache_write_1h_tokens),
            (None, None, None, None)
        );
        assert!(plain.no_usage_reported());
    }

    #[test]
    fn body_usage_splits_cache_writes_by_ttl() {
        let with = |cache_write: u64, body: &str| {
            let text = format!(
                r#"{{{BASE},"input":{{"inputTokenCount":3,"cacheWriteInputTokenCount":{cache_write}}},"output":{{"outputBodyJson":{body},"outputTokenCount":9}}}}"#
            );
            check(&text).unwrap().cache_write_1h_tokens
        };
        let anthropic = r#"{"id":"msg_1","usage":{"input_tokens":3,"cache_creation_input_tokens":500,"cache_creation":{"ephemeral_5m_input_tokens":200,"ephemeral_1h_input_tokens":300},"output_tokens":9}}"#;
        assert_eq!(with(500, anthropic), Some(300));
        // The envelope's total is the billed truth: the 1 h part never passes it.
        assert_eq!(with(250, anthropic), Some(250));
        // Not read at all when the envelope has no cache writes.
        assert_eq!(with(0, anthropic), None);
        let stream = r#"[{"type":"message_start","message":{"id":"m","usage":{"input_tokens":3,"cache_creation":{"ephemeral_5m_input_tokens":0,"ephemeral_1h_input_tokens":31814}}}},{"type":"content_block_delta","delta":{"text":"x"}},{"type":"message_stop","amazon-bedrock-invocationMetrics":{"inputTokenCount":3,"outputTokenCount":9}}]"#;
        assert_eq!(with(31814, stream), Some(31814));
        let converse = r#"{"output":{"message":{"role":"assistant","content":[{"text":"hi"}]}},"usage":{"inputTokens":3,"outputTokens":9,"cacheWriteInputTokens":700,"cacheDetails":[{"ttl":"1h","inputTokens":600},{"ttl":"5m","inputTokens":100}]}}"#;
        assert_eq!(with(700, converse), Some(600));
        assert_eq!(with(5, r#"{"usage":{"input_tokens":3,"cache_creation_input_tokens":5}}"#), None);
        assert_eq!(with(5, r#"{"usage":{"cache_creation":{"ephemeral_5m_input_tokens":5}}}"#), Some(0));
        assert_eq!(with(5, r#""no body""#), None);
        assert_eq!(
            reason(&format!(
                r#"{{{BASE},"input":{{"cacheWriteInputTokenCount":5}},"output":{{"outputBodyJson":{{"usage":{{"cache_creation":{{"ephemeral_1h_input_tokens":-5}}}}}}}}}}"#
            )),
            Reason::NegativeCount
        );
    }

    #[test]
    fn images_and_search_units_from_the_body_where_the_envelope_is_silent() {
        let titan = format!(
            r#"{{{BASE},"modelId":"amazon.titan-image-generator-v2:0","output":{{"outputBodyJson":{{"images":["iVBORw0KGgo=","iVBORw0KGgo="],"error":null}}}}}}"#
        );
        assert_eq!(check(&titan).unwrap().images, Some(2));
        // The envelope wins over the body.
        let counted = titan.replace(r#""error":null}"#, r#""error":null},"outputImagesCount":1"#);
        assert_eq!(check(&counted).unwrap().images, Some(1));
        let text_model = format!(r#"{{{BASE},"output":{{"outputBodyJson":{{"images":["x"]}},"outputTokenCount":5}}}}"#);
        assert_eq!(check(&text_model).unwrap().images, None, "a text response is not searched for images");

        let rerank = |docs: usize, response: &str| {
            let documents: Vec<String> = (0..docs).map(|i| format!("\"doc {i}\"")).collect();
            let text = format!(
                r#"{{{BASE},"modelId":"cohere.rerank-v3-5:0","input":{{"inputBodyJson":{{"query":"q","documents":[{}],"api_version":2}}}},"output":{{"outputBodyJson":{response}}}}}"#,
                documents.join(",")
            );
            check(&text).unwrap().search_units
        };
        let results = r#"{"results":[{"index":0,"relevance_score":0.9}]}"#;
        assert_eq!((rerank(4, results), rerank(100, results), rerank(250, results)), (Some(1), Some(1), Some(3)));
        assert_eq!(rerank(4, r#"{"results":[],"meta":{"billed_units":{"search_units":2}}}"#), Some(2));
        assert_eq!(check(&format!(r#"{{{BASE},"modelId":"amazon.rerank-v1:0"}}"#)).unwrap().search_units, Some(1));
        let failed = format!(r#"{{{BASE},"modelId":"amazon.rerank-v1:0","errorCode":"ThrottlingException"}}"#);
        assert_eq!(check(&failed).unwrap().search_units, None);
    }

    #[test]
    fn latency_optimized_from_the_envelope_or_a_converse_request() {
        let body = |config: &str| {
            let text = format!(
                r#"{{{BASE},"input":{{"inputBodyJson":{{"messages":[{{"role":"user","content":[{{"text":"hi"}}]}}],"performanceConfig":{config}}},"inputTokenCount":1}}}}"#
            );
            check(&text).map(|r| r.latency_optimized)
        };
        assert_eq!(body(r#"{"latency":"optimized"}"#), Ok(true));
        let served = |latency: &str| {
            let text = format!(
                r#"{{{BASE},"input":{{"inputBodyJson":{{"performanceConfig":{{"latency":"optimized"}}}}}},"output":{{"outputBodyJson":{{"usage":{{}},"performanceConfig":{{"latency":"{latency}"}}}}}}}}"#
            );
            check(&text).unwrap().latency_optimized
        };
        assert!(served("optimized"));
        assert!(!served("standard"), "asked for, but served (and billed) standard");
        assert_eq!(body(r#"{"latency":"standard"}"#), Ok(false));
        // A body is the model's business: an odd shape there is silent, not a broken record.
        assert_eq!(body(r#""optimized""#), Ok(false));
        assert_eq!(body(r#"{"latency":7}"#), Ok(false));
        let both = format!(
            r#"{{{BASE},"performanceConfig":{{"latency":"standard"}},"input":{{"inputBodyJson":{{"performanceConfig":{{"latency":"optimized"}}}}}}}}"#
        );
        assert!(!check(&both).unwrap().latency_optimized, "the envelope wins");
        assert_eq!(reason(&format!(r#"{{{BASE},"performanceConfig":{{"latency":7}}}}"#)), Reason::WrongType);
    }

    #[test]
    fn bad_dimension_values_are_quarantined() {
        for (output, want) in [
            (r#""outputImagesCount":-1"#, Reason::NegativeCount),
            (r#""outputImagesCount":1.5"#, Reason::WrongType),
            (r#""outputImagesCount":99999999999"#, Reason::AbsurdCount),
            (r#""outputImagesCount":"2""#, Reason::WrongType),
            (r#""outputVideoDurationSeconds":-6.0"#, Reason::NegativeCount),
            (r#""outputVideoDurationSeconds":"6""#, Reason::WrongType),
            (r#""outputVideoDurationSeconds":1e300"#, Reason::AbsurdCount),
            (r#""outputVideoDurationSeconds":10000001"#, Reason::AbsurdCount),
            (r#""outputAudioDurationSeconds":-0.5"#, Reason::NegativeCount),
        ] {
            let got = check(&format!(r#"{{{BASE},"output":{{{output}}}}}"#)).expect_err(output);
            assert_eq!(got.reason, want, "{output}: {}", got.detail);
            assert!(got.detail.contains("output.output"), "the field is named: {}", got.detail);
        }
        let zero = format!(r#"{{{BASE},"output":{{"outputVideoDurationSeconds":-0.0}}}}"#);
        assert_eq!(check(&zero).unwrap().video_ms, Some(0));
    }

    #[test]
    fn containers_are_recognised() {
        let events = r#"{"events":[{"timestamp":1,"message":"{\"a\":1}","ingestionTime":2}],"nextForwardToken":"f"}"#;
        let Parsed::Container(c) = parse(events.as_bytes(), &ParseOptions::default()).unwrap() else { panic!() };
        let els = c.elements();
        assert_eq!(els.len(), 1);
        assert!(matches!(&els[0].body, ElementBody::Text(t) if t == r#"{"a":1}"#));

        let insights = r#"{"results":[[{"field":"@timestamp","value":"x"},{"field":"@message","value":"{}"}]],"status":"Complete"}"#;
        let Parsed::Container(c) = parse(insights.as_bytes(), &ParseOptions::default()).unwrap() else { panic!() };
        assert!(matches!(&c.elements()[0].body, ElementBody::Text(t) if t == "{}"));
    }
}
