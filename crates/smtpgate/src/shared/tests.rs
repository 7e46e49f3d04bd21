//! Against a real `redis-server`, started per test on a Unix socket in a temporary directory.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use tokio::sync::mpsc;

use super::*;
use crate::suppress::Reason;

const PREFIX: &str = "test";
/// How long any condition a test waits for may take.
const DEADLINE: Duration = Duration::from_secs(10);

/// A private `redis-server`, killed on drop.
struct RedisServer {
    child: Child,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts one and waits (with a deadline) until its socket accepts connections.
    fn start() -> RedisServer {
        let binary = redis_server_binary();
        let dir = tempfile::tempdir().expect("temporary directory");
        let log = std::fs::File::create(dir.path().join("redis.log")).expect("log file");
        let child = Command::new(&binary)
            .arg("--port")
            .arg("0")
            .arg("--unixsocket")
            .arg(dir.path().join("redis.sock"))
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        let mut server = RedisServer { child, dir };
        server.wait_ready();
        server
    }

    fn wait_ready(&mut self) {
        let socket = self.socket();
        let deadline = Instant::now() + DEADLINE;
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("redis-server exited ({status}) before listening:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "redis-server not listening after {DEADLINE:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("redis.sock")
    }

    fn url(&self) -> String {
        format!("redis+unix://{}", self.socket().display())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    /// A node.
    async fn node(&self) -> Shared {
        Shared::connect(&self.url(), PREFIX).await.expect("connect")
    }

    /// A plain connection, to look behind smtpgate's back.
    async fn raw(&self) -> redis::aio::MultiplexedConnection {
        let client = redis::Client::open(self.url()).expect("client");
        client.get_multiplexed_async_connection().await.expect("raw connection")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `redis-server` from `PATH` or `/usr/bin`; a missing one fails the test (never skips it).
fn redis_server_binary() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join("redis-server"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([PathBuf::from("/usr/bin/redis-server")])
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!("redis-server is not installed: run scripts/test.sh (it installs the Debian package redis-server)")
        })
}

fn entry(address: &str, reason: Reason) -> Entry {
    Entry {
        address: address.to_owned(),
        reason,
        source: "test".to_owned(),
        added_at: 1_767_225_600,
    }
}

/// The next change the follower reported, within the deadline.
async fn next_change(changes: &mut mpsc::UnboundedReceiver<Change>) -> Change {
    tokio::time::timeout(DEADLINE, changes.recv())
        .await
        .expect("a change within the deadline")
        .expect("the follower is running")
}

/// Follows `node`'s list into a channel.
fn follow(node: &Shared) -> (tokio::task::JoinHandle<()>, mpsc::UnboundedReceiver<Change>) {
    let (sender, changes) = mpsc::unbounded_channel();
    let follower = node.follow(move |change| {
        let _ = sender.send(change);
    });
    (follower, changes)
}

#[tokio::test]
async fn two_nodes_share_one_rate_fairly() {
    let server = RedisServer::start();
    let nodes = [server.node().await, server.node().await];
    let interval = Duration::from_millis(100);
    let run_for = Duration::from_secs(2);
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (n, node) in nodes.iter().enumerate() {
        for _ in 0..3 {
            let node = node.clone();
            tasks.spawn(async move {
                let mut slots = Vec::new();
                while start.elapsed() < run_for {
                    let wait = node.reserve("mx:example", interval).await.expect("reserve");
                    let slot = Instant::now() + wait;
                    slots.push((slot, n));
                    tokio::time::sleep(wait).await;
                }
                slots
            });
        }
    }
    let mut slots: Vec<(Instant, usize)> = tasks.join_all().await.into_iter().flatten().collect();
    slots.sort();

    for (i, &(first, _)) in slots.iter().enumerate() {
        let in_window = slots[i..]
            .iter()
            .take_while(|(slot, _)| *slot < first + Duration::from_secs(1))
            .count();
        assert!(
            in_window <= 11,
            "{in_window} slots in the second from {:?}",
            first - start
        );
    }
    let in_run: Vec<usize> = slots
        .iter()
        .filter(|(slot, _)| *slot < start + run_for)
        .map(|&(_, n)| n)
        .collect();
    assert!(
        (17..=21).contains(&in_run.len()),
        "{} slots in {run_for:?} at 10/s",
        in_run.len()
    );
    for n in 0..2 {
        let got = in_run.iter().filter(|&&node| node == n).count();
        assert!(got >= 5, "node {n} got {got} of {} slots", in_run.len());
    }
}

#[tokio::test]
async fn throttles_of_different_keys_are_independent_and_expire() {
    let server = RedisServer::start();
    let node = server.node().await;
    let interval = Duration::from_secs(10);
    assert_eq!(node.reserve("a", interval).await.expect("reserve"), Duration::ZERO);
    assert_eq!(node.reserve("b", interval).await.expect("reserve"), Duration::ZERO);
    let second = node.reserve("a", interval).await.expect("reserve");
    assert!(
        second > Duration::from_millis(9_900) && second <= interval,
        "{second:?}"
    );
    let third = node.reserve("a", interval).await.expect("reserve");
    assert!(
        third > Duration::from_millis(19_900) && third <= 2 * interval,
        "{third:?}"
    );

    let other_prefix = Shared::connect(&server.url(), "other").await.expect("connect");
    assert_eq!(
        other_prefix.reserve("a", interval).await.expect("reserve"),
        Duration::ZERO
    );

    let mut raw = server.raw().await;
    let ttl_ms: i64 = raw.pttl("test:gcra:a").await.expect("PTTL");
    assert!(
        (29_000..=30_001).contains(&ttl_ms),
        "the key lives until its last slot: {ttl_ms} ms"
    );
    node.reserve("c", Duration::from_millis(50)).await.expect("reserve");
    let deadline = Instant::now() + DEADLINE;
    while raw.exists::<_, bool>("test:gcra:c").await.expect("EXISTS") {
        assert!(Instant::now() < deadline, "an idle throttle key never expired");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn suppression_made_on_one_node_reaches_the_other() {
    let server = RedisServer::start();
    let (a, b) = (server.node().await, server.node().await);
    let (follower, mut changes) = follow(&b);
    // Once the probe arrives, B's follower is subscribed (or resynced: either way in step).
    let probe = entry("probe@example.com", Reason::Manual);
    a.suppress(&probe).await.expect("suppress");
    assert_eq!(next_change(&mut changes).await, Change::Added(probe.clone()));

    a.suppress(&entry("<User@Example.COM>", Reason::Complaint))
        .await
        .expect("suppress");
    let user = entry("user@example.com", Reason::Complaint);
    assert_eq!(next_change(&mut changes).await, Change::Added(user.clone()));
    assert_eq!(b.suppressed().await.expect("suppressed"), [probe.clone(), user]);

    a.unsuppress("User@example.com").await.expect("unsuppress");
    assert_eq!(
        next_change(&mut changes).await,
        Change::Removed("user@example.com".to_owned())
    );
    assert_eq!(b.suppressed().await.expect("suppressed"), [probe]);

    let refused = a.suppress(&entry("no address", Reason::Manual)).await;
    assert!(matches!(refused, Err(SharedError::InvalidAddress(_))), "{refused:?}");
    follower.abort();
}

#[tokio::test]
async fn follower_catches_up_after_losing_its_connection() {
    let server = RedisServer::start();
    let node = server.node().await;
    let probe = entry("probe@example.com", Reason::Manual);
    node.suppress(&probe).await.expect("suppress");
    let (follower, mut changes) = follow(&node);
    assert_eq!(
        next_change(&mut changes).await,
        Change::Added(probe.clone()),
        "the first resync"
    );

    // Changes no message announces: only a resync after the reconnection can find them.
    let mut raw = server.raw().await;
    let missed = entry("missed@example.com", Reason::HardBounce);
    let json = serde_json::to_string(&missed).expect("JSON");
    let () = raw.hset("test:suppressed", &missed.address, json).await.expect("HSET");
    let () = raw.hdel("test:suppressed", &probe.address).await.expect("HDEL");
    let killed: i64 = redis::cmd("CLIENT")
        .arg(&["KILL", "TYPE", "pubsub"])
        .query_async(&mut raw)
        .await
        .expect("CLIENT KILL");
    assert_eq!(killed, 1, "the follower's connection");

    let caught_up: HashSet<String> = [next_change(&mut changes).await, next_change(&mut changes).await]
        .iter()
        .map(|change| format!("{change:?}"))
        .collect();
    let expected: HashSet<String> = [Change::Added(missed), Change::Removed(probe.address)]
        .iter()
        .map(|change| format!("{change:?}"))
        .collect();
    assert_eq!(caught_up, expected);
    follower.abort();
}

#[tokio::test]
async fn put_all_delete_and_expiry() {
    let server = RedisServer::start();
    let (a, b) = (server.node().await, server.node().await);
    let hour = Duration::from_secs(3600);
    a.put("backoff", "mx:google", r#"{"factor":0.5}"#, hour)
        .await
        .expect("put");
    b.put(
        "backoff",
        "mx:yahoo",
        r#"{"factor":0.25, "why": "421 \"slow down\""}"#,
        hour,
    )
    .await
    .expect("put");
    b.put("other", "x", "1", hour).await.expect("put");
    assert_eq!(
        b.all("backoff").await.expect("all"),
        [
            ("mx:google".to_owned(), r#"{"factor":0.5}"#.to_owned()),
            (
                "mx:yahoo".to_owned(),
                r#"{"factor":0.25, "why": "421 \"slow down\""}"#.to_owned()
            ),
        ]
    );
    a.delete("backoff", "mx:yahoo").await.expect("delete");
    a.delete("backoff", "never-there").await.expect("delete");
    assert_eq!(
        b.all("backoff").await.expect("all"),
        [("mx:google".to_owned(), r#"{"factor":0.5}"#.to_owned())]
    );
    assert_eq!(a.all("empty").await.expect("all"), []);

    a.put("backoff", "short", "{}", Duration::from_millis(300))
        .await
        .expect("put");
    assert_eq!(b.all("backoff").await.expect("all").len(), 2);
    let deadline = Instant::now() + DEADLINE;
    while b.all("backoff").await.expect("all").iter().any(|(id, _)| id == "short") {
        assert!(Instant::now() < deadline, "an expired value is still listed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut raw = server.raw().await;
    let fields: Vec<String> = raw.hkeys("test:state:backoff").await.expect("HKEYS");
    assert_eq!(fields, ["mx:google"], "reading deleted the expired field");
    let ttl_ms: i64 = raw.pttl("test:state:backoff").await.expect("PTTL");
    assert!(
        ttl_ms > 3_500_000,
        "the hash lives as long as its longest field: {ttl_ms} ms"
    );
}

#[tokio::test]
async fn connecting_where_nothing_listens_fails_quickly_naming_the_url() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let socket = dir.path().join("dead.sock");
    drop(std::os::unix::net::UnixListener::bind(&socket).expect("bind"));
    assert_dead_socket_error(&socket).await;
    assert_dead_socket_error(&dir.path().join("missing.sock")).await;
}

async fn assert_dead_socket_error(socket: &Path) {
    let url = format!("redis+unix://{}", socket.display());
    let start = Instant::now();
    let error = Shared::connect(&url, PREFIX).await.expect_err("nothing listens");
    let message = error.to_string();
    assert!(
        start.elapsed() < CONNECT_TIMEOUT + Duration::from_secs(1),
        "took {:?}",
        start.elapsed()
    );
    assert!(
        message.starts_with(&format!("redis at {url}: cannot connect: ")),
        "{message}"
    );
}

#[test]
fn urls_in_messages_hide_passwords() {
    assert_eq!(redact("redis://127.0.0.1:6379/0"), "redis://127.0.0.1:6379/0");
    assert_eq!(redact("redis://user:s3cret@h:6379/2"), "redis://user:***@h:6379/2");
    assert_eq!(redact("rediss://:s3cret@h"), "rediss://:***@h");
    assert_eq!(redact("redis://user@h/0"), "redis://user@h/0");
    assert_eq!(
        redact("redis+unix:///run/redis.sock?db=1&pass=s3cret"),
        "redis+unix:///run/redis.sock?db=1&pass=***"
    );
}

mod gcra;
