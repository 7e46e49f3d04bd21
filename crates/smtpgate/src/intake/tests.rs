//! Dispositions of `take`, without a socket or a session: a context, a listener's configuration,
//! and a sink that records what it was given.

use std::sync::Arc;

use smtpgate_proto::Reply;

use super::*;
use crate::config::Config;
use crate::envelope::Sender;
use crate::filter::BoxFuture;
use crate::queue::Queue;

/// Routes and filters for the tests: `local.test` gets a header of its own, everything else goes
/// to the second route; the listener runs `rules` (content rules on the subject).
const CONFIG: &str = r#"
hostname = "gate.test"
[spool]
dir = "spool"
min_free_space = "1KB"
[admin]
enabled = false
[suppression]
complaints_address = "fbl@local.test"
[[listener]]
name = "test"
address = "127.0.0.1:0"
relay_networks = ["127.0.0.0/8"]
local_domains = ["local.test"]
filters = ["rules"]
[[pool]]
name = "nowhere"
servers = ["127.0.0.1:9"]
[[route]]
when = { recipient_domain = "local.test" }
pool = "nowhere"
add_headers = { "X-Local" = "1" }
[[route]]
pool = "nowhere"
filters = ["hold"]
[queue]
retry = ["1h"]
[[filter]]
name = "rules"
kind = "content"
header_rules = [
    { header = "Subject", regex = "refuse me", action = "reject" },
    { header = "Subject", regex = "hold me", action = "quarantine" },
    { header = "Subject", regex = "drop me", action = "discard" },
]
[[filter]]
name = "hold"
kind = "content"
header_rules = [{ header = "Subject", regex = "hold the copy", action = "quarantine" }]
"#;

struct Setup {
    ctx: Arc<Context>,
    queue: Queue,
    _dir: tempfile::TempDir,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::from_toml_str(CONFIG, dir.path()).unwrap();
    let (ctx, _) = Context::start(Arc::new(config), None).unwrap();
    let queue = Queue::new(ctx.clone());
    Setup { ctx, queue, _dir: dir }
}

/// A message from `a@local.test` to `rcpts` with `subject`.
fn draft(ctx: &Context, rcpts: &[&str], subject: &str) -> Draft {
    let message = format!("Received: from client\r\n\tby gate.test;\r\n\tnow\r\nSubject: {subject}\r\n\r\nhello\r\n");
    Draft {
        env: Envelope {
            id: ctx.ids.next(),
            sender: Sender::parse("a@local.test").unwrap(),
            recipients: rcpts.iter().map(|r| Recipient::parse(r).unwrap()).collect(),
            received_at: 0,
            eight_bit: false,
            smtputf8: false,
            ret: None,
            envid: None,
            pool: None,
            scan: Vec::new(),
            stream: None,
            route: None,
        },
        body: Content::memory(message.into_bytes()),
        origin: SessionInfo {
            client: Some("127.0.0.1".parse().unwrap()),
            helo: Some("client".into()),
            user: None,
            listener: "test".into(),
            tls: false,
        },
        peer: "127.0.0.1:40000".parse().unwrap(),
    }
}

/// One copy as a sink got it.
#[derive(Debug)]
struct Got {
    id: QueueId,
    recipients: Vec<String>,
    pool: Option<String>,
    message: String,
}

/// A sink that records the copies it is given; with `fixed`, it routes like a proxy, and answers
/// `answer` when set (as the upstream would).
#[derive(Default)]
struct Recorder {
    fixed: Option<Group>,
    answer: Option<Reply>,
    got: Vec<Got>,
}

impl Sink for Recorder {
    fn fixed_route<'a>(&'a mut self, _msg: &'a Filtered) -> BoxFuture<'a, Result<Option<Group>, Disposition>> {
        Box::pin(async { Ok(self.fixed.clone()) })
    }

    fn put<'a>(
        &'a mut self,
        _ctx: &'a Context,
        _origin: &'a SessionInfo,
        _msg: &'a Filtered,
        copies: Vec<Copy>,
    ) -> BoxFuture<'a, Result<Taken, Reply>> {
        Box::pin(async move {
            let mut ids = Vec::new();
            for copy in copies {
                ids.push(copy.id);
                self.got.push(Got {
                    id: copy.id,
                    recipients: copy.group.recipients.iter().map(|r| r.address.to_string()).collect(),
                    pool: copy.group.pool.clone(),
                    message: String::from_utf8(copy.message.into_memory().await.unwrap()).unwrap(),
                });
            }
            Ok(match self.answer.clone() {
                Some(reply) => Taken::Proxied(reply),
                None => Taken::Spooled(ids),
            })
        })
    }
}

async fn take_with(s: &Setup, d: Draft, sink: &mut Recorder) -> Disposition {
    take(&s.ctx, &s.ctx.config.listeners[0], d, sink).await
}

#[tokio::test]
async fn no_recipients_left_is_dropped() {
    let s = setup();
    let mut sink = Recorder::default();
    // The complaints address is consumed as a report: no recipient is left.
    let d = take_with(&s, draft(&s.ctx, &["fbl@local.test"], "report"), &mut sink).await;
    assert!(matches!(d, Disposition::Dropped(Dropped::NoRecipients)), "{d:?}");
    assert!(sink.got.is_empty());
}

#[tokio::test]
async fn a_filter_refusal_is_refused_with_its_reply() {
    let s = setup();
    let mut sink = Recorder::default();
    let d = take_with(&s, draft(&s.ctx, &["b@local.test"], "please refuse me"), &mut sink).await;
    let Disposition::Refused(reply) = d else {
        panic!("{d:?}")
    };
    assert_eq!(reply.code / 100, 5, "{reply}");
    assert!(sink.got.is_empty());
}

#[tokio::test]
async fn a_quarantine_verdict_is_quarantined() {
    let s = setup();
    let mut sink = Recorder::default();
    let d = take_with(&s, draft(&s.ctx, &["b@local.test"], "hold me"), &mut sink).await;
    let Disposition::Quarantined(entry) = d else {
        panic!("{d:?}")
    };
    let entries = s.ctx.quarantine.list().unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].id, entry);
    assert_eq!(entries[0].filter, "rules");
    assert!(sink.got.is_empty());
}

#[tokio::test]
async fn a_discard_verdict_is_dropped_as_discarded() {
    let s = setup();
    let mut sink = Recorder::default();
    let d = take_with(&s, draft(&s.ctx, &["b@local.test"], "drop me"), &mut sink).await;
    assert!(matches!(d, Disposition::Dropped(Dropped::Discarded)), "{d:?}");
    assert!(sink.got.is_empty());
}

#[tokio::test]
async fn a_normal_message_goes_to_the_sink_as_its_routed_copies() {
    let s = setup();
    let mut sink = Recorder::default();
    let d = draft(&s.ctx, &["b@local.test", "c@other.test"], "hello");
    let id = d.env.id;
    let got = take_with(&s, d, &mut sink).await;
    let Disposition::Accepted(Taken::Spooled(ids)) = got else {
        panic!("{got:?}")
    };
    assert_eq!(sink.got.len(), 2, "one copy per route: {:?}", sink.got);
    assert_eq!(ids, sink.got.iter().map(|g| g.id).collect::<Vec<_>>());
    let (local, other) = (&sink.got[0], &sink.got[1]);
    assert_eq!(local.id, id, "the first copy keeps the message's id");
    assert_ne!(other.id, id);
    assert_eq!(local.recipients, ["b@local.test"]);
    assert_eq!(other.recipients, ["c@other.test"]);
    assert_eq!(local.pool.as_deref(), Some("nowhere"));
    assert!(local.message.contains("X-Local: 1"), "{}", local.message);
    assert!(!other.message.contains("X-Local"), "{}", other.message);
    assert!(local.message.contains("Subject: hello") && other.message.contains("\r\n\r\nhello"));
}

#[tokio::test]
async fn a_route_filter_quarantines_its_copy_only() {
    let s = setup();
    let mut sink = Recorder::default();
    let d = draft(&s.ctx, &["b@local.test", "c@other.test"], "hold the copy");
    let got = take_with(&s, d, &mut sink).await;
    let Disposition::Accepted(Taken::Spooled(ids)) = got else {
        panic!("{got:?}")
    };
    assert_eq!(ids.len(), 1);
    assert_eq!(sink.got[0].recipients, ["b@local.test"]);
    assert_eq!(s.ctx.quarantine.list().unwrap().len(), 1);
}

#[tokio::test]
async fn the_spool_sink_spools_every_copy() {
    let s = setup();
    let mut sink = SpoolSink::new(&s.queue);
    let d = draft(&s.ctx, &["b@local.test", "c@other.test"], "hello");
    let got = take(&s.ctx, &s.ctx.config.listeners[0], d, &mut sink).await;
    let Disposition::Accepted(Taken::Spooled(ids)) = got else {
        panic!("{got:?}")
    };
    assert_eq!(ids.len(), 2);
    // The queue may already have tried the unreachable pool and bounced: only our copies count.
    let spooled: Vec<QueueId> = crate::spool::inspect(s.ctx.spool.dir())
        .unwrap()
        .into_iter()
        .filter(|(env, _)| !env.sender.is_null())
        .map(|(env, _)| env.id)
        .collect();
    assert_eq!(spooled, ids);
    assert!(sink.failure.is_none());
}

/// The group a proxy fixed at RCPT time for `rcpts`.
fn fixed_group(rcpts: &[&str], filters: &[&str]) -> Group {
    Group {
        pool: Some("nowhere".into()),
        recipients: rcpts.iter().map(|r| Recipient::parse(r).unwrap()).collect(),
        add_headers: Vec::new(),
        remove_headers: Vec::new(),
        srs_sender: None,
        filters: filters.iter().map(|f| f.to_string()).collect(),
        stream: None,
        route: None,
    }
}

#[tokio::test]
async fn a_proxy_sink_reply_is_passed_through() {
    let s = setup();
    let upstream = Reply::policy(451, "4.7.1".into(), "upstream says later".into());
    let mut sink = Recorder {
        fixed: Some(fixed_group(&["b@local.test"], &[])),
        answer: Some(upstream.clone()),
        got: Vec::new(),
    };
    let got = take_with(&s, draft(&s.ctx, &["b@local.test"], "hello"), &mut sink).await;
    let Disposition::Accepted(Taken::Proxied(reply)) = got else {
        panic!("{got:?}")
    };
    assert_eq!(reply.to_string(), upstream.to_string());
    assert_eq!(sink.got.len(), 1, "one copy, on the fixed route");
    assert!(!sink.got[0].message.contains("X-Local"), "routing did not run again");
}

#[tokio::test]
async fn a_fixed_route_whose_copy_is_quarantined_is_quarantined() {
    let s = setup();
    let mut sink = Recorder {
        fixed: Some(fixed_group(&["b@local.test"], &["hold"])),
        answer: Some(Reply::ok()),
        got: Vec::new(),
    };
    let got = take_with(&s, draft(&s.ctx, &["b@local.test"], "hold the copy"), &mut sink).await;
    assert!(matches!(got, Disposition::Quarantined(_)), "{got:?}");
    assert!(sink.got.is_empty());
}

#[tokio::test]
async fn too_many_hops_is_refused() {
    let s = setup();
    let mut sink = Recorder::default();
    let mut d = draft(&s.ctx, &["b@local.test"], "loop");
    let hops = "Received: from x by y; now\r\n".repeat(s.ctx.config.listeners[0].max_hops + 1);
    d.body = Content::memory(format!("{hops}Subject: loop\r\n\r\nhi\r\n").into_bytes());
    let got = take_with(&s, d, &mut sink).await;
    assert!(matches!(got, Disposition::Refused(_)), "{got:?}");
    assert!(sink.got.is_empty());
}

#[tokio::test]
async fn a_submitted_message_is_recorded_as_sent_under_the_message_id_intake_added() {
    let s = setup();
    let mut d = draft(&s.ctx, &["b@local.test"], "hello");
    d.origin.user = Some("a@local.test".into());
    let id = d.env.id;
    let mut sink = SpoolSink::new(&s.queue);
    let disposition = take(&s.ctx, &s.ctx.config.listeners[0], d, &mut sink).await;
    assert!(
        matches!(disposition, Disposition::Accepted(Taken::Spooled(ref ids)) if ids == &[id]),
        "{disposition:?}"
    );
    let spooled = crate::spool::inspect(&s.ctx.config.spool.dir).unwrap();
    let (_, message) = spooled
        .iter()
        .find(|(env, _)| env.id == id)
        .expect("the copy is spooled");
    let headers = Headers::parse(message);
    let message_id = headers.message_id().expect("submission adds a Message-ID");
    assert!(message_id.starts_with(&format!("{id}.")), "{message_id}");
    assert_eq!(headers.count("date"), 1);
    // The record of sent mail read the Message-ID from the view intake kept up to date.
    assert_eq!(s.ctx.feedback.sent.queue_id(message_id), Some(id.to_string()));
}
