//! DKIM and ARC helpers shared by the sender authentication tests: key pairs made with
//! `openssl`, filters built from their `[[filter]]` options and run on one message, and an
//! independent verifier, Python's dkimpy, given the keys through its `dnsfunc` hook.

use std::fmt::Debug;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

use smtpgate::envelope::{Address, Sender};
use smtpgate::filter::registry;
use smtpgate::filter::{Filter, MessageInfo, Modification, SessionInfo, Verdict};

/// Runs `openssl` with `args`, panicking with its stderr on failure.
pub fn openssl(args: &[&str]) -> Vec<u8> {
    let out = Command::new("openssl").args(args).output().expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A key pair in `dir`: the private key file name, and the `p=` value of its DNS record.
pub struct KeyPair {
    pub file: String,
    pub algorithm: &'static str,
    pub public: String,
}

impl KeyPair {
    pub fn rsa(dir: &Path, name: &str) -> KeyPair {
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

    pub fn ed25519(dir: &Path, name: &str) -> KeyPair {
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

    pub fn record(&self) -> String {
        let k = if self.algorithm == "rsa-sha256" {
            "rsa"
        } else {
            "ed25519"
        };
        format!("v=DKIM1; k={k}; p={}", self.public)
    }
}

pub fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A message from `from` to alice@dest.test, with a `Received` field first and a body that
/// relaxed canonicalization changes.
pub fn auth_message(from: &str, subject: &str) -> Vec<u8> {
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

/// The filter of `kind` built from its `[[filter]]` `options` (TOML), relative to `dir`.
pub fn build(kind: &str, options: &str, dir: &Path) -> Arc<dyn Filter> {
    let table: toml::Table = toml::from_str(options).expect("options parse");
    registry::build(kind, table, dir).unwrap_or_else(|e| panic!("{kind} options rejected: {e:?}"))
}

/// The verdict of `filter` on `message` from `client` (saying `helo`) and `sender` to
/// alice@dest.test.
pub async fn run(filter: &dyn Filter, client: Ipv4Addr, helo: &str, sender: &str, message: &[u8]) -> Verdict {
    let session = SessionInfo {
        client: Some(IpAddr::V4(client)),
        helo: Some(helo.to_string()),
        listener: "in".into(),
        ..SessionInfo::default()
    };
    let recipients = vec![Address::parse("alice@dest.test").unwrap()];
    let sender = Sender::parse(sender).expect("a sender");
    let info = MessageInfo {
        session: &session,
        sender: &sender,
        recipients: &recipients,
        message,
        tags: &[],
    };
    filter.data(&info).await.expect("filter decided")
}

/// The message with the verdict's added headers, inserted after the first field as the
/// pipeline does.
pub fn apply(message: &[u8], verdict: &Verdict) -> Vec<u8> {
    let adds: Vec<(String, String)> = verdict
        .modifications
        .iter()
        .filter_map(|m| match m {
            Modification::AddHeader(n, v) => Some((n.clone(), v.clone())),
            _ => None,
        })
        .collect();
    smtpgate::message::apply_header_changes(message, &adds, &[])
}

/// The values of the headers named `name` (any case) that the verdict adds.
pub fn added(verdict: &Verdict, name: &str) -> Vec<String> {
    verdict
        .modifications
        .iter()
        .filter_map(|m| match m {
            Modification::AddHeader(n, v) if n.eq_ignore_ascii_case(name) => Some(v.clone()),
            _ => None,
        })
        .collect()
}

/// Writes `message` to `dir/file` and runs Python with dkimpy on it: `script` follows a prelude
/// that defines `records` (name → TXT, from `records`), a `dnsfunc` answering key lookups from
/// them, and `msg`, the message's bytes. Panics unless Python succeeds; returns its output.
pub fn dkimpy<N: Debug, V: Debug>(dir: &Path, file: &str, message: &[u8], records: &[(N, V)], script: &str) -> Output {
    let msg_path = dir.join(file);
    std::fs::write(&msg_path, message).unwrap();
    let table: String = records.iter().map(|(n, v)| format!("{n:?}: {v:?}.encode(),")).collect();
    let script = format!(
        "import sys, dkim\n\
         records = {{{table}}}\n\
         def dnsfunc(name, timeout=5):\n\
         \x20   name = name.decode() if isinstance(name, bytes) else name\n\
         \x20   return records.get(name.rstrip('.'))\n\
         msg = open(sys.argv[1], 'rb').read()\n\
         {script}"
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(&script)
        .arg(&msg_path)
        .output()
        .expect("run python3 (dkimpy: python3 -m pip install dkimpy pynacl)");
    assert!(out.status.success(), "dkimpy: {}", String::from_utf8_lossy(&out.stderr));
    out
}
