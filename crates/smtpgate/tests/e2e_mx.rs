//! End-to-end MX delivery: no pool and no route, so every recipient goes to the mail servers
//! of its domain, found through a test DNS server ([`DnsServer`]) named in `[dns]`. Every
//! MX host's address is on loopback and `[queue] smtp_port` points at the [`Upstream`]'s port.

mod support;

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use hickory_proto::rr::RecordType;
use support::{DnsServer, DnsTable, Gate, SOON, Upstream, UpstreamMessage, message, smtplib_send, wait_until};

const UPSTREAM_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
/// Also loopback, but the upstream is bound to 127.0.0.1 only: nothing answers here unless a
/// test puts a [`ClosingListener`] on it.
const DEAD_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
/// How long a DNS server that never answers may keep the gate waiting before it defers
/// (hickory's default is a 5 s timeout, 2 attempts).
const DNS_TIMEOUT_DEADLINE: Duration = Duration::from_secs(90);

/// A gate with a listener for loopback clients, no pool and no route (MX delivery), the given
/// name server, MX deliveries to `smtp_port`, and a retry every second.
fn mx_config(dns: SocketAddr, smtp_port: u16) -> String {
    format!(
        "hostname = \"gate.example.test\"\n\
         shutdown_timeout = \"5s\"\n\
         \n\
         [spool]\n\
         dir = \"spool\"\n\
         \n\
         [admin]\n\
         address = \"127.0.0.1:0\"\n\
         \n\
         [[listener]]\n\
         name = \"inbound\"\n\
         address = \"127.0.0.1:0\"\n\
         relay_networks = [\"127.0.0.0/8\"]\n\
         \n\
         [dns]\n\
         nameservers = [\"{dns}\"]\n\
         \n\
         [queue]\n\
         retry = [\"1s\"]\n\
         smtp_port = {smtp_port}\n"
    )
}

/// The usual domains: `mx.test` (a working MX host at preference 5 and a dead one at 10),
/// with `extra` applied on top.
fn start(upstream: &Upstream, extra: impl FnOnce(DnsTable) -> DnsTable) -> (DnsServer, Gate) {
    let table = DnsTable::new()
        .mx("mx.test", 10, "a.mx.test")
        .mx("mx.test", 5, "b.mx.test")
        .a("a.mx.test", DEAD_IP)
        .a("b.mx.test", UPSTREAM_IP);
    let dns = DnsServer::start(extra(table));
    let gate = Gate::start(&mx_config(dns.addr(), upstream.addr().port()));
    (dns, gate)
}

fn metric(gate: &Gate, name: &str) -> f64 {
    gate.try_metric(name).unwrap_or(0.0)
}

/// Sends one message through the gate and checks that it was queued.
fn send(gate: &Gate, from: &str, to: &str, message_id: &str) {
    let sent = smtplib_send(
        gate.smtp_addr(),
        from,
        &[to],
        &message(message_id, "mx test", "Hello by MX."),
    );
    let end_of_data = sent.reply("END-OF-DATA");
    assert!(end_of_data.starts_with("250 "), "{sent}");
}

fn wait_for_metric(gate: &Gate, name: &str, at_least: f64, within: Duration) {
    let reached = wait_until(within, || metric(gate, name) >= at_least);
    assert!(
        reached,
        "{name} did not reach {at_least} within {within:?}:\n{}",
        gate.metrics()
    );
}

/// Waits for the DSN about `failed_rcpt` to reach the upstream and checks its envelope and
/// its status.
fn expect_dsn(upstream: &Upstream, sender: &str, failed_rcpt: &str, status: &str) {
    let arrived = upstream.wait_for(1, SOON);
    assert_eq!(arrived.len(), 1, "one message (the DSN) expected: {arrived:#?}");
    let dsn: &UpstreamMessage = &arrived[0];
    assert_eq!(dsn.mail_from, "", "a DSN goes from the null sender: {dsn:#?}");
    assert_eq!(dsn.rcpt_addresses(), [sender]);
    let text = dsn.text();
    assert!(
        text.contains(&format!("Status: {status}\r\n")),
        "no `Status: {status}` in the DSN:\n{text}"
    );
    assert!(
        text.contains(&format!("Final-Recipient: rfc822; {failed_rcpt}")),
        "no Final-Recipient {failed_rcpt} in the DSN:\n{text}"
    );
}

/// A TCP listener that counts connections and closes each at once (before any greeting).
struct ClosingListener {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl ClosingListener {
    fn start(addr: SocketAddr) -> ClosingListener {
        let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind closing listener {addr}: {e}"));
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, stopped) = (accepted.clone(), stop.clone());
        let thread = thread::spawn(move || {
            for stream in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    return;
                }
                if stream.is_ok() {
                    count.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        ClosingListener {
            addr,
            accepted,
            stop,
            thread: Some(thread),
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for ClosingListener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn mx_with_lowest_preference_is_tried_first() {
    let upstream = Upstream::start();
    // Something listens on the preference-10 host, so a connection to it would be seen.
    let dead = ClosingListener::start(SocketAddr::from((DEAD_IP, upstream.addr().port())));
    let (dns, gate) = start(&upstream, |t| t);

    send(&gate, "alice@example.test", "user@mx.test", "mx-order@example.test");

    let arrived = upstream.wait_for(1, SOON);
    assert_eq!(arrived[0].rcpt_addresses(), ["user@mx.test"]);
    assert!(arrived[0].text().contains("Message-ID: <mx-order@example.test>"));
    wait_for_metric(&gate, "smtpgate_messages_delivered_total", 1.0, SOON);
    assert_eq!(metric(&gate, "smtpgate_recipients_delivered_total"), 1.0);
    assert_eq!(metric(&gate, "smtpgate_messages_deferred_total"), 0.0);
    assert_eq!(metric(&gate, "smtpgate_messages_bounced_total"), 0.0);
    assert!(dns.query_count("mx.test", RecordType::MX) >= 1, "{:?}", dns.queries());
    assert_eq!(
        dead.accepted(),
        0,
        "the gate connected to the preference-10 host before the preference-5 one"
    );
}

#[test]
fn unreachable_lowest_preference_mx_falls_back_to_the_next() {
    let upstream = Upstream::start();
    let dead = ClosingListener::start(SocketAddr::from((DEAD_IP, upstream.addr().port())));
    let (_dns, gate) = start(&upstream, |t| {
        // fallback.test: the preferred host closes every connection; the next one works.
        t.mx("fallback.test", 5, "down.fallback.test")
            .mx("fallback.test", 10, "up.fallback.test")
            .a("down.fallback.test", DEAD_IP)
            .a("up.fallback.test", UPSTREAM_IP)
    });

    send(
        &gate,
        "alice@example.test",
        "user@fallback.test",
        "mx-fallback@example.test",
    );

    let arrived = upstream.wait_for(1, SOON);
    assert_eq!(arrived[0].rcpt_addresses(), ["user@fallback.test"]);
    wait_for_metric(&gate, "smtpgate_messages_delivered_total", 1.0, SOON);
    assert!(
        dead.accepted() >= 1,
        "the preference-5 host was never tried before the fallback"
    );
    assert_eq!(metric(&gate, "smtpgate_messages_bounced_total"), 0.0);
}

#[test]
fn unreachable_lowest_preference_mx_with_nothing_listening_falls_back() {
    let upstream = Upstream::start();
    let (_dns, gate) = start(&upstream, |t| {
        t.mx("refused.test", 5, "down.refused.test")
            .mx("refused.test", 10, "up.refused.test")
            .a("down.refused.test", DEAD_IP)
            .a("up.refused.test", UPSTREAM_IP)
    });

    send(
        &gate,
        "alice@example.test",
        "user@refused.test",
        "mx-refused@example.test",
    );

    let arrived = upstream.wait_for(1, SOON);
    assert_eq!(arrived[0].rcpt_addresses(), ["user@refused.test"]);
    wait_for_metric(&gate, "smtpgate_messages_delivered_total", 1.0, SOON);
    assert_eq!(metric(&gate, "smtpgate_messages_bounced_total"), 0.0);
}

#[test]
fn domain_without_mx_is_its_own_mail_server() {
    let upstream = Upstream::start();
    let (dns, gate) = start(&upstream, |t| t.a("implicit.test", UPSTREAM_IP));

    send(
        &gate,
        "alice@example.test",
        "user@implicit.test",
        "mx-implicit@example.test",
    );

    let arrived = upstream.wait_for(1, SOON);
    assert_eq!(arrived[0].rcpt_addresses(), ["user@implicit.test"]);
    wait_for_metric(&gate, "smtpgate_messages_delivered_total", 1.0, SOON);
    assert_eq!(metric(&gate, "smtpgate_messages_bounced_total"), 0.0);
    assert!(
        dns.query_count("implicit.test", RecordType::MX) >= 1,
        "{:?}",
        dns.queries()
    );
    assert!(
        dns.query_count("implicit.test", RecordType::A) >= 1,
        "{:?}",
        dns.queries()
    );
}

#[test]
fn null_mx_bounces_at_once_with_5_1_10() {
    let upstream = Upstream::start();
    let (dns, gate) = start(&upstream, |t| t.mx("nullmx.test", 0, "."));

    send(&gate, "sender@mx.test", "user@nullmx.test", "mx-null@example.test");

    expect_dsn(&upstream, "sender@mx.test", "user@nullmx.test", "5.1.10");
    assert_eq!(metric(&gate, "smtpgate_messages_bounced_total"), 1.0);
    assert_eq!(metric(&gate, "smtpgate_dsn_generated_total"), 1.0);
    assert_eq!(
        metric(&gate, "smtpgate_messages_deferred_total"),
        0.0,
        "a null MX is permanent: no retry\n{}",
        gate.metrics()
    );
    assert!(
        dns.query_count("nullmx.test", RecordType::MX) >= 1,
        "{:?}",
        dns.queries()
    );
    assert_eq!(
        dns.query_count("nullmx.test", RecordType::A),
        0,
        "no implicit MX for a null MX domain: {:?}",
        dns.queries()
    );
}

/// Regression: the DSN said `Diagnostic-Code: smtp; domain ... does not accept mail`, smtpgate's
/// own text under the type RFC 3464 keeps for a remote server's reply. It now gives the reply
/// smtpgate itself gives (a proxy listener's answer at RCPT) under its own type; a remote
/// server's refusal keeps `smtp`.
#[test]
fn null_mx_dsn_gives_smtpgates_own_reply_not_an_smtp_diagnostic() {
    let upstream = Upstream::start();
    let (_dns, gate) = start(&upstream, |t| t.mx("nullmx.test", 0, "."));

    send(&gate, "sender@mx.test", "user@nullmx.test", "mx-null-diag@example.test");

    expect_dsn(&upstream, "sender@mx.test", "user@nullmx.test", "5.1.10");
    let dsn = upstream.messages()[0].text();
    assert!(
        dsn.contains(
            "\r\nDiagnostic-Code: X-Smtpgate; 550 5.1.10 domain nullmx.test does not accept mail (null MX)\r\n"
        ),
        "{dsn}"
    );
    assert!(!dsn.contains("Diagnostic-Code: smtp;"), "{dsn}");
    assert!(!dsn.contains("Remote-MTA:"), "no remote server was involved:\n{dsn}");
    // An independent reader of RFC 3464 reports (Python's email package) sees the same field.
    let fields = python_dsn_fields(&dsn);
    assert!(
        fields.contains(
            &"diagnostic-code=X-Smtpgate; 550 5.1.10 domain nullmx.test does not accept mail (null MX)".to_string()
        ),
        "{fields:?}"
    );
}

#[test]
fn a_remote_refusal_keeps_its_smtp_diagnostic() {
    let upstream = Upstream::start();
    let (_dns, gate) = start(&upstream, |t| t);

    send(
        &gate,
        "sender@mx.test",
        "reject-rcpt@mx.test",
        "mx-remote-diag@example.test",
    );

    expect_dsn(&upstream, "sender@mx.test", "reject-rcpt@mx.test", "5.1.1");
    let dsn = upstream.messages()[0].text();
    let fields = python_dsn_fields(&dsn);
    assert!(
        fields.iter().any(|f| f.starts_with("diagnostic-code=smtp; 550 5.1.1")),
        "{fields:?}\n{dsn}"
    );
}

/// The per-recipient fields of the `message/delivery-status` part of `dsn`, as Python's email
/// package reads them: `name=value` (name lowercased).
fn python_dsn_fields(dsn: &str) -> Vec<String> {
    const SCRIPT: &str = r#"
import sys, email
msg = email.message_from_bytes(sys.stdin.buffer.read())
for part in msg.walk():
    if part.get_content_type() == 'message/delivery-status':
        for block in part.get_payload()[1:]:
            for k, v in block.items():
                print(k.lower() + '=' + ' '.join(v.split()))
"#;
    let mut child = std::process::Command::new("python3")
        .arg("-c")
        .arg(SCRIPT)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run python3");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(dsn.as_bytes()).unwrap();
    let out = child.wait_with_output().expect("python3 finished");
    assert!(
        out.status.success(),
        "python3: {}\non:\n{dsn}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn nonexistent_domain_bounces_with_5_1_2() {
    let upstream = Upstream::start();
    let (_dns, gate) = start(&upstream, |t| t.nxdomain("nosuch.test"));

    send(&gate, "sender@mx.test", "user@nosuch.test", "mx-nxdomain@example.test");

    expect_dsn(&upstream, "sender@mx.test", "user@nosuch.test", "5.1.2");
    assert_eq!(metric(&gate, "smtpgate_messages_bounced_total"), 1.0);
    assert_eq!(
        metric(&gate, "smtpgate_messages_deferred_total"),
        0.0,
        "NXDOMAIN is permanent: no retry\n{}",
        gate.metrics()
    );
}

#[test]
fn dns_timeout_defers_and_never_bounces() {
    let upstream = Upstream::start();
    let (dns, gate) = start(&upstream, |t| t.silent("silent.test"));

    send(&gate, "sender@mx.test", "user@silent.test", "mx-timeout@example.test");

    // Watch until the gate has deferred twice (the first attempt and the retry a second
    // later), checking at every look that nothing bounced.
    let mut bounced = 0.0;
    let deferred_twice = wait_until(2 * DNS_TIMEOUT_DEADLINE, || {
        bounced = metric(&gate, "smtpgate_messages_bounced_total");
        bounced > 0.0 || metric(&gate, "smtpgate_messages_deferred_total") >= 2.0
    });
    assert_eq!(bounced, 0.0, "a DNS timeout bounced:\n{}", gate.metrics());
    assert!(
        deferred_twice,
        "not deferred twice within {:?}:\n{}",
        2 * DNS_TIMEOUT_DEADLINE,
        gate.metrics()
    );
    assert_eq!(metric(&gate, "smtpgate_dsn_generated_total"), 0.0);
    assert!(upstream.messages().is_empty(), "{:#?}", upstream.messages());
    assert!(
        dns.query_count("silent.test", RecordType::MX) >= 2,
        "{:?}",
        dns.queries()
    );
}

/// RFC 5321 5.1: the implicit MX applies only when the domain has no MX records (NODATA);
/// a failed MX lookup (SERVFAIL) is temporary and must not send the mail to the domain's
/// own address instead.
#[test]
fn servfail_on_mx_lookup_defers_instead_of_using_the_domain_address() {
    let upstream = Upstream::start();
    let (_dns, gate) = start(&upstream, |t| {
        t.servfail("servfail.test", RecordType::MX)
            .a("servfail.test", UPSTREAM_IP)
    });

    send(
        &gate,
        "sender@mx.test",
        "user@servfail.test",
        "mx-servfail@example.test",
    );

    let settled = wait_until(DNS_TIMEOUT_DEADLINE, || {
        !upstream.messages().is_empty() || metric(&gate, "smtpgate_messages_deferred_total") >= 1.0
    });
    assert!(
        settled,
        "no attempt within {DNS_TIMEOUT_DEADLINE:?}:\n{}",
        gate.metrics()
    );
    assert!(
        upstream.messages().is_empty(),
        "delivered to the A record of a domain whose MX lookup failed (SERVFAIL):\n{}",
        upstream
            .messages()
            .iter()
            .map(|m| format!("RCPT {:?}\n{}", m.rcpt_addresses(), m.text()))
            .collect::<String>()
    );
    assert_eq!(metric(&gate, "smtpgate_messages_bounced_total"), 0.0);
}

/// The test DNS server itself: the same answers over UDP and over TCP on one port.
#[test]
fn test_dns_server_answers_over_udp_and_tcp() {
    use hickory_proto::op::{Message, Query, ResponseCode};
    use hickory_proto::rr::Name;
    use std::io::{Read, Write};
    use std::net::UdpSocket;

    let dns = DnsServer::start(
        DnsTable::new()
            .mx("mx.test", 10, "a.mx.test")
            .mx("mx.test", 5, "b.mx.test")
            .a("b.mx.test", UPSTREAM_IP),
    );
    let question = |id: u16, name: &str, qtype: RecordType| {
        let mut m = Message::new();
        m.set_id(id).set_recursion_desired(true);
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
        m.to_vec().unwrap()
    };
    let over_udp = |bytes: &[u8]| {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        socket.set_read_timeout(Some(SOON)).unwrap();
        socket.send_to(bytes, dns.addr()).unwrap();
        let mut buf = [0u8; 4096];
        let (n, _) = socket.recv_from(&mut buf).expect("UDP reply");
        Message::from_vec(&buf[..n]).unwrap()
    };
    let over_tcp = |bytes: &[u8]| {
        let mut stream = TcpStream::connect_timeout(&dns.addr(), SOON).unwrap();
        stream.set_read_timeout(Some(SOON)).unwrap();
        let len = u16::try_from(bytes.len()).unwrap().to_be_bytes();
        stream.write_all(&len).unwrap();
        stream.write_all(bytes).unwrap();
        let mut len = [0u8; 2];
        stream.read_exact(&mut len).expect("TCP reply length");
        let mut reply = vec![0u8; u16::from_be_bytes(len) as usize];
        stream.read_exact(&mut reply).expect("TCP reply");
        Message::from_vec(&reply).unwrap()
    };

    for (transport, ask) in [("udp", &over_udp as &dyn Fn(&[u8]) -> Message), ("tcp", &over_tcp)] {
        let mx = ask(&question(1, "MX.test.", RecordType::MX));
        assert_eq!(mx.id(), 1, "{transport}");
        assert_eq!(mx.response_code(), ResponseCode::NoError, "{transport}");
        let mut prefs: Vec<u16> = mx
            .answers()
            .iter()
            .filter_map(|r| r.data().as_mx().map(|m| m.preference()))
            .collect();
        prefs.sort_unstable();
        assert_eq!(prefs, [5, 10], "{transport}: {mx:?}");

        let nodata = ask(&question(2, "b.mx.test.", RecordType::AAAA));
        assert_eq!(nodata.response_code(), ResponseCode::NoError, "{transport}");
        assert!(nodata.answers().is_empty(), "{transport}: {nodata:?}");

        let nx = ask(&question(3, "nosuch.test.", RecordType::A));
        assert_eq!(nx.response_code(), ResponseCode::NXDomain, "{transport}");
    }
    assert!(dns.queries().iter().any(|q| q.tcp));
    assert!(dns.queries().iter().any(|q| !q.tcp));
}
