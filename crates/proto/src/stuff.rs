//! Dot-stuffing a body for the DATA phase when smtpgate is the client (RFC 5321 4.5.2).
//!
//! The output is safe for *any* receiver, lax ones included: every CR and LF in it is part of a
//! CRLF pair, and every line that starts with `.` has been given another `.`, so no sequence a
//! lax receiver might take for end-of-data (`\n.\n`, `\r.\r`, `\n.\r\n`, ...) appears anywhere
//! but in the final `.<CR><LF>`. NUL octets are dropped (before the dot check, so a line that
//! starts with NUL and `.` is stuffed too): a receiver that drops them itself would otherwise see
//! a dot at the start of a line that was never stuffed.
//!
//! [`DotStuffer`] does the same on a body that comes in pieces (read from disk in chunks): the
//! output does not depend on where the pieces are cut.

/// Writes `body` for the DATA phase: every bare CR or LF becomes CRLF, a line starting with
/// `.` gets another `.`, NULs are dropped, a missing final CRLF is added, and `.<CR><LF>` ends it.
/// An empty body is sent as just `.<CR><LF>`.
pub fn dot_stuff(body: &[u8], out: &mut Vec<u8>) {
    out.reserve(body.len() + body.len() / 64 + 5);
    let mut stuffer = DotStuffer::default();
    stuffer.push(body, out);
    stuffer.finish(out);
}

/// Dot-stuffing of a body given in pieces: [`push`](Self::push) each piece, then
/// [`finish`](Self::finish). The output is exactly what [`dot_stuff`] makes of the whole body.
#[derive(Debug, Clone, Copy)]
pub struct DotStuffer {
    /// No octet but NULs since the last line ending: a `.` now starts the line.
    line_start: bool,
    /// Some octet (NULs included) since the last line ending: the body ends inside a line.
    mid_line: bool,
    /// The last piece ended with a CR whose CRLF is written: an LF first in the next is part of it.
    pending_cr: bool,
}

impl Default for DotStuffer {
    fn default() -> Self {
        DotStuffer {
            line_start: true,
            mid_line: false,
            pending_cr: false,
        }
    }
}

impl DotStuffer {
    /// Appends the stuffed form of the next piece of the body to `out`.
    pub fn push(&mut self, piece: &[u8], out: &mut Vec<u8>) {
        let mut rest = piece;
        if rest.is_empty() {
            return;
        }
        if std::mem::take(&mut self.pending_cr) && rest[0] == b'\n' {
            rest = &rest[1..];
        }
        while !rest.is_empty() {
            if self.line_start {
                let nuls = rest.iter().take_while(|&&b| b == 0).count();
                if nuls > 0 {
                    self.mid_line = true;
                    rest = &rest[nuls..];
                    if rest.is_empty() {
                        break;
                    }
                }
                if rest[0] == b'.' {
                    out.push(b'.');
                }
            }
            let n = rest
                .iter()
                .position(|&b| b == b'\r' || b == b'\n')
                .unwrap_or(rest.len());
            if n > 0 {
                out.extend(rest[..n].iter().filter(|&&b| b != 0));
                self.line_start = false;
                self.mid_line = true;
            }
            rest = &rest[n..];
            if let Some(&end) = rest.first() {
                out.extend_from_slice(b"\r\n");
                self.line_start = true;
                self.mid_line = false;
                rest = &rest[1..];
                if end == b'\r' {
                    match rest.first() {
                        Some(b'\n') => rest = &rest[1..],
                        Some(_) => {}
                        None => self.pending_cr = true,
                    }
                }
            }
        }
    }

    /// Ends the body: a CRLF if it ended inside a line, then `.<CR><LF>`.
    pub fn finish(self, out: &mut Vec<u8>) {
        if self.mid_line {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stuffed(body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        dot_stuff(body, &mut out);
        out
    }

    #[test]
    fn known_forms() {
        assert_eq!(stuffed(b""), b".\r\n");
        assert_eq!(stuffed(b"a"), b"a\r\n.\r\n");
        assert_eq!(stuffed(b".a\r\n..\r\n"), b"..a\r\n...\r\n.\r\n");
        assert_eq!(stuffed(b"a\rb\nc\r\n"), b"a\r\nb\r\nc\r\n.\r\n");
        assert_eq!(stuffed(b"\0.x\r\n"), b"..x\r\n.\r\n");
        assert_eq!(stuffed(b"\0\0"), b"\r\n.\r\n");
        assert_eq!(stuffed(b"\r\n\0"), b"\r\n\r\n.\r\n");
        assert_eq!(stuffed(b"\r\r\n."), b"\r\n\r\n..\r\n.\r\n");
    }

    /// Every body over a small alphabet up to 6 octets, cut into pieces at every pair of places:
    /// the pieces stuff to exactly what the whole body does.
    #[test]
    fn pieces_stuff_like_the_whole() {
        const ALPHABET: &[u8] = b".\r\n\0a";
        let mut bodies = vec![Vec::new()];
        for len in 1..=6 {
            let mut next = Vec::new();
            for b in bodies.iter().filter(|b| b.len() == len - 1) {
                for &c in ALPHABET {
                    let mut grown = b.clone();
                    grown.push(c);
                    next.push(grown);
                }
            }
            bodies.extend(next);
        }
        let mut checked = 0;
        for body in &bodies {
            let whole = stuffed(body);
            for i in 0..=body.len() {
                for j in i..=body.len() {
                    let mut s = DotStuffer::default();
                    let mut out = Vec::new();
                    s.push(&body[..i], &mut out);
                    s.push(&body[i..j], &mut out);
                    s.push(&body[j..], &mut out);
                    s.finish(&mut out);
                    assert_eq!(out, whole, "body {body:?} cut at {i} and {j}");
                    checked += 1;
                }
            }
        }
        assert!(checked > 100_000, "{checked}");
    }
}
