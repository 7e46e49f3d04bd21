//! Spool recovery on any segment bytes: no panic, and nothing returned that the gate did not
//! write.
//!
//! The first byte picks the mode. Raw mode walks the input as a segment: every record found lies
//! inside it, in order, back to back from the start. Gate mode builds a segment with the gate's own
//! encoder from fuzzer-chosen bodies (which may hold anything, records included), then cuts it or
//! changes one byte at a fuzzer-chosen place: the walk returns exactly the records written before
//! the break, at their offsets, and never one that lies inside a body.
#![no_main]
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;
use smtpgate::envelope::{Envelope, QueueId, Recipient, Sender};
use smtpgate::spool::record::{self, RcptState, Record};
use smtpgate::spool::{End, walk};

fn envelope(id: u64) -> Envelope {
    Envelope {
        id: QueueId(id),
        sender: Sender::parse(&format!("s{id}@example.test")).unwrap(),
        recipients: vec![Recipient::parse("r@example.org").unwrap()],
        received_at: id,
        eight_bit: false,
        smtputf8: false,
        ret: None,
        envid: None,
        pool: None,
        scan: Vec::new(),
        stream: None,
    }
}

fn id_of(rec: &Record<'_>) -> u64 {
    match rec {
        Record::Message { env, .. } => env.id.0,
        Record::Status { id, .. } | Record::Done { id } => id.0,
    }
}

fn raw(data: &[u8]) {
    let walked = walk(data);
    let mut expect = 0;
    for (at, _) in &walked.records {
        assert_eq!(*at, expect, "records are read back to back from the start");
        assert!(*at < data.len());
        expect = match record::decode(&data[*at..]) {
            record::Decoded::Record(_, used) => at + used,
            other => panic!("walk returned a record decode refuses: {other:?}"),
        };
    }
    match walked.end {
        End::Clean => assert_eq!(expect, data.len()),
        End::Torn { at } | End::Damaged { at } => assert_eq!(at, expect),
    }
}

fn gate(data: &[u8]) {
    let [how, where_hi, where_lo, flip, rest @ ..] = data else { return };
    // Bodies: the rest split at 0xff bytes; ids 1, 2, 3...; a Done record after every third.
    let mut seg = Vec::new();
    let mut written = Vec::new();
    for (i, body) in rest.split(|&b| b == 0xff).enumerate().take(16) {
        let id = i as u64 + 1;
        written.push((seg.len(), id));
        record::encode_message(&envelope(id), &[RcptState::Pending], body, None, &mut seg);
        if i % 3 == 2 {
            written.push((seg.len(), id));
            record::encode_done(QueueId(id), &mut seg);
        }
    }
    if seg.is_empty() {
        return;
    }
    let place = (usize::from(*where_hi) << 8 | usize::from(*where_lo)) % seg.len();
    let mut damaged = seg.clone();
    if how & 1 == 0 {
        damaged.truncate(place);
    } else {
        damaged[place] ^= flip | 1;
    }
    let walked = walk(&damaged);
    // Every record written before the break comes back, at its offset, and nothing else.
    let intact: Vec<(usize, u64)> = written
        .iter()
        .copied()
        .take_while(|(at, _)| {
            let end = written
                .iter()
                .find(|(b, _)| b > at)
                .map_or(seg.len(), |(b, _)| *b);
            end <= place
        })
        .collect();
    let got: Vec<(usize, u64)> = walked.records.iter().map(|(at, r)| (*at, id_of(r))).collect();
    assert_eq!(got, intact, "only and all the records written before the break");
    if how & 1 == 0 {
        // A cut never counts as damage, and is cut where the torn record starts.
        let expect = intact.last().map_or(0, |&(at, _)| {
            written.iter().find(|(b, _)| *b > at).map_or(seg.len(), |(b, _)| *b)
        });
        match walked.end {
            End::Clean => assert_eq!(expect, damaged.len()),
            End::Torn { at } => assert_eq!(at, expect),
            End::Damaged { .. } => panic!("a cut taken for damage"),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    match data.split_first() {
        Some((mode, rest)) if mode & 1 == 0 => raw(rest),
        Some((_, rest)) => gate(rest),
        None => {}
    }
});
