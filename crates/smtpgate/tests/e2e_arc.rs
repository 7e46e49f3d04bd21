//! `arc_seal`: ARC sets (RFC 8617) added by smtpgate, checked by an independent verifier,
//! Python's dkimpy (`dkim.arc_verify`), given the public keys through its `dnsfunc` hook. The
//! sealer's own checks (SPF, DKIM, DMARC, the existing chain) ask the test DNS server.

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use smtpgate::filter::registry;
use smtpgate::filter::{Action, Filter, Verdict};
use support::{DnsServer, DnsTable, KeyPair, added, apply, auth_message, build, dkimpy, run};

const CLIENT: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);

/// Runs dkimpy's ARC verification on `message`, answering key lookups from `records`.
/// Returns the chain validation (`pass`, `fail`, `none`).
fn dkimpy_arc_verify(dir: &Path, message: &[u8], records: &[(String, String)]) -> String {
    let out = dkimpy(
        dir,
        "sealed.eml",
        message,
        records,
        "cv, results, reason = dkim.arc_verify(msg, dnsfunc=dnsfunc)\n\
         print(cv.decode())\n\
         print(reason, file=sys.stderr)\n",
    );
    let cv = String::from_utf8_lossy(&out.stdout).trim().to_string();
    eprintln!(
        "dkimpy arc_verify: {cv} ({})",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    cv
}

fn sealer(dir: &Path, dns: SocketAddr, domain: &str, key: &KeyPair, authserv_id: &str) -> Arc<dyn Filter> {
    let options = format!(
        "keys = [{{ domain = \"{domain}\", selector = \"arc1\", key = \"{}\", algorithm = \"{}\" }}]\n\
         authserv_id = \"{authserv_id}\"\nnameservers = [\"{dns}\"]\ndns_timeout = \"1s\"\n",
        key.file, key.algorithm
    );
    build("arc_seal", &options, dir)
}

fn field<'a>(message: &'a str, name: &str, instance: u32) -> Option<&'a str> {
    let prefix = format!("{name}: i={instance};");
    message
        .split("\r\n")
        .find(|l| l.len() >= prefix.len() && l[..prefix.len()].eq_ignore_ascii_case(&prefix))
}

#[tokio::test]
async fn arc_seal_first_and_second_hop_verify_with_dkimpy_and_tampering_fails() {
    let dir = tempfile::tempdir().unwrap();
    let relay1 = KeyPair::rsa(dir.path(), "relay1");
    let relay2 = KeyPair::rsa(dir.path(), "relay2");
    let relay3 = KeyPair::ed25519(dir.path(), "relay3");
    let dns = DnsServer::start(
        DnsTable::new()
            .txt("example.test", "v=spf1 ip4:127.0.0.1 -all")
            .txt("_dmarc.example.test", "v=DMARC1; p=none")
            .txt("arc1._domainkey.relay1.test", &relay1.record())
            .txt("arc1._domainkey.relay2.test", &relay2.record())
            .txt("arc1._domainkey.relay3.test", &relay3.record()),
    );
    let records = [
        ("arc1._domainkey.relay1.test".to_string(), relay1.record()),
        ("arc1._domainkey.relay2.test".to_string(), relay2.record()),
    ];
    let original = auth_message("bob@example.test", "forwarded");
    assert_eq!(dkimpy_arc_verify(dir.path(), &original, &records), "none");

    // First hop: no ARC set yet, so i=1 and cv=none.
    let hop1 = sealer(dir.path(), dns.addr(), "relay1.test", &relay1, "mx.relay1.test");
    let verdict = run(
        hop1.as_ref(),
        CLIENT,
        "mail.example.test",
        "bob@example.test",
        &original,
    )
    .await;
    assert_eq!(verdict.action, Action::Accept);
    assert_eq!(added(&verdict, "ARC-Seal").len(), 1, "{verdict:?}");
    assert_eq!(added(&verdict, "ARC-Message-Signature").len(), 1, "{verdict:?}");
    let aar = added(&verdict, "ARC-Authentication-Results");
    assert_eq!(aar.len(), 1, "{verdict:?}");
    let aar = aar[0].replace("\r\n\t", " ");
    assert!(aar.starts_with("i=1; mx.relay1.test;"), "{aar}");
    assert!(aar.contains("spf=pass") && aar.contains("arc=none"), "{aar}");
    assert!(aar.contains("dmarc=pass header.from=example.test"), "{aar}");
    let sealed1 = apply(&original, &verdict);
    let text1 = String::from_utf8(sealed1.clone()).unwrap();
    let seal1 = field(&text1, "ARC-Seal", 1).expect("ARC-Seal i=1");
    assert!(seal1.contains("cv=none") && seal1.contains("d=relay1.test"), "{text1}");
    assert_eq!(dkimpy_arc_verify(dir.path(), &sealed1, &records), "pass", "{text1}");

    // Second hop, with the existing set: i=2 and cv=pass.
    let hop2 = sealer(dir.path(), dns.addr(), "relay2.test", &relay2, "mx.relay2.test");
    let verdict = run(hop2.as_ref(), CLIENT, "mx.relay1.test", "bob@example.test", &sealed1).await;
    let aar = added(&verdict, "ARC-Authentication-Results");
    assert_eq!(aar.len(), 1, "{verdict:?}");
    let aar = aar[0].replace("\r\n\t", " ");
    assert!(
        aar.starts_with("i=2; mx.relay2.test;") && aar.contains("arc=pass"),
        "{aar}"
    );
    let sealed2 = apply(&sealed1, &verdict);
    let text2 = String::from_utf8(sealed2.clone()).unwrap();
    let seal2 = field(&text2, "ARC-Seal", 2).expect("ARC-Seal i=2");
    assert!(seal2.contains("cv=pass") && seal2.contains("d=relay2.test"), "{text2}");
    assert!(field(&text2, "ARC-Message-Signature", 2).is_some(), "{text2}");
    assert!(field(&text2, "ARC-Seal", 1).is_some(), "{text2}");
    assert_eq!(dkimpy_arc_verify(dir.path(), &sealed2, &records), "pass", "{text2}");

    // Tampering with a signed header or the body breaks the chain.
    let tampered = text2.replace("Subject: forwarded", "Subject: changed");
    assert_eq!(dkimpy_arc_verify(dir.path(), tampered.as_bytes(), &records), "fail");
    let tampered = text2.replace("Hello  there", "Goodbye there");
    assert_eq!(dkimpy_arc_verify(dir.path(), tampered.as_bytes(), &records), "fail");

    // An Ed25519 key seals too (i=3). dkimpy's ARC verifier only knows rsa-sha256, so the chain
    // is checked by a fourth hop, through mail-auth: its ARC-Authentication-Results says arc=pass.
    let hop3 = sealer(dir.path(), dns.addr(), "relay3.test", &relay3, "mx.relay3.test");
    let verdict = run(hop3.as_ref(), CLIENT, "mx.relay2.test", "bob@example.test", &sealed2).await;
    let seal3 = added(&verdict, "ARC-Seal");
    assert_eq!(seal3.len(), 1, "{verdict:?}");
    assert!(
        seal3[0].starts_with("i=3;") && seal3[0].contains("a=ed25519-sha256") && seal3[0].contains("cv=pass"),
        "{seal3:?}"
    );
    let sealed3 = apply(&sealed2, &verdict);
    let verdict = run(hop1.as_ref(), CLIENT, "mx.relay3.test", "bob@example.test", &sealed3).await;
    let aar = added(&verdict, "ARC-Authentication-Results");
    assert_eq!(aar.len(), 1, "{verdict:?}");
    assert!(aar[0].starts_with("i=4;") && aar[0].contains("arc=pass"), "{aar:?}");
    // And a tampered copy of it fails there.
    let tampered = String::from_utf8(sealed3)
        .unwrap()
        .replace("Hello  there", "Goodbye there");
    let verdict = run(
        hop1.as_ref(),
        CLIENT,
        "mx.relay3.test",
        "bob@example.test",
        tampered.as_bytes(),
    )
    .await;
    let aar = added(&verdict, "ARC-Authentication-Results");
    // mail-auth says `neutral` for a body hash mismatch; the new seal records the failure.
    assert!(aar[0].contains("arc=neutral (body hash did not verify)"), "{aar:?}");
    assert!(added(&verdict, "ARC-Seal")[0].contains("cv=fail"), "{verdict:?}");
}

#[tokio::test]
async fn arc_seal_does_not_extend_a_failed_chain() {
    let dir = tempfile::tempdir().unwrap();
    let relay1 = KeyPair::rsa(dir.path(), "relay1");
    let relay2 = KeyPair::rsa(dir.path(), "relay2");
    let dns = DnsServer::start(
        DnsTable::new()
            .txt("arc1._domainkey.relay1.test", &relay1.record())
            .txt("arc1._domainkey.relay2.test", &relay2.record())
            .txt("arc1._domainkey.relay3.test", &relay2.record()),
    );
    let hop1 = sealer(dir.path(), dns.addr(), "relay1.test", &relay1, "mx.relay1.test");
    let original = auth_message("bob@example.test", "broken");
    let sealed1 = apply(
        &original,
        &run(
            hop1.as_ref(),
            CLIENT,
            "mail.example.test",
            "bob@example.test",
            &original,
        )
        .await,
    );
    // The body changes after the first hop: the second seals with cv=fail...
    let changed = String::from_utf8(sealed1)
        .unwrap()
        .replace("Hello  there", "Goodbye there");
    let hop2 = sealer(dir.path(), dns.addr(), "relay2.test", &relay2, "mx.relay2.test");
    let verdict = run(
        hop2.as_ref(),
        CLIENT,
        "mx.relay1.test",
        "bob@example.test",
        changed.as_bytes(),
    )
    .await;
    let seal = added(&verdict, "ARC-Seal");
    assert_eq!(seal.len(), 1, "{verdict:?}");
    assert!(seal[0].contains("i=2") && seal[0].contains("cv=fail"), "{seal:?}");
    let sealed2 = apply(changed.as_bytes(), &verdict);
    // ...and a third hop adds nothing to a chain that already failed.
    let hop3 = sealer(dir.path(), dns.addr(), "relay3.test", &relay2, "mx.relay3.test");
    let verdict = run(hop3.as_ref(), CLIENT, "mx.relay2.test", "bob@example.test", &sealed2).await;
    assert_eq!(verdict, Verdict::accept());
}

#[test]
fn arc_seal_is_a_known_kind() {
    assert!(registry::KINDS.contains(&"arc_seal"));
    let table: toml::Table = toml::from_str("keys = []\nnameservers = [\"not an address\"]").unwrap();
    let errors = registry::build("arc_seal", table, Path::new("/")).unwrap_err();
    let keys: Vec<&str> = errors.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["keys", "nameservers[0]"], "{errors:?}");
}
