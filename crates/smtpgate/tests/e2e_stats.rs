//! Analytics end to end: a mixed load through the gate (delivered, deferred, bounced by the
//! scriptable upstream), counted per recipient domain, shown by `smtpgate stats` (JSON and the
//! table) and `GET /api/v1/stats`, and still there after a restart; refusals (at RCPT and at the
//! end of data), quarantines and complaints counted, under their route, MX rollup and listener;
//! and the counts of two nodes sharing a real redis-server summed.

mod support;

use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::time::Duration;

use serde_json::Value;
use support::{
    ARF, DnsServer, DnsTable, Gate, GateConfig, RedisServer, SOON, Upstream, http_get, message, run_smtpgate,
    smtplib_send, wait_until,
};

/// `smtpgate stats --by domain` with `extra` arguments: its standard output.
fn stats_cli(gate: &Gate, extra: &[&str]) -> String {
    let admin = gate.admin_addr().to_string();
    let mut args = vec!["stats", "--admin", admin.as_str(), "--by", "domain", "--since", "1h"];
    args.extend_from_slice(extra);
    let ran = run_smtpgate(&args, None, None);
    assert!(ran.succeeded(), "smtpgate {args:?}: {ran:?}");
    ran.stdout
}

/// Received, delivered, deferred and bounced.
type Counts = (u64, u64, u64, u64);

/// The [`Counts`] of `domain` in the JSON report.
fn counts(report: &Value, domain: &str) -> Counts {
    let none = Value::Null;
    let values = report["values"].as_array().expect("values");
    let v = values.iter().find(|v| v["value"] == domain).unwrap_or(&none);
    let n = |key: &str| v[key].as_u64().unwrap_or(0);
    (n("received"), n("delivered"), n("deferred"), n("bounced"))
}

fn report(gate: &Gate) -> Value {
    serde_json::from_str(&stats_cli(gate, &["--json"])).expect("stats --json prints JSON")
}

/// Waits until the report shows `want` for every domain; the last report.
fn wait_for(gate: &Gate, want: &[(&str, Counts)]) -> Value {
    let mut last = Value::Null;
    let matched = wait_until(SOON, || {
        last = report(gate);
        want.iter()
            .all(|(domain, counts_wanted)| counts(&last, domain) == *counts_wanted)
    });
    assert!(matched, "wanted {want:?}, the gate reports:\n{last:#}");
    last
}

#[test]
fn stats_count_a_mixed_load_and_survive_a_restart() {
    let upstream = Upstream::start();
    // Two bounced addresses, not one: a hard bounce suppresses its address.
    // One deferral per deferred message within the test: the retry is an hour away.
    let mut gate = Gate::start(&GateConfig::relay_to(upstream.addr()).retry(&["1h"]).to_toml());
    let sends: [&[&str]; 7] = [
        &["a@deliver.test"],
        &["a@deliver.test"],
        &["c@Deliver.test"],
        &["tempfail-rcpt@defer.test"],
        &["tempfail-rcpt@defer.test"],
        &["reject-rcpt+1@bounce.test", "b@deliver.test"],
        &["reject-rcpt+2@bounce.test"],
    ];
    for (i, to) in sends.iter().enumerate() {
        let sent = smtplib_send(
            gate.smtp_addr(),
            "alice@sender.test",
            to,
            &message(&format!("stats-{i}@sender.test"), "stats", "Counted."),
        );
        assert!(sent.succeeded(), "send {i}: {sent:?}");
    }
    let want = [
        ("deliver.test", (4, 4, 0, 0)),
        ("defer.test", (2, 0, 2, 0)),
        ("bounce.test", (2, 0, 0, 2)),
    ];
    let got = wait_for(&gate, &want);
    let bounce = got["values"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["value"] == "bounce.test")
        .unwrap();
    assert_eq!(bounce["bounce_rate"], 1.0, "{bounce:#}");
    assert_eq!(
        bounce["bounced_by"]
            .as_object()
            .unwrap()
            .values()
            .filter_map(Value::as_u64)
            .sum::<u64>(),
        2
    );
    let deliver = got["values"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["value"] == "deliver.test")
        .unwrap();
    assert_eq!(deliver["delivery_rate"], 1.0, "{deliver:#}");
    assert!(deliver["latency_ms"]["p50"].as_u64().is_some(), "{deliver:#}");
    assert!(got["totals"]["received"].as_u64().unwrap() >= 8, "{got:#}");

    // The table has a row per domain with its numbers.
    let table = stats_cli(&gate, &[]);
    let row = table
        .lines()
        .find(|l| l.starts_with("deliver.test"))
        .unwrap_or_else(|| panic!("{table}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&cells[1..6], ["4", "4", "0", "0", "100.0%"], "{table}");

    // Behind the admin guard: no token, no counts.
    let mut conn = std::net::TcpStream::connect(gate.admin_addr()).unwrap();
    let host = gate.admin_addr();
    write!(
        conn,
        "GET /api/v1/stats HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");

    // The API answers a wrong parameter with 400 and a JSON error.
    let (status, body) = http_get(gate.admin_addr(), "/api/v1/stats?by=colour");
    assert_eq!(status, 400, "{body}");
    let error: Value = serde_json::from_str(&body).expect("a JSON error");
    assert!(error["error"].as_str().unwrap().contains("colour"), "{body}");
    let (status, body) = http_get(
        gate.admin_addr(),
        "/api/v1/stats?by=sender_domain&since=2h&bucket=minute",
    );
    assert_eq!(status, 200, "{body}");
    let by_sender: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(by_sender["bucket"], "minute");
    assert_eq!(counts(&by_sender, "sender.test").0, 8, "{by_sender:#}");

    // A restart keeps the counts (the deferred messages may be tried again on start).
    gate.restart();
    let after = report(&gate);
    for (domain, (received, delivered, deferred, bounced)) in want {
        let now = counts(&after, domain);
        assert_eq!(
            (now.0, now.1, now.3),
            (received, delivered, bounced),
            "{domain} after restart:\n{after:#}"
        );
        assert!(now.2 >= deferred, "{domain} after restart:\n{after:#}");
    }
    // And counting goes on after it.
    let sent = smtplib_send(
        gate.smtp_addr(),
        "alice@sender.test",
        &["d@deliver.test"],
        &message("stats-after@sender.test", "stats", "Counted."),
    );
    assert!(sent.succeeded(), "{sent:?}");
    wait_until(SOON, || counts(&report(&gate), "deliver.test").1 == 5);
    assert_eq!(counts(&report(&gate), "deliver.test"), (5, 5, 0, 0));
}

/// `GET /api/v1/stats?since=1h&by=<by>` (and `extra`), as JSON.
fn api_report(gate: &Gate, by: &str, extra: &str) -> Value {
    let (status, body) = http_get(gate.admin_addr(), &format!("/api/v1/stats?since=1h&by={by}{extra}"));
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("a JSON report")
}

/// The counter `key` of `value` in a report (0 when absent).
fn count(report: &Value, value: &str, key: &str) -> u64 {
    let values = report["values"].as_array().expect("values");
    values
        .iter()
        .find(|v| v["value"] == value)
        .and_then(|v| v[key].as_u64())
        .unwrap_or(0)
}

/// A gate delivering by MX through the test DNS (far.test's mail server is
/// mx1.relay.example.test, the scriptable upstream): the route "blocked" refuses blocked.test at
/// RCPT, "direct" sends far.test by MX; the filter "hold" quarantines "wire transfer urgently";
/// more than 5 `Received:` fields are refused at the end of data; complaints come to
/// fbl@example.test.
fn analytics_gate(dns: &DnsServer, upstream: &Upstream) -> Gate {
    Gate::start(&format!(
        "hostname = \"gate.example.test\"\nshutdown_timeout = \"5s\"\n\n[spool]\ndir = \"spool\"\n\n\
         [admin]\naddress = \"127.0.0.1:0\"\n\n[[listener]]\nname = \"inbound\"\naddress = \"127.0.0.1:0\"\n\
         relay_networks = [\"127.0.0.0/8\"]\nmax_hops = 5\nfilters = [\"hold\"]\n\n\
         [dns]\nnameservers = [\"{dns}\"]\n\n[suppression]\ncomplaints_address = \"fbl@example.test\"\n\n\
         [[filter]]\nname = \"hold\"\nkind = \"content\"\n\
         body_rules = [{{ regex = \"wire transfer urgently\", action = \"quarantine\" }}]\n\n\
         [[route]]\nname = \"blocked\"\nwhen = {{ recipient_domain = \"blocked.test\" }}\nreject = \"550 5.7.1 not here\"\n\n\
         [[route]]\nname = \"direct\"\nwhen = {{ recipient_domain = \"far.test\" }}\nmx = true\n\n\
         [queue]\nretry = [\"1h\"]\nsmtp_port = {port}\n",
        dns = dns.addr(),
        port = upstream.addr().port()
    ))
}

#[test]
fn refusals_quarantines_and_complaints_count_under_route_mx_and_listener() {
    let upstream = Upstream::start();
    let dns = DnsServer::start(
        DnsTable::new()
            .mx("far.test", 10, "mx1.relay.example.test")
            .a("mx1.relay.example.test", Ipv4Addr::LOCALHOST),
    );
    let gate = analytics_gate(&dns, &upstream);
    let send = |to: &str, body: &str| {
        let raw = if body.starts_with("Received:") {
            body.to_owned()
        } else {
            message(&format!("{}@sender.test", to.replace('@', ".")), "s", body)
        };
        smtplib_send(gate.smtp_addr(), "alice@sender.test", &[to], &raw)
    };
    // Delivered by MX, through the route "direct".
    let t = send("a@far.test", "Hello.");
    assert!(t.reply("END-OF-DATA").starts_with("250 "), "{t}");
    upstream.wait_for(1, SOON);
    // Refused at RCPT by the route "blocked".
    let t = send("x@blocked.test", "Hello.");
    assert!(t.reply("RCPT").starts_with("550 5.7.1"), "{t}");
    // Refused at the end of data: a mail loop.
    let looped = "Received: from a\r\n".repeat(6) + &message("loop@sender.test", "s", "Loop.");
    let t = send("b@far.test", &looped);
    assert!(t.reply("END-OF-DATA").starts_with("554 "), "{t}");
    // Quarantined by the listener's filter.
    let t = send("c@far.test", "Please wire transfer urgently.");
    assert!(t.reply("END-OF-DATA").starts_with("250 "), "{t}");
    // A complaint about mail the gate relayed to victim@example.org (a complaint about mail it
    // never sent counts nothing).
    let original = message("original-1@example.test", "offer", "Buy now.");
    let t = smtplib_send(
        gate.smtp_addr(),
        "alice@example.test",
        &["victim@example.org"],
        &original,
    );
    assert!(t.reply("END-OF-DATA").starts_with("250 "), "{t}");
    let forged = ARF.replace("victim@example.org", "stranger@example.net");
    let t = smtplib_send(gate.smtp_addr(), "feedback@isp.example", &["fbl@example.test"], &forged);
    assert!(t.reply("END-OF-DATA").starts_with("250 "), "{t}");
    let t = smtplib_send(gate.smtp_addr(), "feedback@isp.example", &["fbl@example.test"], ARF);
    assert!(t.reply("END-OF-DATA").starts_with("250 "), "{t}");

    let mut by_domain = Value::Null;
    let counted = wait_until(SOON, || {
        by_domain = api_report(&gate, "domain", "");
        count(&by_domain, "far.test", "delivered") == 1 && count(&by_domain, "example.org", "complaints") == 1
    });
    assert!(counted, "{by_domain:#}");
    let far = |key| count(&by_domain, "far.test", key);
    assert_eq!(
        (far("received"), far("delivered"), far("rejected"), far("quarantined")),
        (1, 1, 1, 1),
        "{by_domain:#}"
    );
    assert_eq!(count(&by_domain, "blocked.test", "rejected"), 1, "{by_domain:#}");
    assert_eq!(by_domain["totals"]["rejected"], 2, "{by_domain:#}");
    assert_eq!(by_domain["totals"]["quarantined"], 1, "{by_domain:#}");
    assert_eq!(by_domain["totals"]["complaints"], 1, "{by_domain:#}");
    assert_eq!(count(&by_domain, "example.net", "complaints"), 0, "{by_domain:#}");

    // The MX rollup of the server that answered, the route and the listener.
    let by_mx = api_report(&gate, "mx", "");
    assert_eq!(count(&by_mx, "example.test", "delivered"), 1, "{by_mx:#}");
    let by_route = api_report(&gate, "route", "");
    assert_eq!(
        (
            count(&by_route, "direct", "received"),
            count(&by_route, "direct", "delivered")
        ),
        (1, 1),
        "{by_route:#}"
    );
    let by_listener = api_report(&gate, "listener", "");
    let inbound = |key| count(&by_listener, "inbound", key);
    assert_eq!(
        (inbound("received"), inbound("rejected"), inbound("quarantined")),
        (2, 2, 1),
        "{by_listener:#}"
    );

    // The refusal at RCPT is an event with the client, the address and the reply; the delivery
    // says whether it went over TLS.
    let (status, body) = http_get(gate.admin_addr(), "/api/v1/events?type=refused&since=1h");
    assert_eq!(status, 200, "{body}");
    let refused: Vec<Value> = serde_json::from_str(&body).unwrap();
    let at_rcpt = refused
        .iter()
        .find(|e| e["recipients"] == serde_json::json!(["x@blocked.test"]))
        .unwrap_or_else(|| panic!("no refusal of x@blocked.test: {body}"));
    assert_eq!(at_rcpt["client"], "127.0.0.1", "{at_rcpt}");
    assert_eq!(at_rcpt["sender"], "alice@sender.test", "{at_rcpt}");
    assert_eq!(at_rcpt["listener"], "inbound", "{at_rcpt}");
    assert_eq!(at_rcpt["reply"]["code"], 550, "{at_rcpt}");
    assert_eq!(at_rcpt["reply"]["status"], "5.7.1", "{at_rcpt}");
    let (status, body) = http_get(gate.admin_addr(), "/api/v1/events?type=delivered&since=1h");
    assert_eq!(status, 200, "{body}");
    let delivered: Vec<Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(delivered.len(), 1, "{body}");
    assert_eq!(delivered[0]["tls"], false, "{body}");

    // Summing nodes needs the shared state.
    let (status, body) = http_get(gate.admin_addr(), "/api/v1/stats?nodes=all");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("redis"), "{body}");
    let (status, body) = http_get(gate.admin_addr(), "/api/v1/stats?nodes=some");
    assert_eq!(status, 400, "{body}");
}

/// A gate relaying to `upstream`, sharing `redis` as node `node`.
fn node(upstream: &Upstream, redis: &RedisServer, node: &str) -> Gate {
    let shared = format!(
        "[redis]\nurl = \"{url}\"\nprefix = \"stats-test\"\n\n[events]\nnode = \"{node}\"",
        url = redis.url()
    );
    Gate::start(&GateConfig::relay_to(upstream.addr()).top(&shared).to_toml())
}

#[test]
fn the_counts_of_two_nodes_are_summed_through_redis() {
    let upstream = Upstream::start();
    let redis = RedisServer::start();
    let (a, b) = (node(&upstream, &redis, "node-a"), node(&upstream, &redis, "node-b"));
    for (gate, to) in [(&a, "one@sum.test"), (&a, "two@sum.test"), (&b, "three@sum.test")] {
        let t = smtplib_send(
            gate.smtp_addr(),
            "alice@sender.test",
            &[to],
            &message(to, "s", "Summed."),
        );
        assert!(t.reply("END-OF-DATA").starts_with("250 "), "{t}");
    }
    upstream.wait_for(3, SOON);
    // Each node counts its own; every node's counts are published within 10 s.
    assert!(wait_until(SOON, || count(
        &api_report(&a, "domain", ""),
        "sum.test",
        "delivered"
    ) == 2));
    let mut all = Value::Null;
    let summed = wait_until(Duration::from_secs(40), || {
        all = api_report(&a, "domain", "&nodes=all");
        count(&all, "sum.test", "delivered") == 3
    });
    assert!(summed, "{all:#}");
    assert_eq!(all["nodes"], serde_json::json!(["node-a", "node-b"]), "{all:#}");
    assert_eq!(count(&all, "sum.test", "received"), 3, "{all:#}");
    assert_eq!(all["totals"]["delivered"], 3, "{all:#}");
    assert_eq!(count(&api_report(&b, "domain", ""), "sum.test", "delivered"), 1);
    // The command line asks the same of the other node.
    let mut cli = Value::Null;
    let summed = wait_until(Duration::from_secs(40), || {
        cli = serde_json::from_str(&stats_cli(&b, &["--json", "--all-nodes"])).expect("JSON");
        counts(&cli, "sum.test") == (3, 3, 0, 0)
    });
    assert!(summed, "{cli:#}");
}
