use std::time::{Duration, Instant};

use super::fetch::{MAX_BODY, parse_response};
use super::*;

/// The example policy of RFC 8461 3.2.
const RFC8461_EXAMPLE: &str = "version: STSv1\n\
mode: enforce\n\
mx: mail.example.com\n\
mx: *.example.net\n\
mx: backupmx.example.com\n\
max_age: 604800\n";

fn policy(mode: Mode, mx: &[&str], max_age: u64) -> Policy {
    Policy {
        id: "id1".into(),
        mode,
        mx: mx.iter().map(|m| m.to_string()).collect(),
        max_age: Duration::from_secs(max_age),
    }
}

#[test]
fn parses_the_rfc_example() {
    let got = Policy::parse(RFC8461_EXAMPLE, "20160831085700Z").unwrap();
    assert_eq!(
        got,
        Policy {
            id: "20160831085700Z".into(),
            mode: Mode::Enforce,
            mx: vec![
                "mail.example.com".into(),
                "*.example.net".into(),
                "backupmx.example.com".into()
            ],
            max_age: Duration::from_secs(604800),
        }
    );
}

#[test]
fn policy_parsing_table() {
    let ok = |mode, mx: &[&str], max_age| Ok(policy(mode, mx, max_age));
    let cases: &[(&str, &str, Result<Policy, &str>)] = &[
        (
            "CRLF",
            "version: STSv1\r\nmode: enforce\r\nmx: a.test\r\nmax_age: 86400\r\n",
            ok(Mode::Enforce, &["a.test"], 86400),
        ),
        (
            "LF, no final newline",
            "version: STSv1\nmode: testing\nmx: a.test\nmax_age: 1",
            ok(Mode::Testing, &["a.test"], 1),
        ),
        (
            "no space after colon",
            "version:STSv1\nmode:enforce\nmx:a.test\nmax_age:5\n",
            ok(Mode::Enforce, &["a.test"], 5),
        ),
        (
            "trailing blanks and blank lines",
            "version: STSv1 \n\nmode: enforce\t\r\n\r\nmx: a.test\nmax_age: 5\n\n",
            ok(Mode::Enforce, &["a.test"], 5),
        ),
        (
            "fields in any order",
            "max_age: 5\nmx: a.test\nmode: enforce\nversion: STSv1\n",
            ok(Mode::Enforce, &["a.test"], 5),
        ),
        (
            "mx lower-cased, trailing dot dropped",
            "version: STSv1\nmode: enforce\nmx: MX.A.Test.\nmax_age: 5\n",
            ok(Mode::Enforce, &["mx.a.test"], 5),
        ),
        (
            "unknown keys ignored",
            "version: STSv1\nmode: enforce\nfoo_bar: anything at all\nx.y-z: 1\nmx: a.test\nmax_age: 5\n",
            ok(Mode::Enforce, &["a.test"], 5),
        ),
        (
            "mode none needs no mx",
            "version: STSv1\nmode: none\nmax_age: 5\n",
            ok(Mode::None, &[], 5),
        ),
        (
            "max_age 0",
            "version: STSv1\nmode: enforce\nmx: a.test\nmax_age: 0\n",
            ok(Mode::Enforce, &["a.test"], 0),
        ),
        (
            "max_age at the limit",
            "version: STSv1\nmode: enforce\nmx: a.test\nmax_age: 31557600\n",
            ok(Mode::Enforce, &["a.test"], 31557600),
        ),
        (
            "no version",
            "mode: enforce\nmx: a.test\nmax_age: 5\n",
            Err("no version"),
        ),
        (
            "wrong version",
            "version: STSv2\nmode: enforce\nmx: a.test\nmax_age: 5\n",
            Err("unsupported version"),
        ),
        (
            "version is case-sensitive",
            "version: stsv1\nmode: enforce\nmx: a.test\nmax_age: 5\n",
            Err("unsupported version"),
        ),
        (
            "key is case-sensitive",
            "Version: STSv1\nmode: enforce\nmx: a.test\nmax_age: 5\n",
            Err("no version"),
        ),
        ("no mode", "version: STSv1\nmx: a.test\nmax_age: 5\n", Err("no mode")),
        (
            "bad mode",
            "version: STSv1\nmode: Enforce\nmx: a.test\nmax_age: 5\n",
            Err("unknown mode"),
        ),
        ("no mx", "version: STSv1\nmode: enforce\nmax_age: 5\n", Err("no mx")),
        (
            "no mx in testing",
            "version: STSv1\nmode: testing\nmax_age: 5\n",
            Err("no mx"),
        ),
        (
            "no max_age",
            "version: STSv1\nmode: enforce\nmx: a.test\n",
            Err("no max_age"),
        ),
        (
            "max_age above a year",
            "version: STSv1\nmode: enforce\nmx: a.test\nmax_age: 31557601\n",
            Err("above"),
        ),
        (
            "max_age negative",
            "version: STSv1\nmode: enforce\nmx: a.test\nmax_age: -1\n",
            Err("bad max_age"),
        ),
        (
            "max_age not a number",
            "version: STSv1\nmode: enforce\nmx: a.test\nmax_age: 1w\n",
            Err("bad max_age"),
        ),
        (
            "max_age empty",
            "version: STSv1\nmode: enforce\nmx: a.test\nmax_age:\n",
            Err("bad max_age"),
        ),
        (
            "max_age 11 digits",
            "version: STSv1\nmode: enforce\nmx: a.test\nmax_age: 00000000001\n",
            Err("bad max_age"),
        ),
        (
            "duplicate mode",
            "version: STSv1\nmode: enforce\nmode: testing\nmx: a.test\nmax_age: 5\n",
            Err("mode given twice"),
        ),
        (
            "bad mx",
            "version: STSv1\nmode: enforce\nmx: a..test\nmax_age: 5\n",
            Err("bad mx"),
        ),
        (
            "wildcard in the middle",
            "version: STSv1\nmode: enforce\nmx: a.*.test\nmax_age: 5\n",
            Err("bad mx"),
        ),
        (
            "bare wildcard",
            "version: STSv1\nmode: enforce\nmx: *\nmax_age: 5\n",
            Err("bad mx"),
        ),
        (
            "line without colon",
            "version: STSv1\nmode: enforce\nmx a.test\nmax_age: 5\n",
            Err("line 3"),
        ),
        (
            "space before colon",
            "version : STSv1\nmode: enforce\nmx: a.test\nmax_age: 5\n",
            Err("malformed field"),
        ),
        (
            "unknown key without value",
            "version: STSv1\nmode: enforce\nfoo:\nmx: a.test\nmax_age: 5\n",
            Err("malformed field"),
        ),
        ("empty", "", Err("no version")),
        (
            "HTML",
            "<html><body>Not found</body></html>",
            Err("not a \"key: value\""),
        ),
    ];
    for (name, text, want) in cases {
        let got = Policy::parse(text, "id1");
        match (want, &got) {
            (Ok(want), Ok(got)) => assert_eq!(got, want, "{name}"),
            (Err(want), Err(got)) => assert!(got.contains(want), "{name}: error {got:?} lacks {want:?}"),
            _ => panic!("{name}: got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn mx_matching_table() {
    let p = policy(Mode::Enforce, &["mail.example.com", "*.example.net", "*.Mixed.Test"], 5);
    let cases: &[(&str, bool)] = &[
        ("mail.example.com", true),
        ("MAIL.Example.COM", true),
        ("mail.example.com.", true),
        ("example.com", false),
        ("other.example.com", false),
        ("x.mail.example.com", false),
        ("mx1.example.net", true),
        ("MX1.EXAMPLE.NET.", true),
        ("example.net", false),
        (".example.net", false),
        ("a.b.example.net", false),
        ("xexample.net", false),
        ("mx.notexample.net", false),
        ("mx.mixed.test", true),
        ("", false),
        (".", false),
    ];
    for (host, want) in cases {
        assert_eq!(p.matches(host), *want, "{host:?}");
    }
    assert!(!policy(Mode::Enforce, &[], 5).matches("mail.example.com"));
}

#[test]
fn txt_record_table() {
    let cases: &[(&[&str], Option<&str>)] = &[
        (&["v=STSv1; id=20160831085700Z;"], Some("20160831085700Z")),
        (&["v=STSv1;id=abc"], Some("abc")),
        (&["v=STSv1 ; id=abc ;"], Some("abc")),
        (&["v=STSv1; id=abc; ext=value.1"], Some("abc")),
        (&["v=STSv1; ext=1; id=abc"], Some("abc")),
        (&["v=spf1 -all", "v=STSv1; id=abc;", "some other text"], Some("abc")),
        (&["v=STSv1; id=abc;", "v=STSv1; id=def;"], None),
        (&["v=STSv1; id=abc;", "v=STSv1; id=abc;"], None),
        (&["v=STSv1; id=abc;", "v=STSv1"], None),
        (&["v=STSv1;"], None),
        (&["v=STSv1"], None),
        (&["v=STSv1; ext=1"], None),
        (&["v=STSv1; id="], None),
        (&["v=STSv1; id=abc-def"], None),
        (&["v=STSv1; id=123456789012345678901234567890123"], None),
        (
            &["v=STSv1; id=12345678901234567890123456789012"],
            Some("12345678901234567890123456789012"),
        ),
        (&["v=STSv1; id=a; id=b"], None),
        (&["v=STSv1; id=abc; bad"], None),
        (&["v=STSv1; id=abc;; x=1"], None),
        (&["v=STSv10; id=abc"], None),
        (&["v=stsv1; id=abc"], None),
        (&[" v=STSv1; id=abc"], None),
        (&["v=spf1 -all"], None),
        (&[], None),
    ];
    for (records, want) in cases {
        let records: Vec<String> = records.iter().map(|r| r.to_string()).collect();
        assert_eq!(parse_txt(&records).as_deref(), *want, "{records:?}");
    }
}

const HEAD_200: &str = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n";

#[test]
fn http_response_table() {
    let body = "version: STSv1\r\n";
    let chunked =
        format!("{HEAD_200}Transfer-Encoding: chunked\r\n\r\n5\r\nversi\r\nb;ext=1\r\non: STSv1\r\n\r\n0\r\n\r\n");
    let cases: Vec<(&str, String, Result<&str, &str>)> = vec![
        (
            "content-length",
            format!("{HEAD_200}Content-Length: 16\r\n\r\n{body}"),
            Ok(body),
        ),
        (
            "bytes past the length ignored",
            format!("{HEAD_200}Content-Length: 7\r\n\r\n{body}"),
            Ok("version"),
        ),
        ("chunked", chunked.clone(), Ok(body)),
        (
            "chunked with trailer",
            chunked.replace("0\r\n\r\n", "0\r\nX-T: 1\r\n\r\n"),
            Ok(body),
        ),
        (
            "chunked, LF only",
            format!("{HEAD_200}Transfer-Encoding: chunked\n\n5\nversi\na\non: STSv1\n\n0\n\n"),
            Ok("version: STSv1\n"),
        ),
        (
            "LF-only head",
            format!("{}Content-Length: 16\n\n{body}", HEAD_200.replace("\r\n", "\n")),
            Ok(body),
        ),
        (
            "charset parameter",
            format!("HTTP/1.1 200 OK\r\ncontent-type: Text/Plain; charset=utf-8\r\ncontent-length: 16\r\n\r\n{body}"),
            Ok(body),
        ),
        (
            "HTTP/1.0",
            format!("HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 16\r\n\r\n{body}"),
            Ok(body),
        ),
        ("empty body", format!("{HEAD_200}Content-Length: 0\r\n\r\n"), Ok("")),
        (
            "301",
            "HTTP/1.1 301 Moved\r\nLocation: https://elsewhere.test/\r\n\r\n".into(),
            Err("redirects are not followed"),
        ),
        (
            "404",
            "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\n\r\n".into(),
            Err("HTTP status 404"),
        ),
        ("100", "HTTP/1.1 100 Continue\r\n\r\n".into(), Err("HTTP status 100")),
        (
            "HTML",
            format!("HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 16\r\n\r\n{body}"),
            Err("not text/plain"),
        ),
        (
            "no content type",
            format!("HTTP/1.1 200 OK\r\nContent-Length: 16\r\n\r\n{body}"),
            Err("no Content-Type"),
        ),
        (
            "too long",
            format!("{HEAD_200}Content-Length: {}\r\n\r\n", MAX_BODY + 1),
            Err("larger than"),
        ),
        (
            "conflicting lengths",
            format!("{HEAD_200}Content-Length: 16\r\nContent-Length: 17\r\n\r\n"),
            Err("conflicting"),
        ),
        (
            "bad length",
            format!("{HEAD_200}Content-Length: +16\r\n\r\n"),
            Err("bad Content-Length"),
        ),
        (
            "gzip",
            format!("{HEAD_200}Transfer-Encoding: gzip\r\n\r\n"),
            Err("unsupported Transfer-Encoding"),
        ),
        (
            "bad chunk size",
            format!("{HEAD_200}Transfer-Encoding: chunked\r\n\r\nzz\r\n"),
            Err("malformed chunk size"),
        ),
        (
            "signed chunk size",
            format!("{HEAD_200}Transfer-Encoding: chunked\r\n\r\n+5\r\nversi\r\n0\r\n\r\n"),
            Err("malformed chunk size"),
        ),
        (
            "huge chunk size",
            format!("{HEAD_200}Transfer-Encoding: chunked\r\n\r\nffffffff\r\n"),
            Err("larger than"),
        ),
        (
            "chunk overrun",
            format!("{HEAD_200}Transfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n"),
            Err("malformed chunked"),
        ),
        ("not HTTP", "SSH-2.0-OpenSSH\r\n\r\n".into(), Err("bad status line")),
        (
            "status with 4 digits",
            "HTTP/1.1 2000 OK\r\n\r\n".into(),
            Err("bad status line"),
        ),
        (
            "header without colon",
            format!("{HEAD_200}Oops\r\n\r\n"),
            Err("malformed response header"),
        ),
    ];
    for (name, raw, want) in cases {
        let got = parse_response(raw.as_bytes(), false).map(|b| b.map(|b| String::from_utf8(b).unwrap()));
        match (want, &got) {
            (Ok(want), Ok(Some(got))) => assert_eq!(got, want, "{name}"),
            (Err(want), Err(got)) => assert!(got.contains(want), "{name}: error {got:?} lacks {want:?}"),
            _ => panic!("{name}: got {got:?}, want {want:?}"),
        }
    }
}

#[test]
fn http_close_delimited_body_ends_at_eof() {
    let raw = format!("{HEAD_200}\r\nmode: enforce\n");
    assert_eq!(parse_response(raw.as_bytes(), false), Ok(None));
    assert_eq!(
        parse_response(raw.as_bytes(), true),
        Ok(Some(b"mode: enforce\n".to_vec()))
    );
    let big = format!("{HEAD_200}\r\n{}", "x".repeat(MAX_BODY + 1));
    assert!(
        parse_response(big.as_bytes(), false)
            .unwrap_err()
            .contains("larger than")
    );
}

#[test]
fn http_chunked_body_is_capped() {
    let chunk = format!("8000\r\n{}\r\n", "x".repeat(0x8000));
    let raw = format!("{HEAD_200}Transfer-Encoding: chunked\r\n\r\n{chunk}{chunk}1\r\n");
    assert!(
        parse_response(raw.as_bytes(), false)
            .unwrap_err()
            .contains("larger than")
    );
}

/// A complete response cut at every byte is incomplete (more to read), or an error once the
/// connection is closed there; it is never taken for a whole policy.
#[test]
fn http_response_cut_at_every_byte() {
    let framed = [
        format!("{HEAD_200}Content-Length: 16\r\n\r\nversion: STSv1\r\n"),
        format!("{HEAD_200}Transfer-Encoding: chunked\r\n\r\n5\r\nversi\r\nb\r\non: STSv1\r\n\r\n0\r\nX: y\r\n\r\n"),
    ];
    for raw in &framed {
        let raw = raw.as_bytes();
        assert_eq!(parse_response(raw, true).unwrap(), Some(b"version: STSv1\r\n".to_vec()));
        for cut in 0..raw.len() {
            assert_eq!(parse_response(&raw[..cut], false), Ok(None), "cut at {cut}");
            assert!(parse_response(&raw[..cut], true).is_err(), "cut at {cut}, closed");
        }
    }
}

/// Arbitrary bytes never make the parsers panic.
#[test]
fn parsers_survive_noise() {
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let alphabet =
        b"HTTP/1.1 200 \r\n:;=*.-_ v=STSv1 id= chunked Content-Length: Transfer-Encoding: text/plain 0a9fF\x00\xff\xc3";
    for _ in 0..3000 {
        let len = (seed % 200) as usize;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                alphabet[(seed % alphabet.len() as u64) as usize]
            })
            .collect();
        let _ = parse_response(&bytes, false);
        let _ = parse_response(&bytes, true);
        let text = String::from_utf8_lossy(&bytes);
        let _ = Policy::parse(&text, "x");
        let _ = parse_txt(&[text.to_string()]);
        let _ = policy(Mode::Enforce, &["*.a.test", text.as_ref()], 5).matches(&text);
    }
}

fn entry(id: &str, max_age: u64, fetched_at: Instant) -> Entry {
    let mut policy = policy(Mode::Enforce, &["mx.a.test"], max_age);
    policy.id = id.into();
    Entry {
        policy,
        fetched_unix: 1,
        fetched_at,
    }
}

#[test]
fn cache_plans() {
    let t0 = Instant::now();
    let secs = Duration::from_secs;
    let use_id = |id: &str| Plan::Use(entry(id, 100, t0).policy);
    let mut cache = Cache::default();
    assert_eq!(cache.plan("a.test", None, t0), Plan::NoPolicy);
    assert_eq!(cache.plan("a.test", Some("1"), t0), Plan::Fetch("1".into()));

    cache.policies.insert("a.test".into(), entry("1", 100, t0));
    assert_eq!(
        cache.plan("a.test", Some("1"), t0 + secs(10)),
        use_id("1"),
        "fresh, same id"
    );
    assert_eq!(
        cache.plan("a.test", None, t0 + secs(10)),
        use_id("1"),
        "TXT gone: cached policy still applies"
    );
    assert_eq!(
        cache.plan("a.test", Some("2"), t0 + secs(10)),
        Plan::Fetch("2".into()),
        "new id"
    );
    assert_eq!(
        cache.plan("a.test", Some("1"), t0 + secs(50)),
        Plan::Fetch("1".into()),
        "half-life: refresh"
    );

    cache.failures.insert(
        "a.test".into(),
        Failure {
            id: "2".into(),
            at: t0 + secs(10),
            error: "down".into(),
        },
    );
    assert_eq!(
        cache.plan("a.test", Some("2"), t0 + secs(20)),
        use_id("1"),
        "recent failure: cached kept"
    );
    let later = t0 + secs(10) + RETRY_AFTER_FAILURE;
    assert_eq!(
        cache.plan("a.test", Some("2"), later),
        Plan::Fetch("2".into()),
        "failure old enough: retry"
    );
    assert_eq!(
        cache.plan("a.test", Some("3"), t0 + secs(20)),
        Plan::Fetch("3".into()),
        "failure was for another id"
    );

    cache.failures.get_mut("a.test").unwrap().at = t0 + secs(95);
    assert_eq!(
        cache.plan("a.test", Some("2"), t0 + secs(100)),
        Plan::Failed("down".into()),
        "expired"
    );
    assert!(cache.policies.is_empty(), "an expired policy is dropped");
    assert_eq!(cache.plan("a.test", None, t0 + secs(100)), Plan::NoPolicy);
}

#[test]
fn cache_records_outcomes() {
    let t0 = Instant::now();
    let mut cache = Cache::default();
    let p1 = entry("1", 100, t0).policy;
    assert_eq!(
        cache.record("a.test", "1", Err("down".into()), t0, 1),
        Err("down".into())
    );
    assert_eq!(cache.record("a.test", "1", Ok(p1.clone()), t0, 7), Ok(Some(p1.clone())));
    assert!(cache.failures.is_empty(), "a success clears the failure");
    assert_eq!(cache.policies["a.test"].fetched_unix, 7);
    let later = t0 + Duration::from_secs(60);
    assert_eq!(
        cache.record("a.test", "2", Err("down".into()), later, 8),
        Ok(Some(p1)),
        "fresh policy kept"
    );
    let expired = t0 + Duration::from_secs(100);
    assert_eq!(
        cache.record("a.test", "2", Err("down".into()), expired, 9),
        Err("down".into())
    );
}

#[test]
fn policy_domains() {
    assert_eq!(policy_domain("Example.COM.").as_deref(), Some("example.com"));
    assert_eq!(policy_domain("[192.0.2.1]"), None);
    assert_eq!(policy_domain(""), None);
    assert_eq!(policy_domain("bad domain.test"), None);
}

#[test]
fn verifying_config_has_the_roots() {
    let roots = webpki_roots();
    assert!(!roots.is_empty());
    let config = verifying_client_config(roots);
    assert!(config.alpn_protocols.is_empty());
}

/// Delivery tasks are spawned on a multi-threaded runtime: the lookup must be `Send` (no lock
/// held across an await).
#[allow(dead_code)]
fn policy_future_is_send(sts: &MtaSts) {
    fn send<T: Send>(_: T) {}
    send(sts.policy("example.com"));
}
