//! Durability end to end: what smtpgate acknowledged with `250` survives `kill -9`, recipient
//! states survive a crash, SIGTERM lets a transaction in progress finish, and a message that was
//! never completed is never delivered.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread;
use std::time::{Duration, Instant};

use support::{Gate, GateConfig, Probe, SOON, Sink, SmtpConn, Upstream, message, probe, wait_until};

const IO_TIMEOUT: Duration = Duration::from_secs(10);
const FROM: &str = "alice@example.test";

fn metric(gate: &Gate, name: &str) -> f64 {
    gate.metric(name)
}

/// Every Message-ID at the sink with how often it arrived.
fn sink_counts(sink: &Sink) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for id in sink.message_ids() {
        *counts.entry(id).or_default() += 1;
    }
    counts
}

fn spool_is_empty(gate: &Gate) -> bool {
    smtpgate::spool::inspect(gate.spool_dir())
        .expect("inspect spool")
        .is_empty()
}

// ---------------------------------------------------------------------------------------------
// The crash test.
// ---------------------------------------------------------------------------------------------

/// How the senders and the killer share what happened.
struct Load {
    /// Where the gate listens now (it changes at every restart).
    addr: RwLock<SocketAddr>,
    /// Message-IDs (with angle brackets) that got `250` to end of data.
    acked: Mutex<Vec<String>>,
    acked_count: AtomicUsize,
    /// Message-IDs whose transaction was started but not acknowledged.
    unacked: Mutex<Vec<String>>,
    next: AtomicUsize,
    connect_failures: AtomicUsize,
    stop: AtomicBool,
}

const SENDERS: usize = 8;
const TARGET_ACKED: usize = 3000;
/// Messages acknowledged at which the gate is killed with SIGKILL.
const KILL_AT: [usize; 4] = [400, 1000, 1600, 2300];
const PER_CONNECTION: usize = 25;
/// Worst case of the crash test: sending 80 s, arriving 45 s, draining 20 s, spool 20 s.
const SEND_DEADLINE: Duration = Duration::from_secs(80);
const DRAIN_DEADLINE: Duration = Duration::from_secs(45);

fn sender(load: Arc<Load>, worker: usize) {
    while !load.stop.load(Ordering::SeqCst) && load.acked_count.load(Ordering::SeqCst) < TARGET_ACKED {
        let addr = *load.addr.read().unwrap();
        let mut conn = match SmtpConn::connect(addr, IO_TIMEOUT) {
            Ok(c) => c,
            Err(_) => {
                // The gate is down or restarting: wait for a new address (or a short while).
                load.connect_failures.fetch_add(1, Ordering::SeqCst);
                wait_until(Duration::from_millis(200), || {
                    *load.addr.read().unwrap() != addr || load.stop.load(Ordering::SeqCst)
                });
                continue;
            }
        };
        if conn.ehlo(&format!("sender-{worker}.example.test")).is_err() {
            continue;
        }
        for _ in 0..PER_CONNECTION {
            if load.acked_count.load(Ordering::SeqCst) >= TARGET_ACKED || load.stop.load(Ordering::SeqCst) {
                break;
            }
            let n = load.next.fetch_add(1, Ordering::SeqCst);
            let id = format!("crash-{n}@durability.test");
            let text = message(&id, &format!("crash test {n}"), &format!("body {n}"));
            match conn.send_message(FROM, &["bob@example.org"], &text) {
                Ok(r) if r.is(250) => {
                    load.acked.lock().unwrap().push(format!("<{id}>"));
                    load.acked_count.fetch_add(1, Ordering::SeqCst);
                }
                Ok(r) => {
                    load.unacked.lock().unwrap().push(format!("<{id}>"));
                    eprintln!("sender {worker}: {id} refused: {r}");
                    break;
                }
                Err(_) => {
                    load.unacked.lock().unwrap().push(format!("<{id}>"));
                    break;
                }
            }
        }
        conn.quit();
    }
}

#[test]
fn every_acknowledged_message_survives_repeated_kill_9() {
    let started = Instant::now();
    let sink = Sink::start();
    let mut gate = Gate::start(&GateConfig::relay_to(sink.addr()).retry(&["1s"]).to_toml());
    let load = Arc::new(Load {
        addr: RwLock::new(gate.smtp_addr()),
        acked: Mutex::default(),
        acked_count: AtomicUsize::new(0),
        unacked: Mutex::default(),
        next: AtomicUsize::new(0),
        connect_failures: AtomicUsize::new(0),
        stop: AtomicBool::new(false),
    });
    let senders: Vec<_> = (0..SENDERS)
        .map(|w| {
            let load = load.clone();
            thread::spawn(move || sender(load, w))
        })
        .collect();

    // Kill at thresholds of acknowledged messages, not at times.
    let send_deadline = started + SEND_DEADLINE;
    let mut kills = Vec::new();
    for at in KILL_AT {
        let left = send_deadline.saturating_duration_since(Instant::now());
        let reached = wait_until(left, || load.acked_count.load(Ordering::SeqCst) >= at);
        if !reached {
            load.stop.store(true, Ordering::SeqCst);
            panic!(
                "only {} messages acknowledged within {SEND_DEADLINE:?} (waiting for {at})",
                load.acked_count.load(Ordering::SeqCst)
            );
        }
        let before = gate.pid();
        let acked_at_kill = load.acked_count.load(Ordering::SeqCst);
        gate.kill9();
        let restart = Instant::now();
        gate.restart();
        if at == KILL_AT[KILL_AT.len() / 2] {
            // Once, a crash right after start-up, while the recovered queue is being delivered.
            gate.kill9();
            gate.restart();
            kills.push(acked_at_kill);
        }
        *load.addr.write().unwrap() = gate.smtp_addr();
        eprintln!(
            "killed pid {before} at {acked_at_kill} acknowledged; restarted in {:?} on {}",
            restart.elapsed(),
            gate.smtp_addr()
        );
        kills.push(acked_at_kill);
    }
    let left = send_deadline.saturating_duration_since(Instant::now());
    let done = wait_until(left, || senders.iter().all(|s| s.is_finished()));
    load.stop.store(true, Ordering::SeqCst);
    for s in senders {
        assert!(done, "senders still running at the deadline");
        s.join().expect("sender thread");
    }
    let send_time = started.elapsed();
    let acked: Vec<String> = load.acked.lock().unwrap().clone();
    let unacked: BTreeSet<String> = load.unacked.lock().unwrap().iter().cloned().collect();
    let acked_set: BTreeSet<String> = acked.iter().cloned().collect();
    assert_eq!(acked.len(), acked_set.len(), "a Message-ID acknowledged twice");
    assert!(acked.len() >= TARGET_ACKED, "only {} acknowledged", acked.len());

    // Every acknowledged message arrives, whatever the crashes did.
    let mut counts = BTreeMap::new();
    let arrived = wait_until(DRAIN_DEADLINE, || {
        if sink.message_count() < acked.len() {
            return false;
        }
        counts = sink_counts(&sink);
        acked_set.iter().all(|id| counts.contains_key(id))
    });
    counts = sink_counts(&sink);
    let missing: Vec<&String> = acked_set.iter().filter(|id| !counts.contains_key(*id)).collect();
    assert!(
        arrived && missing.is_empty(),
        "{} of {} acknowledged messages never arrived (kills at {kills:?}), e.g. {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(20)]
    );

    // The queue drains and the spool holds nothing more to deliver.
    let drained = wait_until(SOON, || metric(&gate, "smtpgate_queue_depth") == 0.0);
    assert!(
        drained,
        "queue depth still {} after {SOON:?}",
        metric(&gate, "smtpgate_queue_depth")
    );
    assert!(
        wait_until(SOON, || spool_is_empty(&gate)),
        "the spool still holds messages after the queue drained"
    );

    let counts = sink_counts(&sink);
    let stray: Vec<&String> = counts
        .keys()
        .filter(|id| !acked_set.contains(*id) && !unacked.contains(*id))
        .collect();
    assert!(stray.is_empty(), "the sink got messages nobody sent: {stray:?}");
    let duplicates: usize = counts.values().map(|n| n - 1).sum();
    let duplicated_ids = counts.values().filter(|&&n| n > 1).count();
    let unacked_delivered = unacked.iter().filter(|id| counts.contains_key(*id)).count();
    eprintln!(
        "crash test: {} acknowledged, {} not acknowledged ({} of those delivered anyway), \
         killed {} times at {kills:?}, {} connect failures, {duplicates} duplicate deliveries \
         of {duplicated_ids} messages, {} dumps at the sink; sending took {send_time:?}, \
         all in {:?}",
        acked.len(),
        unacked.len(),
        unacked_delivered,
        kills.len(),
        load.connect_failures.load(Ordering::SeqCst),
        counts.values().sum::<usize>(),
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// Recipient states across a crash.
// ---------------------------------------------------------------------------------------------

#[test]
fn delivered_recipient_is_not_delivered_again_after_kill_9() {
    let upstream = Upstream::start();
    let mut gate = Gate::start(&GateConfig::relay_to(upstream.addr()).retry(&["1h"]).to_toml());
    let (ok, later) = ("ok@example.org", "tempfail-rcpt@example.org");
    let mut conn = SmtpConn::connect(gate.smtp_addr(), IO_TIMEOUT).expect("connect");
    conn.ehlo("client.example.test").expect("EHLO");
    let text = message("per-rcpt@durability.test", "two recipients", "One of each.");
    let reply = conn.send_message(FROM, &[ok, later], &text).expect("send");
    assert!(reply.is(250), "{reply}");
    conn.quit();

    // First attempt: `ok` is delivered, `later` deferred. The deferral is counted only after the
    // delivered state was written to the spool.
    let delivered = upstream.wait_for(1, SOON);
    assert_eq!(delivered[0].rcpt_addresses(), [ok]);
    assert!(
        wait_until(SOON, || {
            upstream.attempts_for(later) >= 1 && metric(&gate, "smtpgate_messages_deferred_total") >= 1.0
        }),
        "the first attempt was not settled"
    );
    assert_eq!(upstream.attempts_for(ok), 1);

    for round in 2..=3 {
        gate.kill9();
        gate.restart();
        // The message is recovered with `ok` final: only `later` is tried, right away.
        assert!(
            wait_until(SOON, || {
                upstream.attempts_for(later) >= round && metric(&gate, "smtpgate_messages_deferred_total") >= 1.0
            }),
            "after restart {}: {later} tried {} times",
            round - 1,
            upstream.attempts_for(later)
        );
        assert_eq!(
            upstream.attempts_for(ok),
            1,
            "after restart {}: {ok} was offered again",
            round - 1
        );
        assert_eq!(upstream.messages().len(), 1, "delivered again");
        assert_eq!(metric(&gate, "smtpgate_queue_depth"), 1.0);
        assert_eq!(metric(&gate, "smtpgate_recipients_delivered_total"), 0.0);
    }
    let spooled = smtpgate::spool::inspect(gate.spool_dir()).expect("inspect");
    assert_eq!(spooled.len(), 1, "the message waits in the spool for {later}");
}

// ---------------------------------------------------------------------------------------------
// SIGTERM.
// ---------------------------------------------------------------------------------------------

/// `shutdown_timeout` in [`GateConfig`]'s TOML.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs `Gate::terminate` on another thread: returns (gate, exit status, time from SIGTERM).
fn terminate_in_background(mut gate: Gate) -> thread::JoinHandle<(Gate, std::process::ExitStatus, Duration)> {
    thread::spawn(move || {
        let t = Instant::now();
        let status = gate.terminate();
        (gate, status, t.elapsed())
    })
}

#[test]
fn sigterm_lets_data_in_progress_finish_and_closes_idle_sessions() {
    let sink = Sink::start();
    let gate = Gate::start(&GateConfig::relay_to(sink.addr()).to_toml());
    let addr = gate.smtp_addr();

    // A: in the middle of DATA. B: idle after EHLO.
    let mut a = SmtpConn::connect(addr, IO_TIMEOUT).expect("connect A");
    a.ehlo("a.example.test").expect("A EHLO");
    a.start_data(FROM, &["bob@example.org"]).expect("A DATA");
    let text = message("sigterm-a@durability.test", "in flight", "First half,\r\nsecond half.");
    let (first, second) = text.split_at(text.len() / 2);
    a.send_raw(first.as_bytes()).expect("A first half");
    let mut b = SmtpConn::connect(addr, IO_TIMEOUT).expect("connect B");
    b.ehlo("b.example.test").expect("B EHLO");

    let terminating = terminate_in_background(gate);

    // The idle session is told and closed.
    let told = b.reply().expect("B gets a reply to nothing");
    assert!(
        told.is(421) && told.text.starts_with("4.3.2"),
        "idle session got {told}"
    );
    assert!(b.closed_by_server(), "idle session was not closed after 421");

    // New connections are not served any more.
    let mut last = Probe::Refused;
    let refused = wait_until(Duration::from_secs(3), || {
        last = probe(addr, Duration::from_secs(2));
        matches!(last, Probe::Refused | Probe::ClosedWithoutGreeting)
    });
    assert!(refused, "a new connection after SIGTERM got {last:?}");
    assert!(!terminating.is_finished(), "exited before A finished its DATA");

    // The transaction in progress finishes: 250, and the message is kept.
    a.send_raw(second.as_bytes()).expect("A second half");
    a.send_raw(b".\r\n").expect("A end of data");
    let reply = a.reply().expect("A's reply to end of data");
    assert!(reply.is(250), "DATA in progress at SIGTERM got {reply}");
    let after = a.reply();
    assert!(
        matches!(&after, Ok(r) if r.is(421)) || after.is_err(),
        "after its transaction A got {after:?}"
    );

    let (mut gate, status, took) = terminating.join().expect("terminate thread");
    assert!(status.success(), "exit status after SIGTERM: {status:?}");
    assert!(
        took < SHUTDOWN_TIMEOUT + Duration::from_secs(1),
        "exit took {took:?} (shutdown_timeout {SHUTDOWN_TIMEOUT:?})"
    );
    eprintln!("SIGTERM with a session finishing DATA: exit 0 after {took:?}");

    // Delivered before the exit, or from the spool after a restart.
    gate.restart();
    sink.wait_for_messages(1, SOON);
    assert!(wait_until(SOON, || metric(&gate, "smtpgate_queue_depth") == 0.0));
    let counts = sink_counts(&sink);
    assert_eq!(counts.keys().collect::<Vec<_>>(), ["<sigterm-a@durability.test>"]);
}

#[test]
fn sigterm_exits_0_within_shutdown_timeout_when_a_client_stalls_in_data() {
    let sink = Sink::start();
    let gate = Gate::start(&GateConfig::relay_to(sink.addr()).to_toml());
    let mut stalled = SmtpConn::connect(gate.smtp_addr(), IO_TIMEOUT).expect("connect");
    stalled.ehlo("stalled.example.test").expect("EHLO");
    stalled.start_data(FROM, &["bob@example.org"]).expect("DATA");
    let text = message("stalled@durability.test", "never ends", "Half a message");
    stalled.send_raw(&text.as_bytes()[..text.len() / 2]).expect("half");

    let (mut gate, status, took) = terminate_in_background(gate).join().expect("terminate");
    assert!(status.success(), "exit status: {status:?}");
    assert!(
        took >= SHUTDOWN_TIMEOUT - Duration::from_millis(500),
        "exited after {took:?}: did not wait for the session in DATA"
    );
    assert!(
        took < SHUTDOWN_TIMEOUT + Duration::from_secs(2),
        "exit took {took:?} with shutdown_timeout {SHUTDOWN_TIMEOUT:?}"
    );
    eprintln!("SIGTERM with a stalled DATA: exit 0 after {took:?}");
    assert!(stalled.closed_by_server(), "the stalled session was not closed");

    // The half message was never acknowledged and never comes out.
    gate.restart();
    assert!(spool_is_empty(&gate), "the half message is in the spool");
    let mut conn = SmtpConn::connect(gate.smtp_addr(), IO_TIMEOUT).expect("connect");
    conn.ehlo("client.example.test").expect("EHLO");
    let marker = message("after-stall@durability.test", "marker", "Marker.");
    assert!(
        conn.send_message(FROM, &["bob@example.org"], &marker)
            .expect("send")
            .is(250)
    );
    conn.quit();
    sink.wait_for_messages(1, SOON);
    assert!(wait_until(SOON, || metric(&gate, "smtpgate_queue_depth") == 0.0));
    assert_eq!(
        sink.message_ids(),
        ["<after-stall@durability.test>"],
        "only the marker arrives"
    );
}

// ---------------------------------------------------------------------------------------------
// Nothing half-written.
// ---------------------------------------------------------------------------------------------

/// What part of a message a client sends before it goes away.
type Cut = fn(&str) -> String;

/// Starts a transaction for `id` and sends `cut(message)` of its DATA.
fn half_message(addr: SocketAddr, id: &str, cut: impl Fn(&str) -> String) -> SmtpConn {
    let mut conn = SmtpConn::connect(addr, IO_TIMEOUT).expect("connect");
    conn.ehlo("half.example.test").expect("EHLO");
    conn.start_data(FROM, &["bob@example.org"]).expect("DATA");
    let text = message(id, "cut short", "Line one.\r\nLine two.\r\nLine three.");
    conn.send_raw(cut(&text).as_bytes()).expect("partial data");
    conn
}

#[test]
fn a_message_cut_off_in_data_is_never_delivered() {
    let sink = Sink::start();
    let mut gate = Gate::start(&GateConfig::relay_to(sink.addr()).to_toml());
    let addr = gate.smtp_addr();

    // Clients that go away in the middle of DATA, at the nastiest places: mid-line, right
    // after a line's CRLF, after CRLF and the final dot, after CRLF, dot and CR.
    let cuts: [(&str, Cut); 4] = [
        ("half-midline@durability.test", |t| t[..t.len() / 2].to_string()),
        ("half-eol@durability.test", |t| t.to_string()),
        ("half-dot@durability.test", |t| format!("{t}.")),
        ("half-dotcr@durability.test", |t| format!("{t}.\r")),
    ];
    for (id, cut) in cuts {
        half_message(addr, id, cut).abort();
    }
    // A complete message behind them, so there is something to wait for.
    let mut conn = SmtpConn::connect(addr, IO_TIMEOUT).expect("connect");
    conn.ehlo("client.example.test").expect("EHLO");
    let marker = message("marker-1@durability.test", "marker", "Marker one.");
    assert!(
        conn.send_message(FROM, &["bob@example.org"], &marker)
            .expect("send")
            .is(250)
    );
    conn.quit();
    sink.wait_for_messages(1, SOON);
    assert!(
        wait_until(SOON, || metric(&gate, "smtpgate_sessions_active") == 0.0),
        "sessions of the cut-off clients are still open"
    );
    assert_eq!(
        metric(&gate, "smtpgate_messages_received_total"),
        1.0,
        "only the marker was accepted"
    );

    // A crash while another client is in the middle of DATA.
    let in_flight = half_message(addr, "half-crash@durability.test", |t| t[..t.len() - 5].to_string());
    gate.kill9();
    drop(in_flight);
    gate.restart();
    let addr = gate.smtp_addr();
    let mut conn = SmtpConn::connect(addr, IO_TIMEOUT).expect("connect");
    conn.ehlo("client.example.test").expect("EHLO");
    let marker = message("marker-2@durability.test", "marker", "Marker two.");
    assert!(
        conn.send_message(FROM, &["bob@example.org"], &marker)
            .expect("send")
            .is(250)
    );
    conn.quit();
    sink.wait_for_messages(2, SOON);
    assert!(wait_until(SOON, || metric(&gate, "smtpgate_queue_depth") == 0.0));
    assert!(
        wait_until(SOON, || spool_is_empty(&gate)),
        "the spool holds a message after the queue drained"
    );

    let ids: BTreeSet<String> = sink.message_ids().into_iter().collect();
    let half: Vec<&String> = ids.iter().filter(|id| id.contains("half-")).collect();
    assert!(half.is_empty(), "cut-off messages were delivered: {half:?}");
    assert!(ids.contains("<marker-1@durability.test>"));
    assert!(ids.contains("<marker-2@durability.test>"));
}

// ---------------------------------------------------------------------------------------------
// The spool: message content can never become a record.
// ---------------------------------------------------------------------------------------------

/// The newest segment file of a spool.
fn newest_segment(spool: &std::path::Path) -> std::path::PathBuf {
    let mut segs: Vec<_> = std::fs::read_dir(spool)
        .expect("read spool")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("seg-"))
        })
        .collect();
    segs.sort();
    segs.pop().expect("a segment")
}

/// SMTP transparency over raw bytes.
fn dot_stuff_bytes(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 16);
    let mut line_start = true;
    for (i, &b) in message.iter().enumerate() {
        if line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        line_start = b == b'\n' && i > 0 && message[i - 1] == b'\r';
    }
    out
}

/// A whole message record made from one a gate wrote to its spool (for a message to
/// `anyone@elsewhere.example` with `Message-ID: <forged@attacker.example>`), with no bare CR or
/// LF in its binary fields, so that it passes through DATA byte for byte.
fn record_written_by_a_gate() -> (String, Vec<u8>) {
    let sink = Sink::start();
    let gate = Gate::start(&GateConfig::relay_to(sink.addr()).to_toml());
    let mut conn = SmtpConn::connect(gate.smtp_addr(), IO_TIMEOUT).expect("connect");
    conn.ehlo("attacker.example").expect("EHLO");
    let id = "forged@attacker.example";
    let text = message(id, "forged", "Whatever the attacker wants delivered.");
    let reply = conn
        .send_message("forged@attacker.example", &["anyone@elsewhere.example"], &text)
        .expect("send");
    assert!(reply.is(250), "{reply}");
    let data = std::fs::read(newest_segment(gate.spool_dir())).expect("read segment");
    let walked = smtpgate::spool::walk(&data);
    // The record of this message (deliveries append Done records behind it).
    let (mut env, states, body) = walked
        .records
        .into_iter()
        .find_map(|(_, rec)| match rec {
            smtpgate::spool::record::Record::Message { env, states, body, .. }
                if body.windows(id.len()).any(|w| w == id.as_bytes()) =>
            {
                Some((env, states, body.to_vec()))
            }
            _ => None,
        })
        .expect("the message's record");
    // The gate's clock and queue ids can hold bytes DATA would turn into line endings: the
    // attacker picks an id and a time without any, and seals the record again (a CRC is no secret).
    env.received_at = 1_700_000_000;
    for n in 0..10_000u64 {
        env.id = smtpgate::envelope::QueueId(0x4141_4141_0000 + n);
        let mut bytes = Vec::new();
        smtpgate::spool::record::encode_message(&env, &states, &body, None, &mut bytes);
        if only_crlf_line_endings(&bytes) {
            return (format!("<{id}>"), bytes);
        }
    }
    panic!("every record had a bare CR or LF in its binary fields");
}

/// Whether every CR in `bytes` is followed by LF and every LF preceded by CR.
fn only_crlf_line_endings(bytes: &[u8]) -> bool {
    bytes.iter().enumerate().all(|(i, &b)| match b {
        b'\r' => bytes.get(i + 1) == Some(&b'\n'),
        b'\n' => i > 0 && bytes[i - 1] == b'\r',
        _ => true,
    })
}

#[test]
fn a_record_carried_in_a_body_is_never_replayed_after_a_torn_write() {
    let (forged_id, record) = record_written_by_a_gate();
    let sink = Sink::start();
    let mut gate = Gate::start(&GateConfig::relay_to(sink.addr()).retry(&["1h"]).to_toml());

    // The attacker's message: headers, the record, then padding.
    let mut body = message("carrier@attacker.example", "carrier", "Here comes a record:").into_bytes();
    body.extend_from_slice(&record);
    body.extend_from_slice(b"\r\n");
    let padding_at = body.len();
    body.extend_from_slice(&b"padding padding padding padding padding padding\r\n".repeat(5000));
    let mut conn = SmtpConn::connect(gate.smtp_addr(), IO_TIMEOUT).expect("connect");
    conn.ehlo("attacker.example").expect("EHLO");
    conn.start_data(FROM, &["bob@example.org"]).expect("DATA");
    conn.send_raw(&dot_stuff_bytes(&body)).expect("body");
    conn.send_raw(b".\r\n").expect("end of data");
    let reply = conn.reply().expect("reply to end of data");
    // The first defence: a record's binary fields hold NUL octets, and a message with NULs is
    // refused (`nul_bytes = "reject"`, the default).
    assert!(reply.is(550) && reply.to_string().contains("5.6.0"), "{reply}");
    conn.quit();
    gate.kill9();

    // The second, tested on its own: had the carrier been taken (as a listener that let NULs
    // through would), the spool holds it exactly as the gate stores a message.
    let mut stored = b"Received: from attacker.example by gate.example.test\r\n".to_vec();
    stored.extend_from_slice(&body);
    let spool_dir = gate.spool_dir().to_path_buf();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let (spool, _) = smtpgate::spool::Spool::open(&spool_dir, 64 << 20).expect("open spool");
        let env = smtpgate::envelope::Envelope {
            id: smtpgate::envelope::QueueId(0x7777),
            sender: smtpgate::envelope::Sender::parse(FROM).unwrap(),
            recipients: vec![smtpgate::envelope::Recipient::parse("bob@example.org").unwrap()],
            received_at: 1_700_000_000,
            eight_bit: true,
            smtputf8: false,
            ret: None,
            envid: None,
            pool: None,
            scan: Vec::new(),
            stream: None,
            route: None,
        };
        spool.store(&env, &stored).await.expect("store the carrier");
        spool.close().await;
    });
    let padding_at = padding_at + (stored.len() - body.len());
    let body = stored;

    // A crash while that record was being written: the segment ends inside the padding.
    let segment = newest_segment(gate.spool_dir());
    let data = std::fs::read(&segment).expect("read segment");
    let walked = smtpgate::spool::walk(&data);
    let carrier = walked.records.iter().find_map(|(at, rec)| match rec {
        smtpgate::spool::record::Record::Message { body, body_offset, .. }
            if body.windows(record.len()).any(|w| w == record.as_slice()) =>
        {
            Some((*at, at + body_offset, body.len()))
        }
        _ => None,
    });
    let (record_at, body_at, body_len) = carrier.expect("the carrier's body holds the record byte for byte");
    // The stored body starts with the Received: header the gate added.
    let cut = body_at + body_len - (body.len() - padding_at) + 1000;
    assert!(cut < body_at + body_len);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .expect("open segment")
        .set_len(cut as u64)
        .expect("cut segment");

    gate.restart();
    let mut conn = SmtpConn::connect(gate.smtp_addr(), IO_TIMEOUT).expect("connect");
    conn.ehlo("client.example.test").expect("EHLO");
    let marker = message("marker@durability.test", "marker", "Marker.");
    assert!(
        conn.send_message(FROM, &["bob@example.org"], &marker)
            .expect("send")
            .is(250)
    );
    conn.quit();
    assert!(
        wait_until(SOON, || sink
            .message_ids()
            .contains(&"<marker@durability.test>".to_string())),
        "the marker never arrived"
    );
    assert!(wait_until(SOON, || metric(&gate, "smtpgate_queue_depth") == 0.0));
    let ids = sink.message_ids();
    assert!(
        !ids.contains(&forged_id),
        "the record carried in a body was delivered: {ids:?}"
    );
    assert_eq!(
        metric(&gate, "smtpgate_spool_damaged_total"),
        0.0,
        "a torn tail is not damage"
    );
    // Cut at the start of the torn record (the segment, with nothing live left, is then reaped).
    let torn = wait_until(SOON, || {
        gate.stderr_lines()
            .iter()
            .any(|l| l.contains("torn tail") && l.contains(&format!("offset={record_at} ")))
    });
    assert!(
        torn,
        "the restart did not cut the torn tail at {record_at}: {:?}",
        gate.stderr_lines()
    );
}

#[test]
fn sigterm_under_load_closes_the_spool_cleanly_and_loses_nothing() {
    let sink = Sink::start();
    let mut gate = Gate::start(&GateConfig::relay_to(sink.addr()).to_toml());
    let addr = gate.smtp_addr();
    let acked = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let next = Arc::new(AtomicUsize::new(0));
    let senders: Vec<_> = (0..4)
        .map(|w| {
            let (acked, stop, next) = (acked.clone(), stop.clone(), next.clone());
            thread::spawn(move || {
                let Ok(mut conn) = SmtpConn::connect(addr, IO_TIMEOUT) else {
                    return;
                };
                if conn.ehlo(&format!("load-{w}.example.test")).is_err() {
                    return;
                }
                let filler = "x".repeat(70) + "\r\n";
                while !stop.load(Ordering::SeqCst) {
                    let n = next.fetch_add(1, Ordering::SeqCst);
                    let id = format!("term-{n}@durability.test");
                    let text = message(&id, "under load", &filler.repeat(500));
                    match conn.send_message(FROM, &["bob@example.org"], &text) {
                        Ok(r) if r.is(250) => acked.lock().unwrap().push(format!("<{id}>")),
                        _ => return,
                    }
                }
            })
        })
        .collect();
    assert!(
        wait_until(Duration::from_secs(30), || acked.lock().unwrap().len() >= 100),
        "the load never got going"
    );
    let status = gate.terminate();
    stop.store(true, Ordering::SeqCst);
    for s in senders {
        s.join().expect("sender");
    }
    assert!(status.success(), "exit status after SIGTERM: {status:?}");
    assert!(
        wait_until(SOON, || gate
            .stderr_lines()
            .iter()
            .any(|l| l.contains("spool closed cleanly"))),
        "no \"spool closed cleanly\" before the exit"
    );
    let ends = smtpgate::spool::segment_ends(gate.spool_dir()).expect("segments");
    assert!(
        ends.iter().all(|(_, end)| *end == smtpgate::spool::End::Clean),
        "an ordinary stop left something to repair: {ends:?}"
    );

    gate.restart();
    let acked: Vec<String> = acked.lock().unwrap().clone();
    let arrived = wait_until(DRAIN_DEADLINE, || {
        let ids: BTreeSet<String> = sink.message_ids().into_iter().collect();
        acked.iter().all(|id| ids.contains(id))
    });
    assert!(arrived, "acknowledged messages missing after SIGTERM and restart");
    let repairs: Vec<String> = gate
        .stderr_lines()
        .into_iter()
        .filter(|l| l.contains("torn tail") || l.contains("damaged"))
        .collect();
    assert!(
        repairs.is_empty(),
        "the start after SIGTERM repaired the spool: {repairs:?}"
    );
    eprintln!(
        "SIGTERM under load: {} acknowledged, all delivered, spool clean",
        acked.len()
    );
}

// ---------------------------------------------------------------------------------------------
// A bounce that cannot be spooled is tried again, never dropped.
// ---------------------------------------------------------------------------------------------

/// Moves every spool segment out of the spool directory, or back. The gate keeps writing through
/// its open descriptors; what it opens by name (a queued message's record, read again for its
/// bounce) cannot be read meanwhile: the fault a failing disk gives.
fn move_segments(from: &std::path::Path, to: &std::path::Path) -> usize {
    let mut moved = 0;
    for entry in std::fs::read_dir(from).expect("read dir").map_while(Result::ok) {
        if entry.file_name().to_string_lossy().starts_with("seg-") {
            std::fs::rename(entry.path(), to.join(entry.file_name())).expect("rename segment");
            moved += 1;
        }
    }
    moved
}

#[test]
fn a_bounce_that_cannot_be_spooled_is_tried_again_until_it_is() {
    let upstream = Upstream::start();
    let toml = GateConfig::relay_to(upstream.addr())
        .queue("max_age = \"3s\"")
        .to_toml();
    let gate = Gate::start(&toml);
    let rcpt = "tempfail-rcpt@example.org";
    let mut conn = SmtpConn::connect(gate.smtp_addr(), IO_TIMEOUT).expect("connect");
    conn.ehlo("client.example.test").expect("EHLO");
    let text = message("unbounceable@example.test", "bounce me", "never accepted");
    let reply = conn.send_message(FROM, &[rcpt], &text).expect("send");
    assert!(reply.is(250), "{reply}");
    conn.quit();
    assert!(
        wait_until(SOON, || upstream.attempts_for(rcpt) >= 1),
        "no first attempt"
    );

    // The message's record cannot be read: the attempt at its expiry fails it, and its bounce
    // (which returns the message) cannot be built.
    let aside = gate.dir().join("segments-aside");
    std::fs::create_dir(&aside).expect("mkdir");
    assert!(move_segments(gate.spool_dir(), &aside) >= 1, "no segment to move");
    let tried = |needle: &str| gate.stderr_lines().iter().any(|l| l.contains(needle));
    assert!(
        wait_until(SOON, || tried("cannot read message for its bounce")),
        "the bounce was never attempted"
    );
    assert!(
        wait_until(SOON, || tried("bounce still not spooled")),
        "the bounce was not tried again"
    );
    assert!(
        upstream.messages().iter().all(|m| !m.mail_from.is_empty()),
        "a bounce went out without the message it returns"
    );
    assert_eq!(
        metric(&gate, "smtpgate_queue_depth"),
        1.0,
        "the failed message left the queue"
    );

    // Readable again: the next try spools the bounce, it goes to the sender, and the message
    // is finished.
    move_segments(&aside, gate.spool_dir());
    let bounces = |u: &Upstream| {
        u.messages()
            .into_iter()
            .filter(|m| m.mail_from.is_empty())
            .collect::<Vec<_>>()
    };
    assert!(
        wait_until(SOON, || !bounces(&upstream).is_empty()),
        "the bounce never arrived"
    );
    let bounce = &bounces(&upstream)[0];
    assert_eq!(bounce.rcpt_addresses(), [FROM]);
    let dsn = bounce.text();
    assert!(dsn.contains("Action: failed") && dsn.contains(rcpt), "{dsn}");
    assert!(
        dsn.contains("unbounceable@example.test"),
        "the bounce does not return the message: {dsn}"
    );
    assert!(
        wait_until(SOON, || metric(&gate, "smtpgate_queue_depth") == 0.0),
        "the failed message stayed queued after its bounce: depth {}",
        metric(&gate, "smtpgate_queue_depth")
    );
    assert_eq!(bounces(&upstream).len(), 1, "more than one bounce");
}
