//! Inline proxy mode end to end: a `mode = "proxy"` listener forwards each transaction live to
//! its routed upstream, relays the upstream's answer to each recipient and to the end of data,
//! runs the before-queue filters first, and spools nothing. Clients are Python's smtplib and swaks;
//! upstreams are the scriptable one (`tests/support/upstream.rs`) and Postfix's smtp-sink.

mod support;

use std::net::{Ipv4Addr, SocketAddr, TcpListener};

use support::{Gate, SOON, Sink, Upstream, header_values, smtplib, swaks, wait_until};

/// A gate with one proxy listener named "proxy", the given pools (name, server) and extra TOML
/// (routes, filters); the last route sends everything else to the first pool.
fn proxy_gate(pools: &[(&str, SocketAddr)], listener: &[&str], extra: &str) -> Gate {
    Gate::start(&proxy_toml(pools, listener, extra))
}

fn proxy_toml(pools: &[(&str, SocketAddr)], listener: &[&str], extra: &str) -> String {
    let mut toml = String::from(
        "hostname = \"gate.example.test\"\nshutdown_timeout = \"5s\"\n\n[spool]\ndir = \"spool\"\n\n\
         [admin]\naddress = \"127.0.0.1:0\"\n\n[[listener]]\nname = \"proxy\"\naddress = \"127.0.0.1:0\"\n\
         relay_networks = [\"127.0.0.0/8\"]\nmode = \"proxy\"\n",
    );
    for line in listener {
        toml.push_str(line);
        toml.push('\n');
    }
    for (name, server) in pools {
        toml.push_str(&format!(
            "\n[[pool]]\nname = \"{name}\"\nservers = [\"{server}\"]\ntls = \"none\"\n"
        ));
    }
    toml.push_str(extra);
    toml.push_str(&format!("\n[[route]]\npool = \"{}\"\n", pools[0].0));
    toml
}

/// An address on 127.0.0.1 where nothing listens.
fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    listener.local_addr().expect("local_addr")
}

const PY_MESSAGES: &str = r#"
def msg(subject, body="Hello through the proxy.\r\n"):
    return f"From: alice@example.test\r\nTo: someone@example.org\r\nSubject: {subject}\r\n\r\n{body}"
"#;

fn nothing_spooled(gate: &Gate) {
    assert_eq!(
        gate.metric("smtpgate_messages_received_total"),
        0.0,
        "a proxy spools nothing"
    );
    assert_eq!(gate.metric("smtpgate_queue_depth"), 0.0);
}

/// The client gets the upstream's own answer to each RCPT and to each end of data; only what the
/// upstream accepted reaches it, with smtpgate's Received header; nothing is spooled.
#[test]
fn upstream_replies_reach_the_client() {
    let upstream = Upstream::start();
    let gate = proxy_gate(&[("main", upstream.addr())], &[], "");
    let script = format!(
        "{PY_MESSAGES}
s = connect()
send(s, 'alice@example.test', ['ok@example.org', 'reject-rcpt@example.org', 'tempfail-rcpt@example.org'], msg('one'))
send(s, 'alice@example.test', ['tempfail-data@example.org'], msg('two'))
send(s, 'alice@example.test', ['reject-data@example.org'], msg('three'))
send(s, 'alice@example.test', ['second@example.org'], msg('four'))
quit(s)
"
    );
    let t = smtplib(gate.smtp_addr(), &script);
    assert!(t.succeeded(), "{t}");
    assert_eq!(
        t.replies("RCPT"),
        [
            "250 2.1.5 Ok",
            "550 5.1.1 No such user (script)",
            "450 4.2.0 Mailbox temporarily unavailable (script)",
            "250 2.1.5 Ok",
            "250 2.1.5 Ok",
            "250 2.1.5 Ok",
        ],
        "{t}"
    );
    let ends = t.replies("END-OF-DATA");
    assert_eq!(ends.len(), 4, "{t}");
    assert!(ends[0].starts_with("250 2.0.0 Ok: queued as U"), "{t}");
    assert_eq!(ends[1], "451 4.3.0 Temporary failure by upstream script", "{t}");
    assert_eq!(ends[2], "554 5.6.0 Message rejected by upstream script", "{t}");
    assert!(ends[3].starts_with("250 2.0.0 Ok: queued as U"), "{t}");
    assert_ne!(ends[0], ends[3], "each answer is the upstream's own");

    let got = upstream.messages();
    assert_eq!(got.len(), 2, "{got:#?}");
    assert_eq!(got[0].rcpt_addresses(), ["ok@example.org"]);
    assert_eq!(got[0].mail_from, "alice@example.test");
    assert_eq!(got[1].rcpt_addresses(), ["second@example.org"]);
    let text = got[0].text();
    let received = header_values(&text, "Received");
    assert!(
        received[0].contains("from client.example.test") && received[0].contains("by gate.example.test"),
        "{received:?}"
    );
    assert_eq!(header_values(&text, "Subject"), ["one"]);
    nothing_spooled(&gate);
    assert_eq!(gate.metric("smtpgate_messages_proxied_total"), 2.0);
    assert_eq!(gate.metric("smtpgate_messages_proxy_refused_total"), 2.0);
}

/// Before-queue filters run before anything goes upstream: a card number is refused by DLP with
/// the upstream never seeing the message; a clean one gets the footer and the route's header.
#[test]
fn before_queue_filters_run_before_the_upstream_sees_the_message() {
    let upstream = Upstream::start();
    let filters = r#"
[[filter]]
name = "dlp"
kind = "dlp"
detect = ["card"]
action = "reject"

[[filter]]
name = "footer"
kind = "sanitize"
footer_text = "-- \nSent through the proxy."

[[route]]
when = { recipient_domain = "example.org" }
pool = "main"
add_headers = { X-Proxied = "yes" }
"#;
    let gate = proxy_gate(
        &[("main", upstream.addr())],
        &["filters = [\"dlp\", \"footer\"]"],
        filters,
    );
    let script = format!(
        "{PY_MESSAGES}
s = connect()
send(s, 'alice@example.test', ['bob@example.org'], msg('card', 'My card: 4111 1111 1111 1111\\r\\n'))
send(s, 'alice@example.test', ['bob@example.org'], msg('clean'))
quit(s)
"
    );
    let t = smtplib(gate.smtp_addr(), &script);
    assert!(t.succeeded(), "{t}");
    let ends = t.replies("END-OF-DATA");
    assert_eq!(ends.len(), 2, "{t}");
    assert!(ends[0].starts_with("550 5.7."), "DLP refuses the card: {t}");
    assert!(ends[1].starts_with("250 2.0.0 Ok: queued as U"), "{t}");

    let got = upstream.messages();
    assert_eq!(got.len(), 1, "only the clean message went upstream: {got:#?}");
    let text = got[0].text();
    assert_eq!(header_values(&text, "Subject"), ["clean"]);
    assert_eq!(header_values(&text, "X-Proxied"), ["yes"]);
    assert!(text.contains("Sent through the proxy."), "{text}");
    assert!(!text.contains("4111"), "{text}");
    nothing_spooled(&gate);
}

/// Each transaction goes to the upstream its first recipient is routed to; a recipient routed
/// elsewhere is deferred with 452 4.5.3 and goes through in its own transaction.
#[test]
fn recipients_are_routed_to_their_own_upstream() {
    let (a, b) = (Upstream::start(), Upstream::start());
    let routes = "\n[[route]]\nwhen = { recipient_domain = \"b.example\" }\npool = \"b\"\n";
    let gate = proxy_gate(&[("a", a.addr()), ("b", b.addr())], &[], routes);
    let script = format!(
        "{PY_MESSAGES}
s = connect()
send(s, 'alice@example.test', ['x@a.example', 'y@b.example'], msg('mixed'))
send(s, 'alice@example.test', ['y@b.example'], msg('to b'))
quit(s)
"
    );
    let t = smtplib(gate.smtp_addr(), &script);
    assert!(t.succeeded(), "{t}");
    let rcpts = t.replies("RCPT");
    assert_eq!(rcpts[0], "250 2.1.5 Ok", "{t}");
    assert!(rcpts[1].starts_with("452 4.5.3 "), "{t}");
    assert_eq!(rcpts[2], "250 2.1.5 Ok", "{t}");
    let got_a = a.messages();
    let got_b = b.messages();
    assert_eq!(got_a.len(), 1, "{got_a:#?}");
    assert_eq!(got_a[0].rcpt_addresses(), ["x@a.example"]);
    assert_eq!(got_b.len(), 1, "{got_b:#?}");
    assert_eq!(got_b[0].rcpt_addresses(), ["y@b.example"]);
    assert_eq!(header_values(&got_b[0].text(), "Subject"), ["to b"]);
}

/// No upstream reachable: the recipient is deferred (451 4.4.1), never accepted.
#[test]
fn unreachable_upstream_defers_the_recipient() {
    let gate = proxy_gate(&[("main", closed_port())], &[], "");
    let script = format!(
        "{PY_MESSAGES}
s = connect()
send(s, 'alice@example.test', ['bob@example.org'], msg('nowhere'))
quit(s)
"
    );
    let t = smtplib(gate.smtp_addr(), &script);
    assert!(t.succeeded(), "{t}");
    assert_eq!(t.reply("MAIL"), "250 2.1.0 sender OK", "{t}");
    assert!(t.reply("RCPT").starts_with("451 4.4.1 "), "{t}");
    assert!(t.replies("END-OF-DATA").is_empty(), "{t}");
    nothing_spooled(&gate);
}

/// The upstream drops the connection at the end of data: the client gets 451 4.4.2 (the message
/// is not taken), and its next transaction in the same session goes through a new connection.
#[test]
fn upstream_lost_at_end_of_data_is_a_temporary_failure() {
    let upstream = Upstream::start();
    let gate = proxy_gate(&[("main", upstream.addr())], &[], "");
    let script = format!(
        "{PY_MESSAGES}
s = connect()
send(s, 'alice@example.test', ['disconnect-data@example.org'], msg('dropped'))
send(s, 'alice@example.test', ['bob@example.org'], msg('after'))
quit(s)
"
    );
    let t = smtplib(gate.smtp_addr(), &script);
    assert!(t.succeeded(), "{t}");
    let ends = t.replies("END-OF-DATA");
    assert_eq!(ends.len(), 2, "{t}");
    assert!(ends[0].starts_with("451 4.4.2 "), "{t}");
    assert!(ends[1].starts_with("250 2.0.0 Ok: queued as U"), "{t}");
    let got = upstream.messages();
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!(got[0].rcpt_addresses(), ["bob@example.org"]);
    nothing_spooled(&gate);
}

/// A pipelining client (swaks) through the proxy to Postfix's smtp-sink: the message arrives once,
/// for both recipients.
#[test]
fn pipelining_client_through_the_proxy_to_smtp_sink() {
    let sink = Sink::start();
    let gate = proxy_gate(&[("main", sink.addr())], &[], "");
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
        "Through the proxy, pipelined.",
    ]);
    assert!(status.success(), "{transcript}");
    assert!(transcript.contains("PIPELINING"), "{transcript}");
    let got = sink.wait_for_messages(1, SOON);
    assert!(got[0].contains("Subject: pipelined"), "{}", got[0]);
    assert!(wait_until(SOON, || gate.metric("smtpgate_messages_proxied_total") == 1.0));
    nothing_spooled(&gate);
}

/// Proxied sessions share the pool's connection cap: with one connection allowed and one session
/// holding it, another session's RCPT waits `queue.connect_timeout`, then gets 451 4.4.1; once the
/// first transaction is over, the connection serves the second session.
#[test]
fn a_full_pool_defers_the_recipient_after_the_connect_timeout() {
    let upstream = Upstream::start();
    let toml = proxy_toml(
        &[("main", upstream.addr())],
        &[],
        "\n[queue]\nconnect_timeout = \"1s\"\n",
    );
    let capped = toml.replace(
        &format!("servers = [\"{}\"]", upstream.addr()),
        &format!(
            "servers = [{{ address = \"{}\", max_connections = 1 }}]\nhealth_check = {{ enabled = false }}",
            upstream.addr()
        ),
    );
    assert_ne!(capped, toml);
    let gate = Gate::start(&capped);
    let script = format!(
        "{PY_MESSAGES}
first = connect()
show('MAIL', *first.mail('alice@example.test'))
show('RCPT', *first.rcpt('one@example.org'))
second = connect()
send(second, 'alice@example.test', ['two@example.org'], msg('second'))
code, text = first.data(msg('first').encode())
show('END-OF-DATA', code, text)
send(second, 'alice@example.test', ['two@example.org'], msg('second again'))
quit(first)
quit(second)
"
    );
    let t = smtplib(gate.smtp_addr(), &script);
    assert!(t.succeeded(), "{t}");
    let rcpts = t.replies("RCPT");
    assert_eq!(rcpts[0], "250 2.1.5 Ok", "{t}");
    assert!(
        rcpts[1].starts_with("451 4.4.1 "),
        "the pool's only connection is busy: {t}"
    );
    assert_eq!(rcpts[2], "250 2.1.5 Ok", "{t}");
    let got = upstream.wait_for(2, SOON);
    let subjects: Vec<String> = got.iter().flat_map(|m| header_values(&m.text(), "Subject")).collect();
    assert_eq!(subjects, ["first", "second again"]);
    assert_eq!(
        upstream.connection_count(),
        1,
        "one connection, reused by both sessions"
    );
}
