//! The examples of RFC 5228 that use only what this crate supports, run against messages built
//! to exercise each branch. The section each comes from is in the test's name.

mod common;

use common::{actions, fileinto, holds, keep, msg, redirect};
use smtpgate_sieve::{Action, Script, SimpleMessage};

#[test]
fn section_2_3_hash_comment() {
    let script = "if size :over 100k { # this is a comment\n    discard;\n}\n";
    assert_eq!(actions(script, &msg(&[]).with_size(200 * 1024)), vec![Action::Discard]);
    assert_eq!(actions(script, &msg(&[]).with_size(100 * 1024)), keep());
}

#[test]
fn section_2_3_bracketed_comment() {
    let script = "if size :over 100K { /* this is a comment\n    this is still a comment */ discard /* this is a comment\n    */ ;\n}\n";
    assert_eq!(
        actions(script, &msg(&[]).with_size(100 * 1024 + 1)),
        vec![Action::Discard]
    );
}

#[test]
fn section_2_4_1_numbers_quantifiers() {
    let m = msg(&[]).with_size(1024 * 1024);
    assert!(holds("size :under 2M", &m));
    assert!(holds("size :over 1023K", &m));
    assert!(!holds("size :over 1M", &m));
    assert!(holds("size :under 1G", &m));
}

#[test]
fn section_2_4_2_quoted_string_escapes() {
    // "\\" is a backslash and "\"" a quote; an undefined escape such as "\a" is just "a".
    let m = msg(&[("Subject", r#"say "hi" \ bye"#)]);
    assert!(holds(r#"header :is "subject" "say \"hi\" \\ b\ye""#, &m));
}

#[test]
fn section_2_4_2_multiline_string_with_dot_stuffing() {
    let script = "require \"reject\";\nreject text:\nNo thanks.\n..signature\n.\n;\n";
    let want = "No thanks.\r\n.signature\r\n";
    assert_eq!(actions(script, &msg(&[])), vec![Action::Reject(want.into())]);
}

#[test]
fn section_2_4_2_1_string_lists() {
    let m = msg(&[("Cc", "other@example.net")]);
    assert!(holds(r#"header :contains ["To", "Cc"] ["nobody", "other"]"#, &m));
    assert!(!holds(r#"header :contains ["To", "Bcc"] ["nobody", "other"]"#, &m));
}

#[test]
fn section_2_6_2_tagged_arguments_in_any_order() {
    let loud = msg(&[("Subject", "MAKE MONEY FAST")]);
    let quiet = msg(&[("Subject", "make money fast")]);
    let test = r#"header :contains :comparator "i;octet" "Subject" "MAKE MONEY FAST""#;
    let swapped = r#"header :comparator "i;octet" :contains "Subject" "MAKE MONEY FAST""#;
    assert!(holds(test, &loud) && holds(swapped, &loud));
    assert!(!holds(test, &quiet) && !holds(swapped, &quiet));
}

#[test]
fn section_2_7_3_default_comparator_ignores_ascii_case() {
    let m = msg(&[("Subject", "HELLO World")]);
    assert!(holds(r#"header :is "subject" "hello world""#, &m));
    assert!(holds(
        r#"header :comparator "i;ascii-casemap" :is "subject" "hello world""#,
        &m
    ));
    assert!(!holds(
        r#"header :comparator "i;octet" :is "subject" "hello world""#,
        &m
    ));
}

#[test]
fn section_3_1_if_elsif_else_with_discard() {
    let script = r#"
        require "fileinto";
        if header :contains "from" "coyote" {
            discard;
        } elsif header :contains ["subject"] ["$$$"] {
            discard;
        } else {
            fileinto "INBOX";
        }
    "#;
    let coyote = msg(&[("From", "Wile E. Coyote <coyote@desert.example>")]);
    assert_eq!(actions(script, &coyote), vec![Action::Discard]);
    let money = msg(&[("From", "rr@desert.example"), ("Subject", "$$$ for you")]);
    assert_eq!(actions(script, &money), vec![Action::Discard]);
    let other = msg(&[("From", "rr@desert.example"), ("Subject", "meep")]);
    assert_eq!(actions(script, &other), vec![fileinto("INBOX")]);
}

#[test]
fn section_3_1_if_elsif_else_with_redirect() {
    let script = r#"
        if header :contains ["From"] ["coyote"] {
            redirect "acm@example.com";
        } elsif header :contains "Subject" "$$$" {
            redirect "postmaster@example.com";
        } else {
            redirect "field@example.com";
        }
    "#;
    let coyote = msg(&[("From", "coyote@desert.example"), ("Subject", "$$$")]);
    assert_eq!(actions(script, &coyote), vec![redirect("acm@example.com")]);
    let money = msg(&[("Subject", "$$$")]);
    assert_eq!(actions(script, &money), vec![redirect("postmaster@example.com")]);
    assert_eq!(actions(script, &msg(&[])), vec![redirect("field@example.com")]);
}

#[test]
fn section_3_2_require_list_and_unsupported_extension() {
    assert!(Script::parse(r#"require ["fileinto", "reject"];"#).is_ok());
    let err = Script::parse("require \"fileinto\";\nrequire \"vacation\";\n").unwrap_err();
    assert_eq!(err.line, 2);
    assert!(err.message.contains("vacation"), "{err}");
}

#[test]
fn section_3_3_stop_ends_the_script_with_implicit_keep() {
    let script = "if header :contains \"subject\" \"x\" { stop; }\ndiscard;\n";
    assert_eq!(actions(script, &msg(&[("Subject", "x")])), keep());
    assert_eq!(actions(script, &msg(&[("Subject", "y")])), vec![Action::Discard]);
}

#[test]
fn section_4_1_fileinto() {
    let script = r#"
        require "fileinto";
        if header :contains ["from"] "coyote" {
            fileinto "INBOX.harassment";
        }
    "#;
    let coyote = msg(&[("From", "coyote@desert.example")]);
    assert_eq!(actions(script, &coyote), vec![fileinto("INBOX.harassment")]);
    assert_eq!(actions(script, &msg(&[])), keep());
}

#[test]
fn section_4_2_redirect_cancels_implicit_keep() {
    assert_eq!(
        actions("redirect \"bart@example.com\";", &msg(&[])),
        vec![redirect("bart@example.com")]
    );
}

#[test]
fn section_4_3_keep_or_discard_by_size() {
    let script = "if size :under 1M { keep; } else { discard; }";
    let same = "if not size :under 1M { discard; }";
    for size in [10, 1024 * 1024 - 1, 1024 * 1024, 5 * 1024 * 1024] {
        let m = msg(&[]).with_size(size);
        let want = if size < 1024 * 1024 {
            keep()
        } else {
            vec![Action::Discard]
        };
        assert_eq!(actions(script, &m), want, "size {size}");
        assert_eq!(actions(same, &m), want, "size {size}");
    }
}

#[test]
fn section_4_4_discard() {
    let script = r#"if header :contains ["from"] ["idiot@example.com"] { discard; }"#;
    let idiot = msg(&[("From", "The Idiot <idiot@example.com>")]);
    assert_eq!(actions(script, &idiot), vec![Action::Discard]);
    assert_eq!(actions(script, &msg(&[("From", "friend@example.com")])), keep());
}

#[test]
fn section_5_1_address_all() {
    let script = r#"if address :is :all "from" "tim@example.com" { discard; }"#;
    let tim = msg(&[("From", "Tim <TIM@Example.COM>")]);
    assert_eq!(actions(script, &tim), vec![Action::Discard]);
    assert_eq!(actions(script, &msg(&[("From", "tim@example.org")])), keep());
}

#[test]
fn section_5_2_allof_truth_table() {
    let m = msg(&[]);
    assert!(!holds("allof(false, false)", &m));
    assert!(!holds("allof(false, true)", &m));
    assert!(!holds("allof(true, false)", &m));
    assert!(holds("allof(true, true)", &m));
}

#[test]
fn section_5_3_anyof_truth_table() {
    let m = msg(&[]);
    assert!(!holds("anyof(false, false)", &m));
    assert!(holds("anyof(false, true)", &m));
    assert!(holds("anyof(true, false)", &m));
    assert!(holds("anyof(true, true)", &m));
}

#[test]
fn section_5_4_envelope_from() {
    let script = r#"
        require "envelope";
        if envelope :all :is "from" "tim@example.com" {
            discard;
        }
    "#;
    let tim = SimpleMessage::new("me@example.com").with_from("tim@example.com");
    assert_eq!(actions(script, &tim), vec![Action::Discard]);
    let other = SimpleMessage::new("me@example.com").with_from("tom@example.com");
    assert_eq!(actions(script, &other), keep());
}

#[test]
fn section_5_4_null_reverse_path_is_the_empty_string() {
    let bounce = SimpleMessage::new("me@example.com");
    assert!(holds(r#"envelope :is "from" """#, &bounce));
    assert!(holds(r#"envelope :domain :is "from" """#, &bounce));
    assert!(holds(r#"envelope :localpart :is "from" """#, &bounce));
    assert!(!holds(r#"envelope :is "from" "" "#, &msg(&[])));
}

#[test]
fn section_5_5_exists_needs_every_header() {
    let both = msg(&[("From", "a@b.example"), ("Date", "Mon, 1 Jan 2024 00:00:00 +0000")]);
    let one = msg(&[("From", "a@b.example")]);
    assert!(holds(r#"exists ["From","Date"]"#, &both));
    assert!(!holds(r#"exists ["From","Date"]"#, &one));
}

#[test]
fn section_5_6_false_and_5_10_true() {
    assert!(!holds("false", &msg(&[])));
    assert!(holds("true", &msg(&[])));
}

#[test]
fn section_5_7_header_empty_key() {
    let m = msg(&[("X-Caffeine", "C8H10N4O2")]);
    assert!(!holds(r#"header :is ["X-Caffeine"] [""]"#, &m));
    assert!(holds(r#"header :contains ["X-Caffeine"] [""]"#, &m));
    assert!(!holds(r#"header :contains ["X-Caffeine"] [""]"#, &msg(&[])));
}

#[test]
fn section_5_8_not() {
    let m = msg(&[("From", "a@b.example")]);
    assert!(holds(r#"not exists ["From","Date"]"#, &m));
    assert!(!holds("not true", &m));
    assert!(holds("not not true", &m));
}

#[test]
fn section_5_9_size_over_and_under_are_strict() {
    let m = msg(&[]).with_size(1000);
    assert!(!holds("size :over 1000", &m));
    assert!(!holds("size :under 1000", &m));
    assert!(holds("size :over 999", &m));
    assert!(holds("size :under 1001", &m));
}

const SECTION_9: &str = r#"
#
# Example Sieve Filter
# Declare any optional features or extension used by the script
#
require ["fileinto"];

#
# Handle messages from known mailing lists
# Move messages from IETF filter discussion list to filter mailbox
#
if header :is "Sender" "owner-ietf-mta-filters@imc.org"
        {
        fileinto "filter";  # move to "filter" mailbox
        }
#
# Keep all messages to or from people in my company
#
elsif address :DOMAIN :is ["From", "To"] "example.com"
        {
        keep;               # keep in "In" mailbox
        }

#
# Try and catch unsolicited email.  If a message is not to me,
# or it contains a subject known to be spam, file it away.
#
elsif anyof (NOT address :all :contains
               ["To", "Cc", "Bcc"] "me@example.com",
             header :matches "subject"
               ["*make*money*fast*", "*university*dipl*mas*"])
        {
        fileinto "spam";   # move to "spam" mailbox
        }
else
        {
        # Move all other (non-company) mail to "personal"
        # mailbox.
        fileinto "personal";
        }
"#;

#[test]
fn section_9_mailing_list_goes_to_filter() {
    let m = msg(&[("Sender", "owner-ietf-mta-filters@imc.org"), ("To", "me@example.com")]);
    assert_eq!(actions(SECTION_9, &m), vec![fileinto("filter")]);
}

#[test]
fn section_9_company_mail_is_kept() {
    let m = msg(&[("From", "Boss <boss@example.com>"), ("To", "someone@elsewhere.example")]);
    assert_eq!(actions(SECTION_9, &m), keep());
}

#[test]
fn section_9_mail_not_to_me_is_spam() {
    let m = msg(&[("From", "x@spam.example"), ("To", "list@elsewhere.example")]);
    assert_eq!(actions(SECTION_9, &m), vec![fileinto("spam")]);
}

#[test]
fn section_9_spam_subject_is_spam() {
    let m = msg(&[
        ("From", "x@spam.example"),
        ("Cc", "Me <me@example.com>"),
        ("Subject", "Make Money Fast!!"),
    ]);
    assert_eq!(actions(SECTION_9, &m), vec![fileinto("spam")]);
    let m = msg(&[
        ("From", "x@spam.example"),
        ("Bcc", "me@example.com"),
        ("Subject", "University DIPLOMAS"),
    ]);
    assert_eq!(actions(SECTION_9, &m), vec![fileinto("spam")]);
}

#[test]
fn section_9_other_mail_is_personal() {
    // Mail *to* me@example.com counts as company mail (the To domain is example.com), so the
    // "personal" branch is reached by mail that reaches me by Cc or Bcc.
    let m = msg(&[
        ("From", "friend@elsewhere.example"),
        ("Cc", "me@example.com"),
        ("Subject", "lunch?"),
    ]);
    assert_eq!(actions(SECTION_9, &m), vec![fileinto("personal")]);
}
