//! `footer_text` / `footer_html`: a disclaimer appended to the message's main bodies.
//!
//! Which parts: for a single-part message, its body (text/plain gets the text footer, text/html
//! the HTML one). In a multipart/alternative, the first text/plain and the first text/html
//! alternative. In any other multipart (mixed, related, ...), only its first part is the body and
//! is looked into; attachments (`Content-Disposition: attachment`) and attached messages are never
//! touched.
//!
//! Encoding: the part is decoded (quoted-printable, base64), the footer appended (HTML: before the
//! last `</body>`, else `</html>`, else at the end) and the part encoded as it was; a 7bit/8bit
//! part that would no longer fit its label becomes quoted-printable. The part's charset is kept
//! and the footer converted to it. A US-ASCII text part with a non-ASCII footer is relabelled
//! UTF-8; in HTML, characters the charset lacks become numeric references (`&#8364;`); a text
//! footer that the charset cannot represent is skipped, with a log line.

use encoding_rs::Encoding;
use mail_parser::{Message, MessagePart, MimeHeaders, PartType};

use super::part::{Charset, Level, PartChange, Raw};

/// The configured footers, line endings already CRLF.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Footer {
    pub text: Option<String>,
    pub html: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    Html,
}

/// The parts that get a footer, by index into `message.parts`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Targets {
    pub text: Option<u32>,
    pub html: Option<u32>,
}

impl Footer {
    pub fn new(text: Option<String>, html: Option<String>) -> Footer {
        Footer {
            text: text.map(|t| crlf(&t)),
            html: html.map(|h| crlf(&h)),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.text.is_none() && self.html.is_none()
    }

    /// The changes that add the footers, or why a part was left alone.
    pub fn changes(&self, raw: &[u8], msg: &Message<'_>) -> (Vec<(u32, PartChange)>, Vec<String>) {
        let mut targets = Targets::default();
        find(msg, 0, &mut targets);
        let mut changes = Vec::new();
        let mut skipped = Vec::new();
        let wanted = [
            (targets.text, Kind::Text, &self.text),
            (targets.html, Kind::Html, &self.html),
        ];
        for (index, kind, footer) in wanted {
            let (Some(index), Some(footer)) = (index, footer) else {
                continue;
            };
            let level = if index == 0 { Level::Top } else { Level::Nested };
            match add(raw, &msg.parts[index as usize], level, kind, footer) {
                Ok(change) => changes.push((index, change)),
                Err(why) => skipped.push(format!("part {index}: {why}")),
            }
        }
        (changes, skipped)
    }
}

/// Fills `targets` from part `index` down.
pub fn find(msg: &Message<'_>, index: u32, targets: &mut Targets) {
    let Some(part) = msg.parts.get(index as usize) else {
        return;
    };
    if is_attachment(part) {
        return;
    }
    match &part.body {
        PartType::Multipart(children) => {
            let alternative = part
                .content_type()
                .and_then(|c| c.subtype())
                .is_some_and(|s| s.eq_ignore_ascii_case("alternative"));
            let children = if alternative {
                &children[..]
            } else {
                &children[..children.len().min(1)]
            };
            for &child in children {
                find(msg, child, targets);
            }
        }
        PartType::Html(_) => {
            targets.html.get_or_insert(index);
        }
        PartType::Text(_) if is_plain(part) => {
            targets.text.get_or_insert(index);
        }
        _ => {}
    }
}

fn is_attachment(part: &MessagePart<'_>) -> bool {
    part.content_disposition()
        .is_some_and(|d| d.ctype().eq_ignore_ascii_case("attachment"))
}

fn is_plain(part: &MessagePart<'_>) -> bool {
    part.content_type().is_none_or(|c| {
        c.ctype().eq_ignore_ascii_case("text") && c.subtype().is_none_or(|s| s.eq_ignore_ascii_case("plain"))
    })
}

/// The part with `footer` added.
fn add(raw: &[u8], part: &MessagePart<'_>, level: Level, kind: Kind, footer: &str) -> Result<PartChange, String> {
    if part.is_encoding_problem {
        return Err("mail-parser could not read it".into());
    }
    let r = Raw::of(raw, part, level).ok_or("offsets out of range")?;
    let Some(content) = r.content() else {
        return Err("unknown or invalid Content-Transfer-Encoding".into());
    };
    let charset = charset(part);
    let (bytes, relabel) = encode_footer(footer, charset.as_deref(), kind, &content)?;
    let footer_text = bytes.trim_ascii();
    if !footer_text.is_empty() && content.windows(footer_text.len()).any(|w| w == footer_text) {
        return Err("the footer is there already".into());
    }
    let content = match kind {
        Kind::Text => append(content, &bytes),
        Kind::Html => insert_html(content, &bytes),
    };
    Ok(r.replace(part, &content, relabel))
}

fn charset(part: &MessagePart<'_>) -> Option<String> {
    let ct = part.content_type()?;
    let a = ct
        .attributes()?
        .iter()
        .find(|a| a.name.eq_ignore_ascii_case("charset"))?;
    Some(a.value.trim().to_ascii_lowercase())
}

const ASCII_LABELS: &[&str] = &[
    "us-ascii",
    "ascii",
    "ansi_x3.4-1968",
    "iso646-us",
    "us",
    "iso-ir-6",
    "cp367",
];
const LATIN1_LABELS: &[&str] = &[
    "iso-8859-1",
    "iso8859-1",
    "latin1",
    "l1",
    "iso_8859-1",
    "iso-ir-100",
    "cp819",
];

/// The footer in the part's charset, and whether the part must be relabelled UTF-8.
fn encode_footer(
    footer: &str,
    charset: Option<&str>,
    kind: Kind,
    content: &[u8],
) -> Result<(Vec<u8>, Charset), String> {
    let label = charset.unwrap_or("us-ascii");
    if footer.is_ascii() || label == "utf-8" || label == "utf8" {
        return Ok((footer.as_bytes().to_vec(), Charset::Keep));
    }
    if ASCII_LABELS.contains(&label) {
        return match kind {
            Kind::Html => Ok((numeric_references(footer, |_| None), Charset::Keep)),
            Kind::Text if std::str::from_utf8(content).is_ok() => Ok((footer.as_bytes().to_vec(), Charset::Utf8)),
            Kind::Text => Err("charset us-ascii with 8-bit content: cannot add a non-ASCII footer".into()),
        };
    }
    if LATIN1_LABELS.contains(&label) {
        // encoding_rs maps these labels to windows-1252, which differs in 0x80..0x9F.
        let latin1 = |c: char| u8::try_from(u32::from(c)).ok();
        return convert(footer, kind, label, latin1);
    }
    let Some(encoding) = Encoding::for_label(label.as_bytes()) else {
        return Err(format!("unknown charset {label:?}"));
    };
    if encoding.output_encoding() != encoding {
        return Err(format!("cannot write charset {label:?}"));
    }
    // encoding_rs writes what the charset lacks as numeric references: right for HTML only.
    let (bytes, _, unmappable) = encoding.encode(footer);
    match (unmappable, kind) {
        (true, Kind::Text) => Err(format!("the footer cannot be written in charset {label:?}")),
        _ => Ok((bytes.into_owned(), Charset::Keep)),
    }
}

/// The footer one character at a time: HTML gets numeric references for what `map` lacks.
fn convert(
    footer: &str,
    kind: Kind,
    label: &str,
    map: impl Fn(char) -> Option<u8>,
) -> Result<(Vec<u8>, Charset), String> {
    match kind {
        Kind::Html => Ok((numeric_references(footer, map), Charset::Keep)),
        Kind::Text => footer
            .chars()
            .map(&map)
            .collect::<Option<Vec<u8>>>()
            .map(|b| (b, Charset::Keep))
            .ok_or_else(|| format!("the footer cannot be written in charset {label:?}")),
    }
}

/// ASCII as it is, other characters through `map` or as `&#N;`.
fn numeric_references(footer: &str, map: impl Fn(char) -> Option<u8>) -> Vec<u8> {
    let mut out = Vec::with_capacity(footer.len());
    for c in footer.chars() {
        match (c.is_ascii(), map(c)) {
            (true, _) => out.push(c as u8),
            (false, Some(b)) => out.push(b),
            (false, None) => out.extend_from_slice(format!("&#{};", u32::from(c)).as_bytes()),
        }
    }
    out
}

/// Text: a blank line, then the footer, then a line break.
fn append(mut content: Vec<u8>, footer: &[u8]) -> Vec<u8> {
    if !content.is_empty() && !content.ends_with(b"\n") {
        content.extend_from_slice(b"\r\n");
    }
    content.extend_from_slice(b"\r\n");
    content.extend_from_slice(footer);
    content.extend_from_slice(b"\r\n");
    content
}

/// HTML: before the last `</body`, else the last `</html`, else at the end.
fn insert_html(content: Vec<u8>, footer: &[u8]) -> Vec<u8> {
    let at = rfind_ci(&content, b"</body").or_else(|| rfind_ci(&content, b"</html"));
    let Some(at) = at else {
        let mut out = content;
        if !out.is_empty() && !out.ends_with(b"\n") {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(footer);
        out.extend_from_slice(b"\r\n");
        return out;
    };
    let mut out = Vec::with_capacity(content.len() + footer.len() + 2);
    out.extend_from_slice(&content[..at]);
    out.extend_from_slice(footer);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&content[at..]);
    out
}

fn rfind_ci(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .rposition(|w| w.eq_ignore_ascii_case(needle))
}

/// The text with every line break (CRLF, LF, CR) as CRLF.
fn crlf(text: &str) -> String {
    text.replace("\r\n", "\n").replace('\r', "\n").replace('\n', "\r\n")
}
