//! End-to-end: the README's "Example: transactional and bulk mail to a big provider", as a mail
//! administrator would copy it.
//!
//! The gate delivers by MX, through the test DNS server, to the scriptable upstream, which stands
//! for every mail server: `provider.example` and `hosted.example` are both hosted by the provider
//! (MX hosts under `mail.provider.example`, so they share its rollup), `elsewhere.example` is not,
//! and `example.com` receives the bounces. The load comes from real clients: Postfix's
//! `smtp-source` for the newsletter and `swaks` for the password reset, as in the README. Each
//! effect is checked where it shows: rates and latencies at the upstream (`UpstreamMessage.at`),
//! limits, actions and suppressions on the admin address and through `smtpgate throttle` and
//! `smtpgate suppression`, the refusal at RCPT in the client's transcript.
//!
//! The two tests share nothing but the example, and run side by side.

mod support;

use std::net::Ipv4Addr;
use std::thread;
use std::time::{Duration, Instant};

use support::{
    DnsServer, DnsTable, Gate, SOON, Upstream, UpstreamMessage, http_get, message, run_smtpgate, smtp_source,
    smtplib_send, swaks, wait_until,
};

/// The README example's `smtpgate.toml`.
///
/// This must stay identical to the first TOML block of "### Example: transactional and bulk mail
/// to a big provider" in README.md; `readme_shows_this_example` checks that it does. The test
/// substitutes only addresses, paths and ports (see [`config`]): the listener and admin addresses
/// (`127.0.0.1:0`) and the spool dir. The example has no `[dns]` section and no `smtp_port`,
/// since a real gate asks the system's resolver and delivers to port 25; the test adds the two
/// lines that point them at the test DNS server and at the scriptable upstream's port:
/// `smtp_port` under `[queue]`, and a `[dns]` section at the end. Nothing else is added.
const EXAMPLE: &str = r#"hostname = "gate.example.com"

[spool]
dir = "/var/spool/smtpgate"

[admin]
address = "127.0.0.1:8025"              # /api/v1/shaping, /api/v1/throttles, /api/v1/suppression, /metrics

[[listener]]
name = "relay"
address = "127.0.0.1:2525"
relay_networks = ["127.0.0.0/8"]

[queue]
max_connections = 200                   # outbound connections in all; beyond it, priority decides

[[stream]]
name = "default"                        # mail no rule puts in a stream: password resets, receipts
priority = 10

[[stream]]
name = "bulk"
priority = -10

[[route]]
when = { sender = "news@example.com" }
stream = "bulk"                         # no pool: delivered by MX, like everything else

[shaping]
file = "shaping.toml"

[suppression]
action = "reject"                       # a hard-bounced address gets 550 5.1.1 at RCPT
"#;

/// The README example's `shaping.toml`, used as it is (the second TOML block of the example).
const SHAPING: &str = r#"[default]                                # every other domain, each on its own
max_connections = 10
max_message_rate = "100/min"

[mx."*.mail.provider.example"]           # every domain the provider hosts, together
max_connections = 5
max_message_rate = "1200/min"

[[adaptive]]
name = "provider-rate-limited"
mx = "*.mail.provider.example"
status = "4.7.650"                       # "temporarily rate limited due to IP reputation"
action = "suspend"
duration = "1h"

[[adaptive]]
name = "provider-busy"
mx = "*.mail.provider.example"
code = "421"                             # "too many connections, try again later"
action = "throttle"
rate_factor = 0.5
connection_factor = 0.5
duration = "10m"
recover = "30m"
"#;

const PROVIDER_RULE: &str = "provider-rate-limited";
/// The adaptive action's key: the provider's rollup, in the default stream.
const PROVIDER_KEY: &str = "default/mx:*.mail.provider.example";
/// The key of an action on the provider's rollup in the bulk stream.
const BULK_KEY: &str = "bulk/mx:*.mail.provider.example";
/// The rollup's key on `/shaping` (per stream).
const ROLLUP: &str = "mx:*.mail.provider.example";
/// The rollup's `max_message_rate` (1200/min) in messages per second.
const ROLLUP_PER_SECOND: f64 = 20.0;
/// Newsletter messages per domain: 240 in all, 12 s at 20/s.
const PER_DOMAIN: usize = 120;
const NEWSLETTER: &str = "news@example.com";
const NOREPLY: &str = "noreply@example.com";

/// `text` with `from` replaced by `to`; `from` must occur exactly once, so that a change to the
/// example that the test does not know about fails here rather than testing something else.
fn substitute(text: &str, from: &str, to: &str) -> String {
    assert_eq!(text.matches(from).count(), 1, "{from:?} must occur once in the example");
    text.replace(from, to)
}

/// The example with this test's addresses, spool, name servers and SMTP port.
fn config(dns: &DnsServer, upstream: &Upstream) -> String {
    let mut c = EXAMPLE.to_string();
    c = substitute(&c, "dir = \"/var/spool/smtpgate\"", "dir = \"spool\"");
    c = substitute(&c, "address = \"127.0.0.1:8025\"", "address = \"127.0.0.1:0\"");
    c = substitute(&c, "address = \"127.0.0.1:2525\"", "address = \"127.0.0.1:0\"");
    let port = upstream.addr().port();
    c = substitute(&c, "[queue]\n", &format!("[queue]\nsmtp_port = {port}\n"));
    c.push_str(&format!("\n[dns]\nnameservers = [\"{}\"]\n", dns.addr()));
    c
}

#[test]
fn readme_shows_this_example() {
    let readme = concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md");
    let readme = std::fs::read_to_string(readme).expect("README.md");
    let config = format!("`smtpgate.toml`:\n\n```toml\n{EXAMPLE}```");
    let shaping = format!("`shaping.toml`, next to it:\n\n```toml\n{SHAPING}```");
    assert!(
        readme.contains(&config) && readme.contains(&shaping),
        "README.md's deliverability example and EXAMPLE/SHAPING in this test differ: keep them identical"
    );
}

// ---------------------------------------------------------------------------------------------
// The world around the gate

/// Two domains hosted by the provider, one elsewhere, and the shop's own (for bounces); every
/// mail server is 127.0.0.1, where the scriptable upstream listens on `smtp_port`.
fn dns() -> DnsServer {
    let lo = Ipv4Addr::LOCALHOST;
    DnsServer::start(
        DnsTable::new()
            .mx("provider.example", 10, "mx1.mail.provider.example")
            .mx("hosted.example", 10, "mx2.mail.provider.example")
            .mx("elsewhere.example", 10, "mx.elsewhere.example")
            .mx("example.com", 10, "mx.example.com")
            .a("mx1.mail.provider.example", lo)
            .a("mx2.mail.provider.example", lo)
            .a("mx.elsewhere.example", lo)
            .a("mx.example.com", lo),
    )
}

fn start(dns: &DnsServer, upstream: &Upstream) -> Gate {
    Gate::start_with_files(&config(dns, upstream), &[("shaping.toml", SHAPING)])
}

// ---------------------------------------------------------------------------------------------
// Watching

/// A JSON list from the admin address.
fn admin_list(gate: &Gate, path: &str) -> Vec<serde_json::Value> {
    let (status, body) = http_get(gate.admin_addr(), path);
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: bad JSON {body:?}: {e}"))
}

/// `GET /shaping`'s entry for `key` in `stream`, if the destination is in use.
fn shaping(gate: &Gate, stream: &str, key: &str) -> Option<serde_json::Value> {
    admin_list(gate, "/api/v1/shaping")
        .into_iter()
        .find(|u| u["stream"] == stream && u["key"] == key)
}

fn throttle(gate: &Gate, key: &str) -> Option<serde_json::Value> {
    admin_list(gate, "/api/v1/throttles")
        .into_iter()
        .find(|a| a["key"] == key)
}

/// `smtpgate <args>` against the gate's admin address; must succeed. Returns its output.
fn cli(gate: &Gate, command: &str, args: &[&str]) -> String {
    let admin = gate.admin_addr().to_string();
    let mut all = vec![command, "--admin", admin.as_str()];
    all.extend_from_slice(args);
    let ran = run_smtpgate(&all, None, None);
    assert!(ran.succeeded(), "smtpgate {all:?} failed: {ran:?}");
    ran.stdout
}

/// The messages the upstream accepted for `rcpt`.
fn delivered_to(upstream: &Upstream, rcpt: &str) -> Vec<UpstreamMessage> {
    let mut got = upstream.messages();
    got.retain(|m| m.rcpt_addresses().contains(&rcpt));
    got
}

/// The first message the upstream accepts for `rcpt`; panics after `within`.
fn arrival(upstream: &Upstream, rcpt: &str, within: Duration) -> UpstreamMessage {
    let arrived = wait_until(within, || !delivered_to(upstream, rcpt).is_empty());
    assert!(arrived, "nothing arrived for {rcpt} within {within:?}");
    delivered_to(upstream, rcpt).remove(0)
}

// ---------------------------------------------------------------------------------------------
// Sending

/// One message through the gate with Python's smtplib; returns the transcript's RCPT and
/// END-OF-DATA replies (the latter empty when no recipient was accepted).
fn send(gate: &Gate, from: &str, to: &str) -> (String, Option<String>) {
    let body = message(&format!("{}@example.com", to.replace('@', ".")), "hello", "Hello.");
    let t = smtplib_send(gate.smtp_addr(), from, &[to], &body);
    assert!(t.succeeded(), "{t}");
    (t.reply("RCPT"), t.replies("END-OF-DATA").pop())
}

/// One message that the gate must queue.
fn queue(gate: &Gate, from: &str, to: &str) {
    let (rcpt, end) = send(gate, from, to);
    assert!(rcpt.starts_with("250 "), "RCPT <{to}>: {rcpt}");
    let end = end.unwrap_or_default();
    assert!(end.starts_with("250 "), "end of data for <{to}>: {end}");
}

/// The newsletter: `PER_DOMAIN` messages from the newsletter sender to one reader at each of
/// `domains`, one `smtp-source` per domain, all at once.
fn newsletter(gate: &Gate, domains: &[&str]) {
    let target = gate.smtp_addr().to_string();
    let count = PER_DOMAIN.to_string();
    thread::scope(|s| {
        let runs: Vec<_> = domains
            .iter()
            .map(|domain| {
                let to = format!("reader@{domain}");
                let (target, count) = (&target, &count);
                s.spawn(move || {
                    let args = [
                        "-s", "5", "-m", count, "-l", "2000", "-f", NEWSLETTER, "-t", &to, target,
                    ];
                    smtp_source(&args, Duration::from_secs(60))
                })
            })
            .collect();
        for run in runs {
            let (status, output) = run.join().expect("smtp-source thread");
            assert!(status.is_some_and(|s| s.success()), "smtp-source: {status:?}\n{output}");
        }
    });
}

// ---------------------------------------------------------------------------------------------
// The scenarios

/// Messages per second over `times` (sorted): intervals over the span from first to last.
fn rate(times: &[Instant]) -> f64 {
    let span = times[times.len() - 1] - times[0];
    (times.len() - 1) as f64 / span.as_secs_f64()
}

/// The newsletter to two of the provider's domains leaves at the rollup's 1200/min for both
/// together, never more than 20 in a second; a password reset sent
/// to the provider in the middle of that backlog leaves at once; `/shaping` shows the rollup's
/// limits and connections, per stream.
#[test]
fn the_newsletter_keeps_the_providers_rate_and_a_password_reset_leaves_at_once() {
    let upstream = Upstream::start();
    let dns = dns();
    let gate = start(&dns, &upstream);
    let domains = ["provider.example", "hosted.example"];
    let total = PER_DOMAIN * domains.len();
    newsletter(&gate, &domains);
    let bulk = |upstream: &Upstream| {
        let mut got = upstream.messages();
        got.retain(|m| m.mail_from == NEWSLETTER);
        got
    };

    // Some of the newsletter is out, most of it is waiting: send the password reset now.
    assert!(
        wait_until(SOON, || bulk(&upstream).len() >= 40),
        "the newsletter does not leave"
    );
    let server = gate.smtp_addr().to_string();
    let started = Instant::now();
    let (status, transcript) = swaks(&[
        "--server",
        &server,
        "--from",
        NOREPLY,
        "--to",
        "ann@provider.example",
        "--header",
        "Subject: Your password reset",
    ]);
    assert!(status.success(), "{transcript}");
    let reset = arrival(&upstream, "ann@provider.example", SOON);
    let took = reset.at - started;
    eprintln!("password reset: {took:?} from swaks' start to the upstream");
    assert!(took < Duration::from_secs(2), "the password reset took {took:?}");
    let behind = bulk(&upstream).len();
    assert!(
        total - behind >= 100,
        "the newsletter's backlog was only {} messages",
        total - behind
    );

    // /shaping, while the newsletter still flows: the rollup's limits and its connections in the
    // bulk stream, and the default stream's own entry for the provider.
    let mut seen = None;
    let connected = wait_until(SOON, || {
        seen = shaping(&gate, "bulk", ROLLUP);
        seen.as_ref().is_some_and(|u| u["connections"].as_u64() >= Some(1))
    });
    let rollup = seen.expect("no bulk rollup on /shaping");
    assert!(connected, "no open connection on /shaping: {rollup}");
    assert_eq!(rollup["max_message_rate"], "1200/min", "{rollup}");
    assert_eq!(rollup["max_connections"], 5, "{rollup}");
    assert!(rollup["connections"].as_u64() <= Some(5), "{rollup}");
    let default = shaping(&gate, "default", ROLLUP).expect("no default-stream rollup on /shaping");
    assert_eq!(default["max_message_rate"], "1200/min", "{default}");
    assert!(
        bulk(&upstream).len() < total,
        "the newsletter was over before /shaping was read"
    );

    // The whole newsletter, at the rollup's rate for both domains together.
    let all_out = wait_until(Duration::from_secs(40), || bulk(&upstream).len() >= total);
    assert!(
        all_out,
        "{} of {total} newsletter messages arrived",
        bulk(&upstream).len()
    );
    let sent = bulk(&upstream);
    assert_eq!(sent.len(), total, "duplicates at the upstream");
    let mut times: Vec<Instant> = sent.iter().map(|m| m.at).collect();
    times.sort();
    let overall = rate(&times);
    eprintln!(
        "newsletter: {total} messages in {:?}, {overall:.2}/s",
        times[total - 1] - times[0]
    );
    assert!(
        (ROLLUP_PER_SECOND * 0.9..=ROLLUP_PER_SECOND * 1.1).contains(&overall),
        "the newsletter left at {overall:.2}/s, not 20/s"
    );
    // Messages start exactly 50 ms apart; arrival times at the upstream jitter, which can bring
    // one more in at each edge of a one-second window on a loaded machine.
    for (i, t) in times.iter().enumerate() {
        let in_second = times[i..]
            .iter()
            .take_while(|u| **u < *t + Duration::from_secs(1))
            .count();
        assert!(in_second <= 22, "{in_second} newsletter messages within one second");
    }
    // Both domains were served, under the one limit: had each domain its own 1200/min, they
    // would have left side by side at 40/s. And they took turns: a connection gives its place to
    // the other domain's waiting worker after a fair share, so in the first half of the run each
    // domain had at least a quarter of the messages (not one domain first, then the other).
    let mut by_time: Vec<&UpstreamMessage> = sent.iter().collect();
    by_time.sort_by_key(|m| m.at);
    for domain in domains {
        let reader = format!("reader@{domain}");
        let own = sent.iter().filter(|m| m.rcpt_addresses() == [reader.as_str()]).count();
        assert_eq!(own, PER_DOMAIN, "{domain}");
        let early = by_time[..total / 2]
            .iter()
            .filter(|m| m.rcpt_addresses() == [reader.as_str()])
            .count();
        assert!(
            early >= total / 8,
            "{domain} had {early} of the first {} messages",
            total / 2
        );
    }
}

/// The provider's "rate limited" reply suspends it in the default stream: `/throttles` and
/// `smtpgate throttle list` show the action with its rule, the reply and its times, and `/shaping`
/// the suspension; the provider's other domain waits while another domain, and the provider in
/// the bulk stream, still get mail; `smtpgate throttle cancel` lets the held mail go at once. The
/// provider's "busy" reply throttles it (half the rate and connections, seen on `/shaping`). A
/// hard bounce suppresses its address: listed with its reason and source, bounced to the sender,
/// and the next message to it is refused at RCPT without reaching the provider.
#[test]
fn a_rate_limit_suspends_the_provider_until_cancelled_and_a_hard_bounce_suppresses() {
    let upstream = Upstream::start();
    let dns = dns();
    let gate = start(&dns, &upstream);

    queue(&gate, NOREPLY, "ratelimit-rcpt@provider.example");
    let started = wait_until(SOON, || throttle(&gate, PROVIDER_KEY).is_some());
    assert!(started, "no action: {:?}", admin_list(&gate, "/api/v1/throttles"));
    let action = throttle(&gate, PROVIDER_KEY).unwrap();
    assert_eq!(action["rule"], PROVIDER_RULE, "{action}");
    assert_eq!(action["action"], "suspend", "only the suspending rule acts: {action}");
    assert_eq!(action["stream"], "default", "{action}");
    let reason = action["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("451 4.7.650") && reason.contains("rate limited"),
        "{action}"
    );
    let since = action["since"].as_str().expect("since");
    assert!(action["until"].as_str().expect("until") > since, "{action}");
    assert!(
        action["suspended_until"].as_str().expect("suspended_until") > since,
        "{action}"
    );
    let listed = cli(&gate, "throttle", &["list"]);
    assert!(
        listed.contains(PROVIDER_KEY) && listed.contains(PROVIDER_RULE),
        "{listed}"
    );
    let suspended = shaping(&gate, "default", ROLLUP).expect("no default rollup on /shaping");
    assert_eq!(suspended["adaptive"], "suspend", "{suspended}");

    // Held: the provider's other domain, in the default stream. Not held: another domain, and
    // the provider in the bulk stream (sent after the held one).
    queue(&gate, NOREPLY, "held@hosted.example");
    queue(&gate, NOREPLY, "open@elsewhere.example");
    queue(&gate, NEWSLETTER, "reader@hosted.example");
    arrival(&upstream, "open@elsewhere.example", SOON);
    arrival(&upstream, "reader@hosted.example", SOON);
    assert!(
        delivered_to(&upstream, "held@hosted.example").is_empty(),
        "delivered while the provider was suspended"
    );

    let cancelled_at = Instant::now();
    let out = cli(&gate, "throttle", &["cancel", PROVIDER_KEY]);
    assert!(out.contains("cancelled"), "{out}");
    let held = arrival(&upstream, "held@hosted.example", SOON);
    eprintln!("held mail left {:?} after the cancel", held.at - cancelled_at);
    assert!(
        held.at - cancelled_at < Duration::from_secs(5),
        "held mail waited {:?}",
        held.at - cancelled_at
    );
    assert!(
        throttle(&gate, PROVIDER_KEY).is_none(),
        "{:?}",
        admin_list(&gate, "/api/v1/throttles")
    );

    // The provider's "busy" reply, to the newsletter: a throttle on the bulk stream, which halves
    // its rollup's rate and connections (5 x 0.5, rounded up).
    queue(&gate, NEWSLETTER, "busy-rcpt@provider.example");
    let started = wait_until(SOON, || throttle(&gate, BULK_KEY).is_some());
    assert!(started, "no action: {:?}", admin_list(&gate, "/api/v1/throttles"));
    let action = throttle(&gate, BULK_KEY).unwrap();
    assert_eq!(action["rule"], "provider-busy", "{action}");
    assert_eq!(action["action"], "rate x0.5, connections x0.5", "{action}");
    assert!(
        action["reason"].as_str().unwrap_or_default().starts_with("421 "),
        "{action}"
    );
    assert!(action["recovered"].as_str() > action["until"].as_str(), "{action}");
    let throttled = shaping(&gate, "bulk", ROLLUP).expect("no bulk rollup on /shaping");
    assert_eq!(throttled["max_message_rate"], "600/min", "{throttled}");
    assert_eq!(throttled["max_connections"], 3, "{throttled}");

    // A hard bounce: suppressed, bounced to the sender, refused at RCPT from then on.
    queue(&gate, NOREPLY, "reject-rcpt@hosted.example");
    let suppressed = || {
        admin_list(&gate, "/api/v1/suppression")
            .into_iter()
            .find(|e| e["address"] == "reject-rcpt@hosted.example")
    };
    assert!(wait_until(SOON, || suppressed().is_some()), "not suppressed");
    let entry = suppressed().unwrap();
    assert_eq!(entry["reason"], "hard_bounce", "{entry}");
    assert!(
        entry["source"].as_str().unwrap_or_default().contains("5.1.1"),
        "{entry}"
    );
    let listed = cli(&gate, "suppression", &["list"]);
    assert!(listed.contains("reject-rcpt@hosted.example"), "{listed}");
    let dsn = arrival(&upstream, NOREPLY, SOON);
    assert_eq!(dsn.mail_from, "", "the bounce comes from the null sender");
    assert!(dsn.text().contains("reject-rcpt@hosted.example"), "{}", dsn.text());

    let (rcpt, end) = send(&gate, NOREPLY, "reject-rcpt@hosted.example");
    assert!(rcpt.starts_with("550 5.1.1 "), "{rcpt}");
    assert_eq!(end, None, "nothing was sent after the refusal");
    assert_eq!(
        upstream.attempts_for("reject-rcpt@hosted.example"),
        1,
        "the provider was asked again"
    );
}
