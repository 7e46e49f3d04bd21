//! Stage two: [`Config::from_raw`] checks a [`RawConfig`] and builds the typed [`Config`].
//!
//! Every check records its mistake in [`Issues`] and carries on with the default value, so one
//! pass reports everything that is wrong. The half-built config is thrown away if anything was.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use super::issues::{Checks as _, Issues, resolve};
use super::raw::{RawAdmin, RawAuth, RawConfig, RawListener, RawQueue, RawSpool, Text};
use super::values::{parse_domain, parse_duration, parse_nameserver, parse_net, parse_size, parse_socket_addr};
use super::{
    AdminConfig, AuthConfig, BareLineEndings, Config, ConfigError, DaneConfig, DnsConfig, EventsConfig, FilterConfig,
    ListenerConfig, ListenerMode, MtaStsConfig, QueueConfig, RedisConfig, RouteConfig, SpoolConfig, Stage,
    SuppressAction, SuppressionConfig, TlsFiles,
};
use crate::reloading::{Loaded, ReadError};

const MB: u64 = 1024 * 1024;
const MINUTE: u64 = 60;
const HOUR: u64 = 60 * MINUTE;
const DAY: u64 = 24 * HOUR;
const DEFAULT_RETRY_SECS: [u64; 7] = [MINUTE, 5 * MINUTE, 15 * MINUTE, 30 * MINUTE, HOUR, 2 * HOUR, 4 * HOUR];

impl Config {
    /// Checks everything in `raw` and returns the typed config, or every mistake found.
    /// Relative paths are resolved against `base_dir`; TLS and users files must exist.
    pub fn from_raw(raw: RawConfig, base_dir: &Path) -> Result<Config, ConfigError> {
        let mut issues = Issues::default();
        let config = build(raw, base_dir, &mut issues);
        issues.finish(config)
    }
}

/// Builds each part in the order of the file's layout, so issues come out in that order.
pub(super) fn build(raw: RawConfig, base_dir: &Path, issues: &mut Issues) -> Config {
    let hostname = build_hostname(raw.hostname, issues);
    let default_shutdown = Duration::from_secs(30);
    let shutdown_timeout = issues.timeout("shutdown_timeout".into(), raw.shutdown_timeout, default_shutdown);
    let spool = build_spool(raw.spool.unwrap_or_default(), base_dir, issues);
    let admin = build_admin(raw.admin.unwrap_or_default(), base_dir, issues);
    let listeners = build_listeners(raw.listeners, base_dir, issues);
    let pools = super::pool::build_pools(raw.pools, base_dir, issues);
    let routes = super::route::build_routes(raw.routes, &pools, base_dir, issues);
    let routing = super::route::build_routing(raw.routing.unwrap_or_default(), base_dir, issues);
    let filters = super::filter::build_filters(raw.filters, base_dir, issues);
    for (i, l) in listeners.iter().enumerate() {
        super::filter::check_names(&format!("listener[{i}].filters"), &l.filters, &filters, issues);
    }
    for (i, r) in routes.iter().enumerate() {
        super::filter::check_names(&format!("route[{i}].filters"), &r.filters, &filters, issues);
    }
    check_proxy_filters(&listeners, &routes, &filters, issues);
    let streams = super::stream::build_streams(raw.streams, issues);
    for (i, r) in routes.iter().enumerate() {
        if let Some(s) = &r.stream
            && !streams.iter().any(|c| &c.name == s)
        {
            issues.push(format!("route[{i}].stream"), format!("no stream named {s:?}"));
        }
    }
    let queue = build_queue(raw.queue.unwrap_or_default(), issues);
    let nameservers = raw.dns.and_then(|dns| dns.nameservers);
    let dns = DnsConfig {
        nameservers: issues.list("dns.nameservers", nameservers, parse_nameserver),
    };
    let shaping_file = raw
        .shaping
        .and_then(|s| s.file)
        .and_then(|f| build_shaping_file(&f, base_dir, &queue, issues));
    let suppression = build_suppression(raw.suppression.unwrap_or_default(), issues);
    let bounce_rules = raw
        .bounces
        .and_then(|b| b.rules)
        .and_then(|f| build_bounce_rules(&f, base_dir, issues));
    let redis = raw.redis.map(|r| {
        let url = r.url.unwrap_or_default();
        if !(url.starts_with("redis://") || url.starts_with("rediss://") || url.starts_with("redis+unix://")) {
            issues.push(
                "redis.url",
                format!("{url:?} is not a redis://, rediss:// or redis+unix:// URL"),
            );
        }
        RedisConfig {
            url,
            prefix: r.prefix.unwrap_or_else(|| "smtpgate".into()),
        }
    });
    let mta_sts = {
        let raw = raw.mta_sts.unwrap_or_default();
        let https_port = match raw.https_port {
            None => 443,
            Some(p) => u16::try_from(p).ok().filter(|&p| p > 0).unwrap_or_else(|| {
                issues.push("mta_sts.https_port", format!("{p} is not a port"));
                443
            }),
        };
        let ca_file = raw.ca_file.map(|f| {
            let path = issues.existing_file("mta_sts.ca_file".into(), base_dir, &f);
            if path.is_file()
                && let Err(e) = crate::tls::trust_roots(Some(&path))
            {
                issues.push("mta_sts.ca_file", e);
            }
            path
        });
        MtaStsConfig {
            enabled: raw.enabled.unwrap_or(true),
            https_port,
            ca_file,
        }
    };
    let dane = DaneConfig {
        enabled: raw.dane.and_then(|d| d.enabled).unwrap_or(true),
    };
    let webhooks = super::webhook::build_webhooks(raw.webhooks, base_dir, issues);
    let events = build_events(raw.events.unwrap_or_default(), &hostname, base_dir, issues);
    Config {
        mta_sts,
        dane,
        events,
        redis,
        streams,
        suppression,
        bounce_rules,
        shaping_file,
        hostname,
        spool,
        admin,
        listeners,
        pools,
        routes,
        queue,
        dns,
        routing,
        filters,
        quarantine_max_age: issues.timeout(
            "quarantine.max_age".into(),
            raw.quarantine.and_then(|q| q.max_age),
            Duration::from_secs(30 * DAY),
        ),
        shutdown_timeout,
        webhooks,
        source: Default::default(),
    }
}

/// `[events]`: the defaults, with sizes and the retention checked.
fn build_events(raw: super::raw::RawEvents, hostname: &str, base_dir: &Path, issues: &mut Issues) -> EventsConfig {
    // A wrong hostname is reported once, under its own key.
    let node = match raw.node {
        Some(node) if node.trim().is_empty() => {
            issues.push("events.node", "must not be empty");
            node
        }
        Some(node) => node,
        None => hostname.to_owned(),
    };
    let size = |issues: &mut Issues, key: &str, raw: Option<Text>, default: u64| {
        let value = issues.parse(key, raw, parse_size, default);
        if value == 0 {
            issues.push(key, "must be more than 0");
            return default;
        }
        value
    };
    EventsConfig {
        enabled: raw.enabled.unwrap_or(true),
        dir: raw.dir.map(|d| resolve(base_dir, &d)),
        node,
        retention: issues.timeout("events.retention".into(), raw.retention, Duration::from_secs(7 * DAY)),
        max_size: size(issues, "events.max_size", raw.max_size, 1024 * MB),
        log_file: raw.log_file.map(|f| resolve(base_dir, &f)),
        log_max_size: size(issues, "events.log_max_size", raw.log_max_size, 100 * MB),
        log_keep: issues.count("events.log_keep".into(), raw.log_keep, 0, 5),
    }
}

fn build_suppression(raw: super::raw::RawSuppression, issues: &mut Issues) -> SuppressionConfig {
    let action = match raw.action.as_deref() {
        None | Some("reject") => SuppressAction::Reject,
        Some("drop") => SuppressAction::Drop,
        Some(other) => {
            issues.push(
                "suppression.action",
                format!("{other:?} is not one of \"reject\", \"drop\""),
            );
            SuppressAction::Reject
        }
    };
    let complaints_address = raw.complaints_address.map(|a| {
        let a = a
            .trim()
            .trim_start_matches('<')
            .trim_end_matches('>')
            .to_ascii_lowercase();
        if !a.contains('@') || a.contains(char::is_whitespace) {
            issues.push("suppression.complaints_address", format!("{a:?} is not an address"));
        }
        a
    });
    let reports_remember = match raw.reports_remember.as_deref().map(super::values::parse_duration) {
        None => Duration::from_secs(30 * 86_400),
        Some(Ok(d)) if d >= Duration::from_secs(60) && d <= Duration::from_secs(366 * 86_400) => d,
        Some(Ok(_)) => {
            issues.push(
                "suppression.reports_remember",
                "must be between 1m and 366d".to_string(),
            );
            Duration::from_secs(30 * 86_400)
        }
        Some(Err(e)) => {
            issues.push("suppression.reports_remember", e);
            Duration::from_secs(30 * 86_400)
        }
    };
    let mut count = |key: &str, value: Option<i64>, default: i64, max: i64| match value {
        None => default,
        Some(n) if (1..=max).contains(&n) => n,
        Some(n) => {
            issues.push(key, format!("{n} is not between 1 and {max}"));
            default
        }
    };
    let reports_per_minute = count("suppression.reports_per_minute", raw.reports_per_minute, 30, 100_000) as u32;
    let report_max_recipients = count(
        "suppression.report_max_recipients",
        raw.report_max_recipients,
        50,
        10_000,
    ) as usize;
    SuppressionConfig {
        action,
        complaints_address,
        reports_remember,
        reports_per_minute,
        report_max_recipients,
    }
}

/// The shaping file must exist and load now: each mistake there is a configuration error, named
/// by its own file and key.
fn build_shaping_file(
    raw: &str,
    base_dir: &Path,
    queue: &QueueConfig,
    issues: &mut Issues,
) -> Option<Loaded<super::shaping::Rules>> {
    let path = issues.existing_file("shaping.file".into(), base_dir, raw);
    if !path.is_file() {
        return None;
    }
    let loaded = Loaded::read(path, |p| super::shaping::Rules::load(p, queue));
    read_into("shaping.file", loaded, issues)
}

/// The bounce rules file must exist and load now, as the shaping file.
fn build_bounce_rules(raw: &str, base_dir: &Path, issues: &mut Issues) -> Option<Loaded<crate::reply::Classifier>> {
    let path = issues.existing_file("bounces.rules".into(), base_dir, raw);
    if !path.is_file() {
        return None;
    }
    read_into(
        "bounces.rules",
        Loaded::read(path, crate::reply::Classifier::load),
        issues,
    )
}

/// The value of a file the configuration names, or its mistakes in the collector: each under
/// its own key, naming that file. A file that cannot be examined is a mistake of `key`.
fn read_into<T>(key: &str, read: Result<Loaded<T>, ReadError<ConfigError>>, issues: &mut Issues) -> Option<Loaded<T>> {
    match read {
        Ok(loaded) => Some(loaded),
        Err(ReadError::Load(error)) => {
            issues.absorb(error);
            None
        }
        Err(stamp) => {
            issues.push(key, stamp.to_string());
            None
        }
    }
}

fn build_hostname(raw: Option<String>, issues: &mut Issues) -> String {
    let Some(name) = raw else {
        return machine_hostname();
    };
    if !is_valid_hostname(&name) {
        let message = format!("{name:?} is not a host name (it must be non-empty, without spaces)");
        issues.push("hostname", message);
    }
    name
}

fn is_valid_hostname(name: &str) -> bool {
    !name.is_empty() && !name.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// The machine's name from the kernel, or `localhost` when it is unavailable or unusable.
fn machine_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| is_valid_hostname(name))
        .unwrap_or_else(|| "localhost".to_owned())
}

fn build_spool(raw: RawSpool, base_dir: &Path, issues: &mut Issues) -> SpoolConfig {
    let dir = raw.dir.unwrap_or_else(|| "smtpgate-data".to_owned());
    if dir.trim().is_empty() {
        issues.push("spool.dir", "must not be empty");
    }
    SpoolConfig {
        dir: resolve(base_dir, &dir),
        min_free_space: issues.parse("spool.min_free_space", raw.min_free_space, parse_size, 100 * MB),
        segment_size: issues.parse("spool.segment_size", raw.segment_size, parse_size, 64 * MB),
        memory_budget: issues.parse("spool.memory_budget", raw.memory_budget, parse_size, 1024 * MB),
        spill_size: issues.parse("spool.spill_size", raw.spill_size, parse_size, MB),
    }
}

fn build_admin(raw: RawAdmin, base_dir: &Path, issues: &mut Issues) -> Option<AdminConfig> {
    let default = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8025);
    let address = issues.parse("admin.address", raw.address, parse_socket_addr, default);
    let token_file = raw.token_file.map(|file| resolve(base_dir, &file));
    if let Some(file) = &token_file
        && let Err(e) = super::read_token(file)
    {
        issues.push("admin.token_file", e);
    }
    let mut hosts = Vec::new();
    for (i, name) in raw.hosts.unwrap_or_default().iter().enumerate() {
        match super::values::parse_host_name(name) {
            Ok(name) => hosts.push(name),
            Err(e) => issues.push(format!("admin.hosts[{i}]"), e),
        }
    }
    raw.enabled.unwrap_or(true).then_some(AdminConfig {
        address,
        token_file,
        hosts,
    })
}

fn build_listeners(raw: Vec<RawListener>, base_dir: &Path, issues: &mut Issues) -> Vec<ListenerConfig> {
    let raw = match raw.is_empty() {
        true => vec![default_listener()],
        false => raw,
    };
    let listeners: Vec<ListenerConfig> = raw
        .into_iter()
        .enumerate()
        .map(|(index, listener)| build_listener(index, listener, base_dir, issues))
        .collect();
    check_listeners_unique(&listeners, issues);
    listeners
}

/// The listener used when the file has none: loopback only, relaying for loopback clients.
fn default_listener() -> RawListener {
    RawListener {
        name: Some("default".to_owned()),
        address: Some(Text("127.0.0.1:2525".to_owned())),
        relay_networks: Some(vec![Text("127.0.0.0/8".to_owned()), Text("::1/128".to_owned())]),
        ..RawListener::default()
    }
}

fn build_listener(index: usize, raw: RawListener, base_dir: &Path, issues: &mut Issues) -> ListenerConfig {
    let key = |field: &str| format!("listener[{index}].{field}");
    let default_address = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 2525);
    let address = match raw.address {
        Some(text) => issues.parse(key("address"), Some(text), parse_socket_addr, default_address),
        None => {
            issues.push(key("address"), "is required (e.g. \"127.0.0.1:2525\")");
            default_address
        }
    };
    let tls = raw.tls.map(|tls| TlsFiles {
        cert: issues.existing_file(key("tls.cert"), base_dir, &tls.cert),
        key: issues.existing_file(key("tls.key"), base_dir, &tls.key),
    });
    let implicit_tls = raw.implicit_tls.unwrap_or(false);
    let require_tls = raw.require_tls.unwrap_or(false);
    for (field, wanted) in [("implicit_tls", implicit_tls), ("require_tls", require_tls)] {
        if wanted && tls.is_none() {
            issues.push(
                key(field),
                "needs tls = { cert = \"...\", key = \"...\" } on this listener",
            );
        }
    }
    ListenerConfig {
        name: raw.name.unwrap_or_else(|| format!("listener{index}")),
        address,
        relay_networks: issues.list(&key("relay_networks"), raw.relay_networks, parse_net),
        local_domains: build_domains(&key("local_domains"), raw.local_domains, issues),
        tls,
        implicit_tls,
        max_message_size: issues.parse(key("max_message_size"), raw.max_message_size, parse_size, 50 * MB),
        max_recipients: issues.count(key("max_recipients"), raw.max_recipients, 1, 1000),
        max_connections: issues.count(key("max_connections"), raw.max_connections, 1, 1000),
        max_connections_per_ip: issues.count(key("max_connections_per_ip"), raw.max_connections_per_ip, 1, 100),
        max_errors: issues.count(key("max_errors"), raw.max_errors, 1, 10),
        command_timeout: issues.timeout(
            key("command_timeout"),
            raw.command_timeout,
            Duration::from_secs(5 * MINUTE),
        ),
        data_timeout: issues.timeout(key("data_timeout"), raw.data_timeout, Duration::from_secs(3 * MINUTE)),
        greeting_delay: issues.parse(
            key("greeting_delay"),
            raw.greeting_delay,
            parse_duration,
            Duration::ZERO,
        ),
        bare_line_endings: build_bare_line_endings(key("bare_line_endings"), raw.bare_line_endings, issues),
        nul_bytes: build_nul_bytes(key("nul_bytes"), raw.nul_bytes, issues),
        max_hops: issues.count(key("max_hops"), raw.max_hops, 1, 50),
        write_timeout: issues.timeout(key("write_timeout"), raw.write_timeout, Duration::from_secs(5 * MINUTE)),
        min_data_rate: issues.count(key("min_data_rate"), raw.min_data_rate, 0, 500),
        ipv6_prefix: build_ipv6_prefix(key("ipv6_prefix"), raw.ipv6_prefix, issues),
        auth: raw.auth.map(|auth| build_auth(&key("auth"), auth, base_dir, issues)),
        submission: raw.submission.unwrap_or(false),
        require_tls,
        filters: raw.filters.unwrap_or_default(),
        mode: build_mode(key("mode"), raw.mode, issues),
    }
}

fn build_mode(key: String, raw: Option<String>, issues: &mut Issues) -> ListenerMode {
    match raw.as_deref() {
        None | Some("queue") => ListenerMode::Queue,
        Some("proxy") => ListenerMode::Proxy,
        Some(other) => {
            issues.push(key, format!("{other:?} is not one of \"queue\", \"proxy\""));
            ListenerMode::Queue
        }
    }
}

/// A proxy listener queues nothing, so no `after_queue` filter can run on its mail: neither its
/// own nor those of a route its mail can take.
fn check_proxy_filters(
    listeners: &[ListenerConfig],
    routes: &[RouteConfig],
    filters: &[FilterConfig],
    issues: &mut Issues,
) {
    let after_queue = |name: &String| filters.iter().any(|f| &f.name == name && f.stage == Stage::AfterQueue);
    for (i, l) in listeners
        .iter()
        .enumerate()
        .filter(|(_, l)| l.mode == ListenerMode::Proxy)
    {
        for (j, name) in l.filters.iter().enumerate().filter(|(_, n)| after_queue(n)) {
            issues.push(
                format!("listener[{i}].filters[{j}]"),
                format!("filter {name:?} runs after_queue, but a proxy listener queues nothing: use before_queue"),
            );
        }
        for (r, route) in routes.iter().enumerate() {
            let applies = route.when.listener.is_empty() || route.when.listener.contains(&l.name);
            for (j, name) in route
                .filters
                .iter()
                .enumerate()
                .filter(|(_, n)| applies && after_queue(n))
            {
                issues.push(
                    format!("route[{r}].filters[{j}]"),
                    format!(
                        "filter {name:?} runs after_queue, but this route can carry mail of proxy listener {:?}, which queues nothing: use before_queue or limit the route with listener = [...]",
                        l.name
                    ),
                );
            }
        }
    }
}

fn build_domains(key: &str, raw: Option<Vec<String>>, issues: &mut Issues) -> Vec<String> {
    let texts = raw.map(|domains| domains.into_iter().map(Text).collect());
    issues.list(key, texts, parse_domain)
}

fn build_bare_line_endings(key: String, raw: Option<String>, issues: &mut Issues) -> BareLineEndings {
    match raw.as_deref() {
        None | Some("normalize") => BareLineEndings::Normalize,
        Some("reject") => BareLineEndings::Reject,
        Some(other) => {
            issues.push(key, format!("{other:?} is not one of \"reject\", \"normalize\""));
            BareLineEndings::Normalize
        }
    }
}

fn build_nul_bytes(key: String, raw: Option<String>, issues: &mut Issues) -> smtpgate_proto::Nul {
    use smtpgate_proto::Nul;
    match raw.as_deref() {
        None | Some("reject") => Nul::Reject,
        Some("strip") => Nul::Strip,
        Some(other) => {
            issues.push(key, format!("{other:?} is not one of \"reject\", \"strip\""));
            Nul::Reject
        }
    }
}

fn build_ipv6_prefix(key: String, raw: Option<i64>, issues: &mut Issues) -> u8 {
    match raw {
        None => 64,
        Some(n @ 1..=128) => n as u8,
        Some(n) => {
            issues.push(key, format!("{n} is not a prefix length from 1 to 128"));
            64
        }
    }
}

fn build_auth(key: &str, raw: RawAuth, base_dir: &Path, issues: &mut Issues) -> AuthConfig {
    AuthConfig {
        users_file: issues.existing_file(format!("{key}.users_file"), base_dir, &raw.users_file),
        allow_plaintext: raw.allow_plaintext.unwrap_or(false),
        max_failures: issues.count(format!("{key}.max_failures"), raw.max_failures, 1, 5),
        lockout: issues.timeout(format!("{key}.lockout"), raw.lockout, Duration::from_secs(10 * MINUTE)),
    }
}

/// Listener names must be unique, and no two listeners may bind the same address (port 0,
/// "any free port", excepted). A wildcard address clashes with every address of its family
/// on the same port.
fn check_listeners_unique(listeners: &[ListenerConfig], issues: &mut Issues) {
    for (index, listener) in listeners.iter().enumerate() {
        let earlier = &listeners[..index];
        if let Some(other) = earlier.iter().position(|l| l.name == listener.name) {
            let message = format!("{:?} is already the name of listener[{other}]", listener.name);
            issues.push(format!("listener[{index}].name"), message);
        }
        if let Some(other) = earlier.iter().position(|l| clashes(l.address, listener.address)) {
            let message = format!(
                "{} clashes with listener[{other}] on {}",
                listener.address, listeners[other].address
            );
            issues.push(format!("listener[{index}].address"), message);
        }
    }
}

fn clashes(a: SocketAddr, b: SocketAddr) -> bool {
    let wildcard = a.ip().is_unspecified() || b.ip().is_unspecified();
    a.port() != 0 && a.port() == b.port() && (a.ip() == b.ip() || (wildcard && a.is_ipv4() == b.is_ipv4()))
}

fn build_queue(raw: RawQueue, issues: &mut Issues) -> QueueConfig {
    let secs = Duration::from_secs;
    QueueConfig {
        retry: build_retry(raw.retry, issues),
        max_age: issues.timeout("queue.max_age".into(), raw.max_age, secs(5 * DAY)),
        connections_per_destination: issues.count(
            "queue.connections_per_destination".into(),
            raw.connections_per_destination,
            1,
            10,
        ),
        messages_per_connection: issues.count(
            "queue.messages_per_connection".into(),
            raw.messages_per_connection,
            1,
            100,
        ),
        max_connections: issues.count("queue.max_connections".into(), raw.max_connections, 1, 1000),
        connect_timeout: issues.timeout("queue.connect_timeout".into(), raw.connect_timeout, secs(30)),
        command_timeout: issues.timeout("queue.command_timeout".into(), raw.command_timeout, secs(5 * MINUTE)),
        data_timeout: issues.timeout("queue.data_timeout".into(), raw.data_timeout, secs(10 * MINUTE)),
        smtp_port: issues.count("queue.smtp_port".into(), raw.smtp_port, 1, 25),
    }
}

fn build_retry(raw: Option<Vec<Text>>, issues: &mut Issues) -> Vec<Duration> {
    let Some(texts) = raw else {
        return DEFAULT_RETRY_SECS.map(Duration::from_secs).to_vec();
    };
    if texts.is_empty() {
        issues.push("queue.retry", "needs at least one delay (the last one repeats)");
    }
    texts
        .into_iter()
        .enumerate()
        .map(|(index, text)| issues.timeout(format!("queue.retry[{index}]"), Some(text), Duration::from_secs(MINUTE)))
        .collect()
}
