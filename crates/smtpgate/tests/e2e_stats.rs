//! Analytics end to end: a mixed load through the gate (delivered, deferred, bounced by the
//! scriptable upstream), counted per recipient domain, shown by `smtpgate stats` (JSON and the
//! table) and `GET /api/v1/stats`, and still there after a restart.

mod support;

use std::io::{Read, Write};

use serde_json::Value;
use support::{Gate, GateConfig, SOON, Upstream, http_get, message, run_smtpgate, smtplib_send, wait_until};

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
