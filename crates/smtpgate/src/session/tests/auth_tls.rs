//! STARTTLS and AUTH.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, ServerName};

use super::{Harness, INSIDE, OUTSIDE, config_with};

struct Tls {
    dir: tempfile::TempDir,
    root: CertificateDer<'static>,
}

/// A directory with a self-signed certificate for `gate.test` and a users file (alice / s3cret).
fn tls_files() -> Tls {
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["gate.test".to_string()]).unwrap();
    std::fs::write(dir.path().join("cert.pem"), ck.cert.pem()).unwrap();
    std::fs::write(dir.path().join("key.pem"), ck.signing_key.serialize_pem()).unwrap();
    let hash = crate::session::hash_password("s3cret").unwrap();
    std::fs::write(dir.path().join("users"), format!("alice:{hash}\n")).unwrap();
    Tls {
        dir,
        root: ck.cert.der().clone(),
    }
}

const TLS_AUTH: &str = "tls = { cert = \"cert.pem\", key = \"key.pem\" }\nauth = { users_file = \"users\" }";

async fn start(extra: &str, peer: &str) -> (Harness, CertificateDer<'static>) {
    let files = tls_files();
    let h = Harness::start_in(files.dir, &config_with(extra), peer).await;
    (h, files.root)
}

impl Harness {
    /// Completes a TLS handshake on the client side after `220 ready to start TLS`.
    async fn handshake(&mut self, root: &CertificateDer<'static>) {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(root.clone()).unwrap();
        let config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let io = std::mem::replace(&mut self.client, crate::io::placeholder());
        let name = ServerName::try_from("gate.test").unwrap();
        self.client = Box::new(connector.connect(name, io).await.expect("TLS handshake"));
    }
}

/// CVE-2011-0411: commands pipelined after STARTTLS in plaintext are never executed.
#[tokio::test]
async fn plaintext_pipelined_after_starttls_is_discarded() {
    let (mut h, root) = start(TLS_AUTH, INSIDE).await;
    let ehlo = h.ehlo().await;
    assert!(ehlo.contains("STARTTLS"));
    assert!(!ehlo.contains("AUTH"), "no AUTH before TLS: {ehlo}");
    h.send(b"STARTTLS\r\nMAIL FROM:<injected@evil.test>\r\nRCPT TO:<x@foreign.test>\r\n")
        .await;
    h.expect("220 2.0.0").await;
    h.handshake(&root).await;
    h.cmd("NOOP", "250 2.0.0").await;
    h.cmd("MAIL FROM:<a@local.test>", "503 5.5.1").await;
    let ehlo = h.ehlo().await;
    assert!(!ehlo.contains("STARTTLS"), "STARTTLS is not offered twice: {ehlo}");
    assert!(ehlo.contains("AUTH PLAIN LOGIN"));
    h.cmd("STARTTLS", "503 5.5.1").await;
}

#[tokio::test]
async fn auth_needs_tls_unless_allowed_for_loopback() {
    let (mut h, _) = start(TLS_AUTH, INSIDE).await;
    h.ehlo().await;
    h.cmd("AUTH PLAIN AGFsaWNlAHMzY3JldA==", "538 5.7.11").await;

    let extra = "auth = { users_file = \"users\", allow_plaintext = true }";
    let (mut h, _) = start(extra, INSIDE).await;
    assert!(h.ehlo().await.contains("AUTH PLAIN LOGIN"));
    h.cmd("AUTH PLAIN AGFsaWNlAHMzY3JldA==", "235 2.7.0").await;

    let (mut h, _) = start(extra, OUTSIDE).await;
    assert!(
        !h.ehlo().await.contains("AUTH"),
        "plaintext AUTH is for loopback clients only"
    );
    h.cmd("AUTH PLAIN AGFsaWNlAHMzY3JldA==", "538 5.7.11").await;
}

#[tokio::test]
async fn authenticated_client_may_relay_and_is_marked_esmtpsa() {
    let (mut h, root) = start(TLS_AUTH, OUTSIDE).await;
    h.ehlo().await;
    h.cmd("STARTTLS", "220").await;
    h.handshake(&root).await;
    h.ehlo().await;
    h.cmd("MAIL FROM:<alice@local.test>", "250").await;
    h.cmd("RCPT TO:<friend@foreign.test>", "554 5.7.1").await;
    h.cmd("RSET", "250").await;
    h.cmd("AUTH PLAIN AGFsaWNlAHMzY3JldA==", "235 2.7.0").await;
    h.cmd("AUTH PLAIN AGFsaWNlAHMzY3JldA==", "503 5.5.1").await;
    h.cmd("MAIL FROM:<alice@local.test>", "250").await;
    h.cmd("RCPT TO:<friend@foreign.test>", "250 2.1.5").await;
    h.cmd("DATA", "354").await;
    h.send(b"Subject: hi\r\n\r\nx\r\n.\r\n").await;
    h.expect("250 2.0.0").await;
    let body = String::from_utf8(h.spooled().remove(0).1).unwrap();
    assert!(body.contains("with ESMTPSA id"), "{body}");
    assert!(body.contains("(using TLSv1.3 with cipher "), "{body}");
    assert!(
        body.contains("\r\nMessage-ID: <"),
        "authenticated submission gets a Message-ID"
    );
}

#[tokio::test]
async fn auth_login_and_repeated_failures_disconnect() {
    let (mut h, root) = start(TLS_AUTH, OUTSIDE).await;
    h.ehlo().await;
    h.cmd("STARTTLS", "220").await;
    h.handshake(&root).await;
    h.ehlo().await;
    h.cmd("AUTH LOGIN", "334 VXNlcm5hbWU6").await;
    h.cmd("YWxpY2U=", "334 UGFzc3dvcmQ6").await;
    h.cmd("d3Jvbmc=", "535 5.7.8").await;
    h.cmd("AUTH LOGIN", "334").await;
    h.cmd("*", "501 5.7.0").await;
    h.cmd("AUTH PLAIN", "334").await;
    h.cmd("AGFsaWNlAHdyb25n", "535 5.7.8").await;
    h.cmd("AUTH FOO", "504 5.5.4").await;
    h.cmd("AUTH PLAIN AGFsaWNlAHdyb25n", "535 5.7.8").await;
    h.expect("421 4.7.0").await;
    assert!(h.closed().await);
}

#[tokio::test]
async fn require_tls_refuses_mail_in_plaintext() {
    let extra = "tls = { cert = \"cert.pem\", key = \"key.pem\" }\nrequire_tls = true";
    let (mut h, root) = start(extra, INSIDE).await;
    h.ehlo().await;
    h.cmd("MAIL FROM:<a@local.test>", "530 5.7.0").await;
    h.cmd("STARTTLS", "220").await;
    h.handshake(&root).await;
    h.ehlo().await;
    h.cmd("MAIL FROM:<a@local.test>", "250").await;
}
