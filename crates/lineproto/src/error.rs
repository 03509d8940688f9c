//! The one error type of the crate: bad input, located by line and byte column.

use std::fmt;

/// A syntax or range error in line-protocol input. It is always the writer's fault, so it
/// maps to a client error (HTTP 400) wherever it is reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based line number in the whole input (newlines inside strings count).
    pub line: usize,
    /// 1-based byte column within that line.
    pub column: usize,
    /// What was wrong, for a human.
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "line {}, column {}: {}",
            self.line, self.column, self.message
        )
    }
}

impl std::error::Error for ParseError {}
