//! # smtpgate-sieve: per-user filters in a subset of Sieve
//!
//! This crate is responsible for reading a user's Sieve script (RFC 5228) and deciding, for one
//! message and one recipient, what to do with it. It does no I/O and has no dependencies: the
//! relay hands in a [`Message`] and gets back an [`Outcome`], a list of [`Action`]s to carry out
//! and a trace of the steps taken, for a dry run.
//!
//! The pipeline is `lexer` (tokens) → `syntax` (the generic grammar, with nesting bounded) →
//! `compile` (meanings, `require` and every check that needs no message) → `eval`. Every error is
//! found by [`Script::parse`] and carries a line number; a parsed script always runs.
//!
//! Supported: `require`, `if`/`elsif`/`else`, `stop`; the tests `address`, `header`, `envelope`,
//! `exists`, `size`, `allof`, `anyof`, `not`, `true`, `false` with `:is`, `:contains`,
//! `:matches`, `:all`, `:localpart`, `:domain` and the comparators `i;ascii-casemap` (default)
//! and `i;octet`; the actions `keep`, `discard`, `redirect`, `fileinto` and `reject`; `:copy`
//! (RFC 3894) on `redirect` and `fileinto`. The extensions are named in `require` as
//! `"fileinto"`, `"reject"`, `"envelope"` and `"copy"`. Anything else is refused when parsed.
//!
//! Limits: a script may be at most [`MAX_SCRIPT_BYTES`] long, and blocks and tests may nest at
//! most [`MAX_NESTING`] deep. A run may redirect to at most [`MAX_REDIRECTS`] addresses and
//! collect at most [`MAX_ACTIONS`] actions; past that it stops and keeps the message.
//!
//! ```
//! use smtpgate_sieve::{Action, Script, SimpleMessage};
//!
//! let script = Script::parse(r#"
//!     require ["fileinto"];
//!     if header :contains "subject" "invoice" {
//!         fileinto "Accounts";
//!     } elsif address :domain "from" "spam.example" {
//!         discard;
//!     }
//! "#).unwrap();
//!
//! let msg = SimpleMessage::new("me@example.com").with_header("Subject", "Your INVOICE for May");
//! let outcome = script.evaluate(&msg);
//! assert_eq!(outcome.actions, vec![Action::FileInto("Accounts".into())]);
//! assert_eq!(outcome.trace, vec![
//!     r#"line 3: if header :contains "subject" "invoice" -> true"#,
//!     r#"line 4: fileinto "Accounts""#,
//! ]);
//!
//! // No rule matched, so the implicit keep applies.
//! let other = SimpleMessage::new("me@example.com").with_header("From", "Ann <ann@example.org>");
//! assert_eq!(script.evaluate(&other).actions, vec![Action::Keep]);
//! ```
#![forbid(unsafe_code)]

mod address;
mod ast;
mod compile;
mod compile_test;
mod condition;
mod error;
mod eval;
mod lexer;
mod matching;
mod message;
mod syntax;

pub use error::ParseError;
pub use eval::{Action, Outcome};
pub use message::{Message, SimpleMessage};

/// The longest script [`Script::parse`] accepts, in bytes (1 MiB).
pub const MAX_SCRIPT_BYTES: usize = 1024 * 1024;

/// How deep blocks and tests may nest, counted together: `if true { if true { .. } }` is two
/// levels of block and two of test.
pub const MAX_NESTING: usize = 64;

/// The most different addresses one run may redirect to (RFC 5228 section 10 asks for a limit).
/// A script that tries more is a run-time error: it stops, and the message is kept.
pub const MAX_REDIRECTS: usize = 32;

/// The most different actions one run may collect, with the same run-time error beyond it.
pub const MAX_ACTIONS: usize = 256;

/// A parsed and checked Sieve script, ready to run against any number of messages.
#[derive(Debug, Clone)]
pub struct Script {
    commands: Vec<ast::Command>,
}

impl Script {
    /// Parses and checks a script. Every problem the script can have is reported here, with the
    /// line it is on: syntax, unknown commands and tests, wrong arguments, extensions used
    /// without `require` or not supported, and the size and nesting limits.
    pub fn parse(text: &str) -> Result<Script, ParseError> {
        if text.len() > MAX_SCRIPT_BYTES {
            let message = format!("script is {} bytes; the limit is {MAX_SCRIPT_BYTES}", text.len());
            return Err(ParseError::new(1, message));
        }
        let tokens = lexer::tokenize(text)?;
        let nodes = syntax::parse(&tokens)?;
        let commands = compile::compile(nodes)?;
        Ok(Script { commands })
    }

    /// Runs the script against one message. This cannot fail: a combination of actions that
    /// RFC 5429 forbids (`reject` with a delivering action) and going past [`MAX_REDIRECTS`] or
    /// [`MAX_ACTIONS`] are run-time errors, which RFC 5228 section 2.10.6 resolves by keeping the
    /// message (and nothing else); the trace says so.
    pub fn evaluate(&self, msg: &dyn Message) -> Outcome {
        eval::run(&self.commands, msg)
    }
}
