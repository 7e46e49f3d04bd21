//! Upstream pools end to end: balance policies, failover, fallback pools, the circuit breaker,
//! connection caps, upstream AUTH and the source address, against real smtp-sink upstreams.

mod support;

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use support::{
    Gate, GateConfig, SOON, Sink, UsersFile, header_values, message, replace_once, smtp_source, smtplib_send,
    smtplib_send_many, toml_path, wait_until, without_relay_networks,
};

const LOAD: Duration = Duration::from_secs(180);

/// The usual config with the pool's servers replaced by `servers` (TOML values, in order), extra
/// `[[pool]]` keys, and extra tables (more pools) before the route.
fn pool_config(servers: &[String], keys: &[&str], more_pools: &str) -> String {
    let first = SocketAddr::from((Ipv4Addr::LOCALHOST, 9));
    let mut config = GateConfig::relay_to(first);
    for key in keys {
        config = config.pool(key);
    }
    let toml = replace_once(
        &config.to_toml(),
        &format!("servers = [\"{first}\"]"),
        &format!("servers = [{}]", servers.join(", ")),
    );
    replace_once(&toml, "\n[[route]]", &format!("\n{more_pools}\n[[route]]"))
}

fn plain(addr: SocketAddr) -> String {
    format!("\"{addr}\"")
}

fn weighted(addr: SocketAddr, weight: u32) -> String {
    format!("{{ address = \"{addr}\", weight = {weight} }}")
}

/// An address on 127.0.0.1 where nothing listens.
fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
    listener.local_addr().expect("local_addr")
}

/// `smtp-source` sends `n` messages over `sessions` parallel sessions; asserts it succeeded.
fn load(gate: &Gate, n: usize, sessions: usize) {
    let target = format!("127.0.0.1:{}", gate.smtp_addr().port());
    let (n, sessions) = (n.to_string(), sessions.to_string());
    let args = [
        "-s",
        &sessions,
        "-m",
        &n,
        "-l",
        "300",
        "-f",
        "from@example.test",
        "-t",
        "to@example.org",
        &target,
    ];
    let (status, output) = smtp_source(&args, LOAD);
    assert!(status.is_some_and(|s| s.success()), "smtp-source: {status:?}\n{output}");
}

fn send(gate: &Gate, id: &str) {
    let sent = smtplib_send(
        gate.smtp_addr(),
        "alice@example.test",
        &["bob@example.org"],
        &message(&format!("{id}@example.test"), id, "Through a pool."),
    );
    assert!(sent.reply("END-OF-DATA").starts_with("250 "), "{sent}");
}

fn metric_at_least(gate: &Gate, name: &str, n: f64) -> bool {
    wait_until(LOAD, || gate.try_metric(name).is_some_and(|v| v >= n))
}

/// The value of the sample `name{labels}`, labels written exactly as smtpgate writes them.
fn labeled(gate: &Gate, name: &str, labels: &str) -> Option<f64> {
    let prefix = format!("{name}{{{labels}}} ");
    let text = gate.metrics();
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|v| v.trim().parse().ok())
}

fn server_labels(addr: SocketAddr) -> String {
    format!("pool=\"upstream\",server=\"{addr}\"")
}

fn drained(gate: &Gate) -> bool {
    wait_until(LOAD, || gate.try_metric("smtpgate_queue_depth") == Some(0.0))
}

fn share(count: usize, total: usize) -> f64 {
    100.0 * count as f64 / total as f64
}

/// smtp-sink on a port of our choosing, so a test can kill it and bring it back on the same port.
/// Its dump files stay until the value is dropped.
struct PortSink {
    child: Option<Child>,
    addr: SocketAddr,
    dumps: tempfile::TempDir,
}

impl PortSink {
    fn start(addr: SocketAddr) -> PortSink {
        let dumps = tempfile::tempdir().expect("tempdir");
        let mut sink = PortSink {
            child: None,
            addr,
            dumps,
        };
        sink.restart();
        sink
    }

    /// Starts smtp-sink (again) on the same port and dump dir.
    fn restart(&mut self) {
        self.kill();
        let template = self.dumps.path().join("%Y%m%d%H%M%S.");
        let mut cmd = Command::new("/usr/sbin/smtp-sink");
        if running_as_root() {
            cmd.args(["-u", "root"]);
        }
        cmd.arg("-d").arg(&template).arg(self.addr.to_string()).arg("256");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("run smtp-sink");
        self.child = Some(child);
        let up = wait_until(SOON, || TcpStream::connect(self.addr).is_ok());
        assert!(up, "smtp-sink did not come up on {}", self.addr);
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn dumps(&self) -> Vec<PathBuf> {
        fs::read_dir(self.dumps.path())
            .expect("read dumps")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect()
    }

    /// Messages received so far, including by earlier runs on this port.
    fn count(&self) -> usize {
        self.dumps().len()
    }
}

impl Drop for PortSink {
    fn drop(&mut self) {
        self.kill();
    }
}

fn running_as_root() -> bool {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .is_some_and(|euid| euid == "0")
}

#[test]
fn weighted_pool_holds_the_weights_within_three_points_over_1000_messages() {
    let sinks = [Sink::start(), Sink::start(), Sink::start()];
    let servers: Vec<String> = sinks
        .iter()
        .zip([1, 2, 7])
        .map(|(s, w)| weighted(s.addr(), w))
        .collect();
    let gate = Gate::start(&pool_config(&servers, &["balance = \"weighted\""], ""));

    load(&gate, 1000, 20);

    let arrived = wait_until(LOAD, || sinks.iter().map(Sink::message_count).sum::<usize>() >= 1000);
    let counts: Vec<usize> = sinks.iter().map(Sink::message_count).collect();
    assert!(arrived, "{counts:?}");
    for (count, expected) in counts.iter().zip([10.0, 20.0, 70.0]) {
        let got = share(*count, 1000);
        assert!(
            (got - expected).abs() <= 3.0,
            "share {got}% for weight share {expected}%: {counts:?}"
        );
    }
    assert_eq!(gate.metric("smtpgate_messages_deferred_total"), 0.0);
}

#[test]
fn round_robin_pool_splits_200_messages_evenly() {
    let sinks = [Sink::start(), Sink::start()];
    let servers: Vec<String> = sinks.iter().map(|s| plain(s.addr())).collect();
    let gate = Gate::start(&pool_config(&servers, &["balance = \"round_robin\""], ""));

    load(&gate, 200, 10);

    let arrived = wait_until(LOAD, || sinks.iter().map(Sink::message_count).sum::<usize>() >= 200);
    let counts: Vec<usize> = sinks.iter().map(Sink::message_count).collect();
    assert!(arrived, "{counts:?}");
    for count in &counts {
        assert!((share(*count, 200) - 50.0).abs() <= 5.0, "{counts:?}");
    }
}

#[test]
fn ordered_pool_moves_to_the_backup_while_the_primary_is_down_and_comes_back() {
    let mut primary = PortSink::start(closed_port());
    let backup = Sink::start();
    let keys = [
        "health_check = { interval = \"1s\", timeout = \"1s\" }",
        "circuit_breaker = { failures = 3, cooldown = \"1s\" }",
    ];
    let servers = [plain(primary.addr), plain(backup.addr())];
    let gate = Gate::start(&pool_config(&servers, &keys, ""));

    smtplib_send_many(
        gate.smtp_addr(),
        20,
        "a@example.test",
        &["b@example.org"],
        "Subject: {i}\r\n\r\nup\r\n",
    );
    assert!(
        wait_until(SOON, || primary.count() >= 20),
        "primary got {}",
        primary.count()
    );
    assert_eq!(backup.message_count(), 0);

    primary.kill();
    smtplib_send_many(
        gate.smtp_addr(),
        20,
        "a@example.test",
        &["b@example.org"],
        "Subject: {i}\r\n\r\ndown\r\n",
    );
    backup.wait_for_messages(20, LOAD);
    assert!(drained(&gate), "{}", gate.metrics());
    assert_eq!(primary.count(), 20);
    let labels = server_labels(primary.addr);
    assert_eq!(
        labeled(&gate, "smtpgate_upstream_up", &labels),
        Some(0.0),
        "{}",
        gate.metrics()
    );

    primary.restart();
    let up = wait_until(SOON, || labeled(&gate, "smtpgate_upstream_up", &labels) == Some(1.0));
    assert!(up, "{}", gate.metrics());
    // The circuit breaker lets one delivery probe the server before it closes; while that probe is
    // under way, other deliveries go to the backup. Send the probe first.
    smtplib_send_many(
        gate.smtp_addr(),
        1,
        "a@example.test",
        &["b@example.org"],
        "Subject: probe\r\n\r\nback\r\n",
    );
    let closed = wait_until(SOON, || {
        labeled(&gate, "smtpgate_upstream_circuit_open", &labels) == Some(0.0)
    });
    assert!(closed, "{}", gate.metrics());
    smtplib_send_many(
        gate.smtp_addr(),
        19,
        "a@example.test",
        &["b@example.org"],
        "Subject: {i}\r\n\r\nback\r\n",
    );
    assert!(
        wait_until(SOON, || primary.count() >= 40),
        "primary got {}",
        primary.count()
    );
    assert!(drained(&gate), "{}", gate.metrics());
    assert_eq!(backup.message_count(), 20);
    assert_eq!(gate.metric("smtpgate_messages_bounced_total"), 0.0);
}

#[test]
fn upstream_killed_during_a_load_of_1000_loses_nothing_and_bounces_nothing() {
    let mut sinks: Vec<PortSink> = (0..3).map(|_| PortSink::start(closed_port())).collect();
    let servers: Vec<String> = sinks.iter().map(|s| plain(s.addr)).collect();
    let gate = Gate::start(&pool_config(&servers, &["balance = \"round_robin\""], ""));
    let target = format!("127.0.0.1:{}", gate.smtp_addr().port());

    let source = thread::spawn(move || {
        let args = [
            "-s",
            "20",
            "-m",
            "1000",
            "-l",
            "300",
            "-f",
            "from@example.test",
            "-t",
            "to@example.org",
            &target,
        ];
        smtp_source(&args, LOAD)
    });
    let started = wait_until(LOAD, || sinks.iter().map(PortSink::count).sum::<usize>() >= 200);
    assert!(started, "the load did not get going");
    sinks[1].kill();
    let (status, output) = source.join().expect("smtp-source thread");
    assert!(status.is_some_and(|s| s.success()), "smtp-source: {status:?}\n{output}");

    assert!(drained(&gate), "{}", gate.metrics());
    assert!(metric_at_least(&gate, "smtpgate_recipients_delivered_total", 1000.0));
    assert_eq!(gate.metric("smtpgate_recipients_delivered_total"), 1000.0);
    let total: usize = sinks.iter().map(PortSink::count).sum();
    assert!(total >= 1000, "only {total} messages arrived");
    assert_eq!(gate.metric("smtpgate_messages_bounced_total"), 0.0);
}

#[test]
fn mail_stays_queued_while_a_pool_and_its_fallback_are_down_and_goes_when_one_comes_back() {
    let (main_addr, backup_addr) = (closed_port(), closed_port());
    let keys = [
        "fallback = \"backup\"",
        "health_check = { interval = \"1s\", timeout = \"1s\" }",
        "circuit_breaker = { failures = 3, cooldown = \"1s\" }",
    ];
    let backup_pool = format!(
        "[[pool]]\nname = \"backup\"\nservers = [\"{backup_addr}\"]\ntls = \"none\"\n\
         health_check = {{ interval = \"1s\", timeout = \"1s\" }}\n\
         circuit_breaker = {{ failures = 3, cooldown = \"1s\" }}\n"
    );
    let gate = Gate::start(&pool_config(&[plain(main_addr)], &keys, &backup_pool));

    for i in 0..3 {
        send(&gate, &format!("held-{i}"));
    }
    assert!(
        metric_at_least(&gate, "smtpgate_messages_deferred_total", 3.0),
        "{}",
        gate.metrics()
    );
    assert_eq!(gate.metric("smtpgate_queue_depth"), 3.0);
    assert_eq!(gate.metric("smtpgate_messages_bounced_total"), 0.0);

    let backup = PortSink::start(backup_addr);
    assert!(
        wait_until(LOAD, || backup.count() >= 3),
        "backup got {}",
        backup.count()
    );
    assert!(drained(&gate), "{}", gate.metrics());
    assert_eq!(gate.metric("smtpgate_messages_bounced_total"), 0.0);
}

#[test]
fn fallback_pool_carries_the_mail_when_every_server_of_the_pool_is_down() {
    let backup = Sink::start();
    let backup_pool = format!(
        "[[pool]]\nname = \"backup\"\nservers = [\"{}\"]\ntls = \"none\"\n",
        backup.addr()
    );
    let gate = Gate::start(&pool_config(
        &[plain(closed_port()), plain(closed_port())],
        &["fallback = \"backup\""],
        &backup_pool,
    ));

    send(&gate, "fallback");

    backup.wait_for_messages(1, SOON);
    assert_eq!(backup.message_ids(), ["<fallback@example.test>"]);
    assert!(drained(&gate));
    assert_eq!(gate.metric("smtpgate_messages_deferred_total"), 0.0);
}

/// Accepts connections and closes them at once, counting them, until stopped.
struct Refuser {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Refuser {
    fn start() -> Refuser {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("local_addr");
        let (accepted, stop) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicBool::new(false)));
        let (count, stopped) = (accepted.clone(), stop.clone());
        let thread = thread::spawn(move || {
            while !stopped.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        count.fetch_add(1, Ordering::SeqCst);
                        drop(stream);
                    }
                    Err(_) => thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Refuser {
            addr,
            accepted,
            stop,
            thread: Some(thread),
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Stops and closes the listening socket.
    fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Refuser {
    fn drop(&mut self) {
        self.stop();
    }
}

#[test]
fn circuit_breaker_skips_a_failing_server_after_two_failures_and_a_probe_brings_it_back() {
    let mut refuser = Refuser::start();
    let backup = Sink::start();
    let keys = [
        "health_check = { enabled = false }",
        "circuit_breaker = { failures = 2, cooldown = \"3s\" }",
    ];
    let gate = Gate::start(&pool_config(&[plain(refuser.addr), plain(backup.addr())], &keys, ""));

    for i in 0..2 {
        send(&gate, &format!("trip-{i}"));
        backup.wait_for_messages(i + 1, SOON);
    }
    assert_eq!(refuser.accepted(), 2);
    let labels = server_labels(refuser.addr);
    assert_eq!(
        labeled(&gate, "smtpgate_upstream_circuit_open", &labels),
        Some(1.0),
        "{}",
        gate.metrics()
    );
    smtplib_send_many(
        gate.smtp_addr(),
        5,
        "a@example.test",
        &["b@example.org"],
        "Subject: {i}\r\n\r\nopen\r\n",
    );
    backup.wait_for_messages(7, SOON);
    assert_eq!(refuser.accepted(), 2, "the open breaker let a connection through");

    // After the cooldown exactly one probe goes to the server; it fails, so the breaker re-opens.
    let mut sent = 7;
    let probed = wait_until(SOON, || {
        send(&gate, &format!("probe-{sent}"));
        sent += 1;
        backup.wait_for_messages(sent, SOON);
        refuser.accepted() >= 3
    });
    assert!(probed, "no probe after the cooldown");
    send(&gate, "after-probe");
    backup.wait_for_messages(sent + 1, SOON);
    assert_eq!(refuser.accepted(), 3, "more than one probe");

    // The server works again: the next probe closes the breaker and traffic comes back.
    let port = refuser.addr;
    refuser.stop();
    let primary = PortSink::start(port);
    let back = wait_until(SOON, || {
        send(&gate, "back");
        primary.count() >= 1
    });
    assert!(back, "traffic did not come back to the primary");
    assert_eq!(
        labeled(&gate, "smtpgate_upstream_circuit_open", &labels),
        Some(0.0),
        "{}",
        gate.metrics()
    );
}

/// A TCP proxy to `to` that tracks how many connections are open at once.
struct CountingProxy {
    addr: SocketAddr,
    open: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
}

impl CountingProxy {
    fn start(to: SocketAddr) -> CountingProxy {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let addr = listener.local_addr().expect("local_addr");
        let (open, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (o, m) = (open.clone(), most.clone());
        thread::spawn(move || {
            for client in listener.incoming().map_while(Result::ok) {
                let Ok(server) = TcpStream::connect(to) else { continue };
                let now = o.fetch_add(1, Ordering::SeqCst) + 1;
                m.fetch_max(now, Ordering::SeqCst);
                let o = o.clone();
                thread::spawn(move || {
                    let (c2, s2) = (client.try_clone().expect("clone"), server.try_clone().expect("clone"));
                    let down = thread::spawn(move || pipe(s2, c2));
                    // The connection counts as closed once smtpgate has closed its side.
                    pipe(client, server);
                    o.fetch_sub(1, Ordering::SeqCst);
                    let _ = down.join();
                });
            }
        });
        CountingProxy { addr, open, most }
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = [0u8; 16384];
    while let Ok(n @ 1..) = from.read(&mut buf) {
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}

#[test]
fn max_connections_of_two_holds_under_20_concurrent_sessions() {
    let sink = Sink::start();
    let proxy = CountingProxy::start(sink.addr());
    let keys = ["max_connections = 2", "health_check = { enabled = false }"];
    // No connection is closed during the load (a close and the next open would race in the proxy).
    let toml = pool_config(&[plain(proxy.addr)], &keys, "") + "messages_per_connection = 1000\n";
    let gate = Gate::start(&toml);

    load(&gate, 200, 20);

    sink.wait_for_messages(200, LOAD);
    let most = proxy.most.load(Ordering::SeqCst);
    assert!(most <= 2, "{most} connections at once");
    assert!(most >= 1);
    assert!(proxy.open.load(Ordering::SeqCst) <= 2);
}

#[test]
fn pool_with_auth_relays_through_a_gate_that_only_relays_for_authenticated_clients() {
    let sink = Sink::start();
    let users = UsersFile::create(&[("relay", "s3cret")]);
    let auth_line = format!(
        "auth = {{ users_file = {}, allow_plaintext = true }}",
        toml_path(&users.path)
    );
    let inner = Gate::start(&without_relay_networks(
        &GateConfig::relay_to(sink.addr())
            .hostname("inner.example.test")
            .listener(&auth_line)
            .to_toml(),
    ));
    let keys = ["auth = { username = \"relay\", password = \"s3cret\" }"];
    let outer = Gate::start(&pool_config(&[plain(inner.smtp_addr())], &keys, ""));

    send(&outer, "authed");

    let arrived = sink.wait_for_messages(1, SOON);
    let received = header_values(&arrived[0], "Received");
    assert!(
        received
            .iter()
            .any(|r| r.contains("by inner.example.test") && r.contains("ESMTPA")),
        "no authenticated Received by the inner gate in:\n{}",
        arrived[0]
    );
}

#[test]
fn pool_with_wrong_credentials_keeps_the_mail_queued_and_bounces_nothing() {
    let sink = Sink::start();
    let users = UsersFile::create(&[("relay", "s3cret")]);
    let auth_line = format!(
        "auth = {{ users_file = {}, allow_plaintext = true }}",
        toml_path(&users.path)
    );
    let inner = Gate::start(&without_relay_networks(
        &GateConfig::relay_to(sink.addr()).listener(&auth_line).to_toml(),
    ));
    let keys = ["auth = { username = \"relay\", password = \"wrong\" }"];
    let outer = Gate::start(&pool_config(&[plain(inner.smtp_addr())], &keys, ""));

    send(&outer, "refused");

    assert!(metric_at_least(&outer, "smtpgate_messages_deferred_total", 1.0));
    assert_eq!(outer.metric("smtpgate_queue_depth"), 1.0);
    assert_eq!(outer.metric("smtpgate_messages_bounced_total"), 0.0);
    assert_eq!(sink.message_count(), 0);
}

#[test]
fn source_address_binds_the_outgoing_connection() {
    let sink = Sink::start();
    let keys = ["source_address = \"127.0.0.2\""];
    let gate = Gate::start(&pool_config(&[plain(sink.addr())], &keys, ""));

    send(&gate, "sourced");

    let arrived = sink.wait_for_messages(1, SOON);
    assert!(arrived[0].contains("X-Client-Addr: 127.0.0.2\n"), "{}", arrived[0]);
}

#[test]
fn per_server_metrics_carry_pool_and_server_labels() {
    let sink = Sink::start();
    let dead = closed_port();
    let keys = ["balance = \"round_robin\"", "health_check = { enabled = false }"];
    let gate = Gate::start(&pool_config(&[plain(sink.addr()), plain(dead)], &keys, ""));

    smtplib_send_many(
        gate.smtp_addr(),
        10,
        "a@example.test",
        &["b@example.org"],
        "Subject: {i}\r\n\r\nm\r\n",
    );
    sink.wait_for_messages(10, SOON);

    let (live, gone) = (server_labels(sink.addr()), server_labels(dead));
    let ok = |labels: &str| format!("{labels},result=\"ok\"");
    assert!(
        wait_until(SOON, || labeled(
            &gate,
            "smtpgate_upstream_deliveries_total",
            &ok(&live)
        ) == Some(10.0)),
        "{}",
        gate.metrics()
    );
    assert_eq!(labeled(&gate, "smtpgate_upstream_up", &live), Some(1.0));
    assert_eq!(labeled(&gate, "smtpgate_upstream_circuit_open", &live), Some(0.0));
    assert!(labeled(&gate, "smtpgate_upstream_connections", &live).is_some_and(|n| n <= 10.0));
    assert_eq!(
        labeled(&gate, "smtpgate_upstream_up", &gone),
        Some(0.0),
        "{}",
        gate.metrics()
    );
    assert_eq!(labeled(&gate, "smtpgate_upstream_circuit_open", &gone), Some(1.0));
    assert_eq!(
        labeled(&gate, "smtpgate_upstream_deliveries_total", &ok(&gone)),
        Some(0.0)
    );
}
