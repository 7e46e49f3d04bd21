//! The quarantine end to end: a filter sets a message aside, the administrator lists it,
//! looks at it and releases it with the `smtpgate quarantine` commands, and it is delivered.

mod support;

use std::process::Command;

use support::{Gate, GateConfig, SOON, Upstream, message, smtplib_send, wait_until};

const HOLD: &str = r#"
[[filter]]
name = "hold"
kind = "content"
body_rules = [{ regex = "wire transfer urgently", action = "quarantine" }]
"#;

fn quarantine_cmd(gate: &Gate, args: &[&str]) -> (bool, String) {
    let config = gate.dir().join("smtpgate.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_smtpgate"))
        .arg("quarantine")
        .args(args)
        .arg("--config")
        .arg(&config)
        .output()
        .expect("run smtpgate quarantine");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn quarantined_message_is_listed_shown_and_released_to_its_destination() {
    let upstream = Upstream::start();
    let toml = GateConfig::relay_to(upstream.addr())
        .listener("filters = [\"hold\"]")
        .to_toml()
        + HOLD;
    let gate = Gate::start(&toml);

    let clean = smtplib_send(
        gate.smtp_addr(),
        "a@example.test",
        &["b@example.org"],
        &message("q-clean@x", "hi", "fine"),
    );
    assert!(clean.reply("END-OF-DATA").starts_with("250"), "{clean}");
    let held = smtplib_send(
        gate.smtp_addr(),
        "a@example.test",
        &["b@example.org"],
        &message("q-held@x", "pay", "please wire transfer urgently"),
    );
    assert!(
        held.reply("END-OF-DATA").starts_with("250"),
        "the sender is told it was accepted: {held}"
    );
    upstream.wait_for(1, SOON);
    assert!(
        wait_until(SOON, || gate.metric("smtpgate_quarantined_total") == 1.0),
        "quarantined metric"
    );

    let (ok, list) = quarantine_cmd(&gate, &["list"]);
    assert!(ok, "{list}");
    let entries: serde_json::Value = serde_json::from_str(list.trim()).expect("JSON list");
    assert_eq!(entries.as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(entries[0]["filter"], "hold");
    let id = entries[0]["id"].as_str().unwrap().to_string();

    let (ok, shown) = quarantine_cmd(&gate, &["show", &id]);
    assert!(ok && shown.contains("wire transfer urgently"), "{shown}");
    assert_eq!(upstream.messages().len(), 1, "the held message was not delivered");

    let admin = gate.admin_addr().to_string();
    let (ok, released) = quarantine_cmd(&gate, &["release", &id, "--admin", &admin]);
    assert!(ok, "{released}");
    let arrived = upstream.wait_for(2, SOON);
    assert!(
        arrived.iter().any(|m| m.text().contains("q-held@x")),
        "released message delivered"
    );
    let (_, list) = quarantine_cmd(&gate, &["list"]);
    assert_eq!(list.trim(), "[]", "released entries leave the quarantine");
}

#[test]
fn deleted_entry_is_gone_and_unknown_ids_are_clear_errors() {
    let upstream = Upstream::start();
    let toml = GateConfig::relay_to(upstream.addr())
        .listener("filters = [\"hold\"]")
        .to_toml()
        + HOLD;
    let gate = Gate::start(&toml);
    let held = smtplib_send(
        gate.smtp_addr(),
        "a@x.test",
        &["b@y.test"],
        &message("q-del@x", "s", "wire transfer urgently"),
    );
    assert!(held.reply("END-OF-DATA").starts_with("250"), "{held}");
    assert!(wait_until(SOON, || gate.metric("smtpgate_quarantined_total") == 1.0));
    let (_, list) = quarantine_cmd(&gate, &["list"]);
    let entries: serde_json::Value = serde_json::from_str(list.trim()).unwrap();
    let id = entries[0]["id"].as_str().unwrap().to_string();
    let (ok, out) = quarantine_cmd(&gate, &["delete", &id]);
    assert!(ok, "{out}");
    let (ok, out) = quarantine_cmd(&gate, &["show", &id]);
    assert!(
        !ok && out.contains("smtpgate:"),
        "clear error for a deleted entry: {out}"
    );
    let (ok, out) = quarantine_cmd(&gate, &["show", "../../etc/passwd"]);
    assert!(!ok && !out.contains("root:"), "ids cannot name other files: {out}");
}

/// A DLP filter that quarantines card numbers, a footer filter after it, and one route to pool
/// "A" that adds a header. `on_listener`: the filters are the listener's; otherwise the route's.
fn release_gate(upstream: &Upstream, on_listener: bool) -> Gate {
    let listener_filters = if on_listener {
        "filters = [\"dlp\", \"footer\"]"
    } else {
        ""
    };
    let route_filters = if on_listener {
        ""
    } else {
        "filters = [\"dlp\", \"footer\"]"
    };
    let toml = format!(
        r#"hostname = "gate.example.test"
shutdown_timeout = "5s"

[spool]
dir = "spool"

[admin]
address = "127.0.0.1:0"

[dns]
nameservers = ["127.0.0.1:9"]

[[listener]]
name = "inbound"
address = "127.0.0.1:0"
relay_networks = ["127.0.0.0/8"]
{listener_filters}

[[filter]]
name = "dlp"
kind = "dlp"
detect = ["card"]
action = "quarantine"

[[filter]]
name = "footer"
kind = "sanitize"
footer_text = "-- \nfooter after the quarantine"

[[pool]]
name = "A"
servers = ["{upstream}"]
tls = "none"

[[route]]
pool = "A"
add_headers = {{ X-Route = "A" }}
{route_filters}

[queue]
retry = ["1s"]
"#,
        upstream = upstream.addr()
    );
    Gate::start(&toml)
}

/// Sends a message with a card number; returns the queue id the client was given.
fn send_card(gate: &Gate, marker: &str) -> String {
    let held = smtplib_send(
        gate.smtp_addr(),
        "a@example.test",
        &["rcpt@dest.test"],
        &message(marker, "card", "My card: 4111 1111 1111 1111"),
    );
    let reply = held.reply("END-OF-DATA");
    assert!(reply.starts_with("250"), "{held}");
    reply.rsplit(' ').next().unwrap().trim().to_string()
}

fn only_entry(gate: &Gate) -> serde_json::Value {
    let (ok, list) = quarantine_cmd(gate, &["list"]);
    assert!(ok, "{list}");
    let entries: serde_json::Value = serde_json::from_str(list.trim()).expect("JSON list");
    assert_eq!(entries.as_array().map(Vec::len), Some(1), "{list}");
    entries[0].clone()
}

/// The released copy was routed (pool A and the route's header) and went through the filter
/// after the one that quarantined it (the footer), once.
fn assert_released_as_routed(gate: &Gate, upstream: &Upstream, id: &str, marker: &str) {
    let admin = gate.admin_addr().to_string();
    let (ok, released) = quarantine_cmd(gate, &["release", id, "--admin", &admin]);
    assert!(ok && released.contains("released"), "{released}");
    let got = upstream.wait_for(1, SOON);
    assert_eq!(got.len(), 1, "the released message reached pool A: {released}");
    let text = got[0].text();
    assert!(text.contains(marker), "{text}");
    assert_eq!(got[0].rcpt_addresses(), ["rcpt@dest.test"]);
    assert!(text.contains("X-Route: A"), "the route's header changes apply: {text}");
    assert!(
        text.contains("footer after the quarantine"),
        "the filter after the quarantining one ran: {text}"
    );
    assert_eq!(text.matches("X-Route: A").count(), 1, "{text}");
    let (_, list) = quarantine_cmd(gate, &["list"]);
    assert_eq!(list.trim(), "[]", "released entries leave the quarantine");
}

#[test]
fn release_of_a_listener_quarantine_follows_the_routes() {
    let upstream = Upstream::start();
    let gate = release_gate(&upstream, true);
    let queued = send_card(&gate, "q-listener@x");
    assert!(wait_until(SOON, || gate.metric("smtpgate_quarantined_total") == 1.0));
    let entry = only_entry(&gate);
    assert_eq!(
        entry["id"],
        queued.as_str(),
        "the quarantine id is the id the client got"
    );
    assert_eq!(upstream.messages().len(), 0);
    assert_released_as_routed(&gate, &upstream, &queued, "q-listener@x");
}

#[test]
fn release_of_a_route_quarantine_follows_the_route() {
    let upstream = Upstream::start();
    let gate = release_gate(&upstream, false);
    let queued = send_card(&gate, "q-route@x");
    assert!(wait_until(SOON, || gate.metric("smtpgate_quarantined_total") == 1.0));
    let entry = only_entry(&gate);
    assert_eq!(
        entry["id"],
        queued.as_str(),
        "the quarantine id is the id the client got"
    );
    assert_eq!(entry["filter"], "dlp");
    let logged = gate
        .stderr_lines()
        .iter()
        .any(|l| l.contains("message quarantined") && l.contains(&queued));
    assert!(logged, "a `message quarantined` line names {queued}");
    assert_eq!(upstream.messages().len(), 0);
    assert_released_as_routed(&gate, &upstream, &queued, "q-route@x");
}
