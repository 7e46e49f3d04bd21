//! End-to-end limits and partial outcomes: connection caps (per client address and total),
//! a pool whose first server is down, one refused recipient among three, `max_recipients`.

mod support;

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};

use support::{
    Gate, GateConfig, PyTranscript, SOON, Sink, Upstream, connect_from, header_values, message, read_line,
    read_to_close, smtplib, smtplib_send, wait_until, with_pool_servers,
};

fn loopback(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// A Python string literal (JSON syntax, which Python accepts) for plain ASCII text.
fn py(text: &str) -> String {
    format!("{text:?}")
}

/// smtplib from the loopback address `from`: connects and reports the greeting, then checks
/// the connection is closed (expected after a `421`).
fn refused_from(gate: SocketAddr, from: IpAddr) -> PyTranscript {
    smtplib(
        gate,
        &format!(
            "s = smtplib.SMTP(timeout=60, source_address=({from}, 0))
code, msg = s.connect(HOST, PORT)
show('CONNECT', code, msg)
try:
    code, msg = s.noop()
    show('NOOP', code, msg)
except smtplib.SMTPServerDisconnected as e:
    print('CLOSED', e, flush=True)
",
            from = py(&from.to_string())
        ),
    )
}

/// smtplib from the loopback address `from`: one message to bob@example.org.
fn send_from(gate: SocketAddr, from: IpAddr, message_id: &str) -> PyTranscript {
    let msg = message(message_id, "limits", "After a place came free.");
    smtplib(
        gate,
        &format!(
            "s = smtplib.SMTP(timeout=60, source_address=({from}, 0))
code, msg = s.connect(HOST, PORT)
show('CONNECT', code, msg)
code, msg = s.ehlo('client.example.test')
show('EHLO', code, msg)
send(s, 'alice@example.test', ['bob@example.org'], {msg})
quit(s)
",
            from = py(&from.to_string()),
            msg = py(&msg)
        ),
    )
}

fn was_refused_and_closed(ran: &PyTranscript) {
    assert!(ran.succeeded(), "{ran}");
    assert!(ran.reply("CONNECT").starts_with("421 4.7.0"), "{ran}");
    assert!(
        ran.replies("NOOP").is_empty() && ran.stdout.lines().any(|l| l.starts_with("CLOSED")),
        "connection still open after 421:\n{ran}"
    );
}

/// Whether smtplib's message went through (false when the connection was refused).
fn delivered_to_gate(ran: &PyTranscript) -> bool {
    ran.replies("END-OF-DATA")
        .first()
        .is_some_and(|r| r.starts_with("250 "))
}

/// A plain connection that got the greeting, so it holds a place at the gate.
fn held(from: IpAddr, gate: SocketAddr) -> TcpStream {
    let stream = connect_from(from, gate);
    let greeting = read_line(&stream);
    assert!(greeting.starts_with("220 "), "greeting: {greeting:?}");
    stream
}

/// Ends a held connection politely and checks it was still being served.
fn quit(mut stream: TcpStream) {
    stream.write_all(b"QUIT\r\n").expect("send QUIT");
    let reply = read_line(&stream);
    assert!(reply.starts_with("221 "), "QUIT: {reply:?}");
}

#[test]
fn third_connection_from_one_address_gets_421_until_one_closes() {
    let sink = Sink::start();
    let gate = Gate::start(
        &GateConfig::relay_to(sink.addr())
            .listener("max_connections_per_ip = 2")
            .to_toml(),
    );
    let addr = gate.smtp_addr();
    let ip = loopback(1);
    let first = held(ip, addr);
    let second = held(ip, addr);

    was_refused_and_closed(&refused_from(addr, ip));
    // The raw view of the same: the 421 line, then the end of the connection.
    let third = connect_from(ip, addr);
    let said = read_to_close(&third);
    assert!(said.starts_with("421 4.7.0 "), "{said:?}");
    assert_eq!(said.lines().count(), 1, "{said:?}");
    assert!(gate.metric("smtpgate_connections_refused_total") >= 2.0);

    drop(first);
    let mut last = None;
    let accepted = wait_until(SOON, || {
        let ran = send_from(addr, ip, "per-ip-after@example.test");
        let ok = delivered_to_gate(&ran);
        last = Some(ran);
        ok
    });
    assert!(accepted, "no place came free: {}", last.unwrap());
    sink.wait_for_messages(1, SOON);
    assert_eq!(sink.message_ids(), ["<per-ip-after@example.test>"]);
    quit(second);
}

#[test]
fn fourth_connection_overall_gets_421_until_one_closes() {
    let sink = Sink::start();
    let gate = Gate::start(
        &GateConfig::relay_to(sink.addr())
            .listener("max_connections = 3")
            .to_toml(),
    );
    let addr = gate.smtp_addr();
    // Three different client addresses, so only the total cap can bite.
    let one = held(loopback(1), addr);
    let two = held(loopback(2), addr);
    let three = held(loopback(3), addr);

    was_refused_and_closed(&refused_from(addr, loopback(4)));
    was_refused_and_closed(&refused_from(addr, loopback(1)));
    assert!(gate.metric("smtpgate_connections_refused_total") >= 2.0);

    drop(two);
    let mut last = None;
    let accepted = wait_until(SOON, || {
        let ran = send_from(addr, loopback(4), "total-after@example.test");
        let ok = delivered_to_gate(&ran);
        last = Some(ran);
        ok
    });
    assert!(accepted, "no place came free: {}", last.unwrap());
    sink.wait_for_messages(1, SOON);
    assert_eq!(sink.message_ids(), ["<total-after@example.test>"]);
    quit(one);
    quit(three);
}

/// An address on 127.0.0.1 where nothing listens (a port the OS just handed out and that
/// was closed again).
fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    listener.local_addr().expect("local_addr")
}

#[test]
fn pool_skips_a_server_that_refuses_connections_without_waiting_for_a_retry() {
    let sink = Sink::start();
    let dead = closed_port();
    // A retry would come only after an hour: the message must go through on the first
    // attempt, to the second server.
    let toml = GateConfig::relay_to(sink.addr()).retry(&["1h"]).to_toml();
    let gate = Gate::start(&with_pool_servers(&toml, sink.addr(), &[dead, sink.addr()]));

    let sent = smtplib_send(
        gate.smtp_addr(),
        "alice@example.test",
        &["bob@example.org"],
        &message("failover@example.test", "failover", "Second server."),
    );

    assert!(sent.reply("END-OF-DATA").starts_with("250 "), "{sent}");
    sink.wait_for_messages(1, SOON);
    assert_eq!(sink.message_ids(), ["<failover@example.test>"]);
    assert!(
        wait_until(SOON, || gate
            .try_metric("smtpgate_messages_delivered_total")
            .is_some_and(|v| v >= 1.0)),
        "{}",
        gate.metrics()
    );
    assert_eq!(gate.metric("smtpgate_messages_deferred_total"), 0.0);
}

#[test]
fn one_refused_recipient_of_three_gets_a_dsn_and_the_other_two_are_delivered() {
    let upstream = Upstream::start();
    let gate = Gate::start(&GateConfig::relay_to(upstream.addr()).to_toml());
    let rcpts = ["ok1@example.org", "reject-rcpt@example.org", "ok2@example.org"];

    let sent = smtplib_send(
        gate.smtp_addr(),
        "alice@example.test",
        &rcpts,
        &message("partial@example.test", "partial", "Two of three."),
    );

    assert!(sent.reply("END-OF-DATA").starts_with("250 "), "{sent}");
    for rcpt in sent.replies("RCPT") {
        assert!(rcpt.starts_with("250 "), "{sent}");
    }
    // Wait for the message to be finished (delivered, bounced, DSN delivered too).
    let settled = wait_until(SOON, || {
        upstream.messages().len() >= 2 && gate.try_metric("smtpgate_queue_depth") == Some(0.0)
    });
    assert!(settled, "upstream got {:#?}\n{}", upstream.messages(), gate.metrics());
    let messages = upstream.messages();
    assert_eq!(messages.len(), 2, "{messages:#?}");

    let original: Vec<_> = messages
        .iter()
        .filter(|m| m.mail_from == "alice@example.test")
        .collect();
    assert_eq!(original.len(), 1, "{messages:#?}");
    assert_eq!(original[0].rcpt_addresses(), ["ok1@example.org", "ok2@example.org"]);
    assert!(original[0].text().contains("Message-ID: <partial@example.test>"));

    let dsns: Vec<_> = messages.iter().filter(|m| m.mail_from.is_empty()).collect();
    assert_eq!(dsns.len(), 1, "{messages:#?}");
    assert_eq!(dsns[0].rcpt_addresses(), ["alice@example.test"]);
    let dsn = dsns[0].text();
    let final_rcpts: Vec<&str> = dsn
        .lines()
        .filter(|l| l.to_ascii_lowercase().starts_with("final-recipient:"))
        .collect();
    assert_eq!(final_rcpts.len(), 1, "{dsn}");
    assert!(final_rcpts[0].contains("reject-rcpt@example.org"), "{dsn}");
    assert!(
        !dsn.contains("ok1@example.org") && !dsn.contains("ok2@example.org"),
        "the DSN names a delivered recipient:\n{dsn}"
    );
    assert!(dsn.contains("550 5.1.1"), "{dsn}");
    assert_eq!(upstream.attempts_for("reject-rcpt@example.org"), 1);
    assert_eq!(gate.metric("smtpgate_messages_bounced_total"), 1.0);
    assert_eq!(gate.metric("smtpgate_dsn_generated_total"), 1.0);
}

#[test]
fn recipients_past_max_recipients_get_452_and_the_rest_are_delivered() {
    let sink = Sink::start();
    let gate = Gate::start(
        &GateConfig::relay_to(sink.addr())
            .listener("max_recipients = 2")
            .to_toml(),
    );
    let msg = message("max-rcpts@example.test", "three", "Only two may have it.");

    let ran = smtplib(
        gate.smtp_addr(),
        &format!(
            "s = connect()
refused = s.sendmail('alice@example.test', ['r1@example.org', 'r2@example.org', 'r3@example.org'], {msg})
for rcpt, (code, text) in sorted(refused.items()):
    show('REFUSED', code, rcpt + ' ' + text.decode())
quit(s)
",
            msg = py(&msg)
        ),
    );

    assert!(ran.succeeded(), "{ran}");
    assert_eq!(
        ran.replies("REFUSED"),
        ["452 r3@example.org 4.5.3 too many recipients"],
        "{ran}"
    );
    let arrived = sink.wait_for_messages(1, SOON);
    assert_eq!(sink.message_ids(), ["<max-rcpts@example.test>"]);
    assert_eq!(
        header_values(&arrived[0], "X-Rcpt-Args"),
        ["<r1@example.org>", "<r2@example.org>"],
        "{}",
        arrived[0]
    );
}

/// Sends one command and reads its whole reply (every line); returns the last line.
fn command(stream: &mut TcpStream, line: &str) -> String {
    stream.write_all(line.as_bytes()).expect("send");
    loop {
        let reply = read_line(stream);
        if reply.len() < 4 || reply.as_bytes()[3] != b'-' {
            return reply;
        }
    }
}

/// The node-wide memory budget for message content (`[spool] memory_budget`): while one client
/// holds most of it in an unfinished DATA, another client's message that would go over it gets
/// `452 4.3.1` (and nothing of it is delivered), new transactions get `452 4.3.1` at MAIL once
/// the budget is used up, and everything goes through again once the first message is done.
#[test]
fn messages_over_the_memory_budget_wait_with_452() {
    let upstream = Upstream::start();
    let toml = GateConfig::relay_to(upstream.addr())
        .listener("max_message_size = \"8MB\"")
        .to_toml()
        .replace(
            "[spool]\ndir = \"spool\"",
            "[spool]\ndir = \"spool\"\nmemory_budget = \"256KB\"",
        );
    let gate = Gate::start(&toml);
    let held_bytes = || gate.metric("smtpgate_message_memory_bytes");

    // Client A: 200 KB of an unfinished message (the budget is 262,144 bytes).
    let mut a = held(Ipv4Addr::LOCALHOST.into(), gate.smtp_addr());
    assert!(command(&mut a, "EHLO a.example\r\n").starts_with("250 "));
    assert!(command(&mut a, "MAIL FROM:<a@example.test>\r\n").starts_with("250 "));
    assert!(command(&mut a, "RCPT TO:<big@example.org>\r\n").starts_with("250 "));
    assert!(command(&mut a, "DATA\r\n").starts_with("354 "));
    let line = format!("{}\r\n", "a".repeat(98));
    a.write_all(b"Subject: big\r\nMessage-ID: <budget-a@x>\r\n\r\n")
        .unwrap();
    for _ in 0..2_000 {
        a.write_all(line.as_bytes()).unwrap();
    }
    assert!(
        wait_until(SOON, || held_bytes() >= 200_000.0),
        "A's content is held: {}",
        held_bytes()
    );

    // Client B: 70 KB would go over the budget.
    let body = "b".repeat(98) + "\n";
    let big = message("budget-b@x", "b", &body.repeat(700));
    let t = smtplib_send(gate.smtp_addr(), "b@example.test", &["b@example.org"], &big);
    assert!(t.reply("END-OF-DATA").starts_with("452 4.3.1"), "{t}");

    // 50 KB more from A leaves less than a sixteenth of the budget: a new transaction waits at
    // MAIL.
    for _ in 0..500 {
        a.write_all(line.as_bytes()).unwrap();
    }
    assert!(wait_until(SOON, || held_bytes() >= 250_000.0), "{}", held_bytes());
    let t = smtplib_send(
        gate.smtp_addr(),
        "c@example.test",
        &["c@example.org"],
        &message("budget-c@x", "c", "small"),
    );
    assert!(t.reply("MAIL").starts_with("452 4.3.1"), "{t}");

    // A finishes: its message is accepted, and the budget is free again.
    assert!(command(&mut a, ".\r\n").starts_with("250 "));
    quit(a);
    assert!(wait_until(SOON, || held_bytes() == 0.0), "{}", held_bytes());
    let t = smtplib_send(gate.smtp_addr(), "b@example.test", &["b@example.org"], &big);
    assert!(t.reply("END-OF-DATA").starts_with("250 "), "{t}");
    let got = upstream.wait_for(2, SOON);
    let ids: Vec<bool> = ["budget-a@x", "budget-b@x"]
        .iter()
        .map(|id| got.iter().any(|m| m.text().contains(id)))
        .collect();
    assert_eq!(ids, [true, true], "both messages delivered once accepted");
    assert_eq!(
        upstream.messages().len(),
        2,
        "nothing of the refused tries was delivered"
    );
}
