//! End-to-end live reload: the gate's `smtpgate.toml` is rewritten and smtpgate is told to
//! re-read it (SIGHUP, or `smtpgate reload --config`). A good file takes effect for new sessions
//! and new delivery attempts (`smtpgate reloaded` on stdout, with the listeners again); a bad one
//! is refused whole, its errors logged with their keys, and the old configuration keeps serving.
//!
//! Each pool is one scriptable [`Upstream`], so a test tells where a message went by which
//! upstream recorded its recipient.

mod support;

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use support::{Gate, SOON, Upstream, message, run_smtpgate, smtplib_send, wait_until};

// ---------------------------------------------------------------------------------------------
// Config

/// A relay listener for loopback clients on a port the OS picks.
fn listener(name: &str) -> String {
    format!("[[listener]]\nname = \"{name}\"\naddress = \"127.0.0.1:0\"\nrelay_networks = [\"127.0.0.0/8\"]\n")
}

/// A pool of `servers`, with no active health checks (deliveries alone tell what is up).
fn pool(name: &str, servers: &[SocketAddr]) -> String {
    let servers: Vec<String> = servers.iter().map(|s| format!("\"{s}\"")).collect();
    format!(
        "[[pool]]\nname = \"{name}\"\nservers = [{}]\ntls = \"none\"\nhealth_check = {{ enabled = false }}\n",
        servers.join(", ")
    )
}

/// A whole config: `listeners` and `pools` (TOML tables), one catch-all route to `route_pool`.
fn config(listeners: &[String], pools: &[String], route_pool: &str) -> String {
    format!(
        "hostname = \"gate.example.test\"\nshutdown_timeout = \"5s\"\n\n[spool]\ndir = \"spool\"\n\n\
         [admin]\naddress = \"127.0.0.1:0\"\n\n{}\n{}\n[[route]]\npool = \"{route_pool}\"\n\n\
         [queue]\nretry = [\"1s\"]\n",
        listeners.join("\n"),
        pools.join("\n")
    )
}

/// The usual scene: listener `inbound`, pools `a` and `b` (one upstream each), routed to `route`.
fn two_pools(a: &Upstream, b: &Upstream, route: &str) -> String {
    config(
        &[listener("inbound")],
        &[pool("a", &[a.addr()]), pool("b", &[b.addr()])],
        route,
    )
}

// ---------------------------------------------------------------------------------------------
// Mail

/// Sends one message to `rcpt` in a session of its own and asserts it was accepted.
fn send_ok(addr: SocketAddr, rcpt: &str) {
    let t = smtplib_send(addr, "alice@example.test", &[rcpt], &message(rcpt, "reload", "hello"));
    assert!(t.reply("END-OF-DATA").starts_with("250 "), "{rcpt} not accepted:\n{t}");
}

/// Every recipient `up` accepted, in order.
fn rcpts(up: &Upstream) -> Vec<String> {
    up.messages()
        .iter()
        .flat_map(|m| m.rcpt_addresses().into_iter().map(str::to_string).collect::<Vec<_>>())
        .collect()
}

/// Waits until `rcpt` reached `at`; then asserts it did not also reach `not_at`.
fn assert_arrives(rcpt: &str, at: (&str, &Upstream), not_at: (&str, &Upstream)) {
    let arrived = wait_until(SOON, || rcpts(at.1).iter().any(|r| r == rcpt));
    assert!(
        arrived,
        "{rcpt} did not reach pool {} within {SOON:?}; {} has {:?}, {} has {:?}",
        at.0,
        at.0,
        rcpts(at.1),
        not_at.0,
        rcpts(not_at.1)
    );
    assert!(
        !rcpts(not_at.1).iter().any(|r| r == rcpt),
        "{rcpt} also reached pool {}: {:?}",
        not_at.0,
        rcpts(not_at.1)
    );
}

/// A hand-driven SMTP session, for holding a transaction open across a reload.
struct RawSession {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl RawSession {
    fn connect(addr: SocketAddr) -> RawSession {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        stream.set_read_timeout(Some(SOON)).expect("read timeout");
        let writer = stream.try_clone().expect("clone stream");
        let mut session = RawSession {
            reader: BufReader::new(stream),
            writer,
        };
        let greeting = session.reply();
        assert!(greeting.starts_with("220"), "greeting: {greeting}");
        session
    }

    /// One whole reply, multi-line replies joined with `\n`.
    fn reply(&mut self) -> String {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let n = self.reader.read_line(&mut line).expect("read reply");
            assert!(n > 0, "connection closed; reply so far: {lines:?}");
            let line = line.trim_end().to_string();
            let last = line.len() < 4 || line.as_bytes()[3] == b' ';
            lines.push(line);
            if last {
                return lines.join("\n");
            }
        }
    }

    /// Sends `line` and asserts the reply starts with `code`.
    fn command(&mut self, line: &str, code: &str) -> String {
        self.writer.write_all(format!("{line}\r\n").as_bytes()).expect("send");
        let reply = self.reply();
        assert!(reply.starts_with(code), "{line} -> {reply} (wanted {code})");
        reply
    }
}

/// Whether a TCP connection to `addr` is refused now.
fn refused(addr: SocketAddr) -> bool {
    match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
        Err(e) => e.kind() == ErrorKind::ConnectionRefused,
        Ok(_) => false,
    }
}

/// A loopback address nothing listens on (bound, then let go).
fn dead_address() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("local_addr")
}

// ---------------------------------------------------------------------------------------------
// Tests

/// A route change takes effect at `smtpgate reloaded`: pool a before, pool b after.
#[test]
fn sighup_applies_a_route_change() {
    let (a, b) = (Upstream::start(), Upstream::start());
    let mut gate = Gate::start(&two_pools(&a, &b, "a"));
    let inbound = gate.smtp_addr();

    send_ok(inbound, "before@example.org");
    assert_arrives("before@example.org", ("a", &a), ("b", &b));

    let reloaded = gate.reload(&two_pools(&a, &b, "b"));
    assert_eq!(reloaded.addr("inbound"), Some(inbound), "inbound moved: {reloaded:?}");
    assert_eq!(reloaded.listeners.len(), 1, "{reloaded:?}");

    send_ok(inbound, "after@example.org");
    assert_arrives("after@example.org", ("b", &b), ("a", &a));
    assert_eq!(rcpts(&a), ["before@example.org"]);
    assert_eq!(rcpts(&b), ["after@example.org"]);
}

/// `smtpgate reload --config <file>` finds the server through the PID file in the spool the file
/// names (relative to the file, whatever the working directory) and makes it reload.
#[test]
fn reload_command_signals_the_running_server() {
    let (a, b) = (Upstream::start(), Upstream::start());
    let mut gate = Gate::start(&two_pools(&a, &b, "a"));
    let inbound = gate.smtp_addr();
    send_ok(inbound, "before@example.org");
    assert_arrives("before@example.org", ("a", &a), ("b", &b));

    gate.write_config(&two_pools(&a, &b, "b"));
    gate.wait_hup_handler();
    let mark = gate.mark();
    let config = gate.config_path().to_str().expect("UTF-8 path").to_string();
    let ran = run_smtpgate(&["reload", "--config", &config], None, Some(std::path::Path::new("/")));
    assert!(
        ran.status.is_some_and(|s| s.success()),
        "smtpgate reload failed: {:?}\nstdout: {}\nstderr: {}",
        ran.status,
        ran.stdout,
        ran.stderr
    );
    assert!(
        ran.stdout.contains(&format!("asked process {} to reload", gate.pid())),
        "stdout: {}",
        ran.stdout
    );
    let reloaded = gate.wait_reloaded(mark);
    assert_eq!(reloaded.addr("inbound"), Some(inbound), "{reloaded:?}");

    send_ok(inbound, "after@example.org");
    assert_arrives("after@example.org", ("b", &b), ("a", &a));
}

/// A file with errors is refused whole: every error is logged with its key, nothing is
/// announced, and mail keeps going where the old configuration sends it. A good file after it
/// is taken as usual.
#[test]
fn a_broken_file_is_refused_and_the_old_config_keeps_serving() {
    let (a, b) = (Upstream::start(), Upstream::start());
    let mut gate = Gate::start(&two_pools(&a, &b, "a"));
    let inbound = gate.smtp_addr();

    let broken = config(
        &[format!("{}max_message_size = \"12 parsecs\"\n", listener("inbound"))],
        &[pool("a", &[a.addr()]), pool("b", &[b.addr()])],
        "nowhere",
    );
    let mark = gate.mark();
    let errors = gate.reload_refused(&broken);
    let logged = errors.join("\n");
    let has = |key: &str, text: &str| errors.iter().any(|l| l.contains(key) && l.contains(text));
    assert!(has("route[0].pool", "nowhere"), "no route[0].pool error in:\n{logged}");
    assert!(
        has("listener[0].max_message_size", "12 parsecs"),
        "no listener[0].max_message_size error in:\n{logged}"
    );
    assert!(
        errors.iter().any(|l| l.contains("ERROR")),
        "errors not logged at ERROR:\n{logged}"
    );

    send_ok(inbound, "still-a@example.org");
    assert_arrives("still-a@example.org", ("a", &a), ("b", &b));
    let stdout = gate.stdout_since(mark);
    assert!(
        stdout.is_empty(),
        "smtpgate printed on stdout after a refused reload: {stdout:#?}"
    );

    // The refusal left nothing half-applied: a good file still reloads.
    let reloaded = gate.reload(&two_pools(&a, &b, "b"));
    assert_eq!(reloaded.addr("inbound"), Some(inbound), "{reloaded:?}");
    send_ok(inbound, "then-b@example.org");
    assert_arrives("then-b@example.org", ("b", &b), ("a", &a));
}

/// A session that began before the reload keeps the configuration it started with: its
/// message, sent after `smtpgate reloaded`, is routed the old way; a new session's the new way.
#[test]
fn a_session_open_across_the_reload_keeps_its_config() {
    let (a, b) = (Upstream::start(), Upstream::start());
    let mut gate = Gate::start(&two_pools(&a, &b, "a"));
    let inbound = gate.smtp_addr();

    let mut held = RawSession::connect(inbound);
    held.command("EHLO client.example.test", "250");
    held.command("MAIL FROM:<alice@example.test>", "250");
    held.command("RCPT TO:<held@example.org>", "250");

    gate.reload(&two_pools(&a, &b, "b"));

    send_ok(inbound, "fresh@example.org");
    assert_arrives("fresh@example.org", ("b", &b), ("a", &a));

    held.command("DATA", "354");
    let body = message("held@example.org", "held across a reload", "hello");
    held.writer.write_all(body.as_bytes()).expect("send body");
    held.command(".", "250");
    held.command("QUIT", "221");
    assert_arrives("held@example.org", ("a", &a), ("b", &b));
}

/// Listeners follow the file: a new `[[listener]]` is bound, announced and takes mail; a removed
/// one stops taking connections; an unchanged one keeps its port (and its sessions).
#[test]
fn listeners_are_added_removed_and_kept() {
    let (a, b) = (Upstream::start(), Upstream::start());
    let pools = [pool("a", &[a.addr()]), pool("b", &[b.addr()])];
    let mut gate = Gate::start(&config(&[listener("inbound"), listener("old")], &pools, "a"));
    let inbound = gate.listener_addr("inbound");
    let old = gate.listener_addr("old");
    send_ok(old, "via-old@example.org");
    assert_arrives("via-old@example.org", ("a", &a), ("b", &b));

    // A session open on the unchanged listener during the reload.
    let mut open = RawSession::connect(inbound);
    open.command("EHLO client.example.test", "250");

    let reloaded = gate.reload(&config(&[listener("inbound"), listener("new")], &pools, "a"));
    let names: Vec<&str> = reloaded.listeners.iter().map(|l| l.0.as_str()).collect();
    assert_eq!(names, ["inbound", "new"], "{reloaded:?}");
    assert_eq!(
        reloaded.addr("inbound"),
        Some(inbound),
        "the unchanged listener moved: {reloaded:?}"
    );
    let new = reloaded.addr("new").expect("new listener announced");
    assert_ne!(new.port(), 0);
    assert_eq!(gate.listener_addr("new"), new);

    send_ok(new, "via-new@example.org");
    assert_arrives("via-new@example.org", ("a", &a), ("b", &b));
    send_ok(inbound, "via-inbound@example.org");
    assert_arrives("via-inbound@example.org", ("a", &a), ("b", &b));

    assert!(
        wait_until(SOON, || refused(old)),
        "the removed listener {old} still takes connections"
    );

    // The session on the kept listener is still served.
    open.command("MAIL FROM:<alice@example.test>", "250");
    open.command("RCPT TO:<open@example.org>", "250");
    open.command("DATA", "354");
    let body = message("open@example.org", "open across a reload", "hello");
    open.writer.write_all(body.as_bytes()).expect("send body");
    open.command(".", "250");
    open.command("QUIT", "221");
    assert_arrives("open@example.org", ("a", &a), ("b", &b));
}

/// After a reload `/metrics` still answers (counters kept), and mail deferred because the pool's
/// only server was down is delivered, at its next retry, to the server list the reload gave it.
#[test]
fn deferred_mail_goes_to_the_reloaded_server_list_and_metrics_survive() {
    let dead = dead_address();
    let up = Upstream::start();
    let with = |server: SocketAddr| config(&[listener("inbound")], &[pool("upstream", &[server])], "upstream");
    let mut gate = Gate::start(&with(dead));
    let inbound = gate.smtp_addr();

    send_ok(inbound, "deferred@example.org");
    let deferred = wait_until(SOON, || {
        gate.try_metric("smtpgate_messages_deferred_total").unwrap_or(0.0) >= 1.0
    });
    assert!(deferred, "the message was never deferred:\n{}", gate.metrics());
    assert_eq!(gate.metric("smtpgate_queue_depth"), 1.0);

    gate.reload(&with(up.addr()));

    let metrics = gate.metrics();
    assert!(
        metrics.contains(&format!("pool=\"upstream\",server=\"{}\"", up.addr())),
        "the new server is not in /metrics:\n{metrics}"
    );
    assert!(
        !metrics.contains(&format!("server=\"{dead}\"")),
        "the old server is still in /metrics:\n{metrics}"
    );
    assert!(
        metric_at_least(&gate, "smtpgate_messages_received_total", 1.0),
        "received counter reset by the reload:\n{metrics}"
    );

    let arrived = wait_until(SOON, || rcpts(&up).iter().any(|r| r == "deferred@example.org"));
    assert!(
        arrived,
        "deferred mail not delivered after the reload:\n{}",
        gate.metrics()
    );
    assert!(
        wait_until(SOON, || gate.metric("smtpgate_queue_depth") == 0.0),
        "queue not drained:\n{}",
        gate.metrics()
    );
    assert!(metric_at_least(&gate, "smtpgate_messages_delivered_total", 1.0));
    assert!(metric_at_least(&gate, "smtpgate_messages_deferred_total", 1.0));
    assert_eq!(rcpts(&up), ["deferred@example.org"]);
}

fn metric_at_least(gate: &Gate, name: &str, least: f64) -> bool {
    gate.try_metric(name).is_some_and(|v| v >= least)
}

/// A pool's new server list applies to the next message even when the pool was busy a moment
/// before the reload (its delivery worker still waiting for more work).
#[test]
fn a_pool_server_change_applies_to_the_next_message() {
    let (a, b) = (Upstream::start(), Upstream::start());
    let with = |server: SocketAddr| config(&[listener("inbound")], &[pool("upstream", &[server])], "upstream");
    let mut gate = Gate::start(&with(a.addr()));
    let inbound = gate.smtp_addr();
    send_ok(inbound, "first@example.org");
    assert_arrives("first@example.org", ("old server", &a), ("new server", &b));

    gate.reload(&with(b.addr()));
    send_ok(inbound, "second@example.org");
    assert_arrives("second@example.org", ("new server", &b), ("old server", &a));
}

/// A reload that cannot bind a new listener is refused, and the listeners that were running
/// keep running.
#[test]
fn a_listener_that_cannot_bind_refuses_the_reload_and_keeps_the_old_listeners() {
    let (a, b) = (Upstream::start(), Upstream::start());
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_addr = taken.local_addr().expect("local_addr");
    let pools = [pool("a", &[a.addr()]), pool("b", &[b.addr()])];
    let gate = Gate::start(&config(&[listener("inbound")], &pools, "a"));
    let inbound = gate.smtp_addr();

    let clash = format!("[[listener]]\nname = \"clash\"\naddress = \"{taken_addr}\"\n");
    let errors = gate.reload_refused(&config(&[listener("inbound"), clash], &pools, "b"));
    assert!(
        errors.iter().any(|l| l.contains(&taken_addr.to_string())),
        "the bind error does not name {taken_addr}: {errors:#?}"
    );

    send_ok(inbound, "after-refusal@example.org");
    assert_arrives("after-refusal@example.org", ("a", &a), ("b", &b));
    drop(taken);
}

/// A message spooled with an after-queue scan still to run (its scanner is down, so the scan
/// fails closed and is retried), then a reload that removes that filter: the message is held and
/// counted, never delivered around its scan.
#[test]
fn a_message_whose_scan_filter_a_reload_removed_is_held_not_delivered() {
    let up = Upstream::start();
    let plain = config(&[listener("inbound")], &[pool("a", &[up.addr()])], "a");
    let scanned = plain.replace(
        "relay_networks = [\"127.0.0.0/8\"]\n",
        "relay_networks = [\"127.0.0.0/8\"]\nfilters = [\"av\"]\n",
    ) + &format!(
        "\n[[filter]]\nname = \"av\"\nkind = \"clamav\"\nstage = \"after_queue\"\non_error = \"tempfail\"\n\
         address = \"{}\"\n",
        dead_address()
    );
    let mut gate = Gate::start(&scanned);
    send_ok(gate.smtp_addr(), "scanned@example.org");
    assert!(
        wait_until(SOON, || gate
            .stderr_lines()
            .iter()
            .any(|l| l.contains("filter failed") && l.contains("av"))),
        "the scan never ran"
    );

    gate.reload(&plain);
    assert!(
        wait_until(SOON, || gate.try_metric("smtpgate_scan_held_total").unwrap_or(0.0)
            >= 1.0),
        "the message was not held"
    );
    assert!(
        gate.stderr_lines()
            .iter()
            .any(|l| l.contains("no longer configured") && l.contains("av")),
        "the hold is not reported"
    );
    // Held for good: later retries hold it again, and nothing reaches the upstream.
    assert!(
        wait_until(SOON, || gate.try_metric("smtpgate_scan_held_total").unwrap_or(0.0)
            >= 2.0),
        "the message was not held again on its next try"
    );
    assert!(up.messages().is_empty(), "delivered without its scan: {:?}", rcpts(&up));
    assert_eq!(gate.metric("smtpgate_queue_depth"), 1.0);
}

/// Waits until `metric` has counted at least `least`, or fails with `why`.
fn assert_counted(gate: &Gate, metric: &str, least: f64, why: &str) {
    assert!(
        wait_until(SOON, || gate.try_metric(metric).unwrap_or(0.0) >= least),
        "{why} ({metric} = {:?})",
        gate.try_metric(metric)
    );
}

/// Held for good: the hold is reported naming what is gone, a later retry holds the message
/// again, and nothing reaches `up`.
fn assert_held(gate: &Gate, up: &Upstream, what: &str) {
    assert_counted(gate, "smtpgate_delivery_held_total", 1.0, "the message was not held");
    // The log line reaches the harness through a pipe, after the counter: wait for it too.
    assert!(
        wait_until(SOON, || gate
            .stderr_lines()
            .iter()
            .any(|l| l.contains("no longer configured") && l.contains(what))),
        "the hold is not reported"
    );
    assert_counted(
        gate,
        "smtpgate_delivery_held_total",
        2.0,
        "not held again on its next try",
    );
    assert!(up.messages().is_empty(), "delivered another way: {:?}", rcpts(up));
    assert_eq!(gate.metric("smtpgate_queue_depth"), 1.0);
}

/// A message deferred for pool `a` (its server is down), then a reload that replaces `a` by `b`
/// (up): the message is held, never sent to `b`, which it was not routed to.
#[test]
fn a_message_whose_pool_a_reload_removed_is_held_not_sent_elsewhere() {
    let up = Upstream::start();
    let before = config(&[listener("inbound")], &[pool("a", &[dead_address()])], "a");
    let mut gate = Gate::start(&before);
    send_ok(gate.smtp_addr(), "pooled@example.org");
    assert_counted(&gate, "smtpgate_messages_deferred_total", 1.0, "never tried");

    gate.reload(&config(&[listener("inbound")], &[pool("b", &[up.addr()])], "b"));
    assert_held(&gate, &up, "pool");
}

/// A message of stream `bulk`, deferred (its MX is down), then a reload that removes the stream
/// and brings the MX up: the message is held, never sent outside its stream (from the default
/// stream's addresses, under the default stream's limits).
#[test]
fn a_message_whose_stream_a_reload_removed_is_held_not_sent_outside_it() {
    use std::net::Ipv4Addr;
    use support::{DnsServer, DnsTable};
    let up = Upstream::start();
    let dns = DnsServer::start(
        DnsTable::new()
            .mx("one.test", 10, "mx.one.test")
            .a("mx.one.test", Ipv4Addr::LOCALHOST),
    );
    let with = |stream: &str, port: u16| {
        format!(
            "hostname = \"gate.example.test\"\nshutdown_timeout = \"5s\"\n\n[spool]\ndir = \"spool\"\n\n\
             [admin]\naddress = \"127.0.0.1:0\"\n\n{}\n[dns]\nnameservers = [\"{}\"]\n\n{stream}\
             [queue]\nretry = [\"1s\"]\nsmtp_port = {port}\n",
            listener("inbound"),
            dns.addr()
        )
    };
    let bulk =
        "[[stream]]\nname = \"bulk\"\n\n[[route]]\nwhen = { sender = \"alice@example.test\" }\nstream = \"bulk\"\n\n";
    let mut gate = Gate::start(&with(bulk, dead_address().port()));
    let t = smtplib_send(
        gate.smtp_addr(),
        "alice@example.test",
        &["reader@one.test"],
        &message("s-1@example.test", "bulk", "hello"),
    );
    assert!(t.reply("END-OF-DATA").starts_with("250 "), "not accepted:\n{t}");
    assert_counted(&gate, "smtpgate_messages_deferred_total", 1.0, "never tried");

    gate.reload(&with("", up.addr().port()));
    assert_held(&gate, &up, "stream");
}
