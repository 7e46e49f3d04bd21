//! The admin address is authenticated (SECURITY.md, "Admin address"): a running gate, driven by
//! curl and the smtpgate command-line client. Every endpoint but `/healthz` and `/metrics` wants
//! the bearer token; a `Host` that is not the admin address is refused (DNS rebinding); the CLI
//! finds the token from the configuration; admin actions are logged; durations and sizes an
//! admin sets are bounded; an admin address off loopback is warned about.

mod support;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;

use support::{Gate, GateConfig, SOON, replace_once, run_smtpgate, wait_until};

/// A gate whose pool is never used (nothing is sent through it here).
fn config() -> GateConfig {
    GateConfig::relay_to("127.0.0.1:9".parse().unwrap())
}

/// The usual config with `lines` added to `[admin]`.
fn with_admin(lines: &str) -> String {
    let toml = config().to_toml();
    replace_once(
        &toml,
        "[admin]\naddress = \"127.0.0.1:0\"",
        &format!("[admin]\naddress = \"127.0.0.1:0\"\n{lines}"),
    )
}

/// `curl` to the admin address of `gate`: (status, body). `args` come before the URL.
fn curl(gate: &Gate, method: &str, path: &str, args: &[&str]) -> (u16, String) {
    let url = format!("http://{}{path}", gate.admin_addr());
    let out = Command::new("curl")
        .args(["-s", "-S", "--max-time", "10", "-X", method, "-w", "\n%{http_code}"])
        .args(args)
        .arg(&url)
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or_else(|| panic!("curl {url}: {text:?}"));
    let status = status
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("curl {url}: no status in {text:?}"));
    (status, body.to_owned())
}

fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}")
}

/// `smtpgate <args>` with no help from the harness (no `--token-file` added): (success, output).
fn smtpgate(args: &[&str], cwd: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_smtpgate"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run smtpgate");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// Every endpoint that reads or changes something, as (method, path).
const GUARDED: [(&str, &str); 14] = [
    ("GET", "/api/v1/quarantine"),
    ("GET", "/api/v1/quarantine/anything"),
    ("POST", "/api/v1/quarantine/anything/release"),
    ("DELETE", "/api/v1/quarantine/anything"),
    ("GET", "/api/v1/suppression"),
    ("PUT", "/api/v1/suppression/victim@example.test"),
    ("DELETE", "/api/v1/suppression/victim@example.test"),
    (
        "PUT",
        "/api/v1/throttles/default/domain:victim.test?duration=1h&suspend=true",
    ),
    ("GET", "/api/v1/shaping"),
    ("GET", "/api/v1/sources"),
    ("GET", "/api/v1/queue"),
    ("GET", "/api/v1/queue/0000000000000001/message"),
    ("POST", "/api/v1/queue/0000000000000001/bounce"),
    ("POST", "/api/v1/queue/delete?all=true"),
];

#[test]
fn admin_endpoints_refuse_requests_without_the_token() {
    let gate = Gate::start(&config().to_toml());
    let token = gate.admin_token();
    let mut wrong = token.clone();
    wrong.replace_range(0..1, if token.starts_with('0') { "1" } else { "0" });

    for (method, path) in GUARDED {
        let (status, body) = curl(&gate, method, path, &[]);
        assert_eq!(status, 401, "{method} {path} without a token: {body}");
        assert!(body.contains("Authorization: Bearer"), "{body}");
        let (status, body) = curl(&gate, method, path, &["-H", &bearer(&wrong)]);
        assert_eq!(status, 401, "{method} {path} with a wrong token: {body}");
    }
    // What a web page can send: a form POST with a cookie, from another origin.
    let (status, _) = curl(
        &gate,
        "POST",
        "/api/v1/quarantine/anything/release",
        &[
            "-H",
            "Origin: http://evil.example",
            "-H",
            "Cookie: session=1",
            "--data",
            "x=1",
        ],
    );
    assert_eq!(status, 401);

    // Nothing changed, as the token holder sees.
    let (status, list) = curl(&gate, "GET", "/api/v1/suppression", &["-H", &bearer(&token)]);
    assert_eq!((status, list.contains("victim")), (200, false), "{list}");
    let (status, list) = curl(&gate, "GET", "/api/v1/throttles", &["-H", &bearer(&token)]);
    assert_eq!((status, list.trim()), (200, "[]"));
    // With the token, a change is made.
    let (status, body) = curl(
        &gate,
        "PUT",
        "/api/v1/suppression/victim@example.test",
        &["-H", &bearer(&token)],
    );
    assert_eq!(status, 200, "{body}");
    // Health checks and scrapers need no token.
    assert_eq!(curl(&gate, "GET", "/healthz", &[]), (200, "ok\n".to_owned()));
    let (status, metrics) = curl(&gate, "GET", "/metrics", &[]);
    assert_eq!(status, 200);
    assert!(metrics.contains("smtpgate_spool_records_total"), "{metrics}");
}

#[test]
fn a_host_that_is_not_the_admin_address_is_refused() {
    let gate = Gate::start(&with_admin("hosts = [\"Gate.Internal\"]"));
    let auth = bearer(&gate.admin_token());
    let port = gate.admin_addr().port();
    // DNS rebinding: the attacker's name resolves to 127.0.0.1, the browser sends that name.
    for host in [
        format!("evil.example:{port}"),
        "localhost.evil.example".into(),
        "127.0.0.2".into(),
    ] {
        let header = format!("Host: {host}");
        let (status, body) = curl(&gate, "GET", "/api/v1/suppression", &["-H", &auth, "-H", &header]);
        assert_eq!(status, 403, "Host {host}: {body}");
        assert!(body.contains("Host"), "{body}");
        let (status, _) = curl(&gate, "GET", "/metrics", &["-H", &header]);
        assert_eq!(status, 403, "Host {host} on /metrics");
    }
    for host in [
        format!("localhost:{port}"),
        "gate.internal".into(),
        format!("{}", gate.admin_addr()),
    ] {
        let header = format!("Host: {host}");
        let (status, body) = curl(&gate, "GET", "/api/v1/suppression", &["-H", &auth, "-H", &header]);
        assert_eq!(status, 200, "Host {host}: {body}");
    }
}

#[test]
fn the_generated_token_is_private_kept_across_restarts_and_found_by_the_cli() {
    let mut gate = Gate::start(&config().to_toml());
    let file = gate.spool_dir().join("admin.token");
    assert_eq!(gate.admin_token_file(), file, "announced token file");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "mode of {}", file.display());
    let token = gate.admin_token();
    assert_eq!(token.len(), 64, "{token}");
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()), "{token}");

    gate.restart();
    assert_eq!(gate.admin_token(), token, "the token is kept across a restart");

    // The CLI finds the token through the configuration alone.
    let elsewhere = tempfile::tempdir().unwrap();
    let config = gate.dir().join("smtpgate.toml");
    let (config, admin) = (config.to_str().unwrap(), gate.admin_addr().to_string());
    let (ok, out) = smtpgate(
        &[
            "suppression",
            "--config",
            config,
            "--admin",
            &admin,
            "add",
            "cli@example.test",
        ],
        elsewhere.path(),
    );
    assert!(ok, "{out}");
    assert!(out.contains("cli@example.test suppressed"), "{out}");

    // Without the configuration it has no token, and says so.
    let (ok, out) = smtpgate(&["suppression", "--admin", &admin, "list"], elsewhere.path());
    assert!(!ok, "{out}");
    assert!(out.contains("no admin token"), "{out}");
    // A wrong token is refused by the server.
    let wrong = elsewhere.path().join("wrong.token");
    std::fs::write(&wrong, "0123456789abcdef0123456789abcdef\n").unwrap();
    let wrong = wrong.to_str().unwrap();
    let (ok, out) = smtpgate(
        &["suppression", "--admin", &admin, "--token-file", wrong, "list"],
        elsewhere.path(),
    );
    assert!(!ok, "{out}");
    assert!(out.contains("Authorization: Bearer"), "{out}");
}

#[test]
fn a_configured_token_file_is_used_and_checked() {
    const TOKEN: &str = "a-token-chosen-by-the-administrator-42";
    let toml = with_admin("token_file = \"admin-secret\"");
    let gate = Gate::start_with_files(&toml, &[("admin-secret", &format!("{TOKEN}\n"))]);
    assert_eq!(gate.admin_token_file(), gate.dir().join("admin-secret"));
    assert!(!gate.spool_dir().join("admin.token").exists(), "no token generated");
    let (status, body) = curl(&gate, "GET", "/api/v1/suppression", &["-H", &bearer(TOKEN)]);
    assert_eq!(status, 200, "{body}");
    let config = gate.dir().join("smtpgate.toml");
    let admin = gate.admin_addr().to_string();
    let (ok, out) = smtpgate(
        &[
            "suppression",
            "--config",
            config.to_str().unwrap(),
            "--admin",
            &admin,
            "list",
        ],
        gate.dir(),
    );
    assert!(ok, "{out}");

    // check-config: a missing or short token file, a host with a port.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("short"), "abc\n").unwrap();
    for (lines, want) in [
        ("token_file = \"missing\"", "admin.token_file"),
        ("token_file = \"short\"", "admin.token_file"),
        ("hosts = [\"gate.internal:8025\"]", "admin.hosts[0]"),
    ] {
        let path = dir.path().join("smtpgate.toml");
        std::fs::write(&path, with_admin(lines)).unwrap();
        let (ok, out) = smtpgate(&["check-config", path.to_str().unwrap()], dir.path());
        assert!(!ok, "{lines}: {out}");
        assert!(out.contains(want), "{lines}: {out}");
    }
}

#[test]
fn admin_actions_are_logged_with_the_client_and_the_change() {
    let gate = Gate::start(&config().to_toml());
    let auth = bearer(&gate.admin_token());
    let (status, _) = curl(&gate, "PUT", "/api/v1/suppression/logged@example.test", &["-H", &auth]);
    assert_eq!(status, 200);
    let key = "default/domain:logged.test";
    let path = format!("/api/v1/throttles/{key}?duration=1h&rate_factor=0.5");
    let (status, body) = curl(&gate, "PUT", &path, &["-H", &auth]);
    assert_eq!(status, 200, "{body}");
    let (status, _) = curl(&gate, "DELETE", "/api/v1/suppression/logged@example.test", &[]);
    assert_eq!(status, 401);

    let logged = |words: &[&str]| {
        wait_until(SOON, || {
            gate.stderr_lines()
                .iter()
                .any(|l| l.contains("admin:") && l.contains("peer=127.0.0.1:") && words.iter().all(|w| l.contains(w)))
        })
    };
    assert!(
        logged(&["suppressed", "logged@example.test"]),
        "{:#?}",
        gate.stderr_lines()
    );
    assert!(
        logged(&["adaptive action set", key, "rate x0.5"]),
        "{:#?}",
        gate.stderr_lines()
    );
    assert!(
        logged(&["refused", "DELETE", "/api/v1/suppression/logged@example.test"]),
        "{:#?}",
        gate.stderr_lines()
    );
}

#[test]
fn durations_and_sizes_an_admin_sets_are_bounded() {
    let gate = Gate::start(&config().to_toml());
    let admin = gate.admin_addr().to_string();
    let throttle = |args: &[&str]| {
        let mut all = vec![
            "throttle",
            "--admin",
            admin.as_str(),
            "set",
            "default/domain:bounded.test",
        ];
        all.extend_from_slice(args);
        run_smtpgate(&all, None, None)
    };
    let reason = "x".repeat(201);
    for (args, want) in [
        (
            vec!["--duration", "31d", "--suspend"],
            "duration: \"31d\" is longer than the most allowed, 30 days",
        ),
        (
            vec!["--duration", "1h", "--suspend", "--recover", "365d"],
            "recover: \"365d\" is longer",
        ),
        (
            vec!["--duration", "1h", "--suspend", "--reason", &reason],
            "reason: at most 200 bytes",
        ),
    ] {
        let ran = throttle(&args);
        assert!(!ran.succeeded(), "{args:?}: {ran:?}");
        assert!(ran.stderr.contains(want), "{args:?}: {ran:?}");
    }
    let (status, list) = curl(&gate, "GET", "/api/v1/throttles", &["-H", &bearer(&gate.admin_token())]);
    assert_eq!((status, list.trim()), (200, "[]"), "nothing was set");
    let ran = throttle(&["--duration", "30d", "--suspend"]);
    assert!(ran.succeeded(), "30 days is allowed: {ran:?}");

    let long = format!("{}@example.test", "a".repeat(250));
    let (status, body) = curl(
        &gate,
        "PUT",
        &format!("/api/v1/suppression/{long}"),
        &["-H", &bearer(&gate.admin_token())],
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("at most 254 octets"), "{body}");
}

#[test]
fn an_admin_address_off_loopback_is_warned_about() {
    let warning = "the admin address is not a loopback address and has no TLS";
    let gate = Gate::start(&config().to_toml());
    // A refused request is logged after start-up, so once its line is there, any warning
    // logged at start-up is too.
    assert_eq!(curl(&gate, "GET", "/api/v1/suppression", &[]).0, 401);
    let refused = wait_until(SOON, || {
        gate.stderr_lines().iter().any(|l| l.contains("admin: refused"))
    });
    assert!(refused, "{:#?}", gate.stderr_lines());
    assert!(
        !gate.stderr_lines().iter().any(|l| l.contains(warning)),
        "no warning on loopback"
    );

    let toml = replace_once(
        &config().to_toml(),
        "[admin]\naddress = \"127.0.0.1:0\"",
        "[admin]\naddress = \"0.0.0.0:0\"",
    );
    let exposed = Gate::start(&toml);
    let warned = wait_until(SOON, || exposed.stderr_lines().iter().any(|l| l.contains(warning)));
    assert!(warned, "{:#?}", exposed.stderr_lines());
    // Still served, with the token, to the address the client connected to.
    let port = exposed.admin_addr().port();
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10", "-H", &bearer(&exposed.admin_token())])
        .arg(format!("http://127.0.0.1:{port}/api/v1/suppression"))
        .output()
        .expect("run curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");
}
