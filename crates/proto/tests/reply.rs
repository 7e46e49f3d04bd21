//! The reply catalogue and its wire form.

use smtpgate_proto::Reply;

fn wire(r: &Reply) -> String {
    String::from_utf8(r.to_bytes()).unwrap()
}

#[test]
fn single_line() {
    assert_eq!(wire(&Reply::ok()), "250 2.0.0 OK\r\n");
    assert_eq!(wire(&Reply::queued("ABC123")), "250 2.0.0 OK queued as ABC123\r\n");
    assert_eq!(wire(&Reply::start_data()), "354 end data with <CR><LF>.<CR><LF>\r\n");
    assert_eq!(wire(&Reply::auth_continue("")), "334 \r\n");
    assert_eq!(
        wire(&Reply::greeting("mx.example")),
        "220 mx.example ESMTP smtpgate\r\n"
    );
    assert_eq!(wire(&Reply::syntax("bad")), "501 5.5.4 syntax error: bad\r\n");
}

#[test]
fn multi_line_carries_status_on_every_line() {
    let r = Reply::new(250, "2.0.0", "first").with_line("second").with_line("last");
    assert_eq!(wire(&r), "250-2.0.0 first\r\n250-2.0.0 second\r\n250 2.0.0 last\r\n");
    let mut plain = Vec::new();
    r.write_plain_to(&mut plain);
    assert_eq!(plain, b"250-first\r\n250-second\r\n250 last\r\n");
}

#[test]
fn ehlo_has_no_status() {
    let keys = ["PIPELINING".to_string(), "SIZE 1000".to_string()];
    let r = Reply::ehlo("mx.example", "client.example", &keys);
    assert_eq!(
        wire(&r),
        "250-mx.example greets client.example\r\n250-PIPELINING\r\n250 SIZE 1000\r\n"
    );
    assert_eq!(wire(&Reply::ehlo("mx", "c", &[])), "250 mx greets c\r\n");
}

#[test]
fn control_characters_cannot_inject_lines() {
    let r = Reply::helo("evil\r\n250 injected");
    assert_eq!(wire(&r), "250 evil??250 injected\r\n");
}

#[test]
fn catalogue_codes() {
    let table: Vec<(Reply, u16, &str)> = vec![
        (Reply::greeting("h"), 220, ""),
        (Reply::helo("h"), 250, ""),
        (Reply::ok(), 250, "2.0.0"),
        (Reply::sender_ok(), 250, "2.1.0"),
        (Reply::recipient_ok(), 250, "2.1.5"),
        (Reply::start_data(), 354, ""),
        (Reply::queued("x"), 250, "2.0.0"),
        (Reply::chunk_ok(5), 250, "2.0.0"),
        (Reply::bye("h"), 221, "2.0.0"),
        (Reply::reset(), 250, "2.0.0"),
        (Reply::vrfy(), 252, "2.5.0"),
        (Reply::help(), 214, "2.0.0"),
        (Reply::ready_tls(), 220, "2.0.0"),
        (Reply::auth_ok(), 235, "2.7.0"),
        (Reply::auth_continue("x"), 334, ""),
        (Reply::line_too_long(), 500, "5.5.2"),
        (Reply::unrecognized(), 500, "5.5.1"),
        (Reply::syntax("x"), 501, "5.5.4"),
        (Reply::bad_address("x"), 501, "5.1.3"),
        (Reply::unknown_parameter("X"), 555, "5.5.4"),
        (Reply::bad_sequence("MAIL first"), 503, "5.5.1"),
        (Reply::not_implemented(), 502, "5.5.1"),
        (Reply::too_many_recipients(), 452, "4.5.3"),
        (Reply::message_too_big(), 552, "5.3.4"),
        (Reply::relay_denied(), 554, "5.7.1"),
        (Reply::bad_recipient_address("x"), 553, "5.1.3"),
        (Reply::need_smtputf8(), 553, "5.6.7"),
        (Reply::bare_line_ending(), 550, "5.6.0"),
        (Reply::too_many_errors(), 421, "4.7.0"),
        (Reply::too_many_connections(), 421, "4.7.0"),
        (Reply::timeout(), 421, "4.4.2"),
        (Reply::pregreet(), 554, "5.5.0"),
        (Reply::shutting_down("h"), 421, "4.3.2"),
        (Reply::low_disk(), 452, "4.3.1"),
        (Reply::local_error(), 451, "4.3.0"),
        (Reply::tls_required(), 530, "5.7.0"),
        (Reply::tls_unavailable(), 454, "4.7.0"),
        (Reply::auth_failed(), 535, "5.7.8"),
        (Reply::auth_unsupported(), 504, "5.5.4"),
        (Reply::auth_cancelled(), 501, "5.7.0"),
        (Reply::auth_needs_tls(), 538, "5.7.11"),
        (Reply::already_authenticated(), 503, "5.5.1"),
        (Reply::bdat_mixed(), 503, "5.5.1"),
        (Reply::upstream_unavailable(), 451, "4.4.1"),
        (Reply::upstream_lost(), 451, "4.4.2"),
        (Reply::other_upstream(), 452, "4.5.3"),
        (Reply::not_proxyable(), 451, "4.3.5"),
        (Reply::undeliverable("5.1.10".into(), "null MX".into()), 550, "5.1.10"),
        (Reply::upstream_lacks_smtputf8(), 550, "5.6.7"),
        (Reply::suppressed("hard bounce"), 550, "5.1.1"),
    ];
    for (r, code, status) in table {
        assert_eq!((r.code, r.status.as_ref()), (code, status), "{r}");
        assert!(!r.text.is_empty(), "{r}");
        if !status.is_empty() {
            assert_eq!(
                status.as_bytes()[0],
                b'0' + (code / 100) as u8,
                "class matches code: {r}"
            );
        }
        assert_eq!(r.is_positive(), code < 400);
        assert_eq!(r.is_transient(), (400..500).contains(&code));
        assert_eq!(r.is_permanent(), code >= 500);
    }
}

/// An upstream reply relayed in proxy mode: what the client sees for each upstream answer.
#[test]
fn relayed_upstream_replies() {
    let relay = |wire: &str| {
        let (parsed, used) = smtpgate_proto::parse_reply(wire.as_bytes()).unwrap().unwrap();
        assert_eq!(used, wire.len(), "{wire:?}");
        String::from_utf8(Reply::relayed(&parsed).to_bytes()).unwrap()
    };
    let table = [
        ("250 2.1.5 ok\r\n", "250 2.1.5 ok\r\n"),
        ("550 5.1.1 no such user\r\n", "550 5.1.1 no such user\r\n"),
        (
            "550-5.7.1 first\r\n550 5.7.1 second\r\n",
            "550-5.7.1 first\r\n550 5.7.1 second\r\n",
        ),
        ("250 queued as ABC\r\n", "250 queued as ABC\r\n"),
        // The upstream is closing, this session is not.
        ("421 4.3.2 shutting down\r\n", "451 4.3.2 shutting down\r\n"),
        // A status whose class disagrees with the code is not a status: it stays text.
        ("450 5.1.1 confused\r\n", "450 5.1.1 confused\r\n"),
        // Not a final answer to RCPT or to the end of data.
        (
            "354 go ahead\r\n",
            "451 4.4.2 connection to upstream server lost, try again later\r\n",
        ),
    ];
    for (upstream, client) in table {
        assert_eq!(relay(upstream), client, "{upstream:?}");
    }
    let odd = smtpgate_proto::ParsedReply {
        code: 199,
        status: None,
        lines: vec!["what".into()],
    };
    assert_eq!(Reply::relayed(&odd), Reply::upstream_lost());
}
