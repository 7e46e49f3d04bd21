//! SRS against an independent implementation: Python's srslib (libsrs2's format, as postsrsd
//! writes it). An address smtpgate forwards with must reverse with srslib and the same secret;
//! an address srslib makes must be reversed by smtpgate, but for a bounce (the null sender) only.
//!
//! The gate forwards `fwd@corp.test` to `someone@far.test`; each destination domain has its own
//! pool (one scriptable [`Upstream`] each), so a test can tell where a reversed bounce went.

mod support;

use std::process::Command;

use support::{Gate, SOON, Upstream, UpstreamMessage, header_values, message, smtplib_send, toml_path, wait_until};

const SECRET: &str = "a-test-secret-of-some-length";
const SRS_DOMAIN: &str = "srs.corp.test";

struct Scenario {
    gate: Gate,
    /// far.test, origin.test, hop1.test, and everything else.
    far: Upstream,
    origin: Upstream,
    hop1: Upstream,
    other: Upstream,
    _dir: tempfile::TempDir,
}

impl Scenario {
    fn start() -> Scenario {
        let dir = tempfile::tempdir().expect("tempdir");
        let aliases = dir.path().join("aliases");
        std::fs::write(&aliases, "fwd@corp.test: someone@far.test\n").expect("write aliases");
        let (far, origin, hop1, other) = (
            Upstream::start(),
            Upstream::start(),
            Upstream::start(),
            Upstream::start(),
        );
        let pool = |name: &str, up: &Upstream| {
            format!(
                "[[pool]]\nname = \"{name}\"\nservers = [\"{}\"]\ntls = \"none\"\nhealth_check = {{ enabled = false }}\n\n",
                up.addr()
            )
        };
        let route =
            |name: &str| format!("[[route]]\nwhen = {{ recipient_domain = \"{name}.test\" }}\npool = \"{name}\"\n\n");
        let toml = format!(
            "hostname = \"gate.corp.test\"\nshutdown_timeout = \"5s\"\n\n[spool]\ndir = \"spool\"\n\n\
             [admin]\naddress = \"127.0.0.1:0\"\n\n[[listener]]\nname = \"inbound\"\naddress = \"127.0.0.1:0\"\n\
             relay_networks = [\"127.0.0.0/8\"]\nlocal_domains = [\"corp.test\"]\n\n{}{}{}{}{}{}{}\
             [[route]]\npool = \"other\"\n\n\
             [routing]\naliases = {}\nsrs = {{ secret = \"{SECRET}\", domain = \"{SRS_DOMAIN}\" }}\n\n\
             [queue]\nretry = [\"1s\"]\n",
            pool("far", &far),
            pool("origin", &origin),
            pool("hop1", &hop1),
            pool("other", &other),
            route("far"),
            route("origin"),
            route("hop1"),
            toml_path(&aliases),
        );
        Scenario {
            gate: Gate::start(&toml),
            far,
            origin,
            hop1,
            other,
            _dir: dir,
        }
    }

    /// Sends one message; it must be accepted.
    fn send(&self, from: &str, to: &str, id: &str) {
        let sent = smtplib_send(self.gate.smtp_addr(), from, &[to], &message(id, "SRS", "Hello."));
        assert!(sent.reply("END-OF-DATA").starts_with("250 "), "{sent}");
    }
}

/// The message with this Message-ID that `upstream` received, waiting for it.
fn received(upstream: &Upstream, id: &str) -> UpstreamMessage {
    let find = || {
        let mut found = upstream.messages().into_iter().filter(|m| {
            header_values(&m.text(), "Message-ID")
                .iter()
                .any(|v| v.trim_matches(['<', '>']) == id)
        });
        found.next()
    };
    assert!(wait_until(SOON, || find().is_some()), "{id} did not arrive");
    find().unwrap()
}

/// Runs `expression` with `srs = srslib.SRS(SECRET)` and `arg`, printing its value.
fn srslib(expression: &str, arg: &str) -> String {
    let script = format!("import sys, srslib\nsrs = srslib.SRS({SECRET:?})\narg = sys.argv[1]\nprint({expression})\n");
    let out = Command::new("python3")
        .args(["-c", &script, arg])
        .output()
        .expect("run python3 (srslib: python3 -m pip install srslib)");
    assert!(out.status.success(), "srslib: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("UTF-8").trim().to_string()
}

#[test]
fn an_address_smtpgate_forwards_with_reverses_with_srslib() {
    let s = Scenario::start();
    s.send("Alice.Smith@Origin.test", "fwd@corp.test", "forwarded");
    let srs = received(&s.far, "forwarded").mail_from;
    assert!(
        srs.starts_with("SRS0=") && srs.ends_with(&format!("@{SRS_DOMAIN}")),
        "{srs}"
    );
    assert_eq!(srslib("srs.reverse(arg)", &srs), "Alice.Smith@Origin.test");
    // srslib makes the very same address for the same day.
    assert_eq!(
        srslib(&format!("srs.forward(arg, {SRS_DOMAIN:?})"), "Alice.Smith@Origin.test"),
        srs
    );
}

#[test]
fn bounces_to_addresses_srslib_makes_are_reversed() {
    let s = Scenario::start();
    let srs0 = srslib(&format!("srs.forward(arg, {SRS_DOMAIN:?})"), "bob+tag@origin.test");
    s.send("", &srs0, "bounce0");
    let back = received(&s.origin, "bounce0");
    assert_eq!(back.rcpt_addresses(), ["bob+tag@origin.test"]);
    assert_eq!(back.mail_from, "");

    // SRS1: an address a first hop rewrote, forwarded again by srslib, goes back to the first hop.
    let first_hop = "SRS0=HHHH=TT=origin.test=bob@hop1.test";
    let srs1 = srslib(&format!("srs.forward(arg, {SRS_DOMAIN:?})"), first_hop);
    assert!(srs1.starts_with("SRS1="), "{srs1}");
    s.send("", &srs1, "bounce1");
    assert_eq!(received(&s.hop1, "bounce1").rcpt_addresses(), [first_hop]);
}

/// Regression: mail with a sender to an SRS address was reversed too, so anyone who saw one of our
/// SRS addresses could send through us to the original sender. It is routed as it is now.
#[test]
fn mail_that_is_not_a_bounce_is_not_reversed() {
    let s = Scenario::start();
    let srs0 = srslib(&format!("srs.forward(arg, {SRS_DOMAIN:?})"), "bob@origin.test");
    s.send("spammer@elsewhere.test", &srs0, "not-a-bounce");
    let got = received(&s.other, "not-a-bounce");
    assert_eq!(got.rcpt_addresses(), [srs0.as_str()]);
    // Nothing reached the original sender, though the queue is empty.
    let drained = wait_until(SOON, || s.gate.try_metric("smtpgate_queue_depth") == Some(0.0));
    assert!(drained, "{}", s.gate.metrics());
    assert!(s.origin.messages().is_empty(), "{:#?}", s.origin.messages());
}
