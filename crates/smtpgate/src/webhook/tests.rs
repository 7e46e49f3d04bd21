//! The outbox across reopening (a crash mid-batch re-sends from the cursor), torn last lines,
//! and max_age drops with their count.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use super::outbox::{Entry, Outbox, encode};
use super::{DropReason, Stats, split_expired};

fn entry(id: u32) -> Entry {
    Entry {
        published: 1_000,
        event: json!({ "id": format!("e{id}"), "type": "delivered" }),
    }
}

/// Waits (bounded) until the writer has fsynced `n` events in all.
fn wait_backlog(stats: &Stats, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while stats.backlog.get() < n {
        assert!(Instant::now() < deadline, "writer did not write {n} events");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn ids(outbox: &Outbox, max: usize) -> (Vec<String>, super::outbox::Batch) {
    let batch = outbox.read_batch(max).unwrap();
    let ids = batch
        .entries
        .iter()
        .map(|e| e.event["id"].as_str().unwrap().to_owned())
        .collect();
    (ids, batch)
}

#[test]
fn outbox_cursor_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let stats = Arc::new(Stats::default());
    let outbox = Outbox::open(dir.path(), stats.clone()).unwrap();
    for i in 0..5 {
        assert!(outbox.append(encode(&entry(i))));
    }
    wait_backlog(&stats, 5);
    let (first, batch) = ids(&outbox, 2);
    assert_eq!(first, ["e0", "e1"]);
    outbox.commit(batch.end, batch.lines()).unwrap();
    assert_eq!(stats.backlog.get(), 3);
    // Read the next batch but "crash" before the receiver's 2xx: no commit.
    let (second, _) = ids(&outbox, 2);
    assert_eq!(second, ["e2", "e3"]);
    outbox.close();
    drop(outbox);

    let stats = Arc::new(Stats::default());
    let reopened = Outbox::open(dir.path(), stats.clone()).unwrap();
    assert_eq!(stats.backlog.get(), 3, "the backlog is counted again at open");
    let (again, batch) = ids(&reopened, 10);
    assert_eq!(again, ["e2", "e3", "e4"], "re-sent from the cursor, same ids");
    reopened.commit(batch.end, batch.lines()).unwrap();
    assert!(reopened.append(encode(&entry(5))));
    wait_backlog(&stats, 1);
    let (last, _) = ids(&reopened, 10);
    assert_eq!(last, ["e5"]);
    reopened.close();
}

#[test]
fn torn_last_line_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = Vec::new();
    for i in 0..2 {
        text.extend(encode(&entry(i)));
        text.push(b'\n');
    }
    let whole = text.len() as u64;
    text.extend_from_slice(br#"{"t":1000,"e":{"id":"e2","ty"#);
    let segment = dir.path().join(format!("{:020}.log", 1));
    std::fs::write(&segment, &text).unwrap();

    let stats = Arc::new(Stats::default());
    let outbox = Outbox::open(dir.path(), stats.clone()).unwrap();
    assert_eq!(
        std::fs::metadata(&segment).unwrap().len(),
        whole,
        "the torn line is cut"
    );
    assert_eq!(stats.backlog.get(), 2);
    assert!(outbox.append(encode(&entry(3))));
    wait_backlog(&stats, 3);
    let (got, batch) = ids(&outbox, 10);
    assert_eq!(got, ["e0", "e1", "e3"], "the next line starts on a line of its own");
    assert_eq!(batch.unreadable, 0);
    outbox.close();
}

#[test]
fn sent_segments_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    // An older segment, fully written, then the current one.
    let mut old = encode(&entry(0));
    old.push(b'\n');
    std::fs::write(dir.path().join(format!("{:020}.log", 1)), &old).unwrap();
    let mut new = encode(&entry(1));
    new.push(b'\n');
    std::fs::write(dir.path().join(format!("{:020}.log", 2)), &new).unwrap();
    let stats = Arc::new(Stats::default());
    let outbox = Outbox::open(dir.path(), stats.clone()).unwrap();
    assert_eq!(stats.backlog.get(), 2);
    let (got, batch) = ids(&outbox, 10);
    assert_eq!(got, ["e0", "e1"]);
    outbox.commit(batch.end, batch.lines()).unwrap();
    assert!(!dir.path().join(format!("{:020}.log", 1)).exists());
    assert!(dir.path().join(format!("{:020}.log", 2)).exists());
    assert_eq!(stats.backlog.get(), 0);
    outbox.close();
}

#[test]
fn max_age_drops_and_counts() {
    let max_age = Duration::from_secs(3600);
    let entries = vec![
        Entry {
            published: 10_000 - 4_000,
            event: json!({"id": "old", "type": "x"}),
        },
        Entry {
            published: 10_000 - 3_600,
            event: json!({"id": "edge", "type": "x"}),
        },
        Entry {
            published: 10_000,
            event: json!({"id": "new", "type": "x"}),
        },
    ];
    let (fresh, expired) = split_expired(entries, 10_000, max_age);
    assert_eq!(expired, 1);
    let ids: Vec<_> = fresh.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["edge", "new"]);
    let stats = Stats::default();
    stats.dropped(DropReason::MaxAge, expired);
    assert_eq!(stats.dropped_count(DropReason::MaxAge), 1);
    assert_eq!(stats.dropped_count(DropReason::Overflow), 0);
}

/// A sender drops what aged out before it could be sent, counts it, and moves past it without
/// a request (there is no receiver).
#[tokio::test]
async fn sender_drops_aged_events_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    let config = crate::config::Config::from_toml_str(
        "[[webhook]]\nname = \"crm\"\nurl = \"http://127.0.0.1:9/hook\"\nmax_age = \"1h\"\n",
        dir.path(),
    )
    .unwrap();
    // Written by a process long ago.
    let mut line = encode(&Entry {
        published: 1,
        event: json!({"id": "a", "type": "delivered"}),
    });
    line.push(b'\n');
    let outbox_dir = dir.path().join("webhooks/crm");
    std::fs::create_dir_all(&outbox_dir).unwrap();
    std::fs::write(outbox_dir.join(format!("{:020}.log", 1)), &line).unwrap();
    let hooks = super::Webhooks::open(dir.path(), &config.webhooks).unwrap();
    let stats = hooks.stats("crm").unwrap();
    assert_eq!(stats.backlog.get(), 1);
    hooks.start();
    let deadline = Instant::now() + Duration::from_secs(10);
    while stats.dropped_count(DropReason::MaxAge) < 1 {
        assert!(Instant::now() < deadline, "the old event was not dropped");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(stats.backlog.get(), 0);
    assert_eq!(stats.sent.get(), 0);
    assert_eq!(stats.failures.get(), 0, "nothing was posted");
    assert!(
        hooks
            .render()
            .contains("smtpgate_webhook_dropped_total{webhook=\"crm\",reason=\"max_age\"} 1\n")
    );
    hooks.close().await;
}

#[test]
fn config_mistakes_have_keys() {
    let dir = tempfile::tempdir().unwrap();
    let text = "[[webhook]]\nname = \"a b\"\nurl = \"ftp://x/\"\nbatch_size = 0\nmax_age = \"0s\"\n\n\
                [[webhook]]\nname = \"far\"\nurl = \"https://hooks.example.com/in\"\n\n\
                [[webhook]]\nname = \"ok\"\nurl = \"http://127.0.0.1:8080/hook\"\nevents = [\"delivered\"]\nsurprise = 1\n";
    let error = crate::config::Config::from_toml_str(text, dir.path()).unwrap_err();
    let keys: Vec<&str> = error.errors.iter().map(|i| i.key.as_str()).collect();
    for key in [
        "webhook[0].name",
        "webhook[0].url",
        "webhook[0].batch_size",
        "webhook[0].max_age",
        "webhook[1].secret_file",
        "webhook[2].surprise",
    ] {
        assert!(keys.contains(&key), "{key} missing in {keys:?}");
    }
    let ok = crate::config::Config::from_toml_str(
        "[[webhook]]\nname = \"ok\"\nurl = \"http://127.0.0.1:8080/hook\"\nevents = [\"delivered\"]\n",
        dir.path(),
    )
    .unwrap();
    let hook = &ok.webhooks[0];
    assert!(hook.wants("delivered") && !hook.wants("bounced"));
    assert_eq!(
        (hook.batch_size, hook.max_age, hook.timeout),
        (100, Duration::from_secs(86_400), Duration::from_secs(10))
    );
}

/// A reload keeps an unchanged webhook's sender, replaces a changed one's (on the same outbox)
/// and stops a removed one's, whose outbox stays on disk; nothing stops before `start`.
#[tokio::test]
async fn reload_keeps_unchanged_senders() {
    let dir = tempfile::tempdir().unwrap();
    let load = |text: &str| crate::config::Config::from_toml_str(text, dir.path()).unwrap().webhooks;
    let a = "[[webhook]]\nname = \"a\"\nurl = \"http://127.0.0.1:9/a\"\n";
    let b = "[[webhook]]\nname = \"b\"\nurl = \"http://127.0.0.1:9/b\"\n";
    let b2 = "[[webhook]]\nname = \"b\"\nurl = \"http://127.0.0.1:9/other\"\n";
    let first = super::Webhooks::open(dir.path(), &load(&format!("{a}{b}"))).unwrap();
    first.start();
    let second = first.successor(&load(&format!("{a}{b2}"))).unwrap();
    assert!(
        Arc::ptr_eq(&first.hooks[0], &second.hooks[0]),
        "unchanged: the same sender"
    );
    assert!(!Arc::ptr_eq(&first.hooks[1], &second.hooks[1]), "changed: a new sender");
    assert!(
        Arc::ptr_eq(&first.hooks[1].opened, &second.hooks[1].opened),
        "on the same outbox"
    );
    assert!(!*first.hooks[1].stop.borrow(), "nothing stops before start");
    second.start();
    assert!(*first.hooks[1].stop.borrow(), "the changed webhook's old sender stops");
    assert!(!*second.hooks[0].stop.borrow() && !*second.hooks[1].stop.borrow());
    let third = second.successor(&load(a)).unwrap();
    third.start();
    assert!(*second.hooks[1].stop.borrow(), "a removed webhook's sender stops");
    assert!(!*third.hooks[0].stop.borrow());
    assert!(dir.path().join("webhooks/b").is_dir(), "its outbox stays");
    third.close().await;
}
