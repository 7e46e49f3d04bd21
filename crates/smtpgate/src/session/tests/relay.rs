//! Relay control: smtpgate is never an open relay.

use super::{Harness, INSIDE, OUTSIDE, config_with};

async fn outsider() -> Harness {
    let mut h = Harness::start(&config_with(""), OUTSIDE).await;
    h.ehlo().await;
    h.cmd("MAIL FROM:<someone@elsewhere.test>", "250 2.1.0").await;
    h
}

#[tokio::test]
async fn outsider_cannot_relay_to_a_foreign_domain() {
    let mut h = outsider().await;
    h.cmd("RCPT TO:<victim@foreign.test>", "554 5.7.1 relay access denied")
        .await;
}

#[tokio::test]
async fn outsider_may_send_to_a_local_domain() {
    let mut h = outsider().await;
    h.cmd("RCPT TO:<user@local.test>", "250 2.1.5").await;
    h.cmd("RCPT TO:<User@LOCAL.TEST>", "250 2.1.5").await;
    h.cmd("RCPT TO:<postmaster>", "250 2.1.5").await;
}

#[tokio::test]
async fn address_tricks_never_open_the_relay() {
    let mut h = outsider().await;
    for trick in [
        "RCPT TO:<victim%foreign.test@local.test>",
        "RCPT TO:<foreign.test!victim@local.test>",
        "RCPT TO:<\"victim@foreign.test\"@local.test>",
    ] {
        h.cmd(trick, "553 5.1.3").await;
    }
    for trick in [
        "RCPT TO:<victim@[192.0.2.1]>",
        "RCPT TO:<@local.test:victim@foreign.test>",
        "RCPT TO:<victim@foreign.test.local.test.evil>",
        "RCPT TO:<victim@local.test.foreign.test>",
    ] {
        h.cmd(trick, "554 5.7.1").await;
    }
}

#[tokio::test]
async fn relay_network_may_send_anywhere() {
    let mut h = Harness::start(&config_with(""), INSIDE).await;
    h.ehlo().await;
    h.cmd("MAIL FROM:<a@local.test>", "250").await;
    h.cmd("RCPT TO:<b@foreign.test>", "250 2.1.5").await;
}

#[tokio::test]
async fn ipv4_mapped_peer_is_matched_as_ipv4() {
    let mut h = Harness::start(&config_with(""), "[::ffff:127.0.0.1]:4000").await;
    h.ehlo().await;
    h.cmd("MAIL FROM:<a@local.test>", "250").await;
    h.cmd("RCPT TO:<b@foreign.test>", "250 2.1.5").await;
}
