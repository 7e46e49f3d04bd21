//! Sender authentication filters, built from their `[[filter]]` options as the config does:
//!
//! - `dkim_sign`: signatures (RSA and Ed25519) checked by an independent verifier, Python's
//!   dkimpy, given the public key through its `dnsfunc` hook instead of DNS;
//! - `auth`: SPF, DKIM and DMARC against the test DNS server ([`DnsServer`]) with TXT records,
//!   including one that never answers (temperror, and never a rejection).

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use smtpgate::filter::registry;
use smtpgate::filter::{Action, Filter, MessageInfo, Modification, SessionInfo, Verdict};
use support::{DnsServer, DnsTable};

const CLIENT: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const STRANGER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 9);

/// Runs `openssl` with `args`, panicking with its stderr on failure.
fn openssl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl").args(args).output().expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A key pair in `dir`: the private key file name, and the `p=` value of its DNS record.
struct KeyPair {
    file: String,
    algorithm: &'static str,
    public: String,
}

impl KeyPair {
    fn rsa(dir: &Path, name: &str) -> KeyPair {
        let file = format!("{name}.pem");
        let path = dir.join(&file);
        let path = path.to_str().unwrap();
        openssl(&["genrsa", "-out", path, "2048"]);
        let der = openssl(&["pkey", "-in", path, "-pubout", "-outform", "DER"]);
        KeyPair {
            file,
            algorithm: "rsa-sha256",
            public: b64(&der),
        }
    }

    fn ed25519(dir: &Path, name: &str) -> KeyPair {
        let file = format!("{name}.pem");
        let path = dir.join(&file);
        let path = path.to_str().unwrap();
        openssl(&["genpkey", "-algorithm", "ed25519", "-out", path]);
        let der = openssl(&["pkey", "-in", path, "-pubout", "-outform", "DER"]);
        // RFC 8463 3: the record holds the bare 32-byte key, the end of the SubjectPublicKeyInfo.
        KeyPair {
            file,
            algorithm: "ed25519-sha256",
            public: b64(&der[der.len() - 32..]),
        }
    }

    fn record(&self) -> String {
        let k = if self.algorithm == "rsa-sha256" {
            "rsa"
        } else {
            "ed25519"
        };
        format!("v=DKIM1; k={k}; p={}", self.public)
    }
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn message(from: &str, subject: &str) -> Vec<u8> {
    format!(
        "Received: from client by gate.example.test; Mon, 1 Jan 2024 00:00:00 +0000\r\n\
         From: Bob <{from}>\r\n\
         To: alice@dest.test\r\n\
         Subject: {subject}\r\n\
         Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n\
         Message-ID: <{subject}@example.test>\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain\r\n\
         \r\n\
         Hello  there,\r\n\
         a body with  double  spaces and a trailing blank line.\r\n\
         \r\n"
    )
    .into_bytes()
}

fn build(kind: &str, options: &str, dir: &Path) -> Arc<dyn Filter> {
    let table: toml::Table = toml::from_str(options).expect("options parse");
    registry::build(kind, table, dir).unwrap_or_else(|e| panic!("{kind} options rejected: {e:?}"))
}

async fn run(filter: &dyn Filter, client: Ipv4Addr, helo: &str, sender: &str, message: &[u8]) -> Verdict {
    let session = SessionInfo {
        client: Some(IpAddr::V4(client)),
        helo: Some(helo.to_string()),
        listener: "in".into(),
        ..SessionInfo::default()
    };
    let recipients = vec!["alice@dest.test".to_string()];
    let info = MessageInfo {
        session: &session,
        sender,
        recipients: &recipients,
        message,
        tags: &[],
    };
    filter.data(&info).await.expect("filter decided")
}

/// The message with the verdict's added headers, inserted after the first field as the
/// pipeline does.
fn apply(message: &[u8], verdict: &Verdict) -> Vec<u8> {
    let adds: Vec<(String, String)> = verdict
        .modifications
        .iter()
        .filter_map(|m| match m {
            Modification::AddHeader(n, v) => Some((n.clone(), v.clone())),
            _ => None,
        })
        .collect();
    smtpgate::session::apply_header_changes(message, &adds, &[])
}

fn added(verdict: &Verdict, name: &str) -> Vec<String> {
    verdict
        .modifications
        .iter()
        .filter_map(|m| match m {
            Modification::AddHeader(n, v) if n.eq_ignore_ascii_case(name) => Some(v.clone()),
            _ => None,
        })
        .collect()
}

/// Verifies every DKIM signature of `message` with dkimpy, answering its key lookups from
/// `records` (name → TXT). Returns dkimpy's verdict per signature.
fn dkimpy_verify(dir: &Path, message: &[u8], records: &[(String, String)]) -> Vec<bool> {
    let msg_path = dir.join("signed.eml");
    std::fs::write(&msg_path, message).unwrap();
    let table: String = records.iter().map(|(n, v)| format!("{n:?}: {v:?}.encode(),")).collect();
    let script = format!(
        "import sys, dkim\n\
         records = {{{table}}}\n\
         def dnsfunc(name, timeout=5):\n\
         \x20   name = name.decode() if isinstance(name, bytes) else name\n\
         \x20   return records.get(name.rstrip('.'))\n\
         msg = open(sys.argv[1], 'rb').read()\n\
         d = dkim.DKIM(msg)\n\
         sigs = [h for h in d.headers if h[0].lower() == b'dkim-signature']\n\
         for i in range(len(sigs)):\n\
         \x20   print('pass' if d.verify(idx=i, dnsfunc=dnsfunc) else 'fail')\n"
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(&script)
        .arg(&msg_path)
        .output()
        .expect("run python3 (dkimpy: python3 -m pip install dkimpy pynacl)");
    assert!(out.status.success(), "dkimpy: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l == "pass")
        .collect()
}

fn sign_options(keys: &[(&str, &str, &KeyPair)]) -> String {
    let keys: Vec<String> = keys
        .iter()
        .map(|(domain, selector, k)| {
            format!(
                "{{ domain = \"{domain}\", selector = \"{selector}\", key = \"{}\", algorithm = \"{}\" }}",
                k.file, k.algorithm
            )
        })
        .collect();
    format!("keys = [{}]\n", keys.join(", "))
}

#[tokio::test]
async fn dkim_sign_rsa_and_ed25519_verify_with_dkimpy() {
    let dir = tempfile::tempdir().unwrap();
    let rsa = KeyPair::rsa(dir.path(), "rsa");
    let ed = KeyPair::ed25519(dir.path(), "ed");
    let options = sign_options(&[("example.test", "rsa1", &rsa), ("example.test", "ed1", &ed)]);
    let filter = build("dkim_sign", &options, dir.path());
    let original = message("bob@example.test", "signed");
    let verdict = run(filter.as_ref(), CLIENT, "client.test", "bob@example.test", &original).await;
    assert_eq!(verdict.action, Action::Accept);
    let sigs = added(&verdict, "DKIM-Signature");
    assert_eq!(sigs.len(), 2, "{verdict:?}");
    assert!(
        sigs.iter().any(|s| s.contains("a=rsa-sha256") && s.contains("s=rsa1")),
        "{sigs:?}"
    );
    assert!(
        sigs.iter()
            .any(|s| s.contains("a=ed25519-sha256") && s.contains("s=ed1")),
        "{sigs:?}"
    );
    assert!(sigs.iter().all(|s| s.contains("c=relaxed/relaxed")), "{sigs:?}");
    let signed = apply(&original, &verdict);
    let records = [
        ("rsa1._domainkey.example.test".to_string(), rsa.record()),
        ("ed1._domainkey.example.test".to_string(), ed.record()),
    ];
    assert_eq!(dkimpy_verify(dir.path(), &signed, &records), [true, true]);

    // The same check must fail once a signed header is changed: the verifier really verifies.
    let tampered = String::from_utf8(signed)
        .unwrap()
        .replace("Subject: signed", "Subject: changed");
    assert_eq!(dkimpy_verify(dir.path(), tampered.as_bytes(), &records), [false, false]);
}

#[tokio::test]
async fn dkim_sign_uses_envelope_domain_when_from_has_no_key() {
    let dir = tempfile::tempdir().unwrap();
    let rsa = KeyPair::rsa(dir.path(), "rsa");
    let filter = build("dkim_sign", &sign_options(&[("relay.test", "s1", &rsa)]), dir.path());
    let original = message("bob@elsewhere.test", "envelope");
    let verdict = run(filter.as_ref(), CLIENT, "client.test", "bounces@relay.test", &original).await;
    let sigs = added(&verdict, "DKIM-Signature");
    assert_eq!(sigs.len(), 1);
    assert!(sigs[0].contains("d=relay.test"), "{sigs:?}");
    let records = [("s1._domainkey.relay.test".to_string(), rsa.record())];
    assert_eq!(dkimpy_verify(dir.path(), &apply(&original, &verdict), &records), [true]);

    // Neither domain has a key: nothing is added.
    let verdict = run(
        filter.as_ref(),
        CLIENT,
        "client.test",
        "x@other.test",
        &message("a@other.test", "none"),
    )
    .await;
    assert_eq!(verdict, Verdict::accept());
}

#[test]
fn dkim_sign_reports_a_bad_key_file_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("junk.pem"), "not a key").unwrap();
    let table: toml::Table = toml::from_str(
        "keys = [{ domain = \"example.test\", selector = \"s1\", key = \"junk.pem\", algorithm = \"rsa-sha256\" }]",
    )
    .unwrap();
    let errors = registry::build("dkim_sign", table, dir.path()).unwrap_err();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].0, "keys[0].key");
}

/// A signer for `domain` with selector `s1`, its DNS record, and the test DNS table holding
/// SPF (127.0.0.1 only) and DMARC (`p`) for it.
struct Domain {
    signer: Arc<dyn Filter>,
    key_record: String,
}

fn domain(dir: &Path, domain: &str) -> Domain {
    let key = KeyPair::rsa(dir, domain);
    Domain {
        signer: build("dkim_sign", &sign_options(&[(domain, "s1", &key)]), dir),
        key_record: key.record(),
    }
}

fn auth(dir: &Path, dns: SocketAddr, policy: &str) -> Arc<dyn Filter> {
    let options = format!(
        "hostname = \"gate.example.test\"\nnameservers = [\"{dns}\"]\ndns_timeout = \"1s\"\ndmarc_policy = \"{policy}\"\n"
    );
    build("auth", &options, dir)
}

/// Signs (when `signer` is given) then verifies; returns the auth verdict and its header.
async fn check(
    auth: &dyn Filter,
    signer: Option<&dyn Filter>,
    client: Ipv4Addr,
    sender: &str,
    message: Vec<u8>,
) -> (Verdict, String) {
    let message = match signer {
        Some(s) => apply(&message, &run(s, client, "mail.client.test", sender, &message).await),
        None => message,
    };
    let verdict = run(auth, client, "mail.client.test", sender, &message).await;
    let header = added(&verdict, "Authentication-Results");
    assert_eq!(header.len(), 1, "{verdict:?}");
    let header = header[0].replace("\r\n\t", " ");
    (verdict, header)
}

#[tokio::test]
async fn auth_passes_spf_dkim_and_dmarc() {
    let dir = tempfile::tempdir().unwrap();
    let d = domain(dir.path(), "example.test");
    let dns = DnsServer::start(
        DnsTable::new()
            .txt("example.test", "v=spf1 ip4:127.0.0.1 -all")
            .txt("s1._domainkey.example.test", &d.key_record)
            .txt("_dmarc.example.test", "v=DMARC1; p=reject"),
    );
    let filter = auth(dir.path(), dns.addr(), "enforce");
    let (verdict, header) = check(
        filter.as_ref(),
        Some(d.signer.as_ref()),
        CLIENT,
        "bob@example.test",
        message("bob@example.test", "pass"),
    )
    .await;
    assert_eq!(verdict.action, Action::Accept, "{header}");
    assert!(header.starts_with("gate.example.test;"), "{header}");
    assert!(
        header.contains("spf=pass") && header.contains("smtp.mailfrom=bob@example.test"),
        "{header}"
    );
    assert!(header.contains("dkim=pass header.d=example.test"), "{header}");
    assert!(header.contains("dmarc=pass header.from=example.test"), "{header}");
}

#[tokio::test]
async fn auth_failing_dmarc_is_rejected_when_enforced_and_only_recorded_when_reporting() {
    let dir = tempfile::tempdir().unwrap();
    let dns = DnsServer::start(
        DnsTable::new()
            .txt("example.test", "v=spf1 ip4:127.0.0.1 -all")
            .txt("_dmarc.example.test", "v=DMARC1; p=reject")
            .txt("quiet.test", "v=spf1 ip4:127.0.0.1 -all")
            .txt("_dmarc.quiet.test", "v=DMARC1; p=quarantine"),
    );
    // Unsigned, from an address the SPF record does not list.
    let forged = || message("bob@example.test", "forged");
    let enforce = auth(dir.path(), dns.addr(), "enforce");
    let (verdict, header) = check(enforce.as_ref(), None, STRANGER, "bob@example.test", forged()).await;
    match &verdict.action {
        Action::Reject(reply) => {
            assert_eq!((reply.code, &*reply.status), (550, "5.7.1"), "{reply:?}");
        }
        other => panic!("expected a rejection, got {other:?} ({header})"),
    }
    assert!(header.contains("spf=fail") && header.contains("dkim=none"), "{header}");
    assert!(header.contains("dmarc=fail"), "{header}");
    assert!(
        header.contains("header.from=example.test policy.dmarc=reject"),
        "{header}"
    );

    let report = auth(dir.path(), dns.addr(), "report");
    let (verdict, header) = check(report.as_ref(), None, STRANGER, "bob@example.test", forged()).await;
    assert_eq!(verdict.action, Action::Accept);
    assert!(header.contains("dmarc=fail"), "{header}");

    let (verdict, header) = check(
        enforce.as_ref(),
        None,
        STRANGER,
        "bob@quiet.test",
        message("bob@quiet.test", "quarantined"),
    )
    .await;
    assert!(
        matches!(verdict.action, Action::Quarantine(_)),
        "{verdict:?} ({header})"
    );
}

#[tokio::test]
async fn auth_dns_timeouts_are_temperror_and_never_reject() {
    let dir = tempfile::tempdir().unwrap();
    let d = domain(dir.path(), "slow.test");
    // The domain publishes p=reject, but its SPF record and DKIM key cannot be fetched.
    let dns = DnsServer::start(
        DnsTable::new()
            .txt("_dmarc.slow.test", "v=DMARC1; p=reject")
            .silent("slow.test")
            .silent("s1._domainkey.slow.test")
            .silent("_dmarc.silent.test")
            .silent("silent.test"),
    );
    let filter = auth(dir.path(), dns.addr(), "enforce");
    let (verdict, header) = check(
        filter.as_ref(),
        Some(d.signer.as_ref()),
        STRANGER,
        "bob@slow.test",
        message("bob@slow.test", "slow"),
    )
    .await;
    assert_eq!(verdict.action, Action::Accept, "{header}");
    assert!(header.contains("spf=temperror"), "{header}");
    assert!(header.contains("dkim=temperror"), "{header}");
    assert!(header.contains("dmarc=temperror"), "{header}");

    // The DMARC record itself cannot be fetched.
    let (verdict, header) = check(
        filter.as_ref(),
        None,
        STRANGER,
        "bob@silent.test",
        message("bob@silent.test", "silent"),
    )
    .await;
    assert_eq!(verdict.action, Action::Accept, "{header}");
    assert!(header.contains("dmarc=temperror"), "{header}");
}
