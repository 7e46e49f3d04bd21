//! Checks of the e2e harness itself, against the real tools, with no smtpgate involved:
//! if one of these fails, the e2e failures that go with it are the harness's fault.

mod support;

use std::net::Ipv4Addr;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use support::{
    DnsServer, DnsTable, SOON, ServerCert, Sink, SinkFailure, Upstream, message, smtp_source, smtplib, smtplib_send,
    swaks,
};

#[test]
fn sink_records_each_message_as_a_dump_with_its_message_id() {
    let sink = Sink::start();

    let sent = smtplib_send(
        sink.addr(),
        "alice@example.test",
        &["bob@example.org"],
        &message("sink-1@example.test", "hi", ".leading dot\r\nbody"),
    );

    assert!(sent.reply("END-OF-DATA").starts_with("250 "), "{sent}");
    let dumps = sink.wait_for_messages(1, SOON);
    assert_eq!(sink.message_ids(), ["<sink-1@example.test>"]);
    assert!(dumps[0].contains("\n.leading dot\n"), "{}", dumps[0]);
}

#[test]
fn sink_counts_smtp_source_load() {
    let sink = Sink::start();
    let target = sink.addr().to_string();

    let (status, output) = smtp_source(
        &[
            "-s",
            "5",
            "-m",
            "50",
            "-l",
            "2000",
            "-f",
            "f@example.test",
            "-t",
            "t@example.test",
            &target,
        ],
        Duration::from_secs(60),
    );

    assert!(status.is_some_and(|s| s.success()), "{output}");
    assert_eq!(sink.wait_for_messages(50, SOON).len(), 50);
}

#[test]
fn failing_sink_rejects_rcpt() {
    let sink = Sink::failing(SinkFailure::RejectRcpt);

    let sent = smtplib_send(
        sink.addr(),
        "a@example.test",
        &["b@example.org"],
        "Subject: x\r\n\r\nx\r\n",
    );

    assert!(sent.reply("RCPT").starts_with("500 5.3.0"), "{sent}");
}

#[test]
fn failing_sink_tempfails_end_of_data() {
    let sink = Sink::failing(SinkFailure::TempfailData);

    let sent = smtplib_send(
        sink.addr(),
        "a@example.test",
        &["b@example.org"],
        "Subject: x\r\n\r\nx\r\n",
    );

    assert!(sent.reply("END-OF-DATA").starts_with("450 4.3.0"), "{sent}");
}

#[test]
fn upstream_answers_per_recipient_local_part() {
    let upstream = Upstream::start();
    let script = |rcpt: &str| {
        format!("s = connect()\nsend(s, 'a@example.test', ['{rcpt}'], 'Subject: x\\r\\n\\r\\nx\\r\\n')\nquit(s)\n")
    };

    let cases = [
        ("tempfail-rcpt@x.test", "RCPT", "450 4.2.0"),
        ("reject-rcpt@x.test", "RCPT", "550 5.1.1"),
        ("tempfail-data@x.test", "END-OF-DATA", "451 4.3.0"),
        ("reject-data@x.test", "END-OF-DATA", "554 5.6.0"),
        ("ok@x.test", "END-OF-DATA", "250 2.0.0"),
    ];
    for (rcpt, step, expected) in cases {
        let sent = smtplib(upstream.addr(), &script(rcpt));
        assert!(sent.reply(step).starts_with(expected), "{rcpt}: {sent}");
    }

    assert_eq!(upstream.messages().len(), 1);
    assert_eq!(upstream.attempts_for("tempfail-rcpt@x.test"), 1);
    assert_eq!(upstream.connection_count(), cases.len());
}

#[test]
fn upstream_hangs_up_after_data_for_disconnect_data() {
    let upstream = Upstream::start();

    let sent = smtplib_send(
        upstream.addr(),
        "a@example.test",
        &["disconnect-data@x.test"],
        "Subject: x\r\n\r\nx\r\n",
    );

    assert!(!sent.succeeded(), "{sent}");
    assert!(sent.stderr.contains("SMTPServerDisconnected"), "{sent}");
    assert!(upstream.messages().is_empty());
}

#[test]
fn upstream_fail_first_accepts_after_n_attempts() {
    let upstream = Upstream::fail_first(1);
    let send = || {
        smtplib_send(
            upstream.addr(),
            "a@example.test",
            &["reject-data@x.test"],
            "Subject: x\r\n\r\nx\r\n",
        )
    };

    assert!(send().reply("END-OF-DATA").starts_with("554 5.6.0"));
    assert!(send().reply("END-OF-DATA").starts_with("250 "));
    assert_eq!(upstream.attempts_for("reject-data@x.test"), 2);
}

#[test]
fn upstream_takes_pipelined_transactions_and_unstuffs_dots() {
    let upstream = Upstream::start();
    let server = upstream.addr().to_string();

    let (status, transcript) = swaks(&[
        "--server",
        &server,
        "--pipeline",
        "--from",
        "a@example.test",
        "--to",
        "b@example.org,c@example.org",
        "--body",
        ".starts with a dot\n..two dots",
    ]);

    assert!(status.success(), "{transcript}");
    let got = upstream.wait_for(1, SOON);
    assert_eq!(got[0].rcpt_addresses(), ["b@example.org", "c@example.org"]);
    assert!(
        got[0].text().contains("\r\n.starts with a dot\r\n..two dots\r\n"),
        "{}",
        got[0].text()
    );
    assert_eq!(got[0].mail_from, "a@example.test");
}

#[test]
fn upstream_keeps_mail_and_rcpt_parameters() {
    let upstream = Upstream::start();

    let sent = smtplib(
        upstream.addr(),
        "s = connect()\nsend(s, '', ['b@example.org'], 'Subject: x\\r\\n\\r\\nx\\r\\n', ['SIZE=20', 'BODY=8BITMIME'], ['NOTIFY=NEVER'])\nquit(s)\n",
    );

    assert!(sent.reply("END-OF-DATA").starts_with("250 "), "{sent}");
    let got = &upstream.messages()[0];
    assert_eq!(got.mail_from, "");
    assert_eq!(got.mail_params, ["SIZE=20", "BODY=8BITMIME"]);
    assert_eq!(got.rcpts[0].params, ["NOTIFY=NEVER"]);
}

#[test]
fn upstream_ends_data_only_at_crlf_dot_crlf() {
    let upstream = Upstream::start();

    let sent = smtplib(
        upstream.addr(),
        r#"
s = connect()
s.mail("a@example.test")
s.rcpt("b@example.org")
code, msg = s.docmd("DATA")
show("DATA", code, msg)
s.send(b"Subject: x\r\n\r\nbare\n.\nstill data\r.\rand more\r\n.\r\n")
code, msg = s.getreply()
show("END-OF-DATA", code, msg)
quit(s)
"#,
    );

    assert!(sent.reply("END-OF-DATA").starts_with("250 "), "{sent}");
    let text = upstream.messages()[0].text();
    assert!(text.ends_with("bare\n.\nstill data\r.\rand more\r\n"), "{text:?}");
}

#[test]
fn upstream_answers_slowly_after_a_slow_recipient() {
    let upstream = Upstream::start();
    let started = std::time::Instant::now();

    let sent = smtplib_send(
        upstream.addr(),
        "a@example.test",
        &["slow@x.test"],
        "Subject: x\r\n\r\nx\r\n",
    );

    assert!(sent.reply("END-OF-DATA").starts_with("250 "), "{sent}");
    // RCPT, DATA, end of data and QUIT each wait 2 s.
    assert!(started.elapsed() >= Duration::from_secs(8), "{:?}", started.elapsed());
}

#[test]
fn upstream_with_starttls_records_which_messages_came_over_tls() {
    let cert = ServerCert::self_signed("upstream.test");
    let upstream = Upstream::with_starttls(&cert);
    let script = "import ssl\nCTX = ssl._create_unverified_context()\n\
s = connect()\n\
code, msg = s.ehlo('client.test')\n\
show('EHLO', code, msg)\n\
s._host = 'upstream.test'\n\
code, msg = s.starttls(context=CTX)\n\
show('STARTTLS', code, msg)\n\
code, msg = s.ehlo('client.test')\n\
show('EHLO-TLS', code, msg)\n\
send(s, 'a@example.test', ['tls@x.test'], 'Subject: tls\\r\\n\\r\\nover TLS\\r\\n')\n\
quit(s)\n\
s = connect()\n\
send(s, 'a@example.test', ['plain@x.test'], 'Subject: plain\\r\\n\\r\\nin plaintext\\r\\n')\n\
quit(s)\n";
    let sent = smtplib(upstream.addr(), script);
    assert!(sent.reply("EHLO").contains("STARTTLS"), "{sent}");
    assert!(sent.reply("STARTTLS").starts_with("220"), "{sent}");
    assert!(!sent.reply("EHLO-TLS").contains("STARTTLS"), "{sent}");
    let got = upstream.wait_for(2, SOON);
    assert_eq!((got[0].rcpt_addresses(), got[0].tls), (vec!["tls@x.test"], true));
    assert_eq!((got[1].rcpt_addresses(), got[1].tls), (vec!["plain@x.test"], false));
    assert_eq!(upstream.tls_failures(), 0);
}

#[test]
fn plain_upstream_does_not_offer_starttls() {
    let upstream = Upstream::start();
    let sent = smtplib(
        upstream.addr(),
        "s = connect()\ncode, msg = s.ehlo('client.test')\nshow('EHLO', code, msg)\n\
code, msg = s.docmd('STARTTLS')\nshow('STARTTLS', code, msg)\nquit(s)\n",
    );
    assert!(!sent.reply("EHLO").contains("STARTTLS"), "{sent}");
    assert!(sent.reply("STARTTLS").starts_with("502"), "{sent}");
}

/// One question to the test DNS server over UDP, with the DO bit when `dnssec`.
fn ask(dns: &DnsServer, name: &str, rtype: RecordType, dnssec: bool) -> Message {
    let mut query = Message::new();
    query
        .set_id(7)
        .set_recursion_desired(true)
        .add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    if dnssec {
        let mut edns = Edns::new();
        edns.set_dnssec_ok(true);
        query.set_edns(edns);
    }
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(SOON)).unwrap();
    socket.send_to(&query.to_vec().unwrap(), dns.addr()).unwrap();
    let mut buf = [0u8; 4096];
    let n = socket.recv(&mut buf).unwrap();
    Message::from_vec(&buf[..n]).unwrap()
}

#[test]
fn dns_serves_tlsa_and_sets_ad_for_secure_zones_only() {
    let digest = [0xab; 32];
    let dns = DnsServer::start(
        DnsTable::new()
            .secure("signed.test")
            .a("mx.signed.test", Ipv4Addr::LOCALHOST)
            .tlsa("_25._tcp.mx.signed.test", 3, 1, 1, &digest)
            .a("mx.unsigned.test", Ipv4Addr::LOCALHOST)
            .servfail("_25._tcp.broken.signed.test", RecordType::TLSA),
    );
    let reply = ask(&dns, "_25._tcp.mx.signed.test.", RecordType::TLSA, true);
    assert!(reply.authentic_data());
    let RData::TLSA(tlsa) = reply.answers()[0].data() else {
        panic!("not a TLSA record: {reply:?}");
    };
    let fields = (
        u8::from(tlsa.cert_usage()),
        u8::from(tlsa.selector()),
        u8::from(tlsa.matching()),
    );
    assert_eq!((fields, tlsa.cert_data()), ((3, 1, 1), &digest[..]));
    assert!(ask(&dns, "mx.signed.test.", RecordType::A, true).authentic_data());
    assert!(
        ask(&dns, "nothing.signed.test.", RecordType::A, true).authentic_data(),
        "secure NXDOMAIN"
    );
    assert!(
        !ask(&dns, "mx.signed.test.", RecordType::A, false).authentic_data(),
        "DNSSEC not asked for"
    );
    assert!(!ask(&dns, "mx.unsigned.test.", RecordType::A, true).authentic_data());
    let failed = ask(&dns, "_25._tcp.broken.signed.test.", RecordType::TLSA, true);
    assert_eq!(failed.response_code(), ResponseCode::ServFail);
    assert!(!failed.authentic_data());
}
