use std::time::{Duration, Instant};

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

/// Arbitrary bytes never make the parsers panic.
#[test]
fn parsers_survive_noise() {
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let alphabet =
        b"version: STSv1 mode: max_age: mx: HTTP/1.1 200 \r\n:;=*.-_ v=STSv1 id= chunked text/plain 0a9fF\x00\xff\xc3";
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
