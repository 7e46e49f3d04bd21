//! DATA and BDAT receivers: strict end-of-data, bare CR/LF policy, dot-unstuffing, size limits,
//! and the same result however the input is split.

use smtpgate_proto::{BareEol, BdatReceiver, DataOutcome, DataReceiver, Nul, dot_stuff};

const BIG: u64 = 1 << 20;

/// What one run of a DataReceiver produced.
#[derive(Debug, PartialEq, Eq)]
struct Run {
    out: Vec<u8>,
    consumed: usize,
    done: bool,
    outcome: DataOutcome,
    received: u64,
}

/// Feeds `parts` in order, like a session reading from a socket; stops at done.
fn feed_parts(parts: &[&[u8]], policy: BareEol, max: u64) -> Run {
    let mut rx = DataReceiver::new(policy, max);
    let mut out = Vec::new();
    let mut consumed = 0;
    let mut done = false;
    for part in parts {
        let (used, d) = rx.feed(part, &mut out);
        consumed += used;
        done = d;
        if done {
            break;
        }
        assert_eq!(used, part.len(), "a receiver that is not done consumes everything");
    }
    Run {
        out,
        consumed,
        done,
        outcome: rx.outcome(),
        received: rx.received(),
    }
}

/// Feeds `input` whole, cut in two at every position, and one byte at a time; all must agree.
fn data_all_splits(input: &[u8], policy: BareEol, max: u64) -> Run {
    let whole = feed_parts(&[input], policy, max);
    for cut in 0..=input.len() {
        let (a, b) = input.split_at(cut);
        assert_eq!(feed_parts(&[a, b], policy, max), whole, "cut at {cut} of {input:?}");
    }
    let bytes: Vec<&[u8]> = input.chunks(1).collect();
    assert_eq!(feed_parts(&bytes, policy, max), whole, "byte at a time: {input:?}");
    whole
}

/// (input with terminator and maybe pipelined bytes, stored body, had a bare CR/LF, rest)
type Case = (&'static [u8], &'static [u8], bool, &'static [u8]);

const CASES: &[Case] = &[
    (b"hello\r\n.\r\n", b"hello\r\n", false, b""),
    (b".\r\n", b"", false, b""),
    (b"\r\n.\r\n", b"\r\n", false, b""),
    (b".\r\nMAIL FROM:<a@b>\r\n", b"", false, b"MAIL FROM:<a@b>\r\n"),
    (b"a\r\n.\r\nQUIT\r\n", b"a\r\n", false, b"QUIT\r\n"),
    (b"a\r\n.\r\n.\r\n", b"a\r\n", false, b".\r\n"),
    // Dot-unstuffing.
    (b"..x\r\n.\r\n", b".x\r\n", false, b""),
    (b"a\r\n..\r\n.\r\n", b"a\r\n.\r\n", false, b""),
    (b"a\r\n.x\r\n.\r\n", b"a\r\nx\r\n", false, b""),
    (b"a\r\n...\r\n.\r\n", b"a\r\n..\r\n", false, b""),
    (b"a.\r\nb..c\r\n.\r\n", b"a.\r\nb..c\r\n", false, b""),
    // Lax end-of-data variants: content, never the end (SMTP smuggling).
    (b"a\n.\nb\r\n.\r\n", b"a\r\n.\r\nb\r\n", true, b""),
    (b"a\r.\rb\r\n.\r\n", b"a\r\n.\r\nb\r\n", true, b""),
    (b"a\n.\r\nb\r\n.\r\n", b"a\r\n.\r\nb\r\n", true, b""),
    (b"a\r\n.\nb\r\n.\r\n", b"a\r\n\r\nb\r\n", true, b""),
    (b"a\r\n.\rb\r\n.\r\n", b"a\r\n\r\nb\r\n", true, b""),
    (b"a\r\n.\r\r\n.\r\n", b"a\r\n\r\n\r\n", true, b""),
    (b"a\r\n .\r\n.\r\n", b"a\r\n .\r\n", false, b""),
    (b"a\r.\r\n.\r\n", b"a\r\n.\r\n", true, b""),
    (b"\n.\n\r\n.\r\n", b"\r\n.\r\n\r\n", true, b""),
    (b"\n.\r\n.\r\n", b"\r\n.\r\n", true, b""),
    (b"\r.\r\n.\r\n", b"\r\n.\r\n", true, b""),
    (b"a\n\r\n.\r\n", b"a\r\n\r\n", true, b""),
    (b"a\r\r\n.\r\n", b"a\r\n\r\n", true, b""),
    (b"a\r\n.\n\r\n.\r\n", b"a\r\n\r\n\r\n", true, b""),
    (b"a\r\n.\r.\r\n.\r\n", b"a\r\n\r\n.\r\n", true, b""),
    (
        b"smuggle\r\n.\nMAIL FROM:<x@y>\r\n.\r\nQUIT\r\n",
        b"smuggle\r\n\r\nMAIL FROM:<x@y>\r\n",
        true,
        b"QUIT\r\n",
    ),
];

#[test]
fn data_table_normalize() {
    for &(input, body, _, rest) in CASES {
        let run = data_all_splits(input, BareEol::Normalize, BIG);
        assert!(run.done, "{input:?}");
        assert_eq!(run.out, body, "{input:?}");
        assert_eq!(&input[run.consumed..], rest, "{input:?}");
        assert_eq!(run.outcome, DataOutcome::Ok, "{input:?}");
        assert_eq!(run.received, body.len() as u64);
    }
}

#[test]
fn data_table_reject() {
    for &(input, body, bare, rest) in CASES {
        let run = data_all_splits(input, BareEol::Reject, BIG);
        assert!(run.done, "{input:?}");
        assert_eq!(run.out, body, "{input:?}");
        assert_eq!(&input[run.consumed..], rest, "{input:?}");
        let want = if bare {
            DataOutcome::BareLineEnding
        } else {
            DataOutcome::Ok
        };
        assert_eq!(run.outcome, want, "{input:?}");
    }
}

/// (input with terminator and pipelined bytes, stored body under either NUL policy, rest)
const NUL_CASES: &[(&[u8], &[u8], &[u8])] = &[
    (b"a\0b\r\n.\r\n", b"ab\r\n", b""),
    (b"\0\r\n.\r\n", b"\r\n", b""),
    (b"a\r\n\0\r\n.\r\n", b"a\r\n\r\n", b""),
    // A receiver that drops NULs would end the data at `<CR><LF>NUL.<CR><LF>`; here the dot is
    // not at a line start, so it stays content, and what follows is still the message.
    (b"a\r\n\0.\r\n.\r\n", b"a\r\n.\r\n", b""),
    (
        b"a\r\n\0.\r\nMAIL FROM:<x@y>\r\n.\r\nQUIT\r\n",
        b"a\r\n.\r\nMAIL FROM:<x@y>\r\n",
        b"QUIT\r\n",
    ),
    (b"a\r\n.\0\r\n.\r\n", b"a\r\n\r\n", b""),
    (b"a\r\0\n\r\n.\r\n", b"a\r\n\r\n\r\n", b""),
];

/// Feeds `parts` to a receiver with the NUL policy `nul`; returns (out, consumed, done, outcome).
fn feed_nul(parts: &[&[u8]], nul: Nul) -> (Vec<u8>, usize, bool, DataOutcome) {
    let mut rx = DataReceiver::new(BareEol::Normalize, BIG).with_nul(nul);
    let mut out = Vec::new();
    let mut consumed = 0;
    for part in parts {
        let (used, done) = rx.feed(part, &mut out);
        consumed += used;
        if done {
            return (out, consumed, true, rx.outcome());
        }
    }
    (out, consumed, false, rx.outcome())
}

#[test]
fn data_nul_is_refused_by_default_or_stripped_and_never_stored() {
    for &(input, body, rest) in NUL_CASES {
        for (nul, want) in [(Nul::Reject, DataOutcome::Nul), (Nul::Strip, DataOutcome::Ok)] {
            let whole = feed_nul(&[input], nul);
            for cut in 0..=input.len() {
                let (a, b) = input.split_at(cut);
                assert_eq!(feed_nul(&[a, b], nul), whole, "cut at {cut} of {input:?}");
            }
            let (out, consumed, done, outcome) = whole;
            assert!(done, "{input:?}");
            assert_eq!(out, body, "{input:?} {nul:?}");
            assert!(!out.contains(&0), "{input:?}");
            assert_eq!(&input[consumed..], rest, "{input:?}");
            assert_eq!(outcome, want, "{input:?} {nul:?}");
        }
    }
    // The default is to refuse.
    let mut rx = DataReceiver::new(BareEol::Normalize, BIG);
    rx.feed(b"a\0\r\n.\r\n", &mut Vec::new());
    assert_eq!(rx.outcome(), DataOutcome::Nul);
}

#[test]
fn data_nul_ranks_after_too_big_and_before_bare_line_ending() {
    let mut rx = DataReceiver::new(BareEol::Reject, 2);
    rx.feed(b"a\0bcd\r\n.\r\n", &mut Vec::new());
    assert_eq!(rx.outcome(), DataOutcome::TooBig);
    let mut rx = DataReceiver::new(BareEol::Reject, BIG);
    rx.feed(b"a\nb\0\r\n.\r\n", &mut Vec::new());
    assert_eq!(rx.outcome(), DataOutcome::Nul);
}

#[test]
fn stored_body_has_crlf_only() {
    for &(input, ..) in CASES {
        let run = feed_parts(&[input], BareEol::Normalize, BIG);
        assert_crlf_only(&run.out);
    }
}

#[test]
fn stored_body_round_trips_through_dot_stuff() {
    for &(input, body, ..) in CASES {
        let mut wire = Vec::new();
        dot_stuff(body, &mut wire);
        let run = data_all_splits(&wire, BareEol::Reject, BIG);
        assert!(run.done);
        assert_eq!(run.consumed, wire.len(), "{input:?}");
        assert_eq!(run.out, body, "{input:?}");
        assert_eq!(run.outcome, DataOutcome::Ok);
    }
}

#[test]
fn lax_terminators_alone_do_not_end_data() {
    let lax: &[&[u8]] = &[
        b"\n.\n",
        b"\r.\r",
        b"\n.\r\n",
        b"\r\n.\n",
        b"\r\n.\r",
        b"\r\n.\r\r\n",
        b"\r\n\0.\r\n",
        b"\r\n .\r\n",
        b"\r.\r\n",
        b"x\n.\n",
        b"x\r\n.\rx",
        b".\n",
        b".\r",
        b".\r\r\n",
        b"\n.\n.\r\n",
        b"x\r.\r\n",
        b"a\r\n.\n.\r\n",
        b"a\r\n.\r.\r\n",
    ];
    for input in lax {
        for policy in [BareEol::Reject, BareEol::Normalize] {
            let run = data_all_splits(input, policy, BIG);
            assert!(!run.done, "{input:?} ended the data");
            assert_eq!(run.consumed, input.len());
        }
    }
}

#[test]
fn feeding_after_done_consumes_nothing() {
    let mut rx = DataReceiver::new(BareEol::Reject, BIG);
    let mut out = Vec::new();
    assert_eq!(rx.feed(b"x\r\n.\r\n", &mut out), (6, true));
    assert_eq!(rx.feed(b"more\r\n.\r\n", &mut out), (0, true));
    assert_eq!(out, b"x\r\n");
}

#[test]
fn too_big_reads_to_the_end_and_stops_storing() {
    let mut input = b"0123456789\r\n".repeat(10);
    input.extend_from_slice(b".\r\nQUIT\r\n");
    for max in [0, 1, 11, 12, 13, 25, 119] {
        let run = data_all_splits(&input, BareEol::Normalize, max);
        assert!(run.done);
        assert_eq!(&input[run.consumed..], b"QUIT\r\n");
        assert_eq!(run.outcome, DataOutcome::TooBig, "max {max}");
        assert_eq!(run.out.len() as u64, max, "out is exactly the first max octets");
        assert_eq!(run.received, 120);
    }
    let run = feed_parts(&[&input], BareEol::Normalize, 120);
    assert_eq!(run.outcome, DataOutcome::Ok);
}

#[test]
fn too_big_wins_over_bare_line_ending() {
    let run = feed_parts(&[b"aaaa\nbbbb\r\n.\r\n"], BareEol::Reject, 4);
    assert_eq!(run.outcome, DataOutcome::TooBig);
}

/// A small deterministic generator, so property tests need no dependencies.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    fn bytes(&mut self, alphabet: &[u8], len: usize) -> Vec<u8> {
        (0..len)
            .map(|_| alphabet[self.next() as usize % alphabet.len()])
            .collect()
    }
}

#[test]
fn random_inputs_agree_however_split() {
    let mut rng = Lcg(7);
    for _ in 0..300 {
        let len = rng.next() as usize % 24;
        let input = rng.bytes(b"\r\n.\r\n.a", len);
        for policy in [BareEol::Reject, BareEol::Normalize] {
            let run = data_all_splits(&input, policy, 10);
            assert_crlf_only_prefix(&run.out);
            if run.done {
                assert!(input[..run.consumed].ends_with(b"\r\n.\r\n") || run.consumed == 3);
            }
        }
    }
}

fn assert_crlf_only(body: &[u8]) {
    for (i, &b) in body.iter().enumerate() {
        if b == b'\r' {
            assert_eq!(body.get(i + 1), Some(&b'\n'), "bare CR at {i} in {body:?}");
        }
        if b == b'\n' {
            assert!(i > 0 && body[i - 1] == b'\r', "bare LF at {i} in {body:?}");
        }
    }
}

/// Like [`assert_crlf_only`], but the body may have been cut after a CR by the size limit.
fn assert_crlf_only_prefix(body: &[u8]) {
    let body = body.strip_suffix(b"\r").unwrap_or(body);
    assert_crlf_only(body);
}

// ---- BDAT -------------------------------------------------------------------------------

/// Feeds `chunks` then finishes; returns (out, outcome, received).
fn bdat_parts(chunks: &[&[u8]], policy: BareEol, max: u64) -> (Vec<u8>, DataOutcome, u64) {
    let mut rx = BdatReceiver::new(policy, max);
    let mut out = Vec::new();
    for c in chunks {
        rx.feed(c, &mut out);
    }
    rx.finish(&mut out);
    (out, rx.outcome(), rx.received())
}

fn bdat_all_splits(input: &[u8], policy: BareEol, max: u64) -> (Vec<u8>, DataOutcome, u64) {
    let whole = bdat_parts(&[input], policy, max);
    for cut in 0..=input.len() {
        let (a, b) = input.split_at(cut);
        assert_eq!(bdat_parts(&[a, b], policy, max), whole, "cut at {cut} of {input:?}");
        assert_eq!(bdat_parts(&[a, b""], policy, max), bdat_parts(&[a], policy, max));
    }
    let bytes: Vec<&[u8]> = input.chunks(1).collect();
    assert_eq!(bdat_parts(&bytes, policy, max), whole, "byte at a time: {input:?}");
    whole
}

/// (chunk data, stored body, had a bare CR/LF)
const BDAT_CASES: &[(&[u8], &[u8], bool)] = &[
    (b"", b"", false),
    (b"a\r\nb\r\n", b"a\r\nb\r\n", false),
    (b"no final newline", b"no final newline", false),
    (b"..x\r\n.\r\nQUIT\r\n", b"..x\r\n.\r\nQUIT\r\n", false),
    (b"a\rb", b"a\r\nb", true),
    (b"a\nb", b"a\r\nb", true),
    (b"a\r", b"a\r\n", true),
    (b"\n", b"\r\n", true),
    (b"a\r\r\n", b"a\r\n\r\n", true),
    (b"a\n\r\n", b"a\r\n\r\n", true),
    (b"a\r\rb", b"a\r\n\r\nb", true),
    (b"a\r\n.\n", b"a\r\n.\r\n", true),
];

#[test]
fn bdat_table() {
    for &(input, body, bare) in BDAT_CASES {
        let (out, outcome, received) = bdat_all_splits(input, BareEol::Normalize, BIG);
        assert_eq!(out, body, "{input:?}");
        assert_eq!(outcome, DataOutcome::Ok);
        assert_eq!(received, body.len() as u64);
        let (out, outcome, _) = bdat_all_splits(input, BareEol::Reject, BIG);
        assert_eq!(out, body, "{input:?}");
        let want = if bare {
            DataOutcome::BareLineEnding
        } else {
            DataOutcome::Ok
        };
        assert_eq!(outcome, want, "{input:?}");
    }
}

#[test]
fn bdat_nul_is_refused_by_default_or_stripped_and_never_stored() {
    let cases: &[(&[u8], &[u8])] = &[
        (b"a\0b", b"ab"),
        (b"\0", b""),
        (b"a\r\n\0.\r\nb", b"a\r\n.\r\nb"),
        (b"a\r\0\nb", b"a\r\n\r\nb"),
    ];
    for &(input, body) in cases {
        for (nul, want) in [(Nul::Reject, DataOutcome::Nul), (Nul::Strip, DataOutcome::Ok)] {
            for cut in 0..=input.len() {
                let (a, b) = input.split_at(cut);
                let mut rx = BdatReceiver::new(BareEol::Normalize, BIG).with_nul(nul);
                let mut out = Vec::new();
                rx.feed(a, &mut out);
                rx.feed(b, &mut out);
                rx.finish(&mut out);
                assert_eq!(out, body, "cut at {cut} of {input:?}");
                assert_eq!(rx.outcome(), want, "cut at {cut} of {input:?} {nul:?}");
            }
        }
    }
    let mut rx = BdatReceiver::new(BareEol::Normalize, BIG);
    rx.feed(b"\0", &mut Vec::new());
    rx.finish(&mut Vec::new());
    assert_eq!(rx.outcome(), DataOutcome::Nul, "refused by default");
}

#[test]
fn bdat_cr_at_chunk_end_then_lf_is_a_proper_crlf() {
    let (out, outcome, _) = bdat_parts(&[b"line\r", b"\nnext\r\n"], BareEol::Reject, BIG);
    assert_eq!(out, b"line\r\nnext\r\n");
    assert_eq!(outcome, DataOutcome::Ok);
}

#[test]
fn bdat_too_big() {
    let input = b"0123456789\r\n".repeat(10);
    for max in [0, 5, 12, 119] {
        let (out, outcome, received) = bdat_all_splits(&input, BareEol::Reject, max);
        assert_eq!(outcome, DataOutcome::TooBig);
        assert_eq!(out.len() as u64, max);
        assert_eq!(received, 120);
    }
}

#[test]
fn bdat_random_inputs_agree_however_split() {
    let mut rng = Lcg(11);
    for _ in 0..300 {
        let len = rng.next() as usize % 20;
        let input = rng.bytes(b"\r\n.a", len);
        let (out, ..) = bdat_all_splits(&input, BareEol::Normalize, BIG);
        assert_crlf_only(&out);
    }
}
