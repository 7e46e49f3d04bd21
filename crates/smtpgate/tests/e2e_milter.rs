//! `kind = "milter"` with a real milter: OpenDKIM from Debian, started by the test in the
//! foreground on a free loopback port with a key and configuration the test writes, signing
//! for `example.test`; the signature the upstream receives is checked with dkimpy. A scripted
//! fake milter on a Unix socket shows a milter's own reject reply reaching the client.

mod support;

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::Duration;

use support::{Gate, GateConfig, SOON, Upstream, header_values, message, smtplib_send, wait_until};
use tempfile::TempDir;

const OPENDKIM: &str = "/usr/sbin/opendkim";
const OPENDKIM_START: Duration = Duration::from_secs(30);

fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

/// OpenDKIM signing mail from `example.test` with selector `s1`; stopped on drop.
struct OpenDkim {
    dir: TempDir,
    addr: SocketAddr,
    child: Child,
}

impl OpenDkim {
    fn start() -> OpenDkim {
        let dir = tempfile::tempdir().expect("tempdir");
        generate_key(dir.path());
        let port = free_port();
        let conf = dir.path().join("opendkim.conf");
        let mut text = format!(
            "Syslog no\nSocket inet:{port}@127.0.0.1\nMode s\nDomain example.test\nSelector s1\n\
             KeyFile {}\nCanonicalization relaxed/relaxed\nPidFile {}\nRequireSafeKeys no\n\
             InternalHosts 127.0.0.1\n",
            dir.path().join("s1.private").display(),
            dir.path().join("opendkim.pid").display(),
        );
        if rustix::process::geteuid().is_root() {
            text.push_str("UserID root\n");
        }
        fs::write(&conf, text).expect("opendkim.conf");
        let log = fs::File::create(dir.path().join("opendkim.out")).expect("log");
        let child = Command::new(OPENDKIM)
            .arg("-f")
            .arg("-x")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {OPENDKIM}: {e} (apt-get install opendkim)"));
        let mut dkim = OpenDkim {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            dir,
            child,
        };
        let up = wait_until(OPENDKIM_START, || {
            matches!(dkim.child.try_wait(), Ok(None)) && TcpStream::connect(dkim.addr).is_ok()
        });
        assert!(up, "opendkim did not listen within {OPENDKIM_START:?}:\n{}", dkim.log());
        dkim
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("opendkim.out")).unwrap_or_default()
    }

    /// The `s1._domainkey.example.test` TXT record, joined from opendkim-genkey's zone file.
    fn txt_record(&self) -> String {
        let zone = fs::read_to_string(self.dir.path().join("s1.txt")).expect("s1.txt");
        zone.split('"').skip(1).step_by(2).collect()
    }
}

impl Drop for OpenDkim {
    fn drop(&mut self) {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).expect("pid");
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        if !wait_until(Duration::from_secs(10), || matches!(self.child.try_wait(), Ok(Some(_)))) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// `s1.private` and `s1.txt` in `dir`: with opendkim-genkey, else openssl and a zone line of
/// our own.
fn generate_key(dir: &Path) {
    let genkey = Command::new("/usr/sbin/opendkim-genkey")
        .args(["-b", "2048", "-d", "example.test", "-s", "s1", "-D"])
        .arg(dir)
        .status();
    if genkey.is_ok_and(|s| s.success()) {
        return;
    }
    let private = dir.join("s1.private");
    let ok = Command::new("openssl")
        .args(["genrsa", "-out"])
        .arg(&private)
        .arg("2048")
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "neither opendkim-genkey nor openssl could make a key");
    let der = Command::new("openssl")
        .args(["rsa", "-pubout", "-outform", "DER", "-in"])
        .arg(&private)
        .output()
        .expect("openssl rsa -pubout");
    let p = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &der.stdout);
    fs::write(
        dir.join("s1.txt"),
        format!("s1._domainkey IN TXT ( \"v=DKIM1; k=rsa; p={p}\" )\n"),
    )
    .expect("s1.txt");
}

/// dkimpy's verdict on each DKIM signature of `message`, keys looked up in `records`.
fn dkimpy_verify(dir: &Path, message: &str, records: &[(&str, String)]) -> Vec<bool> {
    let path = dir.join("signed.eml");
    fs::write(&path, message).expect("signed.eml");
    let table: String = records.iter().map(|(n, v)| format!("{n:?}: {v:?}.encode(),")).collect();
    let script = format!(
        "import sys, dkim\n\
         records = {{{table}}}\n\
         def dnsfunc(name, timeout=5):\n\
         \x20   name = name.decode() if isinstance(name, bytes) else name\n\
         \x20   return records.get(name.rstrip('.'))\n\
         d = dkim.DKIM(open(sys.argv[1], 'rb').read())\n\
         sigs = [h for h in d.headers if h[0].lower() == b'dkim-signature']\n\
         for i in range(len(sigs)):\n\
         \x20   try:\n\
         \x20       print('pass' if d.verify(idx=i, dnsfunc=dnsfunc) else 'fail')\n\
         \x20   except dkim.ValidationError as e:\n\
         \x20       print('fail', e)\n"
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(&script)
        .arg(&path)
        .output()
        .expect("python3 (dkimpy: python3 -m pip install dkimpy)");
    assert!(out.status.success(), "dkimpy: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l == "pass")
        .collect()
}

fn gate_with_milter(upstream: &Upstream, options: &str) -> Gate {
    let config = GateConfig::relay_to(upstream.addr())
        .top(&format!(
            "[[filter]]\nname = \"milter\"\nkind = \"milter\"\ntimeout = \"20s\"\n{options}"
        ))
        .listener("filters = [\"milter\"]");
    Gate::start(&config.to_toml())
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

fn tag(value: &str, name: &str) -> Option<String> {
    value
        .split(';')
        .filter_map(|t| t.split_once('='))
        .find(|(k, _)| k.trim() == name)
        .map(|(_, v)| v.trim().to_string())
}

#[test]
fn opendkim_signs_what_passes_the_gate() {
    let dkim = OpenDkim::start();
    let upstream = Upstream::start();
    let gate = gate_with_milter(&upstream, &format!("address = \"{}\"", dkim.addr));

    let text = message("signed@example.test", "hello", "signed by opendkim\r\nsecond line");
    let sent = smtplib_send(gate.smtp_addr(), "alice@example.test", &["bob@example.org"], &text);
    assert!(
        sent.reply("END-OF-DATA").starts_with("250 "),
        "{sent:?}\n{}",
        dkim.log()
    );
    let got = arrived(&upstream, "signed@example.test");
    let signatures = header_values(&got, "DKIM-Signature");
    assert_eq!(signatures.len(), 1, "{got}\n{}", dkim.log());
    assert_eq!(
        tag(&signatures[0], "d").as_deref(),
        Some("example.test"),
        "{}",
        signatures[0]
    );
    assert_eq!(tag(&signatures[0], "s").as_deref(), Some("s1"));
    assert_eq!(tag(&signatures[0], "c").as_deref(), Some("relaxed/relaxed"));

    if Command::new("python3")
        .args(["-c", "import dkim"])
        .status()
        .is_ok_and(|s| s.success())
    {
        let records = [("s1._domainkey.example.test", dkim.txt_record())];
        assert_eq!(dkimpy_verify(dkim.dir.path(), &got, &records), [true], "{got}");
        let tampered = got.replace("second line", "third line");
        assert_eq!(dkimpy_verify(dkim.dir.path(), &tampered, &records), [false]);
    } else {
        eprintln!("dkimpy not installed: signature not verified (python3 -m pip install dkimpy)");
    }

    // Mail from a domain OpenDKIM does not sign for passes unchanged.
    let other = message("other@example.org", "hello", "not ours").replace("alice@example.test", "carol@example.org");
    let sent = smtplib_send(gate.smtp_addr(), "carol@example.org", &["bob@example.org"], &other);
    assert!(sent.reply("END-OF-DATA").starts_with("250 "), "{sent:?}");
    let got = arrived(&upstream, "other@example.org");
    assert!(header_values(&got, "DKIM-Signature").is_empty(), "{got}");
}

#[test]
fn opendkim_gone_fails_per_on_error() {
    let address = OpenDkim::start().addr;
    let upstream = Upstream::start();
    let gate = gate_with_milter(&upstream, &format!("address = \"{address}\"\non_error = \"tempfail\""));
    let text = message("gone@example.test", "hello", "x");
    let sent = smtplib_send(gate.smtp_addr(), "alice@example.test", &["bob@example.org"], &text);
    assert!(sent.reply("END-OF-DATA").starts_with("451 4.7.1"), "{sent:?}");
}

/// A milter on a Unix socket that answers every step with continue and the end of the message
/// with `reply` (an `SMFIR_REPLYCODE`), for as many connections as come.
fn fake_rejecting_milter(path: PathBuf, reply: &'static str) {
    let listener = UnixListener::bind(&path).expect("bind fake milter");
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { return };
            thread::spawn(move || {
                let packet = |s: &mut std::os::unix::net::UnixStream, cmd: u8, data: &[u8]| {
                    let mut p = ((data.len() + 1) as u32).to_be_bytes().to_vec();
                    p.push(cmd);
                    p.extend_from_slice(data);
                    s.write_all(&p)
                };
                loop {
                    let mut len = [0u8; 4];
                    if s.read_exact(&mut len).is_err() {
                        return;
                    }
                    let mut body = vec![0; u32::from_be_bytes(len) as usize];
                    if s.read_exact(&mut body).is_err() {
                        return;
                    }
                    let sent = match body[0] {
                        b'O' => packet(&mut s, b'O', &[6u32, 0, 0].map(u32::to_be_bytes).concat()),
                        b'D' => Ok(()),
                        b'Q' => return,
                        b'E' => packet(&mut s, b'y', format!("{reply}\0").as_bytes()),
                        _ => packet(&mut s, b'c', b""),
                    };
                    if sent.is_err() {
                        return;
                    }
                }
            });
        }
    });
}

#[test]
fn a_milters_own_reject_reply_reaches_the_client() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("milter.sock");
    fake_rejecting_milter(socket.clone(), "550 5.7.1 milter says no");
    let upstream = Upstream::start();
    let gate = gate_with_milter(&upstream, &format!("socket = {socket:?}"));
    let text = message("refused@example.test", "hello", "x");
    let sent = smtplib_send(gate.smtp_addr(), "alice@example.test", &["bob@example.org"], &text);
    assert_eq!(sent.reply("END-OF-DATA"), "550 5.7.1 milter says no");
    // Refused before the queue: nothing was accepted, so nothing can arrive later.
    assert!(
        upstream
            .messages()
            .iter()
            .all(|m| !m.text().contains("refused@example.test"))
    );
}
