//! A cheap scan of a message's MIME structure, before any parsing: how deep multiparts and
//! `message/rfc822` parts nest and how many parts there are. One pass over the lines, memory
//! bounded by the depth limit; it stops at the first limit crossed, so a MIME bomb (parts nested
//! a thousand deep, a hundred thousand parts) costs no more than the part of it that was read.

/// Where the scan stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Structure {
    /// Within the limits: the deepest nesting seen and the number of parts.
    Within {
        depth: usize,
        parts: usize,
    },
    TooDeep,
    TooManyParts,
}

/// A level of nesting: a multipart (with its boundary) or an encapsulated message.
enum Frame {
    Multipart(Vec<u8>),
    Message,
}

/// Content-Type values longer than this are cut (a boundary is at most 70 characters).
const MAX_CONTENT_TYPE: usize = 4096;

/// Scans `message` and stops as soon as nesting passes `max_depth` or parts pass `max_parts`.
pub fn scan(message: &[u8], max_depth: usize, max_parts: usize) -> Structure {
    let mut s = Scanner {
        stack: Vec::new(),
        in_headers: true,
        content_type: None,
        in_content_type: false,
        deepest: 0,
        parts: 1,
    };
    for line in message.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        s.line(line);
        if s.stack.len() > max_depth {
            return Structure::TooDeep;
        }
        if s.parts > max_parts {
            return Structure::TooManyParts;
        }
    }
    Structure::Within {
        depth: s.deepest,
        parts: s.parts,
    }
}

struct Scanner {
    stack: Vec<Frame>,
    in_headers: bool,
    /// The Content-Type value of the header section being read (`Some` once seen).
    content_type: Option<Vec<u8>>,
    /// The last field line read was the Content-Type (continuation lines belong to it).
    in_content_type: bool,
    deepest: usize,
    parts: usize,
}

impl Scanner {
    fn line(&mut self, line: &[u8]) {
        if line.starts_with(b"--") && self.boundary(&line[2..]) {
            return;
        }
        if self.in_headers {
            self.header_line(line);
        }
    }

    /// Handles a delimiter or close-delimiter line of any open multipart; false if it is none.
    fn boundary(&mut self, rest: &[u8]) -> bool {
        for i in (0..self.stack.len()).rev() {
            let Frame::Multipart(b) = &self.stack[i] else { continue };
            let Some(after) = rest.strip_prefix(b.as_slice()) else {
                continue;
            };
            let after = after.trim_ascii_end();
            if after.is_empty() {
                self.stack.truncate(i + 1);
                self.parts += 1;
                self.start_headers();
                return true;
            }
            if after == b"--" {
                self.stack.truncate(i);
                self.in_headers = false;
                return true;
            }
        }
        false
    }

    fn start_headers(&mut self) {
        self.in_headers = true;
        self.content_type = None;
        self.in_content_type = false;
    }

    fn header_line(&mut self, line: &[u8]) {
        if line.is_empty() {
            self.end_headers();
        } else if line[0] == b' ' || line[0] == b'\t' {
            if let (true, Some(ct)) = (self.in_content_type, &mut self.content_type) {
                let room = MAX_CONTENT_TYPE.saturating_sub(ct.len());
                ct.extend_from_slice(&line[..line.len().min(room)]);
            }
        } else {
            self.in_content_type = line.len() > 13 && line[..13].eq_ignore_ascii_case(b"content-type:");
            if self.in_content_type {
                let value = &line[13..];
                self.content_type = Some(value[..value.len().min(MAX_CONTENT_TYPE)].to_vec());
            }
        }
    }

    /// The empty line after a header section: the body begins, maybe a nested level.
    fn end_headers(&mut self) {
        self.in_headers = false;
        let Some(ct) = self.content_type.take() else { return };
        let lower = ct.to_ascii_lowercase();
        let media = lower.trim_ascii_start();
        if media.starts_with(b"multipart/") {
            if let Some(b) = boundary_parameter(&ct) {
                self.push(Frame::Multipart(b));
            }
        } else if media.starts_with(b"message/rfc822") || media.starts_with(b"message/global") {
            self.push(Frame::Message);
            self.start_headers();
        }
    }

    fn push(&mut self, frame: Frame) {
        self.stack.push(frame);
        self.deepest = self.deepest.max(self.stack.len());
    }
}

/// The `boundary=` parameter of a Content-Type value, quoted or not.
fn boundary_parameter(ct: &[u8]) -> Option<Vec<u8>> {
    let lower = ct.to_ascii_lowercase();
    let at = lower.windows(9).position(|w| w == b"boundary=")? + 9;
    let value = &ct[at..];
    let b = match value.strip_prefix(b"\"") {
        Some(q) => &q[..q.iter().position(|&c| c == b'"').unwrap_or(q.len())],
        None => {
            let end = value
                .iter()
                .position(|&c| c == b';' || c.is_ascii_whitespace())
                .unwrap_or(value.len());
            &value[..end]
        }
    };
    (!b.is_empty()).then(|| b.to_vec())
}
