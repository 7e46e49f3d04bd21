//! Helpers shared by the integration tests.
#![allow(dead_code)]

use smtpgate_sieve::{Action, Outcome, ParseError, Script, SimpleMessage};

/// A message for me@example.com from the given sender with the given headers and size.
pub fn msg(headers: &[(&str, &str)]) -> SimpleMessage {
    let mut m = SimpleMessage::new("me@example.com")
        .with_from("sender@example.org")
        .with_size(1000);
    for (name, value) in headers {
        m = m.with_header(*name, *value);
    }
    m
}

/// Parses `script` (which must be valid) and runs it against `m`.
pub fn run(script: &str, m: &SimpleMessage) -> Outcome {
    let parsed = Script::parse(script).unwrap_or_else(|e| panic!("script should parse: {e}\n{script}"));
    parsed.evaluate(m)
}

/// The actions `script` decides for `m`.
pub fn actions(script: &str, m: &SimpleMessage) -> Vec<Action> {
    run(script, m).actions
}

/// Whether `test` holds for `m`, found by running `if <test> { discard; }`.
pub fn holds(test: &str, m: &SimpleMessage) -> bool {
    let script = format!("require [\"envelope\"];\nif {test} {{ discard; }}");
    match actions(&script, m).as_slice() {
        [Action::Discard] => true,
        [Action::Keep] => false,
        other => panic!("unexpected actions {other:?}"),
    }
}

/// The error for a script that must not parse.
pub fn error(script: &str) -> ParseError {
    match Script::parse(script) {
        Ok(_) => panic!("script should not parse:\n{script}"),
        Err(e) => e,
    }
}

pub fn keep() -> Vec<Action> {
    vec![Action::Keep]
}

pub fn fileinto(folder: &str) -> Action {
    Action::FileInto(folder.to_string())
}

pub fn redirect(address: &str) -> Action {
    Action::Redirect {
        address: address.to_string(),
        copy: false,
    }
}
