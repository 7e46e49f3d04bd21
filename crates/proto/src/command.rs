//! Parsing one SMTP command line (RFC 5321 4.1 and the ESMTP extensions smtpgate speaks).
//!
//! [`parse_command`] takes a line without its CRLF (see [`crate::line`]) and returns a
//! [`Command`] or a [`CommandError`] that knows its reply. Verbs are case-insensitive; trailing
//! spaces and tabs are ignored; non-ASCII is allowed only inside the path of MAIL and RCPT.

mod params;

use crate::address::{ForwardPath, ReversePath, parse_forward_path_prefix, parse_reverse_path_prefix};
use crate::reply::Reply;
use std::fmt;

pub use params::{Body, MailParams, Notify, RcptParams, Ret};

/// One parsed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Ehlo(String),
    Helo(String),
    Mail {
        from: ReversePath,
        params: MailParams,
    },
    Rcpt {
        to: ForwardPath,
        params: RcptParams,
    },
    Data,
    Bdat {
        size: u64,
        last: bool,
    },
    Rset,
    Noop,
    Quit,
    Vrfy(String),
    Expn(String),
    Help(Option<String>),
    StartTls,
    /// `mechanism` is upper-cased; `initial` is the initial response as sent (`"="` means empty).
    Auth {
        mechanism: String,
        initial: Option<String>,
    },
}

/// Why a line is not a valid command; [`CommandError::reply`] gives the answer to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandError {
    /// Unknown verb: `500 5.5.1`.
    Unrecognized,
    /// Bad arguments: `501 5.5.4`; the text says what.
    Syntax(&'static str),
    /// Bad path in MAIL or RCPT: `501 5.1.3`.
    BadAddress(&'static str),
    /// An ESMTP parameter we do not support: `555 5.5.4`.
    UnknownParameter(String),
}

impl CommandError {
    /// The reply to send for this error.
    pub fn reply(&self) -> Reply {
        match self {
            CommandError::Unrecognized => Reply::unrecognized(),
            CommandError::Syntax(what) => Reply::syntax(what),
            CommandError::BadAddress(what) => Reply::bad_address(what),
            CommandError::UnknownParameter(p) => Reply::unknown_parameter(p),
        }
    }
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommandError::Unrecognized => f.write_str("command unrecognized"),
            CommandError::Syntax(what) => write!(f, "syntax error: {what}"),
            CommandError::BadAddress(what) => write!(f, "bad address: {what}"),
            CommandError::UnknownParameter(p) => write!(f, "unsupported parameter {p}"),
        }
    }
}

impl std::error::Error for CommandError {}

type Result<T> = std::result::Result<T, CommandError>;

/// Parses one command line without CRLF. Examples of accepted lines:
/// `MAIL FROM:<a@b> SIZE=10 BODY=8BITMIME SMTPUTF8`, `MAIL FROM: <a@b>` (one space after the
/// colon tolerated), `RCPT TO:<x@y> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;x@y`,
/// `BDAT 1000 LAST`, `AUTH PLAIN dGVzdA==`, `HELP`, `NOOP anything`.
/// Duplicate parameters are a syntax error, and so is `NOTIFY=NEVER` combined with others.
pub fn parse_command(line: &[u8]) -> Result<Command> {
    let line = trim_end(line);
    let (verb, rest) = split_verb(line);
    let verb = std::str::from_utf8(verb).map_err(|_| CommandError::Unrecognized)?;
    match verb.to_ascii_uppercase().as_str() {
        "MAIL" => parse_mail(rest),
        "RCPT" => parse_rcpt(rest),
        other => parse_simple(other, ascii_args(rest)?),
    }
}

/// Verbs whose arguments are plain ASCII words.
fn parse_simple(verb: &str, args: &str) -> Result<Command> {
    match verb {
        "EHLO" => one_word(args, "EHLO needs a domain").map(Command::Ehlo),
        "HELO" => one_word(args, "HELO needs a domain").map(Command::Helo),
        "DATA" => no_args(args, Command::Data),
        "BDAT" => parse_bdat(args),
        "RSET" => no_args(args, Command::Rset),
        "NOOP" => Ok(Command::Noop),
        "QUIT" => no_args(args, Command::Quit),
        "STARTTLS" => no_args(args, Command::StartTls),
        "VRFY" => required(args, "VRFY needs an argument").map(Command::Vrfy),
        "EXPN" => required(args, "EXPN needs an argument").map(Command::Expn),
        "HELP" => Ok(Command::Help((!args.is_empty()).then(|| args.to_owned()))),
        "AUTH" => parse_auth(args),
        _ => Err(CommandError::Unrecognized),
    }
}

fn trim_end(line: &[u8]) -> &[u8] {
    let end = line.iter().rposition(|&b| b != b' ' && b != b'\t').map_or(0, |i| i + 1);
    &line[..end]
}

/// Splits at the first space: the verb, and what follows the spaces after it.
fn split_verb(line: &[u8]) -> (&[u8], &[u8]) {
    match line.iter().position(|&b| b == b' ') {
        Some(sp) => (&line[..sp], &line[sp + 1..]),
        None => (line, &[]),
    }
}

/// The argument text of a verb that takes no address: printable ASCII only.
fn ascii_args(rest: &[u8]) -> Result<&str> {
    if rest.iter().any(|&b| !(0x20..0x7f).contains(&b)) {
        return Err(CommandError::Syntax("non-ASCII or control character"));
    }
    let s = std::str::from_utf8(rest).map_err(|_| CommandError::Syntax("non-ASCII character"))?;
    Ok(s.trim_start_matches(' '))
}

fn no_args(args: &str, cmd: Command) -> Result<Command> {
    if args.is_empty() {
        Ok(cmd)
    } else {
        Err(CommandError::Syntax("no arguments allowed"))
    }
}

fn required(args: &str, what: &'static str) -> Result<String> {
    if args.is_empty() {
        Err(CommandError::Syntax(what))
    } else {
        Ok(args.to_owned())
    }
}

fn one_word(args: &str, what: &'static str) -> Result<String> {
    let word = required(args, what)?;
    if word.contains(' ') {
        Err(CommandError::Syntax("one argument expected"))
    } else {
        Ok(word)
    }
}

fn words(args: &str) -> Vec<&str> {
    args.split(' ').filter(|w| !w.is_empty()).collect()
}

/// `BDAT <size> [LAST]` (RFC 3030).
fn parse_bdat(args: &str) -> Result<Command> {
    let (size, last) = match words(args)[..] {
        [size] => (size, false),
        [size, last] if last.eq_ignore_ascii_case("LAST") => (size, true),
        [] => return Err(CommandError::Syntax("BDAT needs a size")),
        _ => return Err(CommandError::Syntax("BDAT takes a size and LAST")),
    };
    let size = params::parse_number(size).ok_or(CommandError::Syntax("bad BDAT size"))?;
    Ok(Command::Bdat { size, last })
}

/// `AUTH <mechanism> [initial-response]` (RFC 4954).
fn parse_auth(args: &str) -> Result<Command> {
    let (mechanism, initial) = match words(args)[..] {
        [m] => (m, None),
        [m, i] => (m, Some(i)),
        [] => return Err(CommandError::Syntax("AUTH needs a mechanism")),
        _ => return Err(CommandError::Syntax("too many AUTH arguments")),
    };
    if !is_sasl_mechanism(mechanism) {
        return Err(CommandError::Syntax("bad SASL mechanism name"));
    }
    if initial.is_some_and(|i| i != "=" && !is_base64(i)) {
        return Err(CommandError::Syntax("initial response is not base64"));
    }
    Ok(Command::Auth {
        mechanism: mechanism.to_ascii_uppercase(),
        initial: initial.map(str::to_owned),
    })
}

/// RFC 4422: 1 to 20 of upper-case letters, digits, `-` and `_` (lower case tolerated).
fn is_sasl_mechanism(m: &str) -> bool {
    (1..=20).contains(&m.len()) && m.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn is_base64(s: &str) -> bool {
    let data = s.trim_end_matches('=');
    s.len() - data.len() <= 2
        && data
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

/// `MAIL FROM:<path> [params]`.
fn parse_mail(rest: &[u8]) -> Result<Command> {
    let path = strip_keyword(rest, b"FROM:")?;
    let (from, used) = parse_reverse_path_prefix(path).map_err(CommandError::BadAddress)?;
    let params = params::parse_mail_params(params_text(&path[used..])?)?;
    Ok(Command::Mail { from, params })
}

/// `RCPT TO:<path> [params]`.
fn parse_rcpt(rest: &[u8]) -> Result<Command> {
    let path = strip_keyword(rest, b"TO:")?;
    let (to, used) = parse_forward_path_prefix(path).map_err(CommandError::BadAddress)?;
    let params = params::parse_rcpt_params(params_text(&path[used..])?)?;
    Ok(Command::Rcpt { to, params })
}

/// Strips `FROM:`/`TO:` (case-insensitive) and at most one space after it.
fn strip_keyword<'a>(rest: &'a [u8], keyword: &[u8]) -> Result<&'a [u8]> {
    let n = keyword.len();
    if rest.len() < n || !rest[..n].eq_ignore_ascii_case(keyword) {
        return Err(CommandError::Syntax(if n == 5 {
            "expected MAIL FROM:<address>"
        } else {
            "expected RCPT TO:<address>"
        }));
    }
    let path = &rest[n..];
    Ok(path.strip_prefix(b" ").unwrap_or(path))
}

/// What follows the `>`: nothing, or a space and the parameters.
fn params_text(after: &[u8]) -> Result<&str> {
    match after.first() {
        None => Ok(""),
        Some(b' ') => ascii_args(after),
        Some(_) => Err(CommandError::BadAddress("garbage after address")),
    }
}
