//! Byte-level MIME helpers: transfer decoding and encoding (header fields are
//! [`crate::message::header_section`]'s).
//!
//! Everything here keeps bytes it does not have to change exactly as they were, and writes CRLF
//! line endings and lines of at most [`MAX_LINE`] octets.

use base64::Engine;
use mail_parser::decoders::{base64::base64_decode, quoted_printable::quoted_printable_decode};

/// RFC 5322 2.1.1: a line is at most 998 octets, CRLF excluded.
pub const MAX_LINE: usize = 998;

/// Line length of quoted-printable and base64 output (RFC 2045 6.7, 6.8).
const ENCODED_LINE: usize = 76;

/// A `Content-Transfer-Encoding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cte {
    SevenBit,
    EightBit,
    Binary,
    QuotedPrintable,
    Base64,
}

impl Cte {
    /// The header's value; none means 7bit (RFC 2045 6.1). An unknown encoding is `None`.
    pub fn parse(value: Option<&str>) -> Option<Cte> {
        let Some(v) = value else {
            return Some(Cte::SevenBit);
        };
        match v.trim().to_ascii_lowercase().as_str() {
            "7bit" | "" => Some(Cte::SevenBit),
            "8bit" => Some(Cte::EightBit),
            "binary" => Some(Cte::Binary),
            "quoted-printable" => Some(Cte::QuotedPrintable),
            "base64" => Some(Cte::Base64),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Cte::SevenBit => "7bit",
            Cte::EightBit => "8bit",
            Cte::Binary => "binary",
            Cte::QuotedPrintable => "quoted-printable",
            Cte::Base64 => "base64",
        }
    }

    /// Whether the body is sent as it is (no decoding needed).
    pub fn is_identity(self) -> bool {
        matches!(self, Cte::SevenBit | Cte::EightBit | Cte::Binary)
    }

    /// Whether `content` may be sent as it is under this label.
    pub fn fits(self, content: &[u8]) -> bool {
        match self {
            Cte::SevenBit => content.is_ascii() && !content.contains(&0) && longest_line(content) <= MAX_LINE,
            Cte::EightBit => !content.contains(&0) && longest_line(content) <= MAX_LINE,
            Cte::Binary | Cte::QuotedPrintable | Cte::Base64 => true,
        }
    }
}

/// The decoded content of a body; `None` when it is not valid in its encoding.
pub fn decode(body: &[u8], cte: Cte) -> Option<Vec<u8>> {
    match cte {
        Cte::SevenBit | Cte::EightBit | Cte::Binary => Some(body.to_vec()),
        Cte::QuotedPrintable => quoted_printable_decode(body),
        Cte::Base64 => base64_decode(body),
    }
}

/// `content` encoded as `cte`, with CRLF line endings; a non-empty result ends with CRLF.
pub fn encode(content: &[u8], cte: Cte) -> Vec<u8> {
    let mut out = match cte {
        Cte::SevenBit | Cte::EightBit | Cte::Binary => content.to_vec(),
        Cte::QuotedPrintable => qp_encode(content),
        Cte::Base64 => base64_encode(content),
    };
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// The length of the longest line, CRLF (or LF) excluded.
pub fn longest_line(data: &[u8]) -> usize {
    data.split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l).len())
        .max()
        .unwrap_or(0)
}

/// Quoted-printable (RFC 2045 6.7). Only CRLF is a line break: a bare CR or LF is encoded, so
/// decoding gives back exactly `data`. A `.` starting a line is encoded too, so no output line is
/// a lone dot.
pub fn qp_encode(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 8);
    let mut line = 0;
    let mut i = 0;
    while i < data.len() {
        let b = data[i];
        if b == b'\r' && data.get(i + 1) == Some(&b'\n') {
            out.extend_from_slice(b"\r\n");
            line = 0;
            i += 2;
            continue;
        }
        let at_line_end = data
            .get(i + 1)
            .is_none_or(|&n| n == b'\r' && data.get(i + 2) == Some(&b'\n'));
        let mut literal = qp_literal(b, at_line_end, line);
        // Room for the token and, unless the line ends right after it, a soft break's `=`.
        let limit = if at_line_end { ENCODED_LINE } else { ENCODED_LINE - 1 };
        if line + qp_width(literal) > limit {
            out.extend_from_slice(b"=\r\n");
            line = 0;
            literal = qp_literal(b, at_line_end, line);
        }
        if literal {
            out.push(b);
        } else {
            out.extend_from_slice(format!("={b:02X}").as_bytes());
        }
        let width = qp_width(literal);
        line += width;
        i += 1;
    }
    out
}

/// Whether `b` may stand for itself at column `line` of quoted-printable output.
fn qp_literal(b: u8, at_line_end: bool, line: usize) -> bool {
    match b {
        b'=' => false,
        b' ' | b'\t' => !at_line_end,
        b'.' => line > 0,
        33..=126 => true,
        _ => false,
    }
}

fn qp_width(literal: bool) -> usize {
    if literal { 1 } else { 3 }
}

/// Base64 in lines of 76 characters.
pub fn base64_encode(data: &[u8]) -> Vec<u8> {
    let encoded = base64::engine::general_purpose::STANDARD.encode(data);
    let mut out = Vec::with_capacity(encoded.len() + encoded.len() / ENCODED_LINE * 2 + 2);
    for chunk in encoded.as_bytes().chunks(ENCODED_LINE) {
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
    }
    out
}
