//! DLP: the corpus under `filter/testdata/dlp/` (`match/<rule>-*.eml` must hit `<rule>`,
//! `clean/*.eml` must hit nothing), the detectors, threshold, actions and the log's privacy.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use smtpgate_proto::Reply;

use super::detectors::{card, de_tax_id, iban, uk_nino, us_ssn};
use super::{BuildErrors, Dlp, Hit, from_options};
use crate::filter::{Action, Filter, MessageInfo, Modification, SessionInfo, Verdict};

fn dlp(toml_text: &str) -> Dlp {
    from_options(toml::from_str(toml_text).expect("valid toml")).expect("valid options")
}

fn errors(toml_text: &str) -> BuildErrors {
    from_options(toml::from_str(toml_text).expect("valid toml")).expect_err("invalid options")
}

fn corpus(dir: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("src/filter/testdata/dlp")
        .join(dir);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("corpus dir")
        .map(|e| e.expect("dir entry").path())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "empty corpus {dir:?}");
    files
}

fn message(body: &str) -> Vec<u8> {
    format!("From: a@example.test\r\nTo: b@example.test\r\nSubject: test\r\n\r\n{body}\r\n").into_bytes()
}

const ALL_BUILT_IN: &str = r#"detect = ["card", "iban", "us_ssn", "uk_nino", "de_tax_id"]"#;

#[test]
fn corpus_messages_that_must_match_do() {
    let f = dlp(r#"detect = ["card", "iban", "us_ssn"]"#);
    for (name, bytes) in corpus("match") {
        let rule = name.split('-').next().unwrap();
        let hits = f.scan(&bytes);
        assert!(
            hits.iter().any(|h| h.rule == rule),
            "{name}: expected a {rule} hit, got {hits:?}"
        );
    }
}

#[test]
fn corpus_messages_that_must_not_match_do_not() {
    let f = dlp(ALL_BUILT_IN);
    for (name, bytes) in corpus("clean") {
        assert_eq!(f.scan(&bytes), Vec::<Hit>::new(), "{name}");
    }
}

#[test]
fn card_numbers_need_luhn_and_a_known_issuer() {
    for good in [
        "4111111111111111",
        "4111 1111 1111 1111",
        "5555-5555-5555-4444",
        "3782 822463 10005",
    ] {
        assert!(card(good).is_some(), "{good}");
    }
    // Luhn-invalid; Luhn-valid but no issuer starts with 1 or 9; Visa of the wrong length.
    for bad in [
        "4111111111111112",
        "1234567812345670",
        "9999999999999995",
        "41111111111111113",
    ] {
        assert_eq!(card(bad), None, "{bad}");
    }
}

#[test]
fn ibans_need_the_country_length_and_checksum() {
    assert_eq!(
        iban("GB82 WEST 1234 5698 7654 32").as_deref(),
        Some("GB82WEST12345698765432")
    );
    assert!(iban("de89370400440532013000").is_some());
    assert!(iban("FR1420041010050500013M02606").is_some());
    assert_eq!(iban("GB82WEST12345698765431"), None, "checksum");
    assert_eq!(iban("GB82WEST123456987654"), None, "too short for GB");
    assert_eq!(iban("XX82WEST12345698765432"), None, "no such country");
}

#[test]
fn ssns_exclude_the_invalid_ranges() {
    assert!(us_ssn("536-22-1234").is_some());
    for bad in [
        "000-12-3456",
        "666-12-3456",
        "900-12-3456",
        "123-00-4567",
        "123-45-0000",
        "078-05-1120",
    ] {
        assert_eq!(us_ssn(bad), None, "{bad}");
    }
}

#[test]
fn uk_ninos_and_german_tax_ids() {
    assert!(uk_nino("AB 12 34 56 C").is_some());
    for bad in ["QQ123456C", "AO123456C", "GB123456A", "NK123456B"] {
        assert_eq!(uk_nino(bad), None, "{bad}");
    }
    assert!(de_tax_id("86095742719").is_some());
    assert_eq!(de_tax_id("86095742718"), None, "check digit");
    assert_eq!(de_tax_id("01234567891"), None, "leading zero");
    assert_eq!(de_tax_id("12345678903"), None, "no repeated digit");
}

#[test]
fn words_are_whole_words_in_any_case_and_spacing() {
    let f = dlp(r#"words = ["confidential", "internal only"]"#);
    let hits = f.scan(&message("This is CONFIDENTIAL and Internal\r\n  Only."));
    assert_eq!(hits.len(), 2, "{hits:?}");
    assert_eq!(f.scan(&message("confidentiality agreements; internally only")), vec![]);
}

#[test]
fn custom_patterns_match_and_are_named_by_index() {
    let f = dlp(r#"patterns = ["(?i)project\\s+falcon"]"#);
    let hits = f.scan(&message("status of Project  Falcon"));
    assert_eq!(
        hits,
        vec![Hit {
            rule: "pattern[0]".into(),
            count: 1
        }]
    );
}

#[test]
fn threshold_counts_distinct_values_over_all_rules() {
    let msg = message("card 4111 1111 1111 1111, again 4111111111111111, IBAN GB82WEST12345698765432");
    let at = |n: usize| dlp(&format!("detect = [\"card\", \"iban\"]\nthreshold = {n}")).judge(&msg);
    assert_eq!(at(2).action, Action::Reject(Reply::dlp_rejected()));
    assert_eq!(at(3), Verdict::accept(), "the same card twice is one hit");
}

#[test]
fn the_same_card_in_text_and_html_counts_once() {
    let msg = "Subject: x\r\nContent-Type: multipart/alternative; boundary=b\r\n\r\n--b\r\n\
        Content-Type: text/plain\r\n\r\n4111 1111 1111 1111\r\n--b\r\nContent-Type: text/html\r\n\r\n\
        <p>4111 1111 1111 1111</p>\r\n--b--\r\n";
    let hits = dlp(r#"detect = ["card"]"#).scan(msg.as_bytes());
    assert_eq!(
        hits,
        vec![Hit {
            rule: "card".into(),
            count: 1
        }]
    );
}

#[test]
fn each_action() {
    let msg = message("pay 4111 1111 1111 1111");
    let judge = |extra: &str| dlp(&format!("detect = [\"card\"]\n{extra}")).judge(&msg);
    assert_eq!(judge(""), Verdict::reject(Reply::dlp_rejected()));
    assert_eq!(judge(r#"action = "reject""#), Verdict::reject(Reply::dlp_rejected()));
    assert_eq!(judge(r#"action = "quarantine""#), Verdict::quarantine("dlp: card=1"));
    let tagged = Verdict::accept().with(Modification::Tag("dlp".into()));
    assert_eq!(judge(r#"action = "tag""#), tagged);
    assert_eq!(judge(r#"action = "route""#), tagged);
    let secure = Verdict::accept().with(Modification::Tag("needs-tls".into()));
    assert_eq!(judge("action = \"route\"\ntag = \"needs-tls\""), secure);
    assert_eq!(
        dlp(r#"detect = ["card"]"#).judge(&message("nothing here")),
        Verdict::accept()
    );
}

#[test]
fn the_dlp_reply_is_a_permanent_policy_refusal() {
    let r = Reply::dlp_rejected();
    assert_eq!((r.code, &*r.status), (550, "5.7.0"));
}

#[test]
fn scan_limit_bounds_what_is_read() {
    let filler = "x".repeat(2000);
    let msg = message(&format!("{filler}\r\n4111 1111 1111 1111"));
    assert_eq!(dlp("detect = [\"card\"]\nscan_limit = \"1KB\"").scan(&msg), vec![]);
    assert_eq!(dlp("detect = [\"card\"]\nscan_limit = \"1MB\"").scan(&msg).len(), 1);
}

/// A `MakeWriter` that appends to a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn log_lines_name_the_rule_and_count_but_never_the_data() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::TRACE)
        .finish();
    let f = dlp(&format!(
        "{ALL_BUILT_IN}\nwords = [\"secret\"]\naction = \"quarantine\""
    ));
    let msg =
        message("4111 1111 1111 1111 / GB82WEST12345698765432 / 536-22-1234 / AB 12 34 56 C / 86095742719 / secret");
    // Tracing caches per call site whether anyone listens. Another test thread may register
    // these call sites (as unwanted, with no subscriber) at the very moment this thread installs
    // its own; a first run here finishes their registration, and rebuilding the cache under the
    // capturing subscriber makes it count.
    f.judge(&msg);
    let verdict = tracing::subscriber::with_default(subscriber, || {
        tracing::callsite::rebuild_interest_cache();
        f.judge(&msg)
    });
    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    for rule in ["card", "iban", "us_ssn", "uk_nino", "de_tax_id"] {
        assert!(
            log.contains(&format!("rule={rule} count=1")),
            "{rule} missing in:\n{log}"
        );
    }
    let Action::Quarantine(reason) = verdict.action else {
        panic!("{verdict:?}")
    };
    for text in [log.as_str(), reason.as_str()] {
        for secret in [
            "4111",
            "1111",
            "WEST",
            "12345698765432",
            "536",
            "1234",
            "AB 12",
            "86095742719",
        ] {
            assert!(!text.contains(secret), "{secret:?} leaked into:\n{text}");
        }
    }
}

#[tokio::test]
async fn works_through_the_filter_trait() {
    let f = dlp(r#"detect = ["iban"]"#);
    let session = SessionInfo::default();
    let msg = message("IBAN DE89 3704 0044 0532 0130 00");
    let info = MessageInfo {
        session: &session,
        sender: &crate::envelope::Sender::parse("a@example.test").unwrap(),
        recipients: &[],
        message: &msg,
        tags: &[],
    };
    let v = f.data(&info).await.unwrap();
    assert_eq!(v.action, Action::Reject(Reply::dlp_rejected()));
}

#[test]
fn bad_options_are_reported_with_their_key() {
    let e = errors(
        "detect = [\"card\", \"passport\"]\npatterns = [\"(\"]\nwords = [\" \"]\nthreshold = 0\naction = \"bounce\"\nscan_limit = \"lots\"",
    );
    let keys: Vec<&str> = e.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            "detect[1]",
            "patterns[0]",
            "words[0]",
            "threshold",
            "action",
            "scan_limit"
        ],
        "{e:?}"
    );
    assert_eq!(errors("detect = []")[0].0, "");
    assert_eq!(errors("colour = \"red\"\ndetect = [\"card\"]")[0].0, "colour");
}

#[test]
fn mime_bombs_are_scanned_in_bounded_time() {
    let started = std::time::Instant::now();
    let mut deep = String::from("Subject: bomb\r\n");
    for i in 0..1000 {
        deep += &format!("Content-Type: multipart/mixed; boundary=\"b{i}\"\r\n\r\n--b{i}\r\n");
    }
    deep += "Content-Type: text/plain\r\n\r\n4111 1111 1111 1111\r\n";
    let mut wide = String::from("Subject: bomb\r\nContent-Type: multipart/mixed; boundary=p\r\n\r\n");
    wide += &"--p\r\nContent-Type: text/plain\r\n\r\nx\r\n".repeat(100_000);
    let f = dlp(r#"detect = ["card"]"#);
    f.scan(deep.as_bytes());
    f.scan(wide.as_bytes());
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}
