//! LineFramer: CRLF and bare-LF lines, the length limit, discarding across calls.

use smtpgate_proto::{Framed, LineFramer};

/// Drives the framer like a session: drops consumed bytes and calls again while it makes progress.
/// Returns the lines (or "TOO LONG") produced from the chunks, in order.
fn frame(max: usize, chunks: &[&[u8]]) -> Vec<String> {
    let mut framer = LineFramer::new(max);
    let mut buf = Vec::new();
    let mut seen = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            match framer.next(&buf) {
                Framed::Line { len, consumed } => {
                    seen.push(String::from_utf8_lossy(&buf[..len]).into_owned());
                    buf.drain(..consumed);
                }
                Framed::TooLong { consumed } => {
                    seen.push("TOO LONG".into());
                    buf.drain(..consumed);
                }
                Framed::NeedMore { consumed: 0 } => break,
                Framed::NeedMore { consumed } => {
                    buf.drain(..consumed);
                }
            }
        }
    }
    seen
}

#[test]
fn crlf_and_bare_lf_lines() {
    let mut f = LineFramer::new(512);
    assert_eq!(f.next(b"NOOP\r\nQUIT"), Framed::Line { len: 4, consumed: 6 });
    assert_eq!(f.next(b"NOOP\nQUIT"), Framed::Line { len: 4, consumed: 5 });
    assert_eq!(f.next(b"\r\n"), Framed::Line { len: 0, consumed: 2 });
    assert_eq!(f.next(b"QUIT"), Framed::NeedMore { consumed: 0 });
    assert_eq!(f.next(b"QUIT\r"), Framed::NeedMore { consumed: 0 });
    assert_eq!(f.next(b""), Framed::NeedMore { consumed: 0 });
    assert_eq!(f.next(b"a\rb\r\n"), Framed::Line { len: 3, consumed: 5 });
}

#[test]
fn limit_includes_the_crlf() {
    let mut f = LineFramer::new(8);
    assert_eq!(f.next(b"123456\r\n"), Framed::Line { len: 6, consumed: 8 });
    assert_eq!(f.next(b"1234567\n"), Framed::Line { len: 7, consumed: 8 });
    assert_eq!(f.next(b"1234567\r\n"), Framed::TooLong { consumed: 9 });
    assert!(!f.is_discarding(), "a whole long line needs no discarding");
    assert_eq!(f.next(b"1234567"), Framed::NeedMore { consumed: 0 });
    assert_eq!(f.next(b"1234567\r"), Framed::TooLong { consumed: 8 });
    assert!(f.is_discarding());
}

#[test]
fn too_long_then_a_good_line() {
    let long = vec![b'x'; 600];
    let mut input = long.clone();
    input.extend_from_slice(b"\r\nNOOP\r\n");
    assert_eq!(frame(512, &[&input]), ["TOO LONG", "NOOP"]);
}

#[test]
fn discarding_across_calls() {
    let mut f = LineFramer::new(10);
    assert_eq!(f.next(b"0123456789ab"), Framed::TooLong { consumed: 12 });
    assert_eq!(f.next(b"more"), Framed::NeedMore { consumed: 4 });
    assert_eq!(f.next(b"tail\r\nQUIT\r\n"), Framed::NeedMore { consumed: 6 });
    assert!(!f.is_discarding());
    assert_eq!(f.next(b"QUIT\r\n"), Framed::Line { len: 4, consumed: 6 });
}

#[test]
fn one_reply_per_long_line_however_it_arrives() {
    let long = [b"y".repeat(700).as_slice(), b"\r\nRSET\r\nQUIT\r\n"].concat();
    let want = ["TOO LONG", "RSET", "QUIT"];
    assert_eq!(frame(512, &[&long]), want);
    for cut in [1, 300, 511, 512, 513, 700, 701, 702, 703, 708] {
        let (a, b) = long.split_at(cut);
        assert_eq!(frame(512, &[a, b]), want, "cut at {cut}");
    }
    let bytes: Vec<&[u8]> = long.chunks(1).collect();
    assert_eq!(frame(512, &bytes), want);
}
