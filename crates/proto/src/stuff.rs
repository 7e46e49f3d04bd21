//! Dot-stuffing a body for the DATA phase when smtpgate is the client (RFC 5321 4.5.2).
//!
//! The output is safe for *any* receiver, lax ones included: every CR and LF in it is part of a
//! CRLF pair, and every line that starts with `.` has been given another `.`, so no sequence a
//! lax receiver might take for end-of-data (`\n.\n`, `\r.\r`, `\n.\r\n`, ...) appears anywhere
//! but in the final `.<CR><LF>`. NUL octets are dropped (before the dot check, so a line that
//! starts with NUL and `.` is stuffed too): a receiver that drops them itself would otherwise see
//! a dot at the start of a line that was never stuffed.

/// Writes `body` for the DATA phase: every bare CR or LF becomes CRLF, a line starting with
/// `.` gets another `.`, NULs are dropped, a missing final CRLF is added, and `.<CR><LF>` ends it.
/// An empty body is sent as just `.<CR><LF>`.
pub fn dot_stuff(body: &[u8], out: &mut Vec<u8>) {
    out.reserve(body.len() + body.len() / 64 + 5);
    let mut rest = body;
    let mut line_start = true;
    while !rest.is_empty() {
        if line_start {
            let nuls = rest.iter().take_while(|&&b| b == 0).count();
            rest = &rest[nuls..];
            if rest.first() == Some(&b'.') {
                out.push(b'.');
            }
        }
        let n = rest
            .iter()
            .position(|&b| b == b'\r' || b == b'\n')
            .unwrap_or(rest.len());
        out.extend(rest[..n].iter().filter(|&&b| b != 0));
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
