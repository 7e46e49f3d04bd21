//! Durability of the spool: what is stored survives a reopen, what is finished is gone, torn or
//! corrupted records are never taken for messages, and concurrent stores share fsyncs.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::record::{self, RcptState};
use super::{BodyRef, Recovered, Spool, segment_id, segment_path};
use crate::envelope::{Envelope, Notify, QueueId, Recipient, Ret};

/// Big enough that no test below rotates by accident.
const BIG_SEGMENT: u64 = 64 << 20;

fn envelope(id: u64, recipients: &[&str]) -> Envelope {
    Envelope {
        id: QueueId(id),
        sender: crate::envelope::Sender::parse(&format!("sender-{id}@example.test")).unwrap(),
        recipients: recipients.iter().map(|r| Recipient::parse(r).unwrap()).collect(),
        received_at: 1_700_000_000 + id,
        eight_bit: false,
        smtputf8: false,
        ret: None,
        envid: None,
        pool: None,
        scan: Vec::new(),
        stream: None,
        route: None,
    }
}

/// A body that differs per message and has a recognisable length.
fn body(id: u64, len: usize) -> Vec<u8> {
    let mut b = format!("Message-ID: <m{id}@example.test>\r\n\r\n").into_bytes();
    let mut x = id.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while b.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        b.push(b'a' + (x % 26) as u8);
        if b.len() % 72 == 0 {
            b.extend_from_slice(b"\r\n");
        }
    }
    b.truncate(len);
    b
}

/// Waits until the committer has finished everything it was given before (including the segment
/// reaping that follows a commit): one more record goes through the same single thread.
async fn barrier(spool: &Spool) {
    spool.update(QueueId(u64::MAX), &[]).await.expect("barrier record");
}

/// Closes a spool the way a process exit does, once every earlier record and reap is done.
async fn close(spool: Spool) {
    barrier(&spool).await;
    drop(spool);
}

fn open(dir: &Path, segment_size: u64) -> (Spool, BTreeMap<QueueId, Recovered>) {
    let (spool, found) = Spool::open(dir, segment_size).expect("open spool");
    let n = found.len();
    let map: BTreeMap<QueueId, Recovered> = found.into_iter().map(|r| (r.env.id, r)).collect();
    assert_eq!(map.len(), n, "recovery returned a queue id twice");
    (spool, map)
}

/// Segment ids of every `seg-*.log` file in `dir`, in order.
fn segments(dir: &Path) -> Vec<u64> {
    let mut ids: Vec<u64> = std::fs::read_dir(dir)
        .expect("read spool dir")
        .filter_map(|e| e.ok())
        .filter_map(|e| segment_id(e.file_name().to_str()?))
        .collect();
    ids.sort_unstable();
    ids
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).expect("stat segment").len()
}

/// The newest segment that holds any bytes (the one a crash could have torn).
fn last_written_segment(dir: &Path) -> PathBuf {
    let id = segments(dir)
        .into_iter()
        .rev()
        .find(|&id| file_len(&segment_path(dir, id)) > 0)
        .expect("a segment with data");
    segment_path(dir, id)
}

fn append(path: &Path, bytes: &[u8]) {
    let mut f = OpenOptions::new().append(true).open(path).expect("open");
    f.write_all(bytes).expect("append");
    f.sync_all().expect("sync");
}

/// Checks that every recovered message is exactly one that was stored.
fn assert_matches_stored(
    spool: &Spool,
    found: &BTreeMap<QueueId, Recovered>,
    stored: &BTreeMap<QueueId, (Envelope, Vec<u8>)>,
) {
    for (id, r) in found {
        let (env, b) = stored
            .get(id)
            .unwrap_or_else(|| panic!("recovered a message never stored: {id}"));
        assert_eq!(&r.env, env, "envelope of {id}");
        assert_eq!(r.body.len, b.len() as u64, "body length of {id}");
        assert_eq!(&spool.read_body(&r.body).expect("read body"), b, "body of {id}");
    }
}

#[tokio::test]
async fn stored_message_is_recovered_with_identical_envelope_and_body() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("spool");
    let mut env = envelope(0x1111_0000_0001, &["a@example.org", "b@example.org"]);
    env.eight_bit = true;
    env.smtputf8 = true;
    env.ret = Some(Ret::Hdrs);
    env.envid = Some("env+2Bid".into());
    env.recipients[1].notify = Some(Notify {
        failure: true,
        delay: true,
        ..Notify::default()
    });
    env.recipients[1].orcpt = Some("rfc822;b@example.org".into());
    let mut b = body(1, 5000);
    b.extend_from_slice("8bit: \u{e9}\r\n.\r\n..\r\n".as_bytes());

    let (spool, found) = open(&dir, BIG_SEGMENT);
    assert!(found.is_empty());
    let at = spool.store(&env, &b).await.expect("store");
    assert_eq!(spool.read_body(&at).unwrap(), b, "read back before reopen");
    close(spool).await;

    let (spool, found) = open(&dir, BIG_SEGMENT);
    assert_eq!(found.len(), 1);
    let r = &found[&env.id];
    assert_eq!(r.env, env);
    assert_eq!(r.states, vec![RcptState::Pending; 2]);
    assert_eq!(r.body, at, "body is where store said it is");
    assert_eq!(spool.read_body(&r.body).unwrap(), b);

    // The read-only inspection sees the same.
    let seen = super::inspect(&dir).unwrap();
    assert_eq!(seen, vec![(env, b)]);
}

#[tokio::test]
async fn recipient_state_update_is_recovered() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let env = envelope(7, &["ok@example.org", "later@example.org"]);
    let other = envelope(8, &["x@example.org", "y@example.org"]);
    let (spool, _) = open(dir, BIG_SEGMENT);
    spool.store(&env, &body(7, 300)).await.unwrap();
    spool.store(&other, &body(8, 300)).await.unwrap();
    spool.update(env.id, &[(0, RcptState::Delivered)]).await.unwrap();
    drop(spool);

    let (spool, found) = open(dir, BIG_SEGMENT);
    assert_eq!(found.len(), 2);
    assert_eq!(found[&env.id].states, [RcptState::Delivered, RcptState::Pending]);
    assert_eq!(
        found[&other.id].states,
        [RcptState::Pending, RcptState::Pending],
        "an update touches only its own message"
    );

    // A second update after the reopen lands in a newer segment and is applied on top.
    spool.update(env.id, &[(1, RcptState::Failed)]).await.unwrap();
    close(spool).await;
    let (_spool, found) = open(dir, BIG_SEGMENT);
    assert_eq!(found[&env.id].states, [RcptState::Delivered, RcptState::Failed]);
}

#[tokio::test]
async fn done_messages_are_gone_and_only_dead_old_segments_are_deleted() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // Each 3000-byte message fills most of a 4 KiB segment, so each gets its own.
    let (spool, _) = open(dir, 4096);
    let mut refs = Vec::new();
    for id in 1..=4u64 {
        let env = envelope(id, &["r@example.org"]);
        refs.push(spool.store(&env, &body(id, 3000)).await.unwrap());
    }
    let segs: Vec<u64> = refs.iter().map(|r| r.segment).collect();
    assert!(
        segs.windows(2).all(|w| w[0] < w[1]),
        "one segment per message: {segs:?}"
    );
    assert_eq!(segments(dir), segs);

    // A (oldest) and C (in the middle) are finished; B and D stay live.
    spool.done(QueueId(1), &refs[0]).await.unwrap();
    spool.done(QueueId(3), &refs[2]).await.unwrap();
    barrier(&spool).await;
    let now = segments(dir);
    assert!(!now.contains(&segs[0]), "A's segment is deleted: {now:?}");
    assert!(now.contains(&segs[1]), "B is live: its segment is kept");
    assert!(
        now.contains(&segs[2]),
        "C's segment is newer than live B's, so it is kept: {now:?}"
    );
    assert!(now.contains(&segs[3]), "D is live");
    drop(spool);

    let (spool, found) = open(dir, 4096);
    assert_eq!(
        found.keys().copied().collect::<Vec<_>>(),
        [QueueId(2), QueueId(4)],
        "finished messages do not come back"
    );
    // Finishing B frees B's and C's segments, but not D's.
    let b = found[&QueueId(2)].body;
    spool.done(QueueId(2), &b).await.unwrap();
    barrier(&spool).await;
    let now = segments(dir);
    assert!(
        !now.contains(&segs[1]) && !now.contains(&segs[2]),
        "B's and C's segments are deleted once nothing older is live: {now:?}"
    );
    assert!(now.contains(&segs[3]), "D's segment is kept: {now:?}");
    drop(spool);

    let (spool, found) = open(dir, 4096);
    assert_eq!(found.keys().copied().collect::<Vec<_>>(), [QueueId(4)]);
    let d = found[&QueueId(4)].body;
    assert_eq!(spool.read_body(&d).unwrap(), body(4, 3000));
    spool.done(QueueId(4), &d).await.unwrap();
    close(spool).await;

    let (spool, found) = open(dir, 4096);
    assert!(found.is_empty());
    barrier(&spool).await;
    assert_eq!(
        segments(dir).len(),
        1,
        "only the current segment is left: {:?}",
        segments(dir)
    );
}

/// Tails a crash can leave behind the last good record.
fn torn_tails() -> Vec<(&'static str, Vec<u8>)> {
    let mut full = Vec::new();
    let env = envelope(0xdead, &["torn@example.org"]);
    record::encode_message(&env, &[RcptState::Pending], &body(0xdead, 700), None, &mut full);
    let mut status = Vec::new();
    record::encode_status(QueueId(1), &[(0, RcptState::Delivered)], &mut status);
    let mut tails = vec![
        ("garbage", b"\x01\x02not a record at all\xff\xfe".repeat(10)),
        ("zeros", vec![0; 4096]),
        ("magic only", record::MAGIC.to_vec()),
        ("header only", full[..record::HEADER_LEN].to_vec()),
        ("half a message", full[..full.len() / 2].to_vec()),
        ("message less one byte", full[..full.len() - 1].to_vec()),
        ("status less one byte", status[..status.len() - 1].to_vec()),
    ];
    // A whole record whose last byte was never written correctly (CRC mismatch).
    let mut bad = full.clone();
    *bad.last_mut().unwrap() ^= 0x20;
    tails.push(("message with a wrong last byte", bad));
    tails
}

#[tokio::test]
async fn torn_tail_is_dropped_and_truncated_and_the_spool_goes_on() {
    for (what, tail) in torn_tails() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let mut stored = BTreeMap::new();
        let (spool, _) = open(dir, BIG_SEGMENT);
        for id in 1..=2u64 {
            let env = envelope(id, &["r@example.org", "s@example.org"]);
            let b = body(id, 500 * id as usize);
            spool.store(&env, &b).await.unwrap();
            stored.insert(env.id, (env, b));
        }
        spool.update(QueueId(1), &[(1, RcptState::Delivered)]).await.unwrap();
        close(spool).await;

        let last = last_written_segment(dir);
        let good_len = file_len(&last);
        append(&last, &tail);

        // Looking does not change anything, and does not see the torn record.
        let seen = super::inspect(dir).unwrap();
        assert_eq!(seen.len(), 2, "{what}: inspect");
        assert_eq!(file_len(&last), good_len + tail.len() as u64, "{what}");

        let (spool, found) = open(dir, BIG_SEGMENT);
        assert_eq!(
            found.keys().copied().collect::<Vec<_>>(),
            [QueueId(1), QueueId(2)],
            "{what}: the good messages, and nothing else"
        );
        assert_matches_stored(&spool, &found, &stored);
        assert_eq!(
            found[&QueueId(1)].states,
            [RcptState::Pending, RcptState::Delivered],
            "{what}"
        );
        assert_eq!(file_len(&last), good_len, "{what}: torn tail truncated");

        // New records after the repaired tail recover too.
        let env = envelope(3, &["r@example.org"]);
        let b = body(3, 900);
        spool.store(&env, &b).await.unwrap();
        stored.insert(env.id, (env, b));
        spool.update(QueueId(2), &[(0, RcptState::Failed)]).await.unwrap();
        close(spool).await;

        let (spool, found) = open(dir, BIG_SEGMENT);
        assert_eq!(
            found.keys().copied().collect::<Vec<_>>(),
            [QueueId(1), QueueId(2), QueueId(3)],
            "{what}: after the repair"
        );
        assert_matches_stored(&spool, &found, &stored);
        assert_eq!(
            found[&QueueId(2)].states,
            [RcptState::Failed, RcptState::Pending],
            "{what}"
        );
    }
}

#[tokio::test]
async fn a_corrupted_byte_inside_a_record_is_never_returned_as_a_message() {
    // Where in the middle record (B) the byte is flipped: header fields, envelope, body.
    let b_len = 2000usize;
    let positions: Vec<(&str, usize)> = vec![
        ("magic", 1),
        ("kind", 4),
        ("length", 6),
        ("crc", 10),
        ("header crc", 14),
        ("envelope id", record::HEADER_LEN + 4 + 2),
        ("sender", record::HEADER_LEN + 4 + 8 + 4 + 3),
        ("body start", 120),
        ("body middle", 900),
        ("body end", 0), // filled in below: the record's last byte
    ];
    for (what, pos) in positions {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let mut stored = BTreeMap::new();
        let (spool, _) = open(dir, BIG_SEGMENT);
        let mut refs = Vec::new();
        for id in 1..=3u64 {
            let env = envelope(id, &["r@example.org"]);
            let b = body(id, b_len);
            refs.push(spool.store(&env, &b).await.unwrap());
            stored.insert(env.id, (env, b));
        }
        close(spool).await;

        // B's record runs from A's body end to C's record start.
        let b_start = refs[0].offset + refs[0].len;
        let b_end = refs[1].offset + refs[1].len;
        let at = if pos == 0 { b_end - 1 } else { b_start + pos as u64 };
        assert!(at < b_end, "{what}: inside B");
        let path = segment_path(dir, refs[1].segment);
        let mut data = std::fs::read(&path).unwrap();
        data[at as usize] ^= 0x55;
        std::fs::write(&path, &data).unwrap();

        let (spool, found) = open(dir, BIG_SEGMENT);
        assert!(
            !found.contains_key(&QueueId(2)),
            "{what}: the corrupted record came back as a message"
        );
        assert!(
            found.contains_key(&QueueId(1)),
            "{what}: the record before it is intact"
        );
        // Recovery never skips damage to look for the next record: C, behind it, is set aside
        // with B, byte for byte, and counted; the segment ends where B started.
        assert!(
            !found.contains_key(&QueueId(3)),
            "{what}: a record behind the damage was replayed"
        );
        assert_matches_stored(&spool, &found, &stored);
        assert_eq!(spool.damaged(), 1, "{what}: counted");
        let aside = super::recover::damaged_path(dir, refs[1].segment, b_start as usize);
        assert_eq!(
            std::fs::read(&aside).unwrap_or_else(|e| panic!("{what}: {}: {e}", aside.display())),
            &data[b_start as usize..],
            "{what}: the rest of the segment is kept under damaged/"
        );
        assert_eq!(
            file_len(&path),
            b_start,
            "{what}: the segment is cut where the damage starts"
        );
        close(spool).await;

        // Once set aside, the next start finds a clean spool.
        let (spool, found) = open(dir, BIG_SEGMENT);
        assert_eq!(found.keys().copied().collect::<Vec<_>>(), [QueueId(1)], "{what}");
        assert_eq!(spool.damaged(), 0, "{what}: nothing more set aside");
    }
}

/// One whole record as the spool wrote it: stores `env` in a scratch spool and copies the bytes of
/// its record out of the segment.
async fn record_written_by_spool(env: &Envelope, b: &[u8]) -> Vec<u8> {
    let tmp = tempfile::tempdir().unwrap();
    let (spool, _) = open(tmp.path(), BIG_SEGMENT);
    let at = spool.store(env, b).await.unwrap();
    close(spool).await;
    let data = std::fs::read(segment_path(tmp.path(), at.segment)).unwrap();
    let walked = super::walk(&data);
    assert_eq!(walked.end, super::End::Clean);
    let start = walked.records[0].0;
    data[start..(at.offset + at.len) as usize].to_vec()
}

#[tokio::test]
async fn records_inside_a_body_are_never_replayed_when_its_record_is_torn() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut stored = BTreeMap::new();
    let (spool, _) = open(dir, BIG_SEGMENT);
    // A victim queued before the attack: its queue id is in its 250 reply.
    let victim = envelope(1, &["a@example.org", "b@example.org"]);
    let vb = body(1, 800);
    spool.store(&victim, &vb).await.unwrap();
    stored.insert(victim.id, (victim.clone(), vb));

    // The attacker's body: a real message record (any sender, any recipient), a Done and a
    // Status for the victim, then padding; the segment is cut inside the padding.
    let mut forged_env = envelope(0xf0f0, &["anyone@elsewhere.example"]);
    forged_env.sender = crate::envelope::Sender::parse("forged@attacker.example").unwrap();
    let mut evil = b"Subject: hello\r\n\r\n".to_vec();
    evil.extend_from_slice(&record_written_by_spool(&forged_env, &body(0xf0f0, 300)).await);
    record::encode_done(victim.id, &mut evil);
    record::encode_status(victim.id, &[(0, RcptState::Delivered)], &mut evil);
    let padding_at = evil.len();
    evil.extend_from_slice(&b"padding padding padding\r\n".repeat(4000));
    let attacker = envelope(2, &["r@example.org"]);
    let at = spool.store(&attacker, &evil).await.unwrap();
    close(spool).await;

    let path = segment_path(dir, at.segment);
    let record_start = {
        let data = std::fs::read(&path).unwrap();
        super::walk(&data).records[1].0 as u64
    };
    let cut_at = at.offset + padding_at as u64 + 1000;
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(cut_at)
        .unwrap();

    let (spool, found) = open(dir, BIG_SEGMENT);
    assert!(!found.contains_key(&forged_env.id), "a record from a body was replayed");
    assert!(!found.contains_key(&attacker.id), "the torn record was taken");
    assert_eq!(
        found.keys().copied().collect::<Vec<_>>(),
        [victim.id],
        "the victim is still queued"
    );
    assert_eq!(
        found[&victim.id].states,
        [RcptState::Pending, RcptState::Pending],
        "a Status from a body changed the victim"
    );
    assert_matches_stored(&spool, &found, &stored);
    assert_eq!(file_len(&path), record_start, "the torn record is cut at its start");
    assert_eq!(spool.damaged(), 0, "a torn tail is not damage");
    assert!(!dir.join("damaged").exists());
}

#[tokio::test]
async fn a_length_damaged_to_a_huge_value_sets_the_good_tail_aside_instead_of_dropping_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (spool, _) = open(dir, BIG_SEGMENT);
    let mut refs = Vec::new();
    for id in 1..=3u64 {
        refs.push(
            spool
                .store(&envelope(id, &["r@example.org"]), &body(id, 1000))
                .await
                .unwrap(),
        );
    }
    close(spool).await;
    let path = segment_path(dir, refs[0].segment);
    let mut data = std::fs::read(&path).unwrap();
    let b_start = (refs[0].offset + refs[0].len) as usize;
    // Length field of B: now far past the end of the file, which alone would look torn.
    data[b_start + 8] = 0x7f;
    std::fs::write(&path, &data).unwrap();

    let (spool, found) = open(dir, BIG_SEGMENT);
    assert_eq!(found.keys().copied().collect::<Vec<_>>(), [QueueId(1)]);
    assert_eq!(
        spool.damaged(),
        1,
        "the header CRC tells a damaged length from a torn record"
    );
    let aside = std::fs::read(super::recover::damaged_path(dir, refs[0].segment, b_start)).unwrap();
    assert_eq!(aside, &data[b_start..], "B and C are kept for inspection");
}

#[tokio::test]
async fn damage_in_an_older_segment_sets_aside_only_its_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut stored = BTreeMap::new();
    // Segments small enough that every store starts a new one.
    let (spool, _) = open(dir, 1500);
    let mut refs = Vec::new();
    for id in 1..=3u64 {
        let env = envelope(id, &["r@example.org"]);
        let b = body(id, 1000);
        refs.push(spool.store(&env, &b).await.unwrap());
        stored.insert(env.id, (env, b));
    }
    close(spool).await;
    assert!(refs[0].segment < refs[1].segment && refs[1].segment < refs[2].segment);
    let path = segment_path(dir, refs[1].segment);
    let mut data = std::fs::read(&path).unwrap();
    data[refs[1].offset as usize + 10] ^= 1;
    std::fs::write(&path, &data).unwrap();

    // B is the only record of its segment and fails its CRC: in the newest segment that is a torn
    // tail, in an older one it is damage, kept aside.
    let (spool, found) = open(dir, 1500);
    assert_eq!(found.keys().copied().collect::<Vec<_>>(), [QueueId(1), QueueId(3)]);
    assert_matches_stored(&spool, &found, &stored);
    assert_eq!(spool.damaged(), 1);
    assert_eq!(file_len(&path), 0);
    let start = super::walk(&data).end;
    assert_eq!(start, super::End::Torn { at: 0 });
    assert_eq!(
        std::fs::read(super::recover::damaged_path(dir, refs[1].segment, 0)).unwrap(),
        data
    );
}

#[tokio::test]
async fn segments_in_the_first_format_are_still_read() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::create_dir_all(dir).unwrap();
    // The first format: `SGR1`, and no header CRC.
    let legacy = |rec: Vec<u8>| {
        let mut out = record::LEGACY_MAGIC.to_vec();
        out.extend_from_slice(&rec[4..13]);
        out.extend_from_slice(&rec[record::HEADER_LEN..]);
        out
    };
    let env = envelope(7, &["r@example.org", "s@example.org"]);
    let b = body(7, 600);
    let mut message = Vec::new();
    record::encode_message(&env, &[RcptState::Pending; 2], &b, None, &mut message);
    let mut status = Vec::new();
    record::encode_status(env.id, &[(1, RcptState::Delivered)], &mut status);
    let mut seg = legacy(message);
    seg.extend_from_slice(&legacy(status));
    std::fs::write(segment_path(dir, 1), &seg).unwrap();

    let (spool, found) = open(dir, BIG_SEGMENT);
    assert_eq!(found.keys().copied().collect::<Vec<_>>(), [env.id]);
    assert_eq!(found[&env.id].states, [RcptState::Pending, RcptState::Delivered]);
    assert_eq!(spool.read_body(&found[&env.id].body).unwrap(), b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn close_waits_for_everything_handed_to_the_committer() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (spool, _) = open(dir, BIG_SEGMENT);
    let spool = Arc::new(spool);
    let mut tasks = Vec::new();
    for id in 1..=200u64 {
        let spool = spool.clone();
        tasks.push(tokio::spawn(async move {
            let env = envelope(id, &["r@example.org"]);
            spool.store(&env, &body(id, 20_000)).await.map(|_| id)
        }));
    }
    // Close while stores are still arriving (some written, most not yet): each one is either
    // written and acknowledged, or refused; none is left half done.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while spool.stats().0 < 20 {
        assert!(tokio::time::Instant::now() < deadline, "stores never got going");
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    assert!(spool.close().await);
    assert!(!spool.close().await, "closing twice");
    let mut acked = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(id) => acked.push(QueueId(id)),
            Err(e) => assert!(matches!(e, super::SpoolError::Closed), "{e}"),
        }
    }
    assert!(matches!(
        spool.store(&envelope(999, &["r@example.org"]), b"late").await,
        Err(super::SpoolError::Closed)
    ));
    for (seg, end) in super::segment_ends(dir).unwrap() {
        assert_eq!(end, super::End::Clean, "segment {seg}");
    }
    let (_spool, found) = open(dir, BIG_SEGMENT);
    acked.sort();
    assert!(!acked.is_empty(), "nothing was stored before the close");
    assert_eq!(
        found.keys().copied().collect::<Vec<_>>(),
        acked,
        "exactly the acknowledged messages are there"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_stores_share_fsyncs() {
    const N: u64 = 500;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let (spool, _) = open(&dir, BIG_SEGMENT);
    let spool = Arc::new(spool);
    let start = std::time::Instant::now();
    let tasks: Vec<_> = (1..=N)
        .map(|id| {
            let spool = spool.clone();
            tokio::spawn(async move {
                let env = envelope(id, &["r@example.org"]);
                spool.store(&env, &body(id, 1000)).await
            })
        })
        .collect();
    let mut refs = Vec::new();
    for t in tasks {
        refs.push(t.await.expect("task").expect("store"));
    }
    let elapsed = start.elapsed();
    let (records, fsyncs) = spool.stats();
    eprintln!("group commit: {records} records, {fsyncs} fsyncs, {elapsed:?}");
    assert_eq!(records, N, "every store was written exactly once");
    assert!(fsyncs >= 1);
    // Each fsync covered on average at least two records; one fsync per record would mean no
    // group commit at all. (Measured here: a handful of fsyncs for 500 records.)
    assert!(
        fsyncs <= N / 2,
        "group commit did not batch: {fsyncs} fsyncs for {records} records"
    );
    // No two records share a place.
    let mut offsets: Vec<(u64, u64)> = refs.iter().map(|r| (r.segment, r.offset)).collect();
    offsets.sort_unstable();
    offsets.dedup();
    assert_eq!(offsets.len(), N as usize);

    let spool = Arc::into_inner(spool).expect("tasks are done");
    close(spool).await;
    let (spool, found) = open(&dir, BIG_SEGMENT);
    assert_eq!(found.len() as u64, N);
    for (id, r) in &found {
        assert_eq!(spool.read_body(&r.body).unwrap(), body(id.0, 1000));
    }
}

#[tokio::test]
async fn many_messages_over_tiny_segments_are_all_recovered() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut stored = BTreeMap::new();
    let mut refs: BTreeMap<QueueId, BodyRef> = BTreeMap::new();
    let (spool, _) = open(dir, 4096);
    for id in 1..=300u64 {
        let env = envelope(id, &["r@example.org", "s@example.org"]);
        // Mostly small, some bigger than a whole segment.
        let len = if id % 50 == 0 {
            10_000
        } else {
            100 + (id as usize * 37) % 1900
        };
        let b = body(id, len);
        refs.insert(env.id, spool.store(&env, &b).await.unwrap());
        stored.insert(env.id, (env, b));
        if id % 3 == 0 {
            spool.update(QueueId(id), &[(1, RcptState::Delivered)]).await.unwrap();
        }
    }
    // A third of them are finished: they must not come back, and must not take others along.
    for id in (1..=300u64).filter(|id| id % 7 == 0) {
        spool.done(QueueId(id), &refs[&QueueId(id)]).await.unwrap();
        stored.remove(&QueueId(id));
    }
    close(spool).await;
    let files = segments(dir);
    eprintln!("rotation: {} segment files", files.len());
    assert!(files.len() > 50, "tiny segments rotate: {files:?}");
    for &id in &files {
        let len = file_len(&segment_path(dir, id));
        assert!(
            len <= 4096 || len > 10_000,
            "segment {id} has {len} bytes: only a single oversized record may exceed the size"
        );
    }

    let (spool, found) = open(dir, 4096);
    assert_eq!(
        found.keys().copied().collect::<Vec<_>>(),
        stored.keys().copied().collect::<Vec<_>>()
    );
    assert_matches_stored(&spool, &found, &stored);
    for (id, r) in &found {
        let want = if id.0 % 3 == 0 {
            [RcptState::Pending, RcptState::Delivered]
        } else {
            [RcptState::Pending, RcptState::Pending]
        };
        assert_eq!(r.states, want, "states of {id}");
    }
}

#[tokio::test]
async fn relocated_message_is_recovered_once_with_later_states_and_frees_its_old_segment() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (spool, _) = open(dir, 4096);
    let env = envelope(1, &["a@example.org", "b@example.org", "c@example.org"]);
    let b = body(1, 3000);
    let first = spool.store(&env, &b).await.unwrap();
    spool.update(env.id, &[(0, RcptState::Delivered)]).await.unwrap();
    // Traffic that comes and goes pushes the current segment on.
    for id in 2..6u64 {
        let r = spool
            .store(&envelope(id, &["x@example.org"]), &body(id, 3000))
            .await
            .unwrap();
        spool.done(QueueId(id), &r).await.unwrap();
    }
    let states = [RcptState::Delivered, RcptState::Pending, RcptState::Pending];
    let moved = spool.relocate(&env, &states, &b, &first, false).await.unwrap();
    assert!(moved.segment > first.segment);
    // A state written after the move applies to the new copy.
    spool.update(env.id, &[(2, RcptState::Failed)]).await.unwrap();
    barrier(&spool).await;
    assert!(
        !segments(dir).contains(&first.segment),
        "the old segment is freed: {:?}",
        segments(dir)
    );
    drop(spool);

    let (spool, found) = open(dir, 4096);
    assert_eq!(found.keys().copied().collect::<Vec<_>>(), [env.id], "recovered once");
    let r = &found[&env.id];
    assert_eq!(r.body, moved);
    assert_eq!(r.states, [RcptState::Delivered, RcptState::Pending, RcptState::Failed]);
    assert_eq!(spool.read_body(&r.body).unwrap(), b);
}

/// A message received into an incoming file: it is spooled as a record with its header section
/// and a link to the body file, survives a reopen whole, and its body file goes with `done`.
/// Files that nothing live names (a crash's leftovers) are removed at open.
#[tokio::test]
async fn a_large_message_keeps_its_body_in_a_file_of_its_own() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("spool");
    let (spool, _) = open(&dir, BIG_SEGMENT);
    let env = envelope(9, &["a@example.org"]);
    let whole = body(9, 300_000);
    let mut incoming = super::Incoming::new(Vec::new(), &spool.incoming_dir(), QueueId(9), 64 << 10, 1024);
    for piece in whole.chunks(10_000) {
        incoming.buf.extend_from_slice(piece);
        incoming.settle().await.unwrap();
        assert!(incoming.in_memory() < (64 << 10) + 1024 + 10_000 + 256 * 1024 + 1);
    }
    assert!(incoming.spilled());
    let content = incoming.finish().await.unwrap();
    let head_len = whole.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(content.head, &whole[..head_len]);
    assert_eq!(content.len(), whole.len() as u64);
    let at = spool.store_content(&env, &content).await.expect("store");
    let ext = at.ext.expect("a body file");
    assert_eq!((at.len, ext.len), (head_len as u64, (whole.len() - head_len) as u64));
    // The incoming name goes with the content; the spooled link stays.
    let spill_path = content.body.as_ref().unwrap().spill.path.clone();
    drop(content);
    assert!(!spill_path.exists());
    let body_file = super::body_path(&dir, 9);
    assert!(body_file.exists());
    // Leftovers of a crash: an incoming file and a body file no record names.
    std::fs::write(spool.incoming_dir().join("00000000000000aa"), b"half a message").unwrap();
    std::fs::write(super::body_path(&dir, 0xbb), b"an orphan").unwrap();
    close(spool).await;

    let (spool, found) = open(&dir, BIG_SEGMENT);
    let r = &found[&env.id];
    assert_eq!(r.body, at);
    assert_eq!(spool.read_whole(&r.body).await.unwrap(), whole);
    assert_eq!(super::inspect(&dir).unwrap()[0].1, whole);
    assert!(
        !spool.incoming_dir().join("00000000000000aa").exists(),
        "incoming leftover kept"
    );
    assert!(!super::body_path(&dir, 0xbb).exists(), "orphan body kept");
    assert!(body_file.exists(), "a live message's body was removed");

    // Compaction keeps the body file; done removes it.
    let moved = spool
        .relocate(&env, &r.states, &whole[..head_len], &r.body, false)
        .await
        .unwrap();
    assert_eq!(moved.ext, at.ext);
    spool.done(env.id, &moved).await.unwrap();
    assert!(!body_file.exists(), "the body file outlived its message");
    close(spool).await;
    let (_spool, found) = open(&dir, BIG_SEGMENT);
    assert!(found.is_empty());
}

/// A small message stays in memory whole and in its record.
#[tokio::test]
async fn a_small_message_is_not_spilled() {
    let tmp = tempfile::tempdir().unwrap();
    let mut incoming = super::Incoming::new(b"Received: x\r\n".to_vec(), tmp.path(), QueueId(1), 64 << 10, 1024);
    incoming.buf.extend_from_slice(&body(1, 60_000));
    incoming.settle().await.unwrap();
    assert!(!incoming.spilled());
    let content = incoming.finish().await.unwrap();
    assert!(content.body.is_none());
    assert_eq!(content.head.len(), 60_000 + 13);
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
}

/// A hold record decodes to what was encoded, and a damaged flag byte is not taken for one.
#[test]
fn hold_record_round_trips() {
    for held in [true, false] {
        let mut bytes = Vec::new();
        record::encode_hold(QueueId(77), held, &mut bytes);
        match record::decode(&bytes) {
            record::Decoded::Record(record::Record::Hold { id, held: got }, used) => {
                assert_eq!((id, got, used), (QueueId(77), held, bytes.len()));
            }
            other => panic!("not a hold record: {other:?}"),
        }
    }
    let mut bytes = Vec::new();
    record::encode_hold(QueueId(77), true, &mut bytes);
    let last = bytes.len() - 1;
    bytes[last] = 7;
    assert!(matches!(record::decode(&bytes), record::Decoded::BadRecord { .. }));
}

/// Recovery restores the held flag, the last hold or release wins, and a relocated copy (which
/// frees the segment with the first hold record) stays held.
#[tokio::test]
async fn hold_survives_recovery_and_relocation() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (spool, _) = open(dir, 4096);
    let (held, released) = (envelope(1, &["a@example.org"]), envelope(2, &["b@example.org"]));
    let b = body(1, 3000);
    let first = spool.store(&held, &b).await.unwrap();
    spool.store(&released, &body(2, 100)).await.unwrap();
    spool.hold(held.id, true).await.unwrap();
    spool.hold(released.id, true).await.unwrap();
    spool.hold(released.id, false).await.unwrap();
    close(spool).await;
    let (spool, found) = open(dir, 4096);
    assert!(found[&held.id].held, "the hold outlives a restart");
    assert!(!found[&released.id].held, "the release too");
    for id in 3..6u64 {
        let r = spool
            .store(&envelope(id, &["x@example.org"]), &body(id, 3000))
            .await
            .unwrap();
        spool.done(QueueId(id), &r).await.unwrap();
    }
    spool.done(released.id, &found[&released.id].body).await.unwrap();
    let moved = spool
        .relocate(&held, &[RcptState::Pending], &b, &first, true)
        .await
        .unwrap();
    barrier(&spool).await;
    assert!(!segments(dir).contains(&first.segment), "{:?}", segments(dir));
    close(spool).await;
    let (_, found) = open(dir, 4096);
    assert_eq!(found[&held.id].body, moved);
    assert!(found[&held.id].held, "the relocated copy is still held");
}
