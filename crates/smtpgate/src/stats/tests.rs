use std::collections::HashMap;
use std::time::Duration;

use super::bucket::{DAY, HOUR};
use super::*;
use crate::envelope::Recipient;

/// 2026-01-01T00:00:00Z, in seconds: a fixed "now" for the injected clock.
const T0: u64 = 1_767_225_600;

fn ms(secs: u64) -> u64 {
    secs * 1000
}

fn delivered(to: &str, at: u64, latency: u64) -> Record<'_> {
    Record {
        at_ms: Some(ms(at)),
        latency_ms: Some(latency),
        pool: Some("p1"),
        ..Record::new(Kind::Delivered, Recipients::One(to))
    }
}

/// A record of `kind` for `to` at `at` (seconds).
fn at(kind: Kind, to: &str, at: u64) -> Record<'_> {
    Record {
        at_ms: Some(ms(at)),
        ..Record::new(kind, Recipients::One(to))
    }
}

fn query(by: Option<Dimension>, since: Duration, bucket: Granularity) -> Query {
    Query {
        by,
        since,
        until: Duration::ZERO,
        bucket,
    }
}

fn value<'r>(report: &'r Report, name: &str) -> &'r ValueReport {
    report.values.iter().find(|v| v.value == name).expect(name)
}

#[test]
fn events_count_per_minute_bucket_and_dimension() {
    let stats = Stats::in_memory();
    let now = T0 + 600;
    let to = ["x@one.test".to_string(), "y@one.test".into(), "z@two.test".into()];
    stats.record_at(
        &Record {
            at_ms: Some(ms(T0 + 5)),
            sender: Some("a@Sender.test"),
            listener: Some("inbound"),
            ..Record::new(Kind::Received, Recipients::Addresses(&to))
        },
        ms(now),
    );
    stats.record_at(&delivered("x@ONE.test", T0 + 65, 120), ms(now));
    stats.record_at(
        &Record {
            category: Some("bad_mailbox"),
            ..at(Kind::Bounced, "z@two.test", T0 + 70)
        },
        ms(now),
    );
    stats.record_at(&at(Kind::Deferred, "y@one.test", T0 + 70), ms(now));
    let r = stats.query_at(
        &query(Some(Dimension::Domain), Duration::from_secs(3600), Granularity::Minute),
        ms(now),
    );
    assert_eq!(r.bucket, Granularity::Minute);
    assert_eq!(
        (
            r.totals.received,
            r.totals.delivered,
            r.totals.bounced,
            r.totals.deferred
        ),
        (3, 1, 1, 1)
    );
    assert_eq!(r.series.iter().map(|p| p.start).collect::<Vec<_>>(), [T0, T0 + 60]);
    assert_eq!(r.series[0].summary.received, 3);
    let one = value(&r, "one.test");
    assert_eq!(
        (one.summary.received, one.summary.delivered, one.summary.deferred),
        (2, 1, 1)
    );
    let two = value(&r, "two.test");
    assert_eq!(two.summary.bounced_by, [("bad_mailbox".to_string(), 1)].into());
    let by_sender = stats.query_at(
        &query(
            Some(Dimension::SenderDomain),
            Duration::from_secs(3600),
            Granularity::Auto,
        ),
        ms(now),
    );
    assert_eq!(value(&by_sender, "sender.test").summary.received, 3);
    let by_pool = stats.query_at(
        &query(Some(Dimension::Pool), Duration::from_secs(3600), Granularity::Auto),
        ms(now),
    );
    assert_eq!(value(&by_pool, "p1").summary.delivered, 1);
}

#[test]
fn minutes_roll_up_into_hours_and_hours_into_days() {
    let stats = Stats::in_memory();
    // Three minutes of one hour, recorded while fresh.
    for m in [0, 1, 59] {
        stats.record_at(&delivered("a@d.test", T0 + m * 60, 16), ms(T0 + m * 60));
    }
    {
        let store = stats.store();
        assert_eq!(store.minutes.len(), 3);
        assert!(store.hours.is_empty());
    }
    // 49 hours later the minutes are one hour bucket.
    let later = T0 + 49 * HOUR;
    let r = stats.query_at(
        &query(
            Some(Dimension::Domain),
            Duration::from_secs(50 * HOUR),
            Granularity::Hour,
        ),
        ms(later),
    );
    {
        let store = stats.store();
        assert!(store.minutes.is_empty());
        assert_eq!(store.hours.len(), 1);
        assert_eq!(store.hours[&T0].total.delivered, 3);
    }
    assert_eq!(r.series.len(), 1);
    assert_eq!(r.series[0].start, T0);
    assert_eq!(value(&r, "d.test").summary.delivered, 3);
    // 31 days later the hour is a day, with the same counts and latencies.
    let much_later = T0 + 31 * DAY;
    let r = stats.query_at(
        &query(None, Duration::from_secs(32 * DAY), Granularity::Auto),
        ms(much_later),
    );
    {
        let store = stats.store();
        assert!(store.hours.is_empty());
        assert_eq!(store.days[&T0].total.delivered, 3);
    }
    assert_eq!(r.bucket, Granularity::Day);
    assert_eq!(r.totals.delivered, 3);
    assert_eq!(r.totals.latency_ms.p50, Some(16));
    // An event that old arrives straight in its day; past 400 days everything is gone.
    stats.record_at(&delivered("a@d.test", T0 + 3600, 10), ms(much_later));
    assert_eq!(stats.store().days[&T0].total.delivered, 4);
    let gone = stats.query_at(
        &query(None, Duration::from_secs(400 * DAY), Granularity::Day),
        ms(T0 + 401 * DAY),
    );
    assert_eq!(gone.totals.delivered, 0);
    assert!(stats.store().days.is_empty());
}

#[test]
fn percentiles_come_from_the_histogram_and_merge() {
    let mut h = Histogram::default();
    assert_eq!(h.percentile(0.5), None);
    for latency in 1..=100 {
        h.add(latency, 1);
    }
    let p50 = h.percentile(0.5).unwrap();
    let p90 = h.percentile(0.9).unwrap();
    let p99 = h.percentile(0.99).unwrap();
    // Each within one bucket (a factor 2^(1/4)) above the true value.
    assert!((50..=60).contains(&p50), "p50 {p50}");
    assert!((90..=108).contains(&p90), "p90 {p90}");
    assert!((99..=119).contains(&p99), "p99 {p99}");
    // Exact values at a bucket bound stay exact.
    let mut exact = Histogram::default();
    exact.add(1024, 9);
    exact.add(8, 1);
    assert_eq!(exact.percentile(0.5), Some(1024));
    assert_eq!(exact.percentile(0.1), Some(8));
    // Merging adds counts: the merged p50 lies between the two.
    let mut slow = Histogram::default();
    slow.add(4096, 10);
    slow.merge(&exact);
    assert_eq!(slow.count(), 20);
    assert_eq!(slow.percentile(0.5), Some(1024));
    assert_eq!(slow.percentile(0.99), Some(4096));
}

#[test]
fn the_cap_counts_extra_values_under_other() {
    let stats = Stats::in_memory().with_cap(2);
    for d in ["a", "b", "c", "d", "a"] {
        stats.record_at(&delivered(&format!("x@{d}.test"), T0, 5), ms(T0));
    }
    let r = stats.query_at(
        &query(Some(Dimension::Domain), Duration::from_secs(60), Granularity::Minute),
        ms(T0),
    );
    let names: Vec<(&str, u64)> = r
        .values
        .iter()
        .map(|v| (v.value.as_str(), v.summary.delivered))
        .collect();
    assert_eq!(names, [(OTHER, 2), ("a.test", 2), ("b.test", 1)]);
    assert_eq!(r.totals.delivered, 5);
    // Rolling up keeps the cap: another hour's values join the same bucket under "(other)".
    for d in ["e", "a"] {
        stats.record_at(&delivered(&format!("x@{d}.test"), T0 + 120, 5), ms(T0 + 120));
    }
    stats.query_at(&Query::default(), ms(T0 + 49 * HOUR));
    let store = stats.store();
    let domains = &store.hours[&T0].by[&Dimension::Domain];
    assert_eq!(domains.len(), 3);
    assert_eq!(domains[OTHER].delivered, 3);
    assert_eq!(domains["a.test"].delivered, 3);
}

#[test]
fn save_and_load_keep_the_counts() {
    let dir = tempfile::tempdir().unwrap();
    let now = super::now_ms();
    let stats = Stats::open(dir.path()).unwrap();
    stats.record_at(&delivered("a@d.test", now / 1000, 250), now);
    stats.record_at(
        &Record {
            category: Some("bad_mailbox"),
            ..Record::new(Kind::Bounced, Recipients::One("b@d.test"))
        },
        now,
    );
    stats.record_at(&delivered("a@old.test", now / 1000 - 10 * DAY, 9), now);
    stats.save().unwrap();
    assert!(dir.path().join("stats/stats.json").exists());
    assert!(!dir.path().join("stats/stats.json.tmp").exists());
    let again = Stats::open(dir.path()).unwrap();
    assert_eq!(*again.store(), *stats.store());
    let r = again.query_at(
        &query(Some(Dimension::Domain), Duration::from_secs(20 * DAY), Granularity::Day),
        now,
    );
    assert_eq!(value(&r, "d.test").summary.delivered, 1);
    assert_eq!(value(&r, "d.test").summary.bounced_by["bad_mailbox"], 1);
    assert_eq!(value(&r, "old.test").summary.delivered, 1);
    assert_eq!(r.totals.latency_ms.p50, Some(9));
    // A damaged file is set aside, not fatal.
    std::fs::write(dir.path().join("stats/stats.json"), b"{not json").unwrap();
    let fresh = Stats::open(dir.path()).unwrap();
    assert_eq!(*fresh.store(), bucket::Store::default());
    assert!(dir.path().join("stats/stats.json.bad").exists());
}

#[test]
fn rates_are_computed_and_null_without_a_denominator() {
    let mut c = Counts {
        delivered: 3,
        bounced: 1,
        deferred: 4,
        ..Counts::default()
    };
    let s = Summary::of(&c);
    assert_eq!(s.delivery_rate, Some(0.75));
    assert_eq!(s.bounce_rate, Some(0.25));
    assert_eq!(s.deferral_rate, Some(0.5));
    c = Counts {
        received: 7,
        ..Counts::default()
    };
    let s = Summary::of(&c);
    assert_eq!((s.delivery_rate, s.bounce_rate, s.deferral_rate), (None, None, None));
    assert_eq!(s.latency_ms, Latency::default());
    let only_deferred = Summary::of(&Counts {
        deferred: 2,
        ..Counts::default()
    });
    assert_eq!(
        (only_deferred.delivery_rate, only_deferred.deferral_rate),
        (None, Some(1.0))
    );
    let json = serde_json::to_value(Summary::of(&Counts::default())).unwrap();
    assert_eq!(json["delivery_rate"], serde_json::Value::Null);
}

#[test]
fn query_parameters_are_checked() {
    let params = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    };
    let q = Query::from_params(&params(&[("by", "sender_domain"), ("since", "2h"), ("bucket", "hour")])).unwrap();
    assert_eq!(
        q,
        Query {
            by: Some(Dimension::SenderDomain),
            since: Duration::from_secs(7200),
            until: Duration::ZERO,
            bucket: Granularity::Hour,
        }
    );
    assert_eq!(Query::from_params(&params(&[])).unwrap(), Query::default());
    for bad in [
        &[("by", "color")][..],
        &[("since", "soon")],
        &[("bucket", "week")],
        &[("since", "1000d")],
        &[("since", "1h"), ("until", "2h")],
        &[("limit", "5")],
    ] {
        assert!(Query::from_params(&params(bad)).is_err(), "{bad:?}");
    }
}

#[test]
fn every_kind_counts_under_its_dimensions() {
    let stats = Stats::in_memory();
    let rcpts = [
        Recipient::parse("a@X.test").unwrap(),
        Recipient::parse("b@y.test").unwrap(),
    ];
    let kinds = [
        Kind::Received,
        Kind::Delivered,
        Kind::Deferred,
        Kind::Bounced,
        Kind::Rejected,
        Kind::Quarantined,
        Kind::Complaint,
    ];
    for kind in kinds {
        stats.record_at(
            &Record {
                at_ms: Some(ms(T0)),
                sender: Some(""),
                listener: Some("in"),
                route: Some("partners"),
                stream: Some("bulk"),
                server: Some("MX2.mail.Example.com[192.0.2.7:25]"),
                ..Record::new(kind, Recipients::Envelope(&rcpts))
            },
            ms(T0),
        );
    }
    // A refusal at MAIL names no recipient: it counts one, under no domain.
    stats.record_at(&Record::new(Kind::Rejected, Recipients::None), ms(T0));
    let q = |by| stats.query_at(&query(Some(by), Duration::from_secs(60), Granularity::Minute), ms(T0));
    let r = q(Dimension::Domain);
    let t = &r.totals;
    assert_eq!(
        (
            t.received,
            t.delivered,
            t.deferred,
            t.bounced,
            t.rejected,
            t.quarantined,
            t.complaints
        ),
        (2, 2, 2, 2, 3, 2, 2)
    );
    assert_eq!(t.bounced_by, [("unknown".to_string(), 2)].into());
    let x = &value(&r, "x.test").summary;
    assert_eq!((x.received, x.rejected, x.quarantined, x.complaints), (1, 1, 1, 1));
    for (by, name) in [
        (Dimension::Mx, "example.com"),
        (Dimension::Route, "partners"),
        (Dimension::Listener, "in"),
        (Dimension::Stream, "bulk"),
        (Dimension::SenderDomain, ""),
    ] {
        let r = q(by);
        assert_eq!(r.values.len(), 1, "{by:?}");
        let v = value(&r, name);
        assert_eq!((v.summary.received, v.summary.complaints), (2, 2), "{by:?}");
    }
    assert!(q(Dimension::Pool).values.is_empty(), "no pool: MX delivery");
}

#[test]
fn mx_rollup_keeps_the_last_two_labels_or_the_address() {
    assert_eq!(mx_rollup("mx1.mail.Example.COM[192.0.2.1:25]"), "example.com");
    assert_eq!(mx_rollup("example.com."), "example.com");
    assert_eq!(mx_rollup("localhost[127.0.0.1:2525]"), "localhost");
    assert_eq!(mx_rollup("127.0.0.1[127.0.0.1:2525]"), "127.0.0.1");
    assert_eq!(mx_rollup("[[2001:db8::1]:25]"), "2001:db8::1");
    assert_eq!(mx_rollup("[192.0.2.9:25]"), "192.0.2.9");
    assert_eq!(domain_of("Someone@Example.test"), "example.test");
    assert_eq!(domain_of(""), "");
    assert!(matches!(domain_of("a@b.test"), std::borrow::Cow::Borrowed(_)));
}

#[test]
fn stores_of_two_nodes_merge_tier_by_tier() {
    let (a, b) = (Stats::in_memory(), Stats::in_memory());
    a.record_at(&delivered("x@d.test", T0, 10), ms(T0));
    b.record_at(&delivered("y@d.test", T0, 1000), ms(T0));
    b.record_at(&at(Kind::Complaint, "y@e.test", T0 + 60), ms(T0 + 60));
    let mut sum = a.store().clone();
    sum.merge(&b.store(), DEFAULT_CAP);
    let r = query::run(
        &sum,
        &query(Some(Dimension::Domain), Duration::from_secs(600), Granularity::Minute),
        T0 + 60,
    );
    assert_eq!((r.totals.delivered, r.totals.complaints), (2, 1));
    assert_eq!(value(&r, "d.test").summary.delivered, 2);
    assert_eq!(r.totals.latency_ms.p99, Some(1024));
    assert_eq!(r.series.len(), 2);
}

#[test]
fn the_table_shows_values_and_totals() {
    let stats = Stats::in_memory();
    stats.record_at(&delivered("a@d.test", T0, 128), ms(T0));
    stats.record_at(&at(Kind::Bounced, "b@e.test", T0), ms(T0));
    let r = stats.query_at(
        &query(Some(Dimension::Domain), Duration::from_secs(60), Granularity::Auto),
        ms(T0),
    );
    let text = table(&r);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert!(lines[0].starts_with("value") && lines[0].contains("delivery") && lines[0].ends_with("p90"));
    assert!(
        lines[1].starts_with("d.test") && lines[1].contains("100.0%") && lines[1].contains("128ms"),
        "{text}"
    );
    assert!(lines[3].starts_with("total") && lines[3].contains("50.0%"), "{text}");
}
