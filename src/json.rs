//! A small JSON scanner that reads the handful of fields tally needs and skips the rest.
//!
//! Invocation-log records carry request and response bodies that can be hundreds of
//! kilobytes. Building them (or even validating every token in them) would dominate the cost
//! of ingest, so values tally does not need are skipped: strings with `memchr`, containers by
//! counting brackets outside strings. Skipped values are checked for balance only; the fields
//! tally reads are checked strictly.

use std::borrow::Cow;

/// Nesting deeper than this is rejected rather than followed, so hostile input cannot make
/// the scanner spend unbounded work.
const MAX_DEPTH: usize = 512;

/// Strings up to this long are searched a block at a time, longer ones by `memchr`.
const SHORT_STRING: usize = 64;
/// The longest string [`Scanner::string`] reads by blocks before the general search.
const FAST_STRING: usize = 128;

/// Bytes [`first_special`] looks at in one step.
#[cfg(target_arch = "x86_64")]
const BLOCK: usize = 16;
#[cfg(not(target_arch = "x86_64"))]
const BLOCK: usize = 8;

/// The offset of the first `"` or `\` in the [`BLOCK`] bytes at `block`, if any. On x86_64
/// one SSE2 compare of 16 bytes (SSE2 is part of that target's baseline).
#[cfg(target_arch = "x86_64")]
#[inline]
fn first_special(block: &[u8; BLOCK]) -> Option<usize> {
    use std::arch::x86_64::{__m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8};
    // SAFETY: SSE2 is always available on x86_64, and the unaligned load reads exactly the 16
    // bytes `block` borrows.
    let mask = unsafe {
        let v = _mm_loadu_si128(block.as_ptr().cast::<__m128i>());
        let quote = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'"' as i8));
        let backslash = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8));
        _mm_movemask_epi8(_mm_or_si128(quote, backslash))
    };
    (mask != 0).then(|| mask.trailing_zeros() as usize)
}

/// The offset of the first `"` or `\` in eight bytes, if any, found in one machine word.
/// What [`first_special`] is on targets other than x86_64; tested against it on x86_64.
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
#[inline]
fn first_special_in_word(bytes: &[u8; 8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let word = u64::from_le_bytes(*bytes);
    let q = word ^ (ONES * u64::from(b'"'));
    let b = word ^ (ONES * u64::from(b'\\'));
    // High bits of the bytes that are `"` or `\`; exact for the lowest such byte, which is all
    // that is read (a false positive can only come from the borrow of a lower match).
    let found = ((q.wrapping_sub(ONES) & !q) | (b.wrapping_sub(ONES) & !b)) & HIGH;
    (found != 0).then(|| (found.trailing_zeros() / 8) as usize)
}

#[cfg(not(target_arch = "x86_64"))]
#[inline]
fn first_special(block: &[u8; BLOCK]) -> Option<usize> {
    first_special_in_word(block)
}

/// Why a byte slice is not the JSON the caller expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    /// Byte offset into the scanned slice.
    pub at: usize,
    pub what: &'static str,
}

impl std::fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at byte {}", self.what, self.at)
    }
}

/// The kind of a JSON value, read from its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Object,
    Array,
    String,
    Number,
    Bool,
    Null,
}

/// A cursor over one JSON text.
pub struct Scanner<'a> {
    buf: &'a [u8],
    /// `buf` as text, when the caller has checked it is UTF-8: then strings are sliced out
    /// without checking again (a `"` is ASCII, so it always sits on a character boundary).
    text: Option<&'a str>,
    pos: usize,
}

impl<'a> Scanner<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Scanner { buf, text: None, pos: 0 }
    }

    /// A scanner over text already known to be UTF-8.
    pub fn new_str(text: &'a str) -> Self {
        Scanner { buf: text.as_bytes(), text: Some(text), pos: 0 }
    }

    pub fn pos(&self) -> usize {
        self.pos
    }

    #[cold]
    fn err<T>(&self, what: &'static str) -> Result<T, SyntaxError> {
        Err(SyntaxError { at: self.pos, what })
    }

    #[inline]
    pub fn skip_ws(&mut self) {
        while let Some(&b) = self.buf.get(self.pos) {
            if matches!(b, b' ' | b'\t' | b'\n' | b'\r') {
                self.pos += 1;
            } else {
                break;
            }
        }
    }

    /// True when only white space is left.
    #[inline]
    pub fn at_end(&mut self) -> bool {
        self.skip_ws();
        self.pos >= self.buf.len()
    }

    /// The kind of the next value, without consuming it.
    #[inline]
    pub fn peek_kind(&mut self) -> Result<Kind, SyntaxError> {
        self.skip_ws();
        match self.buf.get(self.pos) {
            Some(b'{') => Ok(Kind::Object),
            Some(b'[') => Ok(Kind::Array),
            Some(b'"') => Ok(Kind::String),
            Some(b'-' | b'0'..=b'9') => Ok(Kind::Number),
            Some(b't' | b'f') => Ok(Kind::Bool),
            Some(b'n') => Ok(Kind::Null),
            Some(_) => self.err("unexpected character"),
            None => self.err("unexpected end of input"),
        }
    }

    #[inline]
    fn eat(&mut self, b: u8, what: &'static str) -> Result<(), SyntaxError> {
        self.skip_ws();
        if self.buf.get(self.pos) == Some(&b) {
            self.pos += 1;
            Ok(())
        } else if self.pos >= self.buf.len() {
            self.err("unexpected end of input")
        } else {
            self.err(what)
        }
    }

    /// Starts reading an object: consumes `{`.
    #[inline]
    pub fn begin_object(&mut self) -> Result<(), SyntaxError> {
        self.eat(b'{', "expected an object")
    }

    /// The next key of an object, or `None` after its closing `}`. `first` is true for the
    /// first call on an object.
    #[inline]
    pub fn next_key(&mut self, first: &mut bool) -> Result<Option<Cow<'a, str>>, SyntaxError> {
        self.skip_ws();
        if self.buf.get(self.pos) == Some(&b'}') {
            self.pos += 1;
            return Ok(None);
        }
        if !*first {
            self.eat(b',', "expected ',' or '}' in object")?;
            self.skip_ws();
        }
        *first = false;
        if self.buf.get(self.pos) != Some(&b'"') {
            return self.err("expected a string key");
        }
        // Most keys are short, without escapes, and followed directly by `:`: found with one
        // block compare and sliced out of text already known to be UTF-8.
        if let (Some(text), Some(block)) = (self.text, self.buf.get(self.pos + 1..self.pos + 1 + BLOCK)) {
            let block: &[u8; BLOCK] = block.try_into().expect("one block");
            if let Some(off) = first_special(block) {
                let end = self.pos + 1 + off;
                if self.buf[end] == b'"' && self.buf.get(end + 1) == Some(&b':') {
                    let key = &text[self.pos + 1..end];
                    self.pos = end + 2;
                    return Ok(Some(Cow::Borrowed(key)));
                }
            }
        }
        let key = self.string()?;
        self.eat(b':', "expected ':' after key")?;
        Ok(Some(key))
    }

    /// Starts reading an array: consumes `[`.
    pub fn begin_array(&mut self) -> Result<(), SyntaxError> {
        self.eat(b'[', "expected an array")
    }

    /// True when the array has another element (positioned at it), false after `]`.
    pub fn next_element(&mut self, first: &mut bool) -> Result<bool, SyntaxError> {
        self.skip_ws();
        if self.buf.get(self.pos) == Some(&b']') {
            self.pos += 1;
            return Ok(false);
        }
        if !*first {
            self.eat(b',', "expected ',' or ']' in array")?;
        }
        *first = false;
        self.skip_ws();
        Ok(true)
    }

    /// Reads a string value, decoding escapes only when there are any.
    #[inline]
    pub fn string(&mut self) -> Result<Cow<'a, str>, SyntaxError> {
        self.skip_ws();
        // Values read (ids, timestamps, model ARNs) are short and unescaped: over text known to
        // be UTF-8, found a block at a time and sliced out here, without the general search.
        if let (Some(text), Some(&b'"')) = (self.text, self.buf.get(self.pos)) {
            let mut i = self.pos + 1;
            while let Some(block) = self.buf.get(i..i + BLOCK).filter(|_| i - self.pos <= FAST_STRING) {
                let block: &[u8; BLOCK] = block.try_into().expect("one block");
                match first_special(block) {
                    Some(off) if self.buf[i + off] == b'"' => {
                        let value = &text[self.pos + 1..i + off];
                        if has_control(value.as_bytes()) {
                            return self.err("raw control character in a string");
                        }
                        self.pos = i + off + 1;
                        return Ok(Cow::Borrowed(value));
                    }
                    Some(_) => break,
                    None => i += BLOCK,
                }
            }
        }
        let start = self.pos;
        let (end, escaped) = self.string_end()?;
        if !escaped {
            if has_control(&self.buf[start + 1..end - 1]) {
                self.pos = start;
                return self.err("raw control character in a string");
            }
            if let Some(text) = self.text {
                return Ok(Cow::Borrowed(&text[start + 1..end - 1]));
            }
            return match std::str::from_utf8(&self.buf[start + 1..end - 1]) {
                Ok(s) => Ok(Cow::Borrowed(s)),
                Err(_) => Err(SyntaxError { at: start, what: "string is not valid UTF-8" }),
            };
        }
        match serde_json::from_slice::<String>(&self.buf[start..end]) {
            Ok(s) => Ok(Cow::Owned(s)),
            Err(_) => Err(SyntaxError { at: start, what: "invalid escape in string" }),
        }
    }

    /// Moves past a string starting at `pos`; returns its end and whether it has escapes.
    #[inline]
    fn string_end(&mut self) -> Result<(usize, bool), SyntaxError> {
        if self.buf.get(self.pos) != Some(&b'"') {
            return self.err("expected a string");
        }
        let mut i = self.pos + 1;
        let mut escaped = false;
        // Keys and most values are short: look at the first bytes a block at a time before
        // handing the rest to memchr, whose set-up costs more than a short string.
        let blocks_end = (i + SHORT_STRING).min(self.buf.len());
        while i + BLOCK <= blocks_end {
            let block: &[u8; BLOCK] = self.buf[i..i + BLOCK].try_into().expect("one block");
            if let Some(off) = first_special(block) {
                let at = i + off;
                if self.buf[at] == b'"' {
                    self.pos = at + 1;
                    return Ok((self.pos, false));
                }
                // An escape: the loop below takes it from here.
                i = at;
                break;
            }
            i += BLOCK;
        }
        loop {
            match memchr::memchr2(b'"', b'\\', &self.buf[i..]) {
                Some(off) => {
                    let at = i + off;
                    if self.buf[at] == b'"' {
                        self.pos = at + 1;
                        return Ok((self.pos, escaped));
                    }
                    escaped = true;
                    i = at + 2;
                    if i > self.buf.len() {
                        self.pos = self.buf.len();
                        return self.err("unterminated string");
                    }
                }
                None => {
                    self.pos = self.buf.len();
                    return self.err("unterminated string");
                }
            }
        }
    }

    /// Reads a non-negative integer. Other numbers and other kinds are reported as such.
    #[inline]
    pub fn number(&mut self) -> Result<Number, SyntaxError> {
        self.skip_ws();
        let start = self.pos;
        let mut negative = false;
        if self.buf.get(self.pos) == Some(&b'-') {
            negative = true;
            self.pos += 1;
        }
        let digits_start = self.pos;
        let mut value: u64 = 0;
        let mut overflow = false;
        while let Some(&b) = self.buf.get(self.pos) {
            if b.is_ascii_digit() {
                match value.checked_mul(10).and_then(|v| v.checked_add(u64::from(b - b'0'))) {
                    Some(v) => value = v,
                    None => overflow = true,
                }
                self.pos += 1;
            } else {
                break;
            }
        }
        if self.pos == digits_start {
            self.pos = start;
            return self.err("expected a number");
        }
        let mut fractional = false;
        while let Some(&b) = self.buf.get(self.pos) {
            if matches!(b, b'.' | b'e' | b'E' | b'+' | b'-' | b'0'..=b'9') {
                if matches!(b, b'.' | b'e' | b'E') {
                    fractional = true;
                }
                self.pos += 1;
            } else {
                break;
            }
        }
        Ok(if fractional {
            Number::Fractional
        } else if negative && value != 0 {
            Number::Negative
        } else if overflow {
            Number::TooLarge
        } else {
            Number::Integer(value)
        })
    }

    /// The raw bytes of the next value, skipped without being built.
    pub fn raw_value(&mut self) -> Result<&'a [u8], SyntaxError> {
        self.skip_ws();
        let start = self.pos;
        self.skip_value()?;
        Ok(&self.buf[start..self.pos])
    }

    /// Skips one value of any kind.
    #[inline]
    pub fn skip_value(&mut self) -> Result<(), SyntaxError> {
        match self.peek_kind()? {
            Kind::String => self.string_end().map(|_| ()),
            Kind::Number => self.number().map(|_| ()),
            Kind::Bool | Kind::Null => self.literal(),
            Kind::Object | Kind::Array => self.skip_container(),
        }
    }

    fn literal(&mut self) -> Result<(), SyntaxError> {
        for word in [&b"true"[..], b"false", b"null"] {
            if self.buf[self.pos..].starts_with(word) {
                self.pos += word.len();
                return Ok(());
            }
        }
        self.err("invalid literal")
    }

    /// Skips a whole object or array by matching brackets outside strings.
    ///
    /// A block of 64 bytes at a time: one pass of compares marks its quotes, backslashes and
    /// brackets as bits; the escaped bytes follow from the backslashes, the bytes inside
    /// strings from a running XOR of the unescaped quotes; only the brackets outside strings
    /// are then visited one by one, and matched on a stack. A backslash outside a string is an
    /// error (it is not JSON, and it would otherwise change what the quotes after it mean).
    // One copy, called: it runs for many blocks, and `skip_value` is inlined where it is used.
    #[inline(never)]
    fn skip_container(&mut self) -> Result<(), SyntaxError> {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has just been seen to support AVX2.
            return unsafe { self.skip_container_avx2() };
        }
        self.skip_container_with(Masks::of)
    }

    /// [`Scanner::skip_container_with`] compiled for AVX2, with its masks two 32-byte compares
    /// per class instead of four 16-byte ones.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    fn skip_container_avx2(&mut self) -> Result<(), SyntaxError> {
        // A closure defined here has this function's target features, so the masks inline.
        self.skip_container_with(|block| Masks::of_avx2(block))
    }

    /// The skip itself, over the masks `masks` computes for each block.
    #[inline(always)]
    fn skip_container_with(&mut self, masks: impl Fn(&[u8; STRUCT_BLOCK]) -> Masks) -> Result<(), SyntaxError> {
        // The closing bracket each open container expects, innermost last; on the stack up to
        // 64 deep (bodies rarely nest further), so skipping allocates nothing.
        let mut inline = [0u8; 64];
        let mut deeper: Vec<u8> = Vec::new();
        let mut depth = 0usize;
        // All ones while the previous block ended inside a string.
        let mut in_string = 0u64;
        // The previous block ended with a backslash that escapes this block's first byte.
        let mut escape_first = false;
        let mut base = self.pos;
        let mut tail = [b' '; STRUCT_BLOCK];
        while base < self.buf.len() {
            let block: &[u8; STRUCT_BLOCK] = match self.buf.get(base..base + STRUCT_BLOCK) {
                Some(full) => full.try_into().expect("one block"),
                None => {
                    let rest = &self.buf[base..];
                    tail[..rest.len()].copy_from_slice(rest);
                    &tail
                }
            };
            let m = masks(block);
            let escaped = escaped_bytes(m.backslash, &mut escape_first);
            let inside = prefix_xor(m.quote & !escaped) ^ in_string;
            in_string = ((inside as i64) >> 63) as u64;
            let mut structural = (m.open | m.close | m.backslash) & !inside;
            while structural != 0 {
                let at = base + structural.trailing_zeros() as usize;
                structural &= structural - 1;
                let b = self.buf[at];
                if b == b'\\' {
                    self.pos = at;
                    return self.err("backslash outside a string");
                }
                if b == b'{' || b == b'[' {
                    if depth >= MAX_DEPTH {
                        self.pos = at;
                        return self.err("nesting too deep");
                    }
                    let close = if b == b'{' { b'}' } else { b']' };
                    match inline.get_mut(depth) {
                        Some(slot) => *slot = close,
                        None => deeper.push(close),
                    }
                    depth += 1;
                    continue;
                }
                let expected = match depth {
                    0 => None,
                    d if d <= inline.len() => Some(inline[d - 1]),
                    _ => deeper.pop(),
                };
                if expected != Some(b) {
                    self.pos = at;
                    return self.err("mismatched bracket");
                }
                depth -= 1;
                if depth == 0 {
                    self.pos = at + 1;
                    return Ok(());
                }
            }
            base += STRUCT_BLOCK;
        }
        self.pos = self.buf.len();
        self.err(if in_string != 0 { "unterminated string" } else { "unexpected end of input" })
    }
}

/// Bytes [`Scanner::skip_container`] classifies in one step.
const STRUCT_BLOCK: usize = 64;

/// One bit per byte of a block (bit `i` for byte `i`): where its quotes, backslashes,
/// opening brackets (`{`, `[`) and closing brackets (`}`, `]`) are.
struct Masks {
    quote: u64,
    backslash: u64,
    open: u64,
    close: u64,
}

impl Masks {
    /// Four SSE2 compares per 16 bytes (SSE2 is part of the x86_64 baseline). `[` and `{`
    /// differ only in bit 0x20, as do `]` and `}`, so each pair is one compare after setting it.
    #[cfg(target_arch = "x86_64")]
    #[inline]
    fn of(block: &[u8; STRUCT_BLOCK]) -> Masks {
        use std::arch::x86_64::{
            __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
        };
        let mut m = Masks { quote: 0, backslash: 0, open: 0, close: 0 };
        for k in 0..STRUCT_BLOCK / 16 {
            // SAFETY: SSE2 is always available on x86_64; the unaligned load reads 16 of the 64
            // bytes `block` borrows (k < 4).
            let [q, b, o, c] = unsafe {
                let v = _mm_loadu_si128(block.as_ptr().add(16 * k).cast::<__m128i>());
                let folded = _mm_or_si128(v, _mm_set1_epi8(0x20));
                let bits = |x| u64::from(_mm_movemask_epi8(x) as u16);
                [
                    bits(_mm_cmpeq_epi8(v, _mm_set1_epi8(b'"' as i8))),
                    bits(_mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8))),
                    bits(_mm_cmpeq_epi8(folded, _mm_set1_epi8(b'{' as i8))),
                    bits(_mm_cmpeq_epi8(folded, _mm_set1_epi8(b'}' as i8))),
                ]
            };
            m.quote |= q << (16 * k);
            m.backslash |= b << (16 * k);
            m.open |= o << (16 * k);
            m.close |= c << (16 * k);
        }
        m
    }

    /// The same with AVX2: two 32-byte halves.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    #[inline]
    fn of_avx2(block: &[u8; STRUCT_BLOCK]) -> Masks {
        use std::arch::x86_64::{
            __m256i, _mm256_cmpeq_epi8, _mm256_loadu_si256, _mm256_movemask_epi8, _mm256_or_si256, _mm256_set1_epi8,
        };
        let mut m = Masks { quote: 0, backslash: 0, open: 0, close: 0 };
        for k in 0..STRUCT_BLOCK / 32 {
            // SAFETY: the unaligned load reads 32 of the 64 bytes `block` borrows (k < 2).
            let v = unsafe { _mm256_loadu_si256(block.as_ptr().add(32 * k).cast::<__m256i>()) };
            let folded = _mm256_or_si256(v, _mm256_set1_epi8(0x20));
            let bits = |x| u64::from(_mm256_movemask_epi8(x) as u32);
            m.quote |= bits(_mm256_cmpeq_epi8(v, _mm256_set1_epi8(b'"' as i8))) << (32 * k);
            m.backslash |= bits(_mm256_cmpeq_epi8(v, _mm256_set1_epi8(b'\\' as i8))) << (32 * k);
            m.open |= bits(_mm256_cmpeq_epi8(folded, _mm256_set1_epi8(b'{' as i8))) << (32 * k);
            m.close |= bits(_mm256_cmpeq_epi8(folded, _mm256_set1_epi8(b'}' as i8))) << (32 * k);
        }
        m
    }

    /// A byte at a time, on targets other than x86_64 (and the reference the SSE2 version is
    /// tested against).
    #[cfg_attr(target_arch = "x86_64", allow(dead_code))]
    fn of_bytes(block: &[u8; STRUCT_BLOCK]) -> Masks {
        let mut m = Masks { quote: 0, backslash: 0, open: 0, close: 0 };
        for (i, &b) in block.iter().enumerate() {
            let bit = 1u64 << i;
            match b {
                b'"' => m.quote |= bit,
                b'\\' => m.backslash |= bit,
                b'{' | b'[' => m.open |= bit,
                b'}' | b']' => m.close |= bit,
                _ => {}
            }
        }
        m
    }

    #[cfg(not(target_arch = "x86_64"))]
    #[inline]
    fn of(block: &[u8; STRUCT_BLOCK]) -> Masks {
        Self::of_bytes(block)
    }
}

/// The bytes escaped by a backslash in a block whose backslashes are `backslash`: a backslash
/// escapes the byte after it unless it is itself escaped. `carry` says on entry whether the
/// block's first byte is escaped (by the previous block's last), and on return whether the
/// next block's is. Backslashes are rare in logs (`\n`, `\"` in bodies), so a loop over them
/// costs less than the branch-free carry arithmetic.
#[inline]
fn escaped_bytes(mut backslash: u64, carry: &mut bool) -> u64 {
    let mut escaped = 0u64;
    if std::mem::take(carry) {
        escaped = 1;
        backslash &= !1;
    }
    while backslash != 0 {
        let i = backslash.trailing_zeros();
        if i == 63 {
            *carry = true;
            break;
        }
        escaped |= 1 << (i + 1);
        // The backslash and the byte it escapes (which escapes nothing, even a backslash).
        backslash &= !(3u64 << i);
    }
    escaped
}

/// Bit `i` of the result is the XOR of bits `0..=i` of `x`: with `x` the unescaped quotes,
/// the bytes from each opening quote up to (not including) its closing one.
#[inline]
fn prefix_xor(mut x: u64) -> u64 {
    x ^= x << 1;
    x ^= x << 2;
    x ^= x << 4;
    x ^= x << 8;
    x ^= x << 16;
    x ^= x << 32;
    x
}

/// A JSON number as tally's counters see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Number {
    Integer(u64),
    Negative,
    Fractional,
    TooLarge,
}

/// The text of a JSON string given whole, quotes included (`raw` as [`Scanner::raw_value`]
/// delimits it): escapes decoded, in one pass that copies the runs between backslashes. A
/// CloudWatch event's `message` (a whole record, escaped) is read this way: several times
/// faster than a general JSON string parser on text that is one escape every few bytes.
pub fn unescape_string(raw: &[u8]) -> Result<String, SyntaxError> {
    let bad = |at: usize, what: &'static str| SyntaxError { at, what };
    let inner = match raw {
        [b'"', inner @ .., b'"'] => inner,
        _ => return Err(bad(0, "expected a string")),
    };
    let mut out: Vec<u8> = Vec::with_capacity(inner.len());
    let mut i = 0;
    while i < inner.len() {
        let Some(k) = memchr::memchr(b'\\', &inner[i..]) else {
            out.extend_from_slice(&inner[i..]);
            break;
        };
        out.extend_from_slice(&inner[i..i + k]);
        let at = i + k + 1;
        let Some(&e) = inner.get(at) else { return Err(bad(at, "unterminated escape")) };
        i = at + 1;
        match e {
            b'"' | b'\\' | b'/' => out.push(e),
            b'b' => out.push(0x08),
            b'f' => out.push(0x0c),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'u' => {
                let hex = |at: usize| -> Option<u32> {
                    let h = inner.get(at..at + 4)?;
                    u32::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok()
                };
                let hi = hex(i).ok_or(bad(i, "invalid \\u escape"))?;
                i += 4;
                let c = if (0xD800..0xDC00).contains(&hi) {
                    // A surrogate pair: `\uD83D\uDE00`.
                    let lo = match (inner.get(i..i + 2), hex(i + 2)) {
                        (Some(b"\\u"), Some(lo)) if (0xDC00..0xE000).contains(&lo) => lo,
                        _ => return Err(bad(i, "unpaired surrogate in \\u escape")),
                    };
                    i += 6;
                    char::from_u32(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00))
                } else {
                    char::from_u32(hi)
                };
                let c = c.ok_or(bad(i, "invalid \\u escape"))?;
                out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
            }
            _ => return Err(bad(at, "invalid escape in string")),
        }
    }
    if has_control(inner) {
        return Err(bad(0, "raw control character in a string"));
    }
    String::from_utf8(out).map_err(|_| bad(0, "string is not valid UTF-8"))
}

/// Whether a string's raw bytes hold a control character (below U+0020), which JSON allows
/// only escaped: a NUL or 0x01 in a tenant id is a broken record, not a tenant.
#[inline]
fn has_control(bytes: &[u8]) -> bool {
    bytes.iter().any(|&b| b < 0x20)
}

/// True when `bytes` holds exactly one complete JSON value (surrounding white space allowed).
pub fn is_complete_value(bytes: &[u8]) -> bool {
    let mut s = Scanner::new(bytes);
    s.skip_value().is_ok() && s.at_end()
}

/// Finds the string value of `key` in a flat JSON object given as raw bytes (e.g. the
/// `requestMetadata` map). Non-string values are treated as absent.
pub fn lookup_string<'a>(object: &'a [u8], key: &str) -> Option<Cow<'a, str>> {
    // Checked as UTF-8 once (objects here are small), so keys and values are sliced out.
    let mut s = match std::str::from_utf8(object) {
        Ok(text) => Scanner::new_str(text),
        Err(_) => Scanner::new(object),
    };
    s.begin_object().ok()?;
    let mut first = true;
    // The last of a key given twice, as standard JSON parsers (and tally for every other
    // field) take it.
    let mut found = None;
    while let Some(k) = s.next_key(&mut first).ok()? {
        if k == key {
            found = match s.peek_kind().ok()? {
                Kind::String => Some(s.string().ok()),
                _ => {
                    s.skip_value().ok()?;
                    Some(None)
                }
            };
        } else {
            s.skip_value().ok()?;
        }
    }
    found.flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Any string serde_json writes is read back by [`unescape_string`] as serde_json
        /// reads it.
        #[test]
        fn unescaping_agrees_with_serde_json(text in "\\PC*", escape_all in proptest::bool::ANY) {
            let raw = if escape_all {
                // Every character as \\uXXXX (surrogate pairs included).
                let mut r = String::from("\"");
                for u in text.encode_utf16() {
                    r.push_str(&format!("\\u{u:04x}"));
                }
                r.push('"');
                r
            } else {
                serde_json::to_string(&text).unwrap()
            };
            proptest::prop_assert_eq!(unescape_string(raw.as_bytes()).unwrap(), text);
        }
    }

    #[test]
    fn unescaping_refuses_what_json_refuses() {
        for bad in [&b"\"a\\x\""[..], b"\"\\u12\"", b"\"\\ud83d\"", b"\"a\x01b\"", b"\"ab\\\"", b"abc"] {
            assert!(unescape_string(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn skips_nested_values_with_brackets_inside_strings() {
        let text = br#"{"a":[1,{"b":"]}\"["},null],"c":true} tail"#;
        let mut s = Scanner::new(text);
        s.skip_value().unwrap();
        assert_eq!(&text[s.pos()..], b" tail");
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_sse2_block_search_agrees_with_the_word_search() {
        // Every placement of a quote and a backslash (or neither) in a block of other bytes.
        for q in 0..=BLOCK {
            for b in 0..=BLOCK {
                let mut block = [b'a'; BLOCK];
                if b < BLOCK {
                    block[b] = b'\\';
                }
                if q < BLOCK {
                    block[q] = b'"';
                }
                let halves = [&block[..8], &block[8..]];
                let by_words = halves
                    .iter()
                    .enumerate()
                    .find_map(|(i, h)| first_special_in_word((*h).try_into().expect("8 bytes")).map(|at| i * 8 + at));
                assert_eq!(first_special(&block), by_words, "{:?}", String::from_utf8_lossy(&block));
                assert_eq!(by_words, [q, b].into_iter().filter(|&i| i < BLOCK).min());
            }
        }
    }

    /// Skips the container at `pos` a byte at a time, the way the scanner did before its
    /// block search: the reference the block search must agree with. `Ok(end)` or an error.
    fn skip_container_bytewise(buf: &[u8], mut pos: usize) -> Result<usize, ()> {
        let mut stack = Vec::new();
        while let Some(&b) = buf.get(pos) {
            match b {
                b'"' => {
                    let mut s = Scanner { buf, text: None, pos };
                    s.string_end().map_err(drop)?;
                    pos = s.pos;
                    continue;
                }
                b'\\' => return Err(()),
                b'{' | b'[' => {
                    if stack.len() >= MAX_DEPTH {
                        return Err(());
                    }
                    stack.push(if b == b'{' { b'}' } else { b']' });
                }
                b'}' | b']' => {
                    if stack.pop() != Some(b) {
                        return Err(());
                    }
                    if stack.is_empty() {
                        return Ok(pos + 1);
                    }
                }
                _ => {}
            }
            pos += 1;
        }
        Err(())
    }

    /// The skip this CPU runs (AVX2 where it has it) and the SSE2 one end where the bytewise
    /// skip does, or all fail.
    fn check_against_bytewise(text: &[u8]) {
        let want = skip_container_bytewise(text, 0);
        let mut s = Scanner::new(text);
        let got = s.skip_container().map(|()| s.pos()).map_err(drop);
        assert_eq!(got, want, "{:?}", String::from_utf8_lossy(text));
        let mut s = Scanner::new(text);
        let sse2 = s.skip_container_with(Masks::of).map(|()| s.pos()).map_err(drop);
        assert_eq!(sse2, want, "SSE2 masks: {:?}", String::from_utf8_lossy(text));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4000))]

        /// Any text made of the bytes that matter (and a two-byte character), starting with a
        /// bracket, of every length across the 64-byte blocks: the same end, or both an error.
        #[test]
        fn the_block_skip_agrees_with_the_bytewise_skip(
            open in proptest::sample::select(vec![b'{', b'[']),
            body in proptest::collection::vec(proptest::sample::select(vec![
                b'{', b'}', b'[', b']', b'"', b'"', b'\\', b'a', b' ', b',', b':', 0xC3, 0xA9,
            ]), 0..300),
        ) {
            let mut text = vec![open];
            text.extend(body);
            check_against_bytewise(&text);
        }

        /// Valid JSON (nested objects and arrays, strings with escapes) followed by more text.
        #[test]
        fn the_block_skip_finds_the_end_of_valid_json(
            value in json_value(),
            after in "[ ,x\\\\]{0,3}",
        ) {
            let text = format!("{value}{after}");
            let mut s = Scanner::new(text.as_bytes());
            s.skip_container().unwrap();
            proptest::prop_assert_eq!(&text[s.pos()..], after.as_str());
            check_against_bytewise(text.as_bytes());
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        /// An object's keys and string values read by the scanner are serde_json's, whatever
        /// the keys hold (short or long, escapes, non-ASCII, a quote at a block's edge) and
        /// with or without white space around the colons, over text known to be UTF-8 or not.
        #[test]
        fn keys_and_strings_read_as_serde_json_reads_them(
            fields in proptest::collection::btree_map(
                "([a-zA-Z]{0,20}|[a-z\"\\\\/é\t]{0,24})",
                "[a-z0-9:\"\\\\é\n -]{0,40}",
                0..10,
            ),
            pretty: bool,
        ) {
            let (colon, comma) = if pretty { (" : ", ",\n  ") } else { (":", ",") };
            let members: Vec<String> = fields
                .iter()
                .map(|(k, v)| format!("{}{colon}{}", serde_json::to_string(k).unwrap(), serde_json::to_string(v).unwrap()))
                .collect();
            let text = format!("{{{}}}", members.join(comma));
            for mut s in [Scanner::new_str(&text), Scanner::new(text.as_bytes())] {
                s.begin_object().unwrap();
                let mut first = true;
                let mut read = Vec::new();
                while let Some(key) = s.next_key(&mut first).unwrap() {
                    read.push((key.into_owned(), s.string().unwrap().into_owned()));
                }
                proptest::prop_assert!(s.at_end());
                let want: Vec<(String, String)> = fields.clone().into_iter().collect();
                proptest::prop_assert_eq!(read, want);
            }
        }
    }

    /// Objects and arrays up to a few levels deep, with strings that hold quotes, backslashes,
    /// brackets and non-ASCII text, printed by serde_json (so escaped as a logger would).
    fn json_value() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            "[a-z\\\\\"{}\\[\\]é\n ]{0,80}".prop_map(serde_json::Value::String),
            any::<i32>().prop_map(serde_json::Value::from),
            Just(serde_json::Value::Null),
        ];
        let tree = leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..8).prop_map(serde_json::Value::Array),
                proptest::collection::btree_map("[a-z\"\\\\]{0,12}", inner, 0..8)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        });
        prop_oneof![
            proptest::collection::vec(tree.clone(), 0..6).prop_map(serde_json::Value::Array),
            proptest::collection::btree_map("[a-z]{1,8}", tree, 0..6)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
        .prop_map(|v| v.to_string())
    }

    #[test]
    fn a_backslash_outside_a_string_is_an_error() {
        // Were it taken as an escape, the quote after it would not open a string and the
        // bracket inside that string would close the array.
        assert!(Scanner::new(br#"[\"]",1]"#).skip_value().is_err());
        assert!(Scanner::new(br#"["\\",1]"#).skip_value().is_ok());
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_sse2_masks_agree_with_the_bytewise_masks() {
        let mut block = [0u8; STRUCT_BLOCK];
        for seed in 0..2000u64 {
            let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            for b in block.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = [b'"', b'\\', b'{', b'}', b'[', b']', b'a', 0xFB, 0xFD, 0xDB, 0x5B, 0x7B][(x % 12) as usize]
                    ^ if x % 97 == 0 { 0x20 } else { 0 };
            }
            let (a, b) = (Masks::of(&block), Masks::of_bytes(&block));
            assert_eq!((a.quote, a.backslash, a.open, a.close), (b.quote, b.backslash, b.open, b.close), "{block:?}");
            #[cfg(target_arch = "x86_64")]
            if std::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU supports AVX2.
                let c = unsafe { Masks::of_avx2(&block) };
                assert_eq!(
                    (c.quote, c.backslash, c.open, c.close),
                    (b.quote, b.backslash, b.open, b.close),
                    "{block:?}"
                );
            }
        }
    }

    #[test]
    fn escapes_carry_across_blocks() {
        // A backslash as the last byte of a block escapes the first byte of the next.
        for n in 0..140 {
            let text = format!("[\"{}\\\"]\"]", "a".repeat(n));
            let mut s = Scanner::new(text.as_bytes());
            s.skip_value().unwrap();
            assert_eq!(s.pos(), text.len(), "{n}");
            let text = format!("[\"{}\\\\\"]", "a".repeat(n));
            let mut s = Scanner::new(text.as_bytes());
            s.skip_value().unwrap();
            assert_eq!(s.pos(), text.len(), "{n}");
        }
    }

    #[test]
    fn numbers_are_classified() {
        let check = |t: &str, n: Number| assert_eq!(Scanner::new(t.as_bytes()).number().unwrap(), n, "{t}");
        check("42", Number::Integer(42));
        check("-0", Number::Integer(0));
        check("-3", Number::Negative);
        check("1.5", Number::Fractional);
        check("1e3", Number::Fractional);
        check("99999999999999999999999", Number::TooLarge);
    }

    #[test]
    fn complete_values_are_recognised() {
        assert!(is_complete_value(b" {\"a\":1} \n"));
        assert!(!is_complete_value(b"{"));
        assert!(!is_complete_value(b"{\"a\":1} x"));
        assert!(!is_complete_value(b"Permissions are correctly set for Amazon Bedrock logs."));
    }

    #[test]
    fn lookup_decodes_escapes() {
        let obj = br#"{"x":1,"tenant_id":"acme\u002dcorp"}"#;
        assert_eq!(lookup_string(obj, "tenant_id").as_deref(), Some("acme-corp"));
        assert_eq!(lookup_string(obj, "x"), None);
        assert_eq!(lookup_string(obj, "missing"), None);
    }

    #[test]
    fn unterminated_and_deep_input_is_an_error_not_a_hang() {
        assert!(Scanner::new(b"\"abc").skip_value().is_err());
        assert!(Scanner::new(b"[[[[").skip_value().is_err());
        let deep = "[".repeat(MAX_DEPTH + 10);
        assert!(Scanner::new(deep.as_bytes()).skip_value().is_err());
    }

    /// Nesting past the 64 levels kept on the stack is matched just as strictly.
    #[test]
    fn brackets_are_matched_at_every_depth() {
        for depth in [1, 63, 64, 65, 200, MAX_DEPTH] {
            let open: String = (0..depth).map(|i| if i % 2 == 0 { "{\"k\":" } else { "[" }).collect();
            let close: String = (0..depth).rev().map(|i| if i % 2 == 0 { "}" } else { "]" }).collect();
            let ok = format!("{open}\"x\\\"]}}\"{close},");
            let mut s = Scanner::new(ok.as_bytes());
            assert!(s.skip_value().is_ok(), "depth {depth}");
            assert_eq!(&ok[s.pos()..], ",", "depth {depth}");
            for wrong in [0, depth / 2, depth - 1] {
                let mut bad = close.clone().into_bytes();
                bad[wrong] = if bad[wrong] == b'}' { b']' } else { b'}' };
                let bad = format!("{open}1{}", String::from_utf8(bad).unwrap());
                assert!(Scanner::new(bad.as_bytes()).skip_value().is_err(), "depth {depth}, wrong bracket {wrong}");
            }
        }
        let too_deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert!(Scanner::new(too_deep.as_bytes()).skip_value().is_err());
    }

    #[test]
    fn short_and_long_strings_end_at_their_closing_quote() {
        // Every length around the word-at-a-time and memchr boundaries, with an escaped quote
        // or backslash at every position, over ASCII and multi-byte text (bytes >= 0x80 must
        // not look like a quote).
        for filler in ["a", "é", "a\u{7f}"] {
            for len in 0..=80 {
                let plain = filler.repeat(len);
                let positions = (0..=plain.len()).filter(|i| plain.is_char_boundary(*i)).map(Some);
                for escape_at in std::iter::once(None).chain(positions) {
                    for (escape, decoded) in [("\\\"", "\""), ("\\\\", "\\")] {
                        let mut body = plain.clone();
                        if let Some(at) = escape_at {
                            body.insert_str(at, escape);
                        }
                        let text = format!("\"{body}\":1");
                        let mut s = Scanner::new(text.as_bytes());
                        let got = s.string().unwrap();
                        assert_eq!(&text[s.pos()..], ":1", "{filler:?} x {len}, escape {escape:?} at {escape_at:?}");
                        assert_eq!(got, body.replace(escape, decoded));
                    }
                }
            }
        }
    }
}
