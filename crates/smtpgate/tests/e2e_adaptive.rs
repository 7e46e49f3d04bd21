//! Adaptive throttling end to end: a gate delivering by MX (through the test DNS server) to the
//! scriptable upstream, whose `ratelimit-rcpt@` recipient answers like a provider throttling an IP
//! (`451 4.7.650 ... temporarily rate limited`). The shaping file's `[[adaptive]]` rules act on
//! that reply; the actions are watched on the admin address and changed with `smtpgate throttle`.

mod support;

use std::fs;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use support::{
    DnsServer, DnsTable, Gate, Upstream, http_get, message, mx_gate_toml, run_smtpgate, smtplib, wait_until,
};

const LOOPBACK: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const SOON: Duration = Duration::from_secs(20);
const KEY: &str = "default/domain:one.test";

fn dns() -> DnsServer {
    DnsServer::start(
        DnsTable::new()
            .mx("one.test", 10, "mx.one.test")
            .mx("two.test", 10, "mx.two.test")
            .a("mx.one.test", LOOPBACK)
            .a("mx.two.test", LOOPBACK),
    )
}

/// A gate with `shaping` as its shaping file.
fn gate(dns: &DnsServer, upstream: &Upstream, shaping: &str) -> Gate {
    let config = mx_gate_toml(
        dns.addr(),
        upstream.addr().port(),
        "[shaping]\nfile = \"shaping.toml\"\n",
    );
    Gate::start_with_files(&config, &[("shaping.toml", shaping)])
}

/// Sends one message per recipient over one session; each must be accepted.
fn send(gate: &Gate, rcpts: &[&str]) {
    let body = message("m@example.test", "adaptive", "Hello.");
    let mut script = String::from("s = connect()\n");
    for r in rcpts {
        script.push_str(&format!("send(s, 'alice@example.test', [{r:?}], {body:?})\n"));
    }
    script.push_str("quit(s)\n");
    let t = smtplib(gate.smtp_addr(), &script);
    assert!(t.succeeded(), "{t}");
    assert!(t.replies("END-OF-DATA").iter().all(|r| r.starts_with("250 ")), "{t}");
}

/// The actions the admin address lists.
fn throttles(gate: &Gate) -> Vec<serde_json::Value> {
    let (status, body) = http_get(gate.admin_addr(), "/api/v1/throttles");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("bad JSON {body:?}: {e}"))
}

fn action(gate: &Gate, key: &str) -> Option<serde_json::Value> {
    throttles(gate).into_iter().find(|a| a["key"] == key)
}

/// Sends a message the upstream answers "rate limited", and returns the action it sets on
/// one.test.
fn provoke(gate: &Gate) -> serde_json::Value {
    send(gate, &["ratelimit-rcpt@one.test"]);
    assert!(
        wait_until(SOON, || action(gate, KEY).is_some()),
        "no action: {:?}",
        throttles(gate)
    );
    action(gate, KEY).unwrap()
}

/// `smtpgate throttle <args>` against the gate's admin address; must succeed.
fn throttle_cli(gate: &Gate, args: &[&str]) -> String {
    let admin = gate.admin_addr().to_string();
    let mut all = vec!["throttle", "--admin", admin.as_str()];
    all.extend_from_slice(args);
    let ran = run_smtpgate(&all, None, None);
    assert!(ran.succeeded(), "smtpgate {all:?} failed: {ran:?}");
    ran.stdout
}

/// A provider's "rate limited" reply suspends its destination (and only it) for the rule's hour;
/// the action is listed with its rule, reason and times, logged, and cancelled from the command
/// line, after which the held mail leaves at once.
#[test]
fn a_rate_limit_reply_suspends_the_destination_until_cancelled() {
    let upstream = Upstream::fail_first(1);
    let dns = dns();
    let gate = gate(
        &dns,
        &upstream,
        "[[adaptive]]\nname = \"ip-reputation\"\nstatus = \"4.7.650\"\ntext = \"rate limited\"\n\
         action = \"suspend\"\nduration = \"1h\"\n",
    );
    let a = provoke(&gate);
    assert_eq!(a["rule"], "ip-reputation", "{a}");
    assert_eq!(a["action"], "suspend", "{a}");
    assert_eq!(a["by"], "rule", "{a}");
    assert!(a["reason"].as_str().unwrap().starts_with("451 4.7.650"), "{a}");
    assert!(
        a["suspended_until"].as_str().unwrap() > a["since"].as_str().unwrap(),
        "{a}"
    );
    assert!(
        gate.stderr_lines()
            .iter()
            .any(|l| l.contains("throttle: started") && l.contains(KEY))
    );

    // Held: mail for one.test waits; mail for two.test leaves.
    send(&gate, &["a@one.test", "b@one.test", "c@two.test"]);
    assert!(wait_until(SOON, || upstream.delivered_to("c@two.test") == 1));
    let listed = throttle_cli(&gate, &["list"]);
    assert!(listed.contains(KEY) && listed.contains("ip-reputation"), "{listed}");
    assert_eq!(upstream.delivered_to("a@one.test"), 0, "delivered while suspended");
    assert_eq!(upstream.delivered_to("b@one.test"), 0, "delivered while suspended");

    let out = throttle_cli(&gate, &["cancel", KEY]);
    assert!(out.contains("cancelled"), "{out}");
    assert!(
        wait_until(SOON, || upstream.delivered_to("a@one.test") == 1
            && upstream.delivered_to("b@one.test") == 1
            && upstream.delivered_to("ratelimit-rcpt@one.test") == 1),
        "held mail did not leave after the cancel: {:?}",
        upstream
            .messages()
            .iter()
            .map(|m| m.rcpt_addresses().join(","))
            .collect::<Vec<_>>()
    );
    assert!(action(&gate, KEY).is_none());
    assert!(
        gate.stderr_lines()
            .iter()
            .any(|l| l.contains("throttle: cancelled by the administrator") && l.contains(KEY))
    );
    // Cancelling again says there is nothing to cancel.
    let admin = gate.admin_addr().to_string();
    let again = run_smtpgate(&["throttle", "--admin", &admin, "cancel", KEY], None, None);
    assert!(
        !again.succeeded() && again.stderr.contains("no adaptive action"),
        "{again:?}"
    );
}

/// A throttle lowers the destination's message rate by its factor: 6 messages at 600/min would
/// leave within 0.5 s, at 600/min x 0.2 they take at least 2.5 s. The administrator then edits
/// the action (seen in `/throttles` and `/shaping`), and starts one by hand on another domain.
#[test]
fn a_throttle_lowers_the_rate_and_the_administrator_edits_it() {
    let upstream = Upstream::fail_first(1);
    let dns = dns();
    let gate = gate(
        &dns,
        &upstream,
        "[default]\nmax_message_rate = \"600/min\"\nmax_connections = 4\n\n\
         [[adaptive]]\nname = \"slow-down\"\ncode = \"451\"\ncategory = \"rate_limited\"\naction = \"throttle\"\n\
         rate_factor = 0.2\nconnection_factor = 0.5\nduration = \"1h\"\nrecover = \"1h\"\n",
    );
    let a = provoke(&gate);
    assert_eq!(a["action"], "rate x0.2, connections x0.5", "{a}");
    assert_eq!(a["rate_factor_now"], 0.2, "{a}");

    let rcpts: Vec<String> = (0..6).map(|i| format!("r{i}@one.test")).collect();
    let refs: Vec<&str> = rcpts.iter().map(String::as_str).collect();
    send(&gate, &refs);
    assert!(wait_until(Duration::from_secs(60), || refs
        .iter()
        .all(|r| upstream.delivered_to(r) == 1)));
    let mut times: Vec<_> = upstream
        .messages()
        .iter()
        .filter(|m| m.rcpt_addresses().iter().any(|r| refs.contains(r)))
        .map(|m| m.at)
        .collect();
    times.sort();
    let span = times[5] - times[0];
    assert!(
        span >= Duration::from_millis(2400),
        "6 messages at 120/min took only {span:?}"
    );

    let (_, shaping) = http_get(gate.admin_addr(), "/api/v1/shaping");
    let usage: Vec<serde_json::Value> = serde_json::from_str(&shaping).unwrap();
    let one = usage.iter().find(|u| u["key"] == "domain:one.test").expect(&shaping);
    assert_eq!(one["max_message_rate"], "120/min", "{shaping}");
    assert_eq!(one["max_connections"], 2, "{shaping}");

    // Edited by hand: a milder rate, and the limits follow.
    let out = throttle_cli(
        &gate,
        &[
            "set",
            KEY,
            "--rate-factor",
            "0.5",
            "--reason",
            "checked with the provider",
        ],
    );
    assert!(out.contains("\"rate_factor_now\": 0.5"), "{out}");
    let a = action(&gate, KEY).unwrap();
    assert_eq!(
        (a["reason"].as_str(), a["rule"].as_str()),
        (Some("checked with the provider"), Some("slow-down"))
    );
    let (_, shaping) = http_get(gate.admin_addr(), "/api/v1/shaping");
    assert!(shaping.contains("\"300/min\""), "{shaping}");
    assert!(
        gate.stderr_lines()
            .iter()
            .any(|l| l.contains("throttle: set by the administrator"))
    );

    // Started by hand on a domain no rule touched.
    let out = throttle_cli(
        &gate,
        &["set", "default/domain:two.test", "--suspend", "--duration", "1h"],
    );
    assert!(out.contains("\"by\": \"admin\""), "{out}");
    send(&gate, &["held@two.test", "r9@one.test"]);
    assert!(wait_until(SOON, || upstream.delivered_to("r9@one.test") == 1));
    assert_eq!(
        upstream.delivered_to("held@two.test"),
        0,
        "delivered while suspended by hand"
    );

    // Mistakes get a clear error.
    let admin = gate.admin_addr().to_string();
    let bad = run_smtpgate(
        &["throttle", "--admin", &admin, "set", KEY, "--rate-factor", "2"],
        None,
        None,
    );
    assert!(!bad.succeeded() && bad.stderr.contains("rate_factor"), "{bad:?}");
    let bad = run_smtpgate(
        &["throttle", "--admin", &admin, "set", "nowhere.test", "--duration", "1m"],
        None,
        None,
    );
    assert!(!bad.succeeded() && bad.stderr.contains("<stream>/domain:"), "{bad:?}");
    let bad = run_smtpgate(
        &[
            "throttle",
            "--admin",
            &admin,
            "set",
            "default/domain:three.test",
            "--rate-factor",
            "0.5",
        ],
        None,
        None,
    );
    assert!(!bad.succeeded() && bad.stderr.contains("needs a duration"), "{bad:?}");
}

/// `check-config` refuses a shaping file with a broken rule, naming it.
#[test]
fn a_broken_rule_is_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    let shaping = dir.path().join("shaping.toml");
    fs::write(
        &shaping,
        "[[adaptive]]\ncode = \"421\"\naction = \"pause\"\nduration = \"1h\"\n",
    )
    .unwrap();
    let config = dir.path().join("smtpgate.toml");
    let toml = mx_gate_toml(
        "127.0.0.1:53".parse().unwrap(),
        25,
        "[shaping]\nfile = \"shaping.toml\"\n",
    );
    fs::write(&config, toml).unwrap();
    let ran = run_smtpgate(&["check-config", path(&config)], None, Some(dir.path()));
    assert!(!ran.succeeded(), "{ran:?}");
    let all = format!("{}{}", ran.stdout, ran.stderr);
    assert!(all.contains("adaptive[0].action") && all.contains("pause"), "{all}");
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}
