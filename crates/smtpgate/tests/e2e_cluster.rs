//! Several nodes sharing one Redis (a real redis-server): a shared 600/min limit for one
//! destination holds for all nodes together, and a suppression or an adaptive action learned on
//! one node applies on the other.

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use support::{
    DnsServer, DnsTable, Gate, RedisServer, SOON, Upstream, http_get, message, run_smtpgate, smtplib, smtplib_send,
    wait_until,
};

fn node(dns: SocketAddr, upstream: &Upstream, redis: &RedisServer, shaping: &std::path::Path) -> Gate {
    Gate::start(&format!(
        "hostname = \"gate.example.test\"\nshutdown_timeout = \"5s\"\n\n[spool]\ndir = \"spool\"\n\n\
         [admin]\naddress = \"127.0.0.1:0\"\n\n[[listener]]\nname = \"inbound\"\naddress = \"127.0.0.1:0\"\n\
         relay_networks = [\"127.0.0.0/8\"]\n\n[dns]\nnameservers = [\"{dns}\"]\n\n[shaping]\nfile = {shaping:?}\n\n\
         [redis]\nurl = \"{url}\"\nprefix = \"cluster-test\"\n\n[queue]\nretry = [\"30s\"]\nsmtp_port = {port}\n",
        url = redis.url(),
        port = upstream.addr().port()
    ))
}

fn cluster() -> (Upstream, DnsServer, RedisServer, tempfile::TempDir, Gate, Gate) {
    cluster_at("600/min")
}

/// Two nodes sharing `rate` for one.test through one Redis.
fn cluster_at(rate: &str) -> (Upstream, DnsServer, RedisServer, tempfile::TempDir, Gate, Gate) {
    let upstream = Upstream::start();
    let dns = DnsServer::start(
        DnsTable::new()
            .mx("one.test", 10, "mx.one.test")
            .a("mx.one.test", Ipv4Addr::LOCALHOST),
    );
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let shaping = dir.path().join("shaping.toml");
    std::fs::write(
        &shaping,
        format!(
            "[domain.\"one.test\"]\nmax_message_rate = \"{rate}\"\n\n\
             [[adaptive]]\nname = \"ip-reputation\"\nstatus = \"4.7.650\"\naction = \"suspend\"\nduration = \"1h\"\n"
        ),
    )
    .unwrap();
    let a = node(dns.addr(), &upstream, &redis, &shaping);
    let b = node(dns.addr(), &upstream, &redis, &shaping);
    (upstream, dns, redis, dir, a, b)
}

fn send_many(gate: &Gate, n: usize, to: &str) {
    let body = message("{i}@example.test", "shared", "Hello.");
    let script = format!(
        "s = connect()\nfor i in range({n}):\n    send(s, 'alice@example.test', [{to:?}], {body:?}.replace('{{i}}', str(i)))\nquit(s)\n"
    );
    let t = smtplib(gate.smtp_addr(), &script);
    assert!(t.succeeded(), "{t}");
    assert_eq!(t.replies("END-OF-DATA").len(), n, "{t}");
}

/// Two nodes each given 40 messages for one domain limited to 600/min (10/s) together: the
/// destination sees them at 10/s within 10%, not at 20/s.
#[test]
fn a_shared_rate_holds_for_all_nodes_together() {
    let (upstream, _dns, _redis, _dir, a, b) = cluster();
    let (ga, gb) = (&a, &b);
    std::thread::scope(|s| {
        s.spawn(|| send_many(ga, 40, "x@one.test"));
        s.spawn(|| send_many(gb, 40, "y@one.test"));
    });
    let got = upstream.wait_for(80, Duration::from_secs(60));
    let mut times: Vec<_> = got.iter().map(|m| m.at).collect();
    times.sort();
    let span = (times[79] - times[0]).as_secs_f64();
    let rate = 79.0 / span;
    assert!(
        (9.0..=11.0).contains(&rate),
        "{rate:.2} messages/s over {span:.2}s, want 10 ± 10%"
    );
    let from_a = got.iter().filter(|m| m.rcpt_addresses() == ["x@one.test"]).count();
    assert_eq!(from_a, 40, "both nodes delivered everything");
}

/// Regression (issue 13, point 3): two nodes sharing 60/min (one message a second) for one
/// domain, 10 messages given to each at the same time. The limit holds exactly for both together
/// (every two arrivals at least 0.9 s apart, all 20 within 21 s), and the nodes take turns: each
/// node's first message leaves within 3 s of its 10 being queued, and while both have mail
/// waiting, neither sends more than 2 in a row. (Each node used to reserve a slot for every
/// message it held, so the node that asked first sent all 10 before the other sent one: the
/// other's first waited about 10 s.)
#[test]
fn nodes_sharing_a_rate_take_turns() {
    let (upstream, _dns, _redis, _dir, e, f) = cluster_at("60/min");
    let (ge, gf) = (&e, &f);
    let queued = std::thread::scope(|s| {
        let queued_at = |gate, rcpt| {
            move || {
                send_many(gate, 10, rcpt);
                std::time::Instant::now()
            }
        };
        let e = s.spawn(queued_at(ge, "e@one.test"));
        let f = s.spawn(queued_at(gf, "f@one.test"));
        [("E", e.join().unwrap()), ("F", f.join().unwrap())]
    });
    let got = upstream.wait_for(20, Duration::from_secs(90));
    let mut arrivals: Vec<(std::time::Instant, char)> = got
        .iter()
        .map(|m| (m.at, if m.rcpt_addresses() == ["e@one.test"] { 'E' } else { 'F' }))
        .collect();
    arrivals.sort_by_key(|(at, _)| *at);
    let order: String = arrivals.iter().map(|(_, node)| *node).collect();
    for pair in arrivals.windows(2) {
        let gap = pair[1].0 - pair[0].0;
        assert!(gap >= Duration::from_millis(900), "two messages {gap:?} apart: {order}");
    }
    let span = arrivals[19].0 - arrivals[0].0;
    assert!(
        span < Duration::from_secs(21),
        "20 messages at 1/s took {span:?}: {order}"
    );
    for (node, queued) in queued {
        let node = node.chars().next().unwrap();
        let first = arrivals.iter().find(|(_, n)| *n == node).unwrap().0;
        let waited = first.saturating_duration_since(queued);
        assert!(
            waited < Duration::from_secs(3),
            "node {node}'s first message left {waited:?} after its mail was queued: {order}"
        );
    }
    // From the later node's first message to the earlier node's last, both had mail waiting.
    let both_from = order.find('E').max(order.find('F')).unwrap();
    let both_to = order.rfind('E').min(order.rfind('F')).unwrap();
    assert!(both_from < both_to, "the nodes never took turns: {order}");
    let overlap = &order[both_from..=both_to];
    assert!(
        !overlap.contains("EEE") && !overlap.contains("FFF"),
        "a node sent 3 in a row while the other had mail waiting: {overlap} (all: {order})"
    );
}

/// A hard bounce seen by node A suppresses the address on node B too.
#[test]
fn a_suppression_learned_on_one_node_applies_on_the_other() {
    let (_upstream, _dns, _redis, _dir, a, b) = cluster();
    let sent = smtplib_send(
        a.smtp_addr(),
        "alice@example.test",
        &["reject-rcpt@one.test"],
        &message("m@example.test", "s", "b"),
    );
    assert!(sent.reply("END-OF-DATA").starts_with("250 "), "{sent}");
    // (The bounce to alice@example.test, a domain that does not exist here, is suppressed too.)
    assert!(
        wait_until(SOON, || a.metric("smtpgate_suppressed_addresses") >= 1.0),
        "node A never suppressed it"
    );
    let refused_on_b = || {
        let t = smtplib_send(
            b.smtp_addr(),
            "alice@example.test",
            &["reject-rcpt@one.test"],
            &message("n@example.test", "s", "b"),
        );
        t.reply("RCPT").starts_with("550 5.1.1 ")
    };
    assert!(
        wait_until(SOON, refused_on_b),
        "node B still accepts the suppressed address"
    );
    // Node B learned it from Redis: it never tried that address itself.
    let metrics = b.metrics();
    assert!(
        metrics.contains("smtpgate_failures_total{category=\"bad_mailbox\",class=\"5\"} 0"),
        "{metrics}"
    );
}

/// The adaptive actions the admin address of `gate` lists.
fn throttles(gate: &Gate) -> Vec<serde_json::Value> {
    let (status, body) = http_get(gate.admin_addr(), "/api/v1/throttles");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("bad JSON {body:?}: {e}"))
}

/// A provider's "rate limited" reply seen by node A suspends the destination on node B too;
/// cancelling it on node B ends it on node A, and B's held mail leaves.
#[test]
fn an_adaptive_action_learned_on_one_node_applies_on_the_other() {
    let (upstream, _dns, _redis, _dir, a, b) = cluster();
    let key = "default/domain:one.test";
    let t = smtplib_send(
        a.smtp_addr(),
        "alice@example.test",
        &["ratelimit-rcpt@one.test"],
        &message("r@example.test", "r", "R."),
    );
    assert!(t.reply("END-OF-DATA").starts_with("250 "), "{t}");
    assert!(
        wait_until(SOON, || throttles(&b)
            .iter()
            .any(|x| x["key"] == key && x["rule"] == "ip-reputation")),
        "node B did not learn the action: {:?}",
        throttles(&b)
    );
    assert!(
        b.stderr_lines()
            .iter()
            .any(|l| l.contains("throttle: learned from another node"))
    );

    let t = smtplib_send(
        b.smtp_addr(),
        "alice@example.test",
        &["held@one.test"],
        &message("h@example.test", "h", "H."),
    );
    assert!(t.reply("END-OF-DATA").starts_with("250 "), "{t}");
    let admin = b.admin_addr().to_string();
    let listed = run_smtpgate(&["throttle", "--admin", &admin, "show", key], None, None);
    assert!(listed.succeeded() && listed.stdout.contains("4.7.650"), "{listed:?}");
    assert!(
        upstream
            .messages()
            .iter()
            .all(|m| !m.rcpt_addresses().contains(&"held@one.test"))
    );

    let cancelled = run_smtpgate(&["throttle", "--admin", &admin, "cancel", key], None, None);
    assert!(cancelled.succeeded(), "{cancelled:?}");
    assert!(
        wait_until(SOON, || throttles(&a).is_empty()),
        "node A kept the action: {:?}",
        throttles(&a)
    );
    assert!(
        wait_until(SOON, || upstream
            .messages()
            .iter()
            .any(|m| m.rcpt_addresses().contains(&"held@one.test"))),
        "the held message did not leave node B"
    );
}
