//! The message history end to end: mail relayed to the scriptable upstream (which defers
//! `tempfail-rcpt@` and refuses `reject-rcpt@`), then `smtpgate trace` by queue id, Message-ID and
//! address, the admin API's answers and errors, the JSON-lines file read by Python, and the
//! history kept across a restart.

mod support;

use std::process::Command;

use support::{Gate, GateConfig, SOON, Upstream, http_get, message, smtplib_send, wait_until};

/// `smtpgate trace ARGS --json`: the events it printed, one per line.
fn trace(gate: &Gate, args: &[&str]) -> Vec<serde_json::Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_smtpgate"))
        .arg("trace")
        .args(args)
        .args(["--admin", &gate.admin_addr().to_string()])
        .arg("--token-file")
        .arg(gate.admin_token_file())
        .output()
        .expect("run smtpgate trace");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    if !args.contains(&"--json") {
        return vec![serde_json::Value::String(stdout)];
    }
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("one event per line"))
        .collect()
}

fn types(events: &[serde_json::Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["type"].as_str().unwrap_or("?").to_owned())
        .collect()
}

/// Sends one message to `to`; its queue id, from the `250 2.0.0 OK queued as ...` reply.
fn send(gate: &Gate, to: &str, message_id: &str) -> String {
    let t = smtplib_send(
        gate.smtp_addr(),
        "alice@example.test",
        &[to],
        &message(message_id, "s", "b"),
    );
    let reply = t.reply("END-OF-DATA");
    reply.rsplit(' ').next().unwrap_or_default().to_owned()
}

/// Waits for the trace of `q` to hold an event of `kind`; the whole trace.
fn traced(gate: &Gate, q: &str, kind: &str) -> Vec<serde_json::Value> {
    let mut last = Vec::new();
    let found = wait_until(SOON, || {
        last = trace(gate, &[q, "--json"]);
        types(&last).iter().any(|t| t == kind)
    });
    assert!(found, "no {kind} event for {q}: {last:?}");
    last
}

#[test]
fn trace_shows_delivery_deferral_and_bounce_and_survives_a_restart() {
    let upstream = Upstream::start();
    let config = GateConfig::relay_to(upstream.addr())
        .retry(&["30s"])
        .queue("\n[events]\nnode = \"node-a\"\nlog_file = \"events.jsonl\"\nlog_max_size = \"1MB\"");
    let mut gate = Gate::start(&config.to_toml());

    let delivered_id = send(&gate, "bob@example.org", "one@example.test");
    let deferred_id = send(&gate, "tempfail-rcpt@example.org", "two@example.test");
    let bounced_id = send(&gate, "reject-rcpt@example.org", "three@example.test");
    assert_eq!(delivered_id.len(), 16, "{delivered_id}");

    let events = traced(&gate, &delivered_id, "delivered");
    assert_eq!(types(&events)[..2], ["received", "delivered"], "{events:?}");
    let delivered = &events[1];
    assert_eq!(delivered["queue_id"], delivered_id.as_str());
    assert_eq!(delivered["recipients"][0], "bob@example.org");
    // The server as the gate's logs name it: `host[address]`.
    let server = upstream.addr();
    assert_eq!(delivered["server"], format!("{}[{server}]", server.ip()), "{delivered}");
    assert_eq!(delivered["reply"]["code"], 250);
    assert_eq!(delivered["node"], "node-a");
    assert_eq!(events[0]["message_id"], "one@example.test");
    assert_eq!(events[0]["sender"], "alice@example.test");
    // The routing decision is part of the reception: where the copy was sent.
    assert_eq!(events[0]["pool"], "upstream");

    // By Message-ID: the same story.
    let by_mid = trace(&gate, &["<one@example.test>", "--json"]);
    assert_eq!(types(&by_mid), types(&events));

    // By address: the deferred message's deferral, with the upstream's reply.
    let deferred = traced(&gate, "Tempfail-RCPT@example.org", "deferred");
    let d = deferred.iter().find(|e| e["type"] == "deferred").unwrap();
    assert_eq!(d["queue_id"], deferred_id.as_str());
    assert_eq!(d["reply"]["code"].as_u64().map(|c| c / 100), Some(4), "{d}");
    assert!(d["reply"]["text"].as_str().is_some_and(|t| !t.is_empty()), "{d}");

    let bounced = traced(&gate, &bounced_id, "bounced");
    let b = bounced.iter().find(|e| e["type"] == "bounced").unwrap();
    assert_eq!(b["category"], "bad_mailbox", "{b}");
    assert_eq!(b["reply"]["status"], "5.1.1", "{b}");
    // The bounce notice to the sender starts a story of its own, found by the sender's address.
    let notices = traced(&gate, "alice@example.test", "received");
    let notice = notices
        .iter()
        .find(|e| e["type"] == "received" && e["listener"] == "bounce")
        .unwrap_or_else(|| panic!("no bounce notice among {notices:?}"));
    assert_eq!(notice["sender"], "", "{notice}");
    assert_eq!(notice["recipients"][0], "alice@example.test", "{notice}");

    // The readable timeline names the same things.
    let text = trace(&gate, &[&delivered_id]);
    let text = text[0].as_str().unwrap();
    assert!(
        text.contains("delivered") && text.contains("250") && text.contains("bob@example.org"),
        "{text}"
    );

    // The admin API: recent events by type, and a JSON error for a bad query.
    let (status, body) = http_get(gate.admin_addr(), "/api/v1/events?type=bounced&since=1h");
    assert_eq!(status, 200, "{body}");
    let recent: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(types(&recent), ["bounced"], "{body}");
    let (status, body) = http_get(gate.admin_addr(), "/api/v1/messages?q=x&since=soon");
    assert_eq!(status, 400, "{body}");
    let error: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(error["error"].as_str().unwrap().contains("since"), "{body}");
    let (status, _) = http_get(gate.admin_addr(), "/api/v1/messages");
    assert_eq!(status, 400);

    // The JSON-lines file: every line one object, read by Python's json.
    let log = gate.dir().join("events.jsonl");
    let read = Command::new("python3")
        .args([
            "-c",
            "import json,sys\nfor l in open(sys.argv[1]): e = json.loads(l); print(e['type'], e.get('queue_id'))",
        ])
        .arg(&log)
        .output()
        .unwrap();
    let lines = String::from_utf8_lossy(&read.stdout).into_owned();
    assert!(
        read.status.success(),
        "{lines}{}",
        String::from_utf8_lossy(&read.stderr)
    );
    assert!(lines.contains(&format!("delivered {delivered_id}")), "{lines}");
    assert!(lines.contains(&format!("bounced {bounced_id}")), "{lines}");

    // Kept across a restart.
    gate.restart();
    let after = trace(&gate, &[&delivered_id, "--json"]);
    assert_eq!(types(&after), types(&events));
}

#[test]
fn no_events_when_disabled() {
    let upstream = Upstream::start();
    let config = GateConfig::relay_to(upstream.addr()).queue("\n[events]\nenabled = false");
    let gate = Gate::start(&config.to_toml());
    let id = send(&gate, "bob@example.org", "four@example.test");
    upstream.wait_for(1, SOON);
    assert!(trace(&gate, &[&id, "--json"]).is_empty());
    assert!(!gate.spool_dir().join("events.redb").exists());
}
