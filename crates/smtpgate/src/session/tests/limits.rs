//! Sequence, syntax and limit replies.

use super::{Harness, INSIDE, config_with};

async fn session() -> Harness {
    Harness::start(&config_with(""), INSIDE).await
}

#[tokio::test]
async fn every_reply_has_an_enhanced_code_after_ehlo() {
    let mut h = session().await;
    let ehlo = h.ehlo().await;
    for kw in [
        "PIPELINING",
        "SIZE 10240",
        "8BITMIME",
        "SMTPUTF8",
        "ENHANCEDSTATUSCODES",
        "CHUNKING",
        "DSN",
    ] {
        assert!(ehlo.contains(kw), "{kw} missing from {ehlo}");
    }
    assert!(!ehlo.contains("STARTTLS"), "no TLS configured");
    assert!(!ehlo.contains("AUTH"), "no AUTH configured");
    h.cmd("NOOP", "250 2.0.0").await;
    h.cmd("VRFY someone", "252 2.5.0").await;
    h.cmd("HELP", "214").await;
    h.cmd("RSET", "250 2.0.0").await;
    h.cmd("QUIT", "221 2.0.0").await;
    assert!(h.closed().await);
}

#[tokio::test]
async fn bad_sequence_unknown_and_syntax() {
    let mut h = session().await;
    h.cmd("MAIL FROM:<a@b.test>", "503 5.5.1").await;
    h.ehlo().await;
    h.cmd("RCPT TO:<a@b.test>", "503 5.5.1").await;
    h.cmd("DATA", "503 5.5.1").await;
    h.cmd("FROB", "500 5.5.1").await;
    h.cmd("MAIL FROM:<no-angle@b.test", "501").await;
    h.cmd("MAIL FROM:<a@b.test> FOO=BAR", "555 5.5.4").await;
    h.cmd("MAIL FROM:<a@b.test>", "250").await;
    h.cmd("MAIL FROM:<a@b.test>", "503 5.5.1").await;
}

#[tokio::test]
async fn too_many_errors_closes_with_421() {
    let mut h = Harness::start(&config_with("").replace("max_errors = 20", "max_errors = 5"), INSIDE).await;
    for _ in 0..4 {
        h.cmd("FROB", "500 5.5.1").await;
    }
    h.cmd("FROB", "500 5.5.1").await;
    h.expect("421 4.7.0").await;
    assert!(h.closed().await);
}

#[tokio::test]
async fn long_line_is_refused_and_the_session_goes_on() {
    let mut h = session().await;
    h.ehlo().await;
    let long = format!("MAIL FROM:<{}@b.test>\r\nNOOP\r\n", "a".repeat(600));
    h.send(long.as_bytes()).await;
    h.expect("500 5.5.2").await;
    h.expect("250 2.0.0").await;
}

#[tokio::test]
async fn recipients_over_the_limit_get_452_and_earlier_ones_stay() {
    let mut h = session().await;
    h.ehlo().await;
    h.cmd("MAIL FROM:<a@local.test>", "250").await;
    for i in 0..3 {
        h.cmd(&format!("RCPT TO:<r{i}@local.test>"), "250 2.1.5").await;
    }
    h.cmd("RCPT TO:<r4@local.test>", "452 4.5.3").await;
    h.cmd("DATA", "354").await;
    h.send(b"Subject: x\r\n\r\nhi\r\n.\r\n").await;
    h.expect("250 2.0.0").await;
    let spooled = h.spooled();
    assert_eq!(spooled.len(), 1);
    assert_eq!(spooled[0].0.recipients.len(), 3);
}

#[tokio::test]
async fn declared_size_over_the_limit_is_refused() {
    let mut h = session().await;
    h.ehlo().await;
    h.cmd("MAIL FROM:<a@local.test> SIZE=10241", "552 5.3.4").await;
    h.cmd("MAIL FROM:<a@local.test> SIZE=10240", "250").await;
}

#[tokio::test]
async fn body_over_the_limit_is_read_to_its_end_then_refused() {
    let mut h = session().await;
    h.ehlo().await;
    h.cmd("MAIL FROM:<a@local.test>", "250").await;
    h.cmd("RCPT TO:<b@local.test>", "250").await;
    h.cmd("DATA", "354").await;
    let big = format!("Subject: big\r\n\r\n{}\r\n.\r\nNOOP\r\n", "x".repeat(20_000));
    h.send(big.as_bytes()).await;
    h.expect("552 5.3.4").await;
    h.expect("250 2.0.0").await;
    assert!(h.spooled().is_empty(), "nothing of a refused message is spooled");
}

#[tokio::test]
async fn low_disk_space_refuses_mail_with_452() {
    let dir = tempfile::tempdir().unwrap();
    let toml = config_with("").replace("min_free_space = \"1KB\"", "min_free_space = \"1000000GB\"");
    let config = crate::config::Config::from_toml_str(&toml, dir.path()).unwrap();
    let mut h = Harness::with_config(config, dir, INSIDE).await;
    h.ehlo().await;
    h.cmd("MAIL FROM:<a@local.test>", "452 4.3.1").await;
}

#[tokio::test]
async fn talking_before_the_greeting_gets_554() {
    let dir = tempfile::tempdir().unwrap();
    let config = crate::config::Config::from_toml_str(&config_with("greeting_delay = \"300ms\""), dir.path()).unwrap();
    let (ctx, _) = crate::context::Context::start(std::sync::Arc::new(config), None).unwrap();
    let queue = crate::queue::Queue::new(ctx.clone());
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let state = crate::session::ListenerState::standalone(&ctx.config.listeners[0], &ctx, &queue, &rx).unwrap();
    let (mut client, server) = tokio::io::duplex(4096);
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    client.write_all(b"EHLO eager.test\r\n").await.unwrap();
    let session = super::Session::new(
        std::sync::Arc::new(state),
        Box::new(server),
        INSIDE.parse().unwrap(),
        None,
    );
    tokio::spawn(session.run());
    let mut out = String::new();
    client.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("554 5.5.0"), "{out:?}");
}

#[tokio::test(start_paused = true)]
async fn idle_client_times_out_with_421() {
    let mut h = Harness::start(&config_with("command_timeout = \"5m\""), INSIDE).await;
    h.ehlo().await;
    tokio::time::advance(std::time::Duration::from_secs(301)).await;
    h.expect("421 4.4.2").await;
    assert!(h.closed().await);
}
