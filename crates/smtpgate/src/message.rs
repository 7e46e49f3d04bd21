//! A message's header section, as every part of the gate reads and edits it: plain functions on
//! bytes, with nothing of SMTP, routing or filters in them (they sit below all of those).
//!
//! [`header_section`] is the one reader. A line is a header line until the first empty line
//! (`CRLF` or a bare `LF`) or the end of the message. A line starting with a space or tab
//! continues the field before it (RFC 5322 2.2.3); any other line starts a field, with or
//! without a colon, so that every byte of the section belongs to exactly one [`Field`] and an
//! edit can copy the fields it keeps byte for byte. What to make of a line without a colon is the
//! caller's: routing skips it, a milter sees the body start there.
//!
//! ```
//! let message = b"Subject: hello\r\n world\r\nX-A: 1\r\n\r\nbody";
//! let section = smtpgate::message::header_section(message);
//! assert_eq!(section.fields[0].value(), "hello world");
//! assert!(section.fields[1].is("x-a"));
//! assert_eq!(&message[section.body_start..], b"body");
//! ```

/// One field as written: the first line and its continuation lines, line endings included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field<'a> {
    /// Every byte of the field.
    pub raw: &'a [u8],
    /// Where `raw` starts in the message.
    pub start: usize,
    /// The length of the first line, its line ending included.
    first_line: usize,
    /// Where the first colon of the first line is in `raw`.
    colon: Option<usize>,
}

impl<'a> Field<'a> {
    /// The bytes before the colon, as written (not trimmed). `None` for a line without a colon,
    /// and for continuation lines that have no field before them.
    pub fn name(&self) -> Option<&'a [u8]> {
        self.colon.filter(|_| !self.is_orphan()).map(|c| &self.raw[..c])
    }

    /// Whether the field's name is `name`, ignoring ASCII case (`Subject :` is not `Subject`).
    pub fn is(&self, name: &str) -> bool {
        self.name().is_some_and(|n| n.eq_ignore_ascii_case(name.as_bytes()))
    }

    /// Continuation lines at the very start of the section, with no field to continue.
    pub fn is_orphan(&self) -> bool {
        self.raw.starts_with(b" ") || self.raw.starts_with(b"\t")
    }

    /// The first line, its line ending included.
    pub fn first_line(&self) -> &'a [u8] {
        &self.raw[..self.first_line]
    }

    /// The continuation lines, line endings included.
    pub fn continuation(&self) -> &'a [u8] {
        &self.raw[self.first_line..]
    }

    /// The bytes after the colon, continuation lines and line endings included (the whole field
    /// when it has no colon).
    pub fn raw_value(&self) -> &'a [u8] {
        self.colon.map_or(self.raw, |c| &self.raw[c + 1..])
    }

    /// The value unfolded (lossy UTF-8): the first line after the colon, then each continuation
    /// line, each trimmed and joined by one space.
    pub fn value(&self) -> String {
        let first = self
            .colon
            .map_or(self.first_line(), |c| &self.raw[c + 1..self.first_line]);
        let mut value = String::from_utf8_lossy(first).trim().to_owned();
        unfold_into(&mut value, self.continuation());
        value
    }

    /// Where the field ends in the message.
    pub fn end(&self) -> usize {
        self.start + self.raw.len()
    }
}

/// Appends each line of `lines`, trimmed, after one space.
fn unfold_into(value: &mut String, lines: &[u8]) {
    for line in lines.split_inclusive(|&b| b == b'\n') {
        value.push(' ');
        value.push_str(String::from_utf8_lossy(line).trim());
    }
}

/// A message's header section: its fields, and where it ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderSection<'a> {
    /// Every line up to the empty one, as fields, in order and without gaps from offset 0.
    pub fields: Vec<Field<'a>>,
    /// The empty line ending the section (`CRLF` or `LF`); empty when the message ends first.
    pub separator: &'a [u8],
    /// Where the fields end: the start of the empty line, or the end of the message.
    pub end: usize,
    /// Where the body starts: after the empty line, or the end of the message.
    pub body_start: usize,
}

/// Reads the header section at the start of `message`.
pub fn header_section(message: &[u8]) -> HeaderSection<'_> {
    let mut fields: Vec<Field<'_>> = Vec::new();
    let mut pos = 0;
    while pos < message.len() {
        let end = message[pos..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(message.len(), |i| pos + i + 1);
        let line = &message[pos..end];
        if line == b"\r\n" || line == b"\n" {
            return HeaderSection {
                fields,
                separator: line,
                end: pos,
                body_start: end,
            };
        }
        let continuation = line.starts_with(b" ") || line.starts_with(b"\t");
        match fields.last_mut() {
            Some(last) if continuation => last.raw = &message[last.start..end],
            _ => fields.push(Field {
                raw: line,
                start: pos,
                first_line: line.len(),
                colon: line.iter().position(|&b| b == b':'),
            }),
        }
        pos = end;
    }
    HeaderSection {
        fields,
        separator: &message[message.len()..],
        end: message.len(),
        body_start: message.len(),
    }
}

/// A copy of `message` without the header fields named in `remove` and with `add` inserted after
/// the first field (the session's own `Received:`), or before the empty line when that is the
/// only one.
pub fn apply_header_changes(message: &[u8], add: &[(String, String)], remove: &[String]) -> Vec<u8> {
    if add.is_empty() && remove.is_empty() {
        return message.to_vec();
    }
    let added: Vec<u8> = add
        .iter()
        .flat_map(|(n, v)| format!("{n}: {v}\r\n").into_bytes())
        .collect();
    let section = header_section(message);
    let mut out = Vec::with_capacity(message.len() + added.len());
    let mut counted = 0;
    let mut inserted = false;
    for field in &section.fields {
        if !field.is_orphan() {
            if counted == 1 && !inserted {
                out.extend_from_slice(&added);
                inserted = true;
            }
            counted += 1;
        }
        let dropped = !field.is_orphan()
            && remove
                .iter()
                .any(|r| starts_with_ci(field.first_line(), format!("{r}:").as_bytes()));
        if !dropped {
            out.extend_from_slice(field.raw);
        }
    }
    // A section ending at the end of the message gets nothing before its (missing) empty line.
    if !inserted && !section.separator.is_empty() {
        out.extend_from_slice(&added);
    }
    out.extend_from_slice(&message[section.end..]);
    out
}

pub(crate) fn starts_with_ci(line: &[u8], prefix: &[u8]) -> bool {
    line.len() >= prefix.len() && line[..prefix.len()].eq_ignore_ascii_case(prefix)
}

/// A message's header fields, unfolded (names and values trimmed), parsed once when the message
/// arrives and handed to whoever reads them: the hop count, submission headers, routing rules and
/// Sieve scripts, and the record of sent mail (by Message-ID). A line without a colon is left
/// out (continuation lines after it continue the field before it), and so are continuation
/// lines before the first field.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    fields: Vec<(String, String)>,
    /// Where the body starts in the message the fields were read from.
    body_start: usize,
}

impl Headers {
    /// Reads the header section at the start of `message`.
    pub fn parse(message: &[u8]) -> Headers {
        let section = header_section(message);
        let mut fields: Vec<(String, String)> = Vec::new();
        for field in &section.fields {
            match field.name() {
                Some(name) => fields.push((String::from_utf8_lossy(name).trim().to_owned(), field.value())),
                None if field.is_orphan() => {}
                None => {
                    if let Some(last) = fields.last_mut() {
                        unfold_into(&mut last.1, field.continuation());
                    }
                }
            }
        }
        Headers {
            fields,
            body_start: section.body_start,
        }
    }

    /// Every field, in order, as (name, unfolded value).
    pub fn fields(&self) -> &[(String, String)] {
        &self.fields
    }

    /// Every value of the fields named `name` (ignoring ASCII case), in order.
    pub fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.fields
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// How many fields are named `name`.
    pub fn count(&self, name: &str) -> usize {
        self.values(name).count()
    }

    /// The Message-ID, without its angle brackets; `None` when it is missing or empty.
    pub fn message_id(&self) -> Option<&str> {
        let value = self.values("message-id").next()?.trim();
        let id = value.trim_start_matches('<').trim_end_matches('>').trim();
        (!id.is_empty()).then_some(id)
    }

    /// Where the body starts in the message.
    pub fn body_start(&self) -> usize {
        self.body_start
    }

    /// Records fields inserted into the message before field number `at` (`bytes` long in
    /// all), so the view stays that of the message without reading it again.
    pub fn inserted(&mut self, at: usize, added: Vec<(String, String)>, bytes: usize) {
        let at = at.min(self.fields.len());
        self.fields.splice(at..at, added);
        self.body_start += bytes;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (name, value) of every field with a name, for short assertions.
    fn named(message: &[u8]) -> Vec<(String, String)> {
        (header_section(message).fields.iter())
            .filter_map(|f| Some((String::from_utf8_lossy(f.name()?).into_owned(), f.value())))
            .collect()
    }

    /// The fields cover the section from offset 0 without gaps, so copying them all and the rest
    /// gives back the message.
    fn assert_covers(message: &[u8]) {
        let section = header_section(message);
        let mut pos = 0;
        for f in &section.fields {
            assert_eq!(f.start, pos, "{:?}", String::from_utf8_lossy(message));
            assert_eq!(&message[f.start..f.end()], f.raw);
            pos = f.end();
        }
        assert_eq!(pos, section.end);
        assert_eq!(section.end + section.separator.len(), section.body_start);
    }

    #[test]
    fn folded_fields_keep_their_bytes_and_unfold_their_value() {
        let msg = b"Subject: one\r\n two\r\n\tthree \r\nX-A:1\r\n\r\nbody\r\n";
        let section = header_section(msg);
        assert_eq!(section.fields.len(), 2);
        let subject = section.fields[0];
        assert_eq!(subject.raw, b"Subject: one\r\n two\r\n\tthree \r\n");
        assert_eq!(subject.first_line(), b"Subject: one\r\n");
        assert_eq!(subject.continuation(), b" two\r\n\tthree \r\n");
        assert_eq!(subject.raw_value(), b" one\r\n two\r\n\tthree \r\n");
        assert_eq!(subject.value(), "one two three");
        assert_eq!(section.fields[1].value(), "1");
        assert_eq!(
            (section.separator, &msg[section.body_start..]),
            (&b"\r\n"[..], &b"body\r\n"[..])
        );
        assert_covers(msg);
    }

    #[test]
    fn bare_lf_lines_and_a_bare_lf_empty_line() {
        let msg = b"A: 1\n b\nC: 2\r\n\nbody";
        assert_eq!(named(msg), [("A".into(), "1 b".into()), ("C".into(), "2".into())]);
        let section = header_section(msg);
        assert_eq!(section.separator, b"\n");
        assert_eq!(&msg[section.body_start..], b"body");
        assert_covers(msg);
    }

    #[test]
    fn no_body_and_no_empty_line() {
        // The empty line and nothing after it.
        let section = header_section(b"A: 1\r\n\r\n");
        assert_eq!((section.end, section.body_start, section.fields.len()), (6, 8, 1));
        // The section runs to the end of the message; the last line may lack its line ending.
        for msg in [&b"A: 1\r\nB: 2\r\n"[..], b"A: 1\r\nB: 2"] {
            let section = header_section(msg);
            assert_eq!(section.separator, b"");
            assert_eq!((section.end, section.body_start), (msg.len(), msg.len()));
            assert_eq!(named(msg), [("A".into(), "1".into()), ("B".into(), "2".into())]);
            assert_covers(msg);
        }
        // An empty message, and one that starts with its empty line.
        assert_eq!(header_section(b"").fields, []);
        let section = header_section(b"\r\nbody");
        assert_eq!((section.fields.len(), section.end, section.body_start), (0, 0, 2));
    }

    #[test]
    fn a_line_without_a_colon_is_a_field_without_a_name() {
        let msg = b"A: 1\r\nnot a field\r\n more\r\nB: 2\r\n\r\n";
        let section = header_section(msg);
        assert_eq!(section.fields.len(), 3);
        assert_eq!(section.fields[1].name(), None);
        assert_eq!(section.fields[1].raw, b"not a field\r\n more\r\n");
        assert!(!section.fields[1].is("not a field"));
        assert_covers(msg);
        // Routing leaves the line out; its continuation lines continue the field before it.
        let headers = Headers::parse(msg);
        assert_eq!(
            headers.fields(),
            [("A".into(), "1 more".into()), ("B".into(), "2".into())]
        );
    }

    #[test]
    fn continuation_lines_before_any_field_belong_to_none() {
        let msg = b" orphan: x\r\n\tmore\r\nA: 1\r\n\r\n";
        let section = header_section(msg);
        assert!(section.fields[0].is_orphan());
        assert_eq!(section.fields[0].name(), None);
        assert_eq!(section.fields[0].raw, b" orphan: x\r\n\tmore\r\n");
        assert_eq!(Headers::parse(msg).fields(), [("A".into(), "1".into())]);
        assert_covers(msg);
    }

    #[test]
    fn names_are_compared_as_written() {
        let section = header_section(b"SUBJECT: a\r\nSubject : b\r\n\r\n");
        assert!(section.fields[0].is("subject"));
        assert!(
            !section.fields[1].is("subject"),
            "a space before the colon is part of the name"
        );
        assert_eq!(
            Headers::parse(b"Subject : b\r\n").fields(),
            [("Subject".into(), "b".into())]
        );
    }

    #[test]
    fn eight_bit_bytes_are_kept_and_read_lossily() {
        let msg = b"Subject: caf\xc3\xa9 \xff\r\n \xfe\r\n\r\n\xff body";
        let section = header_section(msg);
        assert_eq!(section.fields[0].raw, b"Subject: caf\xc3\xa9 \xff\r\n \xfe\r\n");
        assert_eq!(section.fields[0].value(), "caf\u{e9} \u{fffd} \u{fffd}");
        assert_eq!(&msg[section.body_start..], b"\xff body");
        assert_covers(msg);
    }

    #[test]
    fn a_line_of_only_cr_is_not_the_empty_line() {
        let msg = b"A: 1\r\n\r\r\nB: 2\r\n\r\nbody";
        let section = header_section(msg);
        assert_eq!(section.fields.len(), 3);
        assert_eq!(&msg[section.body_start..], b"body");
    }

    #[test]
    fn header_changes_keep_untouched_bytes_and_odd_lines() {
        let msg = b" orphan\r\nReceived: x\r\nno colon\r\nX-Drop: 1\r\n\t2\r\nSubject: \xff\r\n\nX-Drop: body\n";
        let out = apply_header_changes(msg, &[("X-New".into(), "v".into())], &["x-drop".into()]);
        assert_eq!(
            out,
            b" orphan\r\nReceived: x\r\nX-New: v\r\nno colon\r\nSubject: \xff\r\n\nX-Drop: body\n"
        );
    }

    #[test]
    fn header_changes_without_an_empty_line() {
        // A second field gets the additions before it; a lone field at the end gets none.
        let out = apply_header_changes(b"Received: x\r\nA: 1", &[("B".into(), "2".into())], &["a".into()]);
        assert_eq!(out, b"Received: x\r\nB: 2\r\n");
        let out = apply_header_changes(b"Received: x\r\n", &[("B".into(), "2".into())], &[]);
        assert_eq!(out, b"Received: x\r\n");
    }

    #[test]
    fn header_changes_keep_the_trace_header_first() {
        let msg = b"Received: from x\r\n\tby y\r\nX-Internal: a\r\n b\r\nSubject: s\r\n\r\nX-Internal: body\r\n";
        let out = apply_header_changes(msg, &[("X-Routed".into(), "yes".into())], &["x-internal".into()]);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "Received: from x\r\n\tby y\r\nX-Routed: yes\r\nSubject: s\r\n\r\nX-Internal: body\r\n"
        );
    }

    #[test]
    fn header_added_when_the_trace_header_is_the_only_field() {
        let out = apply_header_changes(b"Received: from x\r\n\r\nbody\r\n", &[("A".into(), "1".into())], &[]);
        assert_eq!(out, b"Received: from x\r\nA: 1\r\n\r\nbody\r\n");
    }

    #[test]
    fn the_parsed_view_finds_values_counts_and_the_message_id() {
        let msg = b"Received: a\r\nreceived: b\r\nMessage-ID:\r\n  <x@y> \r\n\r\nbody";
        let headers = Headers::parse(msg);
        assert_eq!(headers.count("RECEIVED"), 2);
        assert_eq!(headers.values("Received").collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(headers.message_id(), Some("x@y"));
        assert_eq!(&msg[headers.body_start()..], b"body");
        assert_eq!(Headers::parse(b"Message-ID: <>\r\n\r\n").message_id(), None);
        let in_body = Headers::parse(b"Subject: x\r\n\r\nMessage-ID: <in@body>\r\n");
        assert_eq!(in_body.message_id(), None);
    }

    #[test]
    fn inserted_fields_keep_the_view_that_of_the_message() {
        let before = b"Received: a\r\nSubject: s\r\n\r\nbody".to_vec();
        let added = b"Message-ID: <m@h>\r\n";
        let mut after = before.clone();
        after.splice(13..13, added.iter().copied());
        let mut headers = Headers::parse(&before);
        headers.inserted(1, vec![("Message-ID".into(), "<m@h>".into())], added.len());
        assert_eq!(headers, Headers::parse(&after));
    }
}
