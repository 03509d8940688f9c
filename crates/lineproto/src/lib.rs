//! Zero-copy parser for the InfluxDB 2.x line protocol, the text format of Shoal's
//! write path.
//!
//! ```text
//!   HTTP body (&[u8]) ──► parse_lines ──► Lines ──► Line<'a> ──► write path (rows)
//!                                           │
//!                                           └──► ParseError { line, column, message }
//! ```
//!
//! Every name, key and value of a [`Line`] borrows from the input unless it contained an
//! escape sequence, in which case it is unescaped into an owned `String`. Hot loops can
//! reuse one [`Line`] (and its vectors) with [`Lines::next_into`], which then allocates
//! nothing for escape-free input. The crate uses only `std` and no `unsafe`: UTF-8 is
//! validated a 64 KiB window at a time, and tokens inside a validated window become
//! `&str` by slicing. `examples/throughput.rs` measures lines per second.
//!
//! The parser holds no limits of its own beyond the input slice: the caller bounds the
//! request body (the HTTP layer's payload limit) and hence every line and tag count.
//!
//! # Grammar
//!
//! One entry per line. `S` is one or more spaces (tabs are not separators).
//!
//! ```text
//! entry       = measurement ( "," tag )* S field ( "," field )* [ S timestamp ] [ S ] eol
//! measurement = 1*( any byte except , SP CTL   | "\," | "\ " )
//! tag         = key "=" tag-value
//! field       = key "=" value
//! key         = 1*( any byte except , = SP CTL | "\," | "\=" | "\ " )
//! tag-value   = 1*( any byte except , = SP CR LF | "\," | "\=" | "\ " )
//! value       = float | integer "i" | unsigned "u" | boolean | DQUOTE string DQUOTE
//! float       = [ "-" ] ( 1*DIGIT [ "." *DIGIT ] | "." 1*DIGIT ) [ ( "e" | "E" ) [ "+" | "-" ] 1*DIGIT ]
//! integer     = [ "-" ] 1*DIGIT            ; must fit in i64
//! unsigned    = 1*DIGIT                    ; must fit in u64
//! boolean     = t | T | true | True | TRUE | f | F | false | False | FALSE
//! string      = *( any byte except " \ | "\\" | "\"" | "\" other )   ; may span lines
//! timestamp   = [ "-" ] 1*DIGIT            ; i64, unit given by the caller's Precision
//! eol         = LF | CR LF | CR at end of input | end of input
//! CTL         = bytes 0x00-0x1F and 0x7F
//! ```
//!
//! - A backslash that does not precede one of the escapable characters of its token is
//!   kept literally, so `a\b` is the three characters `a`, `\`, `b`; `\n` inside a string
//!   stays a backslash and an `n`.
//! - Lines that are empty, hold only spaces, or start (after spaces) with `#` are skipped.
//!   A comment may not contain control characters (a tab included): such a line is an
//!   error, as in the conformance corpus.
//! - Leading spaces before the measurement are skipped; trailing spaces before the end of
//!   line are allowed.
//! - Every name, key and string must be valid UTF-8. Comments need not be.
//! - A tag key may appear once per entry; field keys may repeat (all are returned, in
//!   input order). Tags are returned in input order, not sorted.
//! - Floats must be finite; hexadecimal floats, `inf`, `nan` and digit separators are
//!   rejected, as InfluxDB 2.x does.
//! - Timestamps are returned as written; [`Precision::to_nanos`] scales them, and
//!   [`Precision::truncate_nanos`] gives the default time for entries without one.
//!
//! The behaviour is checked against the public line-protocol conformance corpus
//! (`tests/corpus.rs`).
//!
//! # Error model
//!
//! Errors are bad input: each one names the 1-based line and byte column of the problem
//! and what was expected. A bad entry does not stop the iterator: after yielding the
//! error, [`Lines`] resumes at the line after the one where parsing stopped. (An
//! unterminated string therefore consumes the rest of the input.) Callers that want
//! all-or-nothing writes stop at the first error. The parser never panics on any input
//! and never reads outside the input slice.

mod error;
mod parser;
mod precision;
mod scan;
mod value;

pub use error::ParseError;
pub use parser::{parse_lines, Lines};
pub use precision::Precision;
pub use value::FieldValue;

use std::borrow::Cow;

/// One parsed entry of line protocol.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Line<'a> {
    /// The measurement name, unescaped.
    pub measurement: Cow<'a, str>,
    /// Tag keys and values, unescaped, in input order. Keys are unique.
    pub tags: Vec<(Cow<'a, str>, Cow<'a, str>)>,
    /// Field keys and typed values, in input order. Never empty in a parsed line.
    pub fields: Vec<(Cow<'a, str>, FieldValue<'a>)>,
    /// The timestamp as written, not scaled; `None` when the entry has none.
    pub timestamp: Option<i64>,
}

impl Line<'_> {
    /// Empties the line while keeping the capacity of its vectors.
    pub fn clear(&mut self) {
        self.measurement = Cow::Borrowed("");
        self.tags.clear();
        self.fields.clear();
        self.timestamp = None;
    }

    /// Copies every borrowed part so the line outlives the input buffer.
    pub fn into_owned(self) -> Line<'static> {
        Line {
            measurement: Cow::Owned(self.measurement.into_owned()),
            tags: self
                .tags
                .into_iter()
                .map(|(k, v)| (Cow::Owned(k.into_owned()), Cow::Owned(v.into_owned())))
                .collect(),
            fields: self
                .fields
                .into_iter()
                .map(|(k, v)| (Cow::Owned(k.into_owned()), v.into_owned()))
                .collect(),
            timestamp: self.timestamp,
        }
    }

    /// The value of the tag `key`, if the line has it.
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_ref())
    }
}
