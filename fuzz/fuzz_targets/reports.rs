//! Arbitrary bytes through the DSN (RFC 3464) and ARF (RFC 5965) report parsers: no panic, and
//! every field they return is free of CR and LF (the values reach logs and the suppression list
//! one per line), with the recipients never empty.
//!
//! Fuzz builds turn on debug assertions in every crate. mail-parser has `debug_assert!`s that
//! input can reach (in a release build it carries on past them); those, and only those, count as
//! "not a report" here instead of a crash. Any other panic in the parser is a crash (in the gate
//! itself, parsing runs on a blocking task, so one would cost that report, not the process).
#![no_main]
#![forbid(unsafe_code)]

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Once;

use libfuzzer_sys::fuzz_target;
use smtpgate::report::{Complaint, Dsn, parse_complaint, parse_dsn};

/// mail-parser's debug assertions that input reaches (mail-parser 0.11.9).
const DEBUG_ONLY: &[&str] = &["Invalid part ID, could not find multipart."];

/// Lets the panics of [`DEBUG_ONLY`] unwind (to `catch_unwind` below) instead of aborting.
fn tolerate_debug_assertions() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let abort = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_parser = info.location().is_some_and(|l| l.file().contains("mail-parser"));
            if in_parser && info.payload_as_str().is_some_and(|m| DEBUG_ONLY.contains(&m)) {
                return;
            }
            abort(info)
        }));
    });
}

fn dsn(message: &[u8]) -> Option<Dsn> {
    catch_unwind(AssertUnwindSafe(|| parse_dsn(message))).ok().flatten()
}

fn complaint(message: &[u8]) -> Option<Complaint> {
    catch_unwind(AssertUnwindSafe(|| parse_complaint(message)))
        .ok()
        .flatten()
}

fn one_line(what: &str, value: &str) {
    assert!(!value.contains(['\r', '\n']), "{what} holds a line break: {value:?}");
}

fuzz_target!(|message: &[u8]| {
    tolerate_debug_assertions();
    if let Some(dsn) = dsn(message) {
        assert!(!dsn.recipients.is_empty(), "a DSN without recipients");
        dsn.envelope_id.iter().for_each(|v| one_line("envelope_id", v));
        dsn.reporting_mta.iter().for_each(|v| one_line("reporting_mta", v));
        dsn.original_message_id
            .iter()
            .for_each(|v| one_line("original_message_id", v));
        for r in &dsn.recipients {
            assert!(!r.recipient.is_empty(), "an empty DSN recipient");
            one_line("recipient", &r.recipient);
            one_line("action", &r.action);
            one_line("status", &r.status);
            r.diagnostic.iter().for_each(|v| one_line("diagnostic", v));
            r.remote_mta.iter().for_each(|v| one_line("remote_mta", v));
        }
    }
    if let Some(c) = complaint(message) {
        one_line("feedback_type", &c.feedback_type);
        for r in &c.recipients {
            assert!(!r.is_empty(), "an empty complaint recipient");
            one_line("recipient", r);
        }
        c.original_sender.iter().for_each(|v| one_line("original_sender", v));
        c.source_ip.iter().for_each(|v| one_line("source_ip", v));
        c.original_message_id
            .iter()
            .for_each(|v| one_line("original_message_id", v));
    }
});
