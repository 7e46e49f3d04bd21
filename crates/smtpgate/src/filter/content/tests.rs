//! Content: rules, attachment names and types (in zips too), and bombs refused fast.

use std::time::{Duration, Instant};

use base64::Engine;
use smtpgate_proto::Reply;

use super::attachments::{glob_match, name_glob};
use super::mime_limits::{Structure, scan};
use super::{Content, from_options};
use crate::config::values::parse_size;
use crate::filter::{Action, Modification, Verdict};

/// A generous bound: the bombs below take milliseconds when refused early, and many seconds or
/// gigabytes when parsed in full.
const DEADLINE: Duration = Duration::from_secs(5);

const BLOCKING: &str = r#"
block_attachments = ["*.exe", "*.js", "*.vbs", "*.scr"]
block_types = ["application/x-msdownload"]
"#;

fn content(toml_text: &str) -> Content {
    from_options(toml::from_str(toml_text).expect("valid toml")).expect("valid options")
}

fn judged_within_deadline(c: &Content, message: &[u8]) -> Verdict {
    let started = Instant::now();
    let v = c.judge(message);
    assert!(started.elapsed() < DEADLINE, "took {:?}", started.elapsed());
    v
}

fn plain(subject: &str, body: &str) -> Vec<u8> {
    format!("From: a@example.test\r\nTo: b@example.test\r\nSubject: {subject}\r\n\r\n{body}\r\n").into_bytes()
}

/// A message with a text part and one base64 attachment.
fn with_attachment(filename: &str, media_type: &str, data: &[u8]) -> Vec<u8> {
    let b64 = base64::engine::general_purpose::STANDARD.encode(data);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(76)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "From: a@example.test\r\nTo: b@example.test\r\nSubject: files\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"outer\"\r\n\r\n--outer\r\nContent-Type: text/plain\r\n\r\n\
         see attached\r\n--outer\r\nContent-Type: {media_type}; name=\"{filename}\"\r\n\
         Content-Disposition: attachment; filename=\"{filename}\"\r\nContent-Transfer-Encoding: base64\r\n\r\n\
         {}\r\n--outer--\r\n",
        lines.join("\r\n")
    )
    .into_bytes()
}

/// A zip archive of stored (uncompressed) entries, built by hand: local headers, central
/// directory, end record.
fn zip(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut directory = Vec::new();
    for (name, data) in entries {
        let offset = out.len() as u32;
        let crc = crc32fast::hash(data);
        let size = data.len() as u32;
        out.extend_from_slice(b"PK\x03\x04");
        out.extend_from_slice(&[20, 0, 0, 0, 0, 0, 0, 0, 0, 0]); // version, flags, method 0, time, date
        for v in [crc, size, size] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(data);
        directory_entry(&mut directory, name, crc, size, size, offset);
    }
    finish(out, &directory, entries.len())
}

fn directory_entry(dir: &mut Vec<u8>, name: &str, crc: u32, compressed: u32, uncompressed: u32, offset: u32) {
    dir.extend_from_slice(b"PK\x01\x02");
    dir.extend_from_slice(&[20, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0]); // made by, needed, flags, method, time, date
    for v in [crc, compressed, uncompressed] {
        dir.extend_from_slice(&v.to_le_bytes());
    }
    dir.extend_from_slice(&(name.len() as u16).to_le_bytes());
    dir.extend_from_slice(&[0; 8]); // extra and comment lengths, disk, internal attributes
    dir.extend_from_slice(&0u32.to_le_bytes()); // external attributes
    dir.extend_from_slice(&offset.to_le_bytes());
    dir.extend_from_slice(name.as_bytes());
}

fn finish(mut out: Vec<u8>, directory: &[u8], count: usize) -> Vec<u8> {
    let offset = out.len() as u32;
    out.extend_from_slice(directory);
    out.extend_from_slice(b"PK\x05\x06\0\0\0\0");
    let count = count.min(u16::MAX as usize) as u16;
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&(directory.len() as u32).to_le_bytes());
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out
}

/// A directory-only zip whose `count` entries each claim `claimed` uncompressed bytes.
fn zip_claiming(count: usize, claimed: u32) -> Vec<u8> {
    let mut directory = Vec::new();
    for i in 0..count {
        directory_entry(&mut directory, &format!("f{i:06}.txt"), 0, 100, claimed, 0);
    }
    finish(b"PK\x03\x04".to_vec(), &directory, count)
}

fn rejected(reason: &str) -> Action {
    Action::Reject(Reply::content_rejected(reason))
}

#[test]
fn mime_nested_a_thousand_deep_is_refused_fast() {
    let mut m = String::from("Subject: bomb\r\n");
    for i in 0..1000 {
        m += &format!("Content-Type: multipart/mixed; boundary=\"b{i}\"\r\n\r\n--b{i}\r\n");
    }
    m += "Content-Type: text/plain\r\n\r\nhi\r\n";
    for i in (0..1000).rev() {
        m += &format!("--b{i}--\r\n");
    }
    let v = judged_within_deadline(&content(""), m.as_bytes());
    assert_eq!(v.action, Action::Reject(Reply::mime_structure_rejected()));
    assert_eq!(scan(m.as_bytes(), 10, 200), Structure::TooDeep);
}

#[test]
fn messages_nested_a_thousand_deep_are_refused_fast() {
    let m = "Subject: x\r\nContent-Type: message/rfc822\r\n\r\n".repeat(1000) + "Subject: inner\r\n\r\nhi\r\n";
    let v = judged_within_deadline(&content(""), m.as_bytes());
    assert_eq!(v.action, Action::Reject(Reply::mime_structure_rejected()));
}

#[test]
fn a_hundred_thousand_parts_are_refused_fast() {
    let mut m = String::from("Subject: bomb\r\nContent-Type: multipart/mixed; boundary=p\r\n\r\n");
    m += &"--p\r\nContent-Type: text/plain\r\n\r\nx\r\n".repeat(100_000);
    m += "--p--\r\n";
    let v = judged_within_deadline(&content(""), m.as_bytes());
    assert_eq!(v.action, Action::Reject(Reply::mime_structure_rejected()));
    assert_eq!(scan(m.as_bytes(), 10, 200), Structure::TooManyParts);
}

#[test]
fn structure_within_limits_is_measured() {
    let m = "Subject: x\r\nContent-Type: multipart/mixed;\r\n boundary=\"a\"\r\n\r\n--a\r\n\
             Content-Type: multipart/alternative; boundary=b\r\n\r\n--b\r\n\r\nx\r\n--b\r\n\r\ny\r\n--b--\r\n\
             --a\r\nContent-Type: text/plain\r\n\r\nz\r\n--a--\r\n";
    assert_eq!(scan(m.as_bytes(), 10, 200), Structure::Within { depth: 2, parts: 5 });
    assert_eq!(scan(m.as_bytes(), 1, 200), Structure::TooDeep);
    assert_eq!(scan(m.as_bytes(), 10, 4), Structure::TooManyParts);
}

#[test]
fn a_zip_claiming_terabytes_is_refused_without_inflating() {
    let bomb = zip_claiming(1000, u32::MAX - 1);
    assert!(bomb.len() < 100_000);
    let v = judged_within_deadline(
        &content(BLOCKING),
        &with_attachment("bomb.zip", "application/zip", &bomb),
    );
    assert_eq!(v.action, rejected("archive exceeds limits"));
}

#[test]
fn a_zip_of_a_hundred_thousand_entries_is_refused_fast() {
    let bomb = zip_claiming(100_000, 1);
    let v = judged_within_deadline(
        &content(BLOCKING),
        &with_attachment("many.zip", "application/zip", &bomb),
    );
    assert_eq!(v.action, rejected("archive exceeds limits"));
}

#[test]
fn a_directory_longer_than_its_end_record_claims_is_still_counted() {
    let mut directory = Vec::new();
    for i in 0..1001 {
        directory_entry(&mut directory, &format!("f{i}.txt"), 0, 1, 1, 0);
    }
    let lying = finish(b"PK\x03\x04".to_vec(), &directory, 1);
    let v = content(BLOCKING).judge(&with_attachment("x.zip", "application/zip", &lying));
    assert_eq!(v.action, rejected("archive exceeds limits"));
}

#[test]
fn an_exe_attachment_is_refused() {
    let m = with_attachment("Invoice.PDF.exe", "application/octet-stream", b"MZ\x90\0");
    assert_eq!(
        content(BLOCKING).judge(&m).action,
        rejected("attachment type not allowed")
    );
}

#[test]
fn a_blocked_media_type_is_refused() {
    let m = with_attachment("setup.bin", "application/x-msdownload", b"MZ\x90\0");
    assert_eq!(content(BLOCKING).judge(&m).action, rejected("content type not allowed"));
}

#[test]
fn an_exe_inside_a_zip_is_refused() {
    let archive = zip(&[("readme.txt", b"hello"), ("docs/setup.exe", b"MZ\x90\0")]);
    let m = with_attachment("docs.zip", "application/zip", &archive);
    assert_eq!(
        content(BLOCKING).judge(&m).action,
        rejected("attachment type not allowed")
    );
}

#[test]
fn an_exe_inside_a_zip_inside_a_zip_is_refused_up_to_the_depth() {
    let inner = zip(&[("run.js", b"alert(1)")]);
    let outer = zip(&[("inner.zip", &inner)]);
    let m = with_attachment("outer.zip", "application/zip", &outer);
    assert_eq!(
        content(BLOCKING).judge(&m).action,
        rejected("attachment type not allowed")
    );
    let shallow = content(&format!("{BLOCKING}\nmax_zip_depth = 1"));
    assert_eq!(shallow.judge(&m), Verdict::accept());
}

#[test]
fn allowed_messages_pass() {
    let c = content(&format!("{BLOCKING}\n{RULES}"));
    assert_eq!(c.judge(&plain("lunch?", "Shall we meet at noon?")), Verdict::accept());
    let pdf = with_attachment("report.pdf", "application/pdf", b"%PDF-1.4 ...");
    assert_eq!(c.judge(&pdf), Verdict::accept());
    let archive = zip(&[("report.pdf", b"%PDF-1.4"), ("data/figures.csv", b"1,2,3")]);
    assert_eq!(
        c.judge(&with_attachment("report.zip", "application/zip", &archive)),
        Verdict::accept()
    );
    assert_eq!(
        c.judge(&with_attachment("notes.txt", "text/plain", b"exe files are bad")),
        Verdict::accept()
    );
}

const RULES: &str = r#"
header_rules = [{ header = "Subject", regex = "(?i)viagra", action = "reject" }]
body_rules = [{ regex = "(?i)wire transfer urgently", action = "quarantine" }]
"#;

#[test]
fn header_rules_match_the_decoded_field() {
    let c = content(RULES);
    assert_eq!(c.judge(&plain("cheap VIAGRA", "hi")).action, rejected("header rule"));
    // "Viagra deals" as an RFC 2047 encoded word.
    let encoded = plain("=?UTF-8?B?VmlhZ3JhIGRlYWxz?=", "hi");
    assert_eq!(c.judge(&encoded).action, rejected("header rule"));
    assert_eq!(
        c.judge(&plain("hello", "viagra in the body is not a header")),
        Verdict::accept()
    );
}

#[test]
fn body_rules_match_decoded_text_parts() {
    let c = content(RULES);
    let v = c.judge(&plain("hi", "Please make the Wire Transfer urgently."));
    assert_eq!(v.action, Action::Quarantine("content: body_rules[0]".into()));
    let b64 = base64::engine::general_purpose::STANDARD.encode("Do the wire transfer urgently!");
    let encoded = format!(
        "Subject: hi\r\nMIME-Version: 1.0\r\nContent-Type: text/html\r\nContent-Transfer-Encoding: base64\r\n\r\n{b64}\r\n"
    );
    assert!(matches!(c.judge(encoded.as_bytes()).action, Action::Quarantine(_)));
}

#[test]
fn the_most_severe_action_wins_and_every_tag_is_added() {
    let c = content(
        r#"
        header_rules = [{ header = "Subject", regex = "offer", action = "tag", tag = "marketing" }]
        body_rules = [
            { regex = "unsubscribe", action = "tag" },
            { regex = "bitcoin", action = "quarantine" },
        ]
        tag = "suspect"
        "#,
    );
    let tags = [
        Modification::Tag("marketing".into()),
        Modification::Tag("suspect".into()),
    ];
    let v = c.judge(&plain("special offer", "click unsubscribe"));
    assert_eq!(
        v,
        Verdict {
            action: Action::Accept,
            modifications: tags.to_vec()
        }
    );
    let v = c.judge(&plain("special offer", "pay in bitcoin, or unsubscribe"));
    assert_eq!(v.action, Action::Quarantine("content: body_rules[1]".into()));
    assert_eq!(v.modifications, tags.to_vec());
}

#[test]
fn the_default_action_applies_to_attachments_and_limits() {
    let c = content(&format!("{BLOCKING}\naction = \"discard\""));
    let m = with_attachment("x.vbs", "text/vbscript", b"MsgBox 1");
    assert_eq!(c.judge(&m).action, Action::Discard);
}

#[test]
fn globs() {
    assert!(glob_match("*.exe", "setup.exe"));
    assert!(glob_match("*.tar.*", "a.tar.gz"));
    assert!(glob_match("invoice?.pdf", "invoice1.pdf"));
    assert!(!glob_match("*.exe", "setup.exe.txt"));
    assert!(!glob_match("*.js", "app.json"));
}

/// Regression: `block_attachments = [".exe"]` was taken as a glob matching only a file named
/// `.exe`, so it blocked nothing; only `"*.exe"` worked.
#[test]
fn every_usual_extension_form_blocks_the_extension() {
    for entry in [".exe", "exe", "*.exe", ".EXE", " exe "] {
        let c = content(&format!("block_attachments = [{entry:?}]"));
        for name in ["setup.exe", "Invoice.PDF.EXE"] {
            let m = with_attachment(name, "application/octet-stream", b"MZ\x90\0");
            assert_eq!(
                c.judge(&m).action,
                rejected("attachment type not allowed"),
                "{entry:?} let {name} through"
            );
        }
        let archive = zip(&[("readme.txt", b"hi"), ("bin/run.exe", b"MZ")]);
        let m = with_attachment("docs.zip", "application/zip", &archive);
        assert_eq!(c.judge(&m).action, rejected("attachment type not allowed"), "{entry:?}");
        for name in ["setup.exe.txt", "exe.pdf", "notes.txt"] {
            let m = with_attachment(name, "application/octet-stream", b"data");
            assert_eq!(c.judge(&m).action, Action::Accept, "{entry:?} blocked {name}");
        }
    }
}

#[test]
fn attachment_entries_mean_extensions_or_globs() {
    assert_eq!(name_glob(".exe").unwrap(), "*.exe");
    assert_eq!(name_glob("exe").unwrap(), "*.exe");
    assert_eq!(name_glob("*.EXE").unwrap(), "*.exe");
    assert_eq!(name_glob(".tar.gz").unwrap(), "*.tar.gz");
    assert_eq!(name_glob("invoice?.pdf").unwrap(), "invoice?.pdf");
    assert_eq!(name_glob("report.pdf").unwrap(), "report.pdf");
    assert_eq!(name_glob("*").unwrap(), "*");
}

#[test]
fn attachment_entries_that_never_match_are_refused_with_their_key() {
    let raw = r#"block_attachments = ["*.exe", "", ".", "bin/*.exe", "c:\\temp\\x.exe", "js"]"#;
    let e = from_options(toml::from_str(raw).unwrap()).expect_err("invalid");
    let keys: Vec<&str> = e.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            "block_attachments[1]",
            "block_attachments[2]",
            "block_attachments[3]",
            "block_attachments[4]"
        ],
        "{e:?}"
    );
    assert!(e[2].1.contains("only the file name"), "{e:?}");
}

#[test]
fn bad_options_are_reported_with_their_key() {
    let raw = r#"
        header_rules = [{ header = "Subject", regex = "(", action = "reject" }]
        body_rules = [{ regex = "x", action = "explode" }]
        max_parts = 0
        max_zip_size = "huge"
        action = "bounce"
    "#;
    let e = from_options(toml::from_str(raw).unwrap()).expect_err("invalid");
    let keys: Vec<&str> = e.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            "action",
            "header_rules[0].regex",
            "body_rules[0].action",
            "max_zip_size",
            "max_parts"
        ]
    );
    assert!(parse_size("1GB").is_ok());
}
