//! The injection API end to end: an application POSTs JSON to `/api/v1/inject` (Python's
//! urllib, a client nobody here wrote), each recipient's message is built with its own
//! substitutions, goes through the listener's filters and routing like SMTP mail, and reaches
//! the upstream (Postfix's smtp-sink); the answer names each recipient's queue id or why it was
//! refused. A bad request gets a JSON error, and no token no answer.

mod support;

use std::process::Command;
use std::time::Duration;

use support::{Gate, GateConfig, SOON, Sink, run_with_deadline};

/// Content rules on the listener: a subject with "refuse me" is refused before queueing.
fn gate_with_rules(sink: &Sink) -> Gate {
    let config = GateConfig::relay_to(sink.addr())
        .listener("filters = [\"rules\"]")
        .queue(
            "\n[[filter]]\nname = \"rules\"\nkind = \"content\"\n\
             header_rules = [{ header = \"Subject\", regex = \"refuse me\", action = \"reject\" }]",
        );
    Gate::start(&config.to_toml())
}

/// POSTs `body` to the gate's inject endpoint with urllib: (status, response body).
fn post(gate: &Gate, body: &str, token: Option<&str>) -> (u16, String) {
    let script = r#"
import sys, urllib.request, urllib.error
url, token, body = sys.argv[1], sys.argv[2], open(sys.argv[3], "rb").read()
req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
if token:
    req.add_header("Authorization", "Bearer " + token)
try:
    with urllib.request.urlopen(req, timeout=30) as r:
        status, text = r.status, r.read().decode()
except urllib.error.HTTPError as e:
    status, text = e.code, e.read().decode()
print(status)
print(text, end="")
"#;
    let url = format!("http://{}/api/v1/inject", gate.admin_addr());
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("body.json");
    std::fs::write(&input, body).unwrap();
    let mut cmd = Command::new("python3");
    cmd.args(["-c", script, &url, token.unwrap_or("")]).arg(&input);
    let ran = run_with_deadline(cmd, Duration::from_secs(60));
    assert!(ran.succeeded(), "urllib failed: {}", ran.stderr);
    let (status, text) = ran.stdout.split_once('\n').expect("status line");
    (status.trim().parse().expect("status"), text.to_owned())
}

#[test]
fn each_recipient_gets_its_own_message_through_policy_and_routing() {
    let sink = Sink::start();
    let gate = gate_with_rules(&sink);
    let body = r#"{
        "envelope_sender": "shop@example.test",
        "substitutions": {"shop": "Example Shop"},
        "recipients": [
            {"email": "ann@example.org", "substitutions": {"name": "Ann"}},
            {"email": "bob@example.org", "substitutions": {"name": "Bob"}}
        ],
        "content": {
            "from": "Example Shop <shop@example.test>",
            "subject": "Your order, {{ name }}",
            "text_body": "Hello {{ name }},\nthanks for shopping at {{ shop }}.\n",
            "html_body": "<p>Hello {{ name }}</p>",
            "headers": [["X-Campaign", "orders"]],
            "attachments": [{"content_type": "text/plain", "file_name": "receipt.txt", "base64": "cmVjZWlwdA=="}]
        }
    }"#;
    let (status, text) = post(&gate, body, Some(&gate.admin_token()));
    assert_eq!(status, 200, "{text}");
    let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
    let accepted = answer["accepted"].as_array().unwrap();
    assert_eq!(accepted.len(), 2, "{text}");
    assert!(answer["refused"].as_array().unwrap().is_empty(), "{text}");
    assert_eq!(accepted[0]["recipient"], "ann@example.org");
    assert_eq!(accepted[0]["queue_ids"].as_array().unwrap().len(), 1, "{text}");

    let messages = sink.wait_for_messages(2, SOON);
    let ann = messages
        .iter()
        .find(|m| m.contains("Your order, Ann"))
        .expect("Ann's message");
    let bob = messages
        .iter()
        .find(|m| m.contains("Your order, Bob"))
        .expect("Bob's message");
    assert!(ann.contains("Hello Ann,") && ann.contains("Example Shop"), "{ann}");
    assert!(ann.contains("X-Campaign: orders"), "{ann}");
    assert!(ann.contains("receipt.txt"), "{ann}");
    assert!(!bob.contains("Ann"), "{bob}");
    let queue_id = accepted[0]["queue_ids"][0].as_str().unwrap();
    assert!(
        ann.contains(&format!("with HTTP id {queue_id}")),
        "the Received: line names the queue id: {ann}"
    );
    assert!(ann.contains("Message-ID: <"), "{ann}");
}

#[test]
fn policy_refuses_a_recipient_and_bad_requests_get_json_errors() {
    let sink = Sink::start();
    let gate = gate_with_rules(&sink);
    let token = gate.admin_token();
    // The listener's content rule refuses this one; the other recipient's subject passes.
    let body = r#"{
        "envelope_sender": "app@example.test",
        "recipients": [{"email": "a@example.org", "substitutions": {"s": "please refuse me"}},
                       {"email": "b@example.org", "substitutions": {"s": "fine"}}],
        "content": "From: app@example.test\nSubject: {{ s }}\n\nbody\n"
    }"#;
    let (status, text) = post(&gate, body, Some(&token));
    assert_eq!(status, 200, "{text}");
    let answer: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(answer["refused"][0]["recipient"], "a@example.org", "{text}");
    assert!(
        answer["refused"][0]["reason"].as_str().unwrap().starts_with('5'),
        "{text}"
    );
    assert_eq!(answer["accepted"][0]["recipient"], "b@example.org", "{text}");
    let delivered = sink.wait_for_messages(1, SOON);
    assert!(delivered[0].contains("Subject: fine"), "{delivered:?}");

    for (bad, says) in [
        ("{not json", "not an inject request"),
        (
            r#"{"envelope_sender": "a@example.test", "recipients": [], "content": "x"}"#,
            "no recipients",
        ),
        (
            r#"{"envelope_sender": "not an address", "recipients": [{"email": "b@example.org"}], "content": "x"}"#,
            "envelope_sender",
        ),
        (
            r#"{"envelope_sender": "", "recipients": [{"email": "b@example.org"}], "content": "x", "listener": "nope"}"#,
            "no listener",
        ),
    ] {
        let (status, text) = post(&gate, bad, Some(&token));
        assert_eq!(status, 400, "{bad}: {text}");
        let error: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert!(error["error"].as_str().unwrap().contains(says), "{bad}: {text}");
    }
    let (status, _) = post(&gate, body, None);
    assert_eq!(status, 401, "no token, no injection");
    assert_eq!(sink.message_count(), 1, "nothing more was sent");
}
