//! The conversation against a scripted fake milter on an in-memory stream.

use std::time::Duration;

use tokio::io::DuplexStream;

use super::protocol::read_packet;
use super::*;
use crate::filter::SessionInfo;

const MESSAGE: &[u8] = b"From: a@example.test\r\nSubject: hi\r\n\r\nbody\r\n";

/// What the fake milter negotiates and answers.
#[derive(Debug, Clone, Default)]
struct Script {
    actions: u32,
    steps: u32,
    /// An answer other than continue to the first command with this code.
    answer_at: Option<(u8, u8, Vec<u8>)>,
    /// What it sends after end of message (the final answer included).
    eom: Vec<(u8, Vec<u8>)>,
}

fn no_reply_flag(cmd: u8) -> u32 {
    match cmd {
        b'C' => step::NR_CONN,
        b'H' => step::NR_HELO,
        b'M' => step::NR_MAIL,
        b'R' => step::NR_RCPT,
        b'T' => step::NR_DATA,
        b'L' => step::NR_HDR,
        b'N' => step::NR_EOH,
        b'B' => step::NR_BODY,
        _ => 0,
    }
}

async fn send(stream: &mut DuplexStream, cmd: u8, data: &[u8]) {
    use tokio::io::AsyncWriteExt;
    let mut packet = ((data.len() + 1) as u32).to_be_bytes().to_vec();
    packet.push(cmd);
    packet.extend_from_slice(data);
    stream.write_all(&packet).await.unwrap();
}

/// Plays `script`; returns every packet it got after the negotiation, until QUIT or close.
async fn fake_milter(mut stream: DuplexStream, script: Script) -> Vec<(u8, Vec<u8>)> {
    let (cmd, data) = read_packet(&mut stream).await.unwrap();
    assert_eq!((cmd, &data[..4]), (b'O', &6u32.to_be_bytes()[..]));
    let optneg = [6, script.actions, script.steps].map(u32::to_be_bytes).concat();
    send(&mut stream, b'O', &optneg).await;
    let mut got = Vec::new();
    let mut answer_at = script.answer_at.clone();
    while let Ok((cmd, data)) = read_packet(&mut stream).await {
        got.push((cmd, data));
        match cmd {
            b'Q' => break,
            b'D' => {}
            b'E' => {
                for (c, d) in &script.eom {
                    send(&mut stream, *c, d).await;
                }
            }
            _ if script.steps & no_reply_flag(cmd) != 0 => {}
            _ => match answer_at.take_if(|(at, ..)| *at == cmd) {
                Some((_, c, d)) => send(&mut stream, c, &d).await,
                None => send(&mut stream, b'c', b"").await,
            },
        }
    }
    got
}

fn session() -> SessionInfo {
    SessionInfo {
        client: Some("192.0.2.7".parse().unwrap()),
        helo: Some("client.example.test".into()),
        user: Some("alice".into()),
        listener: "inbound".into(),
        tls: false,
    }
}

/// Runs the conversation for [`MESSAGE`] (or `message`) against `script`.
async fn run_with(script: Script, message: &[u8]) -> (Result<Verdict, FilterError>, Vec<(u8, Vec<u8>)>) {
    let (client, server) = tokio::io::duplex(1 << 20);
    let milter = tokio::spawn(fake_milter(server, script));
    let s = session();
    let rcpts = vec![
        crate::envelope::Address::parse("bob@example.org").unwrap(),
        crate::envelope::Address::parse("carol@example.org").unwrap(),
    ];
    let m = MessageInfo {
        session: &s,
        sender: &crate::envelope::Sender::parse("alice@example.test").unwrap(),
        recipients: &rcpts,
        message,
        tags: &[],
    };
    let macros = vec![("j".to_string(), "gate.example.test".to_string())];
    let verdict = tokio::time::timeout(Duration::from_secs(5), converse(client, &m, &macros))
        .await
        .expect("the conversation hung (waiting for a reply the milter said it would not send?)");
    (verdict, milter.await.unwrap())
}

async fn run(script: Script) -> (Result<Verdict, FilterError>, Vec<(u8, Vec<u8>)>) {
    run_with(script, MESSAGE).await
}

fn commands(got: &[(u8, Vec<u8>)]) -> String {
    got.iter().map(|(c, _)| *c as char).collect()
}

fn accept_at_eom(mut before: Vec<(u8, Vec<u8>)>) -> Vec<(u8, Vec<u8>)> {
    before.push((b'a', Vec::new()));
    before
}

#[tokio::test]
async fn the_whole_conversation_in_order_then_accept() {
    let script = Script {
        eom: accept_at_eom(Vec::new()),
        ..Script::default()
    };
    let (verdict, got) = run(script).await;
    assert_eq!(verdict, Ok(Verdict::accept()));
    assert_eq!(commands(&got), "DCHDMDRDRTLLNBEQ");
    let data = |i: usize| got[i].1.clone();
    assert!(data(0).windows(2).any(|w| w == b"j\0"), "configured macros at connect");
    assert_eq!(data(1), b"[192.0.2.7]\x004\x00\x00192.0.2.7\0");
    assert_eq!(data(2), b"client.example.test\0");
    assert_eq!(data(3), b"M{mail_addr}\0alice@example.test\0{auth_authen}\0alice\0");
    assert_eq!(data(4), b"<alice@example.test>\0");
    assert_eq!(data(6), b"<bob@example.org>\0");
    // Without SMFIP_HDR_LEADSPC the space after the colon is not sent.
    assert_eq!(data(10), b"From\0a@example.test\0");
    assert_eq!(data(13), b"body\r\n");
}

#[tokio::test]
async fn reject_and_tempfail_and_discard_at_end_of_message() {
    for (code, expected) in [
        (b'r', Verdict::reject(Reply::milter_rejected())),
        (b't', Verdict::tempfail(Reply::milter_deferred())),
        (
            b'd',
            Verdict {
                action: Action::Discard,
                modifications: Vec::new(),
            },
        ),
    ] {
        let script = Script {
            eom: vec![(code, Vec::new())],
            ..Script::default()
        };
        assert_eq!(run(script).await.0, Ok(expected));
    }
}

#[tokio::test]
async fn an_early_refusal_ends_the_replay() {
    let script = Script {
        answer_at: Some((b'C', b't', Vec::new())),
        ..Script::default()
    };
    let (verdict, got) = run(script).await;
    assert_eq!(verdict, Ok(Verdict::tempfail(Reply::milter_deferred())));
    assert_eq!(commands(&got), "DCQ");

    let script = Script {
        answer_at: Some((b'R', b'y', b"550 5.1.1 no such user\0".to_vec())),
        ..Script::default()
    };
    let (verdict, got) = run(script).await;
    let reply = Reply::from_milter(550, "5.1.1".into(), "no such user".into(), Vec::new());
    assert_eq!(verdict, Ok(Verdict::reject(reply)));
    assert_eq!(commands(&got), "DCHDMDRQ");

    let script = Script {
        answer_at: Some((b'M', b'a', Vec::new())),
        ..Script::default()
    };
    assert_eq!(run(script).await.0, Ok(Verdict::accept()));
}

#[tokio::test]
async fn added_headers_keep_their_leading_space_when_negotiated() {
    let script = Script {
        actions: action::ADDHDRS,
        steps: step::HDR_LEADSPC,
        eom: accept_at_eom(vec![(b'h', b"X-Milter\0 yes\0".to_vec()), (b'p', Vec::new())]),
        ..Script::default()
    };
    let (verdict, got) = run(script).await;
    let expected = Verdict::accept().with(Modification::AddHeader("X-Milter".into(), "yes".into()));
    assert_eq!(verdict, Ok(expected));
    assert!(got.contains(&(b'L', b"Subject\0 hi\0".to_vec())));
}

#[tokio::test]
async fn quarantine_then_accept_is_a_quarantine() {
    let script = Script {
        actions: action::QUARANTINE,
        eom: vec![(b'q', b"looks odd\0".to_vec()), (b'c', Vec::new())],
        ..Script::default()
    };
    let verdict = run(script).await.0.unwrap();
    assert_eq!(
        verdict.action,
        Action::Quarantine("quarantined by milter: looks odd".into())
    );
}

#[tokio::test]
async fn header_changes_body_and_recipients() {
    let script = Script {
        actions: action::CHGHDRS | action::CHGBODY | action::ADDRCPT | action::DELRCPT,
        eom: accept_at_eom(vec![
            (b'm', b"\0\0\0\x01Subject\0[tagged] hi\0".to_vec()),
            (b'b', b"new body\n".to_vec()),
            (b'+', b"<dave@example.org>\0".to_vec()),
            (b'-', b"<bob@example.org>\0".to_vec()),
        ]),
        ..Script::default()
    };
    let verdict = run(script).await.0.unwrap();
    let message = b"From: a@example.test\r\nSubject: [tagged] hi\r\n\r\nnew body\r\n".to_vec();
    assert_eq!(
        verdict.modifications,
        [
            Modification::ReplaceMessage(message),
            Modification::AddRecipient("dave@example.org".into()),
            Modification::RemoveRecipient("bob@example.org".into()),
        ]
    );
}

#[tokio::test]
async fn steps_and_replies_the_milter_declined_are_left_out() {
    // Every reply off: a client that waited would hang (the run has a deadline).
    let no_replies = step::NR_CONN | step::NR_HELO | step::NR_MAIL | step::NR_RCPT | step::NR_DATA;
    let script = Script {
        steps: no_replies | step::NR_HDR | step::NR_EOH | step::NR_BODY | step::NOHELO | step::NODATA,
        eom: accept_at_eom(Vec::new()),
        ..Script::default()
    };
    let (verdict, got) = run(script).await;
    assert_eq!(verdict, Ok(Verdict::accept()));
    assert_eq!(commands(&got), "DCDMDRDRLLNBEQ");

    let skip_all = step::NOCONNECT | step::NOMAIL | step::NORCPT | step::NOHDRS | step::NOEOH | step::NOBODY;
    let script = Script {
        steps: skip_all | step::NOHELO | step::NODATA,
        eom: accept_at_eom(Vec::new()),
        ..Script::default()
    };
    let (_, got) = run(script).await;
    assert_eq!(commands(&got), "EQ");
}

#[tokio::test]
async fn the_body_goes_in_chunks_and_skip_stops_it() {
    let mut big = b"Subject: big\r\n\r\n".to_vec();
    big.extend(std::iter::repeat_n(b'x', 150_000));
    let (_, got) = run_with(
        Script {
            eom: accept_at_eom(Vec::new()),
            ..Script::default()
        },
        &big,
    )
    .await;
    let chunks: Vec<usize> = got.iter().filter(|(c, _)| *c == b'B').map(|(_, d)| d.len()).collect();
    assert_eq!(chunks, [65535, 65535, 150_000 - 2 * 65535]);

    let script = Script {
        steps: step::SKIP,
        answer_at: Some((b'B', b's', Vec::new())),
        eom: accept_at_eom(Vec::new()),
        ..Script::default()
    };
    let (verdict, got) = run_with(script, &big).await;
    assert_eq!(verdict, Ok(Verdict::accept()));
    assert_eq!(got.iter().filter(|(c, _)| *c == b'B').count(), 1);
}

#[tokio::test]
async fn protocol_violations_are_errors() {
    let script = Script {
        eom: vec![(b'h', b"X-Sneaky\0 1\0".to_vec()), (b'a', Vec::new())],
        ..Script::default()
    };
    assert!(run(script).await.0.unwrap_err().0.contains("without negotiating"));

    let script = Script {
        steps: 0x800, // SMFIP_RCPT_REJ, which we do not offer
        ..Script::default()
    };
    assert!(run(script).await.0.is_err());
}

#[test]
fn reply_codes() {
    let one = reply_code("554 5.7.1 go away").unwrap();
    assert_eq!(
        one,
        Verdict::reject(Reply::from_milter(554, "5.7.1".into(), "go away".into(), vec![]))
    );
    let plain = reply_code("451 later").unwrap();
    assert_eq!(
        plain,
        Verdict::tempfail(Reply::from_milter(451, String::new(), "later".into(), vec![]))
    );
    let multi = reply_code("550-5.7.1 first\r\n550 5.7.1 second").unwrap();
    let reply = Reply::from_milter(550, "5.7.1".into(), "first".into(), vec!["second".into()]);
    assert_eq!(multi, Verdict::reject(reply));
    // The status must be of the code's class.
    let mismatched = reply_code("550 4.7.1 odd").unwrap();
    assert_eq!(
        mismatched,
        Verdict::reject(Reply::from_milter(550, String::new(), "4.7.1 odd".into(), vec![]))
    );
    for bad in ["250 2.0.0 ok", "", "5x0 no", "99"] {
        assert!(reply_code(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn options_are_checked() {
    let table = |t: &str| -> toml::Table { t.parse().unwrap() };
    assert_eq!(build(table(""), Path::new("/")).unwrap_err()[0].0, "address");
    assert_eq!(
        build(table("address = \"nope\""), Path::new("/")).unwrap_err()[0].0,
        "address"
    );
    let both = table("address = \"127.0.0.1:8891\"\nsocket = \"m.sock\"");
    assert_eq!(build(both, Path::new("/")).unwrap_err()[0].0, "socket");
    assert_eq!(
        build(table("socket = \"m.sock\"\nport = 1"), Path::new("/")).unwrap_err()[0].0,
        "port"
    );
    assert!(build(table("socket = \"m.sock\"\nmacros = { j = \"mx\" }"), Path::new("/")).is_ok());
}

#[tokio::test]
async fn nothing_listening_is_an_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let f = build(format!("address = \"{addr}\"").parse().unwrap(), Path::new("/")).unwrap();
    let s = session();
    let m = MessageInfo {
        session: &s,
        sender: &crate::envelope::Sender::Null,
        recipients: &[],
        message: MESSAGE,
        tags: &[],
    };
    let error = f.data(&m).await.unwrap_err();
    assert!(error.0.contains(&addr.to_string()), "{error}");
}
