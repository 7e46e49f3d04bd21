//! Queue tools on a live queue: a held message is not delivered, a release delivers it, and the
//! list's filters take what they say.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::{Filter, Selector, State};
use crate::config::Config;
use crate::envelope::{Envelope, QueueId, Recipient, Sender};
use crate::queue::Queue;

/// A mail server that defers every RCPT while `defer` is set and counts the messages it takes.
struct Sink {
    port: u16,
    defer: Arc<AtomicBool>,
    taken: Arc<AtomicUsize>,
}

impl Sink {
    async fn start() -> Sink {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (defer, taken) = (Arc::new(AtomicBool::new(true)), Arc::new(AtomicUsize::new(0)));
        let (d, t) = (defer.clone(), taken.clone());
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(serve(conn, d.clone(), t.clone()));
            }
        });
        Sink { port, defer, taken }
    }
}

async fn serve(conn: tokio::net::TcpStream, defer: Arc<AtomicBool>, taken: Arc<AtomicUsize>) {
    let (read, mut write) = conn.into_split();
    let mut lines = BufReader::new(read).lines();
    let _ = write.write_all(b"220 sink ESMTP\r\n").await;
    let (mut in_data, mut rcpts) = (false, 0);
    while let Ok(Some(line)) = lines.next_line().await {
        let reply: &[u8] = if in_data {
            if line != "." {
                continue;
            }
            (in_data, rcpts) = (false, 0);
            taken.fetch_add(1, Ordering::SeqCst);
            b"250 2.0.0 taken\r\n"
        } else {
            match line.get(..4).map(|c| c.to_ascii_uppercase()).as_deref() {
                Some("EHLO") | Some("HELO") => b"250 sink\r\n",
                Some("RCPT") if defer.load(Ordering::SeqCst) => b"451 4.3.0 try later\r\n",
                Some("RCPT") => {
                    rcpts += 1;
                    b"250 ok\r\n"
                }
                Some("DATA") if rcpts == 0 => b"554 5.5.1 no valid recipients\r\n",
                Some("DATA") => {
                    in_data = true;
                    b"354 go on\r\n"
                }
                Some("RSET") => {
                    rcpts = 0;
                    b"250 ok\r\n"
                }
                Some("QUIT") => {
                    let _ = write.write_all(b"221 bye\r\n").await;
                    return;
                }
                _ => b"250 ok\r\n",
            }
        };
        if write.write_all(reply).await.is_err() {
            return;
        }
    }
}

fn envelope(id: u64, sender: &str, rcpts: &[&str], age: u64) -> Envelope {
    Envelope {
        id: QueueId(id),
        sender: Sender::parse(sender).unwrap(),
        recipients: rcpts.iter().map(|r| Recipient::parse(r).unwrap()).collect(),
        received_at: crate::datetime::now_unix() - age,
        eight_bit: false,
        smtputf8: false,
        ret: None,
        envid: None,
        pool: Some("sink".into()),
        scan: Vec::new(),
        stream: None,
        route: None,
    }
}

async fn queue(dir: &std::path::Path, port: u16) -> Queue {
    let toml = format!(
        r#"
        [spool]
        dir = "spool"
        [admin]
        enabled = false
        [[pool]]
        name = "sink"
        servers = ["127.0.0.1:{port}"]
        [[route]]
        pool = "sink"
        [queue]
        retry = ["1h"]
    "#
    );
    let config = Config::from_toml_str(&toml, dir).unwrap();
    let (ctx, _) = crate::context::Context::start(Arc::new(config), None).unwrap();
    Queue::new(ctx)
}

async fn until(what: &str, done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_held_message_is_not_delivered_and_its_release_delivers_it() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start().await;
    let q = queue(dir.path(), sink.port).await;
    let body = b"Subject: held\r\n\r\nwaiting\r\n".to_vec();
    q.accept(envelope(1, "s@example.test", &["r@example.org"], 0), body)
        .await
        .unwrap();
    until("the first attempt is deferred", || q.ctx().metrics.deferred.get() == 1).await;
    let shown = q.show(QueueId(1)).expect("listed");
    assert_eq!(shown.state, State::Deferred);
    assert_eq!(shown.attempts, 1);
    let last = shown.last_reply.expect("a last reply");
    assert_eq!((last.result, last.code), ("deferred", Some(451)));
    assert!(last.server.is_some() && shown.next_attempt.is_some());

    let one = Selector::Id(QueueId(1));
    assert_eq!(q.hold(&one).await.unwrap(), 1);
    assert_eq!(q.hold(&one).await.unwrap(), 0, "already held");
    sink.defer.store(false, Ordering::SeqCst);
    assert_eq!(q.retry(&one).unwrap(), 0, "a held message is not retried");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sink.taken.load(Ordering::SeqCst), 0, "held, yet delivered");
    assert_eq!(q.show(QueueId(1)).unwrap().state, State::Held);

    assert_eq!(q.release(&one).await.unwrap(), 1);
    until("the release delivers it", || sink.taken.load(Ordering::SeqCst) == 1).await;
    until("it leaves the queue", || q.show(QueueId(1)).is_none()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sink.taken.load(Ordering::SeqCst), 1, "delivered once");
}

#[tokio::test]
async fn retry_cuts_the_wait_short() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start().await;
    let q = queue(dir.path(), sink.port).await;
    q.accept(
        envelope(1, "s@example.test", &["r@example.org"], 0),
        b"\r\nx\r\n".to_vec(),
    )
    .await
    .unwrap();
    until("deferred", || q.ctx().metrics.deferred.get() == 1).await;
    sink.defer.store(false, Ordering::SeqCst);
    assert_eq!(q.retry(&Selector::Id(QueueId(1))).unwrap(), 1);
    until("retried now, not in an hour", || sink.taken.load(Ordering::SeqCst) == 1).await;
}

#[tokio::test]
async fn list_filters_take_what_they_say() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start().await;
    let q = queue(dir.path(), sink.port).await;
    let messages = [
        (1, "a@example.test", &["x@one.test"][..], 7200),
        (2, "b@example.test", &["y@two.test", "z@one.test"][..], 60),
        (3, "a@example.test", &["y@two.test"][..], 0),
    ];
    for (id, sender, rcpts, age) in messages {
        q.accept(envelope(id, sender, rcpts, age), b"\r\nx\r\n".to_vec())
            .await
            .unwrap();
    }
    until("all deferred", || q.ctx().metrics.deferred.get() == 3).await;
    q.hold(&Selector::Id(QueueId(3))).await.unwrap();
    let ids = |f: Filter| -> Vec<u64> {
        let (total, page) = q.list(&f, 100, 0);
        assert_eq!(total, page.len());
        page.iter().map(|s| u64::from_str_radix(&s.id, 16).unwrap()).collect()
    };
    assert_eq!(ids(Filter::default()), [1, 2, 3], "oldest first");
    let domain = |d: &str| Filter {
        domain: Some(d.into()),
        ..Filter::default()
    };
    assert_eq!(ids(domain("ONE.test")), [1, 2]);
    assert_eq!(ids(domain("two.test")), [2, 3]);
    let sender = Filter {
        sender: Some("a@example.test".into()),
        ..Filter::default()
    };
    assert_eq!(ids(sender), [1, 3]);
    let recipient = Filter {
        recipient: Some("z@one.test".into()),
        ..Filter::default()
    };
    assert_eq!(ids(recipient), [2]);
    let old = Filter {
        older_than: Some(Duration::from_secs(3600)),
        ..Filter::default()
    };
    assert_eq!(ids(old), [1]);
    let held = Filter {
        state: Some(State::Held),
        ..Filter::default()
    };
    assert_eq!(ids(held), [3]);
    let deferred = Filter {
        state: Some(State::Deferred),
        domain: Some("two.test".into()),
        ..Filter::default()
    };
    assert_eq!(ids(deferred), [2]);
    let (total, page) = q.list(&Filter::default(), 1, 1);
    assert_eq!((total, page.len(), page[0].id.as_str()), (3, 1, "0000000000000002"));
    // A bulk action takes what the list shows.
    assert_eq!(q.delete(&Selector::Filter(domain("one.test"))).await.unwrap(), 2);
    assert_eq!(ids(Filter::default()), [3]);
    assert_eq!(sink.taken.load(Ordering::SeqCst), 0, "deleted, not delivered");
}

#[tokio::test]
async fn a_suspended_domain_is_parked_without_an_attempt_and_its_resume_delivers_it() {
    use crate::queue::{Scope, Suspension};
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start().await;
    sink.defer.store(false, Ordering::SeqCst);
    let q = queue(dir.path(), sink.port).await;
    let now = crate::events::now_ms();
    let s = Suspension {
        kind: Scope::Domain,
        value: "held.test".into(),
        since: now,
        until: None,
        reason: None,
        by: "test".into(),
    };
    assert_eq!(q.suspend(s).await.unwrap(), None);
    assert_eq!(q.ctx().metrics.suspensions_active.get(), 1);
    // One copy to both domains, then one to the free domain only, over the same pool.
    let body = b"Subject: s\r\n\r\nx\r\n".to_vec();
    q.accept(
        envelope(1, "s@example.test", &["a@HELD.test", "b@free.test"], 0),
        body.clone(),
    )
    .await
    .unwrap();
    q.accept(envelope(2, "s@example.test", &["c@free.test"], 0), body)
        .await
        .unwrap();
    until("the free recipients are delivered", || {
        sink.taken.load(Ordering::SeqCst) == 2
    })
    .await;
    until("message 2 leaves the queue", || q.show(QueueId(2)).is_none()).await;
    let shown = q.show(QueueId(1)).expect("still queued");
    assert_eq!(shown.state, State::Suspended);
    assert_eq!(shown.pending, 1);
    assert_eq!(shown.recipients[0].state, "pending");
    assert_eq!(shown.recipients[1].state, "delivered");
    let suspended = Filter {
        state: Some(State::Suspended),
        ..Filter::default()
    };
    assert_eq!(q.list(&suspended, 10, 0).0, 1);
    assert_eq!(q.ctx().metrics.deferred.get(), 0, "no attempt deferred");

    assert!(q.resume(Scope::Domain, "other.test", "test").await.unwrap().is_none());
    let resumed = q.resume(Scope::Domain, "held.test", "test").await.unwrap();
    assert_eq!(resumed.map(|s| s.value), Some("held.test".to_string()));
    assert_eq!(q.ctx().metrics.suspensions_active.get(), 0);
    until("the resume delivers the parked recipient", || {
        sink.taken.load(Ordering::SeqCst) == 3
    })
    .await;
    until("message 1 leaves the queue", || q.show(QueueId(1)).is_none()).await;
}

#[tokio::test]
async fn a_suspension_with_a_duration_lapses_by_itself() {
    use crate::queue::{Scope, Suspension};
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start().await;
    sink.defer.store(false, Ordering::SeqCst);
    let q = queue(dir.path(), sink.port).await;
    q.start_suspensions();
    let now = crate::events::now_ms();
    let s = Suspension {
        kind: Scope::Pool,
        value: "sink".into(),
        since: now,
        until: Some(now + 1500),
        reason: Some("maintenance".into()),
        by: "test".into(),
    };
    q.suspend(s).await.unwrap();
    q.accept(envelope(1, "s@example.test", &["a@x.test"], 0), b"\r\nx\r\n".to_vec())
        .await
        .unwrap();
    assert_eq!(q.show(QueueId(1)).map(|s| s.state), Some(State::Suspended));
    until("the lapse delivers it", || sink.taken.load(Ordering::SeqCst) == 1).await;
    assert!(crate::events::now_ms() >= now + 1500, "delivered before the lapse");
    assert!(q.suspensions().is_empty());
    let file = dir.path().join("spool/suspended.json");
    until("the lapse is written", || {
        !std::fs::read_to_string(&file).unwrap().contains("\"sink\"")
    })
    .await;
    until("the gauge follows", || q.ctx().metrics.suspensions_active.get() == 0).await;
}
