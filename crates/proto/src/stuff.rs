//! Dot-stuffing a body for the DATA phase when smtpgate is the client (RFC 5321 4.5.2).
//!
//! The output is safe for *any* receiver, lax ones included: every CR and LF in it is part of a
//! CRLF pair, and every line that starts with `.` has been given another `.`, so no sequence a
//! lax receiver might take for end-of-data (`\n.\n`, `\r.\r`, `\n.\r\n`, ...) appears anywhere
//! but in the final `.<CR><LF>`.

/// Writes `body` for the DATA phase: every bare CR or LF becomes CRLF, a line starting with
/// `.` gets another `.`, a missing final CRLF is added, and `.<CR><LF>` ends it.
/// An empty body is sent as just `.<CR><LF>`.
pub fn dot_stuff(body: &[u8], out: &mut Vec<u8>) {
    out.reserve(body.len() + body.len() / 64 + 5);
    let mut rest = body;
    let mut line_start = true;
    while !rest.is_empty() {
        if line_start && rest[0] == b'.' {
            out.push(b'.');
        }
        let n = rest
            .iter()
            .position(|&b| b == b'\r' || b == b'\n')
            .unwrap_or(rest.len());
        out.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        line_start = !rest.is_empty();
        if line_start {
            rest = skip_line_end(rest);
            out.extend_from_slice(b"\r\n");
        }
    }
    if !body.is_empty() && !line_start {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
}

/// `rest` starts with CR or LF: skips one line ending (CRLF, or a bare CR or LF).
fn skip_line_end(rest: &[u8]) -> &[u8] {
    if rest.starts_with(b"\r\n") {
        &rest[2..]
    } else {
        &rest[1..]
    }
}
