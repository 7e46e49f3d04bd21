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

    /// The one upstream of a single-server pool.
    fn up(&self, name: &str) -> &Upstream {
        &self.servers(name)[0]
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
const LISTENER: &str = "[[listener]]\nname = \"inbound\"\naddress = \"127.0.0.1:0\"\nrelay_networks = [\"127.0.0.0/8\"]\n";

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
    ids.first().map(|v| v.trim_matches(['<', '>']).to_string()).unwrap_or_default()
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
    let copies: Vec<UpstreamMessage> = pools.messages(pool).into_iter().filter(|m| message_id_of(m) == id).collect();
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
when = { body = '(?m)^magic-word$' }
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
    let list = write(dir.path(), "migrated.txt", "# moved so far\nmoved@corp.test\nAlso.Moved@Corp.Test\n");
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
        probe("size-under-miss", "default").to("x@size.test").body(filler(6_000)),
        probe("header", "header").headers("X-Route: sure\r\n"),
        probe("header-miss", "default").headers("X-Route: not sure\r\n"),
        probe("subject", "subject").subject("[URGENT] help"),
        probe("subject-miss", "default").subject("not [urgent]"),
        probe("tag", "tag").from("x@tagger.test"),
        probe("body", "body").body("first line\r\nmagic-word\r\nlast line".into()),
        probe("body-miss", "default").body("no magic-words here".into()),
    ];

    for p in &probes {
        let addr = gate.listener_addr(p.listener);
        let message = msg(p.id, p.subject, p.headers, &p.body);
        let t = send_with(addr, p.client, p.from, &[p.to], &message);
        if p.client.login.is_some() {
            assert!(t.reply("AUTH").starts_with("235"), "{}: AUTH failed:\n{t}", p.id);
        }
        assert!(t.reply("END-OF-DATA").starts_with("250 "), "{}: not accepted:\n{t}", p.id);
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
