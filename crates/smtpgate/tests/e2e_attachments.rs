//! Blocked attachments end to end: a `content` filter whose `block_attachments` names extensions
//! in each of the forms people write (`.exe`, `scr`, `*.js`), a real client (Python's smtplib)
//! sending one attachment per message, and `check-config` refusing an entry that could never
//! match.
//!
//! Regression: `block_attachments = [".exe"]` passed `check-config` and blocked nothing.

mod support;

use smtpgate_proto::Reply;
use support::{Gate, GateConfig, SOON, Upstream, header_values, run_smtpgate, smtplib_send};

const BLOCK: &str = r#"
[[filter]]
name = "attachments"
kind = "content"
block_attachments = [".exe", "scr", "*.js"]
"#;

/// A message with a text part and one attachment named `filename` (base64 of a few bytes).
fn with_attachment(id: &str, filename: &str) -> String {
    format!(
        "From: Alice <alice@example.test>\r\n\
         To: Bob <bob@example.org>\r\n\
         Subject: files\r\n\
         Message-ID: <{id}>\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"b1\"\r\n\
         \r\n\
         --b1\r\n\
         Content-Type: text/plain\r\n\
         \r\n\
         see attached\r\n\
         --b1\r\n\
         Content-Type: application/octet-stream; name=\"{filename}\"\r\n\
         Content-Disposition: attachment; filename=\"{filename}\"\r\n\
         Content-Transfer-Encoding: base64\r\n\
         \r\n\
         TVqQAAMAAAAEAAAA\r\n\
         --b1--\r\n"
    )
}

fn send(gate: &Gate, id: &str, filename: &str) -> String {
    let sent = smtplib_send(
        gate.smtp_addr(),
        "alice@example.test",
        &["bob@example.org"],
        &with_attachment(id, filename),
    );
    sent.reply("END-OF-DATA")
}

#[test]
fn extensions_written_as_dot_bare_or_glob_are_all_blocked() {
    let upstream = Upstream::start();
    let toml = GateConfig::relay_to(upstream.addr())
        .listener("filters = [\"attachments\"]")
        .to_toml()
        + BLOCK;
    let gate = Gate::start(&toml);
    let refused = Reply::content_rejected("attachment type not allowed").to_string();

    for (id, name) in [
        ("dot@x", "setup.exe"),
        ("bare@x", "Screen.SCR"),
        ("glob@x", "app.js"),
        ("double@x", "invoice.pdf.exe"),
    ] {
        assert_eq!(send(&gate, id, name), refused, "{name} was not refused");
    }
    for (id, name) in [
        ("pdf@x", "report.pdf"),
        ("json@x", "data.json"),
        ("exetxt@x", "setup.exe.txt"),
    ] {
        let reply = send(&gate, id, name);
        assert!(reply.starts_with("250 "), "{name} was refused: {reply}");
    }

    // The refused messages got their 550 at the end of DATA, before any was queued: only the
    // accepted ones can arrive.
    let arrived = upstream.wait_for(3, SOON);
    let mut ids: Vec<String> = arrived
        .iter()
        .flat_map(|m| header_values(&m.text(), "Message-ID"))
        .collect();
    ids.sort();
    assert_eq!(ids, ["<exetxt@x>", "<json@x>", "<pdf@x>"]);
}

#[test]
fn check_config_refuses_an_attachment_entry_that_could_never_match() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("smtpgate.toml");
    let toml = GateConfig::relay_to("127.0.0.1:25".parse().unwrap())
        .listener("filters = [\"attachments\"]")
        .to_toml()
        + "[[filter]]\nname = \"attachments\"\nkind = \"content\"\nblock_attachments = [\"exe\", \"bin/*.exe\"]\n";
    std::fs::write(&file, toml).expect("write config");

    let ran = run_smtpgate(&["check-config", file.to_str().unwrap()], None, None);

    let status = ran.status.expect("check-config finished");
    let output = format!("{}{}", ran.stdout, ran.stderr);
    assert!(
        !status.success(),
        "check-config accepted a pattern that never matches:\n{output}"
    );
    let line = output
        .lines()
        .find(|l| l.contains("block_attachments[1]"))
        .unwrap_or_else(|| panic!("no line names block_attachments[1]:\n{output}"));
    assert!(
        line.contains("bin/*.exe") && line.contains("only the file name"),
        "{line}"
    );
    assert!(
        !output.contains("block_attachments[0]"),
        "\"exe\" is an extension:\n{output}"
    );
}
