//! Traffic shaping end to end: MX delivery (through a test DNS server) under a shaping file, with
//! an MX rollup shared by two domains, watched through the admin address.

mod support;

use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use support::{DnsServer, DnsTable, Gate, Upstream, http_get, message, mx_gate_toml, smtplib, wait_until};

const LOOPBACK: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);

/// Two domains whose mail servers are both under `rollup.test`, and one on its own.
fn dns() -> DnsServer {
    DnsServer::start(
        DnsTable::new()
            .mx("one.test", 10, "mx1.rollup.test")
            .mx("two.test", 10, "mx2.rollup.test")
            .mx("solo.test", 10, "mx.solo.test")
            .a("mx1.rollup.test", LOOPBACK)
            .a("mx2.rollup.test", LOOPBACK)
            .a("mx.solo.test", LOOPBACK),
    )
}

/// A gate delivering by MX to the upstream's port, with the shaping file `shaping` (kept in the
/// returned folder, which must outlive the gate).
fn gate(dns: SocketAddr, upstream: &Upstream, shaping: &str) -> (Gate, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("shaping.toml");
    fs::write(&file, shaping).unwrap();
    let config = mx_gate_toml(dns, upstream.addr().port(), &format!("[shaping]\nfile = {file:?}\n"));
    (Gate::start(&config), dir)
}

/// Sends `n` messages to each of `rcpts` over one session, as fast as the gate takes them.
fn send(gate: &Gate, n: usize, rcpts: &[&str]) {
    let body = message("{i}@example.test", "shaped", "Hello.");
    let mut script = String::from("s = connect()\n");
    script.push_str(&format!(
        "for i in range({n}):\n    for r in {rcpts:?}:\n        send(s, 'alice@example.test', [r], {body:?}.replace('{{i}}', str(i)))\nquit(s)\n"
    ));
    let t = smtplib(gate.smtp_addr(), &script);
    assert!(t.succeeded(), "{t}");
    assert_eq!(t.replies("END-OF-DATA").len(), n * rcpts.len(), "{t}");
    assert!(t.replies("END-OF-DATA").iter().all(|r| r.starts_with("250 ")), "{t}");
}

/// A 600/min (10/s) rollup shared by two domains: 20 messages, 10 to each, take at least
/// 1.9 s to leave and no second holds more than 10 (plus one for timing at the window's edge),
/// while a domain outside the rollup is not slowed by it.
#[test]
fn a_shared_rollup_rate_holds_across_domains() {
    let upstream = Upstream::start();
    let dns = dns();
    let (gate, _shaping) = gate(
        dns.addr(),
        &upstream,
        "[mx.\"*.rollup.test\"]\nmax_message_rate = \"600/min\"\nmax_connections = 2\n",
    );
    send(&gate, 10, &["a@one.test", "b@two.test"]);
    let got = upstream.wait_for(20, Duration::from_secs(60));
    let mut times: Vec<_> = got.iter().map(|m| m.at).collect();
    times.sort();
    let span = times[19] - times[0];
    assert!(
        span >= Duration::from_millis(1800),
        "20 messages at 10/s took only {span:?}"
    );
    for (i, t) in times.iter().enumerate() {
        let in_second = times[i..]
            .iter()
            .take_while(|u| **u < *t + Duration::from_secs(1))
            .count();
        assert!(in_second <= 11, "{in_second} messages within one second");
    }

    // The admin address shows the rollup's limits.
    let (status, body) = http_get(gate.admin_addr(), "/api/v1/shaping");
    assert_eq!(status, 200, "{body}");
    let usage: serde_json::Value = serde_json::from_str(&body).unwrap();
    let rollup = usage
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["key"] == "mx:*.rollup.test")
        .unwrap_or_else(|| panic!("no rollup in {body}"));
    assert_eq!(rollup["max_message_rate"], "600/min", "{body}");
    assert_eq!(rollup["max_connections"], 2, "{body}");

    // Not in the rollup: the default (no rate), so 10 messages leave at once.
    let before = upstream.messages().len();
    send(&gate, 10, &["c@solo.test"]);
    let got = upstream.wait_for(before + 10, Duration::from_secs(30));
    let solo: Vec<_> = got[before..].iter().map(|m| m.at).collect();
    let span = *solo.iter().max().unwrap() - *solo.iter().min().unwrap();
    assert!(span < Duration::from_millis(900), "solo.test was slowed: {span:?}");
}

/// The shaping file is read again when it changes: a domain given a rate of 120/min later sends
/// at that rate.
#[test]
fn the_shaping_file_reloads_while_running() {
    let upstream = Upstream::start();
    let dns = dns();
    let (gate, shaping) = gate(dns.addr(), &upstream, "[domain.\"solo.test\"]\nmax_connections = 3\n");
    fs::write(
        shaping.path().join("shaping.toml"),
        "[domain.\"solo.test\"]\nmax_message_rate = \"120/min\"\n",
    )
    .unwrap();
    let shows_new_rate = || {
        send(&gate, 1, &["x@solo.test"]);
        let (_, body) = http_get(gate.admin_addr(), "/api/v1/shaping");
        body.contains("\"120/min\"")
    };
    assert!(
        wait_until(Duration::from_secs(20), shows_new_rate),
        "the new rate never showed"
    );
    let drained = wait_until(Duration::from_secs(20), || gate.metric("smtpgate_queue_depth") == 0.0);
    assert!(drained, "the queue did not empty");
    let before = upstream.messages().len();
    send(&gate, 4, &["y@solo.test"]);
    let got = upstream.wait_for(before + 4, Duration::from_secs(30));
    let times: Vec<_> = got[got.len() - 4..].iter().map(|m| m.at).collect();
    let span = *times.iter().max().unwrap() - *times.iter().min().unwrap();
    assert!(
        span >= Duration::from_millis(1400),
        "4 messages at 2/s took only {span:?}"
    );
}
