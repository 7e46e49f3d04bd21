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
