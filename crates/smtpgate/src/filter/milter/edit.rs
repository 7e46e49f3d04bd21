//! The message as a milter sees it, a header list and a body, and the header and body changes
//! it asks for, carried out on the raw message.
//!
//! Conventions (Sendmail's, which Postfix follows): a header value goes to the milter without
//! its final CRLF and with folded lines joined by a bare LF; the space after the colon is kept
//! only when the milter negotiated `SMFIP_HDR_LEADSPC`, and then values it sends back carry their
//! own leading space too. The body goes as it is, with CRLF line endings.

use super::super::Modification;

/// Whether header values carry the space after the colon (`SMFIP_HDR_LEADSPC`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeadingSpace {
    Kept,
    Stripped,
}

/// One header field: its name and its exact bytes (`Name: value\r\n` with any folding).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Field {
    name: String,
    raw: Vec<u8>,
}

impl Field {
    fn new(name: &str, value: &str, lead: LeadingSpace) -> Field {
        let value = value.replace("\r\n", "\n").replace('\n', "\r\n");
        let space = if lead == LeadingSpace::Stripped && !value.is_empty() {
            " "
        } else {
            ""
        };
        Field {
            name: name.to_string(),
            raw: format!("{name}:{space}{value}\r\n").into_bytes(),
        }
    }

    /// The value as a milter gets it.
    fn value(&self, lead: LeadingSpace) -> String {
        let after_colon = &self.raw[self.name.len() + 1..];
        let text = String::from_utf8_lossy(after_colon);
        let text = text
            .strip_suffix("\r\n")
            .or_else(|| text.strip_suffix('\n'))
            .unwrap_or(&text);
        let text = text.replace("\r\n", "\n");
        match lead {
            LeadingSpace::Kept => text,
            LeadingSpace::Stripped => text.strip_prefix(' ').unwrap_or(&text).to_string(),
        }
    }
}

/// A message split for a milter, and the changes asked for so far.
#[derive(Debug, Clone)]
pub struct Message {
    fields: Vec<Field>,
    /// The blank line ending the header section (empty when the message has none).
    separator: Vec<u8>,
    body: Vec<u8>,
    lead: LeadingSpace,
    /// Header fields added, in order, while nothing else changed.
    added: Vec<(String, String)>,
    /// A change that an added header field cannot express (by index, a deletion, the body).
    rewritten: bool,
}

impl Message {
    /// Splits `raw` with [`crate::message::header_section`]. A line that is not a header field
    /// (no colon, or continuation lines with no field before them) starts the body, without a
    /// separator.
    pub fn parse(raw: &[u8], lead: LeadingSpace) -> Message {
        let section = crate::message::header_section(raw);
        let mut fields = Vec::with_capacity(section.fields.len());
        for f in &section.fields {
            let Some(name) = f.name() else {
                return Message::new(fields, Vec::new(), raw[f.start..].to_vec(), lead);
            };
            fields.push(Field {
                name: String::from_utf8_lossy(name).into_owned(),
                raw: f.raw.to_vec(),
            });
        }
        let body = raw[section.body_start..].to_vec();
        Message::new(fields, section.separator.to_vec(), body, lead)
    }

    fn new(fields: Vec<Field>, separator: Vec<u8>, body: Vec<u8>, lead: LeadingSpace) -> Message {
        Message {
            fields,
            separator,
            body,
            lead,
            added: Vec::new(),
            rewritten: false,
        }
    }

    /// The header fields as (name, value) for `SMFIC_HEADER`.
    pub fn headers(&self) -> impl Iterator<Item = (String, String)> + '_ {
        self.fields
            .iter()
            .map(|f| (f.name.trim_end().to_string(), f.value(self.lead)))
    }

    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// `SMFIR_ADDHEADER`: at the end of the header section.
    pub fn add_header(&mut self, name: &str, value: &str) {
        self.note_added(name, value);
        self.fields.push(Field::new(name, value, self.lead));
    }

    /// `SMFIR_INSHEADER`: before the field at `index` (0-based), at the end when past it.
    pub fn insert_header(&mut self, index: u32, name: &str, value: &str) {
        self.note_added(name, value);
        let at = (index as usize).min(self.fields.len());
        self.fields.insert(at, Field::new(name, value, self.lead));
    }

    /// `SMFIR_CHGHEADER`: the `index`-th (1-based; 0 counts as 1) field named `name` gets
    /// `value`, or goes when `value` is empty; with fewer such fields a non-empty one is added.
    pub fn change_header(&mut self, index: u32, name: &str, value: &str) {
        self.rewritten = true;
        let nth = (index.max(1) - 1) as usize;
        let found = self
            .fields
            .iter()
            .enumerate()
            .filter(|(_, f)| f.name.trim_end().eq_ignore_ascii_case(name))
            .nth(nth)
            .map(|(i, _)| i);
        match (found, value.is_empty()) {
            (Some(i), true) => {
                self.fields.remove(i);
            }
            (Some(i), false) => self.fields[i] = Field::new(name, value, self.lead),
            (None, true) => {}
            (None, false) => self.fields.push(Field::new(name, value, self.lead)),
        }
    }

    /// `SMFIR_REPLBODY`, one packet: the first replaces the body, later ones append to it.
    pub fn replace_body(&mut self, chunk: &[u8], first: bool) {
        self.rewritten = true;
        if first {
            self.body.clear();
        }
        self.body.extend_from_slice(chunk);
    }

    fn note_added(&mut self, name: &str, value: &str) {
        let value = value.replace("\r\n", "\n").replace('\n', "\r\n");
        let value = value.strip_prefix(' ').map(str::to_string).unwrap_or(value);
        self.added.push((name.to_string(), value));
    }

    /// What changed, as modifications: the added fields alone when that is all, otherwise the
    /// whole rewritten message.
    pub fn into_modifications(self) -> Vec<Modification> {
        if !self.rewritten {
            return self
                .added
                .into_iter()
                .map(|(n, v)| Modification::AddHeader(n, v))
                .collect();
        }
        let mut out: Vec<u8> = self.fields.iter().flat_map(|f| f.raw.iter().copied()).collect();
        let separator = if self.separator.is_empty() {
            b"\r\n".to_vec()
        } else {
            self.separator
        };
        out.extend_from_slice(&separator);
        out.extend_from_slice(&crlf(&self.body));
        vec![Modification::ReplaceMessage(out)]
    }
}

/// Bare LFs (a milter's replaced body may have them) become CRLF.
fn crlf(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    for (i, &b) in body.iter().enumerate() {
        if b == b'\n' && (i == 0 || body[i - 1] != b'\r') {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] = b"Received: from x\r\n\tby y\r\nSubject: hi\r\nX-A: 1\r\nx-a: 2\r\n\r\nbody\r\n";

    fn replaced(m: Message) -> String {
        match m.into_modifications().as_slice() {
            [Modification::ReplaceMessage(raw)] => String::from_utf8(raw.clone()).unwrap(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn headers_go_without_crlf_and_with_the_negotiated_leading_space() {
        let kept: Vec<_> = Message::parse(MSG, LeadingSpace::Kept).headers().collect();
        assert_eq!(kept[0], ("Received".into(), " from x\n\tby y".into()));
        assert_eq!(kept[1], ("Subject".into(), " hi".into()));
        let stripped: Vec<_> = Message::parse(MSG, LeadingSpace::Stripped).headers().collect();
        assert_eq!(stripped[1], ("Subject".into(), "hi".into()));
        assert_eq!(stripped.len(), 4);
        assert_eq!(Message::parse(MSG, LeadingSpace::Kept).body(), b"body\r\n");
    }

    #[test]
    fn additions_alone_stay_added_headers() {
        let mut m = Message::parse(MSG, LeadingSpace::Kept);
        m.add_header("X-B", " 3");
        m.insert_header(0, "DKIM-Signature", " v=1;\n\tb=abc");
        assert_eq!(
            m.into_modifications(),
            [
                Modification::AddHeader("X-B".into(), "3".into()),
                Modification::AddHeader("DKIM-Signature".into(), "v=1;\r\n\tb=abc".into()),
            ]
        );
    }

    #[test]
    fn changes_by_index_rewrite_the_message() {
        let mut m = Message::parse(MSG, LeadingSpace::Stripped);
        m.change_header(2, "X-A", "");
        m.change_header(1, "subject", "new");
        m.change_header(3, "X-A", "late");
        m.insert_header(1, "X-Ins", "i");
        m.add_header("X-End", "e\n\tf");
        assert_eq!(
            replaced(m),
            "Received: from x\r\n\tby y\r\nX-Ins: i\r\nsubject: new\r\nX-A: 1\r\nX-A: late\r\nX-End: e\r\n\tf\r\n\r\nbody\r\n"
        );
    }

    #[test]
    fn body_replacement_in_pieces_gets_crlf() {
        let mut m = Message::parse(MSG, LeadingSpace::Kept);
        m.replace_body(b"one\n", true);
        m.replace_body(b"two\r\n", false);
        assert!(replaced(m).ends_with("x-a: 2\r\n\r\none\r\ntwo\r\n"));
    }

    #[test]
    fn a_message_without_a_body_gets_a_separator() {
        let mut m = Message::parse(b"Subject: s\r\n", LeadingSpace::Kept);
        assert_eq!(m.body(), b"");
        m.change_header(1, "Subject", " t");
        assert_eq!(replaced(m), "Subject: t\r\n\r\n");
    }
}
