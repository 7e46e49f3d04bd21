//! Arbitrary bytes through the DSN (RFC 3464) and ARF (RFC 5965) report parsers: no panic, and
//! every field they return is free of CR and LF (the values reach logs and the suppression list
//! one per line), with the recipients never empty.
#![no_main]

use libfuzzer_sys::fuzz_target;
use smtpgate::report::{parse_complaint, parse_dsn};

fn one_line(what: &str, value: &str) {
    assert!(!value.contains(['\r', '\n']), "{what} holds a line break: {value:?}");
}

fuzz_target!(|message: &[u8]| {
    if let Some(dsn) = parse_dsn(message) {
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
    if let Some(c) = parse_complaint(message) {
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
