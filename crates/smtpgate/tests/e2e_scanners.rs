//! External scanners with the real daemons: clamd (`kind = "clamav"`) and rspamd
//! (`kind = "rspamd"`), each started by the test in the foreground on a free loopback port with
//! a configuration and signatures the test writes (no freshclam, no system service).
//!
//! Two levels: the filter alone, built through the registry as the config would build it and
//! asked about a message; and the whole gate, a real client seeing the verdict as SMTP replies
//! and the upstream seeing the added headers.
//!
//! clamd ([`Clamd`], shared with other tests in `support::clamd`) knows one signature,
//! `Smtpgate.Test.Sig`, matching [`VIRUS_MARKER`]. rspamd gets three test symbols whose scores
//! pick its action: a body line `smtpgate test: reject`, `smtpgate test: add header` or
//! `smtpgate test: rewrite subject`; a fourth, `SMTPGATE_ENVELOPE`, fires when rspamd read the
//! filter's envelope (client address, HELO, sender, recipient) from the request headers.

mod support;

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use smtpgate::filter::{Action, Filter, MessageInfo, Modification, SessionInfo, Verdict, registry};
use smtpgate_proto::Reply;
use support::{
    Clamd, Daemon, Gate, GateConfig, SOON, Upstream, VIRUS_MARKER, VIRUS_NAME, free_port, header_values, message,
    running_as_root, smtplib_send, wait_until,
};
use tempfile::TempDir;

/// rspamd compiles its rules for a while.
const RSPAMD_START: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------------------------
// Daemons (clamd and the shared [`Daemon`] are in `support::clamd`)

/// rspamd's normal worker alone (no controller, no proxy), with the test symbols.
struct Rspamd {
    dir: TempDir,
    url: String,
    _daemon: Daemon,
}

/// Test symbols: a body that contains the text gets the score (and with it an action).
const RSPAMD_LUA: &str = r#"
local function marker(name, text, score)
  rspamd_config[name] = {
    callback = function(task)
      local content = task:get_content()
      return content ~= nil and tostring(content):find(text, 1, true) ~= nil
    end,
    score = score,
    description = 'smtpgate test marker',
  }
end
marker('SMTPGATE_REJECT', 'smtpgate test: reject', 100)
marker('SMTPGATE_ADD_HEADER', 'smtpgate test: add header', 7)
marker('SMTPGATE_REWRITE', 'smtpgate test: rewrite subject', 12)
rspamd_config['SMTPGATE_ENVELOPE'] = {
  callback = function(task)
    local from, rcpts, ip = task:get_from('smtp'), task:get_recipients('smtp'), task:get_from_ip()
    return from ~= nil and from[1].addr == 'alice@example.test'
      and rcpts ~= nil and #rcpts == 1 and rcpts[1].addr == 'bob@example.org'
      and task:get_helo() == 'client.example.test'
      and ip ~= nil and ip:is_valid() and ip:to_string() == '127.0.0.1'
  end,
  score = 0.5,
  description = 'smtpgate test: the envelope arrived as request headers',
}
"#;

impl Rspamd {
    fn start() -> Rspamd {
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = dir.path().join("conf");
        let write = |path: &str, text: &str| {
            let path = conf.join(path);
            fs::create_dir_all(path.parent().unwrap()).expect("conf dir");
            fs::write(path, text).expect("rspamd conf");
        };
        let port = free_port();
        write(
            "override.d/worker-normal.inc",
            &format!("bind_socket = \"127.0.0.1:{port}\";\n"),
        );
        write("override.d/worker-controller.inc", "enabled = false;\n");
        write("override.d/worker-proxy.inc", "enabled = false;\n");
        write("override.d/logging.inc", "type = \"console\";\nlevel = \"warning\";\n");
        write("local.d/options.inc", "disable_hyperscan = true;\n");
        write(
            "local.d/actions.conf",
            "rewrite_subject = 10;\nsubject = \"[SPAM] %s\";\n",
        );
        write("rspamd.local.lua", RSPAMD_LUA);
        for d in ["db", "run", "log"] {
            fs::create_dir(dir.path().join(d)).expect("rspamd dir");
        }
        let var = |name: &str, sub: &str| format!("--var={name}={}", dir.path().join(sub).display());
        let mut cmd = Command::new("/usr/bin/rspamd");
        cmd.arg("-f").arg("-i");
        if running_as_root() {
            cmd.args(["-u", "root", "-g", "root"]);
        }
        cmd.arg(var("LOCAL_CONFDIR", "conf"))
            .arg(var("DBDIR", "db"))
            .arg(var("RUNDIR", "run"))
            .arg(var("LOGDIR", "log"));
        let mut daemon = Daemon::spawn("rspamd", cmd, &dir.path().join("rspamd.out"));
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let up = wait_until(RSPAMD_START, || {
            daemon.is_running() && http_get(addr, "/ping").contains("pong")
        });
        let log = fs::read_to_string(dir.path().join("rspamd.out")).unwrap_or_default();
        assert!(up, "rspamd did not answer /ping within {RSPAMD_START:?}:\n{log}");
        Rspamd {
            url: format!("http://{addr}"),
            dir,
            _daemon: daemon,
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("rspamd.out")).unwrap_or_default()
    }
}

fn http_get(addr: SocketAddr, path: &str) -> String {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let mut answer = String::new();
    let _ = s
        .write_all(request.as_bytes())
        .and_then(|_| s.read_to_string(&mut answer));
    answer
}

// ---------------------------------------------------------------------------------------------
// The filter alone

fn filter(kind: &str, options: &str) -> Arc<dyn Filter> {
    let table: toml::Table = options.parse().expect("options toml");
    registry::build(kind, table, Path::new("/")).unwrap_or_else(|e| panic!("build {kind}: {e:?}"))
}

/// Asks `f` about `body` as a message from alice to bob over a loopback session.
async fn ask(f: &dyn Filter, subject: &str, body: &str) -> Result<Verdict, String> {
    let session = SessionInfo {
        client: Some(Ipv4Addr::LOCALHOST.into()),
        helo: Some("client.example.test".into()),
        user: None,
        listener: "inbound".into(),
        tls: false,
    };
    let text = message("scan@example.test", subject, body);
    let recipients = vec![smtpgate::envelope::Address::parse("bob@example.org").unwrap()];
    let m = MessageInfo {
        session: &session,
        sender: &smtpgate::envelope::Sender::parse("alice@example.test").unwrap(),
        recipients: &recipients,
        message: text.as_bytes(),
        tags: &[],
    };
    f.data(&m).await.map_err(|e| e.0)
}

fn added(v: &Verdict, name: &str) -> Vec<String> {
    let values = v.modifications.iter().filter_map(|m| match m {
        Modification::AddHeader(n, value) if n.eq_ignore_ascii_case(name) => Some(value.clone()),
        _ => None,
    });
    values.collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn clamav_filter_asks_real_clamd() {
    let clamd = Clamd::start();
    let tcp = filter("clamav", &format!("address = \"{}\"", clamd.addr));
    let unix = filter(
        "clamav",
        &format!("socket = {:?}\naction = \"quarantine\"", clamd.socket()),
    );

    let clean = ask(&*tcp, "hello", "nothing to see").await.expect("clean");
    assert_eq!(clean.action, Action::Accept);
    assert_eq!(added(&clean, "X-Virus-Scanned"), ["clamav"]);

    let infected = ask(&*tcp, "hello", &format!("look: {VIRUS_MARKER}"))
        .await
        .expect("infected");
    assert_eq!(
        infected.action,
        Action::Reject(Reply::virus_found(VIRUS_NAME)),
        "{}",
        clamd.log()
    );
    assert!(Reply::virus_found(VIRUS_NAME).to_string().contains(VIRUS_NAME));

    let quarantined = ask(&*unix, "hello", &format!("look: {VIRUS_MARKER}"))
        .await
        .expect("unix socket");
    assert!(
        matches!(&quarantined.action, Action::Quarantine(why) if why.contains(VIRUS_NAME)),
        "{quarantined:?}"
    );
    let clean = ask(&*unix, "hello", "nothing to see")
        .await
        .expect("clean over the unix socket");
    assert_eq!(clean.action, Action::Accept);
}

#[tokio::test(flavor = "multi_thread")]
async fn clamav_filter_errors_when_clamd_refuses_or_is_gone() {
    let mut clamd = Clamd::start();
    // Above clamd's StreamMaxLength (1M here) but within the filter's max_size: clamd says ERROR.
    let f = filter("clamav", &format!("address = \"{}\"\nmax_size = \"10MB\"", clamd.addr));
    let big = "x".repeat(2 * 1024 * 1024);
    // clamd answers "INSTREAM size limit exceeded. ERROR" and closes, which may reach us as a
    // reset before its answer does: either way, an error.
    let refused = ask(&*f, "big", &big)
        .await
        .expect_err("clamd refuses a stream over its limit");
    eprintln!("over clamd's limit: {refused}");
    // Within clamd's limit but over the filter's: not sent, and never passed silently: by
    // default accepted as unchecked (the pipeline turns that into a header, a log line and a
    // metric); `on_oversize` may tempfail or reject it instead.
    let small_limit = filter("clamav", &format!("address = \"{}\"\nmax_size = \"1KB\"", clamd.addr));
    let skipped = ask(&*small_limit, "big", &"y".repeat(4096)).await.expect("skipped");
    assert_eq!(skipped.action, Action::Accept);
    assert!(
        matches!(&skipped.modifications[..], [Modification::Unchecked(why)] if why.contains("larger than max_size")),
        "{skipped:?}"
    );
    for (setting, code) in [("tempfail", 451), ("reject", 552)] {
        let f = filter(
            "clamav",
            &format!(
                "address = \"{}\"\nmax_size = \"1KB\"\non_oversize = \"{setting}\"",
                clamd.addr
            ),
        );
        let verdict = ask(&*f, "big", &"y".repeat(4096)).await.expect("decided");
        match verdict.action {
            Action::TempFail(r) | Action::Reject(r) => assert_eq!(r.code, code, "{setting}"),
            other => panic!("{setting}: {other:?}"),
        }
    }

    clamd.daemon.stop();
    let gone = ask(&*f, "hello", "nothing to see").await.expect_err("clamd stopped");
    assert!(gone.contains(&clamd.addr.to_string()), "{gone}");
}

#[tokio::test(flavor = "multi_thread")]
async fn rspamd_filter_follows_real_rspamds_action() {
    let rspamd = Rspamd::start();
    let f = filter("rspamd", &format!("url = \"{}\"", rspamd.url));
    let clean = ask(&*f, "hello", "nothing to see").await.expect("clean");
    assert_eq!(clean.action, Action::Accept, "{}", rspamd.log());
    assert!(added(&clean, "X-Spam").is_empty(), "{clean:?}");
    assert!(
        added(&clean, "X-Spamd-Result")[0].starts_with("default: False ["),
        "{clean:?}"
    );
    assert!(
        added(&clean, "X-Spamd-Result")[0].contains("SMTPGATE_ENVELOPE(0.50)"),
        "{clean:?}\n{}",
        rspamd.log()
    );

    let reject = ask(&*f, "hello", "smtpgate test: reject").await.expect("reject");
    assert_eq!(reject.action, Action::Reject(Reply::spam_rejected()));

    let header = ask(&*f, "hello", "smtpgate test: add header")
        .await
        .expect("add header");
    assert_eq!(header.action, Action::Accept);
    assert_eq!(added(&header, "X-Spam"), ["Yes"]);
    assert!(
        added(&header, "X-Spamd-Result")[0].contains("SMTPGATE_ADD_HEADER(7.00)"),
        "{header:?}"
    );

    let rewrite = ask(&*f, "hello", "smtpgate test: rewrite subject")
        .await
        .expect("rewrite");
    assert_eq!(added(&rewrite, "Subject"), ["[SPAM] hello"]);
    assert!(
        rewrite
            .modifications
            .contains(&Modification::RemoveHeader("Subject".into()))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rspamd_filter_errors_when_nothing_listens() {
    let f = filter("rspamd", &format!("url = \"http://127.0.0.1:{}\"", free_port()));
    assert!(ask(&*f, "hello", "x").await.is_err());
}

// ---------------------------------------------------------------------------------------------
// Through the gate

/// A gate relaying to `upstream` with one before-queue filter on its listener.
fn gate_with_filter(upstream: &Upstream, filter_toml: &str) -> Gate {
    let config = GateConfig::relay_to(upstream.addr())
        .top(&format!(
            "[[filter]]\nname = \"scan\"\ntimeout = \"20s\"\n{filter_toml}"
        ))
        .listener("filters = [\"scan\"]");
    Gate::start(&config.to_toml())
}

fn send(gate: &Gate, id: &str, subject: &str, body: &str) -> String {
    let m = message(id, subject, body);
    let sent = smtplib_send(gate.smtp_addr(), "alice@example.test", &["bob@example.org"], &m);
    sent.reply("END-OF-DATA")
}

/// The message the upstream got with this Message-ID, once it arrives.
fn arrived(upstream: &Upstream, id: &str) -> String {
    let mut found = None;
    wait_until(SOON, || {
        found = upstream
            .messages()
            .into_iter()
            .map(|m| m.text())
            .find(|t| t.contains(id));
        found.is_some()
    });
    found.unwrap_or_else(|| panic!("{id} did not arrive upstream"))
}

#[test]
fn clamav_in_the_gate_passes_clean_mail_and_refuses_a_virus() {
    let clamd = Clamd::start();
    let upstream = Upstream::start();
    let gate = gate_with_filter(&upstream, &format!("kind = \"clamav\"\naddress = \"{}\"", clamd.addr));

    let reply = send(&gate, "clean@example.test", "hello", "nothing to see");
    assert!(reply.starts_with("250 "), "{reply}");
    assert_eq!(
        header_values(&arrived(&upstream, "clean@example.test"), "X-Virus-Scanned"),
        ["clamav"]
    );

    let reply = send(&gate, "virus@example.test", "hello", &format!("look: {VIRUS_MARKER}"));
    assert!(reply.starts_with("554 5.7.1"), "{reply}");
    assert!(reply.contains(VIRUS_NAME), "{reply}");
    assert!(
        !upstream
            .messages()
            .iter()
            .any(|m| m.text().contains("virus@example.test"))
    );
}

#[test]
fn clamd_down_fails_open_or_closed_per_on_error() {
    let mut clamd = Clamd::start();
    let address = clamd.addr;
    clamd.daemon.stop();
    let upstream = Upstream::start();
    let open = gate_with_filter(
        &upstream,
        &format!("kind = \"clamav\"\naddress = \"{address}\"\non_error = \"accept\""),
    );
    let reply = send(&open, "open@example.test", "hello", "nothing to see");
    assert!(reply.starts_with("250 "), "{reply}");
    let text = arrived(&upstream, "open@example.test");
    assert!(header_values(&text, "X-Virus-Scanned").is_empty(), "{text}");
    let unchecked = header_values(&text, "X-Smtpgate-Unchecked");
    assert!(
        unchecked.len() == 1 && unchecked[0].starts_with("scan; filter failed"),
        "an unscanned message is marked: {text}"
    );
    assert_eq!(open.metric("smtpgate_filter_unchecked_total"), 1.0);

    let closed = gate_with_filter(
        &upstream,
        &format!("kind = \"clamav\"\naddress = \"{address}\"\non_error = \"tempfail\""),
    );
    let reply = send(&closed, "closed@example.test", "hello", "nothing to see");
    assert!(reply.starts_with("451 4.7.1"), "{reply}");
}

#[test]
fn rspamd_in_the_gate_rejects_tags_and_rewrites() {
    let rspamd = Rspamd::start();
    let upstream = Upstream::start();
    let gate = gate_with_filter(&upstream, &format!("kind = \"rspamd\"\nurl = \"{}\"", rspamd.url));

    let reply = send(&gate, "ham@example.test", "hello", "nothing to see");
    assert!(reply.starts_with("250 "), "{reply}\n{}", rspamd.log());
    let ham = arrived(&upstream, "ham@example.test");
    assert!(header_values(&ham, "X-Spam").is_empty(), "{ham}");
    assert_eq!(header_values(&ham, "X-Spamd-Result").len(), 1, "{ham}");

    let reply = send(&gate, "spam@example.test", "hello", "smtpgate test: reject");
    assert!(reply.starts_with("550 5.7.1"), "{reply}");

    let reply = send(&gate, "tagged@example.test", "hello", "smtpgate test: add header");
    assert!(reply.starts_with("250 "), "{reply}");
    assert_eq!(
        header_values(&arrived(&upstream, "tagged@example.test"), "X-Spam"),
        ["Yes"]
    );

    let reply = send(
        &gate,
        "rewritten@example.test",
        "hello",
        "smtpgate test: rewrite subject",
    );
    assert!(reply.starts_with("250 "), "{reply}");
    let rewritten = arrived(&upstream, "rewritten@example.test");
    assert_eq!(header_values(&rewritten, "Subject"), ["[SPAM] hello"], "{rewritten}");
    assert!(
        !upstream
            .messages()
            .iter()
            .any(|m| m.text().contains("spam@example.test"))
    );
}

/// An after-queue scan whose scanner never answers (down, `on_error = "tempfail"`) is retried
/// until the message's `max_age`, then the message is bounced as expired (4.4.7): it is never
/// delivered unscanned, and never retried forever.
#[test]
fn an_after_queue_scan_that_never_runs_expires_with_max_age() {
    let upstream = Upstream::start();
    // Nothing listens on a port freed just now: every scan fails to connect.
    let dead = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
    let toml = GateConfig::relay_to(upstream.addr())
        .listener("filters = [\"av\"]")
        .queue("max_age = \"3s\"")
        .to_toml()
        + &format!(
            "\n[[filter]]\nname = \"av\"\nkind = \"clamav\"\nstage = \"after_queue\"\n\
             address = \"{dead}\"\non_error = \"tempfail\"\ntimeout = \"1s\"\n"
        );
    let gate = Gate::start(&toml);
    let t = smtplib_send(
        gate.smtp_addr(),
        "sender@example.test",
        &["rcpt@example.org"],
        &message("scan-expiry@x", "s", "never scanned"),
    );
    assert!(t.reply("END-OF-DATA").starts_with("250"), "{t}");
    let got = upstream.wait_for(1, Duration::from_secs(30));
    assert_eq!(got.len(), 1, "one message reached the upstream: {got:#?}");
    assert_eq!(got[0].rcpt_addresses(), ["sender@example.test"], "only the bounce");
    let text = got[0].text();
    assert!(text.contains("4.4.7") && text.contains("scan-expiry@x"), "{text}");
    assert!(wait_until(SOON, || gate.metric("smtpgate_queue_depth") == 0.0));
}
