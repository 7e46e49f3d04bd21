//! End-to-end: a `sanitize` filter on the listener adds a footer and List-Unsubscribe fields,
//! as seen by the upstream, for a message sent with Python's smtplib.

mod support;

use support::{Gate, GateConfig, SOON, Upstream, header_values, smtplib_send, wait_until};

const MESSAGE: &str = "From: Alice <alice@example.test>\r\n\
To: Bob <bob@example.org>\r\n\
Subject: newsletter\r\n\
Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n\
Message-ID: <sanitize-1@example.test>\r\n\
Received: from app.corp (app.corp [192.168.7.7]) by mta.corp; Thu, 01 Jan 2026 00:00:00 +0000\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/alternative; boundary=\"alt\"\r\n\
\r\n\
--alt\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
Content-Transfer-Encoding: quoted-printable\r\n\
\r\n\
News of the week, caf=C3=A9 edition.\r\n\
--alt\r\n\
Content-Type: text/html; charset=utf-8\r\n\
\r\n\
<html><body><p>News of the week.</p></body></html>\r\n\
--alt--\r\n";

fn gate(upstream: &Upstream) -> Gate {
    let filter = "[[filter]]\nname = \"clean\"\nkind = \"sanitize\"\n\
        remove_received = \"internal\"\nnormalize = true\n\
        footer_text = \"Example Ltd., 1 Road, Town\"\nfooter_html = \"<p>Example Ltd., 1 Road, Town</p>\"\n\
        list_unsubscribe = { url = \"https://example.test/unsub?u={recipient}\", mailto = \"unsubscribe@example.test\", one_click = true }";
    let config = GateConfig::relay_to(upstream.addr())
        .top(filter)
        .listener("filters = [\"clean\"]");
    Gate::start(&config.to_toml())
}

#[test]
fn smtplib_message_arrives_with_footer_and_list_unsubscribe() {
    let upstream = Upstream::start();
    let gate = gate(&upstream);

    let sent = smtplib_send(
        gate.smtp_addr(),
        "alice@example.test",
        &["bob+news@example.org"],
        MESSAGE,
    );
    assert!(sent.reply("END-OF-DATA").starts_with("250 "), "{sent}");

    let mut arrived = None;
    wait_until(SOON, || {
        arrived = upstream
            .messages()
            .into_iter()
            .find(|m| m.text().contains("sanitize-1@example.test"));
        arrived.is_some()
    });
    let arrived = arrived.expect("the message did not arrive upstream");
    let raw = arrived.text();

    assert_eq!(
        header_values(&raw, "List-Unsubscribe"),
        ["<https://example.test/unsub?u=bob%2Bnews%40example.org>, <mailto:unsubscribe@example.test>"],
        "{raw}"
    );
    assert_eq!(
        header_values(&raw, "List-Unsubscribe-Post"),
        ["List-Unsubscribe=One-Click"]
    );
    let received = header_values(&raw, "Received");
    assert_eq!(received.len(), 1, "only the gate's own Received stays: {raw}");
    assert!(received[0].contains("by gate.example.test"), "{raw}");

    let parsed = mail_parser::MessageParser::default()
        .parse(&arrived.data)
        .expect("parsable");
    let text = parsed.body_text(0).expect("text part");
    assert!(text.starts_with("News of the week, café edition.\r\n"), "{text:?}");
    assert!(text.contains("Example Ltd., 1 Road, Town"), "{text:?}");
    let html = parsed.body_html(0).expect("html part");
    assert!(
        html.contains("<p>News of the week.</p><p>Example Ltd., 1 Road, Town</p>"),
        "{html:?}"
    );
    for line in arrived.data.split(|&b| b == b'\n') {
        assert!(line.len() <= 1000, "line over 998 octets");
    }
}
