use std::sync::Arc;
use std::time::Duration;

use super::*;

fn event(kind: Kind, at: u64, seq: u64, queue: &str, message_id: Option<&str>, rcpt: &str) -> Event {
    let mut e = Event::new(kind);
    e.id = format!("{at:012x}{seq:012x}00000000");
    e.at = at;
    e.queue_id = Some(queue.into());
    e.message_id = message_id.map(str::to_owned);
    e.sender = Some("Sender@Example.org".into());
    e.recipients = vec![rcpt.into()];
    e
}

fn received(at: u64, seq: u64, queue: &str, mid: Option<&str>, rcpt: &str) -> Event {
    event(Kind::Received { size: 10 }, at, seq, queue, mid, rcpt)
}

fn delivered(at: u64, seq: u64, queue: &str, rcpt: &str) -> Event {
    let reply = Reply {
        code: Some(250),
        status: Some("2.0.0".into()),
        text: "ok".into(),
    };
    let kind = Kind::Delivered {
        server: Some("mx:25".into()),
        tls: None,
        reply,
        latency_ms: 3,
    };
    event(kind, at, seq, queue, None, rcpt)
}

fn store_with(events: Vec<Event>) -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("events.redb"), SPAN).unwrap();
    let batch: Vec<Recorded> = events.iter().map(|e| Recorded::of(e, Vec::new())).collect();
    store.write(&batch, false).unwrap();
    (dir, store)
}

fn query(q: &str, order: Order) -> Query {
    Query {
        q: q.into(),
        since_ms: 0,
        limit: 100,
        order,
    }
}

fn types(events: &[Event]) -> Vec<(&str, Option<&str>)> {
    events.iter().map(|e| (e.kind.name(), e.queue_id.as_deref())).collect()
}

/// How long a copy can stay queued, in these stores (ms times are small: it spans them all).
const SPAN: Duration = Duration::from_secs(3600);

const Q1: &str = "00000000000000A1";
const Q2: &str = "00000000000000B2";

fn two_messages() -> Vec<Event> {
    vec![
        received(1000, 1, Q1, Some("m1@example.org"), "a@example.com"),
        received(1001, 2, Q2, Some("m2@example.org"), "B@Example.com"),
        delivered(2000, 3, Q1, "a@example.com"),
        delivered(2001, 4, Q2, "B@Example.com"),
    ]
}

#[test]
fn the_store_answers_by_queue_id_message_id_and_address() {
    let (_dir, store) = store_with(two_messages());
    let by_queue = store
        .query(&query(&Q1.to_ascii_lowercase(), Order::Chronological))
        .unwrap();
    assert_eq!(types(&by_queue), [("received", Some(Q1)), ("delivered", Some(Q1))]);
    // A Message-ID (with or without its brackets) brings its copies' whole stories.
    let by_mid = store.query(&query("<m2@example.org>", Order::Chronological)).unwrap();
    assert_eq!(types(&by_mid), [("received", Some(Q2)), ("delivered", Some(Q2))]);
    // An address, in any case, newest first; the sender finds both messages.
    let by_rcpt = store.query(&query("b@example.COM", Order::NewestFirst)).unwrap();
    assert_eq!(types(&by_rcpt), [("delivered", Some(Q2)), ("received", Some(Q2))]);
    let by_sender = store.query(&query("sender@example.org", Order::NewestFirst)).unwrap();
    assert_eq!(by_sender.len(), 4);
    assert_eq!(by_sender[0].at, 2001);
    // `since` and `limit` are part of the range scan.
    let recent = Query {
        since_ms: 1500,
        ..query("sender@example.org", Order::Chronological)
    };
    assert_eq!(store.query(&recent).unwrap().len(), 2);
    let one = Query {
        limit: 1,
        ..query("sender@example.org", Order::Chronological)
    };
    assert_eq!(store.query(&one).unwrap()[0].at, 1000);
    assert!(
        store
            .query(&query("nobody@example.net", Order::NewestFirst))
            .unwrap()
            .is_empty()
    );
    let only_delivered = store.recent(0, Some("delivered"), 10).unwrap();
    assert_eq!(
        types(&only_delivered),
        [("delivered", Some(Q2)), ("delivered", Some(Q1))]
    );
}

#[test]
fn retention_prunes_old_events_and_their_index_entries() {
    let (_dir, store) = store_with(two_messages());
    let removed = store.prune(2500, Duration::from_millis(1000), u64::MAX).unwrap();
    assert_eq!(removed, 2, "the two received events are older than a second");
    assert_eq!(store.count().unwrap(), 2);
    assert_eq!(store.index_len("message", "m1@example.org").unwrap(), 0);
    assert_eq!(store.index_len("queue", Q1).unwrap(), 1);
    // Only the opening events were indexed by address, and they are gone with their entries.
    assert_eq!(store.index_len("address", "a@example.com").unwrap(), 0);
    assert_eq!(store.index_len("address", "sender@example.org").unwrap(), 0);
    let left = store.query(&query(Q1, Order::Chronological)).unwrap();
    assert_eq!(types(&left), [("delivered", Some(Q1))]);
    // Over the size cap the oldest go first, even within the retention.
    let removed = store.prune(2500, Duration::from_secs(3600), 1).unwrap();
    assert_eq!(removed, 1);
    assert_eq!(store.query(&query(Q1, Order::Chronological)).unwrap().len(), 0);
    assert_eq!(store.index_len("queue", Q1).unwrap(), 0);
    assert_eq!(store.query(&query(Q2, Order::Chronological)).unwrap().len(), 1);
}

#[test]
fn ids_are_unique_and_ordered() {
    let ids = IdGen::new();
    let made: Vec<(String, u64)> = (0..10_000).map(|_| ids.next()).collect();
    for pair in made.windows(2) {
        assert!(pair[0].0 < pair[1].0, "{} then {}", pair[0].0, pair[1].0);
        assert!(pair[0].1 <= pair[1].1);
    }
    assert!(made.iter().all(|(id, _)| id.len() == 32));
    let other = IdGen::new().next().0;
    assert!(!made.iter().any(|(id, _)| *id == other));
}

#[test]
fn a_full_channel_drops_and_counts_rather_than_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(&dir.path().join("events.redb"), SPAN).unwrap());
    // Nobody reads: the writer is as far behind as it can be.
    let (tx, _rx) = std::sync::mpsc::sync_channel(2);
    let metrics = Arc::new(Metrics::default());
    let events = Events::with(tx, store, Buffers::default(), "node-a".into(), metrics.clone());
    let started = std::time::Instant::now();
    for _ in 0..5 {
        events.emit(Event::new(Kind::Received { size: 1 }));
    }
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(metrics.events_dropped.get(), 3);
    assert!(metrics.render().contains("smtpgate_events_dropped_total 3"));
}

#[test]
fn events_are_written_with_stable_field_names_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let config = crate::config::EventsConfig {
        enabled: true,
        dir: None,
        node: "node-a".into(),
        retention: Duration::from_secs(3600),
        max_size: 1 << 30,
        log_file: Some(dir.path().join("events.jsonl")),
        log_max_size: 400,
        log_keep: 2,
    };
    let events = Events::open(&config, dir.path(), SPAN, Arc::new(Metrics::default()), Vec::new()).unwrap();
    for e in two_messages() {
        events.emit(Event { id: String::new(), ..e });
    }
    events.flush();
    let found = events.query(&query(Q1, Order::Chronological)).unwrap();
    assert_eq!(types(&found), [("received", Some(Q1)), ("delivered", Some(Q1))]);
    assert_eq!(found[0].node, "node-a");
    let json: serde_json::Value = serde_json::to_value(&found[1]).unwrap();
    assert_eq!(json["type"], "delivered");
    assert_eq!(json["reply"]["code"], 250);
    assert_eq!(json["server"], "mx:25");
    assert_eq!(json["queue_id"], Q1);
    // The log file was rotated (400 bytes) and every line of every file is one event.
    let mut lines = 0;
    for name in ["events.jsonl", "events.jsonl.1"] {
        for line in std::fs::read_to_string(dir.path().join(name)).unwrap().lines() {
            let _: Event = serde_json::from_str(line).unwrap();
            lines += 1;
        }
    }
    assert!((2..=4).contains(&lines), "{lines}");
    assert!(!dir.path().join("events.jsonl.3").exists());
}

#[test]
fn an_address_does_not_find_the_longer_addresses_it_begins() {
    let (_dir, store) = store_with(vec![
        received(1000, 1, Q1, Some("m1@example.org"), "a@b.c"),
        received(1001, 2, Q2, Some("m1@example.org.uk"), "a@b.co"),
    ]);
    let short = store.query(&query("a@b.c", Order::Chronological)).unwrap();
    assert_eq!(types(&short), [("received", Some(Q1))]);
    let long = store.query(&query("a@b.co", Order::Chronological)).unwrap();
    assert_eq!(types(&long), [("received", Some(Q2))]);
    let mid = store.query(&query("<m1@example.org>", Order::Chronological)).unwrap();
    assert_eq!(types(&mid), [("received", Some(Q1))]);
    assert!(store.query(&query("a@b.", Order::Chronological)).unwrap().is_empty());
}

#[test]
fn a_store_of_the_former_layout_opens_and_drops_its_old_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.redb");
    {
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let def: redb::TableDefinition<(&str, u64, u64), ()> = redb::TableDefinition::new("by_address");
            let mut t = txn.open_table(def).unwrap();
            t.insert(("a@b.c", 1, 1), ()).unwrap();
        }
        txn.commit().unwrap();
    }
    let store = Store::open(&path, SPAN).unwrap();
    assert_eq!(store.count().unwrap(), 0);
    drop(store);
    let db = redb::Database::open(&path).unwrap();
    let txn = redb::ReadableDatabase::begin_read(&db).unwrap();
    let names: Vec<String> = txn
        .list_tables()
        .unwrap()
        .map(|t| redb::TableHandle::name(&t).to_owned())
        .collect();
    assert!(!names.iter().any(|n| n == "by_address"), "{names:?}");
    assert!(names.iter().any(|n| n == "address_index"), "{names:?}");
}

#[test]
fn only_the_opening_event_is_indexed_by_address_and_its_story_is_found_through_the_queue_id() {
    let (_dir, store) = store_with(two_messages());
    // One entry per story (the received event), none for the deliveries.
    assert_eq!(store.index_len("address", "a@example.com").unwrap(), 1);
    assert_eq!(store.index_len("address", "sender@example.org").unwrap(), 2);
    assert_eq!(store.index_len("message", "m1@example.org").unwrap(), 1);
    assert_eq!(store.index_len("queue", Q1).unwrap(), 2);
    // `since` after the reception still finds the delivery of a story that opened before it.
    let later = Query {
        since_ms: 1500,
        ..query("a@example.com", Order::Chronological)
    };
    assert_eq!(types(&store.query(&later).unwrap()), [("delivered", Some(Q1))]);
    // A refusal has no queue id: its entry is the event itself.
    let mut refused = event(
        Kind::Refused {
            reply: Reply {
                code: Some(550),
                status: None,
                text: "no".into(),
            },
        },
        3000,
        9,
        "",
        None,
        "c@example.com",
    );
    refused.queue_id = None;
    store.write(&[Recorded::of(&refused, Vec::new())], false).unwrap();
    let found = store.query(&query("c@example.com", Order::NewestFirst)).unwrap();
    assert_eq!(types(&found), [("refused", None)]);
}

#[test]
fn an_address_finds_no_story_that_opened_longer_than_a_queue_lifetime_before_since() {
    let span = SPAN.as_millis() as u64;
    let (_dir, store) = store_with(vec![
        received(1000, 1, Q1, None, "a@example.com"),
        // Delivered within the span of its reception, long after it.
        delivered(1000 + span, 2, Q1, "a@example.com"),
    ]);
    let within = Query {
        since_ms: 1000 + span - 1,
        ..query("a@example.com", Order::Chronological)
    };
    assert_eq!(types(&store.query(&within).unwrap()), [("delivered", Some(Q1))]);
    let past = Query {
        since_ms: 1001 + span,
        ..query("a@example.com", Order::Chronological)
    };
    assert!(store.query(&past).unwrap().is_empty());
}

#[test]
fn batches_that_interleave_with_what_is_stored_are_spliced_in_whole() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("events.redb"), SPAN).unwrap();
    let write = |events: Vec<Event>| {
        let batch: Vec<Recorded> = events.iter().map(|e| Recorded::of(e, Vec::new())).collect();
        store.write(&batch, false).unwrap();
    };
    let queue = |n: u64| format!("{n:016X}");
    // Every tenth copy first, then the others around and between them, then their deliveries
    // (each after its copy's reception, so in the middle of the queue index), out of order.
    write(
        (0..200)
            .step_by(10)
            .map(|n| received(1000 + n, n, &queue(n), None, "r@example.com"))
            .collect(),
    );
    write(
        (0..200)
            .rev()
            .filter(|n| n % 10 != 0)
            .map(|n| received(1000 + n, n, &queue(n), None, "r@example.com"))
            .collect(),
    );
    write(
        (0..200)
            .map(|n| delivered(5000 + n, 1000 + n, &queue(n), "r@example.com"))
            .collect(),
    );
    // The same events again: stored once.
    write(
        (0..5)
            .map(|n| delivered(5000 + n, 1000 + n, &queue(n), "r@example.com"))
            .collect(),
    );
    assert_eq!(store.count().unwrap(), 400);
    for n in 0..200 {
        let story = store.query(&query(&queue(n), Order::Chronological)).unwrap();
        assert_eq!(
            types(&story),
            [
                ("received", Some(queue(n).as_str())),
                ("delivered", Some(queue(n).as_str()))
            ],
            "copy {n}"
        );
    }
    let all = Query {
        limit: 10_000,
        ..query("r@example.com", Order::Chronological)
    };
    let found = store.query(&all).unwrap();
    assert_eq!(found.len(), 400);
    assert!(found.windows(2).all(|w| w[0].at <= w[1].at));
}

#[test]
fn a_message_to_many_recipients_is_found_by_each_and_a_repeated_address_is_stored_once() {
    let mut many = received(1000, 1, Q1, None, "r0@example.com");
    many.recipients = (0..100).map(|n| format!("r{n}@example.com")).collect();
    // The same address again, in another case.
    many.recipients.push("R7@Example.COM".into());
    let (_dir, store) = store_with(vec![many]);
    for n in [0, 7, 99] {
        let found = store
            .query(&query(&format!("r{n}@example.com"), Order::NewestFirst))
            .unwrap();
        assert_eq!(types(&found), [("received", Some(Q1))], "r{n}");
    }
    assert_eq!(store.index_len("address", "r7@example.com").unwrap(), 1);
    assert_eq!(store.index_len("address", "sender@example.org").unwrap(), 1);
}
