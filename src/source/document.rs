//! Reading JSON documents as a stream: CloudWatch exports (`GetLogEvents`/`FilterLogEvents`,
//! one page or merged by the CLI), subscription payloads (one, or several written back to
//! back as Firehose delivers them), Logs Insights results (rows of cells, or one flattened
//! list of cells), top-level arrays, and NDJSON whose first line is not one complete value.
//!
//! A file is read as a sequence of top-level JSON values. The arrays that hold records
//! (`events`, `logEvents`, `results`, a top-level array) are read element by element, so an
//! export of any size needs memory for its largest element only; `ingest.max_record_bytes`
//! bounds one element, never the document.
//!
//! Each value or element is delimited by a strict grammar check ([`value_end`]) before it is
//! decoded. Where that check fails the input is damaged: the damaged stretch, from the start of
//! the value it was in to the next line where a value starts cleanly ([`Reader::recover`]), is
//! quarantined as one record, and reading goes on. A truncated or garbled line of NDJSON thus
//! costs that line, a cut event of an export that event, whatever line it is on — the first
//! included.
//!
//! Positions name the decoded offset after a value or element and the [`Frame`] it was read
//! in, so a read stopped part-way (a crash, SIGTERM, a dropped S3 connection) resumes inside
//! the array it stopped in.

use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, Ordering};

use super::stream::{End, Fetch, Frame, Mark, Reached, Start};
use super::{Decoder, Piece};
use crate::quarantine::{Reason, Rejected, SNIPPET_BYTES};
use crate::record::ElementKind;

impl Frame {
    fn kind(self) -> ElementKind {
        match self {
            Frame::Events => ElementKind::Event,
            Frame::Results => ElementKind::InsightsRow,
            Frame::Top | Frame::Array => ElementKind::Any,
        }
    }

    /// The array is a member of an object, whose other members follow it.
    fn in_object(self) -> bool {
        matches!(self, Frame::Events | Frame::Results)
    }
}

/// Keys of an object whose array value holds records.
fn container_frame(key: &[u8]) -> Option<Frame> {
    match key {
        b"events" | b"logEvents" => Some(Frame::Events),
        b"results" => Some(Frame::Results),
        _ => None,
    }
}

/// Keys only an invocation record has: an object with one of them is a record, whatever
/// arrays it holds.
fn is_record_key(key: &[u8]) -> bool {
    matches!(key, b"schemaType" | b"requestId" | b"modelId" | b"operation" | b"input" | b"output")
}

/// Why [`value_end`] stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// The bytes end inside the value: more are needed.
    More,
    /// The value is malformed at this byte.
    Bad(usize, &'static str),
}

/// Deepest nesting followed.
const MAX_DEPTH: usize = 512;

/// The bytes ran out at `at`: more are needed, or, when no bytes follow (`eof`), the value is
/// cut short.
fn ran_out(at: usize, eof: bool) -> Stop {
    if eof {
        Stop::Bad(at, "unexpected end of input")
    } else {
        Stop::More
    }
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while let Some(c) = b.get(i) {
        if matches!(c, b' ' | b'\t' | b'\n' | b'\r') {
            i += 1;
        } else {
            break;
        }
    }
    i
}

/// The end of the string starting at `b[i]` (a `"`). A raw line break inside is an error:
/// JSON has none, and it is where a cut line shows.
fn string_end(b: &[u8], i: usize, eof: bool) -> Result<usize, Stop> {
    let mut j = i + 1;
    loop {
        match memchr::memchr3(b'"', b'\\', b'\n', &b[j.min(b.len())..]) {
            None => return Err(ran_out(b.len(), eof)),
            Some(k) => {
                let at = j + k;
                match b[at] {
                    b'"' => return Ok(at + 1),
                    b'\\' => {
                        if at + 1 >= b.len() {
                            return Err(ran_out(b.len(), eof));
                        }
                        j = at + 2;
                    }
                    _ => return Err(Stop::Bad(at, "line break inside a string")),
                }
            }
        }
    }
}

/// The end of the scalar (number or literal) starting at `b[i]`; `eof`: no bytes follow `b`.
fn scalar_end(b: &[u8], i: usize, eof: bool) -> Result<usize, Stop> {
    let first = b[i];
    let mut j = i;
    if first == b'-' || first.is_ascii_digit() {
        while j < b.len() && matches!(b[j], b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E') {
            j += 1;
        }
        if j == b.len() && !eof {
            return Err(Stop::More);
        }
        if j == i + 1 && first == b'-' {
            return Err(Stop::Bad(i, "expected a number"));
        }
        return Ok(j);
    }
    let word: &[u8] = match first {
        b't' => b"true",
        b'f' => b"false",
        b'n' => b"null",
        _ => return Err(Stop::Bad(i, "expected a JSON value")),
    };
    let have = &b[i..b.len().min(i + word.len())];
    if !word.starts_with(have) {
        return Err(Stop::Bad(i, "expected a JSON value"));
    }
    if have.len() < word.len() {
        return Err(ran_out(b.len(), eof));
    }
    Ok(i + word.len())
}

/// The end of the JSON value starting at `b[i]` (no white space before it), checked against
/// the grammar: brackets match, keys are strings followed by `:`, members and elements are
/// separated by `,`, strings hold no raw line break. `eof`: no bytes follow `b`.
fn value_end(b: &[u8], i: usize, eof: bool, stack: &mut Vec<u8>) -> Result<usize, Stop> {
    stack.clear();
    let mut i = i;
    'value: loop {
        // A value is expected at `i`.
        i = skip_ws(b, i);
        let Some(&c) = b.get(i) else { return Err(ran_out(i, eof)) };
        match c {
            b'{' | b'[' => {
                if stack.len() >= MAX_DEPTH {
                    return Err(Stop::Bad(i, "nested too deeply"));
                }
                i = skip_ws(b, i + 1);
                let close = if c == b'{' { b'}' } else { b']' };
                match b.get(i) {
                    None => return Err(ran_out(i, eof)),
                    Some(&x) if x == close => i += 1,
                    Some(_) => {
                        stack.push(c);
                        if c == b'{' {
                            i = key_end(b, i, eof)?;
                        }
                        continue 'value;
                    }
                }
            }
            b'"' => i = string_end(b, i, eof)?,
            _ => i = scalar_end(b, i, eof)?,
        }
        // After a value: close containers, or go on to the next member or element.
        loop {
            let Some(&open) = stack.last() else { return Ok(i) };
            i = skip_ws(b, i);
            let Some(&c) = b.get(i) else { return Err(ran_out(i, eof)) };
            match (open, c) {
                (_, b',') => {
                    i += 1;
                    if open == b'{' {
                        i = key_end(b, skip_ws(b, i), eof)?;
                    }
                    continue 'value;
                }
                (b'{', b'}') | (b'[', b']') => {
                    stack.pop();
                    i += 1;
                }
                (b'{', _) => return Err(Stop::Bad(i, "expected ',' or '}' in an object")),
                _ => return Err(Stop::Bad(i, "expected ',' or ']' in an array")),
            }
        }
    }
}

/// Past an object key and its `:` at `b[i]`.
fn key_end(b: &[u8], i: usize, eof: bool) -> Result<usize, Stop> {
    match b.get(i) {
        None => return Err(ran_out(i, eof)),
        Some(b'"') => {}
        Some(_) => return Err(Stop::Bad(i, "expected a string key")),
    }
    let end = string_end(b, i, eof)?;
    let colon = skip_ws(b, end);
    match b.get(colon) {
        None => Err(ran_out(colon, eof)),
        Some(b':') => Ok(colon + 1),
        Some(_) => Err(Stop::Bad(colon, "expected ':' after a key")),
    }
}

/// Reads the start of the object at `b[0]` up to the array of records it holds: the offset
/// just past that array's `[` and the frame of its elements, or `None` when the object holds
/// no such array before a record field (it is then a record, or a one-event wrapper).
fn container_head(b: &[u8], eof: bool, stack: &mut Vec<u8>) -> Result<Option<(usize, Frame)>, Stop> {
    let mut i = skip_ws(b, 1);
    if b.get(i) == Some(&b'}') {
        return Ok(None);
    }
    loop {
        let key_start = i;
        let value_start = skip_ws(b, key_end(b, i, eof)?);
        let key_close = memchr::memrchr(b'"', &b[..value_start]).unwrap_or(key_start);
        let key = &b[key_start + 1..key_close.max(key_start + 1)];
        if is_record_key(key) {
            return Ok(None);
        }
        match (container_frame(key), b.get(value_start)) {
            (_, None) => return Err(ran_out(value_start, eof)),
            (Some(frame), Some(b'[')) => return Ok(Some((value_start + 1, frame))),
            _ => {}
        }
        i = skip_ws(b, value_end(b, value_start, eof, stack)?);
        match b.get(i) {
            None => return Err(ran_out(i, eof)),
            Some(b',') => i = skip_ws(b, i + 1),
            Some(b'}') => return Ok(None),
            Some(_) => return Err(Stop::Bad(i, "expected ',' or '}' in an object")),
        }
    }
}

/// Past the members that follow a record array in its object, and the object's `}`.
fn members_end(b: &[u8], eof: bool, stack: &mut Vec<u8>) -> Result<usize, Stop> {
    let mut i = 0;
    loop {
        i = skip_ws(b, i);
        match b.get(i) {
            None => return Err(ran_out(i, eof)),
            Some(b'}') => return Ok(i + 1),
            Some(b',') => {
                let v = skip_ws(b, key_end(b, skip_ws(b, i + 1), eof)?);
                i = value_end(b, v, eof, stack)?;
            }
            Some(_) => return Err(Stop::Bad(i, "expected ',' or '}' in an object")),
        }
    }
}

/// How a check over the buffered bytes ended once as many bytes as needed were read.
enum Step<T> {
    Done(T),
    /// Malformed, for this reason.
    Bad(&'static str),
    /// The value is longer than the buffer may grow (`max_record_bytes`).
    TooLong,
}

/// A window over a byte stream, growing up to a bound.
struct Window<R> {
    inner: R,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    eof: bool,
    /// Stream offset of `buf[start]`.
    pos: u64,
    /// Line breaks before `buf[start]`.
    newlines: u64,
    /// The most bytes held at once.
    cap: usize,
}

const INITIAL: usize = 256 * 1024;

impl<R: Read> Window<R> {
    fn avail(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// Consumes `n` bytes.
    fn advance(&mut self, n: usize) {
        let n = n.min(self.end - self.start);
        self.newlines += memchr::memchr_iter(b'\n', &self.buf[self.start..self.start + n]).count() as u64;
        self.pos += n as u64;
        self.start += n;
    }

    /// Reads until the buffer is full or the stream ends. False when the buffer is already at
    /// its bound and full, or the stream had ended.
    fn fill(&mut self) -> io::Result<bool> {
        if self.eof {
            return Ok(false);
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            if self.buf.len() >= self.cap {
                return Ok(false);
            }
            let grown = (self.buf.len() * 2).min(self.cap);
            self.buf.resize(grown, 0);
        }
        let before = self.end;
        while self.end < self.buf.len() {
            match self.inner.read(&mut self.buf[self.end..]) {
                Ok(0) => {
                    self.eof = true;
                    break;
                }
                Ok(n) => self.end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(self.end > before || self.eof)
    }

    /// Runs `check` over the buffered bytes, reading more while it asks for more.
    fn check<T>(&mut self, mut check: impl FnMut(&[u8], bool) -> Result<T, Stop>) -> io::Result<Step<T>> {
        loop {
            match check(self.avail(), self.eof) {
                Ok(t) => return Ok(Step::Done(t)),
                Err(Stop::Bad(_, what)) => return Ok(Step::Bad(what)),
                Err(Stop::More) => {
                    if !self.fill()? {
                        if self.eof {
                            return Ok(Step::Bad("unexpected end of input"));
                        }
                        return Ok(Step::TooLong);
                    }
                }
            }
        }
    }

    /// The next byte that is not white space, consuming the white space; `None` at the end.
    fn peek(&mut self) -> io::Result<Option<u8>> {
        loop {
            let ws = self.avail().iter().position(|c| !matches!(c, b' ' | b'\t' | b'\n' | b'\r'));
            match ws {
                Some(i) => {
                    self.advance(i);
                    return Ok(Some(self.avail()[0]));
                }
                None => {
                    let n = self.avail().len();
                    self.advance(n);
                    if !self.fill()? {
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// Passes over a value too long to hold, from `buf[start]`, by its brackets and strings
    /// only; returns its length.
    fn skip_long(&mut self) -> io::Result<u64> {
        let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
        let mut len = 0u64;
        loop {
            let avail = self.avail();
            let mut end = None;
            for (i, &c) in avail.iter().enumerate() {
                if in_string {
                    match (escaped, c) {
                        (true, _) => escaped = false,
                        (false, b'\\') => escaped = true,
                        (false, b'"') => in_string = false,
                        _ => {}
                    }
                    if !in_string && depth == 0 {
                        end = Some(i + 1);
                        break;
                    }
                    continue;
                }
                match c {
                    b'"' => in_string = true,
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth = depth.saturating_sub(1);
                        if depth == 0 {
                            end = Some(i + 1);
                            break;
                        }
                    }
                    b',' | b'\n' if depth == 0 => {
                        end = Some(i);
                        break;
                    }
                    _ => {}
                }
            }
            let n = end.unwrap_or(avail.len());
            len += n as u64;
            self.advance(n);
            if end.is_some() || !self.fill()? {
                return Ok(len);
            }
        }
    }

    /// Passes over the rest of the line `buf[start]` is on, and its line break.
    fn skip_line(&mut self) -> io::Result<()> {
        loop {
            if let Some(i) = memchr::memchr(b'\n', self.avail()) {
                self.advance(i + 1);
                return Ok(());
            }
            let n = self.avail().len();
            self.advance(n);
            if !self.fill()? {
                return Ok(());
            }
        }
    }
}

/// What comes next in the reader's frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// A top-level value, or the end.
    Top,
    /// The first element of an array (just after its `[`).
    First,
    /// `,` or `]` after an element.
    After,
}

/// Reads a document stream into pieces, as [`super::stream::read_lines`] does for lines.
/// `inner` is positioned at `start.offset`, which is a position this reader made (with its
/// `frame`) or 0.
pub fn read_document<R: Read>(
    inner: R,
    start: Start<'_>,
    frame: Frame,
    decoder: &mut Decoder<'_>,
    shutdown: &AtomicBool,
    position: &dyn Fn(Mark) -> String,
    send: &mut dyn FnMut(Piece) -> bool,
) -> Reached {
    let cap = start.max_record_bytes.saturating_add(1);
    let window = Window {
        inner,
        buf: vec![0; INITIAL.min(cap)],
        start: 0,
        end: 0,
        eof: false,
        pos: start.offset,
        newlines: start.line,
        cap,
    };
    let piece = Piece {
        source: start.source.to_string(),
        name: start.name.map(str::to_string),
        expected: start.expected.clone(),
        ..Piece::default()
    };
    let mut reader = Reader {
        w: window,
        decoder,
        frame,
        state: if frame.is_top() { State::Top } else { State::After },
        stack: Vec::new(),
        piece,
        expected: start.expected.clone(),
        start: &start,
        position,
    };
    let end = reader.run(shutdown, send);
    let (offset, line, frame) = (reader.w.pos, reader.w.newlines, reader.frame);
    Reached { end, offset, line, frame, expected: reader.expected }
}

struct Reader<'s, 'd, 'c, R> {
    w: Window<R>,
    decoder: &'d mut Decoder<'c>,
    frame: Frame,
    state: State,
    stack: Vec<u8>,
    piece: Piece,
    /// The position last sent.
    expected: Option<String>,
    start: &'s Start<'s>,
    position: &'s dyn Fn(Mark) -> String,
}

impl<R: Read> Reader<'_, '_, '_, R> {
    fn mark(&self, partial: bool) -> Mark {
        Mark { offset: self.w.pos, line: self.w.newlines, frame: self.frame, partial, crc: None }
    }

    /// Sends the piece so far, positioned here. False when the receiver is gone.
    fn send(&mut self, partial: bool, send: &mut dyn FnMut(Piece) -> bool) -> bool {
        let position = (self.position)(self.mark(partial));
        let next = Piece {
            source: self.start.source.to_string(),
            name: self.start.name.map(str::to_string),
            expected: Some(position.clone()),
            entries: Vec::with_capacity(self.start.piece_records),
            origins: Vec::with_capacity(self.start.piece_records),
            ..Piece::default()
        };
        let mut piece = std::mem::replace(&mut self.piece, next);
        piece.position = position.clone();
        self.expected = Some(position);
        send(piece)
    }

    fn run(&mut self, shutdown: &AtomicBool, send: &mut dyn FnMut(Piece) -> bool) -> End {
        if self.w.pos == 0 {
            if let Err(e) = self.skip_bom() {
                return self.failed(e, send);
            }
        }
        loop {
            if shutdown.load(Ordering::Relaxed) {
                if self.piece.received > 0 {
                    self.send(true, send);
                }
                return End::Stopped;
            }
            match self.step() {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => return self.failed(e, send),
            }
            if self.piece.received as usize >= self.start.piece_records && !self.send(true, send) {
                return End::Stopped;
            }
        }
        if (self.piece.received > 0 || self.w.pos != self.start.offset || self.expected.is_none())
            && !self.send(false, send)
        {
            return End::Stopped;
        }
        End::Done
    }

    fn skip_bom(&mut self) -> io::Result<()> {
        while self.w.avail().len() < 3 && self.w.fill()? {}
        if self.w.avail().starts_with(b"\xEF\xBB\xBF") {
            self.w.start += 3;
            self.w.pos += 3;
        }
        Ok(())
    }

    /// A read error: a failure to fetch ends the read where it is, for the source to fetch
    /// again; anything else (a corrupt gzip stream) costs what was cut, and the stream is done.
    fn failed(&mut self, e: io::Error, send: &mut dyn FnMut(Piece) -> bool) -> End {
        if Fetch::is(&e) {
            if self.piece.received > 0 && !self.send(true, send) {
                return End::Stopped;
            }
            return End::Fetch(e);
        }
        let reason = if self.start.gz { Reason::TruncatedGzip } else { Reason::MalformedJson };
        let line = self.w.newlines + 1;
        self.piece.received += 1;
        self.piece.rejects.push(Rejected::new(reason, format!("read error: {e}"), line, self.w.pos, self.w.avail()));
        let n = self.w.avail().len();
        self.w.advance(n);
        if !self.send(false, send) {
            return End::Stopped;
        }
        End::Done
    }

    /// Reads the next value or element. False at the end of the stream.
    fn step(&mut self) -> io::Result<bool> {
        let Some(c) = self.w.peek()? else {
            if !self.frame.is_top() {
                tracing::warn!(source = %self.start.name.unwrap_or(self.start.source), "document ends inside its array (cut short?)");
                self.frame = Frame::Top;
            }
            return Ok(false);
        };
        match self.state {
            State::Top => self.top(c)?,
            State::After => match c {
                b',' => {
                    self.w.advance(1);
                    self.state = State::First;
                }
                b']' => self.close()?,
                // A missing comma costs nothing: the next element is read as one.
                b'{' | b'[' => self.element()?,
                _ => self.recover("expected ',' or ']' after an element")?,
            },
            State::First if c == b']' => self.close()?,
            State::First => self.element()?,
        }
        Ok(true)
    }

    fn top(&mut self, c: u8) -> io::Result<()> {
        if c == b'[' {
            self.w.advance(1);
            self.frame = Frame::Array;
            self.state = State::First;
            return Ok(());
        }
        if c == b'{' {
            // An export's object is read up to its record array, which is then read element
            // by element; any other object (a record, a one-event wrapper) is read whole.
            let stack = &mut self.stack;
            match self.w.check(|b, eof| container_head(b, eof, stack))? {
                Step::Done(Some((n, frame))) => {
                    self.w.advance(n);
                    self.frame = frame;
                    self.state = State::First;
                    return Ok(());
                }
                Step::Done(None) => {}
                Step::TooLong => return self.too_long(),
                Step::Bad(what) => return self.recover(what),
            }
        }
        let stack = &mut self.stack;
        match self.w.check(|b, eof| value_end(b, 0, eof, stack))? {
            Step::Done(n) if n > self.start.max_record_bytes => self.too_long(),
            Step::Done(n) => {
                let (line, offset) = (self.w.newlines + 1, self.w.pos);
                self.decoder.line(&self.w.avail()[..n], line, offset, &mut self.piece);
                self.w.advance(n);
                Ok(())
            }
            Step::TooLong => self.too_long(),
            Step::Bad(what) => self.recover(what),
        }
    }

    fn element(&mut self) -> io::Result<()> {
        let stack = &mut self.stack;
        match self.w.check(|b, eof| value_end(b, 0, eof, stack))? {
            Step::Done(n) if n > self.start.max_record_bytes => {
                self.too_long()?;
                self.state = State::After;
                Ok(())
            }
            Step::Done(n) => {
                let (line, offset) = (self.w.newlines + 1, self.w.pos);
                self.decoder.element(&self.w.avail()[..n], self.frame.kind(), line, offset, &mut self.piece);
                self.w.advance(n);
                self.state = State::After;
                Ok(())
            }
            Step::TooLong => {
                self.too_long()?;
                self.state = State::After;
                Ok(())
            }
            Step::Bad(what) => self.recover(what),
        }
    }

    /// Past an array's `]`, and the rest of its object.
    fn close(&mut self) -> io::Result<()> {
        self.w.advance(1);
        let in_object = self.frame.in_object();
        self.frame = Frame::Top;
        self.state = State::Top;
        if !in_object {
            return Ok(());
        }
        let stack = &mut self.stack;
        match self.w.check(|b, eof| members_end(b, eof, stack))? {
            Step::Done(n) => {
                self.w.advance(n);
                Ok(())
            }
            // The object's other members are damaged or too long: they hold no records, but
            // what follows them might; read on from the next line.
            Step::Bad(..) | Step::TooLong => {
                tracing::warn!(source = %self.start.name.unwrap_or(self.start.source), line = self.w.newlines + 1,
                    "malformed fields after an export's records; read on from the next line");
                self.w.skip_line()
            }
        }
    }

    /// A value longer than `max_record_bytes`: quarantined by its start, passed over unread.
    fn too_long(&mut self) -> io::Result<()> {
        let (line, offset) = (self.w.newlines + 1, self.w.pos);
        let prefix = self.w.avail()[..self.w.avail().len().min(SNIPPET_BYTES)].to_vec();
        let len = self.w.skip_long()?;
        let detail =
            format!("record of {len} bytes is longer than ingest.max_record_bytes ({})", self.start.max_record_bytes);
        self.piece.received += 1;
        self.piece.rejects.push(Rejected::new(Reason::LineTooLong, detail, line, offset, &prefix));
        Ok(())
    }

    /// The value at `buf[start]` is damaged. It is quarantined as one record, from its start
    /// to the next line where reading can go on: a line that starts a complete value ending
    /// its line (between top-level values), or followed by `,` or `]` (inside an array), or a
    /// line starting with the array's `]`.
    fn recover(&mut self, what: &str) -> io::Result<()> {
        let (line, offset) = (self.w.newlines + 1, self.w.pos);
        let in_array = !self.frame.is_top();
        // The damaged stretch, while it is still in the buffer, to classify it the way a line
        // of NDJSON is (not JSON, malformed, not UTF-8…).
        let mut damaged: Vec<u8> = Vec::new();
        let mut whole = true;
        loop {
            // The rest of the current line goes with the damage.
            let next_line = loop {
                if let Some(i) = memchr::memchr(b'\n', self.w.avail()) {
                    break Some(i + 1);
                }
                if self.w.eof {
                    break None;
                }
                if !self.w.fill()? && !self.w.eof {
                    // A line longer than the buffer: keep its start, pass over the rest.
                    let n = self.w.avail().len();
                    keep(&mut damaged, &mut whole, &self.w.avail()[..n], self.start.max_record_bytes);
                    self.w.advance(n);
                }
            };
            let taken = next_line.unwrap_or(self.w.avail().len());
            keep(&mut damaged, &mut whole, &self.w.avail()[..taken], self.start.max_record_bytes);
            self.w.advance(taken);
            if next_line.is_none() {
                break;
            }
            // Can reading go on at this line?
            let stack = &mut self.stack;
            let resume = self.w.check(|b, eof| resumes_here(b, eof, in_array, stack))?;
            match resume {
                Step::Done(Some(Resume::Value)) => {
                    // Top-level values again (see `resumes_here`).
                    self.frame = Frame::Top;
                    break;
                }
                Step::Done(Some(Resume::Element)) if !in_array => {
                    // Elements of an array whose start was damaged: read them as such.
                    self.frame = Frame::Array;
                    break;
                }
                Step::Done(Some(_)) => break,
                _ => {}
            }
        }
        let text = damaged.trim_ascii();
        if in_array || !whole || text.is_empty() {
            let kind = if in_array { "malformed element" } else { "malformed JSON" };
            let detail = format!("{kind}: {what} (through line {}); read on after it", self.w.newlines);
            self.piece.received += 1;
            self.piece.rejects.push(Rejected::new(Reason::MalformedJson, detail, line, offset, text));
        } else {
            self.decoder.line(text, line, offset, &mut self.piece);
        }
        self.state = match self.frame {
            Frame::Top => State::Top,
            _ => State::First,
        };
        Ok(())
    }
}

/// Adds `bytes` to the damaged stretch while it fits in `max` bytes, else only up to a snippet.
fn keep(damaged: &mut Vec<u8>, whole: &mut bool, bytes: &[u8], max: usize) {
    if *whole && damaged.len() + bytes.len() <= max {
        damaged.extend_from_slice(bytes);
    } else {
        *whole = false;
        let room = SNIPPET_BYTES.saturating_sub(damaged.len());
        damaged.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }
}

/// How reading can go on at the start of a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resume {
    /// A complete value that ends its line (or is followed by another value): a top-level
    /// value, even where an array was open.
    Value,
    /// A complete value followed by `,` or `]`: an array's element.
    Element,
    /// The array's `]`.
    Close,
}

/// Whether reading can go on at `b[0]`, the start of a line (see [`Reader::recover`]).
fn resumes_here(b: &[u8], eof: bool, in_array: bool, stack: &mut Vec<u8>) -> Result<Option<Resume>, Stop> {
    // Only the line's own white space: a blank line is not a place to resume.
    let i = b.iter().position(|c| !matches!(c, b' ' | b'\t' | b'\r')).unwrap_or(b.len());
    match b.get(i) {
        None if !eof => return Err(Stop::More),
        None | Some(b'\n') => return Ok(None),
        Some(b']') if in_array => return Ok(Some(Resume::Close)),
        Some(b'{' | b'[' | b'"') => {}
        Some(_) => return Ok(None),
    }
    let end = match value_end(b, i, eof, stack) {
        Ok(end) => end,
        Err(Stop::More) => return Err(Stop::More),
        Err(Stop::Bad(..)) => return Ok(None),
    };
    let rest = b[end..].iter().position(|c| !matches!(c, b' ' | b'\t' | b'\r'));
    Ok(match rest.map(|r| b[end + r]) {
        None if !eof => return Err(Stop::More),
        None | Some(b'\n') if !in_array => Some(Resume::Value),
        Some(b'{' | b'[') if !in_array => Some(Resume::Value),
        Some(b',' | b']') => Some(Resume::Element),
        // Inside an array, a value that ends its line and is followed by another value, or by
        // nothing, is no element: the "array" was a damaged first line (`[ERROR] …`) of NDJSON.
        None => Some(Resume::Value),
        Some(b'\n') => {
            let next = skip_ws(b, end);
            match b.get(next) {
                None if !eof => return Err(Stop::More),
                Some(b',' | b']') => Some(Resume::Element),
                None | Some(b'{' | b'[') => Some(Resume::Value),
                _ => None,
            }
        }
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end(text: &str) -> Result<usize, Stop> {
        value_end(text.as_bytes(), 0, true, &mut Vec::new())
    }

    #[test]
    fn the_grammar_check_finds_the_end_or_the_damage() {
        assert_eq!(end(r#"{"a":[1,{"b":"x\"}"}],"c":null} tail"#), Ok(31));
        assert_eq!(end("[]"), Ok(2));
        assert_eq!(end("-12.5e3,"), Ok(7));
        assert!(matches!(end("{\"a\":\"cut\n\"}"), Err(Stop::Bad(9, _))), "a line break in a string");
        assert!(matches!(end("{\"a\":1,\n{\"b\":2}"), Err(Stop::Bad(8, _))), "a value where a key belongs");
        assert!(matches!(end("{\"a\" 1}"), Err(Stop::Bad(5, _))));
        assert!(matches!(end("[1 2]"), Err(Stop::Bad(3, _))));
        assert!(matches!(end("[1}"), Err(Stop::Bad(2, _))));
        assert!(matches!(end("nul"), Err(Stop::Bad(..))));
        assert_eq!(value_end(b"{\"a\":[1,2", 0, false, &mut Vec::new()), Err(Stop::More));
        assert_eq!(value_end(b"12", 0, false, &mut Vec::new()), Err(Stop::More));
        assert_eq!(value_end(b"\"ab\\", 0, false, &mut Vec::new()), Err(Stop::More));
    }

    #[test]
    fn an_export_head_is_read_up_to_its_record_array() {
        let head = |t: &str| container_head(t.as_bytes(), false, &mut Vec::new());
        assert_eq!(
            head(r#"{"messageType":"DATA_MESSAGE","subscriptionFilters":["a"],"logEvents":[{"#),
            Ok(Some((71, Frame::Events)))
        );
        assert_eq!(head(r#"{ "results" : [ ["#), Ok(Some((15, Frame::Results))));
        assert_eq!(head(r#"{"requestId":"r","events":["#), Ok(None), "a record");
        assert_eq!(head(r#"{"a":1}"#), Ok(None));
        assert_eq!(head(r#"{"a":[1,"#), Err(Stop::More));
    }
}
