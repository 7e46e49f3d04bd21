//! End-to-end session hardening (issue 10, section 5): sessions cannot be held or abused.
//!
//! - write timeouts: a client that never reads its replies is dropped;
//! - per-request deadlines: a command or a message trickled in is dropped (`421 4.4.2`);
//! - improper pipelining (Postfix's `smtpd_forbid_unauth_pipelining`): `554 5.5.0`, nothing taken;
//! - NUL octets: refused (`550 5.6.0`) or stripped, never relayed;
//! - mail loops: more than `max_hops` `Received:` fields get `554 5.4.6`, and a route pointing back
//!   at the gate ends;
//! - AUTH: failures counted per client address across connections, a lock-out (`454 4.7.0`),
//!   unknown users costing what known ones cost.

mod support;

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use support::{
    Gate, GateConfig, SOON, Sink, UsersFile, connect_from, free_port, message, read_line, read_to_close, smtplib,
    smtplib_send, swaks, toml_path, wait_until,
};

fn loopback(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// A Python string literal (JSON syntax, which Python accepts).
fn py(text: &str) -> String {
    format!("{text:?}")
}

/// A raw connection that read the greeting.
fn greeted(gate: SocketAddr) -> TcpStream {
    let stream = connect_from(loopback(1), gate);
    let greeting = read_line(&stream);
    assert!(greeting.starts_with("220 "), "greeting: {greeting:?}");
    stream
}

/// Reads one whole (multi-line) reply.
fn read_reply(stream: &TcpStream) -> String {
    let mut all = String::new();
    loop {
        let line = read_line(stream);
        all.push_str(&line);
        all.push('\n');
        if line.len() < 4 || line.as_bytes()[3] != b'-' {
            return all;
        }
    }
}

fn send(mut stream: &TcpStream, bytes: &[u8]) {
    stream.write_all(bytes).expect("send");
}

fn relay_gate(sink: &Sink, listener: &[&str]) -> Gate {
    let mut config = GateConfig::relay_to(sink.addr());
    for line in listener {
        config = config.listener(line);
    }
    Gate::start(&config.to_toml())
}

// ---- NUL octets --------------------------------------------------------------------------

#[test]
fn a_nul_in_message_content_is_refused_and_never_reaches_the_upstream() {
    let sink = Sink::start();
    let gate = relay_gate(&sink, &[]);
    let with_nul = message("nul@example.test", "nul", "before\0after");
    let clean = message("clean@example.test", "clean", "no NUL here");
    let ran = smtplib(
        gate.smtp_addr(),
        &format!(
            "s = connect()\nsend(s, 'alice@example.test', ['bob@example.org'], {})\nsend(s, 'alice@example.test', ['bob@example.org'], {})\nquit(s)\n",
            py(&with_nul),
            py(&clean)
        ),
    );
    assert!(ran.succeeded(), "{ran}");
    let ends = ran.replies("END-OF-DATA");
    assert_eq!(ends.len(), 2, "{ran}");
    assert!(ends[0].starts_with("550 5.6.0"), "{ran}");
    assert!(ends[1].starts_with("250 "), "{ran}");
    sink.wait_for_messages(1, SOON);
    assert_eq!(sink.message_ids(), ["<clean@example.test>"]);
}

#[test]
fn with_nul_bytes_strip_the_message_is_relayed_without_them() {
    let sink = Sink::start();
    let gate = relay_gate(&sink, &["nul_bytes = \"strip\""]);
    let sent = smtplib_send(
        gate.smtp_addr(),
        "alice@example.test",
        &["bob@example.org"],
        &message("strip@example.test", "strip", "before\0after\r\n\0.\r\nstill the body"),
    );
    assert!(sent.reply("END-OF-DATA").starts_with("250 "), "{sent}");
    let got = sink.wait_for_messages(1, SOON);
    assert!(!got[0].contains('\0'), "{:?}", got[0]);
    assert!(got[0].contains("beforeafter"), "{:?}", got[0]);
    assert!(got[0].contains("still the body"), "{:?}", got[0]);
}

// ---- Improper pipelining -----------------------------------------------------------------

#[test]
fn content_sent_before_the_354_is_not_taken_as_a_message() {
    let sink = Sink::start();
    let gate = relay_gate(&sink, &[]);
    let stream = greeted(gate.smtp_addr());
    send(&stream, b"EHLO client.example.test\r\n");
    assert!(read_reply(&stream).contains("PIPELINING"));
    send(
        &stream,
        b"MAIL FROM:<alice@example.test>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\nSubject: early\r\n\r\nbody\r\n.\r\n",
    );
    let said = read_to_close(&stream);
    let lines: Vec<&str> = said.lines().collect();
    assert_eq!(lines.len(), 3, "{said:?}");
    assert!(lines[0].starts_with("250 2.1.0"), "{said:?}");
    assert!(lines[1].starts_with("250 2.1.5"), "{said:?}");
    assert!(lines[2].starts_with("554 5.5.0"), "{said:?}");
    assert_eq!(gate.metric("smtpgate_messages_received_total"), 0.0);
}

#[test]
fn commands_behind_ehlo_or_after_helo_are_refused() {
    let sink = Sink::start();
    let gate = relay_gate(&sink, &[]);

    let stream = greeted(gate.smtp_addr());
    send(
        &stream,
        b"EHLO client.example.test\r\nMAIL FROM:<alice@example.test>\r\n",
    );
    let said = read_to_close(&stream);
    assert!(said.starts_with("554 5.5.0"), "{said:?}");
    assert_eq!(said.lines().count(), 1, "{said:?}");

    // HELO offers no PIPELINING: a group of commands is a protocol violation.
    let stream = greeted(gate.smtp_addr());
    send(&stream, b"HELO client.example.test\r\n");
    assert!(read_reply(&stream).starts_with("250 "));
    send(
        &stream,
        b"MAIL FROM:<alice@example.test>\r\nRCPT TO:<bob@example.org>\r\n",
    );
    let said = read_to_close(&stream);
    assert!(said.starts_with("554 5.5.0"), "{said:?}");
    assert_eq!(said.lines().count(), 1, "{said:?}");
}

/// RFC 2920 pipelining (MAIL, RCPT, DATA in one group, content after the 354) still works.
#[test]
fn proper_pipelining_is_still_accepted() {
    let sink = Sink::start();
    let gate = relay_gate(&sink, &[]);
    let server = gate.smtp_addr().to_string();
    let (status, transcript) = swaks(&[
        "--server",
        &server,
        "--pipeline",
        "--from",
        "alice@example.test",
        "--to",
        "one@example.org,two@example.org",
        "--header",
        "Subject: pipelined",
        "--body",
        "Pipelined properly.",
    ]);
    assert!(status.success(), "{transcript}");
    assert!(transcript.contains("PIPELINING"), "{transcript}");
    let got = sink.wait_for_messages(1, SOON);
    assert!(got[0].contains("Subject: pipelined"), "{}", got[0]);
}

// ---- Slow and silent clients -------------------------------------------------------------

/// A client that writes one byte at a time with `pause` between them (its way of talking,
/// not a wait for anything); write errors (the gate hung up) end it.
fn trickle(mut stream: &TcpStream, bytes: &[u8], pause: Duration) {
    for b in bytes {
        if stream.write_all(&[*b]).is_err() {
            return;
        }
        std::thread::sleep(pause);
    }
}

#[test]
fn a_command_trickled_in_is_dropped_after_command_timeout() {
    let sink = Sink::start();
    let gate = relay_gate(&sink, &["command_timeout = \"2s\""]);
    let stream = greeted(gate.smtp_addr());
    let writer = stream.try_clone().unwrap();
    // Each byte comes well within the 2s; the whole line does not.
    let t = std::thread::spawn(move || trickle(&writer, b"NOOP\r\n", Duration::from_millis(700)));
    let said = read_to_close(&stream);
    t.join().unwrap();
    assert!(said.starts_with("421 4.4.2"), "{said:?}");
    assert!(!said.contains("250"), "{said:?}");
}

#[test]
fn a_message_trickled_in_below_min_data_rate_is_dropped() {
    let sink = Sink::start();
    let gate = relay_gate(&sink, &["data_timeout = \"2s\"", "min_data_rate = 1000"]);
    let stream = greeted(gate.smtp_addr());
    send(&stream, b"EHLO client.example.test\r\n");
    read_reply(&stream);
    for (cmd, want) in [
        ("MAIL FROM:<alice@example.test>\r\n", "250"),
        ("RCPT TO:<bob@example.org>\r\n", "250"),
        ("DATA\r\n", "354"),
    ] {
        send(&stream, cmd.as_bytes());
        let reply = read_reply(&stream);
        assert!(reply.starts_with(want), "{cmd}: {reply}");
    }
    let writer = stream.try_clone().unwrap();
    // 40 lines of 50 octets, one every 300ms: about 170 octets a second, each read well within
    // data_timeout, the whole far below 1000 octets a second. Then the end of data.
    let t = std::thread::spawn(move || {
        let mut w = &writer;
        for _ in 0..40 {
            if w.write_all(&[b'x'; 48]).and_then(|_| w.write_all(b"\r\n")).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        let _ = w.write_all(b".\r\n");
    });
    let said = read_to_close(&stream);
    t.join().unwrap();
    assert!(said.starts_with("421 4.4.2"), "{said:?}");
    assert_eq!(gate.metric("smtpgate_messages_received_total"), 0.0);
}

#[test]
fn a_client_that_never_reads_its_replies_is_dropped_after_write_timeout() {
    let sink = Sink::start();
    let gate = relay_gate(&sink, &["write_timeout = \"2s\""]);
    // A small receive buffer, NOOPs sent as fast as the gate takes them, no reply ever read.
    // Once the gate's writes stall, it must hang up within write_timeout (and its own flush
    // at the end): the send then fails.
    let ran = smtplib(
        gate.smtp_addr(),
        "import socket, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
s.connect((HOST, PORT))
s.setblocking(False)
chunk = b'NOOP\\r\\n' * 1024
start = time.monotonic()
sent = 0
while time.monotonic() - start < 60:
    try:
        sent += s.send(chunk)
    except BlockingIOError:
        time.sleep(0.05)
    except OSError as e:
        print('CLOSED', type(e).__name__, sent, round(time.monotonic() - start, 1), flush=True)
        break
else:
    print('STILL-OPEN', sent, flush=True)
",
    );
    assert!(ran.succeeded(), "{ran}");
    assert!(ran.stdout.starts_with("CLOSED"), "{ran}");
}

// ---- Mail loops --------------------------------------------------------------------------

fn with_received(n: usize, id: &str) -> String {
    let mut m = String::new();
    for i in 0..n {
        m.push_str(&format!(
            "Received: from hop{i}.example.test by hop{}.example.test; Mon, 1 Jan 2024 00:00:00 +0000\r\n",
            i + 1
        ));
    }
    m + &message(id, "hops", "counted")
}

#[test]
fn more_received_fields_than_max_hops_get_554_5_4_6() {
    let sink = Sink::start();
    let gate = relay_gate(&sink, &["max_hops = 5"]);
    // The gate's own Received: field counts: 5 + 1 is over the limit, 4 + 1 is not.
    let looped = smtplib_send(
        gate.smtp_addr(),
        "alice@example.test",
        &["bob@example.org"],
        &with_received(5, "looped@example.test"),
    );
    assert!(looped.reply("END-OF-DATA").starts_with("554 5.4.6"), "{looped}");
    let fine = smtplib_send(
        gate.smtp_addr(),
        "alice@example.test",
        &["bob@example.org"],
        &with_received(4, "fine@example.test"),
    );
    assert!(fine.reply("END-OF-DATA").starts_with("250 "), "{fine}");
    sink.wait_for_messages(1, SOON);
    assert_eq!(sink.message_ids(), ["<fine@example.test>"]);
}

#[test]
fn a_route_that_points_back_at_the_gate_ends() {
    // The pool is the gate's own listener: every relay adds a Received: field, until the gate
    // refuses its own message; the bounce (null sender) takes the same loop and ends the same way.
    let port = free_port();
    let own = SocketAddr::new(loopback(1), port);
    let toml = GateConfig::relay_to(own).listener("max_hops = 4").to_toml().replacen(
        "name = \"inbound\"\naddress = \"127.0.0.1:0\"",
        &format!("name = \"inbound\"\naddress = \"{own}\""),
        1,
    );
    let gate = Gate::start(&toml);
    let sent = smtplib_send(
        own,
        "alice@example.test",
        &["bob@example.org"],
        &message("loop@example.test", "loop", "round and round"),
    );
    assert!(sent.reply("END-OF-DATA").starts_with("250 "), "{sent}");
    let ended = wait_until(SOON, || {
        gate.try_metric("smtpgate_messages_rejected_total")
            .is_some_and(|v| v >= 2.0)
            && gate.try_metric("smtpgate_queue_depth") == Some(0.0)
    });
    assert!(ended, "{}", gate.metrics());
    assert!(
        gate.metric("smtpgate_messages_bounced_total") >= 1.0,
        "{}",
        gate.metrics()
    );
}

// ---- AUTH --------------------------------------------------------------------------------

fn auth_gate(sink: &Sink, users: &UsersFile, extra: &str) -> Gate {
    relay_gate(
        sink,
        &[&format!(
            "auth = {{ users_file = {}, allow_plaintext = true{extra} }}",
            toml_path(&users.path)
        )],
    )
}

/// One connection from `from`, one AUTH PLAIN (smtplib's `login` would try LOGIN after a failed
/// PLAIN: two failures); prints `AUTH <code> <text>`.
fn login_from(gate: SocketAddr, from: IpAddr, user: &str, password: &str) -> String {
    let ran = smtplib(
        gate,
        &format!(
            "s = smtplib.SMTP(timeout=60, source_address=({from}, 0))
s.connect(HOST, PORT)
s.ehlo('client.example.test')
s.user, s.password = {user}, {password}
try:
    code, msg = s.auth('PLAIN', s.auth_plain)
except smtplib.SMTPAuthenticationError as e:
    code, msg = e.smtp_code, e.smtp_error
show('AUTH', code, msg)
",
            from = py(&from.to_string()),
            user = py(user),
            password = py(password),
        ),
    );
    assert!(ran.succeeded(), "{ran}");
    ran.reply("AUTH")
}

#[test]
fn auth_failures_across_connections_lock_the_client_address_out() {
    let sink = Sink::start();
    let users = UsersFile::create(&[("alice", "s3cret")]);
    let gate = auth_gate(&sink, &users, ", max_failures = 3, lockout = \"10m\"");
    let addr = gate.smtp_addr();
    for guess in ["one", "two", "three"] {
        let reply = login_from(addr, loopback(1), "alice", guess);
        assert!(reply.starts_with("535 5.7.8"), "{reply}");
    }
    // Three failures on three connections: now even the right password is not tried.
    let reply = login_from(addr, loopback(1), "alice", "s3cret");
    assert!(reply.starts_with("454 4.7.0"), "{reply}");
    // Another client address is not locked out.
    let reply = login_from(addr, loopback(2), "alice", "s3cret");
    assert!(reply.starts_with("235 "), "{reply}");
}

#[test]
fn an_unknown_user_costs_the_same_time_as_a_known_one() {
    let sink = Sink::start();
    let users = UsersFile::create(&[("alice", "s3cret")]);
    let gate = auth_gate(&sink, &users, ", max_failures = 1000");
    let ran = smtplib(
        gate.smtp_addr(),
        "import time, statistics
def attempt(user):
    s = smtplib.SMTP(timeout=60)
    s.connect(HOST, PORT)
    s.ehlo('client.example.test')
    start = time.perf_counter()
    s.user, s.password = user, 'wrong'
    try:
        s.auth('PLAIN', s.auth_plain)
    except smtplib.SMTPAuthenticationError:
        pass
    took = time.perf_counter() - start
    s.close()
    return took
known, unknown = [], []
for _ in range(7):
    known.append(attempt('alice'))
    unknown.append(attempt('nobody'))
print('KNOWN', statistics.median(known), flush=True)
print('UNKNOWN', statistics.median(unknown), flush=True)
",
    );
    assert!(ran.succeeded(), "{ran}");
    let median = |step: &str| ran.reply(step).parse::<f64>().unwrap_or_else(|_| panic!("{ran}"));
    let (known, unknown) = (median("KNOWN"), median("UNKNOWN"));
    // argon2 makes a known user's check take milliseconds; without the dummy hash an unknown
    // user's answer comes back at once.
    assert!(unknown >= known * 0.5, "known {known:.4}s, unknown {unknown:.4}s");
}
