//! Rewriting single MIME parts in place: a part's bytes (its header and body) are replaced, the
//! rest of the message is kept byte for byte.
//!
//! Offsets come from mail-parser: a part runs from `offset_header` (its first field, or the
//! empty line when it has none) to `offset_end`. For a part inside a multipart that end is before
//! the CRLF that belongs to the next boundary line, so such a body is written without a final
//! CRLF; the top-level part runs to the end of the message and keeps one.

use mail_parser::{MessagePart, MimeHeaders, PartType};

use super::mime::{Cte, MAX_LINE, decode, encode, longest_line, qp_encode};

/// New bytes for `start..end` of the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartChange {
    pub start: usize,
    pub end: usize,
    pub bytes: Vec<u8>,
}

/// Whether the part is the top-level one (its header is the message's header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Top,
    Nested,
}

/// What to write in a part's header beyond a new `Content-Transfer-Encoding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charset {
    Keep,
    /// Declare UTF-8 (the content was US-ASCII and gains non-ASCII text).
    Utf8,
}

/// A part's raw pieces and what it declares.
pub struct Raw<'a> {
    pub header: &'a [u8],
    pub body: &'a [u8],
    pub cte: Option<Cte>,
    pub level: Level,
    start: usize,
    end: usize,
}

impl<'a> Raw<'a> {
    pub fn of(message: &'a [u8], part: &MessagePart<'_>, level: Level) -> Option<Raw<'a>> {
        let (start, body, end) = (
            part.offset_header as usize,
            part.offset_body as usize,
            part.offset_end as usize,
        );
        if !(start <= body && body <= end && end <= message.len()) {
            return None;
        }
        Some(Raw {
            header: &message[start..body],
            body: &message[body..end],
            cte: Cte::parse(part.content_transfer_encoding()),
            level,
            start,
            end,
        })
    }

    /// The decoded content, when the encoding is known and valid.
    pub fn content(&self) -> Option<Vec<u8>> {
        decode(self.body, self.cte?)
    }

    /// This part with `content` as its body: same encoding when possible, quoted-printable when an
    /// unencoded body would break a line limit or its 7bit/8bit label.
    pub fn replace(&self, part: &MessagePart<'_>, content: &[u8], charset: Charset) -> PartChange {
        let old = self.cte.unwrap_or(Cte::SevenBit);
        let cte = if old.is_identity() && !old.fits(content) {
            Cte::QuotedPrintable
        } else {
            old
        };
        let header = if cte == old && charset == Charset::Keep {
            self.header.to_vec()
        } else {
            rewrite_header(self.header, part, cte, charset, self.level)
        };
        let mut body = encode(content, cte);
        if self.level == Level::Nested && body.ends_with(b"\r\n") {
            body.truncate(body.len() - 2);
        }
        let mut bytes = header;
        bytes.extend_from_slice(&body);
        PartChange {
            start: self.start,
            end: self.end,
            bytes,
        }
    }
}

/// `normalize`: a text part in 7bit/8bit with a line over 998 octets, re-encoded as
/// quoted-printable (its content unchanged).
pub fn normalize(message: &[u8], part: &MessagePart<'_>, level: Level) -> Option<PartChange> {
    if !matches!(part.body, PartType::Text(_) | PartType::Html(_)) {
        return None;
    }
    let raw = Raw::of(message, part, level)?;
    if !matches!(raw.cte, Some(Cte::SevenBit | Cte::EightBit)) || longest_line(raw.body) <= MAX_LINE {
        return None;
    }
    let header = rewrite_header(raw.header, part, Cte::QuotedPrintable, Charset::Keep, level);
    let mut bytes = header;
    bytes.extend_from_slice(&qp_encode(raw.body));
    Some(PartChange {
        start: raw.start,
        end: raw.end,
        bytes,
    })
}

/// The part's header without its `Content-Transfer-Encoding` (and with a new `Content-Type` for
/// [`Charset::Utf8`]), then the new encoding, then the empty line.
fn rewrite_header(header: &[u8], part: &MessagePart<'_>, cte: Cte, charset: Charset, level: Level) -> Vec<u8> {
    let all = crate::message::header_section(header).fields;
    let mut out = Vec::with_capacity(header.len() + 64);
    for f in &all {
        let replaced = f.is("Content-Transfer-Encoding") || (charset == Charset::Utf8 && f.is("Content-Type"));
        if !replaced {
            out.extend_from_slice(f.raw);
        }
    }
    if level == Level::Top && !all.iter().any(|f| f.is("MIME-Version")) {
        out.extend_from_slice(b"MIME-Version: 1.0\r\n");
    }
    if charset == Charset::Utf8 {
        out.extend_from_slice(utf8_content_type(part).as_bytes());
    }
    out.extend_from_slice(format!("Content-Transfer-Encoding: {}\r\n\r\n", cte.name()).as_bytes());
    out
}

/// `Content-Type:` with the part's type and parameters, and `charset=utf-8`.
fn utf8_content_type(part: &MessagePart<'_>) -> String {
    let mut field = String::from("Content-Type: ");
    match part.content_type() {
        Some(ct) => {
            field.push_str(&format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or("plain")));
            field.push_str("; charset=utf-8");
            for a in ct.attributes().unwrap_or_default() {
                if !a.name.eq_ignore_ascii_case("charset") {
                    let value = a.value.replace('\\', "\\\\").replace('"', "\\\"");
                    field.push_str(&format!(";\r\n\t{}=\"{value}\"", a.name));
                }
            }
        }
        None => field.push_str("text/plain; charset=utf-8"),
    }
    field.push_str("\r\n");
    field
}

/// `message` with the changes applied; they must not overlap.
pub fn apply(message: &[u8], mut changes: Vec<PartChange>) -> Vec<u8> {
    changes.sort_by_key(|c| c.start);
    let mut out = Vec::with_capacity(message.len() + changes.iter().map(|c| c.bytes.len()).sum::<usize>());
    let mut pos = 0;
    for c in changes {
        if c.start < pos {
            continue;
        }
        out.extend_from_slice(&message[pos..c.start]);
        out.extend_from_slice(&c.bytes);
        pos = c.end;
    }
    out.extend_from_slice(&message[pos..]);
    out
}
