//! MTA-STS policy discovery end to end: `smtpgate::upstream::mta_sts::MtaSts` against the test DNS
//! server ([`DnsServer`]) and a real HTTPS policy host started here on 127.0.0.1, with a test CA
//! and a certificate for `mta-sts.example.test` made with rcgen. One scenario per test; each has
//! its own DNS server, policy host and cache.

mod support;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::RootCertStore;
use smtpgate::upstream::mta_sts::{FETCH_TIMEOUT, MAX_BODY, Mode, MtaSts, Policy};
use support::{DnsServer, DnsTable, SOON, TestCa};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

const DOMAIN: &str = "example.test";
const POLICY_HOST: &str = "mta-sts.example.test";
const POLICY: &str =
    "version: STSv1\r\nmode: enforce\r\nmx: mx.example.test\r\nmx: *.mx.example.test\r\nmax_age: 86400\r\n";
/// How long a policy host may take over one request before the test calls it stuck.
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);

/// Runs `fut`, failing the test if it has not finished within [`SOON`].
async fn within<T>(fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(SOON, fut).await.expect("deadline passed")
}

/// An HTTPS policy host on 127.0.0.1: answers every request with the raw HTTP response set by
/// [`PolicyHost::respond`], counts requests and keeps the last request head. After the response
/// it closes the connection (with a TLS close_notify), or with [`PolicyHost::hold`] keeps it open
/// until the client closes it.
struct PolicyHost {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    last_request: Arc<Mutex<String>>,
    response: Arc<Mutex<String>>,
    hold: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl PolicyHost {
    async fn start(ca: &TestCa, host: &str) -> PolicyHost {
        let acceptor = TlsAcceptor::from(ca.server_cert(host).server_config());
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("bind policy host");
        let addr = listener.local_addr().expect("local_addr");
        let requests = Arc::new(AtomicUsize::new(0));
        let last_request = Arc::new(Mutex::new(String::new()));
        let response = Arc::new(Mutex::new(ok_response(POLICY)));
        let hold = Arc::new(AtomicBool::new(false));
        let (r, l, s, h) = (requests.clone(), last_request.clone(), response.clone(), hold.clone());
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, r, l, s, h) = (acceptor.clone(), r.clone(), l.clone(), s.clone(), h.clone());
                tokio::spawn(async move {
                    let answered = tokio::time::timeout(REQUEST_DEADLINE, async {
                        let mut tls = acceptor.accept(tcp).await?;
                        let head = read_head(&mut tls).await?;
                        r.fetch_add(1, Ordering::SeqCst);
                        *l.lock().unwrap() = head;
                        let reply = s.lock().unwrap().clone();
                        tls.write_all(reply.as_bytes()).await?;
                        std::io::Result::Ok(tls)
                    });
                    let ended = match answered.await {
                        Ok(Ok(mut tls)) if h.load(Ordering::SeqCst) => {
                            let mut rest = Vec::new();
                            let _ = tokio::time::timeout(SOON, tls.read_to_end(&mut rest)).await;
                            Ok(())
                        }
                        Ok(Ok(mut tls)) => tls.shutdown().await,
                        Ok(Err(e)) => Err(e),
                        Err(_) => Ok(()),
                    };
                    if let Err(e) = ended {
                        eprintln!("[policy host] connection ended: {e}");
                    }
                });
            }
        });
        PolicyHost {
            addr,
            requests,
            last_request,
            response,
            hold,
            task,
        }
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }

    fn respond(&self, raw: String) {
        *self.response.lock().unwrap() = raw;
    }

    /// Whether connections stay open after the response until the client closes them.
    fn hold(&self, hold: bool) {
        self.hold.store(hold, Ordering::SeqCst);
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    fn last_request(&self) -> String {
        self.last_request.lock().unwrap().clone()
    }

    /// Stops listening: connections to the port are refused from now on.
    async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// Reads a request head, up to the blank line.
async fn read_head(stream: &mut (impl AsyncReadExt + Unpin)) -> std::io::Result<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 16 * 1024 {
        if stream.read(&mut byte).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        head.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

fn ok_response(body: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn chunked_response(body: &str) -> String {
    let (a, b) = body.split_at(body.len() / 2);
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
        a.len(),
        b.len()
    )
}

/// The zone of `example.test` announcing policy `id`, with answers that resolvers do not cache.
fn zone(id: &str) -> DnsTable {
    DnsTable::new()
        .ttl(0)
        .txt(&format!("_mta-sts.{DOMAIN}"), &format!("v=STSv1; id={id};"))
        .txt(DOMAIN, "v=spf1 -all")
        .a(POLICY_HOST, Ipv4Addr::LOCALHOST)
}

fn client(dns: &DnsServer, roots: Arc<RootCertStore>, host: &PolicyHost) -> MtaSts {
    let resolver = smtpgate::upstream::mx::resolver(&[dns.addr()]).expect("resolver");
    MtaSts::new(resolver, roots, host.port())
}

fn the_policy(id: &str) -> Policy {
    Policy {
        id: id.into(),
        mode: Mode::Enforce,
        mx: vec!["mx.example.test".into(), "*.mx.example.test".into()],
        max_age: Duration::from_secs(86400),
    }
}

#[tokio::test]
async fn policy_is_fetched_and_parsed() {
    let ca = TestCa::new("test CA");
    let host = PolicyHost::start(&ca, POLICY_HOST).await;
    let dns = DnsServer::start(zone("20260101"));
    let sts = client(&dns, ca.roots(), &host);

    let policy = within(sts.policy(DOMAIN)).await.expect("policy");
    assert_eq!(policy, Some(the_policy("20260101")));
    let policy = policy.unwrap();
    assert!(policy.matches("mx.example.test") && policy.matches("a.mx.example.test"));
    assert!(!policy.matches("other.example.test"));

    let request = host.last_request();
    assert!(
        request.starts_with("GET /.well-known/mta-sts.txt HTTP/1.1\r\n"),
        "{request:?}"
    );
    assert!(
        request
            .to_ascii_lowercase()
            .contains("\r\nhost: mta-sts.example.test\r\n"),
        "{request:?}"
    );
    let cached = sts.cached();
    assert_eq!(cached.len(), 1);
    assert_eq!((cached[0].0.as_str(), &cached[0].1), (DOMAIN, &the_policy("20260101")));
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    assert!(now.abs_diff(cached[0].2) < 60, "fetched at {}, now {now}", cached[0].2);
    host.stop().await;
}

#[tokio::test]
async fn cached_policy_is_not_fetched_again() {
    let ca = TestCa::new("test CA");
    let host = PolicyHost::start(&ca, POLICY_HOST).await;
    let dns = DnsServer::start(zone("1"));
    let sts = client(&dns, ca.roots(), &host);

    assert_eq!(within(sts.policy(DOMAIN)).await, Ok(Some(the_policy("1"))));
    assert_eq!(within(sts.policy(DOMAIN)).await, Ok(Some(the_policy("1"))));
    assert_eq!(within(sts.policy("EXAMPLE.test.")).await, Ok(Some(the_policy("1"))));
    assert_eq!(host.requests(), 1, "one fetch, then the cache");
    host.stop().await;
}

#[tokio::test]
async fn new_txt_id_fetches_the_policy_again() {
    let ca = TestCa::new("test CA");
    let host = PolicyHost::start(&ca, POLICY_HOST).await;
    let dns = DnsServer::start(zone("1"));
    let sts = client(&dns, ca.roots(), &host);
    assert_eq!(within(sts.policy(DOMAIN)).await, Ok(Some(the_policy("1"))));

    let testing = POLICY.replace("mode: enforce", "mode: testing");
    host.respond(chunked_response(&testing));
    dns.replace(zone("2"));
    let policy = within(sts.policy(DOMAIN)).await.expect("policy").expect("some policy");
    assert_eq!((policy.id.as_str(), policy.mode), ("2", Mode::Testing));
    assert_eq!(host.requests(), 2);
    assert_eq!(sts.cached()[0].1, policy);
    host.stop().await;
}

#[tokio::test]
async fn host_down_keeps_the_fresh_cached_policy() {
    let ca = TestCa::new("test CA");
    let host = PolicyHost::start(&ca, POLICY_HOST).await;
    let dns = DnsServer::start(zone("1"));
    let sts = client(&dns, ca.roots(), &host);
    assert_eq!(within(sts.policy(DOMAIN)).await, Ok(Some(the_policy("1"))));

    host.stop().await;
    dns.replace(zone("2"));
    assert_eq!(
        within(sts.policy(DOMAIN)).await,
        Ok(Some(the_policy("1"))),
        "cached policy kept"
    );
    assert_eq!(sts.cached()[0].1, the_policy("1"));
}

#[tokio::test]
async fn certificate_from_an_untrusted_ca_is_refused() {
    let trusted = TestCa::new("trusted CA");
    let other = TestCa::new("other CA");
    let host = PolicyHost::start(&other, POLICY_HOST).await;
    let dns = DnsServer::start(zone("1"));
    let sts = client(&dns, trusted.roots(), &host);

    let err = within(sts.policy(DOMAIN)).await.expect_err("untrusted certificate");
    assert!(err.contains("TLS") && err.contains("certificate"), "{err}");
    assert_eq!(host.requests(), 0, "no request over an unverified connection");
    assert!(sts.cached().is_empty());
    host.stop().await;
}

#[tokio::test]
async fn certificate_for_another_name_is_refused() {
    let ca = TestCa::new("test CA");
    let host = PolicyHost::start(&ca, "www.example.test").await;
    let dns = DnsServer::start(zone("1"));
    let sts = client(&dns, ca.roots(), &host);

    let err = within(sts.policy(DOMAIN))
        .await
        .expect_err("certificate for another name");
    assert!(err.contains("TLS") && err.contains("certificate"), "{err}");
    assert_eq!(host.requests(), 0);
    host.stop().await;
}

#[tokio::test]
async fn http_404_is_an_error() {
    let ca = TestCa::new("test CA");
    let host = PolicyHost::start(&ca, POLICY_HOST).await;
    host.respond("HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 9\r\n\r\nnot found".into());
    let dns = DnsServer::start(zone("1"));
    let sts = client(&dns, ca.roots(), &host);

    let err = within(sts.policy(DOMAIN)).await.expect_err("404");
    assert!(err.contains("HTTP status 404") && err.contains(POLICY_HOST), "{err}");
    assert!(sts.cached().is_empty());
    host.stop().await;
}

#[tokio::test]
async fn redirect_is_not_followed() {
    let ca = TestCa::new("test CA");
    let host = PolicyHost::start(&ca, POLICY_HOST).await;
    let location = format!("https://{POLICY_HOST}:{}/.well-known/mta-sts.txt?moved", host.port());
    host.respond(format!(
        "HTTP/1.1 301 Moved Permanently\r\nLocation: {location}\r\nContent-Length: 0\r\n\r\n"
    ));
    let dns = DnsServer::start(zone("1"));
    let sts = client(&dns, ca.roots(), &host);

    let err = within(sts.policy(DOMAIN)).await.expect_err("redirect");
    assert!(
        err.contains("301") && err.contains("redirects are not followed"),
        "{err}"
    );
    assert_eq!(host.requests(), 1, "the redirect was not followed");
    host.stop().await;
}

/// A response with a head of `fields` and `body` sent as two chunks, the first with a chunk
/// extension, and a trailer field.
fn chunked_with_trailer(fields: &str, body: &str) -> String {
    let (a, b) = body.split_at(body.len() / 2);
    format!(
        "HTTP/1.1 200 OK\r\n{fields}Transfer-Encoding: chunked\r\n\r\n{:x};ext=1\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\nX-Trailer: 1\r\n\r\n",
        a.len(),
        b.len()
    )
}

/// What the host does after its response in a case of [`http_rules_table`].
#[derive(Debug, Clone, Copy, PartialEq)]
enum After {
    Close,
    /// Keeps the connection open: a client waiting for more than it needs runs into its timeout.
    Hold,
}

/// Each rule of RFC 8461 3.3 the fetch keeps, and the framings it reads, against a real HTTPS
/// host: `Ok` means the policy was fetched and parsed, `Err(text)` an error containing `text`.
/// Every case is checked before the test fails, so one run shows all rules a change breaks.
#[tokio::test]
async fn http_rules_table() {
    use After::{Close, Hold};
    let ca = TestCa::new("test CA");
    let host = PolicyHost::start(&ca, POLICY_HOST).await;
    let dns = DnsServer::start(zone("1"));
    let plain = "Content-Type: text/plain\r\n";
    let head = format!("HTTP/1.1 200 OK\r\n{plain}");
    let too_long = "x".repeat(MAX_BODY + 1);
    let cases: Vec<(&str, String, After, Result<(), &str>)> = vec![
        ("content-length", ok_response(POLICY), Close, Ok(())),
        (
            "content-length, connection left open",
            ok_response(POLICY),
            Hold,
            Ok(()),
        ),
        (
            "chunked with extension and trailer",
            chunked_with_trailer(plain, POLICY),
            Close,
            Ok(()),
        ),
        ("close-delimited", format!("{head}\r\n{POLICY}"), Close, Ok(())),
        (
            "HTTP/1.0",
            format!("HTTP/1.0 200 OK\r\n{plain}\r\n{POLICY}"),
            Close,
            Ok(()),
        ),
        (
            "media type in another case, with charset",
            format!(
                "HTTP/1.1 200 OK\r\ncontent-type: Text/Plain; charset=utf-8\r\ncontent-length: {}\r\n\r\n{POLICY}",
                POLICY.len()
            ),
            Close,
            Ok(()),
        ),
        (
            "404",
            "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 0\r\n\r\n".into(),
            Close,
            Err("HTTP status 404"),
        ),
        (
            "302 with a policy body",
            format!(
                "HTTP/1.1 302 Found\r\nLocation: /x\r\n{plain}Content-Length: {}\r\n\r\n{POLICY}",
                POLICY.len()
            ),
            Close,
            Err("HTTP status 302: redirects are not followed"),
        ),
        (
            "text/html",
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\r\n{POLICY}",
                POLICY.len()
            ),
            Close,
            Err("not text/plain"),
        ),
        (
            "no Content-Type",
            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{POLICY}", POLICY.len()),
            Close,
            Err("no Content-Type"),
        ),
        (
            "declared length over 64 KiB, no body sent",
            format!("{head}Content-Length: {}\r\n\r\n", 100 * MAX_BODY),
            Hold,
            Err("larger than 65536 bytes"),
        ),
        (
            "chunked body over 64 KiB",
            format!(
                "{head}Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{too_long}\r\n",
                too_long.len()
            ),
            Hold,
            Err("larger than 65536 bytes"),
        ),
        (
            "close-delimited body over 64 KiB",
            format!("{head}\r\n{too_long}"),
            Hold,
            Err("larger than 65536 bytes"),
        ),
        (
            "gzip transfer coding",
            format!("{head}Transfer-Encoding: gzip\r\n\r\n{POLICY}"),
            Close,
            Err("unsupported Transfer-Encoding"),
        ),
        (
            "closed inside a length-delimited body",
            format!("{head}Content-Length: 1000\r\n\r\n{POLICY}"),
            Close,
            Err("reading the response"),
        ),
        (
            "closed inside a chunked body",
            format!("{head}Transfer-Encoding: chunked\r\n\r\n3e8\r\n{POLICY}"),
            Close,
            Err("reading the response"),
        ),
        (
            "conflicting lengths",
            format!("{head}Content-Length: 5\r\nContent-Length: 6\r\n\r\nabcdef"),
            Close,
            Err("HTTP: "),
        ),
        ("not HTTP", "SSH-2.0-OpenSSH_9.6\r\n\r\n".into(), Close, Err("HTTP: ")),
    ];
    let mut failures = Vec::new();
    for (name, raw, after, want) in cases {
        host.respond(raw);
        host.hold(after == Hold);
        // A client of its own for each case: nothing cached, no failure remembered.
        let got = within(client(&dns, ca.roots(), &host).policy(DOMAIN)).await;
        let passed = match (&want, &got) {
            (Ok(()), Ok(Some(policy))) => *policy == the_policy("1"),
            (Err(want), Err(got)) => got.contains(want) && got.contains(POLICY_HOST),
            _ => false,
        };
        if !passed {
            failures.push(format!("{name}: got {got:?}, want {want:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    host.stop().await;
}

/// A host that takes the request and never answers costs one [`FETCH_TIMEOUT`], not more.
#[tokio::test]
async fn a_host_that_never_answers_times_out() {
    let ca = TestCa::new("test CA");
    let host = PolicyHost::start(&ca, POLICY_HOST).await;
    host.respond(String::new());
    host.hold(true);
    let dns = DnsServer::start(zone("1"));
    let sts = client(&dns, ca.roots(), &host);

    let started = std::time::Instant::now();
    let err = within(sts.policy(DOMAIN)).await.expect_err("no answer");
    assert!(err.contains("no answer within 10s"), "{err}");
    assert!(started.elapsed() >= FETCH_TIMEOUT, "{:?}", started.elapsed());
    assert_eq!(host.requests(), 1);
    host.stop().await;
}

#[tokio::test]
async fn no_txt_record_means_no_policy() {
    let ca = TestCa::new("test CA");
    let host = PolicyHost::start(&ca, POLICY_HOST).await;
    let dns = DnsServer::start(
        DnsTable::new()
            .a(POLICY_HOST, Ipv4Addr::LOCALHOST)
            .txt("spf-only.test", "v=spf1 -all")
            .txt("_mta-sts.spf-only.test", "v=spf1 -all")
            .nodata("_mta-sts.empty.test"),
    );
    let sts = client(&dns, ca.roots(), &host);

    for domain in [DOMAIN, "spf-only.test", "empty.test", "[127.0.0.1]"] {
        assert_eq!(within(sts.policy(domain)).await, Ok(None), "{domain}");
    }
    assert_eq!(host.requests(), 0);
    assert!(sts.cached().is_empty());
    host.stop().await;
}

// ---- MX delivery under a policy: the smtpgate binary, a scriptable upstream as the MX ----

/// A running gate whose MX for `example.test` is a scriptable upstream named `mx.example.test`,
/// with `policy` served by a policy host the gate trusts through `ca_file`.
struct Delivery {
    gate: support::Gate,
    upstream: support::Upstream,
    _dns: DnsServer,
    _host: PolicyHost,
    _dir: tempfile::TempDir,
    _runtime: tokio::runtime::Runtime,
}

/// [`delivery_to`] a plain upstream (no STARTTLS).
fn delivery_under(policy: &str) -> Delivery {
    delivery_to(policy, |_| support::Upstream::start())
}

/// The gate, under `policy`, delivering to the upstream `mx` starts (given the test CA that the
/// gate trusts).
fn delivery_to(policy: &str, mx: impl FnOnce(&TestCa) -> support::Upstream) -> Delivery {
    delivery_in(policy, mx, |zone, _| zone)
}

/// [`delivery_to`], with `extra` applied to the DNS zone (given the upstream's port).
fn delivery_in(
    policy: &str,
    mx: impl FnOnce(&TestCa) -> support::Upstream,
    extra: impl FnOnce(DnsTable, u16) -> DnsTable,
) -> Delivery {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let ca = TestCa::new("smtpgate test CA");
    let host = runtime.block_on(PolicyHost::start(&ca, POLICY_HOST));
    host.respond(ok_response(policy));
    let upstream = mx(&ca);
    let dns = DnsServer::start(extra(
        zone("delivery1")
            .mx(DOMAIN, 10, "mx.example.test")
            .a("mx.example.test", Ipv4Addr::LOCALHOST),
        upstream.addr().port(),
    ));
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.root_pem()).unwrap();
    let gate = support::Gate::start(&format!(
        "hostname = \"gate.example.org\"\nshutdown_timeout = \"5s\"\n\n[spool]\ndir = \"spool\"\n\n\
         [admin]\naddress = \"127.0.0.1:0\"\n\n[[listener]]\nname = \"inbound\"\naddress = \"127.0.0.1:0\"\n\
         relay_networks = [\"127.0.0.0/8\"]\n\n[dns]\nnameservers = [\"{dns}\"]\n\n\
         [mta_sts]\nhttps_port = {port}\nca_file = {ca_file:?}\n\n\
         [queue]\nretry = [\"30s\"]\nsmtp_port = {smtp}\n",
        dns = dns.addr(),
        port = host.port(),
        smtp = upstream.addr().port()
    ));
    Delivery {
        gate,
        upstream,
        _dns: dns,
        _host: host,
        _dir: dir,
        _runtime: runtime,
    }
}

fn send(d: &Delivery) {
    let sent = support::smtplib_send(
        d.gate.smtp_addr(),
        "alice@example.org",
        &["bob@example.test"],
        &support::message("sts@example.org", "MTA-STS", "Hello."),
    );
    assert!(sent.reply("END-OF-DATA").starts_with("250 "), "{sent}");
}

/// The gate's log line for the attempt to bob@example.test, once there is one.
fn attempt_line(d: &Delivery) -> String {
    let found = support::wait_until(SOON, || {
        d.gate
            .stderr_lines()
            .iter()
            .any(|l| l.contains("delivery attempt") && l.contains("bob@example.test"))
    });
    assert!(found, "no delivery attempt logged");
    d.gate
        .stderr_lines()
        .into_iter()
        .find(|l| l.contains("delivery attempt") && l.contains("bob@example.test"))
        .unwrap()
}

/// `mode: enforce` naming the MX, which offers no STARTTLS: nothing is sent in plaintext; the
/// attempt is deferred (a temporary failure), not bounced.
#[test]
fn an_enforced_policy_never_sends_in_plaintext() {
    let d = delivery_under(POLICY);
    send(&d);
    let line = attempt_line(&d);
    assert!(line.contains("result=\"deferred\""), "{line}");
    assert!(line.contains("STARTTLS") || line.contains("TLS required"), "{line}");
    assert!(d.upstream.messages().is_empty(), "mail went out in plaintext");
    assert_eq!(d.gate.metric("smtpgate_messages_bounced_total"), 0.0);
}

/// `mode: enforce` naming other MX hosts: the listed MX is not used; deferred.
#[test]
fn an_enforced_policy_skips_mx_hosts_it_does_not_name() {
    let d = delivery_under("version: STSv1\r\nmode: enforce\r\nmx: other.example.test\r\nmax_age: 86400\r\n");
    send(&d);
    let line = attempt_line(&d);
    assert!(line.contains("result=\"deferred\""), "{line}");
    assert!(line.contains("matches its MTA-STS policy"), "{line}");
    assert!(
        d.upstream.messages().is_empty(),
        "mail went to an MX the policy does not name"
    );
}

/// `mode: testing` is not enforced: the message is delivered.
#[test]
fn a_testing_policy_is_not_enforced() {
    let d = delivery_under(&POLICY.replace("mode: enforce", "mode: testing"));
    send(&d);
    let got = d.upstream.wait_for(1, SOON);
    assert_eq!(got[0].rcpt_addresses(), ["bob@example.test"]);
}

/// `mode: enforce` naming the MX, which offers STARTTLS with a certificate for its name from the
/// CA in `ca_file`: delivered over verified TLS.
#[test]
fn an_enforced_policy_delivers_over_verified_tls() {
    let d = delivery_to(POLICY, |ca| {
        support::Upstream::with_starttls(&ca.server_cert("mx.example.test"))
    });
    send(&d);
    let got = d.upstream.wait_for(1, SOON);
    assert_eq!(got[0].rcpt_addresses(), ["bob@example.test"]);
    assert!(got[0].tls, "delivered without TLS");
}

/// `mode: enforce`, and the MX offers STARTTLS with a certificate from a CA the gate does not
/// trust: the handshake is refused and the attempt deferred; nothing is sent.
#[test]
fn an_enforced_policy_refuses_an_untrusted_certificate() {
    let d = delivery_to(POLICY, |_| {
        let stranger = TestCa::new("a CA nobody trusts");
        support::Upstream::with_starttls(&stranger.server_cert("mx.example.test"))
    });
    send(&d);
    let line = attempt_line(&d);
    assert!(
        line.contains("result=\"deferred\"") && line.contains("TLS required"),
        "{line}"
    );
    assert!(
        d.upstream.messages().is_empty(),
        "mail went over an unverified connection"
    );
}

/// `mode: enforce` naming the MX, whose self-signed certificate MTA-STS alone would refuse, but a
/// secure DANE-EE record names its key: DANE takes precedence (RFC 8461 2) and the message is
/// delivered over TLS.
#[test]
fn dane_takes_precedence_over_an_enforced_policy() {
    let cert = support::ServerCert::self_signed("mx.example.test");
    let digest = support::sha256(&cert.spki);
    let d = delivery_in(
        POLICY,
        |_| support::Upstream::with_starttls(&cert),
        |zone, port| {
            zone.secure(DOMAIN)
                .tlsa(&format!("_{port}._tcp.mx.example.test"), 3, 1, 1, &digest)
        },
    );
    send(&d);
    let got = d.upstream.wait_for(1, SOON);
    assert!(got[0].tls);
}
