//! DATA and BDAT: what ends a message, what gets stored, pipelining.

use super::{Harness, INSIDE, config_with};

async fn ready_for_data(extra: &str) -> Harness {
    let mut h = Harness::start(&config_with(extra), INSIDE).await;
    h.ehlo().await;
    h.cmd("MAIL FROM:<a@local.test>", "250").await;
    h.cmd("RCPT TO:<b@local.test>", "250").await;
    h
}

fn stored_body(h: &Harness) -> String {
    let spooled = h.spooled();
    assert_eq!(spooled.len(), 1, "one message spooled");
    String::from_utf8_lossy(&spooled[0].1).into_owned()
}

#[tokio::test]
async fn message_is_spooled_with_a_received_header_before_250() {
    let mut h = ready_for_data("").await;
    h.cmd("DATA", "354").await;
    h.send(b"Subject: hello\r\n\r\n..leading dot\r\nbody\r\n.\r\n").await;
    let r = h.expect("250 2.0.0 OK queued as ").await;
    let body = stored_body(&h);
    let id = r.trim_end().rsplit(' ').next().unwrap();
    assert!(body.starts_with("Received: from client.test ([127.0.0.1])\r\n\tby gate.test (smtpgate) with ESMTP id "));
    assert!(body.contains(id));
    assert!(
        body.ends_with("Subject: hello\r\n\r\n.leading dot\r\nbody\r\n"),
        "{body:?}"
    );
}

/// SMTP smuggling (CVE-2023-51764/5/6): none of these ends the message.
#[tokio::test]
async fn lax_end_of_data_sequences_do_not_end_the_message() {
    for lax in [
        "\n.\n",
        "\r.\r",
        "\n.\r\n",
        "\r\n.\n",
        "\r\n.\r",
        "\r\n.\r\r\n",
        "\r\n\0.\r\n",
        "\r.\r\n",
    ] {
        // A NUL is refused by default; stripped, it must still not end the message.
        let extra = if lax.contains('\0') {
            "nul_bytes = \"strip\""
        } else {
            ""
        };
        let mut h = ready_for_data(extra).await;
        h.cmd("DATA", "354").await;
        let smuggled = format!(
            "Subject: one\r\n\r\nfirst{lax}MAIL FROM:<evil@x.test>\r\nRCPT TO:<v@local.test>\r\nDATA\r\nSubject: smuggled\r\n\r\n.\r\n"
        );
        h.send(smuggled.as_bytes()).await;
        h.expect("250 2.0.0").await;
        h.cmd("NOOP", "250 2.0.0").await;
        let spooled = h.spooled();
        assert_eq!(spooled.len(), 1, "{lax:?} split the message");
        let body = String::from_utf8_lossy(&spooled[0].1);
        assert!(
            body.contains("Subject: smuggled"),
            "{lax:?}: the rest stays inside the first message"
        );
        assert!(
            !body.contains("\n.\n") && !body.contains("\r.\r"),
            "stored body is CRLF-only: {body:?}"
        );
    }
}

#[tokio::test]
async fn bare_line_endings_can_be_refused() {
    let mut h = ready_for_data("bare_line_endings = \"reject\"").await;
    h.cmd("DATA", "354").await;
    h.send(b"Subject: x\r\n\r\nbare\nlf\r\n.\r\n").await;
    h.expect("550 5.6.0").await;
    assert!(h.spooled().is_empty());
}

#[tokio::test]
async fn nul_in_content_is_refused_by_default_and_ends_nothing() {
    let mut h = ready_for_data("").await;
    h.cmd("DATA", "354").await;
    h.send(b"Subject: x\r\n\r\nfirst\r\n\0.\r\nMAIL FROM:<evil@x.test>\r\n.\r\n")
        .await;
    h.expect("550 5.6.0").await;
    h.cmd("NOOP", "250 2.0.0").await;
    assert!(h.spooled().is_empty());
}

#[tokio::test]
async fn nul_in_a_bdat_chunk_is_refused_by_default() {
    let mut h = ready_for_data("").await;
    h.send(b"BDAT 5 LAST\r\na\0b\r\n").await;
    h.expect("550 5.6.0").await;
    assert!(h.spooled().is_empty());
}

#[tokio::test]
async fn content_before_the_354_closes_the_session_with_nothing_spooled() {
    let mut h = ready_for_data("").await;
    h.send(b"DATA\r\nSubject: early\r\n\r\n.\r\n").await;
    h.expect("554 5.5.0").await;
    assert!(h.spooled().is_empty());
}

#[tokio::test]
async fn pipelined_transaction_gets_all_replies() {
    let mut h = Harness::start(&config_with(""), INSIDE).await;
    h.ehlo().await;
    h.send(b"MAIL FROM:<a@local.test>\r\nRCPT TO:<b@local.test>\r\nRCPT TO:<c@local.test>\r\nDATA\r\n")
        .await;
    h.expect("250 2.1.0").await;
    h.expect("250 2.1.5").await;
    h.expect("250 2.1.5").await;
    h.expect("354").await;
    h.send(b"Subject: p\r\n\r\nx\r\n.\r\nMAIL FROM:<a@local.test>\r\nRCPT TO:<d@local.test>\r\nDATA\r\n")
        .await;
    h.expect("250 2.0.0").await;
    h.expect("250 2.1.0").await;
    h.expect("250 2.1.5").await;
    h.expect("354").await;
    h.send(b"Subject: q\r\n\r\ny\r\n.\r\nQUIT\r\n").await;
    h.expect("250 2.0.0").await;
    h.expect("221").await;
    assert_eq!(h.spooled().len(), 2);
}

#[tokio::test]
async fn bdat_chunks_make_one_message() {
    let mut h = ready_for_data("").await;
    h.send(b"BDAT 14\r\nSubject: c\r\n\r\nBDAT 11 LAST\r\n.not\nstuff\r\n")
        .await;
    h.expect("250 2.0.0 14 octets").await;
    h.expect("250 2.0.0 OK queued as").await;
    let body = stored_body(&h);
    assert!(
        body.ends_with("Subject: c\r\n\r\n.not\r\nstuff\r\n"),
        "BDAT is not unstuffed, bare LF normalised: {body:?}"
    );
}

#[tokio::test]
async fn bdat_without_transaction_discards_its_chunk() {
    let mut h = Harness::start(&config_with(""), INSIDE).await;
    h.ehlo().await;
    h.send(b"BDAT 6 LAST\r\nNOOP\r\nNOOP\r\n").await;
    h.expect("503 5.5.1").await;
    h.expect("250 2.0.0").await;
}

#[tokio::test]
async fn data_inside_bdat_transaction_is_refused() {
    let mut h = ready_for_data("").await;
    h.send(b"BDAT 3\r\nabc").await;
    h.expect("250").await;
    h.cmd("DATA", "503 5.5.1").await;
    h.cmd("MAIL FROM:<a@local.test>", "250").await;
}

#[tokio::test]
async fn bdat_over_the_limit_is_refused() {
    let mut h = ready_for_data("").await;
    let chunk = "x".repeat(11_000);
    h.send(format!("BDAT {} LAST\r\n{chunk}", chunk.len()).as_bytes()).await;
    h.expect("552 5.3.4").await;
    h.cmd("NOOP", "250").await;
    assert!(h.spooled().is_empty());
}

#[tokio::test]
async fn submission_adds_message_id_and_date() {
    let mut h = ready_for_data("submission = true").await;
    h.cmd("DATA", "354").await;
    h.send(b"Subject: no id\r\n\r\nbody\r\n.\r\n").await;
    h.expect("250").await;
    let body = stored_body(&h);
    let headers = body.split("\r\n\r\n").next().unwrap();
    assert!(headers.contains("\r\nMessage-ID: <"), "{headers}");
    assert!(headers.contains("\r\nDate: "), "{headers}");
    assert!(headers.find("Received:").unwrap() < headers.find("Message-ID:").unwrap());
}

#[tokio::test]
async fn relay_without_submission_leaves_headers_alone() {
    let mut h = ready_for_data("").await;
    h.cmd("DATA", "354").await;
    h.send(b"Subject: no id\r\n\r\nbody\r\n.\r\n").await;
    h.expect("250").await;
    assert!(!stored_body(&h).contains("Message-ID:"));
}

#[tokio::test]
async fn dsn_parameters_are_stored() {
    let mut h = Harness::start(&config_with(""), INSIDE).await;
    h.ehlo().await;
    h.cmd("MAIL FROM:<a@local.test> RET=HDRS ENVID=QQ+2B1", "250").await;
    h.cmd(
        "RCPT TO:<b@local.test> NOTIFY=FAILURE,DELAY ORCPT=rfc822;b@local.test",
        "250",
    )
    .await;
    h.cmd("DATA", "354").await;
    h.send(b"Subject: dsn\r\n\r\nx\r\n.\r\n").await;
    h.expect("250").await;
    let (env, _) = h.spooled().remove(0);
    assert_eq!(env.ret, Some(crate::envelope::Ret::Hdrs));
    assert_eq!(env.envid.as_deref(), Some("QQ+2B1"));
    let n = env.recipients[0].notify.unwrap();
    assert!(n.failure && n.delay && !n.success && !n.never);
    assert_eq!(env.recipients[0].orcpt.as_deref(), Some("rfc822;b@local.test"));
}
