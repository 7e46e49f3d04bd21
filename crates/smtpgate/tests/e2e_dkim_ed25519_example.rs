//! End-to-end: the README's Ed25519 DKIM example (section "## Policy filters"), as an
//! administrator would follow it: the shell lines make the key file and print the DNS record, the
//! filter block goes into the configuration, a real client (Python's smtplib) sends through the
//! gate, and an independent verifier (Python's dkimpy, given the printed record through its
//! `dnsfunc` hook) checks the signature in the message the upstream received.

mod support;

use std::path::Path;
use std::process::Command;

use support::{Gate, GateConfig, SOON, Upstream, dkimpy, header_values, message, smtplib_send};

/// The README's filter block; `readme_shows_this_example` checks it is there verbatim.
const FILTER: &str = r#"[[filter]]
name = "dkim"
kind = "dkim_sign"
keys = [{ domain = "example.test", selector = "e1", key = "dkim/example.test.ed25519.pem", algorithm = "ed25519-sha256" }]
"#;

/// The README's shell lines: the key file, then the DNS record on standard output.
const SHELL: &str = r#"mkdir -p dkim && openssl genpkey -algorithm ed25519 -out dkim/example.test.ed25519.pem
echo "v=DKIM1; k=ed25519; p=$(openssl pkey -in dkim/example.test.ed25519.pem -pubout -outform DER | tail -c 32 | base64 -w0)"
"#;

#[test]
fn readme_shows_this_example() {
    let readme = concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md");
    let readme = std::fs::read_to_string(readme).expect("README.md");
    assert!(
        readme.contains(&format!("```toml\n{FILTER}```")),
        "README.md's Ed25519 filter block and FILTER differ: keep them identical"
    );
    assert!(
        readme.contains(&format!("```sh\n{SHELL}```")),
        "README.md's Ed25519 shell lines and SHELL differ: keep them identical"
    );
}

/// Runs the README's shell lines in `dir`; returns the record they print.
fn make_key(dir: &Path) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(SHELL)
        .current_dir(dir)
        .output()
        .expect("run sh");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8 record").trim().to_owned()
}

#[test]
fn readme_ed25519_key_signs_and_dkimpy_verifies() {
    let keys = tempfile::tempdir().expect("tempdir");
    let record = make_key(keys.path());
    let p = record.rsplit_once("p=").map(|(_, p)| p).unwrap_or_default();
    assert!(record.starts_with("v=DKIM1; k=ed25519; p="), "{record}");
    assert_eq!(p.len(), 44, "p= is the bare 32-byte key in base64: {record}");
    let pem = std::fs::read_to_string(keys.path().join("dkim/example.test.ed25519.pem")).expect("key file");
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"), "PKCS#8 PEM: {pem}");

    let upstream = Upstream::start();
    let key = keys.path().join("dkim/example.test.ed25519.pem");
    let filter = FILTER.replacen(
        "key = \"dkim/example.test.ed25519.pem\"",
        &format!("key = {:?}", key.to_str().expect("utf-8 path")),
        1,
    );
    assert_ne!(filter, FILTER);
    let toml = GateConfig::relay_to(upstream.addr())
        .listener("filters = [\"dkim\"]")
        .to_toml()
        + &filter;
    let gate = Gate::start(&toml);

    let sent = smtplib_send(
        gate.smtp_addr(),
        "alice@example.test",
        &["bob@example.org"],
        &message("ed25519@example.test", "signed", "Signed  with   Ed25519."),
    );
    assert!(sent.reply("END-OF-DATA").starts_with("250 "), "{sent}");
    let arrived = upstream.wait_for(1, SOON);
    let raw = arrived[0].text();
    let signatures = header_values(&raw, "DKIM-Signature");
    assert_eq!(signatures.len(), 1, "{raw}");
    let tags: Vec<&str> = signatures[0].split(';').map(str::trim).collect();
    for tag in ["a=ed25519-sha256", "d=example.test", "s=e1"] {
        assert!(tags.contains(&tag), "no {tag} in {}", signatures[0]);
    }

    let records = [("e1._domainkey.example.test", record.as_str())];
    assert_eq!(verify(keys.path(), &arrived[0].data, &records), "pass", "{raw}");
    let tampered = raw.replacen("Signed  with", "Signed without", 1);
    assert_ne!(tampered, raw);
    assert_eq!(verify(keys.path(), tampered.as_bytes(), &records), "fail");
}

/// dkimpy's verdict on the message's one signature: `pass` or `fail`.
fn verify(dir: &Path, message: &[u8], records: &[(&str, &str)]) -> String {
    let out = dkimpy(
        dir,
        "arrived.eml",
        message,
        records,
        "try:\n\
         \x20   ok = dkim.verify(msg, dnsfunc=dnsfunc)\n\
         except dkim.ValidationError as e:\n\
         \x20   print(e, file=sys.stderr)\n\
         \x20   ok = False\n\
         print('pass' if ok else 'fail')\n",
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}
