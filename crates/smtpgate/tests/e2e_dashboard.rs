//! The dashboard in a real browser: Debian's headless Chromium driven by playwright-core
//! (`tests/dashboard/dashboard.mjs`), against a gate that really delivered, deferred, bounced and
//! quarantined mail. The page's numbers must match what was sent; a retry and a quarantine
//! release made through the page must deliver; screenshots go to the test's temporary directory.
//! `scripts/test.sh` installs Chromium and playwright-core when they are missing.

mod support;

use std::path::Path;
use std::time::Duration;

use support::{Gate, GateConfig, SOON, Upstream, dashboard_scripts, message, run_dashboard, smtplib_send, wait_until};

#[test]
fn the_dashboard_shows_what_happened_and_its_actions_work() {
    let scripts = dashboard_scripts("the browser test");
    // Each misbehaving recipient misbehaves once: the deferred message goes on a retry.
    let upstream = Upstream::fail_first(1);
    let config = GateConfig::relay_to(upstream.addr())
        .retry(&["1h"])
        .listener("filters = [\"rules\"]")
        .queue(
            "\n[[filter]]\nname = \"rules\"\nkind = \"content\"\n\
             header_rules = [{ header = \"Subject\", regex = \"hold me\", action = \"quarantine\" }]",
        );
    let gate = Gate::start(&config.to_toml());
    let send = |from: &str, to: &str, subject: &str| {
        let t = smtplib_send(
            gate.smtp_addr(),
            from,
            &[to],
            &message("m@example.test", subject, "hello"),
        );
        assert!(t.reply("END-OF-DATA").starts_with("250"), "{t}");
    };
    for i in 0..3 {
        send("alice@example.test", &format!("user{i}@example.org"), "delivered");
    }
    send("alice@example.test", "tempfail-rcpt@example.org", "deferred");
    // From the null sender, so the bounce makes no DSN that would be delivered too.
    send("", "reject-rcpt@example.org", "bounced");
    send("alice@example.test", "held@example.org", "please hold me");
    assert!(
        wait_until(SOON, || upstream.messages().len() == 3
            && upstream.attempts_for("tempfail-rcpt@example.org") == 1
            && upstream.attempts_for("reject-rcpt@example.org") == 1),
        "3 delivered, one deferred, one bounced: {:?}",
        upstream.messages()
    );

    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots");
    let expect = serde_json::json!({
        "delivered": 3, "bounced": 1, "queued": 1,
        "deferred": "tempfail-rcpt@example.org", "domain": "example.org",
    });
    run_dashboard(&scripts, &gate, &expect, &shots, Duration::from_secs(300));
    // What the page did reached the upstream: the retried and the released message.
    assert!(
        wait_until(SOON, || upstream.messages().len() == 5),
        "{:?}",
        upstream.messages()
    );
    for shot in [
        "overview.png",
        "queue.png",
        "history.png",
        "domains.png",
        "quarantine.png",
    ] {
        assert!(
            shots.join(shot).is_file(),
            "screenshot {shot} saved in {}",
            shots.display()
        );
    }
}
