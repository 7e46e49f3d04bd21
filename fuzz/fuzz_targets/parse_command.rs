//! Parses arbitrary command lines: no panic, and every parsed path prints in a form that parses
//! back to the same path.
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;
use smtpgate_proto::{Command, ForwardPath, LineFramer, ReversePath, parse_command};

fuzz_target!(|data: &[u8]| {
    let _ = LineFramer::new(64).next(data);
    match parse_command(data) {
        Ok(Command::Mail { from: ReversePath::Path(m), .. }) => {
            let again = ReversePath::parse(&format!("<{m}>"));
            assert_eq!(again, Ok(ReversePath::Path(m)));
        }
        Ok(Command::Rcpt { to: ForwardPath::Path(m), .. }) => {
            let shown = format!("<{m}>");
            // "<postmaster@...>" always has a domain, so it never turns into Postmaster.
            assert_eq!(ForwardPath::parse(&shown), Ok(ForwardPath::Path(m)));
        }
        Ok(Command::Auth { mechanism, .. }) => assert_eq!(mechanism, mechanism.to_ascii_uppercase()),
        _ => {}
    }
});
