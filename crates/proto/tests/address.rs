//! Paths and mailboxes: parsing, limits and display.

use smtpgate_proto::{Domain, ForwardPath, Mailbox, ReversePath};

#[test]
fn good_paths() {
    let cases: &[(&str, &str)] = &[
        ("<a@b.example>", "a@b.example"),
        ("<first.last@sub.b-c.example>", "first.last@sub.b-c.example"),
        ("<a+tag@B.Example>", "a+tag@B.Example"),
        ("<!#$%&'*+-/=?^_`{|}~@x.example>", "!#$%&'*+-/=?^_`{|}~@x.example"),
        ("<\"john doe\"@x.example>", "\"john doe\"@x.example"),
        ("<\"plain\"@x.example>", "plain@x.example"),
        ("<\"a\\\\b\"@x.example>", "\"a\\\\b\"@x.example"),
        ("<\"a\\\"b\"@x.example>", "\"a\\\"b\"@x.example"),
        ("<\".lead\"@x.example>", "\".lead\"@x.example"),
        ("<a@[192.0.2.1]>", "a@[192.0.2.1]"),
        ("<a@[IPv6:::1]>", "a@[IPv6:::1]"),
        ("<a@[ipv6:2001:db8::1]>", "a@[ipv6:2001:db8::1]"),
        ("<a@[x-tag:stuff]>", "a@[x-tag:stuff]"),
        ("<@r1.example:a@b.example>", "a@b.example"),
        ("<@r1.example,@r2.example:a@b.example>", "a@b.example"),
        ("<\u{fc}ser@b\u{fc}cher.example>", "\u{fc}ser@b\u{fc}cher.example"),
        (
            "<\u{7528}\u{6237}@\u{4f8b}\u{3048}.\u{30c6}\u{30b9}\u{30c8}>",
            "\u{7528}\u{6237}@\u{4f8b}\u{3048}.\u{30c6}\u{30b9}\u{30c8}",
        ),
        ("<a@1.example>", "a@1.example"),
        ("<a@x1>", "a@x1"),
    ];
    for &(input, shown) in cases {
        let path = ForwardPath::parse(input).unwrap_or_else(|e| panic!("{input:?}: {e}"));
        assert_eq!(path.to_string(), shown, "{input:?}");
        let reverse = ReversePath::parse(input).unwrap();
        assert_eq!(reverse.to_string(), shown);
        // What Display writes parses back to the same mailbox.
        let again = ForwardPath::parse(&format!("<{shown}>")).unwrap();
        assert_eq!(again, path, "{input:?}");
    }
}

#[test]
fn bad_paths() {
    let long_domain = format!("<a@{}.example>", vec!["a".repeat(63); 4].join("."));
    let route = vec!["r".repeat(60); 4].join(".");
    let long_path = format!("<@{route}:a@{}.example>", "b".repeat(60));
    let long_label = format!("<a@{}.example>", "a".repeat(64));
    let long_local = format!("<{}@x.example>", "a".repeat(65));
    let long_quoted = format!("<\"{}\"@x.example>", "a".repeat(63));
    let cases: &[(&str, &str)] = &[
        ("", "missing <"),
        ("a@b.example", "missing <"),
        ("<a@b.example", "missing >"),
        ("<a@b.example> ", "garbage after address"),
        ("<a@b.example>x", "garbage after address"),
        ("< a@b.example>", "empty local part"),
        ("<a @b.example>", "space inside address"),
        ("<a@ b.example>", "missing domain"),
        ("<a@b .example>", "space inside address"),
        ("<\"\"@b.example>", "empty local part"),
        ("<.a@b.example>", "empty local part"),
        ("<a.@b.example>", "bad dot in local part"),
        ("<a..b@b.example>", "bad dot in local part"),
        ("<a@b.example.>", "empty domain label"),
        ("<a@.b.example>", "missing domain"),
        ("<a@-b.example>", "bad domain label"),
        ("<a@b-.example>", "bad domain label"),
        ("<a@b_c.example>", "bad character in address"),
        ("<a@1.2.3.4>", "bad domain: numeric top-level label"),
        ("<a@[1.2.3.4.5]>", "bad address literal"),
        ("<a@[IPv6:zz]>", "bad address literal"),
        ("<a@[1.2.3.4>", "bad address literal"),
        ("<a@[]>", "bad address literal"),
        ("<a\x00b@x.example>", "control character in address"),
        ("<a@x\x7f.example>", "control character in address"),
        ("<\"a\tb\"@x.example>", "control character in address"),
        ("<\"a\\\x01\"@x.example>", "bad quoted pair"),
        ("<\"abc@x.example>", "unterminated quoted string"),
        ("<a\u{2028}@x.example>", "control character in address"),
        ("<@r.example a@b.example>", "bad source route"),
        ("<@r.example:>", "empty local part"),
        (&long_local, "local part too long"),
        (&long_quoted, "local part too long"),
        (&long_label, "domain label too long"),
        (&long_domain, "domain too long"),
        (&long_path, "path too long"),
    ];
    for &(input, err) in cases {
        assert_eq!(ForwardPath::parse(input), Err(err), "{input:?}");
    }
}

#[test]
fn invalid_utf8_is_rejected() {
    use smtpgate_proto::address::parse_forward_path_prefix;
    assert_eq!(
        parse_forward_path_prefix(b"<\xff@x.example>"),
        Err("invalid UTF-8 in address")
    );
    assert_eq!(
        parse_forward_path_prefix(b"<a@\xc3.example>"),
        Err("invalid UTF-8 in address")
    );
}

#[test]
fn limits_are_inclusive() {
    let local = "a".repeat(64);
    assert!(ForwardPath::parse(&format!("<{local}@x.example>")).is_ok());
    let domain = format!(
        "{}.{}.{}.{}",
        "a".repeat(63),
        "b".repeat(63),
        "c".repeat(63),
        "d".repeat(63)
    );
    assert_eq!(domain.len(), 255);
    assert!(Mailbox::parse(&format!("a@{domain}")).is_ok());
}

#[test]
fn postmaster() {
    assert_eq!(ForwardPath::parse("<postmaster>"), Ok(ForwardPath::Postmaster));
    assert_eq!(ForwardPath::parse("<POSTMASTER>"), Ok(ForwardPath::Postmaster));
    assert_eq!(ForwardPath::Postmaster.to_string(), "postmaster");
    assert!(matches!(
        ForwardPath::parse("<postmaster@x.example>"),
        Ok(ForwardPath::Path(_))
    ));
    assert!(matches!(
        ForwardPath::parse("<postmasters@x.example>"),
        Ok(ForwardPath::Path(_))
    ));
    assert_eq!(ForwardPath::parse("<postmasters>"), Err("missing @domain"));
    assert_eq!(ForwardPath::parse("<>"), Err("empty recipient"));
    assert_eq!(ReversePath::parse("<>"), Ok(ReversePath::Null));
    assert_eq!(ReversePath::Null.to_string(), "");
}

#[test]
fn domain_str_and_utf8() {
    let m = Mailbox::parse("a@Example.COM").unwrap();
    assert_eq!(m.domain_str(), "Example.COM");
    assert!(!m.is_utf8());
    let m = Mailbox::parse("a@[192.0.2.1]").unwrap();
    assert_eq!(m.domain, Domain::Literal("192.0.2.1".into()));
    assert_eq!(m.domain_str(), "192.0.2.1");
    assert_eq!(m.domain.as_address_text(), "[192.0.2.1]");
    assert!(Mailbox::parse("\u{fc}@x.example").unwrap().is_utf8());
    assert!(Mailbox::parse("u@b\u{fc}cher.example").unwrap().is_utf8());
}

#[test]
fn display_quotes_when_needed() {
    let m = |local: &str| Mailbox {
        local: local.into(),
        domain: Domain::Name("x.example".into()),
    };
    assert_eq!(m("plain.dot").to_string(), "plain.dot@x.example");
    assert_eq!(m("two words").to_string(), "\"two words\"@x.example");
    assert_eq!(m("a..b").to_string(), "\"a..b\"@x.example");
    assert_eq!(m("q\"uote").to_string(), "\"q\\\"uote\"@x.example");
    assert_eq!(m("").to_string(), "\"\"@x.example");
}
