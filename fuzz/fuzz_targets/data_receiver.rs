//! Feeds arbitrary bytes, in arbitrary splits, to the DATA and BDAT receivers: no panic, the
//! same result however the input is split, CRLF-only output within the size limit, and an end
//! of data only at `<CR><LF>.<CR><LF>`.
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;
use smtpgate_proto::{BareEol, BdatReceiver, DataOutcome, DataReceiver, dot_stuff};

#[derive(Debug, PartialEq, Eq)]
struct Run {
    out: Vec<u8>,
    consumed: usize,
    done: bool,
    outcome: DataOutcome,
    received: u64,
}

fn data(parts: &[&[u8]], policy: BareEol, max: u64) -> Run {
    let mut rx = DataReceiver::new(policy, max);
    let mut out = Vec::new();
    let (mut consumed, mut done) = (0, false);
    for part in parts {
        let (used, d) = rx.feed(part, &mut out);
        consumed += used;
        done = d;
        if done {
            break;
        }
        assert_eq!(used, part.len());
    }
    Run { out, consumed, done, outcome: rx.outcome(), received: rx.received() }
}

fn bdat(parts: &[&[u8]], policy: BareEol, max: u64) -> (Vec<u8>, DataOutcome, u64) {
    let mut rx = BdatReceiver::new(policy, max);
    let mut out = Vec::new();
    for part in parts {
        rx.feed(part, &mut out);
    }
    rx.finish(&mut out);
    (out, rx.outcome(), rx.received())
}

/// Cuts `input` at the (sorted, clamped) positions.
fn split<'a>(input: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    cuts.sort_unstable();
    let mut parts = Vec::new();
    let mut start = 0;
    for c in cuts {
        parts.push(&input[start..c]);
        start = c;
    }
    parts.push(&input[start..]);
    parts
}

fn assert_crlf_only(body: &[u8]) {
    for (i, &b) in body.iter().enumerate() {
        if b == b'\r' {
            assert_eq!(body.get(i + 1), Some(&b'\n'), "bare CR in output");
        }
        if b == b'\n' {
            assert!(i > 0 && body[i - 1] == b'\r', "bare LF in output");
        }
    }
}

fn check_data(input: &[u8], cuts: &[usize], policy: BareEol, max: u64) {
    let whole = data(&[input], policy, max);
    assert_eq!(data(&split(input, cuts), policy, max), whole);
    let bytes: Vec<&[u8]> = input.chunks(1).collect();
    assert_eq!(data(&bytes, policy, max), whole);
    assert!(whole.out.len() as u64 <= max);
    assert_crlf_only(whole.out.strip_suffix(b"\r").unwrap_or(&whole.out));
    if whole.done {
        let eaten = &input[..whole.consumed];
        assert!(eaten.ends_with(b"\r\n.\r\n") || eaten == b".\r\n");
    } else {
        assert_eq!(whole.consumed, input.len());
    }
    if whole.done && whole.outcome == DataOutcome::Ok {
        let mut wire = Vec::new();
        dot_stuff(&whole.out, &mut wire);
        let again = data(&[&wire], BareEol::Reject, u64::MAX);
        assert_eq!((again.done, again.consumed), (true, wire.len()));
        assert_eq!(again.out, whole.out);
        assert_eq!(again.outcome, DataOutcome::Ok);
    }
}

fn check_bdat(input: &[u8], cuts: &[usize], policy: BareEol, max: u64) {
    let whole = bdat(&[input], policy, max);
    assert_eq!(bdat(&split(input, cuts), policy, max), whole);
    let bytes: Vec<&[u8]> = input.chunks(1).collect();
    assert_eq!(bdat(&bytes, policy, max), whole);
    assert!(whole.0.len() as u64 <= max);
    assert_crlf_only(whole.0.strip_suffix(b"\r").unwrap_or(&whole.0));
}

fuzz_target!(|raw: &[u8]| {
    let [mode, c1, c2, c3, input @ ..] = raw else { return };
    let policy = if mode & 1 == 0 { BareEol::Reject } else { BareEol::Normalize };
    let max = if mode & 2 == 0 { u64::MAX } else { u64::from(mode >> 2) * 4 };
    let cuts = [usize::from(*c1) * 7, usize::from(*c2) * 13, usize::from(*c3)];
    check_data(input, &cuts, policy, max);
    check_bdat(input, &cuts, policy, max);
});
