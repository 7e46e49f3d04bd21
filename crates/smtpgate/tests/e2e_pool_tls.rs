//! TLS to upstream pools: which certificates a pool accepts, and when its AUTH credentials go out.
//! The upstream is a scriptable [`Upstream`] on 127.0.0.1 offering STARTTLS (and AUTH PLAIN, which
//! takes any credentials and records them), with certificates made by rcgen: self-signed, or from a
//! test CA the pool is given as `ca_file`. The pool names the server by address, so a good
//! certificate names 127.0.0.1. One scenario per test.

mod support;

use std::path::PathBuf;

use support::{
    AuthAttempt, Gate, GateConfig, SOON, ServerCert, TestCa, Upstream, UpstreamMessage, http_get, message,
    replace_once, smtplib_send, toml_path, wait_until,
};

const USER: &str = "relay";
const PASSWORD: &str = "s3cret";
const HOST: &str = "127.0.0.1";

/// A gate whose one pool relays to `upstream` with TLS `policy` and the extra pool `lines`.
struct Scenario {
    gate: Gate,
    upstream: Upstream,
}

impl Scenario {
    fn start(upstream: Upstream, policy: &str, lines: &[&str]) -> Scenario {
        let mut config = GateConfig::relay_to(upstream.addr()).retry(&["30s"]);
        for line in lines {
            config = config.pool(line);
        }
        let toml = replace_once(&config.to_toml(), "tls = \"none\"", &format!("tls = \"{policy}\""));
        Scenario {
            gate: Gate::start(&toml),
            upstream,
        }
    }

    fn send(&self) {
        let sent = smtplib_send(
            self.gate.smtp_addr(),
            "alice@example.org",
            &["bob@example.test"],
            &message("pool-tls@example.org", "TLS", "Hello."),
        );
        assert!(sent.reply("END-OF-DATA").starts_with("250 "), "{sent}");
    }

    fn delivered(&self) -> UpstreamMessage {
        self.upstream.wait_for(1, SOON).remove(0)
    }

    /// The first delivery attempt's log line.
    fn attempt_line(&self) -> String {
        let find = || {
            (self.gate.stderr_lines().into_iter())
                .find(|l| l.contains("delivery attempt") && l.contains("bob@example.test"))
        };
        assert!(wait_until(SOON, || find().is_some()), "no delivery attempt logged");
        find().unwrap()
    }

    /// The attempt was deferred and nothing reached the upstream; returns the log line.
    fn expect_deferred(&self) -> String {
        let line = self.attempt_line();
        assert!(line.contains("result=\"deferred\""), "{line}");
        assert!(self.upstream.messages().is_empty(), "mail reached the upstream: {line}");
        line
    }
}

/// `pem` written to a file; the line `ca_file = "..."`.
fn ca_file_line(dir: &tempfile::TempDir, pem: &str) -> String {
    let path: PathBuf = dir.path().join("ca.pem");
    std::fs::write(&path, pem).expect("write ca.pem");
    format!("ca_file = {}", toml_path(&path))
}

fn auth_line() -> String {
    format!("auth = {{ username = \"{USER}\", password = \"{PASSWORD}\" }}")
}

fn credentials_over_tls() -> AuthAttempt {
    AuthAttempt {
        username: USER.into(),
        password: PASSWORD.into(),
        tls: true,
    }
}

/// Required TLS verifies by default: a self-signed certificate fails the handshake, the message
/// waits in the queue with the reason.
#[test]
fn self_signed_certificate_is_refused_by_default() {
    let s = Scenario::start(Upstream::with_starttls(&ServerCert::self_signed(HOST)), "required", &[]);
    s.send();
    let line = s.expect_deferred();
    assert!(line.contains("TLS required") && line.contains("certificate"), "{line}");
    assert!(s.upstream.tls_failures() >= 1, "no handshake was refused");
}

/// The pool's own CA in `ca_file`: the certificate it signed for 127.0.0.1 verifies.
#[test]
fn certificate_from_the_pools_ca_file_is_accepted() {
    let ca = TestCa::new("Pool CA");
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_line = ca_file_line(&dir, &ca.root_pem());
    let s = Scenario::start(Upstream::with_starttls(&ca.server_cert(HOST)), "required", &[&ca_line]);
    s.send();
    assert!(s.delivered().tls, "delivered without TLS");
    // The history says so too.
    let mut body = String::new();
    let recorded = wait_until(SOON, || {
        body = http_get(s.gate.admin_addr(), "/api/v1/events?type=delivered&since=1h").1;
        serde_json::from_str::<Vec<serde_json::Value>>(&body).is_ok_and(|events| !events.is_empty())
    });
    assert!(recorded, "no delivered event: {body}");
    let events: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(events[0]["tls"], true, "{body}");
}

/// A certificate from the right CA for another name is refused: the name is checked too.
#[test]
fn certificate_for_another_name_is_refused() {
    let ca = TestCa::new("Pool CA");
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_line = ca_file_line(&dir, &ca.root_pem());
    let s = Scenario::start(
        Upstream::with_starttls(&ca.server_cert("other.example.test")),
        "required",
        &[&ca_line],
    );
    s.send();
    let line = s.expect_deferred();
    assert!(line.contains("not valid for name"), "{line}");
}

/// `tls_verify = false` accepts any certificate, warns at start, and (as it accepts the server
/// for everything) sends the credentials.
#[test]
fn tls_verify_false_accepts_a_self_signed_certificate_and_warns() {
    let auth = auth_line();
    let s = Scenario::start(
        Upstream::with_starttls_and_auth(&ServerCert::self_signed("anything.example")),
        "required",
        &["tls_verify = false", &auth],
    );
    let warned =
        |s: &Scenario| (s.gate.stderr_lines().iter()).any(|l| l.contains("WARN") && l.contains("tls_verify = false"));
    assert!(wait_until(SOON, || warned(&s)), "no warning about tls_verify = false");
    s.send();
    assert!(s.delivered().tls, "delivered without TLS");
    assert_eq!(s.upstream.auth_attempts(), [credentials_over_tls()]);
}

/// Opportunistic TLS encrypts with any certificate, but credentials go only over a verified
/// session: to a self-signed server none are sent and the delivery waits, saying why.
#[test]
fn credentials_are_not_sent_to_an_unverified_server() {
    let auth = auth_line();
    let s = Scenario::start(
        Upstream::with_starttls_and_auth(&ServerCert::self_signed(HOST)),
        "opportunistic",
        &[&auth],
    );
    s.send();
    let line = s.expect_deferred();
    assert!(line.contains("refusing to send credentials"), "{line}");
    assert!(line.contains("auth_unverified"), "{line}");
    assert_eq!(s.upstream.auth_attempts(), []);
}

/// Opportunistic TLS with a certificate that verifies against `ca_file`: the credentials go.
#[test]
fn credentials_are_sent_to_a_verified_server() {
    let ca = TestCa::new("Pool CA");
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca_line, auth) = (ca_file_line(&dir, &ca.root_pem()), auth_line());
    let s = Scenario::start(
        Upstream::with_starttls_and_auth(&ca.server_cert(HOST)),
        "opportunistic",
        &[&ca_line, &auth],
    );
    s.send();
    assert!(s.delivered().tls, "delivered without TLS");
    assert_eq!(s.upstream.auth_attempts(), [credentials_over_tls()]);
}

/// `auth_unverified = true` is the explicit choice to send credentials over unverified TLS.
#[test]
fn auth_unverified_sends_credentials_to_an_unverified_server() {
    let auth = auth_line();
    let s = Scenario::start(
        Upstream::with_starttls_and_auth(&ServerCert::self_signed(HOST)),
        "opportunistic",
        &[&auth, "auth_unverified = true"],
    );
    s.send();
    assert!(s.delivered().tls, "delivered without TLS");
    assert_eq!(s.upstream.auth_attempts(), [credentials_over_tls()]);
}

/// The config check names the bad keys: `tls_verify` outside required TLS, a CA file that is
/// missing or holds no certificate.
#[test]
fn config_check_names_bad_tls_keys_and_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "hello\n").unwrap();
    let missing = dir.path().join("missing.pem");
    let check = |policy: &str, line: &str| {
        let toml = GateConfig::relay_to("127.0.0.1:25".parse().unwrap())
            .pool(line)
            .to_toml();
        let toml = replace_once(&toml, "tls = \"none\"", &format!("tls = \"{policy}\""));
        let file = dir.path().join("smtpgate.toml");
        std::fs::write(&file, toml).unwrap();
        let ran = support::run_smtpgate(&["check-config", file.to_str().unwrap()], None, Some(dir.path()));
        assert!(!ran.succeeded(), "check passed with {line}");
        format!("{}{}", ran.stdout, ran.stderr)
    };
    let out = check("opportunistic", "tls_verify = true");
    assert!(out.contains("pool[0].tls_verify"), "{out}");
    let out = check("required", &format!("ca_file = {}", toml_path(&missing)));
    assert!(out.contains("pool[0].ca_file") && out.contains("missing.pem"), "{out}");
    let out = check("required", &format!("ca_file = {}", toml_path(&not_pem)));
    assert!(
        out.contains("pool[0].ca_file") && out.contains("no certificate"),
        "{out}"
    );
    let out = check("none", "auth_unverified = true");
    assert!(out.contains("pool[0].auth_unverified"), "{out}");
}
