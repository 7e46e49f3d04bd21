//! dot_stuff: output is CRLF-only, has no lax end-of-data sequence before the end, and
//! round-trips through a DataReceiver.

use smtpgate_proto::{BareEol, DataOutcome, DataReceiver, dot_stuff};

fn stuffed(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    dot_stuff(body, &mut out);
    out
}

#[test]
fn examples() {
    let cases: &[(&[u8], &[u8])] = &[
        (b"", b".\r\n"),
        (b"a", b"a\r\n.\r\n"),
        (b"a\r\n", b"a\r\n.\r\n"),
        (b".", b"..\r\n.\r\n"),
        (b".\r\n", b"..\r\n.\r\n"),
        (b"a\r\n.b\r\n", b"a\r\n..b\r\n.\r\n"),
        (b"a\n.\n", b"a\r\n..\r\n.\r\n"),
        (b"a\r.\r", b"a\r\n..\r\n.\r\n"),
        (b"a\r\r\n", b"a\r\n\r\n.\r\n"),
        (b"\n", b"\r\n.\r\n"),
        (b"x.y\r\n", b"x.y\r\n.\r\n"),
    ];
    for &(body, want) in cases {
        assert_eq!(stuffed(body), want, "{body:?}");
    }
}

#[test]
fn nuls_are_dropped_and_a_dot_behind_them_is_stuffed() {
    let cases: &[(&[u8], &[u8])] = &[
        (b"a\0b", b"ab\r\n.\r\n"),
        (b"\0", b"\r\n.\r\n"),
        (b"\0.", b"..\r\n.\r\n"),
        (b"a\r\n\0.\r\nb", b"a\r\n..\r\nb\r\n.\r\n"),
        (b"a\r\n\0\0.\r\n", b"a\r\n..\r\n.\r\n"),
        (b"a\r\n.\0.\r\n", b"a\r\n...\r\n.\r\n"),
    ];
    for &(body, want) in cases {
        assert_eq!(stuffed(body), want, "{body:?}");
    }
}

/// The sequences a lax receiver might take for the end of data.
const LAX_ENDS: &[&[u8]] = &[
    b"\n.\n",
    b"\r.\r",
    b"\n.\r\n",
    b"\r\n.\n",
    b"\r\n.\r",
    b"\r.\n",
    b"\n.\r",
    b"\r.\r\n",
    b"\r\n.\r\n",
];

fn nasty_bodies() -> Vec<Vec<u8>> {
    let mut bodies: Vec<Vec<u8>> = [
        &b""[..],
        b".",
        b"..",
        b".\r\n",
        b"\r\n.\r\n",
        b"\n.\n",
        b"\r.\r",
        b"\n.\r\n",
        b"\r\n.\n",
        b"\r\n.\r",
        b"\r\n.\r\r\n",
        b"\r\n\0.\r\n",
        b"\r\n .\r\n",
        b"\r.\r\n",
        b".\n.\r.\r\n.",
        b"\r\r\n\n.",
        b"a\r\n.\r\nMAIL FROM:<x@y>\r\n",
        b"\n\n\n...\r\r\r",
        b".\r",
        b"\r",
    ]
    .iter()
    .map(|b| b.to_vec())
    .collect();
    // Every string of up to 6 symbols over { CR, LF, '.', 'a' }.
    let alphabet = b"\r\n.a";
    let mut layer = vec![Vec::new()];
    for _ in 0..6 {
        layer = layer
            .iter()
            .flat_map(|s: &Vec<u8>| alphabet.iter().map(move |&c| [s.as_slice(), &[c]].concat()))
            .collect();
        bodies.extend(layer.iter().cloned());
    }
    bodies
}

#[test]
fn no_lax_end_of_data_before_the_end() {
    for body in nasty_bodies() {
        let out = stuffed(&body);
        // Only a sequence using the final dot may look like an end of data.
        let early = &out[..out.len() - 3];
        for lax in LAX_ENDS {
            assert!(!contains(early, lax), "{body:?} -> {out:?} contains {lax:?}");
        }
        assert!(out.ends_with(b".\r\n"));
        if out.len() > 3 {
            assert!(out.ends_with(b"\r\n.\r\n"));
        }
    }
}

#[test]
fn output_is_crlf_only_and_round_trips() {
    for body in nasty_bodies() {
        let out = stuffed(&body);
        let mut rx = DataReceiver::new(BareEol::Reject, u64::MAX);
        let mut got = Vec::new();
        assert_eq!(rx.feed(&out, &mut got), (out.len(), true), "{body:?}");
        assert_eq!(rx.outcome(), DataOutcome::Ok, "{body:?} -> {out:?}");
        // Stuffing the received body again gives the same wire bytes (a fixed point).
        assert_eq!(stuffed(&got), out, "{body:?}");
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}
