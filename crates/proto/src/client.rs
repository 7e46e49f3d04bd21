//! The client side: parsing replies from the next hop and the capabilities its EHLO announces.
//!
//! [`parse_reply`] takes bytes from the front of a receive buffer and returns one whole reply,
//! multi-line (`250-...`) or not, once its last line has arrived. [`Capabilities::from_ehlo`]
//! reads the EHLO keywords smtpgate cares about when delivering.

use std::fmt;

/// Longest reply line accepted, in octets (RFC 5321 4.5.3.1.5 says 512; real servers exceed it).
pub const MAX_REPLY_LINE: usize = 4096;

/// One reply from a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedReply {
    pub code: u16,
    /// The enhanced status code of the first line (`"4.2.0"`), if it has one.
    pub status: Option<String>,
    /// The text of each line, after the code, the separator and any status code.
    pub lines: Vec<String>,
}

/// A reply that is not SMTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyError {
    /// A bad code, a bad separator, a code that changes inside a reply, or a line too long.
    Malformed,
}

impl fmt::Display for ReplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("malformed SMTP reply")
    }
}

impl std::error::Error for ReplyError {}

impl ParsedReply {
    /// The lines joined with a space.
    pub fn text(&self) -> String {
        self.lines.join(" ")
    }

    /// 2xx or 3xx.
    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }

    /// 4xx.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// 5xx.
    pub fn is_permanent(&self) -> bool {
        (500..600).contains(&self.code)
    }

    /// One line for logs and DSNs: `451 4.3.0 text`, or `451 text` without a status.
    pub fn to_string_line(&self) -> String {
        match &self.status {
            Some(s) => format!("{} {} {}", self.code, s, self.text()),
            None => format!("{} {}", self.code, self.text()),
        }
    }
}

impl fmt::Display for ParsedReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_string_line())
    }
}

/// One line of a reply, split up.
struct ReplyLine<'a> {
    code: u16,
    last: bool,
    text: &'a [u8],
}

/// Parses one complete (possibly multi-line) reply at the front of `buf`:
/// `Ok(Some((reply, consumed)))`, or `Ok(None)` if more bytes are needed. Lines may end in CRLF
/// or a bare LF. A line over [`MAX_REPLY_LINE`] octets or a bad code is `Malformed`.
pub fn parse_reply(buf: &[u8]) -> Result<Option<(ParsedReply, usize)>, ReplyError> {
    let mut pos = 0;
    let mut texts: Vec<&[u8]> = Vec::new();
    let mut code = None;
    loop {
        let Some((line, used)) = next_line(&buf[pos..])? else {
            return Ok(None);
        };
        pos += used;
        let line = split_line(line)?;
        if *code.get_or_insert(line.code) != line.code {
            return Err(ReplyError::Malformed);
        }
        texts.push(line.text);
        if line.last {
            return Ok(Some((build_reply(line.code, &texts), pos)));
        }
    }
}

/// The next line without its terminator, and the bytes it used.
fn next_line(buf: &[u8]) -> Result<Option<(&[u8], usize)>, ReplyError> {
    let Some(lf) = buf.iter().position(|&b| b == b'\n') else {
        return if buf.len() > MAX_REPLY_LINE {
            Err(ReplyError::Malformed)
        } else {
            Ok(None)
        };
    };
    if lf + 1 > MAX_REPLY_LINE {
        return Err(ReplyError::Malformed);
    }
    let end = if lf > 0 && buf[lf - 1] == b'\r' { lf - 1 } else { lf };
    Ok(Some((&buf[..end], lf + 1)))
}

/// `ddd`, `ddd text` or `ddd-text`.
fn split_line(line: &[u8]) -> Result<ReplyLine<'_>, ReplyError> {
    let code = parse_code(line).ok_or(ReplyError::Malformed)?;
    match line.get(3) {
        None => Ok(ReplyLine {
            code,
            last: true,
            text: b"",
        }),
        Some(b' ') => Ok(ReplyLine {
            code,
            last: true,
            text: &line[4..],
        }),
        Some(b'-') => Ok(ReplyLine {
            code,
            last: false,
            text: &line[4..],
        }),
        Some(_) => Err(ReplyError::Malformed),
    }
}

/// RFC 5321 4.2: first digit 2-5, second 0-5, third 0-9.
fn parse_code(line: &[u8]) -> Option<u16> {
    match line.get(..3)? {
        &[a @ b'2'..=b'5', b @ b'0'..=b'5', c @ b'0'..=b'9'] => {
            Some(u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0'))
        }
        _ => None,
    }
}

fn build_reply(code: u16, texts: &[&[u8]]) -> ParsedReply {
    let class = b"0123456789"[usize::from(code / 100)];
    let status = split_status(texts[0], class).map(|(s, _)| s.to_owned());
    let lines = texts
        .iter()
        .map(|t| {
            let text = match split_status(t, class) {
                Some((s, rest)) if Some(s) == status.as_deref() => rest,
                _ => t,
            };
            String::from_utf8_lossy(text).into_owned()
        })
        .collect();
    ParsedReply { code, status, lines }
}

/// An RFC 3463 `class.subject.detail` at the start of `text`, whose class matches the code;
/// returns it and the text after it (and after one space).
fn split_status(text: &[u8], class: u8) -> Option<(&str, &[u8])> {
    let end = text.iter().position(|&b| b == b' ').unwrap_or(text.len());
    let word = std::str::from_utf8(&text[..end]).ok()?;
    let mut parts = word.split('.');
    let ok = parts.next()? == char::from(class).to_string()
        && parts.next().is_some_and(is_status_number)
        && parts.next().is_some_and(is_status_number)
        && parts.next().is_none();
    ok.then(|| (word, text.get(end + 1..).unwrap_or(b"")))
}

fn is_status_number(s: &str) -> bool {
    (1..=3).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit())
}

/// What a server's EHLO reply says it can do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    pub pipelining: bool,
    /// `SIZE n`; `Some(0)` when SIZE is announced with no (or a zero) limit (RFC 1870).
    pub size: Option<u64>,
    pub starttls: bool,
    pub eight_bit_mime: bool,
    pub smtputf8: bool,
    pub dsn: bool,
    pub chunking: bool,
    pub enhanced_status_codes: bool,
    /// SASL mechanisms, upper-cased, from `AUTH` (and the old `AUTH=` form).
    pub auth: Vec<String>,
}

impl Capabilities {
    /// Reads the keyword lines (all but the first) of a positive EHLO reply; nothing otherwise.
    pub fn from_ehlo(reply: &ParsedReply) -> Self {
        let mut caps = Capabilities::default();
        if reply.code == 250 {
            for line in reply.lines.iter().skip(1) {
                caps.add_line(line);
            }
        }
        caps
    }

    fn add_line(&mut self, line: &str) {
        let mut words = line.split_ascii_whitespace();
        let Some(word) = words.next() else { return };
        let keyword = word.to_ascii_uppercase();
        match keyword.as_str() {
            "PIPELINING" => self.pipelining = true,
            "SIZE" => self.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0)),
            "STARTTLS" => self.starttls = true,
            "8BITMIME" => self.eight_bit_mime = true,
            "SMTPUTF8" => self.smtputf8 = true,
            "DSN" => self.dsn = true,
            "CHUNKING" => self.chunking = true,
            "ENHANCEDSTATUSCODES" => self.enhanced_status_codes = true,
            "AUTH" => self.add_auth(words),
            k if k.starts_with("AUTH=") => {
                self.add_auth(std::iter::once(&word[5..]).chain(words));
            }
            _ => {}
        }
    }

    fn add_auth<'a>(&mut self, mechanisms: impl Iterator<Item = &'a str>) {
        for m in mechanisms {
            let m = m.to_ascii_uppercase();
            if !m.is_empty() && !self.auth.contains(&m) {
                self.auth.push(m);
            }
        }
    }
}
