//! End-to-end: the README's "Policy filters" example, as a mail administrator would copy it.
//!
//! One listener runs four `before_queue` filters in order: `dlp` (card numbers refused),
//! `clamav` (a real clamd from `support::clamd`), `sanitize` (a text footer) and `dkim_sign`
//! (last, so it signs the message as the others left it). A real client (Python's smtplib) sends
//! through it, and each effect is checked where it shows: the `X-Virus-Scanned` header, the
//! footer and a DKIM signature that an independent verifier (Python's dkimpy, given the public
//! key through its `dnsfunc` hook) accepts in the message the upstream received; the DLP and
//! virus replies at the end of DATA for the messages that never arrive.

mod support;

use std::net::SocketAddr;
use std::path::Path;

use smtpgate_proto::Reply;
use support::{
    Clamd, Gate, SOON, Upstream, UpstreamMessage, VIRUS_MARKER, VIRUS_NAME, b64, dkimpy, header_values, openssl,
    smtplib_send, wait_until,
};

/// The README's example configuration.
///
/// This must stay identical to the TOML of the "Policy" example in README.md (section
/// "## Policy filters"); `readme_shows_this_example` checks that it does. The test only
/// substitutes addresses and paths, each found exactly once (see [`config`]): the listener and
/// admin addresses (`127.0.0.1:0`), the spool dir, clamd's address, the pool's server and the
/// DKIM key file.
const EXAMPLE: &str = r#"hostname = "gate.example.test"

[spool]
dir = "/var/spool/smtpgate"

[admin]
address = "127.0.0.1:8025"              # /healthz, /metrics and /api/v1/quarantine

[[listener]]
name = "relay"
address = "127.0.0.1:2525"
relay_networks = ["127.0.0.0/8"]
filters = ["dlp", "clamav", "footer", "dkim"]   # in this order; dkim last: it signs the final message

[[filter]]
name = "dlp"
kind = "dlp"
detect = ["card"]                       # payment card numbers (Luhn-checked, known issuers)
action = "reject"                       # 550 5.7.0 at the end of DATA

[[filter]]
name = "clamav"
kind = "clamav"
address = "127.0.0.1:3310"              # clamd's TCPSocket; or socket = "/run/clamav/clamd.ctl"
action = "reject"                       # 554 5.7.1 naming the virus; or "quarantine"
stage = "before_queue"                  # the default; "after_queue" scans after the 250
timeout = "30s"
on_error = "tempfail"                   # clamd down or too slow: 451 4.7.1, the client retries

[[filter]]
name = "footer"
kind = "sanitize"
footer_text = "-- \nThis message was sent through smtpgate."

[[filter]]
name = "dkim"
kind = "dkim_sign"
keys = [{ domain = "example.test", selector = "s1", key = "dkim/example.test.pem" }]

[[pool]]
name = "upstream"
servers = ["10.0.0.7:25"]

[[route]]
pool = "upstream"
"#;

const FOOTER: &str = "-- \r\nThis message was sent through smtpgate.";
const CARD: &str = "4111 1111 1111 1111";

/// `text` with `from` replaced by `to`; `from` must occur exactly once, so that a change to the
/// example that the test does not know about fails here rather than testing something else.
fn substitute(text: &str, from: &str, to: &str) -> String {
    assert_eq!(text.matches(from).count(), 1, "{from:?} must occur once in the example");
    text.replace(from, to)
}

/// The example with this test's addresses and paths.
fn config(clamd: SocketAddr, upstream: SocketAddr, key: &Path) -> String {
    let mut c = EXAMPLE.to_string();
    c = substitute(&c, "dir = \"/var/spool/smtpgate\"", "dir = \"spool\"");
    c = substitute(&c, "address = \"127.0.0.1:8025\"", "address = \"127.0.0.1:0\"");
    c = substitute(&c, "address = \"127.0.0.1:2525\"", "address = \"127.0.0.1:0\"");
    c = substitute(&c, "address = \"127.0.0.1:3310\"", &format!("address = \"{clamd}\""));
    c = substitute(
        &c,
        "servers = [\"10.0.0.7:25\"]",
        &format!("servers = [\"{upstream}\"]"),
    );
    let key = key.to_str().expect("utf-8 key path");
    c = substitute(&c, "key = \"dkim/example.test.pem\"", &format!("key = {key:?}"));
    c
}

#[test]
fn readme_shows_this_example() {
    let readme = concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md");
    let readme = std::fs::read_to_string(readme).expect("README.md");
    assert!(
        readme.contains(&format!("```toml\n{EXAMPLE}```")),
        "README.md's \"Policy filters\" example and EXAMPLE in this test differ: keep them identical"
    );
}

// ---------------------------------------------------------------------------------------------
// The DKIM key and an independent verifier

/// Writes an RSA key to `path`, as the README says to, and returns its DNS TXT record.
fn dkim_key(path: &Path) -> String {
    let path = path.to_str().unwrap();
    openssl(&["genrsa", "-out", path, "2048"]);
    let der = openssl(&["pkey", "-in", path, "-pubout", "-outform", "DER"]);
    format!("v=DKIM1; k=rsa; p={}", b64(&der))
}

/// dkimpy's verdict on each DKIM signature of `message`, its key lookups answered from `records`
/// (name → TXT). A signature that does not match (dkimpy raises for a body hash mismatch) fails.
fn dkimpy_verify(dir: &Path, message: &[u8], records: &[(&str, &str)]) -> Vec<bool> {
    let out = dkimpy(
        dir,
        "arrived.eml",
        message,
        records,
        "d = dkim.DKIM(msg)\n\
         sigs = [h for h in d.headers if h[0].lower() == b'dkim-signature']\n\
         for i in range(len(sigs)):\n\
         \x20   try:\n\
         \x20       ok = d.verify(idx=i, dnsfunc=dnsfunc)\n\
         \x20   except dkim.ValidationError as e:\n\
         \x20       print(e, file=sys.stderr)\n\
         \x20       ok = False\n\
         \x20   print('pass' if ok else 'fail')\n",
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l == "pass")
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Sending

/// A plain-text message from someone@example.test with this Message-ID (no angle brackets).
fn message(id: &str, body: &str) -> String {
    format!(
        "From: Someone <someone@example.test>\r\n\
         To: Friend <friend@example.org>\r\n\
         Subject: quarterly report\r\n\
         Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n\
         Message-ID: <{id}>\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=us-ascii\r\n\
         \r\n\
         {body}\r\n"
    )
}

/// Sends one message through the gate; returns the reply to the end of DATA.
fn send(gate: &Gate, id: &str, body: &str) -> String {
    let sent = smtplib_send(
        gate.smtp_addr(),
        "someone@example.test",
        &["friend@example.org"],
        &message(id, body),
    );
    sent.reply("END-OF-DATA")
}

/// The message the upstream got with this Message-ID, once it arrives.
fn arrived(upstream: &Upstream, id: &str) -> UpstreamMessage {
    let mut found = None;
    wait_until(SOON, || {
        found = upstream.messages().into_iter().find(|m| m.text().contains(id));
        found.is_some()
    });
    found.unwrap_or_else(|| panic!("{id} did not arrive upstream"))
}

#[test]
fn readme_policy_example_signs_scans_blocks_cards_and_adds_the_footer() {
    let clamd = Clamd::start();
    let upstream = Upstream::start();
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("example.test.pem");
    let record = dkim_key(&key);
    let gate = Gate::start(&config(clamd.addr, upstream.addr(), &key));

    // (1) A normal message: scanned, footer added, then signed.
    let reply = send(&gate, "clean@example.test", "Hello,\r\nthe figures are in.");
    assert!(reply.starts_with("250 "), "{reply}");
    let clean = arrived(&upstream, "clean@example.test");
    let raw = clean.text();
    assert_eq!(clean.mail_from, "someone@example.test");
    assert_eq!(clean.rcpt_addresses(), ["friend@example.org"]);
    assert_eq!(header_values(&raw, "X-Virus-Scanned"), ["clamav"], "{raw}");

    let parsed = mail_parser::MessageParser::default()
        .parse(&clean.data)
        .expect("parsable");
    let text = parsed.body_text(0).expect("text body");
    assert!(text.starts_with("Hello,\r\nthe figures are in.\r\n"), "{text:?}");
    assert!(text.contains(FOOTER), "no footer in {text:?}");

    let signatures = header_values(&raw, "DKIM-Signature");
    assert_eq!(signatures.len(), 1, "{raw}");
    let tags: Vec<&str> = signatures[0].split(';').map(str::trim).collect();
    assert!(tags.contains(&"d=example.test"), "{}", signatures[0]);
    assert!(tags.contains(&"s=s1"), "{}", signatures[0]);
    let records = [("s1._domainkey.example.test", record.as_str())];
    assert_eq!(
        dkimpy_verify(keys.path(), &clean.data, &records),
        [true],
        "dkimpy does not verify:\n{raw}"
    );
    // The signature covers the footer: the message without it no longer verifies.
    let unfooted = raw.replacen("\r\nThis message was sent through smtpgate.", "", 1);
    assert_ne!(unfooted, raw);
    assert_eq!(dkimpy_verify(keys.path(), unfooted.as_bytes(), &records), [false]);

    // (2) A card number: refused at the end of DATA with the DLP reply, which does not repeat it.
    let reply = send(&gate, "card@example.test", &format!("My card is {CARD}, expiry 12/29."));
    assert_eq!(reply, Reply::dlp_rejected().to_string(), "{reply}");
    assert!(!reply.contains("4111"), "{reply}");

    // (3) clamd's test signature: refused with the virus reply, naming it.
    let reply = send(&gate, "virus@example.test", &format!("look: {VIRUS_MARKER}"));
    assert!(reply.starts_with("554 5.7.1"), "{reply}\n{}", clamd.log());
    assert!(reply.contains(VIRUS_NAME), "{reply}");

    // Neither refused message ever arrives: a message sent after them does, and alone.
    let reply = send(&gate, "after@example.test", "One more.");
    assert!(reply.starts_with("250 "), "{reply}");
    arrived(&upstream, "after@example.test");
    let ids: Vec<String> = upstream
        .messages()
        .iter()
        .flat_map(|m| header_values(&m.text(), "Message-ID"))
        .collect();
    assert_eq!(ids, ["<clean@example.test>", "<after@example.test>"]);
}
