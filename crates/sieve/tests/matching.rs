//! Match types, comparators and address parts, as scripts see them (RFC 5228 sections 2.7.1
//! to 2.7.4, 5.1 and 5.4).

mod common;

use common::{holds, msg};
use smtpgate_sieve::SimpleMessage;

#[test]
fn matches_wildcards_table() {
    // (subject, pattern as written in the script, matches?)
    let table = [
        ("hello", r#""hello""#, true),
        ("hello", r#""h*""#, true),
        ("hello", r#""*o""#, true),
        ("hello", r#""*ll*""#, true),
        ("hello", r#""h?llo""#, true),
        ("hello", r#""h??lo""#, true),
        ("hello", r#""h?lo""#, false),
        ("hello", r#""*""#, true),
        ("", r#""*""#, true),
        ("", r#""?""#, false),
        ("hello", r#""?????""#, true),
        ("hello", r#""??????""#, false),
        ("HeLLo", r#""h*O""#, true),
        ("a*b", r#""a\\*b""#, true),
        ("axb", r#""a\\*b""#, false),
        ("a?b", r#""a\\?b""#, true),
        ("axb", r#""a\\?b""#, false),
        (r"a\b", r#""a\\\\b""#, true),
        ("make money fast now", r#""*make*money*fast*""#, true),
        ("make fast money", r#""*make*money*fast*""#, false),
        ("réunion", r#""r?union""#, true),
    ];
    for (subject, pattern, want) in table {
        let m = msg(&[("Subject", subject)]);
        assert_eq!(
            holds(&format!("header :matches \"subject\" {pattern}"), &m),
            want,
            "{subject:?} :matches {pattern}"
        );
    }
}

#[test]
fn is_and_contains() {
    let m = msg(&[("Subject", "Quarterly Invoice 42")]);
    assert!(
        holds(r#"header "subject" "quarterly invoice 42""#, &m),
        ":is is the default"
    );
    assert!(!holds(r#"header :is "subject" "invoice""#, &m));
    assert!(holds(r#"header :contains "subject" "INVOICE""#, &m));
    assert!(!holds(r#"header :contains "subject" "receipt""#, &m));
}

#[test]
fn octet_comparator_is_case_sensitive_for_every_match_type() {
    let m = msg(&[("Subject", "Invoice")]);
    assert!(!holds(r#"header :is :comparator "i;octet" "subject" "invoice""#, &m));
    assert!(holds(r#"header :contains :comparator "i;octet" "subject" "voice""#, &m));
    assert!(!holds(
        r#"header :contains :comparator "i;octet" "subject" "VOICE""#,
        &m
    ));
    assert!(!holds(r#"header :matches :comparator "i;octet" "subject" "i*""#, &m));
    assert!(holds(r#"header :matches :comparator "i;octet" "subject" "I*""#, &m));
}

#[test]
fn header_names_are_case_insensitive_and_every_value_is_tried() {
    let m = msg(&[("Received", "from a.example"), ("RECEIVED", "from b.example")]);
    assert!(holds(r#"header :contains "received" "b.example""#, &m));
    assert!(holds(r#"header :contains "Received" "a.example""#, &m));
}

#[test]
fn address_parts() {
    let m = msg(&[("From", "\"Doe, Jane\" <Jane.Doe@Mail.Example.COM> (work)")]);
    assert!(holds(r#"address :all :is "from" "jane.doe@mail.example.com""#, &m));
    assert!(
        holds(r#"address :is "from" "jane.doe@mail.example.com""#, &m),
        ":all is the default"
    );
    assert!(holds(r#"address :localpart :is "from" "jane.doe""#, &m));
    assert!(holds(r#"address :domain :is "from" "mail.example.com""#, &m));
    assert!(!holds(r#"address :domain :is "from" "example.com""#, &m));
    assert!(holds(r#"address :domain :matches "from" "*.example.com""#, &m));
    assert!(
        !holds(r#"address :localpart :contains "from" "doe, jane""#, &m),
        "display name is not compared"
    );
}

#[test]
fn address_lists_and_groups() {
    let m = msg(&[
        ("To", "team: a@one.example, b@two.example;"),
        ("Cc", "c@three.example, D <d@four.example>"),
    ]);
    for domain in ["one.example", "two.example", "three.example", "four.example"] {
        assert!(
            holds(&format!(r#"address :domain ["to", "cc"] "{domain}""#), &m),
            "{domain}"
        );
    }
    assert!(!holds(r#"address :domain "to" "three.example""#, &m));
}

#[test]
fn address_without_domain_matches_only_all() {
    let m = msg(&[("To", "postmaster")]);
    assert!(holds(r#"address :all "to" "postmaster""#, &m));
    assert!(!holds(r#"address :localpart "to" "postmaster""#, &m));
    assert!(!holds(r#"address :domain :matches "to" "*""#, &m));
}

#[test]
fn envelope_parts() {
    let m = SimpleMessage::new("Me+Tag@Example.com").with_from("<bounce-123@lists.example.org>");
    assert!(holds(r#"envelope :domain "from" "lists.example.org""#, &m));
    assert!(holds(r#"envelope :localpart :matches "from" "bounce-*""#, &m));
    assert!(holds(r#"envelope :all "to" "me+tag@example.com""#, &m));
    assert!(holds(r#"envelope :localpart :contains "TO" "+tag""#, &m));
    assert!(holds(r#"envelope :domain ["from", "to"] "example.com""#, &m));
    assert!(!holds(r#"envelope :domain "to" "lists.example.org""#, &m));
}
