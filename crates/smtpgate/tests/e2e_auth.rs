//! Sender authentication filters, built from their `[[filter]]` options as the config does:
//!
//! - `dkim_sign`: signatures (RSA and Ed25519) checked by an independent verifier, Python's
//!   dkimpy, given the public key through its `dnsfunc` hook instead of DNS;
//! - `auth`: SPF, DKIM and DMARC against the test DNS server ([`DnsServer`]) with TXT records,
//!   including one that never answers (temperror, and never a rejection).

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use smtpgate::filter::registry;
use smtpgate::filter::{Action, Filter, Verdict};
use support::{
    DnsServer, DnsTable, Gate, GateConfig, KeyPair, SOON, Upstream, added, apply, auth_message, build, dkimpy,
    header_values, run, smtplib_send,
};

const CLIENT: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const STRANGER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 9);

/// Verifies every DKIM signature of `message` with dkimpy, answering its key lookups from
/// `records` (name → TXT). Returns dkimpy's verdict per signature.
fn dkimpy_verify(dir: &Path, message: &[u8], records: &[(String, String)]) -> Vec<bool> {
    let out = dkimpy(
        dir,
        "signed.eml",
        message,
        records,
        "d = dkim.DKIM(msg)\n\
         sigs = [h for h in d.headers if h[0].lower() == b'dkim-signature']\n\
         for i in range(len(sigs)):\n\
         \x20   print('pass' if d.verify(idx=i, dnsfunc=dnsfunc) else 'fail')\n",
    );
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
    let original = auth_message("bob@example.test", "signed");
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
    let original = auth_message("bob@elsewhere.test", "envelope");
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
        &auth_message("a@other.test", "none"),
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
        auth_message("bob@example.test", "pass"),
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
    let forged = || auth_message("bob@example.test", "forged");
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
        auth_message("bob@quiet.test", "quarantined"),
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
        auth_message("bob@slow.test", "slow"),
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
        auth_message("bob@silent.test", "silent"),
    )
    .await;
    assert_eq!(verdict.action, Action::Accept, "{header}");
    assert!(header.contains("dmarc=temperror"), "{header}");
}

/// Through a running gate: `Authentication-Results:` fields that came with the message and claim
/// the gate's authserv-id are removed before `auth` adds its own (RFC 8601 5); another host's are
/// kept. A forged `dmarc=pass` for the gate never reaches the recipient.
#[test]
fn forged_results_for_this_host_are_removed() {
    let dns = DnsServer::start(DnsTable::new().txt("example.test", "v=spf1 ip4:127.0.0.1 -all"));
    let upstream = Upstream::start();
    let filter = format!(
        "\n[[filter]]\nname = \"auth\"\nkind = \"auth\"\nhostname = \"gate.example.test\"\n\
         nameservers = [\"{}\"]\ndns_timeout = \"1s\"\ndmarc_policy = \"report\"\n",
        dns.addr()
    );
    let toml = GateConfig::relay_to(upstream.addr())
        .listener("filters = [\"auth\"]")
        .to_toml()
        + &filter;
    let gate = Gate::start(&toml);
    let message = "Authentication-Results: Gate.Example.Test; dmarc=pass header.from=bank.example\r\n\
                   Authentication-Results: other.example; spf=pass smtp.mailfrom=x@other.example\r\n\
                   Authentication-Results: gate.example.test 1;\r\n\tdkim=pass header.d=bank.example\r\n\
                   From: Bank <ceo@bank.example>\r\nTo: alice@example.org\r\nSubject: forged\r\n\
                   Message-ID: <forged-ar@example.test>\r\n\r\nPay now.\r\n";
    let t = smtplib_send(gate.smtp_addr(), "bob@example.test", &["alice@example.org"], message);
    assert!(t.reply("END-OF-DATA").starts_with("250"), "{t}");
    let got = upstream.wait_for(1, SOON);
    let text = got[0].text();
    let results = header_values(&text, "Authentication-Results");
    let ours: Vec<&String> = results
        .iter()
        .filter(|v| v.to_ascii_lowercase().starts_with("gate.example.test"))
        .collect();
    assert_eq!(ours.len(), 1, "only the gate's own results: {results:#?}");
    assert!(ours[0].contains("spf=pass"), "{results:#?}");
    assert!(!ours[0].contains("dmarc=pass"), "the forged dmarc=pass is gone: {text}");
    assert!(
        !text.contains("header.d=bank.example"),
        "the forged dkim=pass is gone: {text}"
    );
    assert!(
        results.iter().any(|v| v.starts_with("other.example;")),
        "another host's results are kept: {results:#?}"
    );
}
