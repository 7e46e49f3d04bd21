//! Webhooks end to end, through the library API (`smtpgate::webhook::Webhooks`): a receiver in
//! Python (`http.server`) checks every request's timestamp and HMAC with Python's `hmac` and
//! records the ids it was given. Events published while the receiver is down all arrive once it
//! is up, exactly once; events pending when the owner of the outbox stops arrive after it is
//! reopened from the same folder; a batch answered 500 is sent again. 127.0.0.1 only; every wait
//! has a deadline.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use smtpgate::webhook::Webhooks;

const SECRET: &str = "whsec_e2e_0123456789abcdef";

/// The receiver: answers 401 (and writes `BAD`) to a request whose signature, timestamp (five
/// minutes either way), webhook name or content type is wrong; in `fail-first` mode answers the
/// first good request 500 (writing `FAILED`); otherwise writes `id <id>` per event and answers 200.
const RECEIVER: &str = r#"
import hashlib, hmac, http.server, json, sys, time
port, secret, log, mode = int(sys.argv[1]), sys.argv[2].encode(), sys.argv[3], sys.argv[4]
state = {"n": 0}
class Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        ts = self.headers.get("Smtpgate-Timestamp", "")
        got = self.headers.get("Smtpgate-Signature", "")
        want = "v1=" + hmac.new(secret, ts.encode() + b"." + body, hashlib.sha256).hexdigest()
        fresh = ts.isdigit() and abs(time.time() - int(ts)) < 300
        ok = (hmac.compare_digest(want, got) and fresh
              and self.headers.get("Smtpgate-Webhook") == "crm"
              and self.headers.get("Content-Type") == "application/json")
        with open(log, "a") as f:
            if not ok:
                f.write("BAD\n"); code = 401
            else:
                state["n"] += 1
                if mode == "fail-first" and state["n"] == 1:
                    f.write("FAILED\n"); code = 500
                else:
                    for event in json.loads(body):
                        f.write("id " + event["id"] + "\n")
                    code = 200
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", port), Hook)
print("ready", flush=True)
server.serve_forever()
"#;

/// A running receiver; killed when dropped.
struct Receiver {
    child: Child,
    log: PathBuf,
}

impl Receiver {
    fn start(port: u16, log: &Path, mode: &str) -> Receiver {
        let mut child = Command::new("python3")
            .args(["-c", RECEIVER, &port.to_string(), SECRET])
            .arg(log)
            .arg(mode)
            .stdout(Stdio::piped())
            .spawn()
            .expect("run python3");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout");
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the receiver's first line");
        assert_eq!(line.trim(), "ready", "the receiver did not start");
        Receiver {
            child,
            log: log.to_owned(),
        }
    }

    /// Every line the receiver wrote.
    fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// How many times each id arrived.
    fn ids(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for line in self.lines() {
            if let Some(id) = line.strip_prefix("id ") {
                *out.entry(id.to_owned()).or_insert(0) += 1;
            }
        }
        out
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nothing listens on (bound, then closed): connections to it are refused.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("address").port()
}

async fn wait_until(within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn config(dir: &Path, port: u16, extra: &str) -> smtpgate::Config {
    std::fs::write(dir.join("secret"), SECRET).unwrap();
    let text = format!(
        "[spool]\ndir = \"spool\"\n\n[[webhook]]\nname = \"crm\"\nurl = \"http://127.0.0.1:{port}/hook\"\n\
         secret_file = \"secret\"\nevents = [\"delivered\", \"bounced\"]\n{extra}"
    );
    smtpgate::Config::from_toml_str(&text, dir).expect("config")
}

fn event(id: &str, kind: &str) -> serde_json::Value {
    json!({ "id": id, "type": kind, "recipient": "bob@example.test" })
}

fn exactly_once(ids: &BTreeMap<String, usize>, expected: &[String]) {
    let got: Vec<&String> = ids.keys().collect();
    let want: Vec<&String> = expected
        .iter()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(got, want, "ids received");
    for (id, n) in ids {
        assert_eq!(*n, 1, "{id} arrived {n} times");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_down_then_up_and_restart_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let port = closed_port();
    let config = config(dir.path(), port, "batch_size = 7\n");
    let spool = dir.path().join("spool");

    let hooks = Webhooks::open(&spool, &config.webhooks).unwrap();
    hooks.start();
    let stats = hooks.stats("crm").unwrap();
    let first: Vec<String> = (0..30).map(|i| format!("a{i}")).collect();
    for (i, id) in first.iter().enumerate() {
        hooks.publish(&event(id, if i % 2 == 0 { "delivered" } else { "bounced" }));
        hooks.publish(&event(&format!("skip{i}"), "opened"));
    }
    wait_until(Duration::from_secs(10), "the receiver was found down", || {
        stats.failures.get() >= 1
    })
    .await;
    wait_until(Duration::from_secs(10), "30 events wait", || stats.backlog.get() == 30).await;

    let receiver = Receiver::start(port, &dir.path().join("first.log"), "ok");
    wait_until(Duration::from_secs(30), "every event arrived", || {
        receiver.ids().len() == 30
    })
    .await;
    wait_until(Duration::from_secs(10), "the backlog is empty", || {
        stats.backlog.get() == 0
    })
    .await;
    exactly_once(&receiver.ids(), &first);
    assert!(
        !receiver.lines().contains(&"BAD".to_string()),
        "a signature did not verify"
    );
    assert_eq!(stats.sent.get(), 30);
    drop(receiver);

    // The receiver is down again; events pending when the outbox's owner stops.
    let second: Vec<String> = (0..20).map(|i| format!("b{i}")).collect();
    for id in &second {
        hooks.publish(&event(id, "delivered"));
    }
    wait_until(Duration::from_secs(10), "20 events wait", || stats.backlog.get() == 20).await;
    hooks.close().await;
    drop(hooks);

    let reopened = Webhooks::open(&spool, &config.webhooks).unwrap();
    let stats = reopened.stats("crm").unwrap();
    assert_eq!(stats.backlog.get(), 20, "the pending events are found again");
    reopened.start();
    let receiver = Receiver::start(port, &dir.path().join("second.log"), "ok");
    wait_until(Duration::from_secs(30), "every pending event arrived", || {
        receiver.ids().len() == 20
    })
    .await;
    wait_until(Duration::from_secs(10), "the backlog is empty", || {
        stats.backlog.get() == 0
    })
    .await;
    exactly_once(&receiver.ids(), &second);
    assert!(
        !receiver.lines().contains(&"BAD".to_string()),
        "a signature did not verify"
    );
    let metrics = reopened.render();
    assert!(
        metrics.contains("smtpgate_webhook_sent_total{webhook=\"crm\"} 20\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("smtpgate_webhook_backlog{webhook=\"crm\"} 0\n"),
        "{metrics}"
    );
    reopened.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_answered_500_is_sent_again() {
    let dir = tempfile::tempdir().unwrap();
    let port = closed_port();
    let config = config(dir.path(), port, "");
    let receiver = Receiver::start(port, &dir.path().join("log"), "fail-first");
    let hooks = Webhooks::open(&dir.path().join("spool"), &config.webhooks).unwrap();
    let stats = hooks.stats("crm").unwrap();
    let ids: Vec<String> = (0..3).map(|i| format!("c{i}")).collect();
    for id in &ids {
        hooks.publish(&event(id, "delivered"));
    }
    // Written before the sender starts, so the first POST carries all three.
    wait_until(Duration::from_secs(10), "3 events wait", || stats.backlog.get() == 3).await;
    hooks.start();
    wait_until(Duration::from_secs(30), "the batch arrived", || {
        receiver.ids().len() == 3
    })
    .await;
    exactly_once(&receiver.ids(), &ids);
    let lines = receiver.lines();
    assert_eq!(lines.first().map(String::as_str), Some("FAILED"), "{lines:?}");
    assert!(!lines.contains(&"BAD".to_string()));
    assert_eq!(stats.failures.get(), 1);
    wait_until(Duration::from_secs(10), "the backlog is empty", || {
        stats.backlog.get() == 0
    })
    .await;
    assert_eq!(stats.sent.get(), 3);
    hooks.close().await;
}
