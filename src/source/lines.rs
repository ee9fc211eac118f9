//! A line splitter with a bounded buffer: lines up to a limit are returned whole; a longer
//! line is passed over without being held in memory, keeping only its start for the report.

use std::io::{self, Read};

use crate::quarantine::SNIPPET_BYTES;

/// One line from the stream.
pub enum Line<'a> {
    /// A line without its `\n` (and without a trailing `\r`). `terminated` is false for a last
    /// line with no newline after it.
    Data { bytes: &'a [u8], offset: u64, terminated: bool },
    /// A line longer than the limit: its start, its full length.
    TooLong { prefix: Vec<u8>, offset: u64, len: u64 },
}

/// Splits a byte stream into lines, tracking byte offsets in the stream.
pub struct LineReader<R> {
    inner: R,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Bytes of `buf[start..end]` already searched for a newline.
    scanned: usize,
    eof: bool,
    max: usize,
    /// Stream offset of `buf[start]`.
    pos: u64,
}

const INITIAL: usize = 256 * 1024;

impl<R: Read> LineReader<R> {
    /// `pos` is the stream offset the reader starts at; `max` the longest line kept.
    pub fn new(inner: R, pos: u64, max: usize) -> Self {
        // At most `max + 1` bytes, never more: a line found whole in the buffer is then at most `max`.
        LineReader { inner, buf: vec![0; INITIAL.min(max + 1)], start: 0, end: 0, scanned: 0, eof: false, max, pos }
    }

    /// The stream offset of the next unread byte.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Bytes read but not yet returned (the start of a line cut short by an error).
    pub fn pending(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    fn fill(&mut self) -> io::Result<usize> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            let grown = (self.buf.len() * 2).min(self.max + 1).max(self.buf.len() + 1);
            self.buf.resize(grown, 0);
        }
        let n = loop {
            match self.inner.read(&mut self.buf[self.end..]) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            self.eof = true;
        }
        self.end += n;
        Ok(n)
    }

    /// The next line, `None` at the end of the stream.
    pub fn next_line(&mut self) -> io::Result<Option<Line<'_>>> {
        loop {
            let window = &self.buf[self.start + self.scanned..self.end];
            if let Some(i) = memchr::memchr(b'\n', window) {
                let line_end = self.start + self.scanned + i;
                let begin = self.start;
                let offset = self.pos;
                self.pos += (line_end + 1 - begin) as u64;
                self.start = line_end + 1;
                self.scanned = 0;
                return Ok(Some(Line::Data { bytes: trim_cr(&self.buf[begin..line_end]), offset, terminated: true }));
            }
            self.scanned = self.end - self.start;
            if self.eof {
                if self.start == self.end {
                    return Ok(None);
                }
                let begin = self.start;
                let offset = self.pos;
                self.pos += (self.end - begin) as u64;
                self.start = self.end;
                self.scanned = 0;
                return Ok(Some(Line::Data { bytes: trim_cr(&self.buf[begin..self.end]), offset, terminated: false }));
            }
            if self.end - self.start > self.max {
                return self.skip_long_line().map(Some);
            }
            self.fill()?;
        }
    }

    /// Discards the rest of an over-long line, reading in fixed chunks.
    fn skip_long_line(&mut self) -> io::Result<Line<'static>> {
        let offset = self.pos;
        let prefix = self.buf[self.start..self.start + SNIPPET_BYTES.min(self.end - self.start)].to_vec();
        let mut len = (self.end - self.start) as u64;
        self.start = 0;
        self.end = 0;
        self.scanned = 0;
        loop {
            let n = self.fill()?;
            if let Some(i) = memchr::memchr(b'\n', &self.buf[..self.end]) {
                len += i as u64;
                self.pos = offset + len + 1;
                self.start = i + 1;
                return Ok(Line::TooLong { prefix, offset, len });
            }
            len += self.end as u64;
            self.end = 0;
            if n == 0 {
                self.pos = offset + len;
                return Ok(Line::TooLong { prefix, offset, len });
            }
        }
    }
}

fn trim_cr(b: &[u8]) -> &[u8] {
    b.strip_suffix(b"\r").unwrap_or(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &[u8], max: usize) -> Vec<(String, u64, bool)> {
        let mut r = LineReader::new(input, 0, max);
        let mut out = Vec::new();
        while let Some(line) = r.next_line().unwrap() {
            out.push(match line {
                Line::Data { bytes, offset, terminated } => (String::from_utf8_lossy(bytes).into_owned(), offset, terminated),
                Line::TooLong { len, offset, .. } => (format!("<too long: {len}>"), offset, true),
            });
        }
        assert_eq!(r.position(), input.len() as u64);
        out
    }

    #[test]
    fn splits_with_offsets_and_unterminated_tail() {
        let got = lines(b"ab\r\n\ncd\nef", 1024);
        assert_eq!(got, vec![("ab".into(), 0, true), ("".into(), 4, true), ("cd".into(), 5, true), ("ef".into(), 8, false)]);
    }

    /// Fuzz finding (cloudwatch_export, 2026-11-23): with a limit below 4096 a longer line that
    /// fit the 4096-byte minimum buffer was returned whole instead of as too long.
    #[test]
    fn a_line_just_over_a_small_limit_is_too_long() {
        let input = include_bytes!("../../fixtures/fuzz/cloudwatch_export/regress-line-1025-bytes.jsonl");
        assert_eq!(input.len(), 1026);
        assert_eq!(lines(input, 1024), vec![("<too long: 1025>".into(), 0, true)]);
        let mut r = LineReader::new(&input[..], 0, 1025);
        assert!(matches!(r.next_line().unwrap(), Some(Line::Data { bytes, .. }) if bytes.len() == 1025));
    }

    #[test]
    fn over_long_lines_are_skipped_in_bounded_memory() {
        let mut input = b"short\n".to_vec();
        input.extend(std::iter::repeat(b'x').take(50_000));
        input.extend(b"\nafter\n");
        let got = lines(&input, 4096);
        assert_eq!(got[1], ("<too long: 50000>".into(), 6, true));
        assert_eq!(got[2].0, "after");
    }
}
