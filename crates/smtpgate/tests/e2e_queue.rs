//! Queue tools on a running gate, driven by the `smtpgate queue` command and curl: a deferred
//! message is listed with its last reply; a hold outlives a crash (kill -9) and nothing held is
//! delivered; release and retry deliver; a bounce by id sends the sender a DSN naming the reason;
//! a delete sends nothing; bulk hold and release by domain; errors are JSON (404, 400).

mod support;

use std::process::Command;
use std::time::Duration;

use support::{Gate, GateConfig, SOON, Upstream, message, run_smtpgate, smtplib_send, wait_until};

/// `smtpgate queue ARGS` against `gate`; its standard output, after checking it succeeded.
fn queue(gate: &Gate, args: &[&str]) -> String {
    let admin = gate.admin_addr().to_string();
    let mut all = vec!["queue", "--admin", &admin];
    all.extend_from_slice(args);
    let ran = run_smtpgate(&all, None, None);
    assert!(ran.succeeded(), "smtpgate {all:?}: {}{}", ran.stdout, ran.stderr);
    ran.stdout
}

/// `queue list --json` with `filters`: the listed messages.
fn listed(gate: &Gate, filters: &[&str]) -> Vec<serde_json::Value> {
    let mut args = vec!["list", "--json"];
    args.extend_from_slice(filters);
    let list: serde_json::Value = serde_json::from_str(&queue(gate, &args)).expect("JSON list");
    list["messages"].as_array().expect("messages").clone()
}

/// Sends one message to `rcpt` and waits until it is listed as deferred; its queue id.
fn deferred(gate: &Gate, from: &str, rcpt: &str) -> String {
    let sent = smtplib_send(
        gate.smtp_addr(),
        from,
        &[rcpt],
        &message(&format!("<{rcpt}>"), "queued", "body"),
    );
    assert!(sent.succeeded(), "{}{}", sent.stdout, sent.stderr);
    let mut id = String::new();
    let seen = wait_until(SOON, || {
        let found = listed(gate, &["--recipient", rcpt, "--state", "deferred"]);
        if let Some(m) = found.first() {
            id = m["id"].as_str().unwrap().to_string();
        }
        !id.is_empty()
    });
    assert!(seen, "{rcpt} was never listed as deferred");
    id
}

/// `curl` to the admin address with the token: (status, body).
fn curl(gate: &Gate, method: &str, path: &str) -> (u16, String) {
    let url = format!("http://{}{path}", gate.admin_addr());
    let out = Command::new("curl")
        .args([
            "-s",
            "-S",
            "--max-time",
            "10",
            "-X",
            method,
            "-w",
            "\n%{http_code}",
            "-H",
        ])
        .arg(format!("Authorization: Bearer {}", gate.admin_token()))
        .arg(&url)
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').expect("a status");
    (status.trim().parse().expect("a status"), body.to_string())
}

#[test]
fn queue_tools_hold_release_bounce_delete_and_bulk() {
    // Each special recipient is deferred once (450 to RCPT), then accepted; retries are far off.
    let upstream = Upstream::fail_first(1);
    let mut gate = Gate::start(&GateConfig::relay_to(upstream.addr()).retry(&["1h"]).to_toml());

    // A deferred message is listed with its last reply; the readable list shows it too.
    let held = "tempfail-rcpt+held@one.test";
    let id = deferred(&gate, "sender@example.test", held);
    let shown: serde_json::Value = serde_json::from_str(&queue(&gate, &["show", &id])).unwrap();
    assert_eq!(shown["last_reply"]["code"], 450, "{shown}");
    assert_eq!(shown["last_reply"]["result"], "deferred", "{shown}");
    assert!(shown["last_reply"]["server"].is_string(), "{shown}");
    assert!(shown["next_attempt"].is_u64(), "{shown}");
    let table = queue(&gate, &["list"]);
    assert!(table.contains(&id) && table.contains("450"), "{table}");
    let cat = queue(&gate, &["cat", &id]);
    assert!(cat.contains("Subject: queued") && cat.contains("body"), "{cat}");

    // Held, it survives a crash and is not delivered; released and retried, it is.
    assert!(queue(&gate, &["hold", &id]).contains("hold: 1 message"));
    gate.kill9();
    gate.restart();
    let after = listed(&gate, &["--state", "held"]);
    assert_eq!(after.len(), 1, "{after:?}");
    assert_eq!(after[0]["id"], id.as_str());
    assert_eq!(gate.metric("smtpgate_queue_held"), 1.0);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(upstream.delivered_to(held), 0, "a held message was delivered");
    queue(&gate, &["release", &id]);
    queue(&gate, &["retry", "--all"]);
    assert!(
        wait_until(SOON, || upstream.delivered_to(held) == 1),
        "released, never delivered"
    );

    // A bounce by id: the sender gets a DSN naming the reason.
    let bounced = "tempfail-rcpt+bounced@one.test";
    let id = deferred(&gate, "bounce-me@example.test", bounced);
    queue(&gate, &["bounce", &id, "--reason", "cleanup after the outage"]);
    let dsn = wait_until(SOON, || upstream.delivered_to("bounce-me@example.test") == 1);
    assert!(dsn, "no DSN to the sender");
    let dsn = upstream
        .messages()
        .into_iter()
        .find(|m| m.rcpt_addresses().contains(&"bounce-me@example.test"))
        .unwrap();
    assert_eq!(dsn.mail_from, "");
    assert!(dsn.text().contains("cleanup after the outage"), "{}", dsn.text());
    assert!(listed(&gate, &["--recipient", bounced]).is_empty());

    // A delete: nothing delivered, no DSN.
    let deleted = "tempfail-rcpt+deleted@one.test";
    let id = deferred(&gate, "delete-me@example.test", deleted);
    queue(&gate, &["delete", &id]);
    assert!(listed(&gate, &["--recipient", deleted]).is_empty());
    queue(&gate, &["retry", "--all"]);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(upstream.delivered_to(deleted), 0);
    assert_eq!(upstream.delivered_to("delete-me@example.test"), 0, "a DSN for a delete");

    // Bulk hold and release by domain.
    let (a, b) = ("tempfail-rcpt+a@two.test", "tempfail-rcpt+b@two.test");
    deferred(&gate, "sender@example.test", a);
    deferred(&gate, "sender@example.test", b);
    assert!(queue(&gate, &["hold", "--domain", "two.test"]).contains("hold: 2 message"));
    assert_eq!(listed(&gate, &["--state", "held", "--domain", "two.test"]).len(), 2);
    assert!(queue(&gate, &["release", "--domain", "two.test"]).contains("release: 2 message"));
    let both = wait_until(SOON, || upstream.delivered_to(a) == 1 && upstream.delivered_to(b) == 1);
    assert!(both, "released by domain, never delivered");

    // Errors are JSON with a clear message.
    let (status, body) = curl(&gate, "GET", "/api/v1/queue/00000000DEADBEEF");
    assert_eq!(status, 404, "{body}");
    let error: serde_json::Value = serde_json::from_str(&body).expect("JSON error");
    assert!(error["error"].as_str().unwrap().contains("no message"), "{body}");
    let (status, body) = curl(&gate, "POST", "/api/v1/queue/not-an-id/hold");
    assert_eq!(status, 404, "{body}");
    let (status, body) = curl(&gate, "GET", "/api/v1/queue?state=bogus");
    assert_eq!(status, 400, "{body}");
    assert!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["error"].is_string());
    let (status, body) = curl(&gate, "GET", "/api/v1/queue?older_than=soon");
    assert_eq!(status, 400, "{body}");
    // A bulk action without a filter is refused unless it says all=true.
    let (status, body) = curl(&gate, "POST", "/api/v1/queue/delete");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("all=true"), "{body}");
}
