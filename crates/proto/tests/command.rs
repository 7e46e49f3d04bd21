//! parse_command: a table of good and bad lines for every verb and parameter.

use smtpgate_proto::command::{Body, Notify, Ret};
use smtpgate_proto::{
    Command, CommandError, Domain, ForwardPath, MailParams, Mailbox, RcptParams, ReversePath, parse_command,
};

fn mb(local: &str, domain: &str) -> Mailbox {
    Mailbox {
        local: local.into(),
        domain: Domain::Name(domain.into()),
    }
}

fn from(local: &str, domain: &str) -> ReversePath {
    ReversePath::Path(mb(local, domain))
}

fn to(local: &str, domain: &str) -> ForwardPath {
    ForwardPath::Path(mb(local, domain))
}

fn mail(from: ReversePath, params: MailParams) -> Command {
    Command::Mail { from, params }
}

fn rcpt(to: ForwardPath, params: RcptParams) -> Command {
    Command::Rcpt { to, params }
}

fn parse(line: &str) -> Result<Command, CommandError> {
    parse_command(line.as_bytes())
}

#[test]
fn simple_verbs() {
    let cases: Vec<(&str, Command)> = vec![
        ("EHLO client.example", Command::Ehlo("client.example".into())),
        ("ehlo [192.0.2.1]", Command::Ehlo("[192.0.2.1]".into())),
        ("HELO client.example", Command::Helo("client.example".into())),
        ("HeLo x ", Command::Helo("x".into())),
        ("DATA", Command::Data),
        ("data", Command::Data),
        ("DATA  \t", Command::Data),
        ("RSET", Command::Rset),
        ("NOOP", Command::Noop),
        ("NOOP anything at all", Command::Noop),
        ("QUIT", Command::Quit),
        ("STARTTLS", Command::StartTls),
        ("VRFY alice", Command::Vrfy("alice".into())),
        ("EXPN staff list", Command::Expn("staff list".into())),
        ("HELP", Command::Help(None)),
        ("HELP MAIL", Command::Help(Some("MAIL".into()))),
        (
            "BDAT 1000",
            Command::Bdat {
                size: 1000,
                last: false,
            },
        ),
        ("BDAT 1000 LAST", Command::Bdat { size: 1000, last: true }),
        ("bdat 0 last", Command::Bdat { size: 0, last: true }),
        (
            "AUTH PLAIN",
            Command::Auth {
                mechanism: "PLAIN".into(),
                initial: None,
            },
        ),
        (
            "auth plain dGVzdA==",
            Command::Auth {
                mechanism: "PLAIN".into(),
                initial: Some("dGVzdA==".into()),
            },
        ),
        (
            "AUTH PLAIN =",
            Command::Auth {
                mechanism: "PLAIN".into(),
                initial: Some("=".into()),
            },
        ),
        (
            "AUTH CRAM-MD5",
            Command::Auth {
                mechanism: "CRAM-MD5".into(),
                initial: None,
            },
        ),
    ];
    for (line, want) in cases {
        assert_eq!(parse(line), Ok(want), "{line:?}");
    }
}

#[test]
fn simple_verbs_bad() {
    let cases: &[(&str, CommandError)] = &[
        ("", CommandError::Unrecognized),
        ("FOO", CommandError::Unrecognized),
        ("QUITX", CommandError::Unrecognized),
        ("MAILFROM:<a@b.c>", CommandError::Unrecognized),
        ("\u{e9}HLO x", CommandError::Unrecognized),
        ("EHLO", CommandError::Syntax("EHLO needs a domain")),
        ("HELO", CommandError::Syntax("HELO needs a domain")),
        ("EHLO a b", CommandError::Syntax("one argument expected")),
        (
            "EHLO b\u{fc}cher.example",
            CommandError::Syntax("non-ASCII or control character"),
        ),
        ("EHLO a\rb", CommandError::Syntax("non-ASCII or control character")),
        ("DATA x", CommandError::Syntax("no arguments allowed")),
        ("RSET x", CommandError::Syntax("no arguments allowed")),
        ("QUIT now", CommandError::Syntax("no arguments allowed")),
        ("STARTTLS x", CommandError::Syntax("no arguments allowed")),
        ("VRFY", CommandError::Syntax("VRFY needs an argument")),
        ("EXPN", CommandError::Syntax("EXPN needs an argument")),
        ("NOOP \u{e9}", CommandError::Syntax("non-ASCII or control character")),
        ("BDAT", CommandError::Syntax("BDAT needs a size")),
        ("BDAT x", CommandError::Syntax("bad BDAT size")),
        ("BDAT -1", CommandError::Syntax("bad BDAT size")),
        ("BDAT 99999999999999999999999", CommandError::Syntax("bad BDAT size")),
        ("BDAT 10 FIRST", CommandError::Syntax("BDAT takes a size and LAST")),
        ("BDAT 10 LAST x", CommandError::Syntax("BDAT takes a size and LAST")),
        ("AUTH", CommandError::Syntax("AUTH needs a mechanism")),
        ("AUTH PLAIN a b", CommandError::Syntax("too many AUTH arguments")),
        ("AUTH PL@IN", CommandError::Syntax("bad SASL mechanism name")),
        (
            "AUTH PLAIN not*base64",
            CommandError::Syntax("initial response is not base64"),
        ),
        (
            "AUTH PLAIN abc===",
            CommandError::Syntax("initial response is not base64"),
        ),
    ];
    for (line, want) in cases {
        assert_eq!(parse(line).as_ref(), Err(want), "{line:?}");
    }
}

#[test]
fn mail_from() {
    let p = MailParams::default;
    let cases: Vec<(&str, Command)> = vec![
        ("MAIL FROM:<a@b.example>", mail(from("a", "b.example"), p())),
        ("mail from:<a@b.example>", mail(from("a", "b.example"), p())),
        ("MAIL FROM: <a@b.example>", mail(from("a", "b.example"), p())),
        ("MAIL FROM:<>", mail(ReversePath::Null, p())),
        ("MAIL FROM:<> ", mail(ReversePath::Null, p())),
        (
            "MAIL FROM:<a@b.example> SIZE=10 BODY=8BITMIME SMTPUTF8",
            mail(
                from("a", "b.example"),
                MailParams {
                    size: Some(10),
                    body: Some(Body::EightBitMime),
                    smtputf8: true,
                    ..p()
                },
            ),
        ),
        (
            "MAIL FROM:<a@b.example>  size=0  body=7bit",
            mail(
                from("a", "b.example"),
                MailParams {
                    size: Some(0),
                    body: Some(Body::SevenBit),
                    ..p()
                },
            ),
        ),
        (
            "MAIL FROM:<a@b.example> BODY=BINARYMIME RET=HDRS ENVID=QQ+2B1",
            mail(
                from("a", "b.example"),
                MailParams {
                    body: Some(Body::BinaryMime),
                    ret: Some(Ret::Hdrs),
                    envid: Some("QQ+2B1".into()),
                    ..p()
                },
            ),
        ),
        (
            "MAIL FROM:<a@b.example> RET=full",
            mail(
                from("a", "b.example"),
                MailParams {
                    ret: Some(Ret::Full),
                    ..p()
                },
            ),
        ),
        (
            "MAIL FROM:<a@b.example> AUTH=<>",
            mail(
                from("a", "b.example"),
                MailParams {
                    auth: Some("<>".into()),
                    ..p()
                },
            ),
        ),
        (
            "MAIL FROM:<a@b.example> AUTH=e+2Bx@c.example",
            mail(
                from("a", "b.example"),
                MailParams {
                    auth: Some("e+2Bx@c.example".into()),
                    ..p()
                },
            ),
        ),
        (
            "MAIL FROM:<\u{fc}ser@b\u{fc}cher.example> SMTPUTF8",
            mail(
                from("\u{fc}ser", "b\u{fc}cher.example"),
                MailParams { smtputf8: true, ..p() },
            ),
        ),
        (
            "MAIL FROM:<@x.example,@y.example:a@b.example>",
            mail(from("a", "b.example"), p()),
        ),
    ];
    for (line, want) in cases {
        assert_eq!(parse(line), Ok(want), "{line:?}");
    }
}

#[test]
fn mail_from_bad() {
    use CommandError::{BadAddress, Syntax, UnknownParameter};
    let cases: &[(&str, CommandError)] = &[
        ("MAIL", Syntax("expected MAIL FROM:<address>")),
        ("MAIL TO:<a@b.c>", Syntax("expected MAIL FROM:<address>")),
        ("MAIL FROM <a@b.c>", Syntax("expected MAIL FROM:<address>")),
        ("MAIL  FROM:<a@b.c>", Syntax("expected MAIL FROM:<address>")),
        ("MAIL FROM:", BadAddress("missing <")),
        ("MAIL FROM:a@b.c", BadAddress("missing <")),
        ("MAIL FROM:  <a@b.c>", BadAddress("missing <")),
        ("MAIL FROM:<a@b.c", BadAddress("missing >")),
        ("MAIL FROM:<a@b.c>x", BadAddress("garbage after address")),
        ("MAIL FROM:<a@b.c>>", BadAddress("garbage after address")),
        ("MAIL FROM:<a @b.c>", BadAddress("space inside address")),
        ("MAIL FROM:<postmaster>", BadAddress("missing @domain")),
        ("MAIL FROM:<a@b.c> SIZE", Syntax("parameter needs a value")),
        ("MAIL FROM:<a@b.c> SIZE=", Syntax("bad parameter value")),
        ("MAIL FROM:<a@b.c> SIZE=x", Syntax("bad SIZE value")),
        ("MAIL FROM:<a@b.c> SIZE=-1", Syntax("bad SIZE value")),
        ("MAIL FROM:<a@b.c> SIZE=99999999999999999999", Syntax("bad SIZE value")),
        ("MAIL FROM:<a@b.c> SIZE=1 SIZE=2", Syntax("duplicate parameter")),
        ("MAIL FROM:<a@b.c> SMTPUTF8 smtputf8", Syntax("duplicate parameter")),
        ("MAIL FROM:<a@b.c> SMTPUTF8=yes", Syntax("SMTPUTF8 takes no value")),
        ("MAIL FROM:<a@b.c> BODY=9BIT", Syntax("bad BODY value")),
        ("MAIL FROM:<a@b.c> RET=ALL", Syntax("bad RET value")),
        ("MAIL FROM:<a@b.c> ENVID=a b", UnknownParameter("b".into())),
        ("MAIL FROM:<a@b.c> ENVID=+ZZ", Syntax("bad ENVID value")),
        ("MAIL FROM:<a@b.c> AUTH=+Z", Syntax("bad AUTH value")),
        ("MAIL FROM:<a@b.c> A=b=c", Syntax("bad parameter value")),
        ("MAIL FROM:<a@b.c> -X=1", Syntax("bad parameter name")),
        ("MAIL FROM:<a@b.c> =1", Syntax("bad parameter name")),
        ("MAIL FROM:<a@b.c> XFOO=1", UnknownParameter("XFOO".into())),
        ("MAIL FROM:<a@b.c> NOTIFY=NEVER", UnknownParameter("NOTIFY".into())),
        (
            "MAIL FROM:<a@b.c> SIZE=1\u{e9}",
            Syntax("non-ASCII or control character"),
        ),
        ("MAIL FROM:<a@b.c> SIZE=1\x01", Syntax("non-ASCII or control character")),
    ];
    for (line, want) in cases {
        assert_eq!(parse(line).as_ref(), Err(want), "{line:?}");
    }
}

#[test]
fn rcpt_to() {
    let p = RcptParams::default;
    let notify = |success, failure, delay| Notify {
        never: false,
        success,
        failure,
        delay,
    };
    let cases: Vec<(&str, Command)> = vec![
        ("RCPT TO:<x@y.example>", rcpt(to("x", "y.example"), p())),
        ("rcpt to: <x@y.example>", rcpt(to("x", "y.example"), p())),
        ("RCPT TO:<postmaster>", rcpt(ForwardPath::Postmaster, p())),
        ("RCPT TO:<PostMaster>", rcpt(ForwardPath::Postmaster, p())),
        (
            "RCPT TO:<postmaster@y.example>",
            rcpt(to("postmaster", "y.example"), p()),
        ),
        (
            "RCPT TO:<x@y.example> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;x@y.example",
            rcpt(
                to("x", "y.example"),
                RcptParams {
                    notify: Some(notify(true, true, false)),
                    orcpt: Some("rfc822;x@y.example".into()),
                },
            ),
        ),
        (
            "RCPT TO:<x@y.example> notify=delay",
            rcpt(
                to("x", "y.example"),
                RcptParams {
                    notify: Some(notify(false, false, true)),
                    ..p()
                },
            ),
        ),
        (
            "RCPT TO:<x@y.example> NOTIFY=NEVER",
            rcpt(
                to("x", "y.example"),
                RcptParams {
                    notify: Some(Notify {
                        never: true,
                        ..Notify::default()
                    }),
                    ..p()
                },
            ),
        ),
        (
            "RCPT TO:<@a.example,@b.example:user@c.example>",
            rcpt(to("user", "c.example"), p()),
        ),
        (
            "RCPT TO:<\"john doe\"@y.example>",
            rcpt(to("john doe", "y.example"), p()),
        ),
        ("RCPT TO:<\"a\\\"b\"@y.example>", rcpt(to("a\"b", "y.example"), p())),
        (
            "RCPT TO:<x@[192.0.2.1]>",
            rcpt(
                ForwardPath::Path(Mailbox {
                    local: "x".into(),
                    domain: Domain::Literal("192.0.2.1".into()),
                }),
                p(),
            ),
        ),
        (
            "RCPT TO:<x@[IPv6:2001:db8::1]>",
            rcpt(
                ForwardPath::Path(Mailbox {
                    local: "x".into(),
                    domain: Domain::Literal("IPv6:2001:db8::1".into()),
                }),
                p(),
            ),
        ),
    ];
    for (line, want) in cases {
        assert_eq!(parse(line), Ok(want), "{line:?}");
    }
}

#[test]
fn rcpt_to_bad() {
    use CommandError::{BadAddress, Syntax, UnknownParameter};
    let long_local = format!("RCPT TO:<{}@y.example>", "a".repeat(65));
    let cases: Vec<(&str, CommandError)> = vec![
        ("RCPT", Syntax("expected RCPT TO:<address>")),
        ("RCPT FROM:<x@y.z>", Syntax("expected RCPT TO:<address>")),
        ("RCPT TO:<>", BadAddress("empty recipient")),
        ("RCPT TO:x@y.z", BadAddress("missing <")),
        ("RCPT TO:<x@y.z> garbage", UnknownParameter("garbage".into())),
        ("RCPT TO:<x@y.z>garbage", BadAddress("garbage after address")),
        ("RCPT TO:<x y@z.z>", BadAddress("space inside address")),
        ("RCPT TO:<@y.z>", BadAddress("bad source route")),
        ("RCPT TO:<x>", BadAddress("missing @domain")),
        ("RCPT TO:<x@>", BadAddress("missing domain")),
        ("RCPT TO:<x@y..z>", BadAddress("empty domain label")),
        ("RCPT TO:<x@[1.2.3]>", BadAddress("bad address literal")),
        ("RCPT TO:<x\x01@y.z>", BadAddress("control character in address")),
        (&long_local, BadAddress("local part too long")),
        (
            "RCPT TO:<x@y.z> NOTIFY=NEVER,SUCCESS",
            Syntax("NOTIFY=NEVER cannot be combined"),
        ),
        ("RCPT TO:<x@y.z> NOTIFY=SOMETIMES", Syntax("bad NOTIFY value")),
        ("RCPT TO:<x@y.z> NOTIFY=", Syntax("bad parameter value")),
        ("RCPT TO:<x@y.z> NOTIFY=SUCCESS,", Syntax("bad NOTIFY value")),
        (
            "RCPT TO:<x@y.z> NOTIFY=DELAY NOTIFY=DELAY",
            Syntax("duplicate parameter"),
        ),
        ("RCPT TO:<x@y.z> ORCPT=x@y.z", Syntax("ORCPT needs addr-type;address")),
        ("RCPT TO:<x@y.z> ORCPT=rfc822;", Syntax("bad ORCPT value")),
        ("RCPT TO:<x@y.z> ORCPT=rfc822;+Q", Syntax("bad ORCPT value")),
        (
            "RCPT TO:<x@y.z> ORCPT=rfc822;a ORCPT=rfc822;b",
            Syntax("duplicate parameter"),
        ),
        ("RCPT TO:<x@y.z> SIZE=10", UnknownParameter("SIZE".into())),
    ];
    for (line, want) in cases {
        assert_eq!(parse(line).as_ref(), Err(&want), "{line:?}");
    }
}

#[test]
fn errors_know_their_reply() {
    let code = |e: CommandError| {
        let r = e.reply();
        (r.code, r.status.into_owned())
    };
    assert_eq!(code(CommandError::Unrecognized), (500, "5.5.1".to_string()));
    assert_eq!(code(CommandError::Syntax("x")), (501, "5.5.4".to_string()));
    assert_eq!(code(CommandError::BadAddress("x")), (501, "5.1.3".to_string()));
    assert_eq!(
        code(CommandError::UnknownParameter("X".into())),
        (555, "5.5.4".to_string())
    );
}
