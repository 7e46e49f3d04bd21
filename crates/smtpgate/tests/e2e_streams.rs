//! Streams end to end: a route puts a sender's mail in the `bulk` stream; bulk and transactional
//! mail to the same destination have their own queues, workers and shaping counters, so under a
//! bulk backlog of 100,000 messages a transactional message still leaves within a second.

mod support;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use support::{DnsServer, DnsTable, Gate, Upstream, message, smtp_source, smtplib_send, wait_until};

#[test]
fn a_transactional_message_leaves_within_a_second_under_a_bulk_backlog() {
    let upstream = Upstream::start();
    let dns = DnsServer::start(
        DnsTable::new()
            .mx("one.test", 10, "mx.one.test")
            .a("mx.one.test", Ipv4Addr::LOCALHOST),
    );
    let dir = tempfile::tempdir().unwrap();
    let shaping = dir.path().join("shaping.toml");
    std::fs::write(
        &shaping,
        "[domain.\"one.test\"]\nmax_message_rate = \"60/min\"\nmax_connections = 2\n",
    )
    .unwrap();
    let config = format!(
        "hostname = \"gate.example.test\"\nshutdown_timeout = \"5s\"\n\n[spool]\ndir = \"spool\"\n\n\
         [admin]\naddress = \"127.0.0.1:0\"\n\n[[listener]]\nname = \"inbound\"\naddress = \"127.0.0.1:0\"\n\
         relay_networks = [\"127.0.0.0/8\"]\nmax_connections = 100\nmax_connections_per_ip = 100\n\n\
         [dns]\nnameservers = [\"{dns}\"]\n\n[shaping]\nfile = {shaping:?}\n\n\
         [[stream]]\nname = \"bulk\"\n\n\
         [[route]]\nwhen = {{ sender = \"news@example.test\" }}\nstream = \"bulk\"\n\n\
         [queue]\nretry = [\"1s\"]\nsmtp_port = {port}\n",
        dns = dns.addr(),
        port = upstream.addr().port()
    );
    let gate = Gate::start(&config);

    // The bulk backlog: 100,000 messages from the newsletter sender, delivered at 60/min.
    let target = gate.smtp_addr().to_string();
    let (status, output) = smtp_source(
        &[
            "-s",
            "20",
            "-m",
            "100000",
            "-l",
            "200",
            "-f",
            "news@example.test",
            "-t",
            "reader@one.test",
            &target,
        ],
        Duration::from_secs(600),
    );
    assert!(status.is_some_and(|s| s.success()), "smtp-source: {status:?}\n{output}");
    // The backlog drains at 60/min while smtp-source runs, which takes longer on a loaded
    // machine: every message is queued or delivered, and nearly all are still queued.
    let depth = gate.metric("smtpgate_queue_depth");
    let delivered = upstream.messages().len() as f64;
    assert!(
        depth + delivered >= 100_000.0,
        "every message is queued or delivered: {depth} + {delivered}"
    );
    assert!(depth >= 99_000.0, "the bulk backlog is in the queue: {depth}");

    // A transactional message to the same domain goes out at once.
    let before = upstream.messages().len();
    // Timed from before the client starts (Python's start-up included): an upper bound.
    let started = Instant::now();
    let sent = smtplib_send(
        gate.smtp_addr(),
        "alice@example.test",
        &["bob@one.test"],
        &message("reset-1@example.test", "Your password reset", "Click here."),
    );
    assert!(sent.reply("END-OF-DATA").starts_with("250 "), "{sent}");
    let arrived = wait_until(Duration::from_secs(10), || {
        upstream.messages()[before..]
            .iter()
            .any(|m| m.rcpt_addresses() == ["bob@one.test"])
    });
    assert!(arrived, "the transactional message never arrived");
    let m = upstream
        .messages()
        .into_iter()
        .find(|m| m.rcpt_addresses() == ["bob@one.test"])
        .unwrap();
    let took = m.at.duration_since(started);
    assert!(
        took < Duration::from_secs(1),
        "the transactional message took {took:?} behind the backlog"
    );
    let bulk_sent = upstream.messages().len() - 1;
    assert!(bulk_sent < 1000, "bulk kept its own rate: {bulk_sent} delivered");
}
