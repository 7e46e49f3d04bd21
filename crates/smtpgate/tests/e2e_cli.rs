//! End-to-end tests of the `smtpgate` command line: `check-config`, `passwd`, and `serve`
//! (JSON logs, plain-text logs without colours off a terminal, a missing config file).

mod support;

use std::collections::HashMap;
use std::fs;
use std::process::Command;
use std::time::Duration;

use support::{
    CertFiles, Gate, GateConfig, LoggedGate, SOON, Sink, UsersFile, message, run_smtpgate, run_with_deadline,
    smtpgate_passwd, smtplib, smtplib_send, toml_path, wait_until,
};

/// A config with three value mistakes: a bad size, a bad CIDR, and a route to no pool.
const VALUE_MISTAKES: &str = r#"
hostname = "gate.test"

[[listener]]
address = "127.0.0.1:0"
relay_networks = ["127.0.0.0/8", "10.0.0.0/33"]
max_message_size = "50XB"

[[pool]]
name = "upstream"
servers = ["127.0.0.1:25"]

[[route]]
pool = "upstrem"
"#;

/// A misspelt key in the listener table.
const UNKNOWN_KEY_LINE: &str = "max_mesage_size = \"1MB\"";

fn check_config(toml: &str) -> (bool, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("smtpgate.toml");
    fs::write(&file, toml).expect("write config");
    let ran = run_smtpgate(&["check-config", file.to_str().unwrap()], None, None);
    let status = ran.status.expect("check-config finished");
    (status.success(), ran.stdout, ran.stderr)
}

/// Whether `output` has a line `<file>: <key>: ...` that also mentions `detail`, the file being
/// the configuration file (`smtpgate.toml`).
fn reports(output: &str, key: &str, detail: &str) -> bool {
    reports_in(output, "smtpgate.toml", key, detail)
}

/// Whether `output` has a line `<dir>/<file>: <key>: ...` that also mentions `detail`.
fn reports_in(output: &str, file: &str, key: &str, detail: &str) -> bool {
    let (file, prefix) = (format!("/{file}"), format!("{key}: "));
    output.lines().any(|l| {
        l.split_once(": ")
            .is_some_and(|(path, rest)| path.ends_with(&file) && rest.starts_with(&prefix) && rest.contains(detail))
    })
}

#[test]
fn check_config_reports_every_value_mistake_with_its_key_path() {
    let (ok, stdout, stderr) = check_config(VALUE_MISTAKES);

    let output = format!("{stdout}{stderr}");
    assert!(!ok, "check-config accepted a broken file:\n{output}");
    assert!(reports(&output, "listener[0].max_message_size", "50XB"), "{output}");
    assert!(
        reports(&output, "listener[0].relay_networks[1]", "10.0.0.0/33"),
        "{output}"
    );
    assert!(reports(&output, "route[0].pool", "upstrem"), "{output}");
    assert!(!output.contains(": OK"), "{output}");
}

#[test]
fn check_config_reports_an_unknown_key_with_its_key_path() {
    let toml = "[[listener]]\naddress = \"127.0.0.1:0\"\n".to_string() + UNKNOWN_KEY_LINE + "\n";
    let (ok, stdout, stderr) = check_config(&toml);

    let output = format!("{stdout}{stderr}");
    assert!(!ok, "check-config accepted an unknown key:\n{output}");
    assert!(
        reports(&output, "listener[0].max_mesage_size", "unknown field"),
        "{output}"
    );
}

#[test]
fn check_config_reports_an_unknown_key_together_with_the_other_mistakes() {
    let toml = VALUE_MISTAKES.replacen(
        "max_message_size = \"50XB\"",
        &format!("max_message_size = \"50XB\"\n{UNKNOWN_KEY_LINE}"),
        1,
    );
    let (ok, stdout, stderr) = check_config(&toml);

    let output = format!("{stdout}{stderr}");
    assert!(!ok, "check-config accepted a broken file:\n{output}");
    let expected = [
        ("listener[0].max_mesage_size", "unknown field"),
        ("listener[0].max_message_size", "50XB"),
        ("listener[0].relay_networks[1]", "10.0.0.0/33"),
        ("route[0].pool", "upstrem"),
    ];
    let missing: Vec<_> = expected
        .iter()
        .filter(|(key, detail)| !reports(&output, key, detail))
        .collect();
    assert!(
        missing.is_empty(),
        "check-config did not report {missing:?}; it printed:\n{output}"
    );
}

/// A mistake in each file the configuration reads (its own keys, the shaping file, the bounce
/// rules, a filter's options) is listed in one run, each naming its file and key.
#[test]
fn check_config_lists_the_mistakes_of_every_file_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, text: &str| fs::write(dir.path().join(name), text).expect("write");
    write("shaping.toml", "[default]\nmax_connections = 0\n");
    write("bounces.toml", "[[rule]]\ncategory = \"hard\"\ntext = \"x\"\n");
    write(
        "smtpgate.toml",
        r#"
[[listener]]
address = "127.0.0.1:0"
max_message_size = "50XB"

[[filter]]
name = "zips"
kind = "content"
max_zip_size = "lots"

[shaping]
file = "shaping.toml"

[bounces]
rules = "bounces.toml"
"#,
    );
    let file = dir.path().join("smtpgate.toml");
    let ran = run_smtpgate(&["check-config", file.to_str().unwrap()], None, None);
    let status = ran.status.expect("check-config finished");
    let output = format!("{}{}", ran.stdout, ran.stderr);
    assert!(!status.success(), "check-config accepted broken files:\n{output}");
    let expected = [
        ("smtpgate.toml", "listener[0].max_message_size", "50XB"),
        ("shaping.toml", "default.max_connections", "0 is not between"),
        ("bounces.toml", "rule[0].category", "hard"),
        ("smtpgate.toml", "filter[0].max_zip_size", "lots"),
    ];
    let missing: Vec<_> = expected
        .iter()
        .filter(|(file, key, detail)| !reports_in(&output, file, key, detail))
        .collect();
    assert!(
        missing.is_empty(),
        "check-config did not report {missing:?}; it printed:\n{output}"
    );
}

#[test]
fn check_config_accepts_a_good_file_and_exits_0() {
    let cert = CertFiles::self_signed(&["gate.test"]);
    let users = UsersFile::create(&[("alice", "s3cret")]);
    let toml = format!(
        r#"
hostname = "gate.test"

[[listener]]
name = "submission"
address = "127.0.0.1:0"
relay_networks = ["127.0.0.0/8", "::1/128"]
max_message_size = "10MB"
{}
{}

[[pool]]
name = "upstream"
servers = ["127.0.0.1:2525"]
tls = "opportunistic"

[[route]]
pool = "upstream"

[queue]
retry = ["1m", "5m"]
"#,
        cert.listener_line(),
        users.listener_line()
    );
    let (ok, stdout, stderr) = check_config(&toml);

    assert!(ok, "check-config refused a good file:\n{stdout}{stderr}");
    assert!(stdout.trim_end().ends_with(": OK"), "{stdout}{stderr}");
}

#[test]
fn passwd_prints_a_salted_argon2id_hash_and_refuses_an_empty_password() {
    let first = smtpgate_passwd("s3cret");
    let second = smtpgate_passwd("s3cret");

    let parts: Vec<&str> = first.split('$').collect();
    assert_eq!(parts.len(), 6, "{first}");
    assert_eq!(parts[1], "argon2id", "{first}");
    assert_eq!(parts[2], "v=19", "{first}");
    assert!(parts[3].starts_with("m="), "{first}");
    assert_ne!(first, second, "the same salt twice");

    let empty = run_smtpgate(&["passwd"], Some("\n"), None);
    assert!(!empty.status.expect("finished").success(), "{}", empty.stdout);
    assert!(empty.stderr.contains("empty password"), "{}", empty.stderr);
}

#[test]
fn passwd_hash_authenticates_over_plaintext_auth_on_loopback() {
    let sink = Sink::start();
    let users = UsersFile::create(&[("alice", "s3cret")]);
    let gate = Gate::start(
        &GateConfig::relay_to(sink.addr())
            .listener(&format!(
                "auth = {{ users_file = {}, allow_plaintext = true }}",
                toml_path(&users.path)
            ))
            .to_toml(),
    );

    let ran = smtplib(
        gate.smtp_addr(),
        "s = connect()
for password in ['wrong', 's3cret']:
    try:
        code, msg = s.login('alice', password)
    except smtplib.SMTPAuthenticationError as e:
        code, msg = e.smtp_code, e.smtp_error
    show('AUTH', code, msg)
quit(s)
",
    );

    assert!(ran.succeeded(), "{ran}");
    let auths = ran.replies("AUTH");
    assert_eq!(auths.len(), 2, "{ran}");
    assert!(auths[0].starts_with("535 5.7.8"), "{ran}");
    assert!(auths[1].starts_with("235 2.7.0"), "{ran}");
}

/// One JSON log record: its `fields.message` and its other fields as JSON text.
#[derive(Debug)]
struct Record {
    message: String,
    fields: HashMap<String, String>,
}

/// Parses every stderr line as JSON with Python's json module; panics on a line that is not
/// a JSON object with `fields`.
fn parse_json_lines(lines: &[String]) -> Vec<Record> {
    const SCRIPT: &str = r#"
import json, sys
for n, line in enumerate(open(sys.argv[1], encoding="utf-8")):
    line = line.rstrip("\n")
    if not line:
        continue
    try:
        record = json.loads(line)
        fields = record["fields"]
        assert isinstance(fields, dict)
    except Exception as e:
        print(f"BAD line {n + 1}: {e}: {line}")
        sys.exit(1)
    message = fields.pop("message", "")
    out = [message] + [f"{k}={json.dumps(v)}" for k, v in sorted(fields.items())]
    out.append(f"level={json.dumps(record.get('level'))}")
    print("\t".join(out))
"#;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("stderr.log");
    fs::write(&file, lines.join("\n") + "\n").expect("write log");
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(SCRIPT).arg(&file);
    let ran = run_with_deadline(cmd, Duration::from_secs(60));
    assert!(
        ran.status.is_some_and(|s| s.success()),
        "not JSON lines: {}{}\nlog:\n{}",
        ran.stdout,
        ran.stderr,
        lines.join("\n")
    );
    ran.stdout
        .lines()
        .map(|l| {
            let mut parts = l.split('\t');
            let message = parts.next().unwrap_or_default().to_string();
            let fields = parts
                .filter_map(|p| p.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            Record { message, fields }
        })
        .collect()
}

impl Record {
    fn field(&self, key: &str) -> &str {
        self.fields
            .get(key)
            .unwrap_or_else(|| panic!("no field {key} in {self:?}"))
    }

    fn number(&self, key: &str) -> u64 {
        let text = self.field(key);
        text.parse()
            .unwrap_or_else(|_| panic!("{key} is not a JSON integer in {self:?}"))
    }
}

#[test]
fn serve_with_json_logs_writes_one_json_line_per_reception_and_per_delivery_attempt() {
    let sink = Sink::start();
    let gate = LoggedGate::start(&GateConfig::relay_to(sink.addr()).to_toml(), &["--log-format", "json"]);
    let rcpts = ["bob@example.org", "carol@example.org"];
    let msg = message("json-log@example.test", "logs", "Logged as JSON.");

    let sent = smtplib_send(gate.smtp_addr(), "alice@example.test", &rcpts, &msg);

    assert!(sent.reply("END-OF-DATA").starts_with("250 "), "{sent}");
    sink.wait_for_messages(1, SOON);
    let attempts_logged = wait_until(SOON, || {
        let lines = gate.stderr_lines();
        lines.iter().filter(|l| l.contains("\"delivery attempt\"")).count() >= rcpts.len()
    });
    let lines = gate.stderr_lines();
    assert!(attempts_logged, "log:\n{}", lines.join("\n"));
    let records = parse_json_lines(&lines);

    let received: Vec<&Record> = records.iter().filter(|r| r.message == "message accepted").collect();
    assert_eq!(received.len(), 1, "{records:#?}");
    let reception = received[0];
    let queue_id = reception.field("queue_id");
    assert!(queue_id.len() > 2, "{reception:?}");
    assert!(reception.field("client").contains("127.0.0.1"), "{reception:?}");
    assert_eq!(reception.field("sender"), "\"alice@example.test\"");
    assert_eq!(reception.number("recipients"), 2);
    assert!(reception.number("size") >= msg.len() as u64, "{reception:?}");
    assert_eq!(reception.field("level"), "\"INFO\"");

    let attempts: Vec<&Record> = records.iter().filter(|r| r.message == "delivery attempt").collect();
    assert_eq!(attempts.len(), 2, "{records:#?}");
    let mut logged_rcpts: Vec<&str> = attempts.iter().map(|a| a.field("recipient")).collect();
    logged_rcpts.sort();
    assert_eq!(logged_rcpts, ["\"bob@example.org\"", "\"carol@example.org\""]);
    for attempt in attempts {
        assert_eq!(attempt.field("queue_id"), queue_id, "{attempt:?}");
        assert!(attempt.field("next_hop").len() > 2, "{attempt:?}");
        assert!(attempt.field("reply").starts_with("\"250"), "{attempt:?}");
        assert!(attempt.number("latency_ms") < 60_000, "{attempt:?}");
    }
}

/// Regression: log lines carried ANSI colour codes when standard error was a file, a pipe or
/// journald (unless `NO_COLOR` was set, which the other tests do).
#[test]
fn serve_writes_no_colour_codes_when_stderr_is_not_a_terminal() {
    let sink = Sink::start();
    let gate = LoggedGate::start_without_no_color(&GateConfig::relay_to(sink.addr()).to_toml(), &[]);

    let sent = smtplib_send(
        gate.smtp_addr(),
        "alice@example.test",
        &["bob@example.org"],
        &message("plain-log@example.test", "logs", "Logged as text."),
    );

    assert!(sent.reply("END-OF-DATA").starts_with("250 "), "{sent}");
    sink.wait_for_messages(1, SOON);
    let logged = wait_until(SOON, || {
        gate.stderr_lines().iter().any(|l| l.contains("delivery attempt"))
    });
    let lines = gate.stderr_lines();
    assert!(logged, "log:\n{}", lines.join("\n"));
    let accepted = lines
        .iter()
        .find(|l| l.contains("message accepted"))
        .unwrap_or_else(|| panic!("no `message accepted` line:\n{}", lines.join("\n")));
    let coloured: Vec<&String> = lines.iter().filter(|l| l.contains('\x1b')).collect();
    assert!(coloured.is_empty(), "ESC in log lines written to a pipe: {coloured:?}");
    assert!(accepted.contains(" INFO "), "{accepted:?}");
}

#[test]
fn serve_with_a_missing_config_file_fails_with_a_clear_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing.toml");

    let ran = run_smtpgate(
        &["serve", "--config", missing.to_str().unwrap()],
        None,
        Some(dir.path()),
    );

    let status = ran.status.expect("smtpgate serve exited on its own");
    assert!(!status.success(), "{}{}", ran.stdout, ran.stderr);
    assert!(
        ran.stderr.contains(missing.to_str().unwrap()),
        "the message does not name the file:\n{}",
        ran.stderr
    );
    assert!(
        ran.stderr.contains("cannot read") && ran.stderr.contains("No such file"),
        "{}",
        ran.stderr
    );
    assert!(!ran.stderr.contains("panicked"), "{}", ran.stderr);
    assert!(!ran.stdout.contains("smtpgate ready"), "{}", ran.stdout);
    assert!(
        !dir.path().join("smtpgate-data").exists(),
        "a spool was created for a config that does not exist"
    );
}
