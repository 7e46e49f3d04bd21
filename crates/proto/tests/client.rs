//! parse_reply and Capabilities::from_ehlo.

use smtpgate_proto::client::ReplyError;
use smtpgate_proto::{Capabilities, ParsedReply, parse_reply};

fn parsed(buf: &[u8]) -> (ParsedReply, usize) {
    parse_reply(buf).expect("well formed").expect("complete")
}

#[test]
fn single_line() {
    let (r, used) = parsed(b"250 2.1.0 sender OK\r\nrest");
    assert_eq!(used, 21);
    assert_eq!(r.code, 250);
    assert_eq!(r.status.as_deref(), Some("2.1.0"));
    assert_eq!(r.lines, ["sender OK"]);
    assert_eq!(r.to_string_line(), "250 2.1.0 sender OK");
    assert!(r.is_positive() && !r.is_transient() && !r.is_permanent());
}

#[test]
fn without_status_or_text() {
    let (r, used) = parsed(b"220 mx.example ESMTP\n");
    assert_eq!((r.code, r.status.as_deref(), used), (220, None, 21));
    assert_eq!(r.text(), "mx.example ESMTP");
    let (r, _) = parsed(b"354\r\n");
    assert_eq!(r.lines, [""]);
    assert_eq!(r.to_string_line(), "354 ");
    // A status whose class does not match the code is text.
    let (r, _) = parsed(b"451 5.1.1 odd\r\n");
    assert_eq!(r.status, None);
    assert_eq!(r.text(), "5.1.1 odd");
    assert!(r.is_transient());
}

#[test]
fn multi_line() {
    let buf = b"451-4.3.0 first\r\n451-4.3.0 second\r\n451 4.3.0 third\r\nNEXT";
    let (r, used) = parsed(buf);
    assert_eq!(used, buf.len() - 4);
    assert_eq!(r.status.as_deref(), Some("4.3.0"));
    assert_eq!(r.lines, ["first", "second", "third"]);
    assert_eq!(r.text(), "first second third");
    assert_eq!(r.to_string_line(), "451 4.3.0 first second third");
}

#[test]
fn incomplete() {
    for buf in [&b""[..], b"25", b"250", b"250 ok", b"250-a\r\n", b"250-a\r\n250 b"] {
        assert_eq!(parse_reply(buf), Ok(None), "{buf:?}");
    }
}

#[test]
fn malformed() {
    let long = [b"250 ".as_slice(), &[b'x'; 5000]].concat();
    let long_done = [long.as_slice(), b"\r\n"].concat();
    let bad: &[&[u8]] = &[
        b"abc\r\n",
        b"25\r\n",
        b"2500 x\r\n",
        b"250x\r\n",
        b"150 x\r\n",
        b"260 x\r\n",
        b"650 x\r\n",
        b"250-a\r\n251 b\r\n",
        &long,
        &long_done,
    ];
    for buf in bad {
        assert_eq!(
            parse_reply(buf),
            Err(ReplyError::Malformed),
            "{:?}",
            &buf[..buf.len().min(20)]
        );
    }
}

#[test]
fn ehlo_capabilities() {
    let buf = b"250-mx.example greets us\r\n250-PIPELINING\r\n250-SIZE 35882577\r\n250-STARTTLS\r\n\
250-8BITMIME\r\n250-SMTPUTF8\r\n250-DSN\r\n250-CHUNKING\r\n250-ENHANCEDSTATUSCODES\r\n\
250-AUTH PLAIN login\r\n250-AUTH=LOGIN XOAUTH2\r\n250 X-UNKNOWN\r\n";
    let (r, _) = parsed(buf);
    let caps = Capabilities::from_ehlo(&r);
    assert_eq!(
        caps,
        Capabilities {
            pipelining: true,
            size: Some(35882577),
            starttls: true,
            eight_bit_mime: true,
            smtputf8: true,
            dsn: true,
            chunking: true,
            enhanced_status_codes: true,
            auth: vec!["PLAIN".into(), "LOGIN".into(), "XOAUTH2".into()],
        }
    );
}

#[test]
fn ehlo_edge_cases() {
    let (r, _) = parsed(b"250-mx\r\n250 SIZE\r\n");
    assert_eq!(Capabilities::from_ehlo(&r).size, Some(0));
    let (r, _) = parsed(b"250 mx.example\r\n");
    assert_eq!(Capabilities::from_ehlo(&r), Capabilities::default());
    let (r, _) = parsed(b"502-no\r\n502 PIPELINING\r\n");
    assert_eq!(Capabilities::from_ehlo(&r), Capabilities::default());
    let (r, _) = parsed(b"250-mx\r\n250-pipelining\r\n250 starttls\r\n");
    let caps = Capabilities::from_ehlo(&r);
    assert!(caps.pipelining && caps.starttls);
}
