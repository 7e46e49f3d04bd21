//! End-to-end TLS and AUTH: STARTTLS and implicit TLS listeners driven by Python's smtplib,
//! swaks and openssl; AUTH against a users file made by `smtpgate passwd`; STARTTLS towards
//! a pool (smtpgate relaying to a second smtpgate).

mod support;

use std::process::Command;
use std::time::Duration;

use support::{
    CertFiles, Gate, GateConfig, SOON, Sink, UsersFile, header_values, message, run_with_deadline, smtplib, swaks,
    wait_until, with_pool_tls, without_relay_networks,
};

const USER: &str = "alice";
const PASSWORD: &str = "correct horse battery staple";

/// Python: an unverifying TLS context (the gate's certificate is self-signed).
/// smtplib takes the TLS server name (SNI) from the host given to its constructor, which
/// the support helpers leave empty, so scripts set `s._host` before the handshake.
const TLS_CONTEXT: &str = "import ssl\nCTX = ssl._create_unverified_context()\n";

/// A gate whose only listener offers STARTTLS and AUTH and relays for nobody by address,
/// delivering to `sink`.
fn auth_gate(sink: &Sink, cert: &CertFiles, users: &UsersFile) -> Gate {
    let toml = GateConfig::relay_to(sink.addr())
        .hostname("gate.test")
        .listener(&cert.listener_line())
        .listener(&users.listener_line())
        .to_toml();
    Gate::start(&without_relay_networks(&toml))
}

/// A Python string literal (JSON syntax, which Python accepts) for plain ASCII text.
fn py(text: &str) -> String {
    format!("{text:?}")
}

/// The `Received:` header values of a sink dump that were added by `host`.
fn received_by(dump: &str, host: &str) -> Vec<String> {
    let marker = format!("by {host} ");
    header_values(dump, "Received")
        .into_iter()
        .filter(|r| r.contains(&marker))
        .collect()
}

#[test]
fn starttls_and_auth_login_lets_an_outsider_relay_and_is_recorded_as_esmtpsa() {
    let sink = Sink::start();
    let cert = CertFiles::self_signed(&["gate.test"]);
    let users = UsersFile::create(&[(USER, PASSWORD)]);
    let gate = auth_gate(&sink, &cert, &users);
    let refused = message("no-auth@example.test", "no auth", "Must not be relayed.");
    let relayed = message("auth-login@example.test", "auth", "Relayed for a user.");

    let script = format!(
        "{TLS_CONTEXT}\
# Over TLS but without AUTH: relaying to a foreign domain is refused.
s = connect()
s._host = 'gate.test'
code, msg = s.starttls(context=CTX)
show('STARTTLS', code, msg)
code, msg = s.ehlo('client.example.test')
show('EHLO-TLS', code, msg)
send(s, 'alice@example.test', ['bob@example.org'], {refused})
quit(s)
# Over TLS with AUTH LOGIN (username and password each asked for with a 334).
s = connect()
s._host = 'gate.test'
code, msg = s.starttls(context=CTX)
show('STARTTLS', code, msg)
code, msg = s.ehlo('client.example.test')
show('EHLO-TLS', code, msg)
s.user, s.password = {user}, {password}
code, msg = s.auth('LOGIN', s.auth_login, initial_response_ok=False)
show('AUTH', code, msg)
send(s, 'alice@example.test', ['bob@example.org'], {relayed})
quit(s)
",
        refused = py(&refused),
        relayed = py(&relayed),
        user = py(USER),
        password = py(PASSWORD),
    );
    let ran = smtplib(gate.smtp_addr(), &script);

    assert!(ran.succeeded(), "{ran}");
    let plain_ehlo = &ran.replies("EHLO")[0];
    assert!(plain_ehlo.contains("STARTTLS"), "{ran}");
    assert!(
        !plain_ehlo.contains("AUTH"),
        "AUTH must not be offered before TLS:\n{ran}"
    );
    for ehlo in ran.replies("EHLO-TLS") {
        assert!(ehlo.contains("AUTH PLAIN LOGIN"), "{ran}");
        assert!(!ehlo.contains("STARTTLS"), "{ran}");
    }
    let rcpts = ran.replies("RCPT");
    assert_eq!(rcpts.len(), 2, "{ran}");
    assert!(rcpts[0].starts_with("554 5.7.1"), "without AUTH:\n{ran}");
    assert!(ran.reply("AUTH").starts_with("235 2.7.0"), "{ran}");
    assert!(rcpts[1].starts_with("250"), "with AUTH:\n{ran}");
    let end_of_data = ran.replies("END-OF-DATA");
    assert_eq!(end_of_data.len(), 1, "{ran}");
    assert!(end_of_data[0].starts_with("250 "), "{ran}");

    let arrived = sink.wait_for_messages(1, SOON);
    assert_eq!(sink.message_ids(), ["<auth-login@example.test>"]);
    let ours = received_by(&arrived[0], "gate.test");
    assert_eq!(ours.len(), 1, "{}", arrived[0]);
    assert!(ours[0].contains("with ESMTPSA "), "{}", arrived[0]);
    assert!(ours[0].contains("(using TLS"), "{}", arrived[0]);
}

#[test]
fn swaks_starttls_and_auth_plain_relays_and_without_auth_is_refused() {
    let sink = Sink::start();
    let cert = CertFiles::self_signed(&["gate.test"]);
    let users = UsersFile::create(&[(USER, PASSWORD)]);
    let gate = auth_gate(&sink, &cert, &users);
    let server = gate.smtp_addr().to_string();
    let common = [
        "--server",
        &server,
        "--tls",
        "--helo",
        "client.example.test",
        "--from",
        "alice@example.test",
        "--to",
        "bob@example.org",
    ];

    let mut without_auth = common.to_vec();
    without_auth.extend([
        "--header",
        "Message-Id: <swaks-noauth@example.test>",
        "--body",
        "Must not be relayed.",
    ]);
    let (status, transcript) = swaks(&without_auth);
    assert!(!status.success(), "relayed without AUTH:\n{transcript}");
    assert!(
        transcript.contains(" 554 5.7.1 "),
        "RCPT not refused with 554 5.7.1:\n{transcript}"
    );

    let mut with_auth = common.to_vec();
    with_auth.extend([
        "--auth",
        "PLAIN",
        "--auth-user",
        USER,
        "--auth-password",
        PASSWORD,
        "--header",
        "Message-Id: <swaks-plain@example.test>",
        "--body",
        "Relayed for a user.",
    ]);
    let (status, transcript) = swaks(&with_auth);
    assert!(status.success(), "swaks with AUTH PLAIN failed:\n{transcript}");
    assert!(transcript.contains("STARTTLS"), "{transcript}");
    assert!(transcript.contains("AUTH PLAIN"), "{transcript}");
    assert!(transcript.contains(" 235 2.7.0 "), "{transcript}");

    let arrived = sink.wait_for_messages(1, SOON);
    assert_eq!(sink.message_ids(), ["<swaks-plain@example.test>"]);
    let ours = received_by(&arrived[0], "gate.test");
    assert_eq!(ours.len(), 1, "{}", arrived[0]);
    assert!(ours[0].contains("with ESMTPSA "), "{}", arrived[0]);
}

#[test]
fn implicit_tls_listener_takes_a_message_from_smtp_ssl_recorded_as_esmtps() {
    let sink = Sink::start();
    let cert = CertFiles::self_signed(&["gate.test"]);
    let gate = Gate::start(
        &GateConfig::relay_to(sink.addr())
            .hostname("gate.test")
            .listener(&cert.listener_line())
            .listener("implicit_tls = true")
            .to_toml(),
    );
    assert_eq!(gate.listener_tls("inbound"), "implicit");

    let msg = message("implicit@example.test", "implicit", "TLS from the first byte.");
    let script = format!(
        "{TLS_CONTEXT}\
s = smtplib.SMTP_SSL(timeout=60, context=CTX)
s._host = 'gate.test'
code, msg = s.connect(HOST, PORT)
show('CONNECT', code, msg)
show('CIPHER', 0, repr(s.sock.cipher()))
code, msg = s.ehlo('client.example.test')
show('EHLO', code, msg)
send(s, 'alice@example.test', ['bob@example.org'], {msg})
quit(s)
",
        msg = py(&msg)
    );
    let ran = smtplib(gate.smtp_addr(), &script);

    assert!(ran.succeeded(), "{ran}");
    assert!(ran.reply("CONNECT").starts_with("220 gate.test"), "{ran}");
    assert!(ran.reply("CIPHER").contains("TLS"), "{ran}");
    assert!(
        !ran.reply("EHLO").contains("STARTTLS"),
        "STARTTLS offered inside TLS:\n{ran}"
    );
    assert!(ran.reply("END-OF-DATA").starts_with("250 "), "{ran}");
    let arrived = sink.wait_for_messages(1, SOON);
    assert_eq!(sink.message_ids(), ["<implicit@example.test>"]);
    let ours = received_by(&arrived[0], "gate.test");
    assert_eq!(ours.len(), 1, "{}", arrived[0]);
    assert!(ours[0].contains("with ESMTPS "), "{}", arrived[0]);

    // openssl sees the certificate we configured, straight away (no STARTTLS).
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect", &gate.smtp_addr().to_string()])
        .args(["-servername", "gate.test"]);
    let s_client = run_with_deadline(cmd, Duration::from_secs(30));
    let shown = pem_body(&s_client.stdout);
    assert!(
        !shown.is_empty() && shown == pem_body(&cert.cert_pem),
        "openssl s_client did not get our certificate:\n{}{}",
        s_client.stdout,
        s_client.stderr
    );
}

/// The base64 of the first PEM certificate in `text`, without line breaks.
fn pem_body(text: &str) -> String {
    text.lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE-----"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END CERTIFICATE-----"))
        .collect()
}

#[test]
fn three_wrong_passwords_get_535_each_and_then_the_connection_is_closed() {
    let sink = Sink::start();
    let cert = CertFiles::self_signed(&["gate.test"]);
    let users = UsersFile::create(&[(USER, PASSWORD)]);
    let gate = auth_gate(&sink, &cert, &users);

    let script = format!(
        "{TLS_CONTEXT}\
s = connect()
s._host = 'gate.test'
code, msg = s.starttls(context=CTX)
show('STARTTLS', code, msg)
s.ehlo('client.example.test')
s.user, s.password = {user}, 'not the password'
for mechanism, method in [('LOGIN', s.auth_login), ('PLAIN', s.auth_plain), ('LOGIN', s.auth_login)]:
    try:
        code, msg = s.auth(mechanism, method, initial_response_ok=False)
    except smtplib.SMTPAuthenticationError as e:
        code, msg = e.smtp_code, e.smtp_error
    show('AUTH', code, msg)
# Whatever the server still sends, then the end of the connection (or a timeout error).
s.sock.settimeout(20)
while True:
    line = s.file.readline()
    if not line:
        break
    show('AFTER', 0, line.strip())
print('CLOSED', flush=True)
",
        user = py(USER)
    );
    let ran = smtplib(gate.smtp_addr(), &script);

    assert!(ran.succeeded(), "{ran}");
    let auths = ran.replies("AUTH");
    assert_eq!(auths.len(), 3, "{ran}");
    for reply in &auths {
        assert!(reply.starts_with("535 5.7.8"), "{ran}");
    }
    for line in ran.replies("AFTER") {
        assert!(line.starts_with("0 421 "), "unexpected line after AUTH:\n{ran}");
    }
    assert!(
        ran.stdout.lines().any(|l| l == "CLOSED"),
        "connection not closed:\n{ran}"
    );
    assert!(
        wait_until(SOON, || gate
            .try_metric("smtpgate_auth_failures_total")
            .is_some_and(|v| v >= 3.0)),
        "{}",
        gate.metrics()
    );
    assert_eq!(sink.message_count(), 0);
}

/// Gate B: offers STARTTLS with a self-signed certificate and relays to `sink`.
fn tls_gate_b(sink: &Sink, cert: &CertFiles) -> Gate {
    let gate = Gate::start(
        &GateConfig::relay_to(sink.addr())
            .hostname("gate-b.test")
            .listener(&cert.listener_line())
            .to_toml(),
    );
    assert_eq!(gate.listener_tls("inbound"), "starttls");
    gate
}

#[test]
fn opportunistic_pool_tls_uses_starttls_towards_a_gate_that_offers_it() {
    let sink = Sink::start();
    let cert = CertFiles::self_signed(&["gate-b.test"]);
    let gate_b = tls_gate_b(&sink, &cert);
    let toml = GateConfig::relay_to(gate_b.smtp_addr())
        .hostname("gate-a.test")
        .to_toml();
    let gate_a = Gate::start(&with_pool_tls(&toml, "opportunistic"));

    let msg = message("outbound-tls@example.test", "hop", "A to B over TLS.");
    let sent = support::smtplib_send(gate_a.smtp_addr(), "alice@example.test", &["bob@example.org"], &msg);

    assert!(sent.reply("END-OF-DATA").starts_with("250 "), "{sent}");
    let arrived = sink.wait_for_messages(1, SOON);
    assert_eq!(sink.message_ids(), ["<outbound-tls@example.test>"]);
    let by_b = received_by(&arrived[0], "gate-b.test");
    assert_eq!(by_b.len(), 1, "{}", arrived[0]);
    assert!(by_b[0].starts_with("from gate-a.test "), "{}", arrived[0]);
    assert!(by_b[0].contains("with ESMTPS "), "{}", arrived[0]);
    assert!(by_b[0].contains("(using TLS"), "{}", arrived[0]);
    let by_a = received_by(&arrived[0], "gate-a.test");
    assert_eq!(by_a.len(), 1, "{}", arrived[0]);
    assert!(by_a[0].contains("with ESMTP "), "{}", arrived[0]);
}

#[test]
fn required_pool_tls_delivers_towards_a_gate_that_offers_starttls() {
    let sink = Sink::start();
    let cert = CertFiles::self_signed(&["gate-b.test"]);
    let gate_b = tls_gate_b(&sink, &cert);
    // Gate B's certificate is self-signed: this is about STARTTLS being used; which certificates a
    // pool accepts is e2e_pool_tls.rs's subject.
    let toml = GateConfig::relay_to(gate_b.smtp_addr())
        .hostname("gate-a.test")
        .pool("tls_verify = false")
        .to_toml();
    let gate_a = Gate::start(&with_pool_tls(&toml, "required"));

    let msg = message("required-ok@example.test", "hop", "A to B, TLS required.");
    let sent = support::smtplib_send(gate_a.smtp_addr(), "alice@example.test", &["bob@example.org"], &msg);

    assert!(sent.reply("END-OF-DATA").starts_with("250 "), "{sent}");
    let arrived = sink.wait_for_messages(1, SOON);
    let by_b = received_by(&arrived[0], "gate-b.test");
    assert_eq!(by_b.len(), 1, "{}", arrived[0]);
    assert!(by_b[0].contains("with ESMTPS "), "{}", arrived[0]);
    assert_eq!(gate_a.metric("smtpgate_messages_deferred_total"), 0.0);
}

#[test]
fn required_pool_tls_defers_instead_of_delivering_to_a_server_without_starttls() {
    let sink = Sink::start();
    let toml = GateConfig::relay_to(sink.addr())
        .hostname("gate-a.test")
        .retry(&["1s"])
        .to_toml();
    let gate = Gate::start(&with_pool_tls(&toml, "required"));

    let msg = message("required-tls@example.test", "hop", "Never in plaintext.");
    let sent = support::smtplib_send(gate.smtp_addr(), "alice@example.test", &["bob@example.org"], &msg);

    assert!(sent.reply("END-OF-DATA").starts_with("250 "), "{sent}");
    // Two deferred attempts: the first, and a retry that did not change its mind.
    let deferred = |n: f64| {
        wait_until(SOON, || {
            gate.try_metric("smtpgate_messages_deferred_total")
                .is_some_and(|v| v >= n)
        })
    };
    assert!(deferred(1.0), "{}", gate.metrics());
    assert!(deferred(2.0), "{}", gate.metrics());
    assert_eq!(sink.message_count(), 0, "delivered in plaintext");
    assert!(sink.messages().is_empty());
    assert_eq!(gate.metric("smtpgate_messages_bounced_total"), 0.0);
    assert_eq!(gate.metric("smtpgate_dsn_generated_total"), 0.0);
    assert_eq!(gate.metric("smtpgate_messages_delivered_total"), 0.0);
    assert_eq!(gate.metric("smtpgate_queue_depth"), 1.0, "still queued");
}
