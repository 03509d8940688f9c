//! The scanner: a cursor over the input that splits it into entries and tokens.
//!
//! Token ends are found by `scan::find`, eight bytes at a time; a backslash stops the
//! search so escapes are handled out of line. A token is copied only when it held an
//! escape sequence. Positions are absolute byte offsets into the input; line and column
//! are worked out only when an error is reported.

use std::borrow::Cow;

use crate::scan::{find, CONTROL, KEY_END, MEAS_END, STR_STOP, TAG_VALUE_END, VALUE_END};
use crate::value::{parse_i64, parse_number, parse_timestamp_prefix, NumError};
use crate::{FieldValue, Line, ParseError};

/// How much input is checked for UTF-8 at once; tokens inside the checked window are
/// turned into `&str` without another check.
const UTF8_WINDOW_BYTES: usize = 64 * 1024;

/// The characters a backslash escapes, per kind of token.
#[derive(Clone, Copy)]
enum Escapes {
    /// Measurement names: comma and space.
    Measurement,
    /// Tag keys, tag values and field keys: comma, equals sign and space.
    Key,
    /// String field values: double quote and backslash.
    Str,
}

impl Escapes {
    #[inline]
    fn escapes(self, c: u8) -> bool {
        match self {
            Escapes::Measurement => c == b',' || c == b' ',
            Escapes::Key => c == b',' || c == b'=' || c == b' ',
            Escapes::Str => c == b'"' || c == b'\\',
        }
    }
}

/// A scanned token: its byte range and whether it holds an escape sequence.
#[derive(Clone, Copy)]
struct Span {
    start: usize,
    end: usize,
    escaped: bool,
}

impl Span {
    fn is_empty(self) -> bool {
        self.end == self.start
    }
}

/// An error found at an absolute input offset, before it is given a line and column.
struct Fail {
    offset: usize,
    message: String,
}

#[cold]
fn fail<T>(offset: usize, message: String) -> Result<T, Fail> {
    Err(Fail { offset, message })
}

/// Shows one input byte in an error message.
fn show(c: u8) -> String {
    format!("'{}'", c.escape_ascii())
}

/// Iterates the entries of line-protocol input, skipping empty lines and `#` comment lines.
/// Parts are borrowed (`Cow::Borrowed`) whenever no unescaping is needed.
pub fn parse_lines(input: &[u8]) -> Lines<'_> {
    Lines {
        input,
        pos: 0,
        line: 1,
        line_start: 0,
        entry_line: 1,
        entry_line_start: 0,
        valid_base: 0,
        valid: "",
    }
}

/// Iterator over the entries of line-protocol input; see [`parse_lines`].
///
/// After an error it resumes at the next line, so a caller may collect every error of a
/// batch, or stop at the first.
#[derive(Clone)]
pub struct Lines<'a> {
    input: &'a [u8],
    /// Cursor: offset of the next byte to look at.
    pos: usize,
    /// 1-based line number of the byte at `pos`.
    line: usize,
    /// Offset of the first byte of that line.
    line_start: usize,
    /// `line` and `line_start` when the current entry (or comment) began; errors are
    /// located relative to them.
    entry_line: usize,
    entry_line_start: usize,
    /// A window of the input known to be valid UTF-8, starting at offset `valid_base`.
    valid_base: usize,
    valid: &'a str,
}

impl std::fmt::Debug for Lines<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lines")
            .field("input_len", &self.input.len())
            .field("pos", &self.pos)
            .field("line", &self.line)
            .finish_non_exhaustive()
    }
}

/// What lies at the cursor after blank and comment lines.
enum Next {
    End,
    Entry,
    BadComment(usize),
}

impl<'a> Lines<'a> {
    /// Parses the next entry into `out`, reusing the capacity of its vectors; the hot-path
    /// alternative to [`Iterator::next`]. Returns `None` at the end of the input. On error
    /// `out` holds whatever was parsed before the error and should be ignored.
    pub fn next_into(&mut self, out: &mut Line<'a>) -> Option<Result<(), ParseError>> {
        out.clear();
        let result = match self.skip_blank_lines() {
            Next::End => return None,
            Next::Entry => self.entry(out),
            Next::BadComment(offset) => {
                let found = self
                    .input
                    .get(offset)
                    .map_or_else(String::new, |&c| show(c));
                fail(offset, format!("invalid character {found} in comment line"))
            }
        };
        Some(result.map_err(|f| self.recover(f)))
    }

    /// Skips empty lines, lines of spaces and comment lines. Leaves the cursor on the
    /// first byte of an entry (leading spaces skipped).
    fn skip_blank_lines(&mut self) -> Next {
        let buf = self.input;
        loop {
            self.skip_spaces();
            self.entry_line = self.line;
            self.entry_line_start = self.line_start;
            match buf.get(self.pos) {
                None => return Next::End,
                Some(b'#') => {
                    let i = find::<CONTROL>(buf, self.pos + 1);
                    self.pos = i;
                    if !self.take_eol() {
                        return Next::BadComment(i);
                    }
                }
                Some(b'\n' | b'\r') => {
                    if !self.take_eol() {
                        // A lone carriage return: the entry parser reports it.
                        return Next::Entry;
                    }
                }
                Some(_) => return Next::Entry,
            }
        }
    }

    /// Parses one entry; the cursor starts on its first byte and ends after its line end.
    fn entry(&mut self, out: &mut Line<'a>) -> Result<(), Fail> {
        self.measurement(out)?;
        self.tags(out)?;
        if self.fields(out)? {
            self.timestamp(out)?;
        }
        Ok(())
    }

    fn measurement(&mut self, out: &mut Line<'a>) -> Result<(), Fail> {
        let name = self.scan_token::<MEAS_END>(self.pos, Escapes::Measurement);
        if name.is_empty() {
            return match self.input.get(name.start) {
                Some(&c) => fail(
                    name.start,
                    format!("invalid character {} at start of measurement name", show(c)),
                ),
                None => fail(name.start, "expected measurement name".to_owned()),
            };
        }
        out.measurement = match self.borrowed(name) {
            Some(s) => Cow::Borrowed(s),
            None => self.text_slow(name, Escapes::Measurement)?,
        };
        self.pos = name.end;
        self.tag_comma()
    }

    /// Consumes the comma after a measurement name or tag value, if any, and checks that a
    /// tag key may follow it.
    #[inline]
    fn tag_comma(&mut self) -> Result<(), Fail> {
        if self.input.get(self.pos) != Some(&b',') {
            return Ok(());
        }
        self.pos += 1;
        match self.input.get(self.pos) {
            None => fail(
                self.pos,
                "expected tag key after comma, found end of input".to_owned(),
            ),
            Some(b' ' | b'\r' | b'\n') => fail(
                self.pos,
                "expected tag key after comma, found white space".to_owned(),
            ),
            Some(_) => Ok(()),
        }
    }

    fn tags(&mut self, out: &mut Line<'a>) -> Result<(), Fail> {
        let buf = self.input;
        let tags_start = self.pos;
        loop {
            if buf.get(self.pos) == Some(&b' ') {
                self.skip_spaces();
                break;
            }
            let key = self.scan_token::<KEY_END>(self.pos, Escapes::Key);
            match (key.is_empty(), buf.get(key.end)) {
                (false, Some(b'=')) => {}
                (true, None) => {
                    return fail(
                        key.start,
                        "expected tag key or field, found end of input".to_owned(),
                    )
                }
                (true, Some(&c)) => {
                    return fail(
                        key.start,
                        format!("expected tag key or field, found {}", show(c)),
                    )
                }
                (false, found) => {
                    return fail(
                        key.end,
                        format!(
                            "expected '=' after tag key {}, found {}",
                            self.raw(key),
                            found.map_or_else(|| "end of input".to_owned(), |&c| show(c))
                        ),
                    )
                }
            }
            let value = self.scan_token::<TAG_VALUE_END>(key.end + 1, Escapes::Key);
            if value.is_empty() {
                return fail(
                    value.start,
                    format!("expected tag value after tag key {}", self.raw(key)),
                );
            }
            // The common case builds both parts in place; the rest copies or reports.
            match (self.borrowed(key), self.borrowed(value)) {
                (Some(k), Some(v)) => out.tags.push((Cow::Borrowed(k), Cow::Borrowed(v))),
                _ => {
                    let k = self.text_slow(key, Escapes::Key)?;
                    let v = self.text_slow(value, Escapes::Key)?;
                    out.tags.push((k, v));
                }
            }
            self.pos = value.end;
            if self.pos == buf.len() {
                // No fields follow; the field parser reports that.
                break;
            }
            self.tag_comma()?;
        }
        match duplicate_tag(&out.tags) {
            Some(key) => fail(tags_start, format!("duplicate tag key {key:?}")),
            None => Ok(()),
        }
    }

    /// Parses the fields. Returns whether a timestamp may follow (false when the line
    /// already ended).
    fn fields(&mut self, out: &mut Line<'a>) -> Result<bool, Fail> {
        let buf = self.input;
        loop {
            let key = self.scan_token::<KEY_END>(self.pos, Escapes::Key);
            if key.is_empty() {
                return match buf.get(key.start) {
                    None => fail(
                        key.start,
                        "expected field key, found end of input".to_owned(),
                    ),
                    Some(&c) => fail(
                        key.start,
                        format!("invalid character {} at start of field key", show(c)),
                    ),
                };
            }
            if buf.get(key.end) != Some(&b'=') {
                let found = buf
                    .get(key.end)
                    .map_or_else(|| "end of input".to_owned(), |&c| show(c));
                return fail(
                    key.end,
                    format!(
                        "expected '=' after field key {}, found {found}",
                        self.raw(key)
                    ),
                );
            }
            let key_text = match self.borrowed(key) {
                Some(s) => Cow::Borrowed(s),
                None => self.text_slow(key, Escapes::Key)?,
            };
            let value_start = key.end + 1;
            let value = match buf.get(value_start) {
                Some(b'"') => self.string_value(value_start)?,
                Some(&c) if c == b'-' || c == b'.' || c.is_ascii_digit() => {
                    let end = self.scan_plain::<VALUE_END>(value_start);
                    self.pos = end;
                    let token = &buf[value_start..end];
                    match parse_number(token) {
                        Ok(v) => FieldValue::from(v),
                        Err(e) => {
                            return fail(
                                value_start,
                                format!("field {}: {}", self.raw(key), e.describe(token)),
                            )
                        }
                    }
                }
                _ => FieldValue::Bool(self.bool_value(key, value_start)?),
            };
            out.fields.push((key_text, value));
            match buf.get(self.pos) {
                None => return Ok(false),
                Some(b',') => self.pos += 1,
                Some(b' ' | b'\r' | b'\n') => {
                    self.skip_spaces();
                    return Ok(!self.take_eol());
                }
                Some(&c) => {
                    return fail(
                        self.pos,
                        format!("unexpected character {} after field value", show(c)),
                    )
                }
            }
        }
    }

    /// Parses a quoted string value whose opening quote is at `quote`; leaves the cursor
    /// after the closing quote.
    fn string_value(&mut self, quote: usize) -> Result<FieldValue<'a>, Fail> {
        let body = self.scan_string(quote + 1)?;
        // Set first, so that recovery from an error in the string resumes after the
        // whole string even when it spans lines.
        self.pos = body.end + 1;
        match self.borrowed(body) {
            Some(s) => Ok(FieldValue::Str(Cow::Borrowed(s))),
            None => Ok(FieldValue::Str(self.text_slow(body, Escapes::Str)?)),
        }
    }

    /// Parses a boolean value at `start`, or reports why the value is not one of the
    /// types; leaves the cursor after the value.
    fn bool_value(&mut self, key: Span, start: usize) -> Result<bool, Fail> {
        let buf = self.input;
        let Some(&first) = buf.get(start) else {
            return fail(
                start,
                format!(
                    "expected value for field {}, found end of input",
                    self.raw(key)
                ),
            );
        };
        let end = self.scan_plain::<VALUE_END>(start);
        self.pos = end;
        let text = &buf[start..end];
        match text {
            b"t" | b"T" | b"true" | b"True" | b"TRUE" => Ok(true),
            b"f" | b"F" | b"false" | b"False" | b"FALSE" => Ok(false),
            _ if matches!(first, b't' | b'T' | b'f' | b'F') => fail(
                start,
                format!(
                    "invalid boolean value {:?} for field {}",
                    String::from_utf8_lossy(text),
                    self.raw(key)
                ),
            ),
            b"" => fail(start, format!("missing value for field {}", self.raw(key))),
            _ => fail(
                start,
                format!(
                    "value {:?} of field {} has an unrecognized type",
                    String::from_utf8_lossy(text),
                    self.raw(key)
                ),
            ),
        }
    }

    /// Parses the timestamp and the line end after it.
    fn timestamp(&mut self, out: &mut Line<'a>) -> Result<(), Fail> {
        let buf = self.input;
        let start = self.pos;
        let end = match parse_timestamp_prefix(&buf[start..]) {
            Some((ts, len)) => {
                out.timestamp = Some(ts);
                start + len
            }
            None => {
                let mut end = start;
                while end < buf.len() && (buf[end].is_ascii_digit() || buf[end] == b'-') {
                    end += 1;
                }
                if end > start {
                    match parse_i64(&buf[start..end]) {
                        Ok(ts) => out.timestamp = Some(ts),
                        Err(e) => {
                            let what = match e {
                                NumError::Syntax => "invalid",
                                NumError::OutOfRange => "out-of-range",
                            };
                            return fail(
                                start,
                                format!(
                                    "{what} timestamp {:?}",
                                    String::from_utf8_lossy(&buf[start..end])
                                ),
                            );
                        }
                    }
                }
                end
            }
        };
        self.pos = end;
        match buf.get(end) {
            None => return Ok(()),
            Some(b' ' | b'\r' | b'\n') => {}
            Some(_) => {
                let text_end = self.scan_plain::<VALUE_END>(start);
                return fail(
                    start,
                    format!(
                        "invalid timestamp {:?}",
                        String::from_utf8_lossy(&buf[start..text_end])
                    ),
                );
            }
        }
        self.skip_spaces();
        if self.take_eol() {
            Ok(())
        } else {
            fail(self.pos, "unexpected text after timestamp".to_owned())
        }
    }

    /// Scans a token from `start` up to the first byte of class `END` that is not escaped.
    #[inline]
    fn scan_token<const END: u8>(&self, start: usize, escapes: Escapes) -> Span {
        let buf = self.input;
        let mut i = start;
        let mut escaped = false;
        loop {
            i = find::<END>(buf, i);
            if i < buf.len() && buf[i] == b'\\' {
                // A backslash before a character it does not escape is kept literally.
                if i + 1 < buf.len() && escapes.escapes(buf[i + 1]) {
                    escaped = true;
                    i += 2;
                } else {
                    i += 1;
                }
                continue;
            }
            return Span {
                start,
                end: i,
                escaped,
            };
        }
    }

    /// Scans bytes up to the first of class `END`; no escapes.
    #[inline]
    fn scan_plain<const END: u8>(&self, start: usize) -> usize {
        find::<END>(self.input, start)
    }

    /// Scans a string body starting after its opening quote, up to the closing quote.
    /// Counts the newlines it passes.
    fn scan_string(&mut self, start: usize) -> Result<Span, Fail> {
        let buf = self.input;
        let mut i = start;
        let mut escaped = false;
        loop {
            i = find::<STR_STOP>(buf, i);
            match buf.get(i) {
                None => {
                    // The string swallowed the rest of the input; recovery resumes there.
                    self.pos = buf.len();
                    return fail(
                        start - 1,
                        "string field value has no closing quote".to_owned(),
                    );
                }
                Some(b'"') => {
                    return Ok(Span {
                        start,
                        end: i,
                        escaped,
                    })
                }
                Some(b'\\') => {
                    if i + 1 < buf.len() && Escapes::Str.escapes(buf[i + 1]) {
                        escaped = true;
                        i += 2;
                    } else {
                        i += 1;
                    }
                }
                Some(_) => {
                    // A newline inside the string.
                    i += 1;
                    self.line += 1;
                    self.line_start = i;
                }
            }
        }
    }

    /// The token as a borrowed `&str` when it has no escapes and is valid UTF-8 (checked
    /// a window at a time); `None` sends the caller to [`Self::text_slow`].
    #[inline]
    fn borrowed(&mut self, span: Span) -> Option<&'a str> {
        if span.escaped {
            None
        } else {
            self.valid_str(span.start, span.end)
        }
    }

    /// The token's text for error messages, as written (escapes included).
    fn raw(&self, span: Span) -> String {
        let raw = self.input.get(span.start..span.end).unwrap_or_default();
        format!("{:?}", String::from_utf8_lossy(raw))
    }

    /// `start..end` as a `&str` if it lies in the current UTF-8-validated window, moving
    /// the window there otherwise. Validating a window at a time instead of each token
    /// keeps the hot path to a slice operation without `unsafe`.
    #[inline]
    fn valid_str(&mut self, start: usize, end: usize) -> Option<&'a str> {
        if start >= self.valid_base {
            // `get` also checks char boundaries; tokens always start and end next to
            // ASCII delimiters, so inside a valid window this succeeds.
            if let Some(s) = self
                .valid
                .get(start - self.valid_base..end - self.valid_base)
            {
                return Some(s);
            }
        }
        self.revalidate(start, end)
    }

    /// Validates the input from `start` for at least `UTF8_WINDOW_BYTES` (or to the first
    /// invalid byte) and makes that the window.
    #[cold]
    #[inline(never)]
    fn revalidate(&mut self, start: usize, end: usize) -> Option<&'a str> {
        let input = self.input;
        let chunk_end = end
            .max(start.saturating_add(UTF8_WINDOW_BYTES))
            .min(input.len());
        let chunk = input.get(start..chunk_end)?;
        let valid = match std::str::from_utf8(chunk) {
            Ok(s) => s,
            Err(e) => chunk
                .get(..e.valid_up_to())
                .and_then(|c| std::str::from_utf8(c).ok())
                .unwrap_or_default(),
        };
        self.valid_base = start;
        self.valid = valid;
        valid.get(..end.checked_sub(start)?)
    }

    /// The token's text when [`Self::borrowed`] could not give it: unescaped into a
    /// `String` if it holds escapes, else validated on its own; locates invalid UTF-8.
    #[cold]
    #[inline(never)]
    fn text_slow(&self, span: Span, escapes: Escapes) -> Result<Cow<'a, str>, Fail> {
        let raw: &'a [u8] = self.input.get(span.start..span.end).unwrap_or_default();
        // Unescaping removes only ASCII backslashes, so the raw bytes are valid UTF-8
        // exactly when the result is; checking the raw bytes also locates the error.
        let text = std::str::from_utf8(raw).map_err(|e| Fail {
            offset: span.start + e.valid_up_to(),
            message: format!("invalid UTF-8 in {:?}", String::from_utf8_lossy(raw)),
        })?;
        if !span.escaped {
            return Ok(Cow::Borrowed(text));
        }
        let mut unescaped = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(i) = rest.find('\\') {
            unescaped.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            match after.as_bytes().first() {
                Some(&c) if escapes.escapes(c) => {
                    unescaped.push(char::from(c));
                    rest = &after[1..];
                }
                _ => {
                    unescaped.push('\\');
                    rest = after;
                }
            }
        }
        unescaped.push_str(rest);
        Ok(Cow::Owned(unescaped))
    }

    #[inline]
    fn skip_spaces(&mut self) {
        while self.input.get(self.pos) == Some(&b' ') {
            self.pos += 1;
        }
    }

    /// Consumes a line end (LF, CR LF, or CR at the end of input) or recognises the end
    /// of input; returns false if something else is at the cursor.
    #[inline]
    fn take_eol(&mut self) -> bool {
        let buf = self.input;
        match buf.get(self.pos) {
            None => true,
            Some(b'\n') => {
                self.pos += 1;
                self.line += 1;
                self.line_start = self.pos;
                true
            }
            Some(b'\r') => match buf.get(self.pos + 1) {
                None => {
                    self.pos += 1;
                    true
                }
                Some(b'\n') => {
                    self.pos += 2;
                    self.line += 1;
                    self.line_start = self.pos;
                    true
                }
                Some(_) => false,
            },
            Some(_) => false,
        }
    }

    /// Locates an error and moves the cursor past the line where parsing stopped.
    fn recover(&mut self, f: Fail) -> ParseError {
        let buf = self.input;
        let error_at = f.offset.min(buf.len());
        let (line, column) = self.locate(error_at);
        let stop = self.pos.max(error_at).min(buf.len());
        let resume = match buf[stop..].iter().position(|&c| c == b'\n') {
            Some(i) => stop + i + 1,
            None => buf.len(),
        };
        let (resume_line, _) = self.locate(resume);
        self.pos = resume;
        self.line = resume_line;
        self.line_start = buf[..resume]
            .iter()
            .rposition(|&c| c == b'\n')
            .map_or(0, |i| i + 1);
        ParseError {
            line,
            column,
            message: f.message,
        }
    }

    /// Line and column of `offset`, which lies at or after the start of the current entry.
    fn locate(&self, offset: usize) -> (usize, usize) {
        let from = self.entry_line_start.min(offset);
        let span = &self.input[from..offset];
        let newlines = span.iter().filter(|&&c| c == b'\n').count();
        let line_start = span
            .iter()
            .rposition(|&c| c == b'\n')
            .map_or(from, |i| from + i + 1);
        (self.entry_line + newlines, offset - line_start + 1)
    }
}

impl<'a> Iterator for Lines<'a> {
    type Item = Result<Line<'a>, ParseError>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut line = Line::default();
        Some(self.next_into(&mut line)?.map(|()| line))
    }
}

impl std::iter::FusedIterator for Lines<'_> {}

/// The first tag key that occurs twice, if any. Quadratic for the usual handful of
/// tags; sorts when there are many, so a line with thousands of tags stays cheap.
fn duplicate_tag<'t>(tags: &'t [(Cow<'_, str>, Cow<'_, str>)]) -> Option<&'t str> {
    const LINEAR_MAX_TAGS: usize = 16;
    if tags.len() <= LINEAR_MAX_TAGS {
        for (i, (key, _)) in tags.iter().enumerate() {
            if tags[..i].iter().any(|(k, _)| k == key) {
                return Some(key);
            }
        }
        return None;
    }
    let mut keys: Vec<&str> = tags.iter().map(|(k, _)| k.as_ref()).collect();
    keys.sort_unstable();
    keys.windows(2).find(|w| w[0] == w[1]).map(|w| w[0])
}

impl Lines<'_> {
    /// 1-based number of the line on which the entry most recently returned began (callers
    /// that report errors found after parsing, such as type conflicts, name it).
    pub fn entry_line(&self) -> usize {
        self.entry_line
    }
}
