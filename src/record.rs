//! The model-invocation log record (schema 1.0) and its parser: bytes → record or reject reason.
//!
//! Any key order, unknown keys ignored, bodies skipped without being built. The same parser
//! recognises the containers people export records in (CloudWatch `GetLogEvents` /
//! `FilterLogEvents` responses, subscription payloads, Logs Insights results), so a caller can
//! unwrap them whatever file they arrive in.

use std::borrow::Cow;

use crate::json::{Kind, Number, Scanner, SyntaxError};
use crate::quarantine::Reason;

/// Limits applied while parsing.
#[derive(Debug, Clone, Copy)]
pub struct ParseOptions {
    /// A token count above this is rejected as absurd.
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
}

impl LogRecord<'_> {
    /// True when the record carries no token count at all (a guardrail-blocked InvokeModel).
    pub fn no_usage_reported(&self) -> bool {
        self.input_tokens.is_none()
            && self.output_tokens.is_none()
            && self.cache_read_tokens.is_none()
            && self.cache_write_tokens.is_none()
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
                        if k == "outputTokenCount" {
                            rec.output_tokens = opt_count(s, "output.outputTokenCount", opts)?;
                        } else {
                            s.skip_value().map_err(syntax)?;
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
    Ok(Parsed::Record(rec))
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
