//! The shaping file and the limiters, with tokio's clock paused so minutes pass in milliseconds.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::*;
use crate::config::{Config, TlsPolicy};

fn queue() -> QueueConfig {
    Config::builtin().queue.clone()
}

const FILE: &str = r#"
[default]
max_connections = 4
max_message_rate = "100/min"

[domain."example.com"]
max_message_rate = "20000/h"
messages_per_connection = 50
tls = "required"

[mx."*.mail.protection.outlook.com"]
max_connections = 2
max_message_rate = "60/min"
connection_rate = "6/min"
command_timeout = "2m"
"#;

#[test]
fn rates_parse_and_print() {
    let table = [
        ("100/min", 100, 60),
        ("20000/h", 20_000, 3600),
        ("5/s", 5, 1),
        ("1000/d", 1000, 86_400),
        (" 60 / minute ", 60, 60),
    ];
    for (text, count, secs) in table {
        let rate: Rate = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!((rate.count, rate.per), (count, Duration::from_secs(secs)), "{text}");
    }
    assert_eq!("100/min".parse::<Rate>().unwrap().to_string(), "100/min");
    assert_eq!("60/min".parse::<Rate>().unwrap().interval(), Duration::from_secs(1));
    for bad in ["", "100", "0/min", "ten/min", "5/week", "-1/s"] {
        assert!(bad.parse::<Rate>().is_err(), "{bad:?} should not parse");
    }
}

#[test]
fn a_domain_entry_wins_then_the_mx_rollup_then_the_default() {
    let rules = Rules::parse(FILE, &queue()).unwrap();
    let (key, shape) = rules.lookup("Example.COM.", &["mx.example.com"]);
    assert_eq!(key, Key::Domain("example.com".into()));
    assert_eq!(shape.message_rate, Some("20000/h".parse().unwrap()));
    assert_eq!(shape.messages_per_connection, 50);
    assert_eq!(shape.max_connections, 4, "from [default]");
    assert_eq!(shape.tls, TlsPolicy::Required);

    // Two domains hosted by the same provider share one limit.
    let hosts = ["contoso-com.mail.protection.outlook.com"];
    let (a, shape) = rules.lookup("contoso.com", &hosts);
    let (b, _) = rules.lookup("fabrikam.com", &["fabrikam-com.mail.protection.outlook.com"]);
    assert_eq!(a, Key::Mx("*.mail.protection.outlook.com".into()));
    assert_eq!(a, b);
    assert_eq!(shape.max_connections, 2);
    assert_eq!(shape.connection_rate, Some("6/min".parse().unwrap()));
    assert_eq!(shape.command_timeout, Duration::from_secs(120));
    assert_eq!(shape.data_timeout, queue().data_timeout, "from [queue]");

    // Anyone else: the default, each domain on its own.
    let (c, shape) = rules.lookup("other.test", &["mx.other.test"]);
    let (d, _) = rules.lookup("more.test", &["mx.other.test"]);
    assert_eq!(c, Key::Domain("other.test".into()));
    assert_ne!(c, d);
    assert_eq!(shape.message_rate, Some("100/min".parse().unwrap()));
    // `*.` needs a subdomain: the bare parent does not match.
    let (e, _) = rules.lookup("x.test", &["mail.protection.outlook.com"]);
    assert_eq!(e, Key::Domain("x.test".into()));
}

#[test]
fn mistakes_are_reported_with_their_keys() {
    let text = r#"
[default]
max_connections = 0
max_message_rate = "fast"
[domain."a.test"]
tls = "always"
data_timeout = "0s"
[mx."*.b.test"]
colour = "blue"
"#;
    let err = Rules::parse(text, &queue()).unwrap_err().to_string();
    assert!(err.contains("colour"), "{err}");
    let text = text.replace("colour = \"blue\"", "");
    let err = Rules::parse(&text, &queue()).unwrap_err().to_string();
    for key in [
        "default.max_connections",
        "default.max_message_rate",
        "domain.\"a.test\".tls",
        "domain.\"a.test\".data_timeout",
    ] {
        assert!(err.contains(key), "{key} missing from: {err}");
    }
}

/// A 60/min rollup shared by three domains holds over five minutes: no minute-long window ever
/// holds more than 60 messages, and the limit is used, not starved.
#[tokio::test(start_paused = true)]
async fn sixty_per_minute_holds_over_five_minutes_for_a_shared_rollup() {
    let shaper = Arc::new(Shaper::new(None, &queue(), None));
    let key = Limit::new(Some("bulk"), Key::Mx("*.mail.protection.outlook.com".into()));
    let rate: Rate = "60/min".parse().unwrap();
    let start = Instant::now();
    let end = start + Duration::from_secs(300);
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let (shaper, key) = (shaper.clone(), key.clone());
        tasks.push(tokio::spawn(async move {
            let mut sent = Vec::new();
            loop {
                shaper.message_slot(&key, Some(rate)).await;
                let now = Instant::now();
                if now >= end {
                    return sent;
                }
                sent.push(now - start);
            }
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    assert!((299..=301).contains(&all.len()), "{} messages in 5 minutes", all.len());
    for (i, t) in all.iter().enumerate() {
        let in_window = all[i..]
            .iter()
            .take_while(|u| **u < *t + Duration::from_secs(60))
            .count();
        assert!(in_window <= 60, "{in_window} messages in the minute from {t:?}");
    }
}

/// Connections beyond the key's limit wait until one closes.
#[tokio::test(start_paused = true)]
async fn connections_beyond_the_limit_wait() {
    let shaper = Arc::new(Shaper::new(None, &queue(), None));
    let key = Limit::new(None, Key::Domain("a.test".into()));
    let first = shaper.connection(&key, 2).await;
    let _second = shaper.connection(&key, 2).await;
    assert_eq!(shaper.usage()[0].connections, 2);
    let waiting = {
        let (shaper, key) = (shaper.clone(), key.clone());
        tokio::spawn(async move { shaper.connection(&key, 2).await })
    };
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(!waiting.is_finished(), "a third connection must wait");
    drop(first);
    let third = tokio::time::timeout(Duration::from_secs(1), waiting).await;
    assert!(third.is_ok(), "the third connection starts once one closes");
}

/// The file is read again when it changes; the counters carry over a new Shaper (a reload).
#[tokio::test]
async fn the_file_reloads_and_state_survives_a_new_shaper() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shaping.toml");
    std::fs::write(&path, "[domain.\"a.test\"]\nmax_message_rate = \"10/min\"\n").unwrap();
    let shaper = Shaper::new(Some(load(&path)), &queue(), None);
    assert_eq!(
        shaper.shape("a.test", &[]).1.message_rate,
        Some("10/min".parse().unwrap())
    );
    let key = Limit::new(None, Key::Domain("a.test".into()));
    let _held = shaper.connection(&key, 3).await;
    std::fs::write(
        &path,
        "[domain.\"a.test\"]\nmax_message_rate = \"20/min\"\nmax_connections = 3\n",
    )
    .unwrap();
    let changed = crate::reloading::CHECK_INTERVAL * 3;
    let deadline = std::time::Instant::now() + changed + Duration::from_secs(5);
    while shaper.shape("a.test", &[]).1.message_rate != Some("20/min".parse().unwrap()) {
        assert!(std::time::Instant::now() < deadline, "the file was not reloaded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let next = Shaper::new(Some(load(&path)), &queue(), Some(shaper.state()));
    let usage = next.usage();
    assert_eq!(usage.len(), 1, "{usage:?}");
    assert_eq!((usage[0].key.as_str(), usage[0].connections), ("domain:a.test", 1));
}

/// A stream's source addresses are used in proportion to their weights.
#[test]
fn source_addresses_follow_their_weights() {
    let text = r#"
[[stream]]
name = "bulk"
source_addresses = ["127.0.0.2", { address = "127.0.0.3", weight = 3 }]
[[stream]]
name = "plain"
"#;
    let config = Config::from_toml_str(text, std::path::Path::new(".")).unwrap_or_else(|e| panic!("{e}"));
    let shaper = Shaper::new(None, &config.queue, None);
    let picks: Vec<_> = (0..40)
        .map(|_| shaper.source(&config, "bulk").address().unwrap())
        .collect();
    let second = picks.iter().filter(|ip| ip.to_string() == "127.0.0.3").count();
    assert_eq!(second, 30, "{picks:?}");
    assert!(
        picks
            .windows(4)
            .all(|w| w.iter().any(|ip| ip.to_string() == "127.0.0.2")),
        "spread out: {picks:?}"
    );
    assert_eq!(shaper.source(&config, "plain"), Pick::System);
    assert_eq!(shaper.source(&config, "missing"), Pick::System);
}

/// A stream whose second address started its warm-up today (schedule: 3 messages on day one).
fn warming(extra: &str) -> Config {
    let today = &crate::datetime::rfc3339_ms(adaptive::now_ms())[..10];
    let text = format!(
        "[[stream]]\nname = \"bulk\"\nwarmup = [3, 10]\nsource_addresses = [\"127.0.0.2\", \
         {{ address = \"127.0.0.3\", weight = 3, warmup_since = \"{today}\" }}]\n{extra}"
    );
    Config::from_toml_str(&text, std::path::Path::new(".")).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn a_warming_address_sends_its_daily_volume_and_no_more() {
    let config = warming("");
    let shaper = Shaper::new(None, &config.queue, None);
    let mut from_new = 0;
    for _ in 0..20 {
        let ip = shaper.source(&config, "bulk").address().expect("an address");
        assert!(
            shaper.take_source(&config, "bulk", ip),
            "{ip} was picked within its cap"
        );
        if ip.to_string() == "127.0.0.3" {
            from_new += 1;
        }
    }
    assert_eq!(from_new, 3, "day one of the schedule is 3 messages");
    let ip3 = "127.0.0.3".parse().unwrap();
    assert!(!shaper.take_source(&config, "bulk", ip3), "at its cap");
    assert!(shaper.take_source(&config, "bulk", "127.0.0.2".parse().unwrap()));
    let listed = shaper.sources(&config);
    let new = listed.iter().find(|s| s.address == ip3).unwrap();
    assert_eq!((new.warmup_day, new.daily_cap, new.sent_today), (Some(1), Some(3), 3));
    let old = listed.iter().find(|s| s.address != ip3).unwrap();
    assert_eq!((old.warmup_day, old.daily_cap, old.sent_today), (None, None, 18));
}

#[test]
fn a_stream_whose_addresses_are_all_capped_waits_for_the_next_day() {
    let today = &crate::datetime::rfc3339_ms(adaptive::now_ms())[..10];
    let text = format!(
        "[[stream]]\nname = \"new\"\nwarmup = [2]\nsource_addresses = [{{ address = \"127.0.0.4\", warmup_since = \"{today}\" }}]\n\
         [[stream]]\nname = \"later\"\nsource_addresses = [{{ address = \"127.0.0.5\", warmup_since = \"2999-01-01\" }}]\n"
    );
    let config = Config::from_toml_str(&text, std::path::Path::new(".")).unwrap_or_else(|e| panic!("{e}"));
    let shaper = Shaper::new(None, &config.queue, None);
    for _ in 0..2 {
        let ip = shaper.source(&config, "new").address().expect("within the cap");
        assert!(shaper.take_source(&config, "new", ip));
    }
    let next_day = warmup::next_day_ms(warmup::day_of(adaptive::now_ms()));
    assert_eq!(shaper.source(&config, "new"), Pick::Exhausted { until: next_day });
    assert!(
        matches!(shaper.source(&config, "later"), Pick::Exhausted { .. }),
        "an address whose warm-up has not begun sends nothing"
    );
}

#[test]
fn warmup_mistakes_are_reported_with_their_keys() {
    let text = "[[stream]]\nname = \"b\"\nwarmup = [0]\npriority = 1000\n\
                source_addresses = [{ address = \"127.0.0.2\", warmup_since = \"2026-02-30\" }]\n";
    let err = Config::from_toml_str(text, std::path::Path::new("."))
        .unwrap_err()
        .to_string();
    for key in [
        "stream[0].warmup",
        "stream[0].priority",
        "stream[0].source_addresses[0].warmup_since",
    ] {
        assert!(err.contains(key), "{key} missing from: {err}");
    }
}

/// The shaping file as the configuration loads it.
fn load(path: &std::path::Path) -> crate::reloading::Loaded<Rules> {
    crate::reloading::Loaded::read(path.to_path_buf(), |p| Rules::load(p, &queue())).unwrap()
}
