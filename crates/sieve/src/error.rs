//! The one error type of the crate: a script that cannot be accepted, with the line to blame.

use std::fmt;

/// Why a script was refused, and the (1-based) line of the script where the problem is.
///
/// Every problem is found when the script is parsed: a script that parses never fails to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// The 1-based line number the problem was found on.
    pub line: usize,
    /// What is wrong, in words meant for the script's author.
    pub message: String,
}

impl ParseError {
    pub(crate) fn new(line: usize, message: impl Into<String>) -> Self {
        ParseError {
            line,
            message: message.into(),
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for ParseError {}
