//! Scripts that must be refused, each with the line of the problem; and the limits that keep a
//! hostile script from exhausting the stack or memory.

mod common;

use common::error;
use smtpgate_sieve::{MAX_NESTING, MAX_SCRIPT_BYTES, Script};

/// Asserts that `script` is refused on `line` with a message containing `words`.
fn refused(script: &str, line: usize, words: &str) {
    let err = error(script);
    assert_eq!(err.line, line, "wrong line for {err} in:\n{script}");
    assert!(err.message.contains(words), "{err:?} should mention {words:?}");
    assert_eq!(err.to_string(), format!("line {line}: {}", err.message));
}

#[test]
fn missing_semicolon() {
    refused("keep;\ndiscard\n", 2, "';' or '{' after discard");
    refused("keep;\ndiscard\nkeep;\n", 3, "is a ';' missing before 'keep'");
}

#[test]
fn unbalanced_braces() {
    refused("if true {\n  keep;\n", 2, "'}'");
    refused("keep;\n}\n", 2, "expected a command");
}

#[test]
fn unterminated_strings_and_comments_report_where_they_start() {
    refused("keep;\nredirect \"a@b.example;\n\n", 2, "unterminated quoted string");
    refused("keep;\n/* never\nclosed\n", 2, "unterminated /* comment");
    refused("require \"reject\";\nreject text:\nno end\n", 2, "text:");
}

#[test]
fn bad_characters_and_tokens() {
    refused("keep;\n  keep @;\n", 2, "unexpected character '@'");
    refused("if size :over 12Q { discard; }", 1, "K, M or G");
    refused("if size :over 99999999999999999999 { discard; }", 1, "too large");
    refused("if header : \"a\" \"b\" { keep; }", 1, "tag name");
}

#[test]
fn string_list_errors() {
    refused("if header [] \"x\" { keep; }", 1, "a string in the list");
    refused("if header [\"a\" \"b\"] \"x\" { keep; }", 1, "',' or ']'");
    refused("if header [\"a\",\n 3] \"x\" { keep; }", 2, "a string in the list");
}

#[test]
fn unsupported_extension_in_require() {
    refused("require \"vacation\";\n", 1, "unsupported extension \"vacation\"");
    refused("require [\"fileinto\",\n \"vacation\"];\n", 1, "vacation");
    refused("require \"imap4flags\";", 1, "imap4flags");
}

#[test]
fn extensions_used_without_require() {
    refused("keep;\nfileinto \"x\";\n", 2, "needs require \"fileinto\"");
    refused("\n\nreject \"no\";\n", 3, "needs require \"reject\"");
    refused(
        "if envelope \"from\" \"a@b.example\" { keep; }",
        1,
        "needs require \"envelope\"",
    );
    refused(
        "require \"fileinto\";\nfileinto :copy \"x\";",
        2,
        "needs require \"copy\"",
    );
    refused("redirect :copy \"a@b.example\";", 1, "needs require \"copy\"");
}

#[test]
fn require_after_another_command() {
    refused("keep;\nrequire \"fileinto\";\n", 2, "require must come before");
}

#[test]
fn unknown_command_and_test() {
    refused("keep;\nvacation \"gone fishing\";\n", 2, "unknown command \"vacation\"");
    refused("if true {\n  frobnicate;\n}\n", 2, "unknown command \"frobnicate\"");
    refused("if body :contains \"x\" { discard; }", 1, "unknown test \"body\"");
}

#[test]
fn misplaced_elsif_and_else() {
    refused("keep;\nelsif true { keep; }\n", 2, "elsif without a preceding if");
    refused(
        "if true { keep; }\nkeep;\nelse { keep; }\n",
        3,
        "else without a preceding if",
    );
}

#[test]
fn if_needs_a_test_and_a_block() {
    refused("if { keep; }", 1, "if needs a test");
    refused("if true;", 1, "if needs a block");
    refused("if true { keep; } elsif { keep; }", 1, "elsif needs a test");
    refused("if (true, false) { keep; }", 1, "one test");
    refused("keep { discard; }", 1, "takes no block");
}

#[test]
fn bad_arguments() {
    refused("if header \"subject\" { keep; }", 1, "missing argument");
    refused("if header \"subject\" \"a\" \"b\" { keep; }", 1, "too many arguments");
    refused("if header \"subject\" :contains \"a\" { keep; }", 1, "must come before");
    refused(
        "if header :is :contains \"subject\" \"a\" { keep; }",
        1,
        "repeated tagged argument :contains",
    );
    refused("if header :domain \"subject\" \"a\" { keep; }", 1, ":domain");
    refused("if header :regex \"subject\" \"a\" { keep; }", 1, ":regex");
    refused(
        "if header :comparator \"i;unicode-casemap\" \"s\" \"a\" { keep; }",
        1,
        "unsupported comparator",
    );
    refused("if size 100 { keep; }", 1, ":over or :under");
    refused("if size :over :under 100 { keep; }", 1, "repeated");
    refused("if size :over \"100\" { keep; }", 1, "expected a number");
    refused("if allof true { keep; }", 1, "list of tests");
    refused("if not (true, false) { keep; }", 1, "exactly one test");
    refused("if true false { keep; }", 1, "takes no test");
    refused("redirect [\"a@b.example\", \"c@d.example\"];", 1, "not a list");
    refused("redirect 5;", 1, "expected a string");
    refused("keep \"x\";", 1, "too many arguments");
}

#[test]
fn bad_values() {
    refused("redirect \"not an address\";", 1, "not an address");
    refused("redirect \"@example.com\";", 1, "not an address");
    refused("require \"fileinto\";\nfileinto \"\";", 2, "empty");
    refused("if header \"sub:ject\" \"x\" { keep; }", 1, "not a valid header name");
    refused("if exists \"\" { keep; }", 1, "not a valid header name");
    refused(
        "if address \"subject\" \"x\" { keep; }",
        1,
        "not a header that holds addresses",
    );
    refused(
        "require \"envelope\";\nif envelope \"auth\" \"x\" { keep; }",
        2,
        "unsupported envelope part",
    );
}

/// `if true { if true { ... keep; ... } }`, `depth` deep.
fn nested_ifs(depth: usize) -> String {
    format!("{}keep;{}", "if true {\n".repeat(depth), "}".repeat(depth))
}

/// `if anyof(anyof(...(true)...)) { keep; }`, `depth` deep.
fn nested_anyofs(depth: usize) -> String {
    format!("if {}true{} {{ keep; }}", "anyof(".repeat(depth), ")".repeat(depth))
}

/// `if not not ... not true { keep; }`, `depth` deep.
fn nested_nots(depth: usize) -> String {
    format!("if {}true {{ keep; }}", "not ".repeat(depth))
}

#[test]
fn nesting_up_to_the_limit_is_accepted() {
    assert!(Script::parse(&nested_ifs(MAX_NESTING - 1)).is_ok());
    assert!(Script::parse(&nested_anyofs(MAX_NESTING - 2)).is_ok());
    assert!(Script::parse(&nested_nots(MAX_NESTING - 2)).is_ok());
}

#[test]
fn ten_thousand_nested_ifs_are_refused_not_a_stack_overflow() {
    let err = error(&nested_ifs(10_000));
    assert!(err.message.contains("nesting deeper than 64"), "{err}");
    assert_eq!(err.line, MAX_NESTING + 1);
}

#[test]
fn ten_thousand_nested_anyofs_are_refused_not_a_stack_overflow() {
    let err = error(&nested_anyofs(10_000));
    assert!(err.message.contains("nesting deeper than 64"), "{err}");
}

#[test]
fn ten_thousand_nots_and_brackets_are_refused() {
    assert!(error(&nested_nots(10_000)).message.contains("nesting"));
    assert!(error(&"{".repeat(10_000)).message.contains("expected a command"));
    assert!(
        error(&format!("if {}", "(".repeat(10_000)))
            .message
            .contains("expected a name")
    );
}

#[test]
fn scripts_over_one_mebibyte_are_refused() {
    let comment = format!("# {}\nkeep;\n", "x".repeat(MAX_SCRIPT_BYTES));
    let err = error(&comment);
    assert_eq!(err.line, 1);
    assert!(err.message.contains("limit"), "{err}");
    let just_under = format!("{}keep;\n", " ".repeat(MAX_SCRIPT_BYTES - 6));
    assert_eq!(just_under.len(), MAX_SCRIPT_BYTES);
    assert!(Script::parse(&just_under).is_ok());
}

#[test]
fn parse_error_is_a_std_error() {
    let err: Box<dyn std::error::Error> = Box::new(error("frob;"));
    assert_eq!(err.to_string(), "line 1: unknown command \"frob\"");
}
