//! End-to-end routing: `[[route]]` rules, aliases, Sieve, SRS and `smtpgate route test`, seen
//! from real clients (Python smtplib) and from several scriptable upstreams, one [`Upstream`] per
//! pool, so each test can tell which copy of a message went where.

mod support;

use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use support::{
    DnsServer, DnsTable, Gate, PyTranscript, SOON, Upstream, UpstreamMessage, UsersFile, header_values, run_smtpgate,
    smtplib, toml_path, wait_until,
};

/// How long a reloaded aliases file may take to be seen (it is checked at most once a second).
const RELOAD_DEADLINE: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// Config

/// Named pools, one [`Upstream`] each (more for [`Pools::with_servers`]).
struct Pools {
    pools: Vec<(&'static str, Vec<Upstream>)>,
}

impl Pools {
    fn new(names: &[&'static str]) -> Pools {
        Pools {
            pools: names.iter().map(|n| (*n, vec![Upstream::start()])).collect(),
        }
    }

    /// A pool with `n` servers, tried in order.
    fn with_servers(mut self, name: &'static str, n: usize) -> Pools {
        self.pools.push((name, (0..n).map(|_| Upstream::start()).collect()));
        self
    }

    fn servers(&self, name: &str) -> &[Upstream] {
        let found = self.pools.iter().find(|(n, _)| *n == name);
        &found.unwrap_or_else(|| panic!("no pool {name:?}")).1
    }

    /// Every message the pool's servers accepted.
    fn messages(&self, name: &str) -> Vec<UpstreamMessage> {
        self.servers(name).iter().flat_map(|u| u.messages()).collect()
    }

    /// The pools whose servers accepted a message with this Message-ID, one entry per copy.
    fn where_is(&self, message_id: &str) -> Vec<&'static str> {
        let mut out = Vec::new();
        for (name, _) in &self.pools {
            for m in self.messages(name) {
                if message_id_of(&m) == message_id {
                    out.push(*name);
                }
            }
        }
        out
    }

    fn toml(&self) -> String {
        let mut out = String::new();
        for (name, ups) in &self.pools {
            let servers: Vec<String> = ups.iter().map(|u| format!("\"{}\"", u.addr())).collect();
            out.push_str(&format!(
                "\n[[pool]]\nname = \"{name}\"\nservers = [{}]\ntls = \"none\"\nhealth_check = {{ enabled = false }}\n",
                servers.join(", ")
            ));
        }
        out
    }
}

/// The usual listener: relays for loopback clients.
const LISTENER: &str =
    "[[listener]]\nname = \"inbound\"\naddress = \"127.0.0.1:0\"\nrelay_networks = [\"127.0.0.0/8\"]\n";

/// A whole config: `listeners` (TOML tables), the pools, `routes` (`[[route]]` tables), then
/// `tail` (more tables such as `[routing]` or `[dns]`) and `queue` lines for `[queue]`.
fn config(listeners: &str, pools: &Pools, routes: &str, tail: &str, queue: &str) -> String {
    format!(
        "hostname = \"gate.example.test\"\nshutdown_timeout = \"5s\"\n\n[spool]\ndir = \"spool\"\n\n\
         [admin]\naddress = \"127.0.0.1:0\"\n\n{listeners}\n{}\n{routes}\n{tail}\n\n[queue]\nretry = [\"1s\"]\n{queue}\n",
        pools.toml()
    )
}

/// A temp dir for aliases files, Sieve scripts and address lists.
fn files() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
}

// ---------------------------------------------------------------------------------------------
// Messages and clients

fn msg(id: &str, subject: &str, extra_headers: &str, body: &str) -> String {
    format!(
        "From: Alice <alice@example.test>\r\nTo: Bob <bob@example.org>\r\nSubject: {subject}\r\n\
         Date: Thu, 01 Jan 2026 00:00:00 +0000\r\nMessage-ID: <{id}>\r\n{extra_headers}\r\n{body}\r\n"
    )
}

fn message_id_of(m: &UpstreamMessage) -> String {
    let ids = header_values(&m.text(), "Message-ID");
    ids.first()
        .map(|v| v.trim_matches(['<', '>']).to_string())
        .unwrap_or_default()
}

/// A Python string literal (JSON string syntax).
fn py(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// How a probe connects.
#[derive(Default, Clone, Copy)]
struct Client<'a> {
    /// Source address to bind (a loopback address), else the OS's choice.
    source: Option<&'a str>,
    /// AUTH (PLAIN/LOGIN, as smtplib chooses) with these credentials.
    login: Option<(&'a str, &'a str)>,
}

/// One transaction with smtplib, as `client`.
fn send_with(addr: SocketAddr, client: Client<'_>, from: &str, to: &[&str], message: &str) -> PyTranscript {
    let source = client.source.map_or("None".to_string(), |s| format!("({}, 0)", py(s)));
    let login = client.login.map_or(String::new(), |(u, p)| {
        format!(
            "try:\n    code, m = s.login({}, {})\n    show(\"AUTH\", code, m)\n\
             except smtplib.SMTPException as e:\n    show(\"AUTH\", 0, repr(e))\n    sys.exit(3)\n",
            py(u),
            py(p)
        )
    });
    let rcpts: Vec<String> = to.iter().map(|t| py(t)).collect();
    let script = format!(
        "s = smtplib.SMTP(timeout=60, source_address={source})\n\
         code, m = s.connect(HOST, PORT)\nshow(\"CONNECT\", code, m)\n\
         code, m = s.ehlo(\"client.example.test\")\nshow(\"EHLO\", code, m)\n\
         {login}send(s, {}, [{}], {})\nquit(s)\n",
        py(from),
        rcpts.join(", "),
        py(message)
    );
    smtplib(addr, &script)
}

fn send(addr: SocketAddr, from: &str, to: &[&str], message: &str) -> PyTranscript {
    send_with(addr, Client::default(), from, to, message)
}

/// Sends and asserts the message was accepted (`250` at the end of data).
fn send_ok(addr: SocketAddr, from: &str, to: &[&str], message: &str) {
    let t = send(addr, from, to, message);
    assert!(t.reply("END-OF-DATA").starts_with("250 "), "not accepted:\n{t}");
}

/// Waits until the gate's queue is empty: everything spooled was delivered (or bounced).
fn wait_drained(gate: &Gate) {
    let drained = wait_until(SOON, || gate.try_metric("smtpgate_queue_depth").unwrap_or(0.0) == 0.0);
    assert!(drained, "queue not drained:\n{}", gate.metrics());
}

/// Waits until a message with `id` reached one of `pools`' servers.
fn wait_id(pools: &Pools, id: &str) {
    let arrived = wait_until(SOON, || !pools.where_is(id).is_empty());
    assert!(arrived, "message {id} did not arrive at any pool");
}

/// The one copy with `id` a pool received; panics if there is not exactly one.
fn copy_at(pools: &Pools, pool: &str, id: &str) -> UpstreamMessage {
    let copies: Vec<UpstreamMessage> = pools
        .messages(pool)
        .into_iter()
        .filter(|m| message_id_of(m) == id)
        .collect();
    assert_eq!(copies.len(), 1, "copies of {id} at pool {pool}: {copies:#?}");
    copies.into_iter().next().unwrap()
}

fn sorted(v: Vec<&str>) -> Vec<String> {
    let mut v: Vec<String> = v.into_iter().map(str::to_string).collect();
    v.sort();
    v
}

/// A body of about `bytes` bytes in 72-character lines.
fn filler(bytes: usize) -> String {
    let line = "x".repeat(70);
    vec![line; bytes / 72 + 1].join("\r\n")
}

// ---------------------------------------------------------------------------------------------
// 1. Every match kind

const KIND_POOLS: &[&str] = &[
    "sender_exact",
    "sender_at",
    "sender_glob",
    "sender_regex",
    "sender_domain",
    "recipient",
    "recipient_domain",
    "new",
    "old",
    "client",
    "user",
    "listener",
    "size_over",
    "size_under",
    "header",
    "subject",
    "tag",
    "body",
    "default",
];

const KIND_ROUTES: &str = r#"
[[route]]
name = "sender-exact"
when = { sender = "boss@exact.test" }
pool = "sender_exact"

[[route]]
name = "sender-at-domain"
when = { sender = "@dom.test" }
pool = "sender_at"

[[route]]
name = "sender-glob"
when = { sender = "*@*.glob.test" }
pool = "sender_glob"

[[route]]
name = "sender-regex"
when = { sender = '/^re-[0-9]+@regex\.test$/' }
pool = "sender_regex"

[[route]]
name = "sender-domain"
when = { sender_domain = "sd.test" }
pool = "sender_domain"

[[route]]
name = "recipient"
when = { recipient = "vip@r.test" }
pool = "recipient"

[[route]]
name = "recipient-domain"
when = { recipient_domain = "rd.test" }
pool = "recipient_domain"

[[route]]
name = "migrated"
when = { recipient_file = "MIGRATED" }
pool = "new"

[[route]]
name = "not-yet-migrated"
when = { recipient_domain = "corp.test" }
pool = "old"

[[route]]
name = "client"
when = { client = "127.0.0.2/32" }
pool = "client"

[[route]]
name = "user"
when = { user = "alice" }
pool = "user"

[[route]]
name = "listener"
when = { listener = "second" }
pool = "listener"

[[route]]
name = "size-over"
when = { size_over = "20k" }
pool = "size_over"

[[route]]
name = "size-under"
when = { size_under = "4k", recipient_domain = "size.test" }
pool = "size_under"

[[route]]
name = "header"
when = { header = { X-Route = "^(yes|sure)$" } }
pool = "header"

[[route]]
name = "subject"
when = { subject = '^\[urgent\]' }
pool = "subject"

[[route]]
name = "tagger"
when = { sender_domain = "tagger.test" }
tag = "t1"
continue = true

[[route]]
name = "tagged"
when = { tag = "t1" }
pool = "tag"

[[route]]
name = "body"
when = { body = '\bmagic-word\b' }
pool = "body"

[[route]]
name = "default"
pool = "default"
"#;

/// One message sent to probe a rule, and the pool it must reach.
struct Probe {
    id: &'static str,
    client: Client<'static>,
    listener: &'static str,
    from: &'static str,
    to: &'static str,
    subject: &'static str,
    headers: &'static str,
    body: String,
    pool: &'static str,
}

fn probe(id: &'static str, pool: &'static str) -> Probe {
    Probe {
        id,
        client: Client::default(),
        listener: "inbound",
        from: "sender@neutral.test",
        to: "rcpt@neutral.test",
        subject: "neutral",
        headers: "",
        body: "plain words".into(),
        pool,
    }
}

impl Probe {
    fn from(mut self, from: &'static str) -> Self {
        self.from = from;
        self
    }
    fn to(mut self, to: &'static str) -> Self {
        self.to = to;
        self
    }
    fn client(mut self, client: Client<'static>) -> Self {
        self.client = client;
        self
    }
    fn listener(mut self, listener: &'static str) -> Self {
        self.listener = listener;
        self
    }
    fn subject(mut self, subject: &'static str) -> Self {
        self.subject = subject;
        self
    }
    fn headers(mut self, headers: &'static str) -> Self {
        self.headers = headers;
        self
    }
    fn body(mut self, body: String) -> Self {
        self.body = body;
        self
    }
}

#[test]
fn each_match_kind_routes_to_its_pool_and_near_misses_fall_through_to_the_default() {
    let pools = Pools::new(KIND_POOLS);
    let dir = files();
    let list = write(
        dir.path(),
        "migrated.txt",
        "# moved so far\nmoved@corp.test\nAlso.Moved@Corp.Test\n",
    );
    let users = UsersFile::create(&[("alice", "alice-pw"), ("bob", "bob-pw")]);
    let listeners = format!(
        "{LISTENER}auth = {{ users_file = {}, allow_plaintext = true }}\n\n\
         [[listener]]\nname = \"second\"\naddress = \"127.0.0.1:0\"\nrelay_networks = [\"127.0.0.0/8\"]\n",
        toml_path(&users.path)
    );
    let routes = KIND_ROUTES.replace("\"MIGRATED\"", &toml_path(&list));
    let gate = Gate::start(&config(&listeners, &pools, &routes, "", ""));

    let from2 = Client {
        source: Some("127.0.0.2"),
        login: None,
    };
    let from1 = Client {
        source: Some("127.0.0.1"),
        login: None,
    };
    let alice = Client {
        source: None,
        login: Some(("alice", "alice-pw")),
    };
    let bob = Client {
        source: None,
        login: Some(("bob", "bob-pw")),
    };
    let probes = vec![
        probe("neutral", "default"),
        probe("sender-exact", "sender_exact").from("boss@exact.test"),
        probe("sender-exact-case", "sender_exact").from("Boss@EXACT.test"),
        probe("sender-exact-miss", "default").from("boss2@exact.test"),
        probe("sender-at", "sender_at").from("anyone@dom.test"),
        probe("sender-at-miss", "default").from("anyone@sub.dom.test"),
        probe("sender-glob", "sender_glob").from("x@a.glob.test"),
        probe("sender-glob-miss", "default").from("x@glob.test"),
        probe("sender-regex", "sender_regex").from("re-42@regex.test"),
        probe("sender-regex-miss", "default").from("re-x@regex.test"),
        probe("sender-domain", "sender_domain").from("someone@sd.test"),
        probe("sender-domain-miss", "default").from("someone@sd.test.example"),
        probe("recipient", "recipient").to("vip@r.test"),
        probe("recipient-miss", "default").to("other@r.test"),
        probe("recipient-domain", "recipient_domain").to("x@rd.test"),
        probe("recipient-domain-miss", "default").to("x@sub.rd.test"),
        probe("file-listed", "new").to("moved@corp.test"),
        probe("file-listed-case", "new").to("also.moved@corp.test"),
        probe("file-unlisted", "old").to("stay@corp.test"),
        probe("client", "client").client(from2),
        probe("client-miss", "default").client(from1),
        probe("user", "user").client(alice),
        probe("user-miss", "default").client(bob),
        probe("listener", "listener").listener("second"),
        probe("size-over", "size_over").body(filler(30_000)),
        probe("size-under", "size_under").to("x@size.test"),
        probe("size-under-miss", "default")
            .to("x@size.test")
            .body(filler(6_000)),
        probe("header", "header").headers("X-Route: sure\r\n"),
        probe("header-miss", "default").headers("X-Route: not sure\r\n"),
        probe("subject", "subject").subject("[URGENT] help"),
        probe("subject-miss", "default").subject("not [urgent]"),
        probe("tag", "tag").from("x@tagger.test"),
        probe("body", "body").body("first line\r\nmagic-word\r\nlast line".into()),
        probe("body-miss", "default").body("no magicword here, nor magic-wording".into()),
    ];

    for p in &probes {
        let addr = gate.listener_addr(p.listener);
        let message = msg(p.id, p.subject, p.headers, &p.body);
        let t = send_with(addr, p.client, p.from, &[p.to], &message);
        if p.client.login.is_some() {
            assert!(t.reply("AUTH").starts_with("235"), "{}: AUTH failed:\n{t}", p.id);
        }
        assert!(
            t.reply("END-OF-DATA").starts_with("250 "),
            "{}: not accepted:\n{t}",
            p.id
        );
    }
    for p in &probes {
        wait_id(&pools, p.id);
    }
    wait_drained(&gate);
    let mut wrong = Vec::new();
    for p in &probes {
        let at = pools.where_is(p.id);
        if at != [p.pool] {
            wrong.push(format!("{}: expected at {:?}, arrived at {at:?}", p.id, p.pool));
        }
    }
    assert!(wrong.is_empty(), "misrouted:\n{}", wrong.join("\n"));
}

/// Body rules see the message as it travels, with CRLF line ends: a multi-line regex anchored
/// with `^...$` must still match a whole line.
#[test]
fn body_rule_line_anchors_match_crlf_lines() {
    let pools = Pools::new(&["body", "default"]);
    let routes = "[[route]]\nname = \"body\"\nwhen = { body = '(?m)^magic-word$' }\npool = \"body\"\n\n\
                  [[route]]\nname = \"default\"\npool = \"default\"\n";
    let gate = Gate::start(&config(LISTENER, &pools, routes, "", ""));

    let message = msg("anchored", "neutral", "", "first line\r\nmagic-word\r\nlast line");
    send_ok(gate.smtp_addr(), "a@neutral.test", &["b@neutral.test"], &message);

    wait_id(&pools, "anchored");
    assert_eq!(pools.where_is("anchored"), ["body"]);
}

// ---------------------------------------------------------------------------------------------
// 2. Actions

const ACTION_ROUTES: &str = r#"
[[route]]
name = "refuse-envelope"
when = { recipient = "blocked@actions.test" }
reject = "550 5.7.1 envelope says no"

[[route]]
name = "drop"
when = { recipient = "void@actions.test" }
discard = true

[[route]]
name = "forward"
when = { recipient = "old@actions.test" }
redirect = ["new@other.test"]

[[route]]
name = "by-mx"
when = { recipient_domain = "mx.test" }
mx = true

[[route]]
name = "other"
when = { recipient_domain = "other.test" }
pool = "other"

[[route]]
name = "archive-box"
when = { recipient_domain = "archive.test" }
pool = "archive"

[[route]]
name = "refuse-content"
when = { subject = "forbidden" }
reject = "550 5.7.1 content says no"

[[route]]
name = "main"
when = { recipient_domain = "actions.test" }
copy_to = "keep@archive.test"
add_headers = { X-Routed = "main" }
remove_headers = ["X-Secret"]
pool = "main"
"#;

/// A gate with [`ACTION_ROUTES`], MX delivery through a test DNS server to the `mx` upstream.
fn actions_gate(pools: &Pools, mx: &Upstream) -> (DnsServer, Gate) {
    let dns = DnsServer::start(
        DnsTable::new()
            .mx("mx.test", 10, "mail.mx.test")
            .a("mail.mx.test", Ipv4Addr::LOCALHOST),
    );
    let tail = format!("[dns]\nnameservers = [\"{}\"]\n", dns.addr());
    let queue = format!("smtp_port = {}\n", mx.addr().port());
    let gate = Gate::start(&config(LISTENER, pools, ACTION_ROUTES, &tail, &queue));
    (dns, gate)
}

#[test]
fn pool_mx_and_redirect_actions_deliver_where_the_rule_says() {
    let pools = Pools::new(&["main", "other", "archive"]);
    let mx = Upstream::start();
    let (_dns, gate) = actions_gate(&pools, &mx);
    let addr = gate.smtp_addr();

    send_ok(addr, "a@src.test", &["user@mx.test"], &msg("by-mx", "hello", "", "x"));
    send_ok(
        addr,
        "a@src.test",
        &["old@actions.test"],
        &msg("redirected", "hello", "", "x"),
    );
    send_ok(addr, "a@src.test", &["x@other.test"], &msg("pooled", "hello", "", "x"));

    let at_mx = mx.wait_for(1, SOON);
    assert_eq!(message_id_of(&at_mx[0]), "by-mx");
    assert_eq!(at_mx[0].rcpt_addresses(), ["user@mx.test"]);
    wait_id(&pools, "redirected");
    wait_id(&pools, "pooled");
    wait_drained(&gate);
    assert_eq!(
        copy_at(&pools, "other", "redirected").rcpt_addresses(),
        ["new@other.test"]
    );
    assert_eq!(pools.where_is("redirected"), ["other"]);
    assert_eq!(copy_at(&pools, "other", "pooled").rcpt_addresses(), ["x@other.test"]);
    assert_eq!(pools.where_is("by-mx"), Vec::<&str>::new());
    assert_eq!(mx.messages().len(), 1);
}

#[test]
fn reject_answers_at_rcpt_for_envelope_rules_and_at_end_of_data_for_content_rules() {
    let pools = Pools::new(&["main", "other", "archive"]);
    let mx = Upstream::start();
    let (_dns, gate) = actions_gate(&pools, &mx);
    let addr = gate.smtp_addr();

    let t = send(
        addr,
        "a@src.test",
        &["blocked@actions.test"],
        &msg("blocked", "hello", "", "x"),
    );
    assert_eq!(t.reply("RCPT"), "550 5.7.1 envelope says no", "{t}");
    assert!(t.replies("END-OF-DATA").is_empty(), "{t}");

    let t = send(
        addr,
        "a@src.test",
        &["x@actions.test"],
        &msg("forbidden", "forbidden", "", "x"),
    );
    assert_eq!(t.reply("RCPT").split(' ').next(), Some("250"), "{t}");
    assert_eq!(t.reply("END-OF-DATA"), "550 5.7.1 content says no", "{t}");

    send_ok(
        addr,
        "a@src.test",
        &["x@actions.test"],
        &msg("marker", "hello", "", "x"),
    );
    wait_id(&pools, "marker");
    wait_drained(&gate);
    assert!(pools.where_is("blocked").is_empty());
    assert!(pools.where_is("forbidden").is_empty());
    assert!(mx.messages().is_empty());
}

#[test]
fn discard_answers_250_and_delivers_nothing_for_that_recipient() {
    let pools = Pools::new(&["main", "other", "archive"]);
    let mx = Upstream::start();
    let (_dns, gate) = actions_gate(&pools, &mx);
    let addr = gate.smtp_addr();

    send_ok(
        addr,
        "a@src.test",
        &["void@actions.test"],
        &msg("void-only", "hello", "", "x"),
    );
    send_ok(
        addr,
        "a@src.test",
        &["void@actions.test", "kept@other.test"],
        &msg("void-and-kept", "hello", "", "x"),
    );

    wait_id(&pools, "void-and-kept");
    wait_drained(&gate);
    assert!(
        pools.where_is("void-only").is_empty(),
        "{:?}",
        pools.where_is("void-only")
    );
    assert_eq!(pools.where_is("void-and-kept"), ["other"]);
    assert_eq!(
        copy_at(&pools, "other", "void-and-kept").rcpt_addresses(),
        ["kept@other.test"]
    );
    assert!(mx.messages().is_empty());
}

#[test]
fn copy_to_adds_an_archive_copy_and_header_changes_apply_to_the_deciding_route_only() {
    let pools = Pools::new(&["main", "other", "archive"]);
    let mx = Upstream::start();
    let (_dns, gate) = actions_gate(&pools, &mx);

    let message = msg("archived", "hello", "X-Secret: do not forward\r\nX-Keep: yes\r\n", "x");
    send_ok(gate.smtp_addr(), "a@src.test", &["someone@actions.test"], &message);

    wait_until(SOON, || pools.where_is("archived").len() >= 2);
    wait_drained(&gate);
    assert_eq!(sorted(pools.where_is("archived")), ["archive", "main"]);

    let original = copy_at(&pools, "main", "archived");
    assert_eq!(original.rcpt_addresses(), ["someone@actions.test"]);
    assert_eq!(
        header_values(&original.text(), "X-Routed"),
        ["main"],
        "{}",
        original.text()
    );
    assert!(
        header_values(&original.text(), "X-Secret").is_empty(),
        "{}",
        original.text()
    );
    assert_eq!(header_values(&original.text(), "X-Keep"), ["yes"]);

    let archive = copy_at(&pools, "archive", "archived");
    assert_eq!(archive.rcpt_addresses(), ["keep@archive.test"]);
    assert!(
        header_values(&archive.text(), "X-Routed").is_empty(),
        "{}",
        archive.text()
    );
    assert_eq!(
        header_values(&archive.text(), "X-Secret"),
        ["do not forward"],
        "{}",
        archive.text()
    );
    assert_eq!(archive.mail_from, "a@src.test");
}

// ---------------------------------------------------------------------------------------------
// 3. Split

#[test]
fn three_recipients_in_two_routes_become_two_copies_each_with_its_own_recipients() {
    let pools = Pools::new(&["one", "two"]);
    let routes = "[[route]]\nname = \"one\"\nwhen = { recipient_domain = \"one.test\" }\npool = \"one\"\n\n\
                  [[route]]\nname = \"two\"\nwhen = { recipient_domain = \"two.test\" }\npool = \"two\"\n";
    let gate = Gate::start(&config(LISTENER, &pools, routes, "", ""));

    send_ok(
        gate.smtp_addr(),
        "a@src.test",
        &["a@one.test", "b@two.test", "c@one.test"],
        &msg("split", "hello", "", "x"),
    );

    wait_until(SOON, || pools.where_is("split").len() >= 2);
    wait_drained(&gate);
    assert_eq!(sorted(pools.where_is("split")), ["one", "two"]);
    let one = copy_at(&pools, "one", "split");
    let two = copy_at(&pools, "two", "split");
    assert_eq!(sorted(one.rcpt_addresses()), ["a@one.test", "c@one.test"]);
    assert_eq!(two.rcpt_addresses(), ["b@two.test"]);
    assert_eq!(one.mail_from, "a@src.test");
    assert_eq!(two.mail_from, "a@src.test");
    assert_eq!(one.text().split("\r\n\r\n").nth(1), two.text().split("\r\n\r\n").nth(1));
}

// ---------------------------------------------------------------------------------------------
// 4. Aliases

const DOMAIN_ROUTES: &str = r#"
[[route]]
name = "corp"
when = { recipient_domain = "corp.test" }
pool = "corp"

[[route]]
name = "ext"
when = { recipient_domain = "ext.test" }
pool = "ext"

[[route]]
name = "new"
when = { recipient_domain = "new.test" }
pool = "new"

[[route]]
name = "default"
pool = "default"
"#;

const ALIASES: &str = "# test aliases\n\
    team@corp.test: alice@corp.test, devs@corp.test\n\
    devs@corp.test: bob@corp.test,\n    carol@ext.test\n\
    loop1@corp.test: loop2@corp.test\n\
    loop2@corp.test: loop1@corp.test\n\
    @old.test: @new.test\n";

fn aliases_gate(pools: &Pools, aliases: &Path) -> Gate {
    let tail = format!("[routing]\naliases = {}\n", toml_path(aliases));
    Gate::start(&config(LISTENER, pools, DOMAIN_ROUTES, &tail, ""))
}

#[test]
fn nested_alias_and_domain_alias_reach_every_member_by_its_own_route() {
    let pools = Pools::new(&["corp", "ext", "new", "default"]);
    let dir = files();
    let aliases = write(dir.path(), "aliases", ALIASES);
    let gate = aliases_gate(&pools, &aliases);
    let addr = gate.smtp_addr();

    send_ok(addr, "a@src.test", &["team@corp.test"], &msg("team", "hello", "", "x"));
    send_ok(
        addr,
        "a@src.test",
        &["someone@old.test"],
        &msg("moved-domain", "hello", "", "x"),
    );

    wait_until(SOON, || pools.where_is("team").len() >= 2);
    wait_id(&pools, "moved-domain");
    wait_drained(&gate);
    assert_eq!(sorted(pools.where_is("team")), ["corp", "ext"]);
    assert_eq!(
        sorted(copy_at(&pools, "corp", "team").rcpt_addresses()),
        ["alice@corp.test", "bob@corp.test"]
    );
    assert_eq!(copy_at(&pools, "ext", "team").rcpt_addresses(), ["carol@ext.test"]);
    assert_eq!(pools.where_is("moved-domain"), ["new"]);
    assert_eq!(
        copy_at(&pools, "new", "moved-domain").rcpt_addresses(),
        ["someone@new.test"]
    );
}

#[test]
fn alias_loop_refuses_the_message_with_5_4_6_and_delivers_nothing() {
    let pools = Pools::new(&["corp", "ext", "new", "default"]);
    let dir = files();
    let aliases = write(dir.path(), "aliases", ALIASES);
    let gate = aliases_gate(&pools, &aliases);
    let addr = gate.smtp_addr();

    let t = send(
        addr,
        "a@src.test",
        &["loop1@corp.test", "x@corp.test"],
        &msg("looped", "hello", "", "x"),
    );
    let reply = t.reply("END-OF-DATA");
    assert!(reply.starts_with("554 5.4.6 "), "{t}");

    send_ok(addr, "a@src.test", &["x@corp.test"], &msg("marker", "hello", "", "x"));
    wait_id(&pools, "marker");
    wait_drained(&gate);
    assert!(pools.where_is("looped").is_empty(), "{:?}", pools.where_is("looped"));
}

#[test]
fn aliases_file_changed_while_running_is_picked_up() {
    let pools = Pools::new(&["corp", "ext", "new", "default"]);
    let dir = files();
    let aliases = write(dir.path(), "aliases", ALIASES);
    let gate = aliases_gate(&pools, &aliases);
    let addr = gate.smtp_addr();

    send_ok(
        addr,
        "a@src.test",
        &["late@corp.test"],
        &msg("before", "hello", "", "x"),
    );
    wait_id(&pools, "before");
    assert_eq!(pools.where_is("before"), ["corp"]);

    write(
        dir.path(),
        "aliases",
        &format!("{ALIASES}late@corp.test: late@ext.test\n"),
    );
    let mut n = 0;
    let picked_up = wait_until(RELOAD_DEADLINE, || {
        n += 1;
        let id = format!("after-{n}");
        send_ok(addr, "a@src.test", &["late@corp.test"], &msg(&id, "hello", "", "x"));
        wait_id(&pools, &id);
        pools.where_is(&id) == ["ext"]
    });
    assert!(picked_up, "after {n} messages the new alias was still not used");
    let last = copy_at(&pools, "ext", &format!("after-{n}"));
    assert_eq!(last.rcpt_addresses(), ["late@ext.test"]);
}

// ---------------------------------------------------------------------------------------------
// 5. Sieve

#[test]
fn sieve_redirect_copy_discard_and_reject_act_per_user() {
    let pools = Pools::new(&["corp", "ext", "new", "default"]);
    let dir = files();
    let sieve = dir.path().join("sieve");
    fs::create_dir(&sieve).expect("sieve dir");
    write(
        &sieve,
        "alice@corp.test.sieve",
        "require [\"copy\"];\nredirect :copy \"bob@ext.test\";\n",
    );
    write(&sieve, "carol@corp.test.sieve", "discard;\n");
    write(
        &sieve,
        "erin@corp.test.sieve",
        "require [\"reject\"];\nreject \"erin does not want this\";\n",
    );
    let tail = format!("[routing]\nsieve_dir = {}\n", toml_path(&sieve));
    let gate = Gate::start(&config(LISTENER, &pools, DOMAIN_ROUTES, &tail, ""));
    let addr = gate.smtp_addr();

    send_ok(
        addr,
        "a@src.test",
        &["alice@corp.test"],
        &msg("copied", "hello", "", "x"),
    );
    send_ok(
        addr,
        "a@src.test",
        &["carol@corp.test", "dave@corp.test"],
        &msg("half", "hello", "", "x"),
    );
    send_ok(
        addr,
        "a@src.test",
        &["carol@corp.test"],
        &msg("dropped", "hello", "", "x"),
    );
    let t = send(
        addr,
        "a@src.test",
        &["erin@corp.test"],
        &msg("refused", "hello", "", "x"),
    );
    let reply = t.reply("END-OF-DATA");
    assert!(reply.starts_with("550 5.7.1 "), "{t}");
    assert!(reply.contains("erin does not want this"), "{t}");

    wait_until(SOON, || pools.where_is("copied").len() >= 2);
    wait_id(&pools, "half");
    wait_drained(&gate);
    assert_eq!(sorted(pools.where_is("copied")), ["corp", "ext"]);
    assert_eq!(copy_at(&pools, "corp", "copied").rcpt_addresses(), ["alice@corp.test"]);
    assert_eq!(copy_at(&pools, "ext", "copied").rcpt_addresses(), ["bob@ext.test"]);
    assert_eq!(pools.where_is("half"), ["corp"]);
    assert_eq!(copy_at(&pools, "corp", "half").rcpt_addresses(), ["dave@corp.test"]);
    assert!(pools.where_is("dropped").is_empty());
    assert!(pools.where_is("refused").is_empty());
}

// ---------------------------------------------------------------------------------------------
// 6. SRS

#[test]
fn forwarding_to_another_domain_rewrites_the_sender_with_srs_and_the_bounce_finds_the_sender() {
    let pools = Pools::new(&["far", "origin", "default"]);
    let dir = files();
    let aliases = write(dir.path(), "aliases", "fwd@corp.test: someone@far.test\n");
    let routes = "[[route]]\nname = \"far\"\nwhen = { recipient_domain = \"far.test\" }\npool = \"far\"\n\n\
                  [[route]]\nname = \"origin\"\nwhen = { recipient_domain = \"origin.test\" }\npool = \"origin\"\n\n\
                  [[route]]\nname = \"default\"\npool = \"default\"\n";
    let tail = format!(
        "[routing]\naliases = {}\nsrs = {{ secret = \"a-test-secret-of-some-length\", domain = \"srs.corp.test\" }}\n",
        toml_path(&aliases)
    );
    let listener = format!("{LISTENER}local_domains = [\"corp.test\"]\n");
    let gate = Gate::start(&config(&listener, &pools, routes, &tail, ""));
    let addr = gate.smtp_addr();

    send_ok(
        addr,
        "alice@origin.test",
        &["fwd@corp.test"],
        &msg("forwarded", "hello", "", "x"),
    );
    wait_id(&pools, "forwarded");
    let forwarded = copy_at(&pools, "far", "forwarded");
    assert_eq!(forwarded.rcpt_addresses(), ["someone@far.test"]);
    let srs = forwarded.mail_from.clone();
    assert!(
        srs.starts_with("SRS0=") && srs.to_ascii_lowercase().ends_with("@srs.corp.test"),
        "MAIL FROM:<{srs}>"
    );
    assert!(srs.contains("=origin.test=alice@"), "MAIL FROM:<{srs}>");

    let bounce = msg("bounce", "Undelivered Mail Returned to Sender", "", "it bounced");
    send_ok(addr, "", &[&srs], &bounce);
    wait_id(&pools, "bounce");
    wait_drained(&gate);
    assert_eq!(pools.where_is("bounce"), ["origin"]);
    let back = copy_at(&pools, "origin", "bounce");
    assert_eq!(back.rcpt_addresses(), ["alice@origin.test"]);
    assert_eq!(back.mail_from, "");

    // A forged SRS address (hash altered; the hash ignores case) is refused, not relayed.
    let mut forged: Vec<char> = srs.chars().collect();
    forged[5] = if forged[5].eq_ignore_ascii_case(&'a') { 'b' } else { 'a' };
    let forged: String = forged.into_iter().collect();
    let t = send(addr, "", &[&forged], &msg("forged", "x", "", "x"));
    let refused = t
        .replies("RCPT")
        .iter()
        .chain(t.replies("END-OF-DATA").iter())
        .any(|r| r.starts_with('5'));
    assert!(refused, "{t}");
}

// ---------------------------------------------------------------------------------------------
// 7. Dry run

const DRY_ROUTES: &str = r#"
[[route]]
name = "tag-vip"
when = { sender_domain = "vip.test" }
tag = "vip"
continue = true

[[route]]
name = "to-other"
when = { recipient_domain = "other.test" }
pool = "other"

[[route]]
name = "vip-first"
when = { tag = "vip" }
pool = "other"

[[route]]
name = "urgent"
when = { subject = "urgent" }
add_headers = { X-Priority = "1" }
pool = "other"

[[route]]
name = "rest"
pool = "main"
"#;

/// The pool `route test` names for `rcpt`: from its `deliver <rcpt> via pool "NAME"` line.
fn dry_pool(report: &str, rcpt: &str) -> String {
    let prefix = format!("deliver <{rcpt}> via pool \"");
    let line = report.lines().map(str::trim).find(|l| l.starts_with(&prefix));
    let line = line.unwrap_or_else(|| panic!("no `{prefix}` in:\n{report}"));
    line[prefix.len()..].trim_end_matches('"').to_string()
}

fn route_test(gate: &Gate, args: &[&str]) -> String {
    let config = gate.dir().join("smtpgate.toml");
    let mut all = vec!["route", "test", "--config", config.to_str().unwrap()];
    all.extend_from_slice(args);
    let ran = run_smtpgate(&all, None, Some(gate.dir()));
    assert!(
        ran.status.is_some_and(|s| s.success()),
        "smtpgate {all:?}: {:?}\n{}{}",
        ran.status,
        ran.stdout,
        ran.stderr
    );
    ran.stdout
}

#[test]
fn route_test_names_the_same_pool_per_recipient_as_delivery_with_rules_and_servers_in_order() {
    let pools = Pools::new(&["other"]).with_servers("main", 2);
    let gate = Gate::start(&config(LISTENER, &pools, DRY_ROUTES, "", ""));
    let addr = gate.smtp_addr();

    struct Case {
        id: &'static str,
        from: &'static str,
        to: &'static [&'static str],
        subject: &'static str,
    }
    let cases = [
        Case {
            id: "plain",
            from: "a@src.test",
            to: &["x@other.test", "y@main.test"],
            subject: "hello",
        },
        Case {
            id: "vip",
            from: "boss@vip.test",
            to: &["y@main.test"],
            subject: "hello",
        },
        Case {
            id: "urgent",
            from: "a@src.test",
            to: &["z@main.test", "w@other.test"],
            subject: "very urgent",
        },
    ];
    for c in &cases {
        send_ok(addr, c.from, c.to, &msg(c.id, c.subject, "", "x"));
    }
    for c in &cases {
        wait_until(SOON, || {
            let rcpts: usize = ["other", "main"]
                .iter()
                .flat_map(|p| pools.messages(p))
                .filter(|m| message_id_of(m) == c.id)
                .map(|m| m.rcpts.len())
                .sum();
            rcpts >= c.to.len()
        });
    }
    wait_drained(&gate);

    let main_servers = format!(
        "via pool \"main\", servers in this order: {}, {}",
        pools.servers("main")[0].addr(),
        pools.servers("main")[1].addr()
    );
    for c in &cases {
        let subject = format!("Subject: {}", c.subject);
        let mut args = vec!["--from", c.from, "--header", &subject];
        for t in c.to {
            args.extend_from_slice(&["--to", t]);
        }
        let report = route_test(&gate, &args);
        for rcpt in c.to {
            let delivered: Vec<&str> = ["other", "main"]
                .into_iter()
                .filter(|p| {
                    pools
                        .messages(p)
                        .iter()
                        .any(|m| message_id_of(m) == c.id && m.rcpt_addresses().contains(rcpt))
                })
                .collect();
            assert_eq!(
                delivered,
                [dry_pool(&report, rcpt)],
                "{}: <{rcpt}>; dry run:\n{report}",
                c.id
            );
        }
        if report.contains("via pool \"main\"") {
            assert!(
                report.contains(&main_servers),
                "{}: no `{main_servers}` in:\n{report}",
                c.id
            );
        }
        let expected_rules: &[&str] = match c.id {
            "plain" => &["to-other", "rest"],
            "vip" => &["tag-vip", "vip-first"],
            _ => &["urgent"],
        };
        for rule in expected_rules {
            assert!(
                report.contains(&format!("rule \"{rule}\" matched")),
                "{}: rule {rule} not named:\n{report}",
                c.id
            );
        }
    }
    // `urgent` goes to pool "other" twice: z@ by the rule that adds a header, w@ by the rule
    // before it, which adds none; so two copies, as the dry run says.
    let urgent = route_test(
        &gate,
        &[
            "--from",
            "a@src.test",
            "--to",
            "z@main.test",
            "--to",
            "w@other.test",
            "--header",
            "Subject: urgent",
        ],
    );
    assert!(urgent.contains("copy 1 to <z@main.test>\n"), "{urgent}");
    assert!(urgent.contains("add header X-Priority: 1"), "{urgent}");
    assert!(urgent.contains("copy 2 to <w@other.test>\n"), "{urgent}");
    let copies: Vec<UpstreamMessage> = pools
        .messages("other")
        .into_iter()
        .filter(|m| message_id_of(m) == "urgent")
        .collect();
    assert_eq!(copies.len(), 2, "{copies:#?}");
    for copy in &copies {
        let priority = header_values(&copy.text(), "X-Priority");
        match copy.rcpt_addresses()[..] {
            ["z@main.test"] => assert_eq!(priority, ["1"]),
            ["w@other.test"] => assert!(priority.is_empty(), "{}", copy.text()),
            ref other => panic!("unexpected recipients {other:?}"),
        }
    }
}
