//! Steering a running gate over the admin API and the CLI: a suspended domain's mail stays
//! queued without an attempt while other mail goes, the suspension outlives a crash (kill -9)
//! and its resume delivers; a suspension `for` a while lapses by itself; the configuration is
//! shown with its secrets masked, a candidate is checked without changing anything, and a reload
//! asked on the API applies a good file and refuses a broken one, keeping the old configuration.

mod support;

use std::net::SocketAddr;

use serde_json::Value;
use support::admin_http::{admin_http, admin_json};
use support::{Gate, GateConfig, SOON, Upstream, message, run_smtpgate, smtplib_send, wait_until};

fn send(gate: &Gate, rcpt: &str) {
    let sent = smtplib_send(
        gate.smtp_addr(),
        "sender@example.test",
        &[rcpt],
        &message(&format!("<{rcpt}>"), "steer", "body"),
    );
    assert!(sent.succeeded(), "{}{}", sent.stdout, sent.stderr);
}

/// `smtpgate ARGS --admin ADDR` (the harness adds the token file); its stdout, after success.
fn cli(admin: SocketAddr, args: &[&str]) -> String {
    let admin = admin.to_string();
    let mut all = args.to_vec();
    all.extend(["--admin", &admin]);
    let ran = run_smtpgate(&all, None, None);
    assert!(ran.succeeded(), "smtpgate {all:?}: {}{}", ran.stdout, ran.stderr);
    ran.stdout
}

/// The queue's messages in `state`.
fn in_state(gate: &Gate, state: &str) -> Vec<Value> {
    let (status, list) = admin_json(gate.admin_addr(), "GET", &format!("/api/v1/queue?state={state}"), None);
    assert_eq!(status, 200, "{list}");
    list["messages"].as_array().expect("messages").clone()
}

/// The `admin` events' actions so far.
fn admin_actions(gate: &Gate) -> Vec<String> {
    let (status, events) = admin_json(gate.admin_addr(), "GET", "/api/v1/events?type=admin", None);
    assert_eq!(status, 200, "{events}");
    let all = events.as_array().expect("a list").iter();
    all.map(|e| {
        format!(
            "{} by {}",
            e["action"].as_str().unwrap_or(""),
            e["by"].as_str().unwrap_or("")
        )
    })
    .collect()
}

#[test]
fn a_suspended_domain_waits_without_attempts_across_a_crash_until_resumed() {
    let upstream = Upstream::start();
    let mut gate = Gate::start(&GateConfig::relay_to(upstream.addr()).to_toml());
    let admin = gate.admin_addr();

    // Mistakes are JSON 400s and change nothing.
    for (body, says) in [
        ("{}", "name what to suspend"),
        (r#"{"domain":"a.test","pool":"upstream"}"#, "only one"),
        (r#"{"domain":"a.test","colour":"red"}"#, "unknown field"),
        (r#"{"domain":"a.test","for":"a while"}"#, "for:"),
        (r#"{"pool":"nope"}"#, "no pool named"),
        (r#"{"route":"nope"}"#, "no route named"),
        (r#"{"stream":"nope"}"#, "no stream named"),
    ] {
        let (status, answer) = admin_json(admin, "POST", "/api/v1/suspend", Some(body));
        assert_eq!(status, 400, "{body}: {answer}");
        assert!(answer["error"].as_str().unwrap().contains(says), "{body}: {answer}");
    }
    let (status, answer) = admin_json(admin, "DELETE", "/api/v1/suspend/domain/none.test", None);
    assert_eq!(status, 404, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("none.test"));
    let (status, answer) = admin_json(admin, "DELETE", "/api/v1/suspend/host/x", None);
    assert_eq!(status, 400, "{answer}");
    // Without the token: nothing.
    let (status, _) = admin_http(
        admin,
        "POST",
        "/api/v1/suspend",
        Some(r#"{"domain":"a.test"}"#),
        Some(""),
    );
    assert_eq!(status, 401);

    let body = r#"{"domain":"Held.test","reason":"their MX is being moved"}"#;
    let (status, answer) = admin_json(admin, "POST", "/api/v1/suspend", Some(body));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        (answer["kind"].as_str(), answer["value"].as_str()),
        (Some("domain"), Some("held.test"))
    );
    assert!(answer["until"].is_null());

    send(&gate, "a@held.test");
    send(&gate, "b@free.test");
    assert!(
        wait_until(SOON, || upstream.delivered_to("b@free.test") == 1),
        "mail to another domain is delivered"
    );
    let parked = in_state(&gate, "suspended");
    assert_eq!(parked.len(), 1, "{parked:?}");
    assert_eq!(parked[0]["recipients"][0]["address"], "a@held.test");
    assert_eq!(parked[0]["attempts"], 0);
    assert_eq!(upstream.delivered_to("a@held.test"), 0);
    assert_eq!(gate.metric("smtpgate_suspensions_active"), 1.0);
    let (_, list) = admin_json(admin, "GET", "/api/v1/suspend", None);
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["reason"], "their MX is being moved");
    assert!(list[0]["since"].as_str().unwrap().ends_with('Z'));
    assert!(
        wait_until(SOON, || admin_actions(&gate).iter().any(|a| a.starts_with(
            "suspend domain:held.test until resumed: their MX is being moved by 127.0.0.1:"
        ))),
        "an admin event names the suspension and who made it: {:?}",
        admin_actions(&gate)
    );

    // A crash and a restart: the suspension is read back and still holds.
    gate.kill9();
    gate.restart();
    let admin = gate.admin_addr();
    let (_, list) = admin_json(admin, "GET", "/api/v1/suspend", None);
    assert_eq!(list[0]["value"], "held.test", "{list}");
    assert_eq!(gate.metric("smtpgate_suspensions_active"), 1.0);
    send(&gate, "c@free.test");
    assert!(wait_until(SOON, || upstream.delivered_to("c@free.test") == 1));
    let parked = in_state(&gate, "suspended");
    assert_eq!(parked.len(), 1, "{parked:?}");
    assert_eq!(parked[0]["attempts"], 0);
    assert_eq!(upstream.delivered_to("a@held.test"), 0, "delivered while suspended");

    // Resumed from the CLI: delivered at once.
    let out = cli(admin, &["resume", "--domain", "held.test"]);
    assert!(out.contains("held.test"), "{out}");
    assert!(
        wait_until(SOON, || upstream.delivered_to("a@held.test") == 1),
        "the resume delivers the parked mail"
    );
    let (_, list) = admin_json(admin, "GET", "/api/v1/suspend", None);
    assert_eq!(list, serde_json::json!([]));
    assert_eq!(gate.metric("smtpgate_suspensions_active"), 0.0);
    assert!(wait_until(SOON, || admin_actions(&gate)
        .iter()
        .any(|a| a.starts_with("resume domain:held.test by 127.0.0.1:"))));
}

#[test]
fn a_suspension_for_a_while_lapses_by_itself_and_the_cli_lists_it() {
    let upstream = Upstream::start();
    let gate = Gate::start(&GateConfig::relay_to(upstream.addr()).to_toml());
    let admin = gate.admin_addr();
    let out = cli(
        admin,
        &["suspend", "--pool", "upstream", "--for", "4s", "--reason", "short"],
    );
    let set: Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(set["kind"], "pool");
    assert!(set["until"].is_string(), "{set}");
    // A route rule by its name (the catch-all's default name) is known too.
    let (status, answer) = admin_json(admin, "POST", "/api/v1/suspend", Some(r#"{"route":"route0"}"#));
    assert_eq!(status, 200, "{answer}");
    cli(admin, &["resume", "--route", "route0"]);
    let listed: Value = serde_json::from_str(&cli(admin, &["suspend", "--list"])).expect("JSON");
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(
        (listed[0]["kind"].as_str(), listed[0]["value"].as_str()),
        (Some("pool"), Some("upstream"))
    );
    // No target at all is refused by the CLI.
    let ran = run_smtpgate(&["suspend", "--admin", &admin.to_string()], None, None);
    assert!(!ran.succeeded());
    assert!(ran.stderr.contains("--domain"), "{}", ran.stderr);

    send(&gate, "x@any.test");
    assert!(wait_until(SOON, || in_state(&gate, "suspended").len() == 1));
    assert!(
        wait_until(SOON, || upstream.delivered_to("x@any.test") == 1),
        "the lapse delivers it"
    );
    let listed: Value = serde_json::from_str(&cli(admin, &["suspend", "--list"])).expect("JSON");
    assert_eq!(listed, serde_json::json!([]));
    assert!(wait_until(SOON, || admin_actions(&gate)
        .iter()
        .any(|a| a.starts_with("resume pool:upstream (lapsed)"))));
}

#[test]
fn the_config_is_shown_masked_checked_and_reloaded_over_the_api() {
    let upstream = Upstream::start();
    let srs = "srs-secret-e2e-0123456789";
    let base = GateConfig::relay_to(upstream.addr())
        .top(&format!(
            "[routing.srs]\nsecret = \"{srs}\"\ndomain = \"srs.example.test\""
        ))
        .to_toml();
    let gate = Gate::start(&base);
    let admin = gate.admin_addr();
    let token = gate.admin_token();

    let (status, shown) = admin_http(admin, "GET", "/api/v1/config", None, None);
    assert_eq!(status, 200, "{shown}");
    assert!(
        !shown.contains(&token) && !shown.contains(srs),
        "a secret is shown: {shown}"
    );
    let shown: Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(shown["config"]["routing"]["srs"]["secret"], "***");
    assert_eq!(shown["summary"]["hostname"], "gate.example.test");
    assert!(shown["file"].as_str().unwrap().ends_with("smtpgate.toml"), "{shown}");
    let out = cli(admin, &["config", "show"]);
    assert!(
        !out.contains(&token) && !out.contains(srs) && out.contains("***"),
        "{out}"
    );

    // A candidate is checked, nothing changes.
    let (status, answer) = admin_json(admin, "POST", "/api/v1/config/check", Some(&base));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["ok"], true);
    let broken = format!("{base}\n[[route]]\npool = \"nope\"\n");
    let (status, answer) = admin_json(admin, "POST", "/api/v1/config/check", Some(&broken));
    assert_eq!(status, 422, "{answer}");
    let error = answer["error"].as_str().unwrap();
    assert!(
        error.contains("route[1].pool") && error.contains("no pool named \"nope\""),
        "{error}"
    );
    let (status, answer) = admin_json(admin, "POST", "/api/v1/config/check", Some("hostname = \n"));
    assert_eq!(status, 422, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("line 1"), "{answer}");

    // A reload of a changed file applies it.
    let file = gate.dir().join("smtpgate.toml");
    let changed = base.replace("gate.example.test", "reloaded.example.test")
        + &format!(
            "\n[[pool]]\nname = \"second\"\nservers = [\"{}\"]\ntls = \"none\"\n",
            upstream.addr()
        );
    std::fs::write(&file, &changed).unwrap();
    let (status, answer) = admin_json(admin, "POST", "/api/v1/config/reload", None);
    assert_eq!(status, 200, "{answer}");
    let (_, shown) = admin_json(admin, "GET", "/api/v1/config", None);
    assert_eq!(shown["summary"]["hostname"], "reloaded.example.test");
    assert_eq!(shown["summary"]["pools"], serde_json::json!(["upstream", "second"]));
    // A pool the reload added can be suspended now.
    let (status, _) = admin_json(admin, "POST", "/api/v1/suspend", Some(r#"{"pool":"second"}"#));
    assert_eq!(status, 200);

    // A broken file is refused with the reason; the configuration stays.
    std::fs::write(&file, format!("{changed}\n[[route]]\npool = \"nope\"\n")).unwrap();
    let (status, answer) = admin_json(admin, "POST", "/api/v1/config/reload", None);
    assert_eq!(status, 422, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("no pool named \"nope\""),
        "{answer}"
    );
    let (_, shown) = admin_json(admin, "GET", "/api/v1/config", None);
    assert_eq!(shown["summary"]["hostname"], "reloaded.example.test");
    send(&gate, "after@reload.test");
    assert!(wait_until(SOON, || upstream.delivered_to("after@reload.test") == 1));
    assert!(wait_until(SOON, || {
        let actions = admin_actions(&gate);
        actions.iter().any(|a| a.starts_with("config reload from "))
            && actions.iter().any(|a| a.starts_with("config reload refused"))
    }));
}
