//! Large messages go to disk as they arrive (`[spool] spill_size`): the session keeps only the
//! header section in memory, the body is linked into the spool's `bodies/` and streamed from
//! there to the upstream, byte for byte, after a crash too; the file goes when the message is
//! delivered. DATA and BDAT alike; a header section too large to keep is refused; a content
//! filter still sees the whole message.
//!
//! Memory itself is measured by `scripts/bench.sh` (the large-message phase), not here.

mod support;

use std::path::Path;
use std::time::Duration;

use support::{Gate, GateConfig, SOON, SmtpConn, Upstream, wait_until};

const IO_TIMEOUT: Duration = Duration::from_secs(30);
const FROM: &str = "big@example.test";

/// A gate relaying to `upstream` that spills messages over 64 KB.
fn gate_toml(upstream: &Upstream, extra_spool: &str) -> String {
    GateConfig::relay_to(upstream.addr()).to_toml().replace(
        "[spool]\ndir = \"spool\"",
        &format!("[spool]\ndir = \"spool\"\nspill_size = \"64KB\"\n{extra_spool}"),
    )
}

/// A message of about `size` octets whose lines include dots at their start (stuffed on the
/// wire both ways) and lines of every length, so chunk edges fall anywhere.
fn big_message(id: &str, size: usize) -> String {
    let mut m = format!("From: <{FROM}>\r\nTo: <far@example.org>\r\nSubject: large\r\nMessage-ID: <{id}>\r\n\r\n");
    let mut n = 0usize;
    while m.len() < size {
        let len = (n * 37) % 997;
        let lead = if n.is_multiple_of(5) { "." } else { "" };
        m.push_str(lead);
        m.push_str(&"x".repeat(len));
        m.push_str(&format!(" line {n}\r\n"));
        n += 1;
    }
    m
}

fn files_in(dir: &Path) -> Vec<(String, u64)> {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok())
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    e.metadata().map_or(0, |m| m.len()),
                )
            })
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// The largest spool segment file.
fn largest_segment(spool: &Path) -> u64 {
    files_in(spool)
        .into_iter()
        .filter(|(n, _)| n.starts_with("seg-"))
        .map(|(_, len)| len)
        .max()
        .unwrap_or(0)
}

/// What the upstream got, less the `Received:` field the gate put first.
fn without_trace(data: &[u8]) -> &[u8] {
    assert!(
        data.starts_with(b"Received: "),
        "{:?}",
        String::from_utf8_lossy(&data[..80])
    );
    let mut at = 0;
    loop {
        let end = at + data[at..].windows(2).position(|w| w == b"\r\n").expect("line end") + 2;
        at = end;
        if data.get(at) != Some(&b'\t') && data.get(at) != Some(&b' ') {
            return &data[at..];
        }
    }
}

#[test]
fn a_large_message_is_kept_in_a_body_file_and_relayed_byte_for_byte_after_a_crash() {
    // The first attempt is refused (450 to RCPT), so the message waits in the queue.
    let upstream = Upstream::fail_first(1);
    let mut gate = Gate::start(&gate_toml(&upstream, ""));
    let rcpt = "tempfail-rcpt@example.org";
    let text = big_message("large-1@example.test", 3 << 20);
    let mut conn = SmtpConn::connect(gate.smtp_addr(), IO_TIMEOUT).expect("connect");
    conn.ehlo("client.example.test").expect("EHLO");
    let reply = conn.send_message(FROM, &[rcpt], &text).expect("send");
    assert!(reply.is(250), "{reply}");
    conn.quit();
    assert!(
        wait_until(SOON, || upstream.attempts_for(rcpt) >= 1
            && gate.metric("smtpgate_messages_deferred_total") >= 1.0),
        "no first attempt"
    );

    // Queued: the body is in a file of its own, not in a spool segment, and nothing is left
    // under incoming/.
    let spool = gate.spool_dir().to_path_buf();
    let bodies = files_in(&spool.join("bodies"));
    assert_eq!(bodies.len(), 1, "{bodies:?}");
    assert!(bodies[0].1 >= 3 << 20, "{bodies:?}");
    assert!(
        largest_segment(&spool) < 64 << 10,
        "segment {}",
        largest_segment(&spool)
    );
    assert_eq!(files_in(&spool.join("incoming")), vec![], "incoming/");

    // A crash, and the recovered message goes out whole.
    gate.kill9();
    gate.restart();
    let got = upstream.wait_for(1, SOON);
    assert_eq!(got.len(), 1);
    let body = without_trace(&got[0].data);
    assert_eq!(body.len(), text.len(), "length");
    assert!(body == text.as_bytes(), "content differs");
    assert!(
        wait_until(SOON, || files_in(&spool.join("bodies")).is_empty()),
        "the body file outlived its delivery: {:?}",
        files_in(&spool.join("bodies"))
    );
}

#[test]
fn a_large_bdat_message_in_chunks_arrives_whole() {
    let upstream = Upstream::start();
    let gate = Gate::start(&gate_toml(&upstream, ""));
    let text = big_message("large-bdat@example.test", 2 << 20);
    let mut conn = SmtpConn::connect(gate.smtp_addr(), IO_TIMEOUT).expect("connect");
    conn.ehlo("client.example.test").expect("EHLO");
    conn.expect(&format!("MAIL FROM:<{FROM}>"), 250).expect("MAIL");
    conn.expect("RCPT TO:<far@example.org>", 250).expect("RCPT");
    let bytes = text.as_bytes();
    // Uneven chunks: the first smaller than the spill size, the second crosses it.
    let cuts = [0, 40_000, 1_300_001, bytes.len()];
    for w in cuts.windows(2) {
        let chunk = &bytes[w[0]..w[1]];
        let last = w[1] == bytes.len();
        let cmd = format!("BDAT {}{}\r\n", chunk.len(), if last { " LAST" } else { "" });
        conn.send_raw(cmd.as_bytes()).expect("BDAT");
        conn.send_raw(chunk).expect("chunk");
        let reply = conn.reply().expect("reply");
        assert!(reply.is(250), "chunk {w:?}: {reply}");
    }
    conn.quit();
    let got = upstream.wait_for(1, SOON);
    assert!(without_trace(&got[0].data) == bytes, "content differs");
    let spool = gate.spool_dir().to_path_buf();
    assert!(
        wait_until(SOON, || files_in(&spool.join("bodies")).is_empty()
            && files_in(&spool.join("incoming")).is_empty()),
        "files left: {:?} {:?}",
        files_in(&spool.join("bodies")),
        files_in(&spool.join("incoming"))
    );
}

#[test]
fn a_header_section_too_large_to_keep_is_refused_and_leaves_nothing() {
    let upstream = Upstream::start();
    let toml = gate_toml(&upstream, "") + "\n[routing]\nbody_scan_limit = \"1KB\"\n";
    let gate = Gate::start(&toml);
    // 100 KB of header fields: more than the 64 KB spill size and the 1 KB of body kept.
    let mut text = String::from("Subject: many fields\r\n");
    for i in 0..1_000 {
        text.push_str(&format!("X-Pad-{i}: {}\r\n", "p".repeat(90)));
    }
    text.push_str("\r\nbody\r\n");
    let mut conn = SmtpConn::connect(gate.smtp_addr(), IO_TIMEOUT).expect("connect");
    conn.ehlo("client.example.test").expect("EHLO");
    let reply = conn.send_message(FROM, &["far@example.org"], &text).expect("send");
    assert!(reply.is(552) && reply.to_string().contains("5.3.4"), "{reply}");
    // The session goes on: a normal message after it is taken.
    let small = "Subject: small\r\n\r\nhello\r\n";
    let reply = conn.send_message(FROM, &["far@example.org"], small).expect("send");
    assert!(reply.is(250), "{reply}");
    conn.quit();
    let got = upstream.wait_for(1, SOON);
    assert_eq!(got.len(), 1);
    assert!(got[0].text().contains("Subject: small"));
    assert_eq!(files_in(&gate.spool_dir().join("incoming")), vec![]);
}

#[test]
fn a_content_filter_reads_a_large_message_whole() {
    let upstream = Upstream::start();
    let toml = gate_toml(&upstream, "").replace(
        "relay_networks = [\"127.0.0.0/8\"]",
        "relay_networks = [\"127.0.0.0/8\"]\nfilters = [\"words\"]",
    ) + "\n[[filter]]\nname = \"words\"\nkind = \"content\"\n\
           body_rules = [{ regex = \"forbidden-at-the-end\", action = \"reject\" }]\n";
    let gate = Gate::start(&toml);
    // The word is past the first megabyte: only a filter that reads the whole file finds it.
    let mut text = big_message("large-filter@example.test", 2 << 20);
    text.push_str("forbidden-at-the-end\r\n");
    let mut conn = SmtpConn::connect(gate.smtp_addr(), IO_TIMEOUT).expect("connect");
    conn.ehlo("client.example.test").expect("EHLO");
    let reply = conn.send_message(FROM, &["far@example.org"], &text).expect("send");
    assert!(reply.is(550) || reply.is(554), "{reply}");
    let clean = big_message("large-clean@example.test", 2 << 20);
    let reply = conn.send_message(FROM, &["far@example.org"], &clean).expect("send");
    assert!(reply.is(250), "{reply}");
    conn.quit();
    let got = upstream.wait_for(1, SOON);
    assert!(without_trace(&got[0].data) == clean.as_bytes(), "content differs");
    assert!(
        wait_until(SOON, || files_in(&gate.spool_dir().join("incoming")).is_empty()),
        "incoming/ not emptied"
    );
}
