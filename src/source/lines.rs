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
    /// `buf` holds the whole stream (see [`LineReader::whole`]), so a line is checked against
    /// `max` when found, not by the buffer's size.
    whole: bool,
    /// CRC-32 of the stream's bytes before `hashed` (see [`LineReader::crc_through`]).
    hasher: crc32fast::Hasher,
    hashed: u64,
}

const INITIAL: usize = 256 * 1024;

impl<R: Read> LineReader<R> {
    /// `pos` is the stream offset the reader starts at; `max` the longest line kept.
    pub fn new(inner: R, pos: u64, max: usize) -> Self {
        // At most `max + 1` bytes, never more: a line found whole in the buffer is then at most `max`.
        LineReader {
            inner,
            buf: vec![0; INITIAL.min(max + 1)],
            start: 0,
            end: 0,
            scanned: 0,
            eof: false,
            max,
            pos,
            whole: false,
            hasher: crc32fast::Hasher::new_with_initial_len(0, pos),
            hashed: pos,
        }
    }

    /// The CRC-32 of the stream's bytes before the reader's start, so that
    /// [`LineReader::crc_through`] covers the stream from its first byte.
    pub fn with_prefix_crc(mut self, crc: u32) -> Self {
        self.hasher = crc32fast::Hasher::new_with_initial_len(crc, self.hashed);
        self
    }

    /// The buffer, for the next [`LineReader::whole`].
    pub fn into_buf(self) -> Vec<u8> {
        self.buf
    }
}

impl LineReader<io::Empty> {
    /// Lines of a stream already in memory (`text`), from stream offset `pos`, without copying
    /// it: what a whole inflated gzip file is read as. Lines longer than `max` are reported as
    /// [`Line::TooLong`], as from a stream.
    pub fn whole(text: Vec<u8>, pos: u64, max: usize) -> Self {
        let start = usize::try_from(pos).map_or(text.len(), |p| p.min(text.len()));
        let end = text.len();
        LineReader {
            inner: io::empty(),
            buf: text,
            start,
            end,
            scanned: 0,
            eof: true,
            max,
            pos,
            whole: true,
            hasher: crc32fast::Hasher::new_with_initial_len(0, pos),
            hashed: pos,
        }
    }
}

impl<R: Read> LineReader<R> {
    /// The stream offset of the next unread byte.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Bytes read but not yet returned (the start of a line cut short by an error).
    pub fn pending(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// The CRC-32 of the stream's bytes from its first (given [`LineReader::with_prefix_crc`]
    /// when the reader started part-way) up to `upto`, a line boundary at or after the last
    /// one asked for and not past the last line returned. A checkpoint keeps it, so a file
    /// that changed before its counted end is told from one that only grew.
    pub fn crc_through(&mut self, upto: u64) -> u32 {
        self.hash_to(upto);
        self.hasher.clone().finalize()
    }

    /// Hashes the bytes up to `upto`, still in the buffer just before `start`.
    fn hash_to(&mut self, upto: u64) {
        if upto > self.hashed {
            let back = (self.pos - self.hashed) as usize;
            let from = self.start.checked_sub(back).expect("the bytes to hash are still in the buffer");
            self.hasher.update(&self.buf[from..from + (upto - self.hashed) as usize]);
            self.hashed = upto;
        }
    }

    fn fill(&mut self) -> io::Result<usize> {
        // What is about to be moved away is hashed first.
        let pos = self.pos;
        self.hash_to(pos);
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
                if self.whole && line_end - begin > self.max {
                    return Ok(Some(self.too_long_in_buffer(line_end, true)));
                }
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
                if self.whole && self.end - self.start > self.max {
                    return Ok(Some(self.too_long_in_buffer(self.end, false)));
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

    /// The line `buf[start..line_end]`, longer than `max`, as [`Line::TooLong`]; `terminated`:
    /// a `\n` follows it.
    fn too_long_in_buffer(&mut self, line_end: usize, terminated: bool) -> Line<'static> {
        let (begin, offset) = (self.start, self.pos);
        let len = line_end - begin;
        let prefix = self.buf[begin..begin + SNIPPET_BYTES.min(len)].to_vec();
        let next = if terminated { line_end + 1 } else { line_end };
        self.pos += (next - begin) as u64;
        self.start = next;
        self.scanned = 0;
        Line::TooLong { prefix, offset, len: len as u64 }
    }

    /// Discards the rest of an over-long line, reading in fixed chunks.
    fn skip_long_line(&mut self) -> io::Result<Line<'static>> {
        let offset = self.pos;
        self.hash_to(offset);
        let prefix = self.buf[self.start..self.start + SNIPPET_BYTES.min(self.end - self.start)].to_vec();
        let mut len = (self.end - self.start) as u64;
        self.hasher.update(&self.buf[self.start..self.end]);
        self.start = 0;
        self.end = 0;
        self.scanned = 0;
        loop {
            // Nothing before `start` (0) is left to hash: `hashed` follows `pos` here.
            self.hashed = offset + len;
            self.pos = offset + len;
            let n = self.fill()?;
            if let Some(i) = memchr::memchr(b'\n', &self.buf[..self.end]) {
                self.hasher.update(&self.buf[..i + 1]);
                len += i as u64;
                self.pos = offset + len + 1;
                self.hashed = self.pos;
                self.start = i + 1;
                return Ok(Line::TooLong { prefix, offset, len });
            }
            self.hasher.update(&self.buf[..self.end]);
            len += self.end as u64;
            self.end = 0;
            if n == 0 {
                self.pos = offset + len;
                self.hashed = self.pos;
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
        collect(LineReader::new(input, 0, max), input.len())
    }

    fn collect<R: Read>(mut r: LineReader<R>, input_len: usize) -> Vec<(String, u64, bool)> {
        let mut out = Vec::new();
        while let Some(line) = r.next_line().unwrap() {
            out.push(match line {
                Line::Data { bytes, offset, terminated } => {
                    (String::from_utf8_lossy(bytes).into_owned(), offset, terminated)
                }
                Line::TooLong { len, offset, .. } => (format!("<too long: {len}>"), offset, true),
            });
        }
        assert_eq!(r.position(), input_len as u64);
        out
    }

    /// Hands out at most `chunk` bytes per read, as a decoder or a socket does.
    struct Trickle<'a> {
        input: &'a [u8],
        chunk: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.chunk.min(buf.len()).min(self.input.len());
            buf[..n].copy_from_slice(&self.input[..n]);
            self.input = &self.input[n..];
            Ok(n)
        }
    }

    /// Streams of the bytes that matter to a line splitter.
    fn stream_bytes() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        proptest::collection::vec(proptest::sample::select(b"ab\r\n{}".to_vec()), 0..400)
    }

    /// Where the lines of `input` start.
    fn line_starts(input: &[u8]) -> Vec<usize> {
        std::iter::once(0).chain(memchr::memchr_iter(b'\n', input).map(|i| i + 1)).collect()
    }

    /// Reads up to `stop` lines of `r`, checking after each that the CRC it reports is that of
    /// `input` up to there.
    fn check_crc<R: Read>(
        mut r: LineReader<R>,
        input: &[u8],
        stop: usize,
    ) -> Result<(), proptest::test_runner::TestCaseError> {
        let mut n = 0;
        while r.next_line().unwrap().is_some() {
            let at = r.position();
            proptest::prop_assert_eq!(r.crc_through(at), crc32fast::hash(&input[..at as usize]));
            n += 1;
            if n == stop {
                break;
            }
        }
        Ok(())
    }

    proptest::proptest! {
        /// A stream held whole in memory splits into the same lines, offsets, over-long lines
        /// and end position as the same bytes read a few at a time.
        #[test]
        fn a_whole_buffer_reads_as_the_stream_does(
            input in stream_bytes(),
            max in 1usize..40,
            chunk in 1usize..50,
            skip in 0usize..420,
        ) {
            let streamed = collect(LineReader::new(Trickle { input: &input, chunk }, 0, max), input.len());
            let whole = collect(LineReader::whole(input.clone(), 0, max), input.len());
            proptest::prop_assert_eq!(&whole, &streamed);
            // Resuming at a line start (or past the end, for a file that shrank) starts there.
            let starts = line_starts(&input);
            let at = if skip < input.len() { starts[skip % starts.len()] } else { skip };
            let resumed = collect(LineReader::whole(input.clone(), at as u64, max), input.len().max(at));
            let expected: Vec<_> = streamed.iter().filter(|(_, o, _)| *o as usize >= at).cloned().collect();
            proptest::prop_assert_eq!(resumed, expected);
        }
    }

    proptest::proptest! {
        /// The CRC of the bytes read, at any line boundary, is the CRC of the stream's prefix
        /// up to there, read a few bytes at a time or whole, from the start or resumed with
        /// the prefix's CRC, over lines too long to keep.
        #[test]
        fn the_crc_of_what_was_read_is_the_crc_of_that_prefix(
            input in stream_bytes(),
            max in 1usize..40,
            chunk in 1usize..50,
            stop in 0usize..60,
        ) {
            check_crc(LineReader::new(Trickle { input: &input, chunk }, 0, max), &input, stop)?;
            check_crc(LineReader::whole(input.clone(), 0, max), &input, stop)?;
            let starts = line_starts(&input);
            let from = starts[stop % starts.len()];
            let resumed = LineReader::new(Trickle { input: &input[from..], chunk }, from as u64, max)
                .with_prefix_crc(crc32fast::hash(&input[..from]));
            check_crc(resumed, &input, stop)?;
            let resumed_whole = LineReader::whole(input.clone(), from as u64, max).with_prefix_crc(crc32fast::hash(&input[..from]));
            check_crc(resumed_whole, &input, stop)?;
        }
    }

    #[test]
    fn splits_with_offsets_and_unterminated_tail() {
        let got = lines(b"ab\r\n\ncd\nef", 1024);
        assert_eq!(
            got,
            vec![("ab".into(), 0, true), ("".into(), 4, true), ("cd".into(), 5, true), ("ef".into(), 8, false)]
        );
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
        input.extend(std::iter::repeat_n(b'x', 50_000));
        input.extend(b"\nafter\n");
        let got = lines(&input, 4096);
        assert_eq!(got[1], ("<too long: 50000>".into(), 6, true));
        assert_eq!(got[2].0, "after");
    }
}
