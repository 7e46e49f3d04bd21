//! End-to-end relay scenarios: real clients send through a running smtpgate to a real
//! destination (Postfix's smtp-sink, or the scriptable upstream), one scenario per test.

mod support;

use std::time::Duration;

use support::{
    Gate, GateConfig, SOON, Sink, Upstream, header_values, message, smtp_source, smtplib_send, swaks, wait_until,
};

const LOAD: Duration = Duration::from_secs(120);

#[test]
fn smtplib_message_arrives_at_sink_with_received_header_naming_the_gate() {
    let sink = Sink::start();
    let gate = Gate::start(&GateConfig::relay_to(sink.addr()).to_toml());

    let sent = smtplib_send(
        gate.smtp_addr(),
        "alice@example.test",
        &["bob@example.org"],
        &message("smtplib-1@example.test", "hello", "Hello through the gate."),
    );

    let end_of_data = sent.reply("END-OF-DATA");
    assert!(end_of_data.starts_with("250 "), "{sent}");
    assert!(end_of_data.contains("queued as"), "{sent}");
    let arrived = sink.wait_for_messages(1, SOON);
    assert_eq!(sink.message_ids(), ["<smtplib-1@example.test>"]);
    let received = header_values(&arrived[0], "Received");
    assert!(
        received.iter().any(|r| r.contains("by gate.example.test")),
        "no Received header by gate.example.test in:\n{}",
        arrived[0]
    );
}

#[test]
fn swaks_message_arrives_at_sink() {
    let sink = Sink::start();
    let gate = Gate::start(&GateConfig::relay_to(sink.addr()).to_toml());
    let server = gate.smtp_addr().to_string();

    let (status, transcript) = swaks(&[
        "--server",
        &server,
        "--from",
        "alice@example.test",
        "--to",
        "bob@example.org",
        "--helo",
        "client.example.test",
        "--header",
        "Message-Id: <swaks-1@example.test>",
        "--body",
        "Hello from swaks.",
    ]);

    assert!(status.success(), "swaks failed:\n{transcript}");
    sink.wait_for_messages(1, SOON);
    assert_eq!(sink.message_ids(), ["<swaks-1@example.test>"]);
}

#[test]
fn smtp_source_load_of_200_messages_all_arrive_and_are_counted() {
    let sink = Sink::start();
    let gate = Gate::start(&GateConfig::relay_to(sink.addr()).to_toml());
    let target = format!("127.0.0.1:{}", gate.smtp_addr().port());

    let (status, output) = smtp_source(
        &[
            "-s",
            "5",
            "-m",
            "200",
            "-l",
            "2000",
            "-f",
            "from@example.test",
            "-t",
            "to@example.test",
            &target,
        ],
        LOAD,
    );

    assert!(status.is_some_and(|s| s.success()), "smtp-source: {status:?}\n{output}");
    sink.wait_for_messages(200, LOAD);
    let counted = |name| wait_until(SOON, || gate.try_metric(name).unwrap_or(0.0) >= 200.0);
    assert!(counted("smtpgate_messages_received_total"), "{}", gate.metrics());
    assert!(counted("smtpgate_messages_delivered_total"), "{}", gate.metrics());
}

#[test]
fn tempfail_at_rcpt_is_retried_until_the_upstream_accepts() {
    let upstream = Upstream::fail_first(2);
    let gate = Gate::start(&GateConfig::relay_to(upstream.addr()).retry(&["1s"]).to_toml());

    let sent = smtplib_send(
        gate.smtp_addr(),
        "alice@example.test",
        &["tempfail-rcpt@example.org"],
        &message("retry-rcpt@example.test", "retry", "Third time lucky."),
    );

    assert!(sent.reply("END-OF-DATA").starts_with("250 "), "{sent}");
    let delivered = upstream.wait_for(1, Duration::from_secs(30));
    assert_eq!(delivered[0].rcpt_addresses(), ["tempfail-rcpt@example.org"]);
    assert_eq!(upstream.attempts_for("tempfail-rcpt@example.org"), 3);
    assert!(gate.metric("smtpgate_messages_deferred_total") >= 1.0);
}

#[test]
fn tempfail_after_data_is_retried_until_the_upstream_accepts() {
    let upstream = Upstream::fail_first(2);
    let gate = Gate::start(&GateConfig::relay_to(upstream.addr()).retry(&["1s"]).to_toml());

    let sent = smtplib_send(
        gate.smtp_addr(),
        "alice@example.test",
        &["tempfail-data@example.org"],
        &message("retry-data@example.test", "retry", "Third time lucky."),
    );

    assert!(sent.reply("END-OF-DATA").starts_with("250 "), "{sent}");
    let delivered = upstream.wait_for(1, Duration::from_secs(30));
    assert_eq!(delivered.len(), 1, "delivered more than once");
    assert!(delivered[0].text().contains("Message-ID: <retry-data@example.test>"));
    assert_eq!(upstream.attempts_for("tempfail-data@example.org"), 3);
    let delivered_metric = |gate: &Gate| gate.try_metric("smtpgate_messages_delivered_total");
    assert!(
        wait_until(SOON, || delivered_metric(&gate) == Some(1.0)),
        "{}",
        gate.metrics()
    );
}

#[test]
fn rejected_rcpt_bounces_a_delivery_status_report_to_the_sender() {
    let upstream = Upstream::start();
    let gate = Gate::start(&GateConfig::relay_to(upstream.addr()).to_toml());

    let sent = smtplib_send(
        gate.smtp_addr(),
        "alice@example.test",
        &["reject-rcpt@example.org"],
        &message("bounce-me@example.test", "doomed", "Nobody will read this."),
    );

    assert!(sent.reply("END-OF-DATA").starts_with("250 "), "{sent}");
    let bounce = &upstream.wait_for(1, SOON)[0];
    let text = bounce.text();
    assert_eq!(bounce.mail_from, "", "a bounce comes from the null sender");
    assert_eq!(bounce.rcpt_addresses(), ["alice@example.test"]);
    let content_type = header_values(&text, "Content-Type").join(" ").to_ascii_lowercase();
    assert!(content_type.contains("multipart/report"), "{text}");
    assert!(
        content_type.contains("report-type=delivery-status")
            || content_type.contains("report-type=\"delivery-status\""),
        "{text}"
    );
    assert!(has_field(&text, "Status", "5.1.1"), "{text}");
    assert!(has_field(&text, "Action", "failed"), "{text}");
    assert!(text.contains("reject-rcpt@example.org"), "{text}");
    assert_eq!(upstream.attempts_for("reject-rcpt@example.org"), 1);
}

#[test]
fn rejected_message_from_the_null_sender_is_not_bounced() {
    let upstream = Upstream::start();
    let gate = Gate::start(&GateConfig::relay_to(upstream.addr()).to_toml());

    let sent = smtplib_send(
        gate.smtp_addr(),
        "",
        &["reject-rcpt@example.org"],
        &message("null-sender@example.test", "a bounce", "Bounces are never bounced."),
    );

    assert!(sent.reply("END-OF-DATA").starts_with("250 "), "{sent}");
    let failed_and_gone = wait_until(SOON, || {
        gate.try_metric("smtpgate_messages_bounced_total").unwrap_or(0.0) >= 1.0
            && gate.try_metric("smtpgate_queue_depth") == Some(0.0)
    });
    assert!(failed_and_gone, "{}", gate.metrics());
    assert_eq!(upstream.attempts_for("reject-rcpt@example.org"), 1);

    // A message sent after the failure was handled arrives alone: no bounce went before it.
    let sentinel = smtplib_send(
        gate.smtp_addr(),
        "alice@example.test",
        &["carol@example.org"],
        &message("sentinel@example.test", "after", "Only me."),
    );
    assert!(sentinel.reply("END-OF-DATA").starts_with("250 "), "{sentinel}");
    let arrived = upstream.wait_for(1, SOON);
    assert_eq!(arrived.len(), 1, "unexpected extra message: {arrived:#?}");
    assert_eq!(arrived[0].rcpt_addresses(), ["carol@example.org"]);
}

#[test]
fn relative_spool_dir_is_announced_as_absolute_under_the_config_folder() {
    let sink = Sink::start();
    let gate = Gate::start(&GateConfig::relay_to(sink.addr()).to_toml());

    let announced = gate.spool_dir();

    assert!(announced.is_absolute(), "{announced:?}");
    let expected = gate.dir().canonicalize().unwrap().join("spool");
    assert_eq!(announced.canonicalize().unwrap(), expected);
}

/// Whether a delivery-status field `name: value` appears on a line of its own
/// (field names are case-insensitive; extra text after the value is allowed).
fn has_field(text: &str, name: &str, value: &str) -> bool {
    text.lines().any(|line| {
        line.split_once(':').is_some_and(|(n, v)| {
            n.trim().eq_ignore_ascii_case(name) && v.trim().to_ascii_lowercase().starts_with(value)
        })
    })
}
