//! Mailboxes, domains and the reverse/forward paths of `MAIL FROM` and `RCPT TO`.
//!
//! Grammar from RFC 5321 4.1.2, extended for UTF-8 by RFC 6531: a local part is a dot-string or
//! a quoted-string, a domain is dot-separated letter/digit/hyphen labels (U-labels allowed) or an
//! address literal in `[ ]`. A source route (`<@a,@b:user@c>`) is accepted and dropped
//! (RFC 5321 4.1.1.3 and appendix C). Limits (RFC 5321 4.5.3.1): local part 64 octets, domain
//! 255 octets, whole path 256 octets. Nothing is case-folded: what the client sent is kept.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// Longest local part, in octets (RFC 5321 4.5.3.1.1).
pub const MAX_LOCAL: usize = 64;
/// Longest domain, in octets (RFC 5321 4.5.3.1.2).
pub const MAX_DOMAIN: usize = 255;
/// Longest path including `<`, `>` and any source route (RFC 5321 4.5.3.1.3).
pub const MAX_PATH: usize = 256;
const MAX_LABEL: usize = 63;

/// The domain part of a mailbox.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Domain {
    /// A domain name as given, e.g. `example.com` or `bücher.example`.
    Name(String),
    /// The text inside `[ ]`, e.g. `1.2.3.4` or `IPv6:::1`.
    Literal(String),
}

/// `local@domain`. The local part is as given, with quotes removed and quoted-pairs unescaped.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Mailbox {
    pub local: String,
    pub domain: Domain,
}

/// The argument of `MAIL FROM`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ReversePath {
    /// `<>`: the null sender (bounces).
    Null,
    Path(Mailbox),
}

/// The argument of `RCPT TO`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ForwardPath {
    /// `<postmaster>` without a domain (case-insensitive).
    Postmaster,
    Path(Mailbox),
}

impl Domain {
    /// The domain as written in an address: `example.com` or `[1.2.3.4]`.
    pub fn as_address_text(&self) -> String {
        match self {
            Domain::Name(n) => n.clone(),
            Domain::Literal(l) => format!("[{l}]"),
        }
    }

    fn is_utf8(&self) -> bool {
        match self {
            Domain::Name(n) | Domain::Literal(n) => !n.is_ascii(),
        }
    }
}

impl Mailbox {
    /// Parses a bare `local@domain` (no angle brackets), e.g. from configuration.
    pub fn parse(s: &str) -> Result<Mailbox, &'static str> {
        let mut p = Parser::new(s.as_bytes());
        let mailbox = p.mailbox()?;
        p.expect_end()?;
        Ok(mailbox)
    }

    /// The domain part: `example.com` for a name. For an address literal this is the text
    /// *inside* the brackets (`1.2.3.4`, `IPv6:::1`): a `&str` borrowed from `self` cannot carry
    /// brackets the field does not hold. It cannot be mistaken for a name, because names whose
    /// last label is all digits are rejected. Use [`Domain::as_address_text`] for `[1.2.3.4]`.
    pub fn domain_str(&self) -> &str {
        match &self.domain {
            Domain::Name(n) | Domain::Literal(n) => n,
        }
    }

    /// True if the local part or the domain has non-ASCII characters (needs SMTPUTF8).
    pub fn is_utf8(&self) -> bool {
        !self.local.is_ascii() || self.domain.is_utf8()
    }
}

impl ReversePath {
    /// Parses a whole `<...>` reverse path (nothing may follow the `>`).
    pub fn parse(s: &str) -> Result<ReversePath, &'static str> {
        whole(s.as_bytes(), parse_reverse_path_prefix)
    }

    /// The mailbox, if this is not the null sender.
    pub fn mailbox(&self) -> Option<&Mailbox> {
        match self {
            ReversePath::Null => None,
            ReversePath::Path(m) => Some(m),
        }
    }
}

impl ForwardPath {
    /// Parses a whole `<...>` forward path (nothing may follow the `>`).
    pub fn parse(s: &str) -> Result<ForwardPath, &'static str> {
        whole(s.as_bytes(), parse_forward_path_prefix)
    }

    /// The mailbox, if this is not the bare `<postmaster>`.
    pub fn mailbox(&self) -> Option<&Mailbox> {
        match self {
            ForwardPath::Postmaster => None,
            ForwardPath::Path(m) => Some(m),
        }
    }
}

/// Parses `<...>` at the front of `input`; returns the path and the bytes used (through `>`).
pub fn parse_reverse_path_prefix(input: &[u8]) -> Result<(ReversePath, usize), &'static str> {
    let mut p = Parser::new(input);
    let path = match p.path(false)? {
        RawPath::Null => ReversePath::Null,
        RawPath::Postmaster => return Err("missing domain"),
        RawPath::Mailbox(m) => ReversePath::Path(m),
    };
    Ok((path, p.pos))
}

/// Parses `<...>` at the front of `input`; returns the path and the bytes used (through `>`).
pub fn parse_forward_path_prefix(input: &[u8]) -> Result<(ForwardPath, usize), &'static str> {
    let mut p = Parser::new(input);
    let path = match p.path(true)? {
        RawPath::Null => return Err("empty recipient"),
        RawPath::Postmaster => ForwardPath::Postmaster,
        RawPath::Mailbox(m) => ForwardPath::Path(m),
    };
    Ok((path, p.pos))
}

/// A parser of a path at the front of its input, returning the bytes it used.
type PrefixParser<T> = fn(&[u8]) -> Result<(T, usize), &'static str>;

fn whole<T>(input: &[u8], prefix: PrefixParser<T>) -> Result<T, &'static str> {
    let (path, used) = prefix(input)?;
    if used == input.len() {
        Ok(path)
    } else {
        Err("garbage after address")
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Domain::Name(n) => f.write_str(n),
            Domain::Literal(l) => write!(f, "[{l}]"),
        }
    }
}

impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if is_dot_string(&self.local) {
            f.write_str(&self.local)?;
        } else {
            write_quoted(f, &self.local)?;
        }
        write!(f, "@{}", self.domain)
    }
}

impl fmt::Display for ReversePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReversePath::Null => Ok(()),
            ReversePath::Path(m) => m.fmt(f),
        }
    }
}

impl fmt::Display for ForwardPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ForwardPath::Postmaster => f.write_str("postmaster"),
            ForwardPath::Path(m) => m.fmt(f),
        }
    }
}

fn write_quoted(f: &mut fmt::Formatter<'_>, local: &str) -> fmt::Result {
    f.write_str("\"")?;
    for c in local.chars() {
        if c == '"' || c == '\\' {
            f.write_str("\\")?;
        }
        write!(f, "{c}")?;
    }
    f.write_str("\"")
}

/// True if `s` can be written without quotes (RFC 5321 Dot-string, UTF-8 allowed).
fn is_dot_string(s: &str) -> bool {
    !s.is_empty() && s.split('.').all(|atom| !atom.is_empty() && atom.bytes().all(is_atext))
}

/// RFC 5322 atext, plus any non-ASCII byte (RFC 6531 UTF-8 characters, checked later).
fn is_atext(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&b) || b >= 0x80
}

fn is_ldh(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b >= 0x80
}

/// Decodes `bytes` as UTF-8 and refuses control and white-space characters.
fn utf8_text(bytes: &[u8]) -> Result<String, &'static str> {
    let s = std::str::from_utf8(bytes).map_err(|_| "invalid UTF-8 in address")?;
    if s.chars()
        .any(|c| c.is_control() || (!c.is_ascii() && c.is_whitespace()))
    {
        return Err("control character in address");
    }
    Ok(s.to_owned())
}

enum RawPath {
    Null,
    Postmaster,
    Mailbox(Mailbox),
}

/// A cursor over the bytes of one path.
struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
}

impl<'a> Parser<'a> {
    fn new(s: &'a [u8]) -> Self {
        Parser { s, pos: 0 }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn eat(&mut self, b: u8) -> bool {
        let hit = self.peek() == Some(b);
        self.pos += usize::from(hit);
        hit
    }

    fn take_while(&mut self, pred: fn(u8) -> bool) -> &'a [u8] {
        let start = self.pos;
        while self.peek().is_some_and(pred) {
            self.pos += 1;
        }
        &self.s[start..self.pos]
    }

    fn expect_end(&self) -> Result<(), &'static str> {
        match self.peek() {
            None => Ok(()),
            Some(b' ') => Err("space inside address"),
            Some(_) => Err("garbage after address"),
        }
    }

    /// `"<" [ A-d-l ":" ] Mailbox ">"`, or `<>`, or (when allowed) `<postmaster>`.
    fn path(&mut self, allow_postmaster: bool) -> Result<RawPath, &'static str> {
        if !self.eat(b'<') {
            return Err("missing <");
        }
        if self.eat(b'>') {
            return Ok(RawPath::Null);
        }
        self.source_route()?;
        let raw = if allow_postmaster && self.eat_postmaster() {
            RawPath::Postmaster
        } else {
            RawPath::Mailbox(self.mailbox()?)
        };
        self.close_path()?;
        Ok(raw)
    }

    fn close_path(&mut self) -> Result<(), &'static str> {
        match self.peek() {
            Some(b'>') => self.pos += 1,
            None => return Err("missing >"),
            Some(b' ') => return Err("space inside address"),
            Some(b) if b < 0x20 || b == 0x7f => return Err("control character in address"),
            Some(_) => return Err("bad character in address"),
        }
        if self.pos > MAX_PATH {
            Err("path too long")
        } else {
            Ok(())
        }
    }

    /// `postmaster>` (case-insensitive) right here: consumes `postmaster` and returns true.
    fn eat_postmaster(&mut self) -> bool {
        let rest = &self.s[self.pos..];
        let hit = rest.len() > 10 && rest[..10].eq_ignore_ascii_case(b"postmaster") && rest[10] == b'>';
        if hit {
            self.pos += 10;
        }
        hit
    }

    /// `A-d-l ":"` (`@a.example,@b.example:`), parsed to be skipped.
    fn source_route(&mut self) -> Result<(), &'static str> {
        if self.peek() != Some(b'@') {
            return Ok(());
        }
        loop {
            if !self.eat(b'@') {
                return Err("bad source route");
            }
            self.domain_name()?;
            if self.eat(b':') {
                return Ok(());
            }
            if !self.eat(b',') {
                return Err("bad source route");
            }
        }
    }

    fn mailbox(&mut self) -> Result<Mailbox, &'static str> {
        let local = self.local_part()?;
        if !self.eat(b'@') {
            return Err(match self.peek() {
                Some(b' ') => "space inside address",
                Some(b) if b < 0x20 || b == 0x7f => "control character in address",
                _ => "missing @domain",
            });
        }
        let domain = self.domain()?;
        Ok(Mailbox { local, domain })
    }

    fn local_part(&mut self) -> Result<String, &'static str> {
        let start = self.pos;
        let local = if self.peek() == Some(b'"') {
            self.quoted_string()?
        } else {
            self.dot_string()?
        };
        if local.is_empty() {
            return Err("empty local part");
        }
        if self.pos - start > MAX_LOCAL {
            return Err("local part too long");
        }
        Ok(local)
    }

    fn dot_string(&mut self) -> Result<String, &'static str> {
        let start = self.pos;
        loop {
            if self.take_while(is_atext).is_empty() {
                return if self.pos == start {
                    Ok(String::new())
                } else {
                    Err("bad dot in local part")
                };
            }
            if !self.eat(b'.') {
                return utf8_text(&self.s[start..self.pos]);
            }
        }
    }

    fn quoted_string(&mut self) -> Result<String, &'static str> {
        self.pos += 1; // the opening quote
        let mut text = Vec::new();
        loop {
            let b = self.peek().ok_or("unterminated quoted string")?;
            self.pos += 1;
            match b {
                b'"' => return utf8_text(&text),
                b'\\' => text.push(self.quoted_pair()?),
                0x20..=0x7e | 0x80.. => text.push(b),
                _ => return Err("control character in address"),
            }
        }
    }

    fn quoted_pair(&mut self) -> Result<u8, &'static str> {
        match self.peek() {
            Some(b @ 0x20..=0x7e) => {
                self.pos += 1;
                Ok(b)
            }
            None => Err("unterminated quoted string"),
            Some(_) => Err("bad quoted pair"),
        }
    }

    fn domain(&mut self) -> Result<Domain, &'static str> {
        if self.peek() == Some(b'[') {
            self.address_literal().map(Domain::Literal)
        } else {
            self.domain_name().map(Domain::Name)
        }
    }

    /// Dot-separated labels of letters, digits and inner hyphens; U-labels allowed.
    fn domain_name(&mut self) -> Result<String, &'static str> {
        let start = self.pos;
        let mut last = self.label()?;
        while self.eat(b'.') {
            last = self.label()?;
        }
        if self.pos - start > MAX_DOMAIN {
            return Err("domain too long");
        }
        if last.iter().all(u8::is_ascii_digit) {
            return Err("bad domain: numeric top-level label");
        }
        utf8_text(&self.s[start..self.pos])
    }

    fn label(&mut self) -> Result<&'a [u8], &'static str> {
        let label = self.take_while(is_ldh);
        match label {
            [] => Err(if self.pos == 0 || self.s[self.pos - 1] != b'.' {
                "missing domain"
            } else {
                "empty domain label"
            }),
            [b'-', ..] | [.., b'-'] => Err("bad domain label"),
            l if l.len() > MAX_LABEL => Err("domain label too long"),
            l => Ok(l),
        }
    }

    /// `[1.2.3.4]`, `[IPv6:...]` or `[tag:content]`; returns the text inside the brackets.
    fn address_literal(&mut self) -> Result<String, &'static str> {
        self.pos += 1; // the '['
        let inner = self.take_while(|b| matches!(b, 33..=90 | 94..=126));
        if !self.eat(b']') {
            return Err("bad address literal");
        }
        let text = std::str::from_utf8(inner).map_err(|_| "bad address literal")?;
        if is_valid_literal(text) {
            Ok(text.to_owned())
        } else {
            Err("bad address literal")
        }
    }
}

fn is_valid_literal(text: &str) -> bool {
    if text.parse::<Ipv4Addr>().is_ok() {
        return true;
    }
    let Some((tag, rest)) = text.split_once(':') else {
        return false;
    };
    if tag.eq_ignore_ascii_case("IPv6") {
        return rest.parse::<Ipv6Addr>().is_ok();
    }
    is_general_tag(tag) && !rest.is_empty()
}

/// RFC 5321 Standardized-tag: an Ldh-str (registered tags are not checked).
fn is_general_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    !b.is_empty()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
        && b[b.len() - 1] != b'-'
        && b[0].is_ascii_alphanumeric()
}
