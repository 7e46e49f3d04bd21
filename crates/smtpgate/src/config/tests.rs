use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::*;

const MB: u64 = 1024 * 1024;

/// A fresh, empty folder under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("smtpgate-config-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn errors(text: &str, base: &Path) -> Vec<String> {
    let error = Config::from_toml_str(text, base).expect_err("config should be refused");
    error.errors.iter().map(ToString::to_string).collect()
}

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

// ---- whole files ---------------------------------------------------------------------------

const EXAMPLE: &str = r#"
hostname = "gate.example.test"
[spool]
dir = "/var/spool/smtpgate"
[admin]
address = "127.0.0.1:8025"
[[listener]]
name = "relay"
address = "127.0.0.1:2525"
relay_networks = ["127.0.0.0/8"]
local_domains = ["example.test"]
tls = { cert = "cert.pem", key = "key.pem" }
max_message_size = "50MB"
max_recipients = 1000
[[pool]]
name = "upstream"
servers = ["127.0.0.1:2600"]
[[route]]
pool = "upstream"
"#;

#[test]
fn documented_example_loads() {
    let dir = TempDir::new();
    dir.write("cert.pem", "cert");
    dir.write("key.pem", "key");
    let path = dir.write("smtpgate.toml", EXAMPLE);

    let config = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));

    assert_eq!(config.hostname, "gate.example.test");
    assert_eq!(config.spool.dir, Path::new("/var/spool/smtpgate"));
    assert_eq!(
        config.admin,
        Some(AdminConfig {
            address: addr("127.0.0.1:8025"),
            token_file: None,
            hosts: vec![],
        })
    );
    assert_eq!(config.listeners.len(), 1);
    let listener = &config.listeners[0];
    assert_eq!(listener.name, "relay");
    assert_eq!(listener.address, addr("127.0.0.1:2525"));
    assert_eq!(listener.relay_networks, vec!["127.0.0.0/8".parse().unwrap()]);
    assert_eq!(listener.local_domains, vec!["example.test".to_owned()]);
    let tls = TlsFiles {
        cert: dir.0.join("cert.pem"),
        key: dir.0.join("key.pem"),
    };
    assert_eq!(listener.tls, Some(tls));
    assert_eq!(listener.max_message_size, 50 * MB);
    assert_eq!(listener.max_recipients, 1000);
    let upstream = ServerAddr {
        host: "127.0.0.1".to_owned(),
        port: 2600,
    };
    let pool = &config.pools[0];
    assert_eq!(pool.name, "upstream");
    assert_eq!(
        pool.servers.iter().map(|s| s.addr.clone()).collect::<Vec<_>>(),
        vec![upstream]
    );
    assert_eq!(pool.tls, TlsPolicy::Opportunistic);
    assert_eq!(config.routes.len(), 1);
    assert_eq!(config.routes[0].action, Some(RouteAction::Pool("upstream".into())));
}

#[test]
fn five_mistakes_are_all_reported_with_their_keys() {
    let dir = TempDir::new();
    let text = r#"
[[listener]]
address = "127.0.0.1:2525"
max_message_size = "50XB"
relay_networks = ["10.0.0.0/8", "10.0.0.300/8"]
[[pool]]
name = "upstream"
servers = ["mx.example.com:99999"]
[[route]]
pool = "upstrem"
[queue]
retry = ["1m", "5 minutes"]
"#;
    let got = errors(text, &dir.0);
    let want = [
        r#"listener[0].relay_networks[1]: "10.0.0.300/8" is not a network (use e.g. 10.0.0.0/8 or 192.0.2.1)"#,
        r#"listener[0].max_message_size: "50XB" is not a size (use e.g. 50MB)"#,
        r#"pool[0].servers[0]: "mx.example.com:99999" is not a server address (use e.g. mx.example.com:25 or 127.0.0.1:2600)"#,
        r#"route[0].pool: no pool named "upstrem""#,
        r#"queue.retry[1]: "5 minutes" is not a duration (use e.g. 30s, 5m, 1h30m)"#,
    ];
    let mut got_sorted = got.clone();
    let mut want_sorted: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    got_sorted.sort();
    want_sorted.sort();
    assert_eq!(got_sorted, want_sorted, "got:\n{}", got.join("\n"));
}

#[test]
fn config_error_displays_one_line_per_issue() {
    let text = "hostname = \"\"\n[[pool]]\nname = \"p\"\nservers = []\n";
    let error = Config::from_toml_str(text, Path::new(".")).unwrap_err();
    let shown = error.to_string();
    assert_eq!(shown.lines().count(), 2, "{shown}");
    assert!(shown.starts_with("hostname: \"\" is not a host name"), "{shown}");
    assert!(shown.contains("pool[0].servers: needs at least one server"), "{shown}");
}

#[test]
fn unknown_key_is_an_error_naming_the_key() {
    let text = "[[listener]]\naddress = \"127.0.0.1:2525\"\nmax_mesage_size = \"10MB\"\n";
    let got = errors(text, Path::new("."));
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].starts_with("listener[0].max_mesage_size: line 3, column 1: "),
        "{got:?}"
    );
    assert!(got[0].contains("unknown field `max_mesage_size`"), "{got:?}");
}

#[test]
fn unknown_top_level_table_is_an_error_naming_it() {
    let got = errors("[spoool]\ndir = \"x\"\n", Path::new("."));
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].starts_with("spoool: line 1, column 2: unknown field `spoool`"),
        "{got:?}"
    );
}

#[test]
fn syntax_error_is_one_issue_with_line_and_column() {
    let got = errors("hostname = \"a\"\n[queue\n", Path::new("."));
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].contains("line 2, column"), "{got:?}");
}

#[test]
fn wrong_type_names_the_key() {
    let got = errors(
        "[[listener]]\naddress = \"127.0.0.1:1\"\nmax_recipients = \"lots\"\n",
        Path::new("."),
    );
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].starts_with("listener[0].max_recipients: line 3, column 18: "),
        "{got:?}"
    );
}

#[test]
fn builtin_has_the_documented_defaults() {
    let config = Config::builtin();
    assert!(!config.hostname.is_empty());
    assert_eq!(config.spool.dir, Path::new("./smtpgate-data"));
    assert_eq!(config.spool.min_free_space, 100 * MB);
    assert_eq!(config.spool.segment_size, 64 * MB);
    assert_eq!(
        config.admin,
        Some(AdminConfig {
            address: addr("127.0.0.1:8025"),
            token_file: None,
            hosts: vec![],
        })
    );
    assert_eq!(config.pools, vec![]);
    assert!(config.routes.is_empty());
    assert_eq!(config.dns, DnsConfig { nameservers: vec![] });
    assert_eq!(config.dane, DaneConfig { enabled: true });
    assert_eq!(config.shutdown_timeout, Duration::from_secs(30));

    let want_listener = ListenerConfig {
        name: "default".into(),
        address: addr("127.0.0.1:2525"),
        relay_networks: vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()],
        local_domains: vec![],
        tls: None,
        implicit_tls: false,
        max_message_size: 50 * MB,
        max_recipients: 1000,
        max_connections: 1000,
        max_connections_per_ip: 100,
        max_errors: 10,
        command_timeout: Duration::from_secs(300),
        data_timeout: Duration::from_secs(180),
        greeting_delay: Duration::ZERO,
        bare_line_endings: BareLineEndings::Normalize,
        nul_bytes: smtpgate_proto::Nul::Reject,
        max_hops: 50,
        write_timeout: Duration::from_secs(300),
        min_data_rate: 500,
        ipv6_prefix: 64,
        auth: None,
        submission: false,
        require_tls: false,
        filters: vec![],
        mode: ListenerMode::Queue,
    };
    assert_eq!(config.listeners, vec![want_listener]);

    let minutes = |m: u64| Duration::from_secs(m * 60);
    let want_queue = QueueConfig {
        retry: vec![
            minutes(1),
            minutes(5),
            minutes(15),
            minutes(30),
            minutes(60),
            minutes(120),
            minutes(240),
        ],
        max_age: Duration::from_secs(5 * 86_400),
        connections_per_destination: 10,
        messages_per_connection: 100,
        max_connections: 1000,
        connect_timeout: Duration::from_secs(30),
        command_timeout: minutes(5),
        data_timeout: minutes(10),
        smtp_port: 25,
    };
    assert_eq!(config.queue, want_queue);
}

#[test]
fn relative_paths_resolve_against_the_files_folder() {
    let dir = TempDir::new();
    std::fs::create_dir(dir.0.join("tls")).unwrap();
    dir.write("tls/cert.pem", "cert");
    dir.write("tls/key.pem", "key");
    dir.write("users.txt", "");
    let text = r#"
[spool]
dir = "data"
[[listener]]
address = "127.0.0.1:0"
tls = { cert = "tls/cert.pem", key = "tls/key.pem" }
auth = { users_file = "users.txt" }
"#;
    let path = dir.write("smtpgate.toml", text);
    let config = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.spool.dir, dir.0.join("data"));
    let listener = &config.listeners[0];
    let tls = listener.tls.as_ref().unwrap();
    assert_eq!(tls.cert, dir.0.join("tls/cert.pem"));
    assert_eq!(tls.key, dir.0.join("tls/key.pem"));
    let auth = listener.auth.as_ref().unwrap();
    assert_eq!(auth.users_file, dir.0.join("users.txt"));
    assert!(!auth.allow_plaintext);
}

#[test]
fn missing_tls_and_users_files_are_reported() {
    let dir = TempDir::new();
    let text = r#"
[[listener]]
address = "127.0.0.1:0"
tls = { cert = "nope.pem", key = "nope.key" }
auth = { users_file = "nope.txt" }
"#;
    let got = errors(text, &dir.0);
    let keys: Vec<&str> = got.iter().map(|e| e.split(':').next().unwrap()).collect();
    assert_eq!(
        keys,
        [
            "listener[0].tls.cert",
            "listener[0].tls.key",
            "listener[0].auth.users_file"
        ]
    );
}

#[test]
fn tls_options_require_tls_files() {
    let text = "[[listener]]\naddress = \"127.0.0.1:0\"\nimplicit_tls = true\nrequire_tls = true\n";
    let got = errors(text, Path::new("."));
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got[0].starts_with("listener[0].implicit_tls: needs tls"), "{got:?}");
    assert!(got[1].starts_with("listener[0].require_tls: needs tls"), "{got:?}");
}

#[test]
fn duplicate_names_and_addresses_are_refused() {
    let text = r#"
[[listener]]
name = "a"
address = "127.0.0.1:2525"
[[listener]]
name = "a"
address = "127.0.0.1:2525"
[[listener]]
address = "0.0.0.0:2525"
[[listener]]
address = "127.0.0.1:0"
[[listener]]
address = "127.0.0.1:0"
[[listener]]
address = "[::1]:2525"
[[pool]]
name = "p"
servers = ["a.example"]
[[pool]]
name = "p"
servers = ["b.example"]
"#;
    let got = errors(text, Path::new("."));
    let want = [
        r#"listener[1].name: "a" is already the name of listener[0]"#,
        "listener[1].address: 127.0.0.1:2525 clashes with listener[0] on 127.0.0.1:2525",
        "listener[2].address: 0.0.0.0:2525 clashes with listener[0] on 127.0.0.1:2525",
        r#"pool[1].name: "p" is already the name of pool[0]"#,
    ];
    assert_eq!(got, want);
}

#[test]
fn listener_names_default_to_their_index() {
    let text = "[[listener]]\naddress = \"127.0.0.1:0\"\n[[listener]]\naddress = \"[::1]:0\"\n";
    let config = Config::from_toml_str(text, Path::new(".")).unwrap();
    let names: Vec<&str> = config.listeners.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["listener0", "listener1"]);
    assert_eq!(config.listeners[0].relay_networks, vec![]);
}

#[test]
fn admin_can_be_disabled() {
    let config = Config::from_toml_str("[admin]\nenabled = false\n", Path::new(".")).unwrap();
    assert_eq!(config.admin, None);
}

#[test]
fn listener_options_are_parsed() {
    let text = r#"
[[listener]]
address = "[::1]:25"
local_domains = ["Example.TEST.", "b.example"]
relay_networks = ["192.0.2.1", "2001:db8::/32"]
max_message_size = 1048576
max_errors = 3
greeting_delay = "2s"
bare_line_endings = "reject"
submission = true
"#;
    let config = Config::from_toml_str(text, Path::new(".")).unwrap();
    let listener = &config.listeners[0];
    assert_eq!(listener.local_domains, ["example.test", "b.example"]);
    assert_eq!(
        listener.relay_networks,
        vec!["192.0.2.1/32".parse().unwrap(), "2001:db8::/32".parse().unwrap()]
    );
    assert_eq!(listener.max_message_size, MB);
    assert_eq!(listener.max_errors, 3);
    assert_eq!(listener.greeting_delay, Duration::from_secs(2));
    assert_eq!(listener.bare_line_endings, BareLineEndings::Reject);
    assert!(listener.submission);
}

/// A proxy listener queues nothing: an after_queue filter that would see its mail is refused,
/// on the listener and on any route that can carry its mail.
#[test]
fn proxy_listeners_take_no_after_queue_filters() {
    let text = r#"
[[listener]]
name = "proxy"
address = "127.0.0.1:0"
mode = "proxy"
filters = ["footer", "late"]
[[listener]]
name = "queued"
address = "127.0.0.1:0"
mode = "queue"
[[listener]]
name = "odd"
address = "127.0.0.1:0"
mode = "relay"
[[pool]]
name = "p"
servers = ["127.0.0.1:25"]
[[route]]
when = { listener = "queued" }
filters = ["late"]
[[route]]
pool = "p"
filters = ["footer", "late"]
[[filter]]
name = "footer"
kind = "sanitize"
footer_text = "x"
[[filter]]
name = "late"
kind = "sanitize"
stage = "after_queue"
footer_text = "y"
"#;
    let got = errors(text, Path::new("."));
    let keys: Vec<&str> = got.iter().map(|e| e.split(": ").next().unwrap()).collect();
    assert_eq!(
        keys,
        ["listener[2].mode", "listener[0].filters[1]", "route[1].filters[1]"],
        "{got:#?}"
    );
    let ok = text
        .replace("mode = \"relay\"", "")
        .replace("filters = [\"footer\", \"late\"]", "filters = [\"footer\"]");
    let config = Config::from_toml_str(&ok, Path::new(".")).unwrap_or_else(|e| panic!("{e}"));
    let modes: Vec<ListenerMode> = config.listeners.iter().map(|l| l.mode).collect();
    assert_eq!(modes, [ListenerMode::Proxy, ListenerMode::Queue, ListenerMode::Queue]);
}

#[test]
fn bad_counts_enums_and_empty_lists_are_refused() {
    let text = r#"
hostname = "two words"
[[listener]]
address = "127.0.0.1:0"
max_recipients = 0
max_errors = 5000000000
bare_line_endings = "fix"
command_timeout = "0s"
local_domains = ["not a domain"]
[[pool]]
name = "p"
servers = ["a.example"]
tls = "always"
[queue]
retry = []
[dns]
nameservers = ["127.0.0.1:53", "resolver"]
"#;
    let got = errors(text, Path::new("."));
    let keys: Vec<&str> = got.iter().map(|e| e.split(": ").next().unwrap()).collect();
    let want = [
        "hostname",
        "listener[0].local_domains[0]",
        "listener[0].max_recipients",
        "listener[0].max_errors",
        "listener[0].command_timeout",
        "listener[0].bare_line_endings",
        "pool[0].tls",
        "queue.retry",
        "dns.nameservers[1]",
    ];
    let (mut keys_sorted, mut want_sorted) = (keys.clone(), want.to_vec());
    keys_sorted.sort();
    want_sorted.sort();
    assert_eq!(keys_sorted, want_sorted, "{got:#?}");
}

#[test]
fn queue_and_dns_values_are_parsed() {
    let text = r#"
shutdown_timeout = "1m"
[queue]
retry = ["30s", "2m"]
max_age = "2d"
connections_per_destination = 3
[dns]
nameservers = ["127.0.0.1:5353", "::1"]
[[pool]]
name = "smart"
servers = ["a.example:2525", "[2001:db8::1]"]
tls = "required"
[[route]]
"#;
    let config = Config::from_toml_str(text, Path::new(".")).unwrap();
    assert_eq!(config.shutdown_timeout, Duration::from_secs(60));
    assert_eq!(config.queue.retry, [Duration::from_secs(30), Duration::from_secs(120)]);
    assert_eq!(config.queue.max_age, Duration::from_secs(2 * 86_400));
    assert_eq!(config.queue.connections_per_destination, 3);
    assert_eq!(config.dns.nameservers, [addr("127.0.0.1:5353"), addr("[::1]:53")]);
    assert_eq!(config.pools[0].tls, TlsPolicy::Required);
    assert_eq!(config.pools[0].servers[1].addr.host, "2001:db8::1");
    assert_eq!(config.routes[0].action, Some(RouteAction::Mx));
}

#[test]
fn unreadable_file_is_one_issue() {
    let dir = TempDir::new();
    let error = Config::load(&dir.0.join("missing.toml")).unwrap_err();
    assert_eq!(error.errors.len(), 1);
    assert!(error.to_string().contains("missing.toml"), "{error}");
}

#[test]
fn dane_can_be_disabled_and_its_keys_are_checked() {
    let config = Config::from_toml_str("[dane]\nenabled = false\n", Path::new(".")).unwrap();
    assert_eq!(config.dane, DaneConfig { enabled: false });
    let got = errors("[dane]\nenabled = \"no\"\n", Path::new("."));
    assert!(got.len() == 1 && got[0].starts_with("dane.enabled: "), "{got:?}");
    let got = errors("[dane]\nports = 25\n", Path::new("."));
    assert!(
        got.len() == 1 && got[0].starts_with("dane.ports: line 2, column 1: "),
        "{got:?}"
    );
    assert!(got[0].contains("unknown field"), "{got:?}");
}

#[test]
fn pool_certificate_checks_default_to_verified() {
    let text = r#"
[[pool]]
name = "required"
servers = ["a.example"]
tls = "required"
[[pool]]
name = "unverified"
servers = ["a.example"]
tls = "required"
tls_verify = false
[[pool]]
name = "strict-unverified"
servers = ["a.example"]
tls = "required"
tls_verify = false
auth_unverified = false
[[pool]]
name = "opportunistic"
servers = ["a.example"]
"#;
    let config = Config::from_toml_str(text, Path::new(".")).unwrap();
    let checks: Vec<(bool, bool)> = config.pools.iter().map(|p| (p.tls_verify, p.auth_unverified)).collect();
    assert_eq!(checks, [(true, false), (false, true), (false, false), (false, false)]);
    assert!(config.pools.iter().all(|p| p.ca_file.is_none()));
}
