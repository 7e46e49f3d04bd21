//! Connection policy through the whole gate, with Python's smtplib as the client:
//! `kind = "connection"` (DNS block lists and reverse DNS at connect, HELO checks at MAIL FROM)
//! against the test DNS server, and `kind = "rate_limit"` on messages and connections.
//!
//! Every client is on loopback, which the connection filter exempts by default; these tests set
//! `check_loopback = true` and use 127.0.0.2 as the listed client (bound as the source address).

mod support;

use std::net::SocketAddr;

use hickory_proto::rr::RecordType;
use support::{DnsServer, DnsTable, Gate, GateConfig, PyTranscript, SOON, Upstream, message, smtplib};

const LISTED: &str = "127.0.0.2";
const UNLISTED: &str = "127.0.0.1";

/// A gate relaying to `upstream` with one filter, `[[filter]] name = "policy"` plus `options`,
/// on its listener.
fn gate_with(upstream: &Upstream, options: &str) -> Gate {
    let config = GateConfig::relay_to(upstream.addr())
        .top(&format!("[[filter]]\nname = \"policy\"\n{options}"))
        .listener("filters = [\"policy\"]");
    Gate::start(&config.to_toml())
}

fn py(text: &str) -> String {
    format!("{text:?}")
}

/// One session from the loopback address `from`: the greeting; if it is a 220, EHLO `helo` and
/// one message from `sender` to bob@example.org per entry of `senders`.
fn session(gate: SocketAddr, from: &str, helo: &str, senders: &[&str]) -> PyTranscript {
    let body = message("connection@example.test", "connection policy", "Hello.");
    let senders: Vec<String> = senders.iter().map(|s| py(s)).collect();
    smtplib(
        gate,
        &format!(
            "s = smtplib.SMTP(timeout=60, source_address=({from}, 0))
code, msg = s.connect(HOST, PORT)
show('CONNECT', code, msg)
if code == 220:
    code, msg = s.ehlo({helo})
    show('EHLO', code, msg)
    for sender in [{senders}]:
        send(s, sender, ['bob@example.org'], {body})
    quit(s)
else:
    try:
        code, msg = s.noop()
        show('NOOP', code, msg)
    except smtplib.SMTPServerDisconnected as e:
        print('CLOSED', e, flush=True)
",
            from = py(from),
            helo = py(helo),
            senders = senders.join(", "),
            body = py(&body),
        ),
    )
}

fn send_one(gate: SocketAddr, from: &str) -> PyTranscript {
    session(gate, from, "client.example.test", &["alice@example.test"])
}

/// The greeting was refused with `expected` and the gate closed the connection.
fn refused_at_connect(ran: &PyTranscript, expected: &str) {
    assert_eq!(ran.reply("CONNECT"), expected, "{ran}");
    assert!(ran.stdout.contains("CLOSED"), "connection left open:\n{ran}");
}

fn accepted(ran: &PyTranscript) {
    assert!(ran.reply("CONNECT").starts_with("220 "), "{ran}");
    assert!(ran.reply("END-OF-DATA").starts_with("250 "), "{ran}");
}

fn block_list(dns: &DnsServer, zone: &str, extra: &str) -> String {
    format!(
        "kind = \"connection\"\ndnsbl = [\"{zone}\"]\ncheck_loopback = true\nnameservers = [\"{}\"]\n{extra}",
        dns.addr()
    )
}

#[test]
fn listed_client_gets_554_instead_of_the_greeting() {
    let dns = DnsServer::start(DnsTable::new().a("2.0.0.127.zen.test", "127.0.0.2".parse().unwrap()));
    let upstream = Upstream::start();
    let gate = gate_with(&upstream, &block_list(&dns, "zen.test", ""));

    refused_at_connect(
        &session(gate.smtp_addr(), LISTED, "client.example.test", &[]),
        "554 5.7.1 client listed at zen.test",
    );
    assert_eq!(
        dns.query_count("2.0.0.127.zen.test", RecordType::A),
        1,
        "{:?}",
        dns.queries()
    );

    accepted(&send_one(gate.smtp_addr(), UNLISTED));
    assert_eq!(
        dns.query_count("1.0.0.127.zen.test", RecordType::A),
        1,
        "{:?}",
        dns.queries()
    );
    upstream.wait_for(1, SOON);
}

#[test]
fn listed_client_gets_421_when_the_action_is_tempfail() {
    let dns = DnsServer::start(DnsTable::new().a("2.0.0.127.zen.test", "127.0.0.2".parse().unwrap()));
    let upstream = Upstream::start();
    let gate = gate_with(&upstream, &block_list(&dns, "zen.test", "action = \"tempfail\""));
    let ran = session(gate.smtp_addr(), LISTED, "client.example.test", &[]);
    refused_at_connect(&ran, "421 4.7.1 client listed at zen.test, try again later");
}

#[test]
fn loopback_clients_skip_the_block_lists_by_default() {
    let dns = DnsServer::start(DnsTable::new().a("2.0.0.127.zen.test", "127.0.0.2".parse().unwrap()));
    let upstream = Upstream::start();
    let options = format!(
        "kind = \"connection\"\ndnsbl = [\"zen.test\"]\nnameservers = [\"{}\"]",
        dns.addr()
    );
    let gate = gate_with(&upstream, &options);
    accepted(&send_one(gate.smtp_addr(), LISTED));
    assert_eq!(dns.queries(), []);
}

#[test]
fn block_list_that_times_out_fails_open_with_on_error_accept() {
    let dns = DnsServer::start(DnsTable::new().silent("2.0.0.127.slow.test"));
    let upstream = Upstream::start();
    let extra = "on_error = \"accept\"\ntimeout = \"5s\"\ndns_timeout = \"1s\"";
    let gate = gate_with(&upstream, &block_list(&dns, "slow.test", extra));
    accepted(&send_one(gate.smtp_addr(), LISTED));
    assert!(
        dns.query_count("2.0.0.127.slow.test", RecordType::A) >= 1,
        "{:?}",
        dns.queries()
    );
    upstream.wait_for(1, SOON);
}

#[test]
fn block_list_failure_is_never_a_permanent_refusal() {
    let dns = DnsServer::start(DnsTable::new().servfail("2.0.0.127.broken.test", RecordType::A));
    let upstream = Upstream::start();
    let extra = "on_error = \"tempfail\"\ndns_timeout = \"1s\"";
    let gate = gate_with(&upstream, &block_list(&dns, "broken.test", extra));
    let ran = session(gate.smtp_addr(), LISTED, "client.example.test", &[]);
    refused_at_connect(&ran, "451 4.7.1 policy check unavailable, try again later");
}

/// Reverse DNS under 127.in-addr.arpa is answered by the resolver itself (RFC 6761 6.3: every
/// 127.x address is `localhost`, and `localhost` is 127.0.0.1), never by the name servers: so
/// 127.0.0.1 is forward-confirmed and 127.0.0.2 is not.
#[test]
fn client_whose_reverse_dns_does_not_confirm_is_refused_when_it_is_required() {
    let dns = DnsServer::start(DnsTable::new());
    let upstream = Upstream::start();
    let options = format!(
        "kind = \"connection\"\nrequire_reverse_dns = true\ncheck_loopback = true\nnameservers = [\"{}\"]",
        dns.addr()
    );
    let gate = gate_with(&upstream, &options);
    let ran = session(gate.smtp_addr(), LISTED, "client.example.test", &[]);
    refused_at_connect(&ran, "554 5.7.1 client address has no confirmed reverse DNS");
    accepted(&send_one(gate.smtp_addr(), UNLISTED));
    upstream.wait_for(1, SOON);
}

#[test]
fn bad_helo_is_refused_at_mail_from() {
    let upstream = Upstream::start();
    let gate = gate_with(&upstream, "kind = \"connection\"\nhostname = \"gate.example.test\"");
    for helo in ["localhost", "127.0.0.1", "gate.example.test", "desktop"] {
        let ran = session(gate.smtp_addr(), UNLISTED, helo, &["alice@example.test"]);
        assert!(ran.reply("EHLO").starts_with("250"), "{ran}");
        assert_eq!(ran.reply("MAIL"), "550 5.7.1 bad HELO", "HELO {helo}: {ran}");
    }
    for helo in ["client.example.test", "[127.0.0.1]"] {
        let ran = session(gate.smtp_addr(), UNLISTED, helo, &["alice@example.test"]);
        assert!(ran.reply("END-OF-DATA").starts_with("250 "), "HELO {helo}: {ran}");
    }
    upstream.wait_for(2, SOON);
}

/// `3/min` with `burst = 3`: three messages at once, then one every 20 s. (With `burst = 1` the
/// second message would already wait 20 s: burst is how many may come at the same instant.)
#[test]
fn fourth_message_within_a_minute_is_refused_and_other_senders_are_not() {
    let upstream = Upstream::start();
    let limit = r#"limits = [{ key = "sender", what = "messages", rate = "3/min", burst = 3 }]"#;
    let gate = gate_with(&upstream, &format!("kind = \"rate_limit\"\n{limit}"));
    let sender = "alice@example.test";
    let ran = session(gate.smtp_addr(), UNLISTED, "client.example.test", &[sender; 4]);
    let mail: Vec<String> = ran.replies("MAIL");
    assert_eq!(mail.len(), 4, "{ran}");
    assert!(mail[..3].iter().all(|r| r.starts_with("250 ")), "{ran}");
    assert_eq!(mail[3], "450 4.7.1 rate limit exceeded, try again later", "{ran}");

    let other = session(
        gate.smtp_addr(),
        UNLISTED,
        "client.example.test",
        &["carol@example.test"],
    );
    assert!(other.reply("END-OF-DATA").starts_with("250 "), "{other}");
    upstream.wait_for(4, SOON);
}

#[test]
fn connections_over_the_rate_get_421_and_are_closed() {
    let upstream = Upstream::start();
    let limit = r#"limits = [{ key = "client", what = "connections", rate = "1/h", burst = 2 }]"#;
    let gate = gate_with(&upstream, &format!("kind = \"rate_limit\"\n{limit}"));
    accepted(&send_one(gate.smtp_addr(), LISTED));
    accepted(&send_one(gate.smtp_addr(), LISTED));
    let third = session(gate.smtp_addr(), LISTED, "client.example.test", &[]);
    refused_at_connect(&third, "421 4.7.0 too many connections from your address, try later");
    // Counted per client address.
    accepted(&send_one(gate.smtp_addr(), UNLISTED));
}
