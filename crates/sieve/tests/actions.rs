//! Actions and implicit keep (RFC 5228 sections 2.10 and 4, RFC 3894, RFC 5429), `stop`, and
//! the trace.

mod common;

use common::{actions, fileinto, keep, msg, redirect, run};
use smtpgate_sieve::Action;

#[test]
fn empty_script_keeps() {
    assert_eq!(actions("", &msg(&[])), keep());
    assert_eq!(actions("# nothing but a comment\n", &msg(&[])), keep());
}

#[test]
fn discard_cancels_implicit_keep() {
    assert_eq!(actions("discard;", &msg(&[])), vec![Action::Discard]);
}

#[test]
fn explicit_keep_survives_discard() {
    assert_eq!(
        actions("keep; discard;", &msg(&[])),
        vec![Action::Keep, Action::Discard]
    );
    assert_eq!(
        actions("discard; keep;", &msg(&[])),
        vec![Action::Discard, Action::Keep]
    );
}

#[test]
fn fileinto_cancels_implicit_keep_but_not_with_copy() {
    let m = msg(&[]);
    assert_eq!(
        actions("require \"fileinto\"; fileinto \"a\";", &m),
        vec![fileinto("a")]
    );
    let with_copy = "require [\"fileinto\", \"copy\"]; fileinto :copy \"a\";";
    assert_eq!(actions(with_copy, &m), vec![fileinto("a"), Action::Keep]);
}

#[test]
fn redirect_copy_keeps() {
    let script = "require \"copy\";\nredirect :copy \"archive@example.net\";\n";
    let want = vec![
        Action::Redirect {
            address: "archive@example.net".into(),
            copy: true,
        },
        Action::Keep,
    ];
    assert_eq!(actions(script, &msg(&[])), want);
}

#[test]
fn redirect_without_copy_cancels_implicit_keep() {
    assert_eq!(
        actions("redirect \"a@example.net\";", &msg(&[])),
        vec![redirect("a@example.net")]
    );
}

#[test]
fn keep_with_redirect_delivers_both() {
    let want = vec![redirect("a@example.net"), Action::Keep];
    assert_eq!(actions("redirect \"a@example.net\"; keep;", &msg(&[])), want);
}

#[test]
fn duplicate_redirects_are_collapsed() {
    let script = "redirect \"a@example.net\"; redirect \"b@example.net\"; redirect \"a@EXAMPLE.net\";";
    assert_eq!(
        actions(script, &msg(&[])),
        vec![redirect("a@example.net"), redirect("b@example.net")]
    );
}

#[test]
fn collapsed_redirect_is_a_copy_only_if_every_one_was() {
    let script = "require \"copy\"; redirect :copy \"a@example.net\"; redirect \"a@example.net\";";
    assert_eq!(actions(script, &msg(&[])), vec![redirect("a@example.net")]);
}

#[test]
fn duplicate_fileinto_and_keep_are_collapsed() {
    let script = "require \"fileinto\"; fileinto \"x\"; keep; fileinto \"x\"; keep;";
    assert_eq!(actions(script, &msg(&[])), vec![fileinto("x"), Action::Keep]);
}

#[test]
fn explicit_keep_and_implicit_keep_are_one_keep() {
    assert_eq!(actions("keep;", &msg(&[])), keep());
}

#[test]
fn reject_cancels_implicit_keep() {
    let script = "require \"reject\";\nif size :over 1M { reject \"too big\"; }\n";
    let big = msg(&[]).with_size(2 << 20);
    assert_eq!(actions(script, &big), vec![Action::Reject("too big".into())]);
    assert_eq!(actions(script, &msg(&[])), keep());
}

#[test]
fn reject_with_discard_is_allowed() {
    let script = "require \"reject\"; discard; reject \"no\";";
    assert_eq!(
        actions(script, &msg(&[])),
        vec![Action::Discard, Action::Reject("no".into())]
    );
}

#[test]
fn reject_with_a_delivering_action_falls_back_to_keep() {
    for other in [
        "keep;",
        "redirect \"a@example.net\";",
        "fileinto \"x\";",
        "reject \"other\";",
    ] {
        let script = format!("require [\"reject\", \"fileinto\"]; reject \"no\"; {other}");
        let outcome = run(&script, &msg(&[]));
        assert_eq!(outcome.actions, keep(), "{other}");
        assert!(
            outcome.trace.last().unwrap().starts_with("run-time error"),
            "{:?}",
            outcome.trace
        );
    }
}

#[test]
fn stop_inside_nested_block_ends_everything() {
    let script = r#"
        if true {
            if header :contains "subject" "urgent" {
                redirect "pager@example.net";
                stop;
            }
        }
        discard;
    "#;
    let urgent = msg(&[("Subject", "URGENT: disk full")]);
    assert_eq!(actions(script, &urgent), vec![redirect("pager@example.net")]);
    assert_eq!(actions(script, &msg(&[("Subject", "fyi")])), vec![Action::Discard]);
}

#[test]
fn stop_keeps_actions_taken_before_it() {
    let script = "require \"fileinto\"; fileinto \"a\"; stop; fileinto \"b\";";
    assert_eq!(actions(script, &msg(&[])), vec![fileinto("a")]);
}

#[test]
fn only_the_first_true_branch_runs() {
    let script = "if false { discard; } elsif true { keep; } elsif true { discard; } else { discard; }";
    assert_eq!(actions(script, &msg(&[])), keep());
}

#[test]
fn trace_lists_each_step_with_its_line() {
    let script = "require \"copy\";\n\
                  if header :contains \"subject\" \"invoice\" {\n\
                  redirect :copy \"a@b.example\";\n\
                  } elsif exists \"x-spam\" {\n\
                  discard;\n\
                  } else {\n\
                  stop;\n\
                  }\n";
    let outcome = run(script, &msg(&[("Subject", "Invoice 7")]));
    assert_eq!(
        outcome.trace,
        vec![
            r#"line 2: if header :contains "subject" "invoice" -> true"#,
            r#"line 3: redirect :copy "a@b.example""#,
            "implicit keep",
        ]
    );
    let outcome = run(script, &msg(&[]));
    assert_eq!(
        outcome.trace,
        vec![
            r#"line 2: if header :contains "subject" "invoice" -> false"#,
            r#"line 4: elsif exists "x-spam" -> false"#,
            "line 6: else",
            "line 7: stop",
            "implicit keep",
        ]
    );
}

#[test]
fn trace_writes_compound_tests_back_in_sieve_syntax() {
    let script = r#"if anyof(not address :domain ["from", "sender"] "example.com", size :over 10K) { discard; }"#;
    let outcome = run(script, &msg(&[("From", "a@example.com")]));
    assert_eq!(
        outcome.trace[0],
        r#"line 1: if anyof(not address :domain :is ["from", "sender"] "example.com", size :over 10240) -> false"#
    );
}

#[test]
fn too_many_redirects_is_a_run_time_error_that_keeps() {
    use smtpgate_sieve::MAX_REDIRECTS;
    let script: String = (0..=MAX_REDIRECTS)
        .map(|i| format!("redirect \"u{i}@example.net\";\n"))
        .collect();
    let outcome = run(&script, &msg(&[]));
    assert_eq!(outcome.actions, keep());
    assert!(
        outcome
            .trace
            .last()
            .unwrap()
            .contains("more than 32 different redirects"),
        "{:?}",
        outcome.trace
    );
    let script: String = (0..MAX_REDIRECTS)
        .map(|i| format!("redirect \"u{i}@example.net\";\n"))
        .collect();
    assert_eq!(actions(&script, &msg(&[])).len(), MAX_REDIRECTS);
}

#[test]
fn too_many_actions_is_a_run_time_error_that_keeps() {
    use smtpgate_sieve::MAX_ACTIONS;
    let script: String = std::iter::once("require \"fileinto\";\n".to_string())
        .chain((0..=MAX_ACTIONS).map(|i| format!("fileinto \"f{i}\";\n")))
        .collect();
    let outcome = run(&script, &msg(&[]));
    assert_eq!(outcome.actions, keep());
    assert!(
        outcome
            .trace
            .iter()
            .any(|t| t.contains("more than 256 different actions"))
    );
}
