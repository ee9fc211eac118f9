//! The line loop every byte-stream source shares: decoded bytes (plain, or gunzipped by the
//! caller) are split into lines, decoded into a [`Piece`] at a time, and each piece is sent with
//! the position after its last line, as the source names positions.
//!
//! A read error is one of two things. A failure to *fetch* bytes (the network dropped, the
//! object store answered an error mid-body), marked with [`Fetch`], ends the loop with the
//! position reached so the source can fetch again from there; nothing is quarantined. Any other
//! read error (a corrupt or truncated gzip stream) is the data's fault: the cut line is
//! quarantined and the stream is done until it changes.

use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};

use super::lines::{Line, LineReader};
use super::{Decoder, Piece};
use crate::quarantine::{Reason, Rejected};

/// Where in a document a position lies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Frame {
    /// Between top-level values.
    #[default]
    Top,
    /// Inside the `events` (or `logEvents`) array of a top-level object.
    Events,
    /// Inside the `results` array of a top-level object.
    Results,
    /// Inside a top-level array.
    Array,
}

impl Frame {
    pub fn is_top(&self) -> bool {
        *self == Frame::Top
    }
}

/// Where a position lies in a stream: what a source's position names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Mark {
    /// Decoded bytes consumed.
    pub offset: u64,
    /// Lines consumed (line breaks before `offset`).
    pub line: u64,
    pub frame: Frame,
    /// The stream was not read to its end: a later pass must resume from here even if the
    /// input has not changed.
    pub partial: bool,
    /// CRC-32 of the stream's bytes before `offset`, where the reader keeps one (lines).
    pub crc: Option<u32>,
}

/// Marks an I/O error as a failure to fetch bytes, not a fault in them.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Fetch(pub String);

impl Fetch {
    /// An `io::Error` carrying this marker.
    pub fn io(message: impl Into<String>) -> io::Error {
        io::Error::other(Fetch(message.into()))
    }

    /// Whether `e` is a fetch failure.
    pub fn is(e: &io::Error) -> bool {
        e.get_ref().is_some_and(|inner| inner.is::<Fetch>())
    }
}

/// Where a stream starts and how its pieces are labelled.
pub struct Start<'a> {
    /// The checkpoint key pieces carry.
    pub source: &'a str,
    /// What the quarantine names as the records' source, when not the checkpoint key.
    pub name: Option<&'a str>,
    /// The stored position the first piece starts from.
    pub expected: Option<String>,
    /// Decoded bytes already counted (passed over by the caller before reading).
    pub offset: u64,
    /// Lines already counted.
    pub line: u64,
    /// The stream is gzip: a read error that is not a [`Fetch`] is a truncated gzip stream.
    pub gz: bool,
    /// Stop at a first line that starts a JSON value but is not exactly one complete value
    /// (a pretty-printed export, payloads written back to back, an export too long for one
    /// line, or a cut first record), so the caller reads the stream as documents
    /// ([`super::document`]), which costs a bad first line only that line.
    pub detect_document: bool,
    /// Leave an unterminated last line that is not yet complete JSON for the next pass.
    pub follow: bool,
    pub max_record_bytes: usize,
    pub piece_records: usize,
}

/// How a stream ended.
#[derive(Debug)]
pub enum End {
    /// Everything up to `offset` was handled and sent.
    Done,
    /// The stream is to be read as JSON documents ([`super::document`]); nothing was sent.
    Document,
    /// `shutdown` was set, or the receiver is gone.
    Stopped,
    /// Fetching failed; everything before the returned position was sent.
    Fetch(io::Error),
}

/// Where a stream stopped: the decoded offset and line after the last line handled, and the
/// position last sent (`None`: nothing sent), for the caller's next piece to expect.
#[derive(Debug)]
pub struct Reached {
    pub end: End,
    pub offset: u64,
    pub line: u64,
    /// Where in a document `offset` lies ([`Frame::Top`] for lines).
    pub frame: Frame,
    pub expected: Option<String>,
}

/// Reads the lines of `lines` (positioned at `start.offset`: a stream's reader, or one over a
/// whole inflated file, [`LineReader::whole`], which the caller keeps with its buffer), decoding
/// them into pieces of at most `piece_records` records. `position` names the position after a
/// line; `send` returns false when the receiver is gone. The last piece is
/// sent even when empty if `send_empty_end` says the position moved.
pub fn read_lines<R: Read>(
    lines: &mut LineReader<R>,
    start: Start<'_>,
    decoder: &mut Decoder<'_>,
    shutdown: &AtomicBool,
    position: &dyn Fn(Mark) -> String,
    send: &mut dyn FnMut(Piece) -> bool,
    send_empty_end: &dyn Fn(u64, u64) -> bool,
) -> Reached {
    let at = |lines: &mut LineReader<R>, offset: u64, line: u64, partial: bool| {
        position(Mark { offset, line, frame: Frame::Top, partial, crc: Some(lines.crc_through(offset)) })
    };
    // Room for a full piece up front: grown by doubling from empty, the entries (128 bytes
    // each) were copied about once more per record, 1% of ingest's CPU.
    let new_piece = |expected: &Option<String>| Piece {
        source: start.source.to_string(),
        name: start.name.map(str::to_string),
        expected: expected.clone(),
        entries: Vec::with_capacity(start.piece_records),
        origins: Vec::with_capacity(start.piece_records),
        ..Piece::default()
    };
    let mut line_no = start.line;
    let mut expected = start.expected.clone();
    let mut piece = new_piece(&expected);
    let mut document_checked = start.offset > 0 || !start.detect_document;
    // The offset after the last line handled; a line left for later is not included.
    let mut consumed = start.offset;
    let mut end = End::Done;

    loop {
        if shutdown.load(Ordering::Relaxed) {
            end = End::Stopped;
            break;
        }
        let next = match lines.next_line() {
            Ok(next) => next,
            Err(e) if Fetch::is(&e) => {
                end = End::Fetch(e);
                break;
            }
            Err(e) => {
                // A corrupt or truncated gzip stream: what came before stays counted, the cut
                // line is quarantined, and the stream is done until it changes. The checkpoint
                // stays before the cut line: a file that was only partly copied and is then
                // completed has that line read whole.
                let reason = if start.gz { Reason::TruncatedGzip } else { Reason::MalformedJson };
                let offset = lines.position();
                piece.received += 1;
                piece.rejects.push(Rejected::new(
                    reason,
                    format!("read error: {e}"),
                    line_no + 1,
                    offset,
                    lines.pending(),
                ));
                consumed = offset;
                piece.position = at(lines, consumed, line_no, false);
                let sent = piece.position.clone();
                let end = if send(piece) { End::Done } else { End::Stopped };
                return Reached { end, offset: consumed, line: line_no, frame: Frame::Top, expected: Some(sent) };
            }
        };
        let Some(line) = next else { break };
        match line {
            Line::TooLong { prefix, offset, len } => {
                if !document_checked && offset == start.offset {
                    document_checked = true;
                    let p = prefix.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&prefix).trim_ascii_start();
                    if matches!(p.first(), Some(b'{' | b'[')) {
                        // One line longer than a record may be: an export written on one line.
                        return as_documents(start);
                    }
                }
                line_no += 1;
                piece.received += 1;
                let detail =
                    format!("line of {len} bytes is longer than ingest.max_record_bytes ({})", start.max_record_bytes);
                piece.rejects.push(Rejected::new(Reason::LineTooLong, detail, line_no, offset, &prefix));
                consumed = lines.position();
            }
            Line::Data { bytes, offset, terminated } => {
                let bytes = if offset == 0 { bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes) } else { bytes };
                if !document_checked && !bytes.trim_ascii().is_empty() {
                    document_checked = true;
                    let t = bytes.trim_ascii();
                    if matches!(t.first(), Some(b'{' | b'[')) && !crate::json::is_complete_value(t) {
                        return as_documents(start);
                    }
                }
                if !terminated && !crate::json::is_complete_value(bytes) {
                    // The writer may still be writing this line. Without --follow it is
                    // quarantined now, but the checkpoint stays before it, so once completed
                    // it is read whole (never quarantined, then its tail quarantined again).
                    if !start.follow {
                        decoder.line(bytes, line_no + 1, offset, &mut piece);
                    }
                    break;
                }
                line_no += 1;
                decoder.line(bytes, line_no, offset, &mut piece);
                consumed = lines.position();
            }
        }
        if piece.received as usize >= start.piece_records {
            piece.position = at(lines, consumed, line_no, true);
            let next_expected = Some(piece.position.clone());
            if !send(std::mem::replace(&mut piece, new_piece(&next_expected))) {
                return Reached {
                    end: End::Stopped,
                    offset: consumed,
                    line: line_no,
                    frame: Frame::Top,
                    expected: next_expected,
                };
            }
            expected = next_expected;
        }
    }
    if piece.received > 0 || send_empty_end(consumed, line_no) {
        piece.position = at(lines, consumed, line_no, matches!(end, End::Stopped | End::Fetch(_)));
        piece.expected = expected;
        let sent = Some(piece.position.clone());
        if !send(piece) {
            end = End::Stopped;
        }
        expected = sent;
    }
    Reached { end, offset: consumed, line: line_no, frame: Frame::Top, expected }
}

/// Nothing read: the stream is to be read as JSON documents, from where it started.
fn as_documents(start: Start<'_>) -> Reached {
    Reached { end: End::Document, offset: start.offset, line: start.line, frame: Frame::Top, expected: start.expected }
}
