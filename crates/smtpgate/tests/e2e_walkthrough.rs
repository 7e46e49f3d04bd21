//! The administrator's walkthrough, in one run against the real `smtpgate` binary: a mixed load
//! (a batch of deliveries from Postfix's `smtp-source`, two deferred and two bounced messages from
//! Python's smtplib and swaks) relayed to the scriptable upstream, while the `[[webhook]]`
//! receiver is down; the dashboard in headless Chromium (`tests/dashboard/dashboard.mjs`) shows
//! numbers that match, finds the first deferred message by its recipient, reads its history and
//! retries it; the command line does the same for the second (`smtpgate queue list/retry`,
//! `smtpgate trace`) and `smtpgate stats` counts what was sent; then the receiver comes up and
//! gets every event of the gate's history, signed, each id at least once and none twice.
//! Screenshots go to `CARGO_TARGET_TMPDIR/walkthrough-screenshots`.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lc_rs::hmac;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::Value;
use support::{
    Gate, GateConfig, SOON, Upstream, dashboard_scripts, http_get, message, run_dashboard, run_smtpgate, smtp_source,
    smtplib_send, swaks, wait_until,
};
use tokio::sync::oneshot;

const SECRET: &str = "whsec_walkthrough_0123456789abcdef";
const WEBHOOK: &str = "walk";
/// Messages in the `smtp-source` batch, each delivered at once.
const BATCH: u64 = 20;
/// Deferred once by the upstream (`Upstream::fail_first(1)`), then accepted: one retried
/// through the dashboard, one from the command line.
const DEFERRED_WEB: &str = "tempfail-rcpt+web@defer.test";
const DEFERRED_CLI: &str = "tempfail-rcpt+cli@defer.test";
/// Refused for good (550 5.1.1); each bounce sends its sender a notice, which is delivered.
const BOUNCED: [&str; 2] = ["reject-rcpt+1@bounce.test", "reject-rcpt+2@bounce.test"];
const SENDER: &str = "alice@sender.test";
/// What the upstream answers a deferred recipient.
const TEMPFAIL_TEXT: &str = "Mailbox temporarily unavailable (script)";

/// One POST the receiver got.
#[derive(Debug, Clone)]
struct Post {
    /// The signature and timestamp verified, the headers were right.
    verified: bool,
    /// The events' ids, in the batch's order (empty for a refused POST).
    ids: Vec<String>,
}

/// The webhook receiver: a port bound at once but listening only from [`Receiver::listen`], so
/// that before it the gate's POSTs are refused (the receiver is down), and no one else can take
/// the port meanwhile. Each POST's `Smtpgate-Signature` is checked against HMAC-SHA256 of
/// `"<timestamp>.<body>"` with the secret, its timestamp must be within five minutes; a good one
/// is answered 200 and its ids recorded, a bad one 401.
struct Receiver {
    addr: SocketAddr,
    socket: Option<tokio::net::TcpSocket>,
    posts: Arc<Mutex<Vec<Post>>>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Receiver {
    /// Binds 127.0.0.1:0 without listening.
    fn reserve() -> Receiver {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .expect("bind the receiver's port");
        let addr = socket.local_addr().expect("local_addr");
        Receiver {
            addr,
            socket: Some(socket),
            posts: Arc::default(),
            stop: None,
            thread: None,
        }
    }

    /// The receiver comes up: listens on its port and answers on its own thread and runtime.
    fn listen(&mut self) {
        let socket = self.socket.take().expect("listen once");
        let posts = self.posts.clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let (ready, is_ready) = std::sync::mpsc::channel();
        let thread = thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let listener = socket.listen(64).expect("listen");
                ready.send(()).expect("ready");
                let app = axum::Router::new()
                    .route("/hook", axum::routing::post(receive))
                    .with_state(posts);
                let shutdown = async {
                    let _ = stopped.await;
                };
                let _ = axum::serve(listener, app).with_graceful_shutdown(shutdown).await;
            });
        });
        is_ready.recv_timeout(SOON).expect("the receiver listens");
        self.stop = Some(stop);
        self.thread = Some(thread);
    }

    fn posts(&self) -> Vec<Post> {
        self.posts.lock().unwrap().clone()
    }

    /// How many times each id arrived in a verified POST.
    fn ids(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for post in self.posts() {
            for id in post.ids {
                *out.entry(id).or_insert(0) += 1;
            }
        }
        out
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn receive(State(posts): State<Arc<Mutex<Vec<Post>>>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("");
    let timestamp = header("Smtpgate-Timestamp");
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let fresh = timestamp.parse::<u64>().is_ok_and(|ts| ts.abs_diff(now) < 300);
    let tag = header("Smtpgate-Signature").strip_prefix("v1=").and_then(unhex);
    let key = hmac::Key::new(hmac::HMAC_SHA256, SECRET.as_bytes());
    let signed = tag.is_some_and(|tag| {
        let mut signed = timestamp.as_bytes().to_vec();
        signed.push(b'.');
        signed.extend_from_slice(&body);
        hmac::verify(&key, &signed, &tag).is_ok()
    });
    let verified =
        signed && fresh && header("Smtpgate-Webhook") == WEBHOOK && header("Content-Type") == "application/json";
    let events: Option<Vec<Value>> = serde_json::from_slice(&body).ok();
    let ids = match (verified, events) {
        (true, Some(events)) => events
            .iter()
            .map(|e| e["id"].as_str().unwrap_or("<no id>").to_owned())
            .collect(),
        _ => Vec::new(),
    };
    posts.lock().unwrap().push(Post { verified, ids });
    if verified {
        StatusCode::OK
    } else {
        StatusCode::UNAUTHORIZED
    }
}

/// Lower- or upper-case hex to bytes; None if it is not hex.
fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// `smtpgate ARGS --admin ADDR` (the harness adds the token file); its standard output, after
/// checking that it succeeded.
fn cli(gate: &Gate, args: &[&str]) -> String {
    let admin = gate.admin_addr().to_string();
    let mut all = args.to_vec();
    all.extend_from_slice(&["--admin", &admin]);
    let ran = run_smtpgate(&all, None, None);
    assert!(ran.succeeded(), "smtpgate {all:?}: {}{}", ran.stdout, ran.stderr);
    ran.stdout
}

/// `smtpgate trace Q --json`: the events, one JSON object per line.
fn trace(gate: &Gate, q: &str) -> Vec<Value> {
    cli(gate, &["trace", q, "--json"])
        .lines()
        .map(|l| serde_json::from_str(l).expect("one event per line"))
        .collect()
}

fn has_type(events: &[Value], kind: &str) -> bool {
    events.iter().any(|e| e["type"] == kind)
}

/// `smtpgate queue list --json` with `filters`: the messages listed.
fn queued(gate: &Gate, filters: &[&str]) -> Vec<Value> {
    let mut args = vec!["queue", "list", "--json"];
    args.extend_from_slice(filters);
    let list: Value = serde_json::from_str(&cli(gate, &args)).expect("queue list --json prints JSON");
    list["messages"].as_array().expect("messages").clone()
}

/// `smtpgate stats --json --since 1h`: the totals.
fn totals(gate: &Gate) -> Value {
    let report: Value =
        serde_json::from_str(&cli(gate, &["stats", "--json", "--since", "1h"])).expect("stats --json prints JSON");
    report["totals"].clone()
}

/// A labeled sample `name{webhook="walk"}` of the gate's metrics.
fn webhook_metric(gate: &Gate, name: &str) -> u64 {
    let text = gate.metrics();
    let prefix = format!("{name}{{webhook=\"{WEBHOOK}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in:\n{text}"))
}

/// Every event of the gate's history (the last hour): their ids.
fn history_ids(gate: &Gate) -> BTreeSet<String> {
    let (status, body) = http_get(gate.admin_addr(), "/api/v1/events?since=1h&limit=10000");
    assert_eq!(status, 200, "{body}");
    let events: Vec<Value> = serde_json::from_str(&body).expect("a JSON list of events");
    events
        .iter()
        .map(|e| e["id"].as_str().expect("an event id").to_owned())
        .collect()
}

/// Waits for the upstream to have taken the message to `rcpt`; panics with what it has.
fn wait_delivered(upstream: &Upstream, rcpt: &str) {
    assert!(
        wait_until(SOON, || upstream.delivered_to(rcpt) == 1),
        "{rcpt} never delivered; the upstream has {:?}",
        upstream
            .messages()
            .iter()
            .map(|m| m.rcpt_addresses().join(","))
            .collect::<Vec<_>>()
    );
}

#[test]
fn mixed_load_seen_on_the_dashboard_and_the_command_line_retried_and_every_event_reaches_a_webhook_that_comes_back() {
    let began = Instant::now();
    let scripts = dashboard_scripts("the walkthrough");

    // 1. A gate relaying to the scriptable upstream, retrying only when told to (the next
    //    attempt is an hour away), with a webhook for every event type on a port where nothing
    //    listens yet.
    let upstream = Upstream::fail_first(1);
    let mut receiver = Receiver::reserve();
    let config = GateConfig::relay_to(upstream.addr()).retry(&["1h"]).queue(&format!(
        "\n[[webhook]]\nname = \"{WEBHOOK}\"\nurl = \"http://{}/hook\"\nsecret_file = \"webhook.secret\"\n\
         batch_size = 25",
        receiver.addr
    ));
    let gate = Gate::start_with_files(&config.to_toml(), &[("webhook.secret", SECRET)]);
    let smtp = gate.smtp_addr();

    // 2. The mixed load, from real clients.
    let load_began = Instant::now();
    let target = smtp.to_string();
    let batch = BATCH.to_string();
    let (status, output) = smtp_source(
        &[
            "-s",
            "2",
            "-m",
            &batch,
            "-l",
            "1000",
            "-f",
            "load@sender.test",
            "-t",
            "someone@deliver.test",
            &target,
        ],
        Duration::from_secs(60),
    );
    assert!(status.is_some_and(|s| s.success()), "smtp-source: {status:?}\n{output}");
    let sent = smtplib_send(
        smtp,
        SENDER,
        &[DEFERRED_WEB],
        &message("<web@sender.test>", "deferred, retried on the page", "Hello."),
    );
    assert!(sent.reply("END-OF-DATA").starts_with("250"), "{sent}");
    let sent = smtplib_send(
        smtp,
        SENDER,
        &[BOUNCED[0]],
        &message("<bounce-1@sender.test>", "bounced", "Hello."),
    );
    assert!(sent.reply("END-OF-DATA").starts_with("250"), "{sent}");
    for (to, id, subject) in [
        (
            DEFERRED_CLI,
            "<cli@sender.test>",
            "deferred, retried from the command line",
        ),
        (BOUNCED[1], "<bounce-2@sender.test>", "bounced"),
    ] {
        let server = smtp.to_string();
        let (status, transcript) = swaks(&[
            "--server",
            &server,
            "--from",
            SENDER,
            "--to",
            to,
            "--helo",
            "client.example.test",
            "--header",
            &format!("Message-Id: {id}"),
            "--header",
            &format!("Subject: {subject}"),
        ]);
        assert!(status.success(), "swaks to {to}:\n{transcript}");
    }
    // The batch and the two bounce notices are delivered; each deferred and bounced recipient
    // was tried once.
    let settled = wait_until(SOON, || {
        upstream.messages().len() as u64 == BATCH + 2
            && [DEFERRED_WEB, DEFERRED_CLI, BOUNCED[0], BOUNCED[1]]
                .iter()
                .all(|r| upstream.attempts_for(r) == 1)
    });
    assert!(
        settled,
        "{} messages at the upstream, attempts: web {}, cli {}, bounces {} {}",
        upstream.messages().len(),
        upstream.attempts_for(DEFERRED_WEB),
        upstream.attempts_for(DEFERRED_CLI),
        upstream.attempts_for(BOUNCED[0]),
        upstream.attempts_for(BOUNCED[1])
    );
    assert_eq!(upstream.delivered_to(SENDER), 2, "a notice for each bounce");
    eprintln!("walkthrough: load sent and settled after {:?}", began.elapsed());

    // What was sent: the batch, the deferred and bounced messages, and the notices the bounces
    // sent back (received from the gate's own `bounce` listener, then delivered).
    let received = BATCH + 2 + 2 + 2;
    let delivered = BATCH + 2;
    let (bounced, deferrals) = (2, 2);

    // 3. The dashboard: the numbers, the first deferred message found by its recipient, its
    //    history with the upstream's reply, retried through the page and delivered.
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("walkthrough-screenshots");
    let expect = serde_json::json!({
        "received": received, "delivered": delivered, "bounced": bounced, "deferrals": deferrals,
        "queued": 2, "queuedAfterRetry": 1,
        "deferred": DEFERRED_WEB, "reply": ["450", TEMPFAIL_TEXT], "domain": "defer.test",
        "quarantine": false,
    });
    run_dashboard(&scripts, &gate, &expect, &shots, Duration::from_secs(180));
    wait_delivered(&upstream, DEFERRED_WEB);
    for shot in ["overview.png", "queue.png", "history.png", "retried.png", "domains.png"] {
        assert!(shots.join(shot).is_file(), "screenshot {shot} in {}", shots.display());
    }
    eprintln!("walkthrough: dashboard done after {:?}", began.elapsed());

    // 4. The command line, for the second deferred message.
    let listed = queued(&gate, &["--recipient", DEFERRED_CLI]);
    assert_eq!(listed.len(), 1, "{listed:?}");
    let id = listed[0]["id"].as_str().expect("a queue id").to_owned();
    assert_eq!(listed[0]["state"], "deferred", "{listed:?}");
    let story = trace(&gate, DEFERRED_CLI);
    let deferral = story
        .iter()
        .find(|e| e["type"] == "deferred")
        .unwrap_or_else(|| panic!("no deferral in {story:?}"));
    assert_eq!(deferral["queue_id"], id.as_str(), "{deferral}");
    assert_eq!(deferral["reply"]["code"], 450, "{deferral}");
    assert!(
        deferral["reply"]["text"]
            .as_str()
            .is_some_and(|t| t.contains(TEMPFAIL_TEXT)),
        "the upstream's reply in {deferral}"
    );
    let readable = cli(&gate, &["trace", &id]);
    assert!(
        readable.contains("deferred") && readable.contains("450") && readable.contains(DEFERRED_CLI),
        "{readable}"
    );
    let retried = cli(&gate, &["queue", "retry", &id]);
    assert!(retried.contains("1 message"), "{retried}");
    wait_delivered(&upstream, DEFERRED_CLI);
    let mut story = Vec::new();
    let traced = wait_until(SOON, || {
        story = trace(&gate, &id);
        has_type(&story, "delivered")
    });
    assert!(traced, "no delivered event for {id}: {story:?}");
    assert!(
        has_type(&story, "received") && has_type(&story, "deferred"),
        "{story:?}"
    );
    assert!(queued(&gate, &[]).is_empty(), "the queue is empty");

    // `smtpgate stats`: everything sent, counted once (a deferral stays counted once delivered).
    let want = serde_json::json!({
        "received": received, "delivered": delivered + 2, "bounced": bounced, "deferred": deferrals,
    });
    let mut got = Value::Null;
    let counted = wait_until(SOON, || {
        let t = totals(&gate);
        got = serde_json::json!({
            "received": t["received"], "delivered": t["delivered"],
            "bounced": t["bounced"], "deferred": t["deferred"],
        });
        got == want
    });
    assert!(counted, "stats --json totals: wanted {want}, got {got}");
    eprintln!("walkthrough: command line done after {:?}", began.elapsed());

    // 5. The webhook receiver was down the whole time: every POST was refused, and every event
    //    waits in the outbox.
    let history = history_ids(&gate);
    // Each copy received, then delivered or bounced; each deferred one deferred once too.
    assert_eq!(
        history.len() as u64,
        2 * received + deferrals,
        "the events of the history"
    );
    let backlogged = wait_until(SOON, || {
        webhook_metric(&gate, "smtpgate_webhook_backlog") == history.len() as u64
    });
    assert!(
        backlogged,
        "backlog {} while the history holds {} events",
        webhook_metric(&gate, "smtpgate_webhook_backlog"),
        history.len()
    );
    assert!(
        webhook_metric(&gate, "smtpgate_webhook_failures_total") >= 1,
        "the gate tried"
    );
    assert_eq!(webhook_metric(&gate, "smtpgate_webhook_sent_total"), 0);
    assert!(receiver.posts().is_empty());

    // It comes back. The gate's back-off (1 s doubling, with jitter) may let it wait about twice
    // as long as the receiver was down before the next try.
    let down_for = load_began.elapsed();
    receiver.listen();
    let failures_when_up = webhook_metric(&gate, "smtpgate_webhook_failures_total");
    let within = (down_for * 2 + Duration::from_secs(30)).min(Duration::from_secs(330));
    let came_back = Instant::now();
    let caught_up = wait_until(within, || {
        let ids = receiver.ids();
        history.iter().all(|id| ids.contains_key(id)) && webhook_metric(&gate, "smtpgate_webhook_backlog") == 0
    });
    assert!(
        caught_up,
        "within {within:?} of coming back, the receiver has {} of {} events; backlog {}",
        receiver.ids().len(),
        history.len(),
        webhook_metric(&gate, "smtpgate_webhook_backlog")
    );
    eprintln!(
        "walkthrough: receiver down {down_for:?}, caught up {:?} after coming back",
        came_back.elapsed()
    );

    let posts = receiver.posts();
    assert!(
        posts.iter().all(|p| p.verified),
        "a POST failed verification: {posts:?}"
    );
    let ids = receiver.ids();
    // Nothing happened since: the history is what the receiver got, deduplicated by id.
    assert_eq!(history_ids(&gate), history, "the history changed meanwhile");
    let got: BTreeSet<String> = ids.keys().cloned().collect();
    let missing: Vec<&String> = history.difference(&got).collect();
    let unknown: Vec<&String> = got.difference(&history).collect();
    assert!(missing.is_empty(), "never received: {missing:?}");
    assert!(unknown.is_empty(), "received, not in the history: {unknown:?}");
    assert_eq!(
        webhook_metric(&gate, "smtpgate_webhook_sent_total"),
        history.len() as u64
    );
    // Delivery is at least once: a batch is sent again only when the gate saw no 2xx for it (a
    // timeout, a crash), and then with the same ids first, read again from the same cursor. So a
    // duplicate is explained only by a later POST that begins with an earlier POST's ids, after a
    // failure counted while the receiver was up. This receiver answers every POST at once, so
    // normally there is none.
    let duplicated: Vec<(&String, &usize)> = ids.iter().filter(|(_, n)| **n > 1).collect();
    let retried_batches = webhook_metric(&gate, "smtpgate_webhook_failures_total") - failures_when_up;
    for (id, n) in &duplicated {
        let explained = retried_batches > 0
            && posts.iter().enumerate().any(|(i, first)| {
                first.ids.contains(id) && posts[i + 1..].iter().any(|again| again.ids.starts_with(&first.ids))
            });
        assert!(explained, "{id} arrived {n} times, not as a retried batch: {posts:?}");
    }
    eprintln!(
        "walkthrough: {} events in {} POSTs ({} duplicates, {retried_batches} batches retried after coming back), done after {:?}",
        history.len(),
        posts.len(),
        duplicated.len(),
        began.elapsed()
    );
}
