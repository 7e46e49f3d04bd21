//! Bounce classification and the suppression list end to end: a hard bounce suppresses its
//! address, a complaint report (ARF) suppresses the recipient it names, a late bounce (DSN) is
//! recognised and matched, and the CLI lists, adds and removes entries through the admin address.

mod support;

use std::process::Command;

use support::{ARF, Gate, GateConfig, SOON, Upstream, message, smtplib, smtplib_send, wait_until};

fn cli(gate: &Gate, args: &[&str]) -> (bool, String) {
    let admin = gate.admin_addr().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_smtpgate"))
        .arg("suppression")
        .args(args)
        .args(["--admin", &admin])
        .arg("--token-file")
        .arg(gate.admin_token_file())
        .output()
        .expect("run smtpgate suppression");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn rcpt_reply(gate: &Gate, to: &str) -> String {
    let t = smtplib_send(
        gate.smtp_addr(),
        "alice@example.test",
        &[to],
        &message("x@example.test", "x", "x"),
    );
    t.reply("RCPT")
}

fn labeled(gate: &Gate, sample: &str) -> f64 {
    let text = gate.metrics();
    text.lines()
        .find_map(|l| l.strip_prefix(sample).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0)
}

/// A 550 5.1.1 from the upstream is classified bad_mailbox and suppresses the address: the next
/// message to it is refused at RCPT. A 4xx is classified and counted but suppresses nothing. The
/// CLI lists the entry and removes it; a manual entry refuses as well.
#[test]
fn a_hard_bounce_suppresses_until_removed() {
    let upstream = Upstream::start();
    let gate = Gate::start(&GateConfig::relay_to(upstream.addr()).retry(&["30s"]).to_toml());
    assert!(rcpt_reply(&gate, "reject-rcpt@example.org").starts_with("250"));
    assert!(rcpt_reply(&gate, "tempfail-rcpt@example.org").starts_with("250"));
    let counted = || {
        labeled(&gate, "smtpgate_failures_total{category=\"bad_mailbox\",class=\"5\"} ") == 1.0
            && labeled(&gate, "smtpgate_failures_total{category=\"other\",class=\"4\"} ")
                + labeled(&gate, "smtpgate_failures_total{category=\"rate_limited\",class=\"4\"} ")
                + labeled(&gate, "smtpgate_failures_total{category=\"mailbox_full\",class=\"4\"} ")
                >= 1.0
    };
    assert!(wait_until(SOON, counted), "{}", gate.metrics());
    assert_eq!(gate.metric("smtpgate_suppressed_addresses"), 1.0);

    let refused = rcpt_reply(&gate, "Reject-RCPT@example.org");
    assert!(refused.starts_with("550 5.1.1 "), "{refused}");
    assert!(refused.contains("suppressed (hard bounce)"), "{refused}");
    assert!(
        rcpt_reply(&gate, "tempfail-rcpt@example.org").starts_with("250"),
        "soft failures are not suppressed"
    );

    let (ok, listed) = cli(&gate, &["list"]);
    assert!(ok, "{listed}");
    let entries: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(entries[0]["address"], "reject-rcpt@example.org", "{listed}");
    assert_eq!(entries[0]["reason"], "hard_bounce", "{listed}");
    assert!(
        entries[0]["source"].as_str().unwrap().contains("No such user"),
        "{listed}"
    );

    let (ok, out) = cli(&gate, &["remove", "reject-rcpt@example.org"]);
    assert!(ok, "{out}");
    assert!(rcpt_reply(&gate, "reject-rcpt@example.org").starts_with("250"));
    let (ok, out) = cli(&gate, &["remove", "nobody@example.org"]);
    assert!(!ok, "removing an absent entry fails: {out}");

    let (ok, out) = cli(&gate, &["add", "Manual@Example.org"]);
    assert!(ok, "{out}");
    let refused = rcpt_reply(&gate, "manual@example.org");
    assert!(refused.contains("suppressed (manual)"), "{refused}");
    let (ok, out) = cli(&gate, &["add", "not an address"]);
    assert!(!ok, "{out}");
}

/// A complaint sent to the complaints address suppresses the recipient it names; the report is
/// consumed, not delivered.
#[test]
fn a_complaint_report_suppresses_its_recipient() {
    let upstream = Upstream::start();
    let config = GateConfig::relay_to(upstream.addr())
        .top("[suppression]\ncomplaints_address = \"fbl@example.test\"")
        .to_toml();
    let gate = Gate::start(&config);
    // The message complained about is one the gate relayed to that recipient.
    let original = message("original-1@example.test", "offer", "Buy now.");
    let t = smtplib_send(
        gate.smtp_addr(),
        "alice@example.test",
        &["victim@example.org"],
        &original,
    );
    assert!(t.reply("END-OF-DATA").starts_with("250 "), "{t}");
    upstream.wait_for(1, SOON);
    let t = smtplib_send(gate.smtp_addr(), "feedback@isp.example", &["fbl@example.test"], ARF);
    assert!(t.reply("END-OF-DATA").starts_with("250 "), "{t}");
    assert!(
        wait_until(SOON, || rcpt_reply(&gate, "victim@example.org")
            .contains("suppressed (complaint)")),
        "the complaint suppressed its recipient"
    );
    assert!(rcpt_reply(&gate, "bystander@example.org").starts_with("250"));
    let got = upstream.wait_for(1, SOON);
    assert!(
        got.iter().all(|m| m.rcpt_addresses() != ["fbl@example.test"]),
        "the report was delivered: {got:#?}"
    );
}

/// A DSN for the message `message_id` saying `rcpt` failed with 5.1.1.
fn dsn_for(message_id: &str, rcpt: &str) -> String {
    format!(
        "From: MAILER-DAEMON@mx.example.org\r\n\
To: alice@example.test\r\n\
Subject: Undelivered Mail Returned to Sender\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/report; report-type=delivery-status; boundary=\"d1\"\r\n\
\r\n\
--d1\r\n\
Content-Type: message/delivery-status\r\n\
\r\n\
Reporting-MTA: dns; mx.example.org\r\n\
\r\n\
Final-Recipient: rfc822; {rcpt}\r\n\
Action: failed\r\n\
Status: 5.1.1\r\n\
Diagnostic-Code: smtp; 550 5.1.1 <{rcpt}>: User unknown\r\n\
\r\n\
--d1\r\n\
Content-Type: text/rfc822-headers\r\n\
\r\n\
From: alice@example.test\r\n\
To: {rcpt}\r\n\
Message-ID: <{message_id}>\r\n\
Subject: hello\r\n\
\r\n\
--d1--\r\n"
    )
}

/// Forged reports change nothing: a bounce or a complaint about a message the gate never sent,
/// or about a recipient it did not send that message to, suppresses no one; each is counted as
/// unmatched. A genuine one (the same report for what the gate did send) still suppresses.
#[test]
fn forged_reports_suppress_no_one() {
    let upstream = Upstream::start();
    let config = GateConfig::relay_to(upstream.addr())
        .top("[suppression]\ncomplaints_address = \"fbl@example.test\"")
        .to_toml();
    let gate = Gate::start(&config);
    let sent = message("real-1@example.test", "hello", "Sent by the gate.");
    let t = smtplib_send(gate.smtp_addr(), "alice@example.test", &["real@example.org"], &sent);
    assert!(t.reply("END-OF-DATA").starts_with("250 "), "{t}");
    upstream.wait_for(1, SOON);

    // Never sent: an unknown Message-ID, and a known one for another recipient.
    for (id, rcpt) in [
        ("made-up@example.test", "victim@example.org"),
        ("real-1@example.test", "victim@example.org"),
    ] {
        let t = smtplib_send(gate.smtp_addr(), "", &["alice@example.test"], &dsn_for(id, rcpt));
        assert!(t.reply("END-OF-DATA").starts_with("250 "), "{t}");
    }
    let t = smtplib_send(gate.smtp_addr(), "feedback@isp.example", &["fbl@example.test"], ARF);
    assert!(t.reply("END-OF-DATA").starts_with("250 "), "{t}");
    let unmatched = |kind: &str| {
        labeled(
            &gate,
            &format!("smtpgate_reports_total{{kind=\"{kind}\",result=\"unmatched\"}}"),
        )
    };
    assert!(
        wait_until(SOON, || unmatched("bounce") == 2.0 && unmatched("complaint") == 1.0),
        "forged reports counted as unmatched:\n{}",
        gate.metrics()
    );
    assert_eq!(gate.metric("smtpgate_suppressed_addresses"), 0.0);
    assert!(rcpt_reply(&gate, "victim@example.org").starts_with("250"));

    // The genuine bounce still suppresses.
    let t = smtplib_send(
        gate.smtp_addr(),
        "",
        &["alice@example.test"],
        &dsn_for("real-1@example.test", "real@example.org"),
    );
    assert!(t.reply("END-OF-DATA").starts_with("250 "), "{t}");
    assert!(wait_until(SOON, || gate.metric("smtpgate_suppressed_addresses") == 1.0));
    assert!(rcpt_reply(&gate, "real@example.org").contains("suppressed (hard bounce)"));
    assert!(rcpt_reply(&gate, "victim@example.org").starts_with("250"));
}

/// A client's reports beyond `reports_per_minute` are not read: the third genuine bounce from one
/// client within the minute is counted as limited and suppresses no one.
#[test]
fn reports_per_client_are_limited() {
    let upstream = Upstream::start();
    let config = GateConfig::relay_to(upstream.addr())
        .top("[suppression]\nreports_per_minute = 2")
        .to_toml();
    let gate = Gate::start(&config);
    let rcpts = ["r1@example.org", "r2@example.org", "r3@example.org"];
    for (i, rcpt) in rcpts.iter().enumerate() {
        let sent = message(&format!("lim-{i}@example.test"), "hello", "Sent by the gate.");
        let t = smtplib_send(gate.smtp_addr(), "alice@example.test", &[rcpt], &sent);
        assert!(t.reply("END-OF-DATA").starts_with("250 "), "{t}");
    }
    upstream.wait_for(3, SOON);
    for (i, rcpt) in rcpts.iter().enumerate() {
        let t = smtplib_send(
            gate.smtp_addr(),
            "",
            &["alice@example.test"],
            &dsn_for(&format!("lim-{i}@example.test"), rcpt),
        );
        assert!(t.reply("END-OF-DATA").starts_with("250 "), "{t}");
    }
    let limited = || labeled(&gate, "smtpgate_reports_total{kind=\"bounce\",result=\"limited\"}");
    assert!(wait_until(SOON, || limited() == 1.0), "{}", gate.metrics());
    assert!(wait_until(SOON, || gate.metric("smtpgate_suppressed_addresses") == 2.0));
    assert!(rcpt_reply(&gate, "r3@example.org").starts_with("250"));
}

/// A DSN that arrives later (to the null sender's mail) is recognised: its failed recipient is
/// classified and suppressed, the original message is matched by Message-ID, and the DSN itself
/// still reaches its recipient. With `action = "drop"`, a suppressed recipient is accepted at RCPT
/// and dropped, the others delivered.
#[test]
fn a_late_bounce_is_matched_and_drop_mode_drops() {
    let upstream = Upstream::start();
    let config = GateConfig::relay_to(upstream.addr())
        .top("[suppression]\naction = \"drop\"")
        .to_toml();
    let gate = Gate::start(&config);
    let original = message("late-1@example.test", "hello", "First message.");
    let t = smtplib_send(gate.smtp_addr(), "alice@example.test", &["gone@example.org"], &original);
    assert!(t.reply("END-OF-DATA").starts_with("250 "), "{t}");
    upstream.wait_for(1, SOON);

    let dsn = "From: MAILER-DAEMON@mx.example.org\r\n\
To: alice@example.test\r\n\
Subject: Undelivered Mail Returned to Sender\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/report; report-type=delivery-status; boundary=\"d1\"\r\n\
\r\n\
--d1\r\n\
Content-Type: text/plain\r\n\
\r\n\
Your message could not be delivered.\r\n\
--d1\r\n\
Content-Type: message/delivery-status\r\n\
\r\n\
Reporting-MTA: dns; mx.example.org\r\n\
\r\n\
Final-Recipient: rfc822; gone@example.org\r\n\
Action: failed\r\n\
Status: 5.1.1\r\n\
Diagnostic-Code: smtp; 550 5.1.1 <gone@example.org>: Recipient address rejected: User unknown\r\n\
\r\n\
--d1\r\n\
Content-Type: text/rfc822-headers\r\n\
\r\n\
From: alice@example.test\r\n\
To: gone@example.org\r\n\
Message-ID: <late-1@example.test>\r\n\
Subject: hello\r\n\
\r\n\
--d1--\r\n";
    let t = smtplib_send(gate.smtp_addr(), "", &["alice@example.test"], dsn);
    assert!(t.reply("END-OF-DATA").starts_with("250 "), "{t}");
    let got = upstream.wait_for(2, SOON);
    assert_eq!(
        got[1].rcpt_addresses(),
        ["alice@example.test"],
        "the DSN is still delivered"
    );
    assert!(wait_until(SOON, || gate.metric("smtpgate_suppressed_addresses") == 1.0));
    assert!(
        wait_until(SOON, || gate
            .stderr_lines()
            .iter()
            .any(|l| l.contains("asynchronous bounce")
                && l.contains("recipient=gone@example.org")
                && !l.contains("original_queue_id=-"))),
        "no log line for the late bounce"
    );

    // Drop mode: accepted at RCPT, dropped; the other recipient gets the message.
    let script = format!(
        "s = connect()\nsend(s, 'alice@example.test', ['gone@example.org', 'here@example.org'], {:?})\nquit(s)\n",
        message("after@example.test", "after", "Second message.")
    );
    let t = smtplib(gate.smtp_addr(), &script);
    assert_eq!(
        t.replies("RCPT"),
        ["250 2.1.5 recipient OK", "250 2.1.5 recipient OK"],
        "{t}"
    );
    let got = upstream.wait_for(3, SOON);
    assert_eq!(got[2].rcpt_addresses(), ["here@example.org"]);
}
