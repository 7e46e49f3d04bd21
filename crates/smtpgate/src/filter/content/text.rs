//! The human-readable text of a message, decoded: the text header fields and every `text/*` part
//! (base64 and quoted-printable undone, charsets converted by mail-parser, HTML tags stripped),
//! nested `message/rfc822` parts included. Shared by the `content` body rules and `dlp`.

use std::borrow::Cow;

use mail_parser::decoders::html::html_to_text;
use mail_parser::{Header, HeaderValue, Message, PartType};

/// Header fields people write in; the rest (Received, DKIM-Signature, ...) are machine data.
const TEXT_HEADERS: &[&str] = &[
    "subject",
    "comments",
    "keywords",
    "content-description",
    "from",
    "to",
    "cc",
    "reply-to",
    "organization",
];

/// How deep nested `message/rfc822` parts are followed.
const MAX_NESTED_MESSAGES: usize = 8;

/// Where a piece of text came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Header,
    Body,
}

/// One decoded piece of text.
#[derive(Debug)]
pub struct Text<'x> {
    pub origin: Origin,
    pub text: Cow<'x, str>,
}

/// Every text of `msg`, headers first, until `budget` bytes of text have been collected.
pub fn collect<'x>(msg: &'x Message<'x>, budget: usize) -> Vec<Text<'x>> {
    let mut out = Collector {
        out: Vec::new(),
        left: budget,
    };
    out.message(msg, 0);
    out.out
}

/// The decoded value of a header field, unfolded: the decoded text for unstructured fields, the
/// raw field value for the others.
pub fn header_text<'x>(msg: &'x Message<'x>, h: &'x Header<'x>) -> Cow<'x, str> {
    match &h.value {
        HeaderValue::Text(s) => Cow::Borrowed(s.as_ref()),
        HeaderValue::TextList(l) => Cow::Owned(l.join(", ")),
        _ => {
            let raw = msg
                .raw_message
                .get(h.offset_start as usize..h.offset_end as usize)
                .unwrap_or_default();
            Cow::Owned(unfold(&String::from_utf8_lossy(raw)))
        }
    }
}

fn unfold(raw: &str) -> String {
    raw.split(['\r', '\n'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

struct Collector<'x> {
    out: Vec<Text<'x>>,
    left: usize,
}

impl<'x> Collector<'x> {
    fn push(&mut self, origin: Origin, text: Cow<'x, str>) {
        if self.left == 0 || text.is_empty() {
            return;
        }
        let text = truncate(text, self.left);
        self.left -= text.len();
        self.out.push(Text { origin, text });
    }

    fn message(&mut self, msg: &'x Message<'x>, depth: usize) {
        let Some(root) = msg.parts.first() else { return };
        for h in &root.headers {
            if TEXT_HEADERS.iter().any(|n| h.name.as_str().eq_ignore_ascii_case(n)) {
                self.push(Origin::Header, header_text(msg, h));
            }
        }
        for part in &msg.parts {
            match &part.body {
                PartType::Text(s) => self.push(Origin::Body, Cow::Borrowed(s.as_ref())),
                PartType::Html(s) => self.push(Origin::Body, Cow::Owned(html_to_text(s))),
                PartType::Message(inner) if depth < MAX_NESTED_MESSAGES => self.message(inner, depth + 1),
                _ => {}
            }
        }
    }
}

/// At most `max` bytes of `text`, cut at a character boundary.
fn truncate(text: Cow<'_, str>, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    match text {
        Cow::Borrowed(s) => Cow::Borrowed(&s[..end]),
        Cow::Owned(mut s) => {
            s.truncate(end);
            Cow::Owned(s)
        }
    }
}
